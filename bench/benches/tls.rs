//! What one full TLS 1.3 handshake costs the server, by certificate key type, with the data
//! plane's own server config (`shardray_shard::transport::tls::server_config`, aws-lc-rs)
//! beside the same settings on ring. Client and server run in memory, in one thread; only
//! the server's calls are timed (building its connection, reading the client's flights,
//! writing its own), so the client's equal share in both arms drops out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use shardray_core::spec::{CertificateSpec, TlsClientSpec, TlsServerSpec};

/// The data plane's own client with `allowInsecure` (the bench trusts itself). Its offer
/// (X25519 first, AES-256-GCM first) is ring's too, and no ticket comes back to resume with.
fn client() -> Arc<ClientConfig> {
    let spec = TlsClientSpec { server_name: "localhost".into(), allow_insecure: true, alpn: Vec::new() };
    shardray_shard::transport::tls::client_config(&spec).unwrap()
}

/// Ours, and the same settings (no tickets, no session cache) on ring.
fn servers(key: &rcgen::KeyPair) -> [(&'static str, Arc<ServerConfig>); 2] {
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(key).unwrap();
    let spec = TlsServerSpec {
        server_name: "localhost".into(),
        alpn: Vec::new(),
        certificates: vec![CertificateSpec {
            chain_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        }],
        min_version: None,
        max_version: None,
        cipher_suites: Vec::new(),
        session_resumption: false,
    };
    let ours = shardray_shard::transport::tls::server_config(&spec).unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut ring = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .unwrap();
    ring.send_tls13_tickets = 0;
    ring.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    [("shardray_aws_lc_rs", ours), ("ring", Arc::new(ring))]
}

/// One handshake; returns the time spent in the server's calls.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, buf: &mut Vec<u8>) -> Duration {
    let mut c = ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let began = Instant::now();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut spent = began.elapsed();
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        c.write_tls(buf).unwrap();
        let began = Instant::now();
        let mut flight = &buf[..];
        while !flight.is_empty() {
            s.read_tls(&mut flight).unwrap();
        }
        s.process_new_packets().unwrap();
        buf.clear();
        s.write_tls(buf).unwrap();
        spent += began.elapsed();
        let mut flight = &buf[..];
        while !flight.is_empty() {
            c.read_tls(&mut flight).unwrap();
        }
        c.process_new_packets().unwrap();
    }
    spent
}

fn server_handshake(c: &mut Criterion) {
    let client = client();
    let keys = [
        ("ecdsa_p256", rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()),
        ("ed25519", rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()),
        ("rsa_2048", rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap()),
    ];
    for (kind, key) in &keys {
        let mut group = c.benchmark_group(format!("tls13_server_handshake_{kind}"));
        for (name, server) in servers(key) {
            let mut buf = Vec::with_capacity(8192);
            group.bench_function(name, |b| {
                b.iter_custom(|n| (0..n).map(|_| handshake(&client, &server, &mut buf)).sum());
            });
        }
        group.finish();
    }
}

criterion_group!(benches, server_handshake);
criterion_main!(benches);
