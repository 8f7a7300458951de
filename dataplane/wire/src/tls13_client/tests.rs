//! The client against rustls's server (an independent TLS 1.3 implementation), in memory:
//! every suite, ALPN, tickets, KeyUpdate both ways, close_notify; then REALITY against our own
//! server side (`reality::authenticate` and its temporary certificate), and the certificates a
//! REALITY client must refuse.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello as RustlsHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{ServerConfig, ServerConnection, SignatureAlgorithm, SignatureScheme};

use super::*;
use crate::reality::{Acceptance, ClientHello, TemporaryCert};

const SHORT_ID: [u8; 8] = [0x6b, 0xa8, 0x51, 0x79, 0, 0, 0, 0];
const VERSION: [u8; 3] = [26, 3, 27];
const TIME: u32 = 1_767_225_600;

fn entropy(n: u8) -> Entropy {
    Entropy {
        random: std::array::from_fn(|i| i as u8 ^ n),
        key_share: std::array::from_fn(|i| (i as u8).wrapping_mul(7) ^ n),
        grease: [n, n.wrapping_add(3)],
    }
}

/// The server's REALITY key pair.
fn reality_keys() -> ([u8; 32], [u8; 32]) {
    let private = reality::clamp(std::array::from_fn(|i| i as u8 + 1));
    (private, reality::public_key(&private))
}

/// Signs with ed25519 whatever the client offered, as a REALITY server does.
#[derive(Debug)]
struct Ed25519Always(Arc<dyn SigningKey>);

impl SigningKey for Ed25519Always {
    fn choose_scheme(&self, _offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        self.0.choose_scheme(&[SignatureScheme::ED25519, SignatureScheme::ECDSA_NISTP256_SHA256])
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        self.0.algorithm()
    }
}

#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: RustlsHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A rustls TLS 1.3 server presenting `cert` signed by `key` (PKCS#8), in `suite` (all when
/// `None`), answering ALPN `http/1.1`.
fn rustls_server(cert: Vec<u8>, key: Vec<u8>, suite: Option<rustls::SupportedCipherSuite>) -> ServerConnection {
    let mut provider: CryptoProvider = rustls::crypto::ring::default_provider();
    if let Some(s) = suite {
        provider.cipher_suites = vec![s];
    }
    let signer = provider.key_provider.load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key))).unwrap();
    let certified = CertifiedKey::new(vec![CertificateDer::from(cert)], Arc::new(Ed25519Always(signer)));
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneCert(Arc::new(certified))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Tickets on (rustls's default): the client must skip them.
    assert!(config.send_tls13_tickets > 0);
    let mut server = ServerConnection::new(Arc::new(config)).unwrap();
    server.set_buffer_limit(None);
    server
}

/// An ordinary self-signed certificate and its PKCS#8 key (ed25519 or ECDSA P-256).
fn ordinary_cert(alg: &'static rcgen::SignatureAlgorithm) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
    (cert.der().to_vec(), key.serialize_der())
}

/// Feeds `bytes` to the server; the plaintext it yields, and whether it saw close_notify.
fn to_server(server: &mut ServerConnection, mut bytes: &[u8]) -> (Vec<u8>, bool) {
    let (mut plain, mut closed) = (Vec::new(), false);
    while !bytes.is_empty() {
        server.read_tls(&mut bytes).unwrap();
        server.process_new_packets().unwrap();
        // Drained as it comes: rustls buffers only so much plaintext.
        let mut chunk = [0u8; 4096];
        loop {
            match server.reader().read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
    (plain, closed)
}

fn from_server(server: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while server.wants_write() {
        server.write_tls(&mut out).unwrap();
    }
    out
}

/// Runs the handshake; the client's state and the server's bytes past its Finished.
fn handshake(server: &mut ServerConnection, auth: ServerAuth, n: u8) -> Result<(Established, Vec<u8>), TlsError> {
    let alpn: [&[u8]; 2] = [b"h2", b"http/1.1"];
    let settings = ClientSettings { server_name: "localhost", alpn: &alpn, server: auth };
    let (mut client, hello) = ClientHandshake::start(&settings, &entropy(n))?;
    to_server(server, &hello);
    let mut input = Vec::new();
    for _ in 0..10 {
        input.extend_from_slice(&from_server(server));
        let mut out = Vec::new();
        let done = client.advance(&mut input, &mut out)?;
        to_server(server, &out);
        if let Some(established) = done {
            assert!(!server.is_handshaking(), "rustls took our Finished");
            input.extend_from_slice(&from_server(server));
            return Ok((established, input));
        }
    }
    panic!("the handshake stalled");
}

/// Opens every whole record in `input`: the data, and the non-data events in order.
fn open_all(reader: &mut RecordReader, input: &mut Vec<u8>) -> (Vec<u8>, Vec<Opened>) {
    let (mut data, mut events) = (Vec::new(), Vec::new());
    while let Some(len) = record_len(input).unwrap() {
        let mut record: Vec<u8> = input.drain(..len).collect();
        match reader.open(&mut record).unwrap() {
            Opened::Data(range) => data.extend_from_slice(&record[range]),
            other => events.push(other),
        }
    }
    (data, events)
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 8) as u8).collect()
}

#[test]
fn every_suite_carries_records_with_tickets_key_updates_and_close_notify() {
    let (cert, key) = ordinary_cert(&rcgen::PKCS_ED25519);
    let suites: Vec<_> =
        rustls::crypto::ring::default_provider().cipher_suites.into_iter().filter(|s| s.tls13().is_some()).collect();
    assert_eq!(suites.len(), 3);
    let mut seen = Vec::new();
    for (i, suite) in suites.into_iter().enumerate() {
        let mut server = rustls_server(cert.clone(), key.clone(), Some(suite));
        let (mut tls, mut input) = handshake(&mut server, ServerAuth::AnyEd25519, i as u8).unwrap();
        seen.push(tls.suite);
        assert_eq!(tls.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));

        // The tickets rustls sent after our Finished are nothing to the application.
        let (data, events) = open_all(&mut tls.reader, &mut input);
        assert!(data.is_empty());
        assert!(!events.is_empty() && events.iter().all(|e| *e == Opened::Nothing), "{events:?}");

        // Both ways, several records each.
        let up = payload(40_000, 31);
        let mut out = Vec::new();
        tls.writer.seal(&up, &mut out);
        assert_eq!(to_server(&mut server, &out).0, up);
        let down = payload(70_000, 17);
        server.writer().write_all(&down).unwrap();
        input.extend_from_slice(&from_server(&mut server));
        assert_eq!(open_all(&mut tls.reader, &mut input).0, down);

        // The server updates its key and asks for ours.
        server.refresh_traffic_keys().unwrap();
        server.writer().write_all(b"after the server's update").unwrap();
        input.extend_from_slice(&from_server(&mut server));
        let (data, events) = open_all(&mut tls.reader, &mut input);
        assert_eq!(events, [Opened::KeyUpdate { requested: true }]);
        assert_eq!(data, b"after the server's update");
        let mut out = Vec::new();
        tls.writer.key_update(false, &mut out);
        tls.writer.seal(b"after ours", &mut out);
        assert_eq!(to_server(&mut server, &out).0, b"after ours");

        // We update on our own: rustls follows.
        let mut out = Vec::new();
        tls.writer.key_update(false, &mut out);
        tls.writer.seal(b"once more", &mut out);
        assert_eq!(to_server(&mut server, &out).0, b"once more");

        // close_notify both ways.
        server.send_close_notify();
        input.extend_from_slice(&from_server(&mut server));
        assert_eq!(open_all(&mut tls.reader, &mut input).1, [Opened::Closed]);
        let mut out = Vec::new();
        tls.writer.close_notify(&mut out);
        assert_eq!(to_server(&mut server, &out), (Vec::new(), true), "a clean end for rustls");
    }
    assert_eq!(seen, [Suite::Aes256Gcm, Suite::Aes128Gcm, Suite::Chacha20Poly1305]);
}

#[test]
fn a_tampered_record_does_not_open() {
    let (cert, key) = ordinary_cert(&rcgen::PKCS_ED25519);
    let mut server = rustls_server(cert, key, None);
    let (mut tls, mut input) = handshake(&mut server, ServerAuth::AnyEd25519, 1).unwrap();
    open_all(&mut tls.reader, &mut input);
    server.writer().write_all(b"genuine").unwrap();
    let mut record = from_server(&mut server);
    let last = record.len() - 1;
    record[last] ^= 1;
    assert_eq!(tls.reader.open(&mut record), Err(TlsError::Decrypt));
}

/// Our REALITY server side's view of the client's hello: the authentication it yields.
fn authenticate(hello_record: &[u8], private: &[u8; 32]) -> Result<reality::Authenticated, reality::AuthError> {
    let mut message = Vec::new();
    reality::gather(hello_record, &mut message).unwrap();
    let hello = ClientHello::parse(&message).unwrap();
    assert_eq!(hello.server_name, Some("localhost"));
    assert!(hello.tls13);
    assert_eq!(hello.first_alpn, Some(&b"h2"[..]));
    let ids = [SHORT_ID];
    let accept = Acceptance {
        private_key: private,
        short_ids: &ids,
        min_client_ver: None,
        max_client_ver: None,
        max_time_diff_ms: 0,
    };
    reality::authenticate(&hello, true, &accept, 0)
}

fn reality_auth(public_key: [u8; 32], short_id: [u8; 8]) -> ServerAuth {
    ServerAuth::Reality { public_key, short_id, version: VERSION, unix_time: TIME }
}

/// An ed25519 key (PKCS#8) and REALITY's temporary certificate for it, signed for `auth_key`.
fn temporary_cert(auth_key: &[u8; 32]) -> (Vec<u8>, Vec<u8>) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public: [u8; 32] = ring::signature::KeyPair::public_key(&pair).as_ref().try_into().unwrap();
    (TemporaryCert::new(public).for_auth_key(auth_key), pkcs8.as_ref().to_vec())
}

/// The client's hello record, as a REALITY server would read it first.
fn hello_record(auth: ServerAuth, n: u8) -> Vec<u8> {
    let alpn: [&[u8]; 2] = [b"h2", b"http/1.1"];
    let settings = ClientSettings { server_name: "localhost", alpn: &alpn, server: auth };
    ClientHandshake::start(&settings, &entropy(n)).unwrap().1
}

#[test]
fn reality_authenticates_to_our_server_side_and_accepts_its_temporary_certificate() {
    let (private, public) = reality_keys();
    let auth = authenticate(&hello_record(reality_auth(public, SHORT_ID), 5), &private).unwrap();
    assert_eq!((auth.client_ver, auth.client_time, auth.short_id), (VERSION, TIME, SHORT_ID));
    // The same hello (same entropy) to rustls serving the certificate signed for that auth key.
    let (cert, key) = temporary_cert(&auth.auth_key);
    let mut server = rustls_server(cert, key, None);
    let (mut tls, mut input) = handshake(&mut server, reality_auth(public, SHORT_ID), 5).unwrap();
    open_all(&mut tls.reader, &mut input);
    let mut out = Vec::new();
    tls.writer.seal(b"through REALITY", &mut out);
    assert_eq!(to_server(&mut server, &out).0, b"through REALITY");
}

#[test]
fn a_wrong_key_or_short_id_does_not_authenticate() {
    let (private, _) = reality_keys();
    let other = reality::public_key(&reality::clamp([9; 32]));
    assert_eq!(
        authenticate(&hello_record(reality_auth(other, SHORT_ID), 6), &private),
        Err(reality::AuthError::Unsealed)
    );
    let (_, public) = reality_keys();
    assert_eq!(
        authenticate(&hello_record(reality_auth(public, [1; 8]), 6), &private),
        Err(reality::AuthError::ShortId)
    );
    // A low-order point is refused before anything is sent.
    let settings = ClientSettings { server_name: "x", alpn: &[], server: reality_auth([0; 32], SHORT_ID) };
    assert!(matches!(ClientHandshake::start(&settings, &entropy(6)), Err(TlsError::BadServerKey)));
}

#[test]
fn the_camouflage_sites_certificates_are_refused() {
    let (_, public) = reality_keys();
    let cases = [
        (temporary_cert(&[7; 32]), "certificate not signed with our auth key"),
        (ordinary_cert(&rcgen::PKCS_ED25519), "certificate not signed with our auth key"),
        (ordinary_cert(&rcgen::PKCS_ECDSA_P256_SHA256), "certificate key is not ed25519"),
    ];
    for ((cert, key), why) in cases {
        let mut server = rustls_server(cert, key, None);
        match handshake(&mut server, reality_auth(public, SHORT_ID), 7) {
            Err(TlsError::NotReality(reason)) => assert_eq!(reason, why),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted a certificate that is not REALITY's: {why}"),
        }
    }
}

#[test]
fn a_corrupted_server_flight_fails_without_panicking() {
    let (cert, key) = ordinary_cert(&rcgen::PKCS_ED25519);
    let mut server = rustls_server(cert, key, None);
    let alpn: [&[u8]; 1] = [b"http/1.1"];
    let settings = ClientSettings { server_name: "localhost", alpn: &alpn, server: ServerAuth::AnyEd25519 };
    let (_, hello) = ClientHandshake::start(&settings, &entropy(8)).unwrap();
    to_server(&mut server, &hello);
    let flight = from_server(&mut server);
    // The version in a plaintext record's header is ignored, as RFC 8446 says; every other
    // byte counts.
    let mut ignored = Vec::new();
    let mut at = 0;
    while let Some(len) = record_len(&flight[at..]).unwrap() {
        if flight[at] != APPLICATION_DATA {
            ignored.extend([at + 1, at + 2]);
        }
        at += len;
    }
    for i in 0..flight.len() {
        for (flip, cut) in [(0x01u8, false), (0x80, false), (0, true)] {
            let (mut client, _) = ClientHandshake::start(&settings, &entropy(8)).unwrap();
            let mut input = flight.clone();
            if cut {
                input.truncate(i);
            } else {
                input[i] ^= flip;
            }
            let result = client.advance(&mut input, &mut Vec::new());
            if cut {
                assert!(matches!(result, Ok(None)), "a prefix of {i} bytes only waits: {:?}", result.err());
            } else if !ignored.contains(&i) {
                assert!(!matches!(result, Ok(Some(_))), "byte {i} flipped and still established");
            }
        }
    }
    // The intact flight completes.
    let (mut client, _) = ClientHandshake::start(&settings, &entropy(8)).unwrap();
    let mut input = flight;
    assert!(client.advance(&mut input, &mut Vec::new()).unwrap().is_some());
}

#[test]
fn xrays_stand_in_ticket_then_a_key_update_then_data() {
    // A reader and the server's side of its key, from one secret.
    let secret = vec![0x42; 32];
    let mut reader =
        RecordReader { protection: Protection::new(Suite::Aes128Gcm, secret.clone()), messages: Vec::new() };
    let mut server = Protection::new(Suite::Aes128Gcm, secret);
    let mut wire = Vec::new();
    // What Xray's REALITY server writes after its Finished when the target sent tickets.
    server.seal(HANDSHAKE, &[4], &mut wire);
    server.seal(HANDSHAKE, &[24, 0, 0, 1, 1], &mut wire);
    server.update();
    server.seal(APPLICATION_DATA, b"under the next key", &mut wire);
    let (data, events) = open_all(&mut reader, &mut wire);
    assert_eq!(events, [Opened::Nothing, Opened::KeyUpdate { requested: true }]);
    assert_eq!(data, b"under the next key");
}
