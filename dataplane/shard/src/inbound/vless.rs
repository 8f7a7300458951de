//! The VLESS inbound: reads and checks the request header, then forwards or falls back.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use shardray_core::spec::FallbackSpec;
use shardray_wire::vless::{Command, RequestHeader, MAX_HEADER_LEN, RESPONSE_HEADER};
use shardray_wire::DecodeError;

use super::{fallback, ConnInfo};
use crate::ctx::{InboundRt, ShardCtx};
use crate::outbound::{forward, Session};
use crate::users::{UserHandle, UserTable};

/// Room for the longest header plus the payload that usually arrives with it.
const FIRST_READ: usize = 4096;

/// How the handshake ended.
enum Handshake {
    Accepted { header: RequestHeader, user: UserHandle, consumed: usize },
    Rejected(&'static str),
}

pub(super) async fn serve<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    users: &RefCell<UserTable>,
    fallbacks: &[FallbackSpec],
    mut stream: S,
    info: &ConnInfo,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; FIRST_READ];
    let mut len = 0;
    let handshake = ctx.policy(0).handshake;
    let reading = read_header(&mut stream, info.plain_fd, &mut buf, &mut len, users);
    let outcome = futures_lite::future::or(reading, async {
        glommio::timer::sleep(handshake).await;
        Handshake::Rejected("handshake timed out")
    })
    .await;
    match outcome {
        Handshake::Accepted { header, user, consumed } => {
            let dest = header.destination.expect("TCP requests carry a destination");
            let user = user.bind(&ctx.users.borrow());
            let session = Session {
                inbound,
                peer: info.peer,
                level: user.level,
                user: Some(user),
                dest,
                client_fd: info.plain_fd,
            };
            // Keep only the payload that came with the header: the session may idle for long.
            buf.truncate(len);
            buf.drain(..consumed);
            buf.shrink_to_fit();
            forward(ctx, &mut stream, session, &buf, &RESPONSE_HEADER).await;
        }
        Handshake::Rejected(reason) => {
            // Nothing is written back: a prober learns no more than from a closed port, or it
            // meets the fallback, which sees the exact bytes the prober sent.
            ctx.log.access(format_args!("from {} rejected vless: {}", info.peer, reason));
            if !fallbacks.is_empty() && len > 0 {
                // Boxed: rare, and larger than a forwarded session's state.
                Box::pin(fallback::serve(ctx, inbound, fallbacks, stream, &buf[..len], info)).await;
            }
        }
    }
}

/// Reads until the header decodes or is known to be bad. `socket` is the stream's own plain
/// TCP socket, if it has one.
async fn read_header<S>(
    stream: &mut S,
    socket: Option<RawFd>,
    buf: &mut [u8],
    len: &mut usize,
    users: &RefCell<UserTable>,
) -> Handshake
where
    S: AsyncRead + Unpin,
{
    // The header has usually arrived by the time the connection is accepted: read it at once
    // instead of through glommio, whose new stream first waits for a readiness poll (one more
    // trip through the ring per connection).
    if let Some(fd) = socket {
        match recv_now(fd, buf) {
            Ok(0) => return Handshake::Rejected("connection closed during handshake"),
            Ok(n) => {
                *len = n;
                if let Some(outcome) = decide(&buf[..n], buf.len(), users) {
                    return outcome;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Handshake::Rejected("read failed during handshake"),
        }
    }
    loop {
        let n = match stream.read(&mut buf[*len..]).await {
            Ok(0) => return Handshake::Rejected("connection closed during handshake"),
            Ok(n) => n,
            Err(_) => return Handshake::Rejected("read failed during handshake"),
        };
        *len += n;
        if let Some(outcome) = decide(&buf[..*len], buf.len(), users) {
            return outcome;
        }
    }
}

/// What the bytes read so far (`data`, in a buffer of `room` bytes) settle; `None` while more
/// may complete the header.
fn decide(data: &[u8], room: usize, users: &RefCell<UserTable>) -> Option<Handshake> {
    let mut cur = data;
    match RequestHeader::decode(&mut cur) {
        Ok(header) => {
            let Some(user) = users.borrow().get(&header.user) else {
                return Some(Handshake::Rejected("invalid user"));
            };
            if !header.flow.is_empty() {
                return Some(Handshake::Rejected("flow not enabled for this user"));
            }
            if header.command != Command::Tcp {
                return Some(Handshake::Rejected("only TCP requests are served"));
            }
            let consumed = data.len() - cur.len();
            Some(Handshake::Accepted { header, user, consumed })
        }
        Err(DecodeError::UnexpectedEnd) => {
            if let Ok(id) = RequestHeader::peek_user(data) {
                if !users.borrow().contains(&id) {
                    return Some(Handshake::Rejected("invalid user"));
                }
            }
            (data.len() >= MAX_HEADER_LEN.min(room)).then_some(Handshake::Rejected("header too long"))
        }
        Err(_) => Some(Handshake::Rejected("invalid request header")),
    }
}

/// One nonblocking recv(2) on `fd`, an open socket nothing buffers above.
fn recv_now(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `fd` belongs to the stream the caller holds; `buf` is a live slice of the
        // stated length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
