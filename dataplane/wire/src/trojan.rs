//! Decodes and encodes Trojan requests and Trojan UDP frames; no IO.
//!
//! Request: the user key (56 lowercase hex digits of SHA-224(password)), CRLF, a command byte
//! (1 CONNECT, 3 UDP ASSOCIATE), an address with SOCKS5 numbering (1 IPv4, 3 domain, 4 IPv6),
//! a big-endian port, CRLF, then the payload. There is no response header.
//!
//! After UDP ASSOCIATE the stream carries frames `[addr][port][len u16][CRLF][payload]` both ways.
//!
//! A Trojan server usually shares its port with a fallback (a web server). The decoders here
//! therefore look at the bytes received so far and say `NotTrojan` as soon as one byte proves the
//! stream is something else (a non-hex byte among the first 56, no CRLF after them), so the
//! caller can hand every byte it holds to the fallback without waiting for more.
//!
//! Server flow: `Request::peek_key` on the first bytes (need more, not Trojan, or the key to look
//! up); unknown key: fallback; known key: `Request::decode`, then relay the rest of the buffer.

use sha2::{Digest, Sha224};

use crate::addr::{Destination, SOCKS_TYPES};
use crate::{take, take_u16, take_u8, DecodeError};

/// The length of the hex user key.
pub const KEY_LEN: usize = 56;

/// The largest UDP payload one frame may carry; larger frames are refused, as Xray refuses them.
pub const MAX_UDP_PAYLOAD: usize = 8192;

/// The longest possible request header: key, CRLF, command, a 255-byte domain with its type
/// and length bytes, port, CRLF.
pub const MAX_HEADER_LEN: usize = KEY_LEN + 2 + 1 + 1 + 1 + 255 + 2 + 2;

const CRLF: [u8; 2] = *b"\r\n";

/// Why a Trojan decoder rejected its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrojanError {
    /// The buffer ends too early: read more and try again (nothing was consumed).
    UnexpectedEnd,
    /// The bytes cannot be the start of a Trojan request: give them to the fallback.
    NotTrojan,
    /// The command byte is neither CONNECT (1) nor UDP ASSOCIATE (3).
    BadCommand(u8),
    /// The address type byte is unknown.
    BadAddressType(u8),
    /// A domain name is empty or not valid UTF-8.
    BadDomain,
    /// The CRLF after the address (or after a UDP frame's length) is missing.
    MissingCrlf,
    /// A UDP frame announces more than [`MAX_UDP_PAYLOAD`] bytes.
    Oversize(u16),
}

impl std::fmt::Display for TrojanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrojanError::UnexpectedEnd => f.write_str("trojan header truncated"),
            TrojanError::NotTrojan => f.write_str("not a trojan request"),
            TrojanError::BadCommand(c) => write!(f, "unsupported trojan command {c}"),
            TrojanError::BadAddressType(t) => write!(f, "unknown address type {t}"),
            TrojanError::BadDomain => f.write_str("invalid domain name"),
            TrojanError::MissingCrlf => f.write_str("missing CRLF"),
            TrojanError::Oversize(n) => write!(f, "UDP frame of {n} bytes is too large"),
        }
    }
}

impl std::error::Error for TrojanError {}

/// For the shared address decoder, which returns only `UnexpectedEnd`, `BadAddressType` and
/// `BadDomain`; the other variants are mapped for completeness.
impl From<DecodeError> for TrojanError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::UnexpectedEnd => TrojanError::UnexpectedEnd,
            DecodeError::BadAddressType(t) => TrojanError::BadAddressType(t),
            DecodeError::BadCommand(c) => TrojanError::BadCommand(c),
            DecodeError::BadDomain | DecodeError::BadVersion(_) | DecodeError::BadAddons => TrojanError::BadDomain,
        }
    }
}

/// The user key for a password: the lowercase hex of its SHA-224, as it appears on the wire.
pub fn password_key(password: &str) -> [u8; KEY_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha224::digest(password.as_bytes());
    let mut key = [0u8; KEY_LEN];
    for (pair, byte) in key.chunks_exact_mut(2).zip(digest.iter()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    key
}

/// What the client asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Open a TCP stream to the destination (1).
    Connect,
    /// Carry UDP frames; the destination names the first one's target (3).
    UdpAssociate,
}

impl Command {
    /// The command byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Command::Connect => 1,
            Command::UdpAssociate => 3,
        }
    }
}

/// A decoded Trojan request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The user key (see [`password_key`]).
    pub key: [u8; KEY_LEN],
    /// The command.
    pub command: Command,
    /// Where to go.
    pub destination: Destination,
}

/// Checks the key and its CRLF as far as `buf` goes; `NotTrojan` on the first byte that cannot fit.
fn check_prefix(buf: &[u8]) -> Result<(), TrojanError> {
    let seen = &buf[..buf.len().min(KEY_LEN + 2)];
    for (i, &b) in seen.iter().enumerate() {
        let ok = match i {
            KEY_LEN => b == b'\r',
            i if i == KEY_LEN + 1 => b == b'\n',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        };
        if !ok {
            return Err(TrojanError::NotTrojan);
        }
    }
    Ok(())
}

impl Request {
    /// Reads the user key once its 56 bytes are there, so the caller can look the user up (and
    /// fall back for an unknown one) before the rest of the header arrives.
    ///
    /// `NotTrojan` as soon as any byte received so far rules Trojan out, even before 56 are in;
    /// `UnexpectedEnd` while the bytes so far could still be a key.
    pub fn peek_key(buf: &[u8]) -> Result<&[u8; KEY_LEN], TrojanError> {
        check_prefix(buf)?;
        match buf.get(..KEY_LEN) {
            Some(key) => Ok(key.try_into().expect("took 56 bytes")),
            None => Err(TrojanError::UnexpectedEnd),
        }
    }

    /// Decodes a header from the front of `buf`, advancing it past the header (and its final
    /// CRLF) on success; the payload follows. On any error `buf` is left as it was.
    pub fn decode(buf: &mut &[u8]) -> Result<Request, TrojanError> {
        check_prefix(buf)?;
        let mut cur = *buf;
        let key: [u8; KEY_LEN] = take(&mut cur, KEY_LEN)?.try_into().expect("took 56 bytes");
        take(&mut cur, 2)?; // checked by check_prefix
        let command = match take_u8(&mut cur)? {
            1 => Command::Connect,
            3 => Command::UdpAssociate,
            other => return Err(TrojanError::BadCommand(other)),
        };
        let addr = SOCKS_TYPES.decode_addr(&mut cur)?;
        let port = take_u16(&mut cur)?;
        if take(&mut cur, 2)? != CRLF {
            return Err(TrojanError::MissingCrlf);
        }
        *buf = cur;
        Ok(Request { key, command, destination: Destination { addr, port } })
    }

    /// Appends the encoded header to `out`; the payload may follow at once (Trojan has no
    /// response to wait for).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&CRLF);
        out.push(self.command.to_u8());
        SOCKS_TYPES.encode_addr(&self.destination.addr, out);
        out.extend_from_slice(&self.destination.port.to_be_bytes());
        out.extend_from_slice(&CRLF);
    }
}

// === UDP frames ===

/// One decoded UDP frame: its peer and its payload, borrowed from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFrame<'a> {
    /// The target (client to server) or the source (server to client) of the datagram.
    pub destination: Destination,
    /// The datagram.
    pub payload: &'a [u8],
}

impl<'a> UdpFrame<'a> {
    /// Decodes one whole frame from the front of `buf`, advancing past it on success.
    ///
    /// `UnexpectedEnd` until the whole payload is there (nothing consumed): a caller whose buffer
    /// holds at least [`MAX_UDP_PAYLOAD`] plus 263 bytes always makes progress.
    pub fn decode(buf: &mut &'a [u8]) -> Result<UdpFrame<'a>, TrojanError> {
        let mut cur = *buf;
        let addr = SOCKS_TYPES.decode_addr(&mut cur)?;
        let port = take_u16(&mut cur)?;
        let len = take_u16(&mut cur)?;
        if usize::from(len) > MAX_UDP_PAYLOAD {
            return Err(TrojanError::Oversize(len));
        }
        if take(&mut cur, 2)? != CRLF {
            return Err(TrojanError::MissingCrlf);
        }
        let payload = take(&mut cur, usize::from(len))?;
        *buf = cur;
        Ok(UdpFrame { destination: Destination { addr, port }, payload })
    }

    /// Appends a frame header for a payload of `len` bytes; the caller appends the payload.
    /// Fails with `Oversize` (writing nothing) above [`MAX_UDP_PAYLOAD`].
    pub fn encode_header(destination: &Destination, len: usize, out: &mut Vec<u8>) -> Result<(), TrojanError> {
        if len > MAX_UDP_PAYLOAD {
            return Err(TrojanError::Oversize(u16::try_from(len).unwrap_or(u16::MAX)));
        }
        SOCKS_TYPES.encode_addr(&destination.addr, out);
        out.extend_from_slice(&destination.port.to_be_bytes());
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&CRLF);
        Ok(())
    }

    /// Appends the whole frame (header and payload).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), TrojanError> {
        UdpFrame::encode_header(&self.destination, self.payload.len(), out)?;
        out.extend_from_slice(self.payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Address;

    fn sample(command: Command, addr: Address) -> Request {
        Request { key: password_key("password"), command, destination: Destination { addr, port: 443 } }
    }

    fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    #[test]
    fn key_is_hex_sha224() {
        // FIPS 180-2 appendix: SHA-224("abc").
        assert_eq!(&password_key("abc"), b"23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7");
        assert_eq!(&password_key(""), b"d14a028c2a3a2bc9476102bb288234c415a2b01f828ea62ac5b3e42f");
    }

    #[test]
    fn golden_bytes() {
        // Laid out by hand from the Trojan protocol document: key, CRLF, CONNECT, domain, port, CRLF.
        let mut expected = b"d63dc919e201d7bc4c825630d2cf25fdc93d4b2f0d46706d29038d01\r\n".to_vec();
        expected.extend_from_slice(&[1, 3, 11]);
        expected.extend_from_slice(b"example.com");
        expected.extend_from_slice(&[0x01, 0xbb, b'\r', b'\n']);
        let mut out = Vec::new();
        sample(Command::Connect, Address::Domain("example.com".into())).encode(&mut out);
        assert_eq!(out, expected);

        // UDP ASSOCIATE to 10.0.0.1:53.
        let mut out = Vec::new();
        let mut req = sample(Command::UdpAssociate, Address::Ip("10.0.0.1".parse().unwrap()));
        req.destination.port = 53;
        req.encode(&mut out);
        assert_eq!(&out[KEY_LEN..], &[b'\r', b'\n', 3, 1, 10, 0, 0, 1, 0, 53, b'\r', b'\n']);
    }

    #[test]
    fn round_trip_and_truncation() {
        for command in [Command::Connect, Command::UdpAssociate] {
            for addr in [
                Address::Ip("10.1.2.3".parse().unwrap()),
                Address::Ip("2001:db8::1".parse().unwrap()),
                Address::Domain("example.com".into()),
            ] {
                let req = sample(command, addr);
                let mut out = Vec::new();
                req.encode(&mut out);
                let header_len = out.len();
                assert!(header_len <= MAX_HEADER_LEN);
                out.extend_from_slice(b"payload");
                let mut cur = &out[..];
                assert_eq!(Request::peek_key(cur), Ok(&req.key));
                assert_eq!(Request::decode(&mut cur), Ok(req.clone()));
                assert_eq!(cur, b"payload");
                for cut in 0..header_len {
                    let mut short = &out[..cut];
                    assert_eq!(Request::decode(&mut short), Err(TrojanError::UnexpectedEnd), "cut {cut}");
                    assert_eq!(short.len(), cut);
                    let peeked = Request::peek_key(&out[..cut]);
                    if cut < KEY_LEN {
                        assert_eq!(peeked, Err(TrojanError::UnexpectedEnd));
                    } else {
                        assert_eq!(peeked, Ok(&req.key));
                    }
                }
            }
        }
    }

    #[test]
    fn http_and_tls_are_rejected_at_the_first_byte() {
        for first in [&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], b"POST", b"\x16\x03\x01\x02\x00", b"PRI * HTTP/2.0"] {
            for cut in 1..=first.len() {
                assert_eq!(Request::peek_key(&first[..cut]), Err(TrojanError::NotTrojan));
                assert_eq!(Request::decode(&mut &first[..cut]), Err(TrojanError::NotTrojan));
            }
        }
        // Hex-looking start, then a byte that is not hex.
        assert_eq!(Request::peek_key(b"deadbeef"), Err(TrojanError::UnexpectedEnd));
        assert_eq!(Request::peek_key(b"deadbeef "), Err(TrojanError::NotTrojan));
        // Upper-case hex never matches a key, so it is not Trojan either.
        assert_eq!(Request::peek_key(b"DEAD"), Err(TrojanError::NotTrojan));
        // 56 hex digits but no CRLF after them.
        let mut bytes = password_key("x").to_vec();
        bytes.push(b'0');
        assert_eq!(Request::peek_key(&bytes), Err(TrojanError::NotTrojan));
        bytes[KEY_LEN] = b'\r';
        bytes.push(b'\r');
        assert_eq!(Request::peek_key(&bytes), Err(TrojanError::NotTrojan));
    }

    #[test]
    fn rejects_bad_fields() {
        let mut out = Vec::new();
        sample(Command::Connect, Address::Ip("10.1.2.3".parse().unwrap())).encode(&mut out);
        let mut bad = out.clone();
        bad[58] = 2; // BIND is not a Trojan command
        assert_eq!(Request::decode(&mut &bad[..]), Err(TrojanError::BadCommand(2)));
        let mut bad = out.clone();
        bad[59] = 2; // address type 2 is VLESS numbering, not SOCKS
        assert_eq!(Request::decode(&mut &bad[..]), Err(TrojanError::BadAddressType(2)));
        let mut bad = out.clone();
        let last = bad.len() - 1;
        bad[last] = b'x';
        assert_eq!(Request::decode(&mut &bad[..]), Err(TrojanError::MissingCrlf));
        let mut domain =
            b"d63dc919e201d7bc4c825630d2cf25fdc93d4b2f0d46706d29038d01\r\n\x01\x03\x00\x00\x50\r\n".to_vec();
        assert_eq!(Request::decode(&mut &domain[..]), Err(TrojanError::BadDomain));
        domain[60] = 1; // a one-byte name that is not UTF-8
        domain.insert(61, 0xff);
        assert_eq!(Request::decode(&mut &domain[..]), Err(TrojanError::BadDomain));
    }

    #[test]
    fn udp_frames() {
        // Laid out by hand: IPv4 8.8.8.8, port 53, length 3, CRLF, payload.
        let golden = [1, 8, 8, 8, 8, 0, 53, 0, 3, b'\r', b'\n', b'a', b'b', b'c'];
        let frame = UdpFrame {
            destination: Destination { addr: Address::Ip("8.8.8.8".parse().unwrap()), port: 53 },
            payload: b"abc",
        };
        let mut out = Vec::new();
        frame.encode(&mut out).unwrap();
        assert_eq!(out, golden);
        // Two frames back to back, the second to a domain.
        let second = UdpFrame {
            destination: Destination { addr: Address::Domain("dns.google".into()), port: 853 },
            payload: b"",
        };
        second.encode(&mut out).unwrap();
        let mut cur = &out[..];
        assert_eq!(UdpFrame::decode(&mut cur), Ok(frame.clone()));
        assert_eq!(UdpFrame::decode(&mut cur), Ok(second));
        assert!(cur.is_empty());
        for cut in 0..golden.len() {
            let mut short = &golden[..cut];
            assert_eq!(UdpFrame::decode(&mut short), Err(TrojanError::UnexpectedEnd), "cut {cut}");
            assert_eq!(short.len(), cut);
        }
        let mut bad = golden;
        bad[9] = b'x';
        assert_eq!(UdpFrame::decode(&mut &bad[..]), Err(TrojanError::MissingCrlf));
        let oversize = [1, 8, 8, 8, 8, 0, 53, 0x20, 0x01];
        assert_eq!(UdpFrame::decode(&mut &oversize[..]), Err(TrojanError::Oversize(8193)));
        let mut out = Vec::new();
        let big = vec![0u8; MAX_UDP_PAYLOAD + 1];
        let frame = UdpFrame { payload: &big, ..frame };
        assert_eq!(frame.encode(&mut out), Err(TrojanError::Oversize(8193)));
        assert!(out.is_empty());
    }

    #[test]
    fn never_panics_on_noise() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let key = password_key("password");
        for round in 0..3000 {
            let len = (seed % 400) as usize;
            let mut bytes = noise(&mut seed, len);
            if round % 2 == 0 && bytes.len() >= 58 {
                // Get past the key most of the time, to exercise the rest.
                bytes[..KEY_LEN].copy_from_slice(&key);
                bytes[KEY_LEN..KEY_LEN + 2].copy_from_slice(b"\r\n");
            }
            let _ = Request::peek_key(&bytes);
            let _ = Request::decode(&mut &bytes[..]);
            let _ = UdpFrame::decode(&mut &bytes[..]);
        }
    }
}
