//! The `connrate` scenario: short request/response connections through each target. Every
//! client thread loops for a fixed time: connect, send the protocol's request header (after
//! its handshake, for SOCKS) with a 64-byte payload addressed to a loopback echo server, read
//! the response header and the echo, verify it, close (with `--tls`, each connection first makes a full TLS 1.3 handshake with the target,
//! and ends with close_notify). Reports connections per second, connect-to-last-byte latency, the target's CPU per
//! 1,000 connections and its peak RSS; then a second, one-connection-at-a-time pass for the
//! latency of a lone connection.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::pattern::{self, PERIOD};
use crate::procstat::{self, RssSampler, RssSeries};
use crate::protocol::Dialer;
use crate::report::protocol_line;
use crate::report::{
    best_peer, cell, groups, median, median_measured, ratio_cell, CdfPoint, Latencies, Latency, Machine,
};
use crate::target::{RunningTarget, TargetSpec};
use crate::tls;
use shardray_wire::addr::{Address, Destination};

/// Payload bytes per connection, each way.
pub const PAYLOAD: usize = 64;

/// What to run.
#[derive(Debug, Clone)]
pub struct Connrate {
    /// Client threads in the main pass.
    pub parallel: usize,
    /// Length of the main pass.
    pub duration: Duration,
    /// Length of the one-at-a-time pass (zero skips it).
    pub serial_duration: Duration,
    /// Measurements per target.
    pub runs: usize,
    /// Bound on any one connection.
    pub conn_timeout: Duration,
    /// Bound on a target's start-up.
    pub startup: Duration,
    /// `--dest-domain`: each target is measured a second time per run with this name (which
    /// must resolve to the loopback echo server) as every connection's destination, under
    /// the target name "NAME by name", so that the table compares the two.
    pub dest_domain: Option<String>,
}

/// One pass (parallel or serial) over one target.
#[derive(Debug, Clone, Serialize)]
pub struct PassRecord {
    /// Client threads.
    pub parallel: usize,
    /// From the start line to the last thread's end.
    pub wall_s: f64,
    /// Connections that completed with a verified echo.
    pub connections: u64,
    /// Connections that failed (connect, proxy or echo errors, or a wrong echo).
    pub errors: u64,
    /// The first few errors' messages.
    pub error_samples: Vec<String>,
    /// `connections / wall_s`.
    pub conns_per_s: f64,
    /// Connect to last echoed byte, successful connections only.
    pub latency: Latency,
    /// CPU seconds (user + system, all threads) the target spent during the pass; `None` for
    /// an external target given without its pid.
    pub proxy_cpu_s: Option<f64>,
    /// `proxy_cpu_s` per 1,000 connections, in milliseconds.
    pub cpu_ms_per_1k: Option<f64>,
    /// CPU seconds the harness itself spent (clients and echo server).
    pub harness_cpu_s: f64,
    /// Every latency, for the merged distribution over runs (not saved).
    #[serde(skip)]
    pub latencies: Latencies,
}

/// One measurement of one target: the parallel pass, then the serial one.
#[derive(Debug, Clone, Serialize)]
pub struct ConnRecord {
    /// Target name.
    pub target: String,
    /// "vless" (plain TCP) or "vless-tls".
    pub protocol: &'static str,
    /// 1-based run number.
    pub run: usize,
    /// The main pass.
    pub parallel: PassRecord,
    /// The one-at-a-time pass, if run.
    pub serial: Option<PassRecord>,
    /// The target's peak RSS (VmHWM) in MiB after both passes; `None` when not measured.
    pub peak_rss_mib: Option<f64>,
    /// The target's RSS over both passes, when measured.
    pub rss: Option<RssSeries>,
}

/// Medians over the runs of one target.
#[derive(Debug, Clone, Serialize)]
pub struct ConnMedian {
    /// Target name.
    pub target: String,
    /// "vless" (plain TCP) or "vless-tls".
    pub protocol: &'static str,
    /// Runs the medians are taken over.
    pub runs: usize,
    /// Connections per second in the parallel pass.
    pub conns_per_s: f64,
    /// Latency percentiles in the parallel pass (microseconds).
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Target CPU milliseconds per 1,000 connections in the parallel pass, when measured.
    pub cpu_ms_per_1k: Option<f64>,
    /// Peak RSS in MiB, when measured.
    pub peak_rss_mib: Option<f64>,
    /// One-at-a-time latency percentiles (microseconds), when the serial pass ran.
    pub serial_p50_us: Option<f64>,
    /// 99th percentile of the serial pass.
    pub serial_p99_us: Option<f64>,
    /// Failed connections over all runs and passes.
    pub errors: u64,
    /// Ratios against sing-box's medians, when sing-box was measured.
    pub vs_sing_box: Option<Ratios>,
    /// Connections per second divided by the higher of sing-box's and shoes's, when one was
    /// measured.
    pub conns_per_s_vs_best_peer: Option<f64>,
    /// Latency CDF of the parallel passes, every run's connections together.
    pub cdf: Vec<CdfPoint>,
    /// Latency CDF of the one-at-a-time passes, every run's connections together.
    pub serial_cdf: Vec<CdfPoint>,
}

/// This target's medians divided by sing-box's.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratios {
    /// Connections per second (higher is better).
    pub conns_per_s: f64,
    /// CPU per connection (lower is better), when both CPUs were measured.
    pub cpu_per_conn: Option<f64>,
    /// One-at-a-time p50 latency (lower is better).
    pub serial_p50: Option<f64>,
}

/// Everything one `connrate` invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct ConnrateReport {
    /// Always `"connrate"`, for readers of saved JSON.
    pub scenario: &'static str,
    /// "vless" (plain TCP) or "vless-tls": the protocol of the first run (every run's is in
    /// the medians and runs).
    pub protocol: &'static str,
    /// Where.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Client threads in the main pass.
    pub parallel: usize,
    /// Seconds of the main pass.
    pub duration_s: f64,
    /// Seconds of the one-at-a-time pass.
    pub serial_duration_s: f64,
    /// Every run.
    pub runs: Vec<ConnRecord>,
    /// Medians per target.
    pub medians: Vec<ConnMedian>,
}

/// Runs every run of every target, interleaved (run 1 of each target, then run 2, ...).
pub fn run_all(
    specs: &[TargetSpec],
    scenario: &Connrate,
    sink: SocketAddr,
    echo: SocketAddr,
    workdir: &Path,
    mut progress: impl FnMut(&ConnRecord),
) -> Result<Vec<ConnRecord>> {
    let mut records = Vec::new();
    for run in 1..=scenario.runs {
        for spec in specs {
            let by_ip = Destination::from(echo);
            let by_name = scenario
                .dest_domain
                .iter()
                .map(|name| Destination { addr: Address::Domain(name.as_str().into()), port: echo.port() });
            for dest in std::iter::once(by_ip).chain(by_name) {
                let target = spec.start(workdir, sink, scenario.startup)?;
                let record = measure(&target, spec, scenario, run, dest)
                    .with_context(|| format!("{} run {run}", spec.name()))
                    .map_err(|e| anyhow!("{e:#}\ntarget log:\n{}", target.log_tail()))?;
                target.stop()?;
                progress(&record);
                records.push(record);
            }
        }
    }
    Ok(records)
}

fn measure(
    target: &RunningTarget,
    spec: &TargetSpec,
    scenario: &Connrate,
    run: usize,
    dest: Destination,
) -> Result<ConnRecord> {
    let name = match &dest.addr {
        Address::Domain(_) => format!("{} by name", spec.name()),
        _ => spec.name(),
    };
    let conn = ConnSpec { dialer: target.dialer(), dest, timeout: scenario.conn_timeout };
    let sampler = target.pid().map(|pid| RssSampler::spawn(pid, Duration::from_millis(100))).transpose()?;

    let parallel = pass(target, &conn, scenario.parallel, scenario.duration, run)?;
    let serial = if scenario.serial_duration.is_zero() {
        None
    } else {
        Some(pass(target, &conn, 1, scenario.serial_duration, run)?)
    };
    let peak_rss_kib = target.pid().map(procstat::peak_rss_kib).transpose()?;
    let rss = sampler.map(RssSampler::finish);
    Ok(ConnRecord {
        target: name,
        protocol: spec.protocol(),
        run,
        parallel,
        serial,
        peak_rss_mib: peak_rss_kib.map(|kib| kib as f64 / 1024.0),
        rss,
    })
}

/// How each client connection reaches the echo server.
#[derive(Debug, Clone)]
struct ConnSpec {
    /// The proxy, its protocol and credentials (and TLS settings).
    dialer: Dialer,
    /// Each connection's destination: the echo server, by address or by name.
    dest: Destination,
    timeout: Duration,
}

/// What one client thread saw.
#[derive(Default)]
struct ThreadOutcome {
    latencies: Latencies,
    ok: u64,
    errors: u64,
    samples: Vec<String>,
}

const ERROR_SAMPLES: usize = 5;

/// `threads` client threads, each looping for `duration`; the target's CPU is read around it.
fn pass(target: &RunningTarget, conn: &ConnSpec, threads: usize, duration: Duration, run: usize) -> Result<PassRecord> {
    let pid = target.pid();
    let start_line = Arc::new(Barrier::new(threads + 1));
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let conn = conn.clone();
        let start_line = Arc::clone(&start_line);
        // Every thread, and every run, walks a different part of the pattern.
        let offset = (i * 7_919 + run * 104_729) % PERIOD;
        workers.push(thread::Builder::new().name(format!("conn-{i}")).spawn(move || {
            start_line.wait();
            client_loop(&conn, duration, offset)
        })?);
    }

    let cpu_before = pid.map(procstat::cpu_seconds).transpose()?;
    let own_before = procstat::own_cpu_seconds()?;
    start_line.wait();
    let started = Instant::now();
    let mut latencies = Latencies::default();
    let (mut ok, mut errors, mut samples) = (0u64, 0u64, Vec::new());
    let mut panicked = 0;
    for worker in workers {
        match worker.join() {
            Ok(o) => {
                latencies.add(&o.latencies);
                ok += o.ok;
                errors += o.errors;
                samples.extend(o.samples);
            }
            Err(_) => panicked += 1,
        }
    }
    let wall = started.elapsed().as_secs_f64();
    // Let the target finish tearing down the last connections, so that is counted too.
    thread::sleep(Duration::from_millis(50));
    let cpu = procstat::since(pid.map(procstat::cpu_seconds).transpose()?, cpu_before);
    let own = procstat::own_cpu_seconds()? - own_before;
    if panicked > 0 {
        bail!("{panicked} client threads panicked");
    }
    if ok == 0 {
        bail!("no connection succeeded ({errors} failed): {}", samples.join("; "));
    }
    samples.truncate(ERROR_SAMPLES);
    Ok(PassRecord {
        parallel: threads,
        wall_s: wall,
        connections: ok,
        errors,
        error_samples: samples,
        conns_per_s: ok as f64 / wall,
        latency: latencies.summary(),
        proxy_cpu_s: cpu,
        cpu_ms_per_1k: cpu.map(|cpu| cpu * 1e3 / ok as f64 * 1e3),
        harness_cpu_s: own,
        latencies,
    })
}

/// One client thread: connections back to back until `duration` is up.
/// Each connection is itself bounded by the connection timeout.
fn client_loop(conn: &ConnSpec, duration: Duration, mut offset: usize) -> ThreadOutcome {
    let mut out = ThreadOutcome::default();
    let end = Instant::now() + duration;
    let mut reply = [0u8; PAYLOAD];
    while Instant::now() < end {
        let payload = &pattern::pattern()[offset..offset + PAYLOAD];
        offset = (offset + PAYLOAD + 1) % PERIOD;
        let began = Instant::now();
        match one_connection(conn, payload, &mut reply) {
            Ok(()) => {
                out.latencies.record(began.elapsed());
                out.ok += 1;
            }
            Err(e) => {
                out.errors += 1;
                if out.samples.len() < ERROR_SAMPLES {
                    out.samples.push(format!("{e:#}"));
                }
                // A failing target should not turn the loop into a busy spin.
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    out
}

/// Connect (and handshake, over TLS and for SOCKS), send the request header and payload in one
/// write, read the response header and the echo, check it, close.
fn one_connection(conn: &ConnSpec, payload: &[u8], echoed: &mut [u8; PAYLOAD]) -> Result<()> {
    let mut s = conn.dialer.connect_to(conn.dest.clone(), conn.timeout)?;
    s.write_all(payload).context("sending the request")?;
    s.flush().context("sending the request")?;
    s.read_exact(echoed).map_err(short_echo).context("reading the echo")?;
    if echoed[..] != *payload {
        bail!("the echo differs from the payload");
    }
    s.close();
    Ok(())
}

/// The CDF of every latency of `passes` together.
fn merged<'a>(passes: impl Iterator<Item = &'a PassRecord>) -> Vec<CdfPoint> {
    let mut all = Latencies::default();
    for p in passes {
        all.add(&p.latencies);
    }
    all.cdf()
}

fn short_echo(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(e.kind(), format!("closed before {PAYLOAD} echoed bytes"))
    } else {
        e
    }
}

impl ConnrateReport {
    /// Builds the report, computing medians per target in first-seen order.
    pub fn new(scenario: &Connrate, command: String, runs: Vec<ConnRecord>) -> ConnrateReport {
        let mut medians: Vec<ConnMedian> = groups(&runs, |r| r.target.clone())
            .into_iter()
            .map(|(target, group)| {
                let protocol = group.first().map_or(tls::PROTOCOL_PLAIN, |r| r.protocol);
                let m = |f: &dyn Fn(&ConnRecord) -> f64| median(group.iter().map(|r| f(r)).collect());
                let mm = |f: &dyn Fn(&ConnRecord) -> Option<f64>| median_measured(group.iter().map(|r| f(r)));
                let serial: Vec<&PassRecord> = group.iter().filter_map(|r| r.serial.as_ref()).collect();
                let sm = |f: fn(&PassRecord) -> f64| {
                    (!serial.is_empty()).then(|| median(serial.iter().map(|p| f(p)).collect()))
                };
                ConnMedian {
                    runs: group.len(),
                    conns_per_s: m(&|r| r.parallel.conns_per_s),
                    p50_us: m(&|r| r.parallel.latency.p50_us),
                    p99_us: m(&|r| r.parallel.latency.p99_us),
                    p999_us: m(&|r| r.parallel.latency.p999_us),
                    cpu_ms_per_1k: mm(&|r| r.parallel.cpu_ms_per_1k),
                    peak_rss_mib: mm(&|r| r.peak_rss_mib),
                    serial_p50_us: sm(|p| p.latency.p50_us),
                    serial_p99_us: sm(|p| p.latency.p99_us),
                    errors: group.iter().map(|r| r.parallel.errors + r.serial.as_ref().map_or(0, |s| s.errors)).sum(),
                    vs_sing_box: None,
                    conns_per_s_vs_best_peer: None,
                    cdf: merged(group.iter().map(|r| &r.parallel)),
                    serial_cdf: merged(serial.iter().copied()),
                    target,
                    protocol,
                }
            })
            .collect();
        if let Some(base) = medians.iter().find(|m| m.target == "sing-box").cloned() {
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            for m in &mut medians {
                m.vs_sing_box = Some(Ratios {
                    conns_per_s: ratio(m.conns_per_s, base.conns_per_s),
                    cpu_per_conn: m.cpu_ms_per_1k.zip(base.cpu_ms_per_1k).map(|(a, b)| ratio(a, b)),
                    serial_p50: m.serial_p50_us.zip(base.serial_p50_us).map(|(a, b)| ratio(a, b)),
                });
            }
        }
        let best = best_peer(medians.iter().map(|m| (m.target.as_str(), Some(m.conns_per_s))), true).map(|(_, v)| v);
        for m in &mut medians {
            m.conns_per_s_vs_best_peer = best.map(|best| m.conns_per_s / best);
        }
        ConnrateReport {
            scenario: "connrate",
            protocol: runs.first().map_or(tls::PROTOCOL_PLAIN, |r| r.protocol),
            machine: Machine::detect(),
            command,
            parallel: scenario.parallel,
            duration_s: scenario.duration.as_secs_f64(),
            serial_duration_s: scenario.serial_duration.as_secs_f64(),
            runs,
            medians,
        }
    }

    /// The report as Markdown: machine line, per-run table, medians table.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "Machine: {} ({} CPUs), Linux {}", m.cpu, m.cpus, m.kernel);
        let _ = writeln!(out, "Command: `{}`\n", self.command);
        let _ = writeln!(
            out,
            "{}, {PAYLOAD}-byte echo; {} parallel for {:.0} s, then 1 at a time for {:.0} s. \
             Latency is connect to last echoed byte, in µs.\n",
            protocol_line(self.protocol),
            self.parallel,
            self.duration_s,
            self.serial_duration_s
        );
        out.push_str(
            "| target | protocol | run | conns | errors | conns/s | p50 | p99 | p99.9 | proxy CPU s | CPU ms/1k conns | \
             peak RSS MiB | harness CPU s | serial p50 | serial p99 |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.runs {
            let p = &r.parallel;
            let (s50, s99) = r.serial.as_ref().map_or(("–".into(), "–".into()), |s| {
                (format!("{:.0}", s.latency.p50_us), format!("{:.0}", s.latency.p99_us))
            });
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.2} | {s50} | {s99} |",
                r.target,
                r.protocol,
                r.run,
                p.connections,
                p.errors,
                p.conns_per_s,
                p.latency.p50_us,
                p.latency.p99_us,
                p.latency.p999_us,
                cell(p.proxy_cpu_s, 2),
                cell(p.cpu_ms_per_1k, 0),
                cell(r.peak_rss_mib, 1),
                p.harness_cpu_s,
            );
        }
        out.push_str(
            "\nMedians:\n\n\
             | target | protocol | runs | conns/s | p50 µs | p99 µs | p99.9 µs | CPU ms/1k conns | peak RSS MiB | \
             1-at-a-time p50 µs | 1-at-a-time p99 µs | conns/s vs sing-box | CPU/conn vs sing-box | \
             1-at-a-time p50 vs sing-box | conns/s vs best of sing-box, shoes |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let best = best_peer(self.medians.iter().map(|m| (m.target.as_str(), Some(m.conns_per_s))), true);
        let opt = |v: Option<f64>, suffix: &str, digits: usize| {
            v.map_or("–".to_owned(), |v| format!("{v:.digits$}{suffix}"))
        };
        for md in &self.medians {
            let r = md.vs_sing_box;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                md.target,
                md.protocol,
                md.runs,
                md.conns_per_s,
                md.p50_us,
                md.p99_us,
                md.p999_us,
                cell(md.cpu_ms_per_1k, 0),
                cell(md.peak_rss_mib, 1),
                opt(md.serial_p50_us, "", 0),
                opt(md.serial_p99_us, "", 0),
                opt(r.map(|r| r.conns_per_s), "×", 2),
                opt(r.and_then(|r| r.cpu_per_conn), "×", 2),
                opt(r.and_then(|r| r.serial_p50), "×", 2),
                ratio_cell(Some(md.conns_per_s), best),
            );
        }
        // With `--dest-domain`: each target's rate to the name against its rate to the address.
        let by_name: Vec<String> = self
            .medians
            .iter()
            .filter_map(|named| {
                let plain = named.target.strip_suffix(" by name")?;
                let ip = self.medians.iter().find(|m| m.target == plain && m.protocol == named.protocol)?;
                Some(format!("{plain} {:.2}×", named.conns_per_s / ip.conns_per_s))
            })
            .collect();
        if !by_name.is_empty() {
            let _ =
                writeln!(out, "\nConnections/s to the destination by name against by address: {}.", by_name.join(", "));
        }
        let errors: u64 = self.medians.iter().map(|m| m.errors).sum();
        if errors > 0 {
            let _ = writeln!(out, "\n{errors} connections failed; samples:");
            for r in &self.runs {
                for s in r.parallel.error_samples.iter().chain(r.serial.iter().flat_map(|s| &s.error_samples)) {
                    let _ = writeln!(out, "- {} run {}: {s}", r.target, r.run);
                }
            }
        }
        out
    }
}
