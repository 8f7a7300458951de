//! The zero-copy direction: when both sides are plain TCP, bytes go socket → pipe → socket with
//! splice(2) and never enter user space.
//!
//! glommio 0.9 offers no public readiness wait and no splice. Its `TcpStream::poll_read` and
//! `poll_write` try the syscall and, when it would block, arm an io_uring poll and keep the
//! task's waker; that is the only way to be woken. So when a splice would block, the direction
//! moves exactly one byte through the glommio stream instead: a one-byte `poll_read` that either
//! returns the next byte (which goes into the pipe first, keeping the order) or parks the task
//! until the socket is readable; a one-byte `poll_write` of the pipe's next byte that either
//! sends it or parks the task until the socket has room. Under load no direction waits, so the
//! extra byte costs two small syscalls per wake-up, not per chunk.
//!
//! Pipes come from a per-shard pool and are held only while bytes are in them: an idle
//! direction holds none.
//!
//! A direction starts as the buffered relay's copying direction (`BufDir`, which also sends the
//! prefix with the first bytes) and turns to splice(2) only once a read fills its buffer (or it
//! has copied `COPY_LIMIT` bytes): a short connection's few small chunks then cost one recv and
//! one send each, where splicing them costs a FIONBIO per socket and, per chunk, a failed
//! splice, a one-byte read and pipe write, and two splices.
//!
//! A splice into a socket whose peer is gone raises SIGPIPE, as a plain write would; Rust
//! binaries ignore SIGPIPE from the start, so it arrives here as an `EPIPE` error.
//!
//! Invariants for the `unsafe` here: every descriptor passed to a syscall is open for the
//! duration of the call (pipes are owned `OwnedFd`s, sockets are owned by the streams the relay
//! borrows for its whole run), and every buffer pointer is a live slice of the stated length.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

use super::{half_close, BufDir, Direction, Moved};

/// Bytes a direction copies before it turns to splice(2) even if no read filled its buffer.
const COPY_LIMIT: u64 = 256 * 1024;

/// Pipes a shard keeps for reuse. Kept small: an unprivileged user's pipes share a budget
/// (/proc/sys/fs/pipe-user-pages-soft, 64 MiB of capacity by default), past which new pipes get
/// two pages and resizing fails; they still work, only slower.
const POOL_PIPES: usize = 16;

/// The smallest and largest pipe asked for. The kernel caps unprivileged pipes at
/// /proc/sys/fs/pipe-max-size (1 MiB by default).
const MIN_PIPE: usize = 64 * 1024;
const MAX_PIPE: usize = 1024 * 1024;

/// Pipe capacity per byte of `bufferSize`. A pipe holds references to the pages in flight, not
/// copies, and an idle direction holds no pipe, so it can be far larger than the user-space
/// buffer it stands for: measured on loopback (4 streams × 256 MiB, 2 shards), CPU per GB with
/// 64 KiB, 256 KiB, 512 KiB and 1 MiB pipes was about 1.7×, 1.6×, 1.05× and 0.95× the bare
/// splice relay's (which uses 1 MiB), so the default 64 KiB `bufferSize` maps to 1 MiB.
const PIPE_PER_BUFFER: usize = 16;

/// The pipe capacity asked for a policy's `bufferSize`.
pub(super) fn pipe_capacity(buffer_size: usize) -> usize {
    buffer_size.saturating_mul(PIPE_PER_BUFFER).clamp(MIN_PIPE, MAX_PIPE)
}

/// Prepares a plain TCP socket for splicing: splice(2) honours only the socket's own
/// `O_NONBLOCK` (glommio's sockets block and use `MSG_DONTWAIT` per call instead).
fn prepare(fd: RawFd) -> io::Result<()> {
    let mut on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one int from a live local; `fd` is open (see the module invariants).
    if unsafe { libc::ioctl(fd, libc::FIONBIO, &mut on) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pipe, its capacity, and nothing in it when it is in the pool.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new(capacity: usize) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills a live two-int array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut pipe = Pipe { r, w, capacity: 64 * 1024 };
        pipe.resize(capacity);
        Ok(pipe)
    }

    /// Asks for `capacity`; past the user's pipe limits the kernel refuses and the pipe keeps
    /// what it has, which still works.
    fn resize(&mut self, capacity: usize) {
        // SAFETY: F_SETPIPE_SZ takes an int; the descriptor is ours.
        let got = unsafe { libc::fcntl(self.w.as_raw_fd(), libc::F_SETPIPE_SZ, capacity as libc::c_int) };
        if got > 0 {
            self.capacity = got as usize;
        }
    }
}

thread_local! {
    /// This shard's idle pipes (a shard is one thread).
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Pipes taken and not given back (tests).
    static PIPES_OUT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn take_pipe(capacity: usize) -> io::Result<Pipe> {
    #[cfg(test)]
    PIPES_OUT.with(|n| n.set(n.get() + 1));
    match PIPES.with(|p| p.borrow_mut().pop()) {
        Some(mut pipe) => {
            if pipe.capacity < capacity {
                pipe.resize(capacity);
            }
            Ok(pipe)
        }
        None => Pipe::new(capacity),
    }
}

/// Returns an empty pipe to the pool.
fn give_pipe(pipe: Pipe) {
    #[cfg(test)]
    PIPES_OUT.with(|n| n.set(n.get() - 1));
    PIPES.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_PIPES {
            pool.push(pipe);
        }
    });
}

/// Pipes this shard holds in its pool (tests).
#[cfg(test)]
pub(super) fn pooled() -> usize {
    PIPES.with(|p| p.borrow().len())
}

/// Pipes taken from the pool and not given back (tests).
#[cfg(test)]
pub(super) fn pipes_out() -> usize {
    PIPES_OUT.with(|n| n.get())
}

/// One splice(2) call, nonblocking at both ends; `Ok(0)` is end of input.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors are open (module invariants); null offsets mean "current
        // position", as sockets and pipes require.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reads one byte out of a pipe that holds at least one.
fn pipe_pop(pipe: &Pipe) -> io::Result<u8> {
    let mut b = 0u8;
    // SAFETY: one byte into a live local; the descriptor is ours.
    match unsafe { libc::read(pipe.r.as_raw_fd(), (&mut b as *mut u8).cast(), 1) } {
        1 => Ok(b),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Writes one byte into an empty pipe.
fn pipe_push(pipe: &Pipe, b: u8) -> io::Result<()> {
    // SAFETY: one byte from a live local; the descriptor is ours.
    match unsafe { libc::write(pipe.w.as_raw_fd(), (&b as *const u8).cast(), 1) } {
        1 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// One direction moved by splice(2): reads from the socket `from`, writes to the socket `to`;
/// copied until it carries enough to be worth a pipe (see the module docs).
pub(super) struct SpliceDir<'a> {
    from: RawFd,
    to: RawFd,
    capacity: usize,
    /// Moves the first bytes, the prefix with them; `None` once the direction splices.
    copy: Option<BufDir<'a>>,
    /// Held only while `queued > 0` (and briefly while filling).
    pipe: Option<Pipe>,
    /// Bytes in the pipe.
    queued: usize,
    /// The pipe's first byte, taken out to wait for room through `poll_write`; it goes first.
    held: Option<u8>,
    eof: bool,
    closed: bool,
}

impl<'a> SpliceDir<'a> {
    /// `from` and `to` must be the sockets of the streams later passed to `poll_move` as the
    /// reader and the writer.
    pub(super) fn new(from: RawFd, to: RawFd, buffer_size: usize, prefix: &'a [u8]) -> Self {
        SpliceDir {
            from,
            to,
            capacity: pipe_capacity(buffer_size),
            copy: Some(BufDir::until_bulk(buffer_size, prefix, COPY_LIMIT)),
            pipe: None,
            queued: 0,
            held: None,
            eof: false,
            closed: false,
        }
    }
}

impl Direction for SpliceDir<'_> {
    fn done(&self) -> bool {
        match &self.copy {
            Some(copy) => copy.done(),
            None => self.closed,
        }
    }

    /// Moves what it can until the budget is spent or both ends would block, adding the bytes
    /// read to `read`.
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
        if let Some(copy) = self.copy.as_mut() {
            let moved = copy.poll_move(cx, r, w, read, budget)?;
            if !copy.ready_to_hand_over() {
                return Ok(moved);
            }
            progressed = moved.progressed;
            if prepare(self.from).is_err() || prepare(self.to).is_err() {
                copy.keep_copying();
                return Ok(Moved { progressed, more: true });
            }
            // Bulk: splice from now on.
            self.copy = None;
        }
        loop {
            // Drain: the held byte, then the pipe.
            if let Some(b) = self.held {
                match Pin::new(&mut *w).poll_write(cx, &[b]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(_)) => {
                        self.held = None;
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return done(progressed),
                }
            }
            if self.queued > 0 {
                let pipe = self.pipe.as_ref().expect("queued bytes are in a pipe");
                match splice(pipe.r.as_raw_fd(), self.to, self.queued) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.queued -= n;
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // No room: wait for it through glommio with the pipe's next byte.
                        self.held = Some(pipe_pop(pipe)?);
                        self.queued -= 1;
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
            if *read >= limit {
                if budget == 0 {
                    // Held to the user's rate: wait for the relay's rate timer, holding no pipe.
                    self.release();
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
            // Fill the empty pipe.
            if self.pipe.is_none() {
                self.pipe = Some(take_pipe(self.capacity)?);
            }
            let pipe = self.pipe.as_ref().expect("just taken");
            // No more than the budget: a user held to its rate moves in small steps.
            let room = pipe.capacity.min((limit - *read) as usize);
            match splice(self.from, pipe.w.as_raw_fd(), room) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.queued = n;
                    *read += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing to read: hold no pipe while waiting, and wait through glommio.
                    self.release();
                    let mut b = [0u8];
                    match Pin::new(&mut *r).poll_read(cx, &mut b) {
                        Poll::Ready(Ok(0)) => self.eof = true,
                        Poll::Ready(Ok(_)) => {
                            let pipe = self.pipe.insert(take_pipe(self.capacity)?);
                            pipe_push(pipe, b[0])?;
                            self.queued = 1;
                            *read += 1;
                            // Whatever came with it joins it, so it does not leave alone.
                            match splice(self.from, pipe.w.as_raw_fd(), room - 1) {
                                // Nothing asked for (the budget allowed one byte): not the end.
                                Ok(0) if room == 1 => {}
                                Ok(0) => self.eof = true,
                                Ok(n) => {
                                    self.queued += n;
                                    *read += n as u64;
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                                Err(e) => return Err(e),
                            }
                        }
                        Poll::Ready(Err(e)) => return Err(e),
                        Poll::Pending => return done(progressed),
                    }
                }
                Err(e) => return Err(e),
            }
            progressed = true;
        }
    }
}

impl SpliceDir<'_> {
    /// Gives the pipe back to the pool if it is empty; a pipe with bytes in it is closed.
    fn release(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            if self.queued == 0 {
                give_pipe(pipe);
            }
        }
    }
}

impl Drop for SpliceDir<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_follows_buffer_size_within_bounds() {
        assert_eq!(pipe_capacity(0), MIN_PIPE);
        assert_eq!(pipe_capacity(4 * 1024), MIN_PIPE);
        assert_eq!(pipe_capacity(32 * 1024), 512 * 1024);
        assert_eq!(pipe_capacity(shardray_core::spec::DEFAULT_BUFFER_SIZE), MAX_PIPE);
        assert_eq!(pipe_capacity(512 * 1024), MAX_PIPE);
    }

    #[test]
    fn pool_reuses_empty_pipes_only() {
        let p = take_pipe(MIN_PIPE).unwrap();
        give_pipe(p);
        let before = pooled();
        let p = take_pipe(MIN_PIPE).unwrap();
        assert_eq!(pooled(), before - 1);
        pipe_push(&p, 7).unwrap();
        assert_eq!(pipe_pop(&p).unwrap(), 7);
        give_pipe(p);
        assert_eq!(pooled(), before);
    }
}
