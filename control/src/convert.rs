//! Proto to domain at the edge: API messages become core types here and nowhere else, so
//! shards never see a prost type. Every refusal is an `Invalid*` value that names what was
//! wrong; `api` turns them into INVALID_ARGUMENT.

pub mod inbound;
pub mod routes;

use std::fmt;
use std::net::IpAddr;

use prost::Message;
use shardray_core::spec::{Account, ProxyAccount, UserSpec, VlessFlow, VmessSecurity};
use shardray_proto::shardray::compat::v2ray::VlessAccount as V2rayVlessAccount;
use shardray_proto::xray::common::protocol::{SecurityConfig, User};
use shardray_proto::xray::common::serial::TypedMessage;
use shardray_proto::xray::proxy::{shadowsocks, shadowsocks_2022, socks, trojan, vless, vmess};
use shardray_wire::shadowsocks::Method;

use crate::config::parse_user_id;
use uuid::Uuid;

/// Whose package a TypedMessage type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `xray.…`
    Xray,
    /// `v2ray.core.…`
    V2ray,
    /// `shardray.…`, our own additions.
    Shardray,
}

/// A TypedMessage type that is not one we know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidMessage(pub String);

impl fmt::Display for InvalidMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown message type {:?}", self.0)
    }
}

/// Splits a TypedMessage type into its flavor and the name after the package root, accepting
/// it bare or behind the `types.v2fly.org/` or `type.googleapis.com/` URL prefixes:
/// `types.v2fly.org/v2ray.core.proxy.vless.Account` is `(V2ray, "proxy.vless.Account")`.
pub fn message_type(t: &str) -> Result<(Flavor, &str), InvalidMessage> {
    let bare = t.strip_prefix("types.v2fly.org/").or_else(|| t.strip_prefix("type.googleapis.com/")).unwrap_or(t);
    if let Some(rest) = bare.strip_prefix("xray.") {
        Ok((Flavor::Xray, rest))
    } else if let Some(rest) = bare.strip_prefix("v2ray.core.") {
        Ok((Flavor::V2ray, rest))
    } else if let Some(rest) = bare.strip_prefix("shardray.") {
        Ok((Flavor::Shardray, rest))
    } else {
        Err(InvalidMessage(t.to_owned()))
    }
}

/// Every message the API knows, from the descriptor set compiled with the generated code.
pub(crate) fn descriptors() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(shardray_proto::FILE_DESCRIPTOR_SET).expect("the built descriptor set")
    })
}

/// Decodes `bytes` as `M`, the message called `full_name` in the .proto files, and refuses a
/// field number that the message (or any message inside it) does not define: prost would drop
/// it silently. The check goes by field number, so any valid encoding of known fields passes:
/// any order, packed or not, empty repeated fields, explicit defaults.
pub fn decode_known<M: Message + Default>(bytes: &[u8], full_name: &str) -> Result<M, String> {
    let desc = descriptors().get_message_by_name(full_name).ok_or_else(|| format!("no message {full_name}"))?;
    let message = prost_reflect::DynamicMessage::decode(desc, bytes).map_err(|e| format!("cannot decode: {e}"))?;
    let mut path = String::new();
    refuse_unknown(&message, &mut path)?;
    M::decode(bytes).map_err(|e| format!("cannot decode: {e}"))
}

/// Fails on the first unknown field at any depth, naming where it is (`rule[0]: field 99 …`).
fn refuse_unknown(message: &prost_reflect::DynamicMessage, path: &mut String) -> Result<(), String> {
    use prost_reflect::{ReflectMessage, Value};
    if let Some(unknown) = message.unknown_fields().next() {
        let at = if path.is_empty() { String::new() } else { format!("{path}: ") };
        return Err(format!(
            "{at}field number {} is not defined in {} (a field shardray does not know)",
            unknown.number(),
            message.descriptor().full_name()
        ));
    }
    for (field, value) in message.fields() {
        let len = path.len();
        let visit = |m: &prost_reflect::DynamicMessage, index: Option<usize>, path: &mut String| {
            path.truncate(len);
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(field.name());
            if let Some(i) = index {
                path.push_str(&format!("[{i}]"));
            }
            refuse_unknown(m, path)
        };
        match value {
            Value::Message(m) => visit(m, None, path)?,
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(m) = item {
                        visit(m, Some(i), path)?;
                    }
                }
            }
            Value::Map(entries) => {
                for item in entries.values() {
                    if let Value::Message(m) = item {
                        visit(m, None, path)?;
                    }
                }
            }
            _ => {}
        }
        path.truncate(len);
    }
    Ok(())
}

/// A user the API was asked to add that cannot be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidUser {
    /// No email: a user must have one to be managed (and counted).
    MissingEmail,
    /// No account message.
    MissingAccount,
    /// The account's type is not a known account.
    UnknownAccount(String),
    /// The account is of another protocol than the inbound.
    WrongAccount {
        /// The account's protocol.
        account: String,
        /// The inbound's protocol.
        inbound: String,
    },
    /// The account's bytes do not decode.
    Malformed(String),
    /// The id is neither a UUID nor a 1–30 byte string.
    BadId(String),
    /// A flow shardray does not serve yet.
    UnsupportedFlow(String),
    /// A Trojan account without a password.
    MissingPassword,
    /// A SOCKS or HTTP account without a username.
    MissingUsername,
    /// A v2fly VMess account with a non-zero alterId (the legacy MD5 handshake).
    LegacyAlterId(u32),
    /// A Shadowsocks cipher type that is not served (a stream cipher, `NONE`, unknown).
    BadCipher(String),
    /// A Shadowsocks 2022 key that is not a PSK of the inbound's method.
    BadKey(String),
}

impl fmt::Display for InvalidUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidUser::MissingEmail => f.write_str("user: email is required"),
            InvalidUser::MissingAccount => f.write_str("user: account is missing"),
            InvalidUser::UnknownAccount(t) => write!(f, "user.account: unknown account type {t:?}"),
            InvalidUser::WrongAccount { account, inbound } => {
                write!(f, "user.account: a {account} account cannot join a {inbound} inbound")
            }
            InvalidUser::Malformed(e) => write!(f, "user.account: {e}"),
            InvalidUser::BadId(id) => write!(f, "user.account.id: invalid UUID {id:?}"),
            InvalidUser::UnsupportedFlow(flow) => {
                write!(f, "user.account.flow: {flow:?} is not supported yet")
            }
            InvalidUser::MissingPassword => f.write_str("user.account.password: missing"),
            InvalidUser::MissingUsername => f.write_str("user.account.username: missing"),
            InvalidUser::BadCipher(why) => write!(f, "user.account.cipher_type: {why}"),
            InvalidUser::BadKey(why) => write!(f, "user.account.key: {why}"),
            InvalidUser::LegacyAlterId(n) => write!(
                f,
                "user.account.alter_id: {n} asks for the legacy (MD5) VMess handshake, which is not served: use 0 (AEAD)"
            ),
        }
    }
}

impl std::error::Error for InvalidUser {}

/// Turns an API user into a user of an inbound speaking `inbound_protocol` ("vless", "trojan").
pub fn user_spec(user: &User, inbound_protocol: &str) -> Result<UserSpec, InvalidUser> {
    if user.email.is_empty() {
        return Err(InvalidUser::MissingEmail);
    }
    let account = user.account.as_ref().ok_or(InvalidUser::MissingAccount)?;
    let (flavor, name) =
        message_type(&account.r#type).map_err(|_| InvalidUser::UnknownAccount(account.r#type.clone()))?;
    let protocol = match name.strip_prefix("proxy.").and_then(|n| n.strip_suffix(".Account")) {
        Some(p) => p,
        // Older Xray's form of a 2022 user.
        None if name == "proxy.shadowsocks_2022.User" => "shadowsocks_2022",
        None => return Err(InvalidUser::UnknownAccount(account.r#type.clone())),
    };
    if protocol != inbound_protocol {
        return Err(InvalidUser::WrongAccount { account: protocol.to_owned(), inbound: inbound_protocol.to_owned() });
    }
    let mut flow = VlessFlow::None;
    let id = match (protocol, flavor) {
        ("trojan", _) => {
            // v2fly's Account is numbered as Xray's (password 1; flow 2, which some panels send).
            let a = decode_known::<trojan::Account>(&account.value, "xray.proxy.trojan.Account")
                .map_err(InvalidUser::Malformed)?;
            if !a.flow.is_empty() {
                return Err(InvalidUser::UnsupportedFlow(a.flow));
            }
            if a.password.is_empty() {
                return Err(InvalidUser::MissingPassword);
            }
            let account = Account::Trojan(a.password.into());
            return Ok(UserSpec { account, email: user.email.clone(), level: user.level, quota: Default::default() });
        }
        ("vmess", _) => {
            // One message for both: v2fly's adds alter_id (2) to Xray's id, security, tests.
            let a = decode_known::<vmess::Account>(&account.value, "xray.proxy.vmess.Account")
                .map_err(InvalidUser::Malformed)?;
            if shardray_wire::vmess::is_legacy_alter_id(a.alter_id) {
                return Err(InvalidUser::LegacyAlterId(a.alter_id));
            }
            let id = parse_user_id(&a.id).ok_or(InvalidUser::BadId(a.id))?;
            let security = vmess_security(a.security_settings.map_or(0, |s| s.r#type));
            let account = Account::Vmess { id, security };
            return Ok(UserSpec { account, email: user.email.clone(), level: user.level, quota: Default::default() });
        }
        ("socks" | "http", _) => {
            // Xray's and v2fly's Account, socks and http alike: username 1, password 2.
            let name = if protocol == "socks" { "xray.proxy.socks.Account" } else { "xray.proxy.http.Account" };
            let a = decode_known::<socks::Account>(&account.value, name).map_err(InvalidUser::Malformed)?;
            if a.username.is_empty() {
                return Err(InvalidUser::MissingUsername);
            }
            let a = ProxyAccount { username: a.username.into(), password: a.password.into() };
            let account = if protocol == "socks" { Account::Socks(a) } else { Account::Http(a) };
            return Ok(UserSpec { account, email: user.email.clone(), level: user.level, quota: Default::default() });
        }
        ("shadowsocks", flavor) => {
            // One message for both; the cipher numbers differ (see `shadowsocks_method`).
            let a = decode_known::<shadowsocks::Account>(&account.value, "xray.proxy.shadowsocks.Account")
                .map_err(InvalidUser::Malformed)?;
            let method = shadowsocks_method(a.cipher_type, flavor)?;
            if a.password.is_empty() {
                return Err(InvalidUser::MissingPassword);
            }
            let account = Account::Shadowsocks { method, password: a.password.into() };
            return Ok(UserSpec { account, email: user.email.clone(), level: user.level, quota: Default::default() });
        }
        ("shadowsocks_2022", _) => {
            let key = if name.ends_with(".User") {
                decode_known::<shadowsocks_2022::User>(&account.value, "xray.proxy.shadowsocks_2022.User")
                    .map_err(InvalidUser::Malformed)?
                    .key
            } else {
                decode_known::<shadowsocks_2022::Account>(&account.value, "xray.proxy.shadowsocks_2022.Account")
                    .map_err(InvalidUser::Malformed)?
                    .key
            };
            shardray_wire::shadowsocks::MasterKey::from_psk_any(&key)
                .map_err(|e| InvalidUser::BadKey(e.to_string()))?;
            let account = Account::Shadowsocks2022 { key: key.into() };
            return Ok(UserSpec { account, email: user.email.clone(), level: user.level, quota: Default::default() });
        }
        ("vless", Flavor::V2ray) => {
            decode_known::<V2rayVlessAccount>(&account.value, "shardray.compat.v2ray.VlessAccount")
                .map_err(InvalidUser::Malformed)?
                .id
        }
        ("vless", _) => {
            let a = decode_known::<vless::Account>(&account.value, "xray.proxy.vless.Account")
                .map_err(InvalidUser::Malformed)?;
            flow = match a.flow.as_str() {
                "" => VlessFlow::None,
                shardray_wire::vision::FLOW => VlessFlow::Vision,
                _ => return Err(InvalidUser::UnsupportedFlow(a.flow)),
            };
            a.id
        }
        (other, _) => return Err(InvalidUser::UnknownAccount(format!("{other} accounts are not served yet"))),
    };
    let id = parse_user_id(&id).ok_or(InvalidUser::BadId(id))?;
    Ok(UserSpec {
        account: Account::Vless(id, flow),
        email: user.email.clone(),
        level: user.level,
        quota: Default::default(),
    })
}

/// A Shadowsocks account's method from its `cipher_type`: Xray numbers the AEAD ciphers 5 to 8
/// (1 to 4 were its stream ciphers), v2fly numbers them 1 to 3 (4 is `NONE`).
pub fn shadowsocks_method(cipher_type: i32, flavor: Flavor) -> Result<Method, InvalidUser> {
    let refused = |what: &str| Err(InvalidUser::BadCipher(format!("{cipher_type} ({what}) is not supported")));
    match (flavor, cipher_type) {
        (Flavor::V2ray, 1) => Ok(Method::Aes128Gcm),
        (Flavor::V2ray, 2) => Ok(Method::Aes256Gcm),
        (Flavor::V2ray, 3) => Ok(Method::ChaCha20Poly1305),
        (Flavor::V2ray, 4) => refused("NONE"),
        (_, 5) => Ok(Method::Aes128Gcm),
        (_, 6) => Ok(Method::Aes256Gcm),
        (_, 7) => Ok(Method::ChaCha20Poly1305),
        (_, 8) => Ok(Method::XChaCha20Poly1305),
        (_, 1..=4) => refused("a stream cipher"),
        (_, 9) => refused("NONE"),
        (_, 0) => refused("UNKNOWN"),
        _ => refused("undefined"),
    }
}

/// Xray's `CipherType` number for a classic method.
pub fn shadowsocks_cipher_type(method: Method) -> i32 {
    use shadowsocks::CipherType as C;
    (match method {
        Method::Aes128Gcm => C::Aes128Gcm,
        Method::Aes256Gcm => C::Aes256Gcm,
        Method::XChaCha20Poly1305 => C::Xchacha20Poly1305,
        _ => C::Chacha20Poly1305,
    }) as i32
}

/// A VMess account's security from the API's `SecurityType` (unknown, legacy and auto are `auto`).
pub fn vmess_security(t: i32) -> VmessSecurity {
    use shardray_proto::xray::common::protocol::SecurityType as T;
    use shardray_wire::vmess::SecurityConfig as S;
    VmessSecurity(match T::try_from(t) {
        Ok(T::Aes128Gcm) => S::Aes128Gcm,
        Ok(T::Chacha20Poly1305) => S::ChaCha20Poly1305,
        Ok(T::None) => S::None,
        Ok(T::Zero) => S::Zero,
        _ => S::Auto,
    })
}

/// The API's `SecurityType` for a VMess account's security.
pub fn vmess_security_type(s: VmessSecurity) -> i32 {
    use shardray_proto::xray::common::protocol::SecurityType as T;
    use shardray_wire::vmess::SecurityConfig as S;
    (match s.0 {
        S::Auto => T::Auto,
        S::Aes128Gcm => T::Aes128Gcm,
        S::ChaCha20Poly1305 => T::Chacha20Poly1305,
        S::None => T::None,
        S::Zero => T::Zero,
    }) as i32
}

/// The API form of a VMess account.
pub fn vmess_account(id: &Uuid, security: VmessSecurity) -> vmess::Account {
    vmess::Account {
        id: id.to_string(),
        security_settings: Some(SecurityConfig { r#type: vmess_security_type(security) }),
        ..Default::default()
    }
}

/// The API form of a user: with an `xray.proxy.vless.Account`, `xray.proxy.trojan.Account` or
/// `xray.proxy.vmess.Account`.
pub fn api_user(user: &UserSpec) -> User {
    let account = match &user.account {
        Account::Vless(id, flow) => typed(
            "xray.proxy.vless.Account",
            &vless::Account { id: id.to_string(), flow: flow.name().to_owned(), ..Default::default() },
        ),
        Account::Trojan(password) => typed(
            "xray.proxy.trojan.Account",
            &trojan::Account { password: password.to_string(), ..Default::default() },
        ),
        Account::Vmess { id, security } => typed("xray.proxy.vmess.Account", &vmess_account(id, *security)),
        Account::Socks(a) | Account::Http(a) => {
            let kind = if matches!(user.account, Account::Socks(_)) {
                "xray.proxy.socks.Account"
            } else {
                "xray.proxy.http.Account"
            };
            typed(kind, &socks::Account { username: a.username.to_string(), password: a.password.to_string() })
        }
        Account::Shadowsocks { method, password } => typed(
            "xray.proxy.shadowsocks.Account",
            &shadowsocks::Account {
                password: password.to_string(),
                cipher_type: shadowsocks_cipher_type(*method),
                iv_check: false,
            },
        ),
        Account::Shadowsocks2022 { key } => {
            typed("xray.proxy.shadowsocks_2022.Account", &shadowsocks_2022::Account { key: key.to_string() })
        }
    };
    User { level: user.level, email: user.email.clone(), account: Some(account) }
}

/// An IP address from the API's bytes (4 or 16 of them).
pub fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// An IP address as the API's bytes.
pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Wraps a message in a TypedMessage of the given type name.
pub fn typed(type_name: &str, message: &impl Message) -> TypedMessage {
    TypedMessage { r#type: type_name.to_owned(), value: message.encode_to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message the API decodes itself, under the name it decodes it by.
    const DECODED: &[&str] = &[
        "xray.app.proxyman.command.AddUserOperation",
        "xray.app.proxyman.command.RemoveUserOperation",
        "shardray.app.proxyman.command.AddUsersOperation",
        "shardray.app.proxyman.command.RemoveUsersOperation",
        "shardray.app.proxyman.command.ReplaceUsersOperation",
        "shardray.app.proxyman.command.SetUserLevelOperation",
        "shardray.app.proxyman.command.SetUserQuotaOperation",
        "shardray.app.proxyman.command.KickUserOperation",
        "xray.proxy.vless.Account",
        "shardray.compat.v2ray.VlessAccount",
        "xray.app.proxyman.ReceiverConfig",
        "shardray.compat.v2ray.ReceiverConfig",
        "xray.proxy.vless.inbound.Config",
        "xray.proxy.dokodemo.Config",
        "shardray.compat.v2ray.DokodemoConfig",
        "xray.transport.internet.tls.Config",
        "shardray.compat.v2ray.TlsConfig",
        "xray.app.proxyman.SenderConfig",
        "xray.proxy.freedom.Config",
        "xray.proxy.blackhole.Config",
        "xray.app.router.Config",
        "xray.proxy.shadowsocks.Account",
        "xray.proxy.shadowsocks.ServerConfig",
        "xray.proxy.shadowsocks.ClientConfig",
        "xray.proxy.shadowsocks_2022.Account",
        "xray.proxy.shadowsocks_2022.User",
        "xray.proxy.shadowsocks_2022.ServerConfig",
        "xray.proxy.shadowsocks_2022.MultiUserServerConfig",
        "xray.proxy.shadowsocks_2022.ClientConfig",
    ];

    /// An encoding a generated client may send and ours never does: every field written with
    /// its default value (explicit zeros, empty strings and sub-messages, empty packed lists),
    /// in reverse field order.
    fn explicit_defaults(desc: &prost_reflect::MessageDescriptor) -> Vec<u8> {
        use prost::encoding::{encode_key, encode_varint, WireType};
        use prost_reflect::Kind;
        let mut out = Vec::new();
        let fields: Vec<_> = desc.fields().filter(|f| !f.is_map()).collect();
        for field in fields.into_iter().rev() {
            let n = field.number();
            let wire = match field.kind() {
                Kind::Message(_) | Kind::String | Kind::Bytes => WireType::LengthDelimited,
                _ if field.is_list() => WireType::LengthDelimited, // packed, no elements
                Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => WireType::SixtyFourBit,
                Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => WireType::ThirtyTwoBit,
                _ => WireType::Varint,
            };
            encode_key(n, wire, &mut out);
            match wire {
                WireType::SixtyFourBit => out.extend_from_slice(&[0; 8]),
                WireType::ThirtyTwoBit => out.extend_from_slice(&[0; 4]),
                _ => encode_varint(0, &mut out),
            }
        }
        out
    }

    #[test]
    fn every_decoded_message_takes_explicit_defaults_and_names_an_unknown_number() {
        for &name in DECODED {
            let desc =
                descriptors().get_message_by_name(name).unwrap_or_else(|| panic!("{name}: not in the descriptors"));
            let bytes = explicit_defaults(&desc);
            decode_known::<()>(&bytes, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let unknown = desc.fields().map(|f| f.number()).max().unwrap_or(0) + 1;
            let mut bad = bytes.clone();
            prost::encoding::encode_key(unknown, prost::encoding::WireType::Varint, &mut bad);
            bad.push(1);
            let err = decode_known::<()>(&bad, name).unwrap_err();
            assert_eq!(
                err,
                format!("field number {unknown} is not defined in {name} (a field shardray does not know)")
            );
        }
    }

    fn user(type_name: &str, value: Vec<u8>) -> User {
        User { level: 1, email: "a@b".into(), account: Some(TypedMessage { r#type: type_name.into(), value }) }
    }

    #[test]
    fn type_names_with_every_prefix() {
        for t in [
            "xray.proxy.vless.Account",
            "types.v2fly.org/xray.proxy.vless.Account",
            "type.googleapis.com/xray.proxy.vless.Account",
        ] {
            assert_eq!(message_type(t), Ok((Flavor::Xray, "proxy.vless.Account")));
        }
        assert_eq!(
            message_type("types.v2fly.org/v2ray.core.proxy.vless.Account"),
            Ok((Flavor::V2ray, "proxy.vless.Account"))
        );
        assert!(message_type("google.protobuf.Any").is_err());
    }

    #[test]
    fn xray_and_v2ray_vless_accounts() {
        let id = "b831381d-6324-4d53-ad4f-8cda48b30811";
        let x = vless::Account { id: id.into(), encryption: "none".into(), ..Default::default() };
        let spec = user_spec(&user("xray.proxy.vless.Account", x.encode_to_vec()), "vless").unwrap();
        assert_eq!(spec.account, Account::Vless(id.parse().unwrap(), VlessFlow::None));
        assert_eq!((spec.level, spec.email.as_str()), (1, "a@b"));
        // V2Ray's field 2 is encryption: "none" there must not read as a flow.
        let v = V2rayVlessAccount { id: id.into(), encryption: "none".into() };
        let spec = user_spec(&user("v2ray.core.proxy.vless.Account", v.encode_to_vec()), "vless").unwrap();
        assert_eq!(spec.account, Account::Vless(id.parse().unwrap(), VlessFlow::None));
        // Short string ids map as upstream maps them.
        let short = vless::Account { id: "alice".into(), ..Default::default() };
        let spec = user_spec(&user("xray.proxy.vless.Account", short.encode_to_vec()), "vless").unwrap();
        assert_eq!(
            spec.account,
            Account::Vless("ec61d669-fc85-586b-a097-822a49b51e7e".parse().unwrap(), VlessFlow::None)
        );
    }

    #[test]
    fn trojan_accounts_both_forms_and_back() {
        let a = trojan::Account { password: "pass word".into(), flow: String::new() };
        for t in ["xray.proxy.trojan.Account", "types.v2fly.org/v2ray.core.proxy.trojan.Account"] {
            let spec = user_spec(&user(t, a.encode_to_vec()), "trojan").unwrap();
            assert_eq!(spec.account, Account::Trojan("pass word".into()));
            let back = api_user(&spec);
            assert_eq!(back.account.as_ref().unwrap().r#type, "xray.proxy.trojan.Account");
            assert_eq!(user_spec(&back, "trojan").unwrap(), spec);
        }
        let flow = trojan::Account { password: "p".into(), flow: "xtls-rprx-direct".into() };
        assert_eq!(
            user_spec(&user("xray.proxy.trojan.Account", flow.encode_to_vec()), "trojan"),
            Err(InvalidUser::UnsupportedFlow("xtls-rprx-direct".into()))
        );
        let empty = trojan::Account::default();
        assert_eq!(
            user_spec(&user("xray.proxy.trojan.Account", empty.encode_to_vec()), "trojan"),
            Err(InvalidUser::MissingPassword)
        );
        // Each protocol's account on the other's inbound names both.
        let err = user_spec(&user("xray.proxy.trojan.Account", a.encode_to_vec()), "vless").unwrap_err();
        assert_eq!(err.to_string(), "user.account: a trojan account cannot join a vless inbound");
        let v = vless::Account { id: "alice".into(), ..Default::default() };
        let err = user_spec(&user("xray.proxy.vless.Account", v.encode_to_vec()), "trojan").unwrap_err();
        assert_eq!(err.to_string(), "user.account: a vless account cannot join a trojan inbound");
        // A field number the account does not define.
        let mut bytes = a.encode_to_vec();
        bytes.extend_from_slice(&[0x18, 0x01]);
        assert!(matches!(
            user_spec(&user("xray.proxy.trojan.Account", bytes), "trojan"),
            Err(InvalidUser::Malformed(_))
        ));
    }

    #[test]
    fn shadowsocks_accounts_by_both_numberings_and_back() {
        let account = |n: i32| shadowsocks::Account { password: "pw".into(), cipher_type: n, iv_check: false };
        for (n, method) in [
            (5, Method::Aes128Gcm),
            (6, Method::Aes256Gcm),
            (7, Method::ChaCha20Poly1305),
            (8, Method::XChaCha20Poly1305),
        ] {
            let spec =
                user_spec(&user("xray.proxy.shadowsocks.Account", account(n).encode_to_vec()), "shadowsocks").unwrap();
            assert_eq!(spec.account, Account::Shadowsocks { method, password: "pw".into() });
            assert_eq!(user_spec(&api_user(&spec), "shadowsocks").unwrap(), spec, "round trip");
        }
        for (n, method) in [(1, Method::Aes128Gcm), (2, Method::Aes256Gcm), (3, Method::ChaCha20Poly1305)] {
            let spec =
                user_spec(&user("v2ray.core.proxy.shadowsocks.Account", account(n).encode_to_vec()), "shadowsocks");
            assert_eq!(spec.unwrap().account, Account::Shadowsocks { method, password: "pw".into() });
        }
        for (t, n, words) in [
            ("xray.proxy.shadowsocks.Account", 1, "stream cipher"),
            ("xray.proxy.shadowsocks.Account", 0, "UNKNOWN"),
            ("v2ray.core.proxy.shadowsocks.Account", 4, "NONE"),
        ] {
            let err = user_spec(&user(t, account(n).encode_to_vec()), "shadowsocks").unwrap_err().to_string();
            assert!(err.starts_with("user.account.cipher_type:") && err.contains(words), "{err}");
        }
        let key = shadowsocks_2022::Account { key: "AAAAAAAAAAAAAAAAAAAAAA==".into() };
        let spec =
            user_spec(&user("xray.proxy.shadowsocks_2022.Account", key.encode_to_vec()), "shadowsocks_2022").unwrap();
        assert_eq!(api_user(&spec).account.unwrap().r#type, "xray.proxy.shadowsocks_2022.Account");
        let err =
            user_spec(&user("xray.proxy.shadowsocks_2022.Account", key.encode_to_vec()), "shadowsocks").unwrap_err();
        assert_eq!(err.to_string(), "user.account: a shadowsocks_2022 account cannot join a shadowsocks inbound");
    }

    #[test]
    fn refusals_name_the_problem() {
        let ok = vless::Account { id: "b831381d-6324-4d53-ad4f-8cda48b30811".into(), ..Default::default() };
        let mut no_email = user("xray.proxy.vless.Account", ok.encode_to_vec());
        no_email.email.clear();
        assert_eq!(user_spec(&no_email, "vless"), Err(InvalidUser::MissingEmail));
        let trojan = user("xray.proxy.trojan.Account", vec![]);
        assert!(matches!(user_spec(&trojan, "vless"), Err(InvalidUser::WrongAccount { .. })));
        assert!(matches!(
            user_spec(&user("xray.proxy.vless.Account", vec![0xff]), "vless"),
            Err(InvalidUser::Malformed(_))
        ));
        let long = vless::Account { id: "x".repeat(31), ..Default::default() };
        assert!(matches!(
            user_spec(&user("xray.proxy.vless.Account", long.encode_to_vec()), "vless"),
            Err(InvalidUser::BadId(_))
        ));
        // The flow is honoured, shown again by `api_user`; the UDP/443 variant is a client's.
        let vision = vless::Account { id: "alice".into(), flow: "xtls-rprx-vision".into(), ..Default::default() };
        let spec = user_spec(&user("xray.proxy.vless.Account", vision.encode_to_vec()), "vless").unwrap();
        assert!(spec.account.vision());
        let shown = api_user(&spec).account.unwrap();
        assert_eq!(vless::Account::decode(&shown.value[..]).unwrap().flow, "xtls-rprx-vision");
        let udp443 =
            vless::Account { id: "alice".into(), flow: "xtls-rprx-vision-udp443".into(), ..Default::default() };
        assert!(matches!(
            user_spec(&user("xray.proxy.vless.Account", udp443.encode_to_vec()), "vless"),
            Err(InvalidUser::UnsupportedFlow(_))
        ));
        let no_account = User { level: 0, email: "a@b".into(), account: None };
        assert_eq!(user_spec(&no_account, "vless"), Err(InvalidUser::MissingAccount));
    }
}
