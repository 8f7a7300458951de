//! Decodes and encodes mux.cool frames, the one frame format of a mux command stream (VLESS
//! or VMess `Command::Mux`): TCP and UDP sub-sessions as V2Ray's mux sends them, and XUDP
//! (UDP packets each with its own address) as Xray and sing-box send it; no IO.
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

/// The network byte of a TCP sub-session.
pub const TCP: u8 = 1;

/// The network byte of a UDP sub-session.
pub const UDP: u8 = 2;

/// The most data one frame carries (its length is a `u16`).
pub const MAX_DATA: usize = u16::MAX as usize;

/// The longest whole frame: length, metadata, data length and data.
pub const MAX_FRAME: usize = 2 + MAX_META + 2 + MAX_DATA;

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
        let meta = take(&mut cur, meta_len)?;
        let (session, status, option) = (u16::from_be_bytes([meta[0], meta[1]]), meta[2], meta[3]);
        // The metadata is all here: what it lacks is malformed, not yet to come.
        let status = Self::decode_meta(status, &meta[4..]).map_err(|e| match e {
            DecodeError::UnexpectedEnd => DecodeError::BadCommand(status),
            e => e,
        })?;
        let data = if option & 1 == 1 {
            let len = usize::from(take_u16(&mut cur)?);
            take(&mut cur, len)?
        } else {
            &[]
        };
        *buf = cur;
        Ok(Frame { session, status, data })
    }

    /// The status a frame's metadata after its first four bytes says.
    fn decode_meta(status: u8, mut meta: &[u8]) -> Result<Status, DecodeError> {
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
        Ok(status)
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

    /// Appends a Keep frame of session `session` carrying `len` bytes of its stream (no
    /// address: a TCP sub-session, or a UDP one's own destination), up to the data, which the
    /// caller appends. `None` (nothing written) above [`MAX_DATA`].
    pub fn encode_keep(session: u16, len: usize, out: &mut Vec<u8>) -> Option<()> {
        let len = u16::try_from(len).ok()?;
        out.extend_from_slice(&[0, 4]);
        out.extend_from_slice(&session.to_be_bytes());
        out.extend_from_slice(&[2, 1]);
        out.extend_from_slice(&len.to_be_bytes());
        Some(())
    }

    /// Appends an End frame of session `session`.
    pub fn encode_end(session: u16, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0, 4]);
        out.extend_from_slice(&session.to_be_bytes());
        out.extend_from_slice(&[3, 0]);
    }

    /// Appends a New frame of session `session` to `network` and `dest`, with `global_id`
    /// when given (XUDP), and `len` bytes of first data when given, up to the data, which the
    /// caller appends. `None` (nothing written) above [`MAX_DATA`].
    pub fn encode_new(
        session: u16,
        network: u8,
        dest: &Destination,
        global_id: Option<&[u8; 8]>,
        len: Option<usize>,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let len = len.map(u16::try_from).transpose().ok()?;
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&session.to_be_bytes());
        out.extend_from_slice(&[1, u8::from(len.is_some()), network]);
        out.extend_from_slice(&dest.port.to_be_bytes());
        VLESS_TYPES.encode_addr(&dest.addr, out);
        if let Some(id) = global_id {
            out.extend_from_slice(id);
        }
        let meta_len = (out.len() - start - 2) as u16;
        out[start..start + 2].copy_from_slice(&meta_len.to_be_bytes());
        if let Some(len) = len {
            out.extend_from_slice(&len.to_be_bytes());
        }
        Some(())
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

    #[test]
    fn new_keep_and_end_encoders_decode_back() {
        let mut out = Vec::new();
        Frame::encode_new(7, TCP, &dest(), None, Some(2), &mut out).unwrap();
        out.extend_from_slice(b"hi");
        Frame::encode_new(8, UDP, &dest(), Some(&[0; 8]), None, &mut out).unwrap();
        Frame::encode_keep(7, 3, &mut out).unwrap();
        out.extend_from_slice(b"abc");
        Frame::encode_end(7, &mut out);
        assert_eq!(Frame::encode_keep(7, MAX_DATA + 1, &mut out), None);
        let mut cur = &out[..];
        let f = Frame::decode(&mut cur).unwrap();
        assert_eq!((f.session, f.status, f.data), (7, Status::New { network: TCP, destination: dest() }, &b"hi"[..]));
        let f = Frame::decode(&mut cur).unwrap();
        assert_eq!((f.session, f.status, f.data), (8, Status::New { network: UDP, destination: dest() }, &b""[..]));
        let f = Frame::decode(&mut cur).unwrap();
        assert_eq!((f.session, f.status, f.data), (7, Status::Keep(None), &b"abc"[..]));
        let f = Frame::decode(&mut cur).unwrap();
        assert_eq!((f.session, f.status), (7, Status::End));
        assert!(cur.is_empty());
    }

    #[test]
    fn hostile_frames_are_errors_never_panics() {
        // Metadata above the limit, below the minimum, a New cut inside its address, an
        // address type of nothing, and every prefix of each.
        let mut long = vec![0x02, 0x01];
        long.extend_from_slice(&[0; 0x201]);
        let cases: [&[u8]; 4] = [&long, &[0, 3, 0, 1, 2], &[0, 6, 0, 1, 1, 0, 1, 0], &[0, 8, 0, 1, 1, 0, 1, 0, 80, 9]];
        for case in cases {
            for cut in 0..=case.len() {
                let _ = Frame::decode(&mut &case[..cut]);
                let _ = Frame::data_len(&case[..cut]);
            }
            assert!(Frame::decode(&mut &case[..]).is_err());
        }
        assert_eq!(Frame::decode(&mut &long[..]), Err(DecodeError::BadCommand(0)));
    }
}
