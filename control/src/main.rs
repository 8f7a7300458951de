//! `shardray`: run, check and inspect a shardray server.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shardray_control::config;
use shardray_control::run::{run, RunOptions};
use shardray_control::share::{self, LinkFormat};
use shardray_core::spec::{Account, Config, InboundProtocol};

/// A proxy core for Linux servers with many users, compatible with V2Ray/Xray configs and API.
#[derive(Parser)]
#[command(name = "shardray", version, disable_version_flag = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the config comes from: files (`-c`, repeatable, merged in order) or a directory.
#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// Config file (JSON with comments); repeat to merge several.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Vec<PathBuf>,
    /// A directory whose *.json files are merged in name order.
    #[arg(long = "confdir", value_name = "DIR")]
    confdir: Option<PathBuf>,
    /// Refuse keys the config loader does not know, instead of ignoring them with a warning.
    #[arg(long)]
    strict: bool,
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
        /// Directory for the journal of API changes and the saved counters, so that users
        /// added through the API and traffic counts survive a restart.
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Seconds between counter saves to the state directory (what `kill -9` may lose).
        #[arg(long, default_value_t = 10, value_name = "SECONDS")]
        flush: u64,
    },
    /// Check a config and exit: 0 if it is valid, 1 with the reason if not.
    Test {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print the client links (vless://, vmess://, trojan://, ss://, ...) of every user in a
    /// config, or one user's; as lines, a subscription, or QR codes.
    Link {
        #[command(flatten)]
        config: ConfigArgs,
        /// Host name or address clients should dial (default: each inbound's listen address).
        #[arg(long)]
        host: Option<String>,
        /// Only the links of the user with this email (any case).
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
        /// `plain`: one link a line; `subscription`: the base64 list client apps import.
        #[arg(long, value_enum, default_value_t)]
        format: shardray_control::share::LinkFormat,
        /// Draw each link as a QR code in the terminal, under the link.
        #[arg(long)]
        qr: bool,
    },
    /// Print the version.
    Version,
    /// Print a new random UUID for a user id.
    Uuid,
    /// Print an X25519 key pair for REALITY (`privateKey` for the server, the public key for
    /// clients), as `xray x25519` does; `-i` derives the public key of a private key.
    X25519 {
        /// A private key (unpadded base64url) to derive from, instead of a random one.
        // base64url keys may start with '-': still the value, as Go's flag package reads it.
        #[arg(short = 'i', value_name = "PRIVATE", allow_hyphen_values = true)]
        input: Option<String>,
        /// Standard base64 (padded) instead of unpadded base64url.
        #[arg(long = "std-encoding")]
        std_encoding: bool,
    },
    /// Call the management API of a running server (the subcommands of `xray api`, and ours).
    Api(shardray_control::cli_api::ApiArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(shardray_control::cli_api::upstream_api_flags(upstream_flags(std::env::args_os())));
    match cli.command {
        Command::Run { config, shards, grace, state, flush } => {
            // A reload (SIGHUP, `shardray api reload`) reads the same files, checked the same way.
            let files = config.clone();
            let options = RunOptions {
                shards,
                grace: Duration::from_secs(grace),
                state,
                flush: Duration::from_secs(flush.max(1)),
                reload: Some(std::sync::Arc::new(move || load(&files))),
            };
            match load(&config).and_then(|cfg| run(cfg, options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Test { config } => match load(&config).and_then(|cfg| shardray_control::server::check(&cfg)) {
            Ok(()) => {
                println!("Configuration OK.");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Link { config, host, user, format, qr } => match load(&config) {
            Ok(cfg) => print_links(&cfg, host.as_deref(), user.as_deref(), format, qr),
            Err(e) => fail(e),
        },
        Command::Version => {
            println!("shardray {} (V2Ray/Xray compatible config and API)", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Uuid => {
            println!("{}", uuid::Uuid::new_v4());
            ExitCode::SUCCESS
        }
        Command::X25519 { input, std_encoding } => x25519(input.as_deref(), std_encoding),
        Command::Api(args) => shardray_control::cli_api::run(args),
    }
}

/// `shardray link`'s output: `links()` of the whole config or one user's, as lines or as a
/// subscription, each with its QR code if asked.
fn print_links(cfg: &Config, host: Option<&str>, user: Option<&str>, format: LinkFormat, qr: bool) -> ExitCode {
    let picked;
    let cfg = match user {
        None => cfg,
        Some(email) => match share::only_user(cfg, email) {
            Some(one) => {
                picked = one;
                &picked
            }
            None => return fail(anyhow::anyhow!("no inbound has a user with the email {email:?}")),
        },
    };
    let links = links(cfg, host);
    let shown = match format {
        LinkFormat::Plain => links,
        LinkFormat::Subscription => vec![share::subscription(&links)],
    };
    for link in shown {
        println!("{link}");
        if qr {
            match share::qr(&link) {
                Ok(code) => println!("{code}"),
                Err(e) => return fail(e.into()),
            }
        }
    }
    ExitCode::SUCCESS
}

/// `shardray x25519`: the lines `xray x25519` prints (private key clamped as it prints it,
/// `Password (PublicKey)`, and `Hash32`, the BLAKE3 of the public key).
fn x25519(input: Option<&str>, std_encoding: bool) -> ExitCode {
    use base64::Engine;
    let engine = if std_encoding {
        base64::engine::general_purpose::STANDARD
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
    };
    let private: [u8; 32] = match input {
        Some(s) => match engine.decode(s).ok().and_then(|k| k.try_into().ok()) {
            Some(k) => k,
            None => {
                eprintln!("shardray: Invalid length of X25519 private key.");
                return ExitCode::FAILURE;
            }
        },
        None => {
            let mut k = [0u8; 32];
            if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k).is_err() {
                eprintln!("shardray: no randomness from the system");
                return ExitCode::FAILURE;
            }
            k
        }
    };
    let private = shardray_wire::reality::clamp(private);
    let public = shardray_wire::reality::public_key(&private);
    println!("PrivateKey: {}", engine.encode(private));
    println!("Password (PublicKey): {}", engine.encode(public));
    println!("Hash32: {}", engine.encode(blake3::hash(&public).as_bytes()));
    ExitCode::SUCCESS
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
        Some("-strict") => "--strict".into(),
        Some("-std-encoding") => "--std-encoding".into(),
        Some(s) if s.starts_with("-config=") || s.starts_with("-confdir=") => format!("-{s}").into(),
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
    for note in &config.notes {
        eprintln!("shardray: note: {note}");
    }
    if args.strict && !config.ignored_keys.is_empty() {
        anyhow::bail!("unknown keys (--strict):\n  {}", config.ignored_keys.join("\n  "));
    }
    for warning in &config.ignored_keys {
        eprintln!("shardray: warning: {warning}");
    }
    Ok(config)
}

/// `vless://`, `trojan://`, `vmess://`, `ss://`, `socks://` and `http(s)://` links for every
/// user, in the common share-link forms (as v2rayN and sing-box import them; VMess as v2rayN's
/// base64 JSON; SOCKS as v2rayN's base64 user info; Shadowsocks as SIP002: base64url of
/// `method:password` for AEAD, the percent-encoded `method:password` for 2022,
/// `serverPSK:userPSK` on a multi-user server).
fn links(config: &Config, host: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    for inbound in &config.inbounds {
        let Some(clients) = inbound.protocol.clients() else {
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
        let security = inbound.reality.as_deref().map_or(security, reality_params);
        let port = inbound.listen.port();
        // `type=ws&path=..&host=..` as v2rayN and Xray's share links write the transport.
        let transport = match inbound.transport.http() {
            None => match &inbound.transport {
                // `type=grpc&serviceName=..&mode=gun|multi`, as v2rayN and Xray's links write it.
                shardray_core::spec::TransportSpec::Grpc(g) => {
                    let mut t = format!("grpc&serviceName={}&mode={}", percent(&g.service_name), grpc_mode(g));
                    if !g.authority.is_empty() {
                        t.push_str(&format!("&authority={}", percent(&g.authority)));
                    }
                    t
                }
                // `type=xhttp&path=..&host=..&mode=..`, as Xray's share links write it.
                shardray_core::spec::TransportSpec::Xhttp(x) => {
                    let x = &x.settings;
                    let mut t = format!("xhttp&path={}", percent(&x.path));
                    if !x.host.is_empty() {
                        t.push_str(&format!("&host={}", percent(&x.host)));
                    }
                    t.push_str(&format!("&mode={}", x.mode.as_str()));
                    t
                }
                _ => "tcp".to_owned(),
            },
            Some(h) => {
                let mut t = format!("{}&path={}", inbound.transport.name(), percent(&link_path(h)));
                if !h.host.is_empty() {
                    t.push_str(&format!("&host={}", percent(&h.host)));
                }
                t
            }
        };
        for user in clients {
            let name = percent(if user.email.is_empty() { inbound.tag.as_str() } else { user.email.as_str() });
            out.push(match &user.account {
                Account::Vless(id, flow) => {
                    let flow = if matches!(flow, shardray_core::spec::VlessFlow::Vision) {
                        "&flow=xtls-rprx-vision"
                    } else {
                        ""
                    };
                    format!(
                        "vless://{id}@{host}:{port}?encryption=none{flow}&security={security}&type={transport}#{name}"
                    )
                }
                Account::Trojan(password) => {
                    format!("trojan://{}@{host}:{port}?security={security}&type={transport}#{name}", percent(password))
                }
                // v2rayN's VMess JSON has no REALITY fields: a link without them would send
                // the client in the clear.
                Account::Vmess { .. } if inbound.reality.is_some() => {
                    eprintln!(
                        "shardray link: inbound {:?} user {name}: VMess over REALITY has no share-link form; skipped",
                        inbound.tag
                    );
                    continue;
                }
                Account::Vmess { id, security } => vmess_link(inbound, user, *id, *security, &host),
                // v2rayN's form: the standard base64 of `user:pass` as the user info. The form
                // has no TLS field: a SOCKS-over-TLS inbound's link is the same.
                Account::Socks(a) => {
                    use base64::Engine;
                    let info =
                        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", a.username, a.password));
                    format!("socks://{}@{host}:{port}#{name}", percent(&info))
                }
                // A URL's user info, as v2rayN writes and reads it; `https://` under TLS.
                Account::Http(a) => {
                    let scheme = if inbound.tls.is_some() { "https" } else { "http" };
                    format!("{scheme}://{}:{}@{host}:{port}#{name}", percent(&a.username), percent(&a.password))
                }
                Account::Shadowsocks { method, password } => {
                    use base64::Engine;
                    let userinfo =
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{method}:{password}"));
                    format!("ss://{userinfo}@{}:{port}#{name}", link_host(&host))
                }
                Account::Shadowsocks2022 { key } => {
                    let InboundProtocol::Shadowsocks(ss) = &inbound.protocol else { continue };
                    let method = ss.method_2022.map_or("", |m| m.name());
                    // A multi-user server's clients present both PSKs, server's first.
                    let password = match &ss.server_psk {
                        Some(server) => format!("{server}:{key}"),
                        None => key.to_string(),
                    };
                    format!("ss://{}:{}@{}:{port}#{name}", percent(method), percent(&password), link_host(&host))
                }
            });
        }
    }
    out
}

/// `security=reality` and what a REALITY client needs, as Xray's share links carry it: the
/// public key, the first short id and server name, the fingerprint to present.
fn reality_params(r: &shardray_core::spec::RealityServerSpec) -> String {
    use base64::Engine;
    let pbk =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(shardray_wire::reality::public_key(&r.private_key));
    // Trailing zero bytes are padding: clients pad the id the same way.
    let id = r.short_ids.first().copied().unwrap_or_default();
    let used = id.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let sid: String = id[..used].iter().map(|b| format!("{b:02x}")).collect();
    let sni = r.server_names.first().map(String::as_str).unwrap_or("");
    let mut out = format!("reality&pbk={pbk}&sid={sid}&sni={}&fp={}", percent(sni), percent(&r.fingerprint));
    if !r.spider_x.is_empty() {
        out.push_str(&format!("&spx={}", percent(&r.spider_x)));
    }
    out
}

/// A transport's path as share links carry it: with `?ed=` when it takes early data.
fn link_path(h: &shardray_core::spec::HttpTransportSpec) -> String {
    match h.early_data {
        0 => h.path.clone(),
        n if h.path.contains('?') => format!("{}&ed={n}", h.path),
        n => format!("{}?ed={n}", h.path),
    }
}

/// A VMess link as v2rayN writes it: `vmess://` and the standard base64 of a JSON object whose
/// values are all strings (format version 2), alterId 0, its transport (`net`, `host`,
/// `path`), TLS if the inbound has it.
fn vmess_link(
    inbound: &shardray_core::spec::InboundSpec,
    user: &shardray_core::spec::UserSpec,
    id: uuid::Uuid,
    security: shardray_core::spec::VmessSecurity,
    host: &str,
) -> String {
    use base64::Engine;
    let name = if user.email.is_empty() { inbound.tag.as_str() } else { user.email.as_str() };
    let (tls, sni) = match &inbound.tls {
        Some(tls) => ("tls", tls.server_name.as_str()),
        None => ("", ""),
    };
    let (net, http_host, path) = match inbound.transport.http() {
        None => ("tcp", String::new(), String::new()),
        Some(h) => (inbound.transport.name(), h.host.clone(), link_path(h)),
    };
    // gRPC as v2rayN writes it: the service name as `path`, the mode as `type`.
    let (net, http_host, path, kind) = match &inbound.transport {
        shardray_core::spec::TransportSpec::Grpc(g) => {
            ("grpc", g.authority.clone(), g.service_name.clone(), grpc_mode(g))
        }
        _ => (net, http_host, path, "none"),
    };
    let json = serde_json::json!({
        "v": "2", "ps": name, "add": host, "port": inbound.listen.port().to_string(), "id": id.to_string(),
        "aid": "0", "scy": security.name(), "net": net, "type": kind, "host": http_host, "path": path,
        "tls": tls, "sni": sni,
    });
    format!("vmess://{}", base64::engine::general_purpose::STANDARD.encode(json.to_string()))
}

/// A gRPC transport's mode as share links name it.
fn grpc_mode(g: &shardray_core::spec::GrpcSpec) -> &'static str {
    if g.multi_mode {
        "multi"
    } else {
        "gun"
    }
}

/// A host as a URL writes it: an IPv6 address in brackets.
fn link_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Percent-encodes everything but unreserved characters.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
