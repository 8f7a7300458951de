//! The HTTP proxy inbound (and the HTTP side of a SOCKS inbound): CONNECT tunnels, and
//! absolute-URI requests forwarded with the proxy's header fields removed, one upstream
//! connection per request, each routed on its own. With `Proxy-Connection: keep-alive` and a
//! response of known length the client connection carries the next request, as in Xray.
//!
//! Refusals answer as Xray does: 407 with `Proxy-Authenticate` for missing or wrong
//! credentials, 400 for a request that is not a proxy request; bytes that are not HTTP get
//! nothing back and are drained.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shardray_core::spec::LevelPolicy;
use shardray_core::stats::Refusal;
use shardray_wire::http::{
    BodyLength, HttpError, RequestHead, RequestKind, ResponseHead, MAX_HEAD_LEN, RESPONSE_AUTH_REQUIRED,
    RESPONSE_BAD_REQUEST, RESPONSE_CONNECTED, RESPONSE_UNAVAILABLE,
};
use shardray_wire::sniff::RequestAttrs;

use super::{fallback, ConnInfo};
use crate::ctx::{InboundRt, ProxySettings, ShardCtx};
use crate::outbound::{carry, forward, Carry, Session};
use crate::relay::{relay, Meter, RelayEnd, RelayOptions};
use crate::users::{PasswordKey, SessionWatch, UserTable};

/// Serves requests on one client connection; `data` holds the bytes already read.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve<S>(
    ctx: &Rc<ShardCtx>,
    inbound: &InboundRt,
    users: &RefCell<UserTable<PasswordKey>>,
    settings: &ProxySettings,
    mut stream: S,
    info: &ConnInfo,
    mut data: Vec<u8>,
    started: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = ctx.policy(0).handshake;
    let mut first = true;
    let mut forward_head = Vec::new();
    loop {
        let reading = read_head(&mut stream, &mut data, &mut forward_head);
        let parsed = futures_lite::future::or(reading, async {
            glommio::timer::sleep(timeout).await;
            Err("handshake timed out")
        })
        .await;
        let head = match parsed {
            Ok(head) => head,
            // The client is done with a kept-alive connection.
            Err(_) if !first && data.is_empty() => return,
            Err(reason) if first => {
                let rejected = fallback::Rejected { protocol: "http", reason, why: Refusal::BadRequest, started };
                let len = data.len();
                data.resize(len.max(1024), 0);
                return fallback::reject(ctx, inbound, &[], stream, &mut data, len, info, rejected).await;
            }
            Err(reason) => {
                fallback::refuse(ctx, inbound, "http", reason, Refusal::BadRequest, info);
                let _ = stream.close().await;
                return;
            }
        };
        first = false;
        let user = match &head.auth {
            _ if !settings.auth.get() => None,
            Some(auth) => {
                let key = shardray_wire::socks::account_key(auth.username.as_bytes(), auth.password.as_bytes());
                users.borrow().get(&key)
            }
            None => None,
        };
        if settings.auth.get() && user.is_none() {
            let reason = if head.auth.is_some() { "invalid username or password" } else { "no proxy credentials" };
            fallback::refuse(ctx, inbound, "http", reason, Refusal::BadRequest, info);
            let _ = stream.write_all(RESPONSE_AUTH_REQUIRED).await;
            let _ = stream.close().await;
            return;
        }
        let user = user.map(|u| u.bind(&ctx.users.borrow()));
        // A user over its limits gets what a wrong account gets (told of by `admit`).
        let Ok(admitted) = crate::limits::admit(ctx, &inbound.tag, user.as_ref(), info.peer.ip()) else {
            let _ = stream.write_all(RESPONSE_AUTH_REQUIRED).await;
            let _ = stream.close().await;
            return;
        };
        let dest = match (head.kind, head.destination) {
            (RequestKind::Origin, _) if !settings.allow_transparent => None,
            (_, dest) => dest,
        };
        let Some(dest) = dest else {
            fallback::refuse(ctx, inbound, "http", "not a proxy request", Refusal::BadRequest, info);
            let _ = stream.write_all(RESPONSE_BAD_REQUEST).await;
            let _ = stream.close().await;
            return;
        };
        let level = user.as_ref().map_or(settings.user_level, |u| u.level);
        let session = Session { inbound, peer: info.peer, level, user, dest, client_fd: info.plain_fd, admitted };
        data.drain(..head.head_len);
        if head.kind == RequestKind::Connect {
            if stream.write_all(RESPONSE_CONNECTED).await.is_err() {
                return;
            }
            data.shrink_to_fit();
            return forward(ctx, &mut stream, session, &data, &[]).await;
        }
        let mut exchange = Exchange {
            head: std::mem::take(&mut forward_head),
            body: head.body,
            pending: std::mem::take(&mut data),
            no_body_back: head.is_head,
            reusable: false,
        };
        carry(ctx, &mut stream, session, Carry::Exchange(&mut exchange)).await;
        if !(exchange.reusable && head.proxy_keep_alive) {
            let _ = stream.close().await;
            return;
        }
        data = exchange.pending;
        forward_head = exchange.head;
    }
}

/// Reads until `data` starts with a whole request head; `forward` receives the rewritten head.
async fn read_head<S>(stream: &mut S, data: &mut Vec<u8>, forward: &mut Vec<u8>) -> Result<Head, &'static str>
where
    S: AsyncRead + Unpin,
{
    let mut chunk = [0u8; 4096];
    loop {
        if !data.is_empty() {
            match RequestHead::parse(data, forward) {
                Ok(head) => return Ok(Head::from(head, data)),
                Err(HttpError::UnexpectedEnd) => {}
                Err(HttpError::HeadTooLarge) => return Err("request head too large"),
                Err(HttpError::BadHost) => return Err("malformed proxy host"),
                Err(HttpError::BadFraming) => return Err("request body framing cannot be determined"),
                Err(_) => return Err("not an http request"),
            }
        }
        let room = (MAX_HEAD_LEN + 1).saturating_sub(data.len()).clamp(1, chunk.len());
        match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return Err("connection closed during handshake"),
            Ok(n) => data.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A request head as the loop needs it.
struct Head {
    kind: RequestKind,
    destination: Option<shardray_wire::addr::Destination>,
    head_len: usize,
    auth: Option<shardray_wire::http::BasicAuth>,
    proxy_keep_alive: bool,
    body: BodyLength,
    /// A HEAD request: the response has no body whatever its head says.
    is_head: bool,
}

impl Head {
    fn from(h: RequestHead, data: &[u8]) -> Head {
        Head {
            is_head: data.starts_with(b"HEAD "),
            kind: h.kind,
            destination: h.destination,
            head_len: h.head_len,
            auth: h.auth,
            proxy_keep_alive: h.proxy_keep_alive,
            body: h.body,
        }
    }
}

/// One forwarded request and its response, carried over a routed upstream connection.
pub(crate) struct Exchange {
    /// The rewritten request head.
    head: Vec<u8>,
    /// How the request body is delimited.
    body: BodyLength,
    /// Client bytes read past the head: the body, and perhaps the next request after it.
    pending: Vec<u8>,
    /// The request was HEAD.
    no_body_back: bool,
    /// Set once the response went back whole with a known length: the client connection may
    /// carry another request.
    reusable: bool,
}

/// `%XX` sequences decoded (others left as they are), as a URI's path is read.
fn percent_decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An I/O step that gives up after the policy's idle time.
async fn within<T>(idle: Duration, step: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    futures_lite::future::or(step, async {
        glommio::timer::sleep(idle).await;
        Err(io::ErrorKind::TimedOut.into())
    })
    .await
}

impl Exchange {
    /// The request's attributes as Xray's HTTP inbound gives them to the router: `:method` in
    /// capitals, `:path` the URI's path alone (percent-decoded, no query), and the header
    /// fields it forwards (end-to-end only: no `Host`, no `Connection`), `user-agent` empty
    /// when the client sent none.
    pub(crate) fn attrs(&self) -> RequestAttrs {
        let mut attrs = RequestAttrs::sniff(&self.head).unwrap_or_default();
        if let Some(method) = attrs.get(":method").map(str::to_ascii_uppercase) {
            attrs.set(":method", &method);
        }
        if let Some(target) = attrs.get(":path") {
            let path = target.split(['?', '#']).next().unwrap_or("");
            attrs.set(":path", &percent_decoded(path));
        }
        attrs.remove("host");
        attrs.remove("connection");
        if attrs.get("user-agent").is_none() {
            attrs.set("user-agent", "");
        }
        attrs
    }

    /// Sends the request (after `preamble`, the outbound protocol's header) and brings the
    /// response back, rewritten as Xray rewrites it.
    pub(crate) async fn run<C, U, M>(
        &mut self,
        client: &mut C,
        upstream: &mut U,
        preamble: &[u8],
        policy: &LevelPolicy,
        watch: Option<&SessionWatch<'_>>,
        meter: &mut M,
    ) -> io::Result<RelayEnd>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
        M: Meter,
    {
        let idle = policy.conn_idle;
        let closed = || watch.is_some_and(SessionWatch::is_closed);
        let mut first = preamble.to_vec();
        first.extend_from_slice(&self.head);
        let BodyLength::Fixed(mut left) = self.body else {
            // A chunked body is not framed here: it goes as it comes, and so does the
            // response, and the connection ends with them.
            first.extend_from_slice(&self.pending);
            meter.up((self.head.len() + self.pending.len()) as u64);
            self.pending.clear();
            within(idle, upstream.write_all(&first)).await?;
            return relay(client, upstream, RelayOptions::new(policy), meter).await;
        };
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(self.pending.len());
        first.extend_from_slice(&self.pending[..take]);
        self.pending.drain(..take);
        left -= take as u64;
        within(idle, upstream.write_all(&first)).await?;
        meter.up((self.head.len() + take) as u64);
        let mut buf = vec![0u8; 16 * 1024];
        while left > 0 {
            if closed() {
                return Ok(RelayEnd::Closed);
            }
            if meter.exhausted() {
                return Ok(RelayEnd::OverQuota);
            }
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let n = within(idle, client.read(&mut buf[..want])).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            within(idle, upstream.write_all(&buf[..n])).await?;
            meter.up(n as u64);
            left -= n as u64;
        }
        within(idle, upstream.flush()).await?;

        // The response head (1xx heads pass through first).
        let mut resp = Vec::new();
        let mut out = Vec::new();
        let head = loop {
            match ResponseHead::forward(&resp, &mut out) {
                Ok(head) if (100..=199).contains(&head.status) => {
                    within(idle, client.write_all(&out)).await?;
                    meter.down(out.len() as u64);
                    resp.drain(..head.head_len);
                    continue;
                }
                Ok(head) => break head,
                Err(HttpError::UnexpectedEnd) => {}
                Err(_) => {
                    within(idle, client.write_all(RESPONSE_UNAVAILABLE)).await?;
                    return Ok(RelayEnd::Done);
                }
            }
            if closed() {
                return Ok(RelayEnd::Closed);
            }
            if meter.exhausted() {
                return Ok(RelayEnd::OverQuota);
            }
            let n = match within(idle, upstream.read(&mut buf)).await {
                Ok(n) if n > 0 => n,
                _ => {
                    within(idle, client.write_all(RESPONSE_UNAVAILABLE)).await?;
                    return Ok(RelayEnd::Done);
                }
            };
            resp.extend_from_slice(&buf[..n]);
        };
        resp.drain(..head.head_len);
        let body = if self.no_body_back { BodyLength::Fixed(0) } else { head.body };
        match body {
            BodyLength::Fixed(n) => {
                let take = usize::try_from(n).unwrap_or(usize::MAX).min(resp.len());
                out.extend_from_slice(&resp[..take]);
                within(idle, client.write_all(&out)).await?;
                meter.down(out.len() as u64);
                let mut left = n - take as u64;
                while left > 0 {
                    if closed() {
                        return Ok(RelayEnd::Closed);
                    }
                    if meter.exhausted() {
                        return Ok(RelayEnd::OverQuota);
                    }
                    let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let n = within(idle, upstream.read(&mut buf[..want])).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    within(idle, client.write_all(&buf[..n])).await?;
                    meter.down(n as u64);
                    left -= n as u64;
                }
                within(idle, client.flush()).await?;
                self.reusable = head.keep_alive;
            }
            BodyLength::Chunked | BodyLength::UntilClose => {
                // Until the upstream closes (it was asked to): the client's connection ends too.
                out.extend_from_slice(&resp);
                within(idle, client.write_all(&out)).await?;
                meter.down(out.len() as u64);
                loop {
                    if closed() {
                        return Ok(RelayEnd::Closed);
                    }
                    if meter.exhausted() {
                        return Ok(RelayEnd::OverQuota);
                    }
                    let n = within(idle, upstream.read(&mut buf)).await?;
                    if n == 0 {
                        break;
                    }
                    within(idle, client.write_all(&buf[..n])).await?;
                    meter.down(n as u64);
                }
                within(idle, client.flush()).await?;
            }
        }
        Ok(RelayEnd::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attributes of a forwarded request are those Xray's HTTP inbound routes by.
    #[test]
    fn exchange_attrs_as_xray_gives_them() {
        let mut head = Vec::new();
        let raw = b"get http://u:p@a.example:8080/x%20y/z?q=1 HTTP/1.1\r\nHost: a.example:8080\r\n\
                    Proxy-Connection: keep-alive\r\nX-Route: Blue\r\n\r\n";
        RequestHead::parse(raw, &mut head).unwrap();
        let exchange =
            Exchange { head, body: BodyLength::Fixed(0), pending: Vec::new(), no_body_back: false, reusable: false };
        let attrs = exchange.attrs();
        assert_eq!(attrs.get(":method"), Some("GET"));
        assert_eq!(attrs.get(":path"), Some("/x y/z"));
        assert_eq!(attrs.get("x-route"), Some("Blue"));
        assert_eq!(attrs.get("user-agent"), Some(""));
        for gone in ["host", "connection", "proxy-connection"] {
            assert_eq!(attrs.get(gone), None, "{gone}");
        }
        assert_eq!(percent_decoded("/%zz%4"), "/%zz%4");
    }
}
