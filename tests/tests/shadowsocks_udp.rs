//! Shadowsocks UDP (classic AEAD) on shardray's Shadowsocks inbound: sing-box 1.14.4's
//! shadowsocks outbound, driven through its socks inbound's UDP ASSOCIATE, to UDP echoes for
//! every classic method, single-user and multi-user with mixed methods (trial decryption),
//! exact per-user counters; garbage datagrams get no answer and are counted. The real binary
//! on 2 shards.

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::singbox::{shadowsocks_outbound, SingBox};
use shardray_tests::udp::{echo_datagrams, Socks5Udp, UdpEcho};
use shardray_tests::{loopback_api, shadowsocks_config, wait_until, Shardray};

const CLASSIC: [&str; 4] = ["aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305", "xchacha20-ietf-poly1305"];

fn server(settings: Value) -> (Shardray, ApiClient) {
    let mut config = shadowsocks_config(settings, json!({}));
    config["api"] = loopback_api(&["StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    (server, api)
}

/// Three flows at once through sing-box to three echoes, `count` datagrams each; returns the
/// payload bytes each way.
fn three_flows(sb: &SingBox, server: &Shardray, count: usize) -> i64 {
    let echoes: Vec<UdpEcho> = (0..3).map(|_| UdpEcho::start()).collect();
    let log = || format!("{}\n{}", sb.log(), server.output());
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = echoes
            .iter()
            .enumerate()
            .map(|(i, echo)| {
                let (log, dest, socks) = (&log, echo.addr(), sb.socks);
                s.spawn(move || {
                    let path = Socks5Udp::associate(socks).unwrap();
                    echo_datagrams(&path, dest, None, count, 60 + i as u64, 8, log)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    for echo in &echoes {
        assert_eq!(echo.datagrams.load(Ordering::Relaxed), count as u64);
    }
    total as i64
}

fn counted(api: &ApiClient, email: &str, total: i64) -> bool {
    let up = format!("user>>>{email}>>>traffic>>>uplink");
    let down = format!("user>>>{email}>>>traffic>>>downlink");
    wait_until(Duration::from_secs(5), || {
        api.get(&up, false).ok() == Some(total) && api.get(&down, false).ok() == Some(total)
    })
}

#[test]
fn sing_box_classic_udp_single_user_every_method() {
    for method in CLASSIC {
        let password = format!("udp {method}");
        let settings = json!({ "method": method, "password": password, "email": "solo@example.com",
                               "network": "tcp,udp" });
        let (server, api) = server(settings);
        let sb = SingBox::start(shadowsocks_outbound(server.inbound("ss-in"), method, &password));
        let total = three_flows(&sb, &server, 500);
        assert!(counted(&api, "solo@example.com", total), "{method}: {:?} / {total}", api.query("user", false));
    }
}

#[test]
fn sing_box_classic_udp_multi_user_mixed_methods_and_garbage_answered_by_nothing() {
    let mut clients = Vec::new();
    for (i, method) in CLASSIC.iter().enumerate() {
        for j in 0..2 {
            clients.push(json!({ "method": method, "password": format!("pw {i} {j}"),
                                 "email": format!("u{i}-{j}@example.com") }));
        }
    }
    let (server, api) = server(json!({ "clients": clients, "network": "tcp,udp" }));
    for (i, method) in CLASSIC.iter().enumerate() {
        let sb = SingBox::start(shadowsocks_outbound(server.inbound("ss-in"), method, &format!("pw {i} 1")));
        let total = three_flows(&sb, &server, 200);
        let email = format!("u{i}-1@example.com");
        assert!(counted(&api, &email, total), "{method}: {:?} / {total}", api.query("user", false));
        assert_eq!(api.get(&format!("user>>>u{i}-0@example.com>>>traffic>>>uplink"), false).unwrap_or(0), 0);
    }
    // Garbage of every length: no answer, each counted as a bad request, no flow kept.
    let before = api.get("refused>>>bad_request", false).unwrap_or(0);
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    for len in [0usize, 1, 16, 40, 100, 1400] {
        probe.send_to(&vec![0xa5; len], server.inbound("ss-in")).unwrap();
    }
    let mut buf = [0u8; 2048];
    assert!(probe.recv_from(&mut buf).is_err(), "garbage was answered");
    assert!(
        wait_until(Duration::from_secs(5), || api.get("refused>>>bad_request", false).ok() == Some(before + 6)),
        "{:?}",
        api.query("refused", false)
    );
}

/// base64 of `len` bytes derived from `seed`: a 2022 PSK.
fn psk(len: usize, seed: u8) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(7).wrapping_add(seed)).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

const SS2022: [&str; 3] = ["2022-blake3-aes-128-gcm", "2022-blake3-aes-256-gcm", "2022-blake3-chacha20-poly1305"];

fn key_len(method: &str) -> usize {
    if method.contains("128") {
        16
    } else {
        32
    }
}

#[test]
fn sing_box_2022_udp_single_user_every_method() {
    for method in SS2022 {
        let password = psk(key_len(method), 3);
        let settings = json!({ "method": method, "password": password, "email": "solo@example.com",
                               "network": "tcp,udp" });
        let (server, api) = server(settings);
        let sb = SingBox::start(shadowsocks_outbound(server.inbound("ss-in"), method, &password));
        let total = three_flows(&sb, &server, 500);
        assert!(counted(&api, "solo@example.com", total), "{method}: {:?} / {total}", api.query("user", false));
    }
}

#[test]
fn sing_box_2022_udp_multi_user_identity_headers() {
    for method in &SS2022[..2] {
        let len = key_len(method);
        let server_psk = psk(len, 100);
        let clients: Vec<Value> =
            (0..3).map(|i| json!({ "password": psk(len, i), "email": format!("m{i}@example.com") })).collect();
        let (server, api) =
            server(json!({ "method": method, "password": server_psk, "clients": clients, "network": "tcp,udp" }));
        for i in [0u8, 2] {
            let password = format!("{server_psk}:{}", psk(len, i));
            let sb = SingBox::start(shadowsocks_outbound(server.inbound("ss-in"), method, &password));
            let total = three_flows(&sb, &server, 200);
            let email = format!("m{i}@example.com");
            assert!(counted(&api, &email, total), "{method}: {:?} / {total}", api.query("user", false));
        }
        assert_eq!(api.get("user>>>m1@example.com>>>traffic>>>uplink", false).unwrap_or(0), 0);
    }
}

#[test]
fn a_replayed_2022_packet_and_one_behind_the_window_are_dropped() {
    use shardray_wire::addr::Destination;
    use shardray_wire::shadowsocks::{ss2022_udp, MasterKey, Method};
    let method = Method::Blake3Aes128Gcm;
    let password = psk(16, 9);
    let settings = json!({ "method": method.name(), "password": password, "email": "r@example.com",
                           "network": "tcp,udp" });
    let (server, api) = server(settings);
    let key = MasterKey::from_psk(method, &password).unwrap();
    let echo = UdpEcho::start();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let packet = |packet_id: u64, payload: &[u8]| {
        let seal = ss2022_udp::Seal {
            method,
            key: &key,
            identity_psk: None,
            session_id: 0x5151,
            packet_id,
            client_session_id: None,
            now,
            nonce: [0; 24],
        };
        let mut out = Vec::new();
        ss2022_udp::seal(&seal, &Destination::from(echo.addr()), payload, &mut out);
        out
    };
    let exchange = |bytes: &[u8]| -> Option<Vec<u8>> {
        client.send_to(bytes, server.inbound("ss-in")).unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = client.recv_from(&mut buf).ok()?;
        let mut got = buf[..n].to_vec();
        let p = ss2022_udp::open_response(method, &key, &mut got, now).unwrap();
        assert_eq!(p.client_session_id, 0x5151);
        Some(got[p.payload].to_vec())
    };
    let first = packet(10, b"first");
    assert_eq!(exchange(&first).as_deref(), Some(&b"first"[..]));
    assert_eq!(exchange(&first), None, "a replay was answered");
    assert_eq!(exchange(&packet(5000, b"ahead")).as_deref(), Some(&b"ahead"[..]));
    assert_eq!(exchange(&packet(11, b"behind")), None, "a packet behind the window was answered");
    assert_eq!(exchange(&packet(4999, b"in window")).as_deref(), Some(&b"in window"[..]));
    assert_eq!(echo.datagrams.load(Ordering::Relaxed), 3);
    assert!(wait_until(Duration::from_secs(5), || api.get("refused>>>bad_request", false).ok() == Some(2)));
    let total = (b"first".len() + b"ahead".len() + b"in window".len()) as i64;
    assert!(counted(&api, "r@example.com", total), "{:?}", api.query("user", false));
}

/// shardray's SOCKS inbound (UDP ASSOCIATE) to its Shadowsocks outbound to sing-box as the
/// Shadowsocks server: `sb_inbound` is sing-box's inbound, `password` the outbound's.
fn outbound_to_sing_box(method: &str, sb_inbound: Value, password: &str) {
    let sb = SingBox::serve(sb_inbound);
    let config = json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "api": loopback_api(&["StatsService"]),
        "inbounds": [{ "tag": "socks-in", "listen": "127.0.0.1", "port": 0, "protocol": "socks",
                       "settings": { "udp": true } }],
        "outbounds": [
            { "tag": "ss-out", "protocol": "shadowsocks",
              "settings": { "servers": [{ "address": "127.0.0.1", "port": sb.socks.port(),
                                           "method": method, "password": password }] } },
            { "tag": "direct", "protocol": "freedom" }
        ],
        "policy": { "system": { "statsOutboundUplink": true, "statsOutboundDownlink": true } }
    });
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    let echoes: Vec<UdpEcho> = (0..2).map(|_| UdpEcho::start()).collect();
    let log = || format!("{method}\n{}\n{}", sb.log(), server.output());
    let socks = server.inbound("socks-in");
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2usize)
            .map(|c| {
                let (log, dest) = (&log, echoes[c].addr());
                s.spawn(move || {
                    let path = Socks5Udp::associate(socks).unwrap();
                    echo_datagrams(&path, dest, None, 300, 80 + c as u64, 8, log)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let t = total as i64;
    let (up, down) = ("outbound>>>ss-out>>>traffic>>>uplink", "outbound>>>ss-out>>>traffic>>>downlink");
    assert!(
        wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(t)
            && api.get(down, false).ok() == Some(t)),
        "{method}: {:?} / {t}",
        api.query("outbound", false)
    );
}

#[test]
fn shadowsocks_outbound_carries_udp_to_sing_box_every_method() {
    for method in CLASSIC.iter().chain(SS2022.iter()) {
        let password = if method.starts_with("2022") { psk(key_len(method), 21) } else { format!("out {method}") };
        let inbound = json!({ "type": "shadowsocks", "tag": "ss-in", "method": method, "password": password });
        outbound_to_sing_box(method, inbound, &password);
    }
    // 2022 multi-user: `serverPSK:userPSK`, an identity header on every packet.
    let method = "2022-blake3-aes-256-gcm";
    let (server_psk, user_psk) = (psk(32, 40), psk(32, 41));
    let inbound = json!({ "type": "shadowsocks", "tag": "ss-in", "method": method, "password": server_psk,
                          "users": [{ "name": "u", "password": user_psk }] });
    outbound_to_sing_box(method, inbound, &format!("{server_psk}:{user_psk}"));
}
