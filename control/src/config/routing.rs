//! Validates `routing`: rule conditions (domains, networks, ports, users, inbound tags) and the
//! outbound each rule names. Rules to the API's tag are dropped: control serves the API itself.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;
use shardray_core::spec::{
    BalancerSpec, BalancerStrategy, DomainMatcher, NetworkSet, OutboundSpec, PortRange, RoutingDomainStrategy,
    RoutingSpec, RuleSpec,
};

use super::error::ConfigError;
use super::raw::{RawBalancer, RawRouting, RawRule, StringList};
use super::validate::{deserialize_at, is_empty_value, value_text};

/// What `geoip:private` stands for: private, loopback, link-local, shared and "this" networks.
pub(crate) const PRIVATE_NETS: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "0.0.0.0/8",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
];

/// Validates `routing` against the outbounds' tags (and the API's and the metrics endpoint's,
/// `control_tags`, whose rules are dropped). Without outbounds (rules for a running server,
/// whose outbounds are elsewhere), rules may name any outbound. A rule naming an outbound
/// that does not exist is kept, with a note: as in Xray, the connections it matches are
/// closed (the router's `Target::Missing`).
pub(super) fn routing(
    raw: Option<RawRouting>,
    outbounds: Option<&[OutboundSpec]>,
    control_tags: &[&str],
    notes: &mut Vec<String>,
) -> Result<RoutingSpec, ConfigError> {
    let raw = raw.unwrap_or_default();
    let strategy = raw.domain_strategy.unwrap_or_default().to_ascii_lowercase();
    let domain_strategy = match strategy.as_str() {
        "" | "asis" => RoutingDomainStrategy::AsIs,
        "ipifnonmatch" => RoutingDomainStrategy::IpIfNonMatch,
        "ipondemand" => RoutingDomainStrategy::IpOnDemand,
        _ => {
            return Err(ConfigError::invalid(
                "routing.domainStrategy",
                format!("unknown strategy {strategy:?} (expected AsIs, IPIfNonMatch or IPOnDemand)"),
            ))
        }
    };
    match raw.domain_matcher.unwrap_or_default().to_ascii_lowercase().as_str() {
        "" | "hybrid" | "linear" | "mph" => {}
        other => {
            return Err(ConfigError::invalid(
                "routing.domainMatcher",
                format!("unknown matcher {other:?} (expected \"hybrid\" or \"linear\")"),
            ))
        }
    }
    let mut balancers: Vec<BalancerSpec> = Vec::new();
    for (i, value) in raw.balancers.unwrap_or_default().into_iter().enumerate() {
        let path = format!("routing.balancers[{i}]");
        let spec = balancer(deserialize_at(value, &path)?, &path)?;
        if balancers.iter().any(|b| b.tag == spec.tag) {
            return Err(ConfigError::invalid(format!("{path}.tag"), format!("duplicate balancer tag {:?}", spec.tag)));
        }
        balancers.push(spec);
    }

    let mut rules = Vec::new();
    for (i, rule) in raw.rules.unwrap_or_default().into_iter().enumerate() {
        let path = format!("routing.rules[{i}]");
        let spec = rule_spec(rule, &path)?;
        if !spec.balancer_tag.is_empty() {
            if !balancers.iter().any(|b| b.tag == spec.balancer_tag) {
                return Err(ConfigError::invalid(
                    format!("{path}.balancerTag"),
                    format!("no balancer is tagged {:?}", spec.balancer_tag),
                ));
            }
            rules.push(spec);
            continue;
        }
        if control_tags.contains(&spec.outbound_tag.as_str()) {
            continue;
        }
        if outbounds.is_some_and(|list| !list.iter().any(|o| o.tag == spec.outbound_tag)) {
            notes.push(format!(
                "{path}.outboundTag: no outbound is tagged {:?}; the connections this rule matches are closed, \
                 as Xray closes them",
                spec.outbound_tag
            ));
        }
        rules.push(spec);
    }
    Ok(RoutingSpec { domain_strategy, rules, balancers })
}

/// One balancer: a tag, selectors, `random` or `roundRobin`, and an optional fallback.
fn balancer(raw: RawBalancer, path: &str) -> Result<BalancerSpec, ConfigError> {
    let tag = raw.tag.unwrap_or_default();
    if tag.is_empty() {
        return Err(ConfigError::invalid(format!("{path}.tag"), "missing"));
    }
    let selectors = non_empty(raw.selector);
    if selectors.is_empty() {
        return Err(ConfigError::invalid(format!("{path}.selector"), "empty selector list"));
    }
    let strategy = raw.strategy.unwrap_or_default();
    let kind = strategy.kind.unwrap_or_default();
    let strategy_kind = match kind.to_ascii_lowercase().as_str() {
        "" | "random" => BalancerStrategy::Random,
        "roundrobin" => BalancerStrategy::RoundRobin,
        "leastping" | "leastload" => {
            return Err(ConfigError::unsupported_msg(
                format!("{path}.strategy.type"),
                format!(
                    "{kind:?} is not supported yet: it needs the observatory's probes, which shardray does not run"
                ),
            ))
        }
        _ => {
            return Err(ConfigError::invalid(
                format!("{path}.strategy.type"),
                format!("unknown strategy {kind:?} (expected \"random\" or \"roundRobin\")"),
            ))
        }
    };
    if strategy.settings.as_ref().is_some_and(|v| !is_empty_value(v)) {
        return Err(ConfigError::unsupported(format!("{path}.strategy.settings"), "strategy settings"));
    }
    Ok(BalancerSpec { tag, selectors, strategy: strategy_kind, fallback_tag: raw.fallback_tag.unwrap_or_default() })
}

fn rule_spec(raw: RawRule, path: &str) -> Result<RuleSpec, ConfigError> {
    match raw.kind.as_deref().unwrap_or("") {
        "" | "field" => {}
        other => {
            return Err(ConfigError::invalid(
                format!("{path}.type"),
                format!("unknown rule type {other:?} (expected \"field\")"),
            ))
        }
    }
    // Sniffed protocols: a name or a list of names, as upstream takes any string.
    let protocols = match raw.protocol.filter(|v| !is_empty_value(v)) {
        None => Vec::new(),
        Some(v) => non_empty(Some(serde_json::from_value::<StringList>(v).map_err(|_| {
            ConfigError::invalid(format!("{path}.protocol"), "expected a string or a list of strings")
        })?)),
    };
    let attrs = attr_conditions(raw.attrs, &format!("{path}.attrs"))?;
    // As upstream: outboundTag wins when both are given.
    let (outbound_tag, balancer_tag) = match (raw.outbound_tag, raw.balancer_tag) {
        (Some(tag), _) if !tag.is_empty() => (tag, String::new()),
        (_, Some(tag)) if !tag.is_empty() => (String::new(), tag),
        _ => {
            return Err(ConfigError::invalid(
                format!("{path}.outboundTag"),
                "missing (a rule needs an outboundTag or a balancerTag)",
            ))
        }
    };

    let mut domains = Vec::new();
    for (field, list) in [("domain", raw.domain), ("domains", raw.domains)] {
        for (j, entry) in list.map(|l| l.0).unwrap_or_default().into_iter().enumerate() {
            domain_matchers(&entry, &format!("{path}.{field}[{j}]"), &mut domains)?;
        }
    }
    let spec = RuleSpec {
        rule_tag: raw.rule_tag.unwrap_or_default(),
        inbound_tags: non_empty(raw.inbound_tag),
        users: non_empty(raw.user),
        domains,
        ips: ip_list(raw.ip, &format!("{path}.ip"))?,
        ports: port_list(raw.port.as_ref(), &format!("{path}.port"))?,
        network: network_set(raw.network, &format!("{path}.network"))?,
        source_ips: ip_list(raw.source, &format!("{path}.source"))?,
        source_ports: port_list(raw.source_port.as_ref(), &format!("{path}.sourcePort"))?,
        protocols,
        attrs,
        outbound_tag,
        balancer_tag,
    };
    if !spec.has_condition() {
        return Err(ConfigError::invalid(
            path,
            "a rule needs at least one condition (inboundTag, user, domain, ip, port, network, \
             source, sourcePort, protocol or attrs)",
        ));
    }
    Ok(spec)
}

/// `attrs`: an object of attribute name to regular expression, as upstream's
/// `map[string]string`. Names are matched in lowercase, as upstream lowercases them.
fn attr_conditions(raw: Option<Value>, path: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(value) = raw.filter(|v| !is_empty_value(v)) else {
        return Ok(Vec::new());
    };
    let Value::Object(map) = value else {
        return Err(ConfigError::invalid(path, "expected an object of attribute name to regular expression"));
    };
    let mut attrs = Vec::with_capacity(map.len());
    for (name, pattern) in map {
        let at = format!("{path}.{name}");
        let Value::String(pattern) = pattern else {
            return Err(ConfigError::invalid(at, "expected a string (a regular expression)"));
        };
        if name.is_empty() {
            return Err(ConfigError::invalid(at, "empty attribute name"));
        }
        regex::Regex::new(&pattern)
            .map_err(|e| ConfigError::invalid(&at, format!("invalid regular expression {pattern:?}: {e}")))?;
        attrs.push((name.to_ascii_lowercase(), pattern));
    }
    Ok(attrs)
}

fn non_empty(list: Option<StringList>) -> Vec<String> {
    list.map(|l| l.0).unwrap_or_default().into_iter().filter(|s| !s.is_empty()).collect()
}

// === domains ===

/// One `domain` entry into `out`: `full:`, `domain:`, `keyword:`, `regexp:`, a bare keyword,
/// or `geosite:CODE[@ATTR...]` / `ext:FILE:CODE[@ATTR...]` with all the domains it lists.
pub(super) fn domain_matchers(entry: &str, path: &str, out: &mut Vec<DomainMatcher>) -> Result<(), ConfigError> {
    let (prefix, value) = match entry.split_once(':') {
        Some((p, v)) if is_domain_prefix(p) => (p, v),
        _ => ("", entry),
    };
    let site = match prefix {
        "geosite" => Some(("geosite.dat", value)),
        "ext" | "ext-domain" => match value.split_once(':') {
            Some((file, code)) => Some((file, code)),
            None => return Err(ConfigError::invalid(path, format!("{entry:?} is not ext:FILE:CODE"))),
        },
        _ => None,
    };
    if let Some((file, code)) = site {
        let mut parts = code.split('@');
        let code = parts.next().unwrap_or("");
        let attrs: Vec<&str> = parts.filter(|a| !a.is_empty()).collect();
        if code.is_empty() {
            return Err(ConfigError::invalid(path, format!("{entry:?} names no list")));
        }
        let listed = super::geodata::geosite(file, code, &attrs).map_err(|e| ConfigError::invalid(path, e))?;
        out.extend(listed);
        return Ok(());
    }
    out.push(domain_matcher(prefix, value, entry, path)?);
    Ok(())
}

/// One plain domain entry, its prefix split off.
fn domain_matcher(prefix: &str, value: &str, entry: &str, path: &str) -> Result<DomainMatcher, ConfigError> {
    if prefix == "dotless" {
        return Err(ConfigError::unsupported_msg(path, format!("{entry:?} is not supported yet")));
    }
    if value.is_empty() {
        return Err(ConfigError::invalid(path, format!("{entry:?} names no domain")));
    }
    let lower = value.to_ascii_lowercase();
    Ok(match prefix {
        "full" => DomainMatcher::Full(lower),
        "domain" => DomainMatcher::Domain(lower),
        "regexp" => {
            regex::Regex::new(value)
                .map_err(|e| ConfigError::invalid(path, format!("invalid regular expression {value:?}: {e}")))?;
            DomainMatcher::Regex(value.to_string())
        }
        _ => DomainMatcher::Keyword(lower),
    })
}

fn is_domain_prefix(prefix: &str) -> bool {
    matches!(prefix, "full" | "domain" | "keyword" | "regexp" | "geosite" | "ext" | "ext-domain" | "dotless")
}

// === IPs ===

/// `ip` or `source`: CIDRs and single IPs, with `geoip:private` expanded.
pub(super) fn ip_list(list: Option<StringList>, path: &str) -> Result<Vec<IpNet>, ConfigError> {
    let mut nets = Vec::new();
    for (j, entry) in list.map(|l| l.0).unwrap_or_default().into_iter().enumerate() {
        let epath = format!("{path}[{j}]");
        let entry = entry.trim();
        let lower = entry.to_ascii_lowercase();
        if entry.starts_with('!') {
            return Err(ConfigError::unsupported(&epath, format!("negation ({entry:?}; geoip:!CODE is served)")));
        }
        if lower == "geoip:private" {
            nets.extend(PRIVATE_NETS.iter().map(|n| n.parse::<IpNet>().expect("valid CIDR")));
            continue;
        }
        let geo = if let Some(code) = lower.strip_prefix("geoip:") {
            Some(("geoip.dat", code))
        } else if let Some(rest) = entry.strip_prefix("ext:").or_else(|| entry.strip_prefix("ext-ip:")) {
            match rest.split_once(':') {
                Some((file, code)) => Some((file, code)),
                None => return Err(ConfigError::invalid(epath, format!("{entry:?} is not ext:FILE:CODE"))),
            }
        } else {
            None
        };
        if let Some((file, code)) = geo {
            let (negate, code) = match code.strip_prefix('!') {
                Some(code) => (true, code),
                None => (false, code),
            };
            let listed = super::geodata::geoip(file, code, negate).map_err(|e| ConfigError::invalid(&epath, e))?;
            nets.extend(listed);
            continue;
        }
        let net = if let Ok(net) = entry.parse::<IpNet>() {
            net.trunc()
        } else if let Ok(ip) = entry.parse::<IpAddr>() {
            IpNet::from(ip)
        } else {
            return Err(ConfigError::invalid(epath, format!("invalid IP or CIDR {entry:?}")));
        };
        nets.push(net);
    }
    Ok(nets)
}

// === ports and networks ===

/// `port` / `sourcePort`: a number, or a string of ports and ranges (`"53,443,1000-2000"`).
fn port_list(value: Option<&Value>, path: &str) -> Result<Vec<PortRange>, ConfigError> {
    let text = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Number(n)) => match n.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(p) => return Ok(vec![PortRange { from: p, to: p }]),
            None => return Err(ConfigError::invalid(path, format!("invalid port {n} (expected 0 to 65535)"))),
        },
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(ConfigError::invalid(
                path,
                format!("expected a port or a string of ports, got {}", value_text(other)),
            ))
        }
    };
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            ConfigError::invalid(
                path,
                format!("invalid port or range {part:?} (expected e.g. \"53\" or \"1000-2000\")"),
            )
        };
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let from: u16 = from.parse().map_err(|_| bad())?;
        let to: u16 = to.parse().map_err(|_| bad())?;
        if from > to {
            return Err(ConfigError::invalid(path, format!("range {part:?} is reversed")));
        }
        ranges.push(PortRange { from, to });
    }
    if ranges.is_empty() {
        return Err(ConfigError::invalid(path, "names no port"));
    }
    Ok(ranges)
}

/// `network`: `"tcp"`, `"udp"`, `"tcp,udp"` or a list of them; empty matches any.
fn network_set(list: Option<StringList>, path: &str) -> Result<Option<NetworkSet>, ConfigError> {
    let mut set = NetworkSet { tcp: false, udp: false };
    for item in list.map(|l| l.0).unwrap_or_default().iter().flat_map(|n| n.split(',')) {
        match item.trim().to_ascii_lowercase().as_str() {
            "" => {}
            "tcp" => set.tcp = true,
            "udp" => set.udp = true,
            other => {
                return Err(ConfigError::invalid(
                    path,
                    format!("unknown network {other:?} (expected \"tcp\", \"udp\" or \"tcp,udp\")"),
                ))
            }
        }
    }
    Ok((set.tcp || set.udp).then_some(set))
}
