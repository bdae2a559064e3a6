"""Opening a flow to a routing key, and answering the OPENs that arrive.

`open` tries the serving sites in the strategy's order: a site that refuses is
skipped, a path that fails (a link died under the OPEN, a transit router met a
microloop while routes change) is tried again on the same site once routing has
settled. It holds no socket: the caller's `make_end` builds the flow's local end,
and `connect_local` reaches this site's own target when the site serves the key
itself. A TCP listener calls it once per connection; an HTTP listener will call
it once per request.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

import trio

from router.errors import VanError
from router.flows.end import FlowEnd, FlowRefusedError
from router.flows.entry import FlowEntry
from router.flows.table import FlowTable
from router.flows.transit import Transit
from router.net.link import Link
from router.net.side import FlowSide
from router.protocol import FlowCode, FlowError, Open
from router.routing import Candidate, RoutingCore, choose

ROUTE_ATTEMPTS = 3  # tries per serving site when the path (not the site) failed
ROUTE_SETTLE_S = 0.05  # wait before retrying, times the attempt number

E = TypeVar("E", bound=FlowEnd)
T = TypeVar("T")


class NoRoute(VanError):
    """No serving site took the flow; the message gives each site's reason."""


class NoTarget(VanError):
    """This site cannot serve the key itself (no connector, or its targets fail)."""


@dataclass(frozen=True, slots=True)
class Route(Generic[T, E]):
    """Where a flow is served: `end` (accepted by a remote site) or `target` (here)."""

    site: str
    router_id: str
    end: E | None = None
    target: T | None = None


LocalOpen = Callable[[FlowSide, Open], None]
# (candidates, outstanding flows per router, rng) -> the order to try them in
Order = Callable[[list[Candidate], Mapping[str, int], random.Random], list[Candidate]]


class Forwarder:
    def __init__(self, *, site: str, routing: RoutingCore, link_for: Callable[[str], Link | None],
                 table: FlowTable, window: int, open_timeout: float,
                 serve_local: LocalOpen, rng: random.Random | None = None) -> None:
        self.site = site
        self.routing = routing
        self.router_id = routing.router_id
        self._link_for = link_for
        self._table = table
        self._window = window
        self._open_timeout = open_timeout
        self._serve_local = serve_local
        self._rng = rng or random.Random()
        self._transit = Transit(routing, link_for, site, window)

    # ---- flows we open
    async def open(self, entry: FlowEntry, strategy: str, *,
                   make_end: Callable[[FlowSide], E],
                   connect_local: Callable[[str], Awaitable[T]],
                   order: Order | None = None,
                   early: Callable[[E], None] | None = None) -> Route[T, E]:
        """The first serving site that takes the flow; NoRoute (with every site's
        reason) if none does. The table counts the flow as served by it from here.
        `order` (per request, for HTTP) replaces the strategy's order of the sites.
        `early` writes what it can into a new end right after its OPEN, in the same
        write (early data: a request need not wait for the ACCEPT)."""
        reasons: list[str] = []
        candidates = self.routing.candidates(entry.key)
        outstanding = self._table.outstanding
        sites = (order(candidates, outstanding, self._rng) if order is not None
                 else choose(candidates, strategy, outstanding, self._rng))
        for cand in sites:
            for attempt in range(1, ROUTE_ATTEMPTS + 1):
                route = await self._try(entry, cand, reasons, make_end, connect_local, early)
                if isinstance(route, Route):
                    self._table.serving(entry, cand.router_id)
                    entry.connector_site = cand.site
                    if route.end is None:
                        entry.trace = (self.router_id,)
                    elif len(entry.trace) < 2:  # an older peer's ACCEPT says nothing
                        entry.trace = (self.router_id, cand.router_id)
                    return route
                if not route or attempt == ROUTE_ATTEMPTS:
                    break  # refused by the site: the next one
                # The path failed: let routing settle, then try this site again.
                await trio.sleep(ROUTE_SETTLE_S * attempt)
                hop = self.routing.next_hop(cand.router_id)
                if hop is None:
                    break
                cand = replace(cand, next_hop=hop)
        if not sites:
            reasons.append("no reachable site has a connector for it")
        raise NoRoute("; ".join(reasons))

    async def _try(self, entry: FlowEntry, cand: Candidate, reasons: list[str],
                   make_end: Callable[[FlowSide], E],
                   connect_local: Callable[[str], Awaitable[T]],
                   early: Callable[[E], None] | None) -> Route[T, E] | bool:
        """The route, or whether the path (True) or the site (False) failed."""
        if cand.next_hop is None:
            try:
                target = await connect_local(entry.key)
            except NoTarget as exc:
                reasons.append(str(exc))
                return False
            return Route(cand.site, cand.router_id, target=target)
        link = self._link_for(cand.next_hop)
        if link is None:
            reasons.append(f"{cand.site}: no link to next hop")
            return True
        end = make_end(FlowSide(link))
        open_msg = Open(routing_key=entry.key, origin_site=self.site,
                        origin_router=self.router_id, dest_router=cand.router_id,
                        client_addr=entry.client, trace=(self.router_id,),
                        window=self._window)
        try:
            with link.batch():
                end.side.open(open_msg, end)
                if early is not None:
                    early(end)
            await end.wait_answer(self._open_timeout)
        except FlowRefusedError as exc:
            reasons.append(f"{cand.site}: {exc}")
            return exc.path_failed
        except FlowError as exc:  # the link is closing
            reasons.append(f"{cand.site}: {exc}")
            return True
        except BaseException:
            end.side.reset(FlowCode.INTERNAL, "opening router failed")  # the far end waits
            raise
        return Route(cand.site, cand.router_id, end=end)

    # ---- OPENs that arrive
    def on_open(self, link: Link, flow_id: int, open_msg: Open) -> None:
        """Called from the link reader: must not block."""
        if open_msg.dest_router != self.router_id:
            self._transit.open(link, flow_id, open_msg)
        else:
            self._serve_local(FlowSide(link, flow_id), open_msg)
