//! Inbounds between their API form (`InboundHandlerConfig`, as AddInbound carries it) and
//! their config form. The server turns the API form into config JSON and validates it with the
//! config loader, so an inbound added at run time passes exactly the checks of one in a config
//! file, and errors name the JSON field; `shardray api adi` goes the other way, from a loaded
//! config inbound to the API form.

use std::fmt;
use std::net::IpAddr;

use serde_json::{json, Map, Value};
use shardray_core::spec::{FallbackDest, InboundProtocol, InboundSpec, TlsVersion};
use shardray_proto::xray::app::proxyman::ReceiverConfig;
use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain, Network, PortList, PortRange};
use shardray_proto::xray::core::InboundHandlerConfig;
use shardray_proto::xray::proxy::{dokodemo, vless};
use shardray_proto::xray::transport::internet::{tls, StreamConfig};

use super::{message_type, typed, user_spec, vless_user, Flavor};

/// The TypedMessage names this module reads and writes.
const RECEIVER: &str = "xray.app.proxyman.ReceiverConfig";
const TLS: &str = "xray.transport.internet.tls.Config";
const VLESS_INBOUND: &str = "xray.proxy.vless.inbound.Config";
const DOKODEMO: &str = "xray.proxy.dokodemo.Config";

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

fn decode<M: prost::Message + Default>(bytes: &[u8], field: &str) -> Result<M, InvalidInbound> {
    M::decode(bytes).map_err(|e| invalid(format!("{field}: cannot decode: {e}")))
}

/// The config JSON (one element of `inbounds`) for an API inbound.
pub fn inbound_json(config: &InboundHandlerConfig) -> Result<Value, InvalidInbound> {
    let mut out = Map::new();
    out.insert("tag".into(), json!(config.tag));

    let receiver = config.receiver_settings.as_ref().ok_or_else(|| invalid("receiver_settings: missing"))?;
    match message_type(&receiver.r#type) {
        Ok((Flavor::Xray, "app.proxyman.ReceiverConfig")) => {}
        // v2fly numbers this message's fields differently (port_range = 1, stream_settings = 4).
        Ok((Flavor::V2ray, "app.proxyman.ReceiverConfig")) => {
            return Err(invalid(format!("receiver_settings: {:?} is not supported: send {RECEIVER}", receiver.r#type)))
        }
        _ => return Err(invalid(format!("receiver_settings: expected {RECEIVER}, got {:?}", receiver.r#type))),
    }
    let receiver: ReceiverConfig = decode(&receiver.value, "receiver_settings")?;
    out.insert("port".into(), port_json(receiver.port_list.as_ref())?);
    if let Some(listen) = &receiver.listen {
        out.insert("listen".into(), json!(address_text(listen, "receiver_settings.listen")?));
    }
    if let Some(stream) = &receiver.stream_settings {
        out.insert("streamSettings".into(), stream_json(stream)?);
    }
    if receiver.sniffing_settings.as_ref().is_some_and(|s| s.enabled) {
        out.insert("sniffing".into(), json!({ "enabled": true }));
    }

    let proxy = config.proxy_settings.as_ref().ok_or_else(|| invalid("proxy_settings: missing"))?;
    let (flavor, name) = message_type(&proxy.r#type).map_err(|e| invalid(format!("proxy_settings: {e}")))?;
    match name {
        "proxy.vless.inbound.Config" => {
            let settings: vless::inbound::Config = decode(&proxy.value, "proxy_settings")?;
            out.insert("protocol".into(), json!("vless"));
            out.insert("settings".into(), vless_json(&settings, flavor)?);
        }
        "proxy.dokodemo.Config" => {
            let settings: dokodemo::Config = decode(&proxy.value, "proxy_settings")?;
            out.insert("protocol".into(), json!("dokodemo-door"));
            out.insert("settings".into(), dokodemo_json(&settings)?);
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
        Some(ip_or_domain::Address::Ip(bytes)) => match bytes.len() {
            4 => Ok(IpAddr::from(<[u8; 4]>::try_from(&bytes[..]).unwrap_or_default()).to_string()),
            16 => Ok(IpAddr::from(<[u8; 16]>::try_from(&bytes[..]).unwrap_or_default()).to_string()),
            n => Err(invalid(format!("{field}.ip: {n} bytes is not an IPv4 or IPv6 address"))),
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
    if stream.socket_settings.as_ref().is_some_and(|s| s.accept_proxy_protocol) {
        out.insert("tcpSettings".into(), json!({ "acceptProxyProtocol": true }));
    }
    if !stream.security_type.is_empty() {
        let (_, security) = message_type(&stream.security_type)
            .map_err(|e| invalid(format!("receiver_settings.stream_settings.security_type: {e}")))?;
        if security == "transport.internet.tls.Config" {
            out.insert("security".into(), json!("tls"));
            let settings = stream
                .security_settings
                .iter()
                .find(|m| message_type(&m.r#type).is_ok_and(|(_, n)| n == security))
                .ok_or_else(|| invalid("receiver_settings.stream_settings.security_settings: no TLS settings"))?;
            let settings: tls::Config = decode(&settings.value, "receiver_settings.stream_settings.security_settings")?;
            out.insert("tlsSettings".into(), tls_json(&settings));
        } else {
            // "transport.internet.reality.Config" → "reality"
            let name = security.strip_prefix("transport.internet.").and_then(|s| s.split('.').next());
            out.insert("security".into(), json!(name.unwrap_or(security)));
        }
    }
    Ok(Value::Object(out))
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
    Value::Object(out)
}

fn vless_json(config: &vless::inbound::Config, flavor: Flavor) -> Result<Value, InvalidInbound> {
    let clients = config
        .clients
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let spec = user_spec(user, "vless").map_err(|e| invalid(format!("proxy_settings.clients[{i}]: {e}")))?;
            Ok(json!({ "id": spec.id.to_string(), "email": spec.email, "level": spec.level }))
        })
        .collect::<Result<Vec<_>, InvalidInbound>>()?;
    let fallbacks: Vec<Value> = config
        .fallbacks
        .iter()
        .map(|f| {
            json!({ "name": f.name, "alpn": f.alpn, "path": f.path, "type": f.r#type, "dest": f.dest, "xver": f.xver })
        })
        .collect();
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

/// The API form of a config inbound, users and TLS keys included: what `shardray api adi`
/// sends.
pub fn inbound_config(spec: &InboundSpec) -> InboundHandlerConfig {
    let ip = match spec.listen.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let port = u32::from(spec.listen.port());
    let stream = spec.tls.as_ref().map(|t| {
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
            ..Default::default()
        };
        StreamConfig {
            protocol_name: "tcp".into(),
            security_type: TLS.into(),
            security_settings: vec![typed(TLS, &settings)],
            ..Default::default()
        }
    });
    let receiver = ReceiverConfig {
        port_list: Some(PortList { range: vec![PortRange { from: port, to: port }] }),
        listen: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(ip)) }),
        stream_settings: stream,
        ..Default::default()
    };
    let proxy = match &spec.protocol {
        InboundProtocol::Vless(v) => {
            let fallbacks = v
                .fallbacks
                .iter()
                .map(|f| {
                    let (kind, dest) = match &f.dest {
                        FallbackDest::Tcp(d) => ("tcp", d.to_string()),
                        FallbackDest::Unix(p) => ("unix", p.display().to_string()),
                    };
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
                clients: v.clients.iter().map(vless_user).collect(),
                fallbacks,
                decryption: "none".into(),
                ..Default::default()
            };
            typed(VLESS_INBOUND, &config)
        }
        InboundProtocol::Dokodemo(d) => {
            let address = match &d.destination.addr {
                shardray_wire::addr::Address::Ip(IpAddr::V4(v4)) => ip_or_domain::Address::Ip(v4.octets().to_vec()),
                shardray_wire::addr::Address::Ip(IpAddr::V6(v6)) => ip_or_domain::Address::Ip(v6.octets().to_vec()),
                shardray_wire::addr::Address::Domain(name) => ip_or_domain::Address::Domain(name.to_string()),
            };
            let config = dokodemo::Config {
                address: Some(IpOrDomain { address: Some(address) }),
                port: u32::from(d.destination.port),
                networks: vec![Network::Tcp as i32],
                user_level: d.user_level,
                ..Default::default()
            };
            typed(DOKODEMO, &config)
        }
    };
    InboundHandlerConfig {
        tag: spec.tag.clone(),
        receiver_settings: Some(typed(RECEIVER, &receiver)),
        proxy_settings: Some(proxy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_inbound;
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
    fn a_vless_tls_inbound_survives_the_api_form() {
        let spec = load(json!({
            "tag": "in-tls", "listen": "127.0.0.1", "port": 4431, "protocol": "vless",
            "settings": {
                "decryption": "none",
                "clients": [{ "id": "b831381d-6324-4d53-ad4f-8cda48b30811", "email": "a@x", "level": 2 }],
                "fallbacks": [{ "dest": 8080 }, { "path": "/ws", "dest": "/run/ws.sock", "xver": 1 }]
            },
            "streamSettings": { "network": "tcp", "security": "tls", "tlsSettings": {
                "serverName": "example.com", "alpn": ["http/1.1"], "minVersion": "1.3",
                "certificates": [{
                    "certificate": ["-----BEGIN CERTIFICATE-----", "AAAA", "-----END CERTIFICATE-----"],
                    "key": ["-----BEGIN PRIVATE KEY-----", "BBBB", "-----END PRIVATE KEY-----"]
                }]
            }}
        }));
        assert_eq!(through_api(&spec).unwrap(), spec);
    }

    #[test]
    fn a_dokodemo_inbound_survives_the_api_form() {
        let spec = load(json!({
            "tag": "fwd", "listen": "::1", "port": 7000, "protocol": "dokodemo-door",
            "settings": { "address": "example.com", "port": 80, "network": "tcp", "userLevel": 1 }
        }));
        assert_eq!(through_api(&spec).unwrap(), spec);
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

    #[test]
    fn refusals_name_the_field() {
        let vless = typed(VLESS_INBOUND, &vless::inbound::Config { decryption: "none".into(), ..Default::default() });
        let one_port = || receiver(vec![PortRange { from: 1000, to: 1000 }]);

        let v2ray = TypedMessage { r#type: "v2ray.core.app.proxyman.ReceiverConfig".into(), value: vec![] };
        assert!(refusal(&handler(v2ray, vless.clone())).contains("xray.app.proxyman.ReceiverConfig"));
        assert!(refusal(&handler(receiver(vec![]), vless.clone())).contains("port_list: missing"));
        let range = receiver(vec![PortRange { from: 1000, to: 1010 }]);
        assert!(refusal(&handler(range, vless.clone())).contains("inbound.port"));

        let vmess = TypedMessage { r#type: "xray.proxy.vmess.inbound.Config".into(), value: vec![] };
        assert!(refusal(&handler(one_port(), vmess)).contains("\"vmess\""));

        let nameless = vless::inbound::Config {
            clients: vec![vless_user(&shardray_core::spec::UserSpec {
                id: uuid::Uuid::nil(),
                email: String::new(),
                level: 0,
            })],
            decryption: "none".into(),
            ..Default::default()
        };
        let nameless = typed(VLESS_INBOUND, &nameless);
        assert!(refusal(&handler(one_port(), nameless)).contains("proxy_settings.clients[0]: user: email is required"));

        let mut untagged = handler(one_port(), vless);
        untagged.tag.clear();
        assert!(refusal(&untagged).contains("inbound.tag"));
    }
}
