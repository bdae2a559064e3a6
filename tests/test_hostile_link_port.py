"""The link port before authentication, attacked end to end: a flood of stalled
handshakes from many source addresses must not keep a real peer's link down."""

from __future__ import annotations

import secrets
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

import certs
from router.claim import ClaimRefused, redeem
from router.net.admission import Refusal
from router.routing.signing import Ed25519Signer
from tests.conftest import Pair
from tests.harness import wait_for

ATTACK_SOURCES = [f"127.0.0.{i}" for i in range(2, 51)]  # 49 addresses
HELD_PER_SOURCE = 6  # 294 in all: more than the port's 256 pending-handshake slots
RETRY_S = 0.2  # a refused attacker connection tries again after this


class StallFlood:
    """Keeps HELD_PER_SOURCE connections open from each attack source, each having sent
    the first byte of a TLS record (so it takes a handshake slot) and then nothing; a
    connection the router closes is replaced after RETRY_S."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._due: list[tuple[float, str]] = [(0.0, src) for src in ATTACK_SOURCES
                                              for _ in range(HELD_PER_SOURCE)]
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StallFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()

    def _open(self, source: str) -> None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2,
                                         source_address=(source, 0))
            s.sendall(b"\x16")
        except OSError:
            self._due.append((time.monotonic() + RETRY_S, source))
            return
        s.setblocking(False)
        self._sel.register(s, selectors.EVENT_READ, source)
        self.opened += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            ready = [d for d in self._due if d[0] <= now]
            self._due = [d for d in self._due if d[0] > now]
            for _, source in ready:
                self._open(source)
            for key, _ in self._sel.select(timeout=0.05):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # the router closed it: take its place again
                    self._sel.unregister(sock)
                    sock.close()
                    self._due.append((time.monotonic() + RETRY_S, key.data))


@pytest.fixture
def flooded_pair(fresh_pair: Pair) -> Iterator[Pair]:
    fresh_pair.east.stop()
    yield fresh_pair


def test_link_comes_up_under_a_stalled_handshake_flood_from_many_sources(
        flooded_pair: Pair) -> None:
    """49 addresses hold every pending-handshake slot with stalled ClientHellos and
    retake each one the router frees; east (another address) restarts and must get its
    link to west up, the way a user would see it in `sitectl status`."""
    pair = flooded_pair
    with StallFlood(pair.west.link_port) as flood:
        wait_for(lambda: Refusal.FULL.value in pair.west.log_path.read_text(),
                 what="the flood to hold every slot")
        pair.east.start()
        started = time.monotonic()
        wait_for(lambda: pair.east.link_up("west"), timeout=20,
                 what="east's link to west to come up during the flood")
        took = time.monotonic() - started
        assert pair.west.status()["site"] == "west"  # the issuer serves its operator too
    assert took < 20
    assert flood.opened > 300  # it was still retaking slots meanwhile


def _wrong_claim(pair: Pair) -> ClaimRefused:
    key_pem, csr_pem = certs.make_csr("mallory")
    with pytest.raises(ClaimRefused) as info:
        redeem(host="127.0.0.1", port=pair.west.link_port, issuer_site="west",
               ca_pem=(pair.west.dir / "ca.crt").read_bytes(), code=secrets.token_bytes(32),
               csr_pem=csr_pem, key_pem=key_pem, site="mallory",
               signer=Ed25519Signer.generate(), now=datetime.now(UTC))
    return info.value


def test_a_flood_of_wrong_claims_costs_a_log_line_per_interval_and_no_disk(
        pair: Pair) -> None:
    """Anyone who can reach the link port can send claims with guessed codes as fast as
    TLS allows. Each is told why; the issuer logs the refusals once per 10 s with who
    sent them and a count, and never rewrites its grant store for them."""
    grants = pair.west.dir / "grants.json"
    before = grants.stat().st_mtime_ns, grants.read_bytes()  # east's token made it
    log_before = len(pair.west.log_path.read_text().splitlines())
    refusals = [_wrong_claim(pair) for _ in range(200)]
    assert {str(r) for r in refusals} == {
        "site west refused the token: token not recognised by this site (wrong code, or revoked)"}
    new_lines = pair.west.log_path.read_text().splitlines()[log_before:]
    about_claims = [line for line in new_lines if "token claim" in line]
    assert 1 <= len(about_claims) <= 3, about_claims  # 200 before
    assert "refused token claim from 127.0.0.1:" in about_claims[0]
    assert (grants.stat().st_mtime_ns, grants.read_bytes()) == before
    assert pair.east.link_up("west")
