//! VLESS over TLS for the harness: a throwaway CA and a `localhost` certificate it signs,
//! generated once per invocation and written where the targets' configs point, and the rustls
//! client settings that trust exactly that CA.
//!
//! Every target is held to the same handshake by the client: TLS 1.3 only, one cipher suite
//! (AES-128-GCM), ALPN `http/1.1`, and no session resumption, so each connection pays for a
//! full handshake whatever the server offers.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// The name the certificate is issued for, and the SNI the client sends.
pub const SERVER_NAME: &str = "localhost";

/// The one ALPN protocol the servers announce and the client offers.
pub const ALPN: &str = "http/1.1";

/// How the protocol is named in reports and saved JSON.
#[cfg(test)]
pub const PROTOCOL_TLS: &str = "vless-tls";

/// How plain VLESS over TCP is named in reports and saved JSON.
pub const PROTOCOL_PLAIN: &str = "vless";

/// The certificate and key files a target's TLS inbound serves, as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The leaf certificate followed by the CA that signed it.
    pub cert_file: PathBuf,
    /// The leaf's private key (PKCS#8).
    pub key_file: PathBuf,
}

/// The server files and the matching client settings of one invocation.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// What the servers load.
    pub files: TlsFiles,
    /// What our clients connect with.
    pub client: TlsClient,
}

/// How our clients open TLS to one target: the rustls settings, the name they ask for, and
/// whether the server must choose [`ALPN`].
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// TLS 1.3, AES-128-GCM, ALPN [`ALPN`] offered, no resumption; the trust differs.
    pub config: Arc<ClientConfig>,
    /// Sent as SNI (a DNS name) and checked against the certificate.
    pub server_name: ServerName<'static>,
    /// Fail the handshake unless the server chose [`ALPN`]. The targets we configure announce
    /// it; an external proxy may announce nothing.
    pub require_alpn: bool,
}

/// Where an external target's certificate is checked against.
#[derive(Debug, Clone)]
pub enum ExternalTrust {
    /// The CA certificates in this PEM file, and nothing else.
    CaFile(PathBuf),
    /// No check of the certificate at all (its handshake signature is still verified).
    Insecure,
}

impl TlsClient {
    /// Settings for an external target: `server_name` (a DNS name or an IP address) as SNI,
    /// trusting what `trust` says; ALPN is offered, not required.
    pub fn external(server_name: &str, trust: &ExternalTrust) -> Result<TlsClient> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| anyhow::anyhow!("{server_name:?} is not a DNS name or IP address: {e}"))?;
        let config = match trust {
            ExternalTrust::CaFile(path) => {
                use rustls::pki_types::pem::PemObject;
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect())
                    .with_context(|| format!("reading certificates from {}", path.display()))?;
                if certs.is_empty() {
                    anyhow::bail!("{} holds no PEM certificate", path.display());
                }
                client_config(certs)?
            }
            ExternalTrust::Insecure => insecure_client_config()?,
        };
        Ok(TlsClient { config, server_name, require_alpn: false })
    }
}

impl TlsMaterial {
    /// Generates a CA and a `localhost` certificate signed by it, writes the chain and key into
    /// `dir`, and builds a client config that trusts only that CA.
    pub fn generate(dir: &Path) -> Result<TlsMaterial> {
        let ca_key = rcgen::KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "shardray-bench CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca = ca_params.self_signed(&ca_key).context("signing the CA certificate")?;

        let leaf_key = rcgen::KeyPair::generate().context("generating the server key")?;
        let mut leaf_params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        leaf_params.distinguished_name.push(rcgen::DnType::CommonName, SERVER_NAME);
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).context("signing the server certificate")?;

        let files = TlsFiles { cert_file: dir.join("tls-chain.pem"), key_file: dir.join("tls-key.pem") };
        std::fs::write(&files.cert_file, format!("{}{}", leaf.pem(), ca.pem()))
            .with_context(|| format!("writing {}", files.cert_file.display()))?;
        std::fs::write(&files.key_file, leaf_key.serialize_pem())
            .with_context(|| format!("writing {}", files.key_file.display()))?;
        let config = client_config(vec![ca.der().clone()])?;
        let server_name = ServerName::try_from(SERVER_NAME).context("the server name")?.to_owned();
        Ok(TlsMaterial { files, client: TlsClient { config, server_name, require_alpn: true } })
    }
}

/// Client settings that trust only `cas`: TLS 1.3 with AES-128-GCM, ALPN [`ALPN`], no
/// resumption.
pub fn client_config(cas: Vec<CertificateDer<'static>>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca).context("trusting a CA certificate")?;
    }
    let config = provider_builder()?.with_root_certificates(roots).with_no_client_auth();
    Ok(finish_client_config(config))
}

/// The same settings, but any certificate is accepted: for an external target whose
/// certificate we cannot check (`--external-insecure`).
fn insecure_client_config() -> Result<Arc<ClientConfig>> {
    let verifier = Arc::new(AnyCertificate(Arc::new(provider())));
    let config = provider_builder()?.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    Ok(finish_client_config(config))
}

/// ring with the one cipher suite every client uses.
fn provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider
}

fn provider_builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>> {
    ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")
}

fn finish_client_config(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![ALPN.as_bytes().to_vec()];
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// Accepts whatever certificate the server presents, while still checking that the server
/// holds its key (the handshake signature).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
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

/// A client TLS session over a TCP stream, handshake done.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Runs the handshake for `client.server_name` over `sock` (its timeouts apply) and, where
/// required, checks the server chose [`ALPN`].
pub fn handshake(client: &TlsClient, mut sock: TcpStream) -> io::Result<TlsStream> {
    let mut conn =
        ClientConnection::new(Arc::clone(&client.config), client.server_name.clone()).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    if client.require_alpn && conn.alpn_protocol() != Some(ALPN.as_bytes()) {
        let got = conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("server chose ALPN {got:?}, not {ALPN:?}")));
    }
    Ok(StreamOwned::new(conn, sock))
}

/// Sends close_notify and flushes it, ignoring errors: the peer may already be gone.
pub fn close(stream: &mut TlsStream) {
    stream.conn.send_close_notify();
    let _ = stream.conn.complete_io(&mut stream.sock);
}

/// A client's connection to the proxy: plain TCP or TLS over it.
pub enum ProxyStream {
    /// VLESS straight over TCP.
    Plain(TcpStream),
    /// VLESS inside TLS.
    Tls(Box<TlsStream>),
}

impl ProxyStream {
    /// Wraps `sock` in TLS when `tls` is given (running the handshake), else leaves it plain.
    pub fn open(sock: TcpStream, tls: Option<&TlsClient>) -> io::Result<ProxyStream> {
        Ok(match tls {
            Some(client) => ProxyStream::Tls(Box::new(handshake(client, sock)?)),
            None => ProxyStream::Plain(sock),
        })
    }

    /// Ends the session politely (close_notify under TLS); the socket closes on drop.
    pub fn close(&mut self) {
        if let ProxyStream::Tls(s) = self {
            close(s);
        }
    }
}

impl Read for ProxyStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ProxyStream::Plain(s) => s.read(buf),
            ProxyStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for ProxyStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ProxyStream::Plain(s) => s.write(buf),
            ProxyStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ProxyStream::Plain(s) => s.flush(),
            ProxyStream::Tls(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A one-connection rustls server on loopback serving `files`, echoing what it reads.
    fn echo_server(files: &TlsFiles) -> std::net::SocketAddr {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::PrivateKeyDer;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&files.cert_file).unwrap().collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&files.key_file).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![ALPN.as_bytes().to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut s = StreamOwned::new(conn, sock);
            let mut buf = [0u8; 5];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
                let _ = s.flush();
            }
        });
        addr
    }

    /// An empty directory of its own for one test.
    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shardray-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_client_trusts_the_generated_chain_and_speaks_tls13() {
        let dir = fresh_dir("tls-trust");
        let material = TlsMaterial::generate(&dir).unwrap();
        let addr = echo_server(&material.files);
        let sock = TcpStream::connect(addr).unwrap();
        let mut s = ProxyStream::open(sock, Some(&material.client)).unwrap();
        s.write_all(b"hello").unwrap();
        s.flush().unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");
        let ProxyStream::Tls(tls) = &s else { panic!("plain stream") };
        assert_eq!(tls.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        s.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_client_trusting_another_ca_refuses_the_server() {
        let (a, b) = (fresh_dir("tls-ca-a"), fresh_dir("tls-ca-b"));
        let served = TlsMaterial::generate(&a).unwrap();
        let other = TlsMaterial::generate(&b).unwrap();
        let addr = echo_server(&served.files);
        let sock = TcpStream::connect(addr).unwrap();
        assert!(ProxyStream::open(sock, Some(&other.client)).is_err());
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }

    /// A round trip through `echo_server` with `client`.
    fn round_trip(files: &TlsFiles, client: &TlsClient) -> io::Result<()> {
        let addr = echo_server(files);
        let sock = TcpStream::connect(addr)?;
        let mut s = ProxyStream::open(sock, Some(client))?;
        s.write_all(b"hello")?;
        s.flush()?;
        let mut back = [0u8; 5];
        s.read_exact(&mut back)?;
        assert_eq!(&back, b"hello");
        Ok(())
    }

    #[test]
    fn external_settings_check_the_given_ca_and_name_or_nothing_when_insecure() {
        let (a, b) = (fresh_dir("tls-ext-a"), fresh_dir("tls-ext-b"));
        let served = TlsMaterial::generate(&a).unwrap();
        let other = TlsMaterial::generate(&b).unwrap();
        // The chain file ends with the CA, so it serves as a CA file too.
        let trust = ExternalTrust::CaFile(served.files.cert_file.clone());
        round_trip(&served.files, &TlsClient::external("localhost", &trust).unwrap()).unwrap();
        // A name the certificate lacks, or another CA, fails.
        assert!(round_trip(&served.files, &TlsClient::external("example.com", &trust).unwrap()).is_err());
        let wrong = ExternalTrust::CaFile(other.files.cert_file.clone());
        assert!(round_trip(&served.files, &TlsClient::external("localhost", &wrong).unwrap()).is_err());
        // Insecure accepts any of it, even an IP address the certificate does not name.
        let insecure = TlsClient::external("127.0.0.1", &ExternalTrust::Insecure).unwrap();
        round_trip(&served.files, &insecure).unwrap();
        // A file without certificates is refused up front.
        let err = TlsClient::external("localhost", &ExternalTrust::CaFile(served.files.key_file.clone())).unwrap_err();
        assert!(format!("{err:#}").contains("no PEM certificate"), "{err:#}");
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }
}
