//! The per-core counter update a relay makes for every chunk it moves, and one epoch that adds
//! 1,000 users to an inbound of 100,000 and one that removes them again: the registry's check
//! and record on the control thread, and the user-table update each shard makes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use shardray_control::registry::UserSets;
use shardray_core::change::Change;
use shardray_core::slots::{UserId, UserKey};
use shardray_core::spec::{Account, UserSpec};
use shardray_core::stats::{SlotCounters, Traffic};
use shardray_shard::UserTable;
use uuid::Uuid;

/// Users already in the inbound.
const BASE: u128 = 100_000;
/// Users one epoch adds, then removes.
const BATCH: u128 = 1_000;

fn user(n: u128) -> UserSpec {
    UserSpec {
        account: Account::Vless(id(n), Default::default()),
        email: format!("u{n}@example.com"),
        level: 0,
        quota: Default::default(),
    }
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n + 1)
}

fn counter_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("counter_update");
    group.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    let mut slots = SlotCounters::default();
    for slot in 0..1_000_000u32 {
        slots.assign(slot, format!("u{slot}").into(), true);
    }
    // A session keeps its slot and generation; a chunk adds to the user's and the links' counters.
    let inbound = Traffic::default();
    let outbound = Traffic::default();
    let mut slot = 0u32;
    group.bench_function("chunk_of_a_user_among_1000000", |b| {
        b.iter(|| {
            slot = (slot.wrapping_mul(2_654_435_761).wrapping_add(1)) % 1_000_000;
            let generation = slots.generation(slot);
            if let Some(t) = slots.traffic_for(black_box(slot), generation) {
                t.add_up(black_box(16_384));
            }
            inbound.add_up(16_384);
            outbound.add_up(16_384);
        })
    });
    group.finish();
    black_box((inbound.up.get(), outbound.up.get()));
}

fn epoch_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("epoch_apply_1000_users");
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));

    let clients: Vec<serde_json::Value> = (0..BASE)
        .map(|n| serde_json::json!({ "id": id(BATCH + n).to_string(), "email": user(BATCH + n).email }))
        .collect();
    let config = serde_json::json!({
        "inbounds": [{ "tag": "in", "port": 1, "protocol": "vless",
                       "settings": { "decryption": "none", "clients": clients } }],
        "outbounds": [{ "protocol": "freedom" }]
    });
    let config = shardray_control::config::load_str(&config.to_string()).expect("config");
    let mut sets = UserSets::from_config(&config);
    let batch: Vec<UserSpec> = (0..BATCH).map(user).collect();
    let add = Change::AddUsers { inbound: "in".into(), users: batch.clone() };
    let remove = Change::RemoveUsers { inbound: "in".into(), emails: batch.iter().map(|u| u.email.clone()).collect() };
    group.bench_function("control_check_and_record_add_then_remove", |b| {
        b.iter(|| {
            sets.apply(black_box(&add)).expect("add");
            sets.apply(black_box(&remove)).expect("remove");
        })
    });

    let mut table = UserTable::<Uuid>::default();
    for n in 0..BASE {
        table
            .insert(&UserKey { id: UserId::Uuid(id(BATCH + n)), slot: n as u32, level: 0, vision: false })
            .expect("a UUID");
    }
    let keys: Vec<UserKey> = (0..BATCH)
        .map(|n| UserKey { id: UserId::Uuid(id(n)), slot: (BASE + n) as u32, level: 0, vision: false })
        .collect();
    group.bench_function("shard_table_add_then_remove", |b| {
        b.iter(|| {
            for k in &keys {
                let _ = table.insert(black_box(k));
            }
            for n in 0..BATCH {
                black_box(table.remove(&id(n)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, counter_update, epoch_apply);
criterion_main!(benches);
