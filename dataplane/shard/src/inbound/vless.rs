//! The VLESS inbound: reads and checks the request header, then forwards or falls back; over
//! TLS, a Vision user's session goes through `transport::vision`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};
use shardray_core::spec::FallbackSpec;
use shardray_core::spec::LogLevel;
use shardray_core::stats::Refusal;
use shardray_wire::addr::Destination;
use shardray_wire::vision;
use shardray_wire::vless::{Command, RequestHeader, MAX_HEADER_LEN, RESPONSE_HEADER};
use shardray_wire::DecodeError;

use super::{fallback, read_first, ConnInfo, FIRST_READ};
use crate::ctx::{InboundRt, ShardCtx};
use crate::limits::Admitted;
use crate::outbound::{forward, forward_vision, Session};
use crate::packet::{serve_packets, FrameReader, FrameWriter, Framing, Half, PacketSession};
use crate::transport::vision::{OuterTls, VisionStream, VisionSwitch};
use crate::users::{UserHandle, UserTable};

/// How the handshake ended.
enum Handshake {
    Accepted {
        header: RequestHeader,
        user: UserHandle,
        consumed: usize,
    },
    Rejected(&'static str, Refusal),
    /// A request that was read but is refused (its flow or command): closed without a
    /// fallback, as Xray falls back only on a request it cannot read.
    Refused(&'static str, Refusal),
}

/// Reads the request header within the handshake timeout: the outcome, the bytes read and
/// how many.
async fn handshake<S>(
    ctx: &ShardCtx,
    stream: &mut S,
    info: &ConnInfo,
    users: &RefCell<UserTable>,
) -> (Handshake, Vec<u8>, usize)
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::new();
    let mut len = 0;
    let handshake = ctx.policy(0).handshake;
    let reading =
        read_first(stream, info.plain_fd, &mut buf, FIRST_READ, &mut len, |data, room| decide(data, room, users));
    let outcome = futures_lite::future::or(
        async { reading.await.unwrap_or_else(|e| Handshake::Rejected(e, Refusal::BadRequest)) },
        async {
            glommio::timer::sleep(handshake).await;
            Handshake::Rejected("handshake timed out", Refusal::BadRequest)
        },
    )
    .await;
    (outcome, buf, len)
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
    let (outcome, mut buf, len) = handshake(ctx, &mut stream, info, users).await;
    let outcome = match outcome {
        // Only TLS on raw TCP carries Vision (config and the API keep Vision users off other
        // inbounds; this is for a client that asks anyway).
        Handshake::Accepted { header, .. } if !header.flow.is_empty() => {
            Handshake::Refused("XTLS only supports TLS and REALITY directly", Refusal::UnsupportedCommand)
        }
        other => other,
    };
    match outcome {
        Handshake::Accepted { header, user, consumed } => {
            let user = user.bind(&ctx.users.borrow());
            // A user over its limits goes where a wrong user goes (told of by `admit`).
            let Ok(admitted) = crate::limits::admit(ctx, &inbound.tag, Some(&user), info.peer.ip()) else {
                return Box::pin(fallback::turn_away(ctx, inbound, fallbacks, stream, &mut buf, len, info, started))
                    .await;
            };
            proceed(ctx, inbound, stream, info, header, user, admitted, buf, consumed, len).await
        }
        Handshake::Rejected(reason, why) => {
            let rejected = fallback::Rejected { protocol: "vless", reason, why, started };
            // Boxed: rare, and larger than a forwarded session's state.
            Box::pin(fallback::reject(ctx, inbound, fallbacks, stream, &mut buf, len, info, rejected)).await;
        }
        Handshake::Refused(reason, why) => {
            let rejected = fallback::Rejected { protocol: "vless", reason, why, started };
            Box::pin(fallback::reject(ctx, inbound, &[], stream, &mut buf, len, info, rejected)).await;
        }
    }
}

/// A VLESS inbound over TLS (any `OuterTls`) directly on raw TCP: as `serve`, and Vision for
/// users with it.
pub(crate) async fn serve_tls<T: OuterTls>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    users: &RefCell<UserTable>,
    fallbacks: &[FallbackSpec],
    mut tls: T,
    info: &ConnInfo,
) {
    let started = Instant::now();
    let (outcome, mut buf, len) = handshake(ctx, &mut tls, info, users).await;
    let (reason, why, fallbacks) = match outcome {
        Handshake::Accepted { header, user, consumed } => {
            let user = user.bind(&ctx.users.borrow());
            // A user over its limits goes where a wrong user goes (told of by `admit`).
            let Ok(admitted) = crate::limits::admit(ctx, &inbound.tag, Some(&user), info.peer.ip()) else {
                return Box::pin(fallback::turn_away(ctx, inbound, fallbacks, tls, &mut buf, len, info, started)).await;
            };
            match header.flow == vision::FLOW {
                false => return proceed(ctx, inbound, tls, info, header, user, admitted, buf, consumed, len).await,
                true if tls.is_tls13() => {
                    let first = &buf[consumed..len];
                    return Box::pin(serve_vision(ctx, inbound, tls, info, header, user, admitted, first)).await;
                }
                true => ("Vision needs outer TLS 1.3", Refusal::UnsupportedCommand, &[][..]),
            }
        }
        Handshake::Rejected(reason, why) => (reason, why, fallbacks),
        Handshake::Refused(reason, why) => (reason, why, &[][..]),
    };
    let rejected = fallback::Rejected { protocol: "vless", reason, why, started };
    // Boxed: rare, and larger than a forwarded session's state.
    Box::pin(fallback::reject(ctx, inbound, fallbacks, tls, &mut buf, len, info, rejected)).await;
}

/// A Vision session: TCP relayed through the Vision stream (spliced once both directions go
/// direct), or a mux connection (XUDP) padded the same way.
#[allow(clippy::too_many_arguments)] // the session's parts as the header read found them, each passed once
async fn serve_vision<T: OuterTls>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    mut tls: T,
    info: &ConnInfo,
    header: RequestHeader,
    user: UserHandle,
    admitted: Admitted,
    first: &[u8],
) {
    let switch = Rc::new(VisionSwitch::new(tls.tcp_ref().fd()));
    let uuid = *header.user.as_bytes();
    let mut stream = VisionStream::server(&mut tls, switch.clone(), uuid, RESPONSE_HEADER.to_vec(), first);
    let early = match stream.take_early() {
        Ok(early) => early,
        Err(e) => {
            ctx.log.error(LogLevel::Info, format_args!("[{}] {} Vision: {e}", inbound.tag, info.peer));
            return;
        }
    };
    if header.command == Command::Mux {
        ctx.log.error(LogLevel::Debug, format_args!("[{}] {} Vision XUDP (mux) session", inbound.tag, info.peer));
        // Each sub-session is admitted on its own.
        drop(admitted);
        return crate::mux::serve(ctx, inbound, info.peer, user, stream, &early, &[]).await;
    }
    let dest = header.destination.expect("TCP requests carry a destination");
    let session = Session {
        inbound,
        peer: info.peer,
        level: user.level,
        user: Some(user),
        dest: dest.clone(),
        client_fd: None,
        admitted,
    };
    forward_vision(ctx, &mut stream, session, &early, &switch).await;
    let (up, down) = stream.went_direct;
    ctx.log.error(
        LogLevel::Debug,
        format_args!("[{}] {} to {dest}: Vision session ended (direct up: {up}, down: {down})", inbound.tag, info.peer),
    );
}

/// An accepted plain VLESS session: UDP packets, a mux connection (XUDP among its forms), or
/// TCP forwarded.
#[allow(clippy::too_many_arguments)]
async fn proceed<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    mut stream: S,
    info: &ConnInfo,
    header: RequestHeader,
    user: UserHandle,
    admitted: Admitted,
    mut buf: Vec<u8>,
    consumed: usize,
    len: usize,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if header.command == Command::Mux {
        // Each sub-session is admitted on its own: the connection only had to be let in.
        drop(admitted);
        return crate::mux::serve(ctx, inbound, info.peer, user, stream, &buf[consumed..len], &RESPONSE_HEADER).await;
    }
    let framing = match (header.command, &header.destination) {
        (Command::Udp, Some(dest)) => Some(Framing::Vless(dest.clone())),
        _ => None,
    };
    if let Some(framing) = framing {
        let session =
            PacketSession { inbound, peer: info.peer, level: user.level, user: Some(user), idle_cap: None, admitted };
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
        admitted,
    };
    // Keep only the payload that came with the header: the session may idle for long.
    buf.truncate(len);
    buf.drain(..consumed);
    buf.shrink_to_fit();
    forward(ctx, &mut stream, session, &buf, &RESPONSE_HEADER).await;
}

/// A mux request whose first frame is not XUDP's (session 0, network UDP), as Xray tells
/// them apart: fewer than 7 bytes count as not XUDP.
fn mux_not_xudp(header: &RequestHeader, first: &[u8]) -> bool {
    header.command == Command::Mux && !(first.len() >= 7 && first[2] == 0 && first[3] == 0 && first[6] == 2)
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
            // The flow checks Xray makes, with its reasons.
            match header.flow.as_str() {
                vision::FLOW if !user.vision => {
                    return Some(Handshake::Refused("account is not able to use the flow", Refusal::BadRequest))
                }
                vision::FLOW if header.command == Command::Udp => {
                    return Some(Handshake::Refused(
                        "xtls-rprx-vision doesn't support UDP",
                        Refusal::UnsupportedCommand,
                    ))
                }
                vision::FLOW => {}
                "" if user.vision && (header.command == Command::Tcp || mux_not_xudp(&header, cur)) => {
                    return Some(Handshake::Refused(
                        "account is rejected since the client flow is empty",
                        Refusal::BadRequest,
                    ))
                }
                "" => {}
                _ => return Some(Handshake::Refused("unknown request flow", Refusal::BadRequest)),
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
