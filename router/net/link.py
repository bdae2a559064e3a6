"""The trio driver of one established link: a thin loop around LinkConnection.

One reader task feeds received bytes to the pure connection and dispatches its
events; one writer task drains the connection's outgoing buffer (so frames from
many flows coalesce into one TLS write); one timer task runs keepalive. Flows are
registered as handlers keyed by flow id.

Every queue toward the peer is bounded. DATA is bounded by credit and by the flows'
back-pressure (wait_drained). Control frames answer what the peer sends, so while
more of them wait than the connection allows (``read_paused``) the reader stops
reading until the writer took them: a peer that sends but never reads is no longer
read, and when keepalive then finds the link silent it ends with "peer is not
reading". DATA never pauses the reader: two routers both sending bulk data would
otherwise each wait for the other to read.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Literal, Protocol

import trio

from router.errors import VanError
from router.net.errors import NETWORK_ERRORS, only
from router.net.tls import TLSStream
from router.protocol import (
    CreditGranted,
    DataReceived,
    Event,
    FlowAccepted,
    FlowCode,
    FlowError,
    FlowFinished,
    FlowOpened,
    FlowRefused,
    FlowReset,
    Hello,
    HelloReceived,
    LinkClosedByPeer,
    LinkConnection,
    LinkDead,
    Open,
    PongReceived,
    ProtocolError,
    RenewReceived,
    RoutingReceived,
)

log = logging.getLogger(__name__)

# Unsent control bytes, in multiples of the connection's read-pause threshold, past
# which the link is ended at once. Reading stops at 1x, so only commands from our own
# side (flows, routing) can push the queue this far, toward a peer that reads nothing.
CONTROL_CAP_FACTOR = 4


class LinkLost(VanError):
    """The link ended; the message says why (peer closed, keepalive, protocol error)."""


class FlowHandler(Protocol):
    # `trace` (router ids, the serving one last) and `server` (its target) come with
    # the ACCEPT for the opener's flow record; empty from an older peer.
    def on_accepted(self, window: int, trace: tuple[str, ...], server: str) -> None: ...
    def on_refused(self, code: FlowCode, reason: str) -> None: ...
    def on_data(self, data: bytes) -> None: ...
    def on_credit(self) -> None: ...
    def on_fin(self) -> None: ...
    def on_reset(self, code: FlowCode, reason: str) -> None: ...


Direction = Literal["in", "out"]  # who dialled: the peer ("in") or we ("out")
OpenCallback = Callable[["Link", int, Open], None]
RoutingCallback = Callable[["Link", bytes], None]
RenewCallback = Callable[["Link", bytes], None]


async def exchange_hello(
    stream: TLSStream, conn: LinkConnection, timeout: float
) -> tuple[Hello, list[Event]]:
    """Send our preface+HELLO and read until the peer's HELLO; returns it and any
    events that arrived in the same read."""
    with trio.fail_after(timeout):
        await stream.send_all(conn.data_to_send())
        while True:
            data = await stream.receive_some()
            if not data:
                raise LinkLost("peer closed the connection before its HELLO")
            try:
                events = conn.receive_data(data, trio.current_time())
            except ProtocolError:
                await _flush_quietly(stream, conn)
                raise
            for i, event in enumerate(events):
                if isinstance(event, HelloReceived):
                    return event.hello, events[i + 1 :]


async def _flush_quietly(stream: TLSStream, conn: LinkConnection) -> None:
    with trio.move_on_after(1):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(conn.data_to_send())


class Link:
    def __init__(
        self,
        *,
        name: str,
        direction: Direction,
        stream: TLSStream,
        conn: LinkConnection,
        peer: Hello,
        cost: int,
        buffer_limit: int,
        on_open: OpenCallback,
        on_routing: RoutingCallback,
        on_renew: RenewCallback | None = None,
    ) -> None:
        self.name = name
        self.direction = direction
        self.stream = stream
        self.conn = conn
        self.peer = peer
        self.cost = cost
        self.buffer_limit = buffer_limit
        self.flows: dict[int, FlowHandler] = {}
        self.since = trio.current_time()
        self.rtt: float | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self._on_open = on_open
        self._on_routing = on_routing
        self._on_renew = on_renew
        self._wake = trio.Event()
        self._writing = False
        self._dispatching = False
        self._corked = 0  # inside batch(): frames wait for one write at its end
        self._drained = trio.Event()
        self._cancel = trio.CancelScope()
        self.closed_reason: str | None = None
        self._control_cap = CONTROL_CAP_FACTOR * conn.limits.max_unsent_control_bytes
        self._taken: trio.Event | None = None  # set while the reader waits for the writer
        self._unsent = 0  # bytes handed to the stream, maybe not yet written
        self.read_pauses = 0

    @property
    def peer_id(self) -> str:
        return self.peer.router_id

    @property
    def peer_site(self) -> str:
        return self.peer.site

    # ---- commands used by flows
    def kick(self) -> None:
        """The connection has bytes to send: write them now if the socket takes them
        without blocking (no task switch on the latency path), else wake the writer.
        Inside a batch of received events, one write happens after the batch."""
        if self._corked or self._dispatching or self._writing or self._wake.is_set():
            if self.conn.unsent_control_bytes > self._control_cap:
                self._end_not_reading()
            return
        size = self.conn.outgoing_bytes
        if not size:
            return
        self.bytes_out += size
        if not self.stream.send_nowait(self.conn.data_to_send_parts()):
            self._unsent = size
            self._wake.set()
        if self._taken is not None:
            self._taken.set()

    def probe_rtt(self) -> None:
        """PING now, so that `rtt` is measured on a busy link too (keepalive pings only
        a link with nothing to send). Under load it includes the wait in the queues."""
        if self.closed_reason is None:
            self.conn.ping(trio.current_time())
            self.kick()

    def batch(self) -> _Batch:
        """Commands inside leave in one write at the end (an OPEN with its early data,
        a response's head, body and end), instead of a write each."""
        return _Batch(self)

    @property
    def over_buffer_limit(self) -> bool:
        return self.conn.outgoing_bytes > self.buffer_limit

    async def wait_drained(self) -> None:
        """Back-pressure: wait while the outgoing queue is over its limit."""
        while self.conn.outgoing_bytes > self.buffer_limit and self.closed_reason is None:
            await self._drained.wait()

    def open_flow(self, open_msg: Open, handler: FlowHandler) -> int:
        flow_id = self.conn.open_flow(open_msg)
        self.flows[flow_id] = handler
        self.kick()
        return flow_id

    def release(self, flow_id: int) -> None:
        self.flows.pop(flow_id, None)

    def close(self, reason: str) -> None:
        """Say GOAWAY and end the link (flushes what is queued first)."""
        if self.closed_reason is None:
            self.closed_reason = reason
            self.conn.close(reason)
            self._wake.set()  # the writer flushes the GOAWAY, then ends the link
            # Give the writer a moment to flush the GOAWAY before the scope ends.
            self._cancel.deadline = trio.current_time() + 1.0

    # ---- the loops
    async def run(self, initial: list[Event]) -> None:
        """Run until the link ends; every flow still on it is reset with the reason."""
        reason = "link closed"
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._timer)
                    self._dispatch(initial)
                    self.probe_rtt()  # status and top show an RTT from the start
                    await self._reader()
        except BaseException as exc:
            first = only(exc, (LinkLost, *NETWORK_ERRORS))
            if first is None:
                if only(exc, (Exception,)) is None:
                    raise  # cancellation, KeyboardInterrupt
                # A bug must not take the router down: end this link, say why loudly.
                log.exception("link %s to %s failed with an internal error", self.name,
                              self.peer_site)
                first = LinkLost("internal error in this router")
            reason = _describe(first)
            if isinstance(first, ProtocolError):
                await _flush_quietly(self.stream, self.conn)
        finally:
            if self.closed_reason is not None:
                reason = self.closed_reason
            self.closed_reason = reason
            self._drained.set()
            still_open = set(self.conn.flow_ids())
            for flow_id, handler in list(self.flows.items()):
                # A flow both sides finished needs the link no more: its end is only
                # delivering what arrived, which a reset would throw away.
                if flow_id in still_open:
                    handler.on_reset(FlowCode.LINK_LOST,
                                     f"link to {self.peer_site} lost: {reason}")
            self.flows.clear()
            # No checkpoint from here until the caller's bookkeeping (routing told the
            # neighbour is gone) has run: flows woken by the resets above then retry on
            # a fresh route. The caller closes the stream.
        log.info("link %s to %s ended: %s", self.name, self.peer_site, reason,
                 extra={"link": self.name, "peer_site": self.peer_site})

    async def _reader(self) -> None:
        conn = self.conn
        while True:
            if conn.read_paused:
                await self._wait_for_writer()
            if conn.input_held:
                data: memoryview | bytes = b""  # go on with what receive_data kept back
            else:
                data = await self.stream.receive_view()
                if not data:
                    raise LinkLost("peer closed the connection")
                self.bytes_in += len(data)
            self._dispatching = True
            try:
                self._dispatch(conn.receive_data(data, trio.current_time()))
            finally:
                self._dispatching = False
            self.kick()

    async def _wait_for_writer(self) -> None:
        """Too many control frames wait to be sent: read nothing until the writer took
        them. No deadline here: keepalive ends a link that stays silent meanwhile."""
        self.read_pauses += 1
        try:
            while self.conn.read_paused:
                self._taken = taken = trio.Event()
                self._wake.set()  # the writer is normally busy already; make sure
                await taken.wait()
        finally:
            self._taken = None

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._writing = True
            try:
                # send_all(b"") also flushes what send_nowait left behind.
                await self.stream.send_all(b"")
                self._unsent = 0
                while size := self.conn.outgoing_bytes:
                    self.bytes_out += size
                    parts = self.conn.data_to_send_parts()
                    self._unsent = size
                    if self._taken is not None:
                        self._taken.set()  # the queue is empty: a paused reader goes on
                    await self.stream.send_parts(parts)
                    self._unsent = 0
            finally:
                self._writing = False
            self._wake = trio.Event()
            drained, self._drained = self._drained, trio.Event()
            drained.set()
            if self.closed_reason is not None:
                raise LinkLost(self.closed_reason)

    async def _timer(self) -> None:
        while True:
            await trio.sleep_until(self.conn.next_deadline())
            self._dispatch(self.conn.handle_timer(trio.current_time()))
            self.kick()

    def _dispatch(self, events: list[Event]) -> None:
        flows = self.flows
        for event in events:
            if isinstance(event, DataReceived):
                handler = flows.get(event.flow_id)
                if handler is not None:
                    handler.on_data(event.data)
            elif isinstance(event, CreditGranted):
                handler = flows.get(event.flow_id)
                if handler is not None:
                    handler.on_credit()
            elif isinstance(event, FlowOpened):
                self._on_open(self, event.flow_id, event.open)
            elif isinstance(event, FlowAccepted):
                handler = flows.get(event.flow_id)
                if handler is not None:
                    handler.on_accepted(event.window, event.trace, event.server)
            elif isinstance(event, FlowRefused):
                handler = flows.pop(event.flow_id, None)
                if handler is not None:
                    handler.on_refused(event.code, event.reason)
            elif isinstance(event, FlowFinished):
                handler = flows.get(event.flow_id)
                if handler is not None:
                    handler.on_fin()
            elif isinstance(event, FlowReset):
                handler = flows.pop(event.flow_id, None)
                if handler is not None:
                    handler.on_reset(event.code, event.reason)
            elif isinstance(event, RoutingReceived):
                self._on_routing(self, event.payload)
            elif isinstance(event, PongReceived):
                self.rtt = event.rtt
            elif isinstance(event, RenewReceived):
                if self._on_renew is not None:
                    self._on_renew(self, event.payload)
            elif isinstance(event, LinkClosedByPeer):
                raise LinkLost(f"peer closed the link: {event.reason}")
            elif isinstance(event, LinkDead):
                # Silent because we stopped reading: the peer is the one not reading.
                raise LinkLost(self._not_reading() if self._taken is not None
                               else event.reason)

    def _not_reading(self) -> str:
        return f"peer is not reading: {self.conn.outgoing_bytes + self._unsent} bytes queued"

    def _end_not_reading(self) -> None:
        """End the link now: a GOAWAY could not reach a peer that reads nothing."""
        if self.closed_reason is None:
            self.closed_reason = self._not_reading()  # run() logs it and resets the flows
        self._cancel.cancel()


class _Batch:
    """Link.batch's context (a class: a generator-based one costs a few us per use)."""

    __slots__ = ("_link",)

    def __init__(self, link: Link) -> None:
        self._link = link

    def __enter__(self) -> None:
        self._link._corked += 1

    def __exit__(self, *exc: object) -> None:
        link = self._link
        link._corked -= 1
        if not link._corked:
            link.kick()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LinkLost):
        return str(exc)
    if isinstance(exc, ProtocolError):
        return f"protocol error from peer: {exc}"
    return f"connection lost: {exc}" if str(exc) else "connection lost"


__all__ = ["Direction", "FlowError", "FlowHandler", "Link", "LinkLost", "exchange_hello"]
