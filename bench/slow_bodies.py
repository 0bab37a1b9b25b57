#!/usr/bin/env python3
"""Memory a gateway holds for slow uploads: N connections each send a
request head announcing 1 MiB of body and then trickle it, a piece every
half second, as a client on a slow link (or one out to tie the gateway's memory
up) would. Prints the gateway's RSS before the uploads and while all N are
in progress, and the heap in use (glibc's `malloc_stats`, called in the
gateway through gdb: RSS keeps what was freed) before and during, each per
upload.

    bench/slow_bodies.py BIN [N] [FIRST] [PIECE]

BIN is a portico binary, N the number of uploads (default 2000), FIRST the
body bytes sent with the head (default 8192: more than a head's read, so
the gateway's first read of the connection comes full, as an upload's does
when its body follows the head in the same write), PIECE the bytes sent on
each connection every half second after that (default 4096: a head's read,
which comes full, so the gateway reads what follows it with a body's room).

The gateway (`gateway --threads 1 --no-access-log`) proxies to an nginx
origin (bench/ok-origin.sh) that reads each body as it comes. Everything
is on 127.0.0.1; the trickle lasts TRICKLE_SECONDS (default 6), the heap
is sampled in each turn of its last two seconds, each time at another
point of the wait between sends (the largest is printed; gdb's attach
itself takes a good part of a turn), and every
connection is closed at the end. Needs gdb, and an open files limit of
3 N (`ulimit -n`).
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def heap_in_use(pid, log):
    """glibc's bytes in use over all arenas, printed by `malloc_stats` (to
    the gateway's stderr, `log`) when gdb calls it in the gateway."""
    start = os.path.getsize(log)
    subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "call (void) malloc_stats()"],
                   capture_output=True, timeout=60)
    # (gdb exits 1 on this machine kind, "Couldn't write extended state
    # status", after the call: the call is made all the same, and its
    # figures are checked for below.)
    with open(log) as f:
        f.seek(start)
        text = f.read()
    total = text[text.index("Total (incl. mmap):"):]
    return int(re.search(r"in use bytes\s*=\s*(\d+)", total).group(1)) // 1024


def wait_for(what, check, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def start(binary, work, log, procs):
    """Starts the origin and the gateway (appended to `procs` as they
    start, so the caller stops whatever did); the gateway's port."""
    origin, gw, admin = free_port(), free_port(), free_port()
    conf = subprocess.run(
        ["bash", "-c", f'. "{HERE}/ok-origin.sh"; ok_origin_conf "{work}" {origin}'],
        check=True, capture_output=True, text=True).stdout
    with open(os.path.join(work, "origin.conf"), "w") as f:
        f.write(conf)
    with open(os.path.join(work, "routes.toml"), "w") as f:
        f.write(f'[[route]]\nname = "all"\npath_prefix = "/"\nupstreams = ["127.0.0.1:{origin}"]\n')
    procs.append(subprocess.Popen(["nginx", "-c", os.path.join(work, "origin.conf")]))
    procs.append(subprocess.Popen(
        [binary, "--threads", "1", "gateway", "--listen", f"127.0.0.1:{gw}",
         "--config", os.path.join(work, "routes.toml"), "--admin", f"127.0.0.1:{admin}",
         "--no-access-log"], stderr=log))
    wait_for("the gateway", lambda: answers(gw))
    return gw


def stop(procs):
    for p in reversed(procs):
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def check_machine(n):
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 3 * n:  # the uploads' sockets here, and the gateway's two each
        sys.exit(f"open files limit {soft}: raise it (ulimit -n) to {3 * n} or more")
    if subprocess.run(["which", "gdb"], capture_output=True).returncode != 0:
        sys.exit("bench/slow_bodies.py needs gdb (the heap figure is glibc's malloc_stats)")
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            if f.read().strip() not in ("0", "1") and os.geteuid() != 0:
                sys.exit("gdb cannot attach here (kernel.yama.ptrace_scope)")
    except FileNotFoundError:
        pass


def trickle(conns, piece, seconds, sample):
    """Sends `piece` bytes on every connection each half second for
    `seconds`; in the last turns, calls `sample` at a quarter, half and
    three quarters of the wait after the sends: the largest of what it
    returns."""
    samples = []
    end = time.monotonic() + seconds
    turn = 0
    while time.monotonic() < end:
        turn += 1
        start = time.monotonic()
        for s in conns:
            s.sendall(b"x" * piece)
        if end - time.monotonic() < 2:
            at = start + 0.125 * (1 + turn % 3)
            time.sleep(max(0.0, at - time.monotonic()))
            samples.append(sample())
        time.sleep(max(0.0, start + 0.5 - time.monotonic()))
    return max(samples, key=lambda rss_heap: rss_heap[1])


def main():
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    first = int(sys.argv[3]) if len(sys.argv) > 3 else 8192
    piece = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
    seconds = float(os.environ.get("TRICKLE_SECONDS", "6"))
    check_machine(n)
    procs, conns = [], []
    with tempfile.TemporaryDirectory() as work:
        log_path = os.path.join(work, "gateway.err")
        try:
            with open(log_path, "w") as log:
                port = start(binary, work, log, procs)
            gw = procs[1].pid
            for _ in range(200):  # warm the pools as a few requests would
                answers(port)
            before = rss_kb(gw), heap_in_use(gw, log_path)
            head = (b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 1048576\r\n\r\n"
                    + b"x" * first)
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(head)
                conns.append(s)
            during = trickle(conns, piece, seconds,
                             lambda: (rss_kb(gw), heap_in_use(gw, log_path)))
        finally:
            for s in conns:
                s.close()
            stop(procs)
    print(f"{n} slow uploads ({first} body bytes with the head, then {piece} bytes "
          f"every 0.5 s for {seconds:g} s): RSS {before[0]:,} kB before, {during[0]:,} kB "
          f"during, {(during[0] - before[0]) / n:.1f} kB an upload; heap in use "
          f"{before[1]:,} kB before, {during[1]:,} kB during (the largest of 3-4 "
          f"samples), {(during[1] - before[1]) / n:.1f} kB an upload")


if __name__ == "__main__":
    main()
