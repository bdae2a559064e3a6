"""Where a flow's OPEN goes next: the data-plane rule that keeps flows loop-free.

Link-state routing can hold short-lived loops while a change floods (a router that
already switched points at one that has not yet); OSPF has the same "microloops". A
flow never circulates in one: its OPEN carries the routers it passed, and a router that
finds itself in that trace refuses the OPEN instead of forwarding it. The listener then
tries again (on the next candidate or, once routing settled, on the new path).
"""

from __future__ import annotations

from collections.abc import Sequence

from .core import RoutingCore
from .errors import RoutingError

MAX_HOPS = 32


class ForwardRefused(RoutingError):
    """The OPEN cannot go on from here; the message says why. The caller refuses the
    OPEN with code ROUTE, so the listener knows to try the same site again."""


def next_hop_for_open(core: RoutingCore, dest: str, trace: Sequence[str], site: str) -> str:
    """The neighbour to forward an OPEN for `dest` to, given the routers it passed."""
    if core.router_id in trace:
        raise ForwardRefused(f"routing loop at site {site} (routes are changing)")
    if len(trace) >= MAX_HOPS:
        raise ForwardRefused(f"too many hops ({len(trace)})")
    hop = core.next_hop(dest)
    if hop is None:
        raise ForwardRefused(f"site {site} has no route to router {dest}")
    return hop
