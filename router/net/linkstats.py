"""Counters per link, kept across reconnects, for metrics and status.

A link is known by its name and peer site (a dialled link by its configured name, an
accepted one as "in:<peer site>"); each time one comes up under that name is a new
`Link` whose byte counts start at 0. `LinkTotals` keeps what the ended ones moved, so
the bytes of a link name only grow, and counts how often one came up (reconnects).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from router.net.link import Link


@dataclass(slots=True)
class LinkTotals:
    ups: int = 0  # times a link came up under this name
    bytes_in: int = 0  # of the links that ended
    bytes_out: int = 0


@dataclass(slots=True)
class LinkSample:
    """One link name as a scrape sees it: live links' counts added to the totals."""

    link: str
    peer_site: str
    up: bool | None  # None: an accepted link that is gone (the dialling side reports down)
    rtt: float | None  # seconds, of a live link that had a keepalive answered
    bytes_in: int
    bytes_out: int
    reconnects: int  # times it came up again after the first


def link_samples(totals: dict[tuple[str, str], LinkTotals], live: Iterable[Link],
                 dialled: Iterable[tuple[str, str]]) -> list[LinkSample]:
    """A sample per (name, peer site) that ever came up or is dialled now. A link this
    site dials is up or down; one it accepted is up while it runs, and then only its
    counters remain (whether it should be up is the dialling side's to say)."""
    out: dict[tuple[str, str], LinkSample] = {}
    for (name, peer), t in totals.items():
        out[name, peer] = LinkSample(name, peer, None, None, t.bytes_in, t.bytes_out,
                                     max(0, t.ups - 1))
    for name, peer in dialled:
        s = out.setdefault((name, peer), LinkSample(name, peer, False, None, 0, 0, 0))
        s.up = False
    for link in live:
        s = out.setdefault((link.name, link.peer_site),
                           LinkSample(link.name, link.peer_site, False, None, 0, 0, 0))
        s.up = True
        s.rtt = link.rtt if link.rtt is not None else s.rtt
        s.bytes_in += link.bytes_in
        s.bytes_out += link.bytes_out
    return sorted(out.values(), key=lambda s: (s.link, s.peer_site))
