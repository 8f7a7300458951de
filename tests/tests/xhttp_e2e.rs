//! shardray's XHTTP outbound against shardray's XHTTP inbound, both the real binary on 2
//! shards: a client process (dokodemo-door inbounds, one VLESS-over-XHTTP outbound per mode)
//! and a server process (VLESS over XHTTP, mode `auto`) in front of an echo server. Every
//! mode (packet-up, stream-up, stream-one) over HTTP/1.1 in the clear, HTTP/1.1 over TLS
//! (ALPN `http/1.1`) and HTTP/2 over TLS (no ALPN configured: h2, as Xray's client picks):
//! bulk data both ways byte for byte, several sessions at once, the server's per-user counters
//! equal to the payload, and removing a user through the API ending its live session. No
//! independent XHTTP client runs on these machines (sing-box 1.14 and shoes 0.3.2 have none):
//! the wire format is checked against Xray's source in the unit tests.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::tls::SelfSigned;
use shardray_tests::vless::payload;
use shardray_tests::{loopback_api, vless_config, wait_until, Shardray};

const MODES: [&str; 3] = ["packet-up", "stream-up", "stream-one"];

/// One user per mode, so each mode's counters stand alone.
const USERS: [(&str, &str); 3] = [
    ("packet@example.com", "6d8ba1a4-3bde-4b1e-9a7f-0d3c2a1b5e01"),
    ("streamup@example.com", "6d8ba1a4-3bde-4b1e-9a7f-0d3c2a1b5e02"),
    ("streamone@example.com", "6d8ba1a4-3bde-4b1e-9a7f-0d3c2a1b5e03"),
];

/// How the client reaches the server.
#[derive(Clone, Copy, Debug)]
enum Carrier {
    Http1,
    Http1Tls,
    H2Tls,
}

/// The path both ends are configured with: beyond ASCII, so the client must send it escaped
/// (as Go's client does) and the server match it decoded (as Go's server does).
const PATH: &str = "/xh-ü";

/// The server: VLESS over XHTTP at [`PATH`], any mode, TLS for the TLS carriers (no ALPN set:
/// it offers h2 and http/1.1, as Xray's).
fn server(carrier: Carrier, cert: &SelfSigned) -> Shardray {
    let clients: Vec<Value> = USERS.iter().map(|(email, id)| json!({ "id": id, "email": email })).collect();
    let mut c = vless_config(json!(clients), json!({}));
    let mut stream = match carrier {
        Carrier::Http1 => json!({}),
        Carrier::Http1Tls | Carrier::H2Tls => cert.stream_settings("localhost", &[]),
    };
    stream["network"] = json!("xhttp");
    stream["xhttpSettings"] = json!({ "path": PATH });
    c["inbounds"][0]["streamSettings"] = stream;
    c["api"] = loopback_api(&["StatsService", "HandlerService"]);
    c["log"]["loglevel"] = json!("info");
    Shardray::start(&c, 2)
}

/// The client: a door per mode to `echo`, each routed to its own VLESS outbound over XHTTP
/// in that mode to `server`.
fn client(carrier: Carrier, server: SocketAddr, echo: SocketAddr) -> Shardray {
    let mut inbounds = Vec::new();
    let mut outbounds = Vec::new();
    let mut rules = Vec::new();
    for (i, mode) in MODES.iter().enumerate() {
        inbounds.push(json!({
            "tag": format!("door-{mode}"), "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
            "settings": { "address": echo.ip().to_string(), "port": echo.port(), "network": "tcp" }
        }));
        let mut stream = json!({
            "network": "xhttp",
            // A query on the path travels with every request; small POSTs make packet-up's
            // numbering and reassembly work hard.
            "xhttpSettings": { "path": format!("{PATH}?from=test"), "mode": mode, "extra": { "scMaxEachPostBytes": 100000 } }
        });
        match carrier {
            Carrier::Http1 => {}
            Carrier::Http1Tls => {
                stream["security"] = json!("tls");
                stream["tlsSettings"] =
                    json!({ "serverName": "localhost", "allowInsecure": true, "alpn": ["http/1.1"] });
            }
            Carrier::H2Tls => {
                stream["security"] = json!("tls");
                stream["tlsSettings"] = json!({ "serverName": "localhost", "allowInsecure": true });
            }
        }
        outbounds.push(json!({
            "tag": format!("out-{mode}"), "protocol": "vless",
            "settings": { "vnext": [{ "address": "127.0.0.1", "port": server.port(),
                                      "users": [{ "id": USERS[i].1, "encryption": "none" }] }] },
            "streamSettings": stream
        }));
        rules.push(
            json!({ "type": "field", "inboundTag": [format!("door-{mode}")], "outboundTag": format!("out-{mode}") }),
        );
    }
    let config = json!({
        "log": { "loglevel": "info" },
        "inbounds": inbounds,
        "outbounds": outbounds,
        "routing": { "rules": rules }
    });
    Shardray::start(&config, 2)
}

/// `data` to `door` while reading as many bytes back; the write side is half-closed after.
fn exchange(door: SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(door).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut write_half = stream.try_clone().unwrap();
    let data = data.to_vec();
    let mut got = vec![0u8; data.len()];
    let writer = std::thread::spawn(move || {
        for piece in data.chunks(50_000) {
            write_half.write_all(piece).unwrap();
        }
        let _ = write_half.shutdown(Shutdown::Write);
    });
    let mut n = 0;
    while n < got.len() {
        match (&stream).read(&mut got[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    got.truncate(n);
    writer.join().unwrap();
    got
}

/// Every mode at once over `carrier`: three sessions per mode, 1 MiB and more each way, byte
/// for byte, and each mode's user counted exactly on the server.
fn every_mode_over(carrier: Carrier) {
    let dir = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(dir.path(), &["localhost"]);
    let echo = EchoServer::start();
    let server = server(carrier, &cert);
    let client = client(carrier, server.inbound("vless-in"), echo.addr());
    let sessions: Vec<_> = MODES
        .iter()
        .flat_map(|mode| (0..3).map(move |k| (*mode, k)))
        .map(|(mode, k)| {
            let door = client.inbound(&format!("door-{mode}"));
            let data = payload((1 << 20) + 4099 * k, k as u64 + mode.len() as u64);
            std::thread::spawn(move || (mode, data.len(), exchange(door, &data) == data))
        })
        .collect();
    let mut totals = std::collections::HashMap::new();
    for s in sessions {
        let (mode, len, same) = s.join().unwrap();
        assert!(same, "{carrier:?} {mode}: echo differs\nclient:\n{}\nserver:\n{}", client.output(), server.output());
        *totals.entry(mode).or_insert(0i64) += len as i64;
    }
    let api = ApiClient::connect(server.api.unwrap());
    for (i, mode) in MODES.iter().enumerate() {
        let email = USERS[i].0;
        let (up, down) = (format!("user>>>{email}>>>traffic>>>uplink"), format!("user>>>{email}>>>traffic>>>downlink"));
        let want = totals[mode];
        let mut last = Default::default();
        let exact = wait_until(Duration::from_secs(10), || {
            last = api.query(&format!("user>>>{email}>>>traffic"), false);
            last.get(&up) == Some(&want) && last.get(&down) == Some(&want)
        });
        assert!(exact, "{carrier:?} {mode}: counters should be {want} both ways, got {last:?}");
    }
}

#[test]
fn every_mode_over_http1() {
    every_mode_over(Carrier::Http1);
}

#[test]
fn every_mode_over_http1_with_tls() {
    every_mode_over(Carrier::Http1Tls);
}

#[test]
fn every_mode_over_h2_with_tls() {
    every_mode_over(Carrier::H2Tls);
}

/// A live session in each mode, its user removed through the server's API: each door's
/// connection ends soon after, and new sessions of the removed users carry nothing.
#[test]
fn removing_the_user_ends_its_live_session_in_every_mode() {
    for carrier in [Carrier::H2Tls, Carrier::Http1] {
        let dir = tempfile::tempdir().unwrap();
        let cert = SelfSigned::generate(dir.path(), &["localhost"]);
        let echo = EchoServer::start();
        let server = server(carrier, &cert);
        let client = client(carrier, server.inbound("vless-in"), echo.addr());
        let api = ApiClient::connect(server.api.unwrap());
        let mut live = Vec::new();
        for mode in MODES {
            let mut s = TcpStream::connect(client.inbound(&format!("door-{mode}"))).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(b"before").unwrap();
            let mut got = [0u8; 6];
            s.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"before", "{carrier:?} {mode}");
            live.push((mode, s));
        }
        for (email, _) in USERS {
            api.remove_user("vless-in", email).unwrap();
        }
        let started = Instant::now();
        for (mode, mut s) in live {
            let mut rest = [0u8; 16];
            let ended = matches!(s.read(&mut rest), Ok(0) | Err(_));
            assert!(ended, "{carrier:?} {mode}: the session goes on after its user was removed");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{carrier:?} {mode}: ended only after {:?}",
                started.elapsed()
            );
        }
        for mode in MODES {
            let got = exchange(client.inbound(&format!("door-{mode}")), b"after");
            assert!(got.is_empty(), "{carrier:?} {mode}: a removed user's new session carried {got:?}");
        }
    }
}

/// The transport sits below the protocol: a Trojan outbound over XHTTP (h2, TLS, packet-up by
/// `auto`) to a Trojan inbound over XHTTP carries an echo byte for byte, counted exactly.
#[test]
fn trojan_rides_xhttp_too() {
    let dir = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(dir.path(), &["localhost"]);
    let echo = EchoServer::start();
    let mut c = shardray_tests::trojan_config(
        json!([{ "password": shardray_tests::ALICE_PASSWORD, "email": "alice@example.com" }]),
        json!({}),
    );
    let mut stream = cert.stream_settings("localhost", &[]);
    stream["network"] = json!("xhttp");
    stream["xhttpSettings"] = json!({ "path": "/tj" });
    c["inbounds"][0]["streamSettings"] = stream;
    c["api"] = loopback_api(&["StatsService"]);
    let server = Shardray::start(&c, 2);
    let to = server.inbound("trojan-in");
    let config = json!({
        "log": { "loglevel": "info" },
        "inbounds": [{ "tag": "door", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
            "settings": { "address": echo.addr().ip().to_string(), "port": echo.addr().port(), "network": "tcp" } }],
        "outbounds": [{ "tag": "out", "protocol": "trojan",
            "settings": { "servers": [{ "address": "127.0.0.1", "port": to.port(), "password": shardray_tests::ALICE_PASSWORD }] },
            "streamSettings": { "network": "xhttp", "xhttpSettings": { "path": "/tj" }, "security": "tls",
                "tlsSettings": { "serverName": "localhost", "allowInsecure": true } } }]
    });
    let client = Shardray::start(&config, 2);
    let data = payload(700_000, 9);
    let got = exchange(client.inbound("door"), &data);
    assert!(
        got == data,
        "echo differs ({} bytes back)\nclient:\n{}\nserver:\n{}",
        got.len(),
        client.output(),
        server.output()
    );
    let api = ApiClient::connect(server.api.unwrap());
    let want = data.len() as i64;
    let mut last = Default::default();
    let exact = wait_until(Duration::from_secs(10), || {
        last = api.query("user>>>alice@example.com>>>traffic", false);
        last.get("user>>>alice@example.com>>>traffic>>>uplink") == Some(&want)
            && last.get("user>>>alice@example.com>>>traffic>>>downlink") == Some(&want)
    });
    assert!(exact, "counters should be {want} both ways, got {last:?}");
}

/// A TCP hop in front of `to` (a CDN edge, say) that counts what it carries each way.
struct Hop {
    addr: SocketAddr,
    /// Bytes toward `to`, and back.
    counts: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl Hop {
    fn start(to: SocketAddr) -> Hop {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = std::sync::Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let c = counts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(to) else { continue };
                for (k, (mut from, mut into)) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                        .into_iter()
                        .enumerate()
                {
                    let c = c.clone();
                    std::thread::spawn(move || {
                        let mut b = vec![0u8; 64 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut b) {
                            c[k].fetch_add(n as u64, Relaxed);
                            if into.write_all(&b[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = into.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Hop { addr, counts }
    }

    fn carried(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.counts[0].load(Relaxed), self.counts[1].load(Relaxed))
    }
}

/// `downloadSettings`, as Xray's client reads them: each session's GET goes to another
/// address (a hop in front of the same server) with its own TLS and XHTTP settings, here
/// HTTP/1.1 (ALPN `http/1.1`) while the uplink is HTTP/2, both under TLS. packet-up and
/// stream-up move 1 MiB each way byte for byte; the hop carries the downlink and nothing of
/// the uplink.
#[test]
fn download_settings_send_the_get_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(dir.path(), &["localhost"]);
    let echo = EchoServer::start();
    let server = server(Carrier::H2Tls, &cert);
    let hop = Hop::start(server.inbound("vless-in"));
    let mut inbounds = Vec::new();
    let mut outbounds = Vec::new();
    let mut rules = Vec::new();
    for (i, mode) in ["packet-up", "stream-up"].into_iter().enumerate() {
        inbounds.push(json!({
            "tag": format!("door-{mode}"), "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
            "settings": { "address": echo.addr().ip().to_string(), "port": echo.addr().port(), "network": "tcp" }
        }));
        let download = json!({
            "address": "127.0.0.1", "port": hop.addr.port(), "network": "xhttp", "security": "tls",
            "tlsSettings": { "serverName": "localhost", "allowInsecure": true, "alpn": ["http/1.1"] },
            "xhttpSettings": { "path": PATH, "xPaddingBytes": "300-400" }
        });
        outbounds.push(json!({
            "tag": format!("out-{mode}"), "protocol": "vless",
            "settings": { "vnext": [{ "address": "127.0.0.1", "port": server.inbound("vless-in").port(),
                                      "users": [{ "id": USERS[i].1, "encryption": "none" }] }] },
            "streamSettings": { "network": "xhttp", "security": "tls",
                "tlsSettings": { "serverName": "localhost", "allowInsecure": true },
                "xhttpSettings": { "path": PATH, "mode": mode, "extra": { "downloadSettings": download } } }
        }));
        rules.push(
            json!({ "type": "field", "inboundTag": [format!("door-{mode}")], "outboundTag": format!("out-{mode}") }),
        );
    }
    let client = Shardray::start(
        &json!({ "log": { "loglevel": "info" }, "inbounds": inbounds, "outbounds": outbounds,
                 "routing": { "rules": rules } }),
        2,
    );
    for mode in ["packet-up", "stream-up"] {
        let before = hop.carried();
        let data = payload(1 << 20, mode.len() as u64);
        let got = exchange(client.inbound(&format!("door-{mode}")), &data);
        assert!(
            got == data,
            "{mode}: {} bytes back\nclient:\n{}\nserver:\n{}",
            got.len(),
            client.output(),
            server.output()
        );
        let (up, down) = hop.carried();
        let (up, down) = (up - before.0, down - before.1);
        assert!(down >= data.len() as u64, "{mode}: the hop carried {down} bytes down");
        assert!(up < 64 * 1024, "{mode}: the hop carried {up} bytes up: the uplink went through it");
    }
}
