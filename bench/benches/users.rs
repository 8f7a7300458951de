//! User lookup in a shard's own user table at 1,000 and 1,000,000 users.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shardray_core::slots::{UserId, UserKey};
use shardray_shard::UserTable;
use uuid::Uuid;

/// xorshift64*: a fixed, dependency-free sequence of random-looking ids.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn uuid(&mut self) -> Uuid {
        let hi = u128::from(self.next());
        let lo = u128::from(self.next());
        Uuid::from_u128(hi << 64 | lo)
    }
}

/// Distinct probes cycled through so lookups hit random buckets rather than one hot one.
const PROBES: usize = 4096;

fn user_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("user_lookup");
    group.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for users in [1_000usize, 1_000_000] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ users as u64);
        let ids: Vec<Uuid> = (0..users).map(|_| rng.uuid()).collect();
        let mut table = UserTable::<Uuid>::default();
        for (i, id) in ids.iter().enumerate() {
            table.insert(&UserKey { id: UserId::Uuid(*id), slot: i as u32, level: 0, vision: false }).expect("a UUID");
        }
        let hits: Vec<Uuid> = (0..PROBES).map(|_| ids[(rng.next() % users as u64) as usize]).collect();
        let misses: Vec<Uuid> = (0..PROBES).map(|_| rng.uuid()).collect();
        assert!(misses.iter().all(|id| !table.contains(id)));

        for (kind, probes) in [("hit", &hits), ("miss", &misses)] {
            group.bench_function(BenchmarkId::new(kind, users), |b| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) % PROBES;
                    black_box(table.contains(black_box(&probes[i])))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, user_lookup);
criterion_main!(benches);
