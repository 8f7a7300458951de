//! dokodemo-door: every connection, and every UDP client's datagrams, go to one configured
//! destination.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use rustc_hash::FxHashMap;
use shardray_core::spec::DokodemoSpec;
use shardray_core::stats::Refusal;

use super::ConnInfo;
use crate::ctx::{InboundKind, InboundRt, LiveGuard, ShardCtx};
use crate::limits::Admitted;
use crate::outbound::{forward, Session};
use crate::packet::{serve_packets, DatagramsIn, DatagramsOut, PacketSession, MAX_DATAGRAM, MAX_DATAGRAM_FLOWS};

pub(super) async fn serve<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    spec: &DokodemoSpec,
    mut stream: S,
    info: &ConnInfo,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session = Session {
        inbound,
        peer: info.peer,
        user: None,
        level: spec.user_level,
        dest: spec.destination.clone(),
        client_fd: info.plain_fd,
        admitted: Admitted::no_user(),
    };
    forward(ctx, &mut stream, session, &[], &[]).await;
}

/// How long a dokodemo-door UDP client may idle before its flow is reclaimed (Xray's UDP
/// worker reclaims a client after two minutes without packets).
const UDP_IDLE: Duration = Duration::from_secs(120);

/// Packets a flow may have waiting before newer ones are dropped.
const FLOW_QUEUE: usize = 256;

/// Serves a dokodemo-door inbound's UDP socket until the task is cancelled: each client
/// address is a flow (a packet session to the inbound's destination), tracked in this
/// shard's table while it lives; SO_REUSEPORT keeps a client's datagrams on one shard.
pub(crate) async fn datagram_loop(ctx: Rc<ShardCtx>, inbound: Rc<InboundRt>, socket: std::net::UdpSocket) {
    let InboundKind::Dokodemo(spec) = &inbound.kind else { return };
    let dest = spec.destination.clone();
    let level = spec.user_level;
    let socket = Rc::new(crate::packet::udp_from_std(socket));
    let flows: Rc<RefCell<FxHashMap<SocketAddr, async_channel::Sender<Vec<u8>>>>> = Rc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (n, client) = super::recv_datagram(&ctx, &inbound, &socket, &mut buf).await;
        let mut packet = buf[..n].to_vec();
        if let Some(tx) = flows.borrow().get(&client) {
            match tx.try_send(packet) {
                // A full queue drops the datagram, as a full socket buffer would.
                Ok(()) | Err(async_channel::TrySendError::Full(_)) => continue,
                Err(async_channel::TrySendError::Closed(p)) => packet = p,
            }
        }
        let mut table = flows.borrow_mut();
        table.retain(|_, tx| !tx.is_closed());
        if table.len() >= MAX_DATAGRAM_FLOWS {
            ctx.refusals.add(Refusal::FlowLimit);
            continue;
        }
        let (tx, rx) = async_channel::bounded(FLOW_QUEUE);
        let _ = tx.try_send(packet);
        table.insert(client, tx);
        drop(table);
        let (ctx, inbound, socket, dest) = (ctx.clone(), inbound.clone(), socket.clone(), dest.clone());
        glommio::spawn_local(async move {
            let _live = LiveGuard::new(&ctx);
            let session = PacketSession {
                inbound: &inbound,
                peer: client,
                user: None,
                level,
                idle_cap: Some(UDP_IDLE),
                admitted: Admitted::no_user(),
            };
            serve_packets(&ctx, session, DatagramsIn { rx, dest }, DatagramsOut { socket, client }).await;
        })
        .detach();
    }
}
