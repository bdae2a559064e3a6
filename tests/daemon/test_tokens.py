"""Tokens and grants without the network: signing, expiry, uses, constant-time lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import certs
from router.site.tokens import GrantStore, Token, TokenError

NOW = 1_800_000_000.0


def make(ca: certs.CertificateAuthority, code: bytes = b"c" * 32) -> bytes:
    token = Token(site="west", endpoints=(("127.0.0.1", 55671),), ca_pem=ca.cert_pem,
                  code=code, expires=NOW + 60, uses=1)
    return token.dump(ca.sign_bytes(token.signed_bytes()))


def test_round_trip() -> None:
    ca = certs.CertificateAuthority.generate("west")
    token = Token.load(make(ca), now=NOW)
    assert token.site == "west" and token.endpoints == (("127.0.0.1", 55671),)


@pytest.mark.parametrize("field", ["site", "endpoints", "code", "expires", "uses"])
def test_any_edit_breaks_the_signature(field: str) -> None:
    ca = certs.CertificateAuthority.generate("west")
    doc = json.loads(make(ca))
    doc[field] = {"site": "evil", "endpoints": ["10.9.9.9:1"], "code": "AAAA",
                  "expires": int(NOW + 10_000), "uses": 99}[field]
    with pytest.raises(TokenError, match="damaged or was altered"):
        Token.load(json.dumps(doc).encode(), now=NOW)


def test_swapped_ca_breaks_the_signature() -> None:
    ca = certs.CertificateAuthority.generate("west")
    other = certs.CertificateAuthority.generate("x")
    doc = json.loads(make(ca))
    doc["ca"] = other.cert_pem.decode()
    with pytest.raises(TokenError, match="signature does not verify"):
        Token.load(json.dumps(doc).encode(), now=NOW)


def test_expired_and_garbage() -> None:
    ca = certs.CertificateAuthority.generate("west")
    with pytest.raises(TokenError, match="token expired at"):
        Token.load(make(ca), now=NOW + 61)
    for junk in (b"", b"{}", b"[1]", b"\xff\xfe", b"x" * 100_000):
        with pytest.raises(TokenError):
            Token.load(junk, now=NOW)


def test_grants_count_uses_and_persist(tmp_path: Path) -> None:
    store = GrantStore(tmp_path / "grants.json")
    code, grant = store.issue(expires_in=60, uses=2, now=NOW)
    assert (tmp_path / "grants.json").stat().st_mode & 0o777 == 0o600
    assert code.hex() not in (tmp_path / "grants.json").read_text()  # only a hash is kept
    store.consume(store.check(code, now=NOW))
    reloaded = GrantStore(tmp_path / "grants.json")
    reloaded.consume(reloaded.check(code, now=NOW))
    with pytest.raises(TokenError, match="already used"):
        reloaded.check(code, now=NOW)
    with pytest.raises(TokenError, match="wrong code"):
        reloaded.check(b"nope", now=NOW)
    code2, _ = reloaded.issue(expires_in=1, uses=1, now=NOW)
    with pytest.raises(TokenError, match="expired"):
        reloaded.check(code2, now=NOW + 2)
    with pytest.raises(TokenError):
        reloaded.issue(expires_in=60, uses=0, now=NOW)
    assert grant.uses == 2
