//! The authoritative registry: every inbound's users as the API has left them, and the epoch
//! counter. A change is checked here, numbered, sent to every shard, and recorded once the
//! shards have acknowledged it, one change at a time, so epochs apply in order everywhere.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shardray_core::change::Change;
use shardray_core::events::{UserEvent, UserEventKind};
use shardray_core::quota::SuspendReason;
use shardray_core::routes::{RouteError, RouteSpecs};
use shardray_core::slots::{UserKey, UserOp, NO_SLOT, REMOVAL_GRACE};
use shardray_core::spec::{Account, Config, InboundSpec, UserSpec};

use crate::journal::Journal;
use crate::server::{bind_inbound, BroadcastError, ShardLinks};
use crate::slots::{InboundUserTable, SlotBook, SlotQuota, SlotView, Slots, UserRef};

/// How long a change may take to be applied by every shard before the call fails.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// One inbound's users.
#[derive(Debug, Clone)]
pub struct InboundUsers {
    /// The inbound as it was configured or added, with its bound address and without its
    /// users (`users` is the live set).
    pub spec: Arc<InboundSpec>,
    /// Whether the inbound comes from the config file (else the API added it).
    pub from_config: bool,
    /// The inbound's tag.
    pub tag: String,
    /// The inbound's protocol, as config names it ("vless", "trojan", "dokodemo-door").
    pub protocol: &'static str,
    /// Whether the inbound has users at all (dokodemo-door does not).
    pub has_users: bool,
    /// Users, by id and by email.
    pub users: InboundUserTable,
}

impl InboundUsers {
    /// The entry for an inbound, with no users yet.
    fn new(spec: &InboundSpec, from_config: bool) -> InboundUsers {
        let (protocol, has_users) = (spec.protocol.account_protocol(), spec.protocol.clients().is_some());
        InboundUsers {
            spec: Arc::new(spec.clone_without_users()),
            from_config,
            tag: spec.tag.clone(),
            protocol,
            has_users,
            users: InboundUserTable::default(),
        }
    }

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
    /// An inbound with this tag already exists.
    TagExists(String),
    /// An added inbound needs a tag, so that it can be managed and removed.
    MissingTag,
    /// An added inbound's address could not be bound.
    Listen(String),
    /// An outbound or routing change that does not apply.
    Route(RouteError),
    /// A user whose flow the inbound cannot serve (Vision off TLS): the user and why.
    FlowRefused(String, &'static str),
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
            ChangeError::FlowRefused(who, why) => write!(f, "user {who}: flow \"xtls-rprx-vision\" refused: {why}"),
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
    /// Tags of config inbounds the API removed (so a compacted journal still removes them).
    removed_from_config: Vec<String>,
    /// Users removed within `REMOVAL_GRACE` whose slot is held for them (see `revive`).
    leaving: Leaving,
}

/// Users removed from an inbound whose counter slots wait for an add of the same user, by
/// inbound tag and account, and in the order their graces end (a panel's resync removes and
/// adds every user: both stay O(1) a user).
#[derive(Debug, Clone, Default)]
struct Leaving {
    by_user: rustc_hash::FxHashMap<(String, Account), LeavingUser>,
    order: std::collections::VecDeque<(std::time::Instant, String, Account)>,
}

/// A removed user whose slot is held until `until`, for an add of the same user.
#[derive(Debug, Clone)]
struct LeavingUser {
    email: Arc<str>,
    slot: u32,
    until: std::time::Instant,
    /// The slot's quota cell and suspension: sessions kept through the grace count into that
    /// cell, which an add takes back with the slot.
    quota: Option<SlotQuota>,
}

impl Leaving {
    fn push(
        &mut self,
        tag: String,
        account: Account,
        email: Arc<str>,
        slot: u32,
        until: std::time::Instant,
        quota: Option<SlotQuota>,
    ) {
        self.order.push_back((until, tag.clone(), account.clone()));
        self.by_user.insert((tag, account), LeavingUser { email, slot, until, quota });
    }

    /// Forgets the users whose grace ended by `now`.
    fn prune(&mut self, now: std::time::Instant) {
        while self.order.front().is_some_and(|(until, ..)| *until <= now) {
            let (until, tag, account) = self.order.pop_front().expect("just checked");
            let key = (tag, account);
            if self.by_user.get(&key).is_some_and(|l| l.until == until) {
                self.by_user.remove(&key);
            }
        }
    }
}

/// Where a change comes from: the API, or a config reload (see `crate::reload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A management API call (or the journal's replay of one).
    Api,
    /// The config files, reread: an inbound it adds counts as the config's, and only its user
    /// changes are journaled (the next start reads the files again for the rest).
    File,
}

/// The registry: the user sets, the outbounds and routing, the epoch counter, the journal and
/// the way to the shards.
pub struct Registry {
    epoch: u64,
    sets: UserSets,
    routes: RouteSpecs,
    journal: Option<Journal>,
    shards: ShardLinks,
    /// The outbound and routing changes the API made (since the journal's start), in order: a
    /// reload replays them over the files' routes, as the next start replays the journal.
    api_routes: Vec<Change>,
}

impl Registry {
    /// The registry for running shards that started from `sets`; changes are journaled if
    /// a journal is given. The outbounds and routing are those of the shards' config.
    pub fn new(sets: UserSets, journal: Option<Journal>, shards: ShardLinks) -> Registry {
        let routes = RouteSpecs::from_config(&shards.config);
        Registry { epoch: 0, sets, routes, journal, shards, api_routes: Vec::new() }
    }

    /// Sets the API's outbound and routing changes that start-up replayed from the journal.
    pub fn set_api_routes(&mut self, changes: Vec<Change>) {
        self.api_routes = changes;
    }

    /// The API's outbound and routing changes, in order.
    pub fn api_routes(&self) -> &[Change] {
        &self.api_routes
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

    /// The user sets as of the last change.
    pub fn sets(&self) -> &UserSets {
        &self.sets
    }

    /// Config inbounds the API removed (a reload leaves them removed).
    pub fn removed_from_config(&self) -> &[String] {
        self.sets.removed_from_config()
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
        self.apply_from(change, Origin::Api).await
    }

    /// `apply` for a change from `origin`.
    pub async fn apply_from(&mut self, mut change: Change, origin: Origin) -> Result<u64, ChangeError> {
        if change.inbound().is_some() {
            self.sets.check(&change)?;
        } else {
            self.routes.check(&change).map_err(ChangeError::Route)?;
        }
        // An added inbound is bound here, once per shard, before anything is written: a taken
        // port fails the call with nothing changed. A port of 0 is recorded as the one bound.
        let mut listeners = Vec::new();
        if let Change::AddInbound { spec } | Change::ReplaceInbound { spec, rebind: true } = &mut change {
            let (sockets, bound) = bind_inbound(spec, self.shards.count())
                .map_err(|e| ChangeError::Listen(format!("cannot listen on {}: {e}", spec.listen_text())))?;
            Arc::make_mut(spec).listen = bound;
            listeners = sockets;
        }
        let journaled = match (origin, &change) {
            (Origin::Api, _) => true,
            // The next start replays the API's removal of this config inbound: the files'
            // inbound must come back after it there too.
            (Origin::File, Change::AddInbound { spec }) => self.sets.removed_from_config.contains(&spec.tag),
            (Origin::File, change) => matches!(
                change,
                Change::AddUsers { .. }
                    | Change::RemoveUsers { .. }
                    | Change::SetLevel { .. }
                    | Change::SetQuota { .. }
                    | Change::ReplaceUsers { .. }
            ),
        };
        if let Some(journal) = self.journal.as_mut().filter(|_| journaled) {
            // Write-ahead: on disk before any shard sees it, so a crash loses no acknowledged change.
            journal.append(&change).map_err(|e| ChangeError::Journal(e.to_string()))?;
        }
        self.epoch += 1;
        let epoch = self.epoch;
        // Recorded before waiting: once sent, every shard will apply it in order, even late.
        let ops: Arc<[UserOp]> = if change.inbound().is_some() {
            let ops = self.sets.record(&change, Some(epoch)).into();
            if origin == Origin::File {
                match &change {
                    Change::AddInbound { spec } => {
                        if let Some(entry) = self.sets.inbounds.iter_mut().rev().find(|i| i.tag == spec.tag) {
                            entry.from_config = true;
                        }
                        self.sets.removed_from_config.retain(|t| *t != spec.tag);
                    }
                    Change::RemoveInbound { tag } => self.sets.removed_from_config.retain(|t| t != tag),
                    _ => {}
                }
            }
            ops
        } else {
            self.routes.apply(&change).map_err(ChangeError::Route)?;
            if origin == Origin::Api && !matches!(change, Change::OverrideBalancer { .. } | Change::SetPolicy { .. }) {
                // Rules replaced make the rule changes before them moot: a panel that replaces
                // its rules every minute keeps one record, not one a minute.
                if matches!(change, Change::AddRules { append: false, .. }) {
                    self.api_routes.retain(|c| matches!(c, Change::AddOutbound { .. } | Change::RemoveOutbound { .. }));
                }
                self.api_routes.push(change.clone());
            }
            Arc::new([])
        };
        let change = Arc::new(change);
        self.shards.broadcast(epoch, change, ops, listeners, APPLY_TIMEOUT).await.map_err(ChangeError::Shards)?;
        // Every shard has applied this epoch, and so every earlier one.
        self.sets.slots.reclaim(epoch);
        Ok(epoch)
    }

    /// Suspends on every shard the users whose quota is used up or whose expiry has passed at
    /// `now` (unix seconds), and resumes those for which neither holds any more; `only` limits
    /// it to one slot. Returns an event for each inbound a user was suspended or resumed in.
    pub async fn reconcile(&mut self, only: Option<u32>, now: u64) -> (Vec<UserEvent>, Vec<ChangeError>) {
        let todo: Vec<(u32, Option<SuspendReason>, Option<SuspendReason>)> = self
            .sets
            .slots
            .quotas()
            .filter(|(slot, _)| only.is_none_or(|o| o == *slot))
            .filter_map(|(slot, q)| {
                let want = q.cell.breach(now);
                (want != q.suspended).then_some((slot, want, q.suspended))
            })
            .collect();
        let (mut events, mut failed) = (Vec::new(), Vec::new());
        for (slot, want, was) in todo {
            let Some(email) = self.slots().get(slot).map(|v| v.email.clone()) else {
                self.sets.slots.set_suspended(slot, None);
                continue;
            };
            let tags: Vec<String> = self
                .sets
                .inbounds
                .iter()
                .filter(|i| i.by_email(&email).is_some_and(|u| u.slot == slot))
                .map(|i| i.tag.clone())
                .collect();
            let kind = want.map_or(UserEventKind::Resumed, UserEventKind::Suspended);
            for tag in tags {
                let change = Change::Suspend { inbound: tag.clone(), email: email.to_string(), reason: want };
                if let Err(e) = self.apply(change).await {
                    // Marked as it was, so that the next round tries this user again on every
                    // inbound; the other users go on meanwhile.
                    self.sets.slots.set_suspended(slot, was);
                    failed.push(e);
                    break;
                }
                events.push(UserEvent::now(kind, email.clone(), tag.into()));
            }
        }
        (events, failed)
    }

    /// The quota cell that user `email` of inbound `tag` counts into now, if any.
    pub fn quota_cell(&self, tag: &str, email: &str) -> Option<Arc<shardray_core::quota::QuotaCell>> {
        let slot = self.inbound(tag).ok()?.by_email(email)?.slot;
        self.sets.slots.quota(slot).filter(|q| q.cell.spec().is_set()).map(|q| q.cell.clone())
    }

    /// After a change of `email`'s quota on `tag` (its cell `before`): live sessions count
    /// into the cell they took when they started, so if the user now counts into a new one
    /// (it had none), its sessions on every inbound are closed, and what the client opens
    /// next counts from its first byte.
    pub async fn rebind_quota(
        &mut self,
        tag: &str,
        email: &str,
        before: Option<Arc<shardray_core::quota::QuotaCell>>,
    ) -> Result<(), ChangeError> {
        let Some(after) = self.quota_cell(tag, email) else { return Ok(()) };
        if before.is_some_and(|b| Arc::ptr_eq(&b, &after)) {
            return Ok(());
        }
        let tags: Vec<String> =
            self.sets.inbounds.iter().filter(|i| i.by_email(email).is_some()).map(|i| i.tag.clone()).collect();
        for tag in tags {
            self.apply(Change::Kick { inbound: tag, email: email.to_owned() }).await?;
        }
        Ok(())
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
        let mut sets = UserSets::default();
        for i in &config.inbounds {
            sets.inbounds.push(InboundUsers::new(i, true));
        }
        let mut ops = Vec::new();
        for (i, inbound) in config.inbounds.iter().enumerate() {
            for u in inbound.protocol.clients().unwrap_or_default() {
                sets.add_user(i, u, &mut ops);
                ops.clear();
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
                let mut ops = Vec::with_capacity(inbound.users.len());
                for u in inbound.users.iter() {
                    self.start_ops(&u, u.slot != NO_SLOT, &mut ops);
                }
                ops
            })
            .collect()
    }

    /// What a shard's new table of an inbound needs for user `u`: its add, then its quota cell
    /// and suspension if it has them.
    fn start_ops(&self, u: &UserRef<'_>, new_slot: bool, ops: &mut Vec<UserOp>) {
        ops.push(UserOp::Add {
            user: UserKey { id: u.account.key(), slot: u.slot, level: u.level, vision: u.account.vision() },
            email: u.shared_email.cloned(),
            new_slot,
        });
        if let Some(q) = self.slots.quota(u.slot) {
            if q.cell.spec().is_set() {
                ops.push(UserOp::Quota { slot: u.slot, cell: Some(q.cell.clone()) });
            }
            if q.suspended.is_some() {
                ops.push(UserOp::Suspend { id: u.account.key(), suspended: true });
            }
        }
    }

    /// Marks the users whose quota is used up or whose expiry has passed at `now` (unix
    /// seconds) as suspended, before the shards start (they get it with `initial_ops`).
    pub fn suspend_breached(&mut self, now: u64) {
        let breached: Vec<(u32, Option<SuspendReason>)> =
            self.slots.quotas().map(|(slot, q)| (slot, q.cell.breach(now))).collect();
        for (slot, reason) in breached {
            self.slots.set_suspended(slot, reason);
        }
    }

    /// Every inbound, in config order.
    pub fn inbounds(&self) -> &[InboundUsers] {
        &self.inbounds
    }

    /// Makes `config`'s inbounds those of the sets, without users (the shards start from
    /// `initial_ops`): the config's inbounds the API did not remove, then those it added.
    pub fn write_inbounds_into(&self, config: &mut Config) {
        config.inbounds = self.inbounds.iter().map(|entry| (*entry.spec).clone()).collect();
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
        match change {
            Change::AddInbound { spec } if spec.tag.is_empty() => return Err(ChangeError::MissingTag),
            Change::AddInbound { spec } if self.inbound(&spec.tag).is_ok() => {
                return Err(ChangeError::TagExists(spec.tag.clone()))
            }
            Change::AddInbound { .. } => return Ok(()),
            Change::RemoveInbound { tag } => return self.inbound(tag).map(|_| ()),
            Change::ReplaceInbound { spec, .. } => {
                let inbound = self.inbound(&spec.tag)?;
                if inbound.protocol != spec.protocol.account_protocol() {
                    return Err(ChangeError::Listen(format!(
                        "inbound {} cannot become {} in place",
                        spec.tag,
                        spec.protocol.account_protocol()
                    )));
                }
                return Ok(());
            }
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
        if let Change::AddUsers { users, .. } | Change::ReplaceUsers { users, .. } = change {
            if let (Some(u), Some(why)) = (users.iter().find(|u| u.account.vision()), inbound.spec.vision_refused()) {
                return Err(ChangeError::FlowRefused(u.email.clone(), why));
            }
        }
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
                    if inbound.users.contains_id(&u.account) || !ids.insert(&u.account) {
                        return Err(ChangeError::AlreadyExists(account_label(&u.account)));
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
            Change::SetLevel { email, .. }
            | Change::Kick { email, .. }
            | Change::SetQuota { email, .. }
            | Change::Suspend { email, .. } => {
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
                    if !ids.insert(&u.account) {
                        return Err(ChangeError::AlreadyExists(account_label(&u.account)));
                    }
                }
            }
            Change::AddInbound { .. }
            | Change::ReplaceInbound { .. }
            | Change::RemoveInbound { .. }
            | Change::AddOutbound { .. }
            | Change::RemoveOutbound { .. }
            | Change::AddRules { .. }
            | Change::RemoveRule { .. }
            | Change::OverrideBalancer { .. }
            | Change::ReplaceRoutes { .. }
            | Change::SetPolicy { .. } => {}
        }
        Ok(())
    }

    /// Records `change` and returns what the shards must do for it. `epoch` is the change's
    /// (`None` while no shard runs): a slot it frees is reused only once every shard has
    /// applied it.
    fn record(&mut self, change: &Change, epoch: Option<u64>) -> Vec<UserOp> {
        if let Change::AddInbound { spec } = change {
            self.inbounds.push(InboundUsers::new(spec, false));
            let i = self.inbounds.len() - 1;
            let mut ops = Vec::new();
            for u in spec.protocol.clients().unwrap_or_default() {
                self.add_user(i, u, &mut ops);
            }
            return ops;
        }
        let Some(i) = self.inbounds.iter().position(|i| Some(i.tag.as_str()) == change.inbound()) else {
            return Vec::new();
        };
        match change {
            Change::ReplaceInbound { spec, .. } => {
                // Same users, same slots: the shards rebuild the inbound's table from these,
                // and counters go on where they were.
                self.inbounds[i].spec = Arc::new(spec.clone_without_users());
                let mut ops = Vec::with_capacity(self.inbounds[i].users.len());
                for u in self.inbounds[i].users.iter() {
                    self.start_ops(&u, false, &mut ops);
                }
                ops
            }
            Change::RemoveInbound { .. } => {
                let ids: Vec<Account> = self.inbounds[i].users.iter().map(|u| u.account.clone()).collect();
                let mut ops = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some((id, slot, email)) = self.inbounds[i].users.remove_id(&id) {
                        ops.push(self.release(i, id, slot, email, epoch));
                    }
                }
                let removed = self.inbounds.remove(i);
                // Slots name their owner inbound by position: those after `i` move up one.
                self.slots.inbound_removed(i as u32);
                if removed.from_config {
                    self.removed_from_config.push(removed.tag);
                }
                ops
            }
            Change::AddUsers { users, .. } => {
                let mut ops = Vec::with_capacity(users.len());
                for u in users {
                    self.add_user(i, u, &mut ops);
                }
                ops
            }
            Change::RemoveUsers { emails, .. } => {
                let mut ops = Vec::with_capacity(emails.len());
                let until = std::time::Instant::now() + REMOVAL_GRACE;
                self.leaving.prune(std::time::Instant::now());
                for e in emails {
                    if let Some((account, slot, email)) = self.inbounds[i].users.remove_email(e) {
                        let quota = self.slots.quota(slot).cloned();
                        let op = self.release(i, account.clone(), slot, email.clone(), epoch);
                        // The shards keep the user's sessions for the grace: so that an add of
                        // the same user takes them back, its slot (its counters, its rate) waits.
                        if let (UserOp::Remove { free_slot: true, .. }, Some(email)) = (&op, email) {
                            if self.slots.hold(slot, until) {
                                let inbound = self.inbounds[i].tag.clone();
                                self.leaving.push(inbound, account, email, slot, until, quota);
                            }
                        }
                        ops.push(op);
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
                vec![UserOp::SetLevel { id: id.key(), level: *level }]
            }
            Change::Kick { email, .. } => {
                self.inbounds[i].by_email(email).map(|u| UserOp::Kick { id: u.account.key() }).into_iter().collect()
            }
            Change::SetQuota { email, quota, .. } => {
                let Some(slot) = self.inbounds[i].by_email(email).map(|u| u.slot) else {
                    return Vec::new();
                };
                let cell = self.slots.set_quota(slot, *quota);
                vec![UserOp::Quota { slot, cell }]
            }
            Change::Suspend { email, reason, .. } => {
                let Some((id, slot)) = self.inbounds[i].by_email(email).map(|u| (u.account.key(), u.slot)) else {
                    return Vec::new();
                };
                self.slots.set_suspended(slot, *reason);
                vec![UserOp::Suspend { id, suspended: reason.is_some() }]
            }
            Change::ReplaceUsers { users, .. } => {
                // Users that stay (same id and email) keep their sessions and counters.
                let wanted: rustc_hash::FxHashMap<&Account, &UserSpec> =
                    users.iter().map(|u| (&u.account, u)).collect();
                let gone: Vec<Account> = self.inbounds[i]
                    .users
                    .iter()
                    .filter(|u| !wanted.get(u.account).is_some_and(|w| w.email.eq_ignore_ascii_case(u.email)))
                    .map(|u| u.account.clone())
                    .collect();
                let mut ops = Vec::with_capacity(gone.len() + users.len());
                for id in gone {
                    if let Some((id, slot, email)) = self.inbounds[i].users.remove_id(&id) {
                        ops.push(self.release(i, id, slot, email, epoch));
                    }
                }
                for u in users {
                    let kept =
                        self.inbounds[i].users.by_email(&u.email).filter(|k| *k.account == u.account).map(|k| k.level);
                    match kept {
                        Some(level) if level == u.level => {}
                        Some(_) if !u.email.is_empty() => {
                            if let Some((id, slot)) = self.inbounds[i].users.set_level(&u.email, u.level) {
                                self.slots.set_level(slot, i as u32, u.level);
                                ops.push(UserOp::SetLevel { id: id.key(), level: u.level });
                            }
                        }
                        _ if self.inbounds[i].users.contains_id(&u.account) => {
                            // Kept without an email: only its level can change, by replacing it.
                            self.inbounds[i].users.remove_id(&u.account);
                            self.inbounds[i].users.insert(u.account.clone(), None, NO_SLOT, u.level);
                            ops.push(UserOp::SetLevel { id: u.account.key(), level: u.level });
                        }
                        _ => self.add_user(i, u, &mut ops),
                    }
                }
                ops
            }
            Change::AddInbound { .. }
            | Change::AddOutbound { .. }
            | Change::RemoveOutbound { .. }
            | Change::AddRules { .. }
            | Change::RemoveRule { .. }
            | Change::OverrideBalancer { .. }
            | Change::ReplaceRoutes { .. }
            | Change::SetPolicy { .. } => Vec::new(),
        }
    }

    /// Adds a user to inbound `i`, sharing the slot of its email if another inbound lists it;
    /// pushes what the shards must do for it onto `ops`: its add, and its quota cell and
    /// suspension when it has them.
    fn add_user(&mut self, i: usize, u: &UserSpec, ops: &mut Vec<UserOp>) {
        let key = |slot| UserKey { id: u.account.key(), slot, level: u.level, vision: u.account.vision() };
        if u.email.is_empty() {
            self.inbounds[i].users.insert(u.account.clone(), None, NO_SLOT, u.level);
            ops.push(UserOp::Add { user: key(NO_SLOT), email: None, new_slot: false });
            return;
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
        let revived = if shared.is_none() { self.revive(i, u) } else { None };
        let back = revived.is_some();
        let (slot, email, new_slot) = match (shared, revived) {
            (Some((slot, email)), _) => {
                let rec = self.inbounds[i].users.insert(u.account.clone(), Some(email.clone()), slot, u.level);
                self.slots.share(slot, inbound, u.level, rec);
                (slot, email, false)
            }
            // Back within its grace: the same slot, its counters going on.
            (None, Some((slot, email))) => {
                let rec = self.inbounds[i].users.insert(u.account.clone(), Some(email.clone()), slot, u.level);
                self.slots.place(slot, inbound, rec);
                (slot, email, false)
            }
            (None, None) => {
                let email: Arc<str> = u.email.as_str().into();
                let slot = self.slots.take(u.level, inbound);
                let rec = self.inbounds[i].users.insert(u.account.clone(), Some(email.clone()), slot, u.level);
                self.slots.place(slot, inbound, rec);
                (slot, email, true)
            }
        };
        ops.push(UserOp::Add { user: key(slot), email: Some(email), new_slot });
        // The quota belongs to the email: a user that names one sets it for every inbound.
        if u.quota.is_set() {
            let cell = self.slots.set_quota(slot, u.quota);
            ops.push(UserOp::Quota { slot, cell });
        } else if let Some(q) = self.slots.quota(slot).filter(|q| back && q.cell.spec().is_set()) {
            // Back within its grace with the quota it had: the shards forgot the cell with the
            // slot, and get the same one back.
            ops.push(UserOp::Quota { slot, cell: Some(q.cell.clone()) });
        }
        if self.slots.quota(slot).is_some_and(|q| q.suspended.is_some()) {
            ops.push(UserOp::Suspend { id: u.account.key(), suspended: true });
        }
    }

    /// The slot of the same user (account and email) removed from inbound `i` within its grace,
    /// given back to it, with its email.
    fn revive(&mut self, i: usize, u: &UserSpec) -> Option<(u32, Arc<str>)> {
        let now = std::time::Instant::now();
        self.leaving.prune(now);
        let key = (self.inbounds[i].tag.clone(), u.account.clone());
        let l = self.leaving.by_user.remove(&key).filter(|l| *l.email == *u.email)?;
        // Before its hold ends (pruned above), the slot is still pending: nobody else has it.
        self.slots.revive(l.slot, l.until, i as u32, u.level, l.quota);
        Some((l.slot, l.email))
    }

    /// The shards' side of removing the user with `account` (slot `slot`, email `email`) from
    /// inbound `i`, which the caller has taken out of the inbound's table.
    fn release(
        &mut self,
        i: usize,
        account: Account,
        slot: u32,
        email: Option<Arc<str>>,
        epoch: Option<u64>,
    ) -> UserOp {
        let id = account.key();
        if slot == NO_SLOT {
            return UserOp::Remove { id, slot, free_slot: false };
        }
        let UserSets { inbounds, slots, .. } = self;
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

/// How a refusal names a user by its account: a VLESS id, but never a Trojan password.
fn account_label(account: &Account) -> String {
    match account {
        Account::Vless(id, _) => id.to_string(),
        Account::Trojan(_) => "with this password".to_owned(),
        Account::Vmess { id, .. } => id.to_string(),
        Account::Socks(a) | Account::Http(a) => format!("with user {:?}", a.username),
        Account::Shadowsocks { .. } | Account::Shadowsocks2022 { .. } => "with this password".to_owned(),
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
