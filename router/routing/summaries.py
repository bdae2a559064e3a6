"""The summary table: the latest traffic summary of every reachable router, flooded.

Sans-IO like `RoutingCore`, which it reads (who exists, their public keys, who is
reachable) and never changes: a summary is not part of the topology, so load changing
every few seconds costs no route computation and no new router record. The owner
feeds it neighbours and payloads, calls `originate` when `due`, `handle_timer` at
`next_deadline`, and drains `outgoing()`; time is a parameter.

Flooding rules, as for records but simpler (a summary is replaced within seconds anyway):

- a summary newer (`TrafficSummary.order`) than the held one of its router is verified
  against the public key in that router's record, stored and sent to every neighbour but
  the sender; an equal or older one is dropped unverified; one of a router we hold no
  record of is dropped (its record comes first on a new link, and floods ahead of it);
- a newer one arriving sooner than half its router's interval after the last one taken is
  dropped unverified, so no router can make the network carry its summaries faster;
- each neighbour has a budget of signature checks (`max_new_per_s`, as for records);
- a summary expires LIFETIME_INTERVALS of its router's intervals after it was made (the
  age travels with it), and goes at once when its router is no longer reachable.

A message is checked whole before any of it is applied: on RoutingError nothing changed
but the sender's budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .core import MAX_MESSAGE_BYTES, RoutingCore
from .errors import ForgedRecord, LimitExceeded, RoutingError
from .records import batched
from .signing import Signer, VerifyFn
from .summary import (
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    KeyLoad,
    LinkLoad,
    SignedSummary,
    TrafficSummary,
    decode_summary,
    decode_summary_message,
    encode_summary_message,
    fit_summary,
    sign_summary,
)

LIFETIME_INTERVALS = 3
PRUNE_INTERVAL_S = 1.0
# What a held summary is taken to cost in memory: its wire bytes, plus per link and key
# entry the decoded objects (a slotted dataclass, its strings and floats: ~200 bytes),
# plus the entry around them.
SUMMARY_BASE_BYTES = 1024
SUMMARY_ITEM_BYTES = 256


def summary_cost(signed: SignedSummary) -> int:
    items = len(signed.summary.links) + len(signed.summary.keys)
    return SUMMARY_BASE_BYTES + len(signed.wire) + SUMMARY_ITEM_BYTES * items


@dataclass(slots=True, kw_only=True)
class HeldSummary:
    signed: SignedSummary
    origin_time: float  # our clock's time when it had age 0
    expires_at: float
    accepted_at: float

    @property
    def summary(self) -> TrafficSummary:
        return self.signed.summary

    def age(self, now: float) -> float:
        return max(0.0, now - self.origin_time)


@dataclass(slots=True)
class _Budget:
    tokens: float
    at: float


class SummaryTable:
    def __init__(self, *, core: RoutingCore, signer: Signer, verify: VerifyFn, now: float,
                 interval_s: float = 5.0, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 max_bytes: int = 32 * 1024 * 1024, max_new_per_s: float = 1000.0,
                 max_summaries: int = 5000) -> None:
        if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
            raise ValueError(f"interval_s must be in [{MIN_INTERVAL_S:g}, {MAX_INTERVAL_S:g}]")
        if max_message_bytes < 8192 or max_bytes < max_message_bytes:
            raise ValueError("need 8192 <= max_message_bytes <= max_bytes")
        if not max_new_per_s > 0 or max_summaries < 1:
            raise ValueError("max_new_per_s and max_summaries must be positive")
        own = core.record(core.router_id)
        if own is None or own.public_key != signer.public_key:
            raise ValueError("the signer must be the routing core's")
        self._core = core
        self._signer = signer
        self._verify = verify
        self._interval = interval_s
        self._max_message_bytes = max_message_bytes
        self._max_bytes = max_bytes
        self._max_new_per_s = max_new_per_s
        self._max_summaries = max_summaries
        self._max_burst = max_summaries + max_new_per_s
        self._held: dict[str, HeldSummary] = {}  # origin -> its latest, ours included
        self._bytes = 0  # sum of summary_cost over _held
        self._neighbours: set[str] = set()  # only those that take summaries
        self._queues: dict[str, dict[str, HeldSummary]] = {}
        self._budgets: dict[str, _Budget] = {}
        self._order = (0, 0)  # of our latest summary, or an earlier incarnation's if later
        self._last_originated = now  # the first one covers a whole interval
        self._next_prune = now + PRUNE_INTERVAL_S
        self._now = now
        self.accepted = 0  # summaries taken from neighbours
        self.refused = 0  # messages refused whole
        self.unknown = 0  # summaries of routers we hold no record of (dropped)
        self.sent = 0  # messages

    # ---- queries
    @property
    def interval_s(self) -> float:
        return self._interval

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def get(self, router_id: str) -> HeldSummary | None:
        return self._held.get(router_id)

    def held(self) -> list[HeldSummary]:
        """Every summary held (expired and unreachable ones go at the next timer)."""
        return list(self._held.values())

    def neighbours(self) -> set[str]:
        return set(self._neighbours)

    # ---- neighbours
    def neighbour_up(self, peer_id: str, now: float) -> None:
        """`peer_id` takes summaries: send it every one we hold."""
        now = self._advance(now)
        self._neighbours.add(peer_id)
        queue = self._queues.setdefault(peer_id, {})
        for rid, held in self._held.items():
            if held.expires_at > now:
                queue[rid] = held
        if peer_id not in self._budgets and len(self._budgets) > 2 * len(self._neighbours) + 64:
            self._budgets = {p: b for p, b in self._budgets.items() if p in self._neighbours}
        self._budgets.setdefault(peer_id, _Budget(self._max_burst, now))

    def neighbour_down(self, peer_id: str) -> None:
        self._neighbours.discard(peer_id)
        self._queues.pop(peer_id, None)

    # ---- our own summary
    def due(self, now: float) -> bool:
        return now >= self._last_originated + self._interval

    def originate(self, links: Sequence[LinkLoad], keys: Sequence[KeyLoad],
                  now: float) -> TrafficSummary:
        """Sign and flood our summary of the interval that just ended."""
        now = self._advance(now)
        epoch = max(self._core.seq, self._order[0])
        seq = self._order[1] + 1 if epoch == self._order[0] else 1
        self._order = (epoch, seq)
        summary = fit_summary(router_id=self._core.router_id, epoch=epoch, seq=seq,
                              interval_s=self._interval, links=links, keys=keys)
        held = HeldSummary(signed=sign_summary(summary, self._signer), origin_time=now,
                           expires_at=float("inf"), accepted_at=now)
        self._store(held)
        for peer in self._neighbours:
            self._queues.setdefault(peer, {})[summary.router_id] = held
        self._last_originated = now
        return summary

    # ---- messages and time
    def receive(self, from_peer: str, payload: bytes, now: float) -> None:
        now = self._advance(now)
        try:
            self._receive(from_peer, payload, now)
        except RoutingError:
            self.refused += 1
            raise

    def _receive(self, from_peer: str, payload: bytes, now: float) -> None:
        if from_peer not in self._neighbours:
            raise RoutingError(f"summary from {from_peer!r}, which is not a neighbour taking "
                               "summaries")
        if len(payload) > self._max_message_bytes:
            raise LimitExceeded(f"summary message of {len(payload)} bytes exceeds "
                                f"max_message_bytes ({self._max_message_bytes})")
        items = decode_summary_message(payload, most=self._max_summaries)
        budget = self._budgets[from_peer]
        budget.tokens = min(self._max_burst,
                            budget.tokens + (now - budget.at) * self._max_new_per_s)
        budget.at = now
        pending: dict[str, tuple[float, SignedSummary]] = {}
        unknown = 0
        own_past = self._order
        for age, wire in items:
            signed = decode_summary(wire)
            summary = signed.summary
            rid = summary.router_id
            if rid == self._core.router_id:
                # An earlier incarnation's (a neighbour holds it): ours must order after it.
                own_past = max(own_past, summary.order)
                continue
            record = self._core.record(rid)
            if record is None:
                unknown += 1
                continue
            held = self._held.get(rid)
            newest = pending[rid][1].summary if rid in pending else (
                None if held is None else held.summary)
            if newest is not None and summary.order <= newest.order:
                continue
            if age >= LIFETIME_INTERVALS * summary.interval_s:
                continue
            if held is not None and now - held.accepted_at < held.summary.interval_s / 2:
                continue
            if budget.tokens < 1:
                raise LimitExceeded(f"more new summaries than max_new_per_s "
                                    f"({self._max_new_per_s:g}) allows")
            budget.tokens -= 1
            if not self._verify(record.public_key, signed.signed_bytes(), signed.signature):
                raise ForgedRecord(f"bad signature on the summary of {rid}")
            pending[rid] = (age, signed)
        grown = self._bytes + sum(
            summary_cost(signed) - (summary_cost(self._held[rid].signed)
                                    if rid in self._held else 0)
            for rid, (_, signed) in pending.items())
        if grown > self._max_bytes:
            raise LimitExceeded(f"summaries would hold {grown} bytes, over max_bytes "
                                f"({self._max_bytes})")
        self.unknown += unknown
        self.accepted += len(pending)
        self._order = own_past
        for rid, (age, signed) in pending.items():
            origin_time = now - age
            held = HeldSummary(signed=signed, origin_time=origin_time, accepted_at=now,
                               expires_at=origin_time
                               + LIFETIME_INTERVALS * signed.summary.interval_s)
            self._store(held)
            for peer in self._neighbours:
                if peer != from_peer:
                    self._queues.setdefault(peer, {})[rid] = held

    def outgoing(self) -> list[tuple[str, bytes]]:
        """Drain queued summaries as (neighbour, payload), batched up to max_message_bytes."""
        out: list[tuple[str, bytes]] = []
        for peer, queue in self._queues.items():
            items = ((round(held.age(self._now), 3), held.signed.wire)
                     for held in queue.values() if held.expires_at > self._now)
            out += ((peer, m) for m in batched(items, self._max_message_bytes,
                                                 encode_summary_message))
        self._queues.clear()
        self.sent += len(out)
        return out

    def next_deadline(self) -> float:
        return min(self._last_originated + self._interval, self._next_prune)

    def handle_timer(self, now: float) -> None:
        """Drop summaries that expired or whose router is gone or unreachable."""
        now = self._advance(now)
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_INTERVAL_S
        reachable = self._core.reachable()
        for rid in [rid for rid, held in self._held.items()
                    if held.expires_at <= now or rid not in reachable]:
            self._remove(rid)

    # ---- internals
    def _advance(self, now: float) -> float:
        self._now = max(self._now, now)
        return self._now

    def _store(self, held: HeldSummary) -> None:
        rid = held.summary.router_id
        self._remove(rid)
        self._held[rid] = held
        self._bytes += summary_cost(held.signed)

    def _remove(self, rid: str) -> None:
        old = self._held.pop(rid, None)
        if old is not None:
            self._bytes -= summary_cost(old.signed)
