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
//! `security` into the header's security and options as Xray's outbound does
//! ([`has_aes_gcm_hardware`] decides `auto`).

pub mod auth_id;
pub mod body;
pub mod header;
pub mod kdf;
pub mod replay;

pub use auth_id::{find_user, peek_auth_id, AuthIdKey, UserKey};
pub use body::{Chunk, ChunkOpener, ChunkSealer, Direction};
pub use header::{
    has_aes_gcm_hardware, Command, Options, RequestHeader, RequestOpener, ResponseHeader, SealRandom, Security,
    SecurityConfig,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Address, Destination};

    /// Feeds `wire` to `opener` `step` bytes at a time, as reads would, and collects the chunks.
    /// Returns them and whether the end chunk came.
    fn drain(opener: &mut ChunkOpener, wire: &[u8], step: usize) -> (Vec<Vec<u8>>, bool) {
        let (mut rx, mut fed, mut chunks) = (Vec::new(), 0, Vec::new());
        loop {
            match opener.open(&mut rx) {
                Ok(Chunk::Data { plain, consumed }) => {
                    chunks.push(rx[plain].to_vec());
                    rx.drain(..consumed);
                }
                Ok(Chunk::End { consumed }) => {
                    rx.drain(..consumed);
                    assert!(rx.is_empty() && fed == wire.len(), "bytes after the end chunk");
                    return (chunks, true);
                }
                Err(VmessError::UnexpectedEnd) if fed < wire.len() => {
                    let n = step.min(wire.len() - fed);
                    rx.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
                Err(VmessError::UnexpectedEnd) => return (chunks, false),
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// Client seals, server opens, server answers, client opens: header, response and body.
    fn full_exchange(security: Security, options: Options, command: Command) {
        let now = 1_750_000_000;
        let users: Vec<UserKey> = (0..8u8).map(|i| UserKey::new(&uuid::Uuid::from_bytes([i; 16]))).collect();
        let me = &users[5];
        let request = RequestHeader {
            body_iv: [options.0; 16],
            body_key: [security.nibble() ^ 0x5a; 16],
            response_auth: 0x99,
            options,
            security,
            command,
            destination: (command != Command::Mux)
                .then(|| Destination { addr: Address::parse("example.org").unwrap(), port: 53 }),
        };
        let stream = command.is_stream();
        let payloads: Vec<Vec<u8>> = if stream {
            vec![b"first".to_vec(), bytes(1, 1), bytes(3000, 2), bytes(20_000, 3)]
        } else {
            vec![b"first".to_vec(), bytes(1, 1), bytes(1200, 2), bytes(8000, 3)]
        };
        let case = format!("{security:?} {:#04x} {command:?}", options.0);

        // Client: header and request body.
        let mut wire = Vec::new();
        let random = SealRandom { auth_id: *b"rand", nonce: *b"conn-nce", padding_len: 9, padding: [7; 15] };
        request.seal(me, now, &random, &mut wire);
        let sealer = ChunkSealer::new(&request, Direction::Request, [1; 32]);
        if options.contains(Options::GLOBAL_PADDING) && !options.contains(Options::CHUNK_MASKING) {
            // Refused at both ends: the server's header decoder and the body codecs.
            assert_eq!(sealer.err(), Some(VmessError::BadOptions(options.0)), "{case}");
            assert_eq!(RequestOpener::new(me).open(&mut wire), Err(VmessError::BadOptions(options.0)), "{case}");
            return;
        }
        let mut sealer = sealer.unwrap();
        let mut packets = 0;
        for p in &payloads {
            sealer.seal(p, &mut wire).unwrap();
            packets += 1;
        }
        sealer.seal_end(&mut wire);

        // Server: user, header, request body.
        let mut filter = ReplayFilter::new();
        let id = peek_auth_id(&wire).unwrap();
        let found = find_user(users.iter().map(|u| (u.auth_id(), u)), &id, now + 30, &mut filter).unwrap();
        let mut opener = RequestOpener::new(found);
        let mut rx = Vec::new();
        let (got, used) = loop {
            match opener.open(&mut rx) {
                Err(VmessError::UnexpectedEnd) => {
                    let n = 13.min(wire.len() - rx.len());
                    rx.extend_from_slice(&wire[rx.len()..rx.len() + n]);
                }
                other => break other.unwrap(),
            }
        };
        assert_eq!(got, request, "{case}");
        let mut body = ChunkOpener::new(&got, Direction::Request).unwrap();
        let (chunks, ended) = drain(&mut body, &wire[used..], 997);
        let raw = !options.contains(Options::CHUNK_STREAM) && security == Security::None;
        assert_eq!(ended, !raw, "{case}");
        assert_eq!(chunks.concat(), payloads.concat(), "{case}");
        if !stream && !raw {
            assert_eq!(chunks.len(), packets, "{case}: one chunk per packet");
            assert_eq!(chunks, payloads, "{case}");
        }

        // Server: response header and body.
        let mut back = Vec::new();
        ResponseHeader::for_request(&got).seal(&got, &mut back);
        let mut sealer = ChunkSealer::new(&got, Direction::Response, [2; 32]).unwrap();
        for p in payloads.iter().rev() {
            sealer.seal(p, &mut back).unwrap();
        }
        sealer.seal_end(&mut back);

        // Client: response header and body.
        let (resp, used) = ResponseHeader::open(&mut back, &request).unwrap();
        assert_eq!(resp.response_auth, 0x99);
        let mut body = ChunkOpener::new(&request, Direction::Response).unwrap();
        let (chunks, ended) = drain(&mut body, &back[used..], 1499);
        assert_eq!(ended, !raw, "{case}");
        let expected: Vec<u8> = payloads.iter().rev().flatten().copied().collect();
        assert_eq!(chunks.concat(), expected, "{case}");

        // The same first packet again within the window is refused.
        assert_eq!(
            find_user(users.iter().map(|u| (u.auth_id(), u)), &id, now + 100, &mut filter).map(|_| ()),
            Err(VmessError::Replayed)
        );
    }

    #[test]
    fn every_security_option_and_command_round_trips() {
        for security in [Security::Aes128Gcm, Security::ChaCha20Poly1305, Security::None] {
            for bits in 0..16u8 {
                // Bits 0, 2, 3, 4: chunk stream, masking, padding, authenticated length.
                let options = Options((bits & 1) | (bits & 0b1110) << 1);
                for command in [Command::Tcp, Command::Udp, Command::Mux] {
                    full_exchange(security, options, command);
                }
            }
        }
    }

    #[test]
    fn configured_securities_round_trip() {
        for config in [
            SecurityConfig::Auto,
            SecurityConfig::Aes128Gcm,
            SecurityConfig::ChaCha20Poly1305,
            SecurityConfig::None,
            SecurityConfig::Zero,
        ] {
            for auth_len in [false, true] {
                let (security, options) = config.resolve(header::has_aes_gcm_hardware(), auth_len);
                full_exchange(security, options, Command::Tcp);
                full_exchange(security, options, Command::Udp);
            }
        }
    }

    #[test]
    fn alter_id_above_zero_is_legacy() {
        assert!(!is_legacy_alter_id(0));
        assert!(is_legacy_alter_id(1));
        assert!(is_legacy_alter_id(64));
    }
}
