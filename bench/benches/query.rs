//! QueryStats "" over 100,000 users, in the steps the server takes and the one the client
//! takes: each shard's snapshot of its counters, the control thread's read of them into the
//! packed answer (names, levels, sums over two shards), the reply's encoding a chunk at a
//! time, and, for scale, the client's decode of those bytes into `Stat`s (what prost does in
//! the harness, and in any Rust panel).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use prost::Message as _;
use shardray_control::api::stats::QueryRead;
use shardray_control::registry::UserSets;
use shardray_core::stats::{SlotCounters, StatsSnapshot};
use shardray_proto::xray::app::stats::command as pb;
use uuid::Uuid;

/// Users in the inbound.
const USERS: u32 = 100_000;
/// Shards whose snapshots are summed.
const SHARDS: usize = 2;

fn query_stats(c: &mut Criterion) {
    let mut group = c.benchmark_group("query_stats_100000_users");
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));

    let clients: Vec<serde_json::Value> = (0..USERS)
        .map(
            |n| serde_json::json!({ "id": Uuid::from_u128(n as u128 + 1).to_string(), "email": format!("u{n}@bench") }),
        )
        .collect();
    let config = serde_json::json!({
        "stats": {},
        "policy": { "levels": { "0": { "statsUserUplink": true, "statsUserDownlink": true } } },
        "inbounds": [{ "tag": "in", "port": 1, "protocol": "vless",
                       "settings": { "decryption": "none", "clients": clients } }],
        "outbounds": [{ "protocol": "freedom" }]
    });
    let config = std::sync::Arc::new(shardray_control::config::load_str(&config.to_string()).expect("config"));
    let sets = UserSets::from_config(&config);
    let span = sets.slots().span() as u32;

    // Each shard's counters, with figures of every size a varint has.
    let mut counters = SlotCounters::default();
    for slot in 0..span {
        counters.assign(slot, format!("u{slot}@bench").into(), true);
        let t = counters.traffic(slot).expect("assigned");
        t.add_up(u64::from(slot) * 7919);
        t.add_down(u64::from(slot) << (slot % 40));
    }
    group.bench_function("shard_snapshot", |b| {
        b.iter(|| {
            let mut snap = StatsSnapshot::default();
            counters.sample(black_box(0..span), &mut snap);
            snap
        })
    });
    let snaps: Vec<StatsSnapshot> = (0..SHARDS)
        .map(|_| {
            let mut snap = StatsSnapshot::default();
            counters.sample(0..span, &mut snap);
            snap
        })
        .collect();

    let req = pb::QueryStatsRequest::default();
    let read = || {
        let mut read = QueryRead::new(&config, &req).expect("request");
        read.users(&sets.slots(), &snaps, 0..span);
        read.into_answer()
    };
    group.bench_function("control_read", |b| b.iter(|| black_box(read()).counters()));
    group.bench_function("control_encode", |b| {
        b.iter_batched(
            read,
            |answer| answer.into_chunks().map(|c| c.len()).sum::<usize>(),
            criterion::BatchSize::LargeInput,
        )
    });
    let bytes: Vec<u8> = read().into_chunks().flat_map(|c| c.to_vec()).collect();
    assert_eq!(pb::QueryStatsResponse::decode(&bytes[5..]).expect("decodes").stat.len(), 2 * USERS as usize);
    group.bench_function("client_decode", |b| {
        b.iter(|| pb::QueryStatsResponse::decode(black_box(&bytes[5..])).expect("decodes").stat.len())
    });
    group.finish();
}

criterion_group!(benches, query_stats);
criterion_main!(benches);
