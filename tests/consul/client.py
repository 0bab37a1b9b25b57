"""A real Consul client (Debian's python3-consul) against `portico up`.

Run by tests/consul.rs:
    /usr/bin/python3 tests/consul/client.py REGISTRY_PORT GATEWAY_URL BACKEND_PORT

Registers an instance with a TTL check, passes it until the gateway routes
to it, lets the TTL lapse and sees it critical, passes it back, checks that
a blocking query (index=) wakes on a change, and deregisters. Every wait
polls with a deadline. Prints one line per step; exits non-zero on failure.
"""

import json
import sys
import threading
import time
import urllib.request

import consul

DEADLINE = 20.0


def eventually(what, check):
    end = time.monotonic() + DEADLINE
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for: " + what)
        time.sleep(0.05)


def statuses(c, service, **kw):
    _, nodes = c.health.service(service, **kw)
    return {n["Service"]["ID"]: n["Checks"][0]["Status"] for n in nodes}


def routed_to(gateway, path):
    try:
        with urllib.request.urlopen(gateway + path, timeout=5) as r:
            return r.status == 200 and json.loads(r.read())["instance"] == "consul-echo"
    except Exception:
        return False


def main():
    registry_port, gateway, backend_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    c = consul.Consul(host="127.0.0.1", port=registry_port)

    assert c.agent.self()["Config"]["Datacenter"] == "dc1"
    print("agent.self: datacenter dc1")

    ok = c.agent.service.register(
        "hello", service_id="hello-1", address="127.0.0.1", port=backend_port,
        tags=["v1"], check=consul.Check.ttl("3s"))
    assert ok, "register refused"
    assert c.agent.check.ttl_pass("service:hello-1", "up"), "ttl_pass refused"
    print("registered hello-1 with a TTL check and passed it")

    def pass_and_route():
        c.agent.check.ttl_pass("service:hello-1")
        return routed_to(gateway, "/hello/")
    eventually("the gateway to route /hello/ to hello-1", pass_and_route)
    print("routed by the gateway")

    assert "hello" in c.catalog.services()[1], "catalog.services lacks hello"
    assert "hello-1" in c.agent.services(), "agent.services lacks hello-1"

    # No more passes: the TTL lapses and the check turns critical.
    eventually("hello-1 to turn critical after its TTL lapsed",
               lambda: statuses(c, "hello").get("hello-1") == "critical")
    assert statuses(c, "hello", passing=True) == {}, "a critical instance was passing"
    print("lapsed: critical, not returned with passing=True")

    assert c.agent.check.ttl_pass("service:hello-1")
    assert statuses(c, "hello").get("hello-1") == "passing"
    print("passed again: passing")

    # A blocking query with no change answers when its wait ends, same index.
    index, _ = c.health.service("hello")
    again, _ = c.health.service("hello", index=index, wait="1s")
    assert again == index, "index moved with nothing changed: %s -> %s" % (index, again)

    # A blocking query wakes on a change to what it reads.
    woken = {}

    def block():
        woken["result"] = c.health.service("hello", index=index, wait="30s")

    waiter = threading.Thread(target=block)
    waiter.start()
    assert c.agent.service.register(
        "hello", service_id="hello-2", address="127.0.0.1", port=backend_port,
        check=consul.Check.ttl("30s"))
    waiter.join(DEADLINE)
    assert not waiter.is_alive(), "the blocking query did not wake"
    new_index, nodes = woken["result"]
    assert int(new_index) > int(index), "index did not move: %s -> %s" % (index, new_index)
    assert "hello-2" in [n["Service"]["ID"] for n in nodes]
    print("blocking query woke on a registration: index %s -> %s" % (index, new_index))

    for sid in ("hello-1", "hello-2"):
        assert c.agent.service.deregister(sid), "deregister refused"
    assert statuses(c, "hello") == {}
    assert "hello-1" not in c.agent.services()
    print("deregistered")
    print("python-consul: all steps passed")


if __name__ == "__main__":
    main()
