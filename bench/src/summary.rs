//! The API figures of several `churn` and `users` runs side by side, against the targets the
//! project set for them (AddUser p99 ≤ 1 ms with traffic, QueryStats over 100,000 users
//! ≤ 50 ms, 1,000,000 users in ≤ 300 MiB of RSS).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::churn::ChurnRecord;
use crate::report::Machine;
use crate::users::UsersRecord;

/// One API scenario's result, as `--json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "lowercase")]
pub enum ApiReport {
    /// A `churn` run.
    Churn(ChurnRecord),
    /// A `users` run.
    Users(UsersRecord),
}

impl ApiReport {
    /// Notes the command line that produced the report.
    pub fn set_command(&mut self, command: String) {
        match self {
            ApiReport::Churn(c) => c.command = command,
            ApiReport::Users(u) => u.command = command,
        }
    }

    /// The command line that produced the report.
    pub fn command(&self) -> &str {
        match self {
            ApiReport::Churn(c) => &c.command,
            ApiReport::Users(u) => &u.command,
        }
    }

    /// The run's own Markdown.
    pub fn markdown(&self) -> String {
        match self {
            ApiReport::Churn(c) => c.markdown(),
            ApiReport::Users(u) => u.markdown(),
        }
    }
}

/// A verdict cell: the target and whether it was met.
fn verdict(target: &str, met: bool) -> String {
    format!("{target}: {}", if met { "met" } else { "missed" })
}

/// The summary table over `reports`, then, with `details`, each report's command and tables.
pub fn markdown(reports: &[ApiReport], details: bool) -> String {
    let m = Machine::detect();
    let mut out = format!(
        "Machine: {} ({} CPUs), Linux {}\n\n\
         A round trip is one caller's AlterInbound, from sending it to its reply, which comes \
         only once every shard has applied the change. RSS is shardray's VmRSS.\n\n{}",
        m.cpu,
        m.cpus,
        m.kernel,
        table(reports)
    );
    if details {
        for r in reports {
            let _ = write!(out, "\n```\n{}\n```\n\n{}", r.command(), r.markdown());
        }
    }
    out
}

/// The summary table over `reports`, in their order.
fn table(reports: &[ApiReport]) -> String {
    let mut out = String::from("| figure | measured | target |\n|---|---:|---|\n");
    let mut row = |figure: String, measured: String, target: String| {
        let _ = writeln!(out, "| {figure} | {measured} | {target} |");
    };
    for r in reports {
        match r {
            ApiReport::Churn(c) => {
                let traffic = c.traffic.as_ref();
                let load = traffic.map_or("idle".to_owned(), |t| match t.nice {
                    0 => format!("{} traffic streams", t.streams),
                    n => format!("{} traffic streams from a load generator at nice {n}", t.streams),
                });
                let rate = if c.rate_requested > 0.0 {
                    format!("{:.0} calls/s", c.rate_requested)
                } else {
                    "back to back".into()
                };
                let target = match traffic {
                    Some(_) => verdict("p99 ≤ 1 ms with traffic", c.add.p99_us <= 1000.0),
                    None => "–".into(),
                };
                row(
                    format!(
                        "AddUser round trip p50 / p99 / p99.9, {} shards, {load}, {rate}, {} adds",
                        c.shards, c.add.count
                    ),
                    format!("{:.0} / {:.0} / {:.0} µs", c.add.p50_us, c.add.p99_us, c.add.p999_us),
                    target,
                );
                if let Some(t) = traffic {
                    row(
                        format!("traffic during churn ({} streams, nice {})", t.streams, t.nice),
                        format!(
                            "{:.2} of {:.2} Gbit/s ({:.2}×), longest stall {:.0} ms, {} errors",
                            t.during_gbit_s,
                            t.before_gbit_s,
                            t.during_vs_before,
                            t.longest_stall_ms,
                            t.stream_errors.len()
                        ),
                        verdict("undisrupted", !t.disrupted),
                    );
                }
            }
            ApiReport::Users(u) => {
                let query_target =
                    if u.count == 100_000 { verdict("≤ 50 ms", u.query.median_ms <= 50.0) } else { "–".into() };
                row(
                    format!("QueryStats \"\" over {} users, {} shards", u.count, u.shards),
                    format!("{:.1} ms, {} counters", u.query.median_ms, u.query.stats),
                    query_target,
                );
                let rss_target =
                    if u.count == 1_000_000 { verdict("≤ 300 MiB", u.rss_after_mib <= 300.0) } else { "–".into() };
                row(
                    format!("RSS with {} users (added through the API)", u.count),
                    format!("{:.1} MiB, {:.0} bytes per user", u.rss_after_mib, u.rss_per_user_bytes),
                    rss_target,
                );
                row(format!("load of {} users through the API", u.count), format!("{:.2} s", u.load_s), "–".into());
                if let Some(c) = &u.config_load {
                    row(
                        format!("start from a config with {} users", c.users),
                        format!(
                            "{:.2} s to started, {:.1} MiB RSS ({:.1} peak)",
                            c.started_s, c.rss_mib, c.peak_rss_mib
                        ),
                        "–".into(),
                    );
                }
                row(
                    format!("connection as a random one of {} users vs one user, p50", u.count),
                    format!(
                        "{:.0} vs {:.0} µs ({:.2}×)",
                        u.lookup.random_users.p50_us, u.lookup.single_user.p50_us, u.lookup.p50_ratio
                    ),
                    "–".into(),
                );
            }
        }
    }
    out
}
