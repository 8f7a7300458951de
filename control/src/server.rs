//! Starting and stopping the data plane: binds every inbound once per shard, starts the shards
//! pinned to their cores, and drains them on shutdown. Either everything starts or nothing does.

use std::net::SocketAddr;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use shardray_core::change::Change;
use shardray_core::events::{EventSink, UserEvent};
use shardray_core::log::LogSink;
use shardray_core::routes::{RouteRecord, RouteTap};
use shardray_core::slots::UserOp;
use shardray_core::spec::{Config, InboundSpec, LogLevel, SocketOptions, UnixListenSpec, UnixSocketName};
use shardray_core::stats::StatsSnapshot;
use shardray_shard::mailbox::{mailbox, ShardMailbox};
use shardray_shard::{spawn_shard, InboundSockets, ShardCommand, ShardHandle, ShardPlan};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::logger;

/// How long a shard may take to report that it serves.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The control thread's way to talk to the shards: cloneable and `Send`, for the API.
#[derive(Clone)]
pub struct ShardLinks {
    commands: Arc<[ShardMailbox]>,
    /// The config the shards run.
    pub config: Arc<Config>,
    /// The shards' routing-decision tap, for SubscribeRoutingStats.
    pub route_tap: RouteTap,
    /// Where the tapped decisions arrive.
    pub route_records: async_channel::Receiver<RouteRecord>,
    /// The shards' user events, for the hub (`crate::events`).
    pub events: async_channel::Receiver<UserEvent>,
}

impl ShardLinks {
    /// Number of shards.
    pub fn count(&self) -> usize {
        self.commands.len()
    }

    /// Sends `change` as `epoch` to every shard and waits until each has applied it.
    /// `ops` are the change's user operations, as the registry resolved them; `listeners`
    /// holds one socket per shard when the change adds an inbound, else nothing.
    pub async fn broadcast(
        &self,
        epoch: u64,
        change: Arc<Change>,
        ops: Arc<[UserOp]>,
        listeners: Vec<InboundSockets>,
        within: Duration,
    ) -> Result<(), BroadcastError> {
        let (ack_tx, ack_rx) = async_channel::bounded(self.commands.len());
        let mut listeners = listeners.into_iter();
        for (id, tx) in self.commands.iter().enumerate() {
            let listener = listeners.next();
            let command =
                ShardCommand::Apply { epoch, change: change.clone(), ops: ops.clone(), listener, ack: ack_tx.clone() };
            tx.send(command).map_err(|_| BroadcastError::Gone(id))?;
        }
        let mut pending: Vec<usize> = (0..self.commands.len()).collect();
        let wait = async {
            while !pending.is_empty() {
                let Ok(ack) = ack_rx.recv().await else { break };
                pending.retain(|&s| s != ack.shard);
                if let Err(reason) = ack.result {
                    return Err(BroadcastError::Refused { shard: ack.shard, reason });
                }
            }
            Ok(())
        };
        match tokio::time::timeout(within, wait).await {
            Ok(result) => result,
            Err(_) => Err(BroadcastError::Timeout { epoch, shards: pending.clone() }),
        }
    }

    /// Asks every shard for its counters: every user slot's, or only `only_slot`'s
    /// (`Some(NO_SLOT)`: no user, just inbounds and outbounds), so that reading one counter
    /// costs one user's work.
    pub async fn snapshots(&self, only_slot: Option<u32>) -> anyhow::Result<Vec<StatsSnapshot>> {
        self.snapshot_range(shardray_core::stats::slot_range(only_slot)).await
    }

    /// Asks every shard for its counters of the user slots in `slots`, and of every inbound
    /// and outbound.
    pub async fn snapshot_range(&self, slots: std::ops::Range<u32>) -> anyhow::Result<Vec<StatsSnapshot>> {
        let mut replies = Vec::with_capacity(self.commands.len());
        for (id, tx) in self.commands.iter().enumerate() {
            let (reply_tx, reply_rx) = async_channel::bounded(1);
            let command = ShardCommand::Snapshot { slots: slots.clone(), reply: reply_tx };
            tx.send(command).map_err(|_| anyhow!("shard {id} is gone"))?;
            replies.push(reply_rx);
        }
        let mut out = Vec::with_capacity(replies.len());
        for (id, rx) in replies.into_iter().enumerate() {
            out.push(rx.recv().await.map_err(|_| anyhow!("shard {id} did not answer"))?);
        }
        Ok(out)
    }
}

/// Shards that did not apply a change in time, or refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BroadcastError {
    /// These shards had not acknowledged the epoch when the wait ended.
    Timeout {
        /// The epoch.
        epoch: u64,
        /// The shards still missing.
        shards: Vec<usize>,
    },
    /// A shard could not apply the change.
    Refused {
        /// The shard.
        shard: usize,
        /// Its reason.
        reason: String,
    },
    /// A shard is gone.
    Gone(usize),
}

impl std::fmt::Display for BroadcastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BroadcastError::Timeout { epoch, shards } => {
                write!(f, "shards {shards:?} did not apply epoch {epoch} in time")
            }
            BroadcastError::Refused { shard, reason } => {
                write!(f, "shard {shard} refused the change: {reason}")
            }
            BroadcastError::Gone(shard) => write!(f, "shard {shard} is gone"),
        }
    }
}

impl std::error::Error for BroadcastError {}

/// A running data plane.
pub struct Server {
    config: Arc<Config>,
    commands: Vec<ShardMailbox>,
    handles: Vec<ShardHandle>,
    /// Each inbound's tag and the address it was bound to (port 0 resolved).
    pub bound: Vec<(String, SocketAddr)>,
    /// The logging handle of the control thread.
    pub log: LogSink,
    logger: Option<JoinHandle<()>>,
    route_tap: RouteTap,
    route_records: async_channel::Receiver<RouteRecord>,
    events: async_channel::Receiver<UserEvent>,
}

/// Routing decisions waiting for SubscribeRoutingStats beyond this are dropped.
const ROUTE_RECORDS: usize = 4096;

/// Checks what validation could not without building runtime objects: TLS keys and chains.
pub fn check(config: &Config) -> anyhow::Result<()> {
    for inbound in &config.inbounds {
        if let Some(tls) = &inbound.tls {
            shardray_shard::transport::tls::server_config(tls)
                .map_err(|e| anyhow!("{}: streamSettings.tlsSettings: {e}", inbound.label()))?;
        }
    }
    Ok(())
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

impl Server {
    /// Binds, starts `shards` shards and waits until each serves. `api_addrs` are the API's
    /// bound addresses, which no session may reach; `users` are each inbound's users as
    /// resolved adds (`UserSets::initial_ops`), in config order.
    pub fn start(
        config: Arc<Config>,
        shards: usize,
        api_addrs: &[SocketAddr],
        users: Vec<Vec<UserOp>>,
        dns: shardray_shard::dns::DnsRequests,
    ) -> anyhow::Result<Server> {
        check(&config)?;
        let shards = shards.max(1);
        let (log, logger) = logger::start(&config.log).context("log")?;

        let mut listeners: Vec<Vec<InboundSockets>> = (0..shards).map(|_| Vec::new()).collect();
        let mut bound = Vec::new();
        for inbound in &config.inbounds {
            let (sockets, addr) = bind_at_start(inbound, shards)
                .with_context(|| format!("{}: cannot listen on {}", inbound.label(), inbound.listen_text()))?;
            for (shard, socket) in sockets.into_iter().enumerate() {
                listeners[shard].push(socket);
            }
            bound.push((inbound.tag.clone(), addr));
        }
        let api_addrs: Arc<[SocketAddr]> = api_addrs.into();
        let (route_tap, route_records) = RouteTap::new(ROUTE_RECORDS);
        let (event_sink, events) = EventSink::new();
        let users: Arc<[Vec<UserOp>]> = users.into();

        let cpus = allowed_cpus();
        let (ready_tx, ready_rx) = sync_channel(shards);
        let mut commands = Vec::with_capacity(shards);
        let mut handles = Vec::with_capacity(shards);
        for (id, listeners) in listeners.into_iter().enumerate() {
            let (tx, rx) = mailbox().context("shard mailbox")?;
            let plan = ShardPlan {
                id,
                cpu: (!cpus.is_empty()).then(|| cpus[id % cpus.len()]),
                config: config.clone(),
                users: users.clone(),
                listeners,
                api_addrs: api_addrs.clone(),
                log: log.clone(),
                route_tap: route_tap.clone(),
                events: event_sink.clone(),
                commands: rx,
                dns: Some(dns.clone()),
                ready: ready_tx.clone(),
            };
            handles.push(spawn_shard(plan).with_context(|| format!("starting shard {id}"))?);
            commands.push(tx);
        }
        let mut server = Server {
            config: config.clone(),
            commands,
            handles,
            bound,
            log,
            logger: Some(logger),
            route_tap,
            route_records,
            events,
        };
        for _ in 0..shards {
            match ready_rx.recv_timeout(START_TIMEOUT) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let _ = server.stop(Duration::ZERO);
                    bail!("a shard could not start: {e}");
                }
                Err(_) => {
                    let _ = server.stop(Duration::ZERO);
                    bail!("a shard did not start within {START_TIMEOUT:?}");
                }
            }
        }
        Ok(server)
    }

    /// Each shard's mailbox, in shard order.
    pub fn mailboxes(&self) -> Vec<ShardMailbox> {
        self.commands.clone()
    }

    /// The config it started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.commands.len()
    }

    /// A handle the API uses to reach the shards.
    pub fn links(&self) -> ShardLinks {
        ShardLinks {
            commands: self.commands.clone().into(),
            config: self.config.clone(),
            route_tap: self.route_tap.clone(),
            route_records: self.route_records.clone(),
            events: self.events.clone(),
        }
    }

    /// Stops accepting, gives live sessions up to `grace`, and waits for every shard to end.
    /// Returns each shard's final counters.
    pub fn stop(&mut self, grace: Duration) -> Vec<StatsSnapshot> {
        let (last_tx, last_rx) = async_channel::bounded(self.commands.len().max(1));
        for tx in &self.commands {
            let _ = tx.send(ShardCommand::Drain { grace, last: last_tx.clone() });
        }
        drop(last_tx);
        self.commands.clear();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
        let mut finals = Vec::new();
        while let Ok(snapshot) = last_rx.try_recv() {
            finals.push(snapshot);
        }
        self.log.error(LogLevel::Warning, format_args!("shardray stopped"));
        finals
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            let _ = self.stop(Duration::ZERO);
        }
        // Other sinks (the API's) may outlive the server: tell the writer to stop.
        self.log.close();
        self.log = LogSink::discard();
        if let Some(logger) = self.logger.take() {
            let _ = logger.join();
        }
    }
}

/// How long start-up keeps trying an address that is still taken.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// `bind_reuseport`, retried for a moment while the address is in use: a process killed just
/// before (a restart after `kill -9`) may still hold its listeners, since the kernel releases
/// sockets an io_uring instance holds only after the process is gone. Anything still holding
/// the address after `BIND_RETRY` fails the start.
fn bind_at_start(inbound: &InboundSpec, count: usize) -> std::io::Result<(Vec<InboundSockets>, SocketAddr)> {
    let deadline = std::time::Instant::now() + BIND_RETRY;
    loop {
        match bind_inbound(inbound, count) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// Binds an inbound's sockets for `count` shards on its `listen` address: TCP listeners, UDP
/// sockets, or both on one port (see `InboundSpec::networks`), each with SO_REUSEPORT. A port
/// of 0 is chosen first and reused by all.
pub fn bind_inbound(inbound: &InboundSpec, count: usize) -> std::io::Result<(Vec<InboundSockets>, SocketAddr)> {
    let networks = inbound.networks();
    let mut addr = inbound.listen;
    let mut sockets: Vec<InboundSockets> = (0..count).map(|_| InboundSockets::default()).collect();
    if let Some(unix) = &inbound.unix {
        for (s, l) in sockets.iter_mut().zip(bind_unix(unix, count)?) {
            s.tcp = Some(l);
        }
        return Ok((sockets, addr));
    }
    if networks.tcp {
        let (tcp, bound) = bind_reuseport(addr, count, &inbound.sockopt)?;
        addr = bound;
        for (s, l) in sockets.iter_mut().zip(tcp) {
            s.tcp = Some(l);
        }
    }
    if networks.udp {
        let (udp, bound) = bind_udp_reuseport(addr, count, &inbound.sockopt)?;
        addr = bound;
        for (s, u) in sockets.iter_mut().zip(udp) {
            s.udp = Some(u);
        }
    }
    Ok((sockets, addr))
}

/// Binds an inbound's Unix socket once and returns `count` descriptors of it (dup(2)), one per
/// shard: SO_REUSEPORT does not spread Unix sockets, so every shard's accept loop waits on the
/// one socket and the kernel hands each connection to one of them. (One shard accepting for
/// all would put every session of a socket behind a reverse proxy, often all of a server's,
/// on one core.) The descriptors travel as `TcpListener`s: the accept loop uses them only as
/// listening stream sockets (see `InboundSockets::tcp`).
fn bind_unix(unix: &UnixListenSpec, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use std::os::unix::ffi::OsStrExt;
    let addr = SockAddr::unix(std::ffi::OsStr::from_bytes(&unix.name.sun_path()))?;
    if let UnixSocketName::Path(path) = &unix.name {
        crate::socket_file::clear_stale(path)?;
    }
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    listener.bind(&addr)?;
    if let (UnixSocketName::Path(path), Some(mode)) = (&unix.name, unix.mode) {
        crate::socket_file::set_mode(path, mode)?;
    }
    listener.listen(4096)?;
    let fd = std::os::fd::OwnedFd::from(listener);
    let mut out = Vec::with_capacity(count);
    for _ in 1..count {
        out.push(std::net::TcpListener::from(fd.try_clone()?));
    }
    out.push(std::net::TcpListener::from(fd));
    Ok(out)
}

/// Binds `count` UDP sockets to one address with SO_REUSEPORT (the kernel hashes each client's
/// datagrams to one of them, so a client's flow stays on one shard); a port of 0 is chosen
/// first and reused by all. Of `opts`, the options that mean something for UDP are set.
pub fn bind_udp_reuseport(
    addr: SocketAddr,
    count: usize,
    opts: &SocketOptions,
) -> std::io::Result<(Vec<std::net::UdpSocket>, SocketAddr)> {
    // As for TCP: a plain bind first proves the address free of another group.
    let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if opts.v6_only {
        probe.set_only_v6(true)?;
    }
    probe.bind(&addr.into())?;
    let mut addr = probe.local_addr()?.as_socket().unwrap_or(addr);
    drop(probe);
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        if let Some(interface) = &opts.interface {
            socket.bind_device(Some(interface.as_bytes()))?;
        }
        if opts.v6_only {
            socket.set_only_v6(true)?;
        }
        if opts.mark != 0 {
            socket.set_mark(opts.mark)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let socket: std::net::UdpSocket = socket.into();
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok((sockets, addr))
}

/// Binds `count` listening sockets to one address with SO_REUSEPORT, each with `opts`; a
/// port of 0 is chosen first and reused by all.
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    opts: &SocketOptions,
) -> std::io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    // SO_REUSEPORT would let us join a group already listening there (another inbound, or
    // another process of this user) and split its connections: a plain bind first proves
    // the address free.
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    if opts.v6_only {
        probe.set_only_v6(true)?;
    }
    probe.bind(&addr.into())?;
    let mut addr = probe.local_addr()?.as_socket().unwrap_or(addr);
    drop(probe);
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        shardray_shard::sockopt::apply(&socket, opts, shardray_shard::sockopt::Side::Listener)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok((sockets, addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn tcp_int(fd: i32, option: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `fd` is a live socket and `value` a c_int whose size goes with it.
        let rc = unsafe {
            libc::getsockopt(fd, libc::IPPROTO_TCP, option, (&mut value as *mut libc::c_int).cast(), &mut len)
        };
        assert_eq!(rc, 0, "getsockopt {option}: {}", std::io::Error::last_os_error());
        value
    }

    #[test]
    fn listeners_carry_the_inbounds_socket_options() {
        let opts = SocketOptions {
            tcp_fast_open: Some(256),
            mark: 7,
            keep_alive_idle: Some(77),
            keep_alive_interval: Some(11),
            congestion: Some("reno".into()),
            user_timeout_ms: Some(9000),
            window_clamp: Some(65536),
            ..Default::default()
        };
        let (listeners, _) = bind_reuseport("127.0.0.1:0".parse().unwrap(), 2, &opts).unwrap();
        for l in &listeners {
            let socket = socket2::SockRef::from(l);
            assert_eq!(socket.mark().unwrap(), 7);
            assert!(socket.tcp_congestion().unwrap().starts_with(b"reno\0"));
            assert!(socket.keepalive().unwrap());
            assert_eq!(socket.keepalive_time().unwrap(), Duration::from_secs(77));
            assert_eq!(socket.keepalive_interval().unwrap(), Duration::from_secs(11));
            assert_eq!(socket.tcp_user_timeout().unwrap(), Some(Duration::from_millis(9000)));
            assert_eq!(tcp_int(l.as_raw_fd(), libc::TCP_FASTOPEN), 256);
            assert!(tcp_int(l.as_raw_fd(), libc::TCP_WINDOW_CLAMP) >= 32768);
        }
        // A failing option is named.
        let bad = SocketOptions { congestion: Some("nosuchalgo".into()), ..Default::default() };
        let err = bind_reuseport("127.0.0.1:0".parse().unwrap(), 1, &bad).unwrap_err();
        assert!(err.to_string().starts_with("sockopt tcpCongestion \"nosuchalgo\": "), "{err}");
    }
}
