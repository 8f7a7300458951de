//! RoutingService: which outbound a connection would take (TestRoute) and the rules in force
//! (ListRule). Rules come from the config for now: adding and removing them at run time, the
//! routing-stats stream and balancers are answered as not supported yet.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use shardray_core::router::{RouteInput, Router};
use shardray_proto::xray::app::router::command as pb;
use shardray_proto::xray::common::net::Network;
use shardray_wire::addr::Address;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::ApiState;

/// The service, ready to add to a router.
pub fn service(state: Arc<ApiState>) -> anyhow::Result<pb::routing_service_server::RoutingServiceServer<RoutingApi>> {
    let config = state.config();
    let router = Router::new(&config.routing.rules, |tag| config.outbounds.iter().position(|o| o.tag == tag))
        .map_err(|e| anyhow::anyhow!("routing.rules[{}]: {}", e.index, e.reason))?;
    Ok(pb::routing_service_server::RoutingServiceServer::new(RoutingApi { state, router }))
}

/// The RoutingService implementation: the same compiled rules the shards run.
pub struct RoutingApi {
    state: Arc<ApiState>,
    router: Router,
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported yet: routing rules come from the config"))
}

#[tonic::async_trait]
impl pb::routing_service_server::RoutingService for RoutingApi {
    type SubscribeRoutingStatsStream = Pin<Box<dyn Stream<Item = Result<pb::RoutingContext, Status>> + Send>>;

    async fn subscribe_routing_stats(
        &self,
        _: Request<pb::SubscribeRoutingStatsRequest>,
    ) -> Result<Response<Self::SubscribeRoutingStatsStream>, Status> {
        Err(not_yet("SubscribeRoutingStats"))
    }

    async fn test_route(&self, req: Request<pb::TestRouteRequest>) -> Result<Response<pb::RoutingContext>, Status> {
        let mut ctx =
            req.into_inner().routing_context.ok_or_else(|| Status::invalid_argument("RoutingContext is missing"))?;
        let dest = if !ctx.target_domain.is_empty() {
            Address::parse(&ctx.target_domain).ok_or_else(|| {
                Status::invalid_argument(format!("TargetDomain {:?} is not a host name", ctx.target_domain))
            })?
        } else {
            let ip = ctx.target_i_ps.first().ok_or_else(|| Status::invalid_argument("no TargetDomain or TargetIPs"))?;
            Address::Ip(ip_from_bytes(ip).ok_or_else(|| Status::invalid_argument("TargetIPs[0] is not an IP"))?)
        };
        let source = match ctx.source_i_ps.first() {
            Some(ip) => ip_from_bytes(ip).ok_or_else(|| Status::invalid_argument("SourceIPs[0] is not an IP"))?,
            None => IpAddr::from([0, 0, 0, 0]),
        };
        let input = RouteInput {
            inbound_tag: &ctx.inbound_tag,
            user: (!ctx.user.is_empty()).then_some(ctx.user.as_str()),
            dest: &dest,
            resolved: None,
            port: u16::try_from(ctx.target_port).map_err(|_| Status::invalid_argument("TargetPort out of range"))?,
            tcp: ctx.network != Network::Udp as i32,
            source,
            source_port: u16::try_from(ctx.source_port)
                .map_err(|_| Status::invalid_argument("SourcePort out of range"))?,
        };
        let decision = self.router.route(&input);
        ctx.outbound_tag = self.state.config().outbounds[decision.outbound].tag.clone();
        Ok(Response::new(ctx))
    }

    async fn get_balancer_info(
        &self,
        req: Request<pb::GetBalancerInfoRequest>,
    ) -> Result<Response<pb::GetBalancerInfoResponse>, Status> {
        Err(Status::not_found(format!("balancer {} not found", req.into_inner().tag)))
    }

    async fn override_balancer_target(
        &self,
        req: Request<pb::OverrideBalancerTargetRequest>,
    ) -> Result<Response<pb::OverrideBalancerTargetResponse>, Status> {
        let peer = req.remote_addr();
        let tag = req.into_inner().balancer_tag;
        let status = Status::not_found(format!("balancer {tag} not found"));
        self.state.audit.record(peer, "OverrideBalancerTarget", &format!("balancer={tag}"), &Err(status.clone()));
        Err(status)
    }

    async fn add_rule(&self, req: Request<pb::AddRuleRequest>) -> Result<Response<pb::AddRuleResponse>, Status> {
        let status = not_yet("AddRule");
        self.state.audit.record(req.remote_addr(), "AddRule", "", &Err(status.clone()));
        Err(status)
    }

    async fn remove_rule(
        &self,
        req: Request<pb::RemoveRuleRequest>,
    ) -> Result<Response<pb::RemoveRuleResponse>, Status> {
        let peer = req.remote_addr();
        let what = format!("ruleTag={}", req.get_ref().rule_tag);
        let status = not_yet("RemoveRule");
        self.state.audit.record(peer, "RemoveRule", &what, &Err(status.clone()));
        Err(status)
    }

    async fn list_rule(&self, _: Request<pb::ListRuleRequest>) -> Result<Response<pb::ListRuleResponse>, Status> {
        let rules = self
            .state
            .config()
            .routing
            .rules
            .iter()
            .map(|r| pb::ListRuleItem { tag: r.outbound_tag.clone(), rule_tag: r.rule_tag.clone() })
            .collect();
        Ok(Response::new(pb::ListRuleResponse { rules }))
    }
}
