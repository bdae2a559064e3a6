"""Link certificates renewed over the live link, in one trio.run with real TLS over memory
streams, in real time (certificates live by the wall clock): a flow crosses several
renewals intact and the link never drops; each renewal is a new key and serial, judged by
the link's certificate. And a hostile dialler: requests for another identity, the same
key, oversized or malformed, too fast, or on a link it accepted."""

from __future__ import annotations

import hashlib

import msgpack
import trio

import certs
from router.net.link import Link
from router.protocol import RENEW_FEATURE
from router.protocol.renewal import (
    MAX_CSR_BYTES,
    RenewRefused,
    RenewRequest,
    RenewSigned,
    decode,
    encode,
)
from router.site.config import ConnectorConfig, Limits
from tests.support.memnet import Net, Node, blob, converged, echo, mem_net, wait_until

LIFETIME_S = 3.0  # renewed every 2 s
LIMITS = Limits(link_cert_lifetime_s=LIFETIME_S)


async def pair(net: Net) -> tuple[Node, Node, Link, Link]:
    """a dials b (b serves "echo"); a's link to b and b's to a."""
    net.mem.listen(("echo.b", 7), echo)
    a = await net.add_router("a")
    b = await net.add_router("b", connectors=(ConnectorConfig(key="echo", host="echo.b",
                                                              port=7),))
    net.link(a, b)
    await wait_until(lambda: converged(a, b), "a and b route to each other")
    out, inn = a.router.links.link_for(b.id), b.router.links.link_for(a.id)
    assert out is not None and inn is not None
    return a, b, out, inn


def serial(node: Node, link: str = "a-b") -> str:
    return certs.leaf_info(node.router.identity.credentials(link)[1]).serial


async def test_a_flow_crosses_several_renewals_and_the_link_stays_up() -> None:
    async with mem_net(LIMITS) as net:
        a, b, out, inn = await pair(net)
        assert RENEW_FEATURE in out.peer.features
        since, first = out.since, serial(a)
        seen = {first}
        stream = net.client(a, "echo")
        sent, got = hashlib.sha256(), hashlib.sha256()
        received = 0
        total = 0

        async def read() -> None:
            nonlocal received
            while chunk := await stream.receive_some(65536):
                got.update(chunk)
                received += len(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            with trio.fail_after(30):
                i = 0
                while len(seen) < 4:  # three renewals while the flow runs
                    chunk = blob(32 * 1024, i.to_bytes(4, "big"))
                    await stream.send_all(chunk)
                    sent.update(chunk)
                    total += len(chunk)
                    i += 1
                    await trio.sleep(0.05)
                    seen.add(serial(a))
            await stream.send_eof()  # type: ignore[attr-defined]
        assert received == total and got.hexdigest() == sent.hexdigest()
        assert a.router.links.link_for(b.id) is out and out.since == since
        assert out.closed_reason is None and inn.closed_reason is None
        state = a.router.renewals.states["a-b"]
        assert state.renewals >= 3 and state.error is None
        # b records what it signed (until it expires), for a's router id, as renewals.
        renewed = [e for e in b.router.cert_signer.issued.entries if e.how == "renewal"]
        assert serial(a) in {e.serial for e in renewed}
        assert all(e.site == "a" and e.router_id == a.id for e in renewed)


async def test_the_server_certificate_renews_itself() -> None:
    async with mem_net(LIMITS) as net:
        a = await net.add_router("a")
        first = certs.leaf_info(a.router.identity.keypair.cert_pem).serial
        await wait_until(lambda: a.router.server_cert.renewed is not None,
                         "server certificate renewed", timeout=10)
        assert certs.leaf_info(a.router.identity.keypair.cert_pem).serial != first
        b = await net.add_router("b")
        net.link(b, a)  # a new link meets the renewed certificate
        await wait_until(lambda: converged(a, b), "b links to a")


async def ask(out: Link, request: bytes) -> RenewSigned | RenewRefused:
    """Send a raw RENEW payload on `out` and wait for the answer."""
    answers: list[bytes] = []
    saved = out._on_renew
    out._on_renew = lambda link, payload: answers.append(payload)
    try:
        out.conn.send_renew(request)
        out.kick()
        await wait_until(lambda: bool(answers), "an answer", timeout=10)
    finally:
        out._on_renew = saved
    answer = decode(answers[0])
    assert isinstance(answer, RenewSigned | RenewRefused)
    return answer


async def test_hostile_renewal_requests_are_refused_with_a_reason() -> None:
    async with mem_net(Limits(link_cert_lifetime_s=3600.0)) as net:
        a, b, out, inn = await pair(net)
        # A CSR for another site's name: the name comes from the link's certificate.
        _, csr = certs.make_csr("b")
        answer = await ask(out, encode(RenewRequest(id=1, csr_pem=csr)))
        assert isinstance(answer, RenewRefused) and "expected 'a'" in answer.error
        await trio.sleep(1.1)  # past the one-request-a-second limit
        # The key of the certificate it holds: a renewal must be a new key.
        key_pem = a.router.identity.credentials("a-b")[2]
        answer = await ask(out, encode(RenewRequest(id=2, csr_pem=_csr_for("a", key_pem))))
        assert isinstance(answer, RenewRefused) and answer.error == "a renewal needs a new key"
        await trio.sleep(1.1)
        # Garbage in a CSR.
        answer = await ask(out, encode(RenewRequest(id=3, csr_pem=b"-----BEGIN junk")))
        assert isinstance(answer, RenewRefused) and "CSR" in answer.error
        # Too fast: refused unread.
        answer = await ask(out, encode(RenewRequest(id=4, csr_pem=certs.make_csr("a")[1])))
        assert isinstance(answer, RenewRefused) and "faster than one a second" in answer.error
        await trio.sleep(1.1)
        # An honest one is signed (for a's router id), then a second on the same link
        # within a quarter of the lifetime is refused.
        answer = await ask(out, encode(RenewRequest(id=5, csr_pem=certs.make_csr("a")[1])))
        assert isinstance(answer, RenewSigned)
        assert certs.leaf_info(answer.cert_pem).router_id == a.id
        await trio.sleep(1.1)
        answer = await ask(out, encode(RenewRequest(id=6, csr_pem=certs.make_csr("a")[1])))
        assert isinstance(answer, RenewRefused) and "already" in answer.error
        # b asks a, whose certificate b did not issue (a dialled b).
        answer = await ask(inn, encode(RenewRequest(id=7, csr_pem=certs.make_csr("b")[1])))
        assert isinstance(answer, RenewRefused) and "did not issue" in answer.error
        # Oversized or malformed messages are dropped unanswered, and the link lives on.
        out.conn.send_renew(msgpack.packb({"op": "request", "id": 8,
                                           "csr": b"x" * (MAX_CSR_BYTES + 1)}))
        out.conn.send_renew(b"\xc1 not msgpack")
        out.kick()
        await trio.sleep(0.5)
        assert out.closed_reason is None and a.router.links.link_for(b.id) is out


def _csr_for(name: str, key_pem: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)
