//! A Shadowsocks TCP stream (classic AEAD or 2022), for the inbound and the outbound alike:
//! reads open the peer's chunks, writes seal ours, so the relay copies plaintext through it
//! as it copies through TLS or VMess (Shadowsocks cannot splice).
//!
//! - Reads: ciphertext arrives in a receive buffer from the shard's pool, large enough for the
//!   longest 2022 chunk; each chunk is opened in place and its plaintext copied out. The buffer
//!   goes back to the pool whenever it holds nothing. A client first opens the response salt
//!   (classic) or the response header (2022, checked against its request's salt and the clock).
//! - Writes: up to `SEAL_AT_ONCE` bytes sealed per write into a pooled send buffer. What leads
//!   the stream leaves with the first payload: a client's request (salt, address, and for 2022
//!   the identity and fixed headers), a 2022 server's response header, a classic server's salt.
//!   A client with nothing to write sends its request when it first reads (a server-first
//!   protocol); a 2022 server that closes without writing sends its header then.
//! - Close: Shadowsocks has no end chunk; the socket is half-closed. A read that ends inside a
//!   chunk is an error.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use shardray_wire::addr::Destination;
use shardray_wire::shadowsocks::{classic, ss2022, ChunkOpener, ChunkSealer, Error, MasterKey, Method, Opened, Salt};

use crate::relay::{give_buffer, take_buffer};

/// The receive buffer: room for the longest 2022 chunk (a sealed length and 0xFFFF sealed
/// bytes) behind a response header, rounded up. The inbound reads its handshake into one too.
pub(crate) const RECV_BUF: usize = 66 * 1024;

/// Plaintext one write seals at most.
const SEAL_AT_ONCE: usize = 64 * 1024;

fn invalid(e: Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The clock 2022 headers carry and are checked against: Unix seconds.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Fills `out` from the system's generator (salts, padding lengths).
pub(crate) fn fill_random(out: &mut [u8]) {
    use ring::rand::SecureRandom;
    // The system generator does not fail on Linux once booted.
    let _ = ring::rand::SystemRandom::new().fill(out);
}

/// A fresh salt for `method`.
fn fresh_salt(method: Method) -> Salt {
    let mut salt = [0u8; 32];
    fill_random(&mut salt[..method.salt_len()]);
    Salt::new(&salt[..method.salt_len()])
}

/// What has to go out in front of the first payload.
enum Lead {
    /// A 2022 server's response header, which names the request's salt.
    Response2022 { key: MasterKey, request_salt: Salt },
    /// A client's request: the identity keys (2022 multi-user), the key and the destination.
    Request { identities: Vec<MasterKey>, key: MasterKey, destination: Destination },
}

/// What a client must open before the response's chunks.
enum Awaiting {
    /// The classic response salt.
    Classic(MasterKey),
    /// The 2022 response header, which must name our request's salt.
    Ss2022 { key: MasterKey, request_salt: Salt },
}

/// A stream carrying Shadowsocks over `S` (a socket, or TLS over one).
pub(crate) struct SsStream<S> {
    inner: S,
    method: Method,
    opener: Option<ChunkOpener>,
    awaiting: Option<Awaiting>,
    sealer: Option<ChunkSealer>,
    lead: Option<Box<Lead>>,
    /// Received bytes: ciphertext at `recv[start..end]`, plaintext not yet handed out at
    /// `recv[plain_start..plain_end]`. `None` when it holds nothing.
    recv: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    plain_start: usize,
    plain_end: usize,
    read_done: bool,
    /// Sealed bytes not yet written: `send[sent..]`.
    send: Vec<u8>,
    sent: usize,
    closed: bool,
}

impl<S> SsStream<S> {
    fn with(inner: S, method: Method) -> Self {
        SsStream {
            inner,
            method,
            opener: None,
            awaiting: None,
            sealer: None,
            lead: None,
            recv: None,
            start: 0,
            end: 0,
            plain_start: 0,
            plain_end: 0,
            read_done: false,
            send: Vec::new(),
            sent: 0,
            closed: false,
        }
    }

    /// A server's stream for a request decoded from `recv` (a pool buffer of `RECV_BUF` bytes):
    /// `opener` opens the rest of the request stream, whose bytes are `recv[start..end]`; `key`
    /// is the session's key and `request_salt` the request's.
    pub(crate) fn server(
        inner: S,
        method: Method,
        key: &MasterKey,
        request_salt: &Salt,
        opener: ChunkOpener,
        recv: Box<[u8]>,
        (start, end): (usize, usize),
    ) -> Self {
        let mut s = SsStream::with(inner, method);
        s.opener = Some(opener);
        if method.is_2022() {
            s.lead = Some(Box::new(Lead::Response2022 { key: *key, request_salt: *request_salt }));
        } else {
            let salt = fresh_salt(method);
            s.sealer = Some(classic::start_stream(method, key, salt.as_bytes(), &mut s.send));
        }
        s.recv = Some(recv);
        (s.start, s.end) = (start, end);
        s.release_recv();
        s
    }

    /// A client's stream to `destination`: `identities` (2022 multi-user: the server's PSK)
    /// and the user's `key`. The request leaves with the first write (or on the first read).
    pub(crate) fn client(
        inner: S,
        method: Method,
        identities: Vec<MasterKey>,
        key: MasterKey,
        destination: Destination,
    ) -> Self {
        let mut s = SsStream::with(inner, method);
        s.lead = Some(Box::new(Lead::Request { identities, key, destination }));
        s
    }

    /// Seals `plain` into the send buffer, behind what leads the stream if it has not gone.
    fn seal(&mut self, plain: &[u8]) {
        let method = self.method;
        let Some(lead) = self.lead.take() else {
            self.sealer.as_mut().expect("a sealer once the lead is out").seal(plain, &mut self.send);
            return;
        };
        let salt = fresh_salt(method);
        let sealer = match *lead {
            Lead::Response2022 { key, request_salt } => ss2022::ServerResponse {
                method,
                key: &key,
                salt: salt.as_bytes(),
                request_salt: request_salt.as_bytes(),
                timestamp: unix_now(),
            }
            .encode(plain, &mut self.send),
            Lead::Request { identities, key, destination } => {
                if method.is_2022() {
                    let mut padding = [0u8; 2];
                    fill_random(&mut padding);
                    let sealer = ss2022::ClientRequest {
                        method,
                        identities: &identities,
                        key: &key,
                        salt: salt.as_bytes(),
                        timestamp: unix_now(),
                        destination: &destination,
                        padding_len: u16::from_le_bytes(padding) % (ss2022::MAX_PADDING + 1),
                    }
                    .encode(plain, &mut self.send);
                    self.awaiting = Some(Awaiting::Ss2022 { key, request_salt: salt });
                    sealer
                } else {
                    self.awaiting = Some(Awaiting::Classic(key));
                    classic::encode_request(method, &key, salt.as_bytes(), &destination, plain, &mut self.send)
                }
            }
        };
        self.sealer = Some(sealer);
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

    /// The next chunk from what was received, or `None` if it is incomplete.
    fn open_next(&mut self) -> io::Result<Option<(std::ops::Range<usize>, usize)>> {
        let Some(buf) = self.recv.as_mut() else {
            return Ok(None);
        };
        if let Some(awaiting) = &self.awaiting {
            let data = &mut buf[self.start..self.end];
            let opened = match awaiting {
                Awaiting::Classic(key) => classic::open_response(self.method, key, data),
                Awaiting::Ss2022 { key, request_salt } => {
                    ss2022::decode_response(self.method, key, request_salt.as_bytes(), data, unix_now())
                }
            };
            match opened {
                Ok((opener, consumed)) => {
                    self.start += consumed;
                    self.opener = Some(opener);
                    self.awaiting = None;
                }
                Err(Error::UnexpectedEnd) => return Ok(None),
                Err(e) => return Err(invalid(e)),
            }
        }
        let Some(opener) = self.opener.as_mut() else {
            return Ok(None);
        };
        match opener.open(&mut buf[self.start..self.end]).map_err(invalid)? {
            Opened::Chunk { plain, consumed } => Ok(Some((plain, consumed))),
            Opened::NeedMore { .. } => Ok(None),
        }
    }
}

impl<S: AsyncWrite + Unpin> SsStream<S> {
    /// Writes what is sealed and not yet sent; `Ready(Ok)` once nothing is left.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.send.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.send[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.send.clear();
        if self.send.capacity() > 2 * SEAL_AT_ONCE {
            self.send = Vec::new();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for SsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // A client's request leaves now if no write has taken it (a server-first protocol).
        if matches!(this.lead.as_deref(), Some(Lead::Request { .. })) {
            this.seal(&[]);
        }
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
            if let Some((plain, consumed)) = this.open_next()? {
                this.plain_start = this.start + plain.start;
                this.plain_end = this.start + plain.end;
                this.start += consumed;
                // An empty chunk carries nothing: look at the next.
                this.release_recv();
                continue;
            }
            let buf = this.recv.get_or_insert_with(|| take_buffer(RECV_BUF));
            if this.end == buf.len() {
                buf.copy_within(this.start..this.end, 0);
                (this.start, this.end) = (0, this.end - this.start);
            }
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf[this.end..]) {
                Poll::Ready(Ok(0)) => {
                    if this.start < this.end || this.awaiting.is_some() {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
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

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for SsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // One batch waits at most: send it before sealing the next.
        if this.send.len() - this.sent > SEAL_AT_ONCE {
            match this.poll_send(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if this.sent > 0 {
            this.send.drain(..this.sent);
            this.sent = 0;
        }
        let n = buf.len().min(SEAL_AT_ONCE);
        this.seal(&buf[..n]);
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
        if !this.closed {
            // A header still owed goes out with no payload.
            if this.lead.is_some() {
                this.seal(&[]);
            }
            this.closed = true;
        }
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_close(cx),
            other => other,
        }
    }
}

impl<S> Drop for SsStream<S> {
    fn drop(&mut self) {
        if let Some(buf) = self.recv.take() {
            give_buffer(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use glommio::net::{TcpListener, TcpStream};
    use glommio::LocalExecutor;
    use shardray_wire::shadowsocks::ReplayFilter;

    use super::*;
    use crate::relay::buffers_out;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ (i >> 13) as u8)).collect()
    }

    /// A client stream and a server stream over loopback: 3 MiB each way at once, then both
    /// close; every byte arrives in order and no pool buffer is left out.
    fn round_trip(method: Method, multi: bool) {
        const LEN: usize = 3 << 20;
        LocalExecutor::default().run(async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let key = MasterKey::from_bytes(&vec![7u8; method.key_len()]);
            let server_psk = MasterKey::from_bytes(&vec![9u8; method.key_len()]);
            let server = glommio::spawn_local(async move {
                let mut sock = listener.accept().await.unwrap();
                let mut buf = take_buffer(RECV_BUF);
                let mut len = 0;
                let mut replay = ReplayFilter::new(16);
                let (opener, consumed, salt, early) = loop {
                    len += sock.read(&mut buf[len..]).await.unwrap();
                    if method.is_2022() {
                        let identity = multi.then_some(&server_psk);
                        match ss2022::decode_request_with(
                            method,
                            identity,
                            &mut buf[..len],
                            unix_now(),
                            &mut replay,
                            |h| {
                                assert_eq!(h.is_some(), multi);
                                Some(((), key))
                            },
                        ) {
                            Ok((r, o, ())) => break (o, r.consumed, r.salt, r.payload),
                            Err(Error::UnexpectedEnd) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    } else {
                        match classic::decode_request(method, &key, &mut buf[..len]) {
                            Ok((r, o)) => break (o, r.consumed, r.salt, r.payload),
                            Err(Error::UnexpectedEnd) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                };
                let mut got = buf[early].to_vec();
                let s = SsStream::server(sock, method, &key, &salt, opener, buf, (consumed, len));
                let (mut r, mut w) = futures_lite::io::split(s);
                let writer = glommio::spawn_local(async move {
                    for piece in pattern(LEN, 2).chunks(50_000) {
                        w.write_all(piece).await.unwrap();
                    }
                    w.close().await.unwrap();
                });
                r.read_to_end(&mut got).await.unwrap();
                writer.await;
                got
            });
            let sock = TcpStream::connect(addr).await.unwrap();
            let identities = if multi { vec![server_psk] } else { Vec::new() };
            let s = SsStream::client(sock, method, identities, key, Destination::from(addr));
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
            assert!(got == pattern(LEN, 2), "{method}: downlink differs ({} bytes)", got.len());
            assert!(at_server == pattern(LEN, 1), "{method}: uplink differs ({} bytes)", at_server.len());
            drop((r, got));
            assert_eq!(buffers_out(), 0, "{method}: a receive buffer was kept");
        });
    }

    #[test]
    fn every_method_round_trips_both_ways() {
        for method in Method::ALL {
            round_trip(method, false);
            if method.supports_identity_headers() {
                round_trip(method, true);
            }
        }
    }
}
