//! Interop: sing-box 1.14.4 as the VLESS client (its socks inbound, our SOCKS5 client in front)
//! against the real shardray binary, plain and over TLS, with exact per-user counters.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::singbox::{insecure_tls, vless_outbound, SingBox};
use shardray_tests::tls::SelfSigned;
use shardray_tests::vless::payload;
use shardray_tests::{vless_config, wait_until, Shardray, ALICE};

const EMAIL: &str = "alice@example.com";
const UPLINK: &str = "user>>>alice@example.com>>>traffic>>>uplink";
const DOWNLINK: &str = "user>>>alice@example.com>>>traffic>>>downlink";

/// Payload sizes of the 20 connections: tiny, around record and buffer edges, up to 1 MiB.
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
    12_345,
    200_000,
];

/// Alice as the only client, plus a StatsService API on a loopback port of the system's choice.
fn server_config(inbound_extra: Value) -> Value {
    let mut config = vless_config(json!([{ "id": ALICE, "email": EMAIL }]), inbound_extra);
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    config
}

/// Sends `data` through sing-box to `dest` (writing on a second thread), half-closes, and
/// returns everything read until the end of stream.
fn exchange(sb: &SingBox, dest: SocketAddr, data: &[u8]) -> io::Result<Vec<u8>> {
    let stream = sb.connect(dest)?;
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

/// One echo connection of `len` bytes; panics naming the connection if anything differs.
fn echo_once(sb: &SingBox, echo: SocketAddr, len: usize, seed: u64) {
    let data = payload(len, seed);
    let got =
        exchange(sb, echo, &data).unwrap_or_else(|e| panic!("connection {seed} ({len} bytes): {e}\n{}", sb.log()));
    assert_eq!(got.len(), data.len(), "connection {seed}: echoed length");
    assert!(got == data, "connection {seed} ({len} bytes): echoed bytes differ");
}

/// Waits (bounded) until alice's counters read `up` and `down`; returns the last reading.
fn settle(api: &ApiClient, up: i64, down: i64) -> (bool, BTreeMap<String, i64>) {
    let mut last = BTreeMap::new();
    let ok = wait_until(Duration::from_secs(5), || {
        last = api.query("user>>>alice@example.com>>>traffic", false);
        last.get(UPLINK) == Some(&up) && last.get(DOWNLINK) == Some(&down)
    });
    (ok, last)
}

/// 20 echo connections through sing-box (5 one after another, 15 over 5 threads), every byte
/// checked, then alice's counters must equal the bytes sent and echoed, exactly.
fn echo_through_sing_box(server: &Shardray, sb: &SingBox) {
    let echo = EchoServer::start();
    for (i, &len) in SIZES[..5].iter().enumerate() {
        echo_once(sb, echo.addr(), len, i as u64);
    }
    std::thread::scope(|scope| {
        for t in 0..5 {
            let echo = echo.addr();
            scope.spawn(move || {
                for k in 0..3 {
                    let i = 5 + t * 3 + k;
                    echo_once(sb, echo, SIZES[i], i as u64);
                }
            });
        }
    });

    let total: i64 = SIZES.iter().map(|&n| n as i64).sum();
    let api = ApiClient::connect(server.api.expect("api address"));
    let (ok, last) = settle(&api, total, total);
    assert!(ok, "alice's counters should be up={total} down={total}, got {last:?}");
}

#[test]
fn sing_box_plain_echo_and_exact_counters() {
    let server = Shardray::start(&server_config(json!({})), 2);
    let sb = SingBox::start(vless_outbound(server.inbound("vless-in"), ALICE, None));
    echo_through_sing_box(&server, &sb);
}

#[test]
fn sing_box_tls_echo_and_exact_counters() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let extra = json!({ "streamSettings": cert.stream_settings("localhost", &["h2", "http/1.1"]) });
    let server = Shardray::start(&server_config(extra), 2);
    let sb = SingBox::start(vless_outbound(server.inbound("vless-in"), ALICE, Some(insecure_tls("localhost"))));
    echo_through_sing_box(&server, &sb);
}

#[test]
fn sing_box_with_wrong_uuid_gets_nothing_and_server_keeps_serving() {
    let server = Shardray::start(&server_config(json!({})), 2);
    let sink = RecordingServer::start(b"should never be seen");
    let wrong =
        SingBox::start(vless_outbound(server.inbound("vless-in"), "0b6a1c9e-3f53-4bd1-9f55-1d2a53a0a1c7", None));

    for attempt in 0..3u64 {
        let data = payload(5_000, 100 + attempt);
        // sing-box answers the SOCKS request itself and only then opens VLESS, so the CONNECT
        // may succeed; what must not happen is any byte coming back.
        let Ok(stream) = wrong.connect(sink.addr()) else {
            continue;
        };
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = (&stream).write_all(&data);
        let _ = stream.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        match (&stream).read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => {}
            Err(e) => panic!("attempt {attempt}: unexpected error {e}"),
        }
        assert!(
            got.is_empty(),
            "attempt {attempt}: a wrong UUID got {} bytes back: {:?}",
            got.len(),
            &got[..got.len().min(64)]
        );
    }
    assert_eq!(sink.next(Duration::from_millis(500)), None, "a wrong UUID reached the destination");

    // The right user, through another sing-box, is served as before; only its bytes count.
    let right = SingBox::start(vless_outbound(server.inbound("vless-in"), ALICE, None));
    let echo = EchoServer::start();
    for (i, len) in [10usize, 70_000, 3].into_iter().enumerate() {
        echo_once(&right, echo.addr(), len, 200 + i as u64);
    }
    let api = ApiClient::connect(server.api.expect("api address"));
    let (ok, last) = settle(&api, 70_013, 70_013);
    assert!(ok, "alice's counters should count only her own 70013 bytes each way, got {last:?}");
    assert!(server.output().lines().all(|l| !l.contains("panicked")), "shardray panicked:\n{}", server.output());
}
