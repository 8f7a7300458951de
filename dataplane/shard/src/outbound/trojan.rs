//! The Trojan outbound: dials the server (TLS if configured) and sends the request header
//! with the session's first payload; there is no response to wait for.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use shardray_core::spec::{TlsClientSpec, TrojanOutboundSpec};
use shardray_wire::addr::{Address, Destination};
use shardray_wire::trojan::{password_key, Command, Request, KEY_LEN};

use super::{resolve, DIAL_TIMEOUT};
use crate::transport::tls_tcp::TlsTcp;

/// An outbound's TLS client and the name it asks for; `None` for plain TCP.
pub(crate) type ClientTls = Option<(TlsConnector, ServerName<'static>)>;

/// The TLS client of an outbound whose server is `server` (any protocol's: Trojan, VMess);
/// fails only on settings control has already checked.
pub(crate) fn client_tls(spec: Option<&TlsClientSpec>, server: &Destination) -> Result<ClientTls, String> {
    let Some(tls) = spec else {
        return Ok(None);
    };
    let config = crate::transport::tls::client_config(tls).map_err(|e| e.to_string())?;
    let name = match (tls.server_name.as_str(), &server.addr) {
        ("", Address::Ip(ip)) => ServerName::IpAddress((*ip).into()),
        ("", Address::Domain(d)) => server_name(d)?,
        (name, _) => server_name(name)?,
    };
    Ok(Some((TlsConnector::from(config), name)))
}

/// A Trojan outbound as a shard runs it: the user key, computed once, and the TLS client.
pub(crate) struct TrojanClient {
    key: [u8; KEY_LEN],
    pub(crate) tls: ClientTls,
}

impl TrojanClient {
    /// Builds the client; fails only on settings control has already checked.
    pub(crate) fn new(spec: &TrojanOutboundSpec) -> Result<TrojanClient, String> {
        Ok(TrojanClient { key: password_key(&spec.password), tls: client_tls(spec.tls.as_ref(), &spec.server)? })
    }

    /// The request header for a CONNECT to `dest`.
    pub(crate) fn header(&self, dest: &Destination) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        Request { key: self.key, command: Command::Connect, destination: dest.clone() }.encode(&mut out);
        out
    }

    /// The request header for a UDP ASSOCIATE whose first packet goes to `dest`.
    pub(crate) fn udp_header(&self, dest: &Destination) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        Request { key: self.key, command: Command::UdpAssociate, destination: dest.clone() }.encode(&mut out);
        out
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned()).map_err(|e| format!("serverName {name:?}: {e}"))
}

/// Resolves and connects to the server, then completes the TLS handshake if configured; the
/// whole dial is bounded by `DIAL_TIMEOUT`.
pub(crate) async fn dial(tls: &ClientTls, server: &Destination) -> io::Result<Upstream> {
    let dialing = async {
        let addrs = resolve(&server.addr, server.port, Default::default()).await?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(addr, DIAL_TIMEOUT).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e.into(),
            }
        }
        let stream = stream.ok_or(last)?;
        let _ = stream.set_nodelay(true);
        match tls {
            None => Ok(Upstream::Tcp(stream)),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), TlsTcp::new(Box::new(stream))).await?;
                Ok(Upstream::Tls(Box::new(tls)))
            }
        }
    };
    futures_lite::future::or(dialing, async {
        glommio::timer::sleep(DIAL_TIMEOUT).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "dial timed out"))
    })
    .await
}

/// The stream to an outbound's server: a plain socket (which the relay may splice) or TLS,
/// or a VMess body or a VLESS response over either.
pub(crate) enum Upstream {
    Tcp(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TlsTcp>>),
    Vmess(Box<crate::vmess::VmessStream<Upstream>>),
    Vless(Box<super::vless::VlessResponse<Upstream>>),
    Shadowsocks(Box<crate::shadowsocks::SsStream<Upstream>>),
}

impl Upstream {
    /// The socket, when nothing transforms the bytes on it.
    pub(crate) fn plain_fd(&self) -> Option<RawFd> {
        match self {
            Upstream::Tcp(s) => Some(s.as_raw_fd()),
            Upstream::Tls(_) | Upstream::Vmess(_) | Upstream::Vless(_) | Upstream::Shadowsocks(_) => None,
        }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Vmess(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Vless(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Shadowsocks(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Vmess(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Vless(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Shadowsocks(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Upstream::Vmess(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Upstream::Vless(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Upstream::Shadowsocks(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Vmess(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Vless(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Shadowsocks(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_close(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Upstream::Vmess(s) => Pin::new(s.as_mut()).poll_close(cx),
            Upstream::Vless(s) => Pin::new(s.as_mut()).poll_close(cx),
            Upstream::Shadowsocks(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
