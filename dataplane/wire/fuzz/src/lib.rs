//! Helpers the fuzz targets share: fixed keys, a mutation scheme that applies fuzz bytes to a
//! valid sealed message, and builders that seal fuzz-chosen plaintext so that the code past
//! authentication (address parsing, padding, lengths) sees arbitrary bytes.

use shardray_wire::addr::{Address, Destination};
use shardray_wire::aead::{AeadKey, Cipher, TAG_LEN};
use shardray_wire::shadowsocks::ss2022::{self, ClientRequest};
use shardray_wire::shadowsocks::{ChunkOpener as SsChunkOpener, Error as SsError, MasterKey, Method, Opened};
use shardray_wire::vmess::header::{Command, Options, RequestHeader, Security};
use shardray_wire::vmess::kdf::{self, kdf12, kdf16, sha256_16};
use shardray_wire::vmess::{Chunk, ChunkOpener as VmessChunkOpener, UserKey, VmessError};

/// The clock every target uses, Unix seconds.
pub const NOW: u64 = 1_700_000_000;

/// Splits `data` into a head of up to 255 bytes (its length in the first byte) and the rest.
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.split_first() {
        None => (&[], &[]),
        Some((&n, rest)) => rest.split_at(usize::from(n).min(rest.len())),
    }
}

/// Splits `data` into a head of up to 65535 bytes (its length in the first two bytes, LE) and
/// the rest.
pub fn split_long(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (&[], data);
    }
    let n = usize::from(u16::from_le_bytes([data[0], data[1]]));
    data[2..].split_at(n.min(data.len() - 2))
}

/// Takes the first byte of `data`, or 0.
pub fn first(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&b, rest)) => (b, rest),
        None => (0, &[]),
    }
}

/// Applies `ops` to `msg` as 4-byte records `[op, pos hi, pos lo, value]`: op % 5 is 0 xor the
/// byte at pos with value, 1 truncate at pos, 2 insert value at pos, 3 remove the byte at pos, 4
/// append everything after this record and stop. Leftover bytes (fewer than 4) are appended.
pub fn mutate(msg: &mut Vec<u8>, ops: &[u8]) {
    let mut rest = ops;
    while let [op, hi, lo, value, tail @ ..] = rest {
        let pos = usize::from(u16::from_be_bytes([*hi, *lo]));
        let len = msg.len();
        match op % 5 {
            0 if len > 0 => msg[pos % len] ^= value,
            1 => msg.truncate(pos),
            2 => msg.insert(pos % (len + 1), *value),
            3 if len > 0 => {
                msg.remove(pos % len);
            }
            4 => break,
            _ => {}
        }
        rest = tail;
    }
    msg.extend_from_slice(rest.get(4..).unwrap_or(rest));
}

/// A Shadowsocks method from a byte: classic methods only, 2022 methods only, or any.
pub fn ss_method(b: u8, classic: bool) -> Method {
    if classic {
        [Method::Aes128Gcm, Method::Aes256Gcm, Method::ChaCha20Poly1305, Method::XChaCha20Poly1305][usize::from(b % 4)]
    } else {
        [Method::Blake3Aes128Gcm, Method::Blake3Aes256Gcm, Method::Blake3ChaCha20Poly1305][usize::from(b % 3)]
    }
}

/// A fixed key of the method's length, varied by `seed`.
pub fn ss_key(method: Method, seed: u8) -> MasterKey {
    let bytes: Vec<u8> = (0..method.key_len() as u8).map(|i| i.wrapping_mul(7).wrapping_add(seed)).collect();
    MasterKey::from_bytes(&bytes)
}

/// A fixed salt of the method's length, varied by `seed`.
pub fn ss_salt(method: Method, seed: u8) -> Vec<u8> {
    (0..method.salt_len() as u8).map(|i| i.wrapping_mul(13) ^ seed).collect()
}

/// The little-endian counter nonce `n` of a Shadowsocks cipher.
pub fn ss_nonce(method: Method, n: u64) -> Vec<u8> {
    let mut nonce = vec![0u8; method.cipher().nonce_len()];
    nonce[..8].copy_from_slice(&n.to_le_bytes());
    nonce
}

/// Appends `plain` sealed under `key` with `nonce`.
pub fn seal_into(key: &AeadKey, nonce: &[u8], aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(plain);
    out.extend_from_slice(&[0; TAG_LEN]);
    key.seal(nonce, aad, &mut out[at..]);
}

/// The fixed VMess user.
pub fn vmess_user() -> UserKey {
    UserKey::new(&uuid::Uuid::from_bytes([0x5a; 16]))
}

/// A VMess request header whose security, options and command come from three bytes, so a
/// body codec's framing varies with the input. Every option combination is possible (an invalid
/// one makes the codec constructors fail).
pub fn vmess_header(b: [u8; 3]) -> RequestHeader {
    let security = [Security::Aes128Gcm, Security::ChaCha20Poly1305, Security::None][usize::from(b[0] % 3)];
    let command = [Command::Tcp, Command::Udp, Command::Mux][usize::from(b[2] % 3)];
    RequestHeader {
        body_iv: [b[0] ^ 0x11; 16],
        body_key: [b[0] ^ 0x22; 16],
        response_auth: 0x33,
        options: Options(b[1] & 0x1d),
        security,
        command,
        destination: None,
    }
}

/// FNV-1a, 32 bits, as the VMess request header checksum.
pub fn fnv1a(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| (h ^ u32::from(x)).wrapping_mul(0x0100_0193))
}

/// A whole VMess request (auth ID, sealed length, nonce, sealed header) for `user` whose header
/// plaintext is `plain` followed by its FNV-1a checksum, at `timestamp`.
pub fn seal_vmess_request(user: &UserKey, timestamp: u64, plain: &[u8]) -> Vec<u8> {
    let mut body = plain.to_vec();
    body.extend_from_slice(&fnv1a(plain).to_be_bytes());
    let auth_id = user.auth_id().encode(timestamp, [1, 2, 3, 4]);
    let nonce = [9u8; 8];
    let ck = user.cmd_key();
    let at = |label: &[u8]| kdf16(ck, &[label, &auth_id, &nonce]);
    let len_key = AeadKey::new(Cipher::Aes128Gcm, &at(kdf::LABEL_HEADER_LEN_KEY));
    let len_nonce = kdf12(ck, &[kdf::LABEL_HEADER_LEN_NONCE, &auth_id, &nonce]);
    let body_key = AeadKey::new(Cipher::Aes128Gcm, &at(kdf::LABEL_HEADER_KEY));
    let body_nonce = kdf12(ck, &[kdf::LABEL_HEADER_NONCE, &auth_id, &nonce]);
    let mut out = auth_id.to_vec();
    seal_into(&len_key, &len_nonce, &auth_id, &(body.len() as u16).to_be_bytes(), &mut out);
    out.extend_from_slice(&nonce);
    seal_into(&body_key, &body_nonce, &auth_id, &body, &mut out);
    out
}

/// A VMess response header for `request` with the sealed length `len` and plaintext `plain`.
pub fn seal_vmess_response(request: &RequestHeader, len: u16, plain: &[u8]) -> Vec<u8> {
    let key = sha256_16(&request.body_key);
    let iv = sha256_16(&request.body_iv);
    let len_key = AeadKey::new(Cipher::Aes128Gcm, &kdf16(&key, &[kdf::LABEL_RESP_LEN_KEY]));
    let body_key = AeadKey::new(Cipher::Aes128Gcm, &kdf16(&key, &[kdf::LABEL_RESP_KEY]));
    let mut out = Vec::new();
    seal_into(&len_key, &kdf12(&iv, &[kdf::LABEL_RESP_LEN_NONCE]), &[], &len.to_be_bytes(), &mut out);
    seal_into(&body_key, &kdf12(&iv, &[kdf::LABEL_RESP_NONCE]), &[], plain, &mut out);
    out
}

/// Opens every VMess body chunk in `buf`, offering the opener `step` more bytes at a time (so
/// `UnexpectedEnd` and the pending size are exercised), and checks the opener's contract on
/// the way: ranges inside the bytes offered, `UnexpectedEnd` leaving them untouched. Returns the
/// plaintext and how it ended: `Ok` on an end chunk, or the error (`UnexpectedEnd` when the
/// bytes ran out).
pub fn drain_vmess(opener: &mut VmessChunkOpener, buf: &mut [u8], step: usize) -> (Vec<u8>, Result<(), VmessError>) {
    let step = step.max(1);
    let mut out = Vec::new();
    let (mut at, mut avail) = (0, step);
    loop {
        let end = (at + avail).min(buf.len());
        let before = buf[at..end].to_vec();
        match opener.open(&mut buf[at..end]) {
            Ok(Chunk::Data { plain, consumed }) => {
                assert!(plain.start <= plain.end && plain.end <= consumed && consumed <= end - at && consumed > 0);
                out.extend_from_slice(&buf[at + plain.start..at + plain.end]);
                at += consumed;
                avail = step;
            }
            Ok(Chunk::End { consumed }) => {
                assert!(consumed <= end - at);
                return (out, Ok(()));
            }
            Err(VmessError::UnexpectedEnd) => {
                assert_eq!(buf[at..end], before[..], "UnexpectedEnd changed the buffer");
                if end == buf.len() {
                    return (out, Err(VmessError::UnexpectedEnd));
                }
                avail += step;
            }
            Err(e) => return (out, Err(e)),
        }
    }
}

/// The Shadowsocks twin of [`drain_vmess`]: opens every chunk, `step` more bytes at a time.
/// Returns the plaintext and `Ok` once the bytes ran out on a chunk boundary.
pub fn drain_ss(opener: &mut SsChunkOpener, buf: &mut [u8], step: usize) -> (Vec<u8>, Result<(), SsError>) {
    let step = step.max(1);
    let mut out = Vec::new();
    let (mut at, mut avail) = (0, step);
    loop {
        let end = (at + avail).min(buf.len());
        let before = buf[at..end].to_vec();
        match opener.open(&mut buf[at..end]) {
            Ok(Opened::Chunk { plain, consumed }) => {
                assert!(plain.start <= plain.end && plain.end <= consumed && consumed <= end - at && consumed > 0);
                out.extend_from_slice(&buf[at + plain.start..at + plain.end]);
                at += consumed;
                avail = step;
            }
            Ok(Opened::NeedMore { needed }) => {
                assert_eq!(buf[at..end], before[..], "NeedMore changed the buffer");
                assert!(needed.is_none_or(|n| n > end - at), "NeedMore with enough bytes");
                if end == buf.len() {
                    return (out, if at == buf.len() { Ok(()) } else { Err(SsError::UnexpectedEnd) });
                }
                avail += step;
            }
            Err(e) => return (out, Err(e)),
        }
    }
}

/// A Shadowsocks 2022 request: salt, the identity header naming `user` under `server` when
/// given, the fixed header (`kind`, `timestamp`, `var_len`) and the variable header `var`
/// sealed under `user`'s session key, then `more` as one chunk when not empty.
#[allow(clippy::too_many_arguments)]
pub fn seal_ss2022_request(
    method: Method,
    server: Option<&MasterKey>,
    user: &MasterKey,
    salt: &[u8],
    kind: u8,
    timestamp: u64,
    var_len: u16,
    var: &[u8],
    more: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    // The real client writes the salt and identity header; the rest is replaced.
    let destination = Destination { addr: Address::Domain("x".into()), port: 1 };
    let identities: Vec<MasterKey> = server.into_iter().copied().collect();
    let client = ClientRequest {
        method,
        identities: &identities,
        key: user,
        salt,
        timestamp,
        destination: &destination,
        padding_len: 1,
    };
    client.encode(&[], &mut out);
    out.truncate(salt.len() + identities.len() * ss2022::IDENTITY_HEADER_LEN);
    let key = AeadKey::new(method.cipher(), &ss2022::session_subkey(user, salt)[..method.key_len()]);
    let mut fixed = vec![kind];
    fixed.extend_from_slice(&timestamp.to_be_bytes());
    fixed.extend_from_slice(&var_len.to_be_bytes());
    seal_into(&key, &ss_nonce(method, 0), &[], &fixed, &mut out);
    seal_into(&key, &ss_nonce(method, 1), &[], var, &mut out);
    if !more.is_empty() {
        seal_into(&key, &ss_nonce(method, 2), &[], &(more.len() as u16).to_be_bytes(), &mut out);
        seal_into(&key, &ss_nonce(method, 3), &[], more, &mut out);
    }
    out
}

/// A Shadowsocks 2022 response: salt, the header (`kind`, `timestamp`, `request_salt`, `len`)
/// and `first` sealed alone under `key`, then `more` as one chunk when not empty.
#[allow(clippy::too_many_arguments)]
pub fn seal_ss2022_response(
    method: Method,
    key: &MasterKey,
    salt: &[u8],
    kind: u8,
    timestamp: u64,
    request_salt: &[u8],
    len: u16,
    first: &[u8],
    more: &[u8],
) -> Vec<u8> {
    let mut out = salt.to_vec();
    let key = AeadKey::new(method.cipher(), &ss2022::session_subkey(key, salt)[..method.key_len()]);
    let mut header = vec![kind];
    header.extend_from_slice(&timestamp.to_be_bytes());
    header.extend_from_slice(request_salt);
    header.extend_from_slice(&len.to_be_bytes());
    seal_into(&key, &ss_nonce(method, 0), &[], &header, &mut out);
    seal_into(&key, &ss_nonce(method, 1), &[], first, &mut out);
    if !more.is_empty() {
        seal_into(&key, &ss_nonce(method, 2), &[], &(more.len() as u16).to_be_bytes(), &mut out);
        seal_into(&key, &ss_nonce(method, 3), &[], more, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardray_wire::shadowsocks::ss2022::{decode_response, Server};
    use shardray_wire::shadowsocks::ReplayFilter;
    use shardray_wire::vmess::{RequestOpener, ResponseHeader};

    #[test]
    fn mutate_applies_each_op() {
        let mut m = b"abcdef".to_vec();
        mutate(&mut m, &[0, 0, 1, 0x20, 2, 0, 0, b'>', 3, 0, 6, 0, 1, 0, 4, 0, b'x', b'y']);
        assert_eq!(m, b">aBcxy");
        let mut m = b"abc".to_vec();
        mutate(&mut m, &[4, 9, 9, 9, b'z', b'z']);
        assert_eq!(m, b"abczz");
    }

    #[test]
    fn sealed_vmess_request_opens() {
        // Version 1, IV, key, auth, options (stream), security 3, reserved, TCP, port 443, IPv4.
        let mut plain = vec![1];
        plain.extend_from_slice(&[0x11; 32]);
        plain.extend_from_slice(&[0x33, 0x01, 0x03, 0, 1, 1, 187, 1, 10, 0, 0, 1]);
        let mut wire = seal_vmess_request(&vmess_user(), NOW, &plain);
        let (header, n) = RequestOpener::new(&vmess_user()).open(&mut wire).unwrap();
        assert_eq!((header.response_auth, n), (0x33, wire.len()));
    }

    #[test]
    fn sealed_vmess_response_opens() {
        let request = vmess_header([0; 3]);
        let mut wire = seal_vmess_response(&request, 4, &[0x33, 0, 0, 0]);
        let mut real = Vec::new();
        ResponseHeader::for_request(&request).seal(&request, &mut real);
        assert_eq!(wire, real);
        assert!(ResponseHeader::open(&mut wire, &request).is_ok());
    }

    #[test]
    fn sealed_ss2022_request_and_response_open() {
        for method in [Method::Blake3Aes128Gcm, Method::Blake3Aes256Gcm, Method::Blake3ChaCha20Poly1305] {
            let var = [1, 10, 0, 0, 1, 0, 80, 0, 0, b'h', b'i'];
            let (server_key, user_key, salt) = (ss_key(method, 1), ss_key(method, 3), ss_salt(method, 9));
            let mut wire = seal_ss2022_request(method, None, &server_key, &salt, 0, NOW, 11, &var, b"more");
            let server = Server::new(method, server_key);
            let (request, _) = server.decode_request(&mut wire, NOW, &mut ReplayFilter::new(4)).unwrap();
            assert_eq!(&wire[request.payload], b"hi");
            if method.supports_identity_headers() {
                let users = vec![ss_key(method, 2), user_key];
                let server = Server::with_users(method, server_key, users).unwrap();
                let mut wire = seal_ss2022_request(method, Some(&server_key), &user_key, &salt, 0, NOW, 11, &var, b"");
                let (request, _) = server.decode_request(&mut wire, NOW, &mut ReplayFilter::new(4)).unwrap();
                assert_eq!(request.user, Some(1));
            }
            let mut wire = seal_ss2022_response(method, &user_key, &ss_salt(method, 3), 1, NOW, &salt, 2, b"ok", b"");
            let (mut opener, n) = decode_response(method, &user_key, &salt, &mut wire, NOW).unwrap();
            assert_eq!(drain_ss(&mut opener, &mut wire[n..], 5), (b"ok".to_vec(), Ok(())));
        }
    }
}
