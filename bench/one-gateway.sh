# Sourced by bench/stack.sh and bench/copies.sh: a one-thread gateway
# (`--no-access-log`, no admin listener) in front of a Python origin that
# answers "ok", both on 127.0.0.1, for a debugger to attach to.
#
# Needs `BIN` (the portico binary) and `work` (a scratch folder) set;
# sets `gateway_port` and `gateway` (its pid), and returns once the
# gateway answers. `client N [PAUSE]`: N small GETs on one connection,
# PAUSE seconds (1) after each. The caller's EXIT trap kills both (they are its jobs).

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin_port=$(port)
gateway_port=$(port)
python3 - "$origin_port" <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
printf '[[route]]\nname = "all"\npath_prefix = "/"\nupstreams = ["127.0.0.1:%s"]\n' "$origin_port" >"$work/routes.toml"
"$BIN" gateway --threads 1 --no-access-log --no-admin --listen "127.0.0.1:$gateway_port" \
  --config "$work/routes.toml" >"$work/gateway.log" 2>&1 &
gateway=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$gateway_port/" >/dev/null && break
  sleep 0.1
done

client() {
  python3 - "$gateway_port" "$1" "${2:-1.0}" <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for _ in range(int(sys.argv[2])):
    s.sendall(b"GET /x HTTP/1.1\r\nHost: bench\r\n\r\n")
    d = b""
    while not d.endswith(b"ok"):
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("the gateway closed the connection")
        d += chunk
    time.sleep(float(sys.argv[3]))
PY
}
