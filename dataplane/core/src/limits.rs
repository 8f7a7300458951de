//! What a user's sessions share across shards so that its level's limits hold for the user as
//! a whole: a rate gate per direction, its live sessions and its source addresses.
//!
//! One `UserLimits` per email (by its counter slot, which every shard numbers alike), made
//! on first use by a session at a level with limits (`UserLimits::of_slot`) and shared by all
//! shards from then on. A user that never has a limited session costs nothing: an unlimited
//! session never looks it up, and most users of a big server have no entry.
//!
//! A rate gate is GCRA (the generic cell rate algorithm) on one atomic: the "theoretical
//! arrival time" of the user's next byte, in nanoseconds on a clock common to all shards. A
//! session reads a chunk while that time is at most `TOLERANCE` ahead of now, then charges
//! what it read (pushing the time on by `bytes / rate`). Charging after reading lets the time
//! run ahead by one chunk per session; the session then waits until the gate is due again, so
//! the long-run rate is exact and the burst is bounded (`TOLERANCE` plus a chunk a session).
//! The rate is passed with each call, so a level change takes effect on the next chunk.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// How far the gate may run ahead of now and still let a session read: the burst a user may
/// send after a pause, and the slack that absorbs a timer waking a little late.
pub const TOLERANCE: Duration = Duration::from_millis(50);

/// The smallest chunk a limited session reads at once (a very low rate then goes in steps).
const MIN_CHUNK: u64 = 4 * 1024;

/// The largest chunk a limited session reads at once.
const MAX_CHUNK: u64 = 1024 * 1024;

/// Nanoseconds since the process's first call: the clock all shards' gates share.
pub fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

/// The instant that `now_ns` names `ns`.
pub fn instant_at(ns: u64) -> Instant {
    base() + Duration::from_nanos(ns)
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// The most a limited session reads in one go at `rate` bytes per second: about 1/32 s of
/// the rate, so that a user's sessions take turns in small steps.
pub fn chunk(rate: u64) -> u64 {
    (rate / 32).clamp(MIN_CHUNK, MAX_CHUNK)
}

/// One direction's rate gate (see the module docs).
#[derive(Debug, Default)]
pub struct RateGate {
    /// When the user's next byte is due at its rate, by `now_ns`.
    due: AtomicU64,
}

impl RateGate {
    /// Whether a session may read now (`now` by `now_ns`): `Ok(bytes)` it may read at most,
    /// or `Err(ns)`, the time by `now_ns` when it may read again.
    #[inline]
    pub fn allowance(&self, rate: u64, now: u64) -> Result<u64, u64> {
        let due = self.due.load(Relaxed);
        let tolerance = TOLERANCE.as_nanos() as u64;
        if due > now + tolerance {
            Err(due - tolerance)
        } else {
            Ok(chunk(rate))
        }
    }

    /// Charges `n` bytes read at `now` against `rate` (bytes per second, not 0). `true` if the
    /// user is now being held back: the gate runs further ahead than `TOLERANCE`.
    #[inline]
    pub fn charge(&self, rate: u64, n: u64, now: u64) -> bool {
        let cost = (u128::from(n) * 1_000_000_000 / u128::from(rate.max(1))) as u64;
        let prev = self.due.fetch_update(Relaxed, Relaxed, |due| Some(due.max(now) + cost)).unwrap_or(0);
        prev.max(now) + cost > now + TOLERANCE.as_nanos() as u64
    }
}

/// Why a session was refused by its user's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitRefusal {
    /// The user has `maxConnections` live sessions already.
    Connections,
    /// The user has live sessions from `maxIPs` other addresses already.
    Ips,
}

impl LimitRefusal {
    /// The event name (as the user-events stream calls it).
    pub fn name(self) -> &'static str {
        match self {
            LimitRefusal::Connections => "connection_limit",
            LimitRefusal::Ips => "ip_limit",
        }
    }
}

/// A user's shared limit state (see the module docs).
#[derive(Debug, Default)]
pub struct UserLimits {
    /// Client to server.
    pub up: RateGate,
    /// Server to client.
    pub down: RateGate,
    /// Live sessions that were admitted under a `maxConnections`.
    sessions: AtomicU32,
    /// Addresses with live sessions admitted under a `maxIPs`, and how many each. Locked only
    /// when such a session starts or ends, never per chunk.
    ips: Mutex<Vec<(IpAddr, u32)>>,
    /// When the user was last noted as rate limited (`now_ns`), plus one; 0: never.
    noted: AtomicU64,
    /// The same for a refused session (`maxConnections`, `maxIPs`).
    refused_noted: AtomicU64,
}

impl UserLimits {
    /// The limit state of counter slot `slot` in its `generation` (which a shard's
    /// `SlotCounters` bumps when the slot goes to another email, alike on every shard), made
    /// on first use. Called when a limited session starts, not per chunk. A session of an
    /// older generation (its email gone, the session closing) gets a state of its own.
    pub fn of_slot(slot: u32, generation: u32) -> Arc<UserLimits> {
        type Table = RwLock<HashMap<u32, (u32, Arc<UserLimits>)>>;
        static TABLE: OnceLock<Table> = OnceLock::new();
        let table = TABLE.get_or_init(Default::default);
        if let Some((g, limits)) = table.read().unwrap_or_else(|e| e.into_inner()).get(&slot) {
            if *g == generation {
                return limits.clone();
            }
        }
        let mut table = table.write().unwrap_or_else(|e| e.into_inner());
        let entry = table.entry(slot).or_insert_with(|| (generation, Arc::default()));
        // Generations only grow (wrapping): a newer one replaces the entry, an older one does not.
        if entry.0 != generation && (generation.wrapping_sub(entry.0) as i32) > 0 {
            *entry = (generation, Arc::default());
        }
        match entry.0 == generation {
            true => entry.1.clone(),
            false => Arc::default(),
        }
    }

    /// Takes a session under `max` live sessions; `false` (and nothing taken) at the limit.
    pub fn open_session(&self, max: u32) -> bool {
        self.sessions.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// Gives back a session `open_session` took.
    pub fn close_session(&self) {
        let _ = self.sessions.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }

    /// Live sessions taken with `open_session`.
    pub fn sessions(&self) -> u32 {
        self.sessions.load(Relaxed)
    }

    /// Takes a session from `ip` if the user has live sessions from fewer than `max` other
    /// addresses; `false` (and nothing taken) otherwise.
    pub fn open_ip(&self, ip: IpAddr, max: u32) -> bool {
        let ip = ip.to_canonical();
        let mut ips = self.ips.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = ips.iter_mut().find(|(a, _)| *a == ip) {
            *n += 1;
            return true;
        }
        if ips.len() >= max as usize {
            return false;
        }
        ips.push((ip, 1));
        true
    }

    /// Gives back a session `open_ip` took from `ip`.
    pub fn close_ip(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let mut ips = self.ips.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = ips.iter().position(|(a, _)| *a == ip) {
            ips[i].1 -= 1;
            if ips[i].1 == 0 {
                ips.swap_remove(i);
            }
        }
    }

    /// Whether a rate-limit notice for the user is due at `now` (by `now_ns`): the first time
    /// it is held back, then at most once per `every`, whichever shard asks.
    pub fn note_rate_limited(&self, now: u64, every: Duration) -> bool {
        due(&self.noted, now, every)
    }

    /// Whether a refusal notice (log line and event) for the user is due: a client retrying
    /// in a loop is counted every time but told of once per `every`.
    pub fn note_refused(&self, now: u64, every: Duration) -> bool {
        due(&self.refused_noted, now, every)
    }
}

/// Whether a notice last given at `last` (`now_ns` plus one; 0: never) is due again at `now`.
fn due(last: &AtomicU64, now: u64, every: Duration) -> bool {
    let was = last.load(Relaxed);
    if was != 0 && now.saturating_sub(was - 1) < every.as_nanos() as u64 {
        return false;
    }
    last.compare_exchange(was, now + 1, Relaxed, Relaxed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Sessions that read whenever the gate lets them move the rate in the long run, give or
    /// take the tolerance and a chunk each.
    #[test]
    fn gate_holds_the_rate_across_sessions() {
        let gate = RateGate::default();
        let rate = MIB;
        let (mut now, mut moved) = (1_000_000_000u64, 0u64);
        let end = now + 5_000_000_000;
        let mut next = [now; 4];
        while now < end {
            for t in next.iter_mut().filter(|t| **t <= now) {
                match gate.allowance(rate, now) {
                    Ok(n) => {
                        gate.charge(rate, n, now);
                        moved += n;
                    }
                    Err(due) => *t = due,
                }
            }
            now += 1_000_000;
        }
        let expected = 5 * rate;
        let slack = rate * TOLERANCE.as_millis() as u64 / 1000 + 4 * chunk(rate);
        assert!(moved >= expected - chunk(rate) && moved <= expected + slack, "moved {moved}, expected {expected}");
    }

    #[test]
    fn a_pause_earns_no_more_than_the_tolerance() {
        let gate = RateGate::default();
        gate.charge(MIB, MIB, 0);
        // Ten seconds idle: the next second's worth is not all allowed at once.
        let now = 10_000_000_000;
        assert!(gate.allowance(MIB, now).is_ok());
        assert!(gate.charge(MIB, MIB, now), "a second's worth at once is held back");
        assert!(gate.allowance(MIB, now).is_err());
    }

    #[test]
    fn sessions_and_addresses_are_counted_and_given_back() {
        let l = UserLimits::default();
        assert!(l.open_session(2) && l.open_session(2) && !l.open_session(2));
        l.close_session();
        assert!(l.open_session(2));
        assert_eq!(l.sessions(), 2);
        let (a, b) = (IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 2]));
        assert!(l.open_ip(a, 1) && l.open_ip(a, 1) && !l.open_ip(b, 1));
        // The mapped form of an address is the same address.
        assert!(l.open_ip(IpAddr::V6(std::net::Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped()), 1));
        for _ in 0..3 {
            l.close_ip(a);
        }
        assert!(l.open_ip(b, 1));
    }

    #[test]
    fn a_slot_shares_one_state_per_generation() {
        let a = UserLimits::of_slot(7, 1);
        assert!(Arc::ptr_eq(&a, &UserLimits::of_slot(7, 1)), "two lookups, two states");
        assert!(!Arc::ptr_eq(&a, &UserLimits::of_slot(8, 1)));
        // The slot went to another email: a fresh state, which an older session does not take.
        let b = UserLimits::of_slot(7, 2);
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&b, &UserLimits::of_slot(7, 1)));
        assert!(Arc::ptr_eq(&b, &UserLimits::of_slot(7, 2)));
    }

    #[test]
    fn rate_notices_are_rate_limited() {
        let l = UserLimits::default();
        let every = Duration::from_secs(60);
        assert!(l.note_rate_limited(0, every));
        assert!(!l.note_rate_limited(1_000_000_000, every));
        assert!(l.note_rate_limited(61_000_000_000, every));
    }
}
