"""Traffic summaries between routers in one trio.run, in virtual time: the first site of a
line sees the far link's load and every site's key traffic (`status --network`), a router
that goes has its summary dropped, and a router of the version before summaries is sent
none and carries flows as before."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
import trio
import trio.testing

from router.daemon.status import network_status
from router.site.config import ConnectorConfig, Limits
from tests.support.memnet import Net, Node, converged, echo, mem_net, serves, wait_until

LIMITS = Limits(traffic_summary_s=1.0)
CHUNK = 64 * 1024
CHUNKS_PER_S = 10  # a steady 640 KiB/s each way


async def line(net: Net) -> tuple[Node, Node, Node]:
    """a - b - c, c serving "db" (an echo)."""
    net.mem.listen(("db.c", 5432), echo)
    a = await net.add_router("a")
    b = await net.add_router("b")
    c = await net.add_router("c", connectors=(ConnectorConfig(key="db", host="db.c",
                                                              port=5432),))
    net.link(a, b)
    net.link(b, c)
    await wait_until(lambda: converged(a, b, c) and serves(a, "db", "c"), "routes")
    return a, b, c


async def steady_client(net: Net, node: Node, seconds: float) -> None:
    """A flow through `node`'s listener for "db" moving CHUNK every 1/CHUNKS_PER_S s."""
    stream = net.client(node, "db")
    async with stream:
        for _ in range(int(seconds * CHUNKS_PER_S)):
            await stream.send_all(b"x" * CHUNK)
            got = 0
            while got < CHUNK:
                got += len(await stream.receive_some(CHUNK))
            await trio.sleep(1 / CHUNKS_PER_S)


def link_between(net: dict[str, object], a: str, b: str) -> dict[str, object]:
    links = net["links"]
    assert isinstance(links, list)
    found = [x for x in links if (x["a"], x["b"]) == (a, b)]
    assert len(found) == 1, links
    return found[0]  # type: ignore[no-any-return]


async def test_the_first_site_sees_the_far_link_and_every_sites_key_load(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net(LIMITS) as net:
        a, _b, c = await line(net)
        status: dict[str, object] = {}

        async def look() -> None:
            await trio.sleep(5)  # a few intervals into the transfer
            status.update(json.loads(json.dumps(network_status(a.router))))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(look)
            await steady_client(net, a, 8)
        far = link_between(status, "b", "c")
        assert far["state"] == "up" and far["cost"] == 1
        rate = CHUNK * CHUNKS_PER_S
        # Bytes on the link: the data plus its framing and the keepalive.
        for way in ("a_to_b_bytes_per_s", "b_to_a_bytes_per_s"):  # b>c, c>b
            assert rate <= far[way] <= 1.2 * rate, (way, far)  # type: ignore[operator]
        assert far["reported_by"] == "b"
        assert far["rtt_ms"] is not None
        near = link_between(status, "a", "b")
        assert near["reported_by"] == "a"
        keys = status["keys"]
        assert isinstance(keys, dict)
        traffic = {(x["site"], x["role"]): x for x in keys["db"]["traffic"]}
        assert set(traffic) == {("a", "listener"), ("c", "connector")}
        assert traffic["a", "listener"]["active"] == traffic["c", "connector"]["active"] == 1
        sites = {s["site"]: s for s in status["sites"]}  # type: ignore[attr-defined]
        assert all(s["summary"]["interval_s"] == 1.0 for s in sites.values())

        # Short flows: counted per second by both ends once they ended.
        for _ in range(10):
            await steady_client(net, a, 0.1)
        await trio.sleep(1.5)
        status = network_status(a.router)
        traffic = {(x["site"], x["role"]): x for x in status["keys"]["db"]["traffic"]}
        assert traffic["a", "listener"]["flows_per_s"] > 0
        assert traffic["c", "connector"]["flows_per_s"] > 0

        # c goes: its summary is dropped as soon as a no longer reaches it.
        c.router.stop()
        await c.stopped.wait()
        await wait_until(lambda: c.id not in a.router.routing.reachable(), "c unreachable")
        await wait_until(lambda: a.router.summaries.get(c.id) is None, "c's summary dropped",
                         timeout=1.5)
        status = network_status(a.router)
        assert {x["site"] for x in status["keys"]["db"]["traffic"]} <= {"a"}
        assert link_between(status, "b", "c")["state"] == "down"


async def test_a_router_without_summaries_is_sent_none_and_carries_flows(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """b runs as a router of the version before summaries: no feature in its HELLO, and
    every ROUTING payload taken as router records (it would drop a summary message)."""
    caplog.set_level(logging.WARNING)
    async with mem_net(LIMITS) as net:
        net.mem.listen(("db.c", 5432), echo)
        a = await net.add_router("a")
        b = await net.add_router("b")
        hello = b.router.identity.hello
        b.router.identity.hello = lambda: replace(hello(), features=())  # type: ignore[method-assign]
        b.router.agent.summaries = None
        c = await net.add_router("c", connectors=(ConnectorConfig(key="db", host="db.c",
                                                                  port=5432),))
        net.link(a, b)
        net.link(b, c)
        await wait_until(lambda: converged(a, b, c) and serves(a, "db", "c"), "routes")
        await steady_client(net, a, 3)
        assert a.router.summaries.neighbours() == set() == c.router.summaries.neighbours()
        # Nothing crossed b: a knows only its own summary, and nothing was dropped anywhere.
        assert {h.summary.router_id for h in a.router.summaries.held()} == {a.id}
        assert not [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        status = network_status(a.router)
        assert link_between(status, "a", "b")["reported_by"] == "a"
        assert link_between(status, "b", "c")["reported_by"] is None
