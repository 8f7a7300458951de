//! Sniffing on inbounds against the real binary with two shards: clients (curl, and our
//! SOCKS5 client) connect through SOCKS inbounds to an IP address while sending an HTTP
//! request, a TLS ClientHello or a BitTorrent handshake; the sniffed name and protocol pick
//! the outbound (told apart by which loopback server answers), `routeOnly` keeps the IP,
//! `destOverride` without `http` ignores HTTP, and a client that sends nothing first still
//! gets its server's greeting after the bounded wait; QUIC Initials on UDP; `protocol` rules
//! added through AddRule and TestRoute's `Protocol`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardray_tests::proxy::{socks5, socks_config, OriginServer};
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::Shardray;

/// SOCKS inbounds: `plain` (no sniffing), `sniff` (http and tls), `tls-only` (destOverride
/// tls), `route-only` (http, routeOnly), `excluded` (http, b.test in domainsExcluded) and
/// `metadata-only` (http and tls, metadataOnly). Rules: `b.test` goes to `to-b`
/// (freedom redirected to `b`), `t.test` to `to-t` (redirected to `t`), `a.test` to `direct`,
/// BitTorrent to `blocked`, and 127.0.0.1 to `direct`.
fn config(b: SocketAddr, t: SocketAddr) -> Value {
    let mut config = socks_config(json!({ "auth": "noauth" }), json!({}));
    let base = config["inbounds"][0].clone();
    let inbound = |tag: &str, sniffing: Value| {
        let mut ib = base.clone();
        ib["tag"] = json!(tag);
        if !sniffing.is_null() {
            ib["sniffing"] = sniffing;
        }
        ib
    };
    config["inbounds"] = json!([
        inbound("plain", Value::Null),
        inbound("sniff", json!({ "enabled": true, "destOverride": ["http", "tls", "fakedns"] })),
        inbound("tls-only", json!({ "enabled": true, "destOverride": ["tls"] })),
        inbound("route-only", json!({ "enabled": true, "destOverride": ["http"], "routeOnly": true })),
        inbound("excluded", json!({ "enabled": true, "destOverride": ["http"], "domainsExcluded": ["b.test"] })),
        inbound("metadata-only", json!({ "enabled": true, "destOverride": ["http", "tls"], "metadataOnly": true })),
    ]);
    config["outbounds"] = json!([
        { "tag": "direct", "protocol": "freedom" },
        { "tag": "blocked", "protocol": "blackhole" },
        { "tag": "to-b", "protocol": "freedom", "settings": { "redirect": b.to_string() } },
        { "tag": "to-t", "protocol": "freedom", "settings": { "redirect": t.to_string() } }
    ]);
    config["routing"]["rules"] = json!([
        { "type": "field", "domain": ["full:b.test"], "outboundTag": "to-b" },
        { "type": "field", "domain": ["full:t.test"], "outboundTag": "to-t" },
        { "type": "field", "domain": ["full:a.test"], "outboundTag": "direct" },
        { "type": "field", "protocol": ["bittorrent"], "outboundTag": "blocked" },
        { "type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct" }
    ]);
    config
}

/// The body curl gets for `http://TARGET/` with `Host: host` through the SOCKS inbound.
fn curl_http(proxy: SocketAddr, target: SocketAddr, host: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-x", &format!("socks5://{proxy}"), "-H", &format!("Host: {host}")])
        .arg(format!("http://{target}/"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Setup {
    server: Shardray,
    a: OriginServer,
    t: RecordingServer,
    _b: OriginServer,
}

fn setup() -> Setup {
    let a = OriginServer::start("origin-a");
    let b = OriginServer::start("origin-b");
    let t = RecordingServer::start(b"");
    let server = Shardray::start(&config(b.addr(), t.addr()), 2);
    Setup { server, a, t, _b: b }
}

#[test]
fn sniffed_http_host_picks_the_outbound_and_route_only_keeps_the_ip() {
    let s = setup();
    let a = s.a.addr();
    // Several connections per case, so both shards serve each.
    for _ in 0..4 {
        // Without sniffing, the IP is all routing sees.
        assert!(curl_http(s.server.inbound("plain"), a, "b.test").starts_with("origin-a"));
        // Sniffed: the Host names b.test, whose rule redirects to origin B.
        let body = curl_http(s.server.inbound("sniff"), a, "b.test");
        assert!(body.starts_with("origin-b GET / HTTP/1.1"), "{body:?}\n{}", s.server.output());
        // destOverride without http: HTTP is ignored for the destination.
        assert!(curl_http(s.server.inbound("tls-only"), a, "b.test").starts_with("origin-a"));
        // domainsExcluded keeps the original destination.
        assert!(curl_http(s.server.inbound("excluded"), a, "b.test").starts_with("origin-a"));
        // metadataOnly: the payload is not read, so the Host changes nothing.
        assert!(curl_http(s.server.inbound("metadata-only"), a, "b.test").starts_with("origin-a"));
        // routeOnly: the name routes (b.test to origin B)…
        assert!(curl_http(s.server.inbound("route-only"), a, "b.test").starts_with("origin-b"));
        // …but a rule sending the name to `direct` reaches the IP the client named, not the
        // name (a.test does not resolve): and only because a rule names that IP for `direct`.
        assert!(curl_http(s.server.inbound("route-only"), a, "a.test").starts_with("origin-a"));
    }
    // Without routeOnly, the name is the destination: a.test does not resolve, no answer.
    assert_eq!(curl_http(s.server.inbound("sniff"), a, "a.test"), "");
}

#[test]
fn sniffed_tls_sni_picks_the_outbound_with_every_byte_kept() {
    let s = setup();
    let a = s.a.addr();
    for _ in 0..2 {
        // curl resolves t.test itself (socks5, not socks5h): the SOCKS request names the IP,
        // the ClientHello names t.test.
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "2", "-k", "-x", &format!("socks5://{}", s.server.inbound("sniff"))])
            .args(["--resolve", &format!("t.test:{}:127.0.0.1", a.port())])
            .arg(format!("https://t.test:{}/", a.port()))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let got = s.t.next(Duration::from_secs(5)).expect("the ClientHello reached the t.test outbound");
        // The whole ClientHello, from its first byte.
        assert_eq!(got[0], 0x16, "{got:?}");
        let len = u16::from_be_bytes([got[3], got[4]]) as usize;
        assert!(got.len() >= 5 + len);
        assert!(got.windows(6).any(|w| w == b"t.test"));
    }
}

#[test]
fn bittorrent_goes_to_the_protocol_rule_and_other_bytes_pass() {
    let s = setup();
    let echo = EchoServer::start();
    let proxy = s.server.inbound("sniff");
    let mut handshake = b"\x13BitTorrent protocol".to_vec();
    handshake.extend_from_slice(&[0; 8]);
    handshake.extend_from_slice(&[0x42; 40]);
    for _ in 0..4 {
        let mut conn = socks5(proxy, None, echo.addr().into()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(&handshake).unwrap();
        let mut back = Vec::new();
        let _ = conn.read_to_end(&mut back);
        assert!(back.is_empty(), "the blackhole answered {back:?}");

        // The same echo server reached with bytes no sniffer knows.
        let mut conn = socks5(proxy, None, echo.addr().into()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"\x13hello, not a torrent").unwrap();
        let mut back = [0u8; 21];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"\x13hello, not a torrent");
    }
    // Without sniffing no protocol is known: the handshake is echoed.
    let mut conn = socks5(s.server.inbound("plain"), None, echo.addr().into()).unwrap();
    conn.write_all(&handshake).unwrap();
    let mut back = vec![0u8; handshake.len()];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(back, handshake);
}

#[test]
fn a_client_that_waits_for_the_server_gets_it_after_a_bounded_wait() {
    let s = setup();
    // A server that speaks first (SMTP, SSH…).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let greeter = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.write_all(b"220 ready\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    for _ in 0..4 {
        let started = Instant::now();
        let mut conn = socks5(s.server.inbound("sniff"), None, greeter.into()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut greeting = [0u8; 11];
        conn.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting, b"220 ready\r\n");
        // Xray's wait is 200 ms; well under a second in all.
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }
}

/// The client Initial of RFC 9001 appendix A.2 (its ClientHello names example.com).
fn quic_initial() -> Vec<u8> {
    let hex = include_str!("../../dataplane/wire/src/testdata/rfc9001-client-initial.hex").trim();
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// The reply to `datagram` sent to `to` from a fresh socket, within 1 s.
fn udp_reply(to: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    socket.send_to(datagram, to).unwrap();
    let mut buf = vec![0u8; 2048];
    let n = socket.recv(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

#[test]
fn quic_initials_are_sniffed_on_udp() {
    let echo = shardray_tests::udp::UdpEcho::start();
    let door = |tag: &str, port: u16, sniffing: Value| {
        json!({ "tag": tag, "listen": "127.0.0.1", "port": port, "protocol": "dokodemo-door",
            "settings": { "address": "127.0.0.1", "port": echo.addr().port(), "network": "udp" },
            "sniffing": sniffing })
    };
    let (by_protocol, by_name, plain) =
        (shardray_tests::fixed_port(), shardray_tests::fixed_port(), shardray_tests::fixed_port());
    let mut config = socks_config(json!({ "auth": "noauth" }), json!({}));
    config["inbounds"] = json!([
        door("by-protocol", by_protocol, json!({ "enabled": true, "destOverride": [] })),
        door("by-name", by_name, json!({ "enabled": true, "destOverride": ["quic"] })),
        door("plain", plain, json!({ "enabled": false })),
    ]);
    config["routing"]["rules"] = json!([
        { "type": "field", "inboundTag": ["by-protocol"], "protocol": ["quic"], "outboundTag": "blocked" },
        { "type": "field", "domain": ["full:example.com"], "outboundTag": "blocked" },
        { "type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct" }
    ]);
    let server = Shardray::start(&config, 2);
    let at = |port: u16| -> SocketAddr { ([127, 0, 0, 1], port).into() };
    let initial = quic_initial();
    let mut not_quic = initial.clone();
    not_quic[600] ^= 1; // the AEAD tag fails: not a QUIC Initial we can read
    for _ in 0..3 {
        // The same bytes are echoed without sniffing, and so is a datagram that is not QUIC.
        assert_eq!(udp_reply(at(plain), &initial).as_deref(), Some(&initial[..]), "{}", server.output());
        assert_eq!(udp_reply(at(by_protocol), &not_quic).as_deref(), Some(&not_quic[..]));
        assert_eq!(udp_reply(at(by_name), &not_quic).as_deref(), Some(&not_quic[..]));
        // A QUIC Initial: blocked by the `protocol` rule, and by the rule on its SNI.
        assert_eq!(udp_reply(at(by_protocol), &initial), None);
        assert_eq!(udp_reply(at(by_name), &initial), None);
    }
}

#[test]
fn protocol_rules_added_through_the_api_match_live_sessions_and_test_route() {
    use prost::Message;
    use shardray_proto::xray::app::router;
    use shardray_proto::xray::app::router::command as pb;
    use shardray_proto::xray::common::serial::TypedMessage;

    let echo = EchoServer::start();
    let mut config = socks_config(json!({ "auth": "noauth" }), json!({}));
    config["inbounds"][0]["sniffing"] = json!({ "enabled": true, "destOverride": ["http", "tls"] });
    config["api"] = shardray_tests::loopback_api(&["RoutingService"]);
    let server = Shardray::start(&config, 2);
    let api = shardray_tests::api::ApiClient::connect(server.api.unwrap());
    let mut client = pb::routing_service_client::RoutingServiceClient::new(api.channel());
    let mut handshake = b"\x13BitTorrent protocol".to_vec();
    handshake.extend_from_slice(&[0; 48]);
    let torrent_echoed = || {
        let mut conn = socks5(server.inbound("socks-in"), None, echo.addr().into()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(&handshake).unwrap();
        // The echo server closes once it has echoed everything.
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        let _ = conn.read_to_end(&mut back);
        back == handshake
    };
    let test_route = |client: &mut pb::routing_service_client::RoutingServiceClient<_>, protocol: &str| {
        let ctx = pb::RoutingContext {
            target_i_ps: vec![vec![127, 0, 0, 1]],
            target_port: 6881,
            protocol: protocol.into(),
            ..Default::default()
        };
        let req = pb::TestRouteRequest { routing_context: Some(ctx), ..Default::default() };
        api.block_on(client.test_route(req)).unwrap().into_inner().outbound_tag
    };
    assert!(torrent_echoed(), "{}", server.output());
    assert_eq!(test_route(&mut client, "bittorrent"), "direct");

    // A rule first in the list, as a panel adds it.
    let rule = router::RoutingRule {
        protocol: vec!["bittorrent".into()],
        target_tag: Some(router::routing_rule::TargetTag::Tag("blocked".into())),
        ..Default::default()
    };
    let config = router::Config { rule: vec![rule], ..Default::default() };
    let typed = TypedMessage { r#type: "xray.app.router.Config".into(), value: config.encode_to_vec() };
    api.block_on(client.add_rule(pb::AddRuleRequest { config: Some(typed), should_append: false })).unwrap();
    // Every shard has the rule before the call returns.
    let echoed: Vec<bool> = (0..4).map(|_| torrent_echoed()).collect();
    assert_eq!(echoed, [false; 4], "{}", server.output());
    assert_eq!(test_route(&mut client, "bittorrent"), "blocked");
    assert_eq!(test_route(&mut client, "tls"), "direct");
}
