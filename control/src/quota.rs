//! Quotas and expiry on the control side: reading `expiry` from config and the command line
//! (a `quota` is read by `config::units::parse_bytes`), the watch that suspends and resumes
//! users, and the use kept across restarts.
//!
//! The shards count a quota'd user's bytes into its cell and stop each session at the quota
//! themselves (see `shardray_core::quota`). The watch, every `WATCH_EVERY`, compares each cell
//! with what the registry last told the shards, and suspends (quota used up, expiry passed) or
//! resumes users through the registry, so that every shard refuses or accepts them again, and
//! publishes the event. A change that may resume a user (a raised quota, a reset) runs the
//! same comparison at once instead of waiting for the watch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardray_core::quota::SuspendReason;
use shardray_core::spec::LogLevel;

use crate::api::ApiState;
use crate::registry::{ChangeError, Registry, UserSets};

/// How often the watch looks at the cells: an expiry is enforced within this much.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

/// The file in the state directory that keeps each quota'd user's use.
const USE_FILE: &str = "quota-use.json";

/// Unix seconds from a number or an RFC 3339 time: `1798761600`, `"2027-01-01T00:00:00Z"`.
pub fn parse_expiry(v: &serde_json::Value) -> Result<u64, String> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| format!("{n} is not a time in unix seconds")),
        serde_json::Value::String(s) => parse_expiry_str(s),
        other => Err(format!("expected unix seconds or an RFC 3339 time, found {other}")),
    }
}

/// `parse_expiry` for a string: RFC 3339, or unix seconds in digits.
pub fn parse_expiry_str(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| format!("{s:?}: too large"));
    }
    let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?}: not an RFC 3339 time such as \"2027-01-01T00:00:00Z\" ({e})"))?;
    u64::try_from(at.unix_timestamp()).map_err(|_| format!("{s:?}: before 1970"))
}

/// `ms` milliseconds since the Unix epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339_ms(ms: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let at = at.replace_nanosecond(at.millisecond() as u32 * 1_000_000).unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// `secs` unix seconds as RFC 3339 (UTC).
pub fn rfc3339(secs: u64) -> String {
    rfc3339_ms(secs.saturating_mul(1000))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Suspends and resumes users as their cells say (`only`: one slot), publishes the events,
/// and keeps the use on disk after a suspension for quota, so that a restart keeps it
/// suspended.
pub async fn reconcile(state: &ApiState, registry: &mut Registry, only: Option<u32>) -> Result<(), ChangeError> {
    let (events, mut failed) = registry.reconcile(only, unix_now()).await;
    let for_quota = events.iter().any(|e| e.kind.reason() == Some(SuspendReason::Quota));
    for event in events {
        state.events.publish(event);
    }
    if let (true, Some(path)) = (for_quota, state.quota_use_file.get()) {
        if let Err(e) = save_use(path, registry.sets()) {
            state.log.error(LogLevel::Warning, format_args!("saving quota use: {e:#}"));
        }
    }
    match failed.len() {
        0 => Ok(()),
        _ => Err(failed.swap_remove(0)),
    }
}

/// The watch: runs for as long as the control thread runs.
pub async fn watch(state: Arc<ApiState>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut registry = state.registry.lock().await;
        if registry.sets().slots().book().quotas().next().is_none() {
            continue;
        }
        if let Err(e) = reconcile(&state, &mut registry, None).await {
            state.log.error(LogLevel::Warning, format_args!("quota watch: {e}"));
        }
    }
}

/// The use file in a state directory.
pub fn use_path(dir: &Path) -> PathBuf {
    dir.join(USE_FILE)
}

/// Writes each quota'd user's use (`{"email": [up, down]}`) to `path`, atomically.
pub fn save_use(path: &Path, sets: &UserSets) -> anyhow::Result<()> {
    let slots = sets.slots();
    let mut out = serde_json::Map::new();
    for (slot, q) in slots.book().quotas() {
        if let Some(view) = slots.get(slot) {
            out.insert(view.email.to_string(), serde_json::json!(q.cell.used()));
        }
    }
    // Synced before and after the rename: a power loss leaves the old file or the new one,
    // never an empty one.
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::Value::Object(out).to_string();
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write().with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| dir.display().to_string())?;
    }
    Ok(())
}

/// Gives each quota'd user the use `path` kept for its email (a missing file keeps none).
pub fn load_use(path: &Path, sets: &UserSets) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    let saved: std::collections::HashMap<String, [u64; 2]> = match serde_json::from_str(&text) {
        Ok(saved) => saved,
        // Not a reason to stay down: the users start from no use, and the operator is told.
        Err(e) => {
            eprintln!("shardray: {}: unreadable ({e}); quota use starts from zero", path.display());
            return Ok(());
        }
    };
    let slots = sets.slots();
    for (slot, q) in slots.book().quotas() {
        if let Some(used) = slots.get(slot).and_then(|v| saved.get(&**v.email)) {
            q.cell.set_used(*used);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expiry_as_rfc3339_or_unix_seconds() {
        assert_eq!(parse_expiry(&json!("2027-01-01T00:00:00Z")), Ok(1_798_761_600));
        assert_eq!(parse_expiry(&json!("2027-01-01T03:00:00+03:00")), Ok(1_798_761_600));
        assert_eq!(parse_expiry(&json!(1_798_761_600u64)), Ok(1_798_761_600));
        assert_eq!(parse_expiry(&json!("1798761600")), Ok(1_798_761_600));
        assert!(parse_expiry(&json!("next tuesday")).unwrap_err().contains("RFC 3339"));
        assert!(parse_expiry(&json!("2027-01-01")).is_err(), "a date alone is not a time");
        assert_eq!(rfc3339(1_798_761_600), "2027-01-01T00:00:00Z");
    }
}
