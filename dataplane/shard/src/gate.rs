//! Connection limits that hold across shards: `policy.system.maxConnections` for the whole
//! server and `maxInboundConnections` for each inbound. SO_REUSEPORT spreads one inbound's
//! connections over every shard, so a per-shard bound would be the limit times the shard
//! count: the counts are process-wide atomics instead, touched once at accept and once at
//! close (never per byte). They count whether or not a limit is set, so a limit a reload turns
//! on finds the true number of live connections.
//!
//! And `maxHandshakesPerSource`: connections from one address still in their handshake, per
//! shard (see `Handshakes`), where a `trustedHops` address (a CDN's edge) is not one source but
//! the clients its connections name are (`handshake_from`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use shardray_core::spec::SystemPolicy;
use shardray_core::stats::Refusal;

use crate::ctx::ShardCtx;
use crate::inbound::QuietLog;

/// Live TCP connections of the whole server.
static SERVER: AtomicU32 = AtomicU32::new(0);

/// Live TCP connections of one inbound, on every shard; one per tag, so an inbound that a
/// reload rebuilds in place keeps its count.
pub(crate) type InboundGauge = Arc<AtomicU32>;

/// The gauge of the inbound `tag` listening on `listen` (created on first use; an untagged
/// inbound is known by its address, the same on every shard).
pub(crate) fn inbound_gauge(tag: &str, listen: std::net::SocketAddr) -> InboundGauge {
    let key = if tag.is_empty() { format!("untagged {listen}") } else { format!("tag {tag}") };
    static GAUGES: OnceLock<Mutex<HashMap<String, InboundGauge>>> = OnceLock::new();
    let mut gauges = GAUGES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    gauges.entry(key).or_default().clone()
}

/// Which bound a refused connection met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Server(u32),
    Inbound(u32),
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Full::Server(n) => write!(f, "policy.system.maxConnections ({n}) reached"),
            Full::Inbound(n) => write!(f, "policy.system.maxInboundConnections ({n}) reached for this inbound"),
        }
    }
}

/// One admitted connection's place in the counts, given back when dropped.
pub(crate) struct ConnectionSlot(InboundGauge);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        SERVER.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Admits one more connection to `inbound` under `system`'s limits, or says which is full.
/// Taken first and given back on refusal, so that two shards racing for the last place never
/// both get it.
pub(crate) fn admit(system: &SystemPolicy, inbound: &InboundGauge) -> Result<ConnectionSlot, Full> {
    let server = SERVER.fetch_add(1, Ordering::Relaxed);
    let here = inbound.fetch_add(1, Ordering::Relaxed);
    // Built before the checks: a refusal drops it, which gives both places back.
    let slot = ConnectionSlot(inbound.clone());
    if system.max_connections != 0 && server >= system.max_connections {
        return Err(Full::Server(system.max_connections));
    }
    if system.max_inbound_connections != 0 && here >= system.max_inbound_connections {
        return Err(Full::Inbound(system.max_inbound_connections));
    }
    Ok(slot)
}

// === handshakes per source ===

/// Connections of each source address that are still in their handshake on this shard, for
/// `maxHandshakesPerSource`. Per shard, with no shared state: SO_REUSEPORT hashes each
/// connection's ports, so one address's connections spread over the shards and the server as
/// a whole holds at most the bound times the shard count of them.
///
/// A connection takes its place at accept (`try_begin`) and runs inside `in_handshake`; it
/// gives the place back when its first session is handed on (`handshake_done`, called where
/// every protocol's sessions converge: the relay's `carry`, the packet path, a fallback) or
/// when it ends, whichever is first. No protocol or transport knows of it.
#[derive(Default)]
pub(crate) struct Handshakes {
    counts: Rc<RefCell<HashMap<IpAddr, u32>>>,
    /// Refusals are logged at most once a second per shard.
    refusals: RefCell<QuietLog>,
}

impl Handshakes {
    /// A place for one more handshake from `source` under `system`'s bound, refused when
    /// `maxHandshakesPerSource` of them run already. That bound 0: no bound, and nothing is
    /// counted (`None`). A trusted hop is not counted either, but its place may take on the
    /// client behind it (`handshake_from`).
    pub(crate) fn try_begin(
        &self,
        source: IpAddr,
        system: &SystemPolicy,
    ) -> Result<Option<HandshakeSlot>, HandshakesFull> {
        let max = system.max_handshakes_per_source;
        if max == 0 {
            return Ok(None);
        }
        let counted = match system.is_trusted_hop(source) {
            true => None,
            false => Some(self.count(source, max)?),
        };
        Ok(Some(HandshakeSlot { counts: self.counts.clone(), source: Cell::new(counted), held: Cell::new(true), max }))
    }

    /// Counts one more handshake of `source` (by its key), unless `max` run already.
    fn count(&self, source: IpAddr, max: u32) -> Result<IpAddr, HandshakesFull> {
        let source = source_key(source);
        let mut counts = self.counts.borrow_mut();
        let count = counts.entry(source).or_default();
        if *count >= max {
            return Err(HandshakesFull(max));
        }
        *count += 1;
        Ok(source)
    }

    /// Counts and logs a connection from `peer` to inbound `tag` refused by `full`; the caller
    /// closes it unread.
    pub(crate) fn refuse(&self, ctx: &ShardCtx, tag: &str, peer: SocketAddr, full: HandshakesFull) {
        ctx.refusals.add(Refusal::HandshakeLimit);
        self.refusals.borrow_mut().note(ctx, format_args!("[{tag}] {peer} refused: {full}"));
    }

    /// The handshakes in flight from `source` on this shard.
    #[cfg(test)]
    fn in_flight(&self, source: IpAddr) -> u32 {
        self.counts.borrow().get(&source_key(source)).copied().unwrap_or(0)
    }
}

/// The source a connection from `ip` counts as: an IPv4 address (IPv4-mapped too) itself, an
/// IPv6 address its /64, the least a network hands one host, which would otherwise have 2^64
/// sources to spread its handshakes over.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// A source that had `maxHandshakesPerSource` (the number) handshakes in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HandshakesFull(pub(crate) u32);

impl std::fmt::Display for HandshakesFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "policy.system.maxHandshakesPerSource ({}) reached for this address on this shard", self.0)
    }
}

/// One connection's place among its source's handshakes, given back once. `source`: the
/// (keyed) address it counts for; `None` for a trusted hop's, until the client behind the hop
/// is known.
pub(crate) struct HandshakeSlot {
    counts: Rc<RefCell<HashMap<IpAddr, u32>>>,
    source: Cell<Option<IpAddr>>,
    held: Cell<bool>,
    max: u32,
}

impl HandshakeSlot {
    fn release(&self) {
        if !self.held.replace(false) {
            return;
        }
        let Some(source) = self.source.take() else { return };
        let mut counts = self.counts.borrow_mut();
        if let Some(count) = counts.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&source);
            }
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.release();
    }
}

thread_local! {
    /// The handshake of the connection whose task is being polled, if it is still in it.
    static CURRENT: RefCell<Option<Rc<HandshakeSlot>>> = const { RefCell::new(None) };
}

pin_project_lite::pin_project! {
    /// A connection's task (`fut`) run as in its handshake while `slot` is held: inside it,
    /// `handshake_done` gives the slot back. A task-local set around each poll, so that the
    /// place every session passes can end the handshake of whichever connection carries it,
    /// without a handle threaded through every protocol. Once the slot is given back, a poll
    /// costs a branch. A plain struct rather than an async fn: the session future it wraps is
    /// large, and an async fn would hold (and copy) it twice.
    pub(crate) struct InHandshake<F> {
        slot: Option<Rc<HandshakeSlot>>,
        #[pin]
        fut: F,
    }
}

/// `fut` as in the handshake that `slot` holds (none: it is in none).
pub(crate) fn in_handshake<F: Future>(slot: Option<HandshakeSlot>, fut: F) -> InHandshake<F> {
    InHandshake { slot: slot.map(Rc::new), fut }
}

/// `in_handshake` for a task that a connection's task spawns for one of its sessions (a gRPC
/// stream), called from the connection's task: the connection's handshake, if still held,
/// ends with the first of its sessions.
pub(crate) fn inherit_handshake<F: Future>(fut: F) -> InHandshake<F> {
    InHandshake { slot: CURRENT.with(|c| c.borrow().clone()), fut }
}

impl<F: Future> Future for InHandshake<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        let Some(held) = this.slot.take_if(|s| s.held.get()) else {
            return this.fut.poll(cx);
        };
        let outer = CURRENT.with(|c| c.replace(Some(held.clone())));
        let polled = this.fut.poll(cx);
        CURRENT.with(|c| *c.borrow_mut() = outer);
        if held.held.get() {
            *this.slot = Some(held);
        }
        polled
    }
}

/// Says that the connection being served, if it came from a trusted hop and is still in its
/// handshake, carries `client` (as a trusted `X-Forwarded-For` names it): from now on it counts
/// among `client`'s handshakes, refused (`Err`) when `client` has its bound in flight already.
/// A connection from any other source keeps counting for its socket's peer.
pub(crate) fn handshake_from(handshakes: &Handshakes, client: IpAddr) -> Result<(), HandshakesFull> {
    CURRENT.with(|c| {
        let current = c.borrow();
        let Some(slot) = current.as_ref().filter(|s| s.held.get() && s.source.get().is_none()) else {
            return Ok(());
        };
        slot.source.set(Some(handshakes.count(client, slot.max)?));
        Ok(())
    })
}

/// Says that the connection being served is past its handshake: its first session is
/// routed (or handed to a fallback). Its place among its source's handshakes is given back;
/// nothing happens when it has none.
pub(crate) fn handshake_done() {
    CURRENT.with(|c| {
        if let Some(slot) = c.borrow().as_ref() {
            slot.release();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_across_holders_and_come_back_when_dropped() {
        let system = SystemPolicy { max_inbound_connections: 2, ..Default::default() };
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let gauge = inbound_gauge("gate-test", listen);
        let a = admit(&system, &gauge).unwrap();
        let b = admit(&system, &inbound_gauge("gate-test", listen)).unwrap();
        assert_eq!(admit(&system, &gauge).err(), Some(Full::Inbound(2)));
        assert_eq!(gauge.load(Ordering::Relaxed), 2, "a refusal gives its place back");
        drop(a);
        let c = admit(&system, &gauge).unwrap();
        assert!(admit(&system, &inbound_gauge("another", listen)).is_ok(), "other inbounds are not bound by it");
        assert!(Arc::ptr_eq(&inbound_gauge("", listen), &inbound_gauge("", listen)), "untagged: one per address");
        drop((b, c));
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
    }

    #[test]
    // The connection's task below yields its session's future, as a spawn would take it.
    #[allow(clippy::async_yields_async)]
    fn a_source_holds_at_most_its_bound_of_handshakes_until_they_are_done() {
        let handshakes = Handshakes::default();
        let bound = |max| SystemPolicy { max_handshakes_per_source: max, ..Default::default() };
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let first = handshakes.try_begin(a, &bound(2)).unwrap();
        let second = handshakes.try_begin(a, &bound(2)).unwrap();
        assert_eq!(handshakes.try_begin(a, &bound(2)).err(), Some(HandshakesFull(2)));
        assert!(handshakes.try_begin(b, &bound(2)).unwrap().is_some(), "another source is not bound by it");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(handshakes.try_begin(mapped, &bound(2)).is_err(), "a v4-mapped address is the same source");
        assert!(handshakes.try_begin(a, &bound(0)).unwrap().is_none(), "0: no bound, nothing counted");
        // IPv6: one /64 is one source, whatever its low 64 bits; the next /64 is another.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let held = [
            handshakes.try_begin(v6("2001:db8:1:2::1"), &bound(2)),
            handshakes.try_begin(v6("2001:db8:1:2:ffff::9"), &bound(2)),
        ];
        assert!(held.iter().all(|h| h.as_ref().is_ok_and(|s| s.is_some())));
        assert!(handshakes.try_begin(v6("2001:db8:1:2:abcd:1:2:3"), &bound(2)).is_err(), "the same /64 is one source");
        assert!(handshakes.try_begin(v6("2001:db8:1:3::1"), &bound(2)).unwrap().is_some(), "another /64 is another");

        // Done inside the task: the place comes back at once, though the task goes on.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let task = in_handshake(first, async {
            handshake_done();
            handshake_done();
            done_tx.send(()).unwrap();
            std::future::pending::<()>().await
        });
        let mut task = std::pin::pin!(task);
        let waker = std::task::Waker::noop();
        assert!(task.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_pending());
        done_rx.recv().unwrap();
        assert_eq!(handshakes.in_flight(a), 1, "done twice gives back one place");
        handshake_done();
        assert_eq!(handshakes.in_flight(a), 1, "outside the task, done is nobody's");

        // A task the connection spawns shares its handshake; an ended connection gives it back.
        let spawned = futures_lite::future::block_on(in_handshake(second, async {
            inherit_handshake(async { handshake_done() })
        }));
        assert_eq!(handshakes.in_flight(a), 1, "the connection's task ended, its spawned session holds it");
        futures_lite::future::block_on(spawned);
        assert_eq!(handshakes.in_flight(a), 0);
        let third = handshakes.try_begin(a, &bound(2)).unwrap();
        drop(third);
        assert_eq!(handshakes.in_flight(a), 0);
    }

    /// A trusted hop (a CDN's edge) holds any number of handshakes; once a connection from it
    /// names its client (a trusted X-Forwarded-For), it counts for that client, bound as any
    /// source is. Another source's connection keeps counting for its own address.
    #[test]
    fn trusted_hops_are_not_bound_as_one_source_but_the_clients_behind_them_are() {
        let handshakes = Handshakes::default();
        let system = SystemPolicy {
            max_handshakes_per_source: 1,
            trusted_hops: vec!["10.9.0.0/16".parse().unwrap()],
            ..Default::default()
        };
        let (hop, client, other): (IpAddr, IpAddr, IpAddr) =
            ("10.9.1.1".parse().unwrap(), "192.0.2.7".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let mapped: IpAddr = "::ffff:10.9.3.3".parse().unwrap();
        let from_hop: Vec<_> = (0..5).map(|_| handshakes.try_begin(hop, &system).unwrap()).collect();
        assert!(handshakes.try_begin(mapped, &system).is_ok(), "a v4-mapped hop is the hop");
        assert_eq!(handshakes.in_flight(hop), 0, "a hop's connections are not counted as its own");
        let mut from_hop = from_hop.into_iter();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);

        // The first names its client: counted for it.
        let named = in_handshake(from_hop.next().unwrap(), async { handshake_from(&handshakes, client) });
        let mut named = Box::pin(named);
        assert_eq!(named.as_mut().poll(&mut cx), std::task::Poll::Ready(Ok(())));
        assert_eq!(handshakes.in_flight(client), 1);
        // A second connection for the same client is past the client's bound.
        let second = in_handshake(from_hop.next().unwrap(), async { handshake_from(&handshakes, client) });
        assert_eq!(futures_lite::future::block_on(second), Err(HandshakesFull(1)));
        // A connection from an untrusted source keeps its own address, whatever it names.
        let direct = handshakes.try_begin(other, &system).unwrap();
        let direct = in_handshake(direct, async {
            let named = handshake_from(&handshakes, client);
            handshake_done();
            named
        });
        assert_eq!(futures_lite::future::block_on(direct), Ok(()));
        assert_eq!((handshakes.in_flight(client), handshakes.in_flight(other)), (1, 0));
        // The named connection ends: the client's place comes back.
        drop(named);
        assert_eq!(handshakes.in_flight(client), 0);
    }
}
