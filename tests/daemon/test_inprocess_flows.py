"""Flows through routers that run in one trio.run, linked over memory streams with
real TLS, in virtual time: transit splicing, a refusal retried on the next site, a
path failure retried on the same site."""

from __future__ import annotations

import hashlib

import trio
import trio.testing

from router.adaptors.stream import StreamFlow
from router.flows.entry import FlowEntry
from router.flows.forwarder import Route
from router.net.side import FlowSide
from router.protocol import FlowCode
from router.site.config import ConnectorConfig
from tests.support.memnet import (
    HashService,
    Node,
    blob,
    converged,
    echo,
    mem_net,
    send_and_hash,
    serves,
    wait_until,
)

MIB = 1024 * 1024


async def test_transit_splices_both_directions_and_holds_no_flow_end(
        autojump_clock: trio.testing.MockClock) -> None:
    up, down = blob(3 * MIB, b"client"), blob(2 * MIB, b"target")
    service = HashService(reply=down)
    async with mem_net() as net:
        net.mem.listen(("db.b", 5432), service)
        a = await net.add_router("a")
        t = await net.add_router("t")
        b = await net.add_router("b", connectors=(
            ConnectorConfig(key="db", host="db.b", port=5432),))
        net.link(a, t)
        net.link(t, b)
        await wait_until(lambda: converged(a, t, b) and serves(a, "db", "b"), "routes")
        assert a.router.routing.next_hop(b.id) == t.id  # a line: no other way
        seen_on_t: list[int] = []

        async def watch_transit() -> None:
            while True:  # what t's flow table holds while the bytes pass through it
                seen_on_t.append(t.flows.active)
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_transit)
            with trio.fail_after(30):
                got = await send_and_hash(net.client(a, "db"), up)
            nursery.cancel_scope.cancel()
        await wait_until(lambda: not a.flows.active and not b.flows.active, "flows ended")
        await wait_until(lambda: bool(service.received), "the target saw its stream end")
        assert got == hashlib.sha256(down).hexdigest()
        assert service.received == [hashlib.sha256(up).hexdigest()]
        assert a.flows.outcomes["ok"] == 1 and b.flows.outcomes["ok"] == 1
        # Transit is not a local flow end: t counted nothing, ever.
        assert seen_on_t and set(seen_on_t) == {0}
        assert t.flows.opened == 0 and not t.flows.outcomes
        assert t.flows.bytes_in == t.flows.bytes_out == 0
        assert a.flows.bytes_out == len(up) and b.flows.bytes_in == len(up)


Opened = tuple[Route[trio.abc.Stream, StreamFlow], list[StreamFlow], FlowEntry]


async def open_flow(node: Node, key: str, strategy: str) -> Opened:
    """What a listener does for one client, keeping every end tried: the route, the
    ends (one per OPEN sent, each with its refusal) and the table entry."""
    entry = node.flows.begin(key, "listener", client="test")
    ends: list[StreamFlow] = []

    def make_end(side: FlowSide) -> StreamFlow:
        ends.append(StreamFlow(side, entry))
        return ends[-1]

    route = await node.router.forwarder.open(entry, strategy, make_end=make_end,
                                             connect_local=node.router.connectors.connect)
    return route, ends, entry


async def pump_through(node: Node, opened: Opened, data: bytes) -> str:
    """Run the opened flow with a local client that sends `data`; what came back."""
    route, _, entry = opened
    assert route.end is not None
    ours, theirs = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(route.end.run, theirs)
        got = await send_and_hash(ours, data)
    node.flows.end(entry, "ok" if route.end.reset_reason is None else "reset")
    return got


async def test_a_refusing_site_is_skipped_for_the_next_one(
        autojump_clock: trio.testing.MockClock) -> None:
    data = blob(MIB, b"up")
    async with mem_net() as net:
        net.mem.listen(("db.c", 5432), echo)  # nothing listens on db.b
        a = await net.add_router("a")
        b = await net.add_router("b", connectors=(
            ConnectorConfig(key="db", host="db.b", port=5432, priority=0),))
        c = await net.add_router("c", connectors=(
            ConnectorConfig(key="db", host="db.c", port=5432, priority=1),))
        net.link(a, b)
        net.link(a, c)
        await wait_until(lambda: converged(a, b, c) and serves(a, "db", "b", "c"), "routes")
        with trio.fail_after(10):
            opened = await open_flow(a, "db", "priority")
            route, ends, _ = opened
            assert route.site == "c"
            assert [end.side.peer_site for end in ends] == ["b", "c"]
            refusal = ends[0].refusal
            assert refusal is not None and refusal.code is FlowCode.NO_TARGET
            assert not refusal.path_failed  # the site's fault: b is not asked again
            assert "site b cannot reach 'db' target db.b:5432" in str(refusal)
            assert await pump_through(a, opened, data) == hashlib.sha256(data).hexdigest()
            # A client of a's listener sees the same: its bytes come back from c.
            got = await send_and_hash(net.client(a, "db", "priority"), data)
            assert got == hashlib.sha256(data).hexdigest()
        await wait_until(lambda: not (a.flows.active or c.flows.active), "flows ended")
        assert b.flows.outcomes == {"refused": 2}
        assert c.flows.outcomes == {"ok": 2}
        assert len(net.mem.attempts[("db.b", 5432)]) == 2


async def test_a_path_failure_is_retried_on_the_same_site(
        autojump_clock: trio.testing.MockClock) -> None:
    data = blob(MIB, b"up")
    async with mem_net() as net:
        net.mem.listen(("db.b", 5432), echo)
        a = await net.add_router("a")
        t1 = await net.add_router("t1")
        t2 = await net.add_router("t2")
        b = await net.add_router("b", connectors=(
            ConnectorConfig(key="db", host="db.b", port=5432),))
        net.link(a, t1, cost=1)  # a diamond; a prefers the way through t1
        net.link(a, t2, cost=5)
        net.link(t1, b)
        net.link(t2, b)
        await wait_until(lambda: converged(a, t1, t2, b) and serves(a, "db", "b"), "routes")
        assert a.router.routing.next_hop(b.id) == t1.id
        [t1_b] = net.mem.live(b.endpoint, source="t1")
        t1_b.server.set_state("held")  # b reads nothing more from t1: the OPEN waits
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                result: list[Opened] = []

                async def opener() -> None:
                    result.append(await open_flow(a, "db", "balanced"))

                nursery.start_soon(opener)
                t1_link = t1.router.links.link_for(b.id)
                assert t1_link is not None
                await wait_until(lambda: bool(t1_link.flows), "the OPEN in transit on t1")
                net.mem.refuse(b.endpoint)  # the link stays down
                t1_b.cut()  # under the OPEN
            [opened] = result
            route, ends, _ = opened
            assert route.site == "b"
            assert [end.side.peer_site for end in ends] == ["t1", "t2"]
            refusal = ends[0].refusal
            assert refusal is not None and refusal.code is FlowCode.LINK_LOST
            assert refusal.path_failed
            assert str(refusal).startswith("link to b lost: connection lost")
            assert await pump_through(a, opened, data) == hashlib.sha256(data).hexdigest()
        assert b.flows.outcomes == {"ok": 1}
        assert a.router.routing.next_hop(b.id) == t2.id
