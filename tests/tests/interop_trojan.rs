//! Interop: sing-box 1.14.4 and V2Ray 4.45.2 as Trojan clients over TLS (their socks inbound,
//! our SOCKS5 client in front) against the real shardray binary, with exact per-user counters.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::singbox::{insecure_tls, trojan_outbound, SingBox};
use shardray_tests::tls::SelfSigned;
use shardray_tests::v2ray::V2Ray;
use shardray_tests::vless::payload;
use shardray_tests::{loopback_api, trojan_config, wait_until, Shardray, ALICE_PASSWORD};

const UPLINK: &str = "user>>>alice@example.com>>>traffic>>>uplink";
const DOWNLINK: &str = "user>>>alice@example.com>>>traffic>>>downlink";

/// Payload sizes: tiny, around TLS record and buffer edges, up to several MiB.
const SIZES: [usize; 20] = [
    1,
    2,
    100,
    1_000,
    4_096,
    16_383,
    16_384,
    16_385,
    65_536,
    65_537,
    100_000,
    262_144,
    1 << 20,
    777,
    3,
    50_000,
    500_000,
    (1 << 20) - 1,
    3 << 20,
    200_000,
];

/// A Trojan-over-TLS server for alice, with a StatsService API; and its certificate's directory.
fn tls_server() -> (Shardray, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let extra = json!({ "streamSettings": cert.stream_settings("localhost", &["h2", "http/1.1"]) });
    let mut config = trojan_config(json!([{ "password": ALICE_PASSWORD, "email": "alice@example.com" }]), extra);
    config["api"] = loopback_api(&["StatsService"]);
    (Shardray::start(&config, 2), certs)
}

/// Sends `data` through `stream` (writing on a second thread), half-closes, and returns
/// everything read until the end of stream.
fn exchange(stream: TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut write_half = stream.try_clone()?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || -> io::Result<()> {
        write_half.write_all(&data)?;
        write_half.shutdown(Shutdown::Write)
    });
    let mut got = Vec::new();
    let read = (&stream).read_to_end(&mut got);
    writer.join().expect("writer thread")?;
    read?;
    Ok(got)
}

/// Echo connections of every size in `SIZES` through `connect` (5 one after another, 15 over
/// 5 threads), every byte checked; then alice's counters must equal the payload, exactly.
fn echo_and_count(
    server: &Shardray,
    connect: &(dyn Fn(SocketAddr) -> io::Result<TcpStream> + Sync),
    log: &(dyn Fn() -> String + Sync),
) {
    let echo = EchoServer::start();
    let once = |i: usize| {
        let data = payload(SIZES[i], i as u64);
        let got = connect(echo.addr())
            .and_then(|s| exchange(s, &data))
            .unwrap_or_else(|e| panic!("connection {i} ({} bytes): {e}\n{}", SIZES[i], log()));
        assert_eq!(got.len(), data.len(), "connection {i}: echoed length");
        assert!(got == data, "connection {i}: echoed bytes differ");
    };
    (0..5).for_each(once);
    std::thread::scope(|s| {
        for t in 0..5 {
            let once = &once;
            s.spawn(move || (0..3).for_each(|k| once(5 + t * 3 + k)));
        }
    });
    let total: i64 = SIZES.iter().map(|&n| n as i64).sum();
    let api = ApiClient::connect(server.api.unwrap());
    let mut last = Default::default();
    let settled = wait_until(Duration::from_secs(5), || {
        last = api.query("user>>>alice@example.com>>>traffic", false);
        last.get(UPLINK) == Some(&total) && last.get(DOWNLINK) == Some(&total)
    });
    assert!(settled, "alice's counters should be {total} each way, got {last:?}");
}

#[test]
fn sing_box_trojan_over_tls_echo_and_exact_counters() {
    let (server, _certs) = tls_server();
    let sb =
        SingBox::start(trojan_outbound(server.inbound("trojan-in"), ALICE_PASSWORD, Some(insecure_tls("localhost"))));
    echo_and_count(&server, &|dest| sb.connect(dest), &|| sb.log());
}

#[test]
fn sing_box_with_a_wrong_password_gets_nothing() {
    let (server, _certs) = tls_server();
    let sink = RecordingServer::start(b"should never be seen");
    let wrong = SingBox::start(trojan_outbound(server.inbound("trojan-in"), "wrong", Some(insecure_tls("localhost"))));
    for attempt in 0..3u64 {
        // sing-box answers the SOCKS request itself before it dials, so the CONNECT may
        // succeed; no byte may come back.
        let Ok(stream) = wrong.connect(sink.addr()) else { continue };
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = (&stream).write_all(&payload(5_000, attempt));
        let _ = stream.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        let _ = (&stream).read_to_end(&mut got);
        assert!(got.is_empty(), "attempt {attempt}: a wrong password got {} bytes back", got.len());
    }
    assert_eq!(sink.next(Duration::from_millis(500)), None, "a wrong password reached the destination");
}

/// V2Ray's Trojan outbound over TLS, as its own JSON config writes it.
fn v2ray_trojan(server: SocketAddr) -> Value {
    json!({
        "protocol": "trojan",
        "settings": { "servers": [{
            "address": server.ip().to_string(), "port": server.port(), "password": ALICE_PASSWORD
        }]},
        "streamSettings": { "network": "tcp", "security": "tls",
                            "tlsSettings": { "serverName": "localhost", "allowInsecure": true } }
    })
}

#[test]
fn v2ray_trojan_over_tls_echo_and_exact_counters() {
    let (server, _certs) = tls_server();
    let v2 = V2Ray::start(v2ray_trojan(server.inbound("trojan-in")));
    echo_and_count(&server, &|dest| v2.connect(dest), &|| v2.log());
}
