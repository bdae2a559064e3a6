"""Flows through routers that run in one trio.run, linked over memory streams with
real TLS, in virtual time: transit splicing, a refusal retried on the next site, a
path failure retried on the same site."""

from __future__ import annotations

import hashlib

import trio
import trio.testing

from tests.support.memnet import (
    HashService,
    blob,
    converged,
    mem_net,
    send_and_hash,
    serves,
    wait_until,
)
from router.site.config import ConnectorConfig

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
        assert got == hashlib.sha256(down).hexdigest()
        assert service.received == [hashlib.sha256(up).hexdigest()]
        assert a.flows.outcomes["ok"] == 1 and b.flows.outcomes["ok"] == 1
        # Transit is not a local flow end: t counted nothing, ever.
        assert seen_on_t and set(seen_on_t) == {0}
        assert t.flows.opened == 0 and not t.flows.outcomes
        assert t.flows.bytes_in == t.flows.bytes_out == 0
        assert a.flows.bytes_out == len(up) and b.flows.bytes_in == len(up)
