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
import math
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certs
from router.endpoint import Endpoint, parse_endpoint
from router.errors import VanError
from router.names import InvalidName, shown, validate_name
from router.site.atomic import write_atomic

TOKEN_TYPE = "vanrouter-link-token"
TOKEN_VERSION = 1
MAX_TOKEN_BYTES = 64 * 1024
MAX_GRANTS = 10_000
MAX_USES = 1_000_000
MAX_ENDPOINTS = 16
MAX_JSON_DEPTH = 2  # the object and its endpoints list
MAX_GRANT_S = 365 * 86400  # the longest a grant (and so a token) may be issued for
MAX_TOKEN_LIFETIME_S = 10 * 365 * 86400  # a redeemer's bound, generous for clock skew
_CODE_BYTES = 32
_MAX_B64_CHARS = 1024
_FIELDS = {"type", "version", "site", "endpoints", "ca", "code", "expires", "uses", "signature"}
_B64_RE = re.compile(r"[A-Za-z0-9_-]*")
# A JSON string or a bracket. The closing quote is optional so that a match never fails:
# a failed match would be retried from every later quote, quadratic in the input.
_SCAN_RE = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


class TokenError(VanError):
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
            "endpoints": [Endpoint(h, p).stored() for h, p in self.endpoints],
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
        """Parse and check a token file: bounds, field types, signature, expiry.

        A token is attacker input that chooses a file name (its site) and addresses,
        so every field is checked before anything uses it; any problem is a TokenError.
        """
        doc = _parse_json(data)
        if doc.get("type") != TOKEN_TYPE:
            raise TokenError("not a link token (wrong type)")
        version = doc.get("version")
        if type(version) is not int or version != TOKEN_VERSION:
            raise TokenError(f"unsupported token version {_short(version)}")
        unknown = sorted(set(doc) - _FIELDS)
        if unknown:
            raise _damaged(f"unknown field {shown(unknown[0])}")
        try:
            site = validate_name(doc.get("site"), "site name")
        except InvalidName as exc:
            raise TokenError(f"token refused: {exc}") from None
        token = cls(site=site, endpoints=_endpoints(doc.get("endpoints")), ca_pem=_ca(doc),
                    code=_base64(doc, "code", exact=_CODE_BYTES), expires=_expires(doc, now),
                    uses=_uses(doc.get("uses")))
        signature = _base64(doc, "signature", exact=None)
        if not certs.verify_signature(token.ca_pem, token.signed_bytes(), signature):
            raise TokenError("token is damaged or was altered (its signature does not verify)")
        if token.expires <= now:
            raise TokenError(f"token expired at {format_time(token.expires)}")
        return token


def finite_number(value: object) -> float | None:
    """`value` as a float if it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _damaged(why: str) -> TokenError:
    return TokenError(f"token is damaged or was altered ({why})")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _no_constant(name: str) -> object:
    raise _damaged(f"{name} is not a number a token may hold")


def _parse_json(data: bytes) -> dict[str, Any]:
    """The token's JSON object, refusing size and nesting bombs before decoding."""
    if len(data) > MAX_TOKEN_BYTES:
        raise TokenError(f"not a link token (file is over {MAX_TOKEN_BYTES} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError("not a link token (not UTF-8 text)") from None
    # A token is flat; counting brackets outside strings bounds the depth without
    # recursing, so no document can reach the decoder's recursion limit.
    depth = peak = 0
    for match in _SCAN_RE.finditer(text):
        if match[0] in ("[", "{"):
            depth += 1
            peak = max(peak, depth)
        elif match[0] in ("]", "}"):
            depth -= 1
    if peak > MAX_JSON_DEPTH:
        raise TokenError(f"not a link token (nested deeper than {MAX_JSON_DEPTH})")
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except ValueError:
        raise TokenError("not a link token (not JSON)") from None
    if not isinstance(doc, dict):
        raise TokenError("not a link token (wrong type)")
    return doc


def _endpoints(value: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ENDPOINTS:
        raise _damaged(f"endpoints must be a list of 1 to {MAX_ENDPOINTS} \"HOST:PORT\"")
    try:
        return tuple(parse_endpoint(ep) for ep in value)
    except InvalidName as exc:
        raise _damaged(f"endpoints: {exc}") from None


def _ca(doc: dict[str, Any]) -> bytes:
    ca = doc.get("ca")
    if not (isinstance(ca, str) and ca.isascii() and "-----BEGIN CERTIFICATE-----" in ca):
        raise _damaged("ca must be a PEM certificate")
    return ca.encode()


def _base64(doc: dict[str, Any], field: str, *, exact: int | None) -> bytes:
    value = doc.get(field)
    if not (isinstance(value, str) and len(value) <= _MAX_B64_CHARS
            and _B64_RE.fullmatch(value)):
        raise _damaged(f"{field} must be base64url text")
    try:
        raw = _unb64(value)
    except ValueError:
        raise _damaged(f"{field} is not valid base64url") from None
    if exact is not None and len(raw) != exact:
        raise _damaged(f"{field} must be {exact} bytes, got {len(raw)}")
    return raw


def _expires(doc: dict[str, Any], now: float) -> float:
    value = finite_number(doc.get("expires"))
    # Past values pass here so that the user is told "expired", after the signature.
    if value is None or not 0 <= value <= now + MAX_TOKEN_LIFETIME_S:
        raise _damaged(f"expires must be a time within {MAX_TOKEN_LIFETIME_S // 86400} days "
                       f"from now, got {_short(doc.get('expires'))}")
    return value


def _uses(value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_USES:
        raise _damaged(f"uses must be an integer from 1 to {MAX_USES}, got {_short(value)}")
    return value


@dataclass(slots=True, kw_only=True)
class Grant:
    code_hash: str
    expires: float
    uses_left: int
    uses: int
    created: float


class GrantStore:
    """The issuer's side: grants persisted atomically in grants.json (0600).

    A used-up grant stays as a tombstone until it expires, so a spent token is told
    "already used" rather than "not recognised"; expiry bounds how long it stays.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.grants: list[Grant] = []
        try:
            text = path.read_text()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"{path}: cannot read the grant store: {_reason(exc)}") from None
        try:
            entries = json.loads(text)
            if not isinstance(entries, list):
                raise ValueError("not a list of grants")
            self.grants = [_grant_from(g) for g in entries]
        except (ValueError, TypeError, RecursionError) as exc:
            raise TokenError(f"{path}: unreadable grant store ({_reason(exc)}); "
                             "move it aside to start with no grants") from None

    def _save(self) -> None:
        data = json.dumps([_grant_dict(g) for g in self.grants], indent=1)
        write_atomic(self.path, data.encode(), mode=0o600)

    def new_grant(self, *, expires_in: object, uses: object, now: float) -> tuple[bytes, Grant]:
        """A checked, not yet stored grant and its code; `add` stores it."""
        if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= MAX_USES:
            raise TokenError(f"uses must be an integer from 1 to {MAX_USES}")
        seconds = finite_number(expires_in)
        if seconds is None or not 0 < seconds <= MAX_GRANT_S:
            raise TokenError(f"expiry must be more than 0 and at most {MAX_GRANT_S // 86400} days")
        code = secrets.token_bytes(_CODE_BYTES)
        grant = Grant(code_hash=hashlib.sha256(code).hexdigest(), expires=now + seconds,
                      uses_left=uses, uses=uses, created=now)
        return code, grant

    def add(self, grant: Grant, *, now: float) -> None:
        kept = [g for g in self.grants if g.expires > now]
        if len(kept) >= MAX_GRANTS:
            raise TokenError(f"too many outstanding grants ({MAX_GRANTS})")
        self.grants = [*kept, grant]
        self._save()

    def issue(self, *, expires_in: object, uses: object, now: float) -> tuple[bytes, Grant]:
        code, grant = self.new_grant(expires_in=expires_in, uses=uses, now=now)
        self.add(grant, now=now)
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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _grant_from(entry: object) -> Grant:
    """One stored grant, every field type-checked (the file may have been edited)."""
    if not isinstance(entry, dict) or set(entry) != _GRANT_FIELDS:
        raise ValueError("an entry is not a grant")
    code_hash, counts = entry["code_hash"], (entry["uses_left"], entry["uses"])
    times = (entry["expires"], entry["created"])
    if not (isinstance(code_hash, str) and re.fullmatch(r"[0-9a-f]{64}", code_hash)):
        raise ValueError("a grant has a bad code_hash")
    if any(type(n) is not int or not 0 <= n <= MAX_USES for n in counts):
        raise ValueError("a grant has bad use counts")
    expires, created = (finite_number(t) for t in times)
    if expires is None or created is None:
        raise ValueError("a grant has a bad time")
    return Grant(code_hash=code_hash, expires=expires, uses_left=counts[0], uses=counts[1],
                 created=created)


_GRANT_FIELDS = {"code_hash", "expires", "uses_left", "uses", "created"}


def _grant_dict(g: Grant) -> dict[str, Any]:
    return {"code_hash": g.code_hash, "expires": g.expires, "uses_left": g.uses_left,
            "uses": g.uses, "created": g.created}
