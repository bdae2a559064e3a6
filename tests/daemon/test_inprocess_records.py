"""Flow records across routers in one trio.run (memory links, real TLS, virtual time):
the network view, the ring's limit, recording off, and `$records` queries from a peer
that sends too much, sends garbage, floods, or never reads the answer."""

from __future__ import annotations

import itertools

import msgpack
import trio
import trio.testing

from router.daemon.flowsview import flows_reply
from router.flows.netrecords import MAX_SERVING, QUERY_BURST, SERVE_DEADLINE_S
from router.flows.recordwire import (
    ANSWER_WINDOW,
    QUERY_MAX_BYTES,
    RECORDS_KEY,
    Query,
    decode_answer,
)
from router.net.side import FlowSide
from router.protocol import FlowCode, Open
from router.site.config import ConnectorConfig, Limits
from tests.support.memnet import (
    Net,
    Node,
    converged,
    echo,
    mem_net,
    send_and_hash,
    serves,
    wait_until,
)

DB = (ConnectorConfig(key="db", host="db.b", port=5432),)


async def line(net: Net, *names: str) -> list[Node]:
    """Routers in a line; the last serves "db" (an echo)."""
    net.mem.listen(("db.b", 5432), echo)
    nodes = [await net.add_router(n) for n in names[:-1]]
    nodes.append(await net.add_router(names[-1], connectors=DB))
    for left, right in itertools.pairwise(nodes):
        net.link(left, right)
    await wait_until(lambda: converged(*nodes) and serves(nodes[0], "db", names[-1]), "routes")
    return nodes


async def run_flows(net: Net, node: Node, n: int, size: int = 1000) -> None:
    for i in range(n):
        await send_and_hash(net.client(node, "db"), bytes([i % 256]) * size)
    await wait_until(lambda: not node.flows.active, "flows ended")


async def test_network_view_merges_every_router(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        a, t, b = await line(net, "a", "t", "b")
        await run_flows(net, a, 3)
        await wait_until(lambda: len(b.flows.records) == 3, "b's halves")
        here = await flows_reply(t.router, {})
        assert here["records"] == []
        seen = await flows_reply(t.router, {"network": True})
        assert seen["missing"] == [] and seen["answered"] == ["a", "b", "t"]
        # a holds the whole records; b's halves of them are left out
        assert [r["role"] for r in seen["records"]] == ["listener"] * 3
        assert all(r["sites"] == ["a", "t", "b"] and r["server"] == "db.b:5432"
                   for r in seen["records"])
        assert {r["bytes_c2s"] for r in seen["records"]} == {1000}
        only_b = await flows_reply(a.router, {"network": True, "key": "other"})
        assert only_b["records"] == []


async def test_the_ring_keeps_its_limit_and_zero_keeps_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        net.mem.listen(("db.b", 5432), echo)
        a = await net.add_router("a", limits=Limits(flow_records_max=5))
        off = await net.add_router("off", limits=Limits(flow_records_max=0))
        b = await net.add_router("b", connectors=DB)
        net.link(a, b)
        net.link(off, b)
        await wait_until(lambda: converged(a, off, b) and serves(a, "db", "b")
                         and serves(off, "db", "b"), "routes")
        await run_flows(net, a, 8)
        assert len(a.flows.records) == 5 and a.flows.records.dropped == 3
        ids = [r["id"] for r in (await flows_reply(a.router, {}))["records"]]
        assert ids == [8, 7, 6, 5, 4]  # the newest, newest first
        await run_flows(net, off, 3)
        assert len(off.flows.records) == 0 and off.flows.records.dropped == 0
        assert off.flows.outcomes["ok"] == 3  # the counters still count


class Probe:
    """A peer's end of a `$records` flow, driven by hand."""

    def __init__(self) -> None:
        self.accepted = False
        self.refused: str | None = None
        self.reset: tuple[FlowCode, str] | None = None
        self.data = bytearray()
        self.fin = False

    def on_accepted(self, window: int, trace: tuple[str, ...], server: str) -> None:
        self.accepted = True

    def on_refused(self, code: FlowCode, reason: str) -> None:
        self.refused = reason

    def on_data(self, data: bytes) -> None:
        self.data += data

    def on_credit(self) -> None: ...

    def on_fin(self) -> None:
        self.fin = True

    def on_reset(self, code: FlowCode, reason: str) -> None:
        self.reset = (code, reason)

    @property
    def over(self) -> bool:
        return self.fin or self.refused is not None or self.reset is not None


def ask(src: Node, dest: Node, body: bytes | None, *, window: int = ANSWER_WINDOW,
        fin: bool = True) -> tuple[Probe, FlowSide]:
    """Open a `$records` flow from `src` to its neighbour `dest` and send `body` with it
    (as early data), then FIN unless told not to."""
    link = src.router.links.link_for(dest.id)
    assert link is not None
    side, probe = FlowSide(link), Probe()
    with link.batch():
        side.open(Open(routing_key=RECORDS_KEY, origin_site=src.name, origin_router=src.id,
                       dest_router=dest.id, client_addr="", trace=(src.id,), window=window),
                  probe)
        if body is not None:
            side.send(body, flush=False)
        if fin:
            side.fin()
    return probe, side


async def answered(probe: Probe, what: str) -> None:
    await wait_until(lambda: probe.over, what, timeout=SERVE_DEADLINE_S + 5)


async def test_hostile_queries_are_refused_and_the_router_goes_on(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        a, b = await line(net, "a", "b")
        await run_flows(net, a, 2)
        server = b.router.records_server
        good = Query().to_wire()
        cases = {
            "oversized": b"\x90" * (QUERY_MAX_BYTES + 1),
            "not msgpack": b"\xc1\xc1",
            "not a map": msgpack.packb([1, 2, 3]),
            "bad limit": msgpack.packb({"limit": 10**9}),
            "bad key": msgpack.packb({"key": "$records"}),
            "bool limit": msgpack.packb({"limit": True}),
            "deep": b"\x91" * 3000,  # nested arrays
        }
        for what, body in cases.items():
            probe, _ = ask(a, b, body)
            await answered(probe, what)
            assert probe.reset is not None and not probe.fin, what
            code, reason = probe.reset
            if what == "oversized":
                assert code is FlowCode.CAPACITY and "more than 4096 bytes" in reason
            else:
                assert "bad records query" in reason, (what, reason)
        # A well-formed query still gets its answer.
        probe, _ = ask(a, b, good)
        await answered(probe, "a good query")
        assert probe.fin and decode_answer(bytes(probe.data)).site == "b"
        assert server.serving == 0


async def test_a_query_never_finished_or_an_answer_never_read_times_out(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        a, b = await line(net, "a", "b")
        await run_flows(net, a, 30)  # b holds 30 connector halves
        server = b.router.records_server
        silent, _ = ask(a, b, Query().to_wire()[:3], fin=False)  # never finishes it
        stuck, _ = ask(a, b, Query().to_wire(), window=100)  # takes 100 bytes, no more
        await trio.sleep(SERVE_DEADLINE_S / 2)
        assert server.serving == 2 and not silent.over and not stuck.over
        await answered(silent, "the silent query")
        await answered(stuck, "the stuck answer")
        for probe in (silent, stuck):
            assert probe.reset is not None and probe.reset[0] is FlowCode.TIMEOUT
        assert len(stuck.data) == 100
        assert server.serving == 0


async def test_a_flood_of_queries_is_refused_past_the_limits(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        a, b = await line(net, "a", "b")
        server = b.router.records_server
        # Queries that never finish hold their slots until the deadline.
        held = [ask(a, b, None, fin=False)[0] for _ in range(MAX_SERVING + 10)]
        await wait_until(lambda: sum(p.accepted or p.refused is not None for p in held)
                         == len(held), "every OPEN answered")
        assert sum(p.accepted for p in held) == MAX_SERVING
        refused = [p.refused for p in held if p.refused is not None]
        assert len(refused) == 10 and "too many record queries" in refused[0]
        await wait_until(lambda: server.serving == 0, "the held ones timed out",
                         timeout=SERVE_DEADLINE_S + 5)
        # A burst past the token bucket: finished queries, all at once.
        burst = [ask(a, b, Query().to_wire())[0] for _ in range(QUERY_BURST + 20)]
        await wait_until(lambda: all(p.over for p in burst), "the burst answered")
        assert sum(p.fin for p in burst) >= MAX_SERVING
        assert sum(p.refused is not None for p in burst) >= 20
        await trio.sleep(QUERY_BURST)  # the bucket fills again
        probe, _ = ask(a, b, Query().to_wire())
        await answered(probe, "a later query")
        assert probe.fin and server.serving == 0
        assert b.flows.active == 0  # queries are not flows of the table


def test_the_query_bucket_refills_at_its_rate() -> None:
    from router.flows.netrecords import QUERIES_PER_S, RecordsServer
    from router.flows.table import FlowTable

    server = RecordsServer(table=FlowTable(), site="b", names=dict)
    assert all(server._admit(0.0) for _ in range(QUERY_BURST))  # serving stays 0 here
    assert not server._admit(0.0)
    assert sum(server._admit(1.0) for _ in range(100)) == int(QUERIES_PER_S)
    server.serving = MAX_SERVING
    assert not server._admit(100.0)  # the bucket is full, but every slot is taken
