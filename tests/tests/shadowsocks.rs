//! The Shadowsocks inbound's edges against the real binary: config refusals naming the field
//! (stream ciphers, `none`, 2022 keys of the wrong length, several users on a ChaCha 2022
//! inbound, UDP alone), hostile probes that get nothing back and are closed at a time that
//! does not depend on how far they parsed, and `shardray link`'s ss:// links.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardray_tests::servers::EchoServer;
use shardray_tests::shadowsocks::{round_trip, SsUser};
use shardray_tests::vless::{self, payload};
use shardray_tests::{run_cli, shadowsocks_config, Shardray};

fn refused(settings: Value) -> String {
    Shardray::try_start(&shadowsocks_config(settings, json!({})), 1).err().expect("refused")
}

#[test]
fn config_refuses_by_name() {
    let cases = [
        (json!({ "method": "aes-256-cfb", "password": "p" }), "inbounds[0].settings.method", "stream cipher"),
        (json!({ "method": "none", "password": "p" }), "inbounds[0].settings.method", "unencrypted"),
        (json!({ "method": "rot13", "password": "p" }), "inbounds[0].settings.method", "unknown method"),
        (json!({ "method": "aes-128-gcm" }), "inbounds[0].settings.password", "missing"),
        (
            json!({ "clients": [{ "method": "chacha20-ietf", "password": "p", "email": "a@x" }] }),
            "inbounds[0].settings.clients[0].method",
            "stream cipher",
        ),
        (
            json!({ "clients": [{ "method": "aes-128-gcm", "password": "p" }, { "method": "aes-128-gcm", "password": "p" }] }),
            "inbounds[0].settings.clients[1].password",
            "duplicate",
        ),
        (
            json!({ "method": "2022-blake3-aes-256-gcm", "password": "AAAAAAAAAAAAAAAAAAAAAA==" }),
            "inbounds[0].settings.password",
            "32 bytes",
        ),
        (
            json!({ "method": "2022-blake3-chacha20-poly1305", "password": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                    "clients": [{ "password": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" }] }),
            "inbounds[0].settings.method",
            "identity headers",
        ),
        (
            json!({ "method": "2022-blake3-aes-128-gcm", "password": "AAAAAAAAAAAAAAAAAAAAAA==",
                    "clients": [{ "password": "not base64" }] }),
            "inbounds[0].settings.clients[0].password",
            "base64",
        ),
        (json!({ "method": "aes-128-gcm", "password": "p", "network": "udp" }), "inbounds[0].settings.network", "UDP"),
    ];
    for (settings, path, words) in cases {
        let err = refused(settings.clone());
        assert!(err.contains(path) && err.contains(words), "{settings}: {err}");
    }
}

/// Writes `bytes` without closing, then reads until the server closes: what came back and how
/// long after `since` the close came.
fn probe_until_close(mut s: std::net::TcpStream, bytes: &[u8], since: Instant) -> (Vec<u8>, Duration) {
    let _ = s.write_all(bytes);
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

#[test]
fn probes_get_nothing_back_and_close_alike() {
    let echo = EchoServer::start();
    let mut config = shadowsocks_config(
        json!({ "clients": [{ "method": "aes-256-gcm", "password": "pw", "email": "a@example.com" }] }),
        json!({}),
    );
    config["policy"]["levels"]["0"]["handshake"] = json!(1);
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("ss-in");
    // Under 50 bytes (salt and length chunk) the server waits for more; from 50 on it knows.
    let probes: Vec<Vec<u8>> = (1..=64usize).chain([221, 500, 4096]).map(|n| payload(n, n as u64)).collect();
    let mut times = vec![Duration::ZERO; probes.len()];
    std::thread::scope(|s| {
        for (chunk, out) in probes.chunks(16).zip(times.chunks_mut(16)) {
            let handles: Vec<_> = chunk
                .iter()
                .map(|bytes| s.spawn(move || probe_until_close(vless::connect(proxy).unwrap(), bytes, Instant::now())))
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
    let (short, long) = times.split_at(49);
    let (short, long) = (mean(short), mean(long));
    eprintln!("probes closed after {short:.3} s (1-49 bytes) and {long:.3} s (50-4096 bytes) on average");
    assert!((short - long).abs() < 0.4, "short probes closed after {short:.2} s on average, long ones {long:.2} s");
    // The shard is still serving.
    let user = SsUser::new("aes-256-gcm", "pw");
    assert_eq!(round_trip(proxy, &user, echo.addr(), b"alive", 1).unwrap(), b"alive");
}

#[test]
fn links_are_printed_in_sip002_form() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let (server_psk, user_psk) = ("AAECAwQFBgcICQoLDA0ODw==", "EBESExQVFhcYGRobHB0eHw==");
    let mut config = shadowsocks_config(
        json!({ "clients": [{ "method": "chacha20-poly1305", "password": "p@ss word", "email": "alice@example.com" }] }),
        json!({ "port": 8388 }),
    );
    let multi = json!({ "tag": "ss22", "listen": "127.0.0.1", "port": 8389, "protocol": "shadowsocks",
        "settings": { "method": "2022-blake3-aes-128-gcm", "password": server_psk,
                      "clients": [{ "password": user_psk, "email": "bob@example.com" }] } });
    config["inbounds"].as_array_mut().unwrap().push(multi);
    let file = dir.path().join("config.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let (status, out) = run_cli(&["link", "-c", file.to_str().unwrap(), "--host", "proxy.example"]);
    assert!(status.success(), "{out}");
    let links: Vec<&str> = out.lines().filter(|l| l.starts_with("ss://")).collect();
    assert_eq!(links.len(), 2, "{out}");
    let userinfo = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("chacha20-ietf-poly1305:p@ss word");
    assert_eq!(links[0], format!("ss://{userinfo}@proxy.example:8388#alice%40example.com"));
    assert_eq!(
        links[1],
        "ss://2022-blake3-aes-128-gcm:AAECAwQFBgcICQoLDA0ODw%3D%3D%3AEBESExQVFhcYGRobHB0eHw%3D%3D\
         @proxy.example:8389#bob%40example.com"
    );
}
