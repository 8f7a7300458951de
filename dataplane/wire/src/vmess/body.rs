//! VMess body chunks, sealed into caller-owned buffers and opened in place.
//!
//! With AES-128-GCM or ChaCha20-Poly1305 a chunk is `size ‖ AEAD(payload) ‖ padding`, where
//! `size` counts the sealed payload and the padding. The payload nonce is a big-endian u16
//! counter followed by bytes 2..12 of the direction's IV. `size` is two bytes, XORed with the
//! next two bytes of SHAKE128(IV) under chunk masking, or, under authenticated length, two bytes
//! sealed (2 + tag) with a key `kdf16(request body key, "auth_len")` and a counter nonce over the
//! request IV (in both directions, as Xray does) carrying `size - 16`. Under global padding the
//! padding length is the next SHAKE value mod 64, drawn before the mask. A chunk whose payload is
//! empty ends the stream.
//!
//! With `none` and chunk stream, TCP and mux chunks are `size ‖ payload` (no padding, size 0
//! ends); UDP chunks are as above with no tag. Without chunk stream (`zero`) the body is the raw
//! stream and ends when the connection does.

use std::ops::Range;

use sha3::digest::{ExtendableOutput, Update, XofReader};
use sha3::{Shake128, Shake128Reader};

use crate::aead::{AeadKey, Cipher, TAG_LEN};

use super::header::{Options, RequestHeader, Security};
use super::kdf::{chacha_key, kdf16, LABEL_AUTH_LEN};
use super::VmessError;

/// The most bytes an Xray sender puts in one chunk, length field and padding included.
pub const XRAY_MAX_CHUNK: usize = 8192;

/// The most bytes one chunk can take on the wire from any sender: a sealed length field and a
/// 16-bit size plus the tag the authenticated length adds back. A receive buffer this large
/// always makes progress.
pub const MAX_WIRE_CHUNK: usize = 2 + TAG_LEN + 0xffff + TAG_LEN;

/// The most padding one chunk carries under global padding.
pub const MAX_PADDING: usize = 63;

/// Which half of the connection a body codec is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: body key and IV from the header.
    Request,
    /// Server to client: SHA-256 of those (first 16 bytes).
    Response,
}

/// One opened chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Plaintext at `plain` within the buffer given to [`ChunkOpener::open`]; drop `consumed`
    /// bytes from its front afterwards.
    Data {
        /// Where the plaintext lies in the buffer.
        plain: Range<usize>,
        /// How many bytes the chunk took.
        consumed: usize,
    },
    /// The sender ended the stream; `consumed` bytes were the end chunk (0 once ended).
    End {
        /// How many bytes the end chunk took.
        consumed: usize,
    },
}

// One per connection direction; the keys stay inline rather than behind a pointer.
#[allow(clippy::large_enum_variant)]
enum Framing {
    /// AES-128-GCM or ChaCha20-Poly1305 payloads.
    Aead { key: AeadKey, iv: [u8; 16], counter: u16, length: Option<SealedLength> },
    /// `none`, chunk stream, TCP or mux: a size and the payload, no padding.
    PlainStream,
    /// `none`, chunk stream, UDP: a size, the payload and padding.
    PlainPacket,
    /// `none` without chunk stream: the raw stream.
    Raw,
}

/// The AEAD that seals chunk sizes under the authenticated-length option.
struct SealedLength {
    key: AeadKey,
    iv: [u8; 16],
    counter: u16,
}

/// What both ends of one direction keep: the framing and the size stream.
struct Codec {
    framing: Framing,
    /// SHAKE128 over the direction's IV, when masking (or padding) draws from it.
    shake: Option<Shake128Reader>,
    padding: bool,
    stream: bool,
}

/// The nonce for chunk `counter`: the counter (u16 BE) over the first two bytes of `iv[..12]`.
fn nonce_at(counter: u16, iv: &[u8; 16]) -> [u8; 12] {
    let mut n: [u8; 12] = iv[..12].try_into().expect("12 of 16 bytes");
    n[..2].copy_from_slice(&counter.to_be_bytes());
    n
}

/// The next nonce, advancing the counter (it wraps at 2^16, as Xray's does).
fn nonce(counter: &mut u16, iv: &[u8; 16]) -> [u8; 12] {
    let n = nonce_at(*counter, iv);
    *counter = counter.wrapping_add(1);
    n
}

impl Codec {
    fn new(header: &RequestHeader, direction: Direction) -> Result<Codec, VmessError> {
        let options = header.options;
        let masking = options.contains(Options::CHUNK_MASKING);
        let padding = options.contains(Options::GLOBAL_PADDING);
        if padding && !masking {
            return Err(VmessError::BadOptions(options.0));
        }
        let (key, iv) = match direction {
            Direction::Request => (header.body_key, header.body_iv),
            Direction::Response => (header.response_key(), header.response_iv()),
        };
        let aead = |key: &[u8; 16]| match header.security {
            Security::ChaCha20Poly1305 => AeadKey::new(Cipher::ChaCha20Poly1305, &chacha_key(key)),
            _ => AeadKey::new(Cipher::Aes128Gcm, key),
        };
        let framing = match header.security {
            Security::Aes128Gcm | Security::ChaCha20Poly1305 => {
                let length = options.contains(Options::AUTHENTICATED_LENGTH).then(|| SealedLength {
                    key: aead(&kdf16(&header.body_key, &[LABEL_AUTH_LEN])),
                    iv: header.body_iv,
                    counter: 0,
                });
                Framing::Aead { key: aead(&key), iv, counter: 0, length }
            }
            Security::None if !options.contains(Options::CHUNK_STREAM) => Framing::Raw,
            Security::None if header.command.is_stream() => Framing::PlainStream,
            Security::None => Framing::PlainPacket,
        };
        let shake = masking.then(|| {
            let mut h = Shake128::default();
            h.update(&iv);
            h.finalize_xof()
        });
        let padding = padding && !matches!(framing, Framing::PlainStream | Framing::Raw);
        Ok(Codec { framing, shake, padding, stream: header.command.is_stream() })
    }

    fn next_shake(&mut self) -> u16 {
        let mut b = [0u8; 2];
        if let Some(s) = &mut self.shake {
            s.read(&mut b);
        }
        u16::from_be_bytes(b)
    }

    fn overhead(&self) -> usize {
        match self.framing {
            Framing::Aead { .. } => TAG_LEN,
            _ => 0,
        }
    }

    fn size_len(&self) -> usize {
        match &self.framing {
            Framing::Aead { length: Some(_), .. } => 2 + TAG_LEN,
            Framing::Raw => 0,
            _ => 2,
        }
    }

    fn next_padding(&mut self) -> usize {
        if self.padding {
            usize::from(self.next_shake() % 64)
        } else {
            0
        }
    }

    fn sealed_length(&mut self) -> Option<&mut SealedLength> {
        match &mut self.framing {
            Framing::Aead { length: Some(l), .. } => Some(l),
            _ => None,
        }
    }

    /// Appends the size field for a chunk of `size` bytes after it.
    fn encode_size(&mut self, size: usize, out: &mut Vec<u8>) {
        if let Some(l) = self.sealed_length() {
            let n = nonce(&mut l.counter, &l.iv);
            let at = out.len();
            out.extend_from_slice(&((size - TAG_LEN) as u16).to_be_bytes());
            out.extend_from_slice(&[0; TAG_LEN]);
            l.key.seal(&n, &[], &mut out[at..]);
            return;
        }
        let mask = if self.shake.is_some() { self.next_shake() } else { 0 };
        out.extend_from_slice(&(size as u16 ^ mask).to_be_bytes());
    }

    /// Reads a size field (`b` holds exactly [`Codec::size_len`] bytes, not modified).
    fn decode_size(&mut self, b: &[u8]) -> Result<usize, VmessError> {
        if let Some(l) = self.sealed_length() {
            let mut copy = [0u8; 2 + TAG_LEN];
            copy.copy_from_slice(b);
            // The counter moves only once the length opens, so a forged one changes nothing.
            let plain = l.key.open(&nonce_at(l.counter, &l.iv), &[], &mut copy)?;
            l.counter = l.counter.wrapping_add(1);
            return Ok(usize::from(u16::from_be_bytes([plain[0], plain[1]])) + TAG_LEN);
        }
        let mask = if self.shake.is_some() { self.next_shake() } else { 0 };
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]]) ^ mask))
    }
}

/// Seals one direction's body: the client's request body or the server's response body.
pub struct ChunkSealer {
    codec: Codec,
    /// Padding bytes go out in clear, so they come from their own stream, seeded by the caller.
    padding_bytes: Shake128Reader,
}

impl ChunkSealer {
    /// A sealer for `direction` of the connection `header` describes. `padding_seed` (32 random
    /// bytes) seeds the stream the clear-text padding bytes are drawn from.
    ///
    /// Fails with `BadOptions` for global padding without chunk masking.
    pub fn new(
        header: &RequestHeader,
        direction: Direction,
        padding_seed: [u8; 32],
    ) -> Result<ChunkSealer, VmessError> {
        let mut h = Shake128::default();
        h.update(&padding_seed);
        Ok(ChunkSealer { codec: Codec::new(header, direction)?, padding_bytes: h.finalize_xof() })
    }

    /// The most plaintext one chunk carries (Xray's limit: the whole chunk within 8192 bytes
    /// with the largest padding). Longer stream writes are split; a longer UDP packet is refused.
    pub fn max_payload(&self) -> usize {
        match self.codec.framing {
            Framing::PlainStream => XRAY_MAX_CHUNK,
            Framing::Raw => usize::MAX,
            _ => {
                let padding = if self.codec.padding { MAX_PADDING + 1 } else { 0 };
                XRAY_MAX_CHUNK - self.codec.size_len() - self.codec.overhead() - padding
            }
        }
    }

    /// Appends `plain` to `out` as chunks: one per UDP packet (or `PacketTooLarge`, appending
    /// nothing), as many as [`ChunkSealer::max_payload`] requires for a stream. Nothing is
    /// appended for an empty `plain` (an empty chunk would end the stream).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), VmessError> {
        if plain.is_empty() {
            return Ok(());
        }
        if let Framing::Raw = self.codec.framing {
            out.extend_from_slice(plain);
            return Ok(());
        }
        let max = self.max_payload();
        if !self.codec.stream && plain.len() > max {
            return Err(VmessError::PacketTooLarge(plain.len()));
        }
        for piece in plain.chunks(max) {
            self.seal_one(piece, out);
        }
        Ok(())
    }

    /// Appends the chunk that ends the stream (an empty payload); nothing without chunk stream.
    pub fn seal_end(&mut self, out: &mut Vec<u8>) {
        if !matches!(self.codec.framing, Framing::Raw) {
            self.seal_one(&[], out);
        }
    }

    fn seal_one(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        let padding = self.codec.next_padding();
        let size = plain.len() + self.codec.overhead() + padding;
        self.codec.encode_size(size, out);
        let at = out.len();
        out.extend_from_slice(plain);
        if let Framing::Aead { key, iv, counter, .. } = &mut self.codec.framing {
            out.extend_from_slice(&[0; TAG_LEN]);
            key.seal(&nonce(counter, iv), &[], &mut out[at..]);
        }
        if padding > 0 {
            let at = out.len();
            out.resize(at + padding, 0);
            self.padding_bytes.read(&mut out[at..]);
        }
    }
}

/// Opens one direction's body in place: the server's view of the request body or the client's
/// of the response body.
pub struct ChunkOpener {
    codec: Codec,
    /// The size and padding of a chunk whose size field was read but whose bytes were not all
    /// there yet (the size stream has moved on, so they are kept).
    pending: Option<(usize, usize)>,
    ended: bool,
}

impl ChunkOpener {
    /// An opener for `direction` of the connection `header` describes.
    ///
    /// Fails with `BadOptions` for global padding without chunk masking.
    pub fn new(header: &RequestHeader, direction: Direction) -> Result<ChunkOpener, VmessError> {
        Ok(ChunkOpener { codec: Codec::new(header, direction)?, pending: None, ended: false })
    }

    /// Opens the chunk at the front of `buf`, the bytes received so far.
    ///
    /// `UnexpectedEnd`: the chunk is not all there; read more and call again with the same bytes
    /// at the front (nothing was consumed). `Data`: the plaintext was decrypted in place.
    /// `End`: the stream is over; every later call says `End { consumed: 0 }`. Any error other
    /// than `UnexpectedEnd` is final for the connection.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Chunk, VmessError> {
        if self.ended {
            return Ok(Chunk::End { consumed: 0 });
        }
        if let Framing::Raw = self.codec.framing {
            if buf.is_empty() {
                return Err(VmessError::UnexpectedEnd);
            }
            return Ok(Chunk::Data { plain: 0..buf.len(), consumed: buf.len() });
        }
        let size_len = self.codec.size_len();
        let (size, padding) = match self.pending {
            Some(p) => p,
            None => {
                let field = buf.get(..size_len).ok_or(VmessError::UnexpectedEnd)?;
                let padding = self.codec.next_padding();
                let size = self.codec.decode_size(field)?;
                if size < self.codec.overhead() + padding {
                    return Err(VmessError::BadLength(size));
                }
                self.pending = Some((size, padding));
                (size, padding)
            }
        };
        let consumed = size_len + size;
        if buf.len() < consumed {
            return Err(VmessError::UnexpectedEnd);
        }
        self.pending = None;
        let sealed = size - padding;
        if sealed == self.codec.overhead() {
            self.ended = true;
            return Ok(Chunk::End { consumed });
        }
        let plain_len = match &mut self.codec.framing {
            Framing::Aead { key, iv, counter, .. } => {
                let n = nonce(counter, iv);
                key.open(&n, &[], &mut buf[size_len..size_len + sealed])?.len()
            }
            _ => sealed,
        };
        Ok(Chunk::Data { plain: size_len..size_len + plain_len, consumed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmess::header::Command;

    fn header(security: Security, options: u8, command: Command) -> RequestHeader {
        RequestHeader {
            body_iv: *b"0123456789abcdef",
            body_key: *b"fedcba9876543210",
            response_auth: 7,
            options: Options(options),
            security,
            command,
            destination: None,
        }
    }

    const STREAM: u8 = 0x01;
    const MASK: u8 = 0x04;
    const PAD: u8 = 0x08;
    const AUTH: u8 = 0x10;

    /// Every framing: (security, options, command).
    fn framings() -> Vec<(Security, u8, Command)> {
        let mut v = Vec::new();
        for security in [Security::Aes128Gcm, Security::ChaCha20Poly1305] {
            for options in [STREAM, STREAM | MASK, STREAM | MASK | PAD, STREAM | AUTH, STREAM | MASK | PAD | AUTH] {
                v.push((security, options, Command::Tcp));
            }
        }
        for options in [STREAM, STREAM | MASK, STREAM | MASK | PAD, 0] {
            for command in [Command::Tcp, Command::Udp] {
                v.push((Security::None, options, command));
            }
        }
        v
    }

    fn one_chunk(h: &RequestHeader, payload: &[u8]) -> Vec<u8> {
        let mut s = ChunkSealer::new(h, Direction::Request, [9; 32]).unwrap();
        let mut out = Vec::new();
        s.seal(payload, &mut out).unwrap();
        out
    }

    #[test]
    fn golden_chunks_laid_out_by_hand() {
        // Plain sizes, `none` with chunk stream over TCP: size ‖ payload; end = size 0
        // (Xray common/crypto/chunk.go ChunkStreamWriter).
        let h = header(Security::None, STREAM, Command::Tcp);
        let mut s = ChunkSealer::new(&h, Direction::Request, [0; 32]).unwrap();
        let mut out = Vec::new();
        s.seal(b"abc", &mut out).unwrap();
        s.seal_end(&mut out);
        assert_eq!(out, [0, 3, b'a', b'b', b'c', 0, 0]);

        // AES-128-GCM, plain size: size = 3 + 16, then GCM(body key, nonce 0000 ‖ IV[2..12]).
        let h = header(Security::Aes128Gcm, STREAM, Command::Tcp);
        let out = one_chunk(&h, b"abc");
        let mut expect = vec![0, 19, b'a', b'b', b'c'];
        expect.extend_from_slice(&[0; 16]);
        let mut nonce = [0u8; 12];
        nonce[2..].copy_from_slice(&h.body_iv[2..12]);
        AeadKey::new(Cipher::Aes128Gcm, &h.body_key).seal(&nonce, &[], &mut expect[2..]);
        assert_eq!(out, expect);

        // Masked: the size is XORed with the first two SHAKE128(IV) bytes.
        let h = header(Security::Aes128Gcm, STREAM | MASK, Command::Tcp);
        let mut shake = Shake128::default();
        shake.update(&h.body_iv);
        let mut mask = [0u8; 2];
        shake.finalize_xof().read(&mut mask);
        let out = one_chunk(&h, b"abc");
        assert_eq!([out[0] ^ mask[0], out[1] ^ mask[1]], [0, 19]);
        assert_eq!(out[2..], expect[2..]);
    }

    #[test]
    fn every_truncation_needs_more_and_consumes_nothing() {
        for (security, options, command) in framings() {
            if options & STREAM == 0 {
                continue;
            }
            let h = header(security, options, command);
            let mut s = ChunkSealer::new(&h, Direction::Response, [1; 32]).unwrap();
            let mut wire = Vec::new();
            s.seal(b"hello, world", &mut wire).unwrap();
            let first = wire.len();
            s.seal_end(&mut wire);
            for cut in 0..first {
                let mut o = ChunkOpener::new(&h, Direction::Response).unwrap();
                let mut short = wire[..cut].to_vec();
                assert_eq!(o.open(&mut short), Err(VmessError::UnexpectedEnd), "{security:?} {options} {cut}");
                assert_eq!(short, wire[..cut]);
                // Once more with the same opener, now with everything: it picks up where it was.
                let mut all = wire.clone();
                match o.open(&mut all).unwrap() {
                    Chunk::Data { plain, consumed } => {
                        assert_eq!(&all[plain], b"hello, world");
                        assert_eq!(consumed, first);
                        assert_eq!(o.open(&mut all[consumed..]), Ok(Chunk::End { consumed: wire.len() - first }));
                        assert_eq!(o.open(&mut []), Ok(Chunk::End { consumed: 0 }));
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn tampered_chunks_never_open_as_data() {
        for security in [Security::Aes128Gcm, Security::ChaCha20Poly1305] {
            for options in [STREAM, STREAM | MASK, STREAM | AUTH] {
                let h = header(security, options, Command::Tcp);
                let wire = one_chunk(&h, b"attack at dawn");
                for i in 0..wire.len() {
                    let mut bad = wire.clone();
                    bad[i] ^= 0x04;
                    let r = ChunkOpener::new(&h, Direction::Request).unwrap().open(&mut bad);
                    // An altered unauthenticated size may also make the chunk look like the end
                    // (Xray reads it so too); it never yields data.
                    assert!(!matches!(r, Ok(Chunk::Data { .. })), "{security:?} {options} byte {i}: {r:?}");
                }
                // The wrong direction's keys do not open it either.
                let r = ChunkOpener::new(&h, Direction::Response).unwrap().open(&mut wire.clone());
                assert!(r.is_err());
            }
        }
        // Global padding goes out in clear and unauthenticated (as in Xray): altering it is
        // not noticed, altering the payload is.
        let h = header(Security::Aes128Gcm, STREAM | MASK | PAD, Command::Tcp);
        let wire = one_chunk(&h, b"x");
        let sealed_end = 2 + 1 + TAG_LEN;
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x01;
            let r = ChunkOpener::new(&h, Direction::Request).unwrap().open(&mut bad);
            if i >= sealed_end {
                assert!(matches!(r, Ok(Chunk::Data { .. })), "padding byte {i}");
            } else {
                assert!(!matches!(r, Ok(Chunk::Data { .. })), "byte {i}: {r:?}");
            }
        }
    }

    #[test]
    fn global_padding_needs_masking() {
        for security in [Security::Aes128Gcm, Security::None] {
            let h = header(security, STREAM | PAD, Command::Tcp);
            assert_eq!(ChunkOpener::new(&h, Direction::Request).err(), Some(VmessError::BadOptions(STREAM | PAD)));
            assert_eq!(
                ChunkSealer::new(&h, Direction::Request, [0; 32]).err(),
                Some(VmessError::BadOptions(STREAM | PAD))
            );
        }
    }

    #[test]
    fn sizes_follow_xray_limits() {
        let h = header(Security::Aes128Gcm, STREAM | MASK | PAD | AUTH, Command::Udp);
        let mut s = ChunkSealer::new(&h, Direction::Request, [0; 32]).unwrap();
        assert_eq!(s.max_payload(), 8192 - 18 - 16 - 64);
        let mut out = Vec::new();
        assert_eq!(s.seal(&[0; 8095], &mut out), Err(VmessError::PacketTooLarge(8095)));
        assert!(out.is_empty());
        s.seal(&[0; 8094], &mut out).unwrap();
        assert!(out.len() <= XRAY_MAX_CHUNK);
        s.seal(&[], &mut out).unwrap(); // nothing: an empty chunk would end the stream
        assert!(out.len() <= XRAY_MAX_CHUNK);

        let h = header(Security::ChaCha20Poly1305, STREAM, Command::Tcp);
        let s = ChunkSealer::new(&h, Direction::Request, [0; 32]).unwrap();
        assert_eq!(s.max_payload(), 8192 - 2 - 16);
        let h = header(Security::None, STREAM | MASK, Command::Tcp);
        assert_eq!(ChunkSealer::new(&h, Direction::Request, [0; 32]).unwrap().max_payload(), 8192);
    }

    #[test]
    fn an_undersized_chunk_is_refused() {
        // A plain size smaller than the tag.
        let h = header(Security::Aes128Gcm, STREAM, Command::Tcp);
        let mut o = ChunkOpener::new(&h, Direction::Request).unwrap();
        assert_eq!(o.open(&mut [0, 15, 0, 0]), Err(VmessError::BadLength(15)));
        // The largest plain size is waited for, not refused: it fits MAX_WIRE_CHUNK.
        let mut o = ChunkOpener::new(&h, Direction::Request).unwrap();
        assert_eq!(o.open(&mut [0xff, 0xff, 0, 0]), Err(VmessError::UnexpectedEnd));
        const { assert!(2 + 0xffff <= MAX_WIRE_CHUNK) };
    }

    #[test]
    fn noise_never_panics() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for (security, options, command) in framings() {
            let h = header(security, options, command);
            for len in 0..300 {
                let mut buf: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let mut o = ChunkOpener::new(&h, Direction::Request).unwrap();
                let mut at = 0;
                while let Ok(Chunk::Data { consumed, .. }) = o.open(&mut buf[at..]) {
                    at += consumed;
                }
            }
        }
    }
}
