//! Active probing on every proxy inbound that must look like nothing (VLESS, VMess, Trojan,
//! Shadowsocks classic and 2022, on raw TCP): garbage of lengths 1 to 64, 221, 500 and 4096
//! bytes never gets a byte back, and how the connection ends (closed at once, or held until
//! the handshake timeout) is the same whatever the length, so that a prober cannot measure
//! where a header ends or which length a salt has.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use shardray_tests::{vless, vless_config, Shardray, ALICE};

/// The handshake timeout the server runs with, seconds.
const HANDSHAKE: u64 = 2;

/// How a probed connection ended, as a prober sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    /// Closed (FIN) well before the handshake timeout.
    ClosedAtOnce,
    /// Reset well before the handshake timeout.
    ResetAtOnce,
    /// Closed or reset around the handshake timeout.
    AtTimeout,
    /// Still open well after it.
    HeldOpen,
}

/// Sends `probe` and watches the connection without closing our side.
fn probe(addr: SocketAddr, probe: &[u8]) -> Result<End, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let start = Instant::now();
    // The server may stop reading early; what it does with the rest is what is measured.
    let _ = s.write_all(probe);
    s.set_read_timeout(Some(Duration::from_secs(HANDSHAKE + 3))).unwrap();
    let mut buf = [0u8; 256];
    let result = s.read(&mut buf);
    let at_once = start.elapsed() < Duration::from_millis(HANDSHAKE * 1000 / 2);
    match result {
        Ok(0) if at_once => Ok(End::ClosedAtOnce),
        Err(e) if at_once && e.kind() == ErrorKind::ConnectionReset => Ok(End::ResetAtOnce),
        Ok(0) => Ok(End::AtTimeout),
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => Ok(End::HeldOpen),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(End::AtTimeout),
        Err(e) => Err(format!("read: {e}")),
        Ok(n) => Err(format!("{n} bytes came back: {:?}", &buf[..n])),
    }
}

#[test]
fn garbage_of_any_length_gets_no_reply_and_the_same_end() {
    let base = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    let vless_in = base["inbounds"][0].clone();
    let with = |tag: &str, protocol: &str, settings: serde_json::Value| {
        let mut inbound = vless_in.clone();
        inbound["tag"] = json!(tag);
        inbound["protocol"] = json!(protocol);
        inbound["settings"] = settings;
        inbound
    };
    let mut config = base.clone();
    config["inbounds"] = json!([
        vless_in,
        with("vmess-in", "vmess", json!({ "clients": [{ "id": ALICE, "email": "vm@example.com" }] })),
        with(
            "trojan-in",
            "trojan",
            json!({ "clients": [{ "password": "a trojan password", "email": "t@example.com" }] })
        ),
        with("ss-in", "shadowsocks", json!({ "method": "aes-128-gcm", "password": "a shadowsocks password" })),
        with(
            "ss2022-in",
            "shadowsocks",
            json!({ "method": "2022-blake3-aes-128-gcm", "password": "AAECAwQFBgcICQoLDA0ODw==" })
        ),
    ]);
    config["policy"]["levels"]["0"]["handshake"] = json!(HANDSHAKE);
    // Every probe comes from 127.0.0.1 at once: past maxHandshakesPerSource they would be
    // refused at accept (a reset), which is the bound's answer, not the protocol's.
    config["policy"]["system"]["maxHandshakesPerSource"] = json!(0);
    let server = Shardray::start(&config, 2);

    let mut lengths: Vec<usize> = (1..=64).collect();
    lengths.extend([221, 500, 4096]);
    let tags = ["vless-in", "vmess-in", "trojan-in", "ss-in", "ss2022-in"];
    // Every probe at once (each waits for the handshake timeout at most): a few seconds.
    let results: Vec<(&str, usize, Result<End, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = tags
            .iter()
            .flat_map(|&tag| lengths.iter().map(move |&len| (tag, len)))
            .map(|(tag, len)| {
                let addr = server.inbound(tag);
                s.spawn(move || (tag, len, probe(addr, &vless::payload(len, len as u64 * 31 + 7))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut report = String::new();
    for tag in tags {
        let mut ends: std::collections::BTreeMap<End, Vec<usize>> = Default::default();
        for (_, len, result) in results.iter().filter(|(t, ..)| *t == tag) {
            match result {
                Ok(end) => ends.entry(*end).or_default().push(*len),
                Err(e) => report.push_str(&format!("{tag}, {len} bytes: {e}\n")),
            }
        }
        eprintln!("{tag}: {:?}", ends.keys().collect::<Vec<_>>());
        if ends.len() > 1 {
            report.push_str(&format!("{tag}: the end depends on the length: {ends:?}\n"));
        }
    }
    assert!(report.is_empty(), "{report}\n{}", server.output());
    // The shards still serve.
    let echo = shardray_tests::servers::EchoServer::start();
    assert_eq!(vless::round_trip(server.inbound("vless-in"), ALICE, echo.addr(), b"fine").unwrap(), b"fine");
}
