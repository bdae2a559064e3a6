"""The metrics and probes of routers in one trio.run (memory links, real TLS, virtual
time): open flows counted while they run, link counters across a reconnect, the routing
change metrics, and /readyz from start to drain."""

from __future__ import annotations

import trio
import trio.testing
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.daemon.identity import Identity
from router.daemon.metrics import make_registry
from router.daemon.router import Router
from router.daemon.web import WebRequest, WebResponse
from router.site.config import ConnectorConfig, Limits, SiteConfig
from tests.support.memnet import Node, converged, echo, mem_net, serves, wait_until

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(node: Node) -> Series:
    text = generate_latest(make_registry(node.router)).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def value(got: Series, name: str, **labels: str) -> float:
    return got[name, frozenset(labels.items())]


async def page(router: Router, path: str) -> WebResponse:
    handler = router.web.find(path)
    assert handler is not None
    return await handler(WebRequest("GET", path, {}, {}))


async def test_open_flows_count_as_active_with_their_bytes(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        net.mem.listen(("db.b", 5432), echo)
        a = await net.add_router("a")
        b = await net.add_router("b", connectors=(
            ConnectorConfig(key="db", host="db.b", port=5432),))
        net.link(a, b)
        await wait_until(lambda: converged(a, b) and serves(a, "db", "b"), "routes")
        client = net.client(a, "db")
        await client.send_all(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            got += await client.receive_some()
        key = {"routing_key": "db", "role": "listener"}
        now = scrape(a)
        assert value(now, "vanrouter_flows_active", **key) == 1
        assert value(now, "vanrouter_flows_opened_total", **key) == 1
        assert value(now, "vanrouter_flows_closed_total", **key, outcome="ok") == 0
        assert value(now, "vanrouter_flow_bytes_total", **key, direction="c2s") == 1000
        assert value(now, "vanrouter_flow_bytes_total", **key, direction="s2c") == 1000
        served = scrape(b)
        assert value(served, "vanrouter_flows_active", routing_key="db", role="connector") == 1
        await client.aclose()
        await wait_until(lambda: not a.flows.active and not b.flows.active, "flow ended")
        after = scrape(a)
        assert value(after, "vanrouter_flows_active", **key) == 0
        assert value(after, "vanrouter_flows_opened_total", **key) == 1
        assert value(after, "vanrouter_flows_closed_total", **key, outcome="ok") == 1
        assert value(after, "vanrouter_flow_bytes_total", **key, direction="c2s") == 1000


async def test_link_counters_survive_a_reconnect_and_routing_changes_are_counted(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        a = await net.add_router("a")
        b = await net.add_router("b")
        net.link(a, b)
        await wait_until(lambda: converged(a, b), "routes")
        await trio.sleep(5)  # keepalives: a round trip time, and bytes both ways
        link = {"link": "a-b", "peer_site": "b"}
        before = scrape(a)
        assert value(before, "vanrouter_link_up", **link) == 1
        assert value(before, "vanrouter_link_reconnects_total", **link) == 0
        assert ("vanrouter_link_rtt_seconds", frozenset(link.items())) in before
        assert value(before, "vanrouter_routers_reachable") == 2
        changes = value(before, "vanrouter_routing_changes_total")
        net.mem.live(b.endpoint)[0].cut()
        await wait_until(lambda: a.router.links.dials["a-b"].link is None, "link down")
        down = scrape(a)
        assert value(down, "vanrouter_link_up", **link) == 0
        assert ("vanrouter_link_rtt_seconds", frozenset(link.items())) not in down
        await wait_until(lambda: converged(a, b) and a.router.links.dials["a-b"].link
                         is not None, "link up again")
        again = scrape(a)
        assert value(again, "vanrouter_link_reconnects_total", **link) == 1
        for direction in ("in", "out"):
            assert (value(again, "vanrouter_link_bytes_total", **link, direction=direction)
                    >= value(before, "vanrouter_link_bytes_total", **link,
                             direction=direction))
        assert value(again, "vanrouter_routing_changes_total") >= changes + 2  # down, up
        assert (value(again, "vanrouter_routing_last_change_timestamp_seconds")
                > value(before, "vanrouter_routing_last_change_timestamp_seconds"))
        # A refresh of the same records is no change.
        settled = value(scrape(a), "vanrouter_routing_changes_total")
        await trio.sleep(3 * Limits().routing_refresh_s)
        assert value(scrape(a), "vanrouter_routing_changes_total") == settled


async def test_readyz_from_starting_to_ready_to_draining(
        autojump_clock: trio.testing.MockClock) -> None:
    fresh = Router(Identity.generate("x", Limits()), SiteConfig(name="x", host="x", link_port=1))
    response = await page(fresh, "/readyz")
    assert (response.status, response.body) == (503, b"not ready: starting\n")
    assert (await page(fresh, "/healthz")).status == 200
    async with mem_net() as net:
        net.mem.listen(("db.a", 5432), echo)
        a = await net.add_router("a", connectors=(
            ConnectorConfig(key="db", host="db.a", port=5432),))
        assert (await page(a.router, "/readyz")).body == b"ready\n"
        client = net.client(a, "db")  # served here: a flow the drain waits for
        await client.send_all(b"ping")
        assert await client.receive_some() == b"ping"
        a.router.stop()
        with trio.fail_after(5):
            while (response := await page(a.router, "/readyz")).status == 200:
                await trio.sleep(0.01)
        assert (response.status, response.body) == (503, b"not ready: draining\n")
        await client.aclose()
        await a.stopped.wait()
