#!/usr/bin/env bash
# User-space instructions per proxied small GET, under callgrind: repeatable
# whatever else the machine does (instructions, not seconds).
#
#   bench/callgrind.sh [ROUTE_TOML_EXTRA]
#   ORIGINS=2 bench/callgrind.sh     # round robin over two origins
#   HEADERS='{"authorization": "Bearer ..."}' bench/callgrind.sh ...
#                                    # extra request headers (JSON object)
#   BODY_KB=16 bench/callgrind.sh    # the origin answers 16 KiB of text
#                                    # (text/plain) instead of "ok"
#   GATEWAY_FLAGS='--http1-server hyper' bench/callgrind.sh
#                                    # extra `portico gateway` flags
#   ACCESS_LOG=1 bench/callgrind.sh  # the default access log on (stderr,
#                                    # to a file), not --no-access-log;
#                                    # callgrind counts every thread, so
#                                    # the log's writer thread is included
#   NEWCONN=1 bench/callgrind.sh     # a new connection per request, each
#                                    # asking `Connection: close` (the
#                                    # harness's 4-new-conn scenario)
#   H2C=1 bench/callgrind.sh         # the client speaks h2c (prior knowledge):
#                                    # h2load, CONNS (1) connections x STREAMS (10)
#                                    # concurrent streams; HEADERS unused
#   NGINX=1 bench/callgrind.sh       # the same load through nginx (one
#                                    # process, master off, keep-alive
#                                    # upstream as the harness has it);
#                                    # HTTP/1 only
#   SIM=1 bench/callgrind.sh         # callgrind's cache and branch simulation
#                                    # too: prints every event per request
#                                    # (I1/D1/LL misses, mispredicted
#                                    # branches), which these virtual
#                                    # machines' missing hardware counters
#                                    # cannot give
#   GRPC=1 bench/callgrind.sh        # unary gRPC calls over h2c both sides:
#                                    # h2load (CONNS x STREAMS, as H2C) posts
#                                    # a 64-byte message to a Rust h2c gRPC
#                                    # origin (target/release/grpc_origin),
#                                    # discovered through a registry run
#                                    # outside valgrind (the harness's
#                                    # 10-grpc-unary); with HAPROXY=1, HAProxy
#                                    # in proto h2 mode over the same origin
#   FILTERS=1 bench/callgrind.sh     # the harness's policed route (17-filters):
#                                    # its jwt, rate_limit and two header
#                                    # filters appended to the route, and its
#                                    # HS256 bearer token sent (HEADERS unused)
#   API_KEY=1 bench/callgrind.sh     # an `api_key` filter on the route, its
#                                    # consumer (one 31-character key) kept by
#                                    # a registry run outside valgrind, the
#                                    # key sent in `x-api-key` (HEADERS unused)
#   HAPROXY=1 H2C=1 bench/callgrind.sh
#                                    # the same load through HAProxy (one
#                                    # thread, proto h2 frontend, round robin,
#                                    # http-reuse always) instead of Portico:
#                                    # the side-by-side figure
#
# Runs `portico gateway --threads 1 --no-access-log` under valgrind twice
# (LOW and HIGH keep-alive requests from one client to one Python origin)
# and prints (instructions(HIGH) - instructions(LOW)) / (HIGH - LOW), so
# startup and shutdown cancel out. Extra TOML lines (e.g. a `[route.retry]`
# table) are appended to the one catch-all route.
set -euo pipefail
cd "$(dirname "$0")/.."
LOW=${LOW:-2000}
HIGH=${HIGH:-12000}
BIN=${BIN:-target/release/portico}
[ -x "$BIN" ] || cargo build --release --bin portico
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] && cp "$work"/cg.* "$KEEP"/ ; rm -rf "$work"' EXIT

route_extra=${1:-}
if [ -n "${FILTERS:-}" ]; then
  # The filter tables and token of bench/harness.py's 17-filters scenario.
  route_extra=$(python3 -c 'import sys; sys.path.insert(0, "bench"); import harness
r = harness.filter_routes(); print(r[r.index("[[route.filters]]"):])')
  token=$(python3 -c 'import sys; sys.path.insert(0, "bench"); import harness
print(harness.hs256_token(harness.JWT_SECRET))')
  HEADERS="{\"authorization\": \"Bearer $token\"}"
fi

. bench/register.sh
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start_registry: a registry outside valgrind on $registry_port.
start_registry() {
  registry_port=$(port)
  "$BIN" registry --control "127.0.0.1:$registry_port" --data-dir "$work/registry" >/dev/null 2>&1 &
}
if [ -n "${API_KEY:-}" ]; then
  if [ -n "${H2C:-}${GRPC:-}${NGINX:-}${HAPROXY:-}" ]; then
    echo "API_KEY=1: Portico over HTTP/1 only (h2load sends no key)" >&2
    exit 2
  fi
  start_registry
  api_key=bench-api-key-0123456789abcdef0
  stored=
  for _ in $(seq 100); do
    curl -sf -X PUT -H 'content-type: application/json' -d "{\"api_keys\": [\"$api_key\"]}" \
      "http://127.0.0.1:$registry_port/v1/consumers/bench" >/dev/null && { stored=1; break; }
    sleep 0.1
  done
  [ -n "$stored" ] || { echo "API_KEY=1: the registry did not take the consumer" >&2; exit 1; }
  route_extra=$(printf '[[route.filters]]\ntype = "api_key"\nheader = "x-api-key"\n')
  HEADERS="{\"x-api-key\": \"$api_key\"}"
fi
ORIGINS=${ORIGINS:-1}
export HEADERS=${HEADERS:-'{}'}
export BODY_KB=${BODY_KB:-0}
upstreams=""
if [ -n "${GRPC:-}" ]; then
  # One h2c gRPC origin and a registry listing it (h2c instances are
  # discovered, not configured); the call's body for h2load.
  [ -x target/release/grpc_origin ] || cargo build --release -p portico-bench >&2
  H2C=1
  origin_port=$(port)
  target/release/grpc_origin --listen "127.0.0.1:$origin_port" &
  start_registry
  register_instance "$registry_port" grpc g0 "$origin_port" h2c
  python3 -c 'import sys; m = b"x" * 64; sys.stdout.buffer.write(b"\0" + len(m).to_bytes(4, "big") + m)' >"$work/call.bin"
  upstreams="\"127.0.0.1:$origin_port\", "
  ORIGINS=0
fi
for _ in $(seq "$ORIGINS"); do
origin_port=$(port)
upstreams="$upstreams\"127.0.0.1:$origin_port\", "
python3 - "$origin_port" <<'PY' &
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
kb = int(os.environ["BODY_KB"])
# Text that compresses about as well as JSON does (not one repeated byte).
words = b"portico gateway route filter upstream request response header "
body = (words * (kb * 1024 // len(words) + 1))[: kb * 1024] if kb else b"ok"
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        if kb:
            self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
# A backlog for CONNS x STREAMS requests in flight (socketserver's is 5).
ThreadingHTTPServer.request_queue_size = 1024
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
done
if [ -n "${GRPC:-}" ]; then
  printf '[[route]]\nname = "grpc"\npath_prefix = "/bench.Echo"\nservice = "grpc"\n' >"$work/routes.toml"
else
cat > "$work/routes.toml" <<TOML
[[route]]
name = "all"
path_prefix = "/"
upstreams = [${upstreams%, }]
${route_extra}
TOML
fi

# h2load over one h2c connection once the gateway listens; fails unless
# every request got a 2xx.
h2c_client() {
  python3 - "$1" <<'PY'
import socket, sys, time
deadline = time.time() + 120
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30).close(); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.2)
PY
  if [ -n "${GRPC:-}" ]; then
    # A gRPC error is an HTTP 200 too: one call must end in grpc-status 0
    # (the origin's answer) before the counted ones.
    local ok=""
    for _ in $(seq 300); do
      if nghttp -v -d "$work/call.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$1/bench.Echo/Unary" 2>/dev/null | grep -q "grpc-status: 0"; then ok=1; break; fi
      sleep 0.2
    done
    [ -n "$ok" ] || { echo "no gRPC call through the proxy ended with grpc-status 0" >&2; return 1; }
    h2load -n "$2" -c "${CONNS:-1}" -m "${STREAMS:-10}" -d "$work/call.bin" -H 'content-type: application/grpc' \
      -H 'te: trailers' -H 'grpc-timeout: 10S' "http://127.0.0.1:$1/bench.Echo/Unary" >"$work/h2load.$2"
  else
  h2load -n "$2" -c "${CONNS:-1}" -m "${STREAMS:-10}" "http://127.0.0.1:$1/small" >"$work/h2load.$2"
  fi
  grep -q "status codes: $2 2xx" "$work/h2load.$2" || { cat "$work/h2load.$2" >&2; return 1; }
}

# HAProxy as the bench harness runs it, over the same origins.
haproxy_conf() {
  local servers="" i=0
  for u in $(echo "$upstreams" | tr -d '",'); do
    servers="$servers  server o$i $u${GRPC:+ proto h2}
"
    i=$((i + 1))
  done
  cat <<CFG
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$1 $([ -n "${H2C:-}" ] && echo "proto h2")
  default_backend be
backend be
  balance roundrobin
  http-reuse always
$servers
CFG
}

vg_flags=()
[ -n "${SIM:-}" ] && vg_flags=(--cache-sim=yes --branch-sim=yes)
# nginx as the bench harness runs it (one worker, here without a master so
# that valgrind follows the process that does the work).
nginx_conf() {
  local servers=""
  for u in $(echo "$upstreams" | tr -d '",'); do
    servers="$servers    server $u;
"
  done
  cat <<CFG
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx.$2.pid;
error_log $work/nginx.$2.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path $work/body.$2;
  proxy_temp_path $work/proxy.$2;
  fastcgi_temp_path $work/fcgi.$2;
  uwsgi_temp_path $work/uwsgi.$2;
  scgi_temp_path $work/scgi.$2;
  upstream origins {
$servers    keepalive 128;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:$1;
    location / {
      proxy_pass http://origins;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CFG
}

log_flag=--no-access-log
[ -n "${ACCESS_LOG:-}" ] && log_flag=""
run() {
  local n=$1 gw_port
  gw_port=$(port)
  # The access log (when on) goes to stderr, that is to vg.$n with
  # valgrind's own messages.
  if [ -n "${NGINX:-}" ]; then
    nginx_conf "$gw_port" "$n" >"$work/nginx.$n.conf"
    valgrind --tool=callgrind "${vg_flags[@]}" --callgrind-out-file="$work/cg.$n" nginx -c "$work/nginx.$n.conf" \
      >/dev/null 2>"$work/vg.$n" &
  elif [ -n "${HAPROXY:-}" ]; then
    haproxy_conf "$gw_port" >"$work/haproxy.$n.cfg"
    valgrind --tool=callgrind "${vg_flags[@]}" --callgrind-out-file="$work/cg.$n" haproxy -f "$work/haproxy.$n.cfg" \
      >/dev/null 2>"$work/vg.$n" &
  else
  # As shipped: the gateway starts itself again with this set (src/main.rs,
  # allocator_cache), which valgrind would not follow.
  GLIBC_TUNABLES=glibc.malloc.tcache_count=512 RUST_LOG=info valgrind --tool=callgrind "${vg_flags[@]}" --callgrind-out-file="$work/cg.$n" "$BIN" gateway --threads 1 \
    $log_flag ${GATEWAY_FLAGS:-} ${registry_port:+--registry http://127.0.0.1:$registry_port} \
    --no-admin --listen "127.0.0.1:$gw_port" --config "$work/routes.toml" \
    --config-poll-interval 0s >/dev/null 2>"$work/vg.$n" &
  fi
  local pid=$!
  if [ -n "${H2C:-}" ]; then
    # run() is called in $(...), a subshell without the EXIT trap: stop the
    # proxy under valgrind here when the load fails, or it outlives us.
    h2c_client "$gw_port" "$n" || { kill $pid; wait $pid || true; exit 1; }
  else
  python3 - "$gw_port" "$n" <<'PY'
import http.client, json, os, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
headers = {"user-agent": "bench", **json.loads(os.environ["HEADERS"])}
deadline = time.time() + 120
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30); c.connect(); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.2)
c.close()
if os.environ.get("NEWCONN"):
    headers["connection"] = "close"
# The route may wait for what the registry delivers (API_KEY's consumer):
# requests before it are answered 401 and not counted.
while True:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/small", headers=headers)
    r = c.getresponse(); r.read(); c.close()
    if r.status != 401 or time.time() > deadline:
        break
    time.sleep(0.2)
for i in range(n):
    if os.environ.get("NEWCONN") or i == 0:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/small", headers=headers)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    if os.environ.get("NEWCONN"):
        # The proxy closes after its answer; wait for that before the next.
        assert r.will_close, "the proxy kept the connection open"
        c.close()
PY
  fi
  # SIGUSR1: HAProxy's soft stop (it exits, and callgrind writes its
  # counts, once its connections are closed); Portico drains on SIGINT.
  # nginx stops gracefully on SIGQUIT.
  if [ -n "${NGINX:-}" ]; then kill -QUIT $pid
  elif [ -n "${HAPROXY:-}" ]; then kill -USR1 $pid; else kill -INT $pid; fi
  wait $pid || true
  if [ -n "${ACCESS_LOG:-}" ]; then
    echo "access-log lines at $n: $(grep -c 'portico::access' "$work/vg.$n")" >&2
  fi
  # Every event's total, separated by spaces (only Ir without SIM).
  awk '/^totals:/ {$1=""; print}' "$work/cg.$n"
}
low=$(run "$LOW")
high=$(run "$HIGH")
if [ -z "${SIM:-}" ]; then
  echo "instructions per request: $(( (${high// /} - ${low// /}) / (HIGH - LOW) ))  (totals $low at $LOW, $high at $HIGH)"
else
  events=$(awk '/^events:/ {$1=""; print}' "$work/cg.$LOW")
  python3 - "$events" "$low" "$high" "$((HIGH - LOW))" <<'PY'
import sys
names, low, high, n = sys.argv[1].split(), sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4])
for name, a, b in zip(names, low, high):
    print(f"{name:>5} per request: {(int(b) - int(a)) / n:,.1f}")
PY
fi
