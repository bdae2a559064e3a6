"""Finished flows and requests: a bounded ring of records.

An ended `FlowEntry` *is* its record (the table stops changing it once it ends), so
keeping one costs a deque append on the TCP path, not a copy. The per-key counters are
kept as records end (flows/counters.py), so a scrape reads totals and never walks the
ring. Pure: no trio here.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from router.flows.entry import FlowEntry

FLOW_RECORDS_MAX = 10_000  # records kept per router ([limits] flow_records_max)
FLOW_RECORDS_TTL_S = 900.0  # ... for at most this long ([limits] flow_records_ttl_s)


class RecordRing:
    """The ended flows of the last `ttl_s` seconds, at most `maxlen` of them, oldest
    first. Past `maxlen` the oldest goes and is counted in `dropped` (unless its time
    was up anyway). Expired records go when the ring is next read, so appending stays a
    deque append; `clock` (Unix seconds, as `FlowEntry.end`) is a parameter for tests."""

    def __init__(self, maxlen: int = FLOW_RECORDS_MAX, ttl_s: float = FLOW_RECORDS_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._ring: deque[FlowEntry] = deque(maxlen=maxlen)
        self.maxlen = maxlen
        self.ttl_s = ttl_s
        self._clock = clock
        self.dropped = 0

    def append(self, entry: FlowEntry) -> None:
        """`entry` ended (its `end` is set)."""
        ring = self._ring
        if len(ring) == self.maxlen:
            if not self.maxlen:
                return
            oldest_end = ring[0].end
            if oldest_end is not None and entry.end is not None \
                    and oldest_end > entry.end - self.ttl_s:
                self.dropped += 1
        ring.append(entry)

    def expire(self, now: float | None = None) -> None:
        """Forget the records that ended more than `ttl_s` ago."""
        cutoff = (self._clock() if now is None else now) - self.ttl_s
        ring = self._ring
        while ring and (ring[0].end or 0.0) <= cutoff:
            ring.popleft()

    def __len__(self) -> int:
        self.expire()
        return len(self._ring)

    def __iter__(self) -> Iterator[FlowEntry]:
        self.expire()
        return iter(self._ring)

    def recent(self, n: int) -> list[FlowEntry]:
        """The newest `n` records, newest first."""
        self.expire()
        return list(itertools.islice(reversed(self._ring), n))


def record_dict(entry: FlowEntry, names: Mapping[str, str]) -> dict[str, Any]:
    """A record as the JSON of `sitectl flows` (fields listed in README, "Flow
    records"); `names` maps router ids to site names (an unknown id stays an id).
    The listener's end holds the whole record; a connector's is its own half."""
    listener = entry.role == "listener"
    rec: dict[str, Any] = {
        "id": entry.id, "protocol": entry.protocol, "routing_key": entry.key,
        "role": entry.role, "listener_site": entry.listener_site,
        "connector_site": entry.connector_site,
        "sites": [names.get(hop, hop) for hop in entry.trace],
        "client": entry.client, "server": entry.server,
        "start": entry.start, "end": entry.end,
        "bytes_c2s": entry.bytes_out if listener else entry.bytes_in,
        "bytes_s2c": entry.bytes_in if listener else entry.bytes_out,
        "ttfb_s": entry.ttfb_s, "outcome": entry.outcome, "reason": entry.reason,
    }
    if entry.protocol != "tcp":
        rec.update(method=entry.method, url_path=entry.path, status=entry.status,
                   attempts=entry.attempts)
    return rec
