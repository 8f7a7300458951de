//! A blocking StatsService client for tests, over the real gRPC API.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use shardray_proto::xray::app::stats::command as pb;
use tonic::transport::Channel;

/// Where and how `ApiClient::lazy` dials.
#[derive(Clone)]
pub enum Dial {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
    /// TLS, checking the server's certificate for the address's IP.
    Tls(SocketAddr, std::sync::Arc<rustls::ClientConfig>),
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// A connection to the API with its own small runtime.
pub struct ApiClient {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

impl ApiClient {
    /// Connects to the API at `addr`.
    pub fn connect(addr: SocketAddr) -> ApiClient {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let channel =
            rt.block_on(Channel::from_shared(format!("http://{addr}")).unwrap().connect()).expect("connect to the API");
        ApiClient { rt, channel }
    }

    /// A client of the API at `dial`, connecting on its first call: a connection refused (a
    /// TLS handshake the server turned down) is then that call's error.
    pub fn lazy(dial: Dial) -> ApiClient {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let endpoint = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(10));
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let dial = dial.clone();
            async move {
                let io: Box<dyn Io> = match dial {
                    Dial::Tcp(addr) => Box::new(tokio::net::TcpStream::connect(addr).await?),
                    Dial::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
                    Dial::Tls(addr, config) => {
                        let tcp = tokio::net::TcpStream::connect(addr).await?;
                        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                        Box::new(tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?)
                    }
                };
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
            }
        }));
        drop(_guard);
        ApiClient { rt, channel }
    }

    /// A raw gRPC channel, for calling services under other names.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Runs a future on the client's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// QueryStats: every counter whose name contains `pattern`.
    pub fn query(&self, pattern: &str, reset: bool) -> BTreeMap<String, i64> {
        let mut client = pb::stats_service_client::StatsServiceClient::new(self.channel.clone());
        let reply = self
            .rt
            .block_on(client.query_stats(pb::QueryStatsRequest {
                pattern: pattern.into(),
                reset,
                ..Default::default()
            }))
            .expect("QueryStats");
        reply.into_inner().stat.into_iter().map(|s| (s.name, s.value)).collect()
    }

    /// GetStats: one counter, or the gRPC status.
    pub fn get(&self, name: &str, reset: bool) -> Result<i64, tonic::Status> {
        let mut client = pb::stats_service_client::StatsServiceClient::new(self.channel.clone());
        let reply = self.rt.block_on(client.get_stats(pb::GetStatsRequest { name: name.into(), reset }))?;
        Ok(reply.into_inner().stat.map_or(0, |s| s.value))
    }
}

use prost::Message;
use shardray_proto::shardray::app::proxyman::command as ours;
use shardray_proto::xray::app::proxyman::command as handler;
use shardray_proto::xray::common::protocol::User;
use shardray_proto::xray::common::serial::TypedMessage;
use shardray_proto::xray::proxy::{trojan, vless};

/// A TypedMessage of the given type name.
pub fn typed(type_name: &str, m: &impl Message) -> TypedMessage {
    TypedMessage { r#type: type_name.into(), value: m.encode_to_vec() }
}

/// An API user with a VLESS account.
pub fn vless_user(email: &str, id: &str, level: u32) -> User {
    let account = vless::Account { id: id.into(), ..Default::default() };
    User { level, email: email.into(), account: Some(typed("xray.proxy.vless.Account", &account)) }
}

/// An API user with a Trojan account of the given type name (Xray's or v2fly's).
pub fn trojan_user_as(type_name: &str, email: &str, password: &str, level: u32) -> User {
    let account = trojan::Account { password: password.into(), ..Default::default() };
    User { level, email: email.into(), account: Some(typed(type_name, &account)) }
}

/// An API user with an `xray.proxy.trojan.Account`.
pub fn trojan_user(email: &str, password: &str, level: u32) -> User {
    trojan_user_as("xray.proxy.trojan.Account", email, password, level)
}

impl ApiClient {
    /// AlterInbound with upstream's AddUserOperation for `user`.
    pub fn add_api_user(&self, tag: &str, user: User) -> Result<(), tonic::Status> {
        let op = handler::AddUserOperation { user: Some(user) };
        self.alter(tag, typed("xray.app.proxyman.command.AddUserOperation", &op))
    }

    /// A HandlerService client.
    pub fn handler(&self) -> handler::handler_service_client::HandlerServiceClient<Channel> {
        handler::handler_service_client::HandlerServiceClient::new(self.channel.clone())
    }

    /// AlterInbound with any operation.
    pub fn alter(&self, tag: &str, operation: TypedMessage) -> Result<(), tonic::Status> {
        let req = handler::AlterInboundRequest { tag: tag.into(), operation: Some(operation) };
        self.rt.block_on(self.handler().alter_inbound(req)).map(|_| ())
    }

    /// AlterInbound with upstream's AddUserOperation.
    pub fn add_user(&self, tag: &str, email: &str, id: &str, level: u32) -> Result<(), tonic::Status> {
        let op = handler::AddUserOperation { user: Some(vless_user(email, id, level)) };
        self.alter(tag, typed("xray.app.proxyman.command.AddUserOperation", &op))
    }

    /// AlterInbound with upstream's RemoveUserOperation.
    pub fn remove_user(&self, tag: &str, email: &str) -> Result<(), tonic::Status> {
        let op = handler::RemoveUserOperation { email: email.into() };
        self.alter(tag, typed("xray.app.proxyman.command.RemoveUserOperation", &op))
    }

    /// One of our own operations, by its message name in `shardray.app.proxyman.command`.
    pub fn ours(&self, tag: &str, name: &str, op: &impl Message) -> Result<(), tonic::Status> {
        self.alter(tag, typed(&format!("shardray.app.proxyman.command.{name}"), op))
    }

    /// GetInboundUsers: the emails of an inbound's users, sorted.
    pub fn user_emails(&self, tag: &str) -> Result<Vec<String>, tonic::Status> {
        let req = handler::GetInboundUserRequest { tag: tag.into(), email: String::new() };
        let reply = self.rt.block_on(self.handler().get_inbound_users(req))?;
        let mut emails: Vec<String> = reply.into_inner().users.into_iter().map(|u| u.email).collect();
        emails.sort();
        Ok(emails)
    }
}

/// Re-exported for tests that build our own operations.
pub use ours::{
    AddUsersOperation, KickUserOperation, RemoveUsersOperation, ReplaceUsersOperation, SetUserLevelOperation,
    SetUserQuotaOperation,
};
