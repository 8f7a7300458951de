//! Inbounds between their API form (`InboundHandlerConfig`, as AddInbound carries it) and
//! their config form. The server turns the API form into config JSON and validates it with the
//! config loader, so an inbound added at run time passes exactly the checks of one in a config
//! file, and errors name the JSON field; `shardray api adi` goes the other way, from a loaded
//! config inbound to the API form. Where v2fly numbers a message differently from Xray
//! (ReceiverConfig, TLS, dokodemo-door), the V2Ray form is read through its own definition.

use std::fmt;

use serde_json::{json, Map, Value};
use shardray_core::spec::{
    Account, DomainMatcher, FallbackDest, FallbackSpec, InboundProtocol, InboundSpec, SniffingSpec, SocketOptions,
    TlsVersion, TransportSpec, UserSpec,
};
use shardray_proto::xray::app::proxyman::{ReceiverConfig, SniffingConfig};
use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain, Network, PortList, PortRange};
use shardray_proto::xray::core::InboundHandlerConfig;
use shardray_proto::xray::proxy::{dokodemo, http, shadowsocks, shadowsocks_2022, socks, trojan, vless, vmess};
use shardray_proto::xray::transport::internet::{
    grpc, httpupgrade, reality, splithttp, tls, websocket, SocketConfig, StreamConfig, TransportConfig,
};

use super::{api_user, ip_bytes, ip_from_bytes, message_type, typed, user_spec, Flavor};
use shardray_proto::shardray::compat::v2ray::{
    DokodemoConfig as V2rayDokodemo, ReceiverConfig as V2rayReceiverConfig, TlsConfig as V2rayTlsConfig,
    TrojanServerConfig as V2rayTrojanServer,
};
use shardray_proto::xray::common::serial::TypedMessage;

/// The TypedMessage names this module reads and writes.
const RECEIVER: &str = "xray.app.proxyman.ReceiverConfig";
const TLS: &str = "xray.transport.internet.tls.Config";
const VLESS_INBOUND: &str = "xray.proxy.vless.inbound.Config";
const TROJAN_INBOUND: &str = "xray.proxy.trojan.ServerConfig";
const VMESS_INBOUND: &str = "xray.proxy.vmess.inbound.Config";
const DOKODEMO: &str = "xray.proxy.dokodemo.Config";
const SOCKS_INBOUND: &str = "xray.proxy.socks.ServerConfig";
const HTTP_INBOUND: &str = "xray.proxy.http.ServerConfig";
const SS_INBOUND: &str = "xray.proxy.shadowsocks.ServerConfig";
const SS2022_INBOUND: &str = "xray.proxy.shadowsocks_2022.ServerConfig";
const SS2022_MULTI_INBOUND: &str = "xray.proxy.shadowsocks_2022.MultiUserServerConfig";
const WEBSOCKET: &str = "xray.transport.internet.websocket.Config";
const HTTPUPGRADE: &str = "xray.transport.internet.httpupgrade.Config";
const REALITY: &str = "xray.transport.internet.reality.Config";
const GRPC: &str = "xray.transport.internet.grpc.encoding.Config";
const SPLITHTTP: &str = "xray.transport.internet.splithttp.Config";

/// An AddInbound request that cannot become a config inbound; names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInbound(pub String);

impl fmt::Display for InvalidInbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidInbound {}

fn invalid(message: impl Into<String>) -> InvalidInbound {
    InvalidInbound(message.into())
}

/// Decodes `bytes` as the message `full_name`, refusing field numbers it does not define.
fn decode<M: prost::Message + Default>(bytes: &[u8], full_name: &str, field: &str) -> Result<M, InvalidInbound> {
    super::decode_known(bytes, full_name).map_err(|e| invalid(format!("{field}: {e}")))
}

/// The config JSON (one element of `inbounds`) for an API inbound.
pub fn inbound_json(config: &InboundHandlerConfig) -> Result<Value, InvalidInbound> {
    let mut out = Map::new();
    out.insert("tag".into(), json!(config.tag));

    let receiver = config.receiver_settings.as_ref().ok_or_else(|| invalid("receiver_settings: missing"))?;
    let receiver = match message_type(&receiver.r#type) {
        Ok((Flavor::Xray, "app.proxyman.ReceiverConfig")) => decode(&receiver.value, RECEIVER, "receiver_settings")?,
        // v2fly numbers this message's fields differently: read its own form.
        Ok((Flavor::V2ray, "app.proxyman.ReceiverConfig")) => {
            let v2: V2rayReceiverConfig =
                decode(&receiver.value, "shardray.compat.v2ray.ReceiverConfig", "receiver_settings")?;
            ReceiverConfig {
                port_list: v2.port_range.map(|r| PortList { range: vec![r] }),
                listen: v2.listen,
                stream_settings: v2.stream_settings,
                sniffing_settings: v2
                    .sniffing_settings
                    .map(|s| SniffingConfig { enabled: s.enabled, ..Default::default() }),
                ..Default::default()
            }
        }
        _ => return Err(invalid(format!("receiver_settings: expected {RECEIVER}, got {:?}", receiver.r#type))),
    };
    out.insert("port".into(), port_json(receiver.port_list.as_ref())?);
    if let Some(listen) = &receiver.listen {
        out.insert("listen".into(), json!(address_text(listen, "receiver_settings.listen")?));
    }
    if let Some(stream) = &receiver.stream_settings {
        out.insert("streamSettings".into(), stream_json(stream)?);
    }
    if let Some(sniffing) = receiver.sniffing_settings.as_ref().filter(|s| s.enabled) {
        out.insert("sniffing".into(), sniffing_json(sniffing)?);
    }

    let proxy = config.proxy_settings.as_ref().ok_or_else(|| invalid("proxy_settings: missing"))?;
    let (flavor, name) = message_type(&proxy.r#type).map_err(|e| invalid(format!("proxy_settings: {e}")))?;
    match name {
        "proxy.vless.inbound.Config" => {
            let settings: vless::inbound::Config = decode(&proxy.value, VLESS_INBOUND, "proxy_settings")?;
            out.insert("protocol".into(), json!("vless"));
            out.insert("settings".into(), vless_json(&settings, flavor)?);
        }
        "proxy.trojan.ServerConfig" => {
            let settings: trojan::ServerConfig = match flavor {
                // v2fly numbers the fallbacks' fields differently: read its own form.
                Flavor::V2ray => {
                    let v2: V2rayTrojanServer =
                        decode(&proxy.value, "shardray.compat.v2ray.TrojanServerConfig", "proxy_settings")?;
                    trojan::ServerConfig {
                        users: v2.users,
                        fallbacks: v2
                            .fallbacks
                            .into_iter()
                            .map(|f| trojan::Fallback {
                                name: String::new(),
                                alpn: f.alpn,
                                path: f.path,
                                r#type: f.r#type,
                                dest: f.dest,
                                xver: f.xver,
                            })
                            .collect(),
                    }
                }
                _ => decode(&proxy.value, TROJAN_INBOUND, "proxy_settings")?,
            };
            out.insert("protocol".into(), json!("trojan"));
            let clients = clients_json(&settings.users, "trojan")?;
            let fallbacks: Vec<Value> = settings
                .fallbacks
                .iter()
                .map(|f| fallback_json(&f.name, &f.alpn, &f.path, &f.r#type, &f.dest, f.xver))
                .collect();
            out.insert("settings".into(), json!({ "clients": clients, "fallbacks": fallbacks }));
        }
        "proxy.vmess.inbound.Config" => {
            // One message for both flavors (v2fly's extra fields have their own numbers).
            let settings: vmess::inbound::Config = decode(&proxy.value, VMESS_INBOUND, "proxy_settings")?;
            out.insert("protocol".into(), json!("vmess"));
            let mut body = Map::new();
            body.insert("clients".into(), json!(clients_json(&settings.user, "vmess")?));
            if let Some(d) = &settings.default {
                body.insert("default".into(), json!({ "level": d.level, "alterId": d.alter_id }));
            }
            if let Some(d) = settings.detour.as_ref().filter(|d| !d.to.is_empty()) {
                body.insert("detour".into(), json!({ "to": d.to }));
            }
            out.insert("settings".into(), Value::Object(body));
        }
        "proxy.shadowsocks.ServerConfig" if flavor == Flavor::V2ray => {
            return Err(invalid(
                "proxy_settings: v2fly's shadowsocks ServerConfig (one user, plugins) is not read; send Xray's \
                 xray.proxy.shadowsocks.ServerConfig",
            ))
        }
        "proxy.shadowsocks.ServerConfig" => {
            let settings: shadowsocks::ServerConfig = decode(&proxy.value, SS_INBOUND, "proxy_settings")?;
            out.insert("protocol".into(), json!("shadowsocks"));
            let clients = clients_json(&settings.users, "shadowsocks")?;
            out.insert("settings".into(), json!({ "clients": clients, "network": networks_text(&settings.network) }));
        }
        "proxy.shadowsocks_2022.ServerConfig" => {
            let settings: shadowsocks_2022::ServerConfig = decode(&proxy.value, SS2022_INBOUND, "proxy_settings")?;
            out.insert("protocol".into(), json!("shadowsocks"));
            out.insert(
                "settings".into(),
                json!({
                    "method": settings.method, "password": settings.key, "email": settings.email,
                    "level": settings.level.max(0), "network": networks_text(&settings.network)
                }),
            );
        }
        "proxy.shadowsocks_2022.MultiUserServerConfig" => {
            let settings: shadowsocks_2022::MultiUserServerConfig =
                decode(&proxy.value, SS2022_MULTI_INBOUND, "proxy_settings")?;
            out.insert("protocol".into(), json!("shadowsocks"));
            let clients = clients_json(&settings.users, "shadowsocks_2022")?;
            out.insert(
                "settings".into(),
                json!({
                    "method": settings.method, "password": settings.key, "clients": clients,
                    "network": networks_text(&settings.network)
                }),
            );
        }
        "proxy.dokodemo.Config" => {
            let settings: dokodemo::Config = match flavor {
                Flavor::V2ray => {
                    let v2: V2rayDokodemo =
                        decode(&proxy.value, "shardray.compat.v2ray.DokodemoConfig", "proxy_settings")?;
                    dokodemo::Config {
                        address: v2.address,
                        port: v2.port,
                        networks: if v2.networks.is_empty() {
                            v2.network_list.map(|l| l.network).unwrap_or_default()
                        } else {
                            v2.networks
                        },
                        follow_redirect: v2.follow_redirect,
                        user_level: v2.user_level,
                        ..Default::default()
                    }
                }
                _ => decode(&proxy.value, DOKODEMO, "proxy_settings")?,
            };
            out.insert("protocol".into(), json!("dokodemo-door"));
            out.insert("settings".into(), dokodemo_json(&settings)?);
        }
        "proxy.socks.ServerConfig" => {
            // v2fly's has the same numbers but for its deprecated timeout (5), which is refused.
            let settings: socks::ServerConfig = decode(&proxy.value, SOCKS_INBOUND, "proxy_settings")?;
            out.insert("protocol".into(), json!("socks"));
            let auth = if settings.auth_type == socks::AuthType::Password as i32 { "password" } else { "noauth" };
            let mut body = Map::new();
            body.insert("auth".into(), json!(auth));
            body.insert("accounts".into(), json!(accounts_json(&settings.accounts)));
            body.insert("udp".into(), json!(settings.udp_enabled));
            if let Some(ip) = &settings.address {
                body.insert("ip".into(), json!(address_text(ip, "proxy_settings.address")?));
            }
            body.insert("userLevel".into(), json!(settings.user_level));
            out.insert("settings".into(), Value::Object(body));
        }
        "proxy.http.ServerConfig" => {
            let settings: http::ServerConfig = decode(&proxy.value, HTTP_INBOUND, "proxy_settings")?;
            out.insert("protocol".into(), json!("http"));
            out.insert(
                "settings".into(),
                json!({
                    "accounts": accounts_json(&settings.accounts),
                    "allowTransparent": settings.allow_transparent,
                    "userLevel": settings.user_level,
                }),
            );
        }
        other => {
            // "proxy.vmess.inbound.Config", "proxy.trojan.ServerConfig", …: the protocol's name,
            // so that the loader says it is not served.
            let protocol = other.strip_prefix("proxy.").and_then(|p| p.split('.').next()).unwrap_or(other);
            out.insert("protocol".into(), json!(protocol));
        }
    }
    Ok(Value::Object(out))
}

/// A network list as config writes it (`"tcp,udp"`); none is TCP.
/// `sniffing` from the API's `SniffingConfig`: domains in the config's `full:`/`domain:`/
/// `keyword:`/`regexp:`/`geosite:` forms, checked when the inbound loads.
fn sniffing_json(s: &SniffingConfig) -> Result<Value, InvalidInbound> {
    use shardray_proto::xray::common::geodata::ip_rule::Value as IpValue;
    use shardray_proto::xray::common::geodata::{domain::Type, domain_rule::Value as Rule};
    let mut ips = Vec::new();
    for (i, r) in s.ips_excluded.iter().enumerate() {
        let at = format!("receiver_settings.sniffing_settings.ips_excluded[{i}]");
        ips.push(match &r.value {
            Some(IpValue::Custom(c)) => {
                let ip = match c.ip.len() {
                    4 => std::net::IpAddr::from(<[u8; 4]>::try_from(&c.ip[..]).expect("4 bytes")),
                    16 => std::net::IpAddr::from(<[u8; 16]>::try_from(&c.ip[..]).expect("16 bytes")),
                    n => return Err(invalid(format!("{at}: an IP is 4 or 16 bytes, not {n}"))),
                };
                format!("{ip}/{}", c.prefix)
            }
            Some(IpValue::Geoip(g)) => {
                let not = if g.reverse_match { "!" } else { "" };
                if g.file.is_empty() || g.file == "geoip.dat" {
                    format!("geoip:{not}{}", g.code)
                } else {
                    format!("ext:{}:{not}{}", g.file, g.code)
                }
            }
            None => return Err(invalid(format!("{at}: empty"))),
        });
    }
    let mut excluded = Vec::new();
    for (i, d) in s.domains_excluded.iter().enumerate() {
        let at = format!("receiver_settings.sniffing_settings.domains_excluded[{i}]");
        excluded.push(match &d.value {
            Some(Rule::Custom(c)) => {
                if !c.attribute.is_empty() {
                    return Err(invalid(format!("{at}: domain attributes are not supported yet")));
                }
                let prefix = match Type::try_from(c.r#type) {
                    Ok(Type::Substr) => "keyword",
                    Ok(Type::Domain) => "domain",
                    Ok(Type::Full) => "full",
                    Ok(Type::Regex) => "regexp",
                    Err(_) => return Err(invalid(format!("{at}: unknown domain type {}", c.r#type))),
                };
                format!("{prefix}:{}", c.value)
            }
            Some(Rule::Geosite(g)) => {
                let attrs: String =
                    g.attrs.split(['@', ',']).filter(|a| !a.is_empty()).map(|a| format!("@{a}")).collect();
                if g.file.is_empty() || g.file == "geosite.dat" {
                    format!("geosite:{}{attrs}", g.code)
                } else {
                    format!("ext:{}:{}{attrs}", g.file, g.code)
                }
            }
            None => return Err(invalid(format!("{at}: empty"))),
        });
    }
    Ok(json!({
        "enabled": true,
        "destOverride": s.destination_override,
        "domainsExcluded": excluded,
        "ipsExcluded": ips,
        "metadataOnly": s.metadata_only,
        "routeOnly": s.route_only,
    }))
}

/// The API's `SniffingConfig` for a spec's `sniffing`.
fn sniffing_config(s: &SniffingSpec) -> SniffingConfig {
    use shardray_proto::xray::common::geodata::{domain::Type, domain_rule::Value as Rule, Domain, DomainRule};
    let rule = |kind: Type, value: &str| DomainRule {
        value: Some(Rule::Custom(Domain { r#type: kind as i32, value: value.to_owned(), attribute: Vec::new() })),
    };
    SniffingConfig {
        enabled: true,
        destination_override: s.dest_override.clone(),
        domains_excluded: s
            .domains_excluded
            .iter()
            .map(|d| match d {
                DomainMatcher::Keyword(v) => rule(Type::Substr, v),
                DomainMatcher::Full(v) => rule(Type::Full, v),
                DomainMatcher::Domain(v) => rule(Type::Domain, v),
                DomainMatcher::Regex(v) => rule(Type::Regex, v),
            })
            .collect(),
        ips_excluded: s
            .ips_excluded
            .iter()
            .map(|n| shardray_proto::xray::common::geodata::IpRule {
                value: Some(shardray_proto::xray::common::geodata::ip_rule::Value::Custom(
                    shardray_proto::xray::common::geodata::Cidr {
                        ip: match n.network() {
                            std::net::IpAddr::V4(a) => a.octets().to_vec(),
                            std::net::IpAddr::V6(a) => a.octets().to_vec(),
                        },
                        prefix: u32::from(n.prefix_len()),
                    },
                )),
            })
            .collect(),
        metadata_only: s.metadata_only,
        route_only: s.route_only,
    }
}

fn networks_text(list: &[i32]) -> String {
    let names: Vec<&str> = list
        .iter()
        .map(|n| match Network::try_from(*n) {
            Ok(Network::Tcp | Network::RawTcp) => "tcp",
            Ok(Network::Udp) => "udp",
            Ok(Network::Unix) => "unix",
            _ => "unknown",
        })
        .collect();
    if names.is_empty() {
        "tcp".into()
    } else {
        names.join(",")
    }
}

fn port_json(list: Option<&PortList>) -> Result<Value, InvalidInbound> {
    let ranges = list.map(|l| l.range.as_slice()).unwrap_or_default();
    match ranges {
        [] => Err(invalid("receiver_settings.port_list: missing")),
        [PortRange { from, to }] if from == to => Ok(json!(from)),
        // The loader refuses ranges with its own message.
        _ => Ok(json!(ranges.iter().map(|r| format!("{}-{}", r.from, r.to)).collect::<Vec<_>>().join(","))),
    }
}

fn address_text(address: &IpOrDomain, field: &str) -> Result<String, InvalidInbound> {
    match &address.address {
        Some(ip_or_domain::Address::Ip(bytes)) => match ip_from_bytes(bytes) {
            Some(ip) => Ok(ip.to_string()),
            None => Err(invalid(format!("{field}.ip: {} bytes is not an IPv4 or IPv6 address", bytes.len()))),
        },
        Some(ip_or_domain::Address::Domain(domain)) => Ok(domain.clone()),
        None => Ok(String::new()),
    }
}

/// `streamSettings` from the API's StreamConfig: the transport's name and, for TLS, its
/// settings; whatever shardray does not serve is passed on for the loader to refuse by name.
fn stream_json(stream: &StreamConfig) -> Result<Value, InvalidInbound> {
    let mut out = Map::new();
    // Older clients still name the transport with the deprecated enum.
    #[allow(deprecated)]
    let network = if stream.protocol_name.is_empty() {
        // The deprecated enum: TCP = 0, UDP, MKCP, WebSocket, HTTP, DomainSocket.
        ["tcp", "udp", "kcp", "ws", "http", "domainsocket"].get(stream.protocol as usize).copied().unwrap_or("unknown")
    } else {
        stream.protocol_name.as_str()
    };
    out.insert("network".into(), json!(network));
    // The transports' own settings: WebSocket's and HTTPUpgrade's become their JSON; any
    // other that says something (a TCP header, ...) is refused rather than dropped.
    for (i, t) in stream.transport_settings.iter().enumerate() {
        let Some(settings) = t.settings.as_ref() else { continue };
        let field = format!("receiver_settings.stream_settings.transport_settings[{i}].settings");
        match message_type(&settings.r#type) {
            Ok((Flavor::Xray, "transport.internet.websocket.Config")) => {
                let c: websocket::Config = decode(&settings.value, WEBSOCKET, &field)?;
                let mut ws = http_transport_json(&c.host, &c.path, &c.header, c.accept_proxy_protocol, c.ed);
                if c.heartbeat_period > 0 {
                    ws["heartbeatPeriod"] = json!(c.heartbeat_period);
                }
                out.insert("wsSettings".into(), ws);
            }
            Ok((Flavor::Xray, "transport.internet.httpupgrade.Config")) => {
                let c: httpupgrade::Config = decode(&settings.value, HTTPUPGRADE, &field)?;
                let json = http_transport_json(&c.host, &c.path, &c.header, c.accept_proxy_protocol, c.ed);
                out.insert("httpupgradeSettings".into(), json);
            }
            Ok((Flavor::Xray, "transport.internet.grpc.encoding.Config")) => {
                let c: grpc::encoding::Config = decode(&settings.value, GRPC, &field)?;
                out.insert("grpcSettings".into(), grpc_json(&c));
            }
            Ok((Flavor::Xray, "transport.internet.splithttp.Config")) => {
                let c: splithttp::Config = decode(&settings.value, SPLITHTTP, &field)?;
                out.insert("xhttpSettings".into(), xhttp_json(&c));
            }
            _ if settings.value.is_empty() => {}
            _ => {
                return Err(invalid(format!(
                    "{field}: {:?} ({:?}) settings are not supported yet",
                    t.protocol_name, settings.r#type
                )))
            }
        }
    }
    if let Some(socket) = &stream.socket_settings {
        if socket.accept_proxy_protocol {
            out.insert("tcpSettings".into(), json!({ "acceptProxyProtocol": true }));
        }
        out.insert("sockopt".into(), sockopt_json(socket));
    }
    if !stream.security_type.is_empty() {
        let (flavor, security) = message_type(&stream.security_type)
            .map_err(|e| invalid(format!("receiver_settings.stream_settings.security_type: {e}")))?;
        if security == "transport.internet.tls.Config" {
            out.insert("security".into(), json!("tls"));
            let settings = stream
                .security_settings
                .iter()
                .find(|m| message_type(&m.r#type).is_ok_and(|(_, n)| n == security))
                .ok_or_else(|| invalid("receiver_settings.stream_settings.security_settings: no TLS settings"))?;
            let field = "receiver_settings.stream_settings.security_settings";
            let settings: tls::Config = match flavor {
                Flavor::V2ray => v2ray_tls(decode(&settings.value, "shardray.compat.v2ray.TlsConfig", field)?)?,
                _ => decode(&settings.value, "xray.transport.internet.tls.Config", field)?,
            };
            out.insert("tlsSettings".into(), tls_json(&settings));
        } else if (flavor, security) == (Flavor::Xray, "transport.internet.reality.Config") {
            out.insert("security".into(), json!("reality"));
            let field = "receiver_settings.stream_settings.security_settings";
            let settings = stream
                .security_settings
                .iter()
                .find(|m| message_type(&m.r#type).is_ok_and(|(_, n)| n == security))
                .ok_or_else(|| invalid(format!("{field}: no REALITY settings")))?;
            let settings: reality::Config = decode(&settings.value, REALITY, field)?;
            out.insert("realitySettings".into(), reality_json(&settings));
        } else {
            // "transport.internet.reality.Config" → "reality"
            let name = security.strip_prefix("transport.internet.").and_then(|s| s.split('.').next());
            out.insert("security".into(), json!(name.unwrap_or(security)));
        }
    }
    Ok(Value::Object(out))
}

/// `realitySettings` from Xray's REALITY message, as its JSON would have said it: keys in
/// base64url, versions as `x.y.z`, short ids in hex. The client's fields are left out, as
/// an inbound ignores them.
fn reality_json(c: &reality::Config) -> Value {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let version = |v: &[u8]| v.iter().map(u8::to_string).collect::<Vec<_>>().join(".");
    let limit = |l: Option<reality::LimitFallback>| {
        let l = l.unwrap_or_default();
        json!({ "afterBytes": l.after_bytes, "bytesPerSec": l.bytes_per_sec, "burstBytesPerSec": l.burst_bytes_per_sec })
    };
    let mut out = json!({
        "show": c.show,
        "target": c.dest,
        "xver": c.xver,
        "serverNames": c.server_names,
        "privateKey": b64(&c.private_key),
        "shortIds": c.short_ids.iter().map(|s| hex(s)).collect::<Vec<_>>(),
        "maxTimeDiff": c.max_time_diff,
        "limitFallbackUpload": limit(c.limit_fallback_upload),
        "limitFallbackDownload": limit(c.limit_fallback_download),
    });
    for (key, value) in [
        ("type", c.r#type.clone()),
        ("minClientVer", version(&c.min_client_ver)),
        ("maxClientVer", version(&c.max_client_ver)),
        ("mldsa65Seed", if c.mldsa65_seed.is_empty() { String::new() } else { b64(&c.mldsa65_seed) }),
        ("masterKeyLog", c.master_key_log.clone()),
    ] {
        if !value.is_empty() {
            out[key] = json!(value);
        }
    }
    out
}

/// The API form of REALITY settings (what `shardray api adi` sends).
fn reality_config(r: &shardray_core::spec::RealityServerSpec) -> reality::Config {
    let (kind, dest) = match &r.target {
        FallbackDest::Tcp(d) => ("tcp", d.to_string()),
        FallbackDest::Unix(p) => ("unix", p.to_string_lossy().into_owned()),
    };
    reality::Config {
        show: r.show,
        dest,
        r#type: kind.into(),
        xver: u64::from(r.xver),
        server_names: r.server_names.clone(),
        private_key: r.private_key.to_vec(),
        min_client_ver: r.min_client_ver.map(|v| v.to_vec()).unwrap_or_default(),
        max_client_ver: r.max_client_ver.map(|v| v.to_vec()).unwrap_or_default(),
        max_time_diff: r.max_time_diff_ms,
        short_ids: r.short_ids.iter().map(|s| s.to_vec()).collect(),
        ..Default::default()
    }
}

/// `grpcSettings` from the API's gRPC Config, in the config's names.
pub(crate) fn grpc_json(c: &grpc::encoding::Config) -> Value {
    json!({
        "serviceName": c.service_name,
        "multiMode": c.multi_mode,
        "idle_timeout": c.idle_timeout,
        "health_check_timeout": c.health_check_timeout,
        "permit_without_stream": c.permit_without_stream,
        "initial_windows_size": c.initial_windows_size,
        "user_agent": c.user_agent,
        "authority": c.authority,
    })
}

/// `xhttpSettings` from the API's splithttp Config, in the config's names: what is unset
/// (empty, 0, a 0-0 range) is left out, so the loader fills Xray's defaults, and marked
/// `fromApiConfig` so that it reads the empty values Xray's server reads otherwise than its
/// config loader as the server does (an empty uplinkDataPlacement is body, obfs mode's empty
/// padding keys stay empty: config/xhttp.rs).
pub(crate) fn xhttp_json(c: &splithttp::Config) -> Value {
    let mut m = Map::new();
    m.insert("fromApiConfig".into(), json!(true));
    let range = |r: &Option<splithttp::RangeConfig>| {
        r.as_ref().filter(|r| r.from != 0 || r.to != 0).map(|r| json!(format!("{}-{}", r.from, r.to)))
    };
    for (k, v) in [
        ("host", &c.host),
        ("path", &c.path),
        ("mode", &c.mode),
        ("xPaddingKey", &c.x_padding_key),
        ("xPaddingHeader", &c.x_padding_header),
        ("xPaddingPlacement", &c.x_padding_placement),
        ("xPaddingMethod", &c.x_padding_method),
        ("uplinkHTTPMethod", &c.uplink_http_method),
        ("sessionIDPlacement", &c.session_id_placement),
        ("sessionIDKey", &c.session_id_key),
        ("seqPlacement", &c.seq_placement),
        ("seqKey", &c.seq_key),
        ("uplinkDataPlacement", &c.uplink_data_placement),
        ("uplinkDataKey", &c.uplink_data_key),
        ("sessionIDTable", &c.session_id_table),
    ] {
        if !v.is_empty() {
            m.insert(k.into(), json!(v));
        }
    }
    for (k, r) in [
        ("xPaddingBytes", &c.x_padding_bytes),
        ("scMaxEachPostBytes", &c.sc_max_each_post_bytes),
        ("scMinPostsIntervalMs", &c.sc_min_posts_interval_ms),
        ("scStreamUpServerSecs", &c.sc_stream_up_server_secs),
        ("uplinkChunkSize", &c.uplink_chunk_size),
        ("sessionIDLength", &c.session_id_length),
    ] {
        if let Some(v) = range(r) {
            m.insert(k.into(), v);
        }
    }
    for (k, v) in [
        ("noGRPCHeader", c.no_grpc_header),
        ("noSSEHeader", c.no_sse_header),
        ("xPaddingObfsMode", c.x_padding_obfs_mode),
    ] {
        if v {
            m.insert(k.into(), json!(true));
        }
    }
    if !c.headers.is_empty() {
        m.insert("headers".into(), json!(c.headers));
    }
    if c.sc_max_buffered_posts != 0 {
        m.insert("scMaxBufferedPosts".into(), json!(c.sc_max_buffered_posts));
    }
    if c.server_max_header_bytes != 0 {
        m.insert("serverMaxHeaderBytes".into(), json!(c.server_max_header_bytes));
    }
    if let Some(x) = &c.xmux {
        let mut xm = Map::new();
        for (k, r) in [
            ("maxConcurrency", &x.max_concurrency),
            ("maxConnections", &x.max_connections),
            ("cMaxReuseTimes", &x.c_max_reuse_times),
            ("hMaxRequestTimes", &x.h_max_request_times),
            ("hMaxReusableSecs", &x.h_max_reusable_secs),
        ] {
            if let Some(v) = range(r) {
                xm.insert(k.into(), v);
            }
        }
        if x.h_keep_alive_period != 0 {
            xm.insert("hKeepAlivePeriod".into(), json!(x.h_keep_alive_period));
        }
        m.insert("xmux".into(), Value::Object(xm));
    }
    if c.download_settings.is_some() {
        // A client's second connection: a server ignores it (the loader checks the mode).
        m.insert("downloadSettings".into(), json!({}));
    }
    Value::Object(m)
}

/// `wsSettings` / `httpupgradeSettings` from the API's fields: the early-data length goes back
/// into the path as `?ed=`, as Xray's JSON writes it.
fn http_transport_json(
    host: &str,
    path: &str,
    headers: &std::collections::HashMap<String, String>,
    accept_proxy_protocol: bool,
    ed: u32,
) -> Value {
    let path = match ed {
        0 => path.to_owned(),
        n if path.contains('?') => format!("{path}&ed={n}"),
        n => format!("{path}?ed={n}"),
    };
    let headers: std::collections::BTreeMap<_, _> = headers.iter().collect();
    let mut out = json!({ "path": path, "host": host, "headers": headers });
    if accept_proxy_protocol {
        out["acceptProxyProtocol"] = json!(true);
    }
    out
}

/// v2fly's TLS settings in Xray's form.
fn v2ray_tls(v2: V2rayTlsConfig) -> Result<tls::Config, InvalidInbound> {
    if v2.verify_client_certificate {
        return Err(invalid("tls: verify_client_certificate: client certificates are not supported yet"));
    }
    // v2fly's TLSVersion: Default, TLS1_0, TLS1_1, TLS1_2, TLS1_3; the loader refuses 1.0 and 1.1.
    let version = |v: i32| ["", "1.0", "1.1", "1.2", "1.3"].get(v as usize).copied().unwrap_or("unknown").to_owned();
    Ok(tls::Config {
        certificate: v2
            .certificate
            .into_iter()
            .map(|c| tls::Certificate { certificate: c.certificate, key: c.key, usage: c.usage, ..Default::default() })
            .collect(),
        server_name: v2.server_name,
        next_protocol: v2.next_protocol,
        min_version: version(v2.min_version),
        max_version: version(v2.max_version),
        ..Default::default()
    })
}

fn pem_lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes).lines().map(str::to_owned).collect()
}

fn tls_json(config: &tls::Config) -> Value {
    let certificates: Vec<Value> = config
        .certificate
        .iter()
        .map(|c| {
            let mut cert = Map::new();
            let usage = match tls::certificate::Usage::try_from(c.usage) {
                Ok(tls::certificate::Usage::Encipherment) => "encipherment",
                Ok(tls::certificate::Usage::AuthorityVerify) => "verify",
                Ok(tls::certificate::Usage::AuthorityIssue) => "issue",
                Err(_) => "unknown",
            };
            cert.insert("usage".into(), json!(usage));
            if !c.certificate.is_empty() {
                cert.insert("certificate".into(), json!(pem_lines(&c.certificate)));
            }
            if !c.key.is_empty() {
                cert.insert("key".into(), json!(pem_lines(&c.key)));
            }
            if !c.certificate_path.is_empty() {
                cert.insert("certificateFile".into(), json!(c.certificate_path));
            }
            if !c.key_path.is_empty() {
                cert.insert("keyFile".into(), json!(c.key_path));
            }
            Value::Object(cert)
        })
        .collect();
    let mut out = Map::new();
    out.insert("certificates".into(), json!(certificates));
    out.insert("serverName".into(), json!(config.server_name));
    if !config.next_protocol.is_empty() {
        out.insert("alpn".into(), json!(config.next_protocol));
    }
    for (key, value) in [
        ("minVersion", &config.min_version),
        ("maxVersion", &config.max_version),
        ("cipherSuites", &config.cipher_suites),
    ] {
        if !value.is_empty() {
            out.insert(key.into(), json!(value));
        }
    }
    if config.enable_session_resumption {
        out.insert("enableSessionResumption".into(), json!(true));
    }
    Value::Object(out)
}

/// A SOCKS or HTTP inbound's accounts as Xray's ServerConfig keeps them: username to
/// password (the emails and levels are ours and do not travel).
fn proxy_accounts(clients: &[UserSpec]) -> std::collections::HashMap<String, String> {
    clients
        .iter()
        .filter_map(|c| match &c.account {
            Account::Socks(a) | Account::Http(a) => Some((a.username.to_string(), a.password.to_string())),
            _ => None,
        })
        .collect()
}

/// A SOCKS or HTTP ServerConfig's accounts as config `accounts`, in username order.
fn accounts_json(accounts: &std::collections::HashMap<String, String>) -> Vec<Value> {
    let mut list: Vec<(&String, &String)> = accounts.iter().collect();
    list.sort();
    list.into_iter().map(|(user, pass)| json!({ "user": user, "pass": pass })).collect()
}

/// A config client: `id` for VLESS, `password` for Trojan.
fn client_json(spec: &UserSpec) -> Value {
    match &spec.account {
        Account::Vless(id, flow) => {
            json!({ "id": id.to_string(), "flow": flow.name(), "email": spec.email, "level": spec.level })
        }
        Account::Trojan(password) => json!({ "password": &**password, "email": spec.email, "level": spec.level }),
        Account::Vmess { id, security } => json!({
            "id": id.to_string(), "security": security.name(), "email": spec.email, "level": spec.level
        }),
        Account::Socks(a) | Account::Http(a) => {
            json!({ "user": &*a.username, "pass": &*a.password, "email": spec.email, "level": spec.level })
        }
        Account::Shadowsocks { method, password } => json!({
            "method": method.name(), "password": &**password, "email": spec.email, "level": spec.level
        }),
        Account::Shadowsocks2022 { key } => json!({ "password": &**key, "email": spec.email, "level": spec.level }),
    }
}

/// The API's users of an inbound speaking `protocol`, as config `clients`.
fn clients_json(
    users: &[shardray_proto::xray::common::protocol::User],
    protocol: &str,
) -> Result<Vec<Value>, InvalidInbound> {
    users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let spec = user_spec(user, protocol).map_err(|e| invalid(format!("proxy_settings.clients[{i}]: {e}")))?;
            Ok(client_json(&spec))
        })
        .collect()
}

/// A config fallback from the API's fields (VLESS's and Trojan's Fallback are alike).
fn fallback_json(name: &str, alpn: &str, path: &str, kind: &str, dest: &str, xver: u64) -> Value {
    json!({ "name": name, "alpn": alpn, "path": path, "type": kind, "dest": dest, "xver": xver })
}

/// A fallback's API fields: (type, dest).
fn fallback_dest(f: &FallbackSpec) -> (&'static str, String) {
    match &f.dest {
        FallbackDest::Tcp(d) => ("tcp", d.to_string()),
        FallbackDest::Unix(p) => ("unix", p.display().to_string()),
    }
}

fn vless_json(config: &vless::inbound::Config, flavor: Flavor) -> Result<Value, InvalidInbound> {
    let clients = clients_json(&config.clients, "vless")?;
    let fallbacks: Vec<Value> =
        config.fallbacks.iter().map(|f| fallback_json(&f.name, &f.alpn, &f.path, &f.r#type, &f.dest, f.xver)).collect();
    // V2Ray clients often leave decryption empty; Xray's own always says "none".
    let decryption = match (config.decryption.as_str(), flavor) {
        ("", Flavor::V2ray) => "none",
        (d, _) => d,
    };
    Ok(json!({ "clients": clients, "decryption": decryption, "fallbacks": fallbacks }))
}

fn dokodemo_json(config: &dokodemo::Config) -> Result<Value, InvalidInbound> {
    if !config.port_map.is_empty() {
        return Err(invalid("proxy_settings.port_map: per-port destinations are not supported yet"));
    }
    let networks: Vec<&str> = config
        .networks
        .iter()
        .map(|n| match Network::try_from(*n) {
            Ok(Network::Tcp | Network::RawTcp) => "tcp",
            Ok(Network::Udp) => "udp",
            Ok(Network::Unix) => "unix",
            _ => "unknown",
        })
        .collect();
    let address = match &config.address {
        Some(a) => address_text(a, "proxy_settings.address")?,
        None => String::new(),
    };
    let mut out = json!({ "address": address, "port": config.port, "userLevel": config.user_level });
    if !networks.is_empty() {
        out["network"] = json!(networks.join(","));
    }
    if config.follow_redirect {
        out["followRedirect"] = json!(true);
    }
    Ok(out)
}

/// `sockopt` JSON for the API's SocketConfig: every field that is set, under Xray's key, so the
/// loader checks it as it checks a config's (and refuses what is not served, by name).
fn sockopt_json(s: &SocketConfig) -> Value {
    let mut out = Map::new();
    let mut put = |key: &str, set: bool, value: Value| {
        if set {
            out.insert(key.into(), value);
        }
    };
    put("mark", s.mark != 0, json!(s.mark));
    put("tcpFastOpen", s.tfo != 0, if s.tfo < 0 { json!(false) } else { json!(s.tfo) });
    put("tproxy", s.tproxy != 0, json!(if s.tproxy == 1 { "tproxy" } else { "redirect" }));
    put("domainStrategy", s.domain_strategy != 0, json!(format!("strategy {}", s.domain_strategy)));
    put("dialerProxy", !s.dialer_proxy.is_empty(), json!(s.dialer_proxy));
    put("tcpKeepAliveInterval", s.tcp_keep_alive_interval != 0, json!(s.tcp_keep_alive_interval));
    put("tcpKeepAliveIdle", s.tcp_keep_alive_idle != 0, json!(s.tcp_keep_alive_idle));
    put("tcpCongestion", !s.tcp_congestion.is_empty(), json!(s.tcp_congestion));
    put("interface", !s.interface.is_empty(), json!(s.interface));
    put("v6only", s.v6only, json!(true));
    put("tcpWindowClamp", s.tcp_window_clamp != 0, json!(s.tcp_window_clamp));
    put("tcpUserTimeout", s.tcp_user_timeout != 0, json!(s.tcp_user_timeout));
    put("tcpMaxSeg", s.tcp_max_seg != 0, json!(s.tcp_max_seg));
    put("tcpMptcp", s.tcp_mptcp, json!(true));
    put("trustedXForwardedFor", !s.trusted_x_forwarded_for.is_empty(), json!(s.trusted_x_forwarded_for));
    Value::Object(out)
}

/// The API's SocketConfig for an inbound's socket options.
fn socket_config(o: &SocketOptions) -> SocketConfig {
    let int = |v: Option<u32>| v.map_or(0, |v| i32::try_from(v).unwrap_or(i32::MAX));
    SocketConfig {
        mark: i32::try_from(o.mark).unwrap_or(i32::MAX),
        tfo: match o.tcp_fast_open {
            None => 0,
            Some(0) => -1,
            Some(n) => int(Some(n)),
        },
        tcp_keep_alive_interval: int(o.keep_alive_interval),
        tcp_keep_alive_idle: int(o.keep_alive_idle),
        tcp_congestion: o.congestion.clone().unwrap_or_default(),
        interface: o.interface.clone().unwrap_or_default(),
        v6only: o.v6_only,
        tcp_window_clamp: int(o.window_clamp),
        tcp_user_timeout: int(o.user_timeout_ms),
        tcp_max_seg: int(o.max_segment),
        trusted_x_forwarded_for: o.trusted_x_forwarded_for.clone(),
        ..Default::default()
    }
}

/// The API form of `xhttpSettings` (Xray's built splithttp Config: every default filled in).
pub(crate) fn xhttp_config(x: &shardray_core::spec::XhttpSpec) -> splithttp::Config {
    use shardray_wire::xhttp::Range;
    let r = |r: Range| {
        Some(splithttp::RangeConfig {
            from: i32::try_from(r.from).unwrap_or(i32::MAX),
            to: i32::try_from(r.to).unwrap_or(i32::MAX),
        })
    };
    let s = &x.settings;
    let p = &s.padding;
    // A 0-0 range in the Config is Xray's default; "no pause" and "no keep-alive padding" are
    // the negative values Xray reads so (config.go, dialer.go, hub.go).
    let or_off =
        |v: Range| if v == Range::default() { Some(splithttp::RangeConfig { from: -1, to: -1 }) } else { r(v) };
    splithttp::Config {
        host: s.host.clone(),
        path: if s.query.is_empty() { s.path.clone() } else { format!("{}?{}", s.path, s.query) },
        mode: s.mode.as_str().into(),
        headers: s.headers.iter().cloned().collect(),
        x_padding_bytes: r(p.bytes),
        no_grpc_header: s.no_grpc_header,
        no_sse_header: s.no_sse_header,
        sc_max_each_post_bytes: r(s.max_each_post_bytes),
        sc_min_posts_interval_ms: or_off(s.min_posts_interval_ms),
        sc_max_buffered_posts: i64::from(s.max_buffered_posts),
        sc_stream_up_server_secs: or_off(s.stream_up_server_secs),
        xmux: Some(splithttp::XmuxConfig {
            max_concurrency: r(x.xmux.max_concurrency),
            max_connections: r(x.xmux.max_connections),
            c_max_reuse_times: r(x.xmux.c_max_reuse_times),
            h_max_request_times: r(x.xmux.h_max_request_times),
            h_max_reusable_secs: r(x.xmux.h_max_reusable_secs),
            h_keep_alive_period: x.xmux.h_keep_alive_period,
        }),
        download_settings: x.download_settings.then(StreamConfig::default),
        x_padding_obfs_mode: p.obfs_mode,
        x_padding_key: p.key.clone(),
        x_padding_header: p.header.clone(),
        x_padding_placement: p.placement.as_str().into(),
        x_padding_method: p.method.as_str().into(),
        uplink_http_method: s.uplink_http_method.clone(),
        session_id_placement: s.session_placement.as_str().into(),
        session_id_key: s.session_key.clone(),
        seq_placement: s.seq_placement.as_str().into(),
        seq_key: s.seq_key.clone(),
        uplink_data_placement: s.uplink_data_placement.as_str().into(),
        uplink_data_key: s.uplink_data_key.clone(),
        uplink_chunk_size: r(s.uplink_chunk_size),
        server_max_header_bytes: i32::try_from(s.server_max_header_bytes).unwrap_or(i32::MAX),
        session_id_table: s.session_id_table.clone(),
        session_id_length: r(s.session_id_length),
    }
}

/// The API form of `grpcSettings`.
pub(crate) fn grpc_config(g: &shardray_core::spec::GrpcSpec) -> grpc::encoding::Config {
    let int = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    grpc::encoding::Config {
        authority: g.authority.clone(),
        service_name: g.service_name.clone(),
        multi_mode: g.multi_mode,
        idle_timeout: int(g.idle_timeout),
        health_check_timeout: int(g.health_check_timeout),
        permit_without_stream: g.permit_without_stream,
        initial_windows_size: int(g.initial_windows_size),
        user_agent: g.user_agent.clone(),
    }
}

/// The API form of a transport: Xray's protocol name and its TransportConfig.
fn transport_config(t: &TransportSpec) -> Option<(&'static str, TransportConfig)> {
    let (name, settings) = match t {
        TransportSpec::Raw => return None,
        TransportSpec::Ws(h) => {
            let c = websocket::Config {
                host: h.host.clone(),
                path: h.path.clone(),
                header: h.headers.iter().cloned().collect(),
                ed: h.early_data,
                ..Default::default()
            };
            ("websocket", typed(WEBSOCKET, &c))
        }
        TransportSpec::HttpUpgrade(h) => {
            let c = httpupgrade::Config {
                host: h.host.clone(),
                path: h.path.clone(),
                header: h.headers.iter().cloned().collect(),
                ed: h.early_data,
                ..Default::default()
            };
            ("httpupgrade", typed(HTTPUPGRADE, &c))
        }
        TransportSpec::Grpc(g) => ("grpc", typed(GRPC, &grpc_config(g))),
        TransportSpec::Xhttp(x) => ("splithttp", typed(SPLITHTTP, &xhttp_config(x))),
    };
    Some((name, TransportConfig { protocol_name: name.into(), settings: Some(settings), ..Default::default() }))
}

/// The API form of a config inbound, users and TLS keys included: what `shardray api adi`
/// sends.
pub fn inbound_config(spec: &InboundSpec) -> InboundHandlerConfig {
    let tls = spec.tls.as_ref().map(|t| {
        let version = |v: Option<TlsVersion>| match v {
            Some(TlsVersion::V1_2) => "1.2".to_owned(),
            Some(TlsVersion::V1_3) => "1.3".to_owned(),
            None => String::new(),
        };
        let settings = tls::Config {
            certificate: t
                .certificates
                .iter()
                .map(|c| tls::Certificate {
                    certificate: c.chain_pem.clone(),
                    key: c.key_pem.clone(),
                    ..Default::default()
                })
                .collect(),
            server_name: t.server_name.clone(),
            next_protocol: t.alpn.clone(),
            min_version: version(t.min_version),
            max_version: version(t.max_version),
            cipher_suites: t.cipher_suites.join(":"),
            enable_session_resumption: t.session_resumption,
            ..Default::default()
        };
        (TLS.to_owned(), vec![typed(TLS, &settings)])
    });
    let tls =
        tls.or_else(|| spec.reality.as_ref().map(|r| (REALITY.to_owned(), vec![typed(REALITY, &reality_config(r))])));
    let sockopt = (spec.sockopt != SocketOptions::default()).then(|| socket_config(&spec.sockopt));
    let transport = transport_config(&spec.transport);
    let stream = (tls.is_some() || sockopt.is_some() || transport.is_some()).then(|| {
        let (security_type, security_settings) = tls.unwrap_or_default();
        let (protocol_name, transport_settings) = match transport {
            Some((name, t)) => (name.to_owned(), vec![t]),
            None => ("tcp".to_owned(), Vec::new()),
        };
        StreamConfig {
            protocol_name,
            transport_settings,
            security_type,
            security_settings,
            socket_settings: sockopt,
            ..Default::default()
        }
    });
    let proxy = match &spec.protocol {
        InboundProtocol::Vless(v) => {
            let fallbacks = v
                .fallbacks
                .iter()
                .map(|f| {
                    let (kind, dest) = fallback_dest(f);
                    vless::inbound::Fallback {
                        name: f.name.clone(),
                        alpn: f.alpn.clone(),
                        path: f.path.clone(),
                        r#type: kind.into(),
                        dest,
                        xver: u64::from(f.xver),
                    }
                })
                .collect();
            let config = vless::inbound::Config {
                clients: v.clients.iter().map(api_user).collect(),
                fallbacks,
                decryption: "none".into(),
                ..Default::default()
            };
            typed(VLESS_INBOUND, &config)
        }
        InboundProtocol::Trojan(t) => {
            let fallbacks = t
                .fallbacks
                .iter()
                .map(|f| {
                    let (kind, dest) = fallback_dest(f);
                    trojan::Fallback {
                        name: f.name.clone(),
                        alpn: f.alpn.clone(),
                        path: f.path.clone(),
                        r#type: kind.into(),
                        dest,
                        xver: u64::from(f.xver),
                    }
                })
                .collect();
            let config = trojan::ServerConfig { users: t.clients.iter().map(api_user).collect(), fallbacks };
            typed(TROJAN_INBOUND, &config)
        }
        InboundProtocol::Vmess(v) => {
            let config =
                vmess::inbound::Config { user: v.clients.iter().map(api_user).collect(), ..Default::default() };
            typed(VMESS_INBOUND, &config)
        }
        InboundProtocol::Socks(p) => {
            let config = socks::ServerConfig {
                auth_type: if p.password_auth { socks::AuthType::Password } else { socks::AuthType::NoAuth } as i32,
                accounts: proxy_accounts(&p.clients),
                address: p.udp_ip.as_ref().map(|a| IpOrDomain {
                    address: Some(match a {
                        shardray_wire::addr::Address::Ip(ip) => ip_or_domain::Address::Ip(ip_bytes(*ip)),
                        shardray_wire::addr::Address::Domain(name) => ip_or_domain::Address::Domain(name.to_string()),
                    }),
                }),
                udp_enabled: p.udp,
                user_level: p.user_level,
            };
            typed(SOCKS_INBOUND, &config)
        }
        InboundProtocol::Http(p) => {
            let config = http::ServerConfig {
                accounts: proxy_accounts(&p.clients),
                allow_transparent: p.allow_transparent,
                user_level: p.user_level,
            };
            typed(HTTP_INBOUND, &config)
        }
        InboundProtocol::Shadowsocks(s) => match (s.method_2022, &s.server_psk) {
            (None, _) => {
                let config = shadowsocks::ServerConfig {
                    users: s.clients.iter().map(api_user).collect(),
                    network: if s.udp {
                        vec![Network::Tcp as i32, Network::Udp as i32]
                    } else {
                        vec![Network::Tcp as i32]
                    },
                };
                typed(SS_INBOUND, &config)
            }
            (Some(method), Some(psk)) => {
                let config = shadowsocks_2022::MultiUserServerConfig {
                    method: method.name().into(),
                    key: psk.to_string(),
                    users: s.clients.iter().map(api_user).collect(),
                    network: if s.udp {
                        vec![Network::Tcp as i32, Network::Udp as i32]
                    } else {
                        vec![Network::Tcp as i32]
                    },
                };
                typed(SS2022_MULTI_INBOUND, &config)
            }
            (Some(method), None) => {
                let user = s.clients.first();
                let config = shadowsocks_2022::ServerConfig {
                    method: method.name().into(),
                    key: match user.map(|u| &u.account) {
                        Some(Account::Shadowsocks2022 { key }) => key.to_string(),
                        _ => String::new(),
                    },
                    email: user.map(|u| u.email.clone()).unwrap_or_default(),
                    level: user.map_or(0, |u| u.level as i32),
                    network: if s.udp {
                        vec![Network::Tcp as i32, Network::Udp as i32]
                    } else {
                        vec![Network::Tcp as i32]
                    },
                };
                typed(SS2022_INBOUND, &config)
            }
        },
        InboundProtocol::Dokodemo(d) => {
            let address = match &d.destination.addr {
                shardray_wire::addr::Address::Ip(ip) => ip_or_domain::Address::Ip(ip_bytes(*ip)),
                shardray_wire::addr::Address::Domain(name) => ip_or_domain::Address::Domain(name.to_string()),
            };
            let config = dokodemo::Config {
                address: Some(IpOrDomain { address: Some(address) }),
                port: u32::from(d.destination.port),
                networks: [(d.network.tcp, Network::Tcp), (d.network.udp, Network::Udp)]
                    .into_iter()
                    .filter_map(|(on, n)| on.then_some(n as i32))
                    .collect(),
                user_level: d.user_level,
                ..Default::default()
            };
            typed(DOKODEMO, &config)
        }
    };
    InboundHandlerConfig {
        tag: spec.tag.clone(),
        receiver_settings: Some(receiver_with(spec, stream, spec.sniffing.as_deref().map(sniffing_config))),
        proxy_settings: Some(proxy),
    }
}

/// The API form of where an inbound listens: its one port and its IP (or its Unix socket, as
/// `listen` names it), and its stream settings.
pub fn receiver_config(spec: &InboundSpec, stream: Option<StreamConfig>) -> TypedMessage {
    receiver_with(spec, stream, None)
}

fn receiver_with(spec: &InboundSpec, stream: Option<StreamConfig>, sniffing: Option<SniffingConfig>) -> TypedMessage {
    let port = u32::from(spec.listen.port());
    let address = match &spec.unix {
        Some(unix) => ip_or_domain::Address::Domain(unix.to_string()),
        None => ip_or_domain::Address::Ip(ip_bytes(spec.listen.ip())),
    };
    let receiver = ReceiverConfig {
        port_list: Some(PortList { range: vec![PortRange { from: port, to: port }] }),
        listen: Some(IpOrDomain { address: Some(address) }),
        stream_settings: stream,
        sniffing_settings: sniffing,
        ..Default::default()
    };
    typed(RECEIVER, &receiver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_inbound;
    use prost::Message;
    use shardray_proto::shardray::compat::v2ray::Certificate as V2rayCertificate;
    use shardray_proto::xray::common::serial::TypedMessage;

    fn load(value: Value) -> InboundSpec {
        load_inbound(value, "inbound").unwrap()
    }

    /// What the server does with an AddInbound request.
    fn through_api(spec: &InboundSpec) -> Result<InboundSpec, String> {
        let json = inbound_json(&inbound_config(spec)).map_err(|e| e.to_string())?;
        load_inbound(json, "inbound").map_err(|e| e.to_string())
    }

    #[test]
    fn a_unix_socket_listen_survives_the_api_form() {
        for listen in ["/dev/shm/x.sock", "/dev/shm/x.sock,0666", "@xray", "@@xray"] {
            let spec = load(json!({
                "tag": "u", "listen": listen, "protocol": "vless",
                "settings": { "decryption": "none", "clients": [] }
            }));
            assert!(spec.unix.is_some(), "{listen}");
            assert_eq!(through_api(&spec).unwrap(), spec, "{listen}");
        }
    }

    #[test]
    fn sniffing_survives_the_api_form() {
        let spec = load(json!({
            "tag": "s", "listen": "127.0.0.1", "port": 4433, "protocol": "vless",
            "settings": { "decryption": "none", "clients": [] },
            "sniffing": { "enabled": true, "destOverride": ["http", "tls"], "routeOnly": true,
                "domainsExcluded": ["apple", "full:a.b", "domain:c.d", "regexp:^e$"],
                "ipsExcluded": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"] }
        }));
        assert!(spec.sniffing.as_ref().is_some_and(|s| s.route_only && s.domains_excluded.len() == 4));
        assert_eq!(spec.sniffing.as_ref().unwrap().ips_excluded.len(), 3);
        assert_eq!(through_api(&spec).unwrap(), spec);
        // An empty IPRule names nothing: refused by name.
        let mut config = inbound_config(&spec);
        let receiver = config.receiver_settings.as_mut().unwrap();
        let mut decoded = ReceiverConfig::decode(receiver.value.as_slice()).unwrap();
        decoded.sniffing_settings.as_mut().unwrap().ips_excluded.push(Default::default());
        receiver.value = decoded.encode_to_vec();
        assert!(inbound_json(&config).unwrap_err().to_string().contains("sniffing_settings.ips_excluded[3]: empty"));
    }

    #[test]
    fn socket_options_survive_the_api_form() {
        let spec = load(json!({
            "tag": "opts", "listen": "127.0.0.1", "port": 4433, "protocol": "vless",
            "settings": { "decryption": "none", "clients": [] },
            "streamSettings": { "sockopt": {
                "tcpFastOpen": false, "mark": 9, "tcpKeepAliveIdle": 30, "tcpCongestion": "bbr",
                "tcpUserTimeout": 5000, "tcpMaxSeg": 1300, "tcpWindowClamp": 4096, "v6only": true,
                "interface": "lo"
            }}
        }));
        assert_eq!(spec.sockopt.tcp_fast_open, Some(0));
        assert_eq!(through_api(&spec).unwrap(), spec);
    }

    #[test]
    fn xhttp_inbounds_survive_the_api_form() {
        let spec = load(json!({
            "tag": "x", "listen": "127.0.0.1", "port": 4433, "protocol": "vless",
            "settings": { "decryption": "none", "clients": [] },
            "streamSettings": { "network": "xhttp", "xhttpSettings": { "path": "/xh?a=1", "host": "cdn.example",
                "mode": "packet-up", "extra": { "xPaddingBytes": "50-60", "headers": { "X-A": "b" },
                    "scMaxBufferedPosts": 7, "xPaddingObfsMode": true, "xPaddingMethod": "tokenish",
                    "seqPlacement": "header", "uplinkDataPlacement": "cookie", "sessionIDTable": "Base62",
                    "sessionIDLength": "8-12", "xmux": { "maxConcurrency": "2-4" }, "downloadSettings": {} } } }
        }));
        let TransportSpec::Xhttp(x) = &spec.transport else { panic!("{:?}", spec.transport) };
        assert_eq!((x.settings.path.as_str(), x.settings.query.as_str()), ("/xh/", "a=1"));
        assert_eq!(x.settings.seq_key, "X-Seq");
        assert!(x.download_settings);
        let api = inbound_config(&spec);
        let receiver = ReceiverConfig::decode(api.receiver_settings.as_ref().unwrap().value.as_slice()).unwrap();
        let t = &receiver.stream_settings.as_ref().unwrap().transport_settings[0];
        assert_eq!((t.protocol_name.as_str(), t.settings.as_ref().unwrap().r#type.as_str()), ("splithttp", SPLITHTTP));
        assert_eq!(through_api(&spec).unwrap(), spec);
    }

    /// Xray's server reads a splithttp Config as config.go's `GetNormalized*` do, not as its
    /// config loader: an empty uplinkDataPlacement is `body` there (the loader's "" is `auto`).
    #[test]
    fn an_api_xhttp_config_that_leaves_uplink_data_placement_empty_is_body() {
        let stream = |c: splithttp::Config| {
            let settings = TypedMessage { r#type: SPLITHTTP.into(), value: c.encode_to_vec() };
            let stream = StreamConfig {
                protocol_name: "splithttp".into(),
                transport_settings: vec![TransportConfig {
                    protocol_name: "splithttp".into(),
                    settings: Some(settings),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let json = stream_json(&stream).unwrap();
            let spec = crate::config::load_xhttp_settings(json["xhttpSettings"].clone(), "x").unwrap();
            spec.settings
        };
        let s = stream(splithttp::Config { path: "/xh".into(), ..Default::default() });
        assert_eq!(s.uplink_data_placement, shardray_wire::xhttp::Placement::Body);
        let auto = stream(splithttp::Config { uplink_data_placement: "auto".into(), ..Default::default() });
        assert_eq!(auto.uplink_data_placement, shardray_wire::xhttp::Placement::Auto);
        // What only a negative value says in a Config (no pause, no keep-alive padding) goes
        // out as one and comes back.
        let spec = load(json!({
            "tag": "x", "listen": "127.0.0.1", "port": 4433, "protocol": "vless",
            "settings": { "decryption": "none", "clients": [] },
            "streamSettings": { "network": "xhttp", "xhttpSettings": { "path": "/xh",
                "scStreamUpServerSecs": -1, "scMinPostsIntervalMs": "0-50" } }
        }));
        let TransportSpec::Xhttp(x) = &spec.transport else { panic!() };
        assert_eq!(x.settings.stream_up_server_secs, shardray_wire::xhttp::Range::default());
        let c = xhttp_config(x);
        assert_eq!(c.sc_stream_up_server_secs, Some(splithttp::RangeConfig { from: -1, to: -1 }));
        assert_eq!(through_api(&spec).unwrap(), spec);
    }

    /// xpadding.go reads a Config's padding keys as they are: in obfs mode an empty
    /// xPaddingKey, xPaddingHeader or xPaddingPlacement stays empty there (the loader fills
    /// them only for a config file), and survives the API form (the journal) so.
    #[test]
    fn an_api_xhttp_config_in_obfs_mode_keeps_its_empty_padding_keys() {
        use shardray_wire::xhttp::{PaddingMethod, Placement};
        let spec_of = |c: splithttp::Config| {
            let inbound = InboundHandlerConfig {
                tag: "x".into(),
                receiver_settings: Some(receiver_config(
                    &load(json!({ "tag": "x", "listen": "127.0.0.1", "port": 4433, "protocol": "vless",
                                  "settings": { "decryption": "none", "clients": [] } })),
                    Some(StreamConfig {
                        protocol_name: "splithttp".into(),
                        transport_settings: vec![TransportConfig {
                            protocol_name: "splithttp".into(),
                            settings: Some(TypedMessage { r#type: SPLITHTTP.into(), value: c.encode_to_vec() }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                )),
                proxy_settings: inbound_config(&load(json!({ "tag": "x", "listen": "127.0.0.1", "port": 4433,
                    "protocol": "vless", "settings": { "decryption": "none", "clients": [] } })))
                .proxy_settings,
            };
            crate::config::load_inbound(inbound_json(&inbound).unwrap(), "inbound").unwrap()
        };
        let spec = spec_of(splithttp::Config { path: "/xh".into(), x_padding_obfs_mode: true, ..Default::default() });
        let TransportSpec::Xhttp(x) = &spec.transport else { panic!("{:?}", spec.transport) };
        let p = &x.settings.padding;
        assert!(p.obfs_mode);
        assert_eq!((p.key.as_str(), p.header.as_str(), p.placement), ("", "", Placement::Empty));
        assert_eq!(p.method, PaddingMethod::RepeatX, "\"\" checks lengths as repeat-x does");
        assert_eq!(through_api(&spec).unwrap(), spec);
        // What the Config does name is kept; without obfs mode the keys are not read at all,
        // and the loader's defaults stand.
        let named = spec_of(splithttp::Config {
            x_padding_obfs_mode: true,
            x_padding_key: "pad".into(),
            x_padding_placement: "cookie".into(),
            ..Default::default()
        });
        let TransportSpec::Xhttp(x) = &named.transport else { panic!() };
        let p = &x.settings.padding;
        assert_eq!((p.key.as_str(), p.header.as_str(), p.placement), ("pad", "", Placement::Cookie));
        let plain = spec_of(splithttp::Config::default());
        let TransportSpec::Xhttp(x) = &plain.transport else { panic!() };
        assert_eq!(x.settings.padding, shardray_wire::xhttp::Padding::default());
        // A config file's "" is the loader's default, obfs mode or not (transport_method.go).
        let file = load(json!({
            "tag": "x", "listen": "127.0.0.1", "port": 4433, "protocol": "vless",
            "settings": { "decryption": "none", "clients": [] },
            "streamSettings": { "network": "xhttp", "xhttpSettings": { "xPaddingObfsMode": true,
                "xPaddingKey": "", "xPaddingHeader": "", "xPaddingPlacement": "" } }
        }));
        let TransportSpec::Xhttp(x) = &file.transport else { panic!() };
        let p = &x.settings.padding;
        assert_eq!(
            (p.key.as_str(), p.header.as_str(), p.placement),
            ("x_padding", "X-Padding", Placement::QueryInHeader)
        );
    }

    #[test]
    fn websocket_and_httpupgrade_inbounds_survive_the_api_form() {
        for (network, key) in [("ws", "wsSettings"), ("httpupgrade", "httpupgradeSettings")] {
            let spec = load(json!({
                "tag": "w", "listen": "127.0.0.1", "port": 4433, "protocol": "vless",
                "settings": { "decryption": "none", "clients": [] },
                "streamSettings": { "network": network,
                    key: { "path": "/p?ed=2048", "host": "cdn.example", "headers": { "X-A": "b" } },
                    "sockopt": { "trustedXForwardedFor": ["CF-Connecting-IP"] } }
            }));
            let http = spec.transport.http().unwrap();
            assert_eq!((http.path.as_str(), http.early_data, http.host.as_str()), ("/p", 2048, "cdn.example"));
            assert_eq!(spec.sockopt.trusted_x_forwarded_for, ["CF-Connecting-IP"]);
            let api = inbound_config(&spec);
            let receiver = ReceiverConfig::decode(&api.receiver_settings.as_ref().unwrap().value[..]).unwrap();
            let stream = receiver.stream_settings.unwrap();
            let name = if network == "ws" { "websocket" } else { "httpupgrade" };
            assert_eq!(stream.protocol_name, name);
            assert_eq!(
                stream.transport_settings[0].settings.as_ref().unwrap().r#type,
                format!("xray.transport.internet.{name}.Config")
            );
            assert_eq!(through_api(&spec).unwrap(), spec);
        }
    }

    #[test]
    fn grpc_inbounds_survive_the_api_form() {
        let spec = load(json!({
            "tag": "g", "listen": "127.0.0.1", "port": 4434, "protocol": "trojan",
            "settings": { "clients": [] },
            "streamSettings": { "network": "grpc", "grpcSettings": { "serviceName": "/a/b|c",
                "multiMode": true, "idle_timeout": 30, "health_check_timeout": -5, "authority": "x.example",
                "user_agent": "ua", "initial_windows_size": 65536, "permit_without_stream": true } }
        }));
        let TransportSpec::Grpc(g) = &spec.transport else { panic!("{:?}", spec.transport) };
        assert_eq!((g.service_name.as_str(), g.idle_timeout, g.health_check_timeout), ("/a/b|c", 30, 0));
        let api = inbound_config(&spec);
        let receiver = ReceiverConfig::decode(&api.receiver_settings.as_ref().unwrap().value[..]).unwrap();
        let stream = receiver.stream_settings.unwrap();
        assert_eq!(stream.protocol_name, "grpc");
        assert_eq!(stream.transport_settings[0].settings.as_ref().unwrap().r#type, GRPC);
        assert_eq!(through_api(&spec).unwrap(), spec);
    }

    #[test]
    fn a_vless_tls_inbound_survives_the_api_form() {
        let spec = load(json!({
            "tag": "in-tls", "listen": "127.0.0.1", "port": 4431, "protocol": "vless",
            "settings": {
                "decryption": "none",
                "clients": [{ "id": "b831381d-6324-4d53-ad4f-8cda48b30811", "email": "a@x", "level": 2 }],
                "fallbacks": [{ "dest": 8080 }, { "path": "/ws", "dest": "/run/ws.sock", "xver": 1 }]
            },
            "streamSettings": { "network": "tcp", "security": "tls", "tlsSettings": {
                "serverName": "example.com", "alpn": ["http/1.1"], "minVersion": "1.2",
                "cipherSuites": "TLS_AES_128_GCM_SHA256:TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "certificates": [{
                    "certificate": ["-----BEGIN CERTIFICATE-----", "AAAA", "-----END CERTIFICATE-----"],
                    "key": ["-----BEGIN PRIVATE KEY-----", "BBBB", "-----END PRIVATE KEY-----"]
                }]
            }}
        }));
        assert_eq!(through_api(&spec).unwrap(), spec);
    }

    /// AddInbound honours a client's Vision flow (kept through the API form) and refuses it
    /// on an inbound without TLS, naming the client's flow.
    #[test]
    fn vision_clients_survive_the_api_form_and_need_tls() {
        let inbound = |stream: Value| {
            json!({
                "tag": "v", "listen": "127.0.0.1", "port": 4432, "protocol": "vless",
                "settings": { "decryption": "none", "clients": [
                    { "id": "b831381d-6324-4d53-ad4f-8cda48b30811", "email": "a@x", "flow": "xtls-rprx-vision" },
                    { "id": "5783a3e7-e373-51cd-8642-c83782b807c5", "email": "b@x" }
                ] },
                "streamSettings": stream
            })
        };
        let spec = load(inbound(json!({ "security": "tls", "tlsSettings": { "certificates": [{
            "certificate": ["-----BEGIN CERTIFICATE-----", "AAAA", "-----END CERTIFICATE-----"],
            "key": ["-----BEGIN PRIVATE KEY-----", "BBBB", "-----END PRIVATE KEY-----"]
        }] } })));
        let back = through_api(&spec).unwrap();
        assert_eq!(back, spec);
        let visions = |s: &InboundSpec| match &s.protocol {
            InboundProtocol::Vless(v) => v.clients.iter().map(|c| c.account.vision()).collect::<Vec<_>>(),
            _ => unreachable!(),
        };
        assert_eq!(visions(&back), [true, false]);

        let mut plain = spec.clone();
        plain.tls = None;
        let err = through_api(&plain).unwrap_err();
        assert!(err.contains("clients[0].flow") && err.contains("tls"), "{err}");
    }

    #[test]
    fn a_vless_reality_inbound_survives_the_api_form() {
        let spec = load(json!({
            "tag": "in-reality", "listen": "127.0.0.1", "port": 4443, "protocol": "vless",
            "settings": { "decryption": "none", "clients": [{ "id": "b831381d-6324-4d53-ad4f-8cda48b30811", "email": "a@x" }] },
            "streamSettings": { "network": "raw", "security": "reality", "realitySettings": {
                "target": "www.example.com:443", "xver": 2, "serverNames": ["www.example.com", "example.com"],
                "privateKey": "wA9uNf9Ho9w-mL4fa5tMLrDXsOUbR-Te4BoQtxu9bHc", "shortIds": ["", "ab", "0123456789abcdef"],
                "minClientVer": "1.8.0", "maxClientVer": "25.9", "maxTimeDiff": 60000, "show": true
            }}
        }));
        assert!(spec.reality.is_some());
        assert_eq!(through_api(&spec).unwrap(), spec);
        let unix = load(json!({
            "tag": "in-reality", "port": 4443, "protocol": "trojan",
            "settings": { "clients": [{ "password": "p", "email": "b@x" }] },
            "streamSettings": { "security": "reality", "realitySettings": {
                "dest": "@site", "serverNames": ["a"], "privateKey": "wA9uNf9Ho9w-mL4fa5tMLrDXsOUbR-Te4BoQtxu9bHc",
                "shortIds": [""] }}
        }));
        assert_eq!(through_api(&unix).unwrap(), unix);
        // What the loader refuses, AddInbound refuses by the same path.
        let mut seeded = inbound_config(&spec);
        let stream = seeded.receiver_settings.as_mut().unwrap();
        let mut receiver: ReceiverConfig = prost::Message::decode(&stream.value[..]).unwrap();
        let security = &mut receiver.stream_settings.as_mut().unwrap().security_settings[0];
        let mut config: reality::Config = prost::Message::decode(&security.value[..]).unwrap();
        config.mldsa65_seed = vec![1; 32];
        *security = typed(REALITY, &config);
        *stream = typed(RECEIVER, &receiver);
        let json = inbound_json(&seeded).unwrap();
        let err = load_inbound(json, "inbound").unwrap_err().to_string();
        assert!(err.starts_with("inbound.streamSettings.realitySettings.mldsa65Seed:"), "{err}");
    }

    #[test]
    fn a_trojan_inbound_survives_the_api_form_in_both_flavors() {
        let spec = load(json!({
            "tag": "tj", "listen": "127.0.0.1", "port": 4433, "protocol": "trojan",
            "settings": {
                "clients": [{ "password": "pass\"word", "email": "a@x", "level": 2 }, { "password": "p2", "email": "b@x" }],
                "fallbacks": [{ "dest": 8080 }, { "alpn": "h2", "path": "/ws", "dest": "/run/ws.sock", "xver": 1 }]
            }
        }));
        assert_eq!(through_api(&spec).unwrap(), spec);
        // v2fly's ServerConfig: its fallbacks have no name and number alpn..xver from 1.
        let v2 = V2rayTrojanServer {
            users: match &spec.protocol {
                InboundProtocol::Trojan(t) => t.clients.iter().map(api_user).collect(),
                _ => unreachable!(),
            },
            fallbacks: vec![
                shardray_proto::shardray::compat::v2ray::TrojanFallback { dest: "8080".into(), ..Default::default() },
                shardray_proto::shardray::compat::v2ray::TrojanFallback {
                    alpn: "h2".into(),
                    path: "/ws".into(),
                    dest: "/run/ws.sock".into(),
                    xver: 1,
                    ..Default::default()
                },
            ],
        };
        let mut config = inbound_config(&spec);
        config.proxy_settings = Some(typed("v2ray.core.proxy.trojan.ServerConfig", &v2));
        assert_eq!(load_inbound(inbound_json(&config).unwrap(), "inbound").unwrap(), spec);
    }

    #[test]
    fn a_dokodemo_inbound_survives_the_api_form() {
        let spec = load(json!({
            "tag": "fwd", "listen": "::1", "port": 7000, "protocol": "dokodemo-door",
            "settings": { "address": "example.com", "port": 80, "network": "tcp", "userLevel": 1 }
        }));
        assert_eq!(through_api(&spec).unwrap(), spec);
        for network in ["udp", "tcp,udp"] {
            let spec = load(json!({
                "tag": "dns", "listen": "127.0.0.1", "port": 5353, "protocol": "dokodemo-door",
                "settings": { "address": "1.1.1.1", "port": 53, "network": network }
            }));
            assert_eq!(through_api(&spec).unwrap(), spec, "{network}");
        }
    }

    fn handler(receiver: TypedMessage, proxy: TypedMessage) -> InboundHandlerConfig {
        InboundHandlerConfig { tag: "t".into(), receiver_settings: Some(receiver), proxy_settings: Some(proxy) }
    }

    fn receiver(ports: Vec<PortRange>) -> TypedMessage {
        typed(RECEIVER, &ReceiverConfig { port_list: Some(PortList { range: ports }), ..Default::default() })
    }

    fn refusal(config: &InboundHandlerConfig) -> String {
        match inbound_json(config) {
            Err(e) => e.to_string(),
            Ok(json) => load_inbound(json, "inbound").unwrap_err().to_string(),
        }
    }

    /// The v2fly forms a V2Ray client sends: built here field by field from upstream's .proto
    /// numbers, they must load as the same inbound as the Xray forms.
    #[test]
    fn v2rays_own_forms_read_as_xrays() {
        let spec = load(json!({
            "tag": "v2", "listen": "127.0.0.1", "port": 4432, "protocol": "vless",
            "settings": { "decryption": "none",
                          "clients": [{ "id": "b831381d-6324-4d53-ad4f-8cda48b30811", "email": "a@x" }] },
            "streamSettings": { "security": "tls", "tlsSettings": {
                "serverName": "example.com", "alpn": ["h2"], "minVersion": "1.2", "maxVersion": "1.3",
                "certificates": [{
                    "certificate": ["-----BEGIN CERTIFICATE-----", "AAAA", "-----END CERTIFICATE-----"],
                    "key": ["-----BEGIN PRIVATE KEY-----", "BBBB", "-----END PRIVATE KEY-----"]
                }]
            }}
        }));
        let cert = &spec.tls.as_ref().unwrap().certificates[0];
        let tls = V2rayTlsConfig {
            certificate: vec![V2rayCertificate {
                certificate: cert.chain_pem.clone(),
                key: cert.key_pem.clone(),
                usage: 0,
            }],
            server_name: "example.com".into(),
            next_protocol: vec!["h2".into()],
            verify_client_certificate: false,
            min_version: 3,
            max_version: 4,
        };
        let loopback = || Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) });
        let receiver = V2rayReceiverConfig {
            port_range: Some(PortRange { from: 4432, to: 4432 }),
            listen: loopback(),
            stream_settings: Some(StreamConfig {
                protocol_name: "tcp".into(),
                security_type: "v2ray.core.transport.internet.tls.Config".into(),
                security_settings: vec![typed("v2ray.core.transport.internet.tls.Config", &tls)],
                ..Default::default()
            }),
            sniffing_settings: None,
        };
        let mut proxy = inbound_config(&spec).proxy_settings.unwrap();
        proxy.r#type = "v2ray.core.proxy.vless.inbound.Config".into();
        let v2 = InboundHandlerConfig {
            tag: "v2".into(),
            receiver_settings: Some(typed("types.v2fly.org/v2ray.core.app.proxyman.ReceiverConfig", &receiver)),
            proxy_settings: Some(proxy),
        };
        assert_eq!(load_inbound(inbound_json(&v2).unwrap(), "inbound").unwrap(), spec);

        // dokodemo-door: v2fly's field 3 is a network list, not Xray's port map.
        let fwd = load(json!({
            "tag": "fwd", "listen": "127.0.0.1", "port": 7001, "protocol": "dokodemo-door",
            "settings": { "address": "10.0.0.1", "port": 22, "network": "tcp" }
        }));
        let dokodemo = V2rayDokodemo {
            address: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![10, 0, 0, 1])) }),
            port: 22,
            follow_redirect: false,
            user_level: 0,
            networks: vec![Network::Tcp as i32],
            network_list: None,
        };
        let mut bytes = dokodemo.encode_to_vec();
        // The deprecated network list at field 3 that old clients still send: [TCP].
        bytes.extend_from_slice(&[0x1a, 0x02, 0x08, 0x02]);
        let receiver = V2rayReceiverConfig {
            port_range: Some(PortRange { from: 7001, to: 7001 }),
            listen: loopback(),
            ..Default::default()
        };
        let v2 = InboundHandlerConfig {
            tag: "fwd".into(),
            receiver_settings: Some(typed("v2ray.core.app.proxyman.ReceiverConfig", &receiver)),
            proxy_settings: Some(TypedMessage { r#type: "v2ray.core.proxy.dokodemo.Config".into(), value: bytes }),
        };
        assert_eq!(load_inbound(inbound_json(&v2).unwrap(), "inbound").unwrap(), fwd);
    }

    #[test]
    fn refusals_name_the_field() {
        let vless = typed(VLESS_INBOUND, &vless::inbound::Config { decryption: "none".into(), ..Default::default() });
        let one_port = || receiver(vec![PortRange { from: 1000, to: 1000 }]);

        let socks = TypedMessage { r#type: "xray.proxy.socks.ServerConfig".into(), value: vec![] };
        assert!(refusal(&handler(socks, vless.clone())).contains("xray.app.proxyman.ReceiverConfig"));
        assert!(refusal(&handler(receiver(vec![]), vless.clone())).contains("port_list: missing"));
        let range = receiver(vec![PortRange { from: 1000, to: 1010 }]);
        assert!(refusal(&handler(range, vless.clone())).contains("inbound.port"));

        let wireguard = TypedMessage { r#type: "xray.proxy.wireguard.DeviceConfig".into(), value: vec![] };
        assert!(refusal(&handler(one_port(), wireguard)).contains("\"wireguard\""));

        let nameless = vless::inbound::Config {
            clients: vec![api_user(&shardray_core::spec::UserSpec {
                account: Account::Vless(uuid::Uuid::nil(), Default::default()),
                email: String::new(),
                level: 0,
                quota: Default::default(),
            })],
            decryption: "none".into(),
            ..Default::default()
        };
        let nameless = typed(VLESS_INBOUND, &nameless);
        assert!(refusal(&handler(one_port(), nameless)).contains("proxy_settings.clients[0]: user: email is required"));

        // A TCP header in the transport's settings is refused, not dropped.
        let header = shardray_proto::xray::transport::internet::TransportConfig {
            protocol_name: "tcp".into(),
            settings: Some(TypedMessage {
                r#type: "xray.transport.internet.tcp.Config".into(),
                value: vec![0x12, 0x00],
            }),
            ..Default::default()
        };
        let stream =
            StreamConfig { protocol_name: "tcp".into(), transport_settings: vec![header], ..Default::default() };
        let with_header = typed(
            RECEIVER,
            &ReceiverConfig {
                port_list: Some(PortList { range: vec![PortRange { from: 1000, to: 1000 }] }),
                stream_settings: Some(stream),
                ..Default::default()
            },
        );
        let why = refusal(&handler(with_header, vless.clone()));
        assert!(why.contains("transport_settings[0].settings: \"tcp\""), "{why}");
        assert!(why.contains("settings are not supported yet"), "{why}");

        let mut untagged = handler(one_port(), vless);
        untagged.tag.clear();
        assert!(refusal(&untagged).contains("inbound.tag"));
    }
}
