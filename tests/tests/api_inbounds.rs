//! AddInbound and RemoveInbound against the real binary with two shards: an inbound added at
//! run time serves on every core when the call returns, one removed stops listening and closes
//! its users' sessions, bad requests get precise codes, and `--state` keeps both across a
//! `kill -9`.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::json;
use shardray_proto::xray::app::proxyman::command as handler;
use shardray_proto::xray::app::proxyman::ReceiverConfig;
use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain, PortList, PortRange};
use shardray_proto::xray::core::InboundHandlerConfig;
use shardray_proto::xray::proxy::vless as vless_pb;
use shardray_tests::api::{typed, vless_user, ApiClient};
use shardray_tests::servers::EchoServer;
use shardray_tests::{api_server, fixed_port, run_cli, vless, vless_config, wait_until, Restartable, Shardray, ALICE};
use tonic::Code;

const BOB: &str = "5f2c86f0-63b1-4d7c-9a43-3f3b2d6c0a11";
const CAROL: &str = "0e5f9d0a-4e0b-4d4c-8f5e-6a1b2c3d4e5f";

/// An AddInbound request as a panel builds it: a VLESS inbound on 127.0.0.1:`port` with
/// `users` (email, id).
fn vless_inbound(tag: &str, port: u16, users: &[(&str, &str)]) -> InboundHandlerConfig {
    let receiver = ReceiverConfig {
        port_list: Some(PortList { range: vec![PortRange { from: port.into(), to: port.into() }] }),
        listen: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        ..Default::default()
    };
    let proxy = vless_pb::inbound::Config {
        clients: users.iter().map(|(email, id)| vless_user(email, id, 0)).collect(),
        decryption: "none".into(),
        ..Default::default()
    };
    InboundHandlerConfig {
        tag: tag.into(),
        receiver_settings: Some(typed("xray.app.proxyman.ReceiverConfig", &receiver)),
        proxy_settings: Some(typed("xray.proxy.vless.inbound.Config", &proxy)),
    }
}

fn add_inbound(api: &ApiClient, inbound: InboundHandlerConfig) -> Result<(), tonic::Status> {
    let mut client = api.handler();
    api.block_on(client.add_inbound(handler::AddInboundRequest { inbound: Some(inbound) })).map(|_| ())
}

fn remove_inbound(api: &ApiClient, tag: &str) -> Result<(), tonic::Status> {
    let mut client = api.handler();
    api.block_on(client.remove_inbound(handler::RemoveInboundRequest { tag: tag.into() })).map(|_| ())
}

fn inbound_tags(api: &ApiClient) -> Vec<String> {
    let mut client = api.handler();
    let reply = api.block_on(client.list_inbounds(handler::ListInboundsRequest { is_only_tags: true })).unwrap();
    reply.into_inner().inbounds.into_iter().map(|i| i.tag).collect()
}

#[test]
fn an_added_inbound_serves_on_every_core_when_the_call_returns() {
    let echo = EchoServer::start();
    let (_server, api) = api_server();
    let port = fixed_port();
    add_inbound(&api, vless_inbound("added", port, &[("bob@example.com", BOB)])).unwrap();
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    // No wait: every shard listens once the call has returned. Many connections spread over
    // both shards' sockets.
    let threads: Vec<_> = (0..40u64)
        .map(|i| {
            let dest = echo.addr();
            std::thread::spawn(move || {
                let data = vless::payload(1000, i);
                assert_eq!(vless::round_trip(proxy, BOB, dest, &data).expect("round trip"), data, "connection {i}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(inbound_tags(&api), ["vless-in", "added"]);
    // Its users are managed like a config inbound's, and counted.
    api.add_user("added", "carol@example.com", CAROL, 0).unwrap();
    assert_eq!(vless::round_trip(proxy, CAROL, echo.addr(), b"hi").unwrap(), b"hi");
    assert_eq!(api.user_emails("added").unwrap(), ["bob@example.com", "carol@example.com"]);
    let up = "inbound>>>added>>>traffic>>>uplink";
    assert!(
        wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(40_000 + 2)),
        "{:?}",
        api.get(up, false)
    );
    // The config inbound is untouched.
    assert_eq!(vless::round_trip(_server.inbound("vless-in"), ALICE, echo.addr(), b"a").unwrap(), b"a");
}

#[test]
fn a_removed_inbound_stops_listening_and_its_sessions_close() {
    let echo = EchoServer::start();
    // A port below the ephemeral range: once freed, no other test's port-0 bind can take it
    // before the check that nothing listens there any more.
    let mut config =
        vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({ "port": fixed_port() }));
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    let proxy = server.inbound("vless-in");
    let mut live = vless::open_session(proxy, ALICE, echo.addr());
    remove_inbound(&api, "vless-in").unwrap();
    assert!(vless::closed_within(&mut live, Duration::from_secs(2)), "the live session was not closed");
    // Every shard's listener is closed: nothing accepts on the port any more.
    let refused = TcpStream::connect_timeout(&proxy, Duration::from_secs(2));
    assert!(refused.is_err(), "the port still accepts connections");
    assert!(inbound_tags(&api).is_empty());
    // Its users' counters went with it; the tag is free again, and the port can be reused.
    assert_eq!(api.get("user>>>alice@example.com>>>traffic>>>uplink", false).unwrap_err().code(), Code::NotFound);
    add_inbound(&api, vless_inbound("vless-in", proxy.port(), &[("bob@example.com", BOB)])).unwrap();
    assert_eq!(vless::round_trip(proxy, BOB, echo.addr(), b"again").unwrap(), b"again");
}

#[test]
fn bad_requests_get_precise_codes_and_change_nothing() {
    let (server, api) = api_server();
    let port = fixed_port();
    let status = add_inbound(&api, vless_inbound("vless-in", port, &[])).unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::AlreadyExists, "existing tag found: vless-in"));

    let taken = server.inbound("vless-in").port();
    let status = add_inbound(&api, vless_inbound("other", taken, &[])).unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("cannot listen on 127.0.0.1:"), "{status:?}");

    let mut wireguard = vless_inbound("wg", port, &[]);
    wireguard.proxy_settings.as_mut().unwrap().r#type = "xray.proxy.wireguard.DeviceConfig".into();
    let status = add_inbound(&api, wireguard).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("inbound.protocol") && status.message().contains("wireguard"), "{status:?}");

    let status = add_inbound(&api, vless_inbound("", port, &[])).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("inbound.tag"), "{status:?}");

    let nameless = vless_inbound("x", port, &[("", BOB)]);
    let status = add_inbound(&api, nameless).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("clients[0]"), "{status:?}");

    let status = remove_inbound(&api, "nope").unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::NotFound, "handler not found: nope"));
    let status = api.add_user("nope", "bob@example.com", BOB, 0).unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    assert_eq!(inbound_tags(&api), ["vless-in"]);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "a refused inbound left a listener behind");
}

#[test]
fn inbounds_added_and_removed_survive_kill_9_with_their_users() {
    let echo = EchoServer::start();
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService"]);
    let restartable = Restartable::new(&config);
    let start = || restartable.start(&[]);

    let (server, api) = start();
    let port = fixed_port();
    add_inbound(&api, vless_inbound("added", port, &[("bob@example.com", BOB)])).unwrap();
    api.add_user("added", "carol@example.com", CAROL, 0).unwrap();
    remove_inbound(&api, "vless-in").unwrap();
    server.kill9();

    // Twice: the first start compacts the journal, the second reads the compacted form.
    for _ in 0..2 {
        let (server, api) = start();
        assert_eq!(inbound_tags(&api), ["added"]);
        assert_eq!(server.inbound("added").port(), port);
        assert_eq!(api.user_emails("added").unwrap(), ["bob@example.com", "carol@example.com"]);
        let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
        assert_eq!(vless::round_trip(proxy, CAROL, echo.addr(), b"back").unwrap(), b"back");
        server.kill9();
    }
}

#[test]
fn the_cli_adds_inbounds_from_a_config_file_and_removes_them() {
    let echo = EchoServer::start();
    let (server, api) = api_server();
    let port = fixed_port();
    let file = server.dir.path().join("more.json");
    let more = json!({ "inbounds": [{
        "tag": "from-file", "listen": "127.0.0.1", "port": port, "protocol": "vless",
        "settings": { "decryption": "none", "clients": [{ "id": BOB, "email": "bob@example.com" }] }
    }]});
    std::fs::write(&file, serde_json::to_vec(&more).unwrap()).unwrap();
    let api_addr = format!("--server={}", server.api.unwrap());

    let (status, out) = run_cli(&["api", "adi", &api_addr, file.to_str().unwrap()]);
    assert!(status.success(), "{out}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), json!({ "added": ["from-file"] }));
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(vless::round_trip(proxy, BOB, echo.addr(), b"cli").unwrap(), b"cli");

    // A second time: the server refuses, and the exit status says so.
    let (status, out) = run_cli(&["api", "adi", &api_addr, file.to_str().unwrap()]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("existing tag found: from-file"), "{out}");

    // A broken file is refused before anything is sent, naming the field.
    std::fs::write(&file, r#"{ "inbounds": [{ "tag": "b", "port": 1, "protocol": "vless", "settings": {} }] }"#)
        .unwrap();
    let (status, out) = run_cli(&["api", "adi", &api_addr, file.to_str().unwrap()]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("inbounds[0].settings"), "{out}");

    let (status, out) = run_cli(&["api", "rmi", &api_addr, "from-file"]);
    assert!(status.success(), "{out}");
    assert_eq!(inbound_tags(&api), ["vless-in"]);
}
