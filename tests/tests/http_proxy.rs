//! The HTTP proxy inbound against the real binary with two shards: curl as the client for
//! CONNECT and for absolute-URI requests kept alive across two origin servers, our own client
//! for exact counters and raw refusals (407, 400), `allowTransparent`, TLS, and probes that
//! get nothing back.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::proxy::{echo_through, http_config, http_connect, read_head, OriginServer};
use shardray_tests::servers::EchoServer;
use shardray_tests::tls::SelfSigned;
use shardray_tests::vless::{self, payload};
use shardray_tests::{loopback_api, run_cli, wait_until, Shardray};
use shardray_wire::addr::Destination;

const BOB: Option<(&str, &str)> = Some(("bob", "bob's http password"));

/// An HTTP inbound with bob's account (email bob@example.com), `extra` settings, a
/// StatsService API and a 1 s handshake timeout.
fn config(extra: Value) -> Value {
    let mut settings =
        json!({ "accounts": [{ "user": "bob", "pass": "bob's http password", "email": "bob@example.com" }] });
    for (k, v) in extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    let mut config = http_config(settings, json!({}));
    config["api"] = loopback_api(&["StatsService"]);
    config["policy"]["levels"]["0"]["handshake"] = json!(1);
    config
}

/// Runs curl through `proxy` (the `-x` URL) with `args`; its exit status, stdout and stderr.
fn curl(proxy: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", "-x", proxy])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn curl_keeps_one_connection_for_requests_to_two_origins_and_the_proxy_fields_never_reach_them() {
    let (a, b) = (OriginServer::start("origin-a"), OriginServer::start("origin-b"));
    let server = Shardray::start(&config(json!({})), 2);
    let proxy = format!("http://bob:bob%27s%20http%20password@{}", server.inbound("http-in"));
    let (url_a, url_b) = (format!("http://{}/first?x=1", a.addr()), format!("http://{}/second", b.addr()));
    let (ok, body, log) = curl(&proxy, &[&url_a, &url_b, &url_a]);
    assert!(ok, "{log}\n{}", server.output());
    assert_eq!(
        body, "origin-a GET /first?x=1 HTTP/1.1 origin-b GET /second HTTP/1.1 origin-a GET /first?x=1 HTTP/1.1 ",
        "{log}"
    );
    // One client connection for the three: curl says so, and each went to its own host.
    assert_eq!(log.matches("Re-using existing connection").count(), 2, "{log}");
    for origin in [&a, &b, &a] {
        let head = origin.next(Duration::from_secs(2)).expect("the origin got the request");
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("proxy-authorization") && !lower.contains("proxy-connection"), "{head}");
        assert!(
            lower.contains("\r\nconnection: close\r\n") && lower.contains(&format!("host: {}", origin.addr())),
            "{head}"
        );
    }
    // curl's response heads came back rewritten as Xray writes them.
    assert!(log.contains("< Proxy-Connection: keep-alive") && log.contains("< X-Origin: origin-b"), "{log}");
}

#[test]
fn curl_tunnels_with_connect_and_a_post_body_arrives_whole() {
    let origin = OriginServer::start("origin");
    let server = Shardray::start(&config(json!({})), 2);
    let proxy = format!("http://bob:bob%27s%20http%20password@{}", server.inbound("http-in"));
    let url = format!("http://{}/tunnelled", origin.addr());
    let (ok, body, log) = curl(&proxy, &["-p", &url]);
    assert!(ok && log.contains("CONNECT 127.0.0.1"), "{log}");
    assert_eq!(body, "origin GET /tunnelled HTTP/1.1 ");
    let data = "x".repeat(100_000);
    let (ok, body, log) = curl(&proxy, &["--data-binary", &data, &url]);
    assert!(ok, "{log}");
    assert_eq!(body, format!("origin POST /tunnelled HTTP/1.1 {data}"));
}

#[test]
fn connect_sessions_count_exactly_per_account_on_both_shards() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config(json!({})), 2);
    let proxy = server.inbound("http-in");
    let echo_addr = echo.addr();
    std::thread::scope(|s| {
        for t in 0..16u64 {
            s.spawn(move || {
                let data = payload(65_536, t);
                let mut conn = http_connect(proxy, BOB, Destination::from(echo_addr)).unwrap();
                assert!(echo_through(&mut conn, &data).unwrap() == data, "thread {t}");
            });
        }
    });
    let api = ApiClient::connect(server.api.unwrap());
    let total = 16 * 65_536;
    assert!(wait_until(Duration::from_secs(5), || {
        let all = api.query("user>>>bob@example.com>>>traffic", false);
        all.get("user>>>bob@example.com>>>traffic>>>uplink") == Some(&total)
            && all.get("user>>>bob@example.com>>>traffic>>>downlink") == Some(&total)
    }));
    assert_eq!(api.get("inbound>>>http-in>>>traffic>>>uplink", false).unwrap(), total);
}

/// Writes `bytes`, half-closes, and returns everything until the server closes.
fn answer_to(proxy: SocketAddr, bytes: &[u8]) -> String {
    let mut s = vless::connect(proxy).unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    String::from_utf8_lossy(&vless::read_all(&mut s).unwrap_or_default()).into_owned()
}

const AUTH_REQUIRED: &str =
    "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"proxy\"\r\n\r\n";

#[test]
fn refusals_answer_407_and_400_as_xray_and_garbage_gets_nothing() {
    let origin = OriginServer::start("origin");
    let server = Shardray::start(&config(json!({})), 2);
    let proxy = server.inbound("http-in");
    let get = format!("GET http://{}/ HTTP/1.1\r\nHost: {}\r\n", origin.addr(), origin.addr());
    assert_eq!(answer_to(proxy, format!("{get}\r\n").as_bytes()), AUTH_REQUIRED);
    // Ym9iOndyb25n is bob:wrong.
    assert_eq!(
        answer_to(proxy, format!("{get}Proxy-Authorization: Basic Ym9iOndyb25n\r\n\r\n").as_bytes()),
        AUTH_REQUIRED
    );
    let (ok, _, log) = curl(&format!("http://bob:nope@{proxy}"), &["-p", &format!("http://{}/", origin.addr())]);
    assert!(!ok && log.contains("407"), "{log}");
    // Not a proxy request: 400, after the credentials are checked.
    let origin_form =
        "GET /x HTTP/1.1\r\nHost: example.com\r\nProxy-Authorization: Basic Ym9iOmJvYidzIGh0dHAgcGFzc3dvcmQ=\r\n\r\n";
    assert!(answer_to(proxy, origin_form.as_bytes()).starts_with("HTTP/1.1 400 Bad Request\r\n"));
    assert_eq!(origin.next(Duration::from_millis(300)), None, "the origin was reached");
    // Bytes that are not HTTP: nothing back, drained.
    for garbage in [&b"\x16\x03\x01\x02\x00\x01"[..], b"\xff\xfe\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", &payload(3000, 3)]
    {
        let mut s = vless::connect(proxy).unwrap();
        s.write_all(garbage).unwrap();
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back);
        assert!(back.is_empty(), "{garbage:?} got {back:?}");
    }
    let api = ApiClient::connect(server.api.unwrap());
    assert!(wait_until(Duration::from_secs(2), || api.get("refused>>>bad_request", false).ok() == Some(8)));
    let out = server.output();
    assert!(
        out.contains("rejected http: invalid username or password")
            && out.contains("rejected http: no proxy credentials"),
        "{out}"
    );
    assert!(!out.contains("panicked"));
}

#[test]
fn allow_transparent_forwards_an_origin_form_request_to_its_host() {
    let origin = OriginServer::start("origin");
    let mut config = config(json!({ "allowTransparent": true }));
    config["inbounds"][0]["settings"].as_object_mut().unwrap().remove("accounts");
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("http-in");
    let mut s = vless::connect(proxy).unwrap();
    s.write_all(format!("GET /plain HTTP/1.1\r\nHost: {}\r\n\r\n", origin.addr()).as_bytes()).unwrap();
    let head = String::from_utf8(read_head(&mut s).unwrap()).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let mut body = [0u8; 27];
    s.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"origin GET /plain HTTP/1.1 ");
}

#[test]
fn over_tls_curl_tunnels_and_forwards() {
    let origin = OriginServer::start("origin");
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let mut config = config(json!({}));
    config["inbounds"][0]["streamSettings"] = cert.stream_settings("localhost", &["http/1.1"]);
    let server = Shardray::start(&config, 2);
    let port = server.inbound("http-in").port();
    let proxy = format!("https://bob:bob%27s%20http%20password@localhost:{port}");
    let url = format!("http://{}/secure", origin.addr());
    let resolve = format!("localhost:{port}:127.0.0.1");
    for extra in [&["-p"][..], &[]] {
        let mut args = vec!["--proxy-insecure", "--resolve", &resolve];
        args.extend_from_slice(extra);
        args.push(&url);
        let (ok, body, log) = curl(&proxy, &args);
        assert!(ok, "{log}\n{}", server.output());
        assert_eq!(body, "origin GET /secure HTTP/1.1 ", "{log}");
    }
}

#[test]
fn links_are_printed_for_http_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(json!({}));
    config["inbounds"][0]["port"] = json!(8080);
    let file = dir.path().join("config.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let (status, out) = run_cli(&["link", "-c", file.to_str().unwrap(), "--host", "proxy.example"]);
    assert!(status.success(), "{out}");
    assert!(
        out.lines().any(|l| l == "http://bob:bob%27s%20http%20password@proxy.example:8080#bob%40example.com"),
        "{out}"
    );
}
