"""The routing agent: the pure routing core driven by the link table and a timer.

It is the link table's `NeighbourEvents`: neighbours up and down, link costs (the
dialling side owns a link's cost, the accepting side adopts it), routing messages
received. It advertises the site's keys and sends what the core queues.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from router.net.link import Link
from router.net.logthrottle import KeyedLogThrottle
from router.routing import KeyAdvert, RoutingCore, RoutingError
from router.site.config import ConnectorConfig, ListenerConfig

log = logging.getLogger(__name__)
DROPPED_LOG_INTERVAL_S = 10.0

SendRouting = Callable[[str, bytes], None]  # (neighbour's router id, payload)


class RoutingAgent:
    def __init__(self, core: RoutingCore, send: SendRouting) -> None:
        self.core = core
        self._send = send
        self._wake = trio.Event()
        self._dropped_log = KeyedLogThrottle(DROPPED_LOG_INTERVAL_S)

    # ---- NeighbourEvents
    def neighbour_up(self, link: Link) -> None:
        self.core.neighbour_up(link.peer_id, link.cost, trio.current_time())
        self._flush()

    def neighbour_down(self, link: Link) -> None:
        self.core.neighbour_down(link.peer_id, trio.current_time())
        self._flush()

    def neighbour_cost(self, link: Link) -> None:
        self.core.set_cost(link.peer_id, link.cost, trio.current_time())
        self._flush()

    def on_routing(self, link: Link, payload: bytes) -> None:
        try:
            self.core.receive(link.peer_id, payload, trio.current_time())
        except RoutingError as exc:
            # A hostile neighbour can send thousands a second: one line per peer per interval.
            self._dropped_log.log(f"routing:{link.peer_id}", log, logging.WARNING,
                                  trio.current_time(), "routing message from %s dropped: %s",
                                  link.peer_site, exc)
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
        for peer_id, payload in self.core.outgoing():
            self._send(peer_id, payload)

    async def run(self) -> None:
        while True:
            with trio.move_on_at(self.core.next_deadline()):
                await self._wake.wait()
            self._wake = trio.Event()
            self.core.handle_timer(trio.current_time())
            self._send_queued()
