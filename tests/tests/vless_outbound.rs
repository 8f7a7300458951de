//! shardray's VLESS outbound against sing-box 1.14.4 as the VLESS server, over TLS and plain,
//! raw TCP, WebSocket and HTTPUpgrade:
//! dokodemo-door inbounds send TCP connections and UDP datagrams to echo servers through it,
//! with exact outbound counters; one added through the API carries traffic too. UDP leaves as
//! XUDP by default (several destinations in one session, full cone), to sing-box and to
//! shardray's own inbound, or by the UDP command with `packetEncoding: "none"`. Over WebSocket
//! with `?ed=`, the first write rides in `Sec-WebSocket-Protocol` (sing-box and our inbound as
//! the servers, and a raw listener that reads the request head).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::singbox::SingBox;
use shardray_tests::tls::SelfSigned;
use shardray_tests::udp::{echo_datagrams, Direct, Socks5Udp, UdpEcho};
use shardray_tests::vless::payload;
use shardray_tests::{loopback_api, vless_config, wait_until, Shardray, ALICE};

const UP: &str = "outbound>>>vless-out>>>traffic>>>uplink";
const DOWN: &str = "outbound>>>vless-out>>>traffic>>>downlink";

/// shardray with a TCP door to `tcp_echo` and a UDP door to `udp_echo`, both leaving through
/// `outbound` (the default route).
fn config(tcp_echo: SocketAddr, udp_echo: SocketAddr, outbound: Value) -> Value {
    let door = |tag: &str, dest: SocketAddr, network: &str| {
        json!({ "tag": tag, "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
                "settings": { "address": dest.ip().to_string(), "port": dest.port(), "network": network } })
    };
    json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "api": loopback_api(&["StatsService", "HandlerService"]),
        "inbounds": [door("tcp-door", tcp_echo, "tcp"), door("udp-door", udp_echo, "udp")],
        "outbounds": [outbound, { "tag": "direct", "protocol": "freedom" }],
        "policy": { "system": { "statsOutboundUplink": true, "statsOutboundDownlink": true } }
    })
}

fn vless_outbound(server: SocketAddr, stream: Value) -> Value {
    json!({
        "tag": "vless-out", "protocol": "vless",
        "settings": { "vnext": [{ "address": server.ip().to_string(), "port": server.port(),
                                  "users": [{ "id": ALICE, "encryption": "none" }] }] },
        "streamSettings": stream
    })
}

/// `data` to the TCP door (then half-closed) and as many bytes back. Not read to the end: a
/// WebSocket has no half-close, so over `ws` the echo server never sees the client's end.
fn exchange(proxy: SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut write_half = stream.try_clone().unwrap();
    let data = data.to_vec();
    let mut got = vec![0u8; data.len()];
    let writer = std::thread::spawn(move || {
        write_half.write_all(&data).unwrap();
        write_half.shutdown(Shutdown::Write).unwrap();
    });
    let mut n = 0;
    while n < got.len() {
        match (&stream).read(&mut got[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    got.truncate(n);
    writer.join().unwrap();
    got
}

/// TCP round trips (1 byte to 1 MiB) and three UDP flows at once (500 datagrams of 1 to 1400
/// bytes each); the outbound's counters must equal the payload.
fn carries_tcp_and_udp(server: &Shardray, udp_echo: SocketAddr, log: &(dyn Fn() -> String + Sync)) {
    let mut total = 0u64;
    for (i, len) in [1usize, 100, 16_385, 1 << 20].into_iter().enumerate() {
        let data = payload(len, i as u64);
        let got = exchange(server.inbound("tcp-door"), &data);
        assert!(got == data, "{len} bytes: got {} back\n{}\n{}", got.len(), log(), server.output());
        total += len as u64;
    }
    let door = server.inbound("udp-door");
    let both = || format!("{}\n{}", log(), server.output());
    total += std::thread::scope(|s| {
        let handles: Vec<_> = (0..3u64)
            .map(|c| {
                let both = &both;
                s.spawn(move || echo_datagrams(&Direct::to(door), udp_echo, Some(door), 500, c, 8, both))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    let api = ApiClient::connect(server.api.unwrap());
    let t = total as i64;
    assert!(
        wait_until(Duration::from_secs(5), || api.get(UP, false).ok() == Some(t)
            && api.get(DOWN, false).ok() == Some(t)),
        "outbound counters {:?} / {:?}, expected {t}",
        api.get(UP, false),
        api.get(DOWN, false)
    );
}

#[test]
fn through_sing_box_as_a_plain_vless_server() {
    let (tcp_echo, udp_echo) = (EchoServer::start(), UdpEcho::start());
    let sb = SingBox::serve(json!({ "type": "vless", "tag": "vless-in", "users": [{ "name": "u", "uuid": ALICE }] }));
    let outbound = vless_outbound(sb.socks, json!({ "network": "tcp" }));
    let server = Shardray::start(&config(tcp_echo.addr(), udp_echo.addr(), outbound), 2);
    carries_tcp_and_udp(&server, udp_echo.addr(), &|| sb.log());
}

#[test]
fn through_sing_box_as_a_vless_server_over_tls() {
    let (tcp_echo, udp_echo) = (EchoServer::start(), UdpEcho::start());
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["vless.example"]);
    let sb = SingBox::serve(json!({
        "type": "vless", "tag": "vless-in", "users": [{ "name": "u", "uuid": ALICE }],
        "tls": { "enabled": true, "server_name": "vless.example",
                 "certificate_path": cert.cert_file.to_str().unwrap(), "key_path": cert.key_file.to_str().unwrap() }
    }));
    let stream = json!({ "security": "tls", "tlsSettings": { "serverName": "vless.example", "allowInsecure": true } });
    let server = Shardray::start(&config(tcp_echo.addr(), udp_echo.addr(), vless_outbound(sb.socks, stream)), 2);
    carries_tcp_and_udp(&server, udp_echo.addr(), &|| sb.log());
}

#[test]
fn through_sing_box_as_a_vless_server_over_websocket_and_tls() {
    let (tcp_echo, udp_echo) = (EchoServer::start(), UdpEcho::start());
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["vless.example"]);
    let sb = SingBox::serve(json!({
        "type": "vless", "tag": "vless-in", "users": [{ "name": "u", "uuid": ALICE }],
        "transport": { "type": "ws", "path": "/vless" },
        "tls": { "enabled": true, "server_name": "vless.example",
                 "certificate_path": cert.cert_file.to_str().unwrap(), "key_path": cert.key_file.to_str().unwrap() }
    }));
    let stream = json!({ "network": "ws", "wsSettings": { "path": "/vless" },
                         "security": "tls", "tlsSettings": { "serverName": "vless.example", "allowInsecure": true } });
    let server = Shardray::start(&config(tcp_echo.addr(), udp_echo.addr(), vless_outbound(sb.socks, stream)), 2);
    carries_tcp_and_udp(&server, udp_echo.addr(), &|| sb.log());
}

#[test]
fn through_sing_box_as_a_vless_server_over_httpupgrade() {
    let (tcp_echo, udp_echo) = (EchoServer::start(), UdpEcho::start());
    let sb = SingBox::serve(json!({
        "type": "vless", "tag": "vless-in", "users": [{ "name": "u", "uuid": ALICE }],
        "transport": { "type": "httpupgrade", "path": "/up", "host": "cdn.example" }
    }));
    let stream = json!({ "network": "httpupgrade", "httpupgradeSettings": { "path": "/up", "host": "cdn.example" } });
    let server = Shardray::start(&config(tcp_echo.addr(), udp_echo.addr(), vless_outbound(sb.socks, stream)), 2);
    carries_tcp_and_udp(&server, udp_echo.addr(), &|| sb.log());
}

#[test]
fn a_vless_outbound_added_through_the_api_carries_traffic() {
    use shardray_proto::xray::app::proxyman::command as handler;
    use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain};
    use shardray_proto::xray::common::protocol::ServerEndpoint;
    use shardray_proto::xray::core::OutboundHandlerConfig;
    use shardray_proto::xray::proxy::vless as vless_pb;
    use shardray_tests::api::{typed, vless_user};

    let (tcp_echo, udp_echo) = (EchoServer::start(), UdpEcho::start());
    let sb = SingBox::serve(json!({ "type": "vless", "tag": "vless-in", "users": [{ "name": "u", "uuid": ALICE }] }));
    let mut config = config(tcp_echo.addr(), udp_echo.addr(), json!({ "tag": "first", "protocol": "blackhole" }));
    config["outbounds"] = json!([{ "tag": "first", "protocol": "blackhole" }]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    let endpoint = ServerEndpoint {
        address: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        port: u32::from(sb.socks.port()),
        user: vec![vless_user("", ALICE, 0)],
    };
    let outbound = OutboundHandlerConfig {
        tag: "vless-out".into(),
        proxy_settings: Some(typed(
            "xray.proxy.vless.outbound.Config",
            &vless_pb::outbound::Config { vnext: Some(endpoint) },
        )),
        ..Default::default()
    };
    let mut client = handler::handler_service_client::HandlerServiceClient::new(api.channel());
    api.block_on(client.add_outbound(handler::AddOutboundRequest { outbound: Some(outbound) })).unwrap();
    api.block_on(client.remove_outbound(handler::RemoveOutboundRequest { tag: "first".into() })).unwrap();
    carries_tcp_and_udp(&server, udp_echo.addr(), &|| sb.log());
}

#[test]
fn a_flow_or_a_second_server_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            json!({ "vnext": [{ "address": "127.0.0.1", "port": 443, "users": [{ "id": ALICE, "flow": "xtls-rprx-vision" }] }] }),
            "outbounds[0].settings.vnext[0].users[0].flow",
        ),
        (
            json!({ "vnext": [{ "address": "127.0.0.1", "port": 443, "users": [{ "id": ALICE }] },
                           { "address": "127.0.0.2", "port": 443, "users": [{ "id": ALICE }] }] }),
            "outbounds[0].settings.vnext[1]",
        ),
        (
            json!({ "vnext": [{ "address": "127.0.0.1", "port": 443, "users": [{ "id": "not a uuid at all, longer than thirty" }] }] }),
            "outbounds[0].settings.vnext[0].users[0].id",
        ),
    ];
    for (i, (settings, path)) in cases.into_iter().enumerate() {
        let config = json!({
            "inbounds": [],
            "outbounds": [{ "tag": "vless-out", "protocol": "vless", "settings": settings }]
        });
        let file = dir.path().join(format!("c{i}.json"));
        std::fs::write(&file, config.to_string()).unwrap();
        let (status, out) = shardray_tests::run_cli(&["test", "-c", file.to_str().unwrap()]);
        assert!(!status.success() && out.contains(path), "case {i}: {out}");
    }
}

/// shardray with a SOCKS inbound (UDP ASSOCIATE on) whose sessions leave through `outbound`.
fn socks_client(outbound: Value) -> Shardray {
    let config = json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "api": loopback_api(&["StatsService"]),
        "inbounds": [{ "tag": "socks-in", "listen": "127.0.0.1", "port": 0, "protocol": "socks",
                       "settings": { "auth": "noauth", "udp": true, "ip": "127.0.0.1" } }],
        "outbounds": [outbound, { "tag": "direct", "protocol": "freedom" }],
        "policy": { "system": { "statsOutboundUplink": true, "statsOutboundDownlink": true } }
    });
    Shardray::start(&config, 2)
}

/// One SOCKS5 UDP association through `client` (one packet session), datagrams to three echo
/// servers in turn, each checked byte for byte; the outbound counters must equal the payload.
/// Returns the payload bytes each way and whether every echo server saw one and the same
/// source (full cone: one socket on the server's side for the whole session).
fn three_destinations_in_one_session(client: &Shardray, log: &(dyn Fn() -> String + Sync)) -> (i64, bool) {
    let echoes: Vec<UdpEcho> = (0..3).map(|_| UdpEcho::start()).collect();
    let path = Socks5Udp::associate(client.inbound("socks-in")).unwrap();
    let mut total = 0;
    for round in 0..2u64 {
        for (i, echo) in echoes.iter().enumerate() {
            total += echo_datagrams(&path, echo.addr(), None, 200, round * 3 + i as u64, 4, log);
        }
    }
    let sources: Vec<_> = echoes.iter().map(|e| e.sources.lock().unwrap().clone()).collect();
    let one_source = sources.iter().all(|s| s.len() == 1 && s[0] == sources[0][0]);
    let api = ApiClient::connect(client.api.unwrap());
    let t = total as i64;
    assert!(
        wait_until(Duration::from_secs(5), || api.get(UP, false).ok() == Some(t)
            && api.get(DOWN, false).ok() == Some(t)),
        "outbound counters {:?} / {:?}, expected {t}",
        api.get(UP, false),
        api.get(DOWN, false)
    );
    (t, one_source)
}

#[test]
fn xudp_to_sing_box_carries_several_destinations_in_one_session() {
    let sb = SingBox::serve(json!({ "type": "vless", "tag": "vless-in", "users": [{ "name": "u", "uuid": ALICE }] }));
    let client = socks_client(vless_outbound(sb.socks, json!({ "network": "tcp" })));
    let log = || format!("{}\n{}", sb.log(), client.output());
    let (_, one_source) = three_destinations_in_one_session(&client, &log);
    assert!(one_source, "sing-box answered from more than one socket: not one XUDP session\n{}", log());
}

#[test]
fn xudp_to_our_own_inbound_and_the_udp_command_with_packet_encoding_none() {
    for encoding in [None, Some("xudp"), Some("none")] {
        let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
        config["api"] = loopback_api(&["StatsService"]);
        config["log"]["loglevel"] = json!("debug");
        let server = Shardray::start(&config, 2);
        let mut outbound = vless_outbound(server.inbound("vless-in"), json!({ "network": "tcp" }));
        if let Some(e) = encoding {
            outbound["settings"]["vnext"][0]["users"][0]["packetEncoding"] = json!(e);
        }
        let client = socks_client(outbound);
        let log = || format!("{encoding:?}\n{}\n{}", server.output(), client.output());
        if encoding == Some("none") {
            // One destination per UDP-command session: the first one's packets only.
            let echo = UdpEcho::start();
            let path = Socks5Udp::associate(client.inbound("socks-in")).unwrap();
            echo_datagrams(&path, echo.addr(), None, 300, 1, 4, &log);
            assert!(!server.output().contains("mux connection"), "{}", log());
            continue;
        }
        let (total, one_source) = three_destinations_in_one_session(&client, &log);
        assert!(one_source, "more than one socket on the server: not one XUDP session\n{}", log());
        assert!(server.output().contains("mux connection"), "{}", log());
        let api = ApiClient::connect(server.api.unwrap());
        let (up, down) =
            ("user>>>alice@example.com>>>traffic>>>uplink", "user>>>alice@example.com>>>traffic>>>downlink");
        assert!(
            wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(total)
                && api.get(down, false).ok() == Some(total)),
            "{:?} / expected {total}",
            api.query("user", false)
        );
    }
}

#[test]
fn an_unknown_packet_encoding_is_refused_by_name() {
    let mut outbound = vless_outbound("127.0.0.1:1".parse().unwrap(), json!({ "network": "tcp" }));
    outbound["settings"]["vnext"][0]["users"][0]["packetEncoding"] = json!("packetaddr");
    let err = Shardray::try_start(&config("127.0.0.1:1".parse().unwrap(), "127.0.0.1:1".parse().unwrap(), outbound), 2)
        .err()
        .expect("refused");
    assert!(err.contains("outbounds[0].settings.vnext[0].users[0].packetEncoding"), "{err}");
}

/// A VLESS inbound on our own server over WebSocket with early data accepted (`?ed=2048`).
fn own_ws_server() -> Shardray {
    let ws = json!({ "streamSettings": { "network": "ws", "wsSettings": { "path": "/vless?ed=2048" } } });
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), ws);
    config["api"] = loopback_api(&["StatsService"]);
    Shardray::start(&config, 2)
}

#[test]
fn early_data_over_websocket_to_sing_box_and_to_our_own_inbound() {
    let (tcp_echo, udp_echo) = (EchoServer::start(), UdpEcho::start());
    let sb = SingBox::serve(json!({
        "type": "vless", "tag": "vless-in", "users": [{ "name": "u", "uuid": ALICE }],
        "transport": { "type": "ws", "path": "/vless", "max_early_data": 2048,
                       "early_data_header_name": "Sec-WebSocket-Protocol" }
    }));
    let stream = json!({ "network": "ws", "wsSettings": { "path": "/vless?ed=2048" } });
    let server =
        Shardray::start(&config(tcp_echo.addr(), udp_echo.addr(), vless_outbound(sb.socks, stream.clone())), 2);
    carries_tcp_and_udp(&server, udp_echo.addr(), &|| sb.log());
    let ours = own_ws_server();
    let server =
        Shardray::start(&config(tcp_echo.addr(), udp_echo.addr(), vless_outbound(ours.inbound("vless-in"), stream)), 2);
    carries_tcp_and_udp(&server, udp_echo.addr(), &|| ours.output());
}

/// Accepts one connection on `listener` and returns its request head (up to the blank line).
fn read_request_head(listener: &std::net::TcpListener) -> String {
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed inside the head: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Where early data goes: Xray's `?ed=` and V2Ray's `maxEarlyData` with the header named put
/// it in `Sec-WebSocket-Protocol`; `maxEarlyData` alone after the path, as V2Ray's client does.
#[derive(Debug, PartialEq)]
enum Carried {
    InProtocol,
    AfterPath,
    Not,
}

#[test]
fn early_data_rides_in_the_protocol_header_or_after_the_path_when_the_first_write_fits() {
    use base64::Engine as _;
    use shardray_wire::vless::{Command, RequestHeader};
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let payload = b"the client's first bytes";
    let protocol_header =
        json!({ "path": "/vless", "maxEarlyData": 2048, "earlyDataHeaderName": "Sec-WebSocket-Protocol" });
    let cases = [
        (json!({ "path": "/vless?ed=2048" }), Carried::InProtocol),
        (json!({ "path": "/vless?ed=16" }), Carried::Not),
        (protocol_header, Carried::InProtocol),
        (json!({ "path": "/vless", "maxEarlyData": 2048 }), Carried::AfterPath),
        (json!({ "path": "/vless", "maxEarlyData": 16 }), Carried::Not),
    ];
    for (ws, carried) in cases {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = json!({ "network": "ws", "wsSettings": ws });
        let mut outbound = vless_outbound(listener.local_addr().unwrap(), stream);
        outbound["tag"] = json!("ws-out");
        let mut config = vless_config(json!([{ "id": ALICE }]), json!({}));
        config["outbounds"] = json!([outbound]);
        config["routing"] = json!({});
        let server = Shardray::start(&config, 2);
        let mut first = shardray_tests::vless::request(ALICE, target);
        first.extend_from_slice(payload);
        let mut client = shardray_tests::vless::connect(server.inbound("vless-in")).unwrap();
        client.write_all(&first).unwrap();
        let head = read_request_head(&listener);
        let decode = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v).expect("unpadded base64url");
        let protocol = head.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Protocol: ")).map(decode);
        let target_path = head.strip_prefix("GET ").and_then(|h| h.split(' ').next()).unwrap_or_default();
        let after_path = target_path.strip_prefix("/vless").filter(|rest| !rest.is_empty()).map(decode);
        let early = match (&carried, protocol, after_path) {
            (Carried::Not, None, None) => continue,
            (Carried::InProtocol, Some(early), None) | (Carried::AfterPath, None, Some(early)) => early,
            (_, protocol, after_path) => {
                panic!("{ws}: {carried:?} expected; protocol {protocol:?}, after the path {after_path:?}\n{head}")
            }
        };
        let mut cur = &early[..];
        let header = RequestHeader::decode(&mut cur).unwrap();
        assert_eq!((header.user, header.command), (shardray_tests::vless::user_id(ALICE), Command::Tcp));
        assert_eq!(header.destination, Some(target.into()));
        assert_eq!(cur, payload, "the VLESS header and the first payload, in one");
    }
}

#[test]
fn v2ray_early_data_after_the_path_to_v2ray_and_to_our_own_inbound() {
    let (tcp_echo, udp_echo) = (EchoServer::start(), UdpEcho::start());
    let ws = json!({ "path": "/vless", "maxEarlyData": 2048 });
    let stream = json!({ "network": "ws", "wsSettings": ws });
    // V2Ray 4.45 as the server, reading early data after the path only (TCP: it has no XUDP).
    let port = shardray_tests::singbox::free_port();
    let v2 = shardray_tests::v2ray::V2Ray::start_full(
        json!([{ "listen": "127.0.0.1", "port": port, "protocol": "vless",
                 "settings": { "clients": [{ "id": ALICE }], "decryption": "none" },
                 "streamSettings": stream }]),
        json!([{ "protocol": "freedom" }]),
        json!({}),
    );
    let server =
        Shardray::start(&config(tcp_echo.addr(), udp_echo.addr(), vless_outbound(v2.socks, stream.clone())), 2);
    for (i, len) in [1usize, 100, 2000, 16_385, 1 << 20].into_iter().enumerate() {
        let data = payload(len, i as u64);
        let got = exchange(server.inbound("tcp-door"), &data);
        assert!(got == data, "{len} bytes: got {} back\n{}\n{}", got.len(), v2.log(), server.output());
    }
    // Our inbound, with V2Ray's settings too.
    let mut inbound = vless_config(json!([{ "id": ALICE }]), json!({ "streamSettings": stream.clone() }));
    inbound["api"] = loopback_api(&["StatsService"]);
    let ours = Shardray::start(&inbound, 2);
    let server =
        Shardray::start(&config(tcp_echo.addr(), udp_echo.addr(), vless_outbound(ours.inbound("vless-in"), stream)), 2);
    carries_tcp_and_udp(&server, udp_echo.addr(), &|| ours.output());
}
