//! An inbound's users as a shard holds them, and the watch that closes a user's live sessions
//! when the user is removed or kicked.
//!
//! A table is a dense vector of small records (id, counter slot, level, generation: 28 bytes)
//! with an index by id that holds only record numbers: about 40 bytes a user. The email lives
//! once per shard, in the slot counters, and the record holds no pointer. A session keeps a
//! `UserHandle` (record number and generation) and looks at the record when woken.

use std::cell::{Cell, RefCell};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::task::Waker;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use shardray_core::slots::UserKey;
use shardray_core::stats::SlotCounters;
use slab::Slab;
use uuid::Uuid;

/// A user as one shard's inbound knows it.
#[derive(Debug, Clone, Copy)]
struct UserRec {
    id: Uuid,
    slot: u32,
    level: u32,
    /// Bumped when the user's live sessions must close (removed or kicked) and when the record
    /// goes to another user: a handle with an older generation is stale. Records are never
    /// dropped, so a record's generation only grows.
    generation: u32,
}

/// What a session keeps of its user.
#[derive(Debug, Clone)]
pub(crate) struct UserHandle {
    rec: u32,
    generation: u32,
    /// The user's counter slot (`NO_SLOT` without an email).
    pub(crate) slot: u32,
    /// The user's level when the session started.
    pub(crate) level: u32,
    /// The slot's generation when the session started (see `SlotCounters`).
    pub(crate) slot_generation: u32,
    /// The user's email; `None` without one.
    pub(crate) email: Option<Arc<str>>,
}

impl UserHandle {
    /// Fills in what the slot counters know: the email and the slot's generation.
    pub(crate) fn bind(mut self, slots: &SlotCounters) -> UserHandle {
        self.email = slots.email(self.slot).cloned();
        self.slot_generation = slots.generation(self.slot);
        self
    }
}

/// One inbound's users, by id: what a VLESS handshake looks its user up in.
#[derive(Default)]
pub struct UserTable {
    recs: Vec<UserRec>,
    index: HashTable<u32>,
    free: Vec<u32>,
}

fn hash_id(id: &Uuid) -> u64 {
    FxBuildHasher.hash_one(id.as_bytes())
}

impl UserTable {
    fn find(&self, id: &Uuid) -> Option<u32> {
        self.index.find(hash_id(id), |&r| self.recs[r as usize].id == *id).copied()
    }

    /// The user with this id, for a new session (`email` and `slot_generation` are the
    /// caller's to fill from the slot counters).
    pub(crate) fn get(&self, id: &Uuid) -> Option<UserHandle> {
        let rec = self.find(id)?;
        let r = &self.recs[rec as usize];
        Some(UserHandle {
            rec,
            generation: r.generation,
            slot: r.slot,
            level: r.level,
            slot_generation: 0,
            email: None,
        })
    }

    /// Whether a user has this id.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.find(id).is_some()
    }

    /// Users in the table.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.len()
    }

    /// Adds the user (or replaces the one with its id).
    pub fn insert(&mut self, user: &UserKey) {
        if let Some(rec) = self.find(&user.id) {
            let r = &mut self.recs[rec as usize];
            // A different user now: sessions of the old one close.
            r.generation = r.generation.wrapping_add(1);
            (r.slot, r.level) = (user.slot, user.level);
            return;
        }
        let fresh = UserRec { id: user.id, slot: user.slot, level: user.level, generation: 0 };
        let rec = match self.free.pop() {
            Some(rec) => {
                // Keep the generation running, so a handle to the record's last user stays stale.
                let generation = self.recs[rec as usize].generation.wrapping_add(1);
                self.recs[rec as usize] = UserRec { generation, ..fresh };
                rec
            }
            None => {
                self.recs.push(fresh);
                (self.recs.len() - 1) as u32
            }
        };
        let recs = &self.recs;
        self.index.insert_unique(hash_id(&user.id), rec, |&r| hash_id(&recs[r as usize].id));
    }

    /// Removes the user with this id; returns its watch key so its sessions can be woken.
    pub fn remove(&mut self, id: &Uuid) -> Option<u32> {
        let hash = hash_id(id);
        let recs = &self.recs;
        let entry = self.index.find_entry(hash, |&r| recs[r as usize].id == *id).ok()?;
        let (rec, _) = entry.remove();
        let r = &mut self.recs[rec as usize];
        r.generation = r.generation.wrapping_add(1);
        self.free.push(rec);
        Some(rec)
    }

    /// Closes the user's live sessions: they see a new generation when next polled.
    pub(crate) fn kick(&mut self, id: &Uuid) -> Option<u32> {
        let rec = self.find(id)?;
        let r = &mut self.recs[rec as usize];
        r.generation = r.generation.wrapping_add(1);
        Some(rec)
    }

    /// Moves the user to another level; live sessions pick it up when next polled.
    pub(crate) fn set_level(&mut self, id: &Uuid, level: u32) -> Option<u32> {
        let rec = self.find(id)?;
        self.recs[rec as usize].level = level;
        Some(rec)
    }

    /// What a session of `user` must do now.
    fn state(&self, user: &UserHandle) -> Result<u32, ()> {
        match self.recs.get(user.rec as usize) {
            Some(r) if r.generation == user.generation => Ok(r.level),
            _ => Err(()),
        }
    }
}

/// The shard's live sessions that belong to users, so a removal or kick can wake them.
#[derive(Default)]
pub(crate) struct SessionWatchers {
    /// (table address, record, waker): a table is pinned inside its `InboundRt`.
    watchers: RefCell<Slab<(usize, u32, Waker)>>,
}

impl SessionWatchers {
    /// Wakes the sessions of record `rec` of `table`, so they look at it again.
    pub(crate) fn wake(&self, table: &RefCell<UserTable>, rec: u32) {
        let key = table as *const _ as usize;
        for (_, (t, r, waker)) in self.watchers.borrow().iter() {
            if *t == key && *r == rec {
                waker.wake_by_ref();
            }
        }
    }
}

/// What a session sees of its user when it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UserState {
    /// Nothing changed.
    Same,
    /// The user was removed or kicked: close.
    Closed,
    /// The user moved to this level: go on under its policy.
    Level(u32),
}

/// A session's view of its user: whether it must close or change level, and its place among
/// the watchers.
pub(crate) struct SessionWatch<'a> {
    watchers: &'a SessionWatchers,
    table: &'a RefCell<UserTable>,
    user: UserHandle,
    level: Cell<u32>,
    key: Cell<Option<usize>>,
}

impl<'a> SessionWatch<'a> {
    pub(crate) fn new(watchers: &'a SessionWatchers, table: &'a RefCell<UserTable>, user: UserHandle) -> Self {
        let level = Cell::new(user.level);
        SessionWatch { watchers, table, user, level, key: Cell::new(None) }
    }

    /// Whether the user was removed or kicked since the session started.
    pub(crate) fn is_closed(&self) -> bool {
        self.table.borrow().state(&self.user).is_err()
    }

    /// What changed since the last look. The first call also registers the task's waker (a
    /// task's waker stays valid for the task's life), so later changes wake the session.
    pub(crate) fn check(&self, waker: &Waker) -> UserState {
        if self.key.get().is_none() {
            let entry = (self.table as *const _ as usize, self.user.rec, waker.clone());
            self.key.set(Some(self.watchers.watchers.borrow_mut().insert(entry)));
        }
        let Ok(level) = self.table.borrow().state(&self.user) else {
            return UserState::Closed;
        };
        if level != self.level.replace(level) {
            return UserState::Level(level);
        }
        UserState::Same
    }
}

impl Drop for SessionWatch<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.get() {
            self.watchers.watchers.borrow_mut().remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8, slot: u32) -> UserKey {
        UserKey { id: Uuid::from_bytes([n; 16]), slot, level: 0 }
    }

    #[test]
    fn handles_go_stale_on_removal_kick_and_reuse() {
        let mut t = UserTable::default();
        t.insert(&key(1, 0));
        t.insert(&key(2, 1));
        let a = t.get(&key(1, 0).id).unwrap();
        assert_eq!(t.state(&a), Ok(0));
        t.set_level(&key(1, 0).id, 3);
        assert_eq!(t.state(&a), Ok(3));
        t.kick(&key(1, 0).id);
        assert!(t.state(&a).is_err());
        let a = t.get(&key(1, 0).id).unwrap();
        assert_eq!(t.remove(&key(1, 0).id), Some(a.rec));
        assert!(t.state(&a).is_err() && !t.contains(&key(1, 0).id));
        // The record is reused by the next user; the old handle stays stale.
        t.insert(&key(3, 0));
        let c = t.get(&key(3, 0).id).unwrap();
        assert_eq!(c.rec, a.rec);
        assert!(t.state(&a).is_err() && t.state(&c).is_ok());
        assert_eq!(t.len(), 2);
        assert!(t.contains(&key(2, 1).id) && t.contains(&key(3, 0).id));
    }

    #[test]
    fn many_users_stay_findable_across_churn() {
        let mut t = UserTable::default();
        let id = |i: u32| Uuid::from_u128(u128::from(i) * 0x9e37_79b9_7f4a_7c15);
        for i in 0..10_000 {
            t.insert(&UserKey { id: id(i), slot: i, level: 0 });
        }
        for i in (0..10_000).step_by(2) {
            assert!(t.remove(&id(i)).is_some());
        }
        for i in 10_000..15_000 {
            t.insert(&UserKey { id: id(i), slot: i, level: 0 });
        }
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.recs.len(), 10_000);
        for i in 0..15_000 {
            assert_eq!(t.get(&id(i)).map(|h| h.slot), (i % 2 == 1 || i >= 10_000).then_some(i));
        }
    }
}
