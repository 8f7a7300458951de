//! HTTP camouflage on raw TCP (`tcpSettings.header` type `http`): a VLESS inbound whose
//! connections open with an HTTP request head and whose answers open with a response head,
//! with V2Ray 4.45.2 as a real client and our own bytes for the refusals.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::v2ray::V2Ray;
use shardray_tests::{vless, vless_config, wait_until, Shardray, ALICE};

/// The header both sides use: the server accepts /video and /live only.
fn header() -> Value {
    json!({ "type": "http",
        "request": { "path": ["/video", "/live"], "headers": { "Host": ["cdn.example.com"] } },
        "response": { "status": "200", "reason": "OK", "headers": { "Content-Type": ["video/mp4"] } } })
}

fn server() -> Shardray {
    let mut config = vless_config(
        json!([{ "id": ALICE, "email": "alice@example.com" }]),
        json!({ "streamSettings": { "network": "tcp", "tcpSettings": { "header": header() } } }),
    );
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    Shardray::start(&config, 2)
}

fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn v2ray_reaches_the_echo_server_through_the_camouflage_with_exact_counters() {
    let echo = EchoServer::start();
    let server = server();
    let proxy = server.inbound("vless-in");
    let client = V2Ray::start(json!({
        "protocol": "vless",
        "settings": { "vnext": [{ "address": "127.0.0.1", "port": proxy.port(),
                                  "users": [{ "id": ALICE, "encryption": "none" }] }] },
        "streamSettings": { "network": "tcp", "tcpSettings": { "header": header() } }
    }));
    let mut sent = 0;
    for size in [1usize, 1000, 300_000] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        let mut s = client.connect(echo.addr()).expect("socks connect through v2ray");
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let back = read_to_end(&mut s);
        assert!(back == data, "{size} bytes: got {} back\n{}", back.len(), client.log());
        sent += size as i64;
    }
    let api = ApiClient::connect(server.api.unwrap());
    let counted = wait_until(Duration::from_secs(5), || {
        api.get("user>>>alice@example.com>>>traffic>>>uplink", false).ok() == Some(sent)
            && api.get("user>>>alice@example.com>>>traffic>>>downlink", false).ok() == Some(sent)
    });
    assert!(counted, "{:?}", api.query("alice", false));
}

#[test]
fn the_server_answers_with_its_response_head_then_the_protocol() {
    let echo = EchoServer::start();
    let server = server();
    let mut s = vless::connect(server.inbound("vless-in")).unwrap();
    let mut first = b"GET /live?t=1 HTTP/1.1\r\nHost: cdn.example.com\r\n\r\n".to_vec();
    first.extend(vless::request(ALICE, echo.addr()));
    first.extend_from_slice(b"ping");
    s.write_all(&first).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let back = read_to_end(&mut s);
    let text = String::from_utf8_lossy(&back);
    let head_end = text.find("\r\n\r\n").expect("a response head") + 4;
    let head = &text[..head_end];
    assert!(head.starts_with("HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nDate: "), "{head}");
    assert_eq!(&back[head_end..], b"\0\0ping");
}

#[test]
fn a_wrong_path_gets_404_and_garbage_400_as_from_a_web_server() {
    let target = shardray_tests::servers::RecordingServer::start(b"secret");
    let server = server();
    let proxy = server.inbound("vless-in");
    let answer = |bytes: &[u8]| {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.write_all(bytes).unwrap();
        String::from_utf8_lossy(&read_to_end(&mut s)).into_owned()
    };
    let mut wrong = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    wrong.extend(vless::request(ALICE, target.addr()));
    let got = answer(&wrong);
    assert!(got.starts_with("HTTP/1.1 404 Not Found\r\nConnection: close\r\n"), "{got:?}");
    let got = answer(b"\x16\x03\x01\x00\x05hello");
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got:?}");
    let mut long = b"GET /video HTTP/1.1\r\nX: ".to_vec();
    long.resize(9000, b'a');
    let got = answer(&long);
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got:?}");
    assert_eq!(target.next(Duration::from_millis(300)), None, "a refused request reached its destination");
    let api = ApiClient::connect(server.api.unwrap());
    assert!(wait_until(Duration::from_secs(5), || api.get("refused>>>bad_request", false).ok() == Some(3)));
}
