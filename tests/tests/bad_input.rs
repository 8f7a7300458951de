//! Hostile input on a VLESS port: noise, truncated headers, wrong users, oversized fields.
//! No reply may tell a prober why, the shards must keep serving, and with a fallback the
//! probe's exact bytes must reach it.

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use serde_json::json;
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::{vless, vless_config, Shardray, ALICE};

/// Sends `bytes`, half-closes, and returns everything the server sent back.
fn probe(proxy: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = vless::connect(proxy).unwrap();
    // The server may close before reading everything; that is a fine answer too.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    vless::read_all(&mut s).unwrap_or_default()
}

fn alice() -> serde_json::Value {
    json!([{ "id": ALICE, "email": "alice@example.com" }])
}

/// Proves both shards still serve: many fresh connections all round-trip.
fn still_serves(proxy: SocketAddr, echo: SocketAddr) {
    for i in 0..16u64 {
        let data = vless::payload(1000, i);
        assert_eq!(vless::round_trip(proxy, ALICE, echo, &data).unwrap(), data);
    }
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    vless::payload(len, seed)
}

#[test]
fn random_bytes_get_no_reply_and_the_server_keeps_serving() {
    let echo = EchoServer::start();
    let server = Shardray::start(&vless_config(alice(), json!({})), 2);
    let proxy = server.inbound("vless-in");
    for i in 0..100u64 {
        let mut bytes = noise(i, (i as usize * 37) % 2000 + 1);
        if i % 2 == 0 {
            bytes[0] = 0; // a valid version byte, so the decoder goes deeper
        }
        assert!(probe(proxy, &bytes).is_empty(), "probe {i} got a reply");
    }
    still_serves(proxy, echo.addr());
}

#[test]
fn truncated_headers_at_every_offset_get_no_reply() {
    let echo = EchoServer::start();
    let server = Shardray::start(&vless_config(alice(), json!({})), 2);
    let proxy = server.inbound("vless-in");
    for header in [vless::request(ALICE, echo.addr()), vless::request_to(ALICE, vless::domain("example.com", 443))] {
        for cut in 0..header.len() {
            assert!(probe(proxy, &header[..cut]).is_empty(), "cut at {cut} got a reply");
        }
    }
    still_serves(proxy, echo.addr());
}

#[test]
fn wrong_uuid_is_refused_without_reaching_the_destination() {
    let target = RecordingServer::start(b"");
    let echo = EchoServer::start();
    let server = Shardray::start(&vless_config(alice(), json!({})), 2);
    let proxy = server.inbound("vless-in");
    let mut bytes = vless::request("11111111-2222-4333-8444-555555555555", target.addr());
    bytes.extend_from_slice(b"secret payload");
    assert!(probe(proxy, &bytes).is_empty());
    // Only the user id's 17 bytes: refused before the rest arrives.
    assert!(probe(proxy, &bytes[..17]).is_empty());
    assert_eq!(target.next(Duration::from_millis(500)), None, "the destination was reached");
    still_serves(proxy, echo.addr());
}

#[test]
fn oversized_and_malformed_fields_do_not_crash_a_shard() {
    let echo = EchoServer::start();
    let server = Shardray::start(&vless_config(alice(), json!({})), 2);
    let proxy = server.inbound("vless-in");
    let uuid: uuid::Uuid = ALICE.parse().unwrap();
    let mut base = vec![0u8];
    base.extend_from_slice(uuid.as_bytes());
    let cases: Vec<Vec<u8>> = vec![
        // A domain longer than 255 bytes: the length byte says 255, 400 bytes follow.
        [&base[..], &[0, 1, 0, 80, 2, 255], &[b'a'; 400][..]].concat(),
        // Domain length 0.
        [&base[..], &[0, 1, 0, 80, 2, 0]].concat(),
        // Address type 9.
        [&base[..], &[0, 1, 0, 80, 9, 1, 2, 3, 4]].concat(),
        // Command 7.
        [&base[..], &[0, 7, 0, 80, 1, 127, 0, 0, 1]].concat(),
        // Addons longer than what follows, and addons with a bad varint.
        [&base[..], &[200, 1, 2, 3]].concat(),
        [&base[..], &[3, 0x0a, 0xff, 0xff, 1, 0, 80, 1, 127, 0, 0, 1]].concat(),
        // A UDP or mux (XUDP) request that sends no packet gets nothing back.
        [&base[..], &[0, 2, 0, 53, 1, 127, 0, 0, 1]].concat(),
        [&base[..], &[0, 3]].concat(),
        // A domain that is not UTF-8.
        [&base[..], &[0, 1, 0, 80, 2, 2, 0xff, 0xfe]].concat(),
    ];
    for (i, case) in cases.iter().enumerate() {
        assert!(probe(proxy, case).is_empty(), "case {i} got a reply");
    }
    still_serves(proxy, echo.addr());
}

#[test]
fn with_a_fallback_the_probe_bytes_arrive_unchanged_and_the_answer_returns() {
    let site = RecordingServer::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let echo = EchoServer::start();
    let fallbacks = json!({ "settings": { "fallbacks": [{ "dest": site.addr().port() }] } });
    let server = Shardray::start(&vless_config(alice(), fallbacks), 2);
    let proxy = server.inbound("vless-in");

    let mut wrong_user = vless::request("11111111-2222-4333-8444-555555555555", echo.addr());
    wrong_user.extend_from_slice(b"after the header");
    let probes: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
        noise(42, 3000),
        [&[0u8][..], &noise(7, 100)[..]].concat(),
        wrong_user,
        vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
    ];
    for (i, bytes) in probes.iter().enumerate() {
        let reply = probe(proxy, bytes);
        assert_eq!(reply, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "probe {i}");
        let seen = site.next(Duration::from_secs(5)).expect("fallback got the connection");
        assert_eq!(seen, *bytes, "probe {i}: the fallback saw other bytes");
    }
    still_serves(proxy, echo.addr());
}

#[test]
fn fallback_by_path_and_proxy_protocol() {
    let root = RecordingServer::start(b"root");
    let ws = RecordingServer::start(b"ws");
    let fallbacks = json!({ "settings": { "fallbacks": [
        { "dest": root.addr().to_string() },
        { "path": "/ws", "dest": ws.addr().port(), "xver": 1 }
    ] } });
    let server = Shardray::start(&vless_config(alice(), fallbacks), 1);
    let proxy = server.inbound("vless-in");

    assert_eq!(probe(proxy, b"GET /index.html HTTP/1.1\r\n\r\n"), b"root");
    assert_eq!(root.next(Duration::from_secs(5)).unwrap(), b"GET /index.html HTTP/1.1\r\n\r\n");

    let request = b"GET /ws?ed=2048 HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(probe(proxy, request), b"ws");
    let seen = ws.next(Duration::from_secs(5)).unwrap();
    let text = String::from_utf8_lossy(&seen).into_owned();
    let (proxy_line, rest) = text.split_once("\r\n").unwrap();
    assert!(proxy_line.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "), "{proxy_line}");
    assert!(proxy_line.ends_with(&format!(" {}", proxy.port())), "{proxy_line}");
    assert_eq!(rest.as_bytes(), request);
}
