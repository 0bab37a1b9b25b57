#!/usr/bin/env bash
# Two Portico builds, interleaved: CPU time per proxied small GET of each.
#
#   bench/ab.sh BIN_A BIN_B [REPS]      # REPS pairs (default 5)
#   SECONDS_PER_RUN=8 CONNS=64 bench/ab.sh ...
#   NEWCONN=1 bench/ab.sh ...           # each request on a new connection
#                                       # (wrk sends `Connection: close`)
#   UPLOAD=1 bench/ab.sh ...            # 1 MiB POSTs, 8 connections (the
#                                       # origin answers once it read it all)
#   BIG=1 bench/ab.sh ...               # GETs of a 16 KiB response (the
#                                       # harness's 2-16k)
#   CHUNKED=1 bench/ab.sh ...           # the same 16 KiB as a chunked
#                                       # body (no length)
#   FILTERS=1 bench/ab.sh ...           # the harness's policed route
#                                       # (17-filters: jwt, rate_limit, two
#                                       # header edits) and its bearer token
#   GRPC=1 bench/ab.sh ...              # unary gRPC calls over h2c both
#                                       # sides (the harness's 10-grpc-unary:
#                                       # h2load, 16 connections x 32
#                                       # streams, a 64-byte message) to two
#                                       # Rust gRPC origins found through a
#                                       # registry (target/release/grpc_origin
#                                       # and the registry of BIN_A)
#   THREADS=2 bench/ab.sh ...           # the gateway with two worker
#                                       # threads, both cores shared with wrk
#                                       # (two wrk threads): what several
#                                       # workers meeting on shared state cost
#
# Each run starts the build under test (`gateway --threads 1
# --no-access-log`, pinned to core 1; with THREADS above 1, that many
# workers on cores 0 and 1) in front of one nginx origin that
# answers "ok", warms it for 2 s with wrk (pinned to core 0), then measures
# SECONDS_PER_RUN seconds and prints requests per second and the
# gateway's user and system CPU microseconds per request (from
# /proc/PID/stat). A and B alternate (ABBA), so the machine's drift falls
# on both; compare pairs, not single lines. The harness (`bench/run.sh`)
# compares Portico with nginx and HAProxy; this compares two Portico
# commits with each other. All traffic is on 127.0.0.1; every run is
# bounded by wrk's duration.
set -euo pipefail
A=$1
B=$2
REPS=${3:-5}
SECS=${SECONDS_PER_RUN:-8}
CONNS=${CONNS:-64}
wrk_args=()
path=/
[ -n "${NEWCONN:-}" ] && wrk_args=(-H "Connection: close")
THREADS=${THREADS:-1}
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || { echo "THREADS: a positive number, not '$THREADS'" >&2; exit 2; }
gw_cores=1
wrk_cores=0
wrk_threads=1
if [ "$THREADS" -gt 1 ]; then
  gw_cores=0,1
  wrk_cores=0,1
  wrk_threads=2
fi
route_extra=
if [ -n "${FILTERS:-}" ]; then
  # The filter tables and token of bench/harness.py's 17-filters scenario.
  route_extra=$(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import harness
r = harness.filter_routes(); print(r[r.index("[[route.filters]]"):])' "$(dirname "$0")")
  token=$(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import harness
print(harness.hs256_token(harness.JWT_SECRET))' "$(dirname "$0")")
  wrk_args+=(-H "Authorization: Bearer $token")
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
[ -n "${BIG:-}" ] && path=/16k
[ -n "${CHUNKED:-}" ] && path=/16k-chunked
if [ -n "${UPLOAD:-}" ]; then
  printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 1048576)\n' >"$work/upload.lua"
  wrk_args+=(-s "$work/upload.lua")
  path=/upload
  CONNS=${CONNS_UPLOAD:-8}
fi

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gw_extra=()
if [ -n "${GRPC:-}" ]; then
  # Two h2c gRPC origins on the load's core, listed by a registry (h2c
  # instances are discovered, not configured), and the call h2load posts.
  [ -x target/release/grpc_origin ] || cargo build --release -p portico-bench >&2
  # shellcheck source=bench/register.sh
  . "$(dirname "$0")/register.sh"
  registry=$(port)
  "$A" registry --control "127.0.0.1:$registry" --data-dir "$work/registry" >/dev/null 2>&1 &
  for i in 0 1; do
    p=$(port)
    taskset -c "$wrk_cores" target/release/grpc_origin --listen "127.0.0.1:$p" &
    register_instance "$registry" grpc "g$i" "$p" h2c
  done
  printf '[[route]]\nname = "grpc"\npath_prefix = "/bench.Echo"\nservice = "grpc"\n' >"$work/routes.toml"
  python3 -c 'import sys; m = b"x" * 64; sys.stdout.buffer.write(b"\0" + len(m).to_bytes(4, "big") + m)' >"$work/call.bin"
  gw_extra=(--registry "http://127.0.0.1:$registry")
  path=/bench.Echo/Unary
fi
origin=$(port)
# shellcheck source=bench/ok-origin.sh
. "$(dirname "$0")/ok-origin.sh"
ok_origin_conf "$work" "$origin" >"$work/origin.conf"
[ -n "${GRPC:-}" ] || cat >"$work/routes.toml" <<TOML
[[route]]
name = "all"
path_prefix = "/"
upstreams = ["127.0.0.1:$origin"]
$route_extra
TOML
if [ -z "${GRPC:-}" ]; then
  nginx -c "$work/origin.conf" &
fi

# grpc_call PORT: one unary call through the gateway that ends with the
# origin's grpc-status 0.
grpc_call() {
  nghttp -v -d "$work/call.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$1$path" 2>/dev/null | grep -q "grpc-status: 0"
}
# load SECONDS PORT: the load on the load's core; prints the requests done.
load() {
  if [ -n "${GRPC:-}" ]; then
    local out
    out=$(taskset -c "$wrk_cores" h2load -D "$1" -c 16 -m 32 -d "$work/call.bin" -H 'content-type: application/grpc' \
      -H 'te: trailers' -H 'grpc-timeout: 10S' "http://127.0.0.1:$2$path")
    echo "$out" | grep -q "status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" || { echo "errors: $out" >&2; return 1; }
    echo "$out" | awk '/^requests:/ {print $8}'
    return
  fi
  local out
  out=$(taskset -c "$wrk_cores" wrk -t"$wrk_threads" -c"$CONNS" -d"$1s" "${wrk_args[@]}" "http://127.0.0.1:$2$path")
  if echo "$out" | grep -q "Non-2xx"; then echo "errors: $out" >&2; return 1; fi
  echo "$out" | awk '/requests in/ {print $1}'
}

# run LABEL BIN: one measured run.
run() {
  local label=$1 bin=$2 gw pid
  gw=$(port)
  taskset -c "$gw_cores" "$bin" gateway --threads "$THREADS" --no-access-log --no-admin --listen "127.0.0.1:$gw" \
    --config "$work/routes.toml" --config-poll-interval 0s "${gw_extra[@]}" >/dev/null 2>&1 &
  pid=$!
  # Up once it proxies (a policed route answers 401 to curl, not 502; a
  # gRPC route once a call reaches an origin).
  up() {
    if [ -n "${GRPC:-}" ]; then grpc_call "$gw"; return; fi
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$gw/") =~ ^(200|401)$ ]]
  }
  for _ in $(seq 200); do up && break; sleep 0.05; done
  up || { echo "$label: the gateway did not answer" >&2; exit 1; }
  load 2 "$gw" >/dev/null || { echo "$label: the warm-up failed" >&2; exit 1; }
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  n=$(load "$SECS" "$gw") || { echo "$label: the load failed" >&2; exit 1; }
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  python3 - "$label" "$((u1 - u0))" "$((s1 - s0))" "$n" \
    "$SECS" "$(getconf CLK_TCK)" <<'PY'
import sys
label, u, s, n, secs, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
us = 1e6 / tck
print(f"{label}: {n / secs:9,.0f} req/s  user {u * us / n:6.2f} us  system {s * us / n:6.2f} us  "
      f"total {(u + s) * us / n:6.2f} us per request")
PY
}
# ABBA order: whichever runs second in a pair meets the first one's
# leftovers (sockets in TIME_WAIT after NEWCONN runs, a warmer page
# cache), so the order alternates.
for i in $(seq "$REPS"); do
  if [ $((i % 2)) -eq 1 ]; then
    run A "$A"
    run B "$B"
  else
    run B "$B"
    run A "$A"
  fi
done
