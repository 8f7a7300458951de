//! The Trojan inbound against the real binary with two shards: our own client on the wire
//! codec, hostile probes (plain and TLS), fallbacks, refused commands, and share links.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::tls::SelfSigned;
use shardray_tests::vless::{self, payload};
use shardray_tests::{loopback_api, run_cli, trojan, trojan_config, wait_until, Shardray, ALICE_PASSWORD};
use shardray_wire::addr::Destination;
use shardray_wire::trojan::Command;

const UPLINK: &str = "user>>>alice@example.com>>>traffic>>>uplink";
const DOWNLINK: &str = "user>>>alice@example.com>>>traffic>>>downlink";

/// Alice as the only Trojan client, a StatsService API, and a 1 s handshake timeout so probes
/// close quickly.
fn config(inbound_extra: Value) -> Value {
    let mut config =
        trojan_config(json!([{ "password": ALICE_PASSWORD, "email": "alice@example.com" }]), inbound_extra);
    config["api"] = loopback_api(&["StatsService"]);
    config["policy"]["levels"]["0"]["handshake"] = json!(1);
    config
}

#[test]
fn round_trips_on_both_shards_count_exactly_per_user() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config(json!({})), 2);
    let proxy = server.inbound("trojan-in");
    let sizes = [1usize, 2, 100, 4_096, 65_536, 100_000, 1 << 20, 3 << 20];
    let mut total = 0i64;
    for (i, &len) in sizes.iter().enumerate() {
        let data = payload(len, i as u64);
        assert!(trojan::round_trip(proxy, ALICE_PASSWORD, echo.addr(), &data).unwrap() == data, "{len} bytes");
        total += len as i64;
    }
    // Many connections at once: the kernel spreads them over both shards.
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let echo = echo.addr();
            s.spawn(move || {
                let data = payload(10_000, 100 + t);
                assert!(trojan::round_trip(proxy, ALICE_PASSWORD, echo, &data).unwrap() == data, "thread {t}");
            });
        }
    });
    total += 16 * 10_000;
    let api = ApiClient::connect(server.api.unwrap());
    let mut last = Default::default();
    let settled = wait_until(Duration::from_secs(5), || {
        last = api.query("user>>>alice@example.com>>>traffic", false);
        last.get(UPLINK) == Some(&total) && last.get(DOWNLINK) == Some(&total)
    });
    assert!(settled, "alice's counters should be {total} each way, got {last:?}");
    assert_eq!(api.get("inbound>>>trojan-in>>>traffic>>>uplink", false).unwrap(), total);
}

/// Probe payloads: every length from 1 to 64, then 221, 500 and 4096 bytes; odd lengths are
/// lowercase hex (a key's alphabet, so the server must wait for more), even ones noise.
fn probes() -> Vec<Vec<u8>> {
    (1..=64usize)
        .chain([221, 500, 4096])
        .map(|len| {
            let noise = payload(len, len as u64);
            if len % 2 == 1 {
                noise.iter().map(|b| b"0123456789abcdef"[usize::from(b & 15)]).collect()
            } else {
                noise
            }
        })
        .collect()
}

/// Writes `bytes` without closing, then reads until the server closes: what came back and how
/// long after `since` the close came.
fn probe_until_close<S: Read + Write>(mut s: S, bytes: &[u8], since: Instant) -> (Vec<u8>, Duration) {
    let _ = s.write_all(bytes);
    let _ = s.flush();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                panic!("the server did not close within the read timeout")
            }
            Err(_) => break,
        }
    }
    (got, since.elapsed())
}

/// Every probe on `connect`'s streams, 16 at a time: no byte comes back, and each close comes
/// between the handshake timeout (1 s) and its end plus the drain's jitter (under 1 s), the
/// same for short probes and long ones.
fn probes_close_alike<S: Read + Write>(connect: impl Fn() -> S + Sync) {
    let probes = probes();
    let mut times = vec![Duration::ZERO; probes.len()];
    std::thread::scope(|s| {
        for (chunk, out) in probes.chunks(16).zip(times.chunks_mut(16)) {
            let connect = &connect;
            let handles: Vec<_> = chunk
                .iter()
                .map(|bytes| {
                    s.spawn(move || {
                        let since = Instant::now();
                        let stream = connect();
                        probe_until_close(stream, bytes, since)
                    })
                })
                .collect();
            for ((h, t), bytes) in handles.into_iter().zip(out.iter_mut()).zip(chunk) {
                let (got, took) = h.join().unwrap();
                assert!(got.is_empty(), "a {}-byte probe got {} bytes back", bytes.len(), got.len());
                assert!(
                    took >= Duration::from_millis(900) && took < Duration::from_millis(2600),
                    "a {}-byte probe was closed after {took:?}",
                    bytes.len()
                );
                *t = took;
            }
        }
    });
    let mean = |ts: &[Duration]| ts.iter().sum::<Duration>().as_secs_f64() / ts.len() as f64;
    let (short, long) = times.split_at(55);
    let (short, long) = (mean(short), mean(long));
    eprintln!("probes closed after {short:.3} s (1-55 bytes) and {long:.3} s (56-4096 bytes) on average");
    assert!((short - long).abs() < 0.4, "short probes closed after {short:.2} s on average, long ones {long:.2} s");
}

#[test]
fn probes_get_nothing_back_and_close_alike_plain_and_tls() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config(json!({})), 2);
    let proxy = server.inbound("trojan-in");
    probes_close_alike(|| vless::connect(proxy).unwrap());

    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let tls_server =
        Shardray::start(&config(json!({ "streamSettings": cert.stream_settings("localhost", &["http/1.1"]) })), 2);
    let tls_proxy = tls_server.inbound("trojan-in");
    let client = cert.client_config(&["http/1.1"]);
    probes_close_alike(|| shardray_tests::tls::connect(tls_proxy, client.clone(), "localhost").unwrap());

    // Both still serve, and the probes were counted.
    let data = payload(5_000, 7);
    assert!(trojan::round_trip(proxy, ALICE_PASSWORD, echo.addr(), &data).unwrap() == data);
    let api = ApiClient::connect(server.api.unwrap());
    assert_eq!(api.get("refused>>>bad_request", false).unwrap(), probes().len() as i64);
    assert!(server.output().contains("rejected trojan: not a trojan request"), "{}", server.output());
    assert!(!server.output().contains("panicked") && !tls_server.output().contains("panicked"));
}

#[test]
fn a_wrong_password_or_a_truncated_header_reaches_nothing() {
    let target = RecordingServer::start(b"");
    let echo = EchoServer::start();
    let server = Shardray::start(&config(json!({})), 2);
    let proxy = server.inbound("trojan-in");
    let mut wrong = trojan::request("not alice's password", target.addr());
    wrong.extend_from_slice(b"secret payload");
    let probe = |bytes: &[u8]| {
        let mut s = vless::connect(proxy).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(Shutdown::Write);
        vless::read_all(&mut s).unwrap_or_default()
    };
    assert!(probe(&wrong).is_empty());
    // The key alone settles it.
    assert!(probe(&wrong[..56]).is_empty());
    let right = trojan::request(ALICE_PASSWORD, target.addr());
    for cut in 0..right.len() {
        assert!(probe(&right[..cut]).is_empty(), "cut at {cut} got a reply");
    }
    assert_eq!(target.next(Duration::from_millis(500)), None, "the destination was reached");
    let data = payload(1_000, 1);
    assert!(trojan::round_trip(proxy, ALICE_PASSWORD, echo.addr(), &data).unwrap() == data);
}

#[test]
fn udp_associate_reaches_nothing_before_its_first_frame() {
    // The request's own address is not a destination: frames name theirs (tests/udp.rs).
    let target = RecordingServer::start(b"");
    let server = Shardray::start(&config(json!({})), 2);
    let proxy = server.inbound("trojan-in");
    let mut s = vless::connect(proxy).unwrap();
    let request = trojan::request_with(ALICE_PASSWORD, Command::UdpAssociate, Destination::from(target.addr()));
    s.write_all(&request).unwrap();
    assert!(!vless::closed_within(&mut s, Duration::from_millis(500)), "a UDP session was closed");
    assert_eq!(target.next(Duration::from_millis(300)), None);
}

#[test]
fn with_a_fallback_an_http_request_reaches_it_unchanged() {
    let web = RecordingServer::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let extra = json!({ "settings": { "fallbacks": [{ "dest": web.addr().port() }] } });
    let server = Shardray::start(&config(extra), 2);
    let proxy = server.inbound("trojan-in");
    let request = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let mut s = vless::connect(proxy).unwrap();
    s.write_all(request).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let reply = vless::read_all(&mut s).unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200 OK"), "{:?}", String::from_utf8_lossy(&reply));
    assert_eq!(web.next(Duration::from_secs(2)).as_deref(), Some(&request[..]));
    // A wrong key goes there too, byte for byte.
    let wrong = trojan::request("wrong", web.addr());
    let mut s = vless::connect(proxy).unwrap();
    s.write_all(&wrong).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let _ = vless::read_all(&mut s);
    assert_eq!(web.next(Duration::from_secs(2)), Some(wrong));
}

#[test]
fn links_are_printed_for_trojan_users() {
    let dir = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(dir.path(), &["example.com"]);
    let mut config = config(json!({ "streamSettings": cert.stream_settings("example.com", &["http/1.1"]) }));
    config["inbounds"][0]["port"] = json!(8443);
    let file = dir.path().join("config.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let (status, out) = run_cli(&["link", "-c", file.to_str().unwrap(), "--host", "proxy.example"]);
    assert!(status.success(), "{out}");
    assert!(
        out.lines().any(|l| l
            == "trojan://alice%27s%20trojan%20password@proxy.example:8443?security=tls&sni=example.com&type=tcp#alice%40example.com"),
        "{out}"
    );
}
