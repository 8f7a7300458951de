//! The `dns` outbound over TCP: length-prefixed DNS queries in, the resolver's answers out (A
//! and AAAA answered from the `dns` object, hosts included; other types as `nonIPQuery` says).
//! Its UDP side is `packet::DnsLeg`.

use std::io;
use std::net::SocketAddr;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shardray_core::router::Decision;
use shardray_core::spec::{DnsNetwork, DnsOutboundSpec, LevelPolicy, LogLevel, NonIpQuery};
use shardray_wire::addr::Destination;

use super::{check_destination, resolve_system, Session, SessionMeter};
use crate::ctx::{Routes, ShardCtx};
use crate::dns::MessageAnswer;
use crate::relay::Meter;

/// Where a query this outbound sends on goes (`nonIPQuery: skip`): the configured server, else
/// the query's own destination, which must pass the safety rules as any session's does. The
/// flag says TCP. `None` when nothing is sent on.
pub(crate) async fn forward_target(
    ctx: &ShardCtx,
    routes: &Routes,
    spec: &DnsOutboundSpec,
    dest: &Destination,
    decision: Decision,
    session: &Session<'_>,
    tcp: bool,
) -> Option<(SocketAddr, bool)> {
    if spec.non_ip_query != NonIpQuery::Skip {
        return None;
    }
    let tcp = match spec.rewrite_network {
        Some(DnsNetwork::Tcp) => true,
        Some(DnsNetwork::Udp) => false,
        None => tcp,
    };
    let target = Destination {
        addr: spec.rewrite_address.clone().unwrap_or_else(|| dest.addr.clone()),
        port: spec.rewrite_port.unwrap_or(dest.port),
    };
    let (tag, peer) = (&session.inbound.tag, session.peer);
    let addr = match resolve_system(&target.addr, target.port, Default::default()).await {
        Ok(addrs) => *addrs.first()?,
        Err(e) => {
            ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} dns to {target}: {e}"));
            return None;
        }
    };
    // The operator's server stands as a freedom redirect does; the client's destination is checked.
    if spec.rewrite_address.is_none() {
        if let Err(why) = check_destination(ctx, routes, addr, &target, decision, session, tcp) {
            ctx.refusals.add(why);
            ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} dns to {target}: refused: {}", why.reason()));
            return None;
        }
    }
    Some((addr, tcp))
}

/// Serves a TCP session routed to a `dns` outbound until the client closes or idles out:
/// each length-prefixed query gets its answer (in order), or none when dropped.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_stream<C>(
    ctx: &ShardCtx,
    client: &mut C,
    spec: &DnsOutboundSpec,
    forward: Option<(SocketAddr, bool)>,
    early: &[u8],
    down_prefix: &[u8],
    policy: &LevelPolicy,
    meter: &mut SessionMeter<'_>,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let Some(dns) = &ctx.dns else { return Err(io::Error::other("no resolver")) };
    if !down_prefix.is_empty() {
        client.write_all(down_prefix).await?;
    }
    let mut pending = early.to_vec();
    meter.up(early.len() as u64);
    let mut chunk = vec![0u8; 4096];
    loop {
        while pending.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
            if pending.len() < 2 + len {
                break;
            }
            let query = pending[2..2 + len].to_vec();
            pending.drain(..2 + len);
            if let MessageAnswer::Reply(reply) = dns.answer(query, spec, forward).await {
                let Ok(len) = u16::try_from(reply.len()) else { continue };
                let mut framed = Vec::with_capacity(2 + reply.len());
                framed.extend_from_slice(&len.to_be_bytes());
                framed.extend_from_slice(&reply);
                client.write_all(&framed).await?;
                meter.down(framed.len() as u64);
            }
        }
        let read = async { Some(client.read(&mut chunk).await) };
        let idle = async {
            glommio::timer::sleep(policy.conn_idle).await;
            None
        };
        let n = match futures_lite::future::or(read, idle).await {
            Some(n) => n?,
            None => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        meter.up(n as u64);
        pending.extend_from_slice(&chunk[..n]);
    }
}
