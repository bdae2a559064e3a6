"""Traffic summaries: each router's small, signed account of its load, flooded beside the
router records and never part of them.

A summary says, for the last interval, per neighbour router the bytes/s each way and the
link's RTT, and per (routing key, role) the flows/s, errors/s and active flows. On the wire:

    summary  = msgpack [body, signature]            (at most MAX_SUMMARY_BYTES)
    body     = msgpack [router_id, epoch, seq, interval_s,
                        [[peer, rtt_s | nil, in_bytes_per_s, out_bytes_per_s], ...],
                        [[key, role, flows_per_s, errors_per_s, active], ...], keys_omitted]
    message  = msgpack [SUMMARY_MESSAGE_VERSION, [[age_s, summary], ...]]   (a ROUTING payload)

The signature covers ``SUMMARY_DOMAIN + body`` as received (no re-encoding, so a number
may be an int or a float on the wire) and is checked against the public key in the
origin's router record: a summary of a router we hold no record of is not taken. `(epoch,
seq)` orders one router's summaries; the epoch is the origin's record seq when it made
the summary (at least), which moves past an earlier incarnation's after a restart (see
`RoutingCore`); and a restarted router that is sent its earlier incarnation's summary
orders its own after it (see `SummaryTable`), so it wins again without remembering
anything.

Every field is checked here: a linked peer forwards summaries it did not make, and it is
not trusted to be sane (names as in router records, counts capped, numbers finite and
non-negative with an upper bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from .errors import MalformedMessage
from .records import MAX_ID_CHARS, MAX_KEY_CHARS, MAX_SEQ, check_int, check_str
from .signing import Signer

SUMMARY_DOMAIN: Final = b"vanrouter/routing/summary/v1\x00"
# Router records travel as version 1 messages; a version 1 router refuses any other
# version, so summaries go only to neighbours whose HELLO lists SUMMARY_FEATURE.
SUMMARY_MESSAGE_VERSION: Final = 2
SUMMARY_FEATURE: Final = "summary"
# How the canonical encoder starts a summary message: fixarray(2), then the version.
_MESSAGE_PREFIX: Final = bytes((0x92, SUMMARY_MESSAGE_VERSION))

MAX_SUMMARY_BYTES: Final = 4096  # one summary on the wire, signature included
MAX_SUMMARY_LINKS: Final = 64  # the busiest ones; the other end reports the rest
MAX_SUMMARY_KEYS: Final = 256
MIN_INTERVAL_S: Final = 1.0
MAX_INTERVAL_S: Final = 60.0
MAX_RATE: Final = 1e12  # per second, bytes or flows: past any link this router has
MAX_RTT_S: Final = 3600.0
MAX_ACTIVE: Final = 2**32
MAX_OMITTED: Final = 10**6
MAX_AGE_S: Final = 1e9  # an age on the wire; anything past the lifetime is dropped
MAX_SIGNATURE_BYTES: Final = 128
ROLES: Final = ("listener", "connector")
# Room for the outer array, the body's bin header and an Ed25519 signature with its header.
_WIRE_OVERHEAD_BYTES: Final = 1 + 3 + 2 + 64
_SLACK_BYTES: Final = 16  # array headers that grow as entries are added

_DECODE_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


def check_number(what: str, value: object, high: float) -> float:
    """A finite number in [0, high]; an int or a float (msgpack keeps which), never a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedMessage(f"{what} must be a number, got {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= high):
        raise MalformedMessage(f"{what} must be a finite number in [0, {high:g}], got {value!r}")
    return number


def _check_list(what: str, value: object, length: int | None = None,
                most: int | None = None) -> list[Any]:
    if type(value) is not list:
        raise MalformedMessage(f"{what} must be an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise MalformedMessage(f"{what} must have {length} elements, got {len(value)}")
    if most is not None and len(value) > most:
        raise MalformedMessage(f"{what} has {len(value)} entries, more than {most}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkLoad:
    """One neighbour, as the reporting router saw its links to it over the interval."""

    peer: str  # the neighbour's router id
    rtt_s: float | None
    in_bytes_per_s: float  # from the neighbour to the reporting router
    out_bytes_per_s: float

    def __post_init__(self) -> None:
        check_str("link peer", self.peer, MAX_ID_CHARS)
        if self.rtt_s is not None:
            check_number("link rtt", self.rtt_s, MAX_RTT_S)
        check_number("link bytes in per s", self.in_bytes_per_s, MAX_RATE)
        check_number("link bytes out per s", self.out_bytes_per_s, MAX_RATE)

    def wire(self) -> list[Any]:
        return [self.peer, self.rtt_s, self.in_bytes_per_s, self.out_bytes_per_s]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyLoad:
    """One routing key in one role ("listener": clients here; "connector": served here)."""

    key: str
    role: str
    flows_per_s: float
    errors_per_s: float
    active: int

    def __post_init__(self) -> None:
        check_str("summary key", self.key, MAX_KEY_CHARS)
        if self.role not in ROLES:
            raise MalformedMessage(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        check_number("flows per s", self.flows_per_s, MAX_RATE)
        check_number("errors per s", self.errors_per_s, MAX_RATE)
        check_int("active flows", self.active, 0, MAX_ACTIVE)

    def wire(self) -> list[Any]:
        return [self.key, ROLES.index(self.role), self.flows_per_s, self.errors_per_s,
                self.active]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficSummary:
    """One router's load over its last interval. Construction validates every field."""

    router_id: str
    epoch: int
    seq: int
    interval_s: float
    links: tuple[LinkLoad, ...]
    keys: tuple[KeyLoad, ...]
    keys_omitted: int = 0  # keys left out to keep within MAX_SUMMARY_BYTES

    def __post_init__(self) -> None:
        check_str("router_id", self.router_id, MAX_ID_CHARS)
        check_int("epoch", self.epoch, 0, MAX_SEQ)
        check_int("seq", self.seq, 0, MAX_SEQ)
        interval = check_number("interval", self.interval_s, MAX_INTERVAL_S)
        if interval < MIN_INTERVAL_S:
            raise MalformedMessage(f"interval must be at least {MIN_INTERVAL_S:g} s")
        check_int("keys omitted", self.keys_omitted, 0, MAX_OMITTED)
        if type(self.links) is not tuple or type(self.keys) is not tuple:
            raise MalformedMessage("links and keys must be tuples")
        if len(self.links) > MAX_SUMMARY_LINKS:
            raise MalformedMessage(f"{len(self.links)} links, more than {MAX_SUMMARY_LINKS}")
        if len(self.keys) > MAX_SUMMARY_KEYS:
            raise MalformedMessage(f"{len(self.keys)} keys, more than {MAX_SUMMARY_KEYS}")
        previous = ""
        for link in self.links:
            if type(link) is not LinkLoad:
                raise MalformedMessage("a link must be a LinkLoad")
            if link.peer <= previous:
                raise MalformedMessage("links must be sorted by peer, without duplicates")
            previous = link.peer
        last: tuple[str, str] = ("", "")
        for entry in self.keys:
            if type(entry) is not KeyLoad:
                raise MalformedMessage("a key must be a KeyLoad")
            if (entry.key, entry.role) <= last:
                raise MalformedMessage("keys must be sorted by (key, role), without duplicates")
            last = (entry.key, entry.role)

    @property
    def order(self) -> tuple[int, int]:
        """Newer summaries of one router compare greater."""
        return (self.epoch, self.seq)

    def body(self) -> bytes:
        packed: bytes = msgpack.packb(
            [self.router_id, self.epoch, self.seq, self.interval_s,
             [link.wire() for link in self.links], [key.wire() for key in self.keys],
             self.keys_omitted], use_bin_type=True)
        return packed

    def link_to(self, peer: str) -> LinkLoad | None:
        return next((link for link in self.links if link.peer == peer), None)


@dataclass(frozen=True, slots=True)
class SignedSummary:
    """A decoded summary with the exact bytes its signature covers."""

    summary: TrafficSummary
    body: bytes
    signature: bytes
    wire: bytes

    def signed_bytes(self) -> bytes:
        return SUMMARY_DOMAIN + self.body


def sign_summary(summary: TrafficSummary, signer: Signer) -> SignedSummary:
    body = summary.body()
    signature = signer.sign(SUMMARY_DOMAIN + body)
    wire: bytes = msgpack.packb([body, signature], use_bin_type=True)
    if len(wire) > MAX_SUMMARY_BYTES:
        raise MalformedMessage(f"summary of {len(wire)} bytes, over {MAX_SUMMARY_BYTES}")
    return SignedSummary(summary, body, signature, wire)


def decode_summary(wire: bytes) -> SignedSummary:
    """Decode and validate (not verify: see `SummaryTable.receive`) one summary."""
    if len(wire) > MAX_SUMMARY_BYTES:
        raise MalformedMessage(f"summary of {len(wire)} bytes, over {MAX_SUMMARY_BYTES}")
    try:
        outer = msgpack.unpackb(wire, raw=False, strict_map_key=True)
        body, signature = _check_list("summary", outer, 2)
        if type(body) is not bytes or type(signature) is not bytes:
            raise MalformedMessage("summary body and signature must be bytes")
        if len(signature) > MAX_SIGNATURE_BYTES:
            raise MalformedMessage(f"signature longer than {MAX_SIGNATURE_BYTES} bytes")
        fields = _check_list("summary body", msgpack.unpackb(body, raw=False,
                                                             strict_map_key=True), 7)
    except _DECODE_ERRORS as exc:
        raise MalformedMessage(f"summary does not decode: {exc}") from exc
    links = []
    for item in _check_list("links", fields[4], most=MAX_SUMMARY_LINKS):
        peer, rtt, in_rate, out_rate = _check_list("link", item, 4)
        links.append(LinkLoad(peer=peer, rtt_s=rtt,
                              in_bytes_per_s=in_rate, out_bytes_per_s=out_rate))
    keys = []
    for item in _check_list("keys", fields[5], most=MAX_SUMMARY_KEYS):
        key, role, flows, errors, active = _check_list("key", item, 5)
        check_int("role", role, 0, len(ROLES) - 1)
        keys.append(KeyLoad(key=key, role=ROLES[role], flows_per_s=flows,
                            errors_per_s=errors, active=active))
    summary = TrafficSummary(router_id=fields[0], epoch=fields[1], seq=fields[2],
                             interval_s=fields[3], links=tuple(links), keys=tuple(keys),
                             keys_omitted=fields[6])
    return SignedSummary(summary, body, signature, wire)


def fit_summary(*, router_id: str, epoch: int, seq: int, interval_s: float,
                links: Sequence[LinkLoad], keys: Sequence[KeyLoad]) -> TrafficSummary:
    """Our summary, cut to fit MAX_SUMMARY_BYTES: the busiest MAX_SUMMARY_LINKS links,
    then the busiest keys while they fit; `keys_omitted` counts the keys left out."""
    busiest = sorted(links, key=lambda x: -(x.in_bytes_per_s + x.out_bytes_per_s))
    kept_links = tuple(sorted(busiest[:MAX_SUMMARY_LINKS], key=lambda x: x.peer))
    bare = TrafficSummary(router_id=router_id, epoch=epoch, seq=seq, interval_s=interval_s,
                          links=kept_links, keys=(), keys_omitted=MAX_OMITTED)
    room = MAX_SUMMARY_BYTES - _WIRE_OVERHEAD_BYTES - _SLACK_BYTES - len(bare.body())
    kept_keys: list[KeyLoad] = []
    for entry in sorted(keys, key=lambda x: (-x.flows_per_s, -x.active, x.key, x.role)):
        size = len(msgpack.packb(entry.wire(), use_bin_type=True))
        if size > room or len(kept_keys) == MAX_SUMMARY_KEYS:
            continue
        room -= size
        kept_keys.append(entry)
    return TrafficSummary(router_id=router_id, epoch=epoch, seq=seq, interval_s=interval_s,
                          links=kept_links,
                          keys=tuple(sorted(kept_keys, key=lambda x: (x.key, x.role))),
                          keys_omitted=min(MAX_OMITTED, len(keys) - len(kept_keys)))


def is_summary_message(payload: bytes) -> bool:
    """Whether a ROUTING payload is a summary message (else: router records)."""
    return payload[:2] == _MESSAGE_PREFIX


def encode_summary_message(items: Sequence[tuple[float, bytes]]) -> bytes:
    packed: bytes = msgpack.packb(
        [SUMMARY_MESSAGE_VERSION, [[age, wire] for age, wire in items]], use_bin_type=True)
    return packed


def decode_summary_message(payload: bytes, most: int) -> list[tuple[float, bytes]]:
    """(age_s, summary bytes) pairs, at most `most` of them; summaries stay encoded."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except _DECODE_ERRORS as exc:
        raise MalformedMessage(f"summary message does not decode: {exc}") from exc
    top = _check_list("summary message", obj, 2)
    if type(top[0]) is not int or top[0] != SUMMARY_MESSAGE_VERSION:
        raise MalformedMessage(f"not a summary message (version {top[0]!r})")
    items: list[tuple[float, bytes]] = []
    for item in _check_list("summaries", top[1], most=most):
        age, wire = _check_list("summary item", item, 2)
        age = check_number("summary age", age, MAX_AGE_S)
        if type(wire) is not bytes:
            raise MalformedMessage("a summary must be bytes")
        items.append((age, wire))
    return items
