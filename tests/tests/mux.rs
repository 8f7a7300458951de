//! mux.cool on the server: V2Ray 4.45.2 with `mux: {enabled: true}` as the client of our VLESS
//! and VMess inbounds (several TCP sessions at once over its mux connections, byte-exact
//! MiB-size echoes, UDP round trips through its socks inbound, exact counters, user removal
//! closing the mux connection), and our own client: hostile frames, a sub-session whose
//! upstream takes nothing, the user's maxConnections over sub-sessions; the real binary on 2
//! shards.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::echo::echo_and_count;
use shardray_tests::servers::EchoServer;
use shardray_tests::udp::{echo_datagrams, Socks5Udp, UdpEcho};
use shardray_tests::v2ray::V2Ray;
use shardray_tests::vless::{closed_within, payload};
use shardray_tests::{loopback_api, vless_config, vmess_config, wait_until, Shardray, ALICE};

const EMAIL: &str = "alice@example.com";

/// Sizes echoed through the mux: tiny, around frame and buffer edges, several MiB.
const SIZES: [usize; 12] = [1, 100, 8_192, 16_385, 65_535, 65_537, 262_144, 500_000, 777, 3, (1 << 20) + 1, 3 << 20];

/// A server with alice on a VLESS (`vless`) or VMess inbound, stats and the handler API on.
fn server(protocol: &str) -> Shardray {
    let clients = json!([{ "id": ALICE, "email": EMAIL }]);
    let mut config =
        if protocol == "vless" { vless_config(clients, json!({})) } else { vmess_config(clients, json!({})) };
    config["api"] = loopback_api(&["StatsService", "HandlerService"]);
    config["log"]["loglevel"] = json!("debug");
    Shardray::start(&config, 2)
}

/// V2Ray's outbound for alice through `proxy`, with its mux on.
fn v2ray_outbound(protocol: &str, proxy: SocketAddr) -> Value {
    let user = if protocol == "vless" {
        json!({ "id": ALICE, "encryption": "none" })
    } else {
        json!({ "id": ALICE, "alterId": 0, "security": "aes-128-gcm" })
    };
    json!({
        "protocol": protocol,
        "settings": { "vnext": [{ "address": "127.0.0.1", "port": proxy.port(), "users": [user] }] },
        "mux": { "enabled": true, "concurrency": 8 }
    })
}

/// V2Ray with a socks inbound that takes UDP ASSOCIATE too, through `outbound`.
fn v2ray_with_udp(outbound: Value) -> V2Ray {
    let inbounds = json!([{ "listen": "127.0.0.1", "port": shardray_tests::singbox::free_port(), "protocol": "socks",
                            "settings": { "auth": "noauth", "udp": true, "ip": "127.0.0.1" } }]);
    V2Ray::start_full(inbounds, json!([outbound]), json!({}))
}

fn inbound_tag(protocol: &str) -> &'static str {
    if protocol == "vless" {
        "vless-in"
    } else {
        "vmess-in"
    }
}

#[test]
fn v2ray_mux_tcp_sessions_at_once_byte_exact_with_exact_counters_vless_and_vmess() {
    for protocol in ["vless", "vmess"] {
        let server = server(protocol);
        let v2 = v2ray_with_udp(v2ray_outbound(protocol, server.inbound(inbound_tag(protocol))));
        echo_and_count(&server, EMAIL, &SIZES, &|d| v2.connect(d), &|| {
            format!("{protocol}\n{}\n{}", v2.log(), server.output())
        });
        assert!(server.output().contains("mux connection"), "{protocol}: no mux connection seen");
    }
}

#[test]
fn v2ray_mux_udp_round_trips_through_its_socks_inbound_vless_and_vmess() {
    for protocol in ["vless", "vmess"] {
        let server = server(protocol);
        let api = ApiClient::connect(server.api.unwrap());
        let v2 = v2ray_with_udp(v2ray_outbound(protocol, server.inbound(inbound_tag(protocol))));
        let echoes: Vec<UdpEcho> = (0..3).map(|_| UdpEcho::start()).collect();
        let log = || format!("{protocol}\n{}\n{}", v2.log(), server.output());
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = echoes
                .iter()
                .enumerate()
                .map(|(i, echo)| {
                    let (log, dest, socks) = (&log, echo.addr(), v2.socks);
                    s.spawn(move || {
                        let path = Socks5Udp::associate(socks).unwrap();
                        echo_datagrams(&path, dest, None, 500, 40 + i as u64, 4, log)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let t = total as i64;
        let (up, down) = (format!("user>>>{EMAIL}>>>traffic>>>uplink"), format!("user>>>{EMAIL}>>>traffic>>>downlink"));
        let settled = wait_until(Duration::from_secs(5), || {
            api.get(&up, false).ok() == Some(t) && api.get(&down, false).ok() == Some(t)
        });
        assert!(settled, "{protocol}: {:?} / expected {t}", api.query("user", false));
        assert!(server.output().contains("mux connection"), "{protocol}: no mux connection seen");
    }
}

#[test]
fn removing_the_user_closes_the_mux_connection() {
    for protocol in ["vless", "vmess"] {
        let server = server(protocol);
        let api = ApiClient::connect(server.api.unwrap());
        let v2 = v2ray_with_udp(v2ray_outbound(protocol, server.inbound(inbound_tag(protocol))));
        let echo = EchoServer::start();
        let mut sessions: Vec<_> = (0..3)
            .map(|i| {
                let mut s = v2.connect(echo.addr()).unwrap();
                let data = payload(1000, i);
                s.write_all(&data).unwrap();
                let mut got = vec![0u8; data.len()];
                std::io::Read::read_exact(&mut s, &mut got).unwrap();
                assert_eq!(got, data);
                s
            })
            .collect();
        api.remove_user(inbound_tag(protocol), EMAIL).unwrap();
        for s in &mut sessions {
            assert!(closed_within(s, Duration::from_secs(5)), "{protocol}: a sub-session outlived its user");
        }
        assert!(
            wait_until(Duration::from_secs(5), || server.output().contains("mux: user removed")),
            "{protocol}: the mux connection outlived its user\n{}",
            server.output()
        );
    }
}

/// A VLESS mux request from alice, then `frames`.
fn vless_mux(frames: &[u8]) -> Vec<u8> {
    use shardray_wire::vless::{Command, RequestHeader};
    let header = RequestHeader {
        user: shardray_tests::vless::user_id(ALICE),
        flow: String::new(),
        command: Command::Mux,
        destination: None,
    };
    let mut out = Vec::new();
    header.encode(&mut out);
    out.extend_from_slice(frames);
    out
}

#[test]
fn hostile_frames_close_the_connection_and_the_server_goes_on() {
    use shardray_wire::xudp::{Frame, TCP};
    let server = server("vless");
    let echo = EchoServer::start();
    let mut long_meta = vec![0x02, 0x01];
    long_meta.extend_from_slice(&[0; 0x201]);
    let mut twice = Vec::new();
    for _ in 0..2 {
        Frame::encode_new(1, TCP, &echo.addr().into(), None, None, &mut twice).unwrap();
    }
    let mut bad_network = Vec::new();
    Frame::encode_new(1, 7, &echo.addr().into(), None, None, &mut bad_network).unwrap();
    let cases: [(&str, Vec<u8>); 6] = [
        ("metadata above 512 bytes", long_meta),
        ("metadata below 4 bytes", vec![0, 2, 0, 1]),
        ("a New cut inside its address", vec![0, 6, 0, 1, 1, 0, 1, 0]),
        ("Keep for a session id never opened", vec![0, 4, 0, 9, 2, 1, 0, 1, b'x']),
        ("a second New for a live id", twice),
        ("an unknown network", bad_network),
    ];
    for (what, frames) in cases {
        let mut s = shardray_tests::vless::connect(server.inbound("vless-in")).unwrap();
        s.write_all(&vless_mux(&frames)).unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(5)), "{what}: not closed");
    }
    // A good sub-session still works, on both shards.
    for i in 0..4 {
        let data = payload(5000, i);
        let mut frames = Vec::new();
        Frame::encode_new(1, TCP, &echo.addr().into(), None, Some(data.len()), &mut frames).unwrap();
        frames.extend_from_slice(&data);
        let mut s = shardray_tests::vless::connect(server.inbound("vless-in")).unwrap();
        s.write_all(&vless_mux(&frames)).unwrap();
        let mut got = Vec::new();
        let mut head = [0u8; 2];
        std::io::Read::read_exact(&mut s, &mut head).unwrap();
        assert_eq!(head, [0, 0], "the VLESS response header");
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < data.len() {
            let n = std::io::Read::read(&mut s, &mut buf).unwrap();
            assert!(n > 0, "closed after {} bytes", got.len());
            pending.extend_from_slice(&buf[..n]);
            let mut cur = &pending[..];
            while let Ok(f) = Frame::decode(&mut cur) {
                assert_eq!(f.session, 1);
                got.extend_from_slice(f.data);
            }
            let used = pending.len() - cur.len();
            pending.drain(..used);
        }
        assert!(got == data, "echoed bytes differ");
    }
}

/// Reads mux frames from `s` (after the 2-byte VLESS response header) and hands each (its
/// session, status and data) to `each` until it returns false.
fn read_frames(s: &mut std::net::TcpStream, mut each: impl FnMut(u16, shardray_wire::xudp::Status, &[u8]) -> bool) {
    use std::io::Read;
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head, [0, 0], "the VLESS response header");
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the server closed the mux connection");
        pending.extend_from_slice(&buf[..n]);
        let mut cur = &pending[..];
        while let Ok(f) = shardray_wire::xudp::Frame::decode(&mut cur) {
            if !each(f.session, f.status, f.data) {
                return;
            }
        }
        let used = pending.len() - cur.len();
        pending.drain(..used);
    }
}

#[test]
fn a_sub_session_whose_upstream_takes_nothing_is_ended_and_the_others_go_on() {
    use shardray_wire::xudp::{Frame, Status, TCP};
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = server("vless");
    let echo = EchoServer::start();
    // An upstream that accepts and never reads.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let held = std::thread::spawn(move || stuck.accept().map(|(s, _)| s));
    let mut s = shardray_tests::vless::connect(server.inbound("vless-in")).unwrap();
    let mut new = Vec::new();
    Frame::encode_new(1, TCP, &stuck_addr.into(), None, None, &mut new).unwrap();
    s.write_all(&vless_mux(&new)).unwrap();
    let ended = AtomicBool::new(false);
    let data = payload(60_000, 1);
    let mut keep = Vec::new();
    Frame::encode_keep(1, data.len(), &mut keep).unwrap();
    keep.extend_from_slice(&data);
    let started = std::time::Instant::now();
    let echo_addr = echo.addr();
    std::thread::scope(|scope| {
        let mut w = s.try_clone().unwrap();
        let ended = &ended;
        let writer = scope.spawn(move || {
            // Uploads to the stuck upstream until the server ends that sub-session (a bound
            // in bytes too, past every socket buffer), then opens a second one to the echo.
            let mut sent = 0usize;
            while !ended.load(Ordering::Relaxed) && sent < 256 << 20 {
                w.write_all(&keep).unwrap();
                sent += keep.len();
            }
            let hello = payload(30_000, 2);
            let mut second = Vec::new();
            Frame::encode_new(2, TCP, &echo_addr.into(), None, Some(hello.len()), &mut second).unwrap();
            second.extend_from_slice(&hello);
            w.write_all(&second).unwrap();
            hello
        });
        let mut echoed = Vec::new();
        let mut want = 30_000;
        read_frames(&mut s, |id, status, data| {
            match (id, status) {
                (1, Status::End) => ended.store(true, Ordering::Relaxed),
                (2, Status::Keep(_)) => echoed.extend_from_slice(data),
                (1, _) => panic!("sub-session 1 answered"),
                (2, Status::End) => panic!("sub-session 2 ended after {} bytes\n{}", echoed.len(), server.output()),
                _ => {}
            }
            echoed.len() < want
        });
        let hello = writer.join().unwrap();
        want = hello.len();
        assert_eq!(echoed.len(), want);
        assert!(echoed == hello, "the second sub-session's echo differs");
    });
    assert!(started.elapsed() >= Duration::from_secs(9), "ended before the stall bound");
    assert!(server.output().contains("sub-session 1 took nothing for"), "{}", server.output());
    drop(held);
}

#[test]
fn sub_sessions_are_held_to_the_users_max_connections() {
    use shardray_wire::xudp::{Frame, Status, TCP};
    let clients = json!([{ "id": ALICE, "email": EMAIL }]);
    let mut config = vless_config(clients, json!({}));
    config["api"] = loopback_api(&["StatsService"]);
    config["policy"]["levels"]["0"]["maxConnections"] = json!(2);
    let server = Shardray::start(&config, 2);
    let echo = EchoServer::start();
    let mut s = shardray_tests::vless::connect(server.inbound("vless-in")).unwrap();
    let open = |id: u16, first: bool| {
        let mut frames = Vec::new();
        Frame::encode_new(id, TCP, &echo.addr().into(), None, Some(3), &mut frames).unwrap();
        frames.extend_from_slice(b"abc");
        if first {
            vless_mux(&frames)
        } else {
            frames
        }
    };
    s.write_all(&open(1, true)).unwrap();
    let mut r = s.try_clone().unwrap();
    let mut step: u16 = 1;
    read_frames(&mut r, |id, status, data| {
        match (id, status) {
            // Each admitted sub-session echoes; the next one opens once it has.
            (1 | 2, Status::Keep(_)) if id == step && data == b"abc" => {
                step += 1;
                s.write_all(&open(step, false)).unwrap();
            }
            (3, Status::End) => return false,
            other => panic!("unexpected {other:?} {data:?}\n{}", server.output()),
        }
        true
    });
    let api = ApiClient::connect(server.api.unwrap());
    assert!(wait_until(Duration::from_secs(5), || api.get("refused>>>connection_limit", false).ok() == Some(1)));
}

#[test]
fn a_client_that_ends_its_side_still_gets_every_reply_and_end_then_the_close() {
    use shardray_wire::xudp::{Frame, Status, TCP};
    let server = server("vless");
    let echo = EchoServer::start();
    let data = payload(200_000, 7);
    let mut frames = Vec::new();
    for id in [1u16, 2] {
        Frame::encode_new(id, TCP, &echo.addr().into(), None, None, &mut frames).unwrap();
        for part in data.chunks(50_000) {
            Frame::encode_keep(id, part.len(), &mut frames).unwrap();
            frames.extend_from_slice(part);
        }
        Frame::encode_end(id, &mut frames);
    }
    let mut s = shardray_tests::vless::connect(server.inbound("vless-in")).unwrap();
    s.write_all(&vless_mux(&frames)).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got: [Vec<u8>; 2] = Default::default();
    let mut ended = [false; 2];
    read_frames(&mut s, |id, status, frame| {
        let i = usize::from(id - 1);
        match status {
            Status::Keep(None) => got[i].extend_from_slice(frame),
            Status::End => ended[i] = true,
            other => panic!("{other:?}"),
        }
        !(ended[0] && ended[1])
    });
    assert!(got[0] == data && got[1] == data, "echoes of {} and {} bytes", got[0].len(), got[1].len());
    assert!(closed_within(&mut s, Duration::from_secs(5)), "not closed once every sub-session ended");
}

#[test]
fn a_client_that_opens_sub_sessions_and_never_reads_is_held_back() {
    use shardray_wire::addr::{Address, Destination};
    use shardray_wire::xudp::{Frame, TCP};
    let clients = json!([{ "id": ALICE, "email": EMAIL }]);
    let mut config = vless_config(clients, json!({}));
    // Every sub-session to this name is refused at once, each answered with an End frame.
    config["routing"]["rules"] =
        json!([{ "type": "field", "domain": ["full:blocked.example"], "outboundTag": "blocked" }]);
    let server = Shardray::start(&config, 2);
    let mut s = shardray_tests::vless::connect(server.inbound("vless-in")).unwrap();
    socket2::SockRef::from(&s).set_recv_buffer_size(4096).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let blocked = Destination { addr: Address::Domain("blocked.example".into()), port: 80 };
    let mut id: u16 = 0;
    let mut batch = Vec::new();
    let mut next_batch = || {
        batch.clear();
        for _ in 0..2000 {
            id = id % 60_000 + 1;
            Frame::encode_new(id, TCP, &blocked, None, None, &mut batch).unwrap();
        }
        batch.clone()
    };
    s.write_all(&vless_mux(&next_batch())).unwrap();
    // The server stops reading once its End frames fill the outbox: uploads stall long
    // before this bound. (A flood like this one was also held back before the New frame's
    // room check, by the wait at 128 live sub-sessions; a client pacing its New frames
    // below that was not.)
    const BOUND: usize = 64 << 20;
    let mut sent = 0;
    let stalled = loop {
        let frames = next_batch();
        match s.write_all(&frames) {
            Ok(()) => sent += frames.len(),
            Err(e) => break e,
        }
        assert!(sent < BOUND, "the server took {sent} bytes of New frames from a client that never reads");
    };
    assert!(
        matches!(stalled.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        "{stalled}\n{}",
        server.output()
    );
}

#[test]
fn a_client_that_ends_its_side_and_never_reads_is_closed_after_downlink_only() {
    use shardray_wire::xudp::{Frame, TCP};
    let clients = json!([{ "id": ALICE, "email": EMAIL }]);
    let mut config = vless_config(clients, json!({}));
    config["log"]["loglevel"] = json!("info");
    config["policy"]["levels"]["0"]["downlinkOnly"] = json!(1);
    let server = Shardray::start(&config, 2);
    // An upstream that sends without end, more than every buffer on the way holds.
    let blaster = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blaster_addr = blaster.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = blaster.accept().unwrap();
        let chunk = vec![7u8; 65536];
        while s.write_all(&chunk).is_ok() {}
    });
    let mut frames = Vec::new();
    Frame::encode_new(1, TCP, &blaster_addr.into(), None, None, &mut frames).unwrap();
    Frame::encode_end(1, &mut frames);
    let s = shardray_tests::vless::connect(server.inbound("vless-in")).unwrap();
    socket2::SockRef::from(&s).set_recv_buffer_size(4096).unwrap();
    (&s).write_all(&vless_mux(&frames)).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    // The sub-session ends (its downlink unread for downlinkOnly), then the frames left in
    // the outbox go unread for as long again: the connection is closed.
    let closed = wait_until(Duration::from_secs(10), || server.output().contains("last frames unread for"));
    assert!(closed, "a client that never reads held its mux connection\n{}", server.output());
    drop(s);
}

#[test]
fn a_mux_connection_that_opens_nothing_is_closed_at_the_handshake_timeout() {
    let clients = json!([{ "id": ALICE, "email": EMAIL }]);
    let mut config = vless_config(clients, json!({}));
    config["log"]["loglevel"] = json!("info");
    config["policy"]["levels"]["0"]["handshake"] = json!(1);
    let server = Shardray::start(&config, 2);
    let mut s = shardray_tests::vless::connect(server.inbound("vless-in")).unwrap();
    s.write_all(&vless_mux(&[])).unwrap();
    // Not connIdle (300 s): no New within the handshake timeout ends it.
    assert!(closed_within(&mut s, Duration::from_secs(4)), "held past the handshake timeout\n{}", server.output());
    // The error log is written by the logger thread: it may follow the close by a moment.
    let logged =
        wait_until(Duration::from_secs(3), || server.output().contains("no sub-session within the handshake timeout"));
    assert!(logged, "{}", server.output());
}
