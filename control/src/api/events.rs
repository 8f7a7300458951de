//! EventsService (`shardray.app.events.command`): the stream of user events (suspended,
//! resumed, limited) and each user's quota, use and expiry.

use std::pin::Pin;
use std::sync::Arc;

use shardray_core::events::UserEvent;
use shardray_proto::shardray::app::events::command as pb;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::handler::change_status;
use super::ApiState;

/// The service, ready to add to a router.
pub fn service(state: Arc<ApiState>) -> pb::events_service_server::EventsServiceServer<EventsApi> {
    pb::events_service_server::EventsServiceServer::new(EventsApi { state })
}

/// The EventsService implementation.
pub struct EventsApi {
    state: Arc<ApiState>,
}

/// An event as the API sends it.
fn event_message(e: &UserEvent) -> pb::UserEvent {
    pb::UserEvent {
        kind: e.kind.name().to_owned(),
        reason: e.kind.reason().map_or("", |r| r.name()).to_owned(),
        email: e.email.to_string(),
        inbound: e.inbound.to_string(),
        time_unix_ms: e.time_ms,
        skipped: 0,
    }
}

#[tonic::async_trait]
impl pb::events_service_server::EventsService for EventsApi {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::UserEvent, Status>> + Send>>;

    async fn subscribe(&self, _: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let stream = tokio_stream::wrappers::BroadcastStream::new(self.state.events.subscribe()).map(|event| {
            Ok(match event {
                Ok(e) => event_message(&e),
                // Fell behind: say how much was skipped rather than hide it.
                Err(BroadcastStreamRecvError::Lagged(n)) => pb::UserEvent {
                    kind: "lagged".into(),
                    skipped: n,
                    time_unix_ms: crate::quota::unix_now() * 1000,
                    ..Default::default()
                },
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_user_quotas(
        &self,
        req: Request<pb::GetUserQuotasRequest>,
    ) -> Result<Response<pb::GetUserQuotasResponse>, Status> {
        let tag = req.into_inner().tag;
        let registry = self.state.registry.lock().await;
        let inbound = registry.inbound(&tag).map_err(change_status)?;
        let book = registry.sets().slots().book();
        let mut users: Vec<pb::UserQuota> = inbound
            .users
            .iter()
            .filter_map(|u| {
                let q = book.quota(u.slot)?;
                let (spec, [up, down]) = (q.cell.spec(), q.cell.used());
                Some(pb::UserQuota {
                    email: u.email.to_owned(),
                    quota_bytes: spec.bytes,
                    used_bytes: up.saturating_add(down),
                    expiry_unix: spec.expiry,
                    suspended: q.suspended.map_or("", |r| r.name()).to_owned(),
                })
            })
            .collect();
        users.sort_by(|a, b| a.email.cmp(&b.email));
        Ok(Response::new(pb::GetUserQuotasResponse { users }))
    }
}
