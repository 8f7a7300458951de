//! REALITY's server side, sans IO: gathers and parses a TLS ClientHello, authenticates it
//! (X25519 with the server's key, HKDF, the AES-GCM-sealed session id), and builds the
//! temporary certificate an authenticated client checks.
//!
//! The scheme, as XTLS/REALITY and its clients implement it:
//! - the client's X25519 key share (or the X25519 half of an X25519MLKEM768 share) and the
//!   server's private key give a shared secret; HKDF-SHA256 with salt `random[..20]` and info
//!   `"REALITY"` turns it into the 32-byte auth key;
//! - the 32-byte session id is AES-256-GCM (nonce `random[20..]`, AAD the ClientHello message
//!   with its session id zeroed) over 16 bytes: client version (3), reserved (1), unix time
//!   (u32 BE), short id (8);
//! - the server answers with an ed25519 certificate whose signature bytes are
//!   HMAC-SHA512(auth key, the certificate's ed25519 public key).

use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

use crate::tls_fields::{Fields as Reader, Truncated};

/// TLS record header length.
pub const RECORD_HEADER: usize = 5;

/// The largest ClientHello message gathered (Xray reads one of up to 64 KiB; real ones, with a
/// post-quantum key share, are under 2 KiB).
pub const MAX_HELLO: usize = 16 * 1024;

/// TLS 1.3's named group X25519.
const X25519: u16 = 0x001d;
/// The hybrid group X25519MLKEM768: an ML-KEM-768 encapsulation key (1184 bytes), then X25519.
const X25519_MLKEM768: u16 = 0x11ec;
const MLKEM768_KEY: usize = 1184;

/// Offset of the session id in the ClientHello message: type (1), length (3), version (2),
/// random (32), session id length (1).
const SESSION_ID_AT: usize = 39;

/// Why the first bytes are not (yet) a ClientHello REALITY could authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloError {
    /// More bytes may complete it.
    UnexpectedEnd,
    /// The first record is not a TLS handshake record.
    NotHandshake,
    /// The handshake message is not a ClientHello.
    NotClientHello,
    /// A length or field does not parse.
    Malformed,
    /// The message is longer than `MAX_HELLO`.
    TooLong,
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HelloError::UnexpectedEnd => "ClientHello truncated",
            HelloError::NotHandshake => "not a TLS handshake",
            HelloError::NotClientHello => "not a ClientHello",
            HelloError::Malformed => "malformed ClientHello",
            HelloError::TooLong => "ClientHello too long",
        })
    }
}

impl std::error::Error for HelloError {}

/// Collects the ClientHello handshake message (header included) from the first bytes of a
/// stream, over as many handshake records as it spans. `UnexpectedEnd` while incomplete.
pub fn gather(stream: &[u8], out: &mut Vec<u8>) -> Result<(), HelloError> {
    out.clear();
    let mut at = 0;
    loop {
        let Some(header) = stream.get(at..at + RECORD_HEADER) else {
            // The first byte already tells a TLS handshake from anything else.
            if stream.get(at).is_some_and(|&t| t != 0x16) {
                return Err(HelloError::NotHandshake);
            }
            return Err(HelloError::UnexpectedEnd);
        };
        if header[0] != 0x16 || header[1] != 3 {
            return Err(HelloError::NotHandshake);
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16384 + 256 {
            return Err(HelloError::Malformed);
        }
        let body = stream.get(at + RECORD_HEADER..at + RECORD_HEADER + len).ok_or(HelloError::UnexpectedEnd)?;
        out.extend_from_slice(body);
        at += RECORD_HEADER + len;
        if out[0] != 1 {
            return Err(HelloError::NotClientHello);
        }
        if out.len() >= 4 {
            let want = 4 + (usize::from(out[1]) << 16 | usize::from(out[2]) << 8 | usize::from(out[3]));
            if want > MAX_HELLO {
                return Err(HelloError::TooLong);
            }
            if out.len() >= want {
                // Anything after the message in its record is another message, which a
                // ClientHello must not share a record with; Go's TLS refuses it too.
                return if out.len() == want { Ok(()) } else { Err(HelloError::Malformed) };
            }
        }
    }
}

/// What REALITY reads of a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The whole handshake message, header included (the AAD, its session id zeroed).
    pub message: &'a [u8],
    /// `random`
    pub random: &'a [u8; 32],
    /// `legacy_session_id`
    pub session_id: &'a [u8],
    /// The `server_name` extension's host name, if any.
    pub server_name: Option<&'a str>,
    /// `supported_versions` offers TLS 1.3.
    pub tls13: bool,
    /// The client's X25519 public key: its X25519 share, else the X25519 half of an
    /// X25519MLKEM768 share.
    pub x25519: Option<&'a [u8; 32]>,
    /// The first ALPN protocol offered, if any.
    pub first_alpn: Option<&'a [u8]>,
}

impl From<Truncated> for HelloError {
    fn from(_: Truncated) -> Self {
        HelloError::Malformed
    }
}

impl<'a> ClientHello<'a> {
    /// Parses a ClientHello handshake message (as `gather` returns it).
    pub fn parse(message: &'a [u8]) -> Result<ClientHello<'a>, HelloError> {
        let mut r = Reader(message);
        if r.u8()? != 1 {
            return Err(HelloError::NotClientHello);
        }
        let len = r.take(3)?;
        let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
        if len != r.0.len() {
            return Err(HelloError::Malformed);
        }
        let _legacy_version = r.u16()?;
        let random: &[u8; 32] = r.take(32)?.try_into().map_err(|_| HelloError::Malformed)?;
        let session_id = r.vec8()?.0;
        let _suites = r.vec16()?;
        let _compression = r.vec8()?;
        let mut hello = ClientHello {
            message,
            random,
            session_id,
            server_name: None,
            tls13: false,
            x25519: None,
            first_alpn: None,
        };
        if r.0.is_empty() {
            return Ok(hello);
        }
        let mut extensions = r.vec16()?;
        if !r.0.is_empty() {
            return Err(HelloError::Malformed);
        }
        let mut hybrid = None;
        while !extensions.0.is_empty() {
            let kind = extensions.u16()?;
            let mut body = extensions.vec16()?;
            match kind {
                0 => {
                    let mut list = body.vec16()?;
                    while !list.0.is_empty() {
                        let name_type = list.u8()?;
                        let name = list.vec16()?.0;
                        if name_type == 0 && hello.server_name.is_none() {
                            hello.server_name = Some(std::str::from_utf8(name).map_err(|_| HelloError::Malformed)?);
                        }
                    }
                }
                16 => {
                    let mut list = body.vec16()?;
                    if !list.0.is_empty() {
                        hello.first_alpn = Some(list.vec8()?.0);
                    }
                }
                43 => {
                    let mut versions = body.vec8()?;
                    while !versions.0.is_empty() {
                        hello.tls13 |= versions.u16()? == 0x0304;
                    }
                }
                51 => {
                    let mut shares = body.vec16()?;
                    while !shares.0.is_empty() {
                        let group = shares.u16()?;
                        let data = shares.vec16()?.0;
                        if group == X25519 && data.len() == 32 && hello.x25519.is_none() {
                            hello.x25519 = data.try_into().ok();
                        } else if group == X25519_MLKEM768 && data.len() == MLKEM768_KEY + 32 && hybrid.is_none() {
                            hybrid = data[MLKEM768_KEY..].try_into().ok();
                        }
                    }
                }
                _ => {}
            }
        }
        // As Xray: a plain X25519 share first, the hybrid's X25519 half otherwise.
        hello.x25519 = hello.x25519.or(hybrid);
        Ok(hello)
    }
}

// === authentication ===

/// What a REALITY server accepts (`realitySettings`, less where to relay the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance<'a> {
    /// `privateKey`: the server's X25519 private key.
    pub private_key: &'a [u8; 32],
    /// `shortIds`, each zero-padded to 8 bytes.
    pub short_ids: &'a [[u8; 8]],
    /// `minClientVer`
    pub min_client_ver: Option<[u8; 3]>,
    /// `maxClientVer`
    pub max_client_ver: Option<[u8; 3]>,
    /// `maxTimeDiff` in milliseconds; 0 checks no time.
    pub max_time_diff_ms: u64,
}

/// An authenticated ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The auth key: the HMAC key of the temporary certificate.
    pub auth_key: [u8; 32],
    /// The client's version, `x.y.z`.
    pub client_ver: [u8; 3],
    /// The client's unix time, seconds.
    pub client_time: u32,
    /// The client's short id.
    pub short_id: [u8; 8],
}

/// Why a TLS ClientHello did not authenticate (it goes to the target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No TLS 1.3 in `supported_versions`.
    NotTls13,
    /// No server name, or one not in `serverNames`.
    ServerName,
    /// Neither an X25519 nor an X25519MLKEM768 key share.
    NoX25519Share,
    /// The session id is not 32 bytes.
    SessionId,
    /// The sealed session id does not open: another key (a prober, or a client of another
    /// server).
    Unsealed,
    /// The client's version is below `minClientVer`.
    ClientTooOld([u8; 3]),
    /// The client's version is above `maxClientVer`.
    ClientTooNew([u8; 3]),
    /// The client's clock is further than `maxTimeDiff` from ours (milliseconds off).
    TimeDiff(i64),
    /// The short id is not listed.
    ShortId,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::NotTls13 => f.write_str("not TLS 1.3"),
            AuthError::ServerName => f.write_str("server name not listed"),
            AuthError::NoX25519Share => f.write_str("no X25519 key share"),
            AuthError::SessionId => f.write_str("session id not 32 bytes"),
            AuthError::Unsealed => f.write_str("session id does not open with our key"),
            AuthError::ClientTooOld([a, b, c]) => write!(f, "client version {a}.{b}.{c} below minClientVer"),
            AuthError::ClientTooNew([a, b, c]) => write!(f, "client version {a}.{b}.{c} above maxClientVer"),
            AuthError::TimeDiff(ms) => write!(f, "client clock {ms} ms off"),
            AuthError::ShortId => f.write_str("short id not listed"),
        }
    }
}

impl std::error::Error for AuthError {}

/// The public key of an X25519 private key (`shardray x25519`, share links).
pub fn public_key(private_key: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*private_key)).to_bytes()
}

/// Clamps 32 random bytes into an X25519 private key, as `xray x25519` prints it.
pub fn clamp(mut key: [u8; 32]) -> [u8; 32] {
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
    key
}

/// The auth key of a ClientHello: X25519, then HKDF-SHA256 (salt `random[..20]`, info
/// `"REALITY"`). `None` for a low-order client point (an all-zero secret).
pub fn auth_key(private_key: &[u8; 32], client_public: &[u8; 32], random: &[u8; 32]) -> Option<[u8; 32]> {
    let shared =
        x25519_dalek::StaticSecret::from(*private_key).diffie_hellman(&x25519_dalek::PublicKey::from(*client_public));
    if !shared.was_contributory() {
        return None;
    }
    let mut key = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(&random[..20]), shared.as_bytes()).expand(b"REALITY", &mut key).ok()?;
    Some(key)
}

/// Authenticates a parsed ClientHello against `accept`, given our clock (`now_ms`, unix
/// milliseconds) and whether its server name is served. Checks in Xray's order: TLS 1.3 and the
/// name, the key share, the sealed session id, then version, time and short id.
pub fn authenticate(
    hello: &ClientHello<'_>,
    name_listed: bool,
    accept: &Acceptance<'_>,
    now_ms: u64,
) -> Result<Authenticated, AuthError> {
    if !hello.tls13 {
        return Err(AuthError::NotTls13);
    }
    if !name_listed {
        return Err(AuthError::ServerName);
    }
    let client_public = hello.x25519.ok_or(AuthError::NoX25519Share)?;
    if hello.session_id.len() != 32 {
        return Err(AuthError::SessionId);
    }
    let auth_key = auth_key(accept.private_key, client_public, hello.random).ok_or(AuthError::Unsealed)?;
    let mut aad = hello.message.to_vec();
    aad[SESSION_ID_AT..SESSION_ID_AT + 32].fill(0);
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &auth_key).map_err(|_| AuthError::Unsealed)?,
    );
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(&hello.random[20..]).map_err(|_| AuthError::Unsealed)?;
    let mut sealed = [0u8; 32];
    sealed.copy_from_slice(hello.session_id);
    let plain =
        key.open_in_place(nonce, ring::aead::Aad::from(&aad[..]), &mut sealed).map_err(|_| AuthError::Unsealed)?;
    let client_ver = [plain[0], plain[1], plain[2]];
    let client_time = u32::from_be_bytes([plain[4], plain[5], plain[6], plain[7]]);
    let mut short_id = [0u8; 8];
    short_id.copy_from_slice(&plain[8..16]);
    if accept.min_client_ver.is_some_and(|min| client_ver < min) {
        return Err(AuthError::ClientTooOld(client_ver));
    }
    if accept.max_client_ver.is_some_and(|max| client_ver > max) {
        return Err(AuthError::ClientTooNew(client_ver));
    }
    if accept.max_time_diff_ms != 0 {
        let off = now_ms as i64 - i64::from(client_time) * 1000;
        if off.unsigned_abs() > accept.max_time_diff_ms {
            return Err(AuthError::TimeDiff(off));
        }
    }
    if !accept.short_ids.contains(&short_id) {
        return Err(AuthError::ShortId);
    }
    Ok(Authenticated { auth_key, client_ver, client_time, short_id })
}

// === the temporary certificate ===

/// The DER of a self-signed-looking ed25519 certificate (version 3, serial 0, empty names),
/// whose last 64 bytes are its signature; REALITY replaces them per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemporaryCert {
    template: Vec<u8>,
    public_key: [u8; 32],
}

/// AlgorithmIdentifier of Ed25519 (1.3.101.112), no parameters.
const ED25519_ALG: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

impl TemporaryCert {
    /// The certificate template for an ed25519 public key (the signature bytes all zero).
    pub fn new(public_key: [u8; 32]) -> TemporaryCert {
        let mut tbs = vec![0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x00];
        tbs.extend_from_slice(&ED25519_ALG);
        tbs.extend_from_slice(&[0x30, 0x00]);
        // Validity as UTCTime: 2025-01-01 to 2049-12-31 (the client checks only the HMAC).
        tbs.extend_from_slice(&[0x30, 0x1e, 0x17, 0x0d]);
        tbs.extend_from_slice(b"250101000000Z");
        tbs.extend_from_slice(&[0x17, 0x0d]);
        tbs.extend_from_slice(b"491231235959Z");
        tbs.extend_from_slice(&[0x30, 0x00]);
        tbs.extend_from_slice(&[0x30, 0x2a]);
        tbs.extend_from_slice(&ED25519_ALG);
        tbs.extend_from_slice(&[0x03, 0x21, 0x00]);
        tbs.extend_from_slice(&public_key);
        let mut body = der(0x30, &tbs);
        body.extend_from_slice(&ED25519_ALG);
        body.extend_from_slice(&[0x03, 0x41, 0x00]);
        body.extend_from_slice(&[0u8; 64]);
        TemporaryCert { template: der(0x30, &body), public_key }
    }

    /// The certificate for one connection: the signature is HMAC-SHA512(auth key, public key).
    pub fn for_auth_key(&self, auth_key: &[u8; 32]) -> Vec<u8> {
        let mut cert = self.template.clone();
        let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(auth_key).expect("HMAC takes any key length");
        mac.update(&self.public_key);
        let at = cert.len() - 64;
        cert[at..].copy_from_slice(&mac.finalize().into_bytes());
        cert
    }
}

// === the client's side ===

/// The plaintext a client seals into its session id: version `x.y.z`, a reserved byte, its
/// unix time (seconds, BE) and its short id.
pub fn session_plaintext(client_ver: [u8; 3], unix_time: u32, short_id: [u8; 8]) -> [u8; 16] {
    let mut plain = [0u8; 16];
    plain[..3].copy_from_slice(&client_ver);
    plain[4..8].copy_from_slice(&unix_time.to_be_bytes());
    plain[8..].copy_from_slice(&short_id);
    plain
}

/// Seals `plain` into the session id of a ClientHello `message` (header included, its session
/// id 32 zero bytes): AES-256-GCM under the auth key, nonce `random[20..]`, AAD the message as
/// it stands. `authenticate` opens it.
pub fn seal_session_id(message: &mut [u8], auth_key: &[u8; 32], plain: &[u8; 16]) -> Result<(), HelloError> {
    let id = message.get(SESSION_ID_AT..SESSION_ID_AT + 32).ok_or(HelloError::Malformed)?;
    if message[SESSION_ID_AT - 1] != 32 || id.iter().any(|&b| b != 0) {
        return Err(HelloError::Malformed);
    }
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, auth_key).map_err(|_| HelloError::Malformed)?,
    );
    let nonce =
        ring::aead::Nonce::try_assume_unique_for_key(&message[6 + 20..6 + 32]).map_err(|_| HelloError::Malformed)?;
    let mut sealed = *plain;
    let tag = key
        .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(&message[..]), &mut sealed)
        .map_err(|_| HelloError::Malformed)?;
    message[SESSION_ID_AT..SESSION_ID_AT + 16].copy_from_slice(&sealed);
    message[SESSION_ID_AT + 16..SESSION_ID_AT + 32].copy_from_slice(tag.as_ref());
    Ok(())
}

/// Why a server's certificate is not REALITY's temporary one (so the server is the camouflage
/// site, or another server answering for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRefusal {
    /// The DER does not parse as a certificate.
    Malformed,
    /// Its key is not ed25519 (a real site's RSA or ECDSA certificate).
    NotEd25519,
    /// Its signature is not HMAC-SHA512(auth key, its key).
    NotSignedForUs,
}

impl CertRefusal {
    /// Why, in a few words.
    pub fn reason(self) -> &'static str {
        match self {
            CertRefusal::Malformed => "certificate does not parse",
            CertRefusal::NotEd25519 => "certificate key is not ed25519",
            CertRefusal::NotSignedForUs => "certificate not signed with our auth key",
        }
    }
}

impl std::fmt::Display for CertRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for CertRefusal {}

/// The ed25519 public key of a certificate and its signature bytes: `NotEd25519` for any
/// other key. Reads only the DER structure (no names, dates or chain).
pub fn ed25519_cert_key(cert: &[u8]) -> Result<([u8; 32], &[u8]), CertRefusal> {
    let (body, _) = der_take(cert, 0x30)?;
    let (tbs, rest) = der_take(body, 0x30)?;
    let (_alg, rest) = der_take(rest, 0x30)?;
    let (signature, _) = der_take(rest, 0x03)?;
    let mut fields = tbs;
    if fields.first() == Some(&0xa0) {
        fields = der_take(fields, 0xa0)?.1;
    }
    // serial, signature algorithm, issuer, validity, subject, then the key.
    for tag in [0x02, 0x30, 0x30, 0x30, 0x30] {
        fields = der_take(fields, tag)?.1;
    }
    let (spki, _) = der_take(fields, 0x30)?;
    let key = spki
        .strip_prefix(&ED25519_ALG[..])
        .and_then(|k| k.strip_prefix(&[0x03, 0x21, 0x00][..]))
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or(CertRefusal::NotEd25519)?;
    let signature = signature.strip_prefix(&[0][..]).ok_or(CertRefusal::Malformed)?;
    Ok((key, signature))
}

/// The key of a REALITY server's temporary certificate, after checking that its signature is
/// HMAC-SHA512(auth key, key), as Xray's client does; the caller then checks CertificateVerify
/// with it.
pub fn check_temporary_cert(cert: &[u8], auth_key: &[u8; 32]) -> Result<[u8; 32], CertRefusal> {
    let (key, signature) = ed25519_cert_key(cert)?;
    let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(auth_key).expect("HMAC takes any key length");
    mac.update(&key);
    mac.verify_slice(signature).map_err(|_| CertRefusal::NotSignedForUs)?;
    Ok(key)
}

/// The content of one DER TLV tagged `tag` at the front of `input`, and what follows it.
fn der_take(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), CertRefusal> {
    let (&t, rest) = input.split_first().ok_or(CertRefusal::Malformed)?;
    let (&first, mut rest) = rest.split_first().ok_or(CertRefusal::Malformed)?;
    if t != tag {
        return Err(CertRefusal::Malformed);
    }
    let len = match first {
        n @ 0..=127 => usize::from(n),
        0x81..=0x83 => {
            let n = usize::from(first & 0x7f);
            let bytes = rest.get(..n).ok_or(CertRefusal::Malformed)?;
            rest = &rest[n..];
            bytes.iter().fold(0, |acc, &b| acc << 8 | usize::from(b))
        }
        _ => return Err(CertRefusal::Malformed),
    };
    if rest.len() < len {
        return Err(CertRefusal::Malformed);
    }
    Ok(rest.split_at(len))
}

/// One DER TLV with a short or one/two-byte long length.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n @ 0..=127 => out.push(n as u8),
        n @ 128..=255 => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests;
