//! VLESS over plain TCP through the real binary with two shards: bytes, counters, policy.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use serde_json::json;
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, vless_config, wait_until, Shardray, ALICE};

const BOB: &str = "0a1b2c3d-0000-4000-8000-000000000002";

fn two_users() -> serde_json::Value {
    let mut config = vless_config(
        json!([
            { "id": ALICE, "email": "alice@example.com", "level": 0 },
            { "id": BOB, "email": "bob@example.com", "level": 1 }
        ]),
        json!({}),
    );
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    config
}

#[test]
fn many_connections_on_two_shards_echo_every_byte_and_count_it_exactly() {
    let echo = EchoServer::start();
    let server = Shardray::start(&two_users(), 2);
    let proxy = server.inbound("vless-in");
    let dest = echo.addr();

    // 8 threads × 12 connections, sizes from 0 bytes to ~300 KiB, all checked byte for byte.
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut sent = 0u64;
                for i in 0..12u64 {
                    let len = ((t * 12 + i) * 3119 % 300_000) as usize;
                    let data = vless::payload(len, t * 100 + i);
                    let back = vless::round_trip(proxy, ALICE, dest, &data).expect("round trip");
                    assert_eq!(back.len(), data.len(), "thread {t} conn {i}");
                    assert!(back == data, "thread {t} conn {i}: bytes differ");
                    sent += len as u64;
                }
                sent
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(total > 1_000_000);

    let api = ApiClient::connect(server.api.expect("api address"));
    let expected = [
        ("user>>>alice@example.com>>>traffic>>>uplink", total),
        ("user>>>alice@example.com>>>traffic>>>downlink", total),
        ("inbound>>>vless-in>>>traffic>>>uplink", total),
        ("inbound>>>vless-in>>>traffic>>>downlink", total),
        ("outbound>>>direct>>>traffic>>>uplink", total),
        ("outbound>>>direct>>>traffic>>>downlink", total),
        ("outbound>>>blocked>>>traffic>>>uplink", 0),
    ];
    // The last bytes are counted as the relay moves them; give the shards a moment to finish.
    let settled = wait_until(Duration::from_secs(5), || {
        let stats = api.query("", false);
        expected.iter().all(|(name, v)| stats.get(*name) == Some(&(*v as i64)))
    });
    assert!(settled, "counters {:#?} != expected {expected:#?}", api.query("", false));
    // Bob's level (1) has no stats policy: upstream keeps no counter for him.
    assert!(api.query("bob@example.com", false).is_empty());
}

#[test]
fn reset_reads_then_zeroes_and_unknown_counters_are_not_found() {
    let echo = EchoServer::start();
    let server = Shardray::start(&two_users(), 2);
    let proxy = server.inbound("vless-in");
    let api = ApiClient::connect(server.api.unwrap());
    let up = "user>>>alice@example.com>>>traffic>>>uplink";

    assert_eq!(api.get(up, false).unwrap(), 0, "counters exist from the start");
    vless::round_trip(proxy, ALICE, echo.addr(), &[7u8; 1000]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || api.get(up, false).unwrap() == 1000));
    assert_eq!(api.get(up, true).unwrap(), 1000, "reset returns the value before zeroing");
    assert_eq!(api.get(up, false).unwrap(), 0);
    vless::round_trip(proxy, ALICE, echo.addr(), &[7u8; 10]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || api.get(up, false).unwrap() == 10));

    let err = api.get("user>>>nobody>>>traffic>>>uplink", false).unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().ends_with("user>>>nobody>>>traffic>>>uplink not found."), "{}", err.message());
}

#[test]
fn stats_service_answers_under_xray_v2ray_and_experimental_names() {
    let server = Shardray::start(&two_users(), 2);
    let api = ApiClient::connect(server.api.unwrap());
    for service in [
        "xray.app.stats.command.StatsService",
        "v2ray.core.app.stats.command.StatsService",
        "experimental.v2rayapi.StatsService",
    ] {
        let path = format!("/{service}/QueryStats");
        let reply: Vec<(String, i64)> = api.block_on(async {
            let mut grpc = tonic::client::Grpc::new(api.channel());
            grpc.ready().await.unwrap();
            let codec = tonic::codec::ProstCodec::<
                shardray_proto::xray::app::stats::command::QueryStatsRequest,
                shardray_proto::xray::app::stats::command::QueryStatsResponse,
            >::default();
            let req = shardray_proto::xray::app::stats::command::QueryStatsRequest {
                pattern: "alice".into(),
                ..Default::default()
            };
            let resp = grpc
                .unary(tonic::Request::new(req), path.parse().unwrap(), codec)
                .await
                .unwrap_or_else(|e| panic!("{service}: {e}"));
            resp.into_inner().stat.into_iter().map(|s| (s.name, s.value)).collect()
        });
        assert_eq!(reply.len(), 2, "{service}: {reply:?}");
    }
}

#[test]
fn online_count_follows_live_sessions() {
    let echo = EchoServer::start();
    let server = Shardray::start(&two_users(), 2);
    let proxy = server.inbound("vless-in");
    let api = ApiClient::connect(server.api.unwrap());
    let online = |n: i64| {
        wait_until(Duration::from_secs(5), || {
            let mut c =
                shardray_proto::xray::app::stats::command::stats_service_client::StatsServiceClient::new(api.channel());
            let r = api.block_on(c.get_stats_online(shardray_proto::xray::app::stats::command::GetStatsRequest {
                name: "user>>>alice@example.com>>>online".into(),
                reset: false,
            }));
            // Offline is NOT_FOUND, as upstream answers before a user's first session.
            match r {
                Ok(r) => r.into_inner().stat.unwrap().value == n,
                Err(e) => n == 0 && e.code() == tonic::Code::NotFound,
            }
        })
    };
    assert!(online(0));
    // As upstream, the value counts distinct client addresses (127.0.0.1 never counts), not
    // sessions: three sessions from 127.0.0.2 and one from 127.0.0.3 are 2.
    let mut open = Vec::new();
    for src in [[127, 0, 0, 2], [127, 0, 0, 2], [127, 0, 0, 2], [127, 0, 0, 3]] {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&std::net::SocketAddr::from((src, 0)).into()).unwrap();
        socket.connect_timeout(&proxy.into(), Duration::from_secs(5)).unwrap();
        let mut s: std::net::TcpStream = socket.into();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut first = vless::request(ALICE, echo.addr());
        first.extend_from_slice(b"ping");
        s.write_all(&first).unwrap();
        let mut back = [0u8; 6];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"\0\0ping");
        open.push(s);
    }
    assert!(online(2), "two client addresses");
    drop(open);
    assert!(online(0), "sessions gone");
}

#[test]
fn idle_sessions_are_closed_after_conn_idle() {
    let echo = EchoServer::start();
    let mut config = two_users();
    config["policy"]["levels"]["0"]["connIdle"] = json!(1);
    let server = Shardray::start(&config, 1);
    let mut s = vless::connect(server.inbound("vless-in")).unwrap();
    let mut first = vless::request(ALICE, echo.addr());
    first.extend_from_slice(b"x");
    s.write_all(&first).unwrap();
    let mut back = [0u8; 3];
    s.read_exact(&mut back).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let waited = started.elapsed();
    assert!(rest.is_empty());
    assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(5), "closed after {waited:?}");
}

#[test]
fn half_close_lets_the_other_direction_finish() {
    // The client stops sending at once; the reply (echo of everything) still arrives in full.
    let echo = EchoServer::start();
    let server = Shardray::start(&two_users(), 1);
    let mut s = vless::connect(server.inbound("vless-in")).unwrap();
    let data = vless::payload(2_000_000, 9);
    let mut first = vless::request(ALICE, echo.addr());
    first.extend_from_slice(&data);
    let writer = {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            w.write_all(&first).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        })
    };
    let back = vless::read_all(&mut s).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), data.len() + 2);
    assert!(back[2..] == data[..]);
}

#[test]
fn users_of_one_inbound_do_not_see_each_other_and_both_work() {
    let echo = EchoServer::start();
    let server = Shardray::start(&two_users(), 2);
    let proxy = server.inbound("vless-in");
    let a = vless::round_trip(proxy, ALICE, echo.addr(), b"from alice").unwrap();
    let b = vless::round_trip(proxy, BOB, echo.addr(), b"from bob").unwrap();
    assert_eq!(a, b"from alice");
    assert_eq!(b, b"from bob");
}

/// A server that accepts and then holds each connection open, silent, for `hold`; with
/// `close_write` it closes its sending side at once instead of staying silent.
fn holding_server(hold: Duration, close_write: bool) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((conn, _)) = listener.accept() {
            if close_write {
                let _ = conn.shutdown(Shutdown::Write);
            }
            std::thread::sleep(hold);
        }
    });
    addr
}

#[test]
fn downlink_only_closes_a_session_whose_client_has_finished() {
    let mut config = two_users();
    config["policy"]["levels"]["0"]["downlinkOnly"] = json!(1);
    let server = Shardray::start(&config, 1);
    let dest = holding_server(Duration::from_secs(15), false);
    let mut s = vless::connect(server.inbound("vless-in")).unwrap();
    let mut first = vless::request(ALICE, dest);
    first.extend_from_slice(b"request");
    s.write_all(&first).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let started = Instant::now();
    let _ = vless::read_all(&mut s);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(6), "closed after {waited:?}");
}

#[test]
fn uplink_only_closes_a_session_whose_server_has_finished() {
    let mut config = two_users();
    config["policy"]["levels"]["0"]["uplinkOnly"] = json!(1);
    let server = Shardray::start(&config, 1);
    let dest = holding_server(Duration::from_secs(15), true);
    let mut s = vless::connect(server.inbound("vless-in")).unwrap();
    let mut first = vless::request(ALICE, dest);
    first.extend_from_slice(b"request");
    s.write_all(&first).unwrap();
    // The client keeps its side open and silent; the server's side ended at once.
    let started = Instant::now();
    let back = vless::read_all(&mut s).unwrap_or_default();
    let waited = started.elapsed();
    assert_eq!(back, [0, 0], "only the response header comes back");
    // The read ends at the upstream's close (end of stream). The client's side then gets
    // uplinkOnly of silence (writes would count as activity) before the proxy closes it, which
    // the second write after that notices (the first draws the reset).
    assert!(waited < Duration::from_secs(1), "upstream's end took {waited:?}");
    std::thread::sleep(Duration::from_millis(2500));
    let _ = s.write_all(b"more");
    std::thread::sleep(Duration::from_millis(100));
    assert!(s.write_all(b"more").is_err(), "the session stayed open after uplinkOnly");
}
