//! Moves bytes both ways between a client and an upstream until both sides are done, honouring
//! half-close and the policy's idle timeouts, counting payload bytes as they pass.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::timer::Timer;
use shardray_core::spec::{LevelPolicy, PolicySpec};

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
}

/// How a relay runs: buffers and timeouts from the policy, plus what the protocol adds.
pub(crate) struct RelayOptions<'a> {
    buffer_size: usize,
    timeouts: RelayTimeouts,
    down_prefix: &'a [u8],
    watch: Option<(&'a SessionWatch<'a>, &'a PolicySpec)>,
}

impl<'a> RelayOptions<'a> {
    /// Buffers and timeouts of a policy level.
    pub(crate) fn new(policy: &LevelPolicy) -> Self {
        RelayOptions { buffer_size: policy.buffer_size, timeouts: policy.into(), down_prefix: &[], watch: None }
    }

    /// Bytes written to the client ahead of the first downlink bytes (a response header), so
    /// that they cost no write of their own.
    pub(crate) fn down_prefix(self, down_prefix: &'a [u8]) -> Self {
        RelayOptions { down_prefix, ..self }
    }

    /// Ends the relay when the session's user is removed or kicked, and moves it to the
    /// user's new level (timeouts and counting) when that changes.
    pub(crate) fn watch(self, watch: Option<&'a SessionWatch<'a>>, policies: &'a PolicySpec) -> Self {
        RelayOptions { watch: watch.map(|w| (w, policies)), ..self }
    }
}

/// Called with the byte count of every chunk read: `(uplink, downlink)`.
pub(crate) trait Meter {
    fn up(&mut self, n: u64);
    fn down(&mut self, n: u64);
    /// The session's user moved to another policy level.
    fn set_policy(&mut self, _policy: &LevelPolicy) {}
}

/// A meter that counts nothing (fallbacks).
pub(crate) struct NoMeter;

impl Meter for NoMeter {
    fn up(&mut self, _: u64) {}
    fn down(&mut self, _: u64) {}
}

/// One direction's buffer and state.
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    closed: bool,
}

impl Pipe {
    fn new(size: usize, prefix: &[u8]) -> Pipe {
        let mut buf = vec![0u8; size.max(prefix.len() + 1)].into_boxed_slice();
        buf[..prefix.len()].copy_from_slice(prefix);
        Pipe { buf, start: 0, end: prefix.len(), eof: false, closed: false }
    }

    fn done(&self) -> bool {
        self.closed
    }

    /// Moves as much as it can from `r` to `w`; returns the bytes read and whether it moved
    /// anything at all.
    fn poll_move<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> io::Result<Moved>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut read_total = 0u64;
        let mut progressed = false;
        let done = |read: u64, progressed: bool| Ok(Moved { read, progressed, more: false });
        loop {
            if self.start < self.end {
                match Pin::new(&mut *w).poll_write(cx, &self.buf[self.start..self.end]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        progressed = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return done(read_total, progressed),
                }
            }
            self.start = 0;
            self.end = 0;
            if read_total >= POLL_BUDGET {
                // Enough for one turn: let the shard's other tasks run, then come back.
                return Ok(Moved { read: read_total, progressed, more: true });
            }
            if self.eof {
                if !self.closed {
                    match Pin::new(&mut *w).poll_close(cx) {
                        Poll::Ready(Ok(())) => {}
                        // The peer may already be gone; the direction is finished either way.
                        Poll::Ready(Err(_)) => {}
                        Poll::Pending => return done(read_total, progressed),
                    }
                    self.closed = true;
                    progressed = true;
                }
                return done(read_total, progressed);
            }
            match Pin::new(&mut *r).poll_read(cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => {
                    self.eof = true;
                    progressed = true;
                }
                Poll::Ready(Ok(n)) => {
                    self.end = n;
                    read_total += n as u64;
                    progressed = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return done(read_total, progressed),
            }
        }
    }
}

/// What one `poll_move` did.
struct Moved {
    /// Bytes read.
    read: u64,
    /// Whether anything happened (for the idle timer).
    progressed: bool,
    /// The budget ran out with work left: poll again soon.
    more: bool,
}

/// Bytes one direction may read in one poll before the relay yields, so that a busy
/// connection cannot starve the shard's other connections or its control commands.
const POLL_BUDGET: u64 = 1024 * 1024;

/// Relays between `client` and `upstream` until both directions are finished, an error occurs,
/// a timeout fires or the session's user is closed.
pub(crate) async fn relay<C, U, M>(
    client: &mut C,
    upstream: &mut U,
    options: RelayOptions<'_>,
    meter: &mut M,
) -> io::Result<RelayEnd>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    M: Meter,
{
    let RelayOptions { buffer_size, mut timeouts, down_prefix, watch } = options;
    let mut up = Pipe::new(buffer_size, &[]);
    let mut down = Pipe::new(buffer_size, down_prefix);
    let mut last_activity = Instant::now();
    let mut timer = Timer::new(timeouts.idle);
    let mut armed_for = timeouts.idle;
    let mut yield_turn: Option<Timer> = None;
    futures_lite::future::poll_fn(|cx| {
        // Woken by the yield timer or by I/O: either way, time to work again.
        yield_turn = None;
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
        let mut progressed = false;
        let mut more = false;
        if !up.done() {
            let moved = up.poll_move(cx, client, upstream)?;
            if moved.read > 0 {
                meter.up(moved.read);
            }
            progressed |= moved.progressed;
            more |= moved.more;
        }
        if !down.done() {
            let moved = down.poll_move(cx, upstream, client)?;
            if moved.read > 0 {
                meter.down(moved.read);
            }
            progressed |= moved.progressed;
            more |= moved.more;
        }
        if more {
            // Come back after the reactor's next turn rather than at once: when every busy
            // relay does this, the run queue empties and the shard polls for I/O and commands.
            let mut turn = Timer::new(Duration::from_micros(1));
            if Pin::new(&mut turn).poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            } else {
                yield_turn = Some(turn);
            }
        }

        if up.done() && down.done() {
            return Poll::Ready(Ok(RelayEnd::Done));
        }
        let now = Instant::now();
        if progressed {
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
    .await
}
