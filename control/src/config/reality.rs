//! Validates `streamSettings.realitySettings` (`security: "reality"`) as Xray's
//! infra/conf/transport_security.go builds it: an inbound's into `RealityServerSpec`, an
//! outbound's into `RealityClientSpec`.

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use shardray_core::spec::{FallbackDest, RealityClientSpec, RealityServerSpec, TransportSpec};

use super::error::ConfigError;
use super::validate::deserialize_at;

/// `realitySettings` (the server's keys, then the client's, which an inbound ignores).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRealitySettings {
    show: Option<bool>,
    target: Option<Value>,
    dest: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    xver: Option<u64>,
    server_names: Option<Vec<String>>,
    private_key: Option<String>,
    min_client_ver: Option<String>,
    max_client_ver: Option<String>,
    max_time_diff: Option<u64>,
    short_ids: Option<Vec<String>>,
    mldsa65_seed: Option<String>,
    limit_fallback_upload: Option<RawLimitFallback>,
    limit_fallback_download: Option<RawLimitFallback>,
    master_key_log: Option<String>,
    // A client's keys: Xray reads them only where no target is given (an outbound).
    fingerprint: Option<String>,
    server_name: Option<String>,
    password: Option<String>,
    public_key: Option<String>,
    short_id: Option<String>,
    mldsa65_verify: Option<String>,
    spider_x: Option<String>,
    /// 3x-ui's own bookkeeping (what its share links tell clients).
    settings: Option<RawPanelSettings>,
}

/// `limitFallbackUpload` / `limitFallbackDownload`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLimitFallback {
    after_bytes: Option<u64>,
    bytes_per_sec: Option<u64>,
    burst_bytes_per_sec: Option<u64>,
}

/// `realitySettings.settings` as 3x-ui writes it: read for share links only.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPanelSettings {
    fingerprint: Option<String>,
    spider_x: Option<String>,
    #[serde(flatten)]
    _rest: serde_json::Map<String, Value>,
}

/// `realitySettings` of an inbound under `path` (the `streamSettings` path), over `transport`.
pub(super) fn server(
    raw: Option<Value>,
    transport: &TransportSpec,
    path: &str,
) -> Result<RealityServerSpec, ConfigError> {
    let here = format!("{path}.realitySettings");
    match transport {
        TransportSpec::Raw | TransportSpec::Grpc(_) | TransportSpec::Xhttp(_) => {}
        other => {
            return Err(ConfigError::invalid(
                format!("{path}.network"),
                format!("REALITY runs over raw TCP, XHTTP or gRPC (as in Xray), not {:?}", other.name()),
            ))
        }
    }
    let raw: RawRealitySettings = match raw {
        None | Some(Value::Null) => return Err(ConfigError::invalid(here, "missing (security is \"reality\")")),
        Some(v) => deserialize_at(v, &here)?,
    };
    // The newer name wins where both are given, as in Xray.
    let (target_key, target) = match (raw.target, raw.dest) {
        (Some(t), _) => ("target", t),
        (None, Some(d)) => ("dest", d),
        (None, None) => return Err(ConfigError::invalid(format!("{here}.target"), "missing")),
    };
    let target_path = format!("{here}.{target_key}");
    let target = super::inbound::fallback_dest(&target, &target_path)?;
    match raw.kind.as_deref().unwrap_or("") {
        "" => {}
        "tcp" if matches!(target, FallbackDest::Tcp(_)) => {}
        "unix" if matches!(target, FallbackDest::Unix(_)) => {}
        kind => {
            return Err(ConfigError::invalid(
                format!("{here}.type"),
                format!("{kind:?} does not name the kind of {target_key} (\"tcp\" or \"unix\")"),
            ))
        }
    }
    let xver = match raw.xver.unwrap_or(0) {
        v @ 0..=2 => v as u8,
        v => return Err(ConfigError::invalid(format!("{here}.xver"), format!("{v} (only 0, 1 or 2)"))),
    };
    let server_names = raw.server_names.unwrap_or_default();
    if server_names.is_empty() {
        return Err(ConfigError::invalid(format!("{here}.serverNames"), "empty"));
    }
    let key_path = format!("{here}.privateKey");
    let private_key = match raw.private_key.as_deref() {
        None | Some("") => return Err(ConfigError::invalid(key_path, "empty")),
        Some(k) => x25519_key(k).ok_or_else(|| {
            ConfigError::invalid(&key_path, "not a 32-byte key in unpadded base64url (as `shardray x25519` prints)")
        })?,
    };
    let min_client_ver = version(raw.min_client_ver.as_deref(), &format!("{here}.minClientVer"))?;
    let max_client_ver = version(raw.max_client_ver.as_deref(), &format!("{here}.maxClientVer"))?;
    let ids = raw.short_ids.unwrap_or_default();
    if ids.is_empty() {
        return Err(ConfigError::invalid(format!("{here}.shortIds"), "empty"));
    }
    let mut short_ids = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        short_ids.push(short_id(id).ok_or_else(|| {
            ConfigError::invalid(format!("{here}.shortIds[{i}]"), format!("{id:?} is not up to 16 hex digits, even"))
        })?);
    }
    if raw.mldsa65_seed.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ConfigError::unsupported(format!("{here}.mldsa65Seed"), "REALITY's ML-DSA-65 signature"));
    }
    if raw.master_key_log.as_deref().is_some_and(|s| !s.is_empty() && s != "none") {
        return Err(ConfigError::unsupported(format!("{here}.masterKeyLog"), "masterKeyLog"));
    }
    for (name, limit) in
        [("limitFallbackUpload", &raw.limit_fallback_upload), ("limitFallbackDownload", &raw.limit_fallback_download)]
    {
        // Xray limits nothing while bytesPerSec is 0, whatever the other two say.
        if limit.as_ref().and_then(|l| l.bytes_per_sec).unwrap_or(0) != 0 {
            return Err(ConfigError::unsupported(
                format!("{here}.{name}.bytesPerSec"),
                "rate limits on the relay to the target",
            ));
        }
        let _ = limit.as_ref().map(|l| (l.after_bytes, l.burst_bytes_per_sec));
    }
    let panel = raw.settings.unwrap_or_default();
    let fingerprint =
        raw.fingerprint.or(panel.fingerprint).filter(|f| !f.is_empty()).unwrap_or_else(|| "chrome".to_owned());
    Ok(RealityServerSpec {
        show: raw.show.unwrap_or(false),
        target,
        xver,
        server_names,
        private_key,
        short_ids,
        min_client_ver,
        max_client_ver,
        max_time_diff_ms: raw.max_time_diff.unwrap_or(0),
        fingerprint,
        spider_x: raw.spider_x.or(panel.spider_x).unwrap_or_default(),
    })
}

/// `realitySettings` of an outbound under `path` (the `streamSettings` path), over `transport`:
/// the client's keys, as Xray reads them where no `target` is given.
pub(super) fn client(
    raw: Option<Value>,
    transport: &TransportSpec,
    path: &str,
) -> Result<RealityClientSpec, ConfigError> {
    let here = format!("{path}.realitySettings");
    if *transport != TransportSpec::Raw {
        return Err(ConfigError::unsupported(
            format!("{path}.network"),
            format!("a REALITY outbound over {:?} (raw TCP only)", transport.name()),
        ));
    }
    let raw: RawRealitySettings = match raw {
        None | Some(Value::Null) => return Err(ConfigError::invalid(here, "missing (security is \"reality\")")),
        Some(v) => deserialize_at(v, &here)?,
    };
    // A server's fields have no meaning here; Xray would build a server from them.
    let server_fields = [
        ("target", raw.target.is_some()),
        ("dest", raw.dest.is_some()),
        ("privateKey", raw.private_key.is_some()),
        ("serverNames", raw.server_names.is_some()),
        ("shortIds", raw.short_ids.is_some()),
        ("xver", raw.xver.is_some()),
        ("minClientVer", raw.min_client_ver.is_some()),
        ("maxClientVer", raw.max_client_ver.is_some()),
        ("maxTimeDiff", raw.max_time_diff.is_some()),
    ];
    if let Some((name, _)) = server_fields.iter().find(|(_, given)| *given) {
        let hint = match *name {
            "serverNames" => " (an outbound names one: serverName)",
            "shortIds" => " (an outbound sends one: shortId)",
            "privateKey" => " (an outbound takes the server's publicKey)",
            _ => "",
        };
        return Err(ConfigError::invalid(
            format!("{here}.{name}"),
            format!("a REALITY server's field on an outbound{hint}"),
        ));
    }
    let fingerprint = raw.fingerprint.unwrap_or_default().to_ascii_lowercase();
    if !known_fingerprint(&fingerprint) {
        return Err(ConfigError::invalid(
            format!("{here}.fingerprint"),
            format!("{fingerprint:?} is not a fingerprint Xray knows (\"chrome\", \"firefox\", \"safari\", ...)"),
        ));
    }
    // The newer name wins, as in Xray.
    let (key_name, key) = match (raw.password.filter(|p| !p.is_empty()), raw.public_key.filter(|p| !p.is_empty())) {
        (Some(p), _) => ("password", p),
        (None, Some(k)) => ("publicKey", k),
        (None, None) => return Err(ConfigError::invalid(format!("{here}.publicKey"), "empty")),
    };
    let public_key = x25519_key(&key).ok_or_else(|| {
        ConfigError::invalid(
            format!("{here}.{key_name}"),
            "not a 32-byte key in unpadded base64url (the server's `Password (PublicKey)`)",
        )
    })?;
    let id = raw.short_id.unwrap_or_default();
    let short_id = short_id(&id).ok_or_else(|| {
        ConfigError::invalid(format!("{here}.shortId"), format!("{id:?} is not up to 16 hex digits, even"))
    })?;
    if raw.mldsa65_verify.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ConfigError::unsupported(format!("{here}.mldsa65Verify"), "REALITY's ML-DSA-65 signature"));
    }
    if raw.master_key_log.as_deref().is_some_and(|s| !s.is_empty() && s != "none") {
        return Err(ConfigError::unsupported(format!("{here}.masterKeyLog"), "masterKeyLog"));
    }
    // spiderX is what Xray's client crawls when the camouflage site answers instead of the
    // server; shardray closes such a connection, so it is checked as Xray does and not used.
    if let Some(spider) = raw.spider_x.as_deref().filter(|s| !s.is_empty()) {
        if !spider.starts_with('/') {
            return Err(ConfigError::invalid(format!("{here}.spiderX"), format!("{spider:?} does not start with '/'")));
        }
    }
    Ok(RealityClientSpec {
        server_name: raw.server_name.unwrap_or_default(),
        public_key,
        short_id,
        fingerprint,
        show: raw.show.unwrap_or(false),
    })
}

/// The fingerprint names Xray's REALITY client takes (`unsafe` and `hellogolang` it refuses);
/// shardray's ClientHello is Chrome-shaped whichever is named.
fn known_fingerprint(name: &str) -> bool {
    const PRESETS: [&str; 12] = [
        "",
        "chrome",
        "firefox",
        "safari",
        "ios",
        "android",
        "edge",
        "360",
        "qq",
        "random",
        "randomized",
        "randomizednoalpn",
    ];
    PRESETS.contains(&name) || (name.starts_with("hello") && name != "hellogolang")
}

/// A 32-byte X25519 key in unpadded base64url, as Xray reads `privateKey`.
pub fn x25519_key(s: &str) -> Option<[u8; 32]> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()
}

/// `x.y.z` with up to three parts of 0..=255 (missing parts are 0), as Xray parses it.
fn version(s: Option<&str>, path: &str) -> Result<Option<[u8; 3]>, ConfigError> {
    let Some(s) = s.filter(|s| !s.is_empty()) else { return Ok(None) };
    let mut out = [0u8; 3];
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 3 {
        return Err(ConfigError::invalid(path, format!("{s:?} has more than three parts")));
    }
    for (i, part) in parts.iter().enumerate() {
        out[i] = part.parse().map_err(|_| ConfigError::invalid(path, format!("{s:?}: part {i} is not 0 to 255")))?;
    }
    Ok(Some(out))
}

/// A short id: up to 16 hex digits (an even count), zero-padded to 8 bytes; `""` is all zeros.
fn short_id(s: &str) -> Option<[u8; 8]> {
    if s.len() > 16 || !s.len().is_multiple_of(2) {
        return None;
    }
    let mut out = [0u8; 8];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "wA9uNf9Ho9w-mL4fa5tMLrDXsOUbR-Te4BoQtxu9bHc";

    fn load(v: Value) -> Result<RealityServerSpec, ConfigError> {
        server(Some(v), &TransportSpec::Raw, "s")
    }

    #[test]
    fn reads_xray_keys_and_defaults() {
        let spec = load(json!({ "dest": 8443, "serverNames": ["a.example"], "privateKey": KEY,
            "shortIds": ["", "0123456789abcdef", "ab"], "xver": 1, "maxTimeDiff": 60000,
            "minClientVer": "1.8", "publicKey": "ignored", "fingerprint": "firefox",
            "settings": { "spiderX": "/x", "publicKey": "p" } }))
        .unwrap();
        assert_eq!(
            spec.short_ids,
            vec![[0; 8], [1, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef], [0xab, 0, 0, 0, 0, 0, 0, 0]]
        );
        assert_eq!(spec.min_client_ver, Some([1, 8, 0]));
        assert_eq!(spec.max_client_ver, None);
        assert_eq!(spec.max_time_diff_ms, 60000);
        assert_eq!(spec.xver, 1);
        assert_eq!(spec.fingerprint, "firefox");
        assert_eq!(spec.spider_x, "/x");
        assert!(matches!(&spec.target, FallbackDest::Tcp(d) if d.port == 8443));
        let unix = load(
            json!({ "target": "/run/site.sock", "dest": 1, "serverNames": ["a"], "privateKey": KEY, "shortIds": [""] }),
        )
        .unwrap();
        assert!(matches!(unix.target, FallbackDest::Unix(_)));
        assert_eq!(unix.fingerprint, "chrome");
    }

    #[test]
    fn refuses_by_path() {
        let base = || json!({ "target": "example.com:443", "serverNames": ["a"], "privateKey": KEY, "shortIds": [""] });
        let err = |patch: Value| {
            let mut v = base();
            for (k, val) in patch.as_object().unwrap() {
                if val.is_null() {
                    v.as_object_mut().unwrap().remove(k);
                } else {
                    v[k] = val.clone();
                }
            }
            load(v).unwrap_err().to_string()
        };
        assert!(err(json!({ "target": null })).starts_with("s.realitySettings.target: missing"));
        assert!(err(json!({ "serverNames": [] })).starts_with("s.realitySettings.serverNames: empty"));
        assert!(err(json!({ "privateKey": "abc" })).starts_with("s.realitySettings.privateKey: not a 32-byte key"));
        assert!(err(json!({ "shortIds": ["abc"] })).starts_with("s.realitySettings.shortIds[0]:"));
        assert!(err(json!({ "shortIds": ["0123456789abcdef01"] })).starts_with("s.realitySettings.shortIds[0]:"));
        assert!(err(json!({ "xver": 3 })).starts_with("s.realitySettings.xver:"));
        assert!(err(json!({ "minClientVer": "1.2.3.4" })).starts_with("s.realitySettings.minClientVer:"));
        assert!(err(json!({ "maxClientVer": "1.256" })).starts_with("s.realitySettings.maxClientVer:"));
        assert!(err(json!({ "type": "unix" })).starts_with("s.realitySettings.type:"));
        assert!(err(json!({ "mldsa65Seed": KEY })).starts_with("s.realitySettings.mldsa65Seed:"));
        assert!(err(json!({ "limitFallbackUpload": { "bytesPerSec": 1 } }))
            .starts_with("s.realitySettings.limitFallbackUpload.bytesPerSec:"));
        // Zero limits limit nothing in Xray either: accepted.
        let mut ok = base();
        ok["limitFallbackDownload"] = json!({ "afterBytes": 5, "bytesPerSec": 0 });
        assert!(load(ok).is_ok());
        let ws = TransportSpec::Ws(Box::default());
        let e = server(Some(base()), &ws, "s").unwrap_err().to_string();
        assert!(e.starts_with("s.network:"), "{e}");
        assert!(server(None, &TransportSpec::Raw, "s")
            .unwrap_err()
            .to_string()
            .starts_with("s.realitySettings: missing"));
    }
}
