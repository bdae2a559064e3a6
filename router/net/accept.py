"""Accept loops that outlive running out of file descriptors, buffers or memory.

trio.serve_listeners pauses and retries on EMFILE/ENFILE/ENOMEM/ENOBUFS but logs each
retry (ten lines a second at the limit). These loops pause the same way with one line
per LOG_INTERVAL_S, and, given an FdReserve, shed waiting clients at the fd limit
(libuv's trick): accept on the spare descriptor and close at once, so the client
learns now that it cannot be served instead of hanging in the backlog. The control
socket instead serves on its spare, one client at a time.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import NoReturn, Protocol

import trio

from router.net.errors import ended_quietly
from router.net.logthrottle import LogThrottle
from router.net.sockets import abort_socket

log = logging.getLogger("router.accept")

PAUSE_S = 0.1  # as trio.serve_listeners
LOG_INTERVAL_S = 10.0
FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})

Handler = Callable[[trio.SocketStream], Awaitable[object]]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class Listener(Protocol):
    """What the loop needs of a listener (trio.SocketListener has it): the socket, to
    see when a client is waiting."""

    @property
    def socket(self) -> _HasFileno: ...

    async def accept(self) -> trio.SocketStream: ...

    async def aclose(self) -> None: ...


class FdReserve:
    """One spare descriptor, let go at the fd limit to accept a client on.

    One per process is enough for shedding: a loop has it out only across one accept
    (trio runs one task at a time, so nothing else takes the freed slot meanwhile),
    and a loop that finds it out pauses instead.
    """

    def __init__(self) -> None:
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def refill(self) -> bool:
        """Take the spare back if it is not held; False if no descriptor is free."""
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def release(self) -> bool:
        """Free the spare for the next accept; False if there was none to free."""
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True

    def close(self) -> None:
        self.release()

    def __enter__(self) -> FdReserve:
        self.refill()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


async def _accept_on_spare(listener: Listener,
                           reserve: FdReserve) -> trio.SocketStream | None:
    """At the fd limit: accept one waiting client on the spare descriptor.

    None (and the spare kept) if nobody was waiting, after a pause, or there was no
    spare to use.
    """
    with trio.move_on_after(PAUSE_S) as waited:
        await trio.lowlevel.wait_readable(listener.socket)
    if waited.cancelled_caught or not reserve.release():
        return None
    stream = None
    try:
        # Readable, so accept does not block; the deadline covers a client that reset
        # in between (it leaves the queue), when the spare would be out for too long.
        with trio.move_on_after(PAUSE_S):
            stream = await listener.accept()
    except OSError:
        pass
    finally:
        if stream is None:
            reserve.refill()
    return stream


async def _run_handler(handler: Handler, what: str, stream: trio.SocketStream,
                       spare: FdReserve | None = None) -> None:
    """One client's task, guarded as `guarded` does it (here, not in a wrapper of the
    handler: a coroutine frame less for every open connection)."""
    try:
        await handler(stream)
    except BaseException as exc:
        if not ended_quietly(what, exc):
            raise
    finally:
        stream.socket.close()  # (SocketStream.aclose, minus a checkpoint per client)
        if spare is not None:
            spare.refill()  # this client had the spare descriptor


async def accept_loop(listener: Listener, handler: Handler, what: str,
                      handler_nursery: trio.Nursery, name: str,
                      reserve: FdReserve | None = None, serve_at_limit: bool = False,
                      ) -> NoReturn:
    """Accept on `listener` forever, starting `handler(stream)` in `handler_nursery`
    for each client, guarded (`what` names it in the log if it fails).

    At the fd limit, with a `reserve`: shed waiting clients (accept, close at once),
    or with `serve_at_limit` serve them one at a time on the spare (for the control
    socket: the moment a router is out of descriptors is when its operator asks).
    """
    throttle = LogThrottle(LOG_INTERVAL_S)
    if reserve is not None:
        reserve.refill()
    try:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Any accept error is about the system or one client, not this loop:
                # capacity errors (trio's list) and errors a client's connection
                # passed on before it was accepted. Pause so none becomes a busy loop.
                spare = None
                if reserve is not None and exc.errno in FD_ERRNOS:
                    spare = await _accept_on_spare(listener, reserve)
                if spare is None:
                    action = f"retrying in {PAUSE_S:g} s"
                elif serve_at_limit:
                    action = "serving one client at a time on a spare descriptor"
                    handler_nursery.start_soon(_run_handler, handler, what, spare, reserve)
                else:
                    action = "closing new clients at once"
                    abort_socket(spare)  # a reset: the client knows it was not served
                    spare.socket.close()  # synchronous: the descriptor is free to refill
                    assert reserve is not None
                    reserve.refill()
                throttle.log(log, logging.WARNING, trio.current_time(),
                             "%s: accept failed: %s; %s", name, _describe(exc), action)
                if spare is None:
                    await trio.sleep(PAUSE_S)
                continue
            if reserve is not None:
                reserve.refill()
            handler_nursery.start_soon(_run_handler, handler, what, stream)
    finally:
        await listener.aclose()


async def serve_listeners(handler: Handler, listeners: Sequence[Listener], *,
                          what: str, name: str, handler_nursery: trio.Nursery | None = None,
                          reserve: FdReserve | None = None, serve_at_limit: bool = False,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                          ) -> NoReturn:
    """trio.serve_listeners with accept_loop's behaviour at the limits."""
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, handler, what,
                               handler_nursery or nursery, name, reserve, serve_at_limit)
        task_status.started()
    raise AssertionError("accept loops never return")


def _describe(exc: OSError) -> str:
    if exc.errno is None:
        return str(exc)
    code = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{code} ({os.strerror(exc.errno)})"
