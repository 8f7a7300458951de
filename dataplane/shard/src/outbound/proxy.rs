//! The SOCKS and HTTP outbounds: dial the proxy server (TLS if configured), then ask it for a
//! tunnel to the destination (a SOCKS5 CONNECT, with username/password when the outbound has
//! a user; an HTTP CONNECT, with Basic credentials and the configured header fields) and wait
//! for its answer before the relay starts.

use std::io;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shardray_core::spec::ProxyOutboundSpec;
use shardray_wire::addr::Destination;
use shardray_wire::http::{encode_connect, HttpError, ResponseHead, MAX_HEAD_LEN};
use shardray_wire::socks::{
    decode_auth_reply, decode_method_reply, decode_reply, encode_greeting, method, Command, Credentials, Request,
    SocksError,
};

use super::trojan::{client_tls, dial, ClientTls, Upstream};

/// A SOCKS or HTTP outbound as a shard runs it: its TLS client, built once.
pub(crate) struct ProxyClient {
    pub(crate) tls: ClientTls,
}

impl ProxyClient {
    /// Builds the client; fails only on settings control has already checked.
    pub(crate) fn new(spec: &ProxyOutboundSpec) -> Result<ProxyClient, String> {
        Ok(ProxyClient { tls: client_tls(spec.tls.as_ref(), &spec.server)? })
    }

    /// Dials the server and opens a tunnel to `dest` through it; returns the stream and the
    /// tunnel's first downlink bytes if the server sent any along with its answer.
    pub(crate) async fn connect(
        &self,
        spec: &ProxyOutboundSpec,
        socks: bool,
        dest: &Destination,
        via: &super::Via,
    ) -> io::Result<(Upstream, Vec<u8>)> {
        let mut up = dial(&self.tls, &Default::default(), &spec.server, via).await?;
        let opening = async {
            let rest = if socks {
                socks_connect(&mut up, spec, dest).await?
            } else {
                http_connect(&mut up, spec, dest).await?
            };
            Ok::<_, io::Error>(rest)
        };
        let rest = super::within_dial_timeout(opening, "proxy handshake timed out").await?;
        Ok((up, rest))
    }
}

impl ProxyClient {
    /// Dials the SOCKS server and asks for UDP ASSOCIATE: the control stream (the association
    /// lives while it does) and the relay address the server answered.
    pub(crate) async fn associate(
        &self,
        spec: &ProxyOutboundSpec,
        via: &super::Via,
    ) -> io::Result<(Upstream, Destination)> {
        let mut up = dial(&self.tls, &Default::default(), &spec.server, via).await?;
        // As Xray's client asks: the client's own address is not known, so 0.0.0.0:0.
        let any = Destination::from(std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let opening = socks_request(&mut up, spec, Command::UdpAssociate, &any);
        let (_, relay) = super::within_dial_timeout(opening, "proxy handshake timed out").await?;
        Ok((up, relay))
    }
}

fn refused(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, format!("{what}: {e}"))
}

/// Reads until `decode` settles the front of `data`; the decoded bytes are consumed.
async fn read_message<S, T>(
    stream: &mut S,
    data: &mut Vec<u8>,
    what: &str,
    mut decode: impl FnMut(&mut &[u8]) -> Result<T, SocksError>,
) -> io::Result<T>
where
    S: AsyncRead + Unpin,
{
    let mut chunk = [0u8; 512];
    loop {
        let mut cur = &data[..];
        match decode(&mut cur) {
            Ok(v) => {
                let used = data.len() - cur.len();
                data.drain(..used);
                return Ok(v);
            }
            Err(SocksError::UnexpectedEnd) => {}
            Err(e) => return Err(refused(what, e)),
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{what}: server closed")));
        }
        data.extend_from_slice(&chunk[..n]);
    }
}

/// The SOCKS5 client handshake, as Xray's client runs it: one method offered.
async fn socks_connect<S>(up: &mut S, spec: &ProxyOutboundSpec, dest: &Destination) -> io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Ok(socks_request(up, spec, Command::Connect, dest).await?.0)
}

/// The handshake and one request: the bytes after the reply, and the reply's address.
async fn socks_request<S>(
    up: &mut S,
    spec: &ProxyOutboundSpec,
    command: Command,
    dest: &Destination,
) -> io::Result<(Vec<u8>, Destination)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(600);
    let offered = if spec.account.is_some() { method::PASSWORD } else { method::NO_AUTH };
    encode_greeting(&[offered], &mut out);
    up.write_all(&out).await?;
    up.flush().await?;
    let mut data = Vec::new();
    let chosen = read_message(up, &mut data, "socks method", decode_method_reply).await?;
    if chosen != offered {
        return Err(refused("socks method", format!("server chose {chosen}")));
    }
    if let Some(a) = &spec.account {
        out.clear();
        let credentials = Credentials { username: a.username.as_bytes(), password: a.password.as_bytes() };
        credentials.encode(&mut out).map_err(|e| refused("socks credentials", e))?;
        up.write_all(&out).await?;
        up.flush().await?;
        read_message(up, &mut data, "socks authentication", decode_auth_reply).await?;
    }
    out.clear();
    Request { command, destination: dest.clone() }.encode(&mut out);
    up.write_all(&out).await?;
    up.flush().await?;
    let bound = read_message(up, &mut data, "socks request", decode_reply).await?;
    Ok((data, bound))
}

/// The HTTP CONNECT, as Xray's client sends it; anything but 200 is a refusal.
async fn http_connect<S>(up: &mut S, spec: &ProxyOutboundSpec, dest: &Destination) -> io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(256);
    let credentials = spec.account.as_ref().map(|a| (&*a.username, &*a.password));
    let headers: Vec<(&str, &str)> = spec.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    encode_connect(dest, credentials, &headers, &mut out);
    up.write_all(&out).await?;
    up.flush().await?;
    let mut data = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match ResponseHead::parse(&data) {
            Ok(head) if head.status == 200 => {
                data.drain(..head.head_len);
                return Ok(data);
            }
            Ok(head) => return Err(refused("http connect", format!("status {}", head.status))),
            Err(HttpError::UnexpectedEnd) if data.len() < MAX_HEAD_LEN => {}
            Err(e) => return Err(refused("http connect", e)),
        }
        let n = up.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "http connect: server closed"));
        }
        data.extend_from_slice(&chunk[..n]);
    }
}
