//! The `dns` object and the `dns` outbound, against DNS servers the tests run on loopback:
//! freedom's `UseIPv4` and the router's `IPIfNonMatch` resolve through it, answers are cached,
//! `hosts` answers without a query (a `geosite:` key for every name of the list), `queryStrategy`
//! narrows what is asked, `IPOnDemand` resolves at the first ip rule, `localhost` is the system
//! resolver, `domains` and `expectIPs` pick the server, a slow server holds up only the
//! sessions waiting for it, and a `dns` outbound answers queries routed to it.

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardray_tests::dns::{self, DnsServer};
use shardray_tests::proxy::{echo_through, socks5, socks_config};
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, Shardray};

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A SOCKS inbound `socks-in`, a freedom outbound with `strategy`, and `dns`.
fn config(strategy: &str, dns: Value) -> Value {
    let mut config = socks_config(json!({ "auth": "noauth" }), json!({}));
    config["outbounds"][0]["settings"] = json!({ "domainStrategy": strategy });
    config["dns"] = dns;
    config["log"] = json!({ "loglevel": "info" });
    config
}

/// Whether a SOCKS connection to `name:port` through `proxy` echoes.
fn echoes(proxy: SocketAddr, name: &str, port: u16) -> bool {
    let Ok(mut s) = socks5(proxy, None, vless::domain(name, port)) else { return false };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    matches!(echo_through(&mut s, b"ping"), Ok(back) if back == b"ping")
}

#[test]
fn use_ipv4_resolves_through_the_dns_object_once_then_from_the_cache() {
    let echo = EchoServer::start();
    let server_dns = DnsServer::start(&[("svc.test", LOCAL)]);
    let dns = json!({ "servers": [{ "address": "127.0.0.1", "port": server_dns.udp().port() }] });
    let server = Shardray::start(&config("UseIPv4", dns), 2);
    let proxy = server.inbound("socks-in");
    for i in 0..4 {
        assert!(echoes(proxy, "svc.test", echo.addr().port()), "connection {i}: {}", server.output());
    }
    // UseIPv4 asks for A only, once: the other connections (both shards) had it from the cache.
    assert_eq!(server_dns.all_queries(), vec![("svc.test".to_string(), 1)]);
}

#[test]
fn disable_cache_asks_every_time() {
    let echo = EchoServer::start();
    let server_dns = DnsServer::start(&[("svc.test", LOCAL)]);
    let dns = json!({ "servers": [format!("udp://{}", server_dns.udp())], "disableCache": true });
    let server = Shardray::start(&config("UseIPv4", dns), 2);
    let proxy = server.inbound("socks-in");
    for i in 0..3 {
        assert!(echoes(proxy, "svc.test", echo.addr().port()), "connection {i}: {}", server.output());
    }
    assert_eq!(server_dns.queries("svc.test"), 3);
}

#[test]
fn answers_are_kept_for_their_ttl_and_not_longer() {
    let echo = EchoServer::start();
    // 2 s: the resolver keeps whole seconds left of what hickory reports, so 1 s would not be kept.
    let server_dns = DnsServer::start_with_ttl(&[("svc.test", LOCAL)], 2);
    let dns = json!({ "servers": [{ "address": "127.0.0.1", "port": server_dns.udp().port() }] });
    let server = Shardray::start(&config("UseIPv4", dns), 2);
    let proxy = server.inbound("socks-in");
    let round = || {
        for i in 0..4 {
            assert!(echoes(proxy, "svc.test", echo.addr().port()), "connection {i}: {}", server.output());
        }
    };
    round();
    assert_eq!(server_dns.queries("svc.test"), 1);
    // Past the TTL, neither the shards nor the control thread reuse the answer.
    thread::sleep(Duration::from_millis(2200));
    round();
    assert_eq!(server_dns.queries("svc.test"), 2, "{}", server.output());
}

#[test]
fn a_server_with_disable_cache_is_asked_every_time() {
    let echo = EchoServer::start();
    let server_dns = DnsServer::start(&[("svc.test", LOCAL)]);
    let dns = json!({ "servers": [{ "address": "127.0.0.1", "port": server_dns.udp().port(), "disableCache": true }] });
    let server = Shardray::start(&config("UseIPv4", dns), 2);
    let proxy = server.inbound("socks-in");
    for i in 0..4 {
        assert!(echoes(proxy, "svc.test", echo.addr().port()), "connection {i}: {}", server.output());
    }
    assert_eq!(server_dns.queries("svc.test"), 4);
}

#[test]
fn hosts_answer_without_a_query_and_a_plain_key_is_a_full_match() {
    let echo = EchoServer::start();
    let server_dns = DnsServer::start(&[]);
    let dns = json!({
        "hosts": { "domain:hosted.test": "127.0.0.1", "plain.test": ["127.0.0.1"], "alias.test": "plain.test" },
        "servers": [server_dns.udp().to_string()]
    });
    let server = Shardray::start(&config("UseIPv4", dns), 2);
    let proxy = server.inbound("socks-in");
    let port = echo.addr().port();
    for name in ["hosted.test", "a.b.hosted.test", "plain.test", "alias.test"] {
        assert!(echoes(proxy, name, port), "{name}: {}", server.output());
    }
    assert_eq!(server_dns.all_queries(), vec![]);
    // A plain key covers only its own name: a subdomain goes to the server (which knows none).
    assert!(!echoes(proxy, "sub.plain.test", port));
    assert_eq!(server_dns.queries("sub.plain.test"), 1);
}

#[test]
fn a_geosite_key_in_hosts_answers_the_lists_names_without_a_query() {
    // V2Ray 4.45.2's own geosite.dat, from the peers' cache.
    std::env::set_var("XRAY_LOCATION_ASSET", shardray_tests::peers::v2ray().parent().unwrap());
    let echo = EchoServer::start();
    let server_dns = DnsServer::start(&[]);
    let dns = json!({ "hosts": { "geosite:github": "127.0.0.1" }, "servers": [server_dns.udp().to_string()] });
    let server = Shardray::start(&config("UseIPv4", dns), 2);
    let proxy = server.inbound("socks-in");
    let port = echo.addr().port();
    for name in ["github.com", "api.github.com"] {
        assert!(echoes(proxy, name, port), "{name}: {}", server.output());
    }
    assert_eq!(server_dns.all_queries(), vec![]);
    // A name outside the list goes to the server (which knows none).
    assert!(!echoes(proxy, "example.org", port));
    assert_eq!(server_dns.queries("example.org"), 1);
}

#[test]
fn domains_pick_the_server_and_expect_ips_passes_a_wrong_answer_on() {
    let echo = EchoServer::start();
    let corp = DnsServer::start(&[("app.corp.test", LOCAL)]);
    let public = DnsServer::start(&[("app.corp.test", Ipv4Addr::new(10, 9, 9, 9)), ("other.test", LOCAL)]);
    let filtered = DnsServer::start(&[("other.test", Ipv4Addr::new(10, 1, 1, 1))]);
    let dns = json!({ "servers": [
        { "address": filtered.udp().ip().to_string(), "port": filtered.udp().port(), "expectIPs": ["127.0.0.0/8"] },
        format!("udp://{}", public.udp()),
        { "address": corp.udp().ip().to_string(), "port": corp.udp().port(), "domains": ["domain:corp.test"] }
    ]});
    let server = Shardray::start(&config("UseIPv4", dns), 2);
    let proxy = server.inbound("socks-in");
    let port = echo.addr().port();
    // The server whose domains match is asked first, and alone since it answers.
    assert!(echoes(proxy, "app.corp.test", port), "{}", server.output());
    assert_eq!((corp.queries("app.corp.test"), public.queries("app.corp.test")), (1, 0));
    assert_eq!(filtered.queries("app.corp.test"), 0);
    // The first fallback answers outside expectIPs: the next one is asked and its answer used.
    assert!(echoes(proxy, "other.test", port), "{}", server.output());
    assert_eq!((filtered.queries("other.test"), public.queries("other.test")), (1, 1));
}

#[test]
fn a_slow_server_holds_up_only_the_sessions_waiting_for_it() {
    let echo = EchoServer::start();
    let slow = DnsServer::start_with(&[("slow.test", LOCAL)], Duration::from_secs(3));
    let fast = DnsServer::start(&[("cached.test", LOCAL)]);
    let dns = json!({
        "hosts": { "hosted.test": "127.0.0.1" },
        "servers": [
            { "address": "127.0.0.1", "port": slow.udp().port(), "domains": ["full:slow.test"], "skipFallback": true },
            { "address": "127.0.0.1", "port": fast.udp().port() }
        ]
    });
    let server = Shardray::start(&config("UseIPv4", dns), 2);
    let proxy = server.inbound("socks-in");
    let port = echo.addr().port();
    assert!(echoes(proxy, "cached.test", port));
    // Sessions to the slow name on both shards, then others while they wait.
    let waiting: Vec<_> =
        (0..4).map(|_| thread::spawn(move || (echoes(proxy, "slow.test", port), Instant::now()))).collect();
    assert!(shardray_tests::wait_until(Duration::from_secs(2), || slow.queries("slow.test") >= 1));
    let started = Instant::now();
    for i in 0..6 {
        let ip = socks5(proxy, None, shardray_wire::addr::Destination::from(echo.addr()))
            .and_then(|mut s| echo_through(&mut s, b"x"));
        assert!(matches!(ip, Ok(ref b) if b == b"x"), "to an IP, {i}");
        assert!(echoes(proxy, "hosted.test", port), "hosts, {i}");
        assert!(echoes(proxy, "cached.test", port), "cached, {i}");
    }
    let others_done = Instant::now();
    assert!(others_done - started < Duration::from_millis(1500), "took {:?}", others_done - started);
    for w in waiting {
        let (ok, done) = w.join().unwrap();
        assert!(ok, "{}", server.output());
        assert!(done > others_done, "a slow session ended before the fast ones");
    }
    assert_eq!(fast.queries("cached.test"), 1);
}

#[test]
fn tcp_servers_are_asked_over_tcp() {
    let echo = EchoServer::start();
    let server_dns = DnsServer::start(&[("svc.test", LOCAL)]);
    let dns = json!({ "servers": [format!("tcp://{}", server_dns.tcp())] });
    let server = Shardray::start(&config("UseIPv4", dns), 2);
    assert!(echoes(server.inbound("socks-in"), "svc.test", echo.addr().port()), "{}", server.output());
    assert_eq!(server_dns.tcp_queries("svc.test"), 1);
}

#[test]
fn tls_servers_are_asked_over_dns_over_tls() {
    let echo = EchoServer::start();
    let server_dns = DnsServer::start(&[("svc.test", LOCAL)]);
    let dir = tempfile::tempdir().unwrap();
    let cert = shardray_tests::tls::SelfSigned::generate(dir.path(), &["127.0.0.1"]);
    let dot = server_dns.serve_tls(&cert);
    let dns = json!({ "servers": [format!("tls://{dot}")] });
    // The test's own CA, as an operator would name a private one (nextest runs each test in a
    // process of its own, which the server inherits this from).
    std::env::set_var("SSL_CERT_FILE", &cert.cert_file);
    let server = Shardray::start(&config("UseIPv4", dns), 2);
    assert!(echoes(server.inbound("socks-in"), "svc.test", echo.addr().port()), "{}", server.output());
    assert_eq!(server_dns.tcp_queries("svc.test"), 1);
}

#[test]
fn https_servers_are_asked_over_dns_over_https() {
    let echo = EchoServer::start();
    let server_dns = DnsServer::start(&[("svc.test", LOCAL)]);
    let dir = tempfile::tempdir().unwrap();
    let cert = shardray_tests::tls::SelfSigned::generate(dir.path(), &["127.0.0.1"]);
    let doh = server_dns.serve_https(&cert, "/resolve");
    std::env::set_var("SSL_CERT_FILE", &cert.cert_file);
    let dns = json!({ "servers": [format!("https://{doh}/resolve")] });
    let server = Shardray::start(&config("UseIPv4", dns), 2);
    assert!(echoes(server.inbound("socks-in"), "svc.test", echo.addr().port()), "{}", server.output());
    assert_eq!(server_dns.tcp_queries("svc.test"), 1);
}

#[test]
fn ip_if_non_match_routes_a_name_by_the_address_the_dns_object_gives() {
    let echo = EchoServer::start();
    let server_dns = DnsServer::start(&[("routed.test", LOCAL), ("elsewhere.test", Ipv4Addr::new(10, 7, 7, 7))]);
    let mut config = config("AsIs", json!({ "servers": [server_dns.udp().to_string()] }));
    // The default (first) outbound drops; only the ip rule reaches the echo server.
    let outbounds = config["outbounds"].as_array_mut().unwrap();
    outbounds.swap(0, 1);
    config["routing"] = json!({ "domainStrategy": "IPIfNonMatch", "rules": [
        { "type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct" }
    ]});
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("socks-in");
    assert!(echoes(proxy, "routed.test", echo.addr().port()), "{}", server.output());
    assert!(!echoes(proxy, "elsewhere.test", echo.addr().port()));
    assert_eq!(server_dns.queries("routed.test"), 2, "A and AAAA, once: {:?}", server_dns.all_queries());
}

#[test]
fn ip_on_demand_resolves_at_the_first_ip_rule_before_later_domain_rules() {
    let echo = EchoServer::start();
    let server_dns = DnsServer::start(&[("routed.test", LOCAL)]);
    let mut config = config("AsIs", json!({ "servers": [server_dns.udp().to_string()] }));
    let outbounds = config["outbounds"].as_array_mut().unwrap();
    outbounds.swap(0, 1);
    // The ip rule comes first: IPOnDemand resolves the name there and it matches, where
    // IPIfNonMatch would take the later domain rule, which drops, without resolving.
    let rules = json!([
        { "type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct" },
        { "type": "field", "domain": ["full:routed.test"], "outboundTag": "blocked" }
    ]);
    for (strategy, reaches, queries) in [("IPOnDemand", true, 2), ("IPIfNonMatch", false, 0)] {
        config["routing"] = json!({ "domainStrategy": strategy, "rules": rules });
        let server = Shardray::start(&config, 2);
        let before = server_dns.queries("routed.test");
        assert_eq!(echoes(server.inbound("socks-in"), "routed.test", echo.addr().port()), reaches, "{strategy}");
        assert_eq!(server_dns.queries("routed.test") - before, queries, "{strategy}: {:?}", server_dns.all_queries());
    }
}

#[test]
fn query_strategy_use_ipv4_asks_for_a_records_only() {
    let echo = EchoServer::start();
    let server_dns = DnsServer::start(&[("svc.test", LOCAL)]);
    // Freedom's UseIP would ask for both; the dns object's strategy leaves AAAA out.
    let dns = json!({ "servers": [server_dns.udp().to_string()], "queryStrategy": "UseIPv4" });
    let server = Shardray::start(&config("UseIP", dns), 2);
    assert!(echoes(server.inbound("socks-in"), "svc.test", echo.addr().port()), "{}", server.output());
    assert_eq!(server_dns.all_queries(), vec![("svc.test".to_owned(), 1)]);
}

#[test]
fn a_localhost_server_is_the_system_resolver() {
    let echo = EchoServer::start();
    // The system resolver knows `localhost` (from /etc/hosts); the dns log names the source.
    let dns = json!({ "servers": ["localhost"] });
    let mut config = config("UseIPv4", dns);
    config["log"]["dnsLog"] = json!(true);
    let server = Shardray::start(&config, 2);
    assert!(echoes(server.inbound("socks-in"), "localhost", echo.addr().port()), "{}", server.output());
    let logged = |out: String| {
        out.lines().any(|l| l.contains("dns: localhost A -> [127.0.0.1]") && l.contains("from localhost"))
    };
    assert!(shardray_tests::wait_until(Duration::from_secs(5), || logged(server.output())), "{}", server.output());
}

/// A dokodemo-door `door` on TCP and UDP to `dest`, routed to a `dns` outbound with `settings`.
fn dns_outbound_config(dest: SocketAddr, settings: Value, dns: Value) -> Value {
    let mut config = socks_config(json!({ "auth": "noauth" }), json!({}));
    config["inbounds"].as_array_mut().unwrap().push(json!({
        "tag": "door", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
        "settings": { "address": dest.ip().to_string(), "port": dest.port(), "network": "tcp,udp" }
    }));
    config["outbounds"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "tag": "dns-out", "protocol": "dns", "settings": settings }));
    config["routing"]["rules"] = json!([{ "type": "field", "inboundTag": ["door"], "outboundTag": "dns-out" }]);
    config["dns"] = dns;
    config
}

fn udp_ask(door: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.send_to(query, door).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf).ok()?;
    assert_eq!(from, door);
    Some(buf[..n].to_vec())
}

#[test]
fn the_dns_outbound_answers_address_queries_from_the_resolver_over_udp_and_tcp() {
    let upstream = DnsServer::start(&[("svc.test", Ipv4Addr::new(192, 0, 2, 9))]);
    let dns = json!({ "hosts": { "hosted.test": "192.0.2.7" }, "servers": [upstream.udp().to_string()] });
    let server = Shardray::start(&dns_outbound_config("8.8.8.8:53".parse().unwrap(), json!({}), dns), 2);
    let door = server.inbound("door");

    let reply = udp_ask(door, &dns::query(0x1234, "hosted.test", 1)).expect("an answer over UDP");
    assert_eq!(dns::parse_response(&reply), Some((0x1234, 0, vec![Ipv4Addr::new(192, 0, 2, 7)])));
    let reply = udp_ask(door, &dns::query(7, "svc.test", 1)).expect("an answer over UDP");
    assert_eq!(dns::parse_response(&reply), Some((7, 0, vec![Ipv4Addr::new(192, 0, 2, 9)])));

    let mut tcp = TcpStream::connect(door).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for id in [1u16, 2] {
        dns::write_framed(&mut tcp, &dns::query(id, "hosted.test", 1)).unwrap();
        let reply = dns::read_framed(&mut tcp).expect("an answer over TCP");
        assert_eq!(dns::parse_response(&reply), Some((id, 0, vec![Ipv4Addr::new(192, 0, 2, 7)])));
    }
    // Not an address query: refused (Xray's default nonIPQuery), and nothing was sent on.
    dns::write_framed(&mut tcp, &dns::query(3, "svc.test", 16)).unwrap();
    let reply = dns::read_framed(&mut tcp).unwrap();
    assert_eq!(dns::parse_response(&reply).map(|(id, rcode, _)| (id, rcode)), Some((3, 5)));
    assert_eq!(upstream.all_queries(), vec![("svc.test".to_string(), 1)]);
}

#[test]
fn the_dns_outbound_answers_with_the_resolvers_rcode() {
    let upstream = DnsServer::start(&[("svc.test", Ipv4Addr::new(192, 0, 2, 9))]);
    // A server that never answers comes first: its silence must not hide the others' answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let servers = json!([{ "address": "127.0.0.1", "port": silent.local_addr().unwrap().port(), "timeoutMs": 300 },
                         upstream.udp().to_string()]);
    let dns = json!({ "servers": servers, "disableCache": true });
    let server = Shardray::start(&dns_outbound_config("8.8.8.8:53".parse().unwrap(), json!({}), dns), 2);
    let door = server.inbound("door");
    let rcode = |id: u16, name: &str, qtype: u16| {
        let reply = udp_ask(door, &dns::query(id, name, qtype)).unwrap_or_else(|| panic!("no answer for {name}"));
        dns::parse_response(&reply).map(|(id, rcode, ips)| (id, rcode, ips.len()))
    };
    // As Xray: NXDOMAIN for a name that does not exist, NOERROR and no answer for a name
    // without an address of the family asked, the server's SERVFAIL passed on.
    assert_eq!(rcode(21, "missing.test", 1), Some((21, 3, 0)), "{}", server.output());
    assert_eq!(rcode(22, "missing.test", 28), Some((22, 3, 0)));
    assert_eq!(rcode(23, "svc.test", 28), Some((23, 0, 0)));
    assert_eq!(rcode(24, "svc.test", 1), Some((24, 0, 1)));
    assert_eq!(rcode(25, "servfail.test", 1), Some((25, 2, 0)));
    assert!(upstream.queries("missing.test") >= 2, "{:?}", upstream.all_queries());

    // No server answers at all: no reply, as Xray (a client's own timeout takes over).
    let dns = json!({ "servers": [{ "address": "127.0.0.1", "port": silent.local_addr().unwrap().port(),
                                   "timeoutMs": 300 }] });
    let server = Shardray::start(&dns_outbound_config("8.8.8.8:53".parse().unwrap(), json!({}), dns), 2);
    assert_eq!(udp_ask(server.inbound("door"), &dns::query(26, "svc.test", 1)), None);
}

#[test]
fn the_dns_outbound_sends_other_queries_on_with_skip() {
    let upstream = DnsServer::start(&[("svc.test", LOCAL)]);
    let settings = json!({ "nonIPQuery": "skip", "address": "127.0.0.1", "port": upstream.udp().port() });
    let dns = json!({ "hosts": { "svc.test": "192.0.2.7" } });
    let server = Shardray::start(&dns_outbound_config("8.8.8.8:53".parse().unwrap(), settings, dns), 2);
    let door = server.inbound("door");
    let reply = udp_ask(door, &dns::query(9, "svc.test", 16)).expect("the upstream's answer");
    assert_eq!(dns::parse_response(&reply).map(|(id, rcode, _)| (id, rcode)), Some((9, 0)));
    assert_eq!(upstream.all_queries(), vec![("svc.test".to_string(), 16)]);
    // An A query is still answered here, from hosts.
    let reply = udp_ask(door, &dns::query(10, "svc.test", 1)).unwrap();
    assert_eq!(dns::parse_response(&reply), Some((10, 0, vec![Ipv4Addr::new(192, 0, 2, 7)])));
}

#[test]
fn dns_log_logs_each_query() {
    let echo = EchoServer::start();
    let server_dns = DnsServer::start(&[("svc.test", LOCAL)]);
    let mut config = config("UseIPv4", json!({ "servers": [server_dns.udp().to_string()] }));
    config["log"]["dnsLog"] = json!(true);
    let server = Shardray::start(&config, 1);
    assert!(echoes(server.inbound("socks-in"), "svc.test", echo.addr().port()));
    let from = format!("from udp://{} in ", server_dns.udp());
    let logged =
        |out: String| out.lines().any(|l| l.contains("dns: svc.test A -> [127.0.0.1] (ttl ") && l.contains(&from));
    assert!(shardray_tests::wait_until(Duration::from_secs(5), || logged(server.output())), "{}", server.output());
}

#[test]
fn a_dns_outbound_added_through_the_api_answers_from_hosts() {
    use shardray_proto::xray::app::proxyman::command as handler;
    use shardray_proto::xray::app::router;
    use shardray_proto::xray::app::router::command as routing;
    use shardray_proto::xray::core::OutboundHandlerConfig;
    use shardray_proto::xray::proxy::dns as pb;
    use shardray_tests::api::{typed, ApiClient};

    let dns = json!({ "hosts": { "hosted.test": "192.0.2.7" } });
    let mut config = dns_outbound_config("8.8.8.8:53".parse().unwrap(), json!({}), dns);
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "RoutingService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    // Xray's rules for `nonIPQuery: "drop"`: hijack A and AAAA, drop the rest.
    let rule =
        |action: pb::RuleAction, qtype: Vec<i32>| pb::DnsRuleConfig { action: action as i32, qtype, domain: vec![] };
    let settings = pb::Config {
        user_level: 0,
        rule: vec![rule(pb::RuleAction::Hijack, vec![1, 28]), rule(pb::RuleAction::Drop, vec![])],
        rewrite_server: None,
    };
    let outbound = OutboundHandlerConfig {
        tag: "dns-api".into(),
        proxy_settings: Some(typed("xray.proxy.dns.Config", &settings)),
        ..Default::default()
    };
    let handler = handler::handler_service_client::HandlerServiceClient::new(api.channel());
    api.block_on(handler.clone().add_outbound(handler::AddOutboundRequest { outbound: Some(outbound) })).unwrap();
    let rule = router::RoutingRule {
        target_tag: Some(router::routing_rule::TargetTag::Tag("dns-api".into())),
        rule_tag: "door-to-api".into(),
        inbound_tag: vec!["door".into()],
        ..Default::default()
    };
    let rules = router::Config { rule: vec![rule], ..Default::default() };
    let req = routing::AddRuleRequest { config: Some(typed("xray.app.router.Config", &rules)), should_append: false };
    let routing = routing::routing_service_client::RoutingServiceClient::new(api.channel());
    api.block_on(routing.clone().add_rule(req)).unwrap();

    let door = server.inbound("door");
    let reply = udp_ask(door, &dns::query(21, "hosted.test", 1)).expect("an answer");
    assert_eq!(dns::parse_response(&reply), Some((21, 0, vec![Ipv4Addr::new(192, 0, 2, 7)])));
    // A TXT query is dropped by this outbound, where the config's one would refuse it.
    assert_eq!(udp_ask(door, &dns::query(22, "hosted.test", 16)), None);
}

#[test]
fn udp_to_a_name_resolves_through_the_dns_object() {
    use shardray_tests::udp::{DatagramPath, Socks5Udp, UdpEcho};
    let echo = UdpEcho::start();
    let server_dns = DnsServer::start(&[("udp.test", LOCAL)]);
    let mut config = config("UseIPv4", json!({ "servers": [server_dns.udp().to_string()] }));
    config["inbounds"][0]["settings"]["udp"] = json!(true);
    let server = Shardray::start(&config, 2);
    let udp = Socks5Udp::associate(server.inbound("socks-in")).unwrap();
    // SOCKS5 UDP header with a domain address (type 3).
    let mut datagram = vec![0, 0, 0, 3, 8];
    datagram.extend_from_slice(b"udp.test");
    datagram.extend_from_slice(&echo.addr().port().to_be_bytes());
    datagram.extend_from_slice(b"over udp");
    udp.send_raw(&datagram).unwrap();
    let (from, payload) = udp.recv().unwrap_or_else(|e| panic!("{e}: {}", server.output()));
    assert_eq!((from, payload.as_slice()), (echo.addr(), &b"over udp"[..]));
    assert_eq!(server_dns.all_queries(), vec![("udp.test".to_string(), 1)]);
}
