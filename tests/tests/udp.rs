//! UDP: dokodemo-door UDP listeners, VLESS UDP and Trojan UDP ASSOCIATE inbounds (driven by
//! sing-box through its socks inbound, and by our own clients), shardray's Trojan outbound
//! carrying UDP to sing-box as the server, freedom's per-packet destination safety, limits,
//! hostile frames; the real binary on 2 shards, byte-exact echoes, exact counters.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::singbox::{trojan_outbound, vless_outbound, vmess_outbound, SingBox};
use shardray_tests::udp::{echo_datagrams, DatagramPath, Direct, Socks5Udp, UdpEcho, VlessUdp};
use shardray_tests::{
    loopback_api, trojan_config, vless_config, vmess_config, wait_until, Shardray, ALICE, ALICE_PASSWORD,
};

const UPLINK: &str = "user>>>alice@example.com>>>traffic>>>uplink";
const DOWNLINK: &str = "user>>>alice@example.com>>>traffic>>>downlink";

/// A dokodemo-door inbound `door` to `dest` on `network`.
fn door(dest: SocketAddr, network: &str) -> Value {
    json!({
        "tag": "door", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
        "settings": { "address": dest.ip().to_string(), "port": dest.port(), "network": network }
    })
}

/// `vless_config` (alice, loopback allowed, stats on) plus `inbounds` and the StatsService.
fn server_with(mut config: Value, inbounds: Vec<Value>, shards: usize) -> (Shardray, ApiClient) {
    config["inbounds"].as_array_mut().unwrap().extend(inbounds);
    config["api"] = loopback_api(&["StatsService", "HandlerService"]);
    let server = Shardray::start(&config, shards);
    let api = ApiClient::connect(server.api.unwrap());
    (server, api)
}

fn alice_vless() -> Value {
    vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}))
}

fn counters_reach(api: &ApiClient, pairs: &[(&str, i64)]) -> bool {
    wait_until(Duration::from_secs(5), || pairs.iter().all(|(name, want)| api.get(name, false).ok() == Some(*want)))
}

fn counters(api: &ApiClient, pattern: &str) -> String {
    format!("{:?}", api.query(pattern, false))
}

#[test]
fn dokodemo_udp_relays_each_client_as_its_own_flow_with_exact_counters() {
    let echo = UdpEcho::start();
    let (server, api) = server_with(alice_vless(), vec![door(echo.addr(), "udp")], 2);
    let door_addr = server.inbound("door");
    let echo_addr = echo.addr();
    let log = || server.output();
    // Four clients at once, a thousand datagrams each, 1 to 1400 bytes.
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|c| {
                let log = &log;
                s.spawn(move || {
                    let path = Direct::to(door_addr);
                    echo_datagrams(&path, echo_addr, Some(door_addr), 1000, c, 8, log)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(echo.sources.lock().unwrap().len(), 4, "one upstream socket per client");
    let (up, down) = ("inbound>>>door>>>traffic>>>uplink", "inbound>>>door>>>traffic>>>downlink");
    let direct = ("outbound>>>direct>>>traffic>>>uplink", "outbound>>>direct>>>traffic>>>downlink");
    let t = total as i64;
    assert!(
        counters_reach(&api, &[(up, t), (down, t), (direct.0, t), (direct.1, t)]),
        "{} / expected {t}",
        counters(&api, "")
    );
    // A TCP connection to the UDP-only door finds nothing listening.
    assert!(TcpStream::connect(door_addr).is_err());
}

#[test]
fn dokodemo_tcp_and_udp_share_one_port() {
    let tcp_echo = EchoServer::start();
    let echo = UdpEcho::start_at(tcp_echo.addr());
    let (server, _api) = server_with(alice_vless(), vec![door(tcp_echo.addr(), "tcp,udp")], 2);
    let door_addr = server.inbound("door");
    let path = Direct::to(door_addr);
    echo_datagrams(&path, echo.addr(), Some(door_addr), 200, 9, 4, &|| server.output());
    let mut s = TcpStream::connect(door_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"over tcp").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"over tcp");
}

#[test]
fn dokodemo_drops_oversize_datagrams_and_counts_them() {
    let echo = UdpEcho::start();
    let (server, api) = server_with(alice_vless(), vec![door(echo.addr(), "udp")], 1);
    let door_addr = server.inbound("door");
    let path = Direct::to(door_addr);
    for _ in 0..3 {
        path.send(echo.addr(), &[7u8; 9000]).unwrap();
    }
    // The flow goes on for the datagrams within the limit; 8192 bytes is the largest.
    path.send(echo.addr(), &[1u8; 8192]).unwrap();
    assert_eq!(path.recv().unwrap().1, vec![1u8; 8192]);
    echo_datagrams(&path, echo.addr(), Some(door_addr), 50, 3, 4, &|| server.output());
    assert!(counters_reach(&api, &[("refused>>>oversize_datagram", 3)]), "{}", counters(&api, "refused"));
    assert_eq!(echo.datagrams.load(Ordering::Relaxed), 51, "no oversize datagram reached the echo server");
}

#[test]
fn freedom_refuses_loopback_per_packet_unless_a_rule_names_it() {
    let echo = UdpEcho::start();
    let mut config = alice_vless();
    config["routing"]["rules"] = json!([]);
    config["log"]["loglevel"] = json!("info");
    let (server, api) = server_with(config, vec![door(echo.addr(), "udp")], 2);
    let path = Direct::to(server.inbound("door"));
    for i in 0..5u8 {
        path.send(echo.addr(), &[i; 10]).unwrap();
    }
    assert!(counters_reach(&api, &[("refused>>>private_destination", 5)]), "{}", counters(&api, "refused"));
    assert_eq!(echo.datagrams.load(Ordering::Relaxed), 0, "a refused packet reached loopback");
    let line = format!("to udp:{}: refused: loopback/private destination", echo.addr());
    assert!(wait_until(Duration::from_secs(5), || server.output().contains(&line)), "{}", server.output());
    // The refusal is logged once per destination, not once per packet.
    assert_eq!(server.output().matches(&line).count(), 1, "{}", server.output());
}

/// The port of the inbound tagged `tag` in `shardray api lsi`'s output.
fn port_of(v: &Value, tag: &str) -> Option<u16> {
    fn first_from(v: &Value) -> Option<u16> {
        match v {
            Value::Object(m) => {
                m.get("From").and_then(Value::as_u64).map(|p| p as u16).or_else(|| m.values().find_map(first_from))
            }
            Value::Array(a) => a.iter().find_map(first_from),
            _ => None,
        }
    }
    match v {
        Value::Object(m) if m.get("tag").and_then(Value::as_str) == Some(tag) => first_from(v),
        Value::Object(m) => m.values().find_map(|v| port_of(v, tag)),
        Value::Array(a) => a.iter().find_map(|v| port_of(v, tag)),
        _ => None,
    }
}

#[test]
fn freedom_never_sends_to_the_api_address_even_when_a_rule_allows_loopback() {
    let mut config = alice_vless();
    config["log"]["loglevel"] = json!("info");
    let (server, api) = server_with(config, vec![], 2);
    let api_addr = server.api.unwrap();
    // A door to the API's own address, added once that address is known (no port chosen in
    // advance, which a concurrent test could be handed).
    let file = server.dir.path().join("door.json");
    std::fs::write(&file, json!({ "inbounds": [door(api_addr, "udp")] }).to_string()).unwrap();
    let (status, out) =
        shardray_tests::run_cli(&["api", "adi", &format!("--server={api_addr}"), file.to_str().unwrap()]);
    assert!(status.success(), "{out}");
    let (_, lsi) = shardray_tests::run_cli(&["api", "lsi", &format!("--server={api_addr}")]);
    let port = port_of(&serde_json::from_str(&lsi).unwrap(), "door").unwrap_or_else(|| panic!("{lsi}"));
    let path = Direct::to(([127, 0, 0, 1], port).into());
    for _ in 0..3 {
        path.send(api_addr, b"hello").unwrap();
    }
    assert!(counters_reach(&api, &[("refused>>>api_address", 3)]), "{}", counters(&api, "refused"));
    let line = format!("to udp:{api_addr}: refused: the API's own address");
    assert!(wait_until(Duration::from_secs(5), || server.output().contains(&line)), "{}", server.output());
}

/// Three SOCKS5 UDP associations through `sb` at once, each to its own echo server, a
/// thousand datagrams each; returns the payload bytes each way.
fn three_flows_through(sb: &SingBox, server: &Shardray) -> u64 {
    let echoes: Vec<UdpEcho> = (0..3).map(|_| UdpEcho::start()).collect();
    let log = || format!("{}\n{}", sb.log(), server.output());
    let total = std::thread::scope(|s| {
        let handles: Vec<_> = echoes
            .iter()
            .enumerate()
            .map(|(i, echo)| {
                let (log, dest, socks) = (&log, echo.addr(), sb.socks);
                s.spawn(move || {
                    let path = Socks5Udp::associate(socks).unwrap();
                    echo_datagrams(&path, dest, None, 1000, 20 + i as u64, 8, log)
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
fn sing_box_vless_udp_through_its_socks_inbound() {
    let (server, api) = server_with(alice_vless(), vec![], 2);
    let mut out = vless_outbound(server.inbound("vless-in"), ALICE, None);
    out["packet_encoding"] = json!("");
    let sb = SingBox::start(out);
    let total = three_flows_through(&sb, &server) as i64;
    assert!(
        counters_reach(&api, &[(UPLINK, total), (DOWNLINK, total)]),
        "{} / expected {total}",
        counters(&api, "user")
    );
}

#[test]
fn sing_box_trojan_udp_through_its_socks_inbound() {
    let config = trojan_config(json!([{ "password": ALICE_PASSWORD, "email": "alice@example.com" }]), json!({}));
    let (server, api) = server_with(config, vec![], 2);
    let sb = SingBox::start(trojan_outbound(server.inbound("trojan-in"), ALICE_PASSWORD, None));
    let total = three_flows_through(&sb, &server) as i64;
    assert!(
        counters_reach(&api, &[(UPLINK, total), (DOWNLINK, total)]),
        "{} / expected {total}",
        counters(&api, "user")
    );
}

#[test]
fn sing_box_vmess_udp_through_its_socks_inbound_every_security() {
    let options = json!({ "global_padding": true, "authenticated_length": true });
    for (security, extra) in [
        ("aes-128-gcm", json!({})),
        ("chacha20-poly1305", options.clone()),
        ("aes-128-gcm", options),
        ("none", json!({})),
        ("zero", json!({})),
    ] {
        let config = vmess_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
        let (server, api) = server_with(config, vec![], 2);
        // No packet encoding: VMess's own UDP command, one datagram per chunk.
        let mut out = vmess_outbound(server.inbound("vmess-in"), ALICE, security, extra);
        out["packet_encoding"] = json!("");
        let sb = SingBox::start(out);
        let total = three_flows_through(&sb, &server) as i64;
        assert!(
            counters_reach(&api, &[(UPLINK, total), (DOWNLINK, total)]),
            "{security}: {} / expected {total}",
            counters(&api, "user")
        );
    }
}

#[test]
fn trojan_outbound_carries_udp_to_sing_box_as_the_server() {
    const PASSWORD: &str = "the trojan server's password";
    let sb = SingBox::serve(json!({ "type": "trojan", "tag": "trojan-in", "users": [{ "password": PASSWORD }] }));
    let echoes: Vec<UdpEcho> = (0..2).map(|_| UdpEcho::start()).collect();
    let config = json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "api": loopback_api(&["StatsService"]),
        "inbounds": echoes.iter().enumerate().map(|(i, e)| {
            let mut d = door(e.addr(), "udp");
            d["tag"] = json!(format!("door{i}"));
            d
        }).collect::<Vec<_>>(),
        "outbounds": [
            { "tag": "trojan-out", "protocol": "trojan",
              "settings": { "servers": [{ "address": "127.0.0.1", "port": sb.socks.port(), "password": PASSWORD }] } },
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
                let (log, door_addr, dest) = (&log, server.inbound(&format!("door{}", c % 2)), echoes[c % 2].addr());
                s.spawn(move || echo_datagrams(&Direct::to(door_addr), dest, Some(door_addr), 500, c as u64, 8, log))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let t = total as i64;
    let (up, down) = ("outbound>>>trojan-out>>>traffic>>>uplink", "outbound>>>trojan-out>>>traffic>>>downlink");
    assert!(counters_reach(&api, &[(up, t), (down, t)]), "{} / expected {t}", counters(&api, "outbound"));
    assert_eq!(api.get("outbound>>>direct>>>traffic>>>uplink", false).unwrap_or(0), 0);
}

/// A Trojan UDP ASSOCIATE from alice through `proxy`, with `frames` after the request.
fn trojan_udp(proxy: SocketAddr, frames: &[u8]) -> TcpStream {
    use shardray_wire::trojan::Command;
    let mut s = shardray_tests::vless::connect(proxy).unwrap();
    let mut out = shardray_tests::trojan::request_with(ALICE_PASSWORD, Command::UdpAssociate, proxy.into());
    out.extend_from_slice(frames);
    s.write_all(&out).unwrap();
    s
}

fn trojan_frame(dest: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    shardray_wire::trojan::UdpFrame::encode_header(&dest.into(), payload.len(), &mut out).unwrap();
    out.extend_from_slice(payload);
    out
}

/// Reads one Trojan UDP frame from `s`: its source and payload.
fn read_trojan_frame(s: &mut TcpStream) -> (SocketAddr, Vec<u8>) {
    let mut head = [0u8; 11];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 1, "an IPv4 source");
    let src = SocketAddr::from(([head[1], head[2], head[3], head[4]], u16::from_be_bytes([head[5], head[6]])));
    assert_eq!(&head[9..11], b"\r\n");
    let mut payload = vec![0u8; usize::from(u16::from_be_bytes([head[7], head[8]]))];
    s.read_exact(&mut payload).unwrap();
    (src, payload)
}

#[test]
fn hostile_frames_cost_the_session_at_most_and_oversize_packets_are_skipped() {
    let echo = UdpEcho::start();
    let mut config = alice_vless();
    config["inbounds"].as_array_mut().unwrap().push(json!({
        "tag": "trojan-in", "listen": "127.0.0.1", "port": 0, "protocol": "trojan",
        "settings": { "clients": [{ "password": ALICE_PASSWORD, "email": "alice@example.com" }] }
    }));
    let (server, api) = server_with(config, vec![], 2);
    let (vless_in, trojan_in) = (server.inbound("vless-in"), server.inbound("trojan-in"));

    // VLESS: an oversize packet in the middle is skipped and counted; the session goes on.
    let big = vec![5u8; 9000];
    let vless = VlessUdp::open(vless_in, ALICE, echo.addr(), &[b"one", &big, b"two"]).unwrap();
    assert_eq!(vless.recv().unwrap().1, b"one");
    assert_eq!(vless.recv().unwrap().1, b"two");
    echo_datagrams(&vless, echo.addr(), None, 100, 5, 4, &|| server.output());

    // Trojan: the same for an oversize frame (its payload skipped whole).
    let mut frames = trojan_frame(echo.addr(), b"three");
    let mut oversize = Vec::new();
    shardray_wire::addr::SOCKS_TYPES.encode_addr(&shardray_wire::addr::Address::Ip(echo.addr().ip()), &mut oversize);
    oversize.extend_from_slice(&echo.addr().port().to_be_bytes());
    oversize.extend_from_slice(&9000u16.to_be_bytes());
    oversize.extend_from_slice(b"\r\n");
    oversize.extend_from_slice(&big);
    frames.extend_from_slice(&oversize);
    frames.extend_from_slice(&trojan_frame(echo.addr(), b"four"));
    let mut t = trojan_udp(trojan_in, &frames);
    assert_eq!(read_trojan_frame(&mut t), (echo.addr(), b"three".to_vec()));
    assert_eq!(read_trojan_frame(&mut t), (echo.addr(), b"four".to_vec()));
    assert!(counters_reach(&api, &[("refused>>>oversize_datagram", 2)]), "{}", counters(&api, "refused"));

    // A frame with an unknown address type ends the session: nothing is sent on.
    let before = echo.datagrams.load(Ordering::Relaxed);
    let mut t = trojan_udp(trojan_in, &trojan_frame(echo.addr(), b"five"));
    assert_eq!(read_trojan_frame(&mut t).1, b"five");
    let mut garbage = vec![9, 1, 2, 3, 4, 0, 53, 0, 1, b'\r', b'\n', b'x'];
    garbage.extend_from_slice(&trojan_frame(echo.addr(), b"never"));
    t.write_all(&garbage).unwrap();
    assert!(shardray_tests::vless::closed_within(&mut t, Duration::from_secs(5)), "the session stayed open");
    assert_eq!(echo.datagrams.load(Ordering::Relaxed), before + 1);

    // A VLESS UDP stream cut inside a packet, and noise after a valid header: closed, no crash.
    let mut v = VlessUdp::open(vless_in, ALICE, echo.addr(), &[]).unwrap();
    v.stream.write_all(&[0x10, 0x00, 1, 2, 3]).unwrap();
    v.stream.shutdown(Shutdown::Write).unwrap();
    assert!(shardray_tests::vless::closed_within(&mut v.stream, Duration::from_secs(5)));
    let path = VlessUdp::open(vless_in, ALICE, echo.addr(), &[]).unwrap();
    echo_datagrams(&path, echo.addr(), None, 20, 6, 2, &|| server.output());
}

#[test]
fn removing_a_user_closes_its_udp_sessions() {
    let echo = UdpEcho::start();
    let (server, api) = server_with(alice_vless(), vec![], 2);
    let vless_in = server.inbound("vless-in");
    let sessions: Vec<VlessUdp> =
        (0..4).map(|_| VlessUdp::open(vless_in, ALICE, echo.addr(), &[b"hi"]).unwrap()).collect();
    for s in &sessions {
        assert_eq!(s.recv().unwrap().1, b"hi");
    }
    api.remove_user("vless-in", "alice@example.com").unwrap();
    for mut s in sessions {
        assert!(
            shardray_tests::vless::closed_within(&mut s.stream, Duration::from_secs(5)),
            "a session outlived its user"
        );
    }
}

#[test]
fn a_user_holds_at_most_64_udp_flows_per_shard() {
    let echo = UdpEcho::start();
    let (server, api) = server_with(alice_vless(), vec![], 1);
    let vless_in = server.inbound("vless-in");
    let sessions: Vec<VlessUdp> =
        (0..64).map(|_| VlessUdp::open(vless_in, ALICE, echo.addr(), &[b"hi"]).unwrap()).collect();
    for s in &sessions {
        assert_eq!(s.recv().unwrap().1, b"hi");
    }
    let mut over = VlessUdp::open(vless_in, ALICE, echo.addr(), &[b"hi"]).unwrap();
    assert!(shardray_tests::vless::closed_within(&mut over.stream, Duration::from_secs(5)));
    assert!(counters_reach(&api, &[("refused>>>udp_flow_limit", 1)]), "{}", counters(&api, "refused"));
    // A flow given back makes room.
    drop(sessions);
    assert!(wait_until(Duration::from_secs(5), || {
        let s = VlessUdp::open(vless_in, ALICE, echo.addr(), &[b"again"]).unwrap();
        s.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s.recv().is_ok_and(|(_, p)| p == b"again")
    }));
}

#[test]
fn idle_flows_are_reclaimed_after_conn_idle() {
    let echo = UdpEcho::start();
    let mut config = alice_vless();
    config["policy"]["levels"]["0"]["connIdle"] = json!(1);
    let (server, _api) = server_with(config, vec![door(echo.addr(), "udp")], 1);
    let door_addr = server.inbound("door");
    let path = Direct::to(door_addr);
    echo_datagrams(&path, echo.addr(), Some(door_addr), 10, 1, 2, &|| server.output());
    std::thread::sleep(Duration::from_millis(2500));
    echo_datagrams(&path, echo.addr(), Some(door_addr), 10, 2, 2, &|| server.output());
    assert_eq!(echo.sources.lock().unwrap().len(), 2, "the idle flow's socket was not given up");
    // A VLESS UDP session idle for connIdle is closed.
    let mut s = VlessUdp::open(server.inbound("vless-in"), ALICE, echo.addr(), &[b"hi"]).unwrap();
    assert_eq!(s.recv().unwrap().1, b"hi");
    let started = std::time::Instant::now();
    assert!(shardray_tests::vless::closed_within(&mut s.stream, Duration::from_secs(5)));
    assert!(started.elapsed() >= Duration::from_millis(800), "closed after {:?}", started.elapsed());
}

#[test]
fn routing_rules_match_network_udp() {
    let (open, closed) = (UdpEcho::start(), UdpEcho::start());
    let tcp_echo = EchoServer::start();
    let mut config = alice_vless();
    config["log"]["loglevel"] = json!("info");
    config["routing"]["rules"] = json!([
        { "type": "field", "network": "tcp", "port": closed.addr().port(), "outboundTag": "direct" },
        { "type": "field", "network": "udp", "port": closed.addr().port(), "outboundTag": "blocked" },
        { "type": "field", "network": "tcp", "port": tcp_echo.addr().port(), "outboundTag": "blocked" },
        { "type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct" }
    ]);
    let (server, _api) = server_with(config, vec![], 2);
    let vless_in = server.inbound("vless-in");
    let log = || server.output();
    let to_open = VlessUdp::open(vless_in, ALICE, open.addr(), &[]).unwrap();
    echo_datagrams(&to_open, open.addr(), None, 50, 1, 4, &log);
    // UDP to that port passes over the TCP rule before it, matches the UDP one, and goes to
    // the blackhole: sent, never answered.
    let to_closed = VlessUdp::open(vless_in, ALICE, closed.addr(), &[b"dropped"]).unwrap();
    to_closed.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(to_closed.recv().is_err());
    assert_eq!(closed.datagrams.load(Ordering::Relaxed), 0);
    let line = format!("accepted udp:{} [vless-in >> blocked]", closed.addr());
    assert!(wait_until(Duration::from_secs(5), || log().contains(&line)), "{}", log());
    assert!(log().contains(&format!("accepted udp:{} [vless-in >> direct]", open.addr())), "{}", log());
    // And a TCP-only rule catches TCP.
    let reply = shardray_tests::vless::round_trip(vless_in, ALICE, tcp_echo.addr(), b"tcp");
    assert!(reply.map_or(true, |r| r.is_empty()), "TCP to a blocked port came back");
    let line = format!("accepted tcp:{} [vless-in >> blocked]", tcp_echo.addr());
    assert!(wait_until(Duration::from_secs(5), || log().contains(&line)), "{}", log());
}

#[test]
fn a_udp_door_added_through_the_api_serves_survives_kill_9_and_goes_away_when_removed() {
    let echo = UdpEcho::start();
    let mut config = alice_vless();
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let restartable = shardray_tests::Restartable::new(&config);
    let (server, _api) = restartable.start(&[]);
    let port = shardray_tests::fixed_port();
    let file = restartable.path("door.json");
    let mut added = door(echo.addr(), "udp");
    added["port"] = json!(port);
    std::fs::write(&file, json!({ "inbounds": [added] }).to_string()).unwrap();
    let api_arg = format!("--server={}", server.api.unwrap());
    let (status, out) = shardray_tests::run_cli(&["api", "adi", &api_arg, file.to_str().unwrap()]);
    assert!(status.success(), "{out}");
    let door_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    echo_datagrams(&Direct::to(door_addr), echo.addr(), Some(door_addr), 100, 1, 4, &|| server.output());
    server.kill9();

    let (server, _api) = restartable.start(&[]);
    echo_datagrams(&Direct::to(door_addr), echo.addr(), Some(door_addr), 100, 2, 4, &|| server.output());
    let api_arg = format!("--server={}", server.api.unwrap());
    let (status, out) = shardray_tests::run_cli(&["api", "rmi", &api_arg, "door"]);
    assert!(status.success(), "{out}");
    let path = Direct::to(door_addr);
    path.socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    // Once removed, nothing answers (a new client address, so no old flow is involved).
    let _ = path.send(echo.addr(), b"anyone?");
    assert!(path.recv().is_err(), "a removed door still answered");
}

#[test]
fn sing_box_vless_udp_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let cert = shardray_tests::tls::SelfSigned::generate(certs.path(), &["localhost"]);
    let extra = json!({ "streamSettings": cert.stream_settings("localhost", &["http/1.1"]) });
    let config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), extra);
    let (server, api) = server_with(config, vec![], 2);
    let tls = shardray_tests::singbox::insecure_tls("localhost");
    let mut out = vless_outbound(server.inbound("vless-in"), ALICE, Some(tls));
    out["packet_encoding"] = json!("");
    let sb = SingBox::start(out);
    let total = three_flows_through(&sb, &server) as i64;
    assert!(counters_reach(&api, &[(UPLINK, total), (DOWNLINK, total)]), "{}", counters(&api, "user"));
}

#[test]
fn freedom_is_full_cone_one_socket_for_every_destination_of_a_session() {
    let (a, b) = (UdpEcho::start(), UdpEcho::start());
    let config = trojan_config(json!([{ "password": ALICE_PASSWORD, "email": "alice@example.com" }]), json!({}));
    let (server, _api) = server_with(config, vec![], 2);
    let mut frames = trojan_frame(a.addr(), b"to a");
    frames.extend_from_slice(&trojan_frame(b.addr(), b"to b"));
    let mut t = trojan_udp(server.inbound("trojan-in"), &frames);
    let mut got = [read_trojan_frame(&mut t), read_trojan_frame(&mut t)];
    got.sort();
    let mut want = [(a.addr(), b"to a".to_vec()), (b.addr(), b"to b".to_vec())];
    want.sort();
    assert_eq!(got, want, "each reply with its own source");
    // Both destinations saw the same source: the session's one socket.
    let mapped = a.sources.lock().unwrap().clone();
    assert_eq!(mapped.len(), 1);
    assert_eq!(*b.sources.lock().unwrap(), mapped);
    // A third address (an allowed IP, another port) reaches the session through that mapping.
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"unsolicited", mapped[0]).unwrap();
    assert_eq!(read_trojan_frame(&mut t), (stranger.local_addr().unwrap(), b"unsolicited".to_vec()));
}

#[test]
fn sing_box_vless_xudp_its_default_packet_encoding() {
    let (server, api) = server_with(alice_vless(), vec![], 2);
    // No packet_encoding: sing-box's default, xudp (VLESS mux command, mux.cool frames).
    let sb = SingBox::start(vless_outbound(server.inbound("vless-in"), ALICE, None));
    let total = three_flows_through(&sb, &server) as i64;
    assert!(counters_reach(&api, &[(UPLINK, total), (DOWNLINK, total)]), "{}", counters(&api, "user"));
}

#[test]
fn xudp_frames_full_cone_and_a_stray_session_id_refused() {
    let (a, b) = (UdpEcho::start(), UdpEcho::start());
    let (server, _api) = server_with(alice_vless(), vec![], 2);
    let keep = |dest: SocketAddr, data: &[u8]| {
        let mut out = Vec::new();
        shardray_wire::xudp::Frame::encode_udp_keep(0, &dest.into(), data.len(), &mut out).unwrap();
        out.extend_from_slice(data);
        out
    };
    let mux_request = || {
        use shardray_wire::vless::{Command, RequestHeader};
        let header = RequestHeader {
            user: shardray_tests::vless::user_id(ALICE),
            flow: String::new(),
            command: Command::Mux,
            destination: None,
        };
        let mut out = Vec::new();
        header.encode(&mut out);
        out
    };
    // New (UDP to a, with a first packet), then Keep frames to b and a.
    let mut first = mux_request();
    let mut new = vec![0, 0, 0, 0, 1, 1, 2];
    new.extend_from_slice(&a.addr().port().to_be_bytes());
    new.push(1);
    new.extend_from_slice(&[127, 0, 0, 1]);
    let meta = (new.len() - 2) as u16;
    new[..2].copy_from_slice(&meta.to_be_bytes());
    new.extend_from_slice(&[0, 3]);
    new.extend_from_slice(b"new");
    first.extend_from_slice(&new);
    first.extend_from_slice(&keep(b.addr(), b"to b"));
    first.extend_from_slice(&keep(a.addr(), b"to a"));
    let mut s = shardray_tests::vless::connect(server.inbound("vless-in")).unwrap();
    s.write_all(&first).unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head, [0, 0]);
    let mut got = Vec::new();
    for _ in 0..3 {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut frame).unwrap();
        let mut data_len = [0u8; 2];
        s.read_exact(&mut data_len).unwrap();
        let mut data = vec![0u8; usize::from(u16::from_be_bytes(data_len))];
        s.read_exact(&mut data).unwrap();
        let mut whole = len.to_vec();
        whole.extend_from_slice(&frame);
        whole.extend_from_slice(&data_len);
        whole.extend_from_slice(&data);
        let f = shardray_wire::xudp::Frame::decode(&mut &whole[..]).unwrap();
        let shardray_wire::xudp::Status::Keep(Some(from)) = f.status else { panic!("{f:?}") };
        got.push((from.to_string(), f.data.to_vec()));
    }
    got.sort();
    let mut want = vec![
        (a.addr().to_string(), b"new".to_vec()),
        (a.addr().to_string(), b"to a".to_vec()),
        (b.addr().to_string(), b"to b".to_vec()),
    ];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(*a.sources.lock().unwrap(), *b.sources.lock().unwrap(), "one socket for both");

    // A Keep frame for a session id never opened ends the connection.
    let mut stray = mux_request();
    stray.extend_from_slice(&[0, 4, 0, 9, 2, 1, 0, 1, b'x']);
    let mut s = shardray_tests::vless::connect(server.inbound("vless-in")).unwrap();
    s.write_all(&stray).unwrap();
    assert!(shardray_tests::vless::closed_within(&mut s, Duration::from_secs(5)));
}
