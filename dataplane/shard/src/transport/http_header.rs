//! The HTTP camouflage of raw TCP (`tcpSettings.header` type `http`) over a byte stream: the
//! server reads and checks the client's request head, then the protocol sees the bytes after
//! it, and the response head goes out before the first bytes the server writes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shardray_core::spec::HttpHeaderSpec;
use shardray_wire::http_header::{self, HeadError, MAX_HEAD_LEN};

/// A stream whose request head has been read and accepted.
pub(crate) struct Camouflaged<S> {
    inner: S,
    /// What came after the request head in the reads that found it, handed out first.
    early: Vec<u8>,
    early_pos: usize,
    /// The response head still to write before the first bytes.
    head: Vec<u8>,
    head_pos: usize,
}

/// Reads the request head (within `within`) and checks its path. On success the stream comes
/// back wrapped; on failure the client has been answered as Xray answers (400, or 404 for an
/// unknown path) and the reason is returned.
pub(crate) async fn accept<S>(
    mut stream: S,
    spec: &HttpHeaderSpec,
    within: Duration,
) -> Result<Camouflaged<S>, HeadError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let reading = async {
        let mut chunk = [0u8; 2048];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|_| HeadError::UnexpectedEnd)?;
            if n == 0 {
                return Err(HeadError::UnexpectedEnd);
            }
            buf.extend_from_slice(&chunk[..n]);
            match http_header::read_request(&spec.request, &buf) {
                Err(HeadError::UnexpectedEnd) if buf.len() < MAX_HEAD_LEN => continue,
                Err(HeadError::UnexpectedEnd) => return Err(HeadError::TooLong),
                other => return other,
            }
        }
    };
    let outcome = futures_lite::future::or(reading, async {
        glommio::timer::sleep(within).await;
        Err(HeadError::UnexpectedEnd)
    })
    .await;
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    match outcome {
        Ok(len) => {
            let mut head = Vec::with_capacity(256);
            let mut pick = picker(&buf);
            http_header::write_response(&spec.response, &mut pick, &date, &mut head);
            buf.drain(..len);
            Ok(Camouflaged { inner: stream, early: buf, early_pos: 0, head, head_pos: 0 })
        }
        Err(HeadError::UnexpectedEnd) => Err(HeadError::UnexpectedEnd),
        Err(e) => {
            let mut answer = Vec::with_capacity(160);
            e.response().write(&date, &mut answer);
            let _ = stream.write_all(&answer).await;
            let _ = stream.close().await;
            Err(e)
        }
    }
}

/// Chooses among a header's values as Xray does (at random); seeded from the request, which
/// is as unpredictable to an observer as the client made it.
fn picker(seed_from: &[u8]) -> impl FnMut(usize) -> usize {
    let mut state =
        seed_from.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
            ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    }
}

impl<S> Camouflaged<S> {
    /// A stream that hands out `early` before what `inner` reads, with no head to write: an
    /// HTTPUpgrade tunnel whose first bytes came with its request or its `101`.
    pub(crate) fn with_early(inner: S, early: Vec<u8>) -> Camouflaged<S> {
        Camouflaged { inner, early, early_pos: 0, head: Vec::new(), head_pos: 0 }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Camouflaged<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.early_pos < this.early.len() {
            let n = out.len().min(this.early.len() - this.early_pos);
            out[..n].copy_from_slice(&this.early[this.early_pos..this.early_pos + n]);
            this.early_pos += n;
            if this.early_pos == this.early.len() {
                // The session may live long: hold no buffer for it.
                this.early = Vec::new();
                this.early_pos = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> Camouflaged<S> {
    /// Writes what is left of the response head.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.head_pos < self.head.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.head[self.head_pos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.head_pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !self.head.is_empty() {
            self.head = Vec::new();
            self.head_pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Camouflaged<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.head_pos < this.head.len() {
            // One write for the head and the first bytes, as Xray's buffered writer sends them.
            if this.head_pos == 0 && !data.is_empty() {
                let mut joined = std::mem::take(&mut this.head);
                joined.extend_from_slice(data);
                this.head = joined;
                let head_len = this.head.len() - data.len();
                match this.poll_head(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Ok(data.len())),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending if this.head_pos <= head_len => {
                        // Not even the head went out: keep the data out of it again.
                        this.head.truncate(head_len);
                        return Poll::Pending;
                    }
                    // Part of the data went with the head; the rest is owed with it.
                    Poll::Pending => return Poll::Ready(Ok(data.len())),
                }
            }
            match this.poll_head(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other.map(|r| r.map(|()| 0)),
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.poll_head(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.poll_head(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_close(cx),
            other => other,
        }
    }
}
