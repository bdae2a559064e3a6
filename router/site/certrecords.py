"""What an issuing site remembers of the link certificates its CA signed, and of the ones
it revoked.

    issued.json   every client certificate signed (at redemption or renewal) and not yet
                  expired: site, router id, serial, key, issued, expires, how
    revoked.json  the sites revoked: their router ids, certificate serials and keys, when
                  and why; kept for good (a revocation must survive restarts)

Both are written atomically (0600) after every change and read back with every field
checked (the files may be edited by hand); one that cannot be read stops the router at
start rather than be taken as empty, since an empty revocation list lets the revoked in.
Without a path (a router in memory, in tests) they live in memory only.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import certs
from router.names import InvalidName, validate_name, validate_router_id
from router.site.atomic import read_regular, write_atomic
from router.site.errors import SiteError

MAX_ISSUED = 10_000  # unexpired certificates on record
MAX_REVOKED = 10_000  # revoked sites
MAX_PER_REVOKED = 1_000  # router ids, serials or keys recorded for one revoked site
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_REASON_CHARS = 200
_SERIAL_RE = re.compile(r"[0-9a-f]{1,40}")
_KEY_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Issued:
    site: str
    router_id: str | None
    serial: str
    key_sha256: str
    issued: float  # epoch seconds
    expires: float
    how: str  # "token" or "renewal"


@dataclass(slots=True, kw_only=True)
class Revoked:
    site: str
    router_ids: list[str]
    serials: list[str]
    keys: list[str]
    revoked: float
    reason: str
    last_refused: float | None = field(default=None, compare=False)  # in memory only

    def stored(self) -> dict[str, Any]:
        doc = asdict(self)
        del doc["last_refused"]
        return doc


def _load(path: Path | None) -> list[Any]:
    if path is None:
        return []
    try:
        data = read_regular(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SiteError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SiteError(f"{path}: not JSON ({exc}); restore it from a backup") from None
    if not isinstance(doc, list):
        raise SiteError(f"{path}: not a list; restore it from a backup")
    return doc


def _save(path: Path | None, entries: Iterable[dict[str, Any]]) -> None:
    if path is not None:
        data = json.dumps(list(entries), indent=1).encode()
        try:
            write_atomic(path, data, mode=0o600)
        except OSError as exc:
            raise SiteError(f"cannot save {path}: {exc.strerror or exc}") from None


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        raise ValueError("a time is not seconds since 1970")
    return float(value)


def _strings(value: object, pattern: re.Pattern[str] | None, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_PER_REVOKED:
        raise ValueError(f"{what} must be a list of at most {MAX_PER_REVOKED}")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{what} must hold strings")
        if pattern is not None and not pattern.fullmatch(item):
            raise ValueError(f"{what} holds a malformed value")
        if pattern is None:
            validate_router_id(item)
    return list(value)


def _issued_from(doc: object) -> Issued:
    if not isinstance(doc, dict) or set(doc) != {f for f in Issued.__dataclass_fields__}:
        raise ValueError("an entry is not an issued certificate")
    router_id = doc["router_id"]
    if not (isinstance(doc["serial"], str) and _SERIAL_RE.fullmatch(doc["serial"])
            and isinstance(doc["key_sha256"], str) and _KEY_RE.fullmatch(doc["key_sha256"])
            and doc["how"] in ("token", "renewal")):
        raise ValueError("an entry has a bad serial, key or kind")
    return Issued(site=validate_name(doc["site"]),
                  router_id=None if router_id is None else validate_router_id(router_id),
                  serial=doc["serial"], key_sha256=doc["key_sha256"],
                  issued=_number(doc["issued"]), expires=_number(doc["expires"]), how=doc["how"])


def _revoked_from(doc: object) -> Revoked:
    fields = {"site", "router_ids", "serials", "keys", "revoked", "reason"}
    if not isinstance(doc, dict) or set(doc) != fields:
        raise ValueError("an entry is not a revocation")
    reason = doc["reason"]
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise ValueError("a reason is not a short text")
    return Revoked(site=validate_name(doc["site"]),
                   router_ids=_strings(doc["router_ids"], None, "router_ids"),
                   serials=_strings(doc["serials"], _SERIAL_RE, "serials"),
                   keys=_strings(doc["keys"], _KEY_RE, "keys"),
                   revoked=_number(doc["revoked"]), reason=reason)


class IssuedCerts:
    """The unexpired client certificates this site's CA signed."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        try:
            self.entries = [_issued_from(e) for e in _load(path)]
        except (ValueError, InvalidName) as exc:
            raise SiteError(f"{path}: unreadable ({exc}); move it aside to start with "
                            "no record (revocation then knows only live links)") from None

    def record(self, entry: Issued, now: float | None = None) -> None:
        """Keep `entry` (and drop expired ones); SiteError if it cannot be saved."""
        now = time.time() if now is None else now
        kept = [e for e in self.entries if e.expires > now]
        if len(kept) >= MAX_ISSUED:
            raise SiteError(f"{MAX_ISSUED} unexpired certificates on record: no more "
                            "until some expire")
        kept.append(entry)
        _save(self.path, (asdict(e) for e in kept))
        self.entries = kept

    def for_site(self, site: str) -> list[Issued]:
        return [e for e in self.entries if e.site == site]

    def latest(self, router_id: str) -> Issued | None:
        found = [e for e in self.entries if e.router_id == router_id]
        return max(found, key=lambda e: e.issued) if found else None


class Revocations:
    """The sites this site revoked, and the test every link, claim and renewal meets."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        try:
            self.entries = [_revoked_from(e) for e in _load(path)]
        except (ValueError, InvalidName) as exc:
            raise SiteError(f"{path}: unreadable ({exc}); it lists revoked sites, so the "
                            "router will not start without it: restore it") from None

    def add(self, entry: Revoked) -> Revoked:
        """Record `entry`, merged into an earlier revocation of the same site."""
        old = next((e for e in self.entries if e.site == entry.site), None)
        if old is None and len(self.entries) >= MAX_REVOKED:
            raise SiteError(f"{MAX_REVOKED} sites are revoked already")
        merged = entry if old is None else Revoked(
            site=entry.site, revoked=old.revoked, reason=old.reason,
            router_ids=_merge(old.router_ids, entry.router_ids),
            serials=_merge(old.serials, entry.serials), keys=_merge(old.keys, entry.keys))
        entries = [e for e in self.entries if e is not old] + [merged]
        _save(self.path, (e.stored() for e in entries))
        self.entries = entries
        return merged

    def find(self, *, site: str | None = None, router_id: str | None = None,
             serial: str | None = None, key_sha256: str | None = None) -> Revoked | None:
        """The revocation that covers any of these, or None."""
        for entry in self.entries:
            if (site == entry.site or router_id in entry.router_ids
                    or serial in entry.serials or key_sha256 in entry.keys):
                return entry
        return None


def _merge(old: list[str], new: list[str]) -> list[str]:
    merged = list(dict.fromkeys([*old, *new]))
    return merged[-MAX_PER_REVOKED:]


def revocation_text(entry: Revoked, by_site: str) -> str:
    """Why a revoked site is refused, for logs, statuses and the GOAWAY it is sent."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(entry.revoked))
    why = f": {entry.reason}" if entry.reason else ""
    return f"site {entry.site} was revoked by site {by_site} at {when}{why}"


def build_revocation(site: str, reason: str, *, own_site: str, now: float,
                     issued: IssuedCerts, live: Iterable[tuple[str, str, bytes | None]] = (),
                     known: Iterable[tuple[str, str]] = ()) -> Revoked:
    """What revoking `site` records: the router ids, serials and keys of every certificate
    this site issued to it (on record), of its live links (`live`: site, router id, the
    certificate presented) and the router ids the network knows it by (`known`: router
    id, site). SiteError for a name that is ours, malformed, or known nowhere."""
    try:
        validate_name(site, "site name")
    except InvalidName as exc:
        raise SiteError(str(exc)) from None
    if site == own_site:
        raise SiteError(f"{site} is this site's own name")
    if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise SiteError(f"the reason must be one printable line of at most "
                        f"{MAX_REASON_CHARS} characters")
    router_ids: list[str] = []
    serials: list[str] = []
    keys: list[str] = []
    for entry in issued.for_site(site):
        router_ids += [entry.router_id] if entry.router_id else []
        serials.append(entry.serial)
        keys.append(entry.key_sha256)
    for peer_site, router_id, der in live:
        if peer_site != site:
            continue
        router_ids.append(router_id)
        if der is not None:
            try:
                info = certs.leaf_info_der(der)
            except certs.CertError:
                continue
            serials.append(info.serial)
            keys.append(info.key_sha256)
    router_ids += [rid for rid, name in known if name == site]
    if not (router_ids or serials):
        raise SiteError(f"site {site} is not known here (no certificate of this site's "
                        "on record, no link, not in the network): nothing to revoke")
    return Revoked(site=site, router_ids=_merge([], router_ids), serials=_merge([], serials),
                   keys=_merge([], keys), revoked=now, reason=reason)
