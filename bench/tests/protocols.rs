//! `--protocol`: the harness's own client of every protocol moves verified bytes through the
//! real shardray binary. Each test runs short `throughput` (both directions) and `connrate`
//! passes, and for some an `idle` pass, with `--protocol P`, and checks what comes back: every
//! run present under the protocol's label, every byte verified (the harness fails a run that
//! moved fewer or corrupted bytes), no failed connection.
//!
//! The peers (sing-box 1.14.4, shoes 0.3.2, V2Ray 4.45.2) serve the same protocols in
//! `every_protocol_through_the_peers`, ignored unless their binaries are given.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The harness binary cargo built for these tests.
const BENCH: &str = env!("CARGO_BIN_EXE_shardray-bench");

/// shardray beside the harness, or `SHARDRAY_BIN`.
fn shardray_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHARDRAY_BIN") {
        return p.into();
    }
    let bin = Path::new(BENCH).parent().unwrap().join("shardray");
    assert!(bin.is_file(), "no shardray binary beside the harness (build it, or set SHARDRAY_BIN)");
    bin
}

/// An empty directory of the test's own.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardray-bench-proto-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the harness with `args`, saving its JSON in `dir`; returns the Markdown and the report,
/// failing the test with the harness's output if it fails.
fn bench(dir: &Path, name: &str, args: &[&str]) -> (String, Value) {
    let json = dir.join(format!("{name}.json"));
    let out = Command::new(BENCH)
        .args(args)
        .arg("--json-out")
        .arg(&json)
        .env("TMPDIR", dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (stdout, serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap())
}

/// `--target TARGETS` and each binary option.
fn target_args(targets: &str, bins: &[(&str, PathBuf)]) -> Vec<String> {
    let mut args = vec!["--target".to_owned(), targets.to_owned(), "--shards".into(), "2".into()];
    for (flag, bin) in bins {
        args.push(format!("--{flag}"));
        args.push(bin.display().to_string());
    }
    args
}

/// Throughput both ways, 2 streams of 1 MiB, through every target; each target's runs
/// carry `label`.
fn check_throughput(dir: &Path, protocol: &str, tls: bool, targets: &[String], label: &str) -> Value {
    let mut args = vec!["throughput", "--protocol", protocol, "--streams", "2", "--bytes", "1MiB", "--runs", "1"];
    args.extend(["--timeout", "30"]);
    if tls {
        args.push("--tls");
    }
    args.extend(targets.iter().map(String::as_str));
    let (markdown, report) = bench(dir, &format!("throughput-{label}"), &args);
    let runs = report["runs"].as_array().unwrap();
    assert!(!runs.is_empty(), "{report}");
    for r in runs {
        assert_eq!(r["protocol"], label, "{r}");
        assert_eq!(r["bytes_per_stream"], 1 << 20, "{r}");
        assert!(r["gbit_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["proxy_cpu_s"].as_f64().unwrap() >= 0.0, "{r}");
    }
    let dirs: Vec<&str> = runs.iter().map(|r| r["direction"].as_str().unwrap()).collect();
    assert_eq!(dirs.iter().filter(|d| **d == "up").count(), dirs.iter().filter(|d| **d == "down").count());
    assert!(markdown.contains(&format!("({label}")), "{markdown}");
    report
}

/// A short connrate pass: connections succeeded, none failed.
fn check_connrate(dir: &Path, protocol: &str, tls: bool, targets: &[String], label: &str) -> Value {
    let mut args = vec!["connrate", "--protocol", protocol, "--parallel", "2", "--duration", "0.4"];
    args.extend(["--serial-duration", "0.2", "--runs", "1"]);
    if tls {
        args.push("--tls");
    }
    args.extend(targets.iter().map(String::as_str));
    let (_, report) = bench(dir, &format!("connrate-{label}"), &args);
    for r in report["runs"].as_array().unwrap() {
        assert_eq!(r["protocol"], label, "{r}");
        let p = &r["parallel"];
        assert!(p["connections"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(p["errors"], 0, "{r}");
        assert_eq!(r["serial"]["errors"], 0, "{r}");
    }
    report
}

/// A few idle tunnels: all opened, none closed, every checked one still echoes.
fn check_idle(dir: &Path, protocol: &str, targets: &[String], label: &str) {
    let mut args = vec!["idle", "--protocol", protocol, "--tunnels", "40", "--check", "10"];
    args.extend(["--settle", "0.2", "--samples", "1", "--hold", "0.5"]);
    args.extend(targets.iter().map(String::as_str));
    let (markdown, report) = bench(dir, &format!("idle-{label}"), &args);
    for r in report["runs"].as_array().unwrap() {
        assert_eq!(r["protocol"], label, "{r}");
        assert_eq!(r["opened"], 40, "{r}");
        assert_eq!(r["closed_while_idle"], 0, "{r}");
        assert_eq!((&r["checked"], &r["check_failed"]), (&Value::from(10), &Value::from(0)), "{r}");
    }
    assert!(markdown.contains("idle "), "{markdown}");
}

fn through_shardray(protocol: &str, tls: bool, label: &str, idle: bool) {
    let dir = fresh_dir(label);
    let targets = target_args("shardray", &[("shardray-bin", shardray_bin())]);
    check_throughput(&dir, protocol, tls, &targets, label);
    check_connrate(&dir, protocol, tls, &targets, label);
    if idle {
        check_idle(&dir, protocol, &targets, label);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vless_through_shardray() {
    through_shardray("vless", false, "vless", false);
}

#[test]
fn trojan_over_tls_through_shardray() {
    through_shardray("trojan", true, "trojan-tls", false);
}

#[test]
fn vmess_through_shardray() {
    through_shardray("vmess", false, "vmess", true);
}

#[test]
fn shadowsocks_aead_through_shardray() {
    through_shardray("ss-aes-128-gcm", false, "ss-aes-128-gcm", true);
}

#[test]
fn shadowsocks_2022_through_shardray() {
    through_shardray("ss-2022", false, "ss-2022", true);
}

#[test]
fn socks_through_shardray() {
    through_shardray("socks", false, "socks", true);
}

#[test]
fn a_pair_a_target_cannot_serve_is_skipped_with_a_note() {
    let dir = fresh_dir("skip");
    let bench_bin = PathBuf::from(BENCH);
    // The splice relay serves plain VLESS only: it is left out, shardray is measured.
    let targets = target_args("shardray,splice", &[("shardray-bin", shardray_bin())]);
    let mut args = vec!["throughput", "--protocol", "socks", "--streams", "1", "--bytes", "64KiB", "--runs", "1"];
    args.extend(targets.iter().map(String::as_str));
    let (markdown, report) = bench(&dir, "skip", &args);
    assert!(markdown.contains("splice is skipped for socks"), "{markdown}");
    let names: Vec<&str> = report["runs"].as_array().unwrap().iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(names, ["shardray", "shardray"], "{report}");
    // Nothing left to measure is an error, not an empty report.
    let out = Command::new(&bench_bin)
        .args(["throughput", "--protocol", "trojan", "--target", "splice", "--runs", "1", "--bytes", "1KiB"])
        .env("TMPDIR", &dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no target left to measure trojan"), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every protocol through sing-box and shoes (and V2Ray where it serves it), beside shardray.
/// Run with `SING_BOX_BIN=... SHOES_BIN=... [V2RAY_BIN=...] cargo test -p shardray-bench
/// --test protocols -- --ignored`.
#[test]
#[ignore = "needs SING_BOX_BIN and SHOES_BIN"]
fn every_protocol_through_the_peers() {
    let bin = |var: &str| std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| panic!("set {var}"));
    let mut bins =
        vec![("shardray-bin", shardray_bin()), ("sing-box-bin", bin("SING_BOX_BIN")), ("shoes-bin", bin("SHOES_BIN"))];
    let mut names = "shardray,sing-box,shoes".to_owned();
    if let Some(v2ray) = std::env::var_os("V2RAY_BIN") {
        bins.push(("v2ray-bin", v2ray.into()));
        names.push_str(",v2ray");
    }
    let targets = target_args(&names, &bins);
    let dir = fresh_dir("peers");
    for (protocol, tls, label) in [
        ("vless", false, "vless"),
        ("vless", true, "vless-tls"),
        ("trojan", true, "trojan-tls"),
        ("vmess", false, "vmess"),
        ("ss-aes-128-gcm", false, "ss-aes-128-gcm"),
        ("ss-2022", false, "ss-2022"),
        ("socks", false, "socks"),
    ] {
        let report = check_throughput(&dir, protocol, tls, &targets, label);
        let seen: Vec<&str> =
            report["medians"].as_array().unwrap().iter().map(|m| m["target"].as_str().unwrap()).collect();
        for peer in ["shardray", "sing-box", "shoes"] {
            assert!(seen.contains(&peer), "{label}: {peer} missing: {seen:?}");
        }
        check_connrate(&dir, protocol, tls, &targets, label);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
