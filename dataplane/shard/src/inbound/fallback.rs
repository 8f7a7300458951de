//! Fallbacks: a connection that is not valid VLESS is handed, bytes unchanged, to another
//! server chosen by TLS server name, ALPN and HTTP path, as upstream does.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpStream, UnixStream};
use shardray_core::spec::{FallbackDest, FallbackSpec, LogLevel};

use super::ConnInfo;
use crate::ctx::{InboundRt, ShardCtx};
use crate::outbound::resolve;
use crate::relay::{relay, NoMeter, RelayOptions};

pub(super) async fn serve<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    fallbacks: &[FallbackSpec],
    mut client: S,
    first: &[u8],
    info: &ConnInfo,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let alpn = info.alpn.as_deref().and_then(|a| std::str::from_utf8(a).ok()).unwrap_or("");
    let Some(fb) = choose(fallbacks, info.sni.as_deref().unwrap_or(""), alpn, first) else {
        return;
    };
    let policy = ctx.policy(0);
    let mut preamble = if fb.xver == 0 {
        Vec::new()
    } else {
        match info.local() {
            Ok(local) => proxy_header(fb.xver, info.peer, local),
            Err(e) => {
                let (tag, peer) = (&inbound.tag, info.peer);
                ctx.log.error(LogLevel::Info, format_args!("[{tag}] {peer} fallback failed: no local address: {e}"));
                return;
            }
        }
    };
    preamble.extend_from_slice(first);
    let result = match &fb.dest {
        FallbackDest::Tcp(dest) => match connect_tcp(dest).await {
            Ok(mut up) => match up.write_all(&preamble).await {
                Ok(()) => relay(&mut client, &mut up, RelayOptions::new(&policy), &mut NoMeter).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        FallbackDest::Unix(path) => match UnixStream::connect(path).await {
            Ok(mut up) => match up.write_all(&preamble).await {
                Ok(()) => relay(&mut client, &mut up, RelayOptions::new(&policy), &mut NoMeter).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e.into()),
        },
    };
    if let Err(e) = result {
        ctx.log.error(LogLevel::Info, format_args!("[{}] {} fallback failed: {}", inbound.tag, info.peer, e));
    }
}

async fn connect_tcp(dest: &shardray_wire::addr::Destination) -> io::Result<TcpStream> {
    let addrs = resolve(&dest.addr, dest.port, Default::default()).await?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

/// Picks the fallback: by server name (else the unnamed ones), then by ALPN (else those
/// without), then by the HTTP path of the first request (else the one without a path).
fn choose<'a>(fallbacks: &'a [FallbackSpec], sni: &str, alpn: &str, first: &[u8]) -> Option<&'a FallbackSpec> {
    let name = if fallbacks.iter().any(|f| f.name == sni) { sni } else { "" };
    let by_name = || fallbacks.iter().filter(move |f| f.name == name);
    let alpn = if by_name().any(|f| f.alpn == alpn) { alpn } else { "" };
    let by_alpn = || by_name().filter(move |f| f.alpn == alpn);
    if let Some(path) = http_path(first) {
        if let Some(f) = by_alpn().find(|f| !f.path.is_empty() && f.path == path) {
            return Some(f);
        }
    }
    by_alpn().find(|f| f.path.is_empty())
}

/// The path of an HTTP/1 request line at the start of `first`, without its query.
fn http_path(first: &[u8]) -> Option<&str> {
    let line_end = first.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(first.len());
    let line = std::str::from_utf8(&first[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let _method = parts.next()?;
    let target = parts.next()?;
    if !target.starts_with('/') {
        return None;
    }
    Some(target.split('?').next().unwrap_or(target))
}

/// A PROXY protocol header (v1 text or v2 binary) naming the client, or nothing for xver 0.
fn proxy_header(xver: u8, peer: SocketAddr, local: SocketAddr) -> Vec<u8> {
    match xver {
        1 => {
            let family = if peer.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {} {} {} {} {}\r\n", family, peer.ip(), local.ip(), peer.port(), local.port()).into_bytes()
        }
        2 => {
            let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            out.push(0x21); // version 2, PROXY command
            match (peer, local) {
                (SocketAddr::V4(p), SocketAddr::V4(l)) => {
                    out.push(0x11); // TCP over IPv4
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&p.ip().octets());
                    out.extend_from_slice(&l.ip().octets());
                }
                _ => {
                    let v6 = |a: SocketAddr| match a {
                        SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
                        SocketAddr::V6(a) => *a.ip(),
                    };
                    out.push(0x21); // TCP over IPv6
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(peer).octets());
                    out.extend_from_slice(&v6(local).octets());
                }
            }
            out.extend_from_slice(&peer.port().to_be_bytes());
            out.extend_from_slice(&local.port().to_be_bytes());
            out
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardray_wire::addr::Destination;

    fn fb(name: &str, alpn: &str, path: &str, port: u16) -> FallbackSpec {
        FallbackSpec {
            name: name.into(),
            alpn: alpn.into(),
            path: path.into(),
            dest: FallbackDest::Tcp(Destination::from(SocketAddr::from(([127, 0, 0, 1], port)))),
            xver: 0,
        }
    }

    fn port(f: Option<&FallbackSpec>) -> u16 {
        match &f.unwrap().dest {
            FallbackDest::Tcp(d) => d.port,
            FallbackDest::Unix(_) => 0,
        }
    }

    #[test]
    fn chooses_by_name_alpn_then_path() {
        let fbs = vec![fb("", "", "", 1), fb("", "", "/ws", 2), fb("", "h2", "", 3), fb("a.com", "", "", 4)];
        assert_eq!(port(choose(&fbs, "", "", b"GET / HTTP/1.1\r\n")), 1);
        assert_eq!(port(choose(&fbs, "", "", b"GET /ws?x=1 HTTP/1.1\r\n")), 2);
        assert_eq!(port(choose(&fbs, "", "h2", b"PRI * HTTP/2.0\r\n")), 3);
        assert_eq!(port(choose(&fbs, "a.com", "h2", b"\x16\x03")), 4);
        assert_eq!(port(choose(&fbs, "b.com", "", b"\x00")), 1);
    }

    #[test]
    fn proxy_headers() {
        let peer: SocketAddr = "1.2.3.4:5678".parse().unwrap();
        let local: SocketAddr = "5.6.7.8:443".parse().unwrap();
        assert_eq!(proxy_header(1, peer, local), b"PROXY TCP4 1.2.3.4 5.6.7.8 5678 443\r\n");
        let v2 = proxy_header(2, peer, local);
        assert_eq!(v2.len(), 16 + 12);
        assert_eq!(&v2[12..16], &[0x21, 0x11, 0, 12]);
        assert!(proxy_header(0, peer, local).is_empty());
    }
}
