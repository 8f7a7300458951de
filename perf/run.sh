#!/bin/sh
# Side-by-side bulk VLESS throughput: shardray against sing-box 1.14.4, V2Ray 4.45.2, shoes 0.3.2
# and the bare splice relay (`shardray-bench splice-relay`, the floor for a userspace relay),
# measured in one run on this machine; short connections against sing-box and shoes; both again
# with VLESS over TLS 1.3 (a certificate generated per run; the splice relay, plain only, is
# skipped there); the memory and CPU
# that 2,000 idle tunnels cost shardray, sing-box, V2Ray and shoes; the same three figures for
# Trojan over TLS, VMess AEAD, Shadowsocks (aes-128-gcm and 2022) and SOCKS5 against sing-box
# and shoes (`protocols`); what limits configured for other users cost an unlimited one
# (`limits`: shardray with LIMITS_OTHERS users at a rate-limited level, moving traffic
# throughout, against the same with no limits and the harness pacing them; issue 13's ratio);
# then shardray's API figures
# (AddUser round trip idle and with traffic, from a load generator at normal priority and at
# nice 19, QueryStats and RSS at 100,000 and 1,000,000 users);
# appended as one dated section to perf/RESULTS.md, and drawn as charts in perf/report.html
# (one self-contained page: CPU per GB, latency CDFs, RSS per idle tunnel, RSS over time).
#
#   perf/run.sh                      everything (long: the protocols step alone takes tens of
#                                    minutes on 2 cores; the whole was not timed lately)
#   TLS=0 perf/run.sh                plain VLESS only (no TLS step after throughput, connrate)
#   SCENARIOS=api perf/run.sh        only the API figures (also: throughput, connrate, idle,
#                                    protocols, limits, xhttp: VLESS over XHTTP against VLESS
#                                    over TLS, shardray to shardray)
#   SCENARIOS=limits LIMITS_OTHERS=16 LIMITS_RATE=2MiB LIMITS_RUNS=7 perf/run.sh
#   SCENARIOS=protocols PROTOCOLS=ss-2022,vmess PROTO_BYTES=64MiB perf/run.sh
#   SCENARIOS=idle IDLE_TUNNELS=5000 perf/run.sh
#   TARGETS=shardray,sing-box,v2ray STREAMS=8 BYTES=128MiB RUNS=5 perf/run.sh
#   CONNRATE_TARGETS=shardray,sing-box,v2ray SCENARIOS=connrate perf/run.sh
#   BUILD=0 perf/run.sh              use the binaries already built in the target directory
#   SHOES_BIN=/path/to/shoes perf/run.sh   shoes from there; otherwise `perf/peers.sh shoes`
#                                    gives it (building it the first time, 6 to 10 minutes), and
#                                    without it the shoes rows are left out with a warning
#
# Honours CARGO_TARGET_DIR. Loopback only.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

SCENARIOS=${SCENARIOS:-throughput,connrate,idle,protocols,limits,xhttp,api}
TARGETS=${TARGETS:-shardray,sing-box,v2ray,shoes,splice}
STREAMS=${STREAMS:-4}
BYTES=${BYTES:-256MiB}
DIRECTION=${DIRECTION:-both}
RUNS=${RUNS:-3}
SHARDS=${SHARDS:-2}
# After each plain throughput and connrate step, the same over TLS (1) or not (0).
TLS=${TLS:-1}
CONNRATE_TARGETS=${CONNRATE_TARGETS:-shardray,sing-box,shoes}
# The plain connrate step measures each target a second time with this name as the
# destination (the proxy resolves it); empty skips that.
DEST_DOMAIN=${DEST_DOMAIN-localhost}
# API churn: calls and pace on an idle server, then with traffic streams flowing.
CHURN_OPS=${CHURN_OPS:-10000}
CHURN_RATE=${CHURN_RATE:-1000}
CHURN_TRAFFIC_OPS=${CHURN_TRAFFIC_OPS:-2000}
CHURN_TRAFFIC_RATE=${CHURN_TRAFFIC_RATE:-100}
CHURN_STREAMS=${CHURN_STREAMS:-2}
# Idle tunnels held open per target, and which targets.
IDLE_TUNNELS=${IDLE_TUNNELS:-2000}
IDLE_TARGETS=${IDLE_TARGETS:-shardray,sing-box,v2ray,shoes}
# The protocols step: which (a `-tls` suffix runs it inside TLS), against which targets, with
# how many bytes per stream, seconds of connections and idle tunnels (0 skips idle); each
# scenario PROTO_RUNS times, medians reported.
PROTOCOLS=${PROTOCOLS:-trojan-tls,vmess,ss-aes-128-gcm,ss-2022,socks}
PROTO_TARGETS=${PROTO_TARGETS:-shardray,sing-box,shoes}
PROTO_BYTES=${PROTO_BYTES:-$BYTES}
PROTO_RUNS=${PROTO_RUNS:-$RUNS}
PROTO_CONNRATE_SECONDS=${PROTO_CONNRATE_SECONDS:-10}
PROTO_IDLE_TUNNELS=${PROTO_IDLE_TUNNELS:-1000}
# The limits step: other users at a limited level beside the measured one, their rate per
# direction, and runs of each variant (medians reported).
LIMITS_OTHERS=${LIMITS_OTHERS:-8}
LIMITS_RATE=${LIMITS_RATE:-1MiB}
LIMITS_RUNS=${LIMITS_RUNS:-9}
RESULTS=${RESULTS:-$root/perf/RESULTS.md}
REPORT=${REPORT:-$root/perf/report.html}
BUILD=${BUILD:-1}

shoes_arg=""

wants() { case ",$SCENARIOS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

if [ "$BUILD" != 0 ]; then cargo build --quiet --release -p shardray -p shardray-bench; fi
bin=${CARGO_TARGET_DIR:-$root/target}/release
bench="$bin/shardray-bench"
section=$(mktemp)
tmp=$(mktemp -d)
trap 'rm -rf "$section" "$tmp"' EXIT

# step NAME ARGS...: runs shardray-bench ARGS with the peers' binaries, saving JSON as
# $tmp/NAME.json, and appends the command and its table to the section.
step() {
    name=$1
    shift
    # shellcheck disable=SC2086 # $shoes_arg is empty or an option and its path
    table=$("$bench" "$@" --json-out "$tmp/$name.json" \
        --shardray-bin "$bin/shardray" --sing-box-bin "$SING_BOX" --v2ray-bin "$V2RAY" $shoes_arg)
    {
        [ ! -s "$section" ] || printf '\n'
        printf '```\nshardray-bench %s\n```\n\n' "$*"
        printf '%s\n' "$table"
    } >>"$section"
}

if wants throughput || wants connrate || wants idle || wants protocols || wants limits; then
    eval "$(perf/peers.sh)"
    # shoes: SHOES_BIN if set, else from perf/peers.sh (built the first time); without it its
    # rows are left out rather than failing the whole run.
    SHOES=${SHOES_BIN:-}
    if [ -z "$SHOES" ]; then
        if out=$(perf/peers.sh shoes); then eval "$out"; else SHOES=""; fi
    fi
    if [ -n "$SHOES" ] && [ -x "$SHOES" ]; then
        shoes_arg="--shoes-bin $SHOES"
    else
        echo "warning: no shoes binary (set SHOES_BIN, or see perf/peers.sh shoes); its rows are left out" >&2
        shoes_arg=""
        no_shoes() { printf '%s' "$1" | sed 's/^shoes,//; s/,shoes,/,/; s/,shoes$//'; }
        TARGETS=$(no_shoes "$TARGETS")
        CONNRATE_TARGETS=$(no_shoes "$CONNRATE_TARGETS")
        IDLE_TARGETS=$(no_shoes "$IDLE_TARGETS")
        PROTO_TARGETS=$(no_shoes "$PROTO_TARGETS")
    fi
fi

if wants throughput; then
    args="throughput --target $TARGETS --streams $STREAMS --bytes $BYTES --direction $DIRECTION --runs $RUNS --shards $SHARDS"
    # shellcheck disable=SC2086 # $args is split on purpose
    step throughput $args
    # shellcheck disable=SC2086 # $args is split on purpose
    if [ "$TLS" != 0 ]; then step throughput.tls $args --tls; fi
fi

if wants connrate; then
    args="connrate --target $CONNRATE_TARGETS --parallel 32 --duration 10 --runs 3 --shards $SHARDS"
    # shellcheck disable=SC2086 # $args is split on purpose
    # shellcheck disable=SC2086 # $args is split on purpose
    step connrate $args ${DEST_DOMAIN:+--dest-domain "$DEST_DOMAIN"}
    # shellcheck disable=SC2086 # $args is split on purpose
    if [ "$TLS" != 0 ]; then step connrate.tls $args --tls; fi
fi

if wants idle; then
    args="idle --target $IDLE_TARGETS --tunnels $IDLE_TUNNELS --shards $SHARDS"
    # shellcheck disable=SC2086 # $args is split on purpose
    step idle $args
fi

if wants protocols; then
    # Each protocol's bulk CPU per GB, short connections and idle tunnels, shardray against
    # the peers in one run; the tables' "vs" columns carry the issue's ratios.
    printf '\n### Protocols: %s against %s\n' "$PROTOCOLS" "$PROTO_TARGETS" >>"$section"
    for p in $(printf '%s' "$PROTOCOLS" | tr ',' ' '); do
        case $p in
            *-tls) proto=${p%-tls} tls=--tls ;;
            *) proto=$p tls="" ;;
        esac
        common="--target $PROTO_TARGETS --protocol $proto --shards $SHARDS"
        # shellcheck disable=SC2086 # split on purpose
        step "throughput.$p" throughput $common $tls --streams "$STREAMS" --bytes "$PROTO_BYTES" \
            --direction "$DIRECTION" --runs "$PROTO_RUNS"
        # shellcheck disable=SC2086 # split on purpose
        step "connrate.$p" connrate $common $tls --parallel 32 --duration "$PROTO_CONNRATE_SECONDS" \
            --runs "$PROTO_RUNS"
        # Idle tunnels are plain TCP: the protocol's own cost per tunnel, without TLS's; once
        # per protocol, so `vless,vless-tls` measures idle VLESS once.
        if [ "$PROTO_IDLE_TUNNELS" != 0 ] && [ ! -f "$tmp/idle.$proto.json" ]; then
            # shellcheck disable=SC2086 # split on purpose
            step "idle.$proto" idle $common --tunnels "$PROTO_IDLE_TUNNELS" --runs "$PROTO_RUNS"
        fi
    done
fi

if wants limits; then
    # The unlimited user's throughput and CPU/GB with limits configured for others, as ratios of
    # the run with no limits at all (issue 13 asks for at least 0.97x).
    step limits throughput --target shardray --limits-for-others "$LIMITS_OTHERS" --others-rate "$LIMITS_RATE" \
        --streams "$STREAMS" --bytes "$BYTES" --direction "$DIRECTION" --runs "$LIMITS_RUNS" --shards "$SHARDS"
fi

if wants xhttp; then
    # No other XHTTP implementation runs here: the peer is plain VLESS over TLS through the
    # same two shardray processes.
    {
        printf '\n```\npython3 perf/xhttp-upload.py\n```\n\n'
        SHARDRAY_BIN="$bin/shardray" python3 perf/xhttp-upload.py
    } >>"$section"
fi

if wants api; then
    # Each run saves its JSON; the summary reads them all back, with each command and table.
    mkdir -p "$tmp/api"
    api() {
        out="$tmp/api/$1.json"
        shift
        echo "shardray-bench $*" >&2
        "$bench" "$@" --shards "$SHARDS" --shardray-bin "$bin/shardray" --json >"$out"
    }
    api 1-churn-idle churn --ops "$CHURN_OPS" --rate "$CHURN_RATE"
    api 2-churn-traffic churn --ops "$CHURN_TRAFFIC_OPS" --rate "$CHURN_TRAFFIC_RATE" \
        --traffic-streams "$CHURN_STREAMS"
    # The same with the load generator at nice 19: the proxy has the cores first, as it would
    # with remote clients, so its own wait for a core leaves the round trip.
    api 2-churn-traffic-niced churn --ops "$CHURN_TRAFFIC_OPS" --rate "$CHURN_TRAFFIC_RATE" \
        --traffic-streams "$CHURN_STREAMS" --traffic-nice 19
    api 3-users-100k users --count 100000 --query-runs 5
    api 4-users-1m users --count 1000000
    {
        printf '\n### API (shardray, --shards %s)\n\n' "$SHARDS"
        "$bench" api-summary --details "$tmp"/api/*.json
    } >>"$section"
fi

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then commit="$commit (uncommitted changes)"; fi
if [ "$BUILD" = 0 ]; then commit="$commit, binaries built earlier (BUILD=0)"; fi

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
    cat "$section"
} >>"$RESULTS"
cat "$section"
echo "appended to $RESULTS" >&2

# The charts: every scenario that saved JSON (the API figures stay in RESULTS.md).
set -- "$tmp"/*.json
if [ -f "$1" ]; then
    "$bench" html --title "shardray perf/run.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit" \
        --out "$REPORT" "$@"
    echo "wrote $REPORT" >&2
fi
