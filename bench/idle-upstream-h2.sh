#!/usr/bin/env bash
# Heap held by a gateway's idle upstream HTTP/2 connections: N h2c gRPC
# origins (target/release/grpc_origin), one connection to each, measured
# after small calls and after 256 kB calls (what a burst of request bodies
# leaves behind on a connection once it is idle again).
#
#   bench/idle-upstream-h2.sh                 # target/release/portico, N=32
#   BIN=/tmp/portico-old N=64 bench/idle-upstream-h2.sh
#   IDLE_WAIT=5 bench/idle-upstream-h2.sh     # seconds idle before the last
#                                             # measure (35: past the client's
#                                             # 30 s keep-alive interval)
#   RSS=1 bench/idle-upstream-h2.sh           # the gateway's RSS instead of
#                                             # massif's heap (faster; glibc
#                                             # keeps freed memory, so a drop
#                                             # shows late or not at all)
#
# How: a registry lists the N origins as `h2c` instances of one service,
# `portico gateway --threads 1` routes `/bench.Echo` to it (under valgrind
# massif unless RSS=1; `vgdb` takes each heap snapshot while the gateway
# idles), and h2load posts framed gRPC messages (4 connections x 8
# streams), round robin over the origins. Everything on 127.0.0.1; each
# load is bounded by its request count.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/portico}
N=${N:-32}
[ -x "$BIN" ] || cargo build --release --bin portico
[ -x target/release/grpc_origin ] || cargo build --release -p portico-bench
for tool in h2load curl; do
  command -v "$tool" >/dev/null || { echo "bench/idle-upstream-h2.sh needs $tool" >&2; exit 2; }
done
vg=()
if [ -z "${RSS:-}" ]; then
  command -v vgdb >/dev/null || { echo "bench/idle-upstream-h2.sh needs valgrind (or RSS=1)" >&2; exit 2; }
  vg=(valgrind --tool=massif --vgdb=yes --massif-out-file=/dev/null)
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
. bench/register.sh
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

registry=$(port)
gateway=$(port)
"$BIN" registry --control "127.0.0.1:$registry" --data-dir "$work/registry" >/dev/null 2>&1 &
for i in $(seq "$N"); do
  origin=$(port)
  target/release/grpc_origin --listen "127.0.0.1:$origin" &
  register_instance "$registry" grpc "g$i" "$origin" h2c
done
printf '[[route]]\nname = "grpc"\npath_prefix = "/bench.Echo"\nservice = "grpc"\n' >"$work/routes.toml"
# Not started again with glibc's cache raised (src/main.rs,
# allocator_cache): valgrind would not follow the exec, and massif
# replaces the allocator anyway.
PORTICO_ALLOCATOR_CACHE=1 "${vg[@]}" "$BIN" gateway --threads 1 --no-access-log --no-admin --registry "http://127.0.0.1:$registry" \
  --listen "127.0.0.1:$gateway" --config "$work/routes.toml" --config-poll-interval 0s >/dev/null 2>"$work/gateway.err" &
pid=$!
message() { python3 -c "import sys; m = b'x' * $1; sys.stdout.buffer.write(b'\0' + len(m).to_bytes(4, 'big') + m)"; }
message 64 >"$work/small.bin"
message 262144 >"$work/big.bin"

# The heap in use (massif, kB), or the RSS.
held() {
  if [ -n "${RSS:-}" ]; then
    awk '/VmRSS/ {print $2}' "/proc/$pid/status"
  else
    vgdb --pid="$pid" snapshot "$work/snap" >/dev/null
    awk -F= '/mem_heap_B/ {h = $2} /mem_heap_extra_B/ {e = $2} END {print int((h + e) / 1024)}' "$work/snap"
  fi
}
load() {
  h2load -n "$1" -c 4 -m 8 -d "$2" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$gateway/bench.Echo/Unary" | grep -q "0 failed, 0 errored" \
    || { echo "calls failed" >&2; exit 1; }
}
ready=
for _ in $(seq 300); do
  curl -sf -o /dev/null --http2-prior-knowledge -H 'content-type: application/grpc' -d x \
    "http://127.0.0.1:$gateway/bench.Echo/Unary" && { ready=1; break; }
  sleep 0.2
done
[ -n "$ready" ] || { echo "the gateway never answered" >&2; cat "$work/gateway.err" >&2; exit 1; }
settle=${SETTLE:-4}
sleep "$settle"
before=$(held)
load $((N * 64)) "$work/small.bin"; sleep "$settle"; small=$(held)
# An idle upstream connection lets go of a grown write buffer at its next
# keep-alive interval (30 s).
load $((N * 16)) "$work/big.bin"; sleep "${IDLE_WAIT:-35}"; big=$(held)
what=${RSS:+RSS}
echo "$N idle upstream HTTP/2 connections, kB (${what:-heap in use, massif}): $before before the load;" \
  "+$((small - before)) after small calls; +$((big - before)) after 256 kB calls" \
  "($(( (big - small) * 1024 / N )) bytes per connection more)"
