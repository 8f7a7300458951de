//! A TLS connection's first flight, read before any TLS state exists: the records that carry
//! the ClientHello are taken off the socket into a buffer that grows only by the bytes that
//! arrived, so that a client trickling its hello (slowloris) holds a few hundred bytes instead
//! of a rustls connection and its buffers. TLS and REALITY both start here; rustls (or
//! REALITY's target) is then handed these bytes before anything else the socket holds.

use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
use shardray_wire::reality::{self, HelloError};

/// The most bytes of records read for one ClientHello: the largest message gathered plus the
/// headers of the records it may span.
pub(crate) const RECORDS_MAX: usize = reality::MAX_HELLO + 4 * reality::RECORD_HEADER;

/// The least room a read is given, so that a client sending its hello at once takes few reads.
const MIN_READ: usize = 512;

/// Reads from `stream` into `records` until they hold a whole ClientHello, and gathers its
/// handshake message into `message`. Each read asks for no more than what completes the
/// current record (or header), and at most as much again as `records` holds already, so the
/// buffer is never much larger than what the client sent. On `Err`, `records` holds every
/// byte read (for REALITY's target); the caller bounds the wait by its handshake timeout.
pub(crate) async fn read_hello(
    stream: &mut TcpStream,
    records: &mut Vec<u8>,
    message: &mut Vec<u8>,
) -> Result<(), ClientHelloError> {
    loop {
        let have = records.len();
        let room = missing(records).min(have.max(MIN_READ)).min(RECORDS_MAX - have);
        if room == 0 {
            return Err(ClientHelloError::Hello(HelloError::TooLong));
        }
        // Cut back to what was read when done, and when the caller's timeout drops the read
        // unfinished, so that `records` never holds bytes the client did not send.
        let mut filled = Filled { records: &mut *records, len: have };
        filled.records.resize(have + room, 0);
        let read = stream.read(&mut filled.records[have..]).await;
        filled.len += *read.as_ref().unwrap_or(&0);
        drop(filled);
        match read {
            Ok(0) => return Err(ClientHelloError::Closed),
            Err(_) => return Err(ClientHelloError::ReadFailed),
            Ok(_) => {}
        }
        // Settled only by a whole record (or the first header): no gathering mid-record.
        if records.len() > reality::RECORD_HEADER && missing(records) != reality::RECORD_HEADER {
            continue;
        }
        match reality::gather(records, message) {
            Ok(()) => return Ok(()),
            Err(HelloError::UnexpectedEnd) => {}
            Err(e) => return Err(ClientHelloError::Hello(e)),
        }
    }
}

/// `records` as far as `len`, once dropped.
struct Filled<'a> {
    records: &'a mut Vec<u8>,
    len: usize,
}

impl Drop for Filled<'_> {
    fn drop(&mut self) {
        self.records.truncate(self.len);
    }
}

/// The bytes that complete the last record of `records`, or its header (5 when the records
/// end at a record boundary: the next header).
fn missing(records: &[u8]) -> usize {
    let mut at = 0;
    loop {
        let Some(header) = records.get(at..at + reality::RECORD_HEADER) else {
            return at + reality::RECORD_HEADER - records.len();
        };
        let end = at + reality::RECORD_HEADER + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if end > records.len() {
            return end - records.len();
        }
        at = end;
    }
}

/// Why a connection's first bytes gave no ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientHelloError {
    /// The client closed first.
    Closed,
    /// A read failed.
    ReadFailed,
    /// The bytes are not (or not a well-formed, short enough) ClientHello.
    Hello(HelloError),
}

impl std::fmt::Display for ClientHelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientHelloError::Closed => f.write_str("closed before a ClientHello"),
            ClientHelloError::ReadFailed => f.write_str("read failed before a ClientHello"),
            ClientHelloError::Hello(e) => e.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello message of `len` bytes in all (header included), cut into records of at
    /// most `per_record` bytes of body.
    fn records(len: usize, per_record: usize) -> Vec<u8> {
        let body_len = len - 4;
        let mut message = vec![1u8, (body_len >> 16) as u8, (body_len >> 8) as u8, body_len as u8];
        message.extend((0..body_len).map(|i| i as u8));
        let mut out = Vec::new();
        for chunk in message.chunks(per_record) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn missing_reaches_the_end_of_the_current_record_or_header() {
        let r = records(300, 200);
        assert_eq!(missing(&[]), 5);
        assert_eq!(missing(&r[..3]), 2);
        assert_eq!(missing(&r[..5]), 200);
        assert_eq!(missing(&r[..150]), 55);
        assert_eq!(missing(&r[..205]), 5, "a record boundary: the next header");
        assert_eq!(missing(&r[..207]), 3);
        assert_eq!(missing(&r[..210]), 100);
        assert_eq!(r.len(), 310);
    }

    /// A client on a real socket sends its hello one byte at a time, then in two records at
    /// once, then garbage: the hello is gathered whole and the buffer never outgrows what
    /// arrived by more than a read's room; garbage is refused with every byte kept.
    #[test]
    fn a_trickled_hello_is_gathered_in_a_buffer_no_larger_than_what_arrived() {
        use futures_lite::AsyncWriteExt;
        glommio::LocalExecutor::default().run(async {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let trickled = records(1500, 1000);
            let whole = records(700, 400);
            let (t, w) = (trickled.clone(), whole.clone());
            let client = glommio::spawn_local(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                for b in &t {
                    s.write_all(std::slice::from_ref(b)).await.unwrap();
                    glommio::timer::sleep(std::time::Duration::from_micros(50)).await;
                }
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(&w).await.unwrap();
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
                let mut cut = TcpStream::connect(addr).await.unwrap();
                cut.write_all(&w[..300]).await.unwrap();
                (s, cut)
            });
            let mut stream = listener.accept().await.unwrap();
            let (mut got, mut message) = (Vec::new(), Vec::new());
            read_hello(&mut stream, &mut got, &mut message).await.unwrap();
            assert_eq!(got, trickled);
            assert_eq!(message.len(), 1500);
            assert!(got.capacity() <= 2 * trickled.len(), "capacity {} for {} bytes", got.capacity(), trickled.len());

            let mut stream = listener.accept().await.unwrap();
            let (mut got, mut message) = (Vec::new(), Vec::new());
            read_hello(&mut stream, &mut got, &mut message).await.unwrap();
            assert_eq!(got, whole);

            let mut stream = listener.accept().await.unwrap();
            let (mut got, mut message) = (Vec::new(), Vec::new());
            let refused = read_hello(&mut stream, &mut got, &mut message).await;
            assert_eq!(refused, Err(ClientHelloError::Hello(HelloError::NotHandshake)));
            assert!(b"GET / HTTP/1.1\r\n".starts_with(&got) && !got.is_empty(), "{got:?}");

            // A read cut short by a timeout leaves exactly what arrived.
            let mut stream = listener.accept().await.unwrap();
            let (mut got, mut message) = (Vec::new(), Vec::new());
            let reading = async { Some(read_hello(&mut stream, &mut got, &mut message).await) };
            let timeout = async {
                glommio::timer::sleep(std::time::Duration::from_millis(300)).await;
                None
            };
            assert_eq!(futures_lite::future::or(reading, timeout).await, None);
            assert_eq!(got, &whole[..300]);
            drop(client.await);
        });
    }
}
