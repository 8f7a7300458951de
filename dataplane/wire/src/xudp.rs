//! Decodes and encodes mux.cool frames as XUDP uses them inside a VLESS `Command::Mux` stream;
//! no IO.
//!
//! Frame: `[metaLen u16][sessionID u16][status u8][option u8][meta rest]`, then, when option
//! bit 0 is set, `[len u16][data]`. Status 1 New (rest: network u8, port u16, address, and
//! for XUDP maybe an 8-byte GlobalID), 2 Keep (rest, for XUDP: network UDP and the packet's
//! port and address; empty for the session's own destination), 3 End, 4 KeepAlive. Addresses
//! are numbered as VLESS numbers them (1 IPv4, 2 domain, 3 IPv6), the port first.

use crate::addr::{Destination, VLESS_TYPES};
use crate::{take, take_u16, take_u8, DecodeError};

/// The longest metadata accepted (Xray's limit).
pub const MAX_META: usize = 512;

/// The network byte of a UDP sub-session.
const UDP: u8 = 2;

/// What a frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// A new sub-session to this network (1 TCP, 2 UDP) and destination.
    New {
        /// 1 TCP, 2 UDP.
        network: u8,
        /// Where it goes.
        destination: Destination,
    },
    /// More data; for XUDP with the packet's own destination.
    Keep(Option<Destination>),
    /// The sub-session ends.
    End,
    /// Nothing but keeping the connection alive; its data is discarded.
    KeepAlive,
}

/// One decoded frame, its data borrowed from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The sub-session.
    pub session: u16,
    /// What the frame says.
    pub status: Status,
    /// The data that came with it (empty when none did).
    pub data: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Decodes one whole frame from the front of `buf`, advancing past it on success;
    /// `UnexpectedEnd` (nothing consumed) until all of it is there. Metadata above
    /// [`MAX_META`] or an unknown status is `BadCommand`.
    pub fn decode(buf: &mut &'a [u8]) -> Result<Frame<'a>, DecodeError> {
        let mut cur = *buf;
        let meta_len = usize::from(take_u16(&mut cur)?);
        if !(4..=MAX_META).contains(&meta_len) {
            return Err(DecodeError::BadCommand(0));
        }
        let mut meta = take(&mut cur, meta_len)?;
        let session = take_u16(&mut meta)?;
        let status = take_u8(&mut meta)?;
        let option = take_u8(&mut meta)?;
        let address = |meta: &mut &[u8]| -> Result<Destination, DecodeError> {
            let port = take_u16(meta)?;
            let addr = VLESS_TYPES.decode_addr(meta)?;
            Ok(Destination { addr, port })
        };
        let status = match status {
            1 => {
                let network = take_u8(&mut meta)?;
                // A GlobalID may follow; it is not used.
                Status::New { network, destination: address(&mut meta)? }
            }
            2 if !meta.is_empty() && meta[0] == UDP => {
                meta = &meta[1..];
                Status::Keep(Some(address(&mut meta)?))
            }
            2 => Status::Keep(None),
            3 => Status::End,
            4 => Status::KeepAlive,
            s => return Err(DecodeError::BadCommand(s)),
        };
        let data = if option & 1 == 1 {
            let len = usize::from(take_u16(&mut cur)?);
            take(&mut cur, len)?
        } else {
            &[]
        };
        *buf = cur;
        Ok(Frame { session, status, data })
    }

    /// The data length the frame at the front of `buf` announces, once its metadata and length
    /// bytes are there (`None` before, or when it carries none): for refusing a packet above a
    /// limit before its data arrives. Returns the bytes up to the data, and the data length.
    pub fn data_len(buf: &[u8]) -> Option<(usize, usize)> {
        let meta_len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
        let option = *buf.get(2 + 3)?;
        if option & 1 == 0 {
            return None;
        }
        let at = 2 + meta_len;
        let len = usize::from(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]));
        Some((at + 2, len))
    }

    /// Appends a Keep frame of session `session` carrying a UDP packet of `len` bytes from (or
    /// to) `peer`, up to the data, which the caller appends. `None` (nothing written) above
    /// `u16::MAX` bytes.
    pub fn encode_udp_keep(session: u16, peer: &Destination, len: usize, out: &mut Vec<u8>) -> Option<()> {
        let len = u16::try_from(len).ok()?;
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&session.to_be_bytes());
        out.extend_from_slice(&[2, 1, UDP]);
        out.extend_from_slice(&peer.port.to_be_bytes());
        VLESS_TYPES.encode_addr(&peer.addr, out);
        let meta_len = (out.len() - start - 2) as u16;
        out[start..start + 2].copy_from_slice(&meta_len.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn dest() -> Destination {
        Destination::from("192.0.2.7:53".parse::<SocketAddr>().unwrap())
    }

    #[test]
    fn a_keep_frame_round_trips_and_waits_for_its_data() {
        let mut out = Vec::new();
        Frame::encode_udp_keep(0, &dest(), 3, &mut out).unwrap();
        let head = out.len();
        out.extend_from_slice(b"abc");
        assert_eq!(Frame::data_len(&out), Some((head, 3)));
        for cut in 0..out.len() {
            let mut part = &out[..cut];
            assert_eq!(Frame::decode(&mut part), Err(DecodeError::UnexpectedEnd), "cut at {cut}");
        }
        let mut cur = &out[..];
        let frame = Frame::decode(&mut cur).unwrap();
        assert_eq!(frame, Frame { session: 0, status: Status::Keep(Some(dest())), data: b"abc" });
        assert!(cur.is_empty());
    }

    #[test]
    fn new_with_a_global_id_end_keepalive_and_refusals() {
        // New, UDP to 192.0.2.7:53, a GlobalID, data "hi" (as Xray's client writes it).
        let mut new = vec![0, 0, 0, 0, 1, 1, 2, 0, 53, 1, 192, 0, 2, 7];
        new.extend_from_slice(&[9; 8]);
        let meta = (new.len() - 2) as u16;
        new[..2].copy_from_slice(&meta.to_be_bytes());
        new.extend_from_slice(&[0, 2, b'h', b'i']);
        let frame = Frame::decode(&mut &new[..]).unwrap();
        assert_eq!(frame.status, Status::New { network: 2, destination: dest() });
        assert_eq!(frame.data, b"hi");
        assert_eq!(Frame::decode(&mut &[0u8, 4, 0, 1, 3, 0][..]).unwrap().status, Status::End);
        assert_eq!(Frame::decode(&mut &[0u8, 4, 0, 1, 4, 0][..]).unwrap().status, Status::KeepAlive);
        assert_eq!(Frame::decode(&mut &[0u8, 4, 0, 1, 2, 0][..]).unwrap().status, Status::Keep(None));
        assert_eq!(Frame::decode(&mut &[0u8, 4, 0, 1, 9, 0][..]), Err(DecodeError::BadCommand(9)));
        assert_eq!(Frame::decode(&mut &[0u8, 2, 0, 1][..]), Err(DecodeError::BadCommand(0)));
        assert_eq!(Frame::decode(&mut &[2u8, 1, 0, 1][..]), Err(DecodeError::BadCommand(0)));
    }
}
