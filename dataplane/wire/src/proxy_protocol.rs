//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer or reverse
//! proxy puts before a connection's bytes to name the client it accepted; no IO.
//!
//! Decoding follows haproxy's proxy-protocol.txt: v1 is one text line of at most 107 bytes
//! (`PROXY TCP4|TCP6|UNKNOWN …\r\n`); v2 is a 12-byte signature, a version/command byte
//! (0x21 PROXY, 0x20 LOCAL), a family byte, a length and the addresses, then TLVs (skipped).
//! A LOCAL command or an UNKNOWN/UNSPEC family names no client: the connection's own peer stands.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v1 line, CRLF included.
pub const V1_MAX_LEN: usize = 107;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client, and the address it connected to; `None` for LOCAL or an unknown family.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The header has not arrived whole yet: read more.
    UnexpectedEnd,
    /// The bytes are not a PROXY protocol header (v1 or v2).
    NotProxy,
    /// A header of the right start with something malformed in it.
    Malformed,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyError::UnexpectedEnd => "PROXY header truncated",
            ProxyError::NotProxy => "no PROXY protocol header",
            ProxyError::Malformed => "malformed PROXY protocol header",
        })
    }
}

impl std::error::Error for ProxyError {}

/// Decodes the header at the front of `buf`: what it says and its length in bytes.
pub fn decode(buf: &[u8]) -> Result<(ProxyHeader, usize), ProxyError> {
    // What has arrived so far agrees with a version's opening bytes.
    let prefix = |sig: &[u8]| {
        let n = sig.len().min(buf.len());
        sig[..n] == buf[..n]
    };
    if prefix(&V2_SIGNATURE) {
        return decode_v2(buf);
    }
    if prefix(b"PROXY ") {
        return decode_v1(buf);
    }
    Err(ProxyError::NotProxy)
}

fn decode_v1(buf: &[u8]) -> Result<(ProxyHeader, usize), ProxyError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Err(if buf.len() >= V1_MAX_LEN { ProxyError::Malformed } else { ProxyError::UnexpectedEnd });
    };
    let len = end + 2;
    if len > V1_MAX_LEN {
        return Err(ProxyError::Malformed);
    }
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ProxyError::Malformed)?;
    let mut parts = line.split(' ');
    let (_, family) = (parts.next(), parts.next().ok_or(ProxyError::Malformed)?);
    if family == "UNKNOWN" {
        return Ok((ProxyHeader { addresses: None }, len));
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else { return Err(ProxyError::Malformed) };
    let ip = |s: &str| s.parse::<IpAddr>().map_err(|_| ProxyError::Malformed);
    let port = |s: &str| s.parse::<u16>().map_err(|_| ProxyError::Malformed);
    let (src, dst) = (ip(src)?, ip(dst)?);
    let family_ok = match family {
        "TCP4" => src.is_ipv4() && dst.is_ipv4(),
        "TCP6" => src.is_ipv6() && dst.is_ipv6(),
        _ => false,
    };
    if !family_ok {
        return Err(ProxyError::Malformed);
    }
    let addresses = (SocketAddr::new(src, port(sport)?), SocketAddr::new(dst, port(dport)?));
    Ok((ProxyHeader { addresses: Some(addresses) }, len))
}

fn decode_v2(buf: &[u8]) -> Result<(ProxyHeader, usize), ProxyError> {
    if buf.len() < 16 {
        return Err(ProxyError::UnexpectedEnd);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed);
    }
    if buf.len() < len {
        return Err(ProxyError::UnexpectedEnd);
    }
    let body = &buf[16..len];
    let addresses = match (ver_cmd & 0x0f, family) {
        (0x0, _) => None,
        (0x1, 0x11 | 0x12) if body.len() >= 12 => {
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            Some((
                SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
            ))
        }
        (0x1, 0x21 | 0x22) if body.len() >= 36 => {
            let ip = |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes")));
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            Some((
                SocketAddr::new(ip(&body[0..16]), port(&body[32..34])),
                SocketAddr::new(ip(&body[16..32]), port(&body[34..36])),
            ))
        }
        // UNSPEC, Unix sockets: no IP client to name.
        (0x1, 0x00 | 0x31 | 0x32) => None,
        _ => return Err(ProxyError::Malformed),
    };
    Ok((ProxyHeader { addresses }, len))
}

/// Appends a header naming `client`, which connected to `server`: version 1 (text) or 2
/// (binary); anything else appends nothing.
pub fn encode(version: u8, client: SocketAddr, server: SocketAddr, out: &mut Vec<u8>) {
    match version {
        1 => {
            let family = if client.is_ipv4() && server.is_ipv4() { "TCP4" } else { "TCP6" };
            let (c, s) = match family {
                "TCP4" => (client.ip(), server.ip()),
                _ => (IpAddr::V6(v6(client)), IpAddr::V6(v6(server))),
            };
            let line = format!("PROXY {family} {c} {s} {} {}\r\n", client.port(), server.port());
            out.extend_from_slice(line.as_bytes());
        }
        2 => {
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY command
            match (client, server) {
                (SocketAddr::V4(c), SocketAddr::V4(s)) => {
                    out.extend_from_slice(&[0x11, 0, 12]);
                    out.extend_from_slice(&c.ip().octets());
                    out.extend_from_slice(&s.ip().octets());
                }
                _ => {
                    out.extend_from_slice(&[0x21, 0, 36]);
                    out.extend_from_slice(&v6(client).octets());
                    out.extend_from_slice(&v6(server).octets());
                }
            }
            out.extend_from_slice(&client.port().to_be_bytes());
            out.extend_from_slice(&server.port().to_be_bytes());
        }
        _ => {}
    }
}

fn v6(a: SocketAddr) -> Ipv6Addr {
    match a {
        SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
        SocketAddr::V6(a) => *a.ip(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(c: &str, s: &str) -> (SocketAddr, SocketAddr) {
        (c.parse().unwrap(), s.parse().unwrap())
    }

    #[test]
    fn both_versions_round_trip_with_the_bytes_after_them() {
        for (c, s) in [addrs("1.2.3.4:5678", "5.6.7.8:443"), addrs("[2001:db8::1]:40000", "[2001:db8::2]:443")] {
            for version in [1, 2] {
                let mut out = Vec::new();
                encode(version, c, s, &mut out);
                let header_len = out.len();
                out.extend_from_slice(b"\x16\x03\x01");
                assert_eq!(decode(&out), Ok((ProxyHeader { addresses: Some((c, s)) }, header_len)), "v{version}");
                for cut in 0..header_len {
                    assert_eq!(decode(&out[..cut]), Err(ProxyError::UnexpectedEnd), "v{version} cut {cut}");
                }
            }
        }
    }

    #[test]
    fn spec_examples_and_local_connections() {
        // proxy-protocol.txt 2.1's example line.
        let line = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        let (header, len) = decode(line).unwrap();
        assert_eq!(len, line.len());
        assert_eq!(header.addresses.unwrap().0, "255.255.255.255:65535".parse().unwrap());
        assert_eq!(decode(b"PROXY UNKNOWN\r\nGET"), Ok((ProxyHeader { addresses: None }, 15)));
        // v2 LOCAL (a health check): no client named, the 16 bytes consumed.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(decode(&local), Ok((ProxyHeader { addresses: None }, 16)));
        // TLVs after the addresses are skipped with them.
        let mut tlv = V2_SIGNATURE.to_vec();
        tlv.extend_from_slice(&[
            0x21,
            0x11,
            0,
            12 + 4,
            10,
            0,
            0,
            1,
            10,
            0,
            0,
            2,
            0x30,
            0x39,
            0x01,
            0xbb,
            0x04,
            0,
            1,
            0,
        ]);
        let (header, len) = decode(&tlv).unwrap();
        assert_eq!((header.addresses.unwrap().0, len), ("10.0.0.1:12345".parse().unwrap(), tlv.len()));
    }

    #[test]
    fn other_bytes_are_not_proxy_and_broken_headers_are_malformed() {
        assert_eq!(decode(b"\x16\x03\x01\x02\x00"), Err(ProxyError::NotProxy));
        assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(ProxyError::NotProxy));
        assert_eq!(decode(b"PROXY TCP4 1.2.3.4 x 1 2\r\n"), Err(ProxyError::Malformed));
        assert_eq!(decode(b"PROXY TCP4 ::1 ::1 1 2\r\n"), Err(ProxyError::Malformed));
        assert_eq!(decode(&[b'P'; 200][..]), Err(ProxyError::NotProxy));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        assert_eq!(decode(&long), Err(ProxyError::Malformed));
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 0]);
        assert_eq!(decode(&bad), Err(ProxyError::Malformed));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(decode(&short), Err(ProxyError::Malformed));
    }
}
