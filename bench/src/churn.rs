//! The `churn` scenario: one API caller adds and removes fresh users at a fixed rate while,
//! optionally, VLESS streams carry traffic through the same shards; how long each change
//! takes to be acknowledged by every shard, and whether the traffic noticed.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::{self, ApiClient};
use crate::pattern::{Flow, Request, PERIOD};
use crate::procstat;
use crate::report::{Latencies, Latency};
use crate::target::TargetSpec;
use crate::traffic::{self, gbit_s, longest_stall, Traffic};

/// What to run.
#[derive(Debug, Clone)]
pub struct Churn {
    /// The shardray to start (the API is turned on here).
    pub target: TargetSpec,
    /// AddUser and RemoveUser calls in all, alternating, starting with an add.
    pub ops: u64,
    /// Calls per second; 0 sends each as soon as the previous one returned.
    pub rate: f64,
    /// Parallel VLESS streams carrying traffic throughout (0 for an idle server).
    pub traffic_streams: usize,
    /// Nice value of the traffic's client and sink threads (0: same priority as the proxy).
    /// On a machine shared with its own load generator, a proxy's wait for a core is part of
    /// every round trip; a niced generator leaves the cores to the proxy first, as remote
    /// clients would.
    pub traffic_nice: i32,
    /// Traffic measured before the first call, as the undisturbed reference.
    pub warmup: Duration,
    /// Bound on the calls; the run stops early, and says so, when it is exceeded.
    pub timeout: Duration,
    /// Bound on shardray's start-up.
    pub startup: Duration,
}

/// Everything one `churn` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnRecord {
    /// The command line that produced it.
    #[serde(default)]
    pub command: String,
    /// shardray's shards.
    pub shards: usize,
    /// Calls asked for.
    pub ops_requested: u64,
    /// Calls made before the run ended (fewer only when the timeout cut it short).
    pub ops_done: u64,
    /// Pacing asked for, calls per second (0: back to back).
    pub rate_requested: f64,
    /// Calls per second achieved.
    pub ops_per_s: f64,
    /// Seconds of traffic before the first call.
    pub warmup_s: f64,
    /// From the first call to the last reply.
    pub wall_s: f64,
    /// Calls that returned an error.
    pub errors: u64,
    /// The first error's text.
    pub first_error: Option<String>,
    /// Round trip of AddUserOperation calls, all-shard acknowledgement included.
    pub add: Latency,
    /// Round trip of RemoveUserOperation calls.
    pub remove: Latency,
    /// Both together.
    pub all: Latency,
    /// shardray's CPU seconds from the first call to the last reply (traffic included).
    pub proxy_cpu_s: f64,
    /// shardray's peak RSS at the end, MiB.
    pub peak_rss_mib: f64,
    /// Users the inbound had at the end, and how many it should have had.
    pub users_at_end: i64,
    /// See `users_at_end`.
    pub users_expected: i64,
    /// The traffic running alongside, when there was any.
    pub traffic: Option<TrafficRecord>,
}

/// How the traffic fared.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrafficRecord {
    /// Streams (even-numbered download, odd-numbered upload).
    pub streams: usize,
    /// Nice value of the streams' client and sink threads.
    #[serde(default)]
    pub nice: i32,
    /// Throughput over the warm-up, before any call (10^9 bits per second, all streams).
    pub before_gbit_s: f64,
    /// Throughput from the first call to the last reply.
    pub during_gbit_s: f64,
    /// `during / before`.
    pub during_vs_before: f64,
    /// The longest time any stream moved no byte while the calls ran, ms (50 ms sampling).
    pub longest_stall_ms: f64,
    /// Throughput in each whole second from the traffic's start (calls begin after the
    /// warm-up), Gbit/s.
    pub per_second_gbit_s: Vec<f64>,
    /// Streams that failed (with why); none is expected.
    pub stream_errors: Vec<String>,
    /// True when a stream failed or stalled for more than a second.
    pub disrupted: bool,
}

/// Runs the scenario against a shardray started in `workdir`, with the sink at `sink`.
pub fn run(churn: &Churn, sink: SocketAddr, workdir: &Path) -> Result<ChurnRecord> {
    let mut spec = churn.target.clone();
    spec.api = true;
    let target = spec.start(workdir, sink, churn.startup)?;
    let pid = target.started_pid()?;
    let mut api = ApiClient::connect(target.api.context("no API address")?, churn.timeout)?;
    let users_at_start = api.user_count().context("GetInboundUsersCount")?;

    // Bounded so that a stuck stream cannot outlive the run by much.
    let traffic_bound = churn.warmup + churn.timeout + Duration::from_secs(10);
    let traffic = if churn.traffic_streams > 0 {
        let client = target.client(sink);
        let streams = (0..churn.traffic_streams)
            .map(|i| {
                let req = Request {
                    flow: if i % 2 == 0 { Flow::Down } else { Flow::Up },
                    len: traffic::ENDLESS,
                    start: ((i * 7_919) % PERIOD) as u32,
                };
                (client.clone(), req)
            })
            .collect();
        let t = Traffic::start(streams, churn.traffic_nice, traffic_bound, None)?;
        thread::sleep(churn.warmup);
        Some(t)
    } else {
        None
    };

    let (mut add, mut remove, mut all) = (Latencies::default(), Latencies::default(), Latencies::default());
    let mut errors = 0u64;
    let mut first_error = None;
    let mut ops_done = 0u64;
    let cpu_before = procstat::cpu_seconds(pid)?;
    let started = Instant::now();
    let deadline = started + churn.timeout;
    for k in 0..churn.ops {
        if churn.rate > 0.0 {
            let due = started + Duration::from_secs_f64(k as f64 / churn.rate);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        let email = format!("churn-{}@bench", k / 2);
        let adding = k % 2 == 0;
        let op = if adding { api::add_user(&email, Uuid::new_v4()) } else { api::remove_user(&email) };
        let sent = Instant::now();
        let outcome = api.alter(op);
        let took = sent.elapsed();
        ops_done += 1;
        all.record(took);
        if adding {
            add.record(took);
        } else {
            remove.record(took);
        }
        if let Err(status) = outcome {
            errors += 1;
            first_error.get_or_insert_with(|| {
                format!("{} {email}: {:?}: {}", if adding { "add" } else { "remove" }, status.code(), status.message())
            });
        }
    }
    let ended = Instant::now();
    let wall = ended.duration_since(started).as_secs_f64();
    let proxy_cpu_s = procstat::cpu_seconds(pid)? - cpu_before;

    let traffic = traffic.map(|t| {
        let (samples, stream_errors) = t.stop();
        let first = samples.first().map_or(started, |s| s.at);
        // The first half second is connection set-up and ramp, not the steady state.
        let before = gbit_s(&samples, first + Duration::from_millis(500), started);
        let during = gbit_s(&samples, started, ended);
        let stall = longest_stall(&samples, started, ended);
        let mut per_second_gbit_s = Vec::new();
        let mut from = first;
        let last_at = samples.last().map_or(first, |l| l.at);
        while from + Duration::from_secs(1) <= last_at {
            per_second_gbit_s.push(gbit_s(&samples, from, from + Duration::from_secs(1)));
            from += Duration::from_secs(1);
        }
        TrafficRecord {
            streams: churn.traffic_streams,
            nice: churn.traffic_nice,
            before_gbit_s: before,
            during_gbit_s: during,
            during_vs_before: if before > 0.0 { during / before } else { 0.0 },
            longest_stall_ms: stall.as_secs_f64() * 1e3,
            per_second_gbit_s,
            disrupted: !stream_errors.is_empty() || stall > Duration::from_secs(1),
            stream_errors,
        }
    });

    let users_at_end = api.user_count().context("GetInboundUsersCount")?;
    // An odd number of calls leaves the last user added.
    let users_expected = users_at_start + i64::from(ops_done % 2 == 1);
    let peak_rss_mib = procstat::peak_rss_kib(pid)? as f64 / 1024.0;
    target.stop()?;
    Ok(ChurnRecord {
        command: String::new(),
        shards: churn.target.shards,
        ops_requested: churn.ops,
        ops_done,
        rate_requested: churn.rate,
        ops_per_s: ops_done as f64 / wall.max(f64::MIN_POSITIVE),
        warmup_s: if churn.traffic_streams > 0 { churn.warmup.as_secs_f64() } else { 0.0 },
        wall_s: wall,
        errors,
        first_error,
        add: add.summary(),
        remove: remove.summary(),
        all: all.summary(),
        proxy_cpu_s,
        peak_rss_mib,
        users_at_end,
        users_expected,
        traffic,
    })
}

impl ChurnRecord {
    /// The record as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let rate =
            if self.rate_requested > 0.0 { format!("{:.0}/s", self.rate_requested) } else { "back to back".into() };
        let streams = self.traffic.as_ref().map_or(0, |t| t.streams);
        let _ = writeln!(
            out,
            "churn: {} shards, {} of {} calls ({rate}), {streams} traffic streams: \
             {:.0} calls/s achieved over {:.2} s, {} errors; shardray CPU {:.2} s \
             ({:.0} µs per call), peak RSS {:.1} MiB; users at end {} (expected {})\n",
            self.shards,
            self.ops_done,
            self.ops_requested,
            self.ops_per_s,
            self.wall_s,
            self.errors,
            self.proxy_cpu_s,
            self.proxy_cpu_s * 1e6 / self.ops_done.max(1) as f64,
            self.peak_rss_mib,
            self.users_at_end,
            self.users_expected,
        );
        out.push_str(
            "| call (round trip, all shards acknowledged) | calls | p50 µs | p99 µs | p99.9 µs | max µs |\n\
             |---|---:|---:|---:|---:|---:|\n",
        );
        for (name, l) in [("AddUser", &self.add), ("RemoveUser", &self.remove), ("both", &self.all)] {
            let _ = writeln!(out, "| {name} | {} |", l.cells());
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(out, "\nfirst error: {e}");
        }
        if let Some(t) = &self.traffic {
            let _ = writeln!(
                out,
                "\n| traffic | before churn Gbit/s | during churn Gbit/s | during/before | longest stall ms | stream errors | disrupted |\n\
                 |---|---:|---:|---:|---:|---:|---|\n\
                 | {} stream(s) | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} |",
                t.streams,
                t.before_gbit_s,
                t.during_gbit_s,
                t.during_vs_before,
                t.longest_stall_ms,
                t.stream_errors.len(),
                if t.disrupted { "yes" } else { "no" },
            );
            let seconds: Vec<String> = t.per_second_gbit_s.iter().map(|g| format!("{g:.1}")).collect();
            let _ = writeln!(
                out,
                "\nGbit/s in each second (calls from second {:.0}): {}",
                self.warmup_s,
                seconds.join(" ")
            );
            for e in &t.stream_errors {
                let _ = writeln!(out, "\n{e}");
            }
        }
        out
    }
}
