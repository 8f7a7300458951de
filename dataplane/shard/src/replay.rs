//! The auth IDs every shard accepted recently, shared by the shards: a VMess replay sent on a
//! new connection lands on any shard (SO_REUSEPORT hashes each connection anew), so each
//! shard's own exact filter (`wire::vmess::ReplayFilter`) misses a replay of a first packet
//! that another shard accepted. This table catches it.
//!
//! One write per accepted VMess handshake, not per packet: 64-bit fingerprints of auth IDs
//! (which are AES blocks, so any 8 of their bytes are as good as random) in fixed tables of
//! atomics, one per 120 s generation of the auth ID's own timestamp, three in a ring as in
//! the shard's filter (an auth ID can pass the clock check only while its generation or the
//! next one holds). Lock-free: an insert is a few relaxed loads and one compare-and-swap.
//!
//! Bounded: `ENTRIES` fingerprints per generation (1 MiB each). Past that (more than about
//! 100,000 handshakes in two minutes) a fingerprint that finds no free place in its probe run
//! is not recorded, and a cross-shard replay of it is not caught; a replay on the same shard
//! still is. A false alarm needs two live auth IDs agreeing in 64 bits: about 10^-10 at that
//! load. A generation's table is cleared when a newer generation claims its place; an insert
//! racing that clear may be lost (a replay missed), never invented.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use shardray_wire::vmess::auth_id::MAX_CLOCK_SKEW;

/// Fingerprints per generation.
const ENTRIES: usize = 1 << 17;

/// Places tried after the first.
const PROBES: usize = 16;

struct Generation {
    /// The generation held, plus one (0: none yet).
    tag: AtomicU64,
    table: Box<[AtomicU64]>,
}

/// The shared table; see the module docs.
pub(crate) struct SharedReplay {
    ring: [Generation; 3],
}

impl SharedReplay {
    fn new() -> SharedReplay {
        let generation =
            || Generation { tag: AtomicU64::new(0), table: (0..ENTRIES).map(|_| AtomicU64::new(0)).collect() };
        SharedReplay { ring: [generation(), generation(), generation()] }
    }

    /// The process's table of VMess auth IDs, allocated on first use (the first VMess handshake).
    pub(crate) fn get() -> &'static SharedReplay {
        static TABLE: OnceLock<SharedReplay> = OnceLock::new();
        TABLE.get_or_init(SharedReplay::new)
    }

    /// The process's table of Shadowsocks salts (their first 16 bytes, as random as an auth
    /// ID), allocated on first use. A 2022 salt is stamped with its header's timestamp, which
    /// passes the ±30 s check only while its generation or the next holds; a classic salt,
    /// which has no timestamp, with the time it arrived (`insert_arrival`).
    pub(crate) fn salts() -> &'static SharedReplay {
        static TABLE: OnceLock<SharedReplay> = OnceLock::new();
        TABLE.get_or_init(SharedReplay::new)
    }

    /// The process's table of authenticated REALITY session ids (their first 16 bytes, AES-GCM
    /// ciphertext), stamped with the time they arrived (`insert_arrival`): a ClientHello
    /// replayed within 120 to 240 s meets the target instead of our certificate; later, the
    /// client's own timestamp fails `maxTimeDiff` when that is set.
    pub(crate) fn reality() -> &'static SharedReplay {
        static TABLE: OnceLock<SharedReplay> = OnceLock::new();
        TABLE.get_or_init(SharedReplay::new)
    }

    /// Records an id that carries no timestamp of its own (a classic Shadowsocks salt, a REALITY
    /// session id), stamped with the time it arrived, `now` (seconds): in this generation and
    /// the one before, so that a replay in the next generation still finds it (kept 120 to
    /// 240 s). `false` if some shard recorded it before.
    pub(crate) fn insert_arrival(&self, id: &[u8; 16], now: u64) -> bool {
        let fresh = self.insert(id, now);
        let fresh_before = self.insert(id, now.saturating_sub(MAX_CLOCK_SKEW));
        fresh && fresh_before
    }

    /// Records `auth_id`, stamped `timestamp`; `false` if some shard recorded it before.
    pub(crate) fn insert(&self, auth_id: &[u8; 16], timestamp: u64) -> bool {
        let generation = timestamp / MAX_CLOCK_SKEW;
        let slot = &self.ring[(generation % 3) as usize];
        let tag = generation + 1;
        let mut seen = slot.tag.load(Relaxed);
        while seen != tag {
            if seen > tag {
                // A newer generation holds the place: this auth ID is about to expire anyway.
                return true;
            }
            match slot.tag.compare_exchange(seen, tag, Relaxed, Relaxed) {
                Ok(_) => {
                    for entry in slot.table.iter() {
                        entry.store(0, Relaxed);
                    }
                    break;
                }
                Err(now) => seen = now,
            }
        }
        let fingerprint = u64::from_le_bytes(auth_id[..8].try_into().expect("8 bytes")) | 1;
        let start = u64::from_le_bytes(auth_id[8..].try_into().expect("8 bytes")) as usize;
        for i in 0..=PROBES {
            let entry = &slot.table[(start + i) % ENTRIES];
            match entry.compare_exchange(0, fingerprint, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(v) if v == fingerprint => return false,
                Err(_) => continue,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_insert_is_seen_and_generations_expire() {
        let t = SharedReplay::new();
        let id = |n: u64| {
            let mut a = [0u8; 16];
            a[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            a[8..].copy_from_slice(&n.to_le_bytes());
            a
        };
        let ts = 1_780_000_000;
        for n in 0..10_000 {
            assert!(t.insert(&id(n), ts), "fresh {n}");
        }
        for n in 0..10_000 {
            assert!(!t.insert(&id(n), ts + 5), "seen {n}");
        }
        // Three generations later the place is reused: the old entries are gone.
        assert!(t.insert(&id(1), ts + 3 * MAX_CLOCK_SKEW));
        // An older generation than the one holding the place is let through unrecorded.
        assert!(t.insert(&id(2), ts));
    }

    #[test]
    fn an_arrival_stamped_id_is_seen_across_a_generation_boundary() {
        let t = SharedReplay::new();
        let id = [7u8; 16];
        // Just before a boundary, then replayed just after it and a generation later.
        let ts = 1_780_000_000 / MAX_CLOCK_SKEW * MAX_CLOCK_SKEW + MAX_CLOCK_SKEW - 1;
        assert!(t.insert_arrival(&id, ts));
        assert!(!t.insert_arrival(&id, ts + 2));
        assert!(!t.insert_arrival(&id, ts + MAX_CLOCK_SKEW));
    }
}
