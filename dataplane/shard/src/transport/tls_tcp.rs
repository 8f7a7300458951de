//! The TCP stream under a TLS session, shaped for rustls: records leave in one syscall and
//! arrive in large reads.
//!
//! - Writes: rustls hands its pending records to `write_vectored`. glommio 0.9's `TcpStream`
//!   has no vectored write, so each record (16 KiB at most) would be its own send(2) and its own
//!   trip through the TCP stack. Here they leave in one sendmsg(2) when the socket has room;
//!   when it has none, the first buffer goes through glommio's `poll_write`, which parks the
//!   task until the socket is writable.
//! - Reads: rustls asks for 4 KiB at a time. A small read is served from a read-ahead buffer
//!   filled by one large recv(2); the buffer comes from the shard's pool and goes back as soon
//!   as it is drained, so an idle session holds none.
//! - Vision (`tracking`): the record boundaries of what rustls was handed are followed, and
//!   once `bound` is set no byte past the current record's end is handed to rustls, so that
//!   when the peer drops TLS the raw bytes after its last record are still here (`raw`).

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::relay::{give_buffer, take_buffer};

/// At most this many buffers per sendmsg(2) (rustls offers up to 64).
const MAX_IOVECS: usize = 64;

/// Bytes asked for by one read-ahead recv(2); reads at least this large skip the buffer.
const READ_AHEAD: usize = 64 * 1024;

/// A boxed glommio TCP stream with a vectored write and a lazy read-ahead buffer.
pub(crate) struct TlsTcp {
    stream: Box<TcpStream>,
    /// Received bytes not yet handed out are `ahead[start..end]`; `None` when there are none.
    ahead: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    /// Where the bytes handed out so far stand in the TLS record stream; `None` untracked.
    records: Option<Records>,
    /// Hand out no byte past the end of the current record.
    bounded: bool,
    /// Raw TCP now (Vision went direct): no more reading ahead, so that once what was read
    /// ahead is drained the socket is all there is (the relay may splice it).
    unbuffered: bool,
}

/// The position in a stream of TLS records: `have` bytes of the current header, then
/// `body_left` bytes of its body still to come.
#[derive(Debug, Clone, Copy, Default)]
struct Records {
    header: [u8; 5],
    have: u8,
    body_left: usize,
}

impl Records {
    fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let h = usize::from(self.have);
            let n = if h < 5 {
                let n = (5 - h).min(data.len());
                self.header[h..h + n].copy_from_slice(&data[..n]);
                self.have += n as u8;
                if self.have == 5 {
                    self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                }
                n
            } else {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                n
            };
            if self.have == 5 && self.body_left == 0 {
                self.have = 0;
            }
            data = &data[n..];
        }
    }

    /// The most bytes of `next` (what comes next) that stay within the current record.
    fn room(&self, next: &[u8]) -> usize {
        match self.have {
            0 if next.len() >= 5 => 5 + usize::from(u16::from_be_bytes([next[3], next[4]])),
            h if h < 5 => usize::from(5 - h),
            _ => self.body_left,
        }
    }
}

impl TlsTcp {
    pub(crate) fn new(stream: Box<TcpStream>) -> Self {
        TlsTcp { stream, ahead: None, start: 0, end: 0, records: None, bounded: false, unbuffered: false }
    }

    /// A stream that follows TLS record boundaries (an inbound whose users may take Vision).
    pub(crate) fn tracking(stream: Box<TcpStream>) -> Self {
        TlsTcp {
            stream,
            ahead: None,
            start: 0,
            end: 0,
            records: Some(Records::default()),
            bounded: false,
            unbuffered: false,
        }
    }

    /// Hands out `first` (bytes already taken off the socket: the ClientHello's records,
    /// at most `READ_AHEAD`) before anything read from the socket.
    pub(crate) fn unread(&mut self, first: &[u8]) {
        debug_assert!(self.ahead.is_none() && first.len() <= READ_AHEAD);
        if first.is_empty() {
            return;
        }
        let mut ahead = take_buffer(READ_AHEAD);
        ahead[..first.len()].copy_from_slice(first);
        self.ahead = Some(ahead);
        (self.start, self.end) = (0, first.len());
    }

    /// From now on rustls gets at most one record per read (Vision may go direct).
    pub(crate) fn bound(&mut self) {
        self.bounded = self.records.is_some();
    }

    /// Whether what rustls was handed ends at a record boundary (it holds no partial record).
    pub(crate) fn at_record_boundary(&self) -> bool {
        self.records.is_some_and(|r| r.have == 0)
    }

    /// Stops following records: the peer dropped TLS, later reads are raw TCP (bytes read
    /// ahead come first).
    pub(crate) fn raw(&mut self) {
        self.records = None;
        self.bounded = false;
        self.unbuffered = true;
    }

    /// Whether bytes read ahead are waiting (the socket is not all there is).
    pub(crate) fn has_ahead(&self) -> bool {
        self.ahead.is_some()
    }

    /// The socket.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }
}

impl AsyncRead for TlsTcp {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let ahead = match this.ahead.as_mut() {
            Some(ahead) => ahead,
            None if (buf.len() >= READ_AHEAD || this.unbuffered) && !this.bounded => {
                let read = Pin::new(&mut *this.stream).poll_read(cx, buf);
                if let (Poll::Ready(Ok(n)), Some(records)) = (&read, this.records.as_mut()) {
                    records.advance(&buf[..*n]);
                }
                return read;
            }
            None => {
                let ahead = this.ahead.insert(take_buffer(READ_AHEAD));
                match Pin::new(&mut *this.stream).poll_read(cx, ahead) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        this.start = 0;
                        this.end = n;
                        ahead
                    }
                    other => {
                        // End of stream, an error or nothing yet: hold no buffer meanwhile.
                        give_buffer(this.ahead.take().expect("just inserted"));
                        return other;
                    }
                }
            }
        };
        let mut n = buf.len().min(this.end - this.start);
        if let Some(records) = this.records.as_mut() {
            if this.bounded {
                n = n.min(records.room(&ahead[this.start..this.end]));
            }
            records.advance(&ahead[this.start..this.start + n]);
        }
        buf[..n].copy_from_slice(&ahead[this.start..this.start + n]);
        this.start += n;
        if this.start == this.end {
            give_buffer(this.ahead.take().expect("read from it above"));
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for TlsTcp {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let bufs = &bufs[..bufs.len().min(MAX_IOVECS)];
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        // SAFETY: a zeroed msghdr is valid (no address, no control data); the iovecs point at
        // the caller's live slices (IoSlice is ABI-compatible with iovec) for the call, and the
        // descriptor is owned by the stream borrowed here. glommio's sockets block, hence
        // MSG_DONTWAIT; MSG_NOSIGNAL turns a gone peer into EPIPE.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            libc::sendmsg(self.stream.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if sent >= 0 {
            return Poll::Ready(Ok(sent as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            // No room: glommio's write parks the task until there is (or writes if room opened).
            io::ErrorKind::WouldBlock => Pin::new(&mut *self.stream).poll_write(cx, first),
            io::ErrorKind::Interrupted => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            _ => Poll::Ready(Err(err)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_close(cx)
    }
}

impl Drop for TlsTcp {
    fn drop(&mut self) {
        if let Some(ahead) = self.ahead.take() {
            give_buffer(ahead);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use glommio::net::TcpListener;
    use glommio::LocalExecutor;

    use super::*;
    use crate::relay::buffers_out;

    /// Shrinks a socket's kernel buffers, so that a writer soon meets a full socket.
    fn small_buffers(fd: std::os::fd::RawFd) {
        let size: libc::c_int = 64 * 1024;
        for option in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
            // SAFETY: setsockopt reads one int from a live local; the descriptor is open.
            let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, option, (&size as *const libc::c_int).cast(), 4) };
            assert_eq!(r, 0);
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add((i >> 12) as u8)).collect()
    }

    /// Records of assorted lengths handed out in assorted splits: `room` never reaches past a
    /// record's end, and the boundary is seen exactly at each record's end.
    #[test]
    fn records_follow_boundaries_under_any_split() {
        let lens = [0usize, 1, 5, 300, 16384, 7, 2];
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            stream.extend_from_slice(&[0x17, 0x03, 0x03]);
            stream.extend_from_slice(&(len as u16).to_be_bytes());
            stream.resize(stream.len() + len, i as u8);
            ends.push(stream.len());
        }
        for split in [1usize, 2, 3, 4, 5, 6, 100, 70000] {
            let mut r = Records::default();
            let mut at = 0;
            while at < stream.len() {
                let next = &stream[at..(at + split).min(stream.len())];
                let n = next.len().min(r.room(next));
                assert!(n > 0);
                let end = ends.iter().copied().find(|&e| e > at).unwrap();
                assert!(at + n <= end, "split {split}: handed past a record's end");
                r.advance(&next[..n]);
                at += n;
                assert_eq!(r.have == 0, ends.contains(&at), "split {split}: boundary at {at}");
            }
        }
    }

    /// 4 MiB written as 16 KiB slices, several per sendmsg, through small socket buffers and a
    /// reader slow enough that the socket fills; read back 4 KiB at a time through the read-ahead (rustls's read
    /// size). Every byte arrives in order, and neither side holds a pool buffer once drained.
    #[test]
    fn vectored_writes_and_read_ahead_keep_every_byte_in_order() {
        const LEN: usize = 4 << 20;
        LocalExecutor::default().run(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let writer = glommio::spawn_local(async move {
                let data = pattern(LEN);
                let stream = TcpStream::connect(addr).await.unwrap();
                small_buffers(stream.as_raw_fd());
                let mut out = TlsTcp::new(Box::new(stream));
                let mut at = 0;
                while at < LEN {
                    let slices: Vec<IoSlice<'_>> = data[at..].chunks(16 * 1024).take(5).map(IoSlice::new).collect();
                    let n = out.write_vectored(&slices).await.unwrap();
                    assert!(n > 0);
                    at += n;
                }
                out.close().await.unwrap();
            });
            let stream = listener.accept().await.unwrap();
            small_buffers(stream.as_raw_fd());
            let mut input = TlsTcp::new(Box::new(stream));
            let mut got = Vec::with_capacity(LEN);
            let mut buf = [0u8; 4096];
            loop {
                match input.read(&mut buf).await.unwrap() {
                    0 => break,
                    n => got.extend_from_slice(&buf[..n]),
                }
                if got.len() % (256 * 1024) < 4096 {
                    // Fall behind now and then, so that the writer meets a full socket.
                    glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
            writer.await;
            assert_eq!(got.len(), LEN);
            assert!(got == pattern(LEN), "bytes differ");
            assert!(input.ahead.is_none());
            assert_eq!(buffers_out(), 0, "a drained stream kept its read-ahead buffer");
        });
    }
}
