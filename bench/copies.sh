#!/usr/bin/env bash
# Every `memcpy` a proxied keep-alive small GET makes: its size and where
# it was called from (the source line and the inlined functions around
# it), for the request's two wake-ups (the request going upstream, the
# response coming back), and the totals.
#
#   bench/copies.sh                      # target/release/portico
#   BIN=/tmp/portico-old bench/copies.sh
#   ALL=1 bench/copies.sh                # also the small copies (<= 64 bytes:
#                                        # header bytes into buffers)
#
# Why: a value moved through layers of futures (a parsed head, the
# request, the response, a future built in layers) is copied at each
# layer; callgrind counts the copies' instructions and cache misses under
# `memcpy` but not which values they were. This names them.
#
# How: `portico gateway --threads 1 --no-access-log` in front of a Python
# origin; gdb attaches (as bench/stack.sh: a debugger allowed to attach to
# a child of this shell), breaks on `memcpy` and on `epoll_wait`, and
# records each copy's return address and length while one client sends
# four requests on one connection, 1.5 s apart. The last request's two
# wake-ups (the two stretches between `epoll_wait`s with over 20 copies)
# are printed, resolved with `addr2line -i`. Everything on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/portico}
[ -x "$BIN" ] || cargo build --release --bin portico
for tool in gdb addr2line; do
  command -v "$tool" >/dev/null || { echo "bench/copies.sh needs $tool" >&2; exit 2; }
done
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

. bench/one-gateway.sh

cat >"$work/copies.py" <<PY
import gdb, os
gdb.execute("set pagination off")
gdb.execute("break memcpy")  # gdb follows the ifunc to the variant in use
gdb.execute("catch syscall epoll_wait")
open("$work/ready", "w").close()
events = []
for _ in range(200000):
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error:
        break
    if os.path.exists("$work/done"):
        break
    f = gdb.newest_frame()
    if "epoll" in (f.name() or ""):
        events.append("EPOLL")
    else:
        ret = int(gdb.parse_and_eval("*(unsigned long*)\$rsp"))
        events.append("CPY 0x%x %d" % (ret, int(f.read_register("rdx"))))
for line in gdb.execute("info proc mappings", to_string=True).splitlines():
    if "$(basename "$BIN")" in line:
        print("BASE " + line.split()[0])
        break
for e in events:
    print(e)
gdb.execute("detach")
PY
timeout 300 gdb -q -batch -p "$gateway" -x "$work/copies.py" >"$work/gdb.out" 2>&1 &
gdb_pid=$!
for _ in $(seq 900); do
  [ -e "$work/ready" ] && break
  sleep 0.1
done
[ -e "$work/ready" ] || { echo "gdb did not attach" >&2; exit 1; }
client 4 1.5
touch "$work/done"
curl -s "http://127.0.0.1:$gateway_port/" >/dev/null || true
wait "$gdb_pid" || true

python3 - "$BIN" "$work/gdb.out" "${ALL:-0}" <<'PY'
import subprocess, sys
binary, out, show_all = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
lines = [l for l in open(out).read().splitlines() if l.startswith(("BASE", "CPY", "EPOLL"))]
base = next(int(l.split()[1], 16) for l in lines if l.startswith("BASE"))
groups, cur = [], []
for l in lines:
    if l.startswith("CPY"):
        cur.append(l)
    elif l.startswith("EPOLL") and cur:
        groups.append(cur)
        cur = []
wakeups = [g for g in groups if len(g) > 20][-2:]
if len(wakeups) < 2:
    sys.exit("fewer than two wake-ups with copies were seen; see " + out)
copies = [(w, int(l.split()[1], 16) - base, int(l.split()[2])) for w, g in enumerate(wakeups) for l in g]
query = "\n".join("0x%x" % (a - 1) for _, a, _ in copies)
resolved = subprocess.run(["addr2line", "-a", "-f", "-i", "-C", "-e", binary],
                          input=query, capture_output=True, text=True).stdout.splitlines()
frames, block = [], None
for l in resolved:
    if l.startswith("0x"):
        block = []
        frames.append(block)
    elif block is not None and l:
        block.append(l)
def short(name):
    name = name.split("<")[0] if name.count("<") > 2 else name
    return name.replace("portico_gateway::", "").replace("{{closure}}", "{closure}")[-56:]
total = {0: [0, 0], 1: [0, 0]}
print("wake-up  bytes  where (innermost first)")
for (w, _, n), block in zip(copies, frames):
    total[w][0] += 1
    total[w][1] += n
    if n <= 64 and not show_all:
        continue
    chain = [(short(block[i]), block[i + 1].split("/")[-1]) for i in range(0, len(block) - 1, 2)]
    print("%7d %6d  %s" % (w, n, " <- ".join("%s@%s" % c for c in chain[:3])))
for w in (0, 1):
    print("wake-up %d: %d copies, %d bytes" % (w, total[w][0], total[w][1]))
print("request: %d copies, %d bytes" % (total[0][0] + total[1][0], total[0][1] + total[1][1]))
PY
