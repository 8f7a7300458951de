//! The Trojan inbound: reads the request (user key, command, destination), looks the user up
//! by its key, then forwards; anything else is turned away as the VLESS inbound turns it away
//! (fallback, or drain), with the exact bytes received.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};
use shardray_core::spec::FallbackSpec;
use shardray_core::stats::Refusal;
use shardray_wire::trojan::{Command, Request, TrojanError, MAX_HEADER_LEN};

use super::{fallback, read_first, ConnInfo, FIRST_READ};
use crate::ctx::{InboundRt, ShardCtx};
use crate::outbound::{forward, Session};
use crate::packet::{serve_packets, FrameReader, FrameWriter, Framing, Half, PacketSession};
use crate::users::{TrojanKey, UserHandle, UserTable};

/// The longest a Trojan UDP session idles: Xray's UDP dispatcher gives up a link after a
/// minute without packets.
const UDP_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// How the handshake ended.
enum Handshake {
    Accepted { request: Request, user: UserHandle, consumed: usize },
    Rejected(&'static str, Refusal),
}

pub(super) async fn serve<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    users: &RefCell<UserTable<TrojanKey>>,
    fallbacks: &[FallbackSpec],
    mut stream: S,
    info: &ConnInfo,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut len = 0;
    let handshake = ctx.policy(0).handshake;
    let reading =
        read_first(&mut stream, info.plain_fd, &mut buf, FIRST_READ, &mut len, |data, room| decide(data, room, users));
    let reading = async { reading.await.unwrap_or_else(|e| Handshake::Rejected(e, Refusal::BadRequest)) };
    let outcome = futures_lite::future::or(reading, async {
        glommio::timer::sleep(handshake).await;
        Handshake::Rejected("handshake timed out", Refusal::BadRequest)
    })
    .await;
    match outcome {
        Handshake::Accepted { request, user, consumed } => {
            let user = user.bind(&ctx.users.borrow());
            // A user over its limits goes where a wrong password goes: the fallback, or the
            // drain (told of by `admit`, so not counted as a bad request too).
            let Ok(admitted) = crate::limits::admit(ctx, &inbound.tag, Some(&user), info.peer.ip()) else {
                return Box::pin(fallback::turn_away(ctx, inbound, fallbacks, stream, &mut buf, len, info, started))
                    .await;
            };
            if request.command == Command::UdpAssociate {
                // Every frame names its own destination; the request's is not used (as Xray).
                let session = PacketSession {
                    inbound,
                    peer: info.peer,
                    level: user.level,
                    user: Some(user),
                    idle_cap: Some(UDP_IDLE),
                    admitted,
                };
                let stream = RefCell::new(stream);
                let input = FrameReader::new(Half(&stream), Framing::Trojan, &buf[consumed..len]);
                drop(buf);
                let output = FrameWriter::new(Half(&stream), Framing::Trojan, Vec::new());
                return serve_packets(ctx, session, input, output).await;
            }
            let session = Session {
                inbound,
                peer: info.peer,
                level: user.level,
                user: Some(user),
                dest: request.destination,
                client_fd: info.plain_fd,
                admitted,
            };
            // Keep only the payload that came with the header: the session may idle for long.
            buf.truncate(len);
            buf.drain(..consumed);
            buf.shrink_to_fit();
            // Trojan has no response header.
            forward(ctx, &mut stream, session, &buf, &[]).await;
        }
        Handshake::Rejected(reason, why) => {
            let rejected = fallback::Rejected { protocol: "trojan", reason, why, started };
            // Boxed: rare, and larger than a forwarded session's state.
            Box::pin(fallback::reject(ctx, inbound, fallbacks, stream, &mut buf, len, info, rejected)).await;
        }
    }
}

/// What the bytes read so far (`data`, in a buffer of `room` bytes) settle; `None` while more
/// may complete the request. An unknown key is settled as soon as its 56 bytes are in.
fn decide(data: &[u8], room: usize, users: &RefCell<UserTable<TrojanKey>>) -> Option<Handshake> {
    let user = match Request::peek_key(data) {
        Ok(key) => match users.borrow().get(key) {
            Some(user) => user,
            None => return Some(Handshake::Rejected("invalid user", Refusal::BadRequest)),
        },
        Err(TrojanError::UnexpectedEnd) => return None,
        Err(_) => return Some(Handshake::Rejected("not a trojan request", Refusal::BadRequest)),
    };
    let mut cur = data;
    match Request::decode(&mut cur) {
        Ok(request) => Some(Handshake::Accepted { request, user, consumed: data.len() - cur.len() }),
        Err(TrojanError::UnexpectedEnd) => (data.len() >= MAX_HEADER_LEN.min(room))
            .then_some(Handshake::Rejected("header too long", Refusal::BadRequest)),
        Err(e) => Some(Handshake::Rejected(reason(e), Refusal::BadRequest)),
    }
}

/// A decoding error's reason, for the log line.
fn reason(e: TrojanError) -> &'static str {
    match e {
        TrojanError::UnexpectedEnd => "header truncated",
        TrojanError::NotTrojan => "not a trojan request",
        TrojanError::BadCommand(_) => "unknown command",
        TrojanError::BadAddressType(_) => "unknown address type",
        TrojanError::BadDomain => "invalid domain name",
        TrojanError::MissingCrlf => "missing CRLF after the address",
        TrojanError::Oversize(_) => "oversized frame",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardray_core::slots::{UserId, UserKey};
    use shardray_wire::addr::Destination;

    fn table() -> RefCell<UserTable<TrojanKey>> {
        let mut t = UserTable::default();
        let key = shardray_wire::trojan::password_key("secret");
        t.insert(&UserKey { id: UserId::Trojan(key), slot: 0, level: 0, vision: false }).unwrap();
        RefCell::new(t)
    }

    fn request(password: &str, command: Command) -> Vec<u8> {
        let dest = Destination::from(std::net::SocketAddr::from(([127, 0, 0, 1], 80)));
        let req = Request { key: shardray_wire::trojan::password_key(password), command, destination: dest };
        let mut out = Vec::new();
        req.encode(&mut out);
        out
    }

    fn outcome(data: &[u8], users: &RefCell<UserTable<TrojanKey>>) -> Option<Result<usize, Refusal>> {
        decide(data, FIRST_READ, users).map(|h| match h {
            Handshake::Accepted { consumed, .. } => Ok(consumed),
            Handshake::Rejected(_, why) => Err(why),
        })
    }

    #[test]
    fn accepts_a_known_key_and_turns_everything_else_away() {
        let users = table();
        let mut good = request("secret", Command::Connect);
        let header = good.len();
        good.extend_from_slice(b"payload");
        assert_eq!(outcome(&good, &users), Some(Ok(header)));
        // Every prefix needs more bytes, none is settled wrongly.
        for cut in 0..header {
            assert_eq!(outcome(&good[..cut], &users), None, "cut at {cut}");
        }
        let wrong = request("other", Command::Connect);
        assert_eq!(outcome(&wrong[..56], &users), Some(Err(Refusal::BadRequest)), "an unknown key, at once");
        assert_eq!(outcome(b"GET / HTTP/1.1\r\n", &users), Some(Err(Refusal::BadRequest)));
        assert_eq!(outcome(b"z", &users), Some(Err(Refusal::BadRequest)));
        let udp = request("secret", Command::UdpAssociate);
        assert_eq!(outcome(&udp, &users), Some(Ok(udp.len())), "UDP ASSOCIATE is served");
        let mut bad_type = request("secret", Command::Connect);
        bad_type[59] = 9;
        assert_eq!(outcome(&bad_type, &users), Some(Err(Refusal::BadRequest)));
    }
}
