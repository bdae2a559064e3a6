"""A hostile issuer that trickles: each byte comes just inside a socket timeout, so only
an overall deadline stops `sitectl link create` from hanging for hours."""

from __future__ import annotations

import contextlib
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

import certs
from certs import CertificateAuthority
from router.protocol.claim import ClaimError, encode_reply
from router.routing.signing import Ed25519Signer
from router.site.tokens import Token
from sitectl.redeem import REDEEM_TIMEOUT_S, Deadline, redeem
from tests.support.forge import tree_digest
from tests.support.sites import Site, site_env

GAP_S = 0.2  # between trickled bytes: far inside any per-operation timeout


class TricklingIssuer:
    """Poses as site `west`. `phase` "handshake": its TLS handshake comes one byte per
    GAP_S; "reply": the handshake is quick, then a (valid-looking) reply trickles."""

    def __init__(self, ca: CertificateAuthority, phase: str) -> None:
        self.ca, self.phase = ca, phase
        router = ca.issue("west")
        self._ctx = certs.server_context(cert_pem=router.cert_pem, key_pem=router.key_pem,
                                         ca_pem=ca.cert_pem, require_client_cert=False)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def token(self, path: Path) -> Path:
        token = Token(site="west", endpoints=(("127.0.0.1", self.port),),
                      ca_pem=self.ca.cert_pem, code=secrets.token_bytes(32),
                      expires=time.time() + 900, uses=1)
        path.write_bytes(token.dump(self.ca.sign_bytes(token.signed_bytes())))
        return path

    def _trickle(self, raw: socket.socket, data: bytes) -> None:
        for i in range(len(data)):
            if self._stop.wait(GAP_S):
                return
            raw.sendall(data[i:i + 1])

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            with raw:
                try:
                    if self.phase == "handshake":
                        self._slow_handshake(raw)
                    else:
                        with self._ctx.wrap_socket(raw, server_side=True) as tls:
                            tls.recv(65536)
                            self._trickle_tls(tls)
                except (OSError, ssl.SSLError):
                    continue

    def _slow_handshake(self, raw: socket.socket) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._ctx.wrap_bio(incoming, outgoing, server_side=True)
        incoming.write(raw.recv(65536))  # the ClientHello
        with contextlib.suppress(ssl.SSLWantReadError):  # it waits for our Finished
            tls.do_handshake()
        self._trickle(raw, outgoing.read())

    def _trickle_tls(self, tls: ssl.SSLSocket) -> None:
        reply = encode_reply({"ok": True, "cert": b"x" * 2000, "site": "west",
                              "router_id": "r" + "0" * 16})
        for i in range(len(reply)):
            if self._stop.wait(GAP_S):
                return
            tls.sendall(reply[i:i + 1])

    def close(self) -> None:
        self._stop.set()
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=10)


@pytest.fixture(params=["handshake", "reply"])
def trickler(request: pytest.FixtureRequest) -> Iterator[TricklingIssuer]:
    issuer = TricklingIssuer(CertificateAuthority.generate("west"), request.param)
    yield issuer
    issuer.close()


def test_deadline_counts_down_from_when_it_was_set() -> None:
    deadline = Deadline(10.0, now=100.0)
    assert deadline.left(100.0) == 10.0
    assert deadline.left(107.5) == 2.5
    assert deadline.left(110.0) is None
    assert deadline.left(500.0) is None


def test_redeem_gives_up_on_a_trickling_issuer_at_its_deadline(
        trickler: TricklingIssuer) -> None:
    key_pem, csr_pem = certs.make_csr("east")
    started = time.monotonic()
    with pytest.raises(ClaimError, match=r"^site west at 127\.0\.0\.1:\d+ did not answer "
                                         r"within 1\.5 s$"):
        redeem(host="127.0.0.1", port=trickler.port, issuer_site="west",
               ca_pem=trickler.ca.cert_pem, code=b"c" * 32, csr_pem=csr_pem, key_pem=key_pem,
               site="east", signer=Ed25519Signer.generate(), now=datetime.now(UTC),
               timeout=1.5)
    assert time.monotonic() - started < 1.5 + 2.0  # not len(reply) x GAP_S (minutes)


def _link_create_against(issuer: TricklingIssuer, east: Site) -> None:
    token = issuer.token(east.dir.parent / "slow.token")
    before = tree_digest(east.dir)
    started = time.monotonic()
    result = east.sitectl("link", "create", str(token), check=False, timeout=60)
    took = time.monotonic() - started
    message = result.stderr.strip()
    assert result.returncode == 1, (issuer.phase, result.stdout, message)
    assert message.startswith("sitectl: ") and "\n" not in message, message
    assert f"did not answer within {REDEEM_TIMEOUT_S:g} s" in message, message
    assert took < REDEEM_TIMEOUT_S + 10
    assert tree_digest(east.dir) == before


def test_link_create_against_a_trickling_issuer_ends_with_one_line(tmp_path: Path) -> None:
    """Each phase as the user meets it: `sitectl link create` waits out its whole deadline
    (REDEEM_TIMEOUT_S, 10 s), so the two phases run side by side, each its own site."""
    issuers = [TricklingIssuer(CertificateAuthority.generate("west"), phase)
               for phase in ("handshake", "reply")]
    try:
        easts = [Site(tmp_path / i.phase, "east", site_env(tmp_path / i.phase)).init()
                 for i in issuers]
        with ThreadPoolExecutor(len(issuers)) as pool:
            done = [pool.submit(_link_create_against, issuer, east)
                    for issuer, east in zip(issuers, easts, strict=True)]
            for future in done:
                future.result()
    finally:
        for issuer in issuers:
            issuer.close()
