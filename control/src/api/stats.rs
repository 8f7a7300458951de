//! StatsService: traffic counters summed over every shard, with upstream's names.
//!
//! Shards only ever count up. A reset is a baseline kept here: the value reported is the
//! shards' total minus the baseline, so no shard is written to.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;
use shardray_core::slots::NO_SLOT;
use shardray_core::spec::Config;
use shardray_core::stats::{IpSessions, Refusal, StatsSnapshot};
use shardray_proto::xray::app::stats::command as pb;
use tonic::{Request, Response, Status};

pub use super::query::QueryAnswer;
use super::ApiState;
use crate::registry::{Registry, UserSets};
use crate::slots::{SlotBook, Slots};

/// The service, ready to add to a router.
pub fn service(state: Arc<ApiState>) -> pb::stats_service_server::StatsServiceServer<StatsApi> {
    pb::stats_service_server::StatsServiceServer::new(StatsApi { state, started: Instant::now() })
        // Batches of users can be large (about 100 bytes a user).
        .max_decoding_message_size(super::MAX_REQUEST)
}

/// What the API adds to and takes from the shards' totals of inbound and outbound counters:
/// counts carried over from the last run, and resets (a baseline per counter). Users' counters
/// keep theirs per slot in the registry (`SlotBook::offset`). Shards only ever count up and are
/// never written.
#[derive(Debug, Default)]
pub struct CounterBook {
    carried: HashMap<String, u64>,
    baselines: HashMap<String, u64>,
    /// Where the counters are saved (`DIR/counters.json` with `--state`).
    path: Option<std::path::PathBuf>,
    /// The delta readers' cursors, kept beside the counters they are taken from.
    pub deltas: super::delta::DeltaBook,
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
        let deltas = super::delta::DeltaBook::load(path.parent())?;
        Ok(CounterBook { carried, baselines: HashMap::new(), path: Some(path.to_owned()), deltas })
    }

    /// Saves every counter's value as reported now, if the counters are kept on disk.
    pub(super) fn save_with(
        &self,
        config: &Arc<Config>,
        registry: &Registry,
        snaps: &[StatsSnapshot],
    ) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let mut values = Vec::new();
        visit_counters(config, &registry.slots(), self, snaps, None, |name, value, _, _| {
            values.push((name.to_owned(), value));
        });
        CounterBook::save(path, values)
    }

    /// Moves the carried counts of the users in `sets` into their slots.
    pub fn carry_users(&mut self, sets: &mut UserSets) {
        let mut name = String::new();
        let mut offsets = Vec::new();
        for v in sets.slots().live() {
            let mut offset = [0i64; 2];
            for (d, dir) in DIRS.iter().enumerate() {
                write_name(&mut name, "user", v.email, dir);
                if let Some(n) = self.carried.remove(name.as_str()) {
                    offset[d] = i64::try_from(n).unwrap_or(i64::MAX);
                }
            }
            if offset != [0, 0] {
                offsets.push((v.slot, offset));
            }
        }
        for (slot, offset) in offsets {
            sets.slots_mut().set_offset(slot, offset);
        }
    }

    /// Writes `values` so the next run carries them over: temporary file, sync, rename. The
    /// values are written as they come, so a million users need no map in memory.
    pub fn save(path: &Path, values: impl IntoIterator<Item = (String, u64)>) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let file = std::fs::File::create(&tmp)?;
        let mut out = std::io::BufWriter::new(file);
        out.write_all(b"{")?;
        for (i, (name, value)) in values.into_iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut out, &name)?;
            write!(out, ":{value}")?;
        }
        out.write_all(b"}")?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// The value the API reports for an inbound's or outbound's counter whose shard total is
    /// `total`.
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

    /// Drops anything still kept by name for a removed user's counters (its slot's own
    /// figures go with the slot).
    pub fn forget_user(&mut self, email: &str) {
        if self.carried.is_empty() && self.baselines.is_empty() {
            return;
        }
        let prefix = format!("user>>>{email}>>>");
        self.carried.retain(|k, _| !k.starts_with(&prefix));
        self.baselines.retain(|k, _| !k.starts_with(&prefix));
    }
}

/// The two directions of a traffic counter, in `[up, down]` order.
const DIRS: [&str; 2] = ["uplink", "downlink"];

/// A user's reported value: the shards' total plus the slot's offset.
fn user_value(total: u64, offset: i64) -> u64 {
    (i128::from(total) + i128::from(offset)).clamp(0, i128::from(u64::MAX)) as u64
}

/// Every counter's reported value, from the registry and the shards' snapshots, as a lazy
/// sequence (for saving a million users without a map of them).
pub fn reported<'a>(
    state: &'a ApiState,
    registry: &'a Registry,
    snaps: &'a [StatsSnapshot],
) -> impl Iterator<Item = (String, u64)> + 'a {
    let config = state.config();
    let slots = registry.slots();
    let totals = user_totals(snaps, &slots);
    let links = {
        let book = state.counters.lock().unwrap_or_else(|e| e.into_inner());
        link_totals(&config, snaps)
            .into_iter()
            .map(|(name, total)| {
                let v = book.value(&name, total);
                (name, v)
            })
            .collect::<Vec<_>>()
    };
    let mut levels = LevelSwitches::new(&config);
    let book = slots.book();
    slots
        .into_live()
        .flat_map(move |v| {
            let on = levels.get(v.level);
            let total = totals.get(v.slot as usize).copied().unwrap_or_default();
            let offset = book.offset(v.slot);
            (0..2).filter(move |&d| on[d]).map(move |d| {
                let mut name = String::new();
                write_name(&mut name, "user", v.email, DIRS[d]);
                (name, user_value(total[d], offset[d]))
            })
        })
        .chain(links)
}

/// Calls `f(name, reported value)` for every counter QueryStats would report, for readers
/// other than the API (`/metrics`, `/debug/vars`). The registry is locked by the caller.
pub(crate) fn each_counter(
    state: &ApiState,
    registry: &Registry,
    snaps: &[StatsSnapshot],
    mut f: impl FnMut(&str, u64),
) {
    let book = state.counters.lock().unwrap_or_else(|e| e.into_inner());
    visit_counters(&state.config(), &registry.slots(), &book, snaps, None, |name, value, _, _| f(name, value));
}

/// Every counter's lifetime value (reported plus zeroed by resets), for a delta cursor.
pub(super) fn lifetime_values(
    config: &Arc<Config>,
    registry: &Registry,
    book: &CounterBook,
    snaps: &[StatsSnapshot],
) -> HashMap<String, u64> {
    let mut values = HashMap::new();
    visit_counters(config, &registry.slots(), book, snaps, None, |name, value, _, _| {
        values.insert(name.to_owned(), value + book.deltas.zeroed_of(name));
    });
    values
}

/// A user about to be removed, as delta readers need it afterwards: its slot, offsets and
/// which of its counters its level keeps.
pub(crate) struct Departing {
    email: String,
    slot: u32,
    offset: [i64; 2],
    on: [bool; 2],
}

/// The users among `emails` whose last counts delta readers will need (none without readers).
/// Called with the registry locked, before the change that removes them.
pub(crate) fn departing(state: &ApiState, registry: &Registry, emails: &[String]) -> Vec<Departing> {
    if !state.counters.lock().unwrap_or_else(|e| e.into_inner()).deltas.has_readers() {
        return Vec::new();
    }
    let config = state.config();
    let mut levels = LevelSwitches::new(&config);
    let slots = registry.slots();
    emails
        .iter()
        .filter_map(|email| registry.stat_user(email))
        .map(|v| Departing {
            email: v.email.to_string(),
            slot: v.slot,
            offset: slots.offset(v.slot),
            on: levels.get(v.level),
        })
        .collect()
}

/// Gives delta readers the last counts of the `departing` users the change removed (every
/// shard has applied it, so their counts are final); those still on another inbound stay.
pub(crate) async fn depart(state: &ApiState, registry: &Registry, departing: Vec<Departing>) {
    let gone: Vec<Departing> = departing.into_iter().filter(|d| registry.stat_user(&d.email).is_none()).collect();
    if gone.is_empty() {
        return;
    }
    let snaps = match state.shards.snapshots(None).await {
        Ok(snaps) => snaps,
        Err(e) => {
            let what = format!("delta counters: removed users' last counts unknown: {e}");
            state.log.error(shardray_core::spec::LogLevel::Warning, format_args!("{what}"));
            return;
        }
    };
    let mut book = state.counters.lock().unwrap_or_else(|e| e.into_inner());
    let mut name = String::new();
    for d in gone {
        let total = snaps.iter().map(|s| s.user(d.slot)).fold([0, 0], |a, b| [a[0] + b[0], a[1] + b[1]]);
        for dir in (0..2).filter(|&dir| d.on[dir]) {
            write_name(&mut name, "user", &d.email, DIRS[dir]);
            book.deltas.depart(name.clone(), user_value(total[dir], d.offset[dir]));
        }
    }
}

/// How many users are online, as GetAllOnlineUsers counts them.
pub(crate) fn online_users(config: &Config, registry: &Registry, snaps: &[StatsSnapshot]) -> usize {
    let slots = registry.slots();
    online_by_slot(snaps)
        .into_keys()
        .filter_map(|slot| slots.get(slot))
        .filter(|v| tracks_online(config, v.level))
        .count()
}

/// The StatsService implementation.
pub struct StatsApi {
    state: Arc<ApiState>,
    started: Instant,
}

/// Writes `user>>>EMAIL>>>traffic>>>uplink` and the like into `buf` (cleared first).
fn write_name(buf: &mut String, kind: &str, name: &str, dir: &str) {
    buf.clear();
    for part in [kind, ">>>", name, ">>>traffic>>>", dir] {
        buf.push_str(part);
    }
}

/// `user>>>EMAIL>>>traffic>>>uplink` and the like.
fn traffic_name(kind: &str, name: &str, dir: &str) -> String {
    let mut s = String::with_capacity(kind.len() + name.len() + dir.len() + 16);
    write_name(&mut s, kind, name, dir);
    s
}

/// Which user counters each level enables, looked up once per level.
struct LevelSwitches {
    config: Arc<Config>,
    cache: FxHashMap<u32, [bool; 2]>,
}

impl LevelSwitches {
    fn new(config: &Arc<Config>) -> Self {
        LevelSwitches { config: config.clone(), cache: FxHashMap::default() }
    }

    fn get(&mut self, level: u32) -> [bool; 2] {
        if !self.config.stats_enabled {
            return [false, false];
        }
        *self.cache.entry(level).or_insert_with(|| {
            let p = self.config.policy.level(level);
            [p.stats_user_uplink, p.stats_user_downlink]
        })
    }
}

/// The shards' user totals of the slots in `range`, summed: `[up, down]`, from `range.start`.
fn range_totals(snaps: &[StatsSnapshot], range: std::ops::Range<u32>) -> Vec<[u64; 2]> {
    let mut totals = vec![[0u64; 2]; range.len()];
    for s in snaps {
        // Where this snapshot's slots and `range` overlap.
        let first = s.first_slot as usize;
        let lo = first.max(range.start as usize);
        let hi = (first + s.users.len()).min(range.end as usize);
        for slot in lo..hi {
            let (t, u) = (&mut totals[slot - range.start as usize], s.users[slot - first]);
            t[0] += u[0];
            t[1] += u[1];
        }
    }
    totals
}

/// Every user slot's totals (`span` entries), as [`range_totals`] from slot 0.
fn user_totals(snaps: &[StatsSnapshot], slots: &Slots<'_>) -> Vec<[u64; 2]> {
    range_totals(snaps, 0..u32::try_from(slots.span()).unwrap_or(u32::MAX))
}

/// Every inbound and outbound counter the config enables, with the shards' totals.
fn link_totals(config: &Config, snaps: &[StatsSnapshot]) -> Vec<(String, u64)> {
    if !config.stats_enabled {
        return Vec::new();
    }
    let mut per_inbound: FxHashMap<&str, (u64, u64)> = FxHashMap::default();
    let mut per_outbound: FxHashMap<&str, (u64, u64)> = FxHashMap::default();
    let add = |map: &mut FxHashMap<_, (u64, u64)>, key, up, down| {
        let e = map.entry(key).or_insert((0, 0));
        e.0 += up;
        e.1 += down;
    };
    for s in snaps {
        for l in &s.inbounds {
            add(&mut per_inbound, &*l.tag, l.up, l.down);
        }
        for l in &s.outbounds {
            add(&mut per_outbound, &*l.tag, l.up, l.down);
        }
    }
    let mut out = Vec::new();
    let system = &config.policy.system;
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
    // Not upstream's: what the destination safety rules refused, by reason.
    for why in Refusal::ALL {
        out.push((format!("refused>>>{}", why.name()), snaps.iter().map(|s| s.refusals[why as usize]).sum()));
    }
    out
}

/// Whether a user at `level` has an online map (`user>>>EMAIL>>>online`).
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

/// Every online user's addresses, merged over the shards: slot → address → last seen. Users
/// whose only addresses upstream ignores are not there.
fn online_by_slot(snaps: &[StatsSnapshot]) -> FxHashMap<u32, BTreeMap<String, i64>> {
    let mut live: FxHashMap<u32, BTreeMap<String, i64>> = FxHashMap::default();
    for (slot, ips) in snaps.iter().flat_map(|s| &s.online) {
        merge_ips(live.entry(*slot).or_default(), ips);
    }
    live.retain(|_, m| !m.is_empty());
    live
}

/// The online map called `name`: client address → last seen (unix seconds); `None` if there
/// is no such map (unknown user, or a level without `statsUserOnline`) or the user has no live
/// session from an address upstream records. Upstream answers NOT_FOUND before a user's first
/// session, and panels read any OK as "online": an empty map is answered the same way.
/// `snaps` hold at least the user's slot.
fn online_map(
    config: &Config,
    registry: &Registry,
    snaps: &[StatsSnapshot],
    name: &str,
) -> Option<BTreeMap<String, i64>> {
    let email = online_email(name)?;
    let user = registry.stat_user(email).filter(|v| &**v.email == email && tracks_online(config, v.level))?;
    let mut map = BTreeMap::new();
    for (_, ips) in snaps.iter().flat_map(|s| &s.online).filter(|(slot, _)| *slot == user.slot) {
        merge_ips(&mut map, ips);
    }
    (!map.is_empty()).then_some(map)
}

/// What a counter is, so that a reset knows where to write.
#[derive(Debug, Clone, Copy)]
enum Counter {
    /// A user's, by slot and direction (0 up, 1 down).
    User { slot: u32, dir: usize },
    /// An inbound's or outbound's, kept by name.
    Link,
}

/// Calls `f(name, reported value, shard total, counter)` for every counter the config
/// enables, or with `only_slot` for that user's and every inbound's and outbound's. Names are
/// built in one reused buffer; `f` copies the ones it keeps.
fn visit_counters(
    config: &Arc<Config>,
    slots: &Slots<'_>,
    book: &CounterBook,
    snaps: &[StatsSnapshot],
    only_slot: Option<u32>,
    mut f: impl FnMut(&str, u64, u64, Counter),
) {
    if !config.stats_enabled {
        return;
    }
    let mut levels = LevelSwitches::new(config);
    let mut name = String::with_capacity(128);
    let mut visit_user = |v: crate::slots::SlotView<'_>, total: [u64; 2]| {
        let on = levels.get(v.level);
        let offset = slots.offset(v.slot);
        for d in (0..2).filter(|&d| on[d]) {
            write_name(&mut name, "user", v.email, DIRS[d]);
            f(&name, user_value(total[d], offset[d]), total[d], Counter::User { slot: v.slot, dir: d });
        }
    };
    match only_slot {
        None => {
            let totals = user_totals(snaps, slots);
            for v in slots.live() {
                visit_user(v, totals[v.slot as usize]);
            }
        }
        Some(slot) => {
            if let Some(v) = slots.get(slot) {
                let total = snaps.iter().map(|s| s.user(slot)).fold([0, 0], |a, b| [a[0] + b[0], a[1] + b[1]]);
                visit_user(v, total);
            }
        }
    }
    for (name, total) in link_totals(config, snaps) {
        f(&name, book.value(&name, total), total, Counter::Link);
    }
}

/// Zeroes what the API reports for the counters in `resets` (counter, shard total, value
/// reported, name), and tells delta readers what was zeroed.
fn apply_resets<'a>(
    slots: &mut SlotBook,
    book: &mut CounterBook,
    resets: impl IntoIterator<Item = (Counter, u64, u64, &'a str)>,
) {
    for (counter, total, value, name) in resets {
        book.deltas.zeroed(name, value);
        match counter {
            Counter::User { slot, dir } => {
                // The user's use toward its quota starts over with its counter.
                slots.reset_quota_use(slot, dir);
                let mut offset = slots.offset(slot);
                offset[dir] = -i64::try_from(total).unwrap_or(i64::MAX);
                slots.set_offset(slot, offset);
            }
            Counter::Link => book.reset(name, total),
        }
    }
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

    /// Whether every name matches (an empty substring among the patterns), so that none
    /// needs to be built to be tested.
    fn matches_all(&self) -> bool {
        matches!(self, NameFilter::Substrings(p) if p.iter().any(|p| p.is_empty()))
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            NameFilter::Substrings(p) => p.iter().any(|p| name.contains(p.as_str())),
            NameFilter::Regexes(r) => r.iter().any(|r| r.is_match(name)),
        }
    }
}

/// Slots one step of a QueryStats covers: the registry is locked for one step at a time (16
/// bytes a slot from each shard), so a change waits for one step, not for the whole read.
const QUERY_SLOTS: u32 = 1 << 15;

/// The reading half of a QueryStats: the counters it asks for, read a range of slots at a
/// time into a packed answer, with the resets it makes. Public for the benchmarks.
pub struct QueryRead {
    filter: NameFilter,
    all: bool,
    reset: bool,
    levels: LevelSwitches,
    stats_enabled: bool,
    name: String,
    /// (counter, shard total, value reported, name) of what a reset zeroes, for one range.
    resets: Vec<(Counter, u64, u64, String)>,
    answer: QueryAnswer,
}

impl QueryRead {
    /// A read for `req` under `config`.
    pub fn new(config: &Arc<Config>, req: &pb::QueryStatsRequest) -> Result<QueryRead, Status> {
        let filter = NameFilter::new(req)?;
        Ok(QueryRead {
            all: filter.matches_all(),
            filter,
            reset: req.reset,
            levels: LevelSwitches::new(config),
            stats_enabled: config.stats_enabled,
            name: String::with_capacity(128),
            resets: Vec::new(),
            answer: QueryAnswer::default(),
        })
    }

    /// Adds the users' counters of the live slots in `range`, from `snaps` (the shards' figures
    /// of at least that range).
    pub fn users(&mut self, slots: &Slots<'_>, snaps: &[StatsSnapshot], range: std::ops::Range<u32>) {
        if !self.stats_enabled {
            return;
        }
        let start = range.start;
        let totals = range_totals(snaps, range.clone());
        for v in slots.live_in(range) {
            let on = self.levels.get(v.level);
            let total = totals[(v.slot - start) as usize];
            let offset = slots.offset(v.slot);
            let (mut mask, mut values) = (0u8, [0u64; 2]);
            for d in (0..2).filter(|&d| on[d]) {
                // With every name matching, a name is built only for a reset to record.
                if !self.all || self.reset {
                    write_name(&mut self.name, "user", v.email, DIRS[d]);
                }
                if !self.all && !self.filter.matches(&self.name) {
                    continue;
                }
                values[d] = user_value(total[d], offset[d]);
                mask |= 1 << d;
                if self.reset {
                    let name = self.name.clone();
                    self.resets.push((Counter::User { slot: v.slot, dir: d }, total[d], values[d], name));
                }
            }
            self.answer.push_user(v.email, mask, values);
        }
    }

    /// Adds the inbounds', outbounds' and other named counters, from `snaps`.
    fn links(&mut self, config: &Config, book: &CounterBook, snaps: &[StatsSnapshot]) {
        for (name, total) in link_totals(config, snaps).into_iter().filter(|(name, _)| self.filter.matches(name)) {
            let value = book.value(&name, total);
            if self.reset {
                self.resets.push((Counter::Link, total, value, name.clone()));
            }
            self.answer.push_named(name, value);
        }
    }

    /// Applies the resets of what was read since the last call.
    fn apply_resets(&mut self, slots: &mut SlotBook, book: &mut CounterBook) {
        let named = self.resets.iter().map(|(c, total, value, name)| (*c, *total, *value, name.as_str()));
        apply_resets(slots, book, named);
        self.resets.clear();
    }

    /// The packed answer.
    pub fn into_answer(self) -> QueryAnswer {
        self.answer
    }
}

/// Reads what a QueryStats reports into a packed answer, and applies its reset. The counters
/// are read a range of slots at a time, each range with the registry locked (the shards'
/// figures and the slots' emails read together, and the range's resets applied before the lock
/// is released, so a slot that changes hands between ranges is named and reset correctly);
/// the answer is encoded and sent after the last.
pub(crate) async fn prepare_query(
    state: &ApiState,
    req: Request<pb::QueryStatsRequest>,
) -> Result<QueryAnswer, Status> {
    let peer = req.remote_addr();
    // Zeroing what other readers see is an operator's call.
    if req.get_ref().reset {
        super::auth::caller(&req).require(shardray_core::spec::ApiRole::Operator, "reset counters")?;
    }
    let req = req.into_inner();
    let config = state.config();
    let mut read = QueryRead::new(&config, &req)?;
    let mut start = 0u32;
    let mut registry = loop {
        let mut registry = state.registry.lock().await;
        // The span may grow between ranges: users added meanwhile are read too.
        let span = u32::try_from(registry.slots().span()).unwrap_or(u32::MAX);
        let end = start.saturating_add(QUERY_SLOTS).min(span);
        let snaps = state.shards.snapshot_range(start..end).await.map_err(|e| Status::unavailable(e.to_string()))?;
        read.users(&registry.slots(), &snaps, start..end);
        let last = end >= span;
        {
            let mut book = state.counters.lock().unwrap_or_else(|e| e.into_inner());
            if last {
                // Every snapshot carries the inbounds' and outbounds' counters: the last one's.
                read.links(&config, &book, &snaps);
            }
            read.apply_resets(registry.slots_mut(), &mut book);
        }
        if last {
            break registry;
        }
        start = end;
    };
    let answer = read.into_answer();
    if req.reset {
        let what = format!("reset pattern={:?} patterns={:?} matched={}", req.pattern, req.patterns, answer.counters());
        state.audit.record(peer, "QueryStats", &what, &Ok(()));
        crate::quota::reconcile(state, &mut registry, None).await.map_err(super::handler::change_status)?;
    }
    Ok(answer)
}

impl StatsApi {
    /// Every shard's counters (all slots, or one).
    async fn snapshots(&self, only_slot: Option<u32>) -> Result<Vec<StatsSnapshot>, Status> {
        self.state.shards.snapshots(only_slot).await.map_err(|e| Status::unavailable(e.to_string()))
    }
}

/// The slot that the counter or online map `name` belongs to: `NO_SLOT` if none (an inbound's
/// or outbound's counter, or an unknown user). Panels that poll GetStats per user rely on this
/// costing the same at 10 users as at 1,000,000.
fn slot_for(registry: &Registry, name: &str) -> u32 {
    let email = name.strip_prefix("user>>>").and_then(|rest| rest.split(">>>").next());
    email.and_then(|e| registry.stat_user(e)).map_or(NO_SLOT, |v| v.slot)
}

#[tonic::async_trait]
impl pb::stats_service_server::StatsService for StatsApi {
    async fn get_stats(&self, req: Request<pb::GetStatsRequest>) -> Result<Response<pb::GetStatsResponse>, Status> {
        let peer = req.remote_addr();
        // Zeroing what other readers see is an operator's call.
        if req.get_ref().reset {
            super::auth::caller(&req).require(shardray_core::spec::ApiRole::Operator, "reset counters")?;
        }
        let req = req.into_inner();
        // The registry stays locked until the answer is made, so no slot changes hands meanwhile.
        let mut registry = self.state.registry.lock().await;
        let slot = slot_for(&registry, &req.name);
        let snaps = self.snapshots(Some(slot)).await?;
        let value = {
            let mut book = self.state.counters.lock().unwrap_or_else(|e| e.into_inner());
            let mut found = None;
            visit_counters(
                &self.state.config(),
                &registry.slots(),
                &book,
                &snaps,
                Some(slot),
                |name, value, total, c| {
                    if found.is_none() && name == req.name {
                        found = Some((value, total, c));
                    }
                },
            );
            let found = found.ok_or_else(|| Status::not_found(format!("{} not found.", req.name)));
            if req.reset {
                // A reset changes what every later reader sees: audited like any change.
                let outcome = found.as_ref().map(|_| ()).map_err(Clone::clone);
                self.state.audit.record(peer, "GetStats", &format!("reset name={}", req.name), &outcome);
            }
            let (value, total, counter) = found?;
            if req.reset {
                apply_resets(registry.slots_mut(), &mut book, [(counter, total, value, req.name.as_str())]);
            }
            value
        };
        if req.reset {
            // A user suspended for its quota resumes with its counters reset.
            crate::quota::reconcile(&self.state, &mut registry, None).await.map_err(super::handler::change_status)?;
        }
        let stat = pb::Stat { name: req.name, value: i64::try_from(value).unwrap_or(i64::MAX) };
        Ok(Response::new(pb::GetStatsResponse { stat: Some(stat) }))
    }

    async fn get_stats_online(
        &self,
        req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let req = req.into_inner();
        let registry = self.state.registry.lock().await;
        let snaps = self.snapshots(Some(slot_for(&registry, &req.name))).await?;
        // As upstream, the value is the number of distinct client addresses, not of sessions.
        let Some(map) = online_map(&self.state.config(), &registry, &snaps, &req.name) else {
            return Err(Status::not_found(format!("{} not found.", req.name)));
        };
        let stat = pb::Stat { name: req.name, value: map.len() as i64 };
        Ok(Response::new(pb::GetStatsResponse { stat: Some(stat) }))
    }

    /// Answered by `super::query::StreamedQuery` in front of this service, which streams the
    /// reply; this serves it whole, for a server built without that layer.
    async fn query_stats(
        &self,
        req: Request<pb::QueryStatsRequest>,
    ) -> Result<Response<pb::QueryStatsResponse>, Status> {
        Ok(Response::new(prepare_query(&self.state, req).await?.into_message()))
    }

    async fn get_sys_stats(&self, _: Request<pb::SysStatsRequest>) -> Result<Response<pb::SysStatsResponse>, Status> {
        let snaps = self.snapshots(Some(NO_SLOT)).await?;
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
        let registry = self.state.registry.lock().await;
        let snaps = self.snapshots(Some(slot_for(&registry, &req.name))).await?;
        let Some(map) = online_map(&self.state.config(), &registry, &snaps, &req.name) else {
            return Err(Status::not_found(format!("{} not found.", req.name)));
        };
        Ok(Response::new(pb::GetStatsOnlineIpListResponse { name: req.name, ips: map.into_iter().collect() }))
    }

    async fn get_all_online_users(
        &self,
        _: Request<pb::GetAllOnlineUsersRequest>,
    ) -> Result<Response<pb::GetAllOnlineUsersResponse>, Status> {
        let registry = self.state.registry.lock().await;
        let snaps = self.snapshots(None).await?;
        let config = &self.state.config();
        let slots = registry.slots();
        let mut users: Vec<String> = online_by_slot(&snaps)
            .into_keys()
            .filter_map(|slot| slots.get(slot))
            .filter(|v| tracks_online(config, v.level))
            .map(|v| format!("user>>>{}>>>online", v.email))
            .collect();
        users.sort_unstable();
        Ok(Response::new(pb::GetAllOnlineUsersResponse { users }))
    }

    /// Every online user (as GetAllOnlineUsers counts them) with its addresses, and with
    /// `include_traffic` its traffic counters, which `reset` then zeroes, as upstream does.
    async fn get_users_stats(
        &self,
        req: Request<pb::GetUsersStatsRequest>,
    ) -> Result<Response<pb::GetUsersStatsResponse>, Status> {
        let peer = req.remote_addr();
        // Zeroing what other readers see is an operator's call.
        if req.get_ref().reset {
            super::auth::caller(&req).require(shardray_core::spec::ApiRole::Operator, "reset counters")?;
        }
        let req = req.into_inner();
        let mut registry = self.state.registry.lock().await;
        let snaps = self.snapshots(None).await?;
        let config = &self.state.config();
        let mut levels = LevelSwitches::new(config);
        let mut users = Vec::new();
        let mut resets = Vec::new();
        let slots = registry.slots();
        for (slot, ips) in online_by_slot(&snaps) {
            let Some(v) = slots.get(slot).filter(|v| tracks_online(config, v.level)) else {
                continue;
            };
            let traffic = req.include_traffic.then(|| {
                let total = snaps.iter().map(|s| s.user(slot)).fold([0, 0], |a, b| [a[0] + b[0], a[1] + b[1]]);
                let (on, offset) = (levels.get(v.level), slots.offset(slot));
                // A counter the level does not keep does not exist upstream: it reads 0.
                let value = |d: usize| if on[d] { user_value(total[d], offset[d]) } else { 0 };
                if req.reset {
                    resets.extend((0..2).filter(|&d| on[d]).map(|d| {
                        let mut name = String::new();
                        write_name(&mut name, "user", v.email, DIRS[d]);
                        (Counter::User { slot, dir: d }, total[d], value(d), name)
                    }));
                }
                pb::TrafficUserStat {
                    uplink: i64::try_from(value(0)).unwrap_or(i64::MAX),
                    downlink: i64::try_from(value(1)).unwrap_or(i64::MAX),
                }
            });
            let ips = ips.into_iter().map(|(ip, last_seen)| pb::OnlineIpEntry { ip, last_seen }).collect();
            users.push(pb::UserStat { email: v.email.to_string(), ips, traffic });
        }
        users.sort_unstable_by(|a, b| a.email.cmp(&b.email));
        drop(slots);
        if req.reset && req.include_traffic {
            {
                let mut book = self.state.counters.lock().unwrap_or_else(|e| e.into_inner());
                let named = resets.iter().map(|(c, total, value, name)| (*c, *total, *value, name.as_str()));
                apply_resets(registry.slots_mut(), &mut book, named);
            }
            let what = format!("reset include_traffic=true users={}", users.len());
            self.state.audit.record(peer, "GetUsersStats", &what, &Ok(()));
            crate::quota::reconcile(&self.state, &mut registry, None).await.map_err(super::handler::change_status)?;
        }
        Ok(Response::new(pb::GetUsersStatsResponse { users }))
    }
}
