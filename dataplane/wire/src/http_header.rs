//! HTTP camouflage on raw TCP (`tcpSettings.header` with `"type": "http"`): each side opens the
//! connection with one HTTP/1.1 head built from a template, then the stream is raw; no IO.
//!
//! As Xray's `transport/internet/headers/http`: the client writes a request head (method, one
//! of the paths, each header with one of its values) before its first bytes; the server reads
//! one request head (at most [`MAX_HEAD_LEN`] bytes), accepts it only if its path is one of the
//! template's, and writes its response head before its first bytes. A server that refuses the
//! head answers with [`ErrorResponse`] (400, or 404 for a path it does not know) and closes.
//! Which value of a list is written is the caller's choice (`pick`), so a server or client can
//! vary them as Xray does, and tests can fix them.

/// The longest request head a server reads (Xray's `maxHeaderLength`).
pub const MAX_HEAD_LEN: usize = 8192;

/// The most header fields a request head may carry.
const MAX_HEADERS: usize = 64;

/// A header name and the values one of which is written.
pub type HeaderChoices = Vec<(String, Vec<String>)>;

/// `header.request`: what the client sends, and the paths the server accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTemplate {
    /// `version` (`1.1`).
    pub version: String,
    /// `method` (`GET`).
    pub method: String,
    /// `path`: the request path is one of these (`/`).
    pub paths: Vec<String>,
    /// `headers`, in name order (as Xray sorts them).
    pub headers: HeaderChoices,
}

/// `header.response`: what the server sends before its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseTemplate {
    /// `version` (`1.1`).
    pub version: String,
    /// `status` (`200`).
    pub status: String,
    /// `reason` (`OK`).
    pub reason: String,
    /// `headers`, in name order.
    pub headers: HeaderChoices,
}

fn choices(pairs: &[(&str, &[&str])]) -> HeaderChoices {
    pairs.iter().map(|(n, v)| ((*n).to_owned(), v.iter().map(|s| (*s).to_owned()).collect())).collect()
}

impl Default for RequestTemplate {
    /// Xray's defaults when the config gives none (infra/conf/transport_method.go); Xray's
    /// Chrome user agent follows its release, this is one such string.
    fn default() -> Self {
        RequestTemplate {
            version: "1.1".into(),
            method: "GET".into(),
            paths: vec!["/".into()],
            headers: choices(&[
                ("Host", &["www.baidu.com", "www.bing.com"]),
                (
                    "User-Agent",
                    &["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"],
                ),
                ("Sec-CH-UA", &["\"Google Chrome\";v=\"131\", \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\""]),
                ("Sec-CH-UA-Mobile", &["?0"]),
                ("Sec-CH-UA-Platform", &["Windows"]),
                ("Sec-Fetch-Mode", &["no-cors", "cors", "same-origin"]),
                ("Sec-Fetch-Dest", &["empty"]),
                ("Sec-Fetch-Site", &["none"]),
                ("Sec-Fetch-User", &["?1"]),
                ("Accept-Encoding", &["gzip, deflate"]),
                ("Connection", &["keep-alive"]),
                ("Pragma", &["no-cache"]),
            ]),
        }
    }
}

impl Default for ResponseTemplate {
    /// Xray's defaults when the config gives none.
    fn default() -> Self {
        ResponseTemplate {
            version: "1.1".into(),
            status: "200".into(),
            reason: "OK".into(),
            headers: choices(&[
                ("Content-Type", &["application/octet-stream", "video/mpeg"]),
                ("Transfer-Encoding", &["chunked"]),
                ("Connection", &["keep-alive"]),
                ("Pragma", &["no-cache"]),
                ("Cache-Control", &["private", "no-cache"]),
            ]),
        }
    }
}

/// Why a server refused a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// The head has not ended yet: read more.
    UnexpectedEnd,
    /// No blank line within [`MAX_HEAD_LEN`] bytes.
    TooLong,
    /// Not an HTTP/1.x request head.
    Malformed,
    /// A request for a path the template does not list.
    PathMismatch,
}

impl HeadError {
    /// What the server answers before it closes, as Xray does.
    pub fn response(self) -> ErrorResponse {
        match self {
            HeadError::PathMismatch => ErrorResponse::NotFound,
            _ => ErrorResponse::BadRequest,
        }
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeadError::UnexpectedEnd => "HTTP head truncated",
            HeadError::TooLong => "HTTP head too long",
            HeadError::Malformed => "not an HTTP request head",
            HeadError::PathMismatch => "HTTP path not in the header's request paths",
        })
    }
}

impl std::error::Error for HeadError {}

/// The answer to a refused request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorResponse {
    /// 400 Bad Request.
    BadRequest,
    /// 404 Not Found.
    NotFound,
}

impl ErrorResponse {
    /// Appends the response head (with a `Date` header of `date`, an HTTP date).
    pub fn write(self, date: &str, out: &mut Vec<u8>) {
        let status = match self {
            ErrorResponse::BadRequest => "400 Bad Request",
            ErrorResponse::NotFound => "404 Not Found",
        };
        for part in
            ["HTTP/1.1 ", status, "\r\nConnection: close\r\nCache-Control: private\r\nContent-Length: 0\r\nDate: "]
        {
            out.extend_from_slice(part.as_bytes());
        }
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
    }
}

/// Server side: checks the request head at the front of `buf` and returns its length; the
/// bytes after it are the tunnel's. `Err(UnexpectedEnd)` until the head has ended.
pub fn read_request(template: &RequestTemplate, buf: &[u8]) -> Result<usize, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => return Err(HeadError::TooLong),
        Ok(httparse::Status::Partial) => return Err(HeadError::UnexpectedEnd),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLong),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > MAX_HEAD_LEN {
        return Err(HeadError::TooLong);
    }
    let target = req.path.ok_or(HeadError::Malformed)?;
    // The URL's path: an absolute-form target loses its scheme and host, any form its query.
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if template.paths.iter().any(|p| p == path) {
        Ok(len)
    } else {
        Err(HeadError::PathMismatch)
    }
}

/// Server side: appends the response head to send before the first downlink bytes. `pick(n)`
/// chooses which of `n` values a header gets (below `n`); `date` is the HTTP date for the
/// `Date` header the template does not set itself.
pub fn write_response(t: &ResponseTemplate, pick: &mut impl FnMut(usize) -> usize, date: &str, out: &mut Vec<u8>) {
    for part in ["HTTP/", &t.version, " ", &t.status, " ", &t.reason, "\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    write_headers(&t.headers, pick, out);
    if !t.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("date")) {
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Client side: appends the request head to send before the first uplink bytes.
pub fn write_request(t: &RequestTemplate, pick: &mut impl FnMut(usize) -> usize, out: &mut Vec<u8>) {
    let path = match t.paths.len() {
        0 => "/",
        n => &t.paths[pick(n).min(n - 1)],
    };
    for part in [&t.method, " ", path, " HTTP/", &t.version, "\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    write_headers(&t.headers, pick, out);
    out.extend_from_slice(b"\r\n");
}

/// Client side: the length of the response head at the front of `buf` (any status: the server
/// has accepted the tunnel if it answers at all with its template).
pub fn read_response(buf: &[u8]) -> Result<usize, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_LEN => Ok(len),
        Ok(httparse::Status::Complete(_)) => Err(HeadError::TooLong),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => Err(HeadError::TooLong),
        Ok(httparse::Status::Partial) => Err(HeadError::UnexpectedEnd),
        Err(_) => Err(HeadError::Malformed),
    }
}

fn write_headers(headers: &HeaderChoices, pick: &mut impl FnMut(usize) -> usize, out: &mut Vec<u8>) {
    for (name, values) in headers {
        let value = match values.len() {
            0 => "",
            n => &values[pick(n).min(n - 1)],
        };
        for part in [name.as_str(), ": ", value, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Wed, 02 Dec 2026 07:00:00 GMT";

    #[test]
    fn the_default_response_is_xrays() {
        let mut out = Vec::new();
        write_response(&ResponseTemplate::default(), &mut |_| 0, DATE, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\
             Connection: keep-alive\r\nPragma: no-cache\r\nCache-Control: private\r\n\
             Date: Wed, 02 Dec 2026 07:00:00 GMT\r\n\r\n"
        );
        let mut out = Vec::new();
        ErrorResponse::NotFound.write(DATE, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nConnection: close\r\nCache-Control: private\r\nContent-Length: 0\r\n\
             Date: Wed, 02 Dec 2026 07:00:00 GMT\r\n\r\n"
        );
    }

    #[test]
    fn a_client_head_is_accepted_with_the_tunnel_bytes_after_it() {
        let template = RequestTemplate { paths: vec!["/a".into(), "/b".into()], ..Default::default() };
        for choice in 0..2 {
            let mut out = Vec::new();
            write_request(&template, &mut |_| choice, &mut out);
            let head = out.len();
            out.extend_from_slice(b"\x00tunnel bytes");
            assert_eq!(read_request(&template, &out), Ok(head));
            for cut in 0..head {
                assert_eq!(read_request(&template, &out[..cut]), Err(HeadError::UnexpectedEnd), "cut {cut}");
            }
        }
    }

    #[test]
    fn paths_queries_and_absolute_targets() {
        let template = RequestTemplate { paths: vec!["/video".into()], ..Default::default() };
        let ok = |head: &str| read_request(&template, head.as_bytes());
        assert!(ok("GET /video?id=3 HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
        assert!(ok("POST http://cdn.example/video HTTP/1.1\r\n\r\n").is_ok());
        assert_eq!(ok("GET / HTTP/1.1\r\n\r\n"), Err(HeadError::PathMismatch));
        assert_eq!(ok("GET /videos HTTP/1.1\r\n\r\n"), Err(HeadError::PathMismatch));
        assert_eq!(HeadError::PathMismatch.response(), ErrorResponse::NotFound);
    }

    #[test]
    fn garbage_and_oversized_heads_are_refused() {
        let template = RequestTemplate::default();
        assert_eq!(read_request(&template, b"\x16\x03\x01\x02\x00"), Err(HeadError::Malformed));
        assert_eq!(read_request(&template, b"GET / HTTP/9.9\r\n\r\n"), Err(HeadError::Malformed));
        let mut long = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        long.resize(MAX_HEAD_LEN + 10, b'a');
        assert_eq!(read_request(&template, &long), Err(HeadError::TooLong));
        assert_eq!(HeadError::TooLong.response(), ErrorResponse::BadRequest);
        let mut seed = 0x243f6a8885a308d3u64;
        for _ in 0..500 {
            let len = (seed % 300) as usize;
            let noise: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = read_request(&template, &noise);
            let _ = read_response(&noise);
        }
    }

    #[test]
    fn the_client_reads_the_servers_head() {
        let mut out = Vec::new();
        write_response(&ResponseTemplate::default(), &mut |n| n - 1, DATE, &mut out);
        let head = out.len();
        out.extend_from_slice(b"payload");
        assert_eq!(read_response(&out), Ok(head));
        assert_eq!(read_response(&out[..head - 1]), Err(HeadError::UnexpectedEnd));
    }
}
