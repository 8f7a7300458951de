//! The handle shards use to log: formatting happens on the shard, writing on a logger thread.
//!
//! Records go through a bounded channel with `try_send`, so a slow disk never blocks a shard;
//! what does not fit is dropped and counted (`LogSink::dropped`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};

use crate::spec::{LogLevel, LogSpec};

/// One line for a log.
#[derive(Debug)]
pub enum LogRecord {
    /// A line for the access log.
    Access(String),
    /// A line for the error log, with its severity.
    Error(LogLevel, String),
    /// A line for the audit trail: written to the error log whatever its level, unless the
    /// error log is "none".
    Audit(String),
    /// Reopen the log files (after rotation); the result goes back on the channel.
    Reopen(std::sync::mpsc::SyncSender<Result<(), String>>),
    /// Write to these targets from now on (a config reload); on failure the old ones stay.
    Reconfigure(LogSpec, std::sync::mpsc::SyncSender<Result<(), String>>),
    /// Copy every later line to this follower until it hangs up.
    Follow(async_channel::Sender<String>),
    /// Flush and stop the writer; records sent after this are dropped.
    Close,
}

/// A cheap, cloneable, `Send` logging handle. Its clones share the level and the access
/// switch, so a config reload changes them for every shard at once (a relaxed load each time a
/// record is considered; they are written only by a reload).
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: Option<Sender<LogRecord>>,
    level: Arc<AtomicU8>,
    access: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

/// A level as the shared switch holds it.
fn level_code(level: LogLevel) -> u8 {
    match level {
        LogLevel::Debug => 0,
        LogLevel::Info => 1,
        LogLevel::Warning => 2,
        LogLevel::Error => 3,
        LogLevel::None => 4,
    }
}

impl LogSink {
    /// A sink that writes error-log records at `level` or above, and access records if `access`.
    pub fn new(tx: Sender<LogRecord>, level: LogLevel, access: bool) -> LogSink {
        LogSink {
            tx: Some(tx),
            level: Arc::new(AtomicU8::new(level_code(level))),
            access: Arc::new(AtomicBool::new(access)),
            dropped: Arc::default(),
        }
    }

    /// A sink that discards everything (for tests and tools).
    pub fn discard() -> LogSink {
        LogSink {
            tx: None,
            level: Arc::new(AtomicU8::new(level_code(LogLevel::None))),
            access: Arc::default(),
            dropped: Arc::default(),
        }
    }

    /// Whether an error-log record at `level` would be written.
    #[inline]
    pub fn enabled(&self, level: LogLevel) -> bool {
        let least = self.level.load(Ordering::Relaxed);
        self.tx.is_some()
            && level != LogLevel::None
            && level_code(level) >= least
            && least != level_code(LogLevel::None)
    }

    /// Whether access records are wanted.
    #[inline]
    pub fn access_enabled(&self) -> bool {
        self.tx.is_some() && self.access.load(Ordering::Relaxed)
    }

    /// Moves the logs to `spec`'s targets and level (a config reload), for every clone of this
    /// sink; waits (up to five seconds) for the writer. On failure nothing changes.
    pub fn reconfigure(&self, spec: &LogSpec) -> Result<(), String> {
        let tx = self.tx.as_ref().ok_or("logging is off")?;
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        tx.send(LogRecord::Reconfigure(spec.clone(), done_tx)).map_err(|_| "the logger has stopped".to_owned())?;
        done_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .map_err(|_| "the logger did not answer".to_owned())??;
        self.level.store(level_code(spec.level), Ordering::Relaxed);
        self.access.store(!matches!(spec.access, crate::spec::LogTarget::Discard), Ordering::Relaxed);
        Ok(())
    }

    /// Writes an error-log record if its level is enabled.
    pub fn error(&self, level: LogLevel, args: fmt::Arguments<'_>) {
        if self.enabled(level) {
            self.send(LogRecord::Error(level, args.to_string()));
        }
    }

    /// Writes an access-log record if the access log is on.
    pub fn access(&self, args: fmt::Arguments<'_>) {
        if self.access_enabled() {
            self.send(LogRecord::Access(args.to_string()));
        }
    }

    /// Writes a line to the audit trail.
    pub fn audit(&self, args: fmt::Arguments<'_>) {
        if let Some(tx) = &self.tx {
            // Audit lines are never dropped for lack of room: the caller is the control thread.
            let _ = tx.send(LogRecord::Audit(args.to_string()));
        }
    }

    /// Reopens the log files, waiting (up to five seconds) for the writer's answer.
    pub fn reopen(&self) -> Result<(), String> {
        let tx = self.tx.as_ref().ok_or("logging is off")?;
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        tx.send(LogRecord::Reopen(done_tx)).map_err(|_| "the logger has stopped".to_owned())?;
        done_rx.recv_timeout(std::time::Duration::from_secs(5)).map_err(|_| "the logger did not answer".to_owned())?
    }

    /// Lines written from now on, as they are written; ends when the logger stops.
    pub fn follow(&self) -> Option<async_channel::Receiver<String>> {
        let (line_tx, line_rx) = async_channel::bounded(1024);
        self.tx.as_ref()?.send(LogRecord::Follow(line_tx)).ok()?;
        Some(line_rx)
    }

    /// Asks the writer to flush and stop, waiting for room in the queue if need be.
    pub fn close(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(LogRecord::Close);
        }
    }

    /// Records that did not fit in the channel so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, record: LogRecord) {
        if let Some(tx) = &self.tx {
            match tx.try_send(record) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
