//! REALITY (`security: "reality"`) on a VLESS inbound, the real binary with two shards: shoes
//! 0.3.2 as the REALITY client carries several MiB both ways; a plain TLS prober with a
//! served name gets the target's own certificate; a wrong key, a wrong short id, an unlisted
//! name, garbage and a replayed ClientHello all reach the target, byte for byte.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::echo::exchange;
use shardray_tests::inner_tls::{inner_tls_over, tls13_echo};
use shardray_tests::servers::EchoServer;
use shardray_tests::shoes::{RealityClient, Shoes};
use shardray_tests::singbox::socks5_connect;
use shardray_tests::tls::SelfSigned;
use shardray_tests::{reality_keys, run_cli, vless_config, wait_until, Shardray, ALICE};

const SNI: &str = "reality.test";
const SHORT_ID: &str = "6ba85179e30d4fc2";

/// The local TLS site standing in for the camouflage target: its own certificate for `SNI`;
/// it records each connection's first bytes (peeked before its TLS handshake), then answers
/// a completed handshake with `target says hi`.
struct Target {
    addr: SocketAddr,
    cert: rustls::pki_types::CertificateDer<'static>,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    _dir: tempfile::TempDir,
}

impl Target {
    fn start() -> Target {
        let dir = tempfile::tempdir().unwrap();
        let cert = SelfSigned::generate(dir.path(), &[SNI]);
        let chain = vec![cert.cert_der.clone()];
        let key = cert.key_der();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let config = config.clone();
                let record = record.clone();
                std::thread::spawn(move || {
                    // Whatever arrives within a moment (perhaps nothing), for the test to compare.
                    conn.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                    let mut first = vec![0u8; 8192];
                    let n = conn.peek(&mut first).unwrap_or(0);
                    first.truncate(n);
                    record.lock().unwrap().push(first);
                    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut tls = rustls::ServerConnection::new(config).unwrap();
                    while tls.is_handshaking() {
                        if tls.complete_io(&mut conn).is_err() {
                            return;
                        }
                    }
                    let mut s = rustls::StreamOwned::new(tls, conn);
                    let _ = s.write_all(b"target says hi");
                    s.conn.send_close_notify();
                    let _ = s.flush();
                });
            }
        });
        Target { addr, cert: cert.cert_der, seen, _dir: dir }
    }

    fn seen(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }
}

/// The REALITY stream settings for `target`, serving `SNI` and `SHORT_ID` with `private_key`.
fn reality_stream(target: SocketAddr, private_key: &str) -> Value {
    json!({
        "network": "raw",
        "security": "reality",
        "realitySettings": {
            "show": true,
            "target": target.to_string(),
            "serverNames": [SNI],
            "privateKey": private_key,
            "shortIds": ["", SHORT_ID],
            "maxTimeDiff": 60000,
            // What panels write for clients: ignored on an inbound.
            "settings": { "publicKey": "x", "fingerprint": "chrome", "spiderX": "/" }
        }
    })
}

fn server(target: &Target, private_key: &str) -> Shardray {
    let mut config = vless_config(
        json!([{ "id": ALICE, "email": "alice@example.com" }]),
        json!({ "streamSettings": reality_stream(target.addr, private_key) }),
    );
    // The refusals' reasons are logged at Info.
    config["log"]["loglevel"] = json!("info");
    Shardray::start(&config, 2)
}

fn payload(len: usize) -> Vec<u8> {
    // Never ends in 0x16: shoes's Vision may hold such a final byte back (its own TODO).
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add((i >> 9) as u8) | 1).collect()
}

#[test]
fn shoes_carries_vless_over_reality_both_ways() {
    let target = Target::start();
    let (private, public) = reality_keys();
    let server = server(&target, &private);
    let echo = EchoServer::start();
    let shoes = Shoes::reality_client(
        server.inbound("vless-in"),
        &RealityClient { public_key: &public, short_id: SHORT_ID, sni: SNI, uuid: ALICE, vision: false, trojan: None },
    );
    // Several sessions, one of several MiB, spread over both shards by the kernel.
    for len in [1, 1000, 70_000, 4 << 20] {
        let data = payload(len);
        let stream = socks5_connect(shoes.socks, echo.addr()).unwrap_or_else(|e| {
            panic!("socks via shoes: {e}\nshoes:\n{}\nshardray:\n{}", shoes.log(), server.output())
        });
        let got = exchange(stream, &data).unwrap_or_else(|e| panic!("{len} bytes: {e}\n{}", shoes.log()));
        assert!(got == data, "{len} bytes came back different");
    }
    // Authenticated sessions never reach the target.
    assert!(target.seen().is_empty(), "the target saw {} connections", target.seen().len());
    assert!(server.output().contains("REALITY client 1.8.0, short id 6ba85179e30d4fc2"), "{}", server.output());
}

// XTLS Vision over REALITY (`flow: "xtls-rprx-vision"`, shoes `vision: true`) goes here once the
// VLESS inbound serves the flow (built on the vision branch): the same round trips with the
// client's `flow` set and `RealityClient { vision: true, .. }`.
#[test]
fn shoes_carries_vless_vision_over_reality_both_ways() {
    let target = Target::start();
    let (private, public) = reality_keys();
    let config = vless_config(
        json!([{ "id": ALICE, "email": "alice@example.com", "flow": "xtls-rprx-vision" }]),
        json!({ "streamSettings": reality_stream(target.addr, &private) }),
    );
    let server = Shardray::start(&config, 2);
    let echo = EchoServer::start();
    let shoes = Shoes::reality_client(
        server.inbound("vless-in"),
        &RealityClient { public_key: &public, short_id: SHORT_ID, sni: SNI, uuid: ALICE, vision: true, trojan: None },
    );
    for len in [1, 70_000, 4 << 20] {
        let data = payload(len);
        let stream = socks5_connect(shoes.socks, echo.addr()).unwrap();
        assert!(exchange(stream, &data).unwrap() == data, "{len} bytes came back different");
    }
}

#[test]
fn a_tls_prober_with_a_served_name_meets_the_target_itself() {
    let target = Target::start();
    let (private, _) = reality_keys();
    let server = server(&target, &private);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(target.cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let probe = |addr: SocketAddr| {
        let mut tls = shardray_tests::tls::connect(addr, config.clone(), SNI).expect("TLS to the target's certificate");
        let cert = tls.conn.peer_certificates().unwrap()[0].clone();
        let mut said = Vec::new();
        let _ = tls.read_to_end(&mut said);
        (cert, said)
    };
    let direct = probe(target.addr);
    let through = probe(server.inbound("vless-in"));
    assert_eq!(through.0, target.cert, "the prober did not get the target's certificate");
    assert_eq!(through, direct, "through shardray differs from the target itself");
    assert_eq!(through.1, b"target says hi");
    assert!(server.output().contains("rejected reality: session id does not open"), "{}", server.output());
}

#[test]
fn wrong_keys_short_ids_names_and_garbage_go_to_the_target() {
    let target = Target::start();
    let (private, public) = reality_keys();
    let (_, other_public) = reality_keys();
    let server = server(&target, &private);
    let addr = server.inbound("vless-in");
    let echo = EchoServer::start();
    let cases = [
        ("wrong key", other_public.as_str(), SHORT_ID, SNI),
        ("wrong short id", public.as_str(), "0011223344556677", SNI),
        ("unlisted name", public.as_str(), SHORT_ID, "elsewhere.test"),
    ];
    for (i, (what, pbk, sid, sni)) in cases.into_iter().enumerate() {
        let shoes = Shoes::reality_client(
            addr,
            &RealityClient { public_key: pbk, short_id: sid, sni, uuid: ALICE, vision: false, trojan: None },
        );
        // shoes finds the target's certificate, not ours, and gives up.
        let worked = socks5_connect(shoes.socks, echo.addr()).and_then(|s| exchange(s, b"hello"));
        assert!(!matches!(&worked, Ok(b) if b == b"hello"), "{what}: the session went through");
        assert!(wait_until(Duration::from_secs(5), || target.seen().len() == i + 1), "{what}: the target saw nothing");
        let hello = &target.seen()[i];
        assert!(hello.len() > 5 && hello[..2] == [0x16, 3] && hello[5] == 1, "{what}: the target got no ClientHello");
    }
    let log = server.output();
    assert!(log.contains("rejected reality: session id does not open"), "{log}");
    assert!(log.contains("rejected reality: short id not listed"), "{log}");
    assert!(log.contains("rejected reality: server name not listed (server name \"elsewhere.test\")"), "{log}");

    // Not TLS at all: the target gets the very bytes.
    let garbage = b"GET / HTTP/1.1\r\nHost: reality.test\r\n\r\n".to_vec();
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(&garbage).unwrap();
    assert!(wait_until(Duration::from_secs(5), || target.seen().len() == 4), "garbage did not reach the target");
    assert_eq!(target.seen()[3], garbage);
    let _ = raw.shutdown(Shutdown::Both);
    assert!(server.output().contains("rejected reality: not a TLS handshake"), "{}", server.output());
}

/// Copies both ways between a client and `upstream`, keeping what the client sent first.
fn recording_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let firsts = Arc::new(Mutex::new(Vec::new()));
    let record = firsts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            let record = record.clone();
            std::thread::spawn(move || {
                let Ok(mut up) = TcpStream::connect(upstream) else { return };
                let mut first = vec![0u8; 16 * 1024];
                let Ok(n) = client.read(&mut first) else { return };
                first.truncate(n);
                record.lock().unwrap().push(first.clone());
                if up.write_all(&first).is_err() {
                    return;
                }
                let (mut c2, mut u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut c2);
                    let _ = c2.shutdown(Shutdown::Write);
                });
                let _ = std::io::copy(&mut client, &mut up);
                let _ = up.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, firsts)
}

#[test]
fn a_replayed_client_hello_meets_the_target() {
    let target = Target::start();
    let (private, public) = reality_keys();
    let server = server(&target, &private);
    let (proxy, firsts) = recording_proxy(server.inbound("vless-in"));
    let echo = EchoServer::start();
    let shoes = Shoes::reality_client(
        proxy,
        &RealityClient { public_key: &public, short_id: SHORT_ID, sni: SNI, uuid: ALICE, vision: false, trojan: None },
    );
    let stream = socks5_connect(shoes.socks, echo.addr()).unwrap();
    assert_eq!(exchange(stream, b"first and only").unwrap(), b"first and only");
    assert!(target.seen().is_empty());
    let hello = firsts.lock().unwrap()[0].clone();
    assert_eq!(hello[0], 0x16);
    // The same ClientHello again, on a new connection (to any shard).
    let mut replay = TcpStream::connect(server.inbound("vless-in")).unwrap();
    replay.write_all(&hello).unwrap();
    assert!(wait_until(Duration::from_secs(5), || target.seen().len() == 1), "the replay did not reach the target");
    assert_eq!(target.seen()[0], hello);
    assert!(server.output().contains("rejected reality: replayed ClientHello"), "{}", server.output());
}

#[test]
fn links_carry_the_reality_parameters() {
    let (private, public) = reality_keys();
    let dir = tempfile::tempdir().unwrap();
    let mut config = vless_config(
        json!([{ "id": ALICE, "email": "alice@example.com" }]),
        json!({ "streamSettings": reality_stream("127.0.0.1:8443".parse().unwrap(), &private) }),
    );
    config["inbounds"][0]["port"] = json!(443);
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let (status, out) = run_cli(&["link", "-c", path.to_str().unwrap(), "--host", "proxy.example"]);
    assert!(status.success(), "{out}");
    let link = out.lines().find(|l| l.starts_with("vless://")).unwrap();
    assert_eq!(
        link,
        format!(
            "vless://{ALICE}@proxy.example:443?encryption=none&security=reality&pbk={public}&sid=&sni={SNI}&fp=chrome&spx=%2F&type=tcp#alice%40example.com"
        )
    );
    // `-i` derives the same public key from the private one.
    let (status, out) = run_cli(&["x25519", "-i", &private]);
    assert!(status.success());
    assert!(out.contains(&format!("Password (PublicKey): {public}")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("Hash32: ")), "{out}");
    // Standard base64 in and out (Go's single-dash flag spelling too).
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&private).unwrap();
    let std_private = base64::engine::general_purpose::STANDARD.encode(&raw);
    let std_public = base64::engine::general_purpose::STANDARD
        .encode(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&public).unwrap());
    let (status, out) = run_cli(&["x25519", "-std-encoding", "-i", &std_private]);
    assert!(status.success(), "{out}");
    assert!(out.contains(&format!("PrivateKey: {std_private}\nPassword (PublicKey): {std_public}\n")), "{out}");
    // A key that starts with '-' (one in 64 do) is still the value of -i.
    let dashed = "-A9uNf9Ho9w-mL4fa5tMLrDXsOUbR-Te4BoQtxu9bHc";
    let (status, out) = run_cli(&["x25519", "-i", dashed]);
    assert!(status.success() && out.starts_with("PrivateKey: "), "{out}");
    let (status, out) = run_cli(&["x25519", "-i", "tooshort"]);
    assert!(!status.success());
    assert!(out.contains("Invalid length of X25519 private key."), "{out}");
}

/// The README's REALITY section as written: its key pair is what `x25519 -i` prints, its
/// inbound loads, and its link is what `shardray link` prints for it.
#[test]
fn the_readme_example_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("### REALITY\n").nth(1).unwrap().split("\n### ").next().unwrap();
    let blocks: Vec<&str> = section.split("```").skip(1).step_by(2).collect();
    let body = |b: &str| b.split_once('\n').map(|(_, rest)| rest.trim().to_owned()).unwrap();
    let (keys, inbound, link) = (body(blocks[1]), body(blocks[2]), body(blocks[3]));
    let private = keys.lines().next().unwrap().strip_prefix("PrivateKey: ").unwrap();
    let (status, out) = run_cli(&["x25519", "-i", private]);
    assert!(status.success(), "{out}");
    assert_eq!(out.trim(), keys);

    let inbound: Value = serde_json::from_str(&inbound).expect("the README's inbound is JSON");
    let config = json!({ "inbounds": [inbound], "outbounds": [{ "protocol": "freedom" }] });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let (status, out) = run_cli(&["test", "-c", path.to_str().unwrap()]);
    assert!(status.success() && out.contains("Configuration OK."), "{out}");
    let (status, out) = run_cli(&["link", "-c", path.to_str().unwrap(), "--host", "proxy.example"]);
    assert!(status.success(), "{out}");
    assert_eq!(out.trim(), link);
}

/// AddInbound (`shardray api adi`) with a Trojan inbound over REALITY: Xray's REALITY message
/// on the wire, the same checks and behaviour as in a config; shoes as the Trojan client.
#[test]
fn an_inbound_added_through_the_api_serves_trojan_over_reality() {
    let target = Target::start();
    let (private, public) = reality_keys();
    let (server, _api) = shardray_tests::api_server();
    let port = shardray_tests::fixed_port();
    let file = server.dir.path().join("more.json");
    let more = json!({ "inbounds": [{
        "tag": "trojan-reality", "listen": "127.0.0.1", "port": port, "protocol": "trojan",
        "settings": { "clients": [{ "password": "over reality", "email": "carol@example.com" }] },
        "streamSettings": reality_stream(target.addr, &private)
    }]});
    std::fs::write(&file, serde_json::to_vec(&more).unwrap()).unwrap();
    let api_addr = format!("--server={}", server.api.unwrap());
    let (status, out) = run_cli(&["api", "adi", &api_addr, file.to_str().unwrap()]);
    assert!(status.success(), "{out}");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let echo = EchoServer::start();
    let client = RealityClient {
        public_key: &public,
        short_id: SHORT_ID,
        sni: SNI,
        uuid: ALICE,
        vision: false,
        trojan: Some("over reality"),
    };
    let shoes = Shoes::reality_client(addr, &client);
    let data = payload(1 << 20);
    let stream = socks5_connect(shoes.socks, echo.addr()).unwrap_or_else(|e| panic!("{e}\n{}", shoes.log()));
    assert!(exchange(stream, &data).unwrap() == data, "1 MiB came back different");
    assert!(target.seen().is_empty());
    // A plain TLS prober still meets the target.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(b"not tls").unwrap();
    assert!(wait_until(Duration::from_secs(5), || target.seen().len() == 1));
    assert_eq!(target.seen()[0], b"not tls");
}

/// A ClientHello cut short, and a client that sends nothing: each waits out the handshake
/// timeout, then meets the target with what it sent; both count as refusals.
#[test]
fn truncated_and_silent_hellos_meet_the_target_after_the_handshake_timeout() {
    let target = Target::start();
    let (private, _) = reality_keys();
    let mut config = vless_config(
        json!([{ "id": ALICE, "email": "alice@example.com" }]),
        json!({ "streamSettings": reality_stream(target.addr, &private) }),
    );
    config["policy"]["levels"]["0"]["handshake"] = json!(1);
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    let server = Shardray::start(&config, 2);
    let addr = server.inbound("vless-in");
    let started = std::time::Instant::now();
    // A record that promises 512 bytes and brings 40 of a ClientHello.
    let mut cut = vec![0x16, 3, 1, 2, 0, 1, 0, 1, 0xfc, 3, 3];
    cut.extend_from_slice(&[0x42; 29]);
    let mut truncated = TcpStream::connect(addr).unwrap();
    truncated.write_all(&cut).unwrap();
    let _silent = TcpStream::connect(addr).unwrap();
    assert!(wait_until(Duration::from_secs(5), || target.seen().len() == 2), "{}", server.output());
    assert!(started.elapsed() >= Duration::from_millis(900), "relayed before the timeout");
    let mut seen = target.seen();
    seen.sort();
    assert_eq!(seen, vec![Vec::new(), cut]);
    let api = shardray_tests::api::ApiClient::connect(server.api.unwrap());
    assert!(wait_until(Duration::from_secs(2), || api.get("refused>>>bad_request", false).ok() == Some(2)));
    assert!(server.output().contains("rejected reality: no ClientHello within the handshake timeout"));
    assert!(!server.output().contains("panicked"));
}

/// Vision over REALITY with inner TLS 1.3: the session goes direct both ways (the outer TLS
/// left behind), 4 MiB echoed byte for byte through shoes.
#[test]
fn vision_over_reality_goes_direct_both_ways() {
    let target = Target::start();
    let (private, public) = reality_keys();
    let mut config = vless_config(
        json!([{ "id": ALICE, "email": "alice@example.com", "flow": "xtls-rprx-vision" }]),
        json!({ "streamSettings": reality_stream(target.addr, &private) }),
    );
    config["log"]["loglevel"] = json!("debug");
    let server = Shardray::start(&config, 2);
    let shoes = Shoes::reality_client(
        server.inbound("vless-in"),
        &RealityClient { public_key: &public, short_id: SHORT_ID, sni: SNI, uuid: ALICE, vision: true, trojan: None },
    );
    let (echo, tls) = tls13_echo();
    let data = payload(4 << 20);
    let sock = socks5_connect(shoes.socks, echo).unwrap();
    let got = inner_tls_over(sock, tls, data.clone())
        .unwrap_or_else(|e| panic!("{e}\nshoes:\n{}\nshardray:\n{}", shoes.log(), server.output()));
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
    assert!(
        wait_until(Duration::from_secs(5), || server.output().contains("(direct up: true, down: true)")),
        "the session did not go direct:\n{}",
        server.output()
    );
    assert!(target.seen().is_empty());
}

/// A Unix socket as the target, with `xver: 1`: the target gets a PROXY header naming the
/// client, then the client's bytes.
#[test]
fn a_unix_socket_target_gets_a_proxy_header_first() {
    use std::os::unix::net::UnixListener;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let _ = conn.read_to_end(&mut got);
                let _ = tx.send(got);
            });
        }
    });
    let (private, _) = reality_keys();
    let mut stream = reality_stream("127.0.0.1:1".parse().unwrap(), &private);
    stream["realitySettings"]["target"] = json!(path.to_str().unwrap());
    stream["realitySettings"]["xver"] = json!(1);
    let config =
        vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({ "streamSettings": stream }));
    let server = Shardray::start(&config, 2);
    let addr = server.inbound("vless-in");
    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(b"hello, site").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(5)).expect("the target got nothing");
    let local = client.local_addr().unwrap();
    let header = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n", local.port(), addr.port());
    assert_eq!(String::from_utf8_lossy(&got), format!("{header}hello, site"));
}

/// A ClientHello shaped like uTLS's Chrome (GREASE, an X25519MLKEM768 share before the X25519
/// one, no ed25519 among the signature schemes), sealed for the server as a REALITY client
/// seals it: the server answers with its own ServerHello (X25519, the session id echoed) and
/// the target sees nothing.
#[test]
fn a_chrome_shaped_hello_with_a_hybrid_share_authenticates() {
    use base64::Engine;
    use shardray_wire::reality;
    let target = Target::start();
    let (private, public) = reality_keys();
    let server = server(&target, &private);
    let server_public: [u8; 32] =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&public).unwrap().try_into().unwrap();
    let client_private = reality::clamp([0x5a; 32]);
    let client_public = reality::public_key(&client_private);
    let random: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let auth = reality::auth_key(&client_private, &server_public, &random).unwrap();

    let ext = |kind: u16, body: &[u8]| {
        let mut e = kind.to_be_bytes().to_vec();
        e.extend_from_slice(&(body.len() as u16).to_be_bytes());
        e.extend_from_slice(body);
        e
    };
    let with_len16 = |body: &[u8]| {
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    };
    let mut exts = ext(0x0a0a, &[]);
    let mut sni = vec![0];
    sni.extend_from_slice(&with_len16(SNI.as_bytes()));
    exts.extend(ext(0, &with_len16(&sni)));
    exts.extend(ext(23, &[]));
    exts.extend(ext(0xff01, &[0]));
    exts.extend(ext(10, &with_len16(&[0x2a, 0x2a, 0x11, 0xec, 0, 0x1d, 0, 0x17, 0, 0x18])));
    exts.extend(ext(11, &[1, 0]));
    exts.extend(ext(35, &[]));
    exts.extend(ext(16, &with_len16(b"\x02h2\x08http/1.1")));
    exts.extend(ext(5, &[1, 0, 0, 0, 0]));
    exts.extend(ext(13, &with_len16(&[4, 3, 8, 4, 4, 1, 5, 3, 8, 5, 5, 1, 8, 6, 6, 1])));
    exts.extend(ext(18, &[]));
    let mut shares = vec![0x2a, 0x2a, 0, 1, 0];
    shares.extend_from_slice(&[0x11, 0xec, 0x04, 0xc0]);
    shares.extend_from_slice(&[0x33; 1184]);
    shares.extend_from_slice(&client_public);
    shares.extend_from_slice(&[0, 0x1d, 0, 32]);
    shares.extend_from_slice(&client_public);
    exts.extend(ext(51, &with_len16(&shares)));
    exts.extend(ext(45, &[1, 1]));
    exts.extend(ext(43, &[6, 0x3a, 0x3a, 3, 4, 3, 3]));
    exts.extend(ext(27, &[2, 0, 2]));
    exts.extend(ext(0x1a1a, &[0]));
    let mut body = vec![3, 3];
    body.extend_from_slice(&random);
    body.push(32);
    body.extend_from_slice(&[0; 32]);
    body.extend_from_slice(&with_len16(&[0x4a, 0x4a, 0x13, 1, 0x13, 2, 0x13, 3, 0xc0, 0x2b, 0xc0, 0x2f]));
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&with_len16(&exts));
    let mut hello = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    hello.extend_from_slice(&body);
    // The session id: version 25.9.11, now, the short id; sealed over the hello with it zeroed.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as u32;
    let mut sealed = vec![25, 9, 11, 0];
    sealed.extend_from_slice(&now.to_be_bytes());
    sealed.extend_from_slice(&[0x6b, 0xa8, 0x51, 0x79, 0xe3, 0x0d, 0x4f, 0xc2]);
    let key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &auth).unwrap());
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(&random[20..]).unwrap();
    key.seal_in_place_append_tag(nonce, ring::aead::Aad::from(&hello[..]), &mut sealed).unwrap();
    hello[39..71].copy_from_slice(&sealed);
    let mut record = vec![0x16, 3, 1, (hello.len() >> 8) as u8, hello.len() as u8];
    record.extend_from_slice(&hello);

    let mut conn = TcpStream::connect(server.inbound("vless-in")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(&record).unwrap();
    let mut head = [0u8; 5];
    conn.read_exact(&mut head).unwrap();
    assert_eq!(&head[..2], &[0x16, 3], "not a handshake record: {head:?}\n{}", server.output());
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes([head[3], head[4]]))];
    conn.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], 2, "not a ServerHello");
    assert_eq!(&answer[39..71], &sealed[..], "the session id is not echoed");
    // cipher suite, compression, then the extensions: key_share names X25519.
    let at = 71;
    assert!([[0x13, 1], [0x13, 2], [0x13, 3]].contains(&[answer[at], answer[at + 1]]));
    let key_share = answer.windows(6).position(|w| w[..2] == [0, 51] && w[4..6] == [0, 0x1d]);
    assert!(key_share.is_some(), "the server did not pick X25519: {answer:02x?}");
    // Written by the logger thread: it may land a moment after the answer.
    let line = "REALITY client 25.9.11, short id 6ba85179e30d4fc2";
    assert!(wait_until(Duration::from_secs(5), || server.output().contains(line)), "{}", server.output());
    std::thread::sleep(Duration::from_millis(200));
    assert!(target.seen().is_empty(), "the target saw it");
}

/// gRPC over REALITY (`network: "grpc"`, `security: "reality"`, as Xray serves it): shoes is
/// the REALITY client, forwarding the bytes of sing-box's VLESS-over-gRPC client (plain h2)
/// inside REALITY.
#[test]
fn vless_over_grpc_over_reality() {
    use shardray_tests::singbox::{vless_outbound, SingBox};
    let target = Target::start();
    let (private, public) = reality_keys();
    let mut stream = reality_stream(target.addr, &private);
    stream["network"] = json!("grpc");
    stream["grpcSettings"] = json!({ "serviceName": "gun" });
    let mut config =
        vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({ "streamSettings": stream }));
    config["log"]["loglevel"] = json!("info");
    let server = Shardray::start(&config, 2);
    let echo = EchoServer::start();
    let shoes = Shoes::reality_forwarder(
        server.inbound("vless-in"),
        &RealityClient { public_key: &public, short_id: SHORT_ID, sni: SNI, uuid: ALICE, vision: false, trojan: None },
    );
    let mut outbound = vless_outbound(shoes.socks, ALICE, None);
    outbound["transport"] = json!({ "type": "grpc", "service_name": "gun" });
    let sb = SingBox::start(outbound);
    for len in [1, 70_000, 2 << 20] {
        let data = payload(len);
        let stream = sb.connect(echo.addr()).unwrap_or_else(|e| panic!("{e}\n{}\n{}", sb.log(), shoes.log()));
        let got = exchange(stream, &data)
            .unwrap_or_else(|e| panic!("{len} bytes: {e}\n{}\n{}\n{}", sb.log(), shoes.log(), server.output()));
        assert!(got == data, "{len} bytes came back different");
    }
    assert!(target.seen().is_empty(), "the target saw {} connections", target.seen().len());
}

/// XHTTP over REALITY (`network: "xhttp"`, `security: "reality"`, as Xray serves it): shoes is
/// the REALITY client, forwarding curl's stream-one POST (HTTP/1.1, then h2c) inside REALITY.
#[test]
fn vless_over_xhttp_over_reality() {
    let target = Target::start();
    let (private, public) = reality_keys();
    let mut stream = reality_stream(target.addr, &private);
    stream["network"] = json!("xhttp");
    stream["xhttpSettings"] = json!({ "path": "/xh" });
    let mut config =
        vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), json!({ "streamSettings": stream }));
    config["log"]["loglevel"] = json!("info");
    let server = Shardray::start(&config, 2);
    let echo = EchoServer::start();
    let shoes = Shoes::reality_forwarder(
        server.inbound("vless-in"),
        &RealityClient { public_key: &public, short_id: SHORT_ID, sni: SNI, uuid: ALICE, vision: false, trojan: None },
    );
    let dir = tempfile::tempdir().unwrap();
    for (i, version) in ["--http1.1", "--http2-prior-knowledge"].into_iter().enumerate() {
        let data = payload(50_000 + i);
        let mut body = shardray_tests::vless::request(ALICE, echo.addr());
        body.extend_from_slice(&data);
        let file = dir.path().join(format!("body{i}"));
        std::fs::write(&file, &body).unwrap();
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", version, "-H"])
            .arg(format!("Referer: http://x/?x_padding={}", "X".repeat(150)))
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("http://{}/xh/", shoes.socks))
            .output()
            .unwrap();
        let mut want = vec![0u8, 0];
        want.extend_from_slice(&data);
        assert!(out.stdout == want, "{version}: {} bytes back\n{}\n{}", out.stdout.len(), shoes.log(), server.output());
    }
    assert!(target.seen().is_empty(), "the target saw {} connections", target.seen().len());
}
