//! GetUsersStats (and `shardray api statsonlineiplist -all`) through the real binary with two
//! shards: every online user with its addresses, its traffic when asked, and a reset of that
//! traffic. Distinct client addresses come from binding to 127.0.0.2 and 127.0.0.3.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_proto::xray::app::stats::command as pb;
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::{bin_path, vless, vless_config, wait_until, Shardray, ALICE};
use socket2::{Domain, Socket, Type};

const BOB: &str = "0a1b2c3d-0000-4000-8000-000000000002";
const CAROL: &str = "0a1b2c3d-0000-4000-8000-000000000003";

/// Alice and Carol at level 0 (statsUserOnline), Bob at level 1 (no online map), API on.
fn server() -> (Shardray, ApiClient) {
    let mut config = vless_config(
        json!([
            { "id": ALICE, "email": "alice@example.com", "level": 0 },
            { "id": BOB, "email": "bob@example.com", "level": 1 },
            { "id": CAROL, "email": "carol@example.com", "level": 0 }
        ]),
        json!({}),
    );
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    (server, api)
}

/// A live session from `src` that has carried `payload` up and back.
fn session_from(src: [u8; 4], proxy: SocketAddr, user: &str, echo: SocketAddr, payload: &[u8]) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((src, 0)).into()).unwrap();
    socket.connect_timeout(&proxy.into(), Duration::from_secs(5)).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut first = vless::request(user, echo);
    first.extend_from_slice(payload);
    s.write_all(&first).unwrap();
    let mut back = vec![0u8; payload.len() + 2];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back[2..], payload);
    s
}

fn users_stats(api: &ApiClient, include_traffic: bool, reset: bool) -> Vec<pb::UserStat> {
    let mut c = pb::stats_service_client::StatsServiceClient::new(api.channel());
    let req = pb::GetUsersStatsRequest { include_traffic, reset };
    api.block_on(c.get_users_stats(req)).expect("GetUsersStats").into_inner().users
}

/// Emails and sorted addresses of a reply.
fn who(users: &[pb::UserStat]) -> Vec<(String, Vec<String>)> {
    users
        .iter()
        .map(|u| {
            let mut ips: Vec<String> = u.ips.iter().map(|e| e.ip.clone()).collect();
            ips.sort();
            (u.email.clone(), ips)
        })
        .collect()
}

fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin_path()).arg("api").args(args).stdin(Stdio::null()).output().expect("run shardray api");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn online_users_come_with_their_addresses_and_traffic() {
    let echo = EchoServer::start();
    let (server, api) = server();
    let proxy = server.inbound("vless-in");
    assert!(users_stats(&api, true, false).is_empty(), "nobody is online yet");

    // Alice from two addresses, Bob (no online map) and Carol from 127.0.0.1 (never listed,
    // as upstream), so only Alice is online.
    let a1 = session_from([127, 0, 0, 2], proxy, ALICE, echo.addr(), &[7u8; 1000]);
    let a2 = session_from([127, 0, 0, 3], proxy, ALICE, echo.addr(), &[8u8; 500]);
    let _bob = session_from([127, 0, 0, 2], proxy, BOB, echo.addr(), b"bob");
    let _carol = session_from([127, 0, 0, 1], proxy, CAROL, echo.addr(), b"carol");

    let alice = || (String::from("alice@example.com"), vec!["127.0.0.2".to_owned(), "127.0.0.3".to_owned()]);
    assert!(wait_until(Duration::from_secs(5), || who(&users_stats(&api, false, false)) == [alice()]));
    let plain = users_stats(&api, false, false);
    assert!(plain[0].traffic.is_none(), "no traffic unless asked: {plain:?}");
    assert!(plain[0].ips.iter().all(|e| e.last_seen > 1_600_000_000), "{plain:?}");

    // With traffic: the same figures QueryStats reports (the request's bytes both ways).
    let with = users_stats(&api, true, false);
    let t = with[0].traffic.expect("traffic");
    let q = api.query("alice@example.com>>>traffic", false);
    assert_eq!(t.uplink, q["user>>>alice@example.com>>>traffic>>>uplink"]);
    assert_eq!(t.downlink, q["user>>>alice@example.com>>>traffic>>>downlink"]);
    assert!(t.uplink >= 1500 && t.downlink >= 1500, "{t:?}");

    // The CLI's -all form prints the same, in upstream's JSON shape.
    let addr = server.api.unwrap().to_string();
    let (code, out, err) = cli(&["statsonlineiplist", "--server", &addr, "-all", "-include-traffic"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["users"][0]["email"], "alice@example.com", "{doc}");
    assert_eq!(doc["users"][0]["traffic"]["uplink"], t.uplink, "{doc}");
    assert!(doc["users"][0]["ips"][0]["lastSeen"].as_i64().is_some(), "{doc}");
    let (code, _, err) = cli(&["statsonlineiplist", "--server", &addr, "-all", "-email", "alice@example.com"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("-all and -email are mutually exclusive"), "{err}");
    let (code, _, err) = cli(&["statsonlineiplist", "--server", &addr]);
    assert_eq!(code, Some(2), "{err}");

    // A reset without include_traffic touches nothing; with it, Alice's counters start over,
    // and only hers.
    users_stats(&api, false, true);
    assert_eq!(api.query("alice@example.com>>>traffic", false), q);
    let carol_before = api.query("carol@example.com>>>traffic", false);
    let reset = users_stats(&api, true, true);
    assert_eq!(reset[0].traffic, Some(t), "the reply carries the values before the reset");
    let after = users_stats(&api, true, false);
    assert_eq!(after[0].traffic, Some(pb::TrafficUserStat { uplink: 0, downlink: 0 }));
    assert!(api.query("alice@example.com>>>traffic", false).values().all(|v| *v == 0));
    assert_eq!(api.query("carol@example.com>>>traffic", false), carol_before);

    // Offline again: gone from the list.
    drop((a1, a2));
    assert!(wait_until(Duration::from_secs(5), || users_stats(&api, true, false).is_empty()));
}
