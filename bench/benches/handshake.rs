//! Sealed request headers: VMess AEAD header open and auth-ID user scan, Shadowsocks classic
//! request decode and trial-decryption user scan, Shadowsocks 2022 request decode with one user
//! and with identity headers. Each group also times a copy of the request bytes, the baseline
//! (the opens work in place, so every timed decode starts with such a copy).
//!
//! The user scans (`find_user`) are timed on a miss, so they try every user: the per-user cost
//! is (t(n) − t(1)) / (n − 1).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkGroup, BenchmarkId, Criterion};
use shardray_wire::addr::{Address, Destination};
use shardray_wire::shadowsocks::{classic, ss2022, MasterKey, Method, ReplayFilter as SaltFilter};
use shardray_wire::vmess::{self, Command, RequestHeader, RequestOpener, SealRandom, UserKey};
use uuid::Uuid;

/// Server clock for every timestamped header (Unix seconds).
const NOW: u64 = 1_796_000_000;

/// Distinct first flights cycled through where a replay filter would refuse a repeat.
const FLIGHTS: usize = 1024;

/// xorshift64*: a fixed, dependency-free sequence of random-looking bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in out.chunks_mut(8) {
            b.copy_from_slice(&self.next().to_le_bytes()[..b.len()]);
        }
        out
    }
}

fn destination() -> Destination {
    Destination { addr: Address::Ip(IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34))), port: 443 }
}

/// Times `body` on a fresh copy of each of `flights` in turn, `iters` times in all. `fresh`
/// builds the state a run of flights shares (a replay filter), outside the timed part, so that
/// no flight is ever a replay.
fn cycle<S>(
    iters: u64,
    flights: &[Vec<u8>],
    mut fresh: impl FnMut() -> S,
    mut body: impl FnMut(&mut S, &mut [u8]),
) -> Duration {
    let mut scratch = vec![0u8; flights.iter().map(Vec::len).max().unwrap_or(0)];
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(flights.len() as u64) as usize;
        let mut state = fresh();
        let start = Instant::now();
        for flight in &flights[..n] {
            let buf = &mut scratch[..flight.len()];
            buf.copy_from_slice(flight);
            body(&mut state, buf);
        }
        total += start.elapsed();
        drop(state);
        left -= n as u64;
    }
    total
}

/// The baseline: a copy of `bytes` into a buffer.
fn copy_baseline(group: &mut BenchmarkGroup<'_, WallTime>, bytes: &[u8]) {
    group.bench_function(format!("copy_baseline/{}B", bytes.len()), |b| {
        let mut dst = vec![0u8; bytes.len()];
        b.iter(|| dst.copy_from_slice(black_box(bytes)));
    });
}

// === VMess ===

fn vmess_user(n: u64) -> UserKey {
    UserKey::new(&Uuid::from_u128(0x5eed_0000_0000_0000_0000_0000_0000_0000 | u128::from(n)))
}

fn vmess_request() -> RequestHeader {
    let (security, options) = vmess::SecurityConfig::Aes128Gcm.resolve(true, false);
    RequestHeader {
        body_iv: [1; 16],
        body_key: [2; 16],
        response_auth: 0x42,
        options,
        security,
        command: Command::Tcp,
        destination: Some(destination()),
    }
}

fn vmess_flight(user: &UserKey, rng: &mut Rng) -> Vec<u8> {
    let random = SealRandom { auth_id: rng.bytes(), nonce: rng.bytes(), padding_len: 0, padding: [0; 15] };
    let mut out = Vec::new();
    vmess_request().seal(user, NOW, &random, &mut out);
    out
}

fn vmess_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("vmess_header");
    let user = vmess_user(0);
    let mut rng = Rng(0x1234_5678);
    let flights: Vec<Vec<u8>> = (0..FLIGHTS).map(|_| vmess_flight(&user, &mut rng)).collect();
    {
        let mut buf = flights[0].clone();
        let (header, used) = RequestOpener::new(&user).open(&mut buf).expect("sealed header opens");
        assert_eq!((header, used), (vmess_request(), buf.len()));
    }
    copy_baseline(&mut group, &flights[0]);

    // The user is known: derive the header keys, open the sealed length and the header.
    group.bench_function("open", |b| {
        b.iter_batched_ref(
            || flights[0].clone(),
            |buf| black_box(RequestOpener::new(&user).open(buf)),
            BatchSize::SmallInput,
        )
    });

    // A server with one user, from the first bytes: auth ID check, clock, replay filter insert,
    // header open. Each auth ID is fresh.
    let users = [user.clone()];
    group.bench_function("accept/1_user", |b| {
        b.iter_custom(|iters| {
            cycle(iters, &flights, vmess::ReplayFilter::new, |filter, buf| {
                let id = vmess::peek_auth_id(buf).expect("16 bytes");
                let found = vmess::find_user(users.iter().map(|u| (u.auth_id(), u)), &id, NOW, filter);
                let found = found.expect("the one user");
                black_box(RequestOpener::new(found).open(buf).expect("opens"));
            })
        })
    });
    group.finish();

    // The auth-ID scan on a miss: one AES block decryption and one CRC32 per user.
    let mut group = c.benchmark_group("vmess_find_user");
    let stranger = vmess_user(u64::MAX).auth_id().encode(NOW, [9; 4]);
    for n in [1u64, 100, 10_000] {
        let users: Vec<UserKey> = (1..=n).map(vmess_user).collect();
        let mut filter = vmess::ReplayFilter::new();
        group.bench_with_input(BenchmarkId::new("miss", n), &users, |b, users| {
            b.iter(|| {
                let r =
                    vmess::find_user(users.iter().map(|u| (u.auth_id(), u)), black_box(&stranger), NOW, &mut filter);
                assert!(r.is_err());
            })
        });
    }
    group.finish();
}

// === Shadowsocks classic ===

const CLASSIC: [Method; 4] =
    [Method::Aes128Gcm, Method::Aes256Gcm, Method::ChaCha20Poly1305, Method::XChaCha20Poly1305];

fn classic_key(method: Method, n: u64) -> MasterKey {
    MasterKey::from_password(method, &format!("user-{n}-password")).expect("non-empty")
}

fn classic_flight(method: Method, key: &MasterKey) -> Vec<u8> {
    let salt = vec![0x5a; method.salt_len()];
    let mut out = Vec::new();
    classic::encode_request(method, key, &salt, &destination(), &[], &mut out);
    out
}

fn shadowsocks_classic(c: &mut Criterion) {
    let mut group = c.benchmark_group("ss_classic_header");
    for method in CLASSIC {
        let key = classic_key(method, 0);
        let flight = classic_flight(method, &key);
        {
            let mut buf = flight.clone();
            let (req, _) = classic::decode_request(method, &key, &mut buf).expect("request decodes");
            assert_eq!((req.destination, req.consumed), (destination(), flight.len()));
        }
        if method == Method::Aes128Gcm {
            copy_baseline(&mut group, &flight);
        }
        // Subkey (HKDF-SHA1), key setup, length chunk and first chunk opened, address decoded.
        group.bench_function(format!("decode/{}", method.name()), |b| {
            b.iter_batched_ref(
                || flight.clone(),
                |buf| black_box(classic::decode_request(method, &key, buf).map(|(r, _)| r.consumed)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    // Trial decryption on a miss: one HKDF-SHA1 and one 2-byte AEAD open per user.
    let mut group = c.benchmark_group("ss_classic_find_user");
    for method in CLASSIC {
        let flight = classic_flight(method, &classic_key(method, u64::MAX));
        for n in [1u64, 100, 1_000] {
            let keys: Vec<MasterKey> = (1..=n).map(|i| classic_key(method, i)).collect();
            group.bench_with_input(BenchmarkId::new(format!("miss/{}", method.name()), n), &keys, |b, keys| {
                b.iter(|| assert!(classic::find_user(method, keys, black_box(&flight)).is_err()))
            });
        }
    }
    group.finish();
}

// === Shadowsocks 2022 ===

const SS2022: [Method; 3] = [Method::Blake3Aes128Gcm, Method::Blake3Aes256Gcm, Method::Blake3ChaCha20Poly1305];

fn psk(method: Method, rng: &mut Rng) -> MasterKey {
    MasterKey::from_bytes(&rng.bytes::<32>()[..method.key_len()])
}

/// `FLIGHTS` first flights with fresh salts, each from the user `user(i)` names.
fn ss2022_flights(
    method: Method,
    identities: &[MasterKey],
    users: &[MasterKey],
    user: impl Fn(usize) -> usize,
    rng: &mut Rng,
) -> Vec<Vec<u8>> {
    (0..FLIGHTS)
        .map(|i| {
            let salt = &rng.bytes::<32>()[..method.salt_len()];
            let request = ss2022::ClientRequest {
                method,
                identities,
                key: &users[user(i)],
                salt,
                timestamp: NOW,
                destination: &destination(),
                padding_len: 0,
            };
            let mut out = Vec::new();
            request.encode(&[], &mut out);
            out
        })
        .collect()
}

fn bench_ss2022(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    server: &ss2022::Server,
    flights: &[Vec<u8>],
) {
    {
        let mut buf = flights[0].clone();
        let (req, _) = server.decode_request(&mut buf, NOW, &mut SaltFilter::new(1)).expect("request decodes");
        assert_eq!((req.destination, req.consumed), (destination(), buf.len()));
    }
    // Identity header (multi-user), subkey (BLAKE3), fixed and variable header opened, address
    // decoded, salt recorded in the replay filter.
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            cycle(
                iters,
                flights,
                || SaltFilter::new(FLIGHTS),
                |filter, buf| {
                    black_box(server.decode_request(buf, NOW, filter).expect("decodes").0.consumed);
                },
            )
        })
    });
}

fn shadowsocks_2022(c: &mut Criterion) {
    let mut rng = Rng(0xfeed_f00d);
    let mut group = c.benchmark_group("ss2022_header");
    for method in SS2022 {
        let key = psk(method, &mut rng);
        let flights = ss2022_flights(method, &[], &[key], |_| 0, &mut rng);
        if method == Method::Blake3Aes128Gcm {
            copy_baseline(&mut group, &flights[0]);
        }
        let server = ss2022::Server::new(method, key);
        bench_ss2022(&mut group, BenchmarkId::new(format!("decode/{}", method.name()), "single"), &server, &flights);
    }
    // Identity headers: one AES block names the user by hash, so the lookup is one map probe.
    for method in [Method::Blake3Aes128Gcm, Method::Blake3Aes256Gcm] {
        let server_psk = psk(method, &mut rng);
        for n in [1usize, 10_000] {
            let users: Vec<MasterKey> = (0..n).map(|_| psk(method, &mut rng)).collect();
            let flights = ss2022_flights(method, &[server_psk], &users, |i| i * 7919 % n, &mut rng);
            if method == Method::Blake3Aes128Gcm && n == 1 {
                copy_baseline(&mut group, &flights[0]);
            }
            let server = ss2022::Server::with_users(method, server_psk, users).expect("AES 2022 method");
            bench_ss2022(&mut group, BenchmarkId::new(format!("decode/{}/users", method.name()), n), &server, &flights);
        }
    }
    group.finish();
}

criterion_group!(benches, vmess_header, shadowsocks_classic, shadowsocks_2022);
criterion_main!(benches);
