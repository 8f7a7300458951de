//! The metrics endpoint through the real binary with two shards: a real Prometheus scrapes
//! `/metrics` and its query API gives a user's exact payload bytes; promtool finds nothing to
//! lint in a scrape; `/debug/vars` has Xray's shape and the API's numbers; `/healthz` and the
//! gRPC health service answer; Xray's routed dokodemo-door form serves too; a non-loopback
//! metrics address is refused at load.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::{vless_user, AddUsersOperation, ApiClient};
use shardray_tests::metrics::{http_get, promtool_check, Prometheus};
use shardray_tests::servers::EchoServer;
use shardray_tests::{loopback_api, run_cli, vless, vless_config, wait_until, Shardray, ALICE};

const BOB: &str = "0e9a1d2c-4a55-4b8e-9c7e-3f2a0b1c2d3e";

/// A server with Alice and Bob, StatsService and HandlerService on the API, and `metrics`.
fn server(metrics: Value) -> (Shardray, ApiClient) {
    let clients = json!([
        { "id": ALICE, "email": "alice@example.com" },
        { "id": BOB, "email": "bob@example.com" }
    ]);
    let mut config = vless_config(clients, json!({}));
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    config["metrics"] = metrics;
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.expect("api address"));
    (server, api)
}

/// Sends `len` payload bytes through as `user` (echoed back) and waits until the API counts
/// them both ways.
fn send(server: &Shardray, api: &ApiClient, echo: &EchoServer, user: &str, email: &str, len: usize) {
    let name = |dir: &str| format!("user>>>{email}>>>traffic>>>{dir}");
    let before = api.get(&name("downlink"), false).unwrap();
    let back = vless::round_trip(server.inbound("vless-in"), user, echo.addr(), &vless::payload(len, 7)).unwrap();
    assert_eq!(back.len(), len);
    assert!(wait_until(Duration::from_secs(5), || api.get(&name("downlink"), false).unwrap() >= before + len as i64));
}

/// `/metrics` as text.
fn scrape(server: &Shardray) -> String {
    let (status, body) = http_get(server.metrics.expect("metrics address"), "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample line `series` (name and labels as written) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn prometheus_reads_a_users_exact_payload_bytes() {
    let echo = EchoServer::start();
    let (server, api) = server(json!({ "tag": "Metrics", "listen": "127.0.0.1:0", "userSeries": true }));
    send(&server, &api, &echo, ALICE, "alice@example.com", 12_345);
    send(&server, &api, &echo, ALICE, "alice@example.com", 655);
    let prometheus = Prometheus::start(server.metrics.unwrap());

    let value = |dir: &str| {
        let expr = format!("shardray_user_traffic_bytes_total{{user=\"alice@example.com\",direction=\"{dir}\"}}");
        prometheus.query(&expr).first().map(|(_, v)| *v)
    };
    let seen = wait_until(Duration::from_secs(30), || value("uplink").is_some() && value("downlink").is_some());
    assert!(seen, "prometheus has no series for alice:\n{}", prometheus.log());
    assert_eq!(value("uplink"), Some(13_000.0));
    assert_eq!(value("downlink"), Some(13_000.0));
    // The per-shard and process series are there too, and the scrape itself succeeded.
    assert_eq!(prometheus.query("up{job=\"shardray\"}").first().map(|s| s.1), Some(1.0));
    assert_eq!(prometheus.query("shardray_shard_epoch").len(), 2);
    assert_eq!(prometheus.query("process_resident_memory_bytes > 0").len(), 1);

    // The Grafana dashboard: every query is valid PromQL to this Prometheus, and every metric
    // it reads is in a scrape.
    let text = scrape(&server);
    for expr in dashboard_queries() {
        for name in metric_names(&expr) {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
                "the dashboard reads {name}, which no scrape has:\n{text}"
            );
        }
        let expr = expr.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$instance", ".*");
        prometheus.query(&expr);
    }
}

/// Every query of `deploy/grafana/shardray.json`, checked for the shape Grafana imports.
fn dashboard_queries() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/shardray.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("the dashboard is JSON");
    assert_eq!(doc["uid"], "shardray");
    assert!(doc["title"].is_string() && doc["schemaVersion"].is_u64(), "{doc}");
    assert_eq!(doc["__inputs"][0]["name"], "DS_PROMETHEUS");
    let panels = doc["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut exprs = Vec::new();
    for p in panels {
        assert!(p["title"].is_string() && p["type"].is_string() && p["gridPos"]["w"].is_u64(), "{p}");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("no targets in {p}"));
        exprs.extend(targets.iter().map(|t| t["expr"].as_str().unwrap_or_else(|| panic!("no expr in {t}")).to_owned()));
    }
    exprs
}

/// The names of our metrics (`shardray_*`, `process_*`) a PromQL expression reads.
fn metric_names(expr: &str) -> Vec<&str> {
    let mut names = Vec::new();
    for prefix in ["shardray_", "process_"] {
        for (at, _) in expr.match_indices(prefix) {
            let preceded = expr[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_');
            let len = expr[at..].find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(expr.len() - at);
            if !preceded {
                names.push(&expr[at..at + len]);
            }
        }
    }
    names
}

#[test]
fn promtool_finds_no_problem_in_a_scrape() {
    let echo = EchoServer::start();
    let (server, api) = server(json!({ "listen": "127.0.0.1:0", "userSeries": true, "maxUserSeries": 1 }));
    send(&server, &api, &echo, BOB, "bob@example.com", 2000);
    send(&server, &api, &echo, ALICE, "alice@example.com", 100);
    // An unknown counter: a NotFound call, counted by code.
    assert!(api.get("user>>>nobody>>>traffic>>>uplink", false).is_err());
    let q = api.query("", false);
    let text = scrape(&server);
    let (ok, report) = promtool_check(&text);
    assert!(ok && report.trim().is_empty(), "promtool check metrics:\n{report}\non:\n{text}");

    // The cap keeps the top user by traffic, and says how many it left out.
    assert_eq!(
        sample(&text, "shardray_user_traffic_bytes_total{user=\"bob@example.com\",direction=\"uplink\"}"),
        Some(2000.0)
    );
    assert!(!text.contains("alice@example.com"), "{text}");
    assert_eq!(sample(&text, "shardray_user_series_omitted"), Some(1.0));
    // The numbers the API reports.
    for (series, name) in [
        (
            "shardray_inbound_traffic_bytes_total{inbound=\"vless-in\",direction=\"uplink\"}",
            "inbound>>>vless-in>>>traffic>>>uplink",
        ),
        (
            "shardray_outbound_traffic_bytes_total{outbound=\"direct\",direction=\"downlink\"}",
            "outbound>>>direct>>>traffic>>>downlink",
        ),
        ("shardray_refused_total{reason=\"private_destination\"}", "refused>>>private_destination"),
    ] {
        assert_eq!(sample(&text, series), Some(q[name] as f64), "{series} in\n{text}");
    }
    for series in [
        "shardray_connections",
        "shardray_users_online",
        "shardray_shard_sessions{shard=\"0\"}",
        "shardray_shard_sessions{shard=\"1\"}",
        "shardray_shard_epoch{shard=\"1\"}",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_virtual_memory_bytes",
    ] {
        assert!(sample(&text, series).is_some(), "{series} missing from\n{text}");
    }
    let calls = |method: &str, code: &str| {
        sample(&text, &format!("shardray_api_requests_total{{method=\"xray.app.stats.command.StatsService/{method}\",code=\"{code}\"}}"))
    };
    assert!(calls("GetStats", "OK").unwrap_or(0.0) >= 2.0, "{text}");
    assert_eq!(calls("GetStats", "NotFound"), Some(1.0), "{text}");
    assert_eq!(calls("QueryStats", "OK"), Some(1.0), "{text}");
}

#[test]
fn debug_vars_health_and_the_api_agree() {
    let echo = EchoServer::start();
    let (server, api) = server(json!({ "listen": "127.0.0.1:0" }));
    send(&server, &api, &echo, ALICE, "alice@example.com", 4321);
    // A reset shows in the metrics as in the API.
    api.query("outbound>>>direct", true);
    let metrics = server.metrics.unwrap();

    let (status, body) = http_get(metrics, "/debug/vars").unwrap();
    assert_eq!(status, 200, "{body}");
    let vars: Value = serde_json::from_str(&body).expect("/debug/vars is JSON");
    assert!(vars["cmdline"].is_array(), "{vars}");
    let mut from_vars = BTreeMap::new();
    for kind in ["inbound", "outbound", "user"] {
        for (who, dirs) in vars["stats"][kind].as_object().unwrap_or_else(|| panic!("stats.{kind} in {vars}")) {
            for (dir, v) in dirs.as_object().unwrap() {
                from_vars.insert(format!("{kind}>>>{who}>>>traffic>>>{dir}"), v.as_i64().unwrap());
            }
        }
    }
    let from_api: BTreeMap<String, i64> = api.query(">>>traffic>>>", false);
    assert_eq!(from_vars, from_api);
    assert_eq!(from_vars["user>>>alice@example.com>>>traffic>>>uplink"], 4321);
    assert_eq!(from_vars["outbound>>>direct>>>traffic>>>uplink"], 0);
    // Per-user series are off by default.
    assert!(!scrape(&server).contains("shardray_user_traffic_bytes_total"));

    assert_eq!(http_get(metrics, "/healthz").unwrap(), (200, "ok".to_string()));
    assert_eq!(http_get(metrics, "/nothing").unwrap().0, 404);

    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    let mut health = HealthClient::new(api.channel());
    for service in ["", "xray.app.stats.command.StatsService"] {
        let reply = api.block_on(health.check(HealthCheckRequest { service: service.into() })).unwrap().into_inner();
        assert_eq!(reply.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = api.block_on(health.check(HealthCheckRequest { service: "no.Such".into() })).unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[test]
fn xrays_routed_dokodemo_form_serves_metrics_and_counts_added_users() {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = loopback_api(&["HandlerService", "StatsService"]);
    config["metrics"] = json!({ "tag": "metrics_out", "userSeries": true });
    config["inbounds"].as_array_mut().unwrap().push(json!({
        "tag": "metrics_in", "listen": "127.0.0.1", "port": 0, "protocol": "dokodemo-door",
        "settings": { "address": "127.0.0.1" }
    }));
    config["routing"]["rules"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({ "type": "field", "inboundTag": ["metrics_in"], "outboundTag": "metrics_out" }));
    let server = Shardray::start(&config, 2);
    assert!(!server.inbounds.contains_key("metrics_in"), "{:?}", server.inbounds);
    let api = ApiClient::connect(server.api.unwrap());
    let text = scrape(&server);
    let epoch = |t: &str| sample(t, "shardray_shard_epoch{shard=\"0\"}").unwrap();
    let before = epoch(&text);
    // A user added at run time has series at once, and the shards' epoch moves on.
    let users = vec![vless_user("carol@example.com", BOB, 0)];
    api.ours("vless-in", "AddUsersOperation", &AddUsersOperation { users }).unwrap();
    let text = scrape(&server);
    assert!(text.contains("user=\"carol@example.com\""), "{text}");
    assert!(epoch(&text) > before, "{text}");
    assert_eq!(sample(&text, "shardray_shard_epoch{shard=\"1\"}"), Some(epoch(&text)));
}

#[test]
fn a_metrics_address_off_loopback_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = vless_config(json!([]), json!({}));
    config["metrics"] = json!({ "listen": "0.0.0.0:11111" });
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let (status, out) = run_cli(&["test", "-c", path.to_str().unwrap()]);
    assert!(!status.success(), "{out}");
    assert!(out.contains("metrics.listen"), "{out}");
    assert!(out.contains("loopback or a Unix socket only"), "{out}");
    let (status, out) = run_cli(&["run", "-c", path.to_str().unwrap(), "--shards", "1"]);
    assert!(!status.success() && out.contains("metrics.listen"), "{out}");
}
