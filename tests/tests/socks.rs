//! The SOCKS inbound against the real binary with two shards: our own SOCKS5/4/4a client on the
//! wire codec, exact counters per account and for anonymous sessions, the refusals Xray
//! answers (bad password, no acceptable method, SOCKS4 under a password, UDP ASSOCIATE, BIND),
//! probes that get nothing back, HTTP proxy requests on the same port, and share links.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::proxy::{echo_through, http_connect, socks5, socks_config};
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::vless::{self, payload};
use shardray_tests::{loopback_api, run_cli, wait_until, Shardray};
use shardray_wire::addr::Destination;

/// A SOCKS inbound with `auth` and two accounts: alice with an email, bob without (counted
/// under his username, as Xray counts him); a StatsService API; a 1 s handshake timeout.
fn config(auth: &str) -> Value {
    let accounts = json!([
        { "user": "alice", "pass": "alice's socks password", "email": "alice@example.com" },
        { "user": "bob", "pass": "hunter2", "level": 0 }
    ]);
    let mut config = socks_config(json!({ "auth": auth, "accounts": accounts, "udp": true }), json!({}));
    config["api"] = loopback_api(&["StatsService"]);
    config["policy"]["levels"]["0"]["handshake"] = json!(1);
    config
}

const ALICE: Option<(&str, &str)> = Some(("alice", "alice's socks password"));

fn counters(api: &ApiClient, who: &str) -> (Option<i64>, Option<i64>) {
    let all = api.query(&format!("user>>>{who}>>>traffic"), false);
    (
        all.get(&format!("user>>>{who}>>>traffic>>>uplink")).copied(),
        all.get(&format!("user>>>{who}>>>traffic>>>downlink")).copied(),
    )
}

#[test]
fn password_accounts_relay_on_both_shards_and_count_exactly() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config("password"), 2);
    let proxy = server.inbound("socks-in");
    let dest = Destination::from(echo.addr());
    let mut total = 0i64;
    for (i, len) in [1usize, 100, 16_385, 1 << 20].into_iter().enumerate() {
        let data = payload(len, i as u64);
        let mut s = socks5(proxy, ALICE, dest.clone()).unwrap();
        assert!(echo_through(&mut s, &data).unwrap() == data, "{len} bytes");
        total += len as i64;
    }
    // Many at once: the kernel spreads them over both shards.
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let dest = dest.clone();
            s.spawn(move || {
                let data = payload(10_000, 100 + t);
                let mut conn = socks5(proxy, ALICE, dest).unwrap();
                assert!(echo_through(&mut conn, &data).unwrap() == data, "thread {t}");
            });
        }
    });
    total += 16 * 10_000;
    let mut bob = socks5(proxy, Some(("bob", "hunter2")), dest).unwrap();
    assert_eq!(echo_through(&mut bob, b"bob's bytes").unwrap(), b"bob's bytes");
    drop(bob);
    let api = ApiClient::connect(server.api.unwrap());
    let settled = wait_until(Duration::from_secs(5), || {
        counters(&api, "alice@example.com") == (Some(total), Some(total))
            && counters(&api, "bob") == (Some(11), Some(11))
    });
    assert!(
        settled,
        "alice {:?} (expected {total}), bob {:?}",
        counters(&api, "alice@example.com"),
        counters(&api, "bob")
    );
    assert_eq!(api.get("inbound>>>socks-in>>>traffic>>>uplink", false).unwrap(), total + 11);
    assert_eq!(api.get("outbound>>>direct>>>traffic>>>downlink", false).unwrap(), total + 11);
}

/// A SOCKS4 request (4a when `domain` is given: the address 0.0.0.1 and the name after the id).
fn socks4_request(dest: SocketAddr, domain: Option<&str>) -> Vec<u8> {
    let SocketAddr::V4(v4) = dest else { panic!("IPv4 only") };
    let mut out = vec![4, 1];
    out.extend_from_slice(&dest.port().to_be_bytes());
    out.extend_from_slice(&if domain.is_some() { [0, 0, 0, 1] } else { v4.ip().octets() });
    out.extend_from_slice(b"anyone\0");
    if let Some(d) = domain {
        out.extend_from_slice(d.as_bytes());
        out.push(0);
    }
    out
}

#[test]
fn without_auth_socks5_socks4_and_4a_relay_as_anonymous_sessions() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config("noauth"), 2);
    let proxy = server.inbound("socks-in");
    let mut s = socks5(proxy, None, Destination::from(echo.addr())).unwrap();
    assert_eq!(echo_through(&mut s, &payload(5_000, 1)).unwrap(), payload(5_000, 1));
    drop(s);
    for domain in [None, Some("127.0.0.1")] {
        let mut s = vless::connect(proxy).unwrap();
        s.write_all(&socks4_request(echo.addr(), domain)).unwrap();
        let mut reply = [0u8; 8];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(reply, [0, 90, 0, 0, 0, 0, 0, 0], "SOCKS4 granted ({domain:?})");
        assert_eq!(echo_through(&mut s, b"four").unwrap(), b"four");
    }
    let api = ApiClient::connect(server.api.unwrap());
    assert!(wait_until(Duration::from_secs(5), || api.get("inbound>>>socks-in>>>traffic>>>uplink", false).ok()
        == Some(5_008)));
    // No account asked for, no user charged (an anonymous session, as dokodemo-door's).
    let users = api.query("user>>>", false);
    assert!(users.values().all(|&v| v == 0), "{users:?}");
}

/// Writes `bytes`, half-closes, and returns everything until the server closes.
fn answer_to(proxy: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = vless::connect(proxy).unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    vless::read_all(&mut s).unwrap_or_default()
}

#[test]
fn refusals_get_the_reply_xray_sends_and_reach_nothing() {
    let target = RecordingServer::start(b"");
    let server = Shardray::start(&config("password"), 2);
    let proxy = server.inbound("socks-in");
    // A wrong password: method 2 chosen, then status 0xFF, then the close.
    let mut wrong = vec![5, 1, 2, 1, 5];
    wrong.extend_from_slice(b"alice\x05wrong");
    assert_eq!(answer_to(proxy, &wrong), [5, 2, 1, 0xff]);
    // An unknown user likewise; an offer of "no authentication" only gets "no acceptable".
    let mut unknown = vec![5, 1, 2, 1, 3];
    unknown.extend_from_slice(b"eve\x07hunter2");
    assert_eq!(answer_to(proxy, &unknown), [5, 2, 1, 0xff]);
    assert_eq!(answer_to(proxy, &[5, 1, 0]), [5, 0xff]);
    // SOCKS4 carries no password: rejected.
    assert_eq!(answer_to(proxy, &socks4_request(target.addr(), None)), [0, 91, 0, 0, 0, 0, 0, 0]);
    let err = socks5(proxy, Some(("alice", "nope")), Destination::from(target.addr())).unwrap_err();
    assert!(err.to_string().contains("255"), "{err}");
    assert_eq!(target.next(Duration::from_millis(500)), None, "the destination was reached");
    let api = ApiClient::connect(server.api.unwrap());
    assert!(wait_until(Duration::from_secs(2), || api.get("refused>>>bad_request", false).ok() == Some(5)));
    let out = server.output();
    assert!(out.contains("rejected socks: invalid username or password"), "{out}");
    assert!(out.contains("rejected socks: SOCKS4 is not allowed when a password is required"), "{out}");
}

#[test]
fn udp_associate_without_udp_and_bind_get_command_not_supported_and_are_counted() {
    let mut config = config("noauth");
    config["inbounds"][0]["settings"]["udp"] = json!(false);
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("socks-in");
    for command in [3u8, 2] {
        let started = Instant::now();
        let reply = answer_to(proxy, &[5, 1, 0, 5, command, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(reply, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0], "command {command}");
        assert!(started.elapsed() < Duration::from_millis(800), "closed at once");
    }
    let api = ApiClient::connect(server.api.unwrap());
    assert!(wait_until(Duration::from_secs(2), || api.get("refused>>>unsupported_command", false).ok() == Some(2)));
    assert!(server.output().contains("rejected socks: UDP ASSOCIATE with udp off"), "{}", server.output());
}

/// Writes `bytes` without closing and reads until the server closes: what came back, and when.
fn probe(proxy: SocketAddr, bytes: &[u8]) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut s = vless::connect(proxy).unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    (got, started.elapsed())
}

#[test]
fn probes_get_nothing_back_and_are_drained() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config("password"), 2);
    let proxy = server.inbound("socks-in");
    // Noise that is neither SOCKS nor HTTP, a truncated greeting, a truncated request head.
    let mut probes: Vec<Vec<u8>> = (1..=24usize)
        .map(|len| {
            let mut p = payload(len, len as u64);
            p[0] |= 0x80;
            p
        })
        .collect();
    probes.extend([
        vec![5],
        vec![5, 2, 2],
        b"GET http://127.0.0.1/ HTTP/1.1\r\n".to_vec(),
        vec![0x16, 3, 1, 0, 200, 1],
    ]);
    std::thread::scope(|s| {
        for p in &probes {
            s.spawn(move || {
                let (got, took) = probe(proxy, p);
                assert!(got.is_empty(), "{p:?} got {got:?}");
                assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2600), "{p:?}: {took:?}");
            });
        }
    });
    let mut s = socks5(proxy, ALICE, Destination::from(echo.addr())).unwrap();
    assert_eq!(echo_through(&mut s, b"still serving").unwrap(), b"still serving");
    assert!(!server.output().contains("panicked"));
}

#[test]
fn http_proxy_requests_on_the_socks_port_use_the_same_accounts() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config("password"), 2);
    let proxy = server.inbound("socks-in");
    let mut s = http_connect(proxy, ALICE, Destination::from(echo.addr())).unwrap();
    assert_eq!(echo_through(&mut s, b"over http").unwrap(), b"over http");
    let refused = http_connect(proxy, Some(("alice", "wrong")), Destination::from(echo.addr())).unwrap_err();
    assert!(refused.to_string().starts_with("HTTP/1.1 407"), "{refused}");
}

#[test]
fn links_are_printed_for_socks_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config("password");
    config["inbounds"][0]["port"] = json!(1080);
    let file = dir.path().join("config.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let (status, out) = run_cli(&["link", "-c", file.to_str().unwrap(), "--host", "proxy.example"]);
    assert!(status.success(), "{out}");
    // v2rayN's form: base64("alice:alice's socks password"), percent-encoded.
    assert!(
        out.lines().any(|l| l == "socks://YWxpY2U6YWxpY2UncyBzb2NrcyBwYXNzd29yZA%3D%3D@proxy.example:1080#alice%40example.com"),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "socks://Ym9iOmh1bnRlcjI%3D@proxy.example:1080#bob"), "{out}");
}
