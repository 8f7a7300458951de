//! Config reload through the real binary: the config file is edited and SIGHUP (or `shardray
//! api reload`) applies the difference while live sessions of unchanged users go on; a broken
//! file changes nothing and is reported; SIGUSR1 reopens the log files.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_proto::xray::app::proxyman::command as handler;
use shardray_tests::api::ApiClient;
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::{fixed_port, run_cli, trojan, vless, vless_config, wait_until, Shardray, ALICE};

const BOB: &str = "5783a3e7-e373-51cd-8642-c83782b807c5";
const CAROL: &str = "a3482e88-686a-4a58-8126-99c9df64b7bf";
const DAVE: &str = "0b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b";
const ZED: &str = "7f3b1a52-8a6e-4f0e-9d2c-5b4a3c2d1e0f";
const ADMIN: &str = "admin-token-0123456789abcdef0123456789ab";
const OPERATOR: &str = "operator-token-0123456789abcdef012345678";

/// A VLESS session through `proxy` to `dest` that has echoed its first bytes.
fn open_session(proxy: SocketAddr, user: &str, dest: SocketAddr) -> TcpStream {
    let mut s = vless::connect(proxy).unwrap();
    let mut first = vless::request(user, dest);
    first.extend_from_slice(b"hello");
    s.write_all(&first).unwrap();
    let mut reply = [0u8; 7];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"\0\0hello");
    s
}

/// Sends `data` on a live session and reads its echo.
fn ping(s: &mut TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(data)?;
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

/// Whether the session has been closed by the server (EOF or reset) within a few seconds.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"x");
    let mut buf = [0u8; 16];
    !matches!(s.read(&mut buf), Ok(n) if n > 0)
}

fn rewrite(server: &Shardray, config: &Value) {
    std::fs::write(server.dir.path().join("config.json"), serde_json::to_vec_pretty(config).unwrap()).unwrap();
}

fn signal(server: &Shardray, sig: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.pid() as i32, sig) };
}

/// Waits until the server's output has `n` lines containing `what`.
fn wait_for(server: &Shardray, what: &str, n: usize) {
    assert!(
        wait_until(Duration::from_secs(10), || server.output().matches(what).count() >= n),
        "no {what:?} (x{n}) in:\n{}",
        server.output()
    );
}

fn level_of(api: &ApiClient, tag: &str, email: &str) -> u32 {
    let req = handler::GetInboundUserRequest { tag: tag.into(), email: email.into() };
    api.block_on(api.handler().get_inbound_users(req)).unwrap().into_inner().users[0].level
}

fn base(blocked_port: u16) -> Value {
    let clients = json!([
        { "id": ALICE, "email": "alice@example.com" },
        { "id": BOB, "email": "bob@example.com" },
        { "id": CAROL, "email": "carol@example.com" }
    ]);
    let mut config = vless_config(clients, json!({}));
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService"]);
    // The second echo server is blocked by a rule the edit removes.
    config["routing"]["rules"] = json!([
        { "type": "field", "ruleTag": "no-b", "ip": ["127.0.0.1/32"], "port": blocked_port, "outboundTag": "blocked" },
        { "type": "field", "ip": ["127.0.0.1/32"], "outboundTag": "direct" }
    ]);
    config
}

#[test]
fn sighup_applies_the_edited_file_and_unchanged_users_keep_their_sessions() {
    let (echo, echo_b) = (EchoServer::start(), EchoServer::start());
    let mut config = base(echo_b.addr().port());
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    let proxy = server.inbound("vless-in");
    // A user and an outbound the API adds are the API's: the reload leaves them.
    api.add_user("vless-in", "zed@example.com", ZED, 0).unwrap();
    let api_addr = server.api.unwrap().to_string();
    let outbounds = server.dir.path().join("outbounds.json");
    std::fs::write(&outbounds, r#"{ "outbounds": [{ "tag": "px-api", "protocol": "freedom" }] }"#).unwrap();
    let (status, out) = run_cli(&["api", "ado", "-s", &api_addr, outbounds.to_str().unwrap()]);
    assert!(status.success(), "{out}");

    let mut alice = open_session(proxy, ALICE, echo.addr());
    let mut bob = open_session(proxy, BOB, echo.addr());
    // Blocked: the blackhole closes the session without an echo.
    assert!(vless::round_trip(proxy, ALICE, echo_b.addr(), b"blocked").map_or(true, |r| r.is_empty()));

    // The edit: bob removed, carol to level 1, dave added, a Trojan inbound added, the
    // blocking rule dropped.
    let trojan_port = fixed_port();
    config["inbounds"][0]["settings"]["clients"] = json!([
        { "id": ALICE, "email": "alice@example.com" },
        { "id": CAROL, "email": "carol@example.com", "level": 1 },
        { "id": DAVE, "email": "dave@example.com" }
    ]);
    config["inbounds"].as_array_mut().unwrap().push(json!({
        "tag": "trojan-in", "listen": "127.0.0.1", "port": trojan_port, "protocol": "trojan",
        "settings": { "clients": [{ "password": "erin's password", "email": "erin@example.com" }] }
    }));
    config["routing"]["rules"].as_array_mut().unwrap().remove(0);
    rewrite(&server, &config);
    signal(&server, libc::SIGHUP);
    wait_for(&server, "reload (SIGHUP): config reloaded", 1);
    let out = server.output();
    let added = format!(r#"inbound "trojan-in" added, listening on 127.0.0.1:{trojan_port}"#);
    assert!(out.contains(&added) && out.contains("routing replaced"), "{out}");

    // Alice's session, opened before, still carries bytes; bob's is closed and bob refused.
    assert_eq!(ping(&mut alice, b"after the reload").unwrap(), b"after the reload");
    assert!(closed(&mut bob), "bob's session outlived his removal");
    assert!(vless::round_trip(proxy, BOB, echo.addr(), b"bob").map_or(true, |r| r.is_empty()));
    assert_eq!(vless::round_trip(proxy, DAVE, echo.addr(), b"dave").unwrap(), b"dave");
    assert_eq!(vless::round_trip(proxy, ALICE, echo_b.addr(), b"now open").unwrap(), b"now open");
    let trojan_in = SocketAddr::from(([127, 0, 0, 1], trojan_port));
    assert_eq!(trojan::round_trip(trojan_in, "erin's password", echo.addr(), b"erin").unwrap(), b"erin");
    assert_eq!(
        api.user_emails("vless-in").unwrap(),
        ["alice@example.com", "carol@example.com", "dave@example.com", "zed@example.com"]
    );
    assert_eq!(level_of(&api, "vless-in", "carol@example.com"), 1);
    let (_, listed) = run_cli(&["api", "lso", "-s", &api_addr]);
    assert!(listed.contains("px-api") && listed.contains("direct"), "{listed}");

    // A changed inbound, same listener: replaced in place. Erin's live session goes on, her
    // counters go on, and new connections get the new settings (a fallback).
    let mut erin = trojan::open_session(trojan_in, "erin's password", echo.addr());
    let web = RecordingServer::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let uplink = "user>>>erin@example.com>>>traffic>>>uplink";
    let counted = api.get(uplink, false).unwrap();
    assert!(counted > 0);
    config["inbounds"][1]["settings"]["fallbacks"] = json!([{ "dest": web.addr().port() }]);
    rewrite(&server, &config);
    signal(&server, libc::SIGHUP);
    wait_for(&server, r#"inbound "trojan-in" changed (same listener)"#, 1);
    assert_eq!(ping(&mut erin, b"same session").unwrap(), b"same session");
    let mut probe = vless::connect(trojan_in).unwrap();
    probe.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").unwrap();
    probe.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(vless::read_all(&mut probe).unwrap().starts_with(b"HTTP/1.1 200 OK"), "the new fallback is not served");
    assert!(api.get(uplink, false).unwrap() >= counted + 12, "erin's counters restarted");
    // A user the files drop is still cut off from a session that started before the change.
    config["inbounds"][1]["settings"]["clients"] =
        json!([{ "password": "frank's password", "email": "frank@example.com" }]);
    rewrite(&server, &config);
    signal(&server, libc::SIGHUP);
    wait_for(&server, "reload (SIGHUP): config reloaded", 3);
    assert!(closed(&mut erin), "erin's session outlived her removal");
    assert_eq!(trojan::round_trip(trojan_in, "frank's password", echo.addr(), b"frank").unwrap(), b"frank");

    // A changed listener: the inbound moves to its new port, with its users.
    let moved_port = std::iter::repeat_with(fixed_port).find(|p| *p != trojan_port).unwrap();
    config["inbounds"][1]["port"] = json!(moved_port);
    rewrite(&server, &config);
    signal(&server, libc::SIGHUP);
    wait_for(&server, &format!(r#"inbound "trojan-in" changed (listening anew on 127.0.0.1:{moved_port})"#), 1);
    let moved = SocketAddr::from(([127, 0, 0, 1], moved_port));
    assert_eq!(trojan::round_trip(moved, "frank's password", echo.addr(), b"moved").unwrap(), b"moved");
    assert!(TcpStream::connect_timeout(&trojan_in, Duration::from_secs(2)).is_err(), "the old port still listens");

    // Removing the inbound from the file removes it; the same file again changes nothing.
    config["inbounds"].as_array_mut().unwrap().pop();
    rewrite(&server, &config);
    signal(&server, libc::SIGHUP);
    wait_for(&server, "reload (SIGHUP): config reloaded", 5);
    assert!(server.output().contains(r#"inbound "trojan-in" removed"#));
    assert!(TcpStream::connect_timeout(&moved, Duration::from_secs(2)).is_err(), "trojan-in still listens");
    signal(&server, libc::SIGHUP);
    wait_for(&server, "reload (SIGHUP): config reloaded: nothing changed", 1);
    assert_eq!(ping(&mut alice, b"still here").unwrap(), b"still here");
}

#[test]
fn a_broken_file_changes_nothing_and_the_api_reload_says_why() {
    let echo = EchoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = base(1);
    config["api"]["tokens"] = json!([
        { "name": "panel", "token": OPERATOR, "role": "operator" },
        { "name": "ops", "token": ADMIN, "role": "admin" }
    ]);
    config["log"] = json!({ "loglevel": "warning", "error": dir.path().join("error.log") });
    config["metrics"] = json!({ "listen": "127.0.0.1:0" });
    let server = Shardray::start(&config, 2);
    let api_addr = server.api.unwrap().to_string();
    let metrics = || shardray_tests::metrics::http_get(server.metrics.unwrap(), "/metrics").unwrap().1;
    assert!(metrics().contains("shardray_config_last_reload_successful 1"), "{}", metrics());
    let proxy = server.inbound("vless-in");
    let mut alice = open_session(proxy, ALICE, echo.addr());
    let error_log = dir.path().join("error.log");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();

    // A port out of range: the file does not load.
    let mut broken = config.clone();
    broken["inbounds"][0]["port"] = json!(70000);
    broken["inbounds"][0]["settings"]["clients"] = json!([]);
    rewrite(&server, &broken);
    signal(&server, libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || read(&error_log).contains("reload (SIGHUP): config refused")),
        "{}",
        read(&error_log)
    );
    assert_eq!(ping(&mut alice, b"old config").unwrap(), b"old config");
    assert_eq!(vless::round_trip(proxy, BOB, echo.addr(), b"bob").unwrap(), b"bob");
    let scrape = metrics();
    assert!(scrape.contains("shardray_config_last_reload_successful 0"), "{scrape}");
    assert!(scrape.contains(r#"shardray_config_reloads_total{result="error"} 1"#), "{scrape}");

    // The API's reload: an operator may not; an admin gets the reason, and nothing changes.
    let (status, out) = run_cli(&["api", "reload", "-s", &api_addr, "--token", OPERATOR]);
    assert!(!status.success() && out.contains("needs admin"), "{out}");
    let (status, out) = run_cli(&["api", "reload", "-s", &api_addr, "--token", ADMIN]);
    assert!(!status.success() && out.contains("config refused") && out.contains("port"), "{out}");
    assert_eq!(vless::round_trip(proxy, BOB, echo.addr(), b"bob").unwrap(), b"bob");

    // Fixed, without bob: the reload answers with what it did.
    let mut fixed = config.clone();
    fixed["inbounds"][0]["settings"]["clients"].as_array_mut().unwrap().remove(1);
    rewrite(&server, &fixed);
    let (status, out) = run_cli(&["api", "reload", "-s", &api_addr, "--token", ADMIN]);
    assert!(status.success(), "{out}");
    let reply: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(reply["changes"], json!([r#"inbound "vless-in": users +0 -1, 0 level(s) changed"#]), "{out}");
    assert!(vless::round_trip(proxy, BOB, echo.addr(), b"bob").map_or(true, |r| r.is_empty()));
    assert_eq!(ping(&mut alice, b"new config").unwrap(), b"new config");

    // A change only a restart makes is reported as such.
    fixed.as_object_mut().unwrap().remove("stats");
    rewrite(&server, &fixed);
    let (status, out) = run_cli(&["api", "reload", "-s", &api_addr, "--token", ADMIN]);
    let reply: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(status.success() && reply["restart_needed"] == json!(["stats"]), "{out}");
    let scrape = metrics();
    assert!(scrape.contains("shardray_config_last_reload_successful 1"), "{scrape}");
    assert!(scrape.contains(r#"shardray_config_reloads_total{result="error"} 2"#), "{scrape}");
    assert!(scrape.contains(r#"shardray_config_reloads_total{result="ok"} 2"#), "{scrape}");
}

#[test]
fn sigusr1_reopens_the_logs_and_sighup_no_longer_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = base(1);
    config["log"] = json!({ "loglevel": "warning", "error": dir.path().join("error.log") });
    let server = Shardray::start(&config, 1);
    let (log, moved) = (dir.path().join("error.log"), dir.path().join("error.log.1"));
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(5), || read(&log).contains("started")));

    // Rotated away: a reload's line still goes to the moved file, SIGHUP does not reopen.
    std::fs::rename(&log, &moved).unwrap();
    signal(&server, libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || read(&moved).contains("config reloaded")), "{}", read(&moved));
    assert!(!log.exists(), "SIGHUP reopened the log");
    // SIGUSR1 reopens: a new file, and the next lines go there.
    signal(&server, libc::SIGUSR1);
    assert!(wait_until(Duration::from_secs(5), || log.exists()), "no new error.log after SIGUSR1");
    signal(&server, libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || read(&log).contains("config reloaded")), "{}", read(&log));
    assert_eq!(read(&moved).matches("config reloaded").count(), 1);
}

#[test]
fn a_new_policy_reaches_new_sessions_and_live_ones_keep_theirs() {
    let echo = EchoServer::start();
    let mut config = base(1);
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("vless-in");
    let mut before = open_session(proxy, ALICE, echo.addr());

    // Level 0 sessions idle out after 1 s from now on.
    config["policy"]["levels"]["0"]["connIdle"] = json!(1);
    rewrite(&server, &config);
    signal(&server, libc::SIGHUP);
    wait_for(&server, "reload (SIGHUP): config reloaded: policy replaced", 1);
    let mut after = open_session(proxy, ALICE, echo.addr());
    std::thread::sleep(Duration::from_millis(2500));
    assert!(closed(&mut after), "a session started after the reload outlived the new connIdle");
    assert_eq!(ping(&mut before, b"old policy").unwrap(), b"old policy");
}

#[test]
fn with_state_a_restart_keeps_what_a_reload_did() {
    let echo = EchoServer::start();
    let mut config = base(1);
    let state = shardray_tests::Restartable::new(&config);
    let (server, api) = state.start(&[]);
    api.add_user("vless-in", "zed@example.com", ZED, 0).unwrap();

    // The files drop bob and add dave and an inbound; the API's zed stays.
    let port = fixed_port();
    config["inbounds"][0]["settings"]["clients"] = json!([
        { "id": ALICE, "email": "alice@example.com" },
        { "id": CAROL, "email": "carol@example.com", "level": 2 },
        { "id": DAVE, "email": "dave@example.com" }
    ]);
    config["inbounds"].as_array_mut().unwrap().push(json!({
        "tag": "vless-b", "listen": "127.0.0.1", "port": port, "protocol": "vless",
        "settings": { "clients": [{ "id": BOB, "email": "bob@example.com" }], "decryption": "none" }
    }));
    std::fs::write(state.path("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    signal(&server, libc::SIGHUP);
    wait_for(&server, "reload (SIGHUP): config reloaded", 1);
    let users = ["alice@example.com", "carol@example.com", "dave@example.com", "zed@example.com"];
    assert_eq!(api.user_emails("vless-in").unwrap(), users);
    assert!(server.terminate(Duration::from_secs(10)).success());

    let (server, api) = state.start(&[]);
    assert_eq!(api.user_emails("vless-in").unwrap(), users);
    assert_eq!(level_of(&api, "vless-in", "carol@example.com"), 2);
    assert_eq!(api.user_emails("vless-b").unwrap(), ["bob@example.com"]);
    let b = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(vless::round_trip(b, BOB, echo.addr(), b"bob").unwrap(), b"bob");
    assert!(!server.output().contains("no longer applies"), "{}", server.output());
}

/// The inodes of the sockets bound to `port` on loopback, from /proc/net/tcp (listening) and
/// /proc/net/udp: the same inodes are the very same sockets.
fn socket_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for (table, state) in [("/proc/net/tcp", "0A"), ("/proc/net/udp", "07")] {
        for line in std::fs::read_to_string(table).unwrap().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f[1] == format!("0100007F:{port:04X}") && f[3] == state {
                inodes.push(f[9].to_owned());
            }
        }
    }
    inodes.sort();
    inodes
}

#[test]
fn a_door_changed_in_place_keeps_its_sockets_and_sends_new_connections_to_the_new_place() {
    use shardray_tests::udp::UdpEcho;
    let (first, second) = (EchoServer::start(), RecordingServer::start(b"second"));
    // UDP echoes on the same port numbers as the TCP ones: the door names one port for both.
    let (udp_first, udp_second) = (UdpEcho::start_at(first.addr()), UdpEcho::start_at(second.addr()));
    let mut config = base(1);
    let port = fixed_port();
    let door = |to: SocketAddr| {
        json!({
            "tag": "door", "listen": "127.0.0.1", "port": port, "protocol": "dokodemo-door",
            "settings": { "address": "127.0.0.1", "port": to.port(), "network": "tcp,udp" }
        })
    };
    config["inbounds"].as_array_mut().unwrap().push(door(first.addr()));
    let server = Shardray::start(&config, 2);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let connect = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let datagram = |payload: &[u8]| {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        udp.send_to(payload, addr).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = udp.recv_from(&mut buf).unwrap();
        buf[..n].to_vec()
    };
    let mut live = connect();
    assert_eq!(ping(&mut live, b"live").unwrap(), b"live");
    assert_eq!(datagram(b"one"), b"one");
    assert_eq!(udp_first.datagrams.load(std::sync::atomic::Ordering::Relaxed), 1);
    let sockets = socket_inodes(port);
    assert_eq!(sockets.len(), 4, "a TCP and a UDP socket per shard: {sockets:?}");

    config["inbounds"][1] = door(second.addr());
    rewrite(&server, &config);
    signal(&server, libc::SIGHUP);
    wait_for(&server, r#"inbound "door" changed (same listener)"#, 1);
    // New connections and datagrams go to the new destination, on the very same sockets; the
    // connection opened before goes on to the old one.
    let mut fresh = connect();
    fresh.write_all(b"fresh").unwrap();
    fresh.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(vless::read_all(&mut fresh).unwrap(), b"second");
    assert_eq!(second.next(Duration::from_secs(5)).as_deref(), Some(&b"fresh"[..]));
    assert_eq!(datagram(b"two"), b"two");
    assert_eq!(udp_second.datagrams.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(ping(&mut live, b"still live").unwrap(), b"still live");
    assert_eq!(socket_inodes(port), sockets, "the door was bound anew");
}

#[test]
fn logging_moves_to_the_new_targets_and_level() {
    let echo = EchoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let mut config = base(1);
    config["log"] = json!({ "loglevel": "warning", "error": dir.path().join("a.log") });
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("vless-in");
    assert!(wait_until(Duration::from_secs(5), || read("a.log").contains("started")));

    // Another error log, and an access log where there was none.
    config["log"] =
        json!({ "loglevel": "warning", "error": dir.path().join("b.log"), "access": dir.path().join("c.log") });
    rewrite(&server, &config);
    signal(&server, libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || read("b.log").contains("config reloaded: log reconfigured")));
    assert!(!read("a.log").contains("config reloaded"));
    assert_eq!(vless::round_trip(proxy, ALICE, echo.addr(), b"logged").unwrap(), b"logged");
    assert!(wait_until(Duration::from_secs(5), || read("c.log").contains("accepted")), "{}", read("c.log"));

    // At `error`, a reload's warning is no longer written, and a failed one is.
    config["log"]["loglevel"] = json!("error");
    rewrite(&server, &config);
    let (status, out) = run_cli(&["api", "reload", "-s", &server.api.unwrap().to_string()]);
    assert!(status.success() && out.contains("log reconfigured"), "{out}");
    config["inbounds"][0]["port"] = json!(70000);
    rewrite(&server, &config);
    signal(&server, libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || read("b.log").contains("config refused")), "{}", read("b.log"));
    assert_eq!(read("b.log").matches("config reloaded").count(), 1, "{}", read("b.log"));
}

#[test]
fn a_reload_reads_token_files_again_and_never_drops_every_token() {
    const ROTATED: &str = "rotated-token-0123456789abcdef0123456789";
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("panel.token");
    std::fs::write(&token_file, format!("{OPERATOR}\n")).unwrap();
    let mut config = base(1);
    config["api"]["tokens"] = json!([
        { "name": "panel", "tokenFile": token_file, "role": "operator" },
        { "name": "ops", "token": ADMIN, "role": "admin" }
    ]);
    let server = Shardray::start(&config, 2);
    let api_addr = server.api.unwrap().to_string();
    let stats = |token: &str| run_cli(&["api", "statssys", "-s", &api_addr, "--token", token]);
    assert!(stats(OPERATOR).0.success(), "{}", stats(OPERATOR).1);

    // The panel's token rotated in its file: the file is read again, the old token is refused.
    std::fs::write(&token_file, ROTATED).unwrap();
    let (status, out) = run_cli(&["api", "reload", "-s", &api_addr, "--token", ADMIN]);
    let reply: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(status.success() && reply["changes"] == json!(["api tokens replaced (panel, ops)"]), "{out}");
    assert!(reply["restart_needed"].as_array().is_none_or(|a| a.is_empty()), "{out}");
    let (status, out) = stats(OPERATOR);
    assert!(!status.success() && out.contains("unknown API token"), "{out}");
    assert!(stats(ROTATED).0.success(), "{}", stats(ROTATED).1);

    // Every token gone from the files would open the API: that waits for a restart.
    config["api"].as_object_mut().unwrap().remove("tokens");
    rewrite(&server, &config);
    signal(&server, libc::SIGHUP);
    wait_for(&server, "api.tokens (every token removed) changed: needs a restart", 1);
    let (status, out) = run_cli(&["api", "statssys", "-s", &api_addr]);
    assert!(!status.success() && out.contains("needs a token"), "{out}");
    assert!(stats(ROTATED).0.success());
}
