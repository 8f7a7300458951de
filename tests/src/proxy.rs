//! SOCKS5 and HTTP proxy clients of our own, built on the `wire` codecs, and configs with a
//! SOCKS or HTTP inbound, for driving the proxy in tests.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use serde_json::Value;
use shardray_wire::addr::Destination;
use shardray_wire::socks::{self, method, Command, Credentials, Request};

use crate::vless::connect;

/// `vless_config` with a SOCKS inbound `socks-in` instead: `settings` are its settings
/// (`auth`, `accounts`, `udp`, ...), `inbound_extra` as for `vless_config`.
pub fn socks_config(settings: Value, inbound_extra: Value) -> Value {
    proxy_config("socks", settings, inbound_extra)
}

/// `vless_config` with an HTTP inbound `http-in` instead: `settings` are its settings
/// (`accounts`, `allowTransparent`, ...), `inbound_extra` as for `vless_config`.
pub fn http_config(settings: Value, inbound_extra: Value) -> Value {
    proxy_config("http", settings, inbound_extra)
}

fn proxy_config(protocol: &str, settings: Value, inbound_extra: Value) -> Value {
    let mut config = crate::vless_config(serde_json::json!([]), inbound_extra);
    let inbound = &mut config["inbounds"][0];
    inbound["tag"] = format!("{protocol}-in").into();
    inbound["protocol"] = protocol.into();
    let merged = inbound["settings"].as_object_mut().unwrap();
    merged.clear();
    for (k, v) in settings.as_object().unwrap() {
        merged.insert(k.clone(), v.clone());
    }
    config
}

/// Reads exactly what a decoder needs from `s`, one byte at a time past what it has (replies
/// are short); `Err` with the decoder's error when it refuses.
fn read_message<T>(
    s: &mut impl Read,
    mut decode: impl FnMut(&mut &[u8]) -> Result<T, socks::SocksError>,
) -> io::Result<T> {
    let mut data = Vec::new();
    loop {
        let mut cur = &data[..];
        match decode(&mut cur) {
            Ok(v) => return Ok(v),
            Err(socks::SocksError::UnexpectedEnd) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string())),
        }
        let mut b = [0u8];
        if s.read(&mut b)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        data.push(b[0]);
    }
}

/// A SOCKS5 CONNECT to `dest` through `proxy`, with username and password when given; the
/// stream once the proxy answered success. A refusal is `ConnectionRefused` naming the code.
pub fn socks5(proxy: SocketAddr, credentials: Option<(&str, &str)>, dest: Destination) -> io::Result<TcpStream> {
    let mut s = connect(proxy)?;
    socks5_over(&mut s, credentials, dest)?;
    Ok(s)
}

/// `socks5`'s handshake over any stream (TLS, say).
pub fn socks5_over<S: Read + Write>(s: &mut S, credentials: Option<(&str, &str)>, dest: Destination) -> io::Result<()> {
    let offered = if credentials.is_some() { method::PASSWORD } else { method::NO_AUTH };
    let mut out = Vec::new();
    socks::encode_greeting(&[offered], &mut out);
    s.write_all(&out)?;
    read_message(s, socks::decode_method_reply)?;
    if let Some((username, password)) = credentials {
        out.clear();
        Credentials { username: username.as_bytes(), password: password.as_bytes() }.encode(&mut out).unwrap();
        s.write_all(&out)?;
        read_message(s, socks::decode_auth_reply)?;
    }
    out.clear();
    Request { command: Command::Connect, destination: dest }.encode(&mut out);
    s.write_all(&out)?;
    read_message(s, socks::decode_reply)?;
    Ok(())
}

/// An HTTP CONNECT to `dest` through `proxy` with Basic credentials when given; the stream
/// once the proxy answered 200, else `ConnectionRefused` with the status line.
pub fn http_connect(proxy: SocketAddr, credentials: Option<(&str, &str)>, dest: Destination) -> io::Result<TcpStream> {
    let mut s = connect(proxy)?;
    let mut out = Vec::new();
    shardray_wire::http::encode_connect(&dest, credentials, &[], &mut out);
    s.write_all(&out)?;
    let head = read_head(&mut s)?;
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(io::Error::new(io::ErrorKind::ConnectionRefused, String::from_utf8_lossy(&head).into_owned()));
    }
    Ok(s)
}

/// Reads a response head, byte by byte, up to and including its blank line.
pub fn read_head(s: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8];
        if s.read(&mut b)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, String::from_utf8_lossy(&head).into_owned()));
        }
        head.push(b[0]);
    }
    Ok(head)
}

/// Writes `data` on a second thread while reading `data.len()` bytes back: an echo through
/// the stream, without the two directions waiting on each other.
pub fn echo_through(s: &mut TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut w = s.try_clone()?;
    let sent = data.to_vec();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let mut back = vec![0u8; data.len()];
    let read = s.read_exact(&mut back);
    writer.join().unwrap()?;
    read.map(|_| back)
}

/// An HTTP origin server: answers every request on a connection (until `Connection: close`)
/// with 200 and a body naming itself and the request line, and records each request head.
pub struct OriginServer {
    addr: SocketAddr,
    heads: std::sync::mpsc::Receiver<String>,
}

impl OriginServer {
    /// Starts on an ephemeral loopback port; `name` starts every body.
    pub fn start(name: &'static str) -> OriginServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, heads) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let tx = tx.clone();
                std::thread::spawn(move || loop {
                    let Ok(head) = read_head(&mut conn) else { return };
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; length];
                    if conn.read_exact(&mut body).is_err() {
                        return;
                    }
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    let close = head.to_ascii_lowercase().contains("\r\nconnection: close\r\n");
                    let _ = tx.send(head);
                    let reply = format!("{name} {line} {}", String::from_utf8_lossy(&body));
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Origin: {name}\r\n\r\n{reply}",
                        reply.len()
                    );
                    if conn.write_all(response.as_bytes()).is_err() || close {
                        return;
                    }
                });
            }
        });
        OriginServer { addr, heads }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next request head it received, waiting up to `within`.
    pub fn next(&self, within: std::time::Duration) -> Option<String> {
        self.heads.recv_timeout(within).ok()
    }
}
