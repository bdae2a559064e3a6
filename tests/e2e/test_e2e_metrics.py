"""The admin port of running routers (subprocesses): /metrics parsed back with
prometheus_client's parser as TCP and HTTP flows run, docs/metrics.md against a live
scrape (both ways), the number of series under many client ports, the probes, the
admin URL in status, and the site.toml of before admin_port."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from signal import SIGTERM

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_e2e_http import Backend
from tests.support.services import EchoServer
from tests.support.sites import ROOT, Site, free_port, link, site_env, start_sites, wait_for

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
TCP_BYTES = 10_000


def series(text: str) -> Series:
    """Every sample of a scrape: (name, labels) -> value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(got: Series, name: str, **labels: str) -> float:
    """A sample's value; 0 if the scrape has no such series (yet)."""
    return got.get((name, frozenset(labels.items())), 0.0)


def tcp_flow(port: int, size: int = TCP_BYTES) -> int:
    """Send `size` bytes through an echo service and read them back; the client port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"m" * size)
        sock.shutdown(socket.SHUT_WR)
        got = 0
        while data := sock.recv(65536):
            got += len(data)
        assert got == size
        client_port: int = sock.getsockname()[1]
    return client_port


class Net:
    """east (a tcp and an http listener) linked to west (an echo service and an HTTP/1.1
    backend); one flow of each kind has run, so every metric has a series."""

    def __init__(self, workdir: Path) -> None:
        env = site_env(workdir)
        self.west = Site(workdir, "west", env).init()
        self.east = Site(workdir, "east", env).init()
        start_sites(self.west, self.east)
        link(self.west, self.east, workdir)
        self.echo = EchoServer()
        self.backend = Backend(workdir, "west", h2=False)
        self.backend.start()
        self.west.sitectl("connector", "create", "db", f"127.0.0.1:{self.echo.port}")
        self.west.sitectl("connector", "create", "api", f"127.0.0.1:{self.backend.port}",
                          "--protocol", "http1")
        self.tcp_port, http_port = free_port(), free_port()
        self.east.sitectl("listener", "create", "db", str(self.tcp_port))
        self.east.sitectl("listener", "create", "api", str(http_port), "--protocol", "http")
        wait_for(lambda: self.east.key_reachable("db") and self.east.key_reachable("api"),
                 what="db and api reachable from east")
        self.url = f"http://127.0.0.1:{http_port}/whoami"
        tcp_flow(self.tcp_port)
        self.get(1)
        wait_for(lambda: value(self.scrape(self.east), "vanrouter_flows_closed_total",
                               routing_key="db", role="listener", outcome="ok") == 1,
                 what="the first flow counted")

    def get(self, n: int) -> None:
        with httpx.Client() as client:
            for _ in range(n):
                r = client.get(self.url)
                assert (r.status_code, r.text) == (200, "west")

    @staticmethod
    def scrape(site: Site) -> Series:
        return series(site.admin_get("/metrics"))

    def stop(self) -> None:
        self.backend.stop()
        self.echo.close()
        self.east.stop()
        self.west.stop()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    n = Net(tmp_path_factory.mktemp("metrics"))
    yield n
    n.stop()


def test_values_move_as_tcp_and_http_flows_run(net: Net) -> None:
    east0, west0 = net.scrape(net.east), net.scrape(net.west)
    for _ in range(3):
        tcp_flow(net.tcp_port)
    net.get(4)

    def delta(site: Site, before: Series, name: str, **labels: str) -> float:
        return value(net.scrape(site), name, **labels) - value(before, name, **labels)

    db = {"routing_key": "db"}
    wait_for(lambda: delta(net.east, east0, "vanrouter_flows_closed_total", **db,
                           role="listener", outcome="ok") == 3, what="east: 3 db flows ended")
    wait_for(lambda: delta(net.west, west0, "vanrouter_flows_closed_total", **db,
                           role="connector", outcome="ok") == 3, what="west: 3 db flows ended")
    east, west = net.scrape(net.east), net.scrape(net.west)
    for got, before, role in ((east, east0, "listener"), (west, west0, "connector")):
        def moved(name: str, got: Series = got, before: Series = before, role: str = role,
                  **labels: str) -> float:
            return value(got, name, **db, role=role, **labels) - value(before, name, **db,
                                                                        role=role, **labels)
        assert moved("vanrouter_flows_opened_total") == 3
        assert value(got, "vanrouter_flows_active", **db, role=role) == 0
        assert moved("vanrouter_flow_bytes_total", direction="c2s") == 3 * TCP_BYTES
        assert moved("vanrouter_flow_bytes_total", direction="s2c") == 3 * TCP_BYTES
    api = {"routing_key": "api"}
    assert value(east, "vanrouter_http_requests_total", **api, method="GET", code_class="2xx",
                 site="west") - value(east0, "vanrouter_http_requests_total", **api,
                                      method="GET", code_class="2xx", site="west") == 4
    for name, labels in (("vanrouter_http_request_duration_seconds_count", api),
                         ("vanrouter_flow_ttfb_seconds_count", {**api, "role": "listener"})):
        assert value(east, name, **labels) - value(east0, name, **labels) == 4, name
    for direction in ("in", "out"):
        link_bytes = {"link": "in:east", "peer_site": "east", "direction": direction}
        assert (value(west, "vanrouter_link_bytes_total", **link_bytes)
                > value(west0, "vanrouter_link_bytes_total", **link_bytes) + 3 * TCP_BYTES)
    assert value(west, "vanrouter_link_up", link="in:east", peer_site="east") == 1
    assert value(east, "vanrouter_routers_known") == 2


DOC_ROW = re.compile(r"^\| `(vanrouter_\w+)` \|\s*(\w+)\s*\|([^|]*)\|")


def documented() -> set[tuple[str, str, frozenset[str]]]:
    """(name, type, labels) of every row of docs/metrics.md's table."""
    rows = set()
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        m = DOC_ROW.match(line)
        if m:
            labels = frozenset(re.findall(r"`(\w+)`", m.group(3)))
            rows.add((m.group(1), m.group(2), labels))
    return rows


def scraped(text: str) -> set[tuple[str, str, frozenset[str]]]:
    """(name as the docs write it, type, labels) of every metric with a sample (west
    has no HTTP request series: requests are counted where the client is)."""
    out = set()
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
        if family.samples:
            out.add((name, family.type, labels))
    return out


def test_docs_list_every_metric_a_scrape_has_and_no_other(net: Net) -> None:
    wait_for(lambda: ("vanrouter_link_rtt_seconds", frozenset(
        {("link", "in:east"), ("peer_site", "east")})) in net.scrape(net.west),
        what="west's link to east has a round trip time")
    live = scraped(net.west.admin_get("/metrics")) | scraped(net.east.admin_get("/metrics"))
    doc = documented()
    assert len(doc) >= 19
    assert live - doc == set(), "scraped but not in docs/metrics.md"
    assert doc - live == set(), "in docs/metrics.md but not scraped"


def test_series_stay_put_as_clients_come_from_many_ports(net: Net) -> None:
    """No label takes a client's address or port: 60 more flows, each from a port of
    its own, add no series on either router."""
    tcp_flow(net.tcp_port)
    east0, west0 = net.scrape(net.east), net.scrape(net.west)
    ports = {tcp_flow(net.tcp_port) for _ in range(60)}
    assert len(ports) == 60
    wait_for(lambda: value(net.scrape(net.west), "vanrouter_flows_closed_total",
                           routing_key="db", role="connector", outcome="ok")
             == value(west0, "vanrouter_flows_closed_total", routing_key="db",
                      role="connector", outcome="ok") + 60, what="west counting 60 flows")
    east, west = net.scrape(net.east), net.scrape(net.west)
    assert set(east) == set(east0) and set(west) == set(west0)
    labels = {v for got in (east, west) for _, ls in got for _, v in ls}
    assert not {v for v in labels if "127.0.0.1" in v or any(str(p) in v for p in ports)}


def test_probes_and_the_admin_url_in_status(net: Net) -> None:
    assert net.east.admin_get("/healthz") == "ok\n"
    assert net.east.admin_get("/readyz") == "ready\n"
    with pytest.raises(urllib.error.HTTPError) as missing:
        net.east.admin_get("/nowhere")
    assert missing.value.code == 404
    url = f"http://127.0.0.1:{net.east.admin_port}/"
    status = net.east.status()
    assert status["admin_url"] == url and status["admin_error"] is None
    assert f"admin: {url}" in net.east.sitectl("status").stdout


def admin_status(site: Site, path: str) -> tuple[int, str]:
    try:
        return 200, site.admin_get(path)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_readyz_says_draining_while_flows_finish(tmp_path: Path) -> None:
    site = Site(tmp_path, "solo", site_env(tmp_path)).init()
    echo = EchoServer()
    port = free_port()
    try:
        site.start()
        site.sitectl("connector", "create", "db", f"127.0.0.1:{echo.port}")
        site.sitectl("listener", "create", "db", str(port))
        wait_for(lambda: site.key_reachable("db"), what="db served")
        assert admin_status(site, "/readyz") == (200, "ready\n")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
            held.sendall(b"ping")
            assert held.recv(4) == b"ping"  # a flow is open: the drain waits for it
            site.signal(SIGTERM)
            wait_for(lambda: admin_status(site, "/readyz") == (503, "not ready: draining\n"),
                     what="readyz saying draining")
            assert admin_status(site, "/healthz") == (200, "ok\n")
    finally:
        site.stop()
        echo.close()


def set_site_line(site: Site, pattern: str, line: str) -> None:
    config = site.dir / "site.toml"
    text, n = re.subn(pattern, line, config.read_text(), count=1, flags=re.M)
    assert n == 1, pattern
    config.write_text(text)


def test_an_old_site_toml_with_metrics_port_or_without_either(tmp_path: Path) -> None:
    site = Site(tmp_path, "old", site_env(tmp_path)).init()
    port = site.admin_port
    # As sitectl wrote it before admin_port: metrics_port, and no admin_bind.
    set_site_line(site, r"^admin_port = \d+$", f"metrics_port = {port}")
    set_site_line(site, r"^admin_bind = .*$", "")
    site.start()
    try:
        assert "vanrouter_site_info" in site.admin_get("/metrics")
        assert site.status()["admin_url"] == f"http://127.0.0.1:{port}/"
        said = "metrics_port is the old name of admin_port"
        assert site.log_tail(400).count(said) == 1
        site.sitectl("listener", "create", "x", str(free_port()))  # a save renames it
        text = (site.dir / "site.toml").read_text()
        assert f"admin_port = {port}\n" in text and "metrics_port" not in text
    finally:
        site.stop()
    set_site_line(site, r"^admin_port = \d+$", "admin_port = 0")  # as if neither
    site.start()
    try:
        assert site.status()["admin_url"] is None
        assert "admin: none (add `admin_port = PORT` under [site]" in site.sitectl(
            "status").stdout
    finally:
        site.stop()


def test_a_taken_admin_port_leaves_the_site_up_and_status_says_why(tmp_path: Path) -> None:
    site = Site(tmp_path, "busy", site_env(tmp_path)).init()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", site.admin_port))
        squatter.listen()
        site.start()
        try:
            status = site.status()
            assert status["admin_url"] is None
            assert status["admin_error"].startswith(
                f"cannot listen on 127.0.0.1:{site.admin_port}: ")
            assert "admin: NOT LISTENING: cannot listen" in site.sitectl("status").stdout
        finally:
            site.stop()
