"""A burst of new connections against a listener: `burst.py HOST PORT N`.

Opens N connections at once (non-blocking connects in one loop), sends one
request on each as soon as it connects, and prints the time from connect to
the answer's first byte (p50, p99, max) and how many took over 900 ms (a
client whose SYN was dropped waits a second or more for its retransmission),
with what the kernel counted meanwhile in this network namespace
(`/proc/net/netstat`): SYNs dropped because the accept queue was full, and
SYNs answered with a cookie, or dropped with cookies off, because the queue
of pending handshakes was full. Bounded: gives up after 30 s. Only for
127.0.0.1 / ::1 targets (an IPv6 address without brackets).

The absolute times are those of one Python client handling every
connection on one thread (its connect loop alone takes tens of
milliseconds): compare runs with each other, and read the backlog's effect
in the answers over 900 ms and the kernel's counts."""

import resource
import select
import socket
import sys
import time

REQUEST = b"GET /burst HTTP/1.1\r\nHost: burst\r\nConnection: close\r\n\r\n"
GIVE_UP = 30.0


KERNEL_COUNTERS = ("ListenOverflows", "TCPReqQFullDoCookies", "TCPReqQFullDrop")


def kernel_counters():
    """The TcpExt counters named in KERNEL_COUNTERS (this namespace's)."""
    with open("/proc/net/netstat") as f:
        lines = [line.split() for line in f if line.startswith("TcpExt:")]
    values = dict(zip(lines[0][1:], map(int, lines[1][1:])))
    return {name: values.get(name, 0) for name in KERNEL_COUNTERS}


def connect_all(host, port, n, poller):
    """N non-blocking connects; each connection's socket and start time."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    conns = {}
    for _ in range(n):
        s = socket.socket(family, kind, proto)
        s.setblocking(False)
        s.connect_ex(addr)
        conns[s.fileno()] = (s, time.monotonic())
        poller.register(s.fileno(), select.EPOLLOUT)
    return conns


def run(host, port, n):
    """Seconds to the first answer byte per connection (None: no answer)."""
    poller = select.epoll()
    conns = connect_all(host, port, n, poller)
    sent, answered = set(), {}
    deadline = time.monotonic() + GIVE_UP
    while len(answered) < n and time.monotonic() < deadline:
        for fd, _ in poller.poll(0.1):
            s, start = conns[fd]
            try:
                if fd not in sent:
                    s.send(REQUEST)
                    sent.add(fd)
                    poller.modify(fd, select.EPOLLIN)
                    continue
                data = s.recv(4096)
            except OSError:
                data = b""
            answered[fd] = time.monotonic() - start if data else None
            poller.unregister(fd)
    return [answered.get(fd) for fd in conns]


def allow_descriptors(n):
    """Raises the soft descriptor limit to fit n sockets, or exits saying
    why it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n + 64
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.exit(f"{n} connections need {need} descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    allow_descriptors(n)
    before, began = kernel_counters(), time.monotonic()
    times = run(host, port, n)
    wall, after = time.monotonic() - began, kernel_counters()
    counted = " ".join(f"{k}={after[k] - before[k]}" for k in KERNEL_COUNTERS)
    ok = sorted(t for t in times if t is not None)
    if not ok:
        sys.exit(f"n={n}: no connection was answered")

    def ms(q):
        return ok[min(len(ok) - 1, int(q * len(ok)))] * 1000

    slow = sum(1 for t in ok if t > 0.9)
    print(
        f"n={n} answered={len(ok)} failed={n - len(ok)} p50={ms(0.5):.1f}ms "
        f"p99={ms(0.99):.1f}ms max={ok[-1] * 1000:.1f}ms over_900ms={slow} wall={wall:.2f}s {counted}"
    )


if __name__ == "__main__":
    main()
