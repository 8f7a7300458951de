//! The replay filter for auth IDs: exact (a hash set, so no false positives), keyed by the
//! timestamp inside the auth ID so that an entry lives exactly as long as its auth ID could still
//! pass the clock check, and so that old entries go by whole sets, never by a scan per insert.
//!
//! An auth ID stamped `ts` passes the clock check only while `now` is within `ts ± W`
//! (W = [`MAX_CLOCK_SKEW`]). Timestamps fall into generations of W seconds; at any `now` the
//! acceptable timestamps span at most three consecutive generations, so three sets in a ring
//! (slot = generation mod 3) hold everything that still matters. A set is emptied when a newer
//! generation claims its slot; by then every auth ID in it fails the clock check anyway. Memory is
//! the number of handshakes whose timestamps fall within 3W, that is rate × 3W.
//!
//! Xray's filter (common/antireplay/mapfilter.go) instead rotates two sets every W seconds of
//! arrival time, so an entry is kept between W and 2W; an auth ID first seen at `ts - W` can then
//! be forgotten before `ts + W`. Keying by the auth ID's own timestamp closes that gap.

use std::collections::HashSet;

use super::auth_id::MAX_CLOCK_SKEW;
use super::VmessError;

/// Remembers the auth IDs accepted recently; see the module docs.
#[derive(Debug, Default)]
pub struct ReplayFilter {
    slots: [Slot; 3],
}

#[derive(Debug, Default)]
struct Slot {
    generation: u64,
    ids: HashSet<[u8; 16]>,
}

impl ReplayFilter {
    /// An empty filter.
    pub fn new() -> ReplayFilter {
        ReplayFilter::default()
    }

    /// Records `auth_id`, whose decrypted timestamp is `timestamp`, at server time `now`.
    ///
    /// Fails with `BadTimestamp` if the timestamp is outside the window (nothing is recorded) and
    /// with `Replayed` if this auth ID was recorded before and could still be accepted.
    pub fn insert(&mut self, auth_id: &[u8; 16], timestamp: u64, now: u64) -> Result<(), VmessError> {
        super::auth_id::check_timestamp(timestamp, now)?;
        let generation = timestamp / MAX_CLOCK_SKEW;
        let slot = &mut self.slots[(generation % 3) as usize];
        if slot.generation < generation {
            // Everything in this slot is at least three generations old: past the window.
            slot.ids.clear();
            slot.generation = generation;
        }
        // (A slot newer than `generation` means the clock went back by more than the window;
        // the entries stay and this one joins them.)
        if !slot.ids.insert(*auth_id) {
            return Err(VmessError::Replayed);
        }
        Ok(())
    }

    /// How many auth IDs are held.
    pub fn len(&self) -> usize {
        self.slots.iter().map(|s| s.ids.len()).sum()
    }

    /// Whether no auth ID is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_a_replay_anywhere_in_the_window() {
        let ts = 1_000_000;
        for first in [ts - 120, ts, ts + 120] {
            for again in [ts - 120, ts - 1, ts, ts + 60, ts + 120] {
                let mut f = ReplayFilter::new();
                f.insert(&[7; 16], ts, first).unwrap();
                // Other traffic in between, across every generation of the window.
                for (i, now) in (first.min(again)..=first.max(again)).enumerate() {
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    f.insert(&id, now, now).unwrap();
                }
                assert_eq!(f.insert(&[7; 16], ts, again), Err(VmessError::Replayed), "{first} {again}");
            }
        }
    }

    #[test]
    fn forgets_what_can_no_longer_pass_the_clock() {
        let mut f = ReplayFilter::new();
        for now in 0..2000u64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&now.to_be_bytes());
            f.insert(&id, now, now).unwrap();
            // One per second over three generations at most.
            assert!(f.len() <= 3 * MAX_CLOCK_SKEW as usize, "{now}: {}", f.len());
        }
        assert_eq!(f.insert(&[1; 16], 0, 2000), Err(VmessError::BadTimestamp(0)));
    }

    #[test]
    fn only_the_same_auth_id_is_a_replay() {
        let mut f = ReplayFilter::new();
        f.insert(&[3; 16], 500, 500).unwrap();
        assert_eq!(f.insert(&[3; 16], 500, 510), Err(VmessError::Replayed));
        assert!(f.insert(&[4; 16], 500, 510).is_ok());
    }
}
