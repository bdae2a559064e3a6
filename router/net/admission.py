"""Who may hold a pending-handshake slot on the link port, and who waits for one.

Unauthenticated connections in TLS/HELLO/claim cost memory and a descriptor, so
their number is capped; a per-source share of the cap keeps one address (one
attacker, one broken peer in a loop) from taking every slot, and when the cap is
reached the source holding most gives way, so many addresses together cannot lock
every other site out either. A connection takes a slot only once it has sent a byte; until then
it waits in a bounded room for a short while.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Generic, TypeVar

T = TypeVar("T")


def source_key(host: str) -> str:
    """Whose share a connection from `host` counts against: the IPv4 address, or the
    IPv6 /64 (one host commonly owns a whole /64, so it could rotate addresses)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Refusal(enum.Enum):
    FULL = "every pending-handshake slot is taken by sources holding no more than this one"
    SOURCE_FULL = "this source holds its share of pending-handshake slots"


class HandshakeSlots(Generic[T]):
    """At most `total` members in handshake, at most `per_source` from one source.

    When every slot is taken, a newcomer takes the slot of the oldest member of the
    source holding the most, if that source holds at least two more than the
    newcomer's: the slots tend to an even share per source (max-min fairness). Without
    that, 16 addresses each holding their share of stalled handshakes (and retaking
    each slot as it frees) keep every other site's link down for as long as they like;
    with it, an address holding one slot loses it only once the port is shared by
    `total` sources holding one each.
    """

    def __init__(self, total: int, per_source: int) -> None:
        if not 1 <= per_source <= total:
            raise ValueError(f"per_source must be 1..{total}, got {per_source}")
        self.total = total
        self.per_source = per_source
        # Per source, its members oldest first; only sources holding a slot are kept.
        self._held: dict[str, dict[T, None]] = {}
        self.pending = 0

    def held_by(self, source: str) -> int:
        return len(self._held.get(source, ()))

    def _heaviest(self) -> str | None:
        return max(self._held, key=lambda s: len(self._held[s]), default=None)

    def refusal(self, source: str) -> Refusal | None:
        """Why `source` would be refused a slot now, or None if it would get one
        (perhaps by taking another source's; `acquire` says whose)."""
        held = self.held_by(source)
        if held >= self.per_source:
            return Refusal.SOURCE_FULL
        if self.pending < self.total:
            return None
        heaviest = self._heaviest()
        if heaviest is not None and self.held_by(heaviest) > held + 1:
            return None
        return Refusal.FULL

    def acquire(self, source: str, member: T) -> T | None:
        """Give `member` (from `source`) a slot; returns the member evicted to make room,
        whose slot is already gone. Ask `refusal` first: a refused source is an error."""
        refusal = self.refusal(source)
        if refusal is not None:
            raise ValueError(f"{source} may not have a slot: {refusal.value}")
        evicted = None
        if self.pending >= self.total:
            heaviest = self._heaviest()
            assert heaviest is not None  # refusal() found one
            evicted = next(iter(self._held[heaviest]))
            self._remove(heaviest, evicted)
        self._held.setdefault(source, {})[member] = None
        self.pending += 1
        return evicted

    def release(self, source: str, member: T) -> None:
        """Give back `member`'s slot; nothing if it was evicted (or never had one)."""
        if member in self._held.get(source, ()):
            self._remove(source, member)

    def _remove(self, source: str, member: T) -> None:
        members = self._held[source]
        del members[member]
        if not members:
            del self._held[source]  # the table holds only sources with a slot
        self.pending -= 1


class WaitingRoom(Generic[T]):
    """Connections waiting for their first byte, at most `capacity`.

    When full, the longest waiter makes room for a newcomer rather than the newcomer
    being turned away: a real peer speaks within milliseconds, so a flood of silent
    connections evicts itself and cannot lock real peers out.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._members: dict[T, None] = {}  # insertion order: oldest first

    def __len__(self) -> int:
        return len(self._members)

    def enter(self, member: T) -> T | None:
        """Admit `member`; returns the member evicted to make room, if any."""
        evicted = None
        if len(self._members) >= self.capacity:
            evicted = next(iter(self._members))
            del self._members[evicted]
        self._members[member] = None
        return evicted

    def leave(self, member: T) -> None:
        self._members.pop(member, None)


class HandshakeRate:
    """How many handshakes each source may start: a token bucket per source, `burst`
    at once and `rate` a second after that. Time is a parameter (`now`).

    The server's part of a TLS 1.3 handshake (ECDHE and a signature) costs about a
    millisecond of the router's one thread, while a client replaying a recorded
    ClientHello pays nearly nothing: without a rate, one address took more than half
    the router's CPU. At most `max_sources` buckets are kept; past that, the least
    recently seen source's goes, which only ever gives that source its burst again.
    """

    def __init__(self, rate: float, burst: int, max_sources: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be positive, burst and max_sources at least 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: dict[str, tuple[float, float]] = {}  # source: (tokens, at); LRU first

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, source: str, now: float) -> float:
        tokens, at = self._buckets.get(source, (float(self.burst), now))
        return min(float(self.burst), tokens + max(0.0, now - at) * self.rate)

    def allow(self, source: str, now: float) -> bool:
        """Whether `source` may start a handshake now; if so, it is counted."""
        tokens = self._tokens(source, now)
        self._buckets.pop(source, None)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_sources:
            # The least recently seen source: most likely refilled, and if not, it only
            # gets its burst again.
            del self._buckets[next(iter(self._buckets))]
        return allowed
