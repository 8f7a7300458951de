//! Validates `inbounds`: listen addresses, stream settings and TLS, and the VLESS, Trojan, VMess,
//! Shadowsocks and dokodemo-door settings; sets the API's own inbound aside.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use shardray_core::quota::QuotaSpec;
use shardray_core::spec::{
    Account, CertificateSpec, DokodemoSpec, FallbackDest, FallbackSpec, GrpcSpec, HttpHeaderSpec, HttpInboundSpec,
    HttpTransportSpec, InboundProtocol, InboundSpec, NetworkSet, ProxyAccount, ShadowsocksInboundSpec, SniffingSpec,
    SocketOptions, SocksInboundSpec, TlsServerSpec, TlsVersion, TransportSpec, TrojanInboundSpec, UnixListenSpec,
    UnixSocketName, UserSpec, VlessFlow, VlessInboundSpec, VmessInboundSpec, VmessSecurity,
};
use shardray_wire::addr::{Address, Destination};
use shardray_wire::http_header::{RequestTemplate, ResponseTemplate};
use shardray_wire::shadowsocks::{InvalidMethod, MasterKey, Method};
use uuid::Uuid;

use super::error::ConfigError;
use super::raw::{
    RawAllocate, RawCertificate, RawDokodemoSettings, RawFallback, RawGrpcSettings, RawHttpRequest, RawHttpResponse,
    RawHttpSettings, RawHttpTransport, RawInbound, RawProxyAccount, RawShadowsocksClient, RawShadowsocksSettings,
    RawSniffing, RawSocksSettings, RawStreamSettings, RawTcpSettings, RawTlsSettings, RawTrojanClient,
    RawTrojanSettings, RawVlessClient, RawVlessSettings, RawVmessClient, RawVmessSettings, StringList,
};
use super::validate::{check_loopback, deserialize_at, is_empty_value, parse_host_port, parse_port, value_text};

/// Inbound protocols upstream has that shardray does not serve yet.
const LATER_PROTOCOLS: &[&str] = &["mixed", "wireguard", "hysteria", "hysteria2", "tun"];

/// Transports upstream has besides raw TCP.
const LATER_NETWORKS: &[&str] = &["h2", "http", "kcp", "mkcp", "quic", "domainsocket", "ds"];

/// The validated inbounds and what the rest of validation needs to know about them.
pub(super) struct Inbounds {
    /// The inbounds shards serve.
    pub specs: Vec<InboundSpec>,
    /// Where each served inbound listens, by the JSON path of its port, and on which networks.
    pub listens: Vec<(String, SocketAddr, NetworkSet)>,
    /// The dokodemo-door inbound carrying the API tag: its port's path and its address.
    pub api_inbound: Option<(String, SocketAddr)>,
    /// The dokodemo-door inbound that routing sends to the metrics outbound, likewise.
    pub metrics_inbound: Option<(String, SocketAddr)>,
}

/// Validates `inbounds`; the one whose tag is among `api_tags` becomes the API's listen
/// address instead, and the one tagged in `metrics_tags` (the inbounds routed to the metrics
/// outbound) the metrics endpoint's.
pub(super) fn inbounds(
    raw: Option<Vec<RawInbound>>,
    api_tags: &[String],
    metrics_tags: &[String],
) -> Result<Inbounds, ConfigError> {
    let mut out = Inbounds { specs: Vec::new(), listens: Vec::new(), api_inbound: None, metrics_inbound: None };
    let mut tags: HashMap<String, usize> = HashMap::new();
    for (i, ib) in raw.unwrap_or_default().into_iter().enumerate() {
        let path = format!("inbounds[{i}]");
        let tag = ib.tag.clone().unwrap_or_default();
        if !tag.is_empty() {
            if let Some(first) = tags.insert(tag.clone(), i) {
                return Err(ConfigError::invalid(
                    format!("{path}.tag"),
                    format!("duplicate tag {tag:?} (also inbounds[{first}])"),
                ));
            }
        }
        if !tag.is_empty() && api_tags.contains(&tag) {
            if let Some((first, _)) = &out.api_inbound {
                return Err(ConfigError::unsupported(
                    format!("{path}.tag"),
                    format!("a second API inbound (the first is at {})", first.trim_end_matches(".port")),
                ));
            }
            out.api_inbound = Some(api_inbound(ib, &path, &tag, "API")?);
            continue;
        }
        if metrics_tags.contains(&tag) {
            if let Some((first, _)) = &out.metrics_inbound {
                return Err(ConfigError::invalid(
                    format!("{path}.tag"),
                    format!("a second inbound routed to the metrics outbound (the first is {first})"),
                ));
            }
            out.metrics_inbound = Some(api_inbound(ib, &path, &tag, "metrics")?);
            continue;
        }
        let (mut spec, listen) = inbound(ib, &path, tag)?;
        spec.config_index = Some(i);
        if spec.unix.is_none() {
            out.listens.push((format!("{path}.port"), listen, spec.networks()));
        }
        out.specs.push(spec);
    }
    Ok(out)
}

/// One inbound outside a config file (AddInbound, `shardray api adi`), checked as a config
/// inbound is; errors name fields under `path`. It must have a tag, so it can be removed.
pub fn load_inbound(value: Value, path: &str) -> Result<InboundSpec, ConfigError> {
    let raw: RawInbound = deserialize_at(value, path)?;
    let tag = raw.tag.clone().unwrap_or_default();
    if tag.is_empty() {
        return Err(ConfigError::invalid(format!("{path}.tag"), "missing (an inbound added at run time needs a tag)"));
    }
    Ok(inbound(raw, path, tag)?.0)
}

/// The API's (or the metrics endpoint's, `who`) dokodemo-door inbound: only its address
/// matters, the rest is checked for form.
fn api_inbound(ib: RawInbound, path: &str, tag: &str, who: &str) -> Result<(String, SocketAddr), ConfigError> {
    let protocol = protocol_name(&ib, path)?;
    if !is_dokodemo(&protocol) {
        return Err(ConfigError::invalid(
            format!("{path}.protocol"),
            format!("the {who} inbound {tag:?} must be dokodemo-door, not {protocol:?}"),
        ));
    }
    let _: RawDokodemoSettings = deserialize_at(ib.settings.unwrap_or_else(empty_object), &format!("{path}.settings"))?;
    let stream = stream_settings(ib.stream_settings, &format!("{path}.streamSettings"))?;
    if stream.tls.is_some() || stream.reality.is_some() {
        return Err(ConfigError::unsupported(
            format!("{path}.streamSettings.security"),
            format!("TLS on the {who} inbound"),
        ));
    }
    if stream.sockopt.accept_proxy_protocol {
        return Err(ConfigError::unsupported(
            format!("{path}.streamSettings.sockopt.acceptProxyProtocol"),
            format!("the PROXY protocol on the {who} inbound"),
        ));
    }
    if ib.sniffing.is_some_and(|s| s.enabled == Some(true)) {
        return Err(ConfigError::unsupported(
            format!("{path}.sniffing.enabled"),
            format!("sniffing on the {who} inbound"),
        ));
    }
    check_allocate(ib.allocate, path)?;
    let listen_path = format!("{path}.listen");
    let ip = listen_ip(ib.listen.as_deref(), &listen_path)?;
    // The API's address is checked once its credentials are known.
    if who != "API" {
        check_loopback(ip, &listen_path, who)?;
    }
    let port_path = format!("{path}.port");
    let port = inbound_port(ib.port.as_ref(), &port_path)?;
    Ok((port_path, SocketAddr::new(ip, port)))
}

/// One served inbound and its listen address.
fn inbound(ib: RawInbound, path: &str, tag: String) -> Result<(InboundSpec, SocketAddr), ConfigError> {
    let protocol = protocol_name(&ib, path)?;
    let unix = unix_listen(ib.listen.as_deref(), &format!("{path}.listen"))?;
    let listen = match unix {
        // Xray ignores the port of an inbound on a Unix socket.
        Some(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        None => {
            let ip = listen_ip(ib.listen.as_deref(), &format!("{path}.listen"))?;
            SocketAddr::new(ip, inbound_port(ib.port.as_ref(), &format!("{path}.port"))?)
        }
    };
    let InboundStream { tls, reality, sockopt, http_header, transport } =
        stream_settings(ib.stream_settings, &format!("{path}.streamSettings"))?;
    let sniffing = sniffing(ib.sniffing, path)?;
    check_allocate(ib.allocate, path)?;

    let settings_path = format!("{path}.settings");
    let settings = ib.settings.unwrap_or_else(empty_object);
    let protocol = match protocol.as_str() {
        "vless" => InboundProtocol::Vless(vless(settings, &settings_path)?),
        "trojan" => InboundProtocol::Trojan(trojan(settings, &settings_path)?),
        "vmess" => InboundProtocol::Vmess(vmess(settings, &settings_path)?),
        "socks" => InboundProtocol::Socks(socks(settings, &settings_path)?),
        "http" => InboundProtocol::Http(http(settings, &settings_path)?),
        "shadowsocks" => InboundProtocol::Shadowsocks(shadowsocks(settings, &settings_path)?),
        p if is_dokodemo(p) => InboundProtocol::Dokodemo(dokodemo(settings, &settings_path)?),
        p if LATER_PROTOCOLS.contains(&p) => {
            return Err(ConfigError::unsupported(format!("{path}.protocol"), format!("{p:?}")))
        }
        p => return Err(ConfigError::invalid(format!("{path}.protocol"), format!("unknown protocol {p:?}"))),
    };
    let spec = InboundSpec {
        tag,
        listen,
        unix,
        tls,
        reality,
        protocol,
        config_index: None,
        sockopt,
        http_header,
        transport,
        sniffing,
    };
    if let InboundProtocol::Vless(v) = &spec.protocol {
        if let (Some(j), Some(why)) = (v.clients.iter().position(|c| c.account.vision()), spec.vision_refused()) {
            let path = format!("{settings_path}.clients[{j}].flow");
            return Err(ConfigError::invalid(path, why));
        }
    }
    // A quota belongs to an email (its counters are named by it).
    if let Some(j) =
        spec.protocol.clients().unwrap_or_default().iter().position(|u| u.quota.is_set() && u.email.is_empty())
    {
        let path = format!("{settings_path}.clients[{j}].quota");
        return Err(ConfigError::invalid(path, "a client with a quota or an expiry needs an email"));
    }
    if spec.unix.is_some() && spec.networks().udp {
        return Err(ConfigError::invalid(
            format!("{path}.listen"),
            "a Unix socket carries streams only: this inbound's UDP (its settings.network) has nowhere to listen",
        ));
    }
    Ok((spec, listen))
}

fn protocol_name(ib: &RawInbound, path: &str) -> Result<String, ConfigError> {
    match ib.protocol.as_deref() {
        None | Some("") => Err(ConfigError::invalid(format!("{path}.protocol"), "missing")),
        Some(p) => Ok(p.to_ascii_lowercase()),
    }
}

fn is_dokodemo(protocol: &str) -> bool {
    protocol == "dokodemo-door" || protocol == "tunnel"
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// `listen` naming a Unix socket (`/path[,mode]`, `@name`, `@@name`), as Xray reads it; `None`
/// for an IP address or none.
fn unix_listen(listen: Option<&str>, path: &str) -> Result<Option<Box<UnixListenSpec>>, ConfigError> {
    let s = listen.unwrap_or("").trim();
    let Some(name) = UnixSocketName::parse(s) else { return Ok(None) };
    let UnixSocketName::Path(file) = &name else { return Ok(Some(Box::new(UnixListenSpec { name, mode: None }))) };
    // A path may end in `,MODE`, the file's permission bits in octal (Xray splits on the comma).
    let text = file.to_string_lossy();
    let (file, mode) = match text.split_once(',') {
        None => (file.clone(), None),
        Some((file, mode)) => match u32::from_str_radix(mode, 8) {
            Ok(bits) if bits <= 0o7777 => (PathBuf::from(file), Some(bits)),
            _ => {
                return Err(ConfigError::invalid(
                    path,
                    format!("{mode:?} after the comma is not a file mode in octal (such as 0666)"),
                ))
            }
        },
    };
    Ok(Some(Box::new(UnixListenSpec { name: UnixSocketName::Path(file), mode })))
}

/// `listen`: an IP address; absent means every IPv4 address.
fn listen_ip(listen: Option<&str>, path: &str) -> Result<IpAddr, ConfigError> {
    let s = listen.unwrap_or("").trim();
    if s.is_empty() {
        return Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    if UnixSocketName::parse(s).is_some() {
        return Err(ConfigError::unsupported(path, "listening on a Unix socket"));
    }
    let bare = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s);
    bare.parse().map_err(|_| ConfigError::invalid(path, format!("{s:?} is not an IP address")))
}

/// `port` of an inbound: a number or numeric string; 0 asks the kernel for a free port.
fn inbound_port(port: Option<&Value>, path: &str) -> Result<u16, ConfigError> {
    let value = match port {
        None | Some(Value::Null) => return Err(ConfigError::invalid(path, "missing")),
        Some(v) => v,
    };
    if let Value::String(s) = value {
        let s = s.trim();
        if s.contains('-') || s.contains(',') {
            return Err(ConfigError::unsupported_msg(path, "port ranges are not supported yet"));
        }
        if s == "0" {
            return Ok(0);
        }
    }
    if value.as_u64() == Some(0) {
        return Ok(0);
    }
    parse_port(value, path)
}

/// `sniffing`, as Xray reads it; `None` unless enabled.
fn sniffing(sniffing: Option<RawSniffing>, path: &str) -> Result<Option<Box<SniffingSpec>>, ConfigError> {
    let Some(raw) = sniffing.filter(|s| s.enabled == Some(true)) else { return Ok(None) };
    let mut dest_override = Vec::new();
    for (i, p) in raw.dest_override.map(|l| l.0).unwrap_or_default().into_iter().enumerate() {
        let name = match p.to_ascii_lowercase().as_str() {
            "http" => "http",
            "tls" | "https" | "ssl" => "tls",
            "quic" => "quic",
            // Xray's fakedns sniffer exists only with a fakedns pool, which is not served (a
            // top-level `fakedns` is refused): as in Xray without one, it adds nothing.
            "fakedns" | "fakedns+others" => continue,
            _ => {
                return Err(ConfigError::invalid(
                    format!("{path}.sniffing.destOverride[{i}]"),
                    format!("unknown protocol {p:?} (expected http, tls, quic or fakedns)"),
                ))
            }
        };
        if !dest_override.iter().any(|d| d == name) {
            dest_override.push(name.to_owned());
        }
    }
    let mut domains_excluded = Vec::new();
    for (i, entry) in raw.domains_excluded.map(|l| l.0).unwrap_or_default().into_iter().enumerate() {
        super::routing::domain_matchers(
            &entry,
            &format!("{path}.sniffing.domainsExcluded[{i}]"),
            &mut domains_excluded,
        )?;
    }
    // As routing's `ip`: CIDRs, addresses, `geoip:` and `ext:` lists.
    let ips_excluded = super::routing::ip_list(raw.ips_excluded, &format!("{path}.sniffing.ipsExcluded"))?;
    Ok(Some(Box::new(SniffingSpec {
        dest_override,
        metadata_only: raw.metadata_only.unwrap_or(false),
        route_only: raw.route_only.unwrap_or(false),
        domains_excluded,
        ips_excluded,
    })))
}

fn check_allocate(allocate: Option<RawAllocate>, path: &str) -> Result<(), ConfigError> {
    let strategy = allocate.and_then(|a| a.strategy).unwrap_or_default();
    if strategy.is_empty() || strategy.eq_ignore_ascii_case("always") {
        Ok(())
    } else {
        Err(ConfigError::unsupported(format!("{path}.allocate.strategy"), format!("allocate strategy {strategy:?}")))
    }
}

// === stream settings and TLS ===

/// What an inbound's `streamSettings` ask for: raw TCP, perhaps opening with an HTTP head,
/// perhaps under TLS, on listeners with these socket options.
#[derive(Default)]
struct InboundStream {
    tls: Option<TlsServerSpec>,
    reality: Option<Box<shardray_core::spec::RealityServerSpec>>,
    sockopt: SocketOptions,
    http_header: Option<HttpHeaderSpec>,
    transport: TransportSpec,
}

/// `streamSettings` of an inbound.
fn stream_settings(raw: Option<RawStreamSettings>, path: &str) -> Result<InboundStream, ConfigError> {
    let Some(mut raw) = raw else { return Ok(InboundStream::default()) };
    let mut sockopt = match raw.sockopt.take() {
        Some(s) => super::validate::sockopt(s, &format!("{path}.sockopt"))?,
        None => SocketOptions::default(),
    };
    let network = raw.network.as_deref().unwrap_or("").to_ascii_lowercase();
    // Xray reads the PROXY protocol flag in sockopt and in the transport's own settings, and
    // serves it if either asks.
    let asked = |t: &Option<RawHttpTransport>| t.as_ref().and_then(|t| t.accept_proxy_protocol).unwrap_or(false);
    sockopt.accept_proxy_protocol |= match network.as_str() {
        "ws" | "websocket" => asked(&raw.ws_settings),
        "httpupgrade" => asked(&raw.httpupgrade_settings),
        _ => false,
    };
    let mut xhttp = super::xhttp::pick(raw.xhttp_settings.take(), raw.splithttp_settings.take());
    let transport = stream_transport(
        &network,
        &mut raw.ws_settings,
        &mut raw.httpupgrade_settings,
        &mut raw.grpc_settings,
        &mut xhttp,
        path,
    )?;
    // `rawSettings` is the newer name; where both are given it wins, as in Xray. Another
    // transport ignores both, as Xray does.
    let (tcp, tcp_path) = match raw.raw_settings.take() {
        Some(raw_settings) => (Some(raw_settings), "rawSettings"),
        None => (raw.tcp_settings.take(), "tcpSettings"),
    };
    let http_header = match transport {
        TransportSpec::Raw => {
            sockopt.accept_proxy_protocol |= tcp.as_ref().and_then(|t| t.accept_proxy_protocol).unwrap_or(false);
            tcp_settings(tcp, &format!("{path}.{tcp_path}"))?
        }
        _ => None,
    };
    let reality = match raw.security.as_deref() {
        Some(s) if s.eq_ignore_ascii_case("reality") => {
            Some(Box::new(super::reality::server(raw.reality_settings.take(), &transport, path)?))
        }
        _ => None,
    };
    let mut tls = tls_of_stream(raw, path)?;
    if let (Some(tls), TransportSpec::Grpc(_)) = (&mut tls, &transport) {
        // As Xray's gRPC server: HTTP/2 is the only protocol it offers, whatever `alpn` says.
        tls.alpn = vec!["h2".into()];
    }
    if let (Some(tls), TransportSpec::Xhttp(_)) = (&mut tls, &transport) {
        // Xray's TLS offers h2 and http/1.1 when `alpn` names nothing; XHTTP serves both.
        if tls.alpn.is_empty() {
            tls.alpn = vec!["h2".into(), "http/1.1".into()];
        }
    }
    Ok(InboundStream { tls, reality, sockopt, http_header, transport })
}

/// `network` and the settings of the transport it names, inbound or outbound.
pub(super) fn stream_transport(
    network: &str,
    ws: &mut Option<RawHttpTransport>,
    httpupgrade: &mut Option<RawHttpTransport>,
    grpc: &mut Option<RawGrpcSettings>,
    xhttp: &mut Option<(&'static str, Value)>,
    path: &str,
) -> Result<TransportSpec, ConfigError> {
    match network {
        "xhttp" | "splithttp" => {
            let (key, raw) = xhttp.take().map_or(("xhttpSettings", None), |(k, v)| (k, Some(v)));
            Ok(TransportSpec::Xhttp(Box::new(super::xhttp::xhttp_settings(raw, &format!("{path}.{key}"))?)))
        }
        "grpc" | "gun" => {
            Ok(TransportSpec::Grpc(Box::new(grpc_settings(grpc.take(), &format!("{path}.grpcSettings"))?)))
        }
        "" | "tcp" | "raw" => Ok(TransportSpec::Raw),
        "ws" | "websocket" => {
            Ok(TransportSpec::Ws(Box::new(http_transport(ws.take(), &format!("{path}.wsSettings"), true)?)))
        }
        "httpupgrade" => Ok(TransportSpec::HttpUpgrade(Box::new(http_transport(
            httpupgrade.take(),
            &format!("{path}.httpupgradeSettings"),
            false,
        )?))),
        n if LATER_NETWORKS.contains(&n) => {
            Err(ConfigError::unsupported(format!("{path}.network"), format!("network {n:?}")))
        }
        n => Err(ConfigError::invalid(format!("{path}.network"), format!("unknown network {n:?}"))),
    }
}

/// `wsSettings` (`ws`) or `httpupgradeSettings`, as Xray builds them: the path normalized and
/// its `ed` parameter taken out as the early-data length; a `Host` among the WebSocket
/// headers moves to `host` (HTTPUpgrade refuses it).
fn http_transport(raw: Option<RawHttpTransport>, path: &str, ws: bool) -> Result<HttpTransportSpec, ConfigError> {
    let raw = raw.unwrap_or_default();
    if !ws && raw.heartbeat_period.is_some() {
        return Err(ConfigError::invalid(format!("{path}.heartbeatPeriod"), "only WebSocket has a heartbeat"));
    }
    let (mut url_path, mut early_data) = split_early_data(raw.path.as_deref().unwrap_or(""), &format!("{path}.path"))?;
    if !url_path.starts_with('/') {
        url_path.insert(0, '/');
    }
    // V2Ray 4's form: its length, in the header Xray uses or, unnamed, after the path (where
    // V2Ray's client puts it).
    let mut early_data_in_path = false;
    if let Some(n) = raw.max_early_data.filter(|&n| n > 0) {
        match raw.early_data_header_name.as_deref().unwrap_or("") {
            "" => early_data_in_path = true,
            h if h.eq_ignore_ascii_case("Sec-WebSocket-Protocol") => {}
            h => {
                return Err(ConfigError::unsupported(
                    format!("{path}.earlyDataHeaderName"),
                    format!("early data in {h:?} (only Sec-WebSocket-Protocol)"),
                ))
            }
        }
        early_data = early_data.max(n);
    }
    let mut host = raw.host.unwrap_or_default();
    let mut headers = Vec::new();
    for (name, value) in raw.headers.unwrap_or_default() {
        if name.eq_ignore_ascii_case("host") {
            if !ws {
                return Err(ConfigError::invalid(format!("{path}.headers.{name}"), "give the host in \"host\""));
            }
            if host.is_empty() {
                host = value;
            }
            continue;
        }
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) || value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(ConfigError::invalid(format!("{path}.headers.{name}"), "not a valid HTTP header"));
        }
        headers.push((name, value));
    }
    if host.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(ConfigError::invalid(format!("{path}.host"), format!("{host:?} is not a host name")));
    }
    Ok(HttpTransportSpec { path: url_path, host, headers, early_data, early_data_in_path })
}

/// `grpcSettings` outside a config file (the API's gRPC TransportConfig in its JSON form),
/// checked as a config's are; errors name fields under `path`.
pub fn load_grpc_settings(value: Value, path: &str) -> Result<GrpcSpec, ConfigError> {
    grpc_settings(Some(deserialize_at(value, path)?), path)
}

/// `grpcSettings`, as Xray builds them: negative durations and windows count as 0. The
/// client-only keys (`multiMode`, `authority`, `user_agent`, `initial_windows_size`,
/// `permit_without_stream`) mean nothing to a server, which ignores them as Xray does.
fn grpc_settings(raw: Option<RawGrpcSettings>, path: &str) -> Result<GrpcSpec, ConfigError> {
    let raw = raw.unwrap_or_default();
    let secs = |v: Option<i64>, key: &str| -> Result<u32, ConfigError> {
        match v.unwrap_or(0) {
            n if n <= 0 => Ok(0),
            n => {
                u32::try_from(n).map_err(|_| ConfigError::invalid(format!("{path}.{key}"), format!("{n} is too large")))
            }
        }
    };
    let service_name = raw.service_name.unwrap_or_default();
    if service_name.bytes().any(|b| b.is_ascii_control() || b == b' ') && service_name.starts_with('/') {
        return Err(ConfigError::invalid(format!("{path}.serviceName"), format!("{service_name:?} is not a URL path")));
    }
    let authority = raw.authority.unwrap_or_default();
    if authority.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/') {
        return Err(ConfigError::invalid(format!("{path}.authority"), format!("{authority:?} is not a host name")));
    }
    let user_agent = raw.user_agent.unwrap_or_default();
    if user_agent.bytes().any(|b| b.is_ascii_control()) {
        return Err(ConfigError::invalid(format!("{path}.user_agent"), "not a valid header value"));
    }
    let initial_windows_size = secs(raw.initial_windows_size, "initial_windows_size")?;
    // HTTP/2 windows are 31-bit.
    if initial_windows_size > (1 << 31) - 1 {
        return Err(ConfigError::invalid(format!("{path}.initial_windows_size"), "above 2^31-1"));
    }
    Ok(GrpcSpec {
        service_name,
        multi_mode: raw.multi_mode.unwrap_or(false),
        idle_timeout: secs(raw.idle_timeout, "idle_timeout")?,
        health_check_timeout: secs(raw.health_check_timeout, "health_check_timeout")?,
        permit_without_stream: raw.permit_without_stream.unwrap_or(false),
        initial_windows_size,
        user_agent,
        authority,
    })
}

/// A transport path and the early-data length its `ed` query parameter gives (0 without).
fn split_early_data(raw: &str, path: &str) -> Result<(String, u32), ConfigError> {
    if raw.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(ConfigError::invalid(path, format!("{raw:?} is not a URL path")));
    }
    let Some((base, query)) = raw.split_once('?') else { return Ok((raw.to_owned(), 0)) };
    let mut early = 0;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("ed", n)) => {
                // As Xray: a value that is not a number counts as 0.
                early = n.parse().unwrap_or(0);
            }
            _ => rest.push(pair),
        }
    }
    let joined = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    Ok((joined, early))
}

fn tls_of_stream(raw: RawStreamSettings, path: &str) -> Result<Option<TlsServerSpec>, ConfigError> {
    let security = raw.security.as_deref().unwrap_or("").to_ascii_lowercase();
    match security.as_str() {
        "" | "none" => Ok(None),
        "tls" => {
            let tls_path = format!("{path}.tlsSettings");
            match raw.tls_settings {
                Some(tls) => Ok(Some(tls_server(tls, &tls_path)?)),
                None => Err(ConfigError::invalid(tls_path, "missing (security is \"tls\")")),
            }
        }
        // Read by the caller (inbounds; an outbound's refuses it in its own checks).
        "reality" => Ok(None),
        s @ "xtls" => Err(ConfigError::unsupported(format!("{path}.security"), format!("security {s:?}"))),
        s => Err(ConfigError::invalid(
            format!("{path}.security"),
            format!("unknown security {s:?} (expected \"none\", \"tls\" or \"reality\")"),
        )),
    }
}

/// `tcpSettings` / `rawSettings`: the HTTP camouflage, if its header asks for it.
fn tcp_settings(raw: Option<RawTcpSettings>, path: &str) -> Result<Option<HttpHeaderSpec>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let Some(header) = raw.header else { return Ok(None) };
    match header.kind.unwrap_or_default().to_ascii_lowercase().as_str() {
        "" | "none" => Ok(None),
        "http" => Ok(Some(HttpHeaderSpec {
            request: http_request(header.request.unwrap_or_default()),
            response: http_response(header.response.unwrap_or_default()),
        })),
        other => Err(ConfigError::invalid(format!("{path}.header.type"), format!("unknown header type {other:?}"))),
    }
}

/// `header.request` over Xray's defaults (infra/conf/transport_method.go): each key given
/// replaces the default; headers replace the default headers as a whole, in name order.
fn http_request(raw: RawHttpRequest) -> RequestTemplate {
    let mut t = RequestTemplate::default();
    if let Some(v) = raw.version.filter(|v| !v.is_empty()) {
        t.version = v;
    }
    if let Some(m) = raw.method.filter(|m| !m.is_empty()) {
        t.method = m;
    }
    if let Some(paths) = raw.path.map(|p| p.0).filter(|p| !p.is_empty()) {
        t.paths = paths;
    }
    if let Some(headers) = raw.headers.filter(|h| !h.is_empty()) {
        t.headers = headers.into_iter().map(|(name, values)| (name, values.0)).collect();
    }
    t
}

/// `header.response` over Xray's defaults.
fn http_response(raw: RawHttpResponse) -> ResponseTemplate {
    let mut t = ResponseTemplate::default();
    if let Some(v) = raw.version.filter(|v| !v.is_empty()) {
        t.version = v;
    }
    if let Some(status) = raw.status.filter(|s| !s.is_empty()) {
        t.status = status;
    }
    if let Some(reason) = raw.reason.filter(|r| !r.is_empty()) {
        t.reason = reason;
    }
    if let Some(headers) = raw.headers.filter(|h| !h.is_empty()) {
        t.headers = headers.into_iter().map(|(name, values)| (name, values.0)).collect();
    }
    t
}

fn tls_server(raw: RawTlsSettings, path: &str) -> Result<TlsServerSpec, ConfigError> {
    if raw.reject_unknown_sni == Some(true) {
        return Err(ConfigError::unsupported(format!("{path}.rejectUnknownSni"), "rejectUnknownSni"));
    }
    let unserved = [
        ("curvePreferences", raw.curve_preferences.as_ref().is_some_and(|c| !c.is_empty())),
        ("echServerKeys", raw.ech_server_keys.as_ref().is_some_and(|s| !s.is_empty())),
        ("masterKeyLog", raw.master_key_log.as_ref().is_some_and(|s| !s.is_empty())),
    ];
    for (field, set) in unserved {
        if set {
            return Err(ConfigError::unsupported(format!("{path}.{field}"), field));
        }
    }

    let alpn = match raw.alpn {
        Some(StringList(list)) if !list.is_empty() => {
            if let Some(j) = list.iter().position(|p| p.is_empty()) {
                return Err(ConfigError::invalid(format!("{path}.alpn[{j}]"), "empty protocol"));
            }
            list
        }
        _ => vec!["h2".to_string(), "http/1.1".to_string()],
    };

    let raw_certs = raw.certificates.unwrap_or_default();
    if raw_certs.is_empty() {
        return Err(ConfigError::invalid(format!("{path}.certificates"), "at least one certificate is required"));
    }
    let mut certificates = Vec::with_capacity(raw_certs.len());
    for (j, cert) in raw_certs.into_iter().enumerate() {
        certificates.push(certificate(cert, &format!("{path}.certificates[{j}]"))?);
    }

    let min_version = tls_version(raw.min_version.as_deref(), &format!("{path}.minVersion"))?;
    let max_version = tls_version(raw.max_version.as_deref(), &format!("{path}.maxVersion"))?;
    if let (Some(min), Some(max)) = (min_version, max_version) {
        if min > max {
            return Err(ConfigError::invalid(format!("{path}.maxVersion"), "is lower than minVersion"));
        }
    }

    let cipher_suites: Vec<String> = raw
        .cipher_suites
        .as_deref()
        .unwrap_or("")
        .split(':')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    shardray_shard::transport::tls::cipher_suites(&cipher_suites)
        .map_err(|e| ConfigError::invalid(format!("{path}.cipherSuites"), e.0.trim_start_matches("cipherSuites: ")))?;
    Ok(TlsServerSpec {
        server_name: raw.server_name.unwrap_or_default(),
        alpn,
        certificates,
        min_version,
        max_version,
        cipher_suites,
        session_resumption: raw.enable_session_resumption.unwrap_or(false),
    })
}

fn tls_version(value: Option<&str>, path: &str) -> Result<Option<TlsVersion>, ConfigError> {
    match value.unwrap_or("").trim() {
        "" => Ok(None),
        "1.2" => Ok(Some(TlsVersion::V1_2)),
        "1.3" => Ok(Some(TlsVersion::V1_3)),
        v @ ("1.0" | "1.1") => {
            Err(ConfigError::invalid(path, format!("TLS {v} is not offered (shardray speaks TLS 1.2 and 1.3)")))
        }
        v => Err(ConfigError::invalid(path, format!("unknown TLS version {v:?} (expected \"1.2\" or \"1.3\")"))),
    }
}

/// One certificate and key, read from their files or taken inline, then checked to be PEM.
fn certificate(raw: RawCertificate, path: &str) -> Result<CertificateSpec, ConfigError> {
    let usage = raw.usage.unwrap_or_default().to_ascii_lowercase();
    if !(usage.is_empty() || usage == "encipherment") {
        return Err(ConfigError::unsupported(format!("{path}.usage"), format!("certificate usage {usage:?}")));
    }
    let chain_pem = pem_source(raw.certificate_file, raw.certificate, path, ("certificateFile", "certificate"))?;
    let key_pem = pem_source(raw.key_file, raw.key, path, ("keyFile", "key"))?;

    let chain_text = String::from_utf8_lossy(&chain_pem.1);
    if !chain_text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(ConfigError::invalid(chain_pem.0, format!("{} holds no PEM certificate", chain_pem.2)));
    }
    let key_text = String::from_utf8_lossy(&key_pem.1);
    let has_key = key_text.lines().any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with("PRIVATE KEY-----"));
    if !has_key {
        return Err(ConfigError::invalid(key_pem.0, format!("{} holds no PEM private key", key_pem.2)));
    }
    Ok(CertificateSpec { chain_pem: chain_pem.1, key_pem: key_pem.1 })
}

/// PEM bytes from a file field or an inline list of lines: (the path used, the bytes, a
/// description for messages).
fn pem_source(
    file: Option<String>,
    inline: Option<StringList>,
    path: &str,
    (file_field, inline_field): (&str, &str),
) -> Result<(String, Vec<u8>, String), ConfigError> {
    let file = file.filter(|f| !f.is_empty());
    let inline = inline.map(|l| l.0).filter(|l| !l.is_empty());
    match (file, inline) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            format!("{path}.{inline_field}"),
            format!("set {file_field} or {inline_field}, not both"),
        )),
        (Some(file), None) => {
            let field_path = format!("{path}.{file_field}");
            let bytes = std::fs::read(&file).map_err(|e| ConfigError::io(&field_path, Path::new(&file), &e))?;
            Ok((field_path, bytes, format!("{file:?}")))
        }
        (None, Some(lines)) => {
            let mut text = lines.join("\n");
            text.push('\n');
            Ok((format!("{path}.{inline_field}"), text.into_bytes(), "it".to_string()))
        }
        (None, None) => Err(ConfigError::invalid(
            format!("{path}.{file_field}"),
            format!("missing (give {file_field} or an inline {inline_field})"),
        )),
    }
}

// === vless ===

fn vless(settings: Value, path: &str) -> Result<VlessInboundSpec, ConfigError> {
    let raw: RawVlessSettings = deserialize_at(settings, path)?;
    match raw.decryption.as_deref() {
        None => {
            return Err(ConfigError::invalid(
                format!("{path}.decryption"),
                "missing (VLESS requires \"decryption\": \"none\")",
            ))
        }
        Some("none") => {}
        Some(other) => {
            return Err(ConfigError::unsupported(format!("{path}.decryption"), format!("VLESS decryption {other:?}")))
        }
    }

    // `settings.flow`: the flow of every client that names none, as in Xray.
    let default_flow = match raw.flow.as_deref().unwrap_or("") {
        "" => VlessFlow::None,
        shardray_wire::vision::FLOW => VlessFlow::Vision,
        f => {
            return Err(ConfigError::invalid(format!("{path}.flow"), format!("flow {f:?} is not a VLESS inbound flow")))
        }
    };
    let clients = raw.clients.unwrap_or_default();
    let clients = clients_of(clients, path, "clients", "id", |c, p| vless_client(c, p, default_flow))?;
    let fallbacks = fallbacks(raw.fallbacks, path)?;
    Ok(VlessInboundSpec { clients, fallbacks })
}

/// An inbound's `clients` (or the list named `list`), each checked by `client`; an account
/// (`key_field`) or an email that two clients share is an error naming the second.
fn clients_of<C>(
    raw: Vec<C>,
    path: &str,
    list: &str,
    key_field: &str,
    client: impl Fn(C, &str) -> Result<UserSpec, ConfigError>,
) -> Result<Vec<UserSpec>, ConfigError> {
    let mut clients = Vec::new();
    let mut accounts: HashMap<Account, usize> = HashMap::new();
    let mut emails: HashMap<String, usize> = HashMap::new();
    for (j, c) in raw.into_iter().enumerate() {
        let cpath = format!("{path}.{list}[{j}]");
        let user = client(c, &cpath)?;
        if let Some(first) = accounts.insert(user.account.clone(), j) {
            let what = match &user.account {
                Account::Vless(id, _) => format!("duplicate id {id}"),
                // The password itself stays out of the message (and the logs).
                Account::Trojan(_) => "duplicate password".to_owned(),
                Account::Vmess { id, .. } => format!("duplicate id {id}"),
                Account::Socks(a) | Account::Http(a) => format!("duplicate user {:?}", a.username),
                Account::Shadowsocks { .. } | Account::Shadowsocks2022 { .. } => "duplicate password".to_owned(),
            };
            return Err(ConfigError::invalid(format!("{cpath}.{key_field}"), format!("{what} (also {list}[{first}])")));
        }
        if !user.email.is_empty() {
            if let Some(first) = emails.insert(user.email.to_lowercase(), j) {
                return Err(ConfigError::invalid(
                    format!("{cpath}.email"),
                    format!("duplicate email {:?} (also {list}[{first}])", user.email),
                ));
            }
        }
        clients.push(user);
    }
    Ok(clients)
}

/// A VLESS or Trojan inbound's `fallbacks`, in order.
fn fallbacks(raw: Option<Vec<RawFallback>>, path: &str) -> Result<Vec<FallbackSpec>, ConfigError> {
    let mut fallbacks = Vec::new();
    let mut seen = HashSet::new();
    for (k, fb) in raw.unwrap_or_default().into_iter().enumerate() {
        let fpath = format!("{path}.fallbacks[{k}]");
        let spec = fallback(fb, &fpath)?;
        if !seen.insert((spec.name.clone(), spec.alpn.clone(), spec.path.clone())) {
            return Err(ConfigError::invalid(fpath, "another fallback has the same name, alpn and path"));
        }
        fallbacks.push(spec);
    }
    Ok(fallbacks)
}

fn vless_client(raw: RawVlessClient, path: &str, default_flow: VlessFlow) -> Result<UserSpec, ConfigError> {
    let id = match raw.id.as_deref() {
        None => return Err(ConfigError::invalid(format!("{path}.id"), "missing")),
        Some(s) => {
            parse_user_id(s).ok_or_else(|| ConfigError::invalid(format!("{path}.id"), format!("invalid UUID {s:?}")))?
        }
    };
    let flow = match raw.flow.as_deref().unwrap_or("") {
        "" => default_flow,
        shardray_wire::vision::FLOW => VlessFlow::Vision,
        // As Xray's inbound config: the UDP/443 variant is a client's (outbound's) flow.
        f @ "xtls-rprx-vision-udp443" => {
            return Err(ConfigError::invalid(
                format!("{path}.flow"),
                format!("{f:?} is an outbound flow (inbound clients take \"xtls-rprx-vision\")"),
            ))
        }
        f => return Err(ConfigError::invalid(format!("{path}.flow"), format!("unknown flow {f:?}"))),
    };
    let account = Account::Vless(id, flow);
    Ok(UserSpec {
        account,
        email: raw.email.unwrap_or_default(),
        level: raw.level.unwrap_or(0),
        quota: user_quota(raw.quota, raw.expiry, path)?,
    })
}

/// A client's `quota` and `expiry` (ours), checked.
fn user_quota(quota: Option<Value>, expiry: Option<Value>, path: &str) -> Result<QuotaSpec, ConfigError> {
    let bytes = match quota {
        None | Some(Value::Null) => 0,
        Some(v) => super::units::parse_bytes(&v).map_err(|e| ConfigError::invalid(format!("{path}.quota"), e))?,
    };
    let expiry = match expiry {
        None | Some(Value::Null) => 0,
        Some(v) => crate::quota::parse_expiry(&v).map_err(|e| ConfigError::invalid(format!("{path}.expiry"), e))?,
    };
    Ok(QuotaSpec { bytes, expiry })
}

// === trojan ===

fn trojan(settings: Value, path: &str) -> Result<TrojanInboundSpec, ConfigError> {
    let raw: RawTrojanSettings = deserialize_at(settings, path)?;
    let clients = clients_of(raw.clients.unwrap_or_default(), path, "clients", "password", trojan_client)?;
    let fallbacks = fallbacks(raw.fallbacks, path)?;
    Ok(TrojanInboundSpec { clients, fallbacks })
}

fn trojan_client(raw: RawTrojanClient, path: &str) -> Result<UserSpec, ConfigError> {
    let password = match raw.password {
        None => return Err(ConfigError::invalid(format!("{path}.password"), "missing")),
        Some(p) if p.is_empty() => return Err(ConfigError::invalid(format!("{path}.password"), "empty")),
        Some(p) => p,
    };
    match raw.flow.as_deref().unwrap_or("") {
        "" => {}
        f => return Err(ConfigError::unsupported(format!("{path}.flow"), format!("Trojan flow {f:?}"))),
    }
    Ok(UserSpec {
        account: Account::Trojan(password.into()),
        email: raw.email.unwrap_or_default(),
        level: raw.level.unwrap_or(0),
        quota: user_quota(raw.quota, raw.expiry, path)?,
    })
}

// === socks and http ===

fn socks(settings: Value, path: &str) -> Result<SocksInboundSpec, ConfigError> {
    let raw: RawSocksSettings = deserialize_at(settings, path)?;
    // Xray takes any other value for "noauth"; a misspelt "password" would then open the
    // proxy to everyone, so it is refused here.
    let password_auth = match raw.auth.as_deref().unwrap_or("") {
        "" | "noauth" => false,
        "password" => true,
        other => {
            return Err(ConfigError::invalid(
                format!("{path}.auth"),
                format!("unknown auth {other:?} (expected \"noauth\" or \"password\")"),
            ))
        }
    };
    let mut udp_ip = None;
    if let Some(ip) = raw.ip.as_ref().filter(|v| !is_empty_value(v)) {
        udp_ip = ip.as_str().and_then(|t| Address::parse(t.trim()));
        if udp_ip.is_none() {
            return Err(ConfigError::invalid(format!("{path}.ip"), format!("{} is not an address", value_text(ip))));
        }
    }
    let user_level = raw.user_level.unwrap_or(0);
    let clients = proxy_accounts(raw.accounts, raw.users, path, user_level, Account::Socks)?;
    Ok(SocksInboundSpec { password_auth, clients, udp: raw.udp.unwrap_or(false), udp_ip, user_level })
}

fn http(settings: Value, path: &str) -> Result<HttpInboundSpec, ConfigError> {
    let raw: RawHttpSettings = deserialize_at(settings, path)?;
    let user_level = raw.user_level.unwrap_or(0);
    let clients = proxy_accounts(raw.accounts, raw.users, path, user_level, Account::Http)?;
    Ok(HttpInboundSpec { clients, allow_transparent: raw.allow_transparent.unwrap_or(false), user_level })
}

/// `accounts` (which Xray takes over `users` when both are there) of a SOCKS or HTTP inbound:
/// `user` and `pass` required, `email` the username unless given (Xray counts a session under
/// its username), `level` the inbound's `userLevel` unless given. Two accounts may not share
/// a username: Xray would keep only the last.
fn proxy_accounts(
    accounts: Option<Vec<RawProxyAccount>>,
    users: Option<Vec<RawProxyAccount>>,
    path: &str,
    user_level: u32,
    make: fn(ProxyAccount) -> Account,
) -> Result<Vec<UserSpec>, ConfigError> {
    let list = if accounts.is_some() { "accounts" } else { "users" };
    let raw = accounts.or(users).unwrap_or_default();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (j, a) in raw.iter().enumerate() {
        if let Some(first) = a.user.as_ref().and_then(|u| names.insert(u.clone(), j)) {
            return Err(ConfigError::invalid(
                format!("{path}.{list}[{j}].user"),
                format!("duplicate user {:?} (also {list}[{first}])", a.user.as_deref().unwrap_or_default()),
            ));
        }
    }
    clients_of(raw, path, list, "user", |a, p| proxy_account(a, p, user_level, make))
}

/// One `{user, pass}` account (an inbound's, or an outbound's `users[0]`).
pub(super) fn proxy_account(
    raw: RawProxyAccount,
    path: &str,
    user_level: u32,
    make: fn(ProxyAccount) -> Account,
) -> Result<UserSpec, ConfigError> {
    let username = match raw.user {
        None => return Err(ConfigError::invalid(format!("{path}.user"), "missing")),
        Some(u) if u.is_empty() => return Err(ConfigError::invalid(format!("{path}.user"), "empty")),
        Some(u) if u.len() > 255 => return Err(ConfigError::invalid(format!("{path}.user"), "longer than 255 bytes")),
        Some(u) => u,
    };
    let password = match raw.pass {
        None => return Err(ConfigError::invalid(format!("{path}.pass"), "missing")),
        Some(p) if p.len() > 255 => return Err(ConfigError::invalid(format!("{path}.pass"), "longer than 255 bytes")),
        Some(p) => p,
    };
    let email = raw.email.filter(|e| !e.is_empty()).unwrap_or_else(|| username.clone());
    Ok(UserSpec {
        account: make(ProxyAccount { username: username.into(), password: password.into() }),
        email,
        level: raw.level.unwrap_or(user_level),
        quota: user_quota(raw.quota, raw.expiry, path)?,
    })
}

// === vmess ===

fn vmess(settings: Value, path: &str) -> Result<VmessInboundSpec, ConfigError> {
    let raw: RawVmessSettings = deserialize_at(settings, path)?;
    if raw.detour.as_ref().is_some_and(|d| !is_empty_value(d)) {
        return Err(ConfigError::unsupported(format!("{path}.detour"), "VMess detour (dynamic ports)"));
    }
    if let Some(d) = &raw.default {
        legacy_alter_id(d.alter_id, &format!("{path}.default.alterId"))?;
    }
    // Xray reads `users` and takes `clients` over it when both are there.
    let list = raw.clients.or(raw.users).unwrap_or_default();
    let clients = clients_of(list, path, "clients", "id", |c, p| vmess_user(c, p, false).map(|(u, _)| u))?;
    Ok(VmessInboundSpec { clients })
}

/// A VMess user (an inbound's client or an outbound's user): `id` as VLESS reads it, `alterId`
/// 0 only, `security` as Xray reads it (anything unknown is `auto`). With `outbound`, the
/// `AuthenticatedLength` experiment is returned too.
pub(super) fn vmess_user(raw: RawVmessClient, path: &str, outbound: bool) -> Result<(UserSpec, bool), ConfigError> {
    let id = match raw.id.as_deref() {
        None => return Err(ConfigError::invalid(format!("{path}.id"), "missing")),
        Some(s) => {
            parse_user_id(s).ok_or_else(|| ConfigError::invalid(format!("{path}.id"), format!("invalid UUID {s:?}")))?
        }
    };
    legacy_alter_id(raw.alter_id, &format!("{path}.alterId"))?;
    let security = vmess_security(raw.security.as_deref());
    let experiments = raw.experiments.unwrap_or_default();
    let authenticated_length = outbound && experiments.split('|').any(|e| e.trim() == "AuthenticatedLength");
    let user = UserSpec {
        account: Account::Vmess { id, security },
        email: raw.email.unwrap_or_default(),
        level: raw.level.unwrap_or(0),
        quota: user_quota(raw.quota, raw.expiry, path)?,
    };
    Ok((user, authenticated_length))
}

/// A `security` string as Xray's config reads it: unknown (or absent) is `auto`.
pub fn vmess_security(s: Option<&str>) -> VmessSecurity {
    VmessSecurity(
        s.and_then(shardray_wire::vmess::SecurityConfig::parse).unwrap_or(shardray_wire::vmess::SecurityConfig::Auto),
    )
}

/// Refuses an `alterId` above 0: the legacy MD5 handshake, which shardray does not serve.
fn legacy_alter_id(alter_id: Option<u32>, path: &str) -> Result<(), ConfigError> {
    match alter_id {
        Some(n) if shardray_wire::vmess::is_legacy_alter_id(n) => Err(ConfigError::unsupported_msg(
            path,
            format!("alterId {n} asks for the legacy (MD5) VMess handshake, which is not served: use 0 (AEAD)"),
        )),
        _ => Ok(()),
    }
}

/// A user id as upstream reads it: a UUID (32 hex digits, dashes optional where UUIDs have
/// them), or any other string of 1 to 30 bytes, which stands for the version-5 UUID of that
/// string under the all-zero namespace.
pub fn parse_user_id(s: &str) -> Option<Uuid> {
    match s.len() {
        1..=30 => Some(Uuid::new_v5(&Uuid::nil(), s.as_bytes())),
        32..=36 => Uuid::try_parse(s).ok(),
        _ => None,
    }
}

// === shadowsocks ===

/// A method name as Xray reads it (any ASCII case, its aliases); stream ciphers, `none` and the
/// methods this build lacks are refused naming the field.
pub fn shadowsocks_method(name: Option<&str>, path: &str) -> Result<Method, ConfigError> {
    let name = match name.map(str::trim) {
        None | Some("") => return Err(ConfigError::invalid(path, "missing")),
        Some(n) => n,
    };
    Method::parse(name).map_err(|e| match e {
        InvalidMethod::Unknown => ConfigError::invalid(path, format!("unknown method {name:?}")),
        e => ConfigError::unsupported_msg(path, format!("{name:?}: {e}")),
    })
}

/// A 2022 PSK for `method`, checked (base64 of the key's length).
fn shadowsocks_psk(method: Method, psk: Option<&str>, path: &str) -> Result<std::sync::Arc<str>, ConfigError> {
    let psk = match psk {
        None | Some("") => return Err(ConfigError::invalid(path, "missing")),
        Some(p) => p,
    };
    MasterKey::from_psk(method, psk).map_err(|e| ConfigError::invalid(path, format!("{e} (for {method})")))?;
    Ok(psk.into())
}

fn shadowsocks(settings: Value, path: &str) -> Result<ShadowsocksInboundSpec, ConfigError> {
    let raw: RawShadowsocksSettings = deserialize_at(settings, path)?;
    let udp = shadowsocks_networks(raw.network.as_ref(), &format!("{path}.network"))?;
    // Xray reads `users` and takes `clients` over it when both are there.
    let list = raw.clients.or(raw.users);
    let method_path = format!("{path}.method");
    let server_method = match raw.method.as_deref().map(str::trim) {
        None | Some("") if list.is_some() => None,
        m => Some(shadowsocks_method(m, &method_path)?),
    };
    match (server_method, list) {
        (Some(method), None) if method.is_2022() => {
            let key = shadowsocks_psk(method, raw.password.as_deref(), &format!("{path}.password"))?;
            let user = UserSpec {
                account: Account::Shadowsocks2022 { key },
                email: raw.email.unwrap_or_default(),
                level: raw.level.unwrap_or(0),
                quota: user_quota(raw.quota, raw.expiry, path)?,
            };
            Ok(ShadowsocksInboundSpec { method_2022: Some(method), server_psk: None, clients: vec![user], udp })
        }
        (Some(method), Some(list)) if method.is_2022() => {
            if !method.supports_identity_headers() {
                return Err(ConfigError::unsupported_msg(
                    method_path,
                    format!(
                        "{method} has no identity headers: several users need 2022-blake3-aes-128-gcm or -aes-256-gcm"
                    ),
                ));
            }
            let server_psk = shadowsocks_psk(method, raw.password.as_deref(), &format!("{path}.password"))?;
            let clients = clients_of(list, path, "clients", "password", |c: RawShadowsocksClient, cpath| {
                if c.address.as_ref().is_some_and(|a| !is_empty_value(a)) {
                    return Err(ConfigError::unsupported(format!("{cpath}.address"), "Shadowsocks 2022 relay"));
                }
                match c.method.as_deref().map(str::trim) {
                    None | Some("") => {}
                    Some(m) if Method::parse(m) == Ok(method) => {}
                    Some(m) => {
                        return Err(ConfigError::invalid(
                            format!("{cpath}.method"),
                            format!("{m:?}: users of a 2022 inbound take its method ({method}); leave it empty"),
                        ))
                    }
                }
                let key = shadowsocks_psk(method, c.password.as_deref(), &format!("{cpath}.password"))?;
                if key.as_ref() == server_psk.as_ref() {
                    return Err(ConfigError::invalid(
                        format!("{cpath}.password"),
                        "is the server's PSK (settings.password)",
                    ));
                }
                Ok(UserSpec {
                    account: Account::Shadowsocks2022 { key },
                    email: c.email.unwrap_or_default(),
                    level: c.level.unwrap_or(0),
                    quota: user_quota(c.quota, c.expiry, cpath)?,
                })
            })?;
            Ok(ShadowsocksInboundSpec { method_2022: Some(method), server_psk: Some(server_psk), clients, udp })
        }
        (Some(method), None) => {
            let password = match raw.password {
                None => return Err(ConfigError::invalid(format!("{path}.password"), "missing")),
                Some(p) if p.is_empty() => return Err(ConfigError::invalid(format!("{path}.password"), "empty")),
                Some(p) => p,
            };
            let user = UserSpec {
                account: Account::Shadowsocks { method, password: password.into() },
                email: raw.email.unwrap_or_default(),
                level: raw.level.unwrap_or(0),
                quota: user_quota(raw.quota, raw.expiry, path)?,
            };
            Ok(ShadowsocksInboundSpec { method_2022: None, server_psk: None, clients: vec![user], udp })
        }
        (fallback, list) => {
            let clients =
                clients_of(list.unwrap_or_default(), path, "clients", "password", |c: RawShadowsocksClient, cpath| {
                    if c.address.as_ref().is_some_and(|a| !is_empty_value(a)) {
                        return Err(ConfigError::invalid(
                            format!("{cpath}.address"),
                            "only a 2022 relay has user addresses",
                        ));
                    }
                    let method = match c.method.as_deref().map(str::trim) {
                        // A client without a method takes the inbound's, as panels write them.
                        None | Some("") if fallback.is_some() => fallback.expect("checked"),
                        m => shadowsocks_method(m, &format!("{cpath}.method"))?,
                    };
                    if method.is_2022() {
                        return Err(ConfigError::invalid(
                            format!("{cpath}.method"),
                            format!(
                            "{method} users need settings.method {method} and the server's PSK in settings.password"
                        ),
                        ));
                    }
                    let password = match c.password {
                        None => return Err(ConfigError::invalid(format!("{cpath}.password"), "missing")),
                        Some(p) if p.is_empty() => {
                            return Err(ConfigError::invalid(format!("{cpath}.password"), "empty"))
                        }
                        Some(p) => p,
                    };
                    Ok(UserSpec {
                        account: Account::Shadowsocks { method, password: password.into() },
                        email: c.email.unwrap_or_default(),
                        level: c.level.unwrap_or(0),
                        quota: user_quota(c.quota, c.expiry, cpath)?,
                    })
                })?;
            Ok(ShadowsocksInboundSpec { method_2022: None, server_psk: None, clients, udp })
        }
    }
}

/// `network` of a Shadowsocks inbound: whether UDP is named beside TCP; UDP alone is refused.
fn shadowsocks_networks(list: Option<&StringList>, path: &str) -> Result<bool, ConfigError> {
    let (mut tcp, mut udp) = (false, false);
    for item in list.map(|l| l.0.as_slice()).unwrap_or_default().iter().flat_map(|n| n.split(',')) {
        match item.trim().to_ascii_lowercase().as_str() {
            "" => {}
            "tcp" => tcp = true,
            "udp" => udp = true,
            other => {
                return Err(ConfigError::invalid(
                    path,
                    format!("unknown network {other:?} (expected \"tcp\", \"udp\" or \"tcp,udp\")"),
                ))
            }
        }
    }
    if udp && !tcp {
        return Err(ConfigError::unsupported(path, "Shadowsocks over UDP"));
    }
    Ok(udp)
}

fn fallback(raw: RawFallback, path: &str) -> Result<FallbackSpec, ConfigError> {
    let dest_path = format!("{path}.dest");
    let dest = match raw.dest.as_ref() {
        None | Some(Value::Null) => return Err(ConfigError::invalid(dest_path, "missing")),
        Some(v) => fallback_dest(v, &dest_path)?,
    };
    match raw.kind.as_deref().unwrap_or("") {
        "" => {}
        "tcp" if matches!(dest, FallbackDest::Tcp(_)) => {}
        "unix" if matches!(dest, FallbackDest::Unix(_)) => {}
        kind @ ("tcp" | "unix") => {
            return Err(ConfigError::invalid(format!("{path}.type"), format!("{kind:?} does not match dest")))
        }
        kind => {
            return Err(ConfigError::invalid(
                format!("{path}.type"),
                format!("unknown type {kind:?} (expected \"tcp\" or \"unix\")"),
            ))
        }
    }
    let xver = match raw.xver.unwrap_or(0) {
        v @ 0..=2 => v as u8,
        v => {
            return Err(ConfigError::invalid(
                format!("{path}.xver"),
                format!("PROXY protocol version {v} (expected 0, 1 or 2)"),
            ))
        }
    };
    let fb_path = raw.path.unwrap_or_default();
    if !fb_path.is_empty() && !fb_path.starts_with('/') {
        return Err(ConfigError::invalid(format!("{path}.path"), "must start with \"/\""));
    }
    Ok(FallbackSpec {
        name: raw.name.unwrap_or_default(),
        alpn: raw.alpn.unwrap_or_default(),
        path: fb_path,
        dest,
        xver,
    })
}

/// `dest`: a port on 127.0.0.1, `"host:port"`, or a Unix socket path (`/…` or abstract `@…`).
pub(super) fn fallback_dest(value: &Value, path: &str) -> Result<FallbackDest, ConfigError> {
    let local = |port: u16| FallbackDest::Tcp(Destination { addr: Address::Ip(Ipv4Addr::LOCALHOST.into()), port });
    match value {
        Value::Number(_) => Ok(local(parse_port(value, path)?)),
        Value::String(s) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(local(parse_port(value, path)?));
            }
            if s.starts_with('/') || s.starts_with('@') {
                return Ok(FallbackDest::Unix(PathBuf::from(s)));
            }
            match parse_host_port(s) {
                Some(dest) if dest.port != 0 => Ok(FallbackDest::Tcp(dest)),
                _ => {
                    Err(ConfigError::invalid(path, format!("{s:?} is not a port, \"host:port\" or a Unix socket path")))
                }
            }
        }
        other => Err(ConfigError::invalid(path, format!("expected a port or a string, got {}", value_text(other)))),
    }
}

// === dokodemo-door ===

fn dokodemo(settings: Value, path: &str) -> Result<DokodemoSpec, ConfigError> {
    let raw: RawDokodemoSettings = deserialize_at(settings, path)?;
    if raw.follow_redirect == Some(true) {
        return Err(ConfigError::unsupported(format!("{path}.followRedirect"), "followRedirect"));
    }
    if raw.port_map.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ConfigError::unsupported(format!("{path}.portMap"), "portMap"));
    }
    // Xray's older names win over the newer where both are given (infra/conf/dokodemo.go).
    let (network_key, networks) = match (raw.network, raw.allowed_network) {
        (Some(n), _) => ("network", n.0),
        (None, Some(n)) => ("allowedNetwork", n.0),
        (None, None) => ("network", Vec::new()),
    };
    let mut tcp = false;
    let mut udp = false;
    for item in networks.iter().flat_map(|n| n.split(',')) {
        match item.trim().to_ascii_lowercase().as_str() {
            "" => {}
            "tcp" => tcp = true,
            "udp" => udp = true,
            other => {
                return Err(ConfigError::invalid(
                    format!("{path}.{network_key}"),
                    format!("unknown network {other:?} (expected \"tcp\" or \"tcp,udp\")"),
                ))
            }
        }
    }
    // Xray's default is TCP alone.
    let network = if tcp || udp { NetworkSet { tcp, udp } } else { NetworkSet { tcp: true, udp: false } };
    let given = |s: &Option<String>| s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    let (addr_path, addr) = match (given(&raw.address), given(&raw.rewrite_address)) {
        (Some(a), _) => (format!("{path}.address"), a),
        (None, Some(a)) => (format!("{path}.rewriteAddress"), a),
        (None, None) => return Err(ConfigError::invalid(format!("{path}.address"), "missing (or rewriteAddress)")),
    };
    let addr =
        Address::parse(&addr).ok_or_else(|| ConfigError::invalid(&addr_path, format!("invalid address {addr:?}")))?;
    let is_given = |v: &Option<Value>| v.as_ref().is_some_and(|v| !is_empty_value(v));
    let (port_path, port) = match (is_given(&raw.port), is_given(&raw.rewrite_port)) {
        (true, _) => (format!("{path}.port"), raw.port),
        (false, true) => (format!("{path}.rewritePort"), raw.rewrite_port),
        (false, false) => return Err(ConfigError::invalid(format!("{path}.port"), "missing (or rewritePort)")),
    };
    let port = parse_port(port.as_ref().expect("given"), &port_path)?;
    Ok(DokodemoSpec { destination: Destination { addr, port }, user_level: raw.user_level.unwrap_or(0), network })
}
