//! Who may call what: with `api.tokens`, every call carries `authorization: Bearer TOKEN`, and
//! the token's role decides which methods it reaches. Without tokens the API is reachable only
//! on loopback or a Unix socket (the config enforces it), and every caller is an admin, as
//! upstream's API is.

use std::sync::Arc;

use shardray_core::spec::{ApiRole, ApiToken};
use tonic::Status;

use super::ApiState;

/// The caller of a call, as the layer found it; in the request's extensions for the services
/// that decide by argument (a counter reset needs an operator).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name; `None` when the API has no tokens.
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
            "token {:?} ({}) may not {what}: it needs {}",
            self.name.as_deref().unwrap_or(""),
            self.role.name(),
            role.name()
        )))
    }
}

/// The caller's role for a request that went through the layer (admin if none did).
pub fn caller<T>(req: &tonic::Request<T>) -> Caller {
    req.extensions().get::<Caller>().cloned().unwrap_or(Caller { name: None, role: ApiRole::Admin })
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

/// The layer: finds the caller, refuses (and audits) what its role does not reach.
#[derive(Clone)]
pub struct Authorize<S> {
    pub inner: S,
    pub tokens: Arc<[ApiToken]>,
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
        if self.tokens.is_empty() {
            req.extensions_mut().insert(Caller { name: None, role: ApiRole::Admin });
            return Box::pin(self.inner.call(req));
        }
        let path = req.uri().path().to_owned();
        let needed = required_role(&path);
        let presented = bearer(req.headers());
        // Every token is compared, so the time taken does not say which one came close.
        let found = presented.and_then(|p| {
            self.tokens.iter().fold(None, |hit, t| if same_secret(p, t.secret.as_bytes()) { Some(t) } else { hit })
        });
        let refusal = match found {
            None if presented.is_none() => Some(Status::unauthenticated(
                "this API needs a token: send the metadata `authorization: Bearer TOKEN` (shardray api --token)",
            )),
            None => Some(Status::unauthenticated("unknown API token")),
            Some(t) => {
                let caller = Caller { name: Some(t.name.as_str().into()), role: t.role };
                let refused = caller.require(needed, &format!("call {}", path.trim_start_matches('/'))).err();
                req.extensions_mut().insert(caller);
                refused
            }
        };
        if let Some(status) = refusal {
            let peer = req.extensions().get::<tonic::transport::server::TcpConnectInfo>().and_then(|i| i.remote_addr());
            let who = found.map_or_else(|| "no valid token".to_owned(), |t| format!("token {:?}", t.name));
            self.state.audit.record(
                peer,
                path.trim_start_matches('/'),
                &format!("refused ({who})"),
                &Err(status.clone()),
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(req))
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
}
