//! The proxies under test: writes an equivalent config for each (one inbound of the protocol
//! measured, plain or over TLS, and a direct outbound), starts it, waits until it carries
//! traffic, and stops it. An external target, a proxy someone else started, is only probed:
//! never started, never stopped.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::client::Client;
use crate::pattern::{Flow, Request};
use crate::protocol::{Dialer, Protocol, Secrets};
use crate::sys;
use crate::tls::{self, TlsClient, TlsFiles, TlsMaterial};
use crate::users;

/// Which core serves the inbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// Our own binary.
    Shardray,
    /// sing-box 1.14.4.
    SingBox,
    /// V2Ray 4.45.2.
    V2ray,
    /// shoes 0.3.2 (configured in YAML).
    Shoes,
    /// The bare splice relay (`shardray-bench splice-relay`), the floor for a userspace relay.
    Splice,
    /// A proxy already running at an address we are given (`--external`); not started here.
    External,
}

impl TargetKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Shardray => "shardray",
            TargetKind::SingBox => "sing-box",
            TargetKind::V2ray => "v2ray",
            TargetKind::Shoes => "shoes",
            TargetKind::Splice => "splice",
            TargetKind::External => "external",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TargetKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shardray" => Ok(TargetKind::Shardray),
            "sing-box" | "singbox" => Ok(TargetKind::SingBox),
            "v2ray" => Ok(TargetKind::V2ray),
            "shoes" => Ok(TargetKind::Shoes),
            "splice" => Ok(TargetKind::Splice),
            "external" => Err("an external target is given by address: --external ADDR --external-uuid UUID".into()),
            other => Err(format!("unknown target {other:?} (shardray, sing-box, v2ray, shoes, splice)")),
        }
    }
}

/// Everything needed to start one target.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// Which core.
    pub kind: TargetKind,
    /// Its binary.
    pub bin: PathBuf,
    /// Shards for shardray; ignored by the others.
    pub shards: usize,
    /// Serve the gRPC API (HandlerService, StatsService) on a loopback port; shardray only.
    pub api: bool,
    /// Users the config lists besides the probe user: [`users::bench_user`] 0 to N-1, each
    /// with an email and level 0; shardray only.
    pub extra_users: usize,
    /// With limits, the extra users are at level 1, whose policy carries them (the probe user
    /// stays at level 0, unlimited); without, they are at level 0 too. shardray only.
    pub extra_users_limits: Option<LevelLimits>,
    /// The protocol its inbound serves (VLESS for the splice relay and an external target).
    pub protocol: Protocol,
    /// Serve the protocol over TLS with this certificate (and connect with these client
    /// settings); plain TCP when `None`. Not for the splice relay, nor an external target.
    pub tls: Option<Arc<TlsMaterial>>,
    /// Where the external target is and how to reach it; set exactly when `kind` is
    /// [`TargetKind::External`].
    pub external: Option<ExternalTarget>,
}

/// The limits of shardray's `policy.levels.1`: `uplinkRate` and `downlinkRate` (both `rate`
/// bytes per second), `maxConnections`, `maxIPs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelLimits {
    /// Bytes per second, each direction.
    pub rate: u64,
    /// Live sessions per user.
    pub max_connections: u32,
    /// Distinct client addresses per user.
    pub max_ips: u32,
}

impl LevelLimits {
    /// The level's policy object.
    fn policy(&self) -> Value {
        json!({
            "statsUserUplink": true,
            "statsUserDownlink": true,
            "uplinkRate": self.rate,
            "downlinkRate": self.rate,
            "maxConnections": self.max_connections,
            "maxIPs": self.max_ips
        })
    }
}

/// A VLESS proxy someone else runs: the harness reaches its sink through it, and measures the
/// process only when told its pid.
#[derive(Debug, Clone)]
pub struct ExternalTarget {
    /// Its VLESS inbound.
    pub addr: SocketAddr,
    /// A user its inbound admits.
    pub user: Uuid,
    /// Its process, for CPU and RSS from /proc; without it only the client's view is reported.
    pub pid: Option<u32>,
    /// VLESS over TLS with these settings; plain TCP when `None`.
    pub tls: Option<TlsClient>,
}

/// A target ready for traffic; dropping it stops the process we started (an external target
/// is left running).
#[derive(Debug)]
pub struct RunningTarget {
    /// The process we started; `None` for an external target.
    child: Option<Child>,
    /// The process to measure: the child, an external target's given pid, or none.
    pid: Option<u32>,
    /// The inbound's port: on 127.0.0.1, or wherever an external target listens.
    pub addr: SocketAddr,
    /// The user the config admits (every protocol's credentials derive from it).
    pub user: Uuid,
    /// The protocol the inbound serves.
    pub protocol: Protocol,
    /// The gRPC API's address, when the spec asked for it.
    pub api: Option<SocketAddr>,
    /// From spawning the process to its `shardray: started` line (shardray only).
    pub started_after: Option<Duration>,
    /// From spawning the process to the probe transfer's success.
    pub ready_after: Duration,
    /// The client settings for its TLS inbound, when it serves TLS.
    pub tls: Option<TlsClient>,
    /// Its output; `None` for an external target.
    log: Option<PathBuf>,
}

/// The line shardray prints on stderr once every shard serves.
const STARTED_LINE: &str = "shardray: started";

impl TargetSpec {
    /// shardray with `shards` shards and nothing else configured.
    pub fn shardray(bin: PathBuf, shards: usize) -> TargetSpec {
        TargetSpec {
            kind: TargetKind::Shardray,
            bin,
            shards,
            api: false,
            extra_users: 0,
            extra_users_limits: None,
            protocol: Protocol::Vless,
            tls: None,
            external: None,
        }
    }

    /// The proxy at `external.addr`, which the harness neither starts nor stops.
    pub fn external(external: ExternalTarget) -> TargetSpec {
        TargetSpec {
            kind: TargetKind::External,
            bin: PathBuf::new(),
            shards: 0,
            api: false,
            extra_users: 0,
            extra_users_limits: None,
            protocol: Protocol::Vless,
            tls: None,
            external: Some(external),
        }
    }

    /// How reports name this target: the kind, for an external target its address too, as in
    /// `external(127.0.0.1:10086)`, and `shardray+limits` when its extra users are limited.
    pub fn name(&self) -> String {
        match (&self.external, self.extra_users_limits) {
            (Some(e), _) => format!("external({})", e.addr),
            (None, Some(_)) => format!("{}+limits", self.kind.name()),
            (None, None) => self.kind.name().to_owned(),
        }
    }

    /// Probes the external target: waits (within `startup`) for its port to accept, then
    /// makes the 1 KiB probe transfer to `sink` through it.
    fn attach(&self, sink: SocketAddr, startup: Duration) -> Result<RunningTarget> {
        let Some(ext) = &self.external else { bail!("an external target needs its address") };
        if self.tls.is_some() || self.api || self.extra_users > 0 || self.extra_users_limits.is_some() {
            bail!("an external target is not configured by the harness (no generated TLS, API or users)");
        }
        let mut target = RunningTarget {
            child: None,
            pid: ext.pid,
            addr: ext.addr,
            user: ext.user,
            protocol: Protocol::Vless,
            api: None,
            started_after: None,
            ready_after: Duration::ZERO,
            tls: ext.tls.clone(),
            log: None,
        };
        target.wait_ready(self.kind, sink, Instant::now(), startup).with_context(|| {
            format!(
                "the external target at {} did not carry the 1 KiB probe transfer to the harness's sink {sink} \
                 (is it a VLESS{} inbound admitting {}, with a direct/freedom outbound that may reach loopback?)",
                ext.addr,
                if ext.tls.is_some() { " over TLS" } else { "" },
                ext.user
            )
        })?;
        Ok(target)
    }

    /// Writes the config into `dir`, starts the process, and returns once a 1 KiB download
    /// through it to `sink` succeeds (bounded by `startup`).
    /// An external target is not started, only probed the same way.
    pub fn start(&self, dir: &Path, sink: SocketAddr, startup: Duration) -> Result<RunningTarget> {
        if self.kind == TargetKind::External {
            return self.attach(sink, startup);
        }
        if (self.api || self.extra_users > 0 || self.extra_users_limits.is_some()) && self.kind != TargetKind::Shardray
        {
            bail!("the API and extra users are configured for shardray only");
        }
        if let Err(why) = supports(self.kind, self.protocol, self.tls.is_some()) {
            bail!("{why}");
        }
        let port = free_port()?;
        let api = if self.api { Some(SocketAddr::from(([127, 0, 0, 1], free_port()?))) } else { None };
        let user = Uuid::new_v4();
        // The variant's name, so that `shardray` and `shardray+limits` keep their own files.
        let name = self.name();
        let tls_files = self.tls.as_ref().map(|t| &t.files);
        let secrets = Secrets { user };
        let mut body = server_config(self.kind, self.protocol, port, &secrets, sink, api, tls_files);
        let extra_level = match (&mut body, self.extra_users_limits) {
            (Some(ServerConfig::Json(config)), Some(limits)) => {
                config["policy"]["levels"]["1"] = limits.policy();
                1
            }
            _ => 0,
        };
        let extension = if matches!(body, Some(ServerConfig::Yaml(_))) { "yaml" } else { "json" };
        let config = dir.join(format!("{name}.{extension}"));
        match &body {
            Some(ServerConfig::Json(body)) => write_config(&config, body, self.extra_users, extra_level),
            Some(ServerConfig::Yaml(body)) => fs::write(&config, body).map_err(Into::into),
            None => Ok(()),
        }
        .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log)?;

        let mut cmd = Command::new(&self.bin);
        match self.kind {
            TargetKind::Shardray => {
                cmd.arg("run").arg("-c").arg(&config);
                cmd.arg("--shards").arg(self.shards.to_string());
            }
            TargetKind::SingBox => {
                cmd.args(["run", "--disable-color", "-c"]).arg(&config);
            }
            // V2Ray 4.x has no subcommands: `v2ray -config FILE`.
            TargetKind::V2ray => {
                cmd.arg("-config").arg(&config);
            }
            // It would otherwise watch the file for changes, and log every connection.
            TargetKind::Shoes => {
                cmd.arg("--no-reload").arg(&config).env("RUST_LOG", "warn");
            }
            TargetKind::Splice => {
                cmd.args(["splice-relay", "--listen", &format!("127.0.0.1:{port}"), "--user"]);
                cmd.arg(user.to_string());
            }
            TargetKind::External => unreachable!("external targets are attached above"),
        }
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        let spawned = Instant::now();
        let child = cmd.spawn().with_context(|| format!("starting {}", self.bin.display()))?;
        let mut target = RunningTarget {
            pid: Some(child.id()),
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            user,
            protocol: self.protocol,
            api,
            started_after: None,
            ready_after: Duration::ZERO,
            tls: self.tls.as_ref().map(|t| t.client.clone()),
            log: Some(log),
        };
        target
            .wait_ready(self.kind, sink, spawned, startup)
            .with_context(|| format!("{name} did not come up; its log:\n{}", target.log_tail()))?;
        Ok(target)
    }

    /// How reports name what this target serves: the protocol's name, with `-tls` over TLS
    /// (`vless`, `vless-tls`, `trojan-tls`, `ss-2022`, ...).
    pub fn protocol(&self) -> &'static str {
        let external_tls = self.external.as_ref().is_some_and(|e| e.tls.is_some());
        self.protocol.label(self.tls.is_some() || external_tls)
    }
}

/// A target's config file: JSON for the Xray-style cores and sing-box, YAML for shoes.
#[derive(Debug, Clone)]
pub enum ServerConfig {
    /// shardray, V2Ray and sing-box.
    Json(Value),
    /// shoes.
    Yaml(String),
}

/// Whether `kind` serves `protocol` (inside TLS with `tls`); `Err` says why not, as the note a
/// report gets for the pair it skips.
pub fn supports(kind: TargetKind, protocol: Protocol, tls: bool) -> Result<(), String> {
    if tls && !protocol.allows_tls() {
        return Err(format!("{protocol} is measured over plain TCP only, not with --tls"));
    }
    match kind {
        TargetKind::Splice if protocol != Protocol::Vless || tls => {
            Err("the splice reference relay serves plain VLESS only".into())
        }
        TargetKind::V2ray if protocol == Protocol::Ss2022 => Err("V2Ray 4.45.2 has no Shadowsocks 2022".into()),
        TargetKind::External if protocol != Protocol::Vless => {
            Err("an external target is measured over VLESS only".into())
        }
        _ => Ok(()),
    }
}

/// The email every config gives the one user, for the per-user counters.
const EMAIL: &str = "bench@local";

/// The server config of `kind`: one `protocol` inbound on 127.0.0.1:`port` admitting
/// `secrets`, inside TLS serving `tls` when given, and a direct outbound; `None` for the splice
/// relay, which takes its two settings as arguments. With `api`, shardray's config also serves
/// HandlerService and StatsService there. The pair must be one [`supports`] accepts.
fn server_config(
    kind: TargetKind,
    protocol: Protocol,
    port: u16,
    secrets: &Secrets,
    sink: SocketAddr,
    api: Option<SocketAddr>,
    tls: Option<&TlsFiles>,
) -> Option<ServerConfig> {
    Some(match kind {
        TargetKind::Splice | TargetKind::External => return None,
        TargetKind::SingBox => ServerConfig::Json(sing_box_config(protocol, port, secrets, tls)),
        TargetKind::Shoes => ServerConfig::Yaml(shoes_config(protocol, port, secrets, tls)),
        TargetKind::Shardray | TargetKind::V2ray => {
            ServerConfig::Json(xray_style_config(kind, protocol, port, secrets, sink, api, tls))
        }
    })
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The v4 JSON shardray and V2Ray both read.
fn xray_style_config(
    kind: TargetKind,
    protocol: Protocol,
    port: u16,
    secrets: &Secrets,
    sink: SocketAddr,
    api: Option<SocketAddr>,
    tls: Option<&TlsFiles>,
) -> Value {
    let password = secrets.password();
    let settings = match protocol {
        Protocol::Vless => json!({
            "clients": [{ "id": secrets.user.to_string(), "email": EMAIL, "level": 0 }],
            "decryption": "none"
        }),
        Protocol::Trojan => json!({ "clients": [{ "password": password, "email": EMAIL, "level": 0 }] }),
        // V2Ray's VMess is AEAD only with alterId 0; shardray takes no alterId at all.
        Protocol::Vmess if kind == TargetKind::V2ray => {
            json!({ "clients": [{ "id": secrets.user.to_string(), "alterId": 0, "email": EMAIL, "level": 0 }] })
        }
        Protocol::Vmess => json!({
            "clients": [{ "id": secrets.user.to_string(), "email": EMAIL, "level": 0, "security": "aes-128-gcm" }]
        }),
        Protocol::SsAes128Gcm => json!({
            "method": "aes-128-gcm", "password": password, "email": EMAIL, "level": 0, "network": "tcp"
        }),
        Protocol::Ss2022 => json!({
            "method": "2022-blake3-aes-128-gcm", "password": secrets.psk_base64(), "email": EMAIL, "level": 0,
            "network": "tcp"
        }),
        Protocol::Socks => json!({
            "auth": "password",
            "accounts": [{ "user": secrets.socks_user(), "pass": password, "email": EMAIL }],
            "udp": false
        }),
    };
    let protocol_name = match protocol {
        Protocol::SsAes128Gcm | Protocol::Ss2022 => "shadowsocks",
        other => other.name(),
    };
    let mut config = json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "policy": {
            "levels": { "0": { "statsUserUplink": true, "statsUserDownlink": true } }
        },
        "inbounds": [{
            "tag": "bench-in",
            "listen": "127.0.0.1",
            "port": port,
            "protocol": protocol_name,
            "settings": settings
        }],
        "outbounds": [{ "tag": "direct", "protocol": "freedom", "settings": {} }]
    });
    if let Some(tls) = tls {
        // The same v4 JSON for both; V2Ray 4.45.2 ignores the minVersion it lacks, and
        // our client offers nothing older anyway.
        config["inbounds"][0]["streamSettings"] = json!({
            "network": "tcp",
            "security": "tls",
            "tlsSettings": {
                "serverName": tls::SERVER_NAME,
                "alpn": [tls::ALPN],
                "minVersion": "1.3",
                "certificates": [{
                    "certificateFile": path(&tls.cert_file),
                    "keyFile": path(&tls.key_file)
                }]
            }
        });
    }
    if kind == TargetKind::Shardray {
        // shardray refuses loopback destinations unless a rule names them.
        config["routing"] = json!({
            "rules": [{
                "type": "field",
                "ip": [format!("{}/32", sink.ip())],
                "outboundTag": "direct"
            }]
        });
        if let Some(api) = api {
            config["api"] = json!({
                "tag": "api",
                "listen": api.to_string(),
                "services": ["HandlerService", "StatsService"],
                // The churn bench measures the API's own rate: no per-caller limit.
                "callLimit": { "rate": 0 }
            });
        }
    }
    config
}

/// sing-box's JSON.
fn sing_box_config(protocol: Protocol, port: u16, secrets: &Secrets, tls: Option<&TlsFiles>) -> Value {
    let password = secrets.password();
    let (kind, mut fields) = match protocol {
        Protocol::Vless => ("vless", json!({ "users": [{ "name": EMAIL, "uuid": secrets.user.to_string() }] })),
        Protocol::Trojan => ("trojan", json!({ "users": [{ "name": EMAIL, "password": password }] })),
        Protocol::Vmess => {
            ("vmess", json!({ "users": [{ "name": EMAIL, "uuid": secrets.user.to_string(), "alterId": 0 }] }))
        }
        Protocol::SsAes128Gcm => ("shadowsocks", json!({ "method": "aes-128-gcm", "password": password })),
        Protocol::Ss2022 => {
            ("shadowsocks", json!({ "method": "2022-blake3-aes-128-gcm", "password": secrets.psk_base64() }))
        }
        Protocol::Socks => ("socks", json!({ "users": [{ "username": secrets.socks_user(), "password": password }] })),
    };
    fields["type"] = json!(kind);
    fields["tag"] = json!("bench-in");
    fields["listen"] = json!("127.0.0.1");
    fields["listen_port"] = json!(port);
    if let Some(tls) = tls {
        fields["tls"] = json!({
            "enabled": true,
            "server_name": tls::SERVER_NAME,
            "alpn": [tls::ALPN],
            "min_version": "1.3",
            "certificate_path": path(&tls.cert_file),
            "key_path": path(&tls.key_file)
        });
    }
    json!({
        "log": { "level": "warn" },
        "inbounds": [fields],
        "outbounds": [{ "type": "direct", "tag": "direct" }]
    })
}

/// shoes's YAML: one server entry; its default rules allow every destination, loopback
/// included, directly. Strings are written as JSON strings, which YAML reads as they are.
fn shoes_config(protocol: Protocol, port: u16, secrets: &Secrets, tls: Option<&TlsFiles>) -> String {
    let q = |s: &str| Value::String(s.to_owned()).to_string();
    let password = secrets.password();
    let inner: Vec<(&str, String)> = match protocol {
        Protocol::Vless => {
            vec![("type", "vless".into()), ("user_id", q(&secrets.user.to_string())), ("udp_enabled", "false".into())]
        }
        Protocol::Trojan => vec![("type", "trojan".into()), ("password", q(&password))],
        Protocol::Vmess => vec![
            ("type", "vmess".into()),
            ("cipher", "aes-128-gcm".into()),
            ("user_id", q(&secrets.user.to_string())),
            ("udp_enabled", "false".into()),
        ],
        Protocol::SsAes128Gcm => {
            vec![("type", "shadowsocks".into()), ("cipher", "aes-128-gcm".into()), ("password", q(&password))]
        }
        Protocol::Ss2022 => vec![
            ("type", "shadowsocks".into()),
            ("cipher", "2022-blake3-aes-128-gcm".into()),
            ("password", q(&secrets.psk_base64())),
        ],
        Protocol::Socks => vec![
            ("type", "socks".into()),
            ("username", q(secrets.socks_user())),
            ("password", q(&password)),
            ("udp_enabled", "false".into()),
        ],
    };
    let block = |indent: usize| -> String {
        let pad = " ".repeat(indent);
        inner.iter().map(|(k, v)| format!("{pad}{k}: {v}\n")).collect()
    };
    let mut out = format!("- address: {}\n  protocol:\n", q(&format!("127.0.0.1:{port}")));
    match tls {
        None => out.push_str(&block(4)),
        Some(tls) => {
            out.push_str("    type: tls\n    default_target:\n");
            out.push_str(&format!(
                "      cert: {}\n      key: {}\n",
                q(&path(&tls.cert_file)),
                q(&path(&tls.key_file))
            ));
            out.push_str(&format!("      alpn_protocols: [{}]\n      protocol:\n", q(tls::ALPN)));
            out.push_str(&block(8));
        }
    }
    out
}

impl RunningTarget {
    /// The process id, for /proc: always for a target we started, for an external target
    /// only when its pid was given.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// [`pid`](Self::pid) for a target the harness started itself, which always has one.
    pub fn started_pid(&self) -> Result<u32> {
        match (&self.child, self.pid) {
            (Some(_), Some(pid)) => Ok(pid),
            _ => bail!("not a target the harness started"),
        }
    }

    /// How to reach a destination through this target.
    pub fn dialer(&self) -> Dialer {
        Dialer {
            proxy: self.addr,
            protocol: self.protocol,
            secrets: Secrets { user: self.user },
            tls: self.tls.clone(),
            send_buffer: None,
        }
    }

    /// A client that reaches `sink` through this target.
    pub fn client(&self, sink: SocketAddr) -> Client {
        Client { dialer: self.dialer(), sink }
    }

    /// Fails if the process has exited (for an external target with a pid: is gone).
    pub fn check_alive(&mut self) -> Result<()> {
        match (&mut self.child, self.pid) {
            (Some(child), _) => {
                if let Some(status) = child.try_wait()? {
                    bail!("target exited ({status}); its log:\n{}", self.log_tail());
                }
            }
            (None, Some(pid)) => {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    bail!("the external target's process {pid} is gone");
                }
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// The last lines of the target's output, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(log) = &self.log else { return "(an external target: its output is not ours to read)".into() };
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return "(empty)".into();
        }
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn wait_ready(&mut self, kind: TargetKind, sink: SocketAddr, spawned: Instant, startup: Duration) -> Result<()> {
        let deadline = spawned + startup;
        if kind == TargetKind::Shardray {
            // Polled finely: with a large config, the time to this line is what is measured.
            loop {
                self.check_alive()?;
                let text = self.log.as_ref().and_then(|log| fs::read_to_string(log).ok()).unwrap_or_default();
                if text.lines().any(|l| l.starts_with(STARTED_LINE)) {
                    self.started_after = Some(spawned.elapsed());
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("no {STARTED_LINE:?} line after {startup:?}");
                }
                thread::sleep(Duration::from_millis(2));
            }
        }
        loop {
            self.check_alive()?;
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!("port {} not accepting after {startup:?}", self.addr);
            }
            thread::sleep(Duration::from_millis(50));
        }
        // The port accepts; one small transfer proves the config routes to the sink.
        let probe = Request { flow: Flow::Down, len: 1024, start: 0 };
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        self.client(sink).run(probe, left).context("probe transfer")?;
        self.ready_after = spawned.elapsed();
        Ok(())
    }

    /// Stops the process: SIGTERM, then SIGKILL if it lingers past two seconds.
    pub fn stop(mut self) -> Result<()> {
        self.terminate();
        Ok(())
    }

    /// Stops the process we started; an external target is left alone.
    fn terminate(&mut self) {
        let Some(child) = &mut self.child else { return };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Not reaped yet (try_wait said so), so the pid is still our child's.
        sys::terminate(child.id());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for RunningTarget {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Writes `config` to `path`; with `extra_users`, the first inbound's client list gets
/// [`users::bench_user`] 0 to N-1 appended at `level`, streamed to the file rather than built
/// in memory.
fn write_config(path: &Path, config: &Value, extra_users: usize, level: u32) -> Result<()> {
    let mut out = io::BufWriter::new(fs::File::create(path)?);
    if extra_users == 0 {
        serde_json::to_writer_pretty(&mut out, config)?;
    } else {
        const MARK: &str = "__BENCH_EXTRA_USERS__";
        let mut config = config.clone();
        let clients =
            config["inbounds"][0]["settings"]["clients"].as_array_mut().context("the config has no client list")?;
        clients.push(Value::String(MARK.into()));
        let text = serde_json::to_string(&config)?;
        let (head, tail) =
            text.split_once(&format!("\"{MARK}\"")).context("marker missing from the serialised config")?;
        out.write_all(head.as_bytes())?;
        for i in 0..extra_users {
            if i > 0 {
                out.write_all(b",")?;
            }
            let (email, id) = users::bench_user(i);
            write!(out, r#"{{"id":"{id}","email":"{email}","level":{level}}}"#)?;
        }
        out.write_all(tail.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> TlsFiles {
        TlsFiles { cert_file: "/run/b/tls-chain.pem".into(), key_file: "/run/b/tls-key.pem".into() }
    }

    const SECRETS: Secrets = Secrets { user: Uuid::from_u128(0x0001_0203_0405_0607_0809_0a0b_0c0d_0e0f) };

    fn config(kind: TargetKind, protocol: Protocol, tls: Option<&TlsFiles>) -> Option<ServerConfig> {
        let sink = SocketAddr::from(([127, 0, 0, 1], 9));
        server_config(kind, protocol, 10_086, &SECRETS, sink, None, tls)
    }

    fn make_for(kind: TargetKind, protocol: Protocol, tls: Option<&TlsFiles>) -> Value {
        match config(kind, protocol, tls) {
            Some(ServerConfig::Json(v)) => v,
            other => panic!("{kind}: not JSON: {other:?}"),
        }
    }

    fn make(kind: TargetKind, tls: Option<&TlsFiles>) -> Value {
        make_for(kind, Protocol::Vless, tls)
    }

    fn yaml(protocol: Protocol, tls: Option<&TlsFiles>) -> String {
        match config(TargetKind::Shoes, protocol, tls) {
            Some(ServerConfig::Yaml(y)) => y,
            other => panic!("shoes: not YAML: {other:?}"),
        }
    }

    #[test]
    fn plain_configs_have_no_tls() {
        for kind in [TargetKind::Shardray, TargetKind::V2ray] {
            let c = make(kind, None);
            assert!(c["inbounds"][0].get("streamSettings").is_none(), "{kind}: {c}");
        }
        let c = make(TargetKind::SingBox, None);
        assert!(c["inbounds"][0].get("tls").is_none(), "{c}");
        assert!(config(TargetKind::Splice, Protocol::Vless, None).is_none());
        assert!(!yaml(Protocol::Vless, None).contains("tls"));
    }

    #[test]
    fn xray_style_configs_serve_tls_from_the_generated_files() {
        for kind in [TargetKind::Shardray, TargetKind::V2ray] {
            let c = make(kind, Some(&files()));
            let inbound = &c["inbounds"][0];
            assert_eq!(inbound["protocol"], "vless", "{kind}");
            assert_eq!(inbound["port"], 10_086, "{kind}");
            let stream = &inbound["streamSettings"];
            assert_eq!(stream["network"], "tcp", "{kind}");
            assert_eq!(stream["security"], "tls", "{kind}");
            let tls = &stream["tlsSettings"];
            assert_eq!(tls["alpn"], json!(["http/1.1"]), "{kind}");
            assert_eq!(tls["serverName"], "localhost", "{kind}");
            assert_eq!(tls["minVersion"], "1.3", "{kind}");
            assert_eq!(
                tls["certificates"],
                json!([{ "certificateFile": "/run/b/tls-chain.pem", "keyFile": "/run/b/tls-key.pem" }]),
                "{kind}"
            );
        }
        // shardray keeps its loopback route with TLS on.
        assert_eq!(make(TargetKind::Shardray, Some(&files()))["routing"]["rules"][0]["ip"], json!(["127.0.0.1/32"]));
    }

    #[test]
    fn sing_box_serves_tls_from_the_generated_files() {
        let c = make(TargetKind::SingBox, Some(&files()));
        let inbound = &c["inbounds"][0];
        assert_eq!(inbound["type"], "vless");
        assert_eq!(inbound["listen_port"], 10_086);
        assert_eq!(
            inbound["tls"],
            json!({
                "enabled": true,
                "server_name": "localhost",
                "alpn": ["http/1.1"],
                "min_version": "1.3",
                "certificate_path": "/run/b/tls-chain.pem",
                "key_path": "/run/b/tls-key.pem"
            })
        );
    }

    #[test]
    fn the_splice_relay_refuses_tls() {
        let dir = std::env::temp_dir().join(format!("shardray-bench-splice-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let material = TlsMaterial::generate(&dir).unwrap();
        let spec = TargetSpec {
            kind: TargetKind::Splice,
            bin: "/bin/false".into(),
            shards: 1,
            api: false,
            extra_users: 0,
            extra_users_limits: None,
            protocol: Protocol::Vless,
            tls: Some(Arc::new(material)),
            external: None,
        };
        assert_eq!(spec.protocol(), "vless-tls");
        let sink = SocketAddr::from(([127, 0, 0, 1], 9));
        let err = spec.start(&dir, sink, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("plain VLESS only"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shoes_serves_vless_plain_and_inside_tls() {
        assert_eq!(
            yaml(Protocol::Vless, None),
            "- address: \"127.0.0.1:10086\"\n  protocol:\n    type: vless\n    \
             user_id: \"00010203-0405-0607-0809-0a0b0c0d0e0f\"\n    udp_enabled: false\n"
        );
        let y = yaml(Protocol::Trojan, Some(&files()));
        assert_eq!(
            y,
            "- address: \"127.0.0.1:10086\"\n  protocol:\n    type: tls\n    default_target:\n      \
             cert: \"/run/b/tls-chain.pem\"\n      key: \"/run/b/tls-key.pem\"\n      \
             alpn_protocols: [\"http/1.1\"]\n      protocol:\n        type: trojan\n        \
             password: \"000102030405060708090a0b0c0d0e0f\"\n"
        );
    }

    #[test]
    fn every_core_gets_the_same_credentials_for_each_protocol() {
        let password = SECRETS.password();
        let psk = SECRETS.psk_base64();
        for protocol in Protocol::ALL {
            let x = make_for(TargetKind::Shardray, protocol, None);
            let settings = &x["inbounds"][0]["settings"];
            let s = &make_for(TargetKind::SingBox, protocol, None)["inbounds"][0];
            let y = yaml(protocol, None);
            let uuid = SECRETS.user.to_string();
            match protocol {
                Protocol::Vless | Protocol::Vmess => {
                    assert_eq!(settings["clients"][0]["id"], uuid.as_str());
                    assert_eq!(s["users"][0]["uuid"], uuid.as_str());
                    assert!(y.contains(&format!("user_id: \"{uuid}\"")), "{y}");
                }
                Protocol::Trojan => {
                    assert_eq!(settings["clients"][0]["password"], password.as_str());
                    assert_eq!(s["users"][0]["password"], password.as_str());
                    assert!(y.contains(&format!("password: \"{password}\"")), "{y}");
                }
                Protocol::SsAes128Gcm | Protocol::Ss2022 => {
                    let (method, key) = if protocol == Protocol::Ss2022 {
                        ("2022-blake3-aes-128-gcm", psk.as_str())
                    } else {
                        ("aes-128-gcm", password.as_str())
                    };
                    assert_eq!(x["inbounds"][0]["protocol"], "shadowsocks");
                    assert_eq!((&settings["method"], &settings["password"]), (&json!(method), &json!(key)));
                    assert_eq!(
                        (&s["type"], &s["method"], &s["password"]),
                        (&json!("shadowsocks"), &json!(method), &json!(key))
                    );
                    assert!(
                        y.contains(&format!("cipher: {method}\n")) && y.contains(&format!("password: \"{key}\"")),
                        "{y}"
                    );
                }
                Protocol::Socks => {
                    assert_eq!(settings["auth"], "password");
                    assert_eq!(settings["accounts"][0], json!({ "user": "bench", "pass": password, "email": EMAIL }));
                    assert_eq!(s["users"][0], json!({ "username": "bench", "password": password }));
                    assert!(
                        y.contains("username: \"bench\"") && y.contains(&format!("password: \"{password}\"")),
                        "{y}"
                    );
                }
            }
            // Every shardray config keeps its loopback route and per-user counters.
            assert_eq!(x["routing"]["rules"][0]["ip"], json!(["127.0.0.1/32"]), "{protocol}");
            assert!(settings.to_string().contains(EMAIL), "{protocol}: {settings}");
        }
        // V2Ray's VMess user is AEAD only with alterId 0.
        let v = make_for(TargetKind::V2ray, Protocol::Vmess, None);
        assert_eq!(v["inbounds"][0]["settings"]["clients"][0]["alterId"], 0);
    }

    #[test]
    fn vmess_and_trojan_go_inside_tls_on_every_core() {
        for protocol in [Protocol::Trojan, Protocol::Vmess] {
            for kind in [TargetKind::Shardray, TargetKind::V2ray] {
                let c = make_for(kind, protocol, Some(&files()));
                assert_eq!(c["inbounds"][0]["protocol"], protocol.name(), "{kind}");
                assert_eq!(c["inbounds"][0]["streamSettings"]["security"], "tls", "{kind}");
            }
            let c = make_for(TargetKind::SingBox, protocol, Some(&files()));
            assert_eq!(c["inbounds"][0]["tls"]["certificate_path"], "/run/b/tls-chain.pem");
            assert!(yaml(protocol, Some(&files())).contains("type: tls"));
        }
    }

    #[test]
    fn pairs_a_peer_cannot_serve_say_why() {
        assert!(supports(TargetKind::V2ray, Protocol::Ss2022, false).unwrap_err().contains("V2Ray 4.45.2"));
        assert!(supports(TargetKind::Splice, Protocol::Trojan, false).unwrap_err().contains("plain VLESS only"));
        assert!(supports(TargetKind::Shardray, Protocol::Socks, true).unwrap_err().contains("--tls"));
        for protocol in Protocol::ALL {
            for kind in [TargetKind::Shardray, TargetKind::SingBox, TargetKind::Shoes] {
                assert_eq!(supports(kind, protocol, false), Ok(()), "{kind} {protocol}");
            }
        }
        assert_eq!(supports(TargetKind::V2ray, Protocol::SsAes128Gcm, false), Ok(()));
        assert_eq!(supports(TargetKind::Shoes, Protocol::Trojan, true), Ok(()));
    }
}
