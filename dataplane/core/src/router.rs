//! The compiled router: routing rules turned into matchers, first match wins.
//!
//! With many rules, each rule is filed under one condition a connection can be looked up by:
//! its users, else its domain matchers (exact names, parent domains, keywords found in one
//! pass of a multi-pattern automaton). A connection then checks only the rules filed under its
//! user and its name, plus the rules that could not be filed (regular expressions, IP-only
//! rules…), each list in rule order up to the best match found so far; the first match is the
//! same as a scan of every rule would find.
//!
//! Besides the outbound, a decision says whether the destination was named explicitly by the
//! rule's `ip` or `domain` condition: only such a rule may send a user to a loopback or
//! private address (see `is_private`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use aho_corasick::AhoCorasick;
use ipnet::IpNet;
use regex::{Regex, RegexSet};
use shardray_wire::addr::Address;
use shardray_wire::sniff::RequestAttrs;

use crate::spec::{DomainMatcher, NetworkSet, PortRange, RuleSpec};

/// What a connection looks like to the router.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    /// The tag of the inbound that accepted it.
    pub inbound_tag: &'a str,
    /// The user's email, if the inbound authenticates users.
    pub user: Option<&'a str>,
    /// The destination host as the client named it.
    pub dest: &'a Address,
    /// A resolved IP for a domain destination (set when routing resolved it).
    pub resolved: Option<IpAddr>,
    /// The destination port.
    pub port: u16,
    /// true for TCP, false for UDP.
    pub tcp: bool,
    /// The client's address.
    pub source: IpAddr,
    /// The client's port.
    pub source_port: u16,
    /// The protocol sniffing found (`tls`, `http1`, `bittorrent`), if the inbound sniffs.
    pub protocol: Option<&'a str>,
    /// The HTTP request's attributes: set only when some rule has `attrs` (see
    /// `Router::wants_attrs`) and the session is an HTTP request, sniffed or proxied.
    pub attrs: Option<&'a RequestAttrs>,
}

/// Where a decision sends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The outbound at this index; 0, the default outbound, when no rule matched.
    Outbound(usize),
    /// The balancer at this index, which picks an outbound.
    Balancer(usize),
    /// The rule names an outbound that does not exist (removed through the API): the
    /// connection is dropped, as upstream drops it, not sent to the default.
    Missing,
}

/// The router's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Where the connection goes.
    pub target: Target,
    /// Index of the rule that matched, if one did.
    pub rule: Option<usize>,
    /// The matching rule named this destination in its `ip` or `domain` condition, so it may
    /// reach a private or loopback address.
    pub explicit_dest: bool,
}

/// A routing table compiled from rules.
#[derive(Debug)]
pub struct Router {
    rules: Vec<Rule>,
    /// Whether any rule has an `ip` condition (decides whether resolving a domain could help).
    has_ip_rules: bool,
    /// Whether any rule has `attrs` (decides whether a session's HTTP request is read for them).
    wants_attrs: bool,
    /// Where each rule is filed, when there are enough rules for filing to pay.
    index: Option<RuleIndex>,
}

/// Below this many rules, a plain scan is as quick as the lookups.
const INDEX_FROM: usize = 32;

/// The rules filed by the condition a connection can be looked up by; every list is in rule
/// order.
#[derive(Debug, Default)]
struct RuleIndex {
    /// Rules with a `user` condition, by each user they list.
    by_user: HashMap<Box<str>, Vec<u32>>,
    /// Rules with domain matchers but no regular expression (and no `user`), by `full:` name.
    by_full: HashMap<Box<str>, Vec<u32>>,
    /// The same, by `domain:` name: a connection looks up its name and each parent.
    by_parent: HashMap<Box<str>, Vec<u32>>,
    /// The same, by `keyword:`: every keyword, searched for in one pass over the name.
    keywords: Option<AhoCorasick>,
    /// The rules of each keyword, by the keyword's pattern number.
    by_keyword: Vec<Vec<u32>>,
    /// Every other rule: always checked.
    unfiled: Vec<u32>,
}

impl RuleIndex {
    fn new(rules: &[Rule]) -> RuleIndex {
        let mut index = RuleIndex::default();
        let mut keywords: HashMap<&str, usize> = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let i = i as u32;
            let file = |map: &mut HashMap<Box<str>, Vec<u32>>, key: &str| {
                let list = map.entry(key.into()).or_default();
                // A rule listing a key twice is filed once.
                if list.last() != Some(&i) {
                    list.push(i);
                }
            };
            if !rule.users.is_empty() {
                for user in &rule.users {
                    file(&mut index.by_user, user);
                }
            } else if let Some(domains) = rule.domains.as_ref().filter(|d| d.regexes.is_none()) {
                for name in domains.full.iter() {
                    file(&mut index.by_full, name);
                }
                for name in domains.parents.iter() {
                    file(&mut index.by_parent, name);
                }
                for keyword in &domains.keywords {
                    let next = keywords.len();
                    let k = *keywords.entry(keyword).or_insert(next);
                    if k == index.by_keyword.len() {
                        index.by_keyword.push(Vec::new());
                    }
                    if index.by_keyword[k].last() != Some(&i) {
                        index.by_keyword[k].push(i);
                    }
                }
            } else {
                index.unfiled.push(i);
            }
        }
        if !keywords.is_empty() {
            let mut patterns: Vec<&str> = vec![""; keywords.len()];
            for (keyword, k) in keywords {
                patterns[k] = keyword;
            }
            match AhoCorasick::new(&patterns) {
                Ok(automaton) => index.keywords = Some(automaton),
                // Too large to build: those rules are checked one by one instead.
                Err(_) => {
                    let mut all: Vec<u32> =
                        index.by_keyword.drain(..).flatten().chain(index.unfiled.drain(..)).collect();
                    all.sort_unstable();
                    all.dedup();
                    index.unfiled = all;
                }
            }
        }
        index
    }
}

#[derive(Debug)]
struct Rule {
    target: Target,
    /// The outbound or balancer tag the rule names, for logs and the API.
    target_tag: Box<str>,
    inbound_tags: Vec<String>,
    users: Vec<String>,
    domains: Option<DomainSet>,
    ips: Option<IpSet>,
    ports: Vec<PortRange>,
    network: Option<NetworkSet>,
    source_ips: Option<IpSet>,
    source_ports: Vec<PortRange>,
    protocols: Vec<String>,
    /// `attrs`: each attribute's name and the expression its value must match.
    attrs: Vec<(Box<str>, Regex)>,
}

/// A rule's `domain` condition, indexed: exact names and parent domains are hash lookups, so a
/// rule with thousands of domains costs a few lookups; keywords and regular expressions scan.
#[derive(Debug, Default)]
struct DomainSet {
    full: Names,
    parents: Names,
    keywords: Vec<Box<str>>,
    /// Every regular expression of the rule, tried in one pass (geosite lists hold dozens).
    regexes: Option<RegexSet>,
}

/// A set of names: a few are compared one by one (cheaper than hashing), many are hashed.
#[derive(Debug)]
enum Names {
    Few(Vec<Box<str>>),
    Many(HashSet<Box<str>>),
}

/// Up to this many names, comparing beats hashing.
const FEW_NAMES: usize = 8;

impl Default for Names {
    fn default() -> Self {
        Names::Few(Vec::new())
    }
}

impl Names {
    fn insert(&mut self, name: Box<str>) {
        match self {
            Names::Few(v) if v.len() < FEW_NAMES => v.push(name),
            Names::Few(v) => {
                let mut set: HashSet<Box<str>> = v.drain(..).collect();
                set.insert(name);
                *self = Names::Many(set);
            }
            Names::Many(set) => {
                set.insert(name);
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Names::Few(v) => v.is_empty(),
            Names::Many(set) => set.is_empty(),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Names::Few(v) => Box::new(v.iter().map(|n| &**n)),
            Names::Many(set) => Box::new(set.iter().map(|n| &**n)),
        }
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Names::Few(v) => v.iter().any(|n| &**n == name),
            Names::Many(set) => set.contains(name),
        }
    }

    /// Whether `name` is one of the names or a subdomain of one.
    fn contains_name_or_parent(&self, name: &str) -> bool {
        match self {
            Names::Few(v) => v
                .iter()
                .any(|d| name == &**d || (name.ends_with(&**d) && name.as_bytes()[name.len() - d.len() - 1] == b'.')),
            Names::Many(set) => {
                set.contains(name) || name.bytes().enumerate().any(|(i, b)| b == b'.' && set.contains(&name[i + 1..]))
            }
        }
    }
}

/// A rule's `ip` or `source` condition: merged, sorted ranges per family, searched by bisection.
#[derive(Debug, Default)]
struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// A rule that names a balancer missing from the table, or a bad regular expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRule {
    /// Index of the rule.
    pub index: usize,
    /// What is wrong.
    pub reason: String,
}

impl Router {
    /// Compiles `rules`; `outbound_index` maps an outbound tag to its index, `balancer_index` a
    /// balancer tag to its. A rule whose outbound is missing compiles to `Target::Missing`
    /// (the API may remove an outbound that rules still name); a missing balancer is an error,
    /// as upstream refuses such rules.
    pub fn new(
        rules: &[RuleSpec],
        outbound_index: impl Fn(&str) -> Option<usize>,
        balancer_index: impl Fn(&str) -> Option<usize>,
    ) -> Result<Router, InvalidRule> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, spec) in rules.iter().enumerate() {
            let (target, target_tag) = if spec.balancer_tag.is_empty() {
                (outbound_index(&spec.outbound_tag).map_or(Target::Missing, Target::Outbound), &spec.outbound_tag)
            } else {
                let b = balancer_index(&spec.balancer_tag).ok_or_else(|| InvalidRule {
                    index,
                    reason: format!("balancer {} not found", spec.balancer_tag),
                })?;
                (Target::Balancer(b), &spec.balancer_tag)
            };
            let domains = if spec.domains.is_empty() {
                None
            } else {
                Some(DomainSet::new(&spec.domains).map_err(|reason| InvalidRule { index, reason })?)
            };
            let attrs = spec
                .attrs
                .iter()
                .map(|(name, pattern)| {
                    let regex = Regex::new(pattern).map_err(|e| InvalidRule { index, reason: e.to_string() })?;
                    Ok((name.to_ascii_lowercase().into_boxed_str(), regex))
                })
                .collect::<Result<_, InvalidRule>>()?;
            compiled.push(Rule {
                target,
                target_tag: target_tag.as_str().into(),
                inbound_tags: spec.inbound_tags.clone(),
                users: spec.users.clone(),
                domains,
                ips: (!spec.ips.is_empty()).then(|| IpSet::new(&spec.ips)),
                ports: spec.ports.clone(),
                network: spec.network,
                source_ips: (!spec.source_ips.is_empty()).then(|| IpSet::new(&spec.source_ips)),
                source_ports: spec.source_ports.clone(),
                protocols: spec.protocols.clone(),
                attrs,
            });
        }
        let has_ip_rules = compiled.iter().any(|r| r.ips.is_some());
        let wants_attrs = compiled.iter().any(|r| !r.attrs.is_empty());
        let index = (compiled.len() >= INDEX_FROM).then(|| RuleIndex::new(&compiled));
        Ok(Router { rules: compiled, has_ip_rules, wants_attrs, index })
    }

    /// Whether any rule matches on destination IP.
    pub fn has_ip_rules(&self) -> bool {
        self.has_ip_rules
    }

    /// Whether any rule matches on HTTP request attributes: only then need a session's request
    /// be read for them.
    pub fn wants_attrs(&self) -> bool {
        self.wants_attrs
    }

    /// The outbound or balancer tag rule `index` names.
    pub fn target_tag(&self, index: usize) -> &str {
        self.rules.get(index).map_or("", |r| &r.target_tag)
    }

    /// Routes a connection: the first rule whose every condition holds, else the default.
    pub fn route(&self, input: &RouteInput<'_>) -> Decision {
        let found = match &self.index {
            None => self.rules.iter().enumerate().find_map(|(i, rule)| Some((i, rule.matches(input)?))),
            Some(index) => self.route_filed(index, input),
        };
        match found {
            Some((i, explicit_dest)) => Decision { target: self.rules[i].target, rule: Some(i), explicit_dest },
            None => Decision { target: Target::Outbound(0), rule: None, explicit_dest: false },
        }
    }

    /// The first matching rule among those filed under the connection's user and name and
    /// those not filed: each list is checked in order, only below the best match so far.
    fn route_filed(&self, index: &RuleIndex, input: &RouteInput<'_>) -> Option<(usize, bool)> {
        let mut best: Option<(usize, bool)> = None;
        let mut check = |list: &[u32]| {
            for &i in list {
                let i = i as usize;
                if best.is_some_and(|(b, _)| i >= b) {
                    return;
                }
                if let Some(explicit) = self.rules[i].matches(input) {
                    best = Some((i, explicit));
                    return;
                }
            }
        };
        if let Some(list) = input.user.and_then(|u| index.by_user.get(u)) {
            check(list);
        }
        if let Some(name) = input.dest.domain() {
            let name = &*lowercase(name);
            if let Some(list) = index.by_full.get(name) {
                check(list);
            }
            // The name itself and every parent at a label boundary.
            let parents = std::iter::once(name)
                .chain(name.bytes().enumerate().filter(|&(_, b)| b == b'.').map(|(i, _)| &name[i + 1..]));
            for candidate in parents {
                if let Some(list) = index.by_parent.get(candidate) {
                    check(list);
                }
            }
            if let Some(keywords) = &index.keywords {
                for found in keywords.find_overlapping_iter(name) {
                    check(&index.by_keyword[found.pattern().as_usize()]);
                }
            }
        }
        // Last, so that a match found by lookup bounds how far these are scanned.
        check(&index.unfiled);
        best
    }

    /// Routes like `route`, but only reports a rule match (for `IPIfNonMatch`).
    pub fn route_rule(&self, input: &RouteInput<'_>) -> Option<Decision> {
        let decision = self.route(input);
        decision.rule.map(|_| decision)
    }
}

impl Rule {
    /// `Some(explicit_dest)` when every present condition holds.
    fn matches(&self, input: &RouteInput<'_>) -> Option<bool> {
        if !self.inbound_tags.is_empty() && !self.inbound_tags.iter().any(|t| t == input.inbound_tag) {
            return None;
        }
        if !self.users.is_empty() {
            let user = input.user?;
            if !self.users.iter().any(|u| u == user) {
                return None;
            }
        }
        if let Some(net) = self.network {
            if !(if input.tcp { net.tcp } else { net.udp }) {
                return None;
            }
        }
        if !self.ports.is_empty() && !in_ranges(&self.ports, input.port) {
            return None;
        }
        if !self.source_ports.is_empty() && !in_ranges(&self.source_ports, input.source_port) {
            return None;
        }
        if self.source_ips.as_ref().is_some_and(|set| !set.contains(input.source)) {
            return None;
        }
        if !self.protocols.is_empty() {
            // As upstream: `http` matches the sniffed `http1`.
            let sniffed = input.protocol?;
            if !self.protocols.iter().any(|p| sniffed.starts_with(p.as_str())) {
                return None;
            }
        }
        if !self.attrs.is_empty() {
            // As upstream: a session without attributes never matches; with them, every named
            // attribute must be present and its value contain a match.
            let attrs = input.attrs?;
            if !self.attrs.iter().all(|(name, regex)| attrs.get(name).is_some_and(|v| regex.is_match(v))) {
                return None;
            }
        }
        let mut explicit = false;
        if let Some(domains) = &self.domains {
            if !domains.matches(input.dest.domain()?) {
                return None;
            }
            explicit = true;
        }
        if let Some(ips) = &self.ips {
            if !ips.contains(input.dest.ip().or(input.resolved)?) {
                return None;
            }
            explicit = true;
        }
        Some(explicit)
    }
}

/// A name in lowercase, for case-insensitive matching; allocates only if it has capitals.
fn lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// A compiled list of domain matchers outside routing (sniffing's `domainsExcluded`).
#[derive(Debug, Default)]
pub struct DomainList(DomainSet);

impl DomainList {
    /// Compiles `matchers` (regular expressions were checked at load).
    pub fn new(matchers: &[DomainMatcher]) -> Result<DomainList, String> {
        DomainSet::new(matchers).map(DomainList)
    }

    /// Whether `name` matches any entry.
    pub fn matches(&self, name: &str) -> bool {
        self.0.matches(name)
    }
}

/// A compiled list of networks outside routing (sniffing's `ipsExcluded`).
#[derive(Debug, Default)]
pub struct IpList(IpSet);

impl IpList {
    /// Merges `nets` into one range table.
    pub fn new(nets: &[IpNet]) -> IpList {
        IpList(IpSet::new(nets))
    }

    /// Whether `ip` falls in any of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl DomainSet {
    fn new(matchers: &[DomainMatcher]) -> Result<DomainSet, String> {
        let mut set = DomainSet::default();
        let mut patterns = Vec::new();
        for m in matchers {
            match m {
                DomainMatcher::Full(f) => set.full.insert(f.to_ascii_lowercase().into()),
                DomainMatcher::Domain(d) => set.parents.insert(d.to_ascii_lowercase().into()),
                DomainMatcher::Keyword(k) => set.keywords.push(k.to_ascii_lowercase().into()),
                DomainMatcher::Regex(r) => {
                    // Each on its own first, so that an error names the one at fault.
                    Regex::new(r).map_err(|e| e.to_string())?;
                    patterns.push(r.as_str());
                }
            }
        }
        if !patterns.is_empty() {
            set.regexes = Some(RegexSet::new(patterns).map_err(|e| e.to_string())?);
        }
        Ok(set)
    }

    /// `full:` is the name itself; `domain:` the name or any parent of it (at a label boundary).
    fn matches(&self, name: &str) -> bool {
        let name = &*lowercase(name);
        if self.full.contains(name) || (!self.parents.is_empty() && self.parents.contains_name_or_parent(name)) {
            return true;
        }
        self.keywords.iter().any(|k| name.contains(&**k)) || self.regexes.as_ref().is_some_and(|r| r.is_match(name))
    }
}

impl IpSet {
    fn new(nets: &[IpNet]) -> IpSet {
        let mut v4: Vec<(u32, u32)> = Vec::new();
        let mut v6: Vec<(u128, u128)> = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        IpSet { v4: merge(v4), v6: merge(v6) }
    }

    /// An IPv4 address mapped into IPv6 (`::ffff:10.1.2.3`) is looked up as the IPv4 one, as
    /// upstream reads such an address.
    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => in_sorted(&self.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => in_sorted(&self.v4, u32::from(v4)),
                None => in_sorted(&self.v6, u128::from(a)),
            },
        }
    }
}

/// Sorts ranges and joins those that overlap or touch.
fn merge<T: Copy + Ord + num_like::Successor>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.successor() => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Whether `x` falls in one of the sorted, disjoint `ranges`.
fn in_sorted<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|&(lo, _)| lo <= x);
    i > 0 && x <= ranges[i - 1].1
}

mod num_like {
    /// The next value, saturating at the top (for joining adjacent ranges).
    pub(super) trait Successor {
        fn successor(self) -> Self;
    }
    impl Successor for u32 {
        fn successor(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl Successor for u128 {
        fn successor(self) -> Self {
            self.saturating_add(1)
        }
    }
}

fn in_ranges(ranges: &[PortRange], port: u16) -> bool {
    ranges.iter().any(|r| r.from <= port && port <= r.to)
}

/// Whether an address belongs to this host or a private network: loopback, RFC 1918,
/// link-local, carrier-grade NAT, unspecified, IPv6 unique-local and link-local, and IPv4
/// addresses mapped into IPv6 that are any of those.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback() || v6.is_unspecified() || (seg[0] & 0xfe00) == 0xfc00 || (seg[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Add;

    use super::*;

    fn input<'a>(dest: &'a Address, port: u16) -> RouteInput<'a> {
        RouteInput {
            inbound_tag: "in",
            user: Some("alice@example.com"),
            dest,
            resolved: None,
            port,
            tcp: true,
            source: "198.51.100.7".parse().unwrap(),
            source_port: 40000,
            protocol: None,
            attrs: None,
        }
    }

    fn router(rules: Vec<RuleSpec>) -> Router {
        let tags = ["direct", "blocked", "other"];
        Router::new(&rules, |t| tags.iter().position(|x| *x == t), |t| (t == "group").then_some(0)).unwrap()
    }

    /// Filing rules must not change which rule matches: many random rule sets and connections,
    /// each routed through the index and by a scan of every rule.
    #[test]
    fn filed_rules_route_as_a_full_scan_does() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let names = ["a.example", "b.example", "x.a.example", "Mixed.Example", "c.org", "d.c.org"];
        let users = ["alice", "bob", "carol"];
        let mut matched = 0;
        for _ in 0..200 {
            let rules: Vec<RuleSpec> = (0..INDEX_FROM + next(40))
                .map(|_| {
                    let mut rule =
                        RuleSpec { outbound_tag: ["direct", "blocked", "other"][next(3)].into(), ..Default::default() };
                    match next(6) {
                        0 => rule.users = (0..1 + next(2)).map(|_| users[next(3)].to_string()).collect(),
                        1 => rule.domains = vec![DomainMatcher::Full(names[next(6)].into())],
                        2 => rule.domains = vec![DomainMatcher::Domain(names[next(6)].into())],
                        3 => rule.domains = vec![DomainMatcher::Keyword(["exa", "org"][next(2)].into())],
                        4 => rule.ports = vec![PortRange { from: 80, to: 80 }],
                        _ => {
                            rule.users = vec![users[next(3)].to_string()];
                            rule.domains = vec![DomainMatcher::Domain(names[next(6)].into())];
                        }
                    }
                    rule
                })
                .collect();
            let router = router(rules);
            assert!(router.index.is_some());
            for _ in 0..20 {
                let dest = match next(3) {
                    0 => Address::Ip("192.0.2.1".parse().unwrap()),
                    _ => Address::Domain(["www.", "", "x."][next(3)].to_owned().add(names[next(6)]).into()),
                };
                let user = [Some("alice"), Some("bob"), Some("dave"), None][next(4)];
                let conn = RouteInput { user, ..input(&dest, [80, 443][next(2)]) };
                let scanned = router.rules.iter().enumerate().find_map(|(i, r)| Some((i, r.matches(&conn)?)));
                let routed = router.route(&conn);
                assert_eq!(routed.rule, scanned.map(|(i, _)| i), "{dest:?} {user:?}");
                assert_eq!(routed.explicit_dest, scanned.is_some_and(|(_, e)| e));
                matched += usize::from(scanned.is_some());
            }
        }
        // Most connections match some rule, so the comparison says something.
        assert!(matched > 2000, "{matched} of 4000 matched");
    }

    #[test]
    fn first_match_wins_and_default_is_first_outbound() {
        let r = router(vec![
            RuleSpec {
                ports: vec![PortRange { from: 443, to: 443 }],
                outbound_tag: "blocked".into(),
                ..Default::default()
            },
            RuleSpec {
                ports: vec![PortRange { from: 1, to: 1000 }],
                outbound_tag: "other".into(),
                ..Default::default()
            },
        ]);
        let dest = Address::Domain("example.com".into());
        assert_eq!(r.route(&input(&dest, 443)).target, Target::Outbound(1));
        assert_eq!(r.route(&input(&dest, 80)).target, Target::Outbound(2));
        assert_eq!(
            r.route(&input(&dest, 8080)),
            Decision { target: Target::Outbound(0), rule: None, explicit_dest: false }
        );
    }

    #[test]
    fn protocol_rules_match_sniffed_prefixes() {
        let r = router(vec![
            RuleSpec { protocols: vec!["bittorrent".into()], outbound_tag: "blocked".into(), ..Default::default() },
            RuleSpec {
                protocols: vec!["http".into(), "tls".into()],
                outbound_tag: "other".into(),
                ..Default::default()
            },
        ]);
        let dest = Address::Ip("192.0.2.9".parse().unwrap());
        let with = |protocol| RouteInput { protocol, ..input(&dest, 6881) };
        assert_eq!(r.route(&with(Some("bittorrent"))).target, Target::Outbound(1));
        // `http` is a prefix of the sniffed `http1`, as upstream matches it.
        assert_eq!(r.route(&with(Some("http1"))).target, Target::Outbound(2));
        assert_eq!(r.route(&with(Some("tls"))).target, Target::Outbound(2));
        assert_eq!(r.route(&with(Some("quic"))).target, Target::Outbound(0));
        // Nothing sniffed: no protocol rule matches.
        assert_eq!(r.route(&with(None)).rule, None);
        assert!(!r.route(&with(Some("tls"))).explicit_dest);
    }

    #[test]
    fn attrs_rules_match_request_attributes() {
        let attr = |name: &str, pattern: &str| (name.to_string(), pattern.to_string());
        let r = router(vec![
            RuleSpec {
                attrs: vec![attr(":method", "^POST$"), attr(":path", "^/api/")],
                outbound_tag: "blocked".into(),
                ..Default::default()
            },
            // Names as configured in any case; the expression need only match somewhere.
            RuleSpec { attrs: vec![attr("X-Route", "blue")], outbound_tag: "other".into(), ..Default::default() },
        ]);
        assert!(r.wants_attrs());
        assert!(
            !router(vec![RuleSpec { ports: vec![PortRange { from: 1, to: 1 }], ..Default::default() }]).wants_attrs()
        );
        let dest = Address::Domain("example.com".into());
        let with = |pairs: &[(&str, &str)]| {
            let mut attrs = RequestAttrs::default();
            for (n, v) in pairs {
                attrs.set(n, v);
            }
            attrs
        };
        let route = |attrs: Option<&RequestAttrs>| r.route(&RouteInput { attrs, ..input(&dest, 80) }).rule;
        assert_eq!(route(Some(&with(&[(":method", "POST"), (":path", "/api/v1")]))), Some(0));
        // Every attribute must hold: the method alone is not enough.
        assert_eq!(route(Some(&with(&[(":method", "POST"), (":path", "/web")]))), None);
        assert_eq!(route(Some(&with(&[(":method", "POST")]))), None);
        assert_eq!(route(Some(&with(&[(":method", "GET"), (":path", "/api/"), ("x-route", "light-blue")]))), Some(1));
        // A session without attributes never matches an attrs rule, nor one missing the name.
        assert_eq!(route(None), None);
        assert_eq!(route(Some(&with(&[("x-other", "blue")]))), None);
        assert!(!r.route(&RouteInput { attrs: Some(&with(&[("x-route", "blue")])), ..input(&dest, 80) }).explicit_dest);
        // A bad expression (only the API or a hand-built spec could bring one) is an error.
        let bad = vec![RuleSpec { attrs: vec![attr("a", "(")], outbound_tag: "direct".into(), ..Default::default() }];
        assert_eq!(Router::new(&bad, |_| Some(0), |_| None).unwrap_err().index, 0);
    }

    #[test]
    fn domain_list() {
        let list =
            DomainList::new(&[DomainMatcher::Keyword("apple".into()), DomainMatcher::Full("a.b".into())]).unwrap();
        assert!(list.matches("courier.push.Apple.com") && list.matches("a.b") && !list.matches("x.a.b"));
        // Several regular expressions, tried as one set: any of them matches.
        let list = DomainList::new(&[
            DomainMatcher::Regex("^a[0-9]+\\.x$".into()),
            DomainMatcher::Regex("(^|\\.)b\\.y$".into()),
        ])
        .unwrap();
        assert!(list.matches("a1.x") && list.matches("c.b.y") && list.matches("B.Y") && !list.matches("a.x"));
        let bad = DomainList::new(&[DomainMatcher::Regex("ok".into()), DomainMatcher::Regex("(".into())]);
        assert!(bad.is_err());
    }

    #[test]
    fn domain_matchers() {
        let r = router(vec![RuleSpec {
            domains: vec![
                DomainMatcher::Domain("example.com".into()),
                DomainMatcher::Full("exact.org".into()),
                DomainMatcher::Keyword("ads".into()),
                DomainMatcher::Regex("^r[0-9]+\\.net$".into()),
            ],
            outbound_tag: "blocked".into(),
            ..Default::default()
        }]);
        for (name, hit) in [
            ("example.com", true),
            ("a.b.Example.COM", true),
            ("badexample.com", false),
            ("exact.org", true),
            ("www.exact.org", false),
            ("myads.io", true),
            ("r42.net", true),
            ("r42.nets", false),
        ] {
            let dest = Address::Domain(name.into());
            let d = r.route(&input(&dest, 80));
            assert_eq!(d.target == Target::Outbound(1), hit, "{name}");
            assert_eq!(d.explicit_dest, hit, "{name}");
        }
        // An IP destination never matches a domain rule.
        let ip = Address::Ip("1.2.3.4".parse().unwrap());
        assert_eq!(r.route(&input(&ip, 80)).target, Target::Outbound(0));
    }

    #[test]
    fn ip_user_inbound_network_source() {
        let r = router(vec![
            RuleSpec { users: vec!["bob".into()], outbound_tag: "other".into(), ..Default::default() },
            RuleSpec { inbound_tags: vec!["nope".into()], outbound_tag: "other".into(), ..Default::default() },
            RuleSpec {
                network: Some(NetworkSet { tcp: false, udp: true }),
                outbound_tag: "other".into(),
                ..Default::default()
            },
            RuleSpec {
                source_ips: vec!["10.0.0.0/8".parse().unwrap()],
                outbound_tag: "other".into(),
                ..Default::default()
            },
            RuleSpec {
                ips: vec!["127.0.0.1/32".parse().unwrap()],
                outbound_tag: "blocked".into(),
                ..Default::default()
            },
        ]);
        let lo = Address::Ip("127.0.0.1".parse().unwrap());
        let d = r.route(&input(&lo, 80));
        assert_eq!((d.target, d.rule, d.explicit_dest), (Target::Outbound(1), Some(4), true));
        let other = Address::Ip("127.0.0.2".parse().unwrap());
        assert_eq!(r.route(&input(&other, 80)).rule, None);
        // A domain that resolved to a matching IP matches the IP rule.
        let name = Address::Domain("localhost".into());
        let mut i = input(&name, 80);
        assert_eq!(r.route(&i).rule, None);
        i.resolved = Some("127.0.0.1".parse().unwrap());
        assert_eq!(r.route(&i).rule, Some(4));
    }

    #[test]
    fn ip_sets_merge_and_bisect() {
        let nets: Vec<IpNet> =
            ["10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8", "192.168.1.7/32", "0.0.0.0/32", "fc00::/7", "::1/128"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
        let set = IpSet::new(&nets);
        // 10/8 swallows 10.1/16 and touches 11/8: one range.
        assert_eq!(
            set.v4[1],
            (u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)), u32::from(std::net::Ipv4Addr::new(11, 255, 255, 255)))
        );
        for (ip, inside) in [
            ("10.0.0.0", true),
            ("11.255.255.255", true),
            ("12.0.0.0", false),
            ("9.255.255.255", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("0.0.0.0", true),
            ("0.0.0.1", false),
            ("fd12::1", true),
            ("::1", true),
            ("::2", false),
        ] {
            assert_eq!(set.contains(ip.parse().unwrap()), inside, "{ip}");
        }
        let all = IpSet::new(&["0.0.0.0/0".parse().unwrap()]);
        assert!(all.contains("255.255.255.255".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        // A mapped IPv4 address is the IPv4 one (V2Ray routes ::ffff:10.1.2.3 as 10.1.2.3).
        assert!(set.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!set.contains("::ffff:12.0.0.1".parse().unwrap()));
    }

    #[test]
    fn one_rule_with_many_domains() {
        let domains = (0..10_000).map(|i| DomainMatcher::Domain(format!("site{i}.example"))).collect();
        let r = router(vec![RuleSpec { domains, outbound_tag: "blocked".into(), ..Default::default() }]);
        for (name, hit) in
            [("site9999.example", true), ("a.b.SITE17.example", true), ("site10000.example", false), ("example", false)]
        {
            let dest = Address::Domain(name.into());
            assert_eq!(r.route(&input(&dest, 443)).target == Target::Outbound(1), hit, "{name}");
        }
    }

    #[test]
    fn missing_outbounds_and_balancers() {
        let r = router(vec![
            RuleSpec { ports: vec![PortRange { from: 1, to: 1 }], outbound_tag: "gone".into(), ..Default::default() },
            RuleSpec { ports: vec![PortRange { from: 2, to: 2 }], balancer_tag: "group".into(), ..Default::default() },
        ]);
        let dest = Address::Domain("example.com".into());
        assert_eq!(r.route(&input(&dest, 1)).target, Target::Missing);
        assert_eq!(r.target_tag(0), "gone");
        assert_eq!(r.route(&input(&dest, 2)).target, Target::Balancer(0));
        assert_eq!(r.target_tag(1), "group");
        let rules = vec![RuleSpec { balancer_tag: "nope".into(), ..Default::default() }];
        let err = Router::new(&rules, |_| None, |_| None).unwrap_err();
        assert_eq!((err.index, err.reason.as_str()), (0, "balancer nope not found"));
    }

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.9.8.7",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
