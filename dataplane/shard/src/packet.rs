//! The packet path: UDP sessions. An inbound hands over a packet session (packets framed in
//! its stream, as VLESS and Trojan carry them, or one client's datagrams on its UDP socket,
//! as dokodemo-door gets them); it is routed once, by its first packet's destination and
//! `network: "udp"`, as Xray's UDP dispatcher routes it, then relayed packet by packet until
//! it idles out, the client ends it, or its user is removed.
//!
//! Freedom sends from one UDP socket per session, full cone as Xray's freedom is: every
//! packet may go to its own destination, each checked by the same safety rules as a TCP
//! dial, and replies from any address the session may reach come back with their source.
//! Blackhole drops. A Trojan outbound frames the packets into its own stream; a VLESS one
//! sends them as XUDP (each with its address), or opens a `Command::Udp` session to the
//! first packet's destination.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::UdpSocket;
use glommio::timer::Timer;
use rustc_hash::FxHashMap;
use shardray_core::router::{Decision, RouteInput};
use shardray_core::slots::NO_SLOT;
use shardray_core::spec::{DnsOutboundSpec, FreedomSpec, LogLevel, OutboundProtocol};
use shardray_core::stats::Refusal;
use shardray_wire::addr::Destination;
use shardray_wire::trojan::{TrojanError, UdpFrame};

use crate::ctx::{InboundRt, Resolved, Routes, ShardCtx};
use crate::dns::MessageAnswer;
use crate::limits::Admitted;
use crate::outbound::trojan::Upstream;
use crate::outbound::vless::VlessResponse;
use crate::outbound::{check_destination, resolve, resolve_system, route, unix_now, Session, SessionMeter, Via};
use crate::relay::{Meter, RelayTimeouts};
use crate::users::{SessionWatch, UserHandle, UserState};

/// The largest datagram payload carried either way (Xray's buffer size, and the Trojan frame
/// limit); larger ones are dropped and counted as `oversize_datagram`.
pub(crate) const MAX_DATAGRAM: usize = shardray_wire::trojan::MAX_UDP_PAYLOAD;

/// Live UDP sessions one user may hold on one shard; more are refused (`udp_flow_limit`).
pub(crate) const MAX_FLOWS_PER_USER: u32 = 64;

/// Client addresses one dokodemo-door inbound tracks on one shard at a time.
pub(crate) const MAX_DATAGRAM_FLOWS: usize = 4096;

/// Destinations a session remembers the verdict of (the oldest is forgotten first).
const VERDICTS: usize = 32;

/// Answers of a `dns` outbound leg waiting for the relay; more are dropped, as a full socket would.
const DNS_ANSWERS: usize = 256;

/// A buffer that holds the largest datagram and shows a larger one as one byte more.
const RECV_ROOM: usize = MAX_DATAGRAM + 1;

// === the two sides of a packet session ===

/// What reading a side of a packet session gave.
pub(crate) enum Recv {
    /// A packet of this many bytes (at the front of the buffer), for (or from) this peer.
    Packet(Destination, usize),
    /// A packet above `MAX_DATAGRAM`, dropped.
    Oversize,
    /// The side has ended (its stream closed).
    End,
}

/// Where packets come from: the client's side, or the outbound's.
pub(crate) trait PacketSource {
    /// The next packet, read into `out` (`RECV_ROOM` bytes).
    async fn recv(&mut self, out: &mut [u8]) -> io::Result<Recv>;
}

/// Where packets go: `Ok(false)` when the packet was dropped (refused, or unreachable).
pub(crate) trait PacketSink {
    /// Sends `payload` to (or, towards the client, from) `peer`.
    async fn send(&mut self, peer: &Destination, payload: &[u8]) -> io::Result<bool>;
}

/// How packets are framed in a stream.
#[derive(Debug, Clone)]
pub(crate) enum Framing {
    /// VLESS `Command::Udp`: `[len u16][payload]`, every packet to (and from) the header's
    /// destination.
    Vless(Destination),
    /// Trojan: `[addr][port][len u16][CRLF][payload]`, each packet with its own address.
    Trojan,
    /// XUDP in a VLESS `Command::Mux` stream, as a client sends it to its server: one UDP
    /// sub-session (0), the first packet in its New frame, every packet with its own address
    /// in Keep frames; the server's answers come the same way.
    Xudp,
}

/// One side of a stream shared by a reader and a writer in the same task: each poll borrows
/// it for the call only.
pub(crate) struct Half<'a, S>(pub(crate) &'a RefCell<S>);

impl<S: AsyncRead + Unpin> AsyncRead for Half<'_, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Half<'_, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Room for the longest frame, a Trojan header with a 255-byte domain (263 bytes) and the
/// largest payload: whatever part of a frame the buffer holds, a read always has room.
const FRAME_ROOM: usize = MAX_DATAGRAM + 300;

/// Reads packets framed in a stream. A malformed frame ends the stream with `InvalidData`
/// (one decode attempt, nothing kept); a VLESS packet above the limit is skipped.
pub(crate) struct FrameReader<R> {
    r: R,
    framing: Framing,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes of an oversize packet still to skip.
    skip: usize,
    /// XUDP: the destination of the sub-session's New frame.
    xudp_dest: Option<Destination>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `r` whose first bytes, already read, are `early`.
    pub(crate) fn new(r: R, framing: Framing, early: &[u8]) -> Self {
        let mut buf = vec![0u8; FRAME_ROOM.max(early.len())].into_boxed_slice();
        buf[..early.len()].copy_from_slice(early);
        FrameReader { r, framing, buf, start: 0, end: early.len(), skip: 0, xudp_dest: None }
    }

    /// One frame from the bytes held, if they hold a whole one.
    fn decode(&mut self, out: &mut [u8]) -> io::Result<Option<Recv>> {
        if matches!(self.framing, Framing::Xudp) {
            return self.decode_xudp(out);
        }
        let data = &self.buf[self.start..self.end];
        let mut cur = data;
        let (peer, payload) = match &self.framing {
            Framing::Vless(dest) => {
                let Some(len) = shardray_wire::vless::packet_len(data) else { return Ok(None) };
                if len > MAX_DATAGRAM {
                    self.start += 2;
                    self.skip = len;
                    return Ok(Some(Recv::Oversize));
                }
                match shardray_wire::vless::decode_packet(&mut cur) {
                    Ok(payload) => (dest.clone(), payload),
                    Err(_) => return Ok(None),
                }
            }
            Framing::Xudp => unreachable!("decoded above"),
            Framing::Trojan => match UdpFrame::decode(&mut cur) {
                Ok(frame) => (frame.destination, frame.payload),
                Err(TrojanError::UnexpectedEnd) => return Ok(None),
                Err(TrojanError::Oversize(len)) => {
                    // Skipped whole: the address, port, length and CRLF, then the payload.
                    let mut addr = data;
                    let _ = shardray_wire::addr::SOCKS_TYPES.decode_addr(&mut addr);
                    let header = data.len() - addr.len() + 6;
                    if data.len() < header {
                        return Ok(None);
                    }
                    self.start += header;
                    self.skip = usize::from(len);
                    return Ok(Some(Recv::Oversize));
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            },
        };
        let n = payload.len();
        out[..n].copy_from_slice(payload);
        self.start += data.len() - cur.len();
        Ok(Some(Recv::Packet(peer, n)))
    }

    /// The next XUDP packet among the frames held: frames without data (a New without a
    /// first packet, a KeepAlive) are passed over; a TCP sub-session is refused.
    fn decode_xudp(&mut self, out: &mut [u8]) -> io::Result<Option<Recv>> {
        use shardray_wire::xudp::{Frame, Status};
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        loop {
            let data = &self.buf[self.start..self.end];
            if let Some((head, len)) = Frame::data_len(data) {
                if len > MAX_DATAGRAM && data.len() >= head {
                    self.start += head;
                    self.skip = len;
                    return Ok(Some(Recv::Oversize));
                }
            }
            let mut cur = data;
            let frame = match Frame::decode(&mut cur) {
                Ok(frame) => frame,
                Err(shardray_wire::DecodeError::UnexpectedEnd) => return Ok(None),
                Err(_) => return Err(invalid("invalid mux frame")),
            };
            let consumed = data.len() - cur.len();
            let peer = match frame.status {
                Status::New { network: 2, destination } => {
                    self.xudp_dest = Some(destination.clone());
                    Some(destination)
                }
                Status::New { .. } => return Err(invalid("a mux TCP sub-session in an XUDP stream")),
                Status::Keep(Some(d)) => Some(d),
                Status::Keep(None) => match &self.xudp_dest {
                    Some(d) => Some(d.clone()),
                    None => return Err(invalid("mux Keep frame before New")),
                },
                Status::End => return Ok(Some(Recv::End)),
                Status::KeepAlive => None,
            };
            let n = frame.data.len();
            match peer {
                Some(peer) if n > 0 => {
                    out[..n].copy_from_slice(frame.data);
                    self.start += consumed;
                    return Ok(Some(Recv::Packet(peer, n)));
                }
                _ => self.start += consumed,
            }
        }
    }
}

impl<R: AsyncRead + Unpin> PacketSource for FrameReader<R> {
    async fn recv(&mut self, out: &mut [u8]) -> io::Result<Recv> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.end - self.start);
                self.start += n;
                self.skip -= n;
            }
            if self.skip == 0 {
                if let Some(got) = self.decode(out)? {
                    return Ok(got);
                }
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = self.r.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                if self.end > 0 || self.skip > 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended inside a packet"));
                }
                return Ok(Recv::End);
            }
            self.end += n;
        }
    }
}

/// Writes packets framed into a stream, the first after `prefix` (a response or request
/// header), each flushed at once.
pub(crate) struct FrameWriter<W> {
    w: W,
    framing: Framing,
    prefix: Vec<u8>,
    out: Vec<u8>,
    /// XUDP: the sub-session's New frame went out.
    opened: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(w: W, framing: Framing, prefix: Vec<u8>) -> Self {
        FrameWriter { w, framing, prefix, out: Vec::with_capacity(MAX_DATAGRAM + 300), opened: false }
    }
}

impl<W: AsyncWrite + Unpin> PacketSink for FrameWriter<W> {
    async fn send(&mut self, peer: &Destination, payload: &[u8]) -> io::Result<bool> {
        self.out.clear();
        self.out.append(&mut self.prefix);
        let framed = match &self.framing {
            Framing::Vless(_) => shardray_wire::vless::encode_packet_header(payload.len(), &mut self.out).is_some(),
            Framing::Trojan => UdpFrame::encode_header(peer, payload.len(), &mut self.out).is_ok(),
            // A GlobalID of zeros, as Xray's client sends for a flow it does not share.
            Framing::Xudp if !self.opened => {
                use shardray_wire::xudp::{Frame, UDP};
                self.opened =
                    Frame::encode_new(0, UDP, peer, Some(&[0; 8]), Some(payload.len()), &mut self.out).is_some();
                self.opened
            }
            Framing::Xudp => {
                shardray_wire::xudp::Frame::encode_udp_keep(0, peer, payload.len(), &mut self.out).is_some()
            }
        };
        if !framed {
            return Ok(false);
        }
        self.out.extend_from_slice(payload);
        self.w.write_all(&self.out).await?;
        self.w.flush().await?;
        Ok(true)
    }
}

/// One dokodemo-door client's datagrams, as its inbound's UDP loop hands them over; all go
/// to the inbound's destination.
pub(crate) struct DatagramsIn {
    pub(crate) rx: async_channel::Receiver<Vec<u8>>,
    pub(crate) dest: Destination,
}

impl PacketSource for DatagramsIn {
    async fn recv(&mut self, out: &mut [u8]) -> io::Result<Recv> {
        match self.rx.recv().await {
            Ok(packet) => {
                out[..packet.len()].copy_from_slice(&packet);
                Ok(Recv::Packet(self.dest.clone(), packet.len()))
            }
            Err(_) => Ok(Recv::End),
        }
    }
}

/// Replies to one dokodemo-door client, from the inbound's own socket (the address the client
/// sent to).
pub(crate) struct DatagramsOut {
    pub(crate) socket: Rc<UdpSocket>,
    pub(crate) client: SocketAddr,
}

impl PacketSink for DatagramsOut {
    async fn send(&mut self, _: &Destination, payload: &[u8]) -> io::Result<bool> {
        // A client that went away is no reason to end the flow: it may be back.
        Ok(self.socket.send_to(payload, self.client).await.is_ok())
    }
}

// === freedom ===

/// What a session's freedom socket does with packets for one destination.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    Send(SocketAddr),
    Refused(Refusal),
    /// The name did not resolve: dropped.
    Unreachable,
}

/// A session's freedom leg: its own UDP socket (dual-stack where the host has IPv6) and the
/// verdicts on the destinations it has sent to.
struct FreedomLeg<'a> {
    ctx: &'a ShardCtx,
    routes: &'a Routes,
    decision: Decision,
    session: &'a Session<'a>,
    spec: &'a FreedomSpec,
    socket: UdpSocket,
    v6: bool,
    verdicts: RefCell<Vec<(Destination, Verdict)>>,
}

/// A bound UDP socket (a listener's, or one `Via` made) handed to glommio.
pub(crate) fn udp_from_std(socket: std::net::UdpSocket) -> UdpSocket {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor is a bound, nonblocking UDP socket that nothing else owns.
    unsafe { UdpSocket::from_raw_fd(socket.into_raw_fd()) }
}

impl<'a> FreedomLeg<'a> {
    fn new(
        ctx: &'a ShardCtx,
        routes: &'a Routes,
        decision: Decision,
        session: &'a Session<'a>,
        spec: &'a FreedomSpec,
        via: &Via,
    ) -> io::Result<Self> {
        let (socket, v6) = match via.bind {
            None if *via == Via::default() => match UdpSocket::bind("[::]:0") {
                Ok(s) => (s, true),
                Err(_) => (UdpSocket::bind("0.0.0.0:0")?, false),
            },
            // The family of `sendThrough`, else both (an IPv6 socket takes IPv4 too).
            bind => {
                let local = SocketAddr::new(bind.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED.into()), 0);
                (udp_from_std(via.udp_socket(local)?), local.is_ipv6())
            }
        };
        Ok(FreedomLeg { ctx, routes, decision, session, spec, socket, v6, verdicts: RefCell::default() })
    }

    /// The verdict on `dest`: remembered, or judged now (resolving a name, checking every
    /// address it has against the safety rules).
    async fn verdict(&self, dest: &Destination) -> Verdict {
        if let Some((_, v)) = self.verdicts.borrow().iter().find(|(d, _)| d == dest) {
            return *v;
        }
        let v = self.judge(dest).await;
        let mut verdicts = self.verdicts.borrow_mut();
        if verdicts.len() >= VERDICTS {
            verdicts.remove(0);
        }
        verdicts.push((dest.clone(), v));
        v
    }

    async fn judge(&self, dest: &Destination) -> Verdict {
        let target = match &self.spec.redirect {
            Some(r) => Destination { addr: r.addr.clone(), port: if r.port == 0 { dest.port } else { r.port } },
            None => dest.clone(),
        };
        let (tag, peer) = (&self.session.inbound.tag, self.session.peer);
        let addrs = match resolve(self.ctx, &target.addr, target.port, self.spec.domain_strategy).await {
            Ok(addrs) => addrs,
            Err(e) => {
                self.ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} to udp:{target}: {e}"));
                return Verdict::Unreachable;
            }
        };
        // A redirect's address is the operator's, named in the outbound: it passes as named.
        let decision =
            Decision { explicit_dest: self.decision.explicit_dest || self.spec.redirect.is_some(), ..self.decision };
        let mut last = Verdict::Unreachable;
        for addr in addrs {
            match check_destination(self.ctx, self.routes, addr, &target, decision, self.session, false) {
                Ok(()) => return Verdict::Send(addr),
                Err(why) => last = Verdict::Refused(why),
            }
        }
        if let Verdict::Refused(why) = last {
            self.ctx.log.error(
                LogLevel::Info,
                format_args!("[{tag}] {peer} to udp:{target}: refused: {} (every packet dropped)", why.reason()),
            );
        }
        last
    }

    async fn send(&self, dest: &Destination, payload: &[u8]) -> bool {
        match self.verdict(dest).await {
            Verdict::Send(addr) => {
                let to = match (self.v6, addr) {
                    (true, SocketAddr::V4(a)) => SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port()),
                    _ => addr,
                };
                self.socket.send_to(payload, to).await.is_ok()
            }
            Verdict::Refused(why) => {
                self.ctx.refusals.add(why);
                false
            }
            Verdict::Unreachable => false,
        }
    }

    /// The next reply; one from a private or loopback address comes in only from an address
    /// the session was allowed to send to.
    async fn recv(&self, out: &mut [u8]) -> io::Result<Recv> {
        loop {
            let (n, from) = self.socket.recv_from(out).await?;
            let from = SocketAddr::new(from.ip().to_canonical(), from.port());
            if n > MAX_DATAGRAM {
                return Ok(Recv::Oversize);
            }
            let allowed = !shardray_core::router::is_private(from.ip())
                || self.verdicts.borrow().iter().any(|(_, v)| matches!(v, Verdict::Send(a) if a.ip() == from.ip()));
            if allowed {
                return Ok(Recv::Packet(Destination::from(from), n));
            }
        }
    }
}

// === dns ===

/// A session's `dns` outbound leg: each query datagram is answered by the resolver in a task
/// of its own (a slow name holds up no other query), and the answers queue for `recv`.
struct DnsLeg<'a> {
    ctx: &'a ShardCtx,
    routes: &'a Routes,
    decision: Decision,
    session: &'a Session<'a>,
    spec: &'a DnsOutboundSpec,
    answers: (async_channel::Sender<DnsReply>, async_channel::Receiver<DnsReply>),
    /// Queries of this session still being answered: past `MAX_DNS_IN_FLIGHT` new ones are
    /// dropped, so that one client cannot pile up tasks, sockets and control-side lookups.
    in_flight: Rc<Cell<usize>>,
}

/// Queries one `dns` outbound session may have unanswered at once (a resolver stub retries).
const MAX_DNS_IN_FLIGHT: usize = 64;

/// An answer for the client, from the destination its query was sent to.
type DnsReply = (Destination, Vec<u8>);

impl<'a> DnsLeg<'a> {
    fn send(&self, dest: &Destination, payload: &[u8]) -> impl std::future::Future<Output = bool> + '_ {
        let (dest, query) = (dest.clone(), payload.to_vec());
        async move {
            let Some(dns) = self.ctx.dns.clone() else { return false };
            if self.in_flight.get() >= MAX_DNS_IN_FLIGHT {
                return false;
            }
            let forward = crate::outbound::dns::forward_target(
                self.ctx,
                self.routes,
                self.spec,
                &dest,
                self.decision,
                self.session,
                false,
            )
            .await;
            let (spec, answers, in_flight) = (self.spec.clone(), self.answers.0.clone(), self.in_flight.clone());
            in_flight.set(in_flight.get() + 1);
            glommio::spawn_local(async move {
                let answer = dns.answer(query, &spec, forward).await;
                in_flight.set(in_flight.get() - 1);
                if let MessageAnswer::Reply(reply) = answer {
                    let _ = answers.try_send((dest, reply));
                }
            })
            .detach();
            true
        }
    }

    async fn recv(&self, out: &mut [u8]) -> io::Result<Recv> {
        let Ok((from, reply)) = self.answers.1.recv().await else { return Ok(Recv::End) };
        if reply.len() > out.len().min(MAX_DATAGRAM) {
            return Ok(Recv::Oversize);
        }
        out[..reply.len()].copy_from_slice(&reply);
        Ok(Recv::Packet(from, reply.len()))
    }
}

// === shadowsocks ===

/// A session's Shadowsocks leg: one UDP socket connected to the server, packets sealed one by
/// one (classic: a fresh salt each; 2022: this session's id and counted packet ids).
struct SsLeg {
    socket: UdpSocket,
    method: shardray_wire::shadowsocks::Method,
    key: shardray_wire::shadowsocks::MasterKey,
    identity: Option<shardray_wire::shadowsocks::MasterKey>,
    session_id: u64,
    packet_id: Cell<u64>,
    /// The server's session id last seen, and the window over its packet ids.
    server: RefCell<(u64, shardray_wire::shadowsocks::ss2022_udp::ReplayWindow)>,
}

impl SsLeg {
    async fn open(
        server: &Destination,
        keys: (
            shardray_wire::shadowsocks::Method,
            shardray_wire::shadowsocks::MasterKey,
            Option<shardray_wire::shadowsocks::MasterKey>,
        ),
    ) -> io::Result<SsLeg> {
        let addr = *resolve_system(&server.addr, server.port, Default::default())
            .await?
            .first()
            .ok_or_else(|| io::Error::other("no address"))?;
        let socket = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        socket.connect(addr).await?;
        let mut id = [0u8; 8];
        crate::shadowsocks::fill_random(&mut id);
        let (method, key, identity) = keys;
        Ok(SsLeg {
            socket,
            method,
            key,
            identity,
            session_id: u64::from_be_bytes(id),
            packet_id: Cell::new(0),
            server: RefCell::default(),
        })
    }

    async fn send(&self, dest: &Destination, payload: &[u8]) -> io::Result<bool> {
        use shardray_wire::shadowsocks::{classic, ss2022_udp};
        let mut out = Vec::with_capacity(payload.len() + 128);
        if self.method.is_2022() {
            let mut nonce = [0u8; 24];
            crate::shadowsocks::fill_random(&mut nonce);
            let seal = ss2022_udp::Seal {
                method: self.method,
                key: &self.key,
                identity_psk: self.identity.as_ref(),
                session_id: self.session_id,
                packet_id: self.packet_id.get(),
                client_session_id: None,
                now: unix_now(),
                nonce,
            };
            self.packet_id.set(self.packet_id.get() + 1);
            ss2022_udp::seal(&seal, dest, payload, &mut out);
        } else {
            let mut salt = [0u8; 32];
            let salt = &mut salt[..self.method.salt_len()];
            crate::shadowsocks::fill_random(salt);
            classic::seal_packet(self.method, &self.key, salt, dest, payload, &mut out);
        }
        // A server briefly unreachable drops the packet, not the session.
        Ok(self.socket.send(&out).await.is_ok())
    }

    async fn recv(&self, out: &mut [u8]) -> io::Result<Recv> {
        use shardray_wire::shadowsocks::{classic, ss2022_udp};
        let mut buf = vec![0u8; MAX_DATAGRAM + 1400];
        loop {
            let n = match self.socket.recv(&mut buf).await {
                Ok(n) => n,
                // An ICMP error from a server not there yet: wait for the next reply.
                Err(_) => continue,
            };
            let data = &mut buf[..n];
            let (source, payload) = if self.method.is_2022() {
                let Ok(p) = ss2022_udp::open_response(self.method, &self.key, data, unix_now()) else { continue };
                if p.client_session_id != self.session_id {
                    continue;
                }
                let mut server = self.server.borrow_mut();
                if server.0 != p.session_id {
                    *server = (p.session_id, Default::default());
                }
                if !server.1.check_and_insert(p.packet_id) {
                    continue;
                }
                (p.address, p.payload)
            } else {
                let Ok(got) = classic::open_packet(self.method, &self.key, data) else { continue };
                got
            };
            if payload.len() > MAX_DATAGRAM {
                return Ok(Recv::Oversize);
            }
            let len = payload.len();
            out[..len].copy_from_slice(&buf[payload]);
            return Ok(Recv::Packet(source, len));
        }
    }
}

// === socks ===

/// A session's SOCKS5 leg: the UDP ASSOCIATE's control stream, and one UDP socket connected
/// to the relay address the server answered.
struct SocksLeg {
    control: RefCell<Upstream>,
    socket: UdpSocket,
}

impl SocksLeg {
    async fn open(
        client: &crate::outbound::proxy::ProxyClient,
        spec: &shardray_core::spec::ProxyOutboundSpec,
        via: &Via,
    ) -> io::Result<SocksLeg> {
        let (control, relay) = client.associate(spec, via).await?;
        let server = *resolve_system(&spec.server.addr, spec.server.port, Default::default())
            .await?
            .first()
            .ok_or_else(|| io::Error::other("no address"))?;
        let mut relay = *resolve_system(&relay.addr, relay.port, Default::default())
            .await?
            .first()
            .ok_or_else(|| io::Error::other("no relay address"))?;
        // An unspecified relay address means the server's own.
        if relay.ip().is_unspecified() {
            relay.set_ip(server.ip());
        }
        let socket = udp_from_std(via.udp_socket(relay)?);
        socket.connect(relay).await?;
        Ok(SocksLeg { control: RefCell::new(control), socket })
    }

    async fn send(&self, dest: &Destination, payload: &[u8]) -> io::Result<bool> {
        let mut out = Vec::with_capacity(payload.len() + 262);
        shardray_wire::socks::UdpHeader::encode(dest, &mut out);
        out.extend_from_slice(payload);
        Ok(self.socket.send(&out).await.is_ok())
    }

    async fn recv(&self, out: &mut [u8]) -> io::Result<Recv> {
        let closed = async {
            let mut control = Half(&self.control);
            let mut sink = [0u8; 256];
            loop {
                match control.read(&mut sink).await {
                    Ok(0) | Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "the server closed the association",
                        ))
                    }
                    Ok(_) => {}
                }
            }
        };
        let datagram = async {
            let mut buf = vec![0u8; MAX_DATAGRAM + 263];
            loop {
                let Ok(n) = self.socket.recv(&mut buf).await else { continue };
                let mut cur = &buf[..n];
                let Ok(source) = shardray_wire::socks::UdpHeader::decode(&mut cur) else { continue };
                if cur.len() > MAX_DATAGRAM {
                    return Ok(Recv::Oversize);
                }
                let len = cur.len();
                out[..len].copy_from_slice(cur);
                return Ok(Recv::Packet(source, len));
            }
        };
        futures_lite::future::or(closed, datagram).await
    }
}

// === the upstream leg, whichever outbound ===

/// A VMess UDP session's packets, either side: one per body chunk, every one to (and, back,
/// from) the request's destination; packets from anyone else are dropped, as VMess has no
/// address to name them with.
pub(crate) struct ChunkPackets<'a, S> {
    pub(crate) stream: &'a RefCell<S>,
    pub(crate) dest: Destination,
    /// Towards the server (the outbound's side), only packets for `dest` go (the others
    /// cannot be named); towards the client every answer goes, whatever its source (a name
    /// resolved, a redirect), as Xray writes back every packet of the link.
    pub(crate) only_to_dest: bool,
    /// The most one chunk carries (with padding, a little under 8192 bytes).
    pub(crate) max_payload: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PacketSource for ChunkPackets<'_, S> {
    async fn recv(&mut self, out: &mut [u8]) -> io::Result<Recv> {
        // A read hands out one chunk's plaintext at most, and a packet's chunk fits `out`.
        let n = Half(self.stream).read(out).await?;
        Ok(match n {
            0 => Recv::End,
            n if n > MAX_DATAGRAM => Recv::Oversize,
            n => Recv::Packet(self.dest.clone(), n),
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> PacketSink for ChunkPackets<'_, S> {
    async fn send(&mut self, peer: &Destination, payload: &[u8]) -> io::Result<bool> {
        // Past what one chunk carries: dropped, as a datagram too large for the path is.
        if (self.only_to_dest && *peer != self.dest) || payload.len() > self.max_payload {
            return Ok(false);
        }
        let mut half = Half(self.stream);
        // One write is one chunk: a datagram is far below what a write seals at once.
        half.write_all(payload).await?;
        half.flush().await?;
        Ok(true)
    }
}

/// The outbound's reading side.
enum UpIn<'a> {
    Freedom(&'a FreedomLeg<'a>),
    Dns(&'a DnsLeg<'a>),
    Blackhole,
    Frames(FrameReader<Half<'a, Upstream>>),
    Shadowsocks(&'a SsLeg),
    Socks(&'a SocksLeg),
    /// A VLESS server's packets, after its response header.
    VlessFrames(FrameReader<VlessResponse<Half<'a, Upstream>>>),
    /// A VMess server's packets, one per chunk.
    VmessChunks(ChunkPackets<'a, Upstream>),
}

impl PacketSource for UpIn<'_> {
    async fn recv(&mut self, out: &mut [u8]) -> io::Result<Recv> {
        match self {
            UpIn::Freedom(leg) => leg.recv(out).await,
            UpIn::Dns(leg) => leg.recv(out).await,
            UpIn::Blackhole => std::future::pending().await,
            UpIn::Frames(r) => r.recv(out).await,
            UpIn::Shadowsocks(leg) => leg.recv(out).await,
            UpIn::Socks(leg) => leg.recv(out).await,
            UpIn::VlessFrames(r) => r.recv(out).await,
            UpIn::VmessChunks(c) => c.recv(out).await,
        }
    }
}

/// The outbound's writing side.
enum UpOut<'a> {
    Freedom(&'a FreedomLeg<'a>),
    Dns(&'a DnsLeg<'a>),
    Blackhole,
    Frames(FrameWriter<Half<'a, Upstream>>),
    Shadowsocks(&'a SsLeg),
    Socks(&'a SocksLeg),
    /// VLESS carries one destination per session: packets for another are dropped.
    VlessFrames(FrameWriter<Half<'a, Upstream>>, Destination),
    VmessChunks(ChunkPackets<'a, Upstream>),
}

impl PacketSink for UpOut<'_> {
    async fn send(&mut self, peer: &Destination, payload: &[u8]) -> io::Result<bool> {
        match self {
            UpOut::Freedom(leg) => Ok(leg.send(peer, payload).await),
            UpOut::Dns(leg) => Ok(leg.send(peer, payload).await),
            UpOut::Blackhole => Ok(false),
            UpOut::Frames(w) => w.send(peer, payload).await,
            UpOut::Shadowsocks(leg) => leg.send(peer, payload).await,
            UpOut::Socks(leg) => leg.send(peer, payload).await,
            UpOut::VlessFrames(w, dest) if peer == dest => w.send(peer, payload).await,
            UpOut::VlessFrames(..) => Ok(false),
            UpOut::VmessChunks(c) => c.send(peer, payload).await,
        }
    }
}

// === flow limits ===

/// Live UDP sessions per user on this shard: by counter slot when the user has an email
/// (one count over every inbound the email is in), else by inbound table and record.
#[derive(Default)]
pub(crate) struct FlowCounts(RefCell<FxHashMap<(usize, u32), u32>>);

/// A session's place in `FlowCounts`, given back on drop.
pub(crate) struct FlowGuard<'a> {
    counts: &'a FlowCounts,
    key: (usize, u32),
}

impl FlowCounts {
    /// Takes one of the user's flows, or `None` at the limit.
    fn try_open(&self, inbound: &InboundRt, user: &UserHandle) -> Option<FlowGuard<'_>> {
        let key =
            if user.slot != NO_SLOT { (0, user.slot) } else { (inbound as *const InboundRt as usize, user.record()) };
        let mut counts = self.0.borrow_mut();
        let n = counts.entry(key).or_insert(0);
        if *n >= MAX_FLOWS_PER_USER {
            return None;
        }
        *n += 1;
        Some(FlowGuard { counts: self, key })
    }
}

impl Drop for FlowGuard<'_> {
    fn drop(&mut self) {
        let mut counts = self.counts.0.borrow_mut();
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

// === the session ===

/// Who a packet session is for, before its first packet says where it goes.
pub(crate) struct PacketSession<'a> {
    pub(crate) inbound: &'a InboundRt,
    pub(crate) peer: SocketAddr,
    pub(crate) user: Option<UserHandle>,
    pub(crate) level: u32,
    /// The longest the session may idle, below the level's `connIdle` (Xray's UDP dispatcher
    /// gives up on a link after a minute, its UDP worker on a client after two).
    pub(crate) idle_cap: Option<Duration>,
    /// Its place under the user's `maxConnections` and `maxIPs`, held while it lives.
    pub(crate) admitted: Admitted,
}

/// A level's timeouts for a packet session: its relay timeouts, the idle one capped.
fn packet_timeouts(policy: &shardray_core::spec::LevelPolicy, idle_cap: Option<Duration>) -> RelayTimeouts {
    let mut timeouts = RelayTimeouts::from(policy);
    if let Some(cap) = idle_cap {
        timeouts.idle = timeouts.idle.min(cap);
    }
    timeouts
}

/// Both sides of a packet session: the client's, and the outbound's.
struct Sides<'s, 'u, I, O> {
    input: &'s mut I,
    output: &'s mut O,
    up_in: &'s mut UpIn<'u>,
    up_out: &'s mut UpOut<'u>,
}

/// How a packet session ended.
enum PacketEnd {
    TimedOut,
    Closed,
    Done,
}

/// Runs a packet session: waits for its first packet, routes it, opens the outbound's leg and
/// relays packets both ways until the session ends.
///
/// Boxed, and not an `async fn` of its own, as `carry` is: a connection's future must not
/// carry room for its session while its handshake arrives.
pub(crate) fn serve_packets<'a, I, O>(
    ctx: &'a Rc<ShardCtx>,
    s: PacketSession<'a>,
    input: I,
    output: O,
) -> Pin<Box<impl Future<Output = ()> + 'a>>
where
    I: PacketSource + 'a,
    O: PacketSink + 'a,
{
    Box::pin(serve_packet_session(ctx, s, input, output))
}

async fn serve_packet_session<I, O>(ctx: &Rc<ShardCtx>, s: PacketSession<'_>, mut input: I, mut output: O)
where
    I: PacketSource,
    O: PacketSink,
{
    let (tag, peer) = (&s.inbound.tag, s.peer);
    // Every protocol's packet sessions pass here: the connection is past its handshake.
    crate::gate::handshake_done();
    let _flow = match &s.user {
        Some(user) => match ctx.flows.try_open(s.inbound, user) {
            Some(guard) => Some(guard),
            None => {
                ctx.refusals.add(Refusal::FlowLimit);
                ctx.log.error(
                    LogLevel::Warning,
                    format_args!("[{tag}] {peer}: UDP refused: {} per user on a shard at most", MAX_FLOWS_PER_USER),
                );
                return;
            }
        },
        None => None,
    };
    let policy = ctx.policy(s.level);
    let timeouts = packet_timeouts(&policy, s.idle_cap);
    let mut buf = vec![0u8; RECV_ROOM];
    // The first packet names the destination the session is routed by.
    let first = futures_lite::future::or(
        async {
            loop {
                match input.recv(&mut buf).await {
                    Ok(Recv::Packet(dest, n)) => return Some((dest, n)),
                    Ok(Recv::Oversize) => ctx.refusals.add(Refusal::OversizeDatagram),
                    Ok(Recv::End) => return None,
                    Err(e) => {
                        ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer}: UDP: {e}"));
                        return None;
                    }
                }
            }
        },
        async {
            glommio::timer::sleep(timeouts.idle).await;
            None
        },
    )
    .await;
    let Some((dest, first_len)) = first else { return };
    let session = Session {
        inbound: s.inbound,
        peer,
        user: s.user.clone(),
        level: s.level,
        dest: dest.clone(),
        client_fd: None,
        admitted: s.admitted,
    };
    let watch = match (&session.user, session.inbound.kind.user_states()) {
        (Some(u), Some(users)) => Some(SessionWatch::new(&ctx.watchers, users, u.clone())),
        _ => None,
    };
    let email = session.user.as_ref().and_then(|u| u.email.as_deref()).filter(|e| !e.is_empty());
    let routes = ctx.routes();
    // Sniffing: a QUIC Initial (in the first datagram, or the few that complete its
    // ClientHello, held meanwhile), uTP or DHT names the protocol and, with `quic` in
    // `destOverride`, the name the session is routed by. Packets still go where they say.
    let mut held = Vec::new();
    let (sniffed, sniffed_name) = match s.inbound.sniffing.as_deref() {
        Some(sniffing) if !sniffing.metadata_only => {
            crate::outbound::sniff_datagrams(ctx, sniffing, &mut input, &dest, &buf[..first_len], &mut held).await
        }
        _ => (None, None),
    };
    let mut route_input = RouteInput {
        inbound_tag: tag,
        user: email,
        dest: sniffed_name.as_ref().unwrap_or(&dest.addr),
        resolved: None,
        port: dest.port,
        tcp: false,
        source: peer.ip(),
        source_port: peer.port(),
        protocol: sniffed,
        // Packets carry no HTTP request.
        attrs: None,
    };
    let mut decision = route(ctx, &routes, &mut route_input).await;
    if sniffed_name.is_some() {
        // As `routeOnly` on TCP: a rule on the sniffed name does not open loopback or private
        // addresses; only rules naming the packets' own address do.
        let original = routes.router.route(&RouteInput { dest: &dest.addr, resolved: None, ..route_input });
        decision.explicit_dest = original.explicit_dest && original.target == decision.target;
    }
    let outbound = match routes.resolve(&decision) {
        Resolved::Outbound(i) => routes.outbounds[i].clone(),
        Resolved::Missing(out) => {
            ctx.log.error(LogLevel::Warning, format_args!("[{tag}] {peer} to udp:{dest}: non existing outTag: {out}"));
            return;
        }
        Resolved::NoDefault => {
            ctx.log.error(
                LogLevel::Warning,
                format_args!("[{tag}] {peer} to udp:{dest}: default outbound handler not exist"),
            );
            return;
        }
    };
    if ctx.tap.wanted() {
        ctx.tap.offer(shardray_core::routes::RouteRecord {
            inbound_tag: tag.clone(),
            tcp: false,
            source: peer,
            target: dest.addr.clone(),
            target_port: dest.port,
            user: session.user.as_ref().and_then(|u| u.email.clone()).unwrap_or_else(|| std::sync::Arc::from("")),
            outbound_tag: outbound.tag.clone(),
        });
    }
    if ctx.log.access_enabled() {
        let (note, email) = email.map_or(("", ""), |e| (" email: ", e));
        ctx.log.access(format_args!("from {peer} accepted udp:{dest} [{tag} >> {}]{note}{email}", outbound.tag));
    }
    if watch.as_ref().is_some_and(SessionWatch::is_closed) || crate::outbound::quota_used_up(&session) {
        return;
    }
    let out_tag = &outbound.tag;
    let freedom;
    let upstream;
    let ss_leg;
    let socks_leg;
    let dns_leg;
    let (mut up_in, mut up_out) = match &outbound.protocol {
        OutboundProtocol::Blackhole(_) => (UpIn::Blackhole, UpOut::Blackhole),
        OutboundProtocol::Dns(spec) => {
            let answers = async_channel::bounded(DNS_ANSWERS);
            dns_leg =
                DnsLeg { ctx, routes: &routes, decision, session: &session, spec, answers, in_flight: Rc::default() };
            (UpIn::Dns(&dns_leg), UpOut::Dns(&dns_leg))
        }
        OutboundProtocol::Freedom(spec) => match FreedomLeg::new(ctx, &routes, decision, &session, spec, &outbound.via)
        {
            Ok(leg) => {
                freedom = leg;
                (UpIn::Freedom(&freedom), UpOut::Freedom(&freedom))
            }
            Err(e) => {
                ctx.log.error(LogLevel::Warning, format_args!("[{tag}] {peer} to udp:{dest}: no UDP socket: {e}"));
                return;
            }
        },
        OutboundProtocol::Trojan(t) => {
            let Some(trojan) = &outbound.trojan else { return };
            match Box::pin(crate::outbound::trojan::dial(&trojan.tls, &trojan.transport, &t.server, &outbound.via))
                .await
            {
                Ok(up) => {
                    upstream = RefCell::new(up);
                    (
                        UpIn::Frames(FrameReader::new(Half(&upstream), Framing::Trojan, &[])),
                        UpOut::Frames(FrameWriter::new(Half(&upstream), Framing::Trojan, trojan.udp_header(&dest))),
                    )
                }
                Err(e) => {
                    ctx.log.error(
                        LogLevel::Info,
                        format_args!("[{tag}] {peer} to udp:{dest}: [{out_tag}] {}: {e}", t.server),
                    );
                    return;
                }
            }
        }
        OutboundProtocol::Vless(v) => {
            let Some(vless) = &outbound.vless else { return };
            match Box::pin(crate::outbound::trojan::dial(&vless.tls, &vless.transport, &v.server, &outbound.via)).await
            {
                // XUDP as Xray's client sends it: not for DNS and QUIC ports, which keep the UDP
                // command (one destination).
                Ok(up) if v.xudp && dest.port != 53 && dest.port != 443 => {
                    upstream = RefCell::new(up);
                    let header = vless.header(shardray_wire::vless::Command::Mux, &dest);
                    (
                        UpIn::VlessFrames(FrameReader::new(VlessResponse::new(Half(&upstream)), Framing::Xudp, &[])),
                        UpOut::Frames(FrameWriter::new(Half(&upstream), Framing::Xudp, header)),
                    )
                }
                Ok(up) => {
                    upstream = RefCell::new(up);
                    let header = vless.header(shardray_wire::vless::Command::Udp, &dest);
                    let framing = Framing::Vless(dest.clone());
                    (
                        UpIn::VlessFrames(FrameReader::new(VlessResponse::new(Half(&upstream)), framing.clone(), &[])),
                        UpOut::VlessFrames(FrameWriter::new(Half(&upstream), framing, header), dest.clone()),
                    )
                }
                Err(e) => {
                    ctx.log.error(
                        LogLevel::Info,
                        format_args!("[{tag}] {peer} to udp:{dest}: [{out_tag}] {}: {e}", v.server),
                    );
                    return;
                }
            }
        }
        OutboundProtocol::Vmess(v) => {
            let Some(vmess) = &outbound.vmess else { return };
            let dialed =
                Box::pin(crate::outbound::trojan::dial(&vmess.tls, &vmess.transport, &v.server, &outbound.via)).await;
            match dialed.and_then(|up| vmess.start(up, &dest, shardray_wire::vmess::Command::Udp)) {
                Ok(up) => {
                    let max_payload = match &up {
                        Upstream::Vmess(s) => s.max_payload(),
                        _ => unreachable!("start gives a VMess stream"),
                    };
                    upstream = RefCell::new(up);
                    let chunks =
                        || ChunkPackets { stream: &upstream, dest: dest.clone(), max_payload, only_to_dest: true };
                    (UpIn::VmessChunks(chunks()), UpOut::VmessChunks(chunks()))
                }
                Err(e) => {
                    ctx.log.error(
                        LogLevel::Info,
                        format_args!("[{tag}] {peer} to udp:{dest}: [{out_tag}] {}: {e}", v.server),
                    );
                    return;
                }
            }
        }
        OutboundProtocol::Shadowsocks(s) if outbound.shadowsocks.as_ref().and_then(|c| c.udp_keys()).is_some() => {
            let keys = outbound.shadowsocks.as_ref().and_then(|c| c.udp_keys()).expect("checked above");
            match SsLeg::open(&s.server, keys).await {
                Ok(leg) => {
                    ss_leg = leg;
                    (UpIn::Shadowsocks(&ss_leg), UpOut::Shadowsocks(&ss_leg))
                }
                Err(e) => {
                    ctx.log.error(
                        LogLevel::Info,
                        format_args!("[{tag}] {peer} to udp:{dest}: [{out_tag}] {}: {e}", s.server),
                    );
                    return;
                }
            }
        }
        OutboundProtocol::Socks(p) if outbound.proxy.is_some() => {
            let proxy = outbound.proxy.as_ref().expect("checked above");
            match Box::pin(SocksLeg::open(proxy, p, &outbound.via)).await {
                Ok(leg) => {
                    socks_leg = leg;
                    (UpIn::Socks(&socks_leg), UpOut::Socks(&socks_leg))
                }
                Err(e) => {
                    ctx.log.error(
                        LogLevel::Info,
                        format_args!("[{tag}] {peer} to udp:{dest}: [{out_tag}] {}: {e}", p.server),
                    );
                    return;
                }
            }
        }
        OutboundProtocol::Shadowsocks(_) | OutboundProtocol::Socks(_) | OutboundProtocol::Http(_) => {
            ctx.refusals.add(Refusal::UnsupportedCommand);
            let protocol = match outbound.protocol {
                OutboundProtocol::Socks(_) => "socks",
                OutboundProtocol::Http(_) => "http",
                _ => "shadowsocks",
            };
            ctx.log.error(
                LogLevel::Info,
                format_args!("[{tag}] {peer} to udp:{dest}: [{out_tag}] the {protocol} outbound carries no UDP yet"),
            );
            return;
        }
    };
    let meter = RefCell::new(SessionMeter::new(ctx, &session, &outbound, &policy));
    let user_slot = meter.borrow().user;
    if let Some((slot, _)) = user_slot {
        ctx.users.borrow_mut().session_opened(slot, peer.ip(), unix_now());
    }
    let ended = async {
        if up_out.send(&dest, &buf[..first_len]).await? {
            meter.borrow_mut().up(first_len as u64);
        }
        drop(buf);
        for (to, packet) in held {
            if up_out.send(&to, &packet).await? {
                meter.borrow_mut().up(packet.len() as u64);
            }
        }
        let sides = Sides { input: &mut input, output: &mut output, up_in: &mut up_in, up_out: &mut up_out };
        relay_packets(ctx, sides, s.level, s.idle_cap, watch.as_ref(), &meter).await
    }
    .await;
    if let Some((slot, generation)) = user_slot {
        ctx.users.borrow_mut().session_closed(slot, generation, peer.ip());
    }
    match ended {
        Ok(PacketEnd::Done) => {}
        Ok(PacketEnd::Closed) => {
            ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} to udp:{dest}: closed: user removed or kicked"))
        }
        Ok(PacketEnd::TimedOut) => {
            ctx.log.error(LogLevel::Debug, format_args!("[{tag}] {peer} to udp:{dest}: timed out"))
        }
        Err(e) => ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} to udp:{dest}: {e}")),
    }
}

/// Relays packets both ways until a side fails, the session idles out (the level's timeouts:
/// `connIdle`, then `downlinkOnly` once the client has ended, `uplinkOnly` once the upstream
/// has), or its user is removed.
async fn relay_packets<I, O, M>(
    ctx: &ShardCtx,
    sides: Sides<'_, '_, I, O>,
    level: u32,
    idle_cap: Option<Duration>,
    watch: Option<&SessionWatch<'_>>,
    meter: &RefCell<M>,
) -> io::Result<PacketEnd>
where
    I: PacketSource,
    O: PacketSink,
    M: Meter,
{
    let Sides { input, output, up_in, up_out } = sides;
    let mut timeouts = packet_timeouts(&ctx.policy(level), idle_cap);
    let activity = Cell::new(Instant::now());
    let client_done = Cell::new(false);
    let upstream_done = Cell::new(false);
    let uplink = async {
        let mut buf = vec![0u8; RECV_ROOM];
        loop {
            // Held to the user's rate: what comes meanwhile waits (or, as datagrams, is
            // dropped by the kernel once the socket's queue is full).
            let allowance = meter.borrow_mut().up_allowance();
            if let Err(due) = allowance {
                glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
                continue;
            }
            match input.recv(&mut buf).await? {
                Recv::Packet(dest, n) => {
                    activity.set(Instant::now());
                    if up_out.send(&dest, &buf[..n]).await? {
                        meter.borrow_mut().up(n as u64);
                        if meter.borrow().exhausted() {
                            return Ok(PacketEnd::Closed);
                        }
                    }
                    // Datagrams are often ready at once: let the shard's other tasks run too.
                    glommio::yield_if_needed().await;
                }
                Recv::Oversize => ctx.refusals.add(Refusal::OversizeDatagram),
                Recv::End => {
                    client_done.set(true);
                    // The watchdog looks again, under the shorter timeout.
                    futures_lite::future::yield_now().await;
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let downlink = async {
        let mut buf = vec![0u8; RECV_ROOM];
        loop {
            let allowance = meter.borrow_mut().down_allowance();
            if let Err(due) = allowance {
                glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
                continue;
            }
            match up_in.recv(&mut buf).await? {
                Recv::Packet(source, n) => {
                    activity.set(Instant::now());
                    if output.send(&source, &buf[..n]).await? {
                        meter.borrow_mut().down(n as u64);
                        if meter.borrow().exhausted() {
                            return Ok(PacketEnd::Closed);
                        }
                    }
                    glommio::yield_if_needed().await;
                }
                Recv::Oversize => ctx.refusals.add(Refusal::OversizeDatagram),
                Recv::End => {
                    upstream_done.set(true);
                    futures_lite::future::yield_now().await;
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let mut timer = Timer::new(timeouts.idle);
    let watchdog = futures_lite::future::poll_fn(|cx| {
        if let Some(w) = watch {
            match w.check(cx.waker()) {
                UserState::Same => {}
                UserState::Closed => return Poll::Ready(Ok(PacketEnd::Closed)),
                UserState::Level(level) => {
                    let policy = ctx.policy(level);
                    timeouts = packet_timeouts(&policy, idle_cap);
                    meter.borrow_mut().set_policy(&policy);
                }
            }
        }
        if client_done.get() && upstream_done.get() {
            return Poll::Ready(Ok(PacketEnd::Done));
        }
        let allowed = if client_done.get() {
            timeouts.downlink_only
        } else if upstream_done.get() {
            timeouts.uplink_only
        } else {
            timeouts.idle
        };
        loop {
            let now = Instant::now();
            let deadline = activity.get() + allowed;
            if now >= deadline {
                return Poll::Ready(Ok(PacketEnd::TimedOut));
            }
            timer.reset(deadline - now);
            if Pin::new(&mut timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    });
    futures_lite::future::or(futures_lite::future::or(uplink, downlink), watchdog).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes at most `step` at a time.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            let n = self.step.min(buf.len()).min(self.data.len() - self.at);
            let at = self.at;
            buf[..n].copy_from_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }
    }

    fn read_all(framing: Framing, data: &[u8], early: usize, step: usize) -> (Vec<Result<Vec<u8>, ()>>, bool) {
        let r = Trickle { data: data[early..].to_vec(), at: 0, step };
        let mut reader = FrameReader::new(r, framing, &data[..early]);
        let mut out = vec![0u8; RECV_ROOM];
        let mut got = Vec::new();
        futures_lite::future::block_on(async {
            loop {
                match reader.recv(&mut out).await {
                    Ok(Recv::Packet(_, n)) => got.push(Ok(out[..n].to_vec())),
                    Ok(Recv::Oversize) => got.push(Err(())),
                    Ok(Recv::End) => return (got, true),
                    Err(_) => return (got, false),
                }
            }
        })
    }

    fn dest() -> Destination {
        Destination::from(SocketAddr::from(([192, 0, 2, 1], 53)))
    }

    #[test]
    fn frames_split_anywhere_oversize_skipped_garbage_ends_the_stream() {
        let big = vec![9u8; MAX_DATAGRAM + 1];
        let payloads: [&[u8]; 4] = [b"a", &[1u8; 1400], &big, b"last"];
        let mut vless = Vec::new();
        let mut trojan = Vec::new();
        for p in payloads {
            shardray_wire::vless::encode_packet_header(p.len(), &mut vless).unwrap();
            vless.extend_from_slice(p);
            // The encoder refuses oversize frames: write that one by hand.
            let mut head = Vec::new();
            shardray_wire::addr::SOCKS_TYPES.encode_addr(&dest().addr, &mut head);
            head.extend_from_slice(&dest().port.to_be_bytes());
            head.extend_from_slice(&(p.len() as u16).to_be_bytes());
            head.extend_from_slice(b"\r\n");
            trojan.extend_from_slice(&head);
            trojan.extend_from_slice(p);
        }
        let want: Vec<Result<Vec<u8>, ()>> =
            vec![Ok(b"a".to_vec()), Ok(vec![1u8; 1400]), Err(()), Ok(b"last".to_vec())];
        for (framing, data) in [(Framing::Vless(dest()), &vless), (Framing::Trojan, &trojan)] {
            for (early, step) in [(0, 1), (3, 7), (0, 1 << 20), (data.len(), 1)] {
                assert_eq!(read_all(framing.clone(), data, early, step), (want.clone(), true), "{framing:?} {step}");
            }
            // Cut inside the last packet: an error, after the whole ones.
            let (got, clean) = read_all(framing.clone(), &data[..data.len() - 1], 0, 5);
            assert_eq!((got.len(), clean), (3, false));
        }
        // A Trojan frame with an unknown address type: the stream ends there.
        let mut bad = trojan.clone();
        bad.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0, 1, b'\r', b'\n', 0]);
        bad.extend_from_slice(&trojan);
        let (got, clean) = read_all(Framing::Trojan, &bad, 0, 1 << 20);
        assert_eq!((got, clean), (want, false));
    }
}
