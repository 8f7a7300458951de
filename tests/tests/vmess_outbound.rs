//! shardray's VMess outbound against sing-box 1.14.4 as the VMess server, plain and over TLS,
//! for every security (and authenticated length): a dokodemo-door inbound sends every
//! connection to an echo server through it. Also added through AddOutbound.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::servers::EchoServer;
use shardray_tests::singbox::SingBox;
use shardray_tests::tls::SelfSigned;
use shardray_tests::vless::payload;
use shardray_tests::{loopback_api, wait_until, Shardray};

const ID: &str = "7c1f4a2e-9b3d-4e58-a6f0-2d8c5b91e347";

/// shardray with a dokodemo-door inbound to `echo` whose connections leave through `outbound`.
fn config(echo: SocketAddr, outbound: Value) -> Value {
    json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "api": loopback_api(&["StatsService"]),
        "inbounds": [{ "tag": "fwd", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
                       "settings": { "address": echo.ip().to_string(), "port": echo.port(), "network": "tcp" } }],
        "outbounds": [outbound, { "tag": "direct", "protocol": "freedom" }],
        "policy": { "system": { "statsOutboundUplink": true, "statsOutboundDownlink": true } }
    })
}

/// Xray's VMess outbound JSON: `vnext` with one server and one user.
fn vmess_outbound(server: SocketAddr, security: &str, experiments: &str, stream: Value) -> Value {
    json!({
        "tag": "vmess-out", "protocol": "vmess",
        "settings": { "vnext": [{ "address": server.ip().to_string(), "port": server.port(),
                                  "users": [{ "id": ID, "security": security, "experiments": experiments }] }] },
        "streamSettings": stream
    })
}

fn sing_box_server(tls: Option<&SelfSigned>) -> SingBox {
    let mut inbound =
        json!({ "type": "vmess", "tag": "vmess-in", "users": [{ "name": "u", "uuid": ID, "alterId": 0 }] });
    if let Some(cert) = tls {
        inbound["tls"] = json!({ "enabled": true, "server_name": "vmess.example",
            "certificate_path": cert.cert_file.to_str().unwrap(), "key_path": cert.key_file.to_str().unwrap() });
    }
    SingBox::serve(inbound)
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

/// Echo round trips of 1 byte to 3 MiB, one after another and 8 at once; the outbound's
/// counters must equal the payload.
fn echoes_through(server: &Shardray, log: &dyn Fn() -> String) {
    let proxy = server.inbound("fwd");
    let sizes = [1usize, 100, 8_192, 16_385, 65_536, 1 << 20, 3 << 20];
    let mut total = 0i64;
    for (i, &len) in sizes.iter().enumerate() {
        let data = payload(len, i as u64);
        let got = exchange(proxy, &data);
        assert!(got == data, "{len} bytes: got {} back\n{}\n{}", got.len(), log(), server.output());
        total += len as i64;
    }
    std::thread::scope(|s| {
        for t in 0..8u64 {
            s.spawn(move || {
                let data = payload(50_000, 10 + t);
                assert!(exchange(proxy, &data) == data, "parallel connection {t}");
            });
        }
    });
    total += 8 * 50_000;
    let api = shardray_tests::api::ApiClient::connect(server.api.unwrap());
    let up = "outbound>>>vmess-out>>>traffic>>>uplink";
    let down = "outbound>>>vmess-out>>>traffic>>>downlink";
    assert!(
        wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(total)
            && api.get(down, false).ok() == Some(total)),
        "outbound counters {:?} / {:?}, expected {total}",
        api.get(up, false),
        api.get(down, false)
    );
}

#[test]
fn through_sing_box_as_a_plain_vmess_server_for_every_security() {
    let sb = sing_box_server(None);
    for (security, experiments) in [
        ("aes-128-gcm", ""),
        ("chacha20-poly1305", "AuthenticatedLength"),
        ("none", ""),
        ("zero", ""),
        ("auto", "AuthenticatedLength"),
    ] {
        let echo = EchoServer::start();
        let outbound = vmess_outbound(sb.socks, security, experiments, json!({ "network": "tcp" }));
        let server = Shardray::start(&config(echo.addr(), outbound), 2);
        echoes_through(&server, &|| format!("{security} {experiments}\n{}", sb.log()));
    }
}

#[test]
fn through_sing_box_as_a_vmess_server_over_tls() {
    let echo = EchoServer::start();
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["vmess.example"]);
    let sb = sing_box_server(Some(&cert));
    let stream = json!({ "security": "tls", "tlsSettings": { "serverName": "vmess.example", "allowInsecure": true } });
    let server = Shardray::start(&config(echo.addr(), vmess_outbound(sb.socks, "aes-128-gcm", "", stream)), 2);
    echoes_through(&server, &|| sb.log());
}

#[test]
fn more_than_one_server_or_user_or_a_legacy_alter_id_is_refused_by_name() {
    let echo = EchoServer::start();
    let server = |settings: Value| {
        let outbound = json!({ "tag": "vmess-out", "protocol": "vmess", "settings": settings });
        Shardray::try_start(&config(echo.addr(), outbound), 1).err().expect("refused")
    };
    let one = json!({ "address": "127.0.0.1", "port": 1, "users": [{ "id": ID }] });
    let err = server(json!({ "vnext": [one.clone(), one.clone()] }));
    assert!(err.contains("outbounds[0].settings.vnext[1]"), "{err}");
    let two_users = json!({ "address": "127.0.0.1", "port": 1, "users": [{ "id": ID }, { "id": ID }] });
    let err = server(json!({ "vnext": [two_users] }));
    assert!(err.contains("outbounds[0].settings.vnext[0].users[1]"), "{err}");
    let legacy = json!({ "address": "127.0.0.1", "port": 1, "users": [{ "id": ID, "alterId": 64 }] });
    let err = server(json!({ "vnext": [legacy] }));
    assert!(err.contains("outbounds[0].settings.vnext[0].users[0].alterId"), "{err}");
}

#[test]
fn an_outbound_added_through_the_api_carries_traffic() {
    use shardray_proto::xray::app::proxyman::command as handler;
    use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain};
    use shardray_proto::xray::common::protocol::{SecurityConfig, SecurityType, ServerEndpoint, User};
    use shardray_proto::xray::core::OutboundHandlerConfig;
    use shardray_proto::xray::proxy::vmess as vmess_pb;
    use shardray_tests::api::typed;

    let echo = EchoServer::start();
    let sb = sing_box_server(None);
    let mut config = config(echo.addr(), json!({ "tag": "first", "protocol": "blackhole" }));
    config["outbounds"] = json!([{ "tag": "first", "protocol": "blackhole" }]);
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = shardray_tests::api::ApiClient::connect(server.api.unwrap());
    assert!(exchange(server.inbound("fwd"), b"dropped").is_empty());

    let account = vmess_pb::Account {
        id: ID.into(),
        security_settings: Some(SecurityConfig { r#type: SecurityType::Chacha20Poly1305 as i32 }),
        ..Default::default()
    };
    let endpoint = ServerEndpoint {
        address: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        port: u32::from(sb.socks.port()),
        user: vec![User { level: 0, email: String::new(), account: Some(typed("xray.proxy.vmess.Account", &account)) }],
    };
    let outbound = OutboundHandlerConfig {
        tag: "vmess-out".into(),
        proxy_settings: Some(typed(
            "xray.proxy.vmess.outbound.Config",
            &vmess_pb::outbound::Config { receiver: vec![endpoint] },
        )),
        ..Default::default()
    };
    let mut client = handler::handler_service_client::HandlerServiceClient::new(api.channel());
    api.block_on(client.add_outbound(handler::AddOutboundRequest { outbound: Some(outbound) })).unwrap();
    api.block_on(client.remove_outbound(handler::RemoveOutboundRequest { tag: "first".into() })).unwrap();
    echoes_through(&server, &|| sb.log());
}

/// UDP over VMess (its UDP command, one datagram per chunk): a dokodemo-door UDP inbound's
/// flows through the outbound to sing-box as the server, with exact counters.
#[test]
fn udp_through_sing_box_as_a_vmess_server_for_every_security() {
    use shardray_tests::udp::{echo_datagrams, Direct, UdpEcho};
    let sb = sing_box_server(None);
    for (security, experiments) in [("aes-128-gcm", ""), ("chacha20-poly1305", "AuthenticatedLength"), ("none", "")] {
        let udp_echo = UdpEcho::start();
        let outbound = vmess_outbound(sb.socks, security, experiments, json!({ "network": "tcp" }));
        let mut config = config(udp_echo.addr(), outbound);
        config["inbounds"][0]["settings"]["network"] = json!("udp");
        let server = Shardray::start(&config, 2);
        let (door, echo) = (server.inbound("fwd"), udp_echo.addr());
        let log = || format!("{security}\n{}\n{}", sb.log(), server.output());
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3u64)
                .map(|c| {
                    let log = &log;
                    s.spawn(move || echo_datagrams(&Direct::to(door), echo, Some(door), 300, c, 8, log))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let api = shardray_tests::api::ApiClient::connect(server.api.unwrap());
        let (up, down) = ("outbound>>>vmess-out>>>traffic>>>uplink", "outbound>>>vmess-out>>>traffic>>>downlink");
        let t = total as i64;
        assert!(
            wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(t)
                && api.get(down, false).ok() == Some(t)),
            "{security}: outbound counters {:?} / {:?}, expected {t}",
            api.get(up, false),
            api.get(down, false)
        );
    }
}
