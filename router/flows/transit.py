"""Splicing: a transit router joins (incoming link, flow) to (outgoing link, flow).

Event-driven, no tasks: the link readers call these handlers, and DATA moves from
one connection's receive events straight into the other's send queue without being
parsed. Per-hop credit: we grant the upstream hop credit only for bytes we could
hand to the downstream hop, so a slow far end slows only its own flow and the bytes
held here are bounded by the window.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING

import trio

from router.adaptors.tcp import READ_CHUNK, abort_socket
from router.net.link import Link
from router.protocol import FlowError, Open
from router.routing.forward import ForwardRefused, next_hop_for_open

if TYPE_CHECKING:
    from router.daemon.router import Router

class TransitHalf:
    """One side of a splice; `peer` is the other side. Implements FlowHandler."""

    def __init__(self, link: Link, flow_id: int) -> None:
        self.link = link
        self.flow_id = flow_id
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
        conn = self.link.conn
        n = min(conn.credit(self.flow_id), len(data))
        if n <= 0:
            return 0
        try:
            conn.send_data(self.flow_id, data[:n] if n < len(data) else data)
        except FlowError:
            return 0
        self.link.kick()
        # Bytes left this router: the upstream hop may send that much more.
        self.peer.link.conn.grant_credit(self.peer.flow_id, n)
        self.peer.link.kick()
        return n

    def _flush(self) -> None:
        while self._pending:
            data = self._pending[0]
            sent = self._send_now(data)
            if sent < len(data):
                self._pending[0] = data[sent:]
                return
            self._pending.popleft()
        if self._fin_pending:
            self._fin_pending = False
            self._fin_sent = True
            with contextlib.suppress(FlowError):
                self.link.conn.send_fin(self.flow_id)
            self.link.kick()
            self._release_if_done()

    def _release_if_done(self) -> None:
        if self._fin_sent and self._fin_received:
            self.link.release(self.flow_id)

    # -- FlowHandler (events about this half's own flow)
    def on_accepted(self, window: int) -> None:
        up = self.peer
        # The opener may have given up meanwhile (FlowError): its RESET reaches us next.
        with contextlib.suppress(FlowError):
            up.link.conn.accept_flow(up.flow_id, window)
        up.link.kick()

    def on_refused(self, reason: str) -> None:
        up = self.peer
        up.link.release(up.flow_id)
        with contextlib.suppress(FlowError):
            up.link.conn.refuse_flow(up.flow_id, reason)
        up.link.kick()

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

    def on_reset(self, reason: str) -> None:
        other = self.peer
        other.link.release(other.flow_id)
        other.link.conn.reset_flow(other.flow_id, reason)
        other.link.kick()


def open_transit(router: Router, link: Link, flow_id: int, open_msg: Open) -> None:
    """Forward an OPEN toward its destination, or refuse it with the reason."""
    conn = link.conn
    next_link: Link | None = None
    try:
        hop = next_hop_for_open(router.routing, open_msg.dest_router, open_msg.trace,
                                router.name)
        next_link = router.links.link_for(hop)
        if next_link is None:
            raise ForwardRefused(f"site {router.name} has no link to the next hop")
    except ForwardRefused as exc:
        conn.refuse_flow(flow_id, str(exc))
        link.kick()
        return
    up = TransitHalf(link, flow_id)
    fwd = Open(routing_key=open_msg.routing_key, origin_site=open_msg.origin_site,
               origin_router=open_msg.origin_router, dest_router=open_msg.dest_router,
               client_addr=open_msg.client_addr, trace=(*open_msg.trace, router.router_id),
               window=router.config.limits.flow_window_bytes)
    down = TransitHalf(next_link, 0)
    up.peer, down.peer = down, up
    try:
        down.flow_id = next_link.open_flow(fwd, down)
    except FlowError as exc:
        conn.refuse_flow(flow_id, f"site {router.name}: {exc}")
        link.kick()
        return
    link.flows[flow_id] = up


async def splice_sockets(a: trio.SocketStream, b: trio.SocketStream) -> None:
    """Listener and connector on the same site: pump two sockets, half-close aware.

    An end passes on as it happened: EOF as a half-close, a reset (or anything else
    that stops the pumps early) as a reset of both sockets, so a cut-off transfer
    never looks complete, as across sites where the flow's RESET does the same."""
    finished = 0

    async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        nonlocal finished
        try:
            while data := await src.receive_some(READ_CHUNK):
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            nursery.cancel_scope.cancel()
            return
        finished += 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, a, b)
            nursery.start_soon(pump, b, a)
    finally:
        if finished < 2:
            abort_socket(a)
            abort_socket(b)
        with trio.CancelScope(shield=True):
            await a.aclose()
            await b.aclose()
