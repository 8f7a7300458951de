//! The command line: `test`, `run` flag forms, `version`, `uuid`, `link`.

use std::path::PathBuf;

use serde_json::json;
use shardray_tests::{run_cli, vless_config, Shardray, ALICE};

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures").join(name);
    path.to_str().unwrap().to_owned()
}

#[test]
fn both_fixtures_pass_shardray_test() {
    for name in ["seed-api-config.json", "xray-api-config.json"] {
        let (status, out) = run_cli(&["test", "-c", &fixture(name)]);
        assert!(status.success(), "{name}: {out}");
        assert!(out.contains("Configuration OK."), "{out}");
        // Upstream's single-dash spelling works too.
        let (status, _) = run_cli(&["test", "-config", &fixture(name)]);
        assert!(status.success());
    }
}

/// A change that breaks a config.
type Mutation = Box<dyn Fn(&mut serde_json::Value)>;

#[test]
fn broken_configs_fail_with_the_path_of_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let base = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "inbounds[0].settings.clients[0].id",
            Box::new(|c| {
                c["inbounds"][0]["settings"]["clients"][0]["id"] = json!("zz-not-a-uuid-zz-not-a-uuid-zz-not-a-uuid")
            }),
        ),
        ("inbounds[0].protocol", Box::new(|c| c["inbounds"][0]["protocol"] = json!("nonsense"))),
        ("inbounds[0].port", Box::new(|c| c["inbounds"][0]["port"] = json!(70000))),
        (
            "inbounds[0].settings.decryption",
            Box::new(|c| {
                c["inbounds"][0]["settings"].as_object_mut().unwrap().remove("decryption");
            }),
        ),
        ("routing.rules[0].ip[0]", Box::new(|c| c["routing"]["rules"][0]["ip"] = json!(["300.1.1.1/8"]))),
        (
            "routing.rules[0].balancerTag",
            Box::new(|c| {
                c["routing"]["rules"][0].as_object_mut().unwrap().remove("outboundTag");
                c["routing"]["rules"][0]["balancerTag"] = json!("nowhere");
            }),
        ),
        (
            "routing.rules[0].domain[0]",
            Box::new(|c| c["routing"]["rules"][0] = json!({"domain": ["regexp:(("], "outboundTag": "direct"})),
        ),
        ("outbounds[1].tag", Box::new(|c| c["outbounds"][1]["tag"] = json!("direct"))),
        (
            "inbounds[0].streamSettings.tlsSettings.certificates[0].certificateFile",
            Box::new(
                |c| c["inbounds"][0]["streamSettings"] = json!({"security": "tls", "tlsSettings": {"certificates": [{"certificateFile": "/nonexistent/cert.pem", "keyFile": "/nonexistent/key.pem"}]}}),
            ),
        ),
        (
            "inbounds[0].sniffing.destOverride[1]",
            Box::new(|c| c["inbounds"][0]["sniffing"] = json!({"enabled": true, "destOverride": ["tls", "ftp"]})),
        ),
        ("policy.levels", Box::new(|c| c["policy"]["levels"] = json!({"zero": {}}))),
    ];
    for (i, (path, mutate)) in cases.iter().enumerate() {
        let mut config = base.clone();
        mutate(&mut config);
        let file = dir.path().join(format!("case{i}.json"));
        std::fs::write(&file, serde_json::to_vec(&config).unwrap()).unwrap();
        let (status, out) = run_cli(&["test", "-c", file.to_str().unwrap()]);
        assert_eq!(status.code(), Some(1), "case {i} ({path}) passed: {out}");
        assert!(out.contains(path), "case {i}: expected {path:?} in {out:?}");
    }
}

#[test]
fn confdir_merges_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    let outbounds = base.as_object_mut().unwrap().remove("outbounds").unwrap();
    std::fs::write(dir.path().join("00_base.json"), serde_json::to_vec(&base).unwrap()).unwrap();
    std::fs::write(dir.path().join("10_out.json"), serde_json::to_vec(&json!({ "outbounds": outbounds })).unwrap())
        .unwrap();
    let d = dir.path().to_str().unwrap();
    let (status, out) = run_cli(&["test", "-confdir", d]);
    assert!(status.success(), "{out}");
    let server =
        Shardray::start_with_args(tempfile::tempdir().unwrap(), &["run", "--confdir", d, "--shards", "1"]).unwrap();
    assert!(server.inbounds.contains_key("vless-in"));
}

#[test]
fn version_uuid_and_link() {
    let (status, out) = run_cli(&["version"]);
    assert!(status.success() && out.starts_with("shardray "), "{out}");
    let (status, out) = run_cli(&["uuid"]);
    assert!(status.success());
    assert!(out.trim().parse::<uuid::Uuid>().is_ok(), "{out}");
    let (status, out) = run_cli(&["link", "-c", &fixture("seed-api-config.json")]);
    assert!(status.success(), "{out}");
    assert_eq!(
        out.trim(),
        "vless://b831381d-6324-4d53-ad4f-8cda48b30811@127.0.0.1:10086?encryption=none&security=none&type=tcp#alice%40example.com"
    );
}

#[test]
fn a_mapped_id_is_noted_by_test_and_at_start() {
    let config = vless_config(json!([{ "id": "alice", "email": "alice@example.com" }]), json!({}));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    // Xray's mapping of "alice": the version-5 UUID of the string in the nil namespace.
    let mapped = uuid::Uuid::new_v5(&uuid::Uuid::nil(), b"alice").to_string();
    let note =
        format!("inbounds[0].settings.clients[0].id: \"alice\" is not a UUID; it stands for {mapped} (Xray's mapping)");
    let (status, out) = run_cli(&["test", "-c", path.to_str().unwrap()]);
    assert!(status.success(), "{out}");
    assert!(out.contains(&note) && out.contains("Configuration OK."), "{out}");
    let server = Shardray::start(&config, 1);
    let logged = format!("config: {note}");
    let in_log = shardray_tests::wait_until(std::time::Duration::from_secs(5), || server.output().contains(&logged));
    assert!(in_log, "{}", server.output());
}

#[test]
fn an_unknown_key_warns_and_strict_refuses_it() {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["inbounds"][0]["settings"]["clients"][0]["emial"] = json!("typo@example.com");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let path = path.to_str().unwrap();
    let warning = "inbounds[0].settings.clients[0].emial: unknown key ignored (did you mean \"email\"?)";

    let (status, out) = run_cli(&["test", "-c", path]);
    assert!(status.success(), "{out}");
    assert!(out.contains(&format!("shardray: warning: {warning}")) && out.contains("Configuration OK."), "{out}");

    for command in ["test", "run"] {
        let (status, out) = run_cli(&[command, "--strict", "-c", path]);
        assert_eq!(status.code(), Some(1), "{command} --strict: {out}");
        assert!(out.contains("unknown keys (--strict)") && out.contains(warning), "{command} --strict: {out}");
    }
    // Upstream's one-dash spelling.
    let (status, _) = run_cli(&["test", "-strict", "-c", path]);
    assert_eq!(status.code(), Some(1));

    // At start, the warning is in the log too, and the server runs.
    let server = Shardray::start(&config, 1);
    let logged = format!("config: {warning}");
    let in_log = shardray_tests::wait_until(std::time::Duration::from_secs(5), || server.output().contains(&logged));
    assert!(in_log, "{}", server.output());
}
