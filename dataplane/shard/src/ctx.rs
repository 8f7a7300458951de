//! `ShardCtx`: everything one shard reads on its hot path, owned by that shard alone.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::rc::Rc;
use std::sync::Arc;

use uuid::Uuid;

use crate::transport::tls;
use crate::users::{SessionWatchers, UserRt, UserTable};
use futures_rustls::TlsAcceptor;
use shardray_core::change::Change;
use shardray_core::log::LogSink;
use shardray_core::router::Router;
use shardray_core::spec::{
    Config, DokodemoSpec, FallbackSpec, InboundProtocol, InboundSpec, LevelPolicy, OutboundProtocol, UserSpec,
};
use shardray_core::stats::{LinkSample, StatsSnapshot, Traffic, UserCounters, UserSample};

/// A shard's state. Built from the config when the shard starts; `Rc` and `Cell` only.
pub(crate) struct ShardCtx {
    pub(crate) config: Arc<Config>,
    /// The inbounds served now: the config's, plus those the API added, minus those it removed.
    pub(crate) inbounds: RefCell<Vec<Rc<InboundRt>>>,
    /// Each served inbound's accept loop, by tag; removing the inbound cancels it.
    accepting: RefCell<Vec<(Arc<str>, glommio::Task<()>)>>,
    pub(crate) outbounds: Vec<OutboundRt>,
    pub(crate) router: Router,
    /// Counters by email, shared by every inbound the email appears in.
    pub(crate) users: RefCell<HashMap<Arc<str>, Rc<UserCounters>>>,
    /// The API's listen addresses: never a destination, whatever the rules say.
    pub(crate) api_addrs: Arc<[SocketAddr]>,
    pub(crate) log: LogSink,
    /// Sessions alive on this shard.
    pub(crate) live: Cell<u64>,
    /// Sessions of users, so that removing or kicking a user closes them.
    pub(crate) watchers: SessionWatchers,
    /// The last epoch applied.
    pub(crate) applied: Cell<u64>,
}

/// An inbound as a shard runs it.
pub(crate) struct InboundRt {
    pub(crate) tag: Arc<str>,
    pub(crate) traffic: Traffic,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) kind: InboundKind,
}

/// What an inbound does with a connection.
pub(crate) enum InboundKind {
    Vless { users: RefCell<UserTable>, fallbacks: Vec<FallbackSpec> },
    Dokodemo(DokodemoSpec),
}

/// An outbound as a shard runs it.
pub(crate) struct OutboundRt {
    pub(crate) tag: Arc<str>,
    pub(crate) traffic: Traffic,
    pub(crate) protocol: OutboundProtocol,
}

impl ShardCtx {
    /// Builds a shard's state; fails only on TLS settings that control has already checked.
    pub(crate) fn new(config: Arc<Config>, api_addrs: Arc<[SocketAddr]>, log: LogSink) -> Result<ShardCtx, String> {
        let outbounds: Vec<OutboundRt> = config
            .outbounds
            .iter()
            .map(|o| OutboundRt {
                tag: o.tag.as_str().into(),
                traffic: Traffic::default(),
                protocol: o.protocol.clone(),
            })
            .collect();
        let router = Router::new(&config.routing.rules, |tag| outbounds.iter().position(|o| &*o.tag == tag))
            .map_err(|e| format!("routing.rules[{}]: {}", e.index, e.reason))?;
        let ctx = ShardCtx {
            config: config.clone(),
            inbounds: RefCell::default(),
            accepting: RefCell::default(),
            outbounds,
            router,
            users: RefCell::default(),
            api_addrs,
            log,
            live: Cell::new(0),
            watchers: SessionWatchers::default(),
            applied: Cell::new(0),
        };
        for inbound in &config.inbounds {
            let inbound = ctx.inbound_rt(inbound)?;
            ctx.inbounds.borrow_mut().push(Rc::new(inbound));
        }
        Ok(ctx)
    }

    /// The runtime form of an inbound; fails only on TLS settings control has already checked.
    fn inbound_rt(&self, inbound: &InboundSpec) -> Result<InboundRt, String> {
        let tls = match &inbound.tls {
            Some(spec) => Some(TlsAcceptor::from(tls::server_config(spec).map_err(|e| e.to_string())?)),
            None => None,
        };
        let kind = match &inbound.protocol {
            InboundProtocol::Vless(v) => {
                let mut users = UserTable::default();
                for u in &v.clients {
                    users.insert(u.id, Rc::new(self.user_rt(u)));
                }
                InboundKind::Vless { users: RefCell::new(users), fallbacks: v.fallbacks.clone() }
            }
            InboundProtocol::Dokodemo(d) => InboundKind::Dokodemo(d.clone()),
        };
        Ok(InboundRt { tag: inbound.tag.as_str().into(), traffic: Traffic::default(), tls, kind })
    }

    /// Starts accepting on an inbound's listener (this shard's own SO_REUSEPORT socket).
    pub(crate) fn start_accepting(self: &Rc<Self>, inbound: Rc<InboundRt>, listener: std::net::TcpListener) {
        // SAFETY: the descriptor comes from a listening std socket we own and give up here.
        let listener =
            unsafe { <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(listener.into_raw_fd()) };
        let tag = inbound.tag.clone();
        let task = glommio::spawn_local(crate::inbound::accept_loop(self.clone(), inbound, listener));
        self.accepting.borrow_mut().push((tag, task));
    }

    /// Every accept loop, taken out so the caller can cancel them (on drain).
    pub(crate) fn take_accepting(&self) -> Vec<glommio::Task<()>> {
        self.accepting.borrow_mut().drain(..).map(|(_, task)| task).collect()
    }

    /// The runtime entry for a configured user, sharing counters with other inbounds.
    fn user_rt(&self, user: &UserSpec) -> UserRt {
        let email: Arc<str> = user.email.as_str().into();
        let counters = (!email.is_empty()).then(|| {
            self.users
                .borrow_mut()
                .entry(email.clone())
                .or_insert_with(|| Rc::new(UserCounters::new(email.clone())))
                .clone()
        });
        UserRt::new(email, user.level, counters)
    }

    /// Applies one change from the control thread. Control has validated it against the same
    /// state, so a failure here means the shard and control disagree: it is reported, not hidden.
    /// `listener` is this shard's socket for an added inbound. Returns the accept loops of a
    /// removed inbound, for the caller to cancel before it acknowledges the change.
    pub(crate) fn apply(
        self: &Rc<Self>,
        epoch: u64,
        change: &Change,
        listener: Option<std::net::TcpListener>,
    ) -> Result<Vec<glommio::Task<()>>, String> {
        let mut stopped = Vec::new();
        match change {
            Change::AddInbound { spec } => {
                let listener = listener.ok_or_else(|| format!("no listener came with inbound {}", spec.tag))?;
                let inbound = Rc::new(self.inbound_rt(spec)?);
                self.inbounds.borrow_mut().push(inbound.clone());
                self.start_accepting(inbound, listener);
            }
            Change::RemoveInbound { tag } => stopped = self.remove_inbound(tag)?,
            _ => self.apply_to_users(change)?,
        }
        self.applied.set(epoch);
        Ok(stopped)
    }

    /// Takes an inbound out of service: its accept loops are returned for cancelling, and its
    /// users are retired, which closes their live sessions.
    fn remove_inbound(&self, tag: &str) -> Result<Vec<glommio::Task<()>>, String> {
        let inbound = {
            let mut inbounds = self.inbounds.borrow_mut();
            let at = inbounds.iter().position(|i| &*i.tag == tag).ok_or_else(|| format!("handler not found: {tag}"))?;
            inbounds.remove(at)
        };
        let stopped = self.accepting.borrow_mut().extract_if(.., |(t, _)| &**t == tag).map(|(_, task)| task).collect();
        if let InboundKind::Vless { users, .. } = &inbound.kind {
            let all = users.borrow_mut().remove_if(|_, _| true);
            for user in all {
                self.retire(&user);
            }
        }
        Ok(stopped)
    }

    /// Applies a change to an inbound's users.
    fn apply_to_users(&self, change: &Change) -> Result<(), String> {
        let inbound = self
            .inbounds
            .borrow()
            .iter()
            .find(|i| &*i.tag == change.inbound())
            .cloned()
            .ok_or_else(|| format!("handler not found: {}", change.inbound()))?;
        let InboundKind::Vless { users, .. } = &inbound.kind else {
            return Err(format!("inbound {} has no users", inbound.tag));
        };
        let mut users = users.borrow_mut();
        match change {
            Change::AddUsers { users: added, .. } => {
                for u in added {
                    users.insert(u.id, Rc::new(self.user_rt(u)));
                }
            }
            Change::RemoveUsers { emails, .. } => {
                for email in emails {
                    if let Some(user) = users.remove_email(email) {
                        self.retire(&user);
                    }
                }
            }
            Change::ReplaceUsers { users: set, .. } => {
                // Users that stay (same id and email) keep their sessions and counters.
                let wanted: HashMap<Uuid, &UserSpec> = set.iter().map(|u| (u.id, u)).collect();
                let gone =
                    users.remove_if(|id, u| !wanted.get(id).is_some_and(|w| w.email.eq_ignore_ascii_case(&u.email)));
                for user in gone {
                    self.retire(&user);
                }
                for u in set {
                    match users.get(&u.id) {
                        Some(kept) if kept.level.get() != u.level => self.watchers.set_level(kept, u.level),
                        Some(_) => {}
                        None => users.insert(u.id, Rc::new(self.user_rt(u))),
                    }
                }
            }
            Change::SetLevel { email, level, .. } => {
                if let Some(user) = users.by_email(email) {
                    self.watchers.set_level(user, *level);
                }
            }
            Change::Kick { email, .. } => {
                if let Some(user) = users.by_email(email) {
                    self.watchers.kick(user);
                }
            }
            Change::AddInbound { .. } | Change::RemoveInbound { .. } => {}
        }
        Ok(())
    }

    /// Closes a removed user's sessions and drops its counters once nothing else holds them.
    fn retire(&self, user: &Rc<UserRt>) {
        self.watchers.kick(user);
        if let Some(counters) = &user.counters {
            // Held by this map and this user only: no other inbound lists the email.
            if Rc::strong_count(counters) == 2 {
                self.users.borrow_mut().remove(&counters.email);
            }
        }
    }

    /// The policy for a level.
    pub(crate) fn policy(&self, level: u32) -> LevelPolicy {
        self.config.policy.level(level)
    }

    /// The shard's totals, for the control thread.
    pub(crate) fn snapshot(&self, only_user: Option<&str>) -> StatsSnapshot {
        let link = |tag: &Arc<str>, t: &Traffic| LinkSample { tag: tag.clone(), up: t.up.get(), down: t.down.get() };
        let sample = |u: &Rc<UserCounters>| {
            let ips = u.ips();
            UserSample {
                email: u.email.clone(),
                up: u.traffic.up.get(),
                down: u.traffic.down.get(),
                sessions: ips.iter().map(|e| e.live).sum(),
                ips,
            }
        };
        let users = self.users.borrow();
        StatsSnapshot {
            users: match only_user {
                None => users.values().map(sample).collect(),
                Some(email) => users.get(email).map(sample).into_iter().collect(),
            },
            inbounds: self.inbounds.borrow().iter().map(|i| link(&i.tag, &i.traffic)).collect(),
            outbounds: self.outbounds.iter().map(|o| link(&o.tag, &o.traffic)).collect(),
            live_sessions: self.live.get(),
        }
    }
}

/// Counts a session as live for as long as it is held.
pub(crate) struct LiveGuard(Rc<ShardCtx>);

impl LiveGuard {
    pub(crate) fn new(ctx: &Rc<ShardCtx>) -> LiveGuard {
        ctx.live.set(ctx.live.get() + 1);
        LiveGuard(ctx.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get() - 1);
    }
}
