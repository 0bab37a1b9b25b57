#!/usr/bin/env python3
"""A catalogue of RFC 9113's server-side requirements, checked against a
running HTTP/2 server (h2c, prior knowledge) by a client of its own.

Usage: conformance.py HOST:PORT AUTHORITY PATH [--only ID ...] [--jobs N]

Frames are read and written with hyperframe (built by hand where a case
needs a frame hyperframe would refuse to make), header blocks with hpack.
Every case runs on a fresh connection and every wait is bounded: frames
are read with a socket timeout until the case's outcome is decided or its
deadline passes. One JSON line per case is printed, in catalogue order:

    {"id": "6.9.1/2", "title": ..., "ok": true|false, "expected": ..., "got": ...}

Conventions (h2spec's): a connection error X is a GOAWAY with code X (a
close without GOAWAY is not one); a stream error X is an RST_STREAM with
code X on that stream, or a GOAWAY with code X. "Ignored" is checked by
getting an answer afterwards (a PING's ACK or a request's response).
Malformed requests may also be answered 400 (RFC 9113 8.1.1 allows an
intermediary to answer rather than reset); "got" says which was seen.

tests/h2_conformance.rs runs it against Portico's two HTTP/2 servers.
"""

import argparse
import concurrent.futures
import contextlib
import json
import re
import socket
import struct
import sys
import time

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEADLINE = 3.0
DEFAULT_MAX_FRAME = 16384
MAX_WINDOW = 2**31 - 1

CODES = [
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
]
CODE = {name: n for n, name in enumerate(CODES)}
TYPE_NAMES = {
    0x0: "DATA",
    0x1: "HEADERS",
    0x2: "PRIORITY",
    0x3: "RST_STREAM",
    0x4: "SETTINGS",
    0x5: "PUSH_PROMISE",
    0x6: "PING",
    0x7: "GOAWAY",
    0x8: "WINDOW_UPDATE",
    0x9: "CONTINUATION",
}
# Frame types and flags, for frames written by hand.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
S_ENABLE_PUSH, S_MAX_CONCURRENT, S_INITIAL_WINDOW, S_MAX_FRAME = 0x2, 0x3, 0x4, 0x5


def code_name(n):
    return CODES[n] if n < len(CODES) else "0x%x" % n


def raw(ftype, flags, stream, payload, length=None):
    """A frame written by hand: `length` overrides the header's length."""
    if length is None:
        length = len(payload)
    head = struct.pack(">I", length)[1:] + bytes([ftype, flags])
    return head + struct.pack(">I", stream) + payload


def settings_payload(settings):
    return b"".join(struct.pack(">HI", k, v) for k, v in settings.items())


class Seen:
    """One thing the server did: a frame (a header block's frames as one
    HEADERS event), a close, or bytes that are not HTTP/2."""

    def __init__(self, kind, stream=0, text="", **extra):
        self.kind = kind
        self.stream = stream
        self.text = text
        self.flags = set()
        self.code = None
        self.headers = None
        self.payload = b""
        self.__dict__.update(extra)

    def status(self):
        for name, value in self.headers or []:
            if name == ":status":
                return value
        return None


class Conn:
    """One connection to the server under test."""

    def __init__(self, ctx, preface=True, settings=None, handshake=True):
        self.ctx = ctx
        self.sock = socket.create_connection(ctx.addr, timeout=DEADLINE)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder(max_header_list_size=1 << 20)
        self.log = []
        self.closed = False
        self.server_settings = {}
        self.block = None  # (stream, flags, fragments) of a header block under way
        self.http1 = False
        if preface:
            self.send(PREFACE)
        if handshake:
            self.handshake(settings or {})

    # -- writing --

    @contextlib.contextmanager
    def corked(self):
        """Frames sent inside go out in one write at the end, so the server
        reads them together: a late frame then cannot lose a race with the
        response (a server that answers first may read it only after its
        response has ended the stream)."""
        self.cork = []
        try:
            yield
        finally:
            chunks, self.cork = self.cork, None
            self.send(*chunks)

    def send(self, *chunks):
        if getattr(self, "cork", None) is not None:
            self.cork.extend(chunks)
            return
        try:
            self.sock.sendall(b"".join(chunks))
        except OSError as e:
            self.log.append("(send failed: %s)" % e.__class__.__name__)

    def settings(self, settings=None, flags=0, stream=0):
        self.send(raw(SETTINGS, flags, stream, settings_payload(settings or {})))

    def ping(self, payload=b"portico!", flags=0):
        f = PingFrame(0, payload)
        if flags & ACK:
            f.flags.add("ACK")
        self.send(f.serialize())

    def fields(self, method="GET", path=None, extra=(), pseudo=None):
        """A request's fields: the four pseudo-headers (or `pseudo`), then `extra`."""
        if pseudo is None:
            pseudo = [
                (":method", method),
                (":scheme", "http"),
                (":authority", self.ctx.authority),
                (":path", path or self.ctx.path),
            ]
        return list(pseudo) + list(extra)

    def encode(self, fields, huffman=True):
        return self.enc.encode(fields, huffman=huffman)

    def headers(self, stream, fields, end_stream=True, end_headers=True):
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        self.send(raw(HEADERS, flags, stream, self.encode(fields)))

    def request(self, stream, method="GET", end_stream=True, extra=()):
        self.headers(stream, self.fields(method, extra=extra), end_stream=end_stream)

    def data(self, stream, payload, end_stream=False):
        self.send(raw(DATA, END_STREAM if end_stream else 0, stream, payload))

    def window_update(self, stream, increment):
        self.send(raw(WINDOW_UPDATE, 0, stream, struct.pack(">I", increment)))

    def rst(self, stream, code):
        self.send(raw(RST_STREAM, 0, stream, struct.pack(">I", code)))

    # -- reading --

    def handshake(self, settings):
        """Sends the client's SETTINGS, acknowledges the server's, waits for
        the server's and its ACK of the client's."""
        self.settings(settings)
        got_settings = got_ack = False
        end = time.monotonic() + DEADLINE
        while not (got_settings and got_ack):
            e = self.next(end)
            if e is None or e.kind in ("closed", "http1"):
                raise CaseError("handshake: " + self.got(e is None))
            if e.kind == "SETTINGS" and "ACK" in e.flags:
                got_ack = True
            elif e.kind == "SETTINGS":
                got_settings = True
                self.server_settings.update(e.settings)
                self.send(raw(SETTINGS, ACK, 0, b""))
        self.log = []

    def next(self, end):
        """The next thing the server did, or None past `end`."""
        while True:
            if self.closed:
                return None
            e = self._parse()
            if e is not None:
                if e.text:
                    self.log.append(e.text)
                if e.kind == "more":
                    continue
                return e
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None
            except OSError as e:
                chunk = b""
                self.log.append("(%s)" % e.__class__.__name__)
            if not chunk:
                self.closed = True
                self.log.append("close")
                return Seen("closed")
            self.buf += chunk

    def _parse(self):
        if self.http1 or self.buf.startswith(b"HTTP/"):
            if not self.buf:
                return None
            line = self.buf.split(b"\r\n", 1)[0][:60].decode("latin-1")
            first = not self.http1
            self.http1 = True
            self.buf = b""
            if first:
                return Seen("http1", text="non-HTTP/2 bytes %r" % line)
            return Seen("more")
        if len(self.buf) < 9:
            return None
        length = int.from_bytes(self.buf[:3], "big")
        if len(self.buf) < 9 + length:
            return None
        head, body = self.buf[:9], self.buf[9 : 9 + length]
        self.buf = self.buf[9 + length :]
        ftype = head[3]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        name = TYPE_NAMES.get(ftype, "type 0x%x" % ftype)
        try:
            frame, _ = Frame.parse_frame_header(memoryview(head))
            frame.parse_body(memoryview(body))
        except Exception as err:  # a frame hyperframe refuses: say so
            return Seen(name, stream, "%s(s%d, unparsable: %s)" % (name, stream, err))
        return self._event(name, frame, stream, len(body))

    def _event(self, name, f, stream, length):
        flags = set(f.flags)
        if isinstance(f, (HeadersFrame, ContinuationFrame)):
            if isinstance(f, HeadersFrame):
                self.block = (stream, flags, [bytes(f.data)])
            elif self.block is not None:
                self.block[2].append(bytes(f.data))
            if "END_HEADERS" not in flags:
                return Seen("more", text="%s(s%d, no END_HEADERS)" % (name, stream))
            first_stream, first_flags, fragments = self.block or (stream, flags, [])
            self.block = None
            try:
                fields = self.dec.decode(b"".join(fragments))
            except Exception as err:
                fields = [("(undecodable)", str(err))]
            e = Seen("HEADERS", first_stream, headers=fields)
            e.flags = first_flags
            shown = [f"{n}={v}" for n, v in fields if n.startswith(":")]
            es = ",END_STREAM" if "END_STREAM" in first_flags else ""
            e.text = "HEADERS(s%d,%s%s)" % (first_stream, ",".join(shown), es)
            return e
        e = Seen(name, stream)
        e.flags = flags
        if isinstance(f, DataFrame):
            e.payload = bytes(f.data)
            es = ",END_STREAM" if "END_STREAM" in flags else ""
            e.text = "DATA(s%d,%dB%s)" % (stream, len(f.data), es)
        elif isinstance(f, RstStreamFrame):
            e.code = f.error_code
            e.text = "RST_STREAM(s%d,%s)" % (stream, code_name(f.error_code))
        elif isinstance(f, GoAwayFrame):
            e.code = f.error_code
            e.last = f.last_stream_id
            debug = bytes(f.additional_data)[:80].decode("utf-8", "replace")
            e.text = "GOAWAY(last=%d,%s%s)" % (
                f.last_stream_id,
                code_name(f.error_code),
                "," + repr(debug) if debug else "",
            )
        elif isinstance(f, SettingsFrame):
            e.settings = dict(f.settings)
            e.text = "SETTINGS(ACK)" if "ACK" in flags else "SETTINGS%s" % e.settings
        elif isinstance(f, PingFrame):
            e.payload = bytes(f.opaque_data)
            e.text = "PING(%s%r)" % ("ACK," if "ACK" in flags else "", e.payload)
        elif isinstance(f, WindowUpdateFrame):
            e.increment = f.window_increment
            e.text = "WINDOW_UPDATE(s%d,+%d)" % (stream, f.window_increment)
        else:
            e.text = "%s(s%d,%dB)" % (name, stream, length)
        return e

    def got(self, timed_out=False):
        parts = list(self.log)
        if timed_out:
            parts.append("timeout after %.0fs" % DEADLINE)
        text = " ".join(parts) or "nothing"
        return text if len(text) <= 600 else text[:600] + "..."

    def wait(self, decide, deadline=DEADLINE):
        """Reads until `decide(event)` returns True/False, the server closes,
        or the deadline passes. Returns (decision or None, timed_out)."""
        end = time.monotonic() + deadline
        while True:
            e = self.next(end)
            if e is None:
                return None, not self.closed
            verdict = decide(e)
            if verdict is not None:
                return verdict, False
            if e.kind == "closed":
                return None, False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class CaseError(Exception):
    pass


# -- outcomes: each returns (ok, got) --


def conn_error(c, *codes):
    """A GOAWAY with one of `codes` (then maybe a close)."""
    codes = [CODE[x] for x in codes]

    def decide(e):
        if e.kind == "GOAWAY":
            return e.code in codes
        return None

    ok, timed_out = c.wait(decide)
    return bool(ok), c.got(timed_out)


def stream_error(c, stream, *codes, allow_400=False):
    """An RST_STREAM on `stream` or a GOAWAY with one of `codes`; with
    `allow_400`, a 400 response on `stream` too."""
    codes = [CODE[x] for x in codes]

    def decide(e):
        if e.kind == "GOAWAY":
            return e.code in codes
        if e.kind == "RST_STREAM" and e.stream == stream:
            return e.code in codes
        if e.kind == "HEADERS" and e.stream == stream and e.status() is not None:
            if allow_400 and e.status() == "400":
                return True
            if "END_STREAM" in e.flags:
                return False
        if e.kind == "DATA" and e.stream == stream and "END_STREAM" in e.flags:
            return False
        return None

    ok, timed_out = c.wait(decide)
    return bool(ok), c.got(timed_out)


def malformed(c, stream):
    return stream_error(c, stream, "PROTOCOL_ERROR", allow_400=True)


def response(c, stream, status="200", head=False):
    """A whole response on `stream` with `status` (with `head`, and no DATA
    payload)."""
    state = {"status": None, "payload": 0}

    def decide(e):
        if e.kind == "GOAWAY" or (e.kind == "RST_STREAM" and e.stream in (0, stream)):
            return False
        if e.stream != stream:
            return None
        if e.kind == "HEADERS" and state["status"] is None:
            state["status"] = e.status()
        if e.kind == "DATA":
            state["payload"] += len(e.payload)
            # The stream's window back, so a body of any size comes.
            if e.payload:
                c.window_update(0, len(e.payload))
                c.window_update(stream, len(e.payload))
        if e.kind in ("HEADERS", "DATA") and "END_STREAM" in e.flags:
            return state["status"] == status and not (head and state["payload"])
        return None

    ok, timed_out = c.wait(decide)
    return bool(ok), c.got(timed_out)


def alive(c, payload=b"stillup!"):
    """The connection still answers a PING."""
    c.ping(payload)

    def decide(e):
        if e.kind == "PING" and "ACK" in e.flags and e.payload == payload:
            return True
        if e.kind in ("GOAWAY", "closed"):
            return False
        if e.kind == "RST_STREAM":
            return False
        return None

    ok, timed_out = c.wait(decide)
    return bool(ok), c.got(timed_out)


def until_response_ends(c, stream):
    """Reads a whole response on `stream`; raises if it does not come."""
    ok, got = response(c, stream)
    if not ok:
        raise CaseError("setup response: " + got)
    c.log = []


def max_frame(c):
    return c.server_settings.get(S_MAX_FRAME, DEFAULT_MAX_FRAME)


# -- the catalogue --

CASES = []


def case(cid, title, expected):
    def register(fn):
        CASES.append((cid, title, expected, fn))
        return fn

    return register


CONN_PROTOCOL = "connection error PROTOCOL_ERROR (GOAWAY)"
STREAM_PROTOCOL = "stream error PROTOCOL_ERROR (RST_STREAM or GOAWAY)"
MALFORMED = "malformed: stream error PROTOCOL_ERROR (or a 400 response)"
ANSWERED = "a 200 response"
IGNORED = "ignored: a later PING is answered"


@case("3.4/1", "invalid connection preface", "connection error PROTOCOL_ERROR, or a close")
def _(ctx):
    c = Conn(ctx, preface=False, handshake=False)
    c.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    verdict, timed_out = c.wait(
        lambda e: (e.code == CODE["PROTOCOL_ERROR"]) if e.kind == "GOAWAY" else None
    )
    # A close (after whatever was said) counts; staying open does not.
    ok = bool(verdict) or (verdict is None and c.closed)
    return ok, c.got(timed_out)


@case("3.4/2", "preface followed by a frame other than SETTINGS", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx, handshake=False)
    # The PING once the server's SETTINGS came: surely read apart from the
    # preface (3.4/4 is about frames read with it).
    first = c.next(time.monotonic() + DEADLINE)
    if first is None or first.kind != "SETTINGS":
        return False, "no SETTINGS from the server: " + c.got(first is None)
    c.log = []
    c.ping()
    return conn_error(c, "PROTOCOL_ERROR")


@case("3.4/3", "the server's first frame is SETTINGS", "SETTINGS (not an ACK) first")
def _(ctx):
    c = Conn(ctx, handshake=False)
    c.settings()
    e = c.next(time.monotonic() + DEADLINE)
    ok = e is not None and e.kind == "SETTINGS" and "ACK" not in e.flags
    return ok, c.got(e is None)


@case(
    "3.4/4",
    "the preface, SETTINGS and a request in one write, then nothing",
    "a 200 response without the client sending more",
)
def _(ctx):
    c = Conn(ctx, preface=False, handshake=False)
    block = c.encode(c.fields())
    c.send(PREFACE, raw(SETTINGS, 0, 0, b""), raw(HEADERS, END_STREAM | END_HEADERS, 1, block))
    return response(c, 1)


@case("4.1/1", "a frame of unknown type is ignored", "ignored: a later request answered 200")
def _(ctx):
    c = Conn(ctx)
    c.send(raw(0x20, 0, 0, b"unknown frame"))
    c.request(1)
    return response(c, 1)


@case("4.1/2", "undefined flags are ignored", "PING ACK with the same payload")
def _(ctx):
    c = Conn(ctx)
    c.send(raw(PING, 0xFE, 0, b"flagged!"))
    return alive_after_sent(c, b"flagged!")


def alive_after_sent(c, payload):
    def decide(e):
        if e.kind == "PING" and "ACK" in e.flags:
            return e.payload == payload
        if e.kind in ("GOAWAY", "closed"):
            return False
        return None

    ok, timed_out = c.wait(decide)
    return bool(ok), c.got(timed_out)


@case("4.1/3", "the reserved bit of the stream id is ignored", "PING ACK with the same payload")
def _(ctx):
    c = Conn(ctx)
    c.send(raw(PING, 0, 0x80000000, b"reserved"))
    return alive_after_sent(c, b"reserved")


@case("4.2/1", "DATA larger than SETTINGS_MAX_FRAME_SIZE", "stream or connection error FRAME_SIZE_ERROR")
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.send(raw(DATA, 0, 1, b"x" * (max_frame(c) + 1)))
    return stream_error(c, 1, "FRAME_SIZE_ERROR")


@case("4.2/2", "HEADERS larger than SETTINGS_MAX_FRAME_SIZE", "connection error FRAME_SIZE_ERROR")
def _(ctx):
    c = Conn(ctx)
    # Not Huffman-coded, so the block is surely over the limit.
    block = c.encode(c.fields(extra=[("x-big", "y" * (max_frame(c) + 100))]), huffman=False)
    c.send(raw(HEADERS, END_STREAM | END_HEADERS, 1, block))
    return conn_error(c, "FRAME_SIZE_ERROR")


@case("4.2/3", "DATA of exactly 16384 octets is accepted", ANSWERED)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False, extra=[("content-length", "16384")])
    c.data(1, b"z" * 16384, end_stream=True)
    return response(c, 1)


@case("4.3/1", "an undecodable header block", "connection error COMPRESSION_ERROR")
def _(ctx):
    c = Conn(ctx)
    # An indexed field naming entry 70 of an empty dynamic table.
    c.send(raw(HEADERS, END_STREAM | END_HEADERS, 1, bytes([0x80 | 70])))
    return conn_error(c, "COMPRESSION_ERROR")


def split_headers(c, stream, fields, end_stream=True):
    """A header block's HEADERS (no END_HEADERS) and rest, for CONTINUATION."""
    block = c.encode(fields)
    half = max(1, len(block) // 2)
    flags = END_STREAM if end_stream else 0
    return raw(HEADERS, flags, stream, block[:half]), block[half:]


@case("4.3/2", "PRIORITY between HEADERS and CONTINUATION", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    first, rest = split_headers(c, 1, c.fields())
    c.send(first, raw(PRIORITY, 0, 1, struct.pack(">IB", 0, 15)))
    c.send(raw(CONTINUATION, END_HEADERS, 1, rest))
    return conn_error(c, "PROTOCOL_ERROR")


@case("4.3/3", "HEADERS of another stream between HEADERS and CONTINUATION", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    first, rest = split_headers(c, 1, c.fields())
    c.send(first)
    c.request(3)
    c.send(raw(CONTINUATION, END_HEADERS, 1, rest))
    return conn_error(c, "PROTOCOL_ERROR")


@case("5.1/1", "idle stream: DATA", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.data(1, b"idle", end_stream=True)
    return conn_error(c, "PROTOCOL_ERROR")


@case("5.1/2", "idle stream: RST_STREAM", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.rst(1, CODE["CANCEL"])
    return conn_error(c, "PROTOCOL_ERROR")


@case("5.1/3", "idle stream: WINDOW_UPDATE", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.window_update(1, 100)
    return conn_error(c, "PROTOCOL_ERROR")


@case("5.1/4", "idle stream: CONTINUATION", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.send(raw(CONTINUATION, END_HEADERS, 1, c.encode(c.fields())))
    return conn_error(c, "PROTOCOL_ERROR")


@case("5.1/5", "half-closed (remote): DATA", "stream error STREAM_CLOSED")
def _(ctx):
    c = Conn(ctx)
    with c.corked():
        c.request(1)
        c.data(1, b"late")
    return stream_error(c, 1, "STREAM_CLOSED")


@case("5.1/6", "half-closed (remote): HEADERS", "stream error STREAM_CLOSED")
def _(ctx):
    c = Conn(ctx)
    with c.corked():
        c.request(1)
        c.headers(1, [("x-late", "1")], end_stream=True)
    return stream_error(c, 1, "STREAM_CLOSED")


@case("5.1/7", "half-closed (remote): CONTINUATION", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.request(1)
    c.send(raw(CONTINUATION, END_HEADERS, 1, c.encode([("x-late", "1")])))
    return conn_error(c, "PROTOCOL_ERROR")


@case("5.1/8", "closed by the client's RST_STREAM: DATA", "stream error STREAM_CLOSED")
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.rst(1, CODE["CANCEL"])
    c.data(1, b"after reset")
    return stream_error(c, 1, "STREAM_CLOSED")


@case("5.1/9", "closed by the client's RST_STREAM: HEADERS", "stream error STREAM_CLOSED")
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.rst(1, CODE["CANCEL"])
    c.headers(1, [("x-after", "reset")], end_stream=True)
    return stream_error(c, 1, "STREAM_CLOSED")


@case(
    "5.1/10",
    "closed by the client's RST_STREAM: CONTINUATION",
    "connection error PROTOCOL_ERROR (or STREAM_CLOSED)",
)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.rst(1, CODE["CANCEL"])
    c.send(raw(CONTINUATION, END_HEADERS, 1, c.encode([("x-after", "reset")])))
    return conn_error(c, "PROTOCOL_ERROR", "STREAM_CLOSED")


@case("5.1/11", "closed after END_STREAM both ways: DATA", "stream error STREAM_CLOSED")
def _(ctx):
    c = Conn(ctx)
    c.request(1)
    until_response_ends(c, 1)
    c.data(1, b"after end")
    return stream_error(c, 1, "STREAM_CLOSED")


@case("5.1/12", "closed after END_STREAM both ways: HEADERS", "connection error STREAM_CLOSED")
def _(ctx):
    c = Conn(ctx)
    c.request(1)
    until_response_ends(c, 1)
    c.headers(1, [("x-after", "end")], end_stream=True)
    return conn_error(c, "STREAM_CLOSED")


@case(
    "5.1/13",
    "closed after END_STREAM both ways: CONTINUATION",
    "connection error PROTOCOL_ERROR (or STREAM_CLOSED)",
)
def _(ctx):
    c = Conn(ctx)
    c.request(1)
    until_response_ends(c, 1)
    c.send(raw(CONTINUATION, END_HEADERS, 1, c.encode([("x-after", "end")])))
    return conn_error(c, "PROTOCOL_ERROR", "STREAM_CLOSED")


@case("5.1.1/1", "a request on an even stream id", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.request(2)
    return conn_error(c, "PROTOCOL_ERROR")


@case("5.1.1/2", "a stream id lower than one already used", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.request(5)
    until_response_ends(c, 5)
    c.request(3)
    return conn_error(c, "PROTOCOL_ERROR")


@case(
    "5.1.2/1",
    "more streams than SETTINGS_MAX_CONCURRENT_STREAMS",
    "stream error PROTOCOL_ERROR or REFUSED_STREAM for the excess stream",
)
def _(ctx):
    c = Conn(ctx)
    limit = c.server_settings.get(S_MAX_CONCURRENT)
    if limit is None:
        return False, "the server's SETTINGS set no SETTINGS_MAX_CONCURRENT_STREAMS"
    if limit > 1000:
        return False, "SETTINGS_MAX_CONCURRENT_STREAMS=%d: too many to open here" % limit
    for n in range(limit + 1):
        c.request(1 + 2 * n, "POST", end_stream=False)
    excess = 1 + 2 * limit
    return stream_error(c, excess, "PROTOCOL_ERROR", "REFUSED_STREAM")


@case("5.3.1/1", "HEADERS whose priority depends on its own stream", STREAM_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    block = struct.pack(">IB", 1, 15) + c.encode(c.fields())
    c.send(raw(HEADERS, END_STREAM | END_HEADERS | PRIORITY_FLAG, 1, block))
    return stream_error(c, 1, "PROTOCOL_ERROR")


@case("5.3.1/2", "PRIORITY that depends on its own stream", STREAM_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.send(raw(PRIORITY, 0, 1, struct.pack(">IB", 1, 15)))
    return stream_error(c, 1, "PROTOCOL_ERROR")


@case("5.4.1/1", "a connection error: GOAWAY, then the connection closes", "GOAWAY, then a close")
def _(ctx):
    c = Conn(ctx)
    c.send(raw(PING, 0, 1, b"stream 1"))
    seen = {"goaway": False}

    def decide(e):
        if e.kind == "GOAWAY":
            seen["goaway"] = True
        if e.kind == "closed":
            return seen["goaway"]
        return None

    ok, timed_out = c.wait(decide)
    return bool(ok), c.got(timed_out)


@case("5.5/1", "an unknown extension frame", IGNORED)
def _(ctx):
    c = Conn(ctx)
    c.send(raw(0xEE, 0x3, 0, b"an extension"))
    return alive(c)


@case("5.5/2", "an unknown extension frame inside a header block", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    first, rest = split_headers(c, 1, c.fields())
    c.send(first, raw(0xEE, 0, 0, b"an extension"))
    c.send(raw(CONTINUATION, END_HEADERS, 1, rest))
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.1/1", "DATA on stream 0", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.data(0, b"stream zero")
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.1/2", "DATA on a stream neither open nor half-closed (local)", "stream error STREAM_CLOSED")
def _(ctx):
    c = Conn(ctx)
    with c.corked():
        c.request(1)
        c.data(1, b"half-closed remote", end_stream=True)
    return stream_error(c, 1, "STREAM_CLOSED")


@case("6.1/3", "DATA whose pad length is the payload's length", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.send(raw(DATA, PADDED | END_STREAM, 1, bytes([5]) + b"abcd"))
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.2/1", "HEADERS without END_HEADERS, then a DATA frame", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    first, _rest = split_headers(c, 1, c.fields("POST"), end_stream=False)
    c.send(first)
    c.data(1, b"not a continuation")
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.2/2", "HEADERS on stream 0", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.request(0)
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.2/3", "HEADERS whose pad length is too large", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    block = c.encode(c.fields())
    payload = bytes([len(block) + 1]) + block
    c.send(raw(HEADERS, END_STREAM | END_HEADERS | PADDED, 1, payload))
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.3/1", "PRIORITY on stream 0", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.send(raw(PRIORITY, 0, 0, struct.pack(">IB", 1, 15)))
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.3/2", "PRIORITY of length 4", "stream error FRAME_SIZE_ERROR")
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.send(raw(PRIORITY, 0, 1, struct.pack(">I", 0)))
    return stream_error(c, 1, "FRAME_SIZE_ERROR")


@case("6.3/3", "PRIORITY on a half-closed (remote) stream", "accepted: the request answered 200")
def _(ctx):
    c = Conn(ctx)
    c.request(1)
    c.send(PriorityFrame(1, depends_on=0, stream_weight=100).serialize())
    return response(c, 1)


@case("6.3/4", "PRIORITY on a closed stream", IGNORED)
def _(ctx):
    c = Conn(ctx)
    c.request(1)
    until_response_ends(c, 1)
    c.send(PriorityFrame(1, depends_on=0, stream_weight=100).serialize())
    return alive(c)


@case("6.4/1", "RST_STREAM on stream 0", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.send(raw(RST_STREAM, 0, 0, struct.pack(">I", CODE["CANCEL"])))
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.4/2", "RST_STREAM on an idle stream", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.rst(3, CODE["CANCEL"])
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.4/3", "RST_STREAM of length 3", "connection error FRAME_SIZE_ERROR")
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.send(raw(RST_STREAM, 0, 1, b"\x00\x00\x08"))
    return conn_error(c, "FRAME_SIZE_ERROR")


@case("6.5/1", "SETTINGS ACK with a payload", "connection error FRAME_SIZE_ERROR")
def _(ctx):
    c = Conn(ctx)
    c.send(raw(SETTINGS, ACK, 0, settings_payload({S_INITIAL_WINDOW: 100})))
    return conn_error(c, "FRAME_SIZE_ERROR")


@case("6.5/2", "SETTINGS on a stream other than 0", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.settings({S_INITIAL_WINDOW: 100}, stream=1)
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.5/3", "SETTINGS whose length is not a multiple of 6", "connection error FRAME_SIZE_ERROR")
def _(ctx):
    c = Conn(ctx)
    c.send(raw(SETTINGS, 0, 0, settings_payload({S_INITIAL_WINDOW: 100})[:5]))
    return conn_error(c, "FRAME_SIZE_ERROR")


@case("6.5.3/1", "the server acknowledges the client's SETTINGS", "SETTINGS with ACK")
def _(ctx):
    c = Conn(ctx)
    c.settings({S_INITIAL_WINDOW: 70000})

    def decide(e):
        if e.kind == "SETTINGS" and "ACK" in e.flags:
            return True
        return False if e.kind in ("GOAWAY", "closed") else None

    ok, timed_out = c.wait(decide)
    return bool(ok), c.got(timed_out)


@case("6.5.2/1", "SETTINGS_ENABLE_PUSH of 2", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.settings({S_ENABLE_PUSH: 2})
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.5.2/2", "SETTINGS_INITIAL_WINDOW_SIZE of 2^31", "connection error FLOW_CONTROL_ERROR")
def _(ctx):
    c = Conn(ctx)
    c.settings({S_INITIAL_WINDOW: 2**31})
    return conn_error(c, "FLOW_CONTROL_ERROR")


@case("6.5.2/3", "SETTINGS_MAX_FRAME_SIZE of 16383", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.settings({S_MAX_FRAME: 16383})
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.5.2/4", "SETTINGS_MAX_FRAME_SIZE of 2^24", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.settings({S_MAX_FRAME: 2**24})
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.5.2/5", "an unknown setting", "ignored: SETTINGS ACK, then a PING answered")
def _(ctx):
    c = Conn(ctx)
    c.settings({0xFF: 1})

    def decide(e):
        if e.kind == "SETTINGS" and "ACK" in e.flags:
            return True
        return False if e.kind in ("GOAWAY", "closed") else None

    ok, timed_out = c.wait(decide)
    if not ok:
        return False, c.got(timed_out)
    return alive(c)


@case(
    "6.9.2/1",
    "SETTINGS_INITIAL_WINDOW_SIZE=1: the response waits for WINDOW_UPDATE",
    "DATA of at most 1 octet, nothing more until a WINDOW_UPDATE, then the rest",
)
def _(ctx):
    c = Conn(ctx, settings={S_INITIAL_WINDOW: 1})
    c.request(1)
    sent = {"bytes": 0, "window": 1, "updated": False, "over": False}

    def decide(e):
        if e.kind in ("GOAWAY", "closed") or (e.kind == "RST_STREAM" and e.stream == 1):
            return False
        if e.kind == "DATA" and e.stream == 1:
            sent["bytes"] += len(e.payload)
            if sent["bytes"] > sent["window"]:
                sent["over"] = True
                return False
            if "END_STREAM" in e.flags:
                return sent["updated"] or sent["bytes"] <= 1
            if sent["bytes"] == 1 and not sent["updated"]:
                return True  # the window is used up: on to the quiet check
        if e.kind == "HEADERS" and "END_STREAM" in e.flags and e.stream == 1:
            return False
        return None

    verdict, timed_out = c.wait(decide)
    if not verdict:
        return False, c.got(timed_out)
    if sent["bytes"] == 1 and not c.closed:
        # Nothing more may come before the window grows (a short bounded read).
        quiet, _ = c.wait(lambda e: False if e.kind == "DATA" and e.stream == 1 else None, 0.5)
        if quiet is False:
            return False, c.got() + " (DATA beyond the 1-octet window)"
        c.log.append("(quiet 0.5s; client sends WINDOW_UPDATE(s1,+65535))")
        sent["window"] += 65535
        sent["updated"] = True
        c.window_update(1, 65535)
        verdict, timed_out = c.wait(decide)
    return bool(verdict), c.got(timed_out)


@case(
    "6.9.2/2",
    "SETTINGS_INITIAL_WINDOW_SIZE making a stream's window exceed 2^31-1",
    "connection error FLOW_CONTROL_ERROR",
)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.window_update(1, MAX_WINDOW - 65535)
    c.settings({S_INITIAL_WINDOW: 65536})
    return conn_error(c, "FLOW_CONTROL_ERROR")


@case("6.7/1", "PING", "PING ACK with the same payload")
def _(ctx):
    c = Conn(ctx)
    c.ping(b"\x00\x01\x02\x03\xfc\xfd\xfe\xff")
    return alive_after_sent(c, b"\x00\x01\x02\x03\xfc\xfd\xfe\xff")


@case("6.7/2", "a PING with ACK is not answered", "no answer to the ACK; a later PING answered")
def _(ctx):
    c = Conn(ctx)
    c.ping(b"fake ack", flags=ACK)
    return alive_after_sent_only(c, b"realping")


def alive_after_sent_only(c, payload):
    c.ping(payload)

    def decide(e):
        if e.kind == "PING":
            return "ACK" in e.flags and e.payload == payload
        return False if e.kind in ("GOAWAY", "closed") else None

    ok, timed_out = c.wait(decide)
    return bool(ok), c.got(timed_out)


@case("6.7/3", "PING on a stream other than 0", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.send(raw(PING, 0, 1, b"stream 1"))
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.7/4", "PING of length 6", "connection error FRAME_SIZE_ERROR")
def _(ctx):
    c = Conn(ctx)
    c.send(raw(PING, 0, 0, b"short!"))
    return conn_error(c, "FRAME_SIZE_ERROR")


@case("6.8/1", "GOAWAY on a stream other than 0", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.send(raw(GOAWAY, 0, 1, struct.pack(">II", 0, 0)))
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.9/1", "WINDOW_UPDATE of 0 on the connection", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.window_update(0, 0)
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.9/2", "WINDOW_UPDATE of 0 on a stream", STREAM_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.window_update(1, 0)
    return stream_error(c, 1, "PROTOCOL_ERROR")


@case("6.9/3", "WINDOW_UPDATE of length 3", "connection error FRAME_SIZE_ERROR")
def _(ctx):
    c = Conn(ctx)
    c.send(raw(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"))
    return conn_error(c, "FRAME_SIZE_ERROR")


@case("6.9.1/1", "the connection's window beyond 2^31-1", "connection error FLOW_CONTROL_ERROR")
def _(ctx):
    c = Conn(ctx)
    c.window_update(0, MAX_WINDOW)
    return conn_error(c, "FLOW_CONTROL_ERROR")


@case("6.9.1/2", "a stream's window beyond 2^31-1", "stream error FLOW_CONTROL_ERROR")
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.window_update(1, MAX_WINDOW)
    return stream_error(c, 1, "FLOW_CONTROL_ERROR")


@case("6.10/1", "a request split over HEADERS and several CONTINUATIONs", ANSWERED)
def _(ctx):
    c = Conn(ctx)
    block = c.encode(c.fields(extra=[("x-part-%d" % n, "v" * 40) for n in range(8)]))
    size = max(1, len(block) // 4)
    pieces = [block[i : i + size] for i in range(0, len(block), size)]
    c.send(raw(HEADERS, END_STREAM, 1, pieces[0]))
    for n, piece in enumerate(pieces[1:]):
        last = n == len(pieces) - 2
        c.send(raw(CONTINUATION, END_HEADERS if last else 0, 1, piece))
    return response(c, 1)


@case("6.10/2", "CONTINUATION after a HEADERS with END_HEADERS", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.send(raw(CONTINUATION, END_HEADERS, 1, c.encode([("x-more", "1")])))
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.10/3", "CONTINUATION on another stream", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    first, rest = split_headers(c, 1, c.fields())
    c.send(first, raw(CONTINUATION, END_HEADERS, 3, rest))
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.10/4", "CONTINUATION on stream 0", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    first, rest = split_headers(c, 1, c.fields())
    c.send(first, raw(CONTINUATION, END_HEADERS, 0, rest))
    return conn_error(c, "PROTOCOL_ERROR")


@case("6.10/5", "CONTINUATION after a DATA frame", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.data(1, b"body")
    c.send(raw(CONTINUATION, END_HEADERS, 1, c.encode([("x-more", "1")])))
    return conn_error(c, "PROTOCOL_ERROR")


@case("8.1/1", "trailers (a second HEADERS) without END_STREAM", MALFORMED)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.data(1, b"body")
    c.headers(1, [("x-trailer", "1")], end_stream=False)
    return malformed(c, 1)


@case("8.1/2", "a POST with a body and trailers", ANSWERED)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False, extra=[("te", "trailers")])
    c.data(1, b"body")
    c.headers(1, [("x-trailer", "1")], end_stream=True)
    return response(c, 1)


@case("8.1/3", "a pseudo-header in trailers", MALFORMED)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    c.data(1, b"body")
    c.headers(1, [(":method", "POST"), ("x-trailer", "1")], end_stream=True)
    return malformed(c, 1)


@case("8.1.1/1", "content-length larger than the DATA", MALFORMED)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False, extra=[("content-length", "10")])
    c.data(1, b"12345", end_stream=True)
    return malformed(c, 1)


@case("8.1.1/2", "content-length smaller than the DATA (several frames)", MALFORMED)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False, extra=[("content-length", "4")])
    c.data(1, b"123")
    c.data(1, b"456", end_stream=True)
    return malformed(c, 1)


def malformed_request(cid, title, fields_of):
    @case(cid, title, MALFORMED)
    def _(ctx):
        c = Conn(ctx)
        c.headers(1, fields_of(c), end_stream=True)
        return malformed(c, 1)


def with_extra(*extra):
    return lambda c: c.fields(extra=list(extra))


def pseudo_without(name):
    return lambda c: [f for f in c.fields() if f[0] != name]


malformed_request("8.2/1", "an uppercase field name", with_extra(("X-Upper", "1")))
malformed_request("8.2.1/1", "a field value with NUL", with_extra(("x-nul", "a\x00b")))
malformed_request("8.2.1/2", "a field value with CR", with_extra(("x-cr", "a\rb")))
malformed_request("8.2.1/3", "a field value with LF", with_extra(("x-lf", "a\nb")))
malformed_request("8.2.1/4", "a field name with a space", with_extra(("x bad", "1")))
malformed_request("8.2.1/5", "a field name with a colon", with_extra(("x:bad", "1")))
malformed_request(
    "8.2.1/6", "a field value with leading whitespace", with_extra(("x-space", " lead"))
)
malformed_request("8.2.2/1", "connection-specific field: connection", with_extra(("connection", "close")))
malformed_request("8.2.2/2", "connection-specific field: keep-alive", with_extra(("keep-alive", "timeout=5")))
malformed_request(
    "8.2.2/3", "connection-specific field: transfer-encoding", with_extra(("transfer-encoding", "chunked"))
)
malformed_request("8.2.2/4", "connection-specific field: upgrade", with_extra(("upgrade", "websocket")))
malformed_request(
    "8.2.2/5", "connection-specific field: proxy-connection", with_extra(("proxy-connection", "keep-alive"))
)
malformed_request("8.2.2/6", "TE other than \"trailers\"", with_extra(("te", "gzip")))


@case("8.2.2/7", "TE: trailers is accepted", ANSWERED)
def _(ctx):
    c = Conn(ctx)
    c.request(1, extra=[("te", "trailers")])
    return response(c, 1)


malformed_request(
    "8.3/1",
    "a pseudo-header after a regular field",
    lambda c: [f for f in c.fields() if f[0] != ":path"] + [("x-first", "1"), (":path", c.ctx.path)],
)
malformed_request("8.3/2", "an unknown pseudo-header", with_extra((":foo", "bar")))
malformed_request(
    "8.3/3",
    "a response pseudo-header (:status) in a request",
    lambda c: c.fields() + [(":status", "200")],
)
malformed_request(
    "8.3/4", "a duplicated pseudo-header (:path)", lambda c: c.fields() + [(":path", c.ctx.path)]
)
malformed_request("8.3/5", "no :method", pseudo_without(":method"))
malformed_request("8.3/6", "no :scheme", pseudo_without(":scheme"))
malformed_request("8.3/7", "no :path", pseudo_without(":path"))
malformed_request(
    "8.3/8",
    "an empty :path",
    lambda c: [(n, "" if n == ":path" else v) for n, v in c.fields()],
)


@case("8.4/1", "the server does not push", "a 200 response and no PUSH_PROMISE")
def _(ctx):
    c = Conn(ctx, settings={S_ENABLE_PUSH: 1})
    c.request(1)
    ok, got = response(c, 1)
    return ok and "PUSH_PROMISE" not in got, got


@case("8.4/2", "a PUSH_PROMISE from the client", CONN_PROTOCOL)
def _(ctx):
    c = Conn(ctx)
    c.request(1, "POST", end_stream=False)
    block = struct.pack(">I", 2) + c.encode(c.fields())
    c.send(raw(PUSH_PROMISE, END_HEADERS, 1, block))
    return conn_error(c, "PROTOCOL_ERROR")


@case("G/1", "a GET", ANSWERED)
def _(ctx):
    c = Conn(ctx)
    c.request(1)
    return response(c, 1)


@case("G/2", "a POST whose body is split over several DATA frames", ANSWERED)
def _(ctx):
    c = Conn(ctx)
    body = bytes(range(256)) * 40
    c.request(1, "POST", end_stream=False, extra=[("content-length", str(len(body)))])
    for i in range(0, len(body), 1000):
        c.data(1, body[i : i + 1000], end_stream=i + 1000 >= len(body))
    return response(c, 1)


@case("G/3", "a HEAD", "a 200 response with no DATA payload")
def _(ctx):
    c = Conn(ctx)
    c.request(1, "HEAD")
    return response(c, 1, head=True)


@case("G/4", "a request with 60 header fields", ANSWERED)
def _(ctx):
    c = Conn(ctx)
    c.request(1, extra=[("x-field-%03d" % n, "value %d" % n) for n in range(60)])
    return response(c, 1)


@case("G/5", "a 15000-octet header value over CONTINUATION frames", ANSWERED)
def _(ctx):
    c = Conn(ctx)
    block = c.encode(c.fields(extra=[("x-large", "L" * 15000)]), huffman=False)
    pieces = [block[i : i + 4096] for i in range(0, len(block), 4096)]
    c.send(raw(HEADERS, END_STREAM, 1, pieces[0]))
    for n, piece in enumerate(pieces[1:]):
        last = n == len(pieces) - 2
        c.send(raw(CONTINUATION, END_HEADERS if last else 0, 1, piece))
    return response(c, 1)


class Ctx:
    def __init__(self, addr, authority, path):
        host, _, port = addr.rpartition(":")
        self.addr = (host.strip("[]"), int(port))
        self.authority = authority
        self.path = path


def order(cid):
    """Catalogue order: by section, then number; the generic cases last."""
    if not cid[0].isdigit():
        return [1 << 30, cid]
    return [int(part) for part in re.split(r"[./]", cid)]


def run(ctx, entry):
    cid, title, expected, fn = entry
    try:
        ok, got = fn(ctx)
    except CaseError as e:
        ok, got = False, "could not run: %s" % e
    except OSError as e:
        ok, got = False, "socket error: %r" % e
    except Exception as e:  # a fault of this client: said, not hidden
        ok, got = False, "client error: %r" % e
    return {"id": cid, "title": title, "ok": bool(ok), "expected": expected, "got": got}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("addr", help="the server, HOST:PORT")
    p.add_argument("authority", help=":authority of the requests")
    p.add_argument("path", help=":path of the requests")
    p.add_argument("--only", nargs="*", help="case ids to run")
    p.add_argument("--jobs", type=int, default=8, help="cases run at once")
    args = p.parse_args()
    ctx = Ctx(args.addr, args.authority, args.path)
    ids = [e[0] for e in CASES]
    assert len(ids) == len(set(ids)), "case ids are unique"
    entries = sorted(
        (e for e in CASES if not args.only or e[0] in args.only), key=lambda e: order(e[0])
    )
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(lambda e: run(ctx, e), entries):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
