//! The raw shapes of Xray JSON as serde reads them: upstream's field names, nothing checked yet.
//!
//! Objects whose fields upstream fixes deny unknown fields, so a typo is reported with its path.
//! Values whose shape depends on a sibling (`settings` on `protocol`) or that upstream accepts in
//! more than one form (a port as a number or a string) stay `Value` until validation. Fields
//! whose names start with `_` are accepted for upstream's sake and ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawConfig {
    pub log: Option<RawLog>,
    pub api: Option<RawApi>,
    pub stats: Option<RawStats>,
    pub policy: Option<RawPolicy>,
    pub inbounds: Option<Vec<RawInbound>>,
    pub outbounds: Option<Vec<RawOutbound>>,
    pub routing: Option<RawRouting>,
    // Sections upstream has and shardray does not serve yet: only an empty object passes.
    pub dns: Option<Value>,
    pub transport: Option<Value>,
    pub reverse: Option<Value>,
    pub fakedns: Option<Value>,
    pub observatory: Option<Value>,
    pub burst_observatory: Option<Value>,
    pub metrics: Option<Value>,
}

/// `metrics`: Xray's `tag` and `listen`, and our per-user series switches.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawMetrics {
    pub tag: Option<String>,
    pub listen: Option<String>,
    pub user_series: Option<bool>,
    pub max_user_series: Option<u64>,
}

/// `log`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawLog {
    pub loglevel: Option<String>,
    pub access: Option<String>,
    pub error: Option<String>,
    pub dns_log: Option<bool>,
    #[serde(rename = "maskAddress")]
    pub _mask_address: Option<String>,
}

/// `api`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawApi {
    pub tag: Option<String>,
    pub inbound_tag: Option<String>,
    pub services: Option<Vec<String>>,
    pub listen: Option<String>,
    /// Ours: the API's credentials.
    pub tokens: Option<Vec<RawApiToken>>,
    /// Ours: a Unix-socket API's permission bits, in octal (`"0660"`).
    pub socket_mode: Option<String>,
    /// Ours: mutual TLS.
    pub tls: Option<RawApiTls>,
    /// Ours: calls per caller.
    pub call_limit: Option<RawCallLimit>,
}

/// `api.tls` (ours)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawApiTls {
    pub certificate_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub clients: Option<Vec<RawApiTlsClient>>,
    pub default_role: Option<String>,
}

/// `api.tls.clients[]` (ours)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawApiTlsClient {
    pub subject: Option<String>,
    pub role: Option<String>,
}

/// `api.callLimit` (ours)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawCallLimit {
    pub rate: Option<f64>,
    pub burst: Option<f64>,
}

/// `api.tokens[]` (ours)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawApiToken {
    pub name: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub role: Option<String>,
}

/// `stats`: no fields; its presence turns counters on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStats {}

/// `policy`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPolicy {
    pub levels: Option<BTreeMap<String, RawLevelPolicy>>,
    pub system: Option<RawSystemPolicy>,
}

/// `policy.levels.N`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawLevelPolicy {
    pub handshake: Option<u32>,
    pub conn_idle: Option<u32>,
    pub uplink_only: Option<u32>,
    pub downlink_only: Option<u32>,
    pub stats_user_uplink: Option<bool>,
    pub stats_user_downlink: Option<bool>,
    pub stats_user_online: Option<bool>,
    pub buffer_size: Option<i64>,
    /// Ours: bytes per second, a number or a string with a unit.
    pub uplink_rate: Option<Value>,
    pub downlink_rate: Option<Value>,
    pub max_connections: Option<u32>,
    #[serde(rename = "maxIPs")]
    pub max_ips: Option<u32>,
}

/// `policy.system`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSystemPolicy {
    pub stats_inbound_uplink: Option<bool>,
    pub stats_inbound_downlink: Option<bool>,
    pub stats_outbound_uplink: Option<bool>,
    pub stats_outbound_downlink: Option<bool>,
    pub max_connections: Option<u32>,
    pub max_inbound_connections: Option<u32>,
    pub max_handshakes_per_source: Option<u32>,
    pub trusted_hops: Option<StringList>,
    /// The V2Ray API article's place for the service list.
    pub api: Option<RawSystemApi>,
}

/// `policy.system.api`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSystemApi {
    pub services: Option<Vec<String>>,
}

/// `inbounds[i]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawInbound {
    pub tag: Option<String>,
    pub listen: Option<String>,
    pub port: Option<Value>,
    pub protocol: Option<String>,
    pub settings: Option<Value>,
    pub stream_settings: Option<RawStreamSettings>,
    pub sniffing: Option<RawSniffing>,
    pub allocate: Option<RawAllocate>,
}

/// `streamSettings`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawStreamSettings {
    pub network: Option<String>,
    pub security: Option<String>,
    pub tls_settings: Option<RawTlsSettings>,
    pub tcp_settings: Option<RawTcpSettings>,
    pub raw_settings: Option<RawTcpSettings>,
    pub sockopt: Option<RawSockopt>,
    /// 3x-ui's own bookkeeping (the addresses its share links use); the core ignores it.
    #[serde(rename = "externalProxy")]
    pub _external_proxy: Option<Value>,
    /// Read when `security` is `reality` (see config/reality.rs), else ignored as upstream does.
    pub reality_settings: Option<Value>,
    // Settings of transports not served yet. Upstream ignores them unless `network` selects
    // them, and so does shardray (selecting them is refused).
    pub ws_settings: Option<RawHttpTransport>,
    pub httpupgrade_settings: Option<RawHttpTransport>,
    pub grpc_settings: Option<RawGrpcSettings>,
    #[serde(rename = "httpSettings")]
    pub _http_settings: Option<Value>,
    pub xhttp_settings: Option<Value>,
    pub splithttp_settings: Option<Value>,
    #[serde(rename = "kcpSettings")]
    pub _kcp_settings: Option<Value>,
    #[serde(rename = "quicSettings")]
    pub _quic_settings: Option<Value>,
}

/// `streamSettings.sockopt` (Xray's infra/conf/transport_sockopt.go names).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSockopt {
    pub mark: Option<u32>,
    pub tcp_fast_open: Option<Value>,
    pub tcp_keep_alive_interval: Option<i64>,
    pub tcp_keep_alive_idle: Option<i64>,
    pub tcp_congestion: Option<String>,
    pub tcp_user_timeout: Option<i64>,
    pub tcp_window_clamp: Option<i64>,
    pub tcp_max_seg: Option<i64>,
    pub v6only: Option<bool>,
    pub interface: Option<String>,
    pub accept_proxy_protocol: Option<bool>,
    // Known, not served yet: only an empty value passes.
    pub tproxy: Option<String>,
    pub domain_strategy: Option<String>,
    pub dialer_proxy: Option<String>,
    pub penetrate: Option<bool>,
    pub tcp_mptcp: Option<bool>,
    pub custom_sockopt: Option<Value>,
    pub address_port_strategy: Option<String>,
    pub happy_eyeballs: Option<Value>,
    #[serde(rename = "trustedXForwardedFor")]
    pub trusted_x_forwarded_for: Option<StringList>,
}

/// `streamSettings.tlsSettings`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTlsSettings {
    pub server_name: Option<String>,
    pub alpn: Option<StringList>,
    pub certificates: Option<Vec<RawCertificate>>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub reject_unknown_sni: Option<bool>,
    pub cipher_suites: Option<String>,
    pub curve_preferences: Option<Vec<String>>,
    pub ech_server_keys: Option<String>,
    pub master_key_log: Option<String>,
    pub enable_session_resumption: Option<bool>,
    // Client-side settings, meaningless on a server: accepted and ignored.
    #[serde(rename = "allowInsecure")]
    pub _allow_insecure: Option<bool>,
    #[serde(rename = "fingerprint")]
    pub _fingerprint: Option<String>,
    #[serde(rename = "disableSystemRoot")]
    pub _disable_system_root: Option<bool>,
    #[serde(rename = "pinnedPeerCertificateChainSha256")]
    pub _pinned_peer_certificate_chain_sha256: Option<Value>,
    /// 3x-ui's own bookkeeping (what its share links tell clients: fingerprint, allowInsecure).
    #[serde(rename = "settings")]
    pub _settings: Option<Value>,
}

/// `tlsSettings.certificates[i]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawCertificate {
    pub certificate_file: Option<String>,
    pub key_file: Option<String>,
    pub certificate: Option<StringList>,
    pub key: Option<StringList>,
    pub usage: Option<String>,
    // Reloading and chain building: accepted and ignored (files are read once, at load).
    #[serde(rename = "ocspStapling")]
    pub _ocsp_stapling: Option<u64>,
    #[serde(rename = "oneTimeLoading")]
    pub _one_time_loading: Option<bool>,
    #[serde(rename = "buildChain")]
    pub _build_chain: Option<bool>,
    /// PasarGuard's own bookkeeping (whether its node serves this certificate).
    #[serde(rename = "serveOnNode")]
    pub _serve_on_node: Option<Value>,
}

/// `wsSettings` / `httpupgradeSettings` (Xray's names; V2Ray's early-data keys beside them).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawHttpTransport {
    pub path: Option<String>,
    pub host: Option<String>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    pub accept_proxy_protocol: Option<bool>,
    /// Xray's WebSocket ping period in seconds; shardray answers pings but sends none.
    pub heartbeat_period: Option<u32>,
    /// V2Ray 4's early data: a length and the header carrying it.
    pub max_early_data: Option<u32>,
    pub early_data_header_name: Option<String>,
}

/// `grpcSettings` (Xray's names: two camelCase, the rest snake_case).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrpcSettings {
    #[serde(rename = "serviceName")]
    pub service_name: Option<String>,
    #[serde(rename = "multiMode")]
    pub multi_mode: Option<bool>,
    pub idle_timeout: Option<i64>,
    pub health_check_timeout: Option<i64>,
    pub permit_without_stream: Option<bool>,
    pub initial_windows_size: Option<i64>,
    pub user_agent: Option<String>,
    pub authority: Option<String>,
}

/// `xhttpSettings` / `splithttpSettings` (Xray's `SplitHTTPConfig`: its `extra` holds the
/// same keys). Ranges are numbers or `"from-to"` strings, as Xray's `Int32Range`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawXhttpSettings {
    pub host: Option<String>,
    pub path: Option<String>,
    pub mode: Option<String>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    pub x_padding_bytes: Option<Value>,
    pub x_padding_obfs_mode: Option<bool>,
    pub x_padding_key: Option<String>,
    pub x_padding_header: Option<String>,
    pub x_padding_placement: Option<String>,
    pub x_padding_method: Option<String>,
    #[serde(rename = "uplinkHTTPMethod")]
    pub uplink_http_method: Option<String>,
    #[serde(rename = "sessionIDPlacement")]
    pub session_id_placement: Option<String>,
    #[serde(rename = "sessionIDKey")]
    pub session_id_key: Option<String>,
    #[serde(rename = "sessionIDTable")]
    pub session_id_table: Option<String>,
    #[serde(rename = "sessionIDLength")]
    pub session_id_length: Option<Value>,
    pub seq_placement: Option<String>,
    pub seq_key: Option<String>,
    pub uplink_data_placement: Option<String>,
    pub uplink_data_key: Option<String>,
    pub uplink_chunk_size: Option<Value>,
    #[serde(rename = "noGRPCHeader")]
    pub no_grpc_header: Option<bool>,
    #[serde(rename = "noSSEHeader")]
    pub no_sse_header: Option<bool>,
    pub sc_max_each_post_bytes: Option<Value>,
    pub sc_min_posts_interval_ms: Option<Value>,
    pub sc_max_buffered_posts: Option<i64>,
    pub sc_stream_up_server_secs: Option<Value>,
    pub server_max_header_bytes: Option<i64>,
    pub xmux: Option<RawXmux>,
    pub download_settings: Option<Value>,
    /// `Some(Null)` for `"extra": null`, which Xray reads as an empty extra.
    #[serde(default, deserialize_with = "present")]
    pub extra: Option<Value>,
    /// shardray's own: these settings are an API splithttp Config in JSON form
    /// (convert/inbound.rs), whose empty values Xray's server reads otherwise than its loader.
    pub from_api_config: Option<bool>,
}

/// A key's value, `null` included, when the key is present.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `xhttpSettings.xmux`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawXmux {
    pub max_concurrency: Option<Value>,
    pub max_connections: Option<Value>,
    pub c_max_reuse_times: Option<Value>,
    pub h_max_request_times: Option<Value>,
    pub h_max_reusable_secs: Option<Value>,
    pub h_keep_alive_period: Option<i64>,
}

/// `tcpSettings` / `rawSettings`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTcpSettings {
    pub header: Option<RawTcpHeader>,
    pub accept_proxy_protocol: Option<bool>,
}

/// `tcpSettings.header`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTcpHeader {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub request: Option<RawHttpRequest>,
    pub response: Option<RawHttpResponse>,
}

/// `tcpSettings.header.request` (type `http`)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpRequest {
    pub version: Option<String>,
    pub method: Option<String>,
    pub path: Option<StringList>,
    pub headers: Option<BTreeMap<String, StringList>>,
}

/// `tcpSettings.header.response` (type `http`)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpResponse {
    pub version: Option<String>,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub headers: Option<BTreeMap<String, StringList>>,
}

/// `sniffing`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSniffing {
    pub enabled: Option<bool>,
    pub dest_override: Option<StringList>,
    pub metadata_only: Option<bool>,
    pub domains_excluded: Option<StringList>,
    pub ips_excluded: Option<StringList>,
    pub route_only: Option<bool>,
}

/// `allocate`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAllocate {
    pub strategy: Option<String>,
    #[serde(rename = "refresh")]
    pub _refresh: Option<Value>,
    #[serde(rename = "concurrency")]
    pub _concurrency: Option<Value>,
}

/// `settings` of a VLESS inbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVlessSettings {
    pub clients: Option<Vec<RawVlessClient>>,
    /// The flow of clients that name none.
    pub flow: Option<String>,
    pub decryption: Option<String>,
    pub fallbacks: Option<Vec<RawFallback>>,
}

/// `settings.clients[i]` of a VLESS inbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVlessClient {
    pub id: Option<String>,
    pub email: Option<String>,
    pub level: Option<u32>,
    /// Ours: bytes the user may move, uplink plus downlink (a number or `"50GiB"`).
    pub quota: Option<Value>,
    /// Ours: when the user is suspended (RFC 3339 or unix seconds).
    pub expiry: Option<Value>,
    pub flow: Option<String>,
    /// Panels (3x-ui and its forks) keep their own bookkeeping in each client; upstream
    /// ignores it, and so do we. These names only: any other unknown field is still an error.
    #[serde(rename = "limitIp")]
    pub _limit_ip: Option<Value>,
    #[serde(rename = "totalGB")]
    pub _total_gb: Option<Value>,
    #[serde(rename = "expiryTime")]
    pub _expiry_time: Option<Value>,
    #[serde(rename = "enable")]
    pub _enable: Option<Value>,
    #[serde(rename = "tgId")]
    pub _tg_id: Option<Value>,
    #[serde(rename = "subId")]
    pub _sub_id: Option<Value>,
    #[serde(rename = "comment")]
    pub _comment: Option<Value>,
    #[serde(rename = "reset")]
    pub _reset: Option<Value>,
}

/// `settings` of a Trojan inbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrojanSettings {
    pub clients: Option<Vec<RawTrojanClient>>,
    pub fallbacks: Option<Vec<RawFallback>>,
}

/// `settings.clients[i]` of a Trojan inbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrojanClient {
    pub password: Option<String>,
    pub email: Option<String>,
    pub level: Option<u32>,
    /// Ours: bytes the user may move, uplink plus downlink (a number or `"50GiB"`).
    pub quota: Option<Value>,
    /// Ours: when the user is suspended (RFC 3339 or unix seconds).
    pub expiry: Option<Value>,
    /// Old Xray had XTLS flows on Trojan; only an empty flow is accepted.
    pub flow: Option<String>,
    /// Panel bookkeeping, accepted and ignored as on VLESS clients.
    #[serde(rename = "limitIp")]
    pub _limit_ip: Option<Value>,
    #[serde(rename = "totalGB")]
    pub _total_gb: Option<Value>,
    #[serde(rename = "expiryTime")]
    pub _expiry_time: Option<Value>,
    #[serde(rename = "enable")]
    pub _enable: Option<Value>,
    #[serde(rename = "tgId")]
    pub _tg_id: Option<Value>,
    #[serde(rename = "subId")]
    pub _sub_id: Option<Value>,
    #[serde(rename = "comment")]
    pub _comment: Option<Value>,
    #[serde(rename = "reset")]
    pub _reset: Option<Value>,
}

/// `settings` of a SOCKS inbound (Xray's `SocksServerConfig`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSocksSettings {
    pub auth: Option<String>,
    pub accounts: Option<Vec<RawProxyAccount>>,
    pub users: Option<Vec<RawProxyAccount>>,
    pub udp: Option<bool>,
    pub ip: Option<Value>,
    pub user_level: Option<u32>,
}

/// `settings` of an HTTP inbound (Xray's `HTTPServerConfig`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawHttpSettings {
    pub accounts: Option<Vec<RawProxyAccount>>,
    pub users: Option<Vec<RawProxyAccount>>,
    pub allow_transparent: Option<bool>,
    pub user_level: Option<u32>,
    /// Xray's old field, no longer read (a request's own idle timeout is the policy's).
    #[serde(rename = "timeout")]
    pub _timeout: Option<Value>,
}

/// `accounts[i]` of a SOCKS or HTTP inbound: Xray's `{user, pass}`; `email` and `level` are
/// ours (Xray counts the session under the username).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxyAccount {
    pub user: Option<String>,
    pub pass: Option<String>,
    pub email: Option<String>,
    pub level: Option<u32>,
    /// Ours: bytes the user may move, uplink plus downlink (a number or `"50GiB"`).
    pub quota: Option<Value>,
    /// Ours: when the user is suspended (RFC 3339 or unix seconds).
    pub expiry: Option<Value>,
}

/// `settings` of a SOCKS or HTTP outbound: `servers`, or Xray's flat form.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxyOutSettings {
    pub servers: Option<Vec<RawProxyServer>>,
    pub address: Option<String>,
    pub port: Option<Value>,
    pub user: Option<String>,
    pub pass: Option<String>,
    pub email: Option<String>,
    pub level: Option<u32>,
    /// HTTP only: header fields sent with the CONNECT.
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

/// `settings.servers[i]` of a SOCKS or HTTP outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxyServer {
    pub address: Option<String>,
    pub port: Option<Value>,
    pub users: Option<Vec<RawProxyAccount>>,
}

/// `settings.fallbacks[i]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFallback {
    pub name: Option<String>,
    pub alpn: Option<String>,
    pub path: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub dest: Option<Value>,
    pub xver: Option<u64>,
}

/// `settings` of a dokodemo-door (or `tunnel`) inbound: Xray's newer names `rewriteAddress`,
/// `rewritePort` and `allowedNetwork` beside the older ones, which win where both are given.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawDokodemoSettings {
    pub address: Option<String>,
    pub port: Option<Value>,
    pub network: Option<StringList>,
    pub rewrite_address: Option<String>,
    pub rewrite_port: Option<Value>,
    pub allowed_network: Option<StringList>,
    pub port_map: Option<BTreeMap<String, String>>,
    #[serde(rename = "timeout")]
    pub _timeout: Option<u32>,
    pub follow_redirect: Option<bool>,
    pub user_level: Option<u32>,
}

/// `outbounds[i]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawOutbound {
    pub tag: Option<String>,
    pub protocol: Option<String>,
    pub settings: Option<Value>,
    pub send_through: Option<String>,
    pub stream_settings: Option<Value>,
    pub mux: Option<RawMux>,
    pub proxy_settings: Option<Value>,
    pub target_strategy: Option<String>,
}

/// `outbounds[i].mux`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawMux {
    pub enabled: Option<bool>,
    #[serde(rename = "concurrency")]
    pub _concurrency: Option<i64>,
    #[serde(rename = "xudpConcurrency")]
    pub _xudp_concurrency: Option<i64>,
    #[serde(rename = "xudpProxyUDP443")]
    pub _xudp_proxy_udp443: Option<String>,
}

/// `settings` of a freedom outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawFreedomSettings {
    pub domain_strategy: Option<String>,
    pub redirect: Option<String>,
    pub user_level: Option<u32>,
    pub fragment: Option<Value>,
    pub noises: Option<Value>,
    pub proxy_protocol: Option<u32>,
    /// Deprecated upstream; accepted and ignored.
    #[serde(rename = "timeout")]
    pub _timeout: Option<u32>,
}

/// `settings` of a blackhole outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBlackholeSettings {
    pub response: Option<RawBlackholeResponse>,
}

/// `settings` of a Trojan outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrojanOutSettings {
    pub servers: Option<Vec<RawTrojanServer>>,
}

/// `settings.servers[i]` of a Trojan outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrojanServer {
    pub address: Option<String>,
    pub port: Option<Value>,
    pub password: Option<String>,
    pub email: Option<String>,
    pub level: Option<u32>,
    pub flow: Option<String>,
}

/// `streamSettings` of an outbound that may speak TLS.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawOutStream {
    pub network: Option<String>,
    pub security: Option<String>,
    pub tls_settings: Option<RawTlsClientSettings>,
    pub reality_settings: Option<Value>,
    pub tcp_settings: Option<Value>,
    pub raw_settings: Option<Value>,
    // `sockopt` is read for every protocol before these (config/outbound.rs `dial_sockopt`).
    pub ws_settings: Option<RawHttpTransport>,
    pub httpupgrade_settings: Option<RawHttpTransport>,
    pub grpc_settings: Option<RawGrpcSettings>,
    pub xhttp_settings: Option<Value>,
    pub splithttp_settings: Option<Value>,
}

/// `streamSettings.tlsSettings` of an outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTlsClientSettings {
    pub server_name: Option<String>,
    pub allow_insecure: Option<bool>,
    pub alpn: Option<StringList>,
    /// uTLS fingerprints are not served: accepted, noted and ignored.
    #[serde(rename = "fingerprint")]
    pub _fingerprint: Option<String>,
}

/// `settings.response` of a blackhole outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBlackholeResponse {
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// `routing`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRouting {
    pub domain_strategy: Option<String>,
    pub domain_matcher: Option<String>,
    pub rules: Option<Vec<RawRule>>,
    pub balancers: Option<Vec<Value>>,
}

/// `routing.balancers[i]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawBalancer {
    pub tag: Option<String>,
    pub selector: Option<StringList>,
    pub strategy: Option<RawBalancerStrategy>,
    pub fallback_tag: Option<String>,
}

/// `routing.balancers[i].strategy`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBalancerStrategy {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub settings: Option<Value>,
}

/// `routing.rules[i]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRule {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub rule_tag: Option<String>,
    pub inbound_tag: Option<StringList>,
    pub user: Option<StringList>,
    pub domain: Option<StringList>,
    pub domains: Option<StringList>,
    pub ip: Option<StringList>,
    pub port: Option<Value>,
    pub network: Option<StringList>,
    pub source: Option<StringList>,
    pub source_port: Option<Value>,
    pub protocol: Option<Value>,
    pub attrs: Option<Value>,
    pub outbound_tag: Option<String>,
    pub balancer_tag: Option<String>,
}

/// A list of strings that upstream also accepts as one string (`"inboundTag": "api"`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = StringList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<StringList, E> {
                Ok(StringList(vec![s.to_string()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(StringList(items))
            }
        }

        deserializer.deserialize_any(ListVisitor)
    }
}

/// `settings` of a VMess inbound (Xray: `clients`, or `users`, and `default`; V2Ray also has
/// `detour` and `disableInsecureEncryption`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVmessSettings {
    pub clients: Option<Vec<RawVmessClient>>,
    /// Xray's newer name for `clients`.
    pub users: Option<Vec<RawVmessClient>>,
    pub default: Option<RawVmessDefault>,
    /// V2Ray's dynamic-port detour: not served.
    pub detour: Option<Value>,
}

/// `settings.default` of a VMess inbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVmessDefault {
    /// The level of users a detour creates: nothing to apply it to without detours.
    #[serde(rename = "level")]
    pub _level: Option<u32>,
    #[serde(rename = "alterId")]
    pub alter_id: Option<u32>,
}

/// `settings.clients[i]` of a VMess inbound, or `vnext[0].users[i]` of a VMess outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVmessClient {
    pub id: Option<String>,
    pub email: Option<String>,
    pub level: Option<u32>,
    /// Ours: bytes the user may move, uplink plus downlink (a number or `"50GiB"`).
    pub quota: Option<Value>,
    /// Ours: when the user is suspended (RFC 3339 or unix seconds).
    pub expiry: Option<Value>,
    /// Above 0: the legacy (MD5) handshake, refused.
    #[serde(rename = "alterId")]
    pub alter_id: Option<u32>,
    /// What the client uses; a server reads it from each request.
    pub security: Option<String>,
    /// Xray's account experiments (`AuthenticatedLength`, `NoTerminationSignal`).
    pub experiments: Option<String>,
    /// Panel bookkeeping, accepted and ignored as on VLESS clients.
    #[serde(rename = "limitIp")]
    pub _limit_ip: Option<Value>,
    #[serde(rename = "totalGB")]
    pub _total_gb: Option<Value>,
    #[serde(rename = "expiryTime")]
    pub _expiry_time: Option<Value>,
    #[serde(rename = "enable")]
    pub _enable: Option<Value>,
    #[serde(rename = "tgId")]
    pub _tg_id: Option<Value>,
    #[serde(rename = "subId")]
    pub _sub_id: Option<Value>,
    #[serde(rename = "comment")]
    pub _comment: Option<Value>,
    #[serde(rename = "reset")]
    pub _reset: Option<Value>,
}

/// `settings` of a VMess outbound: `vnext`, or Xray's flat form of one server and user.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVmessOutSettings {
    pub vnext: Option<Vec<RawVmessServer>>,
    pub address: Option<String>,
    pub port: Option<Value>,
    pub id: Option<String>,
    pub security: Option<String>,
    pub experiments: Option<String>,
    pub email: Option<String>,
    pub level: Option<u32>,
}

/// `settings.vnext[i]` of a VMess outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVmessServer {
    pub address: Option<String>,
    pub port: Option<Value>,
    pub users: Option<Vec<RawVmessClient>>,
}

/// `settings` of a VLESS outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVlessOutSettings {
    pub vnext: Option<Vec<RawVlessServer>>,
}

/// `settings.vnext[i]` of a VLESS outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVlessServer {
    pub address: Option<String>,
    pub port: Option<Value>,
    pub users: Option<Vec<RawVlessOutUser>>,
}

/// `settings.vnext[i].users[j]` of a VLESS outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVlessOutUser {
    pub id: Option<String>,
    pub encryption: Option<String>,
    pub flow: Option<String>,
    pub email: Option<String>,
    pub level: Option<u32>,
    /// How UDP goes: `xudp` (the default, as Xray's client) or `none` (command UDP).
    #[serde(rename = "packetEncoding")]
    pub packet_encoding: Option<String>,
}
/// `settings` of a Shadowsocks inbound (Xray: one user in `method`/`password`/`email`/`level`,
/// or `clients` (or `users`); `network`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShadowsocksSettings {
    pub method: Option<String>,
    pub password: Option<String>,
    pub email: Option<String>,
    pub level: Option<u32>,
    /// Ours: bytes the user may move, uplink plus downlink (a number or `"50GiB"`).
    pub quota: Option<Value>,
    /// Ours: when the user is suspended (RFC 3339 or unix seconds).
    pub expiry: Option<Value>,
    pub clients: Option<Vec<RawShadowsocksClient>>,
    /// Xray's older name for `clients`; `clients` wins where both are given.
    pub users: Option<Vec<RawShadowsocksClient>>,
    /// `"tcp"`, `"udp"`, `"tcp,udp"` or a list of them.
    pub network: Option<StringList>,
    /// Older Xray's salt check on classic users (always on here).
    #[serde(rename = "ivCheck")]
    pub _iv_check: Option<bool>,
}

/// `settings.clients[i]` of a Shadowsocks inbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShadowsocksClient {
    pub method: Option<String>,
    pub password: Option<String>,
    pub email: Option<String>,
    pub level: Option<u32>,
    /// Ours: bytes the user may move, uplink plus downlink (a number or `"50GiB"`).
    pub quota: Option<Value>,
    /// Ours: when the user is suspended (RFC 3339 or unix seconds).
    pub expiry: Option<Value>,
    /// A 2022 relay's destination: not served.
    pub address: Option<Value>,
    #[serde(rename = "port")]
    pub _port: Option<Value>,
    /// Panel bookkeeping, accepted and ignored as on VLESS clients.
    #[serde(rename = "limitIp")]
    pub _limit_ip: Option<Value>,
    #[serde(rename = "totalGB")]
    pub _total_gb: Option<Value>,
    #[serde(rename = "expiryTime")]
    pub _expiry_time: Option<Value>,
    #[serde(rename = "enable")]
    pub _enable: Option<Value>,
    #[serde(rename = "tgId")]
    pub _tg_id: Option<Value>,
    #[serde(rename = "subId")]
    pub _sub_id: Option<Value>,
    #[serde(rename = "comment")]
    pub _comment: Option<Value>,
    #[serde(rename = "reset")]
    pub _reset: Option<Value>,
}

/// `settings` of a Shadowsocks outbound: `servers`, or Xray's flat form of one server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShadowsocksOutSettings {
    pub servers: Option<Vec<RawShadowsocksServer>>,
    pub address: Option<String>,
    pub port: Option<Value>,
    pub method: Option<String>,
    pub password: Option<String>,
    pub email: Option<String>,
    pub level: Option<u32>,
}

/// `settings.servers[i]` of a Shadowsocks outbound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShadowsocksServer {
    pub address: Option<String>,
    pub port: Option<Value>,
    pub method: Option<String>,
    pub password: Option<String>,
    pub email: Option<String>,
    pub level: Option<u32>,
    /// sing-box's and Xray's UDP over TCP: not served.
    #[serde(rename = "uot")]
    pub uot: Option<bool>,
    #[serde(rename = "UoTVersion")]
    pub _uot_version: Option<u32>,
}
