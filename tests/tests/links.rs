//! `shardray link` against real clients: every link printed for the server configs in
//! examples/ is parsed here, turned into a sing-box 1.14.4 outbound, and that sing-box reaches
//! an echo server through shardray running the same config. `--format subscription` decodes to
//! the same links, and `--qr` draws codes that decode (rqrr) back to them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};
use shardray_tests::servers::EchoServer;
use shardray_tests::singbox::SingBox;
use shardray_tests::{fixed_port, run_cli, Shardray};

/// The example configs that are whole servers (the others are `shardray api` inputs).
const EXAMPLES: &[&str] = &["config.json", "links.json"];

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

/// JSON with `//` and `/* */` comments, as the examples are written, without them.
fn strip_comments(text: &str) -> String {
    let (mut out, mut chars) = (String::new(), text.chars().peekable());
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => out.extend(chars.next()),
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// The example with its inbounds on free fixed ports and loopback allowed first, so that the
/// test's echo server is reachable; what the links describe is left as written.
fn testable(name: &str) -> Value {
    let text = std::fs::read_to_string(example(name)).unwrap();
    let mut config: Value = serde_json::from_str(&strip_comments(&text)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut used = Vec::new();
    for inbound in config["inbounds"].as_array_mut().unwrap() {
        let port = std::iter::repeat_with(fixed_port).find(|p| !used.contains(p)).unwrap();
        used.push(port);
        inbound["port"] = json!(port);
    }
    config["outbounds"].as_array_mut().unwrap().push(json!({ "tag": "test-loopback", "protocol": "freedom" }));
    let rules = config["routing"]["rules"].as_array_mut().unwrap();
    rules.insert(
        0,
        json!({ "type": "field", "ip": ["127.0.0.1/32"], "port": "1024-65535", "outboundTag": "test-loopback" }),
    );
    // The API's own rule stays first.
    if let Some(api) = rules.iter().position(|r| r["outboundTag"] == "api") {
        let rule = rules.remove(api);
        rules.insert(0, rule);
    }
    config
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A link's parts: `scheme://userinfo@host:port?query#name`.
struct Link {
    scheme: String,
    userinfo: String,
    host: String,
    port: u16,
    query: HashMap<String, String>,
}

fn parse(link: &str) -> Link {
    let (scheme, rest) = link.split_once("://").unwrap();
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (userinfo, server) = rest.rsplit_once('@').unwrap();
    let (host, port) = server.rsplit_once(':').unwrap();
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), percent_decode(v))
        })
        .collect();
    Link {
        scheme: scheme.to_owned(),
        userinfo: userinfo.to_owned(),
        host: host.trim_matches(['[', ']']).to_owned(),
        port: port.parse().unwrap(),
        query,
    }
}

/// sing-box's `transport` for a link's `type`, `path` and `host`.
fn transport(kind: &str, path: &str, host: &str) -> Option<Value> {
    match kind {
        "" | "tcp" | "raw" => None,
        "ws" => {
            let mut t = json!({ "type": "ws", "path": path });
            if !host.is_empty() {
                t["headers"] = json!({ "Host": host });
            }
            Some(t)
        }
        "httpupgrade" => Some(json!({ "type": "httpupgrade", "path": path, "host": host })),
        other => panic!("transport {other} not covered by this test"),
    }
}

/// The sing-box outbound a client app would build from `link`.
fn outbound(link: &str) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(body) = link.strip_prefix("vmess://") {
        let v: Value = serde_json::from_slice(&b64.decode(body).unwrap()).unwrap();
        assert_eq!((v["v"].as_str(), v["aid"].as_str()), (Some("2"), Some("0")), "{v}");
        let mut out = json!({
            "type": "vmess", "tag": "out", "server": v["add"], "server_port": v["port"].as_str().unwrap().parse::<u16>().unwrap(),
            "uuid": v["id"], "security": v["scy"], "alter_id": 0,
        });
        if let Some(t) = transport(v["net"].as_str().unwrap(), v["path"].as_str().unwrap(), v["host"].as_str().unwrap())
        {
            out["transport"] = t;
        }
        if let Some(tls) = tls(v["tls"].as_str().unwrap(), v["sni"].as_str().unwrap_or_default()) {
            out["tls"] = tls;
        }
        return out;
    }
    let l = parse(link);
    let (server, port) = (l.host.clone(), l.port);
    let q = |k: &str| l.query.get(k).cloned().unwrap_or_default();
    let mut out = match l.scheme.as_str() {
        "vless" => {
            assert_eq!(q("encryption"), "none", "{link}");
            json!({ "type": "vless", "uuid": l.userinfo })
        }
        "trojan" => json!({ "type": "trojan", "password": percent_decode(&l.userinfo) }),
        "ss" => {
            // SIP002: base64url of `method:password`, or (2022) `method:password` percent-encoded.
            let plain = match l.userinfo.split_once(':') {
                Some((m, p)) => format!("{}:{}", percent_decode(m), percent_decode(p)),
                None => {
                    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&l.userinfo).unwrap();
                    String::from_utf8(raw).unwrap()
                }
            };
            let (method, password) = plain.split_once(':').unwrap();
            json!({ "type": "shadowsocks", "method": method, "password": password })
        }
        other => panic!("scheme {other} not covered by this test: {link}"),
    };
    out["tag"] = json!("out");
    out["server"] = json!(server);
    out["server_port"] = json!(port);
    if let Some(t) = transport(&q("type"), &q("path"), &q("host")) {
        out["transport"] = t;
    }
    if let Some(tls) = tls(&q("security"), &q("sni")) {
        out["tls"] = tls;
    }
    out
}

/// sing-box's `tls` for a link's `security` (not verified: a test server's certificate is self-signed).
fn tls(security: &str, sni: &str) -> Option<Value> {
    match security {
        "" | "none" => None,
        "tls" => Some(json!({ "enabled": true, "insecure": true, "server_name": sni })),
        other => panic!("security {other} not covered by this test"),
    }
}

/// `shardray link ARGS -c FILE`'s standard output lines, asserting success.
fn link_lines(file: &Path, args: &[&str]) -> Vec<String> {
    let mut all = vec!["link", "-c", file.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = std::process::Command::new(shardray_tests::bin_path()).args(&all).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn every_example_link_carries_a_sing_box_client_to_an_echo_server() {
    let echo = EchoServer::start();
    let mut schemes = Vec::new();
    for name in EXAMPLES {
        let server = Shardray::start(&testable(name), 1);
        let file = server.dir.path().join("config.json");
        let links = link_lines(&file, &[]);
        assert!(!links.is_empty(), "{name}: no links");
        for (i, link) in links.iter().enumerate() {
            let client = SingBox::start(outbound(link));
            let mut s = client.connect(echo.addr()).unwrap_or_else(|e| panic!("{link}: {e}\n{}", client.log()));
            let payload = format!("{name} link {i}").into_bytes();
            let back = shardray_tests::proxy::echo_through(&mut s, &payload)
                .unwrap_or_else(|e| panic!("{link}: {e}\n{}\n{}", client.log(), server.output()));
            assert_eq!(back, payload, "{link}");
            schemes.push(link.split("://").next().unwrap().to_owned());
        }
    }
    // The examples cover every protocol the links are written for.
    for scheme in ["vless", "vmess", "trojan", "ss"] {
        assert!(schemes.iter().any(|s| s == scheme), "no {scheme} link in examples/: {schemes:?}");
    }
}

#[test]
fn subscription_and_user_pick_the_same_links() {
    let file = example("links.json");
    let links = link_lines(&file, &[]);
    let sub = link_lines(&file, &["--format", "subscription"]);
    assert_eq!(sub.len(), 1);
    let decoded = base64::engine::general_purpose::STANDARD.decode(&sub[0]).unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), links.join("\n"));
    // One user's: that user's link only, whatever the case of the email.
    let carol = link_lines(&file, &["--user", "Carol@Example.com"]);
    assert_eq!(carol.len(), 1);
    let vmess: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD.decode(carol[0].strip_prefix("vmess://").unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(vmess["ps"], "carol@example.com");
    assert!(links.contains(&carol[0]));
    let (status, out) = run_cli(&["link", "-c", file.to_str().unwrap(), "--user", "nobody@example.com"]);
    assert!(!status.success() && out.contains("nobody@example.com"), "{out}");
}

/// Decodes one QR code drawn in half blocks (`█` both light, `▀` top light, `▄` bottom light).
fn decode_qr(lines: &[String]) -> String {
    const SCALE: usize = 4;
    let width = lines[0].chars().count();
    let height = lines.len() * 2;
    let rows: Vec<Vec<char>> = lines.iter().map(|l| l.chars().collect()).collect();
    let light = |x: usize, y: usize| {
        let c = rows[y / 2].get(x).copied().unwrap_or(' ');
        matches!((c, y % 2), ('█', _) | ('▀', 0) | ('▄', 1))
    };
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(width * SCALE, height * SCALE, |x, y| {
        if light(x / SCALE, y / SCALE) {
            255
        } else {
            0
        }
    });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one code expected in:\n{}", lines.join("\n"));
    grids[0].decode().unwrap().1
}

#[test]
fn qr_codes_decode_to_the_links() {
    let file = example("links.json");
    let links = link_lines(&file, &[]);
    let out = link_lines(&file, &["--qr"]);
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < out.len() {
        let link = &out[i];
        let end = out[i + 1..].iter().position(String::is_empty).map_or(out.len(), |n| i + 1 + n);
        let code = decode_qr(&out[i + 1..end]);
        assert_eq!(&code, link, "the code under a link is that link");
        decoded.push(code);
        i = end + 1;
    }
    assert_eq!(decoded, links);
}

#[test]
fn tls_links_carry_a_sing_box_client_too() {
    let echo = EchoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cert = shardray_tests::tls::SelfSigned::generate(dir.path(), &["proxy.example"]);
    let mut config = testable("links.json");
    // TLS under VLESS over WebSocket, VMess and Trojan over raw TCP.
    for tag in ["vless-ws", "vmess-tcp", "trojan-tcp"] {
        let inbound = config["inbounds"].as_array_mut().unwrap().iter_mut().find(|i| i["tag"] == tag).unwrap();
        let mut stream = cert.stream_settings("proxy.example", &["http/1.1"]);
        if let Some(ws) = inbound.get("streamSettings").and_then(|s| s.get("wsSettings")).cloned() {
            stream["network"] = json!("ws");
            stream["wsSettings"] = ws;
        }
        inbound["streamSettings"] = stream;
    }
    let server = Shardray::start(&config, 1);
    let links = link_lines(&server.dir.path().join("config.json"), &[]);
    let tls: Vec<&String> = links.iter().filter(|l| outbound(l).get("tls").is_some()).collect();
    assert_eq!(tls.len(), 3, "{links:?}");
    for link in tls {
        let client = SingBox::start(outbound(link));
        let mut s = client.connect(echo.addr()).unwrap_or_else(|e| panic!("{link}: {e}\n{}", client.log()));
        let back = shardray_tests::proxy::echo_through(&mut s, b"over tls")
            .unwrap_or_else(|e| panic!("{link}: {e}\n{}\n{}", client.log(), server.output()));
        assert_eq!(back, b"over tls", "{link}");
    }
}
