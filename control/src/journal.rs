//! The journal: every user, inbound, outbound and routing change the API accepted, appended
//! and synced to disk before the call returns, so a restart, even after `kill -9`, loses none.
//! At start it is replayed over the config and rewritten: the config inbounds the API removed,
//! the inbounds it added, one snapshot record per inbound's users, then the outbound and
//! routing records that still applied, in order (they are few, and replaying them over the
//! config keeps the config's own edits). An added inbound is stored as config JSON, TLS keys
//! included, so the state directory must be kept as private as the config. Outbounds and rules
//! are stored as the API's protobuf messages, base64-encoded. Balancer overrides are not kept,
//! as upstream does not keep them either.
//!
//! One JSON object per line. A torn last line (a crash mid-write) is dropped with a warning:
//! its call never returned, so no client was told it succeeded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use prost::Message;
use serde_json::{json, Value};
use shardray_core::change::Change;
use shardray_core::spec::{Account, UserSpec, VlessFlow};
use shardray_proto::xray::app::router;
use shardray_proto::xray::core::OutboundHandlerConfig;

use crate::convert::routes::{outbound_config, outbound_spec, router_config, routing_specs};
use crate::convert::typed;

use crate::convert::inbound::{inbound_config, inbound_json};
use crate::registry::UserSets;

/// The journal file in a state directory.
const FILE: &str = "journal.jsonl";

/// An open journal.
pub struct Journal {
    path: PathBuf,
    file: File,
}

/// A journal line that could not be read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` and reads its records. Unreadable lines
    /// are returned separately so the caller can report them.
    pub fn open(dir: &Path) -> io::Result<(Journal, Vec<Change>, Vec<InvalidRecord>)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let mut changes = Vec::new();
        let mut invalid = Vec::new();
        if path.exists() {
            let lines: Vec<String> = BufReader::new(File::open(&path)?).lines().collect::<Result<_, _>>()?;
            let last = lines.len();
            for (i, line) in lines.iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(line).map_err(|e| e.to_string()).and_then(|v| decode(&v)) {
                    Ok(change) => changes.push(change),
                    // A torn final line is the normal trace of a crash mid-append: its call
                    // never returned. Reported, and gone with the compaction that follows.
                    Err(_) if i + 1 == last => invalid.push(InvalidRecord {
                        line: i + 1,
                        reason: "torn by a crash mid-write (its call never returned); dropped".into(),
                    }),
                    Err(reason) => invalid.push(InvalidRecord { line: i + 1, reason }),
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok((Journal { path, file }, changes, invalid))
    }

    /// Appends one change and waits until it is on disk. Kicks change no state and are not
    /// written.
    pub fn append(&mut self, change: &Change) -> io::Result<()> {
        let Some(record) = encode(change)? else {
            return Ok(());
        };
        let mut line = record.to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()
    }

    /// Replaces the journal with the state as it is now: the config inbounds removed, the
    /// inbounds added, one `replace` record per inbound with users, then `routes`, the outbound
    /// and routing changes that applied. Written to a temporary file, synced, then renamed over
    /// the journal.
    /// `config_quotas` are the (inbound, email) pairs the config gives a quota or expiry: one
    /// the API cleared since is written as cleared, or the config's would come back.
    pub fn compact(
        &mut self,
        sets: &UserSets,
        routes: &[Change],
        config_quotas: &[(String, String)],
    ) -> io::Result<()> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut out = File::create(&tmp)?;
        let mut records = Vec::new();
        for tag in sets.removed_from_config() {
            records.push(Change::RemoveInbound { tag: tag.clone() });
        }
        for inbound in sets.inbounds() {
            if !inbound.from_config {
                records.push(Change::AddInbound { spec: inbound.spec.clone() });
            }
            if inbound.has_users {
                let mut users: Vec<UserSpec> = inbound.users.values().collect();
                users.sort_by(|a, b| a.email.cmp(&b.email));
                records.push(Change::ReplaceUsers { inbound: inbound.tag.clone(), users });
            }
        }
        // Quotas belong to emails: one record each, on the first inbound that lists it.
        let book = sets.slots();
        for (slot, q) in book.book().quotas() {
            let (Some(view), spec) = (book.get(slot), q.cell.spec()) else { continue };
            let owner = sets.inbounds().iter().find(|i| i.by_email(view.email).is_some_and(|u| u.slot == slot));
            if let (Some(owner), true) = (owner, spec.is_set()) {
                records.push(Change::SetQuota {
                    inbound: owner.tag.clone(),
                    email: view.email.to_string(),
                    quota: spec,
                });
            }
        }
        for (tag, email) in config_quotas {
            let Some(inbound) = sets.inbounds().iter().find(|i| i.tag == *tag) else { continue };
            let Some(user) = inbound.by_email(email) else { continue };
            if book.book().quota(user.slot).is_none_or(|q| !q.cell.spec().is_set()) {
                records.push(Change::SetQuota {
                    inbound: tag.clone(),
                    email: email.clone(),
                    quota: Default::default(),
                });
            }
        }
        for change in records.iter().chain(routes) {
            if let Some(record) = encode(change)? {
                writeln!(out, "{record}")?;
            }
        }
        out.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // The rename itself must survive a crash.
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
    }
}

/// A user as a record keeps it: a VLESS user by `id`, a Trojan user by `password`, a VMess
/// user by `vmess` (its id) with its `security`.
fn user_json(u: &UserSpec) -> Value {
    match &u.account {
        Account::Vless(id, VlessFlow::None) => json!({ "id": id.to_string(), "email": u.email, "level": u.level }),
        Account::Vless(id, flow) => {
            json!({ "id": id.to_string(), "flow": flow.name(), "email": u.email, "level": u.level })
        }
        Account::Trojan(password) => json!({ "password": &**password, "email": u.email, "level": u.level }),
        Account::Vmess { id, security } => json!({
            "vmess": id.to_string(), "security": security.name(), "email": u.email, "level": u.level
        }),
        Account::Socks(a) => json!({
            "socks": { "user": &*a.username, "pass": &*a.password }, "email": u.email, "level": u.level
        }),
        Account::Http(a) => json!({
            "http": { "user": &*a.username, "pass": &*a.password }, "email": u.email, "level": u.level
        }),
        Account::Shadowsocks { method, password } => json!({
            "ss_method": method.name(), "ss_password": &**password, "email": u.email, "level": u.level
        }),
        Account::Shadowsocks2022 { key } => json!({ "ss2022_key": &**key, "email": u.email, "level": u.level }),
    }
}

fn encode(change: &Change) -> io::Result<Option<Value>> {
    Ok(Some(match change {
        Change::AddUsers { inbound, users } => {
            json!({ "op": "add", "inbound": inbound, "users": users.iter().map(user_json).collect::<Vec<_>>() })
        }
        Change::RemoveUsers { inbound, emails } => {
            json!({ "op": "remove", "inbound": inbound, "emails": emails })
        }
        Change::SetLevel { inbound, email, level } => {
            json!({ "op": "level", "inbound": inbound, "email": email, "level": level })
        }
        Change::ReplaceUsers { inbound, users } => {
            json!({ "op": "replace", "inbound": inbound, "users": users.iter().map(user_json).collect::<Vec<_>>() })
        }
        Change::AddInbound { spec } => {
            let inbound = inbound_json(&inbound_config(spec)).map_err(io::Error::other)?;
            json!({ "op": "add_inbound", "inbound": inbound })
        }
        Change::RemoveInbound { tag } => json!({ "op": "remove_inbound", "tag": tag }),
        Change::SetQuota { inbound, email, quota } => {
            json!({ "op": "quota", "inbound": inbound, "email": email, "quota": quota.bytes, "expiry": quota.expiry })
        }
        Change::AddOutbound { outbound } => {
            json!({ "op": "add_outbound", "config": b64(&outbound_config(outbound).encode_to_vec()) })
        }
        Change::RemoveOutbound { tag } => json!({ "op": "remove_outbound", "tag": tag }),
        Change::AddRules { rules, balancers, append } => {
            let config = router_config(rules, balancers).encode_to_vec();
            json!({ "op": "add_rules", "config": b64(&config), "append": append })
        }
        Change::RemoveRule { rule_tag } => json!({ "op": "remove_rule", "rule_tag": rule_tag }),
        // A reload's routes come from the config files, which the next start reads again.
        // A suspension follows from the quota, the expiry and the use, which are all kept.
        Change::Kick { .. }
        | Change::Suspend { .. }
        | Change::OverrideBalancer { .. }
        | Change::ReplaceInbound { .. }
        | Change::ReplaceRoutes { .. }
        | Change::SetPolicy { .. } => return Ok(None),
    }))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The protobuf bytes of a record's `config`.
fn config_bytes(v: &Value) -> Result<Vec<u8>, String> {
    let text = v.get("config").and_then(Value::as_str).ok_or("config: missing or not a string")?;
    base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("config: {e}"))
}

/// An outbound or routing record.
fn decode_route(op: &str, v: &Value) -> Result<Change, String> {
    let text = |key: &str| -> Result<String, String> {
        v.get(key).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("{key}: missing or not a string"))
    };
    match op {
        "add_outbound" => {
            let config = OutboundHandlerConfig::decode(&config_bytes(v)?[..]).map_err(|e| format!("config: {e}"))?;
            Ok(Change::AddOutbound { outbound: outbound_spec(&config).map_err(|e| e.to_string())? })
        }
        "remove_outbound" => Ok(Change::RemoveOutbound { tag: text("tag")? }),
        "add_rules" => {
            let config = router::Config::decode(&config_bytes(v)?[..]).map_err(|e| format!("config: {e}"))?;
            let (rules, balancers) =
                routing_specs(&typed("xray.app.router.Config", &config)).map_err(|e| e.to_string())?;
            let append = v.get("append").and_then(Value::as_bool).unwrap_or(false);
            Ok(Change::AddRules { rules, balancers, append })
        }
        "remove_rule" => Ok(Change::RemoveRule { rule_tag: text("rule_tag")? }),
        other => Err(format!("op: unknown {other:?}")),
    }
}

fn decode(v: &Value) -> Result<Change, String> {
    let text = |key: &str| -> Result<String, String> {
        v.get(key).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("{key}: missing or not a string"))
    };
    let users = || -> Result<Vec<UserSpec>, String> {
        let list = v.get("users").and_then(Value::as_array).ok_or("users: missing")?;
        list.iter()
            .map(|u| {
                let proxy = |v: &Value| -> Result<shardray_core::spec::ProxyAccount, String> {
                    let field = |k: &str| v.get(k).and_then(Value::as_str).ok_or(format!("users[].{k}: bad"));
                    Ok(shardray_core::spec::ProxyAccount {
                        username: field("user")?.into(),
                        password: field("pass")?.into(),
                    })
                };
                let text = |key: &str| u.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
                let account = match (u.get("password"), u.get("vmess")) {
                    _ if u.get("socks").is_some() => Account::Socks(proxy(&u["socks"])?),
                    _ if u.get("http").is_some() => Account::Http(proxy(&u["http"])?),
                    _ if text("ss2022_key").is_some() => {
                        Account::Shadowsocks2022 { key: text("ss2022_key").expect("checked").into() }
                    }
                    _ if text("ss_method").is_some() => Account::Shadowsocks {
                        method: text("ss_method")
                            .and_then(|m| shardray_wire::shadowsocks::Method::parse(m).ok())
                            .ok_or("users[].ss_method: bad")?,
                        password: text("ss_password").ok_or("users[].ss_password: bad")?.into(),
                    },
                    (Some(p), _) => {
                        Account::Trojan(p.as_str().filter(|p| !p.is_empty()).ok_or("users[].password: bad")?.into())
                    }
                    (None, Some(id)) => Account::Vmess {
                        id: id.as_str().and_then(|s| s.parse().ok()).ok_or("users[].vmess: bad")?,
                        security: crate::config::vmess_security(u.get("security").and_then(Value::as_str)),
                    },
                    (None, None) => Account::Vless(
                        u.get("id").and_then(Value::as_str).and_then(|s| s.parse().ok()).ok_or("users[].id: bad")?,
                        match u.get("flow").and_then(Value::as_str) {
                            None | Some("") => VlessFlow::None,
                            Some(shardray_wire::vision::FLOW) => VlessFlow::Vision,
                            Some(_) => return Err("users[].flow: bad".to_owned()),
                        },
                    ),
                };
                let email = u.get("email").and_then(Value::as_str).ok_or("users[].email: missing")?.to_owned();
                let level = u.get("level").and_then(Value::as_u64).unwrap_or(0) as u32;
                Ok(UserSpec { account, email, level, quota: Default::default() })
            })
            .collect()
    };
    let op = text("op")?;
    if matches!(op.as_str(), "add_outbound" | "remove_outbound" | "add_rules" | "remove_rule") {
        return decode_route(&op, v);
    }
    match op.as_str() {
        "add_inbound" => {
            let inbound = v.get("inbound").cloned().ok_or("inbound: missing")?;
            let spec = crate::config::load_inbound(inbound, "inbound").map_err(|e| e.to_string())?;
            return Ok(Change::AddInbound { spec: std::sync::Arc::new(spec) });
        }
        "remove_inbound" => return Ok(Change::RemoveInbound { tag: text("tag")? }),
        _ => {}
    }
    let inbound = text("inbound")?;
    match op.as_str() {
        "add" => Ok(Change::AddUsers { inbound, users: users()? }),
        "replace" => Ok(Change::ReplaceUsers { inbound, users: users()? }),
        "remove" => {
            let emails = v.get("emails").and_then(Value::as_array).ok_or("emails: missing")?;
            let emails = emails.iter().filter_map(Value::as_str).map(str::to_owned).collect();
            Ok(Change::RemoveUsers { inbound, emails })
        }
        "level" => {
            let level = v.get("level").and_then(Value::as_u64).ok_or("level: missing")? as u32;
            Ok(Change::SetLevel { inbound, email: text("email")?, level })
        }
        "quota" => {
            let number = |key: &str| v.get(key).and_then(Value::as_u64).ok_or(format!("{key}: missing"));
            let quota = shardray_core::quota::QuotaSpec { bytes: number("quota")?, expiry: number("expiry")? };
            Ok(Change::SetQuota { inbound, email: text("email")?, quota })
        }
        other => Err(format!("op: unknown {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u8) -> UserSpec {
        UserSpec {
            account: Account::Vless(uuid::Uuid::from_bytes([n; 16]), VlessFlow::None),
            email: format!("u{n}@x"),
            level: u32::from(n),
            quota: Default::default(),
        }
    }

    fn trojan_user(n: u8) -> UserSpec {
        UserSpec {
            account: Account::Trojan(format!("pw {n} \"quoted\"").into()),
            email: format!("t{n}@x"),
            level: 1,
            quota: Default::default(),
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let changes = vec![
            Change::AddUsers { inbound: "in".into(), users: vec![user(1), user(2)] },
            Change::RemoveUsers { inbound: "in".into(), emails: vec!["u1@x".into()] },
            Change::SetLevel { inbound: "in".into(), email: "u2@x".into(), level: 7 },
            Change::SetQuota {
                inbound: "in".into(),
                email: "u2@x".into(),
                quota: shardray_core::quota::QuotaSpec { bytes: 10 << 20, expiry: 1_798_761_600 },
            },
            Change::ReplaceUsers { inbound: "in".into(), users: vec![user(3)] },
            Change::AddUsers { inbound: "tj".into(), users: vec![trojan_user(1), trojan_user(2)] },
        ];
        {
            let (mut j, old, bad) = Journal::open(dir.path()).unwrap();
            assert!(old.is_empty() && bad.is_empty());
            for c in &changes {
                j.append(c).unwrap();
            }
            j.append(&Change::Kick { inbound: "in".into(), email: "u3@x".into() }).unwrap();
        }
        // A crash in the middle of the next append.
        let path = dir.path().join(FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"op\":\"add\",\"inb").unwrap();
        let (_, read, bad) = Journal::open(dir.path()).unwrap();
        assert_eq!(read, changes);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(bad[0].line, changes.len() + 1);
        assert!(bad[0].reason.starts_with("torn by a crash"), "{bad:?}");
    }

    #[test]
    fn route_records_round_trip_and_survive_compaction() {
        use shardray_core::spec::{BalancerSpec, BlackholeSpec, OutboundProtocol, OutboundSpec, PortRange, RuleSpec};
        let dir = tempfile::tempdir().unwrap();
        let outbound = OutboundSpec {
            tag: "px".into(),
            send_through: None,
            sockopt: Default::default(),
            protocol: OutboundProtocol::Blackhole(BlackholeSpec { http_response: true }),
        };
        let rule = RuleSpec {
            rule_tag: "r".into(),
            ports: vec![PortRange { from: 1, to: 2 }],
            outbound_tag: "px".into(),
            ..Default::default()
        };
        let balancer = BalancerSpec { tag: "b".into(), selectors: vec!["p".into()], ..Default::default() };
        let changes = vec![
            Change::AddOutbound { outbound },
            Change::AddRules { rules: vec![rule], balancers: vec![balancer], append: true },
            Change::RemoveRule { rule_tag: "r".into() },
            Change::RemoveOutbound { tag: "px".into() },
        ];
        {
            let (mut j, _, _) = Journal::open(dir.path()).unwrap();
            for c in &changes {
                j.append(c).unwrap();
            }
        }
        let (mut j, read, bad) = Journal::open(dir.path()).unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(read, changes);
        j.compact(&UserSets::default(), &read[..2], &[]).unwrap();
        let (_, read, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(read, changes[..2]);
    }

    #[test]
    fn a_corrupt_middle_line_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE),
            "{\"op\":\"zap\",\"inbound\":\"in\"}\n{\"op\":\"remove\",\"inbound\":\"in\",\"emails\":[]}\n",
        )
        .unwrap();
        let (_, read, bad) = Journal::open(dir.path()).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(bad, vec![InvalidRecord { line: 1, reason: "op: unknown \"zap\"".into() }]);
    }
}
