//! `shardray-bench`: starts shardray and its peers (sing-box, V2Ray) from equivalent configs,
//! drives them with its own clients against its own loopback sink, and measures what each
//! target process spends.
#![deny(rust_2018_idioms)]

mod client;
mod pattern;
mod peers;
mod procstat;
mod report;
mod sink;
mod splice_relay;
mod sys;
mod target;
mod throughput;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::pattern::Flow;
use crate::report::Report;
use crate::target::{TargetKind, TargetSpec};
use crate::throughput::Scenario;

#[derive(Parser)]
#[command(
    name = "shardray-bench",
    version,
    about = "Load-test harness for shardray and its peers"
)]
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
    /// Bulk VLESS throughput: N parallel streams of B bytes, through each target in turn.
    Throughput(ThroughputArgs),
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

#[derive(clap::Args)]
struct ThroughputArgs {
    /// Targets, comma-separated or repeated: shardray, sing-box, v2ray, splice (the bare
    /// reference relay). Runs are interleaved.
    #[arg(long, value_delimiter = ',', required = true)]
    target: Vec<TargetKind>,
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
    /// Peer cache directory (default: `.peers/` at the repository root).
    #[arg(long)]
    peers_dir: Option<PathBuf>,
    /// Seconds any one measurement may take before it fails.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Seconds a target may take to start carrying traffic.
    #[arg(long, default_value_t = 15)]
    startup_timeout: u64,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// Keep the directory with the targets' configs and logs.
    #[arg(long)]
    keep: bool,
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
        Cmd::SpliceRelay { listen, user } => splice_relay::run(listen, user),
    }
}

fn throughput(args: ThroughputArgs) -> Result<()> {
    if args.streams == 0 || args.runs == 0 || args.bytes == 0 {
        bail!("--streams, --runs and --bytes must be positive");
    }
    let specs = target_specs(&args)?;
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
        startup: Duration::from_secs(args.startup_timeout),
    };
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let workdir =
        std::env::temp_dir().join(format!("shardray-bench-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let sink = sink::Sink::spawn(scenario.timeout)?;

    let outcome = throughput::run_all(&specs, &scenario, sink.addr(), &workdir, |r| {
        eprintln!(
            "{:>8} {:>4} run {}: {:.2} Gbit/s, {:.2} CPU s, {:.3} CPU s/GB, peak RSS {:.1} MiB",
            r.target, r.direction, r.run, r.gbit_s, r.proxy_cpu_s, r.cpu_s_per_gb, r.peak_rss_mib
        );
    });
    let records = match outcome {
        Ok(records) => records,
        Err(e) => {
            eprintln!("configs and logs kept in {}", workdir.display());
            return Err(e);
        }
    };
    if args.keep {
        eprintln!("configs and logs kept in {}", workdir.display());
    } else {
        let _ = std::fs::remove_dir_all(&workdir);
    }

    let report = Report::new(records);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.markdown());
    }
    Ok(())
}

/// Resolves each requested target to a binary, fetching peers into the cache if needed.
fn target_specs(args: &ThroughputArgs) -> Result<Vec<TargetSpec>> {
    let mut peers = None;
    let mut peer_bins = || -> Result<peers::Peers> {
        if peers.is_none() {
            let dir = args.peers_dir.clone().unwrap_or_else(peers::default_dir);
            peers = Some(peers::ensure(&dir).context("fetching peers")?);
        }
        Ok(peers.clone().expect("just filled"))
    };
    let mut specs = Vec::new();
    for &kind in &args.target {
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
            TargetKind::Splice => std::env::current_exe().context("finding our own binary")?,
        };
        if !bin.is_file() {
            bail!("{kind} binary {} does not exist", bin.display());
        }
        specs.push(TargetSpec {
            kind,
            bin,
            shards: args.shards,
        });
    }
    Ok(specs)
}
