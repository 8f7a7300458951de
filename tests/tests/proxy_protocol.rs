//! `acceptProxyProtocol` on an inbound, through the real binary with two shards: the client a
//! PROXY header (v1 or v2) names is who the access log and the online IP list see, the header
//! precedes TLS, a header split across segments still reads, and a connection without one
//! gets nothing back and reaches nowhere.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::json;
use shardray_proto::xray::app::stats::command as pb;
use shardray_tests::api::ApiClient;
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::{tls, vless, vless_config, wait_until, Shardray, ALICE};
use shardray_wire::proxy_protocol;

const ALICE_ONLINE: &str = "user>>>alice@example.com>>>online";

fn config(dir: &std::path::Path, stream: serde_json::Value) -> serde_json::Value {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["inbounds"][0]["streamSettings"] = stream;
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    config["log"] = json!({ "loglevel": "info", "access": dir.join("access.log") });
    config
}

fn online_ips(api: &ApiClient) -> Vec<String> {
    let mut c = pb::stats_service_client::StatsServiceClient::new(api.channel());
    let request = pb::GetStatsRequest { name: ALICE_ONLINE.into(), reset: false };
    match api.block_on(c.get_stats_online_ip_list(request)) {
        Ok(r) => r.into_inner().ips.into_keys().collect(),
        Err(_) => Vec::new(),
    }
}

fn v1(client: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 {port} 443\r\n").into_bytes()
}

fn v2(client: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    proxy_protocol::encode(2, client, "127.0.0.1:443".parse().unwrap(), &mut out);
    out
}

/// Sends `opening` in the given pieces (a pause between them), then reads the echo of "ping".
fn vless_after(proxy: SocketAddr, echo: SocketAddr, pieces: &[&[u8]]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(proxy)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(60));
        }
        s.write_all(piece)?;
    }
    let mut request = vless::request(ALICE, echo);
    request.extend_from_slice(b"ping");
    s.write_all(&request)?;
    let mut back = [0u8; 6];
    s.read_exact(&mut back)?;
    Ok(back.to_vec())
}

#[test]
fn the_client_a_proxy_header_names_is_the_one_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Shardray::start(&config(dir.path(), json!({ "sockopt": { "acceptProxyProtocol": true } })), 2);
    let api = ApiClient::connect(server.api.unwrap());
    let echo = EchoServer::start();
    let proxy = server.inbound("vless-in");

    // v1, whole; v2, whole; v1 split inside its line, so the header arrives in two segments.
    let header_v1 = v1("203.0.113.7", 4444);
    let header_v2 = v2("198.51.100.9:5555".parse().unwrap());
    let split = v1("192.0.2.33", 6666);
    let (head, tail) = split.split_at(10);
    for pieces in [vec![&header_v1[..]], vec![&header_v2[..]], vec![head, tail]] {
        assert_eq!(vless_after(proxy, echo.addr(), &pieces).unwrap(), b"\0\0ping");
    }
    let access = dir.path().join("access.log");
    let read = || std::fs::read_to_string(&access).unwrap_or_default();
    let wanted = ["from 203.0.113.7:4444 ", "from 198.51.100.9:5555 ", "from 192.0.2.33:6666 "];
    assert!(
        wait_until(Duration::from_secs(5), || wanted.iter().all(|w| read().contains(w))),
        "access log:\n{}",
        read()
    );
    assert!(!read().contains("from 127.0.0.1:"), "the balancer's own address was logged:\n{}", read());

    // Live sessions from a named client: the online list holds the header's address.
    let mut live = TcpStream::connect(proxy).unwrap();
    live.write_all(&v1("203.0.113.8", 7777)).unwrap();
    let mut request = vless::request(ALICE, echo.addr());
    request.extend_from_slice(b"ping");
    live.write_all(&request).unwrap();
    let mut back = [0u8; 6];
    live.read_exact(&mut back).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || online_ips(&api).contains(&"203.0.113.8".to_string())),
        "online IPs: {:?}",
        online_ips(&api)
    );
    assert!(!online_ips(&api).contains(&"127.0.0.1".to_string()), "{:?}", online_ips(&api));
}

#[test]
fn a_connection_without_a_proxy_header_gets_nothing_and_reaches_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = Shardray::start(&config(dir.path(), json!({ "tcpSettings": { "acceptProxyProtocol": true } })), 2);
    let target = RecordingServer::start(b"");
    let proxy = server.inbound("vless-in");
    for opening in [vless::request(ALICE, target.addr()), b"PROXY TCP4 not-an-address\r\n".to_vec()] {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&opening).unwrap();
        // The shard may already have closed the connection (a reset) when this is written.
        if let Err(e) = s.write_all(b"ping") {
            assert!(matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe), "{e}");
        }
        // Closed with the request unread: a reset, or an end of stream; never a byte back.
        match vless::read_all(&mut s) {
            Ok(back) => assert_eq!(back, b"", "something was written back"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    assert_eq!(target.next(Duration::from_millis(500)), None, "a connection without a header was relayed");
    assert!(
        wait_until(Duration::from_secs(5), || server.output().contains("PROXY header refused")),
        "{}",
        server.output()
    );
}

#[test]
fn the_proxy_header_comes_before_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = tls::SelfSigned::generate(dir.path(), &["proxied.test"]);
    let mut stream = cert.stream_settings("proxied.test", &[]);
    stream["sockopt"] = json!({ "acceptProxyProtocol": true });
    let server = Shardray::start(&config(dir.path(), stream), 2);
    let echo = EchoServer::start();

    let mut sock = TcpStream::connect(server.inbound("vless-in")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.write_all(&v2("[2001:db8::5]:8443".parse().unwrap())).unwrap();
    let name = rustls::pki_types::ServerName::try_from("proxied.test").unwrap();
    let conn = rustls::ClientConnection::new(cert.client_config(&[]), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut request = vless::request(ALICE, echo.addr());
    request.extend_from_slice(b"ping");
    tls.write_all(&request).unwrap();
    let mut back = [0u8; 6];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"\0\0ping");
    let access = dir.path().join("access.log");
    let read = || std::fs::read_to_string(&access).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(5), || read().contains("from [2001:db8::5]:8443 ")), "{}", read());
}
