#!/usr/bin/env bash
# How many times a proxied request calls glibc's clock_gettime, malloc and
# free, under load: counts, not seconds, so the same on a busy machine.
#
#   bench/calls.sh                  # small keep-alive GETs (64 connections)
#   GRPC=1 bench/calls.sh           # unary gRPC calls over h2c both sides
#                                   # (16 connections x 32 streams)
#   BIN=/tmp/portico-old bench/calls.sh
#   N=400000 bench/calls.sh         # requests (200,000)
#
# Why: each of these is a few tens of nanoseconds that no profile shows
# as one place (a clock read is `Instant::now` wherever it is called).
# Counted per request, a change to how often the request path reads the
# clock or allocates shows exactly.
#
# How: `perf probe` puts uprobes on the three functions of the libc the
# gateway runs on; `perf stat` counts them in the gateway (one thread,
# `--no-access-log`, no config polling) while h2load sends exactly N
# requests (HTTP/1.1 to an nginx origin answering "ok", or gRPC to
# target/release/grpc_origin discovered through a registry), and the
# counts are divided by N (the count also covers a second of idling
# before the load). Needs root (uprobes), perf, h2load, nghttp and
# nginx. Everything on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
if [ -z "${BIN:-}" ]; then
  BIN=target/release/portico
  [ -x "$BIN" ] || cargo build --release --bin portico
fi
[ -x "$BIN" ] || { echo "bench/calls.sh: no binary at $BIN" >&2; exit 2; }
for tool in perf h2load nghttp nginx; do
  command -v "$tool" >/dev/null || { echo "bench/calls.sh needs $tool" >&2; exit 2; }
done
work=$(mktemp -d)
events=()
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  for e in "${events[@]}"; do perf probe -q -d "$e" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
libc=$(ldd "$BIN" | awk '/libc\.so/ {print $3}')
for f in clock_gettime malloc free; do
  events+=("probe_libc:portico_$f")
  perf probe -q -d "probe_libc:portico_$f" 2>/dev/null || true
  perf probe -q -x "$libc" --add "portico_$f=$f" >/dev/null
done
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gw=$(port)

if [ -n "${GRPC:-}" ]; then
  [ -x target/release/grpc_origin ] || cargo build --release -p portico-bench --bin grpc_origin
  . bench/register.sh
  registry=$(port)
  "$BIN" registry --control "127.0.0.1:$registry" --data-dir "$work/registry" >/dev/null 2>&1 &
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$registry/v1/services" >/dev/null 2>&1 && break
    sleep 0.1
  done
  origin=$(port)
  target/release/grpc_origin --listen "127.0.0.1:$origin" &
  register_instance "$registry" grpc g0 "$origin" h2c
  printf '[[route]]\nname = "grpc"\npath_prefix = "/bench.Echo"\nservice = "grpc"\n' >"$work/routes.toml"
  python3 -c 'import sys; m = b"x" * 64; sys.stdout.buffer.write(b"\0" + len(m).to_bytes(4, "big") + m)' >"$work/call.bin"
  "$BIN" --threads 1 gateway --no-access-log --no-admin --listen "127.0.0.1:$gw" \
    --config "$work/routes.toml" --config-poll-interval 0s \
    --registry "http://127.0.0.1:$registry" 2>/dev/null &
  headers=(-H 'content-type: application/grpc' -H 'te: trailers')
  url="http://127.0.0.1:$gw/bench.Echo/Unary"
  load=(h2load -n "$N" -c 16 -m 32 -d "$work/call.bin" "${headers[@]}" -H 'grpc-timeout: 10S' "$url")
  # A gRPC answer is a 200 whatever its status: up once a call says OK.
  up() { nghttp -v -d "$work/call.bin" "${headers[@]}" "$url" 2>/dev/null | grep -c "grpc-status: 0"; }
  what="unary gRPC call"
else
  . bench/ok-origin.sh
  origin=$(port)
  ok_origin_conf "$work" "$origin" >"$work/origin.conf"
  nginx -c "$work/origin.conf" &
  printf '[[route]]\nname = "o"\npath_prefix = "/"\nupstreams = ["127.0.0.1:%s"]\n' "$origin" >"$work/routes.toml"
  "$BIN" gateway --threads 1 --no-access-log --no-admin --listen "127.0.0.1:$gw" \
    --config "$work/routes.toml" --config-poll-interval 0s 2>/dev/null &
  load=(h2load --h1 -n "$N" -c 64 "http://127.0.0.1:$gw/")
  up() { curl -sf -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$gw/" | grep -c 200; }
  what="small GET"
fi
gateway=$!
ready=
for _ in $(seq 200); do
  answered=$(up || true)
  [ "${answered:-0}" -ge 1 ] && ready=1 && break
  sleep 0.1
done
[ -n "$ready" ] || { echo "bench/calls.sh: the gateway never answered" >&2; exit 1; }
perf stat -x, -e "$(IFS=,; echo "${events[*]}")" -p "$gateway" -o "$work/stat.txt" &
stat=$!
sleep 1
"${load[@]}" >"$work/load.out"
kill -INT "$stat"
wait "$stat" || true
grep -E "^requests:" "$work/load.out"
grep -q "^requests: $N total, $N started, $N done, $N succeeded" "$work/load.out" ||
  { echo "bench/calls.sh: not every request succeeded" >&2; exit 1; }
awk -F, -v n="$N" -v what="$what" 'NF > 2 {
  sub("probe_libc:portico_", "", $3)
  printf "%-14s %12d  %6.2f per %s\n", $3, $1, $1 / n, what
}' "$work/stat.txt"
