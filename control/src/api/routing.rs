//! RoutingService: rules added and removed at run time (AddRule, RemoveRule, ListRule), which
//! outbound a connection would take (TestRoute), balancers (GetBalancerInfo,
//! OverrideBalancerTarget), and the stream of routing decisions (SubscribeRoutingStats).
//!
//! Changes go through the registry like user changes: checked, journaled, applied on every
//! shard before the call returns.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use shardray_core::change::Change;
use shardray_core::router::{RouteInput, Router, Target};
use shardray_core::routes::{RouteError, RouteRecord, RouteSpecs, RouteTap};
use shardray_core::spec::Config;
use shardray_proto::xray::app::router::command as pb;
use shardray_proto::xray::common::net::Network;
use shardray_wire::addr::Address;
use shardray_wire::sniff::RequestAttrs;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::handler::change_status;
use super::ApiState;
use crate::convert::routes::routing_specs;
use crate::convert::{ip_bytes, ip_from_bytes, message_type};

/// The service, ready to add to a router.
pub fn service(state: Arc<ApiState>) -> anyhow::Result<pb::routing_service_server::RoutingServiceServer<RoutingApi>> {
    let config = state.config();
    let compiled = Compiled::new(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(pb::routing_service_server::RoutingServiceServer::new(RoutingApi {
        state,
        compiled: Mutex::new(Arc::new(compiled)),
    })
    // A replacing rule set may carry many domains.
    .max_decoding_message_size(super::MAX_REQUEST))
}

/// The RoutingService implementation.
pub struct RoutingApi {
    state: Arc<ApiState>,
    /// The rules of the running config, compiled; rebuilt when the config changes.
    compiled: Mutex<Arc<Compiled>>,
}

/// A running config's routes, compiled for TestRoute.
struct Compiled {
    config: Arc<Config>,
    specs: RouteSpecs,
    router: Router,
}

impl Compiled {
    fn new(config: Arc<Config>) -> Result<Compiled, String> {
        let specs = RouteSpecs::from_config(&config);
        let router = specs.compile().map_err(|e| format!("routing.rules[{}]: {}", e.index, e.reason))?;
        Ok(Compiled { config, specs, router })
    }
}

/// The gRPC status for a refused route change; the texts are upstream's.
pub(crate) fn route_status(e: &RouteError) -> Status {
    let message = e.to_string();
    match e {
        RouteError::OutboundExists(_) | RouteError::DuplicateBalancer(_) | RouteError::DuplicateRuleTag(_) => {
            Status::already_exists(message)
        }
        RouteError::OutboundNotFound(_) | RouteError::BalancerNotFound(_) | RouteError::NoSuchBalancer(_) => {
            Status::not_found(message)
        }
        RouteError::EmptyRuleTag | RouteError::InvalidRule(_) => Status::invalid_argument(message),
    }
}

impl RoutingApi {
    /// The running config's routes, compiled (again only when the config has changed).
    fn compiled(&self) -> Result<Arc<Compiled>, Status> {
        let config = self.state.config();
        let mut cached = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&cached.config, &config) {
            *cached = Arc::new(Compiled::new(config).map_err(Status::internal)?);
        }
        Ok(cached.clone())
    }

    /// The outbound a balancer shows TestRoute: its override, else its first candidate, else its
    /// fallback, else the default outbound (where upstream sends what a balancer fails).
    async fn balancer_target(&self, compiled: &Compiled, balancer: usize) -> String {
        let Some(spec) = compiled.specs.routing.balancers.get(balancer) else {
            return String::new();
        };
        if let Some(pinned) = self.state.registry.lock().await.routes().overrides.get(&spec.tag) {
            return pinned.clone();
        }
        if let Some(&first) = compiled.specs.candidates(balancer).first() {
            return compiled.specs.outbounds[first].tag.clone();
        }
        if !spec.fallback_tag.is_empty() {
            return spec.fallback_tag.clone();
        }
        compiled.specs.outbounds.first().map(|o| o.tag.clone()).unwrap_or_default()
    }

    async fn rule_added(&self, req: pb::AddRuleRequest) -> Result<(), Status> {
        let config = req.config.ok_or_else(|| Status::invalid_argument("config is missing"))?;
        match message_type(&config.r#type) {
            Ok((_, "app.router.Config")) => {}
            Ok(_) => return Err(Status::invalid_argument(format!("AddRule: config type error: {:?}", config.r#type))),
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        }
        let (rules, balancers) = routing_specs(&config).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.state
            .change_routes(Change::AddRules { rules, balancers, append: req.should_append })
            .await
            .map_err(change_status)
    }

    async fn rule_removed(&self, rule_tag: String) -> Result<(), Status> {
        if !rule_tag.is_empty() {
            // Upstream answers success when no rule has the tag: nothing to send the shards then.
            let known = self.state.registry.lock().await.routes().routing.rules.iter().any(|r| r.rule_tag == rule_tag);
            if !known {
                return Ok(());
            }
        }
        self.state.change_routes(Change::RemoveRule { rule_tag }).await.map_err(change_status)
    }
}

#[tonic::async_trait]
impl pb::routing_service_server::RoutingService for RoutingApi {
    type SubscribeRoutingStatsStream = Pin<Box<dyn Stream<Item = Result<pb::RoutingContext, Status>> + Send>>;

    async fn subscribe_routing_stats(
        &self,
        req: Request<pb::SubscribeRoutingStatsRequest>,
    ) -> Result<Response<Self::SubscribeRoutingStatsStream>, Status> {
        let fields = Fields::new(&req.into_inner().field_selectors);
        let (records, subscription) = self.state.route_stats.subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(records).filter_map(move |record| {
            // Held for as long as the stream: the shards report while someone listens.
            let _ = &subscription;
            // A subscriber that fell behind skips what it missed (Lagged), as upstream drops.
            record.ok().map(|r| Ok(fields.context(&r)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn test_route(&self, req: Request<pb::TestRouteRequest>) -> Result<Response<pb::RoutingContext>, Status> {
        let req = req.into_inner();
        let publish = req.publish_result;
        let mut ctx = req.routing_context.ok_or_else(|| Status::invalid_argument("RoutingContext is missing"))?;
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
        // As upstream: names compared in lowercase; none given is a session without any.
        let attrs = (!ctx.attributes.is_empty()).then(|| {
            let mut attrs = RequestAttrs::default();
            for (name, value) in &ctx.attributes {
                attrs.set(name, value);
            }
            attrs
        });
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
            protocol: (!ctx.protocol.is_empty()).then_some(ctx.protocol.as_str()),
            attrs: attrs.as_ref(),
        };
        let compiled = self.compiled()?;
        let decision = compiled.router.route(&input);
        ctx.outbound_tag = match decision.target {
            Target::Outbound(i) => compiled.specs.outbounds.get(i).map(|o| o.tag.clone()).unwrap_or_default(),
            Target::Missing => decision.rule.map(|r| compiled.router.target_tag(r).to_owned()).unwrap_or_default(),
            Target::Balancer(b) => {
                let group = compiled.specs.routing.balancers.get(b).map(|s| s.tag.clone()).unwrap_or_default();
                ctx.outbound_group_tags = vec![group];
                self.balancer_target(&compiled, b).await
            }
        };
        if publish {
            // As upstream: the result goes to SubscribeRoutingStats streams too.
            self.state.route_stats.publish(RouteRecord {
                inbound_tag: ctx.inbound_tag.as_str().into(),
                tcp: input.tcp,
                source: std::net::SocketAddr::new(input.source, input.source_port),
                target: dest.clone(),
                target_port: input.port,
                user: ctx.user.as_str().into(),
                outbound_tag: ctx.outbound_tag.as_str().into(),
            });
        }
        Ok(Response::new(ctx))
    }

    async fn get_balancer_info(
        &self,
        req: Request<pb::GetBalancerInfoRequest>,
    ) -> Result<Response<pb::GetBalancerInfoResponse>, Status> {
        let tag = req.into_inner().tag;
        let registry = self.state.registry.lock().await;
        let routes = registry.routes();
        let index =
            routes.balancer_index(&tag).ok_or_else(|| route_status(&RouteError::NoSuchBalancer(tag.clone())))?;
        let targets = routes.candidates(index).into_iter().map(|i| routes.outbounds[i].tag.clone()).collect();
        let target = routes.overrides.get(&tag).cloned().unwrap_or_default();
        Ok(Response::new(pb::GetBalancerInfoResponse {
            balancer: Some(pb::BalancerMsg {
                r#override: Some(pb::OverrideInfo { target }),
                principle_target: Some(pb::PrincipleTargetInfo { tag: targets }),
            }),
        }))
    }

    async fn override_balancer_target(
        &self,
        req: Request<pb::OverrideBalancerTargetRequest>,
    ) -> Result<Response<pb::OverrideBalancerTargetResponse>, Status> {
        let peer = req.remote_addr();
        let req = req.into_inner();
        let what = format!("balancer={} target={}", req.balancer_tag, req.target);
        let change = Change::OverrideBalancer { balancer: req.balancer_tag, target: req.target };
        let result = self.state.change_routes(change).await.map_err(change_status);
        self.state.audit.record(peer, "OverrideBalancerTarget", &what, &result);
        result.map(|()| Response::new(pb::OverrideBalancerTargetResponse {}))
    }

    async fn add_rule(&self, req: Request<pb::AddRuleRequest>) -> Result<Response<pb::AddRuleResponse>, Status> {
        let peer = req.remote_addr();
        let req = req.into_inner();
        let what = format!("append={}", req.should_append);
        let result = self.rule_added(req).await;
        self.state.audit.record(peer, "AddRule", &what, &result);
        result.map(|()| Response::new(pb::AddRuleResponse {}))
    }

    async fn remove_rule(
        &self,
        req: Request<pb::RemoveRuleRequest>,
    ) -> Result<Response<pb::RemoveRuleResponse>, Status> {
        let peer = req.remote_addr();
        let rule_tag = req.into_inner().rule_tag;
        let what = format!("ruleTag={rule_tag}");
        let result = self.rule_removed(rule_tag).await;
        self.state.audit.record(peer, "RemoveRule", &what, &result);
        result.map(|()| Response::new(pb::RemoveRuleResponse {}))
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

// === routing statistics ===

/// Fan-out of the shards' routing decisions to SubscribeRoutingStats streams. The shards report
/// only while at least one stream is open; a pump task moves records from the shards' bounded
/// channel into a broadcast channel, from which each stream reads (and skips what it missed
/// when it falls behind).
pub struct RouteStats {
    tap: RouteTap,
    records: async_channel::Receiver<RouteRecord>,
    fanout: tokio::sync::broadcast::Sender<Arc<RouteRecord>>,
    subscribers: Mutex<usize>,
    pump: std::sync::Once,
}

/// Records a slow subscriber may fall behind by before it skips.
const FANOUT: usize = 1024;

impl RouteStats {
    /// The hub for the shards' `tap`, whose records arrive on `records`.
    pub fn new(tap: RouteTap, records: async_channel::Receiver<RouteRecord>) -> Arc<RouteStats> {
        let (fanout, _) = tokio::sync::broadcast::channel(FANOUT);
        Arc::new(RouteStats { tap, records, fanout, subscribers: Mutex::new(0), pump: std::sync::Once::new() })
    }

    /// A new subscriber's receiver, and the subscription that keeps the shards reporting
    /// until it is dropped. Must be called on the runtime (the pump starts on first use).
    fn subscribe(self: &Arc<Self>) -> (tokio::sync::broadcast::Receiver<Arc<RouteRecord>>, Subscription) {
        self.pump.call_once(|| {
            let (records, fanout) = (self.records.clone(), self.fanout.clone());
            tokio::spawn(async move {
                while let Ok(record) = records.recv().await {
                    let _ = fanout.send(Arc::new(record));
                }
            });
        });
        let rx = self.fanout.subscribe();
        let mut count = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        *count += 1;
        self.tap.set_wanted(true);
        (rx, Subscription(self.clone()))
    }
}

impl RouteStats {
    /// Sends a record to the open streams, as if a shard had routed it (TestRoute's
    /// PublishResult).
    fn publish(&self, record: RouteRecord) {
        let _ = self.fanout.send(Arc::new(record));
    }
}

/// An open SubscribeRoutingStats stream; the last one dropped stops the shards' reports.
struct Subscription(Arc<RouteStats>);

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut count = self.0.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        *count -= 1;
        if *count == 0 {
            self.0.tap.set_wanted(false);
        }
    }
}

/// Which RoutingContext fields a subscriber asked for: upstream's field names, each selected
/// when it starts with one of the selectors; no selector selects every field.
struct Fields {
    selected: Vec<&'static str>,
}

/// Upstream's selectable fields that shardray fills.
const FIELDS: &[&str] =
    &["inbound", "network", "ip_source", "ip_target", "port_source", "port_target", "domain", "user", "outbound"];

impl Fields {
    fn new(selectors: &[String]) -> Fields {
        let selected = FIELDS
            .iter()
            .copied()
            .filter(|f| selectors.is_empty() || selectors.iter().any(|s| f.starts_with(s.as_str())))
            .collect();
        Fields { selected }
    }

    fn context(&self, r: &RouteRecord) -> pb::RoutingContext {
        let mut ctx = pb::RoutingContext::default();
        for field in &self.selected {
            match *field {
                "inbound" => ctx.inbound_tag = r.inbound_tag.to_string(),
                "network" => ctx.network = if r.tcp { Network::Tcp } else { Network::Udp } as i32,
                "ip_source" => ctx.source_i_ps = vec![ip_bytes(r.source.ip())],
                "ip_target" => ctx.target_i_ps = r.target.ip().map(|ip| vec![ip_bytes(ip)]).unwrap_or_default(),
                "port_source" => ctx.source_port = u32::from(r.source.port()),
                "port_target" => ctx.target_port = u32::from(r.target_port),
                "domain" => ctx.target_domain = r.target.domain().map(str::to_owned).unwrap_or_default(),
                "user" => ctx.user = r.user.to_string(),
                "outbound" => ctx.outbound_tag = r.outbound_tag.to_string(),
                _ => {}
            }
        }
        ctx
    }
}
