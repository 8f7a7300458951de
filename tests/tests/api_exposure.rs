//! Who reaches the API, over what: every listen kind (loopback TCP, a public address, a Unix
//! socket, a dokodemo-door API inbound on loopback and on a public address) × every credential
//! (none, tokens, mutual TLS) × every role, against each group of methods (a stats read, a user
//! operation, an inbound add, a logger restart). Each server starts or is refused at start as
//! the README says, and each call gets the code the README says. Then mutual TLS with a client
//! without a certificate and one from another CA, tokens and certificates combined, and the
//! per-caller call limit (RESOURCE_EXHAUSTED past the bucket, audited, counted, refilled).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use shardray_proto::xray::app::log::command as log_pb;
use shardray_proto::xray::app::proxyman::command as handler_pb;
use shardray_proto::xray::app::proxyman::ReceiverConfig;
use shardray_proto::xray::app::stats::command as stats_pb;
use shardray_proto::xray::common::net::{ip_or_domain, IpOrDomain, PortList, PortRange};
use shardray_proto::xray::core::InboundHandlerConfig;
use shardray_proto::xray::proxy::vless as vless_pb;
use shardray_tests::api::{self, ApiClient, Dial};
use shardray_tests::metrics::http_get;
use shardray_tests::{fixed_port, vless_config, wait_until, Shardray, ALICE};
use tonic::Code;

const READER: &str = "reader-token-0123456789abcdef0123456789";
const OPERATOR: &str = "operator-token-0123456789abcdef012345678";
const ADMIN: &str = "admin-token-0123456789abcdef0123456789ab";

// ---- certificates ----

type Issued = (rcgen::Certificate, rcgen::KeyPair);

fn ca(name: &str) -> Issued {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate().unwrap();
    (p.self_signed(&key).unwrap(), key)
}

fn leaf(issuer: &Issued, cn: &str, server: bool) -> Issued {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    if server {
        p.subject_alt_names = vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    } else {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    }
    let key = rcgen::KeyPair::generate().unwrap();
    (p.signed_by(&key, &issuer.0, &issuer.1).unwrap(), key)
}

/// A CA, the server's certificate (for 127.0.0.1) in `dir`, and client configs by subject.
struct Pki {
    dir: tempfile::TempDir,
    ca: Issued,
    server_ca: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("test API CA");
        let server = leaf(&ca, "api", true);
        std::fs::write(dir.path().join("ca.pem"), ca.0.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.0.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server.1.serialize_pem()).unwrap();
        let server_ca = ca.0.der().clone();
        Pki { dir, ca, server_ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `api.tls` with a reader, an operator and an admin subject, no default role.
    fn api_tls(&self) -> Value {
        json!({
            "certificateFile": self.path("server.pem"), "keyFile": self.path("server.key"),
            "clientCaFile": self.path("ca.pem"),
            "clients": [
                { "subject": "grafana", "role": "reader" },
                { "subject": "panel", "role": "operator" },
                { "subject": "ops", "role": "admin" }
            ]
        })
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.server_ca.clone()).unwrap();
        roots
    }

    fn builder(&self) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
    }

    /// A client showing a certificate for `cn` issued by `issuer` (this CA if `None`).
    fn client(&self, cn: &str, issuer: Option<&Issued>) -> Arc<rustls::ClientConfig> {
        let (cert, key) = leaf(issuer.unwrap_or(&self.ca), cn, false);
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut c = self.builder().with_client_auth_cert(vec![cert.der().clone()], key).unwrap();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    }

    fn client_without_certificate(&self) -> Arc<rustls::ClientConfig> {
        let mut c = self.builder().with_no_client_auth();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    }
}

// ---- calls ----

fn with<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// A call's code; a connection the server's TLS turned down fails the call as UNAVAILABLE or
/// (when the client had sent its request before the alert came) UNKNOWN or CANCELLED: all `NO_LINK`.
fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r.err().map(|s| s.code()) {
        None => Code::Ok,
        Some(Code::Unknown | Code::Unavailable | Code::Cancelled) => NO_LINK,
        Some(c) => c,
    }
}

const NO_LINK: Code = Code::Unavailable;

/// The four groups, each by one call: a stats read, a user add, an inbound add, a logger
/// restart.
fn four_calls(api: &ApiClient, token: Option<&str>, n: &mut u32) -> [Code; 4] {
    *n += 1;
    let mut stats = stats_pb::stats_service_client::StatsServiceClient::new(api.channel());
    let query = stats_pb::QueryStatsRequest { pattern: String::new(), reset: false, ..Default::default() };
    let read = code(api.block_on(stats.query_stats(with(query, token))));

    let id = format!("0a1b2c3d-0000-4000-8000-{:012x}", *n);
    let op = handler_pb::AddUserOperation { user: Some(api::vless_user(&format!("u{n}@example.com"), &id, 0)) };
    let alter = handler_pb::AlterInboundRequest {
        tag: "vless-in".into(),
        operation: Some(api::typed("xray.app.proxyman.command.AddUserOperation", &op)),
    };
    let mut handler = handler_pb::handler_service_client::HandlerServiceClient::new(api.channel());
    let user = code(api.block_on(handler.alter_inbound(with(alter, token))));

    let port = fixed_port();
    let receiver = ReceiverConfig {
        port_list: Some(PortList { range: vec![PortRange { from: port.into(), to: port.into() }] }),
        listen: Some(IpOrDomain { address: Some(ip_or_domain::Address::Ip(vec![127, 0, 0, 1])) }),
        ..Default::default()
    };
    let proxy = vless_pb::inbound::Config { decryption: "none".into(), ..Default::default() };
    let inbound = InboundHandlerConfig {
        tag: format!("added-{n}"),
        receiver_settings: Some(api::typed("xray.app.proxyman.ReceiverConfig", &receiver)),
        proxy_settings: Some(api::typed("xray.proxy.vless.inbound.Config", &proxy)),
    };
    let add = handler_pb::AddInboundRequest { inbound: Some(inbound) };
    let inbound = code(api.block_on(handler.add_inbound(with(add, token))));

    let mut logger = log_pb::logger_service_client::LoggerServiceClient::new(api.channel());
    let restart = code(api.block_on(logger.restart_logger(with(log_pb::RestartLoggerRequest {}, token))));
    [read, user, inbound, restart]
}

const OK: Code = Code::Ok;
const DENIED: Code = Code::PermissionDenied;
const UNAUTH: Code = Code::Unauthenticated;

/// What each role reaches: [stats read, user, inbound, logger].
fn reach(role: &str) -> [Code; 4] {
    match role {
        "reader" => [OK, DENIED, DENIED, DENIED],
        "operator" => [OK, OK, DENIED, DENIED],
        "admin" => [OK; 4],
        "none" => [DENIED; 4],
        other => unreachable!("{other}"),
    }
}

// ---- the matrix ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Listen {
    Loopback,
    Public,
    Unix,
    DokodemoLoopback,
    DokodemoPublic,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Credential {
    None,
    Token,
    Mtls,
}

fn config(listen: Listen, credential: Credential, pki: &Pki, socket: &Path) -> Value {
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({}));
    config["api"] = json!({ "tag": "api", "services": ["HandlerService", "StatsService", "LoggerService"] });
    let dokodemo = |ip: &str| {
        json!({ "tag": "api", "listen": ip, "port": fixed_port(), "protocol": "dokodemo-door",
                "settings": { "address": "127.0.0.1" } })
    };
    match listen {
        Listen::Loopback => config["api"]["listen"] = json!("127.0.0.1:0"),
        // Not loopback: every address of the machine, for as long as the test runs.
        Listen::Public => config["api"]["listen"] = json!("0.0.0.0:0"),
        Listen::Unix => config["api"]["listen"] = json!(socket),
        Listen::DokodemoLoopback => config["inbounds"].as_array_mut().unwrap().push(dokodemo("127.0.0.1")),
        Listen::DokodemoPublic => config["inbounds"].as_array_mut().unwrap().push(dokodemo("0.0.0.0")),
    }
    match credential {
        Credential::None => {}
        Credential::Token => {
            config["api"]["tokens"] = json!([
                { "name": "grafana", "token": READER, "role": "reader" },
                { "name": "panel", "token": OPERATOR, "role": "operator" },
                { "name": "ops", "token": ADMIN, "role": "admin" }
            ])
        }
        Credential::Mtls => config["api"]["tls"] = pki.api_tls(),
    }
    config
}

/// The refusal at start the README gives, or `None` when the server starts.
fn refusal(listen: Listen, credential: Credential) -> Option<&'static str> {
    match (listen, credential) {
        (Listen::Public, Credential::None) => Some("api.listen: the API listens on loopback or a Unix socket only"),
        (Listen::DokodemoPublic, Credential::None) => {
            Some("inbounds[1].listen: the API listens on loopback or a Unix socket only")
        }
        (Listen::Unix, Credential::Mtls) => Some("api.tls: a Unix-socket API has no TLS"),
        _ => None,
    }
}

#[test]
fn every_listen_credential_and_role_gets_what_the_readme_says() {
    let pki = Pki::new();
    let other_ca = ca("another CA");
    let listens = [Listen::Loopback, Listen::Public, Listen::Unix, Listen::DokodemoLoopback, Listen::DokodemoPublic];
    let credentials = [Credential::None, Credential::Token, Credential::Mtls];
    let mut n = 0;
    let mut rows = 0;
    for listen in listens {
        for credential in credentials {
            let sockdir = tempfile::tempdir().unwrap();
            let socket = sockdir.path().join("api.sock");
            let config = config(listen, credential, &pki, &socket);
            let started = Shardray::try_start(&config, 2);
            let case = format!("{listen:?} × {credential:?}");
            if let Some(reason) = refusal(listen, credential) {
                let out = started.err().unwrap_or_else(|| panic!("{case}: started, but should be refused"));
                assert!(out.contains(reason), "{case}: {out}");
                rows += 1;
                continue;
            }
            let server = started.unwrap_or_else(|out| panic!("{case}: did not start:\n{out}"));
            let addr: Option<SocketAddr> = server.api.map(|a| {
                // A wildcard listen is dialled on loopback.
                if a.ip().is_unspecified() {
                    SocketAddr::from(([127, 0, 0, 1], a.port()))
                } else {
                    a
                }
            });
            let dial = |tls: Option<Arc<rustls::ClientConfig>>| match (listen, tls) {
                (Listen::Unix, _) => Dial::Unix(socket.clone()),
                (_, Some(c)) => Dial::Tls(addr.unwrap(), c),
                (_, None) => Dial::Tcp(addr.unwrap()),
            };
            // (who calls, how, what the four calls get)
            let callers: Vec<(&str, ApiClient, Option<&str>, [Code; 4])> = match credential {
                Credential::None => vec![("anyone", ApiClient::lazy(dial(None)), None, [OK; 4])],
                Credential::Token => vec![
                    ("no token", ApiClient::lazy(dial(None)), None, [UNAUTH; 4]),
                    ("a wrong token", ApiClient::lazy(dial(None)), Some("x".repeat(40).leak()), [UNAUTH; 4]),
                    ("reader", ApiClient::lazy(dial(None)), Some(READER), reach("reader")),
                    ("operator", ApiClient::lazy(dial(None)), Some(OPERATOR), reach("operator")),
                    ("admin", ApiClient::lazy(dial(None)), Some(ADMIN), reach("admin")),
                ],
                Credential::Mtls => vec![
                    ("plain TCP", ApiClient::lazy(dial(None)), None, [Code::Unavailable; 4]),
                    (
                        "no certificate",
                        ApiClient::lazy(dial(Some(pki.client_without_certificate()))),
                        None,
                        [Code::Unavailable; 4],
                    ),
                    (
                        "another CA",
                        ApiClient::lazy(dial(Some(pki.client("ops", Some(&other_ca))))),
                        None,
                        [Code::Unavailable; 4],
                    ),
                    (
                        "a subject without role",
                        ApiClient::lazy(dial(Some(pki.client("stranger", None)))),
                        None,
                        reach("none"),
                    ),
                    ("reader", ApiClient::lazy(dial(Some(pki.client("grafana", None)))), None, reach("reader")),
                    ("operator", ApiClient::lazy(dial(Some(pki.client("panel", None)))), None, reach("operator")),
                    ("admin", ApiClient::lazy(dial(Some(pki.client("ops", None)))), None, reach("admin")),
                ],
            };
            for (who, client, token, want) in callers {
                let got = four_calls(&client, token, &mut n);
                assert_eq!(got, want, "{case}, {who}: [stats read, user add, inbound add, logger restart]");
                rows += 1;
            }
            drop(server);
        }
    }
    // Refused: 3; without credentials: 3 listens × 1 caller; tokens: 5 × 5; mTLS: 4 × 7.
    assert_eq!(rows, 3 + 3 + 5 * 5 + 4 * 7, "every row ran");
}

#[test]
fn tokens_and_certificates_together_need_both_and_the_lower_role_wins() {
    let pki = Pki::new();
    let sockdir = tempfile::tempdir().unwrap();
    let mut config = config(Listen::Loopback, Credential::Token, &pki, &sockdir.path().join("x"));
    config["api"]["tls"] = pki.api_tls();
    let server = Shardray::start(&config, 1);
    let addr = server.api.unwrap();
    let mut n = 0;
    let ops = ApiClient::lazy(Dial::Tls(addr, pki.client("ops", None)));
    assert_eq!(four_calls(&ops, None, &mut n), [UNAUTH; 4], "a certificate alone");
    assert_eq!(four_calls(&ops, Some(READER), &mut n), reach("reader"), "admin certificate, reader token");
    let panel = ApiClient::lazy(Dial::Tls(addr, pki.client("panel", None)));
    assert_eq!(four_calls(&panel, Some(ADMIN), &mut n), reach("operator"), "operator certificate, admin token");
    assert_eq!(four_calls(&ApiClient::lazy(Dial::Tcp(addr)), Some(ADMIN), &mut n), [Code::Unavailable; 4], "no TLS");
    // The refusal names both.
    let mut handler = handler_pb::handler_service_client::HandlerServiceClient::new(panel.channel());
    let err = panel
        .block_on(handler.remove_inbound(with(handler_pb::RemoveInboundRequest { tag: "x".into() }, Some(ADMIN))))
        .unwrap_err();
    assert!(err.message().contains("token \"ops\" over certificate \"panel\" (operator) may not"), "{err:?}");
}

#[test]
fn a_default_role_covers_the_subjects_no_client_names() {
    let pki = Pki::new();
    let sockdir = tempfile::tempdir().unwrap();
    let mut config = config(Listen::Loopback, Credential::Mtls, &pki, &sockdir.path().join("x"));
    config["api"]["tls"]["defaultRole"] = json!("reader");
    let server = Shardray::start(&config, 1);
    let mut n = 0;
    let stranger = ApiClient::lazy(Dial::Tls(server.api.unwrap(), pki.client("stranger", None)));
    assert_eq!(four_calls(&stranger, None, &mut n), reach("reader"));
    let panel = ApiClient::lazy(Dial::Tls(server.api.unwrap(), pki.client("panel", None)));
    assert_eq!(four_calls(&panel, None, &mut n), reach("operator"));
}

#[test]
fn bad_tls_files_are_config_errors_naming_their_key() {
    let pki = Pki::new();
    let sockdir = tempfile::tempdir().unwrap();
    let good = config(Listen::Loopback, Credential::Mtls, &pki, &sockdir.path().join("x"));
    std::fs::write(pki.path("junk.pem"), "not a certificate\n").unwrap();
    for (key, file, reason) in [
        ("certificateFile", "missing.pem", "No such file"),
        ("certificateFile", "junk.pem", "no PEM certificate found"),
        ("keyFile", "junk.pem", "no PEM private key found"),
        ("keyFile", "ca.pem", "no PEM private key found"),
        ("clientCaFile", "missing.pem", "No such file"),
        ("clientCaFile", "junk.pem", "no PEM certificate found"),
    ] {
        let mut bad = good.clone();
        bad["api"]["tls"][key] = json!(pki.path(file));
        let out = Shardray::try_start(&bad, 1).err().unwrap_or_else(|| panic!("{key} = {file}: started"));
        assert!(out.contains(&format!("api.tls.{key}")) && out.contains(reason), "{key} = {file}: {out}");
    }
    // A key that is not the certificate's.
    let other = leaf(&pki.ca, "other", true);
    std::fs::write(pki.path("other.key"), other.1.serialize_pem()).unwrap();
    let mut bad = good.clone();
    bad["api"]["tls"]["keyFile"] = json!(pki.path("other.key"));
    let out = Shardray::try_start(&bad, 1).err().expect("a mismatched key starts");
    assert!(out.contains("api.tls.keyFile"), "{out}");
    let mut bad = good.clone();
    bad["api"]["tls"]["clients"] = json!([{ "subject": "panel", "role": "root" }]);
    let out = Shardray::try_start(&bad, 1).err().expect("an unknown role starts");
    assert!(out.contains("api.tls.clients[0].role: unknown role \"root\""), "{out}");
}

/// The value of one sample line in a Prometheus scrape.
fn sample(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
}

#[test]
fn calls_past_a_callers_bucket_are_resource_exhausted_audited_counted_and_refill() {
    let pki = Pki::new();
    let sockdir = tempfile::tempdir().unwrap();
    let mut config = config(Listen::Loopback, Credential::Token, &pki, &sockdir.path().join("x"));
    config["api"]["callLimit"] = json!({ "rate": 0.25, "burst": 10 });
    config["metrics"] = json!({ "tag": "metrics", "listen": "127.0.0.1:0" });
    let server = Shardray::start(&config, 1);
    let api = ApiClient::lazy(Dial::Tcp(server.api.unwrap()));
    let query = |token: &str| {
        let mut stats = stats_pb::stats_service_client::StatsServiceClient::new(api.channel());
        code(api.block_on(stats.query_stats(with(stats_pb::QueryStatsRequest::default(), Some(token)))))
    };
    let burst: Vec<Code> = (0..12).map(|_| query(READER)).collect();
    assert_eq!(&burst[..10], &[OK; 10], "{burst:?}");
    assert_eq!(&burst[10..], &[Code::ResourceExhausted; 2], "{burst:?}");
    // Each caller has its own bucket.
    assert_eq!(query(OPERATOR), OK);
    // A call every 4 s: one more after 4 s, not two.
    std::thread::sleep(Duration::from_millis(4100));
    assert_eq!(query(READER), OK);
    assert_eq!(query(READER), Code::ResourceExhausted);

    let out = || server.output();
    assert!(
        wait_until(Duration::from_secs(5), || out()
            .contains("refused (token \"grafana\"): ResourceExhausted: token \"grafana\" is past api.callLimit")),
        "{}",
        out()
    );
    let (status, text) = http_get(server.metrics.unwrap(), "/metrics").unwrap();
    assert_eq!(status, 200);
    let exhausted = sample(
        &text,
        "shardray_api_requests_total{method=\"xray.app.stats.command.StatsService/QueryStats\",code=\"ResourceExhausted\"}",
    );
    assert_eq!(exhausted, 3.0, "{text}");
}

#[test]
fn a_streaming_call_counts_once_at_its_start() {
    let pki = Pki::new();
    let sockdir = tempfile::tempdir().unwrap();
    let mut config = config(Listen::Loopback, Credential::None, &pki, &sockdir.path().join("x"));
    config["api"]["callLimit"] = json!({ "rate": 0.001, "burst": 2 });
    let server = Shardray::start(&config, 1);
    let api = ApiClient::lazy(Dial::Tcp(server.api.unwrap()));
    let mut logger = log_pb::logger_service_client::LoggerServiceClient::new(api.channel());
    let follow = log_pb::FollowLogRequest::default();
    let mut stream = api.block_on(logger.follow_log(follow)).expect("a stream").into_inner();
    // Of the burst of two, the open stream took one: one call is left, then none.
    let mut stats = stats_pb::stats_service_client::StatsServiceClient::new(api.channel());
    let get = || stats_pb::GetStatsRequest { name: "inbound>>>vless-in>>>traffic>>>uplink".into(), reset: false };
    assert_ne!(code(api.block_on(stats.clone().get_stats(get()))), Code::ResourceExhausted);
    let _ = api.block_on(async { tokio::time::timeout(Duration::from_millis(300), stream.message()).await });
    assert_eq!(code(api.block_on(stats.get_stats(get()))), Code::ResourceExhausted);
    let third = api.block_on(logger.follow_log(follow));
    assert_eq!(code(third), Code::ResourceExhausted);
}

/// The README's mutual-TLS setup, run as written (its port swapped for a free one) with the
/// binary on PATH: openssl makes the certificates, the node starts, the panel's calls answer.
#[test]
fn the_readmes_mutual_tls_setup_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = &readme[readme.find("#### Remote access over mutual TLS").expect("the section")..];
    let start = section.find("```bash\n").expect("its bash block") + "```bash\n".len();
    let script = &section[start..start + section[start..].find("\n```").unwrap()];
    let script = script.replace("10085", &fixed_port().to_string());
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = shardray_tests::bin_path().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    // Whatever happens, the node the script started goes with it.
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null' EXIT\nset -e\n{script}");
    let out = std::process::Command::new("timeout")
        .args(["60", "bash", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("SHARDRAY_API")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("refused>>>api_address"), "statsquery answered: {text}");
    assert!(text.contains("shardray: api listening on 0.0.0.0:"), "{text}");
}

/// The CLI's side: without a certificate it is turned down and told what to give; with one of
/// the CA it gets its role; half the flags are an input error.
#[test]
fn the_cli_speaks_mutual_tls_and_says_what_is_missing() {
    let pki = Pki::new();
    let sockdir = tempfile::tempdir().unwrap();
    let server = Shardray::start(&config(Listen::Public, Credential::Mtls, &pki, &sockdir.path().join("x")), 1);
    let addr = format!("127.0.0.1:{}", server.api.unwrap().port());
    let (cert, key) = leaf(&pki.ca, "panel", false);
    std::fs::write(pki.path("panel.pem"), cert.pem()).unwrap();
    std::fs::write(pki.path("panel.key"), key.serialize_pem()).unwrap();
    let (ca, cert, key) = (pki.path("ca.pem"), pki.path("panel.pem"), pki.path("panel.key"));
    let tls =
        ["--tls-ca", ca.to_str().unwrap(), "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];

    let (status, out) = shardray_tests::run_cli(&["api", "statsquery", "-s", &addr]);
    assert!(!status.success() && out.contains("give --tls-ca, --tls-cert and --tls-key"), "{out}");
    let (status, out) = shardray_tests::run_cli(&[&["api", "statsquery", "-s", &addr][..], &tls].concat());
    assert!(status.success() && out.contains("refused>>>api_address"), "{out}");
    // An operator: users yes, inbounds no.
    let (status, out) = shardray_tests::run_cli(&[&["api", "rmi", "-s", &addr][..], &tls, &["nope"]].concat());
    assert!(!status.success() && out.contains("certificate \"panel\" (operator) may not"), "{out}");
    // The certificate names 127.0.0.1 only.
    let (status, out) = shardray_tests::run_cli(
        &[&["api", "statsquery", "-s", &addr, "--tls-server-name", "other.example"][..], &tls].concat(),
    );
    assert!(!status.success() && out.contains("not valid for name"), "{out}");
    let (status, out) = shardray_tests::run_cli(&["api", "statsquery", "-s", &addr, "--tls-ca", ca.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("mutual TLS needs all of --tls-ca, --tls-cert and --tls-key"), "{out}");
}
