//! Input files of `shardray api`: Xray JSON configs (comments allowed) turned into the API's
//! messages: users of inbounds, and routing rules.

use std::io::Read;
use std::net::IpAddr;

use serde_json::{Map, Value};
use shardray_proto::xray::app::router;
use shardray_proto::xray::common::geodata;
use shardray_proto::xray::common::net;
use shardray_proto::xray::common::protocol::User;
use shardray_proto::xray::proxy::vless;

use super::{typed, Failure};
use crate::config::load_inbound;
use crate::convert::inbound::inbound_config;
use shardray_proto::xray::core::InboundHandlerConfig;

/// The file name that means standard input, as `xray api` spells it.
pub(super) const STDIN: &str = "stdin:";

/// Reads a file (or standard input) as JSON with `//`, `/* */` and `#` comments.
pub(super) fn read_json(file: &str) -> Result<Value, Failure> {
    let mut text = String::new();
    let read = if file == STDIN {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|t| text = t)
    };
    read.map_err(|e| Failure::Input(format!("cannot read {file}: {e}")))?;
    parse_json(&text).map_err(|e| Failure::Input(format!("{file}: {e}")))
}

fn parse_json(text: &str) -> Result<Value, String> {
    let mut plain = String::with_capacity(text.len());
    json_comments::StripComments::new(text.as_bytes())
        .read_to_string(&mut plain)
        .map_err(|e| format!("cannot strip comments: {e}"))?;
    serde_json::from_str(&plain).map_err(|e| format!("invalid JSON: {e}"))
}

/// One client of an inbound in a file, ready to send or with the reason it cannot be.
pub(super) struct Client {
    pub email: String,
    pub user: Result<User, String>,
}

/// The clients of one tagged inbound in a file.
pub(super) struct InboundUsers {
    pub tag: String,
    pub clients: Vec<Client>,
}

/// `adu`: every tagged inbound with clients in the files. Inbounds without a tag are skipped
/// as upstream skips them; a file with no users at all is an input error.
pub(super) fn inbounds_with_users(files: &[String]) -> Result<Vec<InboundUsers>, Failure> {
    let mut out = Vec::new();
    for file in files {
        let doc = read_json(file)?;
        let inbounds = doc
            .get("inbounds")
            .and_then(Value::as_array)
            .ok_or_else(|| Failure::Input(format!("{file}: no \"inbounds\" array")))?;
        for (i, inbound) in inbounds.iter().enumerate() {
            let tag = inbound.get("tag").and_then(Value::as_str).unwrap_or("");
            if tag.is_empty() {
                continue;
            }
            let protocol = inbound.get("protocol").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
            let Some(clients) = inbound.pointer("/settings/clients") else {
                continue;
            };
            let clients = clients
                .as_array()
                .ok_or_else(|| Failure::Input(format!("{file}: inbounds[{i}].settings.clients: not an array")))?;
            let clients = clients
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    let email = c.get("email").and_then(Value::as_str).unwrap_or("");
                    let user = if protocol == "vless" {
                        vless_user(c).map_err(|e| format!("inbounds[{i}].settings.clients[{j}].{e}"))
                    } else {
                        Err(format!("protocol {protocol:?}: adding its users is not supported yet"))
                    };
                    Client { email: email.to_owned(), user }
                })
                .collect();
            out.push(InboundUsers { tag: tag.to_owned(), clients });
        }
    }
    if out.iter().all(|i| i.clients.is_empty()) {
        return Err(Failure::Input(format!(
            "no users found: {} has no tagged inbound with settings.clients",
            files.join(", ")
        )));
    }
    Ok(out)
}

/// A VLESS client of a config as the API's user. The error names the field at fault.
fn vless_user(client: &Value) -> Result<User, String> {
    let text = |key: &str| -> Result<String, String> {
        match client.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("{key}: expected a string, found {other}")),
        }
    };
    let id = text("id")?;
    if id.is_empty() {
        return Err("id: missing".to_owned());
    }
    let email = text("email")?;
    if email.is_empty() {
        return Err("email: missing (a managed user needs one)".to_owned());
    }
    let level = match client.get("level") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("level: expected a small whole number, found {v}"))?,
    };
    let account = vless::Account { id, flow: text("flow")?, ..Default::default() };
    Ok(User { level, email, account: Some(typed("xray.proxy.vless.Account", &account)) })
}

/// `addusers` / `replaceusers`: the users in `file` for the inbound tagged `tag`. The file is
/// an array of clients, `{"clients": [...]}`, one inbound (`{"protocol", "settings"}`), or a
/// config whose inbound tagged `tag` has them.
pub(super) fn users_for_tag(file: &str, tag: &str) -> Result<Vec<User>, Failure> {
    let doc = read_json(file)?;
    let bad = |m: String| Failure::Input(format!("{file}: {m}"));
    let (clients, path, protocol) = if let Some(list) = doc.as_array() {
        (list, String::new(), None)
    } else if let Some(list) = doc.get("clients") {
        let list = list.as_array().ok_or_else(|| bad("clients: not an array".into()))?;
        (list, "clients".to_owned(), None)
    } else if let Some(inbounds) = doc.get("inbounds").and_then(Value::as_array) {
        let (i, inbound) = inbounds
            .iter()
            .enumerate()
            .find(|(_, ib)| ib.get("tag").and_then(Value::as_str) == Some(tag))
            .ok_or_else(|| bad(format!("no inbound tagged {tag:?}")))?;
        let list = inbound
            .pointer("/settings/clients")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(format!("inbounds[{i}].settings.clients: missing")))?;
        (list, format!("inbounds[{i}].settings.clients"), inbound.get("protocol").and_then(Value::as_str))
    } else if let Some(list) = doc.pointer("/settings/clients") {
        let list = list.as_array().ok_or_else(|| bad("settings.clients: not an array".into()))?;
        (list, "settings.clients".to_owned(), doc.get("protocol").and_then(Value::as_str))
    } else {
        return Err(bad("no users: expected an array of clients, {\"clients\": [...]}, an inbound, or a \
             config with an inbound tagged by --tag"
            .into()));
    };
    if let Some(p) = protocol.filter(|p| !p.eq_ignore_ascii_case("vless")) {
        return Err(bad(format!("protocol {p:?}: only VLESS users can be sent so far")));
    }
    clients.iter().enumerate().map(|(j, c)| vless_user(c).map_err(|e| bad(format!("{path}[{j}].{e}")))).collect()
}

/// The tags of the `section` ("inbounds" or "outbounds") of a config.
pub(super) fn section_tags(doc: &Value, section: &str, file: &str) -> Result<Vec<String>, Failure> {
    let list = doc
        .get(section)
        .and_then(Value::as_array)
        .ok_or_else(|| Failure::Input(format!("{file}: no {section:?} array")))?;
    Ok(list.iter().filter_map(|e| e.get("tag").and_then(Value::as_str)).map(str::to_owned).collect())
}

/// `adi`: every inbound in the files (none given: standard input), checked as `shardray run`
/// checks config inbounds and put in the API's form.
pub(super) fn inbound_configs(files: &[String]) -> Result<Vec<InboundHandlerConfig>, Failure> {
    let files = if files.is_empty() { vec![STDIN.to_owned()] } else { files.to_vec() };
    let mut out = Vec::new();
    for file in &files {
        let doc = read_json(file)?;
        let inbounds = doc
            .get("inbounds")
            .and_then(Value::as_array)
            .ok_or_else(|| Failure::Input(format!("{file}: no \"inbounds\" array")))?;
        for (i, inbound) in inbounds.iter().enumerate() {
            let spec = load_inbound(inbound.clone(), &format!("inbounds[{i}]"))
                .map_err(|e| Failure::Input(format!("{file}: {e}")))?;
            out.push(inbound_config(&spec));
        }
    }
    if out.is_empty() {
        return Err(Failure::Input("no inbounds to add".into()));
    }
    Ok(out)
}

/// `rmi` / `rmo`: each argument that is a readable file gives the tags of its `section`;
/// any other argument is a tag.
pub(super) fn tags_or_files(args: &[String], section: &str) -> Result<Vec<String>, Failure> {
    let mut tags = Vec::new();
    for arg in args {
        if arg == STDIN || std::path::Path::new(arg).is_file() {
            tags.extend(section_tags(&read_json(arg)?, section, arg)?);
        } else {
            tags.push(arg.clone());
        }
    }
    if tags.is_empty() {
        return Err(Failure::Input(format!("no {section} to remove")));
    }
    Ok(tags)
}

/// The `routing` section of a config as `xray.app.router.Config`. Fields this client cannot
/// convert are refused by name, never dropped.
pub(super) fn router_config(doc: &Value) -> Result<router::Config, String> {
    let routing = doc.get("routing").and_then(Value::as_object).ok_or("no \"routing\" section")?;
    let mut config = router::Config::default();
    for (key, value) in routing {
        match key.as_str() {
            "domainStrategy" => {
                let s = value.as_str().ok_or("routing.domainStrategy: not a string")?;
                config.domain_strategy = match s.to_ascii_lowercase().as_str() {
                    "asis" | "" => router::config::DomainStrategy::AsIs,
                    "ipifnonmatch" => router::config::DomainStrategy::IpIfNonMatch,
                    "ipondemand" => router::config::DomainStrategy::IpOnDemand,
                    _ => return Err(format!("routing.domainStrategy: unknown value {s:?}")),
                } as i32;
            }
            "rules" => {
                let rules = value.as_array().ok_or("routing.rules: not an array")?;
                for (i, rule) in rules.iter().enumerate() {
                    let path = format!("routing.rules[{i}]");
                    let rule = rule.as_object().ok_or_else(|| format!("{path}: not an object"))?;
                    config.rule.push(routing_rule(rule, &path)?);
                }
            }
            "balancers" => {
                let list = value.as_array().ok_or("routing.balancers: not an array")?;
                for (i, b) in list.iter().enumerate() {
                    let path = format!("routing.balancers[{i}]");
                    let b = b.as_object().ok_or_else(|| format!("{path}: not an object"))?;
                    config.balancing_rule.push(balancer(b, &path)?);
                }
            }
            other => return Err(format!("routing.{other}: not supported by this client yet")),
        }
    }
    if config.rule.is_empty() && config.balancing_rule.is_empty() {
        return Err("routing: no rules or balancers".to_owned());
    }
    Ok(config)
}

/// A list given as an array of strings or as one comma-separated string.
fn string_list(value: &Value, path: &str) -> Result<Vec<String>, String> {
    match value {
        Value::String(s) => Ok(s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_str().map(str::to_owned).ok_or_else(|| format!("{path}[{i}]: not a string")))
            .collect(),
        _ => Err(format!("{path}: expected a string or an array of strings")),
    }
}

fn routing_rule(rule: &Map<String, Value>, path: &str) -> Result<router::RoutingRule, String> {
    use router::routing_rule::TargetTag;
    let mut out = router::RoutingRule::default();
    for (key, value) in rule {
        let at = format!("{path}.{key}");
        let text = || value.as_str().map(str::to_owned).ok_or_else(|| format!("{at}: not a string"));
        match key.as_str() {
            "type" => {
                if text()? != "field" {
                    return Err(format!("{at}: only \"field\" rules exist"));
                }
            }
            "ruleTag" => out.rule_tag = text()?,
            "outboundTag" => out.target_tag = Some(TargetTag::Tag(text()?)),
            "balancerTag" => out.target_tag = Some(TargetTag::BalancingTag(text()?)),
            "domain" | "domains" => {
                for (i, d) in string_list(value, &at)?.iter().enumerate() {
                    out.domain.push(domain_rule(d).map_err(|e| format!("{at}[{i}]: {e}"))?);
                }
            }
            "ip" => out.ip = ip_rules(value, &at)?,
            "source" | "sourceIP" => out.source_ip = ip_rules(value, &at)?,
            "port" => out.port_list = Some(port_list(value, &at)?),
            "sourcePort" => out.source_port_list = Some(port_list(value, &at)?),
            "network" => {
                for n in string_list(value, &at)? {
                    out.networks.push(match n.to_ascii_lowercase().as_str() {
                        "tcp" => net::Network::Tcp as i32,
                        "udp" => net::Network::Udp as i32,
                        _ => return Err(format!("{at}: unknown network {n:?}")),
                    });
                }
            }
            "user" => out.user_email = string_list(value, &at)?,
            "inboundTag" => out.inbound_tag = string_list(value, &at)?,
            "protocol" => out.protocol = string_list(value, &at)?,
            "attrs" => {
                let attrs = value.as_object().ok_or_else(|| format!("{at}: not an object"))?;
                for (k, v) in attrs {
                    let v = v.as_str().ok_or_else(|| format!("{at}.{k}: not a string"))?;
                    out.attributes.insert(k.clone(), v.to_owned());
                }
            }
            _ => return Err(format!("{at}: not supported by this client yet")),
        }
    }
    if out.target_tag.is_none() {
        return Err(format!("{path}: needs an outboundTag or a balancerTag"));
    }
    Ok(out)
}

fn domain_rule(entry: &str) -> Result<geodata::DomainRule, String> {
    use geodata::domain::Type;
    use geodata::domain_rule::Value as Rule;
    let custom = |kind: Type, value: &str| {
        if value.is_empty() {
            return Err(format!("{entry:?}: empty value"));
        }
        Ok(Rule::Custom(geodata::Domain { r#type: kind as i32, value: value.to_owned(), attribute: Vec::new() }))
    };
    let rule = if let Some(code) = entry.strip_prefix("geosite:") {
        let (code, attrs) = code.split_once('@').unwrap_or((code, ""));
        Rule::Geosite(geodata::GeoSiteRule { file: String::new(), code: code.to_owned(), attrs: attrs.to_owned() })
    } else if let Some(rest) = entry.strip_prefix("ext:") {
        let (file, code) = rest.split_once(':').ok_or_else(|| format!("{entry:?}: expected ext:FILE:CODE"))?;
        let (code, attrs) = code.split_once('@').unwrap_or((code, ""));
        Rule::Geosite(geodata::GeoSiteRule { file: file.to_owned(), code: code.to_owned(), attrs: attrs.to_owned() })
    } else if let Some(v) = entry.strip_prefix("regexp:") {
        custom(Type::Regex, v)?
    } else if let Some(v) = entry.strip_prefix("domain:") {
        custom(Type::Domain, v)?
    } else if let Some(v) = entry.strip_prefix("full:") {
        custom(Type::Full, v)?
    } else if let Some(v) = entry.strip_prefix("keyword:") {
        custom(Type::Substr, v)?
    } else if entry.contains(':') {
        return Err(format!("{entry:?}: prefix not supported by this client yet"));
    } else {
        custom(Type::Substr, entry)?
    };
    Ok(geodata::DomainRule { value: Some(rule) })
}

fn ip_rules(value: &Value, path: &str) -> Result<Vec<geodata::IpRule>, String> {
    string_list(value, path)?
        .iter()
        .enumerate()
        .map(|(i, e)| ip_rule(e).map_err(|m| format!("{path}[{i}]: {m}")))
        .collect()
}

fn ip_rule(entry: &str) -> Result<geodata::IpRule, String> {
    use geodata::ip_rule::Value as Rule;
    let (reverse, bare) = match entry.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, entry),
    };
    let rule = if let Some(code) = bare.strip_prefix("geoip:") {
        Rule::Geoip(geodata::GeoIpRule { file: String::new(), code: code.to_owned(), reverse_match: reverse })
    } else if let Some(rest) = bare.strip_prefix("ext:") {
        let (file, code) = rest.split_once(':').ok_or_else(|| format!("{entry:?}: expected ext:FILE:CODE"))?;
        Rule::Geoip(geodata::GeoIpRule { file: file.to_owned(), code: code.to_owned(), reverse_match: reverse })
    } else if reverse {
        return Err(format!("{entry:?}: `!` applies to geoip: entries only"));
    } else {
        let (ip, prefix) = match bare.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (bare, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| format!("{entry:?}: not an IP address or CIDR"))?;
        let (bytes, max) = match ip {
            IpAddr::V4(v4) => (v4.octets().to_vec(), 32),
            IpAddr::V6(v6) => (v6.octets().to_vec(), 128),
        };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                p.parse::<u32>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{entry:?}: bad prefix length"))?
            }
        };
        Rule::Custom(geodata::Cidr { ip: bytes, prefix })
    };
    Ok(geodata::IpRule { value: Some(rule) })
}

/// A port list: a number, `"80"`, `"1000-2000"`, `"53,443,1000-2000"`, or an array of those.
fn port_list(value: &Value, path: &str) -> Result<net::PortList, String> {
    let mut range = Vec::new();
    let mut add = |part: &str| -> Result<(), String> {
        let part = part.trim();
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        let port = |s: &str| s.trim().parse::<u16>().map(u32::from).map_err(|_| format!("{path}: bad port {part:?}"));
        let (from, to) = (port(from)?, port(to)?);
        if from > to {
            return Err(format!("{path}: empty range {part:?}"));
        }
        range.push(net::PortRange { from, to });
        Ok(())
    };
    match value {
        Value::Number(n) => add(&n.to_string())?,
        Value::String(s) => {
            for part in s.split(',').filter(|p| !p.trim().is_empty()) {
                add(part)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Number(n) => add(&n.to_string())?,
                    Value::String(s) => add(s)?,
                    _ => return Err(format!("{path}: expected ports")),
                }
            }
        }
        _ => return Err(format!("{path}: expected a port, a range or a list")),
    }
    if range.is_empty() {
        return Err(format!("{path}: no ports"));
    }
    Ok(net::PortList { range })
}

fn balancer(b: &Map<String, Value>, path: &str) -> Result<router::BalancingRule, String> {
    let mut out = router::BalancingRule::default();
    for (key, value) in b {
        let at = format!("{path}.{key}");
        match key.as_str() {
            "tag" => out.tag = value.as_str().ok_or_else(|| format!("{at}: not a string"))?.to_owned(),
            "selector" => out.outbound_selector = string_list(value, &at)?,
            "fallbackTag" => out.fallback_tag = value.as_str().ok_or_else(|| format!("{at}: not a string"))?.to_owned(),
            "strategy" => {
                let s = value.as_object().ok_or_else(|| format!("{at}: not an object"))?;
                for (k, v) in s {
                    match k.as_str() {
                        "type" => {
                            out.strategy = v.as_str().ok_or_else(|| format!("{at}.type: not a string"))?.to_owned()
                        }
                        _ => return Err(format!("{at}.{k}: not supported by this client yet")),
                    }
                }
            }
            _ => return Err(format!("{at}: not supported by this client yet")),
        }
    }
    if out.tag.is_empty() {
        return Err(format!("{path}.tag: missing"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use serde_json::json;

    #[test]
    fn vless_clients_become_users_and_others_are_refused_per_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(
            &path,
            r#"{
              // a comment
              "inbounds": [
                { "tag": "in", "protocol": "vless", "settings": { "clients": [
                    { "id": "alice", "email": "a@x", "level": 2 },
                    { "id": "bob" }
                ]}},
                { "protocol": "vless", "settings": { "clients": [ { "id": "x", "email": "y" } ] } },
                { "tag": "tr", "protocol": "trojan", "settings": { "clients": [
                    { "password": "p", "email": "t@x" }
                ]}}
              ]
            }"#,
        )
        .unwrap();
        let found = inbounds_with_users(&[path.to_str().unwrap().to_owned()]).unwrap_or_else(|_| panic!("parse"));
        assert_eq!(found.len(), 2, "the untagged inbound is skipped");
        let alice = found[0].clients[0].user.as_ref().unwrap();
        assert_eq!((alice.level, alice.email.as_str()), (2, "a@x"));
        let account = alice.account.as_ref().unwrap();
        assert_eq!(account.r#type, "xray.proxy.vless.Account");
        assert_eq!(vless::Account::decode(&account.value[..]).unwrap().id, "alice");
        assert!(found[0].clients[1].user.as_ref().unwrap_err().contains("email"));
        assert!(found[1].clients[0].user.as_ref().unwrap_err().contains("not supported yet"));
    }

    #[test]
    fn rules_convert_with_every_supported_field() {
        let doc = json!({ "routing": {
            "domainStrategy": "IPIfNonMatch",
            "rules": [{
                "type": "field", "ruleTag": "r1", "outboundTag": "blocked",
                "domain": ["full:a.com", "domain:b.com", "keyword:c", "regexp:^d$", "e", "geosite:cn@ads"],
                "ip": ["10.0.0.0/8", "::1", "!geoip:cn"],
                "port": "53,1000-2000", "sourcePort": 1234, "network": "tcp,udp",
                "source": "1.2.3.4", "user": ["a@b"], "inboundTag": "in", "protocol": ["http"],
                "attrs": { ":method": "GET" }
            }],
            "balancers": [{ "tag": "b", "selector": ["x"], "strategy": { "type": "random" } }]
        }});
        let c = router_config(&doc).unwrap();
        assert_eq!(c.domain_strategy, 2);
        let r = &c.rule[0];
        assert_eq!(r.rule_tag, "r1");
        assert_eq!(r.domain.len(), 6);
        assert_eq!(r.ip.len(), 3);
        assert_eq!(
            r.ip[0].value,
            Some(geodata::ip_rule::Value::Custom(geodata::Cidr { ip: vec![10, 0, 0, 0], prefix: 8 }))
        );
        assert_eq!(r.port_list.as_ref().unwrap().range.len(), 2);
        assert_eq!(r.networks, vec![2, 3]);
        assert_eq!(r.inbound_tag, ["in"]);
        assert_eq!(c.balancing_rule[0].strategy, "random");

        let bad = json!({ "routing": { "rules": [{ "outboundTag": "x", "process": ["a"] }] } });
        assert!(router_config(&bad).unwrap_err().contains("routing.rules[0].process"));
        let no_target = json!({ "routing": { "rules": [{ "ip": ["1.1.1.1"] }] } });
        assert!(router_config(&no_target).is_err());
        assert!(router_config(&json!({})).is_err());
    }

    #[test]
    fn users_for_a_tag_from_every_file_shape() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, v: Value| {
            let p = dir.path().join(name);
            std::fs::write(&p, v.to_string()).unwrap();
            p.to_str().unwrap().to_owned()
        };
        let c = json!([{ "id": "alice", "email": "a@x" }]);
        for file in [
            write("a.json", c.clone()),
            write("b.json", json!({ "clients": c })),
            write("c.json", json!({ "protocol": "vless", "settings": { "clients": c } })),
            write(
                "d.json",
                json!({ "inbounds": [{ "tag": "other" }, { "tag": "in", "protocol": "vless", "settings": { "clients": c } }] }),
            ),
        ] {
            let users = users_for_tag(&file, "in").unwrap_or_else(|_| panic!("{file}"));
            assert_eq!(users.len(), 1);
            assert_eq!(users[0].email, "a@x");
        }
        let wrong = write("e.json", json!({ "inbounds": [{ "tag": "x" }] }));
        assert!(users_for_tag(&wrong, "in").is_err());
    }
}
