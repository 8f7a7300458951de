//! Outbounds: routing a session that an inbound has decoded, dialing, and relaying.
//!
//! `forward` is the common tail of every inbound's pipeline: route → outbound → relay, with
//! the session's counters, timeouts and access-log line.

pub(crate) mod dns;
pub(crate) mod proxy;
mod resolve;
pub(crate) mod shadowsocks;
mod sniff;

pub(crate) use sniff::sniff_datagrams;
pub(crate) mod trojan;
pub(crate) mod vless;
pub(crate) mod vmess;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use shardray_core::quota::QuotaCell;
use shardray_core::router::{Decision, RouteInput};
use shardray_core::routes::RouteRecord;
use shardray_core::spec::{LevelPolicy, LogLevel, OutboundProtocol, RoutingDomainStrategy};
use shardray_core::stats::{Refusal, SlotCounters, Traffic};
use shardray_wire::addr::Destination;
use shardray_wire::sniff::RequestAttrs;

use crate::ctx::{InboundRt, OutboundRt, Resolved, Routes, ShardCtx};
use crate::limits::{Admitted, Allowance, LimitEvent, SessionRates};
use crate::relay::{relay, Meter, RelayEnd, RelayOptions, POLL_BUDGET};
use crate::transport::vision::VisionSwitch;
use crate::users::{SessionWatch, UserHandle};

pub(crate) use resolve::{connect_configured, resolve, resolve_system, Via};
use trojan::Upstream;

/// How long a dial may take before the session is given up.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// `step`'s outcome, or a `TimedOut` error saying `what` once `DIAL_TIMEOUT` passes: every
/// part of reaching a server (connecting, its TLS or REALITY, a proxy's or HTTP/2's opening)
/// is bounded by it.
pub(crate) async fn within_dial_timeout<T>(
    step: impl Future<Output = io::Result<T>>,
    what: &'static str,
) -> io::Result<T> {
    futures_lite::future::or(step, async {
        glommio::timer::sleep(DIAL_TIMEOUT).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, what))
    })
    .await
}

/// The answer a blackhole with `response.type = "http"` gives.
const HTTP_403: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nCache-Control: max-age=3600, public\r\nContent-Length: 0\r\n\r\n";

/// A decoded session, ready to be routed.
pub(crate) struct Session<'a> {
    pub(crate) inbound: &'a InboundRt,
    pub(crate) peer: SocketAddr,
    pub(crate) user: Option<UserHandle>,
    pub(crate) level: u32,
    pub(crate) dest: Destination,
    /// The client's socket if the relay may splice it (see `ConnInfo::plain_fd`).
    pub(crate) client_fd: Option<std::os::fd::RawFd>,
    /// Its place under the user's `maxConnections` and `maxIPs`, held while it lives (never
    /// read: dropped with the session).
    #[allow(dead_code)]
    pub(crate) admitted: Admitted,
}

/// What a routed session does once its upstream is connected.
pub(crate) enum Carry<'a> {
    /// Relays both ways until done. `early` is payload the client sent along with its header;
    /// `down_prefix` goes to the client before any downlink bytes.
    Relay { early: &'a [u8], down_prefix: &'a [u8], vision: Option<&'a VisionSwitch> },
    /// One forwarded HTTP request and its response (an HTTP proxy's absolute-URI request).
    Exchange(&'a mut crate::inbound::http::Exchange),
}

/// Routes `session`, dials its outbound and relays until done. `early` is payload the client
/// sent along with its header; `down_prefix` goes to the client before any downlink bytes.
pub(crate) fn forward<'a, C>(
    ctx: &'a Rc<ShardCtx>,
    client: &'a mut C,
    session: Session<'a>,
    early: &'a [u8],
    down_prefix: &'a [u8],
) -> Pin<Box<impl Future<Output = ()> + 'a>>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    carry(ctx, client, session, Carry::Relay { early, down_prefix, vision: None })
}

/// `forward` for a Vision session: once `switch` says the client stream is its bare socket,
/// the relay goes on by splice(2) (when the upstream is plain TCP too).
pub(crate) fn forward_vision<'a, C>(
    ctx: &'a Rc<ShardCtx>,
    client: &'a mut C,
    session: Session<'a>,
    early: &'a [u8],
    switch: &'a VisionSwitch,
) -> Pin<Box<impl Future<Output = ()> + 'a>>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    carry(ctx, client, session, Carry::Relay { early, down_prefix: &[], vision: Some(switch) })
}

/// Routes `session`, dials its outbound, and carries the session over it as `how` says.
/// Boxed, and not an `async fn` of its own: a connection's future is allocated whole at
/// accept, and must not carry room for its session (the relay's state) while a trickling
/// client's handshake arrives, nor a copy of the session's arguments in each layer between.
pub(crate) fn carry<'a, C>(
    ctx: &'a Rc<ShardCtx>,
    client: &'a mut C,
    mut session: Session<'a>,
    how: Carry<'a>,
) -> Pin<Box<impl Future<Output = ()> + 'a>>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    // An `async move` block rather than an `async fn`: it keeps its inputs once, where a
    // function's future would hold them twice (as passed, and as its locals).
    Box::pin(async move {
        let policy = ctx.policy(session.level);
        // Watch from the start, so a removal during the dial closes the session too.
        let watch = match (&session.user, session.inbound.kind.user_states()) {
            (Some(u), Some(users)) => Some(SessionWatch::new(&ctx.watchers, users, u.clone())),
            _ => None,
        };
        // The sniffed first payload, when sniffing read one: it leads the relay's uplink.
        let mut first = Vec::new();
        // Boxed: sniffing, routing and dialing hold more state than the relay that follows, and
        // the session's future keeps room for its largest state for as long as it lives.
        let connecting = connect(ctx, client, &mut session, how, &mut first, &policy, watch.as_ref());
        let Some((Connected { routes, outbound, mut upstream, preamble, tunnel_first }, how)) =
            Box::pin(connecting).await
        else {
            return;
        };
        let outbound = &routes.outbounds[outbound];
        let (tag, peer, dest) = (&session.inbound.tag, session.peer, &session.dest);
        let mut meter = SessionMeter::new(ctx, &session, outbound, &policy);
        if let Some((slot, _)) = meter.user {
            ctx.users.borrow_mut().session_opened(slot, session.peer.ip(), unix_now());
        }
        let result = match how {
            Carry::Relay { early, down_prefix, vision } => {
                let joined;
                let down_prefix = if tunnel_first.is_empty() {
                    down_prefix
                } else {
                    meter.down(tunnel_first.len() as u64);
                    joined = [down_prefix, &tunnel_first].concat();
                    &joined[..]
                };
                async {
                    // The outbound protocol's header leaves with the payload that came with the request.
                    if let (Upstream::Vision(v), true) = (&mut upstream, early.is_empty()) {
                        // No payload yet: the header leaves now, with a padded empty block.
                        v.start();
                        upstream.flush().await?;
                    }
                    if !early.is_empty() || !preamble.is_empty() {
                        let mut opening = preamble;
                        opening.extend_from_slice(early);
                        upstream.write_all(&opening).await?;
                        meter.up(early.len() as u64);
                        if matches!(upstream, Upstream::Vision(_)) {
                            // Vision encodes into its own buffer: push it all out now.
                            upstream.flush().await?;
                        }
                    }
                    let policies = ctx.policies();
                    let mut options =
                        RelayOptions::new(&policy).down_prefix(down_prefix).watch(watch.as_ref(), &policies);
                    let plain = upstream.plain_fd();
                    if let Some(fd) = plain {
                        options = options.splice(session.client_fd, fd);
                    }
                    // Which side's Vision stream may turn into its bare socket, and the sockets to
                    // splice then: a Vision client with a plain upstream, or a plain client with a
                    // Vision upstream. Else the copy goes on.
                    let up_switch = match &upstream {
                        Upstream::Vision(v) if vision.is_none() => session.client_fd.map(|fd| (v.switch(), fd)),
                        _ => None,
                    };
                    let handover = match (vision, plain, &up_switch) {
                        (Some(switch), Some(fd), _) => Some((switch, switch.fd, fd)),
                        (None, None, Some((switch, client_fd))) => Some((&**switch, *client_fd, switch.fd)),
                        _ => None,
                    };
                    let end = relay(client, &mut upstream, options.handover(handover.map(|h| h.0)), &mut meter).await;
                    match (end, handover) {
                        (Ok(RelayEnd::Handover), Some((_, client_fd, upstream_fd))) => {
                            ctx.log.error(
                                LogLevel::Debug,
                                format_args!("[{tag}] {peer} to {dest}: Vision direct both ways: splicing"),
                            );
                            let options = RelayOptions::new(&policy)
                                .watch(watch.as_ref(), &policies)
                                .splice(Some(client_fd), upstream_fd);
                            relay(client, &mut upstream, options, &mut meter).await
                        }
                        (end, _) => end,
                    }
                }
                .await
            }
            Carry::Exchange(exchange) => {
                Box::pin(exchange.run(client, &mut upstream, &preamble, &policy, watch.as_ref(), &mut meter)).await
            }
        };
        if let Some((slot, generation)) = meter.user {
            ctx.users.borrow_mut().session_closed(slot, generation, session.peer.ip());
        }
        if let Upstream::Vision(v) = &upstream {
            let (up, down) = v.went_direct;
            ctx.log.error(
                LogLevel::Debug,
                format_args!("[{tag}] {peer} to {dest}: Vision to the server ended (direct up: {down}, down: {up})"),
            );
        }
        match result {
            Ok(RelayEnd::Done | RelayEnd::Handover) => {}
            Ok(RelayEnd::Closed) => ctx.log.error(
                LogLevel::Info,
                format_args!(
                    "[{}] {} to {}: closed: user removed or kicked",
                    session.inbound.tag, session.peer, session.dest
                ),
            ),
            Ok(RelayEnd::OverQuota) => ctx.log.error(
                LogLevel::Info,
                format_args!("[{}] {} to {}: closed: quota used up", session.inbound.tag, session.peer, session.dest),
            ),
            Ok(RelayEnd::TimedOut) => ctx.log.error(
                LogLevel::Debug,
                format_args!("[{}] {} to {}: timed out", session.inbound.tag, session.peer, session.dest),
            ),
            Err(e) => ctx.log.error(
                LogLevel::Debug,
                format_args!("[{}] {} to {}: {}", session.inbound.tag, session.peer, session.dest, e),
            ),
        }
    })
}

/// A routed session's upstream, connected.
struct Connected {
    /// The routing table the session was routed by (it holds the outbound).
    routes: Rc<Routes>,
    /// The outbound's index in `routes`.
    outbound: usize,
    upstream: Upstream,
    /// The outbound protocol's header, sent with the first uplink bytes.
    preamble: Vec<u8>,
    /// Downlink bytes a proxy server sent along with its answer.
    tunnel_first: Vec<u8>,
}

/// Sniffs, routes and dials `session`: its connected upstream, and `how` with the sniffed
/// payload (kept in `first`) as its early bytes; `None` when the session ended here (refused,
/// blackholed, failed to connect, or served whole, as the DNS outbound serves it).
#[allow(clippy::too_many_arguments)]
async fn connect<'s, C>(
    ctx: &Rc<ShardCtx>,
    client: &mut C,
    session: &mut Session<'_>,
    how: Carry<'s>,
    first: &'s mut Vec<u8>,
    policy: &LevelPolicy,
    watch: Option<&SessionWatch<'_>>,
) -> Option<(Connected, Carry<'s>)>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    // Sniffing: the first payload (waited for a short time if the header brought none) may
    // name the protocol and a domain. Bytes read here lead the relay's uplink.
    let mut sniffed = None;
    let mut route_dest = None;
    // An HTTP request's attributes, read only when a rule matches on them: from a sniffed
    // first payload (as Xray's sniffer sets them), or from an HTTP proxy's forwarded request.
    let mut attrs = None;
    let how = match how {
        Carry::Relay { early, down_prefix, vision } => match session.inbound.sniffing.as_deref() {
            Some(s) if !s.metadata_only => {
                sniffed = sniff::first_payload(client, early, first).await;
                if let Some(found) = &sniffed {
                    if let Some(addr) = sniff::override_for(s, found, &session.dest.addr) {
                        ctx.log.error(
                            LogLevel::Info,
                            format_args!("[{}] {} sniffed domain: {addr}", session.inbound.tag, session.peer),
                        );
                        if s.route_only {
                            route_dest = Some(addr);
                        } else {
                            session.dest.addr = addr;
                        }
                    }
                }
                let first: &'s Vec<u8> = first;
                let payload = if first.is_empty() { early } else { first };
                if ctx.routes().router.wants_attrs() {
                    attrs = RequestAttrs::sniff(payload);
                }
                Carry::Relay { early: payload, down_prefix, vision }
            }
            _ => Carry::Relay { early, down_prefix, vision },
        },
        Carry::Exchange(exchange) => {
            if ctx.routes().router.wants_attrs() {
                attrs = Some(exchange.attrs());
            }
            Carry::Exchange(exchange)
        }
    };
    let down_prefix = match &how {
        Carry::Relay { down_prefix, .. } => *down_prefix,
        Carry::Exchange(_) => &[],
    };
    // Every protocol's stream sessions pass here: the connection is past its handshake.
    crate::gate::handshake_done();
    let email = session.user.as_ref().and_then(|u| u.email.as_deref()).filter(|e| !e.is_empty());
    let mut input = RouteInput {
        inbound_tag: &session.inbound.tag,
        user: email,
        dest: route_dest.as_ref().unwrap_or(&session.dest.addr),
        resolved: None,
        port: session.dest.port,
        tcp: true,
        source: session.peer.ip(),
        source_port: session.peer.port(),
        protocol: sniffed.as_ref().map(|s| s.protocol),
        attrs: attrs.as_ref(),
    };
    // One table for the whole session, whatever changes meanwhile.
    let routes = ctx.routes();
    let decision = route(ctx, &routes, &mut input).await;
    // `routeOnly`: routed by a name the client sent, but the connection goes to the address
    // it named. A rule on that name must not open a loopback or private address: that
    // address may be reached only if the rules name it for the same outbound.
    let original_explicit = match route_dest {
        Some(_) => {
            input.resolved = None;
            let original = routes.router.route(&RouteInput { dest: &session.dest.addr, ..input });
            original.explicit_dest && original.target == decision.target
        }
        None => decision.explicit_dest,
    };
    let (tag, peer, dest) = (&session.inbound.tag, session.peer, &session.dest);
    let index = match routes.resolve(&decision) {
        Resolved::Outbound(i) => i,
        // As upstream: not the default outbound, since the rule meant another one.
        Resolved::Missing(out) => {
            ctx.log.error(LogLevel::Warning, format_args!("[{tag}] {peer} to {dest}: non existing outTag: {out}"));
            let _ = client.close().await;
            return None;
        }
        Resolved::NoDefault => {
            ctx.log
                .error(LogLevel::Warning, format_args!("[{tag}] {peer} to {dest}: default outbound handler not exist"));
            let _ = client.close().await;
            return None;
        }
    };
    let outbound = &routes.outbounds[index];
    if ctx.tap.wanted() {
        ctx.tap.offer(RouteRecord {
            inbound_tag: session.inbound.tag.clone(),
            tcp: true,
            source: session.peer,
            target: session.dest.addr.clone(),
            target_port: session.dest.port,
            user: session.user.as_ref().and_then(|u| u.email.clone()).unwrap_or_else(|| Arc::from("")),
            outbound_tag: outbound.tag.clone(),
        });
    }
    // The access line: "accepted", or "rejected" with the reason (as upstream words it).
    let access = |refused: Option<Refusal>| {
        if ctx.log.access_enabled() {
            // Formatted straight into the log line: no string of its own per connection.
            let (note, email) = email.map_or(("", ""), |e| (" email: ", e));
            let (status, why, reason) = match refused {
                Some(r) => ("rejected", " ", r.reason()),
                None => ("accepted", "", ""),
            };
            ctx.log.access(format_args!(
                "from {} {status} tcp:{} [{} >> {}]{why}{reason}{note}{email}",
                session.peer, session.dest, session.inbound.tag, outbound.tag
            ));
        }
    };
    // Removed or kicked while routing resolved a name, or over its quota (which the control
    // thread is about to suspend): closed without a reply, as a wrong user's session is.
    if watch.is_some_and(SessionWatch::is_closed) || quota_used_up(session) {
        return None;
    }
    // Downlink bytes a proxy server sent along with its answer.
    let mut tunnel_first = Vec::new();
    let (upstream, preamble) = match &outbound.protocol {
        OutboundProtocol::Blackhole(b) => {
            access(None);
            if b.http_response {
                let mut reply = down_prefix.to_vec();
                reply.extend_from_slice(HTTP_403);
                let _ = client.write_all(&reply).await;
            }
            let _ = client.close().await;
            return None;
        }
        OutboundProtocol::Freedom(freedom) => {
            let target = match &freedom.redirect {
                Some(r) => {
                    Destination { addr: r.addr.clone(), port: if r.port == 0 { session.dest.port } else { r.port } }
                }
                None => session.dest.clone(),
            };
            // Boxed: resolving and connecting need more state than the relay that follows.
            // A redirect's address is the operator's, named in the outbound: it passes as
            // named, whichever rule (or none) sent the session there.
            let decision = match &freedom.redirect {
                Some(_) => Decision { explicit_dest: true, ..decision },
                None => Decision { explicit_dest: original_explicit, ..decision },
            };
            let dialing = dial(ctx, &routes, &target, input.resolved, decision, session, outbound);
            let dialed = Box::pin(dialing).await;
            access(dialed.as_ref().err().and_then(DialError::refusal));
            match dialed {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    (Upstream::Tcp(stream), Vec::new())
                }
                Err(DialError::Refused(why)) => {
                    ctx.refusals.add(why);
                    ctx.log
                        .error(LogLevel::Info, format_args!("[{tag}] {peer} to {target}: refused: {}", why.reason()));
                    let _ = client.close().await;
                    return None;
                }
                Err(DialError::Io(e)) => {
                    ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} failed to reach {target}: {e}"));
                    let _ = client.close().await;
                    return None;
                }
            }
        }
        OutboundProtocol::Dns(spec) => {
            access(None);
            let Carry::Relay { early, down_prefix, .. } = how else {
                // An HTTP proxy's plain request carries no DNS.
                let _ = client.close().await;
                return None;
            };
            let decision = Decision { explicit_dest: original_explicit, ..decision };
            let forward = dns::forward_target(ctx, &routes, spec, &session.dest, decision, session, true).await;
            let mut meter = SessionMeter::new(ctx, session, outbound, policy);
            let served = dns::serve_stream(ctx, client, spec, forward, early, down_prefix, policy, &mut meter);
            if let Err(e) = Box::pin(served).await {
                ctx.log.error(LogLevel::Debug, format_args!("[{tag}] {peer} to {dest}: dns: {e}"));
            }
            let _ = client.close().await;
            return None;
        }
        OutboundProtocol::Trojan(t) => {
            let Some(trojan) = &outbound.trojan else {
                ctx.log.error(LogLevel::Warning, format_args!("[{tag}] {peer} to {dest}: trojan outbound not ready"));
                let _ = client.close().await;
                return None;
            };
            let dialed = Box::pin(trojan::dial(&trojan.tls, &trojan.transport, &t.server, &outbound.via)).await;
            access(None);
            match dialed {
                Ok(up) => (up, trojan.header(dest)),
                Err(e) => {
                    let out = &outbound.tag;
                    ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} to {dest}: [{out}] {}: {e}", t.server));
                    let _ = client.close().await;
                    return None;
                }
            }
        }
        OutboundProtocol::Vless(v) => {
            let Some(vless) = &outbound.vless else {
                ctx.log.error(LogLevel::Warning, format_args!("[{tag}] {peer} to {dest}: vless outbound not ready"));
                let _ = client.close().await;
                return None;
            };
            let dialed = match vless.vision {
                // The Vision stream sends the header itself and takes the response off.
                true => Box::pin(vless.dial_vision(&v.server, dest, &outbound.via)).await.map(|up| (up, Vec::new())),
                false => {
                    Box::pin(trojan::dial(&vless.tls, &vless.transport, &v.server, &outbound.via)).await.map(|up| {
                        let header = vless.header(shardray_wire::vless::Command::Tcp, dest);
                        (Upstream::Vless(Box::new(vless::VlessResponse::new(up))), header)
                    })
                }
            };
            access(None);
            match dialed {
                Ok(up) => up,
                Err(e) => {
                    let out = &outbound.tag;
                    ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} to {dest}: [{out}] {}: {e}", v.server));
                    let _ = client.close().await;
                    return None;
                }
            }
        }
        OutboundProtocol::Vmess(v) => {
            let Some(vmess) = &outbound.vmess else {
                ctx.log.error(LogLevel::Warning, format_args!("[{tag}] {peer} to {dest}: vmess outbound not ready"));
                let _ = client.close().await;
                return None;
            };
            let dialed = Box::pin(trojan::dial(&vmess.tls, &vmess.transport, &v.server, &outbound.via)).await;
            access(None);
            match dialed.and_then(|up| vmess.start(up, dest, shardray_wire::vmess::Command::Tcp)) {
                Ok(up) => (up, Vec::new()),
                Err(e) => {
                    let out = &outbound.tag;
                    ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} to {dest}: [{out}] {}: {e}", v.server));
                    let _ = client.close().await;
                    return None;
                }
            }
        }
        OutboundProtocol::Socks(p) | OutboundProtocol::Http(p) => {
            let Some(proxy) = &outbound.proxy else {
                ctx.log.error(LogLevel::Warning, format_args!("[{tag}] {peer} to {dest}: proxy outbound not ready"));
                let _ = client.close().await;
                return None;
            };
            let socks = matches!(outbound.protocol, OutboundProtocol::Socks(_));
            let dialed = Box::pin(proxy.connect(p, socks, dest, &outbound.via)).await;
            access(None);
            match dialed {
                Ok((up, first)) => {
                    tunnel_first = first;
                    (up, Vec::new())
                }
                Err(e) => {
                    let out = &outbound.tag;
                    ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} to {dest}: [{out}] {}: {e}", p.server));
                    let _ = client.close().await;
                    return None;
                }
            }
        }
        OutboundProtocol::Shadowsocks(ss) => {
            let Some(client_keys) = &outbound.shadowsocks else {
                ctx.log
                    .error(LogLevel::Warning, format_args!("[{tag}] {peer} to {dest}: shadowsocks outbound not ready"));
                let _ = client.close().await;
                return None;
            };
            let dialed = Box::pin(trojan::dial(&client_keys.tls, &Default::default(), &ss.server, &outbound.via)).await;
            access(None);
            match dialed {
                Ok(up) => (client_keys.start(up, dest), Vec::new()),
                Err(e) => {
                    let out = &outbound.tag;
                    ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} to {dest}: [{out}] {}: {e}", ss.server));
                    let _ = client.close().await;
                    return None;
                }
            }
        }
    };
    Some((Connected { routes, outbound: index, upstream, preamble, tunnel_first }, how))
}

/// Bytes left before a quota below which a session reads one buffer per poll.
const NEAR_QUOTA: u64 = 64 << 20;

/// Whether the session's user has a quota and has used it up.
pub(crate) fn quota_used_up(session: &Session<'_>) -> bool {
    session.user.as_ref().and_then(|u| u.quota.as_ref()).is_some_and(|q| q.remaining() == 0)
}

/// Seconds since the Unix epoch, for a session's start.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Routes, resolving the destination first when the routing strategy asks for it.
pub(crate) async fn route(ctx: &ShardCtx, routes: &Routes, input: &mut RouteInput<'_>) -> Decision {
    let strategy = ctx.config.routing.domain_strategy;
    let is_domain = input.dest.domain().is_some();
    if !is_domain || !routes.router.has_ip_rules() || strategy == RoutingDomainStrategy::AsIs {
        return routes.router.route(input);
    }
    if strategy == RoutingDomainStrategy::IpIfNonMatch {
        if let Some(d) = routes.router.route_rule(input) {
            return d;
        }
    }
    if let Ok(addrs) = resolve(ctx, input.dest, input.port, shardray_core::spec::DomainStrategy::UseIp).await {
        input.resolved = addrs.first().map(|a| a.ip());
    }
    routes.router.route(input)
}

/// Why a freedom outbound could not connect.
enum DialError {
    /// Every address the destination has is one the safety rules refuse (this one last).
    Refused(Refusal),
    /// Resolving or connecting failed.
    Io(io::Error),
}

impl DialError {
    fn refusal(&self) -> Option<Refusal> {
        match self {
            DialError::Refused(why) => Some(*why),
            DialError::Io(_) => None,
        }
    }
}

/// Resolves and checks the destination, then connects to the first address that answers, as
/// `freedom` (its `domainStrategy`, `sendThrough` and `sockopt`) says.
async fn dial(
    ctx: &ShardCtx,
    routes: &Routes,
    target: &Destination,
    resolved: Option<std::net::IpAddr>,
    decision: Decision,
    session: &Session<'_>,
    freedom: &crate::ctx::OutboundRt,
) -> Result<TcpStream, DialError> {
    let (strategy, via) = match &freedom.protocol {
        OutboundProtocol::Freedom(f) => (f.domain_strategy, &freedom.via),
        _ => (Default::default(), &freedom.via),
    };
    let addrs = match (target.addr.ip(), resolved) {
        (Some(ip), _) => vec![SocketAddr::new(ip, target.port)],
        (None, Some(ip)) if strategy == Default::default() => {
            vec![SocketAddr::new(ip, target.port)]
        }
        (None, _) => resolve(ctx, &target.addr, target.port, strategy).await.map_err(DialError::Io)?,
    };
    let mut last_err = DialError::Io(io::Error::new(io::ErrorKind::NotFound, "no address"));
    for addr in addrs {
        if let Err(why) = check_destination(ctx, routes, addr, target, decision, session, true) {
            last_err = DialError::Refused(why);
            continue;
        }
        match resolve::connect_via(addr, via).await {
            Ok(s) => return Ok(s),
            Err(e) => last_err = DialError::Io(e),
        }
    }
    Err(last_err)
}

/// Destination safety: the API is never a destination; a loopback or private address only
/// when the matching rule named it (by IP, or by the domain that resolved to it).
pub(crate) fn check_destination(
    ctx: &ShardCtx,
    routes: &Routes,
    addr: SocketAddr,
    target: &Destination,
    decision: Decision,
    session: &Session<'_>,
    tcp: bool,
) -> Result<(), Refusal> {
    let hits_api = ctx.api_addrs.iter().any(|api| {
        api.port() == addr.port()
            && (api.ip() == addr.ip() || (api.ip().is_unspecified() && shardray_core::router::is_private(addr.ip())))
    });
    if hits_api {
        return Err(Refusal::ApiAddress);
    }
    if !shardray_core::router::is_private(addr.ip()) || decision.explicit_dest {
        return Ok(());
    }
    // A name that resolved to a private address: allowed if a rule names that IP and sends it
    // to the same outbound.
    if target.addr.domain().is_some() {
        let email = session.user.as_ref().and_then(|u| u.email.as_deref()).filter(|e| !e.is_empty());
        let recheck = routes.router.route(&RouteInput {
            inbound_tag: &session.inbound.tag,
            user: email,
            dest: &target.addr,
            resolved: Some(addr.ip()),
            port: addr.port(),
            tcp,
            source: session.peer.ip(),
            source_port: session.peer.port(),
            // Sniffed protocols are not known here: a rule that needs one does not match, so
            // the recheck can only refuse more.
            protocol: None,
            attrs: None,
        });
        if recheck.explicit_dest && recheck.target == decision.target {
            return Ok(());
        }
    }
    Err(Refusal::PrivateDestination)
}

/// Counts a session's bytes into the counters its policy enables, and holds them to its
/// user's rates.
pub(crate) struct SessionMeter<'a> {
    ctx: &'a ShardCtx,
    rates: SessionRates,
    /// For a rate-limit notice: the inbound and the client.
    inbound_tag: &'a str,
    peer: std::net::IpAddr,
    stats_on: bool,
    /// The user's slot and the slot's generation when the session started.
    pub(crate) user: Option<(u32, u32)>,
    slots: &'a RefCell<SlotCounters>,
    user_up: bool,
    user_down: bool,
    inbound: &'a Traffic,
    inbound_up: bool,
    inbound_down: bool,
    outbound: &'a Traffic,
    outbound_up: bool,
    outbound_down: bool,
    /// The user's quota cell: counted into whatever the stats policy says.
    quota: Option<Arc<QuotaCell>>,
    /// The level's `bufferSize`: what a poll reads at most near the quota.
    buffer_size: u64,
}

impl<'a> SessionMeter<'a> {
    pub(crate) fn new(
        ctx: &'a ShardCtx,
        session: &Session<'a>,
        outbound: &'a OutboundRt,
        policy: &LevelPolicy,
    ) -> Self {
        let on = ctx.config.stats_enabled;
        let policies = ctx.policies();
        let system = &policies.system;
        let user = session.user.as_ref().filter(|u| u.email.is_some()).map(|u| (u.slot, u.slot_generation));
        SessionMeter {
            ctx,
            rates: SessionRates::new(user, policy),
            inbound_tag: &session.inbound.tag,
            peer: session.peer.ip(),
            stats_on: on,
            user,
            slots: &ctx.users,
            user_up: on && policy.stats_user_uplink,
            user_down: on && policy.stats_user_downlink,
            inbound: &session.inbound.traffic,
            inbound_up: on && system.stats_inbound_uplink,
            inbound_down: on && system.stats_inbound_downlink,
            outbound: &outbound.traffic,
            outbound_up: on && system.stats_outbound_uplink,
            outbound_down: on && system.stats_outbound_downlink,
            quota: session.user.as_ref().and_then(|u| u.quota.clone()),
            buffer_size: policy.buffer_size.max(1) as u64,
        }
    }
}

impl SessionMeter<'_> {
    /// What the user's quota lets one poll read (`u64::MAX` without a quota).
    #[inline]
    fn quota_allowance(&self) -> u64 {
        match self.quota.as_ref().map(|q| q.remaining()) {
            None => u64::MAX,
            // Far from the quota: full speed. Every shard reads at most a poll's budget before
            // it charges (1 MiB), so 32 shards together cannot cross it.
            Some(left) if left > NEAR_QUOTA => u64::MAX,
            // Near it: one buffer a poll, charged before the next, so that the shards together
            // overrun by at most one buffer each.
            Some(left) => left.min(self.buffer_size),
        }
    }

    /// Tells that the session's user is held to its rate.
    #[cold]
    fn rate_limited(&self) {
        let slots = self.ctx.users.borrow();
        let email = self.user.and_then(|(slot, _)| slots.email(slot)).map_or("", |e| &**e);
        crate::limits::notice(self.ctx, self.inbound_tag, email, self.peer, LimitEvent::RateLimited);
    }
}

impl Meter for SessionMeter<'_> {
    fn set_policy(&mut self, policy: &LevelPolicy) {
        self.user_up = self.stats_on && policy.stats_user_uplink;
        self.user_down = self.stats_on && policy.stats_user_downlink;
        self.rates.set_policy(policy);
        self.buffer_size = policy.buffer_size.max(1) as u64;
    }

    #[inline]
    fn up_allowance(&mut self) -> Allowance {
        let rate = match self.rates.up_limited() {
            false => Ok(POLL_BUDGET),
            true => self.rates.up_allowance(),
        };
        rate.map(|n| n.min(self.quota_allowance()))
    }

    #[inline]
    fn down_allowance(&mut self) -> Allowance {
        let rate = match self.rates.down_limited() {
            false => Ok(POLL_BUDGET),
            true => self.rates.down_allowance(),
        };
        rate.map(|n| n.min(self.quota_allowance()))
    }

    fn exhausted(&self) -> bool {
        self.quota.as_ref().is_some_and(|q| q.remaining() == 0)
    }

    fn up(&mut self, n: u64) {
        if let Some(q) = &self.quota {
            q.charge_up(n);
        }
        if self.rates.up_limited() && self.rates.charge_up(n) {
            self.rate_limited();
        }
        if let (Some((slot, generation)), true) = (self.user, self.user_up) {
            if let Some(t) = self.slots.borrow().traffic_for(slot, generation) {
                t.add_up(n);
            }
        }
        if self.inbound_up {
            self.inbound.add_up(n);
        }
        if self.outbound_up {
            self.outbound.add_up(n);
        }
    }

    fn down(&mut self, n: u64) {
        if let Some(q) = &self.quota {
            q.charge_down(n);
        }
        if self.rates.down_limited() && self.rates.charge_down(n) {
            self.rate_limited();
        }
        if let (Some((slot, generation)), true) = (self.user, self.user_down) {
            if let Some(t) = self.slots.borrow().traffic_for(slot, generation) {
                t.add_down(n);
            }
        }
        if self.inbound_down {
            self.inbound.add_down(n);
        }
        if self.outbound_down {
            self.outbound.add_down(n);
        }
    }
}
