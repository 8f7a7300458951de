//! The API with `api.tokens`, through the real binary: a call without a token or with an unknown
//! one is UNAUTHENTICATED, a role that is too small PERMISSION_DENIED (and audited), each role
//! reaches what the README says; the CLI sends --token; a public listen needs tokens; a Unix
//! socket API is 0600 and a live one is never taken over.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::json;
use shardray_proto::xray::app::log::command as log_pb;
use shardray_proto::xray::app::proxyman::command as handler_pb;
use shardray_proto::xray::app::stats::command as stats_pb;
use shardray_tests::api::{self, ApiClient};
use shardray_tests::{run_cli, vless_config, wait_until, Shardray, ALICE};
use tonic::Code;

const READER: &str = "reader-token-0123456789abcdef0123456789";
const OPERATOR: &str = "operator-token-0123456789abcdef012345678";
const ADMIN: &str = "admin-token-0123456789abcdef0123456789ab";

fn config(dir: &std::path::Path) -> serde_json::Value {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    std::fs::write(dir.join("admin.token"), format!("{ADMIN}\n")).unwrap();
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService", "LoggerService"]);
    config["api"]["tokens"] = json!([
        { "name": "grafana", "token": READER, "role": "reader" },
        { "name": "panel", "token": OPERATOR, "role": "operator" },
        { "name": "ops", "tokenFile": dir.join("admin.token"), "role": "admin" }
    ]);
    config
}

fn with<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn query(api: &ApiClient, token: Option<&str>, reset: bool) -> Result<(), tonic::Status> {
    let mut c = stats_pb::stats_service_client::StatsServiceClient::new(api.channel());
    let req = stats_pb::QueryStatsRequest { pattern: String::new(), reset, ..Default::default() };
    api.block_on(c.query_stats(with(req, token))).map(|_| ())
}

fn add_user(api: &ApiClient, token: Option<&str>, email: &str) -> Result<(), tonic::Status> {
    let id = "0a1b2c3d-0000-4000-8000-00000000000b";
    let op = handler_pb::AddUserOperation { user: Some(api::vless_user(email, id, 0)) };
    let req = handler_pb::AlterInboundRequest {
        tag: "vless-in".into(),
        operation: Some(api::typed("xray.app.proxyman.command.AddUserOperation", &op)),
    };
    let mut c = handler_pb::handler_service_client::HandlerServiceClient::new(api.channel());
    api.block_on(c.alter_inbound(with(req, token))).map(|_| ())
}

fn remove_inbound(api: &ApiClient, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut c = handler_pb::handler_service_client::HandlerServiceClient::new(api.channel());
    let req = handler_pb::RemoveInboundRequest { tag: "no-such-inbound".into() };
    api.block_on(c.remove_inbound(with(req, token))).map(|_| ())
}

fn restart_logger(api: &ApiClient, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut c = log_pb::logger_service_client::LoggerServiceClient::new(api.channel());
    api.block_on(c.restart_logger(with(log_pb::RestartLoggerRequest {}, token))).map(|_| ())
}

fn code(r: Result<(), tonic::Status>) -> Code {
    r.err().map_or(Code::Ok, |s| s.code())
}

#[test]
fn each_role_reaches_what_it_may_and_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let server = Shardray::start(&config(dir.path()), 2);
    let api = ApiClient::connect(server.api.unwrap());

    assert_eq!(code(query(&api, None, false)), Code::Unauthenticated);
    assert_eq!(code(query(&api, Some("not-a-token-not-a-token-not-a-token-x"), false)), Code::Unauthenticated);
    assert_eq!(code(add_user(&api, None, "x@example.com")), Code::Unauthenticated);

    // reader: counters only; no reset, no users, no inbounds, no logger.
    assert_eq!(code(query(&api, Some(READER), false)), Code::Ok);
    let denied = query(&api, Some(READER), true).unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("token \"grafana\" (reader) may not reset counters: it needs operator"),
        "{denied:?}"
    );
    assert_eq!(code(add_user(&api, Some(READER), "r@example.com")), Code::PermissionDenied);
    assert_eq!(code(restart_logger(&api, Some(READER))), Code::PermissionDenied);

    // operator: users and resets, not inbounds.
    assert_eq!(code(query(&api, Some(OPERATOR), true)), Code::Ok);
    assert_eq!(code(add_user(&api, Some(OPERATOR), "o@example.com")), Code::Ok);
    let denied = remove_inbound(&api, Some(OPERATOR)).unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("it needs admin"), "{denied:?}");

    // admin (its token read from tokenFile): everything; the inbound here does not exist.
    assert_eq!(code(remove_inbound(&api, Some(ADMIN))), Code::NotFound);
    assert_eq!(code(restart_logger(&api, Some(ADMIN))), Code::Ok);

    // Refusals are audited with the token's name.
    let out = || server.output();
    assert!(
        wait_until(Duration::from_secs(5), || out().contains("[Audit]") && out().contains("refused (token \"panel\")")),
        "{}",
        out()
    );
}

#[test]
fn the_cli_sends_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Shardray::start(&config(dir.path()), 2);
    let addr = server.api.unwrap().to_string();
    let (status, out) = run_cli(&["api", "statsquery", "-s", &addr]);
    assert!(!status.success() && out.contains("Unauthenticated") && out.contains("--token"), "{out}");
    let (status, out) = run_cli(&["api", "statsquery", "-s", &addr, "--token", READER]);
    assert!(status.success(), "{out}");
    let token_file = dir.path().join("admin.token");
    let (status, out) = run_cli(&["api", "restartlogger", "-s", &addr, "--token-file", token_file.to_str().unwrap()]);
    assert!(status.success(), "{out}");
    let (status, out) = run_cli(&["api", "restartlogger", "-s", &addr, "--token", READER]);
    assert!(!status.success() && out.contains("PermissionDenied"), "{out}");
}

#[test]
fn a_public_listen_needs_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut public = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    public["api"] = json!({ "tag": "api", "listen": "0.0.0.0:10085", "services": ["StatsService"] });
    let path = dir.path().join("public.json");
    std::fs::write(&path, public.to_string()).unwrap();
    let (status, out) = run_cli(&["test", "-c", path.to_str().unwrap()]);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains(
            "api.listen: the API listens on loopback or a Unix socket only, not on 0.0.0.0, unless api.tokens"
        ),
        "{out}"
    );

    public["api"]["tokens"] = json!([{ "token": OPERATOR, "role": "operator" }]);
    std::fs::write(&path, public.to_string()).unwrap();
    let (status, out) = run_cli(&["test", "-c", path.to_str().unwrap()]);
    assert!(status.success(), "{out}");

    public["api"]["tokens"] = json!([{ "token": "short", "role": "operator" }]);
    std::fs::write(&path, public.to_string()).unwrap();
    let (status, out) = run_cli(&["test", "-c", path.to_str().unwrap()]);
    assert!(!status.success() && out.contains("api.tokens[0].token: a token is at least 32"), "{out}");
}

#[test]
fn a_unix_socket_api_is_private_and_never_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = json!({ "tag": "api", "listen": socket, "services": ["StatsService"] });
    let first = Shardray::start(&config, 1);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let second = Shardray::try_start(&config, 1);
    let out = second.err().expect("a second server must not start on a live socket");
    assert!(out.contains("another process is serving on it"), "{out}");
    let (status, out) = run_cli(&["api", "statsquery", "-s", socket.to_str().unwrap()]);
    assert!(status.success(), "the first server lost its socket: {out}");
    drop(first);

    // A socket file nobody serves on any more is replaced; the mode is configurable.
    config["api"]["socketMode"] = json!("0660");
    let _third = Shardray::start(&config, 1);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
}

#[test]
fn a_stream_ends_when_a_reload_revokes_its_token() {
    const WATCHER: &str = "watcher-token-0123456789abcdef0123456789";
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    let watcher_file = dir.path().join("watcher.token");
    std::fs::write(&watcher_file, WATCHER).unwrap();
    config["api"]["tokens"].as_array_mut().unwrap().push(json!(
        { "name": "watcher", "tokenFile": watcher_file, "role": "reader" }
    ));
    let server = Shardray::start(&config, 2);
    let api = ApiClient::connect(server.api.unwrap());
    let addr = server.api.unwrap().to_string();
    let follow = |token: &str| {
        let mut logger = log_pb::logger_service_client::LoggerServiceClient::new(api.channel());
        api.block_on(logger.follow_log(with(log_pb::FollowLogRequest::default(), Some(token))))
    };
    let mut watching = follow(WATCHER).expect("a stream").into_inner();
    let mut admin = follow(ADMIN).expect("a stream").into_inner();
    // The next line containing `wanted`, or how the stream ended, within 5 s.
    let next = |stream: &mut tonic::Streaming<log_pb::FollowLogResponse>, wanted: &str| {
        api.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match stream.message().await {
                        Ok(Some(line)) if line.message.contains(wanted) => return Ok(line.message),
                        Ok(Some(_)) => {}
                        Ok(None) => return Err(tonic::Status::ok("ended without a status")),
                        Err(status) => return Err(status),
                    }
                }
            })
            .await
            .expect("nothing within 5 s")
        })
    };
    let reload = || {
        let (status, out) = run_cli(&["api", "reload", "-s", &addr, "--token", ADMIN]);
        assert!(status.success(), "{out}");
    };

    // A reload that keeps the token keeps the stream.
    reload();
    next(&mut watching, "config reloaded").expect("the watcher's stream after a reload that kept its token");
    next(&mut admin, "config reloaded").unwrap();

    // The watcher's token rotated in its file: its stream ends UNAUTHENTICATED, promptly.
    std::fs::write(&watcher_file, "rotated-token-0123456789abcdef0123456789").unwrap();
    let started = std::time::Instant::now();
    reload();
    let ended = next(&mut watching, "no line is wanted").unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{ended:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "ended after {:?}", started.elapsed());
    // The admin's stream goes on, and the old token opens no new one.
    next(&mut admin, "config reloaded").expect("the admin's stream after the reload");
    assert_eq!(follow(WATCHER).err().map(|s| s.code()), Some(Code::Unauthenticated));
    assert!(
        wait_until(Duration::from_secs(5), || server.output().contains("ended (token \"watcher\")")),
        "the end is audited\n{}",
        server.output()
    );
}
