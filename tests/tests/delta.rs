//! Delta counters (DeltaStatsService) through the real binary with two shards and a state
//! directory: two readers each get every byte once, a cursor repeats until acknowledged,
//! resets and a removed user's last bytes are not lost, and cursors survive a graceful
//! restart and `kill -9`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use shardray_proto::shardray::app::stats::command as pb;
use shardray_proto::shardray::app::stats::command::delta_stats_service_client::DeltaStatsServiceClient;
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::{run_cli, vless, vless_config, wait_until, Restartable, Shardray, ALICE};

const UP: &str = "user>>>alice@example.com>>>traffic>>>uplink";
const DOWN: &str = "user>>>alice@example.com>>>traffic>>>downlink";

fn setup() -> Restartable {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService"]);
    Restartable::new(&config)
}

/// One GetDeltas call: (cursor, Alice's deltas, repeated).
fn deltas(api: &ApiClient, reader: &str, ack: u64) -> (u64, [u64; 2], bool) {
    let mut c = DeltaStatsServiceClient::new(api.channel());
    let r = api.block_on(c.get_deltas(pb::GetDeltasRequest { reader: reader.into(), ack })).unwrap().into_inner();
    let by_name: BTreeMap<String, u64> = r.deltas.into_iter().map(|d| (d.name, d.value)).collect();
    let alice = [by_name.get(UP).copied().unwrap_or(0), by_name.get(DOWN).copied().unwrap_or(0)];
    (r.cursor, alice, r.repeated)
}

/// Sends `n` bytes through Alice's session to the echo server and waits until the counters
/// show them (both directions), so that the next cursor covers them.
fn traffic(server: &Shardray, api: &ApiClient, echo: &EchoServer, n: usize, before: [u64; 2]) -> [u64; 2] {
    let payload = vless::payload(n, n as u64);
    let back = vless::round_trip(server.inbound("vless-in"), ALICE, echo.addr(), &payload).unwrap();
    assert_eq!(back.len(), n);
    let want = [before[0] + n as u64, before[1] + n as u64];
    let now = || [api.get(UP, false).unwrap() as u64, api.get(DOWN, false).unwrap() as u64];
    assert!(wait_until(Duration::from_secs(5), || now() == want), "counters {:?}, want {want:?}", now());
    want
}

#[test]
fn two_readers_each_get_every_byte_once_across_resets_and_restarts() {
    let echo = EchoServer::start();
    let setup = setup();
    let (server, api) = setup.start(&[]);
    let sent = traffic(&server, &api, &echo, 1000, [0, 0]);

    // Each reader's first cursor carries everything counted so far.
    let (panel, got, repeated) = deltas(&api, "panel", 0);
    assert_eq!((got, repeated), ([1000, 1000], false));
    let (exporter, got, _) = deltas(&api, "exporter", 0);
    assert_eq!(got, [1000, 1000]);
    assert_ne!(panel, exporter);

    // Not acknowledged: the same cursor and deltas, though more has been counted.
    traffic(&server, &api, &echo, 300, sent);
    assert_eq!(deltas(&api, "panel", 0), (panel, [1000, 1000], true));

    // A reset (a panel that reads destructively) takes nothing from the readers.
    let stats = api.query("alice", true);
    assert_eq!(stats[UP], 1300);
    let mut sent = traffic(&server, &api, &echo, 200, [0, 0]);

    let (panel2, got, _) = deltas(&api, "panel", panel);
    assert_eq!(got, [500, 500], "the growth since the acknowledged cursor, across the reset");
    // Acknowledging the same cursor again is harmless; a cursor never handed out is refused.
    let (again, got, repeated) = deltas(&api, "panel", panel);
    assert_eq!((again, got, repeated), (panel2, [500, 500], true));
    let mut c = DeltaStatsServiceClient::new(api.channel());
    let err = api.block_on(c.get_deltas(pb::GetDeltasRequest { reader: "panel".into(), ack: 999_999 })).unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let err = api.block_on(c.get_deltas(pb::GetDeltasRequest { reader: "no spaces".into(), ack: 0 })).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // A graceful restart: the pending cursor comes back as it was, then counting goes on.
    assert!(server.terminate(Duration::from_secs(10)).success());
    let (server, api) = setup.start(&[]);
    assert_eq!(deltas(&api, "panel", 0), (panel2, [500, 500], true));
    let carried = [api.get(UP, false).unwrap() as u64, api.get(DOWN, false).unwrap() as u64];
    assert_eq!(carried, sent);
    sent = traffic(&server, &api, &echo, 70, sent);
    let (panel3, got, _) = deltas(&api, "panel", panel2);
    assert_eq!(got, [70, 70]);

    // kill -9 right after a cursor is handed out: it is on disk, so the same one comes back.
    server.kill9();
    let (server, api) = setup.start(&[]);
    assert_eq!(deltas(&api, "panel", 0), (panel3, [70, 70], true));
    let (panel4, got, _) = deltas(&api, "panel", panel3);
    assert_eq!(got, [0, 0]);

    // The exporter, which slept through all of it, gets the same bytes in one delta.
    let (_, got, _) = deltas(&api, "exporter", exporter);
    assert_eq!(got, [300 + 200 + 70, 300 + 200 + 70]);

    // A removed user's last bytes still reach each reader once.
    traffic(&server, &api, &echo, 40, sent);
    api.remove_user("vless-in", "alice@example.com").unwrap();
    let (panel5, got, _) = deltas(&api, "panel", panel4);
    assert_eq!(got, [40, 40]);
    let (_, got, _) = deltas(&api, "panel", panel5);
    assert_eq!(got, [0, 0]);
    drop(server);
}

#[test]
fn the_cli_reads_and_acknowledges_deltas() {
    let echo = EchoServer::start();
    let setup = setup();
    let (server, api) = setup.start(&[]);
    traffic(&server, &api, &echo, 123, [0, 0]);
    let addr = server.api.unwrap().to_string();
    let (status, out) = run_cli(&["api", "delta", "-s", &addr, "--reader", "billing"]);
    assert!(status.success(), "{out}");
    let first: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(first["deltas"][UP], 123, "{out}");
    assert_eq!(first["repeated"], false);
    let cursor = first["cursor"].as_u64().unwrap().to_string();
    let (status, out) = run_cli(&["api", "delta", "-s", &addr, "--reader", "billing", "--ack", &cursor]);
    assert!(status.success(), "{out}");
    let next: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (next["acknowledged"].as_u64(), next["deltas"].as_object().map(|d| d.len())),
        (Some(cursor.parse().unwrap()), Some(0))
    );
    let (status, out) = run_cli(&["api", "delta", "-s", &addr, "--reader", "billing", "--remove"]);
    assert!(status.success(), "{out}");
    let (status, out) = run_cli(&["api", "delta", "-s", &addr, "--reader", "billing", "--remove"]);
    assert!(!status.success() && out.contains("reader \"billing\" not found"), "{out}");
}
