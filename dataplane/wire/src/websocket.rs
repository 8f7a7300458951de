//! The HTTP transports of V2Ray and Xray, no IO: the WebSocket (RFC 6455) and HTTPUpgrade
//! upgrade request and its `101` answer (paths, hosts, early data, a trusted
//! `X-Forwarded-For`), and WebSocket frames (header encode and decode, masking in place, the
//! close/ping/pong control frames). HTTPUpgrade carries raw bytes after its heads.

use std::net::IpAddr;

use base64::Engine as _;
use sha1::{Digest, Sha1};

pub use crate::http_header::ErrorResponse;

/// The longest request or response head read, as Xray's WebSocket server allows.
pub const MAX_HEAD_LEN: usize = 8192;

/// The longest data frame payload accepted; a longer frame closes the connection.
pub const MAX_FRAME_LEN: u64 = 16 << 20;

/// The longest control frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_LEN: usize = 125;

/// The longest frame header: 2 bytes, a 64-bit length and a mask.
pub const MAX_FRAME_HEADER_LEN: usize = 14;

const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Which of the two transports a head belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `ws`: a real WebSocket (key, accept, frames).
    WebSocket,
    /// `httpupgrade`: the WebSocket upgrade heads, then raw bytes.
    HttpUpgrade,
}

/// What a server accepts (`wsSettings` / `httpupgradeSettings`).
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    /// The path, normalized (starts with `/`, no query).
    pub path: &'a str,
    /// The host the request must name (without its port); empty accepts any.
    pub host: &'a str,
    /// The `?ed=` of the path: early data may also follow the path itself, as sing-box sends
    /// it when its early-data header name is empty.
    pub early_data: u32,
    /// `sockopt.trustedXForwardedFor`: header names whose presence makes `X-Forwarded-For`
    /// (else `X-Real-IP`) the client's address.
    pub trusted: &'a [String],
}

/// Why a server refused an upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeError {
    /// The head has not ended yet: read more.
    UnexpectedEnd,
    /// No blank line within [`MAX_HEAD_LEN`] bytes.
    TooLong,
    /// Not an HTTP/1.x request head.
    Malformed,
    /// Another path than the endpoint's.
    BadPath,
    /// Another host than the endpoint's.
    BadHost,
    /// Not a `GET` with `Connection: Upgrade` and `Upgrade: websocket` (and, for WebSocket,
    /// a `Sec-WebSocket-Key` and version 13).
    NotUpgrade,
}

impl UpgradeError {
    /// What the server answers before it closes, as Xray does (404 for a path or host it does
    /// not serve, 400 for the rest).
    pub fn response(self) -> ErrorResponse {
        match self {
            UpgradeError::BadPath | UpgradeError::BadHost => ErrorResponse::NotFound,
            _ => ErrorResponse::BadRequest,
        }
    }
}

impl UpgradeError {
    /// The reason, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeError::UnexpectedEnd => "HTTP head truncated",
            UpgradeError::TooLong => "HTTP head too long",
            UpgradeError::Malformed => "not an HTTP request head",
            UpgradeError::BadPath => "bad path",
            UpgradeError::BadHost => "bad host",
            UpgradeError::NotUpgrade => "not a WebSocket upgrade",
        }
    }
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for UpgradeError {}

/// An upgrade request the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The request head's length; the bytes after it are the tunnel's.
    pub head_len: usize,
    /// Early data the request carried (in `Sec-WebSocket-Protocol` or after the path).
    pub early: Vec<u8>,
    /// The `101` to send back.
    pub response: Vec<u8>,
    /// The client's address from `X-Forwarded-For` / `X-Real-IP`, when a trusted header is
    /// present and the value is an IP.
    pub forwarded: Option<IpAddr>,
    /// An `X-Forwarded-For` came without a trusted header and was ignored (worth a log line).
    pub untrusted_forward: bool,
}

/// Server side: checks the upgrade request at the front of `buf`.
pub fn accept(flavor: Flavor, endpoint: &Endpoint<'_>, buf: &[u8]) -> Result<Accepted, UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; crate::http::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_LEN => len,
        Ok(httparse::Status::Complete(_)) => return Err(UpgradeError::TooLong),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => return Err(UpgradeError::TooLong),
        Ok(httparse::Status::Partial) => return Err(UpgradeError::UnexpectedEnd),
        Err(httparse::Error::TooManyHeaders) => return Err(UpgradeError::TooLong),
        Err(_) => return Err(UpgradeError::Malformed),
    };
    let header = |name: &str| {
        req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let target = req.path.ok_or(UpgradeError::Malformed)?;
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let host = header("host").unwrap_or("");
    if !endpoint.host.is_empty() && !host_matches(host, endpoint.host) {
        return Err(UpgradeError::BadHost);
    }
    let mut early = Vec::new();
    if path != endpoint.path {
        // sing-box with an empty early-data header name: the early data follows the path.
        let suffix = path.strip_prefix(endpoint.path).filter(|_| endpoint.early_data > 0);
        match suffix.and_then(decode_early) {
            Some(data) => early = data,
            None => return Err(UpgradeError::BadPath),
        }
    }
    let is_upgrade = req.method == Some("GET")
        && header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && header("connection").is_some_and(|c| c.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if !is_upgrade {
        return Err(UpgradeError::NotUpgrade);
    }
    let mut response = Vec::with_capacity(160);
    response.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
    if flavor == Flavor::WebSocket {
        let key = header("sec-websocket-key").filter(|k| !k.is_empty()).ok_or(UpgradeError::NotUpgrade)?;
        if header("sec-websocket-version") != Some("13") {
            return Err(UpgradeError::NotUpgrade);
        }
        response.extend_from_slice(b"Sec-WebSocket-Accept: ");
        response.extend_from_slice(&accept_key(key));
        response.extend_from_slice(b"\r\n");
        // Xray's early data: the protocol header, echoed when it decodes.
        if let Some(protocol) = header("sec-websocket-protocol").filter(|p| !p.is_empty()) {
            if let Some(data) = decode_early(protocol) {
                early = data;
                response.extend_from_slice(b"Sec-WebSocket-Protocol: ");
                response.extend_from_slice(protocol.as_bytes());
                response.extend_from_slice(b"\r\n");
            }
        }
    }
    response.extend_from_slice(b"\r\n");
    let forwarded_for = header("x-forwarded-for").filter(|v| !v.is_empty());
    let trusted = endpoint.trusted.iter().any(|t| header(t).is_some());
    let forwarded = if trusted {
        let first = forwarded_for.map(|v| v.split(',').next().unwrap_or(v)).or_else(|| header("x-real-ip"));
        first.and_then(|v| parse_ip(v.trim()))
    } else {
        None
    };
    Ok(Accepted { head_len, early, response, forwarded, untrusted_forward: !trusted && forwarded_for.is_some() })
}

/// `Host` against the endpoint's host, as Xray compares them: case-insensitive, the port
/// left out.
fn host_matches(request: &str, config: &str) -> bool {
    let bare = if let Some(rest) = request.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if request.matches(':').count() == 1 {
        request.split(':').next().unwrap_or(request)
    } else {
        request
    };
    bare.eq_ignore_ascii_case(config)
}

/// An IP in a forwarding header (IPv6 possibly in brackets, a port possibly after it).
fn parse_ip(v: &str) -> Option<IpAddr> {
    if let Ok(ip) = v.parse() {
        return Some(ip);
    }
    if let Ok(sa) = v.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    v.strip_prefix('[').and_then(|r| r.strip_suffix(']')).and_then(|r| r.parse().ok())
}

/// Early data in base64url without padding; standard base64 accepted, as Xray does.
fn decode_early(text: &str) -> Option<Vec<u8>> {
    let cleaned: String = text
        .chars()
        .filter(|&c| c != '=')
        .map(|c| {
            if c == '+' {
                '-'
            } else if c == '/' {
                '_'
            } else {
                c
            }
        })
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cleaned).ok().filter(|d| !d.is_empty())
}

/// `Sec-WebSocket-Accept` for `key`.
pub fn accept_key(key: &str) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(ACCEPT_GUID);
    let mut out = [0u8; 28];
    let n = base64::engine::general_purpose::STANDARD.encode_slice(sha.finalize(), &mut out).unwrap_or(0);
    debug_assert_eq!(n, 28);
    out
}

/// What a client sends (an outbound's `wsSettings` / `httpupgradeSettings`).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The path, normalized.
    pub path: &'a str,
    /// The `Host` header.
    pub host: &'a str,
    /// Extra headers, in order.
    pub headers: &'a [(String, String)],
    /// The `Sec-WebSocket-Key` (16 random bytes, base64), for WebSocket.
    pub key: &'a str,
    /// `Sec-WebSocket-Protocol`, for WebSocket: early data (base64url) when some.
    pub protocol: Option<&'a str>,
}

/// The User-Agent a client sends when its headers name none (Xray sends a browser's).
pub const DEFAULT_USER_AGENT: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";

/// Client side: appends the upgrade request head.
pub fn write_request(flavor: Flavor, req: &Request<'_>, out: &mut Vec<u8>) {
    for part in ["GET ", req.path, " HTTP/1.1\r\nHost: ", req.host, "\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    if !req.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("user-agent")) {
        for part in ["User-Agent: ", DEFAULT_USER_AGENT, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    for (name, value) in req.headers {
        for part in [name.as_str(), ": ", value, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\n");
    if flavor == Flavor::WebSocket {
        for part in ["Sec-WebSocket-Key: ", req.key, "\r\nSec-WebSocket-Version: 13\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
        if let Some(protocol) = req.protocol {
            for part in ["Sec-WebSocket-Protocol: ", protocol, "\r\n"] {
                out.extend_from_slice(part.as_bytes());
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Why a client refused the server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// The head has not ended yet: read more.
    UnexpectedEnd,
    /// Longer than [`MAX_HEAD_LEN`], or not HTTP.
    Malformed,
    /// Not a `101` upgrading to websocket (with the right accept key, for WebSocket).
    Refused(u16),
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::UnexpectedEnd => f.write_str("response head truncated"),
            ResponseError::Malformed => f.write_str("not an HTTP response head"),
            ResponseError::Refused(code) => write!(f, "upgrade refused (status {code})"),
        }
    }
}

impl std::error::Error for ResponseError {}

/// Client side: checks the server's answer at the front of `buf` and returns its length.
pub fn read_response(flavor: Flavor, key: &str, buf: &[u8]) -> Result<usize, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; crate::http::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_LEN => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_LEN => return Err(ResponseError::UnexpectedEnd),
        _ => return Err(ResponseError::Malformed),
    };
    let code = resp.code.unwrap_or(0);
    let header = |name: &str| resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let upgraded = code == 101
        && header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case(b"websocket"))
        && header("connection").is_some_and(|c| c.eq_ignore_ascii_case(b"upgrade"));
    let accepted = flavor == Flavor::HttpUpgrade || header("sec-websocket-accept") == Some(&accept_key(key)[..]);
    if upgraded && accepted {
        Ok(len)
    } else {
        Err(ResponseError::Refused(code))
    }
}

// === frames ===

/// Frame opcodes (RFC 6455 §5.2).
pub mod opcode {
    /// A continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// A text message.
    pub const TEXT: u8 = 0x1;
    /// A binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Why a frame stream is broken; the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV bits set with no extension agreed.
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    UnknownOpcode(u8),
    /// A control frame longer than 125 bytes, or fragmented.
    BadControl,
    /// A continuation with no message to continue, or a new message inside a fragmented one.
    BadContinuation,
    /// A data frame longer than [`MAX_FRAME_LEN`].
    TooLong(u64),
    /// A client frame without a mask, or a server frame with one.
    BadMask,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::ReservedBits => f.write_str("reserved bits set"),
            FrameError::UnknownOpcode(o) => write!(f, "unknown opcode {o:#x}"),
            FrameError::BadControl => f.write_str("control frame too long or fragmented"),
            FrameError::BadContinuation => f.write_str("continuation out of place"),
            FrameError::TooLong(n) => write!(f, "frame of {n} bytes is too long"),
            FrameError::BadMask => f.write_str("masking does not match the side"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The final frame of its message.
    pub fin: bool,
    /// See [`opcode`].
    pub opcode: u8,
    /// The masking key (client frames).
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub len: u64,
}

impl FrameHeader {
    /// Decodes a header from the front of `buf`: the header and its length, or `Ok(None)`
    /// while `buf` holds only part of it. Only the header's own form is checked here.
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(FrameError::ReservedBits);
        }
        let opcode = b0 & 0x0F;
        if !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
            return Err(FrameError::UnknownOpcode(opcode));
        }
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7F {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 10),
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if opcode >= opcode::CLOSE && (len > MAX_CONTROL_LEN as u64 || !fin) {
            return Err(FrameError::BadControl);
        }
        let mask = if masked {
            if buf.len() < at + 4 {
                return Ok(None);
            }
            let m = buf[at..at + 4].try_into().expect("4 bytes");
            at += 4;
            Some(m)
        } else {
            None
        };
        Ok(Some((FrameHeader { fin, opcode, mask, len }, at)))
    }

    /// Appends the header.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(if self.fin { 0x80 } else { 0 } | self.opcode);
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        match self.len {
            n @ 0..=125 => out.push(mask_bit | n as u8),
            n @ 126..=0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        if let Some(m) = self.mask {
            out.extend_from_slice(&m);
        }
    }
}

/// XORs `data` with `mask`, `offset` bytes into the frame's payload (masking and unmasking
/// are the same operation).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let rot = mask_rotated(mask, offset);
    let word = u64::from(u32::from_ne_bytes(rot)) | (u64::from(u32::from_ne_bytes(rot)) << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rot[i % 4];
    }
}

fn mask_rotated(mask: [u8; 4], offset: usize) -> [u8; 4] {
    let k = offset % 4;
    [mask[k], mask[(k + 1) % 4], mask[(k + 2) % 4], mask[(k + 3) % 4]]
}

/// Appends one binary frame carrying `payload` (masked with `mask` for a client).
pub fn encode_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    FrameHeader { fin: true, opcode, mask, len: payload.len() as u64 }.encode(out);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m, 0);
    }
}

/// Turns a frame stream back into payload bytes, in place: [`Deframer::unframe`] takes what
/// was read, drops frame headers, unmasks, and keeps only data payload at the front. Control
/// frames are handled here: a ping leaves a pong to send, a close ends the stream.
#[derive(Debug, Clone)]
pub struct Deframer {
    /// Whether frames must be masked (a server reading a client) or must not be.
    expect_masked: bool,
    /// What is left of the current frame's payload.
    remaining: u64,
    /// The current frame's mask and how far into its payload we are.
    mask: Option<[u8; 4]>,
    offset: usize,
    /// The current frame's opcode.
    opcode: u8,
    /// A data message's frames are still to come (its last had no FIN).
    fragmented: bool,
    /// A header split across reads.
    head: [u8; MAX_FRAME_HEADER_LEN],
    head_len: usize,
    /// A control frame's payload, gathered.
    control: [u8; MAX_CONTROL_LEN],
    control_len: usize,
    /// The payload of the last ping, to answer.
    pong: Option<([u8; MAX_CONTROL_LEN], usize)>,
    /// The peer's close frame's code (1005 when it gave none), once seen.
    closed: Option<u16>,
}

impl Deframer {
    /// A deframer for the server side (`expect_masked`) or the client side.
    pub fn new(expect_masked: bool) -> Deframer {
        Deframer {
            expect_masked,
            remaining: 0,
            mask: None,
            offset: 0,
            opcode: 0,
            fragmented: false,
            head: [0; MAX_FRAME_HEADER_LEN],
            head_len: 0,
            control: [0; MAX_CONTROL_LEN],
            control_len: 0,
            pong: None,
            closed: None,
        }
    }

    /// The peer's close code, once its close frame has arrived; bytes after it are ignored.
    pub fn closed(&self) -> Option<u16> {
        self.closed
    }

    /// The payload of a ping still to answer, taken.
    pub fn take_pong(&mut self) -> Option<Vec<u8>> {
        self.pong.take().map(|(p, n)| p[..n].to_vec())
    }

    /// Processes `data` (bytes just read): data payload, unmasked, is moved to the front and
    /// its length returned; the rest is consumed.
    pub fn unframe(&mut self, data: &mut [u8]) -> Result<usize, FrameError> {
        let mut read = 0;
        let mut written = 0;
        while read < data.len() && self.closed.is_none() {
            if self.remaining == 0 {
                // A header, perhaps continued from the last read.
                let take = (MAX_FRAME_HEADER_LEN - self.head_len).min(data.len() - read);
                let mut head = [0u8; MAX_FRAME_HEADER_LEN];
                head[..self.head_len].copy_from_slice(&self.head[..self.head_len]);
                head[self.head_len..self.head_len + take].copy_from_slice(&data[read..read + take]);
                match FrameHeader::decode(&head[..self.head_len + take])? {
                    None => {
                        self.head = head;
                        self.head_len += take;
                        read += take;
                        continue;
                    }
                    Some((h, len)) => {
                        read += len - self.head_len;
                        self.head_len = 0;
                        self.start(h)?;
                        if h.len == 0 {
                            self.finish();
                        }
                        continue;
                    }
                }
            }
            let n = (self.remaining.min((data.len() - read) as u64)) as usize;
            let chunk = &mut data[read..read + n];
            if let Some(m) = self.mask {
                apply_mask(chunk, m, self.offset);
            }
            if self.opcode >= opcode::CLOSE {
                self.control[self.control_len..self.control_len + n].copy_from_slice(chunk);
                self.control_len += n;
            } else {
                data.copy_within(read..read + n, written);
                written += n;
            }
            read += n;
            self.offset += n;
            self.remaining -= n as u64;
            if self.remaining == 0 {
                self.finish();
            }
        }
        Ok(written)
    }

    fn start(&mut self, h: FrameHeader) -> Result<(), FrameError> {
        if h.mask.is_some() != self.expect_masked {
            return Err(FrameError::BadMask);
        }
        match h.opcode {
            opcode::CONTINUATION if !self.fragmented => return Err(FrameError::BadContinuation),
            opcode::TEXT | opcode::BINARY if self.fragmented => return Err(FrameError::BadContinuation),
            opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {
                if h.len > MAX_FRAME_LEN {
                    return Err(FrameError::TooLong(h.len));
                }
                self.fragmented = !h.fin;
            }
            _ => {}
        }
        self.opcode = h.opcode;
        self.mask = h.mask;
        self.offset = 0;
        self.remaining = h.len;
        self.control_len = 0;
        Ok(())
    }

    /// A frame's payload is complete: act on a control frame.
    fn finish(&mut self) {
        match self.opcode {
            opcode::PING => {
                let mut p = [0u8; MAX_CONTROL_LEN];
                p[..self.control_len].copy_from_slice(&self.control[..self.control_len]);
                self.pong = Some((p, self.control_len));
            }
            opcode::CLOSE => {
                self.closed = Some(if self.control_len >= 2 {
                    u16::from_be_bytes([self.control[0], self.control[1]])
                } else {
                    1005
                });
            }
            _ => {}
        }
        // The next bytes start a header.
        self.opcode = opcode::CONTINUATION;
        self.control_len = 0;
    }
}

/// The payload of a close frame answering `code` (1005, "no code", is answered with 1000).
pub fn close_payload(code: u16) -> [u8; 2] {
    let code = if code == 1005 || code == 1006 { 1000 } else { code };
    code.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint<'a>(path: &'a str, early: u32, trusted: &'a [String]) -> Endpoint<'a> {
        Endpoint { path, host: "", early_data: early, trusted }
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn rfc_accept_key() {
        assert_eq!(&accept_key(KEY), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    fn ws_request(path: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: a.example:443\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn accepts_paths_hosts_and_early_data() {
        let req = ws_request("/ws?x=1", "");
        let a = accept(Flavor::WebSocket, &endpoint("/ws", 0, &[]), &req).unwrap();
        assert_eq!(a.head_len, req.len());
        assert!(a.early.is_empty());
        let resp = String::from_utf8(a.response).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));

        assert_eq!(accept(Flavor::WebSocket, &endpoint("/other", 0, &[]), &req), Err(UpgradeError::BadPath));
        let host = Endpoint { host: "A.example", ..endpoint("/ws", 0, &[]) };
        assert!(accept(Flavor::WebSocket, &host, &req).is_ok());
        let host = Endpoint { host: "b.example", ..endpoint("/ws", 0, &[]) };
        assert_eq!(accept(Flavor::WebSocket, &host, &req), Err(UpgradeError::BadHost));
        assert_eq!(UpgradeError::BadHost.response(), ErrorResponse::NotFound);

        // Xray's early data: in the protocol header, echoed; standard base64 too.
        let req = ws_request("/ws", "Sec-WebSocket-Protocol: aGVsbG8_\r\n");
        let a = accept(Flavor::WebSocket, &endpoint("/ws", 0, &[]), &req).unwrap();
        assert_eq!(a.early, b"hello?");
        assert!(String::from_utf8(a.response).unwrap().contains("Sec-WebSocket-Protocol: aGVsbG8_\r\n"));
        let req = ws_request("/ws", "Sec-WebSocket-Protocol: aGVsbG8/\r\n");
        assert_eq!(accept(Flavor::WebSocket, &endpoint("/ws", 0, &[]), &req).unwrap().early, b"hello?");

        // sing-box's, after the path: only when the endpoint takes early data.
        let req = ws_request("/wsaGVsbG8", "");
        assert_eq!(accept(Flavor::WebSocket, &endpoint("/ws", 2048, &[]), &req).unwrap().early, b"hello");
        assert_eq!(accept(Flavor::WebSocket, &endpoint("/ws", 0, &[]), &req), Err(UpgradeError::BadPath));
        let req = ws_request("/ws!!", "");
        assert_eq!(accept(Flavor::WebSocket, &endpoint("/ws", 2048, &[]), &req), Err(UpgradeError::BadPath));
    }

    #[test]
    fn refuses_what_is_not_an_upgrade() {
        let e = endpoint("/", 0, &[]);
        assert_eq!(accept(Flavor::WebSocket, &e, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Err(UpgradeError::NotUpgrade));
        assert_eq!(accept(Flavor::WebSocket, &e, b"GET / HTTP/1.1\r\nHost: x\r\n"), Err(UpgradeError::UnexpectedEnd));
        assert_eq!(accept(Flavor::WebSocket, &e, b"\x16\x03\x01\x02\x00"), Err(UpgradeError::Malformed));
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD_LEN + 10, b'a');
        assert_eq!(accept(Flavor::WebSocket, &e, &long), Err(UpgradeError::TooLong));
        // HTTPUpgrade needs no key.
        let req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nVLESS";
        let a = accept(Flavor::HttpUpgrade, &e, req).unwrap();
        assert_eq!(&req[a.head_len..], b"VLESS");
        assert_eq!(accept(Flavor::WebSocket, &e, req), Err(UpgradeError::NotUpgrade));
    }

    #[test]
    fn forwarded_for_only_behind_a_trusted_header() {
        let trusted = vec!["X-From-Cdn".to_owned()];
        let req = ws_request("/", "X-Forwarded-For: 203.0.113.7, 10.0.0.1\r\n");
        let a = accept(Flavor::WebSocket, &endpoint("/", 0, &trusted), &req).unwrap();
        assert_eq!(a.forwarded, None);
        assert!(a.untrusted_forward);
        let a = accept(Flavor::WebSocket, &endpoint("/", 0, &[]), &req).unwrap();
        assert_eq!(a.forwarded, None);
        let req = ws_request("/", "X-Forwarded-For: 203.0.113.7, 10.0.0.1\r\nX-From-CDN: 1\r\n");
        let a = accept(Flavor::WebSocket, &endpoint("/", 0, &trusted), &req).unwrap();
        assert_eq!(a.forwarded, Some("203.0.113.7".parse().unwrap()));
        let req = ws_request("/", "X-Real-IP: 2001:db8::1\r\nX-From-CDN: 1\r\n");
        let a = accept(Flavor::WebSocket, &endpoint("/", 0, &trusted), &req).unwrap();
        assert_eq!(a.forwarded, Some("2001:db8::1".parse().unwrap()));
        let req = ws_request("/", "X-Forwarded-For: not-an-ip\r\nX-From-CDN: 1\r\n");
        assert_eq!(accept(Flavor::WebSocket, &endpoint("/", 0, &trusted), &req).unwrap().forwarded, None);
    }

    #[test]
    fn client_heads_round_trip() {
        let headers = vec![("X-A".to_owned(), "b".to_owned())];
        let mut out = Vec::new();
        let req = Request { path: "/p", host: "h.example", headers: &headers, key: KEY, protocol: None };
        write_request(Flavor::WebSocket, &req, &mut out);
        let e = Endpoint { host: "h.example", ..endpoint("/p", 0, &[]) };
        let a = accept(Flavor::WebSocket, &e, &out).unwrap();
        // Early data in Sec-WebSocket-Protocol, as our client sends it with `?ed=`, is read back.
        let mut with_early = Vec::new();
        let req = Request { protocol: Some("aGVsbG8"), ..req };
        write_request(Flavor::WebSocket, &req, &mut with_early);
        let early = accept(Flavor::WebSocket, &endpoint("/p", 2048, &[]), &with_early).unwrap();
        assert_eq!(early.early, b"hello");
        assert_eq!(read_response(Flavor::WebSocket, KEY, &a.response), Ok(a.response.len()));
        assert_eq!(read_response(Flavor::WebSocket, "other", &a.response), Err(ResponseError::Refused(101)));
        let mut bad = Vec::new();
        ErrorResponse::NotFound.write("now", &mut bad);
        assert_eq!(read_response(Flavor::HttpUpgrade, "", &bad), Err(ResponseError::Refused(404)));
        assert_eq!(read_response(Flavor::HttpUpgrade, "", b"HTTP/1.1 101 S"), Err(ResponseError::UnexpectedEnd));
    }

    #[test]
    fn mask_matches_bytewise_at_any_offset() {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let data: Vec<u8> = (0..100u8).collect();
        for offset in 0..8 {
            let mut fast = data.clone();
            apply_mask(&mut fast, mask, offset);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[(i + offset) % 4]).collect();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn frames_round_trip_in_any_split() {
        let mask = Some([1, 2, 3, 4]);
        let mut wire = Vec::new();
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        encode_frame(opcode::BINARY, b"hello", mask, &mut wire);
        encode_frame(opcode::PING, b"p!", mask, &mut wire);
        FrameHeader { fin: false, opcode: opcode::BINARY, mask, len: 0 }.encode(&mut wire);
        encode_frame(opcode::CONTINUATION, &big[..300], mask, &mut wire);
        encode_frame(opcode::BINARY, &big, mask, &mut wire);
        let mut expect = b"hello".to_vec();
        expect.extend_from_slice(&big[..300]);
        expect.extend_from_slice(&big);
        for split in [1, 2, 3, 7, 13, 100, 4096, wire.len()] {
            let mut d = Deframer::new(true);
            let mut got = Vec::new();
            let mut copy = wire.clone();
            for chunk in copy.chunks_mut(split) {
                let n = d.unframe(chunk).unwrap();
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(got, expect, "split {split}");
            assert_eq!(d.take_pong().as_deref(), Some(&b"p!"[..]));
            assert_eq!(d.closed(), None);
        }
        let mut close = Vec::new();
        encode_frame(opcode::CLOSE, &1001u16.to_be_bytes(), None, &mut close);
        encode_frame(opcode::BINARY, b"after", None, &mut close);
        let mut d = Deframer::new(false);
        assert_eq!(d.unframe(&mut close), Ok(0));
        assert_eq!(d.closed(), Some(1001));
    }

    #[test]
    fn broken_frames_are_errors() {
        let check = |bytes: &[u8], masked: bool| Deframer::new(masked).unframe(&mut bytes.to_vec());
        assert_eq!(check(&[0x82, 0x00], true), Err(FrameError::BadMask));
        assert_eq!(check(&[0x82, 0x80, 0, 0, 0, 0], false), Err(FrameError::BadMask));
        assert_eq!(check(&[0xC2, 0x00], false), Err(FrameError::ReservedBits));
        assert_eq!(check(&[0x83, 0x00], false), Err(FrameError::UnknownOpcode(3)));
        assert_eq!(check(&[0x09, 0x00], false), Err(FrameError::BadControl));
        assert_eq!(check(&[0x89, 126, 0, 200], false), Err(FrameError::BadControl));
        assert_eq!(check(&[0x80, 0x00], false), Err(FrameError::BadContinuation));
        assert_eq!(check(&[0x02, 0x00, 0x82, 0x00], false), Err(FrameError::BadContinuation));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(check(&huge, false), Err(FrameError::TooLong(u64::MAX)));
    }
}
