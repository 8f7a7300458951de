//! The audit trail: one line for every API call that changes something (users, resets,
//! log reopening), with who asked, what, and how it ended. Lines go to the error log whatever
//! its level, and to `audit.log` in the state directory when there is one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use shardray_core::log::LogSink;
use tonic::Status;

/// Where audit lines go.
pub struct Audit {
    log: LogSink,
    file: Option<Mutex<File>>,
}

impl Audit {
    /// An audit trail into the error log, and into `DIR/audit.log` if a state directory is given.
    pub fn open(log: LogSink, state: Option<&Path>) -> std::io::Result<Audit> {
        let file = match state {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                Some(Mutex::new(OpenOptions::new().create(true).append(true).open(dir.join("audit.log"))?))
            }
            None => None,
        };
        Ok(Audit { log, file })
    }

    /// Records one call: `call` is the method, `what` its arguments in short.
    pub fn record(&self, peer: Option<SocketAddr>, call: &str, what: &str, outcome: &Result<(), Status>) {
        let peer = peer.map_or_else(|| "local".to_owned(), |p| p.to_string());
        let result = match outcome {
            Ok(()) => "ok".to_owned(),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        self.log.audit(format_args!("api {call} from {peer} {what}: {result}"));
        if let Some(file) = &self.file {
            let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            let line = serde_json::json!({ "time": unix, "peer": peer, "call": call, "args": what, "result": result });
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            // The call already happened; a full disk must not turn it into an error.
            let _ = writeln!(file, "{line}");
        }
    }
}
