//! The XHTTP (SplitHTTP) transport's client, as Xray's `splithttp` dialer speaks it: a session
//! is HTTP requests to the server's path, over HTTP/1.1 (plain, or TLS with ALPN
//! `http/1.1`) or HTTP/2 (TLS otherwise; `h2` through `TokioIo`, as the gRPC client runs it).
//!
//! - `stream-one`: one `POST {path}` whose request body carries the uplink and whose
//!   response body the downlink.
//! - `stream-up`: `GET {path}{session}` for the downlink, one streaming `POST` to the same
//!   path for the uplink.
//! - `packet-up`: the same `GET`, and the uplink as `POST {path}{session}/{seq}` requests
//!   numbered from 0, each at most `scMaxEachPostBytes`, started at least
//!   `scMinPostsIntervalMs` apart (what was written meanwhile goes in one).
//!
//! HTTP/2 connections are shared between sessions as Xray's XMUX shares them; an HTTP/1.1
//! session has its own connections (one for stream-one, the `GET`'s and the uplink's
//! otherwise), as Xray's have.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures_lite::{AsyncRead, AsyncWrite};
use h2::{RecvStream, SendStream};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use shardray_core::spec::{XhttpSpec, XmuxSpec};
use shardray_wire::addr::{Address, Destination};
use shardray_wire::chunked::{encode_chunk_header, ChunkedDecoder, CHUNK_END, LAST_CHUNK};
use shardray_wire::http::{BodyLength, HttpError, ResponseHead};
use shardray_wire::xhttp::{Mode, Placement, Range, Settings};

use super::grpc::{h2_error, keepalive, TokioIo};
use crate::outbound::trojan::{dial_secured, ClientTls, Upstream};
use crate::outbound::{within_dial_timeout, Via};

/// HTTP/2 windows we grant (as the gRPC client does): 64 KiB would hold the downlink to one
/// window per round trip.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;
const MAX_FRAME: u32 = 256 * 1024;

/// The most a streaming uplink write carries in one chunk or DATA frame.
const MAX_WRITE: usize = 256 * 1024;

/// Go's `http2` client: a ping after this long without frames (Chrome's period, Xray's default
/// `hKeepAlivePeriod`), and this long for its answer.
const KEEPALIVE: Duration = Duration::from_secs(45);
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP/2 connection without requests in flight this long is closed (Xray's
/// `IdleConnTimeout`).
const CONN_IDLE: Duration = Duration::from_secs(300);

/// The largest response head we read.
const MAX_HEAD: usize = 16 * 1024;

/// The payload per header or cookie of a packet-up POST whose payload travels in headers
/// or cookies, when `uplinkChunkSize` is unset (Xray's defaults).
const HEADER_CHUNK: Range = Range::new(3000, 4000);
const COOKIE_CHUNK: Range = Range::new(2048, 3072);

/// A number from `range`, at random.
fn draw(range: Range) -> u32 {
    range.pick(random_u64())
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // The system generator does not fail on Linux once booted.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_ne_bytes(b)
}

/// The major version of the Chrome that Xray's client claims to be: 144 on 2026-01-13, one
/// more every 35 days, counted from 35 days later (Xray also subtracts a random lag).
fn chrome_major() -> u64 {
    let days =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() / 86_400).unwrap_or(0);
    const START_DAY: u64 = 20_466; // 2026-01-13
    144 + days.saturating_sub(START_DAY + 35) / 35
}

/// The headers a browser's `fetch()` sends, as Xray adds them (its `chrome` defaults) when
/// `headers` sets no `User-Agent` or sets it to `chrome`.
fn chrome_fetch_headers() -> Vec<(String, String)> {
    let v = chrome_major();
    let pairs: [(&str, String); 13] = [
        ("Sec-CH-UA", format!("\"Chromium\";v=\"{v}\", \"Not_A Brand\";v=\"24\", \"Google Chrome\";v=\"{v}\"")),
        ("Sec-CH-UA-Mobile", "?0".into()),
        ("Sec-CH-UA-Platform", "\"Windows\"".into()),
        ("DNT", "1".into()),
        (
            "User-Agent",
            format!(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36"
            ),
        ),
        ("Accept-Language", "en-US,en;q=0.9".into()),
        ("Sec-Fetch-Mode", "cors".into()),
        ("Sec-Fetch-Dest", "empty".into()),
        ("Sec-Fetch-Site", "same-origin".into()),
        ("Priority", "u=1, i".into()),
        ("Cache-Control", "no-cache".into()),
        ("Pragma", "no-cache".into()),
        ("Accept", "*/*".into()),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// What kind of request, for its headers and framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// The downlink `GET`: no body.
    None,
    /// A streaming uplink (stream-up, stream-one): chunked on HTTP/1.1.
    Stream,
    /// One packet-up request whose body has this many bytes.
    Packet(usize),
}

/// A request as the session sends it, whatever HTTP version carries it.
struct Outgoing {
    method: Method,
    /// Path and query.
    target: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Body,
}

// === impl XhttpClient ===

/// An outbound's XHTTP client as one shard runs it: the settings, its TLS, and its shared
/// HTTP/2 connections.
pub(crate) struct XhttpClient(Rc<Client>);

struct Client {
    settings: Settings,
    xmux: XmuxSpec,
    /// `mode`, `auto` resolved as Xray's client does without REALITY: packet-up.
    mode: Mode,
    tls: ClientTls,
    /// HTTP/2 (else HTTP/1.1), as Xray decides it.
    h2: bool,
    /// `scheme://host` (the `Host` / `:authority`), for the URI and a padded `Referer`.
    origin: String,
    authority: String,
    /// The browser's header fields sent besides the configured ones (Xray's `chrome`
    /// defaults, unless `User-Agent` names another).
    browser: Vec<(HeaderName, HeaderValue)>,
    /// HTTP/2 connections and the limits drawn for them once (as Xray's manager draws them).
    pool: RefCell<Vec<Rc<MuxConn>>>,
    max_concurrency: u32,
    max_connections: u32,
    /// Held while a connection is being opened, so concurrent sessions see it.
    opening: glommio::sync::Semaphore,
    /// `CONN_IDLE` (shorter in tests).
    conn_idle: Duration,
    /// `downloadSettings`: the client (its own settings, TLS and connections) and server
    /// that carry each session's GET instead.
    download: Option<(Rc<Client>, Destination)>,
}

/// Whether a configured `User-Agent` value is one of Xray's keywords (`chrome`: its
/// defaults; `golang`: none), which are not sent as they are.
fn is_ua_keyword(name: &str, value: &str) -> bool {
    name.eq_ignore_ascii_case("user-agent") && matches!(value, "chrome" | "golang")
}

fn header_pair(k: &str, v: &str) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("header name {k:?}"))?;
    let value = HeaderValue::from_str(v).map_err(|_| format!("header {k:?}: value {v:?}"))?;
    Ok((name, value))
}

impl XhttpClient {
    /// The client for `spec` to `server`: TLS when `tls` is set, offering ALPN `h2` and
    /// `http/1.1` when the settings name none (Xray's default); HTTP/1.1 without TLS or when
    /// the only ALPN is `http/1.1`, HTTP/2 otherwise (as Xray's `decideHTTPVersion`). Fails
    /// only on settings control has already checked.
    pub(crate) fn new(
        spec: &XhttpSpec,
        tls: Option<&shardray_core::spec::TlsClientSpec>,
        server: &Destination,
    ) -> Result<XhttpClient, String> {
        XhttpClient::build(spec, tls, server, tls.is_some_and(|t| t.alpn != ["http/1.1"]))
    }

    /// `new`, with the HTTP version given (the tests' h2c: Xray's client has none).
    fn build(
        spec: &XhttpSpec,
        tls: Option<&shardray_core::spec::TlsClientSpec>,
        server: &Destination,
        h2: bool,
    ) -> Result<XhttpClient, String> {
        if tls.is_some_and(|t| t.alpn == ["h3"]) {
            return Err("XHTTP over HTTP/3 (alpn [\"h3\"]) is not supported".into());
        }
        let settings = &spec.settings;
        let tls_spec = tls.map(|t| match t.alpn.is_empty() {
            true => shardray_core::spec::TlsClientSpec { alpn: vec!["h2".into(), "http/1.1".into()], ..t.clone() },
            false => t.clone(),
        });
        let client_tls = crate::outbound::trojan::client_tls(tls_spec.as_ref(), server)?;
        let authority = match (settings.host.as_str(), tls.map(|t| t.server_name.as_str()).unwrap_or("")) {
            ("", "") => match &server.addr {
                Address::Domain(d) => d.to_string(),
                Address::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
                Address::Ip(ip) => ip.to_string(),
            },
            ("", name) => name.to_owned(),
            (host, _) => host.to_owned(),
        };
        let ua = settings.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("user-agent")).map(|(_, v)| v.as_str());
        let browser = match ua {
            None | Some("chrome") => chrome_fetch_headers()
                .into_iter()
                .filter(|(k, _)| !settings.headers.iter().any(|(c, _)| c.eq_ignore_ascii_case(k)) || k == "User-Agent")
                .map(|(k, v)| header_pair(&k, &v))
                .collect::<Result<_, String>>()?,
            Some(_) => Vec::new(),
        };
        for (k, v) in &settings.headers {
            header_pair(k, v)?;
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        // As Xray's dialer: its own HTTP version, from its own TLS settings.
        let download = match &spec.download {
            Some(d) => Some((XhttpClient::new(&d.xhttp, d.tls.as_ref(), &d.server)?.0, d.server.clone())),
            None => None,
        };
        Ok(XhttpClient(Rc::new(Client {
            max_concurrency: draw(spec.xmux.max_concurrency),
            max_connections: draw(spec.xmux.max_connections),
            settings: settings.clone(),
            xmux: spec.xmux.clone(),
            mode: match settings.mode {
                Mode::Auto => Mode::PacketUp,
                m => m,
            },
            tls: client_tls,
            h2,
            origin: format!("{scheme}://{authority}"),
            authority,
            browser,
            pool: RefCell::new(Vec::new()),
            opening: glommio::sync::Semaphore::new(1),
            conn_idle: CONN_IDLE,
            download,
        })))
    }

    /// Opens a session to `server`: its requests sent and the stream ready for the relay (the
    /// responses are read as the downlink is).
    pub(crate) async fn open(&self, server: &Destination, via: &Via) -> io::Result<XhttpStream> {
        let client = &self.0;
        let session = match client.mode {
            Mode::StreamOne => None,
            _ => Some(client.settings.new_session_id(random_u64)),
        };
        if let (Some((download, down_server)), Some(session)) = (&client.download, &session) {
            // The GET from the download client, then the uplink from this one.
            let (down, mut sessions, mut requests) = download.open_get(down_server, via, session).await?;
            let (up, more_sessions, more_requests) = client.open_uplink(server, via, session.clone()).await?;
            sessions.extend(more_sessions);
            requests.extend(more_requests);
            return Ok(XhttpStream { down, up, _sessions: sessions, _requests: requests });
        }
        match client.h2 {
            true => client.open_h2(server, via, session).await,
            false => client.open_h1(server, via, session).await,
        }
    }
}

impl Client {
    /// A request of the session `session` (none for stream-one), the packet `seq` of
    /// packet-up: where it goes and its header fields (placements, padding, content type as
    /// the settings say, then the browser's).
    fn request(&self, session: Option<&str>, seq: Option<u64>, body: Body) -> Outgoing {
        let s = &self.settings;
        let padding = draw(s.padding.bytes);
        let made = s.client_request(&self.origin, session, seq, padding, body == Body::Stream);
        let method = match body {
            Body::None => Method::GET,
            _ => Method::from_bytes(s.uplink_http_method.as_bytes()).unwrap_or(Method::POST),
        };
        let mut headers: Vec<(HeaderName, HeaderValue)> = made
            .headers
            .iter()
            .filter(|(k, v)| !is_ua_keyword(k, v))
            .filter_map(|(k, v)| header_pair(k, v).ok())
            .collect();
        headers.extend(self.browser.iter().cloned());
        Outgoing { method, target: made.target, headers, body }
    }

    /// A packet-up request carrying `payload`: in its body, or (`uplinkDataPlacement` header
    /// or cookie) in header fields, the body then empty.
    fn packet(&self, session: &str, seq: u64, payload: Vec<u8>) -> (Outgoing, Vec<u8>) {
        let s = &self.settings;
        let chunk = match (s.uplink_data_placement, s.uplink_chunk_size) {
            (Placement::Header, r) if r.to == 0 => HEADER_CHUNK,
            (Placement::Cookie, r) if r.to == 0 => COOKIE_CHUNK,
            (_, r) => Range::new(r.from.max(64), r.to.max(64)),
        };
        match s.uplink_data_placement {
            Placement::Header | Placement::Cookie => {
                let mut out = self.request(Some(session), Some(seq), Body::Packet(0));
                let fields = s.inline_payload(&payload, draw(chunk) as usize);
                out.headers.extend(fields.iter().filter_map(|(k, v)| header_pair(k, v).ok()));
                (out, Vec::new())
            }
            _ => (self.request(Some(session), Some(seq), Body::Packet(payload.len())), payload),
        }
    }

    // --- a downlink elsewhere (downloadSettings) ---

    /// The GET of session `session`, as this (the download) client makes it, on its own
    /// connections to `server`.
    async fn open_get(
        self: &Rc<Self>,
        server: &Destination,
        via: &Via,
        session: &str,
    ) -> io::Result<(Down, Vec<Running>, Vec<InFlight>)> {
        let get = self.request(Some(session), None, Body::None);
        if !self.h2 {
            let conn = self.h1_request(server, via, self.h1_head(&get)).await?;
            return Ok((Down::H1(Box::new(conn)), Vec::new(), Vec::new()));
        }
        let conn = self.mux(server, via).await?;
        let running = Running::new(&conn);
        let (response, _, get) = self.h2_send(&conn, self.h2_request(get)?, true).await?;
        Ok((Down::H2(Box::new(H2Body::new(response))), vec![running], vec![get]))
    }

    /// The uplink of session `session` (packet-up or stream-up) to `server`, its downlink
    /// being another client's.
    async fn open_uplink(
        self: &Rc<Self>,
        server: &Destination,
        via: &Via,
        session: String,
    ) -> io::Result<(Up, Vec<Running>, Vec<InFlight>)> {
        if self.mode == Mode::PacketUp {
            return Ok((
                Up::Packets(Uploader::spawn(self.clone(), server.clone(), via.clone(), session)),
                vec![],
                vec![],
            ));
        }
        let post = self.request(Some(&session), None, Body::Stream);
        if !self.h2 {
            return Ok((Up::H1(Box::new(self.h1_request(server, via, self.h1_head(&post)).await?)), vec![], vec![]));
        }
        let conn = self.mux(server, via).await?;
        let running = Running::new(&conn);
        let (response, send, post) = self.h2_send(&conn, self.h2_request(post)?, false).await?;
        let up = Up::H2(Box::new(H2Upload::new(send, Some(H2Body::new(response)))));
        Ok((up, vec![running], vec![post]))
    }

    // --- HTTP/1.1 ---

    /// The head of an HTTP/1.1 request.
    fn h1_head(&self, request: &Outgoing) -> Vec<u8> {
        let mut out = Vec::with_capacity(1536);
        let Outgoing { method, target, headers, body } = request;
        out.extend_from_slice(format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", self.authority).as_bytes());
        for (k, v) in headers {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match body {
            Body::None => {}
            Body::Stream => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            // A bodiless GET says nothing; any other body needs its length, or the server
            // reads the payload as the next request (Go's client sends it the same way).
            Body::Packet(0) if method == Method::GET => {}
            Body::Packet(n) => out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// A new HTTP/1.1 connection with `head` sent on it.
    async fn h1_request(&self, server: &Destination, via: &Via, head: Vec<u8>) -> io::Result<H1Conn> {
        let io = dial_http(&self.tls, false, server, via).await?;
        let mut conn = H1Conn::new(io);
        conn.out = head;
        futures_lite::future::poll_fn(|cx| conn.poll_drain(cx)).await?;
        Ok(conn)
    }

    async fn open_h1(
        self: &Rc<Self>,
        server: &Destination,
        via: &Via,
        session: Option<String>,
    ) -> io::Result<XhttpStream> {
        let sid = session.as_deref();
        let (down, up) = match self.mode {
            Mode::PacketUp => {
                let get = self.h1_head(&self.request(sid, None, Body::None));
                let down = self.h1_request(server, via, get).await?;
                let queue = Uploader::spawn(self.clone(), server.clone(), via.clone(), session.unwrap_or_default());
                (down, Up::Packets(queue))
            }
            Mode::StreamUp => {
                let get = self.h1_head(&self.request(sid, None, Body::None));
                let down = self.h1_request(server, via, get).await?;
                let post = self.h1_head(&self.request(sid, None, Body::Stream));
                (down, Up::H1(Box::new(self.h1_request(server, via, post).await?)))
            }
            _ => {
                let head = self.h1_head(&self.request(None, None, Body::Stream));
                (self.h1_request(server, via, head).await?, Up::SameConn)
            }
        };
        Ok(XhttpStream { down: Down::H1(Box::new(down)), up, _sessions: Vec::new(), _requests: Vec::new() })
    }

    // --- HTTP/2 ---

    /// The HTTP/2 form of `request`.
    fn h2_request(&self, request: Outgoing) -> io::Result<Request<()>> {
        let mut out = Request::builder()
            .method(request.method)
            .uri(format!("{}{}", self.origin, request.target))
            .body(())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let headers = out.headers_mut();
        for (k, v) in request.headers {
            headers.append(k, v);
        }
        if let Body::Packet(n) = request.body {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        Ok(out)
    }

    /// Sends a request on `conn`, counting it against the connection's requests; the guard
    /// keeps the connection in use until the request is over (held as long as its response
    /// is read).
    async fn h2_send(
        &self,
        conn: &MuxConn,
        request: Request<()>,
        end: bool,
    ) -> io::Result<(h2::client::ResponseFuture, SendStream<Bytes>, InFlight)> {
        conn.left_requests.set(conn.left_requests.get() - 1);
        let in_flight = InFlight::new(&conn.state);
        let mut sender = conn.sender.clone();
        futures_lite::future::poll_fn(|cx| sender.poll_ready(cx)).await.map_err(h2_error)?;
        let (response, send) = sender.send_request(request, end).map_err(|e| {
            conn.state.dead.set(true);
            h2_error(e)
        })?;
        Ok((response, send, in_flight))
    }

    async fn open_h2(
        self: &Rc<Self>,
        server: &Destination,
        via: &Via,
        session: Option<String>,
    ) -> io::Result<XhttpStream> {
        let sid = session.as_deref();
        let conn = self.mux(server, via).await?;
        let running = Running::new(&conn);
        let (down, up, requests) = match self.mode {
            Mode::PacketUp => {
                let get = self.h2_request(self.request(sid, None, Body::None))?;
                let (response, _, get) = self.h2_send(&conn, get, true).await?;
                let queue = Uploader::spawn(self.clone(), server.clone(), via.clone(), session.unwrap_or_default());
                *queue.conn.borrow_mut() = Some(conn.clone());
                (H2Body::new(response), Up::Packets(queue), vec![get])
            }
            Mode::StreamUp => {
                let get = self.h2_request(self.request(sid, None, Body::None))?;
                let (response, _, get) = self.h2_send(&conn, get, true).await?;
                let post = self.h2_request(self.request(sid, None, Body::Stream))?;
                let (post_response, send, post) = self.h2_send(&conn, post, false).await?;
                let up = Up::H2(Box::new(H2Upload::new(send, Some(H2Body::new(post_response)))));
                (H2Body::new(response), up, vec![get, post])
            }
            _ => {
                let request = self.h2_request(self.request(None, None, Body::Stream))?;
                let (response, send, request) = self.h2_send(&conn, request, false).await?;
                (H2Body::new(response), Up::H2(Box::new(H2Upload::new(send, None))), vec![request])
            }
        };
        Ok(XhttpStream { down: Down::H2(Box::new(down)), up, _sessions: vec![running], _requests: requests })
    }

    /// A connection for the next session or request, as Xray's XMUX picks it: connections
    /// that died or are used up leave the pool; a new one is opened while the pool is empty,
    /// below `maxConnections`, or has none below `maxConcurrency`; else one at random.
    async fn mux(&self, server: &Destination, via: &Via) -> io::Result<Rc<MuxConn>> {
        if let Some(conn) = self.pick() {
            return Ok(conn);
        }
        let _permit = self.opening.acquire_permit(1).await.map_err(|_| io::Error::other("XHTTP client closed"))?;
        if let Some(conn) = self.pick() {
            return Ok(conn);
        }
        let conn = self.connect_h2(server, via).await?;
        self.pool.borrow_mut().push(conn.clone());
        Ok(conn)
    }

    /// A pooled connection to use, if the rules take one rather than a new one.
    fn pick(&self) -> Option<Rc<MuxConn>> {
        let mut pool = self.pool.borrow_mut();
        let now = Instant::now();
        pool.retain(|c| c.reusable(now));
        if pool.is_empty() || (self.max_connections > 0 && pool.len() < self.max_connections as usize) {
            return None;
        }
        let open: Vec<&Rc<MuxConn>> =
            pool.iter().filter(|c| self.max_concurrency == 0 || c.state.running.get() < self.max_concurrency).collect();
        if open.is_empty() {
            return None;
        }
        let conn = open[(random_u64() % open.len() as u64) as usize].clone();
        if conn.left_usage.get() > 0 {
            conn.left_usage.set(conn.left_usage.get() - 1);
        }
        Some(conn)
    }

    /// Dials and hands a new HTTP/2 connection to a driver task on this shard.
    async fn connect_h2(&self, server: &Destination, via: &Via) -> io::Result<Rc<MuxConn>> {
        let io = dial_http(&self.tls, true, server, via).await?;
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(MAX_WRITE);
        let handshake = builder.handshake::<_, Bytes>(TokioIo(io));
        let opening = async { handshake.await.map_err(h2_error) };
        let (sender, mut connection) = within_dial_timeout(opening, "HTTP/2 handshake timed out").await?;
        let state = Rc::new(MuxState {
            dead: Cell::new(false),
            running: Cell::new(0),
            requests: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
        });
        let pings = connection.ping_pong();
        let every = match self.xmux.h_keep_alive_period {
            0 => Some(KEEPALIVE),
            s if s > 0 => Some(Duration::from_secs(s as u64)),
            _ => None,
        };
        let driver = state.clone();
        let conn_idle = self.conn_idle;
        glommio::spawn_local(async move {
            let quiet_state = driver.clone();
            let keeping = async move {
                match (every, pings) {
                    (Some(every), Some(pings)) => {
                        keepalive(pings, every, PING_TIMEOUT, move || quiet_state.requests.get() == 0).await
                    }
                    _ => futures_lite::future::pending().await,
                }
            };
            let idle_state = driver.clone();
            let idle = async move {
                loop {
                    glommio::timer::sleep((conn_idle / 4).min(Duration::from_secs(5))).await;
                    if idle_state.idle_for(conn_idle) {
                        return;
                    }
                }
            };
            let _ = futures_lite::future::or(
                async { (&mut connection).await.ok() },
                futures_lite::future::or(
                    async {
                        keeping.await;
                        None
                    },
                    async {
                        idle.await;
                        None
                    },
                ),
            )
            .await;
            driver.dead.set(true);
        })
        .detach();
        let xmux = &self.xmux;
        let left_usage = match draw(xmux.c_max_reuse_times) {
            0 => -1,
            n => n as i64 - 1,
        };
        let left_requests = match draw(xmux.h_max_request_times) {
            0 => i64::MAX,
            n => i64::from(n),
        };
        let unreusable_at = match draw(xmux.h_max_reusable_secs) {
            0 => None,
            s => Some(Instant::now() + Duration::from_secs(u64::from(s))),
        };
        Ok(Rc::new(MuxConn {
            sender,
            state,
            left_usage: Cell::new(left_usage),
            left_requests: Cell::new(left_requests),
            unreusable_at,
        }))
    }
}

/// Dials the server for HTTP: TLS if configured, which must agree to HTTP/2 when `h2`.
async fn dial_http(tls: &ClientTls, h2: bool, server: &Destination, via: &Via) -> io::Result<Upstream> {
    let dialing = async {
        let io = dial_secured(tls, server, via).await?;
        if let Upstream::Tls(t) = &io {
            let alpn = t.get_ref().1.alpn_protocol();
            if h2 && alpn.is_some_and(|p| p != b"h2") {
                let chosen = String::from_utf8_lossy(alpn.unwrap_or_default()).into_owned();
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("XHTTP server chose ALPN {chosen:?}, not h2 (set tlsSettings.alpn to [\"http/1.1\"] for HTTP/1.1)"),
                ));
            }
        }
        Ok(io)
    };
    within_dial_timeout(dialing, "dial timed out").await
}

// === XMUX ===

/// One pooled HTTP/2 connection and what XMUX counts on it.
struct MuxConn {
    sender: h2::client::SendRequest<Bytes>,
    state: Rc<MuxState>,
    /// Sessions it may still be picked for (negative: no limit).
    left_usage: Cell<i64>,
    /// Requests it may still carry.
    left_requests: Cell<i64>,
    /// When it stops taking new requests.
    unreusable_at: Option<Instant>,
}

impl MuxConn {
    fn reusable(&self, now: Instant) -> bool {
        !self.state.dead.get()
            && self.left_usage.get() != 0
            && self.left_requests.get() > 0
            && self.unreusable_at.is_none_or(|t| now < t)
    }
}

/// What a connection's driver task shares with its users.
struct MuxState {
    dead: Cell<bool>,
    /// Sessions on it now (for `maxConcurrency`).
    running: Cell<u32>,
    /// Requests in flight on it now, of every kind: a session's GET and streaming POST, and
    /// packet-up POSTs, which may go on a connection no session of theirs runs on.
    requests: Cell<u32>,
    /// When a request last started or ended.
    idle_since: Cell<Instant>,
}

impl MuxState {
    /// Whether it has carried no request for `bound`.
    fn idle_for(&self, bound: Duration) -> bool {
        self.requests.get() == 0 && self.idle_since.get().elapsed() >= bound
    }
}

/// Counts a request in flight on its connection while held.
struct InFlight(Rc<MuxState>);

impl InFlight {
    fn new(state: &Rc<MuxState>) -> InFlight {
        state.requests.set(state.requests.get() + 1);
        state.idle_since.set(Instant::now());
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.set(self.0.requests.get() - 1);
        self.0.idle_since.set(Instant::now());
    }
}

/// Counts a session on its connection while held.
struct Running(Rc<MuxConn>);

impl Running {
    fn new(conn: &Rc<MuxConn>) -> Running {
        conn.state.running.set(conn.state.running.get() + 1);
        Running(conn.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let state = &self.0.state;
        state.running.set(state.running.get() - 1);
    }
}

// === impl XhttpStream ===

/// One XHTTP session: reads are the downlink response's body, writes the uplink.
pub(crate) struct XhttpStream {
    down: Down,
    up: Up,
    _sessions: Vec<Running>,
    /// Its HTTP/2 requests, in flight while the session lives.
    _requests: Vec<InFlight>,
}

enum Down {
    H1(Box<H1Conn>),
    H2(Box<H2Body>),
}

enum Up {
    /// stream-one over HTTP/1.1: the request body on the downlink's connection.
    SameConn,
    /// stream-up over HTTP/1.1: a chunked POST on a connection of its own, whose response is
    /// only checked.
    H1(Box<H1Conn>),
    /// A streaming POST over HTTP/2 (and, for stream-up, its response to check).
    H2(Box<H2Upload>),
    /// packet-up: a queue that a task empties into numbered POSTs.
    Packets(Rc<Uploader>),
}

impl AsyncRead for XhttpStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // The uplink's response says only whether the server took it: read and dropped here,
        // an error ending the session.
        match &mut this.up {
            Up::H1(conn) => conn.poll_discard(cx)?,
            Up::H2(upload) => upload.poll_discard(cx)?,
            Up::Packets(queue) => {
                if let Some(e) = queue.failed.borrow_mut().take() {
                    return Poll::Ready(Err(e));
                }
                *queue.reader.borrow_mut() = Some(cx.waker().clone());
            }
            Up::SameConn => {}
        }
        match &mut this.down {
            Down::H1(conn) => conn.poll_body(cx, buf),
            Down::H2(body) => body.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for XhttpStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match &mut this.up {
            Up::SameConn => match &mut this.down {
                Down::H1(conn) => conn.poll_write_chunk(cx, data),
                Down::H2(_) => unreachable!("stream-one over HTTP/2 uploads on its stream"),
            },
            Up::H1(conn) => conn.poll_write_chunk(cx, data),
            Up::H2(upload) => upload.poll_write(cx, data),
            Up::Packets(queue) => queue.poll_write(cx, data),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match &mut this.up {
            Up::SameConn => match &mut this.down {
                Down::H1(conn) => conn.poll_flush(cx),
                Down::H2(_) => Poll::Ready(Ok(())),
            },
            Up::H1(conn) => conn.poll_flush(cx),
            Up::H2(upload) => upload.poll_drain(cx),
            Up::Packets(queue) => queue.poll_failed(),
        }
    }

    /// Ends the uplink (the last chunk, the end of the stream; for packet-up, what is queued
    /// still goes); the downlink reads on until the server ends it.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match &mut this.up {
            Up::SameConn => match &mut this.down {
                Down::H1(conn) => conn.poll_end_body(cx),
                Down::H2(_) => Poll::Ready(Ok(())),
            },
            Up::H1(conn) => conn.poll_end_body(cx),
            Up::H2(upload) => upload.poll_end(cx),
            Up::Packets(queue) => {
                queue.closed.set(true);
                queue.wake_uploader();
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl Drop for XhttpStream {
    fn drop(&mut self) {
        if let Up::Packets(queue) = &self.up {
            queue.cancelled.set(true);
            queue.wake_uploader();
        }
    }
}

// === HTTP/1.1 connections ===

/// Where reading a response stands.
enum H1Read {
    Head,
    Fixed(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// One HTTP/1.1 connection of a session: its response read as it comes, a request body
/// written as the session writes.
struct H1Conn {
    io: Upstream,
    read: H1Read,
    /// Response bytes read but not yet consumed (the head's, then what came with it).
    raw: Vec<u8>,
    raw_pos: usize,
    /// Bytes to write, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// The request body has ended (its last chunk queued).
    ended: bool,
}

impl H1Conn {
    fn new(io: Upstream) -> H1Conn {
        H1Conn { io, read: H1Read::Head, raw: Vec::new(), raw_pos: 0, out: Vec::new(), out_pos: 0, ended: false }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_pos..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.out_pos += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Sends `data` as one chunk of the request body.
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = data.len().min(MAX_WRITE);
        encode_chunk_header(n, &mut self.out);
        self.out.extend_from_slice(&data[..n]);
        self.out.extend_from_slice(CHUNK_END);
        // The chunk is ours now: what does not go out at once goes with the next call.
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    /// Ends the request body with the last chunk; the connection stays open for the response.
    fn poll_end_body(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !std::mem::replace(&mut self.ended, true) {
            ready!(self.poll_drain(cx))?;
            self.out.extend_from_slice(LAST_CHUNK);
        }
        self.poll_flush(cx)
    }

    /// Raw response bytes into `buf`: those read with the head first, then the socket's.
    fn poll_raw(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.raw_pos < self.raw.len() {
            let n = buf.len().min(self.raw.len() - self.raw_pos);
            buf[..n].copy_from_slice(&self.raw[self.raw_pos..self.raw_pos + n]);
            self.raw_pos += n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }

    /// Reads the response head (which must be `200`), then its body into `buf`; 0 at its end.
    fn poll_body(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            match &mut self.read {
                H1Read::Done => return Poll::Ready(Ok(0)),
                H1Read::Head => {
                    let head = match ResponseHead::parse(&self.raw) {
                        Ok(head) => head,
                        Err(HttpError::UnexpectedEnd) if self.raw.len() < MAX_HEAD => {
                            let mut chunk = [0u8; 4096];
                            let n = ready!(Pin::new(&mut self.io).poll_read(cx, &mut chunk))?;
                            if n == 0 {
                                return Poll::Ready(Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "XHTTP server closed before its response",
                                )));
                            }
                            self.raw.extend_from_slice(&chunk[..n]);
                            continue;
                        }
                        Err(e) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
                    };
                    if head.status != 200 {
                        return Poll::Ready(Err(refused_status(head.status)));
                    }
                    self.raw_pos = head.head_len;
                    self.read = match head.body {
                        BodyLength::Fixed(0) => H1Read::Done,
                        BodyLength::Fixed(n) => H1Read::Fixed(n),
                        BodyLength::Chunked => H1Read::Chunked(ChunkedDecoder::new()),
                        BodyLength::UntilClose => H1Read::UntilClose,
                    };
                }
                H1Read::Fixed(left) => {
                    let left = *left;
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = ready!(self.poll_raw(cx, &mut buf[..want]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    self.read = match left - n as u64 {
                        0 => H1Read::Done,
                        rest => H1Read::Fixed(rest),
                    };
                    return Poll::Ready(Ok(n));
                }
                H1Read::UntilClose => {
                    let n = ready!(self.poll_raw(cx, buf))?;
                    if n == 0 {
                        self.read = H1Read::Done;
                    }
                    return Poll::Ready(Ok(n));
                }
                H1Read::Chunked(_) => {
                    let n = ready!(self.poll_raw(cx, buf))?;
                    let H1Read::Chunked(decoder) = &mut self.read else { unreachable!() };
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "XHTTP response ended inside its chunked body",
                        )));
                    }
                    let decoded =
                        decoder.decode(&mut buf[..n]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    if decoder.is_done() {
                        self.read = H1Read::Done;
                    }
                    if decoded.payload > 0 {
                        return Poll::Ready(Ok(decoded.payload));
                    }
                }
            }
        }
    }

    /// Reads and drops what the response carries, failing on a refusal; pending at its end.
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let mut scratch = [0u8; 2048];
        loop {
            match self.poll_body(cx, &mut scratch) {
                Poll::Ready(Ok(0)) | Poll::Pending => return Ok(()),
                Poll::Ready(Ok(_)) => {}
                // The server may close the uplink's connection once the session ends.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Poll::Ready(Err(e)) => return Err(e),
            }
        }
    }

    /// Back at the start of the next response on the same connection (keep-alive), keeping
    /// bytes that came after this one's end.
    fn next_response(&mut self) {
        self.raw.drain(..self.raw_pos);
        self.raw_pos = 0;
        self.read = H1Read::Head;
    }
}

fn refused_status(status: u16) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, format!("XHTTP server answered HTTP {status}"))
}

// === HTTP/2 streams ===

/// A response on an HTTP/2 stream: its head (which must be `200`), then its body.
enum H2Body {
    Head(h2::client::ResponseFuture),
    Body { body: RecvStream, chunk: Bytes },
    Done,
}

impl H2Body {
    fn new(response: h2::client::ResponseFuture) -> H2Body {
        H2Body::Head(response)
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            match self {
                H2Body::Done => return Poll::Ready(Ok(0)),
                H2Body::Head(response) => {
                    let response: Response<RecvStream> = ready!(Pin::new(response).poll(cx)).map_err(h2_error)?;
                    if response.status() != StatusCode::OK {
                        let status = response.status().as_u16();
                        *self = H2Body::Done;
                        return Poll::Ready(Err(refused_status(status)));
                    }
                    *self = H2Body::Body { body: response.into_body(), chunk: Bytes::new() };
                }
                H2Body::Body { body, chunk } => {
                    if !chunk.is_empty() {
                        let n = buf.len().min(chunk.len());
                        buf[..n].copy_from_slice(&chunk[..n]);
                        chunk.advance(n);
                        let _ = body.flow_control().release_capacity(n);
                        return Poll::Ready(Ok(n));
                    }
                    if buf.is_empty() {
                        return Poll::Ready(Ok(0));
                    }
                    match ready!(body.poll_data(cx)) {
                        Some(Ok(data)) => *chunk = data,
                        Some(Err(e)) => {
                            *self = H2Body::Done;
                            return Poll::Ready(Err(h2_error(e)));
                        }
                        None => *self = H2Body::Done,
                    }
                }
            }
        }
    }
}

/// A streaming request body on an HTTP/2 stream, sent as the peer's window allows.
struct H2Upload {
    send: SendStream<Bytes>,
    /// What a write handed over and the window has not taken yet.
    pending: Bytes,
    /// stream-up's POST response, read only to see it is not a refusal.
    response: Option<H2Body>,
    ended: bool,
}

impl H2Upload {
    fn new(send: SendStream<Bytes>, response: Option<H2Body>) -> H2Upload {
        H2Upload { send, pending: Bytes::new(), response, ended: false }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_send(&mut self.send, &mut self.pending, cx)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = data.len().min(MAX_WRITE);
        self.pending = Bytes::copy_from_slice(&data[..n]);
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        if !std::mem::replace(&mut self.ended, true) {
            self.send.send_data(Bytes::new(), true).map_err(h2_error)?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_discard(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(response) = &mut self.response else {
            return Ok(());
        };
        let mut scratch = [0u8; 2048];
        loop {
            match response.poll_read(cx, &mut scratch) {
                Poll::Ready(Ok(0)) | Poll::Pending => return Ok(()),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(e),
                // A reset uplink stream after the session's end is no news.
                Poll::Ready(Err(_)) => {
                    self.response = None;
                    return Ok(());
                }
            }
        }
    }
}

/// Hands `pending` to `h2` as the stream's send window allows.
fn poll_send(send: &mut SendStream<Bytes>, pending: &mut Bytes, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    while !pending.is_empty() {
        let want = pending.len();
        if send.capacity() < want {
            send.reserve_capacity(want);
        }
        let room = send.capacity();
        if room == 0 {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        let piece = pending.split_to(room.min(want));
        send.send_data(piece, false).map_err(h2_error)?;
    }
    Poll::Ready(Ok(()))
}

// === packet-up ===

/// packet-up's uplink: what the session wrote, waiting for the task that POSTs it.
struct Uploader {
    /// At most `limit` bytes: the next POST's payload.
    queued: RefCell<Vec<u8>>,
    limit: usize,
    /// The session closed its uplink (what is queued still goes) or went away (nothing more).
    closed: Cell<bool>,
    cancelled: Cell<bool>,
    /// Why the uplink failed, for the session's next read or write.
    failed: RefCell<Option<io::Error>>,
    broken: Cell<bool>,
    writer: RefCell<Option<Waker>>,
    reader: RefCell<Option<Waker>>,
    uploader: RefCell<Option<Waker>>,
    /// The HTTP/2 connection the last POST went on.
    conn: RefCell<Option<Rc<MuxConn>>>,
}

impl Uploader {
    /// The queue of a new session, and the task that empties it.
    fn spawn(client: Rc<Client>, server: Destination, via: Via, session: String) -> Rc<Uploader> {
        let limit = draw(client.settings.max_each_post_bytes).max(1) as usize;
        let queue = Rc::new(Uploader {
            queued: RefCell::new(Vec::new()),
            limit,
            closed: Cell::new(false),
            cancelled: Cell::new(false),
            failed: RefCell::new(None),
            broken: Cell::new(false),
            writer: RefCell::new(None),
            reader: RefCell::new(None),
            uploader: RefCell::new(None),
            conn: RefCell::new(None),
        });
        let task_queue = queue.clone();
        glommio::spawn_local(async move {
            if let Err(e) = upload(&client, &task_queue, &server, &via, &session).await {
                task_queue.fail(e);
            }
        })
        .detach();
        queue
    }

    fn wake_uploader(&self) {
        if let Some(w) = self.uploader.borrow_mut().take() {
            w.wake();
        }
    }

    fn fail(&self, e: io::Error) {
        self.broken.set(true);
        *self.failed.borrow_mut() = Some(e);
        for waker in [&self.writer, &self.reader] {
            if let Some(w) = waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    fn poll_failed(&self) -> Poll<io::Result<()>> {
        match self.broken.get() {
            true => {
                Poll::Ready(Err(self.failed.borrow_mut().take().unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())))
            }
            false => Poll::Ready(Ok(())),
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_failed())?;
        if self.closed.get() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let mut queued = self.queued.borrow_mut();
        let room = self.limit.saturating_sub(queued.len());
        if room == 0 {
            *self.writer.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        queued.extend_from_slice(&data[..n]);
        drop(queued);
        self.wake_uploader();
        Poll::Ready(Ok(n))
    }

    /// The next POST's payload: what is queued, once there is some (`None` when the uplink
    /// is over).
    async fn next(&self) -> Option<Vec<u8>> {
        futures_lite::future::poll_fn(|cx| {
            if self.cancelled.get() {
                return Poll::Ready(None);
            }
            let mut queued = self.queued.borrow_mut();
            if !queued.is_empty() {
                let payload = std::mem::take(&mut *queued);
                drop(queued);
                if let Some(w) = self.writer.borrow_mut().take() {
                    w.wake();
                }
                return Poll::Ready(Some(payload));
            }
            if self.closed.get() {
                return Poll::Ready(None);
            }
            *self.uploader.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Empties `queue` into POSTs numbered from 0, each started at least `scMinPostsIntervalMs`
/// after the one before, until the session closes its uplink or goes away.
async fn upload(
    client: &Rc<Client>,
    queue: &Rc<Uploader>,
    server: &Destination,
    via: &Via,
    session: &str,
) -> io::Result<()> {
    let mut h1: Option<H1Conn> = None;
    let mut last: Option<Instant> = None;
    let mut seq = 0u64;
    while let Some(payload) = queue.next().await {
        let interval = Duration::from_millis(u64::from(draw(client.settings.min_posts_interval_ms)));
        if let Some(wait) = last.and_then(|t| interval.checked_sub(t.elapsed())) {
            glommio::timer::sleep(wait).await;
        }
        if queue.cancelled.get() {
            break;
        }
        last = Some(Instant::now());
        let (request, body) = client.packet(session, seq, payload);
        seq += 1;
        match client.h2 {
            true => post_h2(client, queue, server, via, request, body).await?,
            false => post_h1(client, &mut h1, server, via, &request, &body).await?,
        }
    }
    Ok(())
}

/// One packet-up request over HTTP/2 on the XMUX connection the session was using, or the next
/// one once that is used up. Its answer is awaited on a task of its own, as Xray does not
/// wait for it before the next POST.
async fn post_h2(
    client: &Rc<Client>,
    queue: &Rc<Uploader>,
    server: &Destination,
    via: &Via,
    request: Outgoing,
    payload: Vec<u8>,
) -> io::Result<()> {
    let current = queue.conn.borrow().clone().filter(|c| c.reusable(Instant::now()));
    let conn = match current {
        Some(c) => c,
        None => {
            let c = client.mux(server, via).await?;
            *queue.conn.borrow_mut() = Some(c.clone());
            c
        }
    };
    let request = client.h2_request(request)?;
    let (response, mut send, in_flight) = client.h2_send(&conn, request, payload.is_empty()).await?;
    let mut pending = Bytes::from(payload);
    if !pending.is_empty() {
        futures_lite::future::poll_fn(|cx| poll_send(&mut send, &mut pending, cx)).await?;
        send.send_data(Bytes::new(), true).map_err(h2_error)?;
    }
    let queue = queue.clone();
    glommio::spawn_local(async move {
        // The connection is in use until the answer is in.
        let _in_flight = in_flight;
        let mut body = H2Body::new(response);
        let mut scratch = [0u8; 512];
        loop {
            match futures_lite::future::poll_fn(|cx| body.poll_read(cx, &mut scratch)).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    queue.fail(e);
                    break;
                }
            }
        }
    })
    .detach();
    Ok(())
}

/// One packet-up request over HTTP/1.1 on the session's uplink connection (kept alive between
/// POSTs; a new one when the server closed it), its answer read before the next.
async fn post_h1(
    client: &Client,
    conn: &mut Option<H1Conn>,
    server: &Destination,
    via: &Via,
    request: &Outgoing,
    payload: &[u8],
) -> io::Result<()> {
    let mut request = client.h1_head(request);
    request.extend_from_slice(payload);
    loop {
        let (mut c, reused) = match conn.take() {
            Some(c) => (c, true),
            None => (H1Conn::new(dial_http(&client.tls, false, server, via).await?), false),
        };
        c.out.clone_from(&request);
        let sent = futures_lite::future::poll_fn(|cx| c.poll_flush(cx)).await;
        let answered = match sent {
            Ok(()) => {
                let mut scratch = [0u8; 512];
                loop {
                    match futures_lite::future::poll_fn(|cx| c.poll_body(cx, &mut scratch)).await {
                        Ok(0) => break Ok(()),
                        Ok(_) => {}
                        Err(e) => break Err(e),
                    }
                }
            }
            Err(e) => Err(e),
        };
        match answered {
            Ok(()) => {
                c.next_response();
                *conn = Some(c);
                return Ok(());
            }
            // A kept-alive connection the server closed meanwhile: once more on a new one.
            Err(e) if reused && c.raw.is_empty() && e.kind() != io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
