//! The authoritative registry: every inbound's users as the API has left them, and the epoch
//! counter. A change is checked here, numbered, sent to every shard, and recorded once the
//! shards have acknowledged it, one change at a time, so epochs apply in order everywhere.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use shardray_core::change::Change;
use shardray_core::slots::{UserKey, UserOp, NO_SLOT};
use shardray_core::spec::{Config, InboundProtocol, UserSpec};
use uuid::Uuid;

use crate::journal::Journal;
use crate::server::{BroadcastError, ShardLinks};
use crate::slots::{InboundUserTable, SlotBook, SlotView, Slots, UserRef};

/// How long a change may take to be applied by every shard before the call fails.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// One inbound's users.
#[derive(Debug, Clone, Default)]
pub struct InboundUsers {
    /// The inbound's tag.
    pub tag: String,
    /// The inbound's protocol, as config names it ("vless", "dokodemo-door").
    pub protocol: &'static str,
    /// Whether the inbound has users at all (dokodemo-door does not).
    pub has_users: bool,
    /// Users, by id and by email.
    pub users: InboundUserTable,
}

impl InboundUsers {
    /// The user with this email (any ASCII case).
    pub fn by_email(&self, email: &str) -> Option<UserRef<'_>> {
        self.users.by_email(email)
    }
}

/// Why a change was refused or did not complete. The texts end as upstream's do, since panels
/// match on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    /// No inbound has this tag.
    InboundNotFound(String),
    /// The inbound has no users (dokodemo-door).
    NoUsers(String),
    /// A user with this email or id is already there.
    AlreadyExists(String),
    /// No user with this email.
    UserNotFound(String),
    /// A user without an email cannot be managed through the API.
    MissingEmail,
    /// The shards did not all apply the change in time (it stays queued for them).
    Shards(BroadcastError),
    /// The change could not be written to the journal, so it was not made.
    Journal(String),
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::InboundNotFound(tag) => write!(f, "handler not found: {tag}"),
            ChangeError::NoUsers(tag) => write!(f, "inbound {tag} has no users to manage"),
            ChangeError::AlreadyExists(who) => write!(f, "User {who} already exists."),
            ChangeError::UserNotFound(who) => write!(f, "User {who} not found."),
            ChangeError::MissingEmail => f.write_str("a user needs an email to be managed"),
            ChangeError::Shards(e) => write!(f, "{e}"),
            ChangeError::Journal(e) => write!(f, "journal: {e}"),
        }
    }
}

impl std::error::Error for ChangeError {}

/// Every inbound's users: pure data, checked and changed one `Change` at a time. The registry
/// holds the live copy; start-up replays the journal into one before the shards exist.
#[derive(Debug, Clone, Default)]
pub struct UserSets {
    inbounds: Vec<InboundUsers>,
    /// One counter slot per email, shared by the inbounds that list it.
    slots: SlotBook,
}

/// The registry: the user sets, the epoch counter, the journal and the way to the shards.
pub struct Registry {
    epoch: u64,
    sets: UserSets,
    journal: Option<Journal>,
    shards: ShardLinks,
}

impl Registry {
    /// The registry for running shards that started from `sets`; changes are journaled if
    /// a journal is given.
    pub fn new(sets: UserSets, journal: Option<Journal>, shards: ShardLinks) -> Registry {
        Registry { epoch: 0, sets, journal, shards }
    }

    /// Every inbound, in config order.
    pub fn inbounds(&self) -> &[InboundUsers] {
        &self.sets.inbounds
    }

    /// The inbound with this tag.
    pub fn inbound(&self, tag: &str) -> Result<&InboundUsers, ChangeError> {
        self.sets.inbound(tag)
    }

    /// The counter slots: every user with an email, once, with the level its counters follow.
    pub fn slots(&self) -> Slots<'_> {
        self.sets.slots()
    }

    /// The counter slots, to record resets.
    pub fn slots_mut(&mut self) -> &mut SlotBook {
        &mut self.sets.slots
    }

    /// The slot of the user with this email (the first inbound listing it, any ASCII case).
    pub fn stat_user(&self, email: &str) -> Option<SlotView<'_>> {
        self.sets.stat_user(email)
    }

    /// Checks `change`, writes it to the journal, sends it to every shard as the next epoch,
    /// waits for them all, and returns the epoch.
    pub async fn apply(&mut self, change: Change) -> Result<u64, ChangeError> {
        self.sets.check(&change)?;
        if let Some(journal) = &mut self.journal {
            // Write-ahead: on disk before any shard sees it, so a crash loses no acknowledged change.
            journal.append(&change).map_err(|e| ChangeError::Journal(e.to_string()))?;
        }
        self.epoch += 1;
        let epoch = self.epoch;
        // Recorded before waiting: once sent, every shard will apply it in order, even late.
        let ops: Arc<[UserOp]> = self.sets.record(&change, Some(epoch)).into();
        let change = Arc::new(change);
        self.shards.broadcast(epoch, change, ops, APPLY_TIMEOUT).await.map_err(ChangeError::Shards)?;
        // Every shard has applied this epoch, and so every earlier one.
        self.sets.slots.reclaim(epoch);
        Ok(epoch)
    }
}

impl UserSets {
    /// The user sets as a config starts them.
    pub fn from_config(config: &Config) -> UserSets {
        let mut sets = UserSets::default();
        for i in &config.inbounds {
            let mut entry = InboundUsers { tag: i.tag.clone(), ..Default::default() };
            match &i.protocol {
                InboundProtocol::Vless(_) => {
                    entry.protocol = "vless";
                    entry.has_users = true;
                }
                InboundProtocol::Dokodemo(_) => entry.protocol = "dokodemo-door",
            }
            sets.inbounds.push(entry);
        }
        for (i, inbound) in config.inbounds.iter().enumerate() {
            if let InboundProtocol::Vless(v) = &inbound.protocol {
                for u in &v.clients {
                    sets.add_user(i, u);
                }
            }
        }
        sets
    }

    /// What each inbound starts with on the shards (config order): its users as adds. The
    /// shards read these, not the config's `clients`, which the caller may then drop.
    pub fn initial_ops(&self) -> Vec<Vec<UserOp>> {
        self.inbounds
            .iter()
            .map(|inbound| {
                inbound
                    .users
                    .iter()
                    .map(|u| UserOp::Add {
                        user: UserKey { id: u.id, slot: u.slot, level: u.level },
                        email: u.shared_email.cloned(),
                        new_slot: u.slot != NO_SLOT,
                    })
                    .collect()
            })
            .collect()
    }

    /// Every inbound, in config order.
    pub fn inbounds(&self) -> &[InboundUsers] {
        &self.inbounds
    }

    /// The inbound with this tag.
    pub fn inbound(&self, tag: &str) -> Result<&InboundUsers, ChangeError> {
        self.inbounds.iter().find(|i| i.tag == tag).ok_or_else(|| ChangeError::InboundNotFound(tag.to_owned()))
    }

    /// The counter slots, with their emails.
    pub fn slots(&self) -> Slots<'_> {
        Slots::new(&self.slots, self.inbounds.iter().map(|i| &i.users).collect())
    }

    /// The counter slots, to set offsets.
    pub fn slots_mut(&mut self) -> &mut SlotBook {
        &mut self.slots
    }

    /// The slot of the user with this email: the first inbound listing it (any ASCII case).
    pub fn stat_user(&self, email: &str) -> Option<SlotView<'_>> {
        let slot = self.inbounds.iter().find_map(|i| i.by_email(email)).map(|u| u.slot)?;
        self.slots().get(slot)
    }

    /// Checks and records `change` (for replaying a journal).
    pub fn apply(&mut self, change: &Change) -> Result<(), ChangeError> {
        self.check(change)?;
        self.record(change, None);
        Ok(())
    }

    /// Whether `change` applies to the sets as they are.
    pub fn check(&self, change: &Change) -> Result<(), ChangeError> {
        let inbound = self.inbound(change.inbound())?;
        if !inbound.has_users {
            return Err(ChangeError::NoUsers(inbound.tag.clone()));
        }
        let exists = |email: &str| inbound.by_email(email).is_some();
        match change {
            Change::AddUsers { users, .. } => {
                let mut emails = std::collections::HashSet::new();
                let mut ids = std::collections::HashSet::new();
                for u in users {
                    if u.email.is_empty() {
                        return Err(ChangeError::MissingEmail);
                    }
                    if exists(&u.email) || !emails.insert(u.email.to_ascii_lowercase()) {
                        return Err(ChangeError::AlreadyExists(u.email.clone()));
                    }
                    if inbound.users.contains_id(&u.id) || !ids.insert(u.id) {
                        return Err(ChangeError::AlreadyExists(u.id.to_string()));
                    }
                }
            }
            Change::RemoveUsers { emails, .. } => {
                for e in emails {
                    if !exists(e) {
                        return Err(ChangeError::UserNotFound(e.clone()));
                    }
                }
            }
            Change::SetLevel { email, .. } | Change::Kick { email, .. } => {
                if !exists(email) {
                    return Err(ChangeError::UserNotFound(email.clone()));
                }
            }
            Change::ReplaceUsers { users, .. } => {
                let mut emails = std::collections::HashSet::new();
                let mut ids = std::collections::HashSet::new();
                for u in users {
                    if !u.email.is_empty() && !emails.insert(u.email.to_ascii_lowercase()) {
                        return Err(ChangeError::AlreadyExists(u.email.clone()));
                    }
                    if !ids.insert(u.id) {
                        return Err(ChangeError::AlreadyExists(u.id.to_string()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Records `change` and returns what the shards must do for it. `epoch` is the change's
    /// (`None` while no shard runs): a slot it frees is reused only once every shard has
    /// applied it.
    fn record(&mut self, change: &Change, epoch: Option<u64>) -> Vec<UserOp> {
        let Some(i) = self.inbounds.iter().position(|i| i.tag == change.inbound()) else {
            return Vec::new();
        };
        match change {
            Change::AddUsers { users, .. } => users.iter().map(|u| self.add_user(i, u)).collect(),
            Change::RemoveUsers { emails, .. } => {
                let mut ops = Vec::with_capacity(emails.len());
                for e in emails {
                    if let Some((id, slot, email)) = self.inbounds[i].users.remove_email(e) {
                        ops.push(self.release(i, id, slot, email, epoch));
                    }
                }
                ops
            }
            Change::SetLevel { email, level, .. } => {
                let Some((id, slot)) = self.inbounds[i].users.set_level(email, *level) else {
                    return Vec::new();
                };
                if slot != NO_SLOT {
                    self.slots.set_level(slot, i as u32, *level);
                }
                vec![UserOp::SetLevel { id, level: *level }]
            }
            Change::Kick { email, .. } => {
                self.inbounds[i].by_email(email).map(|u| UserOp::Kick { id: u.id }).into_iter().collect()
            }
            Change::ReplaceUsers { users, .. } => {
                // Users that stay (same id and email) keep their sessions and counters.
                let wanted: rustc_hash::FxHashMap<Uuid, &UserSpec> = users.iter().map(|u| (u.id, u)).collect();
                let gone: Vec<Uuid> = self.inbounds[i]
                    .users
                    .iter()
                    .filter(|u| !wanted.get(&u.id).is_some_and(|w| w.email.eq_ignore_ascii_case(u.email)))
                    .map(|u| u.id)
                    .collect();
                let mut ops = Vec::with_capacity(gone.len() + users.len());
                for id in gone {
                    if let Some((id, slot, email)) = self.inbounds[i].users.remove_id(&id) {
                        ops.push(self.release(i, id, slot, email, epoch));
                    }
                }
                for u in users {
                    let kept = self.inbounds[i].users.by_email(&u.email).filter(|k| k.id == u.id).map(|k| k.level);
                    match kept {
                        Some(level) if level == u.level => {}
                        Some(_) if !u.email.is_empty() => {
                            if let Some((id, slot)) = self.inbounds[i].users.set_level(&u.email, u.level) {
                                self.slots.set_level(slot, i as u32, u.level);
                                ops.push(UserOp::SetLevel { id, level: u.level });
                            }
                        }
                        _ if self.inbounds[i].users.contains_id(&u.id) => {
                            // Kept without an email: only its level can change, by replacing it.
                            self.inbounds[i].users.remove_id(&u.id);
                            self.inbounds[i].users.insert(u.id, None, NO_SLOT, u.level);
                            ops.push(UserOp::SetLevel { id: u.id, level: u.level });
                        }
                        _ => ops.push(self.add_user(i, u)),
                    }
                }
                ops
            }
        }
    }

    /// Adds a user to inbound `i`, sharing the slot of its email if another inbound lists it.
    fn add_user(&mut self, i: usize, u: &UserSpec) -> UserOp {
        let key = |slot| UserKey { id: u.id, slot, level: u.level };
        if u.email.is_empty() {
            self.inbounds[i].users.insert(u.id, None, NO_SLOT, u.level);
            return UserOp::Add { user: key(NO_SLOT), email: None, new_slot: false };
        }
        // The same email (exactly: counters are named by it) in another inbound shares its slot.
        let shared = self
            .inbounds
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .find_map(|(_, other)| other.by_email(&u.email).filter(|o| o.email == u.email))
            .and_then(|o| Some((o.slot, o.shared_email?.clone())));
        let inbound = i as u32;
        let (slot, email, new_slot) = match shared {
            Some((slot, email)) => {
                let rec = self.inbounds[i].users.insert(u.id, Some(email.clone()), slot, u.level);
                self.slots.share(slot, inbound, u.level, rec);
                (slot, email, false)
            }
            None => {
                let email: Arc<str> = u.email.as_str().into();
                let slot = self.slots.take(u.level, inbound);
                let rec = self.inbounds[i].users.insert(u.id, Some(email.clone()), slot, u.level);
                self.slots.place(slot, inbound, rec);
                (slot, email, true)
            }
        };
        UserOp::Add { user: key(slot), email: Some(email), new_slot }
    }

    /// The shards' side of removing user `id` (slot `slot`, email `email`) from inbound `i`,
    /// which the caller has taken out of the inbound's table.
    fn release(&mut self, i: usize, id: Uuid, slot: u32, email: Option<Arc<str>>, epoch: Option<u64>) -> UserOp {
        if slot == NO_SLOT {
            return UserOp::Remove { id, slot, free_slot: false };
        }
        let UserSets { inbounds, slots } = self;
        let next_owner = || {
            let email = email?;
            inbounds.iter().enumerate().filter(|(j, _)| *j != i).find_map(|(j, other)| {
                other.by_email(&email).filter(|o| o.slot == slot).map(|o| (j as u32, o.level, o.rec))
            })
        };
        let free_slot = slots.release(slot, i as u32, epoch, next_owner);
        UserOp::Remove { id, slot, free_slot }
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
