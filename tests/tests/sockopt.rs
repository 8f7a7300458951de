//! An inbound's `streamSettings.sockopt` reaches the sockets the server accepts: checked with
//! `ss` on a live session's server side (congestion control, SO_MARK, keep-alive timer).

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, vless_config, wait_until, Shardray, ALICE};

/// `ss`'s view of the established sockets whose `end` (`sport`: local, the server's side;
/// `dport`: remote, a dialer's side) is port `port`.
fn sockets(end: &str, port: u16) -> String {
    let out = Command::new("ss")
        .args(["-tinoeH", "state", "established", end, &format!("= :{port}")])
        .output()
        .expect("ss (iproute2) must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn accepted_sessions_carry_the_inbounds_socket_options() {
    let echo = EchoServer::start();
    let sockopt = json!({ "tcpCongestion": "bbr", "mark": 42, "tcpKeepAliveIdle": 300, "tcpFastOpen": true });
    let config = vless_config(
        json!([{ "id": ALICE, "email": "alice@example.com" }]),
        json!({
            "streamSettings": { "sockopt": sockopt }
        }),
    );
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("vless-in");

    let mut session = vless::connect(proxy).unwrap();
    let mut first = vless::request(ALICE, echo.addr());
    first.extend_from_slice(b"ping");
    session.write_all(&first).unwrap();
    let mut back = [0u8; 6];
    session.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"\0\0ping");

    let mut seen = String::new();
    let found = wait_until(Duration::from_secs(5), || {
        seen = sockets("sport", proxy.port());
        seen.contains("bbr") && seen.contains("fwmark:0x2a") && seen.contains("timer:(keepalive,")
    });
    assert!(found, "the accepted socket lacks the options:\n{seen}");
}

/// A TCP server that answers each connection with the address it came from, then echoes.
fn peer_reporter() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let peer = conn.peer_addr().unwrap().ip().to_string();
                let _ = conn.write_all(format!("{peer}\n").as_bytes());
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn an_outbound_dials_from_send_through_with_its_sockopt_tcp_and_udp() {
    let reporter = peer_reporter();
    let udp_echo = shardray_tests::udp::UdpEcho::start();
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["outbounds"][0] = json!({
        "tag": "direct", "protocol": "freedom", "sendThrough": "127.0.0.2",
        "streamSettings": { "sockopt": { "mark": 42, "tcpCongestion": "bbr", "tcpKeepAliveIdle": 300 } }
    });
    config["inbounds"].as_array_mut().unwrap().push(json!({
        "tag": "udp-door", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
        "settings": { "address": "127.0.0.1", "port": udp_echo.addr().port(), "network": "udp" }
    }));
    let server = Shardray::start(&config, 2);

    // TCP: the destination sees 127.0.0.2, and the socket carries the options.
    let mut session = vless::connect(server.inbound("vless-in")).unwrap();
    session.write_all(&vless::request(ALICE, reporter)).unwrap();
    let mut seen = [0u8; 2 + 10];
    session.read_exact(&mut seen).unwrap();
    assert_eq!(&seen[2..], b"127.0.0.2\n", "the destination saw another source address");
    let mut out = String::new();
    let found = wait_until(Duration::from_secs(5), || {
        out = sockets("dport", reporter.port());
        out.contains("127.0.0.2:")
            && out.contains("bbr")
            && out.contains("fwmark:0x2a")
            && out.contains("timer:(keepalive,")
    });
    assert!(found, "the dialed socket lacks the options:\n{out}");

    // UDP: the datagrams leave from 127.0.0.2 too.
    let door = server.inbound("udp-door");
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.send_to(b"who am i", door).unwrap();
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"who am i");
    let sources = udp_echo.sources.lock().unwrap().clone();
    assert!(!sources.is_empty() && sources.iter().all(|p| p.ip().to_string() == "127.0.0.2"), "{sources:?}");
}

#[test]
fn an_inbounds_option_on_an_outbound_is_refused_by_name() {
    let mut config = vless_config(json!([{ "id": ALICE }]), json!({}));
    config["outbounds"][0]["streamSettings"] = json!({ "sockopt": { "acceptProxyProtocol": true } });
    let err = Shardray::try_start(&config, 1).err().expect("refused");
    assert!(err.contains("outbounds[0].streamSettings.sockopt.acceptProxyProtocol"), "{err}");
}

#[test]
fn a_proxy_outbound_dials_its_server_from_send_through_with_its_sockopt() {
    use shardray_tests::singbox::SingBox;
    let echo = EchoServer::start();
    let sb = SingBox::serve(json!({ "type": "vless", "tag": "vless-in", "users": [{ "name": "u", "uuid": ALICE }] }));
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["outbounds"][0] = json!({
        "tag": "via-vless", "protocol": "vless", "sendThrough": "127.0.0.3",
        "settings": { "vnext": [{ "address": "127.0.0.1", "port": sb.socks.port(), "users": [{ "id": ALICE }] }] },
        "streamSettings": { "sockopt": { "mark": 7, "tcpKeepAliveIdle": 120 } }
    });
    config["routing"]["rules"] = json!([]);
    let server = Shardray::start(&config, 2);
    let mut session = vless::open_session(server.inbound("vless-in"), ALICE, echo.addr());
    let mut out = String::new();
    let found = wait_until(Duration::from_secs(5), || {
        out = sockets("dport", sb.socks.port());
        out.contains("127.0.0.3:") && out.contains("fwmark:0x7") && out.contains("timer:(keepalive,")
    });
    assert!(found, "the socket to the server lacks the options:\n{out}\n{}", sb.log());
    session.write_all(b"x").unwrap();
}
