//! StatsService: traffic counters summed over every shard, with upstream's names.
//!
//! Shards only ever count up. A reset is a baseline kept here: the value reported is the
//! shards' total minus the baseline, so no shard is written to.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;
use shardray_core::spec::Config;
use shardray_core::stats::{IpSessions, StatsSnapshot};
use shardray_proto::xray::app::stats::command as pb;
use tonic::{Request, Response, Status};

use super::ApiState;

/// The service, ready to add to a router.
pub fn service(state: Arc<ApiState>) -> pb::stats_service_server::StatsServiceServer<StatsApi> {
    pb::stats_service_server::StatsServiceServer::new(StatsApi { state, started: Instant::now() })
        // Batches of users can be large (about 100 bytes a user).
        .max_decoding_message_size(super::MAX_REQUEST)
}

/// What the API adds to and takes from the shards' totals: counts carried over from the last
/// run, and resets (a baseline per counter). Shards only ever count up and are never written.
#[derive(Debug, Default)]
pub struct CounterBook {
    carried: HashMap<String, u64>,
    baselines: HashMap<String, u64>,
}

impl CounterBook {
    /// Counters saved by the last run (`{"name": value, …}`); none if the file is missing.
    pub fn load(path: &Path) -> std::io::Result<CounterBook> {
        let carried = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        Ok(CounterBook { carried, baselines: HashMap::new() })
    }

    /// Writes `values` so the next run carries them over: temporary file, sync, rename.
    pub fn save(path: &Path, values: &BTreeMap<String, u64>) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &serde_json::to_vec(values)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// The value the API reports for a counter whose shard total is `total`.
    pub fn value(&self, name: &str, total: u64) -> u64 {
        if self.carried.is_empty() && self.baselines.is_empty() {
            return total;
        }
        let carried = self.carried.get(name).copied().unwrap_or(0);

        (total + carried).saturating_sub(self.baselines.get(name).copied().unwrap_or(0))
    }

    /// Zeroes what the API reports for a counter, without touching the shards.
    fn reset(&mut self, name: &str, total: u64) {
        let carried = self.carried.get(name).copied().unwrap_or(0);
        self.baselines.insert(name.to_owned(), total + carried);
    }

    /// Drops everything kept for a removed user's counters.
    pub fn forget_user(&mut self, email: &str) {
        let prefix = format!("user>>>{email}>>>");
        self.carried.retain(|k, _| !k.starts_with(&prefix));
        self.baselines.retain(|k, _| !k.starts_with(&prefix));
    }
}

/// Every counter's reported value, from the registry's users and the shards' snapshots.
pub fn reported(state: &ApiState, users: &[(String, u32)], snaps: &[StatsSnapshot]) -> BTreeMap<String, u64> {
    let book = state.counters.lock().unwrap_or_else(|e| e.into_inner());
    totals(&state.config(), users, snaps)
        .into_iter()
        .map(|(name, total)| {
            let v = book.value(&name, total);
            (name, v)
        })
        .collect()
}

/// The StatsService implementation.
pub struct StatsApi {
    state: Arc<ApiState>,
    started: Instant,
}

/// `user>>>EMAIL>>>traffic>>>uplink` and the like.
fn traffic_name(kind: &str, name: &str, dir: &str) -> String {
    format!("{kind}>>>{name}>>>traffic>>>{dir}")
}

/// Every counter the config enables, with the shards' totals; missing ones do not exist.
/// `users` are the registry's users (email, level) across inbounds.
fn totals(config: &Config, users: &[(String, u32)], snaps: &[StatsSnapshot]) -> Vec<(String, u64)> {
    if !config.stats_enabled {
        return Vec::new();
    }
    // (up, down) per email and per tag, summed over the shards. FxHash: these keys are our own
    // strings, not attacker-chosen, and this is the hot part of a QueryStats over many users.
    let mut per_user: FxHashMap<&str, (u64, u64)> = FxHashMap::default();
    per_user.reserve(users.len());
    let mut per_inbound: FxHashMap<&str, (u64, u64)> = FxHashMap::default();
    let mut per_outbound: FxHashMap<&str, (u64, u64)> = FxHashMap::default();
    let add = |map: &mut FxHashMap<_, (u64, u64)>, key, up, down| {
        let e = map.entry(key).or_insert((0, 0));
        e.0 += up;
        e.1 += down;
    };
    for s in snaps {
        for u in &s.users {
            add(&mut per_user, &*u.email, u.up, u.down);
        }
        for l in &s.inbounds {
            add(&mut per_inbound, &*l.tag, l.up, l.down);
        }
        for l in &s.outbounds {
            add(&mut per_outbound, &*l.tag, l.up, l.down);
        }
    }
    let mut out = Vec::with_capacity(users.len() * 2 + 8);
    let mut levels: FxHashMap<u32, (bool, bool)> = FxHashMap::default();
    for (email, level) in users {
        let (up_on, down_on) = *levels.entry(*level).or_insert_with(|| {
            let p = config.policy.level(*level);
            (p.stats_user_uplink, p.stats_user_downlink)
        });
        let (up, down) = per_user.get(email.as_str()).copied().unwrap_or_default();
        if up_on {
            out.push((traffic_name("user", email, "uplink"), up));
        }
        if down_on {
            out.push((traffic_name("user", email, "downlink"), down));
        }
    }
    let system = config.policy.system;
    let links = [
        (
            "inbound",
            config.inbounds.iter().map(|i| i.tag.as_str()).collect::<Vec<_>>(),
            &per_inbound,
            system.stats_inbound_uplink,
            system.stats_inbound_downlink,
        ),
        (
            "outbound",
            config.outbounds.iter().map(|o| o.tag.as_str()).collect(),
            &per_outbound,
            system.stats_outbound_uplink,
            system.stats_outbound_downlink,
        ),
    ];
    for (kind, tags, sums, up_on, down_on) in links {
        for tag in tags.into_iter().filter(|t| !t.is_empty()) {
            let (up, down) = sums.get(tag).copied().unwrap_or_default();
            if up_on {
                out.push((traffic_name(kind, tag, "uplink"), up));
            }
            if down_on {
                out.push((traffic_name(kind, tag, "downlink"), down));
            }
        }
    }
    out
}

/// Whether a user at `level` has an online map (`user>>>EMAIL>>>online`). Unlike upstream, the
/// map exists from the start (empty), not from the user's first session.
fn tracks_online(config: &Config, level: u32) -> bool {
    config.stats_enabled && config.policy.level(level).stats_user_online
}

/// The email an online-map name names, if the name has that shape.
fn online_email(name: &str) -> Option<&str> {
    name.strip_prefix("user>>>")?.strip_suffix(">>>online")
}

/// Addresses upstream never records (its `OnlineMap.AddIP` returns early for exactly these),
/// so sessions through a local front such as nginx do not show; followed here, odd as it is.
fn ignored_by_upstream(ip: IpAddr) -> bool {
    ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
}

/// An address as upstream writes it: IPv6 in brackets (Go's `net.Address.String()`).
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Adds one shard's live addresses to a user's online map. As upstream: an address is there
/// while a session from it lives (however many), and its value is the unix time of the latest
/// session start from it, not of the latest traffic. Across shards the later time wins.
fn merge_ips(map: &mut BTreeMap<String, i64>, ips: &[IpSessions]) {
    for e in ips.iter().filter(|e| e.live > 0 && !ignored_by_upstream(e.ip)) {
        let seen = i64::try_from(e.last_seen).unwrap_or(i64::MAX);
        let slot = map.entry(ip_key(e.ip)).or_insert(seen);
        *slot = (*slot).max(seen);
    }
}

/// The online map called `name`: client address → last seen (unix seconds); `None` if there
/// is no such map (unknown user, or a level without `statsUserOnline`).
fn online_map(
    config: &Config,
    users: &[(String, u32)],
    snaps: &[StatsSnapshot],
    name: &str,
) -> Option<BTreeMap<String, i64>> {
    let email = online_email(name)?;
    if !users.iter().any(|(e, level)| e == email && tracks_online(config, *level)) {
        return None;
    }
    let mut map = BTreeMap::new();
    for u in snaps.iter().flat_map(|s| &s.users).filter(|u| &*u.email == email) {
        merge_ips(&mut map, &u.ips);
    }
    Some(map)
}

/// The names of the online maps that hold at least one address (users online, as upstream
/// counts them).
fn online_names(config: &Config, users: &[(String, u32)], snaps: &[StatsSnapshot]) -> BTreeSet<String> {
    let mut live: HashMap<&str, BTreeMap<String, i64>> = HashMap::new();
    for u in snaps.iter().flat_map(|s| &s.users).filter(|u| !u.ips.is_empty()) {
        merge_ips(live.entry(&u.email).or_default(), &u.ips);
    }
    users
        .iter()
        .filter(|(_, level)| tracks_online(config, *level))
        .filter(|(email, _)| live.get(email.as_str()).is_some_and(|m| !m.is_empty()))
        .map(|(email, _)| format!("user>>>{email}>>>online"))
        .collect()
}

/// Which counters a QueryStats asks for: Xray's substring `pattern`, or V2Ray v5's `patterns`
/// (any of them), as substrings or, with `regexp`, as regular expressions.
enum NameFilter {
    Substrings(Vec<String>),
    Regexes(Vec<regex::Regex>),
}

impl NameFilter {
    fn new(req: &pb::QueryStatsRequest) -> Result<NameFilter, Status> {
        let mut patterns = req.patterns.clone();
        if patterns.is_empty() {
            patterns.push(req.pattern.clone());
        }
        if !req.regexp {
            return Ok(NameFilter::Substrings(patterns));
        }
        let regexes = patterns
            .iter()
            .map(|p| regex::Regex::new(p).map_err(|e| Status::invalid_argument(format!("patterns: {p:?}: {e}"))))
            .collect::<Result<_, _>>()?;
        Ok(NameFilter::Regexes(regexes))
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            NameFilter::Substrings(p) => p.iter().any(|p| name.contains(p.as_str())),
            NameFilter::Regexes(r) => r.iter().any(|r| r.is_match(name)),
        }
    }
}

impl StatsApi {
    /// The registry's users and every shard's counters, read together.
    async fn read(&self) -> Result<(Vec<(String, u32)>, Vec<StatsSnapshot>), Status> {
        let users = self.state.registry.lock().await.stat_users();
        let snaps = self.state.shards.snapshots(None).await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok((users, snaps))
    }

    /// Like `read`, but only what the counter or online map `name` needs: one user, or none for
    /// an inbound's or outbound's counter. Panels that poll GetStats per user rely on this
    /// costing the same at 10 users as at 1,000,000.
    async fn read_for(&self, name: &str) -> Result<(Vec<(String, u32)>, Vec<StatsSnapshot>), Status> {
        let email = name.strip_prefix("user>>>").and_then(|rest| rest.split(">>>").next());
        let users = match email {
            Some(email) => self.state.registry.lock().await.stat_user(email).into_iter().collect(),
            None => Vec::new(),
        };
        let only = users.first().map_or("", |(email, _)| email.as_str());
        let snaps = self.state.shards.snapshots(Some(only)).await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok((users, snaps))
    }

    /// Reports `totals` through the counter book, resetting them if asked.
    fn report(&self, totals: impl Iterator<Item = (String, u64)>, reset: bool) -> Vec<pb::Stat> {
        let mut book = self.state.counters.lock().unwrap_or_else(|e| e.into_inner());
        totals
            .map(|(name, total)| {
                let value = book.value(&name, total);
                if reset {
                    book.reset(&name, total);
                }
                pb::Stat { name, value: i64::try_from(value).unwrap_or(i64::MAX) }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl pb::stats_service_server::StatsService for StatsApi {
    async fn get_stats(&self, req: Request<pb::GetStatsRequest>) -> Result<Response<pb::GetStatsResponse>, Status> {
        let peer = req.remote_addr();
        let req = req.into_inner();
        let (users, snaps) = self.read_for(&req.name).await?;
        let all = totals(&self.state.config(), &users, &snaps);
        let found = all
            .iter()
            .find(|(name, _)| *name == req.name)
            .map(|(_, total)| *total)
            .ok_or_else(|| Status::not_found(format!("{} not found.", req.name)));

        if req.reset {
            // A reset changes what every later reader sees: audited like any change.
            let outcome = found.as_ref().map(|_| ()).map_err(Clone::clone);
            self.state.audit.record(peer, "GetStats", &format!("reset name={}", req.name), &outcome);
        }
        let stat = self.report(std::iter::once((req.name, found?)), req.reset).pop();
        Ok(Response::new(pb::GetStatsResponse { stat }))
    }

    async fn get_stats_online(
        &self,
        req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let req = req.into_inner();
        let (users, snaps) = self.read_for(&req.name).await?;
        // As upstream, the value is the number of distinct client addresses, not of sessions.
        let Some(map) = online_map(&self.state.config(), &users, &snaps, &req.name) else {
            return Err(Status::not_found(format!("{} not found.", req.name)));
        };
        let stat = pb::Stat { name: req.name, value: map.len() as i64 };
        Ok(Response::new(pb::GetStatsResponse { stat: Some(stat) }))
    }

    async fn query_stats(
        &self,
        req: Request<pb::QueryStatsRequest>,
    ) -> Result<Response<pb::QueryStatsResponse>, Status> {
        let peer = req.remote_addr();
        let req = req.into_inner();
        let filter = NameFilter::new(&req)?;
        let (users, snaps) = self.read().await?;
        let matching =
            totals(&self.state.config(), &users, &snaps).into_iter().filter(|(name, _)| filter.matches(name));
        let stat = self.report(matching, req.reset);
        if req.reset {
            let what = format!("reset pattern={:?} patterns={:?} matched={}", req.pattern, req.patterns, stat.len());
            self.state.audit.record(peer, "QueryStats", &what, &Ok(()));
        }
        Ok(Response::new(pb::QueryStatsResponse { stat }))
    }

    async fn get_sys_stats(&self, _: Request<pb::SysStatsRequest>) -> Result<Response<pb::SysStatsResponse>, Status> {
        let snaps = self.state.shards.snapshots(Some("")).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let live: u64 = snaps.iter().map(|s| s.live_sessions).sum();
        Ok(Response::new(pb::SysStatsResponse {
            // Go's goroutines have no equivalent; threads are the nearest honest figure.
            num_goroutine: field("Threads:") as u32,
            num_gc: 0,
            alloc: field("VmRSS:") * 1024,
            total_alloc: 0,
            sys: field("VmHWM:") * 1024,
            mallocs: 0,
            frees: 0,
            live_objects: live,
            pause_total_ns: 0,
            uptime: self.started.elapsed().as_secs() as u32,
        }))
    }

    async fn get_stats_online_ip_list(
        &self,
        req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsOnlineIpListResponse>, Status> {
        let req = req.into_inner();
        let (users, snaps) = self.read_for(&req.name).await?;
        let Some(map) = online_map(&self.state.config(), &users, &snaps, &req.name) else {
            return Err(Status::not_found(format!("{} not found.", req.name)));
        };
        Ok(Response::new(pb::GetStatsOnlineIpListResponse { name: req.name, ips: map.into_iter().collect() }))
    }

    async fn get_all_online_users(
        &self,
        _: Request<pb::GetAllOnlineUsersRequest>,
    ) -> Result<Response<pb::GetAllOnlineUsersResponse>, Status> {
        let (users, snaps) = self.read().await?;
        let users = online_names(&self.state.config(), &users, &snaps).into_iter().collect();
        Ok(Response::new(pb::GetAllOnlineUsersResponse { users }))
    }
}
