//! Crash trials: cycles of API changes under traffic, each ended by `kill -9` at a moment no
//! one chose, then a restart from the same config and `--state`. After every restart:
//! - every change the API acknowledged is there, and a batch whose call never returned is
//!   there whole or not at all, never half;
//! - counters lost at most the flush interval: everything counted a flush interval before
//!   the kill is still counted, and nothing that was not sent is;
//! - a journal whose last line was torn by the crash starts with a warning and is repaired.
//!
//! `SHARDRAY_CRASH_CYCLES` sets the number of cycles (default 6; `make crash-trials` runs 50).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shardray_tests::api::{vless_user, AddUsersOperation, RemoveUsersOperation};
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, vless_config, wait_until, Restartable, ALICE};

const UP: &str = "user>>>alice@example.com>>>traffic>>>uplink";
/// Bytes alice sends per round trip.
const CHUNK: usize = 16 * 1024;

fn cycles() -> usize {
    std::env::var("SHARDRAY_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(6)
}

/// A user id that is a pure function of its email, so a restart can check it.
fn id_of(email: &str) -> String {
    let h = email.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        h & 0xffff,
        h >> 52,
        (h >> 20) & 0xfff,
        h & 0xffff_ffff_ffff
    )
}

/// What the API acknowledged so far, and the one batch whose call was cut by the kill.
#[derive(Default)]
struct Ledger {
    users: BTreeSet<String>,
    in_flight: Option<Batch>,
}

#[derive(Clone)]
enum Batch {
    Add(Vec<String>),
    Remove(Vec<String>),
}

impl Ledger {
    /// Checks the server's users against the ledger and settles the batch in flight by what
    /// the server kept: all of it or none of it.
    fn check(&mut self, found: &[String]) {
        let found: BTreeSet<String> = found.iter().cloned().collect();
        if let Some(batch) = self.in_flight.take() {
            let (emails, added) = match &batch {
                Batch::Add(e) => (e, true),
                Batch::Remove(e) => (e, false),
            };
            let kept: Vec<bool> = emails.iter().map(|e| found.contains(e) == added).collect();
            assert!(
                kept.iter().all(|&k| k) || kept.iter().all(|&k| !k),
                "half of a batch applied: {emails:?} {kept:?}"
            );
            if kept[0] {
                for e in emails {
                    if added {
                        self.users.insert(e.clone());
                    } else {
                        self.users.remove(e);
                    }
                }
            }
        }
        assert_eq!(found, self.users, "the users after the restart are not the acknowledged ones");
    }
}

#[test]
fn acknowledged_changes_and_counters_survive_kill_9_cycles() {
    let echo = EchoServer::start();
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService"]);
    let setup = Restartable::new(&config);
    let mut ledger = Ledger { users: ["alice@example.com".to_string()].into(), in_flight: None };
    let sent = Arc::new(AtomicU64::new(0));
    let mut counted_before_kill = 0i64;
    let mut torn = false;
    for cycle in 0..cycles() {
        let (server, api) = setup.start(&["--flush", "1"]);
        let output = || server.output();
        ledger.check(&api.user_emails("vless-in").unwrap());
        let counted = api.get(UP, false).unwrap_or(0);
        assert!(counted >= counted_before_kill, "cycle {cycle}: counter {counted} < {counted_before_kill} flushed");
        assert!(counted as u64 <= sent.load(Ordering::SeqCst), "cycle {cycle}: counted {counted} of fewer bytes sent");
        if torn {
            assert!(
                wait_until(Duration::from_secs(2), || output().contains("journal line")),
                "a torn journal line was repaired silently:\n{}",
                output()
            );
        }

        // Alice's traffic all along, counted as it is echoed.
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = {
            let (stop, sent, proxy, echo) = (stop.clone(), sent.clone(), server.inbound("vless-in"), echo.addr());
            std::thread::spawn(move || {
                let data = vless::payload(CHUNK, 7);
                while !stop.load(Ordering::SeqCst) {
                    // Counted once sent, whether or not the echo makes it back before the kill.
                    sent.fetch_add(CHUNK as u64, Ordering::SeqCst);
                    if vless::round_trip(proxy, ALICE, echo, &data).is_err() {
                        break;
                    }
                }
            })
        };
        // What the shards counted now is on disk one flush interval later, whatever follows.
        std::thread::sleep(Duration::from_millis(300));
        counted_before_kill = api.get(UP, false).unwrap();

        // Batches of changes until the kill, which lands at a moment of its own, always more
        // than a flush interval after the count above.
        let pid = server.pid();
        let kill_after = Duration::from_millis(1600 + 137 * (cycle as u64 % 7));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            // SAFETY: sends a signal to our own child process.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        let (mut batch_no, mut acknowledged) = (0, 0);
        loop {
            let batch = if batch_no % 3 == 2 {
                let victims: Vec<String> =
                    ledger.users.iter().filter(|e| e.as_str() != "alice@example.com").take(2).cloned().collect();
                if victims.is_empty() {
                    batch_no += 1;
                    continue;
                }
                Batch::Remove(victims)
            } else {
                Batch::Add((0..3).map(|k| format!("c{cycle}-b{batch_no}-{k}@example.com")).collect())
            };
            batch_no += 1;
            let result = match &batch {
                Batch::Add(emails) => {
                    let users = emails.iter().map(|e| vless_user(e, &id_of(e), 0)).collect();
                    api.ours("vless-in", "AddUsersOperation", &AddUsersOperation { users })
                }
                Batch::Remove(emails) => {
                    api.ours("vless-in", "RemoveUsersOperation", &RemoveUsersOperation { emails: emails.clone() })
                }
            };
            match result {
                Ok(()) => {
                    ledger.in_flight = Some(batch);
                    ledger.check_acknowledged();
                    acknowledged += 1;
                }
                Err(_) => {
                    // Refused by the dying server or never answered: either way not acknowledged.
                    ledger.in_flight = Some(batch);
                    break;
                }
            }
        }
        killer.join().unwrap();
        assert!(acknowledged > 0 && counted_before_kill > 0, "cycle {cycle} tried nothing:\n{}", output());
        eprintln!("cycle {cycle}: {acknowledged} batches acknowledged, {counted_before_kill} bytes counted");
        stop.store(true, Ordering::SeqCst);
        traffic.join().unwrap();
        drop(api);
        drop(server);

        // Every other cycle, the crash also tore the journal's last line mid-write.
        if cycle % 2 == 1 {
            use std::io::Write;
            let mut journal = std::fs::OpenOptions::new().append(true).open(setup.path("state/journal.jsonl")).unwrap();
            journal.write_all(br#"{"op":"add_users","inbound":"vless-in","us"#).unwrap();
        }
        torn = cycle % 2 == 1;
    }
    // The last restart: the state of the last cycle, and a clean, compacted journal.
    let (server, api) = setup.start(&["--flush", "1"]);
    ledger.check(&api.user_emails("vless-in").unwrap());
    let journal = std::fs::read_to_string(setup.path("state/journal.jsonl")).unwrap();
    assert!(journal.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{journal}");
    for email in ledger.users.iter().filter(|e| e.as_str() != "alice@example.com").take(3) {
        let echo_back = vless::round_trip(server.inbound("vless-in"), &id_of(email), echo.addr(), b"hi").unwrap();
        assert_eq!(echo_back, b"hi", "{email} kept but cannot connect\n{}", server.output());
    }
}

impl Ledger {
    /// A batch the API acknowledged: it is state now.
    fn check_acknowledged(&mut self) {
        match self.in_flight.take() {
            Some(Batch::Add(emails)) => self.users.extend(emails),
            Some(Batch::Remove(emails)) => {
                for e in emails {
                    self.users.remove(&e);
                }
            }
            None => {}
        }
    }
}
