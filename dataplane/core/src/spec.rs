//! The validated configuration: what `control::config` produces from Xray JSON and what shards
//! run. Every value here has passed validation; files (certificates) are already read.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use shardray_wire::addr::Destination;
use shardray_wire::shadowsocks::{MasterKey, Method};
use uuid::Uuid;

use crate::slots::UserId;

/// A whole validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where and what to log.
    pub log: LogSpec,
    /// The management API, if configured.
    pub api: Option<ApiSpec>,
    /// The metrics endpoint (`metrics`), if configured and reachable.
    pub metrics: Option<MetricsSpec>,
    /// Whether the `stats` object is present (counters are kept only then, as upstream).
    pub stats_enabled: bool,
    /// Per-level and system policy.
    pub policy: PolicySpec,
    /// Inbounds the shards serve. The API's own inbound (if any) is not among them.
    pub inbounds: Vec<InboundSpec>,
    /// Outbounds; the first is the default route.
    pub outbounds: Vec<OutboundSpec>,
    /// Routing rules.
    pub routing: RoutingSpec,
    /// The `dns` object: the resolver that freedom's `UseIP*` strategies, the router's
    /// `IPIfNonMatch`/`IPOnDemand` and the `dns` outbound ask. `None`: the system resolver.
    pub dns: Option<DnsSpec>,
    /// What the loader wants the operator to know about the config as written (an id mapped
    /// to a UUID, for instance): printed at start and by `shardray test`.
    pub notes: Vec<String>,
    /// Keys the loader did not know and ignored, as Xray does, each with its JSON path (and the
    /// known key it may have meant): warnings at start and in `shardray test`, errors with
    /// `--strict`.
    pub ignored_keys: Vec<String>,
}

impl Config {
    /// A copy with every inbound's users left out, without copying them first: the API keeps
    /// the running config this way, since its registry holds the users.
    pub fn without_users(&self) -> Config {
        Config {
            log: self.log.clone(),
            api: self.api.clone(),
            metrics: self.metrics.clone(),
            stats_enabled: self.stats_enabled,
            policy: self.policy.clone(),
            inbounds: self.inbounds.iter().map(InboundSpec::clone_without_users).collect(),
            outbounds: self.outbounds.clone(),
            routing: self.routing.clone(),
            dns: self.dns.clone(),
            notes: self.notes.clone(),
            ignored_keys: self.ignored_keys.clone(),
        }
    }
}

/// Log settings (`log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    /// `loglevel`: the least severe error-log message written.
    pub level: LogLevel,
    /// `access`: where accepted and rejected connections are logged.
    pub access: LogTarget,
    /// `error`: where the error log goes.
    pub error: LogTarget,
    /// `dnsLog`: log each DNS query.
    pub dns_log: bool,
}

/// Error-log severity, as upstream names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `warning` (the default)
    Warning,
    /// `error`
    Error,
    /// `none`: no error log at all.
    None,
}

/// Where a log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (an empty path, the default).
    Stdout,
    /// Discarded (`"none"`).
    Discard,
    /// Appended to a file.
    File(PathBuf),
}

/// The management API (`api`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSpec {
    /// `api.tag` (or the article's `api.inboundTag`): the tag of the API's inbound and outbound.
    pub tag: String,
    /// Where the gRPC server listens.
    pub listen: ApiListen,
    /// The services enabled, by their short names (`HandlerService`, `StatsService`, ...).
    pub services: Vec<String>,
    /// `api.tokens`: when any is set, every call must carry one (`authorization: Bearer …`)
    /// and is allowed what its role allows; the API may then listen beyond loopback.
    pub tokens: Vec<ApiToken>,
    /// `api.socketMode`: the permission bits of a Unix-socket API (default 0600).
    pub socket_mode: u32,
    /// `api.tls`: mutual TLS on a TCP listen; callers are known by their certificate.
    pub tls: Option<ApiTls>,
    /// `api.callLimit`: calls per caller per second; `None` when turned off (rate 0).
    pub call_limit: Option<CallLimit>,
}

/// `api.tls`: the server's certificate and key, the CA client certificates must chain to, and
/// the role each certificate subject (its CN) gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTls {
    pub certificate_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: PathBuf,
    /// `api.tls.clients`: subject CN and role.
    pub clients: Vec<(String, ApiRole)>,
    /// `api.tls.defaultRole`: the role of a certificate no client names; `None`: no call.
    pub default_role: Option<ApiRole>,
}

/// `api.callLimit`: a token bucket per caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallLimit {
    /// Calls per second refilled.
    pub rate: f64,
    /// The bucket's size: calls a caller may make at once.
    pub burst: f64,
}

impl Eq for CallLimit {}

/// A credential of the API: its name (the caller's identity in logs), secret and role.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub secret: String,
    pub role: ApiRole,
}

impl std::fmt::Debug for ApiToken {
    // The secret stays out of debug output and logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

/// What an API caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ApiRole {
    /// Counters, lists, logs, health: nothing that changes the server (resets excepted: they
    /// need `Operator`).
    Reader,
    /// Reader, plus users: add, remove, levels, kicks, counter resets.
    Operator,
    /// Everything: inbounds, outbounds, routing, the logger.
    Admin,
}

impl ApiRole {
    pub fn name(self) -> &'static str {
        match self {
            ApiRole::Reader => "reader",
            ApiRole::Operator => "operator",
            ApiRole::Admin => "admin",
        }
    }
}

/// Where the API (or the metrics endpoint) listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiListen {
    /// A TCP address, from `api.listen` or from the dokodemo-door inbound carrying the API tag.
    Tcp(SocketAddr),
    /// A Unix socket path from `api.listen`.
    Unix(PathBuf),
}

/// An inbound's `listen` naming a Unix socket, in Xray's forms: a path (`"/dev/shm/x.sock"`,
/// with an optional `",0666"` giving the file's mode) or an abstract name (`"@name"`, or
/// `"@@name"` padded with NULs to the whole `sun_path`, as HAProxy names abstract sockets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListenSpec {
    /// The socket's address.
    pub name: UnixSocketName,
    /// The permission bits given after the comma; `None` leaves them as the umask makes them
    /// (as Xray does). Abstract sockets have no file and no mode.
    pub mode: Option<u32>,
}

/// The address of a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixSocketName {
    /// A socket file.
    Path(PathBuf),
    /// An abstract socket (Linux): its name without the leading NUL, padding included.
    Abstract(Vec<u8>),
}

/// The length of `sun_path` in `sockaddr_un` on Linux: `@@` names are padded to it.
const SUN_PATH_LEN: usize = 108;

impl UnixSocketName {
    /// Reads Xray's forms: `/path`, `@name` (abstract), `@@name` (abstract, padded); `None`
    /// for anything else (an IP address).
    pub fn parse(s: &str) -> Option<UnixSocketName> {
        if let Some(padded) = s.strip_prefix("@@") {
            // Xray copies `@name` into a sun_path-sized buffer: the NUL that marks an abstract
            // address, the name, then NULs to the end.
            let mut name = padded.as_bytes().to_vec();
            name.resize(name.len().max(SUN_PATH_LEN - 1), 0);
            return Some(UnixSocketName::Abstract(name));
        }
        if let Some(name) = s.strip_prefix('@') {
            return Some(UnixSocketName::Abstract(name.as_bytes().to_vec()));
        }
        s.starts_with('/').then(|| UnixSocketName::Path(PathBuf::from(s)))
    }

    /// The bytes of `sun_path` that name it: the path, or a NUL then the abstract name (the
    /// form socket libraries take an abstract address in).
    pub fn sun_path(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        match self {
            UnixSocketName::Path(path) => path.as_os_str().as_bytes().to_vec(),
            UnixSocketName::Abstract(name) => [&[0][..], name].concat(),
        }
    }
}

impl std::fmt::Display for UnixListenSpec {
    /// As `listen` writes it: the name, then `,MODE` if a mode was given.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.mode {
            Some(mode) => write!(f, "{},{mode:04o}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

impl std::fmt::Display for UnixSocketName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnixSocketName::Path(path) => write!(f, "{}", path.display()),
            UnixSocketName::Abstract(name) => {
                let trimmed = name.iter().rposition(|&b| b != 0).map_or(&name[..0], |end| &name[..=end]);
                let padded = if trimmed.len() < name.len() { "@" } else { "" };
                write!(f, "@{padded}{}", String::from_utf8_lossy(trimmed))
            }
        }
    }
}

/// The metrics endpoint (`metrics`): Prometheus `/metrics`, Xray's `/debug/vars`, `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSpec {
    /// `metrics.tag`: the tag of Xray's metrics outbound (`Metrics` when only `listen` is set).
    pub tag: String,
    /// Where the HTTP server listens: `metrics.listen`, or the dokodemo-door inbound that a
    /// routing rule sends to the metrics outbound. Loopback or a Unix socket only.
    pub listen: ApiListen,
    /// `metrics.userSeries` (ours): whether `/metrics` has per-user traffic series.
    pub user_series: bool,
    /// `metrics.maxUserSeries` (ours): at most this many users get series, the top by traffic.
    pub max_user_series: usize,
}

/// How many users get per-user series when `metrics.maxUserSeries` is not set.
pub const DEFAULT_MAX_USER_SERIES: usize = 1000;

/// Policy (`policy`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicySpec {
    /// `policy.levels`, by level number. A level missing here uses `LevelPolicy::default()`.
    pub levels: BTreeMap<u32, LevelPolicy>,
    /// `policy.system`.
    pub system: SystemPolicy,
}

impl PolicySpec {
    /// The policy for a level, falling back to upstream's defaults.
    pub fn level(&self, level: u32) -> LevelPolicy {
        self.levels.get(&level).cloned().unwrap_or_default()
    }
}

/// One policy level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelPolicy {
    /// `handshake`: time allowed to complete the inbound handshake (default 4 s).
    pub handshake: Duration,
    /// `connIdle`: a connection with no traffic either way for this long is closed (300 s).
    pub conn_idle: Duration,
    /// `uplinkOnly`: once the server side has closed, time left for the client's side (2 s).
    pub uplink_only: Duration,
    /// `downlinkOnly`: once the client side has closed, time left for the server's side (5 s).
    pub downlink_only: Duration,
    /// `statsUserUplink`: count each user's uplink bytes.
    pub stats_user_uplink: bool,
    /// `statsUserDownlink`: count each user's downlink bytes.
    pub stats_user_downlink: bool,
    /// `statsUserOnline`: track each user's live sessions.
    pub stats_user_online: bool,
    /// `bufferSize` in bytes (config gives KiB): the relay buffer per direction.
    pub buffer_size: usize,
    /// `uplinkRate` (ours): the user's client-to-server bytes per second, over all its
    /// sessions on all shards; 0: unlimited.
    pub uplink_rate: u64,
    /// `downlinkRate` (ours): the same, server to client.
    pub downlink_rate: u64,
    /// `maxConnections` (ours): the user's live sessions at once; 0: unlimited.
    pub max_connections: u32,
    /// `maxIPs` (ours): distinct client addresses the user's live sessions come from at once;
    /// 0: unlimited.
    pub max_ips: u32,
}

impl LevelPolicy {
    /// Whether sessions at this level count their live sessions or addresses.
    pub fn limits_sessions(&self) -> bool {
        self.max_connections > 0 || self.max_ips > 0
    }
}

/// Relay buffer per direction when `bufferSize` is not set. A buffer is held only while bytes
/// move through it. 64 KiB rather than 32: a TLS download then leaves as four records per
/// sendmsg instead of two, about 10% less CPU per GB (perf/RESULTS.md, 2026-11-27).
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

impl Default for LevelPolicy {
    fn default() -> Self {
        LevelPolicy {
            handshake: Duration::from_secs(4),
            conn_idle: Duration::from_secs(300),
            uplink_only: Duration::from_secs(2),
            downlink_only: Duration::from_secs(5),
            stats_user_uplink: false,
            stats_user_downlink: false,
            stats_user_online: false,
            buffer_size: DEFAULT_BUFFER_SIZE,
            uplink_rate: 0,
            downlink_rate: 0,
            max_connections: 0,
            max_ips: 0,
        }
    }
}

/// `policy.system`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPolicy {
    /// `statsInboundUplink`
    pub stats_inbound_uplink: bool,
    /// `statsInboundDownlink`
    pub stats_inbound_downlink: bool,
    /// `statsOutboundUplink`
    pub stats_outbound_uplink: bool,
    /// `statsOutboundDownlink`
    pub stats_outbound_downlink: bool,
    /// `maxConnections` (ours): TCP connections the whole server holds at once, every inbound
    /// and shard together; past it new ones are closed at accept (0: no limit).
    pub max_connections: u32,
    /// `maxInboundConnections` (ours): the same bound for each inbound on its own.
    pub max_inbound_connections: u32,
    /// `maxHandshakesPerSource` (ours): connections from one address that one shard holds
    /// before their handshake is done; past it new ones are closed at accept (0: no limit).
    pub max_handshakes_per_source: u32,
    /// `trustedHops` (ours): the addresses of proxies in front of the server (a CDN's edges, a
    /// load balancer) whose connections carry many clients each: not bounded by
    /// `maxHandshakesPerSource` as one source; behind them, the client a trusted
    /// `X-Forwarded-For` names counts instead.
    pub trusted_hops: Vec<IpNet>,
}

impl SystemPolicy {
    /// Whether `ip` is one of `trustedHops` (an IPv4-mapped address as its IPv4 address).
    pub fn is_trusted_hop(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_hops.iter().any(|net| net.contains(&ip))
    }

    /// `maxHandshakesPerSource` when the config does not set it: far above what one honest
    /// address has in flight, many users behind one CGNAT address included (a handshake
    /// takes a round trip or two), and low enough that one address trickling handshakes
    /// holds little.
    pub const DEFAULT_MAX_HANDSHAKES_PER_SOURCE: u32 = 64;
}

impl Default for SystemPolicy {
    fn default() -> Self {
        SystemPolicy {
            stats_inbound_uplink: false,
            stats_inbound_downlink: false,
            stats_outbound_uplink: false,
            stats_outbound_downlink: false,
            max_connections: 0,
            max_inbound_connections: 0,
            max_handshakes_per_source: SystemPolicy::DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
            trusted_hops: Vec::new(),
        }
    }
}

/// One inbound (`inbounds[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundSpec {
    /// `tag`; upstream allows it empty, counters then carry no name.
    pub tag: String,
    /// `listen` and `port`: the address every shard binds (with SO_REUSEPORT); 0.0.0.0:0, unused,
    /// when `unix` is set.
    pub listen: SocketAddr,
    /// `listen` naming a Unix socket: the inbound listens there instead (boxed: rare).
    pub unix: Option<Box<UnixListenSpec>>,
    /// `streamSettings.security == "tls"`: the TLS server settings.
    pub tls: Option<TlsServerSpec>,
    /// `streamSettings.security == "reality"`: the REALITY server settings (boxed: rare, and
    /// specs travel in every change).
    pub reality: Option<Box<RealityServerSpec>>,
    /// `protocol` and `settings`.
    pub protocol: InboundProtocol,
    /// Its index in the config's `inbounds` (merged over files, the API's inbound counted),
    /// for messages; `None` for an inbound the API added.
    pub config_index: Option<usize>,
    /// `streamSettings.sockopt`: options set on its listeners (accepted connections inherit
    /// them).
    pub sockopt: SocketOptions,
    /// `tcpSettings.header` of type `http`: the HTTP camouflage each connection opens with.
    pub http_header: Option<HttpHeaderSpec>,
    /// `network`: raw TCP, WebSocket or HTTPUpgrade under the protocol.
    pub transport: TransportSpec,
    /// `sniffing`, when enabled (boxed: most inbounds have none).
    pub sniffing: Option<Box<SniffingSpec>>,
}

/// `sniffing` on an inbound: what the session's first payload may change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SniffingSpec {
    /// `destOverride`: the protocols (`http`, `tls`, `quic`) whose sniffed domain replaces
    /// the destination (`fakedns` needs a fakedns pool, which is not served, so it adds none).
    pub dest_override: Vec<String>,
    /// `metadataOnly`: the payload is not looked at.
    pub metadata_only: bool,
    /// `routeOnly`: the sniffed domain is for routing only; the connection goes to the
    /// original address.
    pub route_only: bool,
    /// `domainsExcluded`: sniffed domains that keep the original destination.
    pub domains_excluded: Vec<DomainMatcher>,
    /// `ipsExcluded`: original destination addresses that keep themselves, whatever is sniffed.
    pub ips_excluded: Vec<ipnet::IpNet>,
}

impl InboundSpec {
    /// Whether the inbound's security is TLS-like: one whose stream Vision can drop to raw
    /// TCP (TLS, or REALITY, whose authenticated sessions are TLS 1.3). The one place that
    /// says so.
    pub fn tls_like(&self) -> bool {
        self.tls.is_some() || self.reality.is_some()
    }

    /// Why this inbound cannot serve VLESS users with the Vision flow, if it cannot. Xray
    /// refuses every Vision connection unless TLS (1.3) or REALITY sits directly on raw TCP;
    /// shardray refuses such users when they are configured or added instead.
    pub fn vision_refused(&self) -> Option<&'static str> {
        if !matches!(self.protocol, InboundProtocol::Vless(_)) {
            return Some("Vision is a VLESS flow");
        }
        if !self.tls_like() {
            return Some(
                "Vision needs streamSettings.security \"tls\" or \"reality\" (Xray: \"XTLS only supports TLS and REALITY directly\")",
            );
        }
        if self.transport != TransportSpec::Raw || self.http_header.is_some() {
            return Some("Vision needs TLS directly on raw TCP (no other transport or header)");
        }
        if self.tls.as_ref().and_then(|t| t.max_version).is_some_and(|v| v < TlsVersion::V1_3) {
            return Some("Vision needs TLS 1.3 (tlsSettings.maxVersion is below it)");
        }
        None
    }
}

/// `streamSettings.network` and its settings: what carries the protocol's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TransportSpec {
    /// `tcp` / `raw` (the default).
    #[default]
    Raw,
    /// `ws` with `wsSettings` (boxed: specs travel in every outbound and change).
    Ws(Box<HttpTransportSpec>),
    /// `httpupgrade` with `httpupgradeSettings`.
    HttpUpgrade(Box<HttpTransportSpec>),
    /// `grpc` (`gun`) with `grpcSettings`.
    Grpc(Box<GrpcSpec>),
    /// `xhttp` (`splithttp`) with `xhttpSettings`.
    Xhttp(Box<XhttpSpec>),
}

impl TransportSpec {
    /// The name `network` gives it (`raw` for plain TCP).
    pub fn name(&self) -> &'static str {
        match self {
            TransportSpec::Raw => "raw",
            TransportSpec::Ws(_) => "ws",
            TransportSpec::HttpUpgrade(_) => "httpupgrade",
            TransportSpec::Grpc(_) => "grpc",
            TransportSpec::Xhttp(_) => "xhttp",
        }
    }

    /// The HTTP transport's settings, if it is one.
    pub fn http(&self) -> Option<&HttpTransportSpec> {
        match self {
            TransportSpec::Raw | TransportSpec::Grpc(_) | TransportSpec::Xhttp(_) => None,
            TransportSpec::Ws(h) | TransportSpec::HttpUpgrade(h) => Some(h),
        }
    }
}

/// `wsSettings` / `httpupgradeSettings`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpTransportSpec {
    /// `path`, normalized as Xray does (a leading `/`, `/` when empty), its `ed` parameter
    /// taken out.
    pub path: String,
    /// `host`: what a server requires in `Host` (any when empty); what a client sends.
    pub host: String,
    /// `headers`: what a client sends besides (in name order).
    pub headers: Vec<(String, String)>,
    /// The path's `?ed=N`: early data accepted (server) or sent (client) up to N bytes.
    pub early_data: u32,
    /// A client sends its early data after the path (V2Ray's `maxEarlyData` with no
    /// `earlyDataHeaderName`), not in `Sec-WebSocket-Protocol`. A server reads both.
    pub early_data_in_path: bool,
}

/// `grpcSettings` (Xray's `transport.internet.grpc.encoding.Config`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrpcSpec {
    /// `serviceName` as given: a name (`/NAME/Tun`, `/NAME/TunMulti`), or a custom path when
    /// it starts with `/` (see `shardray_wire::grpc::service_paths`).
    pub service_name: String,
    /// `multiMode`: a client opens `TunMulti` streams (a server serves both).
    pub multi_mode: bool,
    /// `idle_timeout`: seconds without frames before a keepalive ping (0: none).
    pub idle_timeout: u32,
    /// `health_check_timeout`: seconds a keepalive ping may go unanswered (0: 20, gRPC's).
    pub health_check_timeout: u32,
    /// `permit_without_stream`: a client pings even with no stream open.
    pub permit_without_stream: bool,
    /// `initial_windows_size`: a client's initial HTTP/2 window (0: the default).
    pub initial_windows_size: u32,
    /// `user_agent`: what a client sends (empty: Chrome's, as Xray).
    pub user_agent: String,
    /// `authority`: a client's `:authority` (empty: the TLS name, else a domain server).
    pub authority: String,
}

/// `xhttpSettings` / `splithttpSettings` (Xray's `transport.internet.splithttp.Config`), as
/// Xray's loader builds them: when `extra` is given, every key but `host`, `path` and `mode`
/// comes from it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XhttpSpec {
    /// What shapes requests and responses (path, host, mode, headers, padding, placements,
    /// POST sizes and intervals), shared by the server and the client codec.
    pub settings: shardray_wire::xhttp::Settings,
    /// `xmux`: how a client spreads sessions over connections (a server ignores it).
    pub xmux: XmuxSpec,
    /// `downloadSettings` was given (a server ignores it, as Xray's does).
    pub download_settings: bool,
    /// An outbound's `downloadSettings`, read: where its sessions' GETs go instead.
    pub download: Option<Box<XhttpDownloadSpec>>,
}

/// An XHTTP outbound's `downloadSettings` (a `streamSettings` with `address` and `port`), as
/// Xray's client uses them: each session's downlink GET goes to `server` with this TLS and
/// these XHTTP settings (path, host, padding, headers, XMUX), its uplink as the outbound's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XhttpDownloadSpec {
    /// `address` and `port`.
    pub server: Destination,
    /// `security` `tls` and its `tlsSettings`.
    pub tls: Option<TlsClientSpec>,
    /// `xhttpSettings` (`network` must be `xhttp`).
    pub xhttp: XhttpSpec,
}

/// `xhttpSettings.xmux` (client side). Ranges of 0-0 mean no limit; Xray's loader sets
/// maxConnections 3, hMaxRequestTimes 600-900 and hMaxReusableSecs 1800-3000 when `xmux`
/// is absent or empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XmuxSpec {
    /// `maxConcurrency`: sessions one connection carries at once.
    pub max_concurrency: shardray_wire::xhttp::Range,
    /// `maxConnections`: connections open at once (exclusive with maxConcurrency).
    pub max_connections: shardray_wire::xhttp::Range,
    /// `cMaxReuseTimes`: sessions a connection carries in its life.
    pub c_max_reuse_times: shardray_wire::xhttp::Range,
    /// `hMaxRequestTimes`: requests a connection carries in its life.
    pub h_max_request_times: shardray_wire::xhttp::Range,
    /// `hMaxReusableSecs`: seconds a connection is reused for.
    pub h_max_reusable_secs: shardray_wire::xhttp::Range,
    /// `hKeepAlivePeriod`: seconds between HTTP/2 pings (0: Chrome's 45; negative: none).
    pub h_keep_alive_period: i64,
}

/// `tcpSettings.header` with `"type": "http"`: the request a connection must open with and
/// the response the server opens its side with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHeaderSpec {
    /// `request`: the paths accepted (and, for a client, what it sends).
    pub request: shardray_wire::http_header::RequestTemplate,
    /// `response`: what the server sends before its first bytes.
    pub response: shardray_wire::http_header::ResponseTemplate,
}

/// `streamSettings.sockopt`, as far as shardray serves it: Linux socket options, each `None`
/// (or 0, false) where the config leaves the kernel's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketOptions {
    /// `tcpFastOpen`: the TFO queue length on a listener (`true` is 256, as in Xray); `Some(0)`
    /// turns it off.
    pub tcp_fast_open: Option<u32>,
    /// `mark`: SO_MARK, when non-zero.
    pub mark: u32,
    /// `tcpKeepAliveIdle`: seconds of silence before the first keep-alive probe.
    pub keep_alive_idle: Option<u32>,
    /// `tcpKeepAliveInterval`: seconds between keep-alive probes.
    pub keep_alive_interval: Option<u32>,
    /// `tcpCongestion`: the congestion control algorithm (`bbr`, `cubic`, ...).
    pub congestion: Option<String>,
    /// `tcpUserTimeout`: milliseconds unacknowledged data may wait before the kernel drops
    /// the connection (TCP_USER_TIMEOUT).
    pub user_timeout_ms: Option<u32>,
    /// `tcpWindowClamp`: TCP_WINDOW_CLAMP in bytes.
    pub window_clamp: Option<u32>,
    /// `tcpMaxSeg`: TCP_MAXSEG in bytes.
    pub max_segment: Option<u32>,
    /// `v6only`: IPV6_V6ONLY on an IPv6 listener.
    pub v6_only: bool,
    /// `interface`: SO_BINDTODEVICE.
    pub interface: Option<String>,
    /// `acceptProxyProtocol` (in `sockopt`, or in `tcpSettings` as Xray also reads it): every
    /// connection must open with a PROXY protocol header (v1 or v2), whose client stands for
    /// the socket's peer.
    pub accept_proxy_protocol: bool,
    /// `trustedXForwardedFor`: header names (a CDN's own, say) whose presence in a WebSocket
    /// or HTTPUpgrade request makes its `X-Forwarded-For` the client's address, as in Xray.
    /// Empty (the default): the address is always the TCP peer's.
    pub trusted_x_forwarded_for: Vec<String>,
}

impl InboundSpec {
    /// Where it listens, for messages: `0.0.0.0:443`, `/dev/shm/x.sock` or `@name`.
    pub fn listen_text(&self) -> String {
        match &self.unix {
            Some(unix) => unix.name.to_string(),
            None => self.listen.to_string(),
        }
    }

    /// How messages name it: `inbounds[1] "vless-in"` as `shardray test` would, or
    /// `inbound "vless-in"` when the API added it.
    pub fn label(&self) -> String {
        match self.config_index {
            Some(i) => format!("inbounds[{i}] {:?}", self.tag),
            None => format!("inbound {:?}", self.tag),
        }
    }

    /// The networks it listens on: a TCP listener, a UDP socket, or both (dokodemo-door's
    /// `network`; every other inbound is TCP only).
    pub fn networks(&self) -> NetworkSet {
        match &self.protocol {
            InboundProtocol::Dokodemo(d) => d.network,
            InboundProtocol::Shadowsocks(s) => NetworkSet { tcp: true, udp: s.udp },
            _ => NetworkSet { tcp: true, udp: false },
        }
    }

    /// A copy of the inbound with no users, without copying them first.
    pub fn clone_without_users(&self) -> InboundSpec {
        let protocol = match &self.protocol {
            InboundProtocol::Vless(v) => {
                InboundProtocol::Vless(VlessInboundSpec { clients: Vec::new(), fallbacks: v.fallbacks.clone() })
            }
            InboundProtocol::Trojan(t) => {
                InboundProtocol::Trojan(TrojanInboundSpec { clients: Vec::new(), fallbacks: t.fallbacks.clone() })
            }
            InboundProtocol::Vmess(_) => InboundProtocol::Vmess(VmessInboundSpec { clients: Vec::new() }),
            InboundProtocol::Socks(p) => InboundProtocol::Socks(p.clone_settings()),
            InboundProtocol::Http(p) => InboundProtocol::Http(p.clone_settings()),
            InboundProtocol::Shadowsocks(s) => {
                InboundProtocol::Shadowsocks(ShadowsocksInboundSpec { clients: Vec::new(), ..s.clone_settings() })
            }
            InboundProtocol::Dokodemo(d) => InboundProtocol::Dokodemo(d.clone()),
        };
        InboundSpec {
            tag: self.tag.clone(),
            listen: self.listen,
            unix: self.unix.clone(),
            tls: self.tls.clone(),
            reality: self.reality.clone(),
            protocol,
            config_index: self.config_index,
            sockopt: self.sockopt.clone(),
            http_header: self.http_header.clone(),
            transport: self.transport.clone(),
            sniffing: self.sniffing.clone(),
        }
    }
}

/// The protocol an inbound speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundProtocol {
    /// `vless`
    Vless(VlessInboundSpec),
    /// `trojan`
    Trojan(TrojanInboundSpec),
    /// `vmess` (AEAD only: alterId 0)
    Vmess(VmessInboundSpec),
    /// `shadowsocks` (AEAD and 2022 methods)
    Shadowsocks(ShadowsocksInboundSpec),
    /// `dokodemo-door` (other than the API's own)
    Dokodemo(DokodemoSpec),
    /// `socks` (SOCKS5, SOCKS4/4a; HTTP proxy requests on the same port, as Xray serves them)
    Socks(SocksInboundSpec),
    /// `http` (a forward proxy: CONNECT and absolute-URI requests)
    Http(HttpInboundSpec),
}

impl InboundProtocol {
    /// The protocol's name as config writes it.
    pub fn name(&self) -> &'static str {
        match self {
            InboundProtocol::Vless(_) => "vless",
            InboundProtocol::Trojan(_) => "trojan",
            InboundProtocol::Vmess(_) => "vmess",
            InboundProtocol::Shadowsocks(_) => "shadowsocks",
            InboundProtocol::Dokodemo(_) => "dokodemo-door",
            InboundProtocol::Socks(_) => "socks",
            InboundProtocol::Http(_) => "http",
        }
    }

    /// The protocol its users' accounts belong to: the name, except for a Shadowsocks 2022
    /// inbound, whose users are `shadowsocks_2022` accounts (Xray's separate proxy).
    pub fn account_protocol(&self) -> &'static str {
        match self {
            InboundProtocol::Shadowsocks(s) if s.method_2022.is_some() => "shadowsocks_2022",
            other => other.name(),
        }
    }

    /// The configured users; `None` for a protocol without users (dokodemo-door).
    pub fn clients(&self) -> Option<&[UserSpec]> {
        match self {
            InboundProtocol::Vless(v) => Some(&v.clients),
            InboundProtocol::Trojan(t) => Some(&t.clients),
            InboundProtocol::Vmess(v) => Some(&v.clients),
            InboundProtocol::Socks(p) => Some(&p.clients),
            InboundProtocol::Http(p) => Some(&p.clients),
            InboundProtocol::Shadowsocks(s) => Some(&s.clients),
            InboundProtocol::Dokodemo(_) => None,
        }
    }

    /// The fallbacks (empty for a protocol without them).
    pub fn fallbacks(&self) -> &[FallbackSpec] {
        match self {
            InboundProtocol::Vless(v) => &v.fallbacks,
            InboundProtocol::Trojan(t) => &t.fallbacks,
            InboundProtocol::Vmess(_)
            | InboundProtocol::Shadowsocks(_)
            | InboundProtocol::Dokodemo(_)
            | InboundProtocol::Socks(_)
            | InboundProtocol::Http(_) => &[],
        }
    }
}

/// `settings` of a VLESS inbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlessInboundSpec {
    /// `clients`
    pub clients: Vec<UserSpec>,
    /// `fallbacks`, in config order.
    pub fallbacks: Vec<FallbackSpec>,
}

/// `settings` of a Trojan inbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrojanInboundSpec {
    /// `clients`
    pub clients: Vec<UserSpec>,
    /// `fallbacks`, in config order.
    pub fallbacks: Vec<FallbackSpec>,
}

/// `settings` of a VMess inbound. VMess has no fallbacks: a failed handshake is drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmessInboundSpec {
    /// `clients` (or Xray's newer `users`)
    pub clients: Vec<UserSpec>,
}

/// `settings` of a SOCKS inbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksInboundSpec {
    /// `auth` is `"password"`: clients must present one of the accounts (SOCKS5 username and
    /// password, or HTTP Basic on the same port); SOCKS4, which carries no password, is refused.
    /// Anything else is Xray's default, `"noauth"`, and the accounts are not asked for.
    pub password_auth: bool,
    /// `accounts` (or `users`): each `{user, pass}`, with our optional `email` and `level`.
    pub clients: Vec<UserSpec>,
    /// `udp`: UDP ASSOCIATE is served (else it gets "command not supported").
    pub udp: bool,
    /// `ip`: the address the UDP ASSOCIATE reply names (else the address the client reached).
    pub udp_ip: Option<shardray_wire::addr::Address>,
    /// `userLevel`: the policy level of a session without an account.
    pub user_level: u32,
}

impl SocksInboundSpec {
    /// The settings without the clients.
    pub fn clone_settings(&self) -> SocksInboundSpec {
        SocksInboundSpec { clients: Vec::new(), udp_ip: self.udp_ip.clone(), ..*self }
    }
}

/// `settings` of an HTTP proxy inbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpInboundSpec {
    /// `accounts` (or `users`): each `{user, pass}`, with our optional `email` and `level`.
    /// With any, every request must carry `Proxy-Authorization: Basic` for one of them.
    pub clients: Vec<UserSpec>,
    /// `allowTransparent`: an origin-form request goes to its `Host` header.
    pub allow_transparent: bool,
    /// `userLevel`: the policy level of a session without an account.
    pub user_level: u32,
}

impl HttpInboundSpec {
    /// The settings without the clients.
    pub fn clone_settings(&self) -> HttpInboundSpec {
        HttpInboundSpec { clients: Vec::new(), ..*self }
    }
}

/// A SOCKS or HTTP proxy account: `{user, pass}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyAccount {
    /// `user`
    pub username: Arc<str>,
    /// `pass`
    pub password: Arc<str>,
}

impl ProxyAccount {
    /// The key a shard looks the account up by.
    pub fn key(&self) -> UserId {
        UserId::Password(shardray_wire::socks::account_key(self.username.as_bytes(), self.password.as_bytes()))
    }
}

/// `settings` of a Shadowsocks inbound. Shadowsocks has no fallbacks: a failed handshake is
/// drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowsocksInboundSpec {
    /// `method` of a 2022 inbound, whose users' PSKs are keys of it; `None` for classic AEAD,
    /// where each user names its own method.
    pub method_2022: Option<Method>,
    /// `password` of a multi-user 2022 inbound: the server's identity PSK (base64). `None`
    /// for a single-user 2022 inbound (its one user's PSK is the password) and for classic.
    pub server_psk: Option<Arc<str>>,
    /// The users: `clients` (or `users`), or the one user `method`/`password`/`email`/`level`
    /// of the settings make.
    pub clients: Vec<UserSpec>,
    /// `network` names UDP: a UDP socket on the port beside TCP.
    pub udp: bool,
}

impl ShadowsocksInboundSpec {
    /// Everything but the users.
    pub fn clone_settings(&self) -> ShadowsocksInboundSpec {
        ShadowsocksInboundSpec {
            method_2022: self.method_2022,
            server_psk: self.server_psk.clone(),
            clients: Vec::new(),
            udp: self.udp,
        }
    }

    /// A 2022 inbound whose requests carry identity headers (several users on one port).
    pub fn multi_user_2022(&self) -> bool {
        self.server_psk.is_some()
    }
}

/// A VMess account's `security`: what its clients are told to use (share links, the API's
/// account). The server reads the security each request names, so this is not part of the
/// account's identity: two accounts with one id are the same account whatever it says.
#[derive(Debug, Clone, Copy)]
pub struct VmessSecurity(pub shardray_wire::vmess::SecurityConfig);

impl Default for VmessSecurity {
    fn default() -> Self {
        VmessSecurity(shardray_wire::vmess::SecurityConfig::Auto)
    }
}

impl PartialEq for VmessSecurity {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for VmessSecurity {}

impl std::hash::Hash for VmessSecurity {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl VmessSecurity {
    /// The name config gives it.
    pub fn name(self) -> &'static str {
        use shardray_wire::vmess::SecurityConfig as S;
        match self.0 {
            S::Auto => "auto",
            S::Aes128Gcm => "aes-128-gcm",
            S::ChaCha20Poly1305 => "chacha20-poly1305",
            S::None => "none",
            S::Zero => "zero",
        }
    }
}

/// A VLESS user's `flow`. Not part of the account's identity, as VMess's `security` is not:
/// two clients with one id are duplicates whatever their flows.
#[derive(Debug, Clone, Copy, Default)]
pub enum VlessFlow {
    /// No flow: plain VLESS.
    #[default]
    None,
    /// `xtls-rprx-vision`.
    Vision,
}

impl VlessFlow {
    /// The name config and the API give it (empty for none).
    pub fn name(self) -> &'static str {
        match self {
            VlessFlow::None => "",
            VlessFlow::Vision => shardray_wire::vision::FLOW,
        }
    }
}

impl PartialEq for VlessFlow {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for VlessFlow {}

impl std::hash::Hash for VlessFlow {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

/// What a user's client presents, by protocol: `clients[i].id` of a VLESS inbound,
/// `clients[i].password` of a Trojan one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Account {
    /// A VLESS user's id and `flow`.
    Vless(Uuid, VlessFlow),
    /// A Trojan user's password.
    Trojan(Arc<str>),
    /// A SOCKS account.
    Socks(ProxyAccount),
    /// An HTTP proxy account.
    Http(ProxyAccount),
    /// A VMess user's id (alterId 0), with the security its clients are told to use.
    Vmess {
        /// `id`
        id: Uuid,
        /// `security` (not part of the account's identity, see `VmessSecurity`)
        security: VmessSecurity,
    },
    /// A classic Shadowsocks user: its AEAD method and password.
    Shadowsocks {
        /// `method`
        method: Method,
        /// `password`
        password: Arc<str>,
    },
    /// A Shadowsocks 2022 user: its PSK, base64 (the inbound names the method).
    Shadowsocks2022 {
        /// `password`
        key: Arc<str>,
    },
}

impl Account {
    /// The key a shard looks the user up by (a Trojan password's SHA-224, in hex).
    pub fn key(&self) -> UserId {
        match self {
            Account::Vless(id, _) => UserId::Uuid(*id),
            Account::Trojan(password) => UserId::Trojan(shardray_wire::trojan::password_key(password)),
            // VMess looks users up by the auth ID each one's UUID keys; the table derives the
            // keys from the UUID.
            Account::Vmess { id, .. } => UserId::Uuid(*id),
            Account::Socks(a) | Account::Http(a) => a.key(),
            // Validated when the account was made; an invalid one keys nobody.
            Account::Shadowsocks { method, password } => UserId::Shadowsocks(
                *method,
                MasterKey::from_password(*method, password).unwrap_or(MasterKey::from_bytes(&[])),
            ),
            Account::Shadowsocks2022 { key } => {
                UserId::Shadowsocks2022(MasterKey::from_psk_any(key).unwrap_or(MasterKey::from_bytes(&[])))
            }
        }
    }

    /// Whether the account is a VLESS user with the Vision flow.
    pub fn vision(&self) -> bool {
        matches!(self, Account::Vless(_, VlessFlow::Vision))
    }

    /// The protocol the account belongs to, as config names it.
    pub fn protocol(&self) -> &'static str {
        match self {
            Account::Vless(..) => "vless",
            Account::Trojan(_) => "trojan",
            Account::Vmess { .. } => "vmess",
            Account::Socks(_) => "socks",
            Account::Http(_) => "http",
            Account::Shadowsocks { .. } => "shadowsocks",
            Account::Shadowsocks2022 { .. } => "shadowsocks_2022",
        }
    }
}

/// A user (`clients[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// `id` (VLESS) or `password` (Trojan).
    pub account: Account,
    /// `email`: the name counters and logs use; may be empty.
    pub email: String,
    /// `level`: the policy level.
    pub level: u32,
    /// `quota` and `expiry` (ours): what the user may use; unset for most users.
    pub quota: crate::quota::QuotaSpec,
}

/// A fallback (`fallbacks[i]`): where a failed VLESS or Trojan handshake's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackSpec {
    /// `name`: match on the TLS SNI; empty matches any.
    pub name: String,
    /// `alpn`: match on the negotiated ALPN; empty matches any.
    pub alpn: String,
    /// `path`: match on the HTTP path of the first request; empty matches any.
    pub path: String,
    /// `dest`: where to send the bytes.
    pub dest: FallbackDest,
    /// `xver`: PROXY protocol version to send first (0 none, 1 or 2).
    pub xver: u8,
}

/// Where a fallback goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackDest {
    /// A TCP address (`80`, `"127.0.0.1:80"`, `"example.com:80"`).
    Tcp(Destination),
    /// A Unix socket path (`"/dev/shm/x.sock"`; a leading `@` is an abstract socket).
    Unix(PathBuf),
}

/// `settings` of a dokodemo-door inbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DokodemoSpec {
    /// `address` and `port`: where every connection goes.
    pub destination: Destination,
    /// `userLevel`: the policy level for its connections.
    pub user_level: u32,
    /// `network` (or `allowedNetwork`): TCP, UDP or both; TCP alone when the config names none.
    pub network: NetworkSet,
}

/// TLS server settings (`streamSettings.tlsSettings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServerSpec {
    /// `serverName`: for logs and SNI-based fallback choice.
    pub server_name: String,
    /// `alpn`: protocols offered, in order (upstream's default: `h2`, `http/1.1`).
    pub alpn: Vec<String>,
    /// `certificates`: PEM chains and keys, already read from their files.
    pub certificates: Vec<CertificateSpec>,
    /// `minVersion`: "1.2" or "1.3"; `None` lets rustls choose.
    pub min_version: Option<TlsVersion>,
    /// `maxVersion`
    pub max_version: Option<TlsVersion>,
    /// `cipherSuites`, split at `:` and in order: restricts (and, as the server's preference,
    /// orders) the suites offered; empty for rustls's defaults.
    pub cipher_suites: Vec<String>,
    /// `enableSessionResumption`: issue session tickets so returning clients skip the full
    /// handshake. Off by default, as in Xray (whose server then sends no tickets).
    pub session_resumption: bool,
}

/// REALITY server settings (`streamSettings.realitySettings` of an inbound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealityServerSpec {
    /// `show`: log every connection's verdict in detail.
    pub show: bool,
    /// `target` (or its older name `dest`): where connections that do not authenticate go.
    pub target: FallbackDest,
    /// `xver`: the PROXY protocol version sent to the target first (0 none, 1 or 2).
    pub xver: u8,
    /// `serverNames`: the TLS server names authenticated (exact).
    pub server_names: Vec<String>,
    /// `privateKey`: the X25519 private key.
    pub private_key: [u8; 32],
    /// `shortIds`, each zero-padded to 8 bytes.
    pub short_ids: Vec<[u8; 8]>,
    /// `minClientVer`: `None` takes any (Xray's default, 26.3.27, would refuse sing-box and
    /// shoes).
    pub min_client_ver: Option<[u8; 3]>,
    /// `maxClientVer`
    pub max_client_ver: Option<[u8; 3]>,
    /// `maxTimeDiff` in milliseconds; 0 checks no time.
    pub max_time_diff_ms: u64,
    /// What share links tell clients to present as (`fingerprint`, or the panels'
    /// `settings.fingerprint`; `chrome` when none is given).
    pub fingerprint: String,
    /// `spiderX` (or `settings.spiderX`) for share links; empty when none is given.
    pub spider_x: String,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2
    V1_2,
    /// TLS 1.3
    V1_3,
}

/// One certificate and its key, in PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSpec {
    /// The certificate chain, PEM.
    pub chain_pem: Vec<u8>,
    /// The private key, PEM.
    pub key_pem: Vec<u8>,
}

/// One outbound (`outbounds[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundSpec {
    /// `tag`
    pub tag: String,
    /// `sendThrough`: the local address to dial from.
    pub send_through: Option<IpAddr>,
    /// `streamSettings.sockopt`: what its dialed sockets carry (SO_MARK, the interface, TCP
    /// options), for the server or, for freedom, the destination. Boxed: rare, and specs
    /// travel in every change.
    pub sockopt: Box<SocketOptions>,
    /// `protocol` and `settings`.
    pub protocol: OutboundProtocol,
}

/// The protocol an outbound speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundProtocol {
    /// `freedom`: connect directly.
    Freedom(FreedomSpec),
    /// `blackhole`: drop the connection.
    Blackhole(BlackholeSpec),
    /// `trojan`: relay through a Trojan server.
    Trojan(TrojanOutboundSpec),
    /// `vmess`: relay through a VMess server (AEAD, TCP).
    Vmess(VmessOutboundSpec),
    /// `socks`: relay through a SOCKS5 server (CONNECT).
    Socks(ProxyOutboundSpec),
    /// `http`: relay through an HTTP proxy (CONNECT).
    Http(ProxyOutboundSpec),
    /// `vless`: relay through a VLESS server (TCP, and UDP as `Command::Udp`).
    Vless(VlessOutboundSpec),
    /// `shadowsocks`: relay through a Shadowsocks server (AEAD or 2022, TCP).
    Shadowsocks(ShadowsocksOutboundSpec),
    /// `dns`: answers the DNS queries routed to it from the `dns` object's resolver.
    Dns(DnsOutboundSpec),
}

/// `settings` and `streamSettings` of a VLESS outbound (one server, one user, no flow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlessOutboundSpec {
    /// `vnext[0].address` and `vnext[0].port`.
    pub server: Destination,
    /// `vnext[0].users[0].id`.
    pub id: Uuid,
    /// `vnext[0].users[0].email`, for logs.
    pub email: String,
    /// `vnext[0].users[0].level`.
    pub level: u32,
    /// `streamSettings` with `security: "tls"`; `None` sends VLESS over plain TCP.
    pub tls: Option<TlsClientSpec>,
    /// `streamSettings` with `security: "reality"` (then `tls` is `None`, the transport raw).
    pub reality: Option<Box<RealityClientSpec>>,
    /// `streamSettings.network`: raw TCP or gRPC.
    pub transport: TransportSpec,
    /// `vnext[0].users[0].flow`: Vision (over TLS only), or none.
    pub flow: VlessFlow,
    /// `vnext[0].users[0].packetEncoding`: UDP goes as XUDP (mux.cool frames, each packet
    /// with its own address; `xudp` or absent, as Xray's client sends it, UDP to ports 53 and
    /// 443 excepted), or by the UDP command to one destination (`none`).
    pub xudp: bool,
}

/// `settings` of a Shadowsocks outbound (one server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowsocksOutboundSpec {
    /// `servers[0].address` and `servers[0].port`.
    pub server: Destination,
    /// `servers[0].method`.
    pub method: Method,
    /// `servers[0].password`: a password (classic), or a PSK, or `serverPSK:userPSK` (2022).
    pub password: String,
    /// `servers[0].email`, for logs.
    pub email: String,
    /// `servers[0].level`.
    pub level: u32,
}

/// `settings` and `streamSettings` of a SOCKS or HTTP outbound (one server, at most one user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOutboundSpec {
    /// `servers[0].address` and `servers[0].port`.
    pub server: Destination,
    /// `servers[0].users[0]`: the credentials to present; `None` asks for no authentication.
    pub account: Option<ProxyAccount>,
    /// `servers[0].users[0].email`, for logs.
    pub email: String,
    /// `servers[0].users[0].level`.
    pub level: u32,
    /// `headers` (HTTP only): extra header fields sent with the CONNECT, in name order.
    pub headers: Vec<(String, String)>,
    /// `streamSettings` with `security: "tls"`; `None` speaks to the server over plain TCP.
    pub tls: Option<TlsClientSpec>,
}

/// `settings` and `streamSettings` of a VMess outbound (one server, one user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmessOutboundSpec {
    /// `vnext[0].address` and `vnext[0].port`.
    pub server: Destination,
    /// `vnext[0].users[0].id`.
    pub id: Uuid,
    /// `vnext[0].users[0].security` (`auto` resolved when the shard builds the client).
    pub security: VmessSecurity,
    /// `experiments` names `AuthenticatedLength`: chunk lengths are sealed.
    pub authenticated_length: bool,
    /// `vnext[0].users[0].email`, for logs.
    pub email: String,
    /// `vnext[0].users[0].level`.
    pub level: u32,
    /// `streamSettings` with `security: "tls"`; `None` sends VMess over plain TCP.
    pub tls: Option<TlsClientSpec>,
    /// `streamSettings` with `security: "reality"` (then `tls` is `None`, the transport raw).
    pub reality: Option<Box<RealityClientSpec>>,
    /// `streamSettings.network`: raw TCP, WebSocket or HTTPUpgrade.
    pub transport: TransportSpec,
}

/// `settings` and `streamSettings` of a Trojan outbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrojanOutboundSpec {
    /// `servers[0].address` and `servers[0].port`.
    pub server: Destination,
    /// `servers[0].password`.
    pub password: String,
    /// `servers[0].email`, for logs.
    pub email: String,
    /// `servers[0].level`.
    pub level: u32,
    /// `streamSettings` with `security: "tls"`; `None` sends Trojan over plain TCP.
    pub tls: Option<TlsClientSpec>,
    /// `streamSettings` with `security: "reality"` (then `tls` is `None`, the transport raw).
    pub reality: Option<Box<RealityClientSpec>>,
    /// `streamSettings.network`: raw TCP, WebSocket or HTTPUpgrade.
    pub transport: TransportSpec,
}

/// REALITY client settings (an outbound's `streamSettings.realitySettings`, `security:
/// "reality"`), over raw TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealityClientSpec {
    /// `serverName`: the SNI sent, one of the server's `serverNames` (default: the server's
    /// address).
    pub server_name: String,
    /// `publicKey` (or `password`): the server's X25519 public key.
    pub public_key: [u8; 32],
    /// `shortId`, zero-padded to 8 bytes.
    pub short_id: [u8; 8],
    /// `fingerprint`, as given: recorded only, the ClientHello is always Chrome-shaped.
    pub fingerprint: String,
    /// `show`: recorded only (a handshake that fails is logged with its reason anyway).
    pub show: bool,
}

/// TLS client settings (an outbound's `streamSettings.tlsSettings`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsClientSpec {
    /// `serverName`: the SNI sent and the name the certificate must carry (default: the
    /// server's address).
    pub server_name: String,
    /// `allowInsecure`: accept any certificate.
    pub allow_insecure: bool,
    /// `alpn`: protocols offered, in order (none when empty).
    pub alpn: Vec<String>,
}

/// `settings` of a freedom outbound.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FreedomSpec {
    /// `domainStrategy`: which address families a domain resolves to.
    pub domain_strategy: DomainStrategy,
    /// `redirect`: send everything here instead ("host:port"; a 0 port keeps the original).
    pub redirect: Option<Destination>,
    /// `userLevel`
    pub user_level: u32,
}

/// How freedom resolves domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DomainStrategy {
    /// `AsIs`: the system resolver, any family.
    #[default]
    AsIs,
    /// `UseIP`: any family.
    UseIp,
    /// `UseIPv4`
    UseIpv4,
    /// `UseIPv6`
    UseIpv6,
}

/// `settings` of a blackhole outbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlackholeSpec {
    /// `response.type == "http"`: answer with an HTTP 403 before closing.
    pub http_response: bool,
}

/// Routing (`routing`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutingSpec {
    /// `domainStrategy`
    pub domain_strategy: RoutingDomainStrategy,
    /// `rules`, first match wins.
    pub rules: Vec<RuleSpec>,
    /// `balancers`: groups of outbounds a rule may send to instead of one outbound.
    pub balancers: Vec<BalancerSpec>,
}

/// A balancer (`routing.balancers[i]`): picks one of the outbounds whose tag starts with one
/// of its selectors, connection by connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BalancerSpec {
    /// `tag`: what rules name in `balancerTag`.
    pub tag: String,
    /// `selector`: tag prefixes; every outbound whose tag starts with one is a candidate.
    pub selectors: Vec<String>,
    /// `strategy.type`
    pub strategy: BalancerStrategy,
    /// `fallbackTag`: the outbound used when no outbound matches the selectors.
    pub fallback_tag: String,
}

/// How a balancer picks among its candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BalancerStrategy {
    /// `random` (the default): any candidate, uniformly.
    #[default]
    Random,
    /// `roundRobin`: the candidates in turn (per shard).
    RoundRobin,
}

impl BalancerStrategy {
    /// The name config and the API give it.
    pub fn name(self) -> &'static str {
        match self {
            BalancerStrategy::Random => "random",
            BalancerStrategy::RoundRobin => "roundRobin",
        }
    }
}

/// Whether routing resolves domains to match IP rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingDomainStrategy {
    /// `AsIs`: domains are matched by name only.
    #[default]
    AsIs,
    /// `IPIfNonMatch`: if no rule matches the name, resolve it and try the IP rules.
    IpIfNonMatch,
    /// `IPOnDemand`: resolve as soon as an IP rule is met.
    IpOnDemand,
}

/// One routing rule: every condition present must match; an absent condition matches all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSpec {
    /// `ruleTag`
    pub rule_tag: String,
    /// `inboundTag`
    pub inbound_tags: Vec<String>,
    /// `user`: emails.
    pub users: Vec<String>,
    /// `domain` (also `domains`)
    pub domains: Vec<DomainMatcher>,
    /// `ip`: destination networks (`geoip:private` expanded, `!` negation not supported).
    pub ips: Vec<IpNet>,
    /// `port`: destination ports.
    pub ports: Vec<PortRange>,
    /// `network`: `tcp`, `udp` or both; `None` matches any.
    pub network: Option<NetworkSet>,
    /// `source`: client networks.
    pub source_ips: Vec<IpNet>,
    /// `sourcePort`
    pub source_ports: Vec<PortRange>,
    /// `protocol`: sniffed protocols (`http`, `tls`, `quic`, `bittorrent`), matched as
    /// prefixes of the sniffed name as upstream does (`http` matches `http1`).
    pub protocols: Vec<String>,
    /// `attrs`: HTTP request attributes (`:method`, `:path`, header names, in lowercase), each
    /// with a regular expression its value must contain a match of; all must hold.
    pub attrs: Vec<(String, String)>,
    /// `outboundTag`; empty when the rule names a balancer.
    pub outbound_tag: String,
    /// `balancerTag`; empty when the rule names an outbound.
    pub balancer_tag: String,
}

impl RuleSpec {
    /// Whether the rule has any condition at all (upstream refuses a rule without one).
    pub fn has_condition(&self) -> bool {
        !self.inbound_tags.is_empty()
            || !self.users.is_empty()
            || !self.domains.is_empty()
            || !self.ips.is_empty()
            || !self.ports.is_empty()
            || self.network.is_some()
            || !self.source_ips.is_empty()
            || !self.source_ports.is_empty()
            || !self.protocols.is_empty()
            || !self.attrs.is_empty()
    }
}

/// A domain condition, as written in `domain` rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainMatcher {
    /// A bare string or `keyword:`: the name contains it.
    Keyword(String),
    /// `full:`: the name equals it.
    Full(String),
    /// `domain:`: the name is it or a subdomain of it.
    Domain(String),
    /// `regexp:`: the name matches the regular expression (checked at load).
    Regex(String),
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub from: u16,
    /// Last port (inclusive).
    pub to: u16,
}

/// A set of transport networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkSet {
    /// TCP included.
    pub tcp: bool,
    /// UDP included.
    pub udp: bool,
}

// === dns ===

/// The `dns` object, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsSpec {
    /// `hosts`, in Xray's order (keys sorted): the first that matches answers.
    pub hosts: Vec<HostMapping>,
    /// `servers`, in order; empty means the system resolver (`localhost`).
    pub servers: Vec<DnsServerSpec>,
    /// `queryStrategy`: which families are ever asked for.
    pub query_strategy: QueryStrategy,
    /// `disableCache`
    pub disable_cache: bool,
    /// `disableFallback`: only the servers whose `domains` match are asked.
    pub disable_fallback: bool,
    /// `disableFallbackIfMatch`: no fallback once a server's `domains` matched.
    pub disable_fallback_if_match: bool,
    /// `tag`: kept for the config's sake (queries leave directly, not through routing).
    pub tag: Option<String>,
}

/// One `hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMapping {
    /// The names it covers.
    pub domain: DomainMatcher,
    /// What they resolve to.
    pub answer: HostAnswer,
}

/// What a `hosts` entry maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAnswer {
    /// These addresses.
    Ips(Vec<IpAddr>),
    /// Whatever this other name resolves to.
    Alias(String),
}

/// One of `servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsServerSpec {
    /// Where and how to ask.
    pub address: DnsAddress,
    /// `domains`: names this server is asked first for.
    pub domains: Vec<DomainMatcher>,
    /// `expectIPs`: answers outside these are dropped (then the next server is asked).
    pub expect_ips: Vec<IpNet>,
    /// `expectIPs` holds `"*"`: when nothing is in `expect_ips`, the whole answer stands.
    pub expect_ips_prefer: bool,
    /// `unexpectedIPs`: answers inside these are dropped.
    pub unexpected_ips: Vec<IpNet>,
    /// `skipFallback`: not asked as a fallback, only for its `domains`.
    pub skip_fallback: bool,
    /// `queryStrategy` of this server, if set.
    pub query_strategy: Option<QueryStrategy>,
    /// `timeoutMs`, or Xray's 4 s.
    pub timeout: Duration,
    /// `disableCache` of this server.
    pub disable_cache: bool,
}

/// A name server's address and protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAddress {
    /// A plain IP or `udp://`: DNS over UDP.
    Udp(Destination),
    /// `tcp://` or `tcp+local://`: DNS over TCP.
    Tcp(Destination),
    /// `tls://`: DNS over TLS (port 853 unless given).
    Tls(Destination),
    /// `https://` or `https+local://`: DNS over HTTPS; the host, port and path of the URL.
    Https {
        /// Host and port.
        server: Destination,
        /// The URL's path (`/dns-query` by default).
        path: String,
    },
    /// `localhost`: the system resolver.
    Localhost,
}

/// `queryStrategy`: which address families are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryStrategy {
    /// `UseIP`: A and AAAA.
    #[default]
    UseIp,
    /// `UseIPv4`: A only.
    UseIpv4,
    /// `UseIPv6`: AAAA only.
    UseIpv6,
}

/// `settings` of a `dns` outbound.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsOutboundSpec {
    /// `network`, `address`, `port`: where queries the resolver does not answer go instead of
    /// their own destination (each part optional).
    pub rewrite_network: Option<DnsNetwork>,
    /// `address` (with `port`).
    pub rewrite_address: Option<shardray_wire::addr::Address>,
    /// `port`
    pub rewrite_port: Option<u16>,
    /// `nonIPQuery`: what happens to queries other than A and AAAA.
    pub non_ip_query: NonIpQuery,
    /// `blockTypes`: query types answered with an empty response.
    pub block_types: Vec<u16>,
}

/// `network` of a `dns` outbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsNetwork {
    /// `tcp`
    Tcp,
    /// `udp`
    Udp,
}

/// `nonIPQuery` of a `dns` outbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonIpQuery {
    /// `reject`: answered with a refusal (Xray's default).
    #[default]
    Reject,
    /// `drop`: not answered.
    Drop,
    /// `skip`: sent on to the destination (or the rewritten one) as is.
    Skip,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_socket_names_read_as_xray_reads_them() {
        assert_eq!(UnixSocketName::parse("127.0.0.1"), None);
        assert_eq!(UnixSocketName::parse("/run/x.sock"), Some(UnixSocketName::Path("/run/x.sock".into())));
        let plain = UnixSocketName::parse("@xray").unwrap();
        assert_eq!(plain.sun_path(), b"\0xray");
        assert_eq!(plain.to_string(), "@xray");
        // `@@`: the name, then NULs to the end of the 108-byte sun_path (its first byte the NUL).
        let padded = UnixSocketName::parse("@@xray").unwrap();
        let path = padded.sun_path();
        assert_eq!(path.len(), 108);
        assert_eq!(&path[..5], b"\0xray");
        assert!(path[5..].iter().all(|&b| b == 0));
        assert_eq!(padded.to_string(), "@@xray");
    }
}
