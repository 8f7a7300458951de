//! The `idle` scenario: what M established but idle tunnels (of any protocol the harness
//! speaks) cost each target. Every tunnel is opened for real (the protocol's request header
//! and a small payload addressed to our own loopback
//! echo server, the echo read back through the proxy), then left idle. The target's RSS is
//! sampled, steady after a settle delay, before and with the tunnels open; its CPU is read while
//! opening and while idle. At the end every tunnel is checked for a close by the target, and a
//! sample of them makes one more round trip.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::pattern::{self, PERIOD};
use crate::procstat::{self, RssSampler, RssSeries};
use crate::progress::Progress;
use crate::protocol::{self, Dialer};
use crate::report::{best_peer, cell, groups, median, median_measured, ratio_cell, Machine};
use crate::sink::IdleEcho;
use crate::target::{RunningTarget, TargetSpec};

/// Payload bytes of each round trip through a tunnel.
pub const PAYLOAD: usize = 16;

/// Error messages kept per run.
const ERROR_SAMPLES: usize = 5;

/// What to run.
#[derive(Debug, Clone)]
pub struct Idle {
    /// Tunnels to hold open per target.
    pub tunnels: usize,
    /// Measurements per target.
    pub runs: usize,
    /// Client threads opening the tunnels.
    pub open_threads: usize,
    /// Wait before each steady RSS reading (after start-up, after opening, after closing).
    pub settle: Duration,
    /// RSS samples per steady reading; the median is taken.
    pub samples: usize,
    /// Time between those samples.
    pub sample_every: Duration,
    /// How long the tunnels stay idle (the steady reading included) before the checks.
    pub hold: Duration,
    /// Tunnels that make a round trip at the end.
    pub check: usize,
    /// Bound on any one connect or round trip.
    pub conn_timeout: Duration,
    /// Bound on opening all the tunnels.
    pub open_timeout: Duration,
    /// Bound on a target's start-up.
    pub startup: Duration,
    /// The open-file limit the targets inherit (for the report).
    pub nofile_limit: u64,
}

/// One measurement of one target. The target's own figures (descriptors, RSS, CPU) are
/// `None` for an external target given without its pid.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRecord {
    /// Target name.
    pub target: String,
    /// What the tunnels speak: "vless", "trojan", "ss-2022", ...
    pub protocol: &'static str,
    /// 1-based run number.
    pub run: usize,
    /// Tunnels asked for.
    pub tunnels: usize,
    /// Tunnels that completed their first round trip.
    pub opened: usize,
    /// Tunnels that failed to open (connect, proxy or echo errors, or past the open timeout).
    pub open_errors: usize,
    /// The first few errors' messages (opening and checks).
    pub error_samples: Vec<String>,
    /// Wall seconds opening took.
    pub open_s: f64,
    /// Connections the echo server held once the tunnels were open: each tunnel's far end.
    pub upstream_open: usize,
    /// Descriptors the target had open before opening the tunnels.
    pub fds_before: Option<usize>,
    /// Descriptors the target had open with the tunnels open.
    pub fds_with: Option<usize>,
    /// Steady RSS before opening, in MiB (median of the samples).
    pub rss_before_mib: Option<f64>,
    /// Steady RSS with the tunnels open, in MiB (median of the samples).
    pub rss_with_mib: Option<f64>,
    /// Largest minus smallest of the samples with the tunnels open, in MiB.
    pub rss_with_spread_mib: Option<f64>,
    /// RSS after the tunnels closed and the settle delay, in MiB.
    pub rss_after_close_mib: Option<f64>,
    /// `(rss_with - rss_before) / opened`, in KiB.
    pub kib_per_tunnel: Option<f64>,
    /// CPU seconds (user + system, all threads) the target spent while the tunnels opened.
    pub cpu_open_s: Option<f64>,
    /// `cpu_open_s` per 1,000 tunnels opened, in milliseconds.
    pub cpu_open_ms_per_1k: Option<f64>,
    /// Seconds of the idle window over which idle CPU is read.
    pub idle_s: f64,
    /// CPU seconds the target spent over the idle window.
    pub cpu_idle_s: Option<f64>,
    /// `cpu_idle_s / idle_s`, in milliseconds per second.
    pub cpu_idle_ms_per_s: Option<f64>,
    /// Open tunnels the target had closed (or reset) by the end of the idle window.
    pub closed_while_idle: usize,
    /// Tunnels that made the final round trip.
    pub checked: usize,
    /// Of those, how many failed it.
    pub check_failed: usize,
    /// The target's RSS over the whole measurement.
    pub rss: Option<RssSeries>,
}

#[cfg(test)]
impl Idle {
    /// A scenario that only names the tunnels and runs, for tests of the report.
    pub(crate) fn for_report(tunnels: usize, runs: usize) -> Idle {
        Idle {
            tunnels,
            runs,
            open_threads: 1,
            settle: Duration::ZERO,
            samples: 1,
            sample_every: Duration::ZERO,
            hold: Duration::ZERO,
            check: 1,
            conn_timeout: Duration::ZERO,
            open_timeout: Duration::ZERO,
            startup: Duration::ZERO,
            nofile_limit: 1024,
        }
    }
}

impl IdleRecord {
    /// Descriptors the target gained per open tunnel.
    pub fn fds_per_tunnel(&self) -> Option<f64> {
        let (with, before) = (self.fds_with?, self.fds_before?);
        if self.opened == 0 {
            return Some(0.0);
        }
        Some((with as f64 - before as f64) / self.opened as f64)
    }

    /// Tunnels that did not survive: never opened, closed while idle, or failed the check.
    pub fn failed(&self) -> usize {
        self.open_errors + self.closed_while_idle + self.check_failed
    }
}

/// Medians over the runs of one target; the target's own figures are `None` when any run
/// could not measure them.
#[derive(Debug, Clone, Serialize)]
pub struct IdleMedian {
    /// Target name.
    pub target: String,
    /// Runs the medians are taken over.
    pub runs: usize,
    /// RSS per open tunnel, KiB.
    pub kib_per_tunnel: Option<f64>,
    /// `kib_per_tunnel` divided by sing-box's, when sing-box was measured.
    pub kib_per_tunnel_vs_sing_box: Option<f64>,
    /// `kib_per_tunnel` divided by the lower of sing-box's and shoes's, when one was measured.
    pub kib_per_tunnel_vs_best_peer: Option<f64>,
    /// Steady RSS before opening, MiB.
    pub rss_before_mib: Option<f64>,
    /// Steady RSS with the tunnels open, MiB.
    pub rss_with_mib: Option<f64>,
    /// Descriptors the target holds per open tunnel.
    pub fds_per_tunnel: Option<f64>,
    /// CPU milliseconds per 1,000 tunnels opened.
    pub cpu_open_ms_per_1k: Option<f64>,
    /// CPU milliseconds per second while idle.
    pub cpu_idle_ms_per_s: Option<f64>,
    /// Tunnels that did not survive, over all runs.
    pub failed: usize,
}

/// Everything one `idle` invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Always `"idle"`, for readers of saved JSON.
    pub scenario: &'static str,
    /// Where.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Tunnels asked for per target.
    pub tunnels: usize,
    /// The open-file limit the targets inherited.
    pub nofile_limit: u64,
    /// Every run.
    pub runs: Vec<IdleRecord>,
    /// Medians per target.
    pub medians: Vec<IdleMedian>,
}

/// A steady reading: the median of several samples and their spread, in KiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Steady {
    /// Median sample.
    pub median_kib: f64,
    /// Largest minus smallest sample.
    pub spread_kib: f64,
}

impl Steady {
    /// The median and spread of `samples` (zero for none).
    pub fn of(samples: &[u64]) -> Steady {
        let min = samples.iter().copied().min().unwrap_or(0);
        let max = samples.iter().copied().max().unwrap_or(0);
        Steady { median_kib: median(samples.iter().map(|&s| s as f64).collect()), spread_kib: (max - min) as f64 }
    }
}

/// RSS growth per tunnel in KiB; zero when no tunnel opened. Negative growth (memory returned
/// to the system meanwhile) is reported as it is.
pub fn kib_per_tunnel(before: Steady, with: Steady, tunnels: usize) -> f64 {
    if tunnels == 0 {
        return 0.0;
    }
    (with.median_kib - before.median_kib) / tunnels as f64
}

/// Runs every run of every target, interleaved (run 1 of each target, then run 2, ...).
pub fn run_all(
    specs: &[TargetSpec],
    scenario: &Idle,
    sink: SocketAddr,
    echo: &IdleEcho,
    workdir: &Path,
    progress: &Progress,
) -> Result<Vec<IdleRecord>> {
    let mut records = Vec::new();
    for run in 1..=scenario.runs {
        for spec in specs {
            progress.set_message(format!("{} run {run}: starting", spec.name()));
            let target = spec.start(workdir, sink, scenario.startup)?;
            let record = measure(&target, spec, scenario, run, echo, progress)
                .with_context(|| format!("{} run {run}", spec.name()))
                .map_err(|e| anyhow!("{e:#}\ntarget log:\n{}", target.log_tail()))?;
            target.stop()?;
            progress.println(format!(
                "{:>8} run {}: {} of {} tunnels open, RSS {} -> {} MiB (±{}), {} KiB/tunnel, \
                 {} CPU ms/1k opened, {} CPU ms/s idle, {} failed",
                record.target,
                record.run,
                record.opened,
                record.tunnels,
                cell(record.rss_before_mib, 1),
                cell(record.rss_with_mib, 1),
                cell(record.rss_with_spread_mib.map(|s| s / 2.0), 2),
                cell(record.kib_per_tunnel, 1),
                cell(record.cpu_open_ms_per_1k, 0),
                cell(record.cpu_idle_ms_per_s, 2),
                record.failed(),
            ));
            progress.inc(1);
            records.push(record);
        }
    }
    Ok(records)
}

/// `samples` RSS readings `every` apart, as a steady reading.
fn steady_rss(pid: u32, samples: usize, every: Duration) -> Result<Steady> {
    let mut kib = Vec::with_capacity(samples);
    for i in 0..samples.max(1) {
        if i > 0 {
            thread::sleep(every);
        }
        kib.push(procstat::rss_kib(pid)?);
    }
    Ok(Steady::of(&kib))
}

fn measure(
    target: &RunningTarget,
    spec: &TargetSpec,
    scenario: &Idle,
    run: usize,
    echo: &IdleEcho,
    progress: &Progress,
) -> Result<IdleRecord> {
    let pid = target.pid();
    let name = spec.name();
    // Each reading of the target's own figures, or `None` without a pid.
    let read = |f: &dyn Fn(u32) -> Result<f64>| pid.map(f).transpose();
    let steady = || pid.map(|pid| steady_rss(pid, scenario.samples, scenario.sample_every)).transpose();
    let fds = || pid.map(procstat::open_fds).transpose();
    let sampler = pid.map(|pid| RssSampler::spawn(pid, Duration::from_millis(100))).transpose()?;
    progress.set_message(format!("{name} run {run}: settling"));
    thread::sleep(scenario.settle);
    let before = steady()?;
    let fds_before = fds()?;

    let cpu_before_open = read(&procstat::cpu_seconds)?;
    let opened_at = Instant::now();
    let opening = open_tunnels(&target.dialer(), echo.addr(), scenario, |n| {
        progress.set_message(format!("{name} run {run}: {n} of {} tunnels open", scenario.tunnels));
    });
    let open_s = opened_at.elapsed().as_secs_f64();
    let cpu_open = procstat::since(read(&procstat::cpu_seconds)?, cpu_before_open);
    let mut errors = opening.errors;
    let mut tunnels = opening.tunnels;
    if tunnels.is_empty() {
        bail!("no tunnel opened ({} failed): {}", opening.failed, errors.join("; "));
    }

    progress.set_message(format!("{name} run {run}: {} tunnels idle", tunnels.len()));
    let idle_began = Instant::now();
    let cpu_before_idle = read(&procstat::cpu_seconds)?;
    thread::sleep(scenario.settle);
    let upstream_open = echo.open();
    let with = steady()?;
    let fds_with = fds()?;
    if let Some(rest) = scenario.hold.checked_sub(idle_began.elapsed()) {
        thread::sleep(rest);
    }
    let idle_s = idle_began.elapsed().as_secs_f64();
    let cpu_idle = procstat::since(read(&procstat::cpu_seconds)?, cpu_before_idle);

    progress.set_message(format!("{name} run {run}: checking"));
    let closed = count_closed(&tunnels, &mut errors);
    let (checked, check_failed) = check_sample(&mut tunnels, scenario, &mut errors);

    progress.set_message(format!("{name} run {run}: closing"));
    drop(tunnels);
    thread::sleep(scenario.settle);
    let after_close = pid.map(procstat::rss_kib).transpose()?;
    let rss = sampler.map(RssSampler::finish);

    errors.truncate(ERROR_SAMPLES);
    let opened = opening.opened;
    Ok(IdleRecord {
        target: name,
        protocol: spec.protocol(),
        run,
        tunnels: scenario.tunnels,
        opened,
        open_errors: opening.failed,
        error_samples: errors,
        open_s,
        upstream_open,
        fds_before,
        fds_with,
        rss_before_mib: before.map(|b| b.median_kib / 1024.0),
        rss_with_mib: with.map(|w| w.median_kib / 1024.0),
        rss_with_spread_mib: with.map(|w| w.spread_kib / 1024.0),
        rss_after_close_mib: after_close.map(|kib| kib as f64 / 1024.0),
        kib_per_tunnel: before.zip(with).map(|(before, with)| kib_per_tunnel(before, with, opened)),
        cpu_open_s: cpu_open,
        cpu_open_ms_per_1k: cpu_open.map(|cpu| if opened > 0 { cpu * 1e6 / opened as f64 } else { 0.0 }),
        idle_s,
        cpu_idle_s: cpu_idle,
        cpu_idle_ms_per_s: cpu_idle.map(|cpu| cpu * 1e3 / idle_s),
        closed_while_idle: closed,
        checked,
        check_failed,
        rss,
    })
}

/// The tunnels that opened, and what failed.
struct Opening {
    tunnels: Vec<Tunnel>,
    opened: usize,
    failed: usize,
    errors: Vec<String>,
}

/// One open tunnel and the pattern offset of its next payload.
struct Tunnel {
    conn: protocol::Tunnel,
    offset: usize,
}

/// Opens `scenario.tunnels` tunnels from `open_threads` threads; `progress` hears the count
/// opened so far now and then.
fn open_tunnels(dialer: &Dialer, echo: SocketAddr, scenario: &Idle, progress: impl Fn(usize)) -> Opening {
    let total = scenario.tunnels;
    let threads = scenario.open_threads.clamp(1, total.max(1));
    let deadline = Instant::now() + scenario.open_timeout;
    let next = AtomicUsize::new(0);
    let opened = AtomicUsize::new(0);
    let out = Mutex::new(Opening { tunnels: Vec::with_capacity(total), opened: 0, failed: 0, errors: Vec::new() });
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut mine = Vec::new();
                let (mut failed, mut errors) = (0, Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let offset = (i * 7_919) % PERIOD;
                    let result = if Instant::now() >= deadline {
                        Err(anyhow!("not opened within {:?}", scenario.open_timeout))
                    } else {
                        open_one(dialer, echo, payload(offset), scenario.conn_timeout)
                    };
                    match result {
                        Ok(conn) => {
                            mine.push(Tunnel { conn, offset: next_offset(offset) });
                            opened.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed += 1;
                            if errors.len() < ERROR_SAMPLES {
                                errors.push(format!("opening tunnel {i}: {e:#}"));
                            }
                        }
                    }
                }
                let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                out.opened += mine.len();
                out.tunnels.append(&mut mine);
                out.failed += failed;
                out.errors.append(&mut errors);
            });
        }
        // Report progress until every thread has taken its last index.
        while next.load(Ordering::Relaxed) < total {
            progress(opened.load(Ordering::Relaxed));
            thread::sleep(Duration::from_millis(100));
        }
    });
    progress(opened.load(Ordering::Relaxed));
    out.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// The payload at `offset` in the pattern.
fn payload(offset: usize) -> &'static [u8] {
    &pattern::pattern()[offset..offset + PAYLOAD]
}

fn next_offset(offset: usize) -> usize {
    (offset + PAYLOAD + 1) % PERIOD
}

/// Connects, sends the header with the first payload, reads the response header and the echo;
/// the tunnel then holds no buffer of ours while idle.
fn open_one(dialer: &Dialer, echo: SocketAddr, payload: &[u8], timeout: Duration) -> Result<protocol::Tunnel> {
    let mut conn = dialer.connect(echo, timeout)?;
    conn.write_all(payload).context("sending the request")?;
    expect_echo(&mut conn, payload)?;
    conn.release_buffers();
    Ok(conn)
}

fn expect_echo(conn: &mut protocol::Tunnel, payload: &[u8]) -> Result<()> {
    let mut echoed = [0u8; PAYLOAD];
    conn.read_exact(&mut echoed).context("reading the echo")?;
    if echoed != payload {
        bail!("the echo differs from the payload");
    }
    Ok(())
}

/// Tunnels the target closed or reset: a non-blocking peek that sees the end of the stream or
/// an error. Unexpected bytes count as a failure too.
fn count_closed(tunnels: &[Tunnel], errors: &mut Vec<String>) -> usize {
    let mut closed = 0;
    let mut probe = [0u8; 1];
    for (i, t) in tunnels.iter().enumerate() {
        // Idle tunnels are plain TCP (the scenario has no TLS).
        let Some(sock) = t.conn.socket() else { continue };
        let outcome = sock.set_nonblocking(true).and_then(|()| sock.peek(&mut probe));
        let problem = match outcome {
            Ok(0) => Some("closed by the target".to_owned()),
            Ok(_) => Some("unexpected bytes from an idle tunnel".to_owned()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(format!("error on an idle tunnel: {e}")),
        };
        let _ = sock.set_nonblocking(false);
        if let Some(p) = problem {
            closed += 1;
            if errors.len() < ERROR_SAMPLES {
                errors.push(format!("tunnel {i}: {p}"));
            }
        }
    }
    closed
}

/// Indices of `want` tunnels spread evenly over `len`.
pub fn sample_indices(len: usize, want: usize) -> Vec<usize> {
    let want = want.min(len);
    (0..want).map(|k| k * len / want).collect()
}

/// One round trip on an even sample of the tunnels: (checked, failed).
fn check_sample(tunnels: &mut [Tunnel], scenario: &Idle, errors: &mut Vec<String>) -> (usize, usize) {
    let picks = sample_indices(tunnels.len(), scenario.check);
    let mut failed = 0;
    for &i in &picks {
        let t = &mut tunnels[i];
        let data = payload(t.offset);
        t.offset = next_offset(t.offset);
        let result = t.conn.write_all(data).context("sending").and_then(|()| expect_echo(&mut t.conn, data));
        if let Err(e) = result {
            failed += 1;
            if errors.len() < ERROR_SAMPLES {
                errors.push(format!("check on tunnel {i}: {e:#}"));
            }
        }
    }
    (picks.len(), failed)
}

impl IdleReport {
    /// Builds the report, computing medians per target in first-seen order.
    pub fn new(scenario: &Idle, command: String, runs: Vec<IdleRecord>) -> IdleReport {
        let mut medians: Vec<IdleMedian> = groups(&runs, |r| r.target.clone())
            .into_iter()
            .map(|(target, group)| {
                let m = |f: fn(&IdleRecord) -> Option<f64>| median_measured(group.iter().map(|r| f(r)));
                IdleMedian {
                    runs: group.len(),
                    kib_per_tunnel: m(|r| r.kib_per_tunnel),
                    kib_per_tunnel_vs_sing_box: None,
                    kib_per_tunnel_vs_best_peer: None,
                    rss_before_mib: m(|r| r.rss_before_mib),
                    rss_with_mib: m(|r| r.rss_with_mib),
                    fds_per_tunnel: m(|r| r.fds_per_tunnel()),
                    cpu_open_ms_per_1k: m(|r| r.cpu_open_ms_per_1k),
                    cpu_idle_ms_per_s: m(|r| r.cpu_idle_ms_per_s),
                    failed: group.iter().map(|r| r.failed()).sum(),
                    target,
                }
            })
            .collect();
        if let Some(base) = medians.iter().find(|m| m.target == "sing-box").and_then(|m| m.kib_per_tunnel) {
            for m in &mut medians {
                m.kib_per_tunnel_vs_sing_box = m.kib_per_tunnel.filter(|_| base > 0.0).map(|own| own / base);
            }
        }
        let best = best_peer(medians.iter().map(|m| (m.target.as_str(), m.kib_per_tunnel)), false).map(|(_, v)| v);
        for m in &mut medians {
            m.kib_per_tunnel_vs_best_peer = m.kib_per_tunnel.zip(best).map(|(own, best)| own / best);
        }
        IdleReport {
            scenario: "idle",
            machine: Machine::detect(),
            command,
            tunnels: scenario.tunnels,
            nofile_limit: scenario.nofile_limit,
            runs,
            medians,
        }
    }

    /// The report as Markdown: machine line, per-run table, medians table, failures.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "Machine: {} ({} CPUs), Linux {}", m.cpu, m.cpus, m.kernel);
        let _ = writeln!(out, "Command: `{}`\n", self.command);
        let _ = writeln!(
            out,
            "{} idle {} tunnels per target, each opened with a {PAYLOAD}-byte echo round trip. RSS is the \
             target's VmRSS, the median of several samples once it settled; KiB/tunnel is its growth per \
             open tunnel (kernel socket buffers are not in RSS). fds is the target's open descriptors with \
             the tunnels open (limit {}).\n",
            self.tunnels,
            crate::report::protocol_title(self.runs.first().map_or("vless", |r| r.protocol)),
            self.nofile_limit
        );
        out.push_str(
            "| target | run | opened | open s | upstream | fds | RSS before MiB | RSS with MiB | spread MiB | \
             KiB/tunnel | CPU ms/1k opened | idle CPU ms/s | closed while idle | check failed | \
             RSS after close MiB |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.runs {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |",
                r.target,
                r.run,
                r.opened,
                r.open_s,
                r.upstream_open,
                r.fds_with.map_or_else(|| "–".to_owned(), |n| n.to_string()),
                cell(r.rss_before_mib, 1),
                cell(r.rss_with_mib, 1),
                cell(r.rss_with_spread_mib, 2),
                cell(r.kib_per_tunnel, 1),
                cell(r.cpu_open_ms_per_1k, 0),
                cell(r.cpu_idle_ms_per_s, 2),
                r.closed_while_idle,
                r.check_failed,
                r.checked,
                cell(r.rss_after_close_mib, 1),
            );
        }
        out.push_str(
            "\nMedians:\n\n\
             | target | runs | KiB/tunnel | vs sing-box | vs best of sing-box, shoes | RSS before MiB | RSS with MiB | fds/tunnel | \
             CPU ms/1k opened | idle CPU ms/s | failed tunnels |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let best = best_peer(self.medians.iter().map(|m| (m.target.as_str(), m.kib_per_tunnel)), false);
        for md in &self.medians {
            let ratio = md.kib_per_tunnel_vs_sing_box.map_or("–".to_owned(), |r| format!("{r:.2}×"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {ratio} | {} | {} | {} | {} | {} | {} | {} |",
                md.target,
                md.runs,
                cell(md.kib_per_tunnel, 1),
                ratio_cell(md.kib_per_tunnel, best),
                cell(md.rss_before_mib, 1),
                cell(md.rss_with_mib, 1),
                cell(md.fds_per_tunnel, 1),
                cell(md.cpu_open_ms_per_1k, 0),
                cell(md.cpu_idle_ms_per_s, 2),
                md.failed
            );
        }
        let failed: usize = self.medians.iter().map(|m| m.failed).sum();
        if failed > 0 {
            let _ = writeln!(out, "\n{failed} tunnels failed; samples:");
            for r in &self.runs {
                for s in &r.error_samples {
                    let _ = writeln!(out, "- {} run {}: {s}", r.target, r.run);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_reading_is_median_and_spread() {
        let s = Steady::of(&[100, 104, 101, 250, 102]);
        assert_eq!(s.median_kib, 102.0);
        assert_eq!(s.spread_kib, 150.0);
        assert_eq!(Steady::of(&[]), Steady { median_kib: 0.0, spread_kib: 0.0 });
    }

    #[test]
    fn per_tunnel_growth() {
        let before = Steady::of(&[10_000, 10_000, 10_002]);
        let with = Steady::of(&[30_000, 30_000]);
        assert_eq!(kib_per_tunnel(before, with, 2_000), 10.0);
        assert_eq!(kib_per_tunnel(before, with, 0), 0.0);
        // Memory returned meanwhile shows as negative growth, not as garbage.
        assert_eq!(kib_per_tunnel(with, before, 2_000), -10.0);
    }

    #[test]
    fn samples_spread_evenly_and_stay_in_range() {
        assert_eq!(sample_indices(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(sample_indices(3, 100), vec![0, 1, 2]);
        assert!(sample_indices(0, 10).is_empty());
        let picks = sample_indices(2_000, 100);
        assert_eq!(picks.len(), 100);
        assert!(picks.windows(2).all(|w| w[0] < w[1]) && *picks.last().unwrap() < 2_000);
    }

    fn record(target: &str, run: usize, kib: f64) -> IdleRecord {
        IdleRecord {
            protocol: "vless",
            target: target.into(),
            run,
            tunnels: 100,
            opened: 100,
            open_errors: 1,
            error_samples: Vec::new(),
            open_s: 1.0,
            upstream_open: 100,
            fds_before: Some(10),
            fds_with: Some(210),
            rss_before_mib: Some(10.0),
            rss_with_mib: Some(10.0 + kib * 100.0 / 1024.0),
            rss_with_spread_mib: Some(0.0),
            rss_after_close_mib: Some(10.0),
            kib_per_tunnel: Some(kib),
            cpu_open_s: Some(0.1),
            cpu_open_ms_per_1k: Some(1000.0),
            idle_s: 5.0,
            cpu_idle_s: Some(0.0),
            cpu_idle_ms_per_s: Some(0.0),
            closed_while_idle: 2,
            checked: 10,
            check_failed: 3,
            rss: Some(RssSeries::default()),
        }
    }

    #[test]
    fn medians_and_ratio_against_sing_box() {
        let scenario = Idle::for_report(100, 3);
        let runs = vec![
            record("shardray", 1, 4.0),
            record("sing-box", 1, 20.0),
            record("shardray", 2, 6.0),
            record("sing-box", 2, 30.0),
            record("shardray", 3, 5.0),
            record("sing-box", 3, 10.0),
        ];
        let report = IdleReport::new(&scenario, "idle".into(), runs);
        let sr = &report.medians[0];
        assert_eq!((sr.target.as_str(), sr.runs, sr.kib_per_tunnel), ("shardray", 3, Some(5.0)));
        assert_eq!(sr.kib_per_tunnel_vs_sing_box, Some(0.25));
        assert_eq!(sr.failed, 3 * 6);
        assert_eq!(sr.fds_per_tunnel, Some(2.0));
        assert!(report.markdown().contains("| shardray | 3 | 5.0 | 0.25× |"));
    }
}
