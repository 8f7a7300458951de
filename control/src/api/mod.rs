//! The management API: one tonic server on the control thread, each service served under
//! every name upstream clients use (`xray.app.…`, `v2ray.core.app.…`, `experimental.…`).

pub mod auth;
pub mod delta;
pub mod events;
pub mod handler;
pub mod logger;
mod query;
pub mod reload;
pub mod routing;
pub mod stats;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use shardray_core::spec::{ApiListen, ApiSpec, LogLevel};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use shardray_core::spec::Config;

use crate::journal::Journal;
use crate::registry::{Registry, UserSets};
use crate::server::ShardLinks;

/// The largest request a service takes: room for a batch of about a million users.
pub const MAX_REQUEST: usize = 128 << 20;

/// What every service shares: the registry (one writer at a time), the shards, the config.
pub struct ApiState {
    /// The authoritative registry; changes hold the lock until every shard has applied them.
    pub registry: tokio::sync::Mutex<Registry>,
    /// The way to the shards.
    pub shards: ShardLinks,
    /// The running config: the start-up config with every inbound, outbound and routing
    /// change the API has made since, without users (the registry has them). Read it with
    /// `config()`.
    live_config: std::sync::RwLock<std::sync::Arc<Config>>,
    /// Counts carried over from the last run, and resets.
    pub counters: std::sync::Mutex<stats::CounterBook>,
    /// The logging handle (for LoggerService).
    pub log: shardray_core::log::LogSink,
    /// Where every changing call is recorded.
    pub audit: crate::audit::Audit,
    /// The shards' routing decisions, for SubscribeRoutingStats.
    pub route_stats: std::sync::Arc<routing::RouteStats>,
    /// Calls by method and status, for `/metrics`.
    pub requests: crate::metrics::ApiRequests,
    /// Rereads the config files on SIGHUP and `shardray api reload`; unset, reloads are refused.
    pub reloader: std::sync::OnceLock<crate::reload::Reloader>,
    /// Reloads by outcome, for `/metrics`.
    pub reloads: crate::reload::ReloadStats,
    /// User events: logged and handed to `EventsService` subscribers.
    pub events: std::sync::Arc<crate::events::EventHub>,
    /// Where quota use is kept across restarts (with `--state`).
    pub quota_use_file: std::sync::OnceLock<std::path::PathBuf>,
    /// `api.tokens` as of now: a reload replaces them (token files are read again then).
    tokens: std::sync::RwLock<std::sync::Arc<[shardray_core::spec::ApiToken]>>,
}

impl ApiState {
    /// State for a server that runs `shards` with inbounds bound at `bound` (tag, address),
    /// whose user sets are `sets` (config plus journal), journaling to `journal` if given.
    pub fn new(
        shards: ShardLinks,
        bound: &[(String, SocketAddr)],
        mut sets: UserSets,
        journal: Option<Journal>,
        counters: stats::CounterBook,
        log: shardray_core::log::LogSink,
        audit: crate::audit::Audit,
    ) -> std::sync::Arc<ApiState> {
        // Users live in the registry: the running config leaves them out, so that publishing
        // a changed config never copies them.
        let config = std::sync::Arc::new(shards.config.without_users());
        let tokens = config.api.as_ref().map(|a| a.tokens.clone()).unwrap_or_default();
        let tokens = std::sync::RwLock::new(tokens.into());
        sets.set_bound(bound);
        let route_stats = routing::RouteStats::new(shards.route_tap.clone(), shards.route_records.clone());
        std::sync::Arc::new(ApiState {
            registry: tokio::sync::Mutex::new(Registry::new(sets, journal, shards.clone())),
            shards,
            live_config: std::sync::RwLock::new(config),
            counters: std::sync::Mutex::new(counters),
            log: log.clone(),
            audit,
            route_stats,
            requests: crate::metrics::ApiRequests::default(),
            reloader: std::sync::OnceLock::new(),
            reloads: crate::reload::ReloadStats::default(),
            events: crate::events::EventHub::new(log.clone()),
            quota_use_file: std::sync::OnceLock::new(),
            tokens,
        })
    }

    /// The API tokens callers are checked against now.
    pub fn tokens(&self) -> std::sync::Arc<[shardray_core::spec::ApiToken]> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the API tokens (a reload); calls already admitted are not affected.
    pub fn set_tokens(&self, tokens: Vec<shardray_core::spec::ApiToken>) {
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = tokens.into();
    }

    /// The running config as of now.
    pub fn config(&self) -> std::sync::Arc<Config> {
        self.live_config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes the running config after a change every shard has applied.
    pub fn set_config(&self, config: std::sync::Arc<Config>) {
        *self.live_config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Publishes the running config with `routes`' outbounds and routing, after a route change
    /// (called with the registry locked, so configs are published in the changes' order).
    pub fn publish_routes(&self, routes: &shardray_core::routes::RouteSpecs) {
        let mut config = (*self.config()).clone();
        routes.write_into(&mut config);
        self.set_config(std::sync::Arc::new(config));
    }

    /// Runs an outbound or routing change through the registry (checked, journaled, applied on
    /// every shard) and publishes the config it leads to.
    pub async fn change_routes(
        &self,
        change: shardray_core::change::Change,
    ) -> Result<(), crate::registry::ChangeError> {
        let mut registry = self.registry.lock().await;
        let result = registry.apply(change).await;
        // A change the shards were late with is recorded all the same: publish it too.
        if matches!(result, Ok(_) | Err(crate::registry::ChangeError::Shards(_))) {
            self.publish_routes(registry.routes());
        }
        result.map(|_| ())
    }

    /// Saves every counter's value as the API reports it now to `path`, for the next run.
    pub async fn save_counters(&self, path: &std::path::Path) -> anyhow::Result<()> {
        // Locked while reading and writing: no slot changes hands meanwhile.
        let registry = self.registry.lock().await;
        let snaps = self.shards.snapshots(None).await?;
        stats::CounterBook::save(path, stats::reported(self, &registry, &snaps))?;
        // What resets zeroed since, for the delta readers' lifetime values.
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).deltas.save()?;
        Ok(())
    }
}

/// Alternative package prefixes of each service, mapped onto the Xray name we implement.
const ALIASES: &[(&str, &str)] = &[
    ("/v2ray.core.app.proxyman.command.HandlerService/", "/xray.app.proxyman.command.HandlerService/"),
    ("/v2ray.core.app.stats.command.StatsService/", "/xray.app.stats.command.StatsService/"),
    ("/v2ray.core.app.log.command.LoggerService/", "/xray.app.log.command.LoggerService/"),
    ("/v2ray.core.app.router.command.RoutingService/", "/xray.app.router.command.RoutingService/"),
    ("/experimental.v2rayapi.StatsService/", "/xray.app.stats.command.StatsService/"),
];

/// Rewrites a request path from an upstream alias to the name the router knows.
fn canonical_path<B>(mut req: http::Request<B>) -> http::Request<B> {
    let path = req.uri().path();
    if let Some((from, to)) = ALIASES.iter().find(|(from, _)| path.starts_with(from)) {
        let rewritten = format!("{to}{}", &path[from.len()..]);
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = rewritten.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

/// The services `api.services` may list (besides ReflectionService).
const SERVICES: &[&str] = &["HandlerService", "LoggerService", "StatsService", "RoutingService"];

/// Answers a call to a service the config leaves out with UNIMPLEMENTED and the fix, where
/// tonic's router would answer with an empty message that tells the caller nothing.
#[derive(Clone)]
struct Disabled<S> {
    inner: S,
    disabled: Arc<[&'static str]>,
    log: shardray_core::log::LogSink,
}

impl<S, B> tower::Service<http::Request<B>> for Disabled<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // "/xray.app.proxyman.command.HandlerService/AlterInbound": the service's short name, so
        // every alias of a service is matched alike.
        let mut parts = req.uri().path().trim_start_matches('/').split('/');
        let service = match parts.next().and_then(|s| s.rsplit('.').next()).unwrap_or("") {
            // Our delta counters come and go with StatsService, reloads with HandlerService.
            "DeltaStatsService" => "StatsService",
            "ReloadService" | "EventsService" => "HandlerService",
            other => other,
        };
        if let Some(name) = self.disabled.iter().find(|&&name| name == service) {
            let method = parts.next().unwrap_or("");
            self.log.error(LogLevel::Info, format_args!("api: refused {name}.{method}: {name} is not enabled"));
            let status = tonic::Status::unimplemented(format!("{name} is not enabled: add \"{name}\" to api.services"));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(req))
    }
}

/// A bound API listener, before it serves.
pub enum ApiListener {
    /// TCP on a loopback address.
    Tcp(tokio::net::TcpListener, SocketAddr),
    /// A Unix socket.
    Unix(tokio::net::UnixListener),
}

/// Binds the API's address. A non-loopback TCP address is refused unless the API has tokens,
/// so that an API without credentials is never reachable from outside.
pub async fn bind(spec: &ApiSpec) -> anyhow::Result<ApiListener> {
    bind_at(&spec.listen, "api", !spec.tokens.is_empty() || spec.tls.is_some(), spec.socket_mode).await
}

/// Binds a loopback TCP address or a Unix socket (mode 0600) for `who` (`metrics`), which
/// prefixes the errors.
pub async fn bind_listen(listen: &ApiListen, who: &str) -> anyhow::Result<ApiListener> {
    bind_at(listen, who, false, 0o600).await
}

async fn bind_at(listen: &ApiListen, who: &str, public: bool, socket_mode: u32) -> anyhow::Result<ApiListener> {
    match listen {
        ApiListen::Tcp(addr) => {
            if !public && !addr.ip().is_loopback() {
                bail!("{who}: refusing to listen on {addr}: it listens on loopback or a Unix socket only");
            }
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("{who}: cannot listen on {addr}"))?;
            let bound = listener.local_addr()?;
            Ok(ApiListener::Tcp(listener, bound))
        }
        ApiListen::Unix(path) => {
            crate::socket_file::clear_stale(path)
                .with_context(|| format!("{who}: cannot listen on {}", path.display()))?;
            let listener = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("{who}: cannot listen on {}", path.display()))?;
            crate::socket_file::set_mode(path, socket_mode).with_context(|| who.to_string())?;
            Ok(ApiListener::Unix(listener))
        }
    }
}

/// Counts every call by method and final gRPC status into `ApiRequests`: the status is in
/// the answer's headers (an error answered at once) or in its trailers.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    requests: crate::metrics::ApiRequests,
}

/// The `grpc-status` a header map carries, if any.
fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl<S, B> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = self.requests.method_label(req.uri().path());
        let requests = self.requests.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await?;
            if let Some(code) = grpc_status(res.headers()) {
                requests.count(method, code);
                return Ok(res);
            }
            let (parts, body) = res.into_parts();
            let body = CountedBody { inner: body, pending: Some((requests, method)) };
            Ok(http::Response::from_parts(parts, tonic::body::boxed(body)))
        })
    }
}

/// An answer's body that counts the call when its trailers pass (or when it ends or is
/// dropped without them: `Unknown`, or `Canceled` if the client went away).
struct CountedBody {
    inner: tonic::body::BoxBody,
    pending: Option<(crate::metrics::ApiRequests, String)>,
}

impl CountedBody {
    fn finish(&mut self, code: i32) {
        if let Some((requests, method)) = self.pending.take() {
            requests.count(method, code);
        }
    }
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.finish(code);
                }
            }
            std::task::Poll::Ready(Some(Err(status))) => self.finish(status.code() as i32),
            std::task::Poll::Ready(None) => self.finish(tonic::Code::Unknown as i32),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled as i32);
    }
}

/// Serves the enabled services until the process stops.
pub async fn serve(spec: ApiSpec, listener: ApiListener, state: std::sync::Arc<ApiState>) -> anyhow::Result<()> {
    let wants = |name: &str| spec.services.is_empty() || spec.services.iter().any(|s| s == name);
    let mut routes = tonic::service::RoutesBuilder::default();
    if wants("HandlerService") {
        routes.add_service(handler::service(state.clone()));
        routes.add_service(reload::service(state.clone()));
        routes.add_service(events::service(state.clone()));
    }
    if wants("LoggerService") {
        routes.add_service(logger::service(state.clone()));
    }
    if wants("StatsService") {
        routes.add_service(stats::service(state.clone()));
        routes.add_service(delta::service(state.clone()));
    }
    if wants("RoutingService") {
        routes.add_service(routing::service(state.clone())?);
    }
    // Reflection only when asked for by name, as upstream does.
    if spec.services.iter().any(|s| s == "ReflectionService") {
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(shardray_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("reflection")?;
        routes.add_service(reflection);
    }

    // grpc.health.v1.Health, always: SERVING for the server ("") and each enabled service.
    let (mut health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    for name in SERVICES.iter().filter(|name| wants(name)) {
        let full =
            ALIASES.iter().find_map(|(_, to)| to.trim_matches('/').ends_with(name).then(|| to.trim_matches('/')));
        if let Some(full) = full {
            health.set_service_status(full, tonic_health::ServingStatus::Serving).await;
        }
    }
    routes.add_service(health_service);

    let disabled: Arc<[&'static str]> = SERVICES.iter().copied().filter(|name| !wants(name)).collect();
    let log = state.log.clone();
    let requests = state.requests.clone();
    let tls = spec.tls.clone().map(Arc::new);
    let limiter = spec.call_limit.map(|l| Arc::new(auth::CallLimiter::new(l)));
    let auth_state = state.clone();
    let query_state = state.clone();
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapRequestLayer::new(canonical_path))
        .layer(tower::layer::layer_fn(move |inner| Counted { inner, requests: requests.clone() }))
        .layer(tower::layer::layer_fn(move |inner| auth::Authorize {
            inner,
            tls: tls.clone(),
            limiter: limiter.clone(),
            state: auth_state.clone(),
        }))
        .layer(tower::layer::layer_fn(move |inner| Disabled { inner, disabled: disabled.clone(), log: log.clone() }))
        // Innermost: QueryStats is answered only once admitted and counted like any call.
        .layer(tower::layer::layer_fn(move |inner| query::StreamedQuery { inner, state: query_state.clone() }))
        .add_routes(routes.routes());
    match listener {
        ApiListener::Tcp(l, _) if spec.tls.is_some() => {
            let config = spec
                .tls
                .as_ref()
                .map(tls::server_config)
                .transpose()
                .map_err(|(path, e)| anyhow::anyhow!("{path}: {e}"))?;
            let config = config.context("api.tls")?;
            router.serve_with_incoming(tls::incoming(l, config, state.log.clone())).await?
        }
        ApiListener::Tcp(l, _) => {
            // Small request/response messages: no Nagle delay on the API's connections.
            let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(l), |conn| {
                if let Ok(c) = &conn {
                    let _ = c.set_nodelay(true);
                }
                conn
            });
            router.serve_with_incoming(incoming).await?
        }
        ApiListener::Unix(l) => router.serve_with_incoming(UnixListenerStream::new(l)).await?,
    }
    Ok(())
}
