//! The chunk stream both editions share: `[sealed u16 BE length][sealed payload]`, each sealed
//! piece carrying a 16-byte tag, the nonce a little-endian counter from zero that advances after
//! every seal or open in one direction.
//!
//! [`ChunkSealer`] appends framed chunks to a caller-owned `Vec<u8>` (no allocation once it has
//! capacity); [`ChunkOpener`] opens chunks in place in the caller's receive buffer.

use std::ops::Range;

use super::{Error, Method};
use crate::aead::{AeadKey, TAG_LEN};

/// Bytes of one sealed length: the u16 and its tag.
pub const LENGTH_CHUNK_LEN: usize = 2 + TAG_LEN;

/// A little-endian nonce counter of 12 or 24 bytes.
#[derive(Clone, Copy)]
pub(crate) struct NonceCounter {
    bytes: [u8; 24],
    len: usize,
}

impl NonceCounter {
    pub(crate) fn new(len: usize) -> NonceCounter {
        NonceCounter { bytes: [0; 24], len }
    }

    pub(crate) fn get(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub(crate) fn increment(&mut self) {
        for b in &mut self.bytes[..self.len] {
            *b = b.wrapping_add(1);
            if *b != 0 {
                break;
            }
        }
    }
}

/// Seals one direction of a session.
pub struct ChunkSealer {
    key: AeadKey,
    nonce: NonceCounter,
    max_payload: usize,
}

impl ChunkSealer {
    /// A sealer for `method` under a session subkey, nonce at zero.
    pub fn new(method: Method, subkey: &[u8]) -> ChunkSealer {
        let cipher = method.cipher();
        ChunkSealer {
            key: AeadKey::new(cipher, subkey),
            nonce: NonceCounter::new(cipher.nonce_len()),
            max_payload: method.max_payload(),
        }
    }

    /// The largest payload one chunk carries (0x3FFF classic, 0xFFFF 2022).
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Appends `plain` to `out` as framed chunks, split at the maximum payload. An empty `plain`
    /// appends nothing.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        for piece in plain.chunks(self.max_payload) {
            let start = self.begin_chunk(out);
            out.extend_from_slice(piece);
            self.finish_chunk(out, start);
        }
    }

    /// The bytes `seal` appends for `n` bytes of plaintext.
    pub fn sealed_len(&self, n: usize) -> usize {
        n + n.div_ceil(self.max_payload) * (LENGTH_CHUNK_LEN + TAG_LEN)
    }

    /// Reserves room for a length chunk; the caller then appends up to `max_payload` bytes of
    /// plaintext and calls `finish_chunk` with the returned offset.
    pub(crate) fn begin_chunk(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.resize(start + LENGTH_CHUNK_LEN, 0);
        start
    }

    /// Seals the length and the plaintext appended since `begin_chunk`.
    pub(crate) fn finish_chunk(&mut self, out: &mut Vec<u8>, start: usize) {
        let n = out.len() - start - LENGTH_CHUNK_LEN;
        debug_assert!(n <= self.max_payload);
        out[start..start + 2].copy_from_slice(&(n as u16).to_be_bytes());
        self.seal_piece(&mut out[start..start + LENGTH_CHUNK_LEN]);
        let body = out.len();
        out.resize(body + TAG_LEN, 0);
        self.seal_piece(&mut out[body - n..]);
    }

    /// Seals `buf` (plaintext then `TAG_LEN` spare bytes) in place with the next nonce.
    pub(crate) fn seal_piece(&mut self, buf: &mut [u8]) {
        self.key.seal(self.nonce.get(), &[], buf);
        self.nonce.increment();
    }
}

/// What `ChunkOpener::open` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The next chunk is not complete yet: read more and call again with the same buffer start.
    /// `needed` is how many bytes the chunk takes in all, once that is known.
    NeedMore {
        /// The total bytes the next chunk needs from the buffer start, if its length is known.
        needed: Option<usize>,
    },
    /// A chunk was opened in place.
    Chunk {
        /// Where the plaintext lies in the buffer.
        plain: Range<usize>,
        /// How many bytes from the buffer start the chunk took; drop them before the next call.
        consumed: usize,
    },
}

/// Opens one direction of a session.
pub struct ChunkOpener {
    key: AeadKey,
    nonce: NonceCounter,
    max_payload: usize,
    /// The length of the next payload once its length chunk has been opened (or a 2022 header
    /// announced it), and whether the length chunk is still at the buffer start.
    pending: Option<Pending>,
}

#[derive(Clone, Copy)]
struct Pending {
    len: usize,
    /// The opened length chunk is still in the caller's buffer, before the payload.
    in_buffer: bool,
}

impl ChunkOpener {
    /// An opener for `method` under a session subkey, nonce at zero.
    pub fn new(method: Method, subkey: &[u8]) -> ChunkOpener {
        let cipher = method.cipher();
        ChunkOpener {
            key: AeadKey::new(cipher, subkey),
            nonce: NonceCounter::new(cipher.nonce_len()),
            max_payload: method.max_payload(),
            pending: None,
        }
    }

    /// Opens the next chunk at the start of `buf` in place.
    ///
    /// The caller passes the bytes received and not yet consumed, always starting where the
    /// last `Chunk` ended. On `NeedMore` the buffer is untouched; call again once more has
    /// arrived. Errors are final for the stream.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Opened, Error> {
        let pending = match self.pending {
            Some(p) => p,
            None => {
                if buf.len() < LENGTH_CHUNK_LEN {
                    return Ok(Opened::NeedMore { needed: None });
                }
                // Open a copy so that a short payload leaves the caller's bytes as they were.
                let mut len_chunk = [0u8; LENGTH_CHUNK_LEN];
                len_chunk.copy_from_slice(&buf[..LENGTH_CHUNK_LEN]);
                let len = self.open_piece(&mut len_chunk)?;
                let len = u16::from_be_bytes([len[0], len[1]]);
                if usize::from(len) > self.max_payload {
                    return Err(Error::ChunkTooLong(len));
                }
                let p = Pending { len: len.into(), in_buffer: true };
                self.pending = Some(p);
                p
            }
        };
        let skip = if pending.in_buffer { LENGTH_CHUNK_LEN } else { 0 };
        let needed = skip + pending.len + TAG_LEN;
        if buf.len() < needed {
            return Ok(Opened::NeedMore { needed: Some(needed) });
        }
        self.open_piece(&mut buf[skip..needed])?;
        self.pending = None;
        Ok(Opened::Chunk { plain: skip..skip + pending.len, consumed: needed })
    }

    /// Opens `buf` (ciphertext then tag) in place with the next nonce.
    pub(crate) fn open_piece<'a>(&mut self, buf: &'a mut [u8]) -> Result<&'a mut [u8], Error> {
        let plain = self.key.open(self.nonce.get(), &[], buf).map_err(|_| Error::Auth)?;
        self.nonce.increment();
        Ok(plain)
    }

    /// Announces the next payload's length without a length chunk in the buffer (the 2022
    /// response header carries it).
    pub(crate) fn expect_payload(&mut self, len: usize) {
        self.pending = Some(Pending { len, in_buffer: false });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_counts_little_endian() {
        let mut n = NonceCounter::new(12);
        n.increment();
        assert_eq!(n.get()[..2], [1, 0]);
        for _ in 0..255 {
            n.increment();
        }
        assert_eq!(n.get()[..3], [0, 1, 0]);
        let mut full = NonceCounter { bytes: [0xff; 24], len: 12 };
        full.increment();
        assert_eq!(full.get(), &[0u8; 12]);
        assert_eq!(full.bytes[12], 0xff);
    }

    #[test]
    fn chunks_round_trip_split_and_resume() {
        for method in Method::ALL {
            let key = vec![9u8; method.key_len()];
            let mut sealer = ChunkSealer::new(method, &key);
            let mut opener = ChunkOpener::new(method, &key);
            let data: Vec<u8> = (0..method.max_payload() * 2 + 5).map(|i| i as u8).collect();
            let mut wire = Vec::new();
            sealer.seal(&data, &mut wire);
            sealer.seal(b"tail", &mut wire);
            sealer.seal(b"", &mut wire);
            assert_eq!(wire.len(), sealer.sealed_len(data.len()) + sealer.sealed_len(4));
            // Feed one growing prefix at a time, the way a socket might.
            let mut got = Vec::new();
            let mut start = 0;
            let mut end = 0;
            while start < wire.len() {
                end = (end + 7001).min(wire.len());
                loop {
                    match opener.open(&mut wire[start..end]).unwrap() {
                        Opened::NeedMore { .. } => break,
                        Opened::Chunk { plain, consumed } => {
                            got.extend_from_slice(&wire[start + plain.start..start + plain.end]);
                            start += consumed;
                        }
                    }
                }
            }
            assert_eq!(&got[..data.len()], &data[..], "{method}");
            assert_eq!(&got[data.len()..], b"tail");
        }
    }

    #[test]
    fn every_truncation_is_need_more_and_leaves_the_buffer() {
        let key = [5u8; 16];
        let mut sealer = ChunkSealer::new(Method::Aes128Gcm, &key);
        let mut wire = Vec::new();
        sealer.seal(b"0123456789", &mut wire);
        let mut opener = ChunkOpener::new(Method::Aes128Gcm, &key);
        for cut in 0..wire.len() {
            let mut short = wire[..cut].to_vec();
            let needed = if cut < LENGTH_CHUNK_LEN { None } else { Some(wire.len()) };
            assert_eq!(opener.open(&mut short), Ok(Opened::NeedMore { needed }), "{cut}");
            assert_eq!(short, wire[..cut]);
        }
        assert_eq!(opener.open(&mut wire), Ok(Opened::Chunk { plain: 18..28, consumed: wire.len() }));
        assert_eq!(&wire[18..28], b"0123456789");
    }

    #[test]
    fn noise_never_panics() {
        let mut state = 0x1234_5678_9abc_def1u64;
        for method in Method::ALL {
            let mut opener = ChunkOpener::new(method, &vec![1u8; method.key_len()]);
            for len in 0..200 {
                let mut noise: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                let _ = opener.open(&mut noise);
            }
        }
    }

    #[test]
    fn sealing_reuses_capacity() {
        let key = [1u8; 16];
        let mut sealer = ChunkSealer::new(Method::Aes128Gcm, &key);
        let mut out = Vec::with_capacity(4096);
        let ptr = out.as_ptr();
        for _ in 0..100 {
            out.clear();
            sealer.seal(&[7u8; 1000], &mut out);
        }
        assert_eq!(out.as_ptr(), ptr);
    }

    #[test]
    fn tampering_and_oversize_are_rejected() {
        let key = [3u8; 32];
        let mut sealer = ChunkSealer::new(Method::ChaCha20Poly1305, &key);
        let mut wire = Vec::new();
        sealer.seal(b"hello", &mut wire);
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x40;
            let mut opener = ChunkOpener::new(Method::ChaCha20Poly1305, &key);
            assert_eq!(opener.open(&mut bad), Err(Error::Auth), "byte {i}");
        }
        // A classic length chunk announcing 0x4000 bytes, sealed with a 2022 sealer.
        let mut big = ChunkSealer::new(Method::Blake3ChaCha20Poly1305, &key);
        let mut wire = Vec::new();
        big.seal(&vec![0u8; 0x4000], &mut wire);
        let mut opener = ChunkOpener::new(Method::ChaCha20Poly1305, &key);
        assert_eq!(opener.open(&mut wire), Err(Error::ChunkTooLong(0x4000)));
    }
}
