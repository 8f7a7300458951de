//! Reads what a process costs from /proc: CPU time of all its threads and its peak RSS.

use std::fs;

use anyhow::{Context, Result};

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
    }
}
