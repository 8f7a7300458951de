//! The Shadowsocks inbound (TCP): classic AEAD finds its user by trying each user's key on the
//! first length chunk; 2022 by the identity header (multi-user) or its one PSK, with the ±30 s
//! clock check. Every accepted salt goes through this shard's exact filter and the shards'
//! shared one, so a replayed first flight is refused wherever it lands. Anything else is
//! drained and closed (Shadowsocks has no fallbacks), at a time that does not depend on how
//! far the bytes parsed.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};
use shardray_core::stats::Refusal;
use shardray_wire::addr::Destination;
use shardray_wire::shadowsocks::{classic, ss2022, ChunkOpener, Error, MasterKey, Method, ReplayFilter, Salt};

use super::{fallback, read_first, ConnInfo};
use crate::ctx::{InboundRt, ShardCtx};
use crate::outbound::{forward, Session};
use crate::relay::{give_buffer, take_buffer};
use crate::shadowsocks::{unix_now, SsStream, RECV_BUF};
use crate::users::{ShadowsocksUsers, UserHandle};

/// Salts a shard's filter holds per 60 s rotation (about 40 bytes each); past that, new
/// handshakes are refused until the next rotation rather than risk a replay.
pub(crate) const REPLAY_CAPACITY: usize = 1 << 19;

/// A Shadowsocks inbound's keys and state on one shard.
pub(crate) struct SsInbound {
    pub(crate) users: RefCell<ShadowsocksUsers>,
    pub(crate) replay: RefCell<ReplayFilter>,
    /// The method of a 2022 inbound; `None` for classic AEAD.
    pub(crate) method_2022: Option<Method>,
    /// A multi-user 2022 inbound's identity PSK.
    pub(crate) server_psk: Option<MasterKey>,
}

/// How the handshake ended.
enum Handshake {
    Accepted(Box<Accepted>),
    Rejected(&'static str),
}

struct Accepted {
    user: UserHandle,
    method: Method,
    key: MasterKey,
    salt: Salt,
    destination: Destination,
    opener: ChunkOpener,
    /// The payload that came with the header.
    early: Vec<u8>,
    consumed: usize,
}

pub(super) async fn serve<S>(ctx: &Rc<ShardCtx>, inbound: &InboundRt, ss: &SsInbound, mut stream: S, info: &ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut buf = take_buffer(RECV_BUF);
    let mut len = 0;
    let handshake = ctx.policy(0).handshake;
    let reading = read_first(&mut stream, info.plain_fd, &mut buf, &mut len, |data, _| decide(ss, data));
    let reading = async { reading.await.unwrap_or_else(Handshake::Rejected) };
    let outcome = futures_lite::future::or(reading, async {
        glommio::timer::sleep(handshake).await;
        Handshake::Rejected("handshake timed out")
    })
    .await;
    match outcome {
        Handshake::Accepted(a) => {
            let Accepted { user, method, key, salt, destination, opener, early, consumed } = *a;
            let user = user.bind(&ctx.users.borrow());
            let stream = SsStream::server(stream, method, &key, &salt, opener, buf, (consumed, len));
            let session = Session {
                inbound,
                peer: info.peer,
                level: user.level,
                user: Some(user),
                dest: destination,
                client_fd: None,
            };
            // Boxed: the codecs make this session's state larger than a VLESS one's.
            let mut stream = Box::new(stream);
            forward(ctx, &mut *stream, session, &early, &[]).await;
        }
        Handshake::Rejected(reason) => {
            let rejected = fallback::Rejected { protocol: "shadowsocks", reason, why: Refusal::BadRequest, started };
            // Boxed: rare, and larger than a forwarded session's state. No fallbacks: drained.
            Box::pin(fallback::reject(ctx, inbound, &[], stream, &mut buf, len, info, rejected)).await;
            give_buffer(buf);
        }
    }
}

/// What the bytes read so far settle; `None` while more may complete the header. The first
/// flight is opened in a copy (the bytes after it are the same in both), so `data` stays as
/// it came.
fn decide(ss: &SsInbound, data: &[u8]) -> Option<Handshake> {
    let now = unix_now();
    let mut copy = data.to_vec();
    let users = ss.users.borrow();
    let decoded = match ss.method_2022 {
        None => users.find_classic(data).and_then(|(user, method, key)| {
            let (request, opener) = classic::decode_request(method, &key, &mut copy)?;
            ss.replay.borrow_mut().check_and_insert(request.salt.as_bytes(), now)?;
            Ok((user, method, key, request.salt, request.destination, opener, request.payload, request.consumed, None))
        }),
        Some(method) => ss2022::decode_request_with(
            method,
            ss.server_psk.as_ref(),
            &mut copy,
            now,
            &mut ss.replay.borrow_mut(),
            |hash| users.find_2022(hash).map(|(user, key)| ((user, key), key)),
        )
        .map(|(r, opener, (user, key))| {
            (user, method, key, r.salt, r.destination, opener, r.payload, r.consumed, Some(r.timestamp))
        }),
    };
    let (user, method, key, salt, destination, opener, early, consumed, timestamp) = match decoded {
        Ok(d) => d,
        Err(Error::UnexpectedEnd) => return None,
        Err(e) => return Some(Handshake::Rejected(reason(e))),
    };
    // New to this shard; a replay of what another shard accepted is caught here.
    if !shared_filter_takes(&salt, timestamp, now) {
        return Some(Handshake::Rejected(reason(Error::Replayed)));
    }
    let early = copy[early].to_vec();
    Some(Handshake::Accepted(Box::new(Accepted { user, method, key, salt, destination, opener, early, consumed })))
}

/// Records the salt in the shards' shared filter; `false` if some shard took it before. A 2022
/// salt is stamped with its header's timestamp, which a replay repeats; a classic salt has
/// none, so it is stamped with its arrival.
fn shared_filter_takes(salt: &Salt, timestamp: Option<u64>, now: u64) -> bool {
    let shared = crate::replay::SharedReplay::salts();
    let fingerprint: [u8; 16] = salt.as_bytes()[..16].try_into().expect("salts are 16 or 32 bytes");
    match timestamp {
        Some(t) => shared.insert(&fingerprint, t),
        None => shared.insert_arrival(&fingerprint, now),
    }
}

/// A decoding error's reason, for the log line.
fn reason(e: Error) -> &'static str {
    match e {
        Error::UnexpectedEnd => "header truncated",
        Error::Auth => "header authentication failed",
        Error::UnknownUser => "invalid user",
        Error::Address(_) => "invalid target address",
        Error::ChunkTooLong(_) => "chunk too long",
        Error::BadStreamType(_) => "wrong stream type",
        Error::BadTimestamp { .. } => "timestamp outside the clock window",
        Error::Replayed => "replayed salt",
        Error::ReplayFilterFull => "replay filter full",
        Error::NoPaddingNorPayload => "request without padding or payload",
        Error::HeaderOverrun => "padding runs past the header",
        Error::RequestSaltMismatch => "invalid request",
    }
}
