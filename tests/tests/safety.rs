//! Destination safety: no user reaches the server's loopback or private addresses, nor the
//! API, unless a routing rule names the destination explicitly.

use std::time::Duration;

use serde_json::json;
use shardray_tests::api::ApiClient;
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::{vless, vless_config, wait_until, Shardray, ALICE};

fn alice() -> serde_json::Value {
    json!([{ "id": ALICE, "email": "alice@example.com" }])
}

/// Sends a request through the proxy and reports whether anything came back.
fn reached(proxy: std::net::SocketAddr, dest: shardray_wire::addr::Destination) -> bool {
    use std::io::Write;
    let mut s = vless::connect(proxy).unwrap();
    let mut first = vless::request_to(ALICE, dest);
    first.extend_from_slice(b"hello");
    s.write_all(&first).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    !vless::read_all(&mut s).unwrap_or_default().is_empty()
}

#[test]
fn loopback_is_refused_without_a_rule_naming_it() {
    let target = RecordingServer::start(b"answer");
    let mut config = vless_config(alice(), json!({}));
    // A catch-all rule by inbound is not an explicit permission for private addresses.
    config["routing"]["rules"] = json!([{ "type": "field", "inboundTag": ["vless-in"], "outboundTag": "direct" }]);
    config["log"] = json!({ "loglevel": "info", "access": "" });
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("vless-in");
    let port = target.addr().port();
    for host in ["127.0.0.1", "127.0.0.2", "::1", "0.0.0.0"] {
        let dest = shardray_wire::addr::Destination { addr: shardray_wire::addr::Address::parse(host).unwrap(), port };
        assert!(!reached(proxy, dest), "{host} was reached");
    }
    // A name that resolves to loopback is refused just the same.
    assert!(!reached(proxy, vless::domain("localhost", port)));
    assert_eq!(target.next(Duration::from_millis(300)), None);

    // Each refusal is logged with its reason (access log and error log) and counted.
    let access = format!("rejected tcp:127.0.0.1:{port} [vless-in >> direct] {PRIVATE}");
    let error = format!("to localhost:{port}: refused: {PRIVATE}");
    assert!(wait_until(Duration::from_secs(5), || server.output().contains(&access)), "{}", server.output());
    assert!(wait_until(Duration::from_secs(5), || server.output().contains(&error)), "{}", server.output());
    let api = ApiClient::connect(server.api.unwrap());
    assert_eq!(api.get("refused>>>private_destination", false).unwrap(), 5);
    assert_eq!(api.get("refused>>>api_address", false).unwrap(), 0);
}

const PRIVATE: &str = "loopback/private destination; add a routing rule naming it to allow it";

#[test]
fn a_rule_naming_the_address_or_the_name_allows_it() {
    let echo = EchoServer::start();
    let port = echo.addr().port();

    // By IP: the fixture's rule 127.0.0.1/32 → direct; "localhost" resolves to it.
    let server = Shardray::start(&vless_config(alice(), json!({})), 1);
    let proxy = server.inbound("vless-in");
    assert!(reached(proxy, echo.addr().into()));
    assert!(reached(proxy, vless::domain("localhost", port)));
    // 127.0.0.2 is loopback too, but outside the rule.
    let other =
        shardray_wire::addr::Destination { addr: shardray_wire::addr::Address::parse("127.0.0.2").unwrap(), port };
    assert!(!reached(proxy, other));
    drop(server);

    // By name: full:localhost → direct permits the name, not the bare IP.
    let mut config = vless_config(alice(), json!({}));
    config["routing"]["rules"] = json!([{ "type": "field", "domain": ["full:localhost"], "outboundTag": "direct" }]);
    let server = Shardray::start(&config, 1);
    let proxy = server.inbound("vless-in");
    assert!(reached(proxy, vless::domain("localhost", port)));
    assert!(!reached(proxy, echo.addr().into()));
}

#[test]
fn the_api_is_never_a_destination_even_when_loopback_is_allowed() {
    let mut config = vless_config(alice(), json!({}));
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    config["routing"]["rules"] = json!([{ "type": "field", "ip": ["127.0.0.0/8"], "outboundTag": "direct" }]);
    config["log"] = json!({ "loglevel": "info" });
    let server = Shardray::start(&config, 2);
    let api = server.api.unwrap();
    // A raw HTTP/2 preface to the API port would get a SETTINGS frame back if it got through.
    use std::io::Write;
    let mut s = vless::connect(server.inbound("vless-in")).unwrap();
    let mut first = vless::request(ALICE, api);
    first.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    s.write_all(&first).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(vless::read_all(&mut s).unwrap_or_default().is_empty(), "the API answered through the proxy");
    // The API itself still works for its real clients, and counts the refusal.
    let client = ApiClient::connect(api);
    assert!(wait_until(Duration::from_secs(5), || client.get("refused>>>api_address", false).unwrap() == 1));
    assert!(wait_until(Duration::from_secs(5), || server.output().contains("refused: the API's own address")));
}

#[test]
fn blackhole_routes_close_without_reaching_anything() {
    let target = RecordingServer::start(b"answer");
    let mut config = vless_config(alice(), json!({}));
    config["routing"]["rules"] = json!([
        { "type": "field", "port": target.addr().port().to_string(), "outboundTag": "blocked" },
        { "type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct" }
    ]);
    let server = Shardray::start(&config, 1);
    assert!(!reached(server.inbound("vless-in"), target.addr().into()));
    assert_eq!(target.next(Duration::from_millis(300)), None);
}
