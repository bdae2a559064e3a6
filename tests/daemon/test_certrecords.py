"""The issuing site's records of certificates: issued.json and revoked.json are written
atomically (0600), read back with every field checked, and a revocation list that cannot
be read stops the router rather than let the revoked in. `sitectl link revoke` works with
the router stopped too."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import certs
from router.site.certrecords import (
    MAX_REASON_CHARS,
    Issued,
    IssuedCerts,
    Revocations,
    Revoked,
    build_revocation,
)
from router.site.errors import SiteError
from tests.support.sites import Site, site_env

RID = "r" + "1" * 16


def issued(site: str = "a", expires: float | None = None) -> Issued:
    ca = certs.CertificateAuthority.generate("hub")
    info = certs.leaf_info(ca.issue(site, role=certs.Role.CLIENT, router_id=RID).cert_pem)
    return Issued(site=site, router_id=RID, serial=info.serial, key_sha256=info.key_sha256,
                  issued=info.issued.timestamp(),
                  expires=info.expires.timestamp() if expires is None else expires,
                  how="token")


def test_records_persist_privately_and_expired_ones_go(tmp_path: Path) -> None:
    path = tmp_path / "issued.json"
    store = IssuedCerts(path)
    store.record(issued(expires=time.time() + 1))
    store.record(issued("b"), now=time.time() + 2)  # the first has expired by then
    assert path.stat().st_mode & 0o777 == 0o600
    again = IssuedCerts(path)
    assert [e.site for e in again.entries] == ["b"]
    assert again.latest(RID) == again.entries[0]


def test_a_revocation_merges_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    store = Revocations(path)
    first = build_revocation("a", "stolen", own_site="hub", now=1.0,
                             issued=_with(tmp_path, issued()))
    store.add(first)
    store.add(Revoked(site="a", router_ids=["r" + "2" * 16], serials=[], keys=[], revoked=2.0,
                      reason="again"))
    [entry] = Revocations(path).entries
    assert entry.router_ids == [RID, "r" + "2" * 16] and entry.reason == "stolen"
    assert Revocations(path).find(serial=first.serials[0]) is not None
    assert Revocations(path).find(site="b") is None


def _with(tmp_path: Path, entry: Issued) -> IssuedCerts:
    store = IssuedCerts(tmp_path / "i.json")
    store.record(entry)
    return store


@pytest.mark.parametrize("content", [
    "not json", "{}", '[{"site": "a"}]', '[{"site": "../x", "router_ids": [], "serials": [],'
    ' "keys": [], "revoked": 1, "reason": ""}]',
    '[{"site": "a", "router_ids": ["nope"], "serials": [], "keys": [], "revoked": 1,'
    ' "reason": ""}]',
])
def test_an_unreadable_revocation_list_is_an_error_not_empty(tmp_path: Path,
                                                              content: str) -> None:
    path = tmp_path / "revoked.json"
    path.write_text(content)
    with pytest.raises(SiteError, match=r"revoked\.json"):
        Revocations(path)


def test_bad_revocations_are_refused(tmp_path: Path) -> None:
    records = _with(tmp_path, issued())
    with pytest.raises(SiteError, match="not known here"):
        build_revocation("zed", "", own_site="hub", now=1.0, issued=records)
    with pytest.raises(SiteError, match="own name"):
        build_revocation("hub", "", own_site="hub", now=1.0, issued=records)
    with pytest.raises(SiteError, match="printable line"):
        build_revocation("a", "x" * (MAX_REASON_CHARS + 1), own_site="hub", now=1.0,
                         issued=records)
    with pytest.raises(SiteError, match="printable line"):
        build_revocation("a", "\x1b[2J", own_site="hub", now=1.0, issued=records)


def test_revoke_and_list_with_the_router_stopped(tmp_path: Path) -> None:
    hub = Site(tmp_path, "hub", site_env(tmp_path)).init()
    IssuedCerts(hub.dir / "issued.json").record(issued())
    out = hub.sitectl("link", "revoke", "a", "--reason", "lost")
    assert "router not running: recorded" in out.stdout
    doc = json.loads((hub.dir / "revoked.json").read_text())
    assert doc[0]["site"] == "a" and doc[0]["router_ids"] == [RID]
    listed = hub.sitectl("link", "list", "--revoked").stdout
    assert listed.startswith("  a ") and "lost" in listed and RID in listed
    bad = hub.sitectl("link", "revoke", "../a", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("sitectl: ")
