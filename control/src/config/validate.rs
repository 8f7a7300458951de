//! Turns the raw config into `spec::Config`: top-level sections (log, api, stats, policy), the
//! checks that span sections, and the small parsers the section modules share.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use shardray_core::spec::{
    ApiListen, ApiRole, ApiSpec, ApiTls, ApiToken, CallLimit, Config, LevelPolicy, LogLevel, LogSpec, LogTarget,
    MetricsSpec, PolicySpec, SocketOptions, SystemPolicy, DEFAULT_BUFFER_SIZE, DEFAULT_MAX_USER_SERIES,
};
use shardray_wire::addr::{Address, Destination};

use super::error::ConfigError;
use super::raw::{
    RawApi, RawApiTls, RawApiToken, RawCallLimit, RawConfig, RawLevelPolicy, RawLog, RawMetrics, RawPolicy, RawRouting,
    RawSockopt, StringList,
};
use super::{dns, inbound, outbound, routing};

/// The smallest relay buffer a level gets (`bufferSize: 0` asks for as little as possible).
const MIN_BUFFER_SIZE: usize = 4 * 1024;
/// The largest relay buffer a level gets, per direction and connection.
const MAX_BUFFER_SIZE: usize = 4 * 1024 * 1024;

/// API services upstream defines and shardray answers.
const API_SERVICES: &[&str] =
    &["HandlerService", "LoggerService", "StatsService", "RoutingService", "ReflectionService"];

/// Validates a whole raw config.
pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    check_unserved_sections(&raw)?;
    let log = log_spec(raw.log.unwrap_or_default())?;
    let stats_enabled = raw.stats.is_some();

    let raw_policy = raw.policy.unwrap_or_default();
    let system_services = raw_policy.system.as_ref().and_then(|s| s.api.as_ref()).and_then(|a| a.services.clone());
    let policy = policy_spec(raw_policy)?;

    let api = match raw.api {
        Some(api) => Some(api_head(api, system_services)?),
        None if system_services.is_some() => {
            return Err(ConfigError::invalid(
                "policy.system.api",
                "API services are listed but there is no \"api\" section",
            ))
        }
        None => None,
    };
    let api_tag = api.as_ref().map(|a| a.tag.as_str());
    let metrics = raw.metrics.map(|value| metrics_head(value, raw.routing.as_ref())).transpose()?;
    let metrics_tags = metrics.as_ref().map(|m| m.inbound_tags.clone()).unwrap_or_default();
    let control_tags: Vec<&str> = api_tag.into_iter().chain(metrics.as_ref().map(|m| m.tag.as_str())).collect();

    // The API's inbound is the one tagged as the API (3x-ui's form), or one that a routing rule
    // sends to the API's tag (Marzban's: inbound "API_INBOUND", rule to outboundTag "API").
    let mut api_inbound_tags: Vec<String> = api_tag.map(str::to_owned).into_iter().collect();
    if let Some(tag) = api_tag {
        api_inbound_tags.extend(routed_to(raw.routing.as_ref(), tag));
    }
    let outbounds = outbound::outbounds(raw.outbounds, api_tag)?;
    if let Some(m) = &metrics {
        if let Some(i) = outbounds.iter().position(|o| o.tag == m.tag) {
            return Err(ConfigError::invalid(format!("outbounds[{i}].tag"), format!("{:?} is the metrics tag", m.tag)));
        }
    }
    let inbounds = inbound::inbounds(raw.inbounds, &api_inbound_tags, &metrics_tags)?;
    let mut notes = Vec::new();
    let routing = routing::routing(raw.routing, Some(&outbounds), &control_tags, &mut notes)?;
    let dns = dns::dns(raw.dns, &mut notes)?;

    let mut listens = inbounds.listens;
    let api = match api {
        None => None,
        Some(head) => {
            let listen = match (head.listen, inbounds.api_inbound) {
                (Some(listen), _) => {
                    if let ApiListen::Tcp(addr) = &listen {
                        listens.push(("api.listen".to_string(), *addr, TCP_ONLY));
                    }
                    listen
                }
                (None, Some((path, addr))) => {
                    if head.tokens.is_empty() && head.tls.is_none() {
                        check_loopback(addr.ip(), &path.replace(".port", ".listen"), "API")?;
                    }
                    listens.push((path, addr, TCP_ONLY));
                    ApiListen::Tcp(addr)
                }
                (None, None) => {
                    return Err(ConfigError::invalid(
                        "api",
                        format!(
                            "no listen address (set api.listen or add a dokodemo-door inbound \
                             tagged {:?})",
                            head.tag
                        ),
                    ))
                }
            };
            Some(ApiSpec {
                tag: head.tag,
                listen,
                services: head.services,
                tokens: head.tokens,
                socket_mode: head.socket_mode,
                tls: head.tls,
                call_limit: head.call_limit,
            })
        }
    };
    let metrics = match metrics {
        None => None,
        Some(head) => {
            let listen = match (head.listen, inbounds.metrics_inbound) {
                (Some(listen), _) => {
                    if let ApiListen::Tcp(addr) = &listen {
                        listens.push(("metrics.listen".to_string(), *addr, TCP_ONLY));
                    }
                    Some(listen)
                }
                (None, Some((path, addr))) => {
                    listens.push((path, addr, TCP_ONLY));
                    Some(ApiListen::Tcp(addr))
                }
                (None, None) => {
                    // Xray starts such a metrics outbound all the same, unreachable.
                    notes.push(format!(
                        "metrics.tag: no dokodemo-door inbound is routed to {:?} and metrics.listen is not \
                         set, so metrics are not served",
                        head.tag
                    ));
                    None
                }
            };
            listen.map(|listen| MetricsSpec {
                tag: head.tag,
                listen,
                user_series: head.user_series,
                max_user_series: head.max_user_series,
            })
        }
    };
    check_listen_conflicts(&listens)?;

    Ok(Config {
        log,
        api,
        metrics,
        stats_enabled,
        policy,
        inbounds: inbounds.specs,
        outbounds,
        routing,
        dns,
        notes,
        ignored_keys: Vec::new(),
    })
}

/// `dns`, `transport` and the like: refused unless absent or `{}`.
fn check_unserved_sections(raw: &RawConfig) -> Result<(), ConfigError> {
    let sections = [
        ("transport", &raw.transport),
        ("reverse", &raw.reverse),
        ("fakedns", &raw.fakedns),
        ("observatory", &raw.observatory),
        ("burstObservatory", &raw.burst_observatory),
    ];
    for (key, value) in sections {
        if let Some(value) = value {
            if !is_empty_value(value) {
                return Err(ConfigError::unsupported_msg(key, "not supported yet"));
            }
        }
    }
    Ok(())
}

// === log ===

fn log_spec(raw: RawLog) -> Result<LogSpec, ConfigError> {
    let level = match raw.loglevel.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("warning") | Some("warn") => LogLevel::Warning,
        Some("debug") => LogLevel::Debug,
        Some("info") => LogLevel::Info,
        Some("error") => LogLevel::Error,
        Some("none") => LogLevel::None,
        Some(other) => {
            return Err(ConfigError::invalid(
                "log.loglevel",
                format!("unknown level {other:?} (expected debug, info, warning, error or none)"),
            ))
        }
    };
    Ok(LogSpec {
        level,
        access: log_target(raw.access.as_deref()),
        error: log_target(raw.error.as_deref()),
        dns_log: raw.dns_log.unwrap_or(false),
    })
}

fn log_target(value: Option<&str>) -> LogTarget {
    match value.unwrap_or("") {
        "" => LogTarget::Stdout,
        s if s.eq_ignore_ascii_case("none") => LogTarget::Discard,
        s => LogTarget::File(PathBuf::from(s)),
    }
}

// === policy ===

fn policy_spec(raw: RawPolicy) -> Result<PolicySpec, ConfigError> {
    let mut levels = BTreeMap::new();
    for (key, level) in raw.levels.unwrap_or_default() {
        let path = format!("policy.levels.{key}");
        let number: u32 = key
            .trim()
            .parse()
            .map_err(|_| ConfigError::invalid(&path, format!("level {key:?} is not a non-negative integer")))?;
        if levels.insert(number, level_policy(level, &path)?).is_some() {
            return Err(ConfigError::invalid(path, format!("level {number} is given twice")));
        }
    }
    let system = raw.system.unwrap_or_default();
    Ok(PolicySpec {
        levels,
        system: SystemPolicy {
            stats_inbound_uplink: system.stats_inbound_uplink.unwrap_or(false),
            stats_inbound_downlink: system.stats_inbound_downlink.unwrap_or(false),
            stats_outbound_uplink: system.stats_outbound_uplink.unwrap_or(false),
            stats_outbound_downlink: system.stats_outbound_downlink.unwrap_or(false),
            max_connections: system.max_connections.unwrap_or(0),
            max_inbound_connections: system.max_inbound_connections.unwrap_or(0),
            max_handshakes_per_source: system
                .max_handshakes_per_source
                .unwrap_or(SystemPolicy::DEFAULT_MAX_HANDSHAKES_PER_SOURCE),
            trusted_hops: super::routing::ip_list(system.trusted_hops, "policy.system.trustedHops")?,
        },
    })
}

fn level_policy(raw: RawLevelPolicy, path: &str) -> Result<LevelPolicy, ConfigError> {
    let rate = |value: &Option<serde_json::Value>, key: &str| match value {
        None => Ok(0),
        Some(v) => super::units::parse_rate(v).map_err(|e| ConfigError::invalid(format!("{path}.{key}"), e)),
    };
    let defaults = LevelPolicy::default();
    let secs = |value: Option<u32>, default: Duration| value.map_or(default, |s| Duration::from_secs(u64::from(s)));
    let buffer_size = match raw.buffer_size {
        None => defaults.buffer_size,
        // Upstream reads a negative size as "its default".
        Some(kib) if kib < 0 => DEFAULT_BUFFER_SIZE,
        Some(kib) => {
            usize::try_from(kib).unwrap_or(usize::MAX).saturating_mul(1024).clamp(MIN_BUFFER_SIZE, MAX_BUFFER_SIZE)
        }
    };
    Ok(LevelPolicy {
        handshake: secs(raw.handshake, defaults.handshake),
        conn_idle: secs(raw.conn_idle, defaults.conn_idle),
        uplink_only: secs(raw.uplink_only, defaults.uplink_only),
        downlink_only: secs(raw.downlink_only, defaults.downlink_only),
        stats_user_uplink: raw.stats_user_uplink.unwrap_or(false),
        stats_user_downlink: raw.stats_user_downlink.unwrap_or(false),
        stats_user_online: raw.stats_user_online.unwrap_or(false),
        buffer_size,
        uplink_rate: rate(&raw.uplink_rate, "uplinkRate")?,
        downlink_rate: rate(&raw.downlink_rate, "downlinkRate")?,
        max_connections: raw.max_connections.unwrap_or(0),
        max_ips: raw.max_ips.unwrap_or(0),
    })
}

// === api ===

/// The `api` section before the inbounds are known.
struct ApiHead {
    tag: String,
    listen: Option<ApiListen>,
    services: Vec<String>,
    tokens: Vec<ApiToken>,
    socket_mode: u32,
    tls: Option<ApiTls>,
    call_limit: Option<CallLimit>,
}

fn api_head(raw: RawApi, system_services: Option<Vec<String>>) -> Result<ApiHead, ConfigError> {
    let tag = raw.tag.filter(|t| !t.is_empty());
    let inbound_tag = raw.inbound_tag.filter(|t| !t.is_empty());
    let tag = match (tag, inbound_tag) {
        (Some(tag), Some(other)) if tag != other => {
            return Err(ConfigError::invalid("api.inboundTag", format!("{other:?} differs from api.tag {tag:?}")))
        }
        (Some(tag), _) | (None, Some(tag)) => tag,
        (None, None) => return Err(ConfigError::invalid("api.tag", "missing")),
    };
    let (services, services_path) = match (raw.services, system_services) {
        (Some(list), _) => (list, "api.services"),
        (None, Some(list)) => (list, "policy.system.api.services"),
        (None, None) => (Vec::new(), "api.services"),
    };
    let mut checked: Vec<String> = Vec::new();
    for (i, name) in services.into_iter().enumerate() {
        let path = format!("{services_path}[{i}]");
        if name == "ObservatoryService" {
            return Err(ConfigError::unsupported(path, "ObservatoryService"));
        }
        if !API_SERVICES.contains(&name.as_str()) {
            return Err(ConfigError::invalid(
                path,
                format!("unknown API service {name:?} (expected one of {})", API_SERVICES.join(", ")),
            ));
        }
        if !checked.contains(&name) {
            checked.push(name);
        }
    }
    let tokens = api_tokens(raw.tokens.unwrap_or_default())?;
    let tls = raw.tls.map(api_tls).transpose()?;
    let listen = match raw.listen.as_deref() {
        None | Some("") => None,
        Some(s) => Some(api_listen(s, !tokens.is_empty() || tls.is_some())?),
    };
    if tls.is_some() && matches!(listen, Some(ApiListen::Unix(_))) {
        return Err(ConfigError::invalid("api.tls", "a Unix-socket API has no TLS: listen on TCP, or drop api.tls"));
    }
    let call_limit = api_call_limit(raw.call_limit)?;
    let socket_mode = match raw.socket_mode.as_deref() {
        None | Some("") => 0o600,
        Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o777 && mode & 0o600 == 0o600 => mode,
            _ => {
                return Err(ConfigError::invalid(
                    "api.socketMode",
                    format!("{m:?} is not octal permission bits with the owner's read and write (\"0600\", \"0660\")"),
                ))
            }
        },
    };
    Ok(ApiHead { tag, listen, services: checked, tokens, socket_mode, tls, call_limit })
}

/// A role's name in `api.tokens` and `api.tls`.
fn api_role(name: &str, path: &str) -> Result<ApiRole, ConfigError> {
    match name {
        "reader" => Ok(ApiRole::Reader),
        "operator" => Ok(ApiRole::Operator),
        "admin" => Ok(ApiRole::Admin),
        other => Err(ConfigError::invalid(
            path,
            format!("unknown role {other:?} (expected \"reader\", \"operator\" or \"admin\")"),
        )),
    }
}

/// `api.tls`: the three files (read and checked now) and the roles of the subjects.
fn api_tls(raw: RawApiTls) -> Result<ApiTls, ConfigError> {
    let file = |f: Option<PathBuf>, name: &str| {
        f.filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| ConfigError::invalid(format!("api.tls.{name}"), "missing"))
    };
    let mut clients: Vec<(String, ApiRole)> = Vec::new();
    for (i, c) in raw.clients.unwrap_or_default().into_iter().enumerate() {
        let path = format!("api.tls.clients[{i}]");
        let subject = c
            .subject
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ConfigError::invalid(format!("{path}.subject"), "missing (the client certificate's CN)"))?;
        if clients.iter().any(|(s, _)| *s == subject) {
            return Err(ConfigError::invalid(format!("{path}.subject"), format!("{subject:?} is named twice")));
        }
        let role = api_role(c.role.as_deref().unwrap_or("reader"), &format!("{path}.role"))?;
        clients.push((subject, role));
    }
    let default_role = match raw.default_role.as_deref() {
        None | Some("") | Some("none") => None,
        Some(r) => Some(api_role(r, "api.tls.defaultRole")?),
    };
    let tls = ApiTls {
        certificate_file: file(raw.certificate_file, "certificateFile")?,
        key_file: file(raw.key_file, "keyFile")?,
        client_ca_file: file(raw.client_ca_file, "clientCaFile")?,
        clients,
        default_role,
    };
    crate::api::tls::server_config(&tls).map_err(|(path, reason)| ConfigError::invalid(path, reason))?;
    Ok(tls)
}

/// `api.callLimit`: generous by default (a panel's bulk use never meets it), off with rate 0.
fn api_call_limit(raw: Option<RawCallLimit>) -> Result<Option<CallLimit>, ConfigError> {
    let raw = raw.unwrap_or_default();
    let rate = raw.rate.unwrap_or(DEFAULT_CALL_RATE);
    let burst = raw.burst.unwrap_or(if raw.rate.is_some() { rate.max(1.0) * 5.0 } else { DEFAULT_CALL_BURST });
    for (value, name) in [(rate, "rate"), (burst, "burst")] {
        if !value.is_finite() || value < 0.0 {
            return Err(ConfigError::invalid(format!("api.callLimit.{name}"), "a number of calls, 0 or more"));
        }
    }
    if rate == 0.0 {
        return Ok(None);
    }
    if burst < 1.0 {
        return Err(ConfigError::invalid("api.callLimit.burst", "at least 1 when rate is set"));
    }
    Ok(Some(CallLimit { rate, burst }))
}

/// Calls per second and per caller by default, and the burst.
const DEFAULT_CALL_RATE: f64 = 1000.0;
const DEFAULT_CALL_BURST: f64 = 5000.0;

/// The shortest secret `api.tokens` takes: 128 bits in hex, or as much in another alphabet.
const MIN_TOKEN_LEN: usize = 32;

/// `api.tokens`: each a `token` or a `tokenFile` (read now, trimmed), a role, a unique name.
fn api_tokens(raw: Vec<RawApiToken>) -> Result<Vec<ApiToken>, ConfigError> {
    let mut tokens: Vec<ApiToken> = Vec::new();
    for (i, t) in raw.into_iter().enumerate() {
        let path = format!("api.tokens[{i}]");
        let secret = match (t.token, t.token_file) {
            (Some(token), None) => token,
            (None, Some(file)) => std::fs::read_to_string(&file)
                .map_err(|e| ConfigError::invalid(format!("{path}.tokenFile"), format!("{}: {e}", file.display())))?
                .trim()
                .to_owned(),
            (Some(_), Some(_)) => return Err(ConfigError::invalid(&path, "both token and tokenFile are set")),
            (None, None) => return Err(ConfigError::invalid(&path, "token or tokenFile is missing")),
        };
        if secret.len() < MIN_TOKEN_LEN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                format!("{path}.token"),
                format!(
                    "a token is at least {MIN_TOKEN_LEN} printable characters without spaces (openssl rand -hex 32)"
                ),
            ));
        }
        let role = api_role(t.role.as_deref().unwrap_or("reader"), &format!("{path}.role"))?;
        let name = t.name.filter(|n| !n.is_empty()).unwrap_or_else(|| format!("token{i}"));
        if tokens.iter().any(|o| o.name == name) {
            return Err(ConfigError::invalid(format!("{path}.name"), format!("{name:?} is named twice")));
        }
        if tokens.iter().any(|o| o.secret == secret) {
            return Err(ConfigError::invalid(format!("{path}.token"), "the same secret as another token"));
        }
        tokens.push(ApiToken { name, secret, role });
    }
    Ok(tokens)
}

fn api_listen(s: &str, authenticated: bool) -> Result<ApiListen, ConfigError> {
    listen_at(s, "api.listen", "API", authenticated)
}

/// A listen address at `path` for `who` (the API, the metrics endpoint): loopback or a Unix
/// socket.
fn listen_at(s: &str, path: &str, who: &str, authenticated: bool) -> Result<ApiListen, ConfigError> {
    if s.starts_with('@') {
        // An abstract socket has no file, so no mode can keep other local users out of it.
        return Err(ConfigError::invalid(
            path,
            format!("{s:?} names an abstract socket, which any local process may reach; give the {who} a socket path (\"/run/shardray/api.sock\") instead"),
        ));
    }
    if s.starts_with('/') {
        return Ok(ApiListen::Unix(PathBuf::from(s)));
    }
    let bad = || ConfigError::invalid(path, format!("{s:?} is neither \"ip:port\" nor a Unix socket path"));
    let dest = parse_host_port(s).ok_or_else(bad)?;
    let ip = match &dest.addr {
        Address::Ip(ip) => *ip,
        Address::Domain(d) if d.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Address::Domain(_) => return Err(bad()),
    };
    if !authenticated {
        check_loopback(ip, path, who)?;
    }
    Ok(ApiListen::Tcp(SocketAddr::new(ip, dest.port)))
}

/// The metrics endpoint has no authentication, nor has the API without `api.tokens`
/// (`who`): over TCP they listen on loopback only.
pub(super) fn check_loopback(ip: IpAddr, path: &str, who: &str) -> Result<(), ConfigError> {
    if ip.is_loopback() {
        Ok(())
    } else if who == "API" {
        Err(ConfigError::invalid(
            path,
            format!(
                "the API listens on loopback or a Unix socket only, not on {ip}, unless api.tokens \
                 or api.tls names its callers"
            ),
        ))
    } else {
        Err(ConfigError::invalid(path, format!("the {who} listens on loopback or a Unix socket only, not on {ip}")))
    }
}

// === metrics ===

/// The `metrics` section before the inbounds are known.
struct MetricsHead {
    tag: String,
    listen: Option<ApiListen>,
    /// The inbounds that routing sends to the metrics outbound (Xray's form).
    inbound_tags: Vec<String>,
    user_series: bool,
    max_user_series: usize,
}

/// Reads `metrics` as Xray does (a tag, a listen address, or both; `Metrics` is the tag when
/// only `listen` is set), with our `userSeries` and `maxUserSeries`.
/// The inbound tags of the routing rules that send to `outbound_tag` (how Xray wires its API
/// and metrics inbounds to their handlers).
fn routed_to(routing: Option<&RawRouting>, outbound_tag: &str) -> Vec<String> {
    let rules = routing.and_then(|r| r.rules.as_deref()).unwrap_or_default();
    rules
        .iter()
        .filter(|rule| rule.outbound_tag.as_deref() == Some(outbound_tag))
        .flat_map(|rule| rule.inbound_tag.iter().flat_map(|list| list.0.iter().cloned()))
        .collect()
}

fn metrics_head(value: Value, routing: Option<&RawRouting>) -> Result<MetricsHead, ConfigError> {
    let raw: RawMetrics = deserialize_at(value, "metrics")?;
    let listen = match raw.listen.as_deref() {
        None | Some("") => None,
        Some(s) => Some(listen_at(s, "metrics.listen", "metrics endpoint", false)?),
    };
    let tag = match raw.tag.filter(|t| !t.is_empty()) {
        Some(tag) => tag,
        None if listen.is_some() => "Metrics".to_string(),
        None => return Err(ConfigError::invalid("metrics", "Metrics must have a tag or listen address.")),
    };
    let inbound_tags = routed_to(routing, &tag);
    let max_user_series =
        raw.max_user_series.map_or(DEFAULT_MAX_USER_SERIES, |n| usize::try_from(n).unwrap_or(usize::MAX));
    Ok(MetricsHead { tag, listen, inbound_tags, user_series: raw.user_series.unwrap_or(false), max_user_series })
}

// === checks across sections ===

/// Two listeners on the same port whose addresses overlap cannot both bind.
/// What the API and the metrics endpoint listen on.
const TCP_ONLY: shardray_core::spec::NetworkSet = shardray_core::spec::NetworkSet { tcp: true, udp: false };

/// Two listeners clash on one port and overlapping addresses only on a network they share:
/// a UDP-only dokodemo-door may sit on the API's TCP port, as in Xray.
fn check_listen_conflicts(
    listens: &[(String, SocketAddr, shardray_core::spec::NetworkSet)],
) -> Result<(), ConfigError> {
    for (j, (path, addr, nets)) in listens.iter().enumerate() {
        if addr.port() == 0 {
            continue;
        }
        for (earlier_path, earlier, earlier_nets) in &listens[..j] {
            let shared = (nets.tcp && earlier_nets.tcp) || (nets.udp && earlier_nets.udp);
            if shared && earlier.port() == addr.port() && ips_overlap(earlier.ip(), addr.ip()) {
                return Err(ConfigError::invalid(
                    path.clone(),
                    format!("{addr} is already taken by {earlier_path} ({earlier})"),
                ));
            }
        }
    }
    Ok(())
}

/// Whether binding both addresses on one port would clash (a wildcard clashes with all).
fn ips_overlap(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

// === shared parsers ===

thread_local! {
    /// Unknown keys ignored while a config loads (`None`: not loading a config, unknown keys
    /// are errors, as for an inbound the API adds). See [`collect_ignored`].
    static IGNORED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Runs `load` with unknown keys ignored, as Xray's decoder ignores them, and returns what it
/// gave with a warning for each key ignored (path and, when one is close, the key meant).
pub(super) fn collect_ignored<T>(load: impl FnOnce() -> T) -> (T, Vec<String>) {
    let outer = IGNORED.with(|i| i.borrow_mut().replace(Vec::new()));
    let result = load();
    let ignored = IGNORED.with(|i| std::mem::replace(&mut *i.borrow_mut(), outer)).unwrap_or_default();
    (result, ignored)
}

/// Deserializes a raw value whose JSON path is `path`, naming the failing field's full path.
/// While a config loads, an unknown key is removed (with the same key in every other element
/// of its array, so a typo repeated over many clients costs one retry) and noted, and the
/// value is read again.
pub(super) fn deserialize_at<T: DeserializeOwned>(mut value: Value, path: &str) -> Result<T, ConfigError> {
    loop {
        let err = match serde_path_to_error::deserialize(&value) {
            Ok(t) => return Ok(t),
            Err(err) => err,
        };
        let inner = err.path().to_string();
        let joined = join_path(path, if inner == "." { "" } else { &inner });
        let lenient = IGNORED.with(|i| i.borrow().is_some());
        if lenient {
            if let Some((key, expected)) = unknown_key(err.inner()) {
                let segments: Vec<_> = err.path().iter().cloned().collect();
                let others = remove_key(&mut value, &segments, &key);
                if others > 0 {
                    let named = if joined.ends_with(&key) { joined } else { join_path(&joined, &key) };
                    let mut warning = format!("{named}: unknown key ignored");
                    if let Some(meant) = closest(&key, &expected) {
                        warning.push_str(&format!(" (did you mean {meant:?}?)"));
                    }
                    if others > 1 {
                        warning.push_str(&format!(" (also in {} more elements of its list)", others - 1));
                    }
                    IGNORED.with(|i| i.borrow_mut().as_mut().map(|w| w.push(warning)));
                    continue;
                }
            }
        }
        return Err(serde_error(joined, err.inner()));
    }
}

/// The key an "unknown field" error names, and the keys it says were expected.
fn unknown_key(err: &serde_json::Error) -> Option<(String, Vec<String>)> {
    let text = err.to_string();
    let rest = text.strip_prefix("unknown field `")?;
    let (key, tail) = rest.split_once('`')?;
    let expected = tail.split('`').skip(1).step_by(2).map(str::to_owned).collect();
    Some((key.to_owned(), expected))
}

/// Removes `key` from the object at `segments` (the error's path, which may end with the key
/// itself) and from the objects at the same place in every other element of the nearest list
/// on the way; returns how many objects lost it.
fn remove_key(value: &mut Value, segments: &[serde_path_to_error::Segment], key: &str) -> usize {
    use serde_path_to_error::Segment;
    let segments = match segments.last() {
        Some(Segment::Map { key: last }) if last == key => &segments[..segments.len() - 1],
        _ => segments,
    };
    // The nearest list on the way: every element of it at the same place.
    let last_list = segments.iter().rposition(|s| matches!(s, Segment::Seq { .. }));
    let (to_list, in_element) = match last_list {
        Some(i) => (&segments[..i], &segments[i + 1..]),
        None => (segments, &[][..]),
    };
    let Some(target) = walk(value, to_list) else { return 0 };
    let mut removed = 0;
    let mut remove_from = |v: &mut Value| {
        if let Some(obj) = walk(v, in_element).and_then(Value::as_object_mut) {
            removed += usize::from(obj.remove(key).is_some());
        }
    };
    match (last_list, target) {
        (Some(_), Value::Array(items)) => items.iter_mut().for_each(&mut remove_from),
        (None, v) => remove_from(v),
        _ => {}
    }
    removed
}

/// The value at `segments` inside `value`.
fn walk<'v>(mut value: &'v mut Value, segments: &[serde_path_to_error::Segment]) -> Option<&'v mut Value> {
    use serde_path_to_error::Segment;
    for s in segments {
        value = match s {
            Segment::Seq { index } => value.get_mut(*index)?,
            Segment::Map { key } => value.get_mut(key.as_str())?,
            Segment::Enum { .. } | Segment::Unknown => return None,
        };
    }
    Some(value)
}

/// The expected key closest to a misspelt one, if any is close enough to be meant.
fn closest<'a>(key: &str, expected: &'a [String]) -> Option<&'a str> {
    let folded = key.to_ascii_lowercase();
    expected
        .iter()
        .map(|e| (strsim::damerau_levenshtein(&folded, &e.to_ascii_lowercase()), e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 4) && *d < e.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e.as_str())
}

/// Turns a serde error at `path` into a `ConfigError`, with an unknown or missing field's name
/// at the end of the path.
pub(super) fn serde_error(path: String, err: &serde_json::Error) -> ConfigError {
    let text = err.to_string();
    if let Some(rest) = text.strip_prefix("unknown field `") {
        if let Some((field, tail)) = rest.split_once('`') {
            let hint = tail.trim_start_matches(',').trim();
            let message = if hint.is_empty() || hint == "there are no fields" {
                "unknown field".to_string()
            } else {
                format!("unknown field ({hint})")
            };
            // serde_path_to_error already puts the unknown key last in the path.
            let named = path == field || path.ends_with(&format!(".{field}"));
            let path = if named { path } else { join_path(&path, field) };
            return ConfigError::invalid(path, message);
        }
    }
    if let Some(rest) = text.strip_prefix("missing field `") {
        if let Some((field, _)) = rest.split_once('`') {
            return ConfigError::invalid(join_path(&path, field), "missing");
        }
    }
    ConfigError::invalid(path, text)
}

/// `a` + `b` as a JSON path: `a.b`, or `a[0]` when `b` is an index.
pub(super) fn join_path(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (_, true) => a.to_string(),
        (true, false) => b.to_string(),
        (false, false) if b.starts_with('[') => format!("{a}{b}"),
        (false, false) => format!("{a}.{b}"),
    }
}

/// Absent-like: `null`, `{}`, `[]`, `""`, `false` or `0`.
pub(super) fn is_empty_value(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// A port given as a number or a numeric string (`443`, `"443"`), 1 to 65535.
pub(super) fn parse_port(value: &Value, path: &str) -> Result<u16, ConfigError> {
    let port = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match port {
        Some(p @ 1..=65535) => Ok(p as u16),
        _ => Err(ConfigError::invalid(path, format!("invalid port {} (expected 1 to 65535)", value_text(value)))),
    }
}

/// A value as it is written in JSON, for messages.
pub(super) fn value_text(value: &Value) -> String {
    value.to_string()
}

/// `host:port` with an IP (IPv6 in brackets) or a domain.
pub(super) fn parse_host_port(s: &str) -> Option<Destination> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    if host.is_empty() {
        return None;
    }
    let addr = Address::parse(host)?;
    Some(Destination { addr, port })
}

/// `streamSettings.sockopt`: the options shardray sets, each checked; a known option it does
/// not serve yet is refused by name when it asks for anything.
pub(super) fn sockopt(raw: RawSockopt, path: &str) -> Result<SocketOptions, ConfigError> {
    let unserved = [
        ("tproxy", raw.tproxy.as_deref().is_some_and(|t| !t.is_empty() && !t.eq_ignore_ascii_case("off"))),
        (
            "domainStrategy",
            raw.domain_strategy.as_deref().is_some_and(|d| !d.is_empty() && !d.eq_ignore_ascii_case("asis")),
        ),
        ("dialerProxy", raw.dialer_proxy.as_deref().is_some_and(|d| !d.is_empty())),
        ("penetrate", raw.penetrate == Some(true)),
        ("tcpMptcp", raw.tcp_mptcp == Some(true)),
        ("customSockopt", raw.custom_sockopt.as_ref().is_some_and(|v| !is_empty_value(v))),
        (
            "addressPortStrategy",
            raw.address_port_strategy.as_deref().is_some_and(|a| !a.is_empty() && !a.eq_ignore_ascii_case("none")),
        ),
        ("happyEyeballs", raw.happy_eyeballs.as_ref().is_some_and(|v| !is_empty_value(v))),
    ];
    if let Some((field, _)) = unserved.iter().find(|(_, set)| *set) {
        return Err(ConfigError::unsupported(format!("{path}.{field}"), format!("sockopt.{field}")));
    }
    // Xray: `true` is a queue of 256, `false` turns TFO off, a number is the queue length.
    let tcp_fast_open = match raw.tcp_fast_open {
        None | Some(Value::Null) => None,
        Some(Value::Bool(on)) => Some(if on { 256 } else { 0 }),
        Some(Value::Number(n)) => Some(n.as_u64().map_or(0, |n| n.min(u64::from(u32::MAX)) as u32)),
        Some(other) => {
            return Err(ConfigError::invalid(
                format!("{path}.tcpFastOpen"),
                format!("expected true, false or a queue length, not {}", value_text(&other)),
            ))
        }
    };
    // Zero or negative: the kernel's default, as Xray leaves it.
    let positive = |v: Option<i64>| v.filter(|&v| v > 0).map(|v| v.min(i64::from(u32::MAX)) as u32);
    let congestion = raw.tcp_congestion.filter(|c| !c.is_empty());
    if let Some(c) = &congestion {
        if c.len() > 15 || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ConfigError::invalid(format!("{path}.tcpCongestion"), format!("invalid algorithm name {c:?}")));
        }
    }
    Ok(SocketOptions {
        tcp_fast_open,
        mark: raw.mark.unwrap_or(0),
        keep_alive_idle: positive(raw.tcp_keep_alive_idle),
        keep_alive_interval: positive(raw.tcp_keep_alive_interval),
        congestion,
        user_timeout_ms: positive(raw.tcp_user_timeout),
        window_clamp: positive(raw.tcp_window_clamp),
        max_segment: positive(raw.tcp_max_seg),
        v6_only: raw.v6only.unwrap_or(false),
        accept_proxy_protocol: raw.accept_proxy_protocol.unwrap_or(false),
        interface: raw.interface.filter(|i| !i.is_empty()),
        trusted_x_forwarded_for: trusted_headers(raw.trusted_x_forwarded_for, &format!("{path}.trustedXForwardedFor"))?,
    })
}

/// `trustedXForwardedFor`: header names, each a valid HTTP header name.
fn trusted_headers(raw: Option<StringList>, path: &str) -> Result<Vec<String>, ConfigError> {
    let names = raw.map(|StringList(l)| l).unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(ConfigError::invalid(format!("{path}[{i}]"), format!("{name:?} is not an HTTP header name")));
        }
    }
    Ok(names)
}
