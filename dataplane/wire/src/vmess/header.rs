//! The VMess AEAD request and response headers.
//!
//! Request on the wire: auth ID (16), sealed length (2 + tag), connection nonce (8), sealed
//! header (length + tag). Both seals are AES-128-GCM with the auth ID as associated data, keyed
//! from the command key by `kdf(cmd_key, label, auth_id, nonce)`.
//!
//! Header plaintext: version (1), body IV (16), body key (16), response auth byte, options,
//! `padding_len << 4 | security`, a reserved zero, command; for TCP and UDP a big-endian port
//! and an address (1 IPv4, 2 domain, 3 IPv6); `padding_len` random bytes; FNV-1a 32 (BE) of all
//! that precedes it.
//!
//! Response: sealed length (2 + tag) and sealed header (response auth byte, options, command 0,
//! command length 0), keyed from the response body key and IV (SHA-256 of the request's, first
//! 16 bytes) by `kdf(key, label)`, with no associated data.

use std::net::Ipv4Addr;

use crate::addr::{Address, Destination, VLESS_TYPES};
use crate::aead::{AeadKey, Cipher, TAG_LEN};

use super::auth_id::UserKey;
use super::kdf::{
    kdf12, kdf16, sha256_16, LABEL_HEADER_KEY, LABEL_HEADER_LEN_KEY, LABEL_HEADER_LEN_NONCE, LABEL_HEADER_NONCE,
    LABEL_RESP_KEY, LABEL_RESP_LEN_KEY, LABEL_RESP_LEN_NONCE, LABEL_RESP_NONCE,
};
use super::VmessError;

/// The request header version.
pub const VERSION: u8 = 1;

/// The longest header plaintext: the 38 fixed bytes, port, a 255-byte domain with its type and
/// length, 15 bytes of padding and the checksum. A sealed length above it is refused at once.
pub const MAX_HEADER_LEN: usize = 38 + 2 + 1 + 1 + 255 + 15 + 4;

/// Bytes before the sealed header: auth ID, sealed length, connection nonce.
pub const HEADER_PREFIX_LEN: usize = 16 + 2 + TAG_LEN + 8;

/// The longest request header on the wire.
pub const MAX_REQUEST_LEN: usize = HEADER_PREFIX_LEN + MAX_HEADER_LEN + TAG_LEN;

/// The longest response header plaintext: four bytes and up to 255 bytes of command data.
pub const MAX_RESPONSE_HEADER_LEN: usize = 4 + 255;

/// What the client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// A TCP stream to the destination.
    Tcp,
    /// UDP packets to the destination, one per chunk.
    Udp,
    /// mux.cool (also XUDP); no destination of its own.
    Mux,
}

impl Command {
    /// The wire byte.
    pub fn byte(self) -> u8 {
        match self {
            Command::Tcp => 1,
            Command::Udp => 2,
            Command::Mux => 3,
        }
    }

    /// Whether the body is a byte stream (TCP and mux) rather than packets (UDP).
    pub fn is_stream(self) -> bool {
        self != Command::Udp
    }
}

/// The options byte of the request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Options(pub u8);

impl Options {
    /// The body is chunked (always set by Xray; only `none` security reads it).
    pub const CHUNK_STREAM: Options = Options(0x01);
    /// Chunk lengths are XORed with a SHAKE128 stream seeded with the body IV.
    pub const CHUNK_MASKING: Options = Options(0x04);
    /// Each chunk carries 0..63 random bytes of padding, its length drawn from the same stream.
    pub const GLOBAL_PADDING: Options = Options(0x08);
    /// Chunk lengths are AEAD-sealed with a key derived from the body key.
    pub const AUTHENTICATED_LENGTH: Options = Options(0x10);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Options) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Options {
    type Output = Options;
    fn bitor(self, rhs: Options) -> Options {
        Options(self.0 | rhs.0)
    }
}

/// The body security a header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// AES-128-GCM keyed with the body key (3).
    Aes128Gcm,
    /// ChaCha20-Poly1305 keyed with MD5(body key) ‖ MD5(MD5(body key)) (4).
    ChaCha20Poly1305,
    /// No encryption (5): length-prefixed chunks with chunk stream, raw bytes without.
    /// Current Xray no longer accepts it; older Xray and V2Ray do.
    None,
}

impl Security {
    /// The wire nibble.
    pub fn nibble(self) -> u8 {
        match self {
            Security::Aes128Gcm => 3,
            Security::ChaCha20Poly1305 => 4,
            Security::None => 5,
        }
    }

    fn from_nibble(n: u8) -> Result<Security, VmessError> {
        match n {
            3 => Ok(Security::Aes128Gcm),
            4 => Ok(Security::ChaCha20Poly1305),
            5 => Ok(Security::None),
            // 0 and 2 (auto) are resolved by clients, never sent; 6 (zero) is sent as 5.
            other => Err(VmessError::BadSecurity(other)),
        }
    }
}

/// The `security` of a client account as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityConfig {
    /// `auto`: AES-128-GCM where the CPU has AES-GCM instructions, ChaCha20-Poly1305 elsewhere.
    Auto,
    /// `aes-128-gcm`.
    Aes128Gcm,
    /// `chacha20-poly1305`.
    ChaCha20Poly1305,
    /// `none`: chunked, unencrypted.
    None,
    /// `zero`: sent as `none` without chunk stream or masking, so the body is the raw stream.
    Zero,
}

impl SecurityConfig {
    /// Parses a config string (case-insensitive); unknown strings are `None` here (Xray's config
    /// layer treats them as `auto`).
    pub fn parse(s: &str) -> Option<SecurityConfig> {
        Some(match s.to_ascii_lowercase().as_str() {
            "auto" | "" => SecurityConfig::Auto,
            "aes-128-gcm" => SecurityConfig::Aes128Gcm,
            "chacha20-poly1305" => SecurityConfig::ChaCha20Poly1305,
            "none" => SecurityConfig::None,
            "zero" => SecurityConfig::Zero,
            _ => return None,
        })
    }

    /// The security and options a client sends, as Xray's outbound picks them: chunk stream
    /// always; chunk masking for AES, ChaCha and none; global padding with masking for AES and
    /// ChaCha; `zero` becomes `none` without chunk stream and masking; authenticated length when
    /// the account's `AuthenticatedLength` experiment is on. `aes_hardware` resolves `auto`
    /// (see [`has_aes_gcm_hardware`]).
    pub fn resolve(self, aes_hardware: bool, authenticated_length: bool) -> (Security, Options) {
        let security = match self {
            SecurityConfig::Auto if aes_hardware => Security::Aes128Gcm,
            SecurityConfig::Auto => Security::ChaCha20Poly1305,
            SecurityConfig::Aes128Gcm => Security::Aes128Gcm,
            SecurityConfig::ChaCha20Poly1305 => Security::ChaCha20Poly1305,
            SecurityConfig::None | SecurityConfig::Zero => Security::None,
        };
        let mut options = match self {
            SecurityConfig::Zero => Options(0),
            _ if security == Security::None => Options::CHUNK_STREAM | Options::CHUNK_MASKING,
            _ => Options::CHUNK_STREAM | Options::CHUNK_MASKING | Options::GLOBAL_PADDING,
        };
        if authenticated_length {
            options = options | Options::AUTHENTICATED_LENGTH;
        }
        (security, options)
    }
}

/// Whether this CPU has the instructions Go uses for fast AES-GCM (how Xray resolves `auto`).
pub fn has_aes_gcm_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A decoded (or to be sealed) request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// The request body IV; the response's is derived from it.
    pub body_iv: [u8; 16],
    /// The request body key; the response's is derived from it.
    pub body_key: [u8; 16],
    /// The byte the server must echo in its response header.
    pub response_auth: u8,
    /// The options byte.
    pub options: Options,
    /// The body security.
    pub security: Security,
    /// The command.
    pub command: Command,
    /// Where to go; `None` for [`Command::Mux`].
    pub destination: Option<Destination>,
}

/// The random bytes a client spends on one request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealRandom {
    /// The random part of the auth ID.
    pub auth_id: [u8; 4],
    /// The connection nonce.
    pub nonce: [u8; 8],
    /// How many padding bytes to add (only the low four bits count: 0..15).
    pub padding_len: u8,
    /// The padding bytes (the first `padding_len` are used).
    pub padding: [u8; 15],
}

impl RequestHeader {
    /// The response body key: the first 16 bytes of SHA-256 of the request body key.
    pub fn response_key(&self) -> [u8; 16] {
        sha256_16(&self.body_key)
    }

    /// The response body IV: the first 16 bytes of SHA-256 of the request body IV.
    pub fn response_iv(&self) -> [u8; 16] {
        sha256_16(&self.body_iv)
    }

    /// Appends the whole sealed request (auth ID to sealed header) to `out` (client side).
    /// `now` is the Unix time in seconds that goes into the auth ID. A TCP or UDP header without
    /// a destination is sent with 0.0.0.0:0.
    pub fn seal(&self, user: &UserKey, now: u64, random: &SealRandom, out: &mut Vec<u8>) {
        let auth_id = user.auth_id().encode(now, random.auth_id);
        let keys = HeaderKeys::derive(user.cmd_key(), &auth_id, &random.nonce);
        out.extend_from_slice(&auth_id);

        let body_start = out.len() + 2 + TAG_LEN + 8;
        // Write the plaintext past the length's place first, to learn its length.
        out.resize(body_start, 0);
        self.encode_plain(random, out);
        let len = out.len() - body_start;
        out.extend_from_slice(&[0; TAG_LEN]);
        keys.body.seal(&keys.body_nonce, &auth_id, &mut out[body_start..]);

        let len_at = body_start - 2 - TAG_LEN - 8;
        out[len_at..len_at + 2].copy_from_slice(&(len as u16).to_be_bytes());
        keys.len.seal(&keys.len_nonce, &auth_id, &mut out[len_at..len_at + 2 + TAG_LEN]);
        out[len_at + 2 + TAG_LEN..body_start].copy_from_slice(&random.nonce);
    }

    fn encode_plain(&self, random: &SealRandom, out: &mut Vec<u8>) {
        let start = out.len();
        let padding_len = random.padding_len & 0x0f;
        out.push(VERSION);
        out.extend_from_slice(&self.body_iv);
        out.extend_from_slice(&self.body_key);
        out.push(self.response_auth);
        out.push(self.options.0);
        out.push(padding_len << 4 | self.security.nibble());
        out.push(0);
        out.push(self.command.byte());
        if self.command != Command::Mux {
            let dest = self
                .destination
                .clone()
                .unwrap_or(Destination { addr: Address::Ip(Ipv4Addr::UNSPECIFIED.into()), port: 0 });
            out.extend_from_slice(&dest.port.to_be_bytes());
            VLESS_TYPES.encode_addr(&dest.addr, out);
        }
        out.extend_from_slice(&random.padding[..padding_len as usize]);
        let sum = fnv1a(&out[start..]);
        out.extend_from_slice(&sum.to_be_bytes());
    }

    fn decode_plain(plain: &[u8]) -> Result<RequestHeader, VmessError> {
        let malformed = VmessError::BadLength(plain.len());
        let mut cur = plain;
        let fixed = crate::take(&mut cur, 38).map_err(|_| malformed)?;
        if fixed[0] != VERSION {
            return Err(VmessError::BadVersion(fixed[0]));
        }
        let body_iv: [u8; 16] = fixed[1..17].try_into().expect("16 bytes");
        let body_key: [u8; 16] = fixed[17..33].try_into().expect("16 bytes");
        let response_auth = fixed[33];
        let options = Options(fixed[34]);
        let padding_len = usize::from(fixed[35] >> 4);
        let security_nibble = fixed[35] & 0x0f;
        let command = match fixed[37] {
            1 => Command::Tcp,
            2 => Command::Udp,
            3 => Command::Mux,
            other => return Err(VmessError::BadCommand(other)),
        };
        let destination = match command {
            Command::Mux => None,
            Command::Tcp | Command::Udp => {
                let port = crate::take_u16(&mut cur).map_err(|_| malformed)?;
                let addr = match VLESS_TYPES.decode_addr(&mut cur) {
                    Err(crate::DecodeError::UnexpectedEnd) => return Err(malformed),
                    other => other?,
                };
                Some(Destination { addr, port })
            }
        };
        crate::take(&mut cur, padding_len).map_err(|_| malformed)?;
        let summed = plain.len() - cur.len();
        let sum = crate::take(&mut cur, 4).map_err(|_| malformed)?;
        // Bytes after the checksum are ignored, as Xray ignores them.
        if fnv1a(&plain[..summed]).to_be_bytes() != sum {
            return Err(VmessError::BadChecksum);
        }
        let security = Security::from_nibble(security_nibble)?;
        if options.contains(Options::GLOBAL_PADDING) && !options.contains(Options::CHUNK_MASKING) {
            return Err(VmessError::BadOptions(options.0));
        }
        Ok(RequestHeader { body_iv, body_key, response_auth, options, security, command, destination })
    }
}

/// Opens one connection's request header (server side), after the user was found by its auth
/// ID. Keeps what it derived across calls, so calling again after `UnexpectedEnd` redoes no KDF.
pub struct RequestOpener {
    cmd_key: [u8; 16],
    /// Set once the sealed length has been opened: the header's length and its key.
    body: Option<(usize, AeadKey, [u8; 12])>,
}

impl RequestOpener {
    /// Starts on a connection whose auth ID matched `user`.
    pub fn new(user: &UserKey) -> RequestOpener {
        RequestOpener { cmd_key: *user.cmd_key(), body: None }
    }

    /// Opens the request header at the front of `buf` (which starts with the auth ID) and returns
    /// it with the number of bytes it took; the body starts right after.
    ///
    /// `UnexpectedEnd` leaves `buf` untouched: read more and call again. A sealed length above
    /// [`MAX_HEADER_LEN`] is refused as soon as the first 42 bytes are there. On success the
    /// header bytes in `buf` have been decrypted in place (they are consumed).
    pub fn open(&mut self, buf: &mut [u8]) -> Result<(RequestHeader, usize), VmessError> {
        if buf.len() < HEADER_PREFIX_LEN {
            return Err(VmessError::UnexpectedEnd);
        }
        let auth_id: [u8; 16] = buf[..16].try_into().expect("16 bytes");
        if self.body.is_none() {
            let nonce: [u8; 8] = buf[16 + 2 + TAG_LEN..HEADER_PREFIX_LEN].try_into().expect("8 bytes");
            let keys = HeaderKeys::derive(&self.cmd_key, &auth_id, &nonce);
            let mut sealed_len = [0u8; 2 + TAG_LEN];
            sealed_len.copy_from_slice(&buf[16..16 + 2 + TAG_LEN]);
            let len = keys.len.open(&keys.len_nonce, &auth_id, &mut sealed_len)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            if len > MAX_HEADER_LEN {
                return Err(VmessError::BadLength(len));
            }
            self.body = Some((len, keys.body, keys.body_nonce));
        }
        let (len, key, nonce) = self.body.as_ref().expect("set above");
        let end = HEADER_PREFIX_LEN + len + TAG_LEN;
        if buf.len() < end {
            return Err(VmessError::UnexpectedEnd);
        }
        let plain = key.open(nonce, &auth_id, &mut buf[HEADER_PREFIX_LEN..end])?;
        Ok((RequestHeader::decode_plain(plain)?, end))
    }
}

/// The keys and nonces that seal one request header.
struct HeaderKeys {
    len: AeadKey,
    len_nonce: [u8; 12],
    body: AeadKey,
    body_nonce: [u8; 12],
}

impl HeaderKeys {
    fn derive(cmd_key: &[u8; 16], auth_id: &[u8; 16], nonce: &[u8; 8]) -> HeaderKeys {
        let at = |label: &[u8]| kdf16(cmd_key, &[label, auth_id, nonce]);
        HeaderKeys {
            len: AeadKey::new(Cipher::Aes128Gcm, &at(LABEL_HEADER_LEN_KEY)),
            len_nonce: kdf12(cmd_key, &[LABEL_HEADER_LEN_NONCE, auth_id, nonce]),
            body: AeadKey::new(Cipher::Aes128Gcm, &at(LABEL_HEADER_KEY)),
            body_nonce: kdf12(cmd_key, &[LABEL_HEADER_NONCE, auth_id, nonce]),
        }
    }
}

/// The response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The request's response auth byte, echoed.
    pub response_auth: u8,
    /// Response options (Xray sends 0).
    pub options: u8,
}

/// The length of the response header this crate seals (no command).
pub const RESPONSE_LEN: usize = 2 + TAG_LEN + 4 + TAG_LEN;

impl ResponseHeader {
    /// The response a server sends for `request`: its auth byte echoed, no options.
    pub fn for_request(request: &RequestHeader) -> ResponseHeader {
        ResponseHeader { response_auth: request.response_auth, options: 0 }
    }

    /// Appends the sealed response header ([`RESPONSE_LEN`] bytes) to `out` (server side).
    pub fn seal(&self, request: &RequestHeader, out: &mut Vec<u8>) {
        let keys = ResponseKeys::derive(request);
        let start = out.len();
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&[0; TAG_LEN]);
        keys.len.seal(&keys.len_nonce, &[], &mut out[start..]);
        let body = out.len();
        out.extend_from_slice(&[self.response_auth, self.options, 0, 0]);
        out.extend_from_slice(&[0; TAG_LEN]);
        keys.body.seal(&keys.body_nonce, &[], &mut out[body..]);
    }

    /// Opens the response header at the front of `buf` (client side) and checks that it echoes
    /// `request.response_auth`; returns it with the number of bytes it took. A command in the
    /// header is skipped (Xray defines none today). `UnexpectedEnd` leaves `buf` untouched.
    pub fn open(buf: &mut [u8], request: &RequestHeader) -> Result<(ResponseHeader, usize), VmessError> {
        if buf.len() < 2 + TAG_LEN {
            return Err(VmessError::UnexpectedEnd);
        }
        let keys = ResponseKeys::derive(request);
        let mut sealed_len = [0u8; 2 + TAG_LEN];
        sealed_len.copy_from_slice(&buf[..2 + TAG_LEN]);
        let len = keys.len.open(&keys.len_nonce, &[], &mut sealed_len)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if !(4..=MAX_RESPONSE_HEADER_LEN).contains(&len) {
            return Err(VmessError::BadLength(len));
        }
        let end = 2 + TAG_LEN + len + TAG_LEN;
        if buf.len() < end {
            return Err(VmessError::UnexpectedEnd);
        }
        let plain = keys.body.open(&keys.body_nonce, &[], &mut buf[2 + TAG_LEN..end])?;
        if plain[0] != request.response_auth {
            return Err(VmessError::BadResponseAuth(plain[0]));
        }
        if plain[2] != 0 && plain.len() < 4 + usize::from(plain[3]) {
            return Err(VmessError::BadLength(len));
        }
        Ok((ResponseHeader { response_auth: plain[0], options: plain[1] }, end))
    }
}

struct ResponseKeys {
    len: AeadKey,
    len_nonce: [u8; 12],
    body: AeadKey,
    body_nonce: [u8; 12],
}

impl ResponseKeys {
    fn derive(request: &RequestHeader) -> ResponseKeys {
        let key = request.response_key();
        let iv = request.response_iv();
        ResponseKeys {
            len: AeadKey::new(Cipher::Aes128Gcm, &kdf16(&key, &[LABEL_RESP_LEN_KEY])),
            len_nonce: kdf12(&iv, &[LABEL_RESP_LEN_NONCE]),
            body: AeadKey::new(Cipher::Aes128Gcm, &kdf16(&key, &[LABEL_RESP_KEY])),
            body_nonce: kdf12(&iv, &[LABEL_RESP_NONCE]),
        }
    }
}

/// FNV-1a, 32 bits.
fn fnv1a(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| (h ^ u32::from(x)).wrapping_mul(0x0100_0193))
}
