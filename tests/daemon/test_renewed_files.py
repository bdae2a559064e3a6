"""Certificates renewed with a data dir of its own ($SITECTL_DATA_DIR, the site dir a
read-only mount): kept in <data-dir>/renewed/ and used in place of the mounted ones they
descend from, and only those; a record that does not hold together is ignored, never
trusted and never fatal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import certs
from router.site.directory import ENV_DATA_DIR, Site
from router.site.errors import SiteError
from router.site.linkfiles import LinkSpec

PEER_CA = certs.CertificateAuthority.generate("hub")


def link_site(root: Path) -> tuple[Site, certs.KeyPair]:
    """A site dir (only what links need) with link `hub`, its certificate from PEER_CA."""
    site = Site(root)
    root.mkdir()
    pair = PEER_CA.issue("lap", role=certs.Role.CLIENT, lifetime_s=3600)
    site.save_link(LinkSpec(name="hub", peer_site="hub", endpoints=(("127.0.0.1", 9),),
                            cost=1), ca_pem=PEER_CA.cert_pem, cert_pem=pair.cert_pem,
                   key_pem=pair.key_pem)
    return site, pair


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv(ENV_DATA_DIR, str(data))
    return data


def tree(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_renewal_goes_to_the_data_dir_and_is_used(tmp_path: Path, data_dir: Path) -> None:
    site, mounted = link_site(tmp_path / "site")
    before = tree(site.root)
    new = PEER_CA.issue("lap", role=certs.Role.CLIENT, lifetime_s=3600)
    site.store_link_renewal("hub", new.cert_pem, new.key_pem, 1_800_000_000.0)
    assert tree(site.root) == before  # the mounted files are untouched
    path = data_dir / "renewed" / "links" / "hub.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert site.link_credentials("hub") == (PEER_CA.cert_pem, new.cert_pem, new.key_pem)
    assert site.load_link("hub").renewed == 1_800_000_000.0
    # Renewed again: still recorded against the mounted certificate.
    newer = PEER_CA.issue("lap", role=certs.Role.CLIENT, lifetime_s=3600)
    site.store_link_renewal("hub", newer.cert_pem, newer.key_pem, 1_800_000_100.0)
    assert site.link_credentials("hub")[1] == newer.cert_pem
    site.delete_link("hub")
    assert not path.exists()
    assert mounted.cert_pem not in tree(data_dir).values()


def test_credentials_mounted_anew_win_over_an_old_renewal(tmp_path: Path,
                                                          data_dir: Path) -> None:
    site, _ = link_site(tmp_path / "site")
    old = PEER_CA.issue("lap", role=certs.Role.CLIENT, lifetime_s=3600)
    site.store_link_renewal("hub", old.cert_pem, old.key_pem, 1_800_000_000.0)
    fresh = PEER_CA.issue("lap", role=certs.Role.CLIENT, lifetime_s=3600)
    # A new Secret: the link's files replaced under the router (as a new token would).
    spec = LinkSpec(name="hub", peer_site="hub", endpoints=(("127.0.0.1", 9),), cost=1)
    site.save_link(spec, ca_pem=PEER_CA.cert_pem, cert_pem=fresh.cert_pem, key_pem=fresh.key_pem)
    assert site.link_credentials("hub") == (PEER_CA.cert_pem, fresh.cert_pem, fresh.key_pem)
    assert site.load_link("hub").renewed is None


def record(data_dir: Path) -> Path:
    return data_dir / "renewed" / "links" / "hub.json"


def tamper_key(doc: dict[str, object]) -> None:
    doc["key"] = PEER_CA.issue("x", role=certs.Role.CLIENT).key_pem.decode()


def tamper_ca(doc: dict[str, object]) -> None:
    other = certs.CertificateAuthority.generate("hub").issue("lap", role=certs.Role.CLIENT)
    doc["cert"], doc["key"] = other.cert_pem.decode(), other.key_pem.decode()


def tamper_field(doc: dict[str, object]) -> None:
    doc["extra"] = 1


def tamper_type(doc: dict[str, object]) -> None:
    doc["renewed"] = "yesterday"


@pytest.mark.parametrize("tamper", [tamper_key, tamper_ca, tamper_field, tamper_type])
def test_a_record_that_does_not_hold_together_is_ignored(
        tmp_path: Path, data_dir: Path, tamper: object, caplog: pytest.LogCaptureFixture) -> None:
    site, mounted = link_site(tmp_path / "site")
    new = PEER_CA.issue("lap", role=certs.Role.CLIENT, lifetime_s=3600)
    site.store_link_renewal("hub", new.cert_pem, new.key_pem, 1_800_000_000.0)
    doc = json.loads(record(data_dir).read_text())
    assert callable(tamper)
    tamper(doc)
    record(data_dir).write_text(json.dumps(doc))
    assert site.link_credentials("hub") == (PEER_CA.cert_pem, mounted.cert_pem, mounted.key_pem)
    assert "ignored (the mounted certificate is used)" in caplog.text


@pytest.mark.parametrize("content", [b"", b"{", b"[1]", b"x" * 100_000, b"\xff\xfe"])
def test_garbage_is_ignored(tmp_path: Path, data_dir: Path, content: bytes) -> None:
    site, mounted = link_site(tmp_path / "site")
    record(data_dir).parent.mkdir(parents=True)
    record(data_dir).write_bytes(content)
    assert site.link_credentials("hub")[1] == mounted.cert_pem


def test_a_fifo_is_not_waited_on(tmp_path: Path, data_dir: Path) -> None:
    site, mounted = link_site(tmp_path / "site")
    record(data_dir).parent.mkdir(parents=True)
    os.mkfifo(record(data_dir))
    assert site.link_credentials("hub")[1] == mounted.cert_pem


def test_the_server_certificate_renews_into_the_data_dir(tmp_path: Path,
                                                         data_dir: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    ca = certs.CertificateAuthority.generate("lap")
    mounted = ca.issue("lap", lifetime_s=3600)
    for name, pem in (("ca.crt", ca.cert_pem), ("router.crt", mounted.cert_pem),
                      ("router.key", mounted.key_pem)):
        (root / name).write_bytes(pem)
    site = Site(root)
    before = tree(root)
    renewed = ca.issue("lap", lifetime_s=3600)
    site.save_router_keypair(renewed)
    assert tree(root) == before
    assert site.router_keypair() == renewed
    # A router.crt mounted anew wins; the old renewal is not used with it.
    remounted = ca.issue("lap", lifetime_s=3600)
    (root / "router.crt").write_bytes(remounted.cert_pem)
    (root / "router.key").write_bytes(remounted.key_pem)
    assert site.router_keypair() == remounted


def test_a_data_dir_that_cannot_take_it_is_a_clear_error(tmp_path: Path,
                                                          data_dir: Path) -> None:
    site, _ = link_site(tmp_path / "site")
    (data_dir / "renewed").write_text("in the way")  # (chmod would not stop root)
    new = PEER_CA.issue("lap", role=certs.Role.CLIENT, lifetime_s=3600)
    with pytest.raises(SiteError, match="cannot save the renewed certificate of link hub"):
        site.store_link_renewal("hub", new.cert_pem, new.key_pem, 1_800_000_000.0)
