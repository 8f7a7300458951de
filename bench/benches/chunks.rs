//! Chunk throughput for 16 KiB of payload: `AeadKey` seal and open in place for each cipher, the
//! Shadowsocks chunk sealer and opener for each method, and the VMess body sealer and opener
//! for AES-128-GCM and ChaCha20-Poly1305 (Xray's default options, then with authenticated
//! length) and `none`. Every group starts with the baseline, a plain memcpy of the same 16 KiB,
//! so each figure reads as a ratio to it.
//!
//! Sealers append to an output `Vec` that is cleared, not freed, between iterations (as a
//! connection reuses its buffer). Openers work in place, so each run of `ROUND` sealed payloads
//! is copied into the receive buffer, and a fresh opener built, outside the timed part.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use shardray_wire::aead::{AeadKey, Cipher, TAG_LEN};
use shardray_wire::shadowsocks::{self, Method};
use shardray_wire::vmess::{self, Command, Direction, RequestHeader, SecurityConfig};

/// The payload every iteration seals or opens.
const PAYLOAD: usize = 16 * 1024;

/// Sealed payloads opened per run (128 KiB: the receive buffer stays in L2).
const ROUND: usize = 8;

fn payload() -> Vec<u8> {
    (0..PAYLOAD).map(|i| (i as u8).wrapping_mul(31)).collect()
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    // The baseline: copy the same 16 KiB from one buffer to another.
    let src = payload();
    let mut dst = vec![0u8; PAYLOAD];
    group.bench_function("memcpy_baseline", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    group
}

/// Times `open_round` over fresh copies of `wire` (holding `ROUND` sealed payloads) for `iters`
/// payloads. `fresh` builds the opener for a run; it and the copy are outside the timed part.
fn open_rounds<O>(
    iters: u64,
    wire: &[u8],
    mut fresh: impl FnMut() -> O,
    mut open_round: impl FnMut(&mut O, &mut [u8]),
) -> Duration {
    let mut rx = wire.to_vec();
    let rounds = iters.div_ceil(ROUND as u64);
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        rx.copy_from_slice(wire);
        let mut opener = fresh();
        let start = Instant::now();
        open_round(&mut opener, &mut rx);
        total += start.elapsed();
    }
    // Scale from the payloads opened to the iterations asked for.
    total.mul_f64(iters as f64 / (rounds * ROUND as u64) as f64)
}

// === AeadKey ===

const CIPHERS: [(Cipher, &str); 4] = [
    (Cipher::Aes128Gcm, "aes-128-gcm"),
    (Cipher::Aes256Gcm, "aes-256-gcm"),
    (Cipher::ChaCha20Poly1305, "chacha20-poly1305"),
    (Cipher::XChaCha20Poly1305, "xchacha20-poly1305"),
];

fn aead_chunks(c: &mut Criterion) {
    let mut group = group(c, "aead_16k");
    for (cipher, name) in CIPHERS {
        let key = AeadKey::new(cipher, &vec![7; cipher.key_len()]);
        let nonce = vec![1u8; cipher.nonce_len()];
        let mut sealed = payload();
        sealed.resize(PAYLOAD + TAG_LEN, 0);
        key.seal(&nonce, &[], &mut sealed);

        group.bench_function(format!("{name}/seal"), |b| {
            // Sealing its own output again costs the same as sealing plaintext.
            let mut buf = sealed.clone();
            b.iter(|| key.seal(&nonce, &[], black_box(&mut buf)))
        });
        let wire = sealed.repeat(ROUND);
        group.bench_function(format!("{name}/open"), |b| {
            b.iter_custom(|iters| {
                open_rounds(
                    iters,
                    &wire,
                    || (),
                    |_, rx| {
                        for piece in rx.chunks_mut(PAYLOAD + TAG_LEN) {
                            black_box(key.open(&nonce, &[], piece).expect("opens"));
                        }
                    },
                )
            })
        });
    }
    group.finish();
}

// === Shadowsocks ===

fn shadowsocks_chunks(c: &mut Criterion) {
    let mut group = group(c, "ss_chunk_16k");
    let plain = payload();
    for method in Method::ALL {
        let subkey = vec![9u8; method.key_len()];
        let mut sealer = shadowsocks::ChunkSealer::new(method, &subkey);
        let mut wire = Vec::new();
        for _ in 0..ROUND {
            sealer.seal(&plain, &mut wire);
        }

        group.bench_function(format!("{}/seal", method.name()), |b| {
            let mut out = Vec::with_capacity(sealer.sealed_len(PAYLOAD));
            b.iter(|| {
                out.clear();
                sealer.seal(black_box(&plain), &mut out);
            })
        });
        group.bench_function(format!("{}/open", method.name()), |b| {
            b.iter_custom(|iters| {
                open_rounds(
                    iters,
                    &wire,
                    || shadowsocks::ChunkOpener::new(method, &subkey),
                    |opener, rx| {
                        let mut at = 0;
                        while at < rx.len() {
                            match opener.open(&mut rx[at..]).expect("opens") {
                                shadowsocks::Opened::Chunk { plain, consumed } => {
                                    black_box(plain);
                                    at += consumed;
                                }
                                shadowsocks::Opened::NeedMore { .. } => unreachable!("whole chunks"),
                            }
                        }
                    },
                )
            })
        });
    }
    group.finish();
}

// === VMess ===

fn vmess_header(config: SecurityConfig, authenticated_length: bool) -> RequestHeader {
    let (security, options) = config.resolve(true, authenticated_length);
    RequestHeader {
        body_iv: [3; 16],
        body_key: [4; 16],
        response_auth: 1,
        options,
        security,
        command: Command::Tcp,
        destination: None,
    }
}

fn vmess_chunks(c: &mut Criterion) {
    let mut group = group(c, "vmess_body_16k");
    let plain = payload();
    let cases = [
        ("aes-128-gcm", SecurityConfig::Aes128Gcm, false),
        ("aes-128-gcm+auth_len", SecurityConfig::Aes128Gcm, true),
        ("chacha20-poly1305", SecurityConfig::ChaCha20Poly1305, false),
        ("chacha20-poly1305+auth_len", SecurityConfig::ChaCha20Poly1305, true),
        ("none", SecurityConfig::None, false),
    ];
    for (name, config, auth_len) in cases {
        let header = vmess_header(config, auth_len);
        let new_sealer = || vmess::ChunkSealer::new(&header, Direction::Request, [5; 32]).expect("valid options");
        let mut wire = Vec::new();
        let mut sealer = new_sealer();
        for _ in 0..ROUND {
            sealer.seal(&plain, &mut wire).expect("stream");
        }

        group.bench_function(format!("{name}/seal"), |b| {
            let mut sealer = new_sealer();
            let mut out = Vec::with_capacity(2 * PAYLOAD);
            b.iter(|| {
                out.clear();
                sealer.seal(black_box(&plain), &mut out).expect("stream");
            })
        });
        group.bench_function(format!("{name}/open"), |b| {
            b.iter_custom(|iters| {
                open_rounds(
                    iters,
                    &wire,
                    || vmess::ChunkOpener::new(&header, Direction::Request).expect("valid options"),
                    |opener, rx| {
                        let mut at = 0;
                        while at < rx.len() {
                            match opener.open(&mut rx[at..]).expect("opens") {
                                vmess::Chunk::Data { plain, consumed } => {
                                    black_box(plain);
                                    at += consumed;
                                }
                                vmess::Chunk::End { .. } => unreachable!("no end chunk sealed"),
                            }
                        }
                    },
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, aead_chunks, shadowsocks_chunks, vmess_chunks);
criterion_main!(benches);
