//! `shardray api …`: a command-line client of the management API, with the subcommands of
//! `xray api` (same names, same flags, same requests) plus our own operations.
//!
//! Every subcommand prints one pretty JSON document on stdout. Errors go to stderr as
//! `shardray api: <gRPC code>: <message>`; the exit status is 1 when a call failed (or the
//! server could not be reached) and 2 when the input was unusable (clap's own usage errors
//! exit 2 as well).

mod files;
mod render;

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use prost::Message;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use shardray_proto::shardray::app::events::command as events_pb;
use shardray_proto::shardray::app::events::command::events_service_client::EventsServiceClient;
use shardray_proto::shardray::app::proxyman::command as ours;
use shardray_proto::shardray::app::reload::command as reload_pb;
use shardray_proto::shardray::app::reload::command::reload_service_client::ReloadServiceClient;
use shardray_proto::shardray::app::stats::command as delta_pb;
use shardray_proto::shardray::app::stats::command::delta_stats_service_client::DeltaStatsServiceClient;
use shardray_proto::xray::app::log::command as log_pb;
use shardray_proto::xray::app::log::command::logger_service_client::LoggerServiceClient;
use shardray_proto::xray::app::proxyman::command as handler_pb;
use shardray_proto::xray::app::proxyman::command::handler_service_client::HandlerServiceClient;
use shardray_proto::xray::app::router::command as router_pb;
use shardray_proto::xray::app::router::command::routing_service_client::RoutingServiceClient;
use shardray_proto::xray::app::stats::command as stats_pb;
use shardray_proto::xray::app::stats::command::stats_service_client::StatsServiceClient;
use shardray_proto::xray::common::serial::TypedMessage;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// `shardray api`: call the management API of a running server.
#[derive(clap::Args, Debug)]
#[command(
    about = "Call the management API (gRPC) of a running server: the subcommands of `xray api`, and ours",
    after_help = "Every subcommand takes --server ADDR (-s; HOST:PORT, or a Unix socket path \
                  starting with `/` or `unix:`; without it, $SHARDRAY_API, else the API \
                  address of --config FILE (-c), else Xray's default 127.0.0.1:8080) and --timeout SECONDS \
                  (-t; default 3). Upstream's one-dash spellings (-server=ADDR, -tag=TAG, \
                  -reset, ...) work too. Output is JSON on stdout; errors are \
                  `shardray api: <gRPC code>: <message>` on stderr; exit status 1 when a \
                  call fails, 2 when the input is unusable."
)]
pub struct ApiArgs {
    /// The API call to make.
    #[command(subcommand)]
    pub command: ApiCommand,
}

/// Where the API is and how long to wait; every subcommand takes these.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// The API's address: HOST:PORT, or a Unix socket path (`/path` or `unix:/path`).
    /// Without it: $SHARDRAY_API, else the API address of --config, else 127.0.0.1:8080.
    #[arg(short = 's', long = "server", value_name = "ADDR")]
    pub server: Option<String>,
    /// A config file whose API address to dial when --server is not given.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Seconds to wait for the connection, and for each call.
    #[arg(
        short = 't',
        long = "timeout",
        value_name = "SECONDS",
        default_value_t = 3,
        value_parser = clap::value_parser!(u64).range(1..=86400)
    )]
    pub timeout: u64,
    /// The API token to send (`authorization: Bearer TOKEN`), for an API with `api.tokens`.
    /// Without it (and without --token-file): $SHARDRAY_API_TOKEN, if set.
    #[arg(long = "token", value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding the API token (its first line; kept out of the process list).
    #[arg(long = "token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Mutual TLS (an API with `api.tls`): the CA the server's certificate chains to.
    /// Without it: $SHARDRAY_API_TLS_CA; --tls-cert, --tls-key likewise.
    #[arg(long = "tls-ca", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), signed by the server's `api.tls.clientCaFile`.
    #[arg(long = "tls-cert", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long = "tls-key", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry; by default the host of --server
    /// ($SHARDRAY_API_TLS_SERVER_NAME).
    #[arg(long = "tls-server-name", value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Accepted for compatibility with `xray api`; the output is always JSON.
    #[arg(long = "json", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    pub json: bool,
}

/// Xray's default API address, dialled when nothing else names one.
const DEFAULT_SERVER: &str = "127.0.0.1:8080";

impl Conn {
    /// The address to dial and where it came from: --server, then $SHARDRAY_API, then the
    /// API of --config, then Xray's default.
    fn server(&self) -> Result<(String, &'static str), Failure> {
        if let Some(server) = &self.server {
            return Ok((server.trim().to_owned(), "--server"));
        }
        if let Some(server) = std::env::var("SHARDRAY_API").ok().filter(|s| !s.trim().is_empty()) {
            return Ok((server.trim().to_owned(), "$SHARDRAY_API"));
        }
        if let Some(path) = &self.config {
            let config =
                crate::config::load_file(path).map_err(|e| Failure::Input(format!("{}: {e}", path.display())))?;
            let api = config.api.ok_or_else(|| Failure::Input(format!("{}: the config has no API", path.display())))?;
            let server = match api.listen {
                shardray_core::spec::ApiListen::Tcp(addr) => addr.to_string(),
                shardray_core::spec::ApiListen::Unix(path) => path.display().to_string(),
            };
            return Ok((server, "--config"));
        }
        Ok((DEFAULT_SERVER.to_owned(), "the default, Xray's"))
    }
}

/// The subcommands: upstream's names and flags, then ours.
#[derive(clap::Subcommand, Debug)]
pub enum ApiCommand {
    /// Add users to inbounds (AlterInbound + AddUserOperation).
    ///
    /// Every client of every tagged inbound in each config FILE, one call per user; a failed
    /// user does not stop the others. Only VLESS clients can be sent so far; clients of other
    /// protocols are reported as not supported (exit 2 if nothing else failed).
    #[command(name = "adu")]
    Adu {
        #[command(flatten)]
        conn: Conn,
        /// Xray config files (comments allowed) with `inbounds[].settings.clients[]`;
        /// `stdin:` reads standard input.
        #[arg(value_name = "FILE", required = true)]
        files: Vec<String>,
    },
    /// Remove users from an inbound by email (AlterInbound + RemoveUserOperation, one call each).
    #[command(name = "rmu")]
    Rmu {
        #[command(flatten)]
        conn: Conn,
        /// The inbound's tag.
        #[arg(long)]
        tag: String,
        /// The users' emails.
        #[arg(value_name = "EMAIL", required = true)]
        emails: Vec<String>,
    },
    /// List inbounds (ListInbounds).
    #[command(name = "lsi")]
    Lsi {
        #[command(flatten)]
        conn: Conn,
        /// Return only the tags.
        #[arg(long = "isOnlyTags", num_args = 0..=1, default_missing_value = "true",
              action = clap::ArgAction::Set, default_value_t = false)]
        is_only_tags: bool,
    },
    /// List outbounds (ListOutbounds).
    #[command(name = "lso")]
    Lso {
        #[command(flatten)]
        conn: Conn,
    },
    /// An inbound's users, or one of them (GetInboundUsers).
    #[command(name = "inbounduser")]
    InboundUser {
        #[command(flatten)]
        conn: Conn,
        /// The inbound's tag.
        #[arg(long)]
        tag: String,
        /// Only this user; without it, every user of the inbound.
        #[arg(long, default_value = "")]
        email: String,
    },
    /// How many users an inbound has (GetInboundUsersCount).
    #[command(name = "inboundusercount")]
    InboundUserCount {
        #[command(flatten)]
        conn: Conn,
        /// The inbound's tag.
        #[arg(long)]
        tag: String,
    },
    /// One counter (GetStats), e.g. --name 'user>>>EMAIL>>>traffic>>>uplink'.
    #[command(name = "stats")]
    Stats {
        #[command(flatten)]
        conn: Conn,
        /// The counter's full name.
        #[arg(long)]
        name: String,
        /// Zero the counter after reading it.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
              action = clap::ArgAction::Set, default_value_t = false)]
        reset: bool,
    },
    /// Every counter whose name contains PATTERN (QueryStats).
    #[command(name = "statsquery")]
    StatsQuery {
        #[command(flatten)]
        conn: Conn,
        /// Substring of the names to return; empty returns every counter.
        #[arg(long, default_value = "")]
        pattern: String,
        /// Zero the counters after reading them.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
              action = clap::ArgAction::Set, default_value_t = false)]
        reset: bool,
    },
    /// Process figures: uptime, memory (GetSysStats).
    #[command(name = "statssys")]
    StatsSys {
        #[command(flatten)]
        conn: Conn,
    },
    /// How many distinct addresses a user is online from (GetStatsOnline of `user>>>EMAIL>>>online`).
    #[command(name = "statsonline")]
    StatsOnline {
        #[command(flatten)]
        conn: Conn,
        /// The user's email.
        #[arg(long)]
        email: String,
    },
    /// A user's online source addresses and when each was last seen (GetStatsOnlineIpList),
    /// or with --all every online user's, and their traffic if asked (GetUsersStats).
    #[command(name = "statsonlineiplist")]
    StatsOnlineIpList {
        #[command(flatten)]
        conn: Conn,
        /// The user's email.
        #[arg(long)]
        email: Option<String>,
        /// Every online user instead of one.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
              action = clap::ArgAction::Set, default_value_t = false)]
        all: bool,
        /// With --all: each user's traffic counters too.
        #[arg(long = "include-traffic", num_args = 0..=1, require_equals = true, default_missing_value = "true",
              action = clap::ArgAction::Set, default_value_t = false)]
        include_traffic: bool,
        /// With --all and --include-traffic: zero those counters after reading them.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
              action = clap::ArgAction::Set, default_value_t = false)]
        reset: bool,
    },
    /// The emails of every user with a live session (GetAllOnlineUsers).
    #[command(name = "statsgetallonlineusers")]
    StatsGetAllOnlineUsers {
        #[command(flatten)]
        conn: Conn,
    },
    /// Reopen the log files (LoggerService.RestartLogger).
    #[command(name = "restartlogger")]
    RestartLogger {
        #[command(flatten)]
        conn: Conn,
    },
    /// Add inbounds (AddInbound) from config files' `inbounds[]`.
    ///
    /// Each inbound is checked as `shardray run` checks a config inbound (certificate files
    /// are read here and sent inline) before anything is sent; then they are added in order,
    /// stopping at the first the server refuses.
    #[command(name = "adi")]
    Adi {
        #[command(flatten)]
        conn: Conn,
        /// Xray config files with `inbounds[]`; `stdin:` reads standard input.
        #[arg(value_name = "FILE")]
        files: Vec<String>,
    },
    /// Remove inbounds (RemoveInbound), by tag or by the tags of the inbounds in config files.
    #[command(name = "rmi")]
    Rmi {
        #[command(flatten)]
        conn: Conn,
        /// Tags, or config files whose inbounds' tags to remove.
        #[arg(value_name = "TAG|FILE", required = true)]
        targets: Vec<String>,
    },
    /// Add outbounds (AddOutbound), one call each, from config files' `outbounds`.
    ///
    /// Each outbound is validated as the server validates its config (freedom and blackhole;
    /// an unsupported protocol or setting is refused by name, exit 2) and sent in the API's
    /// protobuf form. Stops at the first refused call (exit 1).
    #[command(name = "ado")]
    Ado {
        #[command(flatten)]
        conn: Conn,
        /// Xray config files with `outbounds[]`; `stdin:` reads standard input.
        #[arg(value_name = "FILE")]
        files: Vec<String>,
    },
    /// Remove outbounds (RemoveOutbound), by tag or by the tags of the outbounds in config files.
    #[command(name = "rmo")]
    Rmo {
        #[command(flatten)]
        conn: Conn,
        /// Tags, or config files whose outbounds' tags to remove.
        #[arg(value_name = "TAG|FILE", required = true)]
        targets: Vec<String>,
    },
    /// Add routing rules (RoutingService.AddRule) from config files' `routing` sections.
    ///
    /// Rules and balancers are validated as the server validates its config (same fields, same
    /// errors naming the JSON path; exit 2), except that rules may name outbounds the file does
    /// not have: the server's. Without --append, they replace the server's rules and balancers.
    #[command(name = "adrules")]
    AdRules {
        #[command(flatten)]
        conn: Conn,
        /// Append to the existing rules instead of replacing them.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
              action = clap::ArgAction::Set, default_value_t = false)]
        append: bool,
        /// Xray config files with a `routing` section; none (or `stdin:`) reads standard input.
        #[arg(value_name = "FILE")]
        files: Vec<String>,
    },
    /// Remove routing rules by their ruleTag (RoutingService.RemoveRule).
    #[command(name = "rmrules")]
    RmRules {
        #[command(flatten)]
        conn: Conn,
        /// The rules' ruleTag values.
        #[arg(value_name = "RULETAG", required = true)]
        rule_tags: Vec<String>,
    },
    /// Block connections by source IP (RoutingService AddRule, and RemoveRule with --reset).
    ///
    /// Appends a routing rule tagged RULETAG that sends traffic from the given addresses
    /// (arriving on --inbound, if given) to --outbound; with --reset, first removes the rules
    /// tagged RULETAG, so the new addresses replace the old ones.
    #[command(name = "sib")]
    Sib {
        #[command(flatten)]
        conn: Conn,
        /// The outbound the matched connections go to (e.g. a blackhole).
        #[arg(long)]
        outbound: String,
        /// Only connections arriving on this inbound.
        #[arg(long, default_value = "")]
        inbound: String,
        /// The new rule's ruleTag.
        #[arg(long, default_value = "sourceIpBlock")]
        ruletag: String,
        /// Remove the rules tagged RULETAG first, so these addresses replace the old ones.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
              action = clap::ArgAction::Set, default_value_t = false)]
        reset: bool,
        /// Source addresses or CIDRs (`geoip:CODE` too).
        #[arg(value_name = "IP", required = true)]
        ips: Vec<String>,
    },
    /// Ours: move a user to another policy level in place; live sessions continue under it.
    #[command(name = "setlevel")]
    SetLevel {
        #[command(flatten)]
        conn: Conn,
        /// The inbound's tag.
        #[arg(long)]
        tag: String,
        /// The user's email.
        #[arg(long)]
        email: String,
        /// The new level.
        #[arg(long)]
        level: u32,
    },
    /// Ours: close a user's live sessions; the user stays.
    #[command(name = "kick")]
    Kick {
        #[command(flatten)]
        conn: Conn,
        /// The inbound's tag.
        #[arg(long)]
        tag: String,
        /// The user's email.
        #[arg(long)]
        email: String,
    },
    /// Ours: replace the inbound's whole user set with the users in FILE.
    ///
    /// Users left out are removed and their live sessions closed.
    #[command(name = "replaceusers")]
    ReplaceUsers {
        #[command(flatten)]
        conn: Conn,
        /// The inbound's tag.
        #[arg(long)]
        tag: String,
        /// JSON with the users: an array of clients, `{"clients": [...]}`, an inbound, or a
        /// config whose inbound tagged TAG has them. `stdin:` reads standard input.
        #[arg(value_name = "FILE")]
        file: String,
    },
    /// Ours: add the users in FILE in one call: all of them or none.
    #[command(name = "addusers")]
    AddUsers {
        #[command(flatten)]
        conn: Conn,
        /// The inbound's tag.
        #[arg(long)]
        tag: String,
        /// JSON with the users, as for replaceusers.
        #[arg(value_name = "FILE")]
        file: String,
    },
    /// Ours: remove users by email in one call: all of them or none.
    #[command(name = "rmusers")]
    RmUsers {
        #[command(flatten)]
        conn: Conn,
        /// The inbound's tag.
        #[arg(long)]
        tag: String,
        /// The users' emails.
        #[arg(value_name = "EMAIL", required = true)]
        emails: Vec<String>,
    },
    /// Ours: the counters' growth since this reader's acknowledged cursor (GetDeltas of
    /// DeltaStatsService). Store the deltas, then acknowledge the cursor with --ack on the
    /// next call; until then every call returns the same cursor and deltas.
    #[command(name = "delta")]
    Delta {
        #[command(flatten)]
        conn: Conn,
        /// The reader's name (1 to 64 of A-Z a-z 0-9 . _ -); each reader has its own cursor.
        #[arg(long)]
        reader: String,
        /// The cursor of the deltas stored since the last call.
        #[arg(long, value_name = "CURSOR", default_value_t = 0)]
        ack: u64,
        /// Drop the reader and its cursor instead.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
              action = clap::ArgAction::Set, default_value_t = false)]
        remove: bool,
    },
    /// Ours: reread the server's config files and apply what changed (ReloadService.Reload,
    /// as SIGHUP does); fails with the reason, and changes nothing, if they do not load.
    #[command(name = "reload")]
    Reload {
        #[command(flatten)]
        conn: Conn,
    },
    /// Ours: set a user's quota and expiry (AlterInbound with SetUserQuotaOperation); what is
    /// not given stays as it is, and 0 clears it. A raised quota or a later expiry resumes a
    /// suspended user at once.
    #[command(name = "setquota")]
    SetQuota {
        #[command(flatten)]
        conn: Conn,
        /// The inbound's tag.
        #[arg(long)]
        tag: String,
        /// The user's email.
        #[arg(long)]
        email: String,
        /// Bytes, uplink plus downlink: `50GiB`, `2.5GB`, `10MiB`, `1048576`; 0 clears it.
        #[arg(long)]
        quota: Option<String>,
        /// An RFC 3339 time (`2027-01-01T00:00:00Z`) or unix seconds; 0 clears it.
        #[arg(long)]
        expiry: Option<String>,
    },
    /// Ours: print user events (suspended, resumed, rate_limited, connection_limit, ip_limit)
    /// as they happen, one JSON object a line (EventsService.Subscribe).
    #[command(name = "events")]
    Events {
        #[command(flatten)]
        conn: Conn,
        /// Stop after this many events (0: run until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

impl ApiCommand {
    fn conn(&self) -> &Conn {
        match self {
            ApiCommand::Adu { conn, .. }
            | ApiCommand::Rmu { conn, .. }
            | ApiCommand::Lsi { conn, .. }
            | ApiCommand::Lso { conn }
            | ApiCommand::InboundUser { conn, .. }
            | ApiCommand::InboundUserCount { conn, .. }
            | ApiCommand::Stats { conn, .. }
            | ApiCommand::StatsQuery { conn, .. }
            | ApiCommand::StatsSys { conn }
            | ApiCommand::StatsOnline { conn, .. }
            | ApiCommand::StatsOnlineIpList { conn, .. }
            | ApiCommand::StatsGetAllOnlineUsers { conn }
            | ApiCommand::RestartLogger { conn }
            | ApiCommand::Adi { conn, .. }
            | ApiCommand::Rmi { conn, .. }
            | ApiCommand::Ado { conn, .. }
            | ApiCommand::Rmo { conn, .. }
            | ApiCommand::AdRules { conn, .. }
            | ApiCommand::RmRules { conn, .. }
            | ApiCommand::Sib { conn, .. }
            | ApiCommand::SetLevel { conn, .. }
            | ApiCommand::Kick { conn, .. }
            | ApiCommand::ReplaceUsers { conn, .. }
            | ApiCommand::AddUsers { conn, .. }
            | ApiCommand::RmUsers { conn, .. }
            | ApiCommand::Delta { conn, .. }
            | ApiCommand::SetQuota { conn, .. }
            | ApiCommand::Events { conn, .. }
            | ApiCommand::Reload { conn } => conn,
        }
    }
}

/// Long flags `xray api` spells with one dash; each becomes its `--` form.
const UPSTREAM_LONG_FLAGS: &[&str] = &[
    "server",
    "timeout",
    "json",
    "tag",
    "email",
    "name",
    "pattern",
    "reset",
    "isOnlyTags",
    "append",
    "inbound",
    "outbound",
    "ruletag",
    "level",
    "all",
    "include-traffic",
];

/// Rewrites `shardray api …` arguments spelled as `xray api` spells them (`-server=ADDR`,
/// `-tag TAG`, `-reset`, `-s=ADDR`, `-t=5`, …) into the `--` forms clap parses. Arguments of
/// other subcommands, and everything after a `--`, are left alone.
pub fn upstream_api_flags(args: Vec<OsString>) -> Vec<OsString> {
    if args.get(1).and_then(|a| a.to_str()) != Some("api") {
        return args;
    }
    let mut out = Vec::with_capacity(args.len());
    let mut rest = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i < 2 || rest {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            rest = true;
            out.push(arg);
            continue;
        }
        let Some(flag) = s.strip_prefix('-').filter(|f| !f.starts_with('-')) else {
            out.push(arg);
            continue;
        };
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (flag, None),
        };
        let long = match name {
            "s" if value.is_some() => "server",
            "t" if value.is_some() => "timeout",
            n if UPSTREAM_LONG_FLAGS.contains(&n) => n,
            _ => {
                out.push(arg);
                continue;
            }
        };
        out.push(match value {
            Some(v) => format!("--{long}={v}").into(),
            None => format!("--{long}").into(),
        });
    }
    out
}

/// Why a command failed.
#[derive(Debug)]
enum Failure {
    /// The input (arguments or files) is unusable: exit 2.
    Input(String),
    /// The server could not be reached: exit 1.
    Connect(String),
    /// A call failed: exit 1.
    Rpc(Status),
}

impl Failure {
    fn report(&self) -> ExitCode {
        match self {
            Failure::Input(message) => {
                eprintln!("shardray api: {message}");
                ExitCode::from(2)
            }
            Failure::Connect(message) => {
                eprintln!("shardray api: {:?}: {message}", Code::Unavailable);
                ExitCode::from(1)
            }
            Failure::Rpc(status) => {
                // A TLS server that turned the connection down shows up as a broken transport.
                let transport = matches!(status.code(), Code::Unknown | Code::Unavailable | Code::Cancelled)
                    && ["transport error", "h2 protocol error", "connection"]
                        .iter()
                        .any(|w| status.message().contains(w));
                let hint = if transport {
                    "; an API with api.tls takes only clients with a certificate its clientCaFile signed: \
                     give --tls-ca, --tls-cert and --tls-key"
                } else {
                    ""
                };
                eprintln!("shardray api: {}{hint}", status_text(status));
                ExitCode::from(1)
            }
        }
    }
}

/// `<gRPC code>: <message>`, the code as gRPC names it in CamelCase (`AlreadyExists`).
fn status_text(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Runs one `shardray api` subcommand and returns the process's exit status.
pub fn run(args: ApiArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shardray api: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(args.command)) {
        // A stream printed as it went.
        Ok((Value::Null, status)) => ExitCode::from(status),
        Ok((doc, status)) => {
            match serde_json::to_string_pretty(&doc) {
                Ok(text) => println!("{text}"),
                Err(e) => {
                    eprintln!("shardray api: cannot print the answer: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::from(status)
        }
        Err(failure) => failure.report(),
    }
}

/// How to dial another address, said whenever a connection fails.
const CHOOSE_SERVER: &str =
    "give the API's address with -s ADDR, set SHARDRAY_API=ADDR, or name the server's config with -c FILE";

/// Replies may be large: QueryStats over many users runs to tens of MiB.
const MAX_MESSAGE: usize = 1 << 30;

/// A connection to the API, with the per-call timeout.
struct Api {
    channel: Channel,
    timeout: Duration,
    /// `Bearer TOKEN`, sent with every call when a token is given.
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
}

impl Conn {
    /// The `authorization` value for --token, --token-file or $SHARDRAY_API_TOKEN.
    fn authorization(&self) -> Result<Option<tonic::metadata::AsciiMetadataValue>, Failure> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| Failure::Input(format!("--token-file {}: {e}", file.display())))?;
                Some(text.lines().next().unwrap_or("").trim().to_owned())
            }
            (None, None) => std::env::var("SHARDRAY_API_TOKEN").ok().map(|t| t.trim().to_owned()),
        };
        match token.filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(Some)
                .map_err(|_| Failure::Input("the API token has characters a header cannot carry".into())),
        }
    }
}

impl Conn {
    /// The TLS client config and server name, when --tls-ca (or its variable) is given.
    fn tls(
        &self,
        server: &str,
    ) -> Result<Option<(std::sync::Arc<rustls::ClientConfig>, ServerName<'static>)>, Failure> {
        let pick = |flag: &Option<PathBuf>, var: &str| {
            flag.clone().or_else(|| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from))
        };
        let ca = pick(&self.tls_ca, "SHARDRAY_API_TLS_CA");
        let cert = pick(&self.tls_cert, "SHARDRAY_API_TLS_CERT");
        let key = pick(&self.tls_key, "SHARDRAY_API_TLS_KEY");
        let (ca, cert, key) = match (ca, cert, key) {
            (None, None, None) => return Ok(None),
            (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
            _ => return Err(Failure::Input("mutual TLS needs all of --tls-ca, --tls-cert and --tls-key".into())),
        };
        let config = crate::api::tls::client_config(&ca, &cert, &key).map_err(Failure::Input)?;
        let name = self
            .tls_server_name
            .clone()
            .or_else(|| std::env::var("SHARDRAY_API_TLS_SERVER_NAME").ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| {
                let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
                host.trim_start_matches('[').trim_end_matches(']').to_owned()
            });
        let name = ServerName::try_from(name.clone())
            .map_err(|_| Failure::Input(format!("--tls-server-name {name:?} is neither a DNS name nor an IP")))?;
        Ok(Some((config, name)))
    }
}

impl Api {
    /// Connects at once (as `xray api` does), so an unreachable server is reported as such.
    async fn connect(conn: &Conn) -> Result<Api, Failure> {
        let timeout = Duration::from_secs(conn.timeout);
        let (server, source) = conn.server()?;
        let server = server.as_str();
        let unix_path = server
            .strip_prefix("unix://")
            .or_else(|| server.strip_prefix("unix:"))
            .or_else(|| server.starts_with('/').then_some(server));
        let uri = match unix_path {
            // The authority is unused: the connector below dials the socket.
            Some(_) => "http://localhost".to_owned(),
            None if server.contains("://") => server.to_owned(),
            None => format!("http://{server}"),
        };
        let endpoint = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| Failure::Input(format!("--server {server:?}: {e}")))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let tls = match unix_path {
            Some(_) => None,
            None => conn.tls(server.split_once("://").map_or(server, |(_, rest)| rest))?,
        };
        let connecting = async {
            if let Some((config, name)) = tls {
                let addr = server.split_once("://").map_or(server, |(_, rest)| rest).to_owned();
                let connector = tower::service_fn(move |_: http::Uri| {
                    crate::api::tls::dial_owned(addr.clone(), name.clone(), config.clone())
                });
                return endpoint.connect_with_connector(connector).await;
            }
            match unix_path {
                Some(path) => {
                    let path = PathBuf::from(path);
                    let connector = tower::service_fn(move |_: http::Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    });
                    endpoint.connect_with_connector(connector).await
                }
                None => endpoint.connect().await,
            }
        };
        let channel = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => {
                return Err(Failure::Connect(format!(
                    "cannot connect to {server} (from {source}): {}; {CHOOSE_SERVER}",
                    error_chain(&e)
                )))
            }
            Err(_) => {
                return Err(Failure::Connect(format!(
                    "cannot connect to {server} (from {source}): no answer within {}s; {CHOOSE_SERVER}",
                    conn.timeout
                )))
            }
        };
        Ok(Api { channel, timeout, authorization: conn.authorization()? })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        request
    }

    /// Awaits a call, bounded by the timeout (a little later than the server's own deadline).
    async fn call<T>(&self, call: impl Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T, Status> {
        match tokio::time::timeout(self.timeout + Duration::from_millis(500), call).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!("no answer within {}s", self.timeout.as_secs()))),
        }
    }

    fn handler(&self) -> HandlerServiceClient<Channel> {
        HandlerServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn stats(&self) -> StatsServiceClient<Channel> {
        StatsServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn routing(&self) -> RoutingServiceClient<Channel> {
        RoutingServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn logger(&self) -> LoggerServiceClient<Channel> {
        LoggerServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// AlterInbound on `tag` with one operation.
    async fn alter(&self, tag: &str, operation: TypedMessage) -> Result<(), Status> {
        let request = self.request(handler_pb::AlterInboundRequest { tag: tag.to_owned(), operation: Some(operation) });
        self.call(self.handler().alter_inbound(request)).await.map(|_| ())
    }

    /// Each user's quota, use and expiry in inbound `tag` (EventsService.GetUserQuotas).
    async fn quotas(&self, tag: &str) -> Result<Vec<events_pb::UserQuota>, Status> {
        let request = self.request(events_pb::GetUserQuotasRequest { tag: tag.to_owned() });
        let mut client = EventsServiceClient::new(self.channel.clone());
        self.call(client.get_user_quotas(request)).await.map(|r| r.users)
    }

    /// AlterInbound with one of our own operations, by its message name.
    async fn alter_ours(&self, tag: &str, name: &str, op: &impl prost::Message) -> Result<(), Failure> {
        self.alter(tag, typed(&format!("{OURS}.{name}"), op)).await.map_err(Failure::Rpc)
    }
}

/// An error and its sources, joined: tonic's transport errors say little on their own.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

fn typed(type_name: &str, message: &impl Message) -> TypedMessage {
    TypedMessage { r#type: type_name.to_owned(), value: message.encode_to_vec() }
}

/// Our own AlterInbound operation types live in this package.
const OURS: &str = "shardray.app.proxyman.command";

/// Makes one call per `(tag, item)` in order, stopping at the first the server refuses;
/// returns the tags of the calls that succeeded.
async fn in_order<T, F, Fut>(items: impl IntoIterator<Item = (String, T)>, mut call: F) -> Result<Vec<String>, Failure>
where
    F: FnMut(T) -> Fut,
    Fut: Future<Output = Result<(), Status>>,
{
    let mut done = Vec::new();
    for (tag, item) in items {
        call(item).await.map_err(Failure::Rpc)?;
        done.push(tag);
    }
    Ok(done)
}

/// The JSON document and exit status of a command that reached its end.
type Outcome = Result<(Value, u8), Failure>;

async fn execute(command: ApiCommand) -> Outcome {
    // Input is read before connecting, so a bad file fails fast and without a server.
    let conn = command.conn().clone();
    match command {
        ApiCommand::Adu { files, .. } => {
            let inbounds = files::inbounds_with_users(&files)?;
            let api = Api::connect(&conn).await?;
            add_users_one_by_one(&api, inbounds).await
        }
        ApiCommand::Rmu { tag, emails, .. } => {
            let api = Api::connect(&conn).await?;
            let mut results = Vec::new();
            let mut removed = 0;
            for email in &emails {
                let op = handler_pb::RemoveUserOperation { email: email.clone() };
                let op = typed("xray.app.proxyman.command.RemoveUserOperation", &op);
                match api.alter(&tag, op).await {
                    Ok(()) => {
                        removed += 1;
                        results.push(json!({ "email": email, "result": "ok" }));
                    }
                    Err(status) => {
                        eprintln!("shardray api: {}", status_text(&status));
                        results.push(json!({ "email": email, "error": render::status(&status) }));
                    }
                }
            }
            let failed = emails.len() - removed;
            let doc = json!({ "removed": removed, "failed": failed, "results": results });
            Ok((doc, u8::from(failed > 0)))
        }
        ApiCommand::Lsi { is_only_tags, .. } => {
            let api = Api::connect(&conn).await?;
            let request = api.request(handler_pb::ListInboundsRequest { is_only_tags });
            let reply = api.call(api.handler().list_inbounds(request)).await;
            let reply = reply.map_err(Failure::Rpc)?;
            let inbounds: Vec<Value> = reply.inbounds.iter().map(render::inbound).collect();
            Ok((json!({ "inbounds": inbounds }), 0))
        }
        ApiCommand::Lso { .. } => {
            let api = Api::connect(&conn).await?;
            let request = api.request(handler_pb::ListOutboundsRequest {});
            let reply = api.call(api.handler().list_outbounds(request)).await;
            let reply = reply.map_err(Failure::Rpc)?;
            let outbounds: Vec<Value> = reply.outbounds.iter().map(render::outbound).collect();
            Ok((json!({ "outbounds": outbounds }), 0))
        }
        ApiCommand::InboundUser { tag, email, .. } => {
            let api = Api::connect(&conn).await?;
            let request = api.request(handler_pb::GetInboundUserRequest { tag: tag.clone(), email });
            let reply = api.call(api.handler().get_inbound_users(request)).await;
            let reply = reply.map_err(Failure::Rpc)?;
            let mut users: Vec<Value> = reply.users.iter().map(render::user).collect();
            // Ours beside upstream's answer: each user's quota, use and expiry. A server without
            // EventsService (Xray, V2Ray) shows none.
            if let Ok(quotas) = api.quotas(&tag).await {
                for (user, u) in users.iter_mut().zip(&reply.users) {
                    if let Some(q) = quotas.iter().find(|q| q.email == u.email) {
                        user["quota"] = json!(q.quota_bytes);
                        user["used"] = json!(q.used_bytes);
                        if q.expiry_unix != 0 {
                            user["expiry"] = json!(crate::quota::rfc3339(q.expiry_unix));
                        }
                        if !q.suspended.is_empty() {
                            user["suspended"] = json!(q.suspended);
                        }
                    }
                }
            }
            Ok((json!({ "users": users }), 0))
        }
        ApiCommand::InboundUserCount { tag, .. } => {
            let api = Api::connect(&conn).await?;
            let request = api.request(handler_pb::GetInboundUserRequest { tag, email: String::new() });
            let reply = api.call(api.handler().get_inbound_users_count(request)).await;
            let reply = reply.map_err(Failure::Rpc)?;
            Ok((json!({ "count": reply.count }), 0))
        }
        ApiCommand::Stats { name, reset, .. } => {
            let api = Api::connect(&conn).await?;
            let request = api.request(stats_pb::GetStatsRequest { name, reset });
            let reply = api.call(api.stats().get_stats(request)).await;
            Ok((render::stat_reply(&reply.map_err(Failure::Rpc)?), 0))
        }
        ApiCommand::StatsQuery { pattern, reset, .. } => {
            let api = Api::connect(&conn).await?;
            let request = api.request(stats_pb::QueryStatsRequest { pattern, reset, ..Default::default() });
            let reply = api.call(api.stats().query_stats(request)).await;
            let reply = reply.map_err(Failure::Rpc)?;
            let stat: Vec<Value> = reply.stat.iter().map(render::stat).collect();
            Ok((json!({ "stat": stat }), 0))
        }
        ApiCommand::StatsSys { .. } => {
            let api = Api::connect(&conn).await?;
            let request = api.request(stats_pb::SysStatsRequest {});
            let reply = api.call(api.stats().get_sys_stats(request)).await;
            Ok((render::sys_stats(&reply.map_err(Failure::Rpc)?), 0))
        }
        ApiCommand::StatsOnline { email, .. } => {
            let api = Api::connect(&conn).await?;
            let request =
                api.request(stats_pb::GetStatsRequest { name: format!("user>>>{email}>>>online"), reset: false });
            let reply = api.call(api.stats().get_stats_online(request)).await;
            Ok((render::stat_reply(&reply.map_err(Failure::Rpc)?), 0))
        }
        ApiCommand::StatsOnlineIpList { email, all, include_traffic, reset, .. } => {
            // Checked before connecting, with upstream's words.
            let email = match (email.filter(|e| !e.is_empty()), all) {
                (Some(_), true) => return Err(Failure::Input("-all and -email are mutually exclusive".into())),
                (None, false) => return Err(Failure::Input("either -all or -email must be specified".into())),
                (None, true) => {
                    let api = Api::connect(&conn).await?;
                    let request = api.request(stats_pb::GetUsersStatsRequest { include_traffic, reset });
                    let reply = api.call(api.stats().get_users_stats(request)).await;
                    return Ok((render::users_stats(&reply.map_err(Failure::Rpc)?), 0));
                }
                (Some(email), false) => email,
            };
            let api = Api::connect(&conn).await?;
            let request =
                api.request(stats_pb::GetStatsRequest { name: format!("user>>>{email}>>>online"), reset: false });
            let reply = api.call(api.stats().get_stats_online_ip_list(request)).await;
            let reply = reply.map_err(Failure::Rpc)?;
            let ips: serde_json::Map<String, Value> =
                reply.ips.iter().map(|(ip, seen)| (ip.clone(), json!(seen))).collect();
            Ok((json!({ "name": reply.name, "ips": ips }), 0))
        }
        ApiCommand::StatsGetAllOnlineUsers { .. } => {
            let api = Api::connect(&conn).await?;
            let request = api.request(stats_pb::GetAllOnlineUsersRequest {});
            let reply = api.call(api.stats().get_all_online_users(request)).await;
            let reply = reply.map_err(Failure::Rpc)?;
            Ok((json!({ "users": reply.users }), 0))
        }
        ApiCommand::RestartLogger { .. } => {
            let api = Api::connect(&conn).await?;
            let request = api.request(log_pb::RestartLoggerRequest {});
            api.call(api.logger().restart_logger(request)).await.map_err(Failure::Rpc)?;
            Ok((json!({}), 0))
        }
        ApiCommand::Adi { files, .. } => {
            let inbounds = files::inbound_configs(&files)?;
            let api = &Api::connect(&conn).await?;
            let added = in_order(inbounds.into_iter().map(|i| (i.tag.clone(), i)), |inbound| async move {
                let request = api.request(handler_pb::AddInboundRequest { inbound: Some(inbound) });
                api.call(api.handler().add_inbound(request)).await.map(drop)
            })
            .await?;
            Ok((json!({ "added": added }), 0))
        }
        ApiCommand::Ado { files, .. } => {
            let files = if files.is_empty() { vec![files::STDIN.to_owned()] } else { files };
            let mut outbounds = Vec::new();
            for file in &files {
                let doc = files::read_json(file)?;
                let specs = crate::config::outbounds_of(&doc).map_err(|e| Failure::Input(format!("{file}: {e}")))?;
                outbounds.extend(specs.iter().map(crate::convert::routes::outbound_config));
            }
            let api = &Api::connect(&conn).await?;
            let added = in_order(outbounds.into_iter().map(|o| (o.tag.clone(), o)), |outbound| async move {
                let request = api.request(handler_pb::AddOutboundRequest { outbound: Some(outbound) });
                api.call(api.handler().add_outbound(request)).await.map(drop)
            })
            .await?;
            Ok((json!({ "added": added }), 0))
        }
        ApiCommand::Rmi { targets, .. } => {
            let tags = files::tags_or_files(&targets, "inbounds")?;
            let api = &Api::connect(&conn).await?;
            let removed = in_order(tags.into_iter().map(|t| (t.clone(), t)), |tag| async move {
                let request = api.request(handler_pb::RemoveInboundRequest { tag });
                api.call(api.handler().remove_inbound(request)).await.map(drop)
            })
            .await?;
            Ok((json!({ "removed": removed }), 0))
        }
        ApiCommand::Rmo { targets, .. } => {
            let tags = files::tags_or_files(&targets, "outbounds")?;
            let api = &Api::connect(&conn).await?;
            let removed = in_order(tags.into_iter().map(|t| (t.clone(), t)), |tag| async move {
                let request = api.request(handler_pb::RemoveOutboundRequest { tag });
                api.call(api.handler().remove_outbound(request)).await.map(drop)
            })
            .await?;
            Ok((json!({ "removed": removed }), 0))
        }
        ApiCommand::AdRules { append, files, .. } => {
            let files = if files.is_empty() { vec![files::STDIN.to_owned()] } else { files };
            let mut configs = Vec::new();
            for file in &files {
                let doc = files::read_json(file)?;
                let routing = crate::config::routing_of(&doc).map_err(|e| Failure::Input(format!("{file}: {e}")))?;
                if routing.rules.is_empty() && routing.balancers.is_empty() {
                    return Err(Failure::Input(format!("{file}: routing: no rules or balancers")));
                }
                configs.push(crate::convert::routes::router_config(&routing.rules, &routing.balancers));
            }
            let api = Api::connect(&conn).await?;
            let mut added = 0;
            for config in configs {
                added += config.rule.len();
                let request = api.request(router_pb::AddRuleRequest {
                    config: Some(typed("xray.app.router.Config", &config)),
                    should_append: append,
                });
                api.call(api.routing().add_rule(request)).await.map_err(Failure::Rpc)?;
            }
            Ok((json!({ "added": added }), 0))
        }
        ApiCommand::RmRules { rule_tags, .. } => {
            let api = Api::connect(&conn).await?;
            for rule_tag in &rule_tags {
                let request = api.request(router_pb::RemoveRuleRequest { rule_tag: rule_tag.clone() });
                api.call(api.routing().remove_rule(request)).await.map_err(Failure::Rpc)?;
            }
            Ok((json!({ "removed": rule_tags }), 0))
        }
        ApiCommand::Sib { outbound, inbound, ruletag, reset, ips, .. } => {
            let inbound_tags: Vec<String> = if inbound.is_empty() { Vec::new() } else { vec![inbound] };
            let rule = json!({
                "ruleTag": ruletag,
                "inboundTag": inbound_tags,
                "outboundTag": outbound,
                "source": ips,
            });
            let routing = crate::config::routing_of(&json!({ "routing": { "rules": [rule] } }))
                .map_err(|e| Failure::Input(format!("sib: {e}")))?;
            let config = crate::convert::routes::router_config(&routing.rules, &routing.balancers);
            let api = Api::connect(&conn).await?;
            if reset {
                let request = api.request(router_pb::RemoveRuleRequest { rule_tag: ruletag.clone() });
                api.call(api.routing().remove_rule(request)).await.map_err(Failure::Rpc)?;
            }
            let request = api.request(router_pb::AddRuleRequest {
                config: Some(typed("xray.app.router.Config", &config)),
                should_append: true,
            });
            api.call(api.routing().add_rule(request)).await.map_err(Failure::Rpc)?;
            Ok((json!({ "ruleTag": ruletag, "source": ips }), 0))
        }
        ApiCommand::SetLevel { tag, email, level, .. } => {
            let api = Api::connect(&conn).await?;
            let op = ours::SetUserLevelOperation { email: email.clone(), level };
            api.alter_ours(&tag, "SetUserLevelOperation", &op).await?;
            Ok((json!({ "tag": tag, "email": email, "level": level }), 0))
        }
        ApiCommand::Kick { tag, email, .. } => {
            let api = Api::connect(&conn).await?;
            let op = ours::KickUserOperation { email: email.clone() };
            api.alter_ours(&tag, "KickUserOperation", &op).await?;
            Ok((json!({ "tag": tag, "kicked": email }), 0))
        }
        ApiCommand::ReplaceUsers { tag, file, .. } => {
            let users = files::users_for_tag(&file, &tag)?;
            let api = Api::connect(&conn).await?;
            let emails: Vec<String> = users.iter().map(|u| u.email.clone()).collect();
            let op = ours::ReplaceUsersOperation { users };
            api.alter_ours(&tag, "ReplaceUsersOperation", &op).await?;
            Ok((json!({ "tag": tag, "users": emails }), 0))
        }
        ApiCommand::AddUsers { tag, file, .. } => {
            let users = files::users_for_tag(&file, &tag)?;
            let api = Api::connect(&conn).await?;
            let emails: Vec<String> = users.iter().map(|u| u.email.clone()).collect();
            let op = ours::AddUsersOperation { users };
            api.alter_ours(&tag, "AddUsersOperation", &op).await?;
            Ok((json!({ "tag": tag, "added": emails }), 0))
        }
        ApiCommand::RmUsers { tag, emails, .. } => {
            let api = Api::connect(&conn).await?;
            let op = ours::RemoveUsersOperation { emails: emails.clone() };
            api.alter_ours(&tag, "RemoveUsersOperation", &op).await?;
            Ok((json!({ "tag": tag, "removed": emails }), 0))
        }
        ApiCommand::Delta { reader, ack, remove, .. } => {
            let api = Api::connect(&conn).await?;
            let mut client = DeltaStatsServiceClient::new(api.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
            if remove {
                let request = api.request(delta_pb::RemoveReaderRequest { reader: reader.clone() });
                api.call(client.remove_reader(request)).await.map_err(Failure::Rpc)?;
                return Ok((json!({ "reader": reader, "removed": true }), 0));
            }
            let request = api.request(delta_pb::GetDeltasRequest { reader: reader.clone(), ack });
            let reply = api.call(client.get_deltas(request)).await.map_err(Failure::Rpc)?;
            let deltas: serde_json::Map<String, Value> =
                reply.deltas.iter().map(|d| (d.name.clone(), json!(d.value))).collect();
            Ok((
                json!({
                    "reader": reader, "cursor": reply.cursor, "acknowledged": reply.acknowledged,
                    "repeated": reply.repeated, "deltas": deltas
                }),
                0,
            ))
        }
        ApiCommand::SetQuota { tag, email, quota, expiry, .. } => {
            let quota = quota
                .map(|q| crate::config::units::parse_bytes_str(&q).map_err(|e| Failure::Input(format!("--quota: {e}"))))
                .transpose()?;
            let expiry = expiry
                .map(|e| crate::quota::parse_expiry_str(&e).map_err(|e| Failure::Input(format!("--expiry: {e}"))))
                .transpose()?;
            let api = Api::connect(&conn).await?;
            // What is not given stays: read it first.
            let (mut bytes, mut until) = (0, 0);
            if quota.is_none() || expiry.is_none() {
                let now = api.quotas(&tag).await.map_err(Failure::Rpc)?;
                if let Some(q) = now.iter().find(|q| q.email.eq_ignore_ascii_case(&email)) {
                    (bytes, until) = (q.quota_bytes, q.expiry_unix);
                }
            }
            let (bytes, until) = (quota.unwrap_or(bytes), expiry.unwrap_or(until));
            let op = ours::SetUserQuotaOperation { email: email.clone(), quota_bytes: bytes, expiry_unix: until };
            api.alter_ours(&tag, "SetUserQuotaOperation", &op).await?;
            let expiry = if until == 0 { Value::Null } else { json!(crate::quota::rfc3339(until)) };
            Ok((json!({ "tag": tag, "email": email, "quota": bytes, "expiry": expiry }), 0))
        }
        ApiCommand::Events { count, .. } => {
            let api = Api::connect(&conn).await?;
            // No deadline: the stream runs until it is interrupted.
            let mut request = tonic::Request::new(events_pb::SubscribeRequest {});
            if let Some(value) = &api.authorization {
                request.metadata_mut().insert("authorization", value.clone());
            }
            let mut client = EventsServiceClient::new(api.channel.clone());
            let mut stream = client.subscribe(request).await.map_err(Failure::Rpc)?.into_inner();
            let mut seen = 0;
            while count == 0 || seen < count {
                let Some(e) = stream.message().await.map_err(Failure::Rpc)? else { break };
                let line =
                    crate::events::event_json(&e.kind, &e.reason, &e.email, &e.inbound, e.time_unix_ms, e.skipped);
                println!("{line}");
                seen += 1;
            }
            Ok((Value::Null, 0))
        }
        ApiCommand::Reload { .. } => {
            let api = Api::connect(&conn).await?;
            let mut client = ReloadServiceClient::new(api.channel.clone());
            let reply =
                api.call(client.reload(api.request(reload_pb::ReloadRequest {}))).await.map_err(Failure::Rpc)?;
            Ok((json!({ "changes": reply.changes, "restart_needed": reply.restart_needed, "notes": reply.notes }), 0))
        }
    }
}

/// `adu`: one AddUserOperation per client, as upstream does; goes on after a failure.
async fn add_users_one_by_one(api: &Api, inbounds: Vec<files::InboundUsers>) -> Outcome {
    let mut results = Vec::new();
    let (mut added, mut refused, mut unusable) = (0usize, 0usize, 0usize);
    for inbound in inbounds {
        for client in inbound.clients {
            let user = match client.user {
                Ok(user) => user,
                Err(why) => {
                    unusable += 1;
                    eprintln!("shardray api: inbound {:?}, user {:?}: {why}", inbound.tag, client.email);
                    results.push(json!({
                        "tag": inbound.tag, "email": client.email, "error": { "message": why }
                    }));
                    continue;
                }
            };
            let op = handler_pb::AddUserOperation { user: Some(user) };
            let op = typed("xray.app.proxyman.command.AddUserOperation", &op);
            match api.alter(&inbound.tag, op).await {
                Ok(()) => {
                    added += 1;
                    results.push(json!({ "tag": inbound.tag, "email": client.email, "result": "ok" }));
                }
                Err(status) => {
                    refused += 1;
                    eprintln!("shardray api: {}", status_text(&status));
                    results.push(json!({
                        "tag": inbound.tag, "email": client.email, "error": render::status(&status)
                    }));
                }
            }
        }
    }
    let doc = json!({ "added": added, "failed": refused + unusable, "results": results });
    let status = if refused > 0 {
        1
    } else if unusable > 0 {
        2
    } else {
        0
    };
    Ok((doc, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn upstream_one_dash_flags_become_long_flags() {
        let mapped = upstream_api_flags(os(&[
            "shardray",
            "api",
            "rmu",
            "-server=127.0.0.1:10085",
            "-tag",
            "vless-in",
            "-t=5",
            "-s=/run/api.sock",
            "-reset",
            "-isOnlyTags=true",
            "a@b",
            "--",
            "-tag",
        ]));
        assert_eq!(
            mapped,
            os(&[
                "shardray",
                "api",
                "rmu",
                "--server=127.0.0.1:10085",
                "--tag",
                "vless-in",
                "--timeout=5",
                "--server=/run/api.sock",
                "--reset",
                "--isOnlyTags=true",
                "a@b",
                "--",
                "-tag",
            ])
        );
        // Short forms with a separate value stay as they are (clap reads them).
        let same = os(&["shardray", "api", "stats", "-s", "x:1", "-t", "2"]);
        assert_eq!(upstream_api_flags(same.clone()), same);
        // Other subcommands are not touched.
        let run = os(&["shardray", "run", "-tag"]);
        assert_eq!(upstream_api_flags(run.clone()), run);
    }

    #[test]
    fn subcommands_parse_with_xray_spellings() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Top {
            #[command(subcommand)]
            cmd: Sub,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            Api(ApiArgs),
        }
        let parse = |args: &[&str]| {
            let mut all = vec!["shardray", "api"];
            all.extend_from_slice(args);
            match Top::try_parse_from(upstream_api_flags(os(&all))) {
                Ok(Top { cmd: Sub::Api(a) }) => Ok(a.command),
                Err(e) => Err(e.to_string()),
            }
        };
        match parse(&["statsquery", "-server=1.2.3.4:5", "-pattern", "user", "-reset"]).unwrap() {
            ApiCommand::StatsQuery { conn, pattern, reset } => {
                assert_eq!(conn.server.as_deref(), Some("1.2.3.4:5"));
                assert_eq!(conn.timeout, 3);
                assert_eq!(pattern, "user");
                assert!(reset);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["lsi", "--isOnlyTags"]).unwrap() {
            ApiCommand::Lsi { is_only_tags, conn, .. } => {
                assert!(is_only_tags);
                assert_eq!(conn.server, None);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["lsi", "-isOnlyTags=false"]).unwrap() {
            ApiCommand::Lsi { is_only_tags, .. } => assert!(!is_only_tags),
            other => panic!("{other:?}"),
        }
        match parse(&["rmu", "-tag=in", "a@b", "c@d", "-s", "/tmp/x.sock"]).unwrap() {
            ApiCommand::Rmu { conn, tag, emails } => {
                assert_eq!((conn.server.as_deref(), tag.as_str()), (Some("/tmp/x.sock"), "in"));
                assert_eq!(emails, ["a@b", "c@d"]);
            }
            other => panic!("{other:?}"),
        }
        // `-reset` does not swallow the next argument.
        match parse(&["sib", "-outbound=blocked", "-reset", "1.2.3.4"]).unwrap() {
            ApiCommand::Sib { reset, ips, ruletag, .. } => {
                assert!(reset);
                assert_eq!(ips, ["1.2.3.4"]);
                assert_eq!(ruletag, "sourceIpBlock");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["rmu", "a@b"]).is_err(), "--tag is required");
        assert!(parse(&["stats", "--name", "x", "--timeout", "0"]).is_err());
        assert!(parse(&["bogus"]).is_err());
    }
}
