//! Moves bytes both ways between a client and an upstream until both sides are done, honouring
//! half-close and the policy's idle timeouts, counting payload bytes as they pass.
//!
//! Two ways to move them: splice(2) through a pooled pipe when both sides are plain TCP
//! (`splice`, which copies a direction's first bytes and splices once it carries bulk), else a
//! copy through a pooled buffer (TLS and anything else that transforms the bytes). Either way
//! an idle direction holds no buffer and no pipe.

mod splice;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::timer::Timer;
use shardray_core::spec::{LevelPolicy, PolicySpec};

use self::splice::SpliceDir;
use crate::limits::Allowance;
use crate::transport::vision::VisionSwitch;
use crate::users::{SessionWatch, UserState};

/// The timeouts a relay runs under, from a policy level.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayTimeouts {
    /// No traffic either way for this long ends the relay.
    pub(crate) idle: Duration,
    /// Once the upstream has finished, the client side may stay idle this long.
    pub(crate) uplink_only: Duration,
    /// Once the client has finished, the upstream side may stay idle this long.
    pub(crate) downlink_only: Duration,
}

impl From<&LevelPolicy> for RelayTimeouts {
    fn from(p: &LevelPolicy) -> Self {
        RelayTimeouts { idle: p.conn_idle, uplink_only: p.uplink_only, downlink_only: p.downlink_only }
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayEnd {
    /// Both directions reached end of stream.
    Done,
    /// A timeout fired first.
    TimedOut,
    /// The user was removed or kicked.
    Closed,
    /// The user's quota is used up.
    OverQuota,
    /// The client stream became its bare socket (Vision went direct both ways) with nothing
    /// held in either direction: the caller goes on with a relay that splices.
    Handover,
}

/// How a relay runs: buffers and timeouts from the policy, plus what the protocol adds.
pub(crate) struct RelayOptions<'a> {
    buffer_size: usize,
    timeouts: RelayTimeouts,
    down_prefix: &'a [u8],
    watch: Option<(&'a SessionWatch<'a>, &'a PolicySpec)>,
    splice: Option<(RawFd, RawFd)>,
    handover: Option<&'a VisionSwitch>,
}

impl<'a> RelayOptions<'a> {
    /// Buffers and timeouts of a policy level.
    pub(crate) fn new(policy: &LevelPolicy) -> Self {
        RelayOptions {
            buffer_size: policy.buffer_size,
            timeouts: policy.into(),
            down_prefix: &[],
            watch: None,
            splice: None,
            handover: None,
        }
    }

    /// Ends the relay with `RelayEnd::Handover` once `switch` says the client stream is its
    /// bare socket and neither direction holds bytes.
    pub(crate) fn handover(self, switch: Option<&'a VisionSwitch>) -> Self {
        RelayOptions { handover: switch, ..self }
    }

    /// Bytes written to the client ahead of the first downlink bytes (a response header). They
    /// leave in the same write as the first bytes (or at end of stream), as Xray and sing-box
    /// send a VLESS response header with the first payload.
    pub(crate) fn down_prefix(self, down_prefix: &'a [u8]) -> Self {
        RelayOptions { down_prefix, ..self }
    }

    /// Ends the relay when the session's user is removed or kicked, and moves it to the
    /// user's new level (timeouts and counting) when that changes.
    pub(crate) fn watch(self, watch: Option<&'a SessionWatch<'a>>, policies: &'a PolicySpec) -> Self {
        RelayOptions { watch: watch.map(|w| (w, policies)), ..self }
    }

    /// Moves bytes by splice(2), never through user space, when `client` is `Some`: the socket
    /// of a plain TCP client stream (no TLS or other transform in between), with `upstream`
    /// the socket of a plain TCP upstream. Both must be the sockets of the very streams given
    /// to `relay`, and nothing may be buffered in those streams above the socket. A direction
    /// copies its first bytes and splices only once it carries bulk (see `splice`).
    pub(crate) fn splice(self, client: Option<RawFd>, upstream: RawFd) -> Self {
        RelayOptions { splice: client.map(|c| (c, upstream)), ..self }
    }
}

/// Called with the byte count of every chunk read: `(uplink, downlink)`; and asked before
/// each read how much the session's rate allows.
pub(crate) trait Meter {
    fn up(&mut self, n: u64);
    fn down(&mut self, n: u64);
    /// The session's user moved to another policy level.
    fn set_policy(&mut self, _policy: &LevelPolicy) {}
    /// The most the uplink may read now, or when it may read again.
    fn up_allowance(&mut self) -> Allowance {
        Ok(POLL_BUDGET)
    }
    /// The most the downlink may read now, or when it may read again.
    fn down_allowance(&mut self) -> Allowance {
        Ok(POLL_BUDGET)
    }
    /// The user's quota is used up: the session ends.
    fn exhausted(&self) -> bool {
        false
    }
}

/// A meter that counts nothing (fallbacks).
pub(crate) struct NoMeter;

impl Meter for NoMeter {
    fn up(&mut self, _: u64) {}
    fn down(&mut self, _: u64) {}
}

/// Buffers a shard keeps for reuse, in bytes (at least two buffers whatever their size).
const POOL_BYTES: usize = 4 * 1024 * 1024;

thread_local! {
    /// This shard's idle relay buffers (a shard is one thread).
    static BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Buffers taken and not given back (tests).
    static BUFFERS_OUT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Pool buffers this thread has taken and not given back (tests).
#[cfg(test)]
pub(crate) fn buffers_out() -> usize {
    BUFFERS_OUT.with(|n| n.get())
}

/// A buffer of `size` bytes from the pool, or a new one.
pub(crate) fn take_buffer(size: usize) -> Box<[u8]> {
    #[cfg(test)]
    BUFFERS_OUT.with(|n| n.set(n.get() + 1));
    BUFFERS.with(|b| {
        let mut pool = b.borrow_mut();
        match pool.iter().rposition(|buf| buf.len() == size) {
            Some(i) => pool.swap_remove(i),
            None => vec![0u8; size].into_boxed_slice(),
        }
    })
}

/// Returns a buffer to the pool (its contents are stale).
pub(crate) fn give_buffer(buf: Box<[u8]>) {
    #[cfg(test)]
    BUFFERS_OUT.with(|n| n.set(n.get() - 1));
    BUFFERS.with(|b| {
        let mut pool = b.borrow_mut();
        if pool.len() < (POOL_BYTES / buf.len().max(1)).max(2) {
            pool.push(buf);
        }
    });
}

/// Writes what is left of `prefix` to `w`; `Ready(Ok(true))` if it wrote anything.
fn poll_prefix<W>(cx: &mut Context<'_>, w: &mut W, prefix: &mut &[u8]) -> Poll<io::Result<bool>>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut wrote = false;
    while !prefix.is_empty() {
        match Pin::new(&mut *w).poll_write(cx, prefix) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                *prefix = &prefix[n..];
                wrote = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Ready(Ok(wrote))
}

/// Half-closes `w` once the direction's source has ended, so that the peer reads end of stream;
/// `true` when that happened just now. An error means the peer is gone already: the direction
/// is finished either way.
fn half_close<W>(cx: &mut Context<'_>, w: &mut W, closed: &mut bool) -> bool
where
    W: AsyncWrite + Unpin + ?Sized,
{
    if *closed || Pin::new(w).poll_close(cx).is_pending() {
        return false;
    }
    *closed = true;
    true
}

/// One direction copied through a user-space buffer (any stream, TLS included). The buffer
/// comes from the shard's pool for a read and goes back when the direction waits with nothing
/// in it, so an idle direction holds none.
struct BufDir<'a> {
    size: usize,
    buf: Option<Box<[u8]>>,
    /// Written ahead of the first bytes read, in the same write (as Xray sends a VLESS response
    /// header with the first payload), or alone if it is too large to share the buffer.
    prefix: &'a [u8],
    start: usize,
    end: usize,
    eof: bool,
    /// A read failed after earlier reads filled part of the buffer: raised once that is written.
    read_error: Option<io::Error>,
    closed: bool,
    /// For the first bytes of a direction that may splice: once a read fills the buffer, or
    /// this many bytes were read, `poll_move` stops after writing them out and `bulk` says so.
    hand_over_after: Option<u64>,
    copied: u64,
    bulk: bool,
    /// Bytes were written since the last flush: a writer that seals or encrypts (TLS, a VMess
    /// body) may still hold some, so they are flushed before the direction waits.
    unflushed: bool,
    /// Reads no more: what is held is written out, then the direction waits for a handover.
    paused: bool,
}

impl<'a> BufDir<'a> {
    fn new(size: usize, prefix: &'a [u8]) -> Self {
        BufDir {
            size: size.max(1),
            buf: None,
            prefix,
            start: 0,
            end: 0,
            eof: false,
            read_error: None,
            closed: false,
            hand_over_after: None,
            copied: 0,
            bulk: false,
            unflushed: false,
            paused: false,
        }
    }

    /// Before the direction waits for its reader: pushes out what the writer still holds.
    /// A flush that cannot finish now wakes the task when it can go on.
    fn flush<W>(&mut self, cx: &mut Context<'_>, w: &mut W) -> io::Result<()>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.unflushed {
            match Pin::new(w).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// A direction that copies its first bytes and hands over to another way of moving them
    /// once it carries bulk (see `hand_over_after`).
    fn until_bulk(size: usize, prefix: &'a [u8], limit: u64) -> Self {
        let mut dir = BufDir::new(size, prefix);
        dir.hand_over_after = Some(limit);
        dir
    }

    /// Whether the direction carries bulk and holds nothing: the rest may move another way.
    fn ready_to_hand_over(&self) -> bool {
        self.bulk && self.start == self.end && self.prefix.is_empty() && !self.eof && self.read_error.is_none()
    }

    /// Copies for good (the other way turned out to be unavailable).
    fn keep_copying(&mut self) {
        self.hand_over_after = None;
        self.bulk = false;
    }

    fn release(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_buffer(buf);
        }
    }
}

impl Direction for BufDir<'_> {
    fn done(&self) -> bool {
        self.closed
    }

    fn idle(&self) -> bool {
        self.start == self.end && self.prefix.is_empty() && !self.eof && self.read_error.is_none() && !self.closed
    }

    fn pause(&mut self) -> bool {
        if self.eof || self.closed || self.read_error.is_some() {
            return false;
        }
        self.paused = true;
        true
    }

    fn unpause(&mut self) {
        self.paused = false;
    }

    /// Moves as much as it can from `r` to `w`, reading at most `budget` bytes more, adding
    /// the bytes read to `read`.
    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        read: &mut u64,
        budget: u64,
    ) -> io::Result<Moved>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        let limit = *read + budget;
        let mut progressed = false;
        let done = |progressed: bool| Ok(Moved { progressed, more: false });
        // Set once a read returned Pending, which registered the task to be woken.
        let mut reader_waits = false;
        if self.prefix.len() > self.size / 2 {
            match poll_prefix(cx, w, &mut self.prefix) {
                Poll::Ready(Ok(wrote)) => {
                    progressed |= wrote;
                    self.unflushed |= wrote;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return done(progressed),
            }
        }
        loop {
            if self.start < self.end {
                let buf = self.buf.as_ref().expect("buffered bytes are in a buffer");
                match Pin::new(&mut *w).poll_write(cx, &buf[self.start..self.end]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        progressed = true;
                        self.unflushed = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return done(progressed),
                }
            }
            self.start = 0;
            self.end = 0;
            if let Some(e) = self.read_error.take() {
                return Err(e);
            }
            if reader_waits {
                // The last read found nothing and will wake the task: no point asking again.
                self.release();
                self.flush(cx, w)?;
                return done(progressed);
            }
            if *read >= limit {
                if budget == 0 {
                    // Held to the user's rate: wait for the relay's rate timer, holding no buffer.
                    self.release();
                    self.flush(cx, w)?;
                    return done(progressed);
                }
                // Enough for one turn: let the shard's other tasks run, then come back.
                return Ok(Moved { progressed, more: true });
            }
            if self.eof {
                self.release();
                progressed |= half_close(cx, w, &mut self.closed);
                return done(progressed);
            }
            if self.bulk || self.paused {
                self.release();
                return done(progressed);
            }
            let size = self.size;
            let buf = self.buf.get_or_insert_with(|| take_buffer(size));
            // A small prefix sits ahead of the bytes read; it is dropped from the buffer again
            // if nothing comes.
            let held = self.prefix.len();
            buf[..held].copy_from_slice(self.prefix);
            self.end = held;
            // Fill the buffer from as many reads as are ready, so that the write is one large
            // chunk (a TLS stream hands out one record per read).
            while self.end < buf.len() && !self.bulk && *read < limit {
                let room = (buf.len() - self.end).min((limit - *read) as usize);
                match Pin::new(&mut *r).poll_read(cx, &mut buf[self.end..self.end + room]) {
                    Poll::Ready(Ok(0)) => {
                        self.eof = true;
                        progressed = true;
                        break;
                    }
                    Poll::Ready(Ok(n)) => {
                        self.end += n;
                        *read += n as u64;
                        self.copied += n as u64;
                        progressed = true;
                        if let Some(limit) = self.hand_over_after {
                            self.bulk = self.end == buf.len() || self.copied >= limit;
                        }
                    }
                    Poll::Ready(Err(e)) if self.end == held => return Err(e),
                    Poll::Ready(Err(e)) => {
                        self.read_error = Some(e);
                        break;
                    }
                    Poll::Pending => {
                        reader_waits = true;
                        break;
                    }
                }
            }
            if self.end == held && !self.eof {
                // Nothing to read and nothing held: wait without a buffer.
                self.end = 0;
                self.release();
                self.flush(cx, w)?;
                return done(progressed);
            }
            self.prefix = &[];
        }
    }
}

impl Drop for BufDir<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// What one `poll_move` did.
struct Moved {
    /// Whether anything happened (for the idle timer).
    progressed: bool,
    /// The budget ran out with work left: poll again soon.
    more: bool,
}

/// One direction of a relay, whichever way it moves bytes.
trait Direction {
    fn done(&self) -> bool;
    /// Holds no bytes and has not ended (for a handover).
    fn idle(&self) -> bool {
        false
    }
    /// Stops reading, for a handover once what is held is written; `false` (and no pause)
    /// when the direction has ended or cannot pause.
    fn pause(&mut self) -> bool {
        false
    }
    /// Reads again (a pause that led nowhere).
    fn unpause(&mut self) {}
    /// Moves what it can, reading at most `budget` bytes more (0: only writes out what it
    /// holds, then waits for the caller to come back), adding the bytes read to `read`.
    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        read: &mut u64,
        budget: u64,
    ) -> io::Result<Moved>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized;
}

/// Bytes one direction may read in one poll before the relay yields, so that a busy
/// connection cannot starve the shard's other connections or its control commands.
pub(crate) const POLL_BUDGET: u64 = 1024 * 1024;

/// Relays between `client` and `upstream` until both directions are finished, an error occurs,
/// a timeout fires or the session's user is closed. With `RelayOptions::splice` the bytes move
/// by splice(2); otherwise through pooled buffers.
///
/// Not an `async fn`, for the reason `drive` gives: the options are taken apart before the
/// future is made, so that it holds each input once.
pub(crate) fn relay<'a, C, U, M>(
    client: &'a mut C,
    upstream: &'a mut U,
    options: RelayOptions<'a>,
    meter: &'a mut M,
) -> impl Future<Output = io::Result<RelayEnd>> + 'a
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    M: Meter,
{
    let RelayOptions { buffer_size, timeouts, down_prefix, watch, splice, handover } = options;
    async move {
        match splice {
            Some((client_fd, upstream_fd)) => {
                let up = SpliceDir::new(client_fd, upstream_fd, buffer_size, &[]);
                let down = SpliceDir::new(upstream_fd, client_fd, buffer_size, down_prefix);
                drive(client, upstream, up, down, timeouts, watch, None, meter).await
            }
            None => {
                let up = BufDir::new(buffer_size, &[]);
                let down = BufDir::new(buffer_size, down_prefix);
                drive(client, upstream, up, down, timeouts, watch, handover, meter).await
            }
        }
    }
}

/// Runs both directions under the timeouts and the session watch until they finish (or a
/// Vision stream is ready for `handover`).
///
/// One `poll_fn` that owns its inputs, not an `async fn`: an idle session holds this state
/// for as long as it lives, and an `async fn` would hold its arguments twice (as passed, and
/// as the locals its body moves them into).
#[allow(clippy::too_many_arguments)] // each is one of the relay's inputs, passed once
fn drive<'a, C, U, D, M>(
    client: &'a mut C,
    upstream: &'a mut U,
    mut up: D,
    mut down: D,
    mut timeouts: RelayTimeouts,
    watch: Option<(&'a SessionWatch<'a>, &'a PolicySpec)>,
    mut handover: Option<&'a VisionSwitch>,
    meter: &'a mut M,
) -> impl Future<Output = io::Result<RelayEnd>> + 'a
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    D: Direction + 'a,
    M: Meter,
{
    let mut last_activity = Instant::now();
    let mut timer = Timer::new(timeouts.idle);
    let mut armed_for = timeouts.idle;
    // Held only to stay armed until the next turn (a dropped timer wakes no one).
    let mut yield_turn: Option<Timer> = None;
    // Armed while a direction waits for its user's rate to allow more.
    let mut rate_wait: Option<Timer> = None;
    let mut paused = false;
    futures_lite::future::poll_fn(move |cx| {
        // The client stream is its bare socket now: stop reading, write out what is held,
        // then hand over (a bulk transfer is never idle both ways by itself).
        if !paused && handover.is_some_and(VisionSwitch::transparent) {
            if up.pause() & down.pause() {
                paused = true;
            } else {
                // A direction has ended: no handover; nothing was paused for good.
                handover = None;
                up.unpause();
                down.unpause();
            }
        }
        // Woken by the yield timer, the rate timer or by I/O: either way, time to work again.
        yield_turn.take();
        rate_wait.take();
        if let Some((w, policies)) = watch {
            match w.check(cx.waker()) {
                UserState::Same => {}
                UserState::Closed => return Poll::Ready(Ok(RelayEnd::Closed)),
                UserState::Level(level) => {
                    let policy = policies.level(level);
                    timeouts = (&policy).into();
                    meter.set_policy(&policy);
                    // Re-arm below from the last activity under the new idle timeout.
                    armed_for = Duration::ZERO;
                }
            }
        }
        if meter.exhausted() {
            return Poll::Ready(Ok(RelayEnd::OverQuota));
        }
        let mut progressed = false;
        let mut more = false;
        // The earliest time a direction held to its rate may read again.
        let mut rate_due: Option<Instant> = None;
        let mut budget = |allowance: Allowance| match allowance {
            Ok(n) => n,
            Err(due) => {
                rate_due = Some(rate_due.map_or(due, |d| d.min(due)));
                0
            }
        };
        if !up.done() {
            let mut read = 0;
            let moved = up.poll_move(cx, client, upstream, &mut read, budget(meter.up_allowance()));
            // Bytes read are counted even when the write that follows fails.
            if read > 0 {
                meter.up(read);
            }
            let moved = moved?;
            progressed |= moved.progressed;
            more |= moved.more;
        }
        if !down.done() {
            let mut read = 0;
            let moved = down.poll_move(cx, upstream, client, &mut read, budget(meter.down_allowance()));
            if read > 0 {
                meter.down(read);
            }
            let moved = moved?;
            progressed |= moved.progressed;
            more |= moved.more;
        }
        if meter.exhausted() {
            return Poll::Ready(Ok(RelayEnd::OverQuota));
        }
        if let Some(due) = rate_due {
            let mut wait = Timer::new(due.saturating_duration_since(Instant::now()));
            if Pin::new(&mut wait).poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            } else {
                rate_wait.replace(wait);
            }
        }
        if more {
            // Come back after the reactor's next turn rather than at once: when every busy
            // relay does this, the run queue empties and the shard polls for I/O and commands.
            let mut turn = Timer::new(Duration::from_micros(1));
            if Pin::new(&mut turn).poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            } else {
                yield_turn.replace(turn);
            }
        }

        if up.done() && down.done() {
            return Poll::Ready(Ok(RelayEnd::Done));
        }
        if handover.is_some_and(VisionSwitch::transparent) {
            if up.idle() && down.idle() {
                return Poll::Ready(Ok(RelayEnd::Handover));
            }
            if !paused {
                // Pause at once (at the top of the next turn) rather than at the next I/O.
                cx.waker().wake_by_ref();
            }
        }
        let now = Instant::now();
        // A direction waiting for its user's rate is busy, not idle: at a low rate the wait
        // between chunks may be longer than `uplinkOnly` or `downlinkOnly`.
        if progressed || rate_due.is_some() {
            last_activity = now;
        }
        let allowed = if up.done() {
            timeouts.downlink_only
        } else if down.done() {
            timeouts.uplink_only
        } else {
            timeouts.idle
        };
        if allowed != armed_for {
            // A direction finished: the other one now runs under its shorter timeout.
            armed_for = allowed;
            timer.reset((last_activity + allowed).saturating_duration_since(now));
        }
        // The timer is only re-armed when it fires, not on every chunk: it may wake early,
        // and then the real deadline is computed from the last activity.
        while Pin::new(&mut timer).poll(cx).is_ready() {
            let deadline = last_activity + allowed;
            if now >= deadline {
                return Poll::Ready(Ok(RelayEnd::TimedOut));
            }
            timer.reset(deadline - now);
        }
        Poll::Pending
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use glommio::net::{TcpListener, TcpStream};
    use glommio::LocalExecutor;

    use super::*;

    #[derive(Default)]
    struct Counted {
        up: u64,
        down: u64,
    }

    impl Meter for Counted {
        fn up(&mut self, n: u64) {
            self.up += n;
        }
        fn down(&mut self, n: u64) {
            self.down += n;
        }
    }

    /// A connected pair of loopback sockets: (the end we drive, the end the relay gets).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let theirs = listener.accept().await.unwrap();
        (ours, theirs)
    }

    /// client ⇄ relay ⇄ server, spliced or not: the prefix comes first, bytes pass both ways
    /// and are counted, the idle relay holds no buffer or pipe, and half-closes end it. (Small
    /// chunks are copied even when splicing is allowed; `bulk` covers the pipes.)
    fn exchange(spliced: bool) {
        LocalExecutor::default().run(async move {
            let (mut client, mut client_side) = pair().await;
            let (mut server, mut upstream) = pair().await;
            let task = glommio::spawn_local(async move {
                let policy = LevelPolicy::default();
                let mut options = RelayOptions::new(&policy).down_prefix(b"HI");
                if spliced {
                    options = options.splice(Some(client_side.as_raw_fd()), upstream.as_raw_fd());
                }
                let mut meter = Counted::default();
                let end = relay(&mut client_side, &mut upstream, options, &mut meter).await.unwrap();
                (end, meter.up, meter.down)
            });
            client.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            server.write_all(b"pong!").await.unwrap();
            let mut got = [0u8; 7];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"HIpong!");

            // Idle: both directions wait, and gave back what they held.
            glommio::timer::sleep(Duration::from_millis(50)).await;
            assert_eq!(buffers_out(), 0, "an idle direction kept a buffer");
            assert_eq!(splice::pipes_out(), 0, "an idle direction kept a pipe");
            if spliced {
                assert_eq!(splice::pooled(), 0, "a few small chunks took a pipe instead of a copy");
            }

            client.close().await.unwrap();
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            server.close().await.unwrap();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            assert_eq!(task.await, (RelayEnd::Done, 4, 5));
        });
    }

    /// 8 MiB each way at once while both ends read slowly, so that writes block and the
    /// relay waits for room: every byte arrives in order and is counted.
    fn bulk(spliced: bool) {
        const LEN: usize = 8 << 20;
        let pattern = |seed: u8| (0..LEN).map(move |i| (i as u8).wrapping_mul(31).wrapping_add(seed));
        LocalExecutor::default().run(async move {
            let (client, mut client_side) = pair().await;
            let (server, mut upstream) = pair().await;
            let task = glommio::spawn_local(async move {
                let policy = LevelPolicy::default();
                let mut options = RelayOptions::new(&policy);
                if spliced {
                    options = options.splice(Some(client_side.as_raw_fd()), upstream.as_raw_fd());
                }
                let mut meter = Counted::default();
                let end = relay(&mut client_side, &mut upstream, options, &mut meter).await.unwrap();
                (end, meter.up, meter.down)
            });
            let ends = [(client, 1u8, 2u8), (server, 2, 1)].map(|(s, send, expect)| {
                glommio::spawn_local(async move {
                    let data: Vec<u8> = pattern(send).collect();
                    let (mut s, mut w) = futures_lite::io::split(s);
                    let writer = glommio::spawn_local(async move {
                        for chunk in data.chunks(100_000) {
                            w.write_all(chunk).await.unwrap();
                        }
                        w.close().await.unwrap();
                    });
                    let mut got = Vec::with_capacity(LEN);
                    let mut buf = vec![0u8; 7000];
                    loop {
                        match s.read(&mut buf).await.unwrap() {
                            0 => break,
                            n => got.extend_from_slice(&buf[..n]),
                        }
                        glommio::yield_if_needed().await;
                    }
                    writer.await;
                    assert_eq!(got.len(), LEN);
                    assert!(got.iter().copied().eq(pattern(expect)), "bytes differ");
                })
            });
            for end in ends {
                end.await;
            }
            assert_eq!(task.await, (RelayEnd::Done, LEN as u64, LEN as u64));
            if spliced {
                assert_eq!(splice::pipes_out(), 0, "a finished relay kept a pipe");
                assert!(splice::pooled() >= 1, "bulk went through no pipe");
            }
        });
    }

    /// A meter that holds the downlink to `rate` through a real gate, as a limited session's.
    struct Limited {
        gate: shardray_core::limits::RateGate,
        rate: u64,
        down: u64,
    }

    impl Meter for Limited {
        fn up(&mut self, _: u64) {}
        fn down(&mut self, n: u64) {
            self.down += n;
            self.gate.charge(self.rate, n, shardray_core::limits::now_ns());
        }
        fn down_allowance(&mut self) -> Allowance {
            let now = shardray_core::limits::now_ns();
            self.gate.allowance(self.rate, now).map_err(shardray_core::limits::instant_at)
        }
    }

    /// 3 MiB down through a relay held to 4 MiB/s takes 0.75 s (less the gate's 50 ms burst),
    /// copied or spliced, and the relay sleeps rather than spins meanwhile.
    fn held_to_rate(spliced: bool) {
        const LEN: usize = 3 << 20;
        LocalExecutor::default().run(async move {
            let (mut client, mut client_side) = pair().await;
            let (mut server, mut upstream) = pair().await;
            let task = glommio::spawn_local(async move {
                let policy = LevelPolicy::default();
                let mut options = RelayOptions::new(&policy);
                if spliced {
                    options = options.splice(Some(client_side.as_raw_fd()), upstream.as_raw_fd());
                }
                let mut meter = Limited { gate: Default::default(), rate: 4 << 20, down: 0 };
                let end = relay(&mut client_side, &mut upstream, options, &mut meter).await.unwrap();
                (end, meter.down)
            });
            let writer = glommio::spawn_local(async move {
                server.write_all(&vec![7u8; LEN]).await.unwrap();
                server.close().await.unwrap();
                server
            });
            let started = Instant::now();
            let cpu = cpu_time();
            let mut got = 0;
            let mut buf = vec![0u8; 64 * 1024];
            while got < LEN {
                match client.read(&mut buf).await.unwrap() {
                    0 => break,
                    n => got += n,
                }
            }
            let (took, busy) = (started.elapsed(), cpu_time() - cpu);
            assert_eq!(got, LEN);
            assert!(took >= Duration::from_millis(650) && took < Duration::from_millis(1100), "took {took:?}");
            assert!(busy < took / 2, "the relay spun while held back: {busy:?} of CPU in {took:?}");
            client.close().await.unwrap();
            drop(writer.await);
            assert_eq!(task.await, (RelayEnd::Done, LEN as u64));
            assert_eq!(buffers_out(), 0);
        });
    }

    /// CPU time this thread has used.
    fn cpu_time() -> Duration {
        // SAFETY: a timespec is plain data; clock_gettime fills it.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: `ts` is a live local of the right type.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    #[test]
    fn buffered_relay_is_held_to_its_rate_without_spinning() {
        held_to_rate(false);
    }

    #[test]
    fn spliced_relay_is_held_to_its_rate_without_spinning() {
        held_to_rate(true);
    }

    #[test]
    fn buffered_relay_moves_bulk_both_ways_in_order() {
        bulk(false);
    }

    #[test]
    fn spliced_relay_moves_bulk_both_ways_in_order() {
        bulk(true);
    }

    #[test]
    fn buffered_relay_holds_nothing_while_idle() {
        exchange(false);
    }

    #[test]
    fn spliced_relay_holds_nothing_while_idle() {
        exchange(true);
    }
}
