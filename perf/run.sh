#!/bin/sh
# Side-by-side bulk VLESS throughput: shardray against sing-box 1.14.4, V2Ray 4.45.2 and the bare
# splice relay (`shardray-bench splice-relay`, the floor for a userspace relay),
# measured in one run on this machine, appended as a dated section to perf/RESULTS.md.
#
#   perf/run.sh                      4 streams x 256 MiB, up and down, 3 runs, shardray --shards 2
#   TARGETS=shardray,sing-box,v2ray STREAMS=8 BYTES=128MiB RUNS=5 perf/run.sh
#
# Honours CARGO_TARGET_DIR. Loopback only.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

TARGETS=${TARGETS:-shardray,sing-box,v2ray,splice}
STREAMS=${STREAMS:-4}
BYTES=${BYTES:-256MiB}
DIRECTION=${DIRECTION:-both}
RUNS=${RUNS:-3}
SHARDS=${SHARDS:-2}
RESULTS=${RESULTS:-$root/perf/RESULTS.md}

eval "$(perf/peers.sh)"
cargo build --quiet --release -p shardray -p shardray-bench
bin=${CARGO_TARGET_DIR:-$root/target}/release

args="throughput --target $TARGETS --streams $STREAMS --bytes $BYTES --direction $DIRECTION --runs $RUNS --shards $SHARDS"
# shellcheck disable=SC2086 # $args is split on purpose
table=$("$bin/shardray-bench" $args \
    --shardray-bin "$bin/shardray" --sing-box-bin "$SING_BOX" --v2ray-bin "$V2RAY")

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then commit="$commit (uncommitted changes)"; fi

if [ ! -f "$RESULTS" ]; then
    cat >"$RESULTS" <<'HEAD'
# Performance results

Side-by-side runs recorded by `perf/run.sh`, newest last. Each section is one invocation: every
target measured in the same session on the same machine, runs interleaved across targets.
CPU s/GB is the proxy process's user + system CPU time (all threads) during the transfer per
10^9 payload bytes relayed; Gbit/s is what the client saw; the harness (client and sink) shares
the machine's cores with the proxy. Every payload byte is verified.
HEAD
fi
{
    printf '\n## %s, commit %s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$commit"
    printf '```\nshardray-bench %s\n```\n\n' "$args"
    printf '%s\n' "$table"
} >>"$RESULTS"
printf '%s\n' "$table"
echo "appended to $RESULTS" >&2
