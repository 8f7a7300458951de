//! The `html` report: one self-contained page (inline CSS and SVG, no script, no external
//! assets) from the JSON that `throughput`, `connrate` and `idle` save: CPU per GB and
//! throughput bars, connection latency CDFs, idle memory per tunnel, and each target's RSS
//! over time.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::procstat::RssSeries;
use crate::report::{cell, CdfPoint, Machine};
use crate::svg::{color, esc, BarChart, BarSeries, LineChart, LineSeries};

/// One saved result: a name to show (its file name) and its JSON text.
#[derive(Debug, Clone)]
pub struct Input {
    /// Where it came from.
    pub name: String,
    /// The JSON a scenario printed with `--json` or wrote with `--json-out`.
    pub json: String,
}

#[derive(Deserialize)]
struct Tag {
    scenario: Option<String>,
}

#[derive(Deserialize)]
struct ThroughputView {
    machine: Option<Machine>,
    /// "vless" or "vless-tls"; absent in results saved before TLS runs existed.
    #[serde(default)]
    protocol: Option<String>,
    medians: Vec<ThroughputMedian>,
    #[serde(default)]
    runs: Vec<RunView>,
}

#[derive(Deserialize)]
struct ThroughputMedian {
    target: String,
    direction: String,
    runs: usize,
    gbit_s: f64,
    /// Absent (null) for an external target measured without its pid, as below.
    cpu_s_per_gb: Option<f64>,
    peak_rss_mib: Option<f64>,
}

/// What every scenario's per-run records share, for the RSS plots.
#[derive(Deserialize)]
struct RunView {
    target: String,
    run: usize,
    #[serde(default)]
    direction: Option<String>,
    #[serde(default)]
    rss: Option<RssSeries>,
}

#[derive(Deserialize)]
struct ConnrateView {
    machine: Option<Machine>,
    /// "vless" or "vless-tls"; absent in results saved before TLS runs existed.
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    command: String,
    medians: Vec<ConnrateMedian>,
    #[serde(default)]
    runs: Vec<RunView>,
}

#[derive(Deserialize)]
struct ConnrateMedian {
    target: String,
    runs: usize,
    conns_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    cpu_ms_per_1k: Option<f64>,
    errors: u64,
    #[serde(default)]
    cdf: Vec<CdfPoint>,
    #[serde(default)]
    serial_cdf: Vec<CdfPoint>,
}

#[derive(Deserialize)]
struct IdleView {
    machine: Option<Machine>,
    #[serde(default)]
    command: String,
    tunnels: usize,
    medians: Vec<IdleMedian>,
    #[serde(default)]
    runs: Vec<RunView>,
}

#[derive(Deserialize)]
struct IdleMedian {
    target: String,
    runs: usize,
    kib_per_tunnel: Option<f64>,
    rss_before_mib: Option<f64>,
    rss_with_mib: Option<f64>,
    #[serde(default)]
    fds_per_tunnel: Option<f64>,
    cpu_open_ms_per_1k: Option<f64>,
    cpu_idle_ms_per_s: Option<f64>,
    failed: usize,
}

/// Colours by target, the same on every chart of the page: the known targets first.
struct Colors(Vec<String>);

impl Colors {
    fn new() -> Colors {
        Colors(["shardray", "sing-box", "v2ray", "splice"].map(String::from).to_vec())
    }

    fn of(&mut self, target: &str) -> &'static str {
        let i = match self.0.iter().position(|t| t == target) {
            Some(i) => i,
            None => {
                self.0.push(target.to_owned());
                self.0.len() - 1
            }
        };
        color(i)
    }
}

/// Targets in first-seen order.
fn targets<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.iter().any(|o| o == n) {
            out.push(n.to_owned());
        }
    }
    out
}

/// Renders the page titled `title` from `inputs`, in their order; results of other scenarios
/// (the API ones) are listed as not plotted.
pub fn render(title: &str, inputs: &[Input]) -> Result<String> {
    if inputs.is_empty() {
        bail!("no results to render");
    }
    let mut colors = Colors::new();
    let mut body = String::new();
    let mut machine = None;
    let mut skipped = Vec::new();
    for input in inputs {
        let tag: Tag = serde_json::from_str(&input.json).with_context(|| format!("parsing {}", input.name))?;
        let parse_err = || format!("reading {} as a {} result", input.name, tag.scenario.as_deref().unwrap_or("?"));
        match tag.scenario.as_deref() {
            Some("throughput") => {
                let v: ThroughputView = serde_json::from_str(&input.json).with_context(parse_err)?;
                machine = machine.or(v.machine.clone());
                throughput_section(&mut body, &input.name, &v, &mut colors);
            }
            Some("connrate") => {
                let v: ConnrateView = serde_json::from_str(&input.json).with_context(parse_err)?;
                machine = machine.or(v.machine.clone());
                connrate_section(&mut body, &input.name, &v, &mut colors);
            }
            Some("idle") => {
                let v: IdleView = serde_json::from_str(&input.json).with_context(parse_err)?;
                machine = machine.or(v.machine.clone());
                idle_section(&mut body, &input.name, &v, &mut colors);
            }
            other => skipped.push(format!("{} ({})", input.name, other.unwrap_or("no scenario"))),
        }
    }

    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>",
        t = esc(title)
    );
    if let Some(m) = machine {
        let _ = write!(out, "<p>Machine: {} ({} CPUs), Linux {}</p>", esc(&m.cpu), m.cpus, esc(&m.kernel));
    }
    out.push_str(
        "<p>Every figure is the target process's own: CPU is user + system time of all its threads, \
         RSS is its VmRSS. Targets were measured in one session on one machine, runs interleaved; only \
         ratios between them mean much.</p>",
    );
    out.push_str(&body);
    if !skipped.is_empty() {
        out.push_str("<p>Not plotted: ");
        out.push_str(&esc(&skipped.join(", ")));
        out.push_str("</p>");
    }
    out.push_str("</body></html>\n");
    Ok(out)
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1500px;margin:1em auto;padding:0 1em;color:#222}\
h2{border-bottom:1px solid #ccc;margin-top:2em}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f4f4f4}\
td:first-child,th:first-child{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:12px}\
code{background:#f4f4f4;padding:1px 4px}svg{max-width:100%;height:auto;border:1px solid #eee}";

/// A table from a header row and rows of cells (already formatted).
fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    out.push_str("<table><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for c in row {
            let _ = write!(out, "<td>{}</td>", esc(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn charts(out: &mut String, svgs: &[String]) {
    out.push_str("<div class=\"charts\">");
    for s in svgs {
        out.push_str(s);
    }
    out.push_str("</div>");
}

fn source(out: &mut String, name: &str, command: &str) {
    if command.is_empty() {
        let _ = write!(out, "<p>From <code>{}</code>.</p>", esc(name));
    } else {
        let _ = write!(out, "<p>From <code>{}</code>: <code>{}</code></p>", esc(name), esc(command));
    }
}

/// RSS over time of run 1 of every target (and direction), one line each.
fn rss_chart(title: &str, runs: &[RunView], colors: &mut Colors) -> String {
    let series = runs
        .iter()
        .filter(|r| r.run == 1)
        .filter_map(|r| {
            let rss = r.rss.as_ref()?;
            let name = match &r.direction {
                Some(d) => format!("{} {d}", r.target),
                None => r.target.clone(),
            };
            Some(LineSeries {
                name,
                color: colors.of(&r.target),
                points: rss.points.iter().map(|p| (p[0], p[1])).collect(),
                dashed: r.direction.as_deref() == Some("down"),
            })
        })
        .collect();
    LineChart {
        title: title.to_owned(),
        x_label: "seconds since the measurement began".into(),
        y_label: "RSS MiB".into(),
        x_log: false,
        y_range: None,
        series,
        dots: false,
    }
    .render()
}

/// The suffix naming the protocol in headings: none for plain VLESS (the default), so TLS
/// results get a section, and bar groups, of their own.
fn over(protocol: &Option<String>) -> String {
    match protocol.as_deref() {
        None | Some(crate::tls::PROTOCOL_PLAIN) => String::new(),
        Some(p) => match p.strip_suffix("-tls") {
            Some(inner) => format!(", {} over TLS", crate::report::protocol_title(inner)),
            None => format!(", {}", crate::report::protocol_title(p)),
        },
    }
}

fn throughput_section(out: &mut String, name: &str, v: &ThroughputView, colors: &mut Colors) {
    let _ = write!(out, "<section><h2>Bulk throughput{}</h2>", over(&v.protocol));
    source(out, name, "");
    let dirs = targets(v.medians.iter().map(|m| m.direction.as_str()));
    let names = targets(v.medians.iter().map(|m| m.target.as_str()));
    let bars = |colors: &mut Colors, f: fn(&ThroughputMedian) -> Option<f64>| -> Vec<BarSeries> {
        names
            .iter()
            .map(|t| BarSeries {
                name: t.clone(),
                color: colors.of(t),
                values: dirs
                    .iter()
                    .map(|d| v.medians.iter().find(|m| &m.target == t && &m.direction == d).and_then(f))
                    .collect(),
            })
            .collect()
    };
    let cpu = BarChart {
        title: format!("Target CPU per GB relayed{} (median; lower is better)", over(&v.protocol)),
        y_label: "CPU s / GB".into(),
        groups: dirs.clone(),
        series: bars(colors, |m| m.cpu_s_per_gb),
    };
    let gbit = BarChart {
        title: "Throughput the client saw (median)".into(),
        y_label: "Gbit/s".into(),
        groups: dirs.clone(),
        series: bars(colors, |m| Some(m.gbit_s)),
    };
    charts(out, &[cpu.render(), gbit.render(), rss_chart("Target RSS during run 1 (dashed: down)", &v.runs, colors)]);
    let rows: Vec<Vec<String>> = v
        .medians
        .iter()
        .map(|m| {
            vec![
                m.target.clone(),
                m.direction.clone(),
                m.runs.to_string(),
                format!("{:.2}", m.gbit_s),
                cell(m.cpu_s_per_gb, 3),
                cell(m.peak_rss_mib, 1),
            ]
        })
        .collect();
    table(out, &["target", "dir", "runs", "Gbit/s", "CPU s/GB", "peak RSS MiB"], &rows);
    out.push_str("</section>");
}

fn cdf_chart(title: &str, v: &ConnrateView, pick: fn(&ConnrateMedian) -> &[CdfPoint], colors: &mut Colors) -> String {
    LineChart {
        title: title.to_owned(),
        x_label: "connect to last echoed byte, µs (log scale)".into(),
        y_label: "fraction of connections".into(),
        x_log: true,
        y_range: Some((0.0, 1.0)),
        series: v
            .medians
            .iter()
            .map(|m| LineSeries {
                name: m.target.clone(),
                color: colors.of(&m.target),
                points: pick(m).iter().map(|p| (p.us, p.q)).collect(),
                dashed: false,
            })
            .collect(),
        dots: true,
    }
    .render()
}

fn connrate_section(out: &mut String, name: &str, v: &ConnrateView, colors: &mut Colors) {
    let _ = write!(out, "<section><h2>Short connections{}</h2>", over(&v.protocol));
    source(out, name, &v.command);
    let mut svgs = vec![cdf_chart("Latency CDF, parallel clients (all runs)", v, |m| &m.cdf, colors)];
    if v.medians.iter().any(|m| !m.serial_cdf.is_empty()) {
        svgs.push(cdf_chart("Latency CDF, one connection at a time (all runs)", v, |m| &m.serial_cdf, colors));
    }
    let names = targets(v.medians.iter().map(|m| m.target.as_str()));
    let per_target = |colors: &mut Colors, f: fn(&ConnrateMedian) -> Option<f64>| -> Vec<BarSeries> {
        names
            .iter()
            .map(|t| BarSeries {
                name: t.clone(),
                color: colors.of(t),
                values: vec![v.medians.iter().find(|m| &m.target == t).and_then(f)],
            })
            .collect()
    };
    svgs.push(
        BarChart {
            title: format!("Target CPU per 1,000 connections{} (median; lower is better)", over(&v.protocol)),
            y_label: "CPU ms / 1k conns".into(),
            groups: vec!["parallel pass".into()],
            series: per_target(colors, |m| m.cpu_ms_per_1k),
        }
        .render(),
    );
    svgs.push(rss_chart("Target RSS during run 1", &v.runs, colors));
    charts(out, &svgs);
    let rows: Vec<Vec<String>> = v
        .medians
        .iter()
        .map(|m| {
            vec![
                m.target.clone(),
                m.runs.to_string(),
                format!("{:.0}", m.conns_per_s),
                format!("{:.0}", m.p50_us),
                format!("{:.0}", m.p99_us),
                format!("{:.0}", m.p999_us),
                cell(m.cpu_ms_per_1k, 0),
                m.errors.to_string(),
            ]
        })
        .collect();
    table(out, &["target", "runs", "conns/s", "p50 µs", "p99 µs", "p99.9 µs", "CPU ms/1k", "errors"], &rows);
    out.push_str("</section>");
}

fn idle_section(out: &mut String, name: &str, v: &IdleView, colors: &mut Colors) {
    let _ = write!(out, "<section><h2>Idle tunnels ({} per target)</h2>", v.tunnels);
    source(out, name, &v.command);
    let names = targets(v.medians.iter().map(|m| m.target.as_str()));
    let find = |t: &str| v.medians.iter().find(|m| m.target == t);
    let per_tunnel = BarChart {
        title: "RSS per idle tunnel (median; lower is better)".into(),
        y_label: "KiB / tunnel".into(),
        groups: vec![format!("{} tunnels", v.tunnels)],
        series: names
            .iter()
            .map(|t| BarSeries {
                name: t.clone(),
                color: colors.of(t),
                values: vec![find(t).and_then(|m| m.kib_per_tunnel)],
            })
            .collect(),
    };
    let rss = BarChart {
        title: "Steady RSS before and with the tunnels open".into(),
        y_label: "RSS MiB".into(),
        groups: vec!["before".into(), format!("with {} tunnels", v.tunnels)],
        series: names
            .iter()
            .map(|t| BarSeries {
                name: t.clone(),
                color: colors.of(t),
                values: vec![find(t).and_then(|m| m.rss_before_mib), find(t).and_then(|m| m.rss_with_mib)],
            })
            .collect(),
    };
    charts(out, &[per_tunnel.render(), rss.render(), rss_chart("Target RSS during run 1", &v.runs, colors)]);
    let rows: Vec<Vec<String>> = v
        .medians
        .iter()
        .map(|m| {
            vec![
                m.target.clone(),
                m.runs.to_string(),
                cell(m.kib_per_tunnel, 1),
                cell(m.rss_before_mib, 1),
                cell(m.rss_with_mib, 1),
                cell(m.fds_per_tunnel, 1),
                cell(m.cpu_open_ms_per_1k, 0),
                cell(m.cpu_idle_ms_per_s, 2),
                m.failed.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "target",
            "runs",
            "KiB/tunnel",
            "RSS before MiB",
            "RSS with MiB",
            "CPU ms/1k opened",
            "idle CPU ms/s",
            "failed",
        ],
        &rows,
    );
    out.push_str("</section>");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::connrate::{ConnRecord, Connrate, ConnrateReport, PassRecord};
    use crate::idle::{Idle, IdleRecord, IdleReport};
    use crate::report::{Latencies, Report};
    use crate::svg::tests::well_formed;
    use crate::throughput::RunRecord;

    fn rss() -> RssSeries {
        RssSeries { interval_ms: 100.0, points: vec![[0.0, 10.0], [0.1, 12.0], [0.2, 11.5]] }
    }

    fn throughput_json() -> String {
        throughput_json_over(crate::tls::PROTOCOL_PLAIN)
    }

    fn throughput_json_over(protocol: &'static str) -> String {
        let mut runs = Vec::new();
        for (i, target) in ["shardray", "sing-box", "v2ray"].iter().enumerate() {
            for direction in ["up", "down"] {
                runs.push(RunRecord {
                    target: (*target).into(),
                    protocol,
                    direction,
                    run: 1,
                    streams: 4,
                    bytes_per_stream: 1 << 20,
                    wall_s: 1.0,
                    gbit_s: 10.0 + i as f64,
                    proxy_cpu_s: Some(0.5),
                    proxy_cpu_s_ticks: Some(0.5),
                    cpu_s_per_gb: Some(0.3 + i as f64 / 10.0),
                    peak_rss_mib: Some(12.0),
                    harness_cpu_s: 0.2,
                    rss: Some(rss()),
                    others: None,
                });
            }
        }
        serde_json::to_string(&Report::new(runs)).unwrap()
    }

    fn pass(base_us: u64) -> PassRecord {
        let mut latencies = Latencies::default();
        for k in 0..1000 {
            latencies.record(Duration::from_micros(base_us + k * k / 50));
        }
        PassRecord {
            parallel: 1,
            wall_s: 1.0,
            connections: 1000,
            errors: 0,
            error_samples: Vec::new(),
            conns_per_s: 1000.0,
            latency: latencies.summary(),
            proxy_cpu_s: Some(0.1),
            cpu_ms_per_1k: Some(100.0),
            harness_cpu_s: 0.1,
            latencies,
        }
    }

    fn connrate_json() -> String {
        connrate_json_over(crate::tls::PROTOCOL_PLAIN)
    }

    fn connrate_json_over(protocol: &'static str) -> String {
        let scenario = Connrate {
            parallel: 1,
            duration: Duration::from_secs(1),
            serial_duration: Duration::from_secs(1),
            runs: 1,
            conn_timeout: Duration::from_secs(1),
            startup: Duration::from_secs(1),
            dest_domain: None,
        };
        let runs = ["shardray", "sing-box"]
            .iter()
            .enumerate()
            .map(|(i, t)| ConnRecord {
                target: (*t).into(),
                protocol,
                run: 1,
                parallel: pass(50 + 30 * i as u64),
                serial: Some(pass(20 + 10 * i as u64)),
                peak_rss_mib: Some(10.0),
                rss: Some(rss()),
            })
            .collect();
        serde_json::to_string(&ConnrateReport::new(&scenario, "connrate --target shardray,sing-box".into(), runs))
            .unwrap()
    }

    fn idle_json() -> String {
        let scenario = Idle::for_report(2000, 1);
        let runs = ["shardray", "sing-box", "v2ray"]
            .iter()
            .map(|t| IdleRecord {
                protocol: "vless",
                target: (*t).into(),
                run: 1,
                tunnels: 2000,
                opened: 2000,
                open_errors: 0,
                error_samples: Vec::new(),
                open_s: 1.0,
                upstream_open: 2000,
                fds_before: Some(10),
                fds_with: Some(4010),
                rss_before_mib: Some(10.0),
                rss_with_mib: Some(20.0),
                rss_with_spread_mib: Some(0.1),
                rss_after_close_mib: Some(12.0),
                kib_per_tunnel: Some(5.12),
                cpu_open_s: Some(0.2),
                cpu_open_ms_per_1k: Some(100.0),
                idle_s: 5.0,
                cpu_idle_s: Some(0.0),
                cpu_idle_ms_per_s: Some(0.0),
                closed_while_idle: 0,
                checked: 100,
                check_failed: 0,
                rss: Some(rss()),
            })
            .collect();
        serde_json::to_string(&IdleReport::new(&scenario, "idle --tunnels 2000".into(), runs)).unwrap()
    }

    fn page() -> String {
        let inputs = vec![
            Input { name: "throughput.json".into(), json: throughput_json() },
            Input { name: "connrate.json".into(), json: connrate_json() },
            Input { name: "throughput-tls.json".into(), json: throughput_json_over(crate::tls::PROTOCOL_TLS) },
            Input { name: "connrate-tls.json".into(), json: connrate_json_over(crate::tls::PROTOCOL_TLS) },
            Input { name: "idle.json".into(), json: idle_json() },
            Input { name: "churn.json".into(), json: r#"{"scenario":"churn"}"#.into() },
        ];
        render("perf <run>", &inputs).unwrap()
    }

    #[test]
    fn page_is_well_formed_and_self_contained() {
        let html = page();
        well_formed(&html).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<title>perf &lt;run&gt;</title>"));
        for banned in ["<script", "src=", "href=", "@import", "url("] {
            assert!(!html.contains(banned), "{banned} in a self-contained page");
        }
        assert!(html.contains("Not plotted: churn.json (churn)"));
    }

    #[test]
    fn throughput_has_a_bar_per_target_and_direction() {
        let html = page();
        let section = html.split("<h2>Bulk throughput</h2>").nth(1).unwrap().split("</section>").next().unwrap();
        let cpu_chart = section.split("</svg>").next().unwrap();
        assert_eq!(cpu_chart.matches(r#"class="bar""#).count(), 6);
        for t in ["shardray", "sing-box", "v2ray"] {
            for d in ["up", "down"] {
                assert!(cpu_chart.contains(&format!("<title>{t} · {d}:")), "{t} {d}");
            }
        }
        // Same colour for a target in every chart.
        let shardray_fill = format!(r#"fill="{}""#, color(0));
        assert!(cpu_chart.contains(&shardray_fill));
    }

    #[test]
    fn tls_results_get_sections_and_bar_groups_of_their_own() {
        let html = page();
        assert_eq!(html.matches("<h2>Bulk throughput</h2>").count(), 1);
        assert_eq!(html.matches("<h2>Short connections</h2>").count(), 1);
        let tls = html
            .split("<h2>Bulk throughput, VLESS over TLS</h2>")
            .nth(1)
            .expect("a TLS throughput section")
            .split("</section>")
            .next()
            .unwrap();
        let cpu_chart = tls.split("</svg>").next().unwrap();
        assert!(cpu_chart.contains("CPU per GB relayed, VLESS over TLS"));
        assert_eq!(cpu_chart.matches(r#"class="bar""#).count(), 6);
        let conn = html.split("<h2>Short connections, VLESS over TLS</h2>").nth(1).expect("a TLS connrate section");
        assert!(conn.split("</section>").next().unwrap().contains("CPU per 1,000 connections, VLESS over TLS"));
    }

    #[test]
    fn latency_cdfs_are_monotonic_lines() {
        let report: serde_json::Value = serde_json::from_str(&connrate_json()).unwrap();
        for m in report["medians"].as_array().unwrap() {
            let cdf: Vec<CdfPoint> = serde_json::from_value(m["cdf"].clone()).unwrap();
            assert!(cdf.len() > 10);
            assert!(cdf.windows(2).all(|w| w[0].q < w[1].q && w[0].us <= w[1].us), "{cdf:?}");
        }
        let html = page();
        let section = html.split("<h2>Short connections</h2>").nth(1).unwrap();
        let first = section.split("</svg>").next().unwrap();
        assert!(first.contains("Latency CDF"));
        assert_eq!(first.matches("<polyline").count(), 2, "a line per target");
        for line in first.split(r#"points=""#).skip(1) {
            let pts: Vec<(f64, f64)> = line
                .split('"')
                .next()
                .unwrap()
                .split_whitespace()
                .map(|p| {
                    let (x, y) = p.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            // Rightwards and upwards (SVG y grows downwards), never back.
            assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 >= w[1].1), "{pts:?}");
        }
    }

    #[test]
    fn idle_shows_per_tunnel_bars_and_rss_lines() {
        let html = page();
        let section = html.split("<h2>Idle tunnels (2000 per target)</h2>").nth(1).unwrap();
        let section = section.split("</section>").next().unwrap();
        let svgs: Vec<&str> = section.split("</svg>").collect();
        assert_eq!(svgs[0].matches(r#"class="bar""#).count(), 3);
        assert!(svgs[0].contains(">5.12</text>"));
        assert_eq!(svgs[1].matches(r#"class="bar""#).count(), 6);
        assert_eq!(svgs[2].matches("<polyline").count(), 3);
        assert!(section.contains("<td>5.1</td>"));
    }

    #[test]
    fn unreadable_input_names_the_file() {
        let err = render("t", &[Input { name: "bad.json".into(), json: "{".into() }]).unwrap_err();
        assert!(format!("{err:#}").contains("bad.json"));
        assert!(render("t", &[]).is_err());
    }

    #[test]
    fn an_external_target_without_cpu_figures_gets_no_cpu_bar_and_dashes() {
        let mut report: Value = serde_json::from_str(&throughput_json()).unwrap();
        let median = report["medians"][0].clone();
        let mut external = median.clone();
        external["target"] = "external(127.0.0.1:10086)".into();
        for key in ["proxy_cpu_s", "cpu_s_per_gb", "cpu_per_gb_vs_sing_box", "peak_rss_mib"] {
            external[key] = Value::Null;
        }
        report["medians"].as_array_mut().unwrap().push(external);
        let inputs = vec![Input { name: "t.json".into(), json: report.to_string() }];
        let html = render("external", &inputs).unwrap();
        well_formed(&html).unwrap();
        let section = html.split("<h2>Bulk throughput</h2>").nth(1).unwrap().split("</section>").next().unwrap();
        let cpu_chart = section.split("</svg>").next().unwrap();
        // The six bars of the three started targets; none invented for the external one.
        assert_eq!(cpu_chart.matches(r#"class="bar""#).count(), 6);
        assert!(section.contains("<td>external(127.0.0.1:10086)</td>"), "{section}");
        assert!(section.contains("<td>–</td>"), "{section}");
    }
}
