//! Destination addresses as the protocols carry them: an IP or a domain name, and a port.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{take, take_u8, DecodeError};

/// A host as a client named it: an IP address or a domain name still to be resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A literal IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A domain name (at most 255 bytes, UTF-8, not empty).
    Domain(Box<str>),
}

/// Where a client asked to go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The host.
    pub addr: Address,
    /// The TCP or UDP port.
    pub port: u16,
}

impl Address {
    /// Parses a config or CLI string: an IP literal (IPv6 with or without brackets) or a domain.
    pub fn parse(s: &str) -> Option<Address> {
        let bare = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Some(Address::Ip(ip));
        }
        if s.is_empty() || s.len() > 255 || s.contains(|c: char| c.is_whitespace() || c == '/') {
            return None;
        }
        Some(Address::Domain(s.into()))
    }

    /// The domain name, if this is one.
    pub fn domain(&self) -> Option<&str> {
        match self {
            Address::Domain(d) => Some(d),
            Address::Ip(_) => None,
        }
    }

    /// The IP address, if this is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ip(ip) => Some(*ip),
            Address::Domain(_) => None,
        }
    }
}

impl From<SocketAddr> for Destination {
    fn from(sa: SocketAddr) -> Self {
        Destination { addr: Address::Ip(sa.ip()), port: sa.port() }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Address::Ip(ip) => write!(f, "{ip}"),
            Address::Domain(d) => f.write_str(d),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

/// The address-type numbers a protocol uses for IPv4, domain and IPv6.
///
/// VLESS and VMess use 1/2/3; SOCKS5, Trojan and Shadowsocks use 1/3/4.
#[derive(Debug, Clone, Copy)]
pub struct AddressTypes {
    /// The byte that announces an IPv4 address.
    pub ipv4: u8,
    /// The byte that announces a length-prefixed domain name.
    pub domain: u8,
    /// The byte that announces an IPv6 address.
    pub ipv6: u8,
}

/// VLESS and VMess numbering.
pub const VLESS_TYPES: AddressTypes = AddressTypes { ipv4: 1, domain: 2, ipv6: 3 };
/// SOCKS5, Trojan and Shadowsocks numbering.
pub const SOCKS_TYPES: AddressTypes = AddressTypes { ipv4: 1, domain: 3, ipv6: 4 };

impl AddressTypes {
    /// Decodes a type byte and the address that follows it.
    pub fn decode_addr(&self, buf: &mut &[u8]) -> Result<Address, DecodeError> {
        let atyp = take_u8(buf)?;
        if atyp == self.ipv4 {
            let b = take(buf, 4)?;
            Ok(Address::Ip(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))))
        } else if atyp == self.ipv6 {
            let b: [u8; 16] = take(buf, 16)?.try_into().expect("took 16 bytes");
            Ok(Address::Ip(IpAddr::V6(Ipv6Addr::from(b))))
        } else if atyp == self.domain {
            let len = take_u8(buf)? as usize;
            let name = take(buf, len)?;
            if len == 0 {
                return Err(DecodeError::BadDomain);
            }
            let name = std::str::from_utf8(name).map_err(|_| DecodeError::BadDomain)?;
            Ok(Address::Domain(name.into()))
        } else {
            Err(DecodeError::BadAddressType(atyp))
        }
    }

    /// Appends a type byte and the address. A domain longer than 255 bytes cannot be encoded;
    /// callers validate names before they get here, so it is truncated rather than panicking.
    pub fn encode_addr(&self, addr: &Address, out: &mut Vec<u8>) {
        match addr {
            Address::Ip(IpAddr::V4(ip)) => {
                out.push(self.ipv4);
                out.extend_from_slice(&ip.octets());
            }
            Address::Ip(IpAddr::V6(ip)) => {
                out.push(self.ipv6);
                out.extend_from_slice(&ip.octets());
            }
            Address::Domain(d) => {
                let bytes = &d.as_bytes()[..d.len().min(255)];
                out.push(self.domain);
                out.push(bytes.len() as u8);
                out.extend_from_slice(bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_each_kind() {
        for addr in [
            Address::Ip("10.1.2.3".parse().unwrap()),
            Address::Ip("2001:db8::1".parse().unwrap()),
            Address::Domain("example.com".into()),
        ] {
            for types in [VLESS_TYPES, SOCKS_TYPES] {
                let mut out = Vec::new();
                types.encode_addr(&addr, &mut out);
                let mut cur = &out[..];
                assert_eq!(types.decode_addr(&mut cur).unwrap(), addr);
                assert!(cur.is_empty());
                for cut in 0..out.len() {
                    let mut short = &out[..cut];
                    assert_eq!(types.decode_addr(&mut short), Err(DecodeError::UnexpectedEnd));
                }
            }
        }
    }

    #[test]
    fn rejects_bad_type_and_empty_domain() {
        assert_eq!(VLESS_TYPES.decode_addr(&mut &[9u8][..]), Err(DecodeError::BadAddressType(9)));
        assert_eq!(VLESS_TYPES.decode_addr(&mut &[2u8, 0][..]), Err(DecodeError::BadDomain));
        assert_eq!(VLESS_TYPES.decode_addr(&mut &[2u8, 1, 0xff][..]), Err(DecodeError::BadDomain));
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(Address::parse("[::1]"), Some(Address::Ip("::1".parse().unwrap())));
        assert_eq!(Address::parse("a b"), None);
        let d = Destination { addr: Address::parse("::1").unwrap(), port: 80 };
        assert_eq!(d.to_string(), "[::1]:80");
    }
}
