"""Router records, the unit of link-state flooding, and the msgpack wire encoding.

A record on the wire is a msgpack array
``[router_id, site, seq, [[neighbour, cost], ...], [[key, priority, weight], ...],
[listened key, ...], public_key, signature]`` with links and keys sorted and unique, so the
encoding is canonical: the signature covers ``RECORD_DOMAIN + msgpack([... all but signature])``.

A routing message is ``[MESSAGE_VERSION, [[age_seconds, record_bytes], ...]]``. The age is how
long ago the origin produced the record (as OSPF's LS age); it is not signed, because it only
changes when a record is aged out, which a neighbour could force anyway by not forwarding it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from .errors import MalformedMessage

RECORD_DOMAIN: Final = b"vanrouter/routing/record/v1\x00"
MESSAGE_VERSION: Final = 1

MAX_ID_CHARS: Final = 64
MAX_SITE_CHARS: Final = 255
MAX_KEY_CHARS: Final = 1024
MAX_COST: Final = 2**24 - 1
MAX_SEQ: Final = 2**63 - 1
MAX_PRIORITY: Final = 2**31 - 1
MAX_WEIGHT: Final = 2**31 - 1
MAX_PUBLIC_KEY_BYTES: Final = 1024
MAX_SIGNATURE_BYTES: Final = 1024
# Bytes a message adds around its records: header, plus per record the age and bin header.
MESSAGE_HEADER_BYTES: Final = 16
MESSAGE_ITEM_OVERHEAD_BYTES: Final = 16

_DECODE_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


def check_int(what: str, value: object, low: int, high: int) -> int:
    # bool is an int subclass, and msgpack decodes true/false to bool: refuse it explicitly.
    if type(value) is not int:
        raise MalformedMessage(f"{what} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise MalformedMessage(f"{what} must be in [{low}, {high}], got {value}")
    return value


def check_str(what: str, value: object, max_chars: int) -> str:
    """Every string in a record is a name: sites, router ids and keys from any router in the
    network reach `sitectl status --network` and logs, so none may hold a control, format or
    space character (an escape sequence, a newline, a bidi override)."""
    if type(value) is not str:
        raise MalformedMessage(f"{what} must be a string, got {type(value).__name__}")
    if not 0 < len(value) <= max_chars:
        raise MalformedMessage(f"{what} must have 1 to {max_chars} characters")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise MalformedMessage(
            f"{what} {value[:40]!a} has a control, format or space character"
        )
    return value


def _check_bytes(what: str, value: object, max_bytes: int) -> bytes:
    if type(value) is not bytes:
        raise MalformedMessage(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) > max_bytes:
        raise MalformedMessage(f"{what} longer than {max_bytes} bytes")
    return value


def _check_list(what: str, value: object, length: int | None = None) -> list[Any]:
    if type(value) is not list:
        raise MalformedMessage(f"{what} must be an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise MalformedMessage(f"{what} must have {length} elements, got {len(value)}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyAdvert:
    """How a router offers a routing key: see `choice.choose` for how these are used."""

    priority: int = 0
    weight: int = 1

    def __post_init__(self) -> None:
        check_int("priority", self.priority, 0, MAX_PRIORITY)
        check_int("weight", self.weight, 0, MAX_WEIGHT)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterRecord:
    """One router's signed view of itself. Construction validates every field."""

    router_id: str
    site: str
    seq: int
    links: tuple[tuple[str, int], ...]
    keys: tuple[tuple[str, int, int], ...]
    public_key: bytes
    signature: bytes
    # Keys this router has listeners for: shown in network status, not used for routing.
    listens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_str("router_id", self.router_id, MAX_ID_CHARS)
        check_str("site", self.site, MAX_SITE_CHARS)
        check_int("seq", self.seq, 0, MAX_SEQ)
        _check_bytes("public_key", self.public_key, MAX_PUBLIC_KEY_BYTES)
        _check_bytes("signature", self.signature, MAX_SIGNATURE_BYTES)
        if type(self.links) is not tuple or type(self.keys) is not tuple:
            raise MalformedMessage("links and keys must be tuples")
        previous = ""
        for link in self.links:
            if type(link) is not tuple or len(link) != 2:
                raise MalformedMessage("a link must be (neighbour, cost)")
            neighbour = check_str("link neighbour", link[0], MAX_ID_CHARS)
            check_int("link cost", link[1], 1, MAX_COST)
            if neighbour <= previous:
                raise MalformedMessage("links must be sorted by neighbour, without duplicates")
            if neighbour == self.router_id:
                raise MalformedMessage("a router cannot link to itself")
            previous = neighbour
        previous = ""
        for entry in self.keys:
            if type(entry) is not tuple or len(entry) != 3:
                raise MalformedMessage("a key must be (key, priority, weight)")
            key = check_str("routing key", entry[0], MAX_KEY_CHARS)
            check_int("priority", entry[1], 0, MAX_PRIORITY)
            check_int("weight", entry[2], 0, MAX_WEIGHT)
            if key <= previous:
                raise MalformedMessage("keys must be sorted, without duplicates")
            previous = key
        if type(self.listens) is not tuple:
            raise MalformedMessage("listens must be a tuple")
        previous = ""
        for key in self.listens:
            check_str("listened key", key, MAX_KEY_CHARS)
            if key <= previous:
                raise MalformedMessage("listened keys must be sorted, without duplicates")
            previous = key

    def _fields(self) -> list[Any]:
        return [
            self.router_id,
            self.site,
            self.seq,
            [list(link) for link in self.links],
            [list(entry) for entry in self.keys],
            list(self.listens),
            self.public_key,
        ]

    def signed_bytes(self) -> bytes:
        """The canonical encoding of everything but the signature: what is signed."""
        packed: bytes = msgpack.packb(self._fields(), use_bin_type=True)
        return RECORD_DOMAIN + packed

    def to_wire(self) -> bytes:
        packed: bytes = msgpack.packb([*self._fields(), self.signature], use_bin_type=True)
        return packed

    @classmethod
    def from_wire(cls, data: bytes) -> RouterRecord:
        """Decode and validate (not verify: see `RoutingCore.receive`) one record."""
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except _DECODE_ERRORS as exc:
            raise MalformedMessage(f"record does not decode: {exc}") from exc
        fields = _check_list("record", obj, 8)
        links = tuple(
            tuple(_check_list("link", link, 2)) for link in _check_list("links", fields[3])
        )
        keys = tuple(
            tuple(_check_list("key", entry, 3)) for entry in _check_list("keys", fields[4])
        )
        return cls(
            router_id=fields[0],
            site=fields[1],
            seq=fields[2],
            links=links,  # element shapes are checked in __post_init__
            keys=keys,
            listens=tuple(_check_list("listens", fields[5])),
            public_key=fields[6],
            signature=fields[7],
        )


Encode = Callable[[Sequence[tuple[float, bytes]]], bytes]


def batched(items: Iterable[tuple[float, bytes]], max_message_bytes: int,
            encode: Encode) -> list[bytes]:
    """(age, wire) items as messages of at most `max_message_bytes` each (one item
    alone may be more: records and summaries are capped below the limit anyway)."""
    out: list[bytes] = []
    limit = max_message_bytes - MESSAGE_HEADER_BYTES
    batch: list[tuple[float, bytes]] = []
    size = 0
    for age, wire in items:
        item_size = len(wire) + MESSAGE_ITEM_OVERHEAD_BYTES
        if batch and size + item_size > limit:
            out.append(encode(batch))
            batch, size = [], 0
        batch.append((age, wire))
        size += item_size
    if batch:
        out.append(encode(batch))
    return out


def encode_message(items: Sequence[tuple[float, bytes]]) -> bytes:
    """Encode (age_seconds, record_bytes) pairs into one routing message."""
    packed: bytes = msgpack.packb(
        [MESSAGE_VERSION, [[age, wire] for age, wire in items]], use_bin_type=True
    )
    return packed


def decode_message(payload: bytes) -> list[tuple[float, bytes]]:
    """Decode a routing message into (age_seconds, record_bytes) pairs; records stay encoded."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except _DECODE_ERRORS as exc:
        raise MalformedMessage(f"message does not decode: {exc}") from exc
    top = _check_list("message", obj, 2)
    if type(top[0]) is not int or top[0] != MESSAGE_VERSION:
        raise MalformedMessage(f"unsupported message version {top[0]!r}")
    items: list[tuple[float, bytes]] = []
    for item in _check_list("records", top[1]):
        age, wire = _check_list("message item", item, 2)
        if type(age) not in (int, float) or not math.isfinite(age) or age < 0:
            raise MalformedMessage(f"record age must be a finite number >= 0, got {age!r}")
        if type(wire) is not bytes:
            raise MalformedMessage("record must be bytes")
        items.append((float(age), wire))
    return items
