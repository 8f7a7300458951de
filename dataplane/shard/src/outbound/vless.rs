//! The VLESS outbound: dials the server (TLS if configured), sends the request header with the
//! session's first payload, and takes the response header (version, addons) off the front of
//! what the server sends back.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use shardray_core::spec::VlessOutboundSpec;
use shardray_wire::addr::Destination;
use shardray_wire::vless::{Command, RequestHeader, VERSION};
use uuid::Uuid;

use super::trojan::{client_tls, client_transport, ClientTls, ClientTransport, Upstream};
use crate::transport::reality_client::RealityStream;
use crate::transport::tls_tcp::TlsTcp;
use crate::transport::vision::{OuterTls, VisionStream};

/// A VLESS outbound as a shard runs it: the user id and the TLS client, built once.
pub(crate) struct VlessClient {
    id: Uuid,
    pub(crate) tls: ClientTls,
    pub(crate) transport: ClientTransport,
    /// The user's flow is Vision (TCP sessions only: UDP goes without a flow, which an Xray
    /// server takes from a Vision user).
    pub(crate) vision: bool,
}

impl VlessClient {
    /// Builds the client; fails only on settings control has already checked.
    pub(crate) fn new(spec: &VlessOutboundSpec) -> Result<VlessClient, String> {
        Ok(VlessClient {
            id: spec.id,
            tls: client_tls(spec.tls.as_ref(), &spec.server)?,
            transport: client_transport(&spec.transport, spec.tls.as_ref(), spec.reality.as_deref(), &spec.server)?,
            vision: matches!(spec.flow, shardray_core::spec::VlessFlow::Vision),
        })
    }

    /// The request header for `command` to `dest` (a mux request names none).
    pub(crate) fn header(&self, command: Command, dest: &Destination) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let flow = if self.vision && command == Command::Tcp { shardray_wire::vision::FLOW } else { "" };
        let destination = (command != Command::Mux).then(|| dest.clone());
        RequestHeader { user: self.id, flow: flow.to_owned(), command, destination }.encode(&mut out);
        out
    }

    /// Dials the server for a Vision TCP session to `dest`: TLS 1.3 (or REALITY) following
    /// record boundaries, seen through the Vision codec, the request header ready to leave
    /// with the first block; bounded by `DIAL_TIMEOUT` as every dial.
    pub(crate) async fn dial_vision(
        &self,
        server: &Destination,
        dest: &Destination,
        via: &super::resolve::Via,
    ) -> io::Result<Upstream> {
        let dialing = async {
            if let ClientTransport::Reality(reality) = &self.transport {
                let stream = super::trojan::dial_reality(reality, server, via, true).await?;
                return Ok(VisionOuter::Reality(Box::new(stream)));
            }
            let up = super::trojan::dial_secured_with(&self.tls, server, true, via).await?;
            let Upstream::Tls(tls) = up else {
                return Err(io::Error::other("Vision needs TLS or REALITY to the server"));
            };
            if !tls.is_tls13() {
                return Err(io::Error::other("Vision needs TLS 1.3 to the server"));
            }
            Ok(VisionOuter::Tls(tls))
        };
        let outer = super::within_dial_timeout(dialing, "dial timed out").await?;
        let stream = VisionStream::client(outer, *self.id.as_bytes(), self.header(Command::Tcp, dest));
        Ok(Upstream::Vision(Box::new(stream)))
    }
}

/// What a Vision session to the server runs over: TLS (rustls) or REALITY.
pub(crate) enum VisionOuter {
    Tls(Box<futures_rustls::client::TlsStream<TlsTcp>>),
    Reality(Box<RealityStream>),
}

impl OuterTls for VisionOuter {
    fn tcp(&mut self) -> &mut TlsTcp {
        match self {
            VisionOuter::Tls(s) => s.tcp(),
            VisionOuter::Reality(s) => s.tcp(),
        }
    }
    fn tcp_ref(&self) -> &TlsTcp {
        match self {
            VisionOuter::Tls(s) => s.tcp_ref(),
            VisionOuter::Reality(s) => s.tcp_ref(),
        }
    }
    fn is_tls13(&self) -> bool {
        match self {
            VisionOuter::Tls(s) => s.is_tls13(),
            VisionOuter::Reality(s) => s.is_tls13(),
        }
    }
    fn drain_plaintext(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        match self {
            VisionOuter::Tls(s) => s.drain_plaintext(out),
            VisionOuter::Reality(s) => s.drain_plaintext(out),
        }
    }
}

impl AsyncRead for VisionOuter {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            VisionOuter::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            VisionOuter::Reality(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for VisionOuter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            VisionOuter::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            VisionOuter::Reality(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            VisionOuter::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            VisionOuter::Reality(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            VisionOuter::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            VisionOuter::Reality(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// Where reading the response header stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Version,
    AddonsLen,
    /// Addon bytes still to skip.
    Addons(usize),
    Body,
}

/// A server's stream with the VLESS response header taken off the front; writes pass through.
pub(crate) struct VlessResponse<S> {
    inner: S,
    head: Head,
}

impl<S> VlessResponse<S> {
    pub(crate) fn new(inner: S) -> Self {
        VlessResponse { inner, head: Head::Version }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for VlessResponse<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let n = match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            if this.head == Head::Body || n == 0 {
                if n == 0 && this.head != Head::Body && this.head != Head::Version {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "VLESS response cut short")));
                }
                return Poll::Ready(Ok(n));
            }
            let mut i = 0;
            while i < n && this.head != Head::Body {
                match this.head {
                    Head::Version if buf[i] != VERSION => {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "not a VLESS response")))
                    }
                    Head::Version => {
                        this.head = Head::AddonsLen;
                        i += 1;
                    }
                    Head::AddonsLen => {
                        this.head = if buf[i] == 0 { Head::Body } else { Head::Addons(usize::from(buf[i])) };
                        i += 1;
                    }
                    Head::Addons(left) => {
                        let take = left.min(n - i);
                        i += take;
                        this.head = if take == left { Head::Body } else { Head::Addons(left - take) };
                    }
                    Head::Body => unreachable!("the loop stops at the body"),
                }
            }
            if i < n {
                buf.copy_within(i..n, 0);
                return Poll::Ready(Ok(n - i));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for VlessResponse<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncReadExt;

    /// Hands out its bytes `step` at a time.
    struct Trickle(Vec<u8>, usize, usize);

    impl AsyncRead for Trickle {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            let n = self.2.min(buf.len()).min(self.0.len() - self.1);
            let at = self.1;
            buf[..n].copy_from_slice(&self.0[at..at + n]);
            self.1 += n;
            Poll::Ready(Ok(n))
        }
    }

    fn body(wire: &[u8], step: usize) -> io::Result<Vec<u8>> {
        let mut r = VlessResponse::new(Trickle(wire.to_vec(), 0, step));
        let mut out = Vec::new();
        futures_lite::future::block_on(r.read_to_end(&mut out)).map(|_| out)
    }

    #[test]
    fn the_response_header_and_its_addons_come_off_at_any_split() {
        for step in [1, 2, 3, 100] {
            assert_eq!(body(b"\x00\x00hello", step).unwrap(), b"hello");
            assert_eq!(body(b"\x00\x03abchello", step).unwrap(), b"hello");
            assert_eq!(body(b"\x00\x00", step).unwrap(), b"");
            assert!(body(b"\x01\x00hello", step).is_err(), "another version");
            assert!(body(b"\x00\x05ab", step).is_err(), "cut in the addons");
        }
        assert_eq!(body(b"", 1).unwrap(), b"", "closed before answering");
    }
}
