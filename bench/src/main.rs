//! `shardray-bench`: starts shardray and its peers (sing-box, V2Ray) from equivalent configs,
//! or takes a proxy already running at an address (`--external`), drives them with its own
//! clients against its own loopback sink, and measures what each target process spends.
#![deny(rust_2018_idioms)]

mod api;
mod churn;
mod client;
mod connrate;
mod html;
mod idle;
mod pattern;
mod peers;
mod procstat;
mod progress;
mod protocol;
mod report;
mod sink;
mod splice_relay;
mod summary;
mod svg;
mod sys;
mod target;
mod throughput;
mod tls;
mod traffic;
mod users;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::pattern::Flow;
use crate::progress::Progress;
use crate::protocol::Protocol;
use crate::report::{cell, Report};
use crate::summary::ApiReport;
use crate::target::{ExternalTarget, TargetKind, TargetSpec};
use crate::throughput::Scenario;
use crate::tls::{ExternalTrust, TlsClient, TlsMaterial};

#[derive(Parser)]
#[command(name = "shardray-bench", version, about = "Load-test harness for shardray and its peers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch the peer binaries (sing-box 1.14.4, V2Ray 4.45.2) into a cache and print their paths.
    Peers {
        /// Cache directory (default: `.peers/` at the repository root).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Bulk VLESS throughput (plain, or over TLS with `--tls`): N parallel streams of B bytes,
    /// through each target in turn.
    Throughput(ThroughputArgs),
    /// Short connections: VLESS header plus a 64-byte echo per connection (plain, or each with
    /// a full TLS handshake with `--tls`), N in parallel for a fixed time, then one at a time:
    /// connections/s, latency, target CPU per 1,000 connections.
    Connrate(ConnrateArgs),
    /// API churn: AddUser/RemoveUser round trips (all shards acknowledged) at a fixed rate,
    /// optionally while VLESS traffic flows, and whether the traffic noticed.
    Churn(ChurnArgs),
    /// A large user table: load time and RSS per user (through the API and from a config),
    /// QueryStats over it, and connection cost as random users.
    Users(UsersArgs),
    /// The API figures of `churn` and `users` runs saved with `--json`, against the targets.
    ApiSummary {
        /// Also print each run's command line and full tables after the summary.
        #[arg(long)]
        details: bool,
        /// JSON files written by `churn --json` or `users --json`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Idle tunnels: M established VLESS tunnels held open through each target; its RSS before
    /// and with them (per tunnel), its CPU opening them and idling, and whether they survive.
    Idle(IdleArgs),
    /// One self-contained HTML page with charts from results saved by `throughput`, `connrate`
    /// and `idle` (`--json` or `--json-out`).
    Html {
        /// Heading and page title.
        #[arg(long, default_value = "shardray performance")]
        title: String,
        /// Where to write the page (default: standard output).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// JSON files; results of other scenarios are listed but not plotted.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the bare splice relay (the `splice` target) until killed.
    SpliceRelay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:10086")]
        listen: std::net::SocketAddr,
        /// The one VLESS user admitted.
        #[arg(long)]
        user: uuid::Uuid,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Direction {
    /// Client to sink.
    Up,
    /// Sink to client.
    Down,
    /// Up, then down, measured separately.
    Both,
}

/// Which targets to start, and from which binaries.
#[derive(clap::Args)]
struct TargetArgs {
    /// Targets, comma-separated or repeated: shardray, sing-box, v2ray, shoes, splice (the bare
    /// reference relay). Runs are interleaved, with the `--external` target last in each round.
    #[arg(long, value_delimiter = ',', required_unless_present = "external")]
    target: Vec<TargetKind>,
    /// The protocol every target serves and our client speaks: vless, trojan, vmess (AEAD,
    /// aes-128-gcm body), ss-aes-128-gcm, ss-2022 (2022-blake3-aes-128-gcm) or socks (SOCKS5
    /// with a password). A target that cannot serve it is skipped with a note.
    #[arg(long, default_value = "vless")]
    protocol: Protocol,
    /// Also measure a VLESS proxy that is already running at this address (it is never started
    /// or stopped here). It must admit `--external-uuid` and reach the harness's own loopback
    /// sink, whose address each VLESS request carries, through a direct/freedom outbound. Reported
    /// as `external(ADDR)`.
    #[arg(long, value_name = "ADDR", requires = "external_uuid")]
    external: Option<std::net::SocketAddr>,
    /// The VLESS user id the `--external` target admits.
    #[arg(long, value_name = "UUID", requires = "external")]
    external_uuid: Option<uuid::Uuid>,
    /// The `--external` target's process id: its CPU (utime + stime of all threads) and RSS are
    /// then read from /proc like a started target's. Without it only what the client sees is
    /// reported, and the CPU and RSS columns show "–".
    #[arg(long, value_name = "PID", requires = "external")]
    external_pid: Option<u32>,
    /// Shards for shardray.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// The shardray binary (default: target/release/shardray under the repository root).
    #[arg(long)]
    shardray_bin: Option<PathBuf>,
    /// The sing-box binary (default: from the peer cache, fetched if missing).
    #[arg(long)]
    sing_box_bin: Option<PathBuf>,
    /// The V2Ray binary (default: from the peer cache, fetched if missing).
    #[arg(long)]
    v2ray_bin: Option<PathBuf>,
    /// The shoes 0.3.2 binary (default: `shoes/bin/shoes` in the peer cache, which
    /// `perf/peers.sh shoes` builds; it is not fetched here).
    #[arg(long)]
    shoes_bin: Option<PathBuf>,
    /// Peer cache directory (default: `.peers/` at the repository root).
    #[arg(long)]
    peers_dir: Option<PathBuf>,
    /// Seconds a target may take to start carrying traffic.
    #[arg(long, default_value_t = 15)]
    startup_timeout: u64,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to this file (for `html`), whatever is printed.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Keep the directory with the targets' configs and logs.
    #[arg(long)]
    keep: bool,
}

impl TargetArgs {
    /// Prints `report` as JSON or as `markdown`, and saves the JSON where asked.
    fn emit(&self, report: &impl serde::Serialize, markdown: impl FnOnce() -> String) -> Result<()> {
        let json = serde_json::to_string_pretty(report)?;
        if let Some(path) = &self.json_out {
            std::fs::write(path, format!("{json}\n")).with_context(|| format!("writing {}", path.display()))?;
        }
        if self.json {
            println!("{json}");
        } else {
            print!("{}", markdown());
        }
        Ok(())
    }
}

#[derive(clap::Args)]
struct IdleArgs {
    #[command(flatten)]
    targets: TargetArgs,
    /// Tunnels to hold open through each target.
    #[arg(long, default_value_t = 2000)]
    tunnels: usize,
    /// Measurements per target; medians are taken over them.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Client threads opening tunnels.
    #[arg(long, default_value_t = 8)]
    open_threads: usize,
    /// Seconds to wait before each steady RSS reading (after start, after opening, after closing).
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// RSS samples per steady reading, 200 ms apart; the median is taken.
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// Seconds the tunnels stay idle (settling and sampling included) before the checks.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Tunnels, spread evenly, that make one more round trip at the end.
    #[arg(long, default_value_t = 100)]
    check: usize,
    /// Seconds any one connect or round trip may take.
    #[arg(long, default_value_t = 5.0)]
    conn_timeout: f64,
    /// Seconds opening all the tunnels may take.
    #[arg(long, default_value_t = 120.0)]
    open_timeout: f64,
}

#[derive(clap::Args)]
struct ThroughputArgs {
    #[command(flatten)]
    targets: TargetArgs,
    /// Parallel streams.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Payload bytes per stream (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, default_value = "256MiB", value_parser = report::parse_bytes)]
    bytes: u64,
    /// Which way the payload flows.
    #[arg(long, value_enum, default_value = "both")]
    direction: Direction,
    /// Measurements per target and direction; medians are taken over them.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds any one measurement may take before it fails.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// VLESS over TLS 1.3 instead of plain TCP: every target serves a certificate generated for
    /// this run (the splice relay, plain only, is skipped); an `--external` target serves its
    /// own, checked as `--external-ca` or `--external-insecure` say.
    #[arg(long)]
    tls: bool,
    #[command(flatten)]
    external_tls: ExternalTlsArgs,
    /// What limits configured for other users cost an unlimited one (shardray only, VLESS): N
    /// more users in the inbound, each moving one upload and one download throughout every
    /// measurement, and two variants of shardray, runs interleaved: `shardray+limits`, whose
    /// config puts those users at a level with `uplinkRate`/`downlinkRate` of --others-rate,
    /// `maxConnections` 4 and `maxIPs` 2, and `shardray`, with no limits at all, where the
    /// harness paces their streams to the same rate. The measured user is at an unlimited
    /// level in both; the report gives the limited variant's throughput and CPU/GB as ratios
    /// of the other's.
    #[arg(long, value_name = "N", default_value_t = 0)]
    limits_for_others: usize,
    /// With --limits-for-others: each other user's rate, each direction (suffixes as --bytes).
    #[arg(long, default_value = "1MiB", value_parser = report::parse_bytes, requires = "limits_for_others")]
    others_rate: u64,
}

/// The limits `--limits-for-others` gives the other users: their rate, and room for their
/// two sessions from one address, so that the connection and address checks run but refuse
/// nothing.
fn others_limits(rate: u64) -> target::LevelLimits {
    target::LevelLimits { rate, max_connections: 4, max_ips: 2 }
}

/// How long the other users' traffic runs before each measurement.
const OTHERS_WARMUP: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
struct ConnrateArgs {
    #[command(flatten)]
    targets: TargetArgs,
    /// Client threads, each making connections back to back.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Seconds of the parallel pass.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of the one-connection-at-a-time pass after it (0 skips it).
    #[arg(long, default_value_t = 3.0)]
    serial_duration: f64,
    /// Measurements per target; medians are taken over them.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds any one connection may take before it counts as failed.
    #[arg(long, default_value_t = 5.0)]
    conn_timeout: f64,
    /// VLESS over TLS 1.3 instead of plain TCP: every target serves a certificate generated for
    /// this run (the splice relay, plain only, is skipped); an `--external` target serves its
    /// own, checked as `--external-ca` or `--external-insecure` say.
    #[arg(long)]
    tls: bool,
    #[command(flatten)]
    external_tls: ExternalTlsArgs,
    /// Also measure every target with this name, instead of the echo server's address, as
    /// each connection's destination (the proxy resolves it; it must resolve to 127.0.0.1,
    /// as `localhost` does), reported as "TARGET by name" beside the address's rows.
    #[arg(long, value_name = "NAME")]
    dest_domain: Option<String>,
}

/// How to reach the `--external` target over TLS (with `--tls`).
#[derive(clap::Args)]
struct ExternalTlsArgs {
    /// With `--tls`: the name sent as SNI to the `--external` target and checked against its
    /// certificate (default: the IP address of `--external`).
    #[arg(long, value_name = "NAME", requires = "external", requires = "tls")]
    external_sni: Option<String>,
    /// With `--tls`: trust only the CA certificates in this PEM file for the `--external`
    /// target.
    #[arg(long, value_name = "PEM", requires = "external", requires = "tls", conflicts_with = "external_insecure")]
    external_ca: Option<PathBuf>,
    /// With `--tls`: accept whatever certificate the `--external` target presents, without
    /// verifying it (its handshake signature is still checked). For test setups only.
    #[arg(long, requires = "external", requires = "tls")]
    external_insecure: bool,
}

impl ExternalTlsArgs {
    /// The client settings for the external target, with `tls`; `None` for plain VLESS.
    fn client(&self, targets: &TargetArgs, tls: bool) -> Result<Option<TlsClient>> {
        let Some(addr) = targets.external.filter(|_| tls) else { return Ok(None) };
        let trust = match (&self.external_ca, self.external_insecure) {
            (Some(ca), _) => ExternalTrust::CaFile(ca.clone()),
            (None, true) => ExternalTrust::Insecure,
            (None, false) => bail!("--tls with --external needs --external-ca PEM or --external-insecure"),
        };
        let name = self.external_sni.clone().unwrap_or_else(|| addr.ip().to_string());
        Ok(Some(TlsClient::external(&name, &trust).context("the --external TLS settings")?))
    }
}

/// How to start shardray for the API scenarios.
#[derive(clap::Args)]
struct ShardrayArgs {
    /// Shards.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// The shardray binary (default: target/release/shardray under the repository root).
    #[arg(long)]
    shardray_bin: Option<PathBuf>,
    /// Seconds shardray may take to start carrying traffic.
    #[arg(long, default_value_t = 15)]
    startup_timeout: u64,
    /// Print the result as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// Keep the directory with the configs and logs.
    #[arg(long)]
    keep: bool,
}

impl ShardrayArgs {
    fn spec(&self) -> Result<TargetSpec> {
        let bin = self.shardray_bin.clone().unwrap_or_else(|| peers::repo_root().join("target/release/shardray"));
        if !bin.is_file() {
            bail!("shardray binary {} does not exist", bin.display());
        }
        Ok(TargetSpec::shardray(bin, self.shards))
    }
}

#[derive(clap::Args)]
struct ChurnArgs {
    #[command(flatten)]
    shardray: ShardrayArgs,
    /// AddUser and RemoveUser calls in all (alternating, fresh users).
    #[arg(long, default_value_t = 10_000)]
    ops: u64,
    /// Calls per second; 0 for back to back.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Parallel VLESS streams carrying traffic during the run (0: idle server).
    #[arg(long, default_value_t = 0)]
    traffic_streams: usize,
    /// Nice value (0-19) of the traffic's client and sink threads: with 19 the proxy gets the
    /// cores first, as with remote clients; with 0 it competes with its own load generator.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    traffic_nice: i32,
    /// Seconds of traffic measured before the first call.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds the calls may take in all; the run stops early beyond it.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(clap::Args)]
struct UsersArgs {
    #[command(flatten)]
    shardray: ShardrayArgs,
    /// Users to add.
    #[arg(long, default_value_t = 1_000_000)]
    count: usize,
    /// Users per AddUsersOperation (the server takes messages up to 4 MiB, about 40,000 users).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// QueryStats calls over every counter; the median is reported.
    #[arg(long, default_value_t = 3)]
    query_runs: usize,
    /// Connections as random users (and as many as one user) for the lookup cost.
    #[arg(long, default_value_t = 1000)]
    lookups: usize,
    /// While the QueryStats calls run, a second API client adds and removes a user in a loop:
    /// how long a change waits behind a QueryStats.
    #[arg(long)]
    add_during_query: bool,
    /// Skip the start from a config that lists every user.
    #[arg(long)]
    no_config_load: bool,
    /// Seconds the load through the API, and each later step, may take.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Seconds a start from the config with every user may take.
    #[arg(long, default_value_t = 300)]
    config_startup_timeout: u64,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Peers { dir } => {
            let dir = dir.unwrap_or_else(peers::default_dir);
            let p = peers::ensure(&dir)?;
            println!("SING_BOX={}", p.sing_box.display());
            println!("V2RAY={}", p.v2ray.display());
            println!("V2CTL={}", p.v2ctl.display());
            Ok(())
        }
        Cmd::Throughput(args) => throughput(args),
        Cmd::Connrate(args) => connrate(args),
        Cmd::Churn(args) => churn(args),
        Cmd::Users(args) => users(args),
        Cmd::ApiSummary { details, files } => {
            let mut reports = Vec::new();
            for f in &files {
                let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
                let report: ApiReport =
                    serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
                reports.push(report);
            }
            print!("{}", summary::markdown(&reports, details));
            Ok(())
        }
        Cmd::Idle(args) => idle(args),
        Cmd::Html { title, out, files } => {
            let mut inputs = Vec::new();
            for f in &files {
                let json = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
                let name = f.file_name().map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into_owned());
                inputs.push(html::Input { name, json });
            }
            let page = html::render(&title, &inputs)?;
            match out {
                Some(path) => std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?,
                None => print!("{page}"),
            }
            Ok(())
        }
        Cmd::SpliceRelay { listen, user } => splice_relay::run(listen, user),
    }
}

/// Seconds from a command-line option, checked to be finite and within an hour.
fn seconds(name: &str, x: f64) -> Result<Duration> {
    if !x.is_finite() || !(0.0..=3600.0).contains(&x) {
        bail!("--{name} must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(x))
}

fn idle(args: IdleArgs) -> Result<()> {
    const MAX_TUNNELS: usize = 100_000;
    if args.tunnels == 0 || args.tunnels > MAX_TUNNELS || args.runs == 0 || args.samples == 0 {
        bail!("--tunnels must be 1 to {MAX_TUNNELS}; --runs and --samples must be positive");
    }
    if args.conn_timeout <= 0.0 || args.open_timeout <= 0.0 {
        bail!("--conn-timeout and --open-timeout must be positive");
    }
    // Our side holds two descriptors per tunnel (client and echo ends). A target holds at least
    // two, and up to four more where it splices through pipes (sing-box does); it inherits our
    // limit.
    let tunnels = args.tunnels as u64;
    let (own, generous) = (tunnels * 2 + 1024, tunnels * 6 + 1024);
    let limit = sys::raise_nofile(generous).context("raising the open-file limit")?;
    if limit < own {
        bail!("{tunnels} tunnels need {own} open files, the hard limit allows {limit} (see `ulimit -Hn`)");
    }
    if limit < generous {
        eprintln!(
            "warning: the open-file limit is {limit}; a target using more than two descriptors per tunnel \
             may refuse tunnels (run as root, or raise `ulimit -Hn` to {generous})"
        );
    }
    let scenario = idle::Idle {
        tunnels: args.tunnels,
        runs: args.runs,
        open_threads: args.open_threads.max(1),
        settle: seconds("settle", args.settle)?,
        samples: args.samples,
        sample_every: Duration::from_millis(200),
        hold: seconds("hold", args.hold)?,
        check: args.check,
        conn_timeout: seconds("conn-timeout", args.conn_timeout)?,
        open_timeout: seconds("open-timeout", args.open_timeout)?,
        startup: Duration::from_secs(args.targets.startup_timeout),
        nofile_limit: limit,
    };
    let workdir = workdir()?;
    let (specs, note) = protocol_specs(&args.targets, false, None, &workdir)?;
    // The sink serves only the start-up probes; the idle echo server holds the tunnels' far ends.
    let sink = sink::Sink::spawn(scenario.startup)?;
    let echo = sink::IdleEcho::spawn()?;
    let progress = Progress::new((specs.len() * scenario.runs) as u64, "idle");
    let outcome = idle::run_all(&specs, &scenario, sink.addr(), &echo, &workdir, &progress);
    drop(progress);
    let records = finish(&workdir, args.targets.keep, outcome)?;
    let report = idle::IdleReport::new(&scenario, command_line(), records);
    args.targets.emit(&report, || format!("{note}{}", report.markdown()))
}

fn throughput(args: ThroughputArgs) -> Result<()> {
    if args.streams == 0 || args.runs == 0 || args.bytes == 0 {
        bail!("--streams, --runs and --bytes must be positive");
    }
    let scenario = Scenario {
        streams: args.streams,
        bytes: args.bytes,
        flows: match args.direction {
            Direction::Up => vec![Flow::Up],
            Direction::Down => vec![Flow::Down],
            Direction::Both => vec![Flow::Up, Flow::Down],
        },
        runs: args.runs,
        timeout: Duration::from_secs(args.timeout),
        startup: Duration::from_secs(args.targets.startup_timeout),
        others: (args.limits_for_others > 0).then(|| throughput::Others {
            users: args.limits_for_others,
            limits: others_limits(args.others_rate),
            warmup: OTHERS_WARMUP,
        }),
    };
    if scenario.others.is_some()
        && (args.targets.target != [TargetKind::Shardray]
            || args.targets.protocol != Protocol::Vless
            || args.targets.external.is_some())
    {
        bail!("--limits-for-others compares shardray with itself: --target shardray --protocol vless, no --external");
    }
    let external_tls = args.external_tls.client(&args.targets, args.tls)?;
    let workdir = workdir()?;
    let (mut specs, note) = protocol_specs(&args.targets, args.tls, external_tls, &workdir)?;
    if let Some(others) = &scenario.others {
        specs = with_and_without_limits(&specs[0], others);
    }
    let sink = sink::Sink::spawn(scenario.timeout)?;

    let progress = Progress::new((specs.len() * scenario.runs * scenario.flows.len()) as u64, "throughput");
    let outcome = throughput::run_all(&specs, &scenario, sink.addr(), &workdir, |r| {
        progress.println(format!(
            "{:>8} {:>4} run {}: {:.2} Gbit/s, {} CPU s, {} CPU s/GB, peak RSS {} MiB",
            r.target,
            r.direction,
            r.run,
            r.gbit_s,
            cell(r.proxy_cpu_s, 2),
            cell(r.cpu_s_per_gb, 3),
            cell(r.peak_rss_mib, 1)
        ));
        progress.inc(1);
    });
    drop(progress);
    let records = finish(&workdir, args.targets.keep, outcome)?;

    let report = Report::new(records);
    args.targets.emit(&report, || format!("{note}{}", report.markdown()))
}

fn connrate(args: ConnrateArgs) -> Result<()> {
    if args.parallel == 0 || args.runs == 0 || args.duration <= 0.0 || args.conn_timeout <= 0.0 {
        bail!("--parallel, --runs, --duration and --conn-timeout must be positive");
    }
    let scenario = connrate::Connrate {
        parallel: args.parallel,
        duration: seconds("duration", args.duration)?,
        serial_duration: seconds("serial-duration", args.serial_duration)?,
        runs: args.runs,
        conn_timeout: seconds("conn-timeout", args.conn_timeout)?,
        startup: Duration::from_secs(args.targets.startup_timeout),
        dest_domain: args.dest_domain.clone(),
    };
    let external_tls = args.external_tls.client(&args.targets, args.tls)?;
    let workdir = workdir()?;
    let (specs, note) = protocol_specs(&args.targets, args.tls, external_tls, &workdir)?;
    // The sink serves only the start-up probes; the echo server serves the measured connections.
    let sink = sink::Sink::spawn(scenario.startup)?;
    // Each client has at most one connection in flight, so that many accepting threads (and a
    // margin for connections the proxy is still tearing down) never keep a connection waiting.
    let echo = sink::Echo::spawn(connrate::PAYLOAD, args.parallel * 2 + 8, scenario.conn_timeout)?;
    let progress = Progress::new((specs.len() * scenario.runs) as u64, "connrate");
    let outcome = connrate::run_all(&specs, &scenario, sink.addr(), echo.addr(), &workdir, |r| {
        let p = &r.parallel;
        let serial =
            r.serial.as_ref().map_or(String::new(), |s| format!(", 1-at-a-time p50 {:.0} µs", s.latency.p50_us));
        progress.println(format!(
            "{:>8} run {}: {:.0} conns/s, p50 {:.0} µs, p99 {:.0} µs, {} CPU ms/1k conns, {} errors, peak RSS {} MiB{serial}",
            r.target,
            r.run,
            p.conns_per_s,
            p.latency.p50_us,
            p.latency.p99_us,
            cell(p.cpu_ms_per_1k, 0),
            p.errors,
            cell(r.peak_rss_mib, 1)
        ));
        progress.inc(1);
    });
    drop(progress);
    let records = finish(&workdir, args.targets.keep, outcome)?;
    let report = connrate::ConnrateReport::new(&scenario, command_line(), records);
    args.targets.emit(&report, || format!("{note}{}", report.markdown()))
}

/// This invocation's command line, with the program's path shortened to its name.
fn command_line() -> String {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let name =
        std::path::Path::new(&argv0).file_name().map_or("shardray-bench".into(), |n| n.to_string_lossy().into_owned());
    std::iter::once(name).chain(args).collect::<Vec<_>>().join(" ")
}

/// A fresh directory for the targets' configs and logs.
fn workdir() -> Result<PathBuf> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let dir = std::env::temp_dir().join(format!("shardray-bench-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Removes `workdir` after a success unless asked to keep it; keeps it after a failure.
fn finish<T>(workdir: &std::path::Path, keep: bool, outcome: Result<T>) -> Result<T> {
    if keep || outcome.is_err() {
        eprintln!("configs and logs kept in {}", workdir.display());
    } else {
        let _ = std::fs::remove_dir_all(workdir);
    }
    outcome
}

/// Prints an API scenario's result as Markdown or JSON, noting the command line in it.
fn print_api_report(mut report: ApiReport, json: bool) -> Result<()> {
    report.set_command(command_line());
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.markdown());
    }
    Ok(())
}

fn churn(args: ChurnArgs) -> Result<()> {
    let valid = |x: f64| x.is_finite() && x >= 0.0;
    if !valid(args.rate) || !valid(args.warmup) {
        bail!("--rate and --warmup must be finite and not negative");
    }
    let scenario = churn::Churn {
        target: args.shardray.spec()?,
        ops: args.ops,
        rate: args.rate,
        traffic_streams: args.traffic_streams,
        traffic_nice: args.traffic_nice,
        warmup: Duration::from_secs_f64(args.warmup),
        timeout: Duration::from_secs(args.timeout),
        startup: Duration::from_secs(args.shardray.startup_timeout),
    };
    let workdir = workdir()?;
    // The sink's streams must outlive the whole run, warm-up and calls included.
    let sink =
        sink::Sink::spawn_niced(scenario.warmup + scenario.timeout + Duration::from_secs(30), args.traffic_nice)?;
    let record = finish(&workdir, args.shardray.keep, churn::run(&scenario, sink.addr(), &workdir))?;
    print_api_report(ApiReport::Churn(record), args.shardray.json)
}

fn users(args: UsersArgs) -> Result<()> {
    let scenario = users::Users {
        target: args.shardray.spec()?,
        count: args.count,
        batch: args.batch,
        query_runs: args.query_runs,
        lookups: args.lookups,
        add_during_query: args.add_during_query,
        config_load: !args.no_config_load,
        timeout: Duration::from_secs(args.timeout),
        startup: Duration::from_secs(args.shardray.startup_timeout),
        config_startup: Duration::from_secs(args.config_startup_timeout),
    };
    let workdir = workdir()?;
    let sink = sink::Sink::spawn(Duration::from_secs(60))?;
    let record = finish(&workdir, args.shardray.keep, users::run(&scenario, sink.addr(), &workdir))?;
    print_api_report(ApiReport::Users(record), args.shardray.json)
}

/// The targets that serve `protocol` (inside TLS with `tls`), and a note naming each one
/// left out and why (the splice relay serves plain VLESS only, V2Ray has no Shadowsocks 2022).
fn servable_targets(requested: &[TargetKind], protocol: Protocol, tls: bool) -> (Vec<TargetKind>, String) {
    let mut note = String::new();
    let mut kept = Vec::new();
    for &kind in requested {
        match target::supports(kind, protocol, tls) {
            Ok(()) => kept.push(kind),
            Err(why) => note.push_str(&format!("Note: {kind} is skipped for {}: {why}.\n\n", protocol.label(tls))),
        }
    }
    (kept, note)
}

/// [`target_specs`] for the protocol asked for, and the `--external` target last (over TLS
/// with `external_tls`): with `tls`, a certificate generated into `workdir` for every target
/// the harness starts; the targets that cannot serve the protocol are skipped (the note says
/// so, also on stderr).
fn protocol_specs(
    args: &TargetArgs,
    tls: bool,
    external_tls: Option<TlsClient>,
    workdir: &Path,
) -> Result<(Vec<TargetSpec>, String)> {
    let protocol = args.protocol;
    if tls && !protocol.allows_tls() {
        bail!("--tls is for vless, trojan and vmess; {protocol} is measured over plain TCP");
    }
    if args.external.is_some() && protocol != Protocol::Vless {
        bail!("an --external target is measured over VLESS only (--protocol vless)");
    }
    let (kinds, note) = servable_targets(&args.target, protocol, tls);
    if !note.is_empty() {
        eprint!("{note}");
    }
    if kinds.is_empty() && args.external.is_none() {
        bail!("no target left to measure {}", protocol.label(tls));
    }
    let material = if tls && !kinds.is_empty() {
        Some(Arc::new(TlsMaterial::generate(workdir).context("generating the TLS certificate")?))
    } else {
        None
    };
    let mut specs = target_specs(args, &kinds)?;
    for spec in &mut specs {
        spec.tls = material.clone();
        spec.protocol = protocol;
    }
    specs.extend(external_spec(args, external_tls));
    Ok((specs, note))
}

/// shardray listing the other users, first with no limits at all, then with `others.limits`
/// at their level: the two variants `--limits-for-others` interleaves.
fn with_and_without_limits(spec: &TargetSpec, others: &throughput::Others) -> Vec<TargetSpec> {
    let mut plain = spec.clone();
    plain.extra_users = others.users;
    let mut limited = plain.clone();
    limited.extra_users_limits = Some(others.limits);
    vec![plain, limited]
}

/// The `--external` target, if one was given, reached over TLS with `tls`.
fn external_spec(args: &TargetArgs, tls: Option<TlsClient>) -> Option<TargetSpec> {
    let (addr, user) = (args.external?, args.external_uuid?);
    Some(TargetSpec::external(ExternalTarget { addr, user, pid: args.external_pid, tls }))
}

/// Resolves each requested target to a binary, fetching peers into the cache if needed.
fn target_specs(args: &TargetArgs, kinds: &[TargetKind]) -> Result<Vec<TargetSpec>> {
    let mut peers = None;
    let mut peer_bins = || -> Result<peers::Peers> {
        if peers.is_none() {
            let dir = args.peers_dir.clone().unwrap_or_else(peers::default_dir);
            peers = Some(peers::ensure(&dir).context("fetching peers")?);
        }
        Ok(peers.clone().expect("just filled"))
    };
    let mut specs = Vec::new();
    for &kind in kinds {
        let bin = match kind {
            TargetKind::Shardray => match &args.shardray_bin {
                Some(bin) => bin.clone(),
                None => peers::repo_root().join("target/release/shardray"),
            },
            TargetKind::SingBox => match &args.sing_box_bin {
                Some(bin) => bin.clone(),
                None => peer_bins()?.sing_box,
            },
            TargetKind::V2ray => match &args.v2ray_bin {
                Some(bin) => bin.clone(),
                None => peer_bins()?.v2ray,
            },
            TargetKind::Shoes => match &args.shoes_bin {
                Some(bin) => bin.clone(),
                None => args.peers_dir.clone().unwrap_or_else(peers::default_dir).join("shoes/bin/shoes"),
            },
            TargetKind::Splice => std::env::current_exe().context("finding our own binary")?,
            TargetKind::External => bail!("the external target is given with --external, not --target"),
        };
        if !bin.is_file() {
            let hint = if kind == TargetKind::Shoes { " (`perf/peers.sh shoes` builds it)" } else { "" };
            bail!("{kind} binary {} does not exist{hint}", bin.display());
        }
        specs.push(TargetSpec {
            kind,
            bin,
            shards: args.shards,
            api: false,
            extra_users: 0,
            extra_users_limits: None,
            protocol: args.protocol,
            tls: None,
            external: None,
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cmd {
        Cli::try_parse_from(std::iter::once("shardray-bench").chain(args.iter().copied())).unwrap().command
    }

    #[test]
    fn tls_is_off_unless_asked() {
        let Cmd::Throughput(t) = parse(&["throughput", "--target", "shardray,sing-box"]) else { panic!() };
        assert!(!t.tls);
        let Cmd::Connrate(c) = parse(&["connrate", "--target", "shardray"]) else { panic!() };
        assert!(!c.tls);
    }

    #[test]
    fn tls_parses_for_throughput_and_connrate() {
        let Cmd::Throughput(t) = parse(&["throughput", "--target", "shardray,sing-box,v2ray", "--tls", "--runs", "3"])
        else {
            panic!()
        };
        assert!(t.tls);
        assert_eq!(t.targets.target, [TargetKind::Shardray, TargetKind::SingBox, TargetKind::V2ray]);
        let Cmd::Connrate(c) = parse(&["connrate", "--tls", "--target", "shardray", "--target", "sing-box"]) else {
            panic!()
        };
        assert!(c.tls);
        assert_eq!(c.targets.target, [TargetKind::Shardray, TargetKind::SingBox]);
        // The other scenarios have no TLS mode.
        assert!(Cli::try_parse_from(["shardray-bench", "idle", "--target", "shardray", "--tls"]).is_err());
    }

    #[test]
    fn targets_that_cannot_serve_the_protocol_are_skipped_with_a_note() {
        let all = [TargetKind::Shardray, TargetKind::Splice, TargetKind::SingBox];
        let (kinds, note) = servable_targets(&all, Protocol::Vless, false);
        assert_eq!(kinds, all);
        assert!(note.is_empty());
        let (kinds, note) = servable_targets(&all, Protocol::Vless, true);
        assert_eq!(kinds, [TargetKind::Shardray, TargetKind::SingBox]);
        assert!(note.contains("splice is skipped for vless-tls") && note.contains("plain VLESS only"), "{note}");
        let (kinds, note) = servable_targets(&[TargetKind::Shardray], Protocol::Vless, true);
        assert_eq!(kinds, [TargetKind::Shardray]);
        assert!(note.is_empty());
        let peers = [TargetKind::Shardray, TargetKind::SingBox, TargetKind::V2ray, TargetKind::Shoes];
        let (kinds, note) = servable_targets(&peers, Protocol::Ss2022, false);
        assert_eq!(kinds, [TargetKind::Shardray, TargetKind::SingBox, TargetKind::Shoes]);
        assert!(note.contains("v2ray is skipped for ss-2022"), "{note}");
        let (kinds, _) = servable_targets(&peers, Protocol::Trojan, true);
        assert_eq!(kinds, peers);
    }

    #[test]
    fn protocol_parses_for_every_scenario_and_defaults_to_vless() {
        let Cmd::Throughput(t) = parse(&["throughput", "--target", "shoes,sing-box", "--protocol", "ss-2022"]) else {
            panic!()
        };
        assert_eq!(t.targets.protocol, Protocol::Ss2022);
        assert_eq!(t.targets.target, [TargetKind::Shoes, TargetKind::SingBox]);
        let Cmd::Connrate(c) = parse(&["connrate", "--target", "shardray", "--protocol", "trojan", "--tls"]) else {
            panic!()
        };
        assert_eq!((c.targets.protocol, c.tls), (Protocol::Trojan, true));
        let Cmd::Idle(i) = parse(&["idle", "--target", "shardray", "--protocol", "vmess"]) else { panic!() };
        assert_eq!(i.targets.protocol, Protocol::Vmess);
        let Cmd::Idle(i) = parse(&["idle", "--target", "shardray"]) else { panic!() };
        assert_eq!(i.targets.protocol, Protocol::Vless);
        assert!(try_parse(&["throughput", "--target", "shardray", "--protocol", "ss"]).is_err());
    }

    #[test]
    fn limits_for_others_makes_both_variants_of_shardray() {
        let Cmd::Throughput(t) = parse(&["throughput", "--target", "shardray", "--limits-for-others", "3"]) else {
            panic!()
        };
        assert_eq!((t.limits_for_others, t.others_rate), (3, 1 << 20));
        let Cmd::Throughput(t) = parse(&["throughput", "--target", "shardray"]) else { panic!() };
        assert_eq!(t.limits_for_others, 0);
        let others = throughput::Others { users: 3, limits: others_limits(5000), warmup: OTHERS_WARMUP };
        let specs = with_and_without_limits(&TargetSpec::shardray("/bin/true".into(), 2), &others);
        let names: Vec<String> = specs.iter().map(TargetSpec::name).collect();
        assert_eq!(names, ["shardray", "shardray+limits"]);
        assert!(specs.iter().all(|s| s.extra_users == 3));
        assert_eq!(specs[0].extra_users_limits, None);
        assert_eq!(
            specs[1].extra_users_limits,
            Some(target::LevelLimits { rate: 5000, max_connections: 4, max_ips: 2 })
        );
    }

    #[test]
    fn tls_with_a_protocol_deployed_without_it_is_refused() {
        let Cmd::Throughput(t) = parse(&["throughput", "--target", "shardray", "--protocol", "socks", "--tls"]) else {
            panic!()
        };
        let err = protocol_specs(&t.targets, t.tls, None, Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("--tls is for vless, trojan and vmess"), "{err}");
    }

    const USER: &str = "5f3c3b9e-58c1-4e1f-9a53-0c3a3a0f6f11";

    fn try_parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("shardray-bench").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn an_external_target_alone_or_beside_started_ones() {
        for scenario in ["throughput", "connrate", "idle"] {
            let cmd =
                parse(&[scenario, "--external", "127.0.0.1:10086", "--external-uuid", USER, "--external-pid", "42"]);
            let targets = match &cmd {
                Cmd::Throughput(t) => &t.targets,
                Cmd::Connrate(c) => &c.targets,
                Cmd::Idle(i) => &i.targets,
                _ => panic!(),
            };
            assert!(targets.target.is_empty(), "{scenario}");
            let spec = external_spec(targets, None).unwrap();
            assert_eq!(spec.name(), "external(127.0.0.1:10086)");
            assert_eq!(spec.protocol(), "vless");
            let ext = spec.external.unwrap();
            assert_eq!((ext.user.to_string().as_str(), ext.pid), (USER, Some(42)));
        }
        let Cmd::Throughput(t) =
            parse(&["throughput", "--target", "sing-box", "--external", "127.0.0.1:1", "--external-uuid", USER])
        else {
            panic!()
        };
        assert_eq!(t.targets.target, [TargetKind::SingBox]);
        assert_eq!(t.targets.external_pid, None);
        assert!(external_spec(&t.targets, None).is_some());
    }

    #[test]
    fn external_options_that_do_not_fit_are_refused() {
        // Neither a target nor an external one; an address without a user, or the reverse.
        assert!(try_parse(&["throughput"]).is_err());
        assert!(try_parse(&["throughput", "--external", "127.0.0.1:1"]).is_err());
        assert!(try_parse(&["connrate", "--target", "shardray", "--external-uuid", USER]).is_err());
        assert!(try_parse(&["connrate", "--target", "shardray", "--external-pid", "1"]).is_err());
        // `external` is not a --target name.
        assert!(try_parse(&["throughput", "--target", "external"]).is_err());
        // The TLS trust options need --tls and --external, and one of them at a time.
        let base = ["throughput", "--external", "127.0.0.1:1", "--external-uuid", USER];
        let with = |extra: &[&'static str]| [&base[..], extra].concat();
        assert!(try_parse(&with(&["--external-insecure"])).is_err());
        assert!(try_parse(&with(&["--tls", "--external-insecure", "--external-ca", "/x.pem"])).is_err());
        assert!(try_parse(&["throughput", "--target", "shardray", "--tls", "--external-insecure"]).is_err());
        // idle has no TLS.
        assert!(
            try_parse(&["idle", "--external", "127.0.0.1:1", "--external-uuid", USER, "--external-insecure"]).is_err()
        );
        // --tls without saying how to trust the external target's certificate.
        let Cmd::Throughput(t) = parse(&with(&["--tls"])) else { panic!() };
        let err = t.external_tls.client(&t.targets, t.tls).unwrap_err();
        assert!(err.to_string().contains("--external-ca"), "{err}");
        let Cmd::Throughput(t) = parse(&with(&["--tls", "--external-insecure", "--external-sni", "proxy.example"]))
        else {
            panic!()
        };
        let client = t.external_tls.client(&t.targets, t.tls).unwrap().unwrap();
        assert_eq!(client.server_name.to_str(), "proxy.example");
        assert!(!client.require_alpn);
        let spec = external_spec(&t.targets, Some(client)).unwrap();
        assert_eq!(spec.protocol(), "vless-tls");
    }
}
