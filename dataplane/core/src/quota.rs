//! Quotas and expiry: what a user may use (`QuotaSpec`) and the cell that counts it
//! (`QuotaCell`), shared by the control thread and every shard.
//!
//! Only users with a quota or an expiry have a cell: a session of any other user holds no
//! cell and pays nothing. A session of a user that has one adds each chunk it moves to the
//! cell's atomics (relaxed: no ordering is needed, only the sum), so the user's use across
//! every core is known at once and each session stops itself within one buffer of the quota.
//! The control thread reads the cells to suspend and resume users on every shard.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A user's quota and expiry as config or the API set them; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct QuotaSpec {
    /// Bytes the user may move, uplink plus downlink; 0 for no quota.
    pub bytes: u64,
    /// Unix seconds after which the user is suspended; 0 for no expiry.
    pub expiry: u64,
}

impl QuotaSpec {
    /// Whether the spec limits anything.
    pub fn is_set(&self) -> bool {
        self.bytes != 0 || self.expiry != 0
    }
}

/// Why a user is suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SuspendReason {
    /// Its use reached its quota.
    Quota,
    /// Its expiry passed.
    Expiry,
}

impl SuspendReason {
    /// The name events and listings use.
    pub fn name(self) -> &'static str {
        match self {
            SuspendReason::Quota => "quota",
            SuspendReason::Expiry => "expiry",
        }
    }

    /// The reason a name gives (`quota`, `expiry`).
    pub fn parse(name: &str) -> Option<SuspendReason> {
        match name {
            "quota" => Some(SuspendReason::Quota),
            "expiry" => Some(SuspendReason::Expiry),
            _ => None,
        }
    }
}

/// One user's quota, expiry and use, shared by the control thread and every shard.
#[derive(Debug, Default)]
pub struct QuotaCell {
    bytes: AtomicU64,
    expiry: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
}

/// Two cells are the same cell (a user operation names one, it does not copy it).
impl PartialEq for QuotaCell {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for QuotaCell {}

impl QuotaCell {
    /// A cell with `spec` and nothing used.
    pub fn new(spec: QuotaSpec) -> QuotaCell {
        let cell = QuotaCell::default();
        cell.set(spec);
        cell
    }

    /// The quota and expiry now.
    pub fn spec(&self) -> QuotaSpec {
        QuotaSpec { bytes: self.bytes.load(Relaxed), expiry: self.expiry.load(Relaxed) }
    }

    /// Sets the quota and expiry; the use stays.
    pub fn set(&self, spec: QuotaSpec) {
        self.bytes.store(spec.bytes, Relaxed);
        self.expiry.store(spec.expiry, Relaxed);
    }

    /// Bytes used toward the quota, `[up, down]`.
    pub fn used(&self) -> [u64; 2] {
        [self.up.load(Relaxed), self.down.load(Relaxed)]
    }

    /// Sets the use (restored from the state directory).
    pub fn set_used(&self, [up, down]: [u64; 2]) {
        self.up.store(up, Relaxed);
        self.down.store(down, Relaxed);
    }

    /// Forgets the uplink (`dir` 0) or downlink (1) use: the user's counter was reset.
    pub fn reset(&self, dir: usize) {
        [&self.up, &self.down][dir.min(1)].store(0, Relaxed);
    }

    /// Adds `n` uplink bytes; `false` once the use has reached the quota.
    #[inline]
    pub fn charge_up(&self, n: u64) -> bool {
        let up = self.up.fetch_add(n, Relaxed) + n;
        self.within(up.saturating_add(self.down.load(Relaxed)))
    }

    /// Adds `n` downlink bytes; `false` once the use has reached the quota.
    #[inline]
    pub fn charge_down(&self, n: u64) -> bool {
        let down = self.down.fetch_add(n, Relaxed) + n;
        self.within(down.saturating_add(self.up.load(Relaxed)))
    }

    #[inline]
    fn within(&self, used: u64) -> bool {
        let quota = self.bytes.load(Relaxed);
        quota == 0 || used < quota
    }

    /// Bytes left before the quota (`u64::MAX` without one).
    #[inline]
    pub fn remaining(&self) -> u64 {
        match self.bytes.load(Relaxed) {
            0 => u64::MAX,
            quota => quota.saturating_sub(self.up.load(Relaxed).saturating_add(self.down.load(Relaxed))),
        }
    }

    /// Why the user must be suspended at `now` (unix seconds), if it must.
    pub fn breach(&self, now: u64) -> Option<SuspendReason> {
        let spec = self.spec();
        if spec.bytes != 0 && self.remaining() == 0 {
            return Some(SuspendReason::Quota);
        }
        if spec.expiry != 0 && now >= spec.expiry {
            return Some(SuspendReason::Expiry);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_until_the_quota_and_resets_per_direction() {
        let cell = QuotaCell::new(QuotaSpec { bytes: 100, expiry: 0 });
        assert!(cell.charge_up(40));
        assert!(cell.charge_down(59));
        assert_eq!(cell.remaining(), 1);
        assert_eq!(cell.breach(0), None);
        assert!(!cell.charge_down(1), "the byte that reaches the quota ends the session");
        assert_eq!(cell.breach(0), Some(SuspendReason::Quota));
        cell.reset(1);
        assert_eq!((cell.used(), cell.breach(0)), ([40, 0], None));
        cell.set(QuotaSpec { bytes: 0, expiry: 50 });
        assert!(cell.charge_up(1 << 40), "no byte quota");
        assert_eq!((cell.breach(49), cell.breach(50)), (None, Some(SuspendReason::Expiry)));
    }
}
