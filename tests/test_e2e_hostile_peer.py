"""A linked peer that misbehaves in the routing protocol: real router subprocesses, the peer
built here from the site's CA (as in test_peer_flood). The router stays up, bounded, says why
it dropped what it dropped, and the network keeps working."""

from __future__ import annotations

import dataclasses
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from router.protocol import FrameType, LinkLimits
from router.protocol.frames import HEADER
from router.routing import Ed25519Signer, RouterRecord, encode_message, router_id_for
from tests.harness import Site, free_port, link, site_env, wait_for
from tests.services import EchoServer
from tests.test_peer_flood import authenticated_peer

FAKE_ROUTERS = 400  # of ~1 MB each once decoded: 400 MB unbounded
KEYS_PER_RECORD = 6000  # what one 64 KiB ROUTING frame holds
RSS_GROWTH_BOUND_KIB = 160 * 1024  # max_db_bytes (64 MiB) on each side of a flood, plus slack


class Sites:
    def __init__(self, workdir: Path) -> None:
        env = site_env(workdir)
        self.west = Site(workdir, "west", env).init().start()
        self.east = Site(workdir, "east", env).init().start()
        link(self.west, self.east, workdir)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    s = Sites(tmp_path_factory.mktemp("hostile-peer"))
    yield s
    s.east.stop()
    s.west.stop()


def routing_frame(site: str = "fake", keys: tuple[str, ...] = (), peer: str = "") -> bytes:
    signer = Ed25519Signer.generate()
    unsigned = RouterRecord(
        router_id=router_id_for(signer.public_key), site=site, seq=1,
        links=((peer, 1),) if peer else (),
        keys=tuple((k, 0, 1) for k in sorted(keys)), public_key=signer.public_key,
        signature=b"")
    record = dataclasses.replace(unsigned, signature=signer.sign(unsigned.signed_bytes()))
    payload = encode_message([(0.0, record.to_wire())])
    assert len(payload) <= LinkLimits().max_control_bytes
    return HEADER.pack(FrameType.ROUTING, 0, 0, len(payload)) + payload


def assert_network_works(sites: Sites, key: str) -> None:
    assert sites.east.link_up("west")
    echo, port = EchoServer(), free_port()
    try:
        sites.west.sitectl("connector", "create", key, f"127.0.0.1:{echo.port}")
        sites.east.sitectl("listener", "create", key, str(port))
        wait_for(lambda: sites.east.key_reachable(key), what=f"{key} reachable")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"still here")
            assert sock.recv(100) == b"still here"
    finally:
        echo.close()


async def test_fake_router_flood_is_bounded(sites: Sites) -> None:
    keys = tuple(f"k{i:05d}" for i in range(KEYS_PER_RECORD))
    frames = [routing_frame(keys=keys, peer="rfaker") for _ in range(FAKE_ROUTERS)]
    base = {s.name: s.rss_kib() for s in (sites.west, sites.east)}
    stream = await authenticated_peer(sites.west, "faker")
    try:
        with trio.fail_after(60):
            for i in range(0, len(frames), 20):
                await stream.send_all(b"".join(frames[i:i + 20]))
        wait_for(lambda: "max_db_bytes" in sites.west.log_path.read_text(), timeout=60,
                 what="the flood refused")
        for site in (sites.west, sites.east):
            growth = site.rss_kib() - base[site.name]
            assert growth < RSS_GROWTH_BOUND_KIB, f"{site.name} grew by {growth} KiB"
        line = re.search(r"routing message from faker dropped: (.*)",
                         sites.west.log_path.read_text())
        assert line, sites.west.log_tail()
        assert re.fullmatch(r"database would hold \d+ bytes, over max_db_bytes \(\d+\)",
                            line.group(1)), line.group(1)
    finally:
        with trio.move_on_after(1):
            await stream.transport.aclose()
    assert_network_works(sites, "after-flood")
