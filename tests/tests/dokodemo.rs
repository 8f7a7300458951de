//! dokodemo-door: every connection goes to the configured destination, counted per inbound.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless_config, wait_until, Shardray, ALICE};

#[test]
fn forwards_every_connection_to_its_destination_and_counts_it() {
    let echo = EchoServer::start();
    let mut config = vless_config(json!([{ "id": ALICE }]), json!({}));
    config["inbounds"].as_array_mut().unwrap().push(json!({
        "tag": "door", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
        "settings": { "address": "127.0.0.1", "port": echo.addr().port(), "network": "tcp" }
    }));
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    let server = Shardray::start(&config, 2);
    let door = server.inbound("door");
    let mut total = 0;
    for i in 0..10 {
        let mut s = TcpStream::connect(door).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let data = shardray_tests::vless::payload(1000 * (i + 1), i as u64);
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert!(back == data, "connection {i}");
        total += data.len() as i64;
    }
    let api = ApiClient::connect(server.api.unwrap());
    assert!(wait_until(Duration::from_secs(5), || {
        let stats = api.query("inbound>>>door", false);
        stats.get("inbound>>>door>>>traffic>>>uplink") == Some(&total)
            && stats.get("inbound>>>door>>>traffic>>>downlink") == Some(&total)
    }));
}

#[test]
fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let mut config = vless_config(json!([{ "id": ALICE }]), json!({}));
    config["policy"]["levels"]["0"]["handshake"] = json!(1);
    let server = Shardray::start(&config, 1);
    let mut s = TcpStream::connect(server.inbound("vless-in")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Half a header, then nothing.
    s.write_all(&[0, 1, 2, 3]).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 8];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(5), "dropped after {waited:?}");
}
