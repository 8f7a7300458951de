//! Loads V2Ray/Xray JSON configs (comments allowed) and validates them into `spec::Config`.
//!
//! Two stages: the text becomes raw serde structs with upstream's field names (`raw`), which
//! are then checked and turned into the spec types (`validate` and the section modules). Every
//! error names the JSON path of what is wrong, e.g. `inbounds[1].settings.clients[0].id`.

mod dns;
mod error;
pub(crate) mod geodata;
mod inbound;
mod merge;
mod outbound;
mod raw;
mod reality;
mod routing;
pub mod units;
mod validate;
mod xhttp;

#[cfg(test)]
mod tests;

use std::io::Read;
use std::path::{Path, PathBuf};

use json_comments::StripComments;
use serde_json::{Map, Value};

pub use self::error::{ConfigError, ConfigErrorKind};
pub use self::inbound::{load_grpc_settings, load_inbound, parse_user_id, shadowsocks_method, vmess_security};
pub use self::reality::x25519_key;
pub use self::xhttp::load_xhttp_settings;
pub use shardray_core::spec::Config;

use self::raw::RawConfig;

/// Loads and validates one config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let doc = read_document(path)?;
    build(doc).map_err(|e| e.in_file(path))
}

/// Loads several config files merged in order (see [`load_dir`] for how they merge).
pub fn load_files(paths: &[PathBuf]) -> Result<Config, ConfigError> {
    match paths {
        [] => Err(ConfigError::invalid("", "no config file given")),
        [one] => load_file(one),
        many => {
            let mut merged = Map::new();
            for path in many {
                let doc = read_document(path)?;
                // Check each file's shape on its own first, so such errors name their file
                // (unknown keys are reported once, from the merged document).
                validate::collect_ignored(|| parse_raw(Value::Object(doc.clone()))).0.map_err(|e| e.in_file(path))?;
                merge::merge_config(&mut merged, doc);
            }
            build(merged)
        }
    }
}

/// Loads every `*.json` file of a directory (`-confdir`), sorted by name, merged as upstream
/// merges several configs: objects merge key by key with later files winning, `inbounds` and
/// `outbounds` are concatenated (an entry whose tag matches an earlier one replaces it), and
/// `routing.rules` are concatenated.
pub fn load_dir(dir: &Path) -> Result<Config, ConfigError> {
    let dir_name = dir.display().to_string();
    let entries = std::fs::read_dir(dir).map_err(|e| ConfigError::io(&dir_name, dir, &e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ConfigError::io(&dir_name, dir, &e))?;
        let path = entry.path();
        let is_json = path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
        if is_json && path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(ConfigError::invalid(dir_name, "holds no *.json file"));
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    load_files(&paths)
}

/// The `outbounds` of a JSON document (a config or a fragment of one), each validated as a
/// config's outbounds are: for `shardray api ado`, which sends them to a running server.
pub fn outbounds_of(doc: &Value) -> Result<Vec<shardray_core::spec::OutboundSpec>, ConfigError> {
    let list = doc.get("outbounds").cloned().ok_or_else(|| ConfigError::invalid("outbounds", "missing"))?;
    let raw: Vec<raw::RawOutbound> = validate::deserialize_at(list, "outbounds")?;
    outbound::outbounds(Some(raw), None)
}

/// The `routing` section of a JSON document, validated as a config's is, except that rules may
/// name outbounds the document does not have: for `shardray api adrules` and `sib`, whose rules
/// go to a running server's outbounds.
pub fn routing_of(doc: &Value) -> Result<shardray_core::spec::RoutingSpec, ConfigError> {
    let section = doc.get("routing").cloned().ok_or_else(|| ConfigError::invalid("routing", "missing"))?;
    let raw: raw::RawRouting = validate::deserialize_at(section, "routing")?;
    routing::routing(Some(raw), None, &[], &mut Vec::new())
}

/// What `geoip:private` stands for, for rules that arrive through the API.
pub fn private_nets() -> Vec<ipnet::IpNet> {
    routing::PRIVATE_NETS.iter().map(|n| n.parse().expect("valid CIDR")).collect()
}

/// Loads and validates a config given as text.
pub fn load_str(text: &str) -> Result<Config, ConfigError> {
    build(parse_document(text, "")?)
}

/// Reads a file and parses it as a JSON object (comments allowed).
fn read_document(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(&name, path, &e))?;
    parse_document(&text, &name)
}

/// Strips comments and parses the text as a JSON object; `name` is the file, for errors.
fn parse_document(text: &str, name: &str) -> Result<Map<String, Value>, ConfigError> {
    let mut plain = String::with_capacity(text.len());
    StripComments::new(text.as_bytes())
        .read_to_string(&mut plain)
        .map_err(|e| syntax_error(name, format!("cannot strip comments: {e}")))?;
    match serde_json::from_str::<Value>(&plain) {
        Ok(Value::Object(doc)) => Ok(doc),
        Ok(_) => Err(syntax_error(name, "the config must be a JSON object".to_string())),
        Err(e) => {
            let text = e.to_string();
            let what = match text.rfind(" at line ") {
                Some(at) => &text[..at],
                None => &text,
            };
            Err(syntax_error(name, format!("invalid JSON at line {}, column {}: {what}", e.line(), e.column())))
        }
    }
}

fn syntax_error(name: &str, message: String) -> ConfigError {
    ConfigError { path: name.to_string(), kind: ConfigErrorKind::Syntax, message, file: None }
}

/// The raw structs of a document, errors naming JSON paths.
fn parse_raw(doc: Value) -> Result<RawConfig, ConfigError> {
    validate::deserialize_at(doc, "")
}

/// A parsed (and merged) document to a validated config.
fn build(doc: Map<String, Value>) -> Result<Config, ConfigError> {
    let doc = Value::Object(doc);
    let mut notes = mapped_ids(&doc);
    notes.extend(ignored_fingerprints(&doc));
    notes.extend(ignored_unix_sockopts(&doc));
    let (config, ignored) = validate::collect_ignored(|| validate::validate(parse_raw(doc)?));
    let mut config = config?;
    config.notes.splice(0..0, notes);
    config.ignored_keys = ignored;
    Ok(config)
}

/// A note for every outbound `tlsSettings.fingerprint`: shardray has no uTLS, so its
/// ClientHello is rustls's own whatever the fingerprint asks for; and for a
/// `realitySettings.fingerprint` other than Chrome's, whose hello is always Chrome-shaped.
fn ignored_fingerprints(doc: &Value) -> Vec<String> {
    let outbounds = doc.get("outbounds").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut notes = Vec::new();
    for (i, o) in outbounds.iter().enumerate() {
        let fingerprint = |at: &str| o.pointer(at).and_then(Value::as_str).filter(|f| !f.is_empty());
        if let Some(fp) = fingerprint("/streamSettings/tlsSettings/fingerprint") {
            notes.push(format!(
                "outbounds[{i}].streamSettings.tlsSettings.fingerprint: {fp:?} is ignored (no uTLS: the TLS \
                 ClientHello is rustls's own)"
            ));
        }
        if let Some(fp) = fingerprint("/streamSettings/realitySettings/fingerprint") {
            if !fp.eq_ignore_ascii_case("chrome") {
                notes.push(format!(
                    "outbounds[{i}].streamSettings.realitySettings.fingerprint: {fp:?} is ignored (no uTLS: the \
                     REALITY ClientHello is shardray's own, Chrome-shaped)"
                ));
            }
        }
    }
    notes
}

/// A note for every TCP socket option of an inbound that listens on a Unix socket, where the
/// kernel has no such option: the operator should know it does nothing there.
fn ignored_unix_sockopts(doc: &Value) -> Vec<String> {
    // What still means something on a Unix socket: the PROXY header and the trusted headers.
    const KEPT: [&str; 2] = ["acceptProxyProtocol", "trustedXForwardedFor"];
    let inbounds = doc.get("inbounds").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut notes = Vec::new();
    for (i, inbound) in inbounds.iter().enumerate() {
        let listen = inbound.get("listen").and_then(Value::as_str).unwrap_or("").trim();
        if !(listen.starts_with('/') || listen.starts_with('@')) {
            continue;
        }
        let Some(sockopt) = inbound.pointer("/streamSettings/sockopt").and_then(Value::as_object) else { continue };
        for key in sockopt.keys().filter(|k| !KEPT.contains(&k.as_str())) {
            notes.push(format!("inbounds[{i}].streamSettings.sockopt.{key}: ignored on a Unix socket"));
        }
    }
    notes
}

/// A note for every client id that is not a UUID but stands for one, as Xray maps it: the
/// links and every client must then use the UUID, which the operator never wrote.
fn mapped_ids(doc: &Value) -> Vec<String> {
    let mut notes = Vec::new();
    let inbounds = doc.get("inbounds").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (i, inbound) in inbounds.iter().enumerate() {
        let clients = inbound.pointer("/settings/clients").and_then(Value::as_array).map(Vec::as_slice);
        for (j, client) in clients.unwrap_or_default().iter().enumerate() {
            let Some(id) = client.get("id").and_then(Value::as_str) else { continue };
            if uuid::Uuid::try_parse(id).is_err() {
                if let Some(mapped) = parse_user_id(id) {
                    notes.push(format!(
                        "inbounds[{i}].settings.clients[{j}].id: {id:?} is not a UUID; it stands for {mapped} \
                         (Xray's mapping), which clients and links must use"
                    ));
                }
            }
        }
    }
    notes
}
