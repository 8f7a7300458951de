//! Routing by HTTP request attributes (rules' `attrs`) against the real binary with two shards:
//! curl and raw requests through a sniffing SOCKS inbound and through the HTTP proxy inbound,
//! routed by `:path`, `:method` and a header to outbounds told apart by which loopback server
//! answers (or none, for the blackhole); a rule added through AddRule with `attributes`, and
//! TestRoute's `Attributes`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::proxy::{socks_config, OriginServer};
use shardray_tests::Shardray;

/// Inbounds: `sniff` (SOCKS, sniffing with destOverride tls only: HTTP attributes are read
/// whatever destOverride says, as in Xray), `plain` (SOCKS, no sniffing) and `http-in` (HTTP
/// proxy). Rules: `:path` under `/b/` to `to-b` (freedom redirected to origin B), `GET` with
/// `X-Route: block` to the blackhole, 127.0.0.1 to `direct`.
fn config(b: SocketAddr) -> Value {
    let mut config = socks_config(json!({ "auth": "noauth" }), json!({}));
    let socks = config["inbounds"][0].clone();
    let mut sniff = socks.clone();
    sniff["tag"] = json!("sniff");
    sniff["sniffing"] = json!({ "enabled": true, "destOverride": ["tls"] });
    let mut plain = socks;
    plain["tag"] = json!("plain");
    let http = json!({ "tag": "http-in", "listen": "127.0.0.1", "port": 0, "protocol": "http", "settings": {} });
    config["inbounds"] = json!([sniff, plain, http]);
    config["outbounds"] = json!([
        { "tag": "direct", "protocol": "freedom" },
        { "tag": "blocked", "protocol": "blackhole" },
        { "tag": "to-b", "protocol": "freedom", "settings": { "redirect": b.to_string() } }
    ]);
    config["routing"]["rules"] = json!([
        { "type": "field", "attrs": { ":path": "^/b/" }, "outboundTag": "to-b" },
        { "type": "field", "attrs": { ":method": "^GET$", "X-Route": "^block$" }, "outboundTag": "blocked" },
        { "type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct" }
    ]);
    config
}

/// The body curl gets for `url` through `proxy` (`socks5://…` or `http://…`), with `args`.
fn curl(proxy: &str, url: &str, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-x", proxy])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Setup {
    server: Shardray,
    a: OriginServer,
    _b: OriginServer,
}

fn setup(extra: impl FnOnce(&mut Value)) -> Setup {
    let a = OriginServer::start("origin-a");
    let b = OriginServer::start("origin-b");
    let mut config = config(b.addr());
    extra(&mut config);
    let server = Shardray::start(&config, 2);
    Setup { server, a, _b: b }
}

#[test]
fn sniffed_requests_route_by_path_method_and_header() {
    let s = setup(|_| {});
    let socks = format!("socks5://{}", s.server.inbound("sniff"));
    let plain = format!("socks5://{}", s.server.inbound("plain"));
    let a = s.a.addr();
    // Several connections per case, so both shards serve each.
    for _ in 0..4 {
        let body = curl(&socks, &format!("http://{a}/b/page?x=1"), &[]);
        assert!(body.starts_with("origin-b GET /b/page?x=1 "), "{body:?}\n{}", s.server.output());
        assert!(curl(&socks, &format!("http://{a}/a/b/"), &[]).starts_with("origin-a GET /a/b/ "));
        // The header rule: the name in any case, and only with the method it names.
        assert_eq!(curl(&socks, &format!("http://{a}/x"), &["-H", "x-route: block"]), "");
        let post = curl(&socks, &format!("http://{a}/x"), &["-H", "X-Route: block", "-d", "hi"]);
        assert!(post.starts_with("origin-a POST /x "), "{post:?}");
        assert!(curl(&socks, &format!("http://{a}/x"), &["-H", "X-Route: blocker"]).starts_with("origin-a"));
        // Without sniffing, a session has no attributes: no attrs rule matches.
        assert!(curl(&plain, &format!("http://{a}/b/page"), &[]).starts_with("origin-a GET /b/page "));
        assert!(curl(&plain, &format!("http://{a}/x"), &["-H", "X-Route: block"]).starts_with("origin-a"));
    }
}

/// One raw request with `Proxy-Connection: keep-alive` and its response, on `conn`.
fn exchange(conn: &mut TcpStream, target: SocketAddr, path: &str) -> Option<String> {
    let req = format!("GET http://{target}{path} HTTP/1.1\r\nHost: {target}\r\nProxy-Connection: keep-alive\r\n\r\n");
    conn.write_all(req.as_bytes()).ok()?;
    let head = String::from_utf8(shardray_tests::proxy::read_head(conn).ok()?).ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))?
        .parse()
        .ok()?;
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn http_proxy_requests_route_each_by_its_own_attributes() {
    let s = setup(|_| {});
    let proxy = format!("http://{}", s.server.inbound("http-in"));
    let a = s.a.addr();
    for _ in 0..4 {
        // `:path` is the URI's path alone, as Xray's HTTP inbound gives it.
        let body = curl(&proxy, &format!("http://{a}/b/page?x=1"), &[]);
        assert!(body.starts_with("origin-b GET /b/page?x=1 "), "{body:?}\n{}", s.server.output());
        assert!(curl(&proxy, &format!("http://{a}/c?to=/b/"), &[]).starts_with("origin-a GET /c?to=/b/ "));
        // The method is compared in capitals.
        assert!(curl(&proxy, &format!("http://{a}/b/x"), &["-X", "get"]).starts_with("origin-b"));
        assert_eq!(curl(&proxy, &format!("http://{a}/x"), &["-H", "X-Route: block"]), "");
        let post = curl(&proxy, &format!("http://{a}/x"), &["-H", "X-Route: block", "-d", "hi"]);
        assert!(post.starts_with("origin-a POST /x "), "{post:?}");
    }
    // Requests kept alive on one client connection are routed one by one.
    let mut conn = TcpStream::connect(s.server.inbound("http-in")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for (path, origin) in [("/b/1", "origin-b"), ("/a/2", "origin-a"), ("/b/3", "origin-b")] {
        let body = exchange(&mut conn, a, path).expect("an answer on the kept-alive connection");
        assert!(body.starts_with(&format!("{origin} GET {path} ")), "{path}: {body:?}");
    }
}

#[test]
fn attrs_rules_added_through_the_api_match_live_sessions_and_test_route() {
    use prost::Message;
    use shardray_proto::xray::app::router;
    use shardray_proto::xray::app::router::command as pb;
    use shardray_proto::xray::common::geodata;
    use shardray_proto::xray::common::serial::TypedMessage;

    let s = setup(|config| config["api"] = shardray_tests::loopback_api(&["RoutingService"]));
    let api = shardray_tests::api::ApiClient::connect(s.server.api.unwrap());
    let mut client = pb::routing_service_client::RoutingServiceClient::new(api.channel());
    let socks = format!("socks5://{}", s.server.inbound("sniff"));
    let url = format!("http://{}/api", s.a.addr());
    let test_route = |client: &mut pb::routing_service_client::RoutingServiceClient<_>, attrs: &[(&str, &str)]| {
        let ctx = pb::RoutingContext {
            target_i_ps: vec![vec![127, 0, 0, 1]],
            target_port: 80,
            attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let req = pb::TestRouteRequest { routing_context: Some(ctx), ..Default::default() };
        api.block_on(client.test_route(req)).unwrap().into_inner().outbound_tag
    };
    let add = |client: &mut pb::routing_service_client::RoutingServiceClient<_>, attrs: &[(&str, &str)]| {
        let rule = router::RoutingRule {
            attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            target_tag: Some(router::routing_rule::TargetTag::Tag("to-b".into())),
            ..Default::default()
        };
        // Replacing the rules (as `should_append: false` does): the panel's rule, then loopback.
        let loopback = router::RoutingRule {
            ip: vec![geodata::IpRule {
                value: Some(geodata::ip_rule::Value::Custom(geodata::Cidr { ip: vec![127, 0, 0, 1], prefix: 32 })),
            }],
            target_tag: Some(router::routing_rule::TargetTag::Tag("direct".into())),
            ..Default::default()
        };
        let config = router::Config { rule: vec![rule, loopback], ..Default::default() };
        let typed = TypedMessage { r#type: "xray.app.router.Config".into(), value: config.encode_to_vec() };
        api.block_on(client.add_rule(pb::AddRuleRequest { config: Some(typed), should_append: false }))
    };
    assert!(curl(&socks, &url, &["-H", "X-Panel: on"]).starts_with("origin-a"), "{}", s.server.output());
    assert_eq!(test_route(&mut client, &[("x-panel", "on")]), "direct");
    assert_eq!(test_route(&mut client, &[(":path", "/b/c")]), "to-b");

    // A bad expression is refused, naming the field.
    let err = add(&mut client, &[("X-Panel", "(")]).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("rule[0].attributes.x-panel: invalid regular expression"), "{}", err.message());

    // A rule first in the list; every shard has it when the call returns.
    add(&mut client, &[("X-Panel", "^on$")]).unwrap();
    for _ in 0..4 {
        let body = curl(&socks, &url, &["-H", "X-Panel: on"]);
        assert!(body.starts_with("origin-b GET /api "), "{body:?}\n{}", s.server.output());
        assert!(curl(&socks, &url, &["-H", "X-Panel: off"]).starts_with("origin-a"));
    }
    // TestRoute compares names in lowercase, as upstream does.
    assert_eq!(test_route(&mut client, &[("X-PANEL", "on")]), "to-b");
    assert_eq!(test_route(&mut client, &[("x-panel", "off")]), "direct");
    assert_eq!(test_route(&mut client, &[]), "direct");
}
