//! shardray's Trojan outbound against sing-box 1.14.4 as the Trojan server, over TLS and plain:
//! a dokodemo-door inbound sends every connection to an echo server through it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::servers::EchoServer;
use shardray_tests::singbox::SingBox;
use shardray_tests::tls::SelfSigned;
use shardray_tests::vless::payload;
use shardray_tests::{loopback_api, wait_until, Shardray};

const PASSWORD: &str = "the trojan server's password";

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

fn trojan_outbound(server: SocketAddr, stream: Value) -> Value {
    json!({
        "tag": "trojan-out", "protocol": "trojan",
        "settings": { "servers": [{ "address": server.ip().to_string(), "port": server.port(), "password": PASSWORD }] },
        "streamSettings": stream
    })
}

fn exchange(proxy: SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut write_half = stream.try_clone().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        // A blackholed connection may be closed before the write or the half-close: what came
        // back is what the caller checks.
        let _ = write_half.write_all(&data);
        let _ = write_half.shutdown(Shutdown::Write);
    });
    let mut got = Vec::new();
    let _ = (&stream).read_to_end(&mut got);
    writer.join().unwrap();
    got
}

/// Echo round trips of 1 byte to 3 MiB, one after another and 8 at once; the outbound's
/// counters must equal the payload.
fn echoes_through(server: &Shardray, log: &dyn Fn() -> String) {
    let proxy = server.inbound("fwd");
    let sizes = [1usize, 100, 16_385, 65_536, 1 << 20, 3 << 20];
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
    let up = "outbound>>>trojan-out>>>traffic>>>uplink";
    let down = "outbound>>>trojan-out>>>traffic>>>downlink";
    assert!(
        wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(total)
            && api.get(down, false).ok() == Some(total)),
        "outbound counters {:?} / {:?}, expected {total}",
        api.get(up, false),
        api.get(down, false)
    );
}

#[test]
fn through_sing_box_as_a_trojan_server_over_tls() {
    let echo = EchoServer::start();
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["trojan.example"]);
    let sb = SingBox::serve(json!({
        "type": "trojan", "tag": "trojan-in",
        "users": [{ "name": "u", "password": PASSWORD }],
        "tls": { "enabled": true, "server_name": "trojan.example",
                 "certificate_path": cert.cert_file.to_str().unwrap(), "key_path": cert.key_file.to_str().unwrap() }
    }));
    let stream = json!({ "security": "tls", "tlsSettings": {
        "serverName": "trojan.example", "allowInsecure": true, "alpn": ["http/1.1"], "fingerprint": "chrome" } });
    let server = Shardray::start(&config(echo.addr(), trojan_outbound(sb.socks, stream)), 2);
    assert!(server.output().contains("fingerprint: \"chrome\" is ignored"), "{}", server.output());
    echoes_through(&server, &|| sb.log());
}

#[test]
fn through_sing_box_as_a_plain_trojan_server() {
    let echo = EchoServer::start();
    let sb = SingBox::serve(
        json!({ "type": "trojan", "tag": "trojan-in", "users": [{ "name": "u", "password": PASSWORD }] }),
    );
    let server = Shardray::start(&config(echo.addr(), trojan_outbound(sb.socks, json!({ "network": "tcp" }))), 2);
    echoes_through(&server, &|| sb.log());
}

#[test]
fn a_certificate_the_system_does_not_trust_is_refused() {
    let echo = EchoServer::start();
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["trojan.example"]);
    let sb = SingBox::serve(json!({
        "type": "trojan", "tag": "trojan-in",
        "users": [{ "name": "u", "password": PASSWORD }],
        "tls": { "enabled": true, "server_name": "trojan.example",
                 "certificate_path": cert.cert_file.to_str().unwrap(), "key_path": cert.key_file.to_str().unwrap() }
    }));
    let stream = json!({ "security": "tls", "tlsSettings": { "serverName": "trojan.example" } });
    let server = Shardray::start(&config(echo.addr(), trojan_outbound(sb.socks, stream)), 2);
    assert!(exchange(server.inbound("fwd"), b"hello").is_empty(), "an untrusted server was used");
}

#[test]
fn an_outbound_added_through_the_api_carries_traffic() {
    use shardray_proto::xray::app::proxyman::command as handler;
    use shardray_proto::xray::app::proxyman::SenderConfig;
    use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain};
    use shardray_proto::xray::common::protocol::ServerEndpoint;
    use shardray_proto::xray::core::OutboundHandlerConfig;
    use shardray_proto::xray::proxy::trojan as trojan_pb;
    use shardray_proto::xray::transport::internet::{tls, StreamConfig};
    use shardray_tests::api::{trojan_user, typed};

    let echo = EchoServer::start();
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["trojan.example"]);
    let sb = SingBox::serve(json!({
        "type": "trojan", "tag": "trojan-in",
        "users": [{ "name": "u", "password": PASSWORD }],
        "tls": { "enabled": true, "server_name": "trojan.example",
                 "certificate_path": cert.cert_file.to_str().unwrap(), "key_path": cert.key_file.to_str().unwrap() }
    }));
    // Only a blackhole at first; the API adds the Trojan outbound, then removes the blackhole,
    // which leaves the Trojan outbound as the default route.
    let mut config = config(echo.addr(), json!({ "tag": "first", "protocol": "blackhole" }));
    config["outbounds"] = json!([{ "tag": "first", "protocol": "blackhole" }]);
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = shardray_tests::api::ApiClient::connect(server.api.unwrap());
    assert!(exchange(server.inbound("fwd"), b"dropped").is_empty());

    const TLS: &str = "xray.transport.internet.tls.Config";
    let tls = tls::Config { server_name: "trojan.example".into(), allow_insecure: true, ..Default::default() };
    let stream = StreamConfig {
        protocol_name: "tcp".into(),
        security_type: TLS.into(),
        security_settings: vec![typed(TLS, &tls)],
        ..Default::default()
    };
    let endpoint = ServerEndpoint {
        address: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        port: u32::from(sb.socks.port()),
        user: vec![trojan_user("", PASSWORD, 0)],
    };
    let outbound = OutboundHandlerConfig {
        tag: "trojan-out".into(),
        sender_settings: Some(typed(
            "xray.app.proxyman.SenderConfig",
            &SenderConfig { stream_settings: Some(stream), ..Default::default() },
        )),
        proxy_settings: Some(typed(
            "xray.proxy.trojan.ClientConfig",
            &trojan_pb::ClientConfig { server: vec![endpoint] },
        )),
        ..Default::default()
    };
    let mut client = handler::handler_service_client::HandlerServiceClient::new(api.channel());
    api.block_on(client.add_outbound(handler::AddOutboundRequest { outbound: Some(outbound) })).unwrap();
    api.block_on(client.remove_outbound(handler::RemoveOutboundRequest { tag: "first".into() })).unwrap();
    echoes_through(&server, &|| sb.log());
}
