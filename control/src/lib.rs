//! The control side of shardray: config loading and validation, the control thread, the API.
#![deny(rust_2018_idioms)]

pub mod config;
