"""One end of a flow: a local TCP socket bridged to (link, flow id).

Two tasks per flow: socket -> link (reads only as much as the peer's credit allows,
so a slow far end stops us reading, and the kernel pushes back on the client), and
link -> socket (credit is granted back only after bytes were written to the socket).
The link's reader never blocks on a flow: it appends to a buffer that the credit
window bounds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections import deque

import trio

from router.net.link import Link
from router.protocol import FlowError
from router.routing.forward import ROUTE_REFUSAL

log = logging.getLogger(__name__)

# Below glibc's 128 KiB mmap threshold: socket.recv(n) allocates n bytes up front, even
# when it then finds nothing to read, and above the threshold every call costs an
# mmap/munmap pair (measured: 14 us vs 1.3 us per call).
READ_CHUNK = 124 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)


class FlowRefusedError(Exception):
    """The OPEN did not succeed; the message carries the reason. `path_failed` is true
    when the path rather than the serving site failed (a link died under the OPEN,
    or a transit router refused for routing reasons): the same site may work again."""

    def __init__(self, reason: str, *, path_failed: bool = False) -> None:
        super().__init__(reason)
        self.path_failed = path_failed


def peer_name(sock: trio.SocketStream) -> str:
    """host:port of the other end, for logs and OPEN messages."""
    try:
        host, port = sock.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


def abort_socket(stream: trio.SocketStream) -> None:
    """Make the next close send RST: the client must see a reset, not a clean EOF."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


class SocketFlow:
    """Implements link.FlowHandler for a flow whose local end is a TCP socket."""

    def __init__(self, link: Link, *, counters: FlowCounters) -> None:
        self.link = link
        self.flow_id = 0
        self._inbox: deque[bytes] = deque()
        self._remote_fin = False
        self.reset_reason: str | None = None
        self._answer: trio.Event = trio.Event()
        self.refusal: str | None = None
        self._path_failed = False
        self._data_ready = trio.Event()
        self._credit_ready = trio.Event()
        self._scope = trio.CancelScope()
        self.counters = counters
        self._fd: int | None = None  # the local socket, once attached
        self._writing = False

    # ---- FlowHandler: called by the link reader, must not block
    def on_accepted(self, window: int) -> None:
        self._answer.set()

    def on_refused(self, reason: str) -> None:
        self.refusal = reason
        self._path_failed = reason.startswith(ROUTE_REFUSAL)
        self._answer.set()

    def on_data(self, data: bytes) -> None:
        if self._fd is not None and not self._inbox and not self._writing:
            # Fast path: hand the bytes to the kernel now, without waking our writer
            # task; one task switch less per message.
            try:
                n = os.write(self._fd, data)
            except OSError:  # would block, or broken: the writer task deals with it
                n = 0
            if n:
                self.link.conn.grant_credit(self.flow_id, n)
                self.link.kick()
                self.counters.bytes_in += n
                if n == len(data):
                    return
                data = data[n:]
        self._inbox.append(data)
        self._data_ready.set()

    def on_credit(self) -> None:
        self._credit_ready.set()

    def on_fin(self) -> None:
        self._remote_fin = True
        self._data_ready.set()

    def on_reset(self, reason: str) -> None:
        if self.reset_reason is None:
            self.reset_reason = reason
        if self.refusal is None:  # reset before any answer: the link under it died
            self.refusal = reason
            self._path_failed = True
        self._answer.set()
        self._scope.cancel()

    # ---- setup
    async def wait_answer(self, timeout: float) -> None:
        """Wait for ACCEPT; raise FlowRefusedError with the reason otherwise."""
        with trio.move_on_after(timeout):
            await self._answer.wait()
        if not self._answer.is_set():
            self.link.conn.reset_flow(self.flow_id, "open timed out")
            self.link.release(self.flow_id)
            self.link.kick()
            raise FlowRefusedError(f"no answer from {self.link.peer_site} within {timeout:g} s")
        if self.refusal is not None:
            raise FlowRefusedError(self.refusal, path_failed=self._path_failed)

    # ---- the pump
    async def run(self, sock: trio.SocketStream) -> None:
        """Pump until both directions finished or the flow is reset; closes `sock`."""
        self._fd = sock.socket.fileno()
        failure: str | None = None
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._socket_to_link, sock)
                    nursery.start_soon(self._link_to_socket, sock)
        except trio.Cancelled:
            failure = "flow cancelled: router shutting down"
            raise
        except BaseException:
            failure = "internal error in this router"
            raise
        finally:
            self._fd = None
            if self.reset_reason is None and failure is not None:
                # Both ends must see a reset, never an EOF that looks like a whole transfer.
                self.reset_reason = failure
                if self.link.closed_reason is None:
                    self.link.conn.reset_flow(self.flow_id, failure)
                    self.link.kick()
            if self.reset_reason is not None:
                abort_socket(sock)
                log.debug("flow %d reset: %s", self.flow_id, self.reset_reason)
            self.link.release(self.flow_id)
            with trio.CancelScope(shield=True):
                await sock.aclose()

    def _reset(self, reason: str) -> None:
        """Our local socket failed: tell the far end and stop both directions."""
        if self.reset_reason is None:
            self.reset_reason = reason
            self.link.conn.reset_flow(self.flow_id, reason)
            self.link.kick()
        self._scope.cancel()

    async def _socket_to_link(self, sock: trio.SocketStream) -> None:
        conn, link, fid = self.link.conn, self.link, self.flow_id
        fd = sock.socket.fileno()
        more = False  # did the last read fill its buffer (so more is likely waiting)?
        while True:
            credit = conn.credit(fid)
            while credit <= 0:
                self._credit_ready = trio.Event()
                await self._credit_ready.wait()
                credit = conn.credit(fid)
            # Small messages: wait first, then read once (no read that finds nothing).
            # Bulk: read first, with a checkpoint so other tasks still get their turn.
            if more:
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.wait_readable(fd)
            want = min(credit, READ_CHUNK)
            try:
                data = os.read(fd, want)
            except BlockingIOError:
                more = False
                continue
            except OSError as exc:
                self._reset(f"connection reset by local peer: {exc.strerror or exc}")
                return
            more = len(data) == want
            if not data:
                try:
                    conn.send_fin(fid)
                except FlowError:
                    return  # reset meanwhile; on_reset cancels us
                link.kick()
                return
            try:
                conn.send_data(fid, data)
            except FlowError as exc:
                self._reset(f"flow error: {exc}")
                return
            self.counters.bytes_out += len(data)
            link.kick()
            if conn.outgoing_bytes > link.buffer_limit:
                await link.wait_drained()

    async def _link_to_socket(self, sock: trio.SocketStream) -> None:
        conn, link, fid, inbox = self.link.conn, self.link, self.flow_id, self._inbox
        while True:
            while not inbox and not self._remote_fin:
                self._data_ready = trio.Event()
                await self._data_ready.wait()
            if inbox:
                data = inbox.popleft() if len(inbox) == 1 else b"".join(inbox)
                inbox.clear()
                self._writing = True
                try:
                    await sock.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._reset(f"connection reset by local peer: {exc}")
                    return
                finally:
                    self._writing = False
                self.counters.bytes_in += len(data)
                conn.grant_credit(fid, len(data))
                link.kick()
                continue
            # Peer half-closed and everything it sent was delivered.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await sock.send_eof()
            return


class FlowCounters:
    """Bytes moved by flows, for status and metrics."""

    __slots__ = ("active", "bytes_in", "bytes_out", "opened", "refused")

    def __init__(self) -> None:
        self.active = 0
        self.opened = 0
        self.refused = 0
        self.bytes_in = 0
        self.bytes_out = 0
