//! The VLESS inbound: reads and checks the request header, then forwards or falls back.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};
use shardray_core::spec::FallbackSpec;
use shardray_core::stats::Refusal;
use shardray_wire::addr::Destination;
use shardray_wire::vless::{Command, RequestHeader, MAX_HEADER_LEN, RESPONSE_HEADER};
use shardray_wire::DecodeError;

use super::{fallback, read_first, ConnInfo, FIRST_READ};
use crate::ctx::{InboundRt, ShardCtx};
use crate::outbound::{forward, Session};
use crate::packet::{serve_packets, FrameReader, FrameWriter, Framing, Half, PacketSession};
use crate::users::{UserHandle, UserTable};

/// How the handshake ended.
enum Handshake {
    Accepted { header: RequestHeader, user: UserHandle, consumed: usize },
    Rejected(&'static str, Refusal),
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
    let started = Instant::now();
    let mut buf = vec![0u8; FIRST_READ];
    let mut len = 0;
    let handshake = ctx.policy(0).handshake;
    let reading = read_first(&mut stream, info.plain_fd, &mut buf, &mut len, |data, room| decide(data, room, users));
    let outcome = futures_lite::future::or(
        async { reading.await.unwrap_or_else(|e| Handshake::Rejected(e, Refusal::BadRequest)) },
        async {
            glommio::timer::sleep(handshake).await;
            Handshake::Rejected("handshake timed out", Refusal::BadRequest)
        },
    )
    .await;
    match outcome {
        Handshake::Accepted { header, user, consumed } => {
            let user = user.bind(&ctx.users.borrow());
            let framing = match (header.command, &header.destination) {
                (Command::Udp, Some(dest)) => Some(Framing::Vless(dest.clone())),
                // Mux carries XUDP: UDP packets, each with its address (a TCP sub-session is
                // refused when its New frame comes).
                (Command::Mux, _) => Some(Framing::Xudp),
                _ => None,
            };
            if let Some(framing) = framing {
                let session =
                    PacketSession { inbound, peer: info.peer, level: user.level, user: Some(user), idle_cap: None };
                let stream = RefCell::new(stream);
                let out_framing = match &framing {
                    Framing::Vless(_) => Framing::Vless(Destination::from(info.peer)),
                    f => f.clone(),
                };
                let input = FrameReader::new(Half(&stream), framing, &buf[consumed..len]);
                drop(buf);
                let output = FrameWriter::new(Half(&stream), out_framing, RESPONSE_HEADER.to_vec());
                return serve_packets(ctx, session, input, output).await;
            }
            let dest = header.destination.expect("TCP requests carry a destination");
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
        Handshake::Rejected(reason, why) => {
            let rejected = fallback::Rejected { protocol: "vless", reason, why, started };
            // Boxed: rare, and larger than a forwarded session's state.
            Box::pin(fallback::reject(ctx, inbound, fallbacks, stream, &mut buf, len, info, rejected)).await;
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
                return Some(Handshake::Rejected("invalid user", Refusal::BadRequest));
            };
            if !header.flow.is_empty() {
                return Some(Handshake::Rejected("flow not enabled for this user", Refusal::UnsupportedCommand));
            }
            let consumed = data.len() - cur.len();
            Some(Handshake::Accepted { header, user, consumed })
        }
        Err(DecodeError::UnexpectedEnd) => {
            if let Ok(id) = RequestHeader::peek_user(data) {
                if !users.borrow().contains(&id) {
                    return Some(Handshake::Rejected("invalid user", Refusal::BadRequest));
                }
            }
            (data.len() >= MAX_HEADER_LEN.min(room))
                .then_some(Handshake::Rejected("header too long", Refusal::BadRequest))
        }
        Err(_) => Some(Handshake::Rejected("invalid request header", Refusal::BadRequest)),
    }
}
