//! The `users` scenario: a large user table, loaded through the API in batches and from a
//! config file; what it costs in time and memory, how long QueryStats over it takes, and
//! whether its size changes what a new connection costs.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::{self, ApiClient};
use crate::pattern::{Flow, Request, PERIOD};
use crate::procstat;
use crate::progress::Progress;
use crate::report::{median, Latencies, Latency};
use crate::target::TargetSpec;

/// User `i` of a large table: its email and its id. Ids look random (both halves are
/// bijective mixes of `i`, so after the version-4 and variant bits overwrite six of the 128,
/// a repeat is vanishingly unlikely) and are the same in every run.
pub fn bench_user(i: usize) -> (String, Uuid) {
    let hi = splitmix64(i as u64);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&splitmix64(!(i as u64)).to_be_bytes());
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    (format!("u{i}@bench"), id)
}

/// One step of splitmix64: a bijection on u64 that scatters neighbouring inputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Users {
    /// The shardray to start (the API is turned on here).
    pub target: TargetSpec,
    /// Users to add.
    pub count: usize,
    /// Users per AddUsersOperation.
    pub batch: usize,
    /// QueryStats calls over the full table (the median is reported).
    pub query_runs: usize,
    /// Connections opened as random users, and as many as the one probe user.
    pub lookups: usize,
    /// Add and remove a user from a second client while the QueryStats calls run.
    pub add_during_query: bool,
    /// Also time a start from a config that lists every user.
    pub config_load: bool,
    /// Bound on the load through the API, and on each later step.
    pub timeout: Duration,
    /// Bound on the start-up with the API.
    pub startup: Duration,
    /// Bound on the start-up from the config with every user.
    pub config_startup: Duration,
}

/// Everything one `users` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsersRecord {
    /// The command line that produced it.
    #[serde(default)]
    pub command: String,
    /// shardray's shards.
    pub shards: usize,
    /// Users added through the API.
    pub count: usize,
    /// Users per AddUsersOperation.
    pub batch: usize,
    /// shardray's VmRSS with the one probe user, MiB.
    pub rss_before_mib: f64,
    /// VmRSS once every batch was acknowledged, MiB.
    pub rss_after_mib: f64,
    /// `(after - before) / count`, bytes.
    pub rss_per_user_bytes: f64,
    /// VmHWM after the load, MiB.
    pub peak_rss_after_load_mib: f64,
    /// From the first batch sent to the last acknowledged, seconds.
    pub load_s: f64,
    /// Users per second through the API.
    pub users_per_s: f64,
    /// Round trip of each AddUsersOperation (all shards acknowledged).
    pub batch_latency: Latency,
    /// GetInboundUsersCount after the load.
    pub users_reported: i64,
    /// QueryStats with pattern "" over the whole table.
    pub query: QueryRecord,
    /// Connection cost as random users of the table against the one probe user.
    pub lookup: LookupRecord,
    /// A start from a config listing every user, when asked for.
    pub config_load: Option<ConfigLoadRecord>,
}

/// QueryStats over every counter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryRecord {
    /// Each call's round trip, ms.
    pub runs_ms: Vec<f64>,
    /// Their median, ms.
    pub median_ms: f64,
    /// shardray's CPU per call (all threads), ms: the server's share of the round trip.
    pub proxy_cpu_ms: Vec<f64>,
    /// Counters returned.
    pub stats: usize,
    /// shardray's VmHWM after the calls, MiB.
    pub peak_rss_mib: f64,
    /// AddUser round trips made by a second client while the calls ran (`--add-during-query`).
    #[serde(default)]
    pub adds_meanwhile: Option<Latency>,
}

/// Connect, VLESS header, one byte up, the sink's acknowledgement back; one at a time, the
/// two kinds interleaved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LookupRecord {
    /// As users drawn at random from the table.
    pub random_users: Latency,
    /// As the one probe user every time.
    pub single_user: Latency,
    /// `random_users.p50 / single_user.p50`.
    pub p50_ratio: f64,
}

/// A start from a config that lists every user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigLoadRecord {
    /// Users in the config (besides the probe user).
    pub users: usize,
    /// Config file size, MiB.
    pub config_mib: f64,
    /// From spawn to the `shardray: started` line, seconds.
    pub started_s: f64,
    /// From spawn to the first transfer through it, seconds.
    pub ready_s: f64,
    /// VmRSS once ready, MiB.
    pub rss_mib: f64,
    /// VmHWM once ready (the config parse included), MiB.
    pub peak_rss_mib: f64,
    /// `(rss - the API run's rss_before) / users`, bytes.
    pub rss_per_user_bytes: f64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs the scenario against shardrays started in `workdir`, with the sink at `sink`.
pub fn run(users: &Users, sink: SocketAddr, workdir: &Path) -> Result<UsersRecord> {
    if users.count == 0 || users.batch == 0 {
        bail!("--count and --batch must be positive");
    }
    let mut spec = users.target.clone();
    spec.api = true;
    spec.extra_users = 0;
    let target = spec.start(workdir, sink, users.startup)?;
    let pid = target.started_pid()?;
    let mut api = ApiClient::connect(target.api.context("no API address")?, users.timeout)?;
    // Let start-up allocations settle before the baseline.
    thread::sleep(Duration::from_millis(300));
    let rss_before = procstat::rss_kib(pid)?;

    let mut batch_latency = Latencies::default();
    let started = Instant::now();
    let deadline = started + users.timeout;
    let progress = Progress::new(users.count as u64, "users loaded");
    let mut next = 0;
    while next < users.count {
        if Instant::now() >= deadline {
            bail!("loaded {next} of {} users in {:?}, the timeout", users.count, users.timeout);
        }
        let end = (next + users.batch).min(users.count);
        let batch = (next..end)
            .map(|i| {
                let (email, id) = bench_user(i);
                api::vless_user(&email, id)
            })
            .collect();
        let op = api::add_users(batch);
        let sent = Instant::now();
        api.alter(op).map_err(|s| {
            anyhow::anyhow!("AddUsersOperation of users {next}..{end}: {:?}: {}", s.code(), s.message())
        })?;
        batch_latency.record(sent.elapsed());
        progress.inc((end - next) as u64);
        next = end;
    }
    drop(progress);
    let load = started.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(300));
    let rss_after = procstat::rss_kib(pid)?;
    let peak_after_load = procstat::peak_rss_kib(pid)?;
    let users_reported = api.user_count().context("GetInboundUsersCount")?;

    let adder = users.add_during_query.then(|| spawn_adder(target.api.expect("checked above"), users.timeout));
    let mut runs_ms = Vec::with_capacity(users.query_runs);
    let mut proxy_cpu_ms = Vec::with_capacity(users.query_runs);
    let mut stats = 0;
    for _ in 0..users.query_runs.max(1) {
        let cpu = procstat::cpu_seconds(pid)?;
        let sent = Instant::now();
        let reply = api.query_stats("").map_err(|s| anyhow::anyhow!("QueryStats: {:?}: {}", s.code(), s.message()))?;
        runs_ms.push(sent.elapsed().as_secs_f64() * 1e3);
        proxy_cpu_ms.push((procstat::cpu_seconds(pid)? - cpu) * 1e3);
        stats = reply.len();
    }
    let adds_meanwhile = match adder {
        Some((stop, handle)) => {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            Some(handle.join().map_err(|_| anyhow::anyhow!("the adding thread panicked"))??)
        }
        None => None,
    };
    let query = QueryRecord {
        adds_meanwhile,
        median_ms: median(runs_ms.clone()),
        runs_ms,
        proxy_cpu_ms,
        stats,
        peak_rss_mib: mib(procstat::peak_rss_kib(pid)?),
    };

    let lookup = lookups(users, &target.client(sink), Instant::now() + users.timeout)?;
    target.stop()?;

    let config_load = if users.config_load { Some(config_load(users, sink, workdir, rss_before)?) } else { None };

    Ok(UsersRecord {
        command: String::new(),
        shards: users.target.shards,
        count: users.count,
        batch: users.batch,
        rss_before_mib: mib(rss_before),
        rss_after_mib: mib(rss_after),
        rss_per_user_bytes: (rss_after as f64 - rss_before as f64) * 1024.0 / users.count as f64,
        peak_rss_after_load_mib: mib(peak_after_load),
        load_s: load,
        users_per_s: users.count as f64 / load,
        batch_latency: batch_latency.summary(),
        users_reported,
        query,
        lookup,
        config_load,
    })
}

/// A thread that adds and removes one user (not in the table) over its own API connection
/// until told to stop; it returns the AddUser round trips.
fn spawn_adder(
    addr: SocketAddr,
    timeout: Duration,
) -> (std::sync::Arc<std::sync::atomic::AtomicBool>, thread::JoinHandle<Result<Latency>>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let handle = thread::spawn(move || {
        let mut api = ApiClient::connect(addr, timeout)?;
        let (email, id) = ("adder@bench", Uuid::from_u128(0xadd));
        let mut adds = Latencies::default();
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let sent = Instant::now();
            api.alter(api::add_user(email, id)).map_err(|s| anyhow::anyhow!("AddUser: {s}"))?;
            adds.record(sent.elapsed());
            api.alter(api::remove_user(email)).map_err(|s| anyhow::anyhow!("RemoveUser: {s}"))?;
        }
        Ok(adds.summary())
    });
    (stop, handle)
}

/// Opens `users.lookups` connections as random table users and as many as the probe user,
/// alternating, one at a time.
fn lookups(users: &Users, probe: &crate::client::Client, deadline: Instant) -> Result<LookupRecord> {
    let (mut random, mut single) = (Latencies::default(), Latencies::default());
    let mut state = splitmix64(u64::from(std::process::id()));
    let per_conn = Duration::from_secs(10);
    for n in 0..users.lookups * 2 {
        if Instant::now() >= deadline {
            bail!("{n} of {} lookup connections before the timeout", users.lookups * 2);
        }
        let req = Request { flow: Flow::Up, len: 1, start: (n % PERIOD) as u32 };
        let mut client = probe.clone();
        let as_random = n % 2 == 0;
        if as_random {
            state = splitmix64(state);
            client.dialer.secrets.user = bench_user((state % users.count as u64) as usize).1;
        }
        let sent = Instant::now();
        client
            .run(req, per_conn)
            .with_context(|| format!("lookup connection {n} as {}", client.dialer.secrets.user))?;
        let took = sent.elapsed();
        if as_random {
            random.record(took);
        } else {
            single.record(took);
        }
    }
    let (random, single) = (random.summary(), single.summary());
    Ok(LookupRecord {
        p50_ratio: if single.p50_us > 0.0 { random.p50_us / single.p50_us } else { 0.0 },
        random_users: random,
        single_user: single,
    })
}

/// Starts shardray from a config listing all `users.count` users; times it and reads RSS.
fn config_load(users: &Users, sink: SocketAddr, workdir: &Path, rss_baseline_kib: u64) -> Result<ConfigLoadRecord> {
    let mut spec = users.target.clone();
    spec.api = false;
    spec.extra_users = users.count;
    let target = spec.start(workdir, sink, users.config_startup)?;
    let pid = target.started_pid()?;
    let rss = procstat::rss_kib(pid)?;
    let peak = procstat::peak_rss_kib(pid)?;
    let config_mib = fs::metadata(workdir.join("shardray.json")).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64);
    let record = ConfigLoadRecord {
        users: users.count,
        config_mib,
        started_s: target.started_after.map_or(0.0, |d| d.as_secs_f64()),
        ready_s: target.ready_after.as_secs_f64(),
        rss_mib: mib(rss),
        peak_rss_mib: mib(peak),
        rss_per_user_bytes: (rss as f64 - rss_baseline_kib as f64) * 1024.0 / users.count as f64,
    };
    target.stop()?;
    Ok(record)
}

impl UsersRecord {
    /// The record as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "users: {} shards, {} users added through the API in batches of {} \
             (AddUsersOperation); the inbound reports {} users\n",
            self.shards, self.count, self.batch, self.users_reported
        );
        out.push_str("| figure | value |\n|---|---:|\n");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "| {k} | {v} |");
        };
        row("load through the API", format!("{:.2} s ({:.0} users/s)", self.load_s, self.users_per_s));
        let b = &self.batch_latency;
        row(
            "batch round trip p50 / p99 / max",
            format!("{:.1} / {:.1} / {:.1} ms", b.p50_us / 1e3, b.p99_us / 1e3, b.max_us / 1e3),
        );
        row("RSS before → after", format!("{:.1} → {:.1} MiB", self.rss_before_mib, self.rss_after_mib));
        row("RSS per user", format!("{:.0} bytes", self.rss_per_user_bytes));
        row("peak RSS after the load", format!("{:.1} MiB", self.peak_rss_after_load_mib));
        let list = |v: &[f64]| v.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(", ");
        row(
            &format!("QueryStats \"\" over {} users", self.count),
            format!(
                "{:.1} ms median (runs: {} ms; shardray CPU: {} ms), {} counters",
                self.query.median_ms,
                list(&self.query.runs_ms),
                list(&self.query.proxy_cpu_ms),
                self.query.stats
            ),
        );
        row("peak RSS after QueryStats", format!("{:.1} MiB", self.query.peak_rss_mib));
        if let Some(a) = &self.query.adds_meanwhile {
            row(
                "AddUser round trip meanwhile (second client) p50 / p99 / max",
                format!("{:.2} / {:.2} / {:.2} ms ({} adds)", a.p50_us / 1e3, a.p99_us / 1e3, a.max_us / 1e3, a.count),
            );
        }
        let (r, s) = (&self.lookup.random_users, &self.lookup.single_user);
        row(
            "connection as a random user p50 / p99",
            format!("{:.0} / {:.0} µs ({} conns)", r.p50_us, r.p99_us, r.count),
        );
        row("connection as one user p50 / p99", format!("{:.0} / {:.0} µs ({} conns)", s.p50_us, s.p99_us, s.count));
        row("random / one user, p50", format!("{:.2}×", self.lookup.p50_ratio));
        if let Some(c) = &self.config_load {
            row(
                &format!("config with {} users ({:.1} MiB): spawn → started", c.users, c.config_mib),
                format!("{:.2} s (first transfer at {:.2} s)", c.started_s, c.ready_s),
            );
            row(
                "RSS then (peak)",
                format!("{:.1} MiB ({:.1} MiB), {:.0} bytes per user", c.rss_mib, c.peak_rss_mib, c.rss_per_user_bytes),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_users_are_distinct_v4_ids() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000 {
            let (email, id) = bench_user(i);
            assert_eq!(id.get_version_num(), 4);
            assert!(seen.insert(id), "user {i} repeats an id");
            assert_eq!(email, format!("u{i}@bench"));
        }
    }
}
