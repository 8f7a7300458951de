//! A VLESS Vision session over TLS, either end: the TLS stream seen through the Vision codec
//! (`wire::vision`). Reads are unpadded and writes padded while the inner handshake
//! goes by; once a direction goes direct it bypasses rustls and moves raw TCP, and once both
//! have and nothing is left buffered above the socket, `VisionSwitch` tells the relay it
//! may splice the socket itself.

use std::cell::Cell;
use std::io::{self, Read};
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use shardray_wire::vision::{After, Mode, Padder, TlsFilter, Unpadder, MAX_CONTENT};

use super::tls_tcp::TlsTcp;

/// Plaintext read from TLS at a time while padded.
const READ_CHUNK: usize = 16 * 1024;
/// The most of one write encoded at a time while padded.
const WRITE_CHUNK: usize = 4 * MAX_CONTENT;

/// Shared between a Vision stream and the relay moving its bytes: set once the stream is the
/// bare socket both ways (see `VisionStream`), so the relay may hand over to splice(2).
pub(crate) struct VisionSwitch {
    transparent: Cell<bool>,
    /// The client's TCP socket.
    pub(crate) fd: RawFd,
}

impl VisionSwitch {
    pub(crate) fn new(fd: RawFd) -> Self {
        VisionSwitch { transparent: Cell::new(false), fd }
    }

    /// Whether the stream is now the bare socket both ways.
    pub(crate) fn transparent(&self) -> bool {
        self.transparent.get()
    }
}

/// A TLS stream over `TlsTcp` whose plaintext and socket Vision can reach: a server's or a
/// client's (`futures_rustls`), or a borrow of one.
/// (REALITY's stream implements it too, to serve Vision.)
pub(crate) trait OuterTls: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&mut self) -> &mut TlsTcp;
    fn tcp_ref(&self) -> &TlsTcp;
    /// Whether the session is TLS 1.3 (Vision's direct path needs it).
    fn is_tls13(&self) -> bool;
    /// Moves the plaintext rustls has decrypted and not handed out yet onto `out`.
    fn drain_plaintext(&mut self, out: &mut Vec<u8>) -> io::Result<()>;
}

fn drain(mut reader: rustls::Reader<'_>, out: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

impl OuterTls for futures_rustls::server::TlsStream<TlsTcp> {
    fn tcp(&mut self) -> &mut TlsTcp {
        self.get_mut().0
    }
    fn is_tls13(&self) -> bool {
        self.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
    }
    fn tcp_ref(&self) -> &TlsTcp {
        self.get_ref().0
    }
    fn drain_plaintext(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        drain(self.get_mut().1.reader(), out)
    }
}

impl OuterTls for futures_rustls::client::TlsStream<TlsTcp> {
    fn tcp(&mut self) -> &mut TlsTcp {
        self.get_mut().0
    }
    fn is_tls13(&self) -> bool {
        self.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
    }
    fn tcp_ref(&self) -> &TlsTcp {
        self.get_ref().0
    }
    fn drain_plaintext(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        drain(self.get_mut().1.reader(), out)
    }
}

impl<T: OuterTls> OuterTls for &mut T {
    fn tcp(&mut self) -> &mut TlsTcp {
        (**self).tcp()
    }
    fn is_tls13(&self) -> bool {
        (**self).is_tls13()
    }
    fn tcp_ref(&self) -> &TlsTcp {
        (**self).tcp_ref()
    }
    fn drain_plaintext(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        (**self).drain_plaintext(out)
    }
}

/// Where a client stands in the server's VLESS response header (version, addons), which
/// comes ahead of the server's first block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Version,
    AddonsLen,
    Addons(usize),
    Body,
}

/// A Vision session over TLS (see the module doc): the server's side of an inbound session,
/// or the client's side of an outbound one.
pub(crate) struct VisionStream<T> {
    tls: T,
    switch: Rc<VisionSwitch>,
    /// A client's: the response header still to be taken off the front.
    head: Head,
    filter: TlsFilter,
    unpadder: Unpadder,
    padder: Padder,
    /// Plaintext read while padded, not decoded yet: `inbuf[pos..]`.
    inbuf: Vec<u8>,
    pos: usize,
    /// Decoded bytes owed to the reader after the direct block: `leftover[lpos..]`.
    leftover: Vec<u8>,
    lpos: usize,
    read_direct: bool,
    /// Encoded bytes not yet taken by TLS: `out[opos..]`; what happens once they are.
    out: Vec<u8>,
    opos: usize,
    after: After,
    write_plain: bool,
    write_direct: bool,
    /// The VLESS response (server) or request (client) header, sent ahead of the first block
    /// (outside the padding).
    prefix: Vec<u8>,
    rng: u64,
    /// Sessions whose direction went direct: counted for the `direct` debug line and tests.
    pub(crate) went_direct: (bool, bool),
}

impl<T: OuterTls> VisionStream<T> {
    /// The server's side: `early` is what came after the request header; `prefix` the response
    /// header.
    pub(crate) fn server(tls: T, switch: Rc<VisionSwitch>, uuid: [u8; 16], prefix: Vec<u8>, early: &[u8]) -> Self {
        VisionStream::new(tls, switch, Head::Body, uuid, prefix, early)
    }

    /// The client's side: `request` (the VLESS request header) leaves ahead of the first block,
    /// and the server's response header is taken off the front of what it sends.
    pub(crate) fn client(tls: T, uuid: [u8; 16], request: Vec<u8>) -> Self {
        let switch = Rc::new(VisionSwitch::new(tls.tcp_ref().fd()));
        VisionStream::new(tls, switch, Head::Version, uuid, request, &[])
    }

    /// What tells the relay the stream is its bare socket both ways.
    pub(crate) fn switch(&self) -> Rc<VisionSwitch> {
        self.switch.clone()
    }

    /// Sends the request header with an empty padded block (long padding hides its length),
    /// as Xray's client does when no payload comes with the request.
    pub(crate) fn start(&mut self) {
        let mut out = std::mem::take(&mut self.prefix);
        let mut filter = std::mem::take(&mut self.filter);
        let mut padder = self.padder.clone();
        padder.encode(&[], &mut filter, &mut self.below(), &mut out);
        (self.padder, self.filter, self.out) = (padder, filter, out);
    }

    fn new(mut tls: T, switch: Rc<VisionSwitch>, head: Head, uuid: [u8; 16], prefix: Vec<u8>, early: &[u8]) -> Self {
        let mut seed = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        tls.tcp().bound();
        VisionStream {
            tls,
            switch,
            head,
            filter: TlsFilter::default(),
            unpadder: Unpadder::new(uuid),
            padder: Padder::new(uuid),
            inbuf: early.to_vec(),
            pos: 0,
            leftover: Vec::new(),
            lpos: 0,
            read_direct: false,
            out: Vec::new(),
            opos: 0,
            after: After::Same,
            write_plain: false,
            write_direct: false,
            prefix,
            rng: u64::from_le_bytes(seed) | 1,
            went_direct: (false, false),
        }
    }

    /// Decodes the payload that came with the request header, before anything is read: the
    /// bytes the relay sends on first.
    pub(crate) fn take_early(&mut self) -> io::Result<Vec<u8>> {
        let mut decoded = vec![0u8; self.inbuf.len()];
        let mut n = 0;
        while self.pos < self.inbuf.len() && !self.read_direct {
            let (used, wrote) = self.unpadder.decode(&self.inbuf[self.pos..], &mut decoded[n..]);
            if used == 0 && wrote == 0 {
                break;
            }
            self.filter_read(n, wrote, &decoded);
            self.pos += used;
            n += wrote;
            self.after_decode()?;
        }
        decoded.truncate(n);
        Ok(decoded)
    }

    fn filter_read(&mut self, from: usize, len: usize, data: &[u8]) {
        if self.filter.filtering() && len > 0 {
            self.filter.observe(&data[from..from + len]);
        }
    }

    /// After a decode step: on the direct block's end, gathers what rustls already holds
    /// (decrypted plaintext) behind the undecoded plaintext, and turns the socket raw.
    fn after_decode(&mut self) -> io::Result<()> {
        if self.unpadder.mode() != Mode::Direct || self.read_direct {
            return Ok(());
        }
        self.read_direct = true;
        self.went_direct.0 = true;
        let mut rest = self.inbuf.split_off(self.pos);
        self.inbuf = Vec::new();
        self.pos = 0;
        self.tls.drain_plaintext(&mut rest)?;
        let tcp = self.tls.tcp();
        if !tcp.at_record_boundary() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "Vision: raw bytes inside a TLS record"));
        }
        tcp.raw();
        self.leftover = rest;
        self.lpos = 0;
        self.check_transparent();
        Ok(())
    }

    fn check_transparent(&mut self) {
        let done = self.read_direct
            && self.write_direct
            && self.lpos == self.leftover.len()
            && self.opos == self.out.len()
            && !self.tls.tcp_ref().has_ahead();
        if done && !self.switch.transparent() {
            self.leftover = Vec::new();
            self.lpos = 0;
            self.switch.transparent.set(true);
        }
    }

    fn below(&mut self) -> impl FnMut(u32) -> u32 + '_ {
        |n| {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng % u64::from(n.max(1))) as u32
        }
    }

    /// Pushes encoded bytes into TLS; on the direct block's end, flushes TLS and turns raw.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.opos < self.out.len() {
            match Pin::new(&mut self.tls).poll_write(cx, &self.out[self.opos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.opos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out.clear();
        self.opos = 0;
        match self.after {
            After::Same => {}
            After::Plain => self.write_plain = true,
            After::Direct => {
                // The direct block must reach the socket before the first raw byte.
                match Pin::new(&mut self.tls).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    other => return other,
                }
                self.write_direct = true;
                self.went_direct.1 = true;
                self.check_transparent();
            }
        }
        self.after = After::Same;
        Poll::Ready(Ok(()))
    }

    /// Takes the response header off the front of `inbuf[pos..]` (a client's).
    fn skip_head(&mut self) -> io::Result<()> {
        while self.head != Head::Body && self.pos < self.inbuf.len() {
            let b = self.inbuf[self.pos];
            match self.head {
                Head::Version if b != shardray_wire::vless::VERSION => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "VLESS response: unknown version"))
                }
                Head::Version => {
                    self.head = Head::AddonsLen;
                    self.pos += 1;
                }
                Head::AddonsLen => {
                    self.head = if b == 0 { Head::Body } else { Head::Addons(usize::from(b)) };
                    self.pos += 1;
                }
                Head::Addons(n) => {
                    let take = n.min(self.inbuf.len() - self.pos);
                    self.pos += take;
                    self.head = if take == n { Head::Body } else { Head::Addons(n - take) };
                }
                Head::Body => {}
            }
        }
        Ok(())
    }
}

impl<T: OuterTls> AsyncRead for VisionStream<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if this.read_direct {
                if this.lpos < this.leftover.len() {
                    let n = buf.len().min(this.leftover.len() - this.lpos);
                    buf[..n].copy_from_slice(&this.leftover[this.lpos..this.lpos + n]);
                    this.lpos += n;
                    this.check_transparent();
                    return Poll::Ready(Ok(n));
                }
                let read = Pin::new(&mut *this.tls.tcp()).poll_read(cx, buf);
                this.check_transparent();
                return read;
            }
            if this.pos == this.inbuf.len() {
                if this.unpadder.mode() == Mode::Plain {
                    // Padding is over: straight from TLS into the caller's buffer.
                    let read = Pin::new(&mut this.tls).poll_read(cx, buf);
                    if let Poll::Ready(Ok(n)) = read {
                        this.filter_read(0, n, buf);
                    }
                    return read;
                }
                this.inbuf.resize(READ_CHUNK, 0);
                this.pos = 0;
                match Pin::new(&mut this.tls).poll_read(cx, &mut this.inbuf) {
                    Poll::Ready(Ok(n)) => this.inbuf.truncate(n),
                    other => {
                        this.inbuf.clear();
                        return other;
                    }
                }
                if this.inbuf.is_empty() {
                    return Poll::Ready(Ok(0));
                }
                this.skip_head()?;
                if this.pos == this.inbuf.len() {
                    continue;
                }
            }
            let (used, wrote) = this.unpadder.decode(&this.inbuf[this.pos..], buf);
            this.pos += used;
            this.filter_read(0, wrote, buf);
            if this.pos == this.inbuf.len() {
                this.inbuf.clear();
                this.pos = 0;
            }
            this.after_decode()?;
            if wrote > 0 {
                return Poll::Ready(Ok(wrote));
            }
        }
    }
}

impl<T: OuterTls> AsyncWrite for VisionStream<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        if this.write_direct {
            if this.filter.filtering() {
                this.filter.observe(data);
            }
            return Pin::new(&mut *this.tls.tcp()).poll_write(cx, data);
        }
        if this.write_plain && this.prefix.is_empty() {
            if this.filter.filtering() {
                this.filter.observe(data);
            }
            return Pin::new(&mut this.tls).poll_write(cx, data);
        }
        let data = &data[..data.len().min(WRITE_CHUNK)];
        let mut out = std::mem::take(&mut this.out);
        out.append(&mut this.prefix);
        let mut filter = std::mem::take(&mut this.filter);
        let mut padder = this.padder.clone();
        let after = padder.encode(data, &mut filter, &mut this.below(), &mut out);
        this.after = after;
        this.padder = padder;
        this.filter = filter;
        this.out = out;
        // Taken whatever happens next: the encoded bytes go out from `out` on later calls.
        match this.poll_drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(data.len())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if this.write_direct {
            return Pin::new(&mut *this.tls.tcp()).poll_flush(cx);
        }
        Pin::new(&mut this.tls).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // The response header, even when the upstream sent nothing.
        let mut prefix = std::mem::take(&mut this.prefix);
        this.out.append(&mut prefix);
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if this.write_direct {
            // Raw TCP now: a half-close is a FIN, as the peer's raw reader expects.
            return Pin::new(&mut *this.tls.tcp()).poll_close(cx);
        }
        Pin::new(&mut this.tls).poll_close(cx)
    }
}
