//! Pure data shared by the control thread and the shards: the validated config (`spec`), the
//! compiled router, per-shard counters and the logging handle. No runtime, no sockets.
#![deny(rust_2018_idioms)]

pub mod change;
pub mod events;
pub mod limits;
pub mod log;
pub mod quota;
pub mod router;
pub mod routes;
pub mod slots;
pub mod spec;
pub mod stats;
