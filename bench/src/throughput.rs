//! The `throughput` scenario: N parallel streams of B bytes each, up or down, through each
//! target in turn (plain VLESS, or VLESS over TLS); what the client sees and what the target
//! process spends.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use crate::pattern::{Flow, Request, PERIOD};
use crate::procstat::{self, RssSampler, RssSeries};
use crate::target::{RunningTarget, TargetSpec};

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
    // Let the target finish closing the streams, so their teardown is counted too.
    thread::sleep(Duration::from_millis(50));
    let cpu = procstat::since(pid.map(procstat::cpu_seconds).transpose()?, cpu_before);
    let cpu_ticks = procstat::since(pid.map(procstat::stat_cpu_seconds).transpose()?, ticks_before);
    let own = procstat::own_cpu_seconds()? - own_before;
    let peak_rss_kib = pid.map(procstat::peak_rss_kib).transpose()?;
    let rss = sampler.map(RssSampler::finish);
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
    })
}
