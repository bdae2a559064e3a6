"""Names, roles and router ids are bound at link setup: real TLS 1.3 over memory streams
through the router's own handshake code (tls_handshake, start_link).

OpenSSL checks the certificate purpose by default (a client verifies the server's
certificate for serverAuth, a server the client's for clientAuth); these tests are what
confirm it, since the ssl module has no way to set the purpose explicitly.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import certs
from certs import CertificateAuthority, KeyPair, Role
from router.net.handshake import HandshakeError, start_link, tls_handshake
from router.net.tls import TLSStream
from router.protocol import Hello
from router.protocol import Role as LinkRole
from router.site.config import Limits

WEST_ID, EAST_ID, OTHER_ID = "r" + "a" * 16, "r" + "b" * 16, "r" + "c" * 16


def hello(site: str, rid: str) -> Hello:
    return Hello(router_id=rid, site=site, max_frame_bytes=256 * 1024, keepalive_interval=1.0)


def client_cert(ca: CertificateAuthority, name: str, router_id: str | None) -> KeyPair:
    """What a redeemer gets: a signed CSR (client-only, router id bound)."""
    key_pem, csr_pem = certs.make_csr(name)
    return KeyPair(key_pem=key_pem,
                   cert_pem=ca.sign_csr(csr_pem, expected_name=name, router_id=router_id))


async def bring_up(ca: CertificateAuthority, server_kp: KeyPair, client_kp: KeyPair, *,
                   server: Hello, client: Hello, expect_router_id: str | None = None
                   ) -> dict[str, object]:
    """Run both ends; per side ("acceptor", "dialer") the peer's Hello or the error text."""
    left, right = trio.testing.memory_stream_pair()
    streams = {
        "acceptor": TLSStream(left, certs.server_context(
            cert_pem=server_kp.cert_pem, key_pem=server_kp.key_pem, ca_pem=ca.cert_pem,
            require_client_cert=False), server_side=True),
        "dialer": TLSStream(right, certs.client_context(
            cert_pem=client_kp.cert_pem, key_pem=client_kp.key_pem, ca_pem=ca.cert_pem),
            server_side=False, server_hostname=server.site),
    }
    out: dict[str, object] = {}

    async def side(role: str) -> None:
        stream = streams[role]
        dialer = role == "dialer"
        try:
            await tls_handshake(stream)
            _, peer, _ = await start_link(
                stream, role=LinkRole.DIALER if dialer else LinkRole.ACCEPTOR,
                hello=client if dialer else server, limits=Limits(),
                expect_site=server.site if dialer else None,
                expect_router_id=expect_router_id if dialer else None)
            out[role] = peer
        except HandshakeError as exc:
            out[role] = str(exc)
        finally:
            await trio.aclose_forcefully(stream)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, "acceptor")
            nursery.start_soon(side, "dialer")
    return out


async def test_router_cert_and_redeemed_cert_make_a_link(ca: CertificateAuthority) -> None:
    out = await bring_up(ca, ca.issue("west"), client_cert(ca, "east", EAST_ID),
                         server=hello("west", WEST_ID), client=hello("east", EAST_ID),
                         expect_router_id=WEST_ID)
    assert isinstance(out["acceptor"], Hello) and out["acceptor"].router_id == EAST_ID
    assert isinstance(out["dialer"], Hello) and out["dialer"].router_id == WEST_ID


async def test_redeemed_cert_cannot_serve(ca: CertificateAuthority) -> None:
    """Issue 6 item 3: a CN=west certificate from west's CA, obtained by redeeming a token,
    must not let its holder pose as west's link port."""
    fake_west = client_cert(ca, "west", OTHER_ID)
    out = await bring_up(ca, fake_west, client_cert(ca, "east", EAST_ID),
                         server=hello("west", OTHER_ID), client=hello("east", EAST_ID))
    assert out["dialer"] == "peer certificate rejected: unsuitable certificate purpose"
    assert not isinstance(out["acceptor"], Hello)


async def test_server_cert_cannot_dial(ca: CertificateAuthority) -> None:
    """The router's own (server-only) certificate is no good as a link client certificate."""
    out = await bring_up(ca, ca.issue("west"), ca.issue("east", role=Role.SERVER),
                         server=hello("west", WEST_ID), client=hello("east", EAST_ID))
    assert out["acceptor"] == "peer certificate rejected: unsuitable certificate purpose"
    assert not isinstance(out["dialer"], Hello)


async def test_cert_is_bound_to_its_router_id(ca: CertificateAuthority) -> None:
    out = await bring_up(ca, ca.issue("west"), client_cert(ca, "east", EAST_ID),
                         server=hello("west", WEST_ID), client=hello("east", OTHER_ID))
    assert out["acceptor"] == (f"peer says it is router {OTHER_ID} but its certificate names "
                               f"{EAST_ID}")


@pytest.mark.parametrize("router_id", [None, EAST_ID])
async def test_dialer_refuses_another_router_than_pinned(ca: CertificateAuthority,
                                                         router_id: str | None) -> None:
    out = await bring_up(ca, ca.issue("west"), client_cert(ca, "east", router_id),
                         server=hello("west", OTHER_ID), client=hello("east", EAST_ID),
                         expect_router_id=WEST_ID)
    assert out["dialer"] == f"expected router {WEST_ID}, found {OTHER_ID}"


@pytest.mark.parametrize("bad_site", ["../east", "a/b", ".east", "e" * 64])
async def test_hello_site_must_be_a_site_name(ca: CertificateAuthority, bad_site: str) -> None:
    """The HELLO's site meets the same name rule as tokens, claims, the CLI and config,
    before it is compared with the certificate."""
    out = await bring_up(ca, ca.issue("west"), client_cert(ca, "east", EAST_ID),
                         server=hello("west", WEST_ID), client=hello(bad_site, EAST_ID))
    assert isinstance(out["acceptor"], str)
    assert out["acceptor"].startswith("peer HELLO refused: "), out["acceptor"]
