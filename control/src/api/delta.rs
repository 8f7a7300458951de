//! Delta counters (`shardray.app.stats.command.DeltaStatsService`): each reader names itself
//! and reads the counters' growth since the cursor it last acknowledged.
//!
//! A counter's lifetime value is what StatsService reports plus what resets have zeroed since
//! the first reader appeared; it only grows. A reader's cursor is the lifetime values it has
//! acknowledged; a call returns the growth past them under a new cursor, and keeps returning
//! that same cursor and growth until the reader acknowledges it. With `--state`, every cursor
//! is on disk before it is returned, and the counters are saved with it, so that after a
//! restart (even `kill -9`) no lifetime value is below what a reader has been given.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shardray_proto::shardray::app::stats::command as pb;
use tonic::{Request, Response, Status};

use super::ApiState;

/// The service, ready to add to a router.
pub fn service(state: Arc<ApiState>) -> pb::delta_stats_service_server::DeltaStatsServiceServer<DeltaApi> {
    pb::delta_stats_service_server::DeltaStatsServiceServer::new(DeltaApi { state })
}

/// Every reader's cursor, and what lifetime values need beyond the reported ones.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DeltaBook {
    /// Where the book is kept (`DIR/readers.json` with `--state`).
    #[serde(skip)]
    path: Option<PathBuf>,
    /// The next cursor to hand out; cursors are never reused, across restarts too.
    next_cursor: u64,
    /// Per counter, what resets have zeroed since the first reader appeared.
    zeroed: HashMap<String, u64>,
    /// Removed users' counters, with their last lifetime values and the first cursor that can
    /// carry them, until every reader has acknowledged one that did.
    departed: HashMap<String, Departed>,
    readers: BTreeMap<String, Reader>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Departed {
    value: u64,
    from_cursor: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Reader {
    /// The last cursor acknowledged (0: none), and the lifetime values it stands for.
    acked_cursor: u64,
    acked: HashMap<String, u64>,
    /// The cursor handed out and not yet acknowledged, with its lifetime values.
    pending: Option<Pending>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    cursor: u64,
    values: HashMap<String, u64>,
}

impl DeltaBook {
    /// The book kept in `dir` (empty if the file is missing), or an in-memory one.
    pub fn load(dir: Option<&Path>) -> std::io::Result<DeltaBook> {
        let Some(dir) = dir else { return Ok(DeltaBook { next_cursor: 1, ..DeltaBook::default() }) };
        let path = dir.join("readers.json");
        let mut book = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<DeltaBook>(&bytes).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DeltaBook::default(),
            Err(e) => return Err(e),
        };
        book.next_cursor = book.next_cursor.max(1);
        book.path = Some(path);
        Ok(book)
    }

    /// Whether resets and removals need recording: only once a reader exists.
    pub fn has_readers(&self) -> bool {
        !self.readers.is_empty()
    }

    /// Records that a reset zeroed `value` of counter `name`.
    pub fn zeroed(&mut self, name: &str, value: u64) {
        if self.has_readers() && value > 0 {
            *self.zeroed.entry(name.to_owned()).or_default() += value;
        }
    }

    /// What resets have zeroed of counter `name`.
    pub fn zeroed_of(&self, name: &str) -> u64 {
        self.zeroed.get(name).copied().unwrap_or(0)
    }

    /// Keeps a removed user's last reported value of counter `name` for the readers.
    pub fn depart(&mut self, name: String, reported: u64) {
        if !self.has_readers() {
            return;
        }
        let value = reported + self.zeroed.remove(&name).unwrap_or(0);
        self.departed.insert(name, Departed { value, from_cursor: self.next_cursor });
    }

    /// Saves the book (temporary file, sync, rename), if it is kept on disk.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let tmp = path.with_extension("json.tmp");
        let file = std::fs::File::create(&tmp)?;
        let mut out = std::io::BufWriter::new(file);
        serde_json::to_writer(&mut out, self)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// The first half of a call of `reader`: acknowledges `ack` (its pending cursor, or the one
    /// acknowledged already). Returns whether the reader needs a new cursor (`issue`), and
    /// whether anything changed that must be saved before answering.
    pub fn acknowledge(&mut self, reader: &str, ack: u64) -> Result<(bool, bool), Status> {
        self.next_cursor = self.next_cursor.max(1);
        let mut changed = !self.readers.contains_key(reader);
        let r = self.readers.entry(reader.to_owned()).or_default();
        if ack != 0 && ack != r.acked_cursor {
            match r.pending.take() {
                Some(p) if p.cursor == ack => {
                    r.acked_cursor = p.cursor;
                    r.acked = p.values;
                    changed = true;
                }
                other => {
                    let expected = other.as_ref().map_or(r.acked_cursor, |p| p.cursor);
                    r.pending = other;
                    return Err(Status::failed_precondition(format!(
                        "cursor {ack} is not reader {reader:?}'s to acknowledge (expected {expected})"
                    )));
                }
            }
        }
        let needs_cursor = r.pending.is_none();
        self.prune_departed();
        Ok((needs_cursor, changed || needs_cursor))
    }

    /// Hands `reader` a new cursor over `values`, every counter's lifetime value now (departed
    /// users' are added here).
    pub fn issue(&mut self, reader: &str, mut values: HashMap<String, u64>) {
        for (name, d) in &self.departed {
            values.insert(name.clone(), d.value);
        }
        let cursor = self.next_cursor;
        self.next_cursor += 1;
        if let Some(r) = self.readers.get_mut(reader) {
            r.pending = Some(Pending { cursor, values });
        }
    }

    /// The answer to `reader`: its pending cursor and the growth it carries; `repeated` when
    /// the cursor was handed out before this call.
    pub fn response(&self, reader: &str, repeated: bool) -> pb::GetDeltasResponse {
        let Some(r) = self.readers.get(reader) else { return pb::GetDeltasResponse::default() };
        let Some(pending) = &r.pending else { return pb::GetDeltasResponse::default() };
        let mut deltas: Vec<pb::Delta> = pending
            .values
            .iter()
            .filter_map(|(name, &v)| {
                let grown = v.saturating_sub(r.acked.get(name).copied().unwrap_or(0));
                (grown > 0).then(|| pb::Delta { name: name.clone(), value: grown })
            })
            .collect();
        deltas.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        pb::GetDeltasResponse { cursor: pending.cursor, deltas, acknowledged: r.acked_cursor, repeated }
    }

    /// Forgets departed counters every reader has acknowledged a cursor carrying.
    fn prune_departed(&mut self) {
        let oldest = self.readers.values().map(|r| r.acked_cursor).min().unwrap_or(u64::MAX);
        self.departed.retain(|_, d| d.from_cursor > oldest);
    }

    fn remove_reader(&mut self, reader: &str) -> bool {
        let removed = self.readers.remove(reader).is_some();
        if self.readers.is_empty() {
            self.zeroed.clear();
            self.departed.clear();
        } else {
            self.prune_departed();
        }
        removed
    }
}

/// A reader's name: short, and safe in logs and file names.
fn check_reader(name: &str) -> Result<(), Status> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!("reader: {name:?} is not 1 to 64 of A-Z a-z 0-9 . _ -")))
    }
}

pub struct DeltaApi {
    state: Arc<ApiState>,
}

#[tonic::async_trait]
impl pb::delta_stats_service_server::DeltaStatsService for DeltaApi {
    async fn get_deltas(&self, req: Request<pb::GetDeltasRequest>) -> Result<Response<pb::GetDeltasResponse>, Status> {
        let req = req.into_inner();
        check_reader(&req.reader)?;
        // The registry stays locked from the snapshot to the save: no slot changes hands, and
        // the counters saved are the ones the cursor was taken from.
        let registry = self.state.registry.lock().await;
        let snaps = self.state.shards.snapshots(None).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let mut counters = self.state.counters.lock().unwrap_or_else(|e| e.into_inner());
        let (needs_cursor, changed) = counters.deltas.acknowledge(&req.reader, req.ack)?;
        if needs_cursor {
            let values = super::stats::lifetime_values(&self.state.config(), &registry, &counters, &snaps);
            counters.deltas.issue(&req.reader, values);
        }
        if changed {
            // Counters first: once the cursor is on disk, no restart may count below it.
            counters
                .save_with(&self.state.config(), &registry, &snaps)
                .and_then(|()| counters.deltas.save())
                .map_err(|e| Status::internal(format!("saving the reader's cursor: {e}")))?;
        }
        Ok(Response::new(counters.deltas.response(&req.reader, !needs_cursor)))
    }

    async fn remove_reader(
        &self,
        req: Request<pb::RemoveReaderRequest>,
    ) -> Result<Response<pb::RemoveReaderResponse>, Status> {
        let req = req.into_inner();
        check_reader(&req.reader)?;
        let mut counters = self.state.counters.lock().unwrap_or_else(|e| e.into_inner());
        if !counters.deltas.remove_reader(&req.reader) {
            return Err(Status::not_found(format!("reader {:?} not found", req.reader)));
        }
        counters.deltas.save().map_err(|e| Status::internal(format!("saving readers: {e}")))?;
        Ok(Response::new(pb::RemoveReaderResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    /// One call as the service makes it, with `now` as the counters' lifetime values.
    impl DeltaBook {
        fn call(
            &mut self,
            reader: &str,
            ack: u64,
            now: impl FnOnce() -> HashMap<String, u64>,
        ) -> Result<(pb::GetDeltasResponse, bool), Status> {
            let (needs_cursor, changed) = self.acknowledge(reader, ack)?;
            if needs_cursor {
                self.issue(reader, now());
            }
            Ok((self.response(reader, !needs_cursor), changed))
        }
    }

    fn deltas(r: &pb::GetDeltasResponse) -> Vec<(String, u64)> {
        r.deltas.iter().map(|d| (d.name.clone(), d.value)).collect()
    }

    #[test]
    fn a_cursor_repeats_until_acknowledged_and_readers_do_not_share_one() {
        let mut book = DeltaBook::load(None).unwrap();
        let (first, _) = book.call("panel", 0, || values(&[("a", 10), ("b", 0)])).unwrap();
        assert_eq!(deltas(&first), [("a".to_string(), 10)]);
        // Not acknowledged: the same cursor and deltas, whatever the counters did meanwhile.
        let (again, _) = book.call("panel", 0, || values(&[("a", 99)])).unwrap();
        assert_eq!((again.cursor, deltas(&again), again.repeated), (first.cursor, deltas(&first), true));
        // Acknowledged: the growth since.
        let (next, _) = book.call("panel", first.cursor, || values(&[("a", 15), ("b", 4)])).unwrap();
        assert_eq!(deltas(&next), [("a".to_string(), 5), ("b".to_string(), 4)]);
        assert_eq!(next.acknowledged, first.cursor);
        // Acknowledging the same cursor twice is harmless; an unknown one is refused.
        assert!(book.call("panel", first.cursor, || unreachable!()).is_ok());
        let err = book.call("panel", 12345, || unreachable!()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        // Another reader starts from the values as they are, its own cursor.
        let (other, _) = book.call("exporter", 0, || values(&[("a", 15), ("b", 4)])).unwrap();
        assert_eq!(deltas(&other), [("a".to_string(), 15), ("b".to_string(), 4)]);
        assert_ne!(other.cursor, next.cursor);
    }

    #[test]
    fn a_removed_users_last_growth_reaches_every_reader_once() {
        let mut book = DeltaBook::load(None).unwrap();
        let (a, _) = book.call("a", 0, || values(&[("u", 10)])).unwrap();
        let (b, _) = book.call("b", 0, || values(&[("u", 10)])).unwrap();
        book.depart("u".into(), 25);
        let (a2, _) = book.call("a", a.cursor, || values(&[])).unwrap();
        assert_eq!(deltas(&a2), [("u".to_string(), 15)]);
        let (a3, _) = book.call("a", a2.cursor, || values(&[])).unwrap();
        assert!(a3.deltas.is_empty());
        // Reader b has not acknowledged past the removal: still kept for it.
        assert!(book.departed.contains_key("u"));
        let (b2, _) = book.call("b", b.cursor, || values(&[])).unwrap();
        assert_eq!(deltas(&b2), [("u".to_string(), 15)]);
        let (b3, _) = book.call("b", b2.cursor, || values(&[])).unwrap();
        assert!(b3.deltas.is_empty());
        book.call("a", a3.cursor, || values(&[])).unwrap();
        assert!(book.departed.is_empty(), "{:?}", book.departed);
    }

    #[test]
    fn the_book_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = DeltaBook::load(Some(dir.path())).unwrap();
        let (first, _) = book.call("panel", 0, || values(&[("a", 7)])).unwrap();
        book.zeroed("a", 3);
        book.save().unwrap();
        let mut book = DeltaBook::load(Some(dir.path())).unwrap();
        assert_eq!(book.zeroed_of("a"), 3);
        let (again, _) = book.call("panel", 0, || unreachable!()).unwrap();
        assert_eq!((again.cursor, deltas(&again)), (first.cursor, vec![("a".to_string(), 7)]));
        let (next, _) = book.call("panel", first.cursor, || values(&[("a", 9)])).unwrap();
        assert!(next.cursor > first.cursor);
        assert_eq!(deltas(&next), [("a".to_string(), 2)]);
    }

    #[test]
    fn reader_names_are_checked() {
        for bad in ["", "a b", "x/y", &"n".repeat(65)] {
            assert_eq!(check_reader(bad).unwrap_err().code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        check_reader("grafana-exporter_1.0").unwrap();
    }
}
