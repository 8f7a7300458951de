//! The VMess inbound against the real binary with two shards: our own client on the wire
//! codec, a recorded first packet replayed, hostile probes (plain and TLS), refused commands,
//! config refusals and share links.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::tls::SelfSigned;
use shardray_tests::vless::{self, payload};
use shardray_tests::{loopback_api, run_cli, vmess, vmess_config, wait_until, Shardray, ALICE};
use shardray_wire::addr::Destination;
use shardray_wire::vmess::{Command, Options, Security};

const UPLINK: &str = "user>>>alice@example.com>>>traffic>>>uplink";
const DOWNLINK: &str = "user>>>alice@example.com>>>traffic>>>downlink";

/// Alice as the only VMess client, a StatsService API, and a 1 s handshake timeout so probes
/// close quickly.
fn config(inbound_extra: Value) -> Value {
    let mut config = vmess_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), inbound_extra);
    config["api"] = loopback_api(&["StatsService"]);
    config["policy"]["levels"]["0"]["handshake"] = json!(1);
    config
}

#[test]
fn round_trips_on_both_shards_count_exactly_per_user() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config(json!({})), 2);
    let proxy = server.inbound("vmess-in");
    let sizes = [1usize, 2, 100, 4_096, 8_192, 65_536, 100_000, 1 << 20, 3 << 20];
    let mut total = 0i64;
    for (i, &len) in sizes.iter().enumerate() {
        let data = payload(len, i as u64);
        assert!(vmess::round_trip(proxy, ALICE, echo.addr(), &data, i as u64).unwrap() == data, "{len} bytes");
        total += len as i64;
    }
    // Many connections at once: the kernel spreads them over both shards.
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let echo = echo.addr();
            s.spawn(move || {
                let data = payload(10_000, 100 + t);
                assert!(vmess::round_trip(proxy, ALICE, echo, &data, 100 + t).unwrap() == data, "thread {t}");
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
    assert_eq!(api.get("inbound>>>vmess-in>>>traffic>>>uplink", false).unwrap(), total);
}

#[test]
fn a_recorded_first_packet_replayed_is_rejected_on_either_shard() {
    let target = RecordingServer::start(b"");
    let server = Shardray::start(&config(json!({})), 2);
    let proxy = server.inbound("vmess-in");
    let (header, flight) = vmess::flight(ALICE, target.addr(), b"once only", 1);
    let got = vmess::send_raw(proxy, &flight).unwrap();
    assert_eq!(vmess::open_response(&header, got).unwrap(), b"");
    assert_eq!(target.next(Duration::from_secs(2)).as_deref(), Some(&b"once only"[..]));
    // Replays from new connections: the kernel sends them to either shard; none may pass.
    for attempt in 0..8 {
        let got = vmess::send_raw(proxy, &flight).unwrap();
        assert!(got.is_empty(), "replay {attempt} got {} bytes back", got.len());
    }
    assert_eq!(target.next(Duration::from_millis(300)), None, "a replay reached the destination");
    assert!(server.output().contains("rejected vmess: replayed auth ID"), "{}", server.output());
}

/// Probe payloads: every length from 1 to 64, then 221, 500 and 4096 bytes of noise.
fn probes() -> Vec<Vec<u8>> {
    (1..=64usize).chain([221, 500, 4096]).map(|len| payload(len, len as u64)).collect()
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

/// Every probe, 16 at a time: nothing comes back, and each close comes between the handshake
/// timeout (1 s) and its end plus the drain's jitter, the same for short probes and long ones
/// (under 16 bytes the server waits for an auth ID; from 16 on it knows at once).
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
                        probe_until_close(connect(), bytes, since)
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
    let (short, long) = times.split_at(15);
    let (short, long) = (mean(short), mean(long));
    eprintln!("probes closed after {short:.3} s (1-15 bytes) and {long:.3} s (16-4096 bytes) on average");
    assert!((short - long).abs() < 0.4, "short probes closed after {short:.2} s on average, long ones {long:.2} s");
}

#[test]
fn probes_get_nothing_back_and_close_alike_plain_and_tls() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config(json!({})), 2);
    let proxy = server.inbound("vmess-in");
    probes_close_alike(|| vless::connect(proxy).unwrap());

    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let tls_server =
        Shardray::start(&config(json!({ "streamSettings": cert.stream_settings("localhost", &["http/1.1"]) })), 2);
    let client = cert.client_config(&["http/1.1"]);
    let tls_proxy = tls_server.inbound("vmess-in");
    probes_close_alike(|| shardray_tests::tls::connect(tls_proxy, client.clone(), "localhost").unwrap());

    let data = payload(5_000, 7);
    assert!(vmess::round_trip(proxy, ALICE, echo.addr(), &data, 9).unwrap() == data);
    let api = ApiClient::connect(server.api.unwrap());
    assert_eq!(api.get("refused>>>bad_request", false).unwrap(), probes().len() as i64);
    assert!(server.output().contains("rejected vmess: invalid user"), "{}", server.output());
    assert!(!server.output().contains("panicked") && !tls_server.output().contains("panicked"));
}

#[test]
fn truncations_stale_clocks_and_strangers_reach_nothing() {
    let target = RecordingServer::start(b"");
    let echo = EchoServer::start();
    let server = Shardray::start(&config(json!({})), 2);
    let proxy = server.inbound("vmess-in");
    let dest = Destination::from(target.addr());
    let aes = (Security::Aes128Gcm, vmess::default_options());
    let header = |seed| vmess::request(ALICE, Command::Tcp, dest.clone(), aes.0, aes.1, seed, vmess::now()).1;
    for (i, cut) in [0, 15, 16, 17, 41, 42, 50, usize::MAX].into_iter().enumerate() {
        let truncated = header(1000 + i as u64);
        let cut = cut.min(truncated.len() - 1);
        assert!(vmess::send_raw(proxy, &truncated[..cut]).unwrap().is_empty(), "cut at {cut} got a reply");
    }
    let (_, stale) = vmess::request(ALICE, Command::Tcp, dest.clone(), aes.0, aes.1, 3, vmess::now() - 130);
    assert!(vmess::send_raw(proxy, &stale).unwrap().is_empty());
    let (_, ahead) = vmess::request(ALICE, Command::Tcp, dest.clone(), aes.0, aes.1, 4, vmess::now() + 130);
    assert!(vmess::send_raw(proxy, &ahead).unwrap().is_empty());
    let stranger = uuid::Uuid::from_u128(77).to_string();
    let (_, other) = vmess::request(&stranger, Command::Tcp, dest, aes.0, aes.1, 5, vmess::now());
    assert!(vmess::send_raw(proxy, &other).unwrap().is_empty());
    assert_eq!(target.next(Duration::from_millis(500)), None, "the destination was reached");
    // Within the window (a client 100 s off) it still works.
    let (_, near) =
        vmess::request(ALICE, Command::Tcp, Destination::from(echo.addr()), aes.0, aes.1, 6, vmess::now() - 100);
    let mut s = vless::connect(proxy).unwrap();
    s.write_all(&near).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(!vless::read_all(&mut s).unwrap().is_empty(), "a 100 s skew was refused");
}

#[test]
fn mux_becomes_a_mux_connection_and_dials_nothing_for_its_header() {
    // The sub-sessions themselves are tested with V2Ray as the client in tests/tests/mux.rs.
    let target = RecordingServer::start(b"");
    let mut config = config(json!({}));
    config["log"]["loglevel"] = json!("debug");
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("vmess-in");
    let (_, request) = vmess::request(
        ALICE,
        Command::Mux,
        Destination::from(target.addr()),
        Security::ChaCha20Poly1305,
        Options::CHUNK_STREAM | Options::CHUNK_MASKING,
        10,
        vmess::now(),
    );
    let mut s = vless::connect(proxy).unwrap();
    s.write_all(&request).unwrap();
    assert!(wait_until(Duration::from_secs(5), || server.output().contains("mux connection")), "{}", server.output());
    assert!(!vless::closed_within(&mut s, Duration::from_millis(300)), "a mux connection waits for its frames");
    assert_eq!(target.next(Duration::from_millis(300)), None);
    let api = ApiClient::connect(server.api.unwrap());
    assert_eq!(api.get("refused>>>unsupported_command", false).unwrap_or(0), 0);
}

#[test]
fn config_refuses_legacy_alter_ids_and_detours_by_name() {
    let cases = [
        (
            json!({ "settings": { "clients": [{ "id": ALICE, "alterId": 4 }] } }),
            "inbounds[0].settings.clients[0].alterId",
        ),
        (json!({ "settings": { "default": { "level": 0, "alterId": 16 } } }), "inbounds[0].settings.default.alterId"),
        (json!({ "settings": { "detour": { "to": "dynamic" } } }), "inbounds[0].settings.detour"),
    ];
    for (extra, path) in cases {
        let err = Shardray::try_start(&vmess_config(json!([{ "id": ALICE }]), extra), 1).err().expect("refused");
        assert!(err.contains(path), "expected {path} in: {err}");
    }
    // alterId 0, Xray's `users` key, a mapped id and a client's security all load.
    let ok = vmess_config(
        json!([{ "id": ALICE, "alterId": 0, "security": "zero" }, { "id": "my-mapped-id", "security": "none" }]),
        json!({}),
    );
    Shardray::start(&ok, 1);
    let mut users = vmess_config(json!([]), json!({}));
    users["inbounds"][0]["settings"] = json!({ "users": [{ "id": ALICE, "email": "a@x" }] });
    Shardray::start(&users, 1);
}

#[test]
fn links_are_printed_for_vmess_users() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(dir.path(), &["example.com"]);
    let mut config = vmess_config(
        json!([{ "id": ALICE, "email": "alice@example.com", "security": "chacha20-poly1305" }]),
        json!({ "streamSettings": cert.stream_settings("example.com", &["http/1.1"]) }),
    );
    config["inbounds"][0]["port"] = json!(8443);
    let file = dir.path().join("config.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let (status, out) = run_cli(&["link", "-c", file.to_str().unwrap(), "--host", "proxy.example"]);
    assert!(status.success(), "{out}");
    let line = out.lines().find(|l| l.starts_with("vmess://")).unwrap_or_else(|| panic!("{out}"));
    let json = base64::engine::general_purpose::STANDARD.decode(&line["vmess://".len()..]).unwrap();
    let link: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        link,
        json!({
            "v": "2", "ps": "alice@example.com", "add": "proxy.example", "port": "8443", "id": ALICE, "aid": "0",
            "scy": "chacha20-poly1305", "net": "tcp", "type": "none", "host": "", "path": "", "tls": "tls",
            "sni": "example.com"
        })
    );
}
