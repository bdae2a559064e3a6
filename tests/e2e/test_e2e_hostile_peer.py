"""A linked peer that misbehaves in the routing protocol: real router subprocesses, the peer
built here from the site's CA (as in test_peer_flood). The router stays up, bounded, says why
it dropped what it dropped, and the network keeps working."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import msgpack
import pytest
import trio

from router.net.tls import TLSStream
from router.protocol import FrameType, LinkLimits
from router.protocol.frames import HEADER
from router.routing import Ed25519Signer, encode_message, router_id_for
from router.routing.records import RECORD_DOMAIN
from tests.support.peers import LinkedPair, authenticated_peer
from tests.support.sites import Site, wait_for

FAKE_ROUTERS = 400  # of ~1 MB each once decoded: 400 MB unbounded
KEYS_PER_RECORD = 6000  # what one 64 KiB ROUTING frame holds
RSS_GROWTH_BOUND_KIB = 160 * 1024  # max_db_bytes (64 MiB) on each side of a flood, plus slack


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinkedPair]:
    pair = LinkedPair(tmp_path_factory.mktemp("hostile-peer"))
    yield pair
    pair.stop()


def routing_frame(site: str = "fake", keys: tuple[str, ...] = (), peer: str = "") -> bytes:
    """A ROUTING frame with one signed record, encoded by hand: RouterRecord would refuse
    to build one with the fields a hostile peer sends."""
    signer = Ed25519Signer.generate()
    fields = [router_id_for(signer.public_key), site, 1, [[peer, 1]] if peer else [],
              [[k, 0, 1] for k in sorted(keys)], [], signer.public_key]
    signature = signer.sign(RECORD_DOMAIN + msgpack.packb(fields, use_bin_type=True))
    wire = msgpack.packb([*fields, signature], use_bin_type=True)
    payload = encode_message([(0.0, wire)])
    assert len(payload) <= LinkLimits().max_control_bytes
    return HEADER.pack(FrameType.ROUTING, 0, 0, len(payload)) + payload


async def test_fake_router_flood_is_bounded(sites: LinkedPair) -> None:
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
    sites.assert_serves("after-flood")


async def log_shows(site: Site, text: str, timeout: float = 15.0) -> None:
    """wait_for, without blocking the tasks that read from the router meanwhile."""
    with trio.fail_after(timeout):
        while text not in site.log_path.read_text():
            await trio.sleep(0.05)


async def drain(stream: TLSStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some(65536):
            pass


def frame(ftype: FrameType, flow_id: int, body: bytes) -> bytes:
    return HEADER.pack(ftype, 0, flow_id, len(body)) + body


async def test_escape_sequences_from_a_peer_reach_no_terminal_and_no_log(sites: LinkedPair) -> None:
    """Names, keys and reasons a peer sends end up in `sitectl status` and the log: an
    escape sequence or a newline in one would rewrite the user's terminal or forge lines."""
    west = sites.west
    evil = "\x1b]0;owned\x07\x1b[2J\nFORGED"
    stream = await authenticated_peer(west, "painter")
    try:
        # Read what west sends (its whole database, after the flood test: a peer that does
        # not read is no longer read, and its OPEN would wait for keepalive to end it).
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, stream)
            await stream.send_all(routing_frame(site="x\x1b[31mred", keys=("k\x1b[2J",),
                                                peer="rpainter"))
            # An OPEN for a key no connector has: refused, and the refusal is logged.
            dest = west.status()["router_id"]
            body = msgpack.packb({"routing_key": "nokey\nFORGED refused", "origin_site": "painter",
                                  "origin_router": "rpainter", "dest_router": dest,
                                  "client_addr": "127.0.0.1:1", "trace": ["rpainter"],
                                  "window": 65536})
            await stream.send_all(frame(FrameType.OPEN, 1, body))
            await log_shows(west, "link in:painter to painter ended")
            nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(1):
            await stream.transport.aclose()
    stream = await authenticated_peer(west, "goer")
    try:
        await stream.send_all(frame(FrameType.GOAWAY, 0, msgpack.packb({"reason": evil})))
        wait_for(lambda: "link in:goer to goer ended" in west.log_path.read_text(),
                 what="the GOAWAY seen")
    finally:
        with trio.move_on_after(1):
            await stream.transport.aclose()
    log = west.log_path.read_text()
    assert "\x1b" not in log and "\x07" not in log
    assert not re.search(r"(?m)^FORGED", log), west.log_tail()
    assert re.search(r"routing message from painter dropped: site '.*' has a control, format "
                     r"or space character", log), west.log_tail()
    assert ("link in:painter to painter ended: protocol error from peer: bad OPEN message: "
            r"routing_key 'nokey\nFORGED refused' has a control, format or space character"
            in log), west.log_tail()
    assert r"link in:goer to goer ended: peer closed the link: \x1b]0;owned\x07\x1b[2J\nFORGED" \
        in log, west.log_tail()
    shown = west.sitectl("status", "--network").stdout
    assert "\x1b" not in shown and "red" not in shown
    sites.assert_serves("after-escapes")
