//! User events: what happened to a user (suspended, resumed, limited), sent from wherever it
//! happened (a shard, the control thread) to the control thread's hub, which logs each one and
//! hands it to the API's subscribers.
//!
//! A shard emits with `EventSink::emit`: a non-blocking send into a bounded channel; when the
//! channel is full the event is counted as dropped, never waited for.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::quota::SuspendReason;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserEventKind {
    /// The user was suspended on every shard: live sessions closed, new ones refused.
    Suspended(SuspendReason),
    /// A suspended user may connect again.
    Resumed,
    /// The user's traffic was held back by its level's rate limit.
    RateLimited,
    /// A session was refused: the user has its level's number of live sessions.
    ConnectionLimit,
    /// A session was refused: the user is connected from its level's number of addresses.
    IpLimit,
}

impl UserEventKind {
    /// The name events carry (`suspended`, `resumed`, `rate_limited`, ...).
    pub fn name(self) -> &'static str {
        match self {
            UserEventKind::Suspended(_) => "suspended",
            UserEventKind::Resumed => "resumed",
            UserEventKind::RateLimited => "rate_limited",
            UserEventKind::ConnectionLimit => "connection_limit",
            UserEventKind::IpLimit => "ip_limit",
        }
    }

    /// The suspension's reason, for `Suspended`.
    pub fn reason(self) -> Option<SuspendReason> {
        match self {
            UserEventKind::Suspended(r) => Some(r),
            _ => None,
        }
    }
}

/// One event about one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    /// What happened.
    pub kind: UserEventKind,
    /// The user's email.
    pub email: Arc<str>,
    /// The inbound's tag.
    pub inbound: Arc<str>,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

impl UserEvent {
    /// An event that happens now.
    pub fn now(kind: UserEventKind, email: Arc<str>, inbound: Arc<str>) -> UserEvent {
        let time_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        UserEvent { kind, email, inbound, time_ms }
    }
}

/// Events waiting for the hub beyond this are dropped (and counted).
pub const EVENT_QUEUE: usize = 4096;

/// Where events go: a cheap, cloneable, `Send` handle to the hub's queue.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: Option<async_channel::Sender<UserEvent>>,
    dropped: Arc<AtomicU64>,
}

impl EventSink {
    /// A sink and the receiving end for the hub.
    pub fn new() -> (EventSink, async_channel::Receiver<UserEvent>) {
        let (tx, rx) = async_channel::bounded(EVENT_QUEUE);
        (EventSink { tx: Some(tx), dropped: Arc::default() }, rx)
    }

    /// A sink that discards everything (tests and tools).
    pub fn discard() -> EventSink {
        EventSink { tx: None, dropped: Arc::default() }
    }

    /// Sends `event` to the hub without waiting; a full queue drops it.
    pub fn emit(&self, event: UserEvent) {
        if let Some(tx) = &self.tx {
            if tx.try_send(event).is_err() {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}
