//! The glommio shards.
