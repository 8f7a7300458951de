//! Quotas and expiry against the real binary with two shards: a user is cut within one buffer
//! per session of its quota on every core, suspended (new sessions refused as a wrong user's
//! are), told to subscribers as an event, and resumed by a raised quota, a reset of its
//! counters or a later expiry; a suspension survives a restart with `--state`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardray_proto::shardray::app::events::command as events_pb;
use shardray_tests::api::{ApiClient, SetUserQuotaOperation};
use shardray_tests::servers::EchoServer;
use shardray_tests::{bin_path, loopback_api, run_cli, vless, vless_config, wait_until, Restartable, Shardray, ALICE};

const QUOTA_ID: &str = "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const QUOTA_USER: &str = "quota@example.com";
/// The relay's buffer (the default policy's): a session overruns the quota by at most this.
const BUFFER: u64 = 64 * 1024;
const MIB: u64 = 1 << 20;

/// A server that sends bytes to every connection until the connection goes away, once its
/// gate is open (so that several sessions can be live before any of them uses the quota).
struct Source {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl Source {
    fn start() -> Source {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (count, wait) = (accepted.clone(), gate.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                count.fetch_add(1, Ordering::SeqCst);
                let wait = wait.clone();
                std::thread::spawn(move || {
                    let (open, cv) = &*wait;
                    drop(cv.wait_while(open.lock().unwrap(), |open| !*open).unwrap());
                    let mut conn = conn;
                    let chunk = vec![0x5au8; 16 * 1024];
                    while conn.write_all(&chunk).is_ok() {}
                });
            }
        });
        Source { addr, accepted, gate }
    }

    /// Lets every connection, now and later, receive.
    fn open(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

/// Downloads from `source` through the proxy as the quota'd user until the server closes the
/// session; returns the payload bytes received (`None` if the proxy never answered).
fn download(proxy: SocketAddr, source: SocketAddr) -> Option<u64> {
    let mut s = vless::connect(proxy).unwrap();
    s.write_all(&vless::request(QUOTA_ID, source)).unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    // The 2-byte VLESS response header leads the payload.
    total.checked_sub(2)
}

fn config(quota: Value) -> Value {
    let mut client = json!({ "id": QUOTA_ID, "email": QUOTA_USER });
    for (k, v) in quota.as_object().unwrap() {
        client[k] = v.clone();
    }
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }, client]), json!({}));
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    config
}

/// A subscriber of EventsService on its own thread: events arrive on the channel, and the
/// call has been answered (so the server holds the subscription) when this returns.
fn subscribe(api: SocketAddr) -> mpsc::Receiver<events_pb::UserEvent> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let channel = tonic::transport::Channel::from_shared(format!("http://{api}")).unwrap();
            let mut client =
                events_pb::events_service_client::EventsServiceClient::new(channel.connect().await.unwrap());
            let mut stream = client.subscribe(events_pb::SubscribeRequest {}).await.unwrap().into_inner();
            ready_tx.send(()).unwrap();
            while let Ok(Some(e)) = stream.message().await {
                if tx.send(e).is_err() {
                    break;
                }
            }
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("subscribed");
    rx
}

/// The next event, within `within`.
fn next_event(events: &mpsc::Receiver<events_pb::UserEvent>, within: Duration) -> events_pb::UserEvent {
    events.recv_timeout(within).expect("an event")
}

fn quotas(api: &ApiClient, tag: &str) -> Vec<events_pb::UserQuota> {
    let mut client = events_pb::events_service_client::EventsServiceClient::new(api.channel());
    let req = events_pb::GetUserQuotasRequest { tag: tag.into() };
    api.block_on(client.get_user_quotas(req)).unwrap().into_inner().users
}

fn set_quota(api: &ApiClient, bytes: u64, expiry: u64) {
    let op = SetUserQuotaOperation { email: QUOTA_USER.into(), quota_bytes: bytes, expiry_unix: expiry };
    api.ours("vless-in", "SetUserQuotaOperation", &op).unwrap();
}

/// Whether the quota'd user is refused as a wrong user is: no answer at all.
fn refused(proxy: SocketAddr, echo: SocketAddr) -> bool {
    vless::round_trip(proxy, QUOTA_ID, echo, b"x").unwrap_or_default().is_empty()
}

fn served(proxy: SocketAddr, echo: SocketAddr) -> bool {
    vless::round_trip(proxy, QUOTA_ID, echo, b"hello").ok().as_deref() == Some(&b"hello"[..])
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn a_user_is_cut_at_its_quota_on_every_core_and_resumed_by_a_raise_or_a_reset() {
    const SESSIONS: u64 = 6;
    let (source, echo) = (Source::start(), EchoServer::start());
    let server = Shardray::start(&config(json!({ "quota": "10MiB" })), 2);
    let api = ApiClient::connect(server.api.unwrap());
    let proxy = server.inbound("vless-in");
    let events = subscribe(server.api.unwrap());

    // Six downloads at once (the kernel spreads them over both shards), all live before the
    // first byte moves.
    let got: Vec<u64> = std::thread::scope(|s| {
        let downloads: Vec<_> = (0..SESSIONS).map(|_| s.spawn(|| download(proxy, source.addr))).collect();
        assert!(wait_until(Duration::from_secs(5), || source.accepted.load(Ordering::SeqCst) == SESSIONS as usize));
        source.open();
        // A session that had moved nothing when the quota ran out is cut with nothing.
        downloads.into_iter().map(|d| d.join().unwrap().unwrap_or(0)).collect()
    });
    let total: u64 = got.iter().sum();
    let slack = SESSIONS * BUFFER;
    eprintln!("received {total} bytes for a 10 MiB quota over {got:?} (allowed overrun {slack})");
    assert!(
        (10 * MIB - slack..=10 * MIB + slack).contains(&total),
        "{total} bytes received over {got:?}: not within one buffer per session of 10 MiB\n{}",
        server.output()
    );
    let e = next_event(&events, Duration::from_secs(3));
    assert_eq!(
        (e.kind.as_str(), e.reason.as_str(), e.email.as_str(), e.inbound.as_str()),
        ("suspended", "quota", QUOTA_USER, "vless-in")
    );
    assert!(e.time_unix_ms > 0);
    let listed = quotas(&api, "vless-in");
    assert_eq!(listed.len(), 1, "only users with a quota are listed: {listed:?}");
    let q = &listed[0];
    assert_eq!((q.email.as_str(), q.quota_bytes, q.suspended.as_str()), (QUOTA_USER, 10 * MIB, "quota"));
    assert!((10 * MIB..=10 * MIB + slack).contains(&q.used_bytes), "used {}", q.used_bytes);
    // Refused as a wrong user is; another user goes on.
    assert!(refused(proxy, echo.addr()), "a suspended user was served");
    assert_eq!(vless::round_trip(proxy, ALICE, echo.addr(), b"hi").unwrap(), b"hi");
    assert!(server.output().contains("user quota@example.com: suspended (quota)"), "{}", server.output());

    // Raised: resumed before the call returns.
    set_quota(&api, 20 * MIB, 0);
    let e = next_event(&events, Duration::from_secs(3));
    assert_eq!((e.kind.as_str(), e.email.as_str()), ("resumed", QUOTA_USER));
    assert!(served(proxy, echo.addr()), "a resumed user was refused");

    // Used up again by one session, then its counters reset: resumed again.
    let more = download(proxy, source.addr).expect("served");
    assert!(more <= 10 * MIB + BUFFER, "{more}");
    assert_eq!(next_event(&events, Duration::from_secs(3)).kind, "suspended");
    assert!(wait_until(Duration::from_secs(2), || refused(proxy, echo.addr())));
    let reset = api.query("user>>>quota@example.com>>>traffic", true);
    assert_eq!(reset.len(), 2, "{reset:?}");
    let e = next_event(&events, Duration::from_secs(3));
    assert_eq!((e.kind.as_str(), e.email.as_str()), ("resumed", QUOTA_USER));
    assert!(served(proxy, echo.addr()), "a user whose counters were reset was refused");
    assert!(quotas(&api, "vless-in")[0].used_bytes < MIB);
}

#[test]
fn an_expired_user_is_suspended_within_a_second_and_a_later_expiry_resumes_it() {
    let echo = EchoServer::start();
    // Far enough ahead for the server to start on a busy machine.
    let expiry = unix_now() + 4;
    let server = Shardray::start(&config(json!({ "expiry": expiry })), 2);
    let proxy = server.inbound("vless-in");
    let api_addr = server.api.unwrap().to_string();
    // The CLI's subscriber, one JSON object a line.
    let mut cli = Command::new(bin_path())
        .args(["api", "events", "--server", &api_addr, "--count", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(cli.stdout.take().unwrap());
    let (tx, printed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut live = vless::open_session(proxy, QUOTA_ID, echo.addr());

    let closed = vless::closed_within(&mut live, Duration::from_secs(8));
    let passed = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(expiry);
    let late = std::time::SystemTime::now().duration_since(passed).unwrap_or_default();
    assert!(closed && late < Duration::from_millis(1500), "closed {closed}, {late:?} after the expiry");
    let line: Value = serde_json::from_str(&printed.recv_timeout(Duration::from_secs(3)).unwrap()).unwrap();
    assert_eq!(
        (&line["event"], &line["reason"], &line["user"], &line["inbound"]),
        (&json!("suspended"), &json!("expiry"), &json!(QUOTA_USER), &json!("vless-in"))
    );
    assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
    assert!(refused(proxy, echo.addr()));
    let (status, out) = run_cli(&["api", "inbounduser", "--server", &api_addr, "--tag", "vless-in"]);
    assert!(status.success(), "{out}");
    assert!(out.contains("\"suspended\": \"expiry\""), "{out}");

    let (status, out) = run_cli(&[
        "api",
        "setquota",
        "--server",
        &api_addr,
        "--tag",
        "vless-in",
        "--email",
        QUOTA_USER,
        "--expiry",
        "2099-01-01T00:00:00Z",
        "--quota",
        "1GiB",
    ]);
    assert!(status.success(), "{out}");
    let line: Value = serde_json::from_str(&printed.recv_timeout(Duration::from_secs(3)).unwrap()).unwrap();
    assert_eq!((&line["event"], &line["user"]), (&json!("resumed"), &json!(QUOTA_USER)));
    assert!(served(proxy, echo.addr()));
    assert!(wait_until(Duration::from_secs(3), || cli.try_wait().unwrap().is_some()), "--count 2 ends the CLI");
    let (_, out) = run_cli(&["api", "inbounduser", "--server", &api_addr, "--tag", "vless-in"]);
    assert!(out.contains("\"expiry\": \"2099-01-01T00:00:00Z\"") && out.contains("\"quota\": 1073741824"), "{out}");
    // A bad argument is refused before any call, naming it.
    let (status, out) = run_cli(&[
        "api", "setquota", "--server", &api_addr, "--tag", "vless-in", "--email", QUOTA_USER, "--quota", "lots",
    ]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("--quota"), "{out}");
}

#[test]
fn a_suspended_user_stays_suspended_across_a_restart() {
    let (source, echo) = (Source::start(), EchoServer::start());
    source.open();
    let state = Restartable::new(&config(json!({ "quota": "1MiB" })));
    let (server, api) = state.start(&[]);
    let proxy = server.inbound("vless-in");
    download(proxy, source.addr).unwrap();
    assert!(wait_until(Duration::from_secs(3), || quotas(&api, "vless-in")[0].suspended == "quota"));
    // Even without a graceful stop: the use was written when the user was suspended.
    server.kill9();

    let (server, api) = state.start(&[]);
    let proxy = server.inbound("vless-in");
    let started = Instant::now();
    assert!(refused(proxy, echo.addr()), "served after a restart");
    let q = &quotas(&api, "vless-in")[0];
    assert_eq!(q.suspended, "quota");
    assert!(q.used_bytes >= MIB, "{q:?}");
    // A quota set through the API survives too.
    set_quota(&api, 4 * MIB, 0);
    assert!(served(proxy, echo.addr()));
    assert!(server.terminate(Duration::from_secs(5)).success());
    let (server, api) = state.start(&[]);
    assert_eq!(quotas(&api, "vless-in")[0].quota_bytes, 4 * MIB);
    assert!(served(server.inbound("vless-in"), echo.addr()));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_reload_applies_the_files_new_quota_and_a_trojan_user_past_its_expiry_starts_refused() {
    let (source, echo) = (Source::start(), EchoServer::start());
    source.open();
    let mut config = config(json!({ "quota": "1MiB" }));
    // A Trojan inbound whose user expired before the start.
    let mut trojan = shardray_tests::trojan_config(
        json!([{ "password": "pw", "email": "t@example.com", "expiry": "2020-01-01T00:00:00Z" }]),
        json!({}),
    )["inbounds"][0]
        .clone();
    trojan["tag"] = "trojan-in".into();
    config["inbounds"].as_array_mut().unwrap().push(trojan);
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    let (proxy, trojan) = (server.inbound("vless-in"), server.inbound("trojan-in"));
    assert!(shardray_tests::trojan::round_trip(trojan, "pw", echo.addr(), b"x").unwrap_or_default().is_empty());
    assert_eq!(quotas(&api, "trojan-in")[0].suspended, "expiry");

    download(proxy, source.addr).expect("served");
    assert!(wait_until(Duration::from_secs(3), || refused(proxy, echo.addr())));
    // The files raise the quota and drop the expiry; a reload applies both.
    config["inbounds"][0]["settings"]["clients"][1]["quota"] = json!("8MiB");
    config["inbounds"][1]["settings"]["clients"][0].as_object_mut().unwrap().remove("expiry");
    std::fs::write(server.dir.path().join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let (status, out) = run_cli(&["api", "reload", "--server", &server.api.unwrap().to_string()]);
    assert!(status.success(), "{out}");
    assert!(out.contains("quota of quota@example.com set") && out.contains("quota of t@example.com set"), "{out}");
    assert!(served(proxy, echo.addr()));
    assert_eq!(shardray_tests::trojan::round_trip(trojan, "pw", echo.addr(), b"back").unwrap(), b"back");
    assert_eq!(quotas(&api, "vless-in")[0].quota_bytes, 8 * MIB);
    assert!(quotas(&api, "trojan-in").is_empty(), "no quota and no expiry left");
}

#[test]
fn a_udp_session_ends_at_its_quota_within_a_datagram() {
    use shardray_tests::udp::{DatagramPath, UdpEcho, VlessUdp};
    let echo = UdpEcho::start();
    // 100 datagrams of 1000 bytes each way would be 200,000 bytes: the quota stops it at half.
    let server = Shardray::start(&config(json!({ "quota": 100_000 })), 2);
    let api = ApiClient::connect(server.api.unwrap());
    let session = VlessUdp::open(server.inbound("vless-in"), QUOTA_ID, echo.addr(), &[]).unwrap();
    session.stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut echoed = 0u64;
    for i in 0..100u8 {
        if session.send(echo.addr(), &[i; 1000]).is_err() {
            break;
        }
        match session.recv() {
            Ok((_, p)) => echoed += p.len() as u64,
            Err(_) => break,
        }
    }
    // Up and down both count: 50 round trips, give or take the datagram that crossed it.
    assert!((48_000..=51_000).contains(&echoed), "{echoed} bytes echoed");
    assert!(wait_until(Duration::from_secs(3), || quotas(&api, "vless-in")[0].suspended == "quota"));
    let used = quotas(&api, "vless-in")[0].used_bytes;
    assert!((100_000..=101_000).contains(&used), "used {used}");
}

#[test]
fn a_level_limit_refusal_reaches_the_events_stream() {
    let echo = EchoServer::start();
    let mut config = config(json!({}));
    config["policy"]["levels"]["0"]["maxConnections"] = json!(1);
    let server = Shardray::start(&config, 2);
    let events = subscribe(server.api.unwrap());
    let proxy = server.inbound("vless-in");
    let _first = vless::open_session(proxy, ALICE, echo.addr());
    assert!(vless::round_trip(proxy, ALICE, echo.addr(), b"x").unwrap_or_default().is_empty(), "over the limit");
    let e = next_event(&events, Duration::from_secs(3));
    assert_eq!(
        (e.kind.as_str(), e.email.as_str(), e.inbound.as_str()),
        ("connection_limit", "alice@example.com", "vless-in")
    );
}

/// A quota given to a user with live sessions holds them too: they took no quota when they
/// started, so they are closed, and what the client opens next counts toward it.
#[test]
fn a_quota_set_on_a_user_with_live_sessions_holds_them_too() {
    let source = Source::start();
    source.open();
    let server = Shardray::start(&config(json!({})), 2);
    let api = ApiClient::connect(server.api.unwrap());
    let proxy = server.inbound("vless-in");
    // Two unlimited downloads running, then a 4 MiB quota.
    let live: Vec<_> = (0..2).map(|_| std::thread::spawn(move || download(proxy, source.addr))).collect();
    std::thread::sleep(Duration::from_millis(300));
    set_quota(&api, 4 * MIB, 0);
    for session in live {
        assert!(session.join().unwrap().is_some(), "a live session was not closed");
    }
    // A new session is cut at the quota (the two before may have used part of it already).
    let got = download(proxy, source.addr).unwrap_or(0);
    assert!(got <= 4 * MIB + BUFFER, "{got} bytes after a 4 MiB quota");
    let echo = EchoServer::start();
    assert!(wait_until(Duration::from_secs(3), || refused(proxy, echo.addr())), "{}", server.output());
}

/// A config user's quota cleared through the API stays cleared across restarts (each start
/// compacts the journal, which must keep the clearing).
#[test]
fn a_config_quota_cleared_through_the_api_stays_cleared_across_restarts() {
    let echo = EchoServer::start();
    let state = Restartable::new(&config(json!({ "quota": "1MiB" })));
    let (server, api) = state.start(&[]);
    assert_eq!(quotas(&api, "vless-in").len(), 1);
    set_quota(&api, 0, 0);
    assert!(quotas(&api, "vless-in").iter().all(|q| q.quota_bytes == 0), "{:?}", quotas(&api, "vless-in"));
    assert!(server.terminate(Duration::from_secs(5)).success());
    for restart in 0..2 {
        let (server, api) = state.start(&[]);
        let left = quotas(&api, "vless-in");
        assert!(left.iter().all(|q| q.quota_bytes == 0), "restart {restart}: {left:?}");
        assert!(served(server.inbound("vless-in"), echo.addr()));
        assert!(server.terminate(Duration::from_secs(5)).success());
    }
}

/// Sends `len` bytes through a live echo session (writing on a second thread) and reads them
/// back.
fn echo_through(s: &mut std::net::TcpStream, len: usize) {
    let data = vless::payload(len, len as u64);
    let mut writer = s.try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut got = vec![0u8; len];
    s.read_exact(&mut got).unwrap();
    t.join().unwrap();
    assert!(got == data, "the session's bytes came back wrong");
}

/// A panel changes a user by removing it and adding it back: within the removal's grace the
/// user keeps its quota and what it used, and the session kept through it counts on.
#[test]
fn a_user_removed_and_added_back_within_the_grace_keeps_its_quota_and_use() {
    let echo = EchoServer::start();
    let server = Shardray::start(&config(json!({ "quota": "8MiB" })), 2);
    let api = ApiClient::connect(server.api.unwrap());
    let proxy = server.inbound("vless-in");
    let used = || quotas(&api, "vless-in").first().map(|q| (q.quota_bytes, q.used_bytes));
    let mut session = vless::open_session(proxy, QUOTA_ID, echo.addr());
    echo_through(&mut session, MIB as usize);
    assert!(wait_until(Duration::from_secs(3), || used().is_some_and(|(_, u)| u >= 2 * MIB)), "{:?}", used());

    api.remove_user("vless-in", QUOTA_USER).unwrap();
    api.add_user("vless-in", QUOTA_USER, QUOTA_ID, 0).unwrap();
    let (quota, before) = used().expect("the quota was lost");
    assert_eq!(quota, 8 * MIB);
    assert!(before >= 2 * MIB, "the use started over: {before}");
    // The session kept through the grace counts into the quota the user has now.
    echo_through(&mut session, MIB as usize);
    assert!(
        wait_until(Duration::from_secs(3), || used().is_some_and(|(_, u)| u >= before + 2 * MIB)),
        "the kept session's bytes were not counted: {before} then {:?}",
        used()
    );
    // And the rest of the quota is all a new session gets.
    let source = Source::start();
    source.open();
    let got = download(proxy, source.addr).unwrap_or(0);
    assert!(got <= 4 * MIB + BUFFER, "{got} bytes with 4 MiB of the quota left");
}
