//! What the harness's integration tests share: the harness binary, the shardray binary
//! beside it, and a fresh directory per test.

use std::path::{Path, PathBuf};

/// The harness binary cargo built for these tests.
pub const BENCH: &str = env!("CARGO_BIN_EXE_shardray-bench");

/// shardray beside the harness, or `SHARDRAY_BIN`.
pub fn shardray_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHARDRAY_BIN") {
        return p.into();
    }
    let bin = Path::new(BENCH).parent().unwrap().join("shardray");
    assert!(bin.is_file(), "no shardray binary beside the harness (build it, or set SHARDRAY_BIN)");
    bin
}

/// An empty directory of the test's own, named after its suite and `name`.
pub fn fresh_dir(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardray-bench-{suite}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
