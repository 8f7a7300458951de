//! LoggerService: reopen the log files (after rotation) and follow the log as it is written.

use std::pin::Pin;
use std::sync::Arc;

use shardray_proto::xray::app::log::command as pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::ApiState;

/// The service, ready to add to a router.
pub fn service(state: Arc<ApiState>) -> pb::logger_service_server::LoggerServiceServer<LoggerApi> {
    pb::logger_service_server::LoggerServiceServer::new(LoggerApi { state })
}

/// The LoggerService implementation.
pub struct LoggerApi {
    state: Arc<ApiState>,
}

#[tonic::async_trait]
impl pb::logger_service_server::LoggerService for LoggerApi {
    async fn restart_logger(
        &self,
        req: Request<pb::RestartLoggerRequest>,
    ) -> Result<Response<pb::RestartLoggerResponse>, Status> {
        let log = self.state.log.clone();
        let result = tokio::task::spawn_blocking(move || log.reopen())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("reopening the logs: {e}")));
        self.state.audit.record(req.remote_addr(), "RestartLogger", "", &result);
        result.map(|()| Response::new(pb::RestartLoggerResponse {}))
    }

    type FollowLogStream = Pin<Box<dyn Stream<Item = Result<pb::FollowLogResponse, Status>> + Send>>;

    async fn follow_log(&self, _: Request<pb::FollowLogRequest>) -> Result<Response<Self::FollowLogStream>, Status> {
        let lines = self.state.log.follow().ok_or_else(|| Status::unavailable("logging is off"))?;
        let stream = futures_lite_stream(lines);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Each followed line as a response, until the logger stops or the client goes away.
fn futures_lite_stream(
    lines: async_channel::Receiver<String>,
) -> impl Stream<Item = Result<pb::FollowLogResponse, Status>> + Send {
    tokio_stream::StreamExt::map(lines, |message| Ok(pb::FollowLogResponse { message }))
}
