//! Compact user storage for the registry: one inbound's users (`InboundUserTable`) and the
//! counter slots shared by all inbounds (`SlotBook`).
//!
//! Both keep dense vectors of small records and index them with `hashbrown::HashTable<u32>`
//! (four bytes a bucket), so a million users cost tens of megabytes rather than hundreds. An
//! email is one `Arc<str>` shared by the inbound record, the slot and every shard.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use shardray_core::slots::NO_SLOT;
use shardray_core::spec::UserSpec;
use uuid::Uuid;

fn hash_id(id: &Uuid) -> u64 {
    FxBuildHasher.hash_one(id.as_bytes())
}

/// Emails compare without regard to ASCII case: hash them the same way.
fn hash_email(email: &str) -> u64 {
    let mut h = FxBuildHasher.build_hasher();
    for b in email.bytes() {
        h.write_u8(b.to_ascii_lowercase());
    }
    h.finish()
}

/// One user of one inbound.
#[derive(Debug, Clone)]
struct Rec {
    id: Uuid,
    email: Option<Arc<str>>,
    slot: u32,
    level: u32,
}

/// A user as `InboundUserTable` lends it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRef<'a> {
    /// The user's id.
    pub id: Uuid,
    /// The user's email (empty if none).
    pub email: &'a str,
    /// The user's shared email, if it has one.
    pub shared_email: Option<&'a Arc<str>>,
    /// The user's counter slot (`NO_SLOT` without an email).
    pub slot: u32,
    /// The user's level in this inbound.
    pub level: u32,
}

impl UserRef<'_> {
    /// The user as config names it.
    pub fn spec(&self) -> UserSpec {
        UserSpec { id: self.id, email: self.email.to_owned(), level: self.level }
    }
}

/// One inbound's users, by id and by email (any ASCII case).
#[derive(Debug, Clone, Default)]
pub struct InboundUserTable {
    recs: Vec<Rec>,
    free: Vec<u32>,
    by_id: HashTable<u32>,
    by_email: HashTable<u32>,
}

impl InboundUserTable {
    fn lend(&self, rec: u32) -> UserRef<'_> {
        let r = &self.recs[rec as usize];
        UserRef {
            id: r.id,
            email: r.email.as_deref().unwrap_or(""),
            shared_email: r.email.as_ref(),
            slot: r.slot,
            level: r.level,
        }
    }

    fn find_email(&self, email: &str) -> Option<u32> {
        let recs = &self.recs;
        self.by_email
            .find(hash_email(email), |&r| {
                recs[r as usize].email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(email))
            })
            .copied()
    }

    fn find_id(&self, id: &Uuid) -> Option<u32> {
        self.by_id.find(hash_id(id), |&r| self.recs[r as usize].id == *id).copied()
    }

    /// Users in the table.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table has no user.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether a user has this id.
    pub fn contains_id(&self, id: &Uuid) -> bool {
        self.find_id(id).is_some()
    }

    /// The user with this email (any ASCII case).
    pub fn by_email(&self, email: &str) -> Option<UserRef<'_>> {
        self.find_email(email).map(|r| self.lend(r))
    }

    /// Every user, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = UserRef<'_>> + '_ {
        self.by_id.iter().map(|&r| self.lend(r))
    }

    /// Every user as config names it, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = UserSpec> + '_ {
        self.iter().map(|u| u.spec())
    }

    /// Adds a user whose id and email are new to the table.
    pub fn insert(&mut self, id: Uuid, email: Option<Arc<str>>, slot: u32, level: u32) {
        let rec = Rec { id, email, slot, level };
        let i = match self.free.pop() {
            Some(i) => {
                self.recs[i as usize] = rec;
                i
            }
            None => {
                self.recs.push(rec);
                (self.recs.len() - 1) as u32
            }
        };
        let recs = &self.recs;
        self.by_id.insert_unique(hash_id(&id), i, |&r| hash_id(&recs[r as usize].id));
        if let Some(email) = &recs[i as usize].email {
            self.by_email.insert_unique(hash_email(email), i, |&r| {
                hash_email(recs[r as usize].email.as_deref().unwrap_or_default())
            });
        }
    }

    /// Removes the user with this email; returns its id and slot.
    pub fn remove_email(&mut self, email: &str) -> Option<(Uuid, u32)> {
        let rec = self.find_email(email)?;
        Some(self.remove_rec(rec))
    }

    /// Removes the user with this id; returns its id and slot.
    pub fn remove_id(&mut self, id: &Uuid) -> Option<(Uuid, u32)> {
        let rec = self.find_id(id)?;
        Some(self.remove_rec(rec))
    }

    fn remove_rec(&mut self, rec: u32) -> (Uuid, u32) {
        let recs = &self.recs;
        let r = &recs[rec as usize];
        if let Ok(e) = self.by_id.find_entry(hash_id(&r.id), |&x| x == rec) {
            e.remove();
        }
        if let Some(email) = &r.email {
            if let Ok(e) = self.by_email.find_entry(hash_email(email), |&x| x == rec) {
                e.remove();
            }
        }
        let r = &mut self.recs[rec as usize];
        let out = (r.id, r.slot);
        // Drop the email now: the slot may be freed and its memory should go with it.
        r.email = None;
        self.free.push(rec);
        if self.free.len() == self.recs.len() {
            *self = InboundUserTable::default();
        }
        out
    }

    /// Sets the level of the user with this email; returns its id and slot.
    pub fn set_level(&mut self, email: &str, level: u32) -> Option<(Uuid, u32)> {
        let rec = self.find_email(email)?;
        let r = &mut self.recs[rec as usize];
        r.level = level;
        Some((r.id, r.slot))
    }
}

/// One email's counter slot.
#[derive(Debug, Clone)]
struct SlotEntry {
    /// `None` while the slot is free.
    email: Option<Arc<str>>,
    /// The level counters follow: the user's level in the first inbound (config order) that
    /// lists the email.
    level: u32,
    /// That inbound's index.
    owner: u32,
    /// Inbounds that list the email.
    refs: u32,
}

/// The counter slots: one per email the registry knows, reused once free everywhere.
#[derive(Debug, Clone, Default)]
pub struct SlotBook {
    entries: Vec<SlotEntry>,
    /// Free slots every shard has forgotten: reusable now.
    free: Vec<u32>,
    /// Slots freed at an epoch some shard may not have applied yet.
    pending: VecDeque<(u64, u32)>,
    live: usize,
    /// What the API adds to each slot's shard totals (`[up, down]`): counts carried over from
    /// the last run, minus resets. Empty until the first is needed.
    offsets: Vec<[i64; 2]>,
}

/// A live slot, as `SlotBook::live` lends it.
#[derive(Debug, Clone, Copy)]
pub struct SlotView<'a> {
    /// The slot.
    pub slot: u32,
    /// Its email.
    pub email: &'a Arc<str>,
    /// The level its counters follow.
    pub level: u32,
}

impl SlotBook {
    /// Takes a slot for a new email listed by inbound `owner`; returns it.
    pub fn take(&mut self, email: Arc<str>, level: u32, owner: u32) -> u32 {
        let entry = SlotEntry { email: Some(email), level, owner, refs: 1 };
        self.live += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot as usize] = entry;
                slot
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        if let Some(o) = self.offsets.get_mut(slot as usize) {
            *o = [0, 0];
        }
        slot
    }

    /// Another inbound (`inbound`, at `level`) lists the slot's email.
    pub fn share(&mut self, slot: u32, inbound: u32, level: u32) {
        let e = &mut self.entries[slot as usize];
        e.refs += 1;
        if inbound < e.owner {
            (e.owner, e.level) = (inbound, level);
        }
    }

    /// An inbound no longer lists the slot's email; returns whether the slot is now free. A
    /// free slot is reused only after `reclaim(epoch)` (`None`: at once, no shard runs yet).
    /// `next_owner` finds the first inbound still listing the email, with its level.
    pub fn release(
        &mut self,
        slot: u32,
        inbound: u32,
        epoch: Option<u64>,
        next_owner: impl FnOnce() -> Option<(u32, u32)>,
    ) -> bool {
        let e = &mut self.entries[slot as usize];
        e.refs -= 1;
        if e.refs > 0 {
            if e.owner == inbound {
                if let Some((owner, level)) = next_owner() {
                    (e.owner, e.level) = (owner, level);
                }
            }
            return false;
        }
        e.email = None;
        self.live -= 1;
        match epoch {
            Some(epoch) => self.pending.push_back((epoch, slot)),
            None => self.free.push(slot),
        }
        true
    }

    /// Inbound `inbound` moved the slot's email to `level`.
    pub fn set_level(&mut self, slot: u32, inbound: u32, level: u32) {
        let e = &mut self.entries[slot as usize];
        if e.owner == inbound {
            e.level = level;
        }
    }

    /// Every shard has applied `epoch`: slots freed up to it may be reused.
    pub fn reclaim(&mut self, epoch: u64) {
        while self.pending.front().is_some_and(|(e, _)| *e <= epoch) {
            let (_, slot) = self.pending.pop_front().expect("just checked");
            self.free.push(slot);
        }
    }

    /// Live slots.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no slot is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// One past the highest slot ever used.
    pub fn span(&self) -> usize {
        self.entries.len()
    }

    /// A live slot.
    pub fn get(&self, slot: u32) -> Option<SlotView<'_>> {
        let e = self.entries.get(slot as usize)?;
        Some(SlotView { slot, email: e.email.as_ref()?, level: e.level })
    }

    /// Every live slot, in slot order.
    pub fn live(&self) -> impl Iterator<Item = SlotView<'_>> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some(SlotView { slot: i as u32, email: e.email.as_ref()?, level: e.level }))
    }

    /// The slot's offset (`[up, down]`).
    pub fn offset(&self, slot: u32) -> [i64; 2] {
        self.offsets.get(slot as usize).copied().unwrap_or_default()
    }

    /// Sets the slot's offset.
    pub fn set_offset(&mut self, slot: u32, offset: [i64; 2]) {
        if slot == NO_SLOT {
            return;
        }
        let i = slot as usize;
        if i >= self.offsets.len() {
            if offset == [0, 0] {
                return;
            }
            self.offsets.resize(self.entries.len().max(i + 1), [0, 0]);
        }
        self.offsets[i] = offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_slot_waits_for_every_shard() {
        let mut b = SlotBook::default();
        let a = b.take("a@x".into(), 0, 0);
        let c = b.take("c@x".into(), 0, 0);
        b.set_offset(a, [5, 6]);
        assert!(b.release(a, 0, Some(7), || None));
        // Not reusable until epoch 7 is applied everywhere.
        assert_eq!(b.take("d@x".into(), 0, 0), 2);
        b.reclaim(6);
        assert_eq!(b.take("e@x".into(), 0, 0), 3);
        b.reclaim(7);
        assert_eq!(b.take("f@x".into(), 0, 0), a);
        // Reused: no offset of the last owner.
        assert_eq!(b.offset(a), [0, 0]);
        assert_eq!(b.len(), 4);
        assert_eq!(b.get(c).map(|v| &**v.email), Some("c@x"));
        let emails: Vec<&str> = b.live().map(|v| &**v.email).collect();
        assert_eq!(emails, ["f@x", "c@x", "d@x", "e@x"]);
    }

    #[test]
    fn a_shared_slot_follows_its_first_inbound() {
        let mut b = SlotBook::default();
        let s = b.take("a@x".into(), 5, 1);
        b.share(s, 0, 3);
        assert_eq!(b.get(s).unwrap().level, 3);
        b.set_level(s, 1, 9);
        assert_eq!(b.get(s).unwrap().level, 3);
        assert!(!b.release(s, 0, None, || Some((1, 9))));
        assert_eq!(b.get(s).unwrap().level, 9);
        assert!(b.release(s, 1, None, || None));
        assert!(b.get(s).is_none() && b.is_empty());
    }

    #[test]
    fn the_table_finds_users_by_id_and_any_case_email() {
        let mut t = InboundUserTable::default();
        let id = |i: u128| Uuid::from_u128(i * 0x1234_5678_9abc_def1);
        for i in 0..1000 {
            t.insert(id(i), Some(format!("U{i}@x").into()), i as u32, 0);
        }
        t.insert(id(5000), None, NO_SLOT, 2);
        assert_eq!(t.len(), 1001);
        assert_eq!(t.by_email("u7@X").map(|u| (u.id, u.slot)), Some((id(7), 7)));
        assert_eq!(t.remove_email("U7@x"), Some((id(7), 7)));
        assert!(t.by_email("u7@x").is_none() && !t.contains_id(&id(7)));
        assert_eq!(t.set_level("u8@x", 4), Some((id(8), 8)));
        assert_eq!(t.by_email("U8@X").unwrap().level, 4);
        t.insert(id(7), Some("new@x".into()), 1000, 1);
        assert_eq!(t.by_email("NEW@x").unwrap().spec(), UserSpec { id: id(7), email: "new@x".into(), level: 1 });
        assert_eq!(t.remove_id(&id(5000)), Some((id(5000), NO_SLOT)));
        assert_eq!(t.values().count(), 1000);
    }
}
