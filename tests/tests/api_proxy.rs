//! HandlerService with SOCKS and HTTP accounts against the real binary with two shards: Xray's
//! `xray.proxy.socks.Account` / `xray.proxy.http.Account` and v2fly's forms, users added at once
//! on every core and closed on removal, refused account types, GetInboundUsers, AddInbound
//! with a socks or http ServerConfig, AddOutbound with their ClientConfig, and a restart.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use serde_json::json;
use shardray_proto::xray::app::proxyman::command as handler;
use shardray_proto::xray::app::proxyman::ReceiverConfig;
use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain, PortList, PortRange};
use shardray_proto::xray::common::protocol::User;
use shardray_proto::xray::core::InboundHandlerConfig;
use shardray_proto::xray::proxy::{http as http_pb, socks as socks_pb};
use shardray_tests::api::{trojan_user, typed, ApiClient};
use shardray_tests::proxy::{echo_through, http_config, http_connect, socks5, socks_config};
use shardray_tests::servers::EchoServer;
use shardray_tests::vless::{self, payload};
use shardray_tests::{fixed_port, loopback_api, wait_until, Restartable, Shardray};
use shardray_wire::addr::Destination;
use tonic::Code;

const DAVE: Option<(&str, &str)> = Some(("dave", "dave's password"));

/// An API user with a SOCKS or HTTP account of the given type name.
fn proxy_user(type_name: &str, email: &str, username: &str, password: &str) -> User {
    let account = socks_pb::Account { username: username.into(), password: password.into() };
    User { level: 0, email: email.into(), account: Some(typed(type_name, &account)) }
}

/// A SOCKS inbound `socks-in` (password auth, no accounts yet) and an HTTP inbound `http-in`
/// (one account, erin), the HandlerService and StatsService, 2 shards.
fn server() -> (Shardray, ApiClient) {
    let mut config = socks_config(json!({ "auth": "password" }), json!({}));
    let http = http_config(json!({ "accounts": [{ "user": "erin", "pass": "e" }] }), json!({}));
    config["inbounds"].as_array_mut().unwrap().push(http["inbounds"][0].clone());
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    (server, api)
}

/// Opens a SOCKS session as dave to `echo` and proves it works.
fn dave_session(proxy: SocketAddr, echo: SocketAddr) -> std::net::TcpStream {
    let mut s = socks5(proxy, DAVE, Destination::from(echo)).unwrap();
    assert_eq!(echo_through(&mut s, b"ping").unwrap(), b"ping");
    s
}

#[test]
fn an_added_socks_account_works_at_once_on_every_core_and_removal_closes_its_sessions() {
    let echo = EchoServer::start();
    let (server, api) = server();
    let proxy = server.inbound("socks-in");
    assert!(socks5(proxy, DAVE, Destination::from(echo.addr())).is_err(), "unknown before");
    api.add_api_user("socks-in", proxy_user("xray.proxy.socks.Account", "dave@example.com", "dave", "dave's password"))
        .unwrap();
    std::thread::scope(|s| {
        for i in 0..40u64 {
            let dest = Destination::from(echo.addr());
            s.spawn(move || {
                let data = payload(2_000, i);
                let mut conn = socks5(proxy, DAVE, dest).expect("dave is known on this core");
                assert!(echo_through(&mut conn, &data).unwrap() == data, "connection {i}");
            });
        }
    });
    let up = "user>>>dave@example.com>>>traffic>>>uplink";
    assert!(wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(80_000)), "{:?}", api.get(up, false));
    let mut live: Vec<_> = (0..6).map(|_| dave_session(proxy, echo.addr())).collect();
    api.remove_user("socks-in", "dave@example.com").unwrap();
    for s in &mut live {
        assert!(vless::closed_within(s, Duration::from_secs(3)), "a live session survived removal");
    }
    assert!(socks5(proxy, DAVE, Destination::from(echo.addr())).is_err(), "a removed account served");
}

#[test]
fn v2flys_account_forms_http_accounts_and_what_get_inbound_users_returns() {
    let echo = EchoServer::start();
    let (server, api) = server();
    api.add_api_user(
        "socks-in",
        proxy_user("v2ray.core.proxy.socks.Account", "dave@example.com", "dave", "dave's password"),
    )
    .unwrap();
    let mut s = socks5(server.inbound("socks-in"), DAVE, Destination::from(echo.addr())).unwrap();
    assert_eq!(echo_through(&mut s, b"v2fly").unwrap(), b"v2fly");
    for type_name in ["xray.proxy.http.Account", "v2ray.core.proxy.http.Account"] {
        let email = format!("{type_name}@example.com");
        api.add_api_user("http-in", proxy_user(type_name, &email, type_name, "pw")).unwrap();
        let mut s =
            http_connect(server.inbound("http-in"), Some((type_name, "pw")), Destination::from(echo.addr())).unwrap();
        assert_eq!(echo_through(&mut s, b"http").unwrap(), b"http");
    }
    let req = handler::GetInboundUserRequest { tag: "socks-in".into(), email: "dave@example.com".into() };
    let users = api.block_on(api.handler().get_inbound_users(req)).unwrap().into_inner().users;
    assert_eq!(users.len(), 1);
    let account = users[0].account.as_ref().unwrap();
    assert_eq!(account.r#type, "xray.proxy.socks.Account");
    let back = socks_pb::Account::decode(&account.value[..]).unwrap();
    assert_eq!((back.username.as_str(), back.password.as_str()), ("dave", "dave's password"));
    // erin from the config is counted under her username, as Xray counts her.
    assert_eq!(
        api.user_emails("http-in").unwrap(),
        ["erin", "v2ray.core.proxy.http.Account@example.com", "xray.proxy.http.Account@example.com"]
    );
}

#[test]
fn an_account_of_another_protocol_is_refused_by_name() {
    let (_server, api) = server();
    let status = api.add_api_user("socks-in", trojan_user("x@example.com", "pw", 0)).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("a trojan account cannot join a socks inbound"), "{}", status.message());
    let status =
        api.add_api_user("socks-in", proxy_user("xray.proxy.http.Account", "x@example.com", "x", "y")).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("a http account cannot join a socks inbound"), "{}", status.message());
    let status =
        api.add_api_user("http-in", proxy_user("xray.proxy.http.Account", "x@example.com", "", "y")).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("username: missing"), "{}", status.message());
    assert!(api.user_emails("socks-in").unwrap().is_empty());
}

fn receiver(port: u16) -> ReceiverConfig {
    ReceiverConfig {
        port_list: Some(PortList { range: vec![PortRange { from: port.into(), to: port.into() }] }),
        listen: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        ..Default::default()
    }
}

#[test]
fn add_inbound_takes_socks_and_http_server_configs() {
    let echo = EchoServer::start();
    let (_server, api) = server();
    let (socks_port, http_port) = (fixed_port(), fixed_port());
    let accounts = HashMap::from([("dave".to_owned(), "dave's password".to_owned())]);
    let socks = socks_pb::ServerConfig {
        auth_type: socks_pb::AuthType::Password as i32,
        accounts: accounts.clone(),
        ..Default::default()
    };
    let http = http_pb::ServerConfig { accounts, ..Default::default() };
    for (tag, port, settings) in [
        ("socks-2", socks_port, typed("xray.proxy.socks.ServerConfig", &socks)),
        ("http-2", http_port, typed("xray.proxy.http.ServerConfig", &http)),
    ] {
        let inbound = InboundHandlerConfig {
            tag: tag.into(),
            receiver_settings: Some(typed("xray.app.proxyman.ReceiverConfig", &receiver(port))),
            proxy_settings: Some(settings),
        };
        api.block_on(api.handler().add_inbound(handler::AddInboundRequest { inbound: Some(inbound) })).unwrap();
        assert_eq!(api.user_emails(tag).unwrap(), ["dave"]);
    }
    let dest = Destination::from(echo.addr());
    let mut s = socks5(SocketAddr::from(([127, 0, 0, 1], socks_port)), DAVE, dest.clone()).unwrap();
    assert_eq!(echo_through(&mut s, b"socks").unwrap(), b"socks");
    assert!(socks5(SocketAddr::from(([127, 0, 0, 1], socks_port)), None, dest.clone()).is_err(), "noauth served");
    let mut s = http_connect(SocketAddr::from(([127, 0, 0, 1], http_port)), DAVE, dest).unwrap();
    assert_eq!(echo_through(&mut s, b"http").unwrap(), b"http");
}

#[test]
fn add_outbound_takes_a_socks_client_config() {
    let echo = EchoServer::start();
    // The far side: a SOCKS inbound for dave.
    let far = Shardray::start(
        &socks_config(
            json!({ "auth": "password", "accounts": [{ "user": "dave", "pass": "dave's password" }] }),
            json!({}),
        ),
        2,
    );
    let far_addr = far.inbound("socks-in");
    // The near side: a dokodemo-door to the echo server through the default (first) outbound.
    let port = fixed_port();
    let config = json!({
        "log": { "loglevel": "warning" },
        "api": loopback_api(&["HandlerService"]),
        "inbounds": [{ "tag": "fwd", "listen": "127.0.0.1", "port": port, "protocol": "dokodemo-door",
                       "settings": { "address": "127.0.0.1", "port": echo.addr().port(), "network": "tcp" } }],
        "outbounds": [{ "tag": "blocked", "protocol": "blackhole" }]
    });
    let near = Shardray::start(&config, 2);
    let api = ApiClient::connect(near.api.unwrap());
    let server = shardray_proto::xray::common::protocol::ServerEndpoint {
        address: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        port: far_addr.port().into(),
        user: vec![proxy_user("xray.proxy.socks.Account", "", "dave", "dave's password")],
    };
    let outbound = shardray_proto::xray::core::OutboundHandlerConfig {
        tag: "via-socks".into(),
        proxy_settings: Some(typed("xray.proxy.socks.ClientConfig", &socks_pb::ClientConfig { server: Some(server) })),
        ..Default::default()
    };
    api.block_on(api.handler().add_outbound(handler::AddOutboundRequest { outbound: Some(outbound) })).unwrap();
    // Once the blackhole is gone the SOCKS outbound is the default route.
    api.block_on(api.handler().remove_outbound(handler::RemoveOutboundRequest { tag: "blocked".into() })).unwrap();
    let mut s = vless::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    assert_eq!(echo_through(&mut s, b"through the far side").unwrap(), b"through the far side");
}

#[test]
fn socks_accounts_added_through_the_api_survive_a_restart() {
    let echo = EchoServer::start();
    let mut config = socks_config(json!({ "auth": "password" }), json!({}));
    config["inbounds"][0]["port"] = json!(fixed_port());
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    let state = Restartable::new(&config);
    let (server, api) = state.start(&[]);
    api.add_api_user("socks-in", proxy_user("xray.proxy.socks.Account", "dave@example.com", "dave", "dave's password"))
        .unwrap();
    server.kill9();
    let (server, api) = state.start(&[]);
    let mut s = socks5(server.inbound("socks-in"), DAVE, Destination::from(echo.addr())).unwrap();
    assert_eq!(echo_through(&mut s, b"again").unwrap(), b"again");
    assert_eq!(api.user_emails("socks-in").unwrap(), ["dave@example.com"]);
}
