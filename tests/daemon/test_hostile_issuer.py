"""`sitectl link create` against a malicious issuer: a real TLS server on port 0 whose
token is genuine for its own (attacker) CA, answering the claim protocol with hostile
replies. The redeemer must refuse each with one line and write nothing."""

from __future__ import annotations

import secrets
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import msgpack
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

import certs
from certs import CertificateAuthority
from router.protocol.claim import Claim, ClaimError, decode_claim_body, encode_reply
from router.routing.signing import Ed25519Signer, router_id_for
from router.site.directory import Site as RouterSite
from router.site.tokens import Token
from tests.support.forge import forge_leaf, public_key_of_csr, tree_digest
from tests.support.sites import Site, site_env

Answer = Callable[[Claim], bytes]


class FakeIssuer:
    """Poses as site `west` with its own CA; `answer` decides the reply bytes."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        router = ca.issue("west")
        self._ctx = certs.server_context(cert_pem=router.cert_pem, key_pem=router.key_pem,
                                         ca_pem=ca.cert_pem, require_client_cert=False)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.answer: Answer = lambda claim: b""
        self.claims: list[Claim] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def token(self, path: Path) -> Path:
        token = Token(site="west", endpoints=(("127.0.0.1", self.port),), ca_pem=self.ca.cert_pem,
                      code=secrets.token_bytes(32), expires=time.time() + 900, uses=1)
        path.write_bytes(token.dump(self.ca.sign_bytes(token.signed_bytes())))
        return path

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return  # closed
            with raw:
                raw.settimeout(10)
                try:
                    with self._ctx.wrap_socket(raw, server_side=True) as tls:
                        header = _recv_exact(tls, 9)
                        claim = decode_claim_body(_recv_exact(tls, struct.unpack(">I",
                                                                                 header[5:])[0]))
                        self.claims.append(claim)
                        tls.sendall(self.answer(claim))
                except (OSError, ssl.SSLError, ClaimError):
                    continue

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._sock.close()
        self._thread.join(timeout=10)


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("closed")
        buf += chunk
    return buf


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, FakeIssuer, Site]]:
    work = tmp_path_factory.mktemp("hostile")
    issuer = FakeIssuer(CertificateAuthority.generate("west"))
    east = Site(work, "east", site_env(work)).init()  # not running: nothing to race with
    yield work, issuer, east
    issuer.close()


def reply_with(**fields: object) -> Callable[[CertificateAuthority], Answer]:
    """An honest reply for the claim, with `fields` replaced."""
    def bind(ca: CertificateAuthority) -> Answer:
        def answer(claim: Claim) -> bytes:
            cert = ca.sign_csr(claim.csr_pem, expected_name=claim.site,
                               router_id=claim.router_id)
            reply = {"ok": True, "cert": cert, "site": "west",
                     "router_id": "r" + "0" * 16} | fields
            return encode_reply(reply)
        return answer
    return bind


def cert_like(**kw: object) -> Callable[[CertificateAuthority], Answer]:
    """A reply carrying a forged certificate for the redeemer's key (unless overridden)."""
    def bind(ca: CertificateAuthority) -> Answer:
        def answer(claim: Claim) -> bytes:
            args: dict[str, object] = {"name": claim.site, "router_id": claim.router_id} | kw
            signer = args.pop("ca", ca)
            key = args.pop("key", public_key_of_csr(claim.csr_pem))
            cert = forge_leaf(signer, key, **args)  # type: ignore[arg-type]
            return encode_reply({"ok": True, "cert": cert, "site": "west",
                                 "router_id": "r" + "0" * 16})
        return answer
    return bind


def raw(data: bytes) -> Callable[[CertificateAuthority], Answer]:
    return lambda ca: lambda claim: data


OTHER_CA = CertificateAuthority.generate("west")  # same name, other key
HOSTILE: dict[str, tuple[Callable[[CertificateAuthority], Answer], str]] = {
    "garbage text": (reply_with(cert=b"[site]\nname = 'pwned'\n"),
                     "not a single PEM certificate"),
    "cert from another CA": (cert_like(ca=OTHER_CA), "not issued by the token's CA"),
    "cert for another name": (cert_like(name="mallory"), "is for 'mallory', expected 'east'"),
    "cert for another key": (cert_like(key=public_key_of_csr(certs.make_csr("x")[1])),
                             "for another key"),
    "a CA cert": (cert_like(is_ca=True), "is a CA certificate"),
    "a serverAuth cert": (cert_like(eku=[ExtendedKeyUsageOID.SERVER_AUTH]),
                          "usage is serverAuth, expected clientAuth only"),
    "an expired cert": (cert_like(valid=(timedelta(days=-9), timedelta(days=-8))), "expired at"),
    "another site": (reply_with(site="mallory"), "names site 'mallory'"),
    "a bad router id": (reply_with(router_id="../../x"), "router id '../../x' is malformed"),
    "a huge reply": (raw(struct.pack(">I", 1 << 30)), "too large (1073741824 bytes)"),
    "a nested reply": (reply_with(cert=[[[[]]]] * 3000),
                       "list, not PEM bytes"),
    "a deep reply": (raw(struct.pack(">I", 30_001) + b"\x91" * 30_000 + b"\xc0"),
                     "not msgpack"),
    "not a map": (raw(struct.pack(">I", 4) + msgpack.packb([1, 2, 3])), "not a map"),
    "a silent close": (raw(b""), "closed the connection without answering"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_reply_refused_and_nothing_written(world: tuple[Path, FakeIssuer, Site],
                                                   case: str) -> None:
    work, issuer, east = world
    make, expected = HOSTILE[case]
    issuer.answer = make(issuer.ca)
    token = issuer.token(work / f"{case.replace(' ', '-')}.token")
    before = tree_digest(east.dir)
    result = east.sitectl("link", "create", str(token), check=False)
    message = result.stderr.strip()
    assert result.returncode == 1, (result.stdout, message)
    assert message.startswith("sitectl: ") and "\n" not in message, message
    assert expected in message, message
    assert tree_digest(east.dir) == before
    assert not (east.dir / "links").exists()


def test_honest_reply_from_the_fake_is_accepted(world: tuple[Path, FakeIssuer, Site]) -> None:
    """The control: the fake speaks the protocol right, so the refusals above are the checks."""
    work, issuer, east = world
    issuer.answer = reply_with()(issuer.ca)
    result = east.sitectl("link", "create", str(issuer.token(work / "honest.token")))
    assert "link west to site west saved" in result.stdout
    claim = issuer.claims[-1]
    identity = Ed25519Signer(RouterSite(east.dir).identity_key())
    assert (claim.site, claim.router_id) == ("east", router_id_for(identity.public_key))
    assert 'peer_router_id = "r0000000000000000"' in (east.dir / "links/west.toml").read_text()
