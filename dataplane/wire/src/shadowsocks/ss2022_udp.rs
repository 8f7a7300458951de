//! Shadowsocks 2022 UDP (SIP022), sans-IO.
//!
//! AES methods: `[separate header][identity header, multi-user requests][AEAD body]`. The
//! separate header is `[session id u64][packet id u64]` encrypted as one AES block with the
//! first PSK (the server's identity PSK for a multi-user request, else the user's); an
//! identity header is BLAKE3(user PSK)[..16] XOR the plain separate header, one AES block
//! under the identity PSK. The body is sealed with the session subkey (the user PSK and the
//! session id through BLAKE3) and the last 12 bytes of the plain separate header as nonce.
//!
//! ChaCha: `[nonce 24][XChaCha20-Poly1305 under the PSK itself]`, the session and packet ids
//! inside the sealed part. Either way the body starts `[type][timestamp u64]`, then (responses
//! only) the client's session id, then `[padding length u16][padding][address][payload]`.

use std::ops::Range;

use super::ss2022::{aes_decrypt_block, aes_encrypt_block, identity_hash, session_subkey, MAX_TIME_DIFF};
use super::{Error, MasterKey, Method};
use crate::addr::{Destination, SOCKS_TYPES};
use crate::aead::{open_once, AeadKey, Cipher, TAG_LEN};
use crate::take_u16;

/// Client to server.
pub const TYPE_CLIENT: u8 = 0;
/// Server to client.
pub const TYPE_SERVER: u8 = 1;

/// One opened packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The sender's session id.
    pub session_id: u64,
    /// The sender's packet id within the session.
    pub packet_id: u64,
    /// A response's client session id (0 in a request).
    pub client_session_id: u64,
    /// The packet's address: the destination of a request, the source of a response.
    pub address: Destination,
    /// Where the payload is in the buffer.
    pub payload: Range<usize>,
}

fn check_time(timestamp: u64, now: u64) -> Result<(), Error> {
    if timestamp.abs_diff(now) > MAX_TIME_DIFF {
        return Err(Error::BadTimestamp { timestamp, now });
    }
    Ok(())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the body after its ids: type, timestamp, (client session id), padding, address.
/// `body` is the plain body; `base` its offset in the packet buffer.
fn decode_body(body: &[u8], base: usize, kind: u8, now: u64) -> Result<(u64, Destination, Range<usize>), Error> {
    let mut cur = body;
    let fixed = if kind == TYPE_SERVER { 1 + 8 + 8 } else { 1 + 8 };
    if cur.len() < fixed + 2 {
        return Err(Error::UnexpectedEnd);
    }
    if cur[0] != kind {
        return Err(Error::BadStreamType(cur[0]));
    }
    check_time(u64_at(cur, 1), now)?;
    let client_session = if kind == TYPE_SERVER { u64_at(cur, 9) } else { 0 };
    cur = &cur[fixed..];
    let padding = usize::from(take_u16(&mut cur).map_err(Error::Address)?);
    if cur.len() < padding {
        return Err(Error::HeaderOverrun);
    }
    cur = &cur[padding..];
    let addr = SOCKS_TYPES.decode_addr(&mut cur).map_err(Error::Address)?;
    let port = take_u16(&mut cur).map_err(Error::Address)?;
    let end = base + body.len();
    Ok((client_session, Destination { addr, port }, end - cur.len()..end))
}

/// Opens a client's packet in place. `identity_psk` is a multi-user server's own PSK (then an
/// identity header follows the separate header); `find` gives the user (and its PSK) an
/// identity hash names, or the only user with `None`. `Err(Auth)` when no key opens it.
pub fn open_request<U>(
    method: Method,
    identity_psk: Option<&MasterKey>,
    mut find: impl FnMut(Option<&[u8; 16]>) -> Option<(U, MasterKey)>,
    buf: &mut [u8],
    now: u64,
) -> Result<(Packet, U, MasterKey), Error> {
    if method == Method::Blake3ChaCha20Poly1305 {
        let (user, key) = find(None).ok_or(Error::UnknownUser)?;
        let packet = open_chacha(&key, buf, TYPE_CLIENT, now)?;
        return Ok((packet, user, key));
    }
    if buf.len() < 16 + TAG_LEN {
        return Err(Error::UnexpectedEnd);
    }
    let mut header: [u8; 16] = buf[..16].try_into().expect("16 bytes");
    let mut body_at = 16;
    let (user, key) = match identity_psk {
        Some(ipsk) => {
            if buf.len() < 32 + TAG_LEN {
                return Err(Error::UnexpectedEnd);
            }
            aes_decrypt_block(ipsk.as_bytes(), &mut header);
            let mut identity: [u8; 16] = buf[16..32].try_into().expect("16 bytes");
            aes_decrypt_block(ipsk.as_bytes(), &mut identity);
            for (i, h) in identity.iter_mut().zip(header) {
                *i ^= h;
            }
            body_at = 32;
            find(Some(&identity)).ok_or(Error::UnknownUser)?
        }
        None => {
            let (user, key) = find(None).ok_or(Error::UnknownUser)?;
            aes_decrypt_block(key.as_bytes(), &mut header);
            (user, key)
        }
    };
    let session_id = u64_at(&header, 0);
    let packet_id = u64_at(&header, 8);
    let subkey = session_subkey(&key, &header[..8]);
    let body = open_once(method.cipher(), &subkey[..method.key_len()], &header[4..16], &[], &mut buf[body_at..])
        .map_err(|_| Error::Auth)?;
    let len = body.len();
    let (_, address, payload) = decode_body(&buf[body_at..body_at + len], body_at, TYPE_CLIENT, now)?;
    Ok((Packet { session_id, packet_id, client_session_id: 0, address, payload }, user, key))
}

/// Opens a server's response in place (the client side), under the user's PSK.
pub fn open_response(method: Method, key: &MasterKey, buf: &mut [u8], now: u64) -> Result<Packet, Error> {
    if method == Method::Blake3ChaCha20Poly1305 {
        return open_chacha(key, buf, TYPE_SERVER, now);
    }
    if buf.len() < 16 + TAG_LEN {
        return Err(Error::UnexpectedEnd);
    }
    let mut header: [u8; 16] = buf[..16].try_into().expect("16 bytes");
    aes_decrypt_block(key.as_bytes(), &mut header);
    let subkey = session_subkey(key, &header[..8]);
    let body = open_once(method.cipher(), &subkey[..method.key_len()], &header[4..16], &[], &mut buf[16..])
        .map_err(|_| Error::Auth)?;
    let len = body.len();
    let (client_session_id, address, payload) = decode_body(&buf[16..16 + len], 16, TYPE_SERVER, now)?;
    Ok(Packet { session_id: u64_at(&header, 0), packet_id: u64_at(&header, 8), client_session_id, address, payload })
}

fn open_chacha(key: &MasterKey, buf: &mut [u8], kind: u8, now: u64) -> Result<Packet, Error> {
    if buf.len() < 24 + 16 + TAG_LEN {
        return Err(Error::UnexpectedEnd);
    }
    let (nonce, sealed) = buf.split_at_mut(24);
    let body = open_once(Cipher::XChaCha20Poly1305, key.as_bytes(), nonce, &[], sealed).map_err(|_| Error::Auth)?;
    let len = body.len();
    let plain = &buf[24..24 + len];
    let (session_id, packet_id) = (u64_at(plain, 0), u64_at(plain, 8));
    let (client_session_id, address, payload) = decode_body(&plain[16..], 24 + 16, kind, now)?;
    Ok(Packet { session_id, packet_id, client_session_id, address, payload })
}

/// What sealing one packet needs besides its address and payload.
#[derive(Debug, Clone, Copy)]
pub struct Seal<'a> {
    /// A 2022 method.
    pub method: Method,
    /// The user's PSK.
    pub key: &'a MasterKey,
    /// A multi-user request's identity PSK (requests only; `None` otherwise).
    pub identity_psk: Option<&'a MasterKey>,
    /// The sender's session id and packet id.
    pub session_id: u64,
    /// The sender's packet id.
    pub packet_id: u64,
    /// `Some(client session id)` for a response, `None` for a request.
    pub client_session_id: Option<u64>,
    /// Seconds since the epoch.
    pub now: u64,
    /// A fresh nonce (ChaCha only; 24 bytes used).
    pub nonce: [u8; 24],
}

/// Appends one packet to `out`.
pub fn seal(s: &Seal<'_>, address: &Destination, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let mut ids = [0u8; 16];
    ids[..8].copy_from_slice(&s.session_id.to_be_bytes());
    ids[8..].copy_from_slice(&s.packet_id.to_be_bytes());
    let chacha = s.method == Method::Blake3ChaCha20Poly1305;
    if chacha {
        out.extend_from_slice(&s.nonce);
        out.extend_from_slice(&ids);
    } else {
        let mut header = ids;
        aes_encrypt_block(s.identity_psk.unwrap_or(s.key).as_bytes(), &mut header);
        out.extend_from_slice(&header);
        if let Some(ipsk) = s.identity_psk {
            let mut identity = identity_hash(s.key);
            for (i, h) in identity.iter_mut().zip(ids) {
                *i ^= h;
            }
            aes_encrypt_block(ipsk.as_bytes(), &mut identity);
            out.extend_from_slice(&identity);
        }
    }
    let sealed_at = if chacha { start + 24 } else { out.len() };
    out.push(if s.client_session_id.is_some() { TYPE_SERVER } else { TYPE_CLIENT });
    out.extend_from_slice(&s.now.to_be_bytes());
    if let Some(c) = s.client_session_id {
        out.extend_from_slice(&c.to_be_bytes());
    }
    out.extend_from_slice(&0u16.to_be_bytes());
    SOCKS_TYPES.encode_addr(&address.addr, out);
    out.extend_from_slice(&address.port.to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + TAG_LEN, 0);
    if chacha {
        // UDP takes XChaCha20 (a random 24-byte nonce per packet), TCP ChaCha20.
        let key = AeadKey::new(Cipher::XChaCha20Poly1305, s.key.as_bytes());
        key.seal(&s.nonce, &[], &mut out[sealed_at..]);
    } else {
        let subkey = session_subkey(s.key, &ids[..8]);
        let key = AeadKey::new(s.method.cipher(), &subkey[..s.method.key_len()]);
        key.seal(&ids[4..16], &[], &mut out[sealed_at..]);
    }
}

/// SIP022's sliding window over one session's packet ids: a packet id seen, or older than the
/// window, is refused.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// The highest packet id accepted, plus one (0: none yet).
    top: u64,
    /// Bit `i`: packet id `top - 1 - i` has been seen.
    bits: [u64; WINDOW_WORDS],
}

const WINDOW_WORDS: usize = 32;

/// Packet ids the window remembers below the highest.
pub const WINDOW: u64 = (WINDOW_WORDS * 64) as u64;

impl ReplayWindow {
    /// Accepts `id` once: `false` for a replay or an id older than the window.
    pub fn check_and_insert(&mut self, id: u64) -> bool {
        let Some(next) = id.checked_add(1) else { return false };
        if next > self.top {
            let shift = next - self.top;
            self.shift(shift);
            self.top = next;
            self.set(0);
            return true;
        }
        let back = self.top - next;
        if back >= WINDOW || self.get(back) {
            return false;
        }
        self.set(back);
        true
    }

    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.bits = [0; WINDOW_WORDS];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..WINDOW_WORDS).rev() {
            let lo = if i >= words { self.bits[i - words] } else { 0 };
            let carry = if bits > 0 && i > words { self.bits[i - words - 1] >> (64 - bits) } else { 0 };
            self.bits[i] = if bits > 0 { (lo << bits) | carry } else { lo };
        }
    }

    fn get(&self, back: u64) -> bool {
        self.bits[(back / 64) as usize] & (1 << (back % 64)) != 0
    }

    fn set(&mut self, back: u64) {
        self.bits[(back / 64) as usize] |= 1 << (back % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Address;

    fn key(method: Method, seed: u8) -> MasterKey {
        MasterKey::from_bytes(&(0..method.key_len() as u8).map(|i| i ^ seed).collect::<Vec<_>>())
    }

    #[test]
    fn requests_and_responses_round_trip_single_and_multi_user() {
        let dest = Destination { addr: Address::parse("example.com").unwrap(), port: 53 };
        for method in [Method::Blake3Aes128Gcm, Method::Blake3Aes256Gcm, Method::Blake3ChaCha20Poly1305] {
            let user = key(method, 1);
            let ipsk = key(method, 9);
            let multi = method != Method::Blake3ChaCha20Poly1305;
            for identity in [None, Some(&ipsk)].into_iter().filter(|i| multi || i.is_none()) {
                let s = Seal {
                    method,
                    key: &user,
                    identity_psk: identity,
                    session_id: 7,
                    packet_id: 3,
                    client_session_id: None,
                    now: 1000,
                    nonce: [5; 24],
                };
                let mut out = Vec::new();
                seal(&s, &dest, b"query", &mut out);
                let hash = identity_hash(&user);
                let find = |h: Option<&[u8; 16]>| (h.is_none() || h == Some(&hash)).then_some(((), user));
                let (p, (), _) = open_request(method, identity, find, &mut out.clone(), 1000).unwrap();
                assert_eq!((p.session_id, p.packet_id, &p.address), (7, 3, &dest));
                let mut copy = out.clone();
                let (p, (), _) = open_request(method, identity, find, &mut copy, 1000).unwrap();
                assert_eq!(&copy[p.payload], b"query");
                // A stale clock, a flipped bit, a stranger's key.
                assert!(matches!(
                    open_request(method, identity, find, &mut out.clone(), 1100),
                    Err(Error::BadTimestamp { .. })
                ));
                let mut flipped = out.clone();
                *flipped.last_mut().unwrap() ^= 1;
                assert!(open_request(method, identity, find, &mut flipped, 1000).is_err());
                let other = key(method, 2);
                assert!(open_request(method, identity, |_| Some(((), other)), &mut out.clone(), 1000).is_err());
            }
            let s = Seal {
                method,
                key: &user,
                identity_psk: None,
                session_id: 11,
                packet_id: 0,
                client_session_id: Some(7),
                now: 1000,
                nonce: [6; 24],
            };
            let mut out = Vec::new();
            seal(&s, &dest, b"answer", &mut out);
            let p = open_response(method, &user, &mut out, 1000).unwrap();
            assert_eq!((p.session_id, p.client_session_id, &out[p.payload.clone()]), (11, 7, &b"answer"[..]));
        }
    }

    #[test]
    fn the_window_refuses_replays_and_ids_too_old() {
        let mut w = ReplayWindow::default();
        assert!(w.check_and_insert(0));
        assert!(!w.check_and_insert(0));
        assert!(w.check_and_insert(5));
        assert!(w.check_and_insert(3));
        assert!(!w.check_and_insert(3));
        assert!(w.check_and_insert(100));
        assert!(!w.check_and_insert(5));
        assert!(w.check_and_insert(4));
        assert!(w.check_and_insert(100 + WINDOW));
        assert!(!w.check_and_insert(100), "older than the window");
        assert!(w.check_and_insert(101 + 1));
        assert!(!w.check_and_insert(u64::MAX));
    }
}
