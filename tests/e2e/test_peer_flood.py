"""An authenticated peer that sends but never reads cannot grow a router: replies stop
being queued past a bound, the router stops reading, and the link ends with a reason
that says so. Real router subprocesses; the peer is built here from the site's CA."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator

import pytest
import trio

from router.net.tls import TLSStream
from router.protocol import FrameType, Open
from router.protocol.frames import HEADER
from tests.e2e.test_e2e_flows import StallServer
from tests.support.peers import LinkedPair, authenticated_peer
from tests.support.sites import Site

RSS_GROWTH_BOUND_KIB = 60 * 1024  # unbounded, 20 s of PINGs grew a router by 178 MB
FLOW_CAP = 8
UNTIL_CLOSED_S = 40  # keepalive finds the silent link after dead_after_s (3 s) paused


def cap_flows(west: Site) -> None:
    toml = west.dir / "site.toml"
    text, n = re.subn(r"(?m)^max_flows_per_link = \d+$",
                      f"max_flows_per_link = {FLOW_CAP}", toml.read_text())
    assert n == 1, "site.toml has no max_flows_per_link line"
    toml.write_text(text)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinkedPair]:
    pair = LinkedPair(tmp_path_factory.mktemp("flood"), prepare=cap_flows)
    yield pair
    pair.stop()


async def flood_until_closed(site: Site, stream: TLSStream, batch: Callable[[], bytes]) -> int:
    """Write batches as fast as the router takes them until it drops the connection;
    returns the router's peak RSS growth meanwhile, in KiB."""
    base = peak = site.rss_kib()

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, site.rss_kib())
            await trio.sleep(0.05)

    with trio.fail_after(UNTIL_CLOSED_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            try:
                while True:
                    await stream.send_all(batch())
            except trio.BrokenResourceError:
                pass  # the router ended the link
            nursery.cancel_scope.cancel()
    with trio.move_on_after(1):
        await stream.transport.aclose()
    return peak - base


def assert_ended_and_router_serves(sites: LinkedPair, target: Site, name: str) -> None:
    ended = re.search(rf"link in:{name} to {name} ended: (.*)", target.log_path.read_text())
    assert ended, target.log_tail()
    assert re.fullmatch(r"peer is not reading: \d+ bytes queued", ended.group(1)), ended.group(1)
    assert all(lk["peer_site"] != name for lk in target.status()["links"])
    # The link between the two routers and flows over it still work.
    sites.assert_serves(f"echo-{name}")


async def test_ping_flood_from_a_peer_that_never_reads(sites: LinkedPair) -> None:
    """East runs with default limits: the bound that matters in production."""
    stream = await authenticated_peer(sites.east, "flooder")
    pings = b"".join(HEADER.pack(FrameType.PING, 0, 0, 8) + i.to_bytes(8, "big")
                     for i in range(4096))
    growth = await flood_until_closed(sites.east, stream, lambda: pings)
    assert growth < RSS_GROWTH_BOUND_KIB, f"router grew by {growth} KiB"
    assert_ended_and_router_serves(sites, sites.east, "flooder")


async def test_open_flood_past_max_flows_from_a_peer_that_never_reads(sites: LinkedPair) -> None:
    stall = StallServer()  # accepts, never reads: flows to it stay open
    key = "stall"
    sites.west.sitectl("connector", "create", key, f"127.0.0.1:{stall.port}")
    dest = sites.west.status()["router_id"]
    body = Open(routing_key=key, origin_site="opener", origin_router="ropener",
                dest_router=dest, client_addr="127.0.0.1:1", trace=("ropener",),
                window=1 << 20).to_wire()
    ids = itertools.count(1, 2)

    def opens() -> bytes:
        return b"".join(HEADER.pack(FrameType.OPEN, 0, next(ids), len(body)) + body
                        for _ in range(2048))

    try:
        stream = await authenticated_peer(sites.west, "opener")
        growth = await flood_until_closed(sites.west, stream, opens)
    finally:
        stall.release.set()
        stall.close()
    assert next(ids) > 100 * FLOW_CAP  # far more OPENs than flows were allowed
    assert growth < RSS_GROWTH_BOUND_KIB, f"router grew by {growth} KiB"
    assert_ended_and_router_serves(sites, sites.west, "opener")
