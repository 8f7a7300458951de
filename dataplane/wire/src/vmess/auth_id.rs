//! The auth ID, the first 16 bytes of a VMess AEAD connection: one AES-128 block holding a
//! timestamp, four random bytes and a CRC32 of both, under a key derived from the user's
//! command key. The server finds the user by trying each user's key until the CRC holds.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;

use super::kdf::{cmd_key, kdf16, LABEL_AUTH_ID_KEY};
use super::replay::ReplayFilter;
use super::VmessError;

/// How far (seconds) an auth ID's timestamp may be from the server's clock, either way.
pub const MAX_CLOCK_SKEW: u64 = 120;

/// A user's keys, derived once when the user is added: the command key (which keys the request
/// header) and the expanded AES key that encrypts and checks auth IDs.
#[derive(Clone)]
pub struct UserKey {
    cmd_key: [u8; 16],
    auth: AuthIdKey,
}

impl UserKey {
    /// Derives both keys from the user's UUID.
    pub fn new(id: &uuid::Uuid) -> UserKey {
        UserKey::from_cmd_key(cmd_key(id))
    }

    /// Builds the keys from an already computed command key.
    pub fn from_cmd_key(cmd_key: [u8; 16]) -> UserKey {
        UserKey { cmd_key, auth: AuthIdKey::new(&cmd_key) }
    }

    /// The command key: MD5 of the UUID and the fixed salt.
    pub fn cmd_key(&self) -> &[u8; 16] {
        &self.cmd_key
    }

    /// The auth ID key.
    pub fn auth_id(&self) -> &AuthIdKey {
        &self.auth
    }
}

impl std::fmt::Debug for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserKey(..)")
    }
}

/// One user's auth ID cipher (AES-128 keyed with KDF16(command key, "AES Auth ID Encryption")),
/// expanded once so that checking an auth ID costs one block decryption and one CRC.
#[derive(Clone)]
pub struct AuthIdKey {
    aes: Aes128,
}

impl AuthIdKey {
    /// Derives the key from a user's command key.
    pub fn new(cmd_key: &[u8; 16]) -> AuthIdKey {
        let key = kdf16(cmd_key, &[LABEL_AUTH_ID_KEY]);
        AuthIdKey { aes: Aes128::new(&key.into()) }
    }

    /// Builds an auth ID (client side): timestamp (u64 BE), `random`, and the CRC32 of those 12
    /// bytes, encrypted as one block.
    pub fn encode(&self, timestamp: u64, random: [u8; 4]) -> [u8; 16] {
        let mut block = [0u8; 16];
        block[..8].copy_from_slice(&timestamp.to_be_bytes());
        block[8..12].copy_from_slice(&random);
        let crc = crc32fast::hash(&block[..12]);
        block[12..].copy_from_slice(&crc.to_be_bytes());
        let mut b = block.into();
        self.aes.encrypt_block(&mut b);
        b.into()
    }

    /// Decrypts `auth_id` with this user's key and returns its timestamp if the CRC holds, that
    /// is if the auth ID was made with this key. The clock is not checked here.
    pub fn check(&self, auth_id: &[u8; 16]) -> Option<u64> {
        let mut b = (*auth_id).into();
        self.aes.decrypt_block(&mut b);
        let block: [u8; 16] = b.into();
        let crc = u32::from_be_bytes(block[12..].try_into().expect("4 bytes"));
        if crc != crc32fast::hash(&block[..12]) {
            return None;
        }
        Some(u64::from_be_bytes(block[..8].try_into().expect("8 bytes")))
    }
}

impl std::fmt::Debug for AuthIdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthIdKey(..)")
    }
}

/// The auth ID at the front of a connection, once 16 bytes are there.
pub fn peek_auth_id(buf: &[u8]) -> Result<[u8; 16], VmessError> {
    buf.get(..16).map(|b| b.try_into().expect("16 bytes")).ok_or(VmessError::UnexpectedEnd)
}

/// Fails with `BadTimestamp` unless `timestamp` is within [`MAX_CLOCK_SKEW`] of `now`. A timestamp
/// with the top bit set (negative as Xray reads it) is refused too.
pub fn check_timestamp(timestamp: u64, now: u64) -> Result<(), VmessError> {
    if timestamp > i64::MAX as u64 || timestamp.abs_diff(now) > MAX_CLOCK_SKEW {
        return Err(VmessError::BadTimestamp(timestamp));
    }
    Ok(())
}

/// The server's user lookup, done the way Xray does it: the first user whose key makes the CRC
/// hold owns the connection; then the timestamp must be within the window of `now`, and the auth
/// ID must not have been seen (it is recorded in `filter`). Returns that user's item.
///
/// Errors: `UnknownUser` when no key matches, `BadTimestamp`, `Replayed`.
pub fn find_user<'a, T>(
    users: impl IntoIterator<Item = (&'a AuthIdKey, T)>,
    auth_id: &[u8; 16],
    now: u64,
    filter: &mut ReplayFilter,
) -> Result<T, VmessError> {
    for (key, item) in users {
        if let Some(ts) = key.check(auth_id) {
            check_timestamp(ts, now)?;
            filter.insert(auth_id, ts, now)?;
            return Ok(item);
        }
    }
    Err(VmessError::UnknownUser)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> AuthIdKey {
        AuthIdKey::new(&[n; 16])
    }

    #[test]
    fn encodes_and_checks() {
        let k = key(1);
        let id = k.encode(1_700_000_000, [1, 2, 3, 4]);
        assert_eq!(k.check(&id), Some(1_700_000_000));
        assert_eq!(key(2).check(&id), None);
        let mut bad = id;
        bad[5] ^= 1;
        assert_eq!(k.check(&bad), None);
    }

    #[test]
    fn timestamp_window() {
        assert!(check_timestamp(1000, 1120).is_ok());
        assert!(check_timestamp(1120, 1000).is_ok());
        assert_eq!(check_timestamp(1000, 1121), Err(VmessError::BadTimestamp(1000)));
        assert_eq!(check_timestamp(1121, 1000), Err(VmessError::BadTimestamp(1121)));
        assert!(check_timestamp(u64::MAX, u64::MAX).is_err());
    }

    #[test]
    fn finds_the_right_user_among_many() {
        let keys: Vec<AuthIdKey> = (0..50).map(key).collect();
        let mut filter = ReplayFilter::new();
        let id = keys[37].encode(5000, [9; 4]);
        let users = keys.iter().enumerate().map(|(i, k)| (k, i));
        assert_eq!(find_user(users.clone(), &id, 5000, &mut filter), Ok(37));
        assert_eq!(find_user(users.clone(), &id, 5001, &mut filter), Err(VmessError::Replayed));
        let stale = keys[3].encode(5000, [9; 4]);
        assert_eq!(find_user(users.clone(), &stale, 5200, &mut filter), Err(VmessError::BadTimestamp(5000)));
        let stranger = key(200).encode(5000, [9; 4]);
        assert_eq!(find_user(users, &stranger, 5000, &mut filter), Err(VmessError::UnknownUser));
    }

    #[test]
    fn a_hundred_thousand_fresh_handshakes_are_all_accepted() {
        // Each item: one auth ID encoded, checked against its user (one block each way, a CRC),
        // and recorded in the replay filter, with the clock advancing 1 s every 1000 handshakes.
        let keys: Vec<AuthIdKey> = (0..16).map(key).collect();
        let mut filter = ReplayFilter::new();
        let start = 1_700_000_000u64;
        for i in 0..100_000u32 {
            let now = start + u64::from(i / 1000);
            let user = (i % 16) as usize;
            // Client clocks skewed by up to ±100 s.
            let skew = (i % 201) as i64 - 100;
            let id = keys[user].encode(now.wrapping_add_signed(skew), i.to_be_bytes());
            let ts = keys[user].check(&id).expect("own key");
            check_timestamp(ts, now).unwrap();
            filter.insert(&id, ts, now).unwrap_or_else(|e| panic!("handshake {i} refused: {e}"));
        }
        assert!(filter.len() <= 100_000);
    }
}
