//! Shadowsocks 2022 over TCP (SIP022), with SIP023 identity headers for many users on one
//! port; server and client sides.
//!
//! Request stream: salt, one 16-byte identity header per identity key (multi-user only), the
//! sealed fixed header (type 0, u64 BE timestamp, u16 BE length of the next piece), the sealed
//! variable header (SOCKS address, u16 BE port, u16 BE padding length, padding, initial
//! payload), then length/payload chunks. Response stream: salt, the sealed fixed header (type 1,
//! timestamp, the request's salt, u16 BE length of the first payload), that payload sealed
//! alone, then length/payload chunks. One nonce counter runs over every piece of a direction.
//!
//! Keys: session subkey = BLAKE3 derive_key("shadowsocks 2022 session subkey", PSK ‖ salt);
//! identity header = AES-ECB(key: BLAKE3 derive_key("shadowsocks 2022 identity subkey",
//! iPSK ‖ salt), block: BLAKE3(next PSK)[..16]). A multi-user server decrypts the one header with
//! its own PSK and finds the user by that hash in a map built once ([`Server::with_users`]); the
//! user's PSK then keys both directions.

use std::collections::HashMap;
use std::ops::Range;

use aes::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};

use super::chunk::{ChunkOpener, ChunkSealer};
use super::replay::ReplayFilter;
use super::{Error, InvalidKey, MasterKey, Method, Salt, MAX_KEY_LEN};
use crate::addr::{Destination, SOCKS_TYPES};
use crate::aead::TAG_LEN;
use crate::{take, take_u16};

/// BLAKE3 context of the session subkey.
pub const SESSION_SUBKEY_CONTEXT: &str = "shadowsocks 2022 session subkey";
/// BLAKE3 context of the identity subkey.
pub const IDENTITY_SUBKEY_CONTEXT: &str = "shadowsocks 2022 identity subkey";
/// Headers whose timestamp is further than this from `now` (seconds) are treated as replays.
pub const MAX_TIME_DIFF: u64 = 30;
/// The most padding a client sends.
pub const MAX_PADDING: u16 = 900;
/// Header type of a request stream.
pub const TYPE_REQUEST: u8 = 0;
/// Header type of a response stream.
pub const TYPE_RESPONSE: u8 = 1;
/// Bytes of one identity header.
pub const IDENTITY_HEADER_LEN: usize = 16;

/// The plaintext fixed request header: type, timestamp, length.
const REQUEST_FIXED_LEN: usize = 1 + 8 + 2;

/// The session subkey for `key` and `salt` (its first `key.len()` bytes are used).
pub fn session_subkey(key: &MasterKey, salt: &[u8]) -> [u8; MAX_KEY_LEN] {
    derive(SESSION_SUBKEY_CONTEXT, key, salt)
}

/// The identity subkey that encrypts the identity header following `identity_key`.
pub fn identity_subkey(identity_key: &MasterKey, salt: &[u8]) -> [u8; MAX_KEY_LEN] {
    derive(IDENTITY_SUBKEY_CONTEXT, identity_key, salt)
}

/// The first 16 bytes of BLAKE3(`key`): what an identity header carries to name the next key.
pub fn identity_hash(key: &MasterKey) -> [u8; 16] {
    let hash = blake3::hash(key.as_bytes());
    hash.as_bytes()[..16].try_into().expect("16 of 32 bytes")
}

fn derive(context: &str, key: &MasterKey, salt: &[u8]) -> [u8; MAX_KEY_LEN] {
    let mut h = blake3::Hasher::new_derive_key(context);
    h.update(key.as_bytes());
    h.update(salt);
    *h.finalize().as_bytes()
}

/// AES-128 or AES-256 (by key length) of one block, in place.
pub(crate) fn aes_encrypt_block(key: &[u8], block: &mut [u8; 16]) {
    let block = GenericArray::from_mut_slice(block);
    match key.len() {
        16 => aes::Aes128::new_from_slice(key).expect("16-byte key").encrypt_block(block),
        _ => aes::Aes256::new_from_slice(key).expect("32-byte key").encrypt_block(block),
    }
}

/// The inverse of `aes_encrypt_block`.
pub(crate) fn aes_decrypt_block(key: &[u8], block: &mut [u8; 16]) {
    let block = GenericArray::from_mut_slice(block);
    match key.len() {
        16 => aes::Aes128::new_from_slice(key).expect("16-byte key").decrypt_block(block),
        _ => aes::Aes256::new_from_slice(key).expect("32-byte key").decrypt_block(block),
    }
}

fn check_time(timestamp: u64, now: u64) -> Result<(), Error> {
    if timestamp.abs_diff(now) > MAX_TIME_DIFF {
        return Err(Error::BadTimestamp { timestamp, now });
    }
    Ok(())
}

// === client side ===

/// What a client needs to open a request stream.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    /// A 2022 method.
    pub method: Method,
    /// Identity keys, outermost first: empty for a single-user server, the server's PSK for a
    /// multi-user one (`iPSK:uPSK`). Only the AES methods carry them.
    pub identities: &'a [MasterKey],
    /// The user's PSK (the only PSK for a single-user server).
    pub key: &'a MasterKey,
    /// A fresh random salt of `method.salt_len()` bytes.
    pub salt: &'a [u8],
    /// The client's clock, Unix seconds.
    pub timestamp: u64,
    /// Where to go.
    pub destination: &'a Destination,
    /// Random padding length; clamped to at most 900 and, when there is no initial payload, at
    /// least 1 (SIP022 §3.1.3: a request carries padding or payload).
    pub padding_len: u16,
}

impl ClientRequest<'_> {
    /// Appends the whole first flight (salt, identity headers, both header pieces with as much
    /// of `payload` as fits, the rest of `payload` as chunks) to `out`, to be written in one
    /// call, and returns the sealer for the rest of the request stream.
    ///
    /// Panics on caller bugs: a salt of the wrong length, or identity keys with a ChaCha method.
    pub fn encode(&self, payload: &[u8], out: &mut Vec<u8>) -> ChunkSealer {
        let method = self.method;
        let kl = method.key_len();
        assert_eq!(self.salt.len(), method.salt_len(), "salt length");
        assert!(self.identities.is_empty() || method.supports_identity_headers(), "{method} has no identity headers");
        out.extend_from_slice(self.salt);
        for (i, identity) in self.identities.iter().enumerate() {
            let next = self.identities.get(i + 1).unwrap_or(self.key);
            let mut block = identity_hash(next);
            aes_encrypt_block(&identity_subkey(identity, self.salt)[..kl], &mut block);
            out.extend_from_slice(&block);
        }
        let mut sealer = ChunkSealer::new(method, &session_subkey(self.key, self.salt)[..kl]);

        let fixed = out.len();
        out.resize(fixed + REQUEST_FIXED_LEN + TAG_LEN, 0);
        let var = out.len();
        SOCKS_TYPES.encode_addr(&self.destination.addr, out);
        out.extend_from_slice(&self.destination.port.to_be_bytes());
        let padding =
            if payload.is_empty() { self.padding_len.clamp(1, MAX_PADDING) } else { self.padding_len.min(MAX_PADDING) };
        out.extend_from_slice(&padding.to_be_bytes());
        out.resize(out.len() + usize::from(padding), 0);
        let first = payload.len().min(method.max_payload() - (out.len() - var));
        out.extend_from_slice(&payload[..first]);
        let var_len = out.len() - var;

        out[fixed] = TYPE_REQUEST;
        out[fixed + 1..fixed + 9].copy_from_slice(&self.timestamp.to_be_bytes());
        out[fixed + 9..fixed + 11].copy_from_slice(&(var_len as u16).to_be_bytes());
        sealer.seal_piece(&mut out[fixed..var]);
        out.resize(out.len() + TAG_LEN, 0);
        sealer.seal_piece(&mut out[var..]);
        sealer.seal(&payload[first..], out);
        sealer
    }
}

/// Client side: opens the response header at the start of `buf` (in place) and returns the
/// opener, which yields the first payload and every chunk after it, and the bytes the salt and
/// header took. Checks the type, the timestamp against `now` and that the header names
/// `request_salt`. `Err(UnexpectedEnd)` until the header is complete; the buffer is then untouched.
pub fn decode_response(
    method: Method,
    key: &MasterKey,
    request_salt: &[u8],
    buf: &mut [u8],
    now: u64,
) -> Result<(ChunkOpener, usize), Error> {
    let salt_len = method.salt_len();
    let header_len = 1 + 8 + salt_len + 2;
    let end = salt_len + header_len + TAG_LEN;
    if buf.len() < end {
        return Err(Error::UnexpectedEnd);
    }
    let (salt, rest) = buf.split_at_mut(salt_len);
    let mut opener = ChunkOpener::new(method, &session_subkey(key, salt)[..method.key_len()]);
    let header = opener.open_piece(&mut rest[..header_len + TAG_LEN])?;
    let mut cur = &header[..];
    let kind = take(&mut cur, 1)?[0];
    if kind != TYPE_RESPONSE {
        return Err(Error::BadStreamType(kind));
    }
    check_time(u64::from_be_bytes(take(&mut cur, 8)?.try_into().expect("8 bytes")), now)?;
    if take(&mut cur, salt_len)? != request_salt {
        return Err(Error::RequestSaltMismatch);
    }
    let len = take_u16(&mut cur)?;
    opener.expect_payload(len.into());
    Ok((opener, end))
}

// === server side ===

/// A 2022 inbound's keys: one PSK, or a server PSK and its users' PSKs.
pub struct Server {
    method: Method,
    psk: MasterKey,
    /// `None` for a single-user server.
    users: Option<Users>,
}

/// A multi-user server's PSKs and the map from identity hash to index.
struct Users {
    keys: Vec<MasterKey>,
    by_hash: HashMap<[u8; 16], usize>,
}

/// A request decoded by the server.
#[derive(Debug)]
pub struct Request {
    /// Where the client wants to go.
    pub destination: Destination,
    /// The initial payload inside the variable header, as a range of the buffer.
    pub payload: Range<usize>,
    /// How many bytes of the buffer the salt, identity header and header pieces took.
    pub consumed: usize,
    /// The request salt, which the response header must repeat.
    pub salt: Salt,
    /// The index of the user (multi-user servers), into the list given to `with_users`.
    pub user: Option<usize>,
    /// The header's timestamp (Unix seconds), already checked against the clock.
    pub timestamp: u64,
}

impl Server {
    /// A single-user server.
    pub fn new(method: Method, psk: MasterKey) -> Server {
        Server { method, psk, users: None }
    }

    /// A multi-user server: clients send one identity header made with `server_psk`, naming
    /// one of `users` by hash. The map is built here, once.
    pub fn with_users(method: Method, server_psk: MasterKey, users: Vec<MasterKey>) -> Result<Server, InvalidKey> {
        if !method.supports_identity_headers() {
            return Err(InvalidKey::NoIdentityHeaders);
        }
        let mut map = HashMap::with_capacity(users.len());
        for (i, user) in users.iter().enumerate() {
            if map.insert(identity_hash(user), i).is_some() {
                return Err(InvalidKey::DuplicateUser(i));
            }
        }
        Ok(Server { method, psk: server_psk, users: Some(Users { keys: users, by_hash: map }) })
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The PSK that keys a session of `user` (from `Request::user`): the user's, or the server's.
    pub fn session_key(&self, user: Option<usize>) -> &MasterKey {
        match (&self.users, user) {
            (Some(users), Some(i)) => &users.keys[i],
            _ => &self.psk,
        }
    }

    /// Decodes the first flight at the start of `buf`, opening it in place: identity header,
    /// fixed header (type, timestamp within ±30 s of `now`), variable header. Records the salt
    /// in `replay` only once all of it has checked out.
    ///
    /// `Err(UnexpectedEnd)` until both header pieces are there; the buffer and the filter are
    /// then untouched, so the call can be repeated with more bytes.
    pub fn decode_request(
        &self,
        buf: &mut [u8],
        now: u64,
        replay: &mut ReplayFilter,
    ) -> Result<(Request, ChunkOpener), Error> {
        let identity = self.users.as_ref().map(|_| &self.psk);
        let (mut request, opener, user) =
            decode_request_with(self.method, identity, buf, now, replay, |hash| match (&self.users, hash) {
                (Some(users), Some(hash)) => users.by_hash.get(hash).map(|&i| (Some(i), users.keys[i])),
                _ => Some((None, self.psk)),
            })?;
        request.user = user;
        Ok((request, opener))
    }
}

/// [`Server::decode_request`] for a server that keeps its users itself (a table that changes
/// at run time): `identity` is the server PSK when requests carry an identity header
/// (multi-user), and `lookup` is called once with the decrypted header (the user PSK's BLAKE3
/// hash), or with `None` without one, and returns the user and its PSK. `Err(UnknownUser)` if
/// it returns `None`. `Request::user` is left `None`; the user comes back beside it.
pub fn decode_request_with<U>(
    method: Method,
    identity: Option<&MasterKey>,
    buf: &mut [u8],
    now: u64,
    replay: &mut ReplayFilter,
    lookup: impl FnOnce(Option<&[u8; 16]>) -> Option<(U, MasterKey)>,
) -> Result<(Request, ChunkOpener, U), Error> {
    let kl = method.key_len();
    let salt_len = method.salt_len();
    let fixed_at = salt_len + if identity.is_some() { IDENTITY_HEADER_LEN } else { 0 };
    let var_at = fixed_at + REQUEST_FIXED_LEN + TAG_LEN;
    if buf.len() < var_at {
        return Err(Error::UnexpectedEnd);
    }
    let salt = Salt::new(&buf[..salt_len]);
    let (user, key) = match identity {
        None => lookup(None).ok_or(Error::UnknownUser)?,
        Some(psk) => {
            let mut block: [u8; 16] = buf[salt_len..fixed_at].try_into().expect("16 bytes");
            aes_decrypt_block(&identity_subkey(psk, salt.as_bytes())[..kl], &mut block);
            lookup(Some(&block)).ok_or(Error::UnknownUser)?
        }
    };
    let mut opener = ChunkOpener::new(method, &session_subkey(&key, salt.as_bytes())[..kl]);
    // Open a copy of the fixed header so that "need more" leaves the buffer as it was.
    let mut fixed = [0u8; REQUEST_FIXED_LEN + TAG_LEN];
    fixed.copy_from_slice(&buf[fixed_at..var_at]);
    let fixed = opener.open_piece(&mut fixed)?;
    if fixed[0] != TYPE_REQUEST {
        return Err(Error::BadStreamType(fixed[0]));
    }
    let timestamp = u64::from_be_bytes(fixed[1..9].try_into().expect("8 bytes"));
    check_time(timestamp, now)?;
    let var_len = usize::from(u16::from_be_bytes([fixed[9], fixed[10]]));
    let end = var_at + var_len + TAG_LEN;
    if buf.len() < end {
        return Err(Error::UnexpectedEnd);
    }
    let var = opener.open_piece(&mut buf[var_at..end])?;
    let mut cur = &var[..];
    let addr = SOCKS_TYPES.decode_addr(&mut cur).map_err(Error::Address)?;
    let port = take_u16(&mut cur).map_err(Error::Address)?;
    let padding = take_u16(&mut cur).map_err(|_| Error::HeaderOverrun)?;
    take(&mut cur, padding.into()).map_err(|_| Error::HeaderOverrun)?;
    if padding == 0 && cur.is_empty() {
        return Err(Error::NoPaddingNorPayload);
    }
    let payload = var_at + var_len - cur.len()..var_at + var_len;
    replay.check_and_insert(salt.as_bytes(), now)?;
    Ok((
        Request { destination: Destination { addr, port }, payload, consumed: end, salt, user: None, timestamp },
        opener,
        user,
    ))
}

/// What a server needs to open a response stream.
#[derive(Debug, Clone, Copy)]
pub struct ServerResponse<'a> {
    /// A 2022 method.
    pub method: Method,
    /// The session's PSK: `Server::session_key(request.user)`.
    pub key: &'a MasterKey,
    /// A fresh random salt of `method.salt_len()` bytes.
    pub salt: &'a [u8],
    /// The request's salt.
    pub request_salt: &'a [u8],
    /// The server's clock, Unix seconds.
    pub timestamp: u64,
}

impl ServerResponse<'_> {
    /// Appends the salt, the header and the first payload (the rest of `payload` as chunks) to
    /// `out`, and returns the sealer for the rest of the response stream. SIP022 sends the
    /// header with payload, so call this once the first upstream bytes are in hand.
    /// Panics if a salt has the wrong length (a caller bug).
    pub fn encode(&self, payload: &[u8], out: &mut Vec<u8>) -> ChunkSealer {
        let method = self.method;
        let salt_len = method.salt_len();
        assert_eq!(self.salt.len(), salt_len, "salt length");
        assert_eq!(self.request_salt.len(), salt_len, "request salt length");
        out.extend_from_slice(self.salt);
        let mut sealer = ChunkSealer::new(method, &session_subkey(self.key, self.salt)[..method.key_len()]);
        let first = payload.len().min(method.max_payload());
        let header = out.len();
        out.push(TYPE_RESPONSE);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(self.request_salt);
        out.extend_from_slice(&(first as u16).to_be_bytes());
        out.resize(out.len() + TAG_LEN, 0);
        sealer.seal_piece(&mut out[header..]);
        let body = out.len();
        out.extend_from_slice(&payload[..first]);
        out.resize(out.len() + TAG_LEN, 0);
        sealer.seal_piece(&mut out[body..]);
        sealer.seal(&payload[first..], out);
        sealer
    }
}

/// The first-flight overhead before the variable header: salt, identity headers, sealed fixed
/// header, and the variable header's tag.
pub fn request_overhead(method: Method, identities: usize) -> usize {
    method.salt_len() + identities * IDENTITY_HEADER_LEN + REQUEST_FIXED_LEN + 2 * TAG_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Address;
    use crate::shadowsocks::Opened;

    const METHODS: [Method; 3] = [Method::Blake3Aes128Gcm, Method::Blake3Aes256Gcm, Method::Blake3ChaCha20Poly1305];
    const NOW: u64 = 1_700_000_000;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn dest() -> Destination {
        Destination { addr: Address::Domain("example.com".into()), port: 443 }
    }

    fn key(method: Method, seed: u8) -> MasterKey {
        MasterKey::from_bytes(&(0..method.key_len() as u8).map(|i| i.wrapping_add(seed)).collect::<Vec<_>>())
    }

    /// A small xorshift generator: tests stay deterministic.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                *b = self.next() as u8;
            }
        }
    }

    fn drain(opener: &mut ChunkOpener, buf: &mut [u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Opened::Chunk { plain, consumed } = opener.open(&mut buf[at..]).unwrap() {
            out.extend_from_slice(&buf[at + plain.start..at + plain.end]);
            at += consumed;
        }
        assert_eq!(at, buf.len());
        out
    }

    fn request(method: Method, ids: &[MasterKey], key: &MasterKey, salt: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        let d = dest();
        let req =
            ClientRequest { method, identities: ids, key, salt, timestamp: NOW, destination: &d, padding_len: 17 };
        req.encode(payload, &mut wire);
        wire
    }

    // Golden bytes: an independent Python generator written from the SIP022/SIP023 text
    // (`blake3` derive_key, `cryptography` AES-GCM and AES-ECB), fixed salts and keys.
    const GOLDEN_REQ_128: &str = concat!(
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf904ad8f6b400e3d668a1ea8cbea72462b3f62e91a11d0882c3cd8c11962579c8c6",
        "9f9fc885c7e30462a058da709d8bb06aa570d516ebd74ea4548b982955943e67"
    );
    const GOLDEN_REQ_256_EIH: &str = concat!(
        "c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e74be6b5e83fd14b2609f4ed3dab245bce07fa",
        "095b1d35cf4defda7691ec3a690adad05a2eaabf0ec6aa6f248a865b80751cd65886348f312df83eef24a3f320b45aa31cc6",
        "3c3de00ef60ea113645824e463"
    );
    const GOLDEN_RESP_128: &str = concat!(
        "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf818e61ff420a3efa020221afd7843b61c306ce58ed3aa83782b1972f9b2fefefcc4e",
        "ebeae60e8b63e81d73b607b14e62aac7e501fbc929b21d57bd3c6f7a39d78a9cf4732ca194"
    );

    #[test]
    fn golden_single_user_request_and_response() {
        let method = Method::Blake3Aes128Gcm;
        let psk = MasterKey::from_psk(method, "AAECAwQFBgcICQoLDA0ODw==").unwrap();
        let salt: Vec<u8> = (0xa0..0xb0).collect();
        let d = dest();
        let req = ClientRequest {
            method,
            identities: &[],
            key: &psk,
            salt: &salt,
            timestamp: NOW,
            destination: &d,
            padding_len: 0,
        };
        let mut wire = Vec::new();
        req.encode(b"GET /", &mut wire);
        assert_eq!(wire, hex(GOLDEN_REQ_128));

        let server = Server::new(method, psk);
        let mut replay = ReplayFilter::new(16);
        let (got, _) = server.decode_request(&mut wire, NOW, &mut replay).unwrap();
        assert_eq!((got.destination, &wire[got.payload], got.user), (d, &b"GET /"[..], None));

        let resp_salt: Vec<u8> = (0xb0..0xc0).collect();
        let resp = ServerResponse { method, key: &psk, salt: &resp_salt, request_salt: &salt, timestamp: NOW + 1 };
        let mut back = Vec::new();
        resp.encode(b"HTTP/1.1 200", &mut back);
        assert_eq!(back, hex(GOLDEN_RESP_128));
        let (mut opener, n) = decode_response(method, &psk, &salt, &mut back, NOW).unwrap();
        assert_eq!(drain(&mut opener, &mut back[n..]), b"HTTP/1.1 200");
    }

    #[test]
    fn golden_padding_only_request() {
        // Same keys, no payload, 3 bytes of zero padding (Python generator as above).
        let method = Method::Blake3Aes128Gcm;
        let psk = MasterKey::from_bytes(&(0..16).collect::<Vec<u8>>());
        let salt: Vec<u8> = (0xa0..0xb0).collect();
        let d = dest();
        let req = ClientRequest {
            method,
            identities: &[],
            key: &psk,
            salt: &salt,
            timestamp: NOW,
            destination: &d,
            padding_len: 3,
        };
        let mut wire = Vec::new();
        req.encode(b"", &mut wire);
        assert_eq!(
            wire,
            hex(concat!(
                "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf904ad8f6b400e3d668a1e86041890c6cc700f96e8154cc7873425211962579c8c6",
                "9f9fc885c7e30462a058d937d8dfbcbbb65eb4878f26c916de1b30b9271f"
            ))
        );
        let (got, _) = Server::new(method, psk).decode_request(&mut wire, NOW, &mut ReplayFilter::new(4)).unwrap();
        assert!(got.payload.is_empty());
    }

    #[test]
    fn golden_identity_header_request() {
        let method = Method::Blake3Aes256Gcm;
        let upsk = MasterKey::from_bytes(&(32..64).collect::<Vec<u8>>());
        let ipsk = MasterKey::from_bytes(&(64..96).collect::<Vec<u8>>());
        let salt: Vec<u8> = (200..232).collect();
        let d = dest();
        let req = ClientRequest {
            method,
            identities: &[ipsk],
            key: &upsk,
            salt: &salt,
            timestamp: NOW,
            destination: &d,
            padding_len: 0,
        };
        let mut wire = Vec::new();
        req.encode(b"hello", &mut wire);
        assert_eq!(wire, hex(GOLDEN_REQ_256_EIH));
        let server = Server::with_users(method, ipsk, vec![key(method, 1), upsk, key(method, 2)]).unwrap();
        let (got, _) = server.decode_request(&mut wire, NOW, &mut ReplayFilter::new(4)).unwrap();
        assert_eq!((got.user, &wire[got.payload]), (Some(1), &b"hello"[..]));
        assert_eq!(server.session_key(got.user), &upsk);
    }

    #[test]
    fn every_method_round_trips_single_user() {
        for method in METHODS {
            let psk = key(method, 7);
            let server = Server::new(method, psk);
            let mut replay = ReplayFilter::new(1024);
            let salt = vec![0x5a; method.salt_len()];
            let payload: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
            for body in [&payload[..], b"x", b""] {
                let mut salt = salt.clone();
                salt[0] = body.len() as u8;
                let mut wire = Vec::new();
                let d = dest();
                let cr = ClientRequest {
                    method,
                    identities: &[],
                    key: &psk,
                    salt: &salt,
                    timestamp: NOW,
                    destination: &d,
                    padding_len: 0,
                };
                let mut sealer = cr.encode(body, &mut wire);
                sealer.seal(b"!", &mut wire);
                let (req, mut opener) = server.decode_request(&mut wire, NOW + 3, &mut replay).unwrap();
                assert_eq!(req.destination, dest());
                let mut got = wire[req.payload.clone()].to_vec();
                got.extend(drain(&mut opener, &mut wire[req.consumed..]));
                assert_eq!(&got[..body.len()], body, "{method}");
                assert_eq!(&got[body.len()..], b"!");

                let rsalt = vec![0xc3; method.salt_len()];
                let resp = ServerResponse {
                    method,
                    key: server.session_key(req.user),
                    salt: &rsalt,
                    request_salt: req.salt.as_bytes(),
                    timestamp: NOW + 4,
                };
                let mut back = Vec::new();
                let mut rsealer = resp.encode(body, &mut back);
                rsealer.seal(b"?", &mut back);
                let (mut ropener, n) = decode_response(method, &psk, &salt, &mut back, NOW).unwrap();
                let got = drain(&mut ropener, &mut back[n..]);
                assert_eq!(&got[..body.len()], body);
                assert_eq!(&got[body.len()..], b"?");
            }
        }
    }

    #[test]
    fn multi_user_round_trips_and_names_the_user() {
        for method in [Method::Blake3Aes128Gcm, Method::Blake3Aes256Gcm] {
            let ipsk = key(method, 100);
            let users: Vec<MasterKey> = (0..20).map(|i| key(method, i)).collect();
            let server = Server::with_users(method, ipsk, users.clone()).unwrap();
            let mut replay = ReplayFilter::new(1024);
            for who in [0, 7, 19] {
                let salt = vec![who as u8 + 1; method.salt_len()];
                let mut wire = request(method, &[ipsk], &users[who], &salt, b"ping");
                let (req, _) = server.decode_request(&mut wire, NOW, &mut replay).unwrap();
                assert_eq!((req.user, &wire[req.payload.clone()]), (Some(who), &b"ping"[..]));
                // The response is keyed with the user's PSK.
                let rsalt = vec![0xee; method.salt_len()];
                let resp = ServerResponse {
                    method,
                    key: server.session_key(req.user),
                    salt: &rsalt,
                    request_salt: &salt,
                    timestamp: NOW,
                };
                let mut back = Vec::new();
                resp.encode(b"pong", &mut back);
                let (mut o, n) = decode_response(method, &users[who], &salt, &mut back, NOW).unwrap();
                assert_eq!(drain(&mut o, &mut back[n..]), b"pong");
            }
            // A stranger's identity header, or a single-user request, names no user.
            let stranger = key(method, 200);
            let mut wire = request(method, &[ipsk], &stranger, &vec![9; method.salt_len()], b"x");
            assert_eq!(server.decode_request(&mut wire, NOW, &mut replay).err(), Some(Error::UnknownUser));
            let mut wire = request(method, &[], &users[0], &vec![8; method.salt_len()], b"x");
            assert!(server.decode_request(&mut wire, NOW, &mut replay).is_err());
        }
        assert_eq!(
            Server::with_users(Method::Blake3ChaCha20Poly1305, key(Method::Blake3ChaCha20Poly1305, 0), vec![]).err(),
            Some(InvalidKey::NoIdentityHeaders)
        );
        let m = Method::Blake3Aes128Gcm;
        assert_eq!(
            Server::with_users(m, key(m, 0), vec![key(m, 1), key(m, 1)]).err(),
            Some(InvalidKey::DuplicateUser(1))
        );
    }

    #[test]
    fn truncation_at_every_offset_is_need_more() {
        for method in METHODS {
            let ipsk = key(method, 50);
            let user = key(method, 51);
            let multi = method.supports_identity_headers();
            let server =
                if multi { Server::with_users(method, ipsk, vec![user]).unwrap() } else { Server::new(method, user) };
            let ids: &[MasterKey] = if multi { &[ipsk] } else { &[] };
            let salt = vec![3; method.salt_len()];
            let wire = request(method, ids, &user, &salt, b"first");
            let mut replay = ReplayFilter::new(16);
            for cut in 0..wire.len() {
                let mut short = wire[..cut].to_vec();
                assert_eq!(
                    server.decode_request(&mut short, NOW, &mut replay).err(),
                    Some(Error::UnexpectedEnd),
                    "{cut}"
                );
                assert_eq!(short, wire[..cut]);
            }
            assert!(replay.is_empty(), "need-more must not record the salt");
            let mut full = wire.clone();
            server.decode_request(&mut full, NOW, &mut replay).unwrap();

            let rsalt = vec![4; method.salt_len()];
            let resp = ServerResponse { method, key: &user, salt: &rsalt, request_salt: &salt, timestamp: NOW };
            let mut back = Vec::new();
            resp.encode(b"answer", &mut back);
            let header_end = method.salt_len() * 2 + 11 + TAG_LEN;
            for cut in 0..header_end {
                let mut short = back[..cut].to_vec();
                assert_eq!(decode_response(method, &user, &salt, &mut short, NOW).err(), Some(Error::UnexpectedEnd));
                assert_eq!(short, back[..cut]);
            }
            let (mut o, n) = decode_response(method, &user, &salt, &mut back, NOW).unwrap();
            for cut in 0..back.len() - n {
                let mut short = back[n..n + cut].to_vec();
                assert!(matches!(o.open(&mut short), Ok(Opened::NeedMore { .. })));
            }
            assert_eq!(drain(&mut o, &mut back[n..]), b"answer");
        }
    }

    #[test]
    fn tampered_bytes_are_rejected() {
        for method in METHODS {
            let psk = key(method, 1);
            let server = Server::new(method, psk);
            let salt = vec![6; method.salt_len()];
            let wire = request(method, &[], &psk, &salt, b"data");
            for i in 0..wire.len() {
                let mut bad = wire.clone();
                bad[i] ^= 0x80;
                let mut replay = ReplayFilter::new(4);
                assert_eq!(server.decode_request(&mut bad, NOW, &mut replay).err(), Some(Error::Auth), "byte {i}");
                assert!(replay.is_empty());
            }
            let rsalt = vec![7; method.salt_len()];
            let resp = ServerResponse { method, key: &psk, salt: &rsalt, request_salt: &salt, timestamp: NOW };
            let mut back = Vec::new();
            resp.encode(b"data", &mut back);
            let header_end = method.salt_len() * 2 + 11 + TAG_LEN;
            for i in 0..header_end {
                let mut bad = back.clone();
                bad[i] ^= 0x80;
                assert_eq!(decode_response(method, &psk, &salt, &mut bad, NOW).err(), Some(Error::Auth));
            }
            // The right header for another request.
            let mut copy = back.clone();
            assert_eq!(
                decode_response(method, &psk, &vec![8; method.salt_len()], &mut copy, NOW).err(),
                Some(Error::RequestSaltMismatch)
            );
        }
    }

    #[test]
    fn recorded_first_flight_replayed_is_rejected() {
        let method = Method::Blake3Aes256Gcm;
        let psk = key(method, 9);
        let server = Server::new(method, psk);
        let mut replay = ReplayFilter::new(1024);
        let recorded = request(method, &[], &psk, &[0x42; 32], b"secret");
        server.decode_request(&mut recorded.clone(), NOW, &mut replay).unwrap();
        for later in [0, 1, 29, 30] {
            assert_eq!(
                server.decode_request(&mut recorded.clone(), NOW + later, &mut replay).err(),
                Some(Error::Replayed),
                "+{later}"
            );
        }
        // Past the timestamp window it is refused on time, whatever the filter holds.
        assert!(matches!(
            server.decode_request(&mut recorded.clone(), NOW + 31, &mut replay),
            Err(Error::BadTimestamp { .. })
        ));
    }

    #[test]
    fn timestamps_outside_thirty_seconds_are_rejected() {
        let method = Method::Blake3Aes128Gcm;
        let psk = key(method, 2);
        let server = Server::new(method, psk);
        let mut replay = ReplayFilter::new(1024);
        for (i, now) in [NOW - 30, NOW + 30, NOW - 31, NOW + 31, 0, u64::MAX].into_iter().enumerate() {
            let mut wire = request(method, &[], &psk, &[i as u8; 16], b"t");
            let result = server.decode_request(&mut wire, now, &mut replay);
            if now.abs_diff(NOW) <= 30 {
                assert!(result.is_ok(), "now {now}");
            } else {
                assert_eq!(result.err(), Some(Error::BadTimestamp { timestamp: NOW, now }));
            }
        }
        let rsalt = [1u8; 16];
        let resp = ServerResponse { method, key: &psk, salt: &rsalt, request_salt: &[0; 16], timestamp: NOW + 31 };
        let mut back = Vec::new();
        resp.encode(b"late", &mut back);
        assert!(matches!(decode_response(method, &psk, &[0; 16], &mut back, NOW), Err(Error::BadTimestamp { .. })));
    }

    #[test]
    fn client_pads_when_it_has_no_payload_and_server_demands_it() {
        let method = Method::Blake3Aes128Gcm;
        let psk = key(method, 3);
        let server = Server::new(method, psk);
        let d = dest();
        let mut wire = Vec::new();
        let req = ClientRequest {
            method,
            identities: &[],
            key: &psk,
            salt: &[1; 16],
            timestamp: NOW,
            destination: &d,
            padding_len: 0,
        };
        req.encode(b"", &mut wire);
        let (got, _) = server.decode_request(&mut wire, NOW, &mut ReplayFilter::new(4)).unwrap();
        assert!(got.payload.is_empty());
        // 1 byte of padding was forced: salt, fixed header, var header of addr+port+2+1, tag.
        assert_eq!(wire.len(), request_overhead(method, 0) + 13 + 2 + 2 + 1);

        // Hand-sealed variable headers that break the rules.
        let craft = |var: &[u8]| {
            let salt = [var.len() as u8; 16];
            let mut out = salt.to_vec();
            let mut sealer = ChunkSealer::new(method, &session_subkey(&psk, &salt)[..16]);
            let mut fixed = vec![TYPE_REQUEST];
            fixed.extend_from_slice(&NOW.to_be_bytes());
            fixed.extend_from_slice(&(var.len() as u16).to_be_bytes());
            fixed.extend_from_slice(&[0; TAG_LEN]);
            sealer.seal_piece(&mut fixed);
            out.extend_from_slice(&fixed);
            let mut v = var.to_vec();
            v.extend_from_slice(&[0; TAG_LEN]);
            sealer.seal_piece(&mut v);
            out.extend_from_slice(&v);
            server.decode_request(&mut out, NOW, &mut ReplayFilter::new(4)).err()
        };
        let addr = [1, 10, 0, 0, 1, 0, 80];
        assert_eq!(craft(&[&addr[..], &[0, 0]].concat()), Some(Error::NoPaddingNorPayload));
        assert_eq!(craft(&[&addr[..], &[0, 5, 0, 0]].concat()), Some(Error::HeaderOverrun));
        assert_eq!(craft(&[&addr[..], &[0]].concat()), Some(Error::HeaderOverrun));
        assert_eq!(craft(&[&addr[..], &[0, 1, 0]].concat()), None);
        assert_eq!(craft(&[&addr[..], &[0, 0, b'p']].concat()), None);
        assert_eq!(craft(&[1, 10, 0]), Some(Error::Address(crate::DecodeError::UnexpectedEnd)));
        // A response-type header on the request stream.
        let salt = [0x77; 16];
        let mut sealer = ChunkSealer::new(method, &session_subkey(&psk, &salt)[..16]);
        let mut fixed = vec![TYPE_RESPONSE];
        fixed.extend_from_slice(&NOW.to_be_bytes());
        fixed.extend_from_slice(&[0, 10]);
        fixed.extend_from_slice(&[0; TAG_LEN]);
        sealer.seal_piece(&mut fixed);
        let mut out = [&salt[..], &fixed].concat();
        assert_eq!(
            server.decode_request(&mut out, NOW, &mut ReplayFilter::new(4)).err(),
            Some(Error::BadStreamType(1))
        );
    }

    #[test]
    fn hundred_thousand_fresh_handshakes_without_a_false_reject() {
        let method = Method::Blake3Aes128Gcm;
        let psk = key(method, 4);
        let server = Server::new(method, psk);
        let mut replay = ReplayFilter::new(200_000);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let d = Destination { addr: Address::Ip("10.0.0.1".parse().unwrap()), port: 80 };
        let mut wire = Vec::with_capacity(256);
        let started = std::time::Instant::now();
        for i in 0..100_000u64 {
            let mut salt = [0u8; 16];
            rng.fill(&mut salt);
            let now = NOW + i / 1000; // 100 s of traffic: the filter rotates along the way.
            wire.clear();
            let req = ClientRequest {
                method,
                identities: &[],
                key: &psk,
                salt: &salt,
                timestamp: now,
                destination: &d,
                padding_len: 0,
            };
            req.encode(b"GET", &mut wire);
            let (got, _) = server.decode_request(&mut wire, now, &mut replay).unwrap_or_else(|e| panic!("#{i}: {e}"));
            assert_eq!(got.payload.len(), 3);
        }
        eprintln!("100000 handshakes in {:?}", started.elapsed());
    }

    #[test]
    fn noise_never_panics() {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let mut replay = ReplayFilter::new(1 << 16);
        for len in 0..400 {
            let mut noise = vec![0u8; len];
            for method in METHODS {
                rng.fill(&mut noise);
                let single = Server::new(method, key(method, 5));
                let _ = single.decode_request(&mut noise.clone(), NOW, &mut replay);
                if method.supports_identity_headers() {
                    let multi = Server::with_users(method, key(method, 5), vec![key(method, 6)]).unwrap();
                    let _ = multi.decode_request(&mut noise.clone(), NOW, &mut replay);
                }
                let _ = decode_response(method, &key(method, 5), &vec![0; method.salt_len()], &mut noise, NOW);
            }
        }
    }
}
