"""Who may hold a pending-handshake slot on the link port, and who waits for one.

Unauthenticated connections in TLS/HELLO/claim cost memory and a descriptor, so
their number is capped; a per-source share of the cap keeps one address (one
attacker, one broken peer in a loop) from taking every slot and locking every
other site out. A connection takes a slot only once it has sent a byte; until then
it waits in a bounded room for a short while.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
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
    FULL = "every pending-handshake slot is taken"
    SOURCE_FULL = "this source holds its share of pending-handshake slots"


class HandshakeSlots:
    def __init__(self, total: int, per_source: int) -> None:
        if not 1 <= per_source <= total:
            raise ValueError(f"per_source must be 1..{total}, got {per_source}")
        self.total = total
        self.per_source = per_source
        self._held: Counter[str] = Counter()
        self.pending = 0

    def held_by(self, source: str) -> int:
        return self._held[source]

    def refusal(self, source: str) -> Refusal | None:
        """Why `source` would be refused a slot now, or None if it would get one."""
        if self.pending >= self.total:
            return Refusal.FULL
        if self._held[source] >= self.per_source:
            return Refusal.SOURCE_FULL
        return None

    def try_acquire(self, source: str) -> bool:
        if self.refusal(source) is not None:
            return False
        self._held[source] += 1
        self.pending += 1
        return True

    def release(self, source: str) -> None:
        if self._held[source] <= 0:
            raise ValueError(f"{source} holds no slot")
        self._held[source] -= 1
        if not self._held[source]:
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
