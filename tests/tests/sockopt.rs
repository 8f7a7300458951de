//! An inbound's `streamSettings.sockopt` reaches the sockets the server accepts: checked with
//! `ss` on a live session's server side (congestion control, SO_MARK, keep-alive timer).

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, vless_config, wait_until, Shardray, ALICE};

/// `ss`'s view of the established sockets whose local port is `port` (the server's side).
fn server_sockets(port: u16) -> String {
    let out = Command::new("ss")
        .args(["-tinoeH", "state", "established", "sport", &format!("= :{port}")])
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
        seen = server_sockets(proxy.port());
        seen.contains("bbr") && seen.contains("fwmark:0x2a") && seen.contains("timer:(keepalive,")
    });
    assert!(found, "the accepted socket lacks the options:\n{seen}");
}
