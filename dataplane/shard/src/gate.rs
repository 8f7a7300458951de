//! Connection limits that hold across shards: `policy.system.maxConnections` for the whole
//! server and `maxInboundConnections` for each inbound. SO_REUSEPORT spreads one inbound's
//! connections over every shard, so a per-shard bound would be the limit times the shard
//! count: the counts are process-wide atomics instead, touched once at accept and once at
//! close (never per byte). They count whether or not a limit is set, so a limit a reload turns
//! on finds the true number of live connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use shardray_core::spec::SystemPolicy;

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
}
