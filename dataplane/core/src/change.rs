//! Changes the control thread broadcasts to every shard, each under the next epoch.
//!
//! A change has been validated against the registry before it is numbered: a shard applies
//! it without second-guessing, so every shard ends up in the same state.

use std::sync::Arc;

use crate::quota::{QuotaSpec, SuspendReason};
use crate::routes::RouteSpecs;
use crate::spec::{BalancerSpec, InboundSpec, OutboundSpec, PolicySpec, RuleSpec, UserSpec};

/// One change to the running configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add users to an inbound (their ids and emails are new to it).
    AddUsers {
        /// The inbound's tag.
        inbound: String,
        /// The users.
        users: Vec<UserSpec>,
    },
    /// Remove users, by email, from an inbound and close their live sessions.
    RemoveUsers {
        /// The inbound's tag.
        inbound: String,
        /// Emails, compared without regard to ASCII case.
        emails: Vec<String>,
    },
    /// Move a user to another policy level; live sessions go on under the new level.
    SetLevel {
        /// The inbound's tag.
        inbound: String,
        /// The user's email.
        email: String,
        /// The new level.
        level: u32,
    },
    /// Replace an inbound's whole user set; users no longer in it are closed.
    ReplaceUsers {
        /// The inbound's tag.
        inbound: String,
        /// The new user set.
        users: Vec<UserSpec>,
    },
    /// Set a user's quota and expiry (zeros clear them); its use so far stays.
    SetQuota {
        /// The inbound's tag.
        inbound: String,
        /// The user's email.
        email: String,
        /// The quota and expiry.
        quota: QuotaSpec,
    },
    /// Suspend a user (`Some(reason)`) or resume it (`None`). The control thread makes this
    /// change when the user's quota cell says so; it is not journaled, since it follows from
    /// the quota, the expiry and the use, which are kept.
    Suspend {
        /// The inbound's tag.
        inbound: String,
        /// The user's email.
        email: String,
        /// Why, or `None` to resume.
        reason: Option<SuspendReason>,
    },
    /// Close a user's live sessions without removing the user.
    Kick {
        /// The inbound's tag.
        inbound: String,
        /// The user's email.
        email: String,
    },
    /// Start serving a new inbound, users and all. Each shard gets its own listening socket
    /// with the command that carries the change.
    AddInbound {
        /// The inbound, validated as a config inbound would be.
        spec: Arc<InboundSpec>,
    },
    /// Serve an inbound with new settings (a config reload), keeping its users, their counters
    /// and their live sessions (which go on under the settings they started with). Without
    /// sockets alongside, each shard keeps accepting on the listening sockets it has (the
    /// listener did not change); with them, it moves to those and closes the old ones.
    ReplaceInbound {
        /// The inbound's new settings (same tag and account protocol), without users: the
        /// shards get its users as operations.
        spec: Arc<InboundSpec>,
        /// Bind new sockets (the address or socket options changed).
        rebind: bool,
    },
    /// Stop serving an inbound: its listeners close and its users' live sessions end.
    RemoveInbound {
        /// The inbound's tag.
        tag: String,
    },
    /// Add an outbound after the others (its tag is new, or empty).
    AddOutbound {
        /// The outbound.
        outbound: OutboundSpec,
    },
    /// Remove the outbound with this tag; rules that name it drop their connections.
    RemoveOutbound {
        /// The outbound's tag.
        tag: String,
    },
    /// Add routing rules and balancers after the others (`append`), or replace all of them
    /// (and forget balancer overrides).
    AddRules {
        /// The rules.
        rules: Vec<RuleSpec>,
        /// The balancers.
        balancers: Vec<BalancerSpec>,
        /// Keep the rules and balancers there are.
        append: bool,
    },
    /// Remove every rule with this `ruleTag`.
    RemoveRule {
        /// The tag.
        rule_tag: String,
    },
    /// Make a balancer pick `target` until told otherwise; an empty target clears it.
    OverrideBalancer {
        /// The balancer's tag.
        balancer: String,
        /// The outbound tag, or empty.
        target: String,
    },
    /// Replace the outbounds, rules and balancers at once (a config reload): outbounds kept
    /// under the same tag and settings keep their counters, and balancer pins whose balancer
    /// is still there stay.
    ReplaceRoutes {
        /// The outbounds and routing to run from now on (their `overrides` are ignored).
        routes: Box<RouteSpecs>,
    },
    /// Replace the policy levels and system policy (a config reload): sessions that start
    /// from now on follow them; live sessions keep the policy they started with.
    SetPolicy {
        /// The new policy.
        policy: Box<PolicySpec>,
    },
}

impl Change {
    /// The inbound the change is about (its users, or itself); `None` for outbound and routing
    /// changes.
    pub fn inbound(&self) -> Option<&str> {
        match self {
            Change::AddUsers { inbound, .. }
            | Change::RemoveUsers { inbound, .. }
            | Change::SetLevel { inbound, .. }
            | Change::ReplaceUsers { inbound, .. }
            | Change::Kick { inbound, .. }
            | Change::SetQuota { inbound, .. }
            | Change::Suspend { inbound, .. }
            | Change::RemoveInbound { tag: inbound } => Some(inbound),
            Change::AddInbound { spec } | Change::ReplaceInbound { spec, .. } => Some(&spec.tag),
            Change::AddOutbound { .. }
            | Change::RemoveOutbound { .. }
            | Change::AddRules { .. }
            | Change::RemoveRule { .. }
            | Change::OverrideBalancer { .. }
            | Change::ReplaceRoutes { .. }
            | Change::SetPolicy { .. } => None,
        }
    }
}
