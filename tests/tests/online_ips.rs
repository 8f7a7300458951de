//! Online maps by client address (GetStatsOnline, GetStatsOnlineIpList, GetAllOnlineUsers)
//! through the real binary with two shards. Distinct client addresses come from binding the
//! client socket to other loopback addresses (127.0.0.2, 127.0.0.3) before connecting.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use shardray_proto::xray::app::stats::command as pb;
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, vless_config, wait_until, Shardray, ALICE};
use socket2::{Domain, Socket, Type};

const BOB: &str = "0a1b2c3d-0000-4000-8000-000000000002";
const ALICE_ONLINE: &str = "user>>>alice@example.com>>>online";
const BOB_ONLINE: &str = "user>>>bob@example.com>>>online";

/// Alice at level 0 (statsUserOnline), Bob at level 1 (no online map), API on.
fn config() -> serde_json::Value {
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

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A live VLESS session from source address `src` to the echo server, checked with one
/// round trip so that the proxy has it relaying when this returns.
fn session_from(src: [u8; 4], proxy: SocketAddr, user: &str, echo: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((src, 0)).into()).unwrap();
    socket.connect_timeout(&proxy.into(), Duration::from_secs(5)).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut first = vless::request(user, echo);
    first.extend_from_slice(b"ping");
    s.write_all(&first).unwrap();
    let mut back = [0u8; 6];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"\0\0ping");
    s
}

struct Stats<'a>(&'a ApiClient);

impl Stats<'_> {
    fn client(&self) -> pb::stats_service_client::StatsServiceClient<tonic::transport::Channel> {
        pb::stats_service_client::StatsServiceClient::new(self.0.channel())
    }

    fn ip_list(&self, name: &str) -> Result<HashMap<String, i64>, tonic::Status> {
        let mut c = self.client();
        let r = self.0.block_on(c.get_stats_online_ip_list(pb::GetStatsRequest { name: name.into(), reset: false }))?;
        let r = r.into_inner();
        assert_eq!(r.name, name);
        Ok(r.ips)
    }

    fn online(&self, name: &str) -> Result<i64, tonic::Status> {
        let mut c = self.client();
        let r = self.0.block_on(c.get_stats_online(pb::GetStatsRequest { name: name.into(), reset: false }))?;
        let stat = r.into_inner().stat.expect("a stat");
        assert_eq!(stat.name, name);
        Ok(stat.value)
    }

    fn all_online(&self) -> Vec<String> {
        let mut c = self.client();
        self.0.block_on(c.get_all_online_users(pb::GetAllOnlineUsersRequest {})).unwrap().into_inner().users
    }

    /// Waits until Alice's list holds exactly `ips` (addresses only) and GetStatsOnline agrees.
    /// Waits until Alice's list holds exactly `ips`; with none, until she is offline: both
    /// calls answer NOT_FOUND, as upstream does for a user who has not connected.
    fn wait_for(&self, ips: &[&str]) -> HashMap<String, i64> {
        if ips.is_empty() {
            let offline = |r: Result<_, tonic::Status>| {
                r.is_err_and(|e| e.code() == tonic::Code::NotFound && e.message().ends_with(" not found."))
            };
            let ok = wait_until(Duration::from_secs(5), || {
                offline(self.ip_list(ALICE_ONLINE).map(|_| ())) && offline(self.online(ALICE_ONLINE).map(|_| ()))
            });
            assert!(ok, "Alice still online: {:?}", self.ip_list(ALICE_ONLINE));
            return HashMap::new();
        }
        let mut want: Vec<&str> = ips.to_vec();
        want.sort();
        let mut last = HashMap::new();
        let ok = wait_until(Duration::from_secs(5), || {
            last = self.ip_list(ALICE_ONLINE).unwrap_or_default();
            let mut got: Vec<&str> = last.keys().map(String::as_str).collect();
            got.sort();
            got == want && self.online(ALICE_ONLINE).is_ok_and(|n| n == want.len() as i64)
        });
        assert!(ok, "wanted {want:?}, list is {last:?}");
        last
    }
}

#[test]
fn the_list_holds_each_address_while_a_session_from_it_lives() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config(), 2);
    let proxy = server.inbound("vless-in");
    let api = ApiClient::connect(server.api.unwrap());
    let stats = Stats(&api);

    // Before any session Alice is offline: NOT_FOUND, as upstream answers before a first session.
    stats.wait_for(&[]);
    assert!(stats.all_online().is_empty());

    // A session from 127.0.0.1 is never listed: upstream skips that address.
    let local = session_from([127, 0, 0, 1], proxy, ALICE, echo.addr());

    // Several sessions from .2 (spread over both shards by the kernel), one from .3.
    let before = unix_now();
    let mut from_2: Vec<TcpStream> = (0..6).map(|_| session_from([127, 0, 0, 2], proxy, ALICE, echo.addr())).collect();
    let from_3 = session_from([127, 0, 0, 3], proxy, ALICE, echo.addr());
    let after = unix_now();
    let list = stats.wait_for(&["127.0.0.2", "127.0.0.3"]);
    for (ip, seen) in &list {
        assert!((before..=after).contains(seen), "{ip}: last seen {seen} not in {before}..={after}");
    }
    assert_eq!(stats.all_online(), [ALICE_ONLINE]);

    // The value is the latest session start from the address.
    std::thread::sleep(Duration::from_millis(1100));
    let later = session_from([127, 0, 0, 3], proxy, ALICE, echo.addr());
    let list = stats.wait_for(&["127.0.0.2", "127.0.0.3"]);
    assert!(list["127.0.0.3"] > before && list["127.0.0.3"] >= list["127.0.0.2"], "{list:?}");
    drop(later);

    // .2 stays while any of its sessions lives, and goes with the last one.
    from_2.truncate(1);
    std::thread::sleep(Duration::from_millis(200));
    stats.wait_for(&["127.0.0.2", "127.0.0.3"]);
    drop(from_2);
    stats.wait_for(&["127.0.0.3"]);
    assert_eq!(stats.all_online(), [ALICE_ONLINE]);

    drop(from_3);
    stats.wait_for(&[]);
    assert!(stats.all_online().is_empty(), "only a 127.0.0.1 session is left: not online, as upstream");
    drop(local);
}

#[test]
fn a_user_without_stats_user_online_has_no_online_map() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config(), 2);
    let proxy = server.inbound("vless-in");
    let api = ApiClient::connect(server.api.unwrap());
    let stats = Stats(&api);

    let _bob = session_from([127, 0, 0, 2], proxy, BOB, echo.addr());
    for name in [BOB_ONLINE, "user>>>nobody@example.com>>>online", "user>>>alice@example.com>>>traffic>>>uplink"] {
        let e = stats.ip_list(name).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{name}: {e:?}");
        assert!(e.message().ends_with(&format!("{name} not found.")), "{name}: {}", e.message());
        let e = stats.online(name).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{name}: {e:?}");
    }
    // Bob is connected, but has no online map, so GetAllOnlineUsers never names him.
    std::thread::sleep(Duration::from_millis(200));
    assert!(stats.all_online().is_empty(), "{:?}", stats.all_online());
    stats.wait_for(&[]);
}
