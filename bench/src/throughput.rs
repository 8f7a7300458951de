//! The `throughput` scenario: N parallel streams of B bytes each, up or down, through each
//! target in turn (plain VLESS, or VLESS over TLS); what the client sees and what the target
//! process spends. With [`Others`], other users of the same inbound move traffic all the while,
//! rate-limited by shardray's level policy in one variant and paced by the harness to the same
//! rate in the other, so that the measured (unlimited) user's figures show what limits
//! configured for others cost it.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use crate::client::Client;
use crate::pattern::{Flow, Request, PERIOD};
use crate::procstat::{self, RssSampler, RssSeries};
use crate::protocol::Secrets;
use crate::target::{LevelLimits, RunningTarget, TargetSpec};
use crate::traffic::{self, Traffic};
use crate::users;

/// What to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Parallel streams per measurement.
    pub streams: usize,
    /// Payload bytes per stream.
    pub bytes: u64,
    /// The directions to measure, each separately.
    pub flows: Vec<Flow>,
    /// Measurements per target and direction.
    pub runs: usize,
    /// Bound on each measurement's transfer.
    pub timeout: Duration,
    /// Bound on a target's start-up.
    pub startup: Duration,
    /// Other users moving traffic during each measurement of a target that lists them.
    pub others: Option<Others>,
}

/// The other users of `throughput --limits-for-others`: [`users::bench_user`] 0 to N-1, each
/// with one upload and one download running from `warmup` before the measured streams until
/// they end. Where the target gives them `limits` (`shardray+limits`) they run as fast as
/// the proxy lets them; where it does not (`shardray`, no limits at all), the harness paces
/// each stream to the same rate, so both variants carry the same load beside the measured user.
#[derive(Debug, Clone, Copy)]
pub struct Others {
    /// How many.
    pub users: usize,
    /// Their level's limits in the limited variant; `rate` is also the baseline's pace.
    pub limits: LevelLimits,
    /// How long their traffic runs before the measured streams start.
    pub warmup: Duration,
}

/// How the other users' traffic went during one measurement.
#[derive(Debug, Clone, Serialize)]
pub struct OthersRecord {
    /// Other users, each with one upload and one download.
    pub users: usize,
    /// Whether shardray held them to their level's rate (`true`) or the harness paced them.
    pub limited_by_proxy: bool,
    /// The rate each of their streams was held to, bytes per second.
    pub rate_each: u64,
    /// Their level's `maxConnections` and `maxIPs` in the limited variant.
    pub max_connections: u32,
    /// See `max_connections`.
    pub max_ips: u32,
    /// What each user's upload moved on average, MiB/s, from halfway through the warm-up (the
    /// socket buffers filled) to the end of the measured streams.
    pub up_mib_s_per_user: f64,
    /// The same for the downloads.
    pub down_mib_s_per_user: f64,
    /// The proxy's CPU seconds per second over the second half of the warm-up, when only the
    /// other users' streams ran: what relaying them costs, apart from the measured user.
    pub proxy_cpu_s_per_s_alone: Option<f64>,
}

/// One measurement of one target in one direction.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// Target name.
    pub target: String,
    /// "vless" (plain TCP) or "vless-tls".
    pub protocol: &'static str,
    /// "up" or "down".
    pub direction: &'static str,
    /// 1-based run number.
    pub run: usize,
    /// Parallel streams.
    pub streams: usize,
    /// Payload bytes per stream.
    pub bytes_per_stream: u64,
    /// From the first connect to the last verified byte.
    pub wall_s: f64,
    /// Payload throughput the client saw, all streams together (10^9 bits per second).
    pub gbit_s: f64,
    /// CPU seconds (user + system, all threads) the target spent during the transfer; this and
    /// the other process figures are `None` for an external target given without its pid.
    pub proxy_cpu_s: Option<f64>,
    /// The same from /proc/PID/stat utime + stime (clock-tick resolution), as a cross-check.
    pub proxy_cpu_s_ticks: Option<f64>,
    /// `proxy_cpu_s` per 10^9 payload bytes relayed.
    pub cpu_s_per_gb: Option<f64>,
    /// The target's peak RSS (VmHWM) in MiB at the end of the run.
    pub peak_rss_mib: Option<f64>,
    /// CPU seconds the harness itself spent (client and sink), for spotting a harness bottleneck.
    pub harness_cpu_s: f64,
    /// The target's RSS over the measurement.
    pub rss: Option<RssSeries>,
    /// The other users' traffic beside the measured streams, with `--limits-for-others`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub others: Option<OthersRecord>,
}

/// Runs every run of every target, interleaved (run 1 of each target, then run 2, ...), so
/// that drift on the machine spreads across targets instead of favouring one.
pub fn run_all(
    specs: &[TargetSpec],
    scenario: &Scenario,
    sink: SocketAddr,
    workdir: &std::path::Path,
    mut progress: impl FnMut(&RunRecord),
) -> Result<Vec<RunRecord>> {
    let mut records = Vec::new();
    for run in 1..=scenario.runs {
        for spec in specs {
            for &flow in &scenario.flows {
                let target = spec.start(workdir, sink, scenario.startup)?;
                let record = measure(&target, spec, scenario, flow, run, sink)
                    .with_context(|| format!("{} {} run {run}", spec.name(), direction(flow)))
                    .map_err(|e| anyhow!("{e:#}\ntarget log:\n{}", target.log_tail()))?;
                target.stop()?;
                progress(&record);
                records.push(record);
            }
        }
    }
    Ok(records)
}

fn direction(flow: Flow) -> &'static str {
    match flow {
        Flow::Up => "up",
        Flow::Down => "down",
    }
}

fn measure(
    target: &RunningTarget,
    spec: &TargetSpec,
    scenario: &Scenario,
    flow: Flow,
    run: usize,
    sink: SocketAddr,
) -> Result<RunRecord> {
    let pid = target.pid();
    let others = match scenario.others {
        Some(others) if spec.extra_users > 0 => Some((others, start_others(target, spec, scenario, &others, sink)?)),
        _ => None,
    };
    let sampler = pid.map(|pid| RssSampler::spawn(pid, Duration::from_millis(25))).transpose()?;
    let client = target.client(sink);
    let start_line = Arc::new(Barrier::new(scenario.streams + 1));
    let mut workers = Vec::with_capacity(scenario.streams);
    for i in 0..scenario.streams {
        let client = client.clone();
        let start_line = Arc::clone(&start_line);
        let req = Request {
            flow,
            len: scenario.bytes,
            // Every stream, and every run, starts somewhere else in the pattern.
            start: ((i * 7_919 + run * 104_729) % PERIOD) as u32,
        };
        let timeout = scenario.timeout;
        workers.push(thread::Builder::new().name(format!("stream-{i}")).spawn(move || {
            start_line.wait();
            client.run(req, timeout)
        })?);
    }

    let cpu_before = pid.map(procstat::cpu_seconds).transpose()?;
    let ticks_before = pid.map(procstat::stat_cpu_seconds).transpose()?;
    let own_before = procstat::own_cpu_seconds()?;
    start_line.wait();
    let started = Instant::now();
    let mut moved = 0u64;
    let mut failures = Vec::new();
    for (i, worker) in workers.into_iter().enumerate() {
        match worker.join() {
            Ok(Ok(outcome)) => moved += outcome.bytes,
            Ok(Err(e)) => failures.push(format!("stream {i}: {e:#}")),
            Err(_) => failures.push(format!("stream {i}: panicked")),
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let others_after = others.as_ref().map(|(_, running)| running.traffic.bytes());
    // Let the target finish closing the streams, so their teardown is counted too.
    thread::sleep(Duration::from_millis(50));
    let cpu = procstat::since(pid.map(procstat::cpu_seconds).transpose()?, cpu_before);
    let cpu_ticks = procstat::since(pid.map(procstat::stat_cpu_seconds).transpose()?, ticks_before);
    let own = procstat::own_cpu_seconds()? - own_before;
    let peak_rss_kib = pid.map(procstat::peak_rss_kib).transpose()?;
    let rss = sampler.map(RssSampler::finish);
    let others = match (others, others_after) {
        (Some((o, running)), Some(after)) => {
            let secs = running.since.elapsed().as_secs_f64();
            let (_, errors) = running.traffic.stop();
            if !errors.is_empty() {
                return Err(anyhow!("the other users' streams failed:\n{}", errors.join("\n")));
            }
            let mut record = others_record(&o, spec, &running.bytes, &after, secs);
            record.proxy_cpu_s_per_s_alone = running.cpu_s_per_s_alone;
            Some(record)
        }
        _ => None,
    };
    if !failures.is_empty() {
        return Err(anyhow!("{} of {} streams failed:\n{}", failures.len(), scenario.streams, failures.join("\n")));
    }
    let expected = scenario.bytes * scenario.streams as u64;
    if moved != expected {
        return Err(anyhow!("moved {moved} bytes, expected {expected}"));
    }
    let gb = moved as f64 / 1e9;
    Ok(RunRecord {
        target: spec.name(),
        protocol: spec.protocol(),
        direction: direction(flow),
        run,
        streams: scenario.streams,
        bytes_per_stream: scenario.bytes,
        wall_s: wall,
        gbit_s: gb * 8.0 / wall,
        proxy_cpu_s: cpu,
        proxy_cpu_s_ticks: cpu_ticks,
        cpu_s_per_gb: cpu.map(|cpu| cpu / gb),
        peak_rss_mib: peak_rss_kib.map(|kib| kib as f64 / 1024.0),
        harness_cpu_s: own,
        rss,
        others,
    })
}

/// The other users' streams, and their bytes at a moment after their start-up burst.
struct RunningOthers {
    traffic: Traffic,
    bytes: Vec<u64>,
    since: Instant,
    /// The proxy's CPU seconds per second from then until the measurement starts.
    cpu_s_per_s_alone: Option<f64>,
}

/// Starts the other users' streams, upload then download for each, and lets them run for the
/// warm-up: by then the limiter (or the pace) holds them, and the kernel's socket buffers,
/// which take a first burst at any rate, are full. Their rate is counted from halfway through
/// it, so that even a measurement shorter than a chunk's wait sees the steady rate.
fn start_others(
    target: &RunningTarget,
    spec: &TargetSpec,
    scenario: &Scenario,
    others: &Others,
    sink: SocketAddr,
) -> Result<RunningOthers> {
    let mut streams = Vec::with_capacity(others.users * 2);
    for i in 0..others.users {
        let (_, user) = users::bench_user(i);
        let mut dialer = target.dialer();
        dialer.secrets = Secrets { user };
        // A user held to a rate that can still write megabytes into the kernel at once would
        // show its uploads as bursts seconds apart; 64 KiB keeps them near the rate.
        dialer.send_buffer = Some(64 * 1024);
        let client = Client { dialer, sink };
        for (k, flow) in [Flow::Up, Flow::Down].into_iter().enumerate() {
            let start = ((i * 2 + k) * 15_485_863 % PERIOD) as u32;
            streams.push((client.clone(), Request { flow, len: traffic::ENDLESS, start }));
        }
    }
    let pace = if spec.extra_users_limits.is_some() { None } else { Some(others.limits.rate) };
    let bound = others.warmup + scenario.timeout + Duration::from_secs(10);
    let traffic = Traffic::start(streams, 0, bound, pace).context("starting the other users' streams")?;
    thread::sleep(others.warmup / 2);
    let (bytes, since) = (traffic.bytes(), Instant::now());
    let cpu = |pid| procstat::cpu_seconds(pid);
    let cpu_before = target.pid().map(cpu).transpose()?;
    thread::sleep(others.warmup / 2);
    let cpu_alone = procstat::since(target.pid().map(cpu).transpose()?, cpu_before);
    let cpu_s_per_s_alone = cpu_alone.map(|c| c / since.elapsed().as_secs_f64());
    Ok(RunningOthers { traffic, bytes, since, cpu_s_per_s_alone })
}

/// What the other users' streams moved per user and direction, from each stream's bytes
/// `before` and `after` `secs` seconds (uploads at even indices, downloads at odd).
fn others_record(others: &Others, spec: &TargetSpec, before: &[u64], after: &[u64], secs: f64) -> OthersRecord {
    let mib_s = |parity: usize| {
        let moved: u64 = before.iter().zip(after).skip(parity).step_by(2).map(|(b, a)| a - b).sum();
        moved as f64 / (1 << 20) as f64 / secs / others.users as f64
    };
    OthersRecord {
        users: others.users,
        limited_by_proxy: spec.extra_users_limits.is_some(),
        rate_each: others.limits.rate,
        max_connections: others.limits.max_connections,
        max_ips: others.limits.max_ips,
        up_mib_s_per_user: mib_s(0),
        down_mib_s_per_user: mib_s(1),
        proxy_cpu_s_per_s_alone: None,
    }
}
