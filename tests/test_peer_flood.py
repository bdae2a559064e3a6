"""An authenticated peer that sends but never reads cannot grow a router: replies stop
being queued past a bound, the router stops reading, and the link ends with a reason
that says so. Real router subprocesses; the peer is built here from the site's CA."""

from __future__ import annotations

import itertools
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

import certs
from router.net.handshake import tls_handshake
from router.net.tls import TLSStream
from router.protocol import FrameType, Hello, LinkConnection, LinkLimits, Open, Role
from router.protocol.frames import HEADER
from tests.harness import Site, free_port, link, site_env, wait_for
from tests.services import EchoServer
from tests.test_e2e_flows import StallServer

RSS_GROWTH_BOUND_KIB = 60 * 1024  # unbounded, 20 s of PINGs grew a router by 178 MB
FLOW_CAP = 8
UNTIL_CLOSED_S = 40  # keepalive finds the silent link after dead_after_s (3 s) paused


class Sites:
    def __init__(self, workdir: Path) -> None:
        env = site_env(workdir)
        self.west = Site(workdir, "west", env).init()
        toml = self.west.dir / "site.toml"
        text, n = re.subn(r"(?m)^max_flows_per_link = \d+$",
                          f"max_flows_per_link = {FLOW_CAP}", toml.read_text())
        assert n == 1, "site.toml has no max_flows_per_link line"
        toml.write_text(text)
        self.west.start()
        self.east = Site(workdir, "east", env).init().start()
        link(self.west, self.east, workdir)
        self.keys = itertools.count()


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    s = Sites(tmp_path_factory.mktemp("flood"))
    yield s
    s.east.stop()
    s.west.stop()


async def authenticated_peer(site: Site, name: str) -> TLSStream:
    """A link peer with a certificate from the site's own CA, past HELLO; it never reads."""
    ca = certs.CertificateAuthority.from_pem(certs.load_pem(site.dir / "ca.crt"),
                                             certs.load_pem(site.dir / "ca.key"))
    pair = ca.issue(name, role=certs.Role.CLIENT)
    ctx = certs.client_context(cert_pem=pair.cert_pem, key_pem=pair.key_pem, ca_pem=ca.cert_pem)
    sock = await trio.open_tcp_stream("127.0.0.1", site.link_port)
    stream = TLSStream(sock, ctx, server_side=False, server_hostname=site.name)
    await tls_handshake(stream)
    conn = LinkConnection(
        role=Role.DIALER,
        hello=Hello(router_id=f"r{name}", site=name, max_frame_bytes=256 * 1024,
                    keepalive_interval=1.0),
        limits=LinkLimits(), now=trio.current_time())
    await stream.send_all(conn.data_to_send())
    return stream


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


def assert_ended_and_router_serves(sites: Sites, target: Site, name: str) -> None:
    ended = re.search(rf"link in:{name} to {name} ended: (.*)", target.log_path.read_text())
    assert ended, target.log_tail()
    assert re.fullmatch(r"peer is not reading: \d+ bytes queued", ended.group(1)), ended.group(1)
    assert all(lk["peer_site"] != name for lk in target.status()["links"])
    # The link between the two routers and flows over it still work.
    assert sites.east.link_up("west")
    echo, key, port = EchoServer(), f"echo-{name}-{next(sites.keys)}", free_port()
    try:
        sites.west.sitectl("connector", "create", key, f"127.0.0.1:{echo.port}")
        sites.east.sitectl("listener", "create", key, str(port))
        wait_for(lambda: sites.east.key_reachable(key), what=f"{key} reachable")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"still here")
            assert sock.recv(100) == b"still here"
    finally:
        echo.close()


async def test_ping_flood_from_a_peer_that_never_reads(sites: Sites) -> None:
    """East runs with default limits: the bound that matters in production."""
    stream = await authenticated_peer(sites.east, "flooder")
    pings = b"".join(HEADER.pack(FrameType.PING, 0, 0, 8) + i.to_bytes(8, "big")
                     for i in range(4096))
    growth = await flood_until_closed(sites.east, stream, lambda: pings)
    assert growth < RSS_GROWTH_BOUND_KIB, f"router grew by {growth} KiB"
    assert_ended_and_router_serves(sites, sites.east, "flooder")


async def test_open_flood_past_max_flows_from_a_peer_that_never_reads(sites: Sites) -> None:
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
