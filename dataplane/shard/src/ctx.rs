//! `ShardCtx`: everything one shard reads on its hot path, owned by that shard alone.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::outbound::Via;
use crate::transport::tls;
use crate::users::{PasswordKey, SessionWatchers, TableKey, TrojanKey, UserOps, UserStates, UserTable, VmessUsers};
use futures_rustls::TlsAcceptor;
use shardray_core::change::Change;
use shardray_core::log::LogSink;
use shardray_core::router::{Decision, Router, Target};
use shardray_core::routes::{RouteSpecs, RouteTap};
use shardray_core::slots::{UserOp, REMOVAL_GRACE};
use shardray_core::spec::{
    BalancerStrategy, Config, DokodemoSpec, FallbackSpec, HttpHeaderSpec, InboundProtocol, InboundSpec, LevelPolicy,
    OutboundProtocol, PolicySpec, TransportSpec,
};
use shardray_core::stats::{LinkSample, RefusalCounts, SlotCounters, StatsSnapshot, Traffic};

/// A shard's state. Built from the config when the shard starts; `Rc` and `Cell` only.
pub(crate) struct ShardCtx {
    pub(crate) config: Arc<Config>,
    /// The inbounds served now: the config's, plus those the API added, minus those it removed.
    pub(crate) inbounds: RefCell<Vec<Rc<InboundRt>>>,
    /// Each served inbound's accept loop, by tag, with the descriptor of the socket it serves;
    /// removing the inbound cancels it.
    accepting: RefCell<Vec<Accepting>>,
    /// Inbounds a reload replaced whose sessions still run: user removals, kicks and level
    /// changes reach those sessions too, until the last one ends.
    retired: RefCell<Vec<Rc<InboundRt>>>,
    /// Outbounds and routing as specified, changed by route changes.
    specs: RefCell<RouteSpecs>,
    /// Policy levels and system policy (the config's, until a reload sets new ones); a
    /// session takes the `Rc` once, at its start.
    policy: RefCell<Rc<PolicySpec>>,
    /// Outbounds and routing as run: a session clones the `Rc` once and keeps that table,
    /// a change swaps in a new one.
    routes: RefCell<Rc<Routes>>,
    /// Where routing decisions go while someone subscribes to them.
    pub(crate) tap: RouteTap,
    /// User counters by slot (one per email, shared by every inbound the email appears in).
    pub(crate) users: RefCell<SlotCounters>,
    /// The API's listen addresses: never a destination, whatever the rules say.
    pub(crate) api_addrs: Arc<[SocketAddr]>,
    pub(crate) log: LogSink,
    /// Where user events go: `ctx.events.emit(UserEvent::now(..))` reaches the control
    /// thread's hub, which hands it to the API's subscribers. The level limits (rate,
    /// connections, addresses) emit through it (`limits::notice`).
    pub(crate) events: shardray_core::events::EventSink,
    /// Sessions alive on this shard.
    pub(crate) live: Cell<u64>,
    /// Connections in their handshake on this shard, by source, for `maxHandshakesPerSource`.
    pub(crate) handshakes: crate::gate::Handshakes,
    /// Destinations refused, by reason.
    pub(crate) refusals: RefusalCounts,
    /// Sessions of users, so that removing or kicking a user closes them.
    pub(crate) watchers: SessionWatchers,
    /// Live UDP sessions per user, for the flow limit.
    pub(crate) flows: crate::packet::FlowCounts,
    /// The last epoch applied.
    pub(crate) applied: Cell<u64>,
    /// The `dns` object's resolver, if the config has one.
    pub(crate) dns: Option<crate::dns::DnsClient>,
}

/// An inbound's accept (or datagram) loop.
struct Accepting {
    tag: Arc<str>,
    task: glommio::Task<()>,
    /// The socket the loop serves (the loop owns it), and whether it is UDP.
    fd: std::os::fd::RawFd,
    udp: bool,
}

/// An inbound as a shard runs it.
pub(crate) struct InboundRt {
    pub(crate) tag: Arc<str>,
    pub(crate) traffic: Traffic,
    pub(crate) tls: Option<TlsAcceptor>,
    /// REALITY in front of TLS, if configured.
    pub(crate) reality: Option<Box<crate::transport::reality::RealityRt>>,
    /// The HTTP camouflage its connections open with, if any.
    pub(crate) http_header: Option<HttpHeaderSpec>,
    /// Its connections open with a PROXY protocol header naming the real client.
    pub(crate) accept_proxy_protocol: bool,
    /// Raw TCP, WebSocket or HTTPUpgrade under the protocol.
    pub(crate) transport: TransportSpec,
    /// `sockopt.trustedXForwardedFor`: the headers that make `X-Forwarded-For` believed.
    pub(crate) trusted_forwarded: Vec<String>,
    /// `sniffing`, when enabled.
    pub(crate) sniffing: Option<Box<SniffRt>>,
    pub(crate) kind: InboundKind,
    /// VLESS over TLS directly on raw TCP: its users may take the Vision flow, so its TLS
    /// stream keeps track of record boundaries (see `TlsTcp::tracking`).
    pub(crate) vision: bool,
    /// Its live TCP connections on every shard, for `maxInboundConnections`.
    pub(crate) connections: crate::gate::InboundGauge,
}

/// An inbound's `sniffing`, compiled.
pub(crate) struct SniffRt {
    /// `destOverride`: `http`, `tls`, `quic`.
    pub(crate) dest_override: Vec<String>,
    pub(crate) metadata_only: bool,
    pub(crate) route_only: bool,
    pub(crate) excluded: shardray_core::router::DomainList,
    /// `ipsExcluded`: destinations that keep their address.
    pub(crate) ips_excluded: shardray_core::router::IpList,
}

/// What an inbound does with a connection.
pub(crate) enum InboundKind {
    Vless {
        users: RefCell<UserTable>,
        fallbacks: Vec<FallbackSpec>,
    },
    Trojan {
        users: RefCell<UserTable<TrojanKey>>,
        fallbacks: Vec<FallbackSpec>,
    },
    /// VMess: the users' keys, scanned per handshake, and the auth IDs this shard accepted.
    /// Boxed: a VMess table and filter are larger than the other protocols' tables.
    Vmess {
        users: Box<RefCell<VmessUsers>>,
        replay: Box<RefCell<shardray_wire::vmess::ReplayFilter>>,
    },
    /// Shadowsocks: the users' keys, the salts this shard accepted, the inbound's 2022 keys.
    Shadowsocks(Box<crate::inbound::shadowsocks::SsInbound>),
    Dokodemo(DokodemoSpec),
    /// SOCKS (and HTTP proxy requests on the same port) or an HTTP proxy: accounts by the key
    /// of their credentials.
    Proxy {
        users: RefCell<UserTable<PasswordKey>>,
        settings: ProxySettings,
    },
}

/// What a SOCKS or HTTP inbound does besides looking accounts up.
#[derive(Debug)]
pub(crate) struct ProxySettings {
    /// SOCKS first (`socks`), or HTTP only (`http`).
    pub(crate) socks: bool,
    /// Credentials are required: SOCKS `auth: "password"`; an HTTP inbound configured with
    /// accounts, or one that has been given one since (see `InboundKind::proxy_auth`).
    pub(crate) auth: Cell<bool>,
    /// `allowTransparent` (HTTP inbound only).
    pub(crate) allow_transparent: bool,
    /// `userLevel`: the level of a session without an account.
    pub(crate) user_level: u32,
    /// SOCKS `udp`: UDP ASSOCIATE is served.
    pub(crate) udp: bool,
    /// SOCKS `ip`: the address a UDP ASSOCIATE reply names.
    pub(crate) udp_ip: Option<shardray_wire::addr::Address>,
}

impl InboundKind {
    /// The inbound's user table, whatever its key, for watching sessions.
    pub(crate) fn user_states(&self) -> Option<&dyn UserStates> {
        match self {
            InboundKind::Vless { users, .. } => Some(users),
            InboundKind::Trojan { users, .. } => Some(users),
            InboundKind::Vmess { users, .. } => Some(&**users),
            InboundKind::Proxy { users, .. } => Some(users),
            InboundKind::Shadowsocks(ss) => Some(&ss.users),
            InboundKind::Dokodemo(_) => None,
        }
    }

    /// The inbound's fallbacks (none for a protocol without them).
    pub(crate) fn fallbacks(&self) -> &[FallbackSpec] {
        match self {
            InboundKind::Vless { fallbacks, .. } | InboundKind::Trojan { fallbacks, .. } => fallbacks,
            InboundKind::Vmess { .. }
            | InboundKind::Shadowsocks(_)
            | InboundKind::Dokodemo(_)
            | InboundKind::Proxy { .. } => &[],
        }
    }
}

/// An outbound as a shard runs it.
pub(crate) struct OutboundRt {
    pub(crate) tag: Arc<str>,
    pub(crate) traffic: Traffic,
    pub(crate) protocol: OutboundProtocol,
    /// A Trojan outbound's key and TLS client, built once.
    pub(crate) trojan: Option<crate::outbound::trojan::TrojanClient>,
    /// A VMess outbound's keys and TLS client, built once.
    pub(crate) vmess: Option<crate::outbound::vmess::VmessClient>,
    /// A SOCKS or HTTP outbound's TLS client, built once.
    pub(crate) proxy: Option<crate::outbound::proxy::ProxyClient>,
    /// A VLESS outbound's id and TLS client, built once.
    pub(crate) vless: Option<crate::outbound::vless::VlessClient>,
    /// A Shadowsocks outbound's keys, derived once.
    pub(crate) shadowsocks: Option<crate::outbound::shadowsocks::SsClient>,
    /// `sendThrough` and `sockopt`: how its sockets are made.
    pub(crate) via: crate::outbound::Via,
}

/// The outbounds, the compiled rules and the balancers of one epoch.
pub(crate) struct Routes {
    pub(crate) router: Router,
    pub(crate) outbounds: Vec<Rc<OutboundRt>>,
    balancers: Vec<BalancerRt>,
}

/// A balancer as a shard runs it: its candidates resolved to outbound indices.
struct BalancerRt {
    candidates: Vec<usize>,
    strategy: BalancerStrategy,
    /// `fallbackTag`, resolved; `None` when there is none.
    fallback: Option<Resolved>,
    /// The override target, resolved.
    pinned: Option<Resolved>,
    /// Round-robin position, or the random generator's state.
    turn: Cell<u64>,
}

/// Where a routed connection goes, once balancers have picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// The outbound at this index.
    Outbound(usize),
    /// A rule, fallback or override names this tag and no outbound has it: drop.
    Missing(Arc<str>),
    /// No rule matched and there is no outbound left to be the default: drop.
    NoDefault,
}

impl Routes {
    /// Builds the table for `specs`, keeping the counters of outbounds `old` already runs
    /// under the same tag and settings.
    fn build(specs: &RouteSpecs, old: Option<&Routes>) -> Result<Routes, String> {
        let router = specs.compile().map_err(|e| format!("routing.rules[{}]: {}", e.index, e.reason))?;
        let outbounds = specs
            .outbounds
            .iter()
            .map(|o| {
                let kept = old.and_then(|old| {
                    old.outbounds.iter().find(|rt| {
                        !o.tag.is_empty() && *rt.tag == *o.tag && rt.protocol == o.protocol && rt.via == Via::of(o)
                    })
                });
                match kept {
                    Some(rt) => Ok(rt.clone()),
                    None => {
                        let trojan = match &o.protocol {
                            OutboundProtocol::Trojan(t) => Some(
                                crate::outbound::trojan::TrojanClient::new(t)
                                    .map_err(|e| format!("outbound {:?}: {e}", o.tag))?,
                            ),
                            _ => None,
                        };
                        let vmess = match &o.protocol {
                            OutboundProtocol::Vmess(v) => Some(
                                crate::outbound::vmess::VmessClient::new(v)
                                    .map_err(|e| format!("outbound {:?}: {e}", o.tag))?,
                            ),
                            _ => None,
                        };
                        let proxy = match &o.protocol {
                            OutboundProtocol::Socks(p) | OutboundProtocol::Http(p) => Some(
                                crate::outbound::proxy::ProxyClient::new(p)
                                    .map_err(|e| format!("outbound {:?}: {e}", o.tag))?,
                            ),
                            _ => None,
                        };
                        let vless = match &o.protocol {
                            OutboundProtocol::Vless(v) => Some(
                                crate::outbound::vless::VlessClient::new(v)
                                    .map_err(|e| format!("outbound {:?}: {e}", o.tag))?,
                            ),
                            _ => None,
                        };
                        let shadowsocks = match &o.protocol {
                            OutboundProtocol::Shadowsocks(s) => Some(
                                crate::outbound::shadowsocks::SsClient::new(s)
                                    .map_err(|e| format!("outbound {:?}: {e}", o.tag))?,
                            ),
                            _ => None,
                        };
                        Ok(Rc::new(OutboundRt {
                            tag: o.tag.as_str().into(),
                            traffic: Traffic::default(),
                            protocol: o.protocol.clone(),
                            trojan,
                            vmess,
                            proxy,
                            vless,
                            shadowsocks,
                            via: Via::of(o),
                        }))
                    }
                }
            })
            .collect::<Result<_, String>>()?;
        let by_tag = |tag: &str| match specs.outbound_index(tag) {
            Some(i) => Resolved::Outbound(i),
            None => Resolved::Missing(tag.into()),
        };
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let balancers = specs
            .routing
            .balancers
            .iter()
            .enumerate()
            .map(|(i, b)| BalancerRt {
                candidates: specs.candidates(i),
                strategy: b.strategy,
                fallback: (!b.fallback_tag.is_empty()).then(|| by_tag(&b.fallback_tag)),
                pinned: specs.overrides.get(&b.tag).map(|t| by_tag(t)),
                turn: Cell::new(match b.strategy {
                    BalancerStrategy::RoundRobin => 0,
                    // Any odd value seeds the generator.
                    BalancerStrategy::Random => (seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
                }),
            })
            .collect();
        Ok(Routes { router, outbounds, balancers })
    }

    /// Where `decision` sends the connection: a balancer picks now.
    pub(crate) fn resolve(&self, decision: &Decision) -> Resolved {
        let default = || if self.outbounds.is_empty() { Resolved::NoDefault } else { Resolved::Outbound(0) };
        match decision.target {
            Target::Outbound(0) if decision.rule.is_none() => default(),
            Target::Outbound(i) if i < self.outbounds.len() => Resolved::Outbound(i),
            Target::Outbound(_) => default(),
            Target::Missing => Resolved::Missing(decision.rule.map_or("", |r| self.router.target_tag(r)).into()),
            Target::Balancer(b) => match self.balancers.get(b) {
                Some(b) => b.pick().unwrap_or_else(default),
                None => default(),
            },
        }
    }
}

impl BalancerRt {
    /// The override if set, else a candidate by the strategy, else the fallback; `None` sends
    /// the connection to the default outbound, as upstream does when a balancer fails.
    fn pick(&self) -> Option<Resolved> {
        if let Some(pinned) = &self.pinned {
            return Some(pinned.clone());
        }
        let n = self.candidates.len() as u64;
        if n == 0 {
            return self.fallback.clone();
        }
        let t = self.turn.get();
        let i = match self.strategy {
            BalancerStrategy::RoundRobin => {
                self.turn.set(t.wrapping_add(1));
                t % n
            }
            BalancerStrategy::Random => {
                // xorshift64: plenty for spreading connections, and no shared state.
                let mut x = t;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.turn.set(x);
                x % n
            }
        };
        Some(Resolved::Outbound(self.candidates[i as usize]))
    }
}

impl ShardCtx {
    /// Builds a shard's state; fails only on TLS settings that control has already checked.
    pub(crate) fn new(
        config: Arc<Config>,
        api_addrs: Arc<[SocketAddr]>,
        log: LogSink,
        tap: RouteTap,
        events: shardray_core::events::EventSink,
        dns: Option<crate::dns::DnsClient>,
    ) -> Result<ShardCtx, String> {
        let specs = RouteSpecs::from_config(&config);
        let routes = Routes::build(&specs, None)?;
        let ctx = ShardCtx {
            config: config.clone(),
            inbounds: RefCell::default(),
            accepting: RefCell::default(),
            retired: RefCell::default(),
            specs: RefCell::new(specs),
            policy: RefCell::new(Rc::new(config.policy.clone())),
            routes: RefCell::new(Rc::new(routes)),
            tap,
            users: RefCell::default(),
            api_addrs,
            log,
            events,
            live: Cell::new(0),
            handshakes: Default::default(),
            refusals: RefusalCounts::default(),
            watchers: SessionWatchers::default(),
            flows: Default::default(),
            applied: Cell::new(0),
            dns,
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
        let reality = match &inbound.reality {
            Some(spec) => Some(Box::new(crate::transport::reality::RealityRt::new(spec)?)),
            None => None,
        };
        let kind = match &inbound.protocol {
            // Users come as resolved operations (`apply_users`), not from `v.clients`.
            InboundProtocol::Vless(v) => {
                InboundKind::Vless { users: RefCell::new(UserTable::default()), fallbacks: v.fallbacks.clone() }
            }
            InboundProtocol::Trojan(t) => {
                InboundKind::Trojan { users: RefCell::new(UserTable::default()), fallbacks: t.fallbacks.clone() }
            }
            InboundProtocol::Vmess(_) => InboundKind::Vmess { users: Box::default(), replay: Box::default() },
            InboundProtocol::Shadowsocks(s) => {
                let server_psk = match (s.method_2022, &s.server_psk) {
                    (Some(method), Some(psk)) => Some(
                        shardray_wire::shadowsocks::MasterKey::from_psk(method, psk)
                            .map_err(|e| format!("inbound {:?}: settings.password: {e}", inbound.tag))?,
                    ),
                    _ => None,
                };
                InboundKind::Shadowsocks(Box::new(crate::inbound::shadowsocks::SsInbound {
                    users: RefCell::default(),
                    replay: RefCell::new(shardray_wire::shadowsocks::ReplayFilter::new(
                        crate::inbound::shadowsocks::REPLAY_CAPACITY,
                    )),
                    method_2022: s.method_2022,
                    server_psk,
                }))
            }
            InboundProtocol::Dokodemo(d) => InboundKind::Dokodemo(d.clone()),
            InboundProtocol::Socks(p) => InboundKind::Proxy {
                users: RefCell::default(),
                settings: ProxySettings {
                    socks: true,
                    auth: Cell::new(p.password_auth),
                    allow_transparent: false,
                    user_level: p.user_level,
                    udp: p.udp,
                    udp_ip: p.udp_ip.clone(),
                },
            },
            InboundProtocol::Http(p) => InboundKind::Proxy {
                users: RefCell::default(),
                settings: ProxySettings {
                    socks: false,
                    auth: Cell::new(!p.clients.is_empty()),
                    allow_transparent: p.allow_transparent,
                    user_level: p.user_level,
                    udp: false,
                    udp_ip: None,
                },
            },
        };
        Ok(InboundRt {
            tag: inbound.tag.as_str().into(),
            traffic: Traffic::default(),
            tls,
            reality,
            http_header: inbound.http_header.clone(),
            accept_proxy_protocol: inbound.sockopt.accept_proxy_protocol,
            transport: inbound.transport.clone(),
            trusted_forwarded: inbound.sockopt.trusted_x_forwarded_for.clone(),
            sniffing: match &inbound.sniffing {
                Some(s) => Some(Box::new(SniffRt {
                    dest_override: s.dest_override.clone(),
                    metadata_only: s.metadata_only,
                    route_only: s.route_only,
                    excluded: shardray_core::router::DomainList::new(&s.domains_excluded)
                        .map_err(|e| format!("inbound {:?}: sniffing.domainsExcluded: {e}", inbound.tag))?,
                    ips_excluded: shardray_core::router::IpList::new(&s.ips_excluded),
                })),
                None => None,
            },
            kind,
            vision: inbound.vision_refused().is_none(),
            connections: crate::gate::inbound_gauge(&inbound.tag, inbound.listen),
        })
    }

    /// Starts accepting on an inbound's listener and serving its UDP socket (this shard's own
    /// SO_REUSEPORT sockets).
    pub(crate) fn start_accepting(self: &Rc<Self>, inbound: Rc<InboundRt>, sockets: crate::InboundSockets) {
        use std::os::fd::AsRawFd;
        let tag = inbound.tag.clone();
        if let Some(listener) = sockets.tcp {
            let fd = listener.as_raw_fd();
            let task = glommio::spawn_local(crate::inbound::accept_loop(self.clone(), inbound.clone(), listener));
            self.accepting.borrow_mut().push(Accepting { tag: tag.clone(), task, fd, udp: false });
        }
        if let Some(socket) = sockets.udp {
            let fd = socket.as_raw_fd();
            let task = glommio::spawn_local(crate::inbound::datagram_loop(self.clone(), inbound, socket));
            self.accepting.borrow_mut().push(Accepting { tag, task, fd, udp: true });
        }
    }

    /// Every accept loop, taken out so the caller can cancel them (on drain).
    pub(crate) fn take_accepting(&self) -> Vec<glommio::Task<()>> {
        self.accepting.borrow_mut().drain(..).map(|a| a.task).collect()
    }

    /// Copies of the sockets the inbound tagged `tag` accepts on (dup(2)), for its next
    /// accept loops: the sockets themselves stay open, their queued connections included.
    fn dup_sockets(&self, tag: &str) -> Result<crate::InboundSockets, String> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let mut sockets = crate::InboundSockets::default();
        for a in self.accepting.borrow().iter().filter(|a| &*a.tag == tag) {
            // SAFETY: `a.fd` is open: its loop owns it until the caller cancels the loop.
            let fd = unsafe { libc::fcntl(a.fd, libc::F_DUPFD_CLOEXEC, 0) };
            if fd < 0 {
                return Err(format!("inbound {tag}: keeping its socket: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: `fd` was just returned by fcntl and is ours alone.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            if a.udp {
                sockets.udp = Some(owned.into());
            } else {
                sockets.tcp = Some(owned.into());
            }
        }
        Ok(sockets)
    }

    /// Serves inbound `spec.tag` with new settings: a new runtime form with the users `ops`
    /// gives it, on new sockets (`listener`) or on copies of the ones it has. The replaced
    /// form stays reachable for user operations while its sessions run. Returns the old accept
    /// loops, for the caller to cancel.
    fn replace_inbound(
        self: &Rc<Self>,
        spec: &InboundSpec,
        ops: &[UserOp],
        listener: Option<crate::InboundSockets>,
    ) -> Result<Vec<glommio::Task<()>>, String> {
        let inbound = Rc::new(self.inbound_rt(spec)?);
        let sockets = match listener {
            Some(sockets) => sockets,
            None => self.dup_sockets(&spec.tag)?,
        };
        self.apply_users(&inbound, ops)?;
        let old = {
            let mut inbounds = self.inbounds.borrow_mut();
            let at = inbounds
                .iter()
                .position(|i| *i.tag == *spec.tag)
                .ok_or_else(|| format!("handler not found: {}", spec.tag))?;
            std::mem::replace(&mut inbounds[at], inbound.clone())
        };
        let stopped = self.accepting.borrow_mut().extract_if(.., |a| *a.tag == *spec.tag).map(|a| a.task).collect();
        self.retired.borrow_mut().push(old);
        self.start_accepting(inbound, sockets);
        Ok(stopped)
    }

    /// Applies user operations to the replaced forms of inbound `tag` whose sessions still
    /// run: removals, kicks and level changes, without touching the slots (the live form's
    /// operations do), and forgets the forms no session holds any more.
    fn apply_retired(&self, tag: &str, ops: &[UserOp]) {
        self.retired.borrow_mut().retain(|r| Rc::strong_count(r) > 1);
        let retired: Vec<Rc<InboundRt>> = self.retired.borrow().iter().filter(|r| &*r.tag == tag).cloned().collect();
        if retired.is_empty() {
            return;
        }
        let ops: Vec<UserOp> = ops
            .iter()
            .filter_map(|op| match op {
                UserOp::Add { .. } => None,
                UserOp::Remove { id, slot, .. } => Some(UserOp::Remove { id: *id, slot: *slot, free_slot: false }),
                other => Some(other.clone()),
            })
            .collect();
        for r in retired {
            // The retired table has the same users the live one had: an error here is a missing
            // user, which needs nothing done.
            let _ = self.apply_users(&r, &ops);
        }
    }

    /// Applies one change from the control thread, with its user operations as control
    /// resolved them. Control has validated it against the same state, so a failure here
    /// means the shard and control disagree: it is reported, not hidden. `listener` is this
    /// shard's socket for an added inbound. Returns the accept loops of a removed inbound,
    /// for the caller to cancel before it acknowledges the change.
    pub(crate) fn apply(
        self: &Rc<Self>,
        epoch: u64,
        change: &Change,
        ops: &[UserOp],
        listener: Option<crate::InboundSockets>,
    ) -> Result<Vec<glommio::Task<()>>, String> {
        let mut stopped = Vec::new();
        match change {
            Change::AddInbound { spec } => {
                let listener = listener.ok_or_else(|| format!("no listener came with inbound {}", spec.tag))?;
                let inbound = Rc::new(self.inbound_rt(spec)?);
                self.apply_users(&inbound, ops)?;
                self.inbounds.borrow_mut().push(inbound.clone());
                self.start_accepting(inbound, listener);
            }
            Change::RemoveInbound { tag } => {
                stopped = self.remove_inbound(tag, ops)?;
                self.apply_retired(tag, ops);
            }
            Change::ReplaceInbound { spec, .. } => stopped = self.replace_inbound(spec, ops, listener)?,
            Change::SetPolicy { policy } => *self.policy.borrow_mut() = Rc::new((**policy).clone()),
            _ if change.inbound().is_none() => self.apply_routes(change)?,
            _ => {
                let tag = change.inbound().unwrap_or_default();
                let inbound = self.inbounds.borrow().iter().find(|i| &*i.tag == tag).cloned();
                let inbound = inbound.ok_or_else(|| format!("handler not found: {tag}"))?;
                // A panel changes a user by removing and adding it again: a removed user's live
                // sessions close after a grace, and an add of the same user within it keeps them.
                // (A replacement of the users, a reload's, keeps who stays by itself.)
                let removes = matches!(change, Change::RemoveUsers { .. });
                let grace = removes.then(|| Instant::now() + REMOVAL_GRACE);
                self.apply_users_with(&inbound, ops, grace)?;
                if let Some(until) = grace {
                    self.end_grace_at(inbound, until);
                }
                self.apply_retired(tag, ops);
            }
        }
        self.applied.set(epoch);
        Ok(stopped)
    }

    /// At `until`, closes the live sessions of `inbound`'s users removed with a grace ending
    /// then that were not added back.
    fn end_grace_at(self: &Rc<Self>, inbound: Rc<InboundRt>, until: Instant) {
        let ctx = Rc::downgrade(self);
        glommio::spawn_local(async move {
            glommio::timer::sleep(until.saturating_duration_since(Instant::now())).await;
            let Some(ctx) = ctx.upgrade() else { return };
            let now = Instant::now();
            match &inbound.kind {
                InboundKind::Vless { users, .. } => ctx.expire_grace(users, now),
                InboundKind::Trojan { users, .. } => ctx.expire_grace(users, now),
                InboundKind::Vmess { users, .. } => ctx.expire_grace(&**users, now),
                InboundKind::Proxy { users, .. } => ctx.expire_grace(users, now),
                InboundKind::Shadowsocks(ss) => ctx.expire_grace(&ss.users, now),
                InboundKind::Dokodemo(_) => {}
            }
        })
        .detach();
    }

    /// Closes the sessions of `table`'s users whose removal grace ended by `now`.
    fn expire_grace<T: UserOps>(&self, table: &RefCell<T>, now: Instant)
    where
        RefCell<T>: UserStates,
    {
        let ended = table.borrow_mut().expire(now);
        for rec in ended {
            self.watchers.wake(table, rec);
        }
    }

    /// Takes an inbound out of service: its accept loops are returned for cancelling, and its
    /// users are removed (`ops`), which closes their live sessions.
    fn remove_inbound(&self, tag: &str, ops: &[UserOp]) -> Result<Vec<glommio::Task<()>>, String> {
        let inbound = {
            let mut inbounds = self.inbounds.borrow_mut();
            let at = inbounds.iter().position(|i| &*i.tag == tag).ok_or_else(|| format!("handler not found: {tag}"))?;
            inbounds.remove(at)
        };
        let stopped = self.accepting.borrow_mut().extract_if(.., |a| &*a.tag == tag).map(|a| a.task).collect();
        if !ops.is_empty() {
            self.apply_users(&inbound, ops)?;
        }
        Ok(stopped)
    }

    /// Carries out user operations on one inbound's table and the slot counters.
    pub(crate) fn apply_users(&self, inbound: &InboundRt, ops: &[UserOp]) -> Result<(), String> {
        self.apply_users_with(inbound, ops, None)
    }

    /// `apply_users`, a removal's live sessions closing at `grace` rather than at once (see
    /// `REMOVAL_GRACE`).
    fn apply_users_with(&self, inbound: &InboundRt, ops: &[UserOp], grace: Option<Instant>) -> Result<(), String> {
        let tag = &inbound.tag;
        match &inbound.kind {
            InboundKind::Vless { users, .. } => self.apply_user_ops(tag, users, ops, grace),
            InboundKind::Trojan { users, .. } => self.apply_user_ops(tag, users, ops, grace),
            InboundKind::Vmess { users, .. } => self.apply_user_ops(tag, &**users, ops, grace),
            InboundKind::Proxy { users, settings } => {
                // An HTTP inbound asks for credentials once it has an account, and keeps asking
                // when the last one is removed: removing users never opens a proxy.
                if !settings.socks && ops.iter().any(|op| matches!(op, UserOp::Add { .. })) {
                    settings.auth.set(true);
                }
                self.apply_user_ops(tag, users, ops, grace)
            }
            // Nothing to do is fine (an inbound added through the API comes with no operations).
            InboundKind::Dokodemo(_) if ops.is_empty() => Ok(()),
            InboundKind::Shadowsocks(ss) => self.apply_user_ops(tag, &ss.users, ops, grace),
            InboundKind::Dokodemo(_) => Err(format!("inbound {} has no users", inbound.tag)),
        }
    }

    /// `apply_users` for a table of any key; an id of another protocol's kind is an error.
    fn apply_user_ops<T: UserOps>(
        &self,
        tag: &str,
        table: &RefCell<T>,
        ops: &[UserOp],
        grace: Option<Instant>,
    ) -> Result<(), String>
    where
        RefCell<T>: UserStates,
    {
        let wrong = |id: &shardray_core::slots::UserId| format!("inbound {tag}: user key {id} is of another protocol");
        let mut users = table.borrow_mut();
        let mut slots = self.users.borrow_mut();
        // Sessions to wake once the table is released (they look at it when woken).
        let mut woken = Vec::new();
        let mut failed = None;
        for op in ops {
            let id = match op {
                UserOp::Add { user, .. } => user.id,
                UserOp::Remove { id, .. }
                | UserOp::SetLevel { id, .. }
                | UserOp::Kick { id }
                | UserOp::Suspend { id, .. } => *id,
                UserOp::Quota { slot, cell } => {
                    slots.set_quota(*slot, cell.clone());
                    continue;
                }
            };
            let Some(key) = T::Key::from_id(&id) else {
                failed.get_or_insert_with(|| wrong(&id));
                continue;
            };
            match op {
                UserOp::Add { user, email, new_slot } => {
                    if let Some(email) = email {
                        slots.assign(user.slot, email.clone(), *new_slot);
                    }
                    woken.extend(users.insert(user).ok().flatten());
                }
                UserOp::Remove { slot, free_slot, .. } => {
                    match grace {
                        Some(until) => users.remove_after(&key, until),
                        None => woken.extend(users.remove(&key)),
                    }
                    if *free_slot {
                        slots.free(*slot);
                    }
                }
                UserOp::SetLevel { level, .. } => woken.extend(users.set_level(&key, *level)),
                UserOp::Kick { .. } => woken.extend(users.kick(&key)),
                UserOp::Suspend { suspended, .. } => woken.extend(users.suspend(&key, *suspended)),
                UserOp::Quota { .. } => {}
            }
        }
        drop((users, slots));
        for rec in woken {
            self.watchers.wake(table, rec);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Applies an outbound or routing change: the specs change, and a new table replaces the
    /// current one. Sessions already routed keep the table they took.
    fn apply_routes(&self, change: &Change) -> Result<(), String> {
        let mut specs = self.specs.borrow_mut();
        specs.apply(change).map_err(|e| e.to_string())?;
        let routes = Routes::build(&specs, Some(&self.routes.borrow()))?;
        *self.routes.borrow_mut() = Rc::new(routes);
        Ok(())
    }

    /// The routing table in force now.
    pub(crate) fn routes(&self) -> Rc<Routes> {
        self.routes.borrow().clone()
    }

    /// The policy for a level.
    pub(crate) fn policy(&self, level: u32) -> LevelPolicy {
        self.policy.borrow().level(level)
    }

    /// Every level's policy and the system policy, as in force now.
    pub(crate) fn policies(&self) -> Rc<PolicySpec> {
        self.policy.borrow().clone()
    }

    /// The shard's totals, for the control thread: the user slots in `slots` (none for an
    /// empty range: just inbounds and outbounds).
    pub(crate) fn snapshot(&self, slots: std::ops::Range<u32>) -> StatsSnapshot {
        let link = |tag: &Arc<str>, t: &Traffic| LinkSample { tag: tag.clone(), up: t.up.get(), down: t.down.get() };
        let mut snap = StatsSnapshot {
            inbounds: self.inbounds.borrow().iter().map(|i| link(&i.tag, &i.traffic)).collect(),
            outbounds: self.routes.borrow().outbounds.iter().map(|o| link(&o.tag, &o.traffic)).collect(),
            live_sessions: self.live.get(),
            refusals: self.refusals.sample(),
            epoch: self.applied.get(),
            ..Default::default()
        };
        self.users.borrow().sample(slots, &mut snap);
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

#[cfg(test)]
mod tests {
    use super::*;
    use shardray_core::spec::{BalancerSpec, BlackholeSpec, FreedomSpec, PortRange, RuleSpec};

    fn outbound(tag: &str) -> shardray_core::spec::OutboundSpec {
        shardray_core::spec::OutboundSpec {
            tag: tag.into(),
            send_through: None,
            sockopt: Default::default(),
            protocol: OutboundProtocol::Freedom(FreedomSpec::default()),
        }
    }

    fn specs() -> RouteSpecs {
        let mut s = RouteSpecs {
            outbounds: vec![outbound("direct"), outbound("px-a"), outbound("px-b")],
            ..Default::default()
        };
        s.routing.balancers = vec![BalancerSpec {
            tag: "g".into(),
            selectors: vec!["px-".into()],
            strategy: BalancerStrategy::RoundRobin,
            fallback_tag: "direct".into(),
        }];
        s.routing.rules = vec![
            RuleSpec { ports: vec![PortRange { from: 1, to: 1 }], balancer_tag: "g".into(), ..Default::default() },
            RuleSpec { ports: vec![PortRange { from: 2, to: 2 }], outbound_tag: "px-b".into(), ..Default::default() },
        ];
        s
    }

    fn balanced(routes: &Routes) -> Resolved {
        routes.resolve(&Decision { target: Target::Balancer(0), rule: Some(0), explicit_dest: false })
    }

    #[test]
    fn round_robin_override_fallback_and_missing() {
        let mut s = specs();
        let routes = Routes::build(&s, None).unwrap();
        let picks: Vec<Resolved> = (0..4).map(|_| balanced(&routes)).collect();
        assert_eq!(picks, [Resolved::Outbound(1), Resolved::Outbound(2), Resolved::Outbound(1), Resolved::Outbound(2)]);

        s.apply(&Change::OverrideBalancer { balancer: "g".into(), target: "px-b".into() }).unwrap();
        let routes = Routes::build(&s, Some(&routes)).unwrap();
        assert!((0..4).all(|_| balanced(&routes) == Resolved::Outbound(2)));

        s.apply(&Change::OverrideBalancer { balancer: "g".into(), target: String::new() }).unwrap();
        s.apply(&Change::RemoveOutbound { tag: "px-a".into() }).unwrap();
        s.apply(&Change::RemoveOutbound { tag: "px-b".into() }).unwrap();
        let routes = Routes::build(&s, Some(&routes)).unwrap();
        assert_eq!(balanced(&routes), Resolved::Outbound(0), "no candidate: the fallback");
        let to_b = Decision { target: Target::Missing, rule: Some(1), explicit_dest: false };
        assert_eq!(routes.resolve(&to_b), Resolved::Missing("px-b".into()));
    }

    #[test]
    fn random_uses_every_candidate_and_counters_survive_a_rebuild() {
        let mut s = specs();
        s.routing.balancers[0].strategy = BalancerStrategy::Random;
        let routes = Routes::build(&s, None).unwrap();
        let picks: Vec<Resolved> = (0..64).map(|_| balanced(&routes)).collect();
        assert!(picks.contains(&Resolved::Outbound(1)) && picks.contains(&Resolved::Outbound(2)));
        routes.outbounds[1].traffic.add_up(7);

        s.apply(&Change::AddOutbound { outbound: outbound("px-c") }).unwrap();
        let mut sink = outbound("px-b");
        sink.protocol = OutboundProtocol::Blackhole(BlackholeSpec::default());
        s.apply(&Change::RemoveOutbound { tag: "px-b".into() }).unwrap();
        s.apply(&Change::AddOutbound { outbound: sink }).unwrap();
        let rebuilt = Routes::build(&s, Some(&routes)).unwrap();
        assert!(Rc::ptr_eq(&routes.outbounds[1], &rebuilt.outbounds[1]), "px-a kept");
        assert_eq!(rebuilt.outbounds[1].traffic.up.get(), 7);
        assert!(!Rc::ptr_eq(&routes.outbounds[2], &rebuilt.outbounds[3]), "px-b is another outbound now");
    }
}
