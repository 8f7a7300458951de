//! Validates `outbounds`: freedom, blackhole, Trojan, VMess, VLESS and Shadowsocks, with their tags
//! and dial settings.

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::{Map, Value};
use shardray_core::spec::{
    Account, BlackholeSpec, DomainStrategy, FreedomSpec, OutboundProtocol, OutboundSpec, ProxyOutboundSpec,
    RealityClientSpec, ShadowsocksOutboundSpec, SocketOptions, TlsClientSpec, TransportSpec, TrojanOutboundSpec,
    UserSpec, VlessFlow, VlessOutboundSpec, VmessOutboundSpec, XhttpDownloadSpec,
};
use shardray_wire::addr::{Address, Destination};

use super::error::ConfigError;
use super::raw::{
    RawBlackholeSettings, RawFreedomSettings, RawOutStream, RawOutbound, RawProxyAccount, RawProxyOutSettings,
    RawProxyServer, RawShadowsocksOutSettings, RawShadowsocksServer, RawTrojanOutSettings, RawVlessOutSettings,
    RawVmessClient, RawVmessOutSettings, RawVmessServer, StringList,
};
use super::validate::{deserialize_at, is_empty_value, parse_host_port, parse_port};

/// Outbound protocols upstream has that shardray does not serve yet.
const LATER_PROTOCOLS: &[&str] = &["wireguard", "loopback", "hysteria", "hysteria2"];

/// Validates `outbounds`: at least one, tags unique and distinct from the API's tag.
pub(super) fn outbounds(
    raw: Option<Vec<RawOutbound>>,
    api_tag: Option<&str>,
) -> Result<Vec<OutboundSpec>, ConfigError> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        return Err(ConfigError::invalid(
            "outbounds",
            "at least one outbound is required (the first is the default route)",
        ));
    }
    let mut tags: HashMap<String, usize> = HashMap::new();
    let mut specs = Vec::with_capacity(raw.len());
    for (i, ob) in raw.into_iter().enumerate() {
        let path = format!("outbounds[{i}]");
        let tag = ob.tag.clone().unwrap_or_default();
        if !tag.is_empty() {
            if api_tag == Some(tag.as_str()) {
                return Err(ConfigError::invalid(format!("{path}.tag"), format!("{tag:?} is the API's tag")));
            }
            if let Some(first) = tags.insert(tag.clone(), i) {
                return Err(ConfigError::invalid(
                    format!("{path}.tag"),
                    format!("duplicate tag {tag:?} (also outbounds[{first}])"),
                ));
            }
        }
        specs.push(outbound(ob, &path, tag)?);
    }
    Ok(specs)
}

fn outbound(ob: RawOutbound, path: &str, tag: String) -> Result<OutboundSpec, ConfigError> {
    let protocol = match ob.protocol.as_deref() {
        None | Some("") => return Err(ConfigError::invalid(format!("{path}.protocol"), "missing")),
        Some(p) => p.to_ascii_lowercase(),
    };
    let send_through = send_through(ob.send_through.as_deref(), &format!("{path}.sendThrough"))?;
    let stream_path = format!("{path}.streamSettings");
    let mut ob = ob;
    let sockopt = match ob.stream_settings.as_mut().and_then(|s| s.as_object_mut()).and_then(|s| s.remove("sockopt")) {
        None | Some(Value::Null) => Box::default(),
        Some(v) => Box::new(dial_sockopt(v, &format!("{stream_path}.sockopt"))?),
    };
    // Trojan reads its own stream settings (TLS); the others may only restate the defaults.
    if !matches!(protocol.as_str(), "trojan" | "vmess" | "vless" | "socks" | "http") {
        if let Some(stream) = &ob.stream_settings {
            check_plain_stream(stream, &stream_path)?;
        }
    }
    if ob.mux.is_some_and(|m| m.enabled == Some(true)) {
        return Err(ConfigError::unsupported(format!("{path}.mux.enabled"), "mux"));
    }
    if ob.proxy_settings.as_ref().is_some_and(|p| !is_empty_value(p)) {
        return Err(ConfigError::unsupported(format!("{path}.proxySettings"), "proxySettings"));
    }
    match ob.target_strategy.as_deref().unwrap_or("") {
        "" => {}
        s if s.eq_ignore_ascii_case("asis") => {}
        s => return Err(ConfigError::unsupported(format!("{path}.targetStrategy"), format!("targetStrategy {s:?}"))),
    }

    let settings_path = format!("{path}.settings");
    let settings = ob.settings.unwrap_or_else(|| Value::Object(Map::new()));
    let protocol = match protocol.as_str() {
        // "direct" and "block" are Xray's other names for them (infra/conf/xray.go).
        "freedom" | "direct" => OutboundProtocol::Freedom(freedom(settings, &settings_path)?),
        "blackhole" | "block" => OutboundProtocol::Blackhole(blackhole(settings, &settings_path)?),
        "trojan" => OutboundProtocol::Trojan(trojan(settings, &settings_path, ob.stream_settings, &stream_path)?),
        "vmess" => OutboundProtocol::Vmess(vmess(settings, &settings_path, ob.stream_settings, &stream_path)?),
        "socks" => OutboundProtocol::Socks(proxy(settings, &settings_path, ob.stream_settings, &stream_path, false)?),
        "http" => OutboundProtocol::Http(proxy(settings, &settings_path, ob.stream_settings, &stream_path, true)?),
        "vless" => OutboundProtocol::Vless(vless(settings, &settings_path, ob.stream_settings, &stream_path)?),
        "shadowsocks" => OutboundProtocol::Shadowsocks(shadowsocks(settings, &settings_path)?),
        "dns" => OutboundProtocol::Dns(super::dns::dns_outbound(settings, &settings_path)?),
        p if LATER_PROTOCOLS.contains(&p) => {
            return Err(ConfigError::unsupported(format!("{path}.protocol"), format!("{p:?}")))
        }
        p => return Err(ConfigError::invalid(format!("{path}.protocol"), format!("unknown protocol {p:?}"))),
    };
    Ok(OutboundSpec { tag, send_through, sockopt, protocol })
}

/// An outbound's `streamSettings.sockopt`: what its dialed sockets carry. The options that
/// only mean something on a listener are an error naming them rather than silently unused.
fn dial_sockopt(value: Value, path: &str) -> Result<SocketOptions, ConfigError> {
    let opts = super::validate::sockopt(deserialize_at(value, path)?, path)?;
    let listener_only = [
        ("acceptProxyProtocol", opts.accept_proxy_protocol),
        ("v6only", opts.v6_only),
        ("trustedXForwardedFor", !opts.trusted_x_forwarded_for.is_empty()),
    ];
    if let Some((field, _)) = listener_only.iter().find(|(_, set)| *set) {
        return Err(ConfigError::invalid(format!("{path}.{field}"), "an inbound's option, meaningless on an outbound"));
    }
    Ok(opts)
}

fn send_through(value: Option<&str>, path: &str) -> Result<Option<IpAddr>, ConfigError> {
    match value.map(str::trim).unwrap_or("") {
        "" => Ok(None),
        "origin" => Err(ConfigError::unsupported(path, "sendThrough \"origin\"")),
        s => s.parse().map(Some).map_err(|_| ConfigError::invalid(path, format!("{s:?} is not an IP address"))),
    }
}

/// A server's `address` and `port` at `spath`, both required.
fn server_at(address: Option<&str>, port: Option<&Value>, spath: &str) -> Result<Destination, ConfigError> {
    let addr = match address.map(str::trim) {
        None | Some("") => return Err(ConfigError::invalid(format!("{spath}.address"), "missing")),
        Some(a) => Address::parse(a)
            .ok_or_else(|| ConfigError::invalid(format!("{spath}.address"), format!("invalid address {a:?}")))?,
    };
    let port = match port {
        None | Some(Value::Null) => return Err(ConfigError::invalid(format!("{spath}.port"), "missing")),
        Some(v) => parse_port(v, &format!("{spath}.port"))?,
    };
    Ok(Destination { addr, port })
}

/// An outbound's `streamSettings` may only restate the defaults: raw TCP, no security.
fn check_plain_stream(stream: &Value, path: &str) -> Result<(), ConfigError> {
    let fields = match stream {
        Value::Null => return Ok(()),
        Value::Object(fields) => fields,
        _ => return Err(ConfigError::invalid(path, "expected an object")),
    };
    for (key, value) in fields {
        let plain = match (key.as_str(), value) {
            ("network", Value::String(n)) => matches!(n.as_str(), "" | "tcp" | "raw"),
            ("security", Value::String(s)) => matches!(s.as_str(), "" | "none"),
            _ => is_empty_value(value),
        };
        if !plain {
            return Err(ConfigError::unsupported(
                format!("{path}.{key}"),
                format!("streamSettings.{key} on an outbound"),
            ));
        }
    }
    Ok(())
}

fn freedom(settings: Value, path: &str) -> Result<FreedomSpec, ConfigError> {
    let raw: RawFreedomSettings = deserialize_at(settings, path)?;
    let strategy = raw.domain_strategy.unwrap_or_default().to_ascii_lowercase();
    let domain_strategy = match strategy.as_str() {
        "" | "asis" => DomainStrategy::AsIs,
        "useip" | "useipv4v6" | "useipv6v4" | "forceip" | "forceipv4v6" | "forceipv6v4" => DomainStrategy::UseIp,
        "useipv4" | "forceipv4" => DomainStrategy::UseIpv4,
        "useipv6" | "forceipv6" => DomainStrategy::UseIpv6,
        _ => {
            return Err(ConfigError::invalid(
                format!("{path}.domainStrategy"),
                format!("unknown strategy {strategy:?} (expected AsIs, UseIP, UseIPv4 or UseIPv6)"),
            ))
        }
    };
    let redirect =
        match raw.redirect.as_deref().map(str::trim).unwrap_or("") {
            "" => None,
            s => Some(parse_host_port(s).ok_or_else(|| {
                ConfigError::invalid(format!("{path}.redirect"), format!("{s:?} is not \"host:port\""))
            })?),
        };
    for (field, value) in [("fragment", &raw.fragment), ("noises", &raw.noises)] {
        if value.as_ref().is_some_and(|v| !is_empty_value(v)) {
            return Err(ConfigError::unsupported(format!("{path}.{field}"), field));
        }
    }
    if raw.proxy_protocol.unwrap_or(0) != 0 {
        return Err(ConfigError::unsupported(format!("{path}.proxyProtocol"), "proxyProtocol"));
    }
    Ok(FreedomSpec { domain_strategy, redirect, user_level: raw.user_level.unwrap_or(0) })
}

fn blackhole(settings: Value, path: &str) -> Result<BlackholeSpec, ConfigError> {
    let raw: RawBlackholeSettings = deserialize_at(settings, path)?;
    let kind = raw.response.and_then(|r| r.kind).unwrap_or_default().to_ascii_lowercase();
    let http_response = match kind.as_str() {
        "" | "none" => false,
        "http" => true,
        other => {
            return Err(ConfigError::invalid(
                format!("{path}.response.type"),
                format!("unknown response {other:?} (expected \"none\" or \"http\")"),
            ))
        }
    };
    Ok(BlackholeSpec { http_response })
}

fn trojan(
    settings: Value,
    path: &str,
    stream: Option<Value>,
    stream_path: &str,
) -> Result<TrojanOutboundSpec, ConfigError> {
    let raw: RawTrojanOutSettings = deserialize_at(settings, path)?;
    let mut servers = raw.servers.unwrap_or_default();
    let servers_path = format!("{path}.servers");
    match servers.len() {
        0 => return Err(ConfigError::invalid(servers_path, "at least one server is required")),
        1 => {}
        _ => return Err(ConfigError::unsupported(format!("{servers_path}[1]"), "more than one Trojan server")),
    }
    let server = servers.remove(0);
    let spath = format!("{servers_path}[0]");
    let Destination { addr: address, port } = server_at(server.address.as_deref(), server.port.as_ref(), &spath)?;
    let password = match server.password {
        Some(p) if !p.is_empty() => p,
        _ => return Err(ConfigError::invalid(format!("{spath}.password"), "missing")),
    };
    if let Some(f) = server.flow.filter(|f| !f.is_empty()) {
        return Err(ConfigError::unsupported(format!("{spath}.flow"), format!("Trojan flow {f:?}")));
    }
    let ClientStream { tls, reality, transport } = client_stream_at(stream, stream_path)?;
    Ok(TrojanOutboundSpec {
        server: Destination { addr: address, port },
        password,
        email: server.email.unwrap_or_default(),
        level: server.level.unwrap_or(0),
        tls,
        reality,
        transport,
    })
}

/// `settings.vnext` (one server, one user) or Xray's flat form (`address`, `port`, `id`, ...).
fn vmess(
    settings: Value,
    path: &str,
    stream: Option<Value>,
    stream_path: &str,
) -> Result<VmessOutboundSpec, ConfigError> {
    let raw: RawVmessOutSettings = deserialize_at(settings, path)?;
    let (server, spath) = match (raw.vnext, raw.address) {
        (Some(mut vnext), None) => {
            let vpath = format!("{path}.vnext");
            match vnext.len() {
                0 => return Err(ConfigError::invalid(vpath, "at least one server is required")),
                1 => {}
                _ => return Err(ConfigError::unsupported(format!("{vpath}[1]"), "more than one VMess server")),
            }
            (vnext.remove(0), format!("{vpath}[0]"))
        }
        (None, Some(address)) => {
            let user = RawVmessClient {
                id: raw.id,
                security: raw.security,
                experiments: raw.experiments,
                email: raw.email,
                level: raw.level,
                ..Default::default()
            };
            (RawVmessServer { address: Some(address), port: raw.port, users: Some(vec![user]) }, path.to_owned())
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(format!("{path}.address"), "give either vnext or address, not both"))
        }
        (None, None) => return Err(ConfigError::invalid(format!("{path}.vnext"), "missing")),
    };
    let Destination { addr: address, port } = server_at(server.address.as_deref(), server.port.as_ref(), &spath)?;
    let mut users = server.users.unwrap_or_default();
    let upath = format!("{spath}.users");
    match users.len() {
        0 => return Err(ConfigError::invalid(upath, "one user is required")),
        1 => {}
        _ => return Err(ConfigError::unsupported(format!("{upath}[1]"), "more than one VMess user")),
    }
    let (user, authenticated_length) = super::inbound::vmess_user(users.remove(0), &format!("{upath}[0]"), true)?;
    let Account::Vmess { id, security } = user.account else { unreachable!("vmess_user makes VMess accounts") };
    let ClientStream { tls, reality, transport } = client_stream_at(stream, stream_path)?;
    Ok(VmessOutboundSpec {
        server: Destination { addr: address, port },
        id,
        security,
        authenticated_length,
        email: user.email,
        level: user.level,
        tls,
        reality,
        transport,
    })
}

/// A SOCKS or HTTP outbound: `settings.servers` (one server, at most one user) or Xray's flat
/// form (`address`, `port`, `user`, `pass`); `headers` for HTTP only.
fn proxy(
    settings: Value,
    path: &str,
    stream: Option<Value>,
    stream_path: &str,
    http: bool,
) -> Result<ProxyOutboundSpec, ConfigError> {
    let raw: RawProxyOutSettings = deserialize_at(settings, path)?;
    let name = if http { "HTTP" } else { "SOCKS" };
    let (server, spath) = match (raw.servers, raw.address) {
        (Some(mut servers), None) => {
            let servers_path = format!("{path}.servers");
            match servers.len() {
                0 => return Err(ConfigError::invalid(servers_path, "at least one server is required")),
                1 => {}
                _ => {
                    return Err(ConfigError::unsupported(
                        format!("{servers_path}[1]"),
                        format!("more than one {name} server"),
                    ))
                }
            }
            (servers.remove(0), format!("{servers_path}[0]"))
        }
        (None, Some(address)) => {
            let users = raw.user.is_some().then(|| {
                vec![RawProxyAccount {
                    user: raw.user,
                    pass: raw.pass,
                    email: raw.email,
                    level: raw.level,
                    ..Default::default()
                }]
            });
            (RawProxyServer { address: Some(address), port: raw.port, users }, path.to_owned())
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(format!("{path}.address"), "give either servers or address, not both"))
        }
        (None, None) => return Err(ConfigError::invalid(format!("{path}.servers"), "missing")),
    };
    if !http && raw.headers.as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(ConfigError::invalid(format!("{path}.headers"), "headers are for an HTTP outbound"));
    }
    let Destination { addr: address, port } = server_at(server.address.as_deref(), server.port.as_ref(), &spath)?;
    let mut users = server.users.unwrap_or_default();
    let upath = format!("{spath}.users");
    let user = match users.len() {
        0 => None,
        1 => {
            let make = if http { Account::Http } else { Account::Socks };
            Some(super::inbound::proxy_account(users.remove(0), &format!("{upath}[0]"), 0, make)?)
        }
        _ => return Err(ConfigError::unsupported(format!("{upath}[1]"), format!("more than one {name} user"))),
    };
    let (account, email, level) = match user {
        Some(UserSpec { account: Account::Socks(a) | Account::Http(a), email, level, .. }) => (Some(a), email, level),
        _ => (None, String::new(), 0),
    };
    let tls = match client_stream_at(stream, stream_path)? {
        ClientStream { reality: Some(_), .. } => {
            return Err(ConfigError::unsupported(
                format!("{stream_path}.security"),
                format!("REALITY on a {name} outbound (VLESS, VMess and Trojan have it)"),
            ))
        }
        ClientStream { tls, transport: TransportSpec::Raw, .. } => tls,
        _ => {
            return Err(ConfigError::unsupported(
                format!("{stream_path}.network"),
                format!("a {name} outbound over WebSocket or HTTPUpgrade"),
            ))
        }
    };
    let headers = raw.headers.unwrap_or_default().into_iter().collect();
    Ok(ProxyOutboundSpec { server: Destination { addr: address, port }, account, email, level, headers, tls })
}

/// `settings.vnext` of a VLESS outbound: one server, one user, `encryption` "none" (or
/// absent), Vision or no flow; over any client transport.
fn vless(
    settings: Value,
    path: &str,
    stream: Option<Value>,
    stream_path: &str,
) -> Result<VlessOutboundSpec, ConfigError> {
    let raw: RawVlessOutSettings = deserialize_at(settings, path)?;
    let vpath = format!("{path}.vnext");
    let mut vnext = raw.vnext.ok_or_else(|| ConfigError::invalid(&vpath, "missing"))?;
    match vnext.len() {
        0 => return Err(ConfigError::invalid(vpath, "at least one server is required")),
        1 => {}
        _ => return Err(ConfigError::unsupported(format!("{vpath}[1]"), "more than one VLESS server")),
    }
    let server = vnext.remove(0);
    let spath = format!("{vpath}[0]");
    let Destination { addr: address, port } = server_at(server.address.as_deref(), server.port.as_ref(), &spath)?;
    let mut users = server.users.unwrap_or_default();
    let upath = format!("{spath}.users");
    match users.len() {
        0 => return Err(ConfigError::invalid(upath, "one user is required")),
        1 => {}
        _ => return Err(ConfigError::unsupported(format!("{upath}[1]"), "more than one VLESS user")),
    }
    let user = users.remove(0);
    let upath = format!("{upath}[0]");
    let id = match user.id.as_deref() {
        None => return Err(ConfigError::invalid(format!("{upath}.id"), "missing")),
        Some(s) => super::inbound::parse_user_id(s)
            .ok_or_else(|| ConfigError::invalid(format!("{upath}.id"), format!("invalid UUID {s:?}")))?,
    };
    match user.encryption.as_deref().unwrap_or("none") {
        "none" | "" => {}
        e => return Err(ConfigError::unsupported(format!("{upath}.encryption"), format!("VLESS encryption {e:?}"))),
    }
    // Xray's client flows: Vision, and Vision that lets UDP/443 through (this outbound
    // carries no UDP under Vision, so both are Vision here).
    let flow = match user.flow.as_deref().unwrap_or("") {
        "" => VlessFlow::None,
        "xtls-rprx-vision" | "xtls-rprx-vision-udp443" => VlessFlow::Vision,
        f => return Err(ConfigError::invalid(format!("{upath}.flow"), format!("unknown flow {f:?}"))),
    };
    let xudp = match user.packet_encoding.as_deref().unwrap_or("xudp") {
        "xudp" => true,
        "none" | "" => false,
        e => {
            return Err(ConfigError::invalid(
                format!("{upath}.packetEncoding"),
                format!("unknown packet encoding {e:?} (\"xudp\" or \"none\")"),
            ))
        }
    };
    let ClientStream { tls, reality, transport } = client_stream_at(stream, stream_path)?;
    if matches!(flow, VlessFlow::Vision) && ((tls.is_none() && reality.is_none()) || transport != TransportSpec::Raw) {
        return Err(ConfigError::invalid(
            format!("{upath}.flow"),
            "Vision needs streamSettings.security \"tls\" or \"reality\" on raw TCP (Xray: \"XTLS only supports TLS and REALITY directly\")",
        ));
    }
    Ok(VlessOutboundSpec {
        server: Destination { addr: address, port },
        id,
        email: user.email.unwrap_or_default(),
        level: user.level.unwrap_or(0),
        tls,
        reality,
        transport,
        flow,
        xudp,
    })
}

/// `settings.servers` (one server) or Xray's flat form (`address`, `port`, `method`, ...).
fn shadowsocks(settings: Value, path: &str) -> Result<ShadowsocksOutboundSpec, ConfigError> {
    let raw: RawShadowsocksOutSettings = deserialize_at(settings, path)?;
    let (server, spath) = match (raw.servers, raw.address) {
        (Some(mut servers), None) => {
            let servers_path = format!("{path}.servers");
            match servers.len() {
                0 => return Err(ConfigError::invalid(servers_path, "at least one server is required")),
                1 => {}
                _ => {
                    return Err(ConfigError::unsupported_msg(
                        format!("{servers_path}[1]"),
                        "more than one Shadowsocks server: use one outbound per server and a balancer",
                    ))
                }
            }
            (servers.remove(0), format!("{servers_path}[0]"))
        }
        (None, Some(address)) => {
            let server = RawShadowsocksServer {
                address: Some(address),
                port: raw.port,
                method: raw.method,
                password: raw.password,
                email: raw.email,
                level: raw.level,
                ..Default::default()
            };
            (server, path.to_owned())
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(format!("{path}.address"), "give either servers or address, not both"))
        }
        (None, None) => return Err(ConfigError::invalid(format!("{path}.servers"), "missing")),
    };
    let Destination { addr: address, port } = server_at(server.address.as_deref(), server.port.as_ref(), &spath)?;
    let method = super::inbound::shadowsocks_method(server.method.as_deref(), &format!("{spath}.method"))?;
    let password = match server.password {
        Some(p) if !p.is_empty() => p,
        _ => return Err(ConfigError::invalid(format!("{spath}.password"), "missing")),
    };
    if method.is_2022() {
        shardray_wire::shadowsocks::MasterKey::parse_psk_chain(method, &password)
            .map_err(|e| ConfigError::invalid(format!("{spath}.password"), format!("{e} (for {method})")))?;
    }
    if server.uot == Some(true) {
        return Err(ConfigError::unsupported(format!("{spath}.uot"), "UDP over TCP"));
    }
    Ok(ShadowsocksOutboundSpec {
        server: Destination { addr: address, port },
        method,
        password,
        email: server.email.unwrap_or_default(),
        level: server.level.unwrap_or(0),
    })
}

/// An XHTTP outbound's `downloadSettings` at `path`: a `streamSettings` of its own with the
/// server's `address` and `port`, over `xhttp`, plain or TLS. Its `sockopt` is refused (the
/// GET is dialed as the outbound's requests are), and a `downloadSettings` inside it is read
/// and, as by Xray, not used.
fn xhttp_download(value: Value, path: &str) -> Result<XhttpDownloadSpec, ConfigError> {
    let Value::Object(mut fields) = value else {
        return Err(ConfigError::invalid(path, "must be an object (a streamSettings with address and port)"));
    };
    let address = fields.remove("address");
    let port = fields.remove("port");
    if fields.remove("sockopt").is_some_and(|v| !is_empty_value(&v)) {
        return Err(ConfigError::unsupported(
            format!("{path}.sockopt"),
            "sockopt in downloadSettings (its GET is dialed with the outbound's)",
        ));
    }
    let address = match &address {
        None => None,
        Some(Value::String(a)) => Some(a.as_str()),
        Some(_) => return Err(ConfigError::invalid(format!("{path}.address"), "must be a string")),
    };
    let server = server_at(address, port.as_ref(), path)?;
    let network = fields.get("network").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
    if network != "xhttp" && network != "splithttp" {
        return Err(ConfigError::invalid(format!("{path}.network"), "must be \"xhttp\" (the GET is an XHTTP request)"));
    }
    if fields.get("security").and_then(Value::as_str) == Some("reality") {
        return Err(ConfigError::unsupported(format!("{path}.security"), "REALITY in downloadSettings"));
    }
    let ClientStream { tls, transport, .. } = client_stream(deserialize_at(Value::Object(fields), path)?, path)?;
    let TransportSpec::Xhttp(xhttp) = transport else {
        return Err(ConfigError::invalid(format!("{path}.network"), "must be \"xhttp\""));
    };
    Ok(XhttpDownloadSpec { server, tls, xhttp: *xhttp })
}

/// What an outbound's `streamSettings` say: its security (TLS, REALITY or none) and transport.
struct ClientStream {
    tls: Option<TlsClientSpec>,
    reality: Option<Box<RealityClientSpec>>,
    transport: TransportSpec,
}

/// `client_stream` of an outbound's optional `streamSettings` at `path`.
fn client_stream_at(stream: Option<Value>, path: &str) -> Result<ClientStream, ConfigError> {
    match stream {
        None | Some(Value::Null) => Ok(ClientStream { tls: None, reality: None, transport: TransportSpec::Raw }),
        Some(v) => client_stream(deserialize_at(v, path)?, path),
    }
}

/// An outbound's `streamSettings`: the TLS client settings when `security` is `tls`, REALITY's
/// when it is `reality`, and the transport (raw TCP, WebSocket, HTTPUpgrade, gRPC, XHTTP).
/// `tlsSettings.fingerprint` is accepted and ignored (the loader notes it).
fn client_stream(mut raw: RawOutStream, path: &str) -> Result<ClientStream, ConfigError> {
    let network = raw.network.as_deref().unwrap_or("").to_ascii_lowercase();
    let mut xhttp = super::xhttp::pick(raw.xhttp_settings.take(), raw.splithttp_settings.take());
    let download = xhttp.as_ref().and_then(|(k, v)| super::xhttp::download_value(v, &format!("{path}.{k}")));
    let transport = match super::inbound::stream_transport(
        &network,
        &mut raw.ws_settings,
        &mut raw.httpupgrade_settings,
        &mut raw.grpc_settings,
        &mut xhttp,
        path,
    ) {
        Ok(TransportSpec::Xhttp(mut x)) => {
            if let Some((value, at)) = download {
                x.download = Some(Box::new(xhttp_download(value, &at)?));
            }
            TransportSpec::Xhttp(x)
        }
        Ok(t) => t,
        Err(_)
            if !matches!(
                network.as_str(),
                "ws" | "websocket" | "httpupgrade" | "grpc" | "gun" | "xhttp" | "splithttp"
            ) =>
        {
            return Err(ConfigError::unsupported(
                format!("{path}.network"),
                format!("network {network:?} on an outbound"),
            ))
        }
        Err(e) => return Err(e),
    };
    // `sockopt` was taken out before (see `dial_sockopt`), for every protocol.
    for (field, value) in [("tcpSettings", &raw.tcp_settings), ("rawSettings", &raw.raw_settings)] {
        if value.as_ref().is_some_and(|v| !is_empty_value(v)) {
            return Err(ConfigError::unsupported(
                format!("{path}.{field}"),
                format!("streamSettings.{field} on an outbound"),
            ));
        }
    }
    let security = raw.security.as_deref().unwrap_or("");
    if security != "reality" && raw.reality_settings.as_ref().is_some_and(|v| !is_empty_value(v)) {
        return Err(ConfigError::invalid(
            format!("{path}.realitySettings"),
            format!("given while security is {security:?} (not \"reality\")"),
        ));
    }
    let (tls, reality) = match security {
        "" | "none" => (None, None),
        "reality" => (None, Some(Box::new(super::reality::client(raw.reality_settings.take(), &transport, path)?))),
        "tls" => {
            let tls = raw.tls_settings.unwrap_or_default();
            let mut alpn = tls.alpn.map(|StringList(l)| l).unwrap_or_default();
            if let Some(j) = alpn.iter().position(String::is_empty) {
                return Err(ConfigError::invalid(format!("{path}.tlsSettings.alpn[{j}]"), "empty protocol"));
            }
            // The HTTP transports speak HTTP/1.1 and say so when the config names nothing, as
            // Xray's dialers do.
            if alpn.is_empty() && transport.http().is_some() {
                alpn.push("http/1.1".into());
            }
            // XHTTP picks its HTTP version from `alpn` as Xray does; h3 would be QUIC.
            if matches!(transport, TransportSpec::Xhttp(_)) && alpn == ["h3"] {
                return Err(ConfigError::unsupported(format!("{path}.tlsSettings.alpn"), "XHTTP over HTTP/3 (h3)"));
            }
            let tls = TlsClientSpec {
                server_name: tls.server_name.unwrap_or_default(),
                allow_insecure: tls.allow_insecure.unwrap_or(false),
                alpn,
            };
            (Some(tls), None)
        }
        s => {
            return Err(ConfigError::unsupported(format!("{path}.security"), format!("security {s:?} on an outbound")))
        }
    };
    Ok(ClientStream { tls, reality, transport })
}
