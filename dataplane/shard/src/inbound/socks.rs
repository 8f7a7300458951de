//! The SOCKS inbound: SOCKS5 (no authentication, or username/password against the inbound's
//! accounts) and SOCKS4/4a (only without authentication), CONNECT relayed; a first byte that
//! is neither 4 nor 5 goes to the HTTP proxy with the same accounts, as Xray's socks inbound
//! hands it over. Refusals get the reply Xray sends for them, then the connection closes;
//! bytes that are not SOCKS at all get nothing back and are drained.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shardray_core::stats::Refusal;
use shardray_wire::addr::Destination;
use shardray_wire::socks::{
    self, encode_reply, failure_reply, method, method_reply, reply, select_method, socks4_reply, Command, Credentials,
    Greeting, Request, SocksError,
};

use super::{fallback, http, ConnInfo};
use crate::ctx::{InboundRt, ProxySettings, ShardCtx};
use crate::outbound::{forward, Session};
use crate::users::{PasswordKey, UserHandle, UserTable};

/// The longest SOCKS message read (a SOCKS4a request with a 255-byte user id and domain).
const MAX_MESSAGE: usize = 600;

/// How the handshake ended.
enum Handshake {
    /// CONNECT: the reply has been sent; relay to `dest`.
    Connect { dest: Destination, user: Option<UserHandle> },
    /// Not SOCKS: the HTTP proxy takes the bytes read so far.
    Http,
    /// Turned away: `drain` when nothing was answered (not SOCKS, or cut short), else the
    /// refusal's reply has been sent and the connection closes.
    Refused { reason: &'static str, why: Refusal, drain: bool },
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
    let handshake = handshake(&mut stream, &mut data, users, settings, info);
    let outcome = futures_lite::future::or(handshake, async {
        glommio::timer::sleep(timeout).await;
        Handshake::bad("handshake timed out")
    })
    .await;
    match outcome {
        Handshake::Connect { dest, user } => {
            let user = user.map(|u| u.bind(&ctx.users.borrow()));
            let level = user.as_ref().map_or(settings.user_level, |u| u.level);
            let session = Session { inbound, peer: info.peer, level, user, dest, client_fd: info.plain_fd };
            data.shrink_to_fit();
            forward(ctx, &mut stream, session, &data, &[]).await;
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
    }
}

/// What the first message says.
enum First {
    Socks5 { method: u8 },
    Socks4(socks::Socks4Request),
}

async fn handshake<S>(
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
            return Handshake::Connect { dest: request.destination, user: None };
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
    let user = match method {
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
            let user = users.borrow().get(&key);
            let ok = user.is_some();
            if stream.write_all(&socks::auth_reply(ok)).await.is_err() || !ok {
                return Handshake::answered("invalid username or password", Refusal::BadRequest);
            }
            user
        }
        _ => None,
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
        let _ = stream.write_all(&failure_reply(reply::COMMAND_NOT_SUPPORTED)).await;
        return Handshake::answered("UDP ASSOCIATE is not served yet", Refusal::UnsupportedCommand);
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
    Handshake::Connect { dest: request.destination, user }
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
