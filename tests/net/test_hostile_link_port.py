"""The link port before authentication, attacked end to end: stalled handshakes from
many addresses, wrong claims, and replayed ClientHellos must not keep a real peer's
link down, fill the log or take the router's CPU."""

from __future__ import annotations

import contextlib
import secrets
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

import certs
from router.net.admission import Refusal
from router.net.links import HANDSHAKE_BURST_PER_SOURCE, HANDSHAKES_PER_SOURCE_PER_S
from router.protocol.claim import ClaimRefused
from router.routing.signing import Ed25519Signer
from sitectl.redeem import redeem
from tests.conftest import Pair
from tests.support.sites import wait_for

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
    # Within one address's burst of handshakes (more would be refused before TLS).
    refusals = [_wrong_claim(pair) for _ in range(HANDSHAKE_BURST_PER_SOURCE - 5)]
    assert {str(r) for r in refusals} == {
        "site west refused the token: token not recognised by this site (wrong code, or revoked)"}
    new_lines = pair.west.log_path.read_text().splitlines()[log_before:]
    about_claims = [line for line in new_lines if "token claim" in line]
    assert 1 <= len(about_claims) <= 3, about_claims  # one per claim before
    assert "refused token claim from 127.0.0.1:" in about_claims[0]
    assert (grants.stat().st_mtime_ns, grants.read_bytes()) == before
    assert pair.east.link_up("west")


def _recorded_client_hello() -> bytes:
    """A ClientHello to replay: the server does its ECDHE and signature for each copy,
    the client nothing."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="west")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_one_source_replaying_client_hellos_gets_its_rate_of_handshakes(pair: Pair) -> None:
    """A source that replays a recorded ClientHello as fast as it can makes the router
    sign a handshake for a burst and then at the per-source rate; the rest are closed
    before any TLS work. The link and the operator's status keep working."""
    hello, port = _recorded_client_hello(), pair.west.link_port
    served = attempts = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + 3.0

    def flood() -> None:
        nonlocal served, attempts
        while time.monotonic() < stop_at:
            got = b""
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5,
                                              source_address=("127.0.0.2", 0)) as s:
                    s.sendall(hello)
                    got = s.recv(65536)  # the server's flight, if it did the work
            except OSError:
                pass
            with lock:
                attempts += 1
                served += bool(got)

    started = time.monotonic()
    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    took = time.monotonic() - started
    allowed = HANDSHAKE_BURST_PER_SOURCE + HANDSHAKES_PER_SOURCE_PER_S * took
    assert attempts > 2 * allowed, (attempts, served)  # it really flooded
    assert served <= allowed + 5, (attempts, served)
    assert pair.east.link_up("west")
    assert pair.west.status()["site"] == "west"
