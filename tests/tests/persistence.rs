//! Nothing is lost: users added through the API survive `kill -9`, counters survive a graceful
//! restart exactly and lose at most one flush interval on `kill -9`.

use std::time::Duration;

use serde_json::json;
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, vless_config, wait_until, Restartable, Shardray, ALICE};

const NEW: &str = "5f2c86f0-63b1-4d7c-9a43-3f3b2d6c0a11";

/// The server of these tests, restarted from its config and state.
struct Setup(Restartable);

impl Setup {
    fn new() -> Setup {
        let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
        config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService"]);
        Setup(Restartable::new(&config))
    }

    fn start(&self, flush_secs: u64) -> (Shardray, ApiClient) {
        self.0.start(&["--flush", &flush_secs.to_string()])
    }
}

#[test]
fn users_added_and_removed_through_the_api_survive_kill_9() {
    let echo = EchoServer::start();
    let setup = Setup::new();
    let (server, api) = setup.start(10);
    api.add_user("vless-in", "new@example.com", NEW, 3).unwrap();
    api.remove_user("vless-in", "alice@example.com").unwrap();
    server.kill9();

    let (server, api) = setup.start(10);
    assert_eq!(api.user_emails("vless-in").unwrap(), ["new@example.com"]);
    let proxy = server.inbound("vless-in");
    assert_eq!(vless::round_trip(proxy, NEW, echo.addr(), b"back").unwrap(), b"back");
    assert!(vless::round_trip(proxy, ALICE, echo.addr(), b"x").unwrap_or_default().is_empty());
    // Levels are kept too.
    let mut handler = api.handler();
    let req = shardray_proto::xray::app::proxyman::command::GetInboundUserRequest {
        tag: "vless-in".into(),
        email: "new@example.com".into(),
    };
    assert_eq!(api.block_on(handler.get_inbound_users(req)).unwrap().into_inner().users[0].level, 3);
    // The journal was compacted at start: one snapshot line for the one inbound with users.
    let journal = std::fs::read_to_string(setup.0.path("state/journal.jsonl")).unwrap();
    assert_eq!(journal.lines().count(), 1, "{journal}");
    drop(server);
}

#[test]
fn counters_survive_a_graceful_restart_exactly() {
    let echo = EchoServer::start();
    let setup = Setup::new();
    let up = "user>>>alice@example.com>>>traffic>>>uplink";
    let (server, api) = setup.start(10);
    vless::round_trip(server.inbound("vless-in"), ALICE, echo.addr(), &[5u8; 12345]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(12345)));
    assert!(server.terminate(Duration::from_secs(10)).success());

    let (server, api) = setup.start(10);
    assert_eq!(api.get(up, false).unwrap(), 12345, "counted before the restart");
    vless::round_trip(server.inbound("vless-in"), ALICE, echo.addr(), &[5u8; 55]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(12400)));
    // A reset after a restart zeroes the carried-over part too.
    assert_eq!(api.get(up, true).unwrap(), 12400);
    assert_eq!(api.get(up, false).unwrap(), 0);
}

#[test]
fn kill_9_loses_at_most_one_flush_interval_of_counting() {
    let echo = EchoServer::start();
    let setup = Setup::new();
    let up = "user>>>alice@example.com>>>traffic>>>uplink";
    let (server, api) = setup.start(1);
    vless::round_trip(server.inbound("vless-in"), ALICE, echo.addr(), &[5u8; 4000]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || api.get(up, false).ok() == Some(4000)));
    // Two flush intervals: the 4000 bytes are on disk.
    std::thread::sleep(Duration::from_millis(2500));
    server.kill9();
    let (_server, api) = setup.start(1);
    assert_eq!(api.get(up, false).unwrap(), 4000);
}

#[test]
fn a_journal_record_for_a_vanished_inbound_is_skipped_not_fatal() {
    let setup = Setup::new();
    let (server, api) = setup.start(10);
    api.add_user("vless-in", "new@example.com", NEW, 0).unwrap();
    server.kill9();
    // The operator renames the inbound: the old records no longer apply.
    let path = setup.0.path("config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace("\"vless-in\"", "\"renamed\"");
    std::fs::write(&path, text).unwrap();
    let (server, api) = setup.start(10);
    assert!(server.output().contains("no longer applies"), "{}", server.output());
    assert_eq!(api.user_emails("renamed").unwrap(), ["alice@example.com"]);
}
