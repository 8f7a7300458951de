//! Inbounds: the accept loop of each listener and the protocol handshakes behind it.

mod dokodemo;
mod fallback;
pub(crate) mod http;
pub(crate) mod shadowsocks;
mod socks;
mod trojan;
mod vless;
mod vmess;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsAcceptor;
use glommio::net::{TcpListener, TcpStream};
use shardray_core::spec::{FallbackSpec, HttpTransportSpec, LogLevel, TransportSpec};
use shardray_core::stats::Refusal;
use shardray_wire::proxy_protocol::{self, ProxyError, ProxyHeader};
use shardray_wire::websocket::{Endpoint, Flavor, UpgradeError};

use crate::transport::client_hello::read_hello;
use crate::transport::ws::{Refused, Upgraded};

use crate::ctx::{InboundKind, InboundRt, LiveGuard, ShardCtx};
/// Serves an inbound's UDP socket on this shard until the task is cancelled.
pub(crate) async fn datagram_loop(ctx: Rc<ShardCtx>, inbound: Rc<InboundRt>, socket: std::net::UdpSocket) {
    match &inbound.kind {
        InboundKind::Shadowsocks(_) => shadowsocks::datagram_loop(ctx, inbound, socket).await,
        _ => dokodemo::datagram_loop(ctx, inbound, socket).await,
    }
}

/// What an inbound handler knows about the connection beyond its bytes.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    /// The client's TCP socket (under TLS too), for what is asked of the kernel only when needed.
    socket: RawFd,
    /// The TLS server name the client sent, if any.
    pub(crate) sni: Option<String>,
    /// The ALPN protocol agreed, if any.
    pub(crate) alpn: Option<Vec<u8>>,
    /// The client's socket when the protocol reads it directly (no TLS), so that the relay may
    /// splice it; `None` when anything transforms the bytes in between.
    pub(crate) plain_fd: Option<RawFd>,
    /// The address the client connected to, as a PROXY protocol header named it.
    proxied_local: Option<SocketAddr>,
}

impl ConnInfo {
    /// The connection's local address. Asked of the kernel on demand (a fallback's PROXY
    /// header): most connections never need it, and getsockname(2) per accept adds up.
    pub(crate) fn local(&self) -> io::Result<SocketAddr> {
        if let Some(local) = self.proxied_local {
            return Ok(local);
        }
        // SAFETY: `socket` belongs to the client stream, which outlives the `ConnInfo` that
        // describes it (both live in the session's task, the stream passed down by value).
        let fd = unsafe { BorrowedFd::borrow_raw(self.socket) };
        socket2::SockRef::from(&fd).local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))
    }
}

/// Accepts connections on one inbound's listener until the task is cancelled.
///
/// Each wake-up drains the listener's queue with plain accept4(2) calls before waiting in
/// glommio again: one syscall per connection, which also returns the peer's address and makes
/// the socket nonblocking as splice(2) wants it, where glommio's accept spends four (it turns
/// `O_NONBLOCK` on and off around its own attempt) and getpeername(2) and ioctl(2) follow.
///
/// A Unix socket's listener comes here too (as a `TcpListener`: it is used as a listening
/// stream socket only), and its connections as `TcpStream`s: glommio's TCP and Unix streams
/// are the same stream over a socket, and the session stack asks nothing of it but reads,
/// writes, peeks and splice. Their peer is `UNIX_PEER`.
pub(crate) async fn accept_loop(ctx: Rc<ShardCtx>, inbound: Rc<InboundRt>, listener: std::net::TcpListener) {
    // Our own accept4 must never block the shard; glommio's accept restores the flags it found.
    let fast = listener.set_nonblocking(true).is_ok();
    let unix = socket2::SockRef::from(&listener).domain().is_ok_and(|d| d == socket2::Domain::UNIX);
    // Linux copies TCP_NODELAY from the listener into every socket it accepts: one call here
    // instead of one per connection.
    let _ = socket2::SockRef::from(&listener).set_nodelay(true);
    let fd = listener.as_raw_fd();
    // SAFETY: the descriptor is a listening socket we own and hand over here; the glommio
    // listener closes it when this task ends, after the last use of `fd` below.
    let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
    let mut refusals = QuietLog::default();
    let mut failures = QuietLog::default();
    loop {
        let accepted = match if fast { try_accept(fd) } else { Ok(None) } {
            Ok(Some(conn)) => Ok(conn),
            Ok(None) => match listener.accept().await {
                Ok(stream) if unix => Ok((stream, UNIX_PEER)),
                Ok(stream) => match stream.peer_addr() {
                    Ok(peer) => Ok((stream, peer)),
                    // Gone already.
                    Err(_) => continue,
                },
                Err(e) => Err(io::Error::from(e)),
            },
            Err(e) => Err(e),
        };
        match accepted {
            Ok((stream, peer)) => {
                let policies = ctx.policies();
                let system = &policies.system;
                let slot = match crate::gate::admit(system, &inbound.connections) {
                    Ok(slot) => slot,
                    Err(full) => {
                        // Closed unread: the cheapest answer, and the same a full backlog gives.
                        drop(stream);
                        ctx.refusals.add(Refusal::AcceptLimit);
                        refusals.note(&ctx, format_args!("[{}] {peer} refused: {full}", inbound.tag));
                        continue;
                    }
                };
                // Behind a PROXY header the socket's peer is the balancer: `serve` counts the
                // client it names instead. A Unix socket's clients have no address (all are
                // `UNIX_PEER`): counted as one source, a few tricklers would shut out everyone.
                let source = (!inbound.accept_proxy_protocol && peer != UNIX_PEER).then_some(peer.ip());
                let handshake = match source.map(|ip| ctx.handshakes.try_begin(ip, system)) {
                    Some(Err(full)) => {
                        drop((stream, slot));
                        ctx.handshakes.refuse(&ctx, &inbound.tag, peer, full);
                        continue;
                    }
                    Some(Ok(handshake)) => handshake,
                    None => None,
                };
                // Boxed once here, so the layers above the relay pass a pointer down instead
                // of each keeping its own copy of the stream in the session's task.
                let stream = Box::new(stream);
                let ctx = ctx.clone();
                let inbound = inbound.clone();
                glommio::spawn_local(async move {
                    let _live = LiveGuard::new(&ctx);
                    let _slot = slot;
                    crate::gate::in_handshake(handshake, serve(&ctx, &inbound, stream, peer)).await;
                })
                .detach();
            }
            Err(e) => {
                // Out of descriptors or memory: back off briefly instead of spinning; live
                // sessions go on meanwhile.
                failures.note(&ctx, format_args!("[{}] accept failed: {e}", inbound.tag));
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// The address a Unix socket's client is known by where no PROXY header names it (routing,
/// logs, `maxIPs`), as Xray gives it: 0.0.0.0, port 0.
pub(crate) const UNIX_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// A warning that may recur per connection (a refusal, a failing accept) written at most
/// once a second, with the count of those left unwritten: a flood must not become a flood
/// of log lines.
#[derive(Default)]
pub(crate) struct QuietLog {
    last: Option<std::time::Instant>,
    unwritten: u64,
}

impl QuietLog {
    pub(crate) fn note(&mut self, ctx: &ShardCtx, what: std::fmt::Arguments<'_>) {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
            self.unwritten += 1;
            return;
        }
        match std::mem::take(&mut self.unwritten) {
            0 => ctx.log.error(LogLevel::Warning, what),
            n => {
                ctx.log.error(LogLevel::Warning, format_args!("{what} (and {n} more like it since the last such line)"))
            }
        }
        self.last = Some(now);
    }
}

/// One nonblocking accept4(2) on `listener`: the connection (its socket nonblocking and
/// close-on-exec) and its peer's address, or `None` when nothing is waiting.
fn try_accept(listener: RawFd) -> io::Result<Option<(TcpStream, SocketAddr)>> {
    loop {
        // SAFETY: sockaddr_storage is plain data, valid all zeroes.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `listener` is open (the caller's listener outlives the call); the address
        // buffer and its length are live locals of the stated size.
        let fd = unsafe {
            libc::accept4(
                listener,
                (&mut addr as *mut libc::sockaddr_storage).cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let stream = unsafe { TcpStream::from_raw_fd(fd) };
            // SAFETY: the kernel filled `len` bytes of `addr`.
            let peer = unsafe { socket2::SockAddr::new(addr, len) }.as_socket();
            // A Unix socket's client has no IP address.
            return Ok(Some((stream, peer.unwrap_or(UNIX_PEER))));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(None),
            // Interrupted, or a connection reset while it waited: try the next one.
            Some(libc::EINTR | libc::ECONNABORTED) => continue,
            _ => return Err(err),
        }
    }
}

/// Runs one accepted connection: its PROXY header and TLS if configured, then the inbound's
/// protocol.
async fn serve(ctx: &Rc<ShardCtx>, inbound: &Rc<InboundRt>, stream: Box<TcpStream>, peer: SocketAddr) {
    let socket = stream.as_raw_fd();
    let mut info = ConnInfo { peer, socket, sni: None, alpn: None, plain_fd: Some(socket), proxied_local: None };
    if inbound.accept_proxy_protocol {
        let read = futures_lite::future::or(proxy_header(&stream, socket), async {
            glommio::timer::sleep(ctx.policy(0).handshake).await;
            Err("timed out".into())
        });
        match read.await {
            Ok(ProxyHeader { addresses: Some((client, local)) }) => {
                info.peer = client;
                info.proxied_local = Some(local);
            }
            // LOCAL (a balancer's health check) or an unknown family: the socket's peer stands.
            Ok(ProxyHeader { addresses: None }) => {}
            Err(why) => {
                ctx.refusals.add(Refusal::BadRequest);
                ctx.log.error(LogLevel::Info, format_args!("[{}] {} PROXY header refused: {}", inbound.tag, peer, why));
                return;
            }
        }
        // A LOCAL header on a Unix socket leaves the client without an address: not counted.
        if info.peer == UNIX_PEER {
            return security(ctx, inbound, stream, &info).await;
        }
        let begun = ctx.handshakes.try_begin(info.peer.ip(), &ctx.policies().system);
        return match begun {
            Ok(handshake) => crate::gate::in_handshake(handshake, security(ctx, inbound, stream, &info)).await,
            Err(full) => ctx.handshakes.refuse(ctx, &inbound.tag, info.peer, full),
        };
    }
    security(ctx, inbound, stream, &info).await
}

/// The security layer (none, TLS or REALITY), then the transport. `info` is passed by
/// reference here and in the layers after it: each layer's future would otherwise keep a copy
/// of it for the session's life.
async fn security(ctx: &Rc<ShardCtx>, inbound: &Rc<InboundRt>, stream: Box<TcpStream>, info: &ConnInfo) {
    if let Some(reality) = &inbound.reality {
        return Box::pin(serve_reality(ctx, inbound, reality, stream, info)).await;
    }
    match &inbound.tls {
        // Boxed as the others are: the connection's task is allocated whole at accept, and
        // must not carry room for any layer's handshake but the one it is in.
        None => Box::pin(transport(ctx, inbound, stream, info)).await,
        // Boxed: a TLS session's state is several times a plain one's, and a plain session
        // would otherwise carry room for it for as long as it lives.
        Some(acceptor) => Box::pin(serve_tls(ctx, inbound, acceptor, stream, info)).await,
    }
}

/// The most of a connection's first bytes looked at for its PROXY header: a v1 line, or a v2
/// header with room for the TLVs balancers add (HAProxy's own buffer for them is 256 bytes).
const PROXY_HEADER_MAX: usize = 1024;

/// Reads the PROXY protocol header an `acceptProxyProtocol` inbound's connections open with
/// (required, as in Xray), taking exactly its bytes from the socket: they are peeked until the
/// header is whole, so nothing after it is taken from the protocol (or from splice).
async fn proxy_header(stream: &TcpStream, fd: RawFd) -> Result<ProxyHeader, String> {
    let mut buf = vec![0; PROXY_HEADER_MAX];
    let mut wait = std::time::Duration::from_millis(2);
    loop {
        let n = stream.peek(&mut buf).await.map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err("connection closed before its PROXY header".into());
        }
        match proxy_protocol::decode(&buf[..n]) {
            Ok((header, len)) => {
                let mut taken = 0;
                while taken < len {
                    match recv_now(fd, &mut buf[taken..len]) {
                        Ok(0) | Err(_) => return Err("read failed".into()),
                        Ok(m) => taken += m,
                    }
                }
                return Ok(header);
            }
            Err(ProxyError::UnexpectedEnd) if n < buf.len() => {
                // Peeking again would return the same bytes at once: wait for the rest, longer
                // each time, so that a trickling client costs few wake-ups.
                glommio::timer::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_millis(100));
            }
            Err(ProxyError::UnexpectedEnd) => return Err(format!("header longer than {PROXY_HEADER_MAX} bytes")),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// REALITY: the ClientHello read (bounded by the level-0 handshake timeout) and judged; an
/// authenticated client gets the TLS path with a config of its own, anything else is relayed
/// to the target untouched (what was read first), counted and logged as a refusal.
async fn serve_reality(
    ctx: &Rc<ShardCtx>,
    inbound: &Rc<InboundRt>,
    reality: &crate::transport::reality::RealityRt,
    mut stream: Box<TcpStream>,
    info: &ConnInfo,
) {
    use crate::transport::reality::Verdict;
    let deadline = std::time::Instant::now() + ctx.policy(0).handshake;
    let (mut records, mut hello) = (Vec::new(), Vec::new());
    let read = within(deadline, read_hello(&mut stream, &mut records, &mut hello)).await;
    let why = match read {
        Some(Ok(())) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            match reality.judge(&hello, now as u64) {
                Verdict::Serve(config, auth) => {
                    if reality.spec.show {
                        let [a, b, c] = auth.client_ver;
                        let id: String = auth.short_id.iter().map(|b| format!("{b:02x}")).collect();
                        let tag = &inbound.tag;
                        ctx.log.error(
                            LogLevel::Info,
                            format_args!("[{tag}] {} REALITY client {a}.{b}.{c}, short id {id}", info.peer),
                        );
                    }
                    drop(hello);
                    let acceptor = TlsAcceptor::from(config);
                    return tls_session(ctx, inbound, &acceptor, stream, records, info, deadline).await;
                }
                Verdict::Relay(why) => why,
            }
        }
        Some(Err(e)) => e.to_string(),
        None => "no ClientHello within the handshake timeout".into(),
    };
    fallback::refuse(ctx, inbound, "reality", &why, Refusal::BadRequest, info);
    fallback::relay_to(ctx, inbound, &reality.spec.target, reality.spec.xver, stream, &records, info).await;
}

/// `fut`'s output, or `None` once `deadline` passes first.
async fn within<T>(deadline: std::time::Instant, fut: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(deadline.saturating_duration_since(std::time::Instant::now())).await;
        None
    })
    .await
}

/// TLS: the ClientHello read first, into a buffer no larger than what arrived, so that a
/// client trickling it holds no TLS state (see `client_hello`); then the handshake, all of it
/// bounded by the level-0 handshake timeout; then the inbound's protocol.
async fn serve_tls(
    ctx: &Rc<ShardCtx>,
    inbound: &Rc<InboundRt>,
    acceptor: &TlsAcceptor,
    mut stream: Box<TcpStream>,
    info: &ConnInfo,
) {
    let deadline = std::time::Instant::now() + ctx.policy(0).handshake;
    let (mut records, mut hello) = (Vec::new(), Vec::new());
    match within(deadline, read_hello(&mut stream, &mut records, &mut hello)).await {
        Some(Ok(())) => {
            drop(hello);
            tls_session(ctx, inbound, acceptor, stream, records, info, deadline).await
        }
        Some(Err(e)) => {
            ctx.log.error(LogLevel::Info, format_args!("[{}] {} TLS handshake failed: {}", inbound.tag, info.peer, e))
        }
        None => ctx.log.error(LogLevel::Info, format_args!("[{}] {} TLS handshake timed out", inbound.tag, info.peer)),
    }
}

/// The TLS handshake on a connection whose ClientHello `records` were read off it already,
/// until `deadline`, then the inbound's protocol.
async fn tls_session(
    ctx: &Rc<ShardCtx>,
    inbound: &Rc<InboundRt>,
    acceptor: &TlsAcceptor,
    stream: Box<TcpStream>,
    records: Vec<u8>,
    info: &ConnInfo,
    deadline: std::time::Instant,
) {
    let peer = info.peer;
    // Records out in one syscall, and in by large reads (see `TlsTcp`).
    let mut stream = match inbound.vision {
        true => crate::transport::tls_tcp::TlsTcp::tracking(stream),
        false => crate::transport::tls_tcp::TlsTcp::new(stream),
    };
    stream.unread(&records);
    drop(records);
    // Boxed: rustls's connection is made here, once the ClientHello is whole, and not carried
    // (as room in the connection's future) while it arrives.
    match within(deadline, Box::pin(acceptor.accept(stream))).await {
        Some(Ok(tls)) => {
            let (_, conn) = tls.get_ref();
            let info = ConnInfo {
                sni: conn.server_name().map(str::to_owned),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                plain_fd: None,
                peer: info.peer,
                socket: info.socket,
                proxied_local: info.proxied_local,
            };
            // Boxed on their own: this future is allocated (and moved, all of it) at accept,
            // so what runs after the handshake must not be part of it.
            if let (true, InboundKind::Vless { users, fallbacks }) = (inbound.vision, &inbound.kind) {
                // VLESS on TLS directly on raw TCP: Vision users may drop the TLS layer.
                return Box::pin(vless::serve_tls(ctx, inbound, users, fallbacks, tls, &info)).await;
            }
            Box::pin(transport(ctx, inbound, tls, &info)).await
        }
        Some(Err(e)) => {
            ctx.log.error(LogLevel::Info, format_args!("[{}] {} TLS handshake failed: {}", inbound.tag, peer, e))
        }
        None => ctx.log.error(LogLevel::Info, format_args!("[{}] {} TLS handshake timed out", inbound.tag, peer)),
    }
}

/// The transport layer: raw TCP as it is, raw TCP opening with an HTTP head both ways, an
/// HTTP transport (WebSocket, HTTPUpgrade), or gRPC (a session per HTTP/2 stream).
async fn transport<S>(ctx: &Rc<ShardCtx>, inbound: &Rc<InboundRt>, stream: S, info: &ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (flavor, spec) = match &inbound.transport {
        TransportSpec::Raw => return raw(ctx, inbound, stream, info).await,
        TransportSpec::Ws(spec) => (Flavor::WebSocket, spec),
        TransportSpec::HttpUpgrade(spec) => (Flavor::HttpUpgrade, spec),
        TransportSpec::Grpc(spec) => {
            let info = ConnInfo { plain_fd: None, ..info.clone() };
            return Box::pin(crate::transport::grpc::serve(ctx, inbound, stream, info, spec)).await;
        }
        TransportSpec::Xhttp(spec) => {
            let info = ConnInfo { plain_fd: None, ..info.clone() };
            return Box::pin(crate::transport::xhttp::serve(ctx, inbound, stream, info, spec)).await;
        }
    };
    // Boxed: the upgrade's state, and a session over WebSocket, are larger than a raw one's.
    Box::pin(http_transport(ctx, inbound, stream, info.clone(), flavor, spec)).await
}

/// WebSocket or HTTPUpgrade: the upgrade request read and answered, the client's address
/// taken from a trusted `X-Forwarded-For`, then the protocol over the tunnel. A request the
/// endpoint refuses goes to the inbound's fallbacks (chosen by its path) if it has any, else
/// is answered as Xray answers it (404 for another path or host, 400 for the rest).
async fn http_transport<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    stream: S,
    mut info: ConnInfo,
    flavor: Flavor,
    spec: &HttpTransportSpec,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = std::time::Instant::now();
    let endpoint = Endpoint {
        path: spec.path.split('?').next().unwrap_or(&spec.path),
        host: &spec.host,
        early_data: spec.early_data,
        trusted: &inbound.trusted_forwarded,
    };
    let name = match flavor {
        Flavor::WebSocket => "ws",
        Flavor::HttpUpgrade => "httpupgrade",
    };
    let accepted = match crate::transport::ws::accept(stream, flavor, &endpoint, ctx.policy(0).handshake).await {
        Ok(a) => a,
        Err(Refused { mut stream, mut read, error }) => {
            let fallbacks = inbound.kind.fallbacks();
            if !fallbacks.is_empty() && !read.is_empty() {
                let rejected =
                    fallback::Rejected { protocol: name, reason: error.as_str(), why: Refusal::BadRequest, started };
                let len = read.len();
                return fallback::reject(ctx, inbound, fallbacks, stream, &mut read, len, &info, rejected).await;
            }
            ctx.refusals.add(Refusal::BadRequest);
            ctx.log.access(format_args!("from {} rejected {name}: {error}", info.peer));
            ctx.log.error(LogLevel::Info, format_args!("[{}] {} rejected {name}: {error}", inbound.tag, info.peer));
            if error != UpgradeError::UnexpectedEnd {
                let mut answer = Vec::with_capacity(160);
                error.response().write(&httpdate::fmt_http_date(std::time::SystemTime::now()), &mut answer);
                let _ = stream.write_all(&answer).await;
            }
            let _ = stream.close().await;
            return;
        }
    };
    if let Some(ip) = accepted.forwarded {
        info.peer = SocketAddr::new(ip, 0);
        // From a trusted hop (a CDN), the client it names counts for the rest of the handshake.
        if let Err(full) = crate::gate::handshake_from(&ctx.handshakes, ip) {
            return ctx.handshakes.refuse(ctx, &inbound.tag, info.peer, full);
        }
    } else if accepted.untrusted_forward {
        let tag = &inbound.tag;
        ctx.log.error(
            LogLevel::Info,
            format_args!("[{tag}] {} sent X-Forwarded-For from no trusted hop: ignored", info.peer),
        );
    }
    // Fallbacks take raw connections only: inside the tunnel a bad request is drained.
    match accepted.upgraded {
        Upgraded::Ws(ws) => dispatch(ctx, inbound, ws, &ConnInfo { plain_fd: None, ..info }, false).await,
        // Nothing but the socket's own bytes: the relay may still splice it.
        Upgraded::Raw { stream, early } if early.is_empty() => dispatch(ctx, inbound, stream, &info, false).await,
        Upgraded::Raw { stream, early } => {
            let stream = crate::transport::http_header::Camouflaged::with_early(stream, early);
            dispatch(ctx, inbound, stream, &ConnInfo { plain_fd: None, ..info }, false).await
        }
    }
}

/// Raw TCP, perhaps opening with an HTTP head both ways.
async fn raw<S>(ctx: &Rc<ShardCtx>, inbound: &InboundRt, stream: S, info: &ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(spec) = &inbound.http_header else {
        return dispatch(ctx, inbound, stream, info, true).await;
    };
    let accepted = Box::pin(crate::transport::http_header::accept(stream, spec, ctx.policy(0).handshake)).await;
    match accepted {
        // The bytes the protocol reads no longer start at the socket's: no splicing.
        Ok(stream) => dispatch(ctx, inbound, stream, &ConnInfo { plain_fd: None, ..info.clone() }, true).await,
        Err(e) => {
            ctx.refusals.add(Refusal::BadRequest);
            ctx.log.error(LogLevel::Info, format_args!("[{}] {} HTTP header refused: {}", inbound.tag, info.peer, e));
        }
    }
}

/// The protocol layer. `fallbacks`: whether a bad request may go to the inbound's fallbacks
/// (on the raw connection), or is drained (inside a tunnel, whose bytes a fallback could not
/// read).
pub(crate) async fn dispatch<S>(ctx: &Rc<ShardCtx>, inbound: &InboundRt, stream: S, info: &ConnInfo, fallbacks: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let none: &[FallbackSpec] = &[];
    // Each protocol boxed: a session's task keeps room only for the protocol it speaks, not
    // for the largest of them (VMess's and the HTTP proxy's handshakes are several KiB).
    match &inbound.kind {
        InboundKind::Vless { users, fallbacks: f } => {
            Box::pin(vless::serve(ctx, inbound, users, if fallbacks { f } else { none }, stream, info)).await
        }
        InboundKind::Trojan { users, fallbacks: f } => {
            Box::pin(trojan::serve(ctx, inbound, users, if fallbacks { f } else { none }, stream, info)).await
        }
        InboundKind::Vmess { users, replay } => Box::pin(vmess::serve(ctx, inbound, users, replay, stream, info)).await,
        InboundKind::Shadowsocks(ss) => Box::pin(shadowsocks::serve(ctx, inbound, ss, stream, info)).await,
        InboundKind::Dokodemo(spec) => Box::pin(dokodemo::serve(ctx, inbound, spec, stream, info)).await,
        InboundKind::Proxy { users, settings } if settings.socks => {
            Box::pin(socks::serve(ctx, inbound, users, settings, stream, info)).await
        }
        InboundKind::Proxy { users, settings } => {
            let started = std::time::Instant::now();
            Box::pin(http::serve(ctx, inbound, users, settings, stream, info, Vec::new(), started)).await
        }
    }
}

/// Room for the longest VLESS or Trojan header plus the payload that usually arrives with it.
const FIRST_READ: usize = 4096;

/// The least room a read of a handshake that did not arrive whole is given: a client that
/// trickles its header holds about this much, not a whole first-read buffer.
const TRICKLE_ROOM: usize = 512;

/// Reads a protocol's first bytes into `buf` (`len` of them so far) until `decide` settles
/// them: `decide(data, max)` returns `None` while more bytes may complete the request, and
/// must settle once `max` bytes are in. `buf` grows as bytes arrive, to `max` at most: what
/// arrived at once is read whole, and a handshake that trickles in waits in a buffer about
/// twice its size. `socket` is the stream's own plain TCP socket, if it has one. `Err` says why
/// reading ended first (the client closed, or a read failed).
async fn read_first<S, T>(
    stream: &mut S,
    socket: Option<RawFd>,
    buf: &mut Vec<u8>,
    max: usize,
    len: &mut usize,
    mut decide: impl FnMut(&[u8], usize) -> Option<T>,
) -> Result<T, &'static str>
where
    S: AsyncRead + Unpin,
{
    // The header has usually arrived by the time the connection is accepted: read it at once
    // instead of through glommio, whose new stream first waits for a readiness poll (one more
    // trip through the ring per connection).
    if let Some(fd) = socket {
        buf.resize(max, 0);
        match recv_now(fd, buf) {
            Ok(0) => return Err("connection closed during handshake"),
            Ok(n) => {
                *len = n;
                if let Some(outcome) = decide(&buf[..n], max) {
                    return Ok(outcome);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err("read failed during handshake"),
        }
        // Not all there: wait with room for about as much again.
        buf.truncate((*len * 2).clamp(TRICKLE_ROOM, max));
        buf.shrink_to_fit();
    }
    loop {
        let room = (*len * 2).clamp(TRICKLE_ROOM, max);
        if buf.len() < room {
            buf.resize(room, 0);
        }
        let n = match stream.read(&mut buf[*len..]).await {
            Ok(0) => return Err("connection closed during handshake"),
            Ok(n) => n,
            Err(_) => return Err("read failed during handshake"),
        };
        *len += n;
        if let Some(outcome) = decide(&buf[..*len], max) {
            return Ok(outcome);
        }
    }
}

/// The next datagram a per-shard UDP listener receives into `buf`, as `(length, client)`. A
/// failed receive is logged and retried after a pause (out of memory, say: no spinning); a
/// datagram that fills `buf` may have been cut short, so it is counted as oversize and
/// dropped: size `buf` one byte past the largest datagram the protocol may carry.
pub(crate) async fn recv_datagram(
    ctx: &ShardCtx,
    inbound: &InboundRt,
    socket: &glommio::net::UdpSocket,
    buf: &mut [u8],
) -> (usize, SocketAddr) {
    loop {
        match socket.recv_from(buf).await {
            Ok((n, _)) if n == buf.len() => ctx.refusals.add(Refusal::OversizeDatagram),
            Ok(got) => return got,
            Err(e) => {
                ctx.log.error(LogLevel::Warning, format_args!("[{}] UDP receive failed: {}", inbound.tag, e));
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One nonblocking recv(2) on `fd`, an open socket nothing buffers above.
fn recv_now(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `fd` belongs to the stream the caller holds; `buf` is a live slice of the
        // stated length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
