//! A Trojan client of our own, built on the `wire` codec, for driving the proxy in tests.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

use shardray_wire::addr::Destination;
use shardray_wire::trojan::{password_key, Command, Request};

use crate::vless::{connect, read_all};

/// The request header bytes for a CONNECT from the user with `password` to `dest`.
pub fn request(password: &str, dest: SocketAddr) -> Vec<u8> {
    request_with(password, Command::Connect, Destination::from(dest))
}

/// The request header bytes for any command and destination.
pub fn request_with(password: &str, command: Command, dest: Destination) -> Vec<u8> {
    let mut out = Vec::new();
    Request { key: password_key(password), command, destination: dest }.encode(&mut out);
    out
}

/// Sends the header and `payload` through `proxy` to `dest`, half-closes, and returns what
/// came back (Trojan has no response header).
pub fn round_trip(proxy: SocketAddr, password: &str, dest: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = connect(proxy)?;
    let mut first = request(password, dest);
    first.extend_from_slice(payload);
    s.write_all(&first)?;
    s.shutdown(Shutdown::Write)?;
    read_all(&mut s)
}

/// Opens a session as the user with `password` to the echo server at `echo` and proves it
/// works; returns it.
pub fn open_session(proxy: SocketAddr, password: &str, echo: SocketAddr) -> TcpStream {
    let mut s = connect(proxy).unwrap();
    let mut first = request(password, echo);
    first.extend_from_slice(b"ping");
    s.write_all(&first).unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    s
}
