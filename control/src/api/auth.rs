//! Who may call what: with `api.tokens`, every call carries `authorization: Bearer TOKEN`, and
//! the token's role decides which methods it reaches. Without tokens the API is reachable only
//! on loopback or a Unix socket (the config enforces it), and every caller is an admin, as
//! upstream's API is. With `api.tls`, the client certificate's subject names the caller and
//! `api.tls.clients` gives its role. Every caller's calls go through a token bucket
//! (`api.callLimit`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use shardray_core::spec::{ApiRole, ApiTls, CallLimit};
use tonic::Status;

use super::tls::TlsInfo;
use super::ApiState;

/// The caller of a call, as the layer found it; in the request's extensions for the services
/// that decide by argument (a counter reset needs an operator).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who it is, as messages and the audit say it (`token "panel"`, `certificate "panel-1"`);
    /// `None` for an API without credentials.
    pub name: Option<Arc<str>>,
    pub role: ApiRole,
}

impl Caller {
    /// `Ok` if the caller's role reaches `role`, else PERMISSION_DENIED saying what `what` needs.
    pub fn require(&self, role: ApiRole, what: &str) -> Result<(), Status> {
        if self.role >= role {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{} ({}) may not {what}: it needs {}",
            self.name.as_deref().unwrap_or("the caller"),
            self.role.name(),
            role.name()
        )))
    }
}

/// The caller's role for a request that went through the layer (admin if none did).
pub fn caller<T>(req: &tonic::Request<T>) -> Caller {
    req.extensions().get::<Caller>().cloned().unwrap_or(Caller { name: None, role: ApiRole::Admin })
}

/// The certificate subject's role under `api.tls`, `None` when neither a client entry nor
/// `defaultRole` gives one.
fn certificate_role(tls: &ApiTls, subject: &str) -> Option<ApiRole> {
    tls.clients.iter().find(|(s, _)| s == subject).map(|(_, r)| *r).or(tls.default_role)
}

/// Token buckets, one per caller (token name, certificate subject, or peer address).
pub struct CallLimiter {
    limit: CallLimit,
    buckets: std::sync::Mutex<HashMap<String, (f64, Instant)>>,
}

/// Past this many callers, full buckets are forgotten (they would be full again anyway).
const MAX_BUCKETS: usize = 4096;

impl CallLimiter {
    pub fn new(limit: CallLimit) -> CallLimiter {
        CallLimiter { limit, buckets: std::sync::Mutex::new(HashMap::new()) }
    }

    /// Takes one call from `who`'s bucket; `false` if it is empty.
    pub fn take(&self, who: &str) -> bool {
        self.take_at(who, Instant::now())
    }

    fn take_at(&self, who: &str, now: Instant) -> bool {
        let CallLimit { rate, burst } = self.limit;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut who = who;
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(who) {
            buckets.retain(|_, (level, at)| *level + now.saturating_duration_since(*at).as_secs_f64() * rate < burst);
            // Still as many busy callers (addresses of a flood): the newcomers share one bucket.
            if buckets.len() >= MAX_BUCKETS {
                who = "others";
            }
        }
        let (level, at) = buckets.entry(who.to_owned()).or_insert((burst, now));
        *level = (*level + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The role a method needs, by its canonical path (`/xray.app.….Service/Method`).
pub fn required_role(path: &str) -> ApiRole {
    let mut parts = path.trim_start_matches('/').split('/');
    let service = parts.next().and_then(|s| s.rsplit('.').next()).unwrap_or("");
    let method = parts.next().unwrap_or("");
    match (service, method) {
        // Resets are checked by the methods themselves, which see the argument.
        ("StatsService" | "DeltaStatsService" | "Health" | "ServerReflection", _) => ApiRole::Reader,
        ("HandlerService", "ListInbounds" | "ListOutbounds" | "GetInboundUsers" | "GetInboundUsersCount") => {
            ApiRole::Reader
        }
        // Users only (upstream's operations and ours: batches, levels, kicks).
        ("HandlerService", "AlterInbound") => ApiRole::Operator,
        ("RoutingService", "TestRoute" | "GetBalancerInfo" | "SubscribeRoutingStats" | "ListRule") => ApiRole::Reader,
        ("LoggerService", "FollowLog") => ApiRole::Reader,
        // User events and quotas: what a panel watches.
        ("EventsService", "Subscribe" | "GetUserQuotas") => ApiRole::Reader,
        // A reload may change anything the files name.
        ("ReloadService", _) => ApiRole::Admin,
        _ => ApiRole::Admin,
    }
}

/// Compares secrets in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries, if any: `authorization: Bearer TOKEN` (scheme in any case).
fn bearer(headers: &http::HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|&b| b == b' ')?);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| token.trim_ascii())
}

/// The layer: finds the caller, refuses (and audits) what its role does not reach and the
/// calls past its limit.
#[derive(Clone)]
pub struct Authorize<S> {
    pub inner: S,
    /// `api.tls`, whose client certificate subjects have roles.
    pub tls: Option<Arc<ApiTls>>,
    pub limiter: Option<Arc<CallLimiter>>,
    pub state: Arc<ApiState>,
}

impl<S, B> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let method = path.trim_start_matches('/').to_owned();
        let tls_info = req.extensions().get::<TlsInfo>().cloned();
        let peer = tls_info.as_ref().and_then(|i| i.remote).or_else(|| {
            req.extensions().get::<tonic::transport::server::TcpConnectInfo>().and_then(|i| i.remote_addr())
        });
        let (caller, refusal) = self.identify(&req, &method, tls_info.as_ref());
        // Every call is charged, refused ones too (token guessing is limited like any call):
        // to the caller's name once the call is admitted under it, else to its address.
        let key = match (&caller, &refusal, peer) {
            (Some(Caller { name: Some(name), .. }), None, _) => name.to_string(),
            (_, _, Some(peer)) => format!("peer {}", peer.ip()),
            _ => "local".to_owned(),
        };
        let within = self.limiter.as_ref().is_none_or(|limiter| limiter.take(&key));
        // A refused caller past its bucket gets no audit line per call, so that guessing
        // cannot grow audit.log as fast as the network allows.
        let audited = within || refusal.is_none();
        let refusal = match (within, &self.limiter) {
            (false, Some(limiter)) => {
                let CallLimit { rate, burst } = limiter.limit;
                Some(Status::resource_exhausted(format!(
                    "{key} is past api.callLimit ({rate} calls/s, burst {burst}): slow down"
                )))
            }
            _ => refusal,
        };
        if let Some(status) = refusal {
            if audited {
                // Named as the caller when known (a token too weak for the call), else as charged.
                let who = caller.as_ref().and_then(|c| c.name.as_ref()).map_or_else(|| key.clone(), |n| n.to_string());
                self.state.audit.record(peer, &method, &format!("refused ({who})"), &Err(status.clone()));
            }
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        // A call admitted by its token lasts as long as the token does: a stream (FollowLog,
        // Subscribe, SubscribeRoutingStats) ends when a reload takes the token away.
        let secret = bearer(req.headers()).filter(|_| !self.state.tokens().is_empty()).map(<[u8]>::to_vec);
        let held = caller.as_ref().and_then(|c| c.name.clone()).zip(secret).map(|(name, secret)| Held {
            secret,
            name,
            needed: required_role(&path),
            state: self.state.clone(),
            peer,
            method,
        });
        if let Some(caller) = caller {
            req.extensions_mut().insert(caller);
        }
        let call = self.inner.call(req);
        match held {
            None => Box::pin(call),
            Some(held) => Box::pin(async move {
                let response = call.await?;
                Ok(response.map(|body| tonic::body::boxed(Revocable::new(body, held))))
            }),
        }
    }
}

/// What a call admitted by a token needs to know to end when the token goes.
struct Held {
    secret: Vec<u8>,
    /// The caller's name, for the audit.
    name: Arc<str>,
    needed: ApiRole,
    state: Arc<ApiState>,
    peer: Option<std::net::SocketAddr>,
    method: String,
}

impl Held {
    /// Why the call may go on no longer: its token is gone, or its role no longer reaches
    /// the call (a certificate's part of the role cannot change: its files are not reloaded).
    fn revoked(&self) -> Option<Status> {
        let tokens = self.state.tokens();
        let found =
            tokens
                .iter()
                .fold(None, |hit, t| if same_secret(&self.secret, t.secret.as_bytes()) { Some(t) } else { hit });
        match found {
            None => Some(Status::unauthenticated("the API token was revoked by a reload")),
            Some(t) if t.role < self.needed => Some(Status::permission_denied(format!(
                "token {:?} ({}) may no longer call {}: it needs {}",
                t.name,
                t.role.name(),
                self.method,
                self.needed.name()
            ))),
            Some(_) => None,
        }
    }
}

/// How often an idle stream looks at its token again.
const REVOCATION_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// A response body that ends with the token: every message, and every `REVOCATION_CHECK`
/// while none comes, looks the token up; once it is gone (or its role too low) the body ends
/// with that status in its trailers, and the end is audited.
struct Revocable {
    inner: tonic::body::BoxBody,
    held: Held,
    check: tokio::time::Interval,
    ended: bool,
}

impl Revocable {
    fn new(inner: tonic::body::BoxBody, held: Held) -> Revocable {
        let start = tokio::time::Instant::now() + REVOCATION_CHECK;
        let mut check = tokio::time::interval_at(start, REVOCATION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Revocable { inner, held, check, ended: false }
    }

    /// Ends the body with `status` in its trailers.
    fn end(&mut self, status: Status) -> http_body::Frame<bytes::Bytes> {
        self.ended = true;
        let who = format!("ended ({})", self.held.name);
        self.held.state.audit.record(self.held.peer, &self.held.method, &who, &Err(status.clone()));
        let mut trailers = http::HeaderMap::new();
        let _ = status.add_header(&mut trailers);
        http_body::Frame::trailers(trailers)
    }
}

impl http_body::Body for Revocable {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_data() => match this.held.revoked() {
                // The message is not delivered: the token that would have read it is gone.
                Some(status) => Poll::Ready(Some(Ok(this.end(status)))),
                None => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => {
                while this.check.poll_tick(cx).is_ready() {
                    if let Some(status) = this.held.revoked() {
                        return Poll::Ready(Some(Ok(this.end(status))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S> Authorize<S> {
    /// The caller (`None` when not even a name is known) and the refusal of the call, if any.
    /// With both tokens and `api.tls`, both must admit the call: the caller's role is the
    /// lower of the token's and the certificate's.
    fn identify<B>(
        &self,
        req: &http::Request<B>,
        method: &str,
        tls_info: Option<&TlsInfo>,
    ) -> (Option<Caller>, Option<Status>) {
        let needed = required_role(&format!("/{method}"));
        let mut name: Option<String> = None;
        let mut role = ApiRole::Admin;
        if self.tls.is_some() && tls_info.is_none() {
            // Never so when api.tls is set (its listener hands every call its certificate), but
            // a connection without one is nobody.
            return (None, Some(Status::unauthenticated("this API takes mutual TLS connections only")));
        }
        if let (Some(tls), Some(info)) = (&self.tls, tls_info) {
            name = Some(format!("certificate {:?}", &*info.subject));
            match certificate_role(tls, &info.subject) {
                Some(r) => role = r,
                None => {
                    let status = Status::permission_denied(format!(
                        "certificate {:?} has no role: name it in api.tls.clients (or set api.tls.defaultRole)",
                        &*info.subject
                    ));
                    return (Some(Caller { name: name.map(Into::into), role: ApiRole::Reader }), Some(status));
                }
            }
        }
        let tokens = self.state.tokens();
        if !tokens.is_empty() {
            let presented = bearer(req.headers());
            // Every token is compared, so the time taken does not say which one came close.
            let found = presented.and_then(|p| {
                tokens.iter().fold(None, |hit, t| if same_secret(p, t.secret.as_bytes()) { Some(t) } else { hit })
            });
            let caller = name.clone().map(|n| Caller { name: Some(n.into()), role });
            match found {
                None if presented.is_none() => {
                    return (
                        caller,
                        Some(Status::unauthenticated(
                            "this API needs a token: send the metadata `authorization: Bearer TOKEN` (shardray api --token)",
                        )),
                    )
                }
                None => return (caller, Some(Status::unauthenticated("unknown API token"))),
                Some(t) => {
                    let token = format!("token {:?}", t.name);
                    name = Some(match name {
                        Some(cert) => format!("{token} over {cert}"),
                        None => token,
                    });
                    role = role.min(t.role);
                }
            }
        }
        let Some(name) = name else {
            // No credentials configured: loopback or a Unix socket only, every caller an admin.
            return (Some(Caller { name: None, role: ApiRole::Admin }), None);
        };
        let caller = Caller { name: Some(name.into()), role };
        let refused = caller.require(needed, &format!("call {method}")).err();
        (Some(caller), refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_need_the_roles_the_readme_gives() {
        let cases = [
            ("/xray.app.stats.command.StatsService/QueryStats", ApiRole::Reader),
            ("/shardray.app.stats.command.DeltaStatsService/GetDeltas", ApiRole::Reader),
            ("/grpc.health.v1.Health/Check", ApiRole::Reader),
            ("/xray.app.proxyman.command.HandlerService/ListInbounds", ApiRole::Reader),
            ("/xray.app.proxyman.command.HandlerService/GetInboundUsers", ApiRole::Reader),
            ("/xray.app.proxyman.command.HandlerService/AlterInbound", ApiRole::Operator),
            ("/xray.app.proxyman.command.HandlerService/AddInbound", ApiRole::Admin),
            ("/xray.app.proxyman.command.HandlerService/AddOutbound", ApiRole::Admin),
            ("/xray.app.router.command.RoutingService/TestRoute", ApiRole::Reader),
            ("/xray.app.router.command.RoutingService/AddRule", ApiRole::Admin),
            ("/xray.app.log.command.LoggerService/RestartLogger", ApiRole::Admin),
            ("/xray.app.log.command.LoggerService/FollowLog", ApiRole::Reader),
            ("/shardray.app.events.command.EventsService/Subscribe", ApiRole::Reader),
            ("/shardray.app.events.command.EventsService/GetUserQuotas", ApiRole::Reader),
            ("/some.Unknown/Method", ApiRole::Admin),
        ];
        for (path, role) in cases {
            assert_eq!(required_role(path), role, "{path}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "bEaReR  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        assert!(same_secret(b"abc", b"abc") && !same_secret(b"abc", b"abd") && !same_secret(b"abc", b"ab"));
    }

    #[test]
    fn a_bucket_empties_past_its_burst_and_refills_at_its_rate() {
        let limiter = CallLimiter::new(CallLimit { rate: 10.0, burst: 3.0 });
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.take_at("a", t0)));
        assert!(!limiter.take_at("a", t0));
        // Another caller has its own bucket.
        assert!(limiter.take_at("b", t0));
        // 10 calls/s: one more after 100 ms, never more than the burst.
        assert!(limiter.take_at("a", t0 + std::time::Duration::from_millis(110)));
        assert!(!limiter.take_at("a", t0 + std::time::Duration::from_millis(110)));
        let later = t0 + std::time::Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| limiter.take_at("a", later)).count(), 3);
        // A flood of callers stays within MAX_BUCKETS: past it, newcomers share a bucket.
        for i in 0..MAX_BUCKETS + 10 {
            limiter.take_at(&format!("peer {i}"), later);
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_BUCKETS + 1);
    }
}
