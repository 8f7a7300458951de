//! Shadowsocks over TCP, both sides, no IO: the classic AEAD construction (SIP004/SIP007) in
//! [`classic`] and the 2022 edition (SIP022, with SIP023 identity headers) in [`ss2022`].
//!
//! Both share the chunk stream of [`chunk`] (`[sealed u16 length][sealed payload]`, a
//! little-endian nonce counter per direction) and the salt filter of [`replay`]. Keys and
//! methods ([`Method`], [`MasterKey`]) are plain `Copy` values so the UDP codec can reuse them.
//! Randomness (salts, padding lengths) and the clock (`now`, Unix seconds) are arguments.

use std::fmt;

use base64::Engine as _;

use crate::aead::Cipher;
use crate::DecodeError;

pub mod chunk;
pub mod classic;
pub mod replay;
pub mod ss2022;
pub mod ss2022_udp;

pub use chunk::{ChunkOpener, ChunkSealer, Opened};
pub use replay::ReplayFilter;

/// The longest key or salt of any method.
pub const MAX_KEY_LEN: usize = 32;

/// An AEAD method Shadowsocks can run, by its config name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `aes-128-gcm` (classic AEAD).
    Aes128Gcm,
    /// `aes-256-gcm` (classic AEAD).
    Aes256Gcm,
    /// `chacha20-ietf-poly1305`, alias `chacha20-poly1305` (classic AEAD).
    ChaCha20Poly1305,
    /// `xchacha20-ietf-poly1305`, alias `xchacha20-poly1305` (classic AEAD).
    XChaCha20Poly1305,
    /// `2022-blake3-aes-128-gcm`.
    Blake3Aes128Gcm,
    /// `2022-blake3-aes-256-gcm`.
    Blake3Aes256Gcm,
    /// `2022-blake3-chacha20-poly1305`.
    Blake3ChaCha20Poly1305,
}

/// Why a method name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidMethod {
    /// A stream cipher (`aes-256-cfb`, `chacha20-ietf`, `rc4-md5`, ...): unauthenticated, so refused.
    StreamCipher,
    /// `none` / `plain`: no encryption at all, refused.
    Plain,
    /// A known AEAD method this codec does not carry (`aes-192-gcm`, `2022-blake3-chacha8-poly1305`, ...).
    Unsupported,
    /// Not a Shadowsocks method name.
    Unknown,
}

impl fmt::Display for InvalidMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidMethod::StreamCipher => {
                "stream ciphers are unauthenticated and not supported; use an AEAD or 2022 method"
            }
            InvalidMethod::Plain => "method none/plain sends traffic unencrypted and is not supported",
            InvalidMethod::Unsupported => "this Shadowsocks method is not supported",
            InvalidMethod::Unknown => "unknown Shadowsocks method",
        })
    }
}

impl std::error::Error for InvalidMethod {}

impl Method {
    /// Every supported method.
    pub const ALL: [Method; 7] = [
        Method::Aes128Gcm,
        Method::Aes256Gcm,
        Method::ChaCha20Poly1305,
        Method::XChaCha20Poly1305,
        Method::Blake3Aes128Gcm,
        Method::Blake3Aes256Gcm,
        Method::Blake3ChaCha20Poly1305,
    ];

    /// Parses a config name, ignoring ASCII case; accepts the Xray aliases (`chacha20-poly1305`,
    /// `aead_aes_128_gcm`, ...) and names the reason for refusing stream ciphers and `none`.
    pub fn parse(name: &str) -> Result<Method, InvalidMethod> {
        let mut lower = [0u8; 40];
        if name.len() > lower.len() {
            return Err(InvalidMethod::Unknown);
        }
        let lower = &mut lower[..name.len()];
        lower.copy_from_slice(name.as_bytes());
        lower.make_ascii_lowercase();
        Ok(match &*lower {
            b"aes-128-gcm" | b"aead_aes_128_gcm" => Method::Aes128Gcm,
            b"aes-256-gcm" | b"aead_aes_256_gcm" => Method::Aes256Gcm,
            b"chacha20-ietf-poly1305" | b"chacha20-poly1305" | b"aead_chacha20_poly1305" => Method::ChaCha20Poly1305,
            b"xchacha20-ietf-poly1305" | b"xchacha20-poly1305" | b"aead_xchacha20_poly1305" => {
                Method::XChaCha20Poly1305
            }
            b"2022-blake3-aes-128-gcm" => Method::Blake3Aes128Gcm,
            b"2022-blake3-aes-256-gcm" => Method::Blake3Aes256Gcm,
            b"2022-blake3-chacha20-poly1305" => Method::Blake3ChaCha20Poly1305,
            b"none" | b"plain" | b"dummy" => return Err(InvalidMethod::Plain),
            b"aes-192-gcm"
            | b"aead_aes_192_gcm"
            | b"aes-128-ccm"
            | b"aes-256-ccm"
            | b"aes-128-gcm-siv"
            | b"aes-256-gcm-siv"
            | b"sm4-gcm"
            | b"sm4-ccm"
            | b"2022-blake3-chacha8-poly1305"
            | b"2022-blake3-chacha12-poly1305" => return Err(InvalidMethod::Unsupported),
            other if is_stream_cipher(other) => return Err(InvalidMethod::StreamCipher),
            _ => return Err(InvalidMethod::Unknown),
        })
    }

    /// The canonical config name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Aes128Gcm => "aes-128-gcm",
            Method::Aes256Gcm => "aes-256-gcm",
            Method::ChaCha20Poly1305 => "chacha20-ietf-poly1305",
            Method::XChaCha20Poly1305 => "xchacha20-ietf-poly1305",
            Method::Blake3Aes128Gcm => "2022-blake3-aes-128-gcm",
            Method::Blake3Aes256Gcm => "2022-blake3-aes-256-gcm",
            Method::Blake3ChaCha20Poly1305 => "2022-blake3-chacha20-poly1305",
        }
    }

    /// The AEAD that seals the TCP chunks.
    pub fn cipher(self) -> Cipher {
        match self {
            Method::Aes128Gcm | Method::Blake3Aes128Gcm => Cipher::Aes128Gcm,
            Method::Aes256Gcm | Method::Blake3Aes256Gcm => Cipher::Aes256Gcm,
            Method::ChaCha20Poly1305 | Method::Blake3ChaCha20Poly1305 => Cipher::ChaCha20Poly1305,
            Method::XChaCha20Poly1305 => Cipher::XChaCha20Poly1305,
        }
    }

    /// The key length in bytes (master key, PSK and session subkey alike).
    pub fn key_len(self) -> usize {
        self.cipher().key_len()
    }

    /// The salt length in bytes: the key length, for every method here.
    pub fn salt_len(self) -> usize {
        self.key_len()
    }

    /// Whether this is a 2022-edition method (base64 PSK, BLAKE3 subkeys, headers with timestamps).
    pub fn is_2022(self) -> bool {
        matches!(self, Method::Blake3Aes128Gcm | Method::Blake3Aes256Gcm | Method::Blake3ChaCha20Poly1305)
    }

    /// Whether the method carries identity headers (multi-user 2022): the AES methods only,
    /// since the header is one AES block.
    pub fn supports_identity_headers(self) -> bool {
        matches!(self, Method::Blake3Aes128Gcm | Method::Blake3Aes256Gcm)
    }

    /// The largest plaintext one chunk may carry: 0x3FFF classic, 0xFFFF in 2022.
    pub fn max_payload(self) -> usize {
        if self.is_2022() {
            0xFFFF
        } else {
            0x3FFF
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn is_stream_cipher(name: &[u8]) -> bool {
    let name = std::str::from_utf8(name).unwrap_or("");
    matches!(name, "table" | "rc4" | "rc4-md5" | "chacha20" | "chacha20-ietf" | "salsa20" | "bf-cfb" | "cast5-cfb")
        || ["aes-", "camellia-", "des-", "idea-", "rc2-", "seed-"].iter().any(|p| name.starts_with(p))
            && ["-cfb", "-ctr", "-ofb", "-cfb1", "-cfb8", "-cfb128"].iter().any(|s| name.ends_with(s))
}

/// Why a password or PSK could not become a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKey {
    /// The password is empty.
    Empty,
    /// A 2022 PSK that is not valid standard base64.
    BadBase64,
    /// A 2022 PSK that decodes to the wrong number of bytes.
    WrongLength {
        /// The method's key length.
        expected: u8,
        /// The decoded length.
        got: usize,
    },
    /// Identity headers (a `iPSK:uPSK` chain or a multi-user server) need an AES 2022 method.
    NoIdentityHeaders,
    /// Two users of a multi-user server share a PSK; the index is the later one.
    DuplicateUser(usize),
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidKey::Empty => f.write_str("password is empty"),
            InvalidKey::BadBase64 => f.write_str("2022 PSK is not valid base64"),
            InvalidKey::WrongLength { expected, got } => {
                write!(f, "2022 PSK must be {expected} bytes of base64, got {got} bytes")
            }
            InvalidKey::NoIdentityHeaders => {
                f.write_str("multiple users need 2022-blake3-aes-128-gcm or 2022-blake3-aes-256-gcm")
            }
            InvalidKey::DuplicateUser(i) => write!(f, "user {i} has the same PSK as an earlier user"),
        }
    }
}

impl std::error::Error for InvalidKey {}

/// A master key (classic) or PSK (2022) of up to 32 bytes. `Debug` does not print it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MasterKey {
    bytes: [u8; MAX_KEY_LEN],
    len: u8,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({} bytes)", self.len)
    }
}

impl MasterKey {
    /// Wraps raw key bytes. Panics if longer than 32 bytes (a caller bug).
    pub fn from_bytes(bytes: &[u8]) -> MasterKey {
        assert!(bytes.len() <= MAX_KEY_LEN, "key longer than {MAX_KEY_LEN} bytes");
        let mut key = MasterKey { bytes: [0; MAX_KEY_LEN], len: bytes.len() as u8 };
        key.bytes[..bytes.len()].copy_from_slice(bytes);
        key
    }

    /// The key for a method from its config `password`: EVP_BytesToKey(MD5) of the password for
    /// classic methods, the base64-decoded PSK for 2022 methods.
    pub fn from_password(method: Method, password: &str) -> Result<MasterKey, InvalidKey> {
        if password.is_empty() {
            return Err(InvalidKey::Empty);
        }
        if method.is_2022() {
            Self::from_psk(method, password)
        } else {
            Ok(Self::from_bytes(&evp_bytes_to_key(password.as_bytes(), method.key_len())[..method.key_len()]))
        }
    }

    /// Decodes a 2022 PSK (standard base64, padding optional) and checks its length.
    pub fn from_psk(method: Method, psk: &str) -> Result<MasterKey, InvalidKey> {
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let mut out = [0u8; 48];
        let n = engine.decode_slice(psk.trim().as_bytes(), &mut out).map_err(|e| match e {
            base64::DecodeSliceError::OutputSliceTooSmall => {
                InvalidKey::WrongLength { expected: method.key_len() as u8, got: psk.len() * 3 / 4 }
            }
            base64::DecodeSliceError::DecodeError(_) => InvalidKey::BadBase64,
        })?;
        if n != method.key_len() {
            return Err(InvalidKey::WrongLength { expected: method.key_len() as u8, got: n });
        }
        Ok(Self::from_bytes(&out[..n]))
    }

    /// Decodes a 2022 PSK of any method (16 or 32 bytes of base64), when the method is not at
    /// hand; `from_psk` checks it against one.
    pub fn from_psk_any(psk: &str) -> Result<MasterKey, InvalidKey> {
        Self::from_psk(Method::Blake3Aes256Gcm, psk).or_else(|_| Self::from_psk(Method::Blake3Aes128Gcm, psk))
    }

    /// Parses a 2022 client password `iPSK:...:uPSK` into identity keys (outermost first) and the
    /// user key. Without a `:` it is a single-user PSK and the identity list is empty.
    pub fn parse_psk_chain(method: Method, password: &str) -> Result<(Vec<MasterKey>, MasterKey), InvalidKey> {
        let mut parts: Vec<&str> = password.split(':').collect();
        let user = parts.pop().unwrap_or("");
        if !parts.is_empty() && !method.supports_identity_headers() {
            return Err(InvalidKey::NoIdentityHeaders);
        }
        let identities = parts.into_iter().map(|p| Self::from_psk(method, p)).collect::<Result<_, _>>()?;
        Ok((identities, Self::from_psk(method, user)?))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// OpenSSL's EVP_BytesToKey with MD5, one iteration and no salt, as classic Shadowsocks derives
/// its master key: D_1 = MD5(password), D_i = MD5(D_{i-1} || password), concatenated.
pub fn evp_bytes_to_key(password: &[u8], key_len: usize) -> [u8; MAX_KEY_LEN] {
    use md5::{Digest, Md5};
    let mut out = [0u8; MAX_KEY_LEN];
    let key_len = key_len.min(MAX_KEY_LEN);
    let mut filled = 0;
    let mut prev = [0u8; 16];
    while filled < key_len {
        let mut h = Md5::new();
        if filled > 0 {
            h.update(prev);
        }
        h.update(password);
        prev = h.finalize().into();
        let n = (key_len - filled).min(16);
        out[filled..filled + n].copy_from_slice(&prev[..n]);
        filled += n;
    }
    out
}

/// A session salt of up to 32 bytes, kept by value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Salt {
    bytes: [u8; MAX_KEY_LEN],
    len: u8,
}

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Salt(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

impl Salt {
    /// Copies a salt. Panics if longer than 32 bytes (a caller bug).
    pub fn new(bytes: &[u8]) -> Salt {
        assert!(bytes.len() <= MAX_KEY_LEN, "salt longer than {MAX_KEY_LEN} bytes");
        let mut salt = Salt { bytes: [0; MAX_KEY_LEN], len: bytes.len() as u8 };
        salt.bytes[..bytes.len()].copy_from_slice(bytes);
        salt
    }

    /// The salt bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Why a Shadowsocks stream was rejected.
///
/// `UnexpectedEnd` is the only recoverable case: read more bytes and call again with the same
/// buffer start; nothing was consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer ends before the header or chunk does.
    UnexpectedEnd,
    /// A chunk or header did not authenticate: wrong key, or altered bytes.
    Auth,
    /// No configured user's key opens the first chunk (classic) or the identity header names no user (2022).
    UnknownUser,
    /// The target address inside the first chunk is malformed.
    Address(DecodeError),
    /// A classic chunk announces more than 0x3FFF bytes.
    ChunkTooLong(u16),
    /// A 2022 header has the wrong stream type (0 request, 1 response).
    BadStreamType(u8),
    /// A 2022 header timestamp is more than 30 s away from `now`.
    BadTimestamp {
        /// The timestamp in the header.
        timestamp: u64,
        /// The caller's clock.
        now: u64,
    },
    /// The salt was seen within the replay window.
    Replayed,
    /// The replay filter is at capacity; the request is refused rather than risk a replay.
    ReplayFilterFull,
    /// A 2022 request with neither padding nor initial payload.
    NoPaddingNorPayload,
    /// A 2022 request header whose padding runs past the header chunk.
    HeaderOverrun,
    /// A 2022 response that names another request's salt.
    RequestSaltMismatch,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnexpectedEnd => f.write_str("shadowsocks stream truncated"),
            Error::Auth => f.write_str("shadowsocks chunk failed authentication"),
            Error::UnknownUser => f.write_str("no shadowsocks user matches"),
            Error::Address(e) => write!(f, "shadowsocks target address: {e}"),
            Error::ChunkTooLong(n) => write!(f, "shadowsocks chunk of {n} bytes exceeds 0x3FFF"),
            Error::BadStreamType(t) => write!(f, "shadowsocks 2022 header of stream type {t}"),
            Error::BadTimestamp { timestamp, now } => {
                write!(f, "shadowsocks 2022 timestamp {timestamp} is over 30 s from now ({now})")
            }
            Error::Replayed => f.write_str("shadowsocks salt replayed"),
            Error::ReplayFilterFull => f.write_str("shadowsocks replay filter full"),
            Error::NoPaddingNorPayload => f.write_str("shadowsocks 2022 request without padding or payload"),
            Error::HeaderOverrun => f.write_str("shadowsocks 2022 padding runs past the header"),
            Error::RequestSaltMismatch => f.write_str("shadowsocks 2022 response for another request"),
        }
    }
}

impl std::error::Error for Error {}

/// Only the header plaintext is decoded with the crate's helpers, after it authenticated, so a
/// short field there is malformed input, not "need more".
impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Error {
        Error::Address(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_name_and_refuses_by_reason() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()), Ok(m));
            assert_eq!(Method::parse(&m.name().to_uppercase()), Ok(m));
        }
        assert_eq!(Method::parse("chacha20-poly1305"), Ok(Method::ChaCha20Poly1305));
        assert_eq!(Method::parse("xchacha20-poly1305"), Ok(Method::XChaCha20Poly1305));
        assert_eq!(Method::parse("AEAD_AES_128_GCM"), Ok(Method::Aes128Gcm));
        assert_eq!(Method::parse("none"), Err(InvalidMethod::Plain));
        assert_eq!(Method::parse("plain"), Err(InvalidMethod::Plain));
        for stream in ["aes-256-cfb", "aes-128-ctr", "chacha20-ietf", "rc4-md5", "camellia-256-cfb", "table"] {
            assert_eq!(Method::parse(stream), Err(InvalidMethod::StreamCipher), "{stream}");
        }
        assert_eq!(Method::parse("2022-blake3-chacha8-poly1305"), Err(InvalidMethod::Unsupported));
        assert_eq!(Method::parse("rot13"), Err(InvalidMethod::Unknown));
        assert_eq!(Method::parse(&"x".repeat(100)), Err(InvalidMethod::Unknown));
    }

    #[test]
    fn evp_bytes_to_key_matches_openssl() {
        // `openssl enc -aes-256-cbc -k foobar -nosalt -md md5 -P` prints this key (OpenSSL 3.0).
        let key = evp_bytes_to_key(b"foobar", 32);
        assert_eq!(
            key.iter().map(|b| format!("{b:02X}")).collect::<String>(),
            "3858F62230AC3C915F300C664312C63F568378529614D22DDB49237D2F60BFDF"
        );
        let short = MasterKey::from_password(Method::Aes128Gcm, "foobar").unwrap();
        assert_eq!(short.as_bytes(), &key[..16]);
        assert_eq!(MasterKey::from_password(Method::Aes128Gcm, ""), Err(InvalidKey::Empty));
    }

    #[test]
    fn psk_is_base64_of_the_key_length() {
        let k16 = "AAECAwQFBgcICQoLDA0ODw==";
        let key = MasterKey::from_password(Method::Blake3Aes128Gcm, k16).unwrap();
        assert_eq!(key.as_bytes(), &(0u8..16).collect::<Vec<_>>()[..]);
        assert_eq!(MasterKey::from_psk(Method::Blake3Aes128Gcm, "AAECAwQFBgcICQoLDA0ODw"), Ok(key));
        assert_eq!(
            MasterKey::from_psk(Method::Blake3Aes256Gcm, k16),
            Err(InvalidKey::WrongLength { expected: 32, got: 16 })
        );
        assert_eq!(MasterKey::from_psk(Method::Blake3Aes128Gcm, "not base64!"), Err(InvalidKey::BadBase64));
        let long = "A".repeat(200);
        assert!(matches!(MasterKey::from_psk(Method::Blake3Aes128Gcm, &long), Err(InvalidKey::WrongLength { .. })));
        let (ids, user) = MasterKey::parse_psk_chain(Method::Blake3Aes128Gcm, &format!("{k16}:{k16}")).unwrap();
        assert_eq!((ids, user), (vec![key], key));
        let k32 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        assert_eq!(
            MasterKey::parse_psk_chain(Method::Blake3ChaCha20Poly1305, &format!("{k32}:{k32}")),
            Err(InvalidKey::NoIdentityHeaders)
        );
    }
}
