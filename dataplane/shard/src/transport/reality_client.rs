//! REALITY on an outbound: the handshake of `wire::tls13_client` over a TCP socket, then a
//! stream over its record layer. A server that is not REALITY's (the camouflage site answering
//! for a wrong key or short id) fails the handshake: the connection closes, nothing of the
//! site's reaches the session, and the dial error says why.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use ring::rand::SecureRandom;
use shardray_core::spec::RealityClientSpec;
use shardray_wire::addr::Destination;
use shardray_wire::tls13_client::{
    record_len, ClientHandshake, ClientSettings, Entropy, Opened, RecordReader, RecordWriter, ServerAuth, MAX_PLAINTEXT,
};

use super::tls_tcp::TlsTcp;

/// The client version sealed into the session id: the one Xray servers' default
/// `minClientVer` asks for (Xray-core 26.3.27), so that they do not refuse us for it.
const CLIENT_VERSION: [u8; 3] = [26, 3, 27];

/// ALPN as a browser offers it on a REALITY connection (uTLS's Chrome hello does the same).
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Room for two whole records of ciphertext.
const INBUF: usize = 2 * (5 + MAX_PLAINTEXT + 256);

/// A REALITY outbound's settings as a shard runs them: the server name resolved.
pub(crate) struct RealityClient {
    server_name: String,
    public_key: [u8; 32],
    short_id: [u8; 8],
}

impl RealityClient {
    /// The client for `spec` to `server`: its `serverName`, else the server's address.
    pub(crate) fn new(spec: &RealityClientSpec, server: &Destination) -> RealityClient {
        let server_name = match spec.server_name.as_str() {
            "" => server.addr.to_string(),
            name => name.to_owned(),
        };
        RealityClient { server_name, public_key: spec.public_key, short_id: spec.short_id }
    }

    /// Runs the handshake over `tcp` (the caller bounds its time); a `TlsTcp` that tracks
    /// records when Vision will run inside.
    pub(crate) async fn connect(&self, mut tcp: TlsTcp) -> io::Result<RealityStream> {
        let mut entropy = Entropy { random: [0; 32], key_share: [0; 32], grease: [0; 2] };
        let rng = ring::rand::SystemRandom::new();
        for bytes in [&mut entropy.random[..], &mut entropy.key_share[..], &mut entropy.grease[..]] {
            rng.fill(bytes).map_err(|_| io::Error::other("no randomness for REALITY"))?;
        }
        let unix_time =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(0);
        let server = ServerAuth::Reality {
            public_key: self.public_key,
            short_id: self.short_id,
            version: CLIENT_VERSION,
            unix_time,
        };
        let settings = ClientSettings { server_name: &self.server_name, alpn: &ALPN, server };
        let failed = |e: shardray_wire::tls13_client::TlsError| {
            io::Error::new(io::ErrorKind::InvalidData, format!("REALITY to {:?}: {e}", self.server_name))
        };
        let (mut handshake, hello) = ClientHandshake::start(&settings, &entropy).map_err(failed)?;
        tcp.write_all(&hello).await?;
        let mut input = Vec::with_capacity(8192);
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        let established = loop {
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "REALITY: the server closed during the handshake",
                ));
            }
            input.extend_from_slice(&chunk[..n]);
            if let Some(done) = handshake.advance(&mut input, &mut out).map_err(failed)? {
                break done;
            }
        };
        tcp.write_all(&out).await?;
        let mut inbuf = vec![0u8; INBUF.max(input.len())];
        inbuf[..input.len()].copy_from_slice(&input);
        Ok(RealityStream {
            tcp,
            reader: established.reader,
            writer: established.writer,
            inbuf,
            in_start: 0,
            in_end: input.len(),
            plain: Vec::new(),
            plain_at: 0,
            out: Vec::new(),
            out_at: 0,
            read_closed: false,
            close_sent: false,
        })
    }
}

/// An established REALITY connection: application data in TLS 1.3 records over the socket.
pub(crate) struct RealityStream {
    tcp: TlsTcp,
    reader: RecordReader,
    writer: RecordWriter,
    /// Ciphertext read and not yet opened: `inbuf[in_start..in_end]`.
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    /// Plaintext opened and not yet read: `plain[plain_at..]`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Ciphertext sealed and not yet written: `out[out_at..]`.
    out: Vec<u8>,
    out_at: usize,
    read_closed: bool,
    close_sent: bool,
}

fn invalid(e: shardray_wire::tls13_client::TlsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("REALITY: {e}"))
}

impl RealityStream {
    /// Writes out what is sealed; `Ready(Ok)` once all of it is on the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out.clear();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl super::vision::OuterTls for RealityStream {
    fn tcp(&mut self) -> &mut TlsTcp {
        &mut self.tcp
    }
    fn tcp_ref(&self) -> &TlsTcp {
        &self.tcp
    }
    fn is_tls13(&self) -> bool {
        true
    }
    /// The plaintext opened and not read yet. Ciphertext still here would be a record cut by
    /// Vision's switch: `TlsTcp` (bounded) hands out no byte past a record, so there is none
    /// once the direct block's record is opened.
    fn drain_plaintext(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        out.extend_from_slice(&self.plain[self.plain_at..]);
        self.plain_at = self.plain.len();
        if self.in_start != self.in_end {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "Vision: raw bytes inside a TLS record"));
        }
        Ok(())
    }
}

impl AsyncRead for RealityStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                let n = buf.len().min(this.plain.len() - this.plain_at);
                buf[..n].copy_from_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                return Poll::Ready(Ok(n));
            }
            if this.read_closed {
                return Poll::Ready(Ok(0));
            }
            let pending = &mut this.inbuf[this.in_start..this.in_end];
            if let Some(len) = record_len(pending).map_err(invalid)? {
                let record = &mut pending[..len];
                this.in_start += len;
                match this.reader.open(record).map_err(invalid)? {
                    Opened::Data(range) if range.len() <= buf.len() => {
                        buf[..range.len()].copy_from_slice(&record[range.clone()]);
                        return Poll::Ready(Ok(range.len()));
                    }
                    Opened::Data(range) => {
                        this.plain.clear();
                        this.plain.extend_from_slice(&record[range]);
                        this.plain_at = 0;
                    }
                    Opened::Nothing => {}
                    Opened::KeyUpdate { requested } => {
                        if requested {
                            this.writer.key_update(false, &mut this.out);
                            // Sent now if the socket takes it, else before our next record.
                            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                                return Poll::Ready(Err(e));
                            }
                        }
                    }
                    Opened::Closed => this.read_closed = true,
                }
                continue;
            }
            // Not a whole record yet: make room behind what is here, then read.
            if this.in_start > 0 {
                this.inbuf.copy_within(this.in_start..this.in_end, 0);
                this.in_end -= this.in_start;
                this.in_start = 0;
            }
            let n = ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut this.inbuf[this.in_end..]))?;
            if n == 0 {
                return Poll::Ready(match this.in_end {
                    // Closed without close_notify between records: taken as the end, as
                    // browsers and Xray do.
                    0 => Ok(0),
                    _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "REALITY: a record cut short")),
                });
            }
            this.in_end += n;
        }
    }
}

impl AsyncWrite for RealityStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Up to four records at a time: the socket takes them in one write.
        let n = buf.len().min(4 * MAX_PLAINTEXT);
        this.writer.seal(&buf[..n], &mut this.out);
        // The bytes are ours now; what the socket does not take yet goes before the next write.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(this.poll_drain(cx))?;
            this.writer.close_notify(&mut this.out);
            this.close_sent = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.tcp).poll_close(cx)
    }
}
