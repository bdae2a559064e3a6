"""A flow whose local end is any trio stream (a memory stream in tests, TLS later).

The same two directions as `SocketFlow`, without its file-descriptor fast paths:
socket -> link within the peer's credit, link -> stream with credit granted back
only for bytes the stream took.
"""

from __future__ import annotations

import contextlib
import time

import trio

from router.flows.end import FlowEnd
from router.flows.entry import FlowEntry
from router.net.errors import only
from router.net.side import FlowSide
from router.net.sockets import READ_CHUNK
from router.protocol import FlowCode, FlowError


class StreamFlow(FlowEnd):
    def __init__(self, side: FlowSide, entry: FlowEntry) -> None:
        super().__init__(side, entry)
        # Time to first byte: a listener's from the link, a connector's from its target.
        self._ttfb_in = entry.role == "listener"

    async def run(self, stream: trio.abc.Stream) -> None:
        """Pump until both directions finished or the flow is reset; closes `stream`."""
        try:
            async with trio.open_nursery() as nursery:
                self._run_in(nursery.cancel_scope)
                nursery.start_soon(self._stream_to_link, stream)
                nursery.start_soon(self._link_to_stream, stream)
        except BaseException as exc:
            if only(exc, (trio.Cancelled,)) is not None:
                self.reset(FlowCode.SHUTDOWN, "flow cancelled: router shutting down")
            else:
                self.reset(FlowCode.INTERNAL, "internal error in this router")
            raise
        finally:
            self.side.release()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _stream_to_link(self, stream: trio.abc.Stream) -> None:
        while True:
            while self.side.credit() <= 0:
                self._credit_ready = trio.Event()
                await self._credit_ready.wait()
            try:
                data = await stream.receive_some(min(self.side.credit(), READ_CHUNK))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.reset(FlowCode.PEER_RESET, f"local stream failed: {exc}")
                return
            if not data:
                self.side.fin()
                return
            try:
                self.side.send(data)
            except FlowError as exc:
                self.reset(FlowCode.INTERNAL, f"flow error: {exc}")
                return
            self.entry.bytes_out += len(data)
            if self.entry.ttfb_s is None and self.entry.role == "connector":
                self.entry.ttfb_s = max(0.0, time.time() - self.entry.start)
            await self.side.link.wait_drained()

    async def _link_to_stream(self, stream: trio.abc.Stream) -> None:
        inbox = self._inbox
        while True:
            while not inbox and not self._remote_fin:
                self._data_ready = trio.Event()
                await self._data_ready.wait()
            if inbox:
                data = b"".join(inbox)
                inbox.clear()
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.reset(FlowCode.PEER_RESET, f"local stream failed: {exc}")
                    return
                self.entry.bytes_in += len(data)
                self.side.grant(len(data))
                continue
            if isinstance(stream, trio.abc.HalfCloseableStream):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_eof()
            return
