//! Where a session meets its user's level limits (`shardray_core::limits`): admission under
//! `maxConnections` and `maxIPs`, the rate each direction of the relay may move at, and the
//! one place that tells of a refusal or of a user held to its rate.
//!
//! A user at a level without limits touches none of this: admission is one test of the
//! level, and the relay's rate check is one test of a rate field that is 0.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardray_core::events::{UserEvent, UserEventKind};
use shardray_core::limits::{self, LimitRefusal, UserLimits};
use shardray_core::spec::{LevelPolicy, LogLevel};
use shardray_core::stats::Refusal;

use crate::ctx::ShardCtx;
use crate::users::UserHandle;

/// How often a user held to its rate is told of, at most (across shards).
const RATE_NOTICE_EVERY: Duration = Duration::from_secs(60);

/// How often a user's refusals (`maxConnections`, `maxIPs`) are logged and sent as events.
const REFUSAL_NOTICE_EVERY: Duration = Duration::from_secs(1);

/// What a user's limits did: the one notice for the logs and the user-events stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitEvent {
    /// A session was refused.
    Refused(LimitRefusal),
    /// The user's traffic is being held to its level's rate.
    RateLimited,
}

impl LimitEvent {
    /// The event's name, as the user-events stream calls it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            LimitEvent::Refused(why) => why.name(),
            LimitEvent::RateLimited => "rate_limited",
        }
    }
}

/// Tells of what a user's limits did: counts a refusal and logs either, with the reason, and
/// sends it as a user event.
pub(crate) fn notice(ctx: &ShardCtx, inbound: &str, email: &str, peer: IpAddr, event: LimitEvent) {
    notice_if(ctx, inbound, email, peer, event, true)
}

/// `notice` of a refused session: counted always, told of at most once per
/// `REFUSAL_NOTICE_EVERY` per user (a client retrying in a loop must not flood the log and the
/// events stream, whose subscribers would lose suspensions to it).
fn refused(ctx: &ShardCtx, limits: &UserLimits, inbound: &str, email: &str, peer: IpAddr, why: LimitRefusal) {
    let tell = limits.note_refused(limits::now_ns(), REFUSAL_NOTICE_EVERY);
    notice_if(ctx, inbound, email, peer, LimitEvent::Refused(why), tell)
}

fn notice_if(ctx: &ShardCtx, inbound: &str, email: &str, peer: IpAddr, event: LimitEvent, tell: bool) {
    let reason = match event {
        LimitEvent::Refused(LimitRefusal::Connections) => {
            ctx.refusals.add(Refusal::ConnectionLimit);
            Refusal::ConnectionLimit.reason()
        }
        LimitEvent::Refused(LimitRefusal::Ips) => {
            ctx.refusals.add(Refusal::IpLimit);
            Refusal::IpLimit.reason()
        }
        LimitEvent::RateLimited => "held to its level's rate",
    };
    if !tell {
        return;
    }
    let name = event.name();
    ctx.log.error(LogLevel::Info, format_args!("[{inbound}] {peer} user {email}: {name}: {reason}"));
    if !email.is_empty() {
        let kind = match event {
            LimitEvent::Refused(LimitRefusal::Connections) => UserEventKind::ConnectionLimit,
            LimitEvent::Refused(LimitRefusal::Ips) => UserEventKind::IpLimit,
            LimitEvent::RateLimited => UserEventKind::RateLimited,
        };
        ctx.events.emit(UserEvent::now(kind, email.into(), inbound.into()));
    }
}

/// What a session holds under its user's `maxConnections` and `maxIPs`, given back when
/// dropped. Every `Session` and `PacketSession` carries one, made by `admit` where its inbound
/// has found the user and before it answers anything, so that a user over its limit meets
/// what a wrong user meets; `no_user` for sessions without a user, which have no limits.
// Held, never read: dropping it gives the places back.
pub(crate) struct Admitted(#[allow(dead_code)] Option<Admission>);

impl Admitted {
    /// For a session without a user (dokodemo-door, SOCKS and HTTP without accounts).
    pub(crate) fn no_user() -> Admitted {
        Admitted(None)
    }
}

/// The places a limited session took.
struct Admission {
    limits: Arc<UserLimits>,
    session: bool,
    ip: Option<IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.session {
            self.limits.close_session();
        }
        if let Some(ip) = self.ip {
            self.limits.close_ip(ip);
        }
    }
}

/// Admits a session of `user` from `peer` at its level, or refuses it (counted, and told of
/// with `notice`); the caller then turns the client away as its protocol turns a wrong user
/// away. Nothing is held without limits, or for a user without an email, whose sessions
/// cannot be told apart from other users' across inbounds.
pub(crate) fn admit(
    ctx: &ShardCtx,
    inbound: &str,
    user: Option<&UserHandle>,
    peer: IpAddr,
) -> Result<Admitted, LimitRefusal> {
    let Some(user) = user else { return Ok(Admitted(None)) };
    let policy = ctx.policy(user.level);
    if !policy.limits_sessions() {
        return Ok(Admitted(None));
    }
    let Some(email) = user.email.as_deref() else { return Ok(Admitted(None)) };
    let limits = UserLimits::of_slot(user.slot, user.slot_generation);
    let mut admitted = Admission { limits, session: false, ip: None };
    if policy.max_connections > 0 {
        if !admitted.limits.open_session(policy.max_connections) {
            refused(ctx, &admitted.limits, inbound, email, peer, LimitRefusal::Connections);
            return Err(LimitRefusal::Connections);
        }
        admitted.session = true;
    }
    if policy.max_ips > 0 {
        if !admitted.limits.open_ip(peer, policy.max_ips) {
            // `admitted` gives the session back.
            refused(ctx, &admitted.limits, inbound, email, peer, LimitRefusal::Ips);
            return Err(LimitRefusal::Ips);
        }
        admitted.ip = Some(peer);
    }
    Ok(Admitted(Some(admitted)))
}

/// A session's rates: what each direction of its relay may read now. The rates are 0 for
/// unlimited directions, the only thing an unlimited session looks at.
pub(crate) struct SessionRates {
    up: u64,
    down: u64,
    /// The user's shared gates; `Some` whenever a rate is not 0.
    limits: Option<Arc<UserLimits>>,
    /// The user's slot and its generation, to look its limits up on a level change.
    slot: Option<(u32, u32)>,
}

/// How much a direction may read now, or when it may read again.
pub(crate) type Allowance = Result<u64, Instant>;

impl SessionRates {
    /// The rates of `policy` for the session of the user in `slot` with its generation
    /// (`None`: no email, not limited).
    pub(crate) fn new(slot: Option<(u32, u32)>, policy: &LevelPolicy) -> Self {
        let mut rates = SessionRates { up: 0, down: 0, limits: None, slot };
        rates.set_policy(policy);
        rates
    }

    /// Follows a level change: the next chunk goes at the new level's rates.
    pub(crate) fn set_policy(&mut self, policy: &LevelPolicy) {
        let limited = policy.uplink_rate > 0 || policy.downlink_rate > 0;
        if limited && self.limits.is_none() {
            self.limits = self.slot.map(|(slot, generation)| UserLimits::of_slot(slot, generation));
        }
        (self.up, self.down) = match self.limits {
            Some(_) => (policy.uplink_rate, policy.downlink_rate),
            None => (0, 0),
        };
    }

    /// Whether the uplink is limited.
    #[inline]
    pub(crate) fn up_limited(&self) -> bool {
        self.up != 0
    }

    /// Whether the downlink is limited.
    #[inline]
    pub(crate) fn down_limited(&self) -> bool {
        self.down != 0
    }

    /// What the uplink may read now (call only if `up_limited`).
    pub(crate) fn up_allowance(&self) -> Allowance {
        let limits = self.limits.as_ref().expect("a rate comes with the user's limits");
        limits.up.allowance(self.up, limits::now_ns()).map_err(limits::instant_at)
    }

    /// What the downlink may read now (call only if `down_limited`).
    pub(crate) fn down_allowance(&self) -> Allowance {
        let limits = self.limits.as_ref().expect("a rate comes with the user's limits");
        limits.down.allowance(self.down, limits::now_ns()).map_err(limits::instant_at)
    }

    /// Charges `n` uplink bytes (call only if `up_limited`); `true` when a rate-limit notice
    /// is due.
    pub(crate) fn charge_up(&self, n: u64) -> bool {
        let limits = self.limits.as_ref().expect("a rate comes with the user's limits");
        let now = limits::now_ns();
        limits.up.charge(self.up, n, now) && limits.note_rate_limited(now, RATE_NOTICE_EVERY)
    }

    /// Charges `n` downlink bytes (call only if `down_limited`); `true` when a rate-limit
    /// notice is due.
    pub(crate) fn charge_down(&self, n: u64) -> bool {
        let limits = self.limits.as_ref().expect("a rate comes with the user's limits");
        let now = limits::now_ns();
        limits.down.charge(self.down, n, now) && limits.note_rate_limited(now, RATE_NOTICE_EVERY)
    }
}
