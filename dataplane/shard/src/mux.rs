//! mux.cool on the server: one client connection (a VLESS or VMess mux command stream)
//! carrying many sub-sessions, TCP or UDP (XUDP is a UDP sub-session whose packets name
//! their own addresses), each routed, counted, limited and relayed as a session of its own.
//!
//! The connection's task reads frames and hands each sub-session's bytes to its inbox; the
//! sub-sessions run in the same task (a set of futures), writing their frames to one outbox
//! that a writer drains to the client. mux.cool has no flow control, so buffering is bounded
//! by hand: an inbox holds at most `INBOX_BYTES` the sub-session has not taken; past that the
//! reader waits for it (the whole connection waits, as Xray's does), but a sub-session that
//! takes nothing for `STALL` is ended so that the others go on. A UDP sub-session's packet
//! that finds its inbox full is dropped instead. Downlink writes wait while the outbox holds
//! `OUTBOX_BYTES`. A malformed frame, a frame for a session id never opened, or a second New
//! for a live id closes the connection.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::future::poll_fn;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rustc_hash::FxHashMap;
use shardray_core::spec::LogLevel;
use shardray_core::stats::Refusal;
use shardray_wire::addr::Destination;
use shardray_wire::xudp::{Frame, Status, MAX_FRAME, TCP, UDP};
use shardray_wire::DecodeError;

use crate::ctx::{InboundRt, ShardCtx};
use crate::outbound::{forward, Session};
use crate::packet::{serve_packets, PacketSession, PacketSink, PacketSource, Recv, MAX_DATAGRAM};
use crate::users::{SessionWatch, UserHandle, UserState};

/// Sub-sessions one mux connection may hold at once (clients open 8 by default); a New
/// beyond is answered with End.
pub(crate) const MAX_SUB_SESSIONS: usize = 128;

/// Client bytes queued for one sub-session that its relay has not taken yet.
const INBOX_BYTES: usize = 64 * 1024;

/// How long the reader waits for a sub-session whose inbox is full and that takes nothing
/// meanwhile, before ending it.
const STALL: Duration = Duration::from_secs(10);

/// Frames queued towards the client before the sub-sessions' writes wait.
const OUTBOX_BYTES: usize = 128 * 1024;

/// The frame reader's buffer until a frame needs more (up to `MAX_FRAME`).
const READ_ROOM: usize = 16 * 1024;

/// The most payload one downlink frame carries.
const FRAME_DATA: usize = 16 * 1024;

/// Frames the reader takes in a row before it lets the sub-sessions and the writer run: a
/// client that keeps sending (frames for ended sub-sessions, UDP packets dropped) must not
/// starve them.
const FRAMES_PER_TURN: u32 = 64;

/// Serves a mux connection of `user` over `stream`, whose first bytes, already read, are
/// `early`; `prefix` (a response header) goes to the client before the first frame.
///
/// Boxed, as `outbound::carry` is: a connection's future must not carry room for a mux
/// session while its handshake arrives.
pub(crate) async fn serve<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    peer: SocketAddr,
    user: UserHandle,
    stream: S,
    early: &[u8],
    prefix: &[u8],
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Box::pin(serve_mux(ctx, inbound, peer, user, stream, early, prefix)).await
}

async fn serve_mux<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    peer: SocketAddr,
    user: UserHandle,
    stream: S,
    early: &[u8],
    prefix: &[u8],
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tag = &inbound.tag;
    ctx.log.error(LogLevel::Debug, format_args!("[{tag}] {peer} mux connection"));
    let stream = RefCell::new(stream);
    let outbox = Outbox::default();
    let live: RefCell<FxHashMap<u16, Rc<Inbox>>> = RefCell::default();
    let subs: RefCell<FuturesUnordered<Pin<Box<dyn Future<Output = ()> + '_>>>> = RefCell::default();
    let finishing = Cell::new(false);
    let watch = inbound.kind.user_states().map(|users| SessionWatch::new(&ctx.watchers, users, user.clone()));
    let mux = Mux { ctx, inbound, peer, user: &user, outbox: &outbox, live: &live };
    let reading = async {
        match read_frames(&mux, &stream, early, |id, network, dest, inbox| {
            subs.borrow_mut().push(Box::pin(mux.sub_session(id, network, dest, inbox)));
        })
        .await
        {
            Ok(()) => {
                // The client is done sending: the sub-sessions finish their downlinks.
                for inbox in live.borrow().values() {
                    inbox.end();
                }
                finishing.set(true);
                futures_lite::future::pending::<()>().await
            }
            Err(why) => {
                ctx.refusals.add(Refusal::BadRequest);
                ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} mux: {why}: connection closed"));
            }
        }
    };
    let driving = async {
        poll_fn(|cx| {
            let mut subs = subs.borrow_mut();
            loop {
                match subs.poll_next_unpin(cx) {
                    Poll::Ready(Some(())) => continue,
                    Poll::Ready(None) if finishing.get() => return Poll::Ready(()),
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        // Every sub-session done after the client's end: the writer sends what is left, then
        // the connection closes; a client that reads none of it is given downlinkOnly.
        outbox.finish();
        let grace = ctx.policy(user.level).downlink_only;
        glommio::timer::sleep(grace).await;
        ctx.log.error(
            LogLevel::Info,
            format_args!("[{tag}] {peer} mux: the last frames unread for {grace:?}: connection closed"),
        );
    };
    let writing = async {
        if let Err(e) = write_frames(crate::packet::Half(&stream), &outbox, prefix).await {
            ctx.log.error(LogLevel::Debug, format_args!("[{tag}] {peer} mux: {e}"));
        }
    };
    let removed = poll_fn(|cx| match &watch {
        Some(w) if w.check(cx.waker()) == UserState::Closed => Poll::Ready(()),
        _ => Poll::Pending,
    });
    let removed = async {
        removed.await;
        ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} mux: user removed: connection closed"));
    };
    // Order matters: frames read may add sub-sessions, which are then polled in the same pass.
    futures_lite::future::or(reading, futures_lite::future::or(driving, futures_lite::future::or(writing, removed)))
        .await;
    // Dropping the set drops every sub-session (and its upstream) before the stream.
    drop(subs);
    let _ = crate::packet::Half(&stream).close().await;
}

/// What the sub-sessions of one connection share.
struct Mux<'a> {
    ctx: &'a Rc<ShardCtx>,
    inbound: &'a InboundRt,
    peer: SocketAddr,
    user: &'a UserHandle,
    outbox: &'a Outbox,
    live: &'a RefCell<FxHashMap<u16, Rc<Inbox>>>,
}

impl<'a> Mux<'a> {
    /// One sub-session, from its New frame to its End: routed and relayed as a session.
    fn sub_session(&self, id: u16, network: u8, dest: Destination, inbox: Rc<Inbox>) -> impl Future<Output = ()> + 'a {
        let (ctx, inbound, peer, user, outbox, live) =
            (self.ctx, self.inbound, self.peer, self.user.clone(), self.outbox, self.live);
        async move {
            let level = user.level;
            // Each sub-session counts under the user's limits; one over them gets End at once.
            match crate::limits::admit(ctx, &inbound.tag, Some(&user), peer.ip()) {
                Err(_) => outbox.end_unless_aborted(id, &inbox),
                Ok(admitted) if network == TCP => {
                    let mut sub = SubStream { id, inbox: inbox.clone(), outbox, cur: Vec::new(), at: 0, ended: false };
                    let session = Session { inbound, peer, user: Some(user), level, dest, client_fd: None, admitted };
                    forward(ctx, &mut sub, session, &[], &[]).await;
                    sub.end();
                }
                Ok(admitted) => {
                    let session = PacketSession { inbound, peer, user: Some(user), level, idle_cap: None, admitted };
                    let input = SubPackets { id, inbox: inbox.clone(), outbox, dest };
                    let output = SubPackets { id, inbox: inbox.clone(), outbox, dest: input.dest.clone() };
                    serve_packets(ctx, session, input, output).await;
                    outbox.end_unless_aborted(id, &inbox);
                }
            }
            let mut live = live.borrow_mut();
            if live.get(&id).is_some_and(|i| Rc::ptr_eq(i, &inbox)) {
                live.remove(&id);
            }
        }
    }
}

/// Reads frames until the client closes (`Ok`) or sends one that closes the connection
/// (`Err` with the reason); `open` starts each accepted sub-session.
async fn read_frames<S, F>(mux: &Mux<'_>, stream: &RefCell<S>, early: &[u8], mut open: F) -> Result<(), &'static str>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(u16, u8, Destination, Rc<Inbox>),
{
    let (ctx, tag, peer) = (mux.ctx, &mux.inbound.tag, mux.peer);
    let idle = ctx.policy(mux.user.level).conn_idle.max(Duration::from_secs(1));
    // Clients send their first New with the request (V2Ray's within 100 ms): until one comes,
    // the connection is still in its handshake.
    let handshake = ctx.policy(0).handshake;
    // Room for a usual frame; grown to the largest only when a frame needs it (an XUDP
    // connection, one per UDP flow for sing-box, stays small).
    let mut buf = vec![0u8; READ_ROOM.max(early.len())];
    buf[..early.len()].copy_from_slice(early);
    let (mut start, mut end) = (0, early.len());
    let mut opened = SeenIds::default();
    let mut in_a_row = 0;
    loop {
        in_a_row += 1;
        if in_a_row >= FRAMES_PER_TURN {
            in_a_row = 0;
            futures_lite::future::yield_now().await;
        }
        let mut cur = &buf[start..end];
        let frame = match Frame::decode(&mut cur) {
            Ok(frame) => frame,
            Err(DecodeError::UnexpectedEnd) => {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                if end == buf.len() {
                    buf.resize(MAX_FRAME, 0);
                }
                let mut half = crate::packet::Half(stream);
                let read = half.read(&mut buf[end..]);
                // With no sub-session open, the connection may idle for the level's connIdle
                // (the handshake timeout before the first).
                let n = if mux.live.borrow().is_empty() {
                    let limit = if opened.is_empty() { handshake } else { idle };
                    futures_lite::future::or(async { Some(read.await) }, async {
                        glommio::timer::sleep(limit).await;
                        None
                    })
                    .await
                    .ok_or(if opened.is_empty() {
                        "no sub-session within the handshake timeout"
                    } else {
                        "idle"
                    })?
                } else {
                    read.await
                };
                match n {
                    Ok(0) if end == 0 => return Ok(()),
                    Ok(0) => return Err("stream ended inside a frame"),
                    Ok(n) => end += n,
                    Err(_) => return Ok(()),
                }
                continue;
            }
            Err(_) => return Err("invalid frame"),
        };
        let (id, status, data) = (frame.session, frame.status, frame.data.to_vec());
        start = end - cur.len();
        match status {
            Status::New { network, destination } => {
                if mux.live.borrow().contains_key(&id) {
                    return Err("New for a live session id");
                }
                if network != TCP && network != UDP {
                    return Err("unknown sub-session network");
                }
                opened.insert(id);
                // Every sub-session ends with an End frame: a New waits for outbox room, so
                // that a client that opens and never reads queues nothing without bound.
                if mux.outbox.room().await.is_err() {
                    return Ok(()); // the writer failed: the client is gone
                }
                if mux.live.borrow().len() >= MAX_SUB_SESSIONS {
                    ctx.refusals.add(Refusal::ConnectionLimit);
                    ctx.log.error(
                        LogLevel::Warning,
                        format_args!(
                            "[{tag}] {peer} mux: sub-session refused: {MAX_SUB_SESSIONS} per connection at most"
                        ),
                    );
                    mux.outbox.end(id);
                    continue;
                }
                let inbox = Rc::new(Inbox { udp: network == UDP, ..Inbox::default() });
                inbox.push(None, data);
                mux.live.borrow_mut().insert(id, inbox.clone());
                open(id, network, destination, inbox);
            }
            Status::Keep(to) => {
                let inbox = mux.live.borrow().get(&id).cloned();
                match inbox {
                    Some(inbox) if inbox.udp_full(data.len()) => {} // dropped, as a full socket would
                    Some(inbox) => {
                        if !inbox.wait_room(data.len()).await {
                            ctx.log.error(
                                LogLevel::Info,
                                format_args!("[{tag}] {peer} mux: sub-session {id} took nothing for {STALL:?}: ended"),
                            );
                            inbox.abort();
                            mux.live.borrow_mut().remove(&id);
                            mux.outbox.end(id);
                            continue;
                        }
                        inbox.push(to, data);
                    }
                    // Ended here while the client still sent: as Xray, end it again (once
                    // the outbox has room, so that a flood of these queues nothing).
                    None if opened.contains(id) => {
                        if mux.outbox.room().await.is_err() {
                            return Ok(()); // the writer failed: the client is gone
                        }
                        mux.outbox.end(id);
                    }
                    None => return Err("Keep for a session id never opened"),
                }
            }
            Status::End => match mux.live.borrow_mut().remove(&id) {
                Some(inbox) => inbox.end(),
                None if opened.contains(id) => {}
                None => return Err("End for a session id never opened"),
            },
            Status::KeepAlive => {}
        }
    }
}

/// Writes what the outbox gathers to the client until a write fails or the outbox is finished
/// and empty; `prefix` goes with the first frames (as Xray sends its response header with the
/// first data).
async fn write_frames<W: AsyncWrite + Unpin>(mut w: W, outbox: &Outbox, prefix: &[u8]) -> io::Result<()> {
    let mut pending = Vec::new();
    let mut prefix = Some(prefix);
    let result = async {
        loop {
            if !poll_fn(|cx| outbox.poll_take(cx, &mut pending)).await {
                return Ok(());
            }
            if let Some(p) = prefix.take() {
                pending.splice(0..0, p.iter().copied());
            }
            w.write_all(&pending).await?;
            w.flush().await?;
            pending.clear();
        }
    }
    .await;
    outbox.broken.set(true);
    for waker in outbox.waiting.borrow_mut().drain(..) {
        waker.wake();
    }
    result
}

// === the buffers between the connection and its sub-sessions ===

/// Session ids a connection has seen opened, a bit each (clients count them up from 1, XUDP
/// uses 0: the set stays a word or two).
#[derive(Default)]
struct SeenIds(Vec<u64>);

impl SeenIds {
    fn insert(&mut self, id: u16) {
        let word = usize::from(id / 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (id % 64);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, id: u16) -> bool {
        self.0.get(usize::from(id / 64)).is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
}

/// A chunk of a sub-session's bytes from the client, with the address its frame named (XUDP).
type Chunk = (Option<Destination>, Vec<u8>);

/// A sub-session's bytes from the client, not yet taken (for UDP, a packet each with its
/// address when the frame named one).
#[derive(Default)]
struct Inbox {
    /// A UDP sub-session: a packet that finds no room is dropped, not waited for.
    udp: bool,
    chunks: RefCell<VecDeque<Chunk>>,
    queued: Cell<usize>,
    /// Bytes taken so far: the reader's sign that a full inbox moves.
    taken: Cell<u64>,
    /// The client ended the sub-session: what is queued is read, then end of stream.
    ended: Cell<bool>,
    /// Ended here, its bytes dropped: reads fail.
    aborted: Cell<bool>,
    /// The sub-session waiting for bytes.
    reader: Cell<Option<Waker>>,
    /// The connection's reader waiting for room.
    room: Cell<Option<Waker>>,
}

impl Inbox {
    fn push(&self, to: Option<Destination>, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        self.queued.set(self.queued.get() + data.len());
        self.chunks.borrow_mut().push_back((to, data));
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    /// The next chunk, or `Ready(None)` at the end.
    fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Chunk>>> {
        if self.aborted.get() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "mux sub-session ended")));
        }
        if let Some((to, data)) = self.chunks.borrow_mut().pop_front() {
            self.queued.set(self.queued.get() - data.len());
            self.taken.set(self.taken.get() + data.len() as u64);
            if let Some(w) = self.room.take() {
                w.wake();
            }
            return Poll::Ready(Ok(Some((to, data))));
        }
        if self.ended.get() {
            return Poll::Ready(Ok(None));
        }
        self.reader.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    fn end(&self) {
        self.ended.set(true);
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    fn abort(&self) {
        self.aborted.set(true);
        self.chunks.borrow_mut().clear();
        self.end();
    }

    fn has_room(&self, len: usize) -> bool {
        self.queued.get() == 0 || self.queued.get() + len <= INBOX_BYTES
    }

    /// A UDP packet that finds no room: to be dropped rather than waited for.
    fn udp_full(&self, len: usize) -> bool {
        self.udp && !self.has_room(len)
    }

    /// Waits until `len` more bytes fit; `false` when the sub-session took nothing for `STALL`.
    async fn wait_room(&self, len: usize) -> bool {
        loop {
            if self.has_room(len) || self.aborted.get() {
                return true;
            }
            let before = self.taken.get();
            let woke = futures_lite::future::or(
                async {
                    poll_fn(|cx| {
                        if self.taken.get() != before {
                            return Poll::Ready(true);
                        }
                        self.room.set(Some(cx.waker().clone()));
                        Poll::Pending
                    })
                    .await
                },
                async {
                    glommio::timer::sleep(STALL).await;
                    false
                },
            )
            .await;
            if !woke && self.taken.get() == before {
                return false;
            }
        }
    }
}

/// The frames going to the client, gathered for the writer.
#[derive(Default)]
struct Outbox {
    bytes: RefCell<Vec<u8>>,
    writer: Cell<Option<Waker>>,
    /// Sub-sessions waiting for room.
    waiting: RefCell<Vec<Waker>>,
    /// The writer failed: the client is gone.
    broken: Cell<bool>,
    /// No more frames will come: the writer ends once it has sent what is gathered.
    finished: Cell<bool>,
}

impl Outbox {
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.broken.get() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if self.bytes.borrow().len() < OUTBOX_BYTES {
            return Poll::Ready(Ok(()));
        }
        let mut waiting = self.waiting.borrow_mut();
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }

    async fn room(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_room(cx)).await
    }

    /// Appends what `frame` writes, and wakes the writer.
    fn push(&self, frame: impl FnOnce(&mut Vec<u8>)) {
        frame(&mut self.bytes.borrow_mut());
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    fn end(&self, id: u16) {
        self.push(|out| Frame::encode_end(id, out));
    }

    /// Ends the sub-session `id` unless the reader ended it already (a stalled one): a second
    /// End could end a new sub-session the client opened under the same id.
    fn end_unless_aborted(&self, id: u16, inbox: &Inbox) {
        if !inbox.aborted.get() {
            self.end(id);
        }
    }

    fn finish(&self) {
        self.finished.set(true);
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Moves what is gathered into `into` (empty), waking the sub-sessions that wait for room;
    /// `false` when there is nothing and nothing more will come.
    fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<u8>) -> Poll<bool> {
        let mut bytes = self.bytes.borrow_mut();
        if bytes.is_empty() {
            if self.finished.get() {
                return Poll::Ready(false);
            }
            self.writer.set(Some(cx.waker().clone()));
            return Poll::Pending;
        }
        std::mem::swap(&mut *bytes, into);
        for waker in self.waiting.borrow_mut().drain(..) {
            waker.wake();
        }
        Poll::Ready(true)
    }
}

// === the sub-sessions' streams ===

/// A TCP sub-session as a byte stream: reads take its inbox, writes become Keep frames, and
/// closing sends End.
struct SubStream<'a> {
    id: u16,
    inbox: Rc<Inbox>,
    outbox: &'a Outbox,
    cur: Vec<u8>,
    at: usize,
    /// End was sent.
    ended: bool,
}

impl AsyncRead for SubStream<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.at < this.cur.len() {
                let n = buf.len().min(this.cur.len() - this.at);
                buf[..n].copy_from_slice(&this.cur[this.at..this.at + n]);
                this.at += n;
                return Poll::Ready(Ok(n));
            }
            match this.inbox.poll_pop(cx) {
                Poll::Ready(Ok(Some((_, data)))) => (this.cur, this.at) = (data, 0),
                Poll::Ready(Ok(None)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for SubStream<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        match this.outbox.poll_room(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let n = buf.len().min(FRAME_DATA);
        this.outbox.push(|out| {
            Frame::encode_keep(this.id, n, out).expect("a frame's worth");
            out.extend_from_slice(&buf[..n]);
        });
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().end();
        Poll::Ready(Ok(()))
    }
}

impl SubStream<'_> {
    /// Sends End once, and not at all when the reader ended the sub-session already.
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.outbox.end_unless_aborted(self.id, &self.inbox);
        }
    }
}

/// A UDP sub-session's packets, either side: from the inbox (to the frame's address, or the
/// New frame's), and to the client as Keep frames naming their source (as Xray answers).
struct SubPackets<'a> {
    id: u16,
    inbox: Rc<Inbox>,
    outbox: &'a Outbox,
    dest: Destination,
}

impl PacketSource for SubPackets<'_> {
    async fn recv(&mut self, out: &mut [u8]) -> io::Result<Recv> {
        Ok(match poll_fn(|cx| self.inbox.poll_pop(cx)).await? {
            None => Recv::End,
            Some((_, data)) if data.len() > MAX_DATAGRAM => Recv::Oversize,
            Some((to, data)) => {
                out[..data.len()].copy_from_slice(&data);
                Recv::Packet(to.unwrap_or_else(|| self.dest.clone()), data.len())
            }
        })
    }
}

impl PacketSink for SubPackets<'_> {
    async fn send(&mut self, peer: &Destination, payload: &[u8]) -> io::Result<bool> {
        self.outbox.room().await?;
        let id = self.id;
        self.outbox.push(|out| {
            if Frame::encode_udp_keep(id, peer, payload.len(), out).is_some() {
                out.extend_from_slice(payload);
            }
        });
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_hold_any_id_and_grow_only_as_far_as_used() {
        let mut seen = SeenIds::default();
        assert!(!seen.contains(0) && !seen.contains(u16::MAX));
        for id in [0, 1, 63, 64, 8] {
            seen.insert(id);
        }
        assert_eq!(seen.0.len(), 2);
        assert!([0, 1, 63, 64, 8].iter().all(|&id| seen.contains(id)));
        assert!(!seen.contains(2) && !seen.contains(65) && !seen.contains(4000));
        seen.insert(u16::MAX);
        assert!(seen.contains(u16::MAX) && seen.0.len() == 1024);
    }

    #[test]
    fn an_inbox_waits_for_room_only_past_its_bound_and_drops_udp_instead() {
        let inbox = Inbox::default();
        assert!(inbox.has_room(MAX_FRAME), "an empty inbox takes any frame");
        inbox.push(None, vec![1; INBOX_BYTES - 10]);
        assert!(inbox.has_room(10) && !inbox.has_room(11));
        assert!(!inbox.udp_full(11), "a TCP sub-session waits, it does not drop");
        let udp = Inbox { udp: true, ..Inbox::default() };
        udp.push(None, vec![1; INBOX_BYTES]);
        assert!(udp.udp_full(1));
        let waker = futures_lite::future::block_on(poll_fn(|cx| Poll::Ready(cx.waker().clone())));
        let mut cx = Context::from_waker(&waker);
        let Poll::Ready(Ok(Some((None, data)))) = udp.poll_pop(&mut cx) else { panic!("a chunk") };
        assert_eq!((data.len(), udp.taken.get(), udp.queued.get()), (INBOX_BYTES, INBOX_BYTES as u64, 0));
        assert!(udp.poll_pop(&mut cx).is_pending());
        udp.end();
        assert!(matches!(udp.poll_pop(&mut cx), Poll::Ready(Ok(None))));
        udp.abort();
        assert!(matches!(udp.poll_pop(&mut cx), Poll::Ready(Err(_))));
    }

    #[test]
    fn a_sub_session_the_reader_ended_sends_no_second_end() {
        let outbox = Outbox::default();
        let stalled = Rc::new(Inbox::default());
        stalled.abort(); // the reader's End for id 1 went out with it
        let mut sub =
            SubStream { id: 1, inbox: stalled.clone(), outbox: &outbox, cur: Vec::new(), at: 0, ended: false };
        sub.end();
        outbox.end_unless_aborted(1, &stalled);
        assert!(outbox.bytes.borrow().is_empty(), "a second End for id 1");
        let live = Rc::new(Inbox::default());
        let mut sub = SubStream { id: 2, inbox: live, outbox: &outbox, cur: Vec::new(), at: 0, ended: false };
        sub.end();
        sub.end();
        let mut end = Vec::new();
        Frame::encode_end(2, &mut end);
        assert_eq!(*outbox.bytes.borrow(), end, "one End for a sub-session that ends itself");
    }
}
