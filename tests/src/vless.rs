//! A VLESS client of our own, built on the `wire` codec, for driving the proxy in tests.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use shardray_wire::addr::{Address, Destination};
use shardray_wire::vless::{Command, RequestHeader};
use uuid::Uuid;

/// The request header bytes for a TCP request from `user` to `dest`.
pub fn request(user: &str, dest: SocketAddr) -> Vec<u8> {
    request_to(user, Destination::from(dest))
}

/// The request header bytes for a TCP request to any destination (a domain, say).
pub fn request_to(user: &str, dest: Destination) -> Vec<u8> {
    let header =
        RequestHeader { user: user_id(user), flow: String::new(), command: Command::Tcp, destination: Some(dest) };
    let mut out = Vec::new();
    header.encode(&mut out);
    out
}

/// The UUID a config or API id stands for: a UUID, or (1–30 bytes) the UUIDv5 of the string
/// under the nil namespace, as upstream maps short ids.
pub fn user_id(id: &str) -> Uuid {
    id.parse().unwrap_or_else(|_| Uuid::new_v5(&Uuid::nil(), id.as_bytes()))
}

/// A domain destination.
pub fn domain(name: &str, port: u16) -> Destination {
    Destination { addr: Address::Domain(name.into()), port }
}

/// Connects to `proxy` with read and write timeouts set.
pub fn connect(proxy: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

/// `connect`, from the local address `source` (any of 127.0.0.0/8 reaches a loopback server).
pub fn connect_from(source: std::net::IpAddr, proxy: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(proxy), socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&proxy.into(), Duration::from_secs(5))?;
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

/// Reads to end of stream.
pub fn read_all(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Sends header and `payload` through `proxy` to `dest`, half-closes, and returns what came
/// back after the 2-byte response header (which must be version 0, no addons).
pub fn round_trip(proxy: SocketAddr, user: &str, dest: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = connect(proxy)?;
    let mut first = request(user, dest);
    first.extend_from_slice(payload);
    s.write_all(&first)?;
    s.shutdown(Shutdown::Write)?;
    let reply = read_all(&mut s)?;
    if reply.len() < 2 || reply[..2] != [0, 0] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad response header: {:?}", &reply[..reply.len().min(2)]),
        ));
    }
    Ok(reply[2..].to_vec())
}

/// A payload of `len` bytes whose content depends on `seed`, so mixed-up streams show.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Opens a session as `user` to the echo server at `echo` and proves it works; returns it.
pub fn open_session(proxy: SocketAddr, user: &str, echo: SocketAddr) -> TcpStream {
    let mut s = connect(proxy).unwrap();
    let mut first = request(user, echo);
    first.extend_from_slice(b"ping");
    s.write_all(&first).unwrap();
    let mut back = [0u8; 6];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"\0\0ping");
    s
}

/// Whether the server closes `s` within `within`: a read sees end of stream or a reset, not a
/// timeout.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
    }
}
