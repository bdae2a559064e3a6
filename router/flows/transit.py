"""Splicing: a transit router joins (incoming link, flow) to (outgoing link, flow).

Event-driven, no tasks: the link readers call these handlers, and DATA moves from
one connection's receive events straight into the other's send queue without being
parsed. Per-hop credit: we grant the upstream hop credit only for bytes we could
hand to the downstream hop, so a slow far end slows only its own flow and the bytes
held here are bounded by the window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from router.net.link import Link
from router.net.side import FlowSide
from router.protocol import FlowCode, FlowError, Open
from router.routing import RoutingCore
from router.routing.forward import ForwardRefused, next_hop_for_open


class TransitHalf:
    """One side of a splice; `peer` is the other side. Implements FlowHandler."""

    def __init__(self, side: FlowSide) -> None:
        self.side = side
        self.peer: TransitHalf = self
        self._pending: deque[bytes] = deque()
        self._fin_pending = False
        self._fin_sent = False
        self._fin_received = False

    # -- sending side (called for the half we forward INTO)
    def _push(self, data: bytes) -> None:
        if self._pending:
            self._pending.append(data)
            return
        sent = self._send_now(data)
        if sent < len(data):
            self._pending.append(data[sent:])

    def _send_now(self, data: bytes) -> int:
        n = min(self.side.credit(), len(data))
        if n <= 0:
            return 0
        try:
            self.side.send(data[:n] if n < len(data) else data)
        except FlowError:
            return 0
        # Bytes left this router: the upstream hop may send that much more.
        self.peer.side.grant(n)
        return n

    def _flush(self) -> None:
        while self._pending:
            data = self._pending[0]
            sent = self._send_now(data)
            if sent < len(data):
                self._pending[0] = data[sent:]
                return
            self._pending.popleft()
        if self._fin_pending and self.side.can_fin():  # else: once accepted
            self._fin_pending = False
            self._fin_sent = True
            self.side.fin()
            self._release_if_done()

    def _release_if_done(self) -> None:
        if self._fin_sent and self._fin_received:
            self.side.release()

    # -- FlowHandler (events about this half's own flow)
    def on_accepted(self, window: int, trace: tuple[str, ...], server: str) -> None:
        # The opener may have given up meanwhile: its RESET reaches us next. Where the
        # flow went is passed on as it came, for the opener's record.
        self.peer.side.accept(window, trace=trace, server=server)
        self._flush()  # early data the next hop could not take before, and FIN

    def on_refused(self, code: FlowCode, reason: str) -> None:
        self.peer.side.refuse(code, reason)

    def on_data(self, data: bytes) -> None:
        self.peer._push(data)

    def on_credit(self) -> None:
        self._flush()

    def on_fin(self) -> None:
        self._fin_received = True
        self._release_if_done()
        other = self.peer
        other._fin_pending = True
        if not other._pending:
            other._flush()

    def on_reset(self, code: FlowCode, reason: str) -> None:
        self.peer.side.reset(code, reason)


@dataclass(frozen=True, slots=True)
class Transit:
    """Forwards OPENs that are for another router, or refuses them (code ROUTE)."""

    routing: RoutingCore
    link_for: Callable[[str], Link | None]
    site: str
    window: int

    def open(self, link: Link, flow_id: int, open_msg: Open) -> None:
        incoming = FlowSide(link, flow_id)
        try:
            hop = next_hop_for_open(self.routing, open_msg.dest_router, open_msg.trace,
                                    self.site)
            next_link = self.link_for(hop)
            if next_link is None:
                raise ForwardRefused(f"site {self.site} has no link to the next hop")
        except ForwardRefused as exc:
            incoming.refuse(FlowCode.ROUTE, str(exc))
            return
        up, down = TransitHalf(incoming), TransitHalf(FlowSide(next_link))
        up.peer, down.peer = down, up
        fwd = Open(routing_key=open_msg.routing_key, origin_site=open_msg.origin_site,
                   origin_router=open_msg.origin_router, dest_router=open_msg.dest_router,
                   client_addr=open_msg.client_addr,
                   trace=(*open_msg.trace, self.routing.router_id), window=self.window)
        try:
            down.side.open(fwd, down)
        except FlowError as exc:
            incoming.refuse(FlowCode.CAPACITY, f"site {self.site}: {exc}")
            return
        incoming.attach(up)
