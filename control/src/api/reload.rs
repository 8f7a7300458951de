//! ReloadService (`shardray.app.reload.command`): `shardray api reload`, the answering form of
//! SIGHUP. The work is `crate::reload`'s; this is the call, its audit line and its status.

use std::sync::Arc;

use shardray_proto::shardray::app::reload::command as pb;
use tonic::{Request, Response, Status};

use super::ApiState;

/// The service, ready to add to a router.
pub fn service(state: Arc<ApiState>) -> pb::reload_service_server::ReloadServiceServer<ReloadApi> {
    pb::reload_service_server::ReloadServiceServer::new(ReloadApi { state })
}

/// The ReloadService implementation.
pub struct ReloadApi {
    state: Arc<ApiState>,
}

#[tonic::async_trait]
impl pb::reload_service_server::ReloadService for ReloadApi {
    async fn reload(&self, req: Request<pb::ReloadRequest>) -> Result<Response<pb::ReloadResponse>, Status> {
        let peer = req.remote_addr();
        let result =
            crate::reload::reload(&self.state, "api").await.map_err(|e| Status::failed_precondition(format!("{e:#}")));
        let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
        let what = match &result {
            Ok(report) => format!("changes={}", report.changes.len()),
            Err(_) => String::new(),
        };
        self.state.audit.record(peer, "Reload", &what, &outcome);
        let report = result?;
        Ok(Response::new(pb::ReloadResponse {
            changes: report.changes,
            restart_needed: report.restart_needed,
            notes: report.notes,
        }))
    }
}
