"""The web console in a real browser (Debian's headless Chromium, driven by selenium),
against three router subprocesses in a line, east - hub - west, with a TCP service at
west reached from east: every site drawn with its links, a running flow in the flows
view with its path (on east, and on hub from every site's records), nothing loaded from
anywhere but the router, the API closed without the token, and a killed site's link red
within 3 s without a reload. One browser and one network for the module; each browser
test saves a screenshot in its tmp dir, and is skipped, saying why, without Chromium,
its driver or selenium (the `sitectl console` tests run anyway)."""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests.support.services import EchoServer
from tests.support.sites import Site, free_port, link, site_env, start_sites, wait_for

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# selenium's locator strategies (selenium.webdriver.common.by.By), imported only with it
CSS, ID, TAG = "css selector", "id", "tag name"
RED = "rgb(224, 49, 49)"  # console.css --down
GREEN = "rgb(47, 158, 68)"  # console.css --up


@dataclass
class Line:
    east: Site
    hub: Site
    west: Site
    echo: EchoServer
    port: int  # east's listener for "db", served at west

    def link(self) -> str:
        """What `sitectl console --url` prints for east."""
        return self.east.sitectl("console", "--url").stdout.strip()


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    work = tmp_path_factory.mktemp("console")
    env = site_env(work)
    east, hub, west = sites = [Site(work, name, env).init() for name in ("east", "hub", "west")]
    start_sites(*sites)
    echo = EchoServer()
    try:
        link(hub, east, work)
        link(west, hub, work)
        west.sitectl("connector", "create", "db", f"127.0.0.1:{echo.port}")
        port = free_port()
        east.sitectl("listener", "create", "db", str(port))
        wait_for(lambda: east.key_reachable("db"), what="db reachable from east")
        yield Line(east, hub, west, echo, port)
    finally:
        echo.close()
        for site in sites:
            site.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Chromium and its driver (Debian: apt-get install chromium "
                    "chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium "
                                    "(pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-extensions",
                "--window-size=1400,1050", "--no-first-run"):
        options.add_argument(arg)
    # "performance": the DevTools network events, so a test sees every request made.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def shot(browser: WebDriver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def opened(browser: WebDriver, line: Line) -> None:
    """The console of east, freshly loaded, with its first data drawn."""
    browser.get("about:blank")  # (the same URL again would only change the fragment)
    browser.get_log("performance")  # (drop what earlier pages did)
    browser.get(line.link())
    wait_for(lambda: browser.find_elements(CSS, "#topology g.node"),
             what="the topology drawn")


def _devtools(entry: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(entry["message"])["message"]
    return message


def edge(browser: WebDriver, a: str, b: str) -> dict[str, Any] | None:
    """The a-b edge as drawn: its state and the stroke colour the browser computed."""
    found: dict[str, Any] | None = browser.execute_script(
        """const g = document.querySelector(
             `#topology g.edge[data-a="${arguments[0]}"][data-b="${arguments[1]}"]`);
           if (!g) return null;
           return {state: g.dataset.state, label: g.querySelector("text").textContent,
                   stroke: getComputedStyle(g.querySelector("line")).stroke};""", a, b)
    return found


def test_sitectl_console_says_why_there_is_no_console(tmp_path: Path) -> None:
    site = Site(tmp_path, "lone", site_env(tmp_path)).init()
    stopped = site.sitectl("console", "--url", check=False)
    assert stopped.returncode == 1 and stopped.stdout == ""
    assert "the router of site lone is not running" in stopped.stderr
    with socket.socket() as squatter:  # the admin port is taken: the site runs without
        squatter.bind(("127.0.0.1", site.admin_port))
        squatter.listen()
        site.start()
        try:
            busy = site.sitectl("console", "--url", check=False)
            assert busy.returncode == 1 and busy.stdout == ""
            assert busy.stderr.startswith("sitectl: site lone has no admin port, so no "
                                          "console (cannot listen on 127.0.0.1:")
        finally:
            site.stop()


def test_sitectl_console_prints_a_link_and_the_api_wants_its_token(line: Line) -> None:
    url = line.link()
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.hostname == "127.0.0.1"
    assert parts.port == line.east.admin_port and parts.path == "/"
    assert parts.fragment.startswith("token=") and len(parts.fragment) > 40
    token = parts.fragment.removeprefix("token=")
    base = f"http://127.0.0.1:{parts.port}"
    for path, headers in (("/api/v1/snapshot", {}), ("/api/v1/events", {}),
                          ("/api/v1/snapshot", {"Authorization": "Bearer " + "x" * 43}),
                          ("/api/v1/snapshot?token=nope", {})):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(base + path, headers=headers),
                                   timeout=10)
        assert refused.value.code == 401, path
        assert refused.value.headers["Cache-Control"] == "no-store"
    req = urllib.request.Request(base + "/api/v1/snapshot",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert json.load(r)["site"] == "east"
    # The page itself loads without the token (it holds no data).
    with urllib.request.urlopen(base + "/", timeout=10) as r:
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    # Another site has another token; a router's token is new at each start.
    assert line.hub.sitectl("console", "--url").stdout.strip().split("#")[1] != parts.fragment
    as_json = json.loads(line.east.sitectl("console", "--json").stdout)
    assert as_json["link"] == url and as_json["token"] == token


def test_every_site_is_drawn_with_its_links(browser: WebDriver, line: Line,
                                            tmp_path: Path) -> None:
    opened(browser, line)
    sites = wait_for(lambda: len(got := browser.find_elements(
        CSS, "#topology g.node")) == 3 and got, what="three sites")
    assert sorted(s.get_attribute("data-site") or "" for s in sites) == ["east", "hub", "west"]
    [local] = browser.find_elements(CSS, "#topology g.node.local")
    assert local.get_attribute("data-site") == "east" and "this site" in local.text
    for a, b in (("east", "hub"), ("hub", "west")):
        wait_for(lambda a=a, b=b: (e := edge(browser, a, b)) and e["state"] == "up",
                 what=f"{a}-{b} drawn up")
        got = edge(browser, a, b)
        assert got is not None and got["stroke"] == GREEN
    assert edge(browser, "east", "west") is None  # no such link
    # east's own link shows its RTT once a keepalive was answered.
    assert "ms" in wait_for(lambda: (e := edge(browser, "east", "hub")) and "ms" in e["label"]
                            and e["label"], what="the east-hub RTT")
    # hub's link to west, with the RTT hub measures: from its traffic summary.
    assert "ms" in wait_for(lambda: (e := edge(browser, "hub", "west")) and "ms" in e["label"]
                            and e["label"], what="the hub-west RTT")
    assert "#token" not in browser.current_url  # out of the address bar (and history)
    assert browser.find_element(ID, "site-name").text == "east"
    assert browser.find_element(ID, "conn").text == "live"  # server-sent events
    links = browser.find_elements(CSS, "#links tbody tr[data-link]")
    assert [r.find_elements(TAG, "td")[1].text for r in links] == ["hub"]
    wait_for(lambda: browser.find_elements(CSS, '#services tr[data-key="db"]'),
             what="the db service listed")
    row = browser.find_element(CSS, '#services tr[data-key="db"]')
    assert "west" in row.text and "east \u2192 hub \u2192 west" in row.text
    shot(browser, tmp_path, "topology")


def test_a_running_flow_appears_with_its_path(browser: WebDriver, line: Line,
                                              tmp_path: Path) -> None:
    opened(browser, line)
    with socket.create_connection(("127.0.0.1", line.port), timeout=10) as sock:
        sock.sendall(b"p" * 5000)
        got = 0
        while got < 5000:
            got += len(sock.recv(65536))
        active = '#flows tr.flow[data-key="db"][data-state="active"]'
        row = wait_for(lambda: browser.find_elements(CSS, active),
                       what="the flow listed as active")[0]
        assert "east \u2192 hub \u2192 west" in row.text
        assert "5.00 KB / 5.00 KB" in wait_for(
            lambda: (r := browser.find_elements(CSS, active)) and r[0].text,
            what="its bytes")
        row.click()
        detail = wait_for(lambda: browser.find_elements(
            CSS, "#flows tr.detail .hops"), what="the flow's path shown")[0]
        hops = [h.text for h in detail.find_elements(CSS, ".hop")]
        assert hops == ["east", "hub", "west"]
        wires = [w.text for w in detail.find_elements(CSS, ".wire")]
        assert len(wires) == 2 and wires[0].startswith("RTT") and "ms" in wires[0]
        shot(browser, tmp_path, "flow")
        # Expanded rows stay expanded as the view updates each second.
        time.sleep(1.5)
        assert browser.find_elements(CSS, "#flows tr.detail .hops")
    ended = '#flows tr.flow[data-key="db"][data-state="ok"]'
    wait_for(lambda: browser.find_elements(CSS, ended), what="the flow ended ok")


def test_a_site_in_between_shows_every_sites_flows(browser: WebDriver, line: Line,
                                                  tmp_path: Path) -> None:
    """hub carries the flow but is neither of its ends: its console asks the others."""
    browser.get("about:blank")
    browser.get(line.hub.sitectl("console", "--url").stdout.strip())
    wait_for(lambda: browser.find_elements(CSS, '#topology g.node.local'),
             what="hub's console")
    with socket.create_connection(("127.0.0.1", line.port), timeout=10) as sock:
        sock.sendall(b"q" * 7000)
        got = 0
        while got < 7000:
            got += len(sock.recv(65536))
        browser.find_element(ID, "flows-network").click()
        active = '#flows tr.flow[data-key="db"][data-state="active"]'
        row = wait_for(lambda: browser.find_elements(CSS, active),
                       what="east's flow listed on hub")[0]
        assert "east \u2192 hub \u2192 west" in row.text and "7.00 KB" in row.text
        assert "every site's flows" in browser.find_element(ID, "flows-note").text
        shot(browser, tmp_path, "network-flows")
    browser.find_element(ID, "flows-here").click()
    wait_for(lambda: "this site's" in browser.find_element(ID, "flows-note").text,
             what="back to hub's own flows")


def test_nothing_loads_from_off_the_machine(browser: WebDriver, line: Line,
                                            tmp_path: Path) -> None:
    opened(browser, line)
    origin = f"http://127.0.0.1:{line.east.admin_port}"
    wait_for(lambda: browser.find_element(ID, "conn").text == "live", what="live")
    # Every request the browser made for this page, as DevTools saw it.
    urls = [m["params"]["request"]["url"] for m in map(
        _devtools, browser.get_log("performance")) if m["method"] == "Network.requestWillBeSent"]
    assert all(u.startswith(origin + "/") for u in urls), urls
    assert {urlsplit(u).path for u in urls} >= {
        "/", "/console/console.js", "/console/console.css", "/api/v1/events"}, urls
    # The page's own account agrees (the stream is not listed until it ends).
    loaded: list[str] = browser.execute_script(
        'return performance.getEntriesByType("resource").map((e) => e.name);')
    assert loaded and all(u.startswith(origin + "/") for u in loaded), loaded
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert problems == [], problems
    # And the policy really forbids the rest: a script, an image and a fetch elsewhere.
    blocked: list[str] = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
           const seen = [];
           document.addEventListener("securitypolicyviolation",
             (e) => { seen.push(e.violatedDirective); });
           const img = document.createElement("img");
           img.src = "http://192.0.2.1/pixel.png";
           document.body.append(img);
           const s = document.createElement("script");
           s.src = "http://192.0.2.1/x.js";
           document.body.append(s);
           fetch("http://192.0.2.1/data").catch(() => {});
           setTimeout(() => done(seen), 500);""")
    assert sorted(d.split("-src")[0] for d in blocked) == ["connect", "img", "script"], blocked
    shot(browser, tmp_path, "policy")


def test_a_killed_site_turns_its_link_red_without_a_reload(
        browser: WebDriver, line: Line, tmp_path: Path) -> None:
    opened(browser, line)
    wait_for(lambda: (e := edge(browser, "hub", "west")) and e["state"] == "up",
             what="hub-west up")
    browser.execute_script("window.__sameDocument = true;")
    line.west.kill()
    killed = time.monotonic()
    wait_for(lambda: (e := edge(browser, "hub", "west")) and e["stroke"] == RED,
             timeout=3.0, what="hub-west red in the console", step=0.02)
    took = time.monotonic() - killed
    got = edge(browser, "hub", "west")
    assert got is not None and got["state"] == "down"
    assert browser.execute_script("return window.__sameDocument === true;")  # no reload
    east_hub = edge(browser, "east", "hub")
    assert east_hub is not None and east_hub["state"] == "up"
    west = browser.find_element(CSS, '#topology g.node[data-site="west"]')
    wait_for(lambda: "unreachable" in (west.get_attribute("class") or ""),
             what="west drawn unreachable")
    shot(browser, tmp_path, "killed")
    print(f"hub-west red {took:.2f} s after west was killed")
