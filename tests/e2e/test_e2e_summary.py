"""Network-wide traffic without a collector, with real routers: three sites in a line, a
flow through them, and from the first site `sitectl status --network` shows the far link's
load and RTT and each site's key traffic. A linked peer's forged, oversized or malformed
summary is dropped with the reason and disturbs nothing; a router that goes away has its
summary dropped."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import trio

from router.net.tls import TLSStream
from router.protocol import FrameType
from router.protocol.frames import HEADER
from router.routing import Ed25519Signer
from router.routing.summary import SUMMARY_DOMAIN, encode_summary_message
from tests.support.peers import authenticated_peer
from tests.support.services import EchoServer
from tests.support.sites import Site, free_port, link, site_env, start_sites, wait_for

CHUNK = 32 * 1024
PACE_S = 0.02  # a chunk each way every 20 ms: about 1.6 MB/s, whatever the machine


class Steady(threading.Thread):
    """A client that keeps one flow busy at a steady pace until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stopped = threading.Event()
        self.moved = 0

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=20) as sock:
            while not self.stopped.wait(PACE_S):
                sock.sendall(b"x" * CHUNK)
                got = 0
                while got < CHUNK:
                    data = sock.recv(CHUNK)
                    assert data, "the flow closed"
                    got += len(data)
                self.moved += CHUNK

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site, Site, int]]:
    """a - b - c (the later one dials), c serving "db" (an echo), a listening for it;
    summaries every second. Yields the sites and a's listener port."""
    work = tmp_path_factory.mktemp("summary")
    env = site_env(work)
    sites = [Site(work, name, env).init() for name in "abc"]
    for site in sites:
        toml = site.dir / "site.toml"
        text = toml.read_text()
        assert "traffic_summary_s = 5.0\n" in text
        toml.write_text(text.replace("traffic_summary_s = 5.0\n", "traffic_summary_s = 1.0\n"))
    start_sites(*sites)
    echo = EchoServer()
    try:
        a, b, c = sites
        link(a, b, work)
        link(b, c, work)
        c.sitectl("connector", "create", "db", f"127.0.0.1:{echo.port}")
        port = free_port()
        a.sitectl("listener", "create", "db", str(port))
        wait_for(lambda: a.key_reachable("db"), what="db reachable from a")
        yield a, b, c, port
    finally:
        echo.close()
        for site in sites:
            site.stop()


def far_link(net: dict[str, Any]) -> dict[str, Any]:
    [found] = [x for x in net["links"] if (x["a"], x["b"]) == ("b", "c")]
    return found  # type: ignore[no-any-return]


def loaded(net: dict[str, Any]) -> bool:
    far = far_link(net)
    return bool(far["rtt_ms"] is not None and far["a_to_b_bytes_per_s"]
                and far["a_to_b_bytes_per_s"] > 100_000 and far["b_to_a_bytes_per_s"] > 100_000)


def test_the_first_site_shows_the_far_links_load_and_rtt(
        line: tuple[Site, Site, Site, int]) -> None:
    a, _b, _c, port = line
    client = Steady(port)
    client.start()
    try:
        wait_for(lambda: loaded(a.state(network=True)["network"]), timeout=20,
                 what="the far link's load seen from a")
        net = a.status(network=True)["network"]  # what `sitectl status --network --json` says
        traffic = {(x["site"], x["role"]): x for x in net["keys"]["db"]["traffic"]}
        text = a.sitectl("status", "--network").stdout
    finally:
        client.stop()
    assert client.moved > 0
    far = far_link(net)
    assert far["state"] == "up" and far["reported_by"] == "b"
    assert 0 < far["rtt_ms"] < 1000
    assert {"a", "b", "c"} == {s["site"] for s in net["sites"] if s["summary"] is not None}
    assert traffic["a", "listener"]["active"] == 1
    assert traffic["c", "connector"]["active"] == 1
    assert re.search(r"(?m)^  b - c +up +cost 1  rtt [\d.]+ ms  b>c [\d.]+ [KM]B/s  c>b ", text)
    assert re.search(r"(?m)^    c +connector .* 1 active$", text), text


# ---- a hostile peer linked to b
def summary_frame(router_id: str, signer: Ed25519Signer, *, links: list[Any] | None = None,
                  keys: list[Any] | None = None, interval: object = 1.0,
                  seq: int = 2**40) -> bytes:
    """A ROUTING frame with one summary, encoded by hand: TrafficSummary would refuse to
    build the ones a hostile peer sends."""
    body = msgpack.packb([router_id, 2**40, seq, interval, links or [], keys or [], 0])
    wire = msgpack.packb([body, signer.sign(SUMMARY_DOMAIN + body)])
    payload = encode_summary_message([(0.0, wire)])
    return HEADER.pack(FrameType.ROUTING, 0, 0, len(payload)) + payload


async def drain(stream: TLSStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some(65536):
            pass


async def test_a_peers_bad_summaries_are_dropped_and_disturb_nothing(
        line: tuple[Site, Site, Site, int]) -> None:
    a, b, c, port = line
    c_id = c.state()["router_id"]
    evil = Ed25519Signer.generate()
    attacks = {
        # c made busier: signed by another key than c's record holds.
        "forger": summary_frame(c_id, evil, keys=[["db", 1, 1e6, 1e6, 1000]]),
        "bloater": summary_frame(c_id, evil, keys=[[f"k{i:04d}", 0, 1, 0, 0]
                                                   for i in range(500)]),
        "mangler": summary_frame(c_id, evil, links=[["r" + "0" * 16, None, float("nan"), 0]]),
    }
    reasons = {
        "forger": rf"bad signature on the summary of {c_id}",
        "bloater": r"summary of \d+ bytes, over 4096",
        "mangler": r"link bytes in per s must be a finite number in \[0, 1e\+12\], got nan",
    }
    for name, frame in attacks.items():
        stream = await authenticated_peer(b, name, features=("summary",))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, stream)  # it is sent b's records and summaries
                with trio.fail_after(15):
                    # Again until refused: b drops one unchecked (so, unlogged) if it took
                    # c's genuine one less than half an interval before.
                    while not re.search(rf"summary message from {name} dropped: "
                                        rf"{reasons[name]}", b.log_path.read_text()):
                        await stream.send_all(frame)
                        await trio.sleep(0.2)
                nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(1):
                await stream.transport.aclose()
    # Each peer's link survived its bad message (dropped, not a protocol error).
    assert "ended: protocol error" not in b.log_path.read_text()
    # c's genuine summary still stands everywhere, routing is as it was, flows still go.
    for site in (a, b):
        net = site.state(network=True)["network"]
        rows = [x for x in net["keys"]["db"]["traffic"] if x["site"] == "c"]
        assert all(x["flows_per_s"] < 1000 and x["active"] <= 1 for x in rows), rows
        assert net["keys"]["db"]["path"][-1] == "c"
    client = Steady(port)
    client.start()
    try:
        wait_for(lambda: client.moved > 0, what="a flow through b after the attacks")
    finally:
        client.stop()


def test_a_router_that_goes_away_has_its_summary_dropped(
        line: tuple[Site, Site, Site, int]) -> None:
    a, _b, c, _port = line

    def c_summary() -> dict[str, Any] | None:
        net = a.state(network=True)["network"]
        [site] = [s for s in net["sites"] if s["site"] == "c"]
        return site["summary"]  # type: ignore[no-any-return]

    wait_for(c_summary, what="c's summary on a")
    c.stop()
    wait_for(lambda: c_summary() is None, timeout=10, what="c's summary dropped on a")
    net = a.status(network=True)["network"]
    assert all(x["site"] != "c" for x in net["keys"]["db"]["traffic"])
    assert far_link(net)["state"] == "down"
