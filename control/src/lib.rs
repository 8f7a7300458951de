//! The control side of shardray: config loading and validation, the logger thread, starting
//! and stopping the shards, and (next) the management API.
#![deny(rust_2018_idioms)]

pub mod api;
pub mod audit;
pub mod cli_api;
pub mod config;
pub mod convert;
pub mod dns;
pub mod events;
pub mod journal;
pub mod logger;
pub mod metrics;
pub mod quota;
pub mod registry;
pub mod reload;
pub mod run;
pub mod server;
pub mod share;
pub mod slots;
pub mod socket_file;
