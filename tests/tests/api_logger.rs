//! LoggerService (reopen after rotation, follow the log), SIGUSR1, and the audit trail.

use std::time::Duration;

use serde_json::json;
use shardray_proto::xray::app::log::command as pb;
use shardray_tests::api::ApiClient;
use shardray_tests::servers::EchoServer;
use shardray_tests::{vless, vless_config, wait_until, Shardray, ALICE};

fn config(dir: &std::path::Path) -> serde_json::Value {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["log"] = json!({ "loglevel": "info", "access": dir.join("access.log") });
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService", "LoggerService"]);

    config
}

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn restart_logger_and_sigusr1_reopen_rotated_files() {
    let echo = EchoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Shardray::start(&config(dir.path()), 2);
    let api = ApiClient::connect(server.api.unwrap());
    let proxy = server.inbound("vless-in");
    let access = dir.path().join("access.log");

    vless::round_trip(proxy, ALICE, echo.addr(), b"one").unwrap();
    assert!(wait_until(Duration::from_secs(5), || read(&access).contains("accepted")));
    // logrotate moves the file away; until the reopen, lines go to the moved file.
    std::fs::rename(&access, dir.path().join("access.log.1")).unwrap();
    let mut logger = pb::logger_service_client::LoggerServiceClient::new(api.channel());
    api.block_on(logger.restart_logger(pb::RestartLoggerRequest {})).expect("RestartLogger");
    vless::round_trip(proxy, ALICE, echo.addr(), b"two").unwrap();
    assert!(wait_until(Duration::from_secs(5), || read(&access).contains("accepted")), "no line in the new file");
    assert_eq!(read(&dir.path().join("access.log.1")).matches("accepted").count(), 1);

    // SIGUSR1 does the same (SIGHUP reloads the config, as nginx splits them).
    std::fs::rename(&access, dir.path().join("access.log.2")).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.pid() as i32, libc::SIGUSR1) };
    assert!(wait_until(Duration::from_secs(5), || {
        let _ = vless::round_trip(proxy, ALICE, echo.addr(), b"three");
        read(&access).contains("accepted")
    }));
}

#[test]
fn follow_log_streams_lines_as_they_are_written() {
    let echo = EchoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Shardray::start(&config(dir.path()), 2);
    let api = ApiClient::connect(server.api.unwrap());
    let mut logger = pb::logger_service_client::LoggerServiceClient::new(api.channel());
    let mut stream = api.block_on(logger.follow_log(pb::FollowLogRequest {})).unwrap().into_inner();
    vless::round_trip(server.inbound("vless-in"), ALICE, echo.addr(), b"hello").unwrap();
    let wanted = format!("accepted tcp:{}", echo.addr());
    let found = api.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(line)) = stream.message().await {
                if line.message.contains(&wanted) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false)
    });
    assert!(found, "the accepted line never came through FollowLog");
}

#[test]
fn every_changing_call_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.json");
    let mut config = config(dir.path());
    config["log"]["loglevel"] = json!("error"); // audit lines are written whatever the level
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let state = dir.path().join("state");
    let args = ["run", "-c", config_path.to_str().unwrap(), "--shards", "1", "--state", state.to_str().unwrap()];
    let server = Shardray::start_with_args(tempfile::tempdir().unwrap(), &args).unwrap();
    let api = ApiClient::connect(server.api.unwrap());
    api.add_user("vless-in", "new@example.com", "new-user", 0).unwrap();
    let _ = api.remove_user("vless-in", "nobody@example.com");
    api.get("user>>>alice@example.com>>>traffic>>>uplink", true).unwrap();

    let audit = state.join("audit.log");
    assert!(wait_until(Duration::from_secs(5), || read(&audit).lines().count() >= 3), "{}", read(&audit));
    let lines: Vec<serde_json::Value> = read(&audit).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["call"], "AlterInbound");
    assert_eq!(lines[0]["args"], "tag=vless-in op=AddUserOperation");
    assert_eq!(lines[0]["result"], "ok");
    assert!(lines[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(lines[1]["result"].as_str().unwrap().contains("not found"), "{}", lines[1]);
    assert_eq!(lines[2]["call"], "GetStats");
    assert!(
        wait_until(Duration::from_secs(5), || server.output().contains("[Audit] api AlterInbound")),
        "{}",
        server.output()
    );
}

#[test]
fn reflection_lists_the_services_when_asked_for() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config["api"]["services"] = json!(["HandlerService", "StatsService", "ReflectionService"]);
    let server = Shardray::start(&config, 1);
    let api = ApiClient::connect(server.api.unwrap());
    let mut client = ServerReflectionClient::new(api.channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let services: Vec<String> = api.block_on(async {
        let mut replies = client.server_reflection_info(tokio_stream::once(request)).await.unwrap().into_inner();
        match replies.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
            other => panic!("unexpected reflection reply {other:?}"),
        }
    });
    assert!(services.contains(&"xray.app.proxyman.command.HandlerService".to_owned()), "{services:?}");
    assert!(services.contains(&"xray.app.stats.command.StatsService".to_owned()), "{services:?}");
}
