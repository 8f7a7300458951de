//! An exact salt filter: a salt seen within the window is reported, and nothing else is (no
//! Bloom filter, no false positives).
//!
//! SIP022 §3.1.4 asks servers to keep every incoming salt for 60 seconds (the ±30 s timestamp
//! window). Two sets rotate: salts go into `current`; once `window` seconds have passed since it
//! was started, `current` becomes `previous` and the old `previous` is cleared and reused. A
//! salt is therefore kept at least `window` and at most `2 × window` seconds, and expiry costs
//! one `clear` per rotation instead of a scan per insert. Memory is bounded by `capacity` salts
//! per set; a full set refuses new salts (`Error::ReplayFilterFull`) rather than forget old ones.

use std::collections::HashSet;

use super::{Error, Salt};

/// How long SIP022 keeps salts, in seconds.
pub const WINDOW_SECS: u64 = 60;

/// A rotating, exact filter of session salts.
pub struct ReplayFilter {
    current: HashSet<Salt>,
    previous: HashSet<Salt>,
    started: u64,
    window: u64,
    capacity: usize,
}

impl ReplayFilter {
    /// A filter with the SIP022 window that holds at most `capacity` salts per rotation.
    pub fn new(capacity: usize) -> ReplayFilter {
        Self::with_window(capacity, WINDOW_SECS)
    }

    /// A filter with another window (seconds).
    pub fn with_window(capacity: usize, window: u64) -> ReplayFilter {
        ReplayFilter { current: HashSet::new(), previous: HashSet::new(), started: 0, window: window.max(1), capacity }
    }

    /// Records `salt` at time `now` (Unix seconds), or fails with `Replayed` if it was seen within
    /// the window, or `ReplayFilterFull` if there is no room.
    pub fn check_and_insert(&mut self, salt: &[u8], now: u64) -> Result<(), Error> {
        self.rotate(now);
        let salt = Salt::new(salt);
        if self.previous.contains(&salt) || self.current.contains(&salt) {
            return Err(Error::Replayed);
        }
        if self.current.len() >= self.capacity {
            return Err(Error::ReplayFilterFull);
        }
        self.current.insert(salt);
        Ok(())
    }

    /// How many salts are held.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Whether no salt is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn rotate(&mut self, now: u64) {
        if now < self.started + self.window {
            return;
        }
        if now >= self.started + 2 * self.window {
            // Both sets are older than the window.
            self.previous.clear();
            self.current.clear();
        } else {
            self.previous.clear();
            std::mem::swap(&mut self.previous, &mut self.current);
        }
        self.started = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_salts_for_the_window_then_forgets() {
        let mut f = ReplayFilter::new(1000);
        let t0 = 1_700_000_000;
        f.check_and_insert(&[1; 16], t0).unwrap();
        assert_eq!(f.check_and_insert(&[1; 16], t0), Err(Error::Replayed));
        // Still there through at least 60 s, whatever the rotation phase.
        for dt in [1, 30, 59, 60, 61, 119] {
            assert_eq!(f.check_and_insert(&[1; 16], t0 + dt), Err(Error::Replayed), "+{dt}");
        }
        f.check_and_insert(&[2; 16], t0 + 100).unwrap();
        // Salt 1 went in at t0 (rotation at t0), salt 2 at t0+100; by t0+240 both are gone.
        f.check_and_insert(&[1; 16], t0 + 240).unwrap();
        f.check_and_insert(&[2; 16], t0 + 240).unwrap();
        // Lengths matter: a 16-byte salt is not the 32-byte one padded with zeros.
        let mut long = [0u8; 32];
        long[..16].copy_from_slice(&[3; 16]);
        f.check_and_insert(&[3; 16], t0 + 240).unwrap();
        f.check_and_insert(&long, t0 + 240).unwrap();
    }

    #[test]
    fn any_salt_is_kept_at_least_a_window() {
        let mut f = ReplayFilter::new(100_000);
        let t0 = 10_000;
        for i in 0..300u64 {
            let salt = i.to_le_bytes();
            f.check_and_insert(&salt, t0 + i).unwrap();
            // Every salt inserted in the last 60 s is still refused.
            for back in 0..=60.min(i) {
                let old = (i - back).to_le_bytes();
                assert_eq!(f.check_and_insert(&old, t0 + i), Err(Error::Replayed), "i={i} back={back}");
            }
        }
        assert!(f.len() <= 2 * 60 + 2);
    }

    #[test]
    fn full_filter_refuses_instead_of_forgetting() {
        let mut f = ReplayFilter::new(2);
        f.check_and_insert(&[1; 16], 5).unwrap();
        f.check_and_insert(&[2; 16], 5).unwrap();
        assert_eq!(f.check_and_insert(&[3; 16], 5), Err(Error::ReplayFilterFull));
        assert_eq!(f.check_and_insert(&[1; 16], 5), Err(Error::Replayed));
        f.check_and_insert(&[3; 16], 5 + 60).unwrap();
        assert_eq!(f.check_and_insert(&[1; 16], 5 + 60), Err(Error::Replayed));
    }
}
