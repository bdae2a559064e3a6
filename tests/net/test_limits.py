"""Named limits hold: hop count, claim size, pending handshakes."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from router.net.handshake import HandshakeError, read_claim
from router.net.links import PENDING_PER_SOURCE
from router.protocol.claim import CLAIM_MAGIC, CLAIM_VERSION, MAX_CLAIM_BYTES
from router.routing import KeyAdvert, NullSigner, RoutingCore, null_verify
from router.routing.forward import MAX_HOPS, ForwardRefused, next_hop_for_open
from tests.conftest import Pair


def test_open_refused_past_max_hops_and_on_a_loop() -> None:
    core = RoutingCore(site="a", signer=NullSigner(), verify=null_verify, now=0.0)
    core.set_keys({"k": KeyAdvert()}, 0.0)
    with pytest.raises(ForwardRefused, match="too many hops"):
        next_hop_for_open(core, "rsomewhere", [f"r{i}" for i in range(MAX_HOPS)], "a")
    with pytest.raises(ForwardRefused, match="routing loop"):
        next_hop_for_open(core, "rsomewhere", ["rx", core.router_id], "a")
    with pytest.raises(ForwardRefused, match=r"^site a has no route"):
        next_hop_for_open(core, "rsomewhere", ["rx"], "a")


class _Chunks:
    """Stands in for a TLS stream: hands out the given chunks, then EOF."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.asked = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self.asked += 1
        return self.chunks.pop(0) if self.chunks else b""


async def test_claim_length_is_checked_before_its_body_is_read() -> None:
    header = CLAIM_MAGIC + bytes([CLAIM_VERSION]) + struct.pack(">I", MAX_CLAIM_BYTES + 1)
    stream = _Chunks(b"never read")
    with pytest.raises(HandshakeError, match="exceeds limit"):
        await read_claim(stream, header)  # type: ignore[arg-type]
    assert stream.asked == 0


async def test_claim_within_limit_is_read() -> None:
    header = CLAIM_MAGIC + bytes([CLAIM_VERSION]) + struct.pack(">I", 5)
    assert await read_claim(_Chunks(b"hel", b"lo"), header) == b"hello"  # type: ignore[arg-type]


def _stalled_hello(source: str, port: int) -> socket.socket:
    """A connection that starts a TLS record (so it takes a handshake slot) and stalls."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    s.sendall(b"\x16")
    return s


def _closed_at_once(s: socket.socket) -> bool:
    s.settimeout(2)  # a slot holder waits for the rest of its ClientHello for 10 s
    try:
        return s.recv(10) == b""
    except ConnectionResetError:  # closed with our byte unread
        return True
    except TimeoutError:
        return False


def test_pending_handshakes_are_capped_per_source(pair: Pair) -> None:
    """Stalled handshakes from one address hold at most PENDING_PER_SOURCE slots; the
    next from there is closed at once, another address still gets a slot, and the link
    and the router keep working."""
    port = pair.west.link_port
    stalled = [_stalled_hello("127.0.0.1", port) for _ in range(PENDING_PER_SOURCE)]
    try:
        deadline = time.monotonic() + 15
        while True:
            with _stalled_hello("127.0.0.1", port) as s:
                if _closed_at_once(s):
                    break
            assert time.monotonic() < deadline, "the per-source share was never reached"
        with _stalled_hello("127.0.0.2", port) as other:
            assert not _closed_at_once(other)
        assert pair.east.link_up("west")
    finally:
        for s in stalled:
            s.close()
    assert pair.west.status()["site"] == "west"
