//! `--external`: the harness measures a proxy it did not start. These tests start one
//! themselves (the bench's own splice relay, and shardray over TLS when its binary is built),
//! point short `throughput` and `connrate` runs at its address, and check what comes back:
//! verified transfers, the process's CPU and RSS with `--external-pid` and none without, and
//! the process still running afterwards.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};

/// The harness binary cargo built for these tests.
const BENCH: &str = env!("CARGO_BIN_EXE_shardray-bench");

/// A process the test started, killed on drop.
struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails the test if the harness stopped it.
    fn assert_running(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the harness must leave an external target running");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// An empty directory of the test's own.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardray-bench-ext-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `command` as a proxy at `addr` that the harness did not start, its output discarded.
fn proxy_process(command: &mut Command, addr: SocketAddr) -> Proxy {
    let child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    Proxy { child, addr }
}

/// `shardray-bench splice-relay` for `user`, started here as if by someone else. The harness's
/// start-up probe waits for its port, so there is nothing to wait for here.
fn splice_relay(user: &str) -> Proxy {
    let addr = free_addr();
    proxy_process(Command::new(BENCH).args(["splice-relay", "--listen", &addr.to_string(), "--user", user]), addr)
}

/// Runs the harness with `args` and `--json-out` into `dir`; returns its Markdown output and the
/// saved report, failing the test with its output if it fails.
fn bench(dir: &Path, name: &str, args: &[String]) -> (String, Value) {
    let json = dir.join(format!("{name}.json"));
    let out: Output =
        Command::new(BENCH).args(args).arg("--json-out").arg(&json).stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (stdout, report)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `--external ADDR --external-uuid USER`, and `--external-pid` when given.
fn external_args(proxy: &Proxy, user: &str, pid: Option<u32>) -> Vec<String> {
    let mut args = strings(&["--external", &proxy.addr.to_string(), "--external-uuid", user]);
    if let Some(pid) = pid {
        args.extend(strings(&["--external-pid", &pid.to_string()]));
    }
    args
}

fn throughput(dir: &Path, external: Vec<String>, extra: &[&str]) -> (String, Value) {
    let mut args = strings(&["throughput", "--streams", "2", "--bytes", "2MiB", "--runs", "1", "--timeout", "30"]);
    args.extend(strings(extra));
    args.extend(external);
    bench(dir, "throughput", &args)
}

fn connrate(dir: &Path, external: Vec<String>, extra: &[&str]) -> (String, Value) {
    let mut args =
        strings(&["connrate", "--parallel", "2", "--duration", "0.5", "--serial-duration", "0.2", "--runs", "1"]);
    args.extend(strings(extra));
    args.extend(external);
    bench(dir, "connrate", &args)
}

/// Both directions came back under the external target's name, every byte verified (the
/// harness fails a run that moved fewer or corrupted bytes), with CPU and RSS exactly when
/// `measured`.
fn check_throughput(report: &Value, addr: SocketAddr, protocol: &str, measured: bool) {
    let name = format!("external({addr})");
    let runs: Vec<&Value> =
        report["runs"].as_array().unwrap().iter().filter(|r| r["target"] == name.as_str()).collect();
    let dirs: Vec<&str> = runs.iter().map(|r| r["direction"].as_str().unwrap()).collect();
    assert_eq!(dirs, ["up", "down"], "{report}");
    for r in runs {
        assert_eq!(r["protocol"], protocol, "{r}");
        assert_eq!(r["bytes_per_stream"], 2 << 20, "{r}");
        assert!(r["gbit_s"].as_f64().unwrap() > 0.0, "{r}");
        for key in ["proxy_cpu_s", "cpu_s_per_gb", "peak_rss_mib"] {
            assert_eq!(r[key].is_f64(), measured, "{key}: {r}");
            assert_eq!(r[key].is_null(), !measured, "{key}: {r}");
        }
        assert_eq!(r["rss"].is_null(), !measured, "{r}");
        if measured {
            assert!(r["peak_rss_mib"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["proxy_cpu_s"].as_f64().unwrap() >= 0.0, "{r}");
        }
    }
    let medians: Vec<&Value> =
        report["medians"].as_array().unwrap().iter().filter(|m| m["target"] == name.as_str()).collect();
    assert_eq!(medians.len(), 2, "{report}");
    for m in medians {
        assert_eq!(m["cpu_s_per_gb"].is_f64(), measured, "{m}");
    }
}

/// Connections came back verified and error-free, with CPU and RSS exactly when `measured`.
fn check_connrate(report: &Value, addr: SocketAddr, protocol: &str, measured: bool) {
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{report}");
    let r = &runs[0];
    assert_eq!(r["target"], format!("external({addr})").as_str(), "{r}");
    assert_eq!(r["protocol"], protocol, "{r}");
    let p = &r["parallel"];
    assert!(p["connections"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(p["errors"], 0, "{p}");
    assert!(r["serial"]["connections"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(p["cpu_ms_per_1k"].is_f64(), measured, "{p}");
    assert_eq!(r["peak_rss_mib"].is_f64(), measured, "{r}");
    assert_eq!(report["medians"][0]["cpu_ms_per_1k"].is_f64(), measured, "{report}");
}

#[test]
fn an_external_relay_with_its_pid_reports_its_cpu_and_rss() {
    let dir = fresh_dir("pid");
    let user = "5f3c3b9e-58c1-4e1f-9a53-0c3a3a0f6f11";
    let mut relay = splice_relay(user);
    let pid = Some(relay.pid());

    let (_, report) = throughput(&dir, external_args(&relay, user, pid), &[]);
    check_throughput(&report, relay.addr, "vless", true);
    relay.assert_running();

    let (_, report) = connrate(&dir, external_args(&relay, user, pid), &[]);
    check_connrate(&report, relay.addr, "vless", true);
    relay.assert_running();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_external_relay_without_its_pid_reports_only_what_the_client_sees() {
    let dir = fresh_dir("nopid");
    let user = "0b7c2a54-0a7e-4c4e-8d53-6e0f2b9b3c21";
    let mut relay = splice_relay(user);

    let (markdown, report) = throughput(&dir, external_args(&relay, user, None), &[]);
    check_throughput(&report, relay.addr, "vless", false);
    // The columns are there, with a dash rather than a number.
    assert!(markdown.contains(&format!("| external({}) | vless | up | 1 |", relay.addr)), "{markdown}");
    assert!(markdown.contains("| – | – | – |"), "{markdown}");

    let (markdown, report) = connrate(&dir, external_args(&relay, user, None), &[]);
    check_connrate(&report, relay.addr, "vless", false);
    assert!(markdown.contains("| – | – |"), "{markdown}");
    relay.assert_running();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_external_address_that_carries_nothing_is_named_in_the_error() {
    let dir = fresh_dir("dead");
    // Nothing listens here.
    let addr = free_addr().to_string();
    let out = Command::new(BENCH)
        .args(["throughput", "--runs", "1", "--bytes", "1KiB", "--startup-timeout", "1", "--external", &addr])
        .args(["--external-uuid", "0b7c2a54-0a7e-4c4e-8d53-6e0f2b9b3c21"])
        .env("TMPDIR", &dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("the external target at {addr} did not carry the 1 KiB probe")), "{stderr}");

    // The relay admits another user: it answers, but nothing arrives.
    let relay = splice_relay("5f3c3b9e-58c1-4e1f-9a53-0c3a3a0f6f11");
    let out = Command::new(BENCH)
        .args(["connrate", "--runs", "1", "--duration", "0.2", "--startup-timeout", "2"])
        .args(["--external", &relay.addr.to_string(), "--external-uuid", "0b7c2a54-0a7e-4c4e-8d53-6e0f2b9b3c21"])
        .env("TMPDIR", &dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("the external target at {} did not carry", relay.addr)), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `shardray` binary: `$SHARDRAY_BIN`, else the one cargo built beside this harness.
fn shardray_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHARDRAY_BIN") {
        return Some(p.into());
    }
    let bin = Path::new(BENCH).parent()?.join("shardray");
    bin.is_file().then_some(bin)
}

/// shardray serving VLESS over TLS for `user` with a certificate for `localhost` signed by a CA
/// written to `dir/ca.pem`; its loopback route lets it reach the harness's sink.
fn shardray_tls(bin: &Path, dir: &Path, user: &str) -> Proxy {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("chain.pem"), format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();

    let addr = free_addr();
    let config = json!({
        "log": { "loglevel": "warning" },
        "inbounds": [{
            "listen": "127.0.0.1",
            "port": addr.port(),
            "protocol": "vless",
            "settings": { "clients": [{ "id": user }], "decryption": "none" },
            "streamSettings": {
                "network": "tcp",
                "security": "tls",
                "tlsSettings": {
                    "certificates": [{
                        "certificateFile": dir.join("chain.pem"),
                        "keyFile": dir.join("key.pem")
                    }]
                }
            }
        }],
        "outbounds": [{ "tag": "direct", "protocol": "freedom" }],
        "routing": { "rules": [{ "type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct" }] }
    });
    let path = dir.join("shardray.json");
    std::fs::write(&path, config.to_string()).unwrap();
    proxy_process(Command::new(bin).args(["run", "--shards", "1", "-c"]).arg(&path), addr)
}

#[test]
fn an_external_shardray_over_tls_is_measured_by_address() {
    // `make test` builds the whole workspace, so the binary is there; a missing one is a failure,
    // not a silent skip.
    let bin = shardray_bin().expect("no shardray binary beside the harness (build it, or set SHARDRAY_BIN)");
    let dir = fresh_dir("tls");
    let user = "9d5e7f10-2b3c-4d5e-8f60-718293a4b5c6";
    let mut proxy = shardray_tls(&bin, &dir, user);
    let ca = dir.join("ca.pem").display().to_string();
    let pid = Some(proxy.pid());

    // Beside a shardray the harness starts itself, over TLS with the certificate it generates.
    let bin_arg = bin.display().to_string();
    let verified =
        ["--tls", "--external-ca", &ca, "--external-sni", "localhost", "--target", "shardray", "--shards", "1"];
    let (_, report) =
        throughput(&dir, external_args(&proxy, user, pid), &[&verified[..], &["--shardray-bin", &bin_arg]].concat());
    check_throughput(&report, proxy.addr, "vless-tls", true);
    let order: Vec<&str> = report["runs"].as_array().unwrap().iter().map(|r| r["target"].as_str().unwrap()).collect();
    let external = format!("external({})", proxy.addr);
    assert_eq!(order, ["shardray", "shardray", external.as_str(), external.as_str()], "{report}");
    assert!(report["runs"].as_array().unwrap().iter().all(|r| r["protocol"] == "vless-tls"), "{report}");

    let (_, report) = connrate(&dir, external_args(&proxy, user, None), &["--tls", "--external-insecure"]);
    check_connrate(&report, proxy.addr, "vless-tls", false);
    proxy.assert_running();

    // The CA is checked: a name the certificate does not carry fails the probe.
    let mut args = strings(&["throughput", "--runs", "1", "--bytes", "1KiB", "--startup-timeout", "2"]);
    args.extend(strings(&["--tls", "--external-ca", &ca, "--external-sni", "example.com"]));
    args.extend(external_args(&proxy, user, None));
    let out = Command::new(BENCH).args(&args).env("TMPDIR", &dir).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("the external target at {} did not carry", proxy.addr)), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
