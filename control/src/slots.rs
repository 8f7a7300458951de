//! Compact user storage for the registry: one inbound's users (`InboundUserTable`) and the
//! counter slots shared by all inbounds (`SlotBook`).
//!
//! Both keep dense vectors of small records and index them with `hashbrown::HashTable<u32>`
//! (four bytes a bucket), so a million users cost tens of megabytes rather than hundreds. An
//! email is one `Arc<str>` shared by the inbound record and every shard; a slot names its
//! email through the record of the first inbound that lists it.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Instant;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use shardray_core::quota::{QuotaCell, QuotaSpec, SuspendReason};
use shardray_core::slots::NO_SLOT;
use shardray_core::spec::{Account, UserSpec};

fn hash_id(account: &Account) -> u64 {
    FxBuildHasher.hash_one(account)
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
    account: Account,
    email: Option<Arc<str>>,
    slot: u32,
    level: u32,
}

/// A user as `InboundUserTable` lends it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRef<'a> {
    /// The user's account (VLESS id, Trojan password).
    pub account: &'a Account,
    /// The user's email (empty if none).
    pub email: &'a str,
    /// The user's shared email, if it has one.
    pub shared_email: Option<&'a Arc<str>>,
    /// The user's counter slot (`NO_SLOT` without an email).
    pub slot: u32,
    /// The user's level in this inbound.
    pub level: u32,
    /// The user's record number in its table (stable while the user is there).
    pub rec: u32,
}

impl UserRef<'_> {
    /// The user as config names it.
    pub fn spec(&self) -> UserSpec {
        UserSpec {
            account: self.account.clone(),
            email: self.email.to_owned(),
            level: self.level,
            quota: Default::default(),
        }
    }
}

/// One inbound's users, by account and by email (any ASCII case).
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
            account: &r.account,
            email: r.email.as_deref().unwrap_or(""),
            shared_email: r.email.as_ref(),
            slot: r.slot,
            level: r.level,
            rec,
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

    fn find_id(&self, account: &Account) -> Option<u32> {
        self.by_id.find(hash_id(account), |&r| self.recs[r as usize].account == *account).copied()
    }

    /// Users in the table.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table has no user.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether a user has this account.
    pub fn contains_id(&self, account: &Account) -> bool {
        self.find_id(account).is_some()
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

    /// Adds a user whose account and email are new to the table; returns its record number.
    pub fn insert(&mut self, account: Account, email: Option<Arc<str>>, slot: u32, level: u32) -> u32 {
        let hash = hash_id(&account);
        let rec = Rec { account, email, slot, level };
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
        self.by_id.insert_unique(hash, i, |&r| hash_id(&recs[r as usize].account));
        if let Some(email) = &recs[i as usize].email {
            self.by_email.insert_unique(hash_email(email), i, |&r| {
                hash_email(recs[r as usize].email.as_deref().unwrap_or_default())
            });
        }
        i
    }

    /// The email of record `rec`.
    pub fn rec_email(&self, rec: u32) -> Option<&Arc<str>> {
        self.recs.get(rec as usize)?.email.as_ref()
    }

    /// Removes the user with this email; returns its account, slot and email.
    pub fn remove_email(&mut self, email: &str) -> Option<(Account, u32, Option<Arc<str>>)> {
        let rec = self.find_email(email)?;
        Some(self.remove_rec(rec))
    }

    /// Removes the user with this account; returns its account, slot and email.
    pub fn remove_id(&mut self, account: &Account) -> Option<(Account, u32, Option<Arc<str>>)> {
        let rec = self.find_id(account)?;
        Some(self.remove_rec(rec))
    }

    fn remove_rec(&mut self, rec: u32) -> (Account, u32, Option<Arc<str>>) {
        let recs = &self.recs;
        let r = &recs[rec as usize];
        if let Ok(e) = self.by_id.find_entry(hash_id(&r.account), |&x| x == rec) {
            e.remove();
        }
        if let Some(email) = &r.email {
            if let Ok(e) = self.by_email.find_entry(hash_email(email), |&x| x == rec) {
                e.remove();
            }
        }
        let r = &mut self.recs[rec as usize];
        // The email leaves with the record: the slot may be freed and its memory go with it.
        let out = (r.account.clone(), r.slot, r.email.take());
        self.free.push(rec);
        if self.free.len() == self.recs.len() {
            *self = InboundUserTable::default();
        }
        out
    }

    /// Sets the level of the user with this email; returns its account and slot.
    pub fn set_level(&mut self, email: &str, level: u32) -> Option<(Account, u32)> {
        let rec = self.find_email(email)?;
        let r = &mut self.recs[rec as usize];
        r.level = level;
        Some((r.account.clone(), r.slot))
    }
}

/// One email's counter slot: 16 bytes, no pointer.
#[derive(Debug, Clone)]
struct SlotEntry {
    /// The level counters follow: the user's level in the first inbound (config order) that
    /// lists the email.
    level: u32,
    /// That inbound's index.
    owner: u32,
    /// The user's record in that inbound's table, which holds the email.
    rec: u32,
    /// Inbounds that list the email; 0 while the slot is free.
    refs: u32,
}

/// The counter slots: one per email the registry knows, reused once free everywhere.
#[derive(Debug, Clone, Default)]
pub struct SlotBook {
    entries: Vec<SlotEntry>,
    /// Free slots every shard has forgotten: reusable now.
    free: Vec<u32>,
    /// Slots freed at an epoch some shard may not have applied yet, and held until an instant
    /// (a removed user's, which an add within its grace takes back: see `revive`).
    pending: VecDeque<(u64, u32, Option<Instant>)>,
    /// Held slots given back before their hold ended, by slot and hold: not to be freed.
    revived: std::collections::HashSet<(u32, Instant)>,
    live: usize,
    /// What the API adds to each slot's shard totals (`[up, down]`): counts carried over from
    /// the last run, minus resets. Empty until the first is needed.
    offsets: Vec<[i64; 2]>,
    /// The slots with a quota or an expiry (or a suspension not yet lifted), by slot.
    quotas: BTreeMap<u32, SlotQuota>,
}

/// A slot's quota cell and whether its user is suspended.
#[derive(Debug, Clone)]
pub struct SlotQuota {
    /// The cell the shards count into.
    pub cell: Arc<QuotaCell>,
    /// Why the user is suspended on the shards now, if it is.
    pub suspended: Option<SuspendReason>,
}

/// A live slot, as `Slots` lends it.
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
    /// Takes a slot for a new email listed by inbound `owner`; `place` then says where the
    /// owner's record is.
    pub fn take(&mut self, level: u32, owner: u32) -> u32 {
        let entry = SlotEntry { level, owner, rec: u32::MAX, refs: 1 };
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
        self.quotas.remove(&slot);
        slot
    }

    /// The slot's quota, if it has one.
    pub fn quota(&self, slot: u32) -> Option<&SlotQuota> {
        self.quotas.get(&slot)
    }

    /// Every slot with a quota, in slot order.
    pub fn quotas(&self) -> impl Iterator<Item = (u32, &SlotQuota)> + '_ {
        self.quotas.iter().map(|(s, q)| (*s, q))
    }

    /// Sets the slot's quota and expiry, keeping its use; returns the cell the shards are to
    /// count into (`None` once neither is set). A suspended user's entry stays until it is
    /// resumed, so that the resume is not lost.
    pub fn set_quota(&mut self, slot: u32, spec: QuotaSpec) -> Option<Arc<QuotaCell>> {
        if slot == NO_SLOT {
            return None;
        }
        match self.quotas.get_mut(&slot) {
            Some(q) => {
                q.cell.set(spec);
                if !spec.is_set() && q.suspended.is_none() {
                    self.quotas.remove(&slot);
                }
            }
            None if spec.is_set() => {
                self.quotas.insert(slot, SlotQuota { cell: Arc::new(QuotaCell::new(spec)), suspended: None });
            }
            None => {}
        }
        self.quotas.get(&slot).filter(|q| q.cell.spec().is_set()).map(|q| q.cell.clone())
    }

    /// Records whether the slot's user is suspended, and why.
    pub fn set_suspended(&mut self, slot: u32, reason: Option<SuspendReason>) {
        if let Some(q) = self.quotas.get_mut(&slot) {
            q.suspended = reason;
            if reason.is_none() && !q.cell.spec().is_set() {
                self.quotas.remove(&slot);
            }
        }
    }

    /// The user's counter `dir` (0 up, 1 down) was reset: its use toward the quota starts over.
    pub fn reset_quota_use(&mut self, slot: u32, dir: usize) {
        if let Some(q) = self.quotas.get(&slot) {
            q.cell.reset(dir);
        }
    }

    /// Inbound `inbound` holds the slot's email in record `rec`.
    pub fn place(&mut self, slot: u32, inbound: u32, rec: u32) {
        let e = &mut self.entries[slot as usize];
        if e.owner == inbound {
            e.rec = rec;
        }
    }

    /// Another inbound (`inbound`, at `level`, in record `rec`) lists the slot's email.
    pub fn share(&mut self, slot: u32, inbound: u32, level: u32, rec: u32) {
        let e = &mut self.entries[slot as usize];
        e.refs += 1;
        if inbound < e.owner {
            (e.owner, e.level, e.rec) = (inbound, level, rec);
        }
    }

    /// An inbound no longer lists the slot's email; returns whether the slot is now free. A
    /// free slot is reused only after `reclaim(epoch)` (`None`: at once, no shard runs yet).
    /// `next_owner` finds the first inbound still listing the email: (inbound, level, record).
    pub fn release(
        &mut self,
        slot: u32,
        inbound: u32,
        epoch: Option<u64>,
        next_owner: impl FnOnce() -> Option<(u32, u32, u32)>,
    ) -> bool {
        let e = &mut self.entries[slot as usize];
        e.refs -= 1;
        if e.refs > 0 {
            if e.owner == inbound {
                if let Some((owner, level, rec)) = next_owner() {
                    (e.owner, e.level, e.rec) = (owner, level, rec);
                }
            }
            return false;
        }
        self.live -= 1;
        self.quotas.remove(&slot);
        match epoch {
            Some(epoch) => self.pending.push_back((epoch, slot, None)),
            None => self.free.push(slot),
        }
        true
    }

    /// Inbound `inbound` is gone (its users released first): owners after it move up one.
    pub fn inbound_removed(&mut self, inbound: u32) {
        for e in self.entries.iter_mut().filter(|e| e.refs > 0 && e.owner > inbound) {
            e.owner -= 1;
        }
    }

    /// Inbound `inbound` moved the slot's email to `level`.
    pub fn set_level(&mut self, slot: u32, inbound: u32, level: u32) {
        let e = &mut self.entries[slot as usize];
        if e.owner == inbound {
            e.level = level;
        }
    }

    /// Keeps the slot just freed (`release`) from reuse until `until`, so that `revive` may
    /// give it back to its email before then; `false` if it is not pending (freed at once).
    pub fn hold(&mut self, slot: u32, until: Instant) -> bool {
        match self.pending.back_mut().filter(|p| p.1 == slot) {
            Some(p) => {
                p.2 = Some(until);
                true
            }
            None => false,
        }
    }

    /// Gives a slot held until `until` (`hold`), before then, back to its email, now listed by
    /// inbound `owner` at `level`, with its counters and `quota` (what `release` took) as they
    /// were. Its pending entry stays, skipped when its time comes.
    pub fn revive(&mut self, slot: u32, until: Instant, owner: u32, level: u32, quota: Option<SlotQuota>) {
        self.revived.insert((slot, until));
        self.entries[slot as usize] = SlotEntry { level, owner, rec: u32::MAX, refs: 1 };
        self.live += 1;
        if let Some(quota) = quota {
            self.quotas.insert(slot, quota);
        }
    }

    /// Every shard has applied `epoch`: slots freed up to it may be reused.
    pub fn reclaim(&mut self, epoch: u64) {
        let now = Instant::now();
        while self.pending.front().is_some_and(|(e, _, held)| *e <= epoch && held.is_none_or(|h| h <= now)) {
            let (_, slot, held) = self.pending.pop_front().expect("just checked");
            if !held.is_some_and(|h| self.revived.remove(&(slot, h))) {
                self.free.push(slot);
            }
        }
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

/// The slots with their emails: the book and the inbounds' tables (config order) it points
/// into.
pub struct Slots<'a> {
    book: &'a SlotBook,
    tables: Vec<&'a InboundUserTable>,
}

impl<'a> Slots<'a> {
    /// The slots of `book`, whose owners are `tables`.
    pub fn new(book: &'a SlotBook, tables: Vec<&'a InboundUserTable>) -> Slots<'a> {
        Slots { book, tables }
    }

    fn view(&self, slot: u32, e: &SlotEntry) -> Option<SlotView<'a>> {
        if e.refs == 0 {
            return None;
        }
        let email = self.tables.get(e.owner as usize)?.rec_email(e.rec)?;
        Some(SlotView { slot, email, level: e.level })
    }

    /// A live slot.
    pub fn get(&self, slot: u32) -> Option<SlotView<'a>> {
        self.view(slot, self.book.entries.get(slot as usize)?)
    }

    /// Every live slot, in slot order.
    pub fn live(&self) -> impl Iterator<Item = SlotView<'a>> + '_ {
        self.book.entries.iter().enumerate().filter_map(|(i, e)| self.view(i as u32, e))
    }

    /// The live slots in `range`, in slot order.
    pub fn live_in(&self, range: std::ops::Range<u32>) -> impl Iterator<Item = SlotView<'a>> + '_ {
        let end = (range.end as usize).min(self.book.entries.len());
        let start = (range.start as usize).min(end);
        self.book.entries[start..end].iter().zip(range.start..).filter_map(|(e, i)| self.view(i, e))
    }

    /// Every live slot, in slot order, owning the lookup.
    pub fn into_live(self) -> impl Iterator<Item = SlotView<'a>> + 'a {
        (0..self.book.entries.len() as u32).filter_map(move |slot| self.get(slot))
    }

    /// The book itself (offsets).
    pub fn book(&self) -> &'a SlotBook {
        self.book
    }

    /// Live slots.
    pub fn len(&self) -> usize {
        self.book.live
    }

    /// Whether no slot is live.
    pub fn is_empty(&self) -> bool {
        self.book.live == 0
    }

    /// One past the highest slot ever used.
    pub fn span(&self) -> usize {
        self.book.entries.len()
    }

    /// The slot's offset (`[up, down]`).
    pub fn offset(&self, slot: u32) -> [i64; 2] {
        self.book.offset(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn acct(n: u128) -> Account {
        Account::Vless(Uuid::from_u128(n), Default::default())
    }

    /// Takes a slot for `email` in inbound 0 of `t`.
    fn take(b: &mut SlotBook, t: &mut InboundUserTable, n: u128, email: &str) -> u32 {
        let slot = b.take(0, 0);
        let rec = t.insert(acct(n), Some(email.into()), slot, 0);
        b.place(slot, 0, rec);
        slot
    }

    #[test]
    fn a_freed_slot_waits_for_every_shard() {
        let (mut b, mut t) = (SlotBook::default(), InboundUserTable::default());
        let a = take(&mut b, &mut t, 1, "a@x");
        let c = take(&mut b, &mut t, 2, "c@x");
        b.set_offset(a, [5, 6]);
        t.remove_email("a@x");
        assert!(b.release(a, 0, Some(7), || None));
        // Not reusable until epoch 7 is applied everywhere.
        assert_eq!(take(&mut b, &mut t, 3, "d@x"), 2);
        b.reclaim(6);
        assert_eq!(take(&mut b, &mut t, 4, "e@x"), 3);
        b.reclaim(7);
        assert_eq!(take(&mut b, &mut t, 5, "f@x"), a);
        // Reused: no offset of the last owner.
        assert_eq!(b.offset(a), [0, 0]);
        let slots = Slots::new(&b, vec![&t]);
        assert_eq!(slots.len(), 4);
        assert_eq!(slots.get(c).map(|v| &**v.email), Some("c@x"));
        let emails: Vec<&str> = slots.live().map(|v| &**v.email).collect();
        assert_eq!(emails, ["f@x", "c@x", "d@x", "e@x"]);
    }

    #[test]
    fn a_shared_slot_follows_its_first_inbound() {
        let mut b = SlotBook::default();
        let (mut t0, mut t1) = (InboundUserTable::default(), InboundUserTable::default());
        let s = b.take(5, 1);
        let r1 = t1.insert(acct(1), Some("a@x".into()), s, 5);
        b.place(s, 1, r1);
        let r0 = t0.insert(acct(2), Some("a@x".into()), s, 3);
        b.share(s, 0, 3, r0);
        let level = |b: &SlotBook, t0: &InboundUserTable, t1: &InboundUserTable| {
            Slots::new(b, vec![t0, t1]).get(s).map(|v| v.level)
        };
        assert_eq!(level(&b, &t0, &t1), Some(3));
        b.set_level(s, 1, 9);
        assert_eq!(level(&b, &t0, &t1), Some(3));
        t0.remove_email("a@x");
        assert!(!b.release(s, 0, None, || Some((1, 9, r1))));
        assert_eq!(level(&b, &t0, &t1), Some(9));
        t1.remove_email("a@x");
        assert!(b.release(s, 1, None, || None));
        assert_eq!(level(&b, &t0, &t1), None);
        assert!(Slots::new(&b, vec![&t0, &t1]).is_empty());
    }

    #[test]
    fn the_table_finds_users_by_id_and_any_case_email() {
        let mut t = InboundUserTable::default();
        let id = |i: u128| acct(i * 0x1234_5678_9abc_def1);
        for i in 0..1000 {
            t.insert(id(i), Some(format!("U{i}@x").into()), i as u32, 0);
        }
        t.insert(id(5000), None, NO_SLOT, 2);
        assert_eq!(t.len(), 1001);
        assert_eq!(t.by_email("u7@X").map(|u| (u.account.clone(), u.slot)), Some((id(7), 7)));
        assert_eq!(t.remove_email("U7@x"), Some((id(7), 7, Some("U7@x".into()))));
        assert!(t.by_email("u7@x").is_none() && !t.contains_id(&id(7)));
        assert_eq!(t.set_level("u8@x", 4), Some((id(8), 8)));
        assert_eq!(t.by_email("U8@X").unwrap().level, 4);
        t.insert(id(7), Some("new@x".into()), 1000, 1);
        assert_eq!(
            t.by_email("NEW@x").unwrap().spec(),
            UserSpec { account: id(7), email: "new@x".into(), level: 1, quota: Default::default() }
        );
        assert_eq!(t.remove_id(&id(5000)), Some((id(5000), NO_SLOT, None)));
        assert_eq!(t.values().count(), 1000);
        // A Trojan password is an account like an id; the same password is the same account.
        let trojan = || Account::Trojan("hunter2".into());
        t.insert(trojan(), Some("t@x".into()), 2000, 0);
        assert!(t.contains_id(&trojan()) && !t.contains_id(&Account::Trojan("hunter3".into())));
        assert_eq!(t.by_email("t@x").map(|u| u.account.clone()), Some(trojan()));
    }
}
