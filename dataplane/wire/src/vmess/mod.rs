//! VMess (AEAD form, alterId 0) as Xray and V2Ray speak it; no IO, no clock, no randomness of its
//! own: time and random bytes are arguments.
//!
//! A connection opens with a 16-byte auth ID ([`auth_id`]), then the sealed request header
//! ([`header`]); the server answers with a sealed response header; each direction then carries
//! a stream of chunks ([`body`]).
//!
//! Server, for a buffer `buf` holding what has arrived:
//! 1. [`peek_auth_id`] once 16 bytes are there; [`find_user`] over the users' [`AuthIdKey`]s with
//!    the shared [`ReplayFilter`] (done once per connection, not per retry).
//! 2. [`RequestOpener::open`] with that user's [`UserKey`] until it stops saying `UnexpectedEnd`;
//!    it returns the [`RequestHeader`] and how many bytes it used.
//! 3. [`ResponseHeader::seal`] into the output, then [`ChunkOpener::new`] for the request body
//!    and [`ChunkSealer::new`] for the response body.
//!
//! Client: [`RequestHeader::seal`], [`ChunkSealer`] for the request, [`ResponseHeader::open`]
//! and [`ChunkOpener`] for the response. [`SecurityConfig::resolve`] turns the configured
//! `security` into the header's security and options as Xray's outbound does.

pub mod auth_id;
pub mod body;
pub mod header;
pub mod kdf;
pub mod replay;

pub use auth_id::{find_user, peek_auth_id, AuthIdKey, UserKey};
pub use body::{Chunk, ChunkOpener, ChunkSealer, Direction};
pub use header::{
    Command, Options, RequestHeader, RequestOpener, ResponseHeader, SealRandom, Security, SecurityConfig,
};
pub use replay::ReplayFilter;

use crate::DecodeError;

/// Why VMess input was refused. `UnexpectedEnd` alone is recoverable: read more and call again
/// with the same buffer (nothing was consumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmessError {
    /// The buffer ends before the header or chunk does.
    UnexpectedEnd,
    /// No user's key makes the auth ID's CRC hold.
    UnknownUser,
    /// The auth ID's timestamp (carried here) is too far from the server's clock.
    BadTimestamp(u64),
    /// This auth ID was accepted before.
    Replayed,
    /// A sealed length (request or response header, or chunk) does not fit the protocol's bound.
    BadLength(usize),
    /// An AEAD tag did not verify: wrong key or altered bytes.
    BadTag,
    /// The request header's FNV-1a checksum does not match.
    BadChecksum,
    /// The request header's version is not 1.
    BadVersion(u8),
    /// The security nibble is not one a server accepts (3, 4 or 5).
    BadSecurity(u8),
    /// The command is not TCP (1), UDP (2) or mux (3).
    BadCommand(u8),
    /// The address type byte is unknown.
    BadAddressType(u8),
    /// A domain name is empty or not UTF-8.
    BadDomain,
    /// The options ask for global padding without chunk masking, which Xray refuses.
    BadOptions(u8),
    /// The response header does not echo the request's response auth byte.
    BadResponseAuth(u8),
    /// A UDP packet is too large for one chunk (it would be dropped, as Xray drops it).
    PacketTooLarge(usize),
}

impl std::fmt::Display for VmessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmessError::UnexpectedEnd => f.write_str("truncated"),
            VmessError::UnknownUser => f.write_str("no user matches the auth ID"),
            VmessError::BadTimestamp(t) => write!(f, "auth ID timestamp {t} outside the clock window"),
            VmessError::Replayed => f.write_str("replayed auth ID"),
            VmessError::BadLength(n) => write!(f, "length {n} out of bounds"),
            VmessError::BadTag => f.write_str("authentication failed"),
            VmessError::BadChecksum => f.write_str("header checksum mismatch"),
            VmessError::BadVersion(v) => write!(f, "unknown version {v}"),
            VmessError::BadSecurity(s) => write!(f, "unsupported security {s}"),
            VmessError::BadCommand(c) => write!(f, "unsupported command {c}"),
            VmessError::BadAddressType(t) => write!(f, "unknown address type {t}"),
            VmessError::BadDomain => f.write_str("invalid domain name"),
            VmessError::BadOptions(o) => write!(f, "invalid options {o:#04x}"),
            VmessError::BadResponseAuth(b) => write!(f, "unexpected response auth byte {b}"),
            VmessError::PacketTooLarge(n) => write!(f, "packet of {n} bytes too large for a chunk"),
        }
    }
}

impl std::error::Error for VmessError {}

impl From<DecodeError> for VmessError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::UnexpectedEnd => VmessError::UnexpectedEnd,
            DecodeError::BadAddressType(t) => VmessError::BadAddressType(t),
            DecodeError::BadVersion(v) => VmessError::BadVersion(v),
            DecodeError::BadCommand(c) => VmessError::BadCommand(c),
            DecodeError::BadDomain | DecodeError::BadAddons => VmessError::BadDomain,
        }
    }
}

impl From<crate::aead::OpenError> for VmessError {
    fn from(_: crate::aead::OpenError) -> Self {
        VmessError::BadTag
    }
}

/// Whether an account with this `alterId` uses the legacy (MD5, pre-AEAD) handshake: any value
/// above zero does. Xray removed that handshake; the config layer refuses such accounts.
pub fn is_legacy_alter_id(alter_id: u32) -> bool {
    alter_id > 0
}
