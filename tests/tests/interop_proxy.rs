//! Interop for SOCKS and HTTP with sing-box 1.14.4 both ways: sing-box as the client (its
//! socks inbound, then its socks or http outbound with credentials, plain and TLS, into our
//! inbounds, with exact per-account counters), and sing-box as the server our socks and http
//! outbounds dial (with users, plain and TLS). SOCKS over TLS, which sing-box does not speak,
//! goes between our own outbound and inbound, and our own client over rustls.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::proxy::{http_config, socks5_over, socks_config};
use shardray_tests::servers::EchoServer;
use shardray_tests::singbox::{insecure_tls, SingBox};
use shardray_tests::tls::{duplex_exchange, SelfSigned};
use shardray_tests::vless::payload;
use shardray_tests::{loopback_api, wait_until, Shardray};
use shardray_wire::addr::Destination;

const USER: &str = "carol";
const PASS: &str = "carol's proxy password";

/// Sends `data` through `stream` (writing on a second thread), half-closes, and returns what
/// came back until the end of stream.
fn exchange(stream: TcpStream, data: &[u8]) -> Vec<u8> {
    let mut write_half = stream.try_clone().unwrap();
    let data = data.to_vec();
    // The far side may close first (a refused stream); what came back is what is checked.
    let writer = std::thread::spawn(move || {
        let _ = write_half.write_all(&data);
        let _ = write_half.shutdown(Shutdown::Write);
    });
    let mut got = Vec::new();
    let _ = (&stream).read_to_end(&mut got);
    writer.join().unwrap();
    got
}

/// Echo round trips of 1 byte to 3 MiB through `connect`'s streams, one after another and 8 at
/// once; returns the bytes sent each way.
fn echoes(connect: &(dyn Fn() -> TcpStream + Sync), log: &dyn Fn() -> String) -> i64 {
    let mut total = 0i64;
    for (i, len) in [1usize, 100, 16_385, 65_536, 1 << 20, 3 << 20].into_iter().enumerate() {
        let data = payload(len, i as u64);
        let got = exchange(connect(), &data);
        assert!(got == data, "{len} bytes: got {} back\n{}", got.len(), log());
        total += len as i64;
    }
    std::thread::scope(|s| {
        for t in 0..8u64 {
            s.spawn(move || {
                let data = payload(50_000, 10 + t);
                assert!(exchange(connect(), &data) == data, "parallel connection {t}");
            });
        }
    });
    total + 8 * 50_000
}

/// An inbound (`socks-in` or `http-in`) with carol's account, TLS when `cert` is given.
fn server(protocol: &str, cert: Option<&SelfSigned>) -> Shardray {
    let accounts = json!([{ "user": USER, "pass": PASS, "email": "carol@example.com" }]);
    let extra = cert.map_or(json!({}), |c| json!({ "streamSettings": c.stream_settings("localhost", &["http/1.1"]) }));
    let mut config = if protocol == "socks" {
        socks_config(json!({ "auth": "password", "accounts": accounts }), extra)
    } else {
        http_config(json!({ "accounts": accounts }), extra)
    };
    config["api"] = loopback_api(&["StatsService"]);
    Shardray::start(&config, 2)
}

fn assert_counted(server: &Shardray, tag: &str, total: i64) {
    let api = ApiClient::connect(server.api.unwrap());
    let settled = wait_until(Duration::from_secs(5), || {
        let all = api.query("user>>>carol@example.com>>>traffic", false);
        all.get("user>>>carol@example.com>>>traffic>>>uplink") == Some(&total)
            && all.get("user>>>carol@example.com>>>traffic>>>downlink") == Some(&total)
    });
    assert!(settled, "carol: {:?}, expected {total}", api.query("user>>>", false));
    assert_eq!(api.get(&format!("inbound>>>{tag}>>>traffic>>>downlink"), false).unwrap(), total);
}

#[test]
fn sing_box_socks5_client_with_a_password() {
    let echo = EchoServer::start();
    let server = server("socks", None);
    let proxy = server.inbound("socks-in");
    let sb = SingBox::start(json!({
        "type": "socks", "tag": "out", "server": "127.0.0.1", "server_port": proxy.port(),
        "version": "5", "username": USER, "password": PASS
    }));
    let total = echoes(&|| sb.connect(echo.addr()).unwrap(), &|| format!("{}\n{}", sb.log(), server.output()));
    assert_counted(&server, "socks-in", total);
}

#[test]
fn sing_box_http_client_plain_and_tls() {
    let echo = EchoServer::start();
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    for tls in [false, true] {
        let server = server("http", tls.then_some(&cert));
        let proxy = server.inbound("http-in");
        let mut outbound = json!({
            "type": "http", "tag": "out", "server": "127.0.0.1", "server_port": proxy.port(),
            "username": USER, "password": PASS
        });
        if tls {
            outbound["tls"] = insecure_tls("localhost");
        }
        let sb = SingBox::start(outbound);
        let total = echoes(&|| sb.connect(echo.addr()).unwrap(), &|| format!("{}\n{}", sb.log(), server.output()));
        assert_counted(&server, "http-in", total);
    }
}

#[test]
fn our_socks5_client_over_tls() {
    let echo = EchoServer::start();
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let server = server("socks", Some(&cert));
    let client = cert.client_config(&["http/1.1"]);
    let mut total = 0;
    for (i, len) in [1usize, 16_385, 1 << 20].into_iter().enumerate() {
        let mut s = shardray_tests::tls::connect(server.inbound("socks-in"), client.clone(), "localhost").unwrap();
        socks5_over(&mut s, Some((USER, PASS)), Destination::from(echo.addr())).unwrap();
        let data = payload(len, i as u64);
        assert!(duplex_exchange(s, data.clone()).unwrap() == data, "{len} bytes");
        total += len as i64;
    }
    assert_counted(&server, "socks-in", total);
}

/// shardray with a dokodemo-door inbound to `echo` whose connections leave through `outbound`.
fn forwarder(echo: SocketAddr, outbound: Value) -> Shardray {
    let config = json!({
        "log": { "loglevel": "warning" },
        "stats": {},
        "api": loopback_api(&["StatsService"]),
        "inbounds": [{ "tag": "fwd", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
                       "settings": { "address": echo.ip().to_string(), "port": echo.port(), "network": "tcp" } }],
        "outbounds": [outbound, { "tag": "direct", "protocol": "freedom" }],
        "policy": { "system": { "statsOutboundUplink": true, "statsOutboundDownlink": true } }
    });
    Shardray::start(&config, 2)
}

fn proxy_outbound(protocol: &str, server: SocketAddr, stream: Value) -> Value {
    json!({
        "tag": "proxy-out", "protocol": protocol,
        "settings": { "servers": [{ "address": "127.0.0.1", "port": server.port(),
                                    "users": [{ "user": USER, "pass": PASS }] }] },
        "streamSettings": stream
    })
}

fn echoes_through_outbound(server: &Shardray, log: &dyn Fn() -> String) {
    let proxy = server.inbound("fwd");
    let total = echoes(&|| TcpStream::connect(proxy).unwrap(), &|| format!("{}\n{}", log(), server.output()));
    let api = ApiClient::connect(server.api.unwrap());
    let (up, down) = ("outbound>>>proxy-out>>>traffic>>>uplink", "outbound>>>proxy-out>>>traffic>>>downlink");
    assert!(
        wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(total)
            && api.get(down, false).ok() == Some(total)),
        "outbound counters {:?} / {:?}, expected {total}",
        api.get(up, false),
        api.get(down, false)
    );
}

#[test]
fn our_socks_outbound_through_sing_box_with_a_user() {
    let echo = EchoServer::start();
    let sb = SingBox::serve(json!({ "type": "socks", "tag": "in", "users": [{ "username": USER, "password": PASS }] }));
    let server = forwarder(echo.addr(), proxy_outbound("socks", sb.socks, json!({})));
    echoes_through_outbound(&server, &|| sb.log());
    // A wrong password reaches nothing.
    let mut wrong = proxy_outbound("socks", sb.socks, json!({}));
    wrong["settings"]["servers"][0]["users"][0]["pass"] = json!("wrong");
    let refused = forwarder(echo.addr(), wrong);
    assert!(exchange(TcpStream::connect(refused.inbound("fwd")).unwrap(), b"hello").is_empty());
}

#[test]
fn our_http_outbound_through_sing_box_plain_and_tls() {
    let echo = EchoServer::start();
    let sb = SingBox::serve(json!({ "type": "http", "tag": "in", "users": [{ "username": USER, "password": PASS }] }));
    let server = forwarder(echo.addr(), proxy_outbound("http", sb.socks, json!({})));
    echoes_through_outbound(&server, &|| sb.log());

    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["proxy.example"]);
    let sb = SingBox::serve(json!({
        "type": "http", "tag": "in", "users": [{ "username": USER, "password": PASS }],
        "tls": { "enabled": true, "server_name": "proxy.example",
                 "certificate_path": cert.cert_file.to_str().unwrap(), "key_path": cert.key_file.to_str().unwrap() }
    }));
    let stream = json!({ "security": "tls", "tlsSettings": { "serverName": "proxy.example", "allowInsecure": true } });
    let server = forwarder(echo.addr(), proxy_outbound("http", sb.socks, stream));
    echoes_through_outbound(&server, &|| sb.log());
}

#[test]
fn our_socks_outbound_over_tls_into_our_socks_inbound() {
    let echo = EchoServer::start();
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let inbound = server("socks", Some(&cert));
    let stream = json!({ "security": "tls", "tlsSettings": { "serverName": "localhost", "allowInsecure": true } });
    let server = forwarder(echo.addr(), proxy_outbound("socks", inbound.inbound("socks-in"), stream));
    echoes_through_outbound(&server, &|| inbound.output());
}
