#!/usr/bin/env python3
"""Portico side by side with nginx and HAProxy, in one run on one machine.

Topology (2 cores): the proxy under test alone on core 0; the load generator
and the origins (two nginx, one worker each) on core 1. Every proxy runs one
worker / one thread, round robin over the same two origins with upstream
keep-alive. Repetitions are interleaved (A B C A B C ...); each proxy's CPU
time is read from /proc/PID/stat around every run to give CPU microseconds
per request, the figure a saturated load generator cannot hide.

Run with bench/run.sh (it installs what is missing and builds Portico).
Every run is bounded in time; all traffic stays on 127.0.0.1.
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
# PORTICO_BIN: another build of Portico to measure (bench/pgo.sh trains its
# profile-guided build with this harness); the bench tools stay in RELEASE.
PORTICO = os.environ.get("PORTICO_BIN") or os.path.join(RELEASE, "portico")
PROXY_CORE = "0"
LOAD_CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

ORIGIN_PORTS = [19101, 19102]
# h2c gRPC origins (target/release/grpc_origin) for 10-grpc-unary.
GRPC_ORIGIN_PORTS = [19111, 19112]
PORTS = {
    # h1d: the same as h1 with the listener deferring accept until a new
    # connection's first bytes (nginx's `deferred`, HAProxy's
    # `defer-accept`); Portico defers by default, on its one port.
    "nginx": {"h1": 19201, "h2c": 19202, "grpc": 19203, "tls": 19204, "h1d": 19206},
    "haproxy": {"h1": 19301, "h2c": 19302, "grpc": 19303, "tls": 19304, "h1d": 19306},
    "portico": {"h1": 19401, "h2c": 19401, "tls": 19405, "h1d": 19401},
    "portico-discovered": {"h1": 19402, "h2c": 19402, "grpc": 19402},
    "portico-10k-routes": {"h1": 19403, "h2c": 19403},
    "portico-features": {"h1": 19404, "h2c": 19404},
    "portico-filters": {"h1": 19408, "h2c": 19408},
    # 16-access-log: each proxy with its access log on.
    "nginx-logged": {"h1": 19205},
    "haproxy-logged": {"h1": 19305},
    "portico-logged": {"h1": 19406, "admin": 19407},
}
REGISTRY_PORT = 19490


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Proc:
    def __init__(self, name, argv, core, cwd=None, env=None):
        self.name = name
        self.start = (argv, core, cwd, env)
        self.log = open(os.path.join(WORK, f"{name}.log"), "w")
        full = ["taskset", "-c", core] + argv
        self.p = subprocess.Popen(
            full, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
            env=env, preexec_fn=raise_nofile, start_new_session=True,
        )

    def again(self, name):
        """Stops this process and starts a fresh one with the same command
        (its output logged under `name`)."""
        self.stop()
        argv, core, cwd, env = self.start
        return Proc(name, argv, core, cwd=cwd, env=env)

    def pids(self):
        """The process and its children (nginx workers)."""
        out = [self.p.pid]
        try:
            kids = subprocess.run(["pgrep", "-P", str(self.p.pid)], capture_output=True, text=True).stdout
            out += [int(x) for x in kids.split()]
        except Exception:
            pass
        return out

    def cpu_ticks(self):
        """CPU time so far, in clock ticks: (user, kernel)."""
        user = kernel = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user += int(fields[11])
                kernel += int(fields[12])
            except FileNotFoundError:
                pass
        return user, kernel

    def mem_kb(self, key):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(key + ":"):
                            total += int(line.split()[1])
            except FileNotFoundError:
                pass
        return total

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()


def ports_free():
    """Refuses to start over a previous run that is still listening: its
    processes would answer, and the new ones' figures would read as zero."""
    ports = ORIGIN_PORTS + GRPC_ORIGIN_PORTS + [REGISTRY_PORT]
    ports += [p for proxy in PORTS.values() for p in proxy.values()]
    for port in sorted(set(ports)):
        with socket.socket() as s:
            # As the servers do: connections in TIME_WAIT do not count.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise SystemExit(f"port {port} is in use: is an earlier benchmark still running?")


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def http(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
    if body:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()


# ---------------------------------------------------------------- configs


def origin_conf(port):
    return f"""
worker_processes 1;
daemon off;
pid {WORK}/origin-{port}.pid;
error_log {WORK}/origin-{port}.err warn;
events {{ worker_connections 8000; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path {WORK}/body-{port};
  proxy_temp_path {WORK}/proxy-{port};
  fastcgi_temp_path {WORK}/fcgi-{port};
  uwsgi_temp_path {WORK}/uwsgi-{port};
  scgi_temp_path {WORK}/scgi-{port};
  # /upload answers once the whole body is read: a `return` answers at
  # once and drops the rest of the body, and a proxy still sending it then
  # cannot reuse the connection (nginx failed most uploads that way). The
  # proxy module reads the body first (into memory, 2m), then asks /stored
  # over a kept-alive connection to itself (no new accepts to count).
  upstream self {{ server 127.0.0.1:{port}; keepalive 4; }}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{ return 200 "ok\\n"; }}
    location = /origin_status {{ stub_status; }}
    location = /16k {{ root {WORK}/www; try_files /16k =404; }}
    # The same 16 KiB without a length, as one chunk: the addition filter
    # (an empty answer added after it) drops the length, as an
    # application's streamed answer has none.
    location = /16k-chunked {{
      root {WORK}/www; try_files /16k =404;
      addition_types *; add_after_body /empty;
    }}
    location = /empty {{ return 200 ""; }}
    location = /upload {{
      client_max_body_size 4m; client_body_buffer_size 2m;
      proxy_pass_request_body off; proxy_set_header Content-Length "";
      proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_pass http://self/stored;
    }}
    location = /stored {{ return 200 "stored\\n"; }}
  }}
}}
"""


def nginx_proxy_conf():
    ups = "\n".join(f"    server 127.0.0.1:{p};" for p in ORIGIN_PORTS)
    grpc_ups = "\n".join(f"    server 127.0.0.1:{p};" for p in GRPC_ORIGIN_PORTS)
    p = PORTS["nginx"]
    return f"""
worker_processes 1;
daemon off;
pid {WORK}/nginx-proxy.pid;
error_log {WORK}/nginx-proxy.err warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path {WORK}/pbody;
  proxy_temp_path {WORK}/ptemp;
  fastcgi_temp_path {WORK}/pfcgi;
  uwsgi_temp_path {WORK}/puwsgi;
  scgi_temp_path {WORK}/pscgi;
  upstream origins {{
{ups}
    keepalive 128;
    keepalive_requests 10000000;
  }}
  upstream grpc_origins {{
{grpc_ups}
    keepalive 128;
    keepalive_requests 10000000;
  }}
  server {{
    listen 127.0.0.1:{p['grpc']} http2 backlog=4096;
    http2_max_concurrent_streams 256;
    location / {{
      grpc_pass grpc://grpc_origins;
    }}
  }}
  # HTTPS: one ECDSA P-256 certificate for all three proxies; TLS 1.2 and
  # 1.3; resumption by tickets (nginx's default) and a session cache.
  server {{
    listen 127.0.0.1:{p['tls']} ssl http2 backlog=4096;
    ssl_certificate {WORK}/tls/cert.pem;
    ssl_certificate_key {WORK}/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 1h;
    location / {{
      proxy_pass http://origins;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  server {{
    listen 127.0.0.1:{p['h1']} backlog=4096;
    listen 127.0.0.1:{p['h1d']} deferred backlog=4096;
    listen 127.0.0.1:{p['h2c']} http2 backlog=4096;
    http2_max_concurrent_streams 256;
    client_max_body_size 4m;
    proxy_request_buffering off;
    proxy_buffering on;
    location / {{
      proxy_pass http://origins;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def haproxy_conf():
    p = PORTS["haproxy"]
    servers = "\n".join(f"  server o{i} 127.0.0.1:{port}" for i, port in enumerate(ORIGIN_PORTS))
    grpc_servers = "\n".join(f"  server g{i} 127.0.0.1:{port} proto h2" for i, port in enumerate(GRPC_ORIGIN_PORTS))
    return f"""
global
  nbthread 1
  maxconn 9500
  log stderr format raw local0 err
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{p['h1']}
  bind 127.0.0.1:{p['h1d']} defer-accept
  bind 127.0.0.1:{p['h2c']} proto h2
  default_backend be
backend be
  balance roundrobin
  http-reuse always
{servers}
frontend fe_tls
  bind 127.0.0.1:{p['tls']} ssl crt {WORK}/tls/combined.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2
  default_backend be
frontend fe_grpc
  bind 127.0.0.1:{p['grpc']} proto h2
  default_backend be_grpc
backend be_grpc
  balance roundrobin
  http-reuse always
{grpc_servers}
"""


# The HMAC secret of the 17-filters route's jwt filter (bench only).
JWT_SECRET = "portico-bench-secret-of-at-least-32-bytes"


def hs256_token(secret, lifetime_s=3600):
    """A signed HS256 JWT for the 17-filters scenario (stdlib only)."""
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": "bench", "exp": int(time.time()) + lifetime_s}).encode())
    signing = head + b"." + claims
    sig = b64(hmac.new(secret.encode(), signing, hashlib.sha256).digest())
    return (signing + b"." + sig).decode()


def filter_routes():
    """The 17-filters route: issue 13's measure of a policed route, jwt
    (cached after the first request) + rate_limit (per client IP, never
    reached) + a request and a response header edit."""
    ups = ", ".join(f'"127.0.0.1:{p}"' for p in ORIGIN_PORTS)
    return f'''[[route]]
name = "main"
upstreams = [{ups}]

[[route.filters]]
type = "jwt"
algorithms = ["HS256"]
secret = "{JWT_SECRET}"

[[route.filters]]
type = "rate_limit"
rate = 1000000

[[route.filters]]
type = "request_headers"
set = {{ "x-env" = "bench" }}

[[route.filters]]
type = "response_headers"
set = {{ "x-served-by" = "portico" }}
'''


def nginx_logged_conf():
    """The proxy of nginx_proxy_conf's plain server, with nginx's access log
    on: the default `combined` format to a file, buffered (64 KiB, written
    when full or after a second)."""
    ups = "\n".join(f"    server 127.0.0.1:{p};" for p in ORIGIN_PORTS)
    return f"""
worker_processes 1;
daemon off;
pid {WORK}/nginx-logged.pid;
error_log {WORK}/nginx-logged.err warn;
events {{ worker_connections 20000; }}
http {{
  access_log {WORK}/nginx-access.log combined buffer=64k flush=1s;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path {WORK}/lbody;
  proxy_temp_path {WORK}/ltemp;
  fastcgi_temp_path {WORK}/lfcgi;
  uwsgi_temp_path {WORK}/luwsgi;
  scgi_temp_path {WORK}/lscgi;
  upstream origins {{
{ups}
    keepalive 128;
    keepalive_requests 10000000;
  }}
  server {{
    listen 127.0.0.1:{PORTS['nginx-logged']['h1']} backlog=4096;
    location / {{
      proxy_pass http://origins;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def haproxy_logged_conf():
    """haproxy_conf's plain frontend with HAProxy's HTTP log on (`option
    httplog`), written to stdout (a file here: Proc redirects it). HAProxy
    has no log buffer of its own: it writes each line as the request ends,
    non-blocking, and drops lines a full pipe or slow disk cannot take. A
    syslog sink over UDP (its classic setup) would cost a sendto(2) per
    line just as well."""
    servers = "\n".join(f"  server o{i} 127.0.0.1:{port}" for i, port in enumerate(ORIGIN_PORTS))
    return f"""
global
  nbthread 1
  maxconn 9500
  log stdout format raw local0 info
defaults
  mode http
  log global
  option httplog
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{PORTS['haproxy-logged']['h1']}
  default_backend be
backend be
  balance roundrobin
  http-reuse always
{servers}
"""


def access_log_scenario(args, routes, portico_bin):
    """16-access-log: small GETs against each proxy with its access log on,
    as shipped or as commonly tuned: nginx buffered (64 KiB), HAProxy to
    stdout, Portico with its defaults (its stderr, redirected to a file).
    Returns the runs and the log lines each wrote."""
    conf = os.path.join(WORK, "nginx-logged.conf")
    with open(conf, "w") as f:
        f.write(nginx_logged_conf())
    nginx = Proc("nginx-logged", ["nginx", "-c", conf, "-p", WORK], PROXY_CORE)
    conf = os.path.join(WORK, "haproxy-logged.cfg")
    with open(conf, "w") as f:
        f.write(haproxy_logged_conf())
    haproxy = Proc("haproxy-logged", ["haproxy", "-f", conf], PROXY_CORE)
    port = PORTS["portico-logged"]
    portico = Proc("portico-logged", [portico_bin, "--threads", "1", "gateway", "--listen",
                                      f"127.0.0.1:{port['h1']}", "--config", routes,
                                      "--admin", f"127.0.0.1:{port['admin']}"],
                   PROXY_CORE, env=dict(os.environ, RUST_LOG="info"))
    peers = {"nginx": (nginx, "nginx-logged"), "haproxy": (haproxy, "haproxy-logged"),
             "portico": (portico, "portico-logged")}
    try:
        for proc, name in peers.values():
            wait_port(PORTS[name]["h1"])
        time.sleep(0.5)
        runs = {name: [] for name in peers}
        for rep in range(args.reps):
            for name, (proc, key) in rotated(peers.items(), rep):
                r = measure(proc, lambda: wrk(f"http://127.0.0.1:{PORTS[key]['h1']}/", 64, args.seconds))
                runs[name].append(r)
                log(f"   rep {rep + 1} {name:8} {r['rps']:>10,.0f} req/s  {fmt(r['cpu_us_per_req'], 2):>6} CPU-us/req (user {fmt(r.get('user_us_per_req'), 2)})"
                    f"  p99 {fmt(r['p99_us'], 0)} us  errors {r['errors']}  non2xx {r['non2xx']}  time_wait {r['time_wait_before']}")
        metrics = http("GET", f"http://127.0.0.1:{port['admin']}/metrics")[1].decode()
        dropped = next((line.split()[1] for line in metrics.splitlines()
                        if line.startswith("portico_access_log_dropped_total ")), None)
    finally:
        for proc, _ in peers.values():
            proc.stop()
    lines = {
        "nginx": count_lines(os.path.join(WORK, "nginx-access.log")),
        "haproxy": count_lines(os.path.join(WORK, "haproxy-logged.log")),
        "portico": count_lines(os.path.join(WORK, "portico-logged.log"), "portico::access"),
    }
    requests = {name: sum(r["requests"] for r in rs) for name, rs in runs.items()}
    log(f"   log lines / requests measured: {lines} / {requests}; Portico dropped {dropped}")
    extra = {f"access_log_lines_{name}": f"{lines[name]:,} for {requests[name]:,} requests measured "
             f"(plus warm-up)" for name in runs}
    extra["access_log_dropped_portico"] = dropped
    return runs, extra


def count_lines(path, containing=None):
    n = 0
    with open(path, errors="replace") as f:
        for line in f:
            if containing is None or containing in line:
                n += 1
    return n


def portico_routes(n_routes):
    ups = ", ".join(f'"127.0.0.1:{p}"' for p in ORIGIN_PORTS)
    lines = []
    # n_routes - 1 decoys with distinct hosts and prefixes, then the catch-all the load hits.
    for i in range(n_routes - 1):
        lines.append(f'[[route]]\nname = "r{i}"\nhosts = ["h{i}.example.test"]\npath_prefix = "/p{i}"\nupstreams = [{ups}]\n')
    lines.append(f'[[route]]\nname = "main"\nupstreams = [{ups}]\n')
    return "\n".join(lines)


# ---------------------------------------------------------------- load


def wrk(url, conns, seconds, script=None, headers=()):
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    for h in headers:
        argv += ["-H", h]
    if script:
        argv += ["-s", script]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    res = {"requests": 0, "rps": 0.0, "p50_us": None, "p99_us": None, "errors": 0, "non2xx": 0}
    for line in out.splitlines():
        s = line.strip()
        if " requests in " in s:
            res["requests"] = int(s.split()[0])
        elif s.startswith("Requests/sec:"):
            res["rps"] = float(s.split()[1])
        elif s.startswith("50%"):
            res["p50_us"] = parse_wrk_time(s.split()[1])
        elif s.startswith("99%"):
            res["p99_us"] = parse_wrk_time(s.split()[1])
        elif s.startswith("Non-2xx"):
            res["non2xx"] = int(s.split()[-1])
        elif s.startswith("Socket errors:"):
            res["errors"] = sum(int(x.strip(",")) for x in s.split()[3::2])
    return res


def parse_wrk_time(t):
    for unit, mult in (("us", 1), ("ms", 1000), ("s", 1_000_000)):
        if t.endswith(unit):
            return float(t[: -len(unit)]) * mult
    return float(t)


def h2load(url, clients, streams, seconds, h1=False, rps=None, data=None, headers=()):
    logf = os.path.join(WORK, "h2load.log")
    argv = ["taskset", "-c", LOAD_CORE, "h2load", "-c", str(clients), "-m", str(streams), "-D", str(seconds),
            "-t", "1", "--log-file", logf]
    if h1:
        argv.append("--h1")
    if rps:
        argv += ["--rps", str(rps)]
    if data:
        argv += ["-d", data]  # POST with this body
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    res = {"requests": 0, "rps": 0.0, "p50_us": None, "p99_us": None, "errors": 0, "non2xx": 0}
    for line in out.splitlines():
        s = line.strip()
        if s.startswith("finished in"):
            res["rps"] = float(s.split(",")[1].split()[0])
        elif s.startswith("requests:"):
            parts = s.replace(",", "").split()
            res["requests"] = int(parts[7])  # succeeded
            res["errors"] = int(parts[9]) + int(parts[11])  # failed + errored
        elif s.startswith("status codes:"):
            parts = s.replace(",", "").split()
            res["non2xx"] = int(parts[4]) + int(parts[6]) + int(parts[8])
    lat = []
    try:
        with open(logf) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3:
                    lat.append(int(fields[2]))
    except FileNotFoundError:
        pass
    if lat:
        lat.sort()
        res["p50_us"] = lat[len(lat) // 2]
        res["p99_us"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return res


def origin_accepts():
    """Connections the origins have accepted so far (nginx stub_status)."""
    total = 0
    for port in ORIGIN_PORTS:
        try:
            body = http("GET", f"http://127.0.0.1:{port}/origin_status")[1].decode()
            total += int(body.splitlines()[2].split()[0])
        except Exception:
            return None
    return total


# More kernel events to count per request beside the system calls, for a
# look into where a proxy's kernel time goes (`EXTRA_EVENTS=net:net_dev_xmit,
# sched:sched_wakeup`): printed per repetition, not kept in the results.
EXTRA_EVENTS = [e for e in os.environ.get("EXTRA_EVENTS", "").split(",") if e]

# KERNEL_PROFILE=1: also sample each proxy's stacks while its load runs
# (`perf record -e cpu-clock -g`) and print where its time went, in
# microseconds per request: user space, then the kernel by the system call
# it ran under. Printed per repetition and kept in results.json
# (`kernel_profile`), not in the table. Sampling at 999 Hz costs the proxy
# little, but it is not nothing: compare proxies within one run.
KERNEL_PROFILE = os.environ.get("KERNEL_PROFILE") == "1"
PROFILE_HZ = 999

# The system calls a sample's kernel frames ran under, by bucket.
SYSCALL_BUCKETS = {
    "send": ("sendto", "sendmsg", "writev", "write", "sendmmsg"),
    "recv": ("recvfrom", "recvmsg", "readv", "read", "recvmmsg"),
    "epoll": ("epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl"),
    "connections": ("accept4", "accept", "connect", "close", "socket", "setsockopt",
                    "getsockopt", "shutdown", "getsockname", "getpeername"),
}


def profile_buckets(frames):
    """The bucket of one sample, from its frames (leaf first, each a
    (symbol, dso) pair): `user`, a system call's bucket, `syscall entry
    and exit` (the leaf is the entry or exit code itself), the harness's
    own system-call counting, `other syscall`, or `irq and faults` (kernel
    work under no system call)."""
    if not frames or "kernel" not in frames[0][1]:
        return "user"
    kernel = [sym for sym, dso in frames if "kernel" in dso]
    # The tracepoint the harness's own `perf stat` counts system calls on.
    if "syscall_trace_enter" in kernel or "perf_trace_sys_enter" in kernel:
        return "syscall counting (perf stat)"
    if frames[0][0].startswith(("entry_SYSCALL", "do_syscall_64", "x64_sys_call",
                                "syscall_exit", "syscall_return", "exit_to_user_mode")):
        return "syscall entry and exit"
    named = [sym[len("__x64_sys_"):] for sym in kernel if sym.startswith("__x64_sys_")]
    if named:
        for bucket, calls in SYSCALL_BUCKETS.items():
            if named[0] in calls:
                return bucket
        return "other syscall"
    if not any(sym.startswith("entry_SYSCALL") for sym in kernel):
        return "irq and faults"
    # Some calls' `__x64_sys_` frame is inlined away (`writev` shows as
    # `do_writev`): the C library's wrapper names the call then.
    wrapper = next((sym for sym, dso in frames if "kernel" not in dso), "").lower()
    for bucket, calls in SYSCALL_BUCKETS.items():
        if any(call in wrapper for call in calls):
            return bucket
    return "other syscall"


def kernel_profile(path, requests):
    """Microseconds per request by bucket, from `perf record`'s file."""
    try:
        out = subprocess.run(["perf", "script", "-i", path, "-F", "comm,ip,sym,dso"],
                             capture_output=True, text=True, timeout=300).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    counts, frames, header = {}, [], False

    def flush():
        if not header:
            return
        b = profile_buckets(frames)
        counts[b] = counts.get(b, 0) + 1
        # Two parts of the kernel's share, whatever call they ran under:
        # the receiving end's half of a loopback send (the softirq runs in
        # the sender's context), and the wake-ups of the sockets' readers.
        syms = {sym for sym, dso in frames if "kernel" in dso}
        for part, sym in (("of it loopback delivery", "net_rx_action"),
                          ("of it waking readers", "sock_def_readable")):
            if sym in syms:
                counts[part] = counts.get(part, 0) + 1

    for line in out.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            flush()
            frames, header = [], True
            continue
        m = re.match(r"\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
        if m:
            frames.append((m.group(1), m.group(2)))
    flush()
    per_req = 1_000_000 / PROFILE_HZ / requests
    return {b: round(c * per_req, 2) for b, c in sorted(counts.items(), key=lambda x: -x[1])}


class Syscalls:
    """System calls and context switches of a proxy's processes while a load
    runs, counted by the kernel (`perf stat` on the tracepoint
    raw_syscalls:sys_enter); None where perf is missing or not permitted."""

    def __init__(self, proc):
        self.out = os.path.join(WORK, f"perf-{proc.name}.csv")
        self.p = None
        self.record = None
        if shutil.which("perf"):
            pids = ",".join(str(p) for p in proc.pids())
            self.p = subprocess.Popen(
                ["perf", "stat", "-x,", "-o", self.out, "-e",
                 ",".join(["raw_syscalls:sys_enter", "context-switches"] + EXTRA_EVENTS), "-p", pids], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if KERNEL_PROFILE:
                self.data = os.path.join(WORK, f"prof-{proc.name}.data")
                self.record = subprocess.Popen(
                    ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(PROFILE_HZ), "-g",
                     "-o", self.data, "-p", pids], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.2)  # perf attaches before the load starts

    def profile(self, requests):
        """The sampled profile per request ([`kernel_profile`]), or None."""
        if self.p is None or self.record is None or not requests:
            return None
        try:
            self.record.wait(60)
        except subprocess.TimeoutExpired:
            self.record.kill()
            return None
        return kernel_profile(self.data, requests)

    def stop(self):
        """(system calls, context switches) since start, or (None, None)."""
        if self.p is None:
            return None, None
        self.p.send_signal(signal.SIGINT)
        if self.record is not None:
            self.record.send_signal(signal.SIGINT)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return None, None
        counts = {}
        try:
            with open(self.out) as f:
                for line in f:
                    parts = line.strip().split(",")
                    if len(parts) > 2 and parts[0].isdigit():
                        counts[parts[2]] = int(parts[0])
        except FileNotFoundError:
            pass
        self.extra = {e: counts.get(e) for e in EXTRA_EVENTS}
        return counts.get("raw_syscalls:sys_enter"), counts.get("context-switches")


def rotated(items, rep):
    """`items` in the order of repetition `rep`: each repetition starts one
    place further on, so with as many repetitions as proxies each one runs
    first, second and last once. A fixed order is not fair: a run meets
    what the runs before it left, such as the last runs' sockets in
    TIME_WAIT after a new-connection scenario (as they accumulated to
    hundreds of thousands, a gateway's kernel time per request rose by about
    40% in `bench/ab.sh`'s runs), and the proxy always running last always
    met the most."""
    items = list(items)
    k = rep % len(items) if items else 0
    return items[k:] + items[:k]


def time_wait():
    """Sockets in TIME_WAIT now (`ss -s`), logged with each run."""
    try:
        out = subprocess.run(["ss", "-s"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"timewait (\d+)", out)
        return int(m.group(1)) if m else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def measure(proc, fn):
    tw = time_wait()
    accepts = origin_accepts()
    perf = Syscalls(proc)
    before = proc.cpu_ticks()
    res = fn()
    after = proc.cpu_ticks()
    syscalls, switches = perf.stop()
    n = res["requests"]
    res["syscalls_per_req"] = syscalls / n if syscalls is not None and n else None
    res["switches_per_req"] = switches / n if switches is not None and n else None
    if EXTRA_EVENTS and n:
        extra = {e: c / n for e, c in perf.extra.items() if c is not None}
        log("     per request: " + ", ".join(f"{e} {c:.2f}" for e, c in extra.items()))
    if KERNEL_PROFILE:
        res["kernel_profile"] = perf.profile(n)
        if res["kernel_profile"]:
            log("     sampled us per request: " + ", ".join(
                f"{b} {us:.2f}" for b, us in res["kernel_profile"].items()))
    user_us = (after[0] - before[0]) * 1_000_000 / CLK_TCK
    cpu_us = user_us + (after[1] - before[1]) * 1_000_000 / CLK_TCK
    res["cpu_us_per_req"] = cpu_us / res["requests"] if res["requests"] else None
    # The user-space part: where a proxy's own code differs most.
    res["user_us_per_req"] = user_us / res["requests"] if res["requests"] else None
    res["rss_kb"] = proc.mem_kb("VmRSS")
    res["time_wait_before"] = tw
    after_accepts = origin_accepts()
    if accepts is not None and after_accepts is not None and res["requests"]:
        # Each status read is itself one accepted connection.
        new_conns = max(0, after_accepts - accepts - len(ORIGIN_PORTS))
        res["upstream_reuse_pct"] = 100.0 * (1 - new_conns / res["requests"])
    else:
        res["upstream_reuse_pct"] = None
    return res


# ---------------------------------------------------------------- scenarios


def scenarios(args):
    d = args.seconds
    upload = os.path.join(WORK, "upload.lua")
    with open(upload, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = string.rep("x", 1048576)\nwrk.headers["Content-Type"] = "application/octet-stream"\n')
    return {
        "1-small-get": ("small GET, keep-alive, 64 conns",
                        lambda port: lambda: wrk(f"http://127.0.0.1:{port['h1']}/", 64, d)),
        "1b-fixed-rate": (f"small GET paced at {args.rate} req/s (h2load --h1, 40 conns)",
                          lambda port: lambda: h2load(f"http://127.0.0.1:{port['h1']}/", 40, 1, d, h1=True, rps=args.rate // 40)),
        "2-16k": ("16 KiB response, keep-alive, 64 conns",
                  lambda port: lambda: wrk(f"http://127.0.0.1:{port['h1']}/16k", 64, d)),
        "2b-16k-chunked": ("16 KiB chunked response (no length), keep-alive, 64 conns",
                           lambda port: lambda: wrk(f"http://127.0.0.1:{port['h1']}/16k-chunked", 64, d)),
        "3-upload-1m": ("1 MiB request body upstream, 8 conns",
                        lambda port: lambda: wrk(f"http://127.0.0.1:{port['h1']}/upload", 8, d, script=upload)),
        "4-new-conn": ("new TCP connection per request, 32 conns",
                       lambda port: lambda: wrk(f"http://127.0.0.1:{port['h1']}/", 32, d, headers=["Connection: close"])),
        # The same with nginx and HAProxy tuned to defer accepting, as
        # Portico does by default: the kernel feature alone, compared.
        "4b-new-conn-deferred": ("new TCP connection per request, 32 conns, all three deferring accept",
                                 lambda port: lambda: wrk(f"http://127.0.0.1:{port['h1d']}/", 32, d, headers=["Connection: close"])),
        "5-h2c": ("h2c downstream, 16 conns x 32 streams, HTTP/1.1 upstream",
                  lambda port: lambda: h2load(f"http://127.0.0.1:{port['h2c']}/", 16, 32, d)),
        "11-tls-small-get": ("HTTPS small GET, keep-alive, 64 conns (ECDSA P-256)",
                             lambda port: lambda: wrk(f"https://127.0.0.1:{port['tls']}/", 64, d)),
        "12-tls-16k": ("HTTPS 16 KiB response, keep-alive, 64 conns",
                       lambda port: lambda: wrk(f"https://127.0.0.1:{port['tls']}/16k", 64, d)),
        "13-tls-handshake": ("a full TLS handshake per request, no resumption (openssl s_time -new, 4 clients)",
                             lambda port: lambda: s_time(port["tls"], d, resume=False)),
        "14-tls-resumed": ("a resumed TLS handshake per request (openssl s_time -reuse, 4 clients)",
                           lambda port: lambda: s_time(port["tls"], d, resume=True)),
    }


def make_tls_cert():
    """One self-signed ECDSA P-256 certificate (key and chain; HAProxy wants
    both in one file) shared by the three proxies."""
    d = os.path.join(WORK, "tls")
    os.makedirs(d, mode=0o755)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1",
                    "-keyout", os.path.join(d, "key.pem"), "-out", os.path.join(d, "cert.pem")],
                   check=True, capture_output=True)
    with open(os.path.join(d, "combined.pem"), "w") as out:
        for name in ("cert.pem", "key.pem"):
            with open(os.path.join(d, name)) as f:
                out.write(f.read())
    for name in os.listdir(d):
        os.chmod(os.path.join(d, name), 0o644)  # nginx workers run unprivileged


S_TIME_CLIENTS = 4


def s_time(port, seconds, resume):
    """Handshakes per request: `openssl s_time` connects, fetches / over
    HTTP/1.0 and closes, again and again; -new never resumes, -reuse resumes
    every connection after the first. Several clients run at once so the
    proxy is not waiting on one client's round trips."""
    argv = ["taskset", "-c", LOAD_CORE, "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
            "-www", "/", "-time", str(seconds), "-reuse" if resume else "-new"]
    clients = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(S_TIME_CLIENTS)]
    res = {"requests": 0, "rps": 0.0, "p50_us": None, "p99_us": None, "errors": 0, "non2xx": 0}
    for c in clients:
        out, _ = c.communicate(timeout=seconds + 60)
        # "1234 connections in 6 real seconds, 120 bytes read per connection"
        lines = [line for line in out.splitlines() if "real seconds" in line]
        if not lines:
            res["errors"] += 1
            continue
        parts = lines[-1].replace(",", "").split()
        n, secs, per_conn = int(parts[0]), float(parts[3]), int(parts[6])
        res["requests"] += n
        res["rps"] += n / secs if secs else 0.0
        if per_conn == 0:
            res["non2xx"] += n  # handshakes without an HTTP answer
    return res


# Idle connections per proxy in the idle scenarios. 8,000, not 10,000: this
# machine's hard limit on open files is 20,000, and HAProxy, which counts two
# descriptors per connection, refuses to start with a maxconn above about
# 9,900. Figures are compared per connection.
IDLE_N = 8_000


def idle_conns(port, kind, n=IDLE_N, path="/"):
    """Opens n connections that each carry one request and then stay idle;
    returns the sockets (the caller measures memory, then closes them).
    `kind`: "h1" (cleartext HTTP/1.1), "tls" (HTTP/1.1 over TLS), "h2c"
    (HTTP/2 with prior knowledge) or "h2tls" (HTTP/2 over TLS, by ALPN)."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if kind == "h2tls":
        ctx.set_alpn_protocols(["h2"])
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        if kind in ("tls", "h2tls"):
            s = ctx.wrap_socket(s, server_hostname="bench.test")
        if kind == "h2tls" and s.selected_alpn_protocol() != "h2":
            raise RuntimeError(f"ALPN chose {s.selected_alpn_protocol()}, not h2")
        if kind in ("h2c", "h2tls"):
            h2c_get(s, path)
        else:
            s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
            read_response(s)
        socks.append(s)
    return socks


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2c_get(s, path="/"):
    """On an HTTP/2 connection (h2c, or TLS with h2 chosen): sends the
    preface, empty SETTINGS and one GET for `path` on stream 1 (static-table
    indexes, a literal path and authority), acknowledges the server's
    SETTINGS, and reads frames until the response's last one (at most the
    default window, 64 KiB)."""
    get = bytes([0x82, 0x86, 0x44, len(path)]) + path.encode() + bytes([0x41, 1]) + b"b"
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0) + h2_frame(1, 5, 1, get))
    data = b""
    while True:
        while len(data) < 9 or len(data) < 9 + int.from_bytes(data[:3], "big"):
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed mid-response: {data!r}")
            data += chunk
        length, kind, flags = int.from_bytes(data[:3], "big"), data[3], data[4]
        stream = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        data = data[9 + length:]
        if kind == 4 and not flags & 1:
            s.sendall(h2_frame(4, 1, 0))
        if kind == 7:
            raise RuntimeError("GOAWAY before the response")
        if stream == 1 and kind in (0, 1) and flags & 1:
            return


def open_connections(port):
    """Established connections to `port` on the proxy's side: the memory
    figure only counts if every idle connection is still open."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return out.count("\n")


def read_response(s):
    """Reads one whole response with a Content-Length body. (Reading only
    its first bytes let the next connection start while a proxy was still
    sending the body, so a proxy could need a second upstream connection
    for a request that was not yet over, and its memory counted it.)"""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed mid-response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed mid-body")
        body += chunk


GRPC_HEADERS = ["content-type: application/grpc", "te: trailers", "grpc-timeout: 10S"]


def grpc_call_file():
    """The request body of every unary call: one framed 64-byte message."""
    body = os.path.join(WORK, "grpc-call.bin")
    if not os.path.exists(body):
        with open(body, "wb") as f:
            msg = b"x" * 64
            f.write(b"\0" + len(msg).to_bytes(4, "big") + msg)
    return body


def grpc_check(name, port):
    """One call with nghttp before measuring: h2load counts an HTTP 200 as a
    success, and a gateway's gRPC error is an HTTP 200 too, so the call must
    be seen to end with grpc-status 0 (a real answer from the origin).
    Tried for up to 10 s: a discovering gateway may not have its instances
    yet."""
    argv = ["nghttp", "-v", "-d", grpc_call_file()]
    for h in GRPC_HEADERS:
        argv += ["-H", h]
    argv.append(f"http://127.0.0.1:{port['grpc']}/bench.Echo/Unary")
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
        if "grpc-status: 0" in out:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: a unary gRPC call did not end with grpc-status 0:\n{out}")
        time.sleep(0.2)


def grpc_unary(port, seconds):
    """Unary gRPC calls: h2load POSTs one framed message with the gRPC
    headers, 16 connections x 32 streams, to h2c gRPC origins."""
    return h2load(f"http://127.0.0.1:{port['grpc']}/bench.Echo/Unary", 16, 32, seconds,
                  data=grpc_call_file(), headers=GRPC_HEADERS)


def churn(stop, interval, registry_url):
    """Registers and deregisters an extra instance every `interval` seconds."""
    n = 0
    while not stop.is_set():
        port = ORIGIN_PORTS[n % 2]
        try:
            http("PUT", f"{registry_url}/v1/services/origin/instances/churn-{n}",
                 json.dumps({"address": "127.0.0.1", "port": port, "ttl": "1h"}))
            if n > 0:
                http("DELETE", f"{registry_url}/v1/services/origin/instances/churn-{n - 1}")
        except Exception as e:  # a refused call is a benchmark failure, reported below
            log("churn call failed:", e)
        n += 1
        stop.wait(interval)
    return n


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs):
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return 0.0
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m * 100 if m else 0.0


def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5, help="duration of each run")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per scenario")
    ap.add_argument("--rate", type=int, default=40000, help="fixed-rate pass, requests/s")
    ap.add_argument("--only", default="", help="comma-separated scenario ids to run (default: all)")
    ap.add_argument("--skip-registry", action="store_true", help="skip the registry benchmarks")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"), help="where to write results.json and table.md")
    args = ap.parse_args()
    raise_nofile()
    ports_free()

    global WORK
    WORK = tempfile.mkdtemp(prefix="portico-bench-")
    # nginx workers run unprivileged: they must be able to read the document root.
    os.chmod(WORK, 0o755)
    os.makedirs(os.path.join(WORK, "www"), mode=0o755)
    with open(os.path.join(WORK, "www", "16k"), "wb") as f:
        f.write(b"x" * 16384)
    make_tls_cert()
    procs = []
    results = {}
    extra = {}
    try:
        for port in ORIGIN_PORTS:
            conf = os.path.join(WORK, f"origin-{port}.conf")
            with open(conf, "w") as f:
                f.write(origin_conf(port))
            procs.append(Proc(f"origin-{port}", ["nginx", "-c", conf, "-p", WORK], LOAD_CORE))
        conf = os.path.join(WORK, "nginx-proxy.conf")
        with open(conf, "w") as f:
            f.write(nginx_proxy_conf())
        nginx = Proc("nginx", ["nginx", "-c", conf, "-p", WORK], PROXY_CORE)
        conf = os.path.join(WORK, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(haproxy_conf())
        haproxy = Proc("haproxy", ["haproxy", "-f", conf], PROXY_CORE)
        routes = os.path.join(WORK, "routes.toml")
        with open(routes, "w") as f:
            f.write(portico_routes(10))
        portico_bin = PORTICO
        portico_argv = [portico_bin, "--threads", "1", "gateway", "--listen",
                        f"127.0.0.1:{PORTS['portico']['h1']}", "--config", routes, "--no-access-log", "--no-admin",
                        "--tls-listen", f"127.0.0.1:{PORTS['portico']['tls']}",
                        "--tls-cert", f"{WORK}/tls/cert.pem:{WORK}/tls/key.pem"]
        # PORTICO_FLAGS: extra gateway flags, e.g. `--http1-server hyper` to
        # compare the two HTTP/1.1 servers in one binary.
        portico_argv += os.environ.get("PORTICO_FLAGS", "").split()
        portico = Proc("portico", portico_argv, PROXY_CORE, env=dict(os.environ, RUST_LOG="warn"))
        procs += [nginx, haproxy, portico]
        for port in ORIGIN_PORTS + [PORTS["nginx"]["h1"], PORTS["haproxy"]["h1"], PORTS["portico"]["h1"]]:
            wait_port(port)
        time.sleep(0.5)
        extra["portico_idle_rss_kb"] = portico.mem_kb("VmRSS")

        # Discovered-service Portico: a registry on the load core, a gateway following it.
        registry_dir = os.path.join(WORK, "registry-data")
        registry = Proc("registry", [portico_bin, "--threads", "1", "registry", "--control",
                                     f"127.0.0.1:{REGISTRY_PORT}", "--data-dir", registry_dir],
                        LOAD_CORE, env=dict(os.environ, RUST_LOG="warn"))
        procs.append(registry)
        wait_port(REGISTRY_PORT)
        registry_url = f"http://127.0.0.1:{REGISTRY_PORT}"
        for i, port in enumerate(ORIGIN_PORTS):
            http("PUT", f"{registry_url}/v1/services/origin/instances/o{i}",
                 json.dumps({"address": "127.0.0.1", "port": port, "ttl": "1h"}))
        for i, port in enumerate(GRPC_ORIGIN_PORTS):
            procs.append(Proc(f"grpc-origin-{port}", [os.path.join(RELEASE, "grpc_origin"), "--listen",
                                                      f"127.0.0.1:{port}"], LOAD_CORE))
            http("PUT", f"{registry_url}/v1/services/grpc/instances/g{i}",
                 json.dumps({"address": "127.0.0.1", "port": port, "ttl": "1h", "scheme": "h2c"}))
        disc_routes = os.path.join(WORK, "disc-routes.toml")
        with open(disc_routes, "w") as f:
            f.write('[[route]]\nname = "origin"\nservice = "origin"\n\n'
                    '[[route]]\nname = "grpc"\npath_prefix = "/bench.Echo"\nservice = "grpc"\n')
        # PORTICO_FLAGS here too: this gateway carries the gRPC scenario.
        discovered = Proc("portico-discovered", [portico_bin, "--threads", "1", "gateway", "--listen",
                                                 f"127.0.0.1:{PORTS['portico-discovered']['h1']}", "--config", disc_routes,
                                                 "--registry", registry_url, "--no-access-log", "--no-admin"]
                          + os.environ.get("PORTICO_FLAGS", "").split(),
                          PROXY_CORE, env=dict(os.environ, RUST_LOG="warn"))
        procs.append(discovered)
        big_routes = os.path.join(WORK, "routes-10k.toml")
        with open(big_routes, "w") as f:
            f.write(portico_routes(10_000))
        big = Proc("portico-10k-routes", [portico_bin, "--threads", "1", "gateway", "--listen",
                                          f"127.0.0.1:{PORTS['portico-10k-routes']['h1']}", "--config", big_routes,
                                          "--no-access-log", "--no-admin"], PROXY_CORE, env=dict(os.environ, RUST_LOG="warn"))
        procs.append(big)
        feature_routes = os.path.join(WORK, "routes-features.toml")
        ups = ", ".join(f'"127.0.0.1:{p}"' for p in ORIGIN_PORTS)
        with open(feature_routes, "w") as f:
            f.write(f'''[[route]]
name = "main"
upstreams = [{ups}]
lb = "least_request"
[route.retry]
attempts = 2
on = ["reset", "502", "503", "504"]
[route.limits]
max_requests = 10000
max_retries = 100
[route.breaker]
consecutive_failures = 5
[route.health_check]
path = "/"
interval = "1s"
''')
        features = Proc("portico-features", [portico_bin, "--threads", "1", "gateway", "--listen",
                                             f"127.0.0.1:{PORTS['portico-features']['h1']}", "--config", feature_routes,
                                             "--no-access-log", "--no-admin"], PROXY_CORE, env=dict(os.environ, RUST_LOG="warn"))
        procs.append(features)
        filtered_routes = os.path.join(WORK, "routes-filters.toml")
        with open(filtered_routes, "w") as f:
            f.write(filter_routes())
        filtered = Proc("portico-filters", [portico_bin, "--threads", "1", "gateway", "--listen",
                                            f"127.0.0.1:{PORTS['portico-filters']['h1']}", "--config", filtered_routes,
                                            "--no-access-log", "--no-admin"], PROXY_CORE, env=dict(os.environ, RUST_LOG="warn"))
        procs.append(filtered)
        for p in (PORTS["portico-discovered"]["h1"], PORTS["portico-10k-routes"]["h1"], PORTS["portico-features"]["h1"],
                  PORTS["portico-filters"]["h1"]):
            wait_port(p)
        # The discovered gateway must have the instances before it is measured.
        deadline = time.time() + 20
        while True:
            try:
                if http("GET", f"http://127.0.0.1:{PORTS['portico-discovered']['h1']}/")[0] == 200:
                    break
            except Exception:
                pass
            if time.time() > deadline:
                raise RuntimeError("discovered gateway never routed")
            time.sleep(0.05)

        peers = {"nginx": nginx, "haproxy": haproxy, "portico": portico}
        only = set(filter(None, args.only.split(",")))
        for sid, (title, make) in scenarios(args).items():
            if only and sid not in only:
                continue
            log(f"== {sid}: {title}")
            runs = {name: [] for name in peers}
            for rep in range(args.reps):
                for name, proc in rotated(peers.items(), rep):
                    r = measure(proc, make(PORTS[name]))
                    runs[name].append(r)
                    log(f"   rep {rep + 1} {name:8} {r['rps']:>10,.0f} req/s  {fmt(r['cpu_us_per_req'], 2):>6} CPU-us/req (user {fmt(r.get('user_us_per_req'), 2)})"
                        f"  p99 {fmt(r['p99_us'], 0)} us  errors {r['errors']}  non2xx {r['non2xx']}  time_wait {r['time_wait_before']}")
            results[sid] = {"title": title, "runs": runs}

        if not only or "10-grpc-unary" in only:
            # Portico's gRPC origins are discovered (h2c instances in the
            # registry); nginx (grpc_pass) and HAProxy (proto h2) list them.
            log("== 10-grpc-unary: unary gRPC calls, h2c both sides, 16 conns x 32 streams")
            for port in GRPC_ORIGIN_PORTS + [PORTS["nginx"]["grpc"], PORTS["haproxy"]["grpc"]]:
                wait_port(port)
            runs = {"nginx": [], "haproxy": [], "portico": []}
            grpc_peers = (("nginx", nginx, PORTS["nginx"]), ("haproxy", haproxy, PORTS["haproxy"]),
                          ("portico", discovered, PORTS["portico-discovered"]))
            for name, _, port in grpc_peers:
                grpc_check(name, port)
            for rep in range(args.reps):
                for name, proc, port in rotated(grpc_peers, rep):
                    r = measure(proc, lambda: grpc_unary(port, args.seconds))
                    runs[name].append(r)
                    log(f"   rep {rep + 1} {name:8} {r['rps']:>10,.0f} req/s  {fmt(r['cpu_us_per_req'], 2):>6} CPU-us/req (user {fmt(r.get('user_us_per_req'), 2)})"
                        f"  p99 {fmt(r['p99_us'], 0)} us  errors {r['errors']}  non2xx {r['non2xx']}  time_wait {r['time_wait_before']}")
            results["10-grpc-unary"] = {"title": "unary gRPC calls (h2load, 16 x 32 streams)", "runs": runs}

        if not only or "16-access-log" in only:
            log("== 16-access-log: small GET, keep-alive, 64 conns, each proxy with its access log on")
            runs, more = access_log_scenario(args, routes, portico_bin)
            results["16-access-log"] = {"title": "small GET with the access log on", "runs": runs}
            extra.update(more)

        # Portico-only scenarios: the route table's size, and instance churn.
        if not only or "6-routes" in only:
            log("== 6-routes: 10 routes vs 10,000 routes (Portico)")
            runs = {"portico": [], "portico-10k-routes": []}
            for rep in range(args.reps):
                for name, proc in rotated((("portico", portico), ("portico-10k-routes", big)), rep):
                    r = measure(proc, lambda: wrk(f"http://127.0.0.1:{PORTS[name]['h1']}/", 64, args.seconds))
                    runs[name].append(r)
                    log(f"   rep {rep + 1} {name:20} {r['rps']:>10,.0f} req/s  {fmt(r['cpu_us_per_req'], 2)} CPU-us/req")
            results["6-routes"] = {"title": "10 routes vs 10,000 routes", "runs": runs}
        if not only or "9-features" in only:
            log("== 9-features: default route vs least_request + retry policy + limits + breaker + health check")
            runs = {"portico": [], "portico-features": []}
            for rep in range(args.reps):
                for name, proc in rotated((("portico", portico), ("portico-features", features)), rep):
                    r = measure(proc, lambda: wrk(f"http://127.0.0.1:{PORTS[name]['h1']}/", 64, args.seconds))
                    runs[name].append(r)
                    log(f"   rep {rep + 1} {name:20} {r['rps']:>10,.0f} req/s  {fmt(r['cpu_us_per_req'], 2)} CPU-us/req")
            results["9-features"] = {"title": "resilience features on vs off", "runs": runs}
        if not only or "17-filters" in only:
            log("== 17-filters: route without filters vs jwt + rate_limit + 2 header edits (same token sent to both)")
            runs = {"portico": [], "portico-filters": []}
            auth = ["Authorization: Bearer " + hs256_token(JWT_SECRET)]
            for rep in range(args.reps):
                for name, proc in rotated((("portico", portico), ("portico-filters", filtered)), rep):
                    r = measure(proc, lambda: wrk(f"http://127.0.0.1:{PORTS[name]['h1']}/", 64, args.seconds, headers=auth))
                    runs[name].append(r)
                    log(f"   rep {rep + 1} {name:20} {r['rps']:>10,.0f} req/s  {fmt(r['cpu_us_per_req'], 2)} CPU-us/req"
                        f"  non2xx {r['non2xx']}")
            results["17-filters"] = {"title": "filters on vs off", "runs": runs}
        if not only or "7-churn" in only:
            log("== 7-churn: discovered service, steady vs an instance registered/deregistered every 100 ms")
            runs = {"steady": [], "churn": []}
            url = f"http://127.0.0.1:{PORTS['portico-discovered']['h1']}/"
            for rep in range(args.reps):
                runs["steady"].append(measure(discovered, lambda: wrk(url, 64, args.seconds)))
                stop = threading.Event()
                t = threading.Thread(target=churn, args=(stop, 0.1, registry_url))
                t.start()
                try:
                    runs["churn"].append(measure(discovered, lambda: wrk(url, 64, args.seconds)))
                finally:
                    stop.set()
                    t.join()
                for name in ("steady", "churn"):
                    r = runs[name][-1]
                    log(f"   rep {rep + 1} {name:8} {r['rps']:>10,.0f} req/s  {fmt(r['cpu_us_per_req'], 2)} CPU-us/req"
                        f"  non2xx {r['non2xx']}  errors {r['errors']}")
            results["7-churn"] = {"title": "instance churn every 100 ms", "runs": runs}

        # Peaks before the idle-connection step, which restarts each proxy.
        for name, proc in list(peers.items()) + [("portico-discovered", discovered), ("portico-10k-routes", big)]:
            extra[f"{name}_peak_rss_kb"] = proc.mem_kb("VmHWM")

        # Idle connections: each has carried one request (so it sits in
        # keep-alive; the upstream side needs only one pooled connection, so
        # the figure is the downstream cost), then the proxy's RSS is read.
        idle_kinds = (("8-idle-conns", "h1", "cleartext HTTP/1.1"), ("15-idle-tls", "tls", "HTTP/1.1 over TLS"),
                      ("18-idle-h2c", "h2c", "h2c (prior knowledge)"), ("19-idle-h2-tls", "h2tls", "HTTP/2 over TLS"),
                      ("20-idle-h2c-16k", "h2c", "h2c, each after a 16 KiB response,"))
        for sid, conn_kind, kind in idle_kinds:
            if only and sid not in only:
                continue
            log(f"== {sid}: {IDLE_N:,} idle {kind} keep-alive connections, each proxy in turn")
            for name, proc in peers.items():
                # A fresh process, each proxy: memory freed by an earlier
                # scenario's connections stays in the allocator and would
                # be reused, hiding what the connections cost.
                if name == "portico":
                    portico.stop()
                    fresh = proc = Proc(f"portico-{sid}", portico_argv, PROXY_CORE, env=dict(os.environ, RUST_LOG="warn"))
                else:
                    fresh = proc = proc.again(f"{name}-{sid}")
                port = PORTS[name]["tls" if conn_kind == "h2tls" else conn_kind]
                wait_port(port)
                time.sleep(0.5)
                before = proc.mem_kb("VmRSS")
                socks = idle_conns(port, conn_kind, path="/16k" if sid.endswith("-16k") else "/")
                time.sleep(1)
                after = proc.mem_kb("VmRSS")
                still_open = open_connections(port)
                if still_open < IDLE_N:
                    raise RuntimeError(f"{name}: only {still_open} of {IDLE_N} idle connections still open")
                for s in socks:
                    s.close()
                suffix = {"h1": "", "tls": "_tls", "h2c": "_h2c", "h2tls": "_h2_tls"}[conn_kind]
                suffix += "_16k" if sid.endswith("-16k") else ""
                extra[f"{name}_idle_{IDLE_N}{suffix}_added_kb"] = after - before
                log(f"   {name:8} RSS {before} kB -> {after} kB ({(after - before) / IDLE_N:.1f} kB per connection)")
                fresh.stop()
                time.sleep(1)  # let the proxy close its side before the next one

        if not args.skip_registry:
            extra.update(registry_benchmarks(args))
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(WORK, ignore_errors=True)

    machine = {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "nginx": version(["nginx", "-v"]),
        "haproxy": version(["haproxy", "-v"]).splitlines()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["bench/run.sh"] + sys.argv[1:]),
        "seconds": args.seconds,
        "reps": args.reps,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": machine, "results": results, "extra": extra}, f, indent=1)
    table = render(machine, results, extra)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)


def registry_benchmarks(args):
    """Registrations/s, heartbeats/s and memory, registry alone on the proxy core."""
    out = {}
    tool = os.path.join(RELEASE, "registry_load")
    data = os.path.join(WORK, "reg-bench")
    reg = Proc("registry-bench", [PORTICO, "--threads", "1", "registry", "--control",
                                  "127.0.0.1:19491", "--data-dir", data], PROXY_CORE, env=dict(os.environ, RUST_LOG="warn"))
    try:
        wait_port(19491)
        url = "http://127.0.0.1:19491"
        log("== registry: 10,000 registrations, then heartbeats")
        r = subprocess.run(["taskset", "-c", LOAD_CORE, tool, "--registry", url, "--instances", "10000",
                            "--seconds", str(args.seconds)], capture_output=True, text=True, timeout=300)
        log("  ", r.stdout.strip().replace("\n", "\n   "))
        for line in r.stdout.splitlines():
            if line.startswith("registrations:"):
                out["registrations_per_s"] = float(line.split("=")[1].split("/")[0])
            if line.startswith("heartbeats:"):
                out["heartbeats_per_s"] = float(line.split("=")[1].split("/")[0])
        out["registry_rss_10k_kb"] = reg.mem_kb("VmRSS")
        log("== registry: up to 100,000 instances")
        subprocess.run(["taskset", "-c", LOAD_CORE, tool, "--registry", url, "--instances", "100000",
                        "--services", "1000", "--no-heartbeats"], capture_output=True, text=True, timeout=600)
        out["registry_rss_100k_kb"] = reg.mem_kb("VmRSS")
        log(f"   RSS 10k: {out['registry_rss_10k_kb']} kB, 100k: {out['registry_rss_100k_kb']} kB")
    finally:
        reg.stop()

    # Registration-to-routable, with 1,000 services and 10,000 instances present.
    data = os.path.join(WORK, "up-bench")
    up = Proc("up-bench", [PORTICO, "up", "--listen", "127.0.0.1:19492", "--control",
                           "127.0.0.1:19493", "--data-dir", data, "--no-access-log", "--no-admin"], PROXY_CORE,
              env=dict(os.environ, RUST_LOG="warn"))
    try:
        wait_port(19493)
        wait_port(19492)
        log("== registration-to-routable with 1,000 services / 10,000 instances")
        r = subprocess.run(["taskset", "-c", LOAD_CORE, os.path.join(RELEASE, "propagation"), "--registry",
                            "http://127.0.0.1:19493", "--gateway", "http://127.0.0.1:19492", "--trials", "300",
                            "--preload-services", "1000", "--preload-instances", "10000"],
                           capture_output=True, text=True, timeout=600)
        log("  ", r.stdout.strip().replace("\n", "\n   "))
        for line in r.stdout.splitlines():
            if line.startswith("registration-to-routable"):
                parts = line.split()
                out["propagation"] = line.split(": ", 1)[1]
                out["propagation_p50"] = parts[parts.index("p50") + 1]
                out["propagation_p99"] = parts[parts.index("p99") + 1]
    finally:
        up.stop()

    out.update(route_propagation_benchmark())
    return out


def route_propagation_benchmark():
    """Route-change-to-routable across three gateways, with 1,000 routes present."""
    out = {}
    # Route-change-to-routable across three gateways following one registry,
    # with 1,000 routes present (registry and gateways share the proxy core).
    data = os.path.join(WORK, "routes-bench")
    env = dict(os.environ, RUST_LOG="warn")
    reg = Proc("routes-registry", [PORTICO, "registry", "--control", "127.0.0.1:19494",
                                   "--data-dir", data], PROXY_CORE, env=env)
    gateways = [Proc(f"routes-gateway-{i}", [PORTICO, "gateway", "--registry",
                                             "http://127.0.0.1:19494", "--listen", f"127.0.0.1:{19495 + i}",
                                             "--no-admin", "--no-access-log"], PROXY_CORE, env=env)
                for i in range(3)]
    try:
        for port in (19494, 19495, 19496, 19497):
            wait_port(port)
        log("== route-change-to-routable, three gateways, 1,000 routes")
        r = subprocess.run(["taskset", "-c", LOAD_CORE, os.path.join(RELEASE, "route_propagation"), "--registry",
                            "http://127.0.0.1:19494", "--gateways",
                            "http://127.0.0.1:19495,http://127.0.0.1:19496,http://127.0.0.1:19497",
                            "--trials", "300", "--preload-routes", "1000"],
                           capture_output=True, text=True, timeout=900)
        log("  ", r.stdout.strip().replace("\n", "\n   "))
        for line in r.stdout.splitlines():
            if line.startswith("route-change-to-routable, all"):
                out["route_change_to_routable_3_gateways"] = line.split(": ", 1)[1]
    finally:
        for g in gateways:
            g.stop()
        reg.stop()
    return out


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def version(argv):
    r = subprocess.run(argv, capture_output=True, text=True)
    return (r.stdout + r.stderr).strip()


def p99_pairs(ours, theirs):
    """Portico's p99 over a peer's, paired run by run: the median, the
    least and most, and in how many repetitions Portico's was no higher.
    A p99 moves with the machine from one repetition to the next; the
    spread says whether a difference in the medians is more than that.
    A pair counts as no higher as it is shown, to two places.)"""
    pairs = [a["p99_us"] / b["p99_us"] for a, b in zip(ours, theirs) if a.get("p99_us") and b.get("p99_us")]
    if not pairs:
        return "-"
    return (f"{median(pairs):.2f} ({min(pairs):.2f}-{max(pairs):.2f}; "
            f"{sum(round(p, 2) <= 1 for p in pairs)} of {len(pairs)})")


def render(machine, results, extra):
    out = []
    out.append(f"Machine: {machine['nproc']} cores, {machine['cpu']}, kernel {machine['kernel']}; "
               f"{machine['nginx']}; {machine['haproxy']}")
    out.append(f"Date: {machine['date']}. Command: `{machine['command']}` "
               f"({machine['reps']} interleaved repetitions of {machine['seconds']} s; medians, spread = (max-min)/median).")
    out.append("")
    out.append("| scenario | proxy | req/s | spread | CPU-us/req | spread | of it user | p50 us | p99 us "
               "| errors+non2xx | upstream reuse | syscalls/req | ctx switches/req | RSS after |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for sid, res in results.items():
        meds = {}
        for name, runs in res["runs"].items():
            rps = [r["rps"] for r in runs]
            cpu = [r["cpu_us_per_req"] for r in runs]
            meds[name] = (median(rps), median(cpu))
            bad = sum(r["errors"] + r["non2xx"] for r in runs)
            out.append(f"| {sid} | {name} | {fmt(median(rps), 0)} | {spread(rps):.0f}% | {fmt(median(cpu), 2)} | "
                       f"{spread(cpu):.0f}% | {fmt(median([r.get('user_us_per_req') for r in runs]), 2)} | "
                       f"{fmt(median([r['p50_us'] for r in runs]), 0)} | "
                       f"{fmt(median([r['p99_us'] for r in runs]), 0)} | {bad} | "
                       f"{fmt(median([r.get('upstream_reuse_pct') for r in runs]), 2)}% | "
                       f"{fmt(median([r.get('syscalls_per_req') for r in runs]), 2)} | "
                       f"{fmt(median([r.get('switches_per_req') for r in runs]), 3)} | "
                       f"{fmt(max(r['rss_kb'] for r in runs) // 1024)} MB |")
        runs = res["runs"]
        if "nginx" in runs and "portico" in runs:
            for peer in ("nginx", "haproxy"):
                # Paired run by run: requests per core = 1e6 / CPU-us per request.
                pairs = [p[peer]["cpu_us_per_req"] / p["portico"]["cpu_us_per_req"]
                         for p in ({"portico": a, peer: b} for a, b in zip(runs["portico"], runs[peer]))
                         if p["portico"]["cpu_us_per_req"] and p[peer]["cpu_us_per_req"]]
                rps_pairs = [a["rps"] / b["rps"] for a, b in zip(runs["portico"], runs[peer]) if b["rps"]]
                ratios.append(f"| {sid} | Portico / {peer} | {fmt(median(rps_pairs), 2)} | {fmt(median(pairs), 2)} "
                              f"| {p99_pairs(runs['portico'], runs[peer])} |")
        elif "portico-10k-routes" in runs:
            pairs = [a["cpu_us_per_req"] / b["cpu_us_per_req"] for a, b in zip(runs["portico"], runs["portico-10k-routes"])]
            rps_pairs = [b["rps"] / a["rps"] for a, b in zip(runs["portico"], runs["portico-10k-routes"])]
            ratios.append(f"| {sid} | 10,000 routes / 10 routes | {fmt(median(rps_pairs), 2)} | {fmt(median(pairs), 2)} | - |")
        elif "portico-features" in runs:
            pairs = [a["cpu_us_per_req"] / b["cpu_us_per_req"] for a, b in zip(runs["portico"], runs["portico-features"])]
            rps_pairs = [b["rps"] / a["rps"] for a, b in zip(runs["portico"], runs["portico-features"])]
            ratios.append(f"| {sid} | features on / off | {fmt(median(rps_pairs), 2)} | {fmt(median(pairs), 2)} | - |")
        elif "portico-filters" in runs:
            pairs = [a["cpu_us_per_req"] / b["cpu_us_per_req"] for a, b in zip(runs["portico"], runs["portico-filters"])]
            rps_pairs = [b["rps"] / a["rps"] for a, b in zip(runs["portico"], runs["portico-filters"])]
            ratios.append(f"| {sid} | filters on / off | {fmt(median(rps_pairs), 2)} | {fmt(median(pairs), 2)} | - |")
        elif "churn" in runs:
            pairs = [a["cpu_us_per_req"] / b["cpu_us_per_req"] for a, b in zip(runs["steady"], runs["churn"])]
            rps_pairs = [b["rps"] / a["rps"] for a, b in zip(runs["steady"], runs["churn"])]
            ratios.append(f"| {sid} | churn / steady | {fmt(median(rps_pairs), 2)} | {fmt(median(pairs), 2)} | - |")
    out.append("")
    out.append("Ratios (median of run-by-run pairs; above 1 means Portico is ahead, "
               "but for the p99 column, where below 1 means Portico's is lower):")
    out.append("")
    out.append("| scenario | ratio | req/s | requests per core (1/CPU-us) "
               "| p99, Portico's over the peer's (least-most; repetitions lower or equal) |")
    out.append("|---|---|---:|---:|---:|")
    out += ratios
    out.append("")
    out.append("Other figures:")
    out.append("")
    for k, v in extra.items():
        out.append(f"- {k}: {fmt(v) if not isinstance(v, str) else v}")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
