//! Many callers changing users at once while traffic flows: the final user set is exactly what
//! the acknowledged operations say, and no removed user's session survives.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, vless_config, Shardray, ALICE};
use tonic::Code;

const CALLERS: usize = 8;
const OPS_PER_CALLER: usize = 1250;
const EMAILS_PER_CALLER: usize = 16;

#[test]
fn ten_thousand_concurrent_adds_and_removes_end_in_exactly_the_acknowledged_state() {
    let echo = EchoServer::start();
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService"]);
    let server = Shardray::start(&config, 2);
    let proxy = server.inbound("vless-in");
    let api_addr = server.api.unwrap();
    let dest = echo.addr();

    // Alice's traffic flows throughout and must never break.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                let data = vless::payload(4096, n);
                assert_eq!(vless::round_trip(proxy, ALICE, dest, &data).expect("alice's traffic"), data);
                n += 1;
            }
            n
        })
    };

    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            std::thread::spawn(move || {
                let api = ApiClient::connect(api_addr);
                let mut present = BTreeSet::new();
                let mut seed = 0x2545f4914f6cdd1du64 ^ (c as u64 + 1);
                let mut survivors = 0;
                for op in 0..OPS_PER_CALLER {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let k = (seed % EMAILS_PER_CALLER as u64) as usize;
                    let email = format!("c{c}-u{k}@race");
                    let id = format!("c{c}-u{k}");
                    if op % 125 == 0 {
                        // Add (if needed), open a live session, remove, and watch it close.
                        if !present.contains(&email) {
                            api.add_user("vless-in", &email, &id, 0).expect("add for session check");
                        }
                        let mut s = vless::connect(proxy).unwrap();
                        let mut first = vless::request(&id, dest);
                        first.extend_from_slice(b"live");
                        s.write_all(&first).unwrap();
                        let mut back = [0u8; 6];
                        s.read_exact(&mut back).unwrap();
                        api.remove_user("vless-in", &email).expect("remove for session check");
                        present.remove(&email);
                        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                        let mut buf = [0u8; 8];
                        if let Ok(n) = s.read(&mut buf) {
                            if n > 0 {
                                survivors += 1;
                            }
                        }
                        continue;
                    }
                    if seed & 1 == 0 {
                        match api.add_user("vless-in", &email, &id, 0) {
                            Ok(()) => assert!(present.insert(email), "add acknowledged for a present user"),
                            Err(e) => {
                                assert_eq!(e.code(), Code::AlreadyExists, "{e}");
                                assert!(present.contains(&email), "refused add of an absent user: {e}");
                            }
                        }
                    } else {
                        match api.remove_user("vless-in", &email) {
                            Ok(()) => assert!(present.remove(&email), "remove acknowledged for an absent user"),
                            Err(e) => {
                                assert_eq!(e.code(), Code::NotFound, "{e}");
                                assert!(!present.contains(&email), "refused remove of a present user: {e}");
                            }
                        }
                    }
                }
                (present, survivors)
            })
        })
        .collect();

    let mut expected: BTreeSet<String> = BTreeSet::from(["alice@example.com".to_owned()]);
    let mut survivors = 0;
    for caller in callers {
        let (present, s) = caller.join().unwrap();
        expected.extend(present);
        survivors += s;
    }
    stop.store(true, Ordering::Relaxed);
    let alice_connections = traffic.join().unwrap();
    assert!(alice_connections > 0);
    assert_eq!(survivors, 0, "sessions of removed users survived");

    let api = ApiClient::connect(api_addr);
    let actual: BTreeSet<String> = api.user_emails("vless-in").unwrap().into_iter().collect();
    assert_eq!(actual, expected);
    // The shards agree with the registry: present users connect, absent ones do not.
    for c in 0..CALLERS {
        for k in 0..EMAILS_PER_CALLER {
            let email = format!("c{c}-u{k}@race");
            let served = !vless::round_trip(proxy, &format!("c{c}-u{k}"), dest, b"?").unwrap_or_default().is_empty();
            assert_eq!(served, expected.contains(&email), "{email}");
        }
    }
}
