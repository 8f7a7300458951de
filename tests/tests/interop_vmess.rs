//! Interop: sing-box 1.14.4 as a VMess client for every security and option it offers (plain
//! and over TLS), and V2Ray 4.45.2 as a VMess AEAD client (alterId 0), against the real
//! shardray binary with two shards: byte-exact echoes from 1 byte to 3 MiB and exact per-user
//! counters.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::echo::echo_and_count;
use shardray_tests::servers::RecordingServer;
use shardray_tests::singbox::{insecure_tls, vmess_outbound, SingBox};
use shardray_tests::tls::SelfSigned;
use shardray_tests::v2ray::V2Ray;
use shardray_tests::vless::{payload, user_id};
use shardray_tests::{loopback_api, vmess_config, Shardray};

/// Payload sizes for the full runs: tiny, around chunk (8 KiB) and buffer edges, several MiB.
const SIZES: [usize; 16] = [
    1,
    2,
    100,
    8_000,
    8_192,
    16_385,
    65_536,
    65_537,
    100_000,
    262_144,
    777,
    3,
    500_000,
    (1 << 20) - 1,
    3 << 20,
    1 << 20,
];

/// Sizes for each cell of the security × options matrix.
const FEW: [usize; 6] = [1, 8_111, 16_385, 65_537, 1 << 20, 3 << 20];

/// One VMess client per combination, by a mapped string id (the server maps it to a UUID as
/// Xray does; sing-box is given the UUID).
fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("vmess-user-{i}")).collect()
}

fn server(n: usize, tls: Option<&SelfSigned>) -> Shardray {
    let clients: Vec<Value> =
        ids(n).iter().enumerate().map(|(i, id)| json!({ "id": id, "email": format!("u{i}@example.com") })).collect();
    let extra = match tls {
        Some(cert) => json!({ "streamSettings": cert.stream_settings("localhost", &["http/1.1"]) }),
        None => json!({}),
    };
    let mut config = vmess_config(json!(clients), extra);
    config["api"] = loopback_api(&["StatsService"]);
    config["log"]["loglevel"] = json!("debug");
    Shardray::start(&config, 2)
}

/// The matrix: every security sing-box offers, each with and without global padding and
/// authenticated length.
fn matrix() -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    for security in ["aes-128-gcm", "chacha20-poly1305", "none", "zero"] {
        for (padding, auth) in [(false, false), (true, false), (false, true), (true, true)] {
            out.push((security, json!({ "global_padding": padding, "authenticated_length": auth })));
        }
    }
    out
}

#[test]
fn sing_box_every_security_and_option_plain() {
    let cells = matrix();
    let server = server(cells.len(), None);
    let proxy = server.inbound("vmess-in");
    for (i, ((security, options), id)) in cells.iter().zip(ids(cells.len())).enumerate() {
        let uuid = user_id(&id).to_string();
        let sb = SingBox::start(vmess_outbound(proxy, &uuid, security, options.clone()));
        let what = format!("{security} {options}");
        echo_and_count(&server, &format!("u{i}@example.com"), &FEW, &|d| sb.connect(d), &|| {
            format!("{what}\n{}\n{}", sb.log(), server.output())
        });
    }
    assert!(!server.output().contains("panicked"));
}

#[test]
fn sing_box_every_security_over_tls_full_sizes() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let securities = ["aes-128-gcm", "chacha20-poly1305", "none", "zero"];
    let server = server(securities.len(), Some(&cert));
    let proxy = server.inbound("vmess-in");
    for (i, (security, id)) in securities.iter().zip(ids(securities.len())).enumerate() {
        let uuid = user_id(&id).to_string();
        let extra = json!({ "tls": insecure_tls("localhost"), "authenticated_length": i % 2 == 1 });
        let sb = SingBox::start(vmess_outbound(proxy, &uuid, security, extra));
        echo_and_count(&server, &format!("u{i}@example.com"), &SIZES, &|d| sb.connect(d), &|| {
            format!("{security}\n{}", sb.log())
        });
    }
}

#[test]
fn sing_box_with_an_unknown_id_gets_nothing() {
    let server = server(1, None);
    let sink = RecordingServer::start(b"should never be seen");
    let stranger = uuid::Uuid::from_u128(0x1234).to_string();
    let sb = SingBox::start(vmess_outbound(server.inbound("vmess-in"), &stranger, "aes-128-gcm", json!({})));
    for attempt in 0..3u64 {
        let Ok(stream) = sb.connect(sink.addr()) else { continue };
        stream.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let _ = (&stream).write_all(&payload(5_000, attempt));
        let _ = stream.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        let _ = (&stream).read_to_end(&mut got);
        assert!(got.is_empty(), "attempt {attempt}: an unknown id got {} bytes back", got.len());
    }
    assert_eq!(sink.next(Duration::from_millis(500)), None, "an unknown id reached the destination");
}

/// V2Ray's VMess outbound, AEAD (alterId 0), as its own JSON config writes it.
fn v2ray_vmess(server: SocketAddr, id: &str, security: &str, tls: bool) -> Value {
    let mut out = json!({
        "protocol": "vmess",
        "settings": { "vnext": [{
            "address": server.ip().to_string(), "port": server.port(),
            "users": [{ "id": id, "alterId": 0, "security": security }]
        }]}
    });
    if tls {
        out["streamSettings"] = json!({ "network": "tcp", "security": "tls",
                                        "tlsSettings": { "serverName": "localhost", "allowInsecure": true } });
    }
    out
}

#[test]
fn v2ray_vmess_aead_echo_and_exact_counters_plain_and_tls() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    for tls in [false, true] {
        let server = server(3, tls.then_some(&cert));
        let proxy = server.inbound("vmess-in");
        for (i, (security, id)) in ["aes-128-gcm", "chacha20-poly1305", "none"].iter().zip(ids(3)).enumerate() {
            let v2 = V2Ray::start(v2ray_vmess(proxy, &user_id(&id).to_string(), security, tls));
            let sizes: &[usize] = if i == 0 { &SIZES } else { &FEW };
            echo_and_count(&server, &format!("u{i}@example.com"), sizes, &|d| v2.connect(d), &|| {
                format!("{security} tls={tls}\n{}", v2.log())
            });
        }
    }
}
