//! `shardray api …` against the real binary with two shards: upstream's subcommands and ours,
//! JSON on stdout, `shardray api: <code>: <message>` on stderr, exit status 1 or 2 on failure.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardray_proto::xray::app::router::command as router_pb;
use shardray_tests::servers::EchoServer;
use shardray_tests::{bin_path, vless, vless_config, Shardray, ALICE};

const BOB: &str = "5f2c86f0-63b1-4d7c-9a43-3f3b2d6c0a11";

/// What one `shardray api` run gave.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The stdout as JSON; panics with everything printed if it is not.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }

    fn ok(self) -> Value {
        assert_eq!(self.code, Some(0), "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self.json()
    }

    fn fails_with(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        assert!(self.stderr.starts_with("shardray api: "), "stderr: {}", self.stderr);
        self
    }
}

/// Runs `shardray api ARGS`, keeping stdout and stderr apart.
fn api(args: &[&str]) -> Run {
    api_with_env(args, None)
}

/// `shardray api ARGS` with $SHARDRAY_API set to `env`, or unset.
fn api_with_env(args: &[&str], env: Option<&str>) -> Run {
    let mut cmd = Command::new(bin_path());
    cmd.arg("api").args(args).stdin(Stdio::null()).env_remove("SHARDRAY_API");
    if let Some(v) = env {
        cmd.env("SHARDRAY_API", v);
    }
    let out = cmd.output().expect("run shardray api");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn server() -> (Shardray, String) {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService"]);
    let server = Shardray::start(&config, 2);
    let addr = server.api.expect("api address").to_string();
    (server, addr)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The sorted emails `inbounduser` prints for the inbound.
fn emails(server: &str) -> Vec<String> {
    let doc = api(&["inbounduser", "--server", server, "--tag", "vless-in"]).ok();
    let mut emails: Vec<String> =
        doc["users"].as_array().expect("users array").iter().map(|u| u["email"].as_str().unwrap().to_owned()).collect();
    emails.sort();
    emails
}

const THREE_USERS: &str = r#"{
  // An Xray config: comments are allowed.
  "inbounds": [{
    "tag": "vless-in",
    "protocol": "vless",
    "settings": {
      "clients": [
        { "id": "5f2c86f0-63b1-4d7c-9a43-3f3b2d6c0a11", "email": "bob@example.com" },
        { "id": "carol", "email": "carol@example.com", "level": 0 },
        { "id": "0b4ad9e6-3b1e-4c0a-8d6c-1f9b7b0e2a11", "email": "dave@example.com" }
      ],
      "decryption": "none"
    }
  }]
}"#;

#[test]
fn adu_adds_every_client_and_a_second_run_reports_the_duplicates() {
    let (server, addr) = server();
    let file = write(server.dir.path(), "users.json", THREE_USERS);
    let file = file.to_str().unwrap();

    let doc = api(&["adu", "--server", &addr, file]).ok();
    assert_eq!(doc["added"], 3, "{doc}");
    assert_eq!(doc["failed"], 0, "{doc}");
    assert_eq!(emails(&addr), ["alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"]);
    let count = api(&["inboundusercount", "--server", &addr, "--tag", "vless-in"]).ok();
    assert_eq!(count, json!({ "count": 4 }));

    // One user's record, account opened as upstream prints it.
    let one = api(&["inbounduser", "--server", &addr, "--tag", "vless-in", "--email", "bob@example.com"]).ok();
    assert_eq!(one["users"][0]["account"]["id"], BOB, "{one}");
    assert_eq!(one["users"][0]["account"]["_TypedMessage_"], "xray.proxy.vless.Account");

    // Again: every user exists already; upstream's message text is kept.
    let again = api(&["adu", &format!("-server={addr}"), file]);
    again.fails_with(1);
    assert!(again.stderr.contains("AlreadyExists"), "{}", again.stderr);
    assert!(again.stderr.contains("User bob@example.com already exists."), "{}", again.stderr);
    let doc = again.json();
    assert_eq!((doc["added"].clone(), doc["failed"].clone()), (json!(0), json!(3)));
    assert_eq!(doc["results"][0]["error"]["code"], "AlreadyExists");
    let count = api(&["inboundusercount", "--server", &addr, "--tag", "vless-in"]).ok();
    assert_eq!(count["count"], 4);
}

#[test]
fn adu_refuses_unreadable_files_and_reports_unsupported_protocols_per_client() {
    let (server, addr) = server();
    let missing = api(&["adu", "--server", &addr, "/nonexistent/users.json"]);
    missing.fails_with(2);
    assert!(missing.stderr.contains("cannot read"), "{}", missing.stderr);

    let broken = write(server.dir.path(), "broken.json", "{ \"inbounds\": [ ");
    api(&["adu", "--server", &addr, broken.to_str().unwrap()]).fails_with(2);

    let socks = write(
        server.dir.path(),
        "socks.json",
        r#"{ "inbounds": [{ "tag": "vless-in", "protocol": "wireguard",
             "settings": { "clients": [{ "password": "p", "email": "s@example.com" }] } }] }"#,
    );
    let run = api(&["adu", "--server", &addr, socks.to_str().unwrap()]);
    run.fails_with(2);
    assert!(run.stderr.contains("not supported yet"), "{}", run.stderr);
    assert_eq!(run.json()["failed"], 1);

    // Trojan clients are read and sent; the server refuses them on a VLESS inbound, naming both.
    let trojan = write(
        server.dir.path(),
        "trojan.json",
        r#"{ "inbounds": [{ "tag": "vless-in", "protocol": "trojan",
             "settings": { "clients": [{ "password": "p", "email": "t@example.com" }] } }] }"#,
    );
    let run = api(&["adu", "--server", &addr, trojan.to_str().unwrap()]);
    run.fails_with(1);
    assert!(run.stderr.contains("a trojan account cannot join a vless inbound"), "{}", run.stderr);
    assert_eq!(run.json()["failed"], 1);
    assert_eq!(emails(&addr), ["alice@example.com"]);
}

#[test]
fn rmu_removes_users_and_names_the_missing_one() {
    let (server, addr) = server();
    let file = write(server.dir.path(), "users.json", THREE_USERS);
    api(&["adu", "--server", &addr, file.to_str().unwrap()]).ok();

    let doc = api(&["rmu", "--server", &addr, "-tag=vless-in", "bob@example.com", "carol@example.com"]).ok();
    assert_eq!(doc["removed"], 2, "{doc}");
    assert_eq!(emails(&addr), ["alice@example.com", "dave@example.com"]);

    let run = api(&["rmu", "--server", &addr, "--tag", "vless-in", "nobody@example.com"]);
    run.fails_with(1);
    assert!(run.stderr.contains("NotFound"), "{}", run.stderr);
    assert!(run.stderr.contains("not found"), "{}", run.stderr);
    assert_eq!(run.json()["failed"], 1);

    let run = api(&["rmu", "--server", &addr, "--tag", "nope", "dave@example.com"]);
    run.fails_with(1);
    assert!(run.stderr.contains("nope"), "{}", run.stderr);
}

#[test]
fn stats_commands_print_counters_as_json() {
    let (_server, addr) = server();
    let doc = api(&["statsquery", "--server", &addr, "--pattern", "alice"]).ok();
    let names: Vec<&str> =
        doc["stat"].as_array().expect("stat array").iter().map(|s| s["name"].as_str().unwrap()).collect();
    for name in ["user>>>alice@example.com>>>traffic>>>uplink", "user>>>alice@example.com>>>traffic>>>downlink"] {
        assert!(names.contains(&name), "{name} missing from {doc}");
    }
    assert!(doc["stat"][0]["value"].is_i64(), "{doc}");

    // Upstream's one-dash spelling, and a reset.
    let one =
        api(&["stats", &format!("-server={addr}"), "-name", "user>>>alice@example.com>>>traffic>>>uplink", "-reset"])
            .ok();
    assert_eq!(one, json!({ "stat": { "name": "user>>>alice@example.com>>>traffic>>>uplink", "value": 0 } }));

    let missing = api(&["stats", "--server", &addr, "--name", "user>>>nobody>>>x"]);
    missing.fails_with(1);
    assert!(missing.stderr.contains("NotFound"), "{}", missing.stderr);
    assert!(missing.stdout.is_empty(), "{}", missing.stdout);

    let sys = api(&["statssys", "--server", &addr]).ok();
    assert!(sys["Uptime"].is_u64() && sys["NumGoroutine"].is_u64(), "{sys}");
    let online = api(&["statsgetallonlineusers", "--server", &addr]).ok();
    assert!(online["users"].is_array(), "{online}");
    // No session: offline is NOT_FOUND, as upstream answers before a user's first session.
    let offline = api(&["statsonline", "--server", &addr, "--email", "alice@example.com"]);
    offline.fails_with(1);
    assert!(offline.stderr.contains("user>>>alice@example.com>>>online not found."), "{}", offline.stderr);
}

#[test]
fn our_operations_work_end_to_end() {
    let echo = EchoServer::start();
    let (server, addr) = server();
    let dir = server.dir.path();

    // setlevel: the new level shows at once.
    let doc =
        api(&["setlevel", "--server", &addr, "--tag", "vless-in", "--email", "alice@example.com", "--level", "3"]).ok();
    assert_eq!(doc["level"], 3);
    let user = api(&["inbounduser", "--server", &addr, "--tag", "vless-in", "--email", "alice@example.com"]).ok();
    assert_eq!(user["users"][0]["level"], 3, "{user}");

    // kick: a live session of alice's is closed; alice stays.
    let proxy = server.inbound("vless-in");
    let mut session = vless::connect(proxy).unwrap();
    let mut first = vless::request(ALICE, echo.addr());
    first.extend_from_slice(b"ping");
    session.write_all(&first).unwrap();
    let mut back = [0u8; 6];
    session.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"\0\0ping");
    api(&["kick", "--server", &addr, "--tag", "vless-in", "--email", "alice@example.com"]).ok();
    session.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let started = Instant::now();
    let closed = matches!(session.read(&mut buf), Ok(0) | Err(_));
    assert!(closed && started.elapsed() < Duration::from_secs(4), "session not closed");
    assert_eq!(emails(&addr), ["alice@example.com"]);

    // addusers: atomic; a batch with one duplicate adds nothing.
    let batch = write(
        dir,
        "batch.json",
        r#"{ "clients": [
            { "id": "bob", "email": "bob@example.com" },
            { "id": "carol", "email": "carol@example.com" }
        ] }"#,
    );
    let doc = api(&["addusers", "--server", &addr, "--tag", "vless-in", batch.to_str().unwrap()]).ok();
    assert_eq!(doc["added"], json!(["bob@example.com", "carol@example.com"]));
    let dup = write(
        dir,
        "dup.json",
        r#"[ { "id": "dave", "email": "dave@example.com" },
             { "id": "bob", "email": "bob@example.com" } ]"#,
    );
    let run = api(&["addusers", "--server", &addr, "--tag", "vless-in", dup.to_str().unwrap()]);
    run.fails_with(1);
    assert!(run.stderr.contains("AlreadyExists"), "{}", run.stderr);
    assert_eq!(emails(&addr), ["alice@example.com", "bob@example.com", "carol@example.com"]);

    // rmusers: atomic; an unknown email removes nothing.
    let run = api(&["rmusers", "--server", &addr, "--tag", "vless-in", "bob@example.com", "nobody@example.com"]);
    run.fails_with(1);
    assert!(run.stderr.contains("NotFound"), "{}", run.stderr);
    assert_eq!(emails(&addr).len(), 3);
    api(&["rmusers", "--server", &addr, "--tag", "vless-in", "bob@example.com", "carol@example.com"]).ok();
    assert_eq!(emails(&addr), ["alice@example.com"]);

    // replaceusers, from a whole config: the inbound's set becomes the file's.
    let config = write(dir, "replace.json", THREE_USERS);
    let doc = api(&["replaceusers", "--server", &addr, "--tag", "vless-in", config.to_str().unwrap()]).ok();
    assert_eq!(doc["users"].as_array().unwrap().len(), 3);
    assert_eq!(emails(&addr), ["bob@example.com", "carol@example.com", "dave@example.com"]);
    // And the replaced-in user works through the proxy.
    assert_eq!(vless::round_trip(proxy, BOB, echo.addr(), b"hello").unwrap(), b"hello");
}

#[test]
fn lsi_and_lso_list_handlers() {
    let (_server, addr) = server();
    let tags = |doc: &Value, key: &str| -> Vec<String> {
        doc[key]
            .as_array()
            .unwrap_or_else(|| panic!("{doc}"))
            .iter()
            .map(|i| i["tag"].as_str().unwrap().to_owned())
            .collect()
    };
    let only = api(&["lsi", "--server", &addr, "--isOnlyTags"]).ok();
    assert_eq!(tags(&only, "inbounds"), ["vless-in"]);
    assert_eq!(only, json!({ "inbounds": [{ "tag": "vless-in" }] }));
    // Upstream's spelling of the same.
    let only = api(&["lsi", &format!("-s={addr}"), "-isOnlyTags=true"]).ok();
    assert_eq!(only, json!({ "inbounds": [{ "tag": "vless-in" }] }));

    let full = api(&["lsi", "--server", &addr]).ok();
    let inbound = &full["inbounds"][0];
    assert_eq!(inbound["receiverSettings"]["listen"], "127.0.0.1", "{full}");
    assert_eq!(inbound["proxySettings"]["clients"][0]["email"], "alice@example.com", "{full}");

    let outs = api(&["lso", "--server", &addr]).ok();
    assert_eq!(tags(&outs, "outbounds"), ["direct", "blocked"]);
}

#[test]
fn nothing_listening_fails_fast_with_a_clear_message() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let run = api(&["lsi", "--server", &addr, "--timeout", "2"]);
    assert!(started.elapsed() < Duration::from_secs(6), "took too long");
    run.fails_with(1);
    assert!(run.stderr.contains("Unavailable"), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("cannot connect to {addr}")), "{}", run.stderr);
    assert!(run.stdout.is_empty());

    // A Unix socket path that does not exist.
    let run = api(&["lsi", "--server", "/nonexistent/api.sock"]);
    run.fails_with(1);
    assert!(run.stderr.contains("/nonexistent/api.sock"), "{}", run.stderr);
}

#[test]
fn services_the_config_leaves_out_answer_unimplemented_with_the_fix() {
    let (server, addr) = server();
    let run = api(&["restartlogger", "--server", &addr]);
    run.fails_with(1);
    let fix = "Unimplemented: LoggerService is not enabled: add \"LoggerService\" to api.services";
    assert!(run.stderr.contains(fix), "{}", run.stderr);

    let fix = "Unimplemented: RoutingService is not enabled: add \"RoutingService\" to api.services";
    for args in [vec!["rmrules", "some-rule"], vec!["sib", "--outbound", "blocked", "--inbound", "vless-in", "1.2.3.4"]]
    {
        let mut all = args.clone();
        all.extend(["--server", addr.as_str()]);
        let run = api(&all);
        run.fails_with(1);
        assert!(run.stderr.contains(fix), "{args:?}: {}", run.stderr);
    }

    let rules = write(
        server.dir.path(),
        "rules.json",
        r#"{ "routing": { "rules": [
            { "type": "field", "ruleTag": "r", "ip": ["10.0.0.0/8"], "outboundTag": "blocked" }
        ] } }"#,
    );
    let run = api(&["adrules", "--server", &addr, rules.to_str().unwrap()]);
    run.fails_with(1);
    assert!(run.stderr.contains(fix), "{}", run.stderr);

    // adi checks an inbound as a config inbound before sending it: this one has no port.
    let inbound = write(server.dir.path(), "in.json", THREE_USERS);
    let run = api(&["adi", "--server", &addr, inbound.to_str().unwrap()]);
    run.fails_with(2);
    assert!(run.stderr.contains("inbounds[0].port: missing"), "{}", run.stderr);
}

#[test]
fn without_server_the_address_comes_from_the_environment_then_the_config_then_xrays_default() {
    let (server, addr) = server();
    let run = api_with_env(&["lsi", "--isOnlyTags"], Some(&addr));
    assert_eq!(run.ok()["inbounds"][0]["tag"], "vless-in");

    // A config naming the API's address, read with the server's own loader.
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = json!({ "tag": "api", "listen": addr, "services": ["HandlerService"] });
    let file = write(server.dir.path(), "client-view.json", &config.to_string());
    let run = api(&["lsi", "--isOnlyTags", "-c", file.to_str().unwrap()]);
    assert_eq!(run.ok()["inbounds"][0]["tag"], "vless-in");

    // Nothing given: Xray's default, and the way to choose another when it fails.
    let free = std::net::TcpListener::bind("127.0.0.1:8080").ok();
    if free.is_some() {
        drop(free);
        let run = api(&["lsi"]);
        run.fails_with(1);
        assert!(run.stderr.contains("cannot connect to 127.0.0.1:8080 (from the default, Xray's)"), "{}", run.stderr);
        assert!(run.stderr.contains("-s ADDR") && run.stderr.contains("SHARDRAY_API"), "{}", run.stderr);
    }
}

#[test]
fn a_unix_socket_api_is_reachable() {
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("api.sock");
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] =
        json!({ "tag": "api", "listen": sock.to_str().unwrap(), "services": ["HandlerService", "StatsService"] });
    let _server = Shardray::start(&config, 2);
    let path = sock.to_str().unwrap();

    let doc = api(&["lsi", "--server", path, "--isOnlyTags"]).ok();
    assert_eq!(doc, json!({ "inbounds": [{ "tag": "vless-in" }] }));
    let unix = format!("unix:{path}");
    let doc = api(&["statsquery", "-s", &unix, "-pattern", "alice"]).ok();
    assert!(!doc["stat"].as_array().unwrap().is_empty(), "{doc}");
    let doc = api(&["rmusers", "--server", path, "--tag", "vless-in", "alice@example.com"]).ok();
    assert_eq!(doc["removed"], json!(["alice@example.com"]));
}

#[test]
fn outbounds_and_rules_from_files_end_to_end() {
    let echo = EchoServer::start();
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = shardray_tests::loopback_api(&["HandlerService", "StatsService", "RoutingService"]);
    let server = Shardray::start(&config, 2);
    let addr = server.api.expect("api address").to_string();
    let proxy = server.inbound("vless-in");
    let echoes = || vless::round_trip(proxy, ALICE, echo.addr(), b"hi").map(|r| r == b"hi").unwrap_or(false);
    let dir = server.dir.path();

    // ado: outbounds validated by our config loader, sent as the API's messages.
    let outbounds = write(
        dir,
        "out.json",
        r#"{ "outbounds": [
            // comments are fine
            { "tag": "sink", "protocol": "blackhole" },
            { "tag": "px-1", "protocol": "freedom", "settings": { "domainStrategy": "UseIPv4" } }
        ] }"#,
    );
    let doc = api(&["ado", "--server", &addr, outbounds.to_str().unwrap()]).ok();
    assert_eq!(doc, json!({ "added": ["sink", "px-1"] }));
    let doc = api(&["lso", "--server", &addr]).ok();
    let tags: Vec<&str> = doc["outbounds"].as_array().unwrap().iter().map(|o| o["tag"].as_str().unwrap()).collect();
    assert_eq!(tags, ["direct", "blocked", "sink", "px-1"]);
    let run = api(&["ado", "--server", &addr, outbounds.to_str().unwrap()]);
    run.fails_with(1);
    assert!(run.stderr.contains("AlreadyExists: existing tag found: sink"), "{}", run.stderr);
    let wireguard = write(dir, "wireguard.json", r#"{ "outbounds": [{ "tag": "v", "protocol": "wireguard" }] }"#);
    let run = api(&["ado", "--server", &addr, wireguard.to_str().unwrap()]);
    run.fails_with(2);
    assert!(run.stderr.contains("outbounds[0].protocol"), "{}", run.stderr);

    // adrules (replacing): loopback to the sink; then rmrules brings the config's route back.
    let rules = write(
        dir,
        "rules.json",
        r#"{ "routing": { "rules": [
            { "ruleTag": "sunk", "ip": ["127.0.0.1/32"], "outboundTag": "sink" }
        ] } }"#,
    );
    assert!(echoes());
    let doc = api(&["adrules", "--server", &addr, rules.to_str().unwrap()]).ok();
    assert_eq!(doc, json!({ "added": 1 }));
    assert!(!echoes(), "sent to the blackhole");
    let back = write(
        dir,
        "back.json",
        r#"{ "routing": { "rules": [ { "ruleTag": "lo", "ip": ["127.0.0.1/32"], "outboundTag": "direct" } ] } }"#,
    );
    api(&["adrules", "--server", &addr, "-append", back.to_str().unwrap()]).ok();
    assert!(!echoes(), "the first rule still matches");
    // Validated as a config's routing: a path-named refusal, nothing sent.
    let geosite = write(
        dir,
        "geosite.json",
        r#"{ "routing": { "rules": [ { "domain": ["full:a.com", "geosite:cn"], "outboundTag": "sink" } ] } }"#,
    );
    let run = api(&["adrules", "--server", &addr, geosite.to_str().unwrap()]);
    run.fails_with(2);
    assert!(run.stderr.contains("routing.rules[0].domain[1]"), "{}", run.stderr);
    let doc = api(&["rmrules", "--server", &addr, "sunk"]).ok();
    assert_eq!(doc, json!({ "removed": ["sunk"] }));
    assert!(echoes());

    // sib: a source-IP rule appended; with -reset it replaces the old one of its tag.
    api(&["sib", "--server", &addr, "-outbound=sink", "-inbound=vless-in", "10.9.9.9"]).ok();
    api(&["sib", "--server", &addr, "-outbound=sink", "-reset", "10.8.8.8/32"]).ok();
    let grpc = shardray_tests::api::ApiClient::connect(server.api.unwrap());
    let mut client = router_pb::routing_service_client::RoutingServiceClient::new(grpc.channel());
    let rules = grpc.block_on(client.list_rule(router_pb::ListRuleRequest {})).unwrap().into_inner().rules;
    let tags: Vec<&str> = rules.iter().map(|r| r.rule_tag.as_str()).collect();
    assert_eq!(tags, ["lo", "sourceIpBlock"]);
    let run = api(&["rmo", "--server", &addr, "sink", "px-1"]);
    assert_eq!(run.ok(), json!({ "removed": ["sink", "px-1"] }));
    let run = api(&["rmo", "--server", &addr, "sink"]);
    run.fails_with(1);
    assert!(run.stderr.contains("NotFound"), "{}", run.stderr);
}
