//! Per-shard counters and the snapshots a shard sends to the control thread.
//!
//! A shard owns its counters outright (`Cell`, no atomics): only the shard writes them, and
//! the control thread never reads them in place. It asks each shard for a `StatsSnapshot` and
//! sums the replies, so no counter is shared between cores.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use crate::quota::QuotaCell;

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

/// One shard's user counters, by slot (see `slots`): the bytes of every slot, the email of
/// every live slot (for routing and the access log), and the live sessions by address of the
/// slots that have any. Only the shard touches it.
#[derive(Debug, Default)]
pub struct SlotCounters {
    traffic: Vec<Traffic>,
    /// Bumped each time a slot is given to a new email: a session of the slot's last owner
    /// that outlives it (closing while the slot is reused) no longer counts into it.
    gens: Vec<u32>,
    emails: Vec<Option<Arc<str>>>,
    /// The quota cells of the slots that have a quota or expiry (most have none).
    quotas: HashMap<u32, Arc<QuotaCell>>,
    /// Only users with a live session here have an entry: most users are offline.
    online: HashMap<u32, Vec<IpSessions>>,
}

impl SlotCounters {
    /// Makes `slot` live for `email`; a new slot starts from zero.
    pub fn assign(&mut self, slot: u32, email: Arc<str>, new_slot: bool) {
        let i = slot as usize;
        if i >= self.traffic.len() {
            // Slots are dense (control reuses freed ones first): grow to fit.
            self.traffic.resize_with(i + 1, Traffic::default);
            self.gens.resize(i + 1, 0);
            self.emails.resize(i + 1, None);
        }
        if new_slot {
            self.traffic[i].up.set(0);
            self.traffic[i].down.set(0);
            self.gens[i] = self.gens[i].wrapping_add(1);
            self.online.remove(&slot);
            self.quotas.remove(&slot);
        }
        self.emails[i] = Some(email);
    }

    /// Forgets a freed slot's email and quota; its counters are zeroed when the slot is reused.
    pub fn free(&mut self, slot: u32) {
        if let Some(e) = self.emails.get_mut(slot as usize) {
            *e = None;
        }
        self.quotas.remove(&slot);
    }

    /// Gives the slot a quota cell, or takes it away (`None`).
    pub fn set_quota(&mut self, slot: u32, cell: Option<Arc<QuotaCell>>) {
        match cell {
            Some(cell) => self.quotas.insert(slot, cell),
            None => self.quotas.remove(&slot),
        };
    }

    /// The slot's quota cell, if it has a quota or an expiry.
    pub fn quota(&self, slot: u32) -> Option<&Arc<QuotaCell>> {
        if self.quotas.is_empty() {
            return None;
        }
        self.quotas.get(&slot)
    }

    /// The slot's counters, if it exists.
    #[inline]
    pub fn traffic(&self, slot: u32) -> Option<&Traffic> {
        self.traffic.get(slot as usize)
    }

    /// The slot's generation: what a session keeps to count into it.
    pub fn generation(&self, slot: u32) -> u32 {
        self.gens.get(slot as usize).copied().unwrap_or(0)
    }

    /// The slot's counters, if it is still the generation a session started in.
    #[inline]
    pub fn traffic_for(&self, slot: u32, generation: u32) -> Option<&Traffic> {
        (self.gens.get(slot as usize) == Some(&generation)).then(|| &self.traffic[slot as usize])
    }

    /// The email of a live slot.
    pub fn email(&self, slot: u32) -> Option<&Arc<str>> {
        self.emails.get(slot as usize)?.as_ref()
    }

    /// Counts a session from `ip` that started at `now` (unix seconds) as live.
    pub fn session_opened(&mut self, slot: u32, ip: IpAddr, now: u64) {
        let ip = ip.to_canonical();
        let ips = self.online.entry(slot).or_default();
        match ips.iter_mut().find(|e| e.ip == ip) {
            Some(e) => {
                e.live += 1;
                e.last_seen = e.last_seen.max(now);
            }
            None => ips.push(IpSessions { ip, live: 1, last_seen: now }),
        }
    }

    /// Ends a session that `session_opened` counted; the address goes with its last session,
    /// and the user's entry with its last address.
    pub fn session_closed(&mut self, slot: u32, generation: u32, ip: IpAddr) {
        if self.gens.get(slot as usize) != Some(&generation) {
            // The slot went to another email meanwhile, which started with no address.
            return;
        }
        let ip = ip.to_canonical();
        let Some(ips) = self.online.get_mut(&slot) else { return };
        if let Some(i) = ips.iter().position(|e| e.ip == ip) {
            ips[i].live -= 1;
            if ips[i].live == 0 {
                ips.swap_remove(i);
            }
        }
        if ips.is_empty() {
            self.online.remove(&slot);
        }
    }

    /// The live sessions of a slot by address; empty when there are none.
    pub fn ips(&self, slot: u32) -> &[IpSessions] {
        self.online.get(&slot).map_or(&[], Vec::as_slice)
    }

    /// The figures of the slots in `slots` (clamped to the slots there are), for a snapshot.
    pub fn sample(&self, slots: Range<u32>, out: &mut StatsSnapshot) {
        let pair = |t: &Traffic| [t.up.get(), t.down.get()];
        let len = self.traffic.len();
        let (start, end) = ((slots.start as usize).min(len), (slots.end as usize).min(len));
        out.first_slot = slots.start;
        out.users = self.traffic[start..end.max(start)].iter().map(pair).collect();
        out.online = if slots.len() == 1 {
            self.online.get(&slots.start).map(|ips| (slots.start, ips.clone())).into_iter().collect()
        } else {
            self.online.iter().filter(|(s, _)| slots.contains(s)).map(|(s, ips)| (*s, ips.clone())).collect()
        };
    }
}

/// The slots a snapshot covers: every one (`None`), or one (`Some(NO_SLOT)`: none).
pub fn slot_range(only_slot: Option<u32>) -> Range<u32> {
    match only_slot {
        None => 0..u32::MAX,
        Some(slot) => slot..slot.saturating_add(1),
    }
}

/// Why the data plane refused a session's destination; each reason has its own counter
/// (`refused>>>NAME`), so an operator sees what the safety rules turn away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The API's own address.
    ApiAddress,
    /// A loopback or private address that no routing rule names.
    PrivateDestination,
    /// A connection whose first bytes are not a valid request of its inbound's protocol (noise,
    /// a wrong key, a truncated header, a handshake that timed out).
    BadRequest,
    /// A valid request for something the inbound does not serve (a mux command, say).
    UnsupportedCommand,
    /// A UDP datagram larger than the packet path carries (8192 payload bytes), either way.
    OversizeDatagram,
    /// A UDP session beyond its user's (or its dokodemo-door inbound's) flow limit on a shard.
    FlowLimit,
    /// A connection past `policy.system.maxConnections` or `maxInboundConnections`, closed at
    /// accept.
    AcceptLimit,
    /// A session beyond its user's `maxConnections`.
    ConnectionLimit,
    /// A session from one more address than its user's `maxIPs`.
    IpLimit,
    /// A connection from an address with `policy.system.maxHandshakesPerSource` connections
    /// in their handshake on the shard already, closed at accept.
    HandshakeLimit,
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Refusal; 10] = [
        Refusal::ApiAddress,
        Refusal::PrivateDestination,
        Refusal::BadRequest,
        Refusal::UnsupportedCommand,
        Refusal::OversizeDatagram,
        Refusal::FlowLimit,
        Refusal::AcceptLimit,
        Refusal::ConnectionLimit,
        Refusal::IpLimit,
        Refusal::HandshakeLimit,
    ];

    /// The counter's name part: `refused>>>{name}`.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::ApiAddress => "api_address",
            Refusal::PrivateDestination => "private_destination",
            Refusal::BadRequest => "bad_request",
            Refusal::UnsupportedCommand => "unsupported_command",
            Refusal::OversizeDatagram => "oversize_datagram",
            Refusal::FlowLimit => "udp_flow_limit",
            Refusal::AcceptLimit => "accept_limit",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::IpLimit => "ip_limit",
            Refusal::HandshakeLimit => "handshake_limit",
        }
    }

    /// What the logs say, with the way to allow it where there is one.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::ApiAddress => "the API's own address",
            Refusal::PrivateDestination => "loopback/private destination; add a routing rule naming it to allow it",
            Refusal::BadRequest => "not a valid request",
            Refusal::UnsupportedCommand => "a command this inbound does not serve",
            Refusal::OversizeDatagram => "a datagram above 8192 payload bytes",
            Refusal::FlowLimit => "too many UDP flows on this shard",
            Refusal::AcceptLimit => "too many connections; raise policy.system.maxConnections or maxInboundConnections",
            Refusal::ConnectionLimit => "the user's level allows no more live sessions (maxConnections)",
            Refusal::IpLimit => "the user's level allows no more client addresses at once (maxIPs)",
            Refusal::HandshakeLimit => {
                "too many handshakes in flight from one address; raise policy.system.maxHandshakesPerSource"
            }
        }
    }
}

/// One shard's refusals by reason (`Refusal as usize`).
#[derive(Debug, Default)]
pub struct RefusalCounts([Cell<u64>; Refusal::ALL.len()]);

impl RefusalCounts {
    /// Counts one refusal.
    pub fn add(&self, why: Refusal) {
        let c = &self.0[why as usize];
        c.set(c.get() + 1);
    }

    /// The totals, by reason.
    pub fn sample(&self) -> [u64; Refusal::ALL.len()] {
        std::array::from_fn(|i| self.0[i].get())
    }
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
    /// The slot of `users[0]`.
    pub first_slot: u32,
    /// User bytes by slot, `[up, down]`, from `first_slot` on. A slot that is not live
    /// counts nothing; the control thread knows which are.
    pub users: Vec<[u64; 2]>,
    /// The live sessions by client address of the slots that have any.
    pub online: Vec<(u32, Vec<IpSessions>)>,
    /// Every inbound of the shard.
    pub inbounds: Vec<LinkSample>,
    /// Every outbound of the shard.
    pub outbounds: Vec<LinkSample>,
    /// Sessions alive on the shard right now.
    pub live_sessions: u64,
    /// Destinations refused, by reason (`Refusal as usize`).
    pub refusals: [u64; Refusal::ALL.len()],
    /// The last epoch the shard applied.
    pub epoch: u64,
}

impl StatsSnapshot {
    /// A slot's `[up, down]` in this snapshot (zero if it is not in it).
    pub fn user(&self, slot: u32) -> [u64; 2] {
        slot.checked_sub(self.first_slot).and_then(|i| self.users.get(i as usize)).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn addresses_follow_their_sessions() {
        let mut u = SlotCounters::default();
        u.assign(3, "a@b".into(), true);
        let a = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        u.session_opened(3, a, 100);
        u.session_opened(3, a, 105);
        u.session_opened(3, b, 103);
        let mut ips = u.ips(3).to_vec();
        ips.sort_by_key(|e| e.ip);
        assert_eq!(
            ips,
            [IpSessions { ip: a, live: 2, last_seen: 105 }, IpSessions { ip: b, live: 1, last_seen: 103 },]
        );
        u.session_closed(3, 1, a);
        u.session_closed(3, 1, b);
        assert_eq!(u.ips(3), [IpSessions { ip: a, live: 1, last_seen: 105 }]);
        u.session_closed(3, 1, a);
        assert!(u.ips(3).is_empty());
        assert!(u.online.is_empty());
    }

    #[test]
    fn mapped_ipv4_is_the_same_address() {
        let mut u = SlotCounters::default();
        u.assign(0, "a@b".into(), true);
        let v4 = Ipv4Addr::new(203, 0, 113, 9);
        u.session_opened(0, IpAddr::V6(v4.to_ipv6_mapped()), 1);
        u.session_opened(0, IpAddr::V4(v4), 2);
        assert_eq!(u.ips(0), [IpSessions { ip: IpAddr::V4(v4), live: 2, last_seen: 2 }]);
        u.session_closed(0, 1, IpAddr::V6(v4.to_ipv6_mapped()));
        u.session_closed(0, 1, IpAddr::V4(v4));
        assert!(u.ips(0).is_empty());
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let mut u = SlotCounters::default();
        u.assign(1, "a@b".into(), true);
        u.traffic(1).unwrap().add_up(7);
        u.traffic(1).unwrap().add_down(9);
        let mut snap = StatsSnapshot::default();
        u.sample(0..u32::MAX, &mut snap);
        assert_eq!((snap.user(0), snap.user(1), snap.user(2)), ([0, 0], [7, 9], [0, 0]));
        u.free(1);
        assert!(u.email(1).is_none());
        u.session_opened(1, IpAddr::V4(Ipv4Addr::LOCALHOST), 5);
        u.assign(1, "c@d".into(), true);
        assert!(u.traffic_for(1, 1).is_none() && u.traffic_for(1, 2).is_some());
        assert!(u.ips(1).is_empty());
        u.session_closed(1, 1, IpAddr::V4(Ipv4Addr::LOCALHOST));
        u.sample(1..2, &mut snap);
        assert_eq!((snap.first_slot, snap.user(1)), (1, [0, 0]));
        assert_eq!(u.email(1).map(|e| &**e), Some("c@d"));
    }
}
