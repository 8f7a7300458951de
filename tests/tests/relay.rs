//! The relay itself through the real binary: the zero-copy path for plain TCP (bulk both ways
//! at once with exact counters, half-close each way, a kick in the middle of a stalled
//! transfer) and the buffered path under TLS.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use shardray_tests::api::{ApiClient, KickUserOperation};
use shardray_tests::servers::EchoServer;
use shardray_tests::tls::{self, SelfSigned};
use shardray_tests::{vless, vless_config, wait_until, Shardray, ALICE};

fn config(services: &[&str]) -> serde_json::Value {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = shardray_tests::loopback_api(services);
    config
}

/// The distinct pipes the process has open.
fn pipes(pid: u32) -> HashSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("pipe:"))
        .collect()
}

/// A server for one connection that sends `down` bytes (pattern `seed`) while it reads
/// everything the client sends until end of stream; reports what it read, then closes.
fn source_and_sink(down: usize, seed: u64) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = conn.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let data = vless::payload(down, seed);
            let ok = w.write_all(&data).is_ok();
            let _ = w.shutdown(Shutdown::Write);
            ok
        });
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        assert!(writer.join().unwrap(), "the server's sending side failed");
        let _ = tx.send(got);
    });
    (addr, rx)
}

#[test]
fn spliced_bulk_both_ways_at_once_arrives_intact_and_is_counted_exactly() {
    let server = Shardray::start(&config(&["StatsService"]), 2);
    let before = pipes(server.pid());
    let (up_len, down_len) = (24 << 20, 40 << 20);
    let (dest, received) = source_and_sink(down_len, 2);

    let mut s = vless::connect(server.inbound("vless-in")).unwrap();
    let up = vless::payload(up_len, 1);
    let mut first = vless::request(ALICE, dest);
    first.extend_from_slice(&up[..1000]); // some payload rides with the header
    s.write_all(&first).unwrap();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let rest = up[1000..].to_vec();
        thread::spawn(move || {
            w.write_all(&rest).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        })
    };
    let back = vless::read_all(&mut s).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), down_len + 2);
    assert_eq!(back[..2], [0, 0], "the response header comes first");
    assert!(back[2..] == vless::payload(down_len, 2)[..], "downlink bytes differ");
    let got = received.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(got.len(), up_len);
    assert!(got == up, "uplink bytes differ");

    let api = ApiClient::connect(server.api.unwrap());
    let expected = [
        ("user>>>alice@example.com>>>traffic>>>uplink", up_len),
        ("user>>>alice@example.com>>>traffic>>>downlink", down_len),
        ("inbound>>>vless-in>>>traffic>>>uplink", up_len),
        ("inbound>>>vless-in>>>traffic>>>downlink", down_len),
        ("outbound>>>direct>>>traffic>>>uplink", up_len),
        ("outbound>>>direct>>>traffic>>>downlink", down_len),
    ];
    let settled = wait_until(Duration::from_secs(5), || {
        let stats = api.query("", false);
        expected.iter().all(|(name, v)| stats.get(*name) == Some(&(*v as i64)))
    });
    assert!(settled, "counters {:#?} != expected {expected:#?}", api.query("", false));
    // The bytes went through pipes, which the shard keeps for the next session.
    let after = pipes(server.pid());
    assert!(after.difference(&before).count() >= 1, "no pipe was used: {before:?} -> {after:?}");
}

#[test]
fn spliced_half_close_from_the_server_lets_the_client_finish() {
    // The server sends its answer and closes its side first; the client, having read it all,
    // still sends and the server still receives every byte.
    let server = Shardray::start(&config(&[]), 1);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let dest = listener.local_addr().unwrap();
    let answer = vless::payload(3 << 20, 7);
    let late = vless::payload(5 << 20, 8);
    let (tx, rx) = mpsc::channel();
    {
        let answer = answer.clone();
        thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            conn.write_all(&answer).unwrap();
            conn.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            let _ = conn.read_to_end(&mut got);
            let _ = tx.send(got);
        });
    }
    let mut s = vless::connect(server.inbound("vless-in")).unwrap();
    s.write_all(&vless::request(ALICE, dest)).unwrap();
    let back = vless::read_all(&mut s).unwrap();
    assert_eq!(back.len(), answer.len() + 2);
    assert!(back[2..] == answer[..]);
    s.write_all(&late).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(got.len(), late.len());
    assert!(got == late);
}

#[test]
fn a_kicked_users_stalled_spliced_session_closes() {
    // The destination floods the client, which reads nothing: the relay waits for room on the
    // client's socket with bytes in its pipe. A kick must still close it, and promptly.
    let server = Shardray::start(&config(&["HandlerService"]), 1);
    let api = ApiClient::connect(server.api.unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let dest = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        while conn.write_all(&chunk).is_ok() {}
    });
    let mut s = vless::connect(server.inbound("vless-in")).unwrap();
    s.write_all(&vless::request(ALICE, dest)).unwrap();
    let mut head = [0u8; 2 + 4096];
    s.read_exact(&mut head).unwrap();
    // Let every buffer on the way fill up.
    thread::sleep(Duration::from_millis(500));
    api.ours("vless-in", "KickUserOperation", &KickUserOperation { email: "alice@example.com".into() }).unwrap();
    let started = Instant::now();
    // Drain what was already queued; the stream must then end (or reset) within a few seconds.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let ended = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) if started.elapsed() < Duration::from_secs(5) => continue,
            Ok(_) => break false,
            Err(e) => break e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
        }
    };
    assert!(ended, "the session stayed open after the kick ({:?})", started.elapsed());
}

#[test]
fn tls_sessions_relay_bulk_through_pooled_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(dir.path(), &["relay.test"]);
    let mut config = config(&["StatsService"]);
    config["inbounds"][0]["streamSettings"] = cert.stream_settings("relay.test", &[]);
    let server = Shardray::start(&config, 1);
    let echo = EchoServer::start();
    let api = ApiClient::connect(server.api.unwrap());
    let before = pipes(server.pid());

    let mut total = 0;
    for (i, len) in [0usize, 1, 70_000, 6 << 20].into_iter().enumerate() {
        let stream = tls::connect(server.inbound("vless-in"), cert.client_config(&[]), "relay.test").unwrap();
        let data = vless::payload(len, i as u64);
        let mut first = vless::request(ALICE, echo.addr());
        first.extend_from_slice(&data);
        let back = tls::duplex_exchange(stream, first).unwrap();
        assert_eq!(back.len(), len + 2, "length {len}");
        assert!(back[2..] == data[..], "length {len}: bytes differ");
        total += len as i64;
    }
    let up = "user>>>alice@example.com>>>traffic>>>uplink";
    let down = "user>>>alice@example.com>>>traffic>>>downlink";
    let settled = wait_until(Duration::from_secs(5), || {
        api.get(up, false).ok() == Some(total) && api.get(down, false).ok() == Some(total)
    });
    assert!(settled, "{:?} {:?} != {total}", api.get(up, false), api.get(down, false));
    // Nothing spliced: TLS needs the bytes in user space.
    assert_eq!(pipes(server.pid()), before, "a TLS session used a pipe");
}
