//! The gRPC transport (`network` `grpc`, Xray's "gun"), server and client, over HTTP/2 from
//! the `h2` crate: each `POST /NAME/Tun` (or `/TunMulti`) stream is one session, its bytes
//! framed by `wire::grpc`. `h2` speaks through tokio's IO traits, which `TokioIo` lends our
//! glommio streams; it needs no tokio runtime (no spawns, no timers), and its connection is
//! driven by a task on the shard's own executor.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures_lite::{AsyncRead, AsyncWrite};
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use shardray_core::spec::{GrpcSpec, LogLevel};
use shardray_core::stats::Refusal;
use shardray_wire::grpc::{encode, service_paths, GunDecoder, ServicePaths, MAX_HEADER_LEN};

use crate::ctx::{InboundRt, LiveGuard, ShardCtx};
use crate::inbound::ConnInfo;

/// The most payload one gRPC message carries; a longer write is split. gRPC receivers refuse
/// messages over 4 MiB by default.
const MAX_MESSAGE: usize = 256 * 1024;

/// Streams one connection may have open at once: gun clients queue further sessions until
/// one ends (grpc-go honours the limit), so this bounds a connection's memory.
pub(crate) const MAX_STREAMS: u32 = 512;

/// HTTP/2 windows we grant: per stream, and for the whole connection. The default 64 KiB
/// would hold a stream to one window per round trip.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;

/// The largest DATA frame we accept (HTTP/2's default is 16 KiB): peers that honour it send
/// bulk data in fewer frames, each a wake-up and a header to parse.
const MAX_FRAME: u32 = 256 * 1024;

/// gRPC's wait for a keepalive ping's answer when `health_check_timeout` is 0.
const DEFAULT_HEALTH_CHECK: Duration = Duration::from_secs(20);

/// Xray's default `user_agent` ("chrome").
const CHROME_UA: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

// === impl TokioIo ===

/// A futures-io stream seen through tokio's IO traits, which `h2` wants.
pub(crate) struct TokioIo<S>(pub(crate) S);

impl<S: AsyncRead + Unpin> tokio::io::AsyncRead for TokioIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Only what one read can use is zeroed: h2 offers its whole spare capacity each time.
        let want = buf.remaining().min(64 << 10);
        let n = ready!(Pin::new(&mut self.0).poll_read(cx, buf.initialize_unfilled_to(want)))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> tokio::io::AsyncWrite for TokioIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

pub(crate) fn h2_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("HTTP/2 IO error"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

// === impl GrpcStream ===

/// Where reading a stream stands.
enum Recv {
    /// A client's stream before the server's response head.
    Response(h2::client::ResponseFuture),
    Body(RecvStream),
    Done,
}

/// One gun session over an HTTP/2 stream: reads return the payload of the peer's messages
/// (flow-control window given back as the session consumes it), writes leave as one message
/// each, sent as the peer's window allows. Closing ends our side: the server's trailers
/// (`grpc-status`), or the client's end of stream.
pub(crate) struct GrpcStream {
    recv: Recv,
    send: SendStream<Bytes>,
    decoder: GunDecoder,
    /// The DATA frame being decoded, and the payload found in it not yet read.
    chunk: Bytes,
    payload: Bytes,
    /// Received bytes not yet given back to the peer's window.
    unreleased: usize,
    /// An encoded message (or its rest) not yet handed to `h2`.
    pending: Bytes,
    server: bool,
    /// Our side has ended.
    ended: bool,
    /// Why the peer's stream could not be decoded, for the server's trailers.
    broken: Option<&'static str>,
    /// Counts the stream among its connection's open ones while it lives.
    _open: Option<OpenStream>,
}

impl GrpcStream {
    fn new(recv: Recv, send: SendStream<Bytes>, server: bool, open: Option<OpenStream>) -> Self {
        GrpcStream {
            recv,
            send,
            decoder: GunDecoder::new(),
            chunk: Bytes::new(),
            payload: Bytes::new(),
            unreleased: 0,
            pending: Bytes::new(),
            server,
            ended: false,
            broken: None,
            _open: open,
        }
    }

    /// Hands `pending` to `h2` as the stream's send window allows.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let want = self.pending.len();
            if self.send.capacity() < want {
                self.send.reserve_capacity(want);
            }
            let room = self.send.capacity();
            if room == 0 {
                match ready!(self.send.poll_capacity(cx)) {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                    None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                }
            }
            let piece = self.pending.split_to(room.min(want));
            self.send.send_data(piece, false).map_err(h2_error)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Gives back the window of the DATA frames the session has read all of.
    fn release(&mut self) {
        if self.chunk.is_empty() && self.payload.is_empty() && self.unreleased > 0 {
            if let Recv::Body(body) = &mut self.recv {
                let _ = body.flow_control().release_capacity(self.unreleased);
            }
            self.unreleased = 0;
        }
    }

    /// Ends our side: trailers with `status` on a server, the end of stream on a client.
    fn end(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        if self.server {
            let mut trailers = HeaderMap::new();
            match self.broken {
                None => {
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                }
                Some(why) => {
                    // INTERNAL, as grpc-go answers a message it cannot parse.
                    trailers.insert("grpc-status", HeaderValue::from_static("13"));
                    trailers.insert("grpc-message", HeaderValue::from_static(why));
                }
            }
            let _ = self.send.send_trailers(trailers);
        } else {
            let _ = self.send.send_data(Bytes::new(), true);
        }
    }
}

impl AsyncRead for GrpcStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if !this.payload.is_empty() {
                let n = buf.len().min(this.payload.len());
                buf[..n].copy_from_slice(&this.payload[..n]);
                this.payload.advance(n);
                this.release();
                return Poll::Ready(Ok(n));
            }
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            this.release();
            if !this.chunk.is_empty() {
                let mut input = &this.chunk[..];
                let found = this.decoder.decode(&mut input);
                let consumed = this.chunk.len() - input.len();
                match found {
                    Ok(Some(piece)) => {
                        let start = consumed - piece.len();
                        this.payload = this.chunk.slice(start..consumed);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        this.broken = Some("malformed gun message");
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
                this.chunk.advance(consumed);
                continue;
            }
            match &mut this.recv {
                Recv::Done => return Poll::Ready(Ok(0)),
                Recv::Response(response) => {
                    let response = ready!(Pin::new(response).poll(cx)).map_err(h2_error);
                    match response.and_then(check_response) {
                        Ok(body) => this.recv = Recv::Body(body),
                        Err(e) => {
                            this.recv = Recv::Done;
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Recv::Body(body) => match ready!(body.poll_data(cx)) {
                    Some(Ok(data)) => {
                        this.unreleased += data.len();
                        this.chunk = data;
                    }
                    Some(Err(e)) => {
                        this.recv = Recv::Done;
                        return Poll::Ready(Err(h2_error(e)));
                    }
                    None => {
                        let whole = this.decoder.at_boundary();
                        this.recv = Recv::Done;
                        if !whole {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "gun stream ended inside a message",
                            )));
                        }
                        return Poll::Ready(Ok(0));
                    }
                },
            }
        }
    }
}

impl AsyncWrite for GrpcStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = data.len().min(MAX_MESSAGE);
        let mut message = Vec::with_capacity(MAX_HEADER_LEN + n);
        encode(&data[..n], &mut message);
        this.pending = Bytes::from(message);
        // The message is ours now: what the window does not take goes with the next call.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_drain(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        self.end();
        Poll::Ready(Ok(()))
    }
}

impl Drop for GrpcStream {
    /// A session that ends without closing still ends its stream cleanly (as Xray's handler
    /// returning does), unless nothing was answered yet.
    fn drop(&mut self) {
        if self.server {
            self.end();
        }
    }
}

/// A client's check of the server's response head: `200`, gRPC, and no error status in a
/// trailers-only answer.
fn check_response(response: Response<RecvStream>) -> io::Result<RecvStream> {
    let refused = |why: String| io::Error::new(io::ErrorKind::ConnectionRefused, why);
    if response.status() != StatusCode::OK {
        return Err(refused(format!("gRPC server answered HTTP {}", response.status())));
    }
    if let Some(status) = response.headers().get("grpc-status") {
        if status != "0" {
            let message = response.headers().get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("");
            return Err(refused(format!("gRPC status {}: {message}", status.to_str().unwrap_or("?"))));
        }
    }
    Ok(response.into_body())
}

/// Counts a connection's open streams (for its idle timeout) while held.
pub(crate) struct OpenStream(Rc<ConnState>);

impl OpenStream {
    fn new(state: &Rc<ConnState>) -> OpenStream {
        state.open.set(state.open.get() + 1);
        OpenStream(state.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        self.0.last_active.set(Instant::now());
    }
}

/// What a connection's tasks share: its open streams, when it last had one, whether its
/// keepalive failed.
struct ConnState {
    open: Cell<usize>,
    last_active: Cell<Instant>,
    dead: Cell<bool>,
}

impl ConnState {
    fn new() -> Rc<ConnState> {
        Rc::new(ConnState { open: Cell::new(0), last_active: Cell::new(Instant::now()), dead: Cell::new(false) })
    }
}

/// Pings every `every` and waits `within` for the answer; returns when one goes unanswered
/// (or the connection is gone). Stays quiet while `quiet()` holds.
pub(crate) async fn keepalive(mut pings: h2::PingPong, every: Duration, within: Duration, quiet: impl Fn() -> bool) {
    loop {
        glommio::timer::sleep(every).await;
        if quiet() {
            continue;
        }
        if pings.send_ping(h2::Ping::opaque()).is_err() {
            return;
        }
        let answered = futures_lite::future::or(
            async { futures_lite::future::poll_fn(|cx| pings.poll_pong(cx)).await.is_ok() },
            async {
                glommio::timer::sleep(within).await;
                false
            },
        )
        .await;
        if !answered {
            return;
        }
    }
}

// === the server ===

/// Serves one connection as a gRPC server: each stream for the service's paths becomes a
/// session on its own task; other requests are answered as grpc-go answers them. The
/// connection closes when it has had no stream for the level-0 `connIdle`, or when a
/// keepalive ping (`idle_timeout`) goes unanswered for `health_check_timeout`.
pub(crate) async fn serve<S>(ctx: &Rc<ShardCtx>, inbound: &Rc<InboundRt>, stream: S, info: ConnInfo, spec: &GrpcSpec)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let tag = &inbound.tag;
    let peer = info.peer;
    let policy = ctx.policy(0);
    // The connection is not a session (its streams are): an idle one neither shows among the
    // live sessions nor holds up a drain.
    let _not_a_session = NotASession::new(ctx);
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(MAX_MESSAGE + MAX_HEADER_LEN);
    // h2's handshake ends with the client's preface: the first stream must come by this too,
    // or a client could hold the connection for `connIdle` by sending no more than that.
    let deadline = Instant::now() + policy.handshake;
    let handshake = futures_lite::future::or(async { Some(builder.handshake(TokioIo(stream)).await) }, async {
        glommio::timer::sleep(policy.handshake).await;
        None
    });
    let mut conn = match handshake.await {
        Some(Ok(conn)) => conn,
        Some(Err(e)) => {
            ctx.refusals.add(Refusal::BadRequest);
            ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} rejected grpc: HTTP/2 handshake: {e}"));
            return;
        }
        None => {
            ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} rejected grpc: HTTP/2 handshake timed out"));
            return;
        }
    };
    let state = ConnState::new();
    let pings = conn.ping_pong();
    // Polled beside the connection in this task: it ends when a ping goes unanswered.
    let keeping = async {
        match (spec.idle_timeout, pings) {
            (secs, Some(pings)) if secs > 0 => {
                let within = match spec.health_check_timeout {
                    0 => DEFAULT_HEALTH_CHECK,
                    s => Duration::from_secs(u64::from(s)),
                };
                keepalive(pings, Duration::from_secs(u64::from(secs)), within, || false).await
            }
            _ => futures_lite::future::pending().await,
        }
    };
    futures_lite::pin!(keeping);
    let paths = service_paths(&spec.service_name);
    let idle = policy.conn_idle;
    // Never 0 (`connIdle: 0`), which would spin the shard while a stream is open.
    let tick = idle.clamp(Duration::from_secs(1), Duration::from_secs(5));
    /// What woke the connection's task.
    enum Event<T> {
        Accepted(Option<Result<T, h2::Error>>),
        Tick,
        Unanswered,
        NoStream,
    }
    let mut streamed = false;
    loop {
        let next = futures_lite::future::or(
            async { Event::Accepted(conn.accept().await) },
            futures_lite::future::or(
                async {
                    let wait =
                        if streamed { tick } else { tick.min(deadline.saturating_duration_since(Instant::now())) };
                    glommio::timer::sleep(wait).await;
                    Event::Tick
                },
                async {
                    (&mut keeping).await;
                    Event::Unanswered
                },
            ),
        )
        .await;
        let next = match next {
            Event::Tick if !streamed && Instant::now() >= deadline => Event::NoStream,
            other => other,
        };
        match next {
            Event::Accepted(Some(Ok((request, respond)))) => {
                streamed = true;
                stream_opened(ctx, inbound, &info, &paths, &state, request, respond);
            }
            Event::NoStream => {
                ctx.refusals.add(Refusal::BadRequest);
                ctx.log.error(
                    LogLevel::Info,
                    format_args!("[{tag}] {peer} rejected grpc: no stream within the handshake timeout"),
                );
                break;
            }
            Event::Accepted(Some(Err(e))) => {
                ctx.log.error(LogLevel::Debug, format_args!("[{tag}] {peer} grpc connection: {e}"));
                break;
            }
            Event::Accepted(None) => break,
            Event::Unanswered => {
                ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} grpc keepalive ping unanswered: closed"));
                break;
            }
            Event::Tick if state.open.get() == 0 && state.last_active.get().elapsed() >= idle => {
                conn.graceful_shutdown();
                let closing = futures_lite::future::poll_fn(|cx| conn.poll_closed(cx));
                let _ = futures_lite::future::or(async { closing.await.ok() }, async {
                    glommio::timer::sleep(Duration::from_secs(1)).await;
                    None
                })
                .await;
                break;
            }
            Event::Tick => {}
        }
    }
    // Dropping the connection fails its streams; the sessions' tasks end with them, and the
    // socket they describe lives until then.
    drop(conn);
    while state.open.get() > 0 {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes a connection out of the shard's live sessions while held (the accept loop counts
/// every connection as one).
pub(crate) struct NotASession(Rc<ShardCtx>);

impl NotASession {
    pub(crate) fn new(ctx: &Rc<ShardCtx>) -> NotASession {
        ctx.live.set(ctx.live.get() - 1);
        NotASession(ctx.clone())
    }
}

impl Drop for NotASession {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get() + 1);
    }
}

/// One stream the client opened: a session for the service's paths, else grpc-go's answer.
fn stream_opened(
    ctx: &Rc<ShardCtx>,
    inbound: &Rc<InboundRt>,
    info: &ConnInfo,
    paths: &ServicePaths,
    state: &Rc<ConnState>,
    request: Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let tag = &inbound.tag;
    let peer = info.peer;
    let path = request.uri().path();
    let refuse =
        |status: StatusCode, grpc: &'static str, why: String, respond: &mut h2::server::SendResponse<Bytes>| {
            ctx.refusals.add(Refusal::BadRequest);
            ctx.log.access(format_args!("from {peer} rejected grpc: {why}"));
            ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} rejected grpc: {why}"));
            let mut answer = Response::builder()
                .status(status)
                .header("content-type", "application/grpc")
                .header("grpc-status", grpc)
                .body(())
                .expect("static head");
            if let Ok(message) = HeaderValue::from_str(&why) {
                answer.headers_mut().insert("grpc-message", message);
            }
            let _ = respond.send_response(answer, true);
        };
    if request.method() != Method::POST {
        let why = format!("Received a HTTP request with method {}, expected POST", request.method());
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "13", why, &mut respond);
    }
    let content_type = request.headers().get("content-type").map(HeaderValue::as_bytes).unwrap_or_default();
    let grpc = content_type
        .strip_prefix(b"application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';');
    if !grpc {
        let why = format!("invalid gRPC request content-type {:?}", String::from_utf8_lossy(content_type));
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "3", why, &mut respond);
    }
    if path != paths.tun && path != paths.multi {
        // As grpc-go words it: the service is the path up to its last '/'.
        let (service, method) = path.trim_start_matches('/').rsplit_once('/').unwrap_or((path, ""));
        let ours = |p: &str| p.trim_start_matches('/').rsplit_once('/').map(|(s, _)| s) == Some(service);
        let why = if ours(&paths.tun) || ours(&paths.multi) {
            format!("unknown method {method} for service {service}")
        } else {
            format!("unknown service {service}")
        };
        return refuse(StatusCode::OK, "12", why, &mut respond);
    }
    let head = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/grpc")
        .body(())
        .expect("static head");
    let send = match respond.send_response(head, false) {
        Ok(send) => send,
        Err(e) => {
            ctx.log.error(LogLevel::Debug, format_args!("[{tag}] {peer} grpc stream: {e}"));
            return;
        }
    };
    let mut info = info.clone();
    if let Some(ip) = forwarded(&inbound.trusted_forwarded, request.headers()) {
        info.peer = std::net::SocketAddr::new(ip, 0);
    }
    let body = request.into_body();
    let session = GrpcStream::new(Recv::Body(body), send, true, Some(OpenStream::new(state)));
    let (ctx, inbound) = (ctx.clone(), inbound.clone());
    // The connection's handshake ends with the first of its sessions.
    glommio::spawn_local(crate::gate::inherit_handshake(async move {
        let _live = LiveGuard::new(&ctx);
        crate::inbound::dispatch(&ctx, &inbound, session, &info, false).await;
    }))
    .detach();
}

/// The client's address from `X-Forwarded-For` (its first hop) or `X-Real-IP`, believed only
/// when one of the `trusted` headers came with the request, as Xray's gRPC server does.
pub(crate) fn forwarded(trusted: &[String], headers: &HeaderMap) -> Option<std::net::IpAddr> {
    if !trusted.iter().any(|t| headers.contains_key(t.as_str())) {
        return None;
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    let first = text("x-forwarded-for").map(|v| v.split(',').next().unwrap_or(v)).or_else(|| text("x-real-ip"))?;
    let first = first.trim();
    first.parse().ok().or_else(|| first.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

// === the client ===

/// An outbound's gRPC client as one shard runs it: one HTTP/2 connection to the server,
/// opened when a session first needs it and again after it dies, carrying every session as
/// a stream (as gun clients do).
pub(crate) struct GrpcClient {
    spec: GrpcSpec,
    path: String,
    /// `:authority`, and the scheme (`https` under TLS).
    authority: String,
    tls: super::super::outbound::trojan::ClientTls,
    user_agent: Option<HeaderValue>,
    conn: RefCell<Option<(h2::client::SendRequest<Bytes>, Rc<ConnState>)>>,
    /// Held while a connection is being opened, so concurrent sessions share it.
    opening: glommio::sync::Semaphore,
}

impl GrpcClient {
    /// The client for `spec` to `server`, TLS (ALPN `h2` unless the settings name others)
    /// when `tls` is set. Fails only on settings control has already checked.
    pub(crate) fn new(
        spec: &GrpcSpec,
        tls: Option<&shardray_core::spec::TlsClientSpec>,
        server: &shardray_wire::addr::Destination,
    ) -> Result<GrpcClient, String> {
        let tls = match tls {
            Some(t) if t.alpn.is_empty() => {
                let with_h2 = shardray_core::spec::TlsClientSpec { alpn: vec!["h2".into()], ..t.clone() };
                super::super::outbound::trojan::client_tls(Some(&with_h2), server)?
            }
            other => super::super::outbound::trojan::client_tls(other, server)?,
        };
        let authority = match (spec.authority.as_str(), &tls) {
            ("", Some((_, name))) => name.to_str().into_owned(),
            ("", None) => match &server.addr {
                shardray_wire::addr::Address::Domain(d) => d.to_string(),
                shardray_wire::addr::Address::Ip(_) => server.to_string(),
            },
            (a, _) => a.to_owned(),
        };
        let user_agent = match spec.user_agent.as_str() {
            "" | "chrome" => Some(HeaderValue::from_static(CHROME_UA)),
            "golang" => None,
            ua => Some(HeaderValue::from_str(ua).map_err(|_| format!("user_agent {ua:?} is not a header value"))?),
        };
        let paths = service_paths(&spec.service_name);
        let path = if spec.multi_mode { paths.multi } else { paths.tun };
        Ok(GrpcClient {
            spec: spec.clone(),
            path,
            authority,
            tls,
            user_agent,
            conn: RefCell::new(None),
            opening: glommio::sync::Semaphore::new(1),
        })
    }

    /// Opens a session: a stream on the shared connection, dialing `server` first if there
    /// is none (or it has died).
    pub(crate) async fn open(
        &self,
        server: &shardray_wire::addr::Destination,
        via: &crate::outbound::Via,
    ) -> io::Result<GrpcStream> {
        // A connection that died between sessions fails the first try: one more, on a new one.
        let mut retried = false;
        loop {
            let (mut sender, state) = self.connection(server, via).await?;
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            let mut request = Request::builder()
                .method(Method::POST)
                .uri(format!("{scheme}://{}{}", self.authority, self.path))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            if let Some(ua) = &self.user_agent {
                request.headers_mut().insert("user-agent", ua.clone());
            }
            let sent = async {
                futures_lite::future::poll_fn(|cx| sender.poll_ready(cx)).await?;
                sender.send_request(request, false)
            };
            match sent.await {
                Ok((response, send)) => {
                    let open = OpenStream::new(&state);
                    return Ok(GrpcStream::new(Recv::Response(response), send, false, Some(open)));
                }
                Err(e) if !retried => {
                    retried = true;
                    self.forget(&state);
                    let _ = e;
                }
                Err(e) => return Err(h2_error(e)),
            }
        }
    }

    fn forget(&self, state: &Rc<ConnState>) {
        let mut conn = self.conn.borrow_mut();
        if conn.as_ref().is_some_and(|(_, s)| Rc::ptr_eq(s, state)) {
            *conn = None;
        }
    }

    /// The live connection, or a new one.
    async fn connection(
        &self,
        server: &shardray_wire::addr::Destination,
        via: &crate::outbound::Via,
    ) -> io::Result<(h2::client::SendRequest<Bytes>, Rc<ConnState>)> {
        let alive = |c: &Option<(h2::client::SendRequest<Bytes>, Rc<ConnState>)>| {
            c.as_ref().filter(|(_, s)| !s.dead.get()).map(|(r, s)| (r.clone(), s.clone()))
        };
        if let Some(c) = alive(&self.conn.borrow()) {
            return Ok(c);
        }
        let _permit = self.opening.acquire_permit(1).await.map_err(|_| io::Error::other("gRPC client closed"))?;
        if let Some(c) = alive(&self.conn.borrow()) {
            return Ok(c);
        }
        let stream = super::super::outbound::trojan::dial_secured(&self.tls, server, via).await?;
        let mut builder = h2::client::Builder::new();
        let window = match self.spec.initial_windows_size {
            0 => STREAM_WINDOW,
            n => n,
        };
        builder
            .initial_window_size(window)
            .initial_connection_window_size(CONNECTION_WINDOW.max(window))
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(MAX_MESSAGE + MAX_HEADER_LEN);
        let handshake = builder.handshake::<_, Bytes>(TokioIo(stream));
        let opening = async { handshake.await.map_err(h2_error) };
        let (sender, mut connection) =
            crate::outbound::within_dial_timeout(opening, "HTTP/2 handshake timed out").await?;
        let state = ConnState::new();
        let pings = connection.ping_pong();
        let driver_state = state.clone();
        let spec = self.spec.clone();
        glommio::spawn_local(async move {
            let keeping = async {
                match (spec.idle_timeout, pings) {
                    (secs, Some(pings)) if secs > 0 => {
                        let within = match spec.health_check_timeout {
                            0 => DEFAULT_HEALTH_CHECK,
                            s => Duration::from_secs(u64::from(s)),
                        };
                        let quiet_state = driver_state.clone();
                        let quiet = move || !spec.permit_without_stream && quiet_state.open.get() == 0;
                        keepalive(pings, Duration::from_secs(u64::from(secs)), within, quiet).await
                    }
                    _ => futures_lite::future::pending().await,
                }
            };
            let _ = futures_lite::future::or(async { (&mut connection).await.ok() }, async {
                keeping.await;
                None
            })
            .await;
            driver_state.dead.set(true);
        })
        .detach();
        *self.conn.borrow_mut() = Some((sender.clone(), state.clone()));
        Ok((sender, state))
    }
}
