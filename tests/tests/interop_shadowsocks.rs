//! Interop: sing-box 1.14.4 as a Shadowsocks client for every method (classic AEAD single- and
//! multi-user with mixed methods, 2022 single-user for each method, 2022 multi-user with
//! identity headers) and V2Ray 4.45.2 as a classic AEAD client, against the real shardray
//! binary with two shards: byte-exact echoes from 1 byte to several MiB and exact per-user
//! counters. A sing-box first flight, recorded and replayed, is refused on either shard; an
//! unknown password gets nothing back.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardray_tests::echo::echo_and_count;
use shardray_tests::servers::RecordingServer;
use shardray_tests::singbox::{shadowsocks_outbound, SingBox};
use shardray_tests::v2ray::V2Ray;
use shardray_tests::vless::payload;
use shardray_tests::{loopback_api, shadowsocks_config, Shardray};

/// Sizes for the long runs: tiny, around the chunk limits (0x3FFF classic, 0xFFFF 2022) and the
/// buffers, several MiB.
const SIZES: [usize; 14] =
    [1, 2, 100, 16_383, 16_384, 16_385, 65_535, 65_536, 65_537, 100_000, 777, 500_000, (1 << 20) - 1, 3 << 20];

/// Sizes for each other cell.
const FEW: [usize; 6] = [1, 8_111, 16_385, 65_537, 1 << 20, 3 << 20];

/// base64 of `len` bytes derived from `seed`: a 2022 PSK.
fn psk(len: usize, seed: u8) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(7).wrapping_add(seed)).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn key_len(method: &str) -> usize {
    if method.contains("128") {
        16
    } else {
        32
    }
}

fn server(settings: Value) -> Shardray {
    let mut config = shadowsocks_config(settings, json!({}));
    config["api"] = loopback_api(&["StatsService"]);
    config["log"]["loglevel"] = json!("debug");
    Shardray::start(&config, 2)
}

fn through_sing_box(server: &Shardray, method: &str, password: &str, email: &str, sizes: &[usize]) {
    let sb = SingBox::start(shadowsocks_outbound(server.inbound("ss-in"), method, password));
    echo_and_count(server, email, sizes, &|d| sb.connect(d), &|| {
        format!("{method}\n{}\n{}", sb.log(), server.output())
    });
}

const CLASSIC: [&str; 4] = ["aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305", "xchacha20-ietf-poly1305"];

#[test]
fn sing_box_classic_single_user_every_method() {
    for (i, method) in CLASSIC.iter().enumerate() {
        let password = format!("single {method}");
        let settings = json!({ "method": method, "password": password, "email": "solo@example.com",
                               "network": "tcp,udp" });
        let server = server(settings);
        let sizes: &[usize] = if i == 0 { &SIZES } else { &FEW };
        through_sing_box(&server, method, &password, "solo@example.com", sizes);
        assert!(!server.output().contains("UDP"), "{}", server.output());
    }
}

#[test]
fn sing_box_classic_multi_user_mixed_methods() {
    // Two users per method (the alias for chacha among them), found by trial decryption.
    let mut clients = Vec::new();
    for (i, method) in CLASSIC.iter().chain(["chacha20-poly1305"].iter()).enumerate() {
        for j in 0..2 {
            clients.push(json!({ "method": method, "password": format!("pw {i} {j}"),
                                 "email": format!("u{i}-{j}@example.com") }));
        }
    }
    let server = server(json!({ "clients": clients }));
    for (i, method) in CLASSIC.iter().chain(["chacha20-poly1305"].iter()).enumerate() {
        // The second user of each method: the first's key fails on it first.
        let sizes: &[usize] = if i == 1 { &SIZES } else { &FEW };
        // sing-box knows only the IETF name; the server read the alias.
        let method = if *method == "chacha20-poly1305" { "chacha20-ietf-poly1305" } else { method };
        through_sing_box(&server, method, &format!("pw {i} 1"), &format!("u{i}-1@example.com"), sizes);
    }
}

#[test]
fn sing_box_2022_single_user_every_method() {
    for (i, method) in
        ["2022-blake3-aes-128-gcm", "2022-blake3-aes-256-gcm", "2022-blake3-chacha20-poly1305"].iter().enumerate()
    {
        let key = psk(key_len(method), i as u8);
        let server = server(json!({ "method": method, "password": key, "email": "solo@example.com" }));
        let sizes: &[usize] = if i == 1 { &SIZES } else { &FEW };
        through_sing_box(&server, method, &key, "solo@example.com", sizes);
    }
}

#[test]
fn sing_box_2022_multi_user_identity_headers() {
    for method in ["2022-blake3-aes-128-gcm", "2022-blake3-aes-256-gcm"] {
        let len = key_len(method);
        let server_psk = psk(len, 100);
        let clients: Vec<Value> = (0..3)
            .map(|i| json!({ "password": psk(len, i), "email": format!("m{i}@example.com"), "level": 0 }))
            .collect();
        let server = server(json!({ "method": method, "password": server_psk, "clients": clients }));
        for i in 0..3u8 {
            let sizes: &[usize] = if i == 2 { &SIZES } else { &FEW };
            let password = format!("{server_psk}:{}", psk(len, i));
            through_sing_box(&server, method, &password, &format!("m{i}@example.com"), sizes);
        }
    }
}

#[test]
fn v2ray_classic_aead_echo_and_exact_counters() {
    let methods = ["aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"];
    let clients: Vec<Value> = methods
        .iter()
        .enumerate()
        .map(|(i, m)| json!({ "method": m, "password": format!("v2 {i}"), "email": format!("v{i}@example.com") }))
        .collect();
    let server = server(json!({ "clients": clients }));
    for (i, method) in methods.iter().enumerate() {
        let outbound = json!({
            "protocol": "shadowsocks",
            "settings": { "servers": [{
                "address": "127.0.0.1", "port": server.inbound("ss-in").port(),
                "method": method, "password": format!("v2 {i}")
            }]}
        });
        let v2 = V2Ray::start(outbound);
        let sizes: &[usize] = if i == 0 { &SIZES } else { &FEW };
        echo_and_count(&server, &format!("v{i}@example.com"), sizes, &|d| v2.connect(d), &|| {
            format!("{method}\n{}\n{}", v2.log(), server.output())
        });
    }
}

#[test]
fn an_unknown_password_gets_nothing_and_reaches_nothing() {
    let server = server(json!({ "clients": [{ "method": "aes-256-gcm", "password": "right", "email": "a@b" }] }));
    let sink = RecordingServer::start(b"should never be seen");
    let sb = SingBox::start(shadowsocks_outbound(server.inbound("ss-in"), "aes-256-gcm", "wrong"));
    for attempt in 0..3u64 {
        let Ok(stream) = sb.connect(sink.addr()) else { continue };
        stream.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let _ = (&stream).write_all(&payload(5_000, attempt));
        let mut got = Vec::new();
        let _ = (&stream).read_to_end(&mut got);
        assert!(got.is_empty(), "attempt {attempt}: an unknown password got {} bytes back", got.len());
    }
    assert_eq!(sink.next(Duration::from_millis(500)), None, "an unknown password reached the destination");
    assert!(server.output().contains("rejected shadowsocks: invalid user"), "{}", server.output());
}

/// What a client sends first, recorded at a listener standing in for the server: the bytes
/// of the one connection, until it has been quiet for 300 ms.
fn record_first_flight(method: &str, password: &str, target: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let recorder = TcpListener::bind("127.0.0.1:0").unwrap();
    let sb = SingBox::start(shadowsocks_outbound(recorder.local_addr().unwrap(), method, password));
    let mut client = sb.connect(target).unwrap();
    client.write_all(payload).unwrap();
    let (mut conn, _) = recorder.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut flight = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => flight.extend_from_slice(&buf[..n]),
            Err(_) if !flight.is_empty() => break,
            Err(_) => {}
        }
    }
    flight
}

/// Sends `bytes` on a new connection, half-closes, and reads until the server closes.
fn send_raw(proxy: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn a_recorded_2022_first_flight_replayed_is_rejected_on_either_shard() {
    for (method, multi) in [("2022-blake3-aes-256-gcm", true), ("2022-blake3-chacha20-poly1305", false)] {
        let len = key_len(method);
        let (server_psk, user_psk) = (psk(len, 50), psk(len, 51));
        let settings = if multi {
            json!({ "method": method, "password": server_psk, "clients": [{ "password": user_psk, "email": "r@x" }] })
        } else {
            json!({ "method": method, "password": user_psk, "email": "r@x" })
        };
        let server = server(settings);
        let target = RecordingServer::start(b"");
        let password = if multi { format!("{server_psk}:{user_psk}") } else { user_psk.clone() };
        let flight = record_first_flight(method, &password, target.addr(), b"once only");
        assert!(!flight.is_empty(), "{method}: sing-box sent nothing");
        let proxy = server.inbound("ss-in");
        let got = send_raw(proxy, &flight);
        assert!(!got.is_empty(), "{method}: the first send is answered (the response header)");
        assert_eq!(target.next(Duration::from_secs(2)).as_deref(), Some(&b"once only"[..]), "{method}");
        // Replays from new connections: the kernel sends them to either shard; none may pass.
        for attempt in 0..8 {
            let got = send_raw(proxy, &flight);
            assert!(got.is_empty(), "{method}: replay {attempt} got {} bytes back", got.len());
        }
        assert_eq!(target.next(Duration::from_millis(300)), None, "{method}: a replay reached the destination");
        assert!(server.output().contains("rejected shadowsocks: replayed salt"), "{}", server.output());
    }
}
