//! TLS for end-to-end tests: a self-signed certificate on disk, the inbound `streamSettings`
//! that serve it, and a rustls client that trusts exactly that certificate.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};

/// A self-signed certificate and its key, written as PEM files.
pub struct SelfSigned {
    /// The certificate in DER, for a client's root store.
    pub cert_der: CertificateDer<'static>,
    /// The private key in PKCS#8 DER, for a rustls server of the test's own.
    key_pkcs8: Vec<u8>,
    /// Path of the PEM certificate.
    pub cert_file: PathBuf,
    /// Path of the PEM private key.
    pub key_file: PathBuf,
}

impl SelfSigned {
    /// Generates a certificate for `names` and writes `cert.pem` and `key.pem` into `dir`.
    pub fn generate(dir: &Path, names: &[&str]) -> SelfSigned {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).expect("generate certificate");
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        std::fs::write(&cert_file, certified.cert.pem()).unwrap();
        std::fs::write(&key_file, certified.key_pair.serialize_pem()).unwrap();
        let key_pkcs8 = certified.key_pair.serialize_der();
        SelfSigned { cert_der: certified.cert.der().clone(), key_pkcs8, cert_file, key_file }
    }

    /// The private key, for a rustls server of the test's own.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_pkcs8.clone().into())
    }

    /// Inbound `streamSettings` serving this certificate over TLS with `server_name` and `alpn`.
    pub fn stream_settings(&self, server_name: &str, alpn: &[&str]) -> Value {
        json!({
            "network": "tcp",
            "security": "tls",
            "tlsSettings": {
                "serverName": server_name,
                "alpn": alpn,
                "certificates": [{
                    "certificateFile": self.cert_file.to_str().unwrap(),
                    "keyFile": self.key_file.to_str().unwrap(),
                }],
            },
        })
    }

    /// A client config that trusts only this certificate and offers `alpn`.
    pub fn client_config(&self, alpn: &[&str]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der.clone()).expect("add root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

/// A completed TLS client session over TCP (read and write timeouts of 20 s).
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr`, and completes a TLS handshake for `server_name` with `config`.
pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>, server_name: &str) -> io::Result<TlsStream> {
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))?;
    sock.set_write_timeout(Some(Duration::from_secs(20)))?;
    sock.set_nodelay(true)?;
    let name =
        ServerName::try_from(server_name.to_owned()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(StreamOwned::new(conn, sock))
}

/// The ALPN protocol the server chose, as text.
pub fn negotiated_alpn(stream: &TlsStream) -> Option<String> {
    stream.conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())
}

/// Sends `data` over the TLS session in 16 KiB records from a writer thread while reading on
/// this one, then closes the sending side (close_notify and a TCP half-close); returns every
/// plaintext byte received until the server's end of stream. A TCP close without close_notify
/// also ends the stream.
pub fn duplex_exchange(stream: TlsStream, data: Vec<u8>) -> io::Result<Vec<u8>> {
    let StreamOwned { conn, sock } = stream;
    let mut read_sock = sock.try_clone()?;
    let mut write_sock = sock;
    let conn = Arc::new(Mutex::new(conn));

    let writer = {
        let conn = conn.clone();
        std::thread::spawn(move || -> io::Result<()> {
            for chunk in data.chunks(16 * 1024) {
                let mut tls = Vec::new();
                {
                    let mut c = conn.lock().unwrap();
                    c.writer().write_all(chunk)?;
                    while c.wants_write() {
                        c.write_tls(&mut tls)?;
                    }
                }
                write_sock.write_all(&tls)?;
            }
            let mut tls = Vec::new();
            {
                let mut c = conn.lock().unwrap();
                c.send_close_notify();
                while c.wants_write() {
                    c.write_tls(&mut tls)?;
                }
            }
            write_sock.write_all(&tls)?;
            write_sock.shutdown(Shutdown::Write)
        })
    };

    let mut received = Vec::new();
    let read_result = read_plaintext(&conn, &mut read_sock, &mut received);
    let write_result = writer.join().expect("writer thread");
    read_result?;
    write_result?;
    Ok(received)
}

/// Reads TLS records from `sock` into `conn` and appends their plaintext to `out`, until the
/// peer's close_notify or its TCP end of stream.
fn read_plaintext(conn: &Mutex<ClientConnection>, sock: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            // The peer closed TCP: what was decrypted so far is all there is.
            return Ok(());
        }
        let mut c = conn.lock().unwrap();
        let mut input = &buf[..n];
        while !input.is_empty() {
            c.read_tls(&mut input)?;
            let state = c.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let mut plain = vec![0u8; state.plaintext_bytes_to_read()];
            c.reader().read_exact(&mut plain)?;
            out.extend_from_slice(&plain);
            if state.peer_has_closed() {
                return Ok(());
            }
        }
    }
}
