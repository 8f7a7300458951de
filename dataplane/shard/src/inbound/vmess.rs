//! The VMess inbound (AEAD, alterId 0): finds the user whose key made the auth ID, checks the
//! clock and the replay filter, opens the request header, answers with the response header and
//! relays the chunked body both ways, or, for a UDP request, carries one datagram per chunk to
//! and from the request's destination. Anything else is drained and closed as Xray does (VMess
//! has no fallbacks); a mux request becomes a mux.cool connection (`crate::mux`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};
use shardray_core::stats::Refusal;
use shardray_wire::vmess::header::MAX_REQUEST_LEN;
use shardray_wire::vmess::{peek_auth_id, Command, ReplayFilter, RequestHeader, RequestOpener, UserKey, VmessError};

use super::{fallback, read_first, ConnInfo, FIRST_READ};
use crate::ctx::{InboundRt, ShardCtx};
use crate::outbound::{forward, Session};
use crate::packet::{serve_packets, ChunkPackets, PacketSession};
use crate::users::{UserHandle, VmessUsers};
use crate::vmess::VmessStream;

/// How the handshake ended.
enum Handshake {
    Accepted { request: RequestHeader, user: UserHandle, consumed: usize },
    Rejected(&'static str, Refusal),
}

pub(super) async fn serve<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    users: &RefCell<VmessUsers>,
    replay: &RefCell<ReplayFilter>,
    mut stream: S,
    info: &ConnInfo,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut len = 0;
    let handshake = ctx.policy(0).handshake;
    // Scoped: the opener's state is not kept for the session's life.
    let outcome = {
        let mut state = Opening::default();
        let reading = read_first(&mut stream, info.plain_fd, &mut buf, FIRST_READ, &mut len, |data, _| {
            state.decide(data, users, replay, unix_now())
        });
        let reading = async { reading.await.unwrap_or_else(|e| Handshake::Rejected(e, Refusal::BadRequest)) };
        futures_lite::future::or(reading, async {
            glommio::timer::sleep(handshake).await;
            Handshake::Rejected("handshake timed out", Refusal::BadRequest)
        })
        .await
    };
    match outcome {
        Handshake::Accepted { request, user, consumed } => {
            let user = user.bind(&ctx.users.borrow());
            // A user over its limits is drained as a wrong user is (told of by `admit`). A mux
            // connection only looks: each of its sub-sessions is admitted on its own.
            let Ok(admitted) = crate::limits::admit(ctx, &inbound.tag, Some(&user), info.peer.ip()) else {
                return Box::pin(fallback::turn_away(ctx, inbound, &[], stream, &mut buf, len, info, started)).await;
            };
            // Boxed: the body codecs make this session's state larger than a VLESS one's.
            let mut stream = match VmessStream::server(stream, &request, &buf[consumed..len], random_seed()) {
                Ok(s) => Box::new(s),
                Err(_) => return,
            };
            drop(buf);
            if request.command == Command::Mux {
                drop(admitted);
                return Box::pin(crate::mux::serve(ctx, inbound, info.peer, user, stream, &[], &[])).await;
            }
            let dest = request.destination.clone().expect("TCP and UDP requests carry a destination");
            if request.command == Command::Udp {
                let session = PacketSession {
                    inbound,
                    peer: info.peer,
                    level: user.level,
                    user: Some(user),
                    idle_cap: Some(UDP_IDLE),
                    admitted,
                };
                let max_payload = stream.max_payload();
                let stream = RefCell::new(stream);
                let input = ChunkPackets { stream: &stream, dest: dest.clone(), max_payload, only_to_dest: false };
                let output = ChunkPackets { stream: &stream, dest, max_payload, only_to_dest: false };
                return serve_packets(ctx, session, input, output).await;
            }
            let session = Session {
                inbound,
                peer: info.peer,
                level: user.level,
                user: Some(user),
                dest,
                client_fd: None,
                admitted,
            };
            forward(ctx, &mut *stream, session, &[], &[]).await;
        }
        Handshake::Rejected(reason, why) => {
            let rejected = fallback::Rejected { protocol: "vmess", reason, why, started };
            // Boxed: rare, and larger than a forwarded session's state. No fallbacks: drained.
            Box::pin(fallback::reject(ctx, inbound, &[], stream, &mut buf, len, info, rejected)).await;
        }
    }
}

/// How long a UDP session may idle (Xray's UDP dispatcher gives up on a link after a minute).
const UDP_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Seconds since the Unix epoch: the clock auth IDs are checked against.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 32 bytes from the system's generator: the seed of the clear-text padding stream.
pub(crate) fn random_seed() -> [u8; 32] {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    // The system generator does not fail on Linux once booted; a zero seed only makes padding
    // bytes predictable, never the keys.
    let _ = ring::rand::SystemRandom::new().fill(&mut seed);
    seed
}

/// The handshake's progress across reads: the user is looked up once, when the auth ID is in;
/// the header opener then keeps what it derived.
#[derive(Default)]
struct Opening {
    found: Option<(UserHandle, RequestOpener)>,
    /// The header is opened in a copy, so that `data` keeps the body's bytes unchanged.
    scratch: Vec<u8>,
}

impl Opening {
    /// What the bytes read so far settle; `None` while more may complete the header.
    fn decide(
        &mut self,
        data: &[u8],
        users: &RefCell<VmessUsers>,
        replay: &RefCell<ReplayFilter>,
        now: u64,
    ) -> Option<Handshake> {
        if self.found.is_none() {
            let auth_id = match peek_auth_id(data) {
                Ok(id) => id,
                Err(_) => return None,
            };
            match users.borrow().find(&auth_id, now, &mut replay.borrow_mut()) {
                Ok((user, cmd_key)) => {
                    self.found = Some((user, RequestOpener::new(&UserKey::from_cmd_key(cmd_key))));
                }
                Err(e) => return Some(Handshake::Rejected(reason(e), Refusal::BadRequest)),
            }
        }
        let (_, opener) = self.found.as_mut().expect("found above");
        self.scratch.clear();
        self.scratch.extend_from_slice(&data[..data.len().min(MAX_REQUEST_LEN)]);
        match opener.open(&mut self.scratch) {
            Ok((request, consumed)) => {
                let (user, _) = self.found.take().expect("found above");
                Some(Handshake::Accepted { request, user, consumed })
            }
            Err(VmessError::UnexpectedEnd) => None,
            Err(e) => Some(Handshake::Rejected(reason(e), Refusal::BadRequest)),
        }
    }
}

/// A decoding error's reason, for the log line.
fn reason(e: VmessError) -> &'static str {
    match e {
        VmessError::UnexpectedEnd => "header truncated",
        VmessError::UnknownUser => "invalid user",
        VmessError::BadTimestamp(_) => "auth ID outside the clock window",
        VmessError::Replayed => "replayed auth ID",
        VmessError::BadLength(_) => "header length out of bounds",
        VmessError::BadTag | VmessError::BadChecksum => "header authentication failed",
        VmessError::BadVersion(_) => "unknown version",
        VmessError::BadSecurity(_) => "unsupported security",
        VmessError::BadCommand(_) => "unknown command",
        VmessError::BadAddressType(_) => "unknown address type",
        VmessError::BadDomain => "invalid domain name",
        VmessError::BadOptions(_) => "invalid options",
        VmessError::BadResponseAuth(_) | VmessError::PacketTooLarge(_) => "invalid request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardray_core::slots::{UserId, UserKey as SlotKey};
    use shardray_wire::addr::Destination;
    use shardray_wire::vmess::{Options, SealRandom, Security};
    use uuid::Uuid;

    const NOW: u64 = 1_780_000_000;

    fn table(ids: &[Uuid]) -> RefCell<VmessUsers> {
        let mut t = VmessUsers::default();
        for (i, id) in ids.iter().enumerate() {
            t.insert(&SlotKey { id: UserId::Uuid(*id), slot: i as u32, level: 0, vision: false }).unwrap();
        }
        RefCell::new(t)
    }

    fn request(id: &Uuid, command: Command, now: u64, nonce: u8) -> Vec<u8> {
        let header = RequestHeader {
            body_iv: [1; 16],
            body_key: [2; 16],
            response_auth: 3,
            options: Options::CHUNK_STREAM | Options::CHUNK_MASKING,
            security: Security::Aes128Gcm,
            command,
            destination: Some(Destination::from(std::net::SocketAddr::from(([127, 0, 0, 1], 80)))),
        };
        let random = SealRandom { auth_id: [nonce; 4], nonce: [nonce; 8], padding_len: 3, padding: [0; 15] };
        let mut out = Vec::new();
        header.seal(&UserKey::new(id), now, &random, &mut out);
        out
    }

    fn outcome(
        data: &[u8],
        users: &RefCell<VmessUsers>,
        replay: &RefCell<ReplayFilter>,
    ) -> Option<Result<usize, Refusal>> {
        let mut state = Opening::default();
        // Fed as reads would come: every prefix first.
        for cut in 0..data.len() {
            if let Some(h) = state.decide(&data[..cut], users, replay, NOW) {
                return Some(match h {
                    Handshake::Accepted { consumed, .. } => Ok(consumed),
                    Handshake::Rejected(_, why) => Err(why),
                });
            }
        }
        state.decide(data, users, replay, NOW).map(|h| match h {
            Handshake::Accepted { consumed, .. } => Ok(consumed),
            Handshake::Rejected(_, why) => Err(why),
        })
    }

    #[test]
    fn accepts_a_known_user_once_and_turns_everything_else_away() {
        let ids: Vec<Uuid> = (1..=5u128).map(Uuid::from_u128).collect();
        let users = table(&ids);
        let replay = RefCell::new(ReplayFilter::new());
        let good = request(&ids[3], Command::Tcp, NOW, 1);
        let mut with_body = good.clone();
        with_body.extend_from_slice(b"body bytes");
        assert_eq!(outcome(&with_body, &users, &replay), Some(Ok(good.len())));
        assert_eq!(outcome(&with_body, &users, &replay), Some(Err(Refusal::BadRequest)), "a replay");
        let stranger = request(&Uuid::from_u128(99), Command::Tcp, NOW, 2);
        assert_eq!(outcome(&stranger, &users, &replay), Some(Err(Refusal::BadRequest)));
        let stale = request(&ids[0], Command::Tcp, NOW - 121, 3);
        assert_eq!(outcome(&stale, &users, &replay), Some(Err(Refusal::BadRequest)));
        let udp = request(&ids[0], Command::Udp, NOW, 4);
        assert_eq!(outcome(&udp, &users, &replay), Some(Ok(udp.len())));
        let mux = request(&ids[1], Command::Mux, NOW, 8);
        assert_eq!(outcome(&mux, &users, &replay), Some(Ok(mux.len())), "mux is served");
        let mut altered = request(&ids[0], Command::Tcp, NOW, 5);
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(outcome(&altered, &users, &replay), Some(Err(Refusal::BadRequest)));
        // A removed user is no longer found; the others still are.
        users.borrow_mut().remove(&ids[3]);
        assert_eq!(outcome(&request(&ids[3], Command::Tcp, NOW, 6), &users, &replay), Some(Err(Refusal::BadRequest)));
        let last_user = request(&ids[4], Command::Tcp, NOW, 7);
        assert_eq!(outcome(&last_user, &users, &replay), Some(Ok(last_user.len())));
        assert_eq!(users.borrow().len(), 4);
    }
}
