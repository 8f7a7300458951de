//! The logger thread: takes records from every shard and the control thread and writes them
//! to the access and error logs, so no shard ever waits on a disk or a terminal.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver};
use shardray_core::log::{LogRecord, LogSink};
use shardray_core::spec::{LogLevel, LogSpec, LogTarget};

/// Records that may wait for the writer before shards start dropping them.
const QUEUE: usize = 64 * 1024;

/// Opens the log targets and starts the writer; returns the sink to hand out and the thread,
/// which ends on `LogSink::close` or once every sink is dropped.
pub fn start(spec: &LogSpec) -> io::Result<(LogSink, JoinHandle<()>)> {
    let writer = Writer::open(spec.clone())?;
    let (tx, rx) = bounded(QUEUE);
    let access_on = !matches!(spec.access, LogTarget::Discard);
    let sink = LogSink::new(tx, spec.level, access_on);
    let handle = std::thread::Builder::new().name("logger".into()).spawn(move || writer.run(rx))?;
    Ok((sink, handle))
}

type Target = Option<Box<dyn Write + Send>>;

/// The logger thread's state: the open targets and the followers.
struct Writer {
    spec: LogSpec,
    access: Target,
    error: Target,
    followers: Vec<async_channel::Sender<String>>,
}

impl Writer {
    fn open(spec: LogSpec) -> io::Result<Writer> {
        let access = open(&spec.access)?;
        let error = open(&spec.error)?;
        Ok(Writer { spec, access, error, followers: Vec::new() })
    }

    fn run(mut self, rx: Receiver<LogRecord>) {
        while let Ok(record) = rx.recv() {
            let stamp = timestamp(SystemTime::now());
            // A failed write (disk full, closed pipe) must not stop the server; the line is lost.
            match record {
                LogRecord::Access(line) => self.write_access(format!("{stamp} {line}")),
                LogRecord::Error(level, line) => self.write_error(format!("{stamp} [{}] {line}", level_name(level))),
                LogRecord::Audit(line) => self.write_error(format!("{stamp} [Audit] {line}")),
                LogRecord::Reopen(done) => {
                    let _ = done.send(self.reopen().map_err(|e| e.to_string()));
                }
                LogRecord::Reconfigure(spec, done) => {
                    let _ = done.send(self.reconfigure(spec).map_err(|e| e.to_string()));
                }
                LogRecord::Follow(follower) => self.followers.push(follower),
                LogRecord::Close => break,
            }
            if rx.is_empty() {
                flush(&mut self.access, &mut self.error);
            }
        }
        flush(&mut self.access, &mut self.error);
    }

    fn write_access(&mut self, line: String) {
        if let Some(w) = self.access.as_mut() {
            let _ = writeln!(w, "{line}");
        }
        self.tell_followers(line);
    }

    fn write_error(&mut self, line: String) {
        if let Some(w) = self.error.as_mut() {
            let _ = writeln!(w, "{line}");
        }
        self.tell_followers(line);
    }

    /// A follower that is gone or too slow to keep up is dropped, never waited for.
    fn tell_followers(&mut self, line: String) {
        if !self.followers.is_empty() {
            self.followers.retain(|f| f.try_send(line.clone()).is_ok());
        }
    }

    /// Writes to `spec`'s targets from now on; on failure the old targets stay.
    fn reconfigure(&mut self, spec: LogSpec) -> io::Result<()> {
        let access = open(&spec.access)?;
        let error = open(&spec.error)?;
        flush(&mut self.access, &mut self.error);
        self.access = access;
        self.error = error;
        self.spec = spec;
        Ok(())
    }

    /// Opens the files anew, for log rotation; on failure the old targets stay.
    fn reopen(&mut self) -> io::Result<()> {
        let access = open(&self.spec.access)?;
        let error = open(&self.spec.error)?;
        flush(&mut self.access, &mut self.error);
        self.access = access;
        self.error = error;
        Ok(())
    }
}

fn open(target: &LogTarget) -> io::Result<Target> {
    Ok(match target {
        LogTarget::Discard => None,
        LogTarget::Stdout => Some(Box::new(io::stdout())),
        LogTarget::File(path) => {
            let file: File = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot open log file {}: {e}", path.display())))?;
            Some(Box::new(io::LineWriter::new(file)))
        }
    })
}

fn flush(access: &mut Target, error: &mut Target) {
    for w in [access.as_mut(), error.as_mut()].into_iter().flatten() {
        let _ = w.flush();
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "Debug",
        LogLevel::Info => "Info",
        LogLevel::Warning => "Warning",
        LogLevel::Error => "Error",
        LogLevel::None => "None",
    }
}

/// `2006/01/02 15:04:05.000000` in UTC, the layout upstream's logs use.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}/{month:02}/{day:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_like_upstream() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(timestamp(t), "2023/11/14 22:13:20.123456");
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000/02/29 00:00:00.000000");
    }
}
