//! HandlerService: users of running inbounds, changed through the registry and applied on
//! every shard before the call returns.

use std::sync::Arc;

use prost::Message;
use shardray_core::change::Change;
use shardray_core::spec::{Account, InboundProtocol, ShadowsocksInboundSpec, UserSpec};
use shardray_proto::shardray::app::proxyman::command as ours;
use shardray_proto::xray::app::proxyman::command as pb;
use shardray_proto::xray::common::protocol::User;
use shardray_proto::xray::common::serial::TypedMessage;
use shardray_proto::xray::core::{InboundHandlerConfig, OutboundHandlerConfig};
use shardray_proto::xray::proxy::{shadowsocks, shadowsocks_2022, trojan, vless, vmess};
use tonic::{Request, Response, Status};

use super::ApiState;
use crate::config::load_inbound;
use crate::convert::inbound::{inbound_json, receiver_config};
use crate::convert::routes::outbound_spec;
use crate::convert::{api_user, message_type, typed, user_spec, Flavor};
use crate::registry::{ChangeError, InboundUsers};

/// The service, ready to add to a router.
pub fn service(state: Arc<ApiState>) -> pb::handler_service_server::HandlerServiceServer<HandlerApi> {
    pb::handler_service_server::HandlerServiceServer::new(HandlerApi { state })
        // Batches of users can be large (about 100 bytes a user).
        .max_decoding_message_size(super::MAX_REQUEST)
}

/// The HandlerService implementation.
pub struct HandlerApi {
    state: Arc<ApiState>,
}

/// The gRPC status for a refused or failed change; messages end as upstream's do.
pub(crate) fn change_status(e: ChangeError) -> Status {
    let message = e.to_string();
    match e {
        ChangeError::InboundNotFound(_) | ChangeError::UserNotFound(_) => Status::not_found(message),
        ChangeError::AlreadyExists(_) => Status::already_exists(message),
        ChangeError::NoUsers(_) => Status::failed_precondition(message),
        ChangeError::MissingEmail => Status::invalid_argument(message),
        ChangeError::Shards(_) => Status::deadline_exceeded(message),
        ChangeError::Journal(_) => Status::unavailable(message),
        ChangeError::TagExists(_) => Status::already_exists(message),
        ChangeError::MissingTag => Status::invalid_argument(message),
        ChangeError::Listen(_) => Status::failed_precondition(message),
        ChangeError::Route(e) => super::routing::route_status(&e),
        ChangeError::FlowRefused(..) => Status::invalid_argument(message),
    }
}

/// Decodes an operation by its type (V2Ray's operations are numbered as Xray's), refusing field
/// numbers the operation does not define.
fn decode<M: Message + Default>(op: &TypedMessage) -> Result<M, Status> {
    let invalid = |e: String| Status::invalid_argument(format!("operation {:?}: {e}", op.r#type));
    let full_name = match message_type(&op.r#type).map_err(|e| invalid(e.to_string()))? {
        (Flavor::Shardray, name) => format!("shardray.{name}"),
        (Flavor::Xray | Flavor::V2ray, name) => format!("xray.{name}"),
    };
    crate::convert::decode_known(&op.value, &full_name).map_err(invalid)
}

fn users(list: &[User], inbound: &InboundUsers) -> Result<Vec<UserSpec>, Status> {
    // A 2022 inbound's users hold PSKs of its method, and only a multi-user one takes more.
    if let InboundProtocol::Shadowsocks(ShadowsocksInboundSpec { method_2022: Some(method), server_psk, .. }) =
        &inbound.spec.protocol
    {
        if server_psk.is_none() {
            return Err(Status::invalid_argument(format!(
                "inbound {}: a single-user Shadowsocks 2022 inbound takes no users (give it settings.clients)",
                inbound.tag
            )));
        }
        let method = *method;
        return list
            .iter()
            .map(|u| {
                let spec = user_spec(u, inbound.protocol).map_err(|e| Status::invalid_argument(e.to_string()))?;
                if let Account::Shadowsocks2022 { key } = &spec.account {
                    shardray_wire::shadowsocks::MasterKey::from_psk(method, key).map_err(|e| {
                        Status::invalid_argument(format!("{}: user.account.key: {e} (for {method})", u.email))
                    })?;
                }
                Ok(spec)
            })
            .collect();
    }
    list.iter().map(|u| user_spec(u, inbound.protocol).map_err(|e| Status::invalid_argument(e.to_string()))).collect()
}

impl HandlerApi {
    /// AlterInbound's work: decode the operation, apply it on every shard, and drop what the
    /// API kept for users it removed.
    async fn alter(&self, req: &pb::AlterInboundRequest) -> Result<(), Status> {
        let op = req.operation.as_ref().ok_or_else(|| Status::invalid_argument("operation is missing"))?;
        let change = self.change_for(&req.tag, op).await?;
        let mut registry = self.state.registry.lock().await;
        let removed: Vec<String> = match &change {
            Change::RemoveUsers { emails, .. } => emails.clone(),
            Change::ReplaceUsers { inbound, users } => {
                let stays = |account: &shardray_core::spec::Account| users.iter().any(|u| u.account == *account);
                let current = registry.inbound(inbound).map_err(change_status)?;
                current.users.values().filter(|u| !stays(&u.account)).map(|u| u.email.clone()).collect()
            }
            _ => Vec::new(),
        };
        let departing = super::stats::departing(&self.state, &registry, &removed);
        let quota_of = match &change {
            Change::SetQuota { inbound, email, .. } => {
                Some((inbound.clone(), email.clone(), registry.quota_cell(inbound, email)))
            }
            _ => None,
        };
        // The registry re-checks: another call may have changed it since `change_for`.
        registry.apply(change).await.map_err(change_status)?;
        if let Some((tag, email, before)) = quota_of {
            registry.rebind_quota(&tag, &email, before).await.map_err(change_status)?;
            // A raised quota or a later expiry resumes the user before the call returns; a
            // lower one may suspend it at once.
            let slot = registry.inbound(&tag).ok().and_then(|i| i.by_email(&email)).map(|u| u.slot);
            if let Some(slot) = slot {
                crate::quota::reconcile(&self.state, &mut registry, Some(slot)).await.map_err(change_status)?;
            }
        }
        super::stats::depart(&self.state, &registry, departing).await;
        drop(registry);
        // A removed user's counters go with it, here as on the shards.
        let mut book = self.state.counters.lock().unwrap_or_else(|e| e.into_inner());
        for email in &removed {
            book.forget_user(email);
        }
        Ok(())
    }

    /// Turns an AlterInbound operation into a change for `tag`.
    async fn change_for(&self, tag: &str, op: &TypedMessage) -> Result<Change, Status> {
        let registry = self.state.registry.lock().await;
        let inbound = registry.inbound(tag).map_err(change_status)?;
        let (flavor, name) = message_type(&op.r#type).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let inbound_tag = tag.to_owned();
        Ok(match (flavor, name) {
            (Flavor::Xray | Flavor::V2ray, "app.proxyman.command.AddUserOperation") => {
                let add: pb::AddUserOperation = decode(op)?;
                let user = add.user.ok_or_else(|| Status::invalid_argument("AddUserOperation: user is missing"))?;
                Change::AddUsers { inbound: inbound_tag, users: users(&[user], inbound)? }
            }
            (Flavor::Xray | Flavor::V2ray, "app.proxyman.command.RemoveUserOperation") => {
                let remove: pb::RemoveUserOperation = decode(op)?;
                Change::RemoveUsers { inbound: inbound_tag, emails: vec![remove.email] }
            }
            (Flavor::Shardray, "app.proxyman.command.AddUsersOperation") => {
                let add: ours::AddUsersOperation = decode(op)?;
                Change::AddUsers { inbound: inbound_tag, users: users(&add.users, inbound)? }
            }
            (Flavor::Shardray, "app.proxyman.command.RemoveUsersOperation") => {
                let remove: ours::RemoveUsersOperation = decode(op)?;
                Change::RemoveUsers { inbound: inbound_tag, emails: remove.emails }
            }
            (Flavor::Shardray, "app.proxyman.command.ReplaceUsersOperation") => {
                let replace: ours::ReplaceUsersOperation = decode(op)?;
                Change::ReplaceUsers { inbound: inbound_tag, users: users(&replace.users, inbound)? }
            }
            (Flavor::Shardray, "app.proxyman.command.SetUserLevelOperation") => {
                let set: ours::SetUserLevelOperation = decode(op)?;
                Change::SetLevel { inbound: inbound_tag, email: set.email, level: set.level }
            }
            (Flavor::Shardray, "app.proxyman.command.SetUserQuotaOperation") => {
                let set: ours::SetUserQuotaOperation = decode(op)?;
                let quota = shardray_core::quota::QuotaSpec { bytes: set.quota_bytes, expiry: set.expiry_unix };
                Change::SetQuota { inbound: inbound_tag, email: set.email, quota }
            }
            (Flavor::Shardray, "app.proxyman.command.KickUserOperation") => {
                let kick: ours::KickUserOperation = decode(op)?;
                Change::Kick { inbound: inbound_tag, email: kick.email }
            }
            _ => return Err(Status::invalid_argument(format!("unknown operation type {:?}", op.r#type))),
        })
    }

    /// The API form of an inbound: its tag, and unless only tags are asked for, its listen
    /// address and its users.
    fn inbound_config(&self, inbound: &InboundUsers, only_tag: bool) -> InboundHandlerConfig {
        if only_tag {
            return InboundHandlerConfig { tag: inbound.tag.clone(), ..Default::default() };
        }
        // Without stream settings: TLS keys are not handed out.
        let receiver = Some(receiver_config(&inbound.spec, None));
        let users = || inbound.users.values().map(|u| api_user(&u)).collect();
        let proxy = match inbound.protocol {
            "vless" => {
                let config =
                    vless::inbound::Config { clients: users(), decryption: "none".into(), ..Default::default() };
                Some(typed("xray.proxy.vless.inbound.Config", &config))
            }
            "trojan" => {
                let config = trojan::ServerConfig { users: users(), ..Default::default() };
                Some(typed("xray.proxy.trojan.ServerConfig", &config))
            }
            "vmess" => {
                let config = vmess::inbound::Config { user: users(), ..Default::default() };
                Some(typed("xray.proxy.vmess.inbound.Config", &config))
            }
            "shadowsocks" => {
                let config = shadowsocks::ServerConfig { users: users(), ..Default::default() };
                Some(typed("xray.proxy.shadowsocks.ServerConfig", &config))
            }
            "shadowsocks_2022" => {
                let method = match &inbound.spec.protocol {
                    InboundProtocol::Shadowsocks(s) => s.method_2022.map(|m| m.name().to_owned()).unwrap_or_default(),
                    _ => String::new(),
                };
                // The server's PSK is not handed out.
                let config = shadowsocks_2022::MultiUserServerConfig { method, users: users(), ..Default::default() };
                Some(typed("xray.proxy.shadowsocks_2022.MultiUserServerConfig", &config))
            }
            _ => None,
        };
        InboundHandlerConfig { tag: inbound.tag.clone(), receiver_settings: receiver, proxy_settings: proxy }
    }
}

// === outbounds ===

impl HandlerApi {
    /// AddOutbound's work: the config becomes an outbound every shard runs.
    async fn outbound_added(&self, req: pb::AddOutboundRequest) -> Result<(), Status> {
        let config = req.outbound.ok_or_else(|| Status::invalid_argument("outbound is missing"))?;
        let outbound = outbound_spec(&config).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.state.change_routes(Change::AddOutbound { outbound }).await.map_err(change_status)
    }

    /// AlterOutbound: upstream defines no outbound operation at all, so after the tag is found,
    /// every operation is refused with upstream's words.
    async fn outbound_altered(&self, req: &pb::AlterOutboundRequest) -> Result<(), Status> {
        if self.state.registry.lock().await.routes().outbound_index(&req.tag).is_none() {
            return Err(Status::not_found(format!("handler not found: {}", req.tag)));
        }
        match req.operation.as_ref().map(|op| message_type(&op.r#type)) {
            Some(Ok((Flavor::Xray | Flavor::V2ray, _))) => Err(Status::invalid_argument("not an outbound operation")),
            _ => Err(Status::invalid_argument("unknown operation")),
        }
    }
}

impl HandlerApi {
    /// AddInbound's work: validate the inbound as a config inbound, bind it on every shard,
    /// and publish the running config.
    async fn add_inbound(&self, config: Option<InboundHandlerConfig>) -> Result<(), Status> {
        let config = config.ok_or_else(|| Status::invalid_argument("inbound is missing"))?;
        let json = inbound_json(&config).map_err(|e| Status::invalid_argument(format!("inbound.{e}")))?;
        let spec = load_inbound(json, "inbound").map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut registry = self.state.registry.lock().await;
        registry.apply(Change::AddInbound { spec: Arc::new(spec) }).await.map_err(change_status)?;
        self.publish_inbounds(&registry);
        Ok(())
    }

    /// RemoveInbound's work: stop the inbound on every shard, closing its users' sessions, and
    /// drop the counters of users no other inbound has.
    async fn remove_inbound(&self, tag: &str) -> Result<(), Status> {
        let mut registry = self.state.registry.lock().await;
        let emails: Vec<String> =
            registry.inbound(tag).map_err(change_status)?.users.values().map(|u| u.email.clone()).collect();
        let departing = super::stats::departing(&self.state, &registry, &emails);
        registry.apply(Change::RemoveInbound { tag: tag.to_owned() }).await.map_err(change_status)?;
        super::stats::depart(&self.state, &registry, departing).await;
        self.publish_inbounds(&registry);
        let gone: Vec<&String> = emails.iter().filter(|e| registry.stat_user(e).is_none()).collect();
        let mut book = self.state.counters.lock().unwrap_or_else(|e| e.into_inner());
        for email in gone {
            book.forget_user(email);
        }
        Ok(())
    }

    /// Makes the running config's inbounds those of the registry.
    fn publish_inbounds(&self, registry: &crate::registry::Registry) {
        let mut config = (*self.state.config()).clone();
        config.inbounds = registry.inbound_specs();
        self.state.set_config(Arc::new(config));
    }
}

#[tonic::async_trait]
impl pb::handler_service_server::HandlerService for HandlerApi {
    async fn add_inbound(
        &self,
        req: Request<pb::AddInboundRequest>,
    ) -> Result<Response<pb::AddInboundResponse>, Status> {
        let peer = req.remote_addr();
        let inbound = req.into_inner().inbound;
        let what = format!("tag={}", inbound.as_ref().map_or("", |i| i.tag.as_str()));
        let result = HandlerApi::add_inbound(self, inbound).await;
        self.state.audit.record(peer, "AddInbound", &what, &result);
        result.map(|()| Response::new(pb::AddInboundResponse {}))
    }

    async fn remove_inbound(
        &self,
        req: Request<pb::RemoveInboundRequest>,
    ) -> Result<Response<pb::RemoveInboundResponse>, Status> {
        let peer = req.remote_addr();
        let tag = req.into_inner().tag;
        let result = HandlerApi::remove_inbound(self, &tag).await;
        self.state.audit.record(peer, "RemoveInbound", &format!("tag={tag}"), &result);
        result.map(|()| Response::new(pb::RemoveInboundResponse {}))
    }

    async fn alter_inbound(
        &self,
        req: Request<pb::AlterInboundRequest>,
    ) -> Result<Response<pb::AlterInboundResponse>, Status> {
        let peer = req.remote_addr();
        let req = req.into_inner();
        let op_name = req.operation.as_ref().map_or("", |op| op.r#type.rsplit('.').next().unwrap_or(""));
        let what = format!("tag={} op={op_name}", req.tag);
        let result = self.alter(&req).await;
        self.state.audit.record(peer, "AlterInbound", &what, &result);
        result.map(|()| Response::new(pb::AlterInboundResponse {}))
    }

    async fn list_inbounds(
        &self,
        req: Request<pb::ListInboundsRequest>,
    ) -> Result<Response<pb::ListInboundsResponse>, Status> {
        let only_tags = req.into_inner().is_only_tags;
        let registry = self.state.registry.lock().await;
        let inbounds = registry.inbounds().iter().map(|i| self.inbound_config(i, only_tags)).collect();
        Ok(Response::new(pb::ListInboundsResponse { inbounds }))
    }

    async fn get_inbound_users(
        &self,
        req: Request<pb::GetInboundUserRequest>,
    ) -> Result<Response<pb::GetInboundUserResponse>, Status> {
        let req = req.into_inner();
        let registry = self.state.registry.lock().await;
        let inbound = registry.inbound(&req.tag).map_err(change_status)?;
        let users = if req.email.is_empty() {
            inbound.users.values().map(|u| api_user(&u)).collect()
        } else {
            let user = inbound
                .by_email(&req.email)
                .ok_or_else(|| change_status(ChangeError::UserNotFound(req.email.clone())))?;
            vec![api_user(&user.spec())]
        };
        Ok(Response::new(pb::GetInboundUserResponse { users }))
    }

    async fn get_inbound_users_count(
        &self,
        req: Request<pb::GetInboundUserRequest>,
    ) -> Result<Response<pb::GetInboundUsersCountResponse>, Status> {
        let req = req.into_inner();
        let registry = self.state.registry.lock().await;
        let inbound = registry.inbound(&req.tag).map_err(change_status)?;
        Ok(Response::new(pb::GetInboundUsersCountResponse { count: inbound.users.len() as i64 }))
    }

    async fn add_outbound(
        &self,
        req: Request<pb::AddOutboundRequest>,
    ) -> Result<Response<pb::AddOutboundResponse>, Status> {
        let peer = req.remote_addr();
        let req = req.into_inner();
        let what = format!("tag={}", req.outbound.as_ref().map_or("", |o| o.tag.as_str()));
        let result = self.outbound_added(req).await;
        self.state.audit.record(peer, "AddOutbound", &what, &result);
        result.map(|()| Response::new(pb::AddOutboundResponse {}))
    }

    async fn remove_outbound(
        &self,
        req: Request<pb::RemoveOutboundRequest>,
    ) -> Result<Response<pb::RemoveOutboundResponse>, Status> {
        let peer = req.remote_addr();
        let tag = req.into_inner().tag;
        let result = self.state.change_routes(Change::RemoveOutbound { tag: tag.clone() }).await.map_err(change_status);
        self.state.audit.record(peer, "RemoveOutbound", &format!("tag={tag}"), &result);
        result.map(|()| Response::new(pb::RemoveOutboundResponse {}))
    }

    async fn alter_outbound(
        &self,
        req: Request<pb::AlterOutboundRequest>,
    ) -> Result<Response<pb::AlterOutboundResponse>, Status> {
        let peer = req.remote_addr();
        let req = req.into_inner();
        let what = format!("tag={}", req.tag);
        let result = self.outbound_altered(&req).await;
        self.state.audit.record(peer, "AlterOutbound", &what, &result);
        result.map(|()| Response::new(pb::AlterOutboundResponse {}))
    }

    async fn list_outbounds(
        &self,
        _: Request<pb::ListOutboundsRequest>,
    ) -> Result<Response<pb::ListOutboundsResponse>, Status> {
        let outbounds = self
            .state
            .config()
            .outbounds
            .iter()
            .map(|o| OutboundHandlerConfig { tag: o.tag.clone(), ..Default::default() })
            .collect();
        Ok(Response::new(pb::ListOutboundsResponse { outbounds }))
    }
}
