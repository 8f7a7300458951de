//! A VMess (AEAD) client of our own, built on the `wire` codec, for driving the proxy in tests:
//! sealed requests to record and replay, round trips with any security and options.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{SystemTime, UNIX_EPOCH};

use shardray_wire::addr::Destination;
use shardray_wire::vmess::{
    Chunk, ChunkOpener, ChunkSealer, Command, Direction, Options, RequestHeader, ResponseHeader, SealRandom, Security,
    UserKey, VmessError,
};

use crate::vless::{connect, read_all, user_id};

/// The Unix time now, for auth IDs.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A request header for `command` to `dest` with fresh keys (from `seed`), and its sealed bytes
/// as user `id` (a UUID or a mapped string) sends them at time `at`.
pub fn request(
    id: &str,
    command: Command,
    dest: Destination,
    security: Security,
    options: Options,
    seed: u64,
    at: u64,
) -> (RequestHeader, Vec<u8>) {
    let b = |k: u64| (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(k) >> 24) as u8;
    let header = RequestHeader {
        body_iv: std::array::from_fn(|i| b(i as u64)),
        body_key: std::array::from_fn(|i| b(100 + i as u64)),
        response_auth: b(200),
        options,
        security,
        command,
        destination: Some(dest),
    };
    let random = SealRandom {
        auth_id: std::array::from_fn(|i| b(300 + i as u64)),
        nonce: std::array::from_fn(|i| b(400 + i as u64)),
        padding_len: b(500) % 16,
        padding: [0x5a; 15],
    };
    let mut out = Vec::new();
    header.seal(&UserKey::new(&user_id(id)), at, &random, &mut out);
    (header, out)
}

/// The usual options of an AES or ChaCha client (chunk stream, masking, padding).
pub fn default_options() -> Options {
    Options::CHUNK_STREAM | Options::CHUNK_MASKING | Options::GLOBAL_PADDING
}

/// A whole client flight: the sealed header for a TCP request to `dest`, `payload` in chunks,
/// and the end chunk.
pub fn flight(id: &str, dest: SocketAddr, payload: &[u8], seed: u64) -> (RequestHeader, Vec<u8>) {
    let (header, mut out) =
        request(id, Command::Tcp, Destination::from(dest), Security::Aes128Gcm, default_options(), seed, now());
    let mut sealer = ChunkSealer::new(&header, Direction::Request, [7; 32]).unwrap();
    sealer.seal(payload, &mut out).unwrap();
    sealer.seal_end(&mut out);
    (header, out)
}

/// Opens what a server sent for `request`: the response header, then the chunks until the end
/// chunk (or the end of the bytes). Returns the plaintext.
pub fn open_response(request: &RequestHeader, mut wire: Vec<u8>) -> Result<Vec<u8>, VmessError> {
    let (_, used) = ResponseHeader::open(&mut wire, request)?;
    wire.drain(..used);
    let mut opener = ChunkOpener::new(request, Direction::Response)?;
    let mut plain = Vec::new();
    loop {
        match opener.open(&mut wire) {
            Ok(Chunk::Data { plain: range, consumed }) => {
                plain.extend_from_slice(&wire[range]);
                wire.drain(..consumed);
            }
            Ok(Chunk::End { .. }) => return Ok(plain),
            Err(VmessError::UnexpectedEnd) if wire.is_empty() => return Ok(plain),
            Err(e) => return Err(e),
        }
    }
}

/// Sends `payload` to `dest` through `proxy` as user `id` (writing on a second thread, then
/// half-closing) and returns what came back, opened.
pub fn round_trip(proxy: SocketAddr, id: &str, dest: SocketAddr, payload: &[u8], seed: u64) -> io::Result<Vec<u8>> {
    let (header, wire) = flight(id, dest, payload, seed);
    let s = connect(proxy)?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || -> io::Result<()> {
        w.write_all(&wire)?;
        w.shutdown(Shutdown::Write)
    });
    let mut s = s;
    let got = read_all(&mut s);
    writer.join().expect("writer")?;
    open_response(&header, got?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes `bytes`, half-closes, and returns everything the server sent back.
pub fn send_raw(proxy: SocketAddr, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = connect(proxy)?;
    s.write_all(bytes)?;
    s.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    Ok(got)
}

/// Opens a session as `id` to the echo server at `echo`, proves it works with a `ping`, and
/// returns it with its request (to read later answers with).
pub fn open_session(proxy: SocketAddr, id: &str, echo: SocketAddr, seed: u64) -> (TcpStream, RequestHeader) {
    let (header, mut out) =
        request(id, Command::Tcp, Destination::from(echo), Security::Aes128Gcm, default_options(), seed, now());
    let mut sealer = ChunkSealer::new(&header, Direction::Request, [7; 32]).unwrap();
    sealer.seal(b"ping", &mut out).unwrap();
    let mut s = connect(proxy).unwrap();
    s.write_all(&out).unwrap();
    let mut wire = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the echo");
        wire.extend_from_slice(&buf[..n]);
        if let Ok(plain) = open_response(&header, wire.clone()) {
            if plain == b"ping" {
                return (s, header);
            }
        }
    }
}
