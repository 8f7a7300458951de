//! The authoritative registry: every inbound's users as the API has left them, and the epoch
//! counter. A change is checked here, numbered, sent to every shard, and recorded once the
//! shards have acknowledged it, one change at a time, so epochs apply in order everywhere.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use shardray_core::change::Change;
use shardray_core::routes::{RouteError, RouteSpecs};
use shardray_core::spec::{Config, InboundProtocol, UserSpec};
use uuid::Uuid;

use crate::journal::Journal;
use crate::server::{BroadcastError, ShardLinks};

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
    /// Users by id.
    pub users: HashMap<Uuid, UserSpec>,
    /// Ids by lowercase email, for users that have one.
    by_email: HashMap<String, Uuid>,
}

impl InboundUsers {
    /// The user with this email (any ASCII case).
    pub fn by_email(&self, email: &str) -> Option<&UserSpec> {
        self.by_email.get(&email.to_ascii_lowercase()).and_then(|id| self.users.get(id))
    }

    fn insert(&mut self, user: UserSpec) {
        if !user.email.is_empty() {
            self.by_email.insert(user.email.to_ascii_lowercase(), user.id);
        }
        self.users.insert(user.id, user);
    }

    fn remove(&mut self, email: &str) -> Option<UserSpec> {
        let id = self.by_email.remove(&email.to_ascii_lowercase())?;
        self.users.remove(&id)
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
    /// An outbound or routing change that does not apply.
    Route(RouteError),
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
            ChangeError::Route(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ChangeError {}

/// Every inbound's users: pure data, checked and changed one `Change` at a time. The registry
/// holds the live copy; start-up replays the journal into one before the shards exist.
#[derive(Debug, Clone, Default)]
pub struct UserSets {
    inbounds: Vec<InboundUsers>,
}

/// The registry: the user sets, the outbounds and routing, the epoch counter, the journal and
/// the way to the shards.
pub struct Registry {
    epoch: u64,
    sets: UserSets,
    routes: RouteSpecs,
    journal: Option<Journal>,
    shards: ShardLinks,
}

impl Registry {
    /// The registry for running shards that started from `sets`; changes are journaled if
    /// a journal is given. The outbounds and routing are those of the shards' config.
    pub fn new(sets: UserSets, journal: Option<Journal>, shards: ShardLinks) -> Registry {
        let routes = RouteSpecs::from_config(&shards.config);
        Registry { epoch: 0, sets, routes, journal, shards }
    }

    /// The outbounds, routing and balancer overrides as of the last change.
    pub fn routes(&self) -> &RouteSpecs {
        &self.routes
    }

    /// Every inbound, in config order.
    pub fn inbounds(&self) -> &[InboundUsers] {
        &self.sets.inbounds
    }

    /// The inbound with this tag.
    pub fn inbound(&self, tag: &str) -> Result<&InboundUsers, ChangeError> {
        self.sets.inbound(tag)
    }

    /// Every user with an email, with its level, for counters.
    pub fn stat_users(&self) -> Vec<(String, u32)> {
        self.sets.stat_users()
    }

    /// One user's email and level, for reading its counters.
    pub fn stat_user(&self, email: &str) -> Option<(String, u32)> {
        self.sets.stat_user(email)
    }

    /// Checks `change`, writes it to the journal, sends it to every shard as the next epoch,
    /// waits for them all, and returns the epoch.
    pub async fn apply(&mut self, change: Change) -> Result<u64, ChangeError> {
        if change.inbound().is_some() {
            self.sets.check(&change)?;
        } else {
            self.routes.check(&change).map_err(ChangeError::Route)?;
        }
        if let Some(journal) = &mut self.journal {
            // Write-ahead: on disk before any shard sees it, so a crash loses no acknowledged change.
            journal.append(&change).map_err(|e| ChangeError::Journal(e.to_string()))?;
        }
        self.epoch += 1;
        let epoch = self.epoch;
        let change = Arc::new(change);
        // Recorded before waiting: once sent, every shard will apply it in order, even late.
        if change.inbound().is_some() {
            self.sets.record(&change);
        } else {
            self.routes.apply(&change).map_err(ChangeError::Route)?;
        }
        self.shards.broadcast(epoch, change, APPLY_TIMEOUT).await.map_err(ChangeError::Shards)?;
        Ok(epoch)
    }
}

impl UserSets {
    /// The user sets as a config starts them.
    pub fn from_config(config: &Config) -> UserSets {
        let inbounds = config
            .inbounds
            .iter()
            .map(|i| {
                let mut entry = InboundUsers { tag: i.tag.clone(), ..Default::default() };
                match &i.protocol {
                    InboundProtocol::Vless(v) => {
                        entry.protocol = "vless";
                        entry.has_users = true;
                        for u in &v.clients {
                            entry.insert(u.clone());
                        }
                    }
                    InboundProtocol::Dokodemo(_) => entry.protocol = "dokodemo-door",
                }
                entry
            })
            .collect();
        UserSets { inbounds }
    }

    /// Writes the user sets back into `config`, so shards start with them.
    pub fn write_into(&self, config: &mut Config) {
        for (inbound, users) in config.inbounds.iter_mut().zip(&self.inbounds) {
            if let InboundProtocol::Vless(v) = &mut inbound.protocol {
                let mut clients: Vec<UserSpec> = users.users.values().cloned().collect();
                clients.sort_by(|a, b| a.email.cmp(&b.email));
                v.clients = clients;
            }
        }
    }

    /// Every inbound, in config order.
    pub fn inbounds(&self) -> &[InboundUsers] {
        &self.inbounds
    }

    /// The inbound with this tag.
    pub fn inbound(&self, tag: &str) -> Result<&InboundUsers, ChangeError> {
        self.inbounds.iter().find(|i| i.tag == tag).ok_or_else(|| ChangeError::InboundNotFound(tag.to_owned()))
    }

    /// Every user with an email, with its level, for counters (an email in several inbounds
    /// appears once, with the first inbound's level).
    pub fn stat_users(&self) -> Vec<(String, u32)> {
        let with_users: Vec<&InboundUsers> = self.inbounds.iter().filter(|i| !i.users.is_empty()).collect();
        let mut out = Vec::with_capacity(with_users.iter().map(|i| i.users.len()).sum());
        // With one inbound (the common case) emails are unique already: no set needed.
        let mut seen = (with_users.len() > 1).then(rustc_hash::FxHashSet::<&str>::default);
        for inbound in with_users {
            for u in inbound.users.values().filter(|u| !u.email.is_empty()) {
                if seen.as_mut().is_none_or(|s| s.insert(u.email.as_str())) {
                    out.push((u.email.clone(), u.level));
                }
            }
        }
        out
    }

    /// One user's email and level, as `stat_users` would list it (first inbound wins).
    pub fn stat_user(&self, email: &str) -> Option<(String, u32)> {
        self.inbounds.iter().find_map(|i| i.by_email(email)).map(|u| (u.email.clone(), u.level))
    }

    /// Checks and records `change` (for replaying a journal).
    pub fn apply(&mut self, change: &Change) -> Result<(), ChangeError> {
        self.check(change)?;
        self.record(change);
        Ok(())
    }

    /// Whether `change` applies to the sets as they are.
    pub fn check(&self, change: &Change) -> Result<(), ChangeError> {
        let Some(tag) = change.inbound() else {
            return Ok(());
        };
        let inbound = self.inbound(tag)?;
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
                    if inbound.users.contains_key(&u.id) || !ids.insert(u.id) {
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
            Change::AddOutbound { .. }
            | Change::RemoveOutbound { .. }
            | Change::AddRules { .. }
            | Change::RemoveRule { .. }
            | Change::OverrideBalancer { .. } => {}
        }
        Ok(())
    }

    fn record(&mut self, change: &Change) {
        let Some(inbound) = self.inbounds.iter_mut().find(|i| Some(i.tag.as_str()) == change.inbound()) else {
            return;
        };
        match change {
            Change::AddUsers { users, .. } => {
                for u in users {
                    inbound.insert(u.clone());
                }
            }
            Change::RemoveUsers { emails, .. } => {
                for e in emails {
                    inbound.remove(e);
                }
            }
            Change::SetLevel { email, level, .. } => {
                if let Some(id) = inbound.by_email.get(&email.to_ascii_lowercase()).copied() {
                    if let Some(u) = inbound.users.get_mut(&id) {
                        u.level = *level;
                    }
                }
            }
            Change::ReplaceUsers { users, .. } => {
                inbound.users.clear();
                inbound.by_email.clear();
                for u in users {
                    inbound.insert(u.clone());
                }
            }
            Change::Kick { .. }
            | Change::AddOutbound { .. }
            | Change::RemoveOutbound { .. }
            | Change::AddRules { .. }
            | Change::RemoveRule { .. }
            | Change::OverrideBalancer { .. } => {}
        }
    }
}
