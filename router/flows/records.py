"""Finished flows and requests: a bounded ring of records and per-key counters.

An ended `FlowEntry` *is* its record (the table stops changing it once it ends), so
keeping one costs a deque append on the TCP path, not a copy. Counters are kept as
records end, so a scrape reads totals and never walks the ring. Pure: no trio here.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from router.flows.entry import FlowEntry

FLOW_RECORDS_MAX = 10_000  # records kept per router ([limits] flow_records_max)
FLOW_RECORDS_TTL_S = 900.0  # ... for at most this long ([limits] flow_records_ttl_s)
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
