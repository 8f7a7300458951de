//! Support for end-to-end tests: start the real `shardray` binary on loopback, echo and sink
//! servers, a VLESS client of our own, a StatsService client, and peer binaries.
//!
//! Everything is bounded: servers stop when dropped, reads time out, processes are killed.

pub mod api;
pub mod dns;
pub mod echo;
pub mod inner_tls;
pub mod metrics;
pub mod peers;
pub mod proxy;
pub mod quic;
pub mod servers;
pub mod shadowsocks;
pub mod shoes;
pub mod trojan;
pub mod udp;
pub mod v2ray;
pub mod vless;
pub mod vmess;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a test waits for shardray to start.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A REALITY key pair as `shardray x25519` prints it: (private, public).
pub fn reality_keys() -> (String, String) {
    let (status, out) = run_cli(&["x25519"]);
    assert!(status.success(), "{out}");
    let field = |name: &str| {
        out.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("no {name} in {out}")).to_owned()
    };
    (field("PrivateKey: "), field("Password (PublicKey): "))
}

/// The `shardray` binary under test: `$SHARDRAY_BIN`, else the one cargo built beside the tests.
pub fn bin_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SHARDRAY_BIN") {
        return p.into();
    }
    // Test executables live in target/<profile>/deps; the binary in target/<profile>.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let bin = profile_dir.join("shardray");
    assert!(bin.exists(), "{} not found: build it first (`cargo build -p shardray`, or `make test`)", bin.display());
    bin
}

/// A running `shardray run` process, killed on drop.
pub struct Shardray {
    child: Option<Child>,
    /// Each inbound's tag and bound address, as the binary reported them.
    pub inbounds: HashMap<String, SocketAddr>,
    /// The API's address, if it listens on TCP.
    pub api: Option<SocketAddr>,
    /// The metrics endpoint's address, if it listens on TCP.
    pub metrics: Option<SocketAddr>,
    output: Arc<Mutex<String>>,
    /// The directory holding the config (and anything else the test put there).
    pub dir: tempfile::TempDir,
}

impl Shardray {
    /// Writes `config` to a file and starts `shardray run -c FILE --shards N`; panics with the
    /// process output if it does not start.
    pub fn start(config: &Value, shards: usize) -> Shardray {
        Shardray::try_start(config, shards).unwrap_or_else(|out| panic!("shardray did not start:\n{out}"))
    }

    /// Like `start`, but returns the process output if it exits or fails to start.
    pub fn try_start(config: &Value, shards: usize) -> Result<Shardray, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        Shardray::start_with_args(
            dir,
            &["run", "-c", path.to_str().unwrap(), "--shards", &shards.to_string(), "--grace", "3"],
        )
    }

    /// Starts the binary with `args`, keeping `dir` alive with it.
    pub fn start_with_args(dir: tempfile::TempDir, args: &[&str]) -> Result<Shardray, String> {
        let mut child = Command::new(bin_path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shardray");
        let output = Arc::new(Mutex::new(String::new()));
        let (line_tx, line_rx) = mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        for (reader, forward) in [(Box::new(stderr) as Box<dyn std::io::Read + Send>, true), (Box::new(stdout), false)]
        {
            let output = output.clone();
            let line_tx = line_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines().map_while(Result::ok) {
                    output.lock().unwrap().push_str(&format!("{line}\n"));
                    if forward {
                        let _ = line_tx.send(line);
                    }
                }
            });
        }
        drop(line_tx);
        let mut inbounds = HashMap::new();
        let mut api = None;
        let mut metrics = None;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut server =
            Shardray { child: Some(child), inbounds: HashMap::new(), api: None, metrics: None, output, dir };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match line_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("shardray: inbound ") {
                        // shardray: inbound "TAG" listening on ADDR
                        let (tag, addr) = rest.rsplit_once(" listening on ").unwrap();
                        // An inbound on a Unix socket prints its path instead: the test knows it.
                        if let Ok(addr) = addr.parse() {
                            inbounds.insert(tag.trim_matches('"').to_owned(), addr);
                        }
                    } else if let Some(addr) = line.strip_prefix("shardray: api listening on ") {
                        api = addr.parse().ok();
                    } else if let Some(addr) = line.strip_prefix("shardray: metrics listening on ") {
                        metrics = addr.parse().ok();
                    } else if line.starts_with("shardray: started") {
                        server.inbounds = inbounds;
                        server.api = api;
                        server.metrics = metrics;
                        return Ok(server);
                    }
                }
                Err(_) => {
                    let _ = server.child.as_mut().unwrap().kill();
                    let _ = server.child.as_mut().unwrap().wait();
                    std::thread::sleep(Duration::from_millis(100));
                    return Err(server.output());
                }
            }
        }
    }

    /// The address of the inbound tagged `tag`.
    pub fn inbound(&self, tag: &str) -> SocketAddr {
        *self.inbounds.get(tag).unwrap_or_else(|| panic!("no inbound {tag:?} in {:?}", self.inbounds))
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("shardray did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Shardray {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `shardray ARGS` to completion (bounded), returning exit status and combined output.
pub fn run_cli(args: &[&str]) -> (ExitStatus, String) {
    let out = Command::new(bin_path()).args(args).stdin(Stdio::null()).output().expect("run shardray");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

/// The UUID of the test user most configs use.
pub const ALICE: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";

/// A server config: one VLESS inbound `vless-in` on 127.0.0.1:0 with the given clients and
/// extra inbound fields, freedom and blackhole outbounds, loopback allowed by a rule, stats on.
pub fn vless_config(clients: Value, inbound_extra: Value) -> Value {
    let mut inbound = serde_json::json!({
        "tag": "vless-in",
        "listen": "127.0.0.1",
        "port": 0,
        "protocol": "vless",
        "settings": { "clients": clients, "decryption": "none" }
    });
    if let (Some(obj), Some(extra)) = (inbound.as_object_mut(), inbound_extra.as_object()) {
        for (k, v) in extra {
            if k == "settings" {
                for (sk, sv) in v.as_object().unwrap() {
                    obj["settings"][sk] = sv.clone();
                }
            } else {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    serde_json::json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "inbounds": [inbound],
        "outbounds": [
            { "tag": "direct", "protocol": "freedom" },
            { "tag": "blocked", "protocol": "blackhole" }
        ],
        "routing": { "rules": [
            { "type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct" }
        ]},
        "policy": {
            "levels": { "0": { "statsUserUplink": true, "statsUserDownlink": true, "statsUserOnline": true } },
            "system": {
                "statsInboundUplink": true, "statsInboundDownlink": true,
                "statsOutboundUplink": true, "statsOutboundDownlink": true
            }
        }
    })
}

/// The password of the Trojan test user most configs use.
pub const ALICE_PASSWORD: &str = "alice's trojan password";

/// `vless_config` with a Trojan inbound `trojan-in` instead: `clients` are Trojan clients
/// (`password`, `email`, `level`), `inbound_extra` as for `vless_config`.
pub fn trojan_config(clients: Value, inbound_extra: Value) -> Value {
    let mut config = vless_config(clients, inbound_extra);
    let inbound = &mut config["inbounds"][0];
    inbound["tag"] = "trojan-in".into();
    inbound["protocol"] = "trojan".into();
    inbound["settings"].as_object_mut().unwrap().remove("decryption");
    config
}

/// `vless_config` with a VMess inbound `vmess-in` instead: `clients` are VMess clients (`id`,
/// `email`, `level`), `inbound_extra` as for `vless_config`.
pub fn vmess_config(clients: Value, inbound_extra: Value) -> Value {
    let mut config = vless_config(clients, inbound_extra);
    let inbound = &mut config["inbounds"][0];
    inbound["tag"] = "vmess-in".into();
    inbound["protocol"] = "vmess".into();
    inbound["settings"].as_object_mut().unwrap().remove("decryption");
    config
}

/// A server config with one Shadowsocks inbound `ss-in` whose `settings` are `settings` as
/// written (method, password, clients, network), otherwise as `vless_config`.
pub fn shadowsocks_config(settings: Value, inbound_extra: Value) -> Value {
    let mut config = vless_config(serde_json::json!([]), inbound_extra);
    let inbound = &mut config["inbounds"][0];
    inbound["tag"] = "ss-in".into();
    inbound["protocol"] = "shadowsocks".into();
    inbound["settings"] = settings;
    config
}

/// The `api` section for a test server: the API on a free loopback port (the bound address
/// comes back as `Shardray::api`) serving `services`.
pub fn loopback_api(services: &[&str]) -> Value {
    serde_json::json!({ "tag": "api", "listen": "127.0.0.1:0", "services": services })
}

/// A free port on 127.0.0.1 below the kernel's ephemeral range, for a server that must listen
/// on a port chosen in advance (and again after a restart): no client socket of a concurrent
/// test can be handed it meanwhile, as happens to a port picked by binding port 0.
pub fn fixed_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Spread over the range by process and time, so concurrent tests rarely try the same one.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let seed = u64::from(std::process::id()) ^ now;
    let start = 10_000u16;
    let span = u64::from(low.saturating_sub(start).max(1));
    (0..span)
        .map(|i| start + ((seed.wrapping_mul(2_654_435_761).wrapping_add(i * 7919)) % span) as u16)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// A server with `vless_config`'s inbound (Alice as its user), the HandlerService and
/// StatsService on a loopback API, and 2 shards; with a client of its API.
pub fn api_server() -> (Shardray, api::ApiClient) {
    let mut config =
        vless_config(serde_json::json!([{ "id": ALICE, "email": "alice@example.com" }]), serde_json::json!({}));
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let server = Shardray::start(&config, 2);
    let client = api::ApiClient::connect(server.api.unwrap());
    (server, client)
}

/// A config file and a state directory that outlive each server process, for tests that
/// restart the server (gracefully or by `kill -9`) and check what it kept.
pub struct Restartable {
    dir: tempfile::TempDir,
}

impl Restartable {
    /// Writes `config` (which must serve the API) into a fresh directory.
    pub fn new(config: &Value) -> Restartable {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), serde_json::to_vec(config).unwrap()).unwrap();
        Restartable { dir }
    }

    /// A path in the directory (`config.json`, `state/...`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the server from the config and the state (2 shards, 1 s of grace, then `extra`
    /// arguments) and connects to its API.
    pub fn start(&self, extra: &[&str]) -> (Shardray, api::ApiClient) {
        let (config, state) = (self.path("config.json"), self.path("state"));
        let mut args = vec![
            "run",
            "-c",
            config.to_str().unwrap(),
            "--shards",
            "2",
            "--grace",
            "1",
            "--state",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let server = Shardray::start_with_args(tempfile::tempdir().unwrap(), &args).expect("start");
        let api = api::ApiClient::connect(server.api.unwrap());
        (server, api)
    }
}

/// Polls `cond` every 10 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}
pub mod singbox;
pub mod tls;
