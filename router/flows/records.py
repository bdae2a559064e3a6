"""Finished flows and requests: a bounded ring of records and per-key counters.

An ended `FlowEntry` *is* its record (the table stops changing it once it ends), so
keeping one costs a deque append on the TCP path, not a copy. Counters are kept as
records end, so a scrape reads totals and never walks the ring. Pure: no trio here.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from router.flows.entry import FlowEntry

FLOW_RECORDS_MAX = 10_000  # records kept per router (a [limits] field later)
# Prometheus' default buckets, seconds: 5 ms to 10 s (+Inf is implied).
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
                                      0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Methods a client sends are arbitrary tokens: anything else is "OTHER", so a client
# cannot grow the metric's label set without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                           "TRACE", "PATCH"})
# grpc-status codes that mean the server side failed (the 5xx of gRPC): UNKNOWN,
# DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS.
GRPC_SERVER_ERRORS = frozenset({2, 4, 13, 14, 15})
NO_SITE = "none"  # the site label of a request no site answered


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


def status_class(entry: FlowEntry) -> str:
    """"2xx" for HTTP, "grpc_<code>" once a gRPC request has its grpc-status,
    "none" for a request that got no response at all."""
    if entry.grpc_status is not None:
        return f"grpc_{entry.grpc_status}"
    if entry.status is None:
        return "none"
    return f"{entry.status // 100}xx"


def is_error(entry: FlowEntry) -> bool:
    """Counted in the error share: a server error, one we generated, or no response."""
    if entry.by_router or entry.status is None:
        return True
    if entry.grpc_status is not None:
        return entry.grpc_status in GRPC_SERVER_ERRORS
    return entry.status >= 500


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


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (not cumulative; `cumulative` gives Prometheus' view)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass(slots=True)
class KeyStats:
    """HTTP requests of one routing key."""

    requests: int = 0
    errors: int = 0
    by_class: Counter[str] = field(default_factory=Counter)
    by_site: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "error_share": round(self.errors / self.requests, 4) if self.requests else 0.0,
                "by_status_class": dict(sorted(self.by_class.items())),
                "by_site": dict(sorted(self.by_site.items()))}


class Counters:
    """Totals per routing key, added to as records end."""

    def __init__(self) -> None:
        # (key, role, outcome) -> flows; every flow end, TCP or HTTP request
        self.flows: Counter[tuple[str, str, str]] = Counter()
        # (key, method, status class, serving site) -> HTTP requests
        self.requests: Counter[tuple[str, str, str, str]] = Counter()
        self.http: dict[str, KeyStats] = {}

    def add(self, entry: FlowEntry) -> None:
        self.flows[entry.key, entry.role, entry.outcome or "error"] += 1
        if entry.method is None:
            return  # a TCP flow, or an HTTP flow end that is not the client's request
        cls = status_class(entry)
        site = entry.served_by_site or NO_SITE
        self.requests[entry.key, method_label(entry.method), cls, site] += 1
        stats = self.http.get(entry.key)
        if stats is None:
            stats = self.http[entry.key] = KeyStats()
        stats.requests += 1
        stats.errors += is_error(entry)
        stats.by_class[cls] += 1
        stats.by_site[site] += 1
        stats.latency.observe(max(0.0, (entry.end or entry.start) - entry.start))

    def flows_by_key(self) -> dict[str, dict[str, int]]:
        """{key: {role: flows}} over every outcome."""
        out: dict[str, dict[str, int]] = {}
        for (key, role, _), n in self.flows.items():
            per = out.setdefault(key, {})
            per[role] = per.get(role, 0) + n
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
