//! shardray's Shadowsocks outbound against sing-box 1.14.4 as the Shadowsocks server, for
//! every method (and a 2022 multi-user server, `serverPSK:userPSK`): a dokodemo-door inbound
//! sends every connection to an echo server through it; exact outbound counters. More than
//! one server is refused by name; the outbound also comes through AddOutbound (Xray's
//! shadowsocks ClientConfig and shadowsocks_2022 ClientConfig).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::servers::EchoServer;
use shardray_tests::singbox::SingBox;
use shardray_tests::vless::payload;
use shardray_tests::{loopback_api, wait_until, Shardray};

/// shardray with a dokodemo-door inbound to `echo` whose connections leave through `outbound`.
fn config(echo: SocketAddr, outbound: Value) -> Value {
    json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "api": loopback_api(&["StatsService", "HandlerService"]),
        "inbounds": [{ "tag": "fwd", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
                       "settings": { "address": echo.ip().to_string(), "port": echo.port(), "network": "tcp" } }],
        "outbounds": [outbound, { "tag": "direct", "protocol": "freedom" }],
        "policy": { "system": { "statsOutboundUplink": true, "statsOutboundDownlink": true } }
    })
}

/// Xray's Shadowsocks outbound JSON: `servers` with one server.
fn ss_outbound(server: SocketAddr, method: &str, password: &str) -> Value {
    json!({
        "tag": "ss-out", "protocol": "shadowsocks",
        "settings": { "servers": [{ "address": server.ip().to_string(), "port": server.port(),
                                    "method": method, "password": password }] }
    })
}

fn psk(len: usize, seed: u8) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(13).wrapping_add(seed)).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes `data` (on a second thread) and reads as many bytes back; then closes.
fn exchange(proxy: SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut write_half = stream.try_clone().unwrap();
    let owned = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = write_half.write_all(&owned);
    });
    let mut got = vec![0u8; data.len()];
    let mut at = 0;
    while at < got.len() {
        match (&stream).read(&mut got[at..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => at += n,
        }
    }
    got.truncate(at);
    writer.join().unwrap();
    got
}

/// Echo round trips of 1 byte to 3 MiB, one after another and 4 at once; the outbound's
/// counters must equal the payload.
fn echoes_through(server: &Shardray, tag: &str, log: &dyn Fn() -> String) {
    let proxy = server.inbound("fwd");
    let sizes = [1usize, 100, 16_383, 16_385, 65_535, 65_537, 1 << 20, 3 << 20];
    let mut total = 0i64;
    for (i, &len) in sizes.iter().enumerate() {
        let data = payload(len, i as u64);
        let got = exchange(proxy, &data);
        assert!(got == data, "{len} bytes: got {} back\n{}\n{}", got.len(), log(), server.output());
        total += len as i64;
    }
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                let data = payload(50_000, 10 + t);
                assert!(exchange(proxy, &data) == data, "parallel connection {t}");
            });
        }
    });
    total += 4 * 50_000;
    let api = shardray_tests::api::ApiClient::connect(server.api.unwrap());
    let (up, down) = (format!("outbound>>>{tag}>>>traffic>>>uplink"), format!("outbound>>>{tag}>>>traffic>>>downlink"));
    assert!(
        wait_until(Duration::from_secs(5), || api.get(&up, false).ok() == Some(total)
            && api.get(&down, false).ok() == Some(total)),
        "outbound counters {:?} / {:?}, expected {total}",
        api.get(&up, false),
        api.get(&down, false)
    );
}

#[test]
fn through_sing_box_as_a_shadowsocks_server_for_every_method() {
    for method in [
        "aes-128-gcm",
        "aes-256-gcm",
        "chacha20-ietf-poly1305",
        "xchacha20-ietf-poly1305",
        "2022-blake3-aes-128-gcm",
        "2022-blake3-aes-256-gcm",
        "2022-blake3-chacha20-poly1305",
    ] {
        let password = if method.starts_with("2022") {
            psk(if method.contains("128") { 16 } else { 32 }, 3)
        } else {
            format!("secret for {method}")
        };
        let sb = SingBox::serve(json!({ "type": "shadowsocks", "method": method, "password": password }));
        let echo = EchoServer::start();
        let server = Shardray::start(&config(echo.addr(), ss_outbound(sb.socks, method, &password)), 2);
        echoes_through(&server, "ss-out", &|| format!("{method}\n{}", sb.log()));
    }
}

#[test]
fn through_a_sing_box_2022_multi_user_server() {
    for (method, len) in [("2022-blake3-aes-128-gcm", 16), ("2022-blake3-aes-256-gcm", 32)] {
        let (server_psk, user_psk) = (psk(len, 40), psk(len, 41));
        let sb = SingBox::serve(json!({
            "type": "shadowsocks", "method": method, "password": server_psk,
            "users": [{ "name": "other", "password": psk(len, 42) }, { "name": "me", "password": user_psk }]
        }));
        let echo = EchoServer::start();
        let outbound = ss_outbound(sb.socks, method, &format!("{server_psk}:{user_psk}"));
        let server = Shardray::start(&config(echo.addr(), outbound), 2);
        echoes_through(&server, "ss-out", &|| format!("{method}\n{}", sb.log()));
    }
}

#[test]
fn more_than_one_server_a_stream_cipher_or_a_bad_psk_is_refused_by_name() {
    let echo = EchoServer::start();
    let refused = |settings: Value| {
        let outbound = json!({ "tag": "ss-out", "protocol": "shadowsocks", "settings": settings });
        Shardray::try_start(&config(echo.addr(), outbound), 1).err().expect("refused")
    };
    let one = json!({ "address": "127.0.0.1", "port": 1, "method": "aes-128-gcm", "password": "p" });
    let err = refused(json!({ "servers": [one.clone(), one.clone()] }));
    assert!(err.contains("outbounds[0].settings.servers[1]"), "{err}");
    let cfb = json!({ "address": "127.0.0.1", "port": 1, "method": "aes-256-cfb", "password": "p" });
    let err = refused(json!({ "servers": [cfb] }));
    assert!(err.contains("outbounds[0].settings.servers[0].method") && err.contains("stream cipher"), "{err}");
    let short =
        json!({ "address": "127.0.0.1", "port": 1, "method": "2022-blake3-aes-256-gcm", "password": psk(16, 1) });
    let err = refused(json!({ "servers": [short] }));
    assert!(err.contains("outbounds[0].settings.servers[0].password") && err.contains("32 bytes"), "{err}");
}

#[test]
fn outbounds_added_through_the_api_carry_traffic() {
    use shardray_proto::xray::app::proxyman::command as handler;
    use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain};
    use shardray_proto::xray::common::protocol::{ServerEndpoint, User};
    use shardray_proto::xray::core::OutboundHandlerConfig;
    use shardray_proto::xray::proxy::{shadowsocks as ss_pb, shadowsocks_2022 as ss2022_pb};
    use shardray_tests::api::typed;

    let classic = SingBox::serve(json!({ "type": "shadowsocks", "method": "aes-256-gcm", "password": "api pw" }));
    let key = psk(32, 9);
    let modern = SingBox::serve(json!({ "type": "shadowsocks", "method": "2022-blake3-aes-256-gcm", "password": key }));
    let echo = EchoServer::start();
    let mut config = config(echo.addr(), json!({ "tag": "first", "protocol": "blackhole" }));
    config["outbounds"] = json!([{ "tag": "first", "protocol": "blackhole" }]);
    let server = Shardray::start(&config, 2);
    let api = shardray_tests::api::ApiClient::connect(server.api.unwrap());
    let mut client = handler::handler_service_client::HandlerServiceClient::new(api.channel());
    let loopback = || Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) });

    let account =
        ss_pb::Account { password: "api pw".into(), cipher_type: ss_pb::CipherType::Aes256Gcm as i32, iv_check: false };
    let endpoint = ServerEndpoint {
        address: loopback(),
        port: u32::from(classic.socks.port()),
        user: vec![User {
            level: 0,
            email: String::new(),
            account: Some(typed("xray.proxy.shadowsocks.Account", &account)),
        }],
    };
    let outbound = OutboundHandlerConfig {
        tag: "ss-classic".into(),
        proxy_settings: Some(typed(
            "xray.proxy.shadowsocks.ClientConfig",
            &ss_pb::ClientConfig { server: Some(endpoint) },
        )),
        ..Default::default()
    };
    api.block_on(client.add_outbound(handler::AddOutboundRequest { outbound: Some(outbound) })).unwrap();
    api.block_on(client.remove_outbound(handler::RemoveOutboundRequest { tag: "first".into() })).unwrap();
    echoes_through(&server, "ss-classic", &|| classic.log());

    let config_2022 = ss2022_pb::ClientConfig {
        address: loopback(),
        port: u32::from(modern.socks.port()),
        method: "2022-blake3-aes-256-gcm".into(),
        key: key.clone(),
        ..Default::default()
    };
    let outbound = OutboundHandlerConfig {
        tag: "ss-2022".into(),
        proxy_settings: Some(typed("xray.proxy.shadowsocks_2022.ClientConfig", &config_2022)),
        ..Default::default()
    };
    api.block_on(client.add_outbound(handler::AddOutboundRequest { outbound: Some(outbound) })).unwrap();
    api.block_on(client.remove_outbound(handler::RemoveOutboundRequest { tag: "ss-classic".into() })).unwrap();
    echoes_through(&server, "ss-2022", &|| modern.log());
}
