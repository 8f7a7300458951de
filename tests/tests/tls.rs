//! VLESS over TLS against the real binary with a rustls client of our own: round trips with
//! exact counters, ALPN, fallbacks chosen by ALPN, and plain-TCP clients on the TLS port.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};
use shardray_tests::api::ApiClient;
use shardray_tests::servers::{EchoServer, RecordingServer};
use shardray_tests::tls::{connect, duplex_exchange, negotiated_alpn, SelfSigned};
use shardray_tests::vless::{self, payload};
use shardray_tests::{vless_config, wait_until, Shardray, ALICE};

const UPLINK: &str = "user>>>alice@example.com>>>traffic>>>uplink";
const DOWNLINK: &str = "user>>>alice@example.com>>>traffic>>>downlink";

/// A TLS VLESS server for alice with `settings_extra` merged into its settings, serving a fresh
/// certificate for "localhost" with `alpn`, an API on loopback, on 2 shards.
fn tls_server(alpn: &[&str], settings_extra: Value) -> (Shardray, SelfSigned, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let extra = json!({
        "settings": settings_extra,
        "streamSettings": cert.stream_settings("localhost", alpn),
    });
    let mut config = vless_config(json!([{ "id": ALICE, "email": "alice@example.com" }]), extra);
    config["api"] = shardray_tests::loopback_api(&["StatsService"]);
    (Shardray::start(&config, 2), cert, certs)
}

/// One VLESS request over TLS to `dest` carrying `data`; returns what followed the response
/// header, after checking the header is version 0 without addons.
fn tls_round_trip(proxy: SocketAddr, cert: &SelfSigned, alpn: &[&str], dest: SocketAddr, data: &[u8]) -> Vec<u8> {
    let stream = connect(proxy, cert.client_config(alpn), "localhost").expect("TLS handshake");
    let mut first = vless::request(ALICE, dest);
    first.extend_from_slice(data);
    let reply = duplex_exchange(stream, first).expect("exchange over TLS");
    assert!(reply.len() >= 2 && reply[..2] == [0, 0], "bad VLESS response header: {:?}", &reply[..reply.len().min(8)]);
    reply[2..].to_vec()
}

/// Waits (bounded) until alice's counters read `up` and `down`; returns the last reading.
fn settle(api: &ApiClient, up: i64, down: i64) -> (bool, BTreeMap<String, i64>) {
    let mut last = BTreeMap::new();
    let ok = wait_until(Duration::from_secs(5), || {
        last = api.query("user>>>alice@example.com>>>traffic", false);
        last.get(UPLINK) == Some(&up) && last.get(DOWNLINK) == Some(&down)
    });
    (ok, last)
}

#[test]
fn vless_over_tls_round_trips_with_exact_counters() {
    let (server, cert, _certs) = tls_server(&["h2", "http/1.1"], json!({}));
    let proxy = server.inbound("vless-in");
    let echo = EchoServer::start();
    let sizes = [1usize, 517, 16_384, 16_385, 65_536, 300_001, 1 << 20, 40, 90_000, 7];

    for (i, &len) in sizes[..3].iter().enumerate() {
        let data = payload(len, i as u64);
        let got = tls_round_trip(proxy, &cert, &[], echo.addr(), &data);
        assert!(got == data, "connection {i} ({len} bytes): echo differs (got {} bytes)", got.len());
    }
    std::thread::scope(|scope| {
        for (i, &len) in sizes.iter().enumerate().skip(3) {
            let (cert, echo) = (&cert, echo.addr());
            scope.spawn(move || {
                let data = payload(len, i as u64);
                let got = tls_round_trip(proxy, cert, &[], echo, &data);
                assert!(got == data, "connection {i} ({len} bytes): echo differs (got {} bytes)", got.len());
            });
        }
    });

    let total: i64 = sizes.iter().map(|&n| n as i64).sum();
    let api = ApiClient::connect(server.api.expect("api address"));
    let (ok, last) = settle(&api, total, total);
    assert!(ok, "alice's counters should be up={total} down={total}, got {last:?}");
}

#[test]
fn alpn_is_negotiated_from_the_inbound_list() {
    let (server, cert, _certs) = tls_server(&["h2", "http/1.1"], json!({}));
    let proxy = server.inbound("vless-in");

    let http1 = connect(proxy, cert.client_config(&["http/1.1"]), "localhost").expect("handshake offering http/1.1");
    assert_eq!(negotiated_alpn(&http1).as_deref(), Some("http/1.1"));
    let h2 = connect(proxy, cert.client_config(&["h2"]), "localhost").expect("handshake offering h2");
    assert_eq!(negotiated_alpn(&h2).as_deref(), Some("h2"));
    drop((http1, h2));

    // A session that negotiated http/1.1 still carries VLESS.
    let echo = EchoServer::start();
    let data = payload(20_000, 9);
    assert!(
        tls_round_trip(proxy, &cert, &["http/1.1"], echo.addr(), &data) == data,
        "echo over an http/1.1 session differs"
    );
}

#[test]
fn non_vless_bytes_inside_tls_reach_the_fallback_chosen_by_alpn() {
    const REPLY_DEFAULT: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ndefault";
    const REPLY_H2: &[u8] = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00h2-fallback";
    let fallback_default = RecordingServer::start(REPLY_DEFAULT);
    let fallback_h2 = RecordingServer::start(REPLY_H2);
    let fallbacks = json!({ "fallbacks": [
        { "dest": fallback_default.addr().port() },
        { "dest": format!("127.0.0.1:{}", fallback_h2.addr().port()), "alpn": "h2" },
    ]});
    let (server, cert, _certs) = tls_server(&["h2", "http/1.1"], fallbacks);
    let proxy = server.inbound("vless-in");

    // http/1.1 matches no fallback's alpn: the one without alpn gets it.
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let stream = connect(proxy, cert.client_config(&["http/1.1"]), "localhost").unwrap();
    assert_eq!(negotiated_alpn(&stream).as_deref(), Some("http/1.1"));
    let reply = duplex_exchange(stream, request.clone()).expect("exchange with the default fallback");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(REPLY_DEFAULT),
        "reply of the default fallback"
    );
    let seen = fallback_default.next(Duration::from_secs(5)).expect("the default fallback saw no connection");
    assert_eq!(String::from_utf8_lossy(&seen), String::from_utf8_lossy(&request), "bytes at the default fallback");

    // h2 picks the fallback whose alpn is "h2".
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec();
    let stream = connect(proxy, cert.client_config(&["h2"]), "localhost").unwrap();
    assert_eq!(negotiated_alpn(&stream).as_deref(), Some("h2"));
    let reply = duplex_exchange(stream, preface.clone()).expect("exchange with the h2 fallback");
    assert_eq!(reply, REPLY_H2, "reply of the h2 fallback");
    let seen = fallback_h2.next(Duration::from_secs(5)).expect("the h2 fallback saw no connection");
    assert_eq!(seen, preface, "bytes at the h2 fallback");

    assert_eq!(fallback_default.next(Duration::from_millis(300)), None, "the default fallback got a second connection");
    assert_eq!(fallback_h2.next(Duration::from_millis(300)), None, "the h2 fallback got a second connection");

    // VLESS itself still works on the same port.
    let echo = EchoServer::start();
    let data = payload(4_000, 11);
    assert!(tls_round_trip(proxy, &cert, &["h2"], echo.addr(), &data) == data, "VLESS echo beside fallbacks differs");
}

#[test]
fn plain_vless_on_the_tls_port_gets_nothing_and_the_server_keeps_serving() {
    let (mut server, cert, _certs) = tls_server(&["h2", "http/1.1"], json!({}));
    let proxy = server.inbound("vless-in");
    let sink = RecordingServer::start(b"leaked reply");

    for attempt in 0..5u64 {
        let data = payload(2_000, 50 + attempt);
        let mut s = vless::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut first = vless::request(ALICE, sink.addr());
        first.extend_from_slice(&data);
        let _ = s.write_all(&first);
        let _ = s.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got); // end of stream, reset or timeout: all fine
        assert!(!got.starts_with(&[0, 0]), "attempt {attempt}: a VLESS response came back over plain TCP");
        assert!(!got.windows(12).any(|w| w == b"leaked reply"), "attempt {attempt}: the destination's reply leaked");
        assert!(
            !got.windows(64).any(|w| data.windows(64).next() == Some(w)),
            "attempt {attempt}: payload bytes came back"
        );
    }
    assert_eq!(sink.next(Duration::from_millis(500)), None, "a plain-TCP VLESS request reached its destination");

    assert!(server.is_running(), "shardray exited:\n{}", server.output());
    let echo = EchoServer::start();
    let data = payload(30_000, 77);
    assert!(tls_round_trip(proxy, &cert, &[], echo.addr(), &data) == data, "echo after plain-TCP probes differs");
    let api = ApiClient::connect(server.api.expect("api address"));
    let (ok, last) = settle(&api, 30_000, 30_000);
    assert!(ok, "only the TLS client's bytes should count, got {last:?}");
}

#[test]
fn cipher_suites_choose_and_order_what_the_server_offers() {
    // The server's list puts AES-128-GCM first; a client that prefers AES-256-GCM gets the
    // server's choice, over TLS 1.3 and over TLS 1.2.
    let certs = tempfile::tempdir().unwrap();
    let cert = SelfSigned::generate(certs.path(), &["localhost"]);
    let mut stream = cert.stream_settings("localhost", &[]);
    stream["tlsSettings"]["cipherSuites"] =
        json!("TLS_AES_128_GCM_SHA256:TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256:TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
    let config = vless_config(json!([{ "id": ALICE }]), json!({ "streamSettings": stream }));
    let server = Shardray::start(&config, 1);
    let proxy = server.inbound("vless-in");

    let client = |versions: &[&'static rustls::SupportedProtocolVersion]| {
        let mut provider = rustls::crypto::ring::default_provider();
        // AES-256 first, as a client that prefers it sends its list.
        provider.cipher_suites.sort_by_key(|s| !format!("{:?}", s.suite()).contains("AES_256"));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert_der.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let stream = connect(proxy, std::sync::Arc::new(config), "localhost").expect("handshake");
        format!("{:?}", stream.conn.negotiated_cipher_suite().unwrap().suite())
    };
    assert_eq!(client(&[&rustls::version::TLS13]), "TLS13_AES_128_GCM_SHA256");
    assert!(client(&[&rustls::version::TLS12]).ends_with("_WITH_AES_128_GCM_SHA256"));

    // A suite this build cannot offer stops the start, naming the field.
    let mut bad = config.clone();
    bad["inbounds"][0]["streamSettings"]["tlsSettings"]["cipherSuites"] = json!("TLS_RSA_WITH_AES_128_CBC_SHA");
    let out = Shardray::try_start(&bad, 1).err().expect("start must fail");
    assert!(out.contains("tlsSettings.cipherSuites: \"TLS_RSA_WITH_AES_128_CBC_SHA\" is not offered here"), "{out}");
}

#[test]
fn session_tickets_only_with_enable_session_resumption_and_shared_by_the_shards() {
    let echo = EchoServer::start();
    let kinds = |settings_extra: Value, version: &'static rustls::SupportedProtocolVersion| {
        let certs = tempfile::tempdir().unwrap();
        let cert = SelfSigned::generate(certs.path(), &["localhost"]);
        let mut stream = cert.stream_settings("localhost", &[]);
        stream["tlsSettings"].as_object_mut().unwrap().extend(settings_extra.as_object().unwrap().clone());
        let config = vless_config(json!([{ "id": ALICE }]), json!({ "streamSettings": stream }));
        let server = Shardray::start(&config, 2);
        let proxy = server.inbound("vless-in");
        // One client config, so one session cache, for every connection: a returning client.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert_der.clone()).unwrap();
        let client =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let client = std::sync::Arc::new(client);
        // Eight connections from fresh source ports land on both shards; each reads to the end,
        // so any ticket the server sent is in the cache before the next one starts.
        (0..8)
            .map(|_| {
                let stream = connect(proxy, client.clone(), "localhost").expect("handshake");
                let kind = stream.conn.handshake_kind();
                let mut first = vless::request(ALICE, echo.addr());
                first.extend_from_slice(b"ping");
                let reply = duplex_exchange(stream, first).expect("exchange");
                assert_eq!(&reply[2..], b"ping");
                format!("{kind:?}")
            })
            .collect::<Vec<_>>()
    };
    let full = vec!["Some(Full)".to_string(); 8];
    let mut resumed = vec!["Some(Resumed)".to_string(); 8];
    resumed[0] = "Some(Full)".to_string();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // As Xray's server: no tickets (and no session cache) unless asked for.
        assert_eq!(kinds(json!({}), version), full, "{version:?} default");
        assert_eq!(kinds(json!({ "enableSessionResumption": false }), version), full, "{version:?} false");
        // Asked for: every returning connection resumes, whichever shard takes it.
        assert_eq!(kinds(json!({ "enableSessionResumption": true }), version), resumed, "{version:?} true");
    }
}
