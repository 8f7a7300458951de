//! `shardray`: run, check and inspect a shardray server.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shardray_control::server::{allowed_cpus, Server};
use shardray_control::{api, config};
use shardray_core::spec::{Config, InboundProtocol, LogLevel};

/// A proxy core for Linux servers with many users, compatible with V2Ray/Xray configs and API.
#[derive(Parser)]
#[command(name = "shardray", version, disable_version_flag = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the config comes from: files (`-c`, repeatable, merged in order) or a directory.
#[derive(clap::Args)]
struct ConfigArgs {
    /// Config file (JSON with comments); repeat to merge several.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Vec<PathBuf>,
    /// A directory whose *.json files are merged in name order.
    #[arg(long = "confdir", value_name = "DIR")]
    confdir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// Number of shards (one pinned thread each); default: every CPU this process may use.
        #[arg(long)]
        shards: Option<usize>,
        /// Seconds live sessions may go on after SIGTERM or SIGINT.
        #[arg(long, default_value_t = 10)]
        grace: u64,
    },
    /// Check a config and exit: 0 if it is valid, 1 with the reason if not.
    Test {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print the client links (vless://) of every user in a config.
    Link {
        #[command(flatten)]
        config: ConfigArgs,
        /// Host name or address clients should dial (default: each inbound's listen address).
        #[arg(long)]
        host: Option<String>,
    },
    /// Print the version.
    Version,
    /// Print a new random UUID for a user id.
    Uuid,
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(upstream_flags(std::env::args_os()));
    match cli.command {
        Command::Run {
            config,
            shards,
            grace,
        } => match load(&config) {
            Ok(cfg) => run(cfg, shards, Duration::from_secs(grace)),
            Err(e) => fail(e),
        },
        Command::Test { config } => {
            match load(&config).and_then(|cfg| shardray_control::server::check(&cfg)) {
                Ok(()) => {
                    println!("Configuration OK.");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Link { config, host } => match load(&config) {
            Ok(cfg) => {
                for link in links(&cfg, host.as_deref()) {
                    println!("{link}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Version => {
            println!(
                "shardray {} (V2Ray/Xray compatible config and API)",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Command::Uuid => {
            println!("{}", uuid::Uuid::new_v4());
            ExitCode::SUCCESS
        }
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("shardray: {e:#}");
    ExitCode::FAILURE
}

/// Upstream spells long flags with one dash (`-config`, `-confdir`); accept those too.
fn upstream_flags(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    args.map(|a| match a.to_str() {
        Some("-config") => "--config".into(),
        Some("-confdir") => "--confdir".into(),
        Some(s) if s.starts_with("-config=") || s.starts_with("-confdir=") => {
            format!("-{s}").into()
        }
        _ => a,
    })
    .collect()
}

fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
    let config = match (&args.confdir, args.config.as_slice()) {
        (Some(dir), []) => config::load_dir(dir)?,
        (None, []) => anyhow::bail!("no config given: use -c FILE or -confdir DIR"),
        (None, files) => config::load_files(files)?,
        (Some(_), _) => anyhow::bail!("give either -c FILE or -confdir DIR, not both"),
    };
    Ok(config)
}

fn run(config: Config, shards: Option<usize>, grace: Duration) -> ExitCode {
    let shards = shards.unwrap_or_else(|| allowed_cpus().len().max(1));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e.into()),
    };
    // The API binds first, so that a taken API port stops the start before any shard runs.
    let api = match &config.api {
        Some(spec) => match runtime.block_on(api::bind(spec)) {
            Ok(listener) => Some((spec.clone(), listener)),
            Err(e) => return fail(e),
        },
        None => None,
    };
    let api_addrs: Vec<_> = match &api {
        Some((_, api::ApiListener::Tcp(_, addr))) => vec![*addr],
        _ => Vec::new(),
    };
    let mut server = match Server::start(Arc::new(config), shards, &api_addrs) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    for (tag, addr) in &server.bound {
        eprintln!("shardray: inbound {tag:?} listening on {addr}");
    }
    if let Some((spec, listener)) = api {
        match &listener {
            api::ApiListener::Tcp(_, addr) => eprintln!("shardray: api listening on {addr}"),
            api::ApiListener::Unix(_) => eprintln!("shardray: api listening on {:?}", spec.listen),
        }
        let state = api::ApiState::new(server.links(), &server.bound);
        let log = server.log.clone();
        runtime.spawn(async move {
            if let Err(e) = api::serve(spec, listener, state).await {
                log.error(LogLevel::Error, format_args!("api stopped: {e:#}"));
            }
        });
    }
    eprintln!(
        "shardray: started {} with {} shards",
        env!("CARGO_PKG_VERSION"),
        server.shard_count()
    );
    server.log.error(
        LogLevel::Warning,
        format_args!("shardray {} started", env!("CARGO_PKG_VERSION")),
    );

    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    eprintln!(
        "shardray: stopping; live sessions have {}s to finish",
        grace.as_secs()
    );
    server.stop(grace);
    ExitCode::SUCCESS
}

/// `vless://` links for every VLESS user, in the common share-link form.
fn links(config: &Config, host: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    for inbound in &config.inbounds {
        let InboundProtocol::Vless(vless) = &inbound.protocol else {
            continue;
        };
        let host = match host {
            Some(h) => h.to_owned(),
            None if inbound.listen.ip().is_unspecified() => "127.0.0.1".to_owned(),
            None => shardray_wire::addr::Address::Ip(inbound.listen.ip()).to_string(),
        };
        let security = match &inbound.tls {
            Some(tls) if !tls.server_name.is_empty() => {
                format!("tls&sni={}", percent(&tls.server_name))
            }
            Some(_) => "tls".to_owned(),
            None => "none".to_owned(),
        };
        for user in &vless.clients {
            let name = if user.email.is_empty() {
                inbound.tag.as_str()
            } else {
                user.email.as_str()
            };
            out.push(format!(
                "vless://{}@{}:{}?encryption=none&security={}&type=tcp#{}",
                user.id,
                host,
                inbound.listen.port(),
                security,
                percent(name)
            ));
        }
    }
    out
}

/// Percent-encodes everything but unreserved characters.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
