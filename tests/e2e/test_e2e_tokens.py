"""Redeeming tokens: the good path and every way it must refuse, changing nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import certs
from router.site.tokens import Token
from tests.support.sites import SITECTL, Site, free_port, link, site_env, start_sites, wait_for


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("tokens")
    env = site_env(work)
    west = Site(work, "west", env).init().start()
    east = Site(work, "east", env).init()
    south = Site(work, "south", env).init()
    yield work, west, east, south
    west.stop()


def grants(site: Site) -> list[dict[str, object]]:
    path = site.dir / "grants.json"
    return json.loads(path.read_text()) if path.exists() else []


def issue(site: Site, work: Path, name: str, *extra: str) -> Path:
    path = work / name
    site.sitectl("token", "issue", "-o", str(path), *extra)
    return path


def refused(redeemer: Site, token: Path, issuer: Site) -> str:
    """Redeem must fail; nothing may change on either site. Returns the message."""
    before = grants(issuer)
    result = redeemer.sitectl("link", "create", str(token), check=False)
    assert result.returncode != 0
    assert not (redeemer.dir / "links").exists() or not list((redeemer.dir / "links").iterdir())
    assert grants(issuer) == before
    message = result.stderr.strip()
    assert message.startswith("sitectl: ") and "\n" not in message, message
    return message


def test_token_file_is_private_and_signed(sites) -> None:  # type: ignore[no-untyped-def]
    work, west, _, _ = sites
    path = issue(west, work, "t0.token", "--expires", "1h", "--uses", "3")
    assert path.stat().st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert doc["site"] == "west" and doc["uses"] == 3
    assert len(doc["code"]) >= 22  # >= 128 bits, base64
    Token.load(path.read_bytes(), now=time.time())


def test_expired_token_refused(sites) -> None:  # type: ignore[no-untyped-def]
    work, west, east, _ = sites
    token = issue(west, work, "expired.token", "--expires", "1s")
    expires = json.loads(token.read_text())["expires"]
    wait_for(lambda: time.time() > expires + 0.1, what="token expiry")
    assert "token expired at" in refused(east, token, west)


def test_tampered_token_refused(sites) -> None:  # type: ignore[no-untyped-def]
    work, west, east, _ = sites
    token = issue(west, work, "tampered.token")
    doc = json.loads(token.read_text())
    doc["endpoints"] = ["127.0.0.1:1"]
    token.write_text(json.dumps(doc))
    assert "damaged or was altered" in refused(east, token, west)


def test_not_a_token_refused(sites) -> None:  # type: ignore[no-untyped-def]
    work, west, east, _ = sites
    bogus = work / "bogus.token"
    bogus.write_text("hello")
    assert "not a link token" in refused(east, bogus, west)


def _forge(signer_site: Site, endpoint_site: Site, code: bytes, work: Path, name: str) -> Path:
    """A correctly signed token (by signer_site's CA) that points at endpoint_site."""
    ca = certs.CertificateAuthority.from_pem(
        (signer_site.dir / "ca.crt").read_bytes(), (signer_site.dir / "ca.key").read_bytes())
    token = Token(site=signer_site.name, endpoints=(("127.0.0.1", endpoint_site.link_port),),
                  ca_pem=ca.cert_pem, code=code, expires=time.time() + 600, uses=1)
    path = work / name
    path.write_bytes(token.dump(ca.sign_bytes(token.signed_bytes())))
    return path


def test_wrong_code_refused(sites) -> None:  # type: ignore[no-untyped-def]
    work, west, east, _ = sites
    token = _forge(west, west, b"\x01" * 32, work, "wrongcode.token")
    assert "wrong code" in refused(east, token, west)


def test_foreign_token_refused(sites) -> None:  # type: ignore[no-untyped-def]
    work, west, east, south = sites
    token = _forge(south, west, b"\x02" * 32, work, "foreign.token")
    message = refused(east, token, west)
    assert "is not site south" in message and "foreign" in message, message


def test_unreachable_issuer_refused(sites) -> None:  # type: ignore[no-untyped-def]
    work, _, east, south = sites
    south_router = south.start()
    token = issue(south_router, work, "south.token")
    south.stop()
    message = refused(east, token, south)
    assert "cannot reach site south" in message and "Connection refused" in message


def test_token_use_is_counted_and_reuse_refused(sites) -> None:  # type: ignore[no-untyped-def]
    work, west, east, south = sites
    token = issue(west, work, "once.token", "--uses", "1")
    east.start()
    try:
        out = east.sitectl("link", "create", str(token))
        assert "created: up" in out.stdout
        assert any(g["uses_left"] == 0 for g in grants(west))
        # The same token again, from another site: used up.
        south.start()
        try:
            message = refused(south, token, west)
            assert "already used" in message, message
        finally:
            south.stop()
        # Same link name twice is refused locally.
        again = east.sitectl("link", "create", str(token), check=False)
        assert again.returncode != 0 and "already exists" in again.stderr
        east.sitectl("link", "delete", "west")
        # The live link is torn down on both ends, and east no longer dials.
        wait_for(lambda: not any(lk["peer_site"] == "east" for lk in west.state()["links"]),
                 what="west to see the link gone")
        wait_for(lambda: "peer closed the link: link deleted" in west.log_tail(20),
                 what="west told why")
        assert east.status()["links"] == []
    finally:
        east.stop()
    assert not list((east.dir / "links").glob("*.toml"))


def test_router_with_foreign_ca_cannot_link(tmp_path: Path) -> None:
    env = site_env(tmp_path)
    west = Site(tmp_path, "west", env).init()
    east = Site(tmp_path, "east", env).init()
    start_sites(west, east)
    mallory = Site(tmp_path, "mallory", env).init()
    try:
        link(west, east, tmp_path)
        # mallory copies east's link but presents a certificate from its own CA.
        links = mallory.dir / "links"
        links.mkdir()
        for f in (east.dir / "links").iterdir():
            (links / f.name).write_bytes(f.read_bytes())
        ca = certs.CertificateAuthority.from_pem(
            (mallory.dir / "ca.crt").read_bytes(), (mallory.dir / "ca.key").read_bytes())
        forged = ca.issue("mallory")
        (links / "west.crt").write_bytes(forged.cert_pem)
        (links / "west.key").write_bytes(forged.key_pem)
        mallory.start()

        def refused_link() -> str:
            for lk in mallory.state()["links"]:
                if lk["name"] == "west" and lk.get("error"):
                    return str(lk["error"])
            return ""

        error = wait_for(refused_link, what="mallory's link attempt to fail")
        assert not mallory.link_up("west")
        assert "certificate" in error or "TLS" in error, error
        wait_for(lambda: "refused link attempt" in west.log_tail(50), what="west log")
        assert "peer certificate rejected" in west.log_tail(50)
        assert west.link_up("in:east")  # the real link is unaffected
    finally:
        for s in (mallory, east, west):
            s.stop()


def test_several_advertised_endpoints_are_tried_in_order(tmp_path: Path) -> None:
    """A site reachable at its second advertised address: redemption and dialling both
    fall through the dead first one."""
    import subprocess

    env = site_env(tmp_path)
    west = Site(tmp_path, "west", env)
    dead = free_port()
    bad = subprocess.run(
        [SITECTL, "init", "west", "--site-dir", str(west.dir), "--advertise", "nowhere"],
        env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "is not HOST:PORT" in bad.stderr
    assert not west.dir.exists()
    subprocess.run(
        [SITECTL, "init", "west", "--site-dir", str(west.dir), "--link-port",
         str(west.link_port), "--advertise", f"127.0.0.1:{dead}",
         "--advertise", f"127.0.0.1:{west.link_port}"], env=env, check=True)
    east = Site(tmp_path, "east", env).init()
    try:
        west.start()
        east.start()
        assert west.status()["link_endpoint"] == (
            f"127.0.0.1:{dead}, 127.0.0.1:{west.link_port}")
        link(west, east, tmp_path)
        doc = json.loads((tmp_path / "west-for-east.token").read_text())
        assert doc["endpoints"] == [f"127.0.0.1:{dead}", f"127.0.0.1:{west.link_port}"]
        east.stop()
        east.start()  # the dialler too goes past the dead address
        wait_for(lambda: east.link_up("west"), what="link up via the second address")
    finally:
        east.stop()
        west.stop()
