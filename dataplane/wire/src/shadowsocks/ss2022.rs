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
        let method = self.method;
        let kl = method.key_len();
        let salt_len = method.salt_len();
        let fixed_at = salt_len + if self.users.is_some() { IDENTITY_HEADER_LEN } else { 0 };
        let var_at = fixed_at + REQUEST_FIXED_LEN + TAG_LEN;
        if buf.len() < var_at {
            return Err(Error::UnexpectedEnd);
        }
        let salt = Salt::new(&buf[..salt_len]);
        let (user, key) = match &self.users {
            None => (None, &self.psk),
            Some(users) => {
                let mut block: [u8; 16] = buf[salt_len..fixed_at].try_into().expect("16 bytes");
                aes_decrypt_block(&identity_subkey(&self.psk, salt.as_bytes())[..kl], &mut block);
                let i = *users.by_hash.get(&block).ok_or(Error::UnknownUser)?;
                (Some(i), &users.keys[i])
            }
        };
        let mut opener = ChunkOpener::new(method, &session_subkey(key, salt.as_bytes())[..kl]);
        // Open a copy of the fixed header so that "need more" leaves the buffer as it was.
        let mut fixed = [0u8; REQUEST_FIXED_LEN + TAG_LEN];
        fixed.copy_from_slice(&buf[fixed_at..var_at]);
        let fixed = opener.open_piece(&mut fixed)?;
        if fixed[0] != TYPE_REQUEST {
            return Err(Error::BadStreamType(fixed[0]));
        }
        check_time(u64::from_be_bytes(fixed[1..9].try_into().expect("8 bytes")), now)?;
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
        Ok((Request { destination: Destination { addr, port }, payload, consumed: end, salt, user }, opener))
    }
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
