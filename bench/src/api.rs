//! A blocking client of shardray's gRPC API (HandlerService, StatsService), for the `churn` and
//! `users` scenarios. Every call goes over one HTTP/2 connection from a current-thread runtime,
//! so a measured call is one request and one reply on an established connection.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use prost::Message;
use shardray_proto::shardray::app::proxyman::command as ours;
use shardray_proto::xray::app::proxyman::command as handler;
use shardray_proto::xray::app::stats::command as stats;
use shardray_proto::xray::common::protocol::User;
use shardray_proto::xray::common::serial::TypedMessage;
use shardray_proto::xray::proxy::vless;
use tonic::transport::Channel;
use uuid::Uuid;

/// The inbound tag every bench config gives its VLESS inbound.
pub const INBOUND: &str = "bench-in";

/// A connection to the API with its own runtime.
pub struct ApiClient {
    rt: tokio::runtime::Runtime,
    handler: handler::handler_service_client::HandlerServiceClient<Channel>,
    stats: stats::stats_service_client::StatsServiceClient<Channel>,
}

impl ApiClient {
    /// Connects to the API at `addr`, giving up after `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<ApiClient> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let channel = rt
            .block_on(
                Channel::from_shared(format!("http://{addr}"))?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .tcp_nodelay(true)
                    .connect(),
            )
            .with_context(|| format!("connecting to the API at {addr}"))?;
        // A QueryStats reply over a million users is far above tonic's 4 MiB default.
        let stats =
            stats::stats_service_client::StatsServiceClient::new(channel.clone()).max_decoding_message_size(usize::MAX);
        let handler =
            handler::handler_service_client::HandlerServiceClient::new(channel).max_encoding_message_size(usize::MAX);
        Ok(ApiClient { rt, handler, stats })
    }

    /// AlterInbound on the bench inbound; returns once the server acknowledged.
    pub fn alter(&mut self, operation: TypedMessage) -> Result<(), tonic::Status> {
        let req = handler::AlterInboundRequest { tag: INBOUND.into(), operation: Some(operation) };
        let call = self.handler.alter_inbound(req);
        self.rt.block_on(call).map(|_| ())
    }

    /// GetInboundUsersCount of the bench inbound.
    pub fn user_count(&mut self) -> Result<i64, tonic::Status> {
        let req = handler::GetInboundUserRequest { tag: INBOUND.into(), email: String::new() };
        let call = self.handler.get_inbound_users_count(req);
        Ok(self.rt.block_on(call)?.into_inner().count)
    }

    /// QueryStats without reset: every counter whose name contains `pattern`.
    pub fn query_stats(&mut self, pattern: &str) -> Result<Vec<stats::Stat>, tonic::Status> {
        let req = stats::QueryStatsRequest { pattern: pattern.into(), reset: false, ..Default::default() };
        let call = self.stats.query_stats(req);
        Ok(self.rt.block_on(call)?.into_inner().stat)
    }
}

/// A TypedMessage carrying `m` under `type_name`.
fn typed(type_name: &str, m: &impl Message) -> TypedMessage {
    TypedMessage { r#type: type_name.into(), value: m.encode_to_vec() }
}

/// A level-0 API user with a VLESS account.
pub fn vless_user(email: &str, id: Uuid) -> User {
    let account = vless::Account { id: id.to_string(), ..Default::default() };
    User { level: 0, email: email.into(), account: Some(typed("xray.proxy.vless.Account", &account)) }
}

/// Upstream's AddUserOperation for one user.
pub fn add_user(email: &str, id: Uuid) -> TypedMessage {
    let op = handler::AddUserOperation { user: Some(vless_user(email, id)) };
    typed("xray.app.proxyman.command.AddUserOperation", &op)
}

/// Upstream's RemoveUserOperation.
pub fn remove_user(email: &str) -> TypedMessage {
    let op = handler::RemoveUserOperation { email: email.into() };
    typed("xray.app.proxyman.command.RemoveUserOperation", &op)
}

/// shardray's AddUsersOperation: all of `users` in one epoch, or none.
pub fn add_users(users: Vec<User>) -> TypedMessage {
    let op = ours::AddUsersOperation { users };
    typed("shardray.app.proxyman.command.AddUsersOperation", &op)
}
