//! Outbounds and routing as the API changes them: one pure state machine that the control
//! thread runs (authoritatively, and when it replays the journal) and every shard runs again
//! on the changes control has accepted, so all of them end in the same state.
//!
//! Also the tap through which shards report routing decisions to `SubscribeRoutingStats`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use shardray_wire::addr::Address;

use crate::change::Change;
use crate::router::{InvalidRule, Router};
use crate::spec::{Config, OutboundSpec, RoutingSpec};

/// The outbounds, the routing rules and balancers, and the balancers' overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSpecs {
    /// Outbounds in order; the first is the default route.
    pub outbounds: Vec<OutboundSpec>,
    /// Rules and balancers.
    pub routing: RoutingSpec,
    /// Balancer tag to the outbound tag it is pinned to (OverrideBalancerTarget).
    pub overrides: BTreeMap<String, String>,
}

/// Why a route change does not apply. The texts are upstream's where it has one, since panels
/// match on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// An outbound already has this tag.
    OutboundExists(String),
    /// No outbound has this tag (upstream answers its "no clue" error).
    OutboundNotFound(String),
    /// Two balancers would have this tag.
    DuplicateBalancer(String),
    /// A rule with this `ruleTag` is already there.
    DuplicateRuleTag(String),
    /// A rule names a balancer that does not exist.
    BalancerNotFound(String),
    /// No balancer has this tag (override and info calls).
    NoSuchBalancer(String),
    /// RemoveRule without a tag.
    EmptyRuleTag,
    /// A rule that does not compile.
    InvalidRule(InvalidRule),
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::OutboundExists(tag) => write!(f, "existing tag found: {tag}"),
            RouteError::OutboundNotFound(_) => f.write_str("not enough information for making a decision"),
            RouteError::DuplicateBalancer(_) => f.write_str("duplicate balancer tag"),
            RouteError::DuplicateRuleTag(tag) => write!(f, "duplicate ruleTag {tag}"),
            RouteError::BalancerNotFound(tag) => write!(f, "balancer {tag} not found"),
            RouteError::NoSuchBalancer(_) => f.write_str("cannot find tag"),
            RouteError::EmptyRuleTag => f.write_str("empty tag name!"),
            RouteError::InvalidRule(e) => write!(f, "rule {}: {}", e.index, e.reason),
        }
    }
}

impl std::error::Error for RouteError {}

impl RouteSpecs {
    /// The routes a config starts with.
    pub fn from_config(config: &Config) -> RouteSpecs {
        RouteSpecs { outbounds: config.outbounds.clone(), routing: config.routing.clone(), overrides: BTreeMap::new() }
    }

    /// Writes the outbounds and routing back into `config`.
    pub fn write_into(&self, config: &mut Config) {
        config.outbounds = self.outbounds.clone();
        config.routing = self.routing.clone();
    }

    /// The index of the outbound tagged `tag` (an empty tag names none).
    pub fn outbound_index(&self, tag: &str) -> Option<usize> {
        if tag.is_empty() {
            return None;
        }
        self.outbounds.iter().position(|o| o.tag == tag)
    }

    /// Compiles the rules against the outbounds and balancers.
    pub fn compile(&self) -> Result<Router, InvalidRule> {
        let balancers = &self.routing.balancers;
        Router::new(
            &self.routing.rules,
            |tag| self.outbound_index(tag),
            |tag| balancers.iter().position(|b| b.tag == tag),
        )
    }

    /// The indices of a balancer's candidates: every tagged outbound whose tag starts with one
    /// of its selectors, in outbound order.
    pub fn candidates(&self, balancer: usize) -> Vec<usize> {
        let Some(b) = self.routing.balancers.get(balancer) else {
            return Vec::new();
        };
        self.outbounds
            .iter()
            .enumerate()
            .filter(|(_, o)| !o.tag.is_empty() && b.selectors.iter().any(|s| o.tag.starts_with(s.as_str())))
            .map(|(i, _)| i)
            .collect()
    }

    /// The index of the balancer tagged `tag`.
    pub fn balancer_index(&self, tag: &str) -> Option<usize> {
        self.routing.balancers.iter().position(|b| b.tag == tag)
    }

    /// Whether `change` applies; changes nothing.
    pub fn check(&self, change: &Change) -> Result<(), RouteError> {
        match change {
            // Cheap checks need no copy.
            Change::AddOutbound { outbound } => {
                if self.outbound_index(&outbound.tag).is_some() {
                    return Err(RouteError::OutboundExists(outbound.tag.clone()));
                }
                Ok(())
            }
            Change::RemoveOutbound { tag } => match self.outbound_index(tag) {
                Some(_) => Ok(()),
                None => Err(RouteError::OutboundNotFound(tag.clone())),
            },
            Change::RemoveRule { rule_tag } if rule_tag.is_empty() => Err(RouteError::EmptyRuleTag),
            Change::RemoveRule { .. } => Ok(()),
            Change::OverrideBalancer { balancer, .. } => match self.balancer_index(balancer) {
                Some(_) => Ok(()),
                None => Err(RouteError::NoSuchBalancer(balancer.clone())),
            },
            Change::AddRules { .. } => self.clone().apply(change),
            Change::ReplaceRoutes { routes } => routes.compile().map(|_| ()).map_err(RouteError::InvalidRule),
            _ => Ok(()),
        }
    }

    /// Checks and applies `change`; on an error nothing has changed. User and inbound changes are
    /// ignored.
    pub fn apply(&mut self, change: &Change) -> Result<(), RouteError> {
        match change {
            Change::AddOutbound { outbound } => {
                self.check(change)?;
                self.outbounds.push(outbound.clone());
            }
            Change::RemoveOutbound { tag } => {
                let index = self.outbound_index(tag).ok_or_else(|| RouteError::OutboundNotFound(tag.clone()))?;
                self.outbounds.remove(index);
                // A balancer pinned to it picks it no more than upstream's would: the pin
                // stays and names a missing outbound, so its connections are dropped.
            }
            Change::AddRules { rules, balancers, append } => {
                let (mut all_rules, mut all_balancers) = if *append {
                    (self.routing.rules.clone(), self.routing.balancers.clone())
                } else {
                    (Vec::new(), Vec::new())
                };
                for b in balancers {
                    if all_balancers.iter().any(|have| have.tag == b.tag) {
                        return Err(RouteError::DuplicateBalancer(b.tag.clone()));
                    }
                    all_balancers.push(b.clone());
                }
                for r in rules {
                    if !r.rule_tag.is_empty() && all_rules.iter().any(|have| have.rule_tag == r.rule_tag) {
                        return Err(RouteError::DuplicateRuleTag(r.rule_tag.clone()));
                    }
                    if !r.balancer_tag.is_empty() && !all_balancers.iter().any(|b| b.tag == r.balancer_tag) {
                        return Err(RouteError::BalancerNotFound(r.balancer_tag.clone()));
                    }
                    all_rules.push(r.clone());
                }
                let next = RouteSpecs {
                    outbounds: Vec::new(),
                    routing: RoutingSpec { rules: all_rules, balancers: all_balancers, ..self.routing.clone() },
                    overrides: BTreeMap::new(),
                };
                next.compile().map_err(RouteError::InvalidRule)?;
                self.routing.rules = next.routing.rules;
                self.routing.balancers = next.routing.balancers;
                if !*append {
                    self.overrides.clear();
                }
            }
            Change::RemoveRule { rule_tag } => {
                if rule_tag.is_empty() {
                    return Err(RouteError::EmptyRuleTag);
                }
                self.routing.rules.retain(|r| r.rule_tag != *rule_tag);
            }
            Change::OverrideBalancer { balancer, target } => {
                self.check(change)?;
                if target.is_empty() {
                    self.overrides.remove(balancer);
                } else {
                    self.overrides.insert(balancer.clone(), target.clone());
                }
            }
            Change::ReplaceRoutes { routes } => {
                self.check(change)?;
                let overrides = std::mem::take(&mut self.overrides);
                self.outbounds = routes.outbounds.clone();
                self.routing = routes.routing.clone();
                // A pin outlives the reload while its balancer does.
                self.overrides = overrides.into_iter().filter(|(b, _)| self.balancer_index(b).is_some()).collect();
            }
            Change::AddUsers { .. }
            | Change::RemoveUsers { .. }
            | Change::SetLevel { .. }
            | Change::ReplaceUsers { .. }
            | Change::Kick { .. }
            | Change::SetQuota { .. }
            | Change::Suspend { .. }
            | Change::AddInbound { .. }
            | Change::ReplaceInbound { .. }
            | Change::RemoveInbound { .. }
            | Change::SetPolicy { .. } => {}
        }
        Ok(())
    }
}

/// One routed connection, as `SubscribeRoutingStats` reports it.
#[derive(Debug, Clone)]
pub struct RouteRecord {
    /// The inbound that accepted it.
    pub inbound_tag: Arc<str>,
    /// TCP (true) or UDP.
    pub tcp: bool,
    /// The client's address.
    pub source: SocketAddr,
    /// The destination as the client named it.
    pub target: Address,
    /// The destination port.
    pub target_port: u16,
    /// The user's email, or empty.
    pub user: Arc<str>,
    /// The outbound it went to.
    pub outbound_tag: Arc<str>,
}

/// Where shards report routing decisions, for `SubscribeRoutingStats`. Costs one relaxed load
/// per connection while nobody listens; records go through a bounded channel and are dropped
/// when it is full, so a slow subscriber never slows a shard.
#[derive(Debug, Clone)]
pub struct RouteTap {
    enabled: Arc<AtomicBool>,
    tx: async_channel::Sender<RouteRecord>,
}

impl RouteTap {
    /// A tap whose records arrive, at most `capacity` waiting, on the returned receiver.
    pub fn new(capacity: usize) -> (RouteTap, async_channel::Receiver<RouteRecord>) {
        let (tx, rx) = async_channel::bounded(capacity.max(1));
        (RouteTap { enabled: Arc::new(AtomicBool::new(false)), tx }, rx)
    }

    /// Whether anyone listens now.
    #[inline]
    pub fn wanted(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Hands a record over, or drops it if the channel is full.
    pub fn offer(&self, record: RouteRecord) {
        let _ = self.tx.try_send(record);
    }

    /// Turns reporting on or off.
    pub fn set_wanted(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{BalancerSpec, BlackholeSpec, OutboundProtocol, PortRange, RuleSpec};

    fn outbound(tag: &str) -> OutboundSpec {
        OutboundSpec {
            tag: tag.into(),
            send_through: None,
            sockopt: Default::default(),
            protocol: OutboundProtocol::Blackhole(BlackholeSpec::default()),
        }
    }

    fn rule(tag: &str, to: &str) -> RuleSpec {
        RuleSpec {
            rule_tag: tag.into(),
            ports: vec![PortRange { from: 1, to: 1 }],
            outbound_tag: to.into(),
            ..Default::default()
        }
    }

    #[test]
    fn outbounds_rules_balancers_and_overrides() {
        let mut r = RouteSpecs { outbounds: vec![outbound("direct")], ..Default::default() };
        r.apply(&Change::AddOutbound { outbound: outbound("px-a") }).unwrap();
        r.apply(&Change::AddOutbound { outbound: outbound("px-b") }).unwrap();
        assert_eq!(
            r.apply(&Change::AddOutbound { outbound: outbound("px-a") }).unwrap_err().to_string(),
            "existing tag found: px-a"
        );
        let group = BalancerSpec { tag: "g".into(), selectors: vec!["px-".into()], ..Default::default() };
        let add = |rules, balancers, append| Change::AddRules { rules, balancers, append };
        let balanced = RuleSpec { balancer_tag: "g".into(), outbound_tag: String::new(), ..rule("b", "") };
        r.apply(&add(vec![rule("r1", "px-a"), balanced], vec![group.clone()], true)).unwrap();
        assert_eq!(r.candidates(0), [1, 2]);
        let err = r.apply(&add(vec![rule("r1", "direct")], vec![], true)).unwrap_err();
        assert_eq!(err.to_string(), "duplicate ruleTag r1");
        let err = r.apply(&add(vec![], vec![group.clone()], true)).unwrap_err();
        assert_eq!(err.to_string(), "duplicate balancer tag");
        let nope = RuleSpec { balancer_tag: "nope".into(), ..rule("", "") };
        assert_eq!(r.apply(&add(vec![nope], vec![], true)).unwrap_err().to_string(), "balancer nope not found");
        assert_eq!(r.routing.rules.len(), 2, "failed changes change nothing");

        r.apply(&Change::OverrideBalancer { balancer: "g".into(), target: "px-b".into() }).unwrap();
        assert_eq!(r.overrides.get("g").map(String::as_str), Some("px-b"));
        let err = r.apply(&Change::OverrideBalancer { balancer: "x".into(), target: "".into() }).unwrap_err();
        assert_eq!(err.to_string(), "cannot find tag");

        r.apply(&Change::RemoveOutbound { tag: "px-a".into() }).unwrap();
        assert_eq!(r.candidates(0), [1]);
        let router = r.compile().unwrap();
        assert_eq!(router.target_tag(0), "px-a");
        assert!(r.check(&Change::RemoveOutbound { tag: "px-a".into() }).is_err());

        r.apply(&Change::RemoveRule { rule_tag: "r1".into() }).unwrap();
        r.apply(&Change::RemoveRule { rule_tag: "unknown".into() }).unwrap();
        assert_eq!(r.routing.rules.len(), 1);
        assert_eq!(r.apply(&Change::RemoveRule { rule_tag: String::new() }), Err(RouteError::EmptyRuleTag));

        // Replacing drops the old rules, balancers and overrides.
        r.apply(&add(vec![rule("r9", "direct")], vec![], false)).unwrap();
        assert_eq!((r.routing.rules.len(), r.routing.balancers.len(), r.overrides.len()), (1, 0, 0));
    }

    #[test]
    fn replace_routes_keeps_pins_of_balancers_that_stay() {
        let group = |tag: &str| BalancerSpec { tag: tag.into(), selectors: vec!["px-".into()], ..Default::default() };
        let mut r = RouteSpecs { outbounds: vec![outbound("direct"), outbound("px-a")], ..Default::default() };
        r.routing.balancers = vec![group("g"), group("h")];
        r.apply(&Change::OverrideBalancer { balancer: "g".into(), target: "px-a".into() }).unwrap();
        r.apply(&Change::OverrideBalancer { balancer: "h".into(), target: "px-a".into() }).unwrap();
        let mut next = RouteSpecs { outbounds: vec![outbound("px-b"), outbound("direct")], ..Default::default() };
        next.routing.balancers = vec![group("g")];
        next.routing.rules = vec![rule("r", "direct")];
        r.apply(&Change::ReplaceRoutes { routes: Box::new(next.clone()) }).unwrap();
        assert_eq!(r.outbounds, next.outbounds);
        assert_eq!(r.routing, next.routing);
        assert_eq!(r.overrides.keys().collect::<Vec<_>>(), ["g"]);
        // A rule naming a balancer that is not there: refused, nothing changed.
        let mut bad = next.clone();
        bad.routing.rules = vec![RuleSpec { balancer_tag: "nope".into(), ..rule("", "") }];
        assert!(r.apply(&Change::ReplaceRoutes { routes: Box::new(bad) }).is_err());
        assert_eq!(r.routing, next.routing);
    }
}
