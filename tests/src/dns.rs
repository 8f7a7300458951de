//! A tiny DNS server for tests (UDP and TCP on 127.0.0.1, random ports): answers A queries
//! from a table, AAAA with an empty answer, unknown names with NXDOMAIN (names under
//! `servfail.` with SERVFAIL); counts every query and may wait before answering. Plus the few
//! bytes a test client needs to ask and read.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running test DNS server.
pub struct DnsServer {
    udp: SocketAddr,
    tcp: SocketAddr,
    asked: Arc<Mutex<Vec<(String, u16, bool)>>>,
    table: Arc<Table>,
}

/// What the server answers.
struct Table {
    names: HashMap<String, Vec<Ipv4Addr>>,
    delay: Duration,
    ttl: u32,
}

impl DnsServer {
    /// Answers `names` (lowercase, no trailing dot) at once, with a TTL of 300 s.
    pub fn start(names: &[(&str, Ipv4Addr)]) -> DnsServer {
        DnsServer::start_with(names, Duration::ZERO)
    }

    /// Answers `names` after `delay` each (every query in a thread of its own).
    pub fn start_with(names: &[(&str, Ipv4Addr)], delay: Duration) -> DnsServer {
        DnsServer::start_full(names, delay, 300)
    }

    /// Answers `names` at once, with a TTL of `ttl` seconds.
    pub fn start_with_ttl(names: &[(&str, Ipv4Addr)], ttl: u32) -> DnsServer {
        DnsServer::start_full(names, Duration::ZERO, ttl)
    }

    fn start_full(names: &[(&str, Ipv4Addr)], delay: Duration, ttl: u32) -> DnsServer {
        let mut table = HashMap::<String, Vec<Ipv4Addr>>::new();
        for (name, ip) in names {
            table.entry(name.to_string()).or_default().push(*ip);
        }
        let table = Arc::new(Table { names: table, delay, ttl });
        let asked = Arc::new(Mutex::new(Vec::new()));
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_addr = udp.local_addr().unwrap();
        let (t, a) = (table.clone(), asked.clone());
        std::thread::spawn(move || {
            let udp = Arc::new(udp);
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let (query, t, a, udp) = (buf[..n].to_vec(), t.clone(), a.clone(), udp.clone());
                std::thread::spawn(move || {
                    if let Some(reply) = answer(&t, &a, &query, false) {
                        let _ = udp.send_to(&reply, from);
                    }
                });
            }
        });
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let (t, a) = (table.clone(), asked.clone());
        std::thread::spawn(move || {
            for conn in tcp.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (t, a) = (t.clone(), a.clone());
                std::thread::spawn(move || {
                    while let Ok(query) = read_framed(&mut conn) {
                        if let Some(reply) = answer(&t, &a, &query, true) {
                            if write_framed(&mut conn, &reply).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        DnsServer { udp: udp_addr, tcp: tcp_addr, asked, table }
    }

    /// Serves the same table as DNS over TLS with `cert` (counted as TCP queries); the address.
    pub fn serve_tls(&self, cert: &crate::tls::SelfSigned) -> SocketAddr {
        use rustls::pki_types::pem::PemObject;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key_file).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert_der.clone()], key)
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (t, a) = (self.table.clone(), self.asked.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (t, a, config) = (t.clone(), a.clone(), config.clone());
                std::thread::spawn(move || {
                    let Ok(server) = rustls::ServerConnection::new(config) else { return };
                    let mut tls = rustls::StreamOwned::new(server, conn);
                    while let Ok(query) = read_framed(&mut tls) {
                        if let Some(reply) = answer(&t, &a, &query, true) {
                            if write_framed(&mut tls, &reply).and_then(|_| tls.flush()).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// The UDP address.
    pub fn udp(&self) -> SocketAddr {
        self.udp
    }

    /// The TCP address.
    pub fn tcp(&self) -> SocketAddr {
        self.tcp
    }

    /// How many queries for `name` (any type) arrived so far.
    pub fn queries(&self, name: &str) -> usize {
        self.asked.lock().unwrap().iter().filter(|(n, _, _)| n == name).count()
    }

    /// How many queries for `name` came over TCP.
    pub fn tcp_queries(&self, name: &str) -> usize {
        self.asked.lock().unwrap().iter().filter(|(n, _, tcp)| n == name && *tcp).count()
    }

    /// Every query so far, as (name, type).
    pub fn all_queries(&self) -> Vec<(String, u16)> {
        self.asked.lock().unwrap().iter().map(|(n, t, _)| (n.clone(), *t)).collect()
    }
    /// Serves the same table as DNS over HTTPS (HTTP/2 POSTs to `path`; anything else is 404)
    /// with `cert` (counted as TCP queries); the address.
    pub fn serve_https(&self, cert: &crate::tls::SelfSigned, path: &'static str) -> SocketAddr {
        use rustls::pki_types::pem::PemObject;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key_file).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert_der.clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (t, a) = (self.table.clone(), self.asked.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((conn, _)) = listener.accept().await {
                    let (t, a, acceptor) = (t.clone(), a.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(conn).await else { return };
                        let Ok(mut h2) = h2::server::handshake(tls).await else { return };
                        while let Some(Ok((request, mut respond))) = h2.accept().await {
                            let (t, a) = (t.clone(), a.clone());
                            tokio::spawn(async move {
                                let wanted = request.uri().path() == path && request.method() == http::Method::POST;
                                let mut body = request.into_body();
                                let mut query = Vec::new();
                                while let Some(Ok(chunk)) = body.data().await {
                                    let _ = body.flow_control().release_capacity(chunk.len());
                                    query.extend_from_slice(&chunk);
                                }
                                let reply = if wanted { answer(&t, &a, &query, true) } else { None };
                                let status = if reply.is_some() { 200 } else { 404 };
                                let head = http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/dns-message")
                                    .body(())
                                    .unwrap();
                                let Ok(mut stream) = respond.send_response(head, false) else { return };
                                let _ = stream.send_data(bytes::Bytes::from(reply.unwrap_or_default()), true);
                            });
                        }
                    });
                }
            });
        });
        addr
    }
}

fn answer(table: &Table, asked: &Mutex<Vec<(String, u16, bool)>>, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let (name, qtype, question_end) = parse_question(query)?;
    asked.lock().unwrap().push((name.clone(), qtype, tcp));
    if !table.delay.is_zero() {
        std::thread::sleep(table.delay);
    }
    let found = table.names.get(&name);
    let ips: &[Ipv4Addr] = match (found, qtype) {
        (Some(ips), 1) => ips,
        _ => &[],
    };
    let rcode = match found {
        _ if name.starts_with("servfail.") => 2,
        None => 3,
        Some(_) => 0,
    };
    let mut out = Vec::new();
    out.extend_from_slice(&query[0..2]);
    out.extend_from_slice(&[0x81, 0x80 | rcode]);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(ips.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..question_end]);
    for ip in ips {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        out.extend_from_slice(&table.ttl.to_be_bytes());
        out.extend_from_slice(&[0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// The question of a DNS message: its name (lowercase, no trailing dot), its type and where
/// the question ends.
pub fn parse_question(msg: &[u8]) -> Option<(String, u16, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}

/// A query for `name` of type `qtype` (1 A, 28 AAAA, 16 TXT...) with id `id`.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    out
}

/// A response's id, rcode and A answers.
pub fn parse_response(msg: &[u8]) -> Option<(u16, u8, Vec<Ipv4Addr>)> {
    let id = u16::from_be_bytes([*msg.first()?, *msg.get(1)?]);
    let rcode = msg.get(3)? & 0x0f;
    let answers = u16::from_be_bytes([*msg.get(6)?, *msg.get(7)?]);
    let (_, _, mut at) = parse_question(msg)?;
    let mut ips = Vec::new();
    for _ in 0..answers {
        // The name: a pointer, or labels.
        if msg.get(at)? & 0xc0 == 0xc0 {
            at += 2;
        } else {
            while *msg.get(at)? != 0 {
                at += 1 + usize::from(*msg.get(at)?);
            }
            at += 1;
        }
        let rtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
        let rdlen = usize::from(u16::from_be_bytes([*msg.get(at + 8)?, *msg.get(at + 9)?]));
        at += 10;
        if rtype == 1 && rdlen == 4 {
            let b = msg.get(at..at + 4)?;
            ips.push(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
        }
        at += rdlen;
    }
    Some((id, rcode, ips))
}

/// Reads one length-prefixed DNS message (TCP framing).
pub fn read_framed(s: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(head))];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// Writes one length-prefixed DNS message.
pub fn write_framed(s: &mut impl Write, msg: &[u8]) -> io::Result<()> {
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    s.write_all(&framed)
}
