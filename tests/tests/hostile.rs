//! The data plane under hostile load: connection limits that hold across both shards, and
//! slowloris (thousands of connections trickling a handshake a byte at a time) on raw TCP,
//! TLS and WebSocket inbounds: each holds a bounded, measured amount of memory, all are gone
//! at the handshake timeout, and an established session keeps moving data meanwhile.
//!
//! `SHARDRAY_SLOWLORIS` sets the number of trickling connections (default 3000, spread over
//! the three inbounds; the figure in perf/RESULTS.md is from 10000).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::tls::SelfSigned;
use shardray_tests::{vless, vless_config, wait_until, Shardray, ALICE};

#[test]
fn connection_limits_hold_across_both_shards_and_free_up_on_close() {
    let echo = EchoServer::start();
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    let mut second = config["inbounds"][0].clone();
    second["tag"] = json!("vless-b");
    config["inbounds"].as_array_mut().unwrap().push(second);
    config["policy"]["system"]["maxConnections"] = json!(5);
    config["policy"]["system"]["maxInboundConnections"] = json!(3);
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    let server = Shardray::start(&config, 2);
    let (a, b) = (server.inbound("vless-in"), server.inbound("vless-b"));

    // Three on the first inbound (SO_REUSEPORT spreads them over both shards): the fourth is
    // closed unread, while the other inbound still takes connections.
    let mut held: Vec<TcpStream> = (0..3).map(|_| vless::open_session(a, ALICE, echo.addr())).collect();
    // Several tries, so that some land on each shard (each connection is hashed anew).
    for _ in 0..6 {
        let mut extra = vless::connect(a).unwrap();
        let _ = extra.write_all(&vless::request(ALICE, echo.addr()));
        assert!(
            vless::closed_within(&mut extra, Duration::from_secs(5)),
            "a fourth connection to the inbound was served"
        );
    }
    held.push(vless::open_session(b, ALICE, echo.addr()));
    held.push(vless::open_session(b, ALICE, echo.addr()));
    // Five in all: the server is full, for both inbounds.
    for _ in 0..6 {
        let mut extra = vless::connect(b).unwrap();
        assert!(
            vless::closed_within(&mut extra, Duration::from_secs(5)),
            "a sixth connection to the server was served"
        );
    }

    // Closing one frees its place, on whichever shard it was.
    held.remove(0).shutdown(Shutdown::Both).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let mut s = vless::connect(a).unwrap();
            let mut first = vless::request(ALICE, echo.addr());
            first.extend_from_slice(b"again");
            let _ = s.write_all(&first);
            let mut back = [0u8; 7];
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.read_exact(&mut back).is_ok_and(|()| &back == b"\0\0again") && {
                held.push(s);
                true
            }
        }),
        "no place freed after a close\n{}",
        server.output()
    );
    for s in &mut held[..4] {
        s.write_all(b"live").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"live", "a session already admitted stopped working");
    }
    let api = ApiClient::connect(server.api.unwrap());
    let refused = api.get("refused>>>accept_limit", false).unwrap_or(0);
    assert!(refused >= 12, "refusals counted: {refused}");
    let out = server.output();
    assert!(out.contains("policy.system.maxInboundConnections (3) reached"), "{out}");
    assert!(out.contains("policy.system.maxConnections (5) reached"), "{out}");
}

/// Opens connections from 127.0.0.1 that each send the first byte of a VLESS request and no
/// more, until `full` of them are held (in their handshake) and at least one was closed
/// unread (refused); returns those held. A connection counts as refused only when the server
/// closes it, so a slow accept never passes for a refusal.
fn fill_handshakes(proxy: std::net::SocketAddr, opening: &[u8], full: usize) -> Vec<TcpStream> {
    let local: std::net::IpAddr = [127, 0, 0, 1].into();
    let mut held: Vec<TcpStream> = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        if held.len() == full && refused > 0 {
            // On a loaded machine a connection still in the backlog passes for held: each is
            // looked at again, a little longer, before the bound counts as reached.
            let before = held.len();
            held.retain_mut(|s| !vless::closed_within(s, Duration::from_millis(300)));
            refused += before - held.len();
            if held.len() == full {
                break;
            }
            continue;
        }
        let mut s = vless::connect_from(local, proxy).unwrap();
        let _ = s.write_all(&opening[..1]);
        if vless::closed_within(&mut s, Duration::from_millis(1000)) {
            refused += 1;
        } else {
            held.push(s);
        }
        // One that was refused late is not held.
        held.retain_mut(|s| !vless::closed_within(s, Duration::from_millis(1)));
        assert!(held.len() <= full, "{} connections in their handshake from one address", held.len());
    }
    assert!(held.len() == full && refused > 0, "held {} of {full}, {refused} refused", held.len());
    held
}

#[test]
fn handshakes_in_flight_per_source_are_bounded_and_freed_when_done_or_timed_out() {
    const PER_SHARD: usize = 3;
    const SHARDS: usize = 2;
    let echo = EchoServer::start();
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["policy"]["system"]["maxHandshakesPerSource"] = json!(PER_SHARD);
    config["policy"]["levels"]["0"]["handshake"] = json!(15);
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    let server = Shardray::start(&config, SHARDS);
    let proxy = server.inbound("vless-in");
    let (local, other): (std::net::IpAddr, std::net::IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
    // A session of 127.0.0.1 established before: past its handshake, it does not count.
    let mut established = vless::open_session(proxy, ALICE, echo.addr());
    let opening = vless::request(ALICE, echo.addr());

    // The bound on each shard (SO_REUSEPORT spreads one address's connections over both):
    // once both are full, every new connection from 127.0.0.1 is closed unread.
    let mut tricklers = fill_handshakes(proxy, &opening, PER_SHARD * SHARDS);
    for _ in 0..6 {
        let mut s = vless::connect_from(local, proxy).unwrap();
        let _ = s.write_all(&opening);
        assert!(vless::closed_within(&mut s, Duration::from_secs(5)), "a connection past the bound was served");
    }
    // Another address is served meanwhile, as is the session established before.
    for _ in 0..4 {
        let mut s = vless::connect_from(other, proxy).unwrap();
        let mut first = opening.clone();
        first.extend_from_slice(b"other");
        s.write_all(&first).unwrap();
        let mut back = [0u8; 7];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"\0\0other", "127.0.0.2 was not served");
    }
    established.write_all(b"live").unwrap();
    let mut back = [0u8; 4];
    established.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"live");

    // The tricklers finish their handshakes: sessions now, they free their places at once
    // (long before the 15 s handshake timeout) and 127.0.0.1 is served again.
    for s in &mut tricklers {
        s.write_all(&opening[1..]).unwrap();
        s.write_all(b"done").unwrap();
        let mut back = [0u8; 6];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"\0\0done", "a trickler's finished handshake was not served");
    }
    for _ in 0..6 {
        let _served = vless::open_session(proxy, ALICE, echo.addr());
    }

    // Filled again, and left trickling: the handshake timeout closes them, and with that
    // 127.0.0.1 is served again.
    let stalled = fill_handshakes(proxy, &opening, PER_SHARD * SHARDS);
    let mut s = vless::connect_from(local, proxy).unwrap();
    assert!(vless::closed_within(&mut s, Duration::from_secs(5)), "a connection past the bound was served");
    assert!(
        wait_until(Duration::from_secs(25), || {
            let Ok(mut s) = vless::connect_from(local, proxy) else { return false };
            let mut first = opening.clone();
            first.extend_from_slice(b"again");
            let _ = s.write_all(&first);
            let mut back = [0u8; 7];
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.read_exact(&mut back).is_ok_and(|()| &back == b"\0\0again")
        }),
        "127.0.0.1 not served after its handshakes timed out\n{}",
        server.output()
    );
    for mut s in stalled {
        assert!(vless::closed_within(&mut s, Duration::from_secs(5)), "a stalled handshake outlived its timeout");
    }

    let api = ApiClient::connect(server.api.unwrap());
    let refused = api.get("refused>>>handshake_limit", false).unwrap_or(0);
    assert!(refused >= 8, "refusals counted: {refused}");
    let out = server.output();
    assert!(out.contains("policy.system.maxHandshakesPerSource (3) reached for this address on this shard"), "{out}");
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Raises this process's descriptor limit as far as allowed (children inherit it); returns it.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// Seconds to move `len` bytes through an established VLESS session and back.
fn echo_time(session: &mut TcpStream, len: usize) -> f64 {
    let data = vless::payload(len, 3);
    let start = Instant::now();
    let mut writer = session.try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut got = vec![0u8; len];
    session.read_exact(&mut got).unwrap();
    t.join().unwrap();
    assert!(got == data, "the established session's bytes came back wrong");
    start.elapsed().as_secs_f64()
}

#[test]
fn slowloris_connections_cost_little_and_are_gone_at_the_handshake_timeout() {
    let wanted: usize = std::env::var("SHARDRAY_SLOWLORIS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    // Each trickler takes a descriptor here and one in the server, plus a margin.
    let limit = raise_fd_limit() as usize;
    let count = wanted.min(limit.saturating_sub(200));
    assert!(count >= 300, "descriptor limit {limit} leaves too few connections for the test");

    let echo = EchoServer::start();
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    let mut tls = config["inbounds"][0].clone();
    tls["tag"] = json!("vless-tls");
    tls["streamSettings"] = cert.stream_settings("localhost", &[]);
    let mut ws = config["inbounds"][0].clone();
    ws["tag"] = json!("vless-ws");
    ws["streamSettings"] = json!({ "network": "ws", "wsSettings": { "path": "/ws" } });
    config["inbounds"].as_array_mut().unwrap().extend([tls, ws]);
    config["policy"]["levels"]["0"]["handshake"] = json!(3);
    // All the tricklers come from 127.0.0.1: this test measures what each costs, the bound
    // on one address's handshakes has its own test above.
    config["policy"]["system"]["maxHandshakesPerSource"] = json!(0);
    let server = Shardray::start(&config, 2);
    let pid = server.pid();

    // One established session, and its pace before the attack.
    let mut session = vless::open_session(server.inbound("vless-in"), ALICE, echo.addr());
    const BULK: usize = 8 << 20;
    let before = echo_time(&mut session, BULK);
    let rss_before = rss_kib(pid);

    // The trickles: each inbound gets a third, each connection a first byte now and one more
    // every 500 ms, never enough for a handshake.
    let openings: [(&str, &[u8]); 3] = [
        ("vless-in", &vless::request(ALICE, echo.addr())),
        // A TLS record header and the start of a ClientHello.
        ("vless-tls", &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]),
        ("vless-ws", b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"),
    ];
    let started = Instant::now();
    let mut trickles: Vec<(TcpStream, &[u8])> = Vec::with_capacity(count);
    for i in 0..count {
        let (tag, opening) = openings[i % 3];
        let s = TcpStream::connect(server.inbound(tag)).unwrap();
        s.set_nonblocking(true).unwrap();
        trickles.push((s, opening));
    }
    let opened = started.elapsed();
    let trickle = |trickles: &mut Vec<(TcpStream, &[u8])>, at: usize| {
        for (s, opening) in trickles.iter_mut() {
            // Short of the whole opening, so no handshake can complete.
            if at + 1 < opening.len() {
                let _ = s.write(&opening[at..at + 1]);
            }
        }
    };
    for round in 0..3 {
        trickle(&mut trickles, round);
        std::thread::sleep(Duration::from_millis(500));
    }
    // All of them are in their handshake now: what they cost, and the session's pace.
    let rss_during = rss_kib(pid);
    let during = echo_time(&mut session, BULK);
    let per_connection = (rss_during.saturating_sub(rss_before)) as f64 * 1024.0 / count as f64;
    eprintln!(
        "{count} trickling connections (opened in {opened:?}): RSS {rss_before} KiB -> {rss_during} KiB, \
         {per_connection:.0} bytes each; 8 MiB echo {before:.3} s before, {during:.3} s during"
    );
    // Measured on 2026-12-03: about 11 KiB for raw VLESS and 15 KiB for WebSocket (the 4 KiB
    // handshake buffer and the pending read), 29 KiB for TLS (rustls's handshake state, once
    // what follows the handshake got a box of its own; 46 KiB before); 23 KiB on average for
    // this mix. The bound catches a regression, not the goal.
    assert!(per_connection < 32768.0, "{per_connection:.0} bytes of RSS per trickling connection");
    assert!(during < before * 4.0 + 1.0, "the established session slowed from {before:.3} s to {during:.3} s");

    // Still trickling, yet all closed at the 3 s handshake timeout (counted from accept, not
    // from the last byte), with some slack for a loaded machine.
    let deadline = started + Duration::from_secs(3) + Duration::from_secs(6);
    let mut round = 3;
    let mut open: Vec<(TcpStream, &[u8])> = trickles;
    while !open.is_empty() && Instant::now() < deadline {
        trickle(&mut open, round);
        round += 1;
        open.retain(|(s, _)| {
            let mut buf = [0u8; 64];
            match (&*s).read(&mut buf) {
                Ok(0) => false,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                Err(_) => false,
                // A prober is never answered; a reply would be a finding in itself.
                Ok(n) => panic!("a trickling connection got {n} bytes back: {:?}", &buf[..n]),
            }
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(open.is_empty(), "{} of {count} trickling connections outlived the handshake timeout", open.len());
    // The established session outlived them all.
    assert!(echo_time(&mut session, 1 << 16) < 10.0);
}

/// Sets the soft descriptor limit of process `pid` (the hard one stays); returns the old one.
fn set_fd_limit(pid: u32, n: u64) -> u64 {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit(2) on our own child, with valid structs.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit { rlim_cur: n.min(old.rlim_max), rlim_max: old.rlim_max };
    // SAFETY: as above.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

#[test]
fn out_of_descriptors_accept_backs_off_and_live_sessions_go_on() {
    let echo = EchoServer::start();
    let config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("vless-in");
    let mut session = vless::open_session(proxy, ALICE, echo.addr());
    let open_fds = || std::fs::read_dir(format!("/proc/{}/fd", server.pid())).unwrap().count() as u64;
    // Room for two more descriptors, then none.
    let limit = set_fd_limit(server.pid(), open_fds() + 2);
    let waiting: Vec<TcpStream> = (0..20).map(|_| vless::connect(proxy).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(2500));
    // The session that was there goes on.
    session.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    session.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    // Logged at most about once a second per shard, not once per retry (every 50 ms).
    let out = server.output();
    let lines = out.lines().filter(|l| l.contains("accept failed")).count();
    assert!((1..=8).contains(&lines), "{lines} accept failure lines:\n{out}");
    assert!(out.contains("more like it since the last such line"), "{out}");

    // Descriptors back: the connections that waited in the backlog are served.
    set_fd_limit(server.pid(), limit);
    drop(waiting);
    let mut fresh = vless::open_session(proxy, ALICE, echo.addr());
    fresh.write_all(b"again").unwrap();
    let mut back = [0u8; 5];
    fresh.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"again");
}

/// A server that takes one connection and reads it slowly (`upload`), or writes to it as fast
/// as it can (`!upload`), until the test ends.
fn slow_peer(upload: bool) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let done = if upload {
                std::thread::sleep(Duration::from_millis(50));
                !matches!(s.read(&mut buf), Ok(n) if n > 0)
            } else {
                s.write_all(&buf).is_err()
            };
            if done {
                return;
            }
        }
    });
    addr
}

#[test]
fn a_slow_reader_on_either_side_holds_the_relay_to_its_buffers() {
    let config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("vless-in");
    let pid = server.pid();
    for upload in [true, false] {
        let dest = slow_peer(upload);
        let mut s = vless::connect(proxy).unwrap();
        s.write_all(&vless::request(ALICE, dest)).unwrap();
        let rss_before = rss_kib(pid);
        let start = Instant::now();
        let mut moved = 0usize;
        let chunk = vec![7u8; 64 * 1024];
        let mut buf = vec![0u8; 4096];
        s.set_nonblocking(true).unwrap();
        let mut peak = rss_before;
        while start.elapsed() < Duration::from_secs(4) {
            if upload {
                // As fast as the proxy takes it: the destination drains 320 KiB/s.
                if let Ok(n) = s.write(&chunk) {
                    moved += n;
                }
            } else if start.elapsed().as_millis() % 100 < 5 {
                // A reader taking 4 KiB now and then, from a source that never stops.
                if let Ok(n) = s.read(&mut buf) {
                    moved += n;
                }
            }
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(2));
        }
        let grown = peak.saturating_sub(rss_before);
        eprintln!(
            "slow {}: {moved} bytes moved by the client, server RSS +{grown} KiB",
            if upload { "destination" } else { "client" }
        );
        // Buffers per session are bounded (the level's bufferSize, 64 KiB by default, per
        // direction); the rest waits in the sockets. An unbounded relay would grow by the
        // whole transfer.
        assert!(grown < 4096, "the server grew {grown} KiB with one slow session");
        drop(s);
    }
}
