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
use shardray_core::spec::{HttpTransportSpec, RealityClientSpec, TlsClientSpec, TransportSpec, TrojanOutboundSpec};
use shardray_wire::addr::{Address, Destination};
use shardray_wire::trojan::{password_key, Command, Request, KEY_LEN};
use shardray_wire::websocket::Flavor;

use super::resolve::Via;
use crate::transport::grpc::{GrpcClient, GrpcStream};
use crate::transport::http_header::Camouflaged;
use crate::transport::reality_client::{RealityClient, RealityStream};
use crate::transport::tls_tcp::TlsTcp;
use crate::transport::ws::{Upgraded, WsStream};
use crate::transport::xhttp_client::{XhttpClient, XhttpStream};

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

/// An outbound's transport: raw TCP, an HTTP transport (WebSocket or HTTPUpgrade) and the
/// `Host` it sends, or gRPC or XHTTP (its shard's connections to the server, which have
/// their own TLS), or REALITY (its own TLS 1.3 client, over raw TCP only: security and
/// transport in one).
#[derive(Default)]
pub(crate) enum ClientTransport {
    #[default]
    Raw,
    Reality(Box<RealityClient>),
    Http(Flavor, HttpTransportSpec, String),
    Grpc(Box<GrpcClient>),
    Xhttp(Box<XhttpClient>),
}

/// The transport of an outbound whose server is `server`: the `Host` is `host`, else the TLS
/// server name, else the server's address, as in Xray. Fails only on settings control has
/// already checked.
pub(crate) fn client_transport(
    spec: &TransportSpec,
    tls: Option<&TlsClientSpec>,
    reality: Option<&RealityClientSpec>,
    server: &Destination,
) -> Result<ClientTransport, String> {
    if let Some(reality) = reality {
        if *spec != TransportSpec::Raw || tls.is_some() {
            return Err("REALITY runs over raw TCP, without TLS".into());
        }
        return Ok(ClientTransport::Reality(Box::new(RealityClient::new(reality, server))));
    }
    let (flavor, http) = match spec {
        TransportSpec::Raw => return Ok(ClientTransport::Raw),
        TransportSpec::Ws(h) => (Flavor::WebSocket, h),
        TransportSpec::HttpUpgrade(h) => (Flavor::HttpUpgrade, h),
        TransportSpec::Grpc(g) => return Ok(ClientTransport::Grpc(Box::new(GrpcClient::new(g, tls, server)?))),
        TransportSpec::Xhttp(x) => return Ok(ClientTransport::Xhttp(Box::new(XhttpClient::new(x, tls, server)?))),
    };
    let host = match (http.host.as_str(), tls.map(|t| t.server_name.as_str()).unwrap_or("")) {
        ("", "") => server.addr.to_string(),
        ("", name) => name.to_owned(),
        (host, _) => host.to_owned(),
    };
    Ok(ClientTransport::Http(flavor, HttpTransportSpec::clone(http), host))
}

/// A Trojan outbound as a shard runs it: the user key, computed once, and the TLS client.
pub(crate) struct TrojanClient {
    key: [u8; KEY_LEN],
    pub(crate) tls: ClientTls,
    pub(crate) transport: ClientTransport,
}

impl TrojanClient {
    /// Builds the client; fails only on settings control has already checked.
    pub(crate) fn new(spec: &TrojanOutboundSpec) -> Result<TrojanClient, String> {
        Ok(TrojanClient {
            key: password_key(&spec.password),
            tls: client_tls(spec.tls.as_ref(), &spec.server)?,
            transport: client_transport(&spec.transport, spec.tls.as_ref(), spec.reality.as_deref(), &spec.server)?,
        })
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

/// Resolves and connects to the server, then completes the TLS handshake and the transport's
/// upgrade if configured (a gRPC session opens a stream on its shard's connection to the
/// server, dialed first if there is none); the whole dial is bounded by `DIAL_TIMEOUT`.
pub(crate) async fn dial(
    tls: &ClientTls,
    transport: &ClientTransport,
    server: &Destination,
    via: &Via,
) -> io::Result<Upstream> {
    let dialing = async {
        let (flavor, spec, host) = match transport {
            ClientTransport::Raw => return dial_secured(tls, server, via).await,
            ClientTransport::Reality(reality) => {
                return Ok(Upstream::Reality(Box::new(dial_reality(reality, server, via, false).await?)));
            }
            ClientTransport::Http(flavor, spec, host) => (flavor, spec, host),
            ClientTransport::Grpc(grpc) => return Ok(Upstream::Grpc(Box::new(grpc.open(server, via).await?))),
            ClientTransport::Xhttp(xhttp) => return Ok(Upstream::Xhttp(Box::new(xhttp.open(server, via).await?))),
        };
        let secured = dial_secured(tls, server, via).await?;
        match crate::transport::ws::connect(secured, *flavor, spec, host).await? {
            Upgraded::Ws(ws) => Ok(Upstream::Ws(ws)),
            // Raw bytes after the upgrade: a plain socket may still splice.
            Upgraded::Raw { stream, early } if early.is_empty() => Ok(stream),
            Upgraded::Raw { stream, early } => Ok(Upstream::Early(Box::new(Camouflaged::with_early(stream, early)))),
        }
    };
    super::within_dial_timeout(dialing, "dial timed out").await
}

/// Resolves and connects to the server, then completes REALITY's handshake; `tracking` keeps
/// the TLS records' boundaries in view (for Vision).
pub(crate) async fn dial_reality(
    reality: &RealityClient,
    server: &Destination,
    via: &Via,
    tracking: bool,
) -> io::Result<RealityStream> {
    let stream = Box::new(super::resolve::connect_configured_via(server, via).await?);
    let _ = stream.set_nodelay(true);
    let tcp = if tracking { TlsTcp::tracking(stream) } else { TlsTcp::new(stream) };
    reality.connect(tcp).await
}

/// Resolves and connects to the server, then completes the TLS handshake if configured.
pub(crate) async fn dial_secured(tls: &ClientTls, server: &Destination, via: &Via) -> io::Result<Upstream> {
    dial_secured_with(tls, server, false, via).await
}

/// `dial_secured`, with the TLS stream following record boundaries when `tracking` (Vision).
pub(crate) async fn dial_secured_with(
    tls: &ClientTls,
    server: &Destination,
    tracking: bool,
    via: &Via,
) -> io::Result<Upstream> {
    let stream = super::resolve::connect_configured_via(server, via).await?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => Ok(Upstream::Tcp(stream)),
        Some((connector, name)) => {
            let tcp = match tracking {
                true => TlsTcp::tracking(Box::new(stream)),
                false => TlsTcp::new(Box::new(stream)),
            };
            let tls = connector.connect(name.clone(), tcp).await?;
            Ok(Upstream::Tls(Box::new(tls)))
        }
    }
}

/// The stream to an outbound's server: a plain socket (which the relay may splice) or TLS,
/// WebSocket or HTTPUpgrade with bytes read past its `101` over either, or a VMess body, a VLESS
/// response or a Shadowsocks stream over any of them.
pub(crate) enum Upstream {
    Tcp(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TlsTcp>>),
    Reality(Box<RealityStream>),
    Ws(Box<WsStream<Upstream>>),
    Early(Box<Camouflaged<Upstream>>),
    Vmess(Box<crate::vmess::VmessStream<Upstream>>),
    Vless(Box<super::vless::VlessResponse<Upstream>>),
    Shadowsocks(Box<crate::shadowsocks::SsStream<Upstream>>),
    /// A VLESS Vision session to the server (over TLS or REALITY, which it may drop once
    /// direct).
    Vision(Box<crate::transport::vision::VisionStream<super::vless::VisionOuter>>),
    Grpc(Box<GrpcStream>),
    Xhttp(Box<XhttpStream>),
}

impl Upstream {
    /// The socket, when nothing transforms the bytes on it.
    pub(crate) fn plain_fd(&self) -> Option<RawFd> {
        match self {
            Upstream::Tcp(s) => Some(s.as_raw_fd()),
            Upstream::Tls(_)
            | Upstream::Reality(_)
            | Upstream::Ws(_)
            | Upstream::Early(_)
            | Upstream::Vmess(_)
            | Upstream::Vless(_)
            | Upstream::Shadowsocks(_)
            | Upstream::Vision(_)
            | Upstream::Grpc(_)
            | Upstream::Xhttp(_) => None,
        }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Reality(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Early(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Vmess(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Vless(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Shadowsocks(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Vision(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Grpc(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Upstream::Xhttp(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Reality(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Early(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Vmess(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Vless(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Shadowsocks(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Vision(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Grpc(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Upstream::Xhttp(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
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
            Upstream::Reality(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Upstream::Ws(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Upstream::Early(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Upstream::Vmess(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Upstream::Vless(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Upstream::Shadowsocks(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Upstream::Vision(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Upstream::Grpc(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Upstream::Xhttp(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Reality(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Early(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Vmess(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Vless(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Shadowsocks(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Vision(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Grpc(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Upstream::Xhttp(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_close(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Upstream::Reality(s) => Pin::new(s.as_mut()).poll_close(cx),
            Upstream::Ws(s) => Pin::new(s.as_mut()).poll_close(cx),
            Upstream::Early(s) => Pin::new(s.as_mut()).poll_close(cx),
            Upstream::Vmess(s) => Pin::new(s.as_mut()).poll_close(cx),
            Upstream::Vless(s) => Pin::new(s.as_mut()).poll_close(cx),
            Upstream::Shadowsocks(s) => Pin::new(s.as_mut()).poll_close(cx),
            Upstream::Vision(s) => Pin::new(s.as_mut()).poll_close(cx),
            Upstream::Grpc(s) => Pin::new(s.as_mut()).poll_close(cx),
            Upstream::Xhttp(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
