//! Access and error logs, written as upstream writes them.

use std::time::Duration;

use serde_json::json;
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, vless_config, wait_until, Shardray, ALICE};

#[test]
fn access_and_error_logs_go_to_their_files() {
    let echo = EchoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let error = dir.path().join("error.log");
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["log"] = json!({ "loglevel": "info", "access": access, "error": error });
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("vless-in");
    vless::round_trip(proxy, ALICE, echo.addr(), b"hi").unwrap();
    let mut bad = vless::request("11111111-2222-4333-8444-555555555555", echo.addr());
    bad.extend_from_slice(b"x");
    let _ = vless::round_trip(proxy, "11111111-2222-4333-8444-555555555555", echo.addr(), b"x");

    let accepted = format!("accepted tcp:{} [vless-in >> direct] email: alice@example.com", echo.addr());
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || read(&access).contains(&accepted)
            && read(&access).contains("rejected vless: invalid user")),
        "access log:\n{}",
        read(&access)
    );
    let line = read(&access).lines().find(|l| l.contains("accepted")).unwrap().to_owned();
    // "2006/01/02 15:04:05.000000 from 127.0.0.1:PORT accepted …"
    let (date, rest) = line.split_once(' ').unwrap();
    assert_eq!(date.len(), 10, "{line}");
    assert_eq!(date.as_bytes()[4], b'/', "{line}");
    assert!(rest.split_once(' ').unwrap().1.starts_with("from 127.0.0.1:"), "{line}");
    assert!(read(&error).contains("[Warning] shardray"), "error log:\n{}", read(&error));
    assert!(!server.output().contains("accepted tcp:"), "access lines leaked to stdout");
}

#[test]
fn none_turns_logs_off() {
    let echo = EchoServer::start();
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["log"] = json!({ "loglevel": "none", "access": "none" });
    let server = Shardray::start(&config, 1);
    vless::round_trip(server.inbound("vless-in"), ALICE, echo.addr(), b"hi").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let out = server.output();
    assert!(!out.contains("accepted") && !out.contains("[Warning]"), "{out}");
}

#[test]
fn default_logs_go_to_stdout() {
    let echo = EchoServer::start();
    let config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    let server = Shardray::start(&config, 1);
    vless::round_trip(server.inbound("vless-in"), ALICE, echo.addr(), b"hi").unwrap();
    assert!(wait_until(Duration::from_secs(5), || server.output().contains("accepted tcp:")), "{}", server.output());
}
