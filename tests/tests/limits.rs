//! Level limits through the real binary with two shards: `uplinkRate` and `downlinkRate` hold
//! for a user's sessions together, whichever shard serves each; an unlimited user beside it
//! goes at full speed; a level change (ours, or a panel's remove then add within the removal's
//! grace) slows a live transfer without a reconnect;
//! `maxConnections` and `maxIPs` refuse the excess on both shards together, as a wrong user is
//! refused: no reply on VLESS, the wrong password's reply byte for byte on SOCKS5 and HTTP, and
//! the fallback on Trojan. VLESS carries most of it; Trojan, SOCKS and HTTP show that the limits
//! do not depend on the protocol.
//!
//! Rates are measured where the bytes arrive (the upstream sink for uplink, the client for
//! downlink), so kernel buffers in between do not count as moved.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardray_tests::api::{ApiClient, SetUserLevelOperation};
use shardray_tests::metrics::shard_sessions;
use shardray_tests::proxy::{echo_through, http_config, read_head, socks5_over, socks_config};
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::{trojan, trojan_config, vless, vless_config, wait_until, Shardray, ALICE, ALICE_PASSWORD};
use socket2::{Domain, Socket, Type};

const MIB: f64 = 1024.0 * 1024.0;
const BOB: &str = "4c6f0a64-2d0b-4a4a-9a39-4d2b4f0bb0a2";

/// A TCP server on loopback that counts every byte it reads (`Sink`) or writes bytes to
/// every connection as fast as it can (`Source`), until dropped.
struct Server {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn sink() -> Server {
        Server::start(false)
    }

    fn source() -> Server {
        Server::start(true)
    }

    fn start(source: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, st) = (bytes.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if st.load(Relaxed) {
                    return;
                }
                let (b, st) = (b.clone(), st.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while !st.load(Relaxed) {
                        let n = if source { conn.write(&buf) } else { conn.read(&mut buf) };
                        match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                b.fetch_add(n as u64, Relaxed);
                            }
                        }
                    }
                });
            }
        });
        Server { addr, bytes, stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// One client session that moves bytes one way until told to stop: uploading to a sink, or
/// downloading from a source (counting what arrives).
struct Transfer {
    thread: Option<JoinHandle<std::io::Result<()>>>,
    stop: Arc<AtomicBool>,
    /// Bytes that arrived at the client (downloads).
    received: Arc<AtomicU64>,
}

impl Transfer {
    /// A session on `stream`, whose protocol header `header` is sent first; uploads if `up`.
    fn start(mut stream: TcpStream, header: Vec<u8>, up: bool) -> Transfer {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (st, r) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            stream.set_write_timeout(Some(Duration::from_secs(20)))?;
            stream.set_read_timeout(Some(Duration::from_secs(20)))?;
            stream.write_all(&header)?;
            let mut buf = vec![0x5au8; 64 * 1024];
            while !st.load(Relaxed) {
                if up {
                    stream.write_all(&buf)?;
                } else {
                    match stream.read(&mut buf)? {
                        0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                        n => r.fetch_add(n as u64, Relaxed),
                    };
                }
            }
            let _ = stream.shutdown(Shutdown::Both);
            Ok(())
        });
        Transfer { thread: Some(thread), stop, received }
    }

    /// Stops the session; panics if it failed (the proxy closed it, say).
    fn finish(mut self) {
        self.stop.store(true, Relaxed);
        let ended = self.thread.take().unwrap().join().unwrap();
        if let Err(e) = ended {
            // A stopped upload blocked in a write fails when the peer resets: only a failure
            // before the stop counts, and a download fails only by end of stream.
            assert!(e.kind() != std::io::ErrorKind::UnexpectedEof, "the session ended early: {e}");
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Bytes per second that `counter` grows by over `window`.
fn rate_over(window: Duration, counter: impl Fn() -> u64) -> f64 {
    let (c0, t0) = (counter(), Instant::now());
    std::thread::sleep(window);
    let (c1, t1) = (counter(), Instant::now());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// Opens `n` connections to `proxy` such that both shards hold some, counting on none else
/// being live (the kernel spreads connections by their ports: one landing where it would
/// leave a shard empty is dropped and another made).
fn connections_on_both_shards(server: &Shardray, proxy: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns: Vec<TcpStream> = Vec::new();
    for attempt in 0..64 {
        let s = vless::connect(proxy).unwrap();
        let k = conns.len() + 1;
        assert!(
            wait_until(Duration::from_secs(5), || shard_sessions(server).iter().sum::<u64>() == k as u64),
            "sessions: {:?}",
            shard_sessions(server)
        );
        let spread = shard_sessions(server);
        let empty = spread.iter().filter(|&&c| c == 0).count();
        // With `k` of `n` placed, each empty shard needs one of the rest.
        if empty > n - k {
            drop(s);
            assert!(wait_until(Duration::from_secs(5), || shard_sessions(server).iter().sum::<u64>() == k as u64 - 1));
            assert!(attempt < 63, "the kernel put every connection on one shard");
            continue;
        }
        conns.push(s);
        if conns.len() == n {
            break;
        }
    }
    assert_eq!(shard_sessions(server).len(), 2);
    conns
}

/// A VLESS server with two shards, metrics and the API: Alice at level 1, Bob at level 0
/// (unlimited), and `levels` merged into the policy.
fn server(levels: Value, proxy_config: fn(Value, Value) -> Value, clients: Value) -> (Shardray, ApiClient) {
    server_with(levels, proxy_config(clients, json!({})))
}

/// `server` with the proxy's config as given.
fn server_with(levels: Value, mut config: Value) -> (Shardray, ApiClient) {
    for (level, keys) in levels.as_object().unwrap() {
        config["policy"]["levels"][level] = keys.clone();
    }
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService"]);
    config["metrics"] = json!({ "listen": "127.0.0.1:0" });
    // Held-back notices and refusals are logged at info.
    config["log"]["loglevel"] = "info".into();
    // A refused VLESS or Trojan client is drained as a wrong user is, until the handshake
    // timeout: kept short so that each refusal is seen within a second or two.
    if config["policy"]["levels"]["0"]["handshake"].is_null() {
        config["policy"]["levels"]["0"]["handshake"] = json!(1);
    }
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    (server, api)
}

fn vless_users() -> Value {
    json!([
        { "id": ALICE, "email": "alice@example.com", "level": 1 },
        { "id": BOB, "email": "bob@example.com", "level": 0 }
    ])
}

/// Asserts `rate` is `expected` MiB/s within `tolerance` (a fraction).
fn assert_rate(what: &str, rate: f64, expected: f64, tolerance: f64) {
    let mib = rate / MIB;
    eprintln!("{what}: {mib:.3} MiB/s (expected {expected} ± {:.0}%)", tolerance * 100.0);
    assert!((mib - expected).abs() <= expected * tolerance, "{what}: {mib:.3} MiB/s, expected {expected} MiB/s");
}

/// Four uploads (or downloads) of Alice's at once, spread over both shards, through VLESS.
fn four_transfers(server: &Shardray, target: SocketAddr, up: bool) -> Vec<Transfer> {
    let proxy = server.inbound("vless-in");
    connections_on_both_shards(server, proxy, 4)
        .into_iter()
        .map(|s| Transfer::start(s, vless::request(ALICE, target), up))
        .collect()
}

#[test]
fn uplink_rate_holds_for_the_user_across_four_connections_on_both_shards() {
    let (server, _api) = server(json!({ "1": { "uplinkRate": "1MiB" } }), vless_config, vless_users());
    let sink = Server::sink();
    let transfers = four_transfers(&server, sink.addr, true);
    std::thread::sleep(Duration::from_secs(1));
    let rate = rate_over(Duration::from_secs(5), || sink.bytes.load(Relaxed));
    assert_rate("uplink of 4 connections on 2 shards", rate, 1.0, 0.10);
    assert_eq!(shard_sessions(&server).iter().filter(|&&n| n > 0).count(), 2, "both shards carried the transfer");
    transfers.into_iter().for_each(Transfer::finish);
    let out = server.output();
    assert!(out.contains("user alice@example.com: rate_limited"), "no rate-limit notice in the log:\n{out}");
}

#[test]
fn downlink_rate_holds_for_the_user_across_four_connections_on_both_shards() {
    let (server, _api) = server(json!({ "1": { "downlinkRate": 1048576 } }), vless_config, vless_users());
    let source = Server::source();
    let transfers = four_transfers(&server, source.addr, false);
    std::thread::sleep(Duration::from_secs(1));
    let received = || transfers.iter().map(|t| t.received.load(Relaxed)).sum::<u64>();
    let rate = rate_over(Duration::from_secs(5), received);
    assert_rate("downlink of 4 connections on 2 shards", rate, 1.0, 0.10);
    assert_eq!(shard_sessions(&server).iter().filter(|&&n| n > 0).count(), 2, "both shards carried the transfer");
    // Every connection got a share.
    for t in &transfers {
        assert!(t.received.load(Relaxed) > 256 * 1024, "a starved connection: {}", t.received.load(Relaxed));
    }
    transfers.into_iter().for_each(Transfer::finish);
}

#[test]
fn an_unlimited_user_beside_a_limited_one_is_not_slowed() {
    let (server, _api) =
        server(json!({ "1": { "uplinkRate": "1MiB", "downlinkRate": "1MiB" } }), vless_config, vless_users());
    let proxy = server.inbound("vless-in");
    let sink = Server::sink();
    let bob_rate = || {
        let bob = Transfer::start(vless::connect(proxy).unwrap(), vless::request(BOB, sink.addr), true);
        std::thread::sleep(Duration::from_millis(300));
        let rate = rate_over(Duration::from_millis(1500), || sink.bytes.load(Relaxed));
        bob.finish();
        rate
    };
    let alone = bob_rate();
    let alice: Vec<Transfer> = (0..2)
        .map(|_| Transfer::start(vless::connect(proxy).unwrap(), vless::request(ALICE, sink.addr), true))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let beside = bob_rate() - MIB;
    alice.into_iter().for_each(Transfer::finish);
    let alone_again = bob_rate();
    let alone = (alone + alone_again) / 2.0;
    eprintln!("Bob alone {:.0} MiB/s, beside Alice {:.0} MiB/s", alone / MIB, beside / MIB);
    assert!(alone > 20.0 * MIB, "Bob is slow even alone: {:.1} MiB/s", alone / MIB);
    // The point is that Bob is not held to Alice's 1 MiB/s: a throughput ratio between two
    // runs is not a test on a shared machine (the benches measure the cost), so the bound is
    // far above her rate and far below his own pace.
    assert!(beside > 10.0 * MIB, "Bob beside Alice: {:.1} MiB/s, alone {:.1}", beside / MIB, alone / MIB);
}

#[test]
fn a_level_change_slows_a_live_download_within_a_second() {
    let levels = json!({ "1": { "downlinkRate": "4MiB" }, "2": { "downlinkRate": "1MiB" } });
    let (server, api) = server(levels, vless_config, vless_users());
    let source = Server::source();
    let download =
        Transfer::start(vless::connect(server.inbound("vless-in")).unwrap(), vless::request(ALICE, source.addr), false);
    let received = || download.received.load(Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    assert_rate("at level 1", rate_over(Duration::from_secs(2), received), 4.0, 0.10);
    let op = SetUserLevelOperation { email: "alice@example.com".into(), level: 2 };
    api.ours("vless-in", "SetUserLevelOperation", &op).unwrap();
    // Within a second of the change the same connection runs at the new rate.
    std::thread::sleep(Duration::from_secs(1));
    assert_rate("after the move to level 2", rate_over(Duration::from_secs(3), received), 1.0, 0.10);
    download.finish();
}

#[test]
fn a_remove_then_add_keeps_the_live_download_at_the_new_level() {
    // 3x-ui's and Marzban's way of changing a user's level: remove it, add it again.
    let levels = json!({
        "1": { "downlinkRate": "4MiB", "statsUserDownlink": true },
        "2": { "downlinkRate": "1MiB", "statsUserDownlink": true }
    });
    let (server, api) = server(levels, vless_config, vless_users());
    let source = Server::source();
    let download =
        Transfer::start(vless::connect(server.inbound("vless-in")).unwrap(), vless::request(ALICE, source.addr), false);
    let received = || download.received.load(Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    assert_rate("at level 1", rate_over(Duration::from_secs(2), received), 4.0, 0.10);
    api.remove_user("vless-in", "alice@example.com").unwrap();
    api.add_user("vless-in", "alice@example.com", ALICE, 2).unwrap();
    // Past the removal's grace, the same connection goes on at the new level's rate.
    std::thread::sleep(Duration::from_secs(2));
    assert_rate("after remove and add at level 2", rate_over(Duration::from_secs(3), received), 1.0, 0.10);
    // Its bytes still count for alice, from before the removal on: at least what the two
    // measured windows moved.
    let name = "user>>>alice@example.com>>>traffic>>>downlink";
    let counted = api.query(name, false).get(name).copied().unwrap_or(0);
    assert!(counted as f64 > 10.0 * MIB, "alice's downlink counter: {counted}");
    download.finish();
}

#[test]
fn a_plain_remove_refuses_new_sessions_at_once_and_closes_live_ones_after_the_grace() {
    let (server, api) = server(json!({}), vless_config, vless_users());
    let echo = EchoServer::start();
    let proxy = server.inbound("vless-in");
    let mut live = vless::open_session(proxy, ALICE, echo.addr());
    let removed = Instant::now();
    api.remove_user("vless-in", "alice@example.com").unwrap();
    assert!(vless::round_trip(proxy, ALICE, echo.addr(), b"ping").is_err(), "a new session of a removed user");
    // The grace (1.5 s): the live session still echoes within it, and is closed within a
    // second after it.
    live.write_all(b"still").unwrap();
    let mut back = [0u8; 5];
    live.read_exact(&mut back).unwrap();
    assert!(removed.elapsed() < Duration::from_millis(1500), "too slow to check the grace");
    assert!(vless::closed_within(&mut live, Duration::from_millis(2500)), "the removed user's session lives on");
    assert!(removed.elapsed() >= Duration::from_millis(1400), "closed before the grace: {:?}", removed.elapsed());
}

#[test]
fn an_add_with_other_credentials_does_not_keep_the_removed_users_sessions() {
    let (server, api) = server(json!({}), vless_config, vless_users());
    let echo = EchoServer::start();
    let proxy = server.inbound("vless-in");
    let mut by_id = vless::open_session(proxy, ALICE, echo.addr());
    let mut by_email = vless::open_session(proxy, BOB, echo.addr());
    // Alice's email comes back with another id; Bob's id comes back under another email.
    api.remove_user("vless-in", "alice@example.com").unwrap();
    api.remove_user("vless-in", "bob@example.com").unwrap();
    api.add_user("vless-in", "alice@example.com", "7c4fe2b1-6a4e-4c9e-9d55-1b1f3c5d7e90", 0).unwrap();
    api.add_user("vless-in", "bob-renamed@example.com", BOB, 0).unwrap();
    // Bob's id under another email is another slot: his session closes at once, long before
    // the 1.5 s grace ends. Alice's old id was not added back: its session ends with the grace.
    assert!(vless::closed_within(&mut by_email, Duration::from_millis(500)), "a session of the old email lives on");
    assert!(vless::closed_within(&mut by_id, Duration::from_millis(2500)), "a session of the old id lives on");
    // The new users are served.
    assert_eq!(vless::round_trip(proxy, BOB, echo.addr(), b"ping").unwrap(), b"ping");
}

/// A VLESS session to the echo server from `src`, checked with one round trip.
fn session_from(src: [u8; 4], proxy: SocketAddr, user: &str, echo: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((src, 0)).into())?;
    socket.connect_timeout(&proxy.into(), Duration::from_secs(5))?;
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut first = vless::request(user, echo);
    first.extend_from_slice(b"ping");
    s.write_all(&first)?;
    let mut back = [0u8; 6];
    s.read_exact(&mut back)?;
    assert_eq!(&back, b"\0\0ping");
    Ok(s)
}

/// Whether a session from `src` is refused: the proxy closes it without a byte of reply.
fn refused_from(src: [u8; 4], proxy: SocketAddr, user: &str, echo: SocketAddr) -> bool {
    match session_from(src, proxy, user, echo) {
        Ok(_) => false,
        Err(e) => {
            assert!(
                matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset),
                "a refusal that is not a silent close: {e}"
            );
            true
        }
    }
}

/// Waits until the API counts `n` refusals named `name`.
fn refusals_reach(api: &ApiClient, name: &str, n: i64) -> bool {
    wait_until(Duration::from_secs(5), || api.get(&format!("refused>>>{name}"), false).ok() == Some(n))
}

#[test]
fn max_connections_holds_across_both_shards() {
    let (server, api) = server(json!({ "1": { "maxConnections": 2 } }), vless_config, vless_users());
    let proxy = server.inbound("vless-in");
    let echo = EchoServer::start();
    // Two live sessions, one on each shard.
    let mut live: Vec<TcpStream> = connections_on_both_shards(&server, proxy, 2);
    for s in &mut live {
        let mut first = vless::request(ALICE, echo.addr());
        first.extend_from_slice(b"ping");
        s.write_all(&first).unwrap();
        let mut back = [0u8; 6];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"\0\0ping");
    }
    // A third, whichever shard takes it, gets no reply; several tries land on both shards.
    for _ in 0..6 {
        assert!(refused_from([127, 0, 0, 1], proxy, ALICE, echo.addr()), "a third session was let in");
    }
    assert!(refusals_reach(&api, "connection_limit", 6), "{:?}", api.get("refused>>>connection_limit", false));
    // Bob is not limited.
    let _bob: Vec<TcpStream> = (0..4).map(|_| session_from([127, 0, 0, 1], proxy, BOB, echo.addr()).unwrap()).collect();
    // One closed lets one more in.
    drop(live.pop());
    assert!(wait_until(Duration::from_secs(5), || session_from([127, 0, 0, 1], proxy, ALICE, echo.addr())
        .map(|s| live.push(s))
        .is_ok()));
    assert!(refused_from([127, 0, 0, 1], proxy, ALICE, echo.addr()));
    let out = server.output();
    assert!(out.contains("user alice@example.com: connection_limit"), "no refusal in the log:\n{out}");
}

#[test]
fn max_ips_refuses_a_second_address_while_the_first_is_connected() {
    let (server, api) = server(json!({ "1": { "maxIPs": 1 } }), vless_config, vless_users());
    let proxy = server.inbound("vless-in");
    let echo = EchoServer::start();
    // Several sessions from one address are fine; they are kept on one shard (those the kernel
    // puts on the other are closed again), so that the other shard has none of its own.
    let mut first: Vec<TcpStream> = Vec::new();
    let mut home = None;
    for _ in 0..64 {
        let s = session_from([127, 0, 0, 1], proxy, ALICE, echo.addr()).unwrap();
        let k = first.len() as u64 + 1;
        assert!(wait_until(Duration::from_secs(5), || shard_sessions(&server).iter().sum::<u64>() == k));
        let spread = shard_sessions(&server);
        let shard = *home.get_or_insert_with(|| spread.iter().position(|&c| c == 1).unwrap());
        if spread[shard] == k {
            first.push(s);
        } else {
            drop(s);
            assert!(wait_until(Duration::from_secs(5), || shard_sessions(&server).iter().sum::<u64>() == k - 1));
        }
        if first.len() == 3 {
            break;
        }
    }
    assert_eq!(first.len(), 3, "the kernel put no three connections on one shard");
    // A second address is refused wherever it lands: of eight tries at once, each on either
    // shard, all on the shard holding the first address is 1 in 256, so the other shard, which
    // knows of that address only through the user's shared state, refuses some of them.
    let echo_addr = echo.addr();
    let tries: Vec<_> =
        (0..8).map(|_| std::thread::spawn(move || refused_from([127, 0, 0, 2], proxy, ALICE, echo_addr))).collect();
    for t in tries {
        assert!(t.join().unwrap(), "a second address was let in");
    }
    assert!(refusals_reach(&api, "ip_limit", 8));
    // Once the first address has left, the second may come.
    drop(first);
    assert!(wait_until(Duration::from_secs(5), || session_from([127, 0, 0, 2], proxy, ALICE, echo.addr()).is_ok()));
    let _second = session_from([127, 0, 0, 2], proxy, ALICE, echo.addr()).unwrap();
    assert!(refused_from([127, 0, 0, 1], proxy, ALICE, echo.addr()));
    assert!(server.output().contains("user alice@example.com: ip_limit"));
}

#[test]
fn trojan_sessions_are_held_to_the_same_limits() {
    let clients = json!([{ "password": ALICE_PASSWORD, "email": "alice@example.com", "level": 1 }]);
    let (server, api) =
        server(json!({ "1": { "downlinkRate": "8Mbps", "maxConnections": 2 } }), trojan_config, clients);
    let proxy = server.inbound("trojan-in");
    let source = Server::source();
    let downloads: Vec<Transfer> = (0..2)
        .map(|_| Transfer::start(vless::connect(proxy).unwrap(), trojan::request(ALICE_PASSWORD, source.addr), false))
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let received = || downloads.iter().map(|t| t.received.load(Relaxed)).sum::<u64>();
    // 8 Mbit/s is 10⁶ bytes per second.
    assert_rate("trojan downlink at 8Mbps", rate_over(Duration::from_secs(4), received), 1e6 / MIB, 0.10);
    // A third session gets no reply.
    let mut third = vless::connect(proxy).unwrap();
    third.write_all(&trojan::request(ALICE_PASSWORD, source.addr)).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(third.read(&mut buf), Ok(0) | Err(_)), "a third trojan session was let in");
    assert!(refusals_reach(&api, "connection_limit", 1));
    downloads.into_iter().for_each(Transfer::finish);
}

#[test]
fn a_bad_rate_is_refused_at_load_naming_its_path() {
    let mut config = vless_config(vless_users(), json!({}));
    config["policy"]["levels"]["1"] = json!({ "uplinkRate": "fast" });
    let out = Shardray::try_start(&config, 1).err().expect("a config with a bad rate started");
    assert!(out.contains("policy.levels.1.uplinkRate"), "{out}");
    config["policy"]["levels"]["1"] = json!({ "downlinkRate": -5 });
    let out = Shardray::try_start(&config, 1).err().expect("a config with a negative rate started");
    assert!(out.contains("policy.levels.1.downlinkRate"), "{out}");
}

/// The README's Level limits example, as written (its port made free), starts with two shards.
#[test]
fn the_readme_example_starts() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("### Level limits").nth(1).expect("the README's Level limits section");
    let block = section.split("```json").nth(1).unwrap().split("```").next().unwrap();
    let config: Value = serde_json::from_str(&block.replace("10086", "0")).unwrap();
    let server = Shardray::start(&config, 2);
    assert!(server.inbounds.contains_key("vless-in"));
}

#[test]
fn udp_over_vless_is_held_to_the_uplink_rate() {
    let (server, _api) = server(json!({ "1": { "uplinkRate": "1MiB" } }), vless_config, vless_users());
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let bytes = Arc::new(AtomicU64::new(0));
    {
        let bytes = bytes.clone();
        sink.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                if let Ok(n) = sink.recv(&mut buf) {
                    bytes.fetch_add(n as u64, Relaxed);
                }
            }
        });
    }
    let session = shardray_tests::udp::VlessUdp::open(server.inbound("vless-in"), ALICE, sink_addr, &[]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, mut stream) = (stop.clone(), session.stream.try_clone().unwrap());
        std::thread::spawn(move || {
            let packet = [0x33u8; 1200];
            let mut framed = Vec::new();
            for _ in 0..32 {
                framed.extend_from_slice(&(packet.len() as u16).to_be_bytes());
                framed.extend_from_slice(&packet);
            }
            while !stop.load(Relaxed) {
                if stream.write_all(&framed).is_err() {
                    return;
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    assert_rate("VLESS UDP uplink", rate_over(Duration::from_secs(4), || bytes.load(Relaxed)), 1.0, 0.10);
    stop.store(true, Relaxed);
    let _ = session.stream.shutdown(Shutdown::Both);
    sender.join().unwrap();
}

#[test]
fn a_reload_that_changes_a_levels_rate_holds_new_sessions_to_it() {
    let mut config = vless_config(vless_users(), json!({}));
    config["policy"]["levels"]["1"] = json!({ "downlinkRate": "4MiB" });
    // A port chosen up front, so the reread file names the same listener.
    config["inbounds"][0]["port"] = json!(shardray_tests::fixed_port());
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("vless-in");
    let source = Server::source();
    let download = || Transfer::start(vless::connect(proxy).unwrap(), vless::request(ALICE, source.addr), false);
    let rate_of = |t: &Transfer| {
        std::thread::sleep(Duration::from_millis(500));
        rate_over(Duration::from_secs(2), || t.received.load(Relaxed))
    };
    let before = download();
    assert_rate("before the reload", rate_of(&before), 4.0, 0.10);
    before.finish();

    config["policy"]["levels"]["1"] = json!({ "downlinkRate": "1MiB" });
    std::fs::write(server.dir.path().join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    assert!(
        wait_until(Duration::from_secs(10), || server.output().contains("(SIGHUP): config reloaded: policy replaced")),
        "{}",
        server.output()
    );
    let after = download();
    assert_rate("after the reload", rate_of(&after), 1.0, 0.10);
    after.finish();
}

/// SOCKS5 and HTTP accounts: alice (limited, at level 1) and bob (unlimited).
const PROXY_ALICE: (&str, &str) = ("alice", "alice's proxy password");
const PROXY_BOB: (&str, &str) = ("bob", "bob's proxy password");

fn proxy_accounts() -> Value {
    json!([
        { "user": PROXY_ALICE.0, "pass": PROXY_ALICE.1, "email": "alice@example.com", "level": 1 },
        { "user": PROXY_BOB.0, "pass": PROXY_BOB.1, "email": "bob@example.com", "level": 0 }
    ])
}

fn socks_with_accounts(accounts: Value, extra: Value) -> Value {
    socks_config(json!({ "auth": "password", "accounts": accounts, "udp": true }), extra)
}

fn http_with_accounts(accounts: Value, extra: Value) -> Value {
    http_config(json!({ "accounts": accounts }), extra)
}

/// Sends `request` from `src`, ends its side, and reads everything the proxy answers until it
/// closes (within ten seconds): the bytes a client sees.
fn answer_from(src: [u8; 4], proxy: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = vless::connect_from(src.into(), proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    // Nothing more comes: a session let in ends once its echo has answered the end.
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("no close within 10 s after {got:?}: {e}"),
    }
}

/// A SOCKS5 greeting offering username/password, then the credentials, in one write.
fn socks_login((user, pass): (&str, &str)) -> Vec<u8> {
    let mut out = Vec::new();
    shardray_wire::socks::encode_greeting(&[shardray_wire::socks::method::PASSWORD], &mut out);
    shardray_wire::socks::Credentials { username: user.as_bytes(), password: pass.as_bytes() }
        .encode(&mut out)
        .unwrap();
    out
}

/// An HTTP CONNECT to `dest` with Basic credentials.
fn http_login(credentials: (&str, &str), dest: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    shardray_wire::http::encode_connect(&dest.into(), Some(credentials), &[], &mut out);
    out
}

/// A SOCKS5 CONNECT session from `src` to the echo server, checked with a round trip.
fn socks_session_from(src: [u8; 4], proxy: SocketAddr, account: (&str, &str), echo: SocketAddr) -> TcpStream {
    let mut s = vless::connect_from(src.into(), proxy).unwrap();
    socks5_over(&mut s, Some(account), echo.into()).unwrap();
    assert_eq!(echo_through(&mut s, b"ping").unwrap(), b"ping");
    s
}

/// An HTTP CONNECT session from `src` to the echo server, checked with a round trip.
fn http_session_from(src: [u8; 4], proxy: SocketAddr, account: (&str, &str), echo: SocketAddr) -> TcpStream {
    let mut s = vless::connect_from(src.into(), proxy).unwrap();
    s.write_all(&http_login(account, echo)).unwrap();
    let head = read_head(&mut s).unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    assert_eq!(echo_through(&mut s, b"ping").unwrap(), b"ping");
    s
}

/// One proxy protocol with accounts, as the limits tests drive it.
struct AccountProxy {
    tag: &'static str,
    config: fn(Value, Value) -> Value,
    /// What a client sends to log in (and, for HTTP, to ask for a tunnel to the address).
    login: fn((&str, &str), SocketAddr) -> Vec<u8>,
    session_from: fn([u8; 4], SocketAddr, (&str, &str), SocketAddr) -> TcpStream,
}

const SOCKS: AccountProxy = AccountProxy {
    tag: "socks-in",
    config: socks_with_accounts,
    login: |account, _| socks_login(account),
    session_from: socks_session_from,
};

const HTTP: AccountProxy =
    AccountProxy { tag: "http-in", config: http_with_accounts, login: http_login, session_from: http_session_from };

/// With alice at `maxConnections` 1 and a live session, her next ones (from the same address,
/// over both shards) get exactly what a wrong password gets; bob is let in meanwhile.
fn over_max_connections_answers_as_a_wrong_password(proxy: AccountProxy) {
    let (server, api) = server(json!({ "1": { "maxConnections": 1 } }), proxy.config, proxy_accounts());
    let addr = server.inbound(proxy.tag);
    let echo = EchoServer::start();
    let wrong = answer_from([127, 0, 0, 1], addr, &(proxy.login)((PROXY_ALICE.0, "wrong"), echo.addr()));
    assert!(!wrong.is_empty(), "a wrong password got no reply");
    let _live = (proxy.session_from)([127, 0, 0, 1], addr, PROXY_ALICE, echo.addr());
    for attempt in 0..6 {
        let over = answer_from([127, 0, 0, 1], addr, &(proxy.login)(PROXY_ALICE, echo.addr()));
        assert_eq!(over, wrong, "attempt {attempt}: over the limit, another answer than a wrong password's");
    }
    assert!(refusals_reach(&api, "connection_limit", 6), "{:?}", api.get("refused>>>connection_limit", false));
    let _bob: Vec<TcpStream> =
        (0..3).map(|_| (proxy.session_from)([127, 0, 0, 1], addr, PROXY_BOB, echo.addr())).collect();
    // Once the live session has gone, alice is let in again.
    drop(_live);
    assert!(wait_until(Duration::from_secs(5), || {
        let answer = answer_from([127, 0, 0, 1], addr, &(proxy.login)(PROXY_ALICE, echo.addr()));
        answer != wrong
    }));
    assert!(server.output().contains("user alice@example.com: connection_limit"), "{}", server.output());
}

/// With alice at `maxIPs` 1 and a live session from 127.0.0.1, a session from 127.0.0.2 gets
/// exactly what a wrong password from there gets.
fn over_max_ips_answers_as_a_wrong_password(proxy: AccountProxy) {
    let (server, api) = server(json!({ "1": { "maxIPs": 1 } }), proxy.config, proxy_accounts());
    let addr = server.inbound(proxy.tag);
    let echo = EchoServer::start();
    let wrong = answer_from([127, 0, 0, 2], addr, &(proxy.login)((PROXY_ALICE.0, "wrong"), echo.addr()));
    let live: Vec<TcpStream> =
        (0..3).map(|_| (proxy.session_from)([127, 0, 0, 1], addr, PROXY_ALICE, echo.addr())).collect();
    for attempt in 0..4 {
        let over = answer_from([127, 0, 0, 2], addr, &(proxy.login)(PROXY_ALICE, echo.addr()));
        assert_eq!(over, wrong, "attempt {attempt}: a second address, another answer than a wrong password's");
    }
    assert!(refusals_reach(&api, "ip_limit", 4), "{:?}", api.get("refused>>>ip_limit", false));
    drop(live);
    assert!(wait_until(Duration::from_secs(5), || {
        answer_from([127, 0, 0, 2], addr, &(proxy.login)(PROXY_ALICE, echo.addr())) != wrong
    }));
    assert!(server.output().contains("user alice@example.com: ip_limit"), "{}", server.output());
}

#[test]
fn socks5_over_max_connections_gets_the_wrong_password_reply() {
    over_max_connections_answers_as_a_wrong_password(SOCKS);
}

#[test]
fn socks5_over_max_ips_gets_the_wrong_password_reply() {
    over_max_ips_answers_as_a_wrong_password(SOCKS);
}

#[test]
fn http_over_max_connections_gets_the_wrong_account_reply() {
    over_max_connections_answers_as_a_wrong_password(HTTP);
}

#[test]
fn http_over_max_ips_gets_the_wrong_account_reply() {
    over_max_ips_answers_as_a_wrong_password(HTTP);
}

/// A SOCKS5 user over its limits cannot open a UDP association either: the wrong password's
/// reply comes before any ASSOCIATE can be asked.
#[test]
fn socks5_udp_associate_is_held_to_the_same_limits() {
    let (server, _api) = server(json!({ "1": { "maxConnections": 1 } }), socks_with_accounts, proxy_accounts());
    let addr = server.inbound("socks-in");
    let wrong = answer_from([127, 0, 0, 1], addr, &socks_login((PROXY_ALICE.0, "wrong")));
    // A live association holds alice's one session.
    let mut control = vless::connect_from([127, 0, 0, 1].into(), addr).unwrap();
    let mut out = socks_login(PROXY_ALICE);
    shardray_wire::socks::Request {
        command: shardray_wire::socks::Command::UdpAssociate,
        destination: SocketAddr::from(([0, 0, 0, 0], 0)).into(),
    }
    .encode(&mut out);
    control.write_all(&out).unwrap();
    let mut replies = [0u8; 2 + 2 + 10];
    control.read_exact(&mut replies).unwrap();
    assert_eq!(&replies[..5], &[5, 2, 1, 0, 5][..], "the association was not granted");
    assert_eq!(replies[5], 0, "the association was not granted");
    assert_eq!(answer_from([127, 0, 0, 1], addr, &socks_login(PROXY_ALICE)), wrong);
    drop(control);
    assert!(wait_until(Duration::from_secs(5), || {
        answer_from([127, 0, 0, 1], addr, &socks_login(PROXY_ALICE)) != wrong
    }));
}

/// Trojan sends a wrong password to the fallback: a user over its limits goes there too, with
/// its bytes unchanged, and the fallback's answer is what it gets.
#[test]
fn trojan_over_max_connections_goes_to_the_fallback_as_a_wrong_password() {
    let web = RecordingServer::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let clients = json!([{ "password": ALICE_PASSWORD, "email": "alice@example.com", "level": 1 }]);
    let (server, api) = server_with(
        json!({ "1": { "maxConnections": 1 } }),
        trojan_config(clients, json!({ "settings": { "fallbacks": [{ "dest": web.addr().port() }] } })),
    );
    let proxy = server.inbound("trojan-in");
    let echo = EchoServer::start();
    let _live = trojan::open_session(proxy, ALICE_PASSWORD, echo.addr());
    for (who, password) in [("a wrong password", "wrong"), ("alice over her limit", ALICE_PASSWORD)] {
        let request = trojan::request(password, echo.addr());
        let mut s = vless::connect(proxy).unwrap();
        s.write_all(&request).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let reply = vless::read_all(&mut s).unwrap();
        assert!(reply.starts_with(b"HTTP/1.1 200 OK"), "{who}: {:?}", String::from_utf8_lossy(&reply));
        assert_eq!(web.next(Duration::from_secs(2)), Some(request), "{who}: the fallback got other bytes");
    }
    assert!(refusals_reach(&api, "connection_limit", 1));
}
