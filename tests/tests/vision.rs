//! XTLS Vision (`flow: "xtls-rprx-vision"`) on a VLESS inbound over TLS, with sing-box 1.14.4 as
//! the client: inner TLS 1.3 goes direct (and is spliced), other traffic is padded only, users
//! with and without the flow share the inbound, and mismatched flows are refused as Xray
//! refuses them.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::inner_tls::{inner_tls_over, plain_over, tls13_echo};
use shardray_tests::servers::EchoServer;
use shardray_tests::singbox::{insecure_tls, vless_outbound, SingBox};
use shardray_tests::tls::SelfSigned;
use shardray_tests::vless::payload;
use shardray_tests::{vless_config, wait_until, Shardray, ALICE};

const BOB: &str = "5783a3e7-e373-51cd-8642-c83782b807c5";
const FLOW: &str = "xtls-rprx-vision";
const SPLICING: &str = "Vision direct both ways: splicing";

/// Alice with Vision, Bob without, on one VLESS inbound over TLS; debug log; stats API.
fn server(certs: &std::path::Path) -> Shardray {
    server_with(certs, json!({}))
}

/// `server` with more inbound `settings` (fallbacks).
fn server_with(certs: &std::path::Path, settings: Value) -> Shardray {
    let cert = SelfSigned::generate(certs, &["localhost"]);
    let clients = json!([
        { "id": ALICE, "email": "alice@example.com", "flow": FLOW },
        { "id": BOB, "email": "bob@example.com" }
    ]);
    let extra = json!({ "streamSettings": cert.stream_settings("localhost", &[]), "settings": settings });
    let mut config = vless_config(clients, extra);
    config["log"] = json!({ "loglevel": "debug" });
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    Shardray::start(&config, 2)
}

fn client(server: &Shardray, uuid: &str, flow: Option<&str>) -> SingBox {
    let mut out = vless_outbound(server.inbound("vless-in"), uuid, Some(insecure_tls("localhost")));
    if let Some(flow) = flow {
        out["flow"] = json!(flow);
    }
    SingBox::start(out)
}

/// An inner TLS session through sing-box to the echo server: sends `data` from a writer
/// thread while reading, until as many plaintext bytes came back; then close_notify. (No
/// half-close before the echo is in: sing-box's Vision client tears a session down when its
/// local side half-closes early.)
fn inner_tls_echo(sb: &SingBox, echo: SocketAddr, config: Arc<ClientConfig>, data: Vec<u8>) -> io::Result<Vec<u8>> {
    inner_tls_over(sb.connect(echo)?, config, data)
}

/// Sends `data` through sing-box to `dest` while reading; returns what came back once as
/// many bytes arrived (or the stream ended).
fn plain_echo(sb: &SingBox, dest: SocketAddr, data: &[u8]) -> io::Result<Vec<u8>> {
    plain_over(sb.connect(dest)?, data)
}

fn counters(server: &Shardray, who: &str) -> BTreeMap<String, i64> {
    let api = ApiClient::connect(server.api.expect("api address"));
    api.query(&format!("user>>>{who}>>>traffic"), false)
}

/// 6 MiB each way over inner TLS 1.3: every byte echoed, the session went direct both ways
/// and was spliced, and alice's counters carry at least the payload (after the switch they
/// count the inner TLS records as they pass).
#[test]
fn inner_tls13_goes_direct_and_is_spliced() {
    let certs = tempfile::tempdir().unwrap();
    let server = server(certs.path());
    let sb = client(&server, ALICE, Some(FLOW));
    let (echo, config) = tls13_echo();
    const LEN: usize = 6 << 20;
    // A small session first, then a large one, on the same client.
    let small = payload(1000, 8);
    let got = inner_tls_echo(&sb, echo, config.clone(), small.clone())
        .unwrap_or_else(|e| panic!("small: {e}\n{}\n{}", sb.log(), server.output()));
    assert!(got == small, "small: echoed bytes differ ({} bytes)\n{}", got.len(), server.output());
    let data = payload(LEN, 7);
    let got = inner_tls_echo(&sb, echo, config, data.clone())
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", sb.log(), server.output()));
    assert_eq!(got.len(), LEN, "{}\n{}", server.output(), sb.log());
    assert!(got == data, "echoed bytes differ");
    assert!(
        wait_until(Duration::from_secs(5), || server.output().matches(SPLICING).count() >= 2),
        "no session went direct both ways:\n{}",
        server.output()
    );
    let mut last = BTreeMap::new();
    let ok = wait_until(Duration::from_secs(5), || {
        last = counters(&server, "alice@example.com");
        let up = last.get("user>>>alice@example.com>>>traffic>>>uplink").copied().unwrap_or(0);
        let down = last.get("user>>>alice@example.com>>>traffic>>>downlink").copied().unwrap_or(0);
        let (lo, hi) = ((LEN + 1000) as i64, ((LEN + 1000) as f64 * 1.02) as i64 + 20_000);
        (lo..hi).contains(&up) && (lo..hi).contains(&down)
    });
    assert!(ok, "alice's counters should carry the payload: {last:?}");
}

/// Alice's level holds her to 2 MiB/s each way: 6 MiB echoed over inner TLS 1.3 through
/// sing-box still goes direct and is spliced, and takes about 3 s (the rate holds on the
/// Vision and splice paths alike).
#[test]
fn a_rate_limited_vision_session_is_held_to_its_rate_when_spliced() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let clients = json!([{ "id": ALICE, "email": "alice@example.com", "flow": FLOW, "level": 1 }]);
    let mut config = vless_config(clients, json!({ "streamSettings": cert.stream_settings("localhost", &[]) }));
    config["log"] = json!({ "loglevel": "debug" });
    config["policy"]["levels"]["1"] = json!({ "uplinkRate": "2MiB", "downlinkRate": "2MiB" });
    let server = Shardray::start(&config, 2);
    let sb = client(&server, ALICE, Some(FLOW));
    let (echo, tls) = tls13_echo();
    const LEN: usize = 6 << 20;
    let data = payload(LEN, 9);
    let started = std::time::Instant::now();
    let got = inner_tls_echo(&sb, echo, tls, data.clone())
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", sb.log(), server.output()));
    let took = started.elapsed();
    assert!(got == data, "echoed bytes differ ({} bytes)", got.len());
    assert!(
        wait_until(Duration::from_secs(5), || server.output().contains(SPLICING)),
        "the session did not go direct both ways:\n{}",
        server.output()
    );
    // 6 MiB at 2 MiB/s is 3 s, less a burst of 50 ms of the rate and the bytes in flight.
    eprintln!("6 MiB echoed at 2 MiB/s each way in {took:?}");
    assert!(took > Duration::from_millis(2700) && took < Duration::from_millis(4500), "took {took:?}");
}

/// Plain bytes inside (no TLS): padded while the filter looks, then plain inside the outer
/// TLS, never direct; 3 MiB each way, counted exactly.
#[test]
fn other_traffic_is_padded_only_and_counted_exactly() {
    let certs = tempfile::tempdir().unwrap();
    let server = server(certs.path());
    let sb = client(&server, ALICE, Some(FLOW));
    let echo = EchoServer::start();
    let mut total = 0;
    for (i, len) in [1usize, 100, 5000, 3 << 20].into_iter().enumerate() {
        let data = payload(len, i as u64);
        let got = plain_echo(&sb, echo.addr(), &data).unwrap_or_else(|e| panic!("{e}\n{}", server.output()));
        assert!(
            got == data,
            "{len} bytes: echoed bytes differ: got {} {:?}\n{}",
            got.len(),
            &got[..got.len().min(64)],
            server.output() + &sb.log()
        );
        total += len as i64;
    }
    let mut last = BTreeMap::new();
    let ok = wait_until(Duration::from_secs(5), || {
        last = counters(&server, "alice@example.com");
        last.get("user>>>alice@example.com>>>traffic>>>uplink") == Some(&total)
            && last.get("user>>>alice@example.com>>>traffic>>>downlink") == Some(&total)
    });
    assert!(ok, "alice's counters should be exactly {total} both ways: {last:?}");
    assert!(!server.output().contains(SPLICING), "plain traffic went direct");
}

/// Bob (no flow) on the same inbound works as plain VLESS over TLS; Vision from Bob, and
/// plain VLESS from Alice, are refused (as Xray refuses them) and get nothing back, nor go to
/// the inbound's fallback (Xray falls back only on a request it cannot read).
#[test]
fn users_with_and_without_flow_share_the_inbound_and_mismatches_are_refused() {
    let certs = tempfile::tempdir().unwrap();
    let fallback = shardray_tests::servers::RecordingServer::start(b"HTTP/1.1 200 OK\r\n\r\n");
    let server = server_with(certs.path(), json!({ "fallbacks": [{ "dest": fallback.addr().port() }] }));
    let echo = EchoServer::start();
    let data = payload(200_000, 3);
    let bob = client(&server, BOB, None);
    assert!(plain_echo(&bob, echo.addr(), &data).unwrap() == data);

    for (uuid, flow, reason) in [
        (BOB, Some(FLOW), "account is not able to use the flow"),
        (ALICE, None, "account is rejected since the client flow is empty"),
    ] {
        let sb = client(&server, uuid, flow);
        let got = plain_echo(&sb, echo.addr(), b"hello").unwrap_or_default();
        assert!(got.is_empty(), "{uuid} with flow {flow:?} got {got:?}");
        assert!(
            wait_until(Duration::from_secs(5), || server.output().contains(reason)),
            "no refusal {reason:?} logged:\n{}",
            server.output()
        );
    }
    assert!(fallback.next(Duration::from_millis(200)).is_none(), "a refused request reached the fallback");
}

/// Vision users need TLS directly on raw TCP: elsewhere the config is refused naming the
/// client's flow; the outbound-only UDP/443 variant is refused on an inbound.
#[test]
fn vision_off_tls_and_the_udp443_variant_are_refused_at_load() {
    let plain = vless_config(json!([{ "id": ALICE, "flow": FLOW }]), json!({}));
    let err = Shardray::try_start(&plain, 1).err().expect("refused");
    assert!(err.contains("inbounds[0].settings.clients[0].flow"), "{err}");
    assert!(err.contains("tls"), "{err}");
    let udp443 = vless_config(json!([{ "id": ALICE, "flow": "xtls-rprx-vision-udp443" }]), json!({}));
    let err = Shardray::try_start(&udp443, 1).err().expect("refused");
    assert!(err.contains("inbounds[0].settings.clients[0].flow"), "{err}");

    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let with_stream = |edit: &dyn Fn(&mut Value)| {
        let mut stream = cert.stream_settings("localhost", &[]);
        edit(&mut stream);
        vless_config(json!([{ "id": ALICE, "flow": FLOW }]), json!({ "streamSettings": stream }))
    };
    let over_ws = with_stream(&|s| s["network"] = json!("ws"));
    let err = Shardray::try_start(&over_ws, 1).err().expect("refused");
    assert!(err.contains("inbounds[0].settings.clients[0].flow") && err.contains("raw TCP"), "{err}");
    let tls12 = with_stream(&|s| s["tlsSettings"]["maxVersion"] = json!("1.2"));
    let err = Shardray::try_start(&tls12, 1).err().expect("refused");
    assert!(err.contains("inbounds[0].settings.clients[0].flow") && err.contains("TLS 1.3"), "{err}");

    // `settings.flow` is the flow of clients that name none.
    let mut default_flow = with_stream(&|_| {});
    default_flow["inbounds"][0]["settings"]["clients"] = json!([{ "id": ALICE, "email": "a@x" }]);
    default_flow["inbounds"][0]["settings"]["flow"] = json!(FLOW);
    let path = certs.path().join("config.json");
    std::fs::write(&path, default_flow.to_string()).unwrap();
    let (status, out) = shardray_tests::run_cli(&["link", "-c", path.to_str().unwrap()]);
    assert!(status.success() && out.contains("flow=xtls-rprx-vision"), "{out}");
}

/// The API: AddUser honours `xray.proxy.vless.Account.flow` (the new user's sing-box Vision
/// session is served), GetInboundUsers shows it, and a Vision user is refused on an inbound
/// without TLS. `shardray link` adds `flow=xtls-rprx-vision` to Vision users' links only.
#[test]
fn api_flow_and_links() {
    use prost::Message;
    use shardray_proto::xray::app::proxyman::command as handler;
    use shardray_proto::xray::common::protocol::User;
    use shardray_proto::xray::proxy::vless;
    use shardray_tests::api::typed;

    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let clients = json!([
        { "id": ALICE, "email": "alice@example.com", "flow": FLOW },
        { "id": BOB, "email": "bob@example.com" }
    ]);
    let extra = json!({ "streamSettings": cert.stream_settings("localhost", &[]) });
    let mut config = vless_config(clients, extra);
    config["inbounds"].as_array_mut().unwrap().push(json!({
        "tag": "plain-in", "listen": "127.0.0.1", "port": 0, "protocol": "vless",
        "settings": { "clients": [], "decryption": "none" }
    }));
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService"]);

    let path = certs.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let (status, out) = shardray_tests::run_cli(&["link", "-c", path.to_str().unwrap(), "--host", "proxy.example"]);
    assert!(status.success(), "{out}");
    let alice = out.lines().find(|l| l.contains(ALICE)).expect("alice's link");
    let bob = out.lines().find(|l| l.contains(BOB)).expect("bob's link");
    assert!(alice.contains("&flow=xtls-rprx-vision&"), "{alice}");
    assert!(!bob.contains("flow="), "{bob}");

    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.expect("api address"));
    const CAROL: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let vision_user = |email: &str| {
        let account = vless::Account { id: CAROL.into(), flow: FLOW.into(), ..Default::default() };
        User { level: 0, email: email.into(), account: Some(typed("xray.proxy.vless.Account", &account)) }
    };
    api.add_api_user("vless-in", vision_user("carol@example.com")).unwrap();
    let req = handler::GetInboundUserRequest { tag: "vless-in".into(), email: "carol@example.com".into() };
    let users = api.block_on(api.handler().get_inbound_users(req)).unwrap().into_inner().users;
    let account = users[0].account.as_ref().expect("an account");
    assert_eq!(vless::Account::decode(&account.value[..]).unwrap().flow, FLOW);

    let refused = api.add_api_user("plain-in", vision_user("dave@example.com")).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("xtls-rprx-vision"), "{}", refused.message());

    let sb = client(&server, CAROL, Some(FLOW));
    let echo = EchoServer::start();
    let data = payload(300_000, 9);
    assert!(plain_echo(&sb, echo.addr(), &data).unwrap() == data, "{}", server.output());
}

/// The VLESS outbound with `flow: "xtls-rprx-vision"` against sing-box as the Vision server:
/// inner TLS 1.3 (6 MiB each way) goes direct both ways and is spliced (the client is plain
/// TCP), plain bytes (3 MiB each way) are padded only; every byte comes back.
#[test]
fn outbound_vision_against_sing_box() {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let sb = SingBox::serve(json!({
        "type": "vless", "tag": "vision-in",
        "users": [{ "uuid": ALICE, "flow": FLOW }],
        "tls": { "enabled": true, "server_name": "localhost",
                 "certificate_path": cert.cert_file.to_str().unwrap(), "key_path": cert.key_file.to_str().unwrap() }
    }));
    let (tls_echo, client_config) = tls13_echo();
    let plain = EchoServer::start();
    let door = |tag: &str, to: SocketAddr| {
        json!({ "tag": tag, "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
                "settings": { "address": "127.0.0.1", "port": to.port(), "network": "tcp" } })
    };
    let config = json!({
        "log": { "loglevel": "debug" },
        "inbounds": [door("tls-door", tls_echo), door("plain-door", plain.addr())],
        "outbounds": [{
            "tag": "vision-out", "protocol": "vless",
            "settings": { "vnext": [{ "address": "127.0.0.1", "port": sb.socks.port(),
                                      "users": [{ "id": ALICE, "encryption": "none", "flow": FLOW }] }] },
            "streamSettings": { "security": "tls",
                                "tlsSettings": { "serverName": "localhost", "allowInsecure": true } }
        }]
    });
    let server = Shardray::start(&config, 2);

    const LEN: usize = 6 << 20;
    let data = payload(LEN, 11);
    let stream = TcpStream::connect(server.inbound("tls-door")).unwrap();
    let got = inner_tls_over(stream, client_config, data.clone())
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", server.output(), sb.log()));
    assert!(got == data, "inner TLS: echoed bytes differ ({} bytes)\n{}", got.len(), server.output());
    assert!(
        wait_until(Duration::from_secs(5), || server
            .output()
            .contains("Vision to the server ended (direct up: true, down: true)")),
        "the outbound session did not go direct both ways:\n{}",
        server.output()
    );
    // The client side is plain TCP (dokodemo-door): once direct, the session is spliced.
    assert!(server.output().contains(SPLICING), "not spliced:\n{}", server.output());

    let data = payload(3 << 20, 12);
    let stream = TcpStream::connect(server.inbound("plain-door")).unwrap();
    let got = plain_over(stream, &data).unwrap_or_else(|e| panic!("{e}\n{}", server.output()));
    assert!(got == data, "plain: echoed bytes differ ({} bytes)\n{}", got.len(), server.output());
}

/// UDP from a Vision client: sing-box sends it as XUDP (VLESS mux) under Vision, padded; 500
/// datagrams come back byte for byte and alice's counters carry them.
#[test]
fn xudp_under_vision_from_sing_box() {
    use shardray_tests::udp::{echo_datagrams, Socks5Udp, UdpEcho};
    let certs = tempfile::tempdir().unwrap();
    let server = server(certs.path());
    let sb = client(&server, ALICE, Some(FLOW));
    let echo = UdpEcho::start();
    let path = Socks5Udp::associate(sb.socks).unwrap();
    let log = || format!("{}\n{}", sb.log(), server.output());
    let total = echo_datagrams(&path, echo.addr(), None, 500, 5, 8, &log) as i64;
    let mut last = BTreeMap::new();
    let ok = wait_until(Duration::from_secs(5), || {
        last = counters(&server, "alice@example.com");
        last.get("user>>>alice@example.com>>>traffic>>>uplink") == Some(&total)
            && last.get("user>>>alice@example.com>>>traffic>>>downlink") == Some(&total)
    });
    assert!(ok, "alice's counters should be {total} both ways: {last:?}");
    assert!(server.output().contains("Vision XUDP (mux) session"), "not XUDP under Vision:\n{}", server.output());
}
