//! Pure data shared by the control thread and the shards: the validated config (`spec`), user
//! tables, the compiled router, policy levels and per-shard counters. No runtime, no IO.
#![deny(rust_2018_idioms)]

pub mod spec;
