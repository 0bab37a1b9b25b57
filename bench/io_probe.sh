#!/usr/bin/env bash
# The kernel's share of a proxied small keep-alive GET, by I/O interface:
# CPU per request (user and system apart) and context switches per request
# of the smallest forwarder Portico can write (bench/src/bin/io_probe.rs)
# with epoll and with io_uring, beside nginx, HAProxy and Portico, in one
# run.
#
#   bench/io_probe.sh [REPS]             # REPS rounds (default 3)
#   SECONDS_PER_RUN=8 CONNS=64 bench/io_probe.sh
#   BIN=/tmp/portico-x bench/io_probe.sh # the Portico build to compare
#
# Why: Portico, nginx and HAProxy spend about the same system time per
# small GET, four fifths of each one's CPU (bench/RESULTS.md), so the last
# step of issue 15's small-GET target depends on whether another kernel
# interface makes that share smaller. The probe has almost no user-space
# work, so its system time is the interface's: `epoll` is what every
# readiness-based proxy asks of the kernel, `uring` submits all queued
# receives and sends and reaps completions in one call per loop,
# `uring-defer` also defers completion work to that call.
#
# Each run: the contestant pinned to core 1, wrk (one thread, CONNS
# connections) and one nginx origin that answers "ok" pinned to core 0
# (an origin left to float lands on the contestant's core now and then,
# and that run's figures with it);
# 2 s of warm-up, then SECONDS_PER_RUN seconds measured, CPU read from
# /proc/PID/stat and context switches from /proc/PID/status around it.
# The contestants take turns within each round. All traffic is on
# 127.0.0.1; every run is bounded by wrk's duration.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
SECS=${SECONDS_PER_RUN:-8}
CONNS=${CONNS:-64}
BIN=${BIN:-target/release/portico}
PROBE=target/release/io_probe
[ -x "$BIN" ] || cargo build --release --bin portico
cargo build --release -p portico-bench --bin io_probe
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin=$(port)
# shellcheck source=bench/ok-origin.sh
. bench/ok-origin.sh
ok_origin_conf "$work" "$origin" >"$work/origin.conf"
taskset -c 0 nginx -c "$work/origin.conf" &
printf '[[route]]\nname = "all"\npath_prefix = "/"\nupstreams = ["127.0.0.1:%s"]\n' "$origin" >"$work/routes.toml"

# nginx as a proxy, configured as bench/harness.py configures it.
nginx_conf() {
  cat <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/proxy-$1.pid;
error_log $work/proxy.err warn;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path $work/pb; proxy_temp_path $work/pt; fastcgi_temp_path $work/pf;
  uwsgi_temp_path $work/pu; scgi_temp_path $work/ps;
  upstream origins { server 127.0.0.1:$origin; keepalive 128; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$1 backlog=4096;
    location / { proxy_pass http://origins; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
}

# HAProxy as a proxy, configured as bench/harness.py configures it.
haproxy_conf() {
  cat <<CONF
global
  nbthread 1
  maxconn 9500
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$1
  default_backend be
backend be
  http-reuse always
  server o 127.0.0.1:$origin
CONF
}

# start NAME PORT: the contestant's command, pinned to core 1.
start() {
  case $1 in
    probe-*) exec taskset -c 1 "$PROBE" --listen "127.0.0.1:$2" --upstream "127.0.0.1:$origin" --engine "${1#probe-}" ;;
    nginx)
      nginx_conf "$2" >"$work/proxy.conf"
      exec taskset -c 1 nginx -c "$work/proxy.conf" ;;
    haproxy)
      haproxy_conf "$2" >"$work/haproxy.cfg"
      exec taskset -c 1 haproxy -f "$work/haproxy.cfg" ;;
    portico)
      exec taskset -c 1 "$BIN" gateway --threads 1 --no-access-log --no-admin --listen "127.0.0.1:$2" \
        --config "$work/routes.toml" --config-poll-interval 0s ;;
  esac
}

# The machine's TCP segments sent so far, delayed ACKs sent, and pure ACKs
# received: every segment on loopback is work for its sender's kernel.
segments() {
  nstat -az TcpOutSegs TcpExtDelayedACKs TcpExtTCPPureAcks |
    awk '$1 ~ /^Tcp/ {n[$1] = $2} END {print n["TcpOutSegs"], n["TcpExtDelayedACKs"], n["TcpExtTCPPureAcks"]}'
}
# Core 1's stolen ticks (the hypervisor running someone else): a run with
# steal charges that time to whatever ran, so it is printed beside each run.
steal() { awk '$1 == "cpu1" {print $9}' /proc/stat; }
switches() { awk '/ctxt_switches/ {n += $2} END {print n}' /proc/"$1"/task/*/status; }

# run NAME: one measured run.
run() {
  local name=$1 p pid
  p=$(port)
  start "$name" "$p" >/dev/null 2>&1 &
  pid=$!
  up() { [ "$(curl -s "http://127.0.0.1:$p/")" = ok ]; }
  for _ in $(seq 200); do up && break; sleep 0.05; done
  up || { echo "$name: did not answer" >&2; exit 1; }
  taskset -c 0 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$p/" >/dev/null
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  c0=$(switches "$pid")
  read -r o0 a0 d0 < <(segments)
  t0=$(steal)
  out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${SECS}s" "http://127.0.0.1:$p/")
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  c1=$(switches "$pid")
  read -r o1 a1 d1 < <(segments)
  t1=$(steal)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  if echo "$out" | grep -q -E "Non-2xx|Socket errors"; then echo "$name: errors: $out" >&2; exit 1; fi
  python3 - "$name" "$((u1 - u0))" "$((s1 - s0))" "$((c1 - c0))" "$((o1 - o0))" "$((a1 - a0))" \
    "$((d1 - d0))" "$((t1 - t0))" "$(echo "$out" | awk '/requests in/ {print $1}')" "$SECS" "$(getconf CLK_TCK)" <<'PY'
import sys
name, u, s, c, o, a, d, t, n, secs, tck = sys.argv[1], *map(int, sys.argv[2:])
us = 1e6 / tck
print(f"{name:18} {n / secs:7,.0f}/s  user {u * us / n:5.2f}  system {s * us / n:5.2f}  "
      f"total {(u + s) * us / n:5.2f} us  switches {c / n:5.3f}  segments {o / n:4.2f} "
      f"(delayed ACKs {a / n:4.2f}, pure ACKs {d / n:4.2f}) per request; steal {100 * t / tck / secs:.1f}%")
PY
}

for i in $(seq "$REPS"); do
  echo "round $i"
  for name in probe-epoll probe-uring probe-uring-defer nginx haproxy portico; do
    run "$name"
  done
done
