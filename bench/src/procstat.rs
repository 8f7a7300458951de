//! Reads what a process costs from /proc: CPU time of all its threads, its peak RSS, and its
//! RSS sampled over time.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::sys;

/// CPU seconds (user + system) that process `pid` and all its threads, exited ones included,
/// have used so far, with nanosecond resolution: the kernel's per-process CPU clock. Falls back
/// to [`stat_cpu_seconds`] where that clock cannot be read.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    match sys::process_cpu_seconds(pid) {
        Some(seconds) => Ok(seconds),
        None => stat_cpu_seconds(pid),
    }
}

/// The same from /proc/PID/stat (utime + stime, whole clock ticks, so ±2 ticks per reading).
pub fn stat_cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / sys::clock_ticks_per_second())
        .with_context(|| format!("parsing {path}"))
}

/// `now - before` for a reading taken twice, when it was taken at all (`None` for a process the
/// harness cannot see).
pub fn since(now: Option<f64>, before: Option<f64>) -> Option<f64> {
    Some(now? - before?)
}

/// CPU seconds this process (the harness) has used so far.
pub fn own_cpu_seconds() -> Result<f64> {
    cpu_seconds(std::process::id())
}

/// Peak resident set size of `pid` in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM")
}

/// Current resident set size of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// Descriptors `pid` has open (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(fs::read_dir(&path).with_context(|| format!("listing {path}"))?.count())
}

/// A `kB` field of /proc/PID/status.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// A process's RSS over time: `[seconds since sampling began, MiB]` pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RssSeries {
    /// Milliseconds between samples (doubled each time the series was thinned to stay short).
    pub interval_ms: f64,
    /// `[t_s, rss_mib]`, in time order.
    pub points: Vec<[f64; 2]>,
}

/// Samples of a series before it is thinned to half by dropping every other point.
const MAX_RSS_POINTS: usize = 2048;

impl RssSeries {
    /// Appends one sample, halving the series (and doubling its interval) when it grows too long.
    fn push(&mut self, t_s: f64, rss_mib: f64) {
        self.points.push([t_s, rss_mib]);
        if self.points.len() >= MAX_RSS_POINTS {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.interval_ms *= 2.0;
        }
    }
}

/// A thread that reads a process's RSS every interval until [`finish`](Self::finish)ed.
#[derive(Debug)]
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<RssSeries>,
}

impl RssSampler {
    /// Starts sampling `pid` now, then every `interval`. Sampling ends quietly if the process
    /// goes away.
    pub fn spawn(pid: u32, interval: Duration) -> Result<RssSampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::Builder::new().name("rss-sampler".into()).spawn(move || {
            let began = Instant::now();
            let mut series = RssSeries { interval_ms: interval.as_secs_f64() * 1e3, points: Vec::new() };
            let mut next = began;
            loop {
                let Ok(kib) = rss_kib(pid) else { break };
                series.push(began.elapsed().as_secs_f64(), kib as f64 / 1024.0);
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                // Sleep in short steps, so that finishing never waits a whole interval.
                next += Duration::from_secs_f64(series.interval_ms / 1e3);
                while Instant::now() < next && !flag.load(Ordering::Relaxed) {
                    thread::sleep((next - Instant::now()).min(Duration::from_millis(10)));
                }
            }
            series
        })?;
        Ok(RssSampler { stop, handle })
    }

    /// Takes a last sample and returns the series.
    pub fn finish(self) -> RssSeries {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// utime + stime (fields 14 and 15) from the text of /proc/PID/stat. The command name in field
/// 2 may hold spaces and parentheses, so counting starts after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_past_an_awkward_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 7 0 1 2 3";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
    }

    #[test]
    fn reads_our_own_process() {
        let precise = own_cpu_seconds().unwrap();
        let ticks = stat_cpu_seconds(std::process::id()).unwrap();
        assert!(precise >= 0.0 && (precise - ticks).abs() < 0.5, "{precise} vs {ticks}");
        // RSS first: the peak read after it can only be as high or higher.
        let now = rss_kib(std::process::id()).unwrap();
        let peak = peak_rss_kib(std::process::id()).unwrap();

        assert!(now > 0 && peak >= now, "{now} vs peak {peak}");
        assert!(open_fds(std::process::id()).unwrap() >= 3);
    }

    #[test]
    fn samples_our_own_rss_over_time() {
        let sampler = RssSampler::spawn(std::process::id(), Duration::from_millis(5)).unwrap();
        thread::sleep(Duration::from_millis(60));
        let series = sampler.finish();
        assert!(series.points.len() >= 3, "{series:?}");
        assert!(series.points.windows(2).all(|w| w[0][0] <= w[1][0]), "time goes forward");
        assert!(series.points.iter().all(|p| p[1] > 0.0));
    }

    #[test]
    fn long_series_are_thinned() {
        let mut s = RssSeries { interval_ms: 10.0, points: Vec::new() };
        for i in 0..MAX_RSS_POINTS * 3 {
            s.push(i as f64, 1.0);
        }
        assert!(s.points.len() < MAX_RSS_POINTS);
        assert!(s.interval_ms > 10.0);
        assert_eq!(s.points[0][0], 0.0);
    }
}
