//! `shardray run`: the control thread's life. Replays the state directory (journal and saved
//! counters), binds the API, starts the shards, serves until SIGTERM or SIGINT, drains, and
//! saves the counters.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardray_core::routes::RouteSpecs;
use shardray_core::spec::{Config, InboundProtocol, LogLevel};

use crate::api::{self, stats::CounterBook, ApiState};
use crate::audit::Audit;
use crate::dns::DnsResolver;
use crate::journal::Journal;
use crate::registry::UserSets;
use crate::server::{allowed_cpus, Server};

/// Options of `shardray run` beyond the config.
#[derive(Clone)]
pub struct RunOptions {
    /// Shards to start; `None` for one per CPU.
    pub shards: Option<usize>,
    /// How long live sessions may go on after a stop signal.
    pub grace: Duration,
    /// Where the journal and the saved counters live; `None` keeps nothing across restarts.
    pub state: Option<PathBuf>,
    /// How often counters are saved to the state directory: at most this much counting is
    /// lost on `kill -9` (a graceful stop saves them exactly).
    pub flush: Duration,
    /// Rereads the config files as they were given at start, for SIGHUP and the API's reload;
    /// `None` refuses reloads.
    pub reload: Option<crate::reload::Loader>,
}

/// What the state directory gave back at start.
struct Restored {
    sets: UserSets,
    journal: Option<Journal>,
    counters: CounterBook,
    /// The API's outbound and routing changes that still applied, in order.
    route_changes: Vec<shardray_core::change::Change>,
}

fn counters_path(state: &std::path::Path) -> PathBuf {
    state.join("counters.json")
}

/// Replays the journal over the config (its inbounds, users, outbounds and routing) and loads
/// the saved counters.
fn restore(config: &mut Config, state: Option<&std::path::Path>) -> anyhow::Result<Restored> {
    let mut sets = UserSets::from_config(config);
    // Users the config gives a quota: one the API cleared must stay cleared (see compact).
    let config_quotas: Vec<(String, String)> = config
        .inbounds
        .iter()
        .flat_map(|i| {
            let quota_users = i.protocol.clients().unwrap_or_default().iter();
            quota_users.filter(|u| u.quota.is_set() && !u.email.is_empty()).map(|u| (i.tag.clone(), u.email.clone()))
        })
        .collect();
    let Some(dir) = state else {
        return Ok(Restored { sets, journal: None, counters: CounterBook::default(), route_changes: Vec::new() });
    };
    let (mut journal, changes, invalid) =
        Journal::open(dir).with_context(|| format!("state directory {}", dir.display()))?;
    for bad in invalid {
        eprintln!("shardray: journal line {} skipped: {}", bad.line, bad.reason);
    }
    let total = changes.len();
    let mut routes = RouteSpecs::from_config(config);
    let mut route_changes = Vec::new();
    for (i, change) in changes.into_iter().enumerate() {
        // The config may have changed since (an inbound removed): such a record no longer applies.
        let applied = if change.inbound().is_some() {
            sets.apply(&change).map_err(|e| e.to_string())
        } else {
            routes.apply(&change).map_err(|e| e.to_string())
        };
        match applied {
            Err(e) => eprintln!("shardray: journal record {} of {total} no longer applies: {e}", i + 1),
            Ok(()) if change.inbound().is_none() => route_changes.push(change),
            Ok(()) => {}
        }
    }
    sets.write_inbounds_into(config);
    routes.write_into(config);
    journal.compact(&sets, &route_changes, &config_quotas).context("compacting the journal")?;
    let mut counters = CounterBook::load(&counters_path(dir)).context("saved counters")?;
    // Saved user counters move into their users' slots.
    counters.carry_users(&mut sets);
    crate::quota::load_use(&crate::quota::use_path(dir), &sets).context("saved quota use")?;
    Ok(Restored { sets, journal: Some(journal), counters, route_changes })
}

/// Returns the memory freed since start-up to the system: parsing a config that lists a
/// million users takes several times what the users then need, and glibc keeps freed memory
/// in its arenas unless asked.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs the server until a stop signal; returns once it has stopped.
pub fn run(mut config: Config, options: RunOptions) -> anyhow::Result<()> {
    let shards = options.shards.unwrap_or_else(|| allowed_cpus().len().max(1));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // What the files said, before the journal is replayed over it: a reload compares against it.
    let file_config = options.reload.as_ref().map(|_| config.clone());
    let mut restored = restore(&mut config, options.state.as_deref())?;
    // Users over their quota or past their expiry start suspended on every shard.
    restored.sets.suspend_breached(crate::quota::unix_now());
    let api_routes = std::mem::take(&mut restored.route_changes);
    let notes = std::mem::take(&mut config.notes);
    let ignored_keys = std::mem::take(&mut config.ignored_keys);
    // The API binds first, so that a taken API port stops the start before any shard runs.
    let api = match &config.api {
        Some(spec) => Some((spec.clone(), runtime.block_on(api::bind(spec))?)),
        None => None,
    };
    // The metrics endpoint too.
    let metrics = match &config.metrics {
        Some(spec) => Some((spec.clone(), runtime.block_on(api::bind_listen(&spec.listen, "metrics"))?)),
        None => None,
    };
    // Sessions may reach neither the API nor the metrics endpoint.
    let api_addrs: Vec<_> = [api.as_ref().map(|(_, l)| l), metrics.as_ref().map(|(_, l)| l)]
        .into_iter()
        .flatten()
        .filter_map(|l| match l {
            api::ApiListener::Tcp(_, addr) => Some(*addr),
            api::ApiListener::Unix(_) => None,
        })
        .collect();
    // The shards start from the registry's resolved users, not from the config's clients:
    // drop those, or a config that lists a million users keeps them all twice more.
    let users = restored.sets.initial_ops();
    for inbound in &mut config.inbounds {
        if let InboundProtocol::Vless(v) = &mut inbound.protocol {
            v.clients = Vec::new();
        }
    }
    // The resolver runs even without a `dns` object: the `dns` outbound asks it then.
    let (dns_spec, dns_log) = (config.dns.clone(), config.log.dns_log);
    let (dns_requests, dns_questions) = tokio::sync::mpsc::unbounded_channel();
    let mut server = Server::start(Arc::new(config), shards, &api_addrs, users, dns_requests)?;
    let resolver =
        DnsResolver::new(dns_spec.as_ref(), server.log.clone(), dns_log).map_err(|e| anyhow::anyhow!("dns: {e}"))?;
    {
        let _runtime = runtime.enter();
        crate::dns::spawn(Arc::new(resolver), dns_questions, server.mailboxes());
    }
    give_back_memory();
    for (inbound, (tag, addr)) in server.config().inbounds.iter().zip(&server.bound) {
        match inbound.unix {
            Some(_) => eprintln!("shardray: inbound {tag:?} listening on {}", inbound.listen_text()),
            None => eprintln!("shardray: inbound {tag:?} listening on {addr}"),
        }
    }
    let audit = Audit::open(server.log.clone(), options.state.as_deref()).context("audit log")?;
    let state = ApiState::new(
        server.links(),
        &server.bound,
        restored.sets,
        restored.journal,
        restored.counters,
        server.log.clone(),
        audit,
    );
    runtime.block_on(state.registry.lock()).set_api_routes(api_routes);
    if let Some(dir) = &options.state {
        let _ = state.quota_use_file.set(crate::quota::use_path(dir));
    }
    runtime.spawn(state.events.clone().forward(state.shards.events.clone()));
    runtime.spawn(crate::quota::watch(state.clone()));
    if let (Some(load), Some(file)) = (options.reload.clone(), file_config) {
        let _ = state.reloader.set(crate::reload::Reloader::new(load, file));
    }
    if let Some((spec, listener)) = api {
        match &listener {
            api::ApiListener::Tcp(_, addr) => eprintln!("shardray: api listening on {addr}"),
            api::ApiListener::Unix(_) => eprintln!("shardray: api listening on {:?}", spec.listen),
        }
        let log = server.log.clone();
        let state = state.clone();
        runtime.spawn(async move {
            if let Err(e) = api::serve(spec, listener, state).await {
                log.error(LogLevel::Error, format_args!("api stopped: {e:#}"));
            }
        });
    }
    if let Some((spec, listener)) = metrics {
        match &listener {
            api::ApiListener::Tcp(_, addr) => eprintln!("shardray: metrics listening on {addr}"),
            api::ApiListener::Unix(_) => eprintln!("shardray: metrics listening on {:?}", spec.listen),
        }
        let log = server.log.clone();
        let state = state.clone();
        runtime.spawn(async move {
            if let Err(e) = crate::metrics::serve(spec, listener, state).await {
                log.error(LogLevel::Error, format_args!("metrics stopped: {e:#}"));
            }
        });
    }
    if let Some(dir) = options.state.clone() {
        let (state, log) = (state.clone(), server.log.clone());
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(options.flush);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = state.save_counters(&counters_path(&dir)).await {
                    log.error(LogLevel::Warning, format_args!("saving counters: {e:#}"));
                }
                let saved = crate::quota::save_use(&crate::quota::use_path(&dir), state.registry.lock().await.sets());
                if let Err(e) = saved {
                    log.error(LogLevel::Warning, format_args!("saving quota use: {e:#}"));
                }
            }
        });
    }
    // Handlers are in place before "started" is printed: a SIGHUP that comes right after it
    // reloads rather than ending the process, as the default action would.
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _runtime = runtime.enter();
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined1()),
        ) {
            (Ok(term), Ok(int), Ok(hup), Ok(usr1)) => Some((term, int, hup, usr1)),
            _ => None,
        }
    };
    eprintln!("shardray: started {} with {} shards", env!("CARGO_PKG_VERSION"), server.shard_count());
    server.log.error(LogLevel::Warning, format_args!("shardray {} started", env!("CARGO_PKG_VERSION")));
    for note in &notes {
        server.log.error(LogLevel::Warning, format_args!("config: {note}"));
    }
    for key in &ignored_keys {
        server.log.error(LogLevel::Warning, format_args!("config: {key}"));
    }

    let log = server.log.clone();
    runtime.block_on(async {
        let Some((mut term, mut int, mut hup, mut usr1)) = signals else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                // SIGHUP rereads the config files, as nginx does; one reload at a time (the
                // reloader queues behind its lock), and the signal loop never waits for one.
                _ = hup.recv() => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        let _ = crate::reload::reload(&state, "SIGHUP").await;
                    });
                }
                // SIGUSR1 reopens the log files, for logrotate.
                _ = usr1.recv() => {
                    let log = log.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || log.reopen()).await {
                        eprintln!("shardray: reopening logs: {e}");
                    }
                }
            }
        }
    });

    eprintln!("shardray: stopping; live sessions have {}s to finish", options.grace.as_secs());
    let finals = server.stop(options.grace);
    if let Some(dir) = &options.state {
        let registry = runtime.block_on(state.registry.lock());
        let values = api::stats::reported(&state, &registry, &finals);
        CounterBook::save(&counters_path(dir), values).context("saving counters")?;
        crate::quota::save_use(&crate::quota::use_path(dir), registry.sets()).context("saving quota use")?;
        state.counters.lock().unwrap_or_else(|e| e.into_inner()).deltas.save().context("saving delta readers")?;
    }
    Ok(())
}
