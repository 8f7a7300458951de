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
    pub client: Arc<ClientConfig>,
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
        let client = client_config(ca.der().clone())?;
        Ok(TlsMaterial { files, client })
    }
}

/// Client settings that trust only `ca`: TLS 1.3 with AES-128-GCM, ALPN [`ALPN`], no
/// resumption.
pub fn client_config(ca: CertificateDer<'static>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).context("trusting the generated CA")?;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.as_bytes().to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A client TLS session over a TCP stream, handshake done.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Runs the handshake for [`SERVER_NAME`] over `sock` (its timeouts apply) and checks the
/// server chose [`ALPN`].
pub fn handshake(config: &Arc<ClientConfig>, mut sock: TcpStream) -> io::Result<TlsStream> {
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut conn = ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    if conn.alpn_protocol() != Some(ALPN.as_bytes()) {
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
    pub fn open(sock: TcpStream, tls: Option<&Arc<ClientConfig>>) -> io::Result<ProxyStream> {
        Ok(match tls {
            Some(config) => ProxyStream::Tls(Box::new(handshake(config, sock)?)),
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
}
