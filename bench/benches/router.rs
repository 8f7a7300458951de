//! Router match with 10,000 domain rules and one rule of 100,000 CIDRs.
//!
//! With this many rules the router files them by user and domain; keyword rules are still
//! checked one by one, so the figures still grow with the number of those.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ipnet::{IpNet, Ipv4Net};
use shardray_core::router::{RouteInput, Router};
use shardray_core::spec::{DomainMatcher, RuleSpec};
use shardray_wire::addr::Address;

const DOMAIN_RULES: usize = 10_000;
const CIDRS: u32 = 100_000;

fn domain_rule(i: usize) -> RuleSpec {
    let matcher = match i % 3 {
        0 => DomainMatcher::Domain(format!("site{i}.example")),
        1 => DomainMatcher::Full(format!("www.host{i}.example")),
        _ => DomainMatcher::Keyword(format!("kw{i}-")),
    };
    RuleSpec { domains: vec![matcher], outbound_tag: "proxy".into(), ..RuleSpec::default() }
}

/// The `i`-th /24 counting up from 11.0.0.0 (100,000 of them end inside 12.x.x.x).
fn cidr(i: u32) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(11, 0, 0, 0)) + (i << 8);
    Ipv4Net::new(Ipv4Addr::from(base), 24).expect("valid prefix")
}

fn build_router() -> Router {
    let mut rules: Vec<RuleSpec> = (0..DOMAIN_RULES).map(domain_rule).collect();
    rules.push(RuleSpec {
        ips: (0..CIDRS).map(|i| IpNet::V4(cidr(i))).collect(),
        outbound_tag: "proxy".into(),
        ..RuleSpec::default()
    });
    Router::new(
        &rules,
        |tag| match tag {
            "direct" => Some(0),
            "proxy" => Some(1),
            _ => None,
        },
        |_| None,
    )
    .expect("rules compile")
}

fn input(dest: &Address) -> RouteInput<'_> {
    RouteInput {
        inbound_tag: "in",
        user: Some("user@example"),
        dest,
        resolved: None,
        port: 443,
        tcp: true,
        source: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        source_port: 40000,
        protocol: None,
    }
}

fn router_match(c: &mut Criterion) {
    let router = build_router();
    let last = DOMAIN_RULES - 1; // a Domain matcher (9999 % 3 == 0)
    let last_cidr = cidr(CIDRS - 1);
    let cases = [
        ("domain_last_rule", Address::Domain(format!("cdn.site{last}.example").into()), Some(last)),
        ("domain_no_match", Address::Domain("nothing.matches.invalid".into()), None),
        ("ip_last_cidr", Address::Ip(IpAddr::V4(Ipv4Addr::from(u32::from(last_cidr.addr()) + 1))), Some(DOMAIN_RULES)),
        ("ip_no_match", Address::Ip(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))), None),
    ];
    let mut group = c.benchmark_group("router");
    group.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for (name, dest, want) in &cases {
        assert_eq!(router.route(&input(dest)).rule, *want, "{name} routes as expected");
        group.bench_function(*name, |b| b.iter(|| black_box(router.route(black_box(&input(dest))))));
    }
    group.finish();
}

/// The common shape of large configs: one rule holding a whole list (a geosite category, a
/// country's CIDRs), rather than thousands of one-line rules.
fn router_list_rules(c: &mut Criterion) {
    let domains = (0..DOMAIN_RULES).map(|i| DomainMatcher::Domain(format!("site{i}.example"))).collect();
    let rules = vec![
        RuleSpec { domains, outbound_tag: "proxy".into(), ..RuleSpec::default() },
        RuleSpec {
            ips: (0..CIDRS).map(|i| IpNet::V4(cidr(i))).collect(),
            outbound_tag: "proxy".into(),
            ..RuleSpec::default()
        },
    ];
    let router = Router::new(&rules, |tag| (tag == "proxy").then_some(1), |_| None).expect("rules compile");
    let last_cidr = cidr(CIDRS - 1);
    let cases = [
        ("list_domain_hit", Address::Domain(format!("cdn.site{}.example", DOMAIN_RULES - 1).into()), Some(0)),
        ("list_domain_miss", Address::Domain("nothing.matches.invalid".into()), None),
        ("list_ip_hit", Address::Ip(IpAddr::V4(Ipv4Addr::from(u32::from(last_cidr.addr()) + 1))), Some(1)),
        ("list_ip_miss", Address::Ip(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))), None),
    ];
    let mut group = c.benchmark_group("router_lists");
    group.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for (name, dest, want) in &cases {
        assert_eq!(router.route(&input(dest)).rule, *want, "{name} routes as expected");
        group.bench_function(*name, |b| b.iter(|| black_box(router.route(black_box(&input(dest))))));
    }
    group.finish();
}

criterion_group!(benches, router_match, router_list_rules);

criterion_main!(benches);
