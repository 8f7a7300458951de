//! Per-shard counters and the snapshots a shard sends to the control thread.
//!
//! A shard owns its counters outright (`Cell`, no atomics): only the shard writes them, and
//! the control thread never reads them in place. It asks each shard for a `StatsSnapshot` and
//! sums the replies, so no counter is shared between cores.

use std::cell::Cell;
use std::net::IpAddr;
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
pub struct UserCounters {
    /// The user's email, the key of its counters.
    pub email: Arc<str>,
    /// Payload bytes.
    pub traffic: Traffic,
    /// Live sessions on this shard by client address. Empty, and so unallocated, while the
    /// user has no live session here; a `Cell` (taken and put back) since only the shard
    /// touches it and no borrow outlives a call.
    ips: Cell<Vec<IpSessions>>,
}

impl std::fmt::Debug for UserCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCounters")
            .field("email", &self.email)
            .field("traffic", &self.traffic)
            .field("ips", &self.ips())
            .finish()
    }
}

/// A user's live sessions from one client address, on one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpSessions {
    /// The client address (an IPv4-mapped IPv6 address is stored as IPv4).
    pub ip: IpAddr,
    /// Sessions from it alive now; never 0 in a stored entry.
    pub live: u32,
    /// Unix seconds when the latest of them started.
    pub last_seen: u64,
}

impl UserCounters {
    /// Fresh counters for `email`.
    pub fn new(email: Arc<str>) -> UserCounters {
        UserCounters { email, traffic: Traffic::default(), ips: Cell::new(Vec::new()) }
    }

    /// Counts a session from `ip` that started at `now` (unix seconds) as live.
    pub fn session_opened(&self, ip: IpAddr, now: u64) {
        let ip = ip.to_canonical();
        let mut ips = self.ips.take();
        match ips.iter_mut().find(|e| e.ip == ip) {
            Some(e) => {
                e.live += 1;
                e.last_seen = e.last_seen.max(now);
            }
            None => ips.push(IpSessions { ip, live: 1, last_seen: now }),
        }
        self.ips.set(ips);
    }

    /// Ends a session that `session_opened` counted; the address goes with its last session.
    pub fn session_closed(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let mut ips = self.ips.take();
        if let Some(i) = ips.iter().position(|e| e.ip == ip) {
            ips[i].live -= 1;
            if ips[i].live == 0 {
                ips.swap_remove(i);
            }
        }
        if ips.is_empty() {
            // Give the allocation back: most users are offline most of the time.
            ips = Vec::new();
        }
        self.ips.set(ips);
    }

    /// Live sessions on this shard.
    pub fn live_sessions(&self) -> u32 {
        let ips = self.ips.take();
        let n = ips.iter().map(|e| e.live).sum();
        self.ips.set(ips);
        n
    }

    /// A copy of the live sessions by address; empty (no allocation) when there are none.
    pub fn ips(&self) -> Vec<IpSessions> {
        let ips = self.ips.take();
        let copy = ips.clone();
        self.ips.set(ips);
        copy
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
    /// Live sessions by client address; empty when the user has none.
    pub ips: Vec<IpSessions>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn addresses_follow_their_sessions() {
        let u = UserCounters::new("a@b".into());
        let a = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        u.session_opened(a, 100);
        u.session_opened(a, 105);
        u.session_opened(b, 103);
        assert_eq!(u.live_sessions(), 3);
        let mut ips = u.ips();
        ips.sort_by_key(|e| e.ip);
        assert_eq!(
            ips,
            [IpSessions { ip: a, live: 2, last_seen: 105 }, IpSessions { ip: b, live: 1, last_seen: 103 },]
        );
        u.session_closed(a);
        u.session_closed(b);
        assert_eq!(u.ips(), [IpSessions { ip: a, live: 1, last_seen: 105 }]);
        u.session_closed(a);
        assert_eq!(u.live_sessions(), 0);
        assert_eq!(u.ips().capacity(), 0);
    }

    #[test]
    fn mapped_ipv4_is_the_same_address() {
        let u = UserCounters::new("a@b".into());
        let v4 = Ipv4Addr::new(203, 0, 113, 9);
        u.session_opened(IpAddr::V6(v4.to_ipv6_mapped()), 1);
        u.session_opened(IpAddr::V4(v4), 2);
        assert_eq!(u.ips(), [IpSessions { ip: IpAddr::V4(v4), live: 2, last_seen: 2 }]);
        u.session_closed(IpAddr::V6(v4.to_ipv6_mapped()));
        u.session_closed(IpAddr::V4(v4));
        assert!(u.ips().is_empty());
    }
}
