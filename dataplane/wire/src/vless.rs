//! Decodes VLESS request headers and encodes response headers; no IO.
//!
//! Request: version (0), user UUID (16), addons length and protobuf addons, command,
//! then for TCP and UDP a big-endian port and an address (1 IPv4, 2 domain, 3 IPv6).
//! Response: version and an addons length of zero, then the payload.

use uuid::Uuid;

use crate::addr::{Destination, VLESS_TYPES};
use crate::{take, take_u16, take_u8, DecodeError};

/// The only VLESS version in use.
pub const VERSION: u8 = 0;

/// The longest possible request header: version, UUID, 255 bytes of addons, command, port and
/// a 255-byte domain with its type and length bytes.
pub const MAX_HEADER_LEN: usize = 1 + 16 + 1 + 255 + 1 + 2 + 1 + 1 + 255;

/// What the client asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Open a TCP stream to the destination.
    Tcp,
    /// Carry UDP packets to the destination.
    Udp,
    /// Multiplex streams (Xray mux.cool); carries no destination of its own.
    Mux,
}

/// A decoded VLESS request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// The user's id.
    pub user: Uuid,
    /// The flow named in the addons, empty when there is none.
    pub flow: String,
    /// The command.
    pub command: Command,
    /// Where to go; `None` for `Command::Mux`.
    pub destination: Option<Destination>,
}

impl RequestHeader {
    /// Decodes a header from the front of `buf`, advancing it past the header on success.
    ///
    /// On `Err(UnexpectedEnd)` the caller should read more; `buf` is then left as it was.
    pub fn decode(buf: &mut &[u8]) -> Result<RequestHeader, DecodeError> {
        let mut cur = *buf;
        let version = take_u8(&mut cur)?;
        if version != VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let user = Uuid::from_bytes(take(&mut cur, 16)?.try_into().expect("took 16 bytes"));
        let addons_len = take_u8(&mut cur)? as usize;
        let flow = decode_flow(take(&mut cur, addons_len)?)?;
        let command = match take_u8(&mut cur)? {
            1 => Command::Tcp,
            2 => Command::Udp,
            3 => Command::Mux,
            other => return Err(DecodeError::BadCommand(other)),
        };
        let destination = match command {
            Command::Mux => None,
            Command::Tcp | Command::Udp => {
                let port = take_u16(&mut cur)?;
                let addr = VLESS_TYPES.decode_addr(&mut cur)?;
                Some(Destination { addr, port })
            }
        };
        *buf = cur;
        Ok(RequestHeader { user, flow, command, destination })
    }

    /// Reads just the user id, once 17 bytes are there, so that an unknown user can be
    /// turned away before the rest of the header arrives.
    pub fn peek_user(buf: &[u8]) -> Result<Uuid, DecodeError> {
        let mut cur = buf;
        let version = take_u8(&mut cur)?;
        if version != VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        Ok(Uuid::from_bytes(take(&mut cur, 16)?.try_into().expect("took 16 bytes")))
    }

    /// Appends the encoded header to `out` (used by our own clients and tests).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        out.extend_from_slice(self.user.as_bytes());
        if self.flow.is_empty() {
            out.push(0);
        } else {
            // Field 1 (flow), wire type 2; flows are short enough for one-byte lengths.
            let flow = &self.flow.as_bytes()[..self.flow.len().min(127)];
            out.push(2 + flow.len() as u8);
            out.push(0x0a);
            out.push(flow.len() as u8);
            out.extend_from_slice(flow);
        }
        out.push(match self.command {
            Command::Tcp => 1,
            Command::Udp => 2,
            Command::Mux => 3,
        });
        if let Some(dest) = &self.destination {
            out.extend_from_slice(&dest.port.to_be_bytes());
            VLESS_TYPES.encode_addr(&dest.addr, out);
        }
    }
}

/// The response header a server sends before any payload: version, no addons.
pub const RESPONSE_HEADER: [u8; 2] = [VERSION, 0];

// === UDP packets ===

/// Decodes one UDP packet of a `Command::Udp` session, `[len u16][payload]` (both ways; the
/// destination is the header's), from the front of `buf`, advancing past it on success.
///
/// `UnexpectedEnd` until the whole payload is there (nothing consumed). A caller that refuses
/// packets above its own limit reads the length with [`packet_len`] first.
pub fn decode_packet<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let mut cur = *buf;
    let len = take_u16(&mut cur)?;
    let payload = take(&mut cur, usize::from(len))?;
    *buf = cur;
    Ok(payload)
}

/// The payload length the next packet announces, once its two length bytes are there.
pub fn packet_len(buf: &[u8]) -> Option<usize> {
    buf.get(..2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
}

/// Appends the length prefix of a `len`-byte packet; the caller appends the payload. `None`
/// (nothing written) above `u16::MAX`.
pub fn encode_packet_header(len: usize, out: &mut Vec<u8>) -> Option<()> {
    let len = u16::try_from(len).ok()?;
    out.extend_from_slice(&len.to_be_bytes());
    Some(())
}

/// Reads the flow string out of the addons protobuf; other fields are skipped.
fn decode_flow(mut addons: &[u8]) -> Result<String, DecodeError> {
    let mut flow = String::new();
    while !addons.is_empty() {
        let key = varint(&mut addons)?;
        match key & 7 {
            0 => {
                varint(&mut addons)?;
            }
            2 => {
                let len = usize::try_from(varint(&mut addons)?).map_err(|_| DecodeError::BadAddons)?;
                let value = take(&mut addons, len).map_err(|_| DecodeError::BadAddons)?;
                if key >> 3 == 1 {
                    flow = std::str::from_utf8(value).map_err(|_| DecodeError::BadAddons)?.to_owned();
                }
            }
            _ => return Err(DecodeError::BadAddons),
        }
    }
    Ok(flow)
}

fn varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = take_u8(buf).map_err(|_| DecodeError::BadAddons)?;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::BadAddons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Address;

    fn sample() -> RequestHeader {
        RequestHeader {
            user: "b831381d-6324-4d53-ad4f-8cda48b30811".parse().unwrap(),
            flow: String::new(),
            command: Command::Tcp,
            destination: Some(Destination { addr: Address::Domain("example.com".into()), port: 443 }),
        }
    }

    #[test]
    fn golden_bytes() {
        // Laid out by hand from the VLESS spec: version, uuid, no addons, TCP, port 443, domain.
        let mut expected = vec![0u8];
        expected.extend_from_slice(&[
            0xb8, 0x31, 0x38, 0x1d, 0x63, 0x24, 0x4d, 0x53, 0xad, 0x4f, 0x8c, 0xda, 0x48, 0xb3, 0x08, 0x11,
        ]);
        expected.extend_from_slice(&[0, 1, 0x01, 0xbb, 2, 11]);
        expected.extend_from_slice(b"example.com");
        let mut out = Vec::new();
        sample().encode(&mut out);
        assert_eq!(out, expected);
    }

    #[test]
    fn round_trip_with_payload_after() {
        for flow in ["", "xtls-rprx-vision"] {
            let mut header = sample();
            header.flow = flow.into();
            let mut out = Vec::new();
            header.encode(&mut out);
            let header_len = out.len();
            out.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let mut cur = &out[..];
            assert_eq!(RequestHeader::decode(&mut cur).unwrap(), header);
            assert_eq!(cur, b"GET / HTTP/1.1\r\n");
            for cut in 0..header_len {
                let mut short = &out[..cut];
                assert_eq!(RequestHeader::decode(&mut short), Err(DecodeError::UnexpectedEnd), "cut {cut}");
                assert_eq!(short.len(), cut, "buffer untouched on UnexpectedEnd");
            }
        }
    }

    #[test]
    fn mux_has_no_destination() {
        let mut header = sample();
        header.command = Command::Mux;
        header.destination = None;
        let mut out = Vec::new();
        header.encode(&mut out);
        assert_eq!(RequestHeader::decode(&mut &out[..]).unwrap(), header);
    }

    #[test]
    fn rejects_bad_fields() {
        let mut out = Vec::new();
        sample().encode(&mut out);
        let mut bad = out.clone();
        bad[0] = 1;
        assert_eq!(RequestHeader::decode(&mut &bad[..]), Err(DecodeError::BadVersion(1)));
        let mut bad = out.clone();
        bad[18] = 9;
        assert_eq!(RequestHeader::decode(&mut &bad[..]), Err(DecodeError::BadCommand(9)));
        let mut bad = out.clone();
        bad[21] = 7;
        assert_eq!(RequestHeader::decode(&mut &bad[..]), Err(DecodeError::BadAddressType(7)));
        // Addons that claim a longer string than they hold.
        let mut bad = vec![0u8; 17];
        bad.extend_from_slice(&[3, 0x0a, 9, b'x', 1]);
        assert_eq!(RequestHeader::decode(&mut &bad[..]), Err(DecodeError::BadAddons));
    }

    #[test]
    fn never_panics_on_any_prefix_of_noise() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            let len = (seed % 600) as usize;
            let mut noise = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                noise.push(seed as u8);
            }
            if !noise.is_empty() {
                noise[0] = 0; // get past the version check most of the time
            }
            let _ = RequestHeader::decode(&mut &noise[..]);
            let _ = RequestHeader::peek_user(&noise);
        }
    }

    #[test]
    fn udp_packets_round_trip_and_wait_for_their_payload() {
        let mut out = Vec::new();
        for payload in [&b""[..], b"x", &[7u8; 1400]] {
            encode_packet_header(payload.len(), &mut out).unwrap();
            out.extend_from_slice(payload);
        }
        assert_eq!(encode_packet_header(70_000, &mut Vec::new()), None);
        assert_eq!(packet_len(&out), Some(0));
        let mut cur = &out[..];
        assert_eq!(decode_packet(&mut cur), Ok(&b""[..]));
        assert_eq!(decode_packet(&mut cur), Ok(&b"x"[..]));
        // A cut anywhere in the last packet consumes nothing.
        for cut in 0..cur.len() {
            let mut part = &cur[..cut];
            assert_eq!(decode_packet(&mut part), Err(DecodeError::UnexpectedEnd));
            assert_eq!(part.len(), cut);
        }
        assert_eq!(decode_packet(&mut cur).unwrap().len(), 1400);
        assert!(cur.is_empty());
    }
}
