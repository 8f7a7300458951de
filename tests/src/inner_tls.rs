//! Payloads Vision treats apart: an inner TLS 1.3 session (which goes direct) to a TLS echo
//! server of its own, and plain bytes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned};

/// A TLS 1.3 echo server for `echo.test`, and a client config that trusts it.
pub fn tls13_echo() -> (SocketAddr, Arc<ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["echo.test".to_owned()]).unwrap();
    let der: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let server = Arc::new(server);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { continue };
            let server = server.clone();
            std::thread::spawn(move || {
                let _ = sock.set_read_timeout(Some(Duration::from_secs(30)));
                let conn = ServerConnection::new(server).unwrap();
                let mut tls = StreamOwned::new(conn, sock);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                tls.conn.send_close_notify();
                let _ = tls.flush();
                let _ = tls.sock.shutdown(Shutdown::Both);
            });
        }
    });
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (addr, Arc::new(config))
}

/// An inner TLS 1.3 session over `sock` (a proxy's door to `tls13_echo`): sends `data` from a
/// writer thread while reading, until as many plaintext bytes came back; then close_notify.
pub fn inner_tls_over(mut sock: TcpStream, config: Arc<ClientConfig>, data: Vec<u8>) -> io::Result<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut conn =
        ClientConnection::new(config, ServerName::try_from("echo.test").unwrap()).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    let len = data.len();
    let conn = Arc::new(Mutex::new(conn));
    let mut write_sock = sock.try_clone()?;
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
            Ok(())
        })
    };
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < len {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut c = conn.lock().unwrap();
        let mut input = &buf[..n];
        while !input.is_empty() {
            c.read_tls(&mut input)?;
            let state = c.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let mut plain = vec![0u8; state.plaintext_bytes_to_read()];
            c.reader().read_exact(&mut plain)?;
            got.extend_from_slice(&plain);
        }
    }
    writer.join().expect("writer thread")?;
    let mut c = conn.lock().unwrap();
    c.send_close_notify();
    let mut tls = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut tls)?;
    }
    let _ = sock.write_all(&tls);
    let _ = sock.shutdown(Shutdown::Both);
    Ok(got)
}

/// Sends `data` over `stream` while reading; what came back once as many bytes arrived (or
/// the stream ended).
pub fn plain_over(stream: TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut write_half = stream.try_clone()?;
    let len = data.len();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || write_half.write_all(&data));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < len {
        match (&stream).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    writer.join().expect("writer thread")?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok(got)
}
