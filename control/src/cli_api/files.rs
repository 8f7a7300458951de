//! Input files of `shardray api`: Xray JSON configs (comments allowed) turned into the API's
//! messages: users of inbounds, and tags. (Outbounds and routing go through the config
//! loader: `config::outbounds_of` and `config::routing_of`.)

use std::io::Read;

use serde_json::Value;
use shardray_proto::xray::common::protocol::User;
use shardray_proto::xray::proxy::{socks, trojan, vless};

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
            // SOCKS and HTTP inbounds list `accounts` (Xray takes them over `users`).
            let list = match protocol.as_str() {
                "socks" | "http" if inbound.pointer("/settings/accounts").is_some() => "accounts",
                "socks" | "http" => "users",
                _ => "clients",
            };
            let Some(clients) = inbound.pointer(&format!("/settings/{list}")) else {
                continue;
            };
            let clients = clients
                .as_array()
                .ok_or_else(|| Failure::Input(format!("{file}: inbounds[{i}].settings.{list}: not an array")))?;
            let clients = clients
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    let email = c.get("email").and_then(Value::as_str).unwrap_or("");
                    let email = match c.get("user").and_then(Value::as_str) {
                        Some(user) if email.is_empty() && list != "clients" => user,
                        _ => email,
                    };
                    let user = if ["vless", "trojan", "vmess", "socks", "http"].contains(&protocol.as_str()) {
                        client_user(c, Some(&protocol)).map_err(|e| format!("inbounds[{i}].settings.{list}[{j}].{e}"))
                    } else if protocol == "shadowsocks" {
                        let method = inbound.pointer("/settings/method").and_then(Value::as_str);
                        shadowsocks_user(c, method).map_err(|e| format!("inbounds[{i}].settings.clients[{j}].{e}"))
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

/// A VLESS, Trojan or VMess client of a config as the API's user; without a `protocol`, a client with
/// a `password` and no `id` is taken for Trojan's. The error names the field at fault.
fn client_user(client: &Value, protocol: Option<&str>) -> Result<User, String> {
    let text = |key: &str| -> Result<String, String> {
        match client.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("{key}: expected a string, found {other}")),
        }
    };
    if let Some(p) = protocol.filter(|p| p.eq_ignore_ascii_case("socks") || p.eq_ignore_ascii_case("http")) {
        return proxy_user(client, p, text);
    }
    let trojan = match protocol {
        Some(p) => p.eq_ignore_ascii_case("trojan"),
        None => client.get("id").is_none() && client.get("password").is_some(),
    };
    let (key, id) = if trojan { ("password", text("password")?) } else { ("id", text("id")?) };
    if id.is_empty() {
        return Err(format!("{key}: missing"));
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
    let vmess = protocol.is_some_and(|p| p.eq_ignore_ascii_case("vmess"));
    let account = if trojan {
        typed("xray.proxy.trojan.Account", &trojan::Account { password: id, flow: text("flow")? })
    } else if vmess {
        let alter_id = match client.get("alterId") {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| format!("alterId: {v}"))?,
        };
        let security = crate::config::vmess_security(Some(&text("security")?));
        let mut account = crate::convert::vmess_account(&uuid::Uuid::nil(), security);
        // The id goes as written: the server maps a 1-30 byte string as the config loader does.
        (account.id, account.alter_id, account.tests_enabled) = (id, alter_id, text("experiments")?);
        typed("xray.proxy.vmess.Account", &account)
    } else {
        typed("xray.proxy.vless.Account", &vless::Account { id, flow: text("flow")?, ..Default::default() })
    };
    Ok(User { level, email, account: Some(account) })
}

/// A SOCKS or HTTP account (`user`, `pass`) as the API's user: its email is `email`, or the
/// username as Xray counts it; `level` as written.
fn proxy_user(client: &Value, protocol: &str, text: impl Fn(&str) -> Result<String, String>) -> Result<User, String> {
    let username = text("user")?;
    if username.is_empty() {
        return Err("user: missing".to_owned());
    }
    let password = text("pass")?;
    let email = Some(text("email")?).filter(|e| !e.is_empty()).unwrap_or_else(|| username.clone());
    let level = match client.get("level") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("level: expected a small whole number, found {v}"))?,
    };
    let kind = format!("xray.proxy.{}.Account", protocol.to_ascii_lowercase());
    Ok(User { level, email, account: Some(typed(&kind, &socks::Account { username, password })) })
}

/// A Shadowsocks client of a config as the API's user: a `xray.proxy.shadowsocks_2022.Account`
/// (its `password` the user's PSK) on an inbound whose `method` is a 2022 one, else a
/// `xray.proxy.shadowsocks.Account` with the client's method (or the inbound's) as Xray's
/// cipher number. Stream ciphers and `none` are refused here, naming the field.
fn shadowsocks_user(client: &Value, inbound_method: Option<&str>) -> Result<User, String> {
    let text = |key: &str| client.get(key).and_then(Value::as_str).unwrap_or("").trim().to_owned();
    let password = text("password");
    if password.is_empty() {
        return Err("password: missing".to_owned());
    }
    let email = text("email");
    if email.is_empty() {
        return Err("email: missing (a managed user needs one)".to_owned());
    }
    let level = client.get("level").and_then(Value::as_u64).unwrap_or(0) as u32;
    let parse = |name: &str, field: &str| {
        shardray_wire::shadowsocks::Method::parse(name).map_err(|e| format!("{field}: {name:?}: {e}"))
    };
    let server = inbound_method.filter(|m| !m.is_empty()).map(|m| parse(m, "method")).transpose()?;
    let account = match server {
        Some(m) if m.is_2022() => typed(
            "xray.proxy.shadowsocks_2022.Account",
            &shardray_proto::xray::proxy::shadowsocks_2022::Account { key: password },
        ),
        _ => {
            let method = match text("method").as_str() {
                "" => server.ok_or("method: missing (and the inbound names none)")?,
                m => parse(m, "method")?,
            };
            let account = shardray_proto::xray::proxy::shadowsocks::Account {
                password,
                cipher_type: crate::convert::shadowsocks_cipher_type(method),
                iv_check: false,
            };
            typed("xray.proxy.shadowsocks.Account", &account)
        }
    };
    Ok(User { level, email, account: Some(account) })
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
    let served = |p: &&str| ["vless", "trojan", "vmess", "shadowsocks"].iter().any(|s| p.eq_ignore_ascii_case(s));
    if let Some(p) = protocol.filter(|p| !served(p)) {
        return Err(bad(format!("protocol {p:?}: only VLESS, Trojan, VMess and Shadowsocks users can be sent so far")));
    }
    if protocol.is_some_and(|p| p.eq_ignore_ascii_case("shadowsocks")) {
        let method = doc
            .get("inbounds")
            .and_then(Value::as_array)
            .and_then(|l| l.iter().find(|ib| ib.get("tag").and_then(Value::as_str) == Some(tag)))
            .unwrap_or(&doc)
            .pointer("/settings/method")
            .and_then(Value::as_str);
        return clients
            .iter()
            .enumerate()
            .map(|(j, c)| shadowsocks_user(c, method).map_err(|e| bad(format!("{path}[{j}].{e}"))))
            .collect();
    }
    clients
        .iter()
        .enumerate()
        .map(|(j, c)| client_user(c, protocol).map_err(|e| bad(format!("{path}[{j}].{e}"))))
        .collect()
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
            // The API form carries no TCP header yet: refuse rather than add it without one.
            if spec.http_header.is_some() {
                return Err(Failure::Input(format!(
                    "{file}: inbounds[{i}].streamSettings.tcpSettings.header: adding an HTTP-camouflaged inbound \
                     through the API is not supported yet"
                )));
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use serde_json::json;

    #[test]
    fn vless_and_trojan_clients_become_users_and_others_are_refused_per_client() {
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
                    { "password": "p", "email": "t@x" }, { "email": "nopass@x" }
                ]}},
                { "tag": "ss", "protocol": "wireguard", "settings": { "clients": [
                    { "password": "p", "email": "s@x" }
                ]}}
              ]
            }"#,
        )
        .unwrap();
        let found = inbounds_with_users(&[path.to_str().unwrap().to_owned()]).unwrap_or_else(|_| panic!("parse"));
        assert_eq!(found.len(), 3, "the untagged inbound is skipped");
        let alice = found[0].clients[0].user.as_ref().unwrap();
        assert_eq!((alice.level, alice.email.as_str()), (2, "a@x"));
        let account = alice.account.as_ref().unwrap();
        assert_eq!(account.r#type, "xray.proxy.vless.Account");
        assert_eq!(vless::Account::decode(&account.value[..]).unwrap().id, "alice");
        assert!(found[0].clients[1].user.as_ref().unwrap_err().contains("email"));
        let t = found[1].clients[0].user.as_ref().unwrap().account.as_ref().unwrap();
        assert_eq!(t.r#type, "xray.proxy.trojan.Account");
        assert_eq!(trojan::Account::decode(&t.value[..]).unwrap().password, "p");
        assert!(found[1].clients[1].user.as_ref().unwrap_err().contains("password: missing"));
        assert!(found[2].clients[0].user.as_ref().unwrap_err().contains("not supported yet"));
    }

    #[test]
    fn socks_and_http_accounts_become_their_accounts_named_by_email_or_username() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let config = json!({ "inbounds": [
            { "tag": "so", "protocol": "socks", "settings": { "auth": "password", "accounts": [
                { "user": "u", "pass": "p" }, { "user": "v", "pass": "q", "email": "v@x", "level": 1 }, { "pass": "r" }
            ]}},
            { "tag": "ht", "protocol": "http", "settings": { "users": [{ "user": "h", "pass": "s" }] } }
        ]});
        std::fs::write(&path, config.to_string()).unwrap();
        let found = inbounds_with_users(&[path.to_str().unwrap().to_owned()]).unwrap_or_else(|_| panic!("parse"));
        let u = found[0].clients[0].user.as_ref().unwrap();
        assert_eq!((u.email.as_str(), found[0].clients[0].email.as_str()), ("u", "u"));
        let account = u.account.as_ref().unwrap();
        assert_eq!(account.r#type, "xray.proxy.socks.Account");
        let decoded = socks::Account::decode(&account.value[..]).unwrap();
        assert_eq!((decoded.username.as_str(), decoded.password.as_str()), ("u", "p"));
        let v = found[0].clients[1].user.as_ref().unwrap();
        assert_eq!((v.email.as_str(), v.level), ("v@x", 1));
        assert!(found[0].clients[2].user.as_ref().unwrap_err().contains("accounts[2].user: missing"));
        let h = found[1].clients[0].user.as_ref().unwrap();
        assert_eq!((h.email.as_str(), h.account.as_ref().unwrap().r#type.as_str()), ("h", "xray.proxy.http.Account"));
    }

    #[test]
    fn shadowsocks_clients_become_classic_or_2022_accounts() {
        use shardray_proto::xray::proxy::{shadowsocks, shadowsocks_2022};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let config = json!({ "inbounds": [
            { "tag": "ss", "protocol": "shadowsocks", "settings": { "method": "aes-128-gcm", "clients": [
                { "password": "a", "email": "a@x" },
                { "method": "chacha20-poly1305", "password": "b", "email": "b@x" },
                { "method": "aes-256-cfb", "password": "c", "email": "c@x" }
            ]}},
            { "tag": "ss22", "protocol": "shadowsocks", "settings": {
                "method": "2022-blake3-aes-128-gcm", "password": "AAAAAAAAAAAAAAAAAAAAAA==", "clients": [
                { "password": "AQEBAQEBAQEBAQEBAQEBAQ==", "email": "d@x", "level": 1 }
            ]}}
        ]});
        std::fs::write(&path, config.to_string()).unwrap();
        let found = inbounds_with_users(&[path.to_str().unwrap().to_owned()]).unwrap_or_else(|_| panic!("parse"));
        let account = |i: usize, j: usize| found[i].clients[j].user.as_ref().unwrap().account.clone().unwrap();
        let a = account(0, 0);
        assert_eq!(a.r#type, "xray.proxy.shadowsocks.Account");
        assert_eq!(shadowsocks::Account::decode(&a.value[..]).unwrap().cipher_type, 5, "the inbound's aes-128-gcm");
        assert_eq!(shadowsocks::Account::decode(&account(0, 1).value[..]).unwrap().cipher_type, 7);
        let err = found[0].clients[2].user.as_ref().unwrap_err();
        assert!(err.contains("clients[2].method") && err.contains("stream cipher"), "{err}");
        let d = account(1, 0);
        assert_eq!(d.r#type, "xray.proxy.shadowsocks_2022.Account");
        assert_eq!(shadowsocks_2022::Account::decode(&d.value[..]).unwrap().key, "AQEBAQEBAQEBAQEBAQEBAQ==");
    }

    #[test]
    fn vmess_clients_become_vmess_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let config = json!({ "inbounds": [{ "tag": "vm", "protocol": "vmess", "settings": { "clients": [
            { "id": "b831381d-6324-4d53-ad4f-8cda48b30811", "email": "v@x", "security": "zero", "alterId": 0 },
            { "id": "mapped", "email": "w@x", "alterId": 8 }
        ]}}]});
        std::fs::write(&path, config.to_string()).unwrap();
        let found = inbounds_with_users(&[path.to_str().unwrap().to_owned()]).unwrap_or_else(|_| panic!("parse"));
        let v = found[0].clients[0].user.as_ref().unwrap().account.as_ref().unwrap();
        assert_eq!(v.r#type, "xray.proxy.vmess.Account");
        let account = shardray_proto::xray::proxy::vmess::Account::decode(&v.value[..]).unwrap();
        assert_eq!(account.id, "b831381d-6324-4d53-ad4f-8cda48b30811");
        assert_eq!(account.security_settings.unwrap().r#type, 6, "zero");
        // The legacy alterId goes as written: the server refuses it by name.
        let w = found[0].clients[1].user.as_ref().unwrap().account.as_ref().unwrap();
        assert_eq!(shardray_proto::xray::proxy::vmess::Account::decode(&w.value[..]).unwrap().alter_id, 8);
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
