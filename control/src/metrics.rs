//! The metrics endpoint (`metrics`): an HTTP server on the control thread that serves
//! Prometheus's `/metrics`, Xray's expvar `/debug/vars` and `/healthz`; and the API's request
//! counter, which a layer on the gRPC server feeds.
//!
//! A scrape reads the counters the way QueryStats does (one snapshot per shard, with the
//! registry locked only while the values are taken), so the numbers are the API's, resets
//! included, and the shards see nothing but that snapshot.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use shardray_core::log::LogSink;
use shardray_core::slots::NO_SLOT;
use shardray_core::spec::{LogLevel, MetricsSpec};

use crate::api::{ApiListener, ApiState};

/// How long `/healthz` waits for every shard to answer.
const HEALTH_WAIT: Duration = Duration::from_secs(1);
/// How long a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

// === API requests ===

/// The labels of `shardray_api_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// `package.Service/Method`, or `unknown` for a path no service defines.
    method: String,
    /// The gRPC status code's name, as Go's `codes.Code` writes it (`OK`, `NotFound`, …).
    code: &'static str,
}

/// The gRPC API's calls by method and status: fed by one layer on the tonic server, read by
/// `/metrics`. Cloning shares the counters.
#[derive(Debug, Clone)]
pub struct ApiRequests {
    counts: Family<RequestLabels, Counter>,
    /// Every method the API may answer: any other path counts as `unknown`, so a client
    /// cannot grow the label set.
    methods: Arc<HashSet<String>>,
}

impl Default for ApiRequests {
    fn default() -> Self {
        let mut methods: HashSet<String> = crate::convert::descriptors()
            .services()
            .flat_map(|s| {
                let service = s.full_name().to_owned();
                s.methods().map(move |m| format!("{service}/{}", m.name())).collect::<Vec<_>>()
            })
            .collect();
        for extra in [
            "grpc.health.v1.Health/Check",
            "grpc.health.v1.Health/Watch",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            methods.insert(extra.to_owned());
        }
        ApiRequests { counts: Family::default(), methods: Arc::new(methods) }
    }
}

impl ApiRequests {
    /// The `method` label for a request path (`/package.Service/Method`).
    pub fn method_label(&self, path: &str) -> String {
        let name = path.trim_start_matches('/');
        if self.methods.contains(name) {
            name.to_owned()
        } else {
            "unknown".to_owned()
        }
    }

    /// Counts one finished call of `method` with gRPC status `code`.
    pub fn count(&self, method: String, code: i32) {
        self.counts.get_or_create(&RequestLabels { method, code: code_name(code) }).inc();
    }
}

/// A gRPC status code's name as Go's `codes.Code.String()` writes it, which is what
/// go-grpc-prometheus and most dashboards use.
fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("Unknown")
}

// === serving ===

/// Serves the metrics endpoint on `listener` until the process stops.
pub async fn serve(spec: MetricsSpec, listener: ApiListener, state: Arc<ApiState>) -> anyhow::Result<()> {
    let endpoint = Arc::new(Endpoint { spec, state });
    match listener {
        ApiListener::Tcp(l, _) => loop {
            let (stream, _) = l.accept().await.context("metrics: accept")?;
            let _ = stream.set_nodelay(true);
            spawn_connection(stream, endpoint.clone());
        },
        ApiListener::Unix(l) => loop {
            let (stream, _) = l.accept().await.context("metrics: accept")?;
            spawn_connection(stream, endpoint.clone());
        },
    }
}

/// What every request of the endpoint reads.
struct Endpoint {
    spec: MetricsSpec,
    state: Arc<ApiState>,
}

fn spawn_connection<IO>(io: IO, endpoint: Arc<Endpoint>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let endpoint = endpoint.clone();
            async move { Ok::<_, Infallible>(endpoint.answer(req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(io), service)
            .await;
    });
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    res
}

impl Endpoint {
    async fn answer<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        const PLAIN: &str = "text/plain; charset=utf-8";
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n".into());
        }
        let log = &self.state.log;
        match req.uri().path() {
            "/metrics" => match self.scrape().await {
                Ok(body) => text(StatusCode::OK, prometheus_client::encoding::prometheus_text::CONTENT_TYPE, body),
                Err(e) => unavailable(log, "/metrics", e),
            },
            "/debug/vars" => match self.expvars().await {
                Ok(body) => text(StatusCode::OK, "application/json; charset=utf-8", body),
                Err(e) => unavailable(log, "/debug/vars", e),
            },
            "/healthz" => match tokio::time::timeout(HEALTH_WAIT, self.state.shards.snapshots(Some(NO_SLOT))).await {
                Ok(Ok(_)) => text(StatusCode::OK, PLAIN, "ok".into()),
                Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{e:#}\n")),
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    format!("a shard did not answer within {HEALTH_WAIT:?}\n"),
                ),
            },
            _ => text(StatusCode::NOT_FOUND, PLAIN, "not found: try /metrics, /debug/vars or /healthz\n".into()),
        }
    }

    /// Every shard's snapshot and the counters' reported values, taken with the registry
    /// locked for the whole read (QueryStats locks it one step of slots at a time); nothing
    /// else is done under the lock.
    async fn read(&self) -> anyhow::Result<Reading> {
        let registry = self.state.registry.lock().await;
        let snaps = self.state.shards.snapshots(None).await?;
        let mut counters = Vec::new();
        crate::api::stats::each_counter(&self.state, &registry, &snaps, |name, value| {
            if let Some(parsed) = CounterName::parse(name) {
                counters.push((parsed.owned(), value));
            }
        });
        let online = crate::api::stats::online_users(&self.state.config(), &registry, &snaps);
        drop(registry);
        Ok(Reading { counters, online, shards: snaps.iter().map(|s| (s.live_sessions, s.epoch)).collect() })
    }

    async fn scrape(&self) -> anyhow::Result<String> {
        let reading = self.read().await?;
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Scrape::new(reading, &self.spec)));
        registry.register_collector(Box::new(ProcessStats::read()));
        registry.register(
            "shardray_api_requests",
            "gRPC API calls by method and status code",
            self.state.requests.counts.clone(),
        );
        registry.register(
            "shardray_config_reloads",
            "Config reloads (SIGHUP, ReloadService) by result",
            self.state.reloads.counts.clone(),
        );
        registry.register(
            "shardray_config_last_reload_successful",
            "Whether the last config reload applied (1 before any)",
            self.state.reloads.last_ok.clone(),
        );
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
        Ok(out)
    }

    /// The expvar document Xray's metrics serve: `cmdline`, `memstats` (the figures
    /// GetSysStats has) and `stats` with every inbound, outbound and user counter.
    async fn expvars(&self) -> anyhow::Result<String> {
        let reading = self.read().await?;
        let mut stats: BTreeMap<&str, BTreeMap<&str, BTreeMap<&str, u64>>> =
            ["inbound", "outbound", "user"].into_iter().map(|k| (k, BTreeMap::new())).collect();
        for (name, value) in &reading.counters {
            if let OwnedName::Traffic { kind, who, dir } = name {
                if let Some(kinds) = stats.get_mut(kind.as_str()) {
                    kinds.entry(who.as_str()).or_default().insert(dir, *value);
                }
            }
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .map_or(0, |v: u64| v * 1024)
        };
        let doc = serde_json::json!({
            "cmdline": std::env::args().collect::<Vec<_>>(),
            "memstats": {
                "Alloc": kib("VmRSS:"), "TotalAlloc": 0, "Sys": kib("VmHWM:"),
                "Mallocs": 0, "Frees": 0, "PauseTotalNs": 0, "NumGC": 0,
            },
            "stats": stats,
        });
        Ok(serde_json::to_string_pretty(&doc)? + "\n")
    }
}

fn unavailable(log: &LogSink, path: &str, e: anyhow::Error) -> Response<Full<Bytes>> {
    log.error(LogLevel::Warning, format_args!("metrics: {path}: {e:#}"));
    text(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", format!("{e:#}\n"))
}

// === reading counters ===

/// What one reading of the shards gave.
#[derive(Debug)]
struct Reading {
    /// Every counter the API reports, by kind, with its reported value.
    counters: Vec<(OwnedName, u64)>,
    /// Users online, as GetAllOnlineUsers counts them.
    online: usize,
    /// Each shard's live sessions and applied epoch.
    shards: Vec<(u64, u64)>,
}

/// A counter name of the API's, split: `KIND>>>WHO>>>traffic>>>DIR` or `refused>>>REASON`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CounterName<'a> {
    Traffic { kind: &'a str, who: &'a str, dir: &'a str },
    Refused(&'a str),
}

impl<'a> CounterName<'a> {
    fn parse(name: &'a str) -> Option<CounterName<'a>> {
        let (kind, rest) = name.split_once(">>>")?;
        if kind == "refused" {
            return Some(CounterName::Refused(rest));
        }
        // The direction is last, and a tag or an email may itself hold ">>>".
        let (who, dir) = rest.rsplit_once(">>>traffic>>>")?;
        let dir = match dir {
            "uplink" => "uplink",
            "downlink" => "downlink",
            _ => return None,
        };
        Some(CounterName::Traffic { kind, who, dir })
    }

    fn owned(self) -> OwnedName {
        match self {
            CounterName::Traffic { kind, who, dir } => OwnedName::Traffic {
                kind: kind.to_owned(),
                who: who.to_owned(),
                dir: if dir == "uplink" { "uplink" } else { "downlink" },
            },
            CounterName::Refused(why) => OwnedName::Refused(why.to_owned()),
        }
    }
}

/// `CounterName` with its parts owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnedName {
    Traffic { kind: String, who: String, dir: &'static str },
    Refused(String),
}

/// The values of one scrape, as a prometheus-client collector.
#[derive(Debug)]
struct Scrape {
    /// `(user, [up, down])` of the users that get series; a direction the user's level does
    /// not count is `None`.
    users: Vec<(String, [Option<u64>; 2])>,
    /// Users left out by `maxUserSeries`.
    users_omitted: usize,
    user_series: bool,
    /// `(tag, direction, value)` of inbounds and outbounds.
    inbounds: Vec<(String, &'static str, u64)>,
    outbounds: Vec<(String, &'static str, u64)>,
    refused: Vec<(String, u64)>,
    online: usize,
    shards: Vec<(u64, u64)>,
}

impl Scrape {
    fn new(reading: Reading, spec: &MetricsSpec) -> Scrape {
        let mut scrape = Scrape {
            users: Vec::new(),
            users_omitted: 0,
            user_series: spec.user_series,
            inbounds: Vec::new(),
            outbounds: Vec::new(),
            refused: Vec::new(),
            online: reading.online,
            shards: reading.shards,
        };
        for (name, value) in reading.counters {
            match name {
                OwnedName::Refused(why) => scrape.refused.push((why, value)),
                OwnedName::Traffic { kind, who, dir } => {
                    let d = usize::from(dir == "downlink");
                    match kind.as_str() {
                        "inbound" => scrape.inbounds.push((who, dir, value)),
                        "outbound" => scrape.outbounds.push((who, dir, value)),
                        "user" if spec.user_series => {
                            // A user's two directions come one after the other.
                            match scrape.users.last_mut() {
                                Some((email, pair)) if *email == who => pair[d] = Some(value),
                                _ => {
                                    let mut pair = [None, None];
                                    pair[d] = Some(value);
                                    scrape.users.push((who, pair));
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let cap = spec.max_user_series;
        if scrape.users.len() > cap {
            let traffic = |p: &[Option<u64>; 2]| p[0].unwrap_or(0).saturating_add(p[1].unwrap_or(0));
            scrape.users_omitted = scrape.users.len() - cap;
            if cap > 0 {
                scrape.users.select_nth_unstable_by(cap - 1, |a, b| traffic(&b.1).cmp(&traffic(&a.1)));
            }
            scrape.users.truncate(cap);
        }
        scrape.users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        scrape
    }
}

/// Writes one counter family whose samples are `(labels, value)`.
fn counter_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one gauge family whose samples are `(labels, value)`.
fn gauge_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, i64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> std::fmt::Result {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        if self.user_series {
            let samples = self.users.iter().flat_map(|(user, pair)| {
                ["uplink", "downlink"]
                    .into_iter()
                    .zip(pair)
                    .filter_map(move |(dir, v)| v.map(|v| ([("user", user.as_str()), ("direction", dir)], v)))
            });
            counter_family(
                &mut encoder,
                "shardray_user_traffic_bytes",
                "Payload bytes of each user (the top maxUserSeries users by traffic), as StatsService reports them",
                samples,
            )?;
            gauge(
                &mut encoder,
                "shardray_user_series_omitted",
                "Users with traffic counters left out of shardray_user_traffic_bytes_total by maxUserSeries",
                as_i64(self.users_omitted as u64),
            )?;
        }
        for (name, help, list, label) in [
            (
                "shardray_inbound_traffic_bytes",
                "Payload bytes of each inbound, as StatsService reports them",
                &self.inbounds,
                "inbound",
            ),
            (
                "shardray_outbound_traffic_bytes",
                "Payload bytes of each outbound, as StatsService reports them",
                &self.outbounds,
                "outbound",
            ),
        ] {
            let samples = list.iter().map(|(tag, dir, v)| ([(label, tag.as_str()), ("direction", *dir)], *v));
            counter_family(&mut encoder, name, help, samples)?;
        }
        counter_family(
            &mut encoder,
            "shardray_refused",
            "Sessions and datagrams refused, by reason (destination safety, bad requests, level limits)",
            self.refused.iter().map(|(why, v)| ([("reason", why.as_str())], *v)),
        )?;
        let live: u64 = self.shards.iter().map(|s| s.0).sum();
        gauge(&mut encoder, "shardray_connections", "Sessions alive now, over every shard", as_i64(live))?;
        gauge(
            &mut encoder,
            "shardray_users_online",
            "Users with a live session, as GetAllOnlineUsers counts them",
            as_i64(self.online as u64),
        )?;
        let shard_ids: Vec<String> = (0..self.shards.len()).map(|i| i.to_string()).collect();
        gauge_family(
            &mut encoder,
            "shardray_shard_sessions",
            "Sessions alive now on each shard",
            shard_ids.iter().zip(&self.shards).map(|(id, s)| ([("shard", id.as_str())], as_i64(s.0))),
        )?;
        gauge_family(
            &mut encoder,
            "shardray_shard_epoch",
            "The last configuration epoch each shard applied",
            shard_ids.iter().zip(&self.shards).map(|(id, s)| ([("shard", id.as_str())], as_i64(s.1))),
        )?;
        Ok(())
    }
}

// === process metrics ===

/// The standard `process_*` metrics, read from /proc.
#[derive(Debug, Default)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: u64,
    start_time_seconds: f64,
}

impl ProcessStats {
    fn read() -> ProcessStats {
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
        let page = u64::try_from(page).unwrap_or(4096);
        let mut out = ProcessStats::default();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name, which may hold spaces and parentheses: state is
        // field 3, utime 14, stime 15, starttime 22, vsize 23, rss 24.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            out.cpu_seconds = (field(14) + field(15)) as f64 / ticks;
            out.virtual_bytes = field(23);
            out.resident_bytes = field(24) * page;
            let boot = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok()))
                .unwrap_or(0);
            out.start_time_seconds = boot as f64 + field(22) as f64 / ticks;
        }
        out.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            out.max_fds = limit.rlim_cur;
        }
        out
    }
}

impl Collector for ProcessStats {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        ConstCounter::new(self.cpu_seconds).encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            as_i64(self.resident_bytes),
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            as_i64(self.virtual_bytes),
        )?;
        gauge(&mut encoder, "process_open_fds", "Number of open file descriptors", as_i64(self.open_fds))?;
        gauge(&mut encoder, "process_max_fds", "Maximum number of open file descriptors", as_i64(self.max_fds))?;
        ConstGauge::new(self.start_time_seconds).encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

/// The body of a scrape, for tests: `/metrics` as text for a reading.
#[cfg(test)]
fn encode_scrape(scrape: Scrape) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardray_core::spec::ApiListen;

    fn spec(user_series: bool, max_user_series: usize) -> MetricsSpec {
        MetricsSpec {
            tag: "Metrics".into(),
            listen: ApiListen::Tcp("127.0.0.1:0".parse().unwrap()),
            user_series,
            max_user_series,
        }
    }

    fn reading() -> Reading {
        let t =
            |kind: &str, who: &str, dir: &'static str| OwnedName::Traffic { kind: kind.into(), who: who.into(), dir };
        Reading {
            counters: vec![
                (t("user", "a@x", "uplink"), 10),
                (t("user", "a@x", "downlink"), 20),
                (t("user", "b\"q@x", "uplink"), 500),
                (t("user", "b\"q@x", "downlink"), 1),
                (t("user", "c@x", "downlink"), 7),
                (t("inbound", "in", "uplink"), 3),
                (t("outbound", "direct", "downlink"), 4),
                (OwnedName::Refused("api_address".into()), 2),
            ],
            online: 1,
            shards: vec![(2, 5), (0, 5)],
        }
    }

    #[test]
    fn counter_names_split_as_the_api_writes_them() {
        assert_eq!(
            CounterName::parse("user>>>a>>>b>>>traffic>>>uplink"),
            Some(CounterName::Traffic { kind: "user", who: "a>>>b", dir: "uplink" })
        );
        assert_eq!(CounterName::parse("refused>>>api_address"), Some(CounterName::Refused("api_address")));
        assert_eq!(CounterName::parse("user>>>a>>>online"), None);
    }

    #[test]
    fn a_scrape_has_every_family_and_user_series_only_when_asked() {
        let text = encode_scrape(Scrape::new(reading(), &spec(false, 1000)));
        assert!(!text.contains("shardray_user_traffic_bytes_total"), "{text}");
        for line in [
            "shardray_inbound_traffic_bytes_total{inbound=\"in\",direction=\"uplink\"} 3",
            "shardray_outbound_traffic_bytes_total{outbound=\"direct\",direction=\"downlink\"} 4",
            "shardray_refused_total{reason=\"api_address\"} 2",
            "shardray_connections 2",
            "shardray_users_online 1",
            "shardray_shard_sessions{shard=\"0\"} 2",
            "shardray_shard_epoch{shard=\"1\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        let text = encode_scrape(Scrape::new(reading(), &spec(true, 1000)));
        assert!(text.contains("shardray_user_traffic_bytes_total{user=\"a@x\",direction=\"downlink\"} 20"), "{text}");
        assert!(
            text.contains("shardray_user_traffic_bytes_total{user=\"b\\\"q@x\",direction=\"uplink\"} 500"),
            "{text}"
        );
        // c@x's level counts only downlink: no uplink series.
        assert!(!text.contains("user=\"c@x\",direction=\"uplink\""), "{text}");
        assert!(text.contains("shardray_user_series_omitted 0"), "{text}");
    }

    #[test]
    fn the_user_cap_keeps_the_top_users_by_traffic() {
        let scrape = Scrape::new(reading(), &spec(true, 2));
        let users: Vec<_> = scrape.users.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(users, ["a@x", "b\"q@x"]);
        assert_eq!(scrape.users_omitted, 1);
        let scrape = Scrape::new(reading(), &spec(true, 0));
        assert!(scrape.users.is_empty());
        assert_eq!(scrape.users_omitted, 3);
    }

    #[test]
    fn process_stats_are_read() {
        let p = ProcessStats::read();
        assert!(p.resident_bytes > 0 && p.open_fds > 0 && p.max_fds > 0 && p.start_time_seconds > 1e9, "{p:?}");
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let r = ApiRequests::default();
        assert_eq!(
            r.method_label("/xray.app.stats.command.StatsService/QueryStats"),
            "xray.app.stats.command.StatsService/QueryStats"
        );
        assert_eq!(r.method_label("/evil/aaaa"), "unknown");
        assert_eq!(code_name(5), "NotFound");
        assert_eq!(code_name(99), "Unknown");
    }
}
