//! HTTP/1.1 chunked transfer coding (RFC 9112 §7.1), both ways: a decoder that takes the
//! payload out of a body as it arrives, whatever the split of its input, and the framing a
//! writer puts around each chunk. No IO.

/// What ends each chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The last chunk with no trailers: the end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The most hex digits a chunk size may have (a 64-bit length).
const MAX_SIZE_DIGITS: u8 = 16;

/// Appends the size line that comes before a chunk of `len` bytes (`len` > 0: a zero size
/// is the last chunk, [`LAST_CHUNK`]).
pub fn encode_chunk_header(len: usize, out: &mut Vec<u8>) {
    debug_assert!(len > 0, "a zero-size chunk ends the body");
    out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
}

/// Why a chunked body could not be decoded. Nothing is recoverable: the body is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    /// A chunk size that is not hex, or longer than 16 digits.
    BadSize,
    /// A line that does not end in CRLF where one must.
    BadLineEnd,
}

impl std::fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkedError::BadSize => "malformed chunk size",
            ChunkedError::BadLineEnd => "chunked body line without CRLF",
        })
    }
}

impl std::error::Error for ChunkedError {}

/// Where decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a size line's hex digits.
    Size {
        value: u64,
        digits: u8,
    },
    /// In a size line's extensions, until its CR.
    Extension {
        value: u64,
    },
    /// After a size line's CR.
    SizeLf {
        value: u64,
    },
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line, inside one, after a trailer
    /// line's CR, after the final CR.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    /// The body has ended.
    Done,
}

/// What one [`ChunkedDecoder::decode`] call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Payload bytes now at the front of the buffer.
    pub payload: usize,
    /// Input bytes that belonged to the body (all of them unless it ended).
    pub consumed: usize,
}

/// Decodes a chunked body in place: each call takes the next raw bytes of the body and
/// leaves their payload at the front of the same buffer.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder { state: State::Size { value: 0, digits: 0 } }
    }

    /// The last chunk and its trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes the raw body bytes in `buf`, moving their payload to its front. Bytes after
    /// the body's end are left where they are, past `consumed`.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Decoded, ChunkedError> {
        let (mut read, mut written) = (0usize, 0usize);
        while read < buf.len() {
            let byte = buf[read];
            self.state = match self.state {
                State::Data(left) => {
                    let n = (buf.len() - read).min(usize::try_from(left).unwrap_or(usize::MAX));
                    buf.copy_within(read..read + n, written);
                    read += n;
                    written += n;
                    let left = left - n as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data(left) };
                    continue;
                }
                State::Done => break,
                State::Size { value, digits } => match hex_digit(byte) {
                    Some(d) if digits < MAX_SIZE_DIGITS => State::Size { value: value << 4 | d, digits: digits + 1 },
                    Some(_) => return Err(ChunkedError::BadSize),
                    None if digits == 0 => return Err(ChunkedError::BadSize),
                    None => match byte {
                        b'\r' => State::SizeLf { value },
                        b';' | b' ' | b'\t' => State::Extension { value },
                        _ => return Err(ChunkedError::BadSize),
                    },
                },
                State::Extension { value } => match byte {
                    b'\r' => State::SizeLf { value },
                    b'\n' => return Err(ChunkedError::BadLineEnd),
                    _ => State::Extension { value },
                },
                State::SizeLf { value } => match byte {
                    b'\n' if value == 0 => State::TrailerStart,
                    b'\n' => State::Data(value),
                    _ => return Err(ChunkedError::BadLineEnd),
                },
                State::DataCr => match byte {
                    b'\r' => State::DataLf,
                    _ => return Err(ChunkedError::BadLineEnd),
                },
                State::DataLf => match byte {
                    b'\n' => State::Size { value: 0, digits: 0 },
                    _ => return Err(ChunkedError::BadLineEnd),
                },
                State::TrailerStart => match byte {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(ChunkedError::BadLineEnd),
                    _ => State::TrailerLine,
                },
                State::TrailerLine => match byte {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(ChunkedError::BadLineEnd),
                    _ => State::TrailerLine,
                },
                State::TrailerLf => match byte {
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkedError::BadLineEnd),
                },
                State::EndLf => match byte {
                    b'\n' => State::Done,
                    _ => return Err(ChunkedError::BadLineEnd),
                },
            };
            read += 1;
        }
        Ok(Decoded { payload: written, consumed: read })
    }
}

fn hex_digit(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            encode_chunk_header(p.len(), &mut out);
            out.extend_from_slice(p);
            out.extend_from_slice(CHUNK_END);
        }
        out.extend_from_slice(LAST_CHUNK);
        out
    }

    /// Feeds `body` in pieces of `split` bytes, collecting the payload.
    fn decode_split(body: &[u8], split: usize) -> Result<(Vec<u8>, bool), ChunkedError> {
        let mut dec = ChunkedDecoder::new();
        let mut got = Vec::new();
        for piece in body.chunks(split) {
            let mut buf = piece.to_vec();
            let d = dec.decode(&mut buf)?;
            got.extend_from_slice(&buf[..d.payload]);
        }
        Ok((got, dec.is_done()))
    }

    #[test]
    fn round_trips_whatever_the_split() {
        let big = vec![7u8; 70_000];
        let body = encode(&[b"hello", &big, b"x"]);
        let mut want = b"hello".to_vec();
        want.extend_from_slice(&big);
        want.push(b'x');
        for split in [1, 2, 3, 7, 100, 4096, body.len()] {
            assert_eq!(decode_split(&body, split).unwrap(), (want.clone(), true), "split {split}");
        }
    }

    #[test]
    fn extensions_trailers_and_what_follows_the_body() {
        let mut body = b"5;name=value\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nHTTP/1.1 200".to_vec();
        let mut dec = ChunkedDecoder::new();
        let d = dec.decode(&mut body).unwrap();
        assert!(dec.is_done());
        assert_eq!(&body[..d.payload], b"hello");
        assert_eq!(&body[d.consumed..], b"HTTP/1.1 200");
        assert_eq!(encode(&[]), LAST_CHUNK);
    }

    #[test]
    fn upper_case_sizes_and_partial_state_carry_over() {
        let body = b"A\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(decode_split(body, 1).unwrap(), (b"0123456789".to_vec(), true));
        let (got, done) = decode_split(&body[..8], 3).unwrap();
        assert_eq!((got.as_slice(), done), (&b"01234"[..], false));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello",
            b"5\r\nhelloX",
            b"5\r\nhello\rX",
            b"11111111111111111\r\n",
            b"0\r\nbad\n",
            b"0\r\n\rX",
        ] {
            assert!(decode_split(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
            assert!(decode_split(bad, bad.len()).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
