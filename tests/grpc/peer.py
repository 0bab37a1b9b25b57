"""A gRPC peer for tests/grpc.rs, on Python's grpcio (gRPC's C core).

    peer.py server NAME [--unavailable]
        Serves test.Echo (also as the package-less "echo", which an implicit
        /echo route can carry; and grpc.health.v1.Health, and test.Control) on
        127.0.0.1:0; prints "PORT <n>" once listening, then one line per
        event the test waits for ("CALL <name>", "CANCELLED <name>").
    peer.py client TARGET
        Reads a JSON list of calls on stdin, makes them in order through
        TARGET (host:port), prints a JSON list of outcomes.

The behaviour of test.Echo/Unary is chosen by the request text, so one
server serves every test: "echo:X" answers X; "meta" answers the request
metadata as JSON; "status:CODE:MSG" fails with that status, trailing
metadata in ASCII and -bin; "time" answers the deadline left (ms);
"wait" blocks until the call is cancelled or 30 s pass; "big:N" answers N
bytes. The same wire contract is served by peer.js (grpc-js).
"""

import base64
import json
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

NAME = "?"


def say(line):
    print(line, flush=True)


def status_code(n):
    for code in grpc.StatusCode:
        if code.value[0] == n:
            return code
    return grpc.StatusCode.UNKNOWN


def unary(request, context):
    text = bytes(request)
    if text != b"wait":
        # "wait" sends no head: a route timeout (time to the head) applies.
        context.send_initial_metadata((("x-server", NAME),))
    if text.startswith(b"echo:"):
        context.set_trailing_metadata((("x-server", NAME),))
        return text[5:]
    if text == b"meta":
        md = {}
        for k, v in context.invocation_metadata():
            md[k] = base64.b64encode(v).decode() if k.endswith("-bin") else v
        return json.dumps(md).encode()
    if text.startswith(b"status:"):
        _, code, msg = text.decode().split(":", 2)
        context.set_trailing_metadata(
            (("x-detail", "ascii detail"), ("x-detail-bin", b"\x00\x01\xfe\xff"))
        )
        context.abort(status_code(int(code)), msg)
    if text == b"time":
        left = context.time_remaining()
        return str(-1 if left is None else int(left * 1000)).encode()
    if text == b"wait":
        end = time.monotonic() + 30
        while context.is_active() and time.monotonic() < end:
            time.sleep(0.01)
        if not context.is_active():
            say(f"CANCELLED {NAME}")
        return b"waited"
    if text.startswith(b"big:"):
        n = int(text[4:])
        return bytes(i % 251 for i in range(n))
    return text


def unavailable(request, context):
    say(f"CALL {NAME}")
    context.abort(grpc.StatusCode.UNAVAILABLE, f"{NAME} is unavailable")


def server_stream(request, context):
    n = int(bytes(request).decode().split(":")[1])
    for i in range(n):
        yield str(i).encode()


def client_stream(request_iterator, context):
    count, total = 0, 0
    for m in request_iterator:
        count += 1
        total += len(m)
    return f"{count} {total}".encode()


def bidi(request_iterator, context):
    for m in request_iterator:
        yield m


def serve(argv):
    global NAME
    NAME = argv[0]
    flaky = "--unavailable" in argv
    limits = [
        ("grpc.max_receive_message_length", 8 << 20),
        ("grpc.max_send_message_length", 8 << 20),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=limits)
    health_servicer = health.HealthServicer()
    health_servicer.set("test.Echo", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def set_health(request, context):
        service, state = bytes(request).decode().split("=")
        health_servicer.set(service, health_pb2.HealthCheckResponse.ServingStatus.Value(state))
        return b"ok"

    h = grpc.unary_unary_rpc_method_handler
    echo = {
        "Unary": h(unavailable if flaky else unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("test.Echo", echo),
            # Package-less, so an implicit /{service} route can carry it.
            grpc.method_handlers_generic_handler("echo", echo),
            grpc.method_handlers_generic_handler("test.Control", {"SetHealth": h(set_health)}),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    say(f"PORT {port}")
    # Ends with the test: it closes stdin or kills the process.
    sys.stdin.read()
    server.stop(0)


def message(spec):
    if isinstance(spec, dict):
        return (spec["repeat"] * spec["n"]).encode()
    return spec.encode()


def summary(data):
    data = bytes(data)
    if len(data) <= 4096:
        return data.decode("latin-1")
    return {"len": len(data), "sum": sum(data) % (1 << 32)}


def metadata_out(md):
    out = []
    for k, v in md or ():
        if isinstance(v, bytes):
            v = "b64:" + base64.b64encode(v).decode()
        out.append([k, v])
    return out


def metadata_in(pairs):
    out = []
    for k, v in pairs or ():
        if k.endswith("-bin"):
            v = base64.b64decode(v)
        out.append((k, v))
    return out


def call_one(channel, c):
    kind, method = c["kind"], c["method"]
    requests = [message(r) for r in c.get("requests", [])]
    md = metadata_in(c.get("metadata"))
    timeout = c.get("timeout")
    result = {"responses": [], "initial": [], "trailing": []}
    started = time.monotonic()
    try:
        if kind == "unary" and c.get("cancel_after"):
            fut = channel.unary_unary(method).future(requests[0], metadata=md, timeout=timeout)
            time.sleep(c["cancel_after"])
            fut.cancel()
            fut.exception()
            raise fut.exception()
        if kind == "unary":
            resp, call = channel.unary_unary(method).with_call(
                requests[0], metadata=md, timeout=timeout
            )
            result["responses"].append(summary(resp))
        elif kind == "client_stream":
            resp, call = channel.stream_unary(method).with_call(
                iter(requests), metadata=md, timeout=timeout
            )
            result["responses"].append(summary(resp))
        elif kind == "server_stream":
            call = channel.unary_stream(method)(requests[0], metadata=md, timeout=timeout)
            for resp in call:
                result["responses"].append(summary(resp))
        elif kind == "bidi":
            # Ping-pong: each message is sent after the answer to the last.
            answered = threading.Semaphore(0)

            def gen():
                for i, r in enumerate(requests):
                    if i > 0:
                        answered.acquire()
                    yield r

            call = channel.stream_stream(method)(gen(), metadata=md, timeout=timeout)
            for resp in call:
                result["responses"].append(summary(resp))
                answered.release()
        else:
            raise ValueError(kind)
        result["code"] = call.code().value[0]
        result["details"] = call.details() or ""
        result["initial"] = metadata_out(call.initial_metadata())
        result["trailing"] = metadata_out(call.trailing_metadata())
    except grpc.RpcError as e:
        result["code"] = e.code().value[0]
        result["details"] = e.details() or ""
        if hasattr(e, "initial_metadata"):
            result["initial"] = metadata_out(e.initial_metadata())
            result["trailing"] = metadata_out(e.trailing_metadata())
    except grpc.FutureCancelledError:
        result["code"] = grpc.StatusCode.CANCELLED.value[0]
        result["details"] = "cancelled by the client"
    result["elapsed_ms"] = int((time.monotonic() - started) * 1000)
    return result


def client(argv):
    target = argv[0]
    calls = json.load(sys.stdin)
    options = [
        ("grpc.max_receive_message_length", 8 << 20),
        ("grpc.max_send_message_length", 8 << 20),
        # One call, one try: the gateway's retries are under test, not the client's.
        ("grpc.enable_retries", 0),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        out = [call_one(channel, c) for c in calls]
    json.dump(out, sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    {"server": serve, "client": client}[sys.argv[1]](sys.argv[2:])
