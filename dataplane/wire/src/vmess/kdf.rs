//! VMess key material: the per-user command key, the nested-HMAC KDF of the AEAD header, the
//! labels fed to it, and the small hash-based derivations of the body ciphers.

use std::sync::LazyLock;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use uuid::Uuid;

/// The salt appended to the UUID bytes before hashing them into the command key.
pub const CMD_KEY_SALT: &[u8] = b"c48619fe-8f02-49e0-b9e9-edf763e17e21";

/// The root key of the KDF: the innermost HMAC-SHA256 is keyed with it.
pub const KDF_ROOT: &[u8] = b"VMess AEAD KDF";
/// Label of the key that encrypts the auth ID block.
pub const LABEL_AUTH_ID_KEY: &[u8] = b"AES Auth ID Encryption";
/// Label of the key that seals the request header's length.
pub const LABEL_HEADER_LEN_KEY: &[u8] = b"VMess Header AEAD Key_Length";
/// Label of the nonce that seals the request header's length.
pub const LABEL_HEADER_LEN_NONCE: &[u8] = b"VMess Header AEAD Nonce_Length";
/// Label of the key that seals the request header.
pub const LABEL_HEADER_KEY: &[u8] = b"VMess Header AEAD Key";
/// Label of the nonce that seals the request header.
pub const LABEL_HEADER_NONCE: &[u8] = b"VMess Header AEAD Nonce";
/// Label of the key that seals the response header's length.
pub const LABEL_RESP_LEN_KEY: &[u8] = b"AEAD Resp Header Len Key";
/// Label of the nonce that seals the response header's length.
pub const LABEL_RESP_LEN_NONCE: &[u8] = b"AEAD Resp Header Len IV";
/// Label of the key that seals the response header.
pub const LABEL_RESP_KEY: &[u8] = b"AEAD Resp Header Key";
/// Label of the nonce that seals the response header.
pub const LABEL_RESP_NONCE: &[u8] = b"AEAD Resp Header IV";
/// Label of the key that seals chunk lengths under the authenticated-length option.
pub const LABEL_AUTH_LEN: &[u8] = b"auth_len";

/// The most path elements [`kdf`] accepts (VMess uses three at most).
pub const MAX_PATH: usize = 6;

/// SHA-256's block size, the HMAC key width at every level.
const BLOCK: usize = 64;

/// The command key of a user: MD5 over the 16 UUID bytes followed by [`CMD_KEY_SALT`].
pub fn cmd_key(id: &Uuid) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(id.as_bytes());
    h.update(CMD_KEY_SALT);
    h.finalize().into()
}

/// The VMess AEAD KDF: HMAC-SHA256 keyed with [`KDF_ROOT`] is the hash function of an HMAC keyed
/// with `path[0]`, which is the hash function of one keyed with `path[1]`, and so on; the
/// outermost one digests `key`.
///
/// Panics if `path` has more than [`MAX_PATH`] elements or one is longer than 64 bytes; every
/// caller passes fixed labels, auth IDs (16 bytes) and nonces (8 bytes).
pub fn kdf(key: &[u8], path: &[&[u8]]) -> [u8; 32] {
    assert!(path.len() <= MAX_PATH, "KDF path too long");
    nested(path, &[key])
}

/// The first 16 bytes of [`kdf`], the form every AES-128 key takes.
pub fn kdf16(key: &[u8], path: &[&[u8]]) -> [u8; 16] {
    first16(&kdf(key, path))
}

/// The first 12 bytes of [`kdf`], the form every AEAD nonce takes.
pub fn kdf12(key: &[u8], path: &[&[u8]]) -> [u8; 12] {
    kdf(key, path)[..12].try_into().expect("12 of 32 bytes")
}

/// The ChaCha20-Poly1305 key made from a 16-byte body key: MD5 of the key, then MD5 of that.
pub fn chacha_key(key: &[u8; 16]) -> [u8; 32] {
    let first: [u8; 16] = Md5::digest(key).into();
    let second: [u8; 16] = Md5::digest(first).into();
    let mut out = [0; 32];
    out[..16].copy_from_slice(&first);
    out[16..].copy_from_slice(&second);
    out
}

/// The first 16 bytes of SHA-256 of `b`: how the response body key and IV come from the request's.
pub fn sha256_16(b: &[u8; 16]) -> [u8; 16] {
    first16(&Sha256::digest(b).into())
}

fn first16(b: &[u8; 32]) -> [u8; 16] {
    b[..16].try_into().expect("16 of 32 bytes")
}

/// The hash at the level named by the last element of `path`, over the concatenation of `msg`.
fn nested(path: &[&[u8]], msg: &[&[u8]]) -> [u8; 32] {
    let Some((label, parent)) = path.split_last() else {
        // Every KDF ends in 2^depth HMACs under the same root key: key it once and clone the
        // keyed state (the inner and outer pad blocks already absorbed), saving two SHA-256
        // compressions per call.
        static ROOT: LazyLock<Hmac<Sha256>> =
            LazyLock::new(|| Hmac::<Sha256>::new_from_slice(KDF_ROOT).expect("HMAC takes any key length"));
        let mut mac = ROOT.clone();
        for part in msg {
            mac.update(part);
        }
        return mac.finalize().into_bytes().into();
    };
    assert!(label.len() <= BLOCK, "KDF label longer than a block");
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for (i, b) in label.iter().enumerate() {
        ipad[i] ^= b;
        opad[i] ^= b;
    }
    // The message grows by one part (the pad) per level on the way down.
    let mut parts: [&[u8]; MAX_PATH + 2] = [&[]; MAX_PATH + 2];
    parts[0] = &ipad;
    parts[1..=msg.len()].copy_from_slice(msg);
    let inner = nested(parent, &parts[..=msg.len()]);
    nested(parent, &[&opad, &inner])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn kdf_matches_the_v2fly_vector() {
        // v2fly/v2ray-core proxy/vmess/aead/kdf_test.go, TestKDFValue.
        let got = kdf(
            b"Demo Key for KDF Value Test",
            &[b"Demo Path for KDF Value Test", b"Demo Path for KDF Value Test2", b"Demo Path for KDF Value Test3"],
        );
        assert_eq!(got.to_vec(), hex("53e9d7e1bd7bd25022b71ead07d8a596efc8a845c7888652fd684b4903dc8892"));
        assert_eq!(
            kdf16(b"Demo Key for KDF Value Test", &[b"x"]).to_vec(),
            kdf(b"Demo Key for KDF Value Test", &[b"x"])[..16].to_vec()
        );
    }

    #[test]
    fn kdf_without_a_path_is_plain_hmac() {
        let mut mac = Hmac::<Sha256>::new_from_slice(KDF_ROOT).unwrap();
        mac.update(b"key");
        let want = mac.finalize().into_bytes().to_vec();
        // Twice: the cached root key is cloned, never consumed.
        assert_eq!(kdf(b"key", &[]).to_vec(), want);
        assert_eq!(kdf(b"key", &[]).to_vec(), want);
    }

    #[test]
    fn kdf_one_level_is_hmac_over_the_root_hmac() {
        // HMAC with H = HMAC-SHA256(KDF_ROOT, .), written out by hand (RFC 2104).
        let h = |m: &[u8]| {
            let mut mac = Hmac::<Sha256>::new_from_slice(KDF_ROOT).unwrap();
            mac.update(m);
            mac.finalize().into_bytes().to_vec()
        };
        let label = LABEL_AUTH_ID_KEY;
        let mut k = [0u8; 64];
        k[..label.len()].copy_from_slice(label);
        let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        inner.extend_from_slice(b"cmd key");
        let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        outer.extend_from_slice(&h(&inner));
        assert_eq!(kdf(b"cmd key", &[label]).to_vec(), h(&outer));
    }

    #[test]
    fn cmd_key_and_chacha_key_match_independent_md5s() {
        // MD5 of the UUID bytes and the salt (Xray common/protocol/id.go); computed with Python's
        // hashlib for this UUID.
        let id = Uuid::parse_str("450bae28-b9da-67d0-16bc-4918dc8d79b5").unwrap();
        assert_eq!(cmd_key(&id).to_vec(), hex("da8b7df4396329ebe7a74afc62a9e7c8"));
        let key: [u8; 16] = hex("96b727f438a60a07ca1f554ec689862e").try_into().unwrap();
        assert_eq!(chacha_key(&key).to_vec(), hex("80c2c504eca628a44855d24e6a9478841d87e34a09027344ebf659d22fb2b88b"));
    }
}
