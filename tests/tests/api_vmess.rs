//! HandlerService with VMess users against the real binary with two shards: Xray's and
//! v2fly's account forms (a non-zero alter_id refused), removal closing live sessions, a wrong
//! account type refused naming both, GetInboundUsers, AddInbound with a VMess inbound Config,
//! and VMess users kept across a restart.

use std::io::{Read, Write};
use std::time::Duration;

use prost::Message;
use serde_json::json;
use shardray_proto::xray::app::proxyman::command as handler;
use shardray_proto::xray::app::proxyman::ReceiverConfig;
use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain, PortList, PortRange};
use shardray_proto::xray::common::protocol::{SecurityConfig, SecurityType, User};
use shardray_proto::xray::core::InboundHandlerConfig;
use shardray_proto::xray::proxy::vmess as vmess_pb;
use shardray_tests::api::{typed, vless_user, ApiClient};
use shardray_tests::servers::EchoServer;
use shardray_tests::vless::{self, payload};
use shardray_tests::{fixed_port, loopback_api, vmess, vmess_config, wait_until, Restartable, Shardray, ALICE};
use tonic::Code;

const BOB: &str = "0e1b6d4c-7d2a-4b8e-9a55-3f6c1e2d9b10";

fn vmess_user_as(type_name: &str, email: &str, id: &str, alter_id: u32, level: u32) -> User {
    let account = vmess_pb::Account {
        id: id.into(),
        alter_id,
        security_settings: Some(SecurityConfig { r#type: SecurityType::Chacha20Poly1305 as i32 }),
        tests_enabled: String::new(),
    };
    User { level, email: email.into(), account: Some(typed(type_name, &account)) }
}

fn vmess_user(email: &str, id: &str, level: u32) -> User {
    vmess_user_as("xray.proxy.vmess.Account", email, id, 0, level)
}

/// A VMess inbound `vmess-in` (alice) and the HandlerService and StatsService, 2 shards.
fn server() -> (Shardray, ApiClient) {
    let mut config = vmess_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    (server, api)
}

#[test]
fn an_added_vmess_user_connects_at_once_on_every_core_and_a_removed_one_is_closed() {
    let echo = EchoServer::start();
    let (server, api) = server();
    let proxy = server.inbound("vmess-in");
    assert!(vmess::round_trip(proxy, BOB, echo.addr(), b"x", 1).unwrap_or_default().is_empty(), "unknown before");
    api.add_api_user("vmess-in", vmess_user("bob@example.com", BOB, 0)).unwrap();
    // No wait: the call returned, so every shard has the user.
    std::thread::scope(|s| {
        for i in 0..40u64 {
            let dest = echo.addr();
            s.spawn(move || {
                let data = payload(2_000, i);
                let got = vmess::round_trip(proxy, BOB, dest, &data, 100 + i).expect("round trip");
                assert!(got == data, "connection {i}");
            });
        }
    });
    let up = "user>>>bob@example.com>>>traffic>>>uplink";
    assert!(wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(80_000)), "{:?}", api.get(up, false));

    let mut live: Vec<_> = (0..6).map(|i| vmess::open_session(proxy, BOB, echo.addr(), 200 + i).0).collect();
    let (mut alice, alice_request) = vmess::open_session(proxy, ALICE, echo.addr(), 300);
    api.remove_user("vmess-in", "bob@example.com").unwrap();
    for s in &mut live {
        assert!(vless::closed_within(s, Duration::from_secs(3)), "a live session survived removal");
    }
    assert!(vmess::round_trip(proxy, BOB, echo.addr(), b"x", 2).unwrap_or_default().is_empty(), "removed user served");
    // Alice's session goes on: one more chunk each way.
    let mut sealer =
        shardray_wire::vmess::ChunkSealer::new(&alice_request, shardray_wire::vmess::Direction::Request, [1; 32])
            .unwrap();
    // The chunk counter continues from the first chunk (`ping`), so seal that one again first.
    let mut skipped = Vec::new();
    sealer.seal(b"ping", &mut skipped).unwrap();
    let mut out = Vec::new();
    sealer.seal(b"pong", &mut out).unwrap();
    alice.write_all(&out).unwrap();
    alice.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 256];
    assert!(alice.read(&mut buf).unwrap() > 0, "another user's session was touched");
}

#[test]
fn v2flys_account_form_and_the_accounts_users_get_back() {
    let echo = EchoServer::start();
    let (server, api) = server();
    let proxy = server.inbound("vmess-in");
    api.add_api_user("vmess-in", vmess_user_as("v2ray.core.proxy.vmess.Account", "bob@example.com", BOB, 0, 2))
        .unwrap();
    assert!(vmess::round_trip(proxy, BOB, echo.addr(), b"hi", 3).unwrap() == b"hi");

    let req = handler::GetInboundUserRequest { tag: "vmess-in".into(), email: "bob@example.com".into() };
    let users = api.block_on(api.handler().get_inbound_users(req)).unwrap().into_inner().users;
    assert_eq!(users.len(), 1);
    assert_eq!((users[0].email.as_str(), users[0].level), ("bob@example.com", 2));
    let account = users[0].account.as_ref().unwrap();
    assert_eq!(account.r#type, "xray.proxy.vmess.Account");
    let account = vmess_pb::Account::decode(&account.value[..]).unwrap();
    assert_eq!(account.id, BOB);
    assert_eq!(account.security_settings.unwrap().r#type, SecurityType::Chacha20Poly1305 as i32);

    // The same id twice in one inbound.
    let status = api.add_api_user("vmess-in", vmess_user("carol@example.com", BOB, 0)).unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
}

#[test]
fn a_wrong_account_type_or_a_legacy_alter_id_is_refused_by_name() {
    let (_server, api) = server();
    let status = api.add_api_user("vmess-in", vless_user("x@example.com", BOB, 0)).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("a vless account cannot join a vmess inbound"), "{}", status.message());
    let legacy = vmess_user_as("v2ray.core.proxy.vmess.Account", "x@example.com", BOB, 4, 0);
    let status = api.add_api_user("vmess-in", legacy).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("alter_id: 4"), "{}", status.message());
    // An undefined field in the account is refused too, not dropped.
    let mut bytes = vmess_pb::Account { id: BOB.into(), ..Default::default() }.encode_to_vec();
    bytes.extend_from_slice(&[0x48, 0x01]); // field 9, varint 1
    let user = User {
        level: 0,
        email: "x@example.com".into(),
        account: Some(shardray_proto::xray::common::serial::TypedMessage {
            r#type: "xray.proxy.vmess.Account".into(),
            value: bytes,
        }),
    };
    let status = api.add_api_user("vmess-in", user).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("field number 9"), "{}", status.message());
    assert_eq!(api.user_emails("vmess-in").unwrap(), ["alice@example.com"]);
}

#[test]
fn add_inbound_takes_a_vmess_inbound_config() {
    let echo = EchoServer::start();
    let (_server, api) = server();
    let port = fixed_port();
    let receiver = ReceiverConfig {
        port_list: Some(PortList { range: vec![PortRange { from: port.into(), to: port.into() }] }),
        listen: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        ..Default::default()
    };
    let settings =
        vmess_pb::inbound::Config { user: vec![vmess_user("bob@example.com", BOB, 0)], ..Default::default() };
    let inbound = InboundHandlerConfig {
        tag: "vmess-2".into(),
        receiver_settings: Some(typed("xray.app.proxyman.ReceiverConfig", &receiver)),
        proxy_settings: Some(typed("xray.proxy.vmess.inbound.Config", &settings)),
    };
    api.block_on(api.handler().add_inbound(handler::AddInboundRequest { inbound: Some(inbound.clone()) })).unwrap();
    let proxy = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for i in 0..8u64 {
        let data = payload(3_000, i);
        assert!(vmess::round_trip(proxy, BOB, echo.addr(), &data, 10 + i).unwrap() == data, "connection {i}");
    }
    assert_eq!(api.user_emails("vmess-2").unwrap(), ["bob@example.com"]);

    // v2fly's detour is refused by name.
    let detour = vmess_pb::inbound::Config {
        detour: Some(vmess_pb::inbound::DetourConfig { to: "dyn".into() }),
        ..Default::default()
    };
    let mut refused = inbound;
    refused.tag = "vmess-3".into();
    refused.proxy_settings = Some(typed("v2ray.core.proxy.vmess.inbound.Config", &detour));
    let status =
        api.block_on(api.handler().add_inbound(handler::AddInboundRequest { inbound: Some(refused) })).unwrap_err();
    assert!(status.message().contains("detour"), "{}", status.message());
}

#[test]
fn vmess_users_added_through_the_api_survive_a_restart() {
    let echo = EchoServer::start();
    let mut config = vmess_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["inbounds"][0]["port"] = json!(fixed_port());
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let state = Restartable::new(&config);
    let (server, api) = state.start(&[]);
    api.add_api_user("vmess-in", vmess_user("bob@example.com", BOB, 0)).unwrap();
    server.kill9();
    let (server, api) = state.start(&[]);
    let proxy = server.inbound("vmess-in");
    assert!(vmess::round_trip(proxy, BOB, echo.addr(), b"again", 20).unwrap() == b"again");
    assert_eq!(api.user_emails("vmess-in").unwrap(), ["alice@example.com", "bob@example.com"]);
    let req = handler::GetInboundUserRequest { tag: "vmess-in".into(), email: "bob@example.com".into() };
    let users = api.block_on(api.handler().get_inbound_users(req)).unwrap().into_inner().users;
    let account = vmess_pb::Account::decode(&users[0].account.as_ref().unwrap().value[..]).unwrap();
    assert_eq!(account.security_settings.unwrap().r#type, SecurityType::Chacha20Poly1305 as i32, "security kept");
}
