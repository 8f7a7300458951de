//! Per-shard counters and the snapshots a shard sends to the control thread.
//!
//! A shard owns its counters outright (`Cell`, no atomics): only the shard writes them, and
//! the control thread never reads them in place. It asks each shard for a `StatsSnapshot` and
//! sums the replies, so no counter is shared between cores.

use std::cell::Cell;
use std::sync::Arc;

/// Bytes counted in both directions for one name, on one shard.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Client to server payload bytes.
    pub up: Cell<u64>,
    /// Server to client payload bytes.
    pub down: Cell<u64>,
}

impl Traffic {
    /// Adds uplink bytes.
    #[inline]
    pub fn add_up(&self, n: u64) {
        self.up.set(self.up.get() + n);
    }

    /// Adds downlink bytes.
    #[inline]
    pub fn add_down(&self, n: u64) {
        self.down.set(self.down.get() + n);
    }
}

/// One user's counters on one shard; shared by every inbound the user's email appears in.
#[derive(Debug)]
pub struct UserCounters {
    /// The user's email, the key of its counters.
    pub email: Arc<str>,
    /// Payload bytes.
    pub traffic: Traffic,
    /// Live sessions on this shard.
    pub sessions: Cell<u32>,
}

impl UserCounters {
    /// Fresh counters for `email`.
    pub fn new(email: Arc<str>) -> UserCounters {
        UserCounters {
            email,
            traffic: Traffic::default(),
            sessions: Cell::new(0),
        }
    }
}

/// One user's figures in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSample {
    /// The user's email.
    pub email: Arc<str>,
    /// Uplink bytes since the shard started counting this user.
    pub up: u64,
    /// Downlink bytes.
    pub down: u64,
    /// Live sessions.
    pub sessions: u32,
}

/// An inbound's or outbound's figures in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSample {
    /// The inbound or outbound tag.
    pub tag: Arc<str>,
    /// Uplink bytes.
    pub up: u64,
    /// Downlink bytes.
    pub down: u64,
}

/// What one shard reports when asked: monotonic totals since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Users that have counters on this shard.
    pub users: Vec<UserSample>,
    /// Every inbound of the shard.
    pub inbounds: Vec<LinkSample>,
    /// Every outbound of the shard.
    pub outbounds: Vec<LinkSample>,
    /// Sessions alive on the shard right now.
    pub live_sessions: u64,
}
