//! The gRPC ("gun") transport's framing, both sides: each gRPC message is a 5-byte prefix
//! (compressed flag, big-endian length) and a protobuf `Hunk { bytes data = 1 }` (`Tun`) or
//! `MultiHunk { repeated bytes data = 1 }` (`TunMulti`). One `Hunk` and a `MultiHunk` with
//! one element are the same bytes, so the encoder serves both; the decoder streams the payload
//! of either out as it arrives, whatever the split of its input. No IO.

/// The most bytes `encode_header` writes: the prefix, the field's tag and its length.
pub const MAX_HEADER_LEN: usize = 5 + 1 + 5;

/// The protobuf key of field 1 with wire type 2 (length-delimited).
const DATA_KEY: u8 = 0x0a;

/// Why a gun stream could not be decoded. Nothing is recoverable: the stream is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GunError {
    /// The message prefix's flag is not 0 (1 is a compressed message, which we never negotiate).
    BadFlag(u8),
    /// A protobuf key with a wire type that does not exist (3, 4 are groups, 6 and 7 unused).
    BadWireType(u8),
    /// A varint longer than ten bytes.
    BadVarint,
    /// A field runs past the end of its message.
    FieldTooLong,
}

impl std::fmt::Display for GunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GunError::BadFlag(b) => write!(f, "gRPC message flag {b} (compression is not negotiated)"),
            GunError::BadWireType(t) => write!(f, "protobuf wire type {t} in a Hunk"),
            GunError::BadVarint => f.write_str("malformed protobuf varint in a Hunk"),
            GunError::FieldTooLong => f.write_str("a Hunk field runs past its message"),
        }
    }
}

impl std::error::Error for GunError {}

/// Appends the message prefix and the field header of a `Hunk` (or single-element
/// `MultiHunk`) carrying `data_len` bytes; the data itself follows.
pub fn encode_header(data_len: usize, out: &mut Vec<u8>) {
    let mut field = [0u8; 6];
    field[0] = DATA_KEY;
    let n = 1 + put_varint(data_len as u64, &mut field[1..]);
    let message_len = (n + data_len) as u32;
    out.push(0);
    out.extend_from_slice(&message_len.to_be_bytes());
    out.extend_from_slice(&field[..n]);
}

/// Appends one whole message carrying `data`.
pub fn encode(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(MAX_HEADER_LEN + data.len());
    encode_header(data.len(), out);
    out.extend_from_slice(data);
}

/// Writes `v` as a protobuf varint into `out` (room for five bytes, as lengths are 32-bit),
/// returning its length.
fn put_varint(mut v: u64, out: &mut [u8]) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

/// The request paths of a gun service: `Tun` (one `Hunk` per message) and `TunMulti`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePaths {
    /// The `Tun` stream's path, `/NAME/Tun`.
    pub tun: String,
    /// The `TunMulti` stream's path, `/NAME/TunMulti`.
    pub multi: String,
}

/// The paths a `serviceName` stands for, as Xray reads it: a plain name is escaped as one
/// path segment and gets the methods `Tun` and `TunMulti`; a name starting with `/` is a
/// custom path, `/SERVICE/PATH/TUN` or `/SERVICE/PATH/TUN|MULTI` (the multi stream's name,
/// if not given, is the tun's).
pub fn service_paths(service_name: &str) -> ServicePaths {
    let Some(custom) = service_name.strip_prefix('/') else {
        let service = escape_segment(service_name);
        return ServicePaths { tun: format!("/{service}/Tun"), multi: format!("/{service}/TunMulti") };
    };
    let (service, ending) = match custom.rfind('/') {
        Some(i) => (&custom[..i], &custom[i + 1..]),
        None => ("", custom),
    };
    let service: Vec<String> = service.split('/').map(escape_segment).collect();
    let service = service.join("/");
    let mut names = ending.split('|');
    let tun = escape_segment(names.next().unwrap_or(""));
    let multi = names.next().map_or_else(|| tun.clone(), escape_segment);
    ServicePaths { tun: format!("/{service}/{tun}"), multi: format!("/{service}/{multi}") }
}

/// Percent-escapes one path segment as Go's `url.PathEscape` does.
fn escape_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+:=@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where the decoder stands in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a message prefix: this many of its 5 bytes so far.
    Prefix(u8),
    /// Reading a field key (a varint).
    Key,
    /// Reading the length of a length-delimited field; `data`: it is field 1.
    Len { data: bool },
    /// Inside field 1's bytes: this many left.
    Data(u64),
    /// Skipping an unknown field's bytes: this many left.
    Skip(u64),
    /// Skipping an unknown varint field.
    SkipVarint,
}

/// A streaming decoder of `Hunk` / `MultiHunk` messages: feed it whatever arrived, take the
/// payload it finds. Fields other than 1 are skipped, as protobuf decoders do.
#[derive(Debug, Clone)]
pub struct GunDecoder {
    state: State,
    prefix: [u8; 5],
    /// Bytes left in the current message's body.
    body_left: u64,
    varint: u64,
    shift: u32,
}

impl Default for GunDecoder {
    fn default() -> Self {
        GunDecoder::new()
    }
}

impl GunDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        GunDecoder { state: State::Prefix(0), prefix: [0; 5], body_left: 0, varint: 0, shift: 0 }
    }

    /// Whether the decoder stands between two messages, where a stream may end cleanly.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Prefix(0)
    }

    /// Takes bytes off the front of `input` until it finds a piece of payload (returned,
    /// borrowed from `input`) or `input` is used up (`None`). Payload may come in several
    /// pieces however the messages were split; an empty piece is never returned.
    pub fn decode<'a>(&mut self, input: &mut &'a [u8]) -> Result<Option<&'a [u8]>, GunError> {
        loop {
            if input.is_empty() {
                return Ok(None);
            }
            match self.state {
                State::Prefix(got) => {
                    let want = 5 - got as usize;
                    let n = want.min(input.len());
                    self.prefix[got as usize..got as usize + n].copy_from_slice(&input[..n]);
                    *input = &input[n..];
                    if n < want {
                        self.state = State::Prefix(got + n as u8);
                        continue;
                    }
                    if self.prefix[0] != 0 {
                        return Err(GunError::BadFlag(self.prefix[0]));
                    }
                    self.body_left = u64::from(u32::from_be_bytes(self.prefix[1..5].try_into().expect("4 bytes")));
                    self.enter_field();
                }
                State::Key | State::Len { .. } | State::SkipVarint => {
                    let b = input[0];
                    *input = &input[1..];
                    self.body_left -= 1;
                    if self.shift >= 64 {
                        return Err(GunError::BadVarint);
                    }
                    self.varint |= u64::from(b & 0x7f) << self.shift;
                    self.shift += 7;
                    if b & 0x80 != 0 {
                        if self.body_left == 0 {
                            return Err(GunError::FieldTooLong);
                        }
                        continue;
                    }
                    let v = std::mem::take(&mut self.varint);
                    self.shift = 0;
                    match self.state {
                        State::Key => {
                            let wire = (v & 7) as u8;
                            let field = v >> 3;
                            self.state = match wire {
                                0 => State::SkipVarint,
                                1 => State::Skip(8),
                                2 => State::Len { data: field == 1 },
                                5 => State::Skip(4),
                                t => return Err(GunError::BadWireType(t)),
                            };
                            if self.body_left == 0 {
                                return Err(GunError::FieldTooLong);
                            }
                        }
                        State::Len { data } => {
                            if v > self.body_left {
                                return Err(GunError::FieldTooLong);
                            }
                            self.state = if data { State::Data(v) } else { State::Skip(v) };
                            if v == 0 {
                                self.enter_field();
                            }
                        }
                        _ => self.enter_field(),
                    }
                }
                State::Skip(left) => {
                    if left > self.body_left {
                        return Err(GunError::FieldTooLong);
                    }
                    let n = left.min(input.len() as u64);
                    *input = &input[n as usize..];
                    self.body_left -= n;
                    if n == left {
                        self.enter_field();
                    } else {
                        self.state = State::Skip(left - n);
                    }
                }
                State::Data(left) => {
                    let n = left.min(input.len() as u64) as usize;
                    let (piece, rest) = input.split_at(n);
                    *input = rest;
                    self.body_left -= n as u64;
                    if n as u64 == left {
                        self.enter_field();
                    } else {
                        self.state = State::Data(left - n as u64);
                    }
                    return Ok(Some(piece));
                }
            }
        }
    }

    /// After a prefix or a field: the next field's key, or the next message's prefix.
    fn enter_field(&mut self) {
        self.state = if self.body_left == 0 { State::Prefix(0) } else { State::Key };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(dec: &mut GunDecoder, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), GunError> {
        while let Some(piece) = dec.decode(&mut input)? {
            assert!(!piece.is_empty());
            out.extend_from_slice(piece);
        }
        Ok(())
    }

    #[test]
    fn service_paths_as_xray_reads_them() {
        let p = |s: &str| {
            let p = service_paths(s);
            (p.tun, p.multi)
        };
        assert_eq!(p("gun"), ("/gun/Tun".into(), "/gun/TunMulti".into()));
        assert_eq!(p(""), ("//Tun".into(), "//TunMulti".into()));
        assert_eq!(p("a b/c"), ("/a%20b%2Fc/Tun".into(), "/a%20b%2Fc/TunMulti".into()));
        assert_eq!(p("/my/sample/path1|path2"), ("/my/sample/path1".into(), "/my/sample/path2".into()));
        assert_eq!(p("/my/sample/path1"), ("/my/sample/path1".into(), "/my/sample/path1".into()));
        assert_eq!(p("/x"), ("//x".into(), "//x".into()));
    }

    #[test]
    fn header_matches_protobuf() {
        let mut out = Vec::new();
        encode(b"hello", &mut out);
        assert_eq!(out, [0, 0, 0, 0, 7, 0x0a, 5, b'h', b'e', b'l', b'l', b'o']);
        let mut out = Vec::new();
        encode_header(300, &mut out);
        // 300 is the varint ac 02; the message is 1 + 2 + 300 bytes.
        assert_eq!(out, [0, 0, 0, 0x01, 0x2f, 0x0a, 0xac, 0x02]);
    }

    #[test]
    fn round_trips_at_every_split() {
        let payloads: Vec<Vec<u8>> = vec![b"a".to_vec(), vec![7u8; 200], (0..=255u8).collect(), vec![1u8; 20000]];
        let mut stream = Vec::new();
        for p in &payloads {
            encode(p, &mut stream);
        }
        let want: Vec<u8> = payloads.concat();
        for split in [1, 2, 3, 5, 6, 7, 13, 127, 128, 4096, stream.len()] {
            let mut dec = GunDecoder::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(split) {
                decode_all(&mut dec, chunk, &mut got).unwrap();
            }
            assert_eq!(got, want, "split {split}");
            assert!(dec.at_boundary());
        }
    }

    #[test]
    fn multi_hunk_and_unknown_fields() {
        // MultiHunk { data: ["ab", "", "cde"] } with an unknown varint field 2 and an
        // unknown bytes field 3 in between.
        let body = [0x0a, 2, b'a', b'b', 0x10, 0x96, 0x01, 0x0a, 0, 0x1a, 1, b'x', 0x0a, 3, b'c', b'd', b'e'];
        let mut stream = vec![0, 0, 0, 0, body.len() as u8];
        stream.extend_from_slice(&body);
        for split in 1..=stream.len() {
            let mut dec = GunDecoder::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(split) {
                decode_all(&mut dec, chunk, &mut got).unwrap();
            }
            assert_eq!(got, b"abcde");
            assert!(dec.at_boundary());
        }
    }

    #[test]
    fn empty_message_and_mid_message_end() {
        let mut dec = GunDecoder::new();
        let mut got = Vec::new();
        decode_all(&mut dec, &[0, 0, 0, 0, 0], &mut got).unwrap();
        assert!(got.is_empty() && dec.at_boundary());
        decode_all(&mut dec, &[0, 0, 0, 0, 4, 0x0a, 2, b'h'], &mut got).unwrap();
        assert_eq!(got, b"h");
        assert!(!dec.at_boundary());
    }

    #[test]
    fn refuses_broken_input() {
        let cases: &[(&[u8], GunError)] = &[
            (&[1, 0, 0, 0, 1, 0], GunError::BadFlag(1)),
            (&[0, 0, 0, 0, 2, 0x0b, 0], GunError::BadWireType(3)),
            // Field 1 says 5 bytes, the message has 1 left.
            (&[0, 0, 0, 0, 3, 0x0a, 5, 0], GunError::FieldTooLong),
            // A key whose varint would continue past the message.
            (&[0, 0, 0, 0, 1, 0x8a], GunError::FieldTooLong),
            (
                &[0, 0, 0, 0, 12, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                GunError::BadVarint,
            ),
            // Fixed64 field longer than the message.
            (&[0, 0, 0, 0, 3, 0x09, 0, 0], GunError::FieldTooLong),
        ];
        for (input, want) in cases {
            let mut dec = GunDecoder::new();
            let mut got = Vec::new();
            assert_eq!(decode_all(&mut dec, input, &mut got), Err(*want), "{input:?}");
        }
    }
}
