//! A blocking StatsService client for tests, over the real gRPC API.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use shardray_proto::xray::app::stats::command as pb;
use tonic::transport::Channel;

/// A connection to the API with its own small runtime.
pub struct ApiClient {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

impl ApiClient {
    /// Connects to the API at `addr`.
    pub fn connect(addr: SocketAddr) -> ApiClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let channel = rt
            .block_on(
                Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect(),
            )
            .expect("connect to the API");
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
        reply
            .into_inner()
            .stat
            .into_iter()
            .map(|s| (s.name, s.value))
            .collect()
    }

    /// GetStats: one counter, or the gRPC status.
    #[allow(clippy::result_large_err)] // tonic::Status is what the tests inspect
    pub fn get(&self, name: &str, reset: bool) -> Result<i64, tonic::Status> {
        let mut client = pb::stats_service_client::StatsServiceClient::new(self.channel.clone());
        let reply = self.rt.block_on(client.get_stats(pb::GetStatsRequest {
            name: name.into(),
            reset,
        }))?;
        Ok(reply.into_inner().stat.map_or(0, |s| s.value))
    }
}
