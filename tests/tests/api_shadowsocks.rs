//! HandlerService with Shadowsocks users against the real binary with two shards: Xray's
//! classic Account (its cipher numbers) and v2fly's (its own numbers), Xray's 2022 Account and
//! older User form; an added user connects at once on both shards, a removed one is refused
//! and its live sessions closed; wrong account types, stream ciphers, `NONE` and PSKs of the
//! wrong length refused by name; GetInboundUsers returns each inbound's own account type;
//! AddInbound with shadowsocks ServerConfig and the 2022 server configs; users kept across
//! kill -9.

use std::time::Duration;

use prost::Message;
use serde_json::{json, Value};
use shardray_proto::xray::app::proxyman::command as handler;
use shardray_proto::xray::app::proxyman::ReceiverConfig;
use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain, PortList, PortRange};
use shardray_proto::xray::common::protocol::User;
use shardray_proto::xray::core::InboundHandlerConfig;
use shardray_proto::xray::proxy::{shadowsocks as ss_pb, shadowsocks_2022 as ss2022_pb};
use shardray_tests::api::{typed, vless_user, ApiClient};
use shardray_tests::servers::EchoServer;
use shardray_tests::shadowsocks::{open_session, round_trip, SsUser};
use shardray_tests::vless::{closed_within, payload};
use shardray_tests::{fixed_port, loopback_api, shadowsocks_config, wait_until, Restartable, Shardray};
use tonic::Code;

const M2022: &str = "2022-blake3-aes-128-gcm";

fn psk(seed: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([seed; 16])
}

fn classic_user(type_name: &str, email: &str, password: &str, cipher: i32) -> User {
    let account = ss_pb::Account { password: password.into(), cipher_type: cipher, iv_check: false };
    User { level: 0, email: email.into(), account: Some(typed(type_name, &account)) }
}

fn user_2022(email: &str, key: &str) -> User {
    let account = ss2022_pb::Account { key: key.into() };
    User { level: 0, email: email.into(), account: Some(typed("xray.proxy.shadowsocks_2022.Account", &account)) }
}

fn start(settings: Value) -> (Shardray, ApiClient) {
    let mut config = shadowsocks_config(settings, json!({}));
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    (server, api)
}

fn classic_server() -> (Shardray, ApiClient) {
    start(json!({ "clients": [{ "method": "aes-256-gcm", "password": "alice pw", "email": "alice@example.com" }] }))
}

fn multi_2022_server() -> (Shardray, ApiClient) {
    start(json!({ "method": M2022, "password": psk(200),
                  "clients": [{ "password": psk(1), "email": "alice@example.com" }] }))
}

/// Adds `bob` (with `user`), then 40 connections at once (both shards), his counters; then six
/// live sessions closed by his removal while alice's goes on, and bob refused afterwards.
fn add_connect_remove(server: &Shardray, api: &ApiClient, bob: User, user: &SsUser, alice: &SsUser) {
    let echo = EchoServer::start();
    let proxy = server.inbound("ss-in");
    assert!(round_trip(proxy, user, echo.addr(), b"x", 1).unwrap_or_default().is_empty(), "unknown before");
    api.add_api_user("ss-in", bob).unwrap();
    std::thread::scope(|s| {
        for i in 0..40u64 {
            let dest = echo.addr();
            s.spawn(move || {
                let data = payload(2_000, i);
                let got = round_trip(proxy, user, dest, &data, 100 + i).expect("round trip");
                assert!(got == data, "connection {i}");
            });
        }
    });
    let up = "user>>>bob@example.com>>>traffic>>>uplink";
    assert!(wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(80_000)), "{:?}", api.get(up, false));

    let mut live: Vec<_> = (0..6).map(|i| open_session(proxy, user, echo.addr(), 200 + i).unwrap()).collect();
    let mut other = open_session(proxy, alice, echo.addr(), 300).unwrap();
    api.remove_user("ss-in", "bob@example.com").unwrap();
    for s in &mut live {
        assert!(closed_within(s, Duration::from_secs(3)), "a live session survived removal");
    }
    assert!(round_trip(proxy, user, echo.addr(), b"x", 2).unwrap_or_default().is_empty(), "removed user served");
    assert!(!closed_within(&mut other, Duration::from_millis(500)), "another user's session was closed");
}

#[test]
fn classic_users_added_connect_at_once_and_removed_ones_are_closed() {
    let (server, api) = classic_server();
    let bob = classic_user(
        "xray.proxy.shadowsocks.Account",
        "bob@example.com",
        "bob pw",
        ss_pb::CipherType::Chacha20Poly1305 as i32,
    );
    add_connect_remove(
        &server,
        &api,
        bob,
        &SsUser::new("chacha20-ietf-poly1305", "bob pw"),
        &SsUser::new("aes-256-gcm", "alice pw"),
    );
}

#[test]
fn users_2022_added_connect_at_once_and_removed_ones_are_closed() {
    let (server, api) = multi_2022_server();
    let bob = user_2022("bob@example.com", &psk(2));
    let user = SsUser::new(M2022, &format!("{}:{}", psk(200), psk(2)));
    let alice = SsUser::new(M2022, &format!("{}:{}", psk(200), psk(1)));
    add_connect_remove(&server, &api, bob, &user, &alice);
}

#[test]
fn v2flys_cipher_numbers_and_older_2022_users_and_the_accounts_users_get_back() {
    let echo = EchoServer::start();
    let (server, api) = classic_server();
    // v2fly numbers AES_128_GCM 1 (Xray: 5).
    api.add_api_user("ss-in", classic_user("v2ray.core.proxy.shadowsocks.Account", "bob@example.com", "b", 1)).unwrap();
    let got = round_trip(server.inbound("ss-in"), &SsUser::new("aes-128-gcm", "b"), echo.addr(), b"hi", 3).unwrap();
    assert_eq!(got, b"hi");
    let req = handler::GetInboundUserRequest { tag: "ss-in".into(), email: "bob@example.com".into() };
    let users = api.block_on(api.handler().get_inbound_users(req)).unwrap().into_inner().users;
    let account = users[0].account.as_ref().unwrap();
    assert_eq!(account.r#type, "xray.proxy.shadowsocks.Account");
    let account = ss_pb::Account::decode(&account.value[..]).unwrap();
    assert_eq!((account.password.as_str(), account.cipher_type), ("b", ss_pb::CipherType::Aes128Gcm as i32));

    let (server, api) = multi_2022_server();
    let old = ss2022_pb::User { key: psk(3), email: "carol@example.com".into(), level: 0 };
    let user = User {
        level: 0,
        email: "carol@example.com".into(),
        account: Some(typed("xray.proxy.shadowsocks_2022.User", &old)),
    };
    api.add_api_user("ss-in", user).unwrap();
    let carol = SsUser::new(M2022, &format!("{}:{}", psk(200), psk(3)));
    assert_eq!(round_trip(server.inbound("ss-in"), &carol, echo.addr(), b"yo", 4).unwrap(), b"yo");
    let req = handler::GetInboundUserRequest { tag: "ss-in".into(), email: "carol@example.com".into() };
    let users = api.block_on(api.handler().get_inbound_users(req)).unwrap().into_inner().users;
    let account = users[0].account.as_ref().unwrap();
    assert_eq!(account.r#type, "xray.proxy.shadowsocks_2022.Account");
    assert_eq!(ss2022_pb::Account::decode(&account.value[..]).unwrap().key, psk(3));
}

#[test]
fn wrong_accounts_ciphers_and_keys_are_refused_by_name() {
    let (_server, api) = classic_server();
    let refused = |api: &ApiClient, user: User, words: &str| {
        let status = api.add_api_user("ss-in", user).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(words), "{:?} should say {words:?}", status.message());
    };
    refused(&api, vless_user("x@example.com", "alice", 0), "a vless account cannot join a shadowsocks inbound");
    refused(&api, user_2022("x@example.com", &psk(5)), "a shadowsocks_2022 account cannot join a shadowsocks inbound");
    refused(
        &api,
        classic_user("xray.proxy.shadowsocks.Account", "x@example.com", "p", 2),
        "cipher_type: 2 (a stream cipher)",
    );
    refused(&api, classic_user("xray.proxy.shadowsocks.Account", "x@example.com", "p", 9), "cipher_type: 9 (NONE)");
    refused(
        &api,
        classic_user("v2ray.core.proxy.shadowsocks.Account", "x@example.com", "p", 4),
        "cipher_type: 4 (NONE)",
    );
    refused(&api, classic_user("xray.proxy.shadowsocks.Account", "x@example.com", "", 5), "password: missing");
    assert_eq!(api.user_emails("ss-in").unwrap(), ["alice@example.com"]);

    let (_server, api) = multi_2022_server();
    refused(
        &api,
        classic_user("xray.proxy.shadowsocks.Account", "x@example.com", "p", 5),
        "a shadowsocks account cannot join a shadowsocks_2022 inbound",
    );
    use base64::Engine;
    let long = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
    refused(&api, user_2022("x@example.com", &long), "must be 16 bytes");
    refused(&api, user_2022("x@example.com", "not base64!"), "user.account.key");
    assert_eq!(api.user_emails("ss-in").unwrap(), ["alice@example.com"]);

    // A single-user 2022 inbound takes no users.
    let (_server, api) = start(json!({ "method": M2022, "password": psk(9), "email": "solo@example.com" }));
    refused(&api, user_2022("x@example.com", &psk(5)), "single-user");
}

fn receiver(port: u16) -> ReceiverConfig {
    ReceiverConfig {
        port_list: Some(PortList { range: vec![PortRange { from: port.into(), to: port.into() }] }),
        listen: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        ..Default::default()
    }
}

#[test]
fn add_inbound_takes_the_shadowsocks_server_configs() {
    let echo = EchoServer::start();
    let (server, api) = classic_server();
    let add = |tag: &str, port: u16, proxy: shardray_proto::xray::common::serial::TypedMessage| {
        let inbound = InboundHandlerConfig {
            tag: tag.into(),
            receiver_settings: Some(typed("xray.app.proxyman.ReceiverConfig", &receiver(port))),
            proxy_settings: Some(proxy),
        };
        api.block_on(api.handler().add_inbound(handler::AddInboundRequest { inbound: Some(inbound) }))
    };
    let cases: Vec<(&str, shardray_proto::xray::common::serial::TypedMessage, SsUser)> = vec![
        (
            "ss-classic",
            typed(
                "xray.proxy.shadowsocks.ServerConfig",
                &ss_pb::ServerConfig {
                    users: vec![classic_user("xray.proxy.shadowsocks.Account", "bob@example.com", "bp", 8)],
                    network: vec![],
                },
            ),
            SsUser::new("xchacha20-ietf-poly1305", "bp"),
        ),
        (
            "ss-single",
            typed(
                "xray.proxy.shadowsocks_2022.ServerConfig",
                &ss2022_pb::ServerConfig {
                    method: M2022.into(),
                    key: psk(7),
                    email: "s@example.com".into(),
                    ..Default::default()
                },
            ),
            SsUser::new(M2022, &psk(7)),
        ),
        (
            "ss-multi",
            typed(
                "xray.proxy.shadowsocks_2022.MultiUserServerConfig",
                &ss2022_pb::MultiUserServerConfig {
                    method: M2022.into(),
                    key: psk(8),
                    users: vec![user_2022("m@example.com", &psk(9))],
                    ..Default::default()
                },
            ),
            SsUser::new(M2022, &format!("{}:{}", psk(8), psk(9))),
        ),
    ];
    for (tag, proxy, user) in cases {
        let port = fixed_port();
        add(tag, port, proxy).unwrap_or_else(|e| panic!("{tag}: {e:?}"));
        let at = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        for i in 0..6u64 {
            let data = payload(3_000, i);
            let got = round_trip(at, &user, echo.addr(), &data, 10 + i);
            assert!(got.as_ref().ok() == Some(&data), "{tag}: connection {i}: {got:?}\n{}", server.output());
        }
    }
    // A stream cipher in an added inbound is refused by the loader, naming the field.
    let bad = ss2022_pb::ServerConfig { method: "aes-256-cfb".into(), key: "k".into(), ..Default::default() };
    let status = add("ss-bad", fixed_port(), typed("xray.proxy.shadowsocks_2022.ServerConfig", &bad)).unwrap_err();
    assert!(
        status.message().contains("settings.method") && status.message().contains("stream cipher"),
        "{}",
        status.message()
    );
}

#[test]
fn shadowsocks_users_added_through_the_api_survive_a_restart() {
    let echo = EchoServer::start();
    for (settings, bob, user) in [
        (
            json!({ "clients": [{ "method": "aes-128-gcm", "password": "alice", "email": "alice@example.com" }] }),
            classic_user("xray.proxy.shadowsocks.Account", "bob@example.com", "bob", 6),
            SsUser::new("aes-256-gcm", "bob"),
        ),
        (
            json!({ "method": M2022, "password": psk(200), "clients": [{ "password": psk(1), "email": "alice@example.com" }] }),
            user_2022("bob@example.com", &psk(2)),
            SsUser::new(M2022, &format!("{}:{}", psk(200), psk(2))),
        ),
    ] {
        let mut config = shadowsocks_config(settings, json!({}));
        config["inbounds"][0]["port"] = json!(fixed_port());
        config["api"] = loopback_api(&["HandlerService", "StatsService"]);
        let state = Restartable::new(&config);
        let (server, api) = state.start(&[]);
        api.add_api_user("ss-in", bob).unwrap();
        server.kill9();
        let (server, api) = state.start(&[]);
        let got = round_trip(server.inbound("ss-in"), &user, echo.addr(), b"again", 20).unwrap();
        assert_eq!(got, b"again");
        assert_eq!(api.user_emails("ss-in").unwrap(), ["alice@example.com", "bob@example.com"]);
    }
}
