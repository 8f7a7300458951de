//! Decodes and encodes SOCKS5 (RFC 1928, with RFC 1929 username/password) and SOCKS4/4a
//! handshakes, server and client side, and the SOCKS5 UDP request header; no IO.
//!
//! Server flow, as Xray's socks inbound runs it:
//! 1. [`Greeting::decode`] on the first bytes. A first byte other than 4 or 5 is `BadVersion`:
//!    Xray's socks inbound then hands the connection (first byte included) to its HTTP proxy.
//! 2. SOCKS4/4a ([`Greeting::Socks4`]): when the inbound requires a password, answer
//!    `socks4_reply(false)` and close (SOCKS4 carries no password); otherwise answer
//!    `socks4_reply(true)` and relay. A SOCKS4 request that fails to decode for any other reason
//!    than `UnexpectedEnd` (BIND included) is answered `socks4_reply(false)`.
//! 3. SOCKS5 ([`Greeting::Socks5`]): send `method_reply(select_method(methods, password_required))`;
//!    on [`method::NO_ACCEPTABLE`] close. With a password: [`Credentials::decode`], check it, send
//!    [`auth_reply`], close on failure.
//! 4. [`Request::decode`]: on `UnsupportedCommand` (BIND, unknown) send
//!    `failure_reply(reply::COMMAND_NOT_SUPPORTED)` (see [`SocksError::reply_code`]); UDP ASSOCIATE
//!    with UDP disabled gets the same. Otherwise [`encode_reply`] with [`reply::SUCCEEDED`] and
//!    the bound address (Xray: the inbound's listen address for CONNECT, the UDP socket's address
//!    for UDP ASSOCIATE), then relay what follows.
//!
//! Client flow: [`encode_greeting`], [`decode_method_reply`], then [`Credentials::encode`] and
//! [`decode_auth_reply`] if the server chose [`method::PASSWORD`], then [`Request::encode`] and
//! [`decode_reply`].
//!
//! Every decoder reads from the front of `&mut &[u8]`, advances it only on success, and returns
//! `UnexpectedEnd` (nothing consumed) while the message is incomplete.

use std::net::{IpAddr, Ipv4Addr};

use crate::addr::{Address, Destination, SOCKS_TYPES};
use crate::{take, take_u16, take_u8, DecodeError};

/// The SOCKS5 version byte.
pub const VERSION5: u8 = 5;
/// The SOCKS4 version byte.
pub const VERSION4: u8 = 4;
/// The version byte of the RFC 1929 username/password sub-negotiation.
pub const AUTH_VERSION: u8 = 1;

/// The longest SOCKS4 user id or SOCKS4a domain accepted, without its terminating NUL.
pub const MAX_SOCKS4_FIELD: usize = 255;

/// SOCKS5 authentication methods (RFC 1928 section 3).
pub mod method {
    /// No authentication.
    pub const NO_AUTH: u8 = 0x00;
    /// GSSAPI (not supported here).
    pub const GSSAPI: u8 = 0x01;
    /// Username/password (RFC 1929).
    pub const PASSWORD: u8 = 0x02;
    /// The server accepts none of the offered methods.
    pub const NO_ACCEPTABLE: u8 = 0xff;
}

/// SOCKS5 reply codes (RFC 1928 section 6).
pub mod reply {
    /// Succeeded.
    pub const SUCCEEDED: u8 = 0x00;
    /// General SOCKS server failure.
    pub const GENERAL_FAILURE: u8 = 0x01;
    /// Connection not allowed by ruleset.
    pub const NOT_ALLOWED: u8 = 0x02;
    /// Network unreachable.
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    /// Host unreachable.
    pub const HOST_UNREACHABLE: u8 = 0x04;
    /// Connection refused.
    pub const CONNECTION_REFUSED: u8 = 0x05;
    /// TTL expired.
    pub const TTL_EXPIRED: u8 = 0x06;
    /// Command not supported.
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    /// Address type not supported.
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

/// SOCKS4 reply code: request granted.
pub const SOCKS4_GRANTED: u8 = 90;
/// SOCKS4 reply code: request rejected or failed.
pub const SOCKS4_REJECTED: u8 = 91;

/// Why a SOCKS decoder or encoder rejected its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocksError {
    /// The buffer ends too early: read more and try again (nothing was consumed).
    UnexpectedEnd,
    /// The version byte is neither 4 nor 5 (or not the one this message needs).
    BadVersion(u8),
    /// The username/password sub-negotiation version is not 1.
    BadAuthVersion(u8),
    /// BIND, or a command byte SOCKS does not define.
    UnsupportedCommand(u8),
    /// The address type byte is unknown, or the address cannot be carried (IPv6 in SOCKS4).
    BadAddressType(u8),
    /// A domain name is empty or not valid.
    BadDomain,
    /// A SOCKS4 user id or domain runs past [`MAX_SOCKS4_FIELD`], or a username or password to
    /// encode is longer than 255 bytes.
    TooLong,
    /// A UDP request with a non-zero FRAG byte: fragments are dropped.
    Fragmented(u8),
    /// The server answered with a failure code (method, auth or request reply, client side).
    Rejected(u8),
}

impl SocksError {
    /// The SOCKS5 reply code a server sends for this request error, if it sends one.
    pub fn reply_code(self) -> Option<u8> {
        match self {
            SocksError::UnsupportedCommand(_) => Some(reply::COMMAND_NOT_SUPPORTED),
            SocksError::BadAddressType(_) => Some(reply::ADDRESS_TYPE_NOT_SUPPORTED),
            _ => None,
        }
    }
}

impl std::fmt::Display for SocksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocksError::UnexpectedEnd => f.write_str("socks message truncated"),
            SocksError::BadVersion(v) => write!(f, "unknown socks version {v}"),
            SocksError::BadAuthVersion(v) => write!(f, "unknown socks auth version {v}"),
            SocksError::UnsupportedCommand(c) => write!(f, "unsupported socks command {c}"),
            SocksError::BadAddressType(t) => write!(f, "unsupported address type {t}"),
            SocksError::BadDomain => f.write_str("invalid domain name"),
            SocksError::TooLong => f.write_str("socks field too long"),
            SocksError::Fragmented(n) => write!(f, "fragmented UDP request ({n})"),
            SocksError::Rejected(c) => write!(f, "socks server refused with code {c}"),
        }
    }
}

impl std::error::Error for SocksError {}

/// For the shared address decoder, which returns only `UnexpectedEnd`, `BadAddressType` and
/// `BadDomain`; the other variants are mapped for completeness.
impl From<DecodeError> for SocksError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::UnexpectedEnd => SocksError::UnexpectedEnd,
            DecodeError::BadAddressType(t) => SocksError::BadAddressType(t),
            DecodeError::BadVersion(v) => SocksError::BadVersion(v),
            DecodeError::BadCommand(c) => SocksError::UnsupportedCommand(c),
            DecodeError::BadDomain | DecodeError::BadAddons => SocksError::BadDomain,
        }
    }
}

// === Server side: greeting and authentication ===

/// The first message of a SOCKS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting<'a> {
    /// A SOCKS5 method offer: the methods the client can do.
    Socks5 {
        /// The offered method bytes, in the client's order (may be empty).
        methods: &'a [u8],
    },
    /// A whole SOCKS4 or SOCKS4a CONNECT request.
    Socks4(Socks4Request),
}

impl<'a> Greeting<'a> {
    /// Decodes the first message: `VER NMETHODS METHODS` for SOCKS5, or a SOCKS4 request.
    pub fn decode(buf: &mut &'a [u8]) -> Result<Greeting<'a>, SocksError> {
        let mut cur = *buf;
        let greeting = match take_u8(&mut cur)? {
            VERSION5 => {
                let n = take_u8(&mut cur)?;
                Greeting::Socks5 { methods: take(&mut cur, usize::from(n))? }
            }
            VERSION4 => Greeting::Socks4(Socks4Request::decode_after_version(&mut cur)?),
            other => return Err(SocksError::BadVersion(other)),
        };
        *buf = cur;
        Ok(greeting)
    }
}

/// The method a server picks, as Xray picks it: username/password when the inbound has
/// accounts, no authentication otherwise, and [`method::NO_ACCEPTABLE`] when the client did not
/// offer that one method (a client offering only "no auth" to a password server is refused).
pub fn select_method(methods: &[u8], password_required: bool) -> u8 {
    let wanted = if password_required { method::PASSWORD } else { method::NO_AUTH };
    if methods.contains(&wanted) {
        wanted
    } else {
        method::NO_ACCEPTABLE
    }
}

/// The server's method selection message.
pub fn method_reply(method: u8) -> [u8; 2] {
    [VERSION5, method]
}

/// A username and password (RFC 1929), borrowed from the input; compared as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The username (0 to 255 bytes).
    pub username: &'a [u8],
    /// The password (0 to 255 bytes).
    pub password: &'a [u8],
}

impl<'a> Credentials<'a> {
    /// Decodes `VER ULEN UNAME PLEN PASSWD`; VER must be 1.
    pub fn decode(buf: &mut &'a [u8]) -> Result<Credentials<'a>, SocksError> {
        let mut cur = *buf;
        let version = take_u8(&mut cur)?;
        if version != AUTH_VERSION {
            return Err(SocksError::BadAuthVersion(version));
        }
        let ulen = take_u8(&mut cur)?;
        let username = take(&mut cur, usize::from(ulen))?;
        let plen = take_u8(&mut cur)?;
        let password = take(&mut cur, usize::from(plen))?;
        *buf = cur;
        Ok(Credentials { username, password })
    }

    /// Appends the sub-negotiation request (client side); `TooLong` (nothing written) if either
    /// field exceeds 255 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), SocksError> {
        let (Ok(ulen), Ok(plen)) = (u8::try_from(self.username.len()), u8::try_from(self.password.len())) else {
            return Err(SocksError::TooLong);
        };
        out.extend_from_slice(&[AUTH_VERSION, ulen]);
        out.extend_from_slice(self.username);
        out.push(plen);
        out.extend_from_slice(self.password);
        Ok(())
    }
}

/// The server's answer to the sub-negotiation: status 0 on success, 0xFF on failure (Xray's
/// choice; RFC 1929 asks only for non-zero).
pub fn auth_reply(ok: bool) -> [u8; 2] {
    [AUTH_VERSION, if ok { 0x00 } else { 0xff }]
}

/// The length of [`account_key`].
pub const ACCOUNT_KEY_LEN: usize = 32;

/// The key a SOCKS or HTTP proxy account is looked up by: SHA-256 over the username and the
/// password, each behind its length (so no two pairs share a key). A server hashes the
/// credentials a client presents and looks the key up; it never keeps the password itself.
pub fn account_key(username: &[u8], password: &[u8]) -> [u8; ACCOUNT_KEY_LEN] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((username.len() as u64).to_be_bytes());
    h.update(username);
    h.update((password.len() as u64).to_be_bytes());
    h.update(password);
    h.finalize().into()
}

// === SOCKS5 requests and replies ===

/// What a SOCKS5 client asks for; BIND is refused while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// CONNECT (1); Tor's RESOLVE (0xF0) and RESOLVE_PTR (0xF1) decode to this too, as in Xray.
    Connect,
    /// UDP ASSOCIATE (3): the destination is where the client will send from (often 0.0.0.0:0).
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

/// A SOCKS5 request: `VER CMD RSV ATYP DST.ADDR DST.PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// The destination (for UDP ASSOCIATE, the client's expected source).
    pub destination: Destination,
}

impl Request {
    /// Decodes a request; VER must be 5, RSV is ignored (as Xray ignores it).
    ///
    /// BIND (2) and unknown commands fail with `UnsupportedCommand` as soon as the command byte
    /// is in, before the address arrives, so the server can answer at once.
    pub fn decode(buf: &mut &[u8]) -> Result<Request, SocksError> {
        let mut cur = *buf;
        let version = take_u8(&mut cur)?;
        if version != VERSION5 {
            return Err(SocksError::BadVersion(version));
        }
        let command = match take_u8(&mut cur)? {
            1 | 0xf0 | 0xf1 => Command::Connect,
            3 => Command::UdpAssociate,
            other => return Err(SocksError::UnsupportedCommand(other)),
        };
        take_u8(&mut cur)?;
        let addr = SOCKS_TYPES.decode_addr(&mut cur)?;
        let port = take_u16(&mut cur)?;
        *buf = cur;
        Ok(Request { command, destination: Destination { addr, port } })
    }

    /// Appends the request (client side). For UDP ASSOCIATE Xray's client sends 0.0.0.0:0.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[VERSION5, self.command.to_u8(), 0]);
        SOCKS_TYPES.encode_addr(&self.destination.addr, out);
        out.extend_from_slice(&self.destination.port.to_be_bytes());
    }
}

/// Appends a SOCKS5 reply `VER REP RSV ATYP BND.ADDR BND.PORT`.
pub fn encode_reply(code: u8, bound: &Destination, out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION5, code, 0]);
    SOCKS_TYPES.encode_addr(&bound.addr, out);
    out.extend_from_slice(&bound.port.to_be_bytes());
}

/// A failure reply with the bound address 0.0.0.0:0, as Xray writes its refusals.
pub fn failure_reply(code: u8) -> [u8; 10] {
    [VERSION5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

// === Client side ===

/// Appends `VER NMETHODS METHODS` (Xray's client offers exactly one method). At most 255
/// methods are written.
pub fn encode_greeting(methods: &[u8], out: &mut Vec<u8>) {
    let methods = &methods[..methods.len().min(255)];
    out.extend_from_slice(&[VERSION5, methods.len() as u8]);
    out.extend_from_slice(methods);
}

/// Decodes the server's method selection; `Rejected(0xFF)` when it accepts none.
pub fn decode_method_reply(buf: &mut &[u8]) -> Result<u8, SocksError> {
    let mut cur = *buf;
    let version = take_u8(&mut cur)?;
    if version != VERSION5 {
        return Err(SocksError::BadVersion(version));
    }
    let chosen = take_u8(&mut cur)?;
    if chosen == method::NO_ACCEPTABLE {
        return Err(SocksError::Rejected(chosen));
    }
    *buf = cur;
    Ok(chosen)
}

/// Decodes the sub-negotiation status; `Rejected(status)` unless it is 0. The version byte is
/// not checked (Xray's client does not check it either; some servers echo 5).
pub fn decode_auth_reply(buf: &mut &[u8]) -> Result<(), SocksError> {
    let mut cur = *buf;
    take_u8(&mut cur)?;
    let status = take_u8(&mut cur)?;
    if status != 0 {
        return Err(SocksError::Rejected(status));
    }
    *buf = cur;
    Ok(())
}

/// Decodes the server's reply to a request and returns the bound address.
///
/// A failure code fails with `Rejected(code)` as soon as it is in, without waiting for the
/// bound address (Xray's client gives up at that point too).
pub fn decode_reply(buf: &mut &[u8]) -> Result<Destination, SocksError> {
    let mut cur = *buf;
    let version = take_u8(&mut cur)?;
    if version != VERSION5 {
        return Err(SocksError::BadVersion(version));
    }
    let code = take_u8(&mut cur)?;
    if code != reply::SUCCEEDED {
        return Err(SocksError::Rejected(code));
    }
    take_u8(&mut cur)?;
    let addr = SOCKS_TYPES.decode_addr(&mut cur)?;
    let port = take_u16(&mut cur)?;
    *buf = cur;
    Ok(Destination { addr, port })
}

// === SOCKS4 / 4a ===

/// A SOCKS4 or SOCKS4a CONNECT request: `VN CD DSTPORT DSTIP USERID NUL [DOMAIN NUL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socks4Request {
    /// Where to go: the IPv4 address, or for SOCKS4a the name that follows the user id.
    pub destination: Destination,
    /// The user id (not authenticated by anything; Xray ignores it).
    pub user_id: Box<[u8]>,
}

/// Takes bytes up to a NUL (dropping the NUL), at most `MAX_SOCKS4_FIELD` of them.
fn take_until_nul<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], SocksError> {
    let window = &buf[..buf.len().min(MAX_SOCKS4_FIELD + 1)];
    match window.iter().position(|&b| b == 0) {
        Some(end) => {
            let field = &buf[..end];
            *buf = &buf[end + 1..];
            Ok(field)
        }
        None if buf.len() > MAX_SOCKS4_FIELD => Err(SocksError::TooLong),
        None => Err(SocksError::UnexpectedEnd),
    }
}

impl Socks4Request {
    /// Decodes a whole SOCKS4 request, version byte included. Only CONNECT (1) is accepted;
    /// BIND and others fail with `UnsupportedCommand` as soon as the command byte is in.
    ///
    /// SOCKS4a is recognised as Xray recognises it: a destination IP whose first octet is 0
    /// means a domain follows the user id (the 4a text asks for 0.0.0.x, x non-zero).
    pub fn decode(buf: &mut &[u8]) -> Result<Socks4Request, SocksError> {
        let mut cur = *buf;
        let version = take_u8(&mut cur)?;
        if version != VERSION4 {
            return Err(SocksError::BadVersion(version));
        }
        let req = Socks4Request::decode_after_version(&mut cur)?;
        *buf = cur;
        Ok(req)
    }

    fn decode_after_version(cur: &mut &[u8]) -> Result<Socks4Request, SocksError> {
        let command = take_u8(cur)?;
        if command != 1 {
            return Err(SocksError::UnsupportedCommand(command));
        }
        let port = take_u16(cur)?;
        let ip = take(cur, 4)?;
        let ip = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
        let user_id = take_until_nul(cur)?.into();
        let addr = if ip.octets()[0] == 0 {
            let name = take_until_nul(cur)?;
            let name = std::str::from_utf8(name).map_err(|_| SocksError::BadDomain)?;
            Address::parse(name).ok_or(SocksError::BadDomain)?
        } else {
            Address::Ip(IpAddr::V4(ip))
        };
        Ok(Socks4Request { destination: Destination { addr, port }, user_id })
    }

    /// Appends the request (client side and tests): SOCKS4 for an IPv4 destination, SOCKS4a
    /// (IP 0.0.0.1) for a domain. `BadAddressType(4)` for IPv6, which SOCKS4 cannot carry, and
    /// `TooLong` for a field over [`MAX_SOCKS4_FIELD`] or containing a NUL; nothing is written then.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), SocksError> {
        let fits = |f: &[u8]| f.len() <= MAX_SOCKS4_FIELD && !f.contains(&0);
        if !fits(&self.user_id) {
            return Err(SocksError::TooLong);
        }
        let zero_net;
        let (ip, domain) = match &self.destination.addr {
            // A first octet of 0 announces SOCKS4a, so such an address goes as its dotted name
            // (which the server parses back to the address).
            Address::Ip(IpAddr::V4(ip)) if ip.octets()[0] == 0 => {
                zero_net = ip.to_string();
                ([0, 0, 0, 1], Some(zero_net.as_bytes()))
            }
            Address::Ip(IpAddr::V4(ip)) => (ip.octets(), None),
            Address::Ip(IpAddr::V6(_)) => return Err(SocksError::BadAddressType(4)),
            Address::Domain(d) if fits(d.as_bytes()) => ([0, 0, 0, 1], Some(d.as_bytes())),
            Address::Domain(_) => return Err(SocksError::TooLong),
        };
        out.extend_from_slice(&[VERSION4, 1]);
        out.extend_from_slice(&self.destination.port.to_be_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&self.user_id);
        out.push(0);
        if let Some(domain) = domain {
            out.extend_from_slice(domain);
            out.push(0);
        }
        Ok(())
    }
}

/// The SOCKS4 reply `VN=0 CD DSTPORT DSTIP`, with port 0 and IP 0.0.0.0 as Xray sends it.
pub fn socks4_reply(granted: bool) -> [u8; 8] {
    [0, if granted { SOCKS4_GRANTED } else { SOCKS4_REJECTED }, 0, 0, 0, 0, 0, 0]
}

// === UDP ===

/// The header in front of every SOCKS5 UDP datagram: `RSV(2) FRAG ATYP DST.ADDR DST.PORT`.
#[derive(Debug, Clone, Copy)]
pub struct UdpHeader;

impl UdpHeader {
    /// Decodes the header of one datagram and advances `buf` to the payload.
    ///
    /// A datagram arrives whole, so `UnexpectedEnd` here means a short datagram: drop it. A
    /// non-zero FRAG fails with `Fragmented` (Xray drops fragments too); RSV is not checked.
    pub fn decode(buf: &mut &[u8]) -> Result<Destination, SocksError> {
        let mut cur = *buf;
        let head = take(&mut cur, 3)?;
        if head[2] != 0 {
            return Err(SocksError::Fragmented(head[2]));
        }
        let addr = SOCKS_TYPES.decode_addr(&mut cur)?;
        let port = take_u16(&mut cur)?;
        *buf = cur;
        Ok(Destination { addr, port })
    }

    /// Appends an unfragmented header; the caller appends the payload.
    pub fn encode(destination: &Destination, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0, 0, 0]);
        SOCKS_TYPES.encode_addr(&destination.addr, out);
        out.extend_from_slice(&destination.port.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(addr: &str, port: u16) -> Destination {
        Destination { addr: Address::parse(addr).unwrap(), port }
    }

    fn greet(b: &mut &[u8]) -> Result<(), SocksError> {
        Greeting::decode(b).map(|_| ())
    }

    /// Every proper prefix of `bytes` is "need more" and leaves the buffer alone.
    fn assert_needs_more<T: std::fmt::Debug>(bytes: &[u8], decode: impl Fn(&mut &[u8]) -> Result<T, SocksError>) {
        for cut in 0..bytes.len() {
            let mut short = &bytes[..cut];
            assert_eq!(decode(&mut short).unwrap_err(), SocksError::UnexpectedEnd, "cut {cut} of {bytes:?}");
            assert_eq!(short.len(), cut);
        }
    }

    #[test]
    fn socks5_golden_exchange_without_auth() {
        // RFC 1928 section 3: VER 5, NMETHODS 1, NO AUTH; section 4: CONNECT to a domain.
        let greeting = [5, 1, 0];
        let mut cur = &greeting[..];
        assert_eq!(Greeting::decode(&mut cur), Ok(Greeting::Socks5 { methods: &[0] }));
        assert!(cur.is_empty());
        assert_needs_more(&greeting, greet);
        assert_eq!(method_reply(select_method(&[0], false)), [5, 0]);

        let mut request = vec![5, 1, 0, 3, 11];
        request.extend_from_slice(b"example.com");
        request.extend_from_slice(&[0x01, 0xbb]);
        let mut cur = &request[..];
        let decoded = Request::decode(&mut cur).unwrap();
        assert_eq!(decoded, Request { command: Command::Connect, destination: dest("example.com", 443) });
        assert_needs_more(&request, Request::decode);

        // Reply section 6: success, bound 127.0.0.1:1080.
        let mut out = Vec::new();
        encode_reply(reply::SUCCEEDED, &dest("127.0.0.1", 1080), &mut out);
        assert_eq!(out, [5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38]);
        assert_eq!(failure_reply(reply::COMMAND_NOT_SUPPORTED), [5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn method_selection_follows_xray() {
        assert_eq!(select_method(&[0, 2], true), method::PASSWORD);
        assert_eq!(select_method(&[0], true), method::NO_ACCEPTABLE);
        assert_eq!(select_method(&[2], false), method::NO_ACCEPTABLE);
        assert_eq!(select_method(&[], false), method::NO_ACCEPTABLE);
        assert_eq!(select_method(&[1, 0], false), method::NO_AUTH);
    }

    #[test]
    fn username_password_golden_and_round_trip() {
        // RFC 1929 section 2: VER 1, ULEN, UNAME, PLEN, PASSWD.
        let golden = [1, 4, b'u', b's', b'e', b'r', 2, b'p', b'w'];
        let creds = Credentials { username: b"user", password: b"pw" };
        let mut out = Vec::new();
        creds.encode(&mut out).unwrap();
        assert_eq!(out, golden);
        out.push(0xaa);
        let mut cur = &out[..];
        assert_eq!(Credentials::decode(&mut cur), Ok(creds));
        assert_eq!(cur, [0xaa]);
        assert_needs_more(&golden, |b| Credentials::decode(b).map(|c| c.username.len()));
        let mut bad = golden;
        bad[0] = 5;
        assert_eq!(Credentials::decode(&mut &bad[..]), Err(SocksError::BadAuthVersion(5)));
        let long = [b'x'; 256];
        let mut out = Vec::new();
        assert_eq!(Credentials { username: &long, password: b"" }.encode(&mut out), Err(SocksError::TooLong));
        assert!(out.is_empty());

        assert_eq!(auth_reply(true), [1, 0]);
        assert_eq!(auth_reply(false), [1, 0xff]);
        assert_eq!(decode_auth_reply(&mut &auth_reply(true)[..]), Ok(()));
        assert_eq!(decode_auth_reply(&mut &auth_reply(false)[..]), Err(SocksError::Rejected(0xff)));
        assert_eq!(decode_auth_reply(&mut &[5u8, 0][..]), Ok(()));
        assert_needs_more(&auth_reply(true), decode_auth_reply);
    }

    #[test]
    fn client_to_server_round_trip() {
        for (command, target) in [
            (Command::Connect, dest("example.com", 443)),
            (Command::Connect, dest("2001:db8::1", 8443)),
            (Command::UdpAssociate, dest("0.0.0.0", 0)),
        ] {
            let mut wire = Vec::new();
            encode_greeting(&[method::PASSWORD], &mut wire);
            let mut cur = &wire[..];
            let Greeting::Socks5 { methods } = Greeting::decode(&mut cur).unwrap() else { panic!("socks5") };
            let chosen = select_method(methods, true);
            assert_eq!(decode_method_reply(&mut &method_reply(chosen)[..]), Ok(method::PASSWORD));

            let mut wire = Vec::new();
            Credentials { username: b"alice", password: b"secret" }.encode(&mut wire).unwrap();
            let creds = Credentials::decode(&mut &wire[..]).unwrap();
            assert_eq!((creds.username, creds.password), (&b"alice"[..], &b"secret"[..]));

            let request = Request { command, destination: target.clone() };
            let mut wire = Vec::new();
            request.encode(&mut wire);
            assert_eq!(Request::decode(&mut &wire[..]), Ok(request));

            let bound = dest("192.0.2.7", 40000);
            let mut wire = Vec::new();
            encode_reply(reply::SUCCEEDED, &bound, &mut wire);
            wire.extend_from_slice(b"data");
            let mut cur = &wire[..];
            assert_eq!(decode_reply(&mut cur), Ok(bound));
            assert_eq!(cur, b"data");
            assert_needs_more(&wire[..wire.len() - 4], decode_reply);
        }
    }

    #[test]
    fn refusals_and_wrong_versions() {
        // BIND is refused as soon as the command byte is in, with "command not supported".
        let err = Request::decode(&mut &[5u8, 2][..]).unwrap_err();
        assert_eq!(err, SocksError::UnsupportedCommand(2));
        assert_eq!(err.reply_code(), Some(reply::COMMAND_NOT_SUPPORTED));
        assert_eq!(Request::decode(&mut &[5u8, 9, 0][..]), Err(SocksError::UnsupportedCommand(9)));
        // Tor RESOLVE is treated as CONNECT, as Xray does.
        let tor = [5, 0xf0, 0, 1, 1, 2, 3, 4, 0, 80];
        assert_eq!(Request::decode(&mut &tor[..]).unwrap().command, Command::Connect);
        let err = Request::decode(&mut &[5u8, 1, 0, 2, 0][..]).unwrap_err();
        assert_eq!(err, SocksError::BadAddressType(2));
        assert_eq!(err.reply_code(), Some(reply::ADDRESS_TYPE_NOT_SUPPORTED));
        assert_eq!(Request::decode(&mut &[4u8, 1, 0][..]), Err(SocksError::BadVersion(4)));
        // A first byte other than 4 or 5 is not SOCKS (Xray's socks inbound tries HTTP then).
        assert_eq!(Greeting::decode(&mut &b"GET / HTTP/1.1\r\n"[..]), Err(SocksError::BadVersion(b'G')));
        assert_eq!(Greeting::decode(&mut &[6u8][..]), Err(SocksError::BadVersion(6)));
        // Client side.
        assert_eq!(decode_method_reply(&mut &[5u8, 0xff][..]), Err(SocksError::Rejected(0xff)));
        assert_eq!(decode_method_reply(&mut &[4u8, 0][..]), Err(SocksError::BadVersion(4)));
        assert_eq!(decode_reply(&mut &[5u8, reply::HOST_UNREACHABLE][..]), Err(SocksError::Rejected(4)));
        assert_eq!(decode_reply(&mut &[0u8, 0][..]), Err(SocksError::BadVersion(0)));
    }

    #[test]
    fn socks4_and_4a() {
        // SOCKS4 protocol text: VN 4, CD 1, DSTPORT 80, DSTIP 192.0.2.1, USERID "bob", NUL.
        let golden4 = [4, 1, 0, 80, 192, 0, 2, 1, b'b', b'o', b'b', 0];
        let req = Socks4Request { destination: dest("192.0.2.1", 80), user_id: (*b"bob").into() };
        let mut out = Vec::new();
        req.encode(&mut out).unwrap();
        assert_eq!(out, golden4);
        let mut cur = &golden4[..];
        assert_eq!(Greeting::decode(&mut cur), Ok(Greeting::Socks4(req.clone())));
        assert!(cur.is_empty());
        assert_needs_more(&golden4, Socks4Request::decode);
        assert_needs_more(&golden4, greet);

        // SOCKS4a: DSTIP 0.0.0.1, empty user id, then the domain and a NUL.
        let mut golden4a = vec![4, 1, 0x01, 0xbb, 0, 0, 0, 1, 0];
        golden4a.extend_from_slice(b"example.com\0");
        let req = Socks4Request { destination: dest("example.com", 443), user_id: Box::default() };
        let mut out = Vec::new();
        req.encode(&mut out).unwrap();
        assert_eq!(out, golden4a);
        golden4a.extend_from_slice(b"payload");
        let mut cur = &golden4a[..];
        assert_eq!(Socks4Request::decode(&mut cur), Ok(req));
        assert_eq!(cur, b"payload");
        assert_needs_more(&golden4a[..golden4a.len() - 7], Socks4Request::decode);

        assert_eq!(socks4_reply(true), [0, 90, 0, 0, 0, 0, 0, 0]);
        assert_eq!(socks4_reply(false), [0, 91, 0, 0, 0, 0, 0, 0]);
        // BIND, an empty 4a domain, a user id with no NUL in sight, IPv6.
        assert_eq!(Socks4Request::decode(&mut &[4u8, 2][..]), Err(SocksError::UnsupportedCommand(2)));
        let empty = [4, 1, 0, 80, 0, 0, 0, 1, 0, 0];
        assert_eq!(Socks4Request::decode(&mut &empty[..]), Err(SocksError::BadDomain));
        let mut endless = vec![4, 1, 0, 80, 1, 2, 3, 4];
        endless.extend_from_slice(&[b'u'; MAX_SOCKS4_FIELD]);
        assert_eq!(Socks4Request::decode(&mut &endless[..]), Err(SocksError::UnexpectedEnd));
        endless.push(b'u');
        assert_eq!(Socks4Request::decode(&mut &endless[..]), Err(SocksError::TooLong));
        let v6 = Socks4Request { destination: dest("::1", 80), user_id: Box::default() };
        assert_eq!(v6.encode(&mut Vec::new()), Err(SocksError::BadAddressType(4)));
    }

    #[test]
    fn socks4_zero_network_address_goes_as_4a() {
        // Found by the socks4_request fuzz target: the 4a request
        // 04 01 0050 00000001 00 "0.1.2.3" 00 decodes to 0.1.2.3:80, which was re-encoded as a
        // plain SOCKS4 IP 0.1.2.3; a first octet of 0 announces 4a, so servers then wait for a
        // domain that never comes.
        let wire = b"\x04\x01\x00\x50\x00\x00\x00\x01\x000.1.2.3\x00";
        let req = Socks4Request::decode(&mut &wire[..]).unwrap();
        assert_eq!(req.destination, dest("0.1.2.3", 80));
        let mut out = Vec::new();
        req.encode(&mut out).unwrap();
        assert_eq!(out, wire);
        assert_eq!(Socks4Request::decode(&mut &out[..]), Ok(req));
    }

    #[test]
    fn account_keys_separate_username_from_password() {
        assert_eq!(account_key(b"u", b"p"), account_key(b"u", b"p"));
        assert_ne!(account_key(b"ab", b"c"), account_key(b"a", b"bc"));
        assert_ne!(account_key(b"u", b"p"), account_key(b"p", b"u"));
    }

    #[test]
    fn udp_header() {
        // RFC 1928 section 7: RSV 0 0, FRAG 0, IPv4 8.8.8.8, port 53, then the data.
        let golden = [0, 0, 0, 1, 8, 8, 8, 8, 0, 53, b'q'];
        let mut out = Vec::new();
        UdpHeader::encode(&dest("8.8.8.8", 53), &mut out);
        assert_eq!(out, golden[..10]);
        let mut cur = &golden[..];
        assert_eq!(UdpHeader::decode(&mut cur), Ok(dest("8.8.8.8", 53)));
        assert_eq!(cur, b"q");
        assert_needs_more(&golden[..10], UdpHeader::decode);
        let mut frag = golden;
        frag[2] = 1;
        assert_eq!(UdpHeader::decode(&mut &frag[..]), Err(SocksError::Fragmented(1)));
        for target in [dest("example.com", 443), dest("2001:db8::2", 5353)] {
            let mut out = Vec::new();
            UdpHeader::encode(&target, &mut out);
            assert_eq!(UdpHeader::decode(&mut &out[..]), Ok(target));
        }
    }

    #[test]
    fn never_panics_on_noise() {
        let mut seed = 0x2545f4914f6cdd1du64;
        for round in 0..4000u32 {
            let len = (seed % 300) as usize;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            if let Some(first) = bytes.first_mut() {
                *first = [4, 5, 1, 0][round as usize % 4];
            }
            let _ = Greeting::decode(&mut &bytes[..]);
            let _ = Request::decode(&mut &bytes[..]);
            let _ = Credentials::decode(&mut &bytes[..]);
            let _ = Socks4Request::decode(&mut &bytes[..]);
            let _ = UdpHeader::decode(&mut &bytes[..]);
            let _ = decode_reply(&mut &bytes[..]);
            let _ = decode_method_reply(&mut &bytes[..]);
            let _ = decode_auth_reply(&mut &bytes[..]);
        }
    }
}
