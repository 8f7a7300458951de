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
use shardray_wire::shadowsocks::{
    classic, ss2022, ss2022_udp, ChunkOpener, Error, MasterKey, Method, ReplayFilter, Salt,
};

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
    // A pool buffer, for the first read of a request that arrived whole; `read_first` trades
    // it for a small one if the request trickles in.
    let mut buf = take_buffer(RECV_BUF).into_vec();
    let mut len = 0;
    let handshake = ctx.policy(0).handshake;
    let reading = read_first(&mut stream, info.plain_fd, &mut buf, RECV_BUF, &mut len, |data, _| decide(ss, data));
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
            // A user over its limits is drained as a wrong key is (told of by `admit`).
            let Ok(admitted) = crate::limits::admit(ctx, &inbound.tag, Some(&user), info.peer.ip()) else {
                Box::pin(fallback::turn_away(ctx, inbound, &[], stream, &mut buf, len, info, started)).await;
                return_to_pool(buf);
                return;
            };
            let recv = match buf.len() == RECV_BUF {
                true => buf.into_boxed_slice(),
                false => {
                    let mut pooled = take_buffer(RECV_BUF);
                    pooled[..len].copy_from_slice(&buf[..len]);
                    pooled
                }
            };
            let stream = SsStream::server(stream, method, &key, &salt, opener, recv, (consumed, len));
            let session = Session {
                inbound,
                peer: info.peer,
                level: user.level,
                user: Some(user),
                dest: destination,
                client_fd: None,
                admitted,
            };
            // Boxed: the codecs make this session's state larger than a VLESS one's.
            let mut stream = Box::new(stream);
            forward(ctx, &mut *stream, session, &early, &[]).await;
        }
        Handshake::Rejected(reason) => {
            let rejected = fallback::Rejected { protocol: "shadowsocks", reason, why: Refusal::BadRequest, started };
            // Boxed: rare, and larger than a forwarded session's state. No fallbacks: drained.
            Box::pin(fallback::reject(ctx, inbound, &[], stream, &mut buf, len, info, rejected)).await;
            return_to_pool(buf);
        }
    }
}

/// Gives the first-read buffer back to the pool if it is still the pool's (not traded for a
/// small one while the request trickled in).
fn return_to_pool(buf: Vec<u8>) {
    if buf.len() == RECV_BUF {
        give_buffer(buf.into_boxed_slice());
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

// === UDP (classic AEAD) ===

/// How long a Shadowsocks UDP client may idle before its flow is reclaimed (Xray's UDP
/// dispatcher gives up a link after a minute without packets).
const UDP_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Packets a flow may have waiting before newer ones are dropped.
const FLOW_QUEUE: usize = 256;

/// A client's flow: its user's key (every later packet must open with it) and its queue.
struct SsFlow {
    method: Method,
    key: MasterKey,
    tx: async_channel::Sender<(Destination, Vec<u8>)>,
}

/// Serves a classic Shadowsocks inbound's UDP socket until the task is cancelled. A packet is
/// `[salt][sealed(addr port payload)]`; the first from a client address finds its user by
/// trying each user's key (one attempt per user, nothing kept for garbage), and makes a flow:
/// one packet session of that user, full cone, replies sealed under a fresh salt each with
/// the same key. SO_REUSEPORT keeps a client's datagrams on one shard.
pub(crate) async fn datagram_loop(ctx: Rc<ShardCtx>, inbound: Rc<crate::ctx::InboundRt>, socket: std::net::UdpSocket) {
    use crate::packet::{serve_packets, PacketSession, MAX_DATAGRAM, MAX_DATAGRAM_FLOWS};
    let crate::ctx::InboundKind::Shadowsocks(ss) = &inbound.kind else { return };
    if let Some(method) = ss.method_2022 {
        return datagram_loop_2022(ctx.clone(), inbound.clone(), socket, method).await;
    }
    let socket = Rc::new(crate::packet::udp_from_std(socket));
    let mut flows: rustc_hash::FxHashMap<std::net::SocketAddr, SsFlow> = Default::default();
    // Room for the salt, the longest address, the largest payload and the tag, and one more.
    let mut buf = vec![0u8; MAX_DATAGRAM + 32 + 262 + 16 + 1];
    loop {
        let (n, client) = super::recv_datagram(&ctx, &inbound, &socket, &mut buf).await;
        let data = &buf[..n];
        if let Some(flow) = flows.get(&client).filter(|f| !f.tx.is_closed()) {
            let mut copy = data.to_vec();
            let Ok((dest, payload)) = classic::open_packet(flow.method, &flow.key, &mut copy) else {
                ctx.refusals.add(Refusal::BadRequest);
                continue;
            };
            if payload.len() > MAX_DATAGRAM {
                ctx.refusals.add(Refusal::OversizeDatagram);
                continue;
            }
            copy.truncate(payload.end);
            copy.drain(..payload.start);
            // A full queue drops the datagram, as a full socket buffer would.
            let _ = flow.tx.try_send((dest, copy));
            continue;
        }
        let Some((user, method, key, dest, payload)) = ss.users.borrow().open_classic_packet(data) else {
            ctx.refusals.add(Refusal::BadRequest);
            continue;
        };
        if payload.len() > MAX_DATAGRAM {
            ctx.refusals.add(Refusal::OversizeDatagram);
            continue;
        }
        flows.retain(|_, f| !f.tx.is_closed());
        if flows.len() >= MAX_DATAGRAM_FLOWS {
            ctx.refusals.add(Refusal::FlowLimit);
            continue;
        }
        let user = user.bind(&ctx.users.borrow());
        // A user over its limits: its datagram is dropped as a wrong key's is (told of by
        // `admit`), and its next one tries again.
        let Ok(admitted) = crate::limits::admit(&ctx, &inbound.tag, Some(&user), client.ip()) else { continue };
        let (tx, rx) = async_channel::bounded(FLOW_QUEUE);
        let _ = tx.try_send((dest, payload));
        flows.insert(client, SsFlow { method, key, tx });
        let (ctx, inbound, socket) = (ctx.clone(), inbound.clone(), socket.clone());
        glommio::spawn_local(async move {
            let _live = crate::ctx::LiveGuard::new(&ctx);
            let level = user.level;
            let session = PacketSession {
                inbound: &inbound,
                peer: client,
                user: Some(user),
                level,
                idle_cap: Some(UDP_IDLE),
                admitted,
            };
            let output = SsPacketsOut { socket, client, method, key, out: Vec::new() };
            serve_packets(&ctx, session, SsPacketsIn { rx }, output).await;
        })
        .detach();
    }
}

/// One client's opened packets, as the UDP loop hands them over.
struct SsPacketsIn {
    rx: async_channel::Receiver<(Destination, Vec<u8>)>,
}

impl crate::packet::PacketSource for SsPacketsIn {
    async fn recv(&mut self, out: &mut [u8]) -> std::io::Result<crate::packet::Recv> {
        match self.rx.recv().await {
            Ok((dest, packet)) => {
                out[..packet.len()].copy_from_slice(&packet);
                Ok(crate::packet::Recv::Packet(dest, packet.len()))
            }
            Err(_) => Ok(crate::packet::Recv::End),
        }
    }
}

/// Replies to one client from the inbound's socket, each sealed under a fresh salt.
struct SsPacketsOut {
    socket: Rc<glommio::net::UdpSocket>,
    client: std::net::SocketAddr,
    method: Method,
    key: MasterKey,
    out: Vec<u8>,
}

impl crate::packet::PacketSink for SsPacketsOut {
    async fn send(&mut self, peer: &Destination, payload: &[u8]) -> std::io::Result<bool> {
        let mut salt = [0u8; 32];
        let salt = &mut salt[..self.method.salt_len()];
        crate::shadowsocks::fill_random(salt);
        self.out.clear();
        classic::seal_packet(self.method, &self.key, salt, peer, payload, &mut self.out);
        // A client that went away is no reason to end the flow: it may be back.
        Ok(self.socket.send_to(&self.out, self.client).await.is_ok())
    }
}

// === UDP (2022) ===

/// A 2022 client session: its user's key, the window over its packet ids, where it last sent
/// from (replies go there), and its queue.
struct Ss2022Flow {
    key: MasterKey,
    window: ss2022_udp::ReplayWindow,
    client: Rc<std::cell::Cell<std::net::SocketAddr>>,
    tx: async_channel::Sender<(Destination, Vec<u8>)>,
}

/// Serves a 2022 inbound's UDP socket: flows by the client's session id (its address may
/// change), every packet's id through the session's sliding window and its timestamp within
/// 30 s; replies carry a server session id of their own and counted packet ids.
async fn datagram_loop_2022(
    ctx: Rc<ShardCtx>,
    inbound: Rc<crate::ctx::InboundRt>,
    socket: std::net::UdpSocket,
    method: Method,
) {
    use crate::packet::{serve_packets, PacketSession, MAX_DATAGRAM, MAX_DATAGRAM_FLOWS};
    let crate::ctx::InboundKind::Shadowsocks(ss) = &inbound.kind else { return };
    let socket = Rc::new(crate::packet::udp_from_std(socket));
    let mut flows: rustc_hash::FxHashMap<u64, Ss2022Flow> = Default::default();
    let mut buf = vec![0u8; MAX_DATAGRAM + 32 + 24 + 16 + 19 + 2 + 900 + 262 + 16 + 1];
    loop {
        let (n, client) = super::recv_datagram(&ctx, &inbound, &socket, &mut buf).await;
        let opened = {
            let users = ss.users.borrow();
            ss2022_udp::open_request(method, ss.server_psk.as_ref(), |h| users.find_2022(h), &mut buf[..n], unix_now())
        };
        let (packet, user, key) = match opened {
            Ok(got) => got,
            Err(_) => {
                ctx.refusals.add(Refusal::BadRequest);
                continue;
            }
        };
        if packet.payload.len() > MAX_DATAGRAM {
            ctx.refusals.add(Refusal::OversizeDatagram);
            continue;
        }
        let payload = buf[packet.payload.clone()].to_vec();
        if let Some(flow) = flows.get_mut(&packet.session_id).filter(|f| !f.tx.is_closed()) {
            // Another user's packet in this session, or a replay: dropped.
            if flow.key != key || !flow.window.check_and_insert(packet.packet_id) {
                ctx.refusals.add(Refusal::BadRequest);
                continue;
            }
            flow.client.set(client);
            let _ = flow.tx.try_send((packet.address, payload));
            continue;
        }
        flows.retain(|_, f| !f.tx.is_closed());
        if flows.len() >= MAX_DATAGRAM_FLOWS {
            ctx.refusals.add(Refusal::FlowLimit);
            continue;
        }
        let user = user.bind(&ctx.users.borrow());
        // A user over its limits: its datagram is dropped as a wrong key's is (told of by
        // `admit`), and its next one tries again.
        let Ok(admitted) = crate::limits::admit(&ctx, &inbound.tag, Some(&user), client.ip()) else { continue };
        let mut window = ss2022_udp::ReplayWindow::default();
        window.check_and_insert(packet.packet_id);
        let (tx, rx) = async_channel::bounded(FLOW_QUEUE);
        let _ = tx.try_send((packet.address, payload));
        let reply_to = Rc::new(std::cell::Cell::new(client));
        flows.insert(packet.session_id, Ss2022Flow { key, window, client: reply_to.clone(), tx });
        let (ctx, inbound, socket) = (ctx.clone(), inbound.clone(), socket.clone());
        let client_session = packet.session_id;
        glommio::spawn_local(async move {
            let _live = crate::ctx::LiveGuard::new(&ctx);
            let level = user.level;
            let session = PacketSession {
                inbound: &inbound,
                peer: client,
                user: Some(user),
                level,
                idle_cap: Some(UDP_IDLE),
                admitted,
            };
            let mut id = [0u8; 8];
            crate::shadowsocks::fill_random(&mut id);
            let output = Ss2022PacketsOut {
                socket,
                client: reply_to,
                method,
                key,
                session_id: u64::from_be_bytes(id),
                packet_id: 0,
                client_session,
                out: Vec::new(),
            };
            serve_packets(&ctx, session, SsPacketsIn { rx }, output).await;
        })
        .detach();
    }
}

/// Replies to one 2022 client session, from the inbound's socket to where it last sent from.
struct Ss2022PacketsOut {
    socket: Rc<glommio::net::UdpSocket>,
    client: Rc<std::cell::Cell<std::net::SocketAddr>>,
    method: Method,
    key: MasterKey,
    session_id: u64,
    packet_id: u64,
    client_session: u64,
    out: Vec<u8>,
}

impl crate::packet::PacketSink for Ss2022PacketsOut {
    async fn send(&mut self, peer: &Destination, payload: &[u8]) -> std::io::Result<bool> {
        let mut nonce = [0u8; 24];
        if self.method == Method::Blake3ChaCha20Poly1305 {
            crate::shadowsocks::fill_random(&mut nonce);
        }
        let seal = ss2022_udp::Seal {
            method: self.method,
            key: &self.key,
            identity_psk: None,
            session_id: self.session_id,
            packet_id: self.packet_id,
            client_session_id: Some(self.client_session),
            now: unix_now(),
            nonce,
        };
        self.packet_id += 1;
        self.out.clear();
        ss2022_udp::seal(&seal, peer, payload, &mut self.out);
        Ok(self.socket.send_to(&self.out, self.client.get()).await.is_ok())
    }
}
