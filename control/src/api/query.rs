//! QueryStats answered as a stream: the counters are read under the registry lock into a
//! packed list (about 17 bytes a user), the lock is released, and the reply's bytes are
//! encoded from that list a chunk at a time as the client reads them. A million users' reply
//! is about 90 MiB of protobuf; built whole, it cost 300 MiB and held the lock throughout.
//!
//! The bytes are exactly what prost would encode for `QueryStatsResponse` (the tests compare
//! them), framed as one gRPC message: tonic's codec can only encode a message whole, so this
//! layer answers the call itself, in front of the generated service.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};
use prost::Message as _;
use shardray_proto::xray::app::stats::command as pb;

use super::ApiState;

/// The method this layer answers (aliases are rewritten to it before).
const PATH: &str = "/xray.app.stats.command.StatsService/QueryStats";

/// The largest QueryStats request taken (patterns are short).
const MAX_QUERY_REQUEST: usize = 4 << 20;

/// About this much of the reply is encoded per poll: small enough to bound the memory between
/// the packed list and the socket, large enough that the per-chunk cost does not show.
const CHUNK: usize = 64 << 10;

/// The directions of a user's traffic counters, as their names end.
const DIRS: [&str; 2] = ["uplink", "downlink"];

/// The counters a QueryStats reports, packed. Users' counters are stored per user as a mask
/// byte (bit 0: uplink matched, bit 1: downlink), the email's length (varint), the email, and
/// the value of each matched direction (varint); every other counter by name.
#[derive(Debug, Default)]
pub struct QueryAnswer {
    users: Vec<u8>,
    links: Vec<(String, u64)>,
    /// The encoded length of the whole `QueryStatsResponse`.
    encoded_len: usize,
    /// Counters in the answer.
    count: usize,
}

/// The encoded length of a `Stat` field of `QueryStatsResponse` whose name is `name_len` bytes
/// long: tag, length, and the `Stat` (name, and value unless 0, as proto3 leaves it out).
fn stat_len(name_len: usize, value: u64) -> usize {
    let inner = 1 + encoded_len_varint(name_len as u64) + name_len + value_len(value);
    1 + encoded_len_varint(inner as u64) + inner
}

fn value_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + encoded_len_varint(value)
    }
}

/// `user>>>EMAIL>>>traffic>>>DIR`, in parts.
fn user_name_len(email: &str, dir: usize) -> usize {
    "user>>>".len() + email.len() + ">>>traffic>>>".len() + DIRS[dir].len()
}

/// A counter's value as the API reports it: an `int64`.
fn clamp(value: u64) -> u64 {
    value.min(i64::MAX as u64)
}

/// Writes one `Stat` field of `QueryStatsResponse` whose name is the concatenation of `name`.
fn put_stat(buf: &mut BytesMut, name: &[&[u8]], value: u64) {
    let name_len: usize = name.iter().map(|p| p.len()).sum();
    let inner = 1 + encoded_len_varint(name_len as u64) + name_len + value_len(value);
    buf.put_u8(0x0a); // QueryStatsResponse.stat = 1, length-delimited
    encode_varint(inner as u64, buf);
    buf.put_u8(0x0a); // Stat.name = 1, length-delimited
    encode_varint(name_len as u64, buf);
    for part in name {
        buf.put_slice(part);
    }
    if value != 0 {
        buf.put_u8(0x10); // Stat.value = 2, varint
        encode_varint(value, buf);
    }
}

impl QueryAnswer {
    /// Adds a user's counters: `values[d]` for each direction `d` whose bit is set in `mask`.
    pub(crate) fn push_user(&mut self, email: &str, mask: u8, values: [u64; 2]) {
        if mask == 0 {
            return;
        }
        self.users.push(mask);
        encode_varint(email.len() as u64, &mut self.users);
        self.users.extend_from_slice(email.as_bytes());
        for d in (0..2).filter(|d| mask & (1 << d) != 0) {
            let value = clamp(values[d]);
            encode_varint(value, &mut self.users);
            self.encoded_len += stat_len(user_name_len(email, d), value);
            self.count += 1;
        }
    }

    /// Adds an inbound's, outbound's or other named counter.
    pub(crate) fn push_named(&mut self, name: String, value: u64) {
        let value = clamp(value);
        self.encoded_len += stat_len(name.len(), value);
        self.count += 1;
        self.links.push((name, value));
    }

    /// Counters in the answer.
    pub fn counters(&self) -> usize {
        self.count
    }

    /// The gRPC message (header and `QueryStatsResponse`), a chunk at a time, as the reply's
    /// body sends it.
    pub fn into_chunks(self) -> impl Iterator<Item = Bytes> {
        let mut body = AnswerBody::new(self);
        std::iter::from_fn(move || body.next_chunk())
    }

    /// The answer as a message (for a caller that wants it whole).
    pub fn into_message(self) -> pb::QueryStatsResponse {
        let mut stat = Vec::with_capacity(self.count);
        let mut users = Cursor { bytes: &self.users[..] };
        while let Some((email, mask, values)) = users.next_user() {
            for d in (0..2).filter(|d| mask & (1 << d) != 0) {
                let name = format!("user>>>{email}>>>traffic>>>{}", DIRS[d]);
                stat.push(pb::Stat { name, value: values[d] as i64 });
            }
        }
        stat.extend(self.links.into_iter().map(|(name, value)| pb::Stat { name, value: value as i64 }));
        pb::QueryStatsResponse { stat }
    }
}

/// Reads the packed users back.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// The next user: email, mask, values (0 where the mask has no bit).
    fn next_user(&mut self) -> Option<(&'a str, u8, [u64; 2])> {
        let (&mask, rest) = self.bytes.split_first()?;
        let mut rest = rest;
        // The list is ours, written by `push_user`: it always decodes.
        let len = decode_varint(&mut rest).ok()? as usize;
        let (email, mut rest) = rest.split_at_checked(len)?;
        let email = std::str::from_utf8(email).ok()?;
        let mut values = [0u64; 2];
        for (d, v) in values.iter_mut().enumerate() {
            if mask & (1 << d) != 0 {
                *v = decode_varint(&mut rest).ok()?;
            }
        }
        self.bytes = rest;
        Some((email, mask, values))
    }
}

/// The reply's body: the gRPC message header, the message a chunk at a time, then the
/// trailers with `grpc-status: 0`.
struct AnswerBody {
    answer: QueryAnswer,
    /// How far into `answer.users` the encoding is.
    user_at: usize,
    /// How many of `answer.links` are encoded.
    link_at: usize,
    started: bool,
    done: bool,
}

impl AnswerBody {
    fn new(answer: QueryAnswer) -> AnswerBody {
        AnswerBody { answer, user_at: 0, link_at: 0, started: false, done: false }
    }

    /// The next chunk of the message, or `None` once it is all out.
    fn next_chunk(&mut self) -> Option<Bytes> {
        let mut buf = BytesMut::with_capacity(CHUNK + 256);
        if !self.started {
            self.started = true;
            buf.put_u8(0); // not compressed
            buf.put_u32(self.answer.encoded_len as u32);
        }
        let mut users = Cursor { bytes: &self.answer.users[self.user_at..] };
        while buf.len() < CHUNK {
            let Some((email, mask, values)) = users.next_user() else { break };
            for d in (0..2).filter(|d| mask & (1 << d) != 0) {
                put_stat(&mut buf, &[b"user>>>", email.as_bytes(), b">>>traffic>>>", DIRS[d].as_bytes()], values[d]);
            }
        }
        self.user_at = self.answer.users.len() - users.bytes.len();
        while buf.len() < CHUNK && self.link_at < self.answer.links.len() {
            let (name, value) = &self.answer.links[self.link_at];
            put_stat(&mut buf, &[name.as_bytes()], *value);
            self.link_at += 1;
        }
        (!buf.is_empty()).then(|| buf.freeze())
    }
}

impl http_body::Body for AnswerBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(chunk) = self.next_chunk() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Answers QueryStats itself (see the module's comment) and passes every other call on.
#[derive(Clone)]
pub(super) struct StreamedQuery<S> {
    pub(super) inner: S,
    pub(super) state: Arc<ApiState>,
}

impl<S, B> tower::Service<http::Request<B>> for StreamedQuery<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != PATH {
            return Box::pin(self.inner.call(req));
        }
        let state = self.state.clone();
        Box::pin(async move {
            let answer = match read_request(req).await {
                Ok(req) => super::stats::prepare_query(&state, req).await,
                Err(status) => Err(status),
            };
            Ok(match answer {
                Ok(answer) => respond(answer),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// The call's one request message, read and decoded as tonic would.
async fn read_request<B>(req: http::Request<B>) -> Result<tonic::Request<pb::QueryStatsRequest>, tonic::Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt as _;
    let (parts, body) = req.into_parts();
    let body = http_body_util::Limited::new(body, MAX_QUERY_REQUEST + 5)
        .collect()
        .await
        .map_err(|e| tonic::Status::out_of_range(format!("QueryStats request: {e}")))?
        .to_bytes();
    let message = match body.split_first() {
        None => return Err(tonic::Status::internal("Missing request message.")),
        Some((0, rest)) if rest.len() >= 4 => {
            let (len, message) = rest.split_at(4);
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if message.len() != len {
                return Err(tonic::Status::internal(format!(
                    "QueryStats request: one message of {len} bytes expected, {} bytes follow its header",
                    message.len()
                )));
            }
            message
        }
        Some((0, _)) => return Err(tonic::Status::internal("QueryStats request: truncated message header")),
        Some((1, _)) => {
            return Err(tonic::Status::unimplemented("QueryStats request: compressed messages are not accepted"))
        }
        Some((flag, _)) => {
            return Err(tonic::Status::internal(format!("QueryStats request: invalid compression flag {flag}")))
        }
    };
    let message = pb::QueryStatsRequest::decode(message).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Request::from_http(http::Request::from_parts(parts, message)))
}

/// The reply: headers now, the message as the client reads it.
fn respond(answer: QueryAnswer) -> http::Response<tonic::body::BoxBody> {
    // A gRPC message's length is 32 bits: about 90 million counters.
    if u32::try_from(answer.encoded_len).is_err() {
        let why = format!("QueryStats: the reply would be {} bytes; narrow the pattern", answer.encoded_len);
        return tonic::Status::resource_exhausted(why).into_http();
    }
    let mut res = http::Response::new(tonic::body::boxed(AnswerBody::new(answer)));
    res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    fn answer() -> QueryAnswer {
        let mut a = QueryAnswer::default();
        for i in 0..20_000u64 {
            let email = format!("user{i}@example.com");
            let mask = [1, 2, 3][i as usize % 3];
            a.push_user(&email, mask, [i * 1_000_003, if i % 7 == 0 { 0 } else { u64::MAX }]);
        }
        a.push_user("nothing@x", 0, [5, 5]);
        a.push_named("inbound>>>in>>>traffic>>>uplink".into(), 12345);
        a.push_named("refused>>>bad_request".into(), 0);
        a
    }

    #[test]
    fn the_stream_is_prosts_encoding_framed() {
        let expected = answer().into_message();
        assert_eq!(expected.stat.len(), answer().counters());
        assert!(expected.stat.iter().any(|s| s.value == i64::MAX));
        let body = respond(answer()).into_body();
        let collected = block_on(body.collect()).expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
        let bytes = collected.to_bytes();
        assert_eq!(bytes[0], 0);
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 5);
        assert_eq!(&bytes[5..], &expected.encode_to_vec()[..]);
    }

    #[test]
    fn an_empty_answer_is_an_empty_message() {
        let body = respond(QueryAnswer::default()).into_body();
        let collected = block_on(body.collect()).expect("body");
        assert_eq!(&collected.to_bytes()[..], &[0, 0, 0, 0, 0]);
    }
}
