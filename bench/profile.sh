#!/usr/bin/env bash
# Where the gateway's CPU goes on small keep-alive GETs: a perf profile of
# one gateway (pinned to core 0) behind wrk (core 1, 64 connections), with
# an nginx origin. Prints wrk's figures and the gateway's CPU shares by
# component (kernel, Portico, tokio, hyper, the allocator, copies, clock
# reads, rustls, aws-lc).
#
#   bench/profile.sh [tls|plain]      # default tls
#   PORTICO=/path/to/portico bench/profile.sh tls
#
# Needs nginx, wrk, openssl, perf. Binds 127.0.0.1:19301-19303 only; every
# process it starts is stopped before it exits. Shares only: run it on a
# quiet machine for absolute figures.
set -euo pipefail
mode="${1:-tls}"
root="$(cd "$(dirname "$0")/.." && pwd)"
portico="${PORTICO:-$root/target/release/portico}"
work="$(mktemp -d /tmp/portico-profile-XXXXXX)"
for port in 19301 19302 19303; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is in use: stop what listens there first" >&2
        exit 1
    fi
done
# shellcheck source=bench/ok-origin.sh
. "$root/bench/ok-origin.sh"
ok_origin_conf "$work" 19301 >"$work/origin.conf"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
printf '[[route]]\nname = "o"\npath_prefix = "/"\nupstreams = ["127.0.0.1:19301"]\n' >"$work/routes.toml"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
nginx -c "$work/origin.conf" &
pids+=($!)
taskset -c 0 "$portico" gateway --listen 127.0.0.1:19302 --no-admin --no-access-log \
    --tls-listen 127.0.0.1:19303 --tls-cert "$work/cert.pem:$work/key.pem" \
    --config "$work/routes.toml" 2>"$work/portico.err" &
gateway=$!
pids+=($gateway)
url="https://127.0.0.1:19303/"
[ "$mode" = plain ] && url="http://127.0.0.1:19302/"
for _ in $(seq 100); do curl -sfk "$url" >/dev/null && break; sleep 0.1; done
taskset -c 1 wrk -t1 -c64 -d14s "$url" >"$work/wrk.out" &
load=$!
sleep 3
perf record -e cpu-clock -g -p "$gateway" -o "$work/perf.data" -- sleep 8 2>/dev/null
wait "$load"
cat "$work/wrk.out"
perf report -i "$work/perf.data" --no-children --sort sym -g none -q 2>/dev/null >"$work/syms.txt"
echo "gateway CPU by component:"
# The kernel first; every other bucket counts user-space symbols only (the
# allocator's pattern also matches the kernel's `kfree` and slab symbols).
# The clock bucket: reads of the monotonic clock (the vDSO's
# `clock_gettime` and std's wrappers), cheap in instructions (callgrind
# barely sees them) but about 25 ns each here.
printf '  %-32s %s\n' 'kernel' "$(grep -E '\[k\]' "$work/syms.txt" | awk '{s+=$1} END {printf "%.1f%%", s}')"
for pat in 'portico_gateway|portico_registry' 'tokio::' hyper 'malloc|free|unlink_chunk|_int_' 'memmove|memcpy' 'clock_gettime|Timespec' rustls aws_lc; do
    printf '  %-32s %s\n' "$pat" "$(grep -v '\[k\]' "$work/syms.txt" | grep -E "$pat" | awk '{s+=$1} END {printf "%.1f%%", s}')"
done
echo "(profile and symbols kept in $work)"
