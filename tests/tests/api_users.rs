//! HandlerService against the real binary with two shards: users added and removed at run
//! time, applied on every core before the call returns.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;
use shardray_tests::api::{
    vless_user, AddUsersOperation, ApiClient, KickUserOperation, RemoveUsersOperation, ReplaceUsersOperation,
    SetUserLevelOperation,
};
use shardray_tests::servers::EchoServer;
use shardray_tests::{api_server, vless, vless_config, wait_until, Shardray, ALICE};
use tonic::Code;

const NEW: &str = "5f2c86f0-63b1-4d7c-9a43-3f3b2d6c0a11";

#[test]
fn an_added_user_connects_at_once_on_every_core_fifty_times() {
    let echo = EchoServer::start();
    let (server, api) = api_server();
    let proxy = server.inbound("vless-in");
    assert!(vless::round_trip(proxy, NEW, echo.addr(), b"x").unwrap_or_default().is_empty(), "unknown before");
    api.add_user("vless-in", "new@example.com", NEW, 0).unwrap();
    // No wait: the call returned, so every shard has the user.
    let threads: Vec<_> = (0..50u64)
        .map(|i| {
            let dest = echo.addr();
            std::thread::spawn(move || {
                let data = vless::payload(2000, i);
                assert_eq!(vless::round_trip(proxy, NEW, dest, &data).expect("round trip"), data, "connection {i}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Counters exist from the add and count exactly.
    let up = "user>>>new@example.com>>>traffic>>>uplink";
    assert!(
        wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(100_000)),
        "{:?}",
        api.get(up, false)
    );
    assert_eq!(api.user_emails("vless-in").unwrap(), ["alice@example.com", "new@example.com"]);
}

#[test]
fn a_removed_user_is_refused_and_its_live_sessions_close() {
    let echo = EchoServer::start();
    let (server, api) = api_server();
    let proxy = server.inbound("vless-in");
    api.add_user("vless-in", "new@example.com", NEW, 0).unwrap();
    let mut live: Vec<_> = (0..6).map(|_| vless::open_session(proxy, NEW, echo.addr())).collect();
    let mut other = vless::open_session(proxy, ALICE, echo.addr());

    let started = Instant::now();
    api.remove_user("vless-in", "new@example.com").unwrap();
    for s in &mut live {
        assert!(vless::closed_within(s, Duration::from_secs(3)), "a live session survived removal");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(vless::round_trip(proxy, NEW, echo.addr(), b"x").unwrap_or_default().is_empty(), "removed user served");
    // Another user's session is untouched.
    other.write_all(b"pong").unwrap();
    let mut back = [0u8; 4];
    other.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"pong");
    // Its counters went with it.
    let err = api.get("user>>>new@example.com>>>traffic>>>uplink", false).unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[test]
fn errors_carry_upstream_texts_and_precise_codes() {
    let (_server, api) = api_server();
    let e = api.add_user("vless-in", "alice@example.com", NEW, 0).unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().ends_with("User alice@example.com already exists."), "{}", e.message());
    let e = api.add_user("vless-in", "other@example.com", ALICE, 0).unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "same id, other email: {}", e.message());
    let e = api.remove_user("vless-in", "nobody@example.com").unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().ends_with("User nobody@example.com not found."), "{}", e.message());
    let e = api.add_user("nope", "x@example.com", NEW, 0).unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().ends_with("handler not found: nope"), "{}", e.message());
    // A Trojan account for a VLESS inbound, a bad id, no email, an unknown operation.
    let trojan = shardray_proto::xray::proxy::trojan::Account { password: "p".into(), ..Default::default() };
    let mut user = vless_user("t@example.com", NEW, 0);
    user.account = Some(shardray_tests::api::typed("xray.proxy.trojan.Account", &trojan));
    let op = shardray_proto::xray::app::proxyman::command::AddUserOperation { user: Some(user) };
    let e = api
        .alter("vless-in", shardray_tests::api::typed("xray.app.proxyman.command.AddUserOperation", &op))
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("trojan"), "{}", e.message());
    let e = api.add_user("vless-in", "bad@example.com", &"x".repeat(40), 0).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("invalid UUID"), "{}", e.message());
    let e = api.add_user("vless-in", "", NEW, 0).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = api.alter("vless-in", shardray_tests::api::typed("xray.app.proxyman.command.Nonsense", &op)).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Nothing of that changed the user set.
    assert_eq!(api.user_emails("vless-in").unwrap(), ["alice@example.com"]);
}

#[test]
fn list_and_count_inbounds_and_users() {
    let (server, api) = api_server();
    let mut handler = api.handler();
    let req = shardray_proto::xray::app::proxyman::command::ListInboundsRequest { is_only_tags: true };
    let tags: Vec<String> =
        api.block_on(handler.list_inbounds(req)).unwrap().into_inner().inbounds.into_iter().map(|i| i.tag).collect();
    assert_eq!(tags, ["vless-in"]);
    let req = shardray_proto::xray::app::proxyman::command::ListInboundsRequest { is_only_tags: false };
    let full = api.block_on(handler.list_inbounds(req)).unwrap().into_inner().inbounds;
    let receiver = full[0].receiver_settings.as_ref().unwrap();
    assert_eq!(receiver.r#type, "xray.app.proxyman.ReceiverConfig");
    let receiver: shardray_proto::xray::app::proxyman::ReceiverConfig =
        prost::Message::decode(&receiver.value[..]).unwrap();
    let port = server.inbound("vless-in").port() as u32;
    assert_eq!(receiver.port_list.unwrap().range[0].from, port);

    for i in 0..5 {
        api.add_user("vless-in", &format!("u{i}@x"), &format!("user-{i}"), 0).unwrap();
    }
    let req = shardray_proto::xray::app::proxyman::command::GetInboundUserRequest {
        tag: "vless-in".into(),
        email: String::new(),
    };
    let count = api.block_on(handler.get_inbound_users_count(req)).unwrap().into_inner().count;
    assert_eq!(count, 6);
    let req = shardray_proto::xray::app::proxyman::command::GetInboundUserRequest {
        tag: "vless-in".into(),
        email: "U3@X".into(),
    };
    let one = api.block_on(handler.get_inbound_users(req)).unwrap().into_inner().users;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].email, "u3@x");
}

#[test]
fn handler_service_answers_under_the_v2ray_name_with_v2ray_accounts() {
    let echo = EchoServer::start();
    let (server, api) = api_server();
    // V2Ray's VLESS account: id = 1, encryption = 2.
    #[derive(Clone, PartialEq, prost::Message)]
    struct V2rayAccount {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(string, tag = "2")]
        encryption: String,
    }
    let account = V2rayAccount { id: NEW.into(), encryption: "none".into() };
    let user = shardray_proto::xray::common::protocol::User {
        level: 0,
        email: "v2@example.com".into(),
        account: Some(shardray_tests::api::typed("types.v2fly.org/v2ray.core.proxy.vless.Account", &account)),
    };
    let op = shardray_proto::xray::app::proxyman::command::AddUserOperation { user: Some(user) };
    let req = shardray_proto::xray::app::proxyman::command::AlterInboundRequest {
        tag: "vless-in".into(),
        operation: Some(shardray_tests::api::typed("v2ray.core.app.proxyman.command.AddUserOperation", &op)),
    };
    api.block_on(async {
        let mut grpc = tonic::client::Grpc::new(api.channel());
        grpc.ready().await.unwrap();
        let codec = tonic::codec::ProstCodec::<
            shardray_proto::xray::app::proxyman::command::AlterInboundRequest,
            shardray_proto::xray::app::proxyman::command::AlterInboundResponse,
        >::default();
        let path = "/v2ray.core.app.proxyman.command.HandlerService/AlterInbound".parse().unwrap();
        grpc.unary(tonic::Request::new(req), path, codec).await.expect("AlterInbound under the V2Ray name");
    });
    assert_eq!(vless::round_trip(server.inbound("vless-in"), NEW, echo.addr(), b"v2").unwrap(), b"v2");
}

#[test]
fn our_operations_batch_replace_level_and_kick() {
    let echo = EchoServer::start();
    let (server, api) = api_server();
    let proxy = server.inbound("vless-in");
    let ids: Vec<String> = (0..4).map(|i| format!("batch-{i}")).collect();

    // A batch with one duplicate adds nobody.
    let mut users: Vec<_> = (0..3).map(|i| vless_user(&format!("b{i}@x"), &ids[i], 0)).collect();
    users.push(vless_user("alice@example.com", &ids[3], 0));
    let e = api.ours("vless-in", "AddUsersOperation", &AddUsersOperation { users: users.clone() }).unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(api.user_emails("vless-in").unwrap(), ["alice@example.com"]);
    users.pop();
    api.ours("vless-in", "AddUsersOperation", &AddUsersOperation { users }).unwrap();
    assert_eq!(api.user_emails("vless-in").unwrap().len(), 4);

    api.ours("vless-in", "RemoveUsersOperation", &RemoveUsersOperation { emails: vec!["b0@x".into(), "b1@x".into()] })
        .unwrap();
    assert_eq!(api.user_emails("vless-in").unwrap(), ["alice@example.com", "b2@x"]);

    // Level 5 has no stats policy: the user's counters disappear, as upstream would have none.
    api.ours("vless-in", "SetUserLevelOperation", &SetUserLevelOperation { email: "b2@x".into(), level: 5 }).unwrap();
    assert!(api.query("b2@x", false).is_empty());
    let mut handler = api.handler();
    let req = shardray_proto::xray::app::proxyman::command::GetInboundUserRequest {
        tag: "vless-in".into(),
        email: "b2@x".into(),
    };
    assert_eq!(api.block_on(handler.get_inbound_users(req)).unwrap().into_inner().users[0].level, 5);

    // Kick closes live sessions but the user stays and can reconnect.
    let mut s = vless::open_session(proxy, &ids[2], echo.addr());
    api.ours("vless-in", "KickUserOperation", &KickUserOperation { email: "b2@x".into() }).unwrap();
    assert!(vless::closed_within(&mut s, Duration::from_secs(3)));
    assert_eq!(vless::round_trip(proxy, &ids[2], echo.addr(), b"again").unwrap(), b"again");

    // Replace: only the new set remains; alice's live session is closed.
    let mut alice = vless::open_session(proxy, ALICE, echo.addr());
    let set = vec![vless_user("solo@x", NEW, 0)];
    api.ours("vless-in", "ReplaceUsersOperation", &ReplaceUsersOperation { users: set }).unwrap();
    assert_eq!(api.user_emails("vless-in").unwrap(), ["solo@x"]);
    assert!(vless::closed_within(&mut alice, Duration::from_secs(3)));
    assert!(vless::round_trip(proxy, ALICE, echo.addr(), b"x").unwrap_or_default().is_empty());
    assert_eq!(vless::round_trip(proxy, NEW, echo.addr(), b"solo").unwrap(), b"solo");
}

#[test]
fn a_level_change_applies_to_live_sessions() {
    let echo = EchoServer::start();
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService"]);
    // Level 1 counts nothing and closes idle sessions after one second.
    config["policy"]["levels"]["1"] = json!({ "connIdle": 1 });
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    let proxy = server.inbound("vless-in");
    let up = "user>>>alice@example.com>>>traffic>>>uplink";
    let level = |l: u32| {
        api.ours(
            "vless-in",
            "SetUserLevelOperation",
            &SetUserLevelOperation { email: "alice@example.com".into(), level: l },
        )
        .unwrap()
    };
    let echo_through = |s: &mut std::net::TcpStream, n: usize| {
        s.write_all(&vec![b'z'; n]).unwrap();
        let mut back = vec![0u8; n];
        s.read_exact(&mut back).unwrap();
    };

    let mut s = vless::open_session(proxy, ALICE, echo.addr()); // 4 bytes up
    echo_through(&mut s, 96);
    level(1);
    echo_through(&mut s, 50); // not counted under level 1
    level(0);
    echo_through(&mut s, 25);
    assert!(wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(125)), "{:?}", api.get(up, false));

    // Under level 1 the same live session now has a one-second idle timeout.
    level(1);
    let started = Instant::now();
    assert!(vless::closed_within(&mut s, Duration::from_secs(4)), "the new level's connIdle did not apply");
    assert!(started.elapsed() >= Duration::from_millis(800), "closed too early: {:?}", started.elapsed());
}
