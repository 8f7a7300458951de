//! Config reload (SIGHUP and `shardray api reload`): the config files the process started
//! with are read and checked again exactly as at start, and what changed since they were last
//! read is applied through the registry, one epoch per change, while everything else keeps
//! running. A config that fails to load or check changes nothing.
//!
//! Who owns what: the files own what they name, the API owns what it made.
//! - An inbound the files add is added; one they drop is removed; one whose settings changed
//!   is replaced in place: its users, their counters and live sessions stay (sessions go on
//!   under the settings they started with), and it keeps accepting on the same sockets unless
//!   its listener (address, port, socket options) changed. An inbound the API added stays,
//!   unless the files now name its tag: then the files' inbound replaces it.
//! - Users: only what changed in the files since the last read is applied to the live set
//!   (added, removed, level changed), so users the API added or removed stay as the API left
//!   them, and live sessions of every user left alone go on.
//! - Outbounds, rules and balancers: the files' ones with the API's changes replayed over them,
//!   as the next start replays the journal (balancer pins stay while their balancer does).
//! - Policy levels and the system policy: replaced; sessions that start from then on follow
//!   them, live ones keep the policy they started with.
//! - Logging: the level and the access and error targets change for every shard at once.
//! - What a running process cannot change (the API's and metrics' listeners, `stats`,
//!   untagged inbounds) is reported as needing a restart.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context;
use shardray_core::change::Change;
use shardray_core::routes::RouteSpecs;
use shardray_core::spec::{Account, ApiSpec, Config, InboundSpec, LogLevel, UnixListenSpec, UnixSocketName, UserSpec};

use crate::api::ApiState;
use crate::registry::{ChangeError, Origin, Registry};

/// Reads the config files again, as given at start (`-c` list or `-confdir`), and loads them.
pub type Loader = Arc<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// What a reload needs between reloads: how to read the files, and what they said last time.
pub struct Reloader {
    load: Loader,
    /// The config as the files gave it at the last successful load, users included; one
    /// reload at a time holds it.
    file: tokio::sync::Mutex<Config>,
}

/// The labels of `shardray_config_reloads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` (applied), or `error` (refused, or stopped by a change that failed).
    result: &'static str,
}

/// Reloads by outcome, for `/metrics`. Cloning shares the counters.
#[derive(Debug, Clone)]
pub struct ReloadStats {
    /// `shardray_config_reloads_total{result}`.
    pub counts: prometheus_client::metrics::family::Family<ReloadLabels, prometheus_client::metrics::counter::Counter>,
    /// `shardray_config_last_reload_successful`: 1 until a reload fails, as Prometheus's own
    /// gauge of that name.
    pub last_ok: prometheus_client::metrics::gauge::Gauge,
}

impl Default for ReloadStats {
    fn default() -> Self {
        let last_ok = prometheus_client::metrics::gauge::Gauge::default();
        last_ok.set(1);
        ReloadStats { counts: Default::default(), last_ok }
    }
}

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The changes applied, one line each (`inbound "x" added`).
    pub changes: Vec<String>,
    /// What changed in the files but takes a restart.
    pub restart_needed: Vec<String>,
    /// Remarks: API changes that no longer apply, files' changes to objects the API removed.
    pub notes: Vec<String>,
}

impl Reloader {
    /// A reloader whose files gave `file` at start.
    pub fn new(load: Loader, file: Config) -> Reloader {
        Reloader { load, file: tokio::sync::Mutex::new(file) }
    }
}

/// Reloads the config for `why` (`SIGHUP`, `api`), logging the outcome; returns the report,
/// or the reason nothing (or not everything) was changed.
pub async fn reload(state: &ApiState, why: &str) -> anyhow::Result<ReloadReport> {
    let Some(reloader) = state.reloader.get() else {
        let e = anyhow::anyhow!("this server cannot reload: it was not started from config files");
        state.log.error(LogLevel::Error, format_args!("reload ({why}): {e}"));
        return Err(e);
    };
    let result = reload_with(state, reloader).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    state.reloads.counts.get_or_create(&ReloadLabels { result: outcome }).inc();
    state.reloads.last_ok.set(i64::from(result.is_ok()));
    match &result {
        Ok(report) => {
            let summary =
                if report.changes.is_empty() { "nothing changed".to_owned() } else { report.changes.join("; ") };
            state.log.error(LogLevel::Warning, format_args!("reload ({why}): config reloaded: {summary}"));
            for what in &report.restart_needed {
                state.log.error(LogLevel::Warning, format_args!("reload ({why}): {what} changed: needs a restart"));
            }
            for note in &report.notes {
                state.log.error(LogLevel::Warning, format_args!("reload ({why}): {note}"));
            }
        }
        Err(e) => state.log.error(LogLevel::Error, format_args!("reload ({why}): {e:#}")),
    }
    result
}

async fn reload_with(state: &ApiState, reloader: &Reloader) -> anyhow::Result<ReloadReport> {
    let mut file = reloader.file.lock().await;
    let load = reloader.load.clone();
    // Reading and checking the files (geodata included) may take a while: off the control
    // thread's runtime, which keeps serving the API meanwhile.
    let new = tokio::task::spawn_blocking(move || {
        let config = load()?;
        crate::server::check(&config)?;
        Ok::<_, anyhow::Error>(config)
    })
    .await
    .context("reload task")?
    .context("config refused, the running config stays")?;

    let mut registry = state.registry.lock().await;
    let mut report = ReloadReport::default();
    restart_only(&file, &new, &mut report);

    // Routes first, checked before anything changes: a rule that no longer compiles stops the
    // reload here with nothing changed.
    let mut routes = RouteSpecs::from_config(&new);
    for change in registry.api_routes() {
        if let Err(e) = routes.apply(change) {
            report.notes.push(format!("an API routing change no longer applies over the files: {e}"));
        }
    }
    let live = registry.routes();
    let routes_changed = routes.outbounds != live.outbounds || routes.routing != live.routing;
    if !routes_changed && (file.outbounds != new.outbounds || file.routing != new.routing) {
        report
            .notes
            .push("the files' outbounds or routing changed, but the API's changes replace that part".to_owned());
    }
    if routes_changed {
        routes.compile().map_err(|e| anyhow::anyhow!("routing.rules[{}]: {}", e.index, e.reason))?;
    }

    // Logging next: a log file that cannot be opened stops the reload with nothing changed.
    if state.config().log != new.log {
        let (log, spec) = (state.log.clone(), new.log.clone());
        tokio::task::spawn_blocking(move || log.reconfigure(&spec))
            .await
            .context("reload task")?
            .map_err(|e| anyhow::anyhow!("log: {e}; nothing changed"))?;
        let mut config = (*state.config()).clone();
        config.log = new.log.clone();
        state.set_config(Arc::new(config));
        report.changes.push("log reconfigured".to_owned());
    }

    let result = apply(state, &mut registry, &file, &new, routes_changed.then_some(routes), &mut report).await;
    publish(state, &registry);
    drop(registry);
    match result {
        Ok(()) => {
            replace_tokens(state, &new, &mut report);
            *file = new;
            Ok(report)
        }
        Err(e) => {
            let done = if report.changes.is_empty() { "none".to_owned() } else { report.changes.join("; ") };
            Err(anyhow::anyhow!("{e} (applied before it: {done})"))
        }
    }
}

/// `api.tokens` from the files (token files read again): they replace the running ones, unless
/// the files drop every token from an API that has some, which would open it to anyone who
/// can reach it (that takes a restart, whose checks refuse an open non-loopback API).
fn replace_tokens(state: &ApiState, new: &Config, report: &mut ReloadReport) {
    let tokens = new.api.as_ref().map(|a| a.tokens.clone()).unwrap_or_default();
    let live = state.tokens();
    if *live == *tokens {
        return;
    }
    if tokens.is_empty() {
        report.restart_needed.push("api.tokens (every token removed)".to_owned());
        return;
    }
    let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
    report.changes.push(format!("api tokens replaced ({})", names.join(", ")));
    state.set_tokens(tokens);
}

/// The parts of a config that only a restart changes.
fn restart_only(old: &Config, new: &Config, report: &mut ReloadReport) {
    let mut note = |changed: bool, what: &str| {
        if changed {
            report.restart_needed.push(what.to_owned());
        }
    };
    // Tokens are replaced in place (see `replace_tokens`); the rest of `api` takes a restart.
    let without_tokens = |c: &Config| c.api.clone().map(|a| ApiSpec { tokens: Vec::new(), ..a });
    note(without_tokens(old) != without_tokens(new), "api");
    note(old.metrics != new.metrics, "metrics");
    note(old.stats_enabled != new.stats_enabled, "stats");
    note(old.dns != new.dns, "dns");
    let untagged = |c: &Config| -> Vec<InboundSpec> {
        c.inbounds.iter().filter(|i| i.tag.is_empty()).map(comparable).collect::<Vec<_>>()
    };
    let (was, now) = (untagged(old), untagged(new));
    let same_users = || {
        let users = |c: &Config| -> Vec<Vec<UserSpec>> {
            c.inbounds
                .iter()
                .filter(|i| i.tag.is_empty())
                .map(|i| i.protocol.clients().unwrap_or_default().to_vec())
                .collect()
        };
        users(old) == users(new)
    };
    note(was != now || !same_users(), "an inbound without a tag");
}

/// An inbound as two loads compare it: without users and without its place in the files.
fn comparable(spec: &InboundSpec) -> InboundSpec {
    InboundSpec { config_index: None, ..spec.clone_without_users() }
}

/// A user's identity across loads: its account and its email (any case).
fn user_key(u: &UserSpec) -> (&Account, String) {
    (&u.account, u.email.to_ascii_lowercase())
}

/// Applies the difference between the files' `old` and `new` configs to the live registry.
async fn apply(
    state: &ApiState,
    registry: &mut Registry,
    old: &Config,
    new: &Config,
    routes: Option<RouteSpecs>,
    report: &mut ReloadReport,
) -> Result<(), ChangeError> {
    // Compared with what runs, not with the last files: a reload that failed partway may
    // have applied them already.
    if state.config().policy != new.policy {
        registry.apply_from(Change::SetPolicy { policy: Box::new(new.policy.clone()) }, Origin::File).await?;
        let mut config = (*state.config()).clone();
        config.policy = new.policy.clone();
        state.set_config(Arc::new(config));
        report.changes.push("policy replaced".to_owned());
    }
    if let Some(routes) = routes {
        let summary = format!("{} outbounds, {} rules", routes.outbounds.len(), routes.routing.rules.len());
        registry.apply_from(Change::ReplaceRoutes { routes: Box::new(routes) }, Origin::File).await?;
        report.changes.push(format!("routing replaced ({summary})"));
    }
    let named: HashSet<&str> = new.inbounds.iter().map(|i| i.tag.as_str()).filter(|t| !t.is_empty()).collect();
    // Inbounds the files dropped (those the API made stay).
    for gone in old.inbounds.iter().filter(|i| !i.tag.is_empty() && !named.contains(i.tag.as_str())) {
        if registry.inbound(&gone.tag).is_ok_and(|i| i.from_config) {
            remove_inbound(state, registry, &gone.tag).await?;
            report.changes.push(format!("inbound {:?} removed", gone.tag));
        }
    }
    for inbound in new.inbounds.iter().filter(|i| !i.tag.is_empty()) {
        let before = old.inbounds.iter().find(|i| i.tag == inbound.tag);
        // Gone from the registry, yet not removed through the API: a reload that failed
        // partway removed it, and the files (reverted, say) name it, so it is added again.
        let lost = registry.inbound(&inbound.tag).is_err() && !registry.removed_from_config().contains(&inbound.tag);
        let unchanged = before.is_some_and(|b| comparable(b) == comparable(inbound)) && !lost;
        let old_users = before.map_or(&[][..], users_of);
        let users_changed = old_users != users_of(inbound);
        // What the registry runs under this tag now (copied: the registry changes below).
        let live = registry.inbound(&inbound.tag).ok().map(|l| Live {
            from_config: l.from_config,
            protocol: l.protocol,
            listen: l.spec.listen,
            has_users: l.has_users,
        });
        let live_users = |registry: &Registry| -> Vec<UserSpec> {
            registry.inbound(&inbound.tag).map(|l| l.users.values().collect()).unwrap_or_default()
        };
        if unchanged {
            match live {
                None if users_changed => report.notes.push(format!(
                    "inbound {:?} was removed through the API: the files' user changes to it are not applied",
                    inbound.tag
                )),
                Some(live) if live.has_users && users_changed => {
                    let current = live_users(registry);
                    if let Some(users) = user_target(current.iter().cloned(), old_users, users_of(inbound)) {
                        let summary = user_summary(&current, &users);
                        drop(current);
                        replace_users(state, registry, &inbound.tag, users).await?;
                        report.changes.push(format!("inbound {:?}: {summary}", inbound.tag));
                    }
                }
                _ => {}
            }
            continue;
        }
        // Added or changed: the files' version runs from now on.
        let mut spec = inbound.clone();
        let what = match live {
            // A changed inbound of the files, same kind of accounts: replaced in place, users,
            // counters and live sessions kept; bound anew only if its listener changed.
            Some(live) if live.from_config && live.protocol == spec.protocol.account_protocol() => {
                let current = live_users(registry);
                let users = user_target(current.iter().cloned(), old_users, users_of(inbound));
                // A Unix socket under the same name is kept: bound anew while the old one still
                // listens, its name would be taken (by ourselves). Socket options mean nothing to
                // it, and a new mode is set on its file in place.
                let same_socket = match (before.and_then(|b| b.unix.as_deref()), inbound.unix.as_deref()) {
                    (Some(old), Some(new)) if old.name == new.name => Some((old, new)),
                    _ => None,
                };
                let rebind = same_socket.is_none()
                    && before.is_none_or(|b| {
                        b.listen != inbound.listen
                            || b.unix != inbound.unix
                            || b.sockopt != inbound.sockopt
                            || b.networks() != inbound.networks()
                    });
                if !rebind {
                    spec.listen = live.listen;
                }
                let spec = Arc::new(spec.clone_without_users());
                registry.apply_from(Change::ReplaceInbound { spec, rebind }, Origin::File).await?;
                if let Some((old, UnixListenSpec { name: UnixSocketName::Path(path), mode: Some(mode) })) = same_socket
                {
                    if old.mode != Some(*mode) {
                        crate::socket_file::set_mode(path, *mode).map_err(|e| ChangeError::Listen(e.to_string()))?;
                    }
                }
                if let Some(users) = users {
                    let summary = user_summary(&current, &users);
                    drop(current);
                    replace_users(state, registry, &inbound.tag, users).await?;
                    report.changes.push(format!("inbound {:?}: {summary}", inbound.tag));
                }
                if rebind {
                    format!("changed (listening anew on {})", bound(registry, &inbound.tag))
                } else {
                    "changed (same listener)".to_owned()
                }
            }
            // The API's inbound under a tag the files now name, or one of another kind: the
            // files' one replaces it, users and all.
            Some(_) => {
                remove_inbound(state, registry, &inbound.tag).await?;
                registry.apply_from(Change::AddInbound { spec: Arc::new(spec) }, Origin::File).await?;
                if spec_has_users(inbound) {
                    // Journaled, so the next start's journal gives this inbound these users, not
                    // the ones it recorded for the old one.
                    let users = users_of(inbound).to_vec();
                    registry
                        .apply_from(Change::ReplaceUsers { inbound: inbound.tag.clone(), users }, Origin::File)
                        .await?;
                }
                format!("replaced (the old one's sessions closed), listening on {}", bound(registry, &inbound.tag))
            }
            None => {
                registry.apply_from(Change::AddInbound { spec: Arc::new(spec) }, Origin::File).await?;
                format!("added, listening on {}", bound(registry, &inbound.tag))
            }
        };
        report.changes.push(format!("inbound {:?} {what}", inbound.tag));
    }
    apply_quotas(state, registry, old, new, report).await
}

/// Quotas and expiries the files changed apply as level changes do: to the users the files
/// list, leaving what the API set for others alone. A user whose new quota is higher (or whose
/// expiry is later) resumes at once.
async fn apply_quotas(
    state: &ApiState,
    registry: &mut Registry,
    old: &Config,
    new: &Config,
    report: &mut ReloadReport,
) -> Result<(), ChangeError> {
    for inbound in new.inbounds.iter().filter(|i| !i.tag.is_empty()) {
        let before = old.inbounds.iter().find(|i| i.tag == inbound.tag).map_or(&[][..], users_of);
        for u in users_of(inbound).iter().filter(|u| !u.email.is_empty()) {
            let was = before.iter().find(|o| o.email.eq_ignore_ascii_case(&u.email)).map(|o| o.quota);
            if was.unwrap_or_default() == u.quota {
                continue;
            }
            let Some(slot) = registry.inbound(&inbound.tag).ok().and_then(|i| i.by_email(&u.email)).map(|r| r.slot)
            else {
                continue;
            };
            let change = Change::SetQuota { inbound: inbound.tag.clone(), email: u.email.clone(), quota: u.quota };
            let cell = registry.quota_cell(&inbound.tag, &u.email);
            registry.apply_from(change, Origin::File).await?;
            registry.rebind_quota(&inbound.tag, &u.email, cell).await?;
            crate::quota::reconcile(state, registry, Some(slot)).await?;
            report.changes.push(format!("inbound {:?}: quota of {} set", inbound.tag, u.email));
        }
    }
    Ok(())
}

/// What a reload needs of a live inbound.
#[derive(Clone, Copy)]
struct Live {
    from_config: bool,
    protocol: &'static str,
    listen: std::net::SocketAddr,
    has_users: bool,
}

/// Where the inbound tagged `tag` listens now (a port of 0 in the files becomes the real one).
fn bound(registry: &Registry, tag: &str) -> String {
    registry.inbound(tag).map_or_else(|_| "?".to_owned(), |i| i.spec.listen_text())
}

/// Whether the inbound's protocol has users.
fn spec_has_users(spec: &InboundSpec) -> bool {
    spec.protocol.clients().is_some()
}

/// An inbound's users as the files list them.
fn users_of(spec: &InboundSpec) -> &[UserSpec] {
    spec.protocol.clients().unwrap_or_default()
}

/// The live users with the files' change from `old` to `new` applied: users the files dropped
/// or changed leave, users they added or changed come in, the others (the API's included)
/// stay as they are. `None` when the files did not change the users.
fn user_target(live: impl Iterator<Item = UserSpec>, old: &[UserSpec], new: &[UserSpec]) -> Option<Vec<UserSpec>> {
    fn exact(list: &[UserSpec]) -> HashSet<((&Account, String), u32)> {
        list.iter().map(|u| (user_key(u), u.level)).collect()
    }
    let (was, now) = (exact(old), exact(new));
    let gone: Vec<&UserSpec> = old.iter().filter(|u| !now.contains(&(user_key(u), u.level))).collect();
    let fresh: Vec<&UserSpec> = new.iter().filter(|u| !was.contains(&(user_key(u), u.level))).collect();
    if gone.is_empty() && fresh.is_empty() {
        return None;
    }
    // A user leaves by its account, or by its email when it has one.
    let mut accounts: HashSet<&Account> = HashSet::new();
    let mut emails: HashSet<String> = HashSet::new();
    for u in gone.iter().chain(&fresh) {
        accounts.insert(&u.account);
        if !u.email.is_empty() {
            emails.insert(u.email.to_ascii_lowercase());
        }
    }
    let mut users: Vec<UserSpec> = live
        .filter(|u| {
            !accounts.contains(&u.account) && (u.email.is_empty() || !emails.contains(&u.email.to_ascii_lowercase()))
        })
        .collect();
    users.extend(fresh.into_iter().cloned());
    Some(users)
}

/// `+2 -1 users, 1 level changed`, from the users before and after.
fn user_summary(before: &[UserSpec], after: &[UserSpec]) -> String {
    let keys = |list: &[UserSpec]| -> std::collections::HashMap<(Account, String), u32> {
        list.iter().map(|u| ((u.account.clone(), u.email.to_ascii_lowercase()), u.level)).collect()
    };
    let (b, a) = (keys(before), keys(after));
    let added = a.keys().filter(|k| !b.contains_key(*k)).count();
    let removed = b.keys().filter(|k| !a.contains_key(*k)).count();
    let levels = a.iter().filter(|(k, level)| b.get(*k).is_some_and(|l| l != *level)).count();
    format!("users +{added} -{removed}, {levels} level(s) changed")
}

/// Replaces an inbound's users, with the counter bookkeeping AlterInbound does for removed
/// users (delta readers get their last counts, carried counters are dropped).
async fn replace_users(
    state: &ApiState,
    registry: &mut Registry,
    tag: &str,
    users: Vec<UserSpec>,
) -> Result<(), ChangeError> {
    let staying: HashSet<(&Account, String)> = users.iter().map(user_key).collect();
    let removed: Vec<String> = registry
        .inbound(tag)?
        .users
        .values()
        .filter(|u| !staying.contains(&user_key(u)) && !u.email.is_empty())
        .map(|u| u.email)
        .collect();
    let departing = crate::api::stats::departing(state, registry, &removed);
    registry.apply_from(Change::ReplaceUsers { inbound: tag.to_owned(), users }, Origin::File).await?;
    crate::api::stats::depart(state, registry, departing).await;
    forget(state, registry, &removed);
    Ok(())
}

/// Removes an inbound, as RemoveInbound does.
async fn remove_inbound(state: &ApiState, registry: &mut Registry, tag: &str) -> Result<(), ChangeError> {
    let emails: Vec<String> = registry.inbound(tag)?.users.values().map(|u| u.email).collect();
    let departing = crate::api::stats::departing(state, registry, &emails);
    registry.apply_from(Change::RemoveInbound { tag: tag.to_owned() }, Origin::File).await?;
    crate::api::stats::depart(state, registry, departing).await;
    forget(state, registry, &emails);
    Ok(())
}

/// Drops what the counter book kept for users no inbound has any more.
fn forget(state: &ApiState, registry: &Registry, emails: &[String]) {
    let mut book = state.counters.lock().unwrap_or_else(|e| e.into_inner());
    for email in emails.iter().filter(|e| !e.is_empty() && registry.stat_user(e).is_none()) {
        book.forget_user(email);
    }
}

/// Publishes the running config: the registry's inbounds and routes.
fn publish(state: &ApiState, registry: &Registry) {
    let mut config = (*state.config()).clone();
    config.inbounds = registry.inbound_specs();
    registry.routes().write_into(&mut config);
    state.set_config(Arc::new(config));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(email: &str, id: u128, level: u32) -> UserSpec {
        UserSpec {
            account: Account::Vless(uuid::Uuid::from_u128(id), Default::default()),
            email: email.into(),
            level,
            quota: Default::default(),
        }
    }

    #[test]
    fn files_own_their_changes_and_the_api_keeps_its_own() {
        let old = [user("a", 1, 0), user("b", 2, 0), user("c", 3, 0)];
        // b dropped, c's level changed, d added.
        let new = [user("a", 1, 0), user("c", 3, 1), user("d", 4, 0)];
        // Live: the API added e and removed a.
        let live = vec![user("b", 2, 0), user("c", 3, 0), user("e", 5, 0)];
        let target = user_target(live.clone().into_iter(), &old, &new).unwrap();
        assert_eq!(target, [user("e", 5, 0), user("c", 3, 1), user("d", 4, 0)]);
        assert_eq!(user_summary(&live, &target), "users +1 -1, 1 level(s) changed");
        // Unchanged files change nothing, whatever the API did.
        assert_eq!(user_target(live.into_iter(), &old, &old), None);
        // An email in another case is the same user.
        let renamed = [user("A", 1, 0), user("b", 2, 0), user("c", 3, 0)];
        assert_eq!(user_target(old.clone().into_iter(), &old, &renamed), None);
    }
}
