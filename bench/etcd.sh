#!/usr/bin/env bash
# The etcd store at scale (issue 14): three etcd members and two registry
# replicas on loopback, for each instance count (default 10k, 50k, 100k):
# registrations/s (64 clients spread over both replicas), heartbeats/s per
# replica, every etcd member's and replica's CPU over each phase, replica
# RSS, a gateway's table build after its full re-list, and
# registration-to-routable p50/p99. A fresh cluster per count.
#
#   bench/etcd.sh                          # 10000 50000 100000, 5 s of heartbeats
#   bench/etcd.sh --counts "100000" --seconds 8
#   bench/etcd.sh --concurrency 256         # clients registering and heartbeating (64)
#   BIN=/tmp/before bench/etcd.sh           # portico, registry_load, propagation from /tmp/before
#
# Needs etcd (Debian's etcd-server) and protoc; builds release binaries
# with --features etcd. Everything listens on 127.0.0.1 and is stopped on
# exit. Bounded: one registration pass, --seconds of heartbeats, 200
# propagation trials per count.
set -euo pipefail
cd "$(dirname "$0")/.."

counts="10000 50000 100000"
seconds=5
concurrency=64
while [ $# -gt 0 ]; do
    case "$1" in
        --counts) counts="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --concurrency) concurrency="$2"; shift 2 ;;
        *) echo "usage: bench/etcd.sh [--counts \"10000 50000\"] [--seconds N] [--concurrency N]" >&2; exit 2 ;;
    esac
done

if [ -n "${BIN:-}" ]; then
    # Binaries built elsewhere (another commit, for a before/after).
    bin=$BIN
else
    cargo build --release --features etcd -p portico --bin portico >&2
    cargo build --release -p portico-bench --bin registry_load --bin propagation >&2
    bin=target/release
fi
work=$(mktemp -d /tmp/portico-etcd-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

wait_http() { # url
    for _ in $(seq 1 300); do
        curl -sf --max-time 1 -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "no answer from $1" >&2
    return 1
}

rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

run_count() { # instances
    local n=$1 base=$((23000 + RANDOM % 2000 * 10))
    local cluster="" endpoints="" etcd_pids=() i
    for i in 1 2 3; do
        cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 2 * i + 1))"
        endpoints+="${endpoints:+,}http://127.0.0.1:$((base + 2 * i))"
    done
    for i in 1 2 3; do
        etcd --name "m$i" --data-dir "$work/$n-m$i" \
            --listen-client-urls "http://127.0.0.1:$((base + 2 * i))" \
            --advertise-client-urls "http://127.0.0.1:$((base + 2 * i))" \
            --listen-peer-urls "http://127.0.0.1:$((base + 2 * i + 1))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((base + 2 * i + 1))" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "bench-$n" --quota-backend-bytes 8589934592 \
            --log-level error >"$work/$n-m$i.log" 2>&1 &
        pids+=($!)
        etcd_pids+=($!)
    done
    # A member that could not start (its port taken by another program)
    # would leave the replicas waiting for a quorum: stop at once instead.
    sleep 0.5
    for i in 0 1 2; do
        if ! kill -0 "${etcd_pids[$i]}" 2>/dev/null; then
            echo "etcd member m$((i + 1)) did not start:" >&2
            tail -3 "$work/$n-m$((i + 1)).log" >&2
            return 1
        fi
    done
    local r1=$((base + 10)) r2=$((base + 11)) gw=$((base + 12)) gwa=$((base + 13))
    RUST_LOG=warn "$bin/portico" registry --control "127.0.0.1:$r1" --store "etcd:$endpoints" >"$work/$n-r1.log" 2>&1 &
    local r1pid=$!
    pids+=($!)
    RUST_LOG=warn "$bin/portico" registry --control "127.0.0.1:$r2" --store "etcd:$endpoints" >"$work/$n-r2.log" 2>&1 &
    local r2pid=$!
    pids+=($!)
    wait_http "http://127.0.0.1:$r1/readyz"
    wait_http "http://127.0.0.1:$r2/readyz"
    local regs="http://127.0.0.1:$r1,http://127.0.0.1:$r2"
    echo "== $n instances (1,000 services), 3 etcd members, 2 replicas"
    "$bin/registry_load" --registry "$regs" --instances "$n" --services 1000 --concurrency "$concurrency" \
        --seconds "$seconds" \
        --cpu-of "etcd1=${etcd_pids[0]},etcd2=${etcd_pids[1]},etcd3=${etcd_pids[2]},replica1=$r1pid,replica2=$r2pid"
    echo "replica RSS: $(rss_mb "$r1pid") MB, $(rss_mb "$r2pid") MB"
    # A gateway starting now re-lists everything: its first table build.
    RUST_LOG=warn "$bin/portico" gateway --listen "127.0.0.1:$gw" --admin "127.0.0.1:$gwa" \
        --registry "$regs" --auto-routes true --no-access-log >"$work/$n-gw.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 600); do
        routes=$(curl -sf "http://127.0.0.1:$gwa/status" 2>/dev/null | sed -n 's/.*"routes":\([0-9]*\).*/\1/p')
        [ "${routes:-0}" -ge 1000 ] && break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$gwa/status" | sed -n 's/.*"last_build_us":\([0-9]*\).*/gateway table build after a full re-list: \1 us/p'
    echo
    "$bin/propagation" --registry "http://127.0.0.1:$r1" --gateway "http://127.0.0.1:$gw" \
        --admin "http://127.0.0.1:$gwa" --trials 200
    cleanup
    pids=()
    work=$(mktemp -d /tmp/portico-etcd-bench.XXXXXX)
}

for n in $counts; do
    run_count "$n"
done
