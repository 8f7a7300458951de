//! SOCKS5 UDP ASSOCIATE on shardray's SOCKS inbound: sing-box's socks outbound and our own
//! client through it to UDP echoes (several flows, big datagrams), exact counters per user,
//! strangers and fragments dropped, the association ending with its control connection, and
//! `udp: false` refused. The real binary on 2 shards.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::proxy::socks_config;
use shardray_tests::singbox::SingBox;
use shardray_tests::udp::{echo_datagrams, DatagramPath, Socks5Udp, UdpEcho};
use shardray_tests::{loopback_api, wait_until, Shardray};

const UPLINK: &str = "user>>>carol@example.com>>>traffic>>>uplink";
const DOWNLINK: &str = "user>>>carol@example.com>>>traffic>>>downlink";

fn server(settings: Value) -> (Shardray, ApiClient) {
    let mut config = socks_config(settings, json!({}));
    config["api"] = loopback_api(&["StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    (server, api)
}

fn counters_reach(api: &ApiClient, pairs: &[(&str, i64)]) -> bool {
    wait_until(Duration::from_secs(5), || pairs.iter().all(|(name, want)| api.get(name, false).ok() == Some(*want)))
}

/// Three flows at once, each its own association through `socks`, to three echoes.
fn three_flows(socks: SocketAddr, log: &(dyn Fn() -> String + Sync)) -> u64 {
    let echoes: Vec<UdpEcho> = (0..3).map(|_| UdpEcho::start()).collect();
    let total = std::thread::scope(|s| {
        let handles: Vec<_> = echoes
            .iter()
            .enumerate()
            .map(|(i, echo)| {
                let dest = echo.addr();
                s.spawn(move || {
                    let path = Socks5Udp::associate(socks).unwrap();
                    echo_datagrams(&path, dest, None, 1000, 40 + i as u64, 8, log)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    for echo in &echoes {
        assert_eq!(echo.datagrams.load(Ordering::Relaxed), 1000);
    }
    total
}

#[test]
fn sing_box_socks_outbound_udp_through_the_socks_inbound_counted_per_user() {
    let accounts = json!([{ "user": "carol", "pass": "secret", "email": "carol@example.com" }]);
    let (server, api) = server(json!({ "auth": "password", "accounts": accounts, "udp": true }));
    let proxy = server.inbound("socks-in");
    let sb = SingBox::start(json!({
        "type": "socks", "tag": "out", "server": "127.0.0.1", "server_port": proxy.port(),
        "version": "5", "username": "carol", "password": "secret"
    }));
    let total = three_flows(sb.socks, &|| format!("{}\n{}", sb.log(), server.output())) as i64;
    assert!(
        counters_reach(&api, &[(UPLINK, total), (DOWNLINK, total)]),
        "{:?} / expected {total}",
        api.query("user", false)
    );
}

#[test]
fn our_client_big_datagrams_strangers_and_fragments_dropped_and_the_end_with_tcp() {
    let (server, api) = server(json!({ "udp": true }));
    let proxy = server.inbound("socks-in");
    let log = || server.output();
    // Several flows without authentication, byte-exact.
    let total = three_flows(proxy, &log) as i64;
    let inbound = "inbound>>>socks-in>>>traffic>>>uplink";
    assert!(counters_reach(&api, &[(inbound, total)]), "{:?}", api.query("inbound", false));

    let echo = UdpEcho::start();
    let path = Socks5Udp::associate(proxy).unwrap();
    // The relay is the association's own port, on the address the client reached.
    assert_eq!(path.relay.ip(), proxy.ip());
    assert_ne!(path.relay.port(), proxy.port());
    // The largest datagram goes through whole; one byte more is dropped (and counted).
    let big = vec![0x5a; 8192];
    path.send(echo.addr(), &big).unwrap();
    assert_eq!(path.recv().unwrap(), (echo.addr(), big));
    path.send(echo.addr(), &vec![1; 8193]).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || api.get("refused>>>oversize_datagram", false).ok() == Some(1)),
        "{:?}",
        api.query("refused", false)
    );

    // A fragment (FRAG 1) and a datagram from another client socket are dropped.
    let dest = match echo.addr() {
        SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let mut fragment = vec![0, 0, 1, 1];
    fragment.extend_from_slice(&dest.ip().octets());
    fragment.extend_from_slice(&dest.port().to_be_bytes());
    fragment.extend_from_slice(b"fragment");
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut plain = fragment.clone();
    plain[2] = 0;
    stranger.send_to(&plain, path.relay).unwrap();
    let mut buf = [0u8; 64];
    assert!(stranger.recv_from(&mut buf).is_err(), "a stranger got an answer");
    let before = echo.datagrams.load(Ordering::Relaxed);
    path.send_raw(&fragment).unwrap();
    path.send_raw(&[0, 0, 0]).unwrap();
    path.send(echo.addr(), b"after").unwrap();
    assert_eq!(path.recv().unwrap().1, b"after");
    assert_eq!(
        echo.datagrams.load(Ordering::Relaxed),
        before + 1,
        "a fragment, a short datagram or a stranger's reached the echo"
    );

    // The association ends with its control connection: the relay socket closes.
    let relay = path.relay;
    let Socks5Udp { control, .. } = path;
    drop(control);
    std::thread::sleep(Duration::from_millis(300));
    let late = UdpSocket::bind("127.0.0.1:0").unwrap();
    late.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    late.connect(relay).unwrap();
    late.send(&plain).unwrap();
    // A closed port answers ICMP unreachable, which a connected socket reports.
    let mut buf = [0u8; 64];
    let got = late.recv(&mut buf);
    assert!(got.is_err(), "the relay answered after its control connection closed");
    assert!(
        wait_until(Duration::from_secs(2), || {
            let _ = late.send(&plain);
            late.recv(&mut buf).is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        }),
        "the relay port is still open"
    );
}

#[test]
fn udp_associate_without_udp_on_is_refused_with_command_not_supported() {
    let (server, _api) = server(json!({}));
    let mut s = TcpStream::connect(server.inbound("socks-in")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap();
    let mut reply = [0u8; 12];
    std::io::Read::read_exact(&mut s, &mut reply).unwrap();
    assert_eq!(&reply[..2], &[5, 0]);
    assert_eq!(reply[3], 7, "{reply:?}");
}

#[test]
fn socks_outbound_carries_udp_to_sing_box_as_the_server() {
    use shardray_tests::udp::Direct;
    let sb = SingBox::serve(json!({ "type": "socks", "tag": "in", "users": [{ "username": "u", "password": "p" }] }));
    let echoes: Vec<UdpEcho> = (0..2).map(|_| UdpEcho::start()).collect();
    let doors: Vec<Value> = echoes
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({ "tag": format!("door{i}"), "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
                    "settings": { "address": e.addr().ip().to_string(), "port": e.addr().port(), "network": "udp" } })
        })
        .collect();
    let config = json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "api": loopback_api(&["StatsService"]),
        "inbounds": doors,
        "outbounds": [
            { "tag": "socks-out", "protocol": "socks",
              "settings": { "servers": [{ "address": "127.0.0.1", "port": sb.socks.port(),
                                           "users": [{ "user": "u", "pass": "p" }] }] } },
            { "tag": "direct", "protocol": "freedom" }
        ],
        "policy": { "system": { "statsOutboundUplink": true, "statsOutboundDownlink": true } }
    });
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    let log = || format!("{}\n{}", sb.log(), server.output());
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4usize)
            .map(|c| {
                let (log, door, dest) = (&log, server.inbound(&format!("door{}", c % 2)), echoes[c % 2].addr());
                s.spawn(move || echo_datagrams(&Direct::to(door), dest, Some(door), 300, c as u64, 8, log))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let t = total as i64;
    let (up, down) = ("outbound>>>socks-out>>>traffic>>>uplink", "outbound>>>socks-out>>>traffic>>>downlink");
    assert!(counters_reach(&api, &[(up, t), (down, t)]), "{:?} / expected {t}", api.query("outbound", false));
}
