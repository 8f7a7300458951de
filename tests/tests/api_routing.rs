//! RoutingService: TestRoute runs the shards' rules, ListRule lists them, RemoveRule removes one.

use serde_json::json;
use shardray_proto::xray::app::router::command as pb;
use shardray_tests::api::ApiClient;
use shardray_tests::{vless_config, Shardray, ALICE};
use tonic::Code;

fn server() -> (Shardray, ApiClient) {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["outbounds"].as_array_mut().unwrap().insert(0, json!({ "tag": "default", "protocol": "freedom" }));
    config["routing"]["rules"] = json!([
        { "ruleTag": "ads", "domain": ["domain:ads.example"], "outboundTag": "blocked" },
        { "ruleTag": "bob", "user": ["bob@example.com"], "outboundTag": "direct" },
        { "ip": ["127.0.0.1/32"], "outboundTag": "direct" }
    ]);
    config["api"] = shardray_tests::loopback_api(&["RoutingService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    (server, api)
}

fn route(api: &ApiClient, ctx: pb::RoutingContext) -> Result<String, tonic::Status> {
    let mut client = pb::routing_service_client::RoutingServiceClient::new(api.channel());
    let req = pb::TestRouteRequest { routing_context: Some(ctx), ..Default::default() };
    Ok(api.block_on(client.test_route(req))?.into_inner().outbound_tag)
}

#[test]
fn test_route_follows_the_rules_and_the_default() {
    let (_server, api) = server();
    let domain = |d: &str| pb::RoutingContext { target_domain: d.into(), target_port: 443, ..Default::default() };
    assert_eq!(route(&api, domain("cdn.ads.example")).unwrap(), "blocked");
    assert_eq!(route(&api, domain("example.org")).unwrap(), "default");
    let by_ip = pb::RoutingContext { target_i_ps: vec![vec![127, 0, 0, 1]], target_port: 80, ..Default::default() };
    assert_eq!(route(&api, by_ip).unwrap(), "direct");
    let bob = pb::RoutingContext { user: "bob@example.com".into(), ..domain("example.org") };
    assert_eq!(route(&api, bob).unwrap(), "direct");
    let e = route(&api, pb::RoutingContext::default()).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[test]
fn list_rule_unknown_balancer_and_remove_rule() {
    let (_server, api) = server();
    let mut client = pb::routing_service_client::RoutingServiceClient::new(api.channel());
    let rules = api.block_on(client.list_rule(pb::ListRuleRequest {})).unwrap().into_inner().rules;
    let listed: Vec<(String, String)> = rules.into_iter().map(|r| (r.tag, r.rule_tag)).collect();
    assert_eq!(
        listed,
        [("blocked".into(), "ads".into()), ("direct".into(), "bob".into()), ("direct".into(), String::new())]
    );
    let e = api.block_on(client.get_balancer_info(pb::GetBalancerInfoRequest { tag: "b".into() })).unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "cannot find tag");
    api.block_on(client.remove_rule(pb::RemoveRuleRequest { rule_tag: "ads".into() })).unwrap();
    let rules = api.block_on(client.list_rule(pb::ListRuleRequest {})).unwrap().into_inner().rules;
    assert_eq!(rules.len(), 2, "the rule tagged ads is gone");
}
