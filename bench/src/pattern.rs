//! The payload every stream carries and the small framing between our client and our sink.
//!
//! Payload byte `i` of a stream is `PATTERN[(start + i) % PERIOD]`, where `PERIOD` is prime and
//! `start` differs per stream. A receiver checks every byte with one `memcmp` per read, so a
//! relay that drops, repeats, reorders or crosses streams cannot post a good number.

use std::io::{self, Read, Write};
use std::sync::OnceLock;
use std::time::Instant;

/// Length of the repeating pattern; prime, so that no power-of-two chunking lines up with it.
pub const PERIOD: usize = 65_521;

/// The largest slice sent or checked at once; also the size of every IO buffer.
pub const CHUNK: usize = 256 * 1024;

/// Length of the request the client sends right after the proxy header.
pub const REQUEST_LEN: usize = 13;

/// Length of the acknowledgement the sink returns after an upload.
pub const ACK_LEN: usize = 9;

/// The pattern followed by enough of its own repetition that any `CHUNK` starting inside the
/// first `PERIOD` bytes is one contiguous slice.
pub fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let period: Vec<u8> = (0..PERIOD)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        period.iter().cycle().take(PERIOD + CHUNK).copied().collect()
    })
}

/// Which way the payload of one stream flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Client to sink; the sink answers with an acknowledgement.
    Up,
    /// Sink to client.
    Down,
}

/// What the client asks of the sink: `kind` (b'U' or b'D'), payload length, pattern start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Direction of the payload.
    pub flow: Flow,
    /// Payload bytes.
    pub len: u64,
    /// Offset into the pattern of the first payload byte (below `PERIOD`).
    pub start: u32,
}

impl Request {
    /// Appends the 13-byte encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self.flow {
            Flow::Up => b'U',
            Flow::Down => b'D',
        });
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.start.to_be_bytes());
    }

    /// Decodes the 13-byte encoding; `None` if the kind is unknown or the start out of range.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Option<Request> {
        let flow = match b[0] {
            b'U' => Flow::Up,
            b'D' => Flow::Down,
            _ => return None,
        };
        let len = u64::from_be_bytes(b[1..9].try_into().expect("8 bytes"));
        let start = u32::from_be_bytes(b[9..13].try_into().expect("4 bytes"));
        ((start as usize) < PERIOD).then_some(Request { flow, len, start })
    }
}

/// The sink's verdict on an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// True when every byte matched the pattern.
    pub intact: bool,
    /// Payload bytes the sink received.
    pub received: u64,
}

impl Ack {
    /// The 9-byte encoding: status (0 intact, 1 corrupt) then the count.
    pub fn encode(&self) -> [u8; ACK_LEN] {
        let mut b = [0u8; ACK_LEN];
        b[0] = u8::from(!self.intact);
        b[1..].copy_from_slice(&self.received.to_be_bytes());
        b
    }

    /// Decodes the 9-byte encoding.
    pub fn decode(b: &[u8; ACK_LEN]) -> Ack {
        Ack { intact: b[0] == 0, received: u64::from_be_bytes(b[1..].try_into().expect("8 bytes")) }
    }
}

/// Checks received payload against the pattern as it arrives.
#[derive(Debug)]
pub struct Verifier {
    phase: usize,
    received: u64,
    intact: bool,
}

impl Verifier {
    /// A verifier for a stream whose pattern starts at `start`.
    pub fn new(start: u32) -> Verifier {
        Verifier { phase: start as usize % PERIOD, received: 0, intact: true }
    }

    /// Checks the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        let pattern = pattern();
        while !data.is_empty() {
            let n = data.len().min(CHUNK);
            if self.intact && data[..n] != pattern[self.phase..self.phase + n] {
                self.intact = false;
            }
            self.phase = (self.phase + n) % PERIOD;
            self.received += n as u64;
            data = &data[n..];
        }
    }

    /// Payload bytes seen so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// True while every byte seen matched.
    pub fn intact(&self) -> bool {
        self.intact
    }
}

/// Writes `len` pattern bytes starting at `start`, first prefixed by `head` in the same write.
pub fn send_pattern(w: &mut impl Write, head: &[u8], start: u32, len: u64, deadline: Instant) -> io::Result<()> {
    let pattern = pattern();
    let mut phase = start as usize % PERIOD;
    let mut left = len;
    if !head.is_empty() {
        // The header and the first payload bytes go out together, as real clients send them.
        let n = left.min((CHUNK - head.len().min(CHUNK)) as u64) as usize;
        let mut first = Vec::with_capacity(head.len() + n);
        first.extend_from_slice(head);
        first.extend_from_slice(&pattern[phase..phase + n]);
        w.write_all(&first)?;
        phase = (phase + n) % PERIOD;
        left -= n as u64;
    }
    while left > 0 {
        check_deadline(deadline)?;
        let n = left.min(CHUNK as u64) as usize;
        w.write_all(&pattern[phase..phase + n])?;
        phase = (phase + n) % PERIOD;
        left -= n as u64;
    }
    Ok(())
}

/// Reads `len` payload bytes into `verifier`, using `buf` (at least one byte long).
pub fn recv_pattern(
    r: &mut impl Read,
    verifier: &mut Verifier,
    len: u64,
    buf: &mut [u8],
    deadline: Instant,
) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        check_deadline(deadline)?;
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("stream ended after {} of {len} payload bytes", len - left),
            ));
        }
        verifier.feed(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// Fails with `TimedOut` once `deadline` has passed.
pub fn check_deadline(deadline: Instant) -> io::Result<()> {
    if Instant::now() >= deadline {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let req = Request { flow: Flow::Down, len: 1 << 40, start: 65_000 };
        let mut out = Vec::new();
        req.encode(&mut out);
        assert_eq!(Request::decode(out.as_slice().try_into().unwrap()), Some(req));
    }

    #[test]
    fn verifier_accepts_the_pattern_in_any_split() {
        let mut sent = Vec::new();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        send_pattern(&mut sent, b"hdr", 123, 600_000, deadline).unwrap();
        let payload = &sent[3..];
        for split in [1usize, 7, 4096, 65_521, 300_000] {
            let mut v = Verifier::new(123);
            for piece in payload.chunks(split) {
                v.feed(piece);
            }
            assert!(v.intact(), "split {split}");
            assert_eq!(v.received(), 600_000);
        }
    }

    #[test]
    fn verifier_catches_a_flipped_or_shifted_byte() {
        let mut sent = Vec::new();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        send_pattern(&mut sent, b"", 5, 200_000, deadline).unwrap();
        sent[150_000] ^= 1;
        let mut v = Verifier::new(5);
        v.feed(&sent);
        assert!(!v.intact());

        let mut v = Verifier::new(6);
        v.feed(&sent[..1000]);
        assert!(!v.intact());
    }
}
