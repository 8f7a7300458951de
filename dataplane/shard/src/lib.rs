//! The glommio shards: one pinned executor per core that accepts, decodes, routes and relays,
//! owning every piece of state it touches on the hot path.
#![deny(rust_2018_idioms)]

mod ctx;
pub mod dns;
mod gate;
mod inbound;
mod limits;
pub mod mailbox;
mod mux;
mod outbound;
mod packet;
mod relay;
mod replay;
mod shadowsocks;
pub mod sockopt;
pub mod transport;
mod users;
mod vmess;
mod wake;

/// A shard's user table and the keys it is looked up by, public for the micro-benchmarks in
/// `bench/`.
pub use users::{TableKey, TrojanKey, UserTable, VmessUsers};

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use shardray_core::change::Change;
use shardray_core::log::LogSink;
use shardray_core::slots::UserOp;
use shardray_core::spec::Config;
use shardray_core::stats::StatsSnapshot;

use crate::ctx::ShardCtx;

/// What the control thread asks of a shard.
#[derive(Debug)]
pub enum ShardCommand {
    /// Reply with the shard's counters: the user slots in `slots` (`stats::slot_range`), and
    /// every inbound's and outbound's. An empty range asks for those alone.
    Snapshot {
        /// The slots to report.
        slots: std::ops::Range<u32>,
        /// Where to reply.
        reply: async_channel::Sender<StatsSnapshot>,
    },
    /// Apply a change as epoch `epoch`, then report on `ack`.
    Apply {
        /// The change's epoch; epochs reach a shard in increasing order.
        epoch: u64,
        /// The change, shared by every shard.
        change: Arc<Change>,
        /// The change's user operations, as the control thread resolved them.
        ops: Arc<[UserOp]>,
        /// This shard's own sockets, when the change adds an inbound.
        listener: Option<InboundSockets>,
        /// Where to report.
        ack: async_channel::Sender<ShardAck>,
    },
    /// The resolver's answer to one of this shard's DNS questions: hand it to the waiting task.
    DnsAnswer {
        /// Where the task waits.
        reply: async_channel::Sender<dns::DnsAnswer>,
        /// The answer.
        answer: dns::DnsAnswer,
    },
    /// Stop accepting, let live sessions finish for up to `grace`, then stop the shard.
    Drain {
        /// How long live sessions may go on.
        grace: Duration,
        /// Gets the shard's final counters once its sessions are done.
        last: async_channel::Sender<StatsSnapshot>,
    },
}

/// A shard's report on one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardAck {
    /// The shard.
    pub shard: usize,
    /// The epoch it has now applied.
    pub epoch: u64,
    /// Whether the change applied cleanly.
    pub result: Result<(), String>,
}

/// Everything a shard needs to start; built by the control thread, moved to the shard.
#[derive(Debug)]
pub struct ShardPlan {
    /// The shard's number, from 0.
    pub id: usize,
    /// The CPU to pin to, if any.
    pub cpu: Option<usize>,
    /// The validated config.
    pub config: Arc<Config>,
    /// The users each inbound starts with (in `config.inbounds` order), as resolved adds;
    /// the inbounds' `clients` are not read.
    pub users: Arc<[Vec<UserOp>]>,
    /// One shard's bound sockets per inbound, in `config.inbounds` order (SO_REUSEPORT:
    /// every shard has its own sockets on the same address).
    pub listeners: Vec<InboundSockets>,
    /// The API's listen addresses, which no session may reach.
    pub api_addrs: Arc<[SocketAddr]>,
    /// Where the shard logs.
    pub log: LogSink,
    /// Where routing decisions go while someone subscribes to them.
    pub route_tap: shardray_core::routes::RouteTap,
    /// Where user events go (the control thread's hub).
    pub events: shardray_core::events::EventSink,
    /// Commands from the control thread.
    pub commands: mailbox::MailboxReceiver,
    /// The `dns` object's resolver, when the config has one (else the system resolver).
    pub dns: Option<dns::DnsRequests>,
    /// Told `Ok(id)` once the shard is serving, or why it could not start.
    pub ready: SyncSender<Result<usize, String>>,
}

/// One shard's sockets for one inbound, bound with SO_REUSEPORT: a listening TCP socket, a
/// UDP socket (dokodemo-door with `network` udp), or both on the same port.
#[derive(Debug, Default)]
pub struct InboundSockets {
    /// The TCP listener, listening; for an inbound on a Unix socket, that socket's listening
    /// descriptor (shared by every shard's accept loop), which the accept loop uses as a
    /// listening stream socket only.
    pub tcp: Option<std::net::TcpListener>,
    /// The UDP socket.
    pub udp: Option<std::net::UdpSocket>,
}

/// A running shard's thread.
pub type ShardHandle = glommio::ExecutorJoinHandle<()>;

/// Threads in each shard's blocking pool (system name lookups, dials with socket options).
const BLOCKING_THREADS: usize = 8;

/// Starts a shard on its own pinned thread.
pub fn spawn_shard(plan: ShardPlan) -> std::io::Result<ShardHandle> {
    let placement = match plan.cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    LocalExecutorBuilder::new(placement)
        .name(&format!("shard-{}", plan.id))
        // No file IO here: keep io_uring's registered memory small.
        .io_memory(1 << 20)
        // Name lookups and configured dials run on the blocking pool: with the pinned
        // default of one thread, one slow lookup or dial would hold up every other.
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(BLOCKING_THREADS))
        .spawn(move || run(plan))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

async fn run(plan: ShardPlan) {
    let ShardPlan { id, config, users, listeners, api_addrs, log, route_tap, events, commands, dns, ready, .. } = plan;
    if let Err(e) = wake::spawn_doorbell() {
        let _ = ready.send(Err(format!("shard {id} doorbell: {e}")));
        return;
    }
    let dns = dns.map(|requests| dns::DnsClient::new(id, requests));
    let ctx = match ShardCtx::new(config, api_addrs, log, route_tap, events, dns) {
        Ok(ctx) => Rc::new(ctx),
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let inbounds = ctx.inbounds.borrow().clone();
    for (inbound, ops) in inbounds.iter().zip(users.iter()).filter(|(_, ops)| !ops.is_empty()) {
        if let Err(e) = ctx.apply_users(inbound, ops) {
            let _ = ready.send(Err(e));
            return;
        }
    }
    drop(users);
    for (inbound, listener) in inbounds.into_iter().zip(listeners) {
        ctx.start_accepting(inbound, listener);
    }
    let _ = ready.send(Ok(id));

    // Commands share the default task queue with the relays, which yield to the reactor after
    // a bounded amount of work (relay.rs): a command waits for about one round of the shard's
    // busy connections, not for glommio's preemption timer. (Finer preemption, by
    // `preempt_timer` or a latency-sensitive task queue, stalled connections in glommio 0.9.)
    serve_commands(id, ctx, commands.connect()).await;
}

/// Applies the control thread's commands until told to drain.
async fn serve_commands(id: usize, ctx: Rc<ShardCtx>, mut commands: mailbox::ConnectedMailbox) {
    while let Some(command) = commands.recv().await {
        match command {
            ShardCommand::Snapshot { slots, reply } => {
                let _ = reply.try_send(ctx.snapshot(slots));
            }
            ShardCommand::Apply { epoch, change, ops, listener, ack } => {
                let result = match ctx.apply(epoch, &change, &ops, listener) {
                    Ok(stopped) => {
                        // A removed inbound's listeners are closed before the change is acknowledged.
                        for task in stopped {
                            task.cancel().await;
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let _ = ack.try_send(ShardAck { shard: id, epoch, result });
            }
            ShardCommand::DnsAnswer { reply, answer } => {
                let _ = reply.try_send(answer);
            }
            ShardCommand::Drain { grace, last } => {
                for task in ctx.take_accepting() {
                    task.cancel().await;
                }
                let deadline = Instant::now() + grace;
                while ctx.live.get() > 0 && Instant::now() < deadline {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                let _ = last.try_send(ctx.snapshot(shardray_core::stats::slot_range(None)));
                break;
            }
        }
    }
}
