//! The AEAD ciphers the protocols use (AES-GCM, ChaCha20-Poly1305, XChaCha20-Poly1305), sealed
//! and opened in place so that a chunk costs no allocation.
//!
//! ring carries the hot ciphers (its AES-GCM and ChaCha20 are assembly); XChaCha20-Poly1305,
//! which ring lacks, comes from RustCrypto.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};

/// Every cipher here appends a 16-byte tag.
pub const TAG_LEN: usize = 16;

/// An AEAD algorithm by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// AES-128-GCM: 16-byte key, 12-byte nonce.
    Aes128Gcm,
    /// AES-256-GCM: 32-byte key, 12-byte nonce.
    Aes256Gcm,
    /// ChaCha20-Poly1305 (IETF): 32-byte key, 12-byte nonce.
    ChaCha20Poly1305,
    /// XChaCha20-Poly1305: 32-byte key, 24-byte nonce.
    XChaCha20Poly1305,
}

impl Cipher {
    /// The key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm | Cipher::ChaCha20Poly1305 | Cipher::XChaCha20Poly1305 => 32,
        }
    }

    /// The nonce length in bytes.
    pub fn nonce_len(self) -> usize {
        match self {
            Cipher::XChaCha20Poly1305 => 24,
            _ => 12,
        }
    }
}

/// The tag did not verify: wrong key, wrong nonce, or altered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError;

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("authentication failed")
    }
}

impl std::error::Error for OpenError {}

/// A key ready to seal and open; build it once per session direction.
pub struct AeadKey {
    inner: Inner,
}

// The ring key is held inline: it is the hot one, and a session holds one per direction.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Ring(LessSafeKey),
    XChaCha(Box<chacha20poly1305::XChaCha20Poly1305>),
}

impl AeadKey {
    /// Builds a key. Panics if `key` is not `cipher.key_len()` bytes: every caller derives keys of
    /// the right length, so a mismatch is a bug, not input.
    pub fn new(cipher: Cipher, key: &[u8]) -> AeadKey {
        assert_eq!(key.len(), cipher.key_len(), "{cipher:?} key length");
        let ring_alg = match cipher {
            Cipher::Aes128Gcm => &ring::aead::AES_128_GCM,
            Cipher::Aes256Gcm => &ring::aead::AES_256_GCM,
            Cipher::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
            Cipher::XChaCha20Poly1305 => {
                let key = chacha20poly1305::XChaCha20Poly1305::new_from_slice(key).expect("checked length");
                return AeadKey { inner: Inner::XChaCha(Box::new(key)) };
            }
        };
        let key = UnboundKey::new(ring_alg, key).expect("checked length");
        AeadKey { inner: Inner::Ring(LessSafeKey::new(key)) }
    }

    /// Encrypts `buf[..len - TAG_LEN]` in place and writes the tag into its last `TAG_LEN` bytes.
    /// Panics if `buf` is shorter than a tag or `nonce` has the wrong length (caller bugs).
    pub fn seal(&self, nonce: &[u8], aad: &[u8], buf: &mut [u8]) {
        let split = buf.len() - TAG_LEN;
        let (data, tag_out) = buf.split_at_mut(split);
        match &self.inner {
            Inner::Ring(key) => {
                let nonce = Nonce::try_assume_unique_for_key(nonce).expect("12-byte nonce");
                let tag = key.seal_in_place_separate_tag(nonce, Aad::from(aad), data).expect("chunk within limits");
                tag_out.copy_from_slice(tag.as_ref());
            }
            Inner::XChaCha(key) => {
                let tag = key.encrypt_in_place_detached(nonce.into(), aad, data).expect("chunk within limits");
                tag_out.copy_from_slice(&tag);
            }
        }
    }

    /// Decrypts `buf` (ciphertext then tag) in place and returns the plaintext part of it.
    pub fn open<'a>(&self, nonce: &[u8], aad: &[u8], buf: &'a mut [u8]) -> Result<&'a mut [u8], OpenError> {
        if buf.len() < TAG_LEN {
            return Err(OpenError);
        }
        match &self.inner {
            Inner::Ring(key) => {
                let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError)?;
                key.open_in_place(nonce, Aad::from(aad), buf).map_err(|_| OpenError)
            }
            Inner::XChaCha(key) => {
                if nonce.len() != 24 {
                    return Err(OpenError);
                }
                let split = buf.len() - TAG_LEN;
                let (data, tag) = buf.split_at_mut(split);
                key.decrypt_in_place_detached(nonce.into(), aad, data, (&*tag).into()).map_err(|_| OpenError)?;
                Ok(data)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn aes_128_gcm_matches_the_nist_vector() {
        // NIST GCM test case 3 (gcm-spec, AES-128, 96-bit IV, no AAD).
        let key = AeadKey::new(Cipher::Aes128Gcm, &hex("feffe9928665731c6d6a8f9467308308"));
        let nonce = hex("cafebabefacedbaddecaf888");
        let plain = hex(concat!(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72",
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
        ));
        let mut buf = plain.clone();
        buf.extend_from_slice(&[0; TAG_LEN]);
        key.seal(&nonce, &[], &mut buf);
        assert_eq!(
            buf,
            hex(concat!(
                "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e",
                "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
                "4d5c2af327cd64a62cf35abd2ba6fab4"
            ))
        );
        assert_eq!(key.open(&nonce, &[], &mut buf).unwrap(), &plain[..]);
    }

    #[test]
    fn every_cipher_round_trips_and_rejects_tampering() {
        for cipher in [Cipher::Aes128Gcm, Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305, Cipher::XChaCha20Poly1305] {
            let key = AeadKey::new(cipher, &vec![7u8; cipher.key_len()]);
            let nonce = vec![1u8; cipher.nonce_len()];
            let mut buf = b"hello, chunk".to_vec();
            buf.extend_from_slice(&[0; TAG_LEN]);
            key.seal(&nonce, b"aad", &mut buf);
            let mut copy = buf.clone();
            assert_eq!(key.open(&nonce, b"aad", &mut copy).unwrap(), b"hello, chunk", "{cipher:?}");
            let mut bad = buf.clone();
            bad[0] ^= 1;
            assert_eq!(key.open(&nonce, b"aad", &mut bad), Err(OpenError), "{cipher:?}");
            let mut copy = buf.clone();
            assert_eq!(key.open(&nonce, b"other", &mut copy), Err(OpenError), "{cipher:?}");
            assert_eq!(key.open(&nonce, b"aad", &mut [0u8; 3]), Err(OpenError));
        }
    }
}
