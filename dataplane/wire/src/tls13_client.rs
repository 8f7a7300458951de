//! A minimal TLS 1.3 client, sans IO, for REALITY's outbound: a browser-shaped ClientHello whose
//! session id carries REALITY's seal (which rustls cannot set: the seal's AAD is the whole
//! ClientHello), the handshake (X25519 only, the three TLS 1.3 suites), and the record layer.
//!
//! The server is accepted only if its certificate is REALITY's temporary one for this
//! connection's auth key (`reality::check_temporary_cert`) and its CertificateVerify and
//! Finished check out; anything else is the camouflage site answering, and the handshake fails
//! with `TlsError::NotReality`.
//!
//! Use: `ClientHandshake::start` gives the first flight; feed what the server sends to
//! `advance` until it yields an `Established`, whose `RecordReader` and `RecordWriter` then
//! carry the application data (tickets ignored, KeyUpdate and close_notify handled).

use ring::{aead, digest, hkdf, hmac};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::reality;
use crate::tls_fields::{Fields, Truncated};

const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const CHANGE_CIPHER_SPEC: u8 = 20;

/// The largest plaintext in one record.
pub const MAX_PLAINTEXT: usize = 16384;
/// The largest record body accepted (TLS 1.3 allows 256 bytes of expansion).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// The largest handshake message accepted (a certificate chain fits easily).
const MAX_HANDSHAKE_MESSAGE: usize = 64 * 1024;
/// Records sealed under one key before the writer rotates it (RFC 8446 §5.5 allows AES-GCM
/// about 2^24.5 full records per key).
const RECORDS_PER_KEY: u64 = 1 << 23;

/// SHA-256("HelloRetryRequest"): a ServerHello with this random asks for another key share.
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91, 0xc2, 0xa2, 0x11,
    0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// Why the TLS session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsError {
    /// The peer sent an alert (its description byte).
    Alert(u8),
    /// A record or message does not parse, or comes out of order.
    Protocol(&'static str),
    /// A record does not decrypt (bad key or tampered bytes).
    Decrypt,
    /// The server is not a REALITY server of ours: the camouflage site answered.
    NotReality(&'static str),
    /// The configured server key is unusable (a low-order point).
    BadServerKey,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Alert(d) => write!(f, "TLS alert {d} from the server"),
            TlsError::Protocol(what) => write!(f, "TLS protocol error: {what}"),
            TlsError::Decrypt => f.write_str("a TLS record does not decrypt"),
            TlsError::NotReality(why) => write!(f, "not a REALITY server for our key ({why})"),
            TlsError::BadServerKey => f.write_str("the server's public key is a low-order point"),
        }
    }
}

impl std::error::Error for TlsError {}

impl From<reality::CertRefusal> for TlsError {
    fn from(e: reality::CertRefusal) -> TlsError {
        TlsError::NotReality(e.reason())
    }
}

/// What the client presents and whom it accepts.
#[derive(Debug, Clone)]
pub struct ClientSettings<'a> {
    /// The SNI sent (none when empty or an IP address).
    pub server_name: &'a str,
    /// ALPN protocols offered, in order.
    pub alpn: &'a [&'a [u8]],
    /// The server this client authenticates to.
    pub server: ServerAuth,
}

/// How the server is authenticated.
#[derive(Debug, Clone, Copy)]
pub enum ServerAuth {
    /// REALITY: the session id sealed for the server's X25519 `public_key`, the temporary
    /// certificate required.
    Reality {
        /// The server's X25519 public key (`publicKey` / `password`).
        public_key: [u8; 32],
        /// `shortId`, zero-padded.
        short_id: [u8; 8],
        /// The client version sealed in (servers may bound it with `minClientVer`).
        version: [u8; 3],
        /// Unix time, seconds (servers may bound the skew with `maxTimeDiff`).
        unix_time: u32,
    },
    /// Any ed25519 certificate whose key signs CertificateVerify: only to test the TLS
    /// machinery against another implementation with an ordinary certificate.
    #[cfg(test)]
    AnyEd25519,
}

/// The per-connection randomness the caller draws (the codec has no RNG).
#[derive(Debug, Clone, Copy)]
pub struct Entropy {
    /// ClientHello.random.
    pub random: [u8; 32],
    /// The X25519 key share's private key (also REALITY's side of the auth key).
    pub key_share: [u8; 32],
    /// Picks the GREASE values, as a browser does per connection.
    pub grease: [u8; 2],
}

// === cipher suites and the key schedule ===

/// A TLS 1.3 cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// TLS_AES_128_GCM_SHA256
    Aes128Gcm,
    /// TLS_AES_256_GCM_SHA384
    Aes256Gcm,
    /// TLS_CHACHA20_POLY1305_SHA256
    Chacha20Poly1305,
}

impl Suite {
    fn from_id(id: u16) -> Option<Suite> {
        match id {
            0x1301 => Some(Suite::Aes128Gcm),
            0x1302 => Some(Suite::Aes256Gcm),
            0x1303 => Some(Suite::Chacha20Poly1305),
            _ => None,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn sha384(self) -> bool {
        self == Suite::Aes256Gcm
    }

    fn digest(self) -> &'static digest::Algorithm {
        if self.sha384() {
            &digest::SHA384
        } else {
            &digest::SHA256
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        if self.sha384() {
            hkdf::HKDF_SHA384
        } else {
            hkdf::HKDF_SHA256
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        if self.sha384() {
            hmac::HMAC_SHA384
        } else {
            hmac::HMAC_SHA256
        }
    }

    fn hash_len(self) -> usize {
        self.digest().output_len()
    }

    /// HKDF-Extract: HMAC(salt, ikm).
    fn extract(self, salt: &[u8], ikm: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac(), salt), ikm).as_ref().to_vec()
    }

    /// HKDF-Expand-Label(secret, label, context, len).
    fn expand_label(self, secret: &[u8], label: &[u8], context: &[u8], len: usize) -> Vec<u8> {
        struct Len(usize);
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let length = (len as u16).to_be_bytes();
        let label_len = [6 + label.len() as u8];
        let context_len = [context.len() as u8];
        let info: [&[u8]; 6] = [&length, &label_len, b"tls13 ", label, &context_len, context];
        let mut out = vec![0u8; len];
        hkdf::Prk::new_less_safe(self.hkdf(), secret)
            .expand(&info, Len(len))
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF output lengths here are far below 255 hashes");
        out
    }

    /// Derive-Secret(secret, label, transcript hash).
    fn derive(self, secret: &[u8], label: &[u8], hash: &[u8]) -> Vec<u8> {
        self.expand_label(secret, label, hash, self.hash_len())
    }

    fn empty_hash(self) -> digest::Digest {
        digest::digest(self.digest(), b"")
    }

    /// The verify_data of a Finished under `base` (a handshake traffic secret).
    fn finished(self, base: &[u8], hash: &[u8]) -> hmac::Tag {
        let key = self.expand_label(base, b"finished", b"", self.hash_len());
        hmac::sign(&hmac::Key::new(self.hmac(), &key), hash)
    }
}

/// One direction's record protection: key, IV and sequence number.
struct Protection {
    suite: Suite,
    secret: Vec<u8>,
    key: aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Protection {
    fn new(suite: Suite, secret: Vec<u8>) -> Protection {
        let key_bytes = suite.expand_label(&secret, b"key", b"", suite.aead().key_len());
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(suite.aead(), &key_bytes).expect("key length"));
        let iv: [u8; 12] = suite.expand_label(&secret, b"iv", b"", 12).try_into().expect("12 bytes");
        Protection { suite, secret, key, iv, seq: 0 }
    }

    /// The next key of this direction (KeyUpdate).
    fn update(&mut self) {
        let next = self.suite.expand_label(&self.secret, b"traffic upd", b"", self.suite.hash_len());
        *self = Protection::new(self.suite, next);
    }

    fn nonce(&mut self) -> aead::Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        aead::Nonce::assume_unique_for_key(nonce)
    }

    /// Appends one record: `plain` with inner content type `kind`.
    fn seal(&mut self, kind: u8, plain: &[u8], out: &mut Vec<u8>) {
        let len = plain.len() + 1 + self.suite.aead().tag_len();
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        out.extend_from_slice(&header);
        let at = out.len();
        out.extend_from_slice(plain);
        out.push(kind);
        let nonce = self.nonce();
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, aead::Aad::from(header), &mut out[at..])
            .expect("a record is far below the AEAD's limit");
        out.extend_from_slice(tag.as_ref());
    }

    /// Opens one record in place (`record`: header and body); the inner content type and the
    /// plaintext's range in `record`.
    fn open(&mut self, record: &mut [u8]) -> Result<(u8, std::ops::Range<usize>), TlsError> {
        let (header, body) = record.split_at_mut(5);
        let header: [u8; 5] = header.try_into().expect("5 bytes");
        let nonce = self.nonce();
        let plain = self.key.open_in_place(nonce, aead::Aad::from(header), body).map_err(|_| TlsError::Decrypt)?;
        // TLSInnerPlaintext: content, the type, zero padding.
        let end = plain.iter().rposition(|&b| b != 0).ok_or(TlsError::Protocol("record without content type"))?;
        Ok((plain[end], 5..5 + end))
    }
}

/// The length of the first record in `input` (header included) once it is all there; an error
/// for a record longer than TLS allows.
pub fn record_len(input: &[u8]) -> Result<Option<usize>, TlsError> {
    let Some(header) = input.get(..5) else { return Ok(None) };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_CIPHERTEXT {
        return Err(TlsError::Protocol("record too long"));
    }
    Ok((input.len() >= 5 + len).then_some(5 + len))
}

// === the ClientHello ===

/// GREASE value `i` (0..16): 0x0a0a, 0x1a1a, ...
fn grease(i: u8) -> u16 {
    let n = u16::from(i & 0x0f) << 4 | 0x0a;
    n << 8 | n
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends extension `kind` whose body `body` writes.
fn extension(out: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    put_u16(out, kind);
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    body(out);
    let len = (out.len() - at - 2) as u16;
    out[at..at + 2].copy_from_slice(&len.to_be_bytes());
}

/// Appends a u16-length-prefixed vector that `body` writes.
fn vec16(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    body(out);
    let len = (out.len() - at - 2) as u16;
    out[at..at + 2].copy_from_slice(&len.to_be_bytes());
}

/// A ClientHello message (header included) shaped like Chrome's before its post-quantum key
/// share: GREASE, the TLS 1.3 and 1.2 suites, SNI, groups X25519/P-256/P-384 with one X25519
/// share, Chrome's signature algorithms, ALPN, brotli certificate compression and ALPS; the
/// session id 32 zero bytes, to be filled.
fn client_hello(settings: &ClientSettings<'_>, entropy: &Entropy, share: &[u8; 32]) -> Vec<u8> {
    let g1 = grease(entropy.grease[0]);
    // A second GREASE extension must not repeat the first's type.
    let g2 = match grease(entropy.grease[1]) {
        g if g == g1 => g ^ 0x1010,
        g => g,
    };
    let mut m = vec![1, 0, 0, 0, 3, 3];
    m.extend_from_slice(&entropy.random);
    m.push(32);
    m.extend_from_slice(&[0; 32]);
    vec16(&mut m, |m| {
        put_u16(m, g1);
        for suite in [
            0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d,
            0x002f, 0x0035,
        ] {
            put_u16(m, suite);
        }
    });
    m.extend_from_slice(&[1, 0]);
    let name = settings.server_name;
    let sni = !name.is_empty() && name.parse::<std::net::IpAddr>().is_err();
    vec16(&mut m, |m| {
        extension(m, g1, |_| {});
        if sni {
            extension(m, 0, |m| {
                vec16(m, |m| {
                    m.push(0);
                    vec16(m, |m| m.extend_from_slice(name.as_bytes()));
                })
            });
        }
        extension(m, 23, |_| {}); // extended_master_secret
        extension(m, 0xff01, |m| m.push(0)); // renegotiation_info
        extension(m, 10, |m| {
            vec16(m, |m| {
                for group in [g1, 0x001d, 0x0017, 0x0018] {
                    put_u16(m, group);
                }
            })
        });
        extension(m, 11, |m| m.extend_from_slice(&[1, 0])); // ec_point_formats: uncompressed
        extension(m, 35, |_| {}); // session_ticket
        if !settings.alpn.is_empty() {
            extension(m, 16, |m| {
                vec16(m, |m| {
                    for p in settings.alpn {
                        m.push(p.len() as u8);
                        m.extend_from_slice(p);
                    }
                })
            });
        }
        extension(m, 5, |m| m.extend_from_slice(&[1, 0, 0, 0, 0])); // status_request: OCSP
        extension(m, 13, |m| {
            vec16(m, |m| {
                for scheme in [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601] {
                    put_u16(m, scheme);
                }
            })
        });
        extension(m, 18, |_| {}); // signed_certificate_timestamp
        extension(m, 51, |m| {
            vec16(m, |m| {
                put_u16(m, g1);
                m.extend_from_slice(&[0, 1, 0]);
                put_u16(m, 0x001d);
                put_u16(m, 32);
                m.extend_from_slice(share);
            })
        });
        extension(m, 45, |m| m.extend_from_slice(&[1, 1])); // psk_key_exchange_modes: psk_dhe_ke
        extension(m, 43, |m| {
            m.push(6);
            for v in [g1, 0x0304, 0x0303] {
                put_u16(m, v);
            }
        });
        extension(m, 27, |m| m.extend_from_slice(&[2, 0, 2])); // compress_certificate: brotli
        if settings.alpn.iter().any(|p| *p == b"h2") {
            extension(m, 17513, |m| vec16(m, |m| m.extend_from_slice(b"\x02h2")));
            // ALPS
        }
        extension(m, g2, |m| m.push(0));
    });
    let len = m.len() - 4;
    m[1..4].copy_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
    m
}

// === the handshake ===

/// A field that runs past its message fails the message.
impl From<Truncated> for TlsError {
    fn from(_: Truncated) -> Self {
        TlsError::Protocol("message truncated")
    }
}

/// The next whole handshake message at the front of `buf` (type, header and body), if any.
fn next_message(buf: &[u8]) -> Result<Option<usize>, TlsError> {
    let Some(header) = buf.get(..4) else { return Ok(None) };
    let len = usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    if len > MAX_HANDSHAKE_MESSAGE {
        return Err(TlsError::Protocol("handshake message too long"));
    }
    Ok((buf.len() >= 4 + len).then_some(4 + len))
}

/// Where the handshake stands: the next message the server owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    ServerHello,
    EncryptedExtensions,
    Certificate,
    CertificateVerify,
    Finished,
}

/// The keys and transcript once the ServerHello is in.
struct Keyed {
    suite: Suite,
    transcript: digest::Context,
    handshake_secret: Vec<u8>,
    client_secret: Vec<u8>,
    server: Protection,
}

/// A TLS 1.3 client handshake in progress.
pub struct ClientHandshake {
    expect: Expect,
    secret: StaticSecret,
    hello: Vec<u8>,
    server: ServerAuth,
    /// REALITY's auth key, for the temporary certificate.
    auth_key: Option<[u8; 32]>,
    keyed: Option<Keyed>,
    /// Handshake bytes not yet a whole message.
    messages: Vec<u8>,
    /// The server's certificate key, for CertificateVerify.
    server_key: Option<[u8; 32]>,
    alpn: Option<Vec<u8>>,
}

/// A finished handshake: what was negotiated and both directions' record layers.
pub struct Established {
    /// The cipher suite.
    pub suite: Suite,
    /// The ALPN protocol the server chose.
    pub alpn: Option<Vec<u8>>,
    /// Opens the server's records.
    pub reader: RecordReader,
    /// Seals ours.
    pub writer: RecordWriter,
}

impl ClientHandshake {
    /// Starts a handshake: the client and the ClientHello record to send.
    pub fn start(settings: &ClientSettings<'_>, entropy: &Entropy) -> Result<(ClientHandshake, Vec<u8>), TlsError> {
        let secret = StaticSecret::from(entropy.key_share);
        let share = PublicKey::from(&secret).to_bytes();
        let mut hello = client_hello(settings, entropy, &share);
        let auth_key = match settings.server {
            ServerAuth::Reality { public_key, short_id, version, unix_time } => {
                let key = reality::auth_key(&entropy.key_share, &public_key, &entropy.random)
                    .ok_or(TlsError::BadServerKey)?;
                let plain = reality::session_plaintext(version, unix_time, short_id);
                reality::seal_session_id(&mut hello, &key, &plain)
                    .map_err(|_| TlsError::Protocol("ClientHello without room for the session id"))?;
                Some(key)
            }
            #[cfg(test)]
            ServerAuth::AnyEd25519 => None,
        };
        let mut record = vec![HANDSHAKE, 3, 1, (hello.len() >> 8) as u8, hello.len() as u8];
        record.extend_from_slice(&hello);
        let handshake = ClientHandshake {
            expect: Expect::ServerHello,
            secret,
            hello,
            server: settings.server,
            auth_key,
            keyed: None,
            messages: Vec::new(),
            server_key: None,
            alpn: None,
        };
        Ok((handshake, record))
    }

    /// Consumes the server's records at the front of `input` (whole records only; the rest
    /// stays), appending what to send to `out`. `Some` once the handshake is done: the
    /// client's Finished is then in `out`, and `input` keeps what follows the server's.
    pub fn advance(&mut self, input: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<Option<Established>, TlsError> {
        let mut at = 0;
        let mut done = None;
        while done.is_none() {
            let Some(len) = record_len(&input[at..])? else { break };
            let record = &mut input[at..at + len];
            at += len;
            match (record[0], &mut self.keyed) {
                (ALERT, _) => return Err(TlsError::Alert(record.get(6).copied().unwrap_or(0))),
                // Middlebox compatibility: one plain ChangeCipherSpec may come after the ServerHello.
                (CHANGE_CIPHER_SPEC, Some(_)) if record[5..] == [1] => continue,
                (HANDSHAKE, None) => self.messages.extend_from_slice(&record[5..]),
                (APPLICATION_DATA, Some(keyed)) => match keyed.server.open(record)? {
                    (HANDSHAKE, range) => self.messages.extend_from_slice(&record[range]),
                    (ALERT, range) => return Err(TlsError::Alert(record[range].get(1).copied().unwrap_or(0))),
                    _ => return Err(TlsError::Protocol("unexpected record during the handshake")),
                },
                _ => return Err(TlsError::Protocol("unexpected record during the handshake")),
            }
            while let Some(n) = next_message(&self.messages)? {
                let message: Vec<u8> = self.messages.drain(..n).collect();
                if let Some(established) = self.message(&message, out)? {
                    done = Some(established);
                    break;
                }
            }
        }
        if done.is_some() && !self.messages.is_empty() {
            return Err(TlsError::Protocol("handshake bytes after the server's Finished"));
        }
        input.drain(..at);
        Ok(done)
    }

    /// Takes one handshake message from the server.
    fn message(&mut self, message: &[u8], out: &mut Vec<u8>) -> Result<Option<Established>, TlsError> {
        let kind = message[0];
        let mut body = Fields(&message[4..]);
        match (self.expect, kind) {
            (Expect::ServerHello, 2) => {
                self.server_hello(message, body)?;
                self.expect = Expect::EncryptedExtensions;
            }
            (Expect::EncryptedExtensions, 8) => {
                let mut extensions = body.vec16()?;
                while !extensions.0.is_empty() {
                    let kind = extensions.u16()?;
                    let mut data = extensions.vec16()?;
                    if kind == 16 {
                        let mut list = data.vec16()?;
                        self.alpn = Some(list.vec8()?.0.to_vec());
                    }
                }
                self.transcript(message);
                self.expect = Expect::Certificate;
            }
            (Expect::Certificate, 11) => {
                let _context = body.vec8()?;
                let mut list = body.vec24()?;
                let first = list.vec24().map_err(|_| TlsError::NotReality("no certificate"))?.0;
                self.server_key = Some(match (self.server, self.auth_key) {
                    (ServerAuth::Reality { .. }, Some(key)) => reality::check_temporary_cert(first, &key)?,
                    #[cfg(test)]
                    (ServerAuth::AnyEd25519, _) => reality::ed25519_cert_key(first)?.0,
                    _ => return Err(TlsError::NotReality("no auth key")),
                });
                self.transcript(message);
                self.expect = Expect::CertificateVerify;
            }
            (Expect::Certificate, 25) => return Err(TlsError::NotReality("compressed certificate")),
            (Expect::Certificate, 13) => return Err(TlsError::NotReality("the server asks for a client certificate")),
            (Expect::CertificateVerify, 15) => {
                let scheme = body.u16()?;
                let signature = body.vec16()?.0;
                if scheme != 0x0807 {
                    return Err(TlsError::NotReality("CertificateVerify is not ed25519"));
                }
                let keyed = self.keyed.as_ref().expect("keyed after the ServerHello");
                let mut signed = vec![0x20; 64];
                signed.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
                signed.extend_from_slice(keyed.transcript.clone().finish().as_ref());
                let key = self.server_key.expect("a key after the Certificate");
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
                    .verify(&signed, signature)
                    .map_err(|_| TlsError::NotReality("CertificateVerify does not verify"))?;
                self.transcript(message);
                self.expect = Expect::Finished;
            }
            (Expect::Finished, 20) => return self.finished(message, body.0, out).map(Some),
            _ => return Err(TlsError::Protocol("unexpected handshake message")),
        }
        Ok(None)
    }

    fn transcript(&mut self, message: &[u8]) {
        self.keyed.as_mut().expect("keyed after the ServerHello").transcript.update(message);
    }

    /// Reads the ServerHello: TLS 1.3, a suite we offered, an X25519 share; then the
    /// handshake keys.
    fn server_hello(&mut self, message: &[u8], mut body: Fields<'_>) -> Result<(), TlsError> {
        let _legacy_version = body.u16()?;
        if body.take(32)? == HELLO_RETRY_RANDOM {
            return Err(TlsError::NotReality("HelloRetryRequest (the server wants another key share)"));
        }
        if body.vec8()?.0 != &self.hello[39..71] {
            return Err(TlsError::Protocol("ServerHello does not echo our session id"));
        }
        let suite = Suite::from_id(body.u16()?).ok_or(TlsError::NotReality("not a TLS 1.3 cipher suite"))?;
        if body.u8()? != 0 {
            return Err(TlsError::Protocol("compression in ServerHello"));
        }
        let mut extensions = body.vec16()?;
        let (mut tls13, mut share) = (false, None);
        while !extensions.0.is_empty() {
            let kind = extensions.u16()?;
            let mut data = extensions.vec16()?;
            match kind {
                43 => tls13 = data.u16()? == 0x0304,
                51 => {
                    if data.u16()? != 0x001d {
                        return Err(TlsError::NotReality("the server's key share is not X25519"));
                    }
                    share = Some(<[u8; 32]>::try_from(data.vec16()?.0).map_err(|_| TlsError::Protocol("key share"))?);
                }
                _ => {}
            }
        }
        if !tls13 {
            return Err(TlsError::NotReality("the server chose TLS 1.2"));
        }
        let share = share.ok_or(TlsError::Protocol("ServerHello without a key share"))?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(share));
        if !shared.was_contributory() {
            return Err(TlsError::Protocol("low-order key share"));
        }
        let mut transcript = digest::Context::new(suite.digest());
        transcript.update(&self.hello);
        transcript.update(message);
        let hash = transcript.clone().finish();
        let zeros = vec![0u8; suite.hash_len()];
        let early = suite.extract(&zeros, &zeros);
        let derived = suite.derive(&early, b"derived", suite.empty_hash().as_ref());
        let handshake_secret = suite.extract(&derived, shared.as_bytes());
        let client_secret = suite.derive(&handshake_secret, b"c hs traffic", hash.as_ref());
        let server_secret = suite.derive(&handshake_secret, b"s hs traffic", hash.as_ref());
        self.keyed = Some(Keyed {
            suite,
            transcript,
            handshake_secret,
            client_secret,
            server: Protection::new(suite, server_secret),
        });
        Ok(())
    }

    /// Checks the server's Finished, sends ours, and derives the application keys.
    fn finished(&mut self, message: &[u8], verify: &[u8], out: &mut Vec<u8>) -> Result<Established, TlsError> {
        let keyed = self.keyed.as_mut().expect("keyed after the ServerHello");
        let suite = keyed.suite;
        // hmac::verify compares in constant time.
        let key = suite.expand_label(&keyed.server.secret, b"finished", b"", suite.hash_len());
        hmac::verify(&hmac::Key::new(suite.hmac(), &key), keyed.transcript.clone().finish().as_ref(), verify)
            .map_err(|_| TlsError::NotReality("the server's Finished does not verify"))?;
        keyed.transcript.update(message);
        let hash = keyed.transcript.clone().finish();
        let derived = suite.derive(&keyed.handshake_secret, b"derived", suite.empty_hash().as_ref());
        let master = suite.extract(&derived, &vec![0u8; suite.hash_len()]);
        let client_app = suite.derive(&master, b"c ap traffic", hash.as_ref());
        let server_app = suite.derive(&master, b"s ap traffic", hash.as_ref());
        let client_verify = suite.finished(&keyed.client_secret, hash.as_ref());
        let mut finished = vec![20, 0, 0, client_verify.as_ref().len() as u8];
        finished.extend_from_slice(client_verify.as_ref());
        // As browsers do: a ChangeCipherSpec first, for middleboxes.
        out.extend_from_slice(&[CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1]);
        Protection::new(suite, keyed.client_secret.clone()).seal(HANDSHAKE, &finished, out);
        Ok(Established {
            suite,
            alpn: self.alpn.take(),
            reader: RecordReader { protection: Protection::new(suite, server_app), messages: Vec::new() },
            writer: RecordWriter { protection: Protection::new(suite, client_app) },
        })
    }
}

// === the record layer ===

/// What one record from the server held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Application data: its range in the record.
    Data(std::ops::Range<usize>),
    /// Nothing for the application (a session ticket, an empty record).
    Nothing,
    /// The server updated its key; `requested`: it asks us to update ours
    /// (`RecordWriter::key_update`).
    KeyUpdate {
        /// The server asked for our update.
        requested: bool,
    },
    /// close_notify: the server sends no more.
    Closed,
}

/// Opens the server's records after the handshake.
pub struct RecordReader {
    protection: Protection,
    /// Post-handshake messages not yet whole.
    messages: Vec<u8>,
}

impl RecordReader {
    /// Opens one whole record (`record_len` bytes: header and body) in place.
    pub fn open(&mut self, record: &mut [u8]) -> Result<Opened, TlsError> {
        match record[0] {
            APPLICATION_DATA => {}
            ALERT => return Err(TlsError::Protocol("plaintext alert after the handshake")),
            _ => return Err(TlsError::Protocol("unexpected record type")),
        }
        let (kind, range) = self.protection.open(record)?;
        match kind {
            APPLICATION_DATA if range.is_empty() => Ok(Opened::Nothing),
            APPLICATION_DATA => Ok(Opened::Data(range)),
            ALERT => match record[range.clone()] {
                [_, 0] => Ok(Opened::Closed),
                [_, d] => Err(TlsError::Alert(d)),
                _ => Err(TlsError::Protocol("malformed alert")),
            },
            // Xray's REALITY server stands in for the target's session ticket with a record
            // holding the single byte 4 (NewSessionTicket's type, no body): nothing to keep.
            HANDSHAKE if self.messages.is_empty() && record[range.clone()] == [4] => Ok(Opened::Nothing),
            HANDSHAKE => {
                self.messages.extend_from_slice(&record[range]);
                let mut update = None;
                while let Some(n) = next_message(&self.messages)? {
                    match (self.messages[0], &self.messages[4..n]) {
                        (4, _) => {} // NewSessionTicket: we never resume.
                        (24, [r @ (0 | 1)]) => update = Some(update.unwrap_or(false) | (*r == 1)),
                        _ => return Err(TlsError::Protocol("unexpected post-handshake message")),
                    }
                    self.messages.drain(..n);
                }
                match update {
                    // The server's next records are under its next key.
                    Some(requested) if self.messages.is_empty() => {
                        self.protection.update();
                        Ok(Opened::KeyUpdate { requested })
                    }
                    Some(_) => Err(TlsError::Protocol("KeyUpdate not at a record boundary")),
                    None => Ok(Opened::Nothing),
                }
            }
            _ => Err(TlsError::Protocol("unexpected content type")),
        }
    }
}

/// Seals our records after the handshake.
pub struct RecordWriter {
    protection: Protection,
}

impl RecordWriter {
    /// Appends `plain` to `out` as records of up to `MAX_PLAINTEXT` bytes.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        for chunk in plain.chunks(MAX_PLAINTEXT) {
            if self.protection.seq >= RECORDS_PER_KEY {
                self.key_update(false, out);
            }
            self.protection.seal(APPLICATION_DATA, chunk, out);
        }
    }

    /// Appends a KeyUpdate (asking the server for its own when `request`) and moves to our
    /// next key; the answer to `Opened::KeyUpdate { requested: true }` is `key_update(false)`.
    pub fn key_update(&mut self, request: bool, out: &mut Vec<u8>) {
        self.protection.seal(HANDSHAKE, &[24, 0, 0, 1, u8::from(request)], out);
        self.protection.update();
    }

    /// Appends close_notify.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        self.protection.seal(ALERT, &[1, 0], out);
    }
}

#[cfg(test)]
mod tests;
