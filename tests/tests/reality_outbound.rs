//! REALITY on a VLESS outbound (`security: "reality"`), the real binary with two shards: a
//! dokodemo-door's TCP and UDP go out through it to shardray's own REALITY inbound, and to
//! shoes 0.3.2 as the REALITY server (in each of its three TLS 1.3 suites), byte for byte with
//! exact outbound counters (Trojan and VMess outbounds too, to our own inbounds; one outbound
//! added through AddOutbound); with a wrong public key or short id the server hands the
//! connection to its camouflage site, whose certificate the outbound refuses: the session
//! closes with nothing relayed, the log says why, the counters stay at zero. Vision
//! (`xtls-rprx-vision`) over the REALITY outbound to both servers: inner TLS 1.3 goes direct
//! both ways and is spliced, plain bytes are padded only. A server answering garbage fails
//! the dial with its reason logged and harms no shard.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::inner_tls::{inner_tls_over, plain_over, tls13_echo};
use shardray_tests::servers::EchoServer;
use shardray_tests::shoes::shoes_bin;
use shardray_tests::singbox::free_port;
use shardray_tests::tls::SelfSigned;
use shardray_tests::udp::{echo_datagrams, Direct, UdpEcho};
use shardray_tests::vless::payload;
use shardray_tests::{
    loopback_api, reality_keys, trojan_config, vless_config, vmess_config, wait_until, Shardray, ALICE, ALICE_PASSWORD,
};

const SNI: &str = "reality.test";
const SHORT_ID: &str = "6ba85179e30d4fc2";
const UP: &str = "outbound>>>reality-out>>>traffic>>>uplink";
const DOWN: &str = "outbound>>>reality-out>>>traffic>>>downlink";

/// The camouflage site: TLS with its own (ECDSA) certificate for `SNI`; after a handshake it
/// sends `target says hi`. Counts the connections it gets.
struct Target {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl Target {
    fn start() -> Target {
        let dir = tempfile::tempdir().unwrap();
        let cert = SelfSigned::generate(dir.path(), &[SNI]);
        let key = cert.key_der();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert_der.clone()], key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let config = config.clone();
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut tls = rustls::ServerConnection::new(config).unwrap();
                    while tls.is_handshaking() {
                        if tls.complete_io(&mut conn).is_err() {
                            return;
                        }
                    }
                    let mut s = rustls::StreamOwned::new(tls, conn);
                    let _ = s.write_all(b"target says hi");
                    let _ = s.flush();
                    let _ = s.read(&mut [0u8; 1024]);
                });
            }
        });
        Target { addr, connections, _dir: dir }
    }
}

/// shardray's VLESS inbound with REALITY for `target`.
fn reality_server(target: &Target, private_key: &str) -> Shardray {
    reality_server_for(target, private_key, json!({ "id": ALICE, "email": "alice@example.com" }))
}

/// `reality_server` with this one client.
fn reality_server_for(target: &Target, private_key: &str, client: Value) -> Shardray {
    reality_server_with(target, private_key, |stream| {
        vless_config(json!([client]), json!({ "streamSettings": stream }))
    })
}

/// A server whose config `config` builds around the REALITY stream settings for `target`.
fn reality_server_with(target: &Target, private_key: &str, config: impl FnOnce(Value) -> Value) -> Shardray {
    let stream = json!({
        "network": "raw",
        "security": "reality",
        "realitySettings": {
            "target": target.addr.to_string(),
            "serverNames": [SNI],
            "privateKey": private_key,
            "shortIds": [SHORT_ID],
            "maxTimeDiff": 60000
        }
    });
    let mut config = config(stream);
    config["log"]["loglevel"] = json!("info");
    Shardray::start(&config, 2)
}

/// The client: a TCP door to `tcp_echo` and a UDP door to `udp_echo`, both out through the
/// VLESS outbound `reality-out` to `server` with these REALITY settings.
fn reality_client(server: SocketAddr, tcp_echo: SocketAddr, udp_echo: SocketAddr, reality: Value) -> Shardray {
    Shardray::start(&client_config(server, tcp_echo, udp_echo, reality), 2)
}

/// `reality_client`'s config.
fn client_config(server: SocketAddr, tcp_echo: SocketAddr, udp_echo: SocketAddr, reality: Value) -> Value {
    let door = |tag: &str, dest: SocketAddr, network: &str| {
        json!({ "tag": tag, "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
                "settings": { "address": dest.ip().to_string(), "port": dest.port(), "network": network } })
    };
    let outbound = json!({
        "tag": "reality-out", "protocol": "vless",
        "settings": { "vnext": [{ "address": server.ip().to_string(), "port": server.port(),
                                  "users": [{ "id": ALICE, "encryption": "none" }] }] },
        "streamSettings": { "network": "raw", "security": "reality", "realitySettings": reality }
    });
    json!({
        "log": { "loglevel": "info" },
        "stats": {},
        "api": loopback_api(&["StatsService"]),
        "inbounds": [door("tcp-door", tcp_echo, "tcp"), door("udp-door", udp_echo, "udp")],
        "outbounds": [outbound],
        "policy": { "system": { "statsOutboundUplink": true, "statsOutboundDownlink": true } }
    })
}

fn client_settings(public_key: &str, short_id: &str) -> Value {
    json!({ "serverName": SNI, "publicKey": public_key, "shortId": short_id, "fingerprint": "chrome", "spiderX": "/" })
}

/// `data` to `door` (then half-closed); what comes back until the other end closes.
fn exchange(door: SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(door).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut write_half = stream.try_clone().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        // The door may close first (a refused dial): a failed write is part of that.
        let _ = write_half.write_all(&data);
        let _ = write_half.shutdown(Shutdown::Write);
    });
    let mut got = Vec::new();
    let _ = (&stream).read_to_end(&mut got);
    writer.join().unwrap();
    got
}

/// TCP round trips (1 byte to 1 MiB) and two UDP flows of 300 datagrams; the outbound's
/// counters must equal the payload.
fn carries_tcp_and_udp(client: &Shardray, udp_echo: SocketAddr, log: &(dyn Fn() -> String + Sync)) {
    let mut total = 0u64;
    for (i, len) in [1usize, 100, 16_385, 1 << 20].into_iter().enumerate() {
        let data = payload(len, i as u64);
        let got = exchange(client.inbound("tcp-door"), &data);
        assert!(got == data, "{len} bytes: got {} back\n{}\n{}", got.len(), log(), client.output());
        total += len as u64;
    }
    let door = client.inbound("udp-door");
    let both = || format!("{}\n{}", log(), client.output());
    total += std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u64)
            .map(|c| {
                let both = &both;
                s.spawn(move || echo_datagrams(&Direct::to(door), udp_echo, Some(door), 300, c, 8, both))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    let api = ApiClient::connect(client.api.unwrap());
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
fn vless_over_reality_to_our_own_inbound() {
    let (tcp_echo, udp_echo, target) = (EchoServer::start(), UdpEcho::start(), Target::start());
    let (private, public) = reality_keys();
    let server = reality_server(&target, &private);
    let client = reality_client(
        server.inbound("vless-in"),
        tcp_echo.addr(),
        udp_echo.addr(),
        client_settings(&public, SHORT_ID),
    );
    carries_tcp_and_udp(&client, udp_echo.addr(), &|| server.output());
    assert_eq!(target.connections.load(Ordering::SeqCst), 0, "every connection authenticated:\n{}", server.output());
}

/// Trojan and VMess outbounds over REALITY (the same layer as VLESS's) to our own Trojan and
/// VMess inbounds behind REALITY.
#[test]
fn trojan_and_vmess_over_reality_to_our_own_inbounds() {
    let (tcp_echo, udp_echo, target) = (EchoServer::start(), UdpEcho::start(), Target::start());
    let (private, public) = reality_keys();
    let trojan = reality_server_with(&target, &private, |stream| {
        trojan_config(json!([{ "password": ALICE_PASSWORD, "email": "t@x" }]), json!({ "streamSettings": stream }))
    });
    let vmess = reality_server_with(&target, &private, |stream| {
        vmess_config(json!([{ "id": ALICE, "email": "v@x" }]), json!({ "streamSettings": stream }))
    });
    let cases = [
        (
            "trojan",
            trojan.inbound("trojan-in"),
            json!({ "servers": [{ "address": "127.0.0.1", "port": trojan.inbound("trojan-in").port(), "password": ALICE_PASSWORD }] }),
        ),
        (
            "vmess",
            vmess.inbound("vmess-in"),
            json!({ "vnext": [{ "address": "127.0.0.1", "port": vmess.inbound("vmess-in").port(), "users": [{ "id": ALICE, "security": "aes-128-gcm" }] }] }),
        ),
    ];
    for (protocol, server, settings) in cases {
        let mut config = client_config(server, tcp_echo.addr(), udp_echo.addr(), client_settings(&public, SHORT_ID));
        config["outbounds"][0]["protocol"] = json!(protocol);
        config["outbounds"][0]["settings"] = settings;
        let client = Shardray::start(&config, 2);
        carries_tcp_and_udp(&client, udp_echo.addr(), &|| {
            format!("{protocol}\n{}\n{}", trojan.output(), vmess.output())
        });
    }
    assert_eq!(target.connections.load(Ordering::SeqCst), 0, "every connection authenticated");
}

/// The same outbound, added through HandlerService.AddOutbound as Xray's
/// `transport.internet.reality.Config` in the sender's stream settings.
#[test]
fn a_reality_outbound_added_through_the_api_carries_traffic() {
    use base64::Engine;
    use shardray_proto::xray::app::proxyman::{command as handler, SenderConfig};
    use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain};
    use shardray_proto::xray::common::protocol::ServerEndpoint;
    use shardray_proto::xray::core::OutboundHandlerConfig;
    use shardray_proto::xray::proxy::vless as vless_pb;
    use shardray_proto::xray::transport::internet::{reality, StreamConfig};
    use shardray_tests::api::{typed, vless_user};

    let (tcp_echo, udp_echo, target) = (EchoServer::start(), UdpEcho::start(), Target::start());
    let (private, public) = reality_keys();
    let server = reality_server(&target, &private);
    let mut config = client_config(server.inbound("vless-in"), tcp_echo.addr(), udp_echo.addr(), Value::Null);
    config["api"] = loopback_api(&["StatsService", "HandlerService"]);
    config["outbounds"] = json!([{ "tag": "first", "protocol": "blackhole" }]);
    let client = Shardray::start(&config, 2);
    let api = ApiClient::connect(client.api.unwrap());
    let vless_in = server.inbound("vless-in");
    let endpoint = ServerEndpoint {
        address: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        port: u32::from(vless_in.port()),
        user: vec![vless_user("", ALICE, 0)],
    };
    const REALITY: &str = "xray.transport.internet.reality.Config";
    let settings = reality::Config {
        server_name: SNI.into(),
        public_key: base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&public).unwrap(),
        short_id: (0..8).map(|i| u8::from_str_radix(&SHORT_ID[2 * i..2 * i + 2], 16).unwrap()).collect(),
        fingerprint: "chrome".into(),
        ..Default::default()
    };
    let stream = StreamConfig {
        protocol_name: "tcp".into(),
        security_type: REALITY.into(),
        security_settings: vec![typed(REALITY, &settings)],
        ..Default::default()
    };
    let outbound = OutboundHandlerConfig {
        tag: "reality-out".into(),
        sender_settings: Some(typed(
            "xray.app.proxyman.SenderConfig",
            &SenderConfig { stream_settings: Some(stream), ..Default::default() },
        )),
        proxy_settings: Some(typed(
            "xray.proxy.vless.outbound.Config",
            &vless_pb::outbound::Config { vnext: Some(endpoint) },
        )),
        ..Default::default()
    };
    let mut handlers = handler::handler_service_client::HandlerServiceClient::new(api.channel());
    api.block_on(handlers.add_outbound(handler::AddOutboundRequest { outbound: Some(outbound) })).unwrap();
    api.block_on(handlers.remove_outbound(handler::RemoveOutboundRequest { tag: "first".into() })).unwrap();
    carries_tcp_and_udp(&client, udp_echo.addr(), &|| server.output());
    assert_eq!(target.connections.load(Ordering::SeqCst), 0, "every connection authenticated");
}

/// A wrong key or short id: the server relays to its target, whose certificate the client
/// refuses; nothing comes back through the door and nothing is counted.
#[test]
fn a_wrong_public_key_or_short_id_meets_the_camouflage_site_and_fails_cleanly() {
    let (tcp_echo, udp_echo, target) = (EchoServer::start(), UdpEcho::start(), Target::start());
    let (private, public) = reality_keys();
    let (_, stranger) = reality_keys();
    let server = reality_server(&target, &private);
    for (i, settings) in
        [client_settings(&stranger, SHORT_ID), client_settings(&public, "0011223344556677")].into_iter().enumerate()
    {
        let client = reality_client(server.inbound("vless-in"), tcp_echo.addr(), udp_echo.addr(), settings);
        let got = exchange(client.inbound("tcp-door"), b"must not reach anyone");
        assert!(got.is_empty(), "case {i}: got {:?} through the door", String::from_utf8_lossy(&got));
        assert!(
            wait_until(Duration::from_secs(5), || client.output().contains("certificate key is not ed25519")),
            "case {i}: the refusal and its reason are logged:\n{}",
            client.output()
        );
        assert!(target.connections.load(Ordering::SeqCst) > i, "case {i}: the server relayed to its target");
        let api = ApiClient::connect(client.api.unwrap());
        assert_eq!((api.get(UP, false).ok(), api.get(DOWN, false).ok()), (Some(0), Some(0)), "case {i}");
    }
}

/// shoes 0.3.2 as a REALITY server (VLESS inside, XUDP on), offering one TLS 1.3 suite.
struct ShoesServer {
    child: std::process::Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl ShoesServer {
    fn start(private_key: &str, target: SocketAddr, suite: &str) -> ShoesServer {
        ShoesServer::start_with(private_key, target, suite, false)
    }

    fn start_with(private_key: &str, target: SocketAddr, suite: &str, vision: bool) -> ShoesServer {
        let port = free_port();
        let config = format!(
            r#"- address: "127.0.0.1:{port}"
  protocol:
    type: tls
    reality_targets:
      "{SNI}":
        private_key: "{private_key}"
        short_ids: ["{SHORT_ID}"]
        dest: "localhost:{target_port}"
        max_time_diff: 60000
        cipher_suites: ["{suite}"]
        vision: {vision}
        protocol:
          type: vless
          user_id: "{ALICE}"
          udp_enabled: true
"#,
            // shoes wants a name there (it names the temporary certificate after it).
            target_port = target.port(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoes.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("shoes.log")).unwrap();
        let child = std::process::Command::new(shoes_bin())
            .args(["-t", "1", "--no-reload"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn shoes");
        let server = ShoesServer { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), dir };
        let up = wait_until(Duration::from_secs(20), || {
            TcpStream::connect_timeout(&server.addr, Duration::from_millis(200)).is_ok()
        });
        assert!(up, "shoes did not listen:\n{}", server.log());
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shoes.log")).unwrap_or_default()
    }
}

impl Drop for ShoesServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn vless_over_reality_to_shoes_in_every_suite() {
    let (tcp_echo, udp_echo, target) = (EchoServer::start(), UdpEcho::start(), Target::start());
    let (private, public) = reality_keys();
    for suite in ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"] {
        let shoes = ShoesServer::start(&private, target.addr, suite);
        let client = reality_client(shoes.addr, tcp_echo.addr(), udp_echo.addr(), client_settings(&public, SHORT_ID));
        carries_tcp_and_udp(&client, udp_echo.addr(), &|| format!("{suite}\n{}", shoes.log()));
    }
    // (shoes dials its target for every connection, to mirror its handshake: no count to check.)
}

#[test]
fn shoes_with_a_wrong_short_id_hands_us_to_its_target_and_we_refuse() {
    let (tcp_echo, udp_echo, target) = (EchoServer::start(), UdpEcho::start(), Target::start());
    let (private, public) = reality_keys();
    let shoes = ShoesServer::start(&private, target.addr, "TLS_AES_128_GCM_SHA256");
    let client =
        reality_client(shoes.addr, tcp_echo.addr(), udp_echo.addr(), client_settings(&public, "0011223344556677"));
    let got = exchange(client.inbound("tcp-door"), b"must not reach anyone");
    assert!(got.is_empty(), "got {:?} through the door", String::from_utf8_lossy(&got));
    assert!(
        wait_until(Duration::from_secs(5), || client.output().contains("certificate key is not ed25519")),
        "{}\n{}",
        client.output(),
        shoes.log()
    );
}

const FLOW: &str = "xtls-rprx-vision";
const SPLICING: &str = "Vision direct both ways: splicing";

/// Vision over the REALITY outbound to `server`: 6 MiB of inner TLS 1.3 goes direct both ways
/// (and, when `spliced`, must have been spliced: the door is plain TCP), then 3 MiB of plain
/// bytes padded only.
fn vision_carries_inner_tls_and_plain(server: SocketAddr, public: &str, spliced: bool, log: &dyn Fn() -> String) {
    let (tls_echo, client_tls) = tls13_echo();
    let plain = EchoServer::start();
    let door = |tag: &str, to: SocketAddr| {
        json!({ "tag": tag, "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
                "settings": { "address": "127.0.0.1", "port": to.port(), "network": "tcp" } })
    };
    let config = json!({
        "log": { "loglevel": "debug" },
        "inbounds": [door("tls-door", tls_echo), door("plain-door", plain.addr())],
        "outbounds": [{
            "tag": "vision-out", "protocol": "vless",
            "settings": { "vnext": [{ "address": "127.0.0.1", "port": server.port(),
                                      "users": [{ "id": ALICE, "encryption": "none", "flow": FLOW }] }] },
            "streamSettings": { "security": "reality", "realitySettings": client_settings(public, SHORT_ID) }
        }]
    });
    let client = Shardray::start(&config, 2);
    let data = payload(6 << 20, 11);
    let stream = TcpStream::connect(client.inbound("tls-door")).unwrap();
    let got = inner_tls_over(stream, client_tls, data.clone())
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", client.output(), log()));
    assert!(got == data, "inner TLS: {} bytes back\n{}\n{}", got.len(), client.output(), log());
    assert!(
        wait_until(Duration::from_secs(5), || client
            .output()
            .contains("Vision to the server ended (direct up: true, down: true)")),
        "the session did not go direct both ways:\n{}\n{}",
        client.output(),
        log()
    );
    if spliced {
        assert!(client.output().contains(SPLICING), "not spliced:\n{}\n{}", client.output(), log());
    }
    let data = payload(3 << 20, 12);
    let stream = TcpStream::connect(client.inbound("plain-door")).unwrap();
    let got = plain_over(stream, &data).unwrap_or_else(|e| panic!("{e}\n{}", client.output()));
    assert!(got == data, "plain: {} bytes back\n{}\n{}", got.len(), client.output(), log());
}

#[test]
fn vision_over_reality_to_our_own_inbound() {
    let target = Target::start();
    let (private, public) = reality_keys();
    let server = reality_server_for(&target, &private, json!({ "id": ALICE, "email": "a@x", "flow": FLOW }));
    // Not asked to splice: with shardray at both ends, the 6 MiB echo sometimes ends before
    // either end's relay hands over (both log direct both ways, neither splices).
    vision_carries_inner_tls_and_plain(server.inbound("vless-in"), &public, false, &|| server.output());
    assert_eq!(target.connections.load(Ordering::SeqCst), 0, "every connection authenticated");
}

#[test]
fn vision_over_reality_to_shoes() {
    let target = Target::start();
    let (private, public) = reality_keys();
    let shoes = ShoesServer::start_with(&private, target.addr, "TLS_AES_128_GCM_SHA256", true);
    vision_carries_inner_tls_and_plain(shoes.addr, &public, true, &|| shoes.log());
}

/// A "server" that answers the ClientHello with garbage: a handshake record that does not
/// parse, random bytes, an oversized record, an alert. Each dial fails with its reason logged,
/// nothing comes through the door, and the shards live on.
#[test]
fn a_server_answering_garbage_fails_the_dial_and_the_shards_live_on() {
    let (tcp_echo, udp_echo) = (EchoServer::start(), UdpEcho::start());
    let (_, public) = reality_keys();
    let replies: Vec<Vec<u8>> = vec![
        [&[0x16, 3, 3, 0, 4][..], &[2, 0, 0, 0]].concat(),
        (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(),
        vec![0x17, 3, 3, 0xff, 0xff],
        vec![0x15, 3, 3, 0, 2, 2, 40],
    ];
    for (i, reply) in replies.into_iter().enumerate() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.read(&mut [0u8; 4096]);
                let _ = conn.write_all(&reply);
                let _ = conn.shutdown(Shutdown::Write);
                let _ = conn.read(&mut [0u8; 4096]);
            }
        });
        let mut client = reality_client(addr, tcp_echo.addr(), udp_echo.addr(), client_settings(&public, SHORT_ID));
        let got = exchange(client.inbound("tcp-door"), b"must not reach anyone");
        assert!(got.is_empty(), "reply {i}: got {:?}", String::from_utf8_lossy(&got));
        assert!(
            wait_until(Duration::from_secs(5), || client.output().contains("REALITY")),
            "reply {i}: the failure is logged:\n{}",
            client.output()
        );
        assert!(client.is_running(), "reply {i}: shardray died:\n{}", client.output());
    }
}
