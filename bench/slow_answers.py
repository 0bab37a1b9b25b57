#!/usr/bin/env python3
"""Memory a gateway holds for answers streamed slowly: N clients each ask
for an answer that an origin streams as server-sent events do, a chunked
body with FIRST bytes at once and then a 16-byte piece every half second.
Prints the gateway's RSS and glibc's heap in use (as bench/slow_bodies.py
does: `malloc_stats` through gdb) before the streams and while all N are
open, each per stream.

    bench/slow_answers.py BIN [N] [FIRST]

BIN is a portico binary, N the number of streams (default 2000), FIRST the
body bytes sent with the head (default 8192: more than the gateway's
first read, so it reads more of the body before the pauses start).

The origin is in this script (asyncio on a thread of its own); the
gateway (`gateway --threads 1 --no-access-log`) proxies to it. Everything
is on 127.0.0.1; the pieces go on for STREAM_SECONDS (default 6), the
heap is sampled in the last two seconds (the largest is printed), and
every connection is closed at the end. Needs gdb, and an open files limit
of 3 N (`ulimit -n`).
"""
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slow_bodies as sb  # noqa: E402  (its helpers: ports, RSS, heap, waits)

def chunk(data):
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


PIECE = chunk(b"data: tick....\n\n")  # 16 bytes, as an event

class Origin:
    """Answers each request with a chunked head and FIRST bytes, then a
    piece every half second until `stop`."""

    def __init__(self, first):
        self.first = first
        self.writers = []
        self.loop = asyncio.new_event_loop()
        self.port = sb.free_port()
        self.done = threading.Event()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.serve())

    async def serve(self):
        server = await asyncio.start_server(self.answer, "127.0.0.1", self.port, backlog=4096)
        async with server:
            while not self.done.is_set():
                for w in list(self.writers):
                    if not w.is_closing():
                        w.write(PIECE)
                await asyncio.sleep(0.5)
            for w in self.writers:
                w.close()

    async def answer(self, reader, writer):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"/stream" not in head.split(b"\r\n", 1)[0]:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                continue
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n" + chunk(b"x" * self.first))
            self.writers.append(writer)
            return


def main():
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    first = int(sys.argv[3]) if len(sys.argv) > 3 else 8192
    seconds = float(os.environ.get("STREAM_SECONDS", "6"))
    if first < 1 or seconds < 1:
        sys.exit("FIRST must be at least 1 byte (an empty chunk ends the body), "
                 "STREAM_SECONDS at least 1")
    sb.check_machine(n)
    origin = Origin(first)
    procs, conns = [], []
    with tempfile.TemporaryDirectory() as work:
        log_path = os.path.join(work, "gateway.err")
        try:
            gw_port, admin = sb.free_port(), sb.free_port()
            with open(os.path.join(work, "routes.toml"), "w") as f:
                f.write(f'[[route]]\nname = "all"\npath_prefix = "/"\n'
                        f'upstreams = ["127.0.0.1:{origin.port}"]\n')
            with open(log_path, "w") as log:
                procs.append(subprocess.Popen(
                    [binary, "--threads", "1", "gateway", "--listen", f"127.0.0.1:{gw_port}",
                     "--config", os.path.join(work, "routes.toml"),
                     "--admin", f"127.0.0.1:{admin}", "--no-access-log"], stderr=log))
            sb.wait_for("the gateway", lambda: sb.answers(gw_port))
            gw = procs[0].pid
            for _ in range(200):  # warm the pools as a few requests would
                sb.answers(gw_port)
            before = sb.rss_kb(gw), sb.heap_in_use(gw, log_path)
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", gw_port))
                s.sendall(b"GET /stream HTTP/1.1\r\nhost: a\r\n\r\n")
                conns.append(s)
            sb.wait_for("every stream", lambda: len(origin.writers) == n, seconds=60)
            samples = []
            end = time.monotonic() + seconds
            while time.monotonic() < end or not samples:
                time.sleep(0.3)
                if end - time.monotonic() < 2:
                    samples.append((sb.rss_kb(gw), sb.heap_in_use(gw, log_path)))
            during = max(samples, key=lambda rss_heap: rss_heap[1])
        finally:
            origin.done.set()
            for s in conns:
                s.close()
            sb.stop(procs)
    print(f"{n} streamed answers ({first} body bytes with the head, then 16 bytes every "
          f"0.5 s for {seconds:g} s): RSS {before[0]:,} kB before, {during[0]:,} kB during, "
          f"{(during[0] - before[0]) / n:.1f} kB a stream; heap in use {before[1]:,} kB "
          f"before, {during[1]:,} kB during (the largest of the samples), "
          f"{(during[1] - before[1]) / n:.1f} kB a stream")


if __name__ == "__main__":
    main()
