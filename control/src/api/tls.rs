//! The API over mutual TLS (`api.tls`): rustls (ring) under tonic's incoming stream. Every
//! client shows a certificate the configured CA signed; its subject CN names the caller, whose
//! role `api.tls.clients` gives. The CLI's side (`shardray api --tls-*`) is here too.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use shardray_core::log::LogSink;
use shardray_core::spec::{ApiTls, LogLevel};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes run at once at most.
const MAX_HANDSHAKES: usize = 256;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, (String, String)> {
    let named = |e: String| (format!("api.tls.{key}"), format!("{}: {e}", path.display()));
    let pem = std::fs::read(path).map_err(|e| named(e.to_string()))?;
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut &pem[..]).collect::<Result<_, _>>().map_err(|e| named(e.to_string()))?;
    if certs.is_empty() {
        return Err(named("no PEM certificate found".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, (String, String)> {
    let named = |e: String| (format!("api.tls.{key}"), format!("{}: {e}", path.display()));
    let pem = std::fs::read(path).map_err(|e| named(e.to_string()))?;
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| named(e.to_string()))?
        .ok_or_else(|| named("no PEM private key found".into()))
}

fn roots(certs: Vec<CertificateDer<'static>>, path: &str) -> Result<Arc<RootCertStore>, (String, String)> {
    let mut store = RootCertStore::empty();
    for cert in certs {
        store.add(cert).map_err(|e| (path.to_owned(), format!("not a CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// The server's TLS config for `api.tls`; an error names the key whose file is at fault.
pub fn server_config(tls: &ApiTls) -> Result<Arc<ServerConfig>, (String, String)> {
    let chain = read_certs(&tls.certificate_file, "certificateFile")?;
    let key = read_key(&tls.key_file, "keyFile")?;
    let ca = roots(read_certs(&tls.client_ca_file, "clientCaFile")?, "api.tls.clientCaFile")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(ca, provider())
        .build()
        .map_err(|e| ("api.tls.clientCaFile".to_owned(), e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("api.tls".to_owned(), e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ("api.tls.keyFile".to_owned(), format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What the layer learns of a TLS connection: the peer and its certificate's subject CN.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub remote: Option<SocketAddr>,
    /// The client certificate's subject CN (empty if it has none).
    pub subject: Arc<str>,
}

/// A client's TLS connection, as tonic serves it.
pub struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsInfo;

    fn connect_info(&self) -> TlsInfo {
        let (tcp, session) = self.0.get_ref();
        let subject =
            session.peer_certificates().and_then(|c| c.first()).and_then(|c| subject_cn(c)).unwrap_or_default();
        TlsInfo { remote: tcp.peer_addr().ok(), subject: subject.into() }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts on `listener` and hands tonic each connection whose handshake (client certificate
/// included) succeeded; handshakes run apart, at most `MAX_HANDSHAKES` at once (more are
/// closed at once), so a slow client holds no one else up. A failed one is logged with its
/// reason.
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: Arc<ServerConfig>,
    log: LogSink,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    log.error(LogLevel::Warning, format_args!("api: accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                break;
            }
            // Handshakes under way are bounded: past the bound a new connection is closed at
            // once, so that silent connections never stall the accept loop for everyone.
            let permit = match handshakes.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    log.error(
                        LogLevel::Info,
                        format_args!("api: refused {peer}: {MAX_HANDSHAKES} TLS handshakes under way"),
                    );
                    continue;
                }
                Err(tokio::sync::TryAcquireError::Closed) => break,
            };
            let (acceptor, tx, log) = (acceptor.clone(), tx.clone(), log.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsConn(tls))).await;
                    }
                    Ok(Err(e)) => log.error(LogLevel::Info, format_args!("api: refused {peer}: TLS handshake: {e}")),
                    Err(_) => log.error(LogLevel::Info, format_args!("api: refused {peer}: no TLS handshake in time")),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The subject CN of a DER certificate: Certificate → tbsCertificate → subject (the sixth
/// field counting the optional version), the attribute of type 2.5.4.3 in any of its RDNs,
/// multi-valued ones included. A subject with more than one CN (`CN=panel+CN=admin`), or one
/// whose CN is not text, names nobody: the role must never depend on which CN was read.
pub fn subject_cn(cert: &[u8]) -> Option<String> {
    const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
    // UTF8String, PrintableString, IA5String: what CAs write a CN in.
    const TEXT: [u8; 3] = [0x0c, 0x13, 0x16];
    let (_, cert, _) = der(cert)?;
    let (_, mut tbs, _) = der(cert)?;
    let mut fields = Vec::new();
    while !tbs.is_empty() {
        let (tag, body, rest) = der(tbs)?;
        fields.push((tag, body));
        tbs = rest;
    }
    // [0] version is optional; then serial, signature, issuer, validity, subject.
    let skip = usize::from(fields.first()?.0 == 0xa0);
    let (_, mut subject) = *fields.get(skip + 4)?;
    let mut found = None;
    while !subject.is_empty() {
        let (_, mut rdn, rest) = der(subject)?;
        subject = rest;
        while !rdn.is_empty() {
            let (_, attr, rest) = der(rdn)?;
            rdn = rest;
            let (_, oid, value) = der(attr)?;
            if oid != COMMON_NAME {
                continue;
            }
            let (tag, text, _) = der(value)?;
            if found.is_some() || !TEXT.contains(&tag) {
                return None;
            }
            found = Some(String::from_utf8(text.to_vec()).ok()?);
        }
    }
    found
}

/// One DER element: its tag, its contents, what follows.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, head) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = input.get(2..2 + n)?.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + n)
    };
    let body = input.get(head..head.checked_add(len)?)?;
    Some((tag, body, &input[head + len..]))
}

/// The CLI's TLS config: trusts `ca`, shows `cert` and `key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, String> {
    fn fail(flag: &'static str) -> impl Fn((String, String)) -> String {
        move |(_, e)| format!("{flag}: {e}")
    }
    let roots = roots(read_certs(ca, "").map_err(fail("--tls-ca"))?, "").map_err(fail("--tls-ca"))?;
    let chain = read_certs(cert, "").map_err(fail("--tls-cert"))?;
    let key = read_key(key, "").map_err(fail("--tls-key"))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("--tls-cert and --tls-key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Dials `addr` and runs the TLS handshake, checking the server's certificate for `name`.
pub async fn dial_owned(
    addr: String,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
    Ok(hyper_util::rt::TokioIo::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_cn_is_read_from_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["panel.example".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Example");
        params.distinguished_name.push(rcgen::DnType::CommonName, "panel-1");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(subject_cn(cert.der()).as_deref(), Some("panel-1"));
        assert_eq!(subject_cn(&cert.der()[..40]), None);
        assert_eq!(subject_cn(b""), None);
    }

    /// A certificate whose subject is `rdns` (each a SET of (OID, tagged value) attributes).
    fn with_subject(rdns: &[&[(&[u8], u8, &str)]]) -> Vec<u8> {
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            assert!(body.len() < 0x80);
            [&[tag, body.len() as u8][..], body].concat()
        }
        let subject: Vec<u8> = rdns
            .iter()
            .flat_map(|rdn| {
                let attrs: Vec<u8> = rdn
                    .iter()
                    .flat_map(|(oid, tag, text)| tlv(0x30, &[tlv(0x06, oid), tlv(*tag, text.as_bytes())].concat()))
                    .collect();
                tlv(0x31, &attrs)
            })
            .collect();
        // version, serial, signature algorithm, issuer, validity (contents never read), subject.
        let tbs = [
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[1]),
            tlv(0x30, &[]),
            tlv(0x30, &[]),
            tlv(0x30, &[]),
            tlv(0x30, &subject),
        ]
        .concat();
        tlv(0x30, &tlv(0x30, &tbs))
    }

    #[test]
    fn a_cn_in_a_multi_valued_rdn_is_found_and_two_cns_name_nobody() {
        const CN: &[u8] = &[0x55, 0x04, 0x03];
        const O: &[u8] = &[0x55, 0x04, 0x0a];
        // O=Example+CN=panel-1: the CN second in its set.
        assert_eq!(
            subject_cn(&with_subject(&[&[(O, 0x0c, "Example"), (CN, 0x0c, "panel-1")]])).as_deref(),
            Some("panel-1")
        );
        // CN=panel-1+CN=admin, or one CN per RDN: ambiguous, so no identity.
        assert_eq!(subject_cn(&with_subject(&[&[(CN, 0x0c, "panel-1"), (CN, 0x0c, "admin")]])), None);
        assert_eq!(subject_cn(&with_subject(&[&[(CN, 0x13, "panel-1")], &[(CN, 0x0c, "admin")]])), None);
        // A CN that is not text (a BMPString here) names nobody either.
        assert_eq!(subject_cn(&with_subject(&[&[(CN, 0x1e, "ab")]])), None);
        assert_eq!(subject_cn(&with_subject(&[&[(O, 0x0c, "Example")]])), None);
    }
}
