//! HandlerService with Trojan users against the real binary with two shards: Xray's and V2Ray's
//! account forms, removal closing live sessions, refused account types, GetInboundUsers,
//! AddInbound with a Trojan ServerConfig, and Trojan users kept across a restart.

use std::io::{Read, Write};
use std::time::Duration;

use prost::Message;
use serde_json::json;
use shardray_proto::xray::app::proxyman::command as handler;
use shardray_proto::xray::app::proxyman::ReceiverConfig;
use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain, PortList, PortRange};
use shardray_proto::xray::core::InboundHandlerConfig;
use shardray_proto::xray::proxy::trojan as trojan_pb;
use shardray_tests::api::{trojan_user, trojan_user_as, typed, vless_user, ApiClient, KickUserOperation};
use shardray_tests::servers::EchoServer;
use shardray_tests::vless::{self, payload};
use shardray_tests::{
    fixed_port, loopback_api, trojan, trojan_config, vless_config, wait_until, Restartable, Shardray, ALICE,
    ALICE_PASSWORD,
};
use tonic::Code;

const BOB: &str = "bob's password";

/// A VLESS inbound `vless-in` and a Trojan inbound `trojan-in` (alice in each), the
/// HandlerService and StatsService, 2 shards.
fn server() -> (Shardray, ApiClient) {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    let trojan = trojan_config(json!([{ "password": ALICE_PASSWORD, "email": "alice@example.com" }]), json!({}));
    config["inbounds"].as_array_mut().unwrap().push(trojan["inbounds"][0].clone());
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    (server, api)
}

#[test]
fn an_added_trojan_user_connects_at_once_on_every_core_and_a_removed_one_is_closed() {
    let echo = EchoServer::start();
    let (server, api) = server();
    let proxy = server.inbound("trojan-in");
    assert!(trojan::round_trip(proxy, BOB, echo.addr(), b"x").unwrap_or_default().is_empty(), "unknown before");
    api.add_api_user("trojan-in", trojan_user("bob@example.com", BOB, 0)).unwrap();
    // No wait: the call returned, so every shard has the user.
    std::thread::scope(|s| {
        for i in 0..40u64 {
            let dest = echo.addr();
            s.spawn(move || {
                let data = payload(2_000, i);
                assert!(trojan::round_trip(proxy, BOB, dest, &data).expect("round trip") == data, "connection {i}");
            });
        }
    });
    let up = "user>>>bob@example.com>>>traffic>>>uplink";
    assert!(wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(80_000)), "{:?}", api.get(up, false));

    // Kick closes live sessions and keeps the user; removal closes them and refuses new ones.
    let mut kicked = trojan::open_session(proxy, BOB, echo.addr());
    api.ours("trojan-in", "KickUserOperation", &KickUserOperation { email: "bob@example.com".into() }).unwrap();
    assert!(vless::closed_within(&mut kicked, Duration::from_secs(3)), "a kicked session survived");
    let mut live: Vec<_> = (0..6).map(|_| trojan::open_session(proxy, BOB, echo.addr())).collect();
    let mut alice = trojan::open_session(proxy, ALICE_PASSWORD, echo.addr());
    api.remove_user("trojan-in", "bob@example.com").unwrap();
    for s in &mut live {
        assert!(vless::closed_within(s, Duration::from_secs(3)), "a live session survived removal");
    }
    assert!(trojan::round_trip(proxy, BOB, echo.addr(), b"x").unwrap_or_default().is_empty(), "removed user served");
    alice.write_all(b"pong").unwrap();
    let mut back = [0u8; 4];
    alice.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"pong", "another user's session was touched");
}

#[test]
fn v2rays_account_form_and_the_accounts_users_get_back() {
    let echo = EchoServer::start();
    let (server, api) = server();
    let proxy = server.inbound("trojan-in");
    api.add_api_user("trojan-in", trojan_user_as("v2ray.core.proxy.trojan.Account", "bob@example.com", BOB, 2))
        .unwrap();
    assert!(trojan::round_trip(proxy, BOB, echo.addr(), b"hi").unwrap() == b"hi");

    let req = handler::GetInboundUserRequest { tag: "trojan-in".into(), email: "bob@example.com".into() };
    let users = api.block_on(api.handler().get_inbound_users(req)).unwrap().into_inner().users;
    assert_eq!(users.len(), 1);
    assert_eq!((users[0].email.as_str(), users[0].level), ("bob@example.com", 2));
    let account = users[0].account.as_ref().unwrap();
    assert_eq!(account.r#type, "xray.proxy.trojan.Account");
    assert_eq!(trojan_pb::Account::decode(&account.value[..]).unwrap().password, BOB);

    // The same password twice in one inbound, without showing it.
    let status = api.add_api_user("trojan-in", trojan_user("carol@example.com", BOB, 0)).unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(!status.message().contains(BOB), "{}", status.message());
}

#[test]
fn an_account_of_the_other_protocol_or_with_a_flow_is_refused_by_name() {
    let (_server, api) = server();
    let status = api.add_api_user("trojan-in", vless_user("x@example.com", ALICE, 0)).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("a vless account cannot join a trojan inbound"), "{}", status.message());
    let status = api.add_api_user("vless-in", trojan_user("x@example.com", BOB, 0)).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("a trojan account cannot join a vless inbound"), "{}", status.message());
    let flow = trojan_pb::Account { password: BOB.into(), flow: "xtls-rprx-direct".into() };
    let user = shardray_proto::xray::common::protocol::User {
        level: 0,
        email: "x@example.com".into(),
        account: Some(typed("xray.proxy.trojan.Account", &flow)),
    };
    let status = api.add_api_user("trojan-in", user).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("flow"), "{}", status.message());
    assert_eq!(api.user_emails("trojan-in").unwrap(), ["alice@example.com"]);
}

#[test]
fn add_inbound_takes_a_trojan_server_config() {
    let echo = EchoServer::start();
    let (_server, api) = server();
    let port = fixed_port();
    let receiver = ReceiverConfig {
        port_list: Some(PortList { range: vec![PortRange { from: port.into(), to: port.into() }] }),
        listen: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        ..Default::default()
    };
    let settings = trojan_pb::ServerConfig { users: vec![trojan_user("bob@example.com", BOB, 0)], fallbacks: vec![] };
    let inbound = InboundHandlerConfig {
        tag: "trojan-2".into(),
        receiver_settings: Some(typed("xray.app.proxyman.ReceiverConfig", &receiver)),
        proxy_settings: Some(typed("xray.proxy.trojan.ServerConfig", &settings)),
    };
    api.block_on(api.handler().add_inbound(handler::AddInboundRequest { inbound: Some(inbound) })).unwrap();
    let proxy = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for i in 0..8u64 {
        let data = payload(3_000, i);
        assert!(trojan::round_trip(proxy, BOB, echo.addr(), &data).unwrap() == data, "connection {i}");
    }
    assert_eq!(api.user_emails("trojan-2").unwrap(), ["bob@example.com"]);
}

#[test]
fn trojan_users_added_through_the_api_survive_a_restart() {
    let echo = EchoServer::start();
    let mut config = trojan_config(json!([{ "password": ALICE_PASSWORD, "email": "alice@example.com" }]), json!({}));
    config["inbounds"][0]["port"] = json!(fixed_port());
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let state = Restartable::new(&config);
    let (server, api) = state.start(&[]);
    api.add_api_user("trojan-in", trojan_user("bob@example.com", BOB, 0)).unwrap();
    server.kill9();
    let (server, api) = state.start(&[]);
    let proxy = server.inbound("trojan-in");
    assert!(trojan::round_trip(proxy, BOB, echo.addr(), b"again").unwrap() == b"again");
    assert_eq!(api.user_emails("trojan-in").unwrap(), ["alice@example.com", "bob@example.com"]);
}
