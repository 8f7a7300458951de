//! An inbound's users as a shard holds them, and the watch that closes a user's live sessions
//! when the user is removed or kicked.
//!
//! A table is a dense vector of small records (id, counter slot, level, generation: 28 bytes
//! for a VLESS UUID, 68 for a Trojan key) with an index by id that holds only record numbers:
//! about 40 bytes a VLESS user. The table is generic over the key its protocol's handshake
//! carries (`TableKey`), so VLESS pays nothing for Trojan's longer key. The email lives once
//! per shard, in the slot counters, and the record holds no pointer. A session keeps a
//! `UserHandle` (record number and generation) and looks at the record when woken.

use std::cell::{Cell, RefCell};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use shardray_core::quota::QuotaCell;
use shardray_core::slots::{UserId, UserKey};
use shardray_core::stats::SlotCounters;
use shardray_wire::shadowsocks::{self, MasterKey, Method, MAX_KEY_LEN};
use shardray_wire::trojan::KEY_LEN;
use shardray_wire::vmess;
use slab::Slab;
use uuid::Uuid;

/// The key a protocol's handshake looks its user up by.
pub trait TableKey: Copy + Eq {
    /// The bytes hashed and compared.
    fn bytes(&self) -> &[u8];
    /// This protocol's key, if `id` is one.
    fn from_id(id: &UserId) -> Option<Self>;
}

impl TableKey for Uuid {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }

    fn from_id(id: &UserId) -> Option<Self> {
        match id {
            UserId::Uuid(id) => Some(*id),
            _ => None,
        }
    }
}

/// A Trojan user's key: the hex SHA-224 of its password, as the handshake carries it.
pub type TrojanKey = [u8; KEY_LEN];

impl TableKey for TrojanKey {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn from_id(id: &UserId) -> Option<Self> {
        match id {
            UserId::Trojan(key) => Some(*key),
            _ => None,
        }
    }
}

/// A SOCKS or HTTP proxy account's key: SHA-256 over the credentials a client presents.
pub type PasswordKey = [u8; shardray_wire::socks::ACCOUNT_KEY_LEN];

impl TableKey for PasswordKey {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn from_id(id: &UserId) -> Option<Self> {
        match id {
            UserId::Password(key) => Some(*key),
            _ => None,
        }
    }
}

/// A user as one shard's inbound knows it.
#[derive(Debug, Clone, Copy)]
struct UserRec<K> {
    id: K,
    slot: u32,
    level: u32,
    /// A VLESS user with the Vision flow.
    vision: bool,
    /// Suspended (quota or expiry): looked up as if it were not there.
    suspended: bool,
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
    /// A VLESS user with the Vision flow.
    pub(crate) vision: bool,
    /// The user's quota cell, if it has a quota or an expiry.
    pub(crate) quota: Option<Arc<QuotaCell>>,
}

impl UserHandle {
    /// The user's record in its inbound's table: with the table, who the user is on this
    /// shard, whatever its email.
    pub(crate) fn record(&self) -> u32 {
        self.rec
    }

    /// Fills in what the slot counters know: the email and the slot's generation.
    pub(crate) fn bind(mut self, slots: &SlotCounters) -> UserHandle {
        self.email = slots.email(self.slot).cloned();
        self.slot_generation = slots.generation(self.slot);
        self.quota = slots.quota(self.slot).cloned();
        self
    }
}

/// One inbound's users, by id: what a VLESS or Trojan handshake looks its user up in.
pub struct UserTable<K = Uuid> {
    recs: Vec<UserRec<K>>,
    index: HashTable<u32>,
    free: Vec<u32>,
    /// Records of removed users whose live sessions go on until the instant given (see
    /// `REMOVAL_GRACE`): out of the index, so no new session finds them.
    leaving: Vec<(u32, Instant)>,
}

impl<K> Default for UserTable<K> {
    fn default() -> Self {
        UserTable { recs: Vec::new(), index: HashTable::new(), free: Vec::new(), leaving: Vec::new() }
    }
}

fn hash_id<K: TableKey>(id: &K) -> u64 {
    FxBuildHasher.hash_one(id.bytes())
}

impl<K: TableKey> UserTable<K> {
    fn find(&self, id: &K) -> Option<u32> {
        self.index.find(hash_id(id), |&r| self.recs[r as usize].id == *id).copied()
    }

    /// The user with this id, for a new session (`email` and `slot_generation` are the
    /// caller's to fill from the slot counters).
    pub(crate) fn get(&self, id: &K) -> Option<UserHandle> {
        let rec = self.find(id)?;
        let r = &self.recs[rec as usize];
        if r.suspended {
            return None;
        }
        Some(UserHandle {
            rec,
            generation: r.generation,
            slot: r.slot,
            level: r.level,
            slot_generation: 0,
            email: None,
            vision: r.vision,
            quota: None,
        })
    }

    /// Whether a user has this id.
    pub fn contains(&self, id: &K) -> bool {
        self.find(id).is_some()
    }

    /// Users in the table.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.len()
    }

    /// Adds the user (or replaces the one with its id); a key of another protocol is refused.
    /// A user removed within its grace comes back with the same id and counter slot: its
    /// record is taken back, so its live sessions go on, at the new level. Returns the record
    /// whose sessions must look at it again, if any.
    pub fn insert(&mut self, user: &UserKey) -> Result<Option<u32>, UserId> {
        let id = K::from_id(&user.id).ok_or(user.id)?;
        if let Some(rec) = self.find(&id) {
            let r = &mut self.recs[rec as usize];
            // A different user now: sessions of the old one close.
            r.generation = r.generation.wrapping_add(1);
            (r.slot, r.level, r.vision) = (user.slot, user.level, user.vision);
            return Ok(Some(rec));
        }
        let mut woken = None;
        if let Some(at) = self.leaving.iter().position(|&(rec, _)| self.recs[rec as usize].id == id) {
            let (rec, _) = self.leaving.swap_remove(at);
            let r = &mut self.recs[rec as usize];
            if r.slot == user.slot {
                (r.level, r.vision) = (user.level, user.vision);
                let recs = &self.recs;
                self.index.insert_unique(hash_id(&id), rec, |&r| hash_id(&recs[r as usize].id));
                return Ok(Some(rec));
            }
            // Another email (another slot): the removed user's sessions close now.
            r.generation = r.generation.wrapping_add(1);
            self.free.push(rec);
            woken = Some(rec);
        }
        let fresh =
            UserRec { id, slot: user.slot, level: user.level, vision: user.vision, suspended: false, generation: 0 };
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
        self.index.insert_unique(hash_id(&id), rec, |&r| hash_id(&recs[r as usize].id));
        Ok(woken)
    }

    /// Takes the user with this id out of the index (no new session finds it); returns its
    /// record.
    fn unindex(&mut self, id: &K) -> Option<u32> {
        let hash = hash_id(id);
        let recs = &self.recs;
        let entry = self.index.find_entry(hash, |&r| recs[r as usize].id == *id).ok()?;
        Some(entry.remove().0)
    }

    /// Removes the user with this id; returns its watch key so its sessions can be woken.
    pub fn remove(&mut self, id: &K) -> Option<u32> {
        let rec = self.unindex(id)?;
        let r = &mut self.recs[rec as usize];
        r.generation = r.generation.wrapping_add(1);
        self.free.push(rec);
        Some(rec)
    }

    /// Removes the user with this id from new sessions at once, its live ones at `until`
    /// (`expire`), unless it is added back first. Whether it was there.
    pub(crate) fn remove_after(&mut self, id: &K, until: Instant) -> bool {
        let Some(rec) = self.unindex(id) else { return false };
        self.leaving.push((rec, until));
        true
    }

    /// Closes the sessions of users removed with a grace that ended by `now`; returns their
    /// records, to wake.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<u32> {
        let mut ended = Vec::new();
        self.leaving.retain(|&(rec, until)| {
            let end = until <= now;
            if end {
                ended.push(rec);
            }
            !end
        });
        for &rec in &ended {
            let r = &mut self.recs[rec as usize];
            r.generation = r.generation.wrapping_add(1);
            self.free.push(rec);
        }
        ended
    }

    /// Closes the user's live sessions: they see a new generation when next polled.
    pub(crate) fn kick(&mut self, id: &K) -> Option<u32> {
        let rec = self.find(id)?;
        let r = &mut self.recs[rec as usize];
        r.generation = r.generation.wrapping_add(1);
        Some(rec)
    }

    /// Moves the user to another level; live sessions pick it up when next polled.
    pub(crate) fn set_level(&mut self, id: &K, level: u32) -> Option<u32> {
        let rec = self.find(id)?;
        self.recs[rec as usize].level = level;
        Some(rec)
    }

    /// Suspends the user (closing its live sessions, as a kick does) or resumes it.
    pub(crate) fn suspend(&mut self, id: &K, suspended: bool) -> Option<u32> {
        let rec = self.find(id)?;
        let r = &mut self.recs[rec as usize];
        if suspended && !r.suspended {
            r.generation = r.generation.wrapping_add(1);
        }
        r.suspended = suspended;
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

/// What applying user operations asks of a table, whatever its key.
pub(crate) trait UserOps {
    /// The key the table is looked up by.
    type Key: TableKey;
    /// Adds the user (or replaces the one with its id, or takes back one removed within its
    /// grace); a key of another protocol is refused. Returns a watch key to wake, if any.
    fn insert(&mut self, user: &UserKey) -> Result<Option<u32>, UserId>;
    /// Removes the user; returns its watch key.
    fn remove(&mut self, id: &Self::Key) -> Option<u32>;
    /// Removes the user for new sessions now, for its live ones at `until` (see `expire`).
    fn remove_after(&mut self, id: &Self::Key, until: Instant);
    /// Ends the grace of users removed with one that ended by `now`; returns their watch keys.
    fn expire(&mut self, now: Instant) -> Vec<u32>;
    /// Closes the user's live sessions.
    fn kick(&mut self, id: &Self::Key) -> Option<u32>;
    /// Moves the user to another level.
    fn set_level(&mut self, id: &Self::Key, level: u32) -> Option<u32>;
    /// Suspends or resumes the user.
    fn suspend(&mut self, id: &Self::Key, suspended: bool) -> Option<u32>;
}

impl<K: TableKey> UserOps for UserTable<K> {
    type Key = K;
    fn insert(&mut self, user: &UserKey) -> Result<Option<u32>, UserId> {
        UserTable::insert(self, user)
    }
    fn remove(&mut self, id: &K) -> Option<u32> {
        UserTable::remove(self, id)
    }
    fn remove_after(&mut self, id: &K, until: Instant) {
        UserTable::remove_after(self, id, until);
    }
    fn expire(&mut self, now: Instant) -> Vec<u32> {
        UserTable::expire(self, now)
    }
    fn kick(&mut self, id: &K) -> Option<u32> {
        UserTable::kick(self, id)
    }
    fn set_level(&mut self, id: &K, level: u32) -> Option<u32> {
        UserTable::set_level(self, id, level)
    }
    fn suspend(&mut self, id: &K, suspended: bool) -> Option<u32> {
        UserTable::suspend(self, id, suspended)
    }
}

// === impl VmessUsers ===

/// A VMess inbound's users. The handshake names no user: its auth ID is checked against every
/// user's key in turn (as Xray does), so the keys sit in one dense array, scanned in order;
/// the records, generations and watch keys are a `UserTable<Uuid>`'s.
#[derive(Default)]
pub struct VmessUsers {
    table: UserTable<Uuid>,
    /// The users' auth ID keys, dense (a removal moves the last one into the gap).
    auth: Vec<vmess::AuthIdKey>,
    /// Beside each auth key: the command key and the UUID.
    keys: Vec<([u8; 16], Uuid)>,
    /// Where each UUID's keys are in `auth` and `keys`.
    at: hashbrown::HashMap<Uuid, u32, FxBuildHasher>,
}

impl VmessUsers {
    /// The user whose key the auth ID at the front of a connection was made with, checked
    /// against the clock (`now`, Unix seconds) and recorded in `replay`; with that user's
    /// command key, which opens the rest of the header.
    pub(crate) fn find(
        &self,
        auth_id: &[u8; 16],
        now: u64,
        replay: &mut vmess::ReplayFilter,
    ) -> Result<(UserHandle, [u8; 16]), vmess::VmessError> {
        let i = vmess::find_user(self.auth.iter().zip(0..), auth_id, now, replay)?;
        // New to this shard; a replay of what another shard accepted is caught here.
        let timestamp = self.auth[i].check(auth_id).unwrap_or(now);
        if !crate::replay::SharedReplay::get().insert(auth_id, timestamp) {
            return Err(vmess::VmessError::Replayed);
        }
        let (cmd_key, id) = &self.keys[i];
        let user = self.table.get(id).ok_or(vmess::VmessError::UnknownUser)?;
        Ok((user, *cmd_key))
    }

    /// The user's auth key matches `auth_id` (benchmarks and tests: no clock, no replay).
    pub fn scan(&self, auth_id: &[u8; 16]) -> Option<Uuid> {
        self.auth.iter().position(|k| k.check(auth_id).is_some()).map(|i| self.keys[i].1)
    }

    /// Users in the table.
    pub fn len(&self) -> usize {
        self.auth.len()
    }

    /// Whether the table has no user.
    pub fn is_empty(&self) -> bool {
        self.auth.is_empty()
    }

    /// Adds the user (deriving its keys) or replaces the one with its UUID.
    pub fn insert(&mut self, user: &UserKey) -> Result<Option<u32>, UserId> {
        let woken = self.table.insert(user)?;
        let id = Uuid::from_id(&user.id).expect("the table took it as a UUID");
        if !self.at.contains_key(&id) {
            let key = vmess::UserKey::new(&id);
            self.at.insert(id, self.auth.len() as u32);
            self.auth.push(key.auth_id().clone());
            self.keys.push((*key.cmd_key(), id));
        }
        Ok(woken)
    }

    /// Removes the user with this UUID; returns its watch key.
    pub fn remove(&mut self, id: &Uuid) -> Option<u32> {
        let rec = self.table.remove(id)?;
        self.forget_keys(id);
        Some(rec)
    }

    /// `UserOps::remove_after`: the keys go now, the sessions at `until`.
    fn remove_after(&mut self, id: &Uuid, until: Instant) {
        if self.table.remove_after(id, until) {
            self.forget_keys(id);
        }
    }

    /// Takes the user's keys out of the scan.
    fn forget_keys(&mut self, id: &Uuid) {
        if let Some(i) = self.at.remove(id) {
            let i = i as usize;
            self.auth.swap_remove(i);
            self.keys.swap_remove(i);
            if let Some((_, moved)) = self.keys.get(i) {
                self.at.insert(*moved, i as u32);
            }
        }
    }
}

impl UserOps for VmessUsers {
    type Key = Uuid;
    fn insert(&mut self, user: &UserKey) -> Result<Option<u32>, UserId> {
        VmessUsers::insert(self, user)
    }
    fn remove(&mut self, id: &Uuid) -> Option<u32> {
        VmessUsers::remove(self, id)
    }
    fn remove_after(&mut self, id: &Uuid, until: Instant) {
        VmessUsers::remove_after(self, id, until)
    }
    fn expire(&mut self, now: Instant) -> Vec<u32> {
        self.table.expire(now)
    }
    fn kick(&mut self, id: &Uuid) -> Option<u32> {
        self.table.kick(id)
    }
    fn set_level(&mut self, id: &Uuid, level: u32) -> Option<u32> {
        self.table.set_level(id, level)
    }
    fn suspend(&mut self, id: &Uuid, suspended: bool) -> Option<u32> {
        self.table.suspend(id, suspended)
    }
}

impl UserStates for RefCell<VmessUsers> {
    fn state(&self, user: &UserHandle) -> Result<u32, ()> {
        self.borrow().table.state(user)
    }
}

// === impl ShadowsocksUsers ===

/// A Shadowsocks user's key in its table: the method's place in `Method::ALL` (or `0xFF` for a
/// 2022 PSK, whose method the inbound names), the key's length, then the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SsKey {
    raw: [u8; 2 + MAX_KEY_LEN],
}

/// `SsKey`'s method byte for a 2022 PSK.
const SS2022: u8 = 0xFF;

impl SsKey {
    fn new(tag: u8, key: &MasterKey) -> SsKey {
        let bytes = key.as_bytes();
        let mut raw = [0u8; 2 + MAX_KEY_LEN];
        (raw[0], raw[1]) = (tag, bytes.len() as u8);
        raw[2..2 + bytes.len()].copy_from_slice(bytes);
        SsKey { raw }
    }

    /// The master key or PSK.
    fn key(&self) -> MasterKey {
        MasterKey::from_bytes(&self.raw[2..2 + usize::from(self.raw[1])])
    }

    /// The classic method, or `None` for a 2022 PSK.
    fn method(&self) -> Option<Method> {
        Method::ALL.get(usize::from(self.raw[0])).copied()
    }
}

impl TableKey for SsKey {
    fn bytes(&self) -> &[u8] {
        &self.raw
    }

    fn from_id(id: &UserId) -> Option<Self> {
        match id {
            UserId::Shadowsocks(method, key) => {
                Some(SsKey::new(Method::ALL.iter().position(|m| m == method)? as u8, key))
            }
            UserId::Shadowsocks2022(key) => Some(SsKey::new(SS2022, key)),
            _ => None,
        }
    }
}

/// A Shadowsocks inbound's users. Classic AEAD names no user: each user's key is tried on the
/// first length chunk (as Xray does), so the keys of each method sit in one dense array. A
/// 2022 request names its user by the hash in its identity header: one map lookup. The
/// records, generations and watch keys are a `UserTable<SsKey>`'s.
#[derive(Default)]
pub struct ShadowsocksUsers {
    table: UserTable<SsKey>,
    /// Classic users by method: the master keys, dense, and beside them the table keys.
    classic: Vec<(Method, Vec<MasterKey>, Vec<SsKey>)>,
    /// 2022 users by BLAKE3(PSK)[..16].
    by_hash: hashbrown::HashMap<[u8; 16], SsKey, FxBuildHasher>,
}

impl ShadowsocksUsers {
    /// The classic user whose key opens the first length chunk at the front of `data`, with
    /// its method and master key. `Err(UnexpectedEnd)` while a method's salt and length chunk
    /// are not all in and no user has matched yet.
    pub(crate) fn find_classic(&self, data: &[u8]) -> Result<(UserHandle, Method, MasterKey), shadowsocks::Error> {
        let mut short = false;
        for (method, keys, ids) in &self.classic {
            match shadowsocks::classic::find_user(*method, keys, data) {
                Ok(i) => {
                    let user = self.table.get(&ids[i]).ok_or(shadowsocks::Error::UnknownUser)?;
                    return Ok((user, *method, keys[i]));
                }
                Err(shadowsocks::Error::UnexpectedEnd) => short = true,
                Err(_) => {}
            }
        }
        Err(if short { shadowsocks::Error::UnexpectedEnd } else { shadowsocks::Error::UnknownUser })
    }

    /// The classic user whose key opens the UDP packet `data`: the user, method, key, the
    /// packet's destination and its payload. Each key is tried on a copy (a failed open may
    /// leave its buffer changed); one attempt per user, nothing kept.
    pub(crate) fn open_classic_packet(
        &self,
        data: &[u8],
    ) -> Option<(UserHandle, Method, MasterKey, shardray_wire::addr::Destination, Vec<u8>)> {
        let mut copy = Vec::with_capacity(data.len());
        for (method, keys, ids) in &self.classic {
            for (key, id) in keys.iter().zip(ids) {
                copy.clear();
                copy.extend_from_slice(data);
                if let Ok((dest, payload)) = shadowsocks::classic::open_packet(*method, key, &mut copy) {
                    let user = self.table.get(id)?;
                    copy.truncate(payload.end);
                    copy.drain(..payload.start);
                    return Some((user, *method, *key, dest, copy));
                }
            }
        }
        None
    }

    /// The 2022 user an identity header names (`Some(hash)`), or the only user of a
    /// single-user inbound (`None`), with its PSK.
    pub(crate) fn find_2022(&self, hash: Option<&[u8; 16]>) -> Option<(UserHandle, MasterKey)> {
        let id = match hash {
            Some(hash) => self.by_hash.get(hash)?,
            None if self.by_hash.len() == 1 => self.by_hash.values().next()?,
            None => return None,
        };
        Some((self.table.get(id)?, id.key()))
    }

    /// Users in the table.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.index.len()
    }

    /// Adds the user or replaces the one with its key.
    pub fn insert(&mut self, user: &UserKey) -> Result<Option<u32>, UserId> {
        let woken = self.table.insert(user)?;
        let id = SsKey::from_id(&user.id).expect("the table took it");
        match id.method() {
            Some(method) => {
                let at = match self.classic.iter().position(|(m, ..)| *m == method) {
                    Some(at) => at,
                    None => {
                        self.classic.push((method, Vec::new(), Vec::new()));
                        self.classic.len() - 1
                    }
                };
                let (_, keys, ids) = &mut self.classic[at];
                if !ids.contains(&id) {
                    keys.push(id.key());
                    ids.push(id);
                }
            }
            None => {
                self.by_hash.insert(shadowsocks::ss2022::identity_hash(&id.key()), id);
            }
        }
        Ok(woken)
    }

    /// Removes the user with this key; returns its watch key.
    pub fn remove(&mut self, id: &SsKey) -> Option<u32> {
        let rec = self.table.remove(id)?;
        self.forget_key(id);
        Some(rec)
    }

    /// `UserOps::remove_after`: the key goes now, the sessions at `until`.
    fn remove_after(&mut self, id: &SsKey, until: Instant) {
        if self.table.remove_after(id, until) {
            self.forget_key(id);
        }
    }

    /// Takes the user's key out of the lookups.
    fn forget_key(&mut self, id: &SsKey) {
        match id.method() {
            Some(method) => {
                if let Some((_, keys, ids)) = self.classic.iter_mut().find(|(m, ..)| *m == method) {
                    if let Some(i) = ids.iter().position(|k| k == id) {
                        keys.swap_remove(i);
                        ids.swap_remove(i);
                    }
                }
            }
            None => {
                self.by_hash.remove(&shadowsocks::ss2022::identity_hash(&id.key()));
            }
        }
    }
}

impl UserOps for ShadowsocksUsers {
    type Key = SsKey;
    fn insert(&mut self, user: &UserKey) -> Result<Option<u32>, UserId> {
        ShadowsocksUsers::insert(self, user)
    }
    fn remove(&mut self, id: &SsKey) -> Option<u32> {
        ShadowsocksUsers::remove(self, id)
    }
    fn remove_after(&mut self, id: &SsKey, until: Instant) {
        ShadowsocksUsers::remove_after(self, id, until)
    }
    fn expire(&mut self, now: Instant) -> Vec<u32> {
        self.table.expire(now)
    }
    fn kick(&mut self, id: &SsKey) -> Option<u32> {
        self.table.kick(id)
    }
    fn set_level(&mut self, id: &SsKey, level: u32) -> Option<u32> {
        self.table.set_level(id, level)
    }
    fn suspend(&mut self, id: &SsKey, suspended: bool) -> Option<u32> {
        self.table.suspend(id, suspended)
    }
}

impl UserStates for RefCell<ShadowsocksUsers> {
    fn state(&self, user: &UserHandle) -> Result<u32, ()> {
        self.borrow().table.state(user)
    }
}

/// A user table of any key, as the session watch looks at it.
pub(crate) trait UserStates {
    /// The level of `user`'s record, or `Err` if the session must close.
    fn state(&self, user: &UserHandle) -> Result<u32, ()>;
}

impl<K: TableKey> UserStates for RefCell<UserTable<K>> {
    fn state(&self, user: &UserHandle) -> Result<u32, ()> {
        self.borrow().state(user)
    }
}

/// The address that identifies a table among the watchers.
fn table_key(table: &dyn UserStates) -> usize {
    table as *const dyn UserStates as *const () as usize
}

/// The shard's live sessions that belong to users, so a removal or kick can wake them.
#[derive(Default)]
pub(crate) struct SessionWatchers {
    /// (table address, record, waker): a table is pinned inside its `InboundRt`.
    watchers: RefCell<Slab<(usize, u32, Waker)>>,
}

impl SessionWatchers {
    /// Wakes the sessions of record `rec` of `table`, so they look at it again.
    pub(crate) fn wake(&self, table: &dyn UserStates, rec: u32) {
        let key = table_key(table);
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
    table: &'a dyn UserStates,
    user: UserHandle,
    level: Cell<u32>,
    key: Cell<Option<usize>>,
}

impl<'a> SessionWatch<'a> {
    pub(crate) fn new(watchers: &'a SessionWatchers, table: &'a dyn UserStates, user: UserHandle) -> Self {
        let level = Cell::new(user.level);
        SessionWatch { watchers, table, user, level, key: Cell::new(None) }
    }

    /// Whether the user was removed or kicked since the session started.
    pub(crate) fn is_closed(&self) -> bool {
        self.table.state(&self.user).is_err()
    }

    /// What changed since the last look. The first call also registers the task's waker (a
    /// task's waker stays valid for the task's life), so later changes wake the session.
    pub(crate) fn check(&self, waker: &Waker) -> UserState {
        if self.key.get().is_none() {
            let entry = (table_key(self.table), self.user.rec, waker.clone());
            self.key.set(Some(self.watchers.watchers.borrow_mut().insert(entry)));
        }
        let Ok(level) = self.table.state(&self.user) else {
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
        UserKey { id: UserId::Uuid(Uuid::from_bytes([n; 16])), slot, level: 0, vision: false }
    }

    fn id(k: &UserKey) -> Uuid {
        Uuid::from_id(&k.id).unwrap()
    }

    #[test]
    fn handles_go_stale_on_removal_kick_and_reuse() {
        let mut t = UserTable::<Uuid>::default();
        t.insert(&key(1, 0)).unwrap();
        t.insert(&key(2, 1)).unwrap();
        let a = t.get(&id(&key(1, 0))).unwrap();
        assert_eq!(t.state(&a), Ok(0));
        t.set_level(&id(&key(1, 0)), 3);
        assert_eq!(t.state(&a), Ok(3));
        t.kick(&id(&key(1, 0)));
        assert!(t.state(&a).is_err());
        let a = t.get(&id(&key(1, 0))).unwrap();
        assert_eq!(t.remove(&id(&key(1, 0))), Some(a.rec));
        assert!(t.state(&a).is_err() && !t.contains(&id(&key(1, 0))));
        // The record is reused by the next user; the old handle stays stale.
        t.insert(&key(3, 0)).unwrap();
        let c = t.get(&id(&key(3, 0))).unwrap();
        assert_eq!(c.rec, a.rec);
        assert!(t.state(&a).is_err() && t.state(&c).is_ok());
        assert_eq!(t.len(), 2);
        assert!(t.contains(&id(&key(2, 1))) && t.contains(&id(&key(3, 0))));
    }

    #[test]
    fn a_user_removed_with_a_grace_keeps_its_sessions_if_added_back_in_time() {
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(1);
        let mut t = UserTable::<Uuid>::default();
        t.insert(&key(1, 7)).unwrap();
        t.insert(&key(2, 8)).unwrap();
        let (a, b) = (t.get(&id(&key(1, 7))).unwrap(), t.get(&id(&key(2, 8))).unwrap());
        assert!(t.remove_after(&id(&key(1, 7)), later) && t.remove_after(&id(&key(2, 8)), later));
        assert!(t.get(&id(&key(1, 7))).is_none(), "a new session is refused at once");
        assert_eq!(t.state(&a), Ok(0), "a live one goes on");
        // The same id and slot come back at level 2: the same record, the sessions told.
        let back = UserKey { level: 2, ..key(1, 7) };
        assert_eq!(t.insert(&back).unwrap(), Some(a.rec));
        assert_eq!(t.state(&a), Ok(2));
        // Back with another slot (another email): the old sessions close.
        assert_eq!(t.insert(&key(2, 9)).unwrap(), Some(b.rec));
        assert!(t.state(&b).is_err());
        assert!(t.expire(later).is_empty(), "a user taken back does not expire");
        assert_eq!(t.state(&a), Ok(2));
        // Not back in time: closed when the grace ends, not before.
        let c = t.get(&id(&key(1, 7))).unwrap();
        t.remove_after(&id(&key(1, 7)), later);
        assert!(t.expire(now).is_empty() && t.state(&c).is_ok());
        assert_eq!(t.expire(later), [c.rec]);
        assert!(t.state(&c).is_err());
    }

    #[test]
    fn a_suspended_user_is_not_found_and_its_sessions_close_until_resumed() {
        let mut t = UserTable::<Uuid>::default();
        t.insert(&key(1, 0)).unwrap();
        let a = t.get(&id(&key(1, 0))).unwrap();
        t.suspend(&id(&key(1, 0)), true);
        assert!(t.get(&id(&key(1, 0))).is_none(), "looked up as a wrong user");
        assert!(t.state(&a).is_err(), "its live session closes");
        assert!(t.contains(&id(&key(1, 0))), "the user stays");
        t.suspend(&id(&key(1, 0)), false);
        let b = t.get(&id(&key(1, 0))).unwrap();
        assert!(t.state(&b).is_ok() && t.state(&a).is_err());
    }

    #[test]
    fn many_users_stay_findable_across_churn() {
        let mut t = UserTable::<Uuid>::default();
        let id = |i: u32| Uuid::from_u128(u128::from(i) * 0x9e37_79b9_7f4a_7c15);
        for i in 0..10_000 {
            t.insert(&UserKey { id: UserId::Uuid(id(i)), slot: i, level: 0, vision: false }).unwrap();
        }
        for i in (0..10_000).step_by(2) {
            assert!(t.remove(&id(i)).is_some());
        }
        for i in 10_000..15_000 {
            t.insert(&UserKey { id: UserId::Uuid(id(i)), slot: i, level: 0, vision: false }).unwrap();
        }
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.recs.len(), 10_000);
        for i in 0..15_000 {
            assert_eq!(t.get(&id(i)).map(|h| h.slot), (i % 2 == 1 || i >= 10_000).then_some(i));
        }
    }

    #[test]
    fn trojan_keys_and_a_key_of_another_protocol() {
        let mut t = UserTable::<TrojanKey>::default();
        let key = shardray_wire::trojan::password_key("hunter2");
        t.insert(&UserKey { id: UserId::Trojan(key), slot: 4, level: 1, vision: false }).unwrap();
        assert_eq!(t.get(&key).map(|h| (h.slot, h.level)), Some((4, 1)));
        assert!(!t.contains(&shardray_wire::trojan::password_key("hunter3")));
        assert!(t.insert(&key_uuid()).is_err(), "a UUID in a Trojan table");
        let mut v = UserTable::<Uuid>::default();
        assert!(v.insert(&UserKey { id: UserId::Trojan(key), slot: 0, level: 0, vision: false }).is_err());
    }

    #[test]
    fn vmess_keys_stay_dense_and_findable_across_removals() {
        let id = |i: u128| Uuid::from_u128(i * 0x9e37_79b9_7f4a_7c15 + 1);
        let auth_id = |i: u128| {
            let key = vmess::UserKey::new(&id(i));
            key.auth_id().encode(1_780_000_000, [i as u8; 4])
        };
        let mut t = VmessUsers::default();
        for i in 0..200 {
            t.insert(&UserKey { id: UserId::Uuid(id(i)), slot: i as u32, level: 0, vision: false }).unwrap();
        }
        for i in (0..200).step_by(3) {
            assert!(t.remove(&id(i)).is_some());
        }
        // Re-adding one is not a second entry.
        t.insert(&UserKey { id: UserId::Uuid(id(1)), slot: 1, level: 2, vision: false }).unwrap();
        assert_eq!(t.len(), 200 - 67);
        for i in 0..200 {
            assert_eq!(t.scan(&auth_id(i)), (i % 3 != 0).then(|| id(i)), "user {i}");
        }
        let mut replay = vmess::ReplayFilter::new();
        let (user, _) = t.find(&auth_id(1), 1_780_000_000, &mut replay).unwrap();
        assert_eq!((user.slot, user.level), (1, 2));
        assert!(t.insert(&UserKey { id: UserId::Trojan([b'a'; KEY_LEN]), slot: 0, level: 0, vision: false }).is_err());
        eprintln!(
            "a VMess user costs {} bytes of keys per shard (auth key {} + command key and UUID 32) besides its record",
            std::mem::size_of::<vmess::AuthIdKey>() + 32,
            std::mem::size_of::<vmess::AuthIdKey>()
        );
    }

    #[test]
    fn shadowsocks_users_found_by_trial_and_by_identity_across_churn() {
        use shardray_wire::addr::Destination;
        use shardray_wire::shadowsocks::{classic, ss2022};
        let classic_id = |method: Method, i: u32| {
            let key = MasterKey::from_password(method, &format!("password {i}")).unwrap();
            UserKey { id: UserId::Shadowsocks(method, key), slot: i, level: 0, vision: false }
        };
        let first_flight = |method: Method, key: &MasterKey| {
            let mut out = Vec::new();
            let dest = Destination::from(std::net::SocketAddr::from(([127, 0, 0, 1], 80)));
            classic::encode_request(method, key, &vec![3u8; method.salt_len()], &dest, b"hello", &mut out);
            out
        };
        let mut t = ShadowsocksUsers::default();
        for (n, method) in [Method::Aes128Gcm, Method::ChaCha20Poly1305].into_iter().enumerate() {
            for i in 0..100 {
                t.insert(&classic_id(method, i + 1000 * n as u32)).unwrap();
            }
        }
        for i in (0..100).step_by(2) {
            let UserId::Shadowsocks(m, k) = classic_id(Method::Aes128Gcm, i).id else { unreachable!() };
            assert!(t.remove(&SsKey::new(0, &k)).is_some() && m == Method::Aes128Gcm);
        }
        assert_eq!(t.len(), 150);
        for i in 0..100 {
            let UserId::Shadowsocks(_, key) = classic_id(Method::Aes128Gcm, i).id else { unreachable!() };
            let found = t.find_classic(&first_flight(Method::Aes128Gcm, &key)).map(|(u, m, _)| (u.slot, m));
            assert_eq!(found.ok(), (i % 2 == 1).then_some((i, Method::Aes128Gcm)), "user {i}");
            let UserId::Shadowsocks(_, key) = classic_id(Method::ChaCha20Poly1305, 1000 + i).id else { unreachable!() };
            let found = t.find_classic(&first_flight(Method::ChaCha20Poly1305, &key)).map(|(u, ..)| u.slot);
            assert_eq!(found.ok(), Some(1000 + i));
        }
        // Too short for the 32-byte salts: not settled yet.
        assert_eq!(t.find_classic(&[0u8; 40]).err(), Some(shadowsocks::Error::UnexpectedEnd));
        assert_eq!(t.find_classic(&[0u8; 60]).err(), Some(shadowsocks::Error::UnknownUser));

        let psk = |i: u32| MasterKey::from_bytes(&[i as u8; 16]);
        let mut t = ShadowsocksUsers::default();
        for i in 1..=50 {
            t.insert(&UserKey { id: UserId::Shadowsocks2022(psk(i)), slot: i, level: 0, vision: false }).unwrap();
        }
        t.remove(&SsKey::new(SS2022, &psk(7)));
        for i in 1..=50 {
            let found = t.find_2022(Some(&ss2022::identity_hash(&psk(i)))).map(|(u, k)| (u.slot, k));
            assert_eq!(found, (i != 7).then_some((i, psk(i))), "user {i}");
        }
        assert!(t.find_2022(None).is_none(), "no identity header on a multi-user table");
        assert!(t.insert(&key(1, 0)).is_err(), "a UUID in a Shadowsocks table");
    }

    /// What trial decryption costs a classic handshake per user: a first flight that no key
    /// opens, against 1,000 users of each method (release builds: `cargo test --release`).
    #[test]
    fn shadowsocks_trial_decryption_cost_per_user() {
        const USERS: u32 = 1000;
        for method in [Method::Aes128Gcm, Method::Aes256Gcm, Method::ChaCha20Poly1305, Method::XChaCha20Poly1305] {
            let mut t = ShadowsocksUsers::default();
            for i in 0..USERS {
                let key = MasterKey::from_password(method, &format!("user {i}")).unwrap();
                t.insert(&UserKey { id: UserId::Shadowsocks(method, key), slot: i, level: 0, vision: false }).unwrap();
            }
            let stranger = vec![0x5au8; 64];
            let rounds = 20;
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                assert!(t.find_classic(&stranger).is_err());
            }
            let per_user = started.elapsed().as_secs_f64() * 1e9 / f64::from(rounds * USERS);
            eprintln!("shadowsocks {method}: trial decryption costs {per_user:.0} ns per user ({USERS} users)");
        }
    }

    fn key_uuid() -> UserKey {
        key(9, 9)
    }
}
