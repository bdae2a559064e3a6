"""The `$records` exchange on the wire: a query for another router's flow records and
its answer, both msgpack, both checked as strictly as the link's own messages.

`sitectl flows --network` opens a flow with the reserved routing key `$records` to each
router (no user key starts with `$`); the request body is a `Query`, the answer a map
{"site", "records", "truncated"}. Both ends cap what they take: the query at
QUERY_MAX_BYTES, the answer at ANSWER_MAX_RECORDS records and ANSWER_MAX_BYTES. Pure:
no trio here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from router.protocol.messages import MAX_NAME_CHARS, MAX_REASON_CHARS, MAX_TRACE_HOPS
from router.site.config import KEY_RE

RECORDS_KEY = "$records"  # the reserved routing key of the exchange
QUERY_MAX_BYTES = 4096
ANSWER_MAX_RECORDS = 1000
ANSWER_MAX_BYTES = 1024 * 1024
ANSWER_WINDOW = ANSWER_MAX_BYTES + 64 * 1024  # what an asker takes: records and framing
_MSGPACK_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)
_MAX_COUNT = 2**63 - 1


class BadRecords(ValueError):
    """A query or an answer that is not what the exchange allows; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    """Which records: only `key`'s if given, only active flows if `active`, `limit` at
    most (newest first; never more than ANSWER_MAX_RECORDS)."""

    key: str | None = None
    active: bool = False
    limit: int = ANSWER_MAX_RECORDS

    def __post_init__(self) -> None:
        if self.key is not None and not (isinstance(self.key, str) and KEY_RE.fullmatch(self.key)):
            raise BadRecords("key must be a routing key")
        if not isinstance(self.active, bool):
            raise BadRecords("active must be true or false")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) \
                or not 1 <= self.limit <= ANSWER_MAX_RECORDS:
            raise BadRecords(f"limit must be an integer from 1 to {ANSWER_MAX_RECORDS}")

    def to_wire(self) -> bytes:
        body: bytes = msgpack.packb({"key": self.key, "active": self.active,
                                     "limit": self.limit}, use_bin_type=True)
        return body

    @classmethod
    def from_wire(cls, data: bytes) -> Query:
        """BadRecords for anything but a map of the known fields (others are ignored,
        so a newer router may add some)."""
        if len(data) > QUERY_MAX_BYTES:
            raise BadRecords(f"query is {len(data)} bytes, more than {QUERY_MAX_BYTES}")
        body = _unpack(data, "query")
        try:
            return cls(**{k: body[k] for k in ("key", "active", "limit") if k in body})
        except TypeError as exc:  # unhashable and similar surprises
            raise BadRecords(f"bad query: {exc}") from None


def encode_answer(site: str, records: Iterable[dict[str, Any]], limit: int) -> bytes:
    """The answer: `records` (newest first) up to `limit` of them and ANSWER_MAX_BYTES;
    "truncated" says whether some were left out for size."""
    packer = msgpack.Packer(use_bin_type=True)
    packed: list[bytes] = []
    size = 0
    truncated = False
    for rec in records:
        if len(packed) >= limit:
            break
        one: bytes = packer.pack(rec)
        if size + len(one) > ANSWER_MAX_BYTES:
            truncated = True
            break
        packed.append(one)
        size += len(one)
    head: bytes = (packer.pack_map_header(3) + packer.pack("site") + packer.pack(site)
                   + packer.pack("truncated") + packer.pack(truncated)
                   + packer.pack("records") + packer.pack_array_header(len(packed)))
    return head + b"".join(packed)


@dataclass(frozen=True, slots=True)
class Answer:
    site: str
    records: list[dict[str, Any]]
    truncated: bool


def decode_answer(data: bytes) -> Answer:
    """An answer, every record checked (`check_record`); BadRecords if any is wrong."""
    if len(data) > ANSWER_WINDOW:
        raise BadRecords(f"answer is {len(data)} bytes, more than {ANSWER_WINDOW}")
    body = _unpack(data, "answer")
    site, records, truncated = body.get("site"), body.get("records"), body.get("truncated")
    _text("site", site, MAX_NAME_CHARS)
    if not isinstance(records, list) or len(records) > ANSWER_MAX_RECORDS:
        raise BadRecords(f"records must be a list of at most {ANSWER_MAX_RECORDS}")
    if not isinstance(truncated, bool):
        raise BadRecords("truncated must be true or false")
    checked = []
    for i, rec in enumerate(records):
        try:
            checked.append(check_record(rec))
        except BadRecords as exc:
            raise BadRecords(f"records[{i}]: {exc}") from None
    assert isinstance(site, str)
    return Answer(site, checked, truncated)


_PROTOCOLS = ("tcp", "http1", "http2", "grpc")
_OUTCOMES = ("ok", "refused", "reset", "error")
_PATH_CHARS = 256  # FlowTable's PATH_MAX


def check_record(rec: object) -> dict[str, Any]:
    """A record from another router with exactly the fields `record_dict` makes, each of
    its type and within its bounds; BadRecords naming the first that is not."""
    if not isinstance(rec, dict):
        raise BadRecords("not a map")
    out: dict[str, Any] = {}

    def take(name: str) -> Any:
        if name not in rec:
            raise BadRecords(f"lacks {name}")
        out[name] = rec[name]
        return rec[name]

    _count("id", take("id"))
    _choice("protocol", take("protocol"), _PROTOCOLS)
    _text("routing_key", take("routing_key"), MAX_NAME_CHARS)
    _choice("role", take("role"), ("listener", "connector"))
    _text("listener_site", take("listener_site"), MAX_NAME_CHARS)
    _text("connector_site", take("connector_site"), MAX_NAME_CHARS, optional=True)
    sites = take("sites")
    if not isinstance(sites, list) or len(sites) > MAX_TRACE_HOPS + 1:
        raise BadRecords(f"sites must be a list of at most {MAX_TRACE_HOPS + 1}")
    for site in sites:
        _text("sites entry", site, MAX_NAME_CHARS)
    _text("client", take("client"), MAX_NAME_CHARS)
    _text("server", take("server"), MAX_NAME_CHARS, optional=True)
    _seconds("start", take("start"))
    _seconds("end", take("end"), optional=True)
    _count("bytes_c2s", take("bytes_c2s"))
    _count("bytes_s2c", take("bytes_s2c"))
    _seconds("ttfb_s", take("ttfb_s"), optional=True)
    if take("outcome") is not None:
        _choice("outcome", out["outcome"], _OUTCOMES)
    _text("reason", take("reason"), MAX_REASON_CHARS, optional=True)
    if out["protocol"] != "tcp":
        _text("method", take("method"), MAX_NAME_CHARS, optional=True)
        _text("url_path", take("url_path"), _PATH_CHARS, optional=True)
        if (status := take("status")) is not None:
            _count("status", status, 999)
        _count("attempts", take("attempts"), 1000)
    return out


def _unpack(data: bytes, what: str) -> dict[Any, Any]:
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except _MSGPACK_ERRORS as exc:
        raise BadRecords(f"{what} is not valid msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise BadRecords(f"{what} must be a map, got {type(body).__name__}")
    return body


def _text(name: str, value: object, cap: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > cap:
        raise BadRecords(f"{name} must be a string of at most {cap} characters")


def _count(name: str, value: object, hi: int = _MAX_COUNT) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise BadRecords(f"{name} must be an integer from 0 to {hi}")


def _seconds(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise BadRecords(f"{name} must be a finite number of seconds")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BadRecords(f"{name} must be one of {', '.join(allowed)}")
