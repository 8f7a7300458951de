//! Tests of config loading: the shared fixtures, and broken configs whose errors must name the
//! right JSON path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_core::spec::{
    ApiListen, DomainMatcher, DomainStrategy, FallbackDest, InboundProtocol, LogLevel, LogTarget, NetworkSet,
    OutboundProtocol, PortRange, RoutingDomainStrategy, TlsVersion, DEFAULT_BUFFER_SIZE,
};
use shardray_wire::addr::{Address, Destination};
use uuid::Uuid;

use super::*;
use shardray_core::spec::{Account, BalancerStrategy, TransportSpec};

const ALICE: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";
const BOB: &str = "0e9a1d2c-4a55-4b8e-9c7e-3f2a0b1c2d3e";
const FAKE_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";
const FAKE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIBfake\n-----END PRIVATE KEY-----\n";

fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures")).join(name)
}

/// A small valid config: one VLESS inbound, two outbounds, one rule.
fn base() -> Value {
    json!({
        "inbounds": [{
            "tag": "vless-in",
            "listen": "127.0.0.1",
            "port": 10086,
            "protocol": "vless",
            "settings": {
                "clients": [{ "id": ALICE, "email": "alice@example.com" }],
                "decryption": "none"
            }
        }],
        "outbounds": [
            { "tag": "direct", "protocol": "freedom" },
            { "tag": "blocked", "protocol": "blackhole" }
        ],
        "routing": { "rules": [{ "ip": ["10.0.0.0/8"], "outboundTag": "blocked" }] }
    })
}

fn load(value: &Value) -> Result<Config, ConfigError> {
    load_str(&value.to_string())
}

/// Applies `edit` to the base config and returns the error it must cause.
fn broken(edit: impl FnOnce(&mut Value)) -> ConfigError {
    let mut v = base();
    edit(&mut v);
    match load(&v) {
        Ok(_) => panic!("config loaded but should not:\n{v:#}"),
        Err(e) => e,
    }
}

fn at<'a>(v: &'a mut Value, pointer: &str) -> &'a mut Value {
    v.pointer_mut(pointer).unwrap_or_else(|| panic!("no {pointer}"))
}

fn set(v: &mut Value, pointer: &str, key: &str, value: Value) {
    at(v, pointer).as_object_mut().expect("an object").insert(key.to_string(), value);
}

fn vless(cfg: &Config, i: usize) -> &shardray_core::spec::VlessInboundSpec {
    match &cfg.inbounds[i].protocol {
        InboundProtocol::Vless(v) => v,
        other => panic!("not vless: {other:?}"),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

// === fixtures ===

#[test]
fn seed_fixture_loads() {
    let cfg = load_file(&fixture("seed-api-config.json")).unwrap();
    let api = cfg.api.as_ref().unwrap();
    assert_eq!(api.tag, "api-in");
    assert_eq!(api.listen, ApiListen::Tcp("127.0.0.1:10000".parse().unwrap()));
    assert_eq!(api.services, ["HandlerService", "StatsService"]);
    assert!(cfg.stats_enabled);
    assert_eq!(cfg.log.level, LogLevel::Warning);

    assert_eq!(cfg.inbounds.len(), 1, "the API inbound is not served by shards");
    let ib = &cfg.inbounds[0];
    assert_eq!(ib.tag, "vless-in");
    assert_eq!(ib.listen, "127.0.0.1:10086".parse::<SocketAddr>().unwrap());
    assert!(ib.tls.is_none());
    let users = &vless(&cfg, 0).clients;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].account, Account::Vless(Uuid::parse_str(ALICE).unwrap(), Default::default()));
    assert_eq!(users[0].email, "alice@example.com");
    assert_eq!(users[0].level, 0);

    let tags: Vec<_> = cfg.outbounds.iter().map(|o| o.tag.as_str()).collect();
    assert_eq!(tags, ["direct", "blocked"]);
    assert!(matches!(cfg.outbounds[0].protocol, OutboundProtocol::Freedom(_)));
    assert!(matches!(cfg.outbounds[1].protocol, OutboundProtocol::Blackhole(_)));

    assert_eq!(cfg.routing.rules.len(), 1);
    assert_eq!(cfg.routing.rules[0].ips, ["127.0.0.1/32".parse().unwrap()]);
    assert_eq!(cfg.routing.rules[0].outbound_tag, "direct");

    let level0 = cfg.policy.level(0);
    assert!(level0.stats_user_uplink && level0.stats_user_downlink && !level0.stats_user_online);
    assert!(cfg.policy.system.stats_inbound_uplink && cfg.policy.system.stats_inbound_downlink);
    assert!(!cfg.policy.system.stats_outbound_uplink);
}

#[test]
fn xray_fixture_loads() {
    let cfg = load_file(&fixture("xray-api-config.json")).unwrap();
    let api = cfg.api.as_ref().unwrap();
    assert_eq!(api.tag, "api");
    assert_eq!(api.listen, ApiListen::Tcp("127.0.0.1:10085".parse().unwrap()));
    assert_eq!(api.services, ["HandlerService", "LoggerService", "StatsService", "RoutingService"]);
    assert_eq!(cfg.inbounds.len(), 1);
    assert_eq!(cfg.inbounds[0].tag, "vless-in");
    assert_eq!(vless(&cfg, 0).clients[0].email, "alice@example.com");
    // The rule to the API's tag is dropped: control serves the API itself.
    assert_eq!(cfg.routing.rules.len(), 1);
    assert_eq!(cfg.routing.rules[0].outbound_tag, "direct");
    assert!(cfg.policy.level(0).stats_user_online);
    assert!(cfg.policy.system.stats_outbound_downlink);
}

// === accepted forms ===

#[test]
fn comments_of_every_kind_are_accepted() {
    let text = format!(
        r#"// line comment
        /* block
           comment */
        # shell-style comment
        {{
          "inbounds": [{{ "port": 443, "protocol": "vless", /* inline */ "tag": "a#b//c",
            "settings": {{ "clients": [{{ "id": "{ALICE}" }}], "decryption": "none" }} }}],
          "outbounds": [{{ "protocol": "freedom" }}] // trailing
        }}"#
    );
    let cfg = load_str(&text).unwrap();
    assert_eq!(cfg.inbounds[0].tag, "a#b//c", "comment markers inside strings stay");
    assert_eq!(cfg.inbounds[0].listen, "0.0.0.0:443".parse::<SocketAddr>().unwrap());
}

#[test]
fn defaults_fill_what_is_absent() {
    let cfg = load(&base()).unwrap();
    assert_eq!(cfg.log.level, LogLevel::Warning);
    assert_eq!(cfg.log.access, LogTarget::Stdout);
    assert!(cfg.api.is_none());
    assert!(!cfg.stats_enabled);
    assert_eq!(cfg.policy.level(0).buffer_size, DEFAULT_BUFFER_SIZE);
    assert_eq!(cfg.routing.domain_strategy, RoutingDomainStrategy::AsIs);
}

#[test]
fn short_string_ids_map_to_uuid_v5_as_upstream() {
    let cfg = load(&{
        let mut v = base();
        set(&mut v, "/inbounds/0/settings/clients/0", "id", json!("alice"));
        v
    })
    .unwrap();
    let Account::Vless(id, _) = vless(&cfg, 0).clients[0].account else { panic!("a VLESS account") };
    assert_eq!(id.get_version_num(), 5);
    // SHA-1 of 16 zero bytes then "alice", first 16 bytes, version and variant bits set
    // (computed independently with Python's hashlib).
    assert_eq!(id, Uuid::parse_str("ec61d669-fc85-586b-a097-822a49b51e7e").unwrap());
    assert_eq!(super::inbound::parse_user_id("alice"), Some(id));
    assert_eq!(super::inbound::parse_user_id(&"x".repeat(31)), None);
    assert_eq!(super::inbound::parse_user_id(""), None);
    let simple = ALICE.replace('-', "");
    assert_eq!(super::inbound::parse_user_id(&simple), Uuid::parse_str(ALICE).ok());
}

#[test]
fn log_policy_and_sections_parse() {
    let mut v = base();
    set(
        &mut v,
        "",
        "log",
        json!({ "loglevel": "Debug", "access": "/var/log/a.log",
        "error": "none", "dnsLog": true, "maskAddress": "half" }),
    );
    set(&mut v, "", "dns", json!({}));
    set(
        &mut v,
        "",
        "policy",
        json!({ "levels": {
        "0": { "handshake": 2, "connIdle": 60, "bufferSize": 0 },
        "1": { "bufferSize": 1000000 },
        "2": { "bufferSize": 64 },
        "3": { "bufferSize": -1 } } }),
    );
    let cfg = load(&v).unwrap();
    assert_eq!(cfg.log.level, LogLevel::Debug);
    assert_eq!(cfg.log.access, LogTarget::File("/var/log/a.log".into()));
    assert_eq!(cfg.log.error, LogTarget::Discard);
    assert!(cfg.log.dns_log);
    let l0 = cfg.policy.level(0);
    assert_eq!(l0.handshake, Duration::from_secs(2));
    assert_eq!(l0.conn_idle, Duration::from_secs(60));
    assert_eq!(l0.uplink_only, Duration::from_secs(2));
    assert_eq!(l0.buffer_size, 4 * 1024);
    assert_eq!(cfg.policy.level(1).buffer_size, 4 * 1024 * 1024);
    assert_eq!(cfg.policy.level(2).buffer_size, 64 * 1024);
    assert_eq!(cfg.policy.level(3).buffer_size, DEFAULT_BUFFER_SIZE);
}

#[test]
fn rules_parse_every_condition() {
    let mut v = base();
    set(
        &mut v,
        "",
        "routing",
        json!({
            "domainStrategy": "IPIfNonMatch",
            "domainMatcher": "hybrid",
            "rules": [{
                "type": "field",
                "ruleTag": "r1",
                "inboundTag": "vless-in",
                "user": ["alice@example.com"],
                "domain": ["full:Example.com", "domain:example.org", "keyword:ads", "regexp:^a+\\.b$", "plain"],
                "ip": ["geoip:private", "1.2.3.4", "2001:db8::/32"],
                "port": "53,443,1000-2000",
                "network": "tcp,udp",
                "source": "192.0.2.0/24",
                "sourcePort": 1234,
                "outboundTag": "direct"
            }, { "port": 80, "network": ["tcp"], "outboundTag": "blocked" }]
        }),
    );
    let cfg = load(&v).unwrap();
    assert_eq!(cfg.routing.domain_strategy, RoutingDomainStrategy::IpIfNonMatch);
    let r = &cfg.routing.rules[0];
    assert_eq!(r.rule_tag, "r1");
    assert_eq!(r.inbound_tags, ["vless-in"]);
    assert_eq!(r.users, ["alice@example.com"]);
    assert_eq!(
        r.domains,
        [
            DomainMatcher::Full("example.com".into()),
            DomainMatcher::Domain("example.org".into()),
            DomainMatcher::Keyword("ads".into()),
            DomainMatcher::Regex("^a+\\.b$".into()),
            DomainMatcher::Keyword("plain".into()),
        ]
    );
    assert_eq!(r.ips.len(), 10 + 2);
    assert!(r.ips.contains(&"172.16.0.0/12".parse().unwrap()));
    assert!(r.ips.contains(&"::1/128".parse().unwrap()));
    assert!(r.ips.contains(&"1.2.3.4/32".parse().unwrap()));
    assert_eq!(
        r.ports,
        [PortRange { from: 53, to: 53 }, PortRange { from: 443, to: 443 }, PortRange { from: 1000, to: 2000 },]
    );
    assert_eq!(r.network, Some(NetworkSet { tcp: true, udp: true }));
    assert_eq!(r.source_ips, ["192.0.2.0/24".parse().unwrap()]);
    assert_eq!(r.source_ports, [PortRange { from: 1234, to: 1234 }]);
    assert_eq!(cfg.routing.rules[1].network, Some(NetworkSet { tcp: true, udp: false }));
}

#[test]
fn tls_certificates_are_read_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", FAKE_CERT);
    let key = write(dir.path(), "key.pem", &FAKE_KEY.replace("PRIVATE", "EC PRIVATE"));
    let mut v = base();
    set(
        &mut v,
        "/inbounds/0",
        "streamSettings",
        json!({
            "network": "raw",
            "security": "tls",
            "tlsSettings": {
                "serverName": "example.com",
                "minVersion": "1.2",
                "maxVersion": "1.3",
                "fingerprint": "chrome",
                "certificates": [
                    { "certificateFile": cert, "keyFile": key },
                    { "certificate": FAKE_CERT.lines().collect::<Vec<_>>(),
                      "key": FAKE_KEY.lines().collect::<Vec<_>>() }
                ]
            },
            "rawSettings": { "header": { "type": "none" } },
            "sockopt": { "tcpFastOpen": true }
        }),
    );
    let cfg = load(&v).unwrap();
    let tls = cfg.inbounds[0].tls.as_ref().unwrap();
    assert_eq!(tls.server_name, "example.com");
    assert_eq!(tls.alpn, ["h2", "http/1.1"]);
    assert_eq!(tls.min_version, Some(TlsVersion::V1_2));
    assert_eq!(tls.max_version, Some(TlsVersion::V1_3));
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(tls.certificates[0].chain_pem, FAKE_CERT.as_bytes());
    assert_eq!(tls.certificates[1].key_pem, FAKE_KEY.as_bytes());
}

#[test]
fn fallbacks_and_dokodemo_parse() {
    let mut v = base();
    set(
        &mut v,
        "/inbounds/0/settings",
        "fallbacks",
        json!([
            { "dest": 80 },
            { "path": "/ws", "dest": "example.com:8080", "xver": 1 },
            { "alpn": "h2", "dest": "@vless-h2" },
            { "name": "a.example", "dest": "/dev/shm/h1.sock", "xver": 2 }
        ]),
    );
    at(&mut v, "/inbounds").as_array_mut().unwrap().push(json!({
        "tag": "fwd", "port": "5353", "protocol": "tunnel",
        "settings": { "address": "1.1.1.1", "port": 53, "network": "tcp,udp", "userLevel": 1 }
    }));
    let cfg = load(&v).unwrap();
    let fb = &vless(&cfg, 0).fallbacks;
    assert_eq!(fb[0].dest, FallbackDest::Tcp(Destination::from("127.0.0.1:80".parse::<SocketAddr>().unwrap())));
    assert_eq!(fb[1].dest, FallbackDest::Tcp(Destination { addr: Address::Domain("example.com".into()), port: 8080 }));
    assert_eq!((fb[1].path.as_str(), fb[1].xver), ("/ws", 1));
    assert_eq!(fb[2].dest, FallbackDest::Unix("@vless-h2".into()));
    assert_eq!(fb[3].dest, FallbackDest::Unix("/dev/shm/h1.sock".into()));
    match &cfg.inbounds[1].protocol {
        InboundProtocol::Dokodemo(d) => {
            assert_eq!(d.destination, Destination::from("1.1.1.1:53".parse::<SocketAddr>().unwrap()));
            assert_eq!(d.user_level, 1);
        }
        other => panic!("not dokodemo: {other:?}"),
    }
    assert_eq!(cfg.inbounds[1].listen.port(), 5353);
}

#[test]
fn outbound_settings_parse() {
    let mut v = base();
    set(
        &mut v,
        "",
        "outbounds",
        json!([
            { "tag": "direct", "protocol": "freedom", "sendThrough": "192.0.2.1",
              "settings": { "domainStrategy": "ForceIPv4", "redirect": "127.0.0.1:0", "userLevel": 2 },
              "mux": { "enabled": false, "concurrency": 8 },
              "streamSettings": { "network": "tcp", "security": "none" } },
            { "tag": "blocked", "protocol": "blackhole", "settings": { "response": { "type": "http" } } }
        ]),
    );
    let cfg = load(&v).unwrap();
    let direct = &cfg.outbounds[0];
    assert_eq!(direct.send_through, Some("192.0.2.1".parse().unwrap()));
    match &direct.protocol {
        OutboundProtocol::Freedom(f) => {
            assert_eq!(f.domain_strategy, DomainStrategy::UseIpv4);
            assert_eq!(f.redirect, Some(Destination::from("127.0.0.1:0".parse::<SocketAddr>().unwrap())));
            assert_eq!(f.user_level, 2);
        }
        other => panic!("not freedom: {other:?}"),
    }
    match &cfg.outbounds[1].protocol {
        OutboundProtocol::Blackhole(b) => assert!(b.http_response),
        other => panic!("not blackhole: {other:?}"),
    }
}

#[test]
fn api_listen_wins_over_the_api_inbound() {
    let mut v = base();
    set(&mut v, "", "api", json!({ "tag": "api", "listen": "127.0.0.1:9999", "services": ["StatsService"] }));
    at(&mut v, "/inbounds").as_array_mut().unwrap().push(json!({
        "tag": "api", "listen": "127.0.0.1", "port": 10085, "protocol": "dokodemo-door",
        "settings": { "address": "127.0.0.1" }
    }));
    let cfg = load(&v).unwrap();
    let api = cfg.api.unwrap();
    assert_eq!(api.listen, ApiListen::Tcp("127.0.0.1:9999".parse().unwrap()));
    assert_eq!(cfg.inbounds.len(), 1);

    let mut v = base();
    set(&mut v, "", "api", json!({ "tag": "api", "listen": "/run/shardray/api.sock" }));
    assert_eq!(load(&v).unwrap().api.unwrap().listen, ApiListen::Unix("/run/shardray/api.sock".into()));
}

#[test]
fn api_and_metrics_refuse_abstract_sockets() {
    // No file, so no mode: any local process could call the API.
    for (key, path) in [("api", "api.listen"), ("metrics", "metrics.listen")] {
        let err = broken(|v| set(v, "", key, json!({ "tag": key, "listen": "@shardray-api" })));
        assert_eq!(err.path, path);
        assert!(err.to_string().contains("abstract socket"), "{err}");
    }
}

#[test]
fn metrics_listen_and_our_keys() {
    let mut v = base();
    set(&mut v, "", "metrics", json!({ "listen": "127.0.0.1:11111" }));
    let m = load(&v).unwrap().metrics.unwrap();
    // Xray's default tag when only listen is set.
    assert_eq!(m.tag, "Metrics");
    assert_eq!(m.listen, ApiListen::Tcp("127.0.0.1:11111".parse().unwrap()));
    assert!(!m.user_series);
    assert_eq!(m.max_user_series, shardray_core::spec::DEFAULT_MAX_USER_SERIES);

    let mut v = base();
    set(
        &mut v,
        "",
        "metrics",
        json!({ "listen": "/run/shardray/metrics.sock", "userSeries": true, "maxUserSeries": 5 }),
    );
    let m = load(&v).unwrap().metrics.unwrap();
    assert_eq!(m.listen, ApiListen::Unix("/run/shardray/metrics.sock".into()));
    assert!(m.user_series);
    assert_eq!(m.max_user_series, 5);
}

/// A UDP-only dokodemo-door may share a TCP listener's port (007.json of the real-world
/// corpus puts one on its API's port, as Xray allows); sharing a network clashes.
#[test]
fn listeners_clash_only_on_a_network_they_share() {
    let inbound = |network: &str| {
        json!({ "listen": "127.0.0.1", "port": 10086, "protocol": "dokodemo-door",
                "settings": { "address": "192.0.2.1", "port": 53, "network": network } })
    };
    let mut v = base();
    at(&mut v, "/inbounds").as_array_mut().unwrap().push(inbound("udp"));
    assert_eq!(load(&v).unwrap().inbounds.len(), 2);
    let err = broken(|v| at(v, "/inbounds").as_array_mut().unwrap().push(inbound("tcp,udp")));
    assert_eq!(err.path, "inbounds[1].port");
    assert!(err.to_string().contains("already taken by inbounds[0].port"), "{err}");
}

#[test]
fn metrics_refuses_what_it_must() {
    let err = broken(|v| set(v, "", "metrics", json!({ "listen": "0.0.0.0:11111" })));
    assert_eq!(err.path, "metrics.listen");
    assert!(err.to_string().contains("loopback or a Unix socket only"), "{err}");
    let err = broken(|v| set(v, "", "metrics", json!({})));
    assert_eq!(err.to_string(), "metrics: Metrics must have a tag or listen address.");
    let err = broken(|v| set(v, "", "metrics", json!({ "listen": "127.0.0.1:10086" })));
    assert_eq!(err.path, "metrics.listen");
    assert!(err.to_string().contains("already taken by inbounds[0].port"), "{err}");
    let err = broken(|v| set(v, "", "metrics", json!({ "listen": "127.0.0.1:1", "maxUserSeries": -1 })));
    assert_eq!(err.path, "metrics.maxUserSeries");
    let err = broken(|v| set(v, "", "metrics", json!({ "tag": "direct", "listen": "127.0.0.1:1" })));
    assert_eq!(err.to_string(), "outbounds[0].tag: \"direct\" is the metrics tag");
}

#[test]
fn metrics_through_a_routed_dokodemo_inbound_as_xray() {
    let mut v = base();
    set(&mut v, "", "metrics", json!({ "tag": "metrics_out" }));
    at(&mut v, "/inbounds").as_array_mut().unwrap().push(json!({
        "tag": "metrics_in", "listen": "127.0.0.1", "port": 11111, "protocol": "dokodemo-door",
        "settings": { "address": "127.0.0.1" }
    }));
    at(&mut v, "/routing/rules")
        .as_array_mut()
        .unwrap()
        .insert(0, json!({ "type": "field", "inboundTag": ["metrics_in"], "outboundTag": "metrics_out" }));
    let cfg = load(&v).unwrap();
    let m = cfg.metrics.unwrap();
    assert_eq!(m.tag, "metrics_out");
    assert_eq!(m.listen, ApiListen::Tcp("127.0.0.1:11111".parse().unwrap()));
    // The shards neither serve the metrics inbound nor route to the metrics outbound.
    assert_eq!(cfg.inbounds.len(), 1);
    assert!(cfg.routing.rules.iter().all(|r| r.outbound_tag != "metrics_out"));

    // A non-loopback metrics inbound is refused by its path.
    at(&mut v, "/inbounds/1")["listen"] = json!("0.0.0.0");
    let err = load(&v).unwrap_err();
    assert_eq!(err.path, "inbounds[1].listen");

    // A tag nothing routes to loads, as in Xray, with a note, and serves nothing.
    let mut v = base();
    set(&mut v, "", "metrics", json!({ "tag": "metrics_out" }));
    let cfg = load(&v).unwrap();
    assert!(cfg.metrics.is_none());
    assert!(cfg.notes.iter().any(|n| n.starts_with("metrics.tag:")), "{:?}", cfg.notes);
}

// === config directories ===

#[test]
fn confdir_merges_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "00-base.json", &base().to_string());
    // A later file: replaces the inbound tagged "vless-in", adds an outbound and a rule, and
    // sets a scalar.
    write(
        dir.path(),
        "10-more.json",
        &format!(
            r#"// comments work in every file
            {{
              "log": {{ "loglevel": "error" }},
              "inbounds": [{{ "tag": "vless-in", "port": 20086, "protocol": "vless",
                "settings": {{ "clients": [{{ "id": "{BOB}", "email": "bob" }}], "decryption": "none" }} }}],
              "outbounds": [{{ "tag": "direct2", "protocol": "freedom" }}],
              "routing": {{ "rules": [{{ "port": 25, "outboundTag": "blocked" }}] }}
            }}"#
        ),
    );
    write(dir.path(), "notes.txt", "not json, not read");
    let cfg = load_dir(dir.path()).unwrap();
    assert_eq!(cfg.log.level, LogLevel::Error);
    assert_eq!(cfg.inbounds.len(), 1);
    assert_eq!(cfg.inbounds[0].listen.port(), 20086);
    assert_eq!(vless(&cfg, 0).clients[0].email, "bob");
    let tags: Vec<_> = cfg.outbounds.iter().map(|o| o.tag.as_str()).collect();
    assert_eq!(tags, ["direct", "blocked", "direct2"]);
    assert_eq!(cfg.routing.rules.len(), 2);
    assert_eq!(cfg.routing.rules[1].ports, [PortRange { from: 25, to: 25 }]);
}

#[test]
fn confdir_errors_name_their_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.json", &base().to_string());
    let bad = write(dir.path(), "b.json", r#"{ "inbounds": [{ "tag": 7, "protocol": "vless" }] }"#);
    let err = load_dir(dir.path()).unwrap_err();
    assert_eq!(err.path, "inbounds[0].tag");
    assert_eq!(err.file.as_deref(), Some(bad.as_path()));

    let syntax = write(dir.path(), "c.json", "{ \"log\": { } ");
    let err = load_files(&[dir.path().join("a.json"), syntax.clone()]).unwrap_err();
    assert_eq!(err.kind, ConfigErrorKind::Syntax);
    assert_eq!(err.path, syntax.display().to_string());

    let empty = tempfile::tempdir().unwrap();
    assert!(load_dir(empty.path()).unwrap_err().message.contains("no *.json"));
}

// === broken configs: each error names its path ===

#[test]
fn bad_uuid() {
    let long = "this-is-not-a-uuid-and-it-is-too-long";
    let err = broken(|v| set(v, "/inbounds/0/settings/clients/0", "id", json!(long)));
    assert_eq!(err.path, "inbounds[0].settings.clients[0].id");
    assert_eq!(err.to_string(), format!("inbounds[0].settings.clients[0].id: invalid UUID {long:?}"));
    assert_eq!(err.kind, ConfigErrorKind::Invalid);
}

/// The warnings a config loads with.
fn ignored(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut v = base();
    edit(&mut v);
    load(&v).unwrap_or_else(|e| panic!("config did not load: {e}\n{v:#}")).ignored_keys
}

#[test]
fn unknown_keys_are_ignored_with_their_path_and_the_key_meant() {
    let warnings = ignored(|v| set(v, "/inbounds/0/settings/clients/0", "emial", json!("a@b")));
    assert_eq!(warnings, ["inbounds[0].settings.clients[0].emial: unknown key ignored (did you mean \"email\"?)"]);
    // A key far from every known one gets no suggestion; several at once are all reported.
    let warnings = ignored(|v| {
        set(v, "", "stats", json!({ "x": 1 }));
        set(v, "/inbounds/0", "allocatee", json!({}));
        set(v, "/inbounds/0/settings", "zzzzzzzz", json!(true));
    });
    assert_eq!(
        warnings,
        [
            "inbounds[0].allocatee: unknown key ignored (did you mean \"allocate\"?)",
            "stats.x: unknown key ignored",
            "inbounds[0].settings.zzzzzzzz: unknown key ignored",
        ]
    );
    // The same key in many clients is one warning, and the clients still load.
    let mut v = base();
    let clients: Vec<Value> = (0..500)
        .map(|i| json!({ "id": format!("b831381d-6324-4d53-ad4f-8cda48b3{i:04}"), "email": format!("u{i}"), "x": i }))
        .collect();
    set(&mut v, "/inbounds/0/settings", "clients", json!(clients));
    let cfg = load(&v).unwrap();
    assert_eq!(vless(&cfg, 0).clients.len(), 500);
    assert_eq!(
        cfg.ignored_keys,
        ["inbounds[0].settings.clients[0].x: unknown key ignored (also in 499 more elements of its list)"]
    );
    // Through the API's path (one inbound), unknown keys stay errors.
    let mut inbound = base()["inbounds"][0].clone();
    inbound["emial"] = json!("a@b");
    let err = crate::config::load_inbound(inbound, "inbound").unwrap_err();
    assert_eq!(err.path, "inbound.emial");
}

#[test]
fn panel_bookkeeping_in_a_client_is_ignored() {
    let mut v = base();
    let client = at(&mut v, "/inbounds/0/settings/clients/0").as_object_mut().unwrap();
    for (k, val) in [
        ("limitIp", json!(2)),
        ("totalGB", json!(0)),
        ("expiryTime", json!(1735689600000u64)),
        ("enable", json!(true)),
        ("tgId", json!("")),
        ("subId", json!("abc")),
        ("comment", json!("vip")),
        ("reset", json!(0)),
    ] {
        client.insert(k.into(), val);
    }
    let cfg = load(&v).expect("3x-ui style clients load");
    assert_eq!(vless(&cfg, 0).clients.len(), 1);
}

#[test]
fn unknown_keys_in_stream_settings_and_top_level_are_ignored() {
    let warnings = ignored(|v| set(v, "/inbounds/0", "streamSettings", json!({ "netwrk": "tcp" })));
    assert_eq!(warnings, ["inbounds[0].streamSettings.netwrk: unknown key ignored (did you mean \"network\"?)"]);
    let warnings = ignored(|v| set(v, "", "inbound", json!({})));
    assert_eq!(warnings, ["inbound: unknown key ignored (did you mean \"inbounds\"?)"]);
}

#[test]
fn wrong_type_names_the_field() {
    let err = broken(|v| set(v, "/inbounds/0/settings/clients/0", "level", json!("high")));
    assert_eq!(err.path, "inbounds[0].settings.clients[0].level");
    let err = broken(|v| set(v, "", "policy", json!({ "levels": { "0": { "handshake": "4" } } })));
    assert_eq!(err.path, "policy.levels.0.handshake");
    let err = broken(|v| set(v, "", "policy", json!({ "levels": { "one": {} } })));
    assert_eq!(err.path, "policy.levels.one");
}

#[test]
fn trusted_hops_are_addresses_and_networks() {
    let mut v = base();
    set(
        &mut v,
        "",
        "policy",
        json!({ "system": { "trustedHops": ["173.245.48.0/20", "2400:cb00::/32", "10.0.0.5"] } }),
    );
    let system = load(&v).unwrap().policy.system;
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert!(system.is_trusted_hop(ip("173.245.63.1")) && system.is_trusted_hop(ip("::ffff:173.245.48.9")));
    assert!(system.is_trusted_hop(ip("2400:cb00:1::2")) && system.is_trusted_hop(ip("10.0.0.5")));
    assert!(!system.is_trusted_hop(ip("10.0.0.6")) && !system.is_trusted_hop(ip("173.245.64.0")));
    assert!(!load(&base()).unwrap().policy.system.is_trusted_hop(ip("127.0.0.1")), "none by default");
    let err = broken(|v| set(v, "", "policy", json!({ "system": { "trustedHops": ["1.2.3.4", "cdn.example"] } })));
    assert_eq!(err.path, "policy.system.trustedHops[1]");
}

#[test]
fn protocol_not_served_yet() {
    let err = broken(|v| set(v, "/inbounds/0", "protocol", json!("wireguard")));
    assert_eq!(err.to_string(), "inbounds[0].protocol: \"wireguard\" is not supported yet");
    assert_eq!(err.kind, ConfigErrorKind::Unsupported);
    let err = broken(|v| set(v, "/outbounds/1", "protocol", json!("wireguard")));
    assert_eq!(err.path, "outbounds[1].protocol");
    let err = broken(|v| set(v, "/inbounds/0", "protocol", json!("bogus")));
    assert_eq!(err.kind, ConfigErrorKind::Invalid);
}

#[test]
fn missing_decryption() {
    let err = broken(|v| {
        at(v, "/inbounds/0/settings").as_object_mut().unwrap().remove("decryption");
    });
    assert_eq!(err.path, "inbounds[0].settings.decryption");
}

#[test]
fn bad_ports() {
    let err = broken(|v| set(v, "/inbounds/0", "port", json!(70000)));
    assert_eq!(err.path, "inbounds[0].port");
    let err = broken(|v| set(v, "/inbounds/0", "port", json!("1000-2000")));
    assert_eq!(err.to_string(), "inbounds[0].port: port ranges are not supported yet");
    let err = broken(|v| {
        at(v, "/inbounds/0").as_object_mut().unwrap().remove("port");
    });
    assert_eq!(err.to_string(), "inbounds[0].port: missing");
    let err = broken(|v| set(v, "/routing/rules/0", "port", json!("2000-1000")));
    assert_eq!(err.path, "routing.rules[0].port");
}

#[test]
fn bad_cidr_and_geoip() {
    let err = broken(|v| set(v, "/routing/rules/0", "ip", json!(["10.0.0.0/8", "10.0.0.0/33"])));
    assert_eq!(err.path, "routing.rules[0].ip[1]");
    // A list that no geoip.dat here holds (or no geoip.dat at all): named with its file.
    let err = broken(|v| set(v, "/routing/rules/0", "source", json!(["geoip:no-such-country"])));
    assert_eq!(err.path, "routing.rules[0].source[0]");
    assert_eq!(err.kind, ConfigErrorKind::Invalid);
    assert!(err.to_string().contains("geoip.dat"), "{err}");
}

#[test]
fn bad_regexp_and_geosite() {
    let err = broken(|v| set(v, "/routing/rules/0", "domain", json!(["regexp:a(b"])));
    assert_eq!(err.path, "routing.rules[0].domain[0]");
    let err = broken(|v| set(v, "/routing/rules/0", "domains", json!(["full:a.com", "geosite:no-such-list"])));
    assert_eq!(err.path, "routing.rules[0].domains[1]");
    assert_eq!(err.kind, ConfigErrorKind::Invalid);
    assert!(err.to_string().contains("geosite.dat"), "{err}");
}

#[test]
fn rule_without_condition_or_to_an_unknown_balancer() {
    // (A rule to an unknown outbound loads: `what_xray_reads_leniently_loads_with_a_note`.)
    let err = broken(|v| {
        at(v, "/routing/rules/0").as_object_mut().unwrap().remove("ip");
    });
    assert_eq!(err.path, "routing.rules[0]");
    let err = broken(|v| {
        at(v, "/routing/rules/0").as_object_mut().unwrap().remove("outboundTag");
        set(v, "/routing/rules/0", "balancerTag", json!("b"));
    });
    assert_eq!(err.path, "routing.rules[0].balancerTag");
}

#[test]
fn balancers_random_and_round_robin() {
    let mut v = base();
    set(
        &mut v,
        "/routing",
        "balancers",
        json!([
            { "tag": "any", "selector": ["dir"] },
            { "tag": "rr", "selector": ["dir", "bl"], "strategy": { "type": "roundRobin" }, "fallbackTag": "direct" }
        ]),
    );
    at(&mut v, "/routing/rules").as_array_mut().unwrap().push(json!({ "port": 443, "balancerTag": "rr" }));
    let cfg = load(&v).unwrap();
    let b = &cfg.routing.balancers;
    assert_eq!(b.len(), 2);
    assert_eq!((b[0].strategy, b[1].strategy), (BalancerStrategy::Random, BalancerStrategy::RoundRobin));
    assert_eq!(b[1].selectors, ["dir", "bl"]);
    assert_eq!(b[1].fallback_tag, "direct");
    let last = cfg.routing.rules.last().unwrap();
    assert_eq!((last.balancer_tag.as_str(), last.outbound_tag.as_str()), ("rr", ""));

    for (strategy, kind) in [("leastPing", ConfigErrorKind::Unsupported), ("leastLoad", ConfigErrorKind::Unsupported)] {
        let err = broken(|v| {
            set(
                v,
                "/routing",
                "balancers",
                json!([{ "tag": "b", "selector": ["d"], "strategy": { "type": strategy } }]),
            )
        });
        assert_eq!(err.path, "routing.balancers[0].strategy.type");
        assert_eq!(err.kind, kind);
    }
    let err = broken(|v| set(v, "/routing", "balancers", json!([{ "tag": "b", "selector": [] }])));
    assert_eq!(err.path, "routing.balancers[0].selector");
    let err = broken(|v| {
        set(v, "/routing", "balancers", json!([{ "tag": "b", "selector": ["d"] }, { "tag": "b", "selector": ["d"] }]))
    });
    assert_eq!(err.path, "routing.balancers[1].tag");
    let warnings = ignored(|v| set(v, "/routing", "balancers", json!([{ "tag": "b", "selector": ["d"], "nope": 1 }])));
    assert_eq!(warnings, ["routing.balancers[0].nope: unknown key ignored"]);
}

#[test]
fn duplicate_tags() {
    let err = broken(|v| {
        let second = at(v, "/inbounds/0").clone();
        let list = at(v, "/inbounds").as_array_mut().unwrap();
        list.push(second);
        set(v, "/inbounds/1", "port", json!(10087));
    });
    assert_eq!(err.path, "inbounds[1].tag");
    let err = broken(|v| set(v, "/outbounds/1", "tag", json!("direct")));
    assert_eq!(err.path, "outbounds[1].tag");
}

#[test]
fn same_listen_address_twice() {
    let err = broken(|v| {
        let mut second = at(v, "/inbounds/0").clone();
        second["tag"] = json!("other");
        second["listen"] = json!("0.0.0.0");
        at(v, "/inbounds").as_array_mut().unwrap().push(second);
    });
    assert_eq!(err.path, "inbounds[1].port");
}

#[test]
fn duplicate_client_id_and_email() {
    let err = broken(|v| {
        at(v, "/inbounds/0/settings/clients").as_array_mut().unwrap().push(json!({ "id": ALICE }));
    });
    assert_eq!(err.path, "inbounds[0].settings.clients[1].id");
    let err = broken(|v| {
        at(v, "/inbounds/0/settings/clients")
            .as_array_mut()
            .unwrap()
            .push(json!({ "id": BOB, "email": "Alice@Example.com" }));
    });
    assert_eq!(err.path, "inbounds[0].settings.clients[1].email");
}

#[test]
fn missing_certificate_file() {
    let err = broken(|v| {
        set(
            v,
            "/inbounds/0",
            "streamSettings",
            json!({ "security": "tls", "tlsSettings": {
                "certificates": [{ "certificateFile": "/nonexistent/x.pem", "keyFile": "/nonexistent/x.key" }]
            }}),
        )
    });
    assert_eq!(
        err.to_string(),
        "inbounds[0].streamSettings.tlsSettings.certificates[0].certificateFile: cannot read \
         \"/nonexistent/x.pem\": No such file or directory"
    );
    assert_eq!(err.kind, ConfigErrorKind::Io);
}

#[test]
fn certificate_file_without_pem() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", FAKE_CERT);
    let key = write(dir.path(), "key.pem", "not a key");
    let err = broken(|v| {
        set(
            v,
            "/inbounds/0",
            "streamSettings",
            json!({ "security": "tls", "tlsSettings": {
            "certificates": [{ "certificateFile": cert, "keyFile": key }] }}),
        )
    });
    assert_eq!(err.path, "inbounds[0].streamSettings.tlsSettings.certificates[0].keyFile");
    assert!(err.message.contains("no PEM private key"), "{err}");
}

#[test]
fn sniffing_enabled() {
    let sniffing = |s: Value| {
        let mut v = base();
        set(&mut v, "/inbounds/0", "sniffing", s);
        load(&v).map(|c| c.inbounds[0].sniffing.clone())
    };
    let spec = sniffing(json!({ "enabled": true, "destOverride": ["http", "TLS", "ssl", "quic", "fakedns"],
        "routeOnly": true, "domainsExcluded": ["courier.push.apple.com", "domain:example.org"] }))
    .unwrap()
    .unwrap();
    // fakedns adds nothing without a fakedns pool, as in Xray; tls's aliases fold into it.
    assert_eq!(spec.dest_override, ["http", "tls", "quic"]);
    assert!(spec.route_only && !spec.metadata_only);
    assert_eq!(
        spec.domains_excluded,
        [DomainMatcher::Keyword("courier.push.apple.com".into()), DomainMatcher::Domain("example.org".into())]
    );
    assert_eq!(sniffing(json!({ "enabled": false, "destOverride": ["tls"] })).unwrap(), None);
    let err = broken(|v| set(v, "/inbounds/0", "sniffing", json!({ "enabled": true, "destOverride": ["ftp"] })));
    assert_eq!(err.path, "inbounds[0].sniffing.destOverride[0]");
    let err =
        broken(|v| set(v, "/inbounds/0", "sniffing", json!({ "enabled": true, "domainsExcluded": ["regexp:(("] })));
    assert_eq!(err.path, "inbounds[0].sniffing.domainsExcluded[0]");
}

#[test]
fn protocol_rules() {
    let mut v = base();
    v["routing"] = json!({ "rules": [
        { "protocol": ["bittorrent"], "outboundTag": "direct" },
        { "protocol": "tls", "outboundTag": "direct" }] });
    let cfg = load(&v).unwrap();
    assert_eq!(cfg.routing.rules[0].protocols, ["bittorrent"]);
    assert_eq!(cfg.routing.rules[1].protocols, ["tls"]);
}

#[test]
fn attrs_rules() {
    let mut v = base();
    v["routing"] = json!({ "rules": [
        { "protocol": "tls", "outboundTag": "direct" },
        { "attrs": { ":path": "^/api/", "X-Route": "blue|green" }, "outboundTag": "direct" },
        { "attrs": {}, "port": 80, "outboundTag": "direct" }] });
    let cfg = load(&v).unwrap();
    // Names in lowercase, expressions as written; an empty object is no condition.
    assert_eq!(
        cfg.routing.rules[1].attrs,
        [(":path".to_string(), "^/api/".to_string()), ("x-route".to_string(), "blue|green".to_string())]
    );
    assert!(cfg.routing.rules[2].attrs.is_empty());
    let rules = |r: serde_json::Value| {
        move |v: &mut serde_json::Value| {
            v["routing"] =
                json!({ "rules": [{ "port": 1, "outboundTag": "direct" }, { "port": 2, "outboundTag": "direct" }, r] })
        }
    };
    let err = broken(rules(json!({ "attrs": { ":method": "GET", ":path": "(" }, "outboundTag": "direct" })));
    assert_eq!(err.path, "routing.rules[2].attrs.:path");
    assert!(err.to_string().contains("invalid regular expression"), "{err}");
    let err = broken(rules(json!({ "attrs": { ":method": 1 }, "outboundTag": "direct" })));
    assert_eq!(err.path, "routing.rules[2].attrs.:method");
    let err = broken(rules(json!({ "attrs": [":method"], "outboundTag": "direct" })));
    assert_eq!(err.path, "routing.rules[2].attrs");
}

#[test]
fn unserved_top_level_sections() {
    let err = broken(|v| set(v, "", "reverse", json!({ "bridges": [{ "tag": "b", "domain": "x.test" }] })));
    assert_eq!(err.to_string(), "reverse: not supported yet");
    let err = broken(|v| set(v, "", "burstObservatory", json!({ "subjectSelector": ["a"] })));
    assert_eq!(err.path, "burstObservatory");
}

#[test]
fn websocket_and_httpupgrade_settings() {
    let mut v = base();
    set(
        &mut v,
        "/inbounds/0",
        "streamSettings",
        json!({ "network": "ws",
        "wsSettings": { "path": "vl?ed=2048&x=1", "headers": { "Host": "cdn.example", "X-A": "b" } },
        "tcpSettings": { "header": { "type": "http" } },
        "sockopt": { "trustedXForwardedFor": ["X-From-Cdn"] } }),
    );
    let cfg = load(&v).unwrap();
    let ib = &cfg.inbounds[0];
    let TransportSpec::Ws(ws) = &ib.transport else { panic!("{:?}", ib.transport) };
    // As Xray builds it: a leading slash, `ed` taken out, the Host header moved to `host`.
    assert_eq!((ws.path.as_str(), ws.early_data, ws.host.as_str()), ("/vl?x=1", 2048, "cdn.example"));
    assert_eq!(ws.headers, [("X-A".to_owned(), "b".to_owned())]);
    assert!(!ws.early_data_in_path, "Xray's ?ed= goes in Sec-WebSocket-Protocol");
    assert!(ib.http_header.is_none(), "tcpSettings is ignored under ws, as in Xray");
    // V2Ray's maxEarlyData: after the path with no header named, else in the header.
    for (header, in_path) in [(None, true), (Some(""), true), (Some("sec-websocket-protocol"), false)] {
        let mut v = base();
        let ws = json!({ "path": "/v", "maxEarlyData": 1024, "earlyDataHeaderName": header });
        set(&mut v, "/inbounds/0", "streamSettings", json!({ "network": "ws", "wsSettings": ws }));
        let cfg = load(&v).unwrap();
        let h = cfg.inbounds[0].transport.http().unwrap();
        assert_eq!((h.path.as_str(), h.early_data, h.early_data_in_path), ("/v", 1024, in_path), "{header:?}");
    }
    assert_eq!(ib.sockopt.trusted_x_forwarded_for, ["X-From-Cdn"]);

    let mut v = base();
    set(&mut v, "/inbounds/0", "streamSettings", json!({ "network": "httpupgrade", "httpupgradeSettings": {} }));
    let cfg = load(&v).unwrap();
    assert_eq!(cfg.inbounds[0].transport.http().unwrap().path, "/");
    // An unknown key warns by name, as everywhere.
    set(&mut v, "/inbounds/0", "streamSettings", json!({ "network": "ws", "wsSettings": { "pathh": "/" } }));
    let cfg = load(&v).unwrap();
    assert!(cfg.ignored_keys.iter().any(|k| k.contains("wsSettings.pathh")), "{:?}", cfg.ignored_keys);

    // The transport's own acceptProxyProtocol is served, as Xray reads it.
    let mut v = base();
    set(
        &mut v,
        "/inbounds/0",
        "streamSettings",
        json!({ "network": "ws", "wsSettings": { "acceptProxyProtocol": true } }),
    );
    assert!(load(&v).unwrap().inbounds[0].sockopt.accept_proxy_protocol);
    for (stream, path) in [
        (
            json!({ "network": "httpupgrade", "httpupgradeSettings": { "headers": { "host": "x" } } }),
            "inbounds[0].streamSettings.httpupgradeSettings.headers.host",
        ),
        (json!({ "network": "ws", "wsSettings": { "path": "/a b" } }), "inbounds[0].streamSettings.wsSettings.path"),
        (
            json!({ "network": "ws", "wsSettings": { "maxEarlyData": 2048, "earlyDataHeaderName": "X-Ed" } }),
            "inbounds[0].streamSettings.wsSettings.earlyDataHeaderName",
        ),
        (
            json!({ "network": "ws", "sockopt": { "trustedXForwardedFor": ["bad header"] } }),
            "inbounds[0].streamSettings.sockopt.trustedXForwardedFor[0]",
        ),
    ] {
        let err = broken(|v| set(v, "/inbounds/0", "streamSettings", stream.clone()));
        assert_eq!(err.path, path, "{stream}: {err}");
    }

    // An outbound: the Host defaults later; TLS offers http/1.1 when the config names no ALPN.
    let mut v = base();
    v["outbounds"].as_array_mut().unwrap().insert(
        0,
        json!({ "tag": "t", "protocol": "trojan",
        "settings": { "servers": [{ "address": "a.example", "port": 443, "password": "p" }] },
        "streamSettings": { "network": "ws", "security": "tls", "wsSettings": { "path": "/t" } } }),
    );
    let cfg = load(&v).unwrap();
    let OutboundProtocol::Trojan(t) = &cfg.outbounds[0].protocol else { panic!() };
    assert_eq!(t.transport.http().unwrap().path, "/t");
    assert_eq!(t.tls.as_ref().unwrap().alpn, ["http/1.1"]);
}

#[test]
fn unserved_transport_and_flow() {
    let err = broken(|v| set(v, "/inbounds/0", "streamSettings", json!({ "network": "kcp" })));
    assert_eq!(err.path, "inbounds[0].streamSettings.network");
    let err = broken(|v| set(v, "/inbounds/0", "streamSettings", json!({ "security": "reality" })));
    assert_eq!(err.path, "inbounds[0].streamSettings.realitySettings");
    let err = broken(|v| set(v, "/inbounds/0/settings/clients/0", "flow", json!("xtls-rprx-vision")));
    assert_eq!(err.path, "inbounds[0].settings.clients[0].flow");
    let err = broken(|v| set(v, "/outbounds/0", "mux", json!({ "enabled": true })));
    assert_eq!(err.path, "outbounds[0].mux.enabled");
}

#[test]
fn an_inbound_listens_on_a_unix_socket_in_xrays_forms() {
    use shardray_core::spec::{UnixListenSpec, UnixSocketName};
    let unix = |listen: &str| {
        let mut v = base();
        set(&mut v, "/inbounds/0", "listen", json!(listen));
        load(&v).unwrap().inbounds[0].unix.clone().map(|u| *u)
    };
    let path = |p: &str, mode| Some(UnixListenSpec { name: UnixSocketName::Path(p.into()), mode });
    assert_eq!(unix("/run/x.sock"), path("/run/x.sock", None));
    assert_eq!(unix("/run/x.sock,0666"), path("/run/x.sock", Some(0o666)));
    assert_eq!(unix("@xray"), Some(UnixListenSpec { name: UnixSocketName::Abstract(b"xray".to_vec()), mode: None }));
    assert_eq!(unix("127.0.0.1"), None);
    let err = broken(|v| set(v, "/inbounds/0", "listen", json!("/run/x.sock,rw")));
    assert_eq!(err.path, "inbounds[0].listen");
}

#[test]
fn tcp_socket_options_on_a_unix_listener_are_noted() {
    let mut v = base();
    set(&mut v, "/inbounds/0", "listen", json!("/run/x.sock"));
    let sockopt = json!({ "tcpFastOpen": true, "acceptProxyProtocol": true, "mark": 5 });
    set(&mut v, "/inbounds/0", "streamSettings", json!({ "sockopt": sockopt }));
    let notes = load(&v).unwrap().notes;
    let mut unix: Vec<_> = notes.iter().filter(|n| n.ends_with("ignored on a Unix socket")).collect();
    unix.sort();
    assert_eq!(
        unix,
        [
            "inbounds[0].streamSettings.sockopt.mark: ignored on a Unix socket",
            "inbounds[0].streamSettings.sockopt.tcpFastOpen: ignored on a Unix socket",
        ],
        "the PROXY protocol flag still applies; {notes:?}"
    );
}

#[test]
fn api_without_listen_address() {
    let err = broken(|v| set(v, "", "api", json!({ "tag": "api", "services": ["HandlerService"] })));
    assert_eq!(
        err.to_string(),
        "api: no listen address (set api.listen or add a dokodemo-door inbound tagged \"api\")"
    );
    let err = broken(|v| set(v, "", "api", json!({ "tag": "api", "listen": "127.0.0.1:1", "services": ["Nope"] })));
    assert_eq!(err.path, "api.services[0]");
    let err = broken(|v| set(v, "", "api", json!({ "tag": "a", "inboundTag": "b" })));
    assert_eq!(err.path, "api.inboundTag");
    let err = broken(|v| set(v, "", "api", json!({ "tag": "api", "listen": "0.0.0.0:10085" })));
    assert_eq!(err.path, "api.listen");
    let err = broken(|v| {
        set(v, "", "api", json!({ "tag": "api" }));
        at(v, "/inbounds").as_array_mut().unwrap().push(json!({
            "tag": "api", "port": 10085, "protocol": "dokodemo-door",
            "settings": { "address": "127.0.0.1" }
        }));
    });
    assert_eq!(err.path, "inbounds[1].listen");
}

#[test]
fn no_outbounds() {
    let err = broken(|v| set(v, "", "outbounds", json!([])));
    assert_eq!(err.path, "outbounds");
}

#[test]
fn dokodemo_networks_and_a_destination() {
    let doko = |settings: Value| {
        move |v: &mut Value| {
            at(v, "/inbounds").as_array_mut().unwrap().push(json!({
                "port": 5353, "protocol": "dokodemo-door", "settings": settings
            }));
        }
    };
    for (network, tcp, udp) in
        [(json!("udp"), false, true), (json!("tcp,udp"), true, true), (json!(["tcp"]), true, false)]
    {
        let mut v = base();
        doko(json!({ "address": "1.1.1.1", "port": 53, "network": network }))(&mut v);
        let cfg = load(&v).unwrap();
        assert_eq!(cfg.inbounds[1].networks(), NetworkSet { tcp, udp }, "{network}");
    }
    // No network named: TCP alone, as in Xray.
    let mut v = base();
    doko(json!({ "address": "1.1.1.1", "port": 53 }))(&mut v);
    assert_eq!(load(&v).unwrap().inbounds[1].networks(), NetworkSet { tcp: true, udp: false });
    let err = broken(doko(json!({ "address": "1.1.1.1", "port": 53, "network": "quic" })));
    assert_eq!((err.path.as_str(), err.kind), ("inbounds[1].settings.network", ConfigErrorKind::Invalid));
    let err = broken(doko(json!({ "address": "1.1.1.1" })));
    assert_eq!(err.path, "inbounds[1].settings.port");
    let err = broken(doko(json!({ "port": 53, "followRedirect": true })));
    assert_eq!(err.path, "inbounds[1].settings.followRedirect");
}

#[test]
fn xrays_newer_names_load() {
    // The `tunnel` protocol with `rewriteAddress`, `rewritePort` and `allowedNetwork`, as 3x-ui
    // writes its API inbound and current Xray documents it; `direct` and `block` outbounds.
    let mut v = base();
    set(&mut v, "", "api", json!({ "tag": "api", "services": ["StatsService"] }));
    let inbounds = at(&mut v, "/inbounds").as_array_mut().unwrap();
    inbounds.push(json!({
        "tag": "api", "listen": "127.0.0.1", "port": 62789, "protocol": "tunnel",
        "settings": { "rewriteAddress": "127.0.0.1" }
    }));
    inbounds.push(json!({
        "tag": "fwd", "listen": "127.0.0.1", "port": 5353, "protocol": "tunnel",
        "settings": { "rewriteAddress": "1.1.1.1", "rewritePort": 53, "allowedNetwork": "tcp" }
    }));
    set(
        &mut v,
        "",
        "outbounds",
        json!([{ "tag": "d", "protocol": "direct" }, { "tag": "blocked", "protocol": "block" }]),
    );
    let cfg = load(&v).unwrap();
    assert!(cfg.ignored_keys.is_empty(), "{:?}", cfg.ignored_keys);
    assert_eq!(cfg.api.unwrap().listen, ApiListen::Tcp("127.0.0.1:62789".parse().unwrap()));
    match &cfg.inbounds[1].protocol {
        InboundProtocol::Dokodemo(d) => {
            assert_eq!(d.destination, Destination::from("1.1.1.1:53".parse::<SocketAddr>().unwrap()))
        }
        other => panic!("not dokodemo: {other:?}"),
    }
    assert!(matches!(cfg.outbounds[0].protocol, OutboundProtocol::Freedom(_)));
    assert!(matches!(cfg.outbounds[1].protocol, OutboundProtocol::Blackhole(_)));

    // Where both names are given, the older wins, as in Xray.
    let mut v = base();
    at(&mut v, "/inbounds").as_array_mut().unwrap().push(json!({
        "port": 5353, "protocol": "tunnel",
        "settings": { "address": "9.9.9.9", "rewriteAddress": "1.1.1.1", "port": 853, "rewritePort": 53 }
    }));
    match &load(&v).unwrap().inbounds[1].protocol {
        InboundProtocol::Dokodemo(d) => {
            assert_eq!(d.destination, Destination::from("9.9.9.9:853".parse::<SocketAddr>().unwrap()))
        }
        other => panic!("not dokodemo: {other:?}"),
    }
    let err = broken(|v| {
        at(v, "/inbounds").as_array_mut().unwrap().push(json!({
            "port": 5353, "protocol": "tunnel",
            "settings": { "rewriteAddress": "1.1.1.1", "rewritePort": 53, "portMap": { "5353": "1.1.1.1:53" } }
        }))
    });
    assert_eq!((err.path.as_str(), err.kind), ("inbounds[1].settings.portMap", ConfigErrorKind::Unsupported));
    let err = broken(|v| {
        at(v, "/inbounds").as_array_mut().unwrap().push(json!({
            "port": 5353, "protocol": "tunnel", "settings": { "rewritePort": 53, "allowedNetwork": "udp,quic" }
        }))
    });
    assert_eq!((err.path.as_str(), err.kind), ("inbounds[1].settings.allowedNetwork", ConfigErrorKind::Invalid));
}

#[test]
fn syntax_errors_give_line_and_column() {
    let err = load_str("{\n  \"log\": {\n    \"loglevel\": \"info\",\n  }\n}").unwrap_err();
    assert_eq!(err.kind, ConfigErrorKind::Syntax);
    assert!(err.message.starts_with("invalid JSON at line 4, column 3:"), "{err}");
    let err = load_str("[]").unwrap_err();
    assert_eq!(err.kind, ConfigErrorKind::Syntax);
}

#[test]
fn file_errors_name_the_file() {
    let err = load_file(Path::new("/nonexistent/config.json")).unwrap_err();
    assert_eq!(err.path, "/nonexistent/config.json");
    assert_eq!(err.kind, ConfigErrorKind::Io);

    let dir = tempfile::tempdir().unwrap();
    let mut v = base();
    set(&mut v, "/inbounds/0", "protocol", json!("wireguard"));
    let file = write(dir.path(), "config.json", &v.to_string());
    let err = load_file(&file).unwrap_err();
    assert_eq!(err.path, "inbounds[0].protocol");
    assert_eq!(err.file.as_deref(), Some(file.as_path()));
    assert!(err.to_string().ends_with(&format!("(in {})", file.display())));
}

#[test]
fn messages_read_well() {
    let mut inbound = base()["inbounds"][0].clone();
    inbound["settings"]["clients"][0]["alterId"] = json!(0);
    let err = crate::config::load_inbound(inbound, "inbound").unwrap_err();
    assert_eq!(
        err.to_string(),
        "inbound.settings.clients[0].alterId: unknown field (expected one of `id`, `email`, \
         `level`, `quota`, `expiry`, `flow`, `limitIp`, `totalGB`, `expiryTime`, `enable`, `tgId`, `subId`, \
         `comment`, `reset`)"
    );
    let err = broken(|v| set(v, "/inbounds/0/settings/clients/0", "level", json!("high")));
    assert_eq!(err.to_string(), "inbounds[0].settings.clients[0].level: invalid type: string \"high\", expected u32");
}

#[test]
fn accept_proxy_protocol_is_read_in_sockopt_or_tcp_settings() {
    let mut v = base();
    assert!(!load(&v).unwrap().inbounds[0].sockopt.accept_proxy_protocol);
    for stream in [
        json!({ "sockopt": { "acceptProxyProtocol": true } }),
        json!({ "tcpSettings": { "acceptProxyProtocol": true } }),
        json!({ "rawSettings": { "acceptProxyProtocol": true }, "sockopt": { "acceptProxyProtocol": false } }),
    ] {
        set(&mut v, "/inbounds/0", "streamSettings", stream.clone());
        assert!(load(&v).unwrap().inbounds[0].sockopt.accept_proxy_protocol, "{stream}");
    }
    // The API's inbound is served by the control plane, which reads no PROXY header.
    let mut v = base();
    let api = json!({ "tag": "api", "listen": "127.0.0.1", "port": 10085, "protocol": "dokodemo-door",
        "settings": { "address": "127.0.0.1" }, "streamSettings": { "sockopt": { "acceptProxyProtocol": true } } });
    v["inbounds"].as_array_mut().unwrap().push(api);
    v["api"] = json!({ "tag": "api", "services": ["StatsService"] });
    let err = load(&v).unwrap_err();
    assert_eq!(err.path, "inbounds[1].streamSettings.sockopt.acceptProxyProtocol");
    assert_eq!(err.kind, ConfigErrorKind::Unsupported);
}

#[test]
fn sockopt_is_read_and_unserved_options_are_refused_by_name() {
    let mut v = base();
    set(
        &mut v,
        "/inbounds/0",
        "streamSettings",
        json!({ "sockopt": {
            "tcpFastOpen": true, "mark": 255, "tcpKeepAliveIdle": 60, "tcpKeepAliveInterval": 15,
            "tcpCongestion": "bbr", "tcpUserTimeout": 10000, "tcpMaxSeg": 1400, "tcpWindowClamp": 0,
            "v6only": false, "tproxy": "off", "domainStrategy": "AsIs", "interface": ""
        }}),
    );
    let cfg = load(&v).unwrap();
    let o = &cfg.inbounds[0].sockopt;
    assert_eq!(
        (o.tcp_fast_open, o.mark, o.keep_alive_idle, o.keep_alive_interval, o.congestion.as_deref()),
        (Some(256), 255, Some(60), Some(15), Some("bbr"))
    );
    assert_eq!(
        (o.user_timeout_ms, o.max_segment, o.window_clamp, o.interface.as_deref()),
        (Some(10000), Some(1400), None, None)
    );
    for (fast_open, want) in [(json!(false), Some(0)), (json!(64), Some(64))] {
        set(&mut v, "/inbounds/0/streamSettings", "sockopt", json!({ "tcpFastOpen": fast_open }));
        assert_eq!(load(&v).unwrap().inbounds[0].sockopt.tcp_fast_open, want);
    }
    for (key, value) in [("tproxy", json!("tproxy")), ("dialerProxy", json!("x")), ("tcpMptcp", json!(true))] {
        let err = broken(|v| set(v, "/inbounds/0", "streamSettings", json!({ "sockopt": { key: value } })));
        assert_eq!(err.path, format!("inbounds[0].streamSettings.sockopt.{key}"));
        assert_eq!(err.kind, ConfigErrorKind::Unsupported, "{key}");
    }
    let err = broken(|v| set(v, "/inbounds/0", "streamSettings", json!({ "sockopt": { "tcpFastOpen": "yes" } })));
    assert_eq!(err.path, "inbounds[0].streamSettings.sockopt.tcpFastOpen");
    let err = broken(|v| set(v, "/inbounds/0", "streamSettings", json!({ "sockopt": { "tcpCongestion": "b b r" } })));
    assert_eq!(err.path, "inbounds[0].streamSettings.sockopt.tcpCongestion");
}

#[test]
fn the_api_inbound_may_be_named_by_the_rule_that_routes_it_to_the_api() {
    // Marzban's form: the API's tag is the outbound side of a rule from the dokodemo inbound.
    let mut v = base();
    set(&mut v, "", "api", json!({ "tag": "API", "services": ["HandlerService", "StatsService"] }));
    at(&mut v, "/inbounds").as_array_mut().unwrap().insert(
        0,
        json!({ "tag": "API_INBOUND", "listen": "127.0.0.1", "port": 62051, "protocol": "dokodemo-door",
                "settings": { "address": "127.0.0.1" } }),
    );
    set(
        &mut v,
        "",
        "routing",
        json!({ "rules": [
            { "type": "field", "inboundTag": ["API_INBOUND"], "outboundTag": "API" },
            { "type": "field", "ip": ["geoip:private"], "outboundTag": "blocked" }
        ]}),
    );
    let cfg = load(&v).unwrap();
    assert_eq!(cfg.api.unwrap().listen, ApiListen::Tcp("127.0.0.1:62051".parse().unwrap()));
    assert_eq!(cfg.inbounds.len(), 1, "the API's inbound is not served as a forwarder");
    assert_eq!(cfg.inbounds[0].config_index, Some(1));
    // Two inbounds both routed to the API: refused, naming the second.
    at(&mut v, "/inbounds")
        .as_array_mut()
        .unwrap()
        .push(json!({ "tag": "API2", "listen": "127.0.0.1", "port": 62052, "protocol": "dokodemo-door",
                "settings": { "address": "127.0.0.1" } }));
    set(&mut v, "/routing/rules/0", "inboundTag", json!(["API_INBOUND", "API2"]));
    let err = load(&v).unwrap_err();
    assert_eq!((err.path.as_str(), err.kind), ("inbounds[2].tag", ConfigErrorKind::Unsupported));
}

#[test]
fn trojan_inbounds_load_as_xray_reads_them() {
    let mut v = base();
    v["inbounds"][0] = json!({
        "tag": "tj", "listen": "127.0.0.1", "port": 443, "protocol": "trojan",
        "settings": {
            "clients": [
                { "password": "s3cret", "email": "a@x", "level": 1, "flow": "", "limitIp": 0, "enable": true },
                { "password": "other" }
            ],
            "fallbacks": [{ "dest": 80 }, { "alpn": "h2", "dest": 81 }]
        }
    });
    let cfg = load(&v).unwrap();
    let InboundProtocol::Trojan(t) = &cfg.inbounds[0].protocol else { panic!("not trojan") };
    assert_eq!(t.clients[0].account, Account::Trojan("s3cret".into()));
    assert_eq!((t.clients[0].email.as_str(), t.clients[0].level), ("a@x", 1));
    assert_eq!(t.fallbacks.len(), 2);

    let trojan = |edit: &dyn Fn(&mut Value)| {
        let mut w = v.clone();
        edit(&mut w);
        load(&w).unwrap_err().to_string()
    };
    let err = trojan(&|w| w["inbounds"][0]["settings"]["clients"][1]["password"] = json!("s3cret"));
    assert_eq!(err, "inbounds[0].settings.clients[1].password: duplicate password (also clients[0])");
    assert!(!err.contains("s3cret"), "the message shows the password");
    let err = trojan(&|w| w["inbounds"][0]["settings"]["clients"][1] = json!({ "email": "b@x" }));
    assert_eq!(err, "inbounds[0].settings.clients[1].password: missing");
    let err = trojan(&|w| w["inbounds"][0]["settings"]["clients"][0]["flow"] = json!("xtls-rprx-direct"));
    assert!(err.starts_with("inbounds[0].settings.clients[0].flow:"), "{err}");
    // A VLESS id in a Trojan client is a key Trojan does not have: ignored, with a warning.
    let mut w = v.clone();
    w["inbounds"][0]["settings"]["clients"][0]["id"] = json!(ALICE);
    let warnings = load(&w).unwrap().ignored_keys;
    assert!(warnings[0].starts_with("inbounds[0].settings.clients[0].id: unknown key ignored"), "{warnings:?}");
    let err = trojan(&|w| w["inbounds"][0]["settings"]["fallbacks"][1]["alpn"] = json!(""));
    assert_eq!(err, "inbounds[0].settings.fallbacks[1]: another fallback has the same name, alpn and path");
}

#[test]
fn an_http_header_reads_over_xrays_defaults() {
    let mut v = base();
    set(&mut v, "/inbounds/0", "streamSettings", json!({ "tcpSettings": { "header": { "type": "http" } } }));
    let h = load(&v).unwrap().inbounds[0].http_header.clone().expect("camouflaged");
    assert_eq!(h.request, shardray_wire::http_header::RequestTemplate::default());
    assert_eq!(h.response, shardray_wire::http_header::ResponseTemplate::default());

    set(
        &mut v,
        "/inbounds/0",
        "streamSettings",
        json!({ "rawSettings": { "header": { "type": "http",
            "request": { "path": "/a", "headers": { "Host": ["x.example", "y.example"], "Accept": "*/*" } },
            "response": { "status": "404", "headers": {} } } } }),
    );
    let h = load(&v).unwrap().inbounds[0].http_header.clone().unwrap();
    assert_eq!(h.request.paths, ["/a"]);
    let names: Vec<&str> = h.request.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Accept", "Host"], "headers replace the defaults, in name order");
    assert_eq!((h.response.status.as_str(), h.response.reason.as_str()), ("404", "OK"));
    assert_eq!(h.response.headers, shardray_wire::http_header::ResponseTemplate::default().headers);

    let err =
        broken(|v| set(v, "/inbounds/0", "streamSettings", json!({ "tcpSettings": { "header": { "type": "srtp" } } })));
    assert_eq!(err.path, "inbounds[0].streamSettings.tcpSettings.header.type");
}

/// A CA and a server certificate it signed, as PEM files in `dir`.
fn api_tls_files(dir: &std::path::Path) -> Value {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    json!({ "certificateFile": dir.join("cert.pem"), "keyFile": dir.join("key.pem"), "clientCaFile": dir.join("ca.pem") })
}

#[test]
fn api_tls_and_call_limits_are_read_and_checked_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let tls = api_tls_files(dir.path());
    let mut v = base();
    let mut api_tls = tls.clone();
    api_tls["clients"] = json!([{ "subject": "panel", "role": "operator" }, { "subject": "grafana" }]);
    api_tls["defaultRole"] = json!("reader");
    set(&mut v, "", "api", json!({ "tag": "api", "listen": "0.0.0.0:10085", "tls": api_tls }));
    let api = load(&v).unwrap().api.unwrap();
    let parsed = api.tls.unwrap();
    assert_eq!(
        parsed.clients,
        vec![
            ("panel".to_owned(), shardray_core::spec::ApiRole::Operator),
            ("grafana".to_owned(), shardray_core::spec::ApiRole::Reader)
        ]
    );
    assert_eq!(parsed.default_role, Some(shardray_core::spec::ApiRole::Reader));
    // The default bucket is generous; 0 turns it off; burst follows rate when not given.
    assert_eq!(api.call_limit, Some(shardray_core::spec::CallLimit { rate: 1000.0, burst: 5000.0 }));
    let limit = |l: Value| {
        let mut v = base();
        set(&mut v, "", "api", json!({ "tag": "api", "listen": "127.0.0.1:1", "callLimit": l }));
        load(&v).map(|c| c.api.unwrap().call_limit)
    };
    assert_eq!(limit(json!({ "rate": 0 })).unwrap(), None);
    assert_eq!(limit(json!({ "rate": 10 })).unwrap(), Some(shardray_core::spec::CallLimit { rate: 10.0, burst: 50.0 }));
    assert_eq!(limit(json!({ "rate": -1 })).unwrap_err().path, "api.callLimit.rate");
    assert_eq!(limit(json!({ "rate": 5, "burst": 0.5 })).unwrap_err().path, "api.callLimit.burst");

    let with_tls = |edit: &dyn Fn(&mut Value)| {
        let mut t = tls.clone();
        edit(&mut t);
        broken(|v| set(v, "", "api", json!({ "tag": "api", "listen": "127.0.0.1:1", "tls": t })))
    };
    let err = with_tls(&|t| t["certificateFile"] = json!("/nonexistent/cert.pem"));
    assert_eq!(err.path, "api.tls.certificateFile");
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    assert_eq!(with_tls(&|t| t["keyFile"] = t["clientCaFile"].clone()).path, "api.tls.keyFile");
    assert_eq!(with_tls(&|t| t["clientCaFile"] = t["keyFile"].clone()).path, "api.tls.clientCaFile");
    assert_eq!(with_tls(&|t| drop(t.as_object_mut().unwrap().remove("clientCaFile"))).path, "api.tls.clientCaFile");
    assert_eq!(with_tls(&|t| t["clients"] = json!([{ "role": "admin" }])).path, "api.tls.clients[0].subject");
    assert_eq!(with_tls(&|t| t["defaultRole"] = json!("root")).path, "api.tls.defaultRole");
    // TLS is for TCP; a Unix socket has none to offer.
    let err = broken(|v| set(v, "", "api", json!({ "tag": "api", "listen": "/run/api.sock", "tls": tls.clone() })));
    assert_eq!(err.path, "api.tls");
}

#[test]
fn grpc_settings() {
    let mut v = base();
    set(
        &mut v,
        "/inbounds/0",
        "streamSettings",
        json!({ "network": "grpc", "grpcSettings": { "serviceName": "gun", "idle_timeout": -1,
            "health_check_timeout": 15, "multiMode": true, "serviceNme": "typo" } }),
    );
    let cfg = load(&v).unwrap();
    let TransportSpec::Grpc(g) = &cfg.inbounds[0].transport else { panic!("{:?}", cfg.inbounds[0].transport) };
    // As Xray builds it: a negative duration is 0.
    assert_eq!((g.service_name.as_str(), g.idle_timeout, g.health_check_timeout, g.multi_mode), ("gun", 0, 15, true));
    assert!(cfg.ignored_keys.iter().any(|k| k.contains("grpcSettings.serviceNme")), "{:?}", cfg.ignored_keys);
    // V2Ray's name for it, and no settings at all.
    set(&mut v, "/inbounds/0", "streamSettings", json!({ "network": "gun" }));
    let TransportSpec::Grpc(g) = &load(&v).unwrap().inbounds[0].transport else { panic!() };
    assert_eq!(g.service_name, "");
    let err = broken(|v| {
        set(v, "/inbounds/0", "streamSettings", json!({ "network": "grpc", "grpcSettings": { "authority": "a b" } }))
    });
    assert_eq!(err.path, "inbounds[0].streamSettings.grpcSettings.authority");
    // Outbounds: VLESS over gRPC and over WebSocket.
    let vless_out = |stream: Value| {
        json!({ "tag": "out", "protocol": "vless", "streamSettings": stream,
            "settings": { "vnext": [{ "address": "a.example", "port": 443, "users": [{ "id": ALICE }] }] } })
    };
    let mut v = base();
    v["outbounds"][0] = vless_out(json!({ "network": "grpc", "security": "tls",
        "grpcSettings": { "serviceName": "/a/b", "user_agent": "x" }, "tlsSettings": { "serverName": "a.example" } }));
    let cfg = load(&v).unwrap();
    let OutboundProtocol::Vless(o) = &cfg.outbounds[0].protocol else { panic!() };
    assert!(matches!(&o.transport, TransportSpec::Grpc(g) if g.service_name == "/a/b" && g.user_agent == "x"));
    assert!(o.tls.as_ref().unwrap().alpn.is_empty(), "the shard offers h2 when nothing is named");
    v["outbounds"][0] = vless_out(json!({ "network": "ws", "wsSettings": { "path": "/v?ed=2048" } }));
    let cfg = load(&v).unwrap();
    let OutboundProtocol::Vless(o) = &cfg.outbounds[0].protocol else { panic!() };
    assert!(matches!(o.transport.http(), Some(h) if h.path == "/v" && h.early_data == 2048), "{:?}", o.transport);
    // Vision stays on raw TCP, as Xray's "XTLS only supports TLS and REALITY directly".
    v["outbounds"][0] = vless_out(json!({ "network": "ws", "security": "tls" }));
    v["outbounds"][0]["settings"]["vnext"][0]["users"][0]["flow"] = json!("xtls-rprx-vision");
    assert_eq!(load(&v).unwrap_err().path, "outbounds[0].settings.vnext[0].users[0].flow");
}

/// XHTTP outbounds: the settings as an inbound's (extra included), TLS ALPN left for the
/// client to choose h2 by; downloadSettings read; h3 refused by name.
#[test]
fn xhttp_outbound_settings() {
    let vless_out = |stream: Value| {
        json!({ "tag": "out", "protocol": "vless", "streamSettings": stream,
            "settings": { "vnext": [{ "address": "a.example", "port": 443, "users": [{ "id": ALICE }] }] } })
    };
    let mut v = base();
    v["outbounds"][0] = vless_out(json!({ "network": "xhttp", "security": "tls",
        "xhttpSettings": { "path": "/xh", "mode": "stream-up", "extra": { "scMaxEachPostBytes": 5000 } },
        "tlsSettings": { "serverName": "a.example" } }));
    let cfg = load(&v).unwrap();
    let OutboundProtocol::Vless(o) = &cfg.outbounds[0].protocol else { panic!() };
    let TransportSpec::Xhttp(x) = &o.transport else { panic!("{:?}", o.transport) };
    assert_eq!((x.settings.path.as_str(), x.settings.max_each_post_bytes.to), ("/xh/", 5000));
    assert!(o.tls.as_ref().unwrap().alpn.is_empty());
    // downloadSettings: a streamSettings of its own with the server's address and port.
    v["outbounds"][0]["streamSettings"]["splithttpSettings"] = json!({ "path": "/up", "downloadSettings": {
        "address": "b.example", "port": 8443, "network": "xhttp", "security": "tls",
        "tlsSettings": { "serverName": "b.example" }, "xhttpSettings": { "path": "/down", "host": "cdn.example" } } });
    v["outbounds"][0]["streamSettings"].as_object_mut().unwrap().remove("xhttpSettings");
    let cfg = load(&v).unwrap();
    let OutboundProtocol::Vless(o) = &cfg.outbounds[0].protocol else { panic!() };
    let TransportSpec::Xhttp(x) = &o.transport else { panic!("{:?}", o.transport) };
    let d = x.download.as_ref().expect("downloadSettings read");
    assert_eq!((d.server.to_string().as_str(), d.xhttp.settings.path.as_str()), ("b.example:8443", "/down/"));
    assert_eq!(
        (d.xhttp.settings.host.as_str(), d.tls.as_ref().unwrap().server_name.as_str()),
        ("cdn.example", "b.example")
    );
    // Each part it needs, and only what it can do, named by path.
    let download = "outbounds[0].streamSettings.splithttpSettings.downloadSettings";
    for (key, value, at) in [
        ("port", Value::Null, "port"),
        ("network", json!("ws"), "network"),
        ("sockopt", json!({ "mark": 1 }), "sockopt"),
        ("security", json!("reality"), "security"),
    ] {
        let mut bad = v.clone();
        bad["outbounds"][0]["streamSettings"]["splithttpSettings"]["downloadSettings"][key] = value;
        assert_eq!(load(&bad).unwrap_err().path, format!("{download}.{at}"), "{key}");
    }
    // As Xray's Build: not in stream-one mode.
    let mut one = v.clone();
    one["outbounds"][0]["streamSettings"]["splithttpSettings"]["mode"] = json!("stream-one");
    assert!(load(&one).unwrap_err().path.ends_with("splithttpSettings.downloadSettings"));
    v["outbounds"][0]["streamSettings"].as_object_mut().unwrap().remove("splithttpSettings");
    v["outbounds"][0]["streamSettings"]["tlsSettings"]["alpn"] = json!(["h3"]);
    assert_eq!(load(&v).unwrap_err().path, "outbounds[0].streamSettings.tlsSettings.alpn");
}

#[test]
fn dns_object_loads_field_for_field() {
    use shardray_core::spec::{DnsAddress, HostAnswer, QueryStrategy};
    let mut v = base();
    set(
        &mut v,
        "",
        "dns",
        json!({
            "hosts": { "b.test": ["10.0.0.1", "::1"], "domain:a.test": "10.0.0.2", "c.test": "b.test" },
            "servers": [
                "8.8.8.8",
                "udp://1.1.1.1:5353",
                "tcp+local://[2001:db8::1]",
                "https://dns.google/dns-query",
                "https+local://1.1.1.1",
                "tls://dns.example:8853",
                "localhost",
                { "address": "9.9.9.9", "port": "54", "domains": ["domain:corp.test", "full:x.test"],
                  "expectIPs": ["10.0.0.0/8", "*"], "skipFallback": true, "queryStrategy": "UseIPv4",
                  "timeoutMs": 1500, "tag": "corp" }
            ],
            "queryStrategy": "use_ip_v6", "disableCache": true, "disableFallback": true,
            "disableFallbackIfMatch": true, "tag": "dns-in"
        }),
    );
    let dns = load(&v).unwrap().dns.unwrap();
    // Keys in sorted order, as Xray builds them; a plain key is a full match.
    let keys: Vec<_> = dns.hosts.iter().map(|h| h.domain.clone()).collect();
    assert_eq!(
        keys,
        [
            DomainMatcher::Full("b.test".into()),
            DomainMatcher::Full("c.test".into()),
            DomainMatcher::Domain("a.test".into())
        ]
    );
    assert_eq!(dns.hosts[0].answer, HostAnswer::Ips(vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()]));
    assert_eq!(dns.hosts[1].answer, HostAnswer::Alias("b.test".into()));
    let dest = |s: &str| parse_dest(s);
    let addresses: Vec<_> = dns.servers.iter().map(|s| s.address.clone()).collect();
    assert_eq!(
        addresses,
        [
            DnsAddress::Udp(dest("8.8.8.8:53")),
            DnsAddress::Udp(dest("1.1.1.1:5353")),
            DnsAddress::Tcp(dest("[2001:db8::1]:53")),
            DnsAddress::Https { server: dest("dns.google:443"), path: "/dns-query".into() },
            DnsAddress::Https { server: dest("1.1.1.1:443"), path: "/dns-query".into() },
            DnsAddress::Tls(dest("dns.example:8853")),
            DnsAddress::Localhost,
            DnsAddress::Udp(dest("9.9.9.9:54")),
        ]
    );
    let corp = &dns.servers[7];
    assert_eq!(corp.domains, [DomainMatcher::Domain("corp.test".into()), DomainMatcher::Full("x.test".into())]);
    assert_eq!(corp.expect_ips, ["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]);
    assert!(corp.expect_ips_prefer && corp.skip_fallback);
    assert_eq!(corp.query_strategy, Some(QueryStrategy::UseIpv4));
    assert_eq!(corp.timeout, Duration::from_millis(1500));
    assert_eq!(dns.servers[0].timeout, Duration::from_secs(4));
    assert_eq!(dns.query_strategy, QueryStrategy::UseIpv6);
    assert!(dns.disable_cache && dns.disable_fallback && dns.disable_fallback_if_match);
    assert_eq!(dns.tag.as_deref(), Some("dns-in"));
    // An empty object is no dns object.
    set(&mut v, "", "dns", json!({}));
    assert_eq!(load(&v).unwrap().dns, None);
}

fn parse_dest(s: &str) -> Destination {
    let (host, port) = s.rsplit_once(':').unwrap();
    Destination { addr: Address::parse(host).unwrap(), port: port.parse().unwrap() }
}

#[test]
fn dns_errors_name_their_path() {
    let cases = [
        (json!({ "servers": ["1.1.1.1", "fakedns"] }), "dns.servers[1].address: fakedns is not supported yet"),
        (
            json!({ "servers": [{ "address": "quic+local://dns.adguard.com" }] }),
            "dns.servers[0].address: quic+local:// (DNS over QUIC) is not supported yet",
        ),
        (json!({ "servers": ["1.1.1.1", "1.1.1.1", { "port": 53 }] }), "dns.servers[2].address: no address"),
        (
            json!({ "servers": ["ftp://1.1.1.1"] }),
            "dns.servers[0].address: unknown scheme \"ftp\" (expected udp, tcp, tcp+local, tls, https, https+local)",
        ),
        (json!({ "servers": [{ "address": "1.1.1.1", "port": 70000 }] }), "dns.servers[0].port"),
        (json!({ "servers": [{ "address": "1.1.1.1", "expectIPs": ["nonsense"] }] }), "dns.servers[0].expectIPs[0]"),
        (json!({ "servers": [{ "address": "1.1.1.1", "domains": ["regexp:("] }] }), "dns.servers[0].domains[0]"),
        (json!({ "queryStrategy": "UseSystem" }), "dns.queryStrategy: \"UseSystem\" is not supported yet"),
        (json!({ "clientIp": "1.2.3.4" }), "dns.clientIp: clientIp (EDNS client subnet) is not supported yet"),
        (json!({ "hosts": { "a.test": "not an ip!" } }), "dns.hosts.a.test: \"not an ip!\" is neither"),
        (json!({ "hosts": { "a.test": 5 } }), "dns.hosts.a.test: expected an address"),
        (json!({ "servers": 5 }), "dns.servers"),
    ];
    for (dns, want) in cases {
        let err = broken(|v| set(v, "", "dns", dns.clone()));
        assert!(err.to_string().starts_with(want), "{dns}: got {err}, want {want}");
    }
}

/// Xray reads an unknown `queryStrategy` as UseIP and keeps a rule whose outbound does not
/// exist (closing what it matches): both load, each with a note naming its path.
#[test]
fn what_xray_reads_leniently_loads_with_a_note() {
    use shardray_core::spec::QueryStrategy;
    let mut v = base();
    set(
        &mut v,
        "",
        "dns",
        json!({ "queryStrategy": "UseIPv4v6:", "servers": [{ "address": "1.1.1.1", "queryStrategy": "Fastest" }] }),
    );
    set(&mut v, "", "routing", json!({ "rules": [{ "ip": ["10.0.0.0/8"], "outboundTag": "Reject" }] }));
    let cfg = load(&v).unwrap();
    let dns = cfg.dns.as_ref().unwrap();
    assert_eq!(dns.query_strategy, QueryStrategy::UseIp);
    assert_eq!(dns.servers[0].query_strategy, Some(QueryStrategy::UseIp));
    assert_eq!(cfg.routing.rules[0].outbound_tag, "Reject");
    for want in [
        "dns.queryStrategy: unknown strategy \"UseIPv4v6:\" read as UseIP",
        "dns.servers[0].queryStrategy: unknown strategy \"Fastest\" read as UseIP",
        "routing.rules[0].outboundTag: no outbound is tagged \"Reject\"; the connections this rule matches are closed",
    ] {
        assert!(cfg.notes.iter().any(|n| n.starts_with(want)), "{want}: {:?}", cfg.notes);
    }
}

#[test]
fn dns_outbound_settings() {
    use shardray_core::spec::{DnsNetwork, DnsOutboundSpec, NonIpQuery};
    let mut v = base();
    let outbounds = at(&mut v, "/outbounds").as_array_mut().unwrap();
    outbounds.push(json!({ "tag": "dns-out", "protocol": "dns" }));
    outbounds.push(json!({ "tag": "dns-skip", "protocol": "dns", "settings": {
        "network": "tcp", "address": "127.0.0.53", "port": 53, "nonIPQuery": "skip", "blockTypes": [65, 28] } }));
    let cfg = load(&v).unwrap();
    assert_eq!(cfg.outbounds[2].protocol, OutboundProtocol::Dns(DnsOutboundSpec::default()));
    let OutboundProtocol::Dns(skip) = &cfg.outbounds[3].protocol else { panic!("not dns") };
    assert_eq!(skip.rewrite_network, Some(DnsNetwork::Tcp));
    assert_eq!(skip.rewrite_address, Some(Address::parse("127.0.0.53").unwrap()));
    assert_eq!((skip.rewrite_port, skip.non_ip_query), (Some(53), NonIpQuery::Skip));
    assert_eq!(skip.block_types, [65, 28]);
    for (settings, want) in [
        (json!({ "nonIPQuery": "answer" }), "outbounds[2].settings.nonIPQuery: unknown mode"),
        (json!({ "network": "quic" }), "outbounds[2].settings.network"),
        (json!({ "blockTypes": [70000] }), "outbounds[2].settings.blockTypes[0]"),
        (json!({ "rules": [{ "action": "hijack" }] }), "outbounds[2].settings.rules: rules"),
    ] {
        let err = broken(|v| {
            at(v, "/outbounds").as_array_mut().unwrap().push(json!({ "protocol": "dns", "settings": settings.clone() }))
        });
        assert!(err.to_string().starts_with(want), "{settings}: got {err}");
    }
}

#[test]
fn quota_and_expiry_on_every_kind_of_client() {
    let mut v = base();
    v["inbounds"][0]["settings"]["clients"][0]["quota"] = json!("10MiB");
    v["inbounds"][0]["settings"]["clients"][0]["expiry"] = json!("2027-01-01T00:00:00Z");
    v["inbounds"].as_array_mut().unwrap().push(json!({
        "tag": "trojan-in", "listen": "127.0.0.1", "port": 10087, "protocol": "trojan",
        "settings": { "clients": [{ "password": "pw", "email": "t@x", "quota": 1000, "expiry": 1_798_761_600u64 }] }
    }));
    v["inbounds"].as_array_mut().unwrap().push(json!({
        "tag": "socks-in", "listen": "127.0.0.1", "port": 10088, "protocol": "socks",
        "settings": { "auth": "password", "accounts": [{ "user": "u", "pass": "p", "quota": "2.5GB" }] }
    }));
    let config = load(&v).unwrap();
    let quota = |i: usize| config.inbounds[i].protocol.clients().unwrap()[0].quota;
    assert_eq!(quota(0), shardray_core::quota::QuotaSpec { bytes: 10 << 20, expiry: 1_798_761_600 });
    assert_eq!(quota(1), shardray_core::quota::QuotaSpec { bytes: 1000, expiry: 1_798_761_600 });
    assert_eq!(quota(2), shardray_core::quota::QuotaSpec { bytes: 2_500_000_000, expiry: 0 });
    // 3x-ui's own bookkeeping stays ignored: it is the panel's to enforce.
    let mut v = base();
    v["inbounds"][0]["settings"]["clients"][0]["totalGB"] = json!(5);
    v["inbounds"][0]["settings"]["clients"][0]["expiryTime"] = json!(1);
    assert_eq!(load(&v).unwrap().inbounds[0].protocol.clients().unwrap()[0].quota, Default::default());
}

#[test]
fn a_bad_quota_or_expiry_names_its_path() {
    let e = broken(|v| v["inbounds"][0]["settings"]["clients"][0]["quota"] = json!("10 lightyears"));
    assert_eq!(e.path, "inbounds[0].settings.clients[0].quota", "{e}");
    assert!(e.to_string().contains("unknown unit"), "{e}");
    let e = broken(|v| v["inbounds"][0]["settings"]["clients"][0]["expiry"] = json!("tomorrow"));
    assert_eq!(e.path, "inbounds[0].settings.clients[0].expiry", "{e}");
    assert!(e.to_string().contains("RFC 3339"), "{e}");
    let e = broken(|v| v["inbounds"][0]["settings"]["clients"][0]["quota"] = json!(-5));
    assert_eq!(e.path, "inbounds[0].settings.clients[0].quota", "{e}");
    let e = broken(|v| {
        v["inbounds"][0]["settings"]["clients"][0]["email"] = json!("");
        v["inbounds"][0]["settings"]["clients"][0]["expiry"] = json!(1);
    });
    assert!(e.to_string().contains("needs an email"), "{e}");
}

#[test]
fn reality_outbounds_load_and_refuse_by_path() {
    const PUBLIC: &str = "wA9uNf9Ho9w-mL4fa5tMLrDXsOUbR-Te4BoQtxu9bHc";
    let outbound = |reality: Value, extra: Value| {
        let mut o = json!({
            "tag": "out", "protocol": "vless",
            "settings": { "vnext": [{ "address": "203.0.113.9", "port": 443, "users": [{ "id": ALICE }] }] },
            "streamSettings": { "network": "raw", "security": "reality", "realitySettings": reality }
        });
        for (k, v) in extra.as_object().unwrap() {
            o["streamSettings"][k] = v.clone();
        }
        let mut v = base();
        v["outbounds"] = json!([o]);
        v
    };
    let good = json!({ "serverName": "www.example.com", "publicKey": PUBLIC, "shortId": "6ba8",
                       "fingerprint": "Firefox", "spiderX": "/path?p=1", "show": true });
    let cfg = load(&outbound(good.clone(), json!({}))).unwrap();
    let OutboundProtocol::Vless(o) = &cfg.outbounds[0].protocol else { panic!() };
    let r = o.reality.as_ref().expect("REALITY read");
    assert_eq!(o.tls, None);
    assert_eq!(r.server_name, "www.example.com");
    assert_eq!(r.short_id, [0x6b, 0xa8, 0, 0, 0, 0, 0, 0]);
    assert_eq!(r.fingerprint, "firefox");
    assert!(r.show);
    assert!(
        cfg.notes
            .iter()
            .any(|n| n.starts_with("outbounds[0].streamSettings.realitySettings.fingerprint: \"Firefox\" is ignored")),
        "{:?}",
        cfg.notes
    );
    // Current Xray's name for the key wins.
    let mut newer = good.clone();
    newer["password"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let cfg = load(&outbound(newer, json!({}))).unwrap();
    let OutboundProtocol::Vless(o) = &cfg.outbounds[0].protocol else { panic!() };
    assert_eq!(o.reality.as_ref().unwrap().public_key, [0; 32]);

    let here = "outbounds[0].streamSettings.realitySettings";
    for (key, value, path) in [
        ("publicKey", Value::Null, "publicKey"),
        ("publicKey", json!("abc"), "publicKey"),
        ("shortId", json!("abc"), "shortId"),
        ("shortId", json!("0123456789abcdef01"), "shortId"),
        ("fingerprint", json!("hellogolang"), "fingerprint"),
        ("fingerprint", json!("netscape"), "fingerprint"),
        ("spiderX", json!("no-slash"), "spiderX"),
        ("serverNames", json!(["a"]), "serverNames"),
        ("shortIds", json!([""]), "shortIds"),
        ("privateKey", json!(PUBLIC), "privateKey"),
        ("target", json!("example.com:443"), "target"),
        ("mldsa65Verify", json!("x"), "mldsa65Verify"),
    ] {
        let mut r = good.clone();
        match value {
            Value::Null => drop(r.as_object_mut().unwrap().remove(key)),
            v => r[key] = v,
        }
        let e = load(&outbound(r, json!({}))).unwrap_err();
        assert_eq!(e.path, format!("{here}.{path}"), "{key}: {e}");
    }
    let e = load(&outbound(Value::Null, json!({}))).unwrap_err();
    assert_eq!(e.path, here, "{e}");
    // An unknown key is ignored and reported, as everywhere.
    let mut odd = good.clone();
    odd["nonsense"] = json!(1);
    let cfg = load(&outbound(odd, json!({}))).unwrap();
    assert_eq!(cfg.ignored_keys, [format!("{here}.nonsense: unknown key ignored")]);
    let e = load(&outbound(good.clone(), json!({ "network": "ws" }))).unwrap_err();
    assert_eq!(e.path, "outbounds[0].streamSettings.network", "{e}");
    let e = load(&outbound(good.clone(), json!({ "security": "tls" }))).unwrap_err();
    assert_eq!(e.path, here, "realitySettings without security reality: {e}");
    // Vision over REALITY, as over TLS.
    let mut vision = outbound(good.clone(), json!({}));
    vision["outbounds"][0]["settings"]["vnext"][0]["users"][0]["flow"] = json!("xtls-rprx-vision");
    let cfg = load(&vision).unwrap();
    let OutboundProtocol::Vless(o) = &cfg.outbounds[0].protocol else { panic!() };
    assert_eq!(o.flow, shardray_core::spec::VlessFlow::Vision);
    // Trojan and VMess take it too; SOCKS does not.
    let mut trojan = outbound(good.clone(), json!({}));
    trojan["outbounds"][0]["protocol"] = json!("trojan");
    trojan["outbounds"][0]["settings"] =
        json!({ "servers": [{ "address": "203.0.113.9", "port": 443, "password": "p" }] });
    let cfg = load(&trojan).unwrap();
    let OutboundProtocol::Trojan(t) = &cfg.outbounds[0].protocol else { panic!() };
    assert!(t.reality.is_some());
    let mut socks = outbound(good, json!({}));
    socks["outbounds"][0]["protocol"] = json!("socks");
    socks["outbounds"][0]["settings"] = json!({ "servers": [{ "address": "203.0.113.9", "port": 1080 }] });
    assert_eq!(load(&socks).unwrap_err().path, "outbounds[0].streamSettings.security");
}
