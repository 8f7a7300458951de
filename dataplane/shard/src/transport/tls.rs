//! Builds rustls server and client configs from the validated TLS settings.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use shardray_core::spec::{TlsServerSpec, TlsVersion};

/// Why TLS settings could not be turned into a server config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTls(pub String);

impl std::fmt::Display for InvalidTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidTls {}

/// The crypto provider of the data plane's TLS: inbounds, outbounds and REALITY. aws-lc-rs
/// rather than ring: the server's side of a handshake costs 0.83× with ECDSA P-256, 0.72×
/// with Ed25519 and 0.48× with RSA-2048 (`cargo bench --bench tls`, perf/RESULTS.md,
/// 2026-12-04). Its key exchanges are X25519 (preferred), P-256, P-384 and, for a client
/// that offers only that share, X25519MLKEM768.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Builds the server config: the first certificate, ALPN in config order, the version range.
/// Control calls this once while validating, so that a bad key stops the start, and each shard
/// builds its own copy (no session cache shared between cores).
pub fn server_config(spec: &TlsServerSpec) -> Result<Arc<ServerConfig>, InvalidTls> {
    let cert = spec.certificates.first().ok_or_else(|| InvalidTls("no certificate configured".into()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert.chain_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| InvalidTls(format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(InvalidTls("certificate: no PEM certificate found".into()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &cert.key_pem[..])
        .map_err(|e| InvalidTls(format!("key: {e}")))?
        .ok_or_else(|| InvalidTls("key: no PEM private key found".into()))?;

    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    let lo = spec.min_version.unwrap_or(TlsVersion::V1_2);
    let hi = spec.max_version.unwrap_or(TlsVersion::V1_3);
    if lo <= TlsVersion::V1_3 && TlsVersion::V1_3 <= hi {
        versions.push(&rustls::version::TLS13);
    }
    if lo <= TlsVersion::V1_2 && TlsVersion::V1_2 <= hi {
        versions.push(&rustls::version::TLS12);
    }
    if versions.is_empty() {
        return Err(InvalidTls("minVersion is above maxVersion".into()));
    }
    let mut provider = provider();
    if !spec.cipher_suites.is_empty() {
        provider.cipher_suites = cipher_suites(&spec.cipher_suites)?;
    }
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|e| InvalidTls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| InvalidTls(format!("certificate and key: {e}")))?;
    config.alpn_protocols = spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // A configured list is the server's preference, as its order says.
    config.ignore_client_order = !spec.cipher_suites.is_empty();
    // No session-id cache: it would be per shard, and a returning client's next connection
    // lands on any shard. Tickets only when asked for, as Xray's server does; otherwise each
    // handshake saves building, sealing and sending two tickets nobody may use.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    if spec.session_resumption {
        config.ticketer = shared_ticketer(&cert.chain_pem, &cert.key_pem)?;
        config.send_tls13_tickets = 1;
    } else {
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// The ticket keys of one server identity (certificate and key), shared by every shard and
/// every inbound serving it, so that a ticket resumes on whichever core the kernel picks. Keyed
/// by identity because a ticket carries the authentication of the server that issued it.
/// Keys rotate every 6 hours (rustls's ticketer) and die with the process.
fn shared_ticketer(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<dyn rustls::server::ProducesTickets>, InvalidTls> {
    type Ticketers = std::collections::HashMap<(Vec<u8>, Vec<u8>), Arc<dyn rustls::server::ProducesTickets>>;
    static TICKETERS: std::sync::OnceLock<std::sync::Mutex<Ticketers>> = std::sync::OnceLock::new();
    let mut ticketers = TICKETERS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let identity = (chain_pem.to_vec(), key_pem.to_vec());
    if let Some(ticketer) = ticketers.get(&identity) {
        return Ok(ticketer.clone());
    }
    let ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| InvalidTls(format!("session tickets: {e}")))?;
    ticketers.insert(identity, ticketer.clone());
    Ok(ticketer)
}

/// The suites `cipherSuites` names (IANA/Go names, `TLS_AES_128_GCM_SHA256`,
/// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`, ...), in its order. As in Xray, naming TLS 1.2
/// suites restricts TLS 1.2 to them; naming TLS 1.3 suites (which Go ignores) restricts and
/// orders TLS 1.3's too; a version none is named for keeps its defaults. A name this build
/// cannot offer is an error, never skipped.
pub fn cipher_suites(names: &[String]) -> Result<Vec<rustls::SupportedCipherSuite>, InvalidTls> {
    let all = provider().cipher_suites;
    let iana = |s: &rustls::SupportedCipherSuite| {
        let name = format!("{:?}", s.suite());
        match name.strip_prefix("TLS13_") {
            Some(rest) => format!("TLS_{rest}"),
            None => name,
        }
    };
    let mut chosen = Vec::new();
    for name in names {
        let suite = all.iter().find(|s| iana(s) == *name).ok_or_else(|| {
            let offered: Vec<String> = all.iter().map(iana).collect();
            InvalidTls(format!("cipherSuites: {name:?} is not offered here (it offers {})", offered.join(", ")))
        })?;
        chosen.push(*suite);
    }
    let named_13 = chosen.iter().any(|s| s.tls13().is_some());
    let named_12 = chosen.iter().any(|s| s.tls13().is_none());
    // A version no name mentions keeps all its suites, after the named ones.
    for suite in all {
        let keep = if suite.tls13().is_some() { !named_13 } else { !named_12 };
        if keep {
            chosen.push(suite);
        }
    }
    Ok(chosen)
}

// === client ===

/// Builds the client config of an outbound: the system's roots (or, with `allowInsecure`, any
/// certificate whose handshake signature checks out), ALPN in config order. Control calls
/// this once while validating; each shard builds its own copy.
pub fn client_config(spec: &shardray_core::spec::TlsClientSpec) -> Result<Arc<rustls::ClientConfig>, InvalidTls> {
    let provider = Arc::new(provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| InvalidTls(e.to_string()))?;
    let mut config = if spec.allow_insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))).with_no_client_auth()
    } else {
        builder.with_root_certificates(system_roots()).with_no_client_auth()
    };
    config.alpn_protocols = spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// The system's trusted roots, read once per process: `$SSL_CERT_FILE`, else the usual bundle
/// paths of Debian, Fedora and Alpine. Empty if none is found (every verification then fails,
/// naming the certificate).
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<rustls::RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = rustls::RootCertStore::empty();
            let env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
            let paths = env.into_iter().chain(
                ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"]
                    .map(std::path::PathBuf::from),
            );
            for path in paths {
                if let Ok(pem) = std::fs::read(&path) {
                    let mut reader = &pem[..];
                    store.add_parsable_certificates(rustls_pemfile::certs(&mut reader).filter_map(Result::ok));
                    break;
                }
            }
            Arc::new(store)
        })
        .clone()
}

/// `allowInsecure`: any certificate is accepted, but the handshake's signatures are still
/// checked against it, as upstream's `InsecureSkipVerify` does.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
