//! The event hub: every user event (the shards' and the control thread's own) is logged to the
//! error log and handed to the API's subscribers (`EventsService/Subscribe`,
//! `shardray api events`).

use std::sync::Arc;

use shardray_core::events::{UserEvent, UserEventKind};
use shardray_core::log::LogSink;
use shardray_core::spec::LogLevel;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it skips some.
const SUBSCRIBER_BACKLOG: usize = 1024;

/// Where events meet their subscribers.
pub struct EventHub {
    tx: broadcast::Sender<UserEvent>,
    log: LogSink,
}

impl EventHub {
    /// A hub that logs to `log`.
    pub fn new(log: LogSink) -> Arc<EventHub> {
        let (tx, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
        Arc::new(EventHub { tx, log })
    }

    /// Logs `event` (a limit's event was logged by the shard, with the client's address and
    /// the reason) and hands it to every subscriber.
    pub fn publish(&self, event: UserEvent) {
        if matches!(event.kind, UserEventKind::Suspended(_) | UserEventKind::Resumed) {
            let why = event.kind.reason().map_or(String::new(), |r| format!(" ({})", r.name()));
            self.log.error(
                LogLevel::Warning,
                format_args!("[{}] user {}: {}{why}", event.inbound, event.email, event.kind.name()),
            );
        }
        // No subscriber is fine.
        let _ = self.tx.send(event);
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<UserEvent> {
        self.tx.subscribe()
    }

    /// Publishes what the shards emit, for as long as they run.
    pub async fn forward(self: Arc<Self>, from: async_channel::Receiver<UserEvent>) {
        while let Ok(event) = from.recv().await {
            self.publish(event);
        }
    }
}

/// An event as `shardray api events` prints it: one JSON object.
pub fn event_json(
    kind: &str,
    reason: &str,
    email: &str,
    inbound: &str,
    time_unix_ms: u64,
    skipped: u64,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "event": kind,
        "user": email,
        "inbound": inbound,
        "time": crate::quota::rfc3339_ms(time_unix_ms),
    });
    if !reason.is_empty() {
        v["reason"] = reason.into();
    }
    if skipped != 0 {
        v["skipped"] = skipped.into();
    }
    v
}
