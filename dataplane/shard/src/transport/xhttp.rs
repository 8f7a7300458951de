//! The XHTTP (SplitHTTP) server: HTTP/1.1 and HTTP/2 on one listener (told apart by the
//! HTTP/2 preface), both served by hyper over our glommio streams. A session's downlink is
//! the body of its GET (or of its stream-one POST); its uplink is that POST's body, or the
//! numbered POSTs (packet-up) or one streaming POST (stream-up) that may arrive on any
//! connection and so on any shard. Those find their session in a process-wide table, touched
//! once per request, and hand their payload to it through a bounded channel; every wait on
//! that channel, either way, uses a waker that rings its own shard's doorbell when woken from
//! another (wake.rs), so no hand-off waits on a lost wake-up. The codec (paths, padding, modes, reordering) is
//! `shardray_wire::xhttp`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures_lite::{AsyncRead, AsyncWrite, Stream};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};
use shardray_core::spec::{LogLevel, XhttpSpec};
use shardray_core::stats::Refusal;
use shardray_wire::xhttp::{Refused, Request as Kind, RequestHead, Settings, UploadQueue};

use super::grpc::{forwarded, NotASession, TokioIo};
use crate::ctx::{InboundRt, LiveGuard, ShardCtx};
use crate::inbound::ConnInfo;
use crate::wake::{across_shards, CrossShardWaker};

/// How long a session waits for its GET after its first request (Xray's hub.go: 30 s).
const SESSION_TTL: Duration = Duration::from_secs(30);

/// How long a POST waits for room in its session's queue before it is answered 500 (Xray
/// waits for as long as the session lives; this bounds a stuck one), and how long a packet's
/// body may take to arrive.
const QUEUE_WAIT: Duration = Duration::from_secs(30);

/// Sessions the whole process holds at once (each at most scMaxBufferedPosts POSTs).
const MAX_SESSIONS: usize = 16 * 1024;

/// Upload bytes buffered across every session of the process, not yet read by a session;
/// a POST past it is answered 503.
const MAX_BUFFERED: usize = 512 << 20;

/// Packet bytes one connection may be reading at once (its share of MAX_BUFFERED): an h2
/// connection's streams cannot together take the whole process's budget.
const CONN_READING: usize = 16 << 20;

/// Downlink bytes a session may have written that the response has not yet taken.
const DOWN_BUFFER: usize = 256 * 1024;

/// HTTP/2 windows and frames, as the gRPC transport grants them.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;
const MAX_FRAME: u32 = 256 * 1024;
const MAX_STREAMS: u32 = 512;

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// === the session table ===

/// A session as the table knows it. The uplink's sender is cloned by each POST; the
/// receiver and the `done` sender are taken by the request that runs the session (its GET).
struct Entry {
    up: async_channel::Sender<Upload>,
    claim: Option<(async_channel::Receiver<Upload>, async_channel::Sender<()>)>,
    /// Closed when the session ends (every sender dropped): a stream-up POST's response ends.
    done: async_channel::Receiver<()>,
    /// A stream-up POST has been taken.
    streaming: bool,
    born: Instant,
}

/// A session's key: its inbound's tag and the id the client chose.
type Key = (Arc<str>, String);

fn table() -> std::sync::MutexGuard<'static, HashMap<Key, Entry>> {
    static SESSIONS: OnceLock<Mutex<HashMap<Key, Entry>>> = OnceLock::new();
    SESSIONS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// The session's uplink sender and end signal, creating the session if new (`true` then).
fn upsert(key: &Key, max_posts: u32) -> Option<(async_channel::Sender<Upload>, async_channel::Receiver<()>, bool)> {
    let mut t = table();
    if let Some(e) = t.get(key) {
        return Some((e.up.clone(), e.done.clone(), false));
    }
    if t.len() >= MAX_SESSIONS {
        return None;
    }
    let (up, rx) = async_channel::bounded(max_posts.max(1) as usize);
    let (done_tx, done) = async_channel::bounded(1);
    let entry = Entry {
        up: up.clone(),
        claim: Some((rx, done_tx)),
        done: done.clone(),
        streaming: false,
        born: Instant::now(),
    };
    t.insert(key.clone(), entry);
    Some((up, done, true))
}

/// Ends a session that no GET claimed within the TTL (Xray's reaper in hub.go).
fn spawn_reaper(key: Key) {
    glommio::spawn_local(async move {
        glommio::timer::sleep(SESSION_TTL).await;
        let mut t = table();
        if t.get(&key).is_some_and(|e| e.claim.is_some() && e.born.elapsed() >= SESSION_TTL) {
            t.remove(&key);
        }
    })
    .detach();
}

/// Removes its session from the table when the session ends.
struct Registered(Key);

impl Drop for Registered {
    fn drop(&mut self) {
        table().remove(&self.0);
    }
}

// === uplink packets ===

/// What a POST hands its session.
enum Upload {
    /// A numbered packet (packet-up).
    Packet(u64, Counted),
    /// Bytes of the streaming POST (stream-up), in order.
    Chunk(Counted),
    /// The streaming POST ended.
    End,
    /// The streaming POST broke off (logged where it did): the session ends.
    Failed,
}

/// Upload bytes counted against [`MAX_BUFFERED`] until dropped.
struct Counted(Bytes);

static BUFFERED: AtomicUsize = AtomicUsize::new(0);

impl Counted {
    fn new(data: Bytes) -> Option<Counted> {
        let n = data.len();
        if BUFFERED.fetch_add(n, Ordering::Relaxed) + n > MAX_BUFFERED {
            BUFFERED.fetch_sub(n, Ordering::Relaxed);
            return None;
        }
        Some(Counted(data))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        BUFFERED.fetch_sub(self.0.len(), Ordering::Relaxed);
    }
}

/// A packet's bytes charged to [`MAX_BUFFERED`] and to its connection's [`CONN_READING`] as
/// they arrive, before the packet is whole; given back if it never is.
struct Charge<'a> {
    conn: &'a ConnState,
    n: usize,
}

impl<'a> Charge<'a> {
    fn new(conn: &'a ConnState) -> Charge<'a> {
        Charge { conn, n: 0 }
    }

    /// Charges `n` more bytes; false (nothing charged) past either budget.
    fn add(&mut self, n: usize) -> bool {
        if self.conn.reading.get() + n > CONN_READING {
            return false;
        }
        if BUFFERED.fetch_add(n, Ordering::Relaxed) + n > MAX_BUFFERED {
            BUFFERED.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        self.conn.reading.set(self.conn.reading.get() + n);
        self.n += n;
        true
    }

    /// The whole packet, its bytes still counted (now by the packet alone).
    fn packet(self, data: Bytes) -> Counted {
        debug_assert_eq!(data.len(), self.n);
        self.conn.reading.set(self.conn.reading.get() - self.n);
        std::mem::forget(self);
        Counted(data)
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        BUFFERED.fetch_sub(self.n, Ordering::Relaxed);
        self.conn.reading.set(self.conn.reading.get() - self.n);
    }
}

// === the downlink pipe ===

/// Bytes a session writes and its response body sends, on one shard.
#[derive(Default)]
struct Pipe {
    chunks: std::collections::VecDeque<Bytes>,
    queued: usize,
    writer_closed: bool,
    reader_gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// The session's reads, woken when the response goes (its GET ended).
    session: Option<Waker>,
}

/// The session's end of a downlink.
struct PipeWriter(Rc<RefCell<Pipe>>);

/// The response body's end: the bytes as DATA frames (or chunks), ended when the writer
/// closes. Holds its connection's count of open exchanges.
struct PipeBody {
    pipe: Rc<RefCell<Pipe>>,
    _open: Open,
}

fn pipe(open: Open) -> (PipeWriter, PipeBody) {
    let p = Rc::new(RefCell::new(Pipe::default()));
    (PipeWriter(p.clone()), PipeBody { pipe: p, _open: open })
}

impl PipeWriter {
    fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut p = self.0.borrow_mut();
        if p.reader_gone {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if p.queued >= DOWN_BUFFER {
            p.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = data.len().min(DOWN_BUFFER);
        p.chunks.push_back(Bytes::copy_from_slice(&data[..n]));
        p.queued += n;
        if let Some(w) = p.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }

    /// The response is gone (its request ended); else the session's read is woken when it goes.
    fn poll_gone(&self, cx: &mut Context<'_>) -> bool {
        let mut p = self.0.borrow_mut();
        if !p.reader_gone && !p.session.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            p.session = Some(cx.waker().clone());
        }
        p.reader_gone
    }

    fn close(&self) {
        let mut p = self.0.borrow_mut();
        p.writer_closed = true;
        if let Some(w) = p.reader.take() {
            w.wake();
        }
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        self.close();
    }
}

impl Body for PipeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut p = self.pipe.borrow_mut();
        if let Some(chunk) = p.chunks.pop_front() {
            p.queued -= chunk.len();
            if let Some(w) = p.writer.take() {
                w.wake();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if p.writer_closed {
            return Poll::Ready(None);
        }
        p.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let p = self.pipe.borrow();
        p.writer_closed && p.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for PipeBody {
    fn drop(&mut self) {
        let mut p = self.pipe.borrow_mut();
        p.reader_gone = true;
        for w in [p.writer.take(), p.session.take()].into_iter().flatten() {
            w.wake();
        }
    }
}

/// A response body: nothing, or a pipe.
enum XBody {
    Empty,
    Pipe(PipeBody),
}

impl Body for XBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            XBody::Empty => Poll::Ready(None),
            XBody::Pipe(p) => Pin::new(p).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            XBody::Empty => true,
            XBody::Pipe(p) => p.is_end_stream(),
        }
    }
}

// === the session stream ===

/// Where a session's uplink comes from.
enum Uplink {
    /// POSTs through the table: numbered packets put in order, or one stream's chunks.
    Posts { rx: Pin<Box<async_channel::Receiver<Upload>>>, queue: UploadQueue<Counted>, streaming: bool },
    /// The request body of a stream-one POST.
    Body(Incoming),
}

/// One XHTTP session as its protocol sees it: reads take the uplink, writes go down the
/// response body.
struct XhttpStream {
    up: Uplink,
    /// The uplink bytes taken and not yet read.
    current: Option<Counted>,
    body_chunk: Bytes,
    down: PipeWriter,
    /// The waker the uplink channel is polled with (POSTs on other shards wake it).
    waker: CrossShardWaker,
    ctx: Rc<ShardCtx>,
    tag: Arc<str>,
}

impl AsyncRead for XhttpStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // As Xray: the session ends with its downlink's request, whatever its uplink does.
        if this.down.poll_gone(cx) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            if let Some(c) = &mut this.current {
                if !c.0.is_empty() {
                    let n = c.0.len().min(buf.len());
                    buf[..n].copy_from_slice(&c.0[..n]);
                    c.0.advance(n);
                    BUFFERED.fetch_sub(n, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                this.current = None;
            }
            if !this.body_chunk.is_empty() {
                let n = this.body_chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&this.body_chunk[..n]);
                this.body_chunk.advance(n);
                return Poll::Ready(Ok(n));
            }
            match &mut this.up {
                Uplink::Posts { rx, queue, streaming } => {
                    if let Some(p) = queue.pop() {
                        this.current = Some(p);
                        continue;
                    }
                    let waker = this.waker.get(cx);
                    match ready!(rx.as_mut().poll_next(&mut Context::from_waker(&waker))) {
                        Some(Upload::Packet(seq, data)) if !*streaming => {
                            if let Err(e) = queue.push(seq, data) {
                                let tag = &this.tag;
                                this.ctx.log.error(LogLevel::Info, format_args!("[{tag}] xhttp session closed: {e}"));
                                return Poll::Ready(Err(io::Error::other(e.to_string())));
                            }
                        }
                        Some(Upload::Chunk(data)) if queue.next_seq() == 0 && queue.held() == 0 => {
                            *streaming = true;
                            this.current = Some(data);
                        }
                        Some(Upload::Failed) => {
                            return Poll::Ready(Err(io::Error::other("xhttp: upload stream failed")))
                        }
                        Some(Upload::Packet(..) | Upload::Chunk(_)) => {
                            let tag = &this.tag;
                            this.ctx.log.error(
                                LogLevel::Info,
                                format_args!("[{tag}] xhttp session closed: packets and a stream mixed"),
                            );
                            return Poll::Ready(Err(io::Error::other("xhttp: packets and a stream mixed")));
                        }
                        Some(Upload::End) | None => return Poll::Ready(Ok(0)),
                    }
                }
                Uplink::Body(body) => match ready!(Pin::new(body).poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            this.body_chunk = data;
                        }
                    }
                    Some(Err(e)) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, e))),
                    None => return Poll::Ready(Ok(0)),
                },
            }
        }
    }
}

impl AsyncWrite for XhttpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.down.poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.down.close();
        Poll::Ready(Ok(()))
    }
}

// === the connection ===

/// A stream whose first bytes were already read.
struct Prefixed<S> {
    head: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.at < self.head.len() {
            let n = (self.head.len() - self.at).min(buf.len());
            buf[..n].copy_from_slice(&self.head[self.at..self.at + n]);
            self.at += n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Exchanges (requests with their responses, and sessions) open on one connection, and when
/// it last had one; the connection closes when it has had none for a while.
struct ConnState {
    open: Cell<u32>,
    served: Cell<bool>,
    last: Cell<Instant>,
    /// Packet bytes being read (see [`Charge`]).
    reading: Cell<usize>,
}

/// Counts one open exchange while held.
struct Open(Rc<ConnState>);

impl Open {
    fn new(state: &Rc<ConnState>) -> Open {
        state.open.set(state.open.get() + 1);
        state.served.set(true);
        Open(state.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        self.0.last.set(Instant::now());
    }
}

/// Runs hyper's HTTP/2 tasks on the shard, each sharing its connection's handshake (its
/// streams' requests end it).
#[derive(Clone, Copy)]
struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        glommio::spawn_local(crate::gate::inherit_handshake(fut)).detach();
    }
}

/// Serves one connection: HTTP/2 if it opens with the preface, else HTTP/1.1. It closes
/// when no request came within the handshake timeout, or none has been open for `connIdle`.
pub(crate) async fn serve<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &Rc<InboundRt>,
    mut stream: S,
    info: ConnInfo,
    spec: &XhttpSpec,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    use futures_lite::AsyncReadExt;
    let tag = &inbound.tag;
    let peer = info.peer;
    let policy = ctx.policy(0);
    let _not_a_session = NotASession::new(ctx);
    let mut head = Vec::with_capacity(PREFACE.len());
    let sniffed = futures_lite::future::or(
        async {
            let mut b = [0u8; PREFACE.len()];
            while head.len() < PREFACE.len() && PREFACE.starts_with(&head) {
                match stream.read(&mut b[..PREFACE.len() - head.len()]).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => head.extend_from_slice(&b[..n]),
                }
            }
            true
        },
        async {
            glommio::timer::sleep(policy.handshake).await;
            false
        },
    )
    .await;
    if !sniffed {
        ctx.log.error(LogLevel::Debug, format_args!("[{tag}] {peer} xhttp: no request within the handshake timeout"));
        return;
    }
    let h2 = head == PREFACE;
    let io = hyper_util::rt::TokioIo::new(TokioIo(Prefixed { head, at: 0, inner: stream }));
    let state = Rc::new(ConnState {
        open: Cell::new(0),
        served: Cell::new(false),
        last: Cell::new(Instant::now()),
        reading: Cell::new(0),
    });
    let server = Rc::new(Server {
        ctx: ctx.clone(),
        inbound: inbound.clone(),
        info,
        settings: spec.settings.clone(),
        state: state.clone(),
    });
    let service = hyper::service::service_fn(move |req| {
        let server = server.clone();
        async move { Ok::<_, Infallible>(server.handle(req).await) }
    });
    // serverMaxHeaderBytes is Go's MaxHeaderBytes: an HTTP/1.1 head may take 4096 bytes more
    // (net/http's "bufio slop"), an HTTP/2 header list 320 more (x/net/http2's allowance for
    // ten fields' overhead); past them both answer 431, as hyper and h2 then do.
    let max_header = spec.settings.server_max_header_bytes;
    let h1_head_limit = max_header as usize + 4096;
    let conn: Pin<Box<dyn Future<Output = Result<(), hyper::Error>>>> = if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(LocalExec);
        b.initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(max_header.saturating_add(320));
        Box::pin(b.serve_connection(io, service))
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.max_header_size(h1_head_limit).max_buf_size(h1_head_limit.max(64 * 1024));
        Box::pin(b.serve_connection(io, service))
    };
    let idle = policy.conn_idle.max(Duration::from_secs(1));
    let watchdog = async {
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            let limit = if state.served.get() { idle } else { policy.handshake };
            if state.open.get() == 0 && state.last.get().elapsed() >= limit {
                return;
            }
        }
    };
    let served = futures_lite::future::or(async { Some(conn.await) }, async {
        watchdog.await;
        None
    });
    match served.await {
        // hyper has answered a head it could not take (431, or 400 for a malformed one) and
        // closed, as Go's server would: a refusal like the others.
        Some(Err(e)) if e.is_parse_too_large() => {
            refuse(ctx, inbound, peer, format_args!("request head over {h1_head_limit} bytes: answered 431"))
        }
        Some(Err(e)) if e.is_parse() => refuse(ctx, inbound, peer, format_args!("{e}: answered 400")),
        Some(Err(e)) => ctx.log.error(LogLevel::Debug, format_args!("[{tag}] {peer} xhttp connection: {e}")),
        _ => {}
    }
    // The sessions' tasks end once their bodies are gone; the socket their ConnInfo
    // describes lives until then.
    while state.open.get() > 0 {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

/// What every request of one connection needs.
struct Server {
    ctx: Rc<ShardCtx>,
    inbound: Rc<InboundRt>,
    info: ConnInfo,
    settings: Settings,
    state: Rc<ConnState>,
}

/// What a request asked, taken out of its head before the body is.
struct Asked {
    kind: Result<Kind, Refused>,
    headers: Vec<(String, String)>,
    referer: bool,
    content_length: Option<u64>,
    forwarded: Option<std::net::IpAddr>,
    /// An `X-Forwarded-For` came without a trusted header and was ignored.
    untrusted_forward: bool,
}

/// Counts a refused request in `refused>>>bad_request` and logs why (access log, and Info).
fn refuse(ctx: &ShardCtx, inbound: &InboundRt, peer: std::net::SocketAddr, why: impl std::fmt::Display) {
    ctx.refusals.add(Refusal::BadRequest);
    ctx.log.access(format_args!("from {peer} rejected xhttp: {why}"));
    ctx.log.error(LogLevel::Info, format_args!("[{}] {peer} rejected xhttp: {why}", inbound.tag));
}

impl Server {
    fn refuse(&self, why: impl std::fmt::Display) {
        refuse(&self.ctx, &self.inbound, self.info.peer, why);
    }

    fn answer(&self, status: StatusCode, headers: &[(String, String)], body: XBody) -> Response<XBody> {
        let mut r = Response::new(body);
        *r.status_mut() = status;
        for (name, value) in headers {
            if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(value))
            {
                r.headers_mut().append(n, v);
            }
        }
        r
    }

    fn asked(&self, req: &Request<Incoming>) -> Asked {
        let mut fields: Vec<(&str, &str)> = Vec::with_capacity(req.headers().len());
        for (n, v) in req.headers() {
            if let Ok(v) = v.to_str() {
                fields.push((n.as_str(), v));
            }
        }
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| fields.iter().find(|(n, _)| *n == "host").map(|&(_, v)| v))
            .unwrap_or("");
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let head = RequestHead { method: req.method().as_str(), target, host, headers: &fields };
        let kind = self.settings.classify(&head);
        let padding = self.settings.padding.bytes.pick(random());
        let headers = match kind {
            // Refused before (or, for a bad escape, without) Xray's handler writing its headers.
            Err(Refused::Host | Refused::Path | Refused::PathEscape) => Vec::new(),
            _ => self.settings.response_headers(&head, padding),
        };
        Asked {
            kind,
            headers,
            referer: head.header("referer").is_some(),
            content_length: head.header("content-length").and_then(|v| v.trim().parse().ok()),
            forwarded: forwarded(&self.inbound.trusted_forwarded, req.headers()),
            untrusted_forward: head.header("x-forwarded-for").is_some()
                && !self.inbound.trusted_forwarded.iter().any(|t| head.header(t).is_some()),
        }
    }

    async fn handle(self: Rc<Self>, req: Request<Incoming>) -> Response<XBody> {
        let open = Open::new(&self.state);
        let asked = self.asked(&req);
        let kind = match asked.kind {
            Ok(k) => k,
            Err(r) => {
                self.refuse(format_args!("{} {}: {r}", req.method(), req.uri().path()));
                let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST);
                return self.answer(status, &asked.headers, XBody::Empty);
            }
        };
        // A request on our path with valid padding ends the connection's handshake, whether
        // it carries a session or only a packet of one that lives elsewhere.
        if !matches!(kind, Kind::Preflight) {
            crate::gate::handshake_done();
        }
        let mut info = self.info.clone();
        if let Some(ip) = asked.forwarded {
            info.peer = std::net::SocketAddr::new(ip, 0);
        } else if asked.untrusted_forward && matches!(kind, Kind::StreamOne | Kind::Download { .. }) {
            let (tag, peer) = (&self.inbound.tag, self.info.peer);
            self.ctx.log.error(
                LogLevel::Info,
                format_args!("[{tag}] {peer} sent X-Forwarded-For from no trusted hop: ignored"),
            );
        }
        let body = req.into_body();
        let s = &self.settings;
        match kind {
            Kind::Preflight => self.answer(StatusCode::OK, &asked.headers, XBody::Empty),
            Kind::StreamOne => self.run_session(open, asked.headers, Uplink::Body(body), info, None),
            Kind::Download { session } => {
                let key = (self.inbound.tag.clone(), session);
                // Created here, or by POSTs that came first (whose reaper then finds it claimed).
                if upsert(&key, s.max_buffered_posts).is_none() {
                    self.refuse("too many xhttp sessions");
                    return self.answer(StatusCode::SERVICE_UNAVAILABLE, &asked.headers, XBody::Empty);
                }
                let claimed = table().get_mut(&key).and_then(|e| e.claim.take());
                let Some((rx, done)) = claimed else {
                    self.refuse(format_args!("a second GET for session {:?}", key.1));
                    return self.answer(StatusCode::CONFLICT, &asked.headers, XBody::Empty);
                };
                let queue = UploadQueue::new(s.max_buffered_posts as usize);
                let up = Uplink::Posts { rx: Box::pin(rx), queue, streaming: false };
                self.run_session(open, asked.headers, up, info, Some((Registered(key), done)))
            }
            Kind::Packet { session, seq, inline, body: has_body } => {
                let max = s.max_each_post_bytes.to as usize;
                if asked.content_length.is_some_and(|n| n > max as u64) {
                    self.refuse(format_args!(
                        "POST of {} bytes over scMaxEachPostBytes {max}",
                        asked.content_length.unwrap_or(0)
                    ));
                    return self.answer(StatusCode::PAYLOAD_TOO_LARGE, &asked.headers, XBody::Empty);
                }
                let mut payload = inline;
                let mut charge = Charge::new(&self.state);
                let mut empty_body = true;
                if !charge.add(payload.len()) {
                    self.refuse("xhttp upload buffers full");
                    return self.answer(StatusCode::SERVICE_UNAVAILABLE, &asked.headers, XBody::Empty);
                }
                if has_body {
                    let limit = max.saturating_sub(payload.len());
                    let reading = futures_lite::future::or(read_body(body, limit, &mut charge), async {
                        glommio::timer::sleep(QUEUE_WAIT).await;
                        Err(BodyError::Slow)
                    });
                    match reading.await {
                        Ok(b) => {
                            empty_body = b.is_empty();
                            // Most packets carry nothing in headers: the body is the payload.
                            if payload.is_empty() {
                                payload = b;
                            } else {
                                payload.extend_from_slice(&b);
                            }
                        }
                        Err(BodyError::TooLarge) => {
                            self.refuse(format_args!("POST over scMaxEachPostBytes {max}"));
                            return self.answer(StatusCode::PAYLOAD_TOO_LARGE, &asked.headers, XBody::Empty);
                        }
                        Err(BodyError::Full) => {
                            self.refuse("xhttp upload buffers full");
                            return self.answer(StatusCode::SERVICE_UNAVAILABLE, &asked.headers, XBody::Empty);
                        }
                        Err(BodyError::Slow) => {
                            self.refuse(format_args!("POST body not received within {QUEUE_WAIT:?}"));
                            return self.answer(StatusCode::REQUEST_TIMEOUT, &asked.headers, XBody::Empty);
                        }
                        Err(BodyError::Broken(e)) => {
                            self.refuse(format_args!("POST body: {e}"));
                            return self.answer(StatusCode::BAD_REQUEST, &asked.headers, XBody::Empty);
                        }
                    }
                }
                if payload.len() > max {
                    self.refuse(format_args!("POST over scMaxEachPostBytes {max}"));
                    return self.answer(StatusCode::PAYLOAD_TOO_LARGE, &asked.headers, XBody::Empty);
                }
                let key = (self.inbound.tag.clone(), session);
                let Some((up, _, created)) = upsert(&key, s.max_buffered_posts) else {
                    self.refuse("too many xhttp sessions");
                    return self.answer(StatusCode::SERVICE_UNAVAILABLE, &asked.headers, XBody::Empty);
                };
                if created {
                    spawn_reaper(key.clone());
                }
                let counted = charge.packet(Bytes::from(payload));
                if let Err(why) = send(&up, Upload::Packet(seq, counted)).await {
                    self.refuse(format_args!("packet {seq} of session {:?}: {why}", key.1));
                    return self.answer(StatusCode::INTERNAL_SERVER_ERROR, &asked.headers, XBody::Empty);
                }
                let mut headers = asked.headers;
                if empty_body {
                    headers.push(("Cache-Control".into(), "no-store".into()));
                }
                self.answer(StatusCode::OK, &headers, XBody::Empty)
            }
            Kind::StreamUp { session } => {
                let key = (self.inbound.tag.clone(), session);
                let Some((up, done, created)) = upsert(&key, s.max_buffered_posts) else {
                    self.refuse("too many xhttp sessions");
                    return self.answer(StatusCode::SERVICE_UNAVAILABLE, &asked.headers, XBody::Empty);
                };
                if created {
                    spawn_reaper(key.clone());
                }
                let first = table().get_mut(&key).is_some_and(|e| !std::mem::replace(&mut e.streaming, true));
                if !first {
                    self.refuse(format_args!("a second upload stream for session {:?}", key.1));
                    return self.answer(StatusCode::CONFLICT, &asked.headers, XBody::Empty);
                }
                glommio::spawn_local(pump(body, up, self.clone(), key.1.clone())).detach();
                let (writer, reader) = pipe(open);
                // As hub.go: only for clients that pad (a legacy Referer, or obfs padding).
                let pads = asked.referer || s.padding.obfs_mode;
                let keepalive = if pads { s.stream_up_server_secs } else { Default::default() };
                let padding = s.padding.bytes;
                glommio::spawn_local(async move {
                    let mut rnd = random();
                    loop {
                        if keepalive.to > 0 {
                            let pad = vec![b'X'; padding.pick(rnd) as usize];
                            let wrote = futures_lite::future::poll_fn(|cx| writer.poll_write(cx, &pad)).await;
                            if wrote.is_err() {
                                break;
                            }
                        }
                        let wait = if keepalive.to > 0 { u64::from(keepalive.pick(rnd)) } else { 3600 };
                        rnd = random();
                        let ended =
                            futures_lite::future::or(async { across_shards(done.recv()).await.is_err() }, async {
                                glommio::timer::sleep(Duration::from_secs(wait)).await;
                                false
                            })
                            .await;
                        if ended {
                            break;
                        }
                    }
                    writer.close();
                })
                .detach();
                let mut headers = asked.headers;
                headers.push(("X-Accel-Buffering".into(), "no".into()));
                headers.push(("Cache-Control".into(), "no-store".into()));
                self.answer(StatusCode::OK, &headers, XBody::Pipe(reader))
            }
        }
    }

    /// Starts a session on this shard: the protocol over `up` and a pipe whose other end is
    /// the response body; answered at once with the downlink's head.
    fn run_session(
        &self,
        open: Open,
        mut headers: Vec<(String, String)>,
        up: Uplink,
        info: ConnInfo,
        registered: Option<(Registered, async_channel::Sender<()>)>,
    ) -> Response<XBody> {
        let session_open = Open::new(&self.state);
        let (writer, reader) = pipe(open);
        let stream = XhttpStream {
            up,
            current: None,
            body_chunk: Bytes::new(),
            down: writer,
            waker: CrossShardWaker::default(),
            ctx: self.ctx.clone(),
            tag: self.inbound.tag.clone(),
        };
        let (ctx, inbound) = (self.ctx.clone(), self.inbound.clone());
        glommio::spawn_local(crate::gate::inherit_handshake(async move {
            let _open = session_open;
            let _registered = registered;
            let _live = LiveGuard::new(&ctx);
            crate::inbound::dispatch(&ctx, &inbound, stream, &info, false).await;
        }))
        .detach();
        headers.extend(self.settings.downlink_headers().into_iter().map(|(n, v)| (n.to_owned(), v.to_owned())));
        self.answer(StatusCode::OK, &headers, XBody::Pipe(reader))
    }
}

/// Hands a packet to its session, waiting (bounded) for room as Xray's POST handler waits.
async fn send(up: &async_channel::Sender<Upload>, packet: Upload) -> Result<(), &'static str> {
    futures_lite::future::or(async { across_shards(up.send(packet)).await.map_err(|_| "session closed") }, async {
        glommio::timer::sleep(QUEUE_WAIT).await;
        Err("session queue full")
    })
    .await
}

/// Feeds a stream-up POST's body to its session, chunk by chunk; a body that breaks off or
/// finds the upload budget full is refused (logged, counted) and ends the session.
async fn pump(mut body: Incoming, up: async_channel::Sender<Upload>, server: Rc<Server>, session: String) {
    let why = loop {
        let frame = futures_lite::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let chunk = match frame {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue,
            },
            Some(Err(e)) => break format!("upload stream broke off: {e}"),
            None => {
                let _ = across_shards(up.send(Upload::End)).await;
                return;
            }
        };
        let Some(counted) = Counted::new(chunk) else { break "upload stream: xhttp upload buffers full".to_owned() };
        if across_shards(up.send(Upload::Chunk(counted))).await.is_err() {
            return;
        }
    };
    server.refuse(format_args!("session {session:?}: {why}"));
    let _ = across_shards(up.send(Upload::Failed)).await;
}

enum BodyError {
    TooLarge,
    /// The upload budgets ([`Charge`]) are full.
    Full,
    Slow,
    Broken(hyper::Error),
}

/// A request body, whole, refused past `max` bytes; each frame is charged as it comes.
async fn read_body(mut body: Incoming, max: usize, charge: &mut Charge<'_>) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    loop {
        match futures_lite::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    if out.len() + d.len() > max {
                        return Err(BodyError::TooLarge);
                    }
                    if !charge.add(d.len()) {
                        return Err(BodyError::Full);
                    }
                    out.extend_from_slice(&d);
                }
            }
            Some(Err(e)) => return Err(BodyError::Broken(e)),
            None => return Ok(out),
        }
    }
}

/// A random number for padding lengths and intervals (not for anything secret).
fn random() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}
