//! What happens to a connection whose first bytes are not a valid request, for every
//! protocol that shares a port with a fallback (VLESS, Trojan): it is handed, bytes unchanged,
//! to another server chosen by TLS server name, ALPN and HTTP path, as upstream does; without
//! fallbacks it is drained and closed at a time that does not depend on what was sent.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpStream, UnixStream};
use shardray_core::spec::{FallbackDest, FallbackSpec, LogLevel, UnixSocketName};
use shardray_core::stats::Refusal;

use super::ConnInfo;
use crate::ctx::{InboundRt, ShardCtx};
use crate::outbound::connect_configured;
use crate::relay::{relay, NoMeter, RelayOptions};

/// Why an inbound turned a connection away.
pub(super) struct Rejected {
    /// The inbound's protocol, for the log line.
    pub(super) protocol: &'static str,
    /// What was wrong, for the log line.
    pub(super) reason: &'static str,
    /// `BadRequest`: not a request of the protocol (fallback or drain); anything else: a valid
    /// request that is not served, which is closed at once.
    pub(super) why: Refusal,
    /// When the connection was accepted: a drained connection closes a fixed time after it.
    pub(super) started: Instant,
}

/// Turns a connection away: counted, logged at Info with the reason, and nothing written back.
/// A bad request goes to the fallback if there is one (with the `len` bytes of `buf` it sent),
/// else it is drained. A prober learns no more than from a silent server, or it meets the
/// fallback, which sees its exact bytes.
#[allow(clippy::too_many_arguments)]
pub(super) async fn reject<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    fallbacks: &[FallbackSpec],
    mut stream: S,
    buf: &mut [u8],
    len: usize,
    info: &ConnInfo,
    rejected: Rejected,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Rejected { protocol, reason, why, started } = rejected;
    refuse(ctx, inbound, protocol, reason, why, info);
    if why != Refusal::BadRequest {
        let _ = stream.close().await;
        return;
    }
    turn_away(ctx, inbound, fallbacks, stream, buf, len, info, started).await
}

/// What a bad request or a wrong user meets, once told of: the fallback if there is one (with
/// the `len` bytes of `buf` it sent), else the drain. A user over its `maxConnections` or
/// `maxIPs` (told of by `limits::admit`) meets the same.
#[allow(clippy::too_many_arguments)]
pub(super) async fn turn_away<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    fallbacks: &[FallbackSpec],
    mut stream: S,
    buf: &mut [u8],
    len: usize,
    info: &ConnInfo,
    started: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !fallbacks.is_empty() && len > 0 {
        serve(ctx, inbound, fallbacks, stream, &buf[..len], info).await;
        return;
    }
    let until = started + ctx.policy(0).handshake + jitter(info.peer, started);
    drain(&mut stream, buf, until).await;
}

/// Counts and logs a refusal (Info, with the reason, and an access line); the caller answers
/// as its protocol does, or not at all, and closes.
pub(super) fn refuse(ctx: &ShardCtx, inbound: &InboundRt, protocol: &str, reason: &str, why: Refusal, info: &ConnInfo) {
    ctx.refusals.add(why);
    ctx.log.access(format_args!("from {} rejected {protocol}: {reason}", info.peer));
    ctx.log.error(LogLevel::Info, format_args!("[{}] {} rejected {protocol}: {reason}", inbound.tag, info.peer));
}

/// Up to a second, different for each connection: the drain's randomised bound.
fn jitter(peer: SocketAddr, started: Instant) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let mut x = u64::from(nanos) ^ (u64::from(peer.port()) << 32) ^ (started.elapsed().as_nanos() as u64) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    Duration::from_millis(x % 1000)
}

/// Reads and discards until the client closes, a read fails, or `until`: the close comes at a
/// time that does not depend on how many bytes a prober sent, and no unread byte turns it into
/// a reset.
async fn drain<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8], until: Instant) {
    let reading = async {
        while let Ok(n) = stream.read(buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let deadline = async {
        glommio::timer::sleep(until.saturating_duration_since(Instant::now())).await;
    };
    futures_lite::future::or(reading, deadline).await;
}

async fn serve<S>(
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
    // Ours no more: what follows is the fallback's.
    crate::gate::handshake_done();
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
        FallbackDest::Tcp(dest) => match connect_configured(dest).await {
            Ok(mut up) => match up.write_all(&preamble).await {
                Ok(()) => relay(&mut client, &mut up, RelayOptions::new(&policy), &mut NoMeter).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        FallbackDest::Unix(path) => match connect_unix(path) {
            Ok(mut up) => match up.write_all(&preamble).await {
                Ok(()) => relay(&mut client, &mut up, RelayOptions::new(&policy), &mut NoMeter).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        ctx.log.error(LogLevel::Info, format_args!("[{}] {} fallback failed: {}", inbound.tag, info.peer, e));
    }
}

/// Relays a connection byte for byte to `dest` (REALITY's target): a PROXY header first with
/// `xver`, then `first` (what was read off the client already), then both ways, by splice(2)
/// when both ends are TCP, so the target sees all the client sent.
pub(super) async fn relay_to(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    dest: &FallbackDest,
    xver: u8,
    mut client: Box<TcpStream>,
    first: &[u8],
    info: &ConnInfo,
) {
    use std::os::fd::AsRawFd;
    // Ours no more: what follows is the target's.
    crate::gate::handshake_done();
    let policy = ctx.policy(0);
    let mut preamble = match xver {
        0 => Vec::new(),
        _ => match info.local() {
            Ok(local) => proxy_header(xver, info.peer, local),
            Err(e) => {
                let (tag, peer) = (&inbound.tag, info.peer);
                ctx.log.error(
                    LogLevel::Info,
                    format_args!("[{tag}] {peer} relay to target failed: no local address: {e}"),
                );
                return;
            }
        },
    };
    preamble.extend_from_slice(first);
    let client_fd = client.as_raw_fd();
    let result = match dest {
        FallbackDest::Tcp(dest) => match connect_configured(dest).await {
            Ok(mut up) => match up.write_all(&preamble).await {
                Ok(()) => {
                    let options = RelayOptions::new(&policy).splice(Some(client_fd), up.as_raw_fd());
                    relay(&mut *client, &mut up, options, &mut NoMeter).await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        FallbackDest::Unix(path) => match connect_unix(path) {
            Ok(mut up) => match up.write_all(&preamble).await {
                Ok(()) => relay(&mut *client, &mut up, RelayOptions::new(&policy), &mut NoMeter).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        ctx.log.error(LogLevel::Info, format_args!("[{}] {} relay to target failed: {}", inbound.tag, info.peer, e));
    }
}

/// Connects to a fallback's Unix socket: a path, or an abstract one in Xray's forms (`@name`,
/// `@@name` padded). A Unix connect completes at once or fails (a full backlog): nonblocking,
/// it never holds up the shard.
fn connect_unix(path: &std::path::Path) -> std::io::Result<UnixStream> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    use std::os::unix::ffi::OsStrExt;
    let name = path.to_str().and_then(UnixSocketName::parse).unwrap_or_else(|| UnixSocketName::Path(path.into()));
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.connect(&socket2::SockAddr::unix(std::ffi::OsStr::from_bytes(&name.sun_path()))?)?;
    // SAFETY: the descriptor is a connected stream socket that nothing else owns.
    Ok(unsafe { UnixStream::from_raw_fd(socket.into_raw_fd()) })
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
    let mut out = Vec::new();
    shardray_wire::proxy_protocol::encode(xver, peer, local, &mut out);
    out
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
