//! XHTTP (Xray's SplitHTTP): where a request carries its session id, sequence number, padding
//! and (in packet-up) its payload, how a server tells the modes apart, the headers both sides
//! send, and the upload queue that puts numbered POSTs back in order. No IO, no clock; random
//! numbers come from the caller. Facts from Xray-core `transport/internet/splithttp/`
//! (`config.go`, `hub.go`, `xpadding.go`, `upload_queue.go`) and `infra/conf/transport_method.go`.

use std::collections::BTreeMap;

use base64::Engine;

// === settings ===

/// `mode`: how the uplink travels (the downlink is a response body in every mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `auto`: a server accepts every mode; a client picks (Xray: stream-one under REALITY,
    /// else packet-up, stream-up when downloadSettings say so).
    #[default]
    Auto,
    /// `packet-up`: numbered POSTs up, one long GET down.
    PacketUp,
    /// `stream-up`: one streaming POST up, one GET down.
    StreamUp,
    /// `stream-one`: one POST whose body is the uplink and whose response is the downlink.
    StreamOne,
}

impl Mode {
    /// The mode `mode` names (`""` is `auto`), as Xray's config loader accepts them.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "" | "auto" => Some(Mode::Auto),
            "packet-up" => Some(Mode::PacketUp),
            "stream-up" => Some(Mode::StreamUp),
            "stream-one" => Some(Mode::StreamOne),
            _ => None,
        }
    }

    /// Its name in configs and share links.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::PacketUp => "packet-up",
            Mode::StreamUp => "stream-up",
            Mode::StreamOne => "stream-one",
        }
    }

    /// Whether a server of this mode serves requests of mode `m`.
    fn allows(self, m: Mode) -> bool {
        self == Mode::Auto || self == m
    }
}

/// Where a value travels in a request (`*Placement` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A path segment after the base path.
    Path,
    /// A query parameter.
    Query,
    /// A header of its own.
    Header,
    /// A cookie.
    Cookie,
    /// The query of a URL in a header (padding only: `Referer: ...?x_padding=XXX`).
    QueryInHeader,
    /// The request body (uplink data only).
    Body,
    /// Uplink data: header, cookie and body, concatenated (the server reads all three).
    Auto,
    /// Padding nowhere: an obfs-mode API Config's empty `xPaddingPlacement`, which Xray's
    /// server reads as it is (it then pads no response); never a config file's.
    Empty,
}

impl Placement {
    /// The placement a setting names.
    pub fn parse(s: &str) -> Option<Placement> {
        Some(match s {
            "path" => Placement::Path,
            "query" => Placement::Query,
            "header" => Placement::Header,
            "cookie" => Placement::Cookie,
            "queryInHeader" => Placement::QueryInHeader,
            "body" => Placement::Body,
            "auto" => Placement::Auto,
            _ => return None,
        })
    }

    /// Its name in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Path => "path",
            Placement::Query => "query",
            Placement::Header => "header",
            Placement::Cookie => "cookie",
            Placement::QueryInHeader => "queryInHeader",
            Placement::Body => "body",
            Placement::Auto => "auto",
            Placement::Empty => "",
        }
    }
}

/// `xPaddingMethod`: what padding is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingMethod {
    /// `repeat-x`: `X` repeated; its length is the byte count.
    #[default]
    RepeatX,
    /// `tokenish`: base62 characters; its HPACK Huffman length is the byte count (±2).
    Tokenish,
}

impl PaddingMethod {
    /// The method a setting names (`""` is `repeat-x`).
    pub fn parse(s: &str) -> Option<PaddingMethod> {
        match s {
            "" | "repeat-x" => Some(PaddingMethod::RepeatX),
            "tokenish" => Some(PaddingMethod::Tokenish),
            _ => None,
        }
    }

    /// Its name in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            PaddingMethod::RepeatX => "repeat-x",
            PaddingMethod::Tokenish => "tokenish",
        }
    }
}

/// An inclusive range (Xray's `RangeConfig`); a value is drawn from it per use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Range {
    /// The least value.
    pub from: u32,
    /// The greatest value.
    pub to: u32,
}

impl Range {
    /// The range `from..=to`.
    pub const fn new(from: u32, to: u32) -> Range {
        Range { from, to }
    }

    /// A value of the range chosen by `random`.
    pub fn pick(self, random: u64) -> u32 {
        let span = u64::from(self.to.saturating_sub(self.from)) + 1;
        self.from + (random % span) as u32
    }

    /// Whether `n` is in the range.
    pub fn contains(self, n: u64) -> bool {
        n >= u64::from(self.from) && n <= u64::from(self.to)
    }
}

/// Padding settings (`xPaddingBytes` and the `xPadding*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Padding {
    /// `xPaddingBytes` (default 100-1000): the length of every padding sent, and the
    /// lengths a server accepts.
    pub bytes: Range,
    /// `xPaddingObfsMode`: padding goes where `placement` says, made as `method` says.
    /// Without it a client sends `Referer: <url>?x_padding=XXX..` and a server answers
    /// `X-Padding: XXX..`.
    pub obfs_mode: bool,
    /// `xPaddingKey` (default `x_padding`): the query or cookie name.
    pub key: String,
    /// `xPaddingHeader` (default `X-Padding`): the header name.
    pub header: String,
    /// `xPaddingPlacement` (default `queryInHeader`).
    pub placement: Placement,
    /// `xPaddingMethod` (default `repeat-x`).
    pub method: PaddingMethod,
}

impl Default for Padding {
    fn default() -> Self {
        Padding {
            bytes: Range::new(100, 1000),
            obfs_mode: false,
            key: "x_padding".into(),
            header: "X-Padding".into(),
            placement: Placement::QueryInHeader,
            method: PaddingMethod::RepeatX,
        }
    }
}

/// The XHTTP settings that shape requests and responses, as Xray's `SplitHTTPConfig.Build`
/// leaves them (defaults filled in, keys named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `path` before any `?`, normalised as Xray does: a leading `/`, and a trailing `/`
    /// when the session id or sequence number goes in the path.
    pub path: String,
    /// `path` after its `?` (sent by a client; a server ignores it).
    pub query: String,
    /// `host`: what a server requires in `Host` (any when empty); what a client sends.
    pub host: String,
    /// `mode`.
    pub mode: Mode,
    /// `headers`: what a client sends besides (in name order; never `Host`).
    pub headers: Vec<(String, String)>,
    /// Padding.
    pub padding: Padding,
    /// `noGRPCHeader`: a client's streaming POST goes without `Content-Type: application/grpc`.
    pub no_grpc_header: bool,
    /// `noSSEHeader`: a server's downlink goes without `Content-Type: text/event-stream`.
    pub no_sse_header: bool,
    /// `scMaxEachPostBytes` (default 1000000): a server refuses a larger POST (413); a
    /// client's packets are at most `to` bytes.
    pub max_each_post_bytes: Range,
    /// `scMinPostsIntervalMs` (default 30): a client's pause between POSTs.
    pub min_posts_interval_ms: Range,
    /// `scMaxBufferedPosts` (default 30): POSTs a server holds for a session before it reads
    /// them, and out-of-order ones it holds while waiting for a gap.
    pub max_buffered_posts: u32,
    /// `scStreamUpServerSecs` (default 20-80): how often a server writes padding down a
    /// stream-up POST's response to keep it open (0-0: never).
    pub stream_up_server_secs: Range,
    /// `uplinkHTTPMethod` (default `POST`; `GET` only in packet-up).
    pub uplink_http_method: String,
    /// `sessionIDPlacement` (default path) and `sessionIDKey`.
    pub session_placement: Placement,
    /// The header, query or cookie name of the session id (empty in the path).
    pub session_key: String,
    /// `seqPlacement` (default path) and `seqKey`.
    pub seq_placement: Placement,
    /// The header, query or cookie name of the sequence number (empty in the path).
    pub seq_key: String,
    /// `uplinkDataPlacement` (default auto): where a packet's payload travels.
    pub uplink_data_placement: Placement,
    /// `uplinkDataKey`: the header (`X-Data-0`, `X-Data-1`..) or cookie (`x_data_0`..)
    /// prefix of payload not in the body.
    pub uplink_data_key: String,
    /// `uplinkChunkSize`: a client's payload per header or cookie (0-0: Xray's defaults).
    pub uplink_chunk_size: Range,
    /// `serverMaxHeaderBytes` (0: 8192): the largest request head a server reads.
    pub server_max_header_bytes: u32,
    /// `sessionIDTable` (a predefined name already expanded) and `sessionIDLength`: what a
    /// client's session ids are made of (empty: UUIDs).
    pub session_id_table: String,
    /// `sessionIDLength`.
    pub session_id_length: Range,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            path: "/".into(),
            query: String::new(),
            host: String::new(),
            mode: Mode::Auto,
            headers: Vec::new(),
            padding: Padding::default(),
            no_grpc_header: false,
            no_sse_header: false,
            max_each_post_bytes: Range::new(1_000_000, 1_000_000),
            min_posts_interval_ms: Range::new(30, 30),
            max_buffered_posts: 30,
            stream_up_server_secs: Range::new(20, 80),
            uplink_http_method: "POST".into(),
            session_placement: Placement::Path,
            session_key: String::new(),
            seq_placement: Placement::Path,
            seq_key: String::new(),
            uplink_data_placement: Placement::Auto,
            uplink_data_key: "X-Data".into(),
            uplink_chunk_size: Range::default(),
            server_max_header_bytes: 8192,
            session_id_table: String::new(),
            session_id_length: Range::default(),
        }
    }
}

/// Xray's predefined `sessionIDTable` names and the characters they stand for.
pub const SESSION_ID_TABLES: &[(&str, &str)] = &[
    ("ALPHABET", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    ("Alphabet", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
    ("BASE36", "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    ("Base62", "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
    ("HEX", "0123456789ABCDEF"),
    ("alphabet", "abcdefghijklmnopqrstuvwxyz"),
    ("base36", "0123456789abcdefghijklmnopqrstuvwxyz"),
    ("hex", "0123456789abcdef"),
    ("number", "0123456789"),
];

/// `path` as Xray normalises it: the part before `?` with a leading `/` (and a trailing one
/// when `slash`), and the query after it.
pub fn normalize_path(raw: &str, slash: bool) -> (String, String) {
    let (path, query) = raw.split_once('?').unwrap_or((raw, ""));
    let mut path = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
    if slash && !path.ends_with('/') {
        path.push('/');
    }
    (path, query.to_owned())
}

// === the server's view of a request ===

/// A request head as the server sees it, whatever HTTP version carried it.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method (`GET`, `POST`, ..).
    pub method: &'a str,
    /// The request target: path and query (`/path/SESSION/0?x=1`).
    pub target: &'a str,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: &'a str,
    /// The other header fields, names in any case.
    pub headers: &'a [(&'a str, &'a str)],
}

impl<'a> RequestHead<'a> {
    /// The first header field named `name` (case-insensitive), if present and not empty.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.iter().find(|(n, v)| n.eq_ignore_ascii_case(name) && !v.is_empty()).map(|&(_, v)| v)
    }

    /// The path as sent, without its query.
    pub fn path(&self) -> &'a str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// The path percent-decoded, as Go's `r.URL.Path` is (`+` stays `+`); `None` when a `%`
    /// is not followed by two hex digits (Go's server then answers 400).
    pub fn decoded_path(&self) -> Option<String> {
        percent_decode_path(self.path())
    }

    /// The query parameter `key`, percent-decoded (the first of that name).
    pub fn query(&self, key: &str) -> Option<String> {
        query_param(self.target.split_once('?').map_or("", |(_, q)| q), key)
    }

    /// The cookie `name`, from every `Cookie` field.
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.trim_matches('"'))
    }
}

/// What a request is, once the server has checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A CORS preflight (`OPTIONS`): answered `200` with the common headers.
    Preflight,
    /// The downlink of a packet-up or stream-up session (a `GET` with a session id).
    Download {
        /// The session id.
        session: String,
    },
    /// One numbered packet of a packet-up session. Its payload is `inline` followed by the
    /// body, when `body` says the body carries payload.
    Packet {
        /// The session id.
        session: String,
        /// The sequence number (from 0).
        seq: u64,
        /// Payload carried in headers or cookies (`X-Data-N`, `x_data_N`), decoded.
        inline: Vec<u8>,
        /// Whether the body is payload too (uplinkDataPlacement body or auto).
        body: bool,
    },
    /// The one streaming upload of a stream-up session (a POST with a session id, no seq).
    StreamUp {
        /// The session id.
        session: String,
    },
    /// A stream-one session: the request body up, the response body down.
    StreamOne,
}

/// Why the server refused a request; the answer is [`Refused::status`] with no body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `Host` is not the configured host (404).
    Host,
    /// The path is not under the configured path (404).
    Path,
    /// The padding is missing or its length is outside xPaddingBytes (400).
    Padding(usize),
    /// The request is of a mode the inbound's `mode` excludes (400).
    ModeNotAllowed(Mode),
    /// A method that no mode uses (405).
    Method,
    /// The sequence number is not a number (500, as Xray answers).
    Seq,
    /// The path has a `%` not followed by two hex digits (400, as Go's server answers before
    /// Xray sees the request).
    PathEscape,
    /// Payload in headers or cookies is not base64url (400).
    InlineData,
}

impl Refused {
    /// The HTTP status Xray answers with.
    pub fn status(self) -> u16 {
        match self {
            Refused::Host | Refused::Path => 404,
            Refused::Padding(_) | Refused::ModeNotAllowed(_) | Refused::InlineData | Refused::PathEscape => 400,
            Refused::Method => 405,
            Refused::Seq => 500,
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Host => f.write_str("host does not match"),
            Refused::Path => f.write_str("path is not the configured one"),
            Refused::Padding(n) => write!(f, "invalid padding length {n}"),
            Refused::ModeNotAllowed(m) => write!(f, "{} mode is not allowed", m.as_str()),
            Refused::Method => f.write_str("unsupported method"),
            Refused::Seq => f.write_str("sequence number is not a number"),
            Refused::PathEscape => f.write_str("invalid percent-escape in the path"),
            Refused::InlineData => f.write_str("invalid base64 in uplink header or cookie data"),
        }
    }
}

impl Settings {
    /// Checks a request as Xray's `hub.go` does, in its order: host, path, padding, then
    /// what the session id, sequence number and method make of it. The path is compared,
    /// and the session id and seq taken from it, percent-decoded (hub.go reads
    /// `r.URL.Path`), against the configured path as written.
    pub fn classify(&self, head: &RequestHead<'_>) -> Result<Request, Refused> {
        // Go's server parses the URL before any handler runs.
        let path = head.decoded_path().ok_or(Refused::PathEscape)?;
        if !self.host.is_empty() && !host_matches(head.host, &self.host) {
            return Err(Refused::Host);
        }
        let path = path.as_str();
        if !path.starts_with(&self.path) {
            return Err(Refused::Path);
        }
        if head.method == "OPTIONS" {
            return Ok(Request::Preflight);
        }
        let padding = self.request_padding(head).unwrap_or_default();
        if !self.padding_valid(&padding) {
            return Err(Refused::Padding(padding.len()));
        }
        let (session, seq) = self.meta(head, path);
        if session.is_empty() && !self.mode.allows(Mode::StreamOne) && self.mode != Mode::StreamUp {
            return Err(Refused::ModeNotAllowed(Mode::StreamOne));
        }
        let upload = head.method != "GET" || !seq.is_empty();
        if upload && !session.is_empty() {
            if seq.is_empty() {
                if !self.mode.allows(Mode::StreamUp) {
                    return Err(Refused::ModeNotAllowed(Mode::StreamUp));
                }
                return Ok(Request::StreamUp { session });
            }
            if !self.mode.allows(Mode::PacketUp) {
                return Err(Refused::ModeNotAllowed(Mode::PacketUp));
            }
            let inline = self.inline_data(head)?;
            let seq = seq.parse().map_err(|_| Refused::Seq)?;
            let body = matches!(self.uplink_data_placement, Placement::Body | Placement::Auto);
            return Ok(Request::Packet { session, seq, inline, body });
        }
        if head.method == "GET" && !session.is_empty() {
            return Ok(Request::Download { session });
        }
        if session.is_empty() {
            return Ok(Request::StreamOne);
        }
        Err(Refused::Method)
    }

    /// The session id and sequence number a request carries (empty when absent).
    fn meta(&self, head: &RequestHead<'_>, path: &str) -> (String, String) {
        let mut segments = path[self.path.len()..].split('/');
        let mut take = |placement: Placement, key: &str| -> String {
            match placement {
                Placement::Path => segments.next().unwrap_or("").to_owned(),
                Placement::Query => head.query(key).unwrap_or_default(),
                Placement::Header => head.header(key).unwrap_or("").to_owned(),
                Placement::Cookie => head.cookie(key).unwrap_or("").to_owned(),
                _ => String::new(),
            }
        };
        let session = take(self.session_placement, &self.session_key);
        let seq = take(self.seq_placement, &self.seq_key);
        (session, seq)
    }

    /// The padding a request carries, looked for where Xray's `ExtractXPaddingFromRequest`
    /// looks: without obfs mode the `x_padding` query of `Referer` (or of the URL itself
    /// when there is no `Referer`); with it the cookie, the header (or its URL's query),
    /// then the query, named by the padding settings. An empty key or header (an API
    /// Config's, read as given) names no cookie and no header; the query's empty key is
    /// `?=..`, as Go's `Query().Get("")` finds it.
    pub fn request_padding(&self, head: &RequestHead<'_>) -> Option<String> {
        let p = &self.padding;
        if !p.obfs_mode {
            return match head.header("referer") {
                Some(referer) => query_param(referer.split_once('?').map_or("", |(_, q)| q), "x_padding"),
                None => head.query("x_padding"),
            };
        }
        // Go's `Cookie("")` finds none; an empty header name matches no field.
        if let Some(c) = head.cookie(&p.key).filter(|c| !c.is_empty() && !p.key.is_empty()) {
            return Some(c.to_owned());
        }
        if let Some(h) = head.header(&p.header).filter(|_| !p.header.is_empty()) {
            if p.placement == Placement::Header {
                return Some(h.to_owned());
            }
            return query_param(h.split_once('?').map_or("", |(_, q)| q), &p.key);
        }
        head.query(&p.key)
    }

    /// Whether padding of this value is acceptable (Xray's `IsPaddingValid`).
    pub fn padding_valid(&self, value: &str) -> bool {
        if value.is_empty() {
            return false;
        }
        let range = self.padding.bytes;
        match (self.padding.obfs_mode, self.padding.method) {
            (true, PaddingMethod::Tokenish) => {
                let n = huffman_len(value.as_bytes()) as u64;
                let from = u64::from(range.from.saturating_sub(TOKENISH_TOLERANCE));
                n >= from && n <= u64::from(range.to) + u64::from(TOKENISH_TOLERANCE)
            }
            _ => range.contains(value.len() as u64),
        }
    }

    /// Payload a packet carries in headers or cookies, for the placements that put it there.
    fn inline_data(&self, head: &RequestHead<'_>) -> Result<Vec<u8>, Refused> {
        let key = &self.uplink_data_key;
        let mut out = Vec::new();
        let placement = self.uplink_data_placement;
        let mut decode = |chunks: String| -> Result<(), Refused> {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(chunks.as_bytes())
                .map_err(|_| Refused::InlineData)?;
            out.extend_from_slice(&bytes);
            Ok(())
        };
        if matches!(placement, Placement::Header | Placement::Auto) {
            let text: String = (0..).map_while(|i| head.header(&format!("{key}-{i}"))).collect();
            decode(text)?;
        }
        if matches!(placement, Placement::Cookie | Placement::Auto) {
            let text: String = (0..).map_while(|i| head.cookie(&format!("{key}_{i}"))).collect();
            decode(text)?;
        }
        Ok(out)
    }

    /// Whether any value travels in a cookie (the server then allows credentials).
    fn uses_cookies(&self) -> bool {
        [self.session_placement, self.seq_placement, self.padding.placement, self.uplink_data_placement]
            .contains(&Placement::Cookie)
    }

    /// The header fields a server sends on every response past the host and path checks
    /// (Xray's `WriteResponseHeader` and its padding): CORS, and padding of `padding_len`.
    pub fn response_headers(&self, head: &RequestHead<'_>, padding_len: u32) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(6);
        out.push(("Access-Control-Allow-Origin".into(), head.header("origin").unwrap_or("*").to_owned()));
        if self.uses_cookies() {
            out.push(("Access-Control-Allow-Credentials".into(), "true".into()));
        }
        if head.method == "OPTIONS" {
            out.push((
                "Access-Control-Allow-Methods".into(),
                head.header("access-control-request-method").unwrap_or("*").to_owned(),
            ));
            out.push((
                "Access-Control-Allow-Headers".into(),
                head.header("access-control-request-headers").unwrap_or("*").to_owned(),
            ));
        }
        let p = &self.padding;
        let value = padding(if p.obfs_mode { p.method } else { PaddingMethod::RepeatX }, padding_len as usize);
        // Go drops a header without a name, and sets no cookie without one.
        match (p.obfs_mode, p.placement) {
            (false, _) => out.push(("X-Padding".into(), value)),
            (true, Placement::Header) if !p.header.is_empty() => out.push((p.header.clone(), value)),
            (true, Placement::QueryInHeader) if !p.header.is_empty() => {
                out.push((p.header.clone(), format!("?{}={value}", p.key)))
            }
            (true, Placement::Cookie) if !p.key.is_empty() => {
                out.push(("Set-Cookie".into(), format!("{}={value}; Path=/", p.key)))
            }
            (true, _) => {}
        }
        out
    }

    /// The header fields of a downlink (a GET's, or stream-one's) response: no buffering, no
    /// caching, and server-sent events unless `noSSEHeader`.
    pub fn downlink_headers(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = vec![("X-Accel-Buffering", "no"), ("Cache-Control", "no-store")];
        if !self.no_sse_header {
            out.push(("Content-Type", "text/event-stream"));
        }
        out
    }

    // === the client's side ===

    /// Where a client's request goes and what it carries besides its body: the path and
    /// query (`session` and `seq` where their placements say), and the header fields (the
    /// configured ones, the session id and seq in theirs, padding of `padding_len`).
    /// `origin` is `scheme://host` for the `Referer` that carries padding without obfs mode;
    /// `streaming` marks a streaming upload (it says `application/grpc` unless
    /// `noGRPCHeader`).
    pub fn client_request(
        &self,
        origin: &str,
        session: Option<&str>,
        seq: Option<u64>,
        padding_len: u32,
        streaming: bool,
    ) -> ClientRequest {
        let mut path = self.path.clone();
        let mut query: Vec<(String, String)> = Vec::new();
        let mut headers = self.headers.clone();
        let mut cookies: Vec<(String, String)> = Vec::new();
        let seq = seq.map(|s| s.to_string());
        for (value, placement, key) in
            [(session, self.session_placement, &self.session_key), (seq.as_deref(), self.seq_placement, &self.seq_key)]
        {
            let Some(value) = value else { continue };
            match placement {
                Placement::Path => {
                    if !path.ends_with('/') {
                        path.push('/');
                    }
                    path.push_str(value);
                }
                Placement::Query => query.push((key.clone(), value.to_owned())),
                Placement::Header => headers.push((key.clone(), value.to_owned())),
                Placement::Cookie => cookies.push((key.clone(), value.to_owned())),
                _ => {}
            }
        }
        let p = &self.padding;
        let value = padding(if p.obfs_mode { p.method } else { PaddingMethod::RepeatX }, padding_len as usize);
        // Sent escaped as Go's client sends `URL.Path`: the server decodes it again.
        let mut target = escape_path(&path);
        let mut full_query: Vec<String> = Vec::new();
        if !self.query.is_empty() {
            full_query.push(self.query.clone());
        }
        full_query.extend(query.iter().map(|(k, v)| format!("{k}={v}")));
        // As config.go: padding goes in before the session id and seq, so a URL in a header
        // is the base path's, its query replaced by the padding.
        let base = escape_path(&self.path);
        // As xpadding.go: no header, cookie or query parameter without a name.
        match (p.obfs_mode, p.placement) {
            (false, _) => headers.push(("Referer".into(), format!("{origin}{base}?x_padding={value}"))),
            (true, Placement::Header) if !p.header.is_empty() => headers.push((p.header.clone(), value)),
            (true, Placement::QueryInHeader) if !p.header.is_empty() => {
                headers.push((p.header.clone(), format!("{origin}{base}?{}={value}", p.key)));
            }
            (true, Placement::Cookie) if !p.key.is_empty() => cookies.push((p.key.clone(), value)),
            (true, Placement::Query) if !p.key.is_empty() => full_query.push(format!("{}={value}", p.key)),
            (true, _) => {}
        }
        if !full_query.is_empty() {
            target.push('?');
            target.push_str(&full_query.join("&"));
        }
        if !cookies.is_empty() {
            let text: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            headers.push(("Cookie".into(), text.join("; ")));
        }
        if streaming && !self.no_grpc_header {
            headers.push(("Content-Type".into(), "application/grpc".into()));
        }
        ClientRequest { target, headers }
    }

    /// Header fields (`X-Data-0: ..`) or one `Cookie` field (`x_data_0=..`) carrying a
    /// packet's payload, for the header and cookie placements, in chunks of `chunk` base64
    /// characters each.
    pub fn inline_payload(&self, payload: &[u8], chunk: usize) -> Vec<(String, String)> {
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
        let chunk = chunk.max(1);
        let parts = text.as_bytes().chunks(chunk).map(|c| String::from_utf8_lossy(c).into_owned());
        let key = &self.uplink_data_key;
        match self.uplink_data_placement {
            Placement::Header => parts.enumerate().map(|(i, c)| (format!("{key}-{i}"), c)).collect(),
            Placement::Cookie => {
                let cookies: Vec<String> = parts.enumerate().map(|(i, c)| format!("{key}_{i}={c}")).collect();
                if cookies.is_empty() {
                    Vec::new()
                } else {
                    vec![("Cookie".into(), cookies.join("; "))]
                }
            }
            _ => Vec::new(),
        }
    }

    /// A new session id: `sessionIDLength` characters of `sessionIDTable`, or a UUID (v4
    /// form) when no table is set; `random` is called for each random draw.
    pub fn new_session_id(&self, mut random: impl FnMut() -> u64) -> String {
        let table = self.session_id_table.as_bytes();
        if !table.is_empty() && self.session_id_length.to > 0 {
            let len = self.session_id_length.pick(random());
            return (0..len).map(|_| table[(random() % table.len() as u64) as usize] as char).collect();
        }
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&random().to_le_bytes());
        b[8..].copy_from_slice(&random().to_le_bytes());
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        uuid::Uuid::from_bytes(b).to_string()
    }
}

/// A client request's target (path and query) and header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// Path and query.
    pub target: String,
    /// Header fields, in order.
    pub headers: Vec<(String, String)>,
}

/// `Host` against the configured host, as Xray's `IsValidHTTPHost` compares them:
/// case-insensitive, any port left out.
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

/// The first value of `key` in a URL query, percent- and `+`-decoded; as Go's `ParseQuery`,
/// empty pairs and pairs with a `;` are skipped.
fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.contains(';'))
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find_map(|(k, v)| (percent_decode(k) == key).then(|| percent_decode(v)))
}

/// A URL path percent-decoded as Go's `url.PathUnescape` does: `%XX` is the byte, `+` is
/// itself, a `%` without two hex digits after it is an error.
fn percent_decode_path(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |at: usize| b.get(at).and_then(|&c| (c as char).to_digit(16));
            out.push((hex(i + 1)? * 16 + hex(i + 2)?) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// A path escaped as Go's `URL.EscapedPath` escapes one it built (`shouldEscape` in path
/// mode): letters, digits, `-_.~` and `$&+,/:;=@` as they are, every other byte `%XX`.
pub fn escape_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &c in path.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// === padding ===

/// How far a tokenish padding's Huffman length may be from the one asked for (Xray's
/// `validationTolerance`).
const TOKENISH_TOLERANCE: u32 = 2;

/// Padding of `len` bytes made as `method` says: `X` repeated (one byte each, and an 8-bit
/// Huffman code, so HPACK does not shrink it), or base62 characters whose HPACK Huffman
/// length is within 2 of `len`.
pub fn padding(method: PaddingMethod, len: usize) -> String {
    match method {
        PaddingMethod::RepeatX => "X".repeat(len),
        PaddingMethod::Tokenish => tokenish(len),
    }
}

/// Random base62 padding, as Xray draws it (a fixed cycle would be a tell), trimmed or
/// extended until its Huffman length is close to `target`.
fn tokenish(target: usize) -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    if target == 0 {
        return String::new();
    }
    // Base62 averages about 0.8 Huffman bytes per character.
    let n = (target * 5).div_ceil(4).max(1);
    let mut s = vec![0u8; n];
    // Not secret: a failed draw leaves zeros, still base62 after the mapping.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s);
    for c in &mut s {
        *c = BASE62[usize::from(*c) % BASE62.len()];
    }
    let mut adjust = b'X';
    for _ in 0..150 {
        let len = huffman_len(&s);
        if len.abs_diff(target) <= TOKENISH_TOLERANCE as usize {
            break;
        }
        if len < target {
            s.push(adjust);
            adjust = if adjust == b'X' { b'Z' } else { b'X' };
        } else if s.len() > 1 {
            s.pop();
        } else {
            break;
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

/// The bytes HPACK's Huffman code (RFC 7541 appendix B) makes of `s`.
pub fn huffman_len(s: &[u8]) -> usize {
    let bits: usize = s.iter().map(|&b| usize::from(HUFFMAN_BITS[usize::from(b)])).sum();
    bits.div_ceil(8)
}

/// The code length in bits of each byte in HPACK's Huffman code (RFC 7541 appendix B).
const HUFFMAN_BITS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26,
];

// === the upload queue ===

/// Why the upload queue refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// More out-of-order packets wait for a gap than the bound allows (Xray: "packet queue
    /// is too large"); the session should end.
    TooManyBuffered(usize),
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::TooManyBuffered(n) => write!(f, "more than {n} out-of-order posts buffered"),
        }
    }
}

/// What became of a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Held until its turn (or it is the next one).
    Queued,
    /// Its sequence number was already delivered or is already held: dropped, as Xray
    /// drops it.
    Duplicate,
}

/// A session's uplink packets put back in sequence order (Xray's `uploadQueue`): packets
/// are pushed as they arrive and popped in order from seq 0, and no more than `max`
/// wait for a gap.
#[derive(Debug)]
pub struct UploadQueue<T> {
    next: u64,
    held: BTreeMap<u64, T>,
    max: usize,
}

impl<T> UploadQueue<T> {
    /// A queue that holds at most `max` + 1 packets (scMaxBufferedPosts), as Xray's does.
    pub fn new(max: usize) -> Self {
        UploadQueue { next: 0, held: BTreeMap::new(), max: max.max(1) }
    }

    /// Adds a packet.
    pub fn push(&mut self, seq: u64, packet: T) -> Result<Pushed, QueueError> {
        if seq < self.next || self.held.contains_key(&seq) {
            return Ok(Pushed::Duplicate);
        }
        // As Xray's upload queue: it holds one past its bound, and fails on the next.
        if seq != self.next && self.held.len() > self.max {
            return Err(QueueError::TooManyBuffered(self.max));
        }
        self.held.insert(seq, packet);
        Ok(Pushed::Queued)
    }

    /// The next packet in sequence, if it has arrived.
    pub fn pop(&mut self) -> Option<T> {
        let packet = self.held.remove(&self.next)?;
        self.next += 1;
        Some(packet)
    }

    /// The sequence number awaited next.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Packets held.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(method: &'a str, target: &'a str, headers: &'a [(&'a str, &'a str)]) -> RequestHead<'a> {
        RequestHead { method, target, host: "example.com", headers }
    }

    fn settings(path: &str) -> Settings {
        let (path, query) = normalize_path(path, true);
        Settings { path, query, ..Settings::default() }
    }

    const PAD: &str =
        "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX";

    fn referer() -> String {
        format!("https://example.com/xh/?x_padding={PAD}")
    }

    /// config.go `GetNormalizedPath`: a leading slash, and a trailing one when the session id
    /// or seq is in the path; the query is kept apart.
    #[test]
    fn path_is_normalised_as_xray_does() {
        assert_eq!(normalize_path("xh", true), ("/xh/".into(), String::new()));
        assert_eq!(normalize_path("/xh/?a=1", true), ("/xh/".into(), "a=1".into()));
        assert_eq!(normalize_path("", true), ("/".into(), String::new()));
        assert_eq!(normalize_path("/xh", false), ("/xh".into(), String::new()));
    }

    /// hub.go: GET with a session id is a download, POST with session and seq a packet, POST
    /// with a session alone stream-up, POST with neither stream-one.
    #[test]
    fn requests_are_told_apart_by_method_session_and_seq() {
        let s = settings("/xh");
        let r = referer();
        let h = [("Referer", r.as_str())];
        assert_eq!(s.classify(&head("GET", "/xh/abc", &h)), Ok(Request::Download { session: "abc".into() }));
        assert_eq!(
            s.classify(&head("POST", "/xh/abc/7", &h)),
            Ok(Request::Packet { session: "abc".into(), seq: 7, inline: vec![], body: true })
        );
        assert_eq!(s.classify(&head("POST", "/xh/abc", &h)), Ok(Request::StreamUp { session: "abc".into() }));
        assert_eq!(s.classify(&head("POST", "/xh/", &h)), Ok(Request::StreamOne));
        assert_eq!(s.classify(&head("OPTIONS", "/xh/", &[])), Ok(Request::Preflight));
        // hub.go answers 500 when ParseUint fails.
        assert_eq!(s.classify(&head("POST", "/xh/abc/x1", &h)), Err(Refused::Seq));
        assert_eq!(Refused::Seq.status(), 500);
    }

    /// hub.go matches `r.URL.Path`, which Go has percent-decoded (`+` kept), against the
    /// configured path as written, and splits the session id and seq out of it decoded; a
    /// `%` without two hex digits is Go's 400 before any handler.
    #[test]
    fn paths_are_matched_and_split_percent_decoded_as_go_reads_them() {
        let s = settings("/xh");
        let r = referer();
        let h = [("Referer", r.as_str())];
        assert_eq!(
            s.classify(&head("POST", "/%78h/s%31/%32?q=1", &h)),
            Ok(Request::Packet { session: "s1".into(), seq: 2, inline: vec![], body: true })
        );
        assert_eq!(s.classify(&head("GET", "/xh/a+b", &h)), Ok(Request::Download { session: "a+b".into() }));
        // An escaped slash is a slash once decoded: "b" is then the seq, not a number (500).
        assert_eq!(s.classify(&head("POST", "/xh/a%2Fb/3", &h)), Err(Refused::Seq));
        for bad in ["/xh/abc%zz", "/xh/abc%4", "/xh/%"] {
            assert_eq!(s.classify(&head("GET", bad, &h)), Err(Refused::PathEscape), "{bad}");
        }
        assert_eq!(Refused::PathEscape.status(), 400);
        // Before the host check, as Go parses the URL first.
        let hosted = Settings { host: "example.com".into(), ..settings("/xh") };
        let other = RequestHead { host: "evil.test", ..head("GET", "/xh/%zz", &h) };
        assert_eq!(hosted.classify(&other), Err(Refused::PathEscape));
        // The configured path is not decoded: "/a%20b" is matched by a path that decodes to it.
        let literal = settings("/a%20b");
        assert_eq!(literal.classify(&head("GET", "/a%20b/s", &h)), Err(Refused::Path));
        assert_eq!(literal.classify(&head("GET", "/a%2520b/s", &h)), Ok(Request::Download { session: "s".into() }));
    }

    /// Go's client sends `URL.Path` escaped (`EscapedPath`); ours does too, so a path beyond
    /// ASCII reaches a server that decodes it, and the Referer carries it escaped.
    #[test]
    fn the_client_escapes_its_path_as_go_does() {
        assert_eq!(escape_path("/a b/ü?#%"), "/a%20b/%C3%BC%3F%23%25");
        assert_eq!(escape_path("/x-_.~$&+,/:;=@"), "/x-_.~$&+,/:;=@");
        let s = settings("/путь");
        let c = s.client_request("https://example.com", Some("sid"), Some(0), 100, false);
        assert_eq!(c.target, "/%D0%BF%D1%83%D1%82%D1%8C/sid/0");
        let referer = format!("https://example.com/%D0%BF%D1%83%D1%82%D1%8C/?x_padding={}", "X".repeat(100));
        assert!(c.headers.contains(&("Referer".into(), referer)), "{c:?}");
        let hs: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            s.classify(&head("POST", &c.target, &hs)),
            Ok(Request::Packet { session: "sid".into(), seq: 0, inline: vec![], body: true })
        );
    }

    /// hub.go: another path or host is a 404, checked before the padding.
    #[test]
    fn host_and_path_are_checked_first() {
        let s = Settings { host: "example.com".into(), ..settings("/xh") };
        assert_eq!(s.classify(&head("GET", "/other/abc", &[])), Err(Refused::Path));
        let other = RequestHead { host: "evil.test", ..head("GET", "/xh/abc", &[]) };
        assert_eq!(s.classify(&other), Err(Refused::Host));
        let with_port = RequestHead { host: "EXAMPLE.com:443", ..head("GET", "/xh/abc", &[]) };
        assert_eq!(s.classify(&with_port), Err(Refused::Padding(0)));
        assert_eq!(Refused::Path.status(), 404);
    }

    /// xpadding.go: without obfs mode the padding is the `x_padding` query of Referer (or of
    /// the URL when no Referer came), its length within xPaddingBytes (default 100-1000).
    #[test]
    fn padding_length_is_checked_where_xray_looks() {
        let s = settings("/xh");
        let short = "https://example.com/xh/?x_padding=XXXX".to_owned();
        assert_eq!(s.classify(&head("GET", "/xh/abc", &[("Referer", &short)])), Err(Refused::Padding(4)));
        assert_eq!(s.classify(&head("GET", "/xh/abc", &[])), Err(Refused::Padding(0)));
        let in_url = format!("/xh/abc?x_padding={PAD}");
        assert!(s.classify(&head("GET", &in_url, &[])).is_ok());
        let long = format!("https://example.com/?x_padding={}", "X".repeat(1001));
        assert_eq!(s.classify(&head("GET", "/xh/abc", &[("Referer", &long)])), Err(Refused::Padding(1001)));
        assert_eq!(Refused::Padding(1).status(), 400);
    }

    /// hub.go: a fixed mode refuses the others' requests with 400.
    #[test]
    fn a_fixed_mode_refuses_the_others() {
        let r = referer();
        let h = [("Referer", r.as_str())];
        let packet = Settings { mode: Mode::PacketUp, ..settings("/xh") };
        assert_eq!(packet.classify(&head("POST", "/xh/", &h)), Err(Refused::ModeNotAllowed(Mode::StreamOne)));
        assert_eq!(packet.classify(&head("POST", "/xh/s", &h)), Err(Refused::ModeNotAllowed(Mode::StreamUp)));
        let one = Settings { mode: Mode::StreamOne, ..settings("/xh") };
        assert_eq!(one.classify(&head("POST", "/xh/s/0", &h)), Err(Refused::ModeNotAllowed(Mode::PacketUp)));
        // stream-up servers accept a session-less POST as hub.go does (its stream-one check
        // lets stream-up through).
        let up = Settings { mode: Mode::StreamUp, ..settings("/xh") };
        assert_eq!(up.classify(&head("POST", "/xh/", &h)), Ok(Request::StreamOne));
    }

    /// config.go `ExtractMetaFromRequest` with the placements of the newer keys, and hub.go's
    /// header and cookie payload (`X-Data-0`.., `x_data_0`..).
    #[test]
    fn placements_in_query_header_cookie_and_inline_payload() {
        let s = Settings {
            session_placement: Placement::Query,
            session_key: "x_session".into(),
            seq_placement: Placement::Header,
            seq_key: "X-Seq".into(),
            ..Settings { path: "/xh".into(), ..Settings::default() }
        };
        let r = referer();
        let h = [("Referer", r.as_str()), ("X-Seq", "3"), ("X-Data-0", "aGVs"), ("X-Data-1", "bG8")];
        assert_eq!(
            s.classify(&head("POST", "/xh?x_session=s1", &h)),
            Ok(Request::Packet { session: "s1".into(), seq: 3, inline: b"hello".to_vec(), body: true })
        );
        let cookie = Settings {
            session_placement: Placement::Cookie,
            session_key: "x_session".into(),
            uplink_data_placement: Placement::Cookie,
            uplink_data_key: "x_data".into(),
            ..settings("/xh")
        };
        let h = [("Referer", r.as_str()), ("Cookie", "x_session=s2; x_data_0=aGk")];
        assert_eq!(
            cookie.classify(&head("POST", "/xh/9", &h)),
            Ok(Request::Packet { session: "s2".into(), seq: 9, inline: b"hi".to_vec(), body: false })
        );
        let bad = [("Referer", r.as_str()), ("X-Data-0", "***")];
        assert_eq!(settings("/xh").classify(&head("POST", "/xh/s/0", &bad)), Err(Refused::InlineData));
    }

    /// A client's requests, as config.go's `FillPacketRequest` and `ApplyMetaToRequest` make
    /// them, are what the server's checks accept.
    #[test]
    fn client_requests_pass_the_server_checks() {
        for obfs in [false, true] {
            for placement in [Placement::Header, Placement::QueryInHeader, Placement::Cookie, Placement::Query] {
                for method in [PaddingMethod::RepeatX, PaddingMethod::Tokenish] {
                    let mut s = settings("/xh?ed=1");
                    s.padding.obfs_mode = obfs;
                    s.padding.placement = placement;
                    s.padding.method = method;
                    let c = s.client_request("https://example.com", Some("sid"), Some(5), 300, false);
                    let hs: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let got = s.classify(&head("POST", &c.target, &hs));
                    let want = Request::Packet { session: "sid".into(), seq: 5, inline: vec![], body: true };
                    assert_eq!(got, Ok(want), "obfs {obfs} {placement:?} {method:?}: {c:?}");
                }
            }
        }
        let s = settings("/xh");
        let c = s.client_request("https://example.com", Some("sid"), None, 100, true);
        assert!(c.headers.contains(&("Content-Type".into(), "application/grpc".into())));
        assert_eq!(c.target, "/xh/sid");
        // config.go pads before it places the session id: Referer is the base URL's.
        let referer = format!("https://example.com/xh/?x_padding={}", "X".repeat(100));
        assert!(c.headers.contains(&("Referer".into(), referer)), "{c:?}");
    }

    /// xpadding.go with an obfs-mode Config whose key, header and placement are empty (an API
    /// Config's, read as given): no cookie and no header is looked at, the query's empty key
    /// (`?=..`, Go's `Query().Get("")`) is the only padding taken, and responses carry none.
    #[test]
    fn obfs_mode_with_empty_keys_reads_as_xpadding_go_does() {
        let mut s = settings("/xh");
        s.padding = Padding {
            obfs_mode: true,
            key: String::new(),
            header: String::new(),
            placement: Placement::Empty,
            ..Padding::default()
        };
        let referer = referer();
        let obfs_header = format!("https://example.com/xh/?x_padding={PAD}");
        let cookie = format!("={PAD}");
        for h in [
            vec![("Referer", referer.as_str())],
            vec![("X-Padding", obfs_header.as_str())],
            vec![("Cookie", cookie.as_str())],
        ] {
            assert_eq!(s.classify(&head("GET", "/xh/abc", &h)), Err(Refused::Padding(0)), "{h:?}");
        }
        let in_query = format!("/xh/abc?a=1&&={PAD}");
        assert_eq!(s.classify(&head("GET", &in_query, &[])), Ok(Request::Download { session: "abc".into() }));
        let short = "/xh/abc?=XXXX";
        assert_eq!(s.classify(&head("GET", short, &[])), Err(Refused::Padding(4)));
        let answer = s.response_headers(&head("GET", &in_query, &[]), 120);
        assert!(answer.iter().all(|(_, v)| !v.contains("XXXX")), "{answer:?}");
        // A client with such settings sends none either (and so is refused, as Xray's is).
        let c = s.client_request("https://example.com", Some("abc"), None, 100, false);
        assert!(!c.target.contains('X') && c.headers.iter().all(|(_, v)| !v.contains("XXXX")), "{c:?}");
        // Each empty name alone: a named placement without its name pads nothing.
        for placement in [Placement::Header, Placement::QueryInHeader, Placement::Cookie] {
            s.padding.placement = placement;
            let answer = s.response_headers(&head("GET", &in_query, &[]), 120);
            assert!(answer.iter().all(|(_, v)| !v.contains("XXXX")), "{placement:?}: {answer:?}");
        }
    }

    /// xpadding.go: tokenish padding is judged by its Huffman length, with a tolerance of 2.
    #[test]
    fn tokenish_padding_is_measured_in_huffman_bytes() {
        assert_eq!(huffman_len(b"X"), 1);
        assert_eq!(huffman_len(b"0"), 1);
        assert_eq!(huffman_len(b"00000000"), 5);
        for len in [1, 50, 100, 999] {
            let p = padding(PaddingMethod::Tokenish, len);
            assert!(huffman_len(p.as_bytes()).abs_diff(len) <= 2, "{len}: {p}");
            assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        // Drawn afresh each time, as Xray's is: no fixed string to match.
        let draws: std::collections::HashSet<String> = (0..8).map(|_| padding(PaddingMethod::Tokenish, 100)).collect();
        assert!(draws.len() > 1, "{draws:?}");
    }

    /// hub.go's response headers: CORS, padding in X-Padding, and for a downlink no
    /// buffering, no caching and an event stream.
    #[test]
    fn response_headers_as_the_hub_writes_them() {
        let s = settings("/xh");
        let h = s.response_headers(&head("GET", "/xh/a", &[]), 120);
        assert_eq!(h[0], ("Access-Control-Allow-Origin".into(), "*".into()));
        assert_eq!(h[1], ("X-Padding".into(), "X".repeat(120)));
        assert!(s.downlink_headers().contains(&("Content-Type", "text/event-stream")));
        let quiet = Settings { no_sse_header: true, ..settings("/xh") };
        assert_eq!(quiet.downlink_headers().len(), 2);
    }

    /// upload_queue.go: packets come out in seq order, duplicates and stale ones are dropped,
    /// and too many waiting for a gap is an error.
    #[test]
    fn upload_queue_reorders_drops_duplicates_and_is_bounded() {
        let mut q = UploadQueue::new(3);
        assert_eq!(q.push(1, "b"), Ok(Pushed::Queued));
        assert_eq!(q.pop(), None, "seq 0 has not come");
        assert_eq!(q.push(1, "b again"), Ok(Pushed::Duplicate));
        assert_eq!(q.push(0, "a"), Ok(Pushed::Queued));
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some("a"), Some("b"), None));
        assert_eq!(q.push(0, "stale"), Ok(Pushed::Duplicate));
        for seq in 3..7 {
            assert_eq!(q.push(seq, "later"), Ok(Pushed::Queued), "max + 1 are held, as Xray holds them");
        }
        assert_eq!(q.push(7, "one too many"), Err(QueueError::TooManyBuffered(3)));
        // The awaited one is always taken: it unblocks the rest.
        assert_eq!(q.push(2, "c"), Ok(Pushed::Queued));
        assert_eq!(q.held(), 5);
        assert_eq!(q.pop(), Some("c"));
        assert_eq!(q.next_seq(), 3);
    }

    #[test]
    fn session_ids_are_uuids_or_drawn_from_the_table() {
        let mut n = 0u64;
        let mut rnd = || {
            n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            n
        };
        let id = Settings::default().new_session_id(&mut rnd);
        assert_eq!(uuid::Uuid::parse_str(&id).map(|u| u.get_version_num()), Ok(4));
        let s = Settings { session_id_table: "ab".into(), session_id_length: Range::new(8, 8), ..Settings::default() };
        let id = s.new_session_id(&mut rnd);
        assert_eq!(id.len(), 8);
        assert!(id.bytes().all(|b| b == b'a' || b == b'b'));
    }

    #[test]
    fn ranges_pick_within_themselves() {
        let r = Range::new(100, 1000);
        assert!((0..50u64).map(|i| r.pick(i * 7919)).all(|v| r.contains(u64::from(v))));
        assert_eq!(Range::new(5, 5).pick(12345), 5);
    }
}
