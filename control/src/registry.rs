//! The authoritative registry: every inbound's users as the API has left them, and the epoch
//! counter. A change is checked here, numbered, sent to every shard, and recorded once the
//! shards have acknowledged it, one change at a time, so epochs apply in order everywhere.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shardray_core::change::Change;
use shardray_core::routes::{RouteError, RouteSpecs};
use shardray_core::spec::{Config, InboundProtocol, InboundSpec, UserSpec};
use uuid::Uuid;

use crate::journal::Journal;
use crate::server::{bind_reuseport, BroadcastError, ShardLinks};

/// How long a change may take to be applied by every shard before the call fails.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// One inbound's users.
#[derive(Debug, Clone)]
pub struct InboundUsers {
    /// The inbound as it was configured or added, with its bound address and without its
    /// users (`users` is the live set; `UserSets::write_into` puts them back).
    pub spec: Arc<InboundSpec>,
    /// Whether the inbound comes from the config file (else the API added it).
    pub from_config: bool,
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
    /// The entry for an inbound; its configured users move into the live set.
    fn new(spec: &InboundSpec, from_config: bool) -> InboundUsers {
        let mut entry = InboundUsers {
            tag: spec.tag.clone(),
            protocol: "",
            has_users: false,
            users: HashMap::new(),
            by_email: HashMap::new(),
            spec: Arc::new(spec.clone_without_users()),
            from_config,
        };
        match &spec.protocol {
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
    }

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
    /// An inbound with this tag already exists.
    TagExists(String),
    /// An added inbound needs a tag, so that it can be managed and removed.
    MissingTag,
    /// An added inbound's address could not be bound.
    Listen(String),
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
            ChangeError::TagExists(tag) => write!(f, "existing tag found: {tag}"),
            ChangeError::MissingTag => f.write_str("an inbound added through the API needs a tag"),
            ChangeError::Listen(e) => write!(f, "{e}"),
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
    /// Tags of config inbounds the API removed (so a compacted journal still removes them).
    removed_from_config: Vec<String>,
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
    pub async fn apply(&mut self, mut change: Change) -> Result<u64, ChangeError> {
        if change.inbound().is_some() {
            self.sets.check(&change)?;
        } else {
            self.routes.check(&change).map_err(ChangeError::Route)?;
        }
        // An added inbound is bound here, once per shard, before anything is written: a taken
        // port fails the call with nothing changed. A port of 0 is recorded as the one bound.
        let mut listeners = Vec::new();
        if let Change::AddInbound { spec } = &mut change {
            let (sockets, bound) = bind_reuseport(spec.listen, self.shards.count())
                .map_err(|e| ChangeError::Listen(format!("cannot listen on {}: {e}", spec.listen)))?;
            Arc::make_mut(spec).listen = bound;
            listeners = sockets;
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
        self.shards.broadcast(epoch, change, listeners, APPLY_TIMEOUT).await.map_err(ChangeError::Shards)?;
        Ok(epoch)
    }

    /// The inbounds as they run now, without their users, for the running config (the
    /// registry holds the live users).
    pub fn inbound_specs(&self) -> Vec<InboundSpec> {
        self.sets.inbounds.iter().map(|i| (*i.spec).clone()).collect()
    }
}

impl UserSets {
    /// The user sets as a config starts them.
    pub fn from_config(config: &Config) -> UserSets {
        let inbounds = config.inbounds.iter().map(|i| InboundUsers::new(i, true)).collect();
        UserSets { inbounds, removed_from_config: Vec::new() }
    }

    /// Writes the inbounds and their users back into `config`, so shards start with them: the
    /// config's inbounds the API did not remove, then those it added.
    pub fn write_into(&self, config: &mut Config) {
        config.inbounds = self
            .inbounds
            .iter()
            .map(|entry| {
                let mut inbound = (*entry.spec).clone();
                if let InboundProtocol::Vless(v) = &mut inbound.protocol {
                    let mut clients: Vec<UserSpec> = entry.users.values().cloned().collect();
                    clients.sort_by(|a, b| a.email.cmp(&b.email));
                    v.clients = clients;
                }
                inbound
            })
            .collect();
    }

    /// Records where the config's inbounds were bound (a port of 0 becomes the real one).
    pub fn set_bound(&mut self, bound: &[(String, SocketAddr)]) {
        for (tag, addr) in bound {
            if let Some(entry) = self.inbounds.iter_mut().find(|i| &i.tag == tag) {
                Arc::make_mut(&mut entry.spec).listen = *addr;
            }
        }
    }

    /// Config inbounds the API removed.
    pub fn removed_from_config(&self) -> &[String] {
        &self.removed_from_config
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
        match change {
            Change::AddInbound { spec } if spec.tag.is_empty() => return Err(ChangeError::MissingTag),
            Change::AddInbound { spec } if self.inbound(&spec.tag).is_ok() => {
                return Err(ChangeError::TagExists(spec.tag.clone()))
            }
            Change::AddInbound { .. } => return Ok(()),
            Change::RemoveInbound { tag } => return self.inbound(tag).map(|_| ()),
            _ => {}
        }
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
            Change::AddInbound { .. }
            | Change::RemoveInbound { .. }
            | Change::AddOutbound { .. }
            | Change::RemoveOutbound { .. }
            | Change::AddRules { .. }
            | Change::RemoveRule { .. }
            | Change::OverrideBalancer { .. } => {}
        }
        Ok(())
    }

    fn record(&mut self, change: &Change) {
        match change {
            Change::AddInbound { spec } => {
                self.inbounds.push(InboundUsers::new(spec, false));
                return;
            }
            Change::RemoveInbound { tag } => {
                if let Some(at) = self.inbounds.iter().position(|i| &i.tag == tag) {
                    if self.inbounds.remove(at).from_config {
                        self.removed_from_config.push(tag.clone());
                    }
                }
                return;
            }
            _ => {}
        }
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
            | Change::AddInbound { .. }
            | Change::RemoveInbound { .. }
            | Change::AddOutbound { .. }
            | Change::RemoveOutbound { .. }
            | Change::AddRules { .. }
            | Change::RemoveRule { .. }
            | Change::OverrideBalancer { .. } => {}
        }
    }
}
