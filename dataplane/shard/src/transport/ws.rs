//! The HTTP transports over a byte stream (`network` `ws` and `httpupgrade`), server and
//! client: the upgrade heads are read and written here with `wire::websocket`, then a
//! WebSocket session is a `WsStream` (frames in and out, pings answered, close answered), an
//! HTTPUpgrade session the stream itself (raw bytes, which the relay may splice). A WebSocket
//! client with early data (`?ed=N`) holds its request back until the session's first write,
//! which it carries in `Sec-WebSocket-Protocol` (base64url) when it fits, as Xray's client.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use base64::Engine as _;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shardray_core::spec::HttpTransportSpec;
use shardray_wire::websocket::{
    self, close_payload, encode_frame, opcode, Deframer, Endpoint, Flavor, UpgradeError, MAX_HEAD_LEN,
};

/// The largest frame a `WsStream` writes; a longer write goes out as several frames.
const MAX_WRITE_FRAME: usize = 1 << 20;

/// What either side of an upgrade yields.
pub(crate) enum Upgraded<S> {
    /// A WebSocket session (boxed: its frame state is larger than a stream).
    Ws(Box<WsStream<S>>),
    /// An HTTPUpgrade session: the stream, and the bytes that came after the head.
    Raw { stream: S, early: Vec<u8> },
}

/// An accepted upgrade: the session, and what the request said about the client.
pub(crate) struct Accepted<S> {
    pub(crate) upgraded: Upgraded<S>,
    /// The client's address from a trusted `X-Forwarded-For` / `X-Real-IP`.
    pub(crate) forwarded: Option<IpAddr>,
    /// An `X-Forwarded-For` came without a trusted header and was ignored.
    pub(crate) untrusted_forward: bool,
}

/// A refused upgrade: the stream, the bytes read from it (the request, for a fallback), and
/// why. Nothing has been answered yet.
pub(crate) struct Refused<S> {
    pub(crate) stream: S,
    pub(crate) read: Vec<u8>,
    pub(crate) error: UpgradeError,
}

/// Reads the upgrade request (within `within`) and, when `endpoint` accepts it, answers
/// `101`. A WebSocket's early data and the frames that came with the request are the
/// session's first bytes.
pub(crate) async fn accept<S>(
    mut stream: S,
    flavor: Flavor,
    endpoint: &Endpoint<'_>,
    within: Duration,
) -> Result<Accepted<S>, Refused<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let reading = async {
        let mut chunk = [0u8; 2048];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|_| UpgradeError::UnexpectedEnd)?;
            if n == 0 {
                return Err(UpgradeError::UnexpectedEnd);
            }
            buf.extend_from_slice(&chunk[..n]);
            match websocket::accept(flavor, endpoint, &buf) {
                Err(UpgradeError::UnexpectedEnd) if buf.len() < MAX_HEAD_LEN => continue,
                Err(UpgradeError::UnexpectedEnd) => return Err(UpgradeError::TooLong),
                other => return other,
            }
        }
    };
    let outcome = futures_lite::future::or(reading, async {
        glommio::timer::sleep(within).await;
        Err(UpgradeError::UnexpectedEnd)
    })
    .await;
    let accepted = match outcome {
        Ok(a) => a,
        Err(error) => return Err(Refused { stream, read: buf, error }),
    };
    let answered = async {
        stream.write_all(&accepted.response).await?;
        stream.flush().await
    };
    if answered.await.is_err() {
        return Err(Refused { stream, read: Vec::new(), error: UpgradeError::UnexpectedEnd });
    }
    let websocket::Accepted { head_len, mut early, forwarded, untrusted_forward, .. } = accepted;
    buf.drain(..head_len);
    let upgraded = match flavor {
        Flavor::WebSocket => match WsStream::new(stream, false, early, buf) {
            Ok(ws) => Upgraded::Ws(Box::new(ws)),
            Err(stream) => return Err(Refused { stream, read: Vec::new(), error: UpgradeError::Malformed }),
        },
        Flavor::HttpUpgrade => {
            early.extend_from_slice(&buf);
            Upgraded::Raw { stream, early }
        }
    };
    Ok(Accepted { upgraded, forwarded, untrusted_forward })
}

/// Sends the upgrade request for `spec` (its `Host` header `host`) and reads the `101`; a
/// WebSocket with early data defers both to the session's first write (see `Deferred`).
pub(crate) async fn connect<S>(
    mut stream: S,
    flavor: Flavor,
    spec: &HttpTransportSpec,
    host: &str,
) -> io::Result<Upgraded<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut random = [0u8; 16];
    fill_random(&mut random);
    let key = base64::engine::general_purpose::STANDARD.encode(random);
    if flavor == Flavor::WebSocket && spec.early_data > 0 {
        let mut ws = WsStream::new(stream, true, Vec::new(), Vec::new())
            .unwrap_or_else(|_| unreachable!("no bytes read, no broken frame"));
        let request = Deferred::Request { spec: spec.clone(), host: host.to_owned(), key, read_waker: None };
        ws.deferred = Some(Box::new(request));
        return Ok(Upgraded::Ws(Box::new(ws)));
    }
    let mut head = Vec::with_capacity(512);
    let request = websocket::Request { path: &spec.path, host, headers: &spec.headers, key: &key, protocol: None };
    websocket::write_request(flavor, &request, &mut head);
    stream.write_all(&head).await?;
    stream.flush().await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    let len = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the upgrade's answer"));
        }
        buf.extend_from_slice(&chunk[..n]);
        match websocket::read_response(flavor, &key, &buf) {
            Ok(len) => break len,
            Err(websocket::ResponseError::UnexpectedEnd) => continue,
            Err(e) => return Err(io::Error::new(io::ErrorKind::ConnectionRefused, e)),
        }
    };
    buf.drain(..len);
    match flavor {
        Flavor::WebSocket => WsStream::new(stream, true, Vec::new(), buf)
            .map(|ws| Upgraded::Ws(Box::new(ws)))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "broken frame after the upgrade")),
        Flavor::HttpUpgrade => Ok(Upgraded::Raw { stream, early: buf }),
    }
}

fn fill_random(out: &mut [u8]) {
    use ring::rand::SecureRandom;
    // The system generator does not fail on Linux once booted.
    let _ = ring::rand::SystemRandom::new().fill(out);
}

/// A WebSocket session over `S`: reads return the payload of the peer's data frames (ping
/// answered, close answered and read as the end), writes leave as binary frames, masked on
/// the client side. Closing sends our close frame (answering the peer's code if it closed
/// first) on the server side; see `poll_close`.
pub(crate) struct WsStream<S> {
    inner: S,
    deframer: Deframer,
    /// Payload to hand out before reading `inner` (early data, frames that came with a head).
    early: Vec<u8>,
    early_pos: usize,
    /// Whole frames still to write, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// The client's masks: a xorshift seeded from the system generator.
    mask_state: Option<u64>,
    /// The peer's close (or the end of `inner`) has been read.
    eof: bool,
    /// Our close frame is queued.
    close_sent: bool,
    /// A client's upgrade still to send or to be answered (early data).
    deferred: Option<Box<Deferred>>,
}

/// A client's upgrade held back for early data: the request leaves with the first write and
/// carries it when it is at most `early_data` bytes (else none, as Xray's client); the `101`
/// is read before any frame is written or read.
enum Deferred {
    /// Nothing sent yet; a read waits here for the first write.
    Request { spec: HttpTransportSpec, host: String, key: String, read_waker: Option<Waker> },
    /// The request is queued or sent; its answer is read into `buf`.
    Response { key: String, buf: Vec<u8> },
}

impl<S> WsStream<S> {
    /// A session on the client side (`client`: frames masked) or the server side. `early` is
    /// payload already received; `raw` are bytes read after the head, still framed. Fails
    /// (giving the stream back) when `raw` holds a broken frame.
    fn new(inner: S, client: bool, early: Vec<u8>, mut raw: Vec<u8>) -> Result<WsStream<S>, S> {
        let mask_state = client.then(|| {
            let mut seed = [0u8; 8];
            fill_random(&mut seed);
            u64::from_ne_bytes(seed) | 1
        });
        let mut ws = WsStream {
            inner,
            deframer: Deframer::new(!client),
            early,
            early_pos: 0,
            out: Vec::new(),
            out_pos: 0,
            mask_state,
            eof: false,
            close_sent: false,
            deferred: None,
        };
        match ws.deframer.unframe(&mut raw) {
            Ok(n) => ws.early.extend_from_slice(&raw[..n]),
            Err(_) => return Err(ws.inner),
        }
        ws.control_replies();
        Ok(ws)
    }

    fn next_mask(&mut self) -> Option<[u8; 4]> {
        let state = self.mask_state.as_mut()?;
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        Some((*state as u32).to_ne_bytes())
    }

    /// Acts on what the deframer has seen: a pong to queue; the peer's close, which ends
    /// what we read but not what we send (a half-close, as a proxied TCP stream has it: our
    /// own close follows when our side closes).
    fn control_replies(&mut self) {
        if let Some(payload) = self.deframer.take_pong() {
            if !self.close_sent {
                let mask = self.next_mask();
                encode_frame(opcode::PONG, &payload, mask, &mut self.out);
            }
        }
        if self.deframer.closed().is_some() {
            self.eof = true;
        }
    }

    fn queue_close(&mut self, code: u16) {
        if !self.close_sent {
            self.close_sent = true;
            let mask = self.next_mask();
            encode_frame(opcode::CLOSE, &close_payload(code), mask, &mut self.out);
        }
    }
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    /// Writes what is queued.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.out_pos += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        if self.out.capacity() > 2 * MAX_WRITE_FRAME {
            // One large write should not pin its buffer for the session's life.
            self.out = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Queues a deferred upgrade's request, `first` in it when it fits: whether it does.
    fn send_request(&mut self, first: &[u8]) -> bool {
        let Some(Deferred::Request { spec, host, key, read_waker }) = self.deferred.as_deref_mut() else {
            return false;
        };
        let carried = !first.is_empty() && first.len() <= spec.early_data as usize;
        // Unpadded base64url, as Xray's and V2Ray's clients send it: V2Ray's after the path,
        // Xray's in the protocol header.
        let encoded = carried.then(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(first));
        let (path, protocol) = match encoded {
            Some(e) if spec.early_data_in_path => (format!("{}{e}", spec.path).into(), None),
            e => (std::borrow::Cow::Borrowed(spec.path.as_str()), e),
        };
        let request =
            websocket::Request { path: &path, host, headers: &spec.headers, key, protocol: protocol.as_deref() };
        websocket::write_request(Flavor::WebSocket, &request, &mut self.out);
        if let Some(waker) = read_waker.take() {
            waker.wake();
        }
        let key = std::mem::take(key);
        self.deferred = Some(Box::new(Deferred::Response { key, buf: Vec::new() }));
        carried
    }

    /// Ready once a deferred upgrade is through (at once when there is none): the request
    /// written, the `101` read, the frames that came with it kept as the first payload.
    fn poll_upgraded(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(mut deferred) = self.deferred.take() else { return Poll::Ready(Ok(())) };
        let polled = self.poll_deferred(cx, &mut deferred);
        if polled.is_pending() {
            self.deferred = Some(deferred);
        }
        polled
    }

    fn poll_deferred(&mut self, cx: &mut Context<'_>, deferred: &mut Deferred) -> Poll<io::Result<()>> {
        let (key, buf) = match deferred {
            Deferred::Request { read_waker, .. } => {
                *read_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Deferred::Response { key, buf } => (key, buf),
        };
        ready!(self.poll_drain(cx))?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        let mut chunk = [0u8; 2048];
        loop {
            let n = ready!(Pin::new(&mut self.inner).poll_read(cx, &mut chunk))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before the upgrade's answer",
                )));
            }
            buf.extend_from_slice(&chunk[..n]);
            match websocket::read_response(Flavor::WebSocket, key, buf) {
                Ok(len) => {
                    let mut raw = buf.split_off(len);
                    let n =
                        self.deframer.unframe(&mut raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    self.early.extend_from_slice(&raw[..n]);
                    self.control_replies();
                    return Poll::Ready(Ok(()));
                }
                Err(websocket::ResponseError::UnexpectedEnd) => continue,
                Err(e) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionRefused, e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_upgraded(cx))?;
        if this.early_pos < this.early.len() {
            let n = buf.len().min(this.early.len() - this.early_pos);
            buf[..n].copy_from_slice(&this.early[this.early_pos..this.early_pos + n]);
            this.early_pos += n;
            if this.early_pos == this.early.len() {
                this.early = Vec::new();
                this.early_pos = 0;
            }
            return Poll::Ready(Ok(n));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if this.eof {
                return Poll::Ready(Ok(0));
            }
            let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if n == 0 {
                this.eof = true;
                return Poll::Ready(Ok(0));
            }
            let payload =
                this.deframer.unframe(&mut buf[..n]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            this.control_replies();
            if this.out_pos < this.out.len() {
                // A pong or a close to send: on its way now, or with the next write or flush.
                if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            if payload > 0 {
                return Poll::Ready(Ok(payload));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.deferred.as_deref(), Some(Deferred::Request { .. })) && this.send_request(data) {
            // The data went in the request: it leaves now, or with the next call.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(data.len()));
        }
        // Frames only once the server has answered, as Xray's client waits for its `101`.
        ready!(this.poll_upgraded(cx))?;
        ready!(this.poll_drain(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = data.len().min(MAX_WRITE_FRAME);
        let mask = this.next_mask();
        encode_frame(opcode::BINARY, &data[..n], mask, &mut this.out);
        // The frame is ours now: what does not go out at once goes with the next call.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    /// A WebSocket has no half-close: a close frame ends the session both ways for real
    /// peers (sing-box closes the connection on one). The server side sends it, since its
    /// upstream has ended; the client side (an outbound whose own client half-closed) only
    /// flushes and lets the server's side finish, as Xray's outbounds wait for the response.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.mask_state.is_some() && this.deframer.closed().is_none() {
            ready!(this.poll_drain(cx))?;
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        this.queue_close(this.deframer.closed().unwrap_or(1000));
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}
