//! Starting and stopping: graceful drain on SIGTERM, and a failed start that leaves nothing.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::json;
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, vless_config, Shardray, ALICE};

#[test]
fn sigterm_stops_accepting_lets_live_sessions_finish_and_exits_zero() {
    let echo = EchoServer::start();
    let server = Shardray::start(&vless_config(json!([{ "id": ALICE, "email": "a@b" }]), json!({})), 2);
    let proxy = server.inbound("vless-in");

    let mut live = vless::connect(proxy).unwrap();
    let mut first = vless::request(ALICE, echo.addr());
    first.extend_from_slice(b"before");
    live.write_all(&first).unwrap();
    let mut back = [0u8; 8];
    live.read_exact(&mut back).unwrap();

    let finisher = std::thread::spawn(move || {
        // The session goes on after SIGTERM, well within the 3 s grace.
        std::thread::sleep(Duration::from_millis(500));
        live.write_all(b"after").unwrap();
        let mut more = [0u8; 5];
        live.read_exact(&mut more).unwrap();
        live.shutdown(std::net::Shutdown::Write).unwrap();
        more
    });
    std::thread::sleep(Duration::from_millis(100));
    let pid = server.pid();
    let waiter = std::thread::spawn(move || server.terminate(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(200));
    // New connections are no longer served.
    let refused = match vless::round_trip(proxy, ALICE, echo.addr(), b"new") {
        Err(_) => true,
        Ok(reply) => reply.is_empty(),
    };
    assert!(refused, "a new connection was served during drain (pid {pid})");
    assert_eq!(&finisher.join().unwrap(), b"after");
    let status = waiter.join().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn sigterm_with_the_api_running_exits_zero_promptly() {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "a@b" }]), json!({}));
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = shardray_tests::api::ApiClient::connect(server.api.unwrap());
    assert!(!api.query("", false).is_empty());
    let status = server.terminate(Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn a_taken_port_fails_the_start_and_leaves_nothing_listening() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let free_port = free.local_addr().unwrap().port();
    drop(free);
    let mut config = vless_config(json!([{ "id": ALICE }]), json!({ "port": free_port }));
    // The API's inbound comes first in the file: the failing inbound is still named by its
    // place there, as `shardray test` names it, and by its tag.
    config["api"] = json!({ "tag": "api", "services": ["StatsService"] });
    let api_inbound = json!({
        "tag": "api", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
        "settings": { "address": "127.0.0.1" }
    });
    config["inbounds"].as_array_mut().unwrap().insert(0, api_inbound);
    let second = json!({
        "tag": "second", "listen": "127.0.0.1", "port": taken.local_addr().unwrap().port(),
        "protocol": "vless", "settings": { "clients": [], "decryption": "none" }
    });
    config["inbounds"].as_array_mut().unwrap().push(second);
    let out = Shardray::try_start(&config, 2).err().expect("start must fail");
    let port = taken.local_addr().unwrap().port();
    assert!(out.contains(&format!("inbounds[2] \"second\": cannot listen on 127.0.0.1:{port}: ")), "{out}");
    // The first inbound's port was released: nothing half-started.
    TcpListener::bind(("127.0.0.1", free_port)).expect("port still held after a failed start");
}

#[test]
fn an_invalid_config_never_starts() {
    let config = vless_config(json!([{ "id": "not-a-uuid-because-it-is-far-too-long-to-map" }]), json!({}));
    let out = Shardray::try_start(&config, 1).err().expect("start must fail");
    assert!(out.contains("inbounds[0].settings.clients[0].id"), "{out}");
    assert!(!out.contains("started"), "{out}");
}
