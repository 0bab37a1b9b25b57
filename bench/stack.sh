#!/usr/bin/env bash
# The stack a proxied small GET uses: the frames on the stack when the
# request goes upstream (each function's own frame size, largest first
# among those over 400 bytes), and the 64-byte stack lines the worker
# writes between two of its `epoll_wait`s.
#
#   bench/stack.sh                      # target/release/portico
#   BIN=/tmp/portico-old bench/stack.sh
#
# Why: a request's data must fit the first-level data cache (32 KiB on
# these machines) to stay in it from one request to the next, and the
# stack is part of that data. A function whose poll inlines every path
# a request might take keeps room for all of their temporaries; the
# frames' sizes say where, the written lines what it costs.
#
# How: `portico gateway --threads 1 --no-access-log` in front of a Python
# origin; gdb attaches to the gateway (so: a debugger allowed to attach
# to a child of this shell, as root on these machines). For the frames,
# it stops at the first `sendto` of a request and walks the stack. For
# the lines, it fills the 80 KiB below the worker's stack pointer with a
# pattern at each `epoll_wait` and, at the next, counts the lines no longer
# holding it; one client sends six requests on one connection, a second
# apart, and the script prints each wake-up's count (a request is two:
# the request going upstream, the response coming back). Writes only:
# a line read but not written is not counted. Everything on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/portico}
[ -x "$BIN" ] || cargo build --release --bin portico
command -v gdb >/dev/null || { echo "bench/stack.sh needs gdb" >&2; exit 2; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

. bench/one-gateway.sh

# Waits (bounded: 90 s) until gdb has attached and written its ready file.
attached() {
  # gdb reads the binary's symbols first: 10-20 s on a busy machine.
  for _ in $(seq 900); do
    [ -e "$work/ready" ] && return 0
    sleep 0.1
  done
  echo "gdb did not attach" >&2
  return 1
}

cat >"$work/frames.py" <<PY
import gdb, re
gdb.execute("catch syscall sendto")
open("$work/ready", "w").close()
for _ in range(20):
    gdb.execute("continue", to_string=True)
    f = gdb.newest_frame()
    if int(f.read_register("rsp")) < 0x7F0000000000:
        continue  # not the worker's stack (the main thread's is high)
    rows = []
    while f is not None and f.older() is not None:
        o = f.older()
        sym = gdb.execute("info symbol 0x%x" % f.pc(), to_string=True).split(" + ")[0].split(" in section")[0]
        sym = re.sub(r"::h[0-9a-f]{16}$", "", sym.strip())
        rows.append((int(o.read_register("rsp")) - int(f.read_register("rsp")), sym.strip()))
        f = o
    for size, name in sorted((r for r in rows if r[0] > 400), reverse=True):
        print("frame %6d  %s" % (size, name[:120]), flush=True)
    break
gdb.execute("detach")
PY
rm -f "$work/ready"
timeout 180 gdb -q -batch -p "$gateway" -x "$work/frames.py" >"$work/frames.out" 2>&1 &
attached && client 1
wait $! || true
echo "own stack frames at the request's send upstream (bytes):"
grep '^frame' "$work/frames.out" || { echo "(none: see $work/frames.out)"; cat "$work/frames.out"; }

cat >"$work/lines.py" <<PY
import gdb
N = 80 * 1024
PAT = b"\xa5" * N
gdb.execute("catch syscall epoll_wait")
inf = gdb.selected_inferior()
base = None
seen = 0
open("$work/ready", "w").close()
for _ in range(300):
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error:
        break
    lo = int(gdb.newest_frame().read_register("rsp")) - N
    if base == lo:
        mem = bytes(inf.read_memory(lo, N - 512))
        lines = [i for i in range(0, len(mem), 64) if mem[i:i + 64] != PAT[:64]]
        if len(lines) > 50:
            print("wake-up: %d stack lines written, %d bytes deep" % (len(lines), N - lines[0]), flush=True)
            seen += 1
            if seen == 12:
                break
    inf.write_memory(lo, PAT[:N - 512])
    base = lo
gdb.execute("detach")
PY
rm -f "$work/ready"
timeout 180 gdb -q -batch -p "$gateway" -x "$work/lines.py" >"$work/lines.out" 2>&1 &
gdb_pid=$!
attached && client 6
wait "$gdb_pid" || true
echo "per wake-up of a request (over 50 lines; the first request's first"
echo "wake-up also reads the connection's first head):"
grep '^wake-up' "$work/lines.out" || { echo "(none: see $work/lines.out)"; cat "$work/lines.out"; }
