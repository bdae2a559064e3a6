"""Links between routers that run in one trio.run, over memory streams with real TLS,
in virtual time: keepalive and the dead-link bound, redial backoff with jitter, drain
on shutdown. Seconds of protocol time pass in milliseconds."""

from __future__ import annotations

import hashlib
import itertools

import pytest
import trio
import trio.testing

from router.adaptors.stream import StreamFlow
from router.net.link import Link
from router.site.config import ConnectorConfig, Limits
from tests.support.memnet import (
    HashService,
    Net,
    Node,
    blob,
    converged,
    mem_net,
    serves,
    wait_until,
)

MIB = 1024 * 1024
LIMITS = Limits(keepalive_interval_s=1.0, dead_after_s=3.0, redial_min_s=0.2,
                redial_max_s=3.2, drain_timeout_s=5.0)


async def linked_pair(net: Net, **kw: tuple[ConnectorConfig, ...]) -> tuple[Node, Node, Link]:
    """a dials b; returns them once routing converged, and a's link to b."""
    a = await net.add_router("a")
    b = await net.add_router("b", connectors=kw.get("connectors", ()))
    net.link(a, b)
    await wait_until(lambda: converged(a, b), "a and b route to each other")
    link = a.router.links.link_for(b.id)
    assert link is not None
    return a, b, link


async def test_a_silent_peer_is_declared_dead_within_the_bound(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net(LIMITS) as net:
        a, b, a_link = await linked_pair(net)
        b_link = b.router.links.link_for(a.id)
        assert b_link is not None
        await trio.sleep(10)  # idle: only keepalive PINGs and PONGs cross
        net.mem.refuse(b.endpoint)  # a must not simply dial again
        [conn] = net.mem.live(b.endpoint)
        silenced = trio.current_time()
        conn.silence()
        gone: dict[str, float] = {}
        with trio.fail_after(10):
            while len(gone) < 2:
                for node, peer in ((a, b), (b, a)):
                    if peer.id not in node.neighbours() and node.name not in gone:
                        gone[node.name] = trio.current_time() - silenced
                await trio.sleep(0.01)
        # Dead after dead_after_s without receiving; the last byte came at most one
        # keepalive interval before the silence.
        for name, after in gone.items():
            assert LIMITS.dead_after_s - LIMITS.keepalive_interval_s <= after, name
            assert after <= LIMITS.dead_after_s + 0.02, name
        assert a_link.closed_reason == b_link.closed_reason == "no traffic from peer for 3.0 s"
        # Gone from routing, not only from the link table.
        assert b.id not in a.router.routing.reachable()
        assert a.id not in b.router.routing.reachable()
        assert a.router.links.link_for(b.id) is None and b.router.links.link_for(a.id) is None


async def test_a_healthy_idle_link_stays_up(autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net(LIMITS) as net:
        a, b, link = await linked_pair(net)
        bytes_in = link.bytes_in
        with trio.fail_after(61):
            for _ in range(120):
                await trio.sleep(0.5)
                assert a.router.links.link_for(b.id) is link and link.closed_reason is None
                assert b.id in a.neighbours() and a.id in b.neighbours()
        assert net.mem.attempts[b.endpoint] == [net.mem.attempts[b.endpoint][0]]  # one dial
        assert link.rtt is not None  # PINGs answered
        assert link.bytes_in > bytes_in
        assert a.router.links.dials["a-b"].state == "up"


def backoff_ok(times: list[float], first: float) -> list[float]:
    """The gaps between connect attempts; each within [d/2, d], d doubling from `first`
    up to LIMITS.redial_max_s."""
    gaps = [t1 - t0 for t0, t1 in itertools.pairwise(times)]
    delay = first
    for i, gap in enumerate(gaps):
        assert delay / 2 - 1e-9 <= gap <= delay + 1e-9, (i, gap, delay, gaps)
        delay = min(delay * 2, LIMITS.redial_max_s)
    return gaps


async def test_redial_backs_off_with_jitter_and_comes_up(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net(LIMITS) as net:
        a = await net.add_router("a")
        b = await net.add_router("b")
        net.mem.refuse(b.endpoint)
        net.link(a, b)
        attempts = net.mem.attempts.setdefault(b.endpoint, [])
        await wait_until(lambda: len(attempts) >= 12, "a dozen dials")
        gaps = backoff_ok(attempts, LIMITS.redial_min_s)
        assert len(set(gaps)) == len(gaps)  # jitter: no two the same
        assert max(gaps) > LIMITS.redial_max_s / 2  # the cap was reached
        dial = a.router.links.dials["a-b"]
        assert dial.state == "connecting"
        assert dial.last_error == "cannot connect to b:7000: Connection refused"
        net.mem.refuse(b.endpoint, False)
        allowed = trio.current_time()
        await wait_until(lambda: b.id in a.neighbours(), "the link up",
                         timeout=LIMITS.redial_max_s + 0.01)
        assert attempts[-1] >= allowed and dial.state == "up"
        # Up for longer than 10 x redial_min_s, it was healthy: the next redial is quick.
        await trio.sleep(10 * LIMITS.redial_min_s)
        lost = trio.current_time()
        net.mem.live(b.endpoint)[0].cut()
        await wait_until(lambda: len(attempts) >= 14 and b.id in a.neighbours(), "redialled")
        assert LIMITS.redial_min_s / 2 <= attempts[-1] - lost <= LIMITS.redial_min_s


async def start_flow(net: Net, a: Node, first: bytes, rest: bytes, go: trio.Event,
                     got: list[str], nursery: trio.Nursery) -> None:
    """A client of a's listener sends `first`, waits for `go`, sends `rest` and EOF;
    `got` receives the sha256 of what came back once its stream ended."""
    client = net.client(a, "db")

    async def run() -> None:
        async def send() -> None:
            await client.send_all(first)
            await go.wait()
            await client.send_all(rest)
            assert isinstance(client, trio.abc.HalfCloseableStream)
            await client.send_eof()

        digest = hashlib.sha256()
        async with trio.open_nursery() as inner:
            inner.start_soon(send)
            while chunk := await client.receive_some(65536):
                digest.update(chunk)
            got.append(digest.hexdigest())

    nursery.start_soon(run)
    await wait_until(lambda: a.flows.bytes_out >= len(first), "the first bytes sent")


@pytest.mark.parametrize("stopping", ["a", "b"])  # the opener's router, the server's
async def test_shutdown_lets_an_open_flow_finish_then_says_goaway(
        autojump_clock: trio.testing.MockClock, stopping: str) -> None:
    up, down = blob(2 * MIB, b"up"), blob(MIB, b"down")
    service = HashService(reply=down)
    async with mem_net(LIMITS) as net:
        net.mem.listen(("db.b", 5432), service)
        a, b, a_link = await linked_pair(net, connectors=(
            ConnectorConfig(key="db", host="db.b", port=5432),))
        await wait_until(lambda: serves(a, "db", "b"), "a sees db")
        b_link = b.router.links.link_for(a.id)
        assert b_link is not None
        node, peer_link = (a, b_link) if stopping == "a" else (b, a_link)
        got: list[str] = []
        go = trio.Event()
        async with trio.open_nursery() as nursery:
            await start_flow(net, a, up[:MIB], up[MIB:], go, got, nursery)
            stopped_at = trio.current_time()
            node.router.stop()
            await trio.sleep(2)  # the client goes on after 2 s of drain
            assert peer_link.closed_reason is None  # no GOAWAY while the flow runs
            go.set()
        with trio.fail_after(LIMITS.drain_timeout_s):
            await node.stopped.wait()
        assert trio.current_time() - stopped_at < LIMITS.drain_timeout_s
        assert got == [hashlib.sha256(down).hexdigest()]
        await wait_until(lambda: bool(service.received), "the target saw its EOF")
        assert service.received == [hashlib.sha256(up).hexdigest()]
        assert a.flows.outcomes == {"ok": 1} and b.flows.outcomes == {"ok": 1}
        await wait_until(lambda: peer_link.closed_reason is not None, "the peer's link ends")
        assert peer_link.closed_reason == "peer closed the link: router shutting down"


async def test_shutdown_resets_a_flow_still_open_at_the_drain_deadline(
        autojump_clock: trio.testing.MockClock) -> None:
    async def sink(stream: trio.abc.Stream) -> None:
        async with stream:  # reads, never answers, never closes first
            while await stream.receive_some():
                pass

    async with mem_net(LIMITS) as net:
        net.mem.listen(("db.b", 5432), sink)
        a, b, _a_link = await linked_pair(net, connectors=(
            ConnectorConfig(key="db", host="db.b", port=5432),))
        await wait_until(lambda: serves(a, "db", "b"), "a sees db")
        b_link = b.router.links.link_for(a.id)
        assert b_link is not None
        got: list[str] = []
        async with trio.open_nursery() as nursery:
            # The client never sends its EOF (`go` is never set).
            await start_flow(net, a, b"x" * 1000, b"", trio.Event(), got, nursery)
            [b_end] = b_link.flows.values()
            assert isinstance(b_end, StreamFlow)
            stopped_at = trio.current_time()
            a.router.stop()
            with trio.fail_after(LIMITS.drain_timeout_s + 1.1):
                await a.stopped.wait()
                # The client sees its stream end, and only at the drain deadline.
                while not got:
                    await trio.sleep(0.01)
                ended_after = trio.current_time() - stopped_at
            nursery.cancel_scope.cancel()
        assert LIMITS.drain_timeout_s <= ended_after <= LIMITS.drain_timeout_s + 1.1
        # Cancelled at the deadline: the flow was reset.
        assert a.flows.outcomes == {"reset": 1}
        await wait_until(lambda: b.flows.active == 0, "b's end of the flow ended")
        assert b.flows.outcomes == {"reset": 1}
        assert b_end.reset_reason == "link to a lost: peer closed the link: router shutting down"
        assert b_link.closed_reason == "peer closed the link: router shutting down"
