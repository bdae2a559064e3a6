"""A flow whose local end is a TCP socket: the data path of the TCP adaptor.

Two directions: socket -> link (reads only as much as the peer's credit allows, so a
slow far end stops us reading, and the kernel pushes back on the client), and link ->
socket (credit is granted back only after bytes were written to the socket). The
link's reader never blocks on a flow: it writes to the socket while the kernel takes
the bytes, and appends the rest to a buffer that the credit window bounds.

One task per flow end, most of the time: the flow's own task reads the socket, and
the link reader writes to it. A second task is started only when a write would block
(a client that reads slowly, a bulk download) while the first still reads; once the
socket reached EOF, the first task delivers the rest itself. A task, a nursery's
child and two events less per flow end than a writer task per flow: less CPU per new
flow, and less memory per open one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time

import trio

from router.flows.end import FlowEnd
from router.flows.entry import FlowEntry
from router.net.errors import only
from router.net.side import FlowSide
from router.net.sockets import READ_CHUNK, abort_socket
from router.protocol import FlowCode, FlowError

log = logging.getLogger(__name__)


class SocketFlow(FlowEnd):
    """Implements link.FlowHandler for a flow whose local end is a TCP socket."""

    def __init__(self, side: FlowSide, entry: FlowEntry) -> None:
        super().__init__(side, entry)
        self._fd: int | None = None  # the local socket, once attached
        self._sock: trio.SocketStream | None = None
        self._writing = False
        self._nursery: trio.Nursery | None = None  # while the flow runs
        self._writer = False  # a task delivers link -> socket (started, or the flow's own)
        self._delivered = False  # the peer's FIN passed on: link -> socket is done
        # Time to first byte: a listener's from the link, a connector's from its target.
        self._ttfb_in = entry.role == "listener"
        self._early_rest = b""  # read before the OPEN, beyond the early credit: sent first

    def send_early(self, data: bytes) -> None:
        """What the client sent before its flow opened: as much as the peer's early credit
        takes goes with the OPEN (inside its batch), the rest first thing once the flow
        runs. The caller counts the bytes (once, whichever attempt carries them)."""
        n = min(len(data), max(0, self.side.credit()))
        if n:
            self.side.send(data[:n], flush=False)
        self._early_rest = data[n:]

    # ---- FlowHandler: called by the link reader, must not block
    def on_data(self, data: bytes) -> None:
        if self._ttfb_in:
            self._first_byte()
        if self._fd is not None and not self._inbox and not self._writing:
            # Fast path: hand the bytes to the kernel now, without waking a task; one
            # task switch less per message.
            try:
                n = os.write(self._fd, data)
            except OSError:  # would block, or broken: a writer task deals with it
                n = 0
            if n:
                self.side.grant(n)
                self.entry.bytes_in += n
                if n == len(data):
                    return
                data = data[n:]
        super().on_data(data)
        self._start_writer()

    def on_fin(self) -> None:
        super().on_fin()
        if self._sock is not None and not self._inbox and not self._writer:
            # Everything was delivered: half-close now (shutdown never blocks).
            self._writer = self._delivered = True
            # OSError: the client is gone, and our read of it says so.
            with contextlib.suppress(OSError):
                self._sock.socket.shutdown(socket.SHUT_WR)
        else:
            self._start_writer()

    def _start_writer(self) -> None:
        if not self._writer and self._nursery is not None and self._sock is not None:
            self._writer = True
            self._nursery.start_soon(self._link_to_socket, self._sock)

    # ---- the pump
    async def run(self, sock: trio.SocketStream) -> None:
        """Pump until both directions finished or the flow is reset; closes `sock`."""
        self._fd = sock.socket.fileno()
        self._sock = sock
        failure: tuple[FlowCode, str] | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._run_in(nursery.cancel_scope)
                self._nursery = nursery
                if self._inbox:  # came before we ran (early data with the OPEN): deliver
                    data = b"".join(self._inbox)  # it as if it came now, so that a
                    self._inbox.clear()  # request that fits needs no writer task
                    self.on_data(data)
                if self._remote_fin:
                    self.on_fin()  # (the same for a FIN: half-closed now if delivered)
                await self._socket_to_link(sock)
                if not self._writer:  # nothing to read any more: deliver ourselves
                    self._writer = True
                    await self._link_to_socket(sock)
        except BaseException as exc:
            # Cancellation reaches us inside the nursery's exception group.
            failure = ((FlowCode.SHUTDOWN, "flow cancelled: router shutting down")
                       if only(exc, (trio.Cancelled,)) is not None
                       else (FlowCode.INTERNAL, "internal error in this router"))
            raise
        finally:
            self._fd = self._sock = self._nursery = None
            if self.reset_reason is None and failure is not None:
                # Both ends must see a reset, never an EOF that looks like a whole transfer.
                self.reset_reason = failure[1]
                self.side.reset(*failure)
            if self.reset_reason is not None:
                abort_socket(sock)
                log.debug("flow %d reset: %s", self.side.flow_id, self.reset_reason,
                          extra={"flow_id": self.entry.id, "routing_key": self.entry.key,
                                 "link": self.side.link.name})
            self.side.release()
            # What SocketStream.aclose does, without its checkpoint: one trip through the
            # run loop less per flow, and nothing here to cancel.
            sock.socket.close()

    async def _credit(self) -> int:
        """The peer's credit for this flow, once there is some."""
        credit = self.side.credit()
        while credit <= 0:
            self._credit_ready = trio.Event()
            await self._credit_ready.wait()
            credit = self.side.credit()
        return credit

    async def _socket_to_link(self, sock: trio.SocketStream) -> None:
        side, link, entry = self.side, self.side.link, self.entry
        fd = sock.socket.fileno()
        more = False  # did the last read fill its buffer (so more is likely waiting)?
        first = entry.role == "connector"  # our target's first byte: its ttfb
        while self._early_rest:
            credit = await self._credit()
            side.send(self._early_rest[:credit])
            self._early_rest = self._early_rest[credit:]
        while True:
            credit = await self._credit()
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
                self.reset(FlowCode.PEER_RESET,
                           f"connection reset by local peer: {exc.strerror or exc}")
                return
            more = len(data) == want
            if not data:
                side.fin()  # False: reset meanwhile, and on_reset cancels us
                return
            try:
                side.send(data)
            except FlowError as exc:
                self.reset(FlowCode.INTERNAL, f"flow error: {exc}")
                return
            entry.bytes_out += len(data)
            if first:
                first = False
                entry.ttfb_s = max(0.0, time.time() - entry.start)
            if link.conn.outgoing_bytes > link.buffer_limit:
                await link.wait_drained()

    async def _link_to_socket(self, sock: trio.SocketStream) -> None:
        side, entry, inbox = self.side, self.entry, self._inbox
        while not self._delivered:
            while not inbox and not self._remote_fin:
                self._data_ready = trio.Event()
                await self._data_ready.wait()
            if inbox:
                data = inbox[0] if len(inbox) == 1 else b"".join(inbox)
                inbox.clear()
                self._writing = True
                try:
                    await sock.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.reset(FlowCode.PEER_RESET, f"connection reset by local peer: {exc}")
                    return
                finally:
                    self._writing = False
                entry.bytes_in += len(data)
                side.grant(len(data))
                continue
            # Peer half-closed and everything it sent was delivered.
            self._delivered = True
            with contextlib.suppress(OSError):  # the client is gone: our read says so
                sock.socket.shutdown(socket.SHUT_WR)  # never blocks: no checkpoint needed
            return
