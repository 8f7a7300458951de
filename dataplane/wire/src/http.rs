//! Parses and writes HTTP/1.1 forward-proxy heads (CONNECT and absolute-URI requests), server
//! and client side, as Xray's `http` inbound and outbound speak them; no IO.
//!
//! Server flow for one connection:
//! 1. [`RequestHead::parse`] on the bytes received so far: `UnexpectedEnd` until the blank line
//!    that ends the head, [`HttpError::HeadTooLarge`] past [`MAX_HEAD_LEN`].
//! 2. With accounts configured, a missing or wrong [`RequestHead::auth`] is answered
//!    [`RESPONSE_AUTH_REQUIRED`] and the connection closed.
//! 3. [`RequestKind::Connect`]: send [`RESPONSE_CONNECTED`], dial the destination and relay;
//!    the bytes after `head_len` are the client's first payload.
//! 4. [`RequestKind::Forward`] (absolute URI): dial the destination, send it the rewritten head
//!    that `parse` left in the caller's buffer (origin form, hop-by-hop headers removed,
//!    `Connection: close`), then the request body as [`RequestHead::body`] frames it. Read the
//!    upstream response head with [`ResponseHead::forward`], which writes the head to send back
//!    (1xx heads pass through unchanged; parse again after them). If the upstream response
//!    cannot be read, send [`RESPONSE_UNAVAILABLE`].
//! 5. Keep-alive, as Xray does it: after a forwarded request whose response had a known length
//!    ([`ResponseHead::keep_alive`]), and only if the client sent `Proxy-Connection: keep-alive`
//!    ([`RequestHead::proxy_keep_alive`]), parse the next request head from the bytes after this
//!    request's body on the same client connection, to a new upstream connection.
//! 6. [`RequestKind::Origin`] (an origin-form request such as `GET /x` with a `Host` header) is
//!    not a proxy request: answer [`RESPONSE_BAD_REQUEST`] and close, unless the inbound sets
//!    `allowTransparent`, in which case treat it as `Forward` to the `Host` header's destination
//!    (port 80 by default; no destination means 400 all the same). The rewritten head is
//!    produced for `Origin` as well.
//!
//! Client flow: [`encode_connect`], then [`ResponseHead::parse`] until it is complete; anything
//! but status 200 is a refusal; the bytes after `head_len` already belong to the tunnel.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::addr::{Address, Destination};

/// The longest request or response head accepted (Xray reads heads through a buffer of its
/// `buf.Size`, 8 KiB).
pub const MAX_HEAD_LEN: usize = 8192;

/// The most header fields one head may carry.
pub const MAX_HEADERS: usize = 100;

/// The answer to a CONNECT once the server is ready to relay.
pub const RESPONSE_CONNECTED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// The answer to a request that is not a proxy request (no absolute URI, not CONNECT).
pub const RESPONSE_BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\nProxy-Connection: close\r\n\r\n";

/// The answer to a request without valid proxy credentials when the inbound has accounts.
pub const RESPONSE_AUTH_REQUIRED: &[u8] =
    b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"proxy\"\r\n\r\n";

/// The answer to a forwarded request whose upstream response could not be read.
pub const RESPONSE_UNAVAILABLE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nProxy-Connection: close\r\n\r\n";

/// Why a head could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// The head is not complete yet: read more and parse again from the start.
    UnexpectedEnd,
    /// No end of head within [`MAX_HEAD_LEN`] bytes.
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header fields.
    TooManyHeaders,
    /// Not HTTP/1.x syntax (a bad token, a bad version, a bad line ending).
    Malformed,
    /// The CONNECT target or the absolute URI's authority is not `host[:port]`.
    BadHost,
    /// A Content-Length that is not a number, Content-Length fields that disagree, or a
    /// Transfer-Encoding that does not end in chunked: the body cannot be framed.
    BadFraming,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HttpError::UnexpectedEnd => "http head truncated",
            HttpError::HeadTooLarge => "http head too large",
            HttpError::TooManyHeaders => "too many http headers",
            HttpError::Malformed => "malformed http head",
            HttpError::BadHost => "malformed proxy host",
            HttpError::BadFraming => "http body framing cannot be determined",
        })
    }
}

impl std::error::Error for HttpError {}

/// How the message body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// Exactly this many bytes (0 for a request with neither Content-Length nor
    /// Transfer-Encoding, and for 1xx, 204 and 304 responses).
    Fixed(u64),
    /// Chunked transfer coding: the body ends with the zero-size chunk and its trailers.
    Chunked,
    /// A response without a length: the body ends when the upstream closes.
    UntilClose,
}

/// What kind of request a head is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `CONNECT host:port`: a tunnel.
    Connect,
    /// An absolute URI (`GET http://host/path`): forward the rewritten head.
    Forward,
    /// An origin-form request (`GET /path`): not a proxy request (see the module doc on
    /// `allowTransparent`).
    Origin,
}

/// Credentials from `Proxy-Authorization: Basic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// The part before the first colon.
    pub username: String,
    /// The part after it.
    pub password: String,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// CONNECT, absolute URI, or origin form.
    pub kind: RequestKind,
    /// Where to go: the CONNECT target or the URI's authority (port 80, or 443 for `https`);
    /// for `Origin`, the `Host` header's destination when it has a valid one.
    pub destination: Option<Destination>,
    /// The head's length including the blank line; the body or the tunnel's payload follows.
    pub head_len: usize,
    /// The decoded `Proxy-Authorization: Basic` credentials; `None` if absent or malformed.
    pub auth: Option<BasicAuth>,
    /// Whether the client sent `Proxy-Connection: keep-alive` (Xray's only keep-alive signal).
    pub proxy_keep_alive: bool,
    /// How the request body is delimited.
    pub body: BodyLength,
}

/// Header fields removed when forwarding, besides those named in `Connection` (Xray's list;
/// "Trailers" is spelled as RFC 2616 section 13.5.1 spells it). Transfer-Encoding, which Xray
/// also removes, is kept: Xray's HTTP library writes the body framing back itself, while our
/// caller relays the body bytes as they came.
const HOP_BY_HOP: [&str; 7] =
    ["Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailers", "Upgrade", "Connection"];

/// Fields a `Connection` token may not remove because the relay depends on them.
const STRUCTURAL: [&str; 3] = ["Host", "Content-Length", "Transfer-Encoding"];

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}

fn is(name: &str, wanted: &str) -> bool {
    name.eq_ignore_ascii_case(wanted)
}

/// Runs httparse with the head-size bound; returns the head length.
fn complete(status: Result<httparse::Status<usize>, httparse::Error>, buf_len: usize) -> Result<usize, HttpError> {
    match status {
        Ok(httparse::Status::Complete(n)) => Ok(n),
        Ok(httparse::Status::Partial) if buf_len >= MAX_HEAD_LEN => Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Partial) => Err(HttpError::UnexpectedEnd),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooManyHeaders),
        Err(_) => Err(HttpError::Malformed),
    }
}

/// Reads Content-Length and Transfer-Encoding; `None` when neither is present.
fn framing(headers: &[httparse::Header<'_>]) -> Result<Option<BodyLength>, HttpError> {
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for h in headers {
        if is(h.name, "Content-Length") {
            let v = trim(h.value);
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::BadFraming);
            }
            let n = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).ok_or(HttpError::BadFraming)?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::BadFraming);
            }
            length = Some(n);
        } else if is(h.name, "Transfer-Encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().map(trim).unwrap_or_default();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        }
    }
    // Transfer-Encoding overrides Content-Length (RFC 9112 section 6.3).
    match (chunked, length) {
        (Some(true), _) => Ok(Some(BodyLength::Chunked)),
        (Some(false), _) => Err(HttpError::BadFraming),
        (None, Some(n)) => Ok(Some(BodyLength::Fixed(n))),
        (None, None) => Ok(None),
    }
}

/// Splits `host[:port]` (IPv6 in brackets) as Xray's `ParseHost` does: a missing or empty
/// port means `default_port`; an unbracketed IPv6 address is refused.
pub fn parse_host(raw: &[u8], default_port: u16) -> Result<Destination, HttpError> {
    let raw = std::str::from_utf8(raw).map_err(|_| HttpError::BadHost)?;
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let end = rest.find(']').ok_or(HttpError::BadHost)?;
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(HttpError::BadHost)?),
        };
        (&rest[..end], port)
    } else {
        match raw.split_once(':') {
            Some((_, p)) if p.contains(':') => return Err(HttpError::BadHost),
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    let port = match port {
        None | Some("") => default_port,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse().map_err(|_| HttpError::BadHost)?
        }
        Some(_) => return Err(HttpError::BadHost),
    };
    if host.is_empty() {
        return Err(HttpError::BadHost);
    }
    let addr = Address::parse(host).ok_or(HttpError::BadHost)?;
    Ok(Destination { addr, port })
}

/// Decodes a `Proxy-Authorization` value of the form `Basic base64(user:password)` (prefix
/// case-sensitive and padded standard base64, as Xray reads it); `None` if it is not one.
pub fn parse_basic_auth(value: &[u8]) -> Option<BasicAuth> {
    let encoded = trim(value).strip_prefix(b"Basic ")?;
    let decoded = STANDARD.decode(encoded).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let username = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    let password = String::from_utf8(decoded[colon + 1..].to_vec()).ok()?;
    Some(BasicAuth { username, password })
}

/// Appends `Proxy-Authorization: Basic ...` for the credentials, with its CRLF.
fn write_basic_auth(username: &str, password: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"Proxy-Authorization: Basic ");
    let plain = [username.as_bytes(), b":", password.as_bytes()].concat();
    out.extend_from_slice(STANDARD.encode(plain).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The absolute URI split into scheme, authority (userinfo dropped) and the rest.
fn split_absolute(target: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = target.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    Some((scheme, authority, &rest[end..]))
}

/// Writes the header fields to forward, dropping `Host`, the hop-by-hop fields and those named
/// in `Connection`.
fn write_end_to_end(headers: &[httparse::Header<'_>], out: &mut Vec<u8>) {
    let named: Vec<&[u8]> = headers
        .iter()
        .filter(|h| is(h.name, "Connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(trim)
        .filter(|t| !t.is_empty() && !STRUCTURAL.iter().any(|s| t.eq_ignore_ascii_case(s.as_bytes())))
        .collect();
    for h in headers {
        let drop = is(h.name, "Host")
            || HOP_BY_HOP.iter().any(|n| is(h.name, n))
            || named.iter().any(|t| t.eq_ignore_ascii_case(h.name.as_bytes()));
        if !drop {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(trim(h.value));
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl RequestHead {
    /// Parses a request head from the front of `buf` (the bytes received so far). For
    /// `Forward` and `Origin` requests, `forward` is cleared and receives the head to send
    /// upstream: origin-form target, the client's HTTP version, `Host` first (the URI's
    /// authority when there is one), the end-to-end fields in order, `Connection: close`.
    /// For CONNECT, and on any error, `forward` is left empty.
    pub fn parse(buf: &[u8], forward: &mut Vec<u8>) -> Result<RequestHead, HttpError> {
        forward.clear();
        let window = &buf[..buf.len().min(MAX_HEAD_LEN)];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = complete(req.parse(window), buf.len())?;
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
            return Err(HttpError::Malformed);
        };
        let headers = &*req.headers;

        let mut host_header = None;
        let mut auth = None;
        let mut proxy_keep_alive = false;
        let mut seen_auth = false;
        let mut seen_proxy_connection = false;
        for h in headers {
            if is(h.name, "Host") && host_header.is_none() {
                host_header = Some(trim(h.value));
            } else if is(h.name, "Proxy-Authorization") && !seen_auth {
                seen_auth = true;
                auth = parse_basic_auth(h.value);
            } else if is(h.name, "Proxy-Connection") && !seen_proxy_connection {
                seen_proxy_connection = true;
                proxy_keep_alive = trim(h.value).eq_ignore_ascii_case(b"keep-alive");
            }
        }
        let body = framing(headers)?.unwrap_or(BodyLength::Fixed(0));

        let (kind, destination, host, origin_target) = if method.eq_ignore_ascii_case("CONNECT") {
            (RequestKind::Connect, Some(parse_host(target.as_bytes(), 80)?), None, "")
        } else if let Some((scheme, authority, rest)) = split_absolute(target) {
            let default_port = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
            let dest = parse_host(authority.as_bytes(), default_port)?;
            (RequestKind::Forward, Some(dest), Some(authority.as_bytes()), rest)
        } else {
            let dest = host_header.and_then(|h| parse_host(h, 80).ok());
            (RequestKind::Origin, dest, host_header, target)
        };

        if kind != RequestKind::Connect {
            forward.extend_from_slice(method.as_bytes());
            forward.push(b' ');
            if !origin_target.starts_with('/') && origin_target != "*" {
                forward.push(b'/');
            }
            forward.extend_from_slice(origin_target.as_bytes());
            forward.extend_from_slice(if version == 0 { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
            if let Some(host) = host {
                forward.extend_from_slice(b"Host: ");
                forward.extend_from_slice(host);
                forward.extend_from_slice(b"\r\n");
            }
            write_end_to_end(headers, forward);
            forward.extend_from_slice(b"Connection: close\r\n\r\n");
        }
        Ok(RequestHead { kind, destination, head_len, auth, proxy_keep_alive, body })
    }
}

// === Responses ===

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The head's length including the blank line.
    pub head_len: usize,
    /// How the body is delimited (a response to HEAD has none whatever this says).
    pub body: BodyLength,
    /// Whether the client connection may carry another request after this response: the
    /// response has a known length (Xray's rule), and it is not 1xx.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// Parses a response head from the front of `buf` (client side: the answer to CONNECT).
    pub fn parse(buf: &[u8]) -> Result<ResponseHead, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        ResponseHead::parse_into(buf, &mut headers).map(|(head, _, _)| head)
    }

    fn parse_into<'h, 'b>(
        buf: &'b [u8],
        headers: &'h mut [httparse::Header<'b>],
    ) -> Result<(ResponseHead, httparse::Response<'h, 'b>, u8), HttpError> {
        let window = &buf[..buf.len().min(MAX_HEAD_LEN)];
        let mut resp = httparse::Response::new(headers);
        let head_len = complete(resp.parse(window), buf.len())?;
        let (Some(status), Some(version)) = (resp.code, resp.version) else {
            return Err(HttpError::Malformed);
        };
        let body = match status {
            100..=199 | 204 | 304 => BodyLength::Fixed(0),
            _ => framing(resp.headers)?.unwrap_or(BodyLength::UntilClose),
        };
        let keep_alive = !(100..=199).contains(&status) && matches!(body, BodyLength::Fixed(_));
        Ok((ResponseHead { status, head_len, body, keep_alive }, resp, version))
    }

    /// Server side of a forwarded request: parses the upstream's response head and writes into
    /// `out` (cleared first) the head to send the client. A 1xx head is copied unchanged (parse
    /// again for the final one). Otherwise the hop-by-hop fields are removed, and a response of
    /// known length announces `Proxy-Connection: keep-alive`, `Connection: keep-alive` and
    /// `Keep-Alive: timeout=60`, one without `Connection: close`, as Xray rewrites them.
    pub fn forward(buf: &[u8], out: &mut Vec<u8>) -> Result<ResponseHead, HttpError> {
        out.clear();
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (head, resp, version) = ResponseHead::parse_into(buf, &mut headers)?;
        if (100..=199).contains(&head.status) {
            out.extend_from_slice(&buf[..head.head_len]);
            return Ok(head);
        }
        out.extend_from_slice(if version == 0 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        // Three digits, as the status line requires and as Go writes it (`%03d`): an upstream's
        // `000` must not reach the client as `0`.
        out.extend_from_slice(format!("{:03}", head.status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
        out.extend_from_slice(b"\r\n");
        write_end_to_end(resp.headers, out);
        if head.keep_alive {
            out.extend_from_slice(
                b"Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\nKeep-Alive: timeout=60\r\n",
            );
        } else {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Ok(head)
    }
}

// === Client side ===

/// Appends a CONNECT request for `destination`, with `Proxy-Authorization: Basic` when
/// credentials are given, the caller's extra header fields, and `Proxy-Connection: Keep-Alive`
/// (the fields Xray's http outbound sends).
pub fn encode_connect(
    destination: &Destination,
    credentials: Option<(&str, &str)>,
    extra_headers: &[(&str, &str)],
    out: &mut Vec<u8>,
) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "CONNECT {destination} HTTP/1.1\r\nHost: {destination}\r\n");
    if let Some((username, password)) = credentials {
        write_basic_auth(username, password, out);
    }
    for (name, value) in extra_headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"Proxy-Connection: Keep-Alive\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(addr: &str, port: u16) -> Destination {
        Destination { addr: Address::parse(addr).unwrap(), port }
    }

    fn parse(buf: &[u8]) -> Result<(RequestHead, Vec<u8>), HttpError> {
        let mut fwd = Vec::new();
        RequestHead::parse(buf, &mut fwd).map(|h| (h, fwd))
    }

    #[test]
    fn connect_request() {
        // RFC 9110 section 9.3.6 example, with a Basic credential (RFC 7617 section 2 example).
        let req = b"CONNECT server.example.com:80 HTTP/1.1\r\nHost: server.example.com:80\r\n\
                    Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\nfirst bytes";
        let (head, fwd) = parse(req).unwrap();
        assert_eq!(head.kind, RequestKind::Connect);
        assert_eq!(head.destination, Some(dest("server.example.com", 80)));
        assert_eq!(&req[head.head_len..], b"first bytes");
        assert_eq!(head.auth, Some(BasicAuth { username: "Aladdin".into(), password: "open sesame".into() }));
        assert!(fwd.is_empty());
        for cut in 0..head.head_len {
            assert_eq!(parse(&req[..cut]).unwrap_err(), HttpError::UnexpectedEnd, "cut {cut}");
        }
        // No port: Xray's ParseHost falls back to 80; IPv6 in brackets.
        assert_eq!(
            parse(b"CONNECT example.com HTTP/1.1\r\n\r\n").unwrap().0.destination,
            Some(dest("example.com", 80))
        );
        assert_eq!(parse(b"connect [::1]:443 HTTP/1.1\r\n\r\n").unwrap().0.destination, Some(dest("::1", 443)));
        assert_eq!(parse(b"CONNECT ::1:443 HTTP/1.1\r\n\r\n").unwrap_err(), HttpError::BadHost);
        assert_eq!(parse(b"CONNECT a:99999 HTTP/1.1\r\n\r\n").unwrap_err(), HttpError::BadHost);
        assert_eq!(parse(b"CONNECT :80 HTTP/1.1\r\n\r\n").unwrap_err(), HttpError::BadHost);
    }

    #[test]
    fn absolute_uri_is_rewritten_to_origin_form() {
        let req = b"GET http://user@example.com:8080/a/b?c=d HTTP/1.1\r\n\
                    Host: ignored.example\r\n\
                    User-Agent: test\r\n\
                    Proxy-Connection: keep-alive\r\n\
                    Proxy-Authorization: Basic dTpw\r\n\
                    Connection: X-Hop, keep-alive\r\n\
                    X-Hop: 1\r\n\
                    Keep-Alive: 300\r\n\
                    TE: trailers\r\n\
                    Upgrade: h2c\r\n\
                    Accept: */*\r\n\r\n";
        let (head, fwd) = parse(req).unwrap();
        assert_eq!(head.kind, RequestKind::Forward);
        assert_eq!(head.destination, Some(dest("example.com", 8080)));
        assert!(head.proxy_keep_alive);
        assert_eq!(head.body, BodyLength::Fixed(0));
        assert_eq!(head.head_len, req.len());
        assert_eq!(head.auth, Some(BasicAuth { username: "u".into(), password: "p".into() }));
        assert_eq!(
            String::from_utf8(fwd).unwrap(),
            "GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: test\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n"
        );
        for cut in 0..req.len() {
            let mut fwd = vec![1];
            assert_eq!(RequestHead::parse(&req[..cut], &mut fwd), Err(HttpError::UnexpectedEnd), "cut {cut}");
            assert!(fwd.is_empty());
        }
        // https defaults to 443; an empty path becomes "/"; a bare query gets a "/".
        let (head, fwd) = parse(b"GET https://example.com HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(head.destination, Some(dest("example.com", 443)));
        assert!(!head.proxy_keep_alive);
        assert_eq!(fwd, b"GET / HTTP/1.0\r\nHost: example.com\r\nConnection: close\r\n\r\n");
        let (_, fwd) = parse(b"GET http://[2001:db8::1]?q HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(fwd, b"GET /?q HTTP/1.1\r\nHost: [2001:db8::1]\r\nConnection: close\r\n\r\n");
        assert_eq!(parse(b"GET http:///x HTTP/1.1\r\n\r\n").unwrap_err(), HttpError::BadHost);
    }

    #[test]
    fn bodies_and_keep_alive_pipelining() {
        let first = b"POST http://example.com/up HTTP/1.1\r\nProxy-Connection: Keep-Alive\r\n\
                      Content-Length: 5\r\n\r\nhello";
        let second = b"GET http://example.com/next HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        let stream = [&first[..], &second[..]].concat();
        let (head, fwd) = parse(&stream).unwrap();
        assert!(head.proxy_keep_alive);
        assert_eq!(head.body, BodyLength::Fixed(5));
        assert!(fwd.ends_with(b"Content-Length: 5\r\nConnection: close\r\n\r\n"));
        let next = head.head_len + 5;
        assert_eq!(&stream[head.head_len..next], b"hello");
        let (head, fwd) = parse(&stream[next..]).unwrap();
        assert_eq!(head.destination, Some(dest("example.com", 80)));
        assert_eq!(head.body, BodyLength::Chunked);
        assert!(fwd.ends_with(b"Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"));

        let conflict = b"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(parse(conflict).unwrap_err(), HttpError::BadFraming);
        assert_eq!(parse(b"POST http://a/ HTTP/1.1\r\nContent-Length: x\r\n\r\n").unwrap_err(), HttpError::BadFraming);
        assert_eq!(
            parse(b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap_err(),
            HttpError::BadFraming
        );
        // A Connection token cannot strip the framing fields.
        let sneaky = b"POST http://a/ HTTP/1.1\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\n";
        let (_, fwd) = parse(sneaky).unwrap();
        assert!(fwd.ends_with(b"Content-Length: 2\r\nConnection: close\r\n\r\n"));
    }

    #[test]
    fn origin_form_is_not_a_proxy_request() {
        let (head, fwd) = parse(b"GET /index.html HTTP/1.1\r\nHost: example.org:8000\r\n\r\n").unwrap();
        assert_eq!(head.kind, RequestKind::Origin);
        // For allowTransparent, the Host header gives the destination and the head is ready.
        assert_eq!(head.destination, Some(dest("example.org", 8000)));
        assert_eq!(fwd, b"GET /index.html HTTP/1.1\r\nHost: example.org:8000\r\nConnection: close\r\n\r\n");
        let (head, _) = parse(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((head.kind, head.destination), (RequestKind::Origin, None));
    }

    #[test]
    fn basic_auth_forms() {
        assert_eq!(
            parse_basic_auth(b"Basic dXNlcjpwOmFzcw=="),
            Some(BasicAuth { username: "user".into(), password: "p:ass".into() })
        );
        assert_eq!(parse_basic_auth(b"basic dXNlcjpwYXNz"), None); // Xray's prefix check is case-sensitive
        assert_eq!(parse_basic_auth(b"Basic dXNlcnBhc3M="), None); // no colon
        assert_eq!(parse_basic_auth(b"Basic !!!"), None);
        assert_eq!(parse_basic_auth(b"Bearer abc"), None);
        let (head, _) = parse(b"CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Basic nope\r\n\r\n").unwrap();
        assert_eq!(head.auth, None);
    }

    #[test]
    fn fixed_responses_parse() {
        for (bytes, status) in [
            (RESPONSE_CONNECTED, 200),
            (RESPONSE_BAD_REQUEST, 400),
            (RESPONSE_AUTH_REQUIRED, 407),
            (RESPONSE_UNAVAILABLE, 503),
        ] {
            let head = ResponseHead::parse(bytes).unwrap();
            assert_eq!((head.status, head.head_len), (status, bytes.len()));
        }
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(RESPONSE_AUTH_REQUIRED).unwrap();
        assert_eq!(resp.headers[0].name, "Proxy-Authenticate");
        assert_eq!(resp.headers[0].value, b"Basic realm=\"proxy\"");
    }

    #[test]
    fn client_connect_round_trip() {
        let target = dest("2001:db8::5", 443);
        let mut out = Vec::new();
        encode_connect(&target, Some(("Aladdin", "open sesame")), &[("User-Agent", "x")], &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "CONNECT [2001:db8::5]:443 HTTP/1.1\r\nHost: [2001:db8::5]:443\r\n\
             Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\nUser-Agent: x\r\n\
             Proxy-Connection: Keep-Alive\r\n\r\n"
        );
        let (head, _) = parse(&out).unwrap();
        assert_eq!(head.kind, RequestKind::Connect);
        assert_eq!(head.destination, Some(target));
        assert_eq!(head.auth, Some(BasicAuth { username: "Aladdin".into(), password: "open sesame".into() }));
        assert!(head.proxy_keep_alive);

        let reply = [RESPONSE_CONNECTED, b"\x16\x03\x03"].concat();
        let head = ResponseHead::parse(&reply).unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(&reply[head.head_len..], b"\x16\x03\x03");
        for cut in 0..RESPONSE_CONNECTED.len() {
            assert_eq!(ResponseHead::parse(&reply[..cut]), Err(HttpError::UnexpectedEnd), "cut {cut}");
        }
        assert_eq!(ResponseHead::parse(RESPONSE_AUTH_REQUIRED).unwrap().status, 407);
    }

    #[test]
    fn upstream_response_is_rewritten() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
        // Transfer-Encoding wins over Content-Length: unknown length, no keep-alive.
        let mut out = Vec::new();
        let head = ResponseHead::forward(resp, &mut out).unwrap();
        assert_eq!((head.body, head.keep_alive), (BodyLength::Chunked, false));
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        let resp = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nProxy-Authenticate: x\r\n\r\nabc";
        let head = ResponseHead::forward(resp, &mut out).unwrap();
        assert_eq!((head.status, head.body, head.keep_alive), (404, BodyLength::Fixed(3), true));
        assert_eq!(
            out,
            &b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nProxy-Connection: keep-alive\r\n\
               Connection: keep-alive\r\nKeep-Alive: timeout=60\r\n\r\n"[..]
        );
        assert_eq!(&resp[head.head_len..], b"abc");
        let resp = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody until close";
        let head = ResponseHead::forward(resp, &mut out).unwrap();
        assert_eq!((head.body, head.keep_alive), (BodyLength::UntilClose, false));
        let cont = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let head = ResponseHead::forward(cont, &mut out).unwrap();
        assert_eq!((head.status, head.keep_alive), (100, false));
        assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
        let head = ResponseHead::forward(&cont[head.head_len..], &mut out).unwrap();
        assert_eq!((head.status, head.body, head.keep_alive), (204, BodyLength::Fixed(0), true));
    }

    #[test]
    fn forwarded_status_keeps_three_digits() {
        // Found by the http_response_forward fuzz target: `000` was written back as `0`, a status
        // line the client cannot parse.
        let mut out = Vec::new();
        let head = ResponseHead::forward(b"HTTP/1.0 000 ontinue\r\n\r\n", &mut out).unwrap();
        assert_eq!(head.status, 0);
        assert_eq!(out, b"HTTP/1.0 000 ontinue\r\nConnection: close\r\n\r\n");
        assert_eq!(ResponseHead::parse(&out).unwrap().status, 0);
        ResponseHead::forward(b"HTTP/1.1 042 x\r\nContent-Length: 0\r\n\r\n", &mut out).unwrap();
        assert!(out.starts_with(b"HTTP/1.1 042 x\r\n"));
    }

    #[test]
    fn limits_and_garbage() {
        let mut big = b"GET http://a/ HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_LEN, b'a');
        assert_eq!(parse(&big).unwrap_err(), HttpError::HeadTooLarge);
        assert_eq!(parse(&big[..MAX_HEAD_LEN - 1]).unwrap_err(), HttpError::UnexpectedEnd);
        let mut many = b"GET http://a/ HTTP/1.1\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"A: b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many).unwrap_err(), HttpError::TooManyHeaders);
        // A TLS ClientHello or a SOCKS greeting is refused at once, not waited on.
        assert_eq!(parse(b"\x16\x03\x01\x02\x00\x01").unwrap_err(), HttpError::Malformed);
        assert_eq!(parse(b"\x05\x01\x00").unwrap_err(), HttpError::Malformed);
        assert_eq!(parse(b"GET / HTTP/2.0\r\n\r\n").unwrap_err(), HttpError::Malformed);
        assert_eq!(ResponseHead::parse(b"SSH-2.0-x\r\n").unwrap_err(), HttpError::Malformed);
    }

    #[test]
    fn never_panics_on_noise() {
        let mut seed = 0x853c49e6748fea9bu64;
        let mut fwd = Vec::new();
        let prefixes: [&[u8]; 4] = [b"GET http://", b"CONNECT ", b"HTTP/1.1 200 ", b""];
        for round in 0..3000usize {
            let len = (seed % 200) as usize;
            let mut bytes = prefixes[round % 4].to_vec();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Mostly printable, with line breaks, so heads sometimes complete.
                bytes.push(match seed % 16 {
                    0 => b'\r',
                    1 => b'\n',
                    2 => b':',
                    3 => (seed >> 8) as u8,
                    _ => b' ' + (seed >> 8) as u8 % 95,
                });
            }
            bytes.extend_from_slice(b"\r\n\r\n");
            let _ = RequestHead::parse(&bytes, &mut fwd);
            let _ = ResponseHead::parse(&bytes);
            let _ = ResponseHead::forward(&bytes, &mut fwd);
            let _ = parse_basic_auth(&bytes);
            let _ = parse_host(&bytes, 80);
        }
    }
}
