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
        let start = out.len();
        out.resize(start + HEADER_PREFIX_LEN, 0);
        self.encode_plain(random, out);
        seal_after(user, now, random, start, out);
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

/// Seals the header plaintext that follows `HEADER_PREFIX_LEN` placeholder bytes at `start` in
/// `out`, and fills the placeholder with the auth ID, sealed length and nonce.
fn seal_after(user: &UserKey, now: u64, random: &SealRandom, start: usize, out: &mut Vec<u8>) {
    let auth_id = user.auth_id().encode(now, random.auth_id);
    let keys = HeaderKeys::derive(user.cmd_key(), &auth_id, &random.nonce);
    let body = start + HEADER_PREFIX_LEN;
    let len = out.len() - body;
    out.extend_from_slice(&[0; TAG_LEN]);
    keys.body.seal(&keys.body_nonce, &auth_id, &mut out[body..]);
    let prefix = &mut out[start..body];
    prefix[..16].copy_from_slice(&auth_id);
    prefix[16..18].copy_from_slice(&(len as u16).to_be_bytes());
    keys.len.seal(&keys.len_nonce, &auth_id, &mut prefix[16..16 + 2 + TAG_LEN]);
    prefix[16 + 2 + TAG_LEN..].copy_from_slice(&random.nonce);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmess::{find_user, peek_auth_id, ReplayFilter};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn user() -> UserKey {
        UserKey::new(&uuid::Uuid::from_bytes([0x42; 16]))
    }

    fn random(padding_len: u8) -> SealRandom {
        SealRandom { auth_id: [1, 2, 3, 4], nonce: [5; 8], padding_len, padding: [0xaa; 15] }
    }

    fn header(command: Command, addr: &str) -> RequestHeader {
        RequestHeader {
            body_iv: [0x11; 16],
            body_key: [0x22; 16],
            response_auth: 0x33,
            options: Options::CHUNK_STREAM | Options::CHUNK_MASKING | Options::GLOBAL_PADDING,
            security: Security::Aes128Gcm,
            command,
            destination: (command != Command::Mux)
                .then(|| Destination { addr: Address::parse(addr).unwrap(), port: 8443 }),
        }
    }

    const NOW: u64 = 1_700_000_000;

    fn sealed(h: &RequestHeader, padding_len: u8) -> Vec<u8> {
        let mut out = vec![0xee]; // something already in the buffer stays
        h.seal(&user(), NOW, &random(padding_len), &mut out);
        out.remove(0);
        out
    }

    /// Seals an arbitrary plaintext as a request header.
    fn sealed_plain(plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0; HEADER_PREFIX_LEN];
        out.extend_from_slice(plain);
        seal_after(&user(), NOW, &random(0), 0, &mut out);
        out
    }

    fn open(buf: &[u8]) -> Result<(RequestHeader, usize), VmessError> {
        RequestOpener::new(&user()).open(&mut buf.to_vec())
    }

    // A first packet recorded from a real client, published with mnixry/vmess-aead-python
    // (tests/test.hex, with its expected fields in tests/test_02_unpack.py): user
    // b831381d-6324-4d53-ad4f-8cda48b30811, auth ID time 1703242529, AES-128-GCM with chunk
    // stream, masking and global padding, TCP to 104.26.12.31:80, then one body chunk.
    const RECORDED: &str = concat!(
        "62365f27d7d46c8c7afa1e47b3e7ae44f8c74911f48249306adc6c79224243239902c77fd3c0ece0852a777d2600e848",
        "c7eb3e625ec0febb94b8ce63c58868c0dfe419255317b03121484c3ee79604f248c78d21408b69108feacafbc2f5d42b",
        "559857222d73f1e48e66d09daae8a2d1048436b9b96fa9ce3f101acc69affc11eccc11492ee0abe27a1e827ceebeedd0",
        "ed4b9eeb64442227dee06c6d5e6c49a61c2985d7fc466472228ee578a71efe2bb67b2069dd0c776df4097ea697263ef3",
        "d336bdd3be6fb863c0b9c9907283c47d6dd54e637ff99408ac1ea9dc3600d3b1062fdcd04714",
    );

    #[test]
    fn opens_a_recorded_first_packet_and_refuses_its_replay() {
        let packet = hex(RECORDED);
        let user = UserKey::new(&uuid::Uuid::parse_str("b831381d-6324-4d53-ad4f-8cda48b30811").unwrap());
        let users = [(user.auth_id(), "the user")];
        let now = 1_703_242_500;
        let mut filter = ReplayFilter::new();

        let id = peek_auth_id(&packet).unwrap();
        assert_eq!(user.auth_id().check(&id), Some(1_703_242_529));
        assert_eq!(find_user(users, &id, now, &mut filter), Ok("the user"));

        let mut buf = packet.clone();
        let (h, used) = RequestOpener::new(&user).open(&mut buf).unwrap();
        assert_eq!(h.body_iv.to_vec(), hex("b0e0372ed1becf2988cdbf592d29a374"));
        assert_eq!(h.body_key.to_vec(), hex("ec5190231ac5e588c38dca4d7700a04c"));
        assert_eq!(h.response_auth, 120);
        assert_eq!(h.options, Options::CHUNK_STREAM | Options::CHUNK_MASKING | Options::GLOBAL_PADDING);
        assert_eq!(h.security, Security::Aes128Gcm);
        assert_eq!(h.command, Command::Tcp);
        assert_eq!(h.destination, Some(Destination { addr: Address::parse("104.26.12.31").unwrap(), port: 80 }));
        assert_eq!(&packet[34..42], &hex("c77fd3c0ece0852a")[..]);

        let mut body = crate::vmess::ChunkOpener::new(&h, crate::vmess::Direction::Request).unwrap();
        let rest = &mut buf[used..];
        match body.open(rest).unwrap() {
            crate::vmess::Chunk::Data { plain, consumed } => {
                assert_eq!(
                    &rest[plain],
                    b"GET / HTTP/1.1\r\nHost: ip.sb\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
                );
                assert_eq!(consumed, rest.len());
            }
            other => panic!("{other:?}"),
        }

        // The same bytes again, within the window: the replay filter refuses them.
        for later in [now, now + 60, 1_703_242_529 + 120] {
            assert_eq!(find_user(users, &id, later, &mut filter), Err(VmessError::Replayed));
        }
        // Outside the window the clock refuses them first.
        assert_eq!(
            find_user(users, &id, 1_703_242_529 + 121, &mut filter),
            Err(VmessError::BadTimestamp(1_703_242_529))
        );
    }

    #[test]
    fn round_trips_every_command_address_and_padding() {
        for command in [Command::Tcp, Command::Udp, Command::Mux] {
            for addr in ["10.0.0.1", "2001:db8::7", "example.com", &"a".repeat(255)] {
                for padding_len in [0, 1, 15, 0xf7] {
                    let mut h = header(command, addr);
                    h.security = Security::ChaCha20Poly1305;
                    let wire = sealed(&h, padding_len);
                    let mut with_body = wire.clone();
                    with_body.extend_from_slice(b"body");
                    let (got, used) = open(&with_body).unwrap();
                    assert_eq!(got, h);
                    assert_eq!(used, wire.len());
                    assert!(wire.len() <= MAX_REQUEST_LEN);
                    if addr.len() == 255 && padding_len == 15 && command != Command::Mux {
                        assert_eq!(wire.len(), MAX_REQUEST_LEN);
                    }
                }
            }
        }
    }

    #[test]
    fn every_truncation_needs_more_and_consumes_nothing() {
        let wire = sealed(&header(Command::Tcp, "example.com"), 7);
        for cut in 0..wire.len() {
            let mut short = wire[..cut].to_vec();
            assert_eq!(RequestOpener::new(&user()).open(&mut short), Err(VmessError::UnexpectedEnd), "cut {cut}");
            assert_eq!(short, wire[..cut], "cut {cut} modified the buffer");
        }
        // One opener fed a byte at a time, as a server reading a slow client.
        let mut opener = RequestOpener::new(&user());
        let mut buf = Vec::new();
        for (i, b) in wire.iter().enumerate() {
            buf.push(*b);
            let r = opener.open(&mut buf.clone());
            if i + 1 < wire.len() {
                assert_eq!(r, Err(VmessError::UnexpectedEnd), "at {i}");
            } else {
                assert_eq!(r.unwrap().1, wire.len());
            }
        }
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let wire = sealed(&header(Command::Udp, "10.9.8.7"), 3);
        for i in 0..wire.len() {
            for bit in [0x01, 0x80] {
                let mut bad = wire.clone();
                bad[i] ^= bit;
                assert_eq!(open(&bad), Err(VmessError::BadTag), "byte {i}");
            }
        }
        let other = UserKey::new(&uuid::Uuid::from_bytes([0x43; 16]));
        assert_eq!(RequestOpener::new(&other).open(&mut wire.clone()), Err(VmessError::BadTag));
    }

    #[test]
    fn an_absurd_length_is_refused_without_waiting_for_it() {
        let mut wire = sealed_plain(&[0; 4]);
        let auth_id: [u8; 16] = wire[..16].try_into().unwrap();
        let keys = HeaderKeys::derive(user().cmd_key(), &auth_id, &[5; 8]);
        wire[16..18].copy_from_slice(&60_000u16.to_be_bytes());
        keys.len.seal(&keys.len_nonce, &auth_id, &mut wire[16..34]);
        assert_eq!(open(&wire[..HEADER_PREFIX_LEN]), Err(VmessError::BadLength(60_000)));
        wire[16..18].copy_from_slice(&(MAX_HEADER_LEN as u16 + 1).to_be_bytes());
        keys.len.seal(&keys.len_nonce, &auth_id, &mut wire[16..34]);
        assert_eq!(open(&wire[..HEADER_PREFIX_LEN]), Err(VmessError::BadLength(MAX_HEADER_LEN + 1)));
    }

    /// A valid TCP plaintext (38 fixed bytes, port, IPv4) with its checksum, edited by `edit`
    /// before the checksum is computed.
    fn plain_with(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut p = vec![VERSION];
        p.extend_from_slice(&[0x11; 16]);
        p.extend_from_slice(&[0x22; 16]);
        p.extend_from_slice(&[0x33, 0x0d, 0x03, 0x00, 0x01]);
        p.extend_from_slice(&[0x01, 0xbb, 1, 10, 0, 0, 1]);
        edit(&mut p);
        let sum = fnv1a(&p);
        p.extend_from_slice(&sum.to_be_bytes());
        p
    }

    #[test]
    fn golden_plaintext_laid_out_by_hand() {
        // Xray proxy/vmess/encoding/client.go EncodeRequestHeader: version, IV, key, response
        // auth, options, padding/security, reserved, command, port, address, padding, FNV-1a.
        let (h, _) = open(&sealed_plain(&plain_with(|_| {}))).unwrap();
        assert_eq!(h.body_iv, [0x11; 16]);
        assert_eq!(h.body_key, [0x22; 16]);
        assert_eq!(h.response_auth, 0x33);
        assert_eq!(h.options.0, 0x0d);
        assert_eq!(h.security, Security::Aes128Gcm);
        assert_eq!(h.destination, Some(Destination { addr: Address::parse("10.0.0.1").unwrap(), port: 443 }));
        let mut ours = Vec::new();
        h.encode_plain(&random(0), &mut ours);
        assert_eq!(ours, plain_with(|_| {}));
        // FNV-1a 32 of "a" (the FNV reference value).
        assert_eq!(fnv1a(b"a"), 0xe40c292c);
    }

    #[test]
    fn refuses_bad_fields() {
        let case = |edit: fn(&mut Vec<u8>)| open(&sealed_plain(&plain_with(edit))).map(|_| ());
        assert_eq!(case(|p| p[0] = 2), Err(VmessError::BadVersion(2)));
        for nibble in [0u8, 1, 2, 6, 15] {
            let r = open(&sealed_plain(&plain_with(|p| p[35] = nibble))).map(|_| ());
            assert_eq!(r, Err(VmessError::BadSecurity(nibble)));
        }
        assert_eq!(case(|p| p[37] = 4), Err(VmessError::BadCommand(4)));
        assert_eq!(case(|p| p[40] = 9), Err(VmessError::BadAddressType(9)));
        assert_eq!(case(|p| p[34] = 0x09), Err(VmessError::BadOptions(0x09)));
        // Padding announced but missing: the padding eats the checksum.
        assert_eq!(case(|p| p[35] = 0x43), Err(VmessError::BadLength(49)));
        let mut p = plain_with(|_| {});
        *p.last_mut().unwrap() ^= 1;
        assert_eq!(open(&sealed_plain(&p)).map(|_| ()), Err(VmessError::BadChecksum));
        // Cut inside the sealed plaintext: malformed, not "need more".
        assert_eq!(open(&sealed_plain(&p[..30])).map(|_| ()), Err(VmessError::BadLength(30)));
        assert_eq!(open(&sealed_plain(&[])).map(|_| ()), Err(VmessError::BadLength(0)));
        // Trailing bytes after the checksum are ignored, as Xray ignores them.
        let mut p = plain_with(|_| {});
        p.extend_from_slice(b"xx");
        assert!(open(&sealed_plain(&p)).is_ok());
    }

    #[test]
    fn noise_never_panics() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..400 {
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let r = RequestOpener::new(&user()).open(&mut buf.clone());
            assert!(matches!(r, Err(VmessError::UnexpectedEnd) | Err(VmessError::BadTag)), "{len}: {r:?}");
            let h = header(Command::Tcp, "10.0.0.1");
            let r = ResponseHeader::open(&mut buf, &h);
            assert!(matches!(r, Err(VmessError::UnexpectedEnd) | Err(VmessError::BadTag)), "{len}: {r:?}");
        }
    }

    #[test]
    fn response_round_trips_and_truncates_and_tampers() {
        let h = header(Command::Tcp, "example.com");
        let mut wire = b"kept".to_vec();
        ResponseHeader::for_request(&h).seal(&h, &mut wire);
        let wire = wire.split_off(4);
        assert_eq!(wire.len(), RESPONSE_LEN);
        let mut with_body = wire.clone();
        with_body.extend_from_slice(b"body");
        assert_eq!(
            ResponseHeader::open(&mut with_body, &h),
            Ok((ResponseHeader { response_auth: 0x33, options: 0 }, RESPONSE_LEN))
        );
        for cut in 0..wire.len() {
            let mut short = wire[..cut].to_vec();
            assert_eq!(ResponseHeader::open(&mut short, &h), Err(VmessError::UnexpectedEnd), "cut {cut}");
            assert_eq!(short, wire[..cut]);
        }
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x40;
            assert_eq!(ResponseHeader::open(&mut bad, &h), Err(VmessError::BadTag), "byte {i}");
        }
        let mut wrong = wire.clone();
        let mut other = h.clone();
        other.response_auth = 0x34;
        ResponseHeader::for_request(&other).seal(&h, &mut wrong);
        let mut wrong = wrong.split_off(RESPONSE_LEN);
        assert_eq!(ResponseHeader::open(&mut wrong, &h), Err(VmessError::BadResponseAuth(0x34)));
    }

    #[test]
    fn resolves_security_as_xray_outbound_does() {
        let s = |c: SecurityConfig, hw| c.resolve(hw, false);
        let full = Options::CHUNK_STREAM | Options::CHUNK_MASKING | Options::GLOBAL_PADDING;
        assert_eq!(s(SecurityConfig::Auto, true), (Security::Aes128Gcm, full));
        assert_eq!(s(SecurityConfig::Auto, false), (Security::ChaCha20Poly1305, full));
        assert_eq!(s(SecurityConfig::Aes128Gcm, false), (Security::Aes128Gcm, full));
        assert_eq!(s(SecurityConfig::ChaCha20Poly1305, true), (Security::ChaCha20Poly1305, full));
        assert_eq!(s(SecurityConfig::None, true), (Security::None, Options::CHUNK_STREAM | Options::CHUNK_MASKING));
        assert_eq!(s(SecurityConfig::Zero, true), (Security::None, Options(0)));
        assert_eq!(SecurityConfig::Aes128Gcm.resolve(true, true).1, full | Options::AUTHENTICATED_LENGTH);
        assert_eq!(SecurityConfig::parse("AES-128-GCM"), Some(SecurityConfig::Aes128Gcm));
        assert_eq!(SecurityConfig::parse("rc4"), None);
        let _ = has_aes_gcm_hardware();
    }
}
