//! A Shadowsocks client of our own (classic AEAD and 2022), built on the `wire` codec, for
//! driving the proxy where a real client cannot be steered (many connections at once, a
//! session held open while its user is removed).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{SystemTime, UNIX_EPOCH};

use shardray_wire::addr::Destination;
use shardray_wire::shadowsocks::{classic, ss2022, ChunkOpener, ChunkSealer, MasterKey, Method, Opened};

use crate::vless::connect;

/// Who a client is: its method, and its password (classic), PSK or `serverPSK:userPSK` (2022).
#[derive(Debug, Clone)]
pub struct SsUser {
    /// The method.
    pub method: Method,
    /// The password as a client config writes it.
    pub password: String,
}

impl SsUser {
    /// A user of `method` (by config name) with `password`.
    pub fn new(method: &str, password: &str) -> SsUser {
        SsUser { method: Method::parse(method).expect("a method"), password: password.to_owned() }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The first flight to `dest` with `payload`, the request salt and the sealer for more.
fn first_flight(user: &SsUser, dest: SocketAddr, payload: &[u8], seed: u64) -> (Vec<u8>, Vec<u8>, ChunkSealer) {
    let method = user.method;
    // Fresh for every request (the server remembers salts across inbounds and connections).
    let salt: Vec<u8> = (0..method.salt_len() as u64)
        .map(|i| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(seed ^ i);
            h.finish() as u8
        })
        .collect();
    let mut out = Vec::new();
    let sealer = if method.is_2022() {
        let (identities, key) = MasterKey::parse_psk_chain(method, &user.password).expect("a PSK");
        ss2022::ClientRequest {
            method,
            identities: &identities,
            key: &key,
            salt: &salt,
            timestamp: now(),
            destination: &Destination::from(dest),
            padding_len: 16,
        }
        .encode(payload, &mut out)
    } else {
        let key = MasterKey::from_password(method, &user.password).expect("a password");
        classic::encode_request(method, &key, &salt, &Destination::from(dest), payload, &mut out)
    };
    (out, salt, sealer)
}

/// Opens the response's salt or header at the front of `got`: the opener and the bytes used.
fn open_response(user: &SsUser, salt: &[u8], got: &mut [u8]) -> io::Result<(ChunkOpener, usize)> {
    let invalid = |e| io::Error::new(io::ErrorKind::InvalidData, e);
    if user.method.is_2022() {
        let (_, key) = MasterKey::parse_psk_chain(user.method, &user.password).expect("a PSK");
        ss2022::decode_response(user.method, &key, salt, got, now()).map_err(invalid)
    } else {
        let key = MasterKey::from_password(user.method, &user.password).expect("a password");
        classic::open_response(user.method, &key, got).map_err(invalid)
    }
}

/// Opens every whole chunk of `buf` from `at`; returns the plaintext and where it stopped.
fn open_chunks(opener: &mut ChunkOpener, buf: &mut [u8], mut at: usize) -> io::Result<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    loop {
        match opener.open(&mut buf[at..]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
            Opened::Chunk { plain, consumed } => {
                out.extend_from_slice(&buf[at + plain.start..at + plain.end]);
                at += consumed;
            }
            Opened::NeedMore { .. } => return Ok((out, at)),
        }
    }
}

/// Sends `payload` through `proxy` to `dest`, half-closes, and returns the plaintext that came
/// back (empty if the server answered nothing).
pub fn round_trip(
    proxy: SocketAddr,
    user: &SsUser,
    dest: SocketAddr,
    payload: &[u8],
    seed: u64,
) -> io::Result<Vec<u8>> {
    let mut s = connect(proxy)?;
    let (flight, salt, _) = first_flight(user, dest, payload, seed);
    s.write_all(&flight)?;
    s.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    if got.is_empty() {
        return Ok(got);
    }
    let (mut opener, at) = open_response(user, &salt, &mut got)?;
    let (plain, at) = open_chunks(&mut opener, &mut got, at)?;
    if at != got.len() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(plain)
}

/// Opens a session to an echo server at `dest` and reads its first echo (`ping`), so the
/// response has started; the socket is returned open.
pub fn open_session(proxy: SocketAddr, user: &SsUser, dest: SocketAddr, seed: u64) -> io::Result<TcpStream> {
    let mut s = connect(proxy)?;
    let (flight, salt, _) = first_flight(user, dest, b"ping", seed);
    s.write_all(&flight)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
        let mut copy = got.clone();
        if let Ok((mut opener, at)) = open_response(user, &salt, &mut copy) {
            if let Ok((plain, _)) = open_chunks(&mut opener, &mut copy, at) {
                if plain == b"ping" {
                    return Ok(s);
                }
            }
        }
    }
}
