"""A token holder cannot become a site it is not (issue 6, item 3), end to end.

Real routers west and east, linked (east redeemed west's token). Attackers hold
genuine tokens from west, and try to get west's CA to certify the name of west
itself or of east, or to serve as west with a certificate from west's CA.
"""

from __future__ import annotations

import shutil
import socket
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import pytest

import certs
from router.protocol.claim import (
    CLAIM_MAGIC,
    CLAIM_VERSION,
    ClaimRefused,
    claim_transcript,
    decode_reply,
)
from router.routing.signing import Ed25519Signer, router_id_for
from router.site.directory import Site as SiteDir
from router.site.tokens import Token
from sitectl.client import call
from sitectl.redeem import redeem
from tests.support.forge import tree_digest
from tests.support.sites import Site, link, site_env, start_sites, wait_for


class World:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = site_env(work)
        self.west = Site(work, "west", self.env).init()
        self.east = Site(work, "east", self.env).init()
        start_sites(self.west, self.east)
        link(self.west, self.east, work)
        self.tokens = 0

    def token(self) -> Path:
        self.tokens += 1
        path = self.work / f"west-{self.tokens}.token"
        self.west.sitectl("token", "issue", "--uses", "1", "-o", str(path))
        return path

    def impostor(self, name: str, tag: str) -> Site:
        """A site dir named `name` somewhere else, as an attacker would make it."""
        return Site(self.work / f"impostor-{tag}", name, self.env).init()

    def grants(self) -> str:
        return (self.west.dir / "grants.json").read_text()

    def stop(self) -> None:
        for site in (self.east, self.west):
            site.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("impersonation"))
    yield w
    w.stop()


def refused(w: World, redeemer: Site, expected: str, code: int = 1) -> None:
    """sitectl link create fails with one line; nothing changes on either side."""
    token = w.token()
    grants, before = w.grants(), tree_digest(redeemer.dir)
    result = redeemer.sitectl("link", "create", str(token), check=False)
    assert result.returncode == code
    assert result.stderr.strip() == f"sitectl: {expected}"
    assert tree_digest(redeemer.dir) == before
    assert w.grants() == grants  # the token's use was not consumed


def raw_claim(w: World, name: str, signer: Ed25519Signer) -> ClaimRefused:
    """An attacker's own client: a claim for any name, under the router id of any
    identity key it holds."""
    token = Token.load(w.token().read_bytes(), now=datetime.now(UTC).timestamp())
    key_pem, csr_pem = certs.make_csr(name)
    grants = w.grants()
    with pytest.raises(ClaimRefused) as info:
        redeem(host="127.0.0.1", port=w.west.link_port, issuer_site="west",
               ca_pem=token.ca_pem, code=token.code, csr_pem=csr_pem, key_pem=key_pem,
               site=name, signer=signer, now=datetime.now(UTC))
    assert w.grants() == grants
    return info.value


def identity(site: Site) -> Ed25519Signer:
    return Ed25519Signer(SiteDir(site.dir).identity_key())


def router_id(site: Site) -> str:
    return router_id_for(identity(site).public_key)


def test_claim_for_a_linked_site_name_is_refused(world: World) -> None:
    mallory = world.impostor("east", "linked")
    refused(world, mallory, "site west refused the token: a site named 'east' is already "
                            "linked with this site")


def test_claim_for_the_issuers_own_name_is_refused(world: World) -> None:
    impostor = world.impostor("west", "own")
    # sitectl itself will not try; the issuer refuses a claim sent by other means.
    refused(world, impostor, "the token was issued by this site (west); "
                             "a site cannot link to itself", code=2)
    exc = raw_claim(world, "west", identity(impostor))
    assert str(exc) == "site west refused the token: the name 'west' is this site's own name"


def test_claim_under_a_known_router_id_is_refused(world: World) -> None:
    # Even with east's identity key (stolen), a certificate under another name is refused.
    east_id = router_id(world.east)
    exc = raw_claim(world, "mallory", identity(world.east))
    assert str(exc) == (f"site west refused the token: router {east_id} is known in this "
                        "network as site 'east'")


def test_claim_of_a_router_id_without_its_key_is_refused(world: World) -> None:
    """Without east's identity key, nobody can claim east's router id (or any id it
    does not hold): the claim's proof is checked before the grant is looked at."""
    token = Token.load(world.token().read_bytes(), now=datetime.now(UTC).timestamp())
    _, csr_pem = certs.make_csr("mallory")
    mine = Ed25519Signer.generate()
    east_id = router_id(world.east)
    proof = mine.sign(claim_transcript(code=token.code, csr_pem=csr_pem, site="mallory",
                                       router_id=east_id))
    body = msgpack.packb({"code": token.code, "csr": csr_pem, "site": "mallory",
                          "router_id": east_id, "identity": mine.public_key, "proof": proof})
    grants = world.grants()
    ctx = certs.client_context(cert_pem=None, key_pem=None, ca_pem=token.ca_pem)
    with socket.create_connection(("127.0.0.1", world.west.link_port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="west") as tls:
        tls.sendall(CLAIM_MAGIC + bytes([CLAIM_VERSION]) + struct.pack(">I", len(body)) + body)
        reply = b""
        while chunk := tls.recv(4096):  # the router closes after its one reply
            reply += chunk
    assert decode_reply(reply[4:]) == {
        "ok": False,
        "error": f"claim refused: router id {east_id} is not that of the identity key presented"}
    assert world.grants() == grants


def test_certificate_from_the_token_cannot_serve_as_west(world: World) -> None:
    """Even with a CN=west certificate from west's CA (what redeeming as `west` gave
    before), a fake west router is refused by east, and east's real link stays up."""
    w = world
    fake = w.impostor("west", "server")
    # Stand-in for the old bug's outcome: west's CA signs a CSR for CN=west.
    key_pem, csr_pem = certs.make_csr("west")
    fake_cert = SiteDir(w.west.dir).ca().sign_csr(csr_pem, expected_name="west",
                                                   router_id=router_id(fake))
    certs.save_pem(fake.dir / "router.crt", fake_cert, private=False)
    certs.save_pem(fake.dir / "router.key", key_pem, private=True)
    fake.start()
    try:
        # east gets a second link to "west" that leads to the fake, with west's CA and
        # east's real credentials for west, and no router id pinned.
        links = w.east.dir / "links"
        for suffix in ("-ca.crt", ".crt", ".key"):
            shutil.copy(links / f"west{suffix}", links / f"fake{suffix}")
        (links / "fake.toml").write_text(
            f'peer_site = "west"\nendpoints = ["127.0.0.1:{fake.link_port}"]\ncost = 1\n')
        call(SiteDir(w.east.dir).control_path, "link.add", {"name": "fake"})

        def fake_link() -> dict[str, object]:
            return next(lk for lk in w.east.state()["links"] if lk["name"] == "fake")

        error = wait_for(lambda: fake_link()["error"], what="the fake link's error")
        assert error == (f"127.0.0.1:{fake.link_port}: peer certificate rejected: "
                         "unsuitable certificate purpose")
        assert fake_link()["state"] != "up"
        assert w.east.link_up("west")
        assert not fake.status()["links"]
    finally:
        fake.stop()
        w.east.sitectl("link", "delete", "fake", check=False)


def test_pinned_router_id_mismatch_keeps_the_link_down(tmp_path: Path) -> None:
    env = site_env(tmp_path)
    west = Site(tmp_path, "west", env).init()
    east = Site(tmp_path, "east", env).init()
    start_sites(west, east)
    try:
        link(west, east, tmp_path)
        spec = east.dir / "links" / "west.toml"
        real = router_id(west)
        assert f'peer_router_id = "{real}"' in spec.read_text()
        east.stop()
        wrong = "r" + "0" * 16
        spec.write_text(spec.read_text().replace(real, wrong))
        east.start()
        expected = f"127.0.0.1:{west.link_port}: expected router {wrong}, found {real}"

        def west_link() -> dict[str, object]:
            return next(lk for lk in east.state()["links"] if lk["name"] == "west")

        wait_for(lambda: west_link()["error"] == expected, what="the pin's error")
        assert west_link()["state"] != "up"
    finally:
        east.stop()
        west.stop()


def test_claim_of_another_version_gets_a_reason(world: World) -> None:
    ctx = certs.client_context(cert_pem=None, key_pem=None,
                               ca_pem=SiteDir(world.west.dir).ca().cert_pem)
    with socket.create_connection(("127.0.0.1", world.west.link_port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="west") as tls:
        tls.sendall(CLAIM_MAGIC + bytes([1]) + struct.pack(">I", 2) + b"\x80\x80")
        reply = b""
        while chunk := tls.recv(4096):  # the router closes after its one reply
            reply += chunk
    assert decode_reply(reply[4:]) == {"ok": False,
                                       "error": "this site speaks claim version 2, not 1"}
