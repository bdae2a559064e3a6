"""An HTTP exchange whose serving site is this one: two MessagePeers joined in memory.

The listener holds one end, the connector serves the other, exactly as they would
use a flow: parts go through a small bounded channel each way (so a slow client
slows the backend read, as credit does across sites), `finish` half-closes, and
`abort` breaks both directions, so the other end sees FlowLost, never a clean end.
"""

from __future__ import annotations

import trio

from router.adaptors.http.flowmsg import FlowLost
from router.adaptors.http.message import End, Part
from router.protocol import FlowCode

PARTS_IN_FLIGHT = 8  # per direction (a part is at most one read from a socket)


class _Shared:
    def __init__(self) -> None:
        self.reason: str | None = None
        self.code: FlowCode | None = None
        self.channels: list[trio.MemorySendChannel[Part] | trio.MemoryReceiveChannel[Part]] = []
        self.aborted = trio.Event()

    def abort(self, code: FlowCode, reason: str) -> None:
        if self.reason is None:
            self.reason, self.code = reason, code
            for ch in self.channels:
                ch.close()
            self.aborted.set()


class LocalExchange:
    """One end; `local_pair` makes two joined ones. Implements MessagePeer."""

    def __init__(self, outbox: trio.MemorySendChannel[Part],
                 inbox: trio.MemoryReceiveChannel[Part], shared: _Shared) -> None:
        self._outbox = outbox
        self._inbox = inbox
        self._shared = shared
        self._ended = False  # the peer's message ended

    @property
    def reset_reason(self) -> str | None:
        return self._shared.reason

    @property
    def reset_code(self) -> FlowCode | None:
        return self._shared.code

    async def send(self, part: Part, *, more: bool = False) -> None:
        try:
            await self._outbox.send(part)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise FlowLost(self._shared.reason or "the exchange ended",
                           self._shared.code) from None
        if self._shared.reason is not None:
            raise FlowLost(self._shared.reason, self._shared.code)

    async def receive(self) -> Part | None:
        try:
            part = await self._inbox.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._shared.reason is not None:
                raise FlowLost(self._shared.reason, self._shared.code) from None
            if not self._ended:
                raise FlowLost("the peer ended the exchange before its message ended") from None
            return None
        if isinstance(part, End):
            self._ended = True
        return part

    def ready(self) -> bool:
        return (self._inbox.statistics().current_buffer_used > 0
                or self._shared.reason is not None)

    def finish(self) -> None:
        self._outbox.close()

    def abort(self, code: FlowCode, reason: str) -> None:
        self._shared.abort(code, reason)

    async def wait_lost(self) -> str:
        """Until the exchange is aborted (by either end); the reason."""
        await self._shared.aborted.wait()
        return self._shared.reason or "aborted"


def local_pair() -> tuple[LocalExchange, LocalExchange]:
    """(listener's end, connector's end)."""
    shared = _Shared()
    to_conn, from_lst = trio.open_memory_channel[Part](PARTS_IN_FLIGHT)
    to_lst, from_conn = trio.open_memory_channel[Part](PARTS_IN_FLIGHT)
    shared.channels = [to_conn, from_lst, to_lst, from_conn]
    return (LocalExchange(to_conn, from_conn, shared),
            LocalExchange(to_lst, from_lst, shared))
