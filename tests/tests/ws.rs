//! The WebSocket and HTTPUpgrade transports (`network` `ws` and `httpupgrade`) with the real
//! binary on 2 shards: sing-box 1.14.4 as the client of VLESS, VMess and Trojan over them
//! (plain and TLS, with early data in `Sec-WebSocket-Protocol` and after the path), byte-exact
//! echoes and exact per-user counters, a user's removal closing a live session; shardray's own
//! Trojan and VMess outbounds against sing-box as the server; `trustedXForwardedFor`; and a
//! hand-written client sending what no real client sends (bad paths, plain GETs, broken and
//! oversized frames, oversized heads).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::singbox::{insecure_tls, trojan_outbound, vless_outbound, vmess_outbound, SingBox};
use shardray_tests::tls::SelfSigned;
use shardray_tests::vless::{closed_within, payload, request};
use shardray_tests::{
    loopback_api, trojan_config, vless_config, vmess_config, wait_until, Shardray, ALICE, ALICE_PASSWORD,
};

const EMAIL: &str = "alice@example.com";
const UPLINK: &str = "user>>>alice@example.com>>>traffic>>>uplink";
const DOWNLINK: &str = "user>>>alice@example.com>>>traffic>>>downlink";

/// Sizes around frame-length encodings (125/126, 65535/65536), buffer edges, up to 1 MiB.
const SIZES: [usize; 10] = [1, 125, 126, 4_096, 16_385, 65_535, 65_536, 100_000, 777, 1 << 20];

/// Alice on `config`'s inbound, a StatsService API.
fn with_api(mut config: Value) -> Value {
    config["api"] = loopback_api(&["StatsService", "HandlerService"]);
    config
}

fn ws_stream(network: &str, settings: Value, tls: Option<&SelfSigned>) -> Value {
    let mut stream = match tls {
        Some(cert) => cert.stream_settings("localhost", &["http/1.1"]),
        None => json!({}),
    };
    stream["network"] = json!(network);
    let key = if network == "ws" { "wsSettings" } else { "httpupgradeSettings" };
    stream[key] = settings;
    stream
}

/// Sends `data` through sing-box to `dest` (writing on a second thread) and reads as many
/// bytes back. No half-close: sing-box closes a WebSocket session whole when its upload
/// ends, whoever the server.
fn exchange(sb: &SingBox, dest: SocketAddr, data: &[u8]) -> io::Result<Vec<u8>> {
    let stream = sb.connect(dest)?;
    let mut write_half = stream.try_clone()?;
    let data = data.to_vec();
    let len = data.len();
    let writer = std::thread::spawn(move || -> io::Result<()> { write_half.write_all(&data) });
    let mut got = vec![0u8; len];
    let read = (&stream).read_exact(&mut got);
    writer.join().expect("writer thread")?;
    read?;
    Ok(got)
}

/// Echoes of every size through sing-box, then 6 at once; alice's counters must equal the
/// payload exactly, both ways.
fn echoes_and_counters(server: &Shardray, sb: &SingBox) {
    let echo = EchoServer::start();
    let mut total = 0i64;
    for (i, &len) in SIZES.iter().enumerate() {
        let data = payload(len, i as u64);
        let got = exchange(sb, echo.addr(), &data).unwrap_or_else(|e| panic!("{len} bytes: {e}\n{}", sb.log()));
        assert!(got == data, "{len} bytes: {} came back\n{}\n{}", got.len(), sb.log(), server.output());
        total += len as i64;
    }
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let echo = echo.addr();
            s.spawn(move || {
                let data = payload(50_000, 100 + t);
                assert!(exchange(sb, echo, &data).unwrap() == data, "parallel connection {t}");
            });
        }
    });
    total += 6 * 50_000;
    let api = ApiClient::connect(server.api.expect("api"));
    let mut last = Default::default();
    let ok = wait_until(Duration::from_secs(5), || {
        last = api.query("user>>>alice@example.com>>>traffic", false);
        last.get(UPLINK) == Some(&total) && last.get(DOWNLINK) == Some(&total)
    });
    assert!(ok, "alice's counters should be {total} both ways, got {last:?}");
}

fn sing_box_transport(kind: &str, path: &str, extra: Value) -> Value {
    let mut t = json!({ "type": kind, "path": path });
    for (k, v) in extra.as_object().into_iter().flatten() {
        t[k] = v.clone();
    }
    t
}

#[test]
fn sing_box_vless_over_ws() {
    let stream = ws_stream("ws", json!({ "path": "/vl" }), None);
    let config = with_api(vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let server = Shardray::start(&config, 2);
    let mut out = vless_outbound(server.inbound("vless-in"), ALICE, None);
    out["transport"] = sing_box_transport("ws", "/vl", json!({}));
    let sb = SingBox::start(out);
    echoes_and_counters(&server, &sb);
}

#[test]
fn sing_box_vless_over_ws_tls() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let stream = ws_stream("ws", json!({ "path": "/vl", "host": "cdn.example" }), Some(&cert));
    let config = with_api(vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let server = Shardray::start(&config, 2);
    let mut out = vless_outbound(server.inbound("vless-in"), ALICE, Some(insecure_tls("localhost")));
    out["transport"] = sing_box_transport("ws", "/vl", json!({ "headers": { "Host": "cdn.example" } }));
    let sb = SingBox::start(out);
    echoes_and_counters(&server, &sb);
}

#[test]
fn sing_box_vmess_over_ws() {
    let stream = ws_stream("ws", json!({ "path": "/vm" }), None);
    let config = with_api(vmess_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let server = Shardray::start(&config, 2);
    let out = vmess_outbound(
        server.inbound("vmess-in"),
        ALICE,
        "aes-128-gcm",
        json!({ "transport": sing_box_transport("ws", "/vm", json!({})) }),
    );
    let sb = SingBox::start(out);
    echoes_and_counters(&server, &sb);
}

#[test]
fn sing_box_trojan_over_ws_tls() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let stream = ws_stream("ws", json!({ "path": "/tr" }), Some(&cert));
    let config = with_api(trojan_config(
        json!([{ "password": ALICE_PASSWORD, "email": EMAIL }]),
        json!({ "streamSettings": stream }),
    ));
    let server = Shardray::start(&config, 2);
    let mut out = trojan_outbound(server.inbound("trojan-in"), ALICE_PASSWORD, Some(insecure_tls("localhost")));
    out["transport"] = sing_box_transport("ws", "/tr", json!({}));
    let sb = SingBox::start(out);
    echoes_and_counters(&server, &sb);
}

#[test]
fn sing_box_vless_over_httpupgrade() {
    let stream = ws_stream("httpupgrade", json!({ "path": "/up", "host": "up.example" }), None);
    let config = with_api(vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let server = Shardray::start(&config, 2);
    let mut out = vless_outbound(server.inbound("vless-in"), ALICE, None);
    out["transport"] = sing_box_transport("httpupgrade", "/up", json!({ "host": "up.example" }));
    let sb = SingBox::start(out);
    echoes_and_counters(&server, &sb);
}

#[test]
fn sing_box_early_data_in_the_protocol_header() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let stream = ws_stream("ws", json!({ "path": "/ed?ed=2048" }), Some(&cert));
    let config = with_api(vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let server = Shardray::start(&config, 2);
    let mut out = vless_outbound(server.inbound("vless-in"), ALICE, Some(insecure_tls("localhost")));
    out["transport"] = sing_box_transport(
        "ws",
        "/ed",
        json!({ "max_early_data": 2048, "early_data_header_name": "Sec-WebSocket-Protocol" }),
    );
    let sb = SingBox::start(out);
    echoes_and_counters(&server, &sb);
}

#[test]
fn sing_box_early_data_after_the_path() {
    let stream = ws_stream("ws", json!({ "path": "/ed?ed=2048" }), None);
    let config = with_api(vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let server = Shardray::start(&config, 2);
    let mut out = vless_outbound(server.inbound("vless-in"), ALICE, None);
    out["transport"] = sing_box_transport("ws", "/ed", json!({ "max_early_data": 2048 }));
    let sb = SingBox::start(out);
    echoes_and_counters(&server, &sb);

    // The same client against a path without `?ed=`: its longer path is refused, which shows
    // the early data really came after the path.
    let stream = ws_stream("ws", json!({ "path": "/ed" }), None);
    let config = with_api(vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let strict = Shardray::start(&config, 2);
    let mut out = vless_outbound(strict.inbound("vless-in"), ALICE, None);
    out["transport"] = sing_box_transport("ws", "/ed", json!({ "max_early_data": 2048 }));
    let sb = SingBox::start(out);
    let echo = EchoServer::start();
    let got = exchange(&sb, echo.addr(), b"hello").unwrap_or_default();
    assert!(got != b"hello", "a path with early data after it was served without ?ed=");
}

#[test]
fn removing_the_user_closes_a_live_ws_session() {
    let stream = ws_stream("ws", json!({ "path": "/vl" }), None);
    let config = with_api(vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream })));
    let server = Shardray::start(&config, 2);
    let mut out = vless_outbound(server.inbound("vless-in"), ALICE, None);
    out["transport"] = sing_box_transport("ws", "/vl", json!({}));
    let sb = SingBox::start(out);
    let echo = EchoServer::start();
    let mut live = sb.connect(echo.addr()).unwrap();
    live.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    live.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    let api = ApiClient::connect(server.api.unwrap());
    api.remove_user("vless-in", EMAIL).unwrap();
    assert!(closed_within(&mut live, Duration::from_secs(5)), "the session outlived its user\n{}", server.output());
}

// === shardray's outbounds against sing-box as the server ===

fn outbound_config(echo: SocketAddr, outbound: Value) -> Value {
    json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "api": loopback_api(&["StatsService"]),
        "inbounds": [{ "tag": "fwd", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
                       "settings": { "address": echo.ip().to_string(), "port": echo.port(), "network": "tcp" } }],
        "outbounds": [outbound, { "tag": "direct", "protocol": "freedom" }],
        "policy": { "system": { "statsOutboundUplink": true, "statsOutboundDownlink": true } }
    })
}

/// `data` to the dokodemo-door inbound and as many bytes back (no half-close: the WebSocket
/// outbound has none to pass on).
fn plain_exchange(proxy: SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut write_half = stream.try_clone().unwrap();
    let data = data.to_vec();
    let mut got = vec![0u8; data.len()];
    let writer = std::thread::spawn(move || write_half.write_all(&data).unwrap());
    let n = (&stream).read(&mut got[..]).unwrap_or(0);
    if n > 0 {
        let _ = (&stream).read_exact(&mut got[n..]);
    } else {
        got.clear();
    }
    writer.join().unwrap();
    got
}

fn outbound_echoes(server: &Shardray, tag: &str, log: &dyn Fn() -> String) {
    let proxy = server.inbound("fwd");
    let mut total = 0i64;
    for (i, &len) in SIZES.iter().enumerate() {
        let data = payload(len, i as u64);
        let got = plain_exchange(proxy, &data);
        assert!(got == data, "{len} bytes: got {} back\n{}\n{}", got.len(), log(), server.output());
        total += len as i64;
    }
    let api = ApiClient::connect(server.api.unwrap());
    let (up, down) = (format!("outbound>>>{tag}>>>traffic>>>uplink"), format!("outbound>>>{tag}>>>traffic>>>downlink"));
    assert!(
        wait_until(Duration::from_secs(5), || api.get(&up, false).ok() == Some(total)
            && api.get(&down, false).ok() == Some(total)),
        "outbound counters {:?} / {:?}, expected {total}",
        api.get(&up, false),
        api.get(&down, false)
    );
}

#[test]
fn trojan_outbound_over_ws_tls_to_sing_box() {
    const PASSWORD: &str = "the trojan server's password";
    let echo = EchoServer::start();
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["trojan.example"]);
    let sb = SingBox::serve(json!({
        "type": "trojan", "tag": "trojan-in",
        "users": [{ "name": "u", "password": PASSWORD }],
        "tls": { "enabled": true, "server_name": "trojan.example",
                 "certificate_path": cert.cert_file.to_str().unwrap(), "key_path": cert.key_file.to_str().unwrap() },
        "transport": { "type": "ws", "path": "/t", "headers": {} }
    }));
    let outbound = json!({
        "tag": "trojan-out", "protocol": "trojan",
        "settings": { "servers": [{ "address": "127.0.0.1", "port": sb.socks.port(), "password": PASSWORD }] },
        "streamSettings": { "network": "ws", "security": "tls",
            "tlsSettings": { "serverName": "trojan.example", "allowInsecure": true },
            "wsSettings": { "path": "/t", "headers": { "X-Test": "1" } } }
    });
    let server = Shardray::start(&outbound_config(echo.addr(), outbound), 2);
    outbound_echoes(&server, "trojan-out", &|| sb.log());
}

#[test]
fn vmess_outbound_over_httpupgrade_to_sing_box() {
    let echo = EchoServer::start();
    let sb = SingBox::serve(json!({
        "type": "vmess", "tag": "vmess-in",
        "users": [{ "name": "u", "uuid": ALICE, "alterId": 0 }],
        "transport": { "type": "httpupgrade", "path": "/v", "host": "v.example" }
    }));
    let outbound = json!({
        "tag": "vmess-out", "protocol": "vmess",
        "settings": { "vnext": [{ "address": "127.0.0.1", "port": sb.socks.port(),
                                   "users": [{ "id": ALICE, "security": "aes-128-gcm" }] }] },
        "streamSettings": { "network": "httpupgrade", "httpupgradeSettings": { "path": "v", "host": "v.example" } }
    });
    let server = Shardray::start(&outbound_config(echo.addr(), outbound), 2);
    outbound_echoes(&server, "vmess-out", &|| sb.log());
}

#[test]
fn vmess_outbound_over_ws_to_sing_box() {
    let echo = EchoServer::start();
    let sb = SingBox::serve(json!({
        "type": "vmess", "tag": "vmess-in",
        "users": [{ "name": "u", "uuid": ALICE, "alterId": 0 }],
        "transport": { "type": "ws", "path": "/v" }
    }));
    let outbound = json!({
        "tag": "vmess-out", "protocol": "vmess",
        "settings": { "vnext": [{ "address": "127.0.0.1", "port": sb.socks.port(),
                                   "users": [{ "id": ALICE, "security": "chacha20-poly1305" }] }] },
        "streamSettings": { "network": "ws", "wsSettings": { "path": "/v" } }
    });
    let server = Shardray::start(&outbound_config(echo.addr(), outbound), 2);
    outbound_echoes(&server, "vmess-out", &|| sb.log());
}

// === a hand-written client ===

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends `head` (a request head) and returns the connection and the answer's status line.
fn send_head(addr: SocketAddr, head: &[u8]) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head).unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.lines().next().unwrap_or("").to_owned();
    (s, status)
}

fn upgrade_head(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A masked binary frame, written out by hand (RFC 6455 §5.2).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x82];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one unmasked server frame's payload.
fn read_frame(s: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l)?;
            u64::from(u16::from_be_bytes(l))
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l)?;
            u64::from_be_bytes(l)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload)?;
    Ok((h[0] & 0x0f, payload))
}

fn plain_ws_server(trusted: Value) -> (Shardray, tempfile::TempDir) {
    let logs = tempfile::tempdir().unwrap();
    let mut stream = ws_stream("ws", json!({ "path": "/vl" }), None);
    stream["sockopt"] = json!({ "trustedXForwardedFor": trusted });
    let mut config = vless_config(json!([{ "id": ALICE, "email": EMAIL }]), json!({ "streamSettings": stream }));
    config["log"] = json!({ "loglevel": "info", "access": logs.path().join("access.log").to_str().unwrap() });
    (Shardray::start(&config, 2), logs)
}

/// A VLESS echo over a hand-made WebSocket with `extra` headers; the echo must come back in
/// frames, and a ping on the way must be answered with its pong.
fn hand_made_session(addr: SocketAddr, echo: SocketAddr, extra: &str) {
    let (mut s, status) = send_head(addr, &upgrade_head("/vl", extra));
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    let mut first = request(ALICE, echo);
    first.extend_from_slice(b"hello");
    s.write_all(&frame(&first)).unwrap();
    // A ping between data frames.
    s.write_all(&[0x89, 0x82, 1, 2, 3, 4, b'p' ^ 1, b'!' ^ 2]).unwrap();
    let mut got = Vec::new();
    let mut pong = None;
    while got.len() < 2 + 5 || pong.is_none() {
        let (op, p) = read_frame(&mut s).unwrap();
        match op {
            0x2 => got.extend_from_slice(&p),
            0xA => pong = Some(p),
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert_eq!(got, b"\x00\x00hello", "the VLESS response header, then the echo");
    assert_eq!(pong.as_deref(), Some(&b"p!"[..]));
    // Our close is answered with the server's.
    s.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]).unwrap();
    let (op, p) = read_frame(&mut s).unwrap();
    assert_eq!((op, p), (0x8, vec![0x03, 0xe8]));
}

fn access_log(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("access.log")).unwrap_or_default()
}

#[test]
fn forwarded_for_only_from_a_trusted_hop() {
    let echo = EchoServer::start();
    let (server, logs) = plain_ws_server(json!(["X-From-Cdn"]));
    let addr = server.inbound("vless-in");
    hand_made_session(addr, echo.addr(), "X-Forwarded-For: 203.0.113.9, 10.1.1.1\r\n");
    hand_made_session(addr, echo.addr(), "X-Forwarded-For: 198.51.100.4\r\nX-From-CDN: yes\r\n");
    assert!(wait_until(Duration::from_secs(5), || access_log(&logs).contains("from 198.51.100.4:0 accepted")));
    let log = access_log(&logs);
    assert!(!log.contains("203.0.113.9"), "an untrusted X-Forwarded-For was believed:\n{log}");
    assert!(log.contains("from 127.0.0.1:"), "{log}");

    // Without trustedXForwardedFor, never.
    let (server, logs) = plain_ws_server(json!([]));
    hand_made_session(server.inbound("vless-in"), echo.addr(), "X-Forwarded-For: 198.51.100.4\r\nX-From-CDN: yes\r\n");
    assert!(wait_until(Duration::from_secs(5), || access_log(&logs).contains("accepted")));
    assert!(!access_log(&logs).contains("198.51.100.4"), "{}", access_log(&logs));
}

#[test]
fn hostile_requests_and_frames_are_closed_and_the_server_keeps_serving() {
    let echo = EchoServer::start();
    let (server, _logs) = plain_ws_server(json!([]));
    let addr = server.inbound("vless-in");

    // Another path: 404, as Xray; a plain GET: 400; a head that never ends: 400.
    assert_eq!(send_head(addr, &upgrade_head("/other", "")).1, "HTTP/1.1 404 Not Found");
    assert_eq!(send_head(addr, b"GET /vl HTTP/1.1\r\nHost: x\r\n\r\n").1, "HTTP/1.1 400 Bad Request");
    let mut long = b"GET /vl HTTP/1.1\r\nX-Long: ".to_vec();
    long.resize(20_000, b'a');
    assert_eq!(send_head(addr, &long).1, "HTTP/1.1 400 Bad Request");

    let hostile: [(&str, Vec<u8>); 5] = [
        ("reserved bits", vec![0xf2, 0x80, 0, 0, 0, 0]),
        ("unmasked", vec![0x82, 0x01, 0x00]),
        ("unknown opcode", vec![0x83, 0x80, 0, 0, 0, 0]),
        ("oversized", {
            let mut f = vec![0x82, 0xff];
            f.extend_from_slice(&(1u64 << 40).to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0]);
            f
        }),
        ("long control frame", {
            let mut f = vec![0x89, 0x80 | 126, 0x01, 0x00, 0, 0, 0, 0];
            f.resize(f.len() + 256, 0);
            f
        }),
    ];
    for (what, bytes) in hostile {
        let (mut s, status) = send_head(addr, &upgrade_head("/vl", ""));
        assert_eq!(status, "HTTP/1.1 101 Switching Protocols", "{what}");
        s.write_all(&bytes).unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(8)), "{what}: not closed");
    }
    // A frame with a VLESS header for a user that does not exist: drained, never answered.
    let (mut s, _) = send_head(addr, &upgrade_head("/vl", ""));
    s.write_all(&frame(&request("0b6a1c9e-3f53-4bd1-9f55-1d2a53a0a1c7", echo.addr()))).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(8)), "a bad user was not closed");

    hand_made_session(addr, echo.addr(), "");
}

#[test]
fn a_wrong_path_goes_to_the_fallback_by_its_path() {
    let echo = EchoServer::start();
    let site = shardray_tests::servers::RecordingServer::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let stream = ws_stream("ws", json!({ "path": "/vl" }), None);
    let config = vless_config(
        json!([{ "id": ALICE, "email": EMAIL }]),
        json!({ "streamSettings": stream,
                "settings": { "fallbacks": [{ "path": "/site", "dest": site.addr().port() }] } }),
    );
    let server = Shardray::start(&config, 2);
    let addr = server.inbound("vless-in");
    let (s, status) = send_head(addr, b"GET /site HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    drop(s);
    let seen = site.next(Duration::from_secs(5)).expect("the fallback saw the request");
    assert!(seen.starts_with(b"GET /site HTTP/1.1\r\n"), "{:?}", String::from_utf8_lossy(&seen));
    hand_made_session(addr, echo.addr(), "");
}

#[test]
fn an_inbound_added_through_the_api_serves_websocket() {
    use shardray_proto::xray::app::proxyman::command as handler;
    use shardray_proto::xray::app::proxyman::ReceiverConfig;
    use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain, PortList, PortRange};
    use shardray_proto::xray::core::InboundHandlerConfig;
    use shardray_proto::xray::proxy::vless as vless_pb;
    use shardray_proto::xray::transport::internet::{websocket, StreamConfig, TransportConfig};
    use shardray_tests::api::{typed, vless_user};

    const WS: &str = "xray.transport.internet.websocket.Config";
    let server = Shardray::start(&with_api(vless_config(json!([]), json!({}))), 2);
    let api = ApiClient::connect(server.api.unwrap());
    let port = shardray_tests::singbox::free_port();
    let ws = websocket::Config { path: "/api".into(), ed: 2048, ..Default::default() };
    let stream = StreamConfig {
        protocol_name: "websocket".into(),
        transport_settings: vec![TransportConfig {
            protocol_name: "websocket".into(),
            settings: Some(typed(WS, &ws)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let receiver = ReceiverConfig {
        port_list: Some(PortList { range: vec![PortRange { from: port.into(), to: port.into() }] }),
        listen: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        stream_settings: Some(stream),
        ..Default::default()
    };
    let proxy = vless_pb::inbound::Config {
        clients: vec![vless_user(EMAIL, ALICE, 0)],
        decryption: "none".into(),
        ..Default::default()
    };
    let inbound = InboundHandlerConfig {
        tag: "ws-added".into(),
        receiver_settings: Some(typed("xray.app.proxyman.ReceiverConfig", &receiver)),
        proxy_settings: Some(typed("xray.proxy.vless.inbound.Config", &proxy)),
    };
    let mut client = api.handler();
    api.block_on(client.add_inbound(handler::AddInboundRequest { inbound: Some(inbound) })).unwrap();

    let mut out = vless_outbound(SocketAddr::from(([127, 0, 0, 1], port)), ALICE, None);
    out["transport"] = sing_box_transport("ws", "/api", json!({ "max_early_data": 2048 }));
    let sb = SingBox::start(out);
    let echo = EchoServer::start();
    let data = payload(70_000, 7);
    assert!(exchange(&sb, echo.addr(), &data).unwrap() == data, "{}", server.output());
}

#[test]
fn links_carry_the_transport() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let mut config = vless_config(
        json!([{ "id": ALICE, "email": EMAIL }]),
        json!({ "streamSettings": ws_stream("ws", json!({ "path": "/vl?ed=2048", "host": "cdn.example" }), None) }),
    );
    let mut vmess = vmess_config(
        json!([{ "id": ALICE, "email": "v@example.com" }]),
        json!({ "streamSettings": ws_stream("httpupgrade", json!({ "path": "/up" }), None) }),
    )["inbounds"][0]
        .clone();
    vmess["port"] = json!(8081);
    config["inbounds"][0]["port"] = json!(8080);
    config["inbounds"].as_array_mut().unwrap().push(vmess);
    let file = dir.path().join("config.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let (status, out) = shardray_tests::run_cli(&["link", "-c", file.to_str().unwrap(), "--host", "proxy.example"]);
    assert!(status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "vless://{ALICE}@proxy.example:8080?encryption=none&security=none&type=ws&path=%2Fvl%3Fed%3D2048\
             &host=cdn.example#alice%40example.com"
        )),
        "{out}"
    );
    let line = out.lines().find(|l| l.starts_with("vmess://")).unwrap_or_else(|| panic!("{out}"));
    let json = base64::engine::general_purpose::STANDARD.decode(&line["vmess://".len()..]).unwrap();
    let link: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!((&link["net"], &link["path"], &link["host"]), (&json!("httpupgrade"), &json!("/up"), &json!("")));
}

#[test]
fn an_outbound_added_through_the_api_speaks_websocket() {
    use shardray_proto::xray::app::proxyman::command as handler;
    use shardray_proto::xray::app::proxyman::SenderConfig;
    use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain};
    use shardray_proto::xray::common::protocol::ServerEndpoint;
    use shardray_proto::xray::core::OutboundHandlerConfig;
    use shardray_proto::xray::proxy::trojan as trojan_pb;
    use shardray_proto::xray::transport::internet::{websocket, StreamConfig, TransportConfig};
    use shardray_tests::api::{trojan_user, typed};

    const PASSWORD: &str = "the trojan server's password";
    const WS: &str = "xray.transport.internet.websocket.Config";
    let echo = EchoServer::start();
    let sb = SingBox::serve(json!({
        "type": "trojan", "tag": "trojan-in", "users": [{ "name": "u", "password": PASSWORD }],
        "transport": { "type": "ws", "path": "/api-out" }
    }));
    let mut config = outbound_config(echo.addr(), json!({ "tag": "first", "protocol": "blackhole" }));
    config["outbounds"] = json!([{ "tag": "first", "protocol": "blackhole" }]);
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    let ws = websocket::Config { path: "api-out".into(), ..Default::default() };
    let stream = StreamConfig {
        protocol_name: "websocket".into(),
        transport_settings: vec![TransportConfig {
            protocol_name: "websocket".into(),
            settings: Some(typed(WS, &ws)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let endpoint = ServerEndpoint {
        address: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        port: u32::from(sb.socks.port()),
        user: vec![trojan_user("", PASSWORD, 0)],
    };
    let outbound = OutboundHandlerConfig {
        tag: "trojan-out".into(),
        sender_settings: Some(typed(
            "xray.app.proxyman.SenderConfig",
            &SenderConfig { stream_settings: Some(stream), ..Default::default() },
        )),
        proxy_settings: Some(typed(
            "xray.proxy.trojan.ClientConfig",
            &trojan_pb::ClientConfig { server: vec![endpoint] },
        )),
        ..Default::default()
    };
    let mut client = api.handler();
    api.block_on(client.add_outbound(handler::AddOutboundRequest { outbound: Some(outbound) })).unwrap();
    api.block_on(client.remove_outbound(handler::RemoveOutboundRequest { tag: "first".into() })).unwrap();
    outbound_echoes(&server, "trojan-out", &|| sb.log());
}
