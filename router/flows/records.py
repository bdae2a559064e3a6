"""Finished flows and requests: a bounded ring of records.

An ended `FlowEntry` *is* its record (the table stops changing it once it ends), so
keeping one costs a deque append on the TCP path, not a copy. The per-key counters are
kept as records end (flows/counters.py), so a scrape reads totals and never walks the
ring. Pure: no trio here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from router.flows.entry import FlowEntry

FLOW_RECORDS_MAX = 10_000  # records kept per router (a [limits] field later)


class RecordRing:
    """The last `maxlen` records, oldest first; counts the ones it had to drop."""

    def __init__(self, maxlen: int = FLOW_RECORDS_MAX) -> None:
        self._ring: deque[FlowEntry] = deque(maxlen=maxlen)
        self.maxlen = maxlen
        self.dropped = 0

    def append(self, entry: FlowEntry) -> None:
        if len(self._ring) == self.maxlen:
            self.dropped += 1
        self._ring.append(entry)

    def __len__(self) -> int:
        return len(self._ring)

    def __iter__(self) -> Iterator[FlowEntry]:
        return iter(self._ring)

    def recent(self, n: int) -> list[FlowEntry]:
        """The newest `n` records, newest first."""
        out: list[FlowEntry] = []
        for entry in reversed(self._ring):
            if len(out) >= n:
                break
            out.append(entry)
        return out


def record_dict(entry: FlowEntry) -> dict[str, Any]:
    """A record as JSON for status and the observability views."""
    return {"id": entry.id, "key": entry.key, "role": entry.role, "client": entry.client,
            "sites": list(entry.trace), "start": entry.start, "end": entry.end,
            "bytes_in": entry.bytes_in, "bytes_out": entry.bytes_out,
            "outcome": entry.outcome, "server_router": entry.server_router,
            "method": entry.method, "path": entry.path, "status": entry.status,
            "grpc_status": entry.grpc_status, "by_router": entry.by_router,
            "attempts": entry.attempts, "retry_reasons": list(entry.retry_reasons),
            "ttfb_s": entry.ttfb_s, "served_by_site": entry.served_by_site}
