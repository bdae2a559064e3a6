"""A flow as one end sees it: the (link, flow id) pair, with commands that flush.

Every protocol command queues bytes in the link's connection; they leave only when
the link is kicked. `FlowSide` does both, so no caller can queue a frame and forget
to send it. Commands on a flow that already ended (the peer reset it, the link died)
are dropped: the end learns of that through its handler.
"""

from __future__ import annotations

import contextlib

from router.net.link import FlowHandler, Link
from router.protocol import FlowCode, FlowError, Open


class FlowSide:
    __slots__ = ("conn", "flow_id", "link")

    def __init__(self, link: Link, flow_id: int = 0) -> None:
        self.link = link
        self.conn = link.conn
        self.flow_id = flow_id

    @property
    def peer_site(self) -> str:
        return self.link.peer_site

    @property
    def link_open(self) -> bool:
        return self.link.closed_reason is None

    def credit(self) -> int:
        return self.conn.credit(self.flow_id)

    def open(self, open_msg: Open, handler: FlowHandler) -> None:
        """Send OPEN as a new flow of this link; `handler` gets its events.
        Raises FlowError if the link is closing."""
        self.flow_id = self.link.open_flow(open_msg, handler)

    def attach(self, handler: FlowHandler) -> None:
        """Route this (incoming) flow's events to `handler`."""
        self.link.flows[self.flow_id] = handler

    def accept(self, window: int, *, trace: tuple[str, ...] = (), server: str = "",
               flush: bool = True) -> bool:
        """Answer an incoming OPEN; False if the flow ended meanwhile. `trace` (the
        routers the OPEN passed and this one) and `server` (the target's host:port) go
        back for the opener's record. `flush=False`: the caller's next command on this
        link sends it along."""
        try:
            self.conn.accept_flow(self.flow_id, window, trace=trace, server=server)
        except FlowError:
            return False
        if flush:
            self.link.kick()
        return True

    def refuse(self, code: FlowCode, reason: str) -> None:
        self.link.release(self.flow_id)
        with contextlib.suppress(FlowError):
            self.conn.refuse_flow(self.flow_id, code, reason)
        self.link.kick()

    def send(self, data: bytes | bytearray | memoryview, *, flush: bool = True) -> None:
        """DATA within the flow's credit (FlowError otherwise, or if the flow ended).
        `flush=False`: the caller's next command on this link sends it along."""
        self.conn.send_data(self.flow_id, data)
        if flush:
            self.link.kick()

    def can_fin(self) -> bool:
        """FIN may go now: the flow is open, or opening toward a peer that takes early
        data."""
        return self.conn.can_fin(self.flow_id)

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """The commands inside leave in one write (see Link.batch)."""
        return self.link.batch()

    def fin(self) -> bool:
        """Half-close; False if the flow was reset meanwhile."""
        try:
            self.conn.send_fin(self.flow_id)
        except FlowError:
            return False
        self.link.kick()
        return True

    def grant(self, n: int) -> None:
        """`n` bytes were delivered locally: the peer may send that much more."""
        self.conn.grant_credit(self.flow_id, n)
        self.link.kick()

    def reset(self, code: FlowCode, reason: str) -> None:
        """Reset the flow if it still exists, and stop routing its events here."""
        self.link.release(self.flow_id)
        if self.link.closed_reason is None:
            self.conn.reset_flow(self.flow_id, code, reason)
            self.link.kick()

    def release(self) -> None:
        self.link.release(self.flow_id)
