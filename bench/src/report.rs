//! Turns run records into medians, a Markdown table for humans and RESULTS.md, and JSON;
//! latency percentiles from a histogram.

use std::fmt::Write as _;
use std::fs;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::throughput::RunRecord;
use crate::tls;

/// Medians over the runs of one target in one direction.
#[derive(Debug, Clone, Serialize)]
pub struct Median {
    /// Target name.
    pub target: String,
    /// "vless" (plain TCP) or "vless-tls".
    pub protocol: &'static str,
    /// "up" or "down".
    pub direction: &'static str,
    /// Runs the medians are taken over.
    pub runs: usize,
    /// Median client-side throughput.
    pub gbit_s: f64,
    /// Median target CPU seconds during the transfer; `None` when not measured (an external
    /// target without its pid).
    pub proxy_cpu_s: Option<f64>,
    /// Median target CPU seconds per 10^9 bytes; `None` when not measured.
    pub cpu_s_per_gb: Option<f64>,
    /// `cpu_s_per_gb` divided by sing-box's in the same direction, when sing-box was measured.
    pub cpu_per_gb_vs_sing_box: Option<f64>,
    /// Median peak RSS in MiB; `None` when not measured.
    pub peak_rss_mib: Option<f64>,
    /// Median harness CPU seconds.
    pub harness_cpu_s: f64,
}

/// Where the figures were taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
}

/// Everything one `throughput` invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `"throughput"`, for readers of saved JSON.
    pub scenario: &'static str,
    /// "vless" (plain TCP) or "vless-tls": the protocol of the first run (every run's is in
    /// the medians and runs).
    pub protocol: &'static str,
    /// Where.
    pub machine: Machine,
    /// Every run.
    pub runs: Vec<RunRecord>,
    /// Medians per target and direction.
    pub medians: Vec<Median>,
}

impl Machine {
    /// Reads this machine's description from /proc.
    pub fn detect() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Machine { cpu, cpus, kernel }
    }
}

impl Report {
    /// Builds the report, computing medians per (target, protocol, direction) in first-seen
    /// order.
    pub fn new(runs: Vec<RunRecord>) -> Report {
        let mut medians: Vec<Median> = groups(&runs, |r| (r.target.clone(), r.protocol, r.direction))
            .into_iter()
            .map(|((target, protocol, direction), group)| {
                let m = |f: fn(&RunRecord) -> f64| median(group.iter().map(|r| f(r)).collect());
                let mm = |f: fn(&RunRecord) -> Option<f64>| median_measured(group.iter().map(|r| f(r)));
                Median {
                    target,
                    protocol,
                    direction,
                    runs: group.len(),
                    gbit_s: m(|r| r.gbit_s),
                    proxy_cpu_s: mm(|r| r.proxy_cpu_s),
                    cpu_s_per_gb: mm(|r| r.cpu_s_per_gb),
                    cpu_per_gb_vs_sing_box: None,
                    peak_rss_mib: mm(|r| r.peak_rss_mib),
                    harness_cpu_s: m(|r| r.harness_cpu_s),
                }
            })
            .collect();
        let baseline: Vec<(&'static str, &'static str, f64)> = medians
            .iter()
            .filter(|m| m.target == "sing-box")
            .filter_map(|m| Some((m.protocol, m.direction, m.cpu_s_per_gb?)))
            .collect();
        for m in &mut medians {
            let Some(own) = m.cpu_s_per_gb else { continue };
            m.cpu_per_gb_vs_sing_box = baseline
                .iter()
                .find(|(p, d, _)| *p == m.protocol && *d == m.direction)
                .filter(|(_, _, base)| *base > 0.0)
                .map(|(_, _, base)| own / base);
        }
        let protocol = runs.first().map_or(tls::PROTOCOL_PLAIN, |r| r.protocol);
        Report { scenario: "throughput", protocol, machine: Machine::detect(), runs, medians }
    }

    /// The report as Markdown: machine line, per-run table, medians table.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "Machine: {} ({} CPUs), Linux {}\n", m.cpu, m.cpus, m.kernel);
        let _ = writeln!(out, "Protocol: {}\n", protocol_line(self.protocol));
        out.push_str(
            "| target | protocol | dir | run | streams × bytes | wall s | Gbit/s | proxy CPU s | CPU s/GB | peak RSS MiB | harness CPU s |\n\
             |---|---|---|---:|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.runs {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} × {} | {:.2} | {:.2} | {} | {} | {} | {:.2} |",
                r.target,
                r.protocol,
                r.direction,
                r.run,
                r.streams,
                human_bytes(r.bytes_per_stream),
                r.wall_s,
                r.gbit_s,
                cell(r.proxy_cpu_s, 2),
                cell(r.cpu_s_per_gb, 3),
                cell(r.peak_rss_mib, 1),
                r.harness_cpu_s,
            );
        }
        out.push_str(
            "\nMedians:\n\n\
             | target | protocol | dir | runs | Gbit/s | CPU s/GB | CPU/GB vs sing-box | peak RSS MiB |\n\
             |---|---|---|---:|---:|---:|---:|---:|\n",
        );
        for md in &self.medians {
            let ratio = md.cpu_per_gb_vs_sing_box.map_or("–".to_owned(), |r| format!("{r:.2}×"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {} | {} | {} |",
                md.target,
                md.protocol,
                md.direction,
                md.runs,
                md.gbit_s,
                cell(md.cpu_s_per_gb, 3),
                ratio,
                cell(md.peak_rss_mib, 1)
            );
        }
        out
    }
}

/// The peers issue 10's "better of the two" ratios are taken against.
pub const BEST_OF: [&str; 2] = ["sing-box", "shoes"];

/// The better of the [`BEST_OF`] peers' figures among `(target, figure)` (the higher with
/// `higher_is_better`, else the lower), with its name; `None` when neither was measured.
pub fn best_peer<'a>(
    figures: impl IntoIterator<Item = (&'a str, Option<f64>)>,
    higher_is_better: bool,
) -> Option<(&'a str, f64)> {
    figures
        .into_iter()
        .filter(|(t, _)| BEST_OF.contains(t))
        .filter_map(|(t, v)| Some((t, v.filter(|v| *v > 0.0)?)))
        .reduce(|a, b| if (b.1 > a.1) == higher_is_better { b } else { a })
}

/// `own / best` as "0.45× shoes", or "–".
pub fn ratio_cell(own: Option<f64>, best: Option<(&str, f64)>) -> String {
    match (own, best) {
        (Some(own), Some((name, base))) => format!("{:.2}× {name}", own / base),
        _ => "–".to_owned(),
    }
}

/// How the Markdown reports describe `protocol` (a [`crate::protocol::Protocol::label`]:
/// "vless", "vless-tls", "trojan-tls", "ss-2022", ...).
pub fn protocol_line(protocol: &str) -> String {
    match protocol.strip_suffix("-tls") {
        Some(inner) => format!(
            "{} over TLS 1.3 ({protocol}; TLS_AES_128_GCM_SHA256, ALPN {}, SNI {}, a full handshake per connection)",
            protocol_title(inner),
            tls::ALPN,
            tls::SERVER_NAME
        ),
        None => format!("{} over plain TCP ({protocol})", protocol_title(protocol)),
    }
}

/// A protocol's name as prose has it.
pub fn protocol_title(name: &str) -> &'static str {
    match name {
        "trojan" => "Trojan",
        "vmess" => "VMess AEAD (aes-128-gcm body)",
        "ss-aes-128-gcm" => "Shadowsocks aes-128-gcm",
        "ss-2022" => "Shadowsocks 2022-blake3-aes-128-gcm",
        "socks" => "SOCKS5 (username/password)",
        _ => "VLESS",
    }
}

/// Latencies recorded in nanoseconds, from 1 ns to an hour, to three significant digits.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies(Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds"))
    }
}

impl Latencies {
    /// Records one latency (saturating at the upper bound).
    pub fn record(&mut self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(nanos.max(1));
    }

    /// Adds every sample of `other`.
    pub fn add(&mut self, other: &Latencies) {
        // Same bounds on both sides, and saturating values stay within them.
        let _ = self.0.add(&other.0);
    }

    /// The distribution as points of its CDF at [`CDF_QUANTILES`] (minimum and maximum
    /// included), in microseconds; empty when nothing was recorded.
    pub fn cdf(&self) -> Vec<CdfPoint> {
        let h = &self.0;
        if h.is_empty() {
            return Vec::new();
        }
        CDF_QUANTILES.iter().map(|&q| CdfPoint { q, us: h.value_at_quantile(q) as f64 / 1e3 }).collect()
    }

    /// Count, percentiles and maximum in microseconds.
    pub fn summary(&self) -> Latency {
        let h = &self.0;
        let us = |nanos: u64| nanos as f64 / 1e3;
        Latency {
            count: h.len(),
            mean_us: h.mean() / 1e3,
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// The quantiles at which [`Latencies::cdf`] reads the distribution: dense in the tail.
pub const CDF_QUANTILES: [f64; 22] = [
    0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9995,
    0.9999, 1.0,
];

/// One point of a latency CDF: a fraction `q` of the samples took at most `us` microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CdfPoint {
    /// Quantile, 0 to 1.
    pub q: f64,
    /// Latency at that quantile, in microseconds.
    pub us: f64,
}

/// A latency distribution's summary, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl Latency {
    /// `| count | p50 | p99 | p99.9 | max |` cells (without the leading or trailing bar).
    pub fn cells(&self) -> String {
        format!("{} | {:.0} | {:.0} | {:.0} | {:.0}", self.count, self.p50_us, self.p99_us, self.p999_us, self.max_us)
    }
}

/// `runs` grouped by `key`, the groups in the order their keys first appear.
pub fn groups<R, K: PartialEq>(runs: &[R], key: impl Fn(&R) -> K) -> Vec<(K, Vec<&R>)> {
    let mut out: Vec<(K, Vec<&R>)> = Vec::new();
    for r in runs {
        let k = key(r);
        match out.iter_mut().find(|(have, _)| *have == k) {
            Some((_, group)) => group.push(r),
            None => out.push((k, vec![r])),
        }
    }
    out
}

/// The median of `values` (mean of the middle two for an even count); 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The median of a figure over runs when every run measured it; `None` when any did not (a
/// target whose process the harness cannot see).
pub fn median_measured(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    values.into_iter().collect::<Option<Vec<f64>>>().map(median)
}

/// A table cell: `v` to `digits` decimals, or "–" for a figure that was not measured.
pub fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

/// `268435456` → `256 MiB`.
pub fn human_bytes(n: u64) -> String {
    // Sizes are powers of two, so a mask tests divisibility (keeps MSRV 1.85).
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n & (size - 1) == 0 {
            return format!("{} {unit}", n / size);
        }
    }
    format!("{n} B")
}

/// Parses `1048576`, `64K`, `256MiB`, `1G`, `2GB` (binary multiples throughout).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: u64 = num.parse().map_err(|_| format!("{s:?} is not a byte count"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown unit {other:?} in {s:?}")),
    };
    num.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_parse_and_print() {
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("64k"), Ok(64 << 10));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("12parsecs").is_err());
        assert_eq!(human_bytes(256 << 20), "256 MiB");
        assert_eq!(human_bytes(1000), "1000 B");
    }

    #[test]
    fn latency_percentiles() {
        let mut l = Latencies::default();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn cdf_is_monotonic_and_spans_the_samples() {
        assert!(Latencies::default().cdf().is_empty());
        let mut l = Latencies::default();
        for us in [5u64, 7, 7, 9, 100, 250, 3_000, 12, 40, 41] {
            l.record(Duration::from_micros(us));
        }
        let cdf = l.cdf();
        assert_eq!(cdf.len(), CDF_QUANTILES.len());
        assert!(cdf.windows(2).all(|w| w[0].q < w[1].q && w[0].us <= w[1].us), "{cdf:?}");
        assert!((cdf[0].us - 5.0).abs() < 0.01 && (cdf.last().unwrap().us - 3_000.0).abs() < 3.0, "{cdf:?}");
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    fn run(target: &str, cpu: Option<f64>) -> RunRecord {
        RunRecord {
            target: target.into(),
            protocol: tls::PROTOCOL_PLAIN,
            direction: "down",
            run: 1,
            streams: 1,
            bytes_per_stream: 1 << 30,
            wall_s: 1.0,
            gbit_s: 8.0,
            proxy_cpu_s: cpu,
            proxy_cpu_s_ticks: cpu,
            cpu_s_per_gb: cpu,
            peak_rss_mib: cpu.map(|_| 20.0),
            harness_cpu_s: 0.1,
            rss: None,
        }
    }

    #[test]
    fn unmeasured_figures_stay_unmeasured_and_ratios_still_work() {
        let external = "external(127.0.0.1:10086)";
        let report = Report::new(vec![
            run("sing-box", Some(0.5)),
            run(external, None),
            run("shardray", Some(0.25)),
            run(external, Some(1.0)),
        ]);
        let find = |t: &str| report.medians.iter().find(|m| m.target == t).unwrap();
        // One run without a pid makes the median unmeasured, not a number from the other run.
        let ext = find(external);
        assert_eq!((ext.runs, ext.cpu_s_per_gb, ext.peak_rss_mib, ext.cpu_per_gb_vs_sing_box), (2, None, None, None));
        assert_eq!(find("shardray").cpu_per_gb_vs_sing_box, Some(0.5));
        let md = report.markdown();
        assert!(md.contains(&format!("| {external} | vless | down | 2 | 8.00 | – | – | – |")), "{md}");
        assert!(
            md.contains(&format!("| {external} | vless | down | 1 | 1 × 1 GiB | 1.00 | 8.00 | – | – | – | 0.10 |")),
            "{md}"
        );
        assert!(md.contains("| shardray | vless | down | 1 | 8.00 | 0.250 | 0.50× | 20.0 |"), "{md}");
    }

    #[test]
    fn medians_of_measured_figures() {
        assert_eq!(median_measured([Some(3.0), Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median_measured([Some(3.0), None]), None);
        assert_eq!(cell(None, 2), "–");
        assert_eq!(cell(Some(1.234), 2), "1.23");
    }

    #[test]
    fn the_best_peer_is_the_better_of_sing_box_and_shoes() {
        let rows = [("shardray", Some(30.0)), ("sing-box", Some(20.0)), ("shoes", Some(25.0)), ("v2ray", Some(90.0))];
        assert_eq!(best_peer(rows, true), Some(("shoes", 25.0)));
        assert_eq!(best_peer(rows, false), Some(("sing-box", 20.0)));
        // An unmeasured peer does not count; no peer at all gives no ratio.
        assert_eq!(best_peer([("sing-box", None), ("shoes", Some(4.0))], false), Some(("shoes", 4.0)));
        assert_eq!(best_peer([("shardray", Some(1.0))], true), None);
        assert_eq!(ratio_cell(Some(10.0), Some(("shoes", 25.0))), "0.40× shoes");
        assert_eq!(ratio_cell(None, Some(("shoes", 25.0))), "–");
    }

    #[test]
    fn every_protocol_label_has_its_line() {
        assert!(protocol_line("vless-tls").starts_with("VLESS over TLS 1.3 (vless-tls;"));
        assert_eq!(protocol_line("vless"), "VLESS over plain TCP (vless)");
        assert!(protocol_line("trojan-tls").starts_with("Trojan over TLS 1.3 (trojan-tls;"));
        assert_eq!(protocol_line("ss-2022"), "Shadowsocks 2022-blake3-aes-128-gcm over plain TCP (ss-2022)");
    }
}
