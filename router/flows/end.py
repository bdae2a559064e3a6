"""What every local end of a flow shares: the OPEN's answer, the inbox, a reset.

An end is the link's handler for its flow (`FlowHandler`). The link reader must never
block on it: received DATA goes to an inbox that the credit window bounds, and events
wake the end's tasks. The adaptors subclass `FlowEnd` with the data path for their
kind of local peer (a TCP socket, any trio stream, an HTTP exchange next).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio

from router.errors import VanError
from router.flows.entry import FlowEntry
from router.flows.table import FlowTable
from router.net.link import FlowHandler
from router.net.side import FlowSide
from router.protocol import FlowCode, Open


class FlowRefusedError(VanError):
    """The OPEN did not succeed; `code` says why. `path_failed`: the path, not the
    serving site, failed (a router on it could not forward, a link under it died, or
    the flow was reset before any answer), so the same site may work again."""

    def __init__(self, code: FlowCode, reason: str, *, path_failed: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.path_failed = path_failed or code.path_failed


# What `_data_ready` and `_credit_ready` are until a task waits: a waiter always puts a
# fresh event there first, so setting this one wakes nobody. An open flow end is mostly
# idle: two events less each (about 430 bytes) is a fifth of what it costs.
_NO_WAITER = trio.Event()
_NO_WAITER.set()


class FlowEnd:
    """Base of a flow's local end; `entry` counts its bytes."""

    def __init__(self, side: FlowSide, entry: FlowEntry) -> None:
        self.side = side
        self.entry = entry
        self.reset_reason: str | None = None
        self.reset_code: FlowCode | None = None
        self.refusal: FlowRefusedError | None = None
        self._answered = False
        self._answer: trio.Event | None = None  # while wait_answer waits
        # The data path's scope while it runs (its nursery's: no scope of its own, which
        # would cost a scope and a cancel status per flow); a reset cancels it.
        self._scope: trio.CancelScope | None = None
        self._stopped = False
        # Received, not yet delivered. A list, not a deque: most flows never use it
        # (the fast paths deliver at once), and an empty deque costs 600 bytes.
        self._inbox: list[bytes] = []
        self._remote_fin = False
        self._data_ready = _NO_WAITER
        self._credit_ready = _NO_WAITER
        # A TCP listener's end times the first byte the link brings (the server's);
        # set by the adaptors whose entry counts time to first byte this way.
        self._ttfb_in = False

    def _answer_came(self) -> None:
        self._answered = True
        if self._answer is not None:
            self._answer.set()

    def _first_byte(self) -> None:
        """The first byte from the serving side: the entry's time to first byte."""
        self._ttfb_in = False
        self.entry.ttfb_s = max(0.0, time.time() - self.entry.start)

    # ---- FlowHandler: called by the link reader, must not block
    def on_accepted(self, window: int, trace: tuple[str, ...], server: str) -> None:
        # Where the flow went, for its record (the last attempt's, for a retried request)
        self.entry.trace = trace
        self.entry.server = server or None
        self._answer_came()

    def on_refused(self, code: FlowCode, reason: str) -> None:
        self.refusal = FlowRefusedError(code, reason)
        self._answer_came()

    def on_reset(self, code: FlowCode, reason: str) -> None:
        if self.reset_reason is None:
            self.reset_reason, self.reset_code = reason, code
        if self.refusal is None and not self._answered:
            # Reset before any answer: the path failed under the OPEN.
            self.refusal = FlowRefusedError(code, reason, path_failed=True)
        self._answer_came()
        self._stop()

    def on_data(self, data: bytes) -> None:
        if self._ttfb_in:
            self._first_byte()
        self._inbox.append(data)
        self._data_ready.set()

    def on_credit(self) -> None:
        self._credit_ready.set()

    def on_fin(self) -> None:
        self._remote_fin = True
        self._data_ready.set()

    # ---- setup
    async def wait_answer(self, timeout: float) -> None:
        """Wait for ACCEPT; raise FlowRefusedError with the code and reason otherwise."""
        if not self._answered:
            self._answer = trio.Event()
            with trio.move_on_after(timeout):
                await self._answer.wait()
            self._answer = None
        if not self._answered:
            self.side.reset(FlowCode.TIMEOUT, "open timed out")
            raise FlowRefusedError(
                FlowCode.TIMEOUT,
                f"no answer from {self.side.peer_site} within {timeout:g} s")
        if self.refusal is not None:
            raise self.refusal

    def reset(self, code: FlowCode, reason: str) -> None:
        """Our local end failed: tell the far end and stop the data path."""
        if self.reset_reason is None:
            self.reset_reason, self.reset_code = reason, code
            self.side.reset(code, reason)
        self._stop()

    def _stop(self) -> None:
        """End the data path: now if it runs, as it starts if it has not yet."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    def _run_in(self, scope: trio.CancelScope) -> None:
        """The data path runs in `scope` from now on."""
        self._scope = scope
        if self._stopped:
            scope.cancel()


class PendingOpen:
    """The handler of an incoming OPEN until the serving side has its end: keeps the
    early data and FIN that may come with the OPEN (bounded by the HELLO's early_bytes,
    which the link enforces) and notes a reset (the opener gave up)."""

    def __init__(self, side: FlowSide) -> None:
        self.side = side
        self.reset_reason: str | None = None
        self._early: list[bytes] = []
        self._fin = False

    def hand_over(self, handler: FlowHandler) -> None:
        """From now on `handler` gets the flow's events, starting with the early ones."""
        self.side.attach(handler)
        early, self._early = self._early, []
        for data in early:
            handler.on_data(data)
        if self._fin:
            handler.on_fin()

    def on_reset(self, code: FlowCode, reason: str) -> None:
        self.reset_reason = reason
        self._early.clear()

    def on_data(self, data: bytes) -> None:
        self._early.append(data)

    def on_fin(self) -> None:
        self._fin = True

    def on_accepted(self, window: int, trace: tuple[str, ...], server: str) -> None: ...
    def on_refused(self, code: FlowCode, reason: str) -> None: ...
    def on_credit(self) -> None: ...


ServeIncoming = Callable[[PendingOpen, FlowEntry, Open], Awaitable[None]]


def accept_incoming(table: FlowTable, side: FlowSide, open_msg: Open,
                    serve: ServeIncoming) -> None:
    """An OPEN this site serves (from the link reader: must not block): registered in
    the table, held by a PendingOpen, and served by `serve` in the flows' nursery.
    `serve` guards itself (net.errors.ended_quietly): a wrapper such as `guarded` would
    be one more coroutine frame for as long as the flow is open."""
    entry = table.begin(open_msg.routing_key, "connector", client=open_msg.client_addr,
                        trace=(*open_msg.trace, table.router_id),
                        listener_site=open_msg.origin_site)
    pending = PendingOpen(side)
    side.attach(pending)
    table.spawn(serve, pending, entry, open_msg)
