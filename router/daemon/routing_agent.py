"""The routing agent: the pure routing core driven by the link table and a timer.

It is the link table's `NeighbourEvents`: neighbours up and down, link costs (the
dialling side owns a link's cost, the accepting side adopts it), routing messages
received. It advertises the site's keys and sends what the core queues.

It also drives the traffic summaries (`SummaryTable`): every interval it measures this
router's load (`measure`) and floods the summary, to neighbours whose HELLO says they
take them; a ROUTING payload is a summary message or a records message, told apart by
its version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from router.net.link import Link
from router.net.logthrottle import KeyedLogThrottle
from router.routing import KeyAdvert, RoutingCore, RoutingError
from router.routing.summaries import SummaryTable
from router.routing.summary import SUMMARY_FEATURE, KeyLoad, LinkLoad, is_summary_message
from router.site.config import ConnectorConfig, ListenerConfig

log = logging.getLogger(__name__)
DROPPED_LOG_INTERVAL_S = 10.0

SendRouting = Callable[[str, bytes], None]  # (neighbour's router id, payload)
# This router's load since the last call, at trio time `now`: (links, keys).
Measure = Callable[[float], tuple[Sequence[LinkLoad], Sequence[KeyLoad]]]


class RoutingAgent:
    def __init__(self, core: RoutingCore, send: SendRouting,
                 summaries: SummaryTable | None = None) -> None:
        self.core = core
        self.summaries = summaries
        self.measure: Measure | None = None  # set once the links and flows exist
        self._send = send
        self._wake = trio.Event()
        self._dropped_log = KeyedLogThrottle(DROPPED_LOG_INTERVAL_S)

    # ---- NeighbourEvents
    def neighbour_up(self, link: Link) -> None:
        now = trio.current_time()
        self.core.neighbour_up(link.peer_id, link.cost, now)
        if self.summaries is not None and SUMMARY_FEATURE in link.peer.features:
            self.summaries.neighbour_up(link.peer_id, now)
        self._flush()

    def neighbour_down(self, link: Link) -> None:
        self.core.neighbour_down(link.peer_id, trio.current_time())
        if self.summaries is not None:
            self.summaries.neighbour_down(link.peer_id)
        self._flush()

    def neighbour_cost(self, link: Link) -> None:
        self.core.set_cost(link.peer_id, link.cost, trio.current_time())
        self._flush()

    def on_routing(self, link: Link, payload: bytes) -> None:
        summary = self.summaries is not None and is_summary_message(payload)
        try:
            if summary:
                assert self.summaries is not None
                self.summaries.receive(link.peer_id, payload, trio.current_time())
            else:
                self.core.receive(link.peer_id, payload, trio.current_time())
        except RoutingError as exc:
            # A hostile neighbour can send thousands a second: one line per peer per interval.
            what = "summary" if summary else "routing"
            self._dropped_log.log(f"{what}:{link.peer_id}", log, logging.WARNING,
                                  trio.current_time(), "%s message from %s dropped: %s",
                                  what, link.peer_site, exc,
                                  extra={"link": link.name, "peer_site": link.peer_site})
        if link.direction == "in":
            self._adopt_cost(link)
        self._flush()

    def _adopt_cost(self, link: Link) -> None:
        """The dialling side owns a link's cost (`link create --cost`, `link cost`); the
        accepting side takes it from the dialler's record, so both directions agree."""
        record = self.core.record(link.peer_id)
        if record is None:
            return
        cost = dict(record.links).get(self.core.router_id)
        if cost is not None and cost != link.cost:
            link.cost = cost
            self.core.set_cost(link.peer_id, cost, trio.current_time())

    # ---- what this site offers
    def advertise(self, connectors: Sequence[ConnectorConfig],
                  listeners: Sequence[ListenerConfig]) -> None:
        keys: dict[str, KeyAdvert] = {}
        for con in connectors:
            prev = keys.get(con.key)
            # Several local targets for one key: advertise the best priority, summed weight.
            if prev is None:
                keys[con.key] = KeyAdvert(priority=con.priority, weight=con.weight)
            else:
                keys[con.key] = KeyAdvert(priority=min(prev.priority, con.priority),
                                          weight=prev.weight + con.weight)
        now = trio.current_time()
        self.core.set_keys(keys, now)
        self.core.set_listens([lst.key for lst in listeners], now)
        self._flush()

    # ---- sending and the timer
    def _flush(self) -> None:
        """Send what the core queued; its next deadline may have moved."""
        self._send_queued()
        self._wake.set()

    def _send_queued(self) -> None:
        # Records first: a summary is only taken from a router whose record is known.
        for peer_id, payload in self.core.outgoing():
            self._send(peer_id, payload)
        if self.summaries is not None:
            for peer_id, payload in self.summaries.outgoing():
                self._send(peer_id, payload)

    def _next_deadline(self) -> float:
        deadline = self.core.next_deadline()
        if self.summaries is not None:
            deadline = min(deadline, self.summaries.next_deadline())
        return deadline

    async def run(self) -> None:
        while True:
            with trio.move_on_at(self._next_deadline()):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            self.core.handle_timer(now)
            if self.summaries is not None:
                if self.summaries.due(now) and self.measure is not None:
                    self.summaries.originate(*self.measure(now), now)
                self.summaries.handle_timer(now)
            self._send_queued()
