"""A flow that carries one HTTP message each way, as parts (see `message.py`).

`send` writes a part into the flow within the peer's credit (waiting for credit and
for the link to drain, so a slow far end slows this request only); `receive` returns
the next part of the peer's message and grants credit back only for the bytes it
handed out, so a body is never held whole. Both HTTP sides (listener and connector)
use it.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable

import trio

from router.adaptors.http.message import (
    MessageError,
    MessageLimits,
    MessageReader,
    Part,
    RequestHead,
    encode,
)
from router.errors import VanError
from router.flows.end import FlowEnd
from router.flows.entry import FlowEntry
from router.net.side import FlowSide
from router.protocol import FlowCode, FlowError

SEND_CHUNK = 64 * 1024
ACCEPT_DEFER_S = 0.5  # a deferred ACCEPT goes after this even if the backend is silent


class FlowLost(VanError):
    """The flow was reset (by the peer, a link under it, or us); the message says why,
    `code` how (None: the exchange broke off without a reset)."""

    def __init__(self, reason: str, code: FlowCode | None = None) -> None:
        super().__init__(reason)
        self.code = code

    @property
    def not_processed(self) -> bool:
        """The request provably never reached an application: a router on the path
        could not forward it, the link under it went down (as the issue's retry rules
        count it), or the serving site had no target; a reset by the target itself
        (PEER_RESET) or an internal error means it may have been processed."""
        return self.code in _NOT_PROCESSED


_NOT_PROCESSED = frozenset({FlowCode.ROUTE, FlowCode.LINK_LOST, FlowCode.NO_TARGET,
                            FlowCode.CAPACITY})


class MessageFlow(FlowEnd):
    def __init__(self, side: FlowSide, entry: FlowEntry, *, request: bool,
                 limits: MessageLimits | None = None) -> None:
        super().__init__(side, entry)
        # `request`: the parts we receive form a request (we are the connector side).
        self._reader = MessageReader(request=request, limits=limits or MessageLimits())
        self._parts: deque[Part] = deque()
        self._fin_sent = False
        self._lost = trio.Event()
        self._accept_window: int | None = None  # the ACCEPT waits for our first bytes

    # ---- answering the OPEN
    @property
    def request_arrived(self) -> bool:
        """The peer's whole message (and its half-close) came with the OPEN."""
        return self._remote_fin

    def defer_accept(self, window: int) -> None:
        """Accept the flow with our first bytes (a response head, a reset) rather than
        now: they leave in one write. `accept_now` sends it if nothing went before."""
        self._accept_window = window

    def accept_now(self, *, flush: bool = True) -> None:
        if self._accept_window is not None:
            window, self._accept_window = self._accept_window, None
            self.side.accept(window, trace=self.entry.trace, server=self.entry.server or "",
                             flush=flush)

    def expect_tunnel(self, request: RequestHead) -> None:
        """`request` (sent on this flow) proposes a protocol switch: a response that
        accepts it may be followed by tunnel bytes (see `tunnel.py`)."""
        self._reader.expect_tunnel(request)

    # ---- receiving
    async def receive(self) -> Part | None:
        """The next part of the peer's message; None once the peer half-closed after
        its message ended. FlowLost if the flow was reset; a malformed message resets
        the flow and raises FlowLost too."""
        while not self._parts:
            if self.reset_reason is not None:
                raise FlowLost(self.reset_reason, self.reset_code)
            if self._inbox:
                data = b"".join(self._inbox)
                self._inbox.clear()
                try:
                    self._parts.extend(self._reader.feed(data))
                except MessageError as exc:
                    self.reset(FlowCode.INTERNAL, f"bad HTTP message from peer: {exc}")
                    raise FlowLost(str(exc)) from None
                self.entry.bytes_in += len(data)
                self.side.grant(len(data))
                continue
            if self._remote_fin:
                if not self._reader.ended:
                    raise FlowLost("the peer ended the flow before its message ended")
                return None
            self._data_ready = trio.Event()
            await self._data_ready.wait()  # DATA, FIN or a reset (on_reset sets it)
        return self._parts.popleft()

    def ready(self) -> bool:
        """`receive` would return without waiting."""
        return bool(self._parts or self._inbox or self._remote_fin
                    or self.reset_reason is not None)

    def on_reset(self, code: FlowCode, reason: str) -> None:
        super().on_reset(code, reason)
        self._data_ready.set()
        self._credit_ready.set()
        self._lost.set()

    async def wait_lost(self) -> str:
        """Until the flow is reset (the client gave up, a link died); the reason. The
        serving side waits on it after the request ended, so a cancelled call reaches
        the backend instead of running to its end."""
        await self._lost.wait()
        return self.reset_reason or "reset"

    # ---- sending
    async def send(self, part: Part, *, more: bool = False) -> None:
        """Write one part; FlowLost if the flow is gone. `more`: another part follows
        at once, so the bytes may wait for its write (any wait here sends them first)."""
        self.accept_now(flush=False)
        record = memoryview(encode(part))
        while record:
            if self.reset_reason is not None:
                raise FlowLost(self.reset_reason, self.reset_code)
            credit = self.side.credit()
            if credit <= 0:
                self.side.link.kick()
                self._credit_ready = trio.Event()
                await self._credit_ready.wait()
                continue
            n = min(credit, len(record), SEND_CHUNK)
            try:
                self.side.send(record[:n], flush=not more)
            except FlowError as exc:
                raise FlowLost(f"flow ended: {exc}") from None
            self.entry.bytes_out += n
            record = record[n:]
            if self.side.link.over_buffer_limit:
                self.side.link.kick()
                await self.side.link.wait_drained()

    def send_nowait(self, part: Part) -> bool:
        """Write `part` now if the flow's credit (before ACCEPT: the early data the
        peer takes) holds it whole; False, having sent nothing, if not."""
        if self.reset_reason is not None:
            return False
        self.accept_now(flush=False)
        record = encode(part)
        if len(record) > self.side.credit():
            return False
        try:
            self.side.send(record)
        except FlowError:
            return False
        self.entry.bytes_out += len(record)
        return True

    def can_finish(self) -> bool:
        """`finish` would half-close now (before ACCEPT only if the peer takes early FIN)."""
        return self.side.can_fin()

    def finish(self) -> None:
        """Our message is complete: half-close the flow (after END was sent)."""
        self.accept_now(flush=False)
        if not self._fin_sent:
            self._fin_sent = True
            self.side.fin()

    def abort(self, code: FlowCode, reason: str) -> None:
        """Reset the flow (the local peer failed, or we give up on it). A deferred
        ACCEPT goes first: a reset before it would tell the opener the path failed,
        and it would send a request the backend may have seen again."""
        if self.reset_reason is None:
            self.accept_now(flush=False)
        self.reset(code, reason)

    @property
    def done(self) -> bool:
        """Both messages are complete: the flow can be released."""
        return self._fin_sent and self._remote_fin


class DeferredAccepts:
    """Flows whose ACCEPT waits for their first bytes: one task sends those still
    waiting after ACCEPT_DEFER_S (a slow backend), so the opener never times out."""

    def __init__(self, nursery: Callable[[], trio.Nursery]) -> None:
        self._nursery = nursery
        # Deadlines in order; weak, so a finished exchange is not kept for the delay.
        self._queue: deque[tuple[float, weakref.ref[MessageFlow]]] = deque()
        self._running = False

    def add(self, flow: MessageFlow) -> None:
        self._queue.append((trio.current_time() + ACCEPT_DEFER_S, weakref.ref(flow)))
        if not self._running:
            self._running = True
            self._nursery().start_soon(self._run)

    async def _run(self) -> None:
        try:
            while self._queue:
                deadline, ref = self._queue[0]
                # In ticks, not per flow: at thousands of requests a second the next
                # deadline is always a moment away, and a wake-up each would cost.
                if deadline > trio.current_time() + ACCEPT_DEFER_S / 4:
                    await trio.sleep_until(deadline)
                    continue
                self._queue.popleft()
                flow = ref()
                if flow is not None and flow.reset_reason is None:
                    flow.accept_now()
        finally:
            self._running = False
