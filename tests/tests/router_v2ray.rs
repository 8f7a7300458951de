//! The router against V2Ray 4.45.2: the same rules (geosite with attributes, geoip, ports and
//! port lists, networks, users, inbound tags, sources, domain matchers, sniffed protocols and
//! names) on the same real `.dat` files, and a table of connections run three ways: through
//! V2Ray, through shardray's data path (both SOCKS servers whose tagged outbounds are freedoms
//! redirected to local servers that name their tag), and through shardray's TestRoute. All
//! three must pick the same outbound.
//!
//! Deliberate differences, left out of the table: a SOCKS UDP association is routed once by its
//! first datagram in shardray, as in Xray, where V2Ray routes each destination of it on its own;
//! so every UDP case here opens an association of its own.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use serde_json::{json, Value};
use shardray_proto::xray::app::router::command as pb;
use shardray_proto::xray::common::geodata::GeoIpList;
use shardray_proto::xray::common::net::Network;
use shardray_tests::api::ApiClient;
use shardray_tests::proxy::socks5_over;
use shardray_tests::singbox::free_port;
use shardray_tests::udp::Socks5Udp;
use shardray_tests::v2ray::V2Ray;
use shardray_tests::Shardray;
use shardray_wire::addr::{Address, Destination};
use shardray_wire::socks::UdpHeader;

/// The outbounds, the default first; each rule below sends to one of them.
const TAGS: [&str; 19] = [
    "default",
    "by-inbound",
    "by-user",
    "user-and-domain",
    "by-source",
    "by-source-port",
    "bittorrent",
    "udp-dns",
    "udp-cn",
    "tcp-ports",
    "attr",
    "matchers",
    "github",
    "cn-443",
    "cn",
    "cn-ip-web",
    "us-ports",
    "private",
    "not-de",
];

/// Source ports this rule matches; the kernel hands out ephemeral ports above them.
const LOW_PORTS: (u16, u16) = (10000, 20000);

fn rules() -> Value {
    json!([
        { "type": "field", "inboundTag": ["in-b"], "outboundTag": "by-inbound" },
        { "type": "field", "user": ["bob@example.com"], "outboundTag": "by-user" },
        { "type": "field", "user": ["alice@example.com"], "domain": ["geosite:github"], "outboundTag": "user-and-domain" },
        { "type": "field", "source": ["127.0.0.2/32"], "outboundTag": "by-source" },
        { "type": "field", "sourcePort": format!("{}-{}", LOW_PORTS.0, LOW_PORTS.1), "outboundTag": "by-source-port" },
        { "type": "field", "protocol": ["bittorrent"], "outboundTag": "bittorrent" },
        { "type": "field", "network": "udp", "port": "53,5353", "outboundTag": "udp-dns" },
        { "type": "field", "network": "udp", "ip": ["geoip:cn"], "outboundTag": "udp-cn" },
        { "type": "field", "network": "tcp", "port": "25-30", "outboundTag": "tcp-ports" },
        { "type": "field", "domain": ["geosite:google@cn"], "outboundTag": "attr" },
        // V2Ray reads `@!cn` as an attribute named "!cn", which no domain carries: the entry
        // adds nothing, and the rule is its other entry alone.
        { "type": "field", "domain": ["geosite:google@!cn", "full:neg.example"], "outboundTag": "matchers" },
        { "type": "field",
          "domain": ["full:exact.example", "domain:dom.example", "keyword:kwd", "regexp:^re[0-9]+\\.example$"],
          "outboundTag": "matchers" },
        { "type": "field", "domain": ["geosite:github"], "outboundTag": "github" },
        { "type": "field", "domain": ["geosite:cn"], "port": "443", "outboundTag": "cn-443" },
        { "type": "field", "domain": ["geosite:cn", "ext:geosite.dat:bilibili"], "outboundTag": "cn" },
        { "type": "field", "ip": ["geoip:cn"], "port": "80,443", "outboundTag": "cn-ip-web" },
        { "type": "field", "ip": ["geoip:us"], "port": "1000-2000,8443", "outboundTag": "us-ports" },
        { "type": "field", "ip": ["geoip:private", "ext:geoip.dat:jp"], "outboundTag": "private" },
        { "type": "field", "ip": ["geoip:!de"], "port": 8080, "outboundTag": "not-de" }
    ])
}

/// What the client sends first, once the proxy accepted its request.
#[derive(Debug, Clone, Copy)]
enum First {
    /// Bytes no sniffer reads.
    Opaque,
    /// A TLS ClientHello naming this server.
    Tls(&'static str),
    /// An HTTP/1.1 request with this `Host`.
    Http(&'static str),
    /// A BitTorrent handshake.
    BitTorrent,
}

#[derive(Debug, Clone)]
struct Case {
    /// `in-a` (no auth, sniffing http and tls, UDP), `in-b` (no auth, no sniffing) or
    /// `in-users` (accounts whose usernames are their emails).
    inbound: &'static str,
    user: Option<&'static str>,
    /// The client's address, 127.0.0.1 unless given.
    from: Option<Ipv4Addr>,
    /// The client binds a port in `LOW_PORTS`.
    low_port: bool,
    udp: bool,
    host: String,
    port: u16,
    first: First,
}

impl Case {
    fn tcp(host: impl Into<String>, port: u16) -> Case {
        Case {
            inbound: "in-a",
            user: None,
            from: None,
            low_port: false,
            udp: false,
            host: host.into(),
            port,
            first: First::Opaque,
        }
    }

    fn udp(host: impl Into<String>, port: u16) -> Case {
        Case { udp: true, ..Case::tcp(host, port) }
    }

    fn sends(self, first: First) -> Case {
        Case { first, ..self }
    }

    fn user(self, user: &'static str) -> Case {
        Case { inbound: "in-users", user: Some(user), ..self }
    }

    fn via(self, inbound: &'static str) -> Case {
        Case { inbound, ..self }
    }
}

/// Servers, one per tag, on TCP and UDP at the same port, answering each connection and each
/// datagram with their tag and a newline.
fn tag_servers() -> Vec<(String, SocketAddr)> {
    TAGS.iter()
        .map(|tag| {
            let (tcp, udp) = loop {
                let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
                if let Ok(udp) = UdpSocket::bind(tcp.local_addr().unwrap()) {
                    break (tcp, udp);
                }
            };
            let addr = tcp.local_addr().unwrap();
            let reply = format!("{tag}\n");
            let tcp_reply = reply.clone();
            std::thread::spawn(move || {
                for mut c in tcp.incoming().flatten() {
                    let reply = tcp_reply.clone();
                    // Read to the end: closing with the client's bytes unread would reset the
                    // connection, and the reset may overtake the tag.
                    std::thread::spawn(move || {
                        let _ = c.write_all(reply.as_bytes());
                        let _ = std::io::copy(&mut c, &mut std::io::sink());
                    });
                }
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(reply.as_bytes(), from);
                }
            });
            (tag.to_string(), addr)
        })
        .collect()
}

/// A real ClientHello, as rustls writes it for `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

fn first_bytes(first: First) -> Vec<u8> {
    match first {
        First::Opaque => b"xyz\n".to_vec(),
        First::Tls(name) => client_hello(name),
        First::Http(host) => format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: t\r\n\r\n").into_bytes(),
        First::BitTorrent => {
            let mut hs = b"\x13BitTorrent protocol".to_vec();
            hs.extend_from_slice(&[0; 8]);
            hs.extend_from_slice(&[7; 40]);
            hs
        }
    }
}

/// A TCP connection from `from` (and a low port if asked) to `proxy`.
fn connect_from(proxy: SocketAddr, from: Ipv4Addr, low_port: bool, attempt: &mut u16) -> (TcpStream, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    for _ in 0..200 {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        let port = if low_port {
            *attempt = attempt.wrapping_add(7919);
            LOW_PORTS.0 + (u32::from(*attempt) * 13 + std::process::id()) as u16 % (LOW_PORTS.1 - LOW_PORTS.0)
        } else {
            0
        };
        if socket.bind(&SocketAddr::from((from, port)).into()).is_err() {
            continue;
        }
        if socket.connect_timeout(&proxy.into(), Duration::from_secs(5)).is_err() {
            continue;
        }
        let stream: TcpStream = socket.into();
        let local = stream.local_addr().unwrap();
        return (stream, local);
    }
    panic!("no connection from {from} to {proxy}");
}

/// The tag of the outbound `proxy` (a SOCKS server, V2Ray or shardray) carried `case` through,
/// and the client's address.
fn through_socks(proxy: SocketAddr, case: &Case, attempt: &mut u16) -> Result<(String, SocketAddr), String> {
    let dest = Destination { addr: Address::parse(&case.host).unwrap(), port: case.port };
    if case.udp {
        let assoc = Socks5Udp::associate(proxy).map_err(|e| format!("associate: {e}"))?;
        let mut datagram = Vec::new();
        UdpHeader::encode(&dest, &mut datagram);
        datagram.extend_from_slice(b"udp?");
        assoc.send_raw(&datagram).map_err(|e| e.to_string())?;
        let reply = assoc.recv_raw().map_err(|e| format!("no reply: {e}"))?;
        let mut cur = &reply[..];
        UdpHeader::decode(&mut cur).map_err(|e| format!("reply header: {e:?}"))?;
        let tag = String::from_utf8_lossy(cur).trim_end().to_string();
        return Ok((tag, assoc.control.local_addr().unwrap()));
    }
    let (mut s, local) = connect_from(proxy, case.from.unwrap_or(Ipv4Addr::LOCALHOST), case.low_port, attempt);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let credentials = case.user.map(|u| (u, "pass"));
    socks5_over(&mut s, credentials, dest).map_err(|e| format!("socks: {e}"))?;
    s.write_all(&first_bytes(case.first)).map_err(|e| e.to_string())?;
    // The tag and a newline: read up to it, without waiting for the proxy to close.
    let mut tag = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(1) if byte[0] != b'\n' => tag.push(byte[0]),
            Ok(1) => break,
            Ok(_) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&tag))),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok((String::from_utf8(tag).unwrap(), local))
}

/// shardray's TestRoute for `case` from `client`; for a sniffed case, with the name and
/// protocol the sniffer reports, since TestRoute does not sniff.
fn test_route(api: &ApiClient, case: &Case, client: SocketAddr) -> String {
    let (name, protocol) = match case.first {
        First::Tls(name) if case.inbound == "in-a" => (Some(name), "tls"),
        First::Http(host) if case.inbound == "in-a" => (host.split(':').next(), "http1"),
        First::BitTorrent if case.inbound == "in-a" => (None, "bittorrent"),
        _ => (None, ""),
    };
    let mut ctx = pb::RoutingContext {
        inbound_tag: case.inbound.into(),
        network: if case.udp { Network::Udp } else { Network::Tcp } as i32,
        source_i_ps: vec![match client.ip() {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        }],
        source_port: u32::from(client.port()),
        target_port: u32::from(case.port),
        user: case.user.unwrap_or("").into(),
        protocol: protocol.into(),
        ..Default::default()
    };
    match (name, case.host.parse::<IpAddr>()) {
        (Some(name), _) => ctx.target_domain = name.into(),
        (None, Ok(IpAddr::V4(ip))) => ctx.target_i_ps = vec![ip.octets().to_vec()],
        (None, Ok(IpAddr::V6(ip))) => ctx.target_i_ps = vec![ip.octets().to_vec()],
        (None, Err(_)) => ctx.target_domain = case.host.clone(),
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
            let c = v4[(i * 104_729 + 17) % v4.len()];
            let ip = Ipv4Addr::new(c.ip[0], c.ip[1], c.ip[2], c.ip[3]);
            Ipv4Addr::from(u32::from(ip) + 1).to_string()
        })
        .collect()
}

/// The same for IPv6 networks.
fn addresses_v6_in(list: &GeoIpList, code: &str, n: usize) -> Vec<String> {
    let entry = list.entry.iter().find(|e| e.code.eq_ignore_ascii_case(code)).unwrap();
    let v6: Vec<_> = entry.cidr.iter().filter(|c| c.ip.len() == 16).collect();
    (0..n)
        .map(|i| {
            let c = v6[(i * 104_729 + 17) % v6.len()];
            let ip: [u8; 16] = c.ip[..].try_into().unwrap();
            std::net::Ipv6Addr::from(u128::from_be_bytes(ip) + 1).to_string()
        })
        .collect()
}

fn cases(geoip: &GeoIpList) -> Vec<Case> {
    let mut cases: Vec<Case> = [
        ("www.google.com", 443),
        ("google.cn", 443),
        ("www.google.cn", 80),
        ("g.cn", 443),
        ("github.com", 443),
        ("api.github.com", 80),
        ("githubusercontent.com", 443),
        ("exact.example", 443),
        ("sub.exact.example", 443),
        ("Exact.Example", 443),
        ("dom.example", 443),
        ("a.b.dom.example", 80),
        ("xdom.example", 443),
        ("mykwdsite.org", 443),
        ("re42.example", 443),
        ("re42.example.org", 443),
        ("rex.example", 443),
        ("neg.example", 443),
        ("baidu.com", 443),
        ("baidu.com", 80),
        ("WWW.BAIDU.COM", 443),
        ("www.qq.com", 443),
        ("taobao.com", 8080),
        ("bilibili.com", 80),
        ("example.org", 443),
        ("youtube.com", 443),
        ("smtp.example", 25),
        ("smtp.example", 30),
        ("smtp.example", 31),
        // Case and a trailing dot.
        ("RE7.Example", 443),
        ("MyKWD.org", 443),
        ("github.com.", 443),
    ]
    .into_iter()
    .map(|(h, p)| Case::tcp(h, p))
    .collect();

    let cn = addresses_in(geoip, "cn", 3);
    let us = addresses_in(geoip, "us", 3);
    let de = addresses_in(geoip, "de", 2);
    let fr = addresses_in(geoip, "fr", 2);
    let jp = addresses_in(geoip, "jp", 1);
    for ip in &cn {
        cases.extend([443, 80, 8080].map(|p| Case::tcp(ip, p)));
    }
    for ip in &us {
        cases.extend([1500, 8443, 443, 2001].map(|p| Case::tcp(ip, p)));
    }
    for ip in de.iter().chain(&fr) {
        cases.extend([8080, 443].map(|p| Case::tcp(ip, p)));
    }
    cases.extend(
        [("10.1.2.3", 443), ("192.168.7.7", 80), ("100.64.0.1", 8443), ("172.16.5.5", 28)]
            .map(|(h, p)| Case::tcp(h, p)),
    );
    cases.push(Case::tcp(&jp[0], 443));
    // IPv6: the same tables' v6 networks.
    for ip in addresses_v6_in(geoip, "cn", 2) {
        cases.extend([443, 8080].map(|p| Case::tcp(&ip, p)));
    }
    cases.extend([("fd00::1", 443), ("2001:db8::1", 8080), ("::ffff:10.1.2.3", 443)].map(|(h, p)| Case::tcp(h, p)));

    // UDP, each on an association of its own.
    cases.extend([
        Case::udp(&cn[0], 53),
        Case::udp(&cn[1], 9000),
        Case::udp(&us[0], 53),
        Case::udp(&us[1], 9000),
        Case::udp("example.org", 5353),
        Case::udp("baidu.com", 443),
        Case::udp("example.org", 27),
        Case::udp("10.1.2.3", 27),
        Case::udp(&de[0], 8080),
        Case::udp(&fr[0], 8080),
    ]);

    // Users (SOCKS accounts), inbound tags, sources.
    cases.extend([
        Case::tcp("example.org", 443).user("bob@example.com"),
        Case::tcp("github.com", 443).user("alice@example.com"),
        Case::tcp("example.org", 443).user("alice@example.com"),
        Case::tcp("baidu.com", 443).user("alice@example.com"),
        Case::tcp("github.com", 443).user("carol@example.com"),
        Case::tcp("github.com", 443).via("in-b"),
        Case::tcp(&cn[0], 80).via("in-b"),
        Case { from: Some(Ipv4Addr::new(127, 0, 0, 2)), ..Case::tcp("example.org", 443) },
        Case { from: Some(Ipv4Addr::new(127, 0, 0, 2)), ..Case::tcp("github.com", 443).user("bob@example.com") },
        Case { low_port: true, ..Case::tcp("example.org", 443) },
        Case { low_port: true, ..Case::tcp("github.com", 443) },
    ]);

    // Sniffed: names and protocols to IP destinations.
    let ip = "198.51.100.7";
    cases.extend([
        Case::tcp(ip, 443).sends(First::Tls("www.baidu.com")),
        Case::tcp(ip, 443).sends(First::Tls("google.cn")),
        Case::tcp(ip, 443).sends(First::Tls("example.org")),
        Case::tcp(ip, 443).sends(First::Tls("api.github.com")),
        Case::tcp(ip, 80).sends(First::Http("exact.example")),
        Case::tcp(ip, 80).sends(First::Http("baidu.com")),
        Case::tcp(ip, 80).sends(First::Http("exact.example:8080")),
        Case::tcp(ip, 6881).sends(First::BitTorrent),
        Case::tcp(&cn[0], 80).sends(First::Tls("example.org")),
        Case::tcp(&us[0], 8443).sends(First::Tls("www.baidu.com")),
        // No sniffing on these inbounds: the IP routes.
        Case::tcp(&cn[0], 443).sends(First::Tls("github.com")).via("in-b"),
        Case::tcp(&cn[0], 443).sends(First::Tls("github.com")).user("alice@example.com"),
    ]);
    cases
}

/// Three SOCKS inbounds, as `Case::inbound` describes them, on the given ports (0 for any).
fn inbounds(ports: [u16; 3]) -> Value {
    let accounts: Vec<Value> = ["alice@example.com", "bob@example.com", "carol@example.com"]
        .iter()
        .map(|u| json!({ "user": u, "pass": "pass" }))
        .collect();
    json!([
        { "tag": "in-a", "listen": "127.0.0.1", "port": ports[0], "protocol": "socks",
          "settings": { "auth": "noauth", "udp": true, "ip": "127.0.0.1" },
          "sniffing": { "enabled": true, "destOverride": ["http", "tls"] } },
        { "tag": "in-b", "listen": "127.0.0.1", "port": ports[1], "protocol": "socks",
          "settings": { "auth": "noauth" } },
        { "tag": "in-users", "listen": "127.0.0.1", "port": ports[2], "protocol": "socks",
          "settings": { "auth": "password", "accounts": accounts } }
    ])
}

#[test]
fn the_router_picks_what_v2ray_picks() {
    let assets = shardray_tests::peers::v2ray().parent().unwrap().to_path_buf();
    std::env::set_var("XRAY_LOCATION_ASSET", &assets);
    let servers = tag_servers();
    let outbounds: Vec<Value> = servers
        .iter()
        .map(|(tag, addr)| json!({ "tag": tag, "protocol": "freedom", "settings": { "redirect": addr.to_string() } }))
        .collect();
    let routing = json!({ "domainStrategy": "AsIs", "rules": rules() });

    let v2_ports = [free_port(), free_port(), free_port()];
    let v2ray = V2Ray::start_full(inbounds(v2_ports), json!(outbounds), routing.clone());
    let v2_inbound = |tag: &str| {
        let i = ["in-a", "in-b", "in-users"].iter().position(|t| *t == tag).unwrap();
        SocketAddr::from(([127, 0, 0, 1], v2_ports[i]))
    };

    let config = json!({
        "log": { "loglevel": "warning" },
        "inbounds": inbounds([0, 0, 0]),
        "outbounds": outbounds,
        "routing": routing,
        "api": shardray_tests::loopback_api(&["RoutingService"]),
    });
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());

    let geoip = GeoIpList::decode(&std::fs::read(assets.join("geoip.dat")).unwrap()[..]).unwrap();
    let cases = cases(&geoip);
    assert!(cases.len() >= 50, "{} cases", cases.len());

    let mut attempt = 0u16;
    let mut disagreements = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for case in &cases {
        let theirs = through_socks(v2_inbound(case.inbound), case, &mut attempt);
        let ours = through_socks(server.inbound(case.inbound), case, &mut attempt);
        let (theirs, client) = match theirs {
            Ok(t) => t,
            Err(e) => panic!("{case:?} through V2Ray: {e}\n{}", v2ray.log()),
        };
        let routed = test_route(&api, case, client);
        let ours = ours.map(|(t, _)| t).unwrap_or_else(|e| format!("error: {e}"));
        seen.insert(theirs.clone());
        if theirs != ours || theirs != routed {
            disagreements.push(format!("{case:?}: V2Ray {theirs:?}, shardray {ours:?}, TestRoute {routed:?}"));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} cases differ:\n{}\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n"),
        server.output()
    );
    // The table reaches every rule, so agreeing is not agreeing on the default alone.
    let unseen: Vec<_> = TAGS.iter().filter(|t| !seen.contains(**t)).collect();
    assert!(unseen.is_empty(), "no case reached {unseen:?}");
}
