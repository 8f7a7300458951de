//! The VMess body as a byte stream, for the inbound and the outbound alike: reads open the
//! peer's chunks, writes seal ours, so the relay copies plaintext through it as it copies
//! through TLS (VMess cannot splice).
//!
//! - Reads: ciphertext arrives in a receive buffer from the shard's pool, large enough for the
//!   longest chunk any sender may send; each chunk is opened in place and its plaintext copied
//!   out. The buffer goes back to the pool whenever it holds nothing, so an idle session keeps
//!   none.
//! - Writes: each write seals up to `SEAL_AT_ONCE` bytes into a pooled send buffer, behind the
//!   sealed header that leads the stream (the request header for a client, the response header
//!   for a server), so header and first chunk leave in one write. A write that cannot flush
//!   everything still reports what it sealed; the rest leaves on the next write, read, flush or
//!   close (the relay flushes before it waits).
//! - Close: the end chunk (an empty chunk; nothing under `zero`), then the socket's half-close.
//! - A client first opens the response header, then the body.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use shardray_wire::vmess::body::MAX_WIRE_CHUNK;
use shardray_wire::vmess::{Chunk, ChunkOpener, ChunkSealer, RequestHeader, ResponseHeader, VmessError};

use crate::relay::{give_buffer, take_buffer};

/// The receive buffer: room for the longest chunk on the wire (a 16-bit size, a sealed length
/// field and two tags), rounded up.
const RECV_BUF: usize = MAX_WIRE_CHUNK.div_ceil(1024) * 1024;

/// Plaintext one write seals at most; the send buffer holds that and the chunks' overhead.
const SEAL_AT_ONCE: usize = 64 * 1024;

/// The send buffer's capacity: `SEAL_AT_ONCE`, the chunk overhead (at most 2 + 16 + 64 bytes per
/// 8 KiB chunk) and a header.
const SEND_CAP: usize = SEAL_AT_ONCE + SEAL_AT_ONCE / 64 + 1024;

/// Send buffers a shard keeps for reuse.
const SEND_POOL: usize = 64;

thread_local! {
    /// This shard's idle send buffers (empty, with `SEND_CAP` capacity).
    static SEND_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_send() -> Vec<u8> {
    SEND_BUFFERS.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(SEND_CAP))
}

fn give_send(mut buf: Vec<u8>) {
    if buf.capacity() != SEND_CAP {
        return;
    }
    buf.clear();
    SEND_BUFFERS.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < SEND_POOL {
            pool.push(buf);
        }
    });
}

fn invalid(e: VmessError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A stream carrying a VMess body over `S` (a socket, or TLS over one).
pub(crate) struct VmessStream<S> {
    inner: S,
    opener: ChunkOpener,
    sealer: ChunkSealer,
    /// A client's request, until the response header that answers it has been opened.
    awaiting_response: Option<Box<RequestHeader>>,
    /// Received bytes: ciphertext at `recv[start..end]`, plaintext not yet handed out at
    /// `recv[plain_start..plain_end]`. `None` when it holds nothing.
    recv: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    plain_start: usize,
    plain_end: usize,
    /// The peer's end chunk (or end of stream) came.
    read_done: bool,
    /// Sealed bytes not yet written: `send[sent..]`. Empty and capacity-less when idle.
    send: Vec<u8>,
    sent: usize,
    end_sealed: bool,
}

impl<S> VmessStream<S> {
    /// A server's stream: `request` was opened from the client's first bytes; `received` is what
    /// came after the header (the start of the request body). The response header leads the
    /// first write.
    pub(crate) fn server(
        inner: S,
        request: &RequestHeader,
        received: &[u8],
        seed: [u8; 32],
    ) -> Result<Self, VmessError> {
        use shardray_wire::vmess::Direction;
        let opener = ChunkOpener::new(request, Direction::Request)?;
        let sealer = ChunkSealer::new(request, Direction::Response, seed)?;
        let mut send = take_send();
        ResponseHeader::for_request(request).seal(request, &mut send);
        let mut s = VmessStream::with(inner, opener, sealer, send);
        s.preload(received);
        Ok(s)
    }

    /// A client's stream: `sealed_request` (the whole sealed request header) leads the first
    /// write, or leaves on the first read if nothing is written first.
    pub(crate) fn client(
        inner: S,
        request: &RequestHeader,
        sealed_request: &[u8],
        seed: [u8; 32],
    ) -> Result<Self, VmessError> {
        use shardray_wire::vmess::Direction;
        let opener = ChunkOpener::new(request, Direction::Response)?;
        let sealer = ChunkSealer::new(request, Direction::Request, seed)?;
        let mut send = take_send();
        send.extend_from_slice(sealed_request);
        let mut s = VmessStream::with(inner, opener, sealer, send);
        s.awaiting_response = Some(Box::new(request.clone()));
        Ok(s)
    }

    fn with(inner: S, opener: ChunkOpener, sealer: ChunkSealer, send: Vec<u8>) -> Self {
        VmessStream {
            inner,
            opener,
            sealer,
            awaiting_response: None,
            recv: None,
            start: 0,
            end: 0,
            plain_start: 0,
            plain_end: 0,
            read_done: false,
            send,
            sent: 0,
            end_sealed: false,
        }
    }

    /// The most one chunk carries: the largest UDP packet a write may hold.
    pub(crate) fn max_payload(&self) -> usize {
        self.sealer.max_payload()
    }

    fn preload(&mut self, received: &[u8]) {
        if received.is_empty() {
            return;
        }
        let mut buf = take_buffer(RECV_BUF);
        buf[..received.len()].copy_from_slice(received);
        self.recv = Some(buf);
        self.start = 0;
        self.end = received.len();
    }

    /// Gives the receive buffer back if it holds nothing.
    fn release_recv(&mut self) {
        if self.start == self.end && self.plain_start == self.plain_end {
            if let Some(buf) = self.recv.take() {
                give_buffer(buf);
            }
            (self.start, self.end, self.plain_start, self.plain_end) = (0, 0, 0, 0);
        }
    }

    /// The next piece of plaintext from what was received, or `None` if a chunk is incomplete.
    fn open_next(&mut self) -> io::Result<Option<Chunk>> {
        let Some(buf) = self.recv.as_mut() else {
            return Ok(None);
        };
        if let Some(request) = &self.awaiting_response {
            match ResponseHeader::open(&mut buf[self.start..self.end], request) {
                Ok((_, consumed)) => {
                    self.start += consumed;
                    self.awaiting_response = None;
                }
                Err(VmessError::UnexpectedEnd) => return Ok(None),
                Err(e) => return Err(invalid(e)),
            }
        }
        match self.opener.open(&mut buf[self.start..self.end]) {
            Ok(chunk) => Ok(Some(chunk)),
            Err(VmessError::UnexpectedEnd) => Ok(None),
            Err(e) => Err(invalid(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin> VmessStream<S> {
    /// Writes what is sealed and not yet sent; `Ready(Ok)` once nothing is left (the send
    /// buffer then goes back to the pool).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.send.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.send[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.send.capacity() > 0 {
            give_send(std::mem::take(&mut self.send));
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for VmessStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // A client's header leaves now if no write has taken it (a server-first protocol).
        if this.sent < this.send.len() {
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
        }
        loop {
            if this.plain_start < this.plain_end {
                let buf = this.recv.as_ref().expect("plaintext is in the buffer");
                let n = out.len().min(this.plain_end - this.plain_start);
                out[..n].copy_from_slice(&buf[this.plain_start..this.plain_start + n]);
                this.plain_start += n;
                this.release_recv();
                return Poll::Ready(Ok(n));
            }
            if this.read_done {
                return Poll::Ready(Ok(0));
            }
            match this.open_next()? {
                Some(Chunk::Data { plain, consumed }) => {
                    this.plain_start = this.start + plain.start;
                    this.plain_end = this.start + plain.end;
                    this.start += consumed;
                    continue;
                }
                Some(Chunk::End { consumed }) => {
                    this.start += consumed;
                    this.read_done = true;
                    this.release_recv();
                    return Poll::Ready(Ok(0));
                }
                None => {}
            }
            // A chunk is incomplete: read more behind it, moving it to the front if the
            // buffer's end is reached.
            let buf = this.recv.get_or_insert_with(|| take_buffer(RECV_BUF));
            if this.end == buf.len() {
                buf.copy_within(this.start..this.end, 0);
                (this.start, this.end) = (0, this.end - this.start);
            }
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf[this.end..]) {
                Poll::Ready(Ok(0)) => {
                    if this.start < this.end || this.awaiting_response.is_some() {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    // Closed without an end chunk: an end all the same.
                    this.read_done = true;
                    this.release_recv();
                    return Poll::Ready(Ok(0));
                }
                Poll::Ready(Ok(n)) => this.end += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    this.release_recv();
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for VmessStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.end_sealed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Room for one more batch behind what waits (a header is small).
        if this.send.len() - this.sent > SEND_CAP - SEAL_AT_ONCE - SEAL_AT_ONCE / 64 {
            match this.poll_send(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if this.send.capacity() == 0 {
            this.send = take_send();
        } else if this.sent > 0 {
            this.send.drain(..this.sent);
            this.sent = 0;
        }
        let n = buf.len().min(SEAL_AT_ONCE);
        this.sealer.seal(&buf[..n], &mut this.send).map_err(invalid)?;
        match this.poll_send(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Sealed either way: what is left leaves later.
            _ => Poll::Ready(Ok(n)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.end_sealed {
            if this.send.capacity() == 0 {
                this.send = take_send();
            }
            this.sealer.seal_end(&mut this.send);
            this.end_sealed = true;
        }
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_close(cx),
            other => other,
        }
    }
}

impl<S> Drop for VmessStream<S> {
    fn drop(&mut self) {
        if let Some(buf) = self.recv.take() {
            give_buffer(buf);
        }
        if self.send.capacity() > 0 {
            give_send(std::mem::take(&mut self.send));
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use glommio::net::{TcpListener, TcpStream};
    use glommio::LocalExecutor;
    use shardray_wire::addr::Destination;
    use shardray_wire::vmess::{peek_auth_id, Command, Options, RequestOpener, SealRandom, Security, UserKey};

    use super::*;
    use crate::relay::buffers_out;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ (i >> 13) as u8)).collect()
    }

    /// A client stream and a server stream over loopback for one security and options: 3 MiB
    /// each way at once, then both close; every byte arrives in order, the end chunks end the
    /// reads, and no pool buffer is left out.
    fn round_trip(security: Security, options: Options) {
        const LEN: usize = 3 << 20;
        LocalExecutor::default().run(async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let key = UserKey::new(&uuid::Uuid::from_u128(7));
            let request = RequestHeader {
                body_iv: [9; 16],
                body_key: [8; 16],
                response_auth: 0x42,
                options,
                security,
                command: Command::Tcp,
                destination: Some(Destination::from(addr)),
            };
            let mut sealed = Vec::new();
            let random = SealRandom { auth_id: [1; 4], nonce: [2; 8], padding_len: 5, padding: [3; 15] };
            request.seal(&key, 1_780_000_000, &random, &mut sealed);
            let server_key = key.clone();
            let server = glommio::spawn_local(async move {
                let mut sock = listener.accept().await.unwrap();
                let mut head = vec![0u8; 4096];
                let mut len = 0;
                let mut opener = RequestOpener::new(&server_key);
                let (req, used) = loop {
                    len += sock.read(&mut head[len..]).await.unwrap();
                    assert!(peek_auth_id(&head[..len]).is_err() || len >= 16);
                    let mut copy = head[..len].to_vec();
                    match opener.open(&mut copy) {
                        Ok(r) => break r,
                        Err(VmessError::UnexpectedEnd) => continue,
                        Err(e) => panic!("{e}"),
                    }
                };
                let s = VmessStream::server(sock, &req, &head[used..len], [5; 32]).unwrap();
                let (mut r, mut w) = futures_lite::io::split(s);
                let writer = glommio::spawn_local(async move {
                    for piece in pattern(LEN, 2).chunks(50_000) {
                        w.write_all(piece).await.unwrap();
                    }
                    w.close().await.unwrap();
                });
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                writer.await;
                got
            });
            let sock = TcpStream::connect(addr).await.unwrap();
            let s = VmessStream::client(sock, &request, &sealed, [6; 32]).unwrap();
            let (mut r, mut w) = futures_lite::io::split(s);
            let writer = glommio::spawn_local(async move {
                for piece in pattern(LEN, 1).chunks(70_000) {
                    w.write_all(piece).await.unwrap();
                }
                w.close().await.unwrap();
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            writer.await;
            let at_server = server.await;
            let case = format!("{security:?} {:#04x}", options.0);
            assert!(got == pattern(LEN, 2), "{case}: downlink differs ({} bytes)", got.len());
            assert!(at_server == pattern(LEN, 1), "{case}: uplink differs ({} bytes)", at_server.len());
            drop((r, got));
            assert_eq!(buffers_out(), 0, "{case}: a receive buffer was kept");
        });
    }

    #[test]
    fn every_security_round_trips_both_ways() {
        let (stream, mask, pad, auth) =
            (Options::CHUNK_STREAM, Options::CHUNK_MASKING, Options::GLOBAL_PADDING, Options::AUTHENTICATED_LENGTH);
        for security in [Security::Aes128Gcm, Security::ChaCha20Poly1305] {
            round_trip(security, stream | mask | pad);
            round_trip(security, stream | mask | pad | auth);
            round_trip(security, stream);
        }
        round_trip(Security::None, stream | mask);
        round_trip(Security::None, stream | mask | auth);
        // `zero`: no chunk stream, the raw bytes.
        round_trip(Security::None, Options(0));
    }
}
