"""What `sitectl top` asks for (the control socket's "top"): per routing key, role and
serving site, counters that only grow (flows started, errors, bytes each way) and figures
of the recent past (TTFB p50/p95, error share); and the links' byte counters and RTT.
sitectl takes rates from two answers a second apart.

The counters are of flow entries, read here and never kept per flow elsewhere: the
active ones from the flow table, the ended ones from its ring of records, each record
counted once (the `TopCounter` remembers the newest it counted; the ring only ever
appends at one end and drops at the other). Work per request is bounded by the ring's
size, MAX_ACTIVE_SCANNED active flows and the recent records' TTFBs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from router.daemon.view import RouterView
from router.flows.counters import is_error
from router.flows.entry import FlowEntry
from router.net.link import Link

RECENT_S = 60.0  # TTFB and error share: over the flows that ended this long ago at most
MAX_ACTIVE_SCANNED = 50_000
MAX_ROWS = 4096  # (key, role, site) rows kept; later ones are summed under OTHER_SITE
MAX_TTFB_SAMPLES = 2000  # per row, the newest
NO_SITE = "none"  # a flow no site served (refused before one accepted it)
OTHER_SITE = "(other)"
ERROR_OUTCOMES = frozenset({"refused", "reset", "error"})

Row = tuple[str, str, str]  # (routing key, role, serving site)


@dataclass(slots=True)
class _Totals:
    flows: int = 0
    errors: int = 0
    bytes_c2s: int = 0  # client to server, whichever end this router is
    bytes_s2c: int = 0

    def add(self, entry: FlowEntry, ended: bool) -> None:
        self.flows += 1
        if entry.role == "listener":
            self.bytes_c2s += entry.bytes_out
            self.bytes_s2c += entry.bytes_in
        else:
            self.bytes_c2s += entry.bytes_in
            self.bytes_s2c += entry.bytes_out
        if ended and failed(entry):
            self.errors += 1


@dataclass(slots=True)
class _Recent:
    flows: int = 0
    errors: int = 0
    ttfb: list[float] = field(default_factory=list)


def failed(entry: FlowEntry) -> bool:
    """An ended flow that counts in the error share: not ok, or an HTTP request that got
    a server error, an error we generated, or no response (counters.is_error)."""
    return entry.outcome in ERROR_OUTCOMES or (entry.method is not None and is_error(entry))


def serving_site(entry: FlowEntry, sites: Mapping[str, str], local: str) -> str:
    if entry.role == "connector":
        return local
    if entry.served_by_site is not None:  # an HTTP request's answering site
        return entry.served_by_site
    if entry.server_router is not None:
        return sites.get(entry.server_router, entry.server_router)
    return NO_SITE


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest rank of a sorted list."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class TopCounter:
    """Totals of the ended flows, per row, kept up to date from the ring of records."""

    def __init__(self) -> None:
        self._ended: dict[Row, _Totals] = {}
        self._newest: FlowEntry | None = None  # the newest record counted

    def reply(self, view: RouterView) -> dict[str, Any]:
        local = view.config.name
        sites = {rec.router_id: rec.site for rec in view.routing.records()}
        records = list(view.flows.records)
        self._count_new(records, sites, local)
        totals = {row: _Totals(t.flows, t.errors, t.bytes_c2s, t.bytes_s2c)
                  for row, t in self._ended.items()}
        active: dict[Row, int] = {}
        recent: dict[Row, _Recent] = {}
        scanned = 0
        for entry in view.flows.entries():
            if scanned == MAX_ACTIVE_SCANNED:
                break
            scanned += 1
            row = self._row(entry, sites, local, totals)
            totals.setdefault(row, _Totals()).add(entry, ended=False)
            active[row] = active.get(row, 0) + 1
            if entry.ttfb_s is not None:
                _sample(recent.setdefault(row, _Recent()), entry.ttfb_s)
        since = time.time() - RECENT_S
        for entry in reversed(records):
            if (entry.end or 0.0) < since:
                break  # the ring is in the order flows ended
            stats = recent.setdefault(self._row(entry, sites, local, totals), _Recent())
            stats.flows += 1
            stats.errors += failed(entry)
            if entry.ttfb_s is not None:
                _sample(stats, entry.ttfb_s)
        return {"site": local, "time": time.time(), "recent_s": RECENT_S,
                "active_all_scanned": scanned == view.flows.active,
                "rows": [_row_dict(row, t, active.get(row, 0), recent.get(row))
                         for row, t in sorted(totals.items())],
                "links": link_counters(view)}

    def _count_new(self, records: list[FlowEntry], sites: Mapping[str, str],
                   local: str) -> None:
        start = 0
        if self._newest is not None:
            # Found: count what came after it. Gone: every record held is newer.
            for i in range(len(records) - 1, -1, -1):
                if records[i] is self._newest:
                    start = i + 1
                    break
        for entry in records[start:]:
            self._ended.setdefault(self._row(entry, sites, local, self._ended),
                                   _Totals()).add(entry, ended=True)
        if records:
            self._newest = records[-1]

    @staticmethod
    def _row(entry: FlowEntry, sites: Mapping[str, str], local: str,
             rows: Mapping[Row, object]) -> Row:
        row = (entry.key, entry.role, serving_site(entry, sites, local))
        if row not in rows and len(rows) >= MAX_ROWS:
            return (entry.key, entry.role, OTHER_SITE)
        return row


def _sample(stats: _Recent, ttfb: float) -> None:
    if len(stats.ttfb) < MAX_TTFB_SAMPLES:
        stats.ttfb.append(ttfb)


def _row_dict(row: Row, t: _Totals, active: int, recent: _Recent | None) -> dict[str, Any]:
    ttfb = sorted(recent.ttfb) if recent is not None else []
    p50, p95 = percentile(ttfb, 0.5), percentile(ttfb, 0.95)
    return {"key": row[0], "role": row[1], "site": row[2], "flows": t.flows,
            "errors": t.errors, "bytes_c2s": t.bytes_c2s, "bytes_s2c": t.bytes_s2c,
            "active": active,
            "recent_flows": 0 if recent is None else recent.flows,
            "recent_errors": 0 if recent is None else recent.errors,
            "ttfb_p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "ttfb_p95_ms": None if p95 is None else round(p95 * 1000, 3)}


def link_counters(view: RouterView) -> list[dict[str, Any]]:
    """This router's links: state, RTT and the byte counters (frames, both ways), which
    start from zero when a link comes up again (`up_s` says how long ago)."""
    out: list[dict[str, Any]] = []
    for name, dial in sorted(view.links.dials.items()):
        out.append(_link_dict(name, dial.spec.peer_site, "out",
                              "up" if dial.link else dial.state, dial.link))
    for link in view.links.accepted:
        out.append(_link_dict(link.name, link.peer_site, "in", "up", link))
    return out


def _link_dict(name: str, peer_site: str, direction: str, state: str,
               link: Link | None) -> dict[str, Any]:
    if link is None:
        return {"name": name, "peer_site": peer_site, "direction": direction, "state": state,
                "rtt_ms": None, "bytes_in": 0, "bytes_out": 0, "up_s": None}
    return {"name": name, "peer_site": peer_site, "direction": direction, "state": state,
            "rtt_ms": None if link.rtt is None else round(link.rtt * 1000, 3),
            "bytes_in": link.bytes_in, "bytes_out": link.bytes_out,
            "up_s": round(trio.current_time() - link.since, 3)}
