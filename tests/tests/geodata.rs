//! `geoip:` and `geosite:` rules from the real `geoip.dat` and `geosite.dat` V2Ray 4.45.2
//! ships, checked against V2Ray itself: the same rules in both, and for each destination in a
//! table the outbound V2Ray connects through (each outbound a freedom redirected to a local
//! server that names it) equals the one shardray's TestRoute picks.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use prost::Message;
use serde_json::{json, Value};
use shardray_proto::xray::app::router::command as pb;
use shardray_proto::xray::common::geodata::GeoIpList;
use shardray_tests::api::ApiClient;
use shardray_tests::v2ray::V2Ray;
use shardray_tests::{run_cli, vless_config, Shardray, ALICE};

const TAGS: [&str; 6] = ["default", "attr", "a", "b", "c", "d"];

fn assets() -> std::path::PathBuf {
    shardray_tests::peers::v2ray().parent().unwrap().to_path_buf()
}

fn rules() -> Value {
    json!([
        { "type": "field", "domain": ["geosite:google@cn"], "outboundTag": "attr" },
        { "type": "field", "domain": ["geosite:github", "full:exact.example"], "outboundTag": "a" },
        { "type": "field", "domain": ["geosite:cn", "ext:geosite.dat:bilibili"], "outboundTag": "b" },
        { "type": "field", "ip": ["geoip:cn"], "outboundTag": "b" },
        { "type": "field", "ip": ["geoip:us"], "port": "443", "outboundTag": "c" },
        { "type": "field", "ip": ["geoip:private", "ext:geoip.dat:jp"], "outboundTag": "d" },
        { "type": "field", "ip": ["geoip:!de"], "port": "8443", "outboundTag": "a" }
    ])
}

/// Servers that answer each connection with their outbound's tag.
fn tag_servers() -> Vec<(String, SocketAddr)> {
    TAGS.iter()
        .map(|tag| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let tag = tag.to_string();
            let reply = format!("{tag}\n");
            std::thread::spawn(move || {
                for mut c in l.incoming().flatten() {
                    let _ = c.write_all(reply.as_bytes());
                }
            });
            (tag, addr)
        })
        .collect()
}

/// A SOCKS5 CONNECT through V2Ray to a domain or an IP; returns the tag the far end wrote.
fn v2ray_choice(v2ray: &V2Ray, host: &str, port: u16) -> String {
    let mut s = TcpStream::connect(v2ray.socks).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).unwrap();
    let mut req = vec![5, 1, 0];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        Ok(IpAddr::V6(ip)) => {
            req.push(4);
            req.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            req.extend_from_slice(&[3, host.len() as u8]);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    // The tag and a newline: read up to it, without waiting for V2Ray to close the session.
    let mut tag = Vec::new();
    let mut byte = [0u8; 1];
    while s.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        tag.push(byte[0]);
    }
    String::from_utf8(tag).unwrap()
}

fn shardray_choice(api: &ApiClient, host: &str, port: u16) -> String {
    let mut ctx = pb::RoutingContext { target_port: u32::from(port), ..Default::default() };
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ctx.target_i_ps = vec![ip.octets().to_vec()],
        Ok(IpAddr::V6(ip)) => ctx.target_i_ps = vec![ip.octets().to_vec()],
        Err(_) => ctx.target_domain = host.into(),
    }
    let mut client = pb::routing_service_client::RoutingServiceClient::new(api.channel());
    let req = pb::TestRouteRequest { routing_context: Some(ctx), ..Default::default() };
    api.block_on(client.test_route(req)).unwrap().into_inner().outbound_tag
}

/// A few addresses inside `code`'s networks in the real geoip.dat.
fn addresses_in(list: &GeoIpList, code: &str, n: usize) -> Vec<String> {
    let entry = list.entry.iter().find(|e| e.code.eq_ignore_ascii_case(code)).unwrap();
    let v4: Vec<_> = entry.cidr.iter().filter(|c| c.ip.len() == 4).collect();
    (0..n)
        .map(|i| {
            let c = v4[(i * 7919) % v4.len()];
            let ip = Ipv4Addr::new(c.ip[0], c.ip[1], c.ip[2], c.ip[3]);
            // Inside the network, past its first address.
            Ipv4Addr::from(u32::from(ip) + 1).to_string()
        })
        .collect()
}

#[test]
fn shardray_routes_geoip_and_geosite_as_v2ray_does() {
    // Where shardray finds the .dat files, as Xray would.
    std::env::set_var("XRAY_LOCATION_ASSET", assets());
    let servers = tag_servers();
    let outbounds: Vec<Value> = servers
        .iter()
        .map(|(tag, addr)| json!({ "tag": tag, "protocol": "freedom", "settings": { "redirect": addr.to_string() } }))
        .collect();
    let v2ray = V2Ray::start_routed(json!(outbounds), json!({ "domainStrategy": "AsIs", "rules": rules() }));

    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["outbounds"] = json!(TAGS.iter().map(|t| json!({ "tag": t, "protocol": "freedom" })).collect::<Vec<_>>());
    config["routing"] = json!({ "domainStrategy": "AsIs", "rules": rules() });
    config["api"] = shardray_tests::loopback_api(&["RoutingService"]);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());

    let geoip = GeoIpList::decode(&std::fs::read(assets().join("geoip.dat")).unwrap()[..]).unwrap();
    let mut cases: Vec<(String, u16)> = [
        "www.google.com",
        "google.cn",
        "g.cn",
        "www.google.com.hk",
        "gstatic.com",
        "github.com",
        "api.github.com",
        "githubusercontent.com",
        "exact.example",
        "sub.exact.example",
        "baidu.com",
        "www.baidu.com",
        "qq.com",
        "taobao.com",
        "bilibili.com",
        "www.bilibili.com",
        "example.org",
        "youtube.com",
        "netflix.com",
        "cn",
    ]
    .iter()
    .map(|d| (d.to_string(), 443))
    .collect();
    for (code, n) in [("cn", 6), ("us", 6), ("jp", 4), ("de", 4), ("fr", 3)] {
        for ip in addresses_in(&geoip, code, n) {
            for port in [443, 80, 8443] {
                cases.push((ip.clone(), port));
            }
        }
    }
    cases.extend([("10.1.2.3", 443), ("192.168.7.7", 80), ("100.64.0.1", 8443)].map(|(h, p)| (h.to_string(), p)));
    assert!(cases.len() >= 50, "{} cases", cases.len());

    let mut disagreements = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (host, port) in &cases {
        let theirs = v2ray_choice(&v2ray, host, *port);
        let ours = shardray_choice(&api, host, *port);
        seen.insert(theirs.clone());
        if theirs != ours {
            disagreements.push(format!("{host}:{port}: V2Ray {theirs:?}, shardray {ours:?}"));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} cases differ:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
    // The table reaches every rule, so agreeing is not agreeing on the default alone.
    assert_eq!(seen.len(), TAGS.len(), "outbounds reached: {seen:?}");
}

#[test]
fn a_missing_list_or_file_is_named() {
    std::env::set_var("XRAY_LOCATION_ASSET", assets());
    let dir = tempfile::tempdir().unwrap();
    for (rule, want) in [
        (
            json!({ "domain": ["geosite:no-such-list"] }),
            "rules[0].domain[0]: geosite.dat has no entry \"no-such-list\"",
        ),
        (json!({ "ip": ["geoip:zz"] }), "rules[0].ip[0]: geoip.dat has no entry \"zz\""),
        (json!({ "ip": ["ext:missing.dat:cn"] }), "rules[0].ip[0]: missing.dat not found (looked in"),
    ] {
        let mut config = vless_config(json!([{ "id": ALICE }]), json!({}));
        let mut rule = rule;
        rule["outboundTag"] = json!("direct");
        config["routing"] = json!({ "rules": [rule] });
        let path = dir.path().join("c.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let (status, out) = run_cli(&["test", "-c", path.to_str().unwrap()]);
        assert!(!status.success() && out.contains(want), "want {want:?}:\n{out}");
    }
}

#[test]
fn the_files_are_found_where_xray_looks() {
    std::env::remove_var("XRAY_LOCATION_ASSET");
    std::env::remove_var("V2RAY_LOCATION_ASSET");
    let dir = tempfile::tempdir().unwrap();
    let mut config = vless_config(json!([{ "id": ALICE }]), json!({}));
    config["routing"] = json!({ "rules": [{ "domain": ["geosite:github"], "outboundTag": "direct" }] });
    let path = dir.path().join("c.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let check = |bin: &std::path::Path, env: Option<std::path::PathBuf>| {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["test", "-c", path.to_str().unwrap()]);
        if let Some(dir) = env {
            cmd.env("V2RAY_LOCATION_ASSET", dir);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let bin = shardray_tests::bin_path();
    // V2Ray's variable, as Xray reads it after its own.
    let (ok, out) = check(&bin, Some(assets()));
    assert!(ok, "{out}");
    // Nowhere: the error names every place looked in (unless this machine has them installed).
    let system = ["/usr/local/share/xray", "/usr/share/xray", "/usr/local/share/v2ray", "/usr/share/v2ray"];
    if !system.iter().any(|d| std::path::Path::new(d).join("geosite.dat").is_file()) {
        let (ok, out) = check(&bin, None);
        let beside = bin.parent().unwrap().display().to_string();
        assert!(!ok && out.contains("geosite.dat not found (looked in"), "{out}");
        assert!(out.contains(&beside) && system.iter().all(|d| out.contains(d)), "{out}");
    }
    // Next to the binary: a link to it in a directory that holds the file.
    let beside = tempfile::tempdir_in(bin.parent().unwrap()).unwrap();
    let linked = beside.path().join("shardray");
    std::fs::hard_link(&bin, &linked).unwrap();
    std::fs::copy(assets().join("geosite.dat"), beside.path().join("geosite.dat")).unwrap();
    let (ok, out) = check(&linked, None);
    assert!(ok, "{out}");
}
