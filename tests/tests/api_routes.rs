//! Outbounds and routing rules changed at run time through the API, against the real binary
//! with two shards: AddOutbound/RemoveOutbound/AlterOutbound, AddRule/RemoveRule, balancers,
//! SubscribeRoutingStats, and the journal keeping them across a restart.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use shardray_proto::xray::app::proxyman::command as handler;
use shardray_proto::xray::app::router;
use shardray_proto::xray::app::router::command as pb;
use shardray_proto::xray::common::{geodata, net};
use shardray_proto::xray::core::OutboundHandlerConfig;
use shardray_proto::xray::proxy::{blackhole, freedom};
use shardray_tests::api::{typed, ApiClient};
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, vless_config, wait_until, Restartable, Shardray, ALICE};
use tonic::Code;

fn config() -> serde_json::Value {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService", "RoutingService"]);
    config
}

fn freedom_outbound(tag: &str) -> OutboundHandlerConfig {
    OutboundHandlerConfig {
        tag: tag.into(),
        proxy_settings: Some(typed("xray.proxy.freedom.Config", &freedom::Config::default())),
        ..Default::default()
    }
}

fn handler_client(api: &ApiClient) -> handler::handler_service_client::HandlerServiceClient<tonic::transport::Channel> {
    handler::handler_service_client::HandlerServiceClient::new(api.channel())
}

fn routing_client(api: &ApiClient) -> pb::routing_service_client::RoutingServiceClient<tonic::transport::Channel> {
    pb::routing_service_client::RoutingServiceClient::new(api.channel())
}

fn add_outbound(api: &ApiClient, outbound: OutboundHandlerConfig) -> Result<(), tonic::Status> {
    let req = handler::AddOutboundRequest { outbound: Some(outbound) };
    api.block_on(handler_client(api).add_outbound(req)).map(|_| ())
}

fn remove_outbound(api: &ApiClient, tag: &str) -> Result<(), tonic::Status> {
    let req = handler::RemoveOutboundRequest { tag: tag.into() };
    api.block_on(handler_client(api).remove_outbound(req)).map(|_| ())
}

/// A rule sending 127.0.0.1 (on `port`, if not 0) to an outbound or a balancer.
fn loopback_rule(rule_tag: &str, port: u16, outbound: Option<&str>, balancer: Option<&str>) -> router::RoutingRule {
    use router::routing_rule::TargetTag;
    let cidr = geodata::Cidr { ip: vec![127, 0, 0, 1], prefix: 32 };
    router::RoutingRule {
        target_tag: Some(match (outbound, balancer) {
            (Some(o), _) => TargetTag::Tag(o.into()),
            (_, Some(b)) => TargetTag::BalancingTag(b.into()),
            _ => unreachable!(),
        }),
        rule_tag: rule_tag.into(),
        ip: vec![geodata::IpRule { value: Some(geodata::ip_rule::Value::Custom(cidr)) }],
        port_list: (port != 0)
            .then(|| net::PortList { range: vec![net::PortRange { from: u32::from(port), to: u32::from(port) }] }),
        ..Default::default()
    }
}

fn add_rules(
    api: &ApiClient,
    rules: Vec<router::RoutingRule>,
    balancers: Vec<router::BalancingRule>,
    append: bool,
) -> Result<(), tonic::Status> {
    let config = router::Config { rule: rules, balancing_rule: balancers, ..Default::default() };
    let req = pb::AddRuleRequest { config: Some(typed("xray.app.router.Config", &config)), should_append: append };
    api.block_on(routing_client(api).add_rule(req)).map(|_| ())
}

fn remove_rule(api: &ApiClient, tag: &str) -> Result<(), tonic::Status> {
    api.block_on(routing_client(api).remove_rule(pb::RemoveRuleRequest { rule_tag: tag.into() })).map(|_| ())
}

/// One VLESS session to the echo server: whether the payload came back.
fn echoes(proxy: SocketAddr, echo: SocketAddr) -> bool {
    vless::round_trip(proxy, ALICE, echo, b"hello").map(|r| r == b"hello").unwrap_or(false)
}

/// An outbound's uplink counter (0 while it has none).
fn uplink(api: &ApiClient, tag: &str) -> i64 {
    api.get(&format!("outbound>>>{tag}>>>traffic>>>uplink"), false).unwrap_or(0)
}

#[test]
fn added_outbound_and_rule_carry_traffic_until_removed() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config(), 2);
    let api = ApiClient::connect(server.api.unwrap());
    let proxy = server.inbound("vless-in");

    add_outbound(&api, freedom_outbound("px")).unwrap();
    // Replace the rules: the echo server's port goes to px, the rest of loopback to direct.
    let rules = vec![
        loopback_rule("to-px", echo.addr().port(), Some("px"), None),
        loopback_rule("lo", 0, Some("direct"), None),
    ];
    add_rules(&api, rules, vec![], false).unwrap();
    for _ in 0..6 {
        assert!(echoes(proxy, echo.addr()));
    }
    assert!(wait_until(Duration::from_secs(5), || uplink(&api, "px") >= 30), "px counted");
    let direct_before = uplink(&api, "direct");

    // The rule goes: traffic takes the direct route again.
    remove_rule(&api, "to-px").unwrap();
    let px_before = uplink(&api, "px");
    for _ in 0..4 {
        assert!(echoes(proxy, echo.addr()));
    }
    assert!(wait_until(Duration::from_secs(5), || uplink(&api, "direct") >= direct_before + 20));
    assert_eq!(uplink(&api, "px"), px_before);
    // Upstream answers success for a rule tag nobody has.
    remove_rule(&api, "to-px").unwrap();

    // A rule naming an outbound that is then removed drops its connections; others go on.
    add_rules(&api, vec![loopback_rule("to-px", echo.addr().port(), Some("px"), None)], vec![], false).unwrap();
    assert!(echoes(proxy, echo.addr()));
    remove_outbound(&api, "px").unwrap();
    for _ in 0..4 {
        assert!(!echoes(proxy, echo.addr()), "dropped, not sent to the default");
    }
    // The warning comes through the logger thread: it may trail the connection by a moment.
    let warned = wait_until(Duration::from_secs(5), || server.output().contains("non existing outTag: px"));
    assert!(warned, "{}", server.output());
    add_rules(&api, vec![loopback_rule("lo", 0, Some("direct"), None)], vec![], true).unwrap();
    remove_rule(&api, "to-px").unwrap();
    assert!(echoes(proxy, echo.addr()), "the server is healthy");
    let listed = api.block_on(handler_client(&api).list_outbounds(handler::ListOutboundsRequest {})).unwrap();
    let tags: Vec<String> = listed.into_inner().outbounds.into_iter().map(|o| o.tag).collect();
    assert_eq!(tags, ["direct", "blocked"]);
}

#[test]
fn an_added_blackhole_drops_what_a_rule_sends_it() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config(), 2);
    let api = ApiClient::connect(server.api.unwrap());
    let proxy = server.inbound("vless-in");
    let sink = OutboundHandlerConfig {
        tag: "sink".into(),
        proxy_settings: Some(typed("xray.proxy.blackhole.Config", &blackhole::Config::default())),
        ..Default::default()
    };
    add_outbound(&api, sink).unwrap();
    assert!(echoes(proxy, echo.addr()));
    // Appended after the config's loopback rule, it would never match: replace instead.
    add_rules(&api, vec![loopback_rule("sink", 0, Some("sink"), None)], vec![], false).unwrap();
    assert!(!echoes(proxy, echo.addr()));
    let mut client = routing_client(&api);
    let rules = api.block_on(client.list_rule(pb::ListRuleRequest {})).unwrap().into_inner().rules;
    assert_eq!(rules.len(), 1);
    assert_eq!((rules[0].tag.as_str(), rules[0].rule_tag.as_str()), ("sink", "sink"));
}

#[test]
fn outbound_errors_have_precise_codes() {
    let server = Shardray::start(&config(), 2);
    let api = ApiClient::connect(server.api.unwrap());

    let e = add_outbound(&api, freedom_outbound("direct")).unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::AlreadyExists, "existing tag found: direct"));
    let e = remove_outbound(&api, "nope").unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "not enough information for making a decision");

    let wrong_type = OutboundHandlerConfig {
        tag: "x".into(),
        proxy_settings: Some(typed("xray.app.router.Config", &router::Config::default())),
        ..Default::default()
    };
    assert_eq!(add_outbound(&api, wrong_type).unwrap_err().code(), Code::InvalidArgument);
    let unserved = OutboundHandlerConfig {
        tag: "x".into(),
        proxy_settings: Some(typed("xray.proxy.wireguard.DeviceConfig", &router::Config::default())),
        ..Default::default()
    };
    let e = add_outbound(&api, unserved).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("\"wireguard\""), "{}", e.message());

    let alter = |tag: &str, op: Option<shardray_proto::xray::common::serial::TypedMessage>| {
        let req = handler::AlterOutboundRequest { tag: tag.into(), operation: op };
        api.block_on(handler_client(&api).alter_outbound(req)).unwrap_err()
    };
    let op = typed("xray.app.proxyman.command.RemoveUserOperation", &handler::RemoveUserOperation::default());
    assert_eq!(alter("nope", Some(op.clone())).code(), Code::NotFound);
    let e = alter("direct", Some(op));
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "not an outbound operation"));

    // Routing errors, in upstream's words.
    let e = add_rules(&api, vec![loopback_rule("x", 0, None, Some("nope"))], vec![], true).unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "balancer nope not found"));
    add_rules(&api, vec![loopback_rule("dup", 0, Some("direct"), None)], vec![], true).unwrap();
    let e = add_rules(&api, vec![loopback_rule("dup", 0, Some("direct"), None)], vec![], true).unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::AlreadyExists, "duplicate ruleTag dup"));
    let e = remove_rule(&api, "").unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "empty tag name!"));
    let req = pb::AddRuleRequest {
        config: Some(typed("xray.app.proxyman.SenderConfig", &router::Config::default())),
        should_append: true,
    };
    let e = api.block_on(routing_client(&api).add_rule(req)).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("AddRule: config type error"), "{}", e.message());
}

/// Counts `n` sessions through the balanced route, then each candidate's uplink growth.
fn spread(api: &ApiClient, proxy: SocketAddr, echo: SocketAddr, n: usize) -> (i64, i64) {
    let (a0, b0) = (uplink(api, "px-a"), uplink(api, "px-b"));
    for _ in 0..n {
        assert!(echoes(proxy, echo));
    }
    let total = (n * 5) as i64;
    assert!(wait_until(Duration::from_secs(5), || uplink(api, "px-a") - a0 + uplink(api, "px-b") - b0 >= total));
    (uplink(api, "px-a") - a0, uplink(api, "px-b") - b0)
}

fn balancer_info(api: &ApiClient, tag: &str) -> Result<(Vec<String>, String), tonic::Status> {
    let reply = api.block_on(routing_client(api).get_balancer_info(pb::GetBalancerInfoRequest { tag: tag.into() }))?;
    let b = reply.into_inner().balancer.unwrap();
    Ok((b.principle_target.unwrap().tag, b.r#override.unwrap().target))
}

fn override_target(api: &ApiClient, balancer: &str, target: &str) -> Result<(), tonic::Status> {
    let req = pb::OverrideBalancerTargetRequest { balancer_tag: balancer.into(), target: target.into() };
    api.block_on(routing_client(api).override_balancer_target(req)).map(|_| ())
}

#[test]
fn balancers_spread_pin_and_report() {
    let echo = EchoServer::start();
    let mut config = config();
    config["outbounds"]
        .as_array_mut()
        .unwrap()
        .extend([json!({ "tag": "px-a", "protocol": "freedom" }), json!({ "tag": "px-b", "protocol": "freedom" })]);
    config["routing"]["balancers"] = json!([{ "tag": "rand", "selector": ["px-"], "strategy": { "type": "random" } }]);
    config["routing"]["rules"] = json!([{ "ip": ["127.0.0.1/32"], "balancerTag": "rand" }]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    let proxy = server.inbound("vless-in");

    let (a, b) = spread(&api, proxy, echo.addr(), 24);
    assert!(a > 0 && b > 0, "random used both: {a} {b}");
    assert_eq!(balancer_info(&api, "rand").unwrap(), (vec!["px-a".to_owned(), "px-b".to_owned()], String::new()));

    override_target(&api, "rand", "px-b").unwrap();
    assert_eq!(balancer_info(&api, "rand").unwrap().1, "px-b");
    assert_eq!(spread(&api, proxy, echo.addr(), 8).0, 0, "pinned to px-b");
    override_target(&api, "rand", "").unwrap();
    assert_eq!(balancer_info(&api, "rand").unwrap().1, "");
    let e = override_target(&api, "nope", "px-a").unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "cannot find tag"));
    assert_eq!(balancer_info(&api, "nope").unwrap_err().code(), Code::NotFound);

    // A round-robin balancer added through the API, replacing the rules and balancers.
    let rr = router::BalancingRule {
        tag: "rr".into(),
        outbound_selector: vec!["px-".into()],
        strategy: "roundRobin".into(),
        ..Default::default()
    };
    add_rules(&api, vec![loopback_rule("rr", 0, None, Some("rr"))], vec![rr], false).unwrap();
    assert_eq!(balancer_info(&api, "rand").unwrap_err().code(), Code::NotFound);
    let (a, b) = spread(&api, proxy, echo.addr(), 12);
    assert!(a > 0 && b > 0, "round robin used both: {a} {b}");
    // A new outbound matching the selector joins the candidates.
    add_outbound(&api, freedom_outbound("px-c")).unwrap();
    assert_eq!(balancer_info(&api, "rr").unwrap().0, ["px-a", "px-b", "px-c"]);

    let mut client = routing_client(&api);
    let ctx = pb::RoutingContext { target_i_ps: vec![vec![127, 0, 0, 1]], target_port: 80, ..Default::default() };
    override_target(&api, "rr", "px-c").unwrap();
    let req = pb::TestRouteRequest { routing_context: Some(ctx), ..Default::default() };
    let routed = api.block_on(client.test_route(req)).unwrap().into_inner();
    assert_eq!((routed.outbound_tag.as_str(), routed.outbound_group_tags.as_slice()), ("px-c", &["rr".to_owned()][..]));
}

#[test]
fn subscribe_routing_stats_sees_connections_made_after_subscribing() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config(), 2);
    let api = ApiClient::connect(server.api.unwrap());
    let proxy = server.inbound("vless-in");
    let echo_addr = echo.addr();
    let mut client = routing_client(&api);
    let mut narrow = routing_client(&api);
    let mut tester = routing_client(&api);
    let (all, only_outbound, published) = api.block_on(async move {
        let mut stream =
            client.subscribe_routing_stats(pb::SubscribeRoutingStatsRequest::default()).await.unwrap().into_inner();
        let req = pb::SubscribeRoutingStatsRequest { field_selectors: vec!["outbound".into()] };
        let mut selected = narrow.subscribe_routing_stats(req).await.unwrap().into_inner();
        let session = tokio::task::spawn_blocking(move || echoes(proxy, echo_addr));
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
        let second = tokio::time::timeout(Duration::from_secs(10), selected.message()).await;
        assert!(session.await.unwrap());
        // TestRoute with PublishResult shows on the streams too.
        let ctx =
            pb::RoutingContext { target_domain: "published.example".into(), target_port: 443, ..Default::default() };
        let req = pb::TestRouteRequest { routing_context: Some(ctx), publish_result: true, ..Default::default() };
        tester.test_route(req).await.unwrap();
        let third = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
        (
            first.expect("a context in time").unwrap().unwrap(),
            second.expect("in time").unwrap().unwrap(),
            third.expect("in time").unwrap().unwrap(),
        )
    });
    assert_eq!((published.target_domain.as_str(), published.outbound_tag.as_str()), ("published.example", "direct"));
    assert_eq!(all.inbound_tag, "vless-in");
    assert_eq!(all.outbound_tag, "direct");
    assert_eq!(all.user, "alice@example.com");
    assert_eq!(all.target_i_ps, vec![vec![127, 0, 0, 1]]);
    assert_eq!(all.target_port, u32::from(echo_addr.port()));
    assert_eq!(all.network, net::Network::Tcp as i32);
    assert_eq!(all.source_i_ps, vec![vec![127, 0, 0, 1]]);
    assert_eq!(only_outbound, pb::RoutingContext { outbound_tag: "direct".into(), ..Default::default() });
    // With the streams gone, connections go on as before.
    assert!(echoes(proxy, echo.addr()));
}

#[test]
fn added_outbounds_and_rules_survive_a_restart() {
    let echo = EchoServer::start();
    let restartable = Restartable::new(&config());
    let start = || restartable.start(&[]);
    let (server, api) = start();
    add_outbound(&api, freedom_outbound("px")).unwrap();
    add_outbound(&api, freedom_outbound("gone")).unwrap();
    remove_outbound(&api, "gone").unwrap();
    let rules = vec![
        loopback_rule("to-px", echo.addr().port(), Some("px"), None),
        loopback_rule("lo", 0, Some("direct"), None),
    ];
    add_rules(&api, rules, vec![], false).unwrap();
    server.kill9();

    let (server, api) = start();
    let listed = api.block_on(handler_client(&api).list_outbounds(handler::ListOutboundsRequest {})).unwrap();
    let tags: Vec<String> = listed.into_inner().outbounds.into_iter().map(|o| o.tag).collect();
    assert_eq!(tags, ["direct", "blocked", "px"]);
    let rules = api.block_on(routing_client(&api).list_rule(pb::ListRuleRequest {})).unwrap().into_inner().rules;
    let tags: Vec<&str> = rules.iter().map(|r| r.rule_tag.as_str()).collect();
    assert_eq!(tags, ["to-px", "lo"]);
    assert!(echoes(server.inbound("vless-in"), echo.addr()));
    assert!(wait_until(Duration::from_secs(5), || uplink(&api, "px") >= 5), "traffic went through px");
}
