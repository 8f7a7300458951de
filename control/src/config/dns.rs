//! The `dns` object (Xray's `infra/conf/dns.go`, field for field) and the `dns` outbound's
//! settings, validated into `spec::DnsSpec` and `spec::DnsOutboundSpec`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use shardray_core::spec::{
    DnsAddress, DnsNetwork, DnsOutboundSpec, DnsServerSpec, DnsSpec, DomainMatcher, HostAnswer, HostMapping,
    NonIpQuery, QueryStrategy,
};
use shardray_wire::addr::{Address, Destination};

use super::error::ConfigError;
use super::raw::StringList;
use super::routing::{domain_matchers, ip_list};
use super::validate::{deserialize_at, is_empty_value, parse_port};

/// Xray's per-server timeout when `timeoutMs` is not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(4);

/// `dns`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDns {
    servers: Option<Vec<Value>>,
    hosts: Option<BTreeMap<String, Value>>,
    client_ip: Option<String>,
    tag: Option<String>,
    query_strategy: Option<String>,
    disable_cache: Option<bool>,
    disable_fallback: Option<bool>,
    disable_fallback_if_match: Option<bool>,
    // Newer Xray's switches: refused by name when they ask for anything.
    serve_stale: Option<bool>,
    serve_expired_ttl: Option<Value>,
    enable_parallel_query: Option<bool>,
    use_system_hosts: Option<bool>,
}

/// One of `dns.servers` in its object form.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNameServer {
    address: Option<String>,
    client_ip: Option<String>,
    port: Option<Value>,
    skip_fallback: Option<bool>,
    domains: Option<Vec<String>>,
    #[serde(rename = "expectedIPs")]
    expected_ips: Option<StringList>,
    #[serde(rename = "expectIPs")]
    expect_ips: Option<StringList>,
    #[serde(rename = "unexpectedIPs")]
    unexpected_ips: Option<StringList>,
    query_strategy: Option<String>,
    tag: Option<String>,
    timeout_ms: Option<u64>,
    disable_cache: Option<bool>,
    final_query: Option<bool>,
}

/// `settings` of a `dns` outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDnsOutbound {
    network: Option<String>,
    address: Option<String>,
    port: Option<Value>,
    user_level: Option<u32>,
    #[serde(rename = "nonIPQuery")]
    non_ip_query: Option<String>,
    block_types: Option<Vec<i64>>,
    rules: Option<Value>,
}

/// The `dns` object; `None` when it is absent or empty (the system resolver, as without one).
/// `dns`; what is read differently from how it is written (an unknown `queryStrategy`) goes
/// to `notes`.
pub(super) fn dns(value: Option<Value>, notes: &mut Vec<String>) -> Result<Option<DnsSpec>, ConfigError> {
    let Some(value) = value.filter(|v| !is_empty_value(v)) else { return Ok(None) };
    let raw: RawDns = deserialize_at(value, "dns")?;
    if raw.client_ip.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ConfigError::unsupported("dns.clientIp", "clientIp (EDNS client subnet)"));
    }
    let unserved = [
        ("serveStale", raw.serve_stale == Some(true)),
        ("serveExpiredTTL", raw.serve_expired_ttl.as_ref().is_some_and(|v| !is_empty_value(v) && v != &Value::from(0))),
        ("enableParallelQuery", raw.enable_parallel_query == Some(true)),
        ("useSystemHosts", raw.use_system_hosts == Some(true)),
    ];
    if let Some((key, _)) = unserved.iter().find(|(_, on)| *on) {
        return Err(ConfigError::unsupported(format!("dns.{key}"), key));
    }
    let query_strategy = query_strategy(raw.query_strategy.as_deref(), "dns.queryStrategy", notes)?.unwrap_or_default();
    let mut hosts = Vec::new();
    for (key, answer) in raw.hosts.unwrap_or_default() {
        let path = format!("dns.hosts.{key}");
        let answer = host_answer(&answer, &path)?;
        for domain in host_key(&key, &path)? {
            hosts.push(HostMapping { domain, answer: answer.clone() });
        }
    }
    let mut servers = Vec::new();
    for (i, server) in raw.servers.unwrap_or_default().into_iter().enumerate() {
        servers.push(name_server(server, &format!("dns.servers[{i}]"), notes)?);
    }
    Ok(Some(DnsSpec {
        hosts,
        servers,
        query_strategy,
        disable_cache: raw.disable_cache.unwrap_or(false),
        disable_fallback: raw.disable_fallback.unwrap_or(false),
        disable_fallback_if_match: raw.disable_fallback_if_match.unwrap_or(false),
        tag: raw.tag.filter(|t| !t.is_empty()),
    }))
}

/// A `hosts` key: prefixed as in routing rules, but a plain name matches only itself.
fn host_key(key: &str, path: &str) -> Result<Vec<DomainMatcher>, ConfigError> {
    let prefixed = key
        .split_once(':')
        .is_some_and(|(p, _)| matches!(p, "full" | "domain" | "keyword" | "regexp" | "geosite" | "ext" | "dotless"));
    if prefixed {
        let mut out = Vec::new();
        domain_matchers(key, path, &mut out)?;
        return Ok(out);
    }
    if key.is_empty() {
        return Err(ConfigError::invalid(path, "empty name"));
    }
    Ok(vec![DomainMatcher::Full(key.to_ascii_lowercase())])
}

/// A `hosts` value: an IP, a list of IPs, or a name to resolve instead.
fn host_answer(value: &Value, path: &str) -> Result<HostAnswer, ConfigError> {
    let items: Vec<&str> = match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(j, v)| v.as_str().ok_or_else(|| ConfigError::invalid(format!("{path}[{j}]"), "expected a string")))
            .collect::<Result<_, _>>()?,
        _ => return Err(ConfigError::invalid(path, "expected an address or a list of addresses")),
    };
    let mut ips = Vec::new();
    for item in items {
        match Address::parse(item.trim()) {
            Some(Address::Ip(ip)) => ips.push(ip),
            // As Xray: a name anywhere makes the entry an alias of that name.
            Some(Address::Domain(d)) => return Ok(HostAnswer::Alias(d.to_ascii_lowercase())),
            None => return Err(ConfigError::invalid(path, format!("{item:?} is neither an IP nor a name"))),
        }
    }
    if ips.is_empty() {
        return Err(ConfigError::invalid(path, "no address"));
    }
    Ok(HostAnswer::Ips(ips))
}

/// One of `servers`: an address string or an object.
fn name_server(value: Value, path: &str, notes: &mut Vec<String>) -> Result<DnsServerSpec, ConfigError> {
    let raw = match value {
        Value::String(address) => RawNameServer { address: Some(address), ..Default::default() },
        other => deserialize_at(other, path)?,
    };
    let address = raw.address.as_deref().map(str::trim).unwrap_or("");
    if address.is_empty() {
        return Err(ConfigError::invalid(format!("{path}.address"), "no address"));
    }
    let port = match &raw.port {
        Some(v) => Some(parse_port(v, &format!("{path}.port"))?).filter(|p| *p != 0),
        None => None,
    };
    let address = dns_address(address, port, &format!("{path}.address"))?;
    if raw.client_ip.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ConfigError::unsupported(format!("{path}.clientIp"), "clientIp (EDNS client subnet)"));
    }
    if raw.final_query == Some(true) {
        return Err(ConfigError::unsupported(format!("{path}.finalQuery"), "finalQuery"));
    }
    let mut domains = Vec::new();
    for (j, rule) in raw.domains.unwrap_or_default().iter().enumerate() {
        domain_matchers(rule, &format!("{path}.domains[{j}]"), &mut domains)?;
    }
    let (expect_key, expect) = match raw.expected_ips {
        Some(list) if !list.0.is_empty() => ("expectedIPs", list),
        _ => ("expectIPs", raw.expect_ips.unwrap_or_default()),
    };
    // `"*"`: prefer the expected addresses, keep the answer when none is among them.
    let (stars, expect): (Vec<String>, Vec<String>) = expect.0.into_iter().partition(|s| s.trim() == "*");
    let expect_ips = ip_list(Some(StringList(expect)), &format!("{path}.{expect_key}"))?;
    let unexpected = raw.unexpected_ips.unwrap_or_default();
    if unexpected.0.iter().any(|s| s.trim() == "*") {
        return Err(ConfigError::unsupported(format!("{path}.unexpectedIPs"), "\"*\" in unexpectedIPs"));
    }
    let unexpected_ips = ip_list(Some(unexpected), &format!("{path}.unexpectedIPs"))?;
    let _ = raw.tag;
    Ok(DnsServerSpec {
        address,
        domains,
        expect_ips,
        expect_ips_prefer: !stars.is_empty(),
        unexpected_ips,
        skip_fallback: raw.skip_fallback.unwrap_or(false),
        query_strategy: query_strategy(raw.query_strategy.as_deref(), &format!("{path}.queryStrategy"), notes)?,
        timeout: raw.timeout_ms.filter(|ms| *ms > 0).map_or(DEFAULT_TIMEOUT, Duration::from_millis),
        disable_cache: raw.disable_cache.unwrap_or(false),
    })
}

/// A server's address: a plain IP (UDP), `udp://`, `tcp://`, `tcp+local://`, `tls://`,
/// `https://`, `https+local://` or `localhost`. `port` is the object form's `port`.
fn dns_address(s: &str, port: Option<u16>, path: &str) -> Result<DnsAddress, ConfigError> {
    let lower = s.to_ascii_lowercase();
    if lower == "localhost" {
        return Ok(DnsAddress::Localhost);
    }
    if lower == "fakedns" {
        return Err(ConfigError::unsupported(path, "fakedns"));
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Ok(DnsAddress::Udp(host_port(s, port.unwrap_or(53), path)?));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "udp" => Ok(DnsAddress::Udp(host_port(rest, port.unwrap_or(53), path)?)),
        "tcp" | "tcp+local" => Ok(DnsAddress::Tcp(host_port(rest, port.unwrap_or(53), path)?)),
        "tls" | "tls+local" => Ok(DnsAddress::Tls(host_port(rest, port.unwrap_or(853), path)?)),
        "https" | "https+local" => {
            let (host, url_path) = match rest.find('/') {
                Some(at) => (&rest[..at], &rest[at..]),
                None => (rest, "/dns-query"),
            };
            Ok(DnsAddress::Https { server: host_port(host, port.unwrap_or(443), path)?, path: url_path.to_string() })
        }
        "quic" | "quic+local" => Err(ConfigError::unsupported(path, format!("{scheme}:// (DNS over QUIC)"))),
        other => Err(ConfigError::invalid(
            path,
            format!("unknown scheme {other:?} (expected udp, tcp, tcp+local, tls, https, https+local)"),
        )),
    }
}

/// `host`, `host:port` or `[v6]:port`, with `default_port` when none is written.
fn host_port(s: &str, default_port: u16, path: &str) -> Result<Destination, ConfigError> {
    let s = s.trim_end_matches('/');
    let bad = || ConfigError::invalid(path, format!("{s:?} is not a host or host:port"));
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(Destination { addr: Address::Ip(ip), port: default_port });
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
            let port = port.parse::<u16>().map_err(|_| bad())?;
            let addr = Address::parse(host).ok_or_else(bad)?;
            Ok(Destination { addr, port })
        }
        _ => Ok(Destination { addr: Address::parse(s).ok_or_else(bad)?, port: default_port }),
    }
}

/// `queryStrategy`, with Xray's spellings; `UseSystem` is not served. Any other value is
/// `UseIP`, as Xray's loader reads it, with a note.
fn query_strategy(
    value: Option<&str>,
    path: &str,
    notes: &mut Vec<String>,
) -> Result<Option<QueryStrategy>, ConfigError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else { return Ok(None) };
    let plain: String = value.chars().filter(|c| *c != '_' && *c != '-').collect::<String>().to_ascii_lowercase();
    Ok(Some(match plain.as_str() {
        "useip" => QueryStrategy::UseIp,
        "useip4" | "useipv4" => QueryStrategy::UseIpv4,
        "useip6" | "useipv6" => QueryStrategy::UseIpv6,
        "usesys" | "usesystem" => return Err(ConfigError::unsupported(path, format!("{value:?}"))),
        _ => {
            notes.push(format!("{path}: unknown strategy {value:?} read as UseIP, as Xray reads it"));
            QueryStrategy::UseIp
        }
    }))
}

/// `settings` of a `dns` outbound.
pub(super) fn dns_outbound(settings: Value, path: &str) -> Result<DnsOutboundSpec, ConfigError> {
    let raw: RawDnsOutbound = deserialize_at(settings, path)?;
    if raw.rules.as_ref().is_some_and(|v| !is_empty_value(v)) {
        return Err(ConfigError::unsupported(format!("{path}.rules"), "rules (use nonIPQuery and blockTypes)"));
    }
    let rewrite_network = match raw.network.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") => None,
        Some("tcp") => Some(DnsNetwork::Tcp),
        Some("udp") => Some(DnsNetwork::Udp),
        Some(other) => {
            return Err(ConfigError::invalid(format!("{path}.network"), format!("{other:?} is not tcp or udp")))
        }
    };
    let rewrite_address = match raw.address.as_deref().map(str::trim).unwrap_or("") {
        "" => None,
        s => Some(
            Address::parse(s)
                .ok_or_else(|| ConfigError::invalid(format!("{path}.address"), format!("{s:?} is not an address")))?,
        ),
    };
    let rewrite_port = match &raw.port {
        Some(v) => Some(parse_port(v, &format!("{path}.port"))?).filter(|p| *p != 0),
        None => None,
    };
    let non_ip_query = match raw.non_ip_query.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("reject") => NonIpQuery::Reject,
        Some("drop") => NonIpQuery::Drop,
        Some("skip") => NonIpQuery::Skip,
        Some(other) => {
            return Err(ConfigError::invalid(
                format!("{path}.nonIPQuery"),
                format!("unknown mode {other:?} (expected reject, drop or skip)"),
            ))
        }
    };
    let mut block_types = Vec::new();
    for (j, t) in raw.block_types.unwrap_or_default().into_iter().enumerate() {
        let t = u16::try_from(t).map_err(|_| {
            ConfigError::invalid(format!("{path}.blockTypes[{j}]"), format!("{t} is not a query type (0-65535)"))
        })?;
        block_types.push(t);
    }
    let _ = raw.user_level;
    Ok(DnsOutboundSpec { rewrite_network, rewrite_address, rewrite_port, non_ip_query, block_types })
}
