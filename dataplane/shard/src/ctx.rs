//! `ShardCtx`: everything one shard reads on its hot path, owned by that shard alone.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use crate::transport::tls;
use crate::users::{SessionWatchers, UserTable};
use futures_rustls::TlsAcceptor;
use shardray_core::change::Change;
use shardray_core::log::LogSink;
use shardray_core::router::Router;
use shardray_core::slots::UserOp;
use shardray_core::spec::{Config, DokodemoSpec, FallbackSpec, InboundProtocol, LevelPolicy, OutboundProtocol};
use shardray_core::stats::{LinkSample, SlotCounters, StatsSnapshot, Traffic};

/// A shard's state. Built from the config when the shard starts; `Rc` and `Cell` only.
pub(crate) struct ShardCtx {
    pub(crate) config: Arc<Config>,
    pub(crate) inbounds: Vec<Rc<InboundRt>>,
    pub(crate) outbounds: Vec<OutboundRt>,
    pub(crate) router: Router,
    /// User counters by slot (one per email, shared by every inbound the email appears in).
    pub(crate) users: RefCell<SlotCounters>,
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
            inbounds: Vec::new(),
            outbounds,
            router,
            users: RefCell::default(),
            api_addrs,
            log,
            live: Cell::new(0),
            watchers: SessionWatchers::default(),
            applied: Cell::new(0),
        };
        let mut inbounds = Vec::with_capacity(config.inbounds.len());
        for inbound in &config.inbounds {
            let tls = match &inbound.tls {
                Some(spec) => Some(TlsAcceptor::from(tls::server_config(spec).map_err(|e| e.to_string())?)),
                None => None,
            };
            let kind = match &inbound.protocol {
                // Users come as resolved operations (`apply_users`), not from `v.clients`.
                InboundProtocol::Vless(v) => {
                    InboundKind::Vless { users: RefCell::default(), fallbacks: v.fallbacks.clone() }
                }
                InboundProtocol::Dokodemo(d) => InboundKind::Dokodemo(d.clone()),
            };
            inbounds.push(Rc::new(InboundRt {
                tag: inbound.tag.as_str().into(),
                traffic: Traffic::default(),
                tls,
                kind,
            }));
        }
        Ok(ShardCtx { inbounds, ..ctx })
    }

    /// Applies one change from the control thread, with its user operations as control
    /// resolved them. Control has validated it against the same state, so a failure here
    /// means the shard and control disagree: it is reported, not hidden.
    pub(crate) fn apply(&self, epoch: u64, change: &Change, ops: &[UserOp]) -> Result<(), String> {
        let inbound = self
            .inbounds
            .iter()
            .find(|i| &*i.tag == change.inbound())
            .ok_or_else(|| format!("handler not found: {}", change.inbound()))?;
        match change {
            Change::AddUsers { .. }
            | Change::RemoveUsers { .. }
            | Change::ReplaceUsers { .. }
            | Change::SetLevel { .. }
            | Change::Kick { .. } => self.apply_users(inbound, ops)?,
        }
        self.applied.set(epoch);
        Ok(())
    }

    /// Carries out user operations on one inbound's table and the slot counters.
    pub(crate) fn apply_users(&self, inbound: &InboundRt, ops: &[UserOp]) -> Result<(), String> {
        let InboundKind::Vless { users: table, .. } = &inbound.kind else {
            return Err(format!("inbound {} has no users", inbound.tag));
        };
        let mut users = table.borrow_mut();
        let mut slots = self.users.borrow_mut();
        // Sessions to wake once the table is released (they look at it when woken).
        let mut woken = Vec::new();
        for op in ops {
            match op {
                UserOp::Add { user, email, new_slot } => {
                    if let Some(email) = email {
                        slots.assign(user.slot, email.clone(), *new_slot);
                    }
                    users.insert(user);
                }
                UserOp::Remove { id, slot, free_slot } => {
                    woken.extend(users.remove(id));
                    if *free_slot {
                        slots.free(*slot);
                    }
                }
                UserOp::SetLevel { id, level } => woken.extend(users.set_level(id, *level)),
                UserOp::Kick { id } => woken.extend(users.kick(id)),
            }
        }
        drop((users, slots));
        for rec in woken {
            self.watchers.wake(table, rec);
        }
        Ok(())
    }

    /// The policy for a level.
    pub(crate) fn policy(&self, level: u32) -> LevelPolicy {
        self.config.policy.level(level)
    }

    /// The shard's totals, for the control thread: every user slot's (`only_slot: None`),
    /// or one slot's (`Some(NO_SLOT)`: none, just inbounds and outbounds).
    pub(crate) fn snapshot(&self, only_slot: Option<u32>) -> StatsSnapshot {
        let link = |tag: &Arc<str>, t: &Traffic| LinkSample { tag: tag.clone(), up: t.up.get(), down: t.down.get() };
        let mut snap = StatsSnapshot {
            inbounds: self.inbounds.iter().map(|i| link(&i.tag, &i.traffic)).collect(),
            outbounds: self.outbounds.iter().map(|o| link(&o.tag, &o.traffic)).collect(),
            live_sessions: self.live.get(),
            ..Default::default()
        };
        self.users.borrow().sample(only_slot, &mut snap);
        snap
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
