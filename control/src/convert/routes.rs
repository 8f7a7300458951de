//! Outbounds and routing rules between the API's protobuf form and the validated spec, both
//! ways: what AddOutbound and AddRule receive, what the journal keeps, what `shardray api ado`
//! sends. A setting shardray does not serve is refused by name, never dropped: a message that
//! decodes with fields we do not know is refused too.

use std::fmt;

use ipnet::IpNet;
use prost::Message;
use shardray_core::spec::{
    BalancerSpec, BalancerStrategy, BlackholeSpec, DnsNetwork, DnsOutboundSpec, DomainMatcher, DomainStrategy,
    FreedomSpec, HttpTransportSpec, NetworkSet, NonIpQuery, OutboundProtocol, OutboundSpec, PortRange,
    ProxyOutboundSpec, RealityClientSpec, RuleSpec, ShadowsocksOutboundSpec, TlsClientSpec, TransportSpec,
    TrojanOutboundSpec, VlessOutboundSpec, VmessOutboundSpec,
};
use shardray_proto::xray::app::proxyman::SenderConfig;
use shardray_proto::xray::app::router;
use shardray_proto::xray::common::geodata;
use shardray_proto::xray::common::net;
use shardray_proto::xray::common::protocol::ServerEndpoint;
use shardray_proto::xray::common::serial::TypedMessage;
use shardray_proto::xray::core::OutboundHandlerConfig;
use shardray_proto::xray::proxy::{
    blackhole, dns, freedom, http, shadowsocks, shadowsocks_2022, socks, trojan, vless, vmess,
};
use shardray_proto::xray::transport::internet::{reality, tls, StreamConfig};
use shardray_wire::addr::{Address, Destination};

use super::{ip_bytes, ip_from_bytes, message_type, typed};

/// An outbound or routing config from the API that shardray cannot run; the text names the
/// field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRoute(pub String);

impl fmt::Display for InvalidRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidRoute {}

fn invalid(text: impl Into<String>) -> InvalidRoute {
    InvalidRoute(text.into())
}

/// Decodes `bytes` as `M` (the message `full_name`), refusing field numbers it does not define.
fn exact<M: Message + Default>(bytes: &[u8], full_name: &str, what: &str) -> Result<M, InvalidRoute> {
    super::decode_known(bytes, full_name).map_err(|e| invalid(format!("{what}: {e}")))
}

/// The name after the package root of a TypedMessage type, or why it has none.
fn type_name<'a>(t: &'a TypedMessage, what: &str) -> Result<&'a str, InvalidRoute> {
    message_type(&t.r#type).map(|(_, name)| name).map_err(|e| invalid(format!("{what}: {e}")))
}

// === outbounds ===

/// AddOutbound's config as an outbound shardray runs.
pub fn outbound_spec(config: &OutboundHandlerConfig) -> Result<OutboundSpec, InvalidRoute> {
    if config.expire != 0 {
        return Err(invalid("expire: outbounds that expire are not supported yet"));
    }
    let mut send_through = None;
    let mut stream_settings = None;
    if let Some(sender) = &config.sender_settings {
        let name = type_name(sender, "sender_settings")?;
        if name != "app.proxyman.SenderConfig" {
            return Err(invalid(format!(
                "sender_settings: expected app.proxyman.SenderConfig, got {:?}",
                sender.r#type
            )));
        }
        let s: SenderConfig = exact(&sender.value, "xray.app.proxyman.SenderConfig", "sender_settings")?;
        if let Some(via) = &s.via {
            send_through = Some(match &via.address {
                Some(net::ip_or_domain::Address::Ip(ip)) => {
                    ip_from_bytes(ip).ok_or_else(|| invalid("sender_settings.via: not an IP address"))?
                }
                Some(net::ip_or_domain::Address::Domain(d)) if d == "origin" => {
                    return Err(invalid("sender_settings.via: sendThrough \"origin\" is not supported yet"))
                }
                Some(net::ip_or_domain::Address::Domain(d)) => {
                    return Err(invalid(format!("sender_settings.via: {d:?} is not an IP address")))
                }
                None => return Err(invalid("sender_settings.via: empty")),
            });
        }
        stream_settings = s.stream_settings.clone();
        if s.proxy_settings.as_ref().is_some_and(|p| !p.tag.is_empty()) {
            return Err(invalid("sender_settings.proxy_settings: proxySettings is not supported yet"));
        }
        if s.multiplex_settings.as_ref().is_some_and(|m| m.enabled) {
            return Err(invalid("sender_settings.multiplex_settings: mux is not supported yet"));
        }
        if !s.via_cidr.is_empty() {
            return Err(invalid("sender_settings.via_cidr: not supported yet"));
        }
        if s.target_strategy != 0 {
            return Err(invalid("sender_settings.target_strategy: only AsIs is supported yet"));
        }
    }
    let proxy = config.proxy_settings.as_ref().ok_or_else(|| invalid("proxy_settings: missing"))?;
    let name = type_name(proxy, "proxy_settings")?;
    let protocol = match name {
        "proxy.freedom.Config" => OutboundProtocol::Freedom(freedom_spec(&exact(
            &proxy.value,
            "xray.proxy.freedom.Config",
            "proxy_settings",
        )?)?),
        "proxy.dns.Config" => {
            OutboundProtocol::Dns(dns_spec(&exact(&proxy.value, "xray.proxy.dns.Config", "proxy_settings")?)?)
        }
        "proxy.blackhole.Config" => OutboundProtocol::Blackhole(blackhole_spec(&exact(
            &proxy.value,
            "xray.proxy.blackhole.Config",
            "proxy_settings",
        )?)?),
        "proxy.trojan.ClientConfig" => OutboundProtocol::Trojan(trojan_spec(
            &exact(&proxy.value, "xray.proxy.trojan.ClientConfig", "proxy_settings")?,
            stream_settings.take().as_ref(),
        )?),
        "proxy.vmess.outbound.Config" => OutboundProtocol::Vmess(vmess_spec(
            &exact(&proxy.value, "xray.proxy.vmess.outbound.Config", "proxy_settings")?,
            stream_settings.take().as_ref(),
        )?),
        "proxy.socks.ClientConfig" => {
            let c: socks::ClientConfig = exact(&proxy.value, "xray.proxy.socks.ClientConfig", "proxy_settings")?;
            OutboundProtocol::Socks(proxy_spec(c.server.as_ref(), &[], stream_settings.take().as_ref(), "socks")?)
        }
        "proxy.http.ClientConfig" => {
            let c: http::ClientConfig = exact(&proxy.value, "xray.proxy.http.ClientConfig", "proxy_settings")?;
            let headers: Vec<(String, String)> = c.header.into_iter().map(|h| (h.key, h.value)).collect();
            OutboundProtocol::Http(proxy_spec(c.server.as_ref(), &headers, stream_settings.take().as_ref(), "http")?)
        }
        "proxy.vless.outbound.Config" => OutboundProtocol::Vless(vless_spec(
            &exact(&proxy.value, "xray.proxy.vless.outbound.Config", "proxy_settings")?,
            stream_settings.take().as_ref(),
        )?),
        "proxy.shadowsocks.ClientConfig" => {
            let c: shadowsocks::ClientConfig =
                exact(&proxy.value, "xray.proxy.shadowsocks.ClientConfig", "proxy_settings")?;
            let (server, spec) = client_endpoint(c.server.as_slice(), "shadowsocks", "Shadowsocks")?;
            let shardray_core::spec::Account::Shadowsocks { method, password } = spec.account else {
                return Err(invalid("proxy_settings.server[0].user.account: not a Shadowsocks account"));
            };
            OutboundProtocol::Shadowsocks(ShadowsocksOutboundSpec {
                server,
                method,
                password: password.to_string(),
                email: spec.email,
                level: spec.level,
            })
        }
        "proxy.shadowsocks_2022.ClientConfig" => OutboundProtocol::Shadowsocks(ss2022_spec(&exact(
            &proxy.value,
            "xray.proxy.shadowsocks_2022.ClientConfig",
            "proxy_settings",
        )?)?),
        other => {
            return Err(match other.strip_prefix("proxy.").and_then(|p| p.split('.').next()) {
                Some(p) => invalid(format!("proxy_settings: outbound protocol {p:?} is not supported yet")),
                None => invalid(format!("proxy_settings: {:?} is not an outbound protocol's config", proxy.r#type)),
            })
        }
    };
    // Trojan has read its own; the others' may only restate the default.
    if let Some(stream) = &stream_settings {
        check_plain_stream(stream)?;
    }
    // Socket options through the API are refused above (socket_settings), as not served.
    Ok(OutboundSpec { tag: config.tag.clone(), send_through, sockopt: Default::default(), protocol })
}

/// The one server (address, port) and the one user of a client config (`server` or
/// `Receiver`), its account of `protocol`; `name` is how messages call the protocol.
fn client_endpoint(
    servers: &[ServerEndpoint],
    protocol: &str,
    name: &str,
) -> Result<(Destination, shardray_core::spec::UserSpec), InvalidRoute> {
    let server = match servers {
        [] => return Err(invalid("proxy_settings.server: missing")),
        [one] => one,
        _ => {
            return Err(invalid(format!("proxy_settings.server[1]: more than one {name} server is not supported yet")))
        }
    };
    let addr = match server.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(net::ip_or_domain::Address::Ip(ip)) => {
            Address::Ip(ip_from_bytes(ip).ok_or_else(|| invalid("proxy_settings.server[0].address: not an IP"))?)
        }
        Some(net::ip_or_domain::Address::Domain(d)) => {
            Address::parse(d).ok_or_else(|| invalid(format!("proxy_settings.server[0].address: {d:?}")))?
        }
        None => return Err(invalid("proxy_settings.server[0].address: missing")),
    };
    let port = u16::try_from(server.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(format!("proxy_settings.server[0].port: {} is not a port", server.port)))?;
    let user = match server.user.as_slice() {
        [one] => one,
        _ => return Err(invalid("proxy_settings.server[0].user: exactly one user is required")),
    };
    let spec = super::user_spec(user, protocol)
        .or_else(|e| match e {
            // The email is only for logs here.
            super::InvalidUser::MissingEmail => {
                let mut named = user.clone();
                named.email = "-".into();
                super::user_spec(&named, protocol).map(|mut u| {
                    u.email.clear();
                    u
                })
            }
            e => Err(e),
        })
        .map_err(|e| invalid(format!("proxy_settings.server[0].{e}")))?;
    Ok((Destination { addr, port }, spec))
}

/// A SOCKS or HTTP ClientConfig (one server, no user or one) and its sender's stream settings.
fn proxy_spec(
    server: Option<&ServerEndpoint>,
    headers: &[(String, String)],
    stream: Option<&StreamConfig>,
    protocol: &str,
) -> Result<ProxyOutboundSpec, InvalidRoute> {
    let server = server.ok_or_else(|| invalid("proxy_settings.server: missing"))?;
    let (dest, user) = if server.user.is_empty() {
        // No user: the address and port are read as for one with a user.
        let mut probe = server.clone();
        probe.user.push(shardray_proto::xray::common::protocol::User {
            account: Some(typed(
                &format!("xray.proxy.{protocol}.Account"),
                &socks::Account { username: "-".into(), password: String::new() },
            )),
            ..Default::default()
        });
        (client_endpoint(std::slice::from_ref(&probe), protocol, protocol)?.0, None)
    } else {
        let (dest, spec) = client_endpoint(std::slice::from_ref(server), protocol, protocol)?;
        (dest, Some(spec))
    };
    let (account, email, level) = match user {
        None => (None, String::new(), 0),
        Some(u) => match u.account {
            shardray_core::spec::Account::Socks(a) | shardray_core::spec::Account::Http(a) => {
                (Some(a), u.email, u.level)
            }
            _ => return Err(invalid("proxy_settings.server.user.account: not a SOCKS or HTTP account")),
        },
    };
    let tls = match stream {
        None => None,
        Some(stream) => {
            if !matches!(client_transport(stream)?, TransportSpec::Raw) {
                return Err(invalid(format!(
                    "sender_settings.stream_settings: a {protocol} outbound over WebSocket or HTTPUpgrade is not served yet"
                )));
            }
            client_tls(stream)?
        }
    };
    let mut headers = headers.to_vec();
    headers.sort();
    Ok(ProxyOutboundSpec { server: dest, account, email, level, headers, tls })
}

/// A Shadowsocks 2022 ClientConfig: the server, the method and the key (`serverPSK:userPSK`
/// for a multi-user server).
fn ss2022_spec(c: &shadowsocks_2022::ClientConfig) -> Result<ShadowsocksOutboundSpec, InvalidRoute> {
    let addr = match c.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(net::ip_or_domain::Address::Ip(ip)) => {
            Address::Ip(ip_from_bytes(ip).ok_or_else(|| invalid("proxy_settings.address: not an IP"))?)
        }
        Some(net::ip_or_domain::Address::Domain(d)) => {
            Address::parse(d).ok_or_else(|| invalid(format!("proxy_settings.address: {d:?}")))?
        }
        None => return Err(invalid("proxy_settings.address: missing")),
    };
    let port = u16::try_from(c.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(format!("proxy_settings.port: {} is not a port", c.port)))?;
    let method = shardray_wire::shadowsocks::Method::parse(&c.method)
        .ok()
        .filter(|m| m.is_2022())
        .ok_or_else(|| invalid(format!("proxy_settings.method: {:?} is not a 2022 method", c.method)))?;
    shardray_wire::shadowsocks::MasterKey::parse_psk_chain(method, &c.key)
        .map_err(|e| invalid(format!("proxy_settings.key: {e}")))?;
    if c.udp_over_tcp {
        return Err(invalid("proxy_settings.udp_over_tcp: UDP over TCP is not supported yet"));
    }
    Ok(ShadowsocksOutboundSpec {
        server: Destination { addr, port },
        method,
        password: c.key.clone(),
        email: String::new(),
        level: 0,
    })
}

/// A VMess outbound Config (one receiver, one user) and its sender's stream settings.
fn vmess_spec(c: &vmess::outbound::Config, stream: Option<&StreamConfig>) -> Result<VmessOutboundSpec, InvalidRoute> {
    let (server, spec) = client_endpoint(&c.receiver, "vmess", "VMess")?;
    let shardray_core::spec::Account::Vmess { id, security } = spec.account else {
        return Err(invalid("proxy_settings.server[0].user.account: not a VMess account"));
    };
    // The account's experiments, as Xray's outbound reads them.
    let account = c.receiver[0].user[0].account.as_ref().map(|a| &a.value[..]).unwrap_or_default();
    let tests = vmess::Account::decode(account).map(|a| a.tests_enabled).unwrap_or_default();
    let (tls, reality, transport) = match stream {
        None => (None, None, TransportSpec::Raw),
        Some(stream) => client_security(stream)?,
    };
    let tls = tls.map(|mut t| {
        // The HTTP transports offer http/1.1 when nothing is named, as the config loader does.
        if t.alpn.is_empty() && transport.http().is_some() {
            t.alpn.push("http/1.1".into());
        }
        t
    });
    Ok(VmessOutboundSpec {
        server,
        id,
        security,
        authenticated_length: tests.contains("AuthenticatedLength"),
        email: spec.email,
        level: spec.level,
        tls,
        reality,
        transport,
    })
}

/// A VLESS outbound Config (its one server endpoint, one user, no flow) and its sender's
/// stream settings.
fn vless_spec(c: &vless::outbound::Config, stream: Option<&StreamConfig>) -> Result<VlessOutboundSpec, InvalidRoute> {
    let (server, spec) = client_endpoint(c.vnext.as_slice(), "vless", "VLESS")?;
    let shardray_core::spec::Account::Vless(id, flow) = spec.account else {
        return Err(invalid("proxy_settings.server[0].user.account: not a VLESS account"));
    };
    let (tls, reality, transport) = match stream {
        None => (None, None, TransportSpec::Raw),
        Some(stream) => client_security(stream)?,
    };
    if matches!(flow, shardray_core::spec::VlessFlow::Vision)
        && ((tls.is_none() && reality.is_none()) || transport != TransportSpec::Raw)
    {
        return Err(invalid(
            "proxy_settings.server[0].user.account.flow: Vision needs TLS or REALITY on raw TCP (sender_settings)",
        ));
    }
    // Xray's Config has no packet encoding: its client sends UDP as XUDP.
    Ok(VlessOutboundSpec {
        server,
        id,
        email: spec.email,
        level: spec.level,
        tls,
        reality,
        transport,
        flow,
        xudp: true,
    })
}

/// A Trojan ClientConfig (one server, one user) and its sender's stream settings (raw TCP,
/// TLS or none).
fn trojan_spec(c: &trojan::ClientConfig, stream: Option<&StreamConfig>) -> Result<TrojanOutboundSpec, InvalidRoute> {
    let (server, spec) = client_endpoint(&c.server, "trojan", "Trojan")?;
    let (addr, port) = (server.addr, server.port);
    let shardray_core::spec::Account::Trojan(password) = spec.account else {
        return Err(invalid("proxy_settings.server[0].user.account: not a Trojan account"));
    };
    let (tls, reality, transport) = match stream {
        None => (None, None, TransportSpec::Raw),
        Some(stream) => client_security(stream)?,
    };
    let tls = tls.map(|mut t| {
        // The HTTP transports offer http/1.1 when nothing is named, as the config loader does.
        if t.alpn.is_empty() && transport.http().is_some() {
            t.alpn.push("http/1.1".into());
        }
        t
    });
    Ok(TrojanOutboundSpec {
        server: Destination { addr, port },
        password: password.to_string(),
        email: spec.email,
        level: spec.level,
        tls,
        reality,
        transport,
    })
}

/// A sender's transport: raw TCP, or WebSocket / HTTPUpgrade with Xray's settings messages
/// (the path normalized and checked as the config loader does); anything else is refused.
#[allow(deprecated)] // `protocol`, upstream's old field, is still checked: old clients send it.
fn client_transport(stream: &StreamConfig) -> Result<TransportSpec, InvalidRoute> {
    let field = "sender_settings.stream_settings";
    let wanted = match (stream.protocol_name.as_str(), stream.protocol) {
        ("" | "tcp" | "raw", 0) => "",
        ("websocket" | "ws", 0) | ("", 3) => "websocket",
        ("httpupgrade", 0) => "httpupgrade",
        ("grpc" | "gun", 0) => "grpc",
        _ => {
            return Err(invalid(format!(
                "{field}: only raw TCP, WebSocket, HTTPUpgrade and gRPC are supported yet on outbounds"
            )))
        }
    };
    let mut found = None;
    let mut grpc = None;
    for (i, t) in stream.transport_settings.iter().enumerate() {
        let Some(settings) = t.settings.as_ref() else { continue };
        let at = format!("{field}.transport_settings[{i}].settings");
        let name = type_name(settings, &at)?;
        let (host, path, header, proxy, ed) = match name {
            "transport.internet.websocket.Config" if wanted == "websocket" => {
                let c: shardray_proto::xray::transport::internet::websocket::Config =
                    exact(&settings.value, "xray.transport.internet.websocket.Config", &at)?;
                (c.host, c.path, c.header, c.accept_proxy_protocol, c.ed)
            }
            "transport.internet.httpupgrade.Config" if wanted == "httpupgrade" => {
                let c: shardray_proto::xray::transport::internet::httpupgrade::Config =
                    exact(&settings.value, "xray.transport.internet.httpupgrade.Config", &at)?;
                (c.host, c.path, c.header, c.accept_proxy_protocol, c.ed)
            }
            "transport.internet.grpc.encoding.Config" if wanted == "grpc" => {
                let c: shardray_proto::xray::transport::internet::grpc::encoding::Config =
                    exact(&settings.value, "xray.transport.internet.grpc.encoding.Config", &at)?;
                // Checked as a config's grpcSettings are.
                let spec = crate::config::load_grpc_settings(super::inbound::grpc_json(&c), &at)
                    .map_err(|e| invalid(e.to_string()))?;
                grpc = Some(spec);
                continue;
            }
            _ if settings.value.is_empty() => continue,
            other => return Err(invalid(format!("{at}: {other:?} is not supported yet on outbounds"))),
        };
        if proxy {
            return Err(invalid(format!("{at}.accept_proxy_protocol: not supported yet")));
        }
        if path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            || host.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            || header
                .iter()
                .any(|(k, v)| k.is_empty() || k.eq_ignore_ascii_case("host") || (k.clone() + v).contains(['\r', '\n']))
        {
            return Err(invalid(format!("{at}: a path, host or header that is not valid HTTP")));
        }
        let path = if path.starts_with('/') { path } else { format!("/{path}") };
        let mut headers: Vec<(String, String)> = header.into_iter().collect();
        headers.sort();
        found = Some(HttpTransportSpec { path, host, headers, early_data: ed, early_data_in_path: false });
    }
    Ok(match wanted {
        "" => TransportSpec::Raw,
        "grpc" => TransportSpec::Grpc(Box::new(grpc.unwrap_or_default())),
        "websocket" => TransportSpec::Ws(Box::new(
            found.unwrap_or_else(|| HttpTransportSpec { path: "/".into(), ..Default::default() }),
        )),
        _ => TransportSpec::HttpUpgrade(Box::new(
            found.unwrap_or_else(|| HttpTransportSpec { path: "/".into(), ..Default::default() }),
        )),
    })
}

/// A sender's security (TLS, REALITY or neither) and its transport.
type ClientSecurity = (Option<TlsClientSpec>, Option<Box<RealityClientSpec>>, TransportSpec);

/// A sender's security and transport for VLESS, VMess and Trojan: TLS, REALITY (over raw TCP)
/// or none.
fn client_security(stream: &StreamConfig) -> Result<ClientSecurity, InvalidRoute> {
    const REALITY: &str = "xray.transport.internet.reality.Config";
    let security = message_type(&stream.security_type).map(|(_, n)| n).unwrap_or(&stream.security_type);
    if security != "transport.internet.reality.Config" {
        return Ok((client_tls(stream)?, None, client_transport(stream)?));
    }
    let field = "sender_settings.stream_settings.security_settings";
    if stream.socket_settings.as_ref().is_some_and(|s| *s != Default::default()) {
        return Err(invalid("sender_settings.stream_settings.socket_settings: sockopt is not supported yet"));
    }
    let transport = client_transport(stream)?;
    if transport != TransportSpec::Raw {
        return Err(invalid("sender_settings.stream_settings: REALITY runs over raw TCP only here"));
    }
    let settings = stream
        .security_settings
        .iter()
        .find(|m| message_type(&m.r#type).is_ok_and(|(_, n)| n == security))
        .ok_or_else(|| invalid(format!("{field}: no REALITY settings")))?;
    let c: reality::Config = exact(&settings.value, REALITY, field)?;
    if !c.private_key.is_empty() || !c.server_names.is_empty() || !c.short_ids.is_empty() || !c.dest.is_empty() {
        return Err(invalid(format!(
            "{field}: a REALITY server's fields (private_key, server_names, short_ids, dest) on an outbound"
        )));
    }
    if !c.mldsa65_verify.is_empty() {
        return Err(invalid(format!("{field}.mldsa65_verify: REALITY's ML-DSA-65 signature is not supported yet")));
    }
    let public_key = <[u8; 32]>::try_from(&c.public_key[..])
        .map_err(|_| invalid(format!("{field}.public_key: {} bytes, not a 32-byte X25519 key", c.public_key.len())))?;
    if c.short_id.len() > 8 {
        return Err(invalid(format!("{field}.short_id: {} bytes (8 at most)", c.short_id.len())));
    }
    let mut short_id = [0u8; 8];
    short_id[..c.short_id.len()].copy_from_slice(&c.short_id);
    let spec = RealityClientSpec {
        server_name: c.server_name,
        public_key,
        short_id,
        fingerprint: c.fingerprint.to_ascii_lowercase(),
        show: c.show,
    };
    Ok((None, Some(Box::new(spec)), transport))
}

/// A sender's stream settings, with TLS or without (the transport is `client_transport`'s).
fn client_tls(stream: &StreamConfig) -> Result<Option<TlsClientSpec>, InvalidRoute> {
    if stream.socket_settings.as_ref().is_some_and(|s| *s != Default::default()) {
        return Err(invalid("sender_settings.stream_settings.socket_settings: sockopt is not supported yet"));
    }
    let security = match stream.security_type.as_str() {
        "" | "none" if stream.security_settings.is_empty() => return Ok(None),
        t => message_type(t).map(|(_, n)| n).unwrap_or(t),
    };
    if security != "transport.internet.tls.Config" {
        return Err(invalid(format!(
            "sender_settings.stream_settings.security_type: {security:?} is not supported yet"
        )));
    }
    let settings = stream
        .security_settings
        .iter()
        .find(|m| message_type(&m.r#type).is_ok_and(|(_, n)| n == security))
        .ok_or_else(|| invalid("sender_settings.stream_settings.security_settings: no TLS settings"))?;
    let c: tls::Config = exact(
        &settings.value,
        "xray.transport.internet.tls.Config",
        "sender_settings.stream_settings.security_settings",
    )?;
    if !c.certificate.is_empty() {
        return Err(invalid(
            "sender_settings.stream_settings.security_settings.certificate: client certificates are not supported yet",
        ));
    }
    Ok(Some(TlsClientSpec { server_name: c.server_name, allow_insecure: c.allow_insecure, alpn: c.next_protocol }))
}

/// A sender's stream settings may only restate the default: raw TCP without security.
#[allow(deprecated)] // `protocol`, upstream's old field, is still checked: old clients send it.
fn check_plain_stream(stream: &shardray_proto::xray::transport::internet::StreamConfig) -> Result<(), InvalidRoute> {
    let plain_name = |n: &str| matches!(n, "" | "tcp" | "raw");
    if !plain_name(&stream.protocol_name) || stream.protocol != 0 {
        return Err(invalid(format!(
            "sender_settings.stream_settings: network {:?} is not supported yet on outbounds",
            stream.protocol_name
        )));
    }
    for t in &stream.transport_settings {
        if !plain_name(&t.protocol_name) || t.settings.as_ref().is_some_and(|s| !s.value.is_empty()) {
            return Err(invalid(format!(
                "sender_settings.stream_settings.transport_settings: {:?} settings are not supported yet",
                t.protocol_name
            )));
        }
    }
    if !matches!(stream.security_type.as_str(), "" | "none") || !stream.security_settings.is_empty() {
        return Err(invalid("sender_settings.stream_settings.security: not supported yet on outbounds"));
    }
    if stream.socket_settings.as_ref().is_some_and(|s| *s != Default::default()) {
        return Err(invalid("sender_settings.stream_settings.socket_settings: sockopt is not supported yet"));
    }
    Ok(())
}

fn freedom_spec(c: &freedom::Config) -> Result<FreedomSpec, InvalidRoute> {
    let domain_strategy = match c.domain_strategy {
        0 => DomainStrategy::AsIs,
        // UseIP, UseIPv4v6, UseIPv6v4 and their Force forms, as the JSON loader maps them.
        1 | 4 | 5 | 6 | 9 | 10 => DomainStrategy::UseIp,
        2 | 7 => DomainStrategy::UseIpv4,
        3 | 8 => DomainStrategy::UseIpv6,
        n => return Err(invalid(format!("proxy_settings.domain_strategy: unknown value {n}"))),
    };
    let redirect = match &c.destination_override {
        Some(o) => {
            let server = o.server.as_ref().ok_or_else(|| invalid("proxy_settings.destination_override: empty"))?;
            let addr = match server.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(net::ip_or_domain::Address::Ip(ip)) => Address::Ip(
                    ip_from_bytes(ip)
                        .ok_or_else(|| invalid("proxy_settings.destination_override.server.address: bad IP"))?,
                ),
                Some(net::ip_or_domain::Address::Domain(d)) => Address::parse(d).ok_or_else(|| {
                    invalid(format!("proxy_settings.destination_override.server.address: {d:?} is not a host"))
                })?,
                None => return Err(invalid("proxy_settings.destination_override.server.address: missing")),
            };
            let port = u16::try_from(server.port)
                .map_err(|_| invalid("proxy_settings.destination_override.server.port: out of range"))?;
            Some(Destination { addr, port })
        }
        None => None,
    };
    if c.fragment.is_some() {
        return Err(invalid("proxy_settings.fragment: not supported yet"));
    }
    if !c.noises.is_empty() {
        return Err(invalid("proxy_settings.noises: not supported yet"));
    }
    if c.proxy_protocol != 0 {
        return Err(invalid("proxy_settings.proxy_protocol: not supported yet"));
    }
    Ok(FreedomSpec { domain_strategy, redirect, user_level: c.user_level })
}

/// A `dns` outbound's Config: rules in the shape Xray makes of `nonIPQuery` and `blockTypes`
/// (block the listed types, answer A and AAAA, then one rule without types for the rest).
fn dns_spec(c: &dns::Config) -> Result<DnsOutboundSpec, InvalidRoute> {
    let mut spec = DnsOutboundSpec::default();
    for (i, rule) in c.rule.iter().enumerate() {
        let at = format!("proxy_settings.rule[{i}]");
        if !rule.domain.is_empty() {
            return Err(invalid(format!("{at}.domain: rules on domains are not supported yet")));
        }
        let action = dns::RuleAction::try_from(rule.action).map_err(|_| invalid(format!("{at}.action: unknown")))?;
        match (action, rule.qtype.is_empty()) {
            (dns::RuleAction::Hijack, false) if rule.qtype.iter().all(|t| *t == 1 || *t == 28) => {}
            (dns::RuleAction::Drop | dns::RuleAction::Reject, false) => {
                for t in &rule.qtype {
                    spec.block_types
                        .push(u16::try_from(*t).map_err(|_| invalid(format!("{at}.qtype: {t} is not a type")))?);
                }
            }
            (action, true) => {
                spec.non_ip_query = match action {
                    dns::RuleAction::Drop => NonIpQuery::Drop,
                    dns::RuleAction::Direct => NonIpQuery::Skip,
                    _ => NonIpQuery::Reject,
                };
            }
            _ => return Err(invalid(format!("{at}: only hijacking A and AAAA is supported yet"))),
        }
    }
    if let Some(server) = &c.rewrite_server {
        spec.rewrite_network = match server.network {
            0 => None,
            2 => Some(DnsNetwork::Tcp),
            3 => Some(DnsNetwork::Udp),
            n => return Err(invalid(format!("proxy_settings.rewrite_server.network: {n} is not TCP or UDP"))),
        };
        spec.rewrite_address = match server.address.as_ref().and_then(|a| a.address.as_ref()) {
            Some(net::ip_or_domain::Address::Ip(ip)) => Some(Address::Ip(
                ip_from_bytes(ip).ok_or_else(|| invalid("proxy_settings.rewrite_server.address: bad IP"))?,
            )),
            Some(net::ip_or_domain::Address::Domain(d)) if d.is_empty() => None,
            Some(net::ip_or_domain::Address::Domain(d)) => Some(
                Address::parse(d)
                    .ok_or_else(|| invalid(format!("proxy_settings.rewrite_server.address: {d:?} is not a host")))?,
            ),
            None => None,
        };
        spec.rewrite_port = match u16::try_from(server.port) {
            Ok(0) => None,
            Ok(p) => Some(p),
            Err(_) => return Err(invalid("proxy_settings.rewrite_server.port: out of range")),
        };
    }
    Ok(spec)
}

/// The rules Xray makes of a `dns` outbound's `nonIPQuery` and `blockTypes`.
fn dns_config(d: &DnsOutboundSpec) -> dns::Config {
    let mut rule = Vec::new();
    if !d.block_types.is_empty() {
        let action = match d.non_ip_query {
            NonIpQuery::Reject => dns::RuleAction::Reject,
            _ => dns::RuleAction::Drop,
        };
        let qtype = d.block_types.iter().map(|t| i32::from(*t)).collect();
        rule.push(dns::DnsRuleConfig { action: action as i32, qtype, domain: Vec::new() });
    }
    rule.push(dns::DnsRuleConfig { action: dns::RuleAction::Hijack as i32, qtype: vec![1, 28], domain: Vec::new() });
    let last = match d.non_ip_query {
        NonIpQuery::Reject => dns::RuleAction::Reject,
        NonIpQuery::Drop => dns::RuleAction::Drop,
        NonIpQuery::Skip => dns::RuleAction::Direct,
    };
    rule.push(dns::DnsRuleConfig { action: last as i32, qtype: Vec::new(), domain: Vec::new() });
    let rewritten = d.rewrite_network.is_some() || d.rewrite_address.is_some() || d.rewrite_port.is_some();
    let rewrite_server = rewritten.then(|| net::Endpoint {
        network: match d.rewrite_network {
            None => 0,
            Some(DnsNetwork::Tcp) => 2,
            Some(DnsNetwork::Udp) => 3,
        },
        address: d.rewrite_address.as_ref().map(ip_or_domain),
        port: u32::from(d.rewrite_port.unwrap_or(0)),
    });
    dns::Config { user_level: 0, rule, rewrite_server }
}

fn blackhole_spec(c: &blackhole::Config) -> Result<BlackholeSpec, InvalidRoute> {
    let http_response = match &c.response {
        None => false,
        Some(r) => match type_name(r, "proxy_settings.response")? {
            "proxy.blackhole.NoneResponse" => false,
            "proxy.blackhole.HTTPResponse" => true,
            _ => return Err(invalid(format!("proxy_settings.response: unknown response {:?}", r.r#type))),
        },
    };
    Ok(BlackholeSpec { http_response })
}

/// An outbound as AddOutbound takes it.
pub fn outbound_config(spec: &OutboundSpec) -> OutboundHandlerConfig {
    let sender_settings = spec.send_through.map(|ip| {
        let via = net::IpOrDomain { address: Some(net::ip_or_domain::Address::Ip(ip_bytes(ip))) };
        typed("xray.app.proxyman.SenderConfig", &SenderConfig { via: Some(via), ..Default::default() })
    });
    let proxy = match &spec.protocol {
        OutboundProtocol::Freedom(f) => {
            let destination_override = f.redirect.as_ref().map(|r| freedom::DestinationOverride {
                server: Some(ServerEndpoint {
                    address: Some(ip_or_domain(&r.addr)),
                    port: u32::from(r.port),
                    user: Vec::new(),
                }),
            });
            let domain_strategy = match f.domain_strategy {
                DomainStrategy::AsIs => 0,
                DomainStrategy::UseIp => 1,
                DomainStrategy::UseIpv4 => 2,
                DomainStrategy::UseIpv6 => 3,
            };
            let config = freedom::Config {
                domain_strategy,
                destination_override,
                user_level: f.user_level,
                ..Default::default()
            };
            typed("xray.proxy.freedom.Config", &config)
        }
        OutboundProtocol::Dns(d) => typed("xray.proxy.dns.Config", &dns_config(d)),
        OutboundProtocol::Blackhole(b) => {
            let response =
                b.http_response.then(|| typed("xray.proxy.blackhole.HTTPResponse", &blackhole::HttpResponse {}));
            typed("xray.proxy.blackhole.Config", &blackhole::Config { response })
        }
        OutboundProtocol::Trojan(t) => {
            let account = trojan::Account { password: t.password.clone(), flow: String::new() };
            let user = shardray_proto::xray::common::protocol::User {
                level: t.level,
                email: t.email.clone(),
                account: Some(typed("xray.proxy.trojan.Account", &account)),
            };
            let server = ServerEndpoint {
                address: Some(ip_or_domain(&t.server.addr)),
                port: u32::from(t.server.port),
                user: vec![user],
            };
            typed("xray.proxy.trojan.ClientConfig", &trojan::ClientConfig { server: vec![server] })
        }
        OutboundProtocol::Vmess(v) => {
            let mut account = super::vmess_account(&v.id, v.security);
            if v.authenticated_length {
                account.tests_enabled = "AuthenticatedLength".into();
            }
            let user = shardray_proto::xray::common::protocol::User {
                level: v.level,
                email: v.email.clone(),
                account: Some(typed("xray.proxy.vmess.Account", &account)),
            };
            let server = ServerEndpoint {
                address: Some(ip_or_domain(&v.server.addr)),
                port: u32::from(v.server.port),
                user: vec![user],
            };
            typed("xray.proxy.vmess.outbound.Config", &vmess::outbound::Config { receiver: vec![server] })
        }
        OutboundProtocol::Socks(p) | OutboundProtocol::Http(p) => {
            let is_socks = matches!(spec.protocol, OutboundProtocol::Socks(_));
            let user = p.account.as_ref().map(|a| {
                let account = socks::Account { username: a.username.to_string(), password: a.password.to_string() };
                let kind = if is_socks { "xray.proxy.socks.Account" } else { "xray.proxy.http.Account" };
                shardray_proto::xray::common::protocol::User {
                    level: p.level,
                    email: p.email.clone(),
                    account: Some(typed(kind, &account)),
                }
            });
            let server = ServerEndpoint {
                address: Some(ip_or_domain(&p.server.addr)),
                port: u32::from(p.server.port),
                user: user.into_iter().collect(),
            };
            if is_socks {
                typed("xray.proxy.socks.ClientConfig", &socks::ClientConfig { server: Some(server) })
            } else {
                let header = p
                    .headers
                    .iter()
                    .map(|(key, value)| http::Header { key: key.clone(), value: value.clone() })
                    .collect();
                typed("xray.proxy.http.ClientConfig", &http::ClientConfig { server: Some(server), header })
            }
        }
        OutboundProtocol::Vless(v) => {
            let account = vless::Account { id: v.id.to_string(), encryption: "none".into(), ..Default::default() };
            let user = shardray_proto::xray::common::protocol::User {
                level: v.level,
                email: v.email.clone(),
                account: Some(typed("xray.proxy.vless.Account", &account)),
            };
            let server = ServerEndpoint {
                address: Some(ip_or_domain(&v.server.addr)),
                port: u32::from(v.server.port),
                user: vec![user],
            };
            typed("xray.proxy.vless.outbound.Config", &vless::outbound::Config { vnext: Some(server) })
        }
        OutboundProtocol::Shadowsocks(s) => {
            let address = ip_or_domain(&s.server.addr);
            if s.method.is_2022() {
                let config = shadowsocks_2022::ClientConfig {
                    address: Some(address),
                    port: u32::from(s.server.port),
                    method: s.method.name().into(),
                    key: s.password.clone(),
                    ..Default::default()
                };
                typed("xray.proxy.shadowsocks_2022.ClientConfig", &config)
            } else {
                let account = shadowsocks::Account {
                    password: s.password.clone(),
                    cipher_type: super::shadowsocks_cipher_type(s.method),
                    iv_check: false,
                };
                let user = shardray_proto::xray::common::protocol::User {
                    level: s.level,
                    email: s.email.clone(),
                    account: Some(typed("xray.proxy.shadowsocks.Account", &account)),
                };
                let server =
                    ServerEndpoint { address: Some(address), port: u32::from(s.server.port), user: vec![user] };
                typed("xray.proxy.shadowsocks.ClientConfig", &shadowsocks::ClientConfig { server: Some(server) })
            }
        }
    };
    let tls = match &spec.protocol {
        OutboundProtocol::Trojan(t) => t.tls.as_ref(),
        OutboundProtocol::Vmess(v) => v.tls.as_ref(),
        OutboundProtocol::Socks(p) | OutboundProtocol::Http(p) => p.tls.as_ref(),
        OutboundProtocol::Vless(v) => v.tls.as_ref(),
        _ => None,
    };
    let reality = match &spec.protocol {
        OutboundProtocol::Trojan(t) => t.reality.as_deref(),
        OutboundProtocol::Vmess(v) => v.reality.as_deref(),
        OutboundProtocol::Vless(v) => v.reality.as_deref(),
        _ => None,
    };
    let security = match (tls, reality) {
        (Some(tls), _) => {
            const TLS: &str = "xray.transport.internet.tls.Config";
            let config = tls::Config {
                server_name: tls.server_name.clone(),
                allow_insecure: tls.allow_insecure,
                next_protocol: tls.alpn.clone(),
                ..Default::default()
            };
            Some((TLS, typed(TLS, &config)))
        }
        (None, Some(r)) => {
            const REALITY: &str = "xray.transport.internet.reality.Config";
            let config = reality::Config {
                show: r.show,
                fingerprint: r.fingerprint.clone(),
                server_name: r.server_name.clone(),
                public_key: r.public_key.to_vec(),
                short_id: r.short_id.to_vec(),
                ..Default::default()
            };
            Some((REALITY, typed(REALITY, &config)))
        }
        (None, None) => None,
    };
    let sender_settings = match (sender_settings, security) {
        (s, None) => s,
        (_, Some((name, settings))) => {
            let stream = StreamConfig {
                protocol_name: "tcp".into(),
                security_type: name.into(),
                security_settings: vec![settings],
                ..Default::default()
            };
            let via = spec
                .send_through
                .map(|ip| net::IpOrDomain { address: Some(net::ip_or_domain::Address::Ip(ip_bytes(ip))) });
            let sender = SenderConfig { via, stream_settings: Some(stream), ..Default::default() };
            Some(typed("xray.app.proxyman.SenderConfig", &sender))
        }
    };
    OutboundHandlerConfig { tag: spec.tag.clone(), sender_settings, proxy_settings: Some(proxy), ..Default::default() }
}

// === routing ===

/// AddRule's `xray.app.router.Config` as rules and balancers shardray runs. Its
/// `domain_strategy` is not used, as upstream does not use it there either.
pub fn routing_specs(config: &TypedMessage) -> Result<(Vec<RuleSpec>, Vec<BalancerSpec>), InvalidRoute> {
    let name = type_name(config, "config")?;
    if name != "app.router.Config" {
        return Err(invalid(format!("config: expected app.router.Config, got {:?}", config.r#type)));
    }
    let c: router::Config = exact(&config.value, "xray.app.router.Config", "config")?;
    let rules =
        c.rule.iter().enumerate().map(|(i, r)| rule_spec(r, &format!("rule[{i}]"))).collect::<Result<_, _>>()?;
    let balancers = c
        .balancing_rule
        .iter()
        .enumerate()
        .map(|(i, b)| balancer_spec(b, &format!("balancing_rule[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok((rules, balancers))
}

fn rule_spec(r: &router::RoutingRule, path: &str) -> Result<RuleSpec, InvalidRoute> {
    use router::routing_rule::TargetTag;
    let unsupported = |field: &str| invalid(format!("{path}.{field}: matching by {field} is not supported yet"));
    if !r.local_ip.is_empty() {
        return Err(unsupported("local_ip"));
    }
    if r.local_port_list.as_ref().is_some_and(|p| !p.range.is_empty()) {
        return Err(unsupported("local_port_list"));
    }
    if r.vless_route_list.as_ref().is_some_and(|p| !p.range.is_empty()) {
        return Err(unsupported("vless_route_list"));
    }
    if !r.process.is_empty() {
        return Err(unsupported("process"));
    }
    if r.webhook.is_some() {
        return Err(invalid(format!("{path}.webhook: not supported yet")));
    }
    if !r.local_os.is_empty() {
        return Err(unsupported("local_os"));
    }
    let (outbound_tag, balancer_tag) = match &r.target_tag {
        Some(TargetTag::Tag(t)) if !t.is_empty() => (t.clone(), String::new()),
        Some(TargetTag::BalancingTag(t)) if !t.is_empty() => (String::new(), t.clone()),
        _ => return Err(invalid(format!("{path}: neither outboundTag nor balancerTag is specified"))),
    };
    let mut domains = Vec::with_capacity(r.domain.len());
    for (i, d) in r.domain.iter().enumerate() {
        let at = format!("{path}.domain[{i}]");
        match &d.value {
            // geosite:CODE@ATTR, or ext:FILE:CODE: every domain the list holds.
            Some(geodata::domain_rule::Value::Geosite(g)) => {
                let file = if g.file.is_empty() { "geosite.dat" } else { g.file.as_str() };
                let attrs: Vec<&str> = g.attrs.split(['@', ',']).filter(|a| !a.is_empty()).collect();
                let listed = crate::config::geodata::geosite(file, &g.code, &attrs)
                    .map_err(|e| invalid(format!("{at}: {e}")))?;
                domains.extend(listed);
            }
            _ => domains.push(domain_matcher(d, &at)?),
        }
    }
    // Sorted, so that the same rule always compiles (and lists) the same way.
    let mut attrs: Vec<(String, String)> =
        r.attributes.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
    attrs.sort();
    for (name, pattern) in &attrs {
        regex::Regex::new(pattern)
            .map_err(|e| invalid(format!("{path}.attributes.{name}: invalid regular expression {pattern:?}: {e}")))?;
    }
    let network = if r.networks.is_empty() {
        None
    } else {
        let mut set = NetworkSet { tcp: false, udp: false };
        for n in &r.networks {
            match net::Network::try_from(*n) {
                Ok(net::Network::RawTcp | net::Network::Tcp) => set.tcp = true,
                Ok(net::Network::Udp) => set.udp = true,
                Ok(net::Network::Unknown) => {}
                _ => return Err(invalid(format!("{path}.networks: network {n} is not supported"))),
            }
        }
        (set.tcp || set.udp).then_some(set)
    };
    let spec = RuleSpec {
        rule_tag: r.rule_tag.clone(),
        inbound_tags: r.inbound_tag.iter().filter(|t| !t.is_empty()).cloned().collect(),
        users: r.user_email.iter().filter(|t| !t.is_empty()).cloned().collect(),
        domains,
        ips: ip_rules(&r.ip, &format!("{path}.ip"))?,
        ports: ports(r.port_list.as_ref(), &format!("{path}.port_list"))?,
        network,
        source_ips: ip_rules(&r.source_ip, &format!("{path}.source_ip"))?,
        source_ports: ports(r.source_port_list.as_ref(), &format!("{path}.source_port_list"))?,
        protocols: r.protocol.iter().filter(|p| !p.is_empty()).cloned().collect(),
        attrs,
        outbound_tag,
        balancer_tag,
    };
    if !spec.has_condition() {
        return Err(invalid(format!("{path}: this rule has no effective fields")));
    }
    Ok(spec)
}

fn domain_matcher(d: &geodata::DomainRule, path: &str) -> Result<DomainMatcher, InvalidRoute> {
    use geodata::domain::Type;
    match &d.value {
        Some(geodata::domain_rule::Value::Custom(c)) => {
            if !c.attribute.is_empty() {
                return Err(invalid(format!("{path}: domain attributes are not supported yet")));
            }
            if c.value.is_empty() {
                return Err(invalid(format!("{path}: empty domain")));
            }
            let lower = c.value.to_ascii_lowercase();
            Ok(match Type::try_from(c.r#type) {
                Ok(Type::Substr) => DomainMatcher::Keyword(lower),
                Ok(Type::Domain) => DomainMatcher::Domain(lower),
                Ok(Type::Full) => DomainMatcher::Full(lower),
                Ok(Type::Regex) => {
                    regex::Regex::new(&c.value)
                        .map_err(|e| invalid(format!("{path}: invalid regular expression {:?}: {e}", c.value)))?;
                    DomainMatcher::Regex(c.value.clone())
                }
                Err(_) => return Err(invalid(format!("{path}: unknown domain type {}", c.r#type))),
            })
        }
        Some(geodata::domain_rule::Value::Geosite(_)) => unreachable!("lists are expanded by the caller"),
        None => Err(invalid(format!("{path}: empty"))),
    }
}

/// An address in the API's form.
fn ip_or_domain(addr: &Address) -> net::IpOrDomain {
    net::IpOrDomain {
        address: Some(match addr {
            Address::Ip(ip) => net::ip_or_domain::Address::Ip(ip_bytes(*ip)),
            Address::Domain(d) => net::ip_or_domain::Address::Domain(d.to_string()),
        }),
    }
}

fn ip_rules(list: &[geodata::IpRule], path: &str) -> Result<Vec<IpNet>, InvalidRoute> {
    let mut nets = Vec::new();
    for (i, rule) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        match &rule.value {
            Some(geodata::ip_rule::Value::Custom(c)) => {
                let ip = ip_from_bytes(&c.ip).ok_or_else(|| invalid(format!("{at}: not an IP address")))?;
                let prefix = u8::try_from(c.prefix).map_err(|_| invalid(format!("{at}: bad prefix")))?;
                let net = IpNet::new(ip, prefix).map_err(|_| invalid(format!("{at}: bad prefix {prefix}")))?;
                nets.push(net.trunc());
            }
            Some(geodata::ip_rule::Value::Geoip(g))
                if g.code.eq_ignore_ascii_case("private") && g.file.is_empty() && !g.reverse_match =>
            {
                nets.extend(crate::config::private_nets());
            }
            Some(geodata::ip_rule::Value::Geoip(g)) => {
                let file = if g.file.is_empty() { "geoip.dat" } else { g.file.as_str() };
                let listed = crate::config::geodata::geoip(file, &g.code, g.reverse_match)
                    .map_err(|e| invalid(format!("{at}: {e}")))?;
                nets.extend(listed);
            }
            None => return Err(invalid(format!("{at}: empty"))),
        }
    }
    Ok(nets)
}

fn ports(list: Option<&net::PortList>, path: &str) -> Result<Vec<PortRange>, InvalidRoute> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    list.range
        .iter()
        .map(|r| {
            let from = u16::try_from(r.from).map_err(|_| invalid(format!("{path}: port {} out of range", r.from)))?;
            let to = u16::try_from(r.to).map_err(|_| invalid(format!("{path}: port {} out of range", r.to)))?;
            if from > to {
                return Err(invalid(format!("{path}: range {from}-{to} is reversed")));
            }
            Ok(PortRange { from, to })
        })
        .collect()
}

fn balancer_spec(b: &router::BalancingRule, path: &str) -> Result<BalancerSpec, InvalidRoute> {
    if b.tag.is_empty() {
        return Err(invalid(format!("{path}.tag: missing")));
    }
    let selectors: Vec<String> = b.outbound_selector.iter().filter(|s| !s.is_empty()).cloned().collect();
    if selectors.is_empty() {
        return Err(invalid(format!("{path}.outbound_selector: empty selector list")));
    }
    let strategy = match b.strategy.to_ascii_lowercase().as_str() {
        "" | "random" => BalancerStrategy::Random,
        "roundrobin" => BalancerStrategy::RoundRobin,
        "leastping" | "leastload" => {
            return Err(invalid(format!(
                "{path}.strategy: {:?} is not supported yet: it needs the observatory's probes",
                b.strategy
            )))
        }
        other => return Err(invalid(format!("{path}.strategy: unknown strategy {other:?}"))),
    };
    if b.strategy_settings.as_ref().is_some_and(|s| !s.value.is_empty()) {
        return Err(invalid(format!("{path}.strategy_settings: not supported yet")));
    }
    Ok(BalancerSpec { tag: b.tag.clone(), selectors, strategy, fallback_tag: b.fallback_tag.clone() })
}

/// Rules and balancers as AddRule's `xray.app.router.Config`.
pub fn router_config(rules: &[RuleSpec], balancers: &[BalancerSpec]) -> router::Config {
    router::Config {
        domain_strategy: 0,
        rule: rules.iter().map(routing_rule).collect(),
        balancing_rule: balancers
            .iter()
            .map(|b| router::BalancingRule {
                tag: b.tag.clone(),
                outbound_selector: b.selectors.clone(),
                strategy: b.strategy.name().to_owned(),
                strategy_settings: None,
                fallback_tag: b.fallback_tag.clone(),
            })
            .collect(),
    }
}

fn routing_rule(r: &RuleSpec) -> router::RoutingRule {
    use geodata::domain::Type;
    use router::routing_rule::TargetTag;
    let domain = |kind: Type, value: &str| geodata::DomainRule {
        value: Some(geodata::domain_rule::Value::Custom(geodata::Domain {
            r#type: kind as i32,
            value: value.to_owned(),
            attribute: Vec::new(),
        })),
    };
    let ips = |nets: &[IpNet]| {
        nets.iter()
            .map(|n| geodata::IpRule {
                value: Some(geodata::ip_rule::Value::Custom(geodata::Cidr {
                    ip: ip_bytes(n.addr()),
                    prefix: u32::from(n.prefix_len()),
                })),
            })
            .collect()
    };
    let ports = |list: &[PortRange]| {
        (!list.is_empty()).then(|| net::PortList {
            range: list.iter().map(|p| net::PortRange { from: u32::from(p.from), to: u32::from(p.to) }).collect(),
        })
    };
    let mut networks = Vec::new();
    if let Some(n) = r.network {
        if n.tcp {
            networks.push(net::Network::Tcp as i32);
        }
        if n.udp {
            networks.push(net::Network::Udp as i32);
        }
    }
    router::RoutingRule {
        target_tag: Some(if r.balancer_tag.is_empty() {
            TargetTag::Tag(r.outbound_tag.clone())
        } else {
            TargetTag::BalancingTag(r.balancer_tag.clone())
        }),
        rule_tag: r.rule_tag.clone(),
        domain: r
            .domains
            .iter()
            .map(|d| match d {
                DomainMatcher::Keyword(v) => domain(Type::Substr, v),
                DomainMatcher::Full(v) => domain(Type::Full, v),
                DomainMatcher::Domain(v) => domain(Type::Domain, v),
                DomainMatcher::Regex(v) => domain(Type::Regex, v),
            })
            .collect(),
        ip: ips(&r.ips),
        port_list: ports(&r.ports),
        networks,
        source_ip: ips(&r.source_ips),
        source_port_list: ports(&r.source_ports),
        protocol: r.protocols.clone(),
        user_email: r.users.clone(),
        inbound_tag: r.inbound_tags.clone(),
        attributes: r.attrs.iter().cloned().collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_of(json: &str) -> Vec<OutboundSpec> {
        crate::config::outbounds_of(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn outbounds_round_trip() {
        let specs = spec_of(
            r#"{ "outbounds": [
                { "tag": "a", "protocol": "freedom" },
                { "tag": "b", "protocol": "freedom", "sendThrough": "127.0.0.1",
                  "settings": { "domainStrategy": "UseIPv4", "redirect": "example.com:443", "userLevel": 2 } },
                { "tag": "c", "protocol": "blackhole", "settings": { "response": { "type": "http" } } },
                { "tag": "d1", "protocol": "dns" },
                { "tag": "d2", "protocol": "dns", "settings": { "nonIPQuery": "skip", "blockTypes": [65],
                  "network": "udp", "address": "127.0.0.53", "port": 53 } },
                { "tag": "d3", "protocol": "dns", "settings": { "nonIPQuery": "drop", "blockTypes": [12, 33] } },
                { "tag": "t", "protocol": "trojan", "sendThrough": "127.0.0.1",
                  "settings": { "servers": [{ "address": "proxy.example", "port": 443, "password": "p w",
                                              "email": "me@x", "level": 1 }] },
                  "streamSettings": { "security": "tls", "tlsSettings": {
                      "serverName": "sni.example", "allowInsecure": true, "alpn": ["h2"], "fingerprint": "chrome" } } },
                { "tag": "u", "protocol": "trojan",
                  "settings": { "servers": [{ "address": "10.0.0.1", "port": 8443, "password": "x" }] } },
                { "tag": "v", "protocol": "vless",
                  "settings": { "vnext": [{ "address": "proxy.example", "port": 443, "users": [{
                      "id": "b831381d-6324-4d53-ad4f-8cda48b30811", "encryption": "none", "email": "v@x", "level": 3 }] }] },
                  "streamSettings": { "security": "tls", "tlsSettings": { "serverName": "sni.example" } } },
                { "tag": "r", "protocol": "vless",
                  "settings": { "vnext": [{ "address": "203.0.113.9", "port": 443, "users": [{
                      "id": "b831381d-6324-4d53-ad4f-8cda48b30811" }] }] },
                  "streamSettings": { "network": "raw", "security": "reality", "realitySettings": {
                      "serverName": "www.example.com", "fingerprint": "chrome", "show": true,
                      "publicKey": "wA9uNf9Ho9w-mL4fa5tMLrDXsOUbR-Te4BoQtxu9bHc", "shortId": "6ba85179" } } },
                { "tag": "rt", "protocol": "trojan",
                  "settings": { "servers": [{ "address": "203.0.113.9", "port": 443, "password": "p" }] },
                  "streamSettings": { "security": "reality", "realitySettings": {
                      "password": "wA9uNf9Ho9w-mL4fa5tMLrDXsOUbR-Te4BoQtxu9bHc" } } }
            ] }"#,
        );
        assert_eq!(specs.len(), 11);
        for spec in &specs {
            assert_eq!(&outbound_spec(&outbound_config(spec)).unwrap(), spec);
        }
    }

    #[test]
    fn reality_sender_settings_are_checked() {
        let spec = &spec_of(
            r#"{ "outbounds": [{ "tag": "r", "protocol": "vless",
                  "settings": { "vnext": [{ "address": "203.0.113.9", "port": 443, "users": [{
                      "id": "b831381d-6324-4d53-ad4f-8cda48b30811" }] }] },
                  "streamSettings": { "security": "reality", "realitySettings": {
                      "publicKey": "wA9uNf9Ho9w-mL4fa5tMLrDXsOUbR-Te4BoQtxu9bHc", "shortId": "6ba8" } } }] }"#,
        )[0];
        // AddOutbound with the sender's REALITY Config changed by `edit`.
        let with = |edit: &dyn Fn(&mut reality::Config)| {
            let mut config = outbound_config(spec);
            let sender = config.sender_settings.as_mut().unwrap();
            let mut s = SenderConfig::decode(&sender.value[..]).unwrap();
            let stream = s.stream_settings.as_mut().unwrap();
            assert_eq!(stream.security_type, "xray.transport.internet.reality.Config");
            let mut r = reality::Config::decode(&stream.security_settings[0].value[..]).unwrap();
            assert_eq!(r.short_id, [0x6b, 0xa8, 0, 0, 0, 0, 0, 0]);
            edit(&mut r);
            stream.security_settings[0].value = r.encode_to_vec();
            sender.value = s.encode_to_vec();
            outbound_spec(&config)
        };
        assert_eq!(&with(&|_| {}).unwrap(), spec);
        // Xray's clients send a short id of fewer than 8 bytes as they read it: zero-padded here.
        let short = with(&|r| r.short_id = vec![0x6b]).unwrap();
        let OutboundProtocol::Vless(v) = &short.protocol else { panic!() };
        assert_eq!(v.reality.as_ref().unwrap().short_id, [0x6b, 0, 0, 0, 0, 0, 0, 0]);
        let err = |edit: &dyn Fn(&mut reality::Config)| with(edit).unwrap_err().0;
        assert!(err(&|r| r.public_key.truncate(31)).contains("public_key: 31 bytes"));
        assert!(err(&|r| r.short_id = vec![0; 9]).contains("short_id: 9 bytes"));
        assert!(err(&|r| r.private_key = vec![1; 32]).contains("a REALITY server's fields"));
        assert!(err(&|r| r.server_names = vec!["a".into()]).contains("a REALITY server's fields"));
        assert!(err(&|r| r.mldsa65_verify = vec![1]).contains("mldsa65_verify"));
    }

    #[test]
    fn outbound_refusals_name_the_field() {
        let unserved = OutboundHandlerConfig {
            tag: "x".into(),
            proxy_settings: Some(TypedMessage { r#type: "xray.proxy.wireguard.DeviceConfig".into(), value: vec![] }),
            ..Default::default()
        };
        assert!(outbound_spec(&unserved).unwrap_err().0.contains("\"wireguard\" is not supported"));
        let wrong = OutboundHandlerConfig {
            proxy_settings: Some(typed("xray.app.proxyman.SenderConfig", &SenderConfig::default())),
            ..Default::default()
        };
        assert!(outbound_spec(&wrong).unwrap_err().0.starts_with("proxy_settings:"));
        let fragment = freedom::Config { fragment: Some(Default::default()), ..Default::default() };
        let frag = OutboundHandlerConfig {
            proxy_settings: Some(typed("types.v2fly.org/xray.proxy.freedom.Config", &fragment)),
            ..Default::default()
        };
        assert_eq!(outbound_spec(&frag).unwrap_err().0, "proxy_settings.fragment: not supported yet");
        // A field our message lacks (99) is refused, not dropped.
        let mut bytes = freedom::Config::default().encode_to_vec();
        bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
        let unknown = OutboundHandlerConfig {
            proxy_settings: Some(TypedMessage { r#type: "xray.proxy.freedom.Config".into(), value: bytes }),
            ..Default::default()
        };
        assert!(outbound_spec(&unknown).unwrap_err().0.contains("does not know"));
        let mux = SenderConfig {
            multiplex_settings: Some(shardray_proto::xray::app::proxyman::MultiplexingConfig {
                enabled: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let muxed = OutboundHandlerConfig {
            sender_settings: Some(typed("xray.app.proxyman.SenderConfig", &mux)),
            ..outbound_config(&spec_of(r#"{"outbounds":[{"protocol":"freedom"}]}"#)[0])
        };
        assert!(outbound_spec(&muxed).unwrap_err().0.contains("multiplex_settings"));
    }

    #[test]
    fn rules_and_balancers_round_trip() {
        let rules = vec![
            RuleSpec {
                rule_tag: "r".into(),
                inbound_tags: vec!["in".into()],
                users: vec!["a@b".into()],
                domains: vec![
                    DomainMatcher::Keyword("ads".into()),
                    DomainMatcher::Full("a.com".into()),
                    DomainMatcher::Domain("b.com".into()),
                    DomainMatcher::Regex("^c$".into()),
                ],
                ips: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
                ports: vec![PortRange { from: 80, to: 90 }],
                network: Some(NetworkSet { tcp: true, udp: false }),
                source_ips: vec!["192.0.2.1/32".parse().unwrap()],
                source_ports: vec![PortRange { from: 1, to: 1 }],
                protocols: vec!["bittorrent".into(), "tls".into()],
                attrs: vec![(":path".into(), "^/a".into()), ("x-route".into(), "blue".into())],
                outbound_tag: "direct".into(),
                balancer_tag: String::new(),
            },
            RuleSpec { ports: vec![PortRange { from: 443, to: 443 }], balancer_tag: "g".into(), ..Default::default() },
        ];
        let balancers = vec![BalancerSpec {
            tag: "g".into(),
            selectors: vec!["px-".into()],
            strategy: BalancerStrategy::RoundRobin,
            fallback_tag: "direct".into(),
        }];
        let message = typed("xray.app.router.Config", &router_config(&rules, &balancers));
        assert_eq!(routing_specs(&message).unwrap(), (rules, balancers));
    }

    #[test]
    fn rule_refusals_name_the_field() {
        let rule = |r: router::RoutingRule| {
            let c = router::Config { rule: vec![r], ..Default::default() };
            routing_specs(&typed("xray.app.router.Config", &c)).unwrap_err().0
        };
        let target = Some(router::routing_rule::TargetTag::Tag("x".into()));
        assert_eq!(
            rule(router::RoutingRule { target_tag: target.clone(), ..Default::default() }),
            "rule[0]: this rule has no effective fields"
        );
        let geosite = geodata::DomainRule {
            value: Some(geodata::domain_rule::Value::Geosite(geodata::GeoSiteRule {
                code: "no-such-list".into(),
                ..Default::default()
            })),
        };
        let err = rule(router::RoutingRule { target_tag: target.clone(), domain: vec![geosite], ..Default::default() });
        assert!(err.starts_with("rule[0].domain[0]: geosite.dat "), "{err}");
        let bad_attr = [(":method".to_string(), "GET".to_string()), (":path".to_string(), "(".to_string())];
        let err = rule(router::RoutingRule {
            target_tag: target.clone(),
            attributes: bad_attr.into_iter().collect(),
            ..Default::default()
        });
        assert!(err.starts_with("rule[0].attributes.:path: invalid regular expression"), "{err}");
        let attrs = [("X-Route".to_string(), "^blue$".to_string())].into_iter().collect();
        let ok = rule_spec(
            &router::RoutingRule { target_tag: target.clone(), attributes: attrs, ..Default::default() },
            "rule[0]",
        )
        .unwrap();
        assert_eq!(ok.attrs, [("x-route".to_string(), "^blue$".to_string())]);
        let ok = rule_spec(
            &router::RoutingRule { target_tag: target, protocol: vec!["bittorrent".into()], ..Default::default() },
            "rule[0]",
        )
        .unwrap();
        assert_eq!(ok.protocols, ["bittorrent"]);
        let wrong = routing_specs(&typed("xray.app.proxyman.SenderConfig", &SenderConfig::default())).unwrap_err();
        assert!(wrong.0.starts_with("config: expected app.router.Config"));
        let lp = router::BalancingRule {
            tag: "b".into(),
            outbound_selector: vec!["x".into()],
            strategy: "leastPing".into(),
            ..Default::default()
        };
        let c = router::Config { balancing_rule: vec![lp], ..Default::default() };
        assert!(routing_specs(&typed("xray.app.router.Config", &c)).unwrap_err().0.contains("leastPing"));
    }
}
