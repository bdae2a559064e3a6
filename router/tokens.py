"""Link tokens: one file that lets another site redeem a certificate and link to us.

A token holds the link endpoint(s), the issuing site's CA certificate, a random code
(256 bits), the expiry and the number of uses, signed by the issuing CA so that an
edited or damaged token is caught before anything is sent. The issuer keeps only a
hash of the code in its grant store; a use is counted only once a certificate was
issued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certs
from router.atomic import write_atomic

TOKEN_TYPE = "vanrouter-link-token"
TOKEN_VERSION = 1
MAX_TOKEN_BYTES = 64 * 1024
MAX_GRANTS = 10_000


class TokenError(Exception):
    """A token or grant problem; the message says which."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def format_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    site: str
    endpoints: tuple[tuple[str, int], ...]
    ca_pem: bytes
    code: bytes
    expires: float
    uses: int

    def _body(self) -> dict[str, Any]:
        return {
            "type": TOKEN_TYPE,
            "version": TOKEN_VERSION,
            "site": self.site,
            "endpoints": [f"{h}:{p}" for h, p in self.endpoints],
            "ca": self.ca_pem.decode(),
            "code": _b64(self.code),
            "expires": int(self.expires),
            "uses": self.uses,
        }

    def signed_bytes(self) -> bytes:
        return json.dumps(self._body(), sort_keys=True, separators=(",", ":")).encode()

    def dump(self, signature: bytes) -> bytes:
        doc = self._body() | {"signature": _b64(signature)}
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def load(cls, data: bytes, *, now: float) -> Token:
        """Parse and check a token file: format, signature, expiry."""
        if len(data) > MAX_TOKEN_BYTES:
            raise TokenError(f"not a link token (file is over {MAX_TOKEN_BYTES} bytes)")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise TokenError("not a link token (not JSON)") from None
        if not isinstance(doc, dict) or doc.get("type") != TOKEN_TYPE:
            raise TokenError("not a link token (wrong type)")
        if doc.get("version") != TOKEN_VERSION:
            raise TokenError(f"unsupported token version {doc.get('version')!r}")
        try:
            endpoints = []
            for ep in doc["endpoints"]:
                host, _, port = ep.rpartition(":")
                endpoints.append((host, int(port)))
            token = cls(
                site=str(doc["site"]), endpoints=tuple(endpoints),
                ca_pem=str(doc["ca"]).encode(), code=_unb64(str(doc["code"])),
                expires=float(doc["expires"]), uses=int(doc["uses"]),
            )
            signature = _unb64(str(doc["signature"]))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise TokenError(f"token is damaged or was altered ({exc})") from None
        if not certs.verify_signature(token.ca_pem, token.signed_bytes(), signature):
            raise TokenError("token is damaged or was altered (its signature does not verify)")
        if token.expires <= now:
            raise TokenError(f"token expired at {format_time(token.expires)}")
        return token


@dataclass(slots=True, kw_only=True)
class Grant:
    code_hash: str
    expires: float
    uses_left: int
    uses: int
    created: float


class GrantStore:
    """The issuer's side: grants persisted atomically in grants.json (0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.grants: list[Grant] = []
        if path.exists():
            try:
                self.grants = [Grant(**g) for g in json.loads(path.read_text())]
            except (ValueError, TypeError) as exc:
                raise TokenError(f"{path}: unreadable grant store: {exc}") from exc

    def _save(self) -> None:
        data = json.dumps([_grant_dict(g) for g in self.grants], indent=1)
        write_atomic(self.path, data.encode(), mode=0o600)

    def issue(self, *, expires_in: float, uses: int, now: float) -> tuple[bytes, Grant]:
        if uses < 1:
            raise TokenError("--uses must be at least 1")
        if expires_in <= 0:
            raise TokenError("--expires must be positive")
        self.grants = [g for g in self.grants if g.expires > now and g.uses_left > 0]
        if len(self.grants) >= MAX_GRANTS:
            raise TokenError(f"too many outstanding grants ({MAX_GRANTS})")
        code = secrets.token_bytes(32)
        grant = Grant(code_hash=hashlib.sha256(code).hexdigest(), expires=now + expires_in,
                      uses_left=uses, uses=uses, created=now)
        self.grants.append(grant)
        self._save()
        return code, grant

    def check(self, code: bytes, *, now: float) -> Grant:
        """Find the grant for `code` (constant-time compare) or say why not."""
        digest = hashlib.sha256(code).hexdigest()
        found: Grant | None = None
        for grant in self.grants:
            if hmac.compare_digest(grant.code_hash, digest):
                found = grant
        if found is None:
            raise TokenError("token not recognised by this site (wrong code, or revoked)")
        if found.expires <= now:
            raise TokenError(f"token expired at {format_time(found.expires)}")
        if found.uses_left <= 0:
            raise TokenError(f"token already used ({found.uses} of {found.uses} uses)")
        return found

    def consume(self, grant: Grant) -> None:
        grant.uses_left -= 1
        self._save()


def _grant_dict(g: Grant) -> dict[str, Any]:
    return {"code_hash": g.code_hash, "expires": g.expires, "uses_left": g.uses_left,
            "uses": g.uses, "created": g.created}
