"""Request counts in /metrics and `sitectl status`: two router subprocesses (east's http
listener, west's HTTP/1.1 connector to tests/support/httpd.py), requests from httpx.

Each request is a flow in the table of both routers, counted per key; the listener's
router also counts it by method, status class and serving site, with the error share."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_e2e_http import Backend
from tests.support.sites import Site, free_port, link, site_env, start_sites, wait_for

REQUESTS = 20


class Net:
    def __init__(self, workdir: Path) -> None:
        env = site_env(workdir)
        self.west = Site(workdir, "west", env).init()
        self.east = Site(workdir, "east", env).init()
        start_sites(self.west, self.east)
        link(self.west, self.east, workdir)
        self.backend = Backend(workdir, "west", h2=False)
        self.backend.start()
        self.west.sitectl("connector", "create", "api", f"127.0.0.1:{self.backend.port}",
                          "--protocol", "http1")
        port = free_port()
        self.east.sitectl("listener", "create", "api", str(port), "--protocol", "http")
        wait_for(lambda: self.east.state()["keys"]["api"]["served_by"] == ["west"],
                 what="api served by west")
        self.url = f"http://127.0.0.1:{port}"
        with httpx.Client(limits=httpx.Limits(max_connections=1)) as client:
            for _ in range(REQUESTS):
                r = client.get(f"{self.url}/whoami")
                assert (r.status_code, r.text) == (200, "west"), r.text

    def scrape(self, name: str) -> str:
        return (self.west if name == "west" else self.east).admin_get("/metrics")

    def stop(self) -> None:
        self.backend.stop()
        self.east.stop()
        self.west.stop()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    n = Net(tmp_path_factory.mktemp("http-metrics"))
    yield n
    n.stop()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name{labels}` (labels in any order), None if absent."""
    for line in text.splitlines():
        m = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if m and dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))) == labels:
            return float(m.group(2))
    return None


def test_each_request_is_a_flow_per_key_in_metrics(net: Net) -> None:
    wait_for(lambda: sample(net.scrape("east"), "vanrouter_flows_closed_total",
                            routing_key="api", role="listener", outcome="ok") == REQUESTS,
             what=f"east counting {REQUESTS} listener flows for api")
    wait_for(lambda: sample(net.scrape("west"), "vanrouter_flows_closed_total",
                            routing_key="api", role="connector", outcome="ok") == REQUESTS,
             what=f"west counting {REQUESTS} connector flows for api")
    text = net.scrape("east")
    assert sample(text, "vanrouter_flows_active", routing_key="api", role="listener") == 0
    assert "vanrouter_flow_records_dropped_total 0.0" in text
    assert sample(text, "vanrouter_flows_closed_total", routing_key="api", role="listener",
                  outcome="refused") == 0


def test_status_json_counts_flows_per_key(net: Net) -> None:
    traffic = wait_for(lambda: (t := net.east.state()["traffic"]).get("api", {}).get(
        "flows", {}).get("listener") == REQUESTS and t, what="status traffic for api")
    assert traffic["api"]["flows"] == {"listener": REQUESTS}
    assert net.west.status()["traffic"]["api"]["flows"] == {"connector": REQUESTS}


def test_requests_by_method_status_class_and_site_in_metrics(net: Net) -> None:
    text = net.scrape("east")
    assert sample(text, "vanrouter_http_requests_total", routing_key="api", method="GET",
                  code_class="2xx", site="west") == REQUESTS
    assert sample(text, "vanrouter_http_request_duration_seconds_count",
                  routing_key="api") == REQUESTS
    assert sample(text, "vanrouter_http_request_duration_seconds_bucket", routing_key="api",
                  le="+Inf") == REQUESTS


def test_status_shows_request_counts_and_error_share(net: Net) -> None:
    http = net.east.status()["traffic"]["api"]["http"]
    assert http["requests"] == REQUESTS and http["error_share"] == 0.0
    assert http["by_status_class"] == {"2xx": REQUESTS}
    assert http["by_site"] == {"west": REQUESTS}
    text = net.east.sitectl("status").stdout
    line = next(x for x in text.splitlines() if x.strip().startswith("api ")
                and "requests" in x)
    assert f"{REQUESTS} requests (2xx {REQUESTS}), errors 0.0%" in line, text
