//! The SOCKS inbound: SOCKS5 (no authentication, or username/password against the inbound's
//! accounts) and SOCKS4/4a (only without authentication), CONNECT relayed; a first byte that
//! is neither 4 nor 5 goes to the HTTP proxy with the same accounts, as Xray's socks inbound
//! hands it over. Refusals get the reply Xray sends for them, then the connection closes;
//! bytes that are not SOCKS at all get nothing back and are drained.

use std::cell::Cell;
use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::UdpSocket;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shardray_core::stats::Refusal;
use shardray_wire::addr::Destination;
use shardray_wire::socks::{
    self, encode_reply, failure_reply, method, method_reply, reply, select_method, socks4_reply, Command, Credentials,
    Greeting, Request, SocksError, UdpHeader,
};

use super::{fallback, http, ConnInfo};
use crate::ctx::{InboundRt, ProxySettings, ShardCtx};
use crate::limits::Admitted;
use crate::outbound::{forward, Session};
use crate::packet::{serve_packets, PacketSession, PacketSink, PacketSource, Recv, MAX_DATAGRAM};
use crate::users::{PasswordKey, UserHandle, UserTable};

/// The longest SOCKS message read (a SOCKS4a request with a 255-byte user id and domain).
const MAX_MESSAGE: usize = 600;

/// How the handshake ended.
enum Handshake {
    /// CONNECT: the reply has been sent; relay to `dest`.
    Connect { dest: Destination, user: Option<UserHandle>, admitted: Admitted },
    /// UDP ASSOCIATE: the reply naming `socket` has been sent; relay its datagrams while the
    /// connection lasts.
    Associate { socket: UdpSocket, user: Option<UserHandle>, admitted: Admitted },
    /// Not SOCKS: the HTTP proxy takes the bytes read so far.
    Http,
    /// Turned away: `drain` when nothing was answered (not SOCKS, or cut short), else the
    /// refusal's reply has been sent and the connection closes.
    Refused { reason: &'static str, why: Refusal, drain: bool },
    /// A user over its `maxConnections` or `maxIPs` (told of by `limits::admit`): it has got
    /// the wrong password's reply, and the connection closes as a wrong password's does.
    OverLimit,
}

impl Handshake {
    fn bad(reason: &'static str) -> Handshake {
        Handshake::Refused { reason, why: Refusal::BadRequest, drain: true }
    }

    fn answered(reason: &'static str, why: Refusal) -> Handshake {
        Handshake::Refused { reason, why, drain: false }
    }
}

/// Why reading a message ended without one.
enum ReadFail {
    Closed,
    Bad(SocksError),
}

pub(super) async fn serve<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    users: &RefCell<UserTable<PasswordKey>>,
    settings: &ProxySettings,
    mut stream: S,
    info: &ConnInfo,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut data = Vec::with_capacity(64);
    let timeout = ctx.policy(0).handshake;
    let handshake = handshake(ctx, inbound, &mut stream, &mut data, users, settings, info);
    let outcome = futures_lite::future::or(handshake, async {
        glommio::timer::sleep(timeout).await;
        Handshake::bad("handshake timed out")
    })
    .await;
    match outcome {
        Handshake::Connect { dest, user, admitted } => {
            let level = user.as_ref().map_or(settings.user_level, |u| u.level);
            let session = Session { inbound, peer: info.peer, level, user, dest, client_fd: info.plain_fd, admitted };
            data.shrink_to_fit();
            forward(ctx, &mut stream, session, &data, &[]).await;
        }
        Handshake::Associate { socket, user, admitted } => {
            let level = user.as_ref().map_or(settings.user_level, |u| u.level);
            drop(data);
            let session = PacketSession { inbound, peer: info.peer, user, level, idle_cap: Some(UDP_IDLE), admitted };
            associate(ctx, session, stream, socket, info).await;
        }
        Handshake::Http => Box::pin(http::serve(ctx, inbound, users, settings, stream, info, data, started)).await,
        Handshake::Refused { reason, why, drain } => {
            if drain {
                let rejected = fallback::Rejected { protocol: "socks", reason, why, started };
                let len = data.len();
                data.resize(len.max(1024), 0);
                fallback::reject(ctx, inbound, &[], stream, &mut data, len, info, rejected).await;
            } else {
                fallback::refuse(ctx, inbound, "socks", reason, why, info);
                let _ = stream.close().await;
            }
        }
        Handshake::OverLimit => {
            let _ = stream.close().await;
        }
    }
}

/// What the first message says.
enum First {
    Socks5 { method: u8 },
    Socks4(socks::Socks4Request),
}

async fn handshake<S>(
    ctx: &ShardCtx,
    inbound: &InboundRt,
    stream: &mut S,
    data: &mut Vec<u8>,
    users: &RefCell<UserTable<PasswordKey>>,
    settings: &ProxySettings,
    info: &ConnInfo,
) -> Handshake
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let auth = settings.auth.get();
    let first = next(stream, data, |b| {
        Greeting::decode(b).map(|g| match g {
            Greeting::Socks5 { methods } => First::Socks5 { method: select_method(methods, auth) },
            Greeting::Socks4(r) => First::Socks4(r),
        })
    })
    .await;
    let method = match first {
        Ok(First::Socks5 { method }) => method,
        Ok(First::Socks4(request)) => {
            let granted = !auth;
            if stream.write_all(&socks4_reply(granted)).await.is_err() {
                return Handshake::bad("client gone during handshake");
            }
            if !granted {
                return Handshake::answered("SOCKS4 is not allowed when a password is required", Refusal::BadRequest);
            }
            return Handshake::Connect { dest: request.destination, user: None, admitted: Admitted::no_user() };
        }
        Err(ReadFail::Bad(SocksError::BadVersion(_))) if settings.socks => return Handshake::Http,
        Err(ReadFail::Bad(SocksError::UnsupportedCommand(_))) => {
            // A SOCKS4 BIND or unknown command: rejected as Xray rejects it.
            let _ = stream.write_all(&socks4_reply(false)).await;
            return Handshake::answered("unsupported SOCKS4 command", Refusal::UnsupportedCommand);
        }
        Err(ReadFail::Bad(_)) => return Handshake::bad("not a socks request"),
        Err(ReadFail::Closed) => return Handshake::bad("connection closed during handshake"),
    };
    if stream.write_all(&method_reply(method)).await.is_err() {
        return Handshake::bad("client gone during handshake");
    }
    let (user, admitted) = match method {
        method::NO_ACCEPTABLE => {
            return Handshake::answered("no acceptable authentication method", Refusal::BadRequest)
        }
        method::PASSWORD => {
            let key =
                next(stream, data, |b| Credentials::decode(b).map(|c| socks::account_key(c.username, c.password)))
                    .await;
            let key = match key {
                Ok(key) => key,
                Err(ReadFail::Bad(_)) => return Handshake::bad("malformed username/password"),
                Err(ReadFail::Closed) => return Handshake::bad("connection closed during handshake"),
            };
            let user = users.borrow().get(&key).map(|u| u.bind(&ctx.users.borrow()));
            // A user over its limits gets what a wrong password gets.
            let admitted =
                user.as_ref().and_then(|u| crate::limits::admit(ctx, &inbound.tag, Some(u), info.peer.ip()).ok());
            let sent = stream.write_all(&socks::auth_reply(admitted.is_some())).await.is_ok();
            match (user, admitted) {
                (Some(user), Some(admitted)) if sent => (Some(user), admitted),
                (Some(_), None) => return Handshake::OverLimit,
                _ if !sent => return Handshake::bad("client gone during handshake"),
                _ => return Handshake::answered("invalid username or password", Refusal::BadRequest),
            }
        }
        _ => (None, Admitted::no_user()),
    };
    let request = match next(stream, data, Request::decode).await {
        Ok(r) => r,
        Err(ReadFail::Bad(SocksError::UnsupportedCommand(_))) => {
            let _ = stream.write_all(&failure_reply(reply::COMMAND_NOT_SUPPORTED)).await;
            return Handshake::answered("unsupported command", Refusal::UnsupportedCommand);
        }
        Err(ReadFail::Bad(_)) => return Handshake::bad("malformed socks request"),
        Err(ReadFail::Closed) => return Handshake::bad("connection closed during handshake"),
    };
    if request.command == Command::UdpAssociate {
        if !settings.udp {
            let _ = stream.write_all(&failure_reply(reply::COMMAND_NOT_SUPPORTED)).await;
            return Handshake::answered("UDP ASSOCIATE with udp off", Refusal::UnsupportedCommand);
        }
        let socket = match bind_relay(info) {
            Ok(s) => s,
            Err(_) => {
                let _ = stream.write_all(&failure_reply(reply::GENERAL_FAILURE)).await;
                return Handshake::answered("no UDP socket for the association", Refusal::BadRequest);
            }
        };
        let Ok(relay) = socket.local_addr() else { return Handshake::bad("no UDP socket for the association") };
        // The reply names `ip` when set (an address the client can reach, behind NAT), else
        // the address the client reached; the port is the association's own.
        let addr = settings.udp_ip.clone().unwrap_or(shardray_wire::addr::Address::Ip(relay.ip().to_canonical()));
        let mut out = Vec::with_capacity(22);
        encode_reply(reply::SUCCEEDED, &Destination { addr, port: relay.port() }, &mut out);
        if stream.write_all(&out).await.is_err() {
            return Handshake::bad("client gone during handshake");
        }
        return Handshake::Associate { socket, user, admitted };
    }
    // The bound address, as Xray answers a CONNECT: the address the client reached.
    let bound = info
        .local()
        .map_or_else(|_| Destination::from(std::net::SocketAddr::from(([0, 0, 0, 0], 0))), Destination::from);
    let mut out = Vec::with_capacity(22);
    encode_reply(reply::SUCCEEDED, &bound, &mut out);
    if stream.write_all(&out).await.is_err() {
        return Handshake::bad("client gone during handshake");
    }
    Handshake::Connect { dest: request.destination, user, admitted }
}

/// Decodes the next message from the front of `data`, reading more while it is incomplete;
/// the message's bytes are consumed, what follows stays in `data`.
async fn next<S, T>(
    stream: &mut S,
    data: &mut Vec<u8>,
    mut decode: impl FnMut(&mut &[u8]) -> Result<T, SocksError>,
) -> Result<T, ReadFail>
where
    S: AsyncRead + Unpin,
{
    let mut chunk = [0u8; 1024];
    loop {
        let mut cur = &data[..];
        match decode(&mut cur) {
            Ok(v) => {
                let used = data.len() - cur.len();
                data.drain(..used);
                return Ok(v);
            }
            Err(SocksError::UnexpectedEnd) if data.len() < MAX_MESSAGE => {}
            Err(SocksError::UnexpectedEnd) => return Err(ReadFail::Bad(SocksError::TooLong)),
            Err(e) => return Err(ReadFail::Bad(e)),
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(ReadFail::Closed),
            Ok(n) => data.extend_from_slice(&chunk[..n]),
        }
    }
}

// === UDP ASSOCIATE ===

/// The longest an association idles before it ends (and its connection with it): Xray's UDP
/// dispatcher gives up a link after a minute without packets.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// Room for a datagram header with a 255-byte domain in front of the largest payload.
const HEADER_ROOM: usize = 262;

/// Binds the association's UDP socket on the address the client reached, any port. One socket
/// per association (not one per shard on the inbound's port): the kernel then delivers the
/// datagrams to the shard that holds the control connection, and a datagram's source is
/// checked against one client only.
fn bind_relay(info: &ConnInfo) -> io::Result<UdpSocket> {
    let local = info.local()?;
    UdpSocket::bind(SocketAddr::new(local.ip(), 0))
        .or_else(|_| {
            let any: IpAddr =
                if local.is_ipv4() { [0, 0, 0, 0].into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
            UdpSocket::bind(SocketAddr::new(any, 0))
        })
        .map_err(io::Error::from)
}

/// Relays an association's datagrams until its control connection closes, or the packet
/// session ends (idle, or its user removed); the connection is closed then.
async fn associate<S>(ctx: &Rc<ShardCtx>, session: PacketSession<'_>, mut stream: S, socket: UdpSocket, info: &ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let client = Cell::new(None);
    let input = AssociationIn {
        control: &mut stream,
        socket: &socket,
        peer_ip: info.peer.ip().to_canonical(),
        client: &client,
        buf: vec![0u8; HEADER_ROOM + MAX_DATAGRAM + 1].into_boxed_slice(),
    };
    let output =
        AssociationOut { socket: &socket, client: &client, out: Vec::with_capacity(HEADER_ROOM + MAX_DATAGRAM) };
    serve_packets(ctx, session, input, output).await;
    let _ = stream.close().await;
}

/// The client's datagrams: only from the control connection's address (the first one's port
/// then holds), FRAG 0 only, and the session's end when the control connection closes.
struct AssociationIn<'a, S> {
    control: &'a mut S,
    socket: &'a UdpSocket,
    peer_ip: IpAddr,
    client: &'a Cell<Option<SocketAddr>>,
    buf: Box<[u8]>,
}

impl<S: AsyncRead + Unpin> PacketSource for AssociationIn<'_, S> {
    async fn recv(&mut self, out: &mut [u8]) -> io::Result<Recv> {
        let AssociationIn { control, socket, peer_ip, client, buf } = self;
        let closed = async {
            // Nothing more is expected on the control connection; whatever comes is ignored.
            let mut sink = [0u8; 256];
            loop {
                match control.read(&mut sink).await {
                    // An error, not `Recv::End`: the association ends now, replies and all.
                    Ok(0) | Err(_) => {
                        return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the control connection closed"))
                    }
                    Ok(_) => {}
                }
            }
        };
        let datagram = async {
            loop {
                let (n, from) = socket.recv_from(buf).await?;
                let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                let allowed = match client.get() {
                    Some(c) => c == from,
                    None => from.ip() == *peer_ip,
                };
                if !allowed {
                    continue;
                }
                let mut cur = &buf[..n];
                // Short, malformed and fragmented datagrams are dropped (as Xray drops them).
                let Ok(dest) = UdpHeader::decode(&mut cur) else { continue };
                client.set(Some(from));
                if cur.len() > MAX_DATAGRAM {
                    return Ok(Recv::Oversize);
                }
                let len = cur.len();
                out[..len].copy_from_slice(cur);
                return Ok(Recv::Packet(dest, len));
            }
        };
        futures_lite::future::or(closed, datagram).await
    }
}

/// Replies to the client, each behind a header naming its source.
struct AssociationOut<'a> {
    socket: &'a UdpSocket,
    client: &'a Cell<Option<SocketAddr>>,
    out: Vec<u8>,
}

impl PacketSink for AssociationOut<'_> {
    async fn send(&mut self, peer: &Destination, payload: &[u8]) -> io::Result<bool> {
        let Some(client) = self.client.get() else { return Ok(false) };
        self.out.clear();
        UdpHeader::encode(peer, &mut self.out);
        self.out.extend_from_slice(payload);
        // A client that is briefly unreachable is no reason to end the association.
        Ok(self.socket.send_to(&self.out, client).await.is_ok())
    }
}
