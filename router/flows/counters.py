"""Per routing key counters, added to as flows end and read by metrics and status.

A flow end adds to the totals of its routing key and role (the listener end, where the
client is, or the connector end, at the target): closed by outcome, bytes each way, time
to first byte. HTTP requests add their method, status class and serving site. Flows still
open are not counted until they end: `totals` adds them at read time (walking the open
flows then costs the reader, never the data path), so opened = closed + open now.

Label values are bounded here, as they become Prometheus series: a method a client made
up is "OTHER", a grpc-status past the known codes is "grpc_other", and past
MAX_COUNTED_KEYS (routing key, role) pairs a new key is counted as OTHER_KEY (a peer can
send OPENs for keys this site does not serve; each is refused, but counted). Pure: no trio.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from router.flows.entry import FlowEntry, Outcome, Role

# Seconds, 1 ms to 10 s (+Inf is implied): a first byte on a LAN is a few ms.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                      0.5, 1.0, 2.5, 5.0, 10.0)
OUTCOMES: tuple[Outcome, ...] = ("ok", "refused", "reset", "error")
# Methods a client sends are arbitrary tokens: anything else is "OTHER", so a client
# cannot grow the metric's label set without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                           "TRACE", "PATCH"})
GRPC_CODES = range(17)  # OK (0) to UNAUTHENTICATED (16)
# grpc-status codes that mean the server side failed (the 5xx of gRPC): UNKNOWN,
# DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS.
GRPC_SERVER_ERRORS = frozenset({2, 4, 13, 14, 15})
NO_SITE = "none"  # the site label of a request no site answered
# (key, role) pairs counted on their own: 10,000 keys a site may listen for and serve,
# with room for refusals. A routing key starts with a letter or digit: this is no key.
MAX_COUNTED_KEYS = 20_000
OTHER_KEY = "_other"


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


def status_class(entry: FlowEntry) -> str:
    """"2xx" for HTTP, "grpc_<code>" once a gRPC request has its grpc-status,
    "none" for a request that got no response at all."""
    if entry.grpc_status is not None:
        return f"grpc_{entry.grpc_status}" if entry.grpc_status in GRPC_CODES else "grpc_other"
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


def c2s_s2c(entry: FlowEntry) -> tuple[int, int]:
    """(client to server, server to client) bytes of a flow end: its socket is the
    client's at the listener end, the target's at the connector end."""
    if entry.role == "listener":
        return entry.bytes_out, entry.bytes_in
    return entry.bytes_in, entry.bytes_out


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

    def quantile(self, q: float, since: Histogram | None = None) -> float | None:
        """The q-quantile (0 < q < 1) as Prometheus' histogram_quantile estimates it
        (linear within the bucket; the top bound for the +Inf bucket), of what was
        observed after the copy `since`; None if nothing was."""
        counts = self.counts if since is None else [
            a - b for a, b in zip(self.counts, since.counts, strict=True)]
        total = sum(counts)
        if not total:
            return None
        rank, seen, lower = q * total, 0, 0.0
        for i, n in enumerate(counts):
            if i == len(self.bounds):
                return self.bounds[-1]
            if seen + n >= rank and n:
                return lower + (self.bounds[i] - lower) * (rank - seen) / n
            seen += n
            lower = self.bounds[i]
        return self.bounds[-1]

    def copy(self) -> Histogram:
        h = Histogram(self.bounds)
        h.counts, h.sum, h.count = list(self.counts), self.sum, self.count
        return h


@dataclass(slots=True)
class RoleStats:
    """Ended flows of one routing key at one role."""

    closed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    bytes_c2s: int = 0
    bytes_s2c: int = 0
    ttfb: Histogram = field(default_factory=Histogram)  # flows that had a first byte


@dataclass(slots=True)
class KeyTotals:
    """What `Counters.totals` gives per (key, role): the ended flows' counters plus the
    open ones now. `ttfb` is the live histogram (copy it to keep a snapshot)."""

    opened: int
    active: int
    closed: dict[str, int]
    bytes_c2s: int
    bytes_s2c: int
    ttfb: Histogram


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
    """Totals per routing key, added to as flows end."""

    def __init__(self, max_keys: int = MAX_COUNTED_KEYS) -> None:
        self.max_keys = max_keys
        self.roles: dict[tuple[str, Role], RoleStats] = {}
        # (key, method, status class, serving site) -> HTTP requests
        self.requests: Counter[tuple[str, str, str, str]] = Counter()
        self.http: dict[str, KeyStats] = {}

    def label(self, key: str, role: Role) -> str:
        """The key as counted: itself, or OTHER_KEY once the table is full."""
        if (key, role) in self.roles or len(self.roles) < self.max_keys:
            return key
        return OTHER_KEY

    def add(self, entry: FlowEntry) -> None:
        st = self.roles.get((entry.key, entry.role))
        if st is None:
            st = self.roles.setdefault((self.label(entry.key, entry.role), entry.role),
                                       RoleStats())
        st.closed[entry.outcome or "error"] += 1
        c2s, s2c = c2s_s2c(entry)
        st.bytes_c2s += c2s
        st.bytes_s2c += s2c
        if entry.ttfb_s is not None:
            st.ttfb.observe(entry.ttfb_s)
        if entry.method is not None:  # the client's request, at an HTTP listener
            self._add_request(entry)

    def _add_request(self, entry: FlowEntry) -> None:
        key = self.label(entry.key, entry.role)
        cls = status_class(entry)
        site = entry.served_by_site or NO_SITE
        self.requests[key, method_label(entry.method or ""), cls, site] += 1
        stats = self.http.get(key)
        if stats is None:
            stats = self.http[key] = KeyStats()
        stats.requests += 1
        stats.errors += is_error(entry)
        stats.by_class[cls] += 1
        stats.by_site[site] += 1
        stats.latency.observe(max(0.0, (entry.end or entry.start) - entry.start))

    def totals(self, active: Iterable[FlowEntry]) -> dict[tuple[str, Role], KeyTotals]:
        """Per (key, role): the ended flows with `active` (the open ones) added."""
        out = {k: KeyTotals(opened=sum(st.closed.values()), active=0, closed=dict(st.closed),
                            bytes_c2s=st.bytes_c2s, bytes_s2c=st.bytes_s2c, ttfb=st.ttfb)
               for k, st in self.roles.items()}
        for entry in active:
            k = (self.label(entry.key, entry.role), entry.role)
            t = out.get(k)
            if t is None:
                t = out[k] = KeyTotals(opened=0, active=0, closed=dict.fromkeys(OUTCOMES, 0),
                                       bytes_c2s=0, bytes_s2c=0, ttfb=Histogram())
            c2s, s2c = c2s_s2c(entry)
            t.opened += 1
            t.active += 1
            t.bytes_c2s += c2s
            t.bytes_s2c += s2c
        return out

    @property
    def flows(self) -> Counter[tuple[str, str, str]]:
        """(key, role, outcome) -> flows ended (a copy)."""
        return Counter({(key, role, outcome): n for (key, role), st in self.roles.items()
                        for outcome, n in st.closed.items() if n})

    def flows_by_key(self) -> dict[str, dict[str, int]]:
        """{key: {role: flows}} over every outcome."""
        out: dict[str, dict[str, int]] = {}
        for (key, role), st in self.roles.items():
            out.setdefault(key, {})[role] = sum(st.closed.values())
        return out
