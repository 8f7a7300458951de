//! Builds a rustls server config from the validated TLS settings.

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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| InvalidTls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| InvalidTls(format!("certificate and key: {e}")))?;
    config.alpn_protocols = spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}
