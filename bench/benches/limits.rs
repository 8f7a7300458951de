//! What a user's rate limit costs per relayed chunk. A relay direction asks before each read
//! what its rate allows and charges what it read afterwards: for an unlimited session that is
//! one test of a rate that is 0; for a limited one, two clock reads, a load and a
//! compare-and-swap on the user's gate (`shardray_core::limits::RateGate`), shared with the
//! user's sessions on other shards. Each figure is for one 16 KiB chunk copied (the relay's
//! own work, a memcpy standing in for it) plus the limit's work, beside the bare memcpy; the
//! contended case has another thread charging the same gate all the while, as a second
//! shard serving the same user would.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardray_core::limits::{now_ns, RateGate};

const CHUNK: usize = 16 * 1024;

/// A rate no benchmark reaches, so the gate always allows the next chunk.
const RATE: u64 = 1 << 50;

/// What a relay direction does per chunk: ask, copy, charge (as `SessionRates` does).
#[inline(never)]
fn chunk(rate: u64, gate: &RateGate, src: &[u8], dst: &mut [u8]) {
    let allowed = if rate == 0 { Ok(u64::MAX) } else { gate.allowance(rate, now_ns()) };
    black_box(allowed.ok());
    dst.copy_from_slice(src);
    if rate != 0 {
        black_box(gate.charge(rate, CHUNK as u64, now_ns()));
    }
}

fn per_chunk(c: &mut Criterion) {
    let mut group = c.benchmark_group("limit_per_chunk_16k");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    let src: Vec<u8> = (0..CHUNK).map(|i| i as u8).collect();
    let mut dst = vec![0u8; CHUNK];
    let gate = Arc::new(RateGate::default());
    group.bench_function("memcpy_baseline", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    group.bench_function("unlimited", |b| b.iter(|| chunk(black_box(0), &gate, black_box(&src), &mut dst)));
    group.bench_function("limited", |b| b.iter(|| chunk(black_box(RATE), &gate, black_box(&src), &mut dst)));
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (gate, stop) = (gate.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                gate.charge(RATE, CHUNK as u64, now_ns());
            }
        })
    };
    group.bench_function("limited_contended", |b| b.iter(|| chunk(black_box(RATE), &gate, black_box(&src), &mut dst)));
    stop.store(true, Relaxed);
    other.join().unwrap();
    group.finish();
}

criterion_group!(benches, per_chunk);
criterion_main!(benches);
