#!/usr/bin/python3
"""Drives the dashboard at /ui/ in a headless browser (Chromium through
chromedriver, or Firefox ESR through geckodriver) against a running
`portico up` (started by tests/ui.rs) and checks what a person would see.

Every wait polls a condition with a deadline (WebDriverWait); nothing sleeps
a fixed time. Exit status 0 when every check passed; a failed check raises
with what was expected and what the page showed.

Console errors are caught in the page itself (Firefox's WebDriver has no
browser-log API): a script the test adds records uncaught errors, unhandled
rejections, CSP violations and console.error calls in window.__errors. In
Chromium it runs before the page's own script (CDP); in Firefox right after
navigation, so an error while app.js first runs shows there as a page that
never goes live instead.

    dashboard.py --browser firefox --control http://127.0.0.1:9080 --scenario open
    dashboard.py --control ... --scenario token --read-token R --admin-token A
    dashboard.py --control ... --scenario open --screenshots docs/
"""

import argparse
import re
import concurrent.futures
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.firefox.service import Service as FirefoxService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT = 20  # seconds any one condition may take to hold
BULK = 10_000


class Registry:
    """The registry's JSON API, as the test's own client (not the page's)."""

    def __init__(self, url, token=None):
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return res.status, json.loads(res.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def register(self, service, iid, **spec):
        spec.setdefault("address", "127.0.0.1")
        spec.setdefault("port", 9)
        status, body = self.call("PUT", f"/v1/services/{service}/instances/{iid}", spec)
        assert status == 200, f"register {service}/{iid}: {status} {body}"

    def route(self, name, spec):
        status, body = self.call("PUT", f"/v1/routes/{name}", spec)
        assert status in (200, 201), f"route {name}: {status} {body}"
        return body["revision"]


def chromium():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1280,900", "--force-prefers-reduced-motion"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    # The error catcher runs in every new document before its own scripts.
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CATCH_ERRORS})
    return driver


def port_outside_ephemeral_range():
    """A free loopback port below the kernel's ephemeral range.

    Otherwise Firefox's WebDriver BiDi port comes from the ephemeral range
    (bound and released) and stays unbound until Firefox starts. In that
    gap Firefox's own Marionette listener (port 0), an outgoing
    connection's source port, or a server bound to port 0 can take it:
    Firefox then fails to start its remote agent and closes the session
    mid-test (seen once in CI: NS_ERROR_SOCKET_ADDRESS_IN_USE in the
    geckodriver log). Below the range only another random draw like this
    one (the suite's `free_port`, tests/support/mod.rs) can take it.
    """
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for _ in range(100):
        port = random.randrange(10_000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in 10000-{low - 1}")


def firefox():
    options = webdriver.FirefoxOptions()
    options.binary_location = os.environ.get("FIREFOX", "/usr/bin/firefox-esr")
    options.add_argument("-headless")
    options.set_preference("ui.prefersReducedMotion", 1)
    # The dark-mode check flips this preference from the browser's chrome
    # context; `--allow-system-access` lets geckodriver reach that context.
    # Its log goes to the temporary directory, not the working tree.
    service = FirefoxService(os.environ.get("GECKODRIVER", "geckodriver"),
                             service_args=["--allow-system-access"],
                             log_path=os.path.join(tempfile.gettempdir(), "portico-ui-geckodriver.log"))
    # Selenium adds `--websocket-port` with a port from the ephemeral range
    # (bound and released); geckodriver takes the flag once, so replace it.
    args = service.service_args
    if "--websocket-port" in args:
        args[args.index("--websocket-port") + 1] = str(port_outside_ephemeral_range())
    else:
        args += ["--websocket-port", str(port_outside_ephemeral_range())]
    driver = webdriver.Firefox(service=service, options=options)
    driver.set_window_size(1280, 900)
    return driver


# Records what would be a console error, in the page, for either browser.
CATCH_ERRORS = """
if (!window.__errors) {
  window.__errors = [];
  const keep = (kind, text) => window.__errors.push(`${kind}: ${text}`);
  window.addEventListener('error', (e) => keep('error', `${e.message} at ${e.filename}:${e.lineno}`));
  window.addEventListener('unhandledrejection', (e) => keep('unhandled rejection', String(e.reason && (e.reason.stack || e.reason))));
  document.addEventListener('securitypolicyviolation', (e) => keep('CSP', `${e.violatedDirective} blocked ${e.blockedURI}`));
  const original = console.error.bind(console);
  console.error = (...args) => { keep('console.error', args.map(String).join(' ')); original(...args); };
}
"""


class Page:
    def __init__(self, driver, control, browser):
        self.d = driver
        self.control = control.rstrip("/")
        self.browser = browser

    def open(self):
        """Loads the dashboard, with the error catcher in place."""
        self.d.get(self.control + "/ui/")
        self.js(CATCH_ERRORS)

    def errors(self):
        """What the page recorded as errors (see CATCH_ERRORS); in Chromium
        also its console log at SEVERE, network failures left out (a refused
        token or a registry that is down are errors the page handles)."""
        found = list(self.js("return window.__errors || []"))
        if self.browser == "chromium":
            found += [e for e in self.d.get_log("browser")
                      if e["level"] == "SEVERE" and e.get("source") != "network"]
        return found

    def dark(self, on):
        """Emulates a browser that prefers a dark (or its default) scheme."""
        if self.browser == "chromium":
            features = [{"name": "prefers-color-scheme", "value": "dark"}] if on else []
            self.d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": features})
            return
        with self.d.context(self.d.CONTEXT_CHROME):
            # 0 dark, 1 light, 2 as the system (headless: light).
            self.d.execute_script(
                "Services.prefs.setIntPref('layout.css.prefers-color-scheme.content-override', arguments[0])",
                0 if on else 2)

    def until(self, what, cond, timeout=WAIT):
        """Polls `cond` until it returns something truthy; fails naming `what`."""
        def check(_):
            try:
                return cond()
            except Exception:  # an element replaced mid-read: poll again
                return False
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(check)
        except Exception:
            raise AssertionError(f"timed out waiting for: {what}\npage text:\n{self.text()[:3000]}")

    def read(self, what, get):
        """What `get` reads, read again if the page redrew the element meanwhile."""
        return self.until(what, get)

    def text(self):
        return self.d.find_element(By.TAG_NAME, "body").text

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def css(self, selector):
        return self.d.find_elements(By.CSS_SELECTOR, selector)

    def tab(self, name):
        self.css(f'#tabs button[data-tab="{name}"]')[0].click()
        self.until(f"tab {name} shown", lambda: self.css(f"section#{name}")[0].is_displayed())

    def expand(self, service):
        """Opens a service's card. The list is redrawn as changes arrive, so
        an element found may be gone by the click: then poll again."""
        card = f'.service[data-service="{service}"]'

        def opened():
            head = self.css(f"{card} > button.head")
            if not head:
                return False
            if head[0].get_attribute("aria-expanded") == "true":
                return bool(self.css(f"{card} table"))
            head[0].click()  # its handler redraws at once
            return False
        self.until(f"service {service} expanded", opened)

    def click_until(self, selector, what, done):
        """Clicks a button the page may redraw under the click, until `done`."""
        def attempt():
            if done():
                return True
            found = self.css(selector)
            if found and found[0].is_enabled():
                found[0].click()
            return done()
        self.until(what, attempt)

    def row(self, service, iid):
        rows = self.css(f'.service[data-service="{service}"] tr[data-instance="{iid}"]')
        return rows[0] if rows else None

    def filter(self, field, value):
        box = self.css(f"#filter-{field}")[0]
        if box.tag_name == "select":
            Select(box).select_by_value(value)
        else:
            box.clear()
            box.send_keys(value)

    def live(self):
        self.until("the watch stream live", lambda: self.css("#conn")[0].text == "live")



def shoot(page, outdir, name):
    if outdir and page.browser == "chromium":  # the docs show one browser
        path = os.path.join(outdir, f"ui-{name}.png")
        page.d.save_screenshot(path)
        print(f"screenshot {path}")


def scenario_open(page, reg, args):
    # Instances and a route before the page opens.
    for n, zone in ((1, "eu-1a"), (2, "eu-1b"), (3, "eu-1a")):
        reg.register("web", f"web-{n}", port=8000 + n, zone=zone, ttl="10m",
                     tags=["v2", "canary" if n == 3 else "stable"], meta={"build": f"b{n}"})
    reg.register("users", "users-1", port=8101, ttl="10m", tags=["v1"])
    reg.register("users", "users-2", port=8102, ttl="10m", tags=["v1"])
    status, _ = reg.call("POST", "/v1/services/users/instances/users-2/drain")
    assert status == 200, status
    reg.route("api", {"hosts": ["api.example.com"], "path_prefix": "/api", "methods": ["GET", "POST"],
                      "headers": [{"name": "x-canary", "exact": "1"}], "priority": 10,
                      "service": "web", "retry": {"attempts": 2, "on": ["503"]},
                      "filters": [{"type": "rate_limit", "rate": 100}]})

    page.open()
    page.live()
    page.until("service web with 3 passing", lambda: "3 passing" in page.css('.service[data-service="web"]')[0].text)
    page.until("users with one draining", lambda: "1 draining" in page.css('.service[data-service="users"]')[0].text)
    bad = page.errors()
    assert not bad, f"console errors on load: {bad}"
    print("ok: loads without console errors, services listed")

    page.expand("web")
    page.until("web-1..3 rows", lambda: all(page.row("web", f"web-{n}") for n in (1, 2, 3)))
    row = page.read("web-1 row", lambda: page.row("web", "web-1").text)
    for want in ("127.0.0.1:8001", "eu-1a", "v2", "build=b1", "passing", "ttl 10m"):
        assert want in row, f"web-1 row lacks {want!r}: {row!r}"
    page.until("web-1's lease time left", lambda: re.search(r"ttl 10m, \d+s left", page.row("web", "web-1").text))
    page.expand("users")
    page.until("users-2 draining", lambda: page.row("users", "users-2").get_attribute("data-status") == "draining")
    print("ok: instances with address, zone, tags, metadata, status, lease and its time left")

    # A registration shows without a reload: the marker set on this document survives.
    page.js("window.__sameDocument = true")
    reg.register("web", "web-4", port=8004, ttl="10m", tags=["v3"])
    page.until("web-4 appears live", lambda: page.row("web", "web-4"))
    assert page.js("return window.__sameDocument === true"), "the page reloaded"
    print("ok: a new registration appears without reload")

    # An instance whose lease lapses turns critical, with the reason.
    reg.register("batch", "job-1", port=8201, ttl="1s")
    page.expand("batch")
    page.until("job-1 critical", lambda: page.row("batch", "job-1").get_attribute("data-status") == "critical")
    job = page.read("job-1 row", lambda: page.row("batch", "job-1").text)
    assert "lease lapsed" in job, job
    print("ok: an expiring instance turns critical (lease lapsed)")

    # An instance kept by its check alone has no lease.
    host, port = page.control.split("//")[1].split(":")
    reg.register("cron", "cron-1", address=host, port=int(port), check={"tcp": True, "interval": "1s", "timeout": "1s"})
    page.expand("cron")
    page.until("cron-1 shown without a lease", lambda: "none: kept by its check" in page.row("cron", "cron-1").text)
    print("ok: an instance kept by its check shows no lease")

    # Filters: by name, by tag, by status.
    page.filter("name", "we")
    page.until("name filter leaves web only", lambda: [e.get_attribute("data-service") for e in page.css(".service")] == ["web"])
    page.filter("name", "")
    page.filter("tag", "canary")
    page.until("tag filter: web-3 only", lambda: page.row("web", "web-3") and not page.row("web", "web-1"))
    page.filter("tag", "")
    page.filter("status", "critical")
    page.until("status filter: batch only", lambda: [e.get_attribute("data-service") for e in page.css(".service")] == ["batch"])
    page.filter("status", "")
    page.until("filters cleared", lambda: len(page.css(".service")) == 4)
    print("ok: filters by name, tag and status")
    shoot(page, args.screenshots, "services")

    # Dark mode: light text on a dark background, statuses still coloured.
    page.dark(True)
    luminance = page.js("""const rgb = (c) => c.match(/\\d+/g).slice(0, 3).map(Number);
        const lum = (c) => { const [r, g, b] = rgb(c); return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255; };
        const body = getComputedStyle(document.body);
        return [lum(body.backgroundColor), lum(body.color)];""")
    assert luminance[0] < 0.2 and luminance[1] > 0.7, f"dark mode background/text luminance {luminance}"
    shoot(page, args.screenshots, "services-dark")
    page.dark(False)
    print("ok: readable in dark mode")

    # Routes, and a change to one.
    page.tab("routes")
    card = '.route[data-route="api"]'
    page.until("route api shown", lambda: "/api*" in page.css(card)[0].text)
    text = page.read("route card", lambda: page.css(card)[0].text)
    for want in ("api.example.com", "GET, POST", "x-canary = 1", "service web", "rate_limit", "retry"):
        assert want in text, f"route card lacks {want!r}: {text!r}"
    reg.route("api", {"path_prefix": "/v2/api", "service": "users"})
    page.until("route change shown", lambda: "/v2/api*" in page.css(card)[0].text
               and "service users" in page.css(card)[0].text)
    print("ok: routes with match, target, filters; a change shows")
    if args.file_route:
        file_route(page, args.file_route, args.screenshots)


    # Gateways: the one of `portico up`.
    page.tab("gateways")
    page.until("a gateway listed", lambda: page.css(".gateway"))
    gtext = page.read("gateway card", lambda: page.css(".gateway")[0].text)
    for want in ("applied revision", "last renewal", "version"):
        assert want in gtext, f"gateway card lacks {want!r}: {gtext!r}"
    page.until("gateway up to date", lambda: "up to date" in page.css(".gateway")[0].text)
    # Traffic through the gateway (its implicit /selfcheck route to the
    # registry's own /healthz) shows in the gateway's next record.
    reg.register("selfcheck", "registry", address=host, port=int(port), ttl="10m")
    _, listing = reg.call("GET", "/v1/gateways")
    front = "http://" + listing["gateways"][0]["addresses"][0]

    def busy_route_shown():
        for _ in range(5):
            try:
                urllib.request.urlopen(front + "/selfcheck/healthz", timeout=5).read()
            except urllib.error.URLError:
                pass  # the gateway may not route it yet
        rows = page.css('.gateway tr[data-route="auto:selfcheck"]')
        return rows and "0.0%" in rows[0].text and "ms" in rows[0].text
    page.until("the gateway's per-route traffic", busy_route_shown)
    # Its endpoints, relayed from its admin listener: the registry itself is
    # the selfcheck endpoint, in rotation.
    endpoint = f'.endpoints div[data-route="auto:selfcheck"] tr[data-endpoint="{host}:{port}"]'
    page.click_until(".gateway .endpoints button", "endpoints of the gateway", lambda: page.css(endpoint))
    etext = page.read("endpoint row", lambda: page.css(endpoint)[0].text)
    assert "yes" in etext and "registry" in etext, etext
    print("ok: gateways with applied revision, renewal, per-route traffic and endpoints")
    shoot(page, args.screenshots, "gateways")

    # A route another one shadows says so, with the gateway's reason.
    reg.route("wide", {"path": "/x", "priority": 10, "service": "web"})
    last = reg.route("narrow", {"path": "/x", "methods": ["GET"], "service": "users"})
    page.tab("routes")
    page.until("routes listed", lambda: page.css('.route[data-route="narrow"]'))
    page.until("the gateway applied the routes", lambda: any(
        g["applied_revision"] >= last for g in reg.call("GET", "/v1/gateways")[1]["gateways"]))
    card = lambda name: page.css(f'.route[data-route="{name}"]')[0].text
    page.click_until("#check-reach", "narrow shadowed", lambda: "shadowed" in card("narrow"))
    narrow = page.read("narrow card", lambda: card("narrow"))
    assert "route wide" in narrow and "higher priority" in narrow, narrow
    wide = page.read("wide card", lambda: card("wide"))
    assert "reachable" in wide, wide
    print("ok: a shadowed route says so, with the gateway's reason")
    shoot(page, args.screenshots, "routes")

    # Explain, through the registry's relay to the gateway's admin listener.
    page.tab("explain")
    page.until("gateway choices", lambda: page.css("#explain-gateway option"))
    path = page.css("#explain-path")[0]
    path.clear()
    path.send_keys("/web/hello")
    page.css('#explain-form button[type="submit"]')[0].click()
    page.until("explain verdict", lambda: page.css(".verdict") and page.css(".verdict")[0].text)
    verdict = page.css(".verdict")[0].text
    answer = page.css("#explain-result")[0].text
    assert "web" in answer, f"explain answer does not name the web route: {answer!r}"
    print(f"ok: explain answers: {verdict}")
    shoot(page, args.screenshots, "explain")

    # Certificates: names, expiry and days left; one due within 14 days warns.
    with tempfile.TemporaryDirectory() as tmp:
        for name, days in (("api", 30), ("soon", 7)):
            key, crt = os.path.join(tmp, f"{name}.key"), os.path.join(tmp, f"{name}.pem")
            host = f"{name}.example.com"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-keyout", key, "-out", crt, "-days", str(days), "-subj", f"/CN={host}",
                            "-addext", f"subjectAltName=DNS:{host}"], check=True, capture_output=True)
            status, body = reg.call("PUT", f"/v1/certificates/{name}", {
                "cert_pem": open(crt).read(), "key_pem": open(key).read()})
            assert status == 200, f"certificate {name}: {status} {body}"
    page.tab("certificates")
    page.until("certificates listed", lambda: page.css('tr[data-certificate="api"]') and page.css('tr[data-certificate="soon"]'))
    ctext = page.read("certificate row", lambda: page.css('tr[data-certificate="api"]')[0].text)
    assert "api.example.com" in ctext and ("29 days" in ctext or "30 days" in ctext), ctext
    assert re.search(r"20\d\d", ctext), f"no expiry date in {ctext!r}"
    # Read through page.read: the table redraws as the registry's watch
    # reports (a row found, then replaced, is stale by the time it is read).
    left = lambda name: page.read(f"{name} status", lambda: page.css(f'tr[data-certificate="{name}"] td.status')[0].get_attribute("class"))
    assert "passing" in left("api"), left("api")
    soon = page.read("soon row", lambda: page.css('tr[data-certificate="soon"]')[0].text)
    assert "soon.example.com" in soon and ("6 days" in soon or "7 days" in soon) and "renew soon" in soon, soon
    assert "warning" in left("soon"), left("soon")
    first = page.read("first row", lambda: page.css("table.certificates tbody tr")[0].get_attribute("data-certificate"))
    assert first == "soon", f"soonest expiry not first: {first}"
    print("ok: certificates with names, expiry, days left; under 14 days warns")
    shoot(page, args.screenshots, "certificates")

    page.tab("events")
    page.until("events feed", lambda: "web/web-4 registered" in page.text())
    ev = page.text()
    for want in ("route api changed", "batch/job-1 passing → critical (lease lapsed)"):
        assert want in ev, f"events lack {want!r}"
    print("ok: the events feed shows registrations, status changes, route changes")
    shoot(page, args.screenshots, "events")

    # Narrow screen: nothing wider than the viewport but scrollable tables.
    page.d.set_window_size(380, 800)
    page.tab("services")
    overflow = page.js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"page {overflow}px wider than a narrow screen"
    page.d.set_window_size(1280, 900)
    print("ok: usable at 380px wide")

    bad = page.errors()
    assert not bad, f"console errors: {bad}"

    if not args.skip_bulk:
        bulk(page, reg, args)


def file_route(page, name, screenshots):
    """The gateway's route-file route, under its gateway, marked so."""
    box = ".gateway-routes[data-gateway]"
    card = f'{box} .route[data-route="{name}"]'
    page.until(f"route-file route {name} shown", lambda: page.css(card))
    text = page.read("route-file card", lambda: page.css(card)[0].text)
    for want in ("route file", "files.example.com", "/from-file*", "service web", "request_headers"):
        assert want in text, f"route-file card lacks {want!r}: {text!r}"
    assert not page.css(f'#routes-list > .route[data-route="{name}"]'), "a file route listed as a registry route"
    summary = page.read("gateway routes summary", lambda: page.css(box)[0].text)
    assert "registry route" in summary and "applied" in summary and "implicit routes:" in summary and "/web → web" in summary, summary
    print("ok: a gateway's route-file routes, marked route file, and its implicit routes")
    page.js("arguments[0].scrollIntoView()", page.css(box)[0])
    shoot(page, screenshots, "routes-gateway")
    page.js("window.scrollTo(0, 0)")


def bulk(page, reg, args):
    """10,000 instances render and filter; how long the page's main thread
    was busy at a stretch is printed (a figure, not a pass/fail line)."""
    page.js("""window.__longest = PerformanceObserver.supportedEntryTypes.includes('longtask') ? 0 : null;
        if (window.__longest === 0) new PerformanceObserver((l) => { for (const e of l.getEntries())
          window.__longest = Math.max(window.__longest, e.duration); }).observe({type: 'longtask', buffered: true});""")

    def one(n):
        reg.register(f"bulk-{n % 50:02d}", f"i-{n:05d}", port=10000 + n % 50000, ttl="1h",
                     tags=["odd" if n % 2 else "even"], zone=f"z{n % 3}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(one, range(BULK)))
    want = f"55 services, {BULK + 9} instances shown"
    page.until(f"10,000 more instances counted: {want}",
               lambda: page.css("#services-summary")[0].text == want, timeout=120)
    page.expand("bulk-00")
    page.until("bulk-00 capped rows", lambda: len(page.css('.service[data-service="bulk-00"] tbody tr')) == 100)
    page.filter("tag", "odd")
    page.until("tag filter over 10,000", lambda: page.css("#services-summary")[0].text == f"25 services, {BULK // 2} instances shown", timeout=60)
    page.filter("tag", "")
    page.filter("name", "bulk-07")
    page.until("name filter over 10,000", lambda: page.css("#services-summary")[0].text == "1 services, 200 instances shown", timeout=60)
    longest = page.js("return window.__longest")
    print(f"ok: {BULK} instances render and filter; longest main-thread task: {long_task(longest)}")

    # A page opened on the 10,000: they come in one snapshot.
    page.open()
    page.until(f"the snapshot of 10,000 shown: {want}",
               lambda: page.css("#services-summary")[0].text == want, timeout=60)
    # An upper bound (the poll's own delay included), printed, not judged.
    shown_ms = page.js("return performance.now()")
    page.filter("tag", "even")
    page.until("tag filter after a snapshot", lambda: page.css("#services-summary")[0].text == f"25 services, {BULK // 2} instances shown", timeout=60)
    print(f"ok: a page opened on {BULK} instances shows them {shown_ms:.0f} ms after navigation starts, and filters")
    bad = page.errors()
    assert not bad, f"console errors: {bad}"


def long_task(ms):
    """The Long Tasks API reports only tasks over 50 ms; Firefox has none."""
    if ms is None:
        return "not measured (no Long Tasks API in this browser)"
    return f"{ms:.0f} ms" if ms else "none over 50 ms"


def scenario_token(page, reg, args):
    reg.register("secret-svc", "s-1", port=8301, ttl="10m")
    page.open()
    page.until("asked for a token", lambda: page.css("#token-form")[0].is_displayed())
    assert "401" in page.css("#token-message")[0].text, page.css("#token-message")[0].text
    box = page.css("#token-input")[0]
    box.send_keys("not-a-token")
    page.css('#token-form button[type="submit"]')[0].click()
    page.until("wrong token refused", lambda: "refused this token" in page.css("#token-message")[0].text)
    box = page.css("#token-input")[0]
    box.send_keys(args.read_token)
    page.css('#token-form button[type="submit"]')[0].click()
    page.live()
    page.until("data shown with the read token", lambda: page.css('.service[data-service="secret-svc"]'))
    stored = page.js("return sessionStorage.getItem('portico-token')")
    assert stored == args.read_token, "token not kept in sessionStorage"
    assert args.read_token not in page.d.current_url, "token in the URL"
    # The refused calls log as network errors; nothing else may.
    bad = page.errors()
    assert not bad, f"console errors: {bad}"
    print("ok: a token-protected registry asks for a token, refuses a wrong one, then shows data")


def scenario_restart(page, reg, args):
    """The registry is killed under the open page and started again."""
    reg.register("web", "before", port=8401, ttl="10m")
    page.open()
    page.live()
    page.until("instance before the restart", lambda: page.css('.service[data-service="web"]'))
    page.js("window.__sameDocument = true")
    os.kill(args.pid, signal.SIGKILL)
    page.until("disconnected banner", lambda: page.css("#banner")[0].is_displayed()
               and "Disconnected" in page.css("#banner")[0].text)
    print("ok: a disconnected banner while the registry is away")
    restarted = subprocess.Popen(json.loads(args.restart), stdout=subprocess.DEVNULL,
                                 env=dict(os.environ, RUST_LOG="warn"))
    try:
        page.until("registry back", lambda: reg.call("GET", "/healthz")[0] == 200, timeout=60)
        reg.register("web", "after", port=8402, ttl="10m")
        page.expand("web")
        page.until("registration after the restart shown", lambda: page.row("web", "after"), timeout=60)
        page.until("banner gone", lambda: not page.css("#banner")[0].is_displayed())
        assert page.row("web", "before"), "the instance kept across the restart vanished"
        assert page.js("return window.__sameDocument === true"), "the page reloaded"
        # The stream cut by the kill and the refused connections while the
        # registry was down log as network errors (net::ERR_...); nothing else may.
        bad = page.errors()
        assert not bad, f"console errors: {bad}"
        print("ok: reconnects by itself after a registry restart")
    finally:
        restarted.kill()
        restarted.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--control", required=True)
    p.add_argument("--browser", choices=["chromium", "firefox"], default="chromium")
    p.add_argument("--scenario", choices=["open", "token", "restart"], required=True)
    p.add_argument("--pid", type=int, help="restart: the portico process to kill")
    p.add_argument("--restart", help="restart: its command line, a JSON list")
    p.add_argument("--read-token")
    p.add_argument("--admin-token")
    p.add_argument("--screenshots", help="write docs screenshots into this directory")
    p.add_argument("--skip-bulk", action="store_true")
    p.add_argument("--file-route", help="open: a route of the gateway's route file, shown by name")
    args = p.parse_args()
    reg = Registry(args.control, args.admin_token)
    driver = {"chromium": chromium, "firefox": firefox}[args.browser]()
    try:
        page = Page(driver, args.control, args.browser)
        {"open": scenario_open, "token": scenario_token, "restart": scenario_restart}[args.scenario](page, reg, args)
    finally:
        driver.quit()
    print("all ok")


if __name__ == "__main__":
    sys.exit(main())
