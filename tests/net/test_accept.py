"""The shared accept loop: out of descriptors (or buffers, or memory) it pauses and
retries, logs one line per interval, and with a spare descriptor sheds waiting
clients at once. Faked listeners, trio's autojump clock: no real waiting."""

from __future__ import annotations

import errno
import logging
import resource
import socket
from functools import partial

import pytest
import trio
import trio.testing

from router.daemon.main import raise_fd_limit
from router.net.accept import LOG_INTERVAL_S, PAUSE_S, FdReserve, accept_loop, serve_listeners


def _stream_pair() -> tuple[trio.SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


class ScriptedListener(trio.abc.Listener[trio.SocketStream]):
    """accept() raises or returns what the script says, in order, then blocks."""

    def __init__(self, script: list[OSError | trio.SocketStream]) -> None:
        self.script = script
        self.calls = 0
        self.closed = False
        # Stands for the listening socket: readable once a byte is fed in.
        self.socket, self._feeder = socket.socketpair()

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        if not self.script:
            await trio.sleep_forever()
        item = self.script.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    async def aclose(self) -> None:
        self.socket.close()
        self._feeder.close()
        self.closed = True


def _accept_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "router.accept" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                                  errno.ECONNRESET])
async def test_accept_errors_pause_and_retry_with_one_log_line(
        code: int, autojump_clock: trio.testing.MockClock,
        caplog: pytest.LogCaptureFixture) -> None:
    stream, peer = _stream_pair()
    failures = 5
    listener = ScriptedListener([*(OSError(code, "x") for _ in range(failures)), stream])
    served: list[trio.SocketStream] = []
    done = trio.Event()

    async def handler(s: trio.SocketStream) -> None:
        served.append(s)
        done.set()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, listener, handler, "test", nursery, "test port")
        await done.wait()
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert served == [stream]
    assert elapsed == pytest.approx(failures * PAUSE_S)  # paused after each failure
    warnings = _accept_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert f"test port: accept failed: {errno.errorcode[code]}" in warnings[0]
    assert listener.closed
    peer.close()


async def test_a_handler_that_fails_is_logged_under_its_name_and_its_client_closed(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    # After an accept error too: the loop's own words for that error are not the name.
    streams = [_stream_pair() for _ in range(2)]
    listener = ScriptedListener([streams[0][0], OSError(errno.EMFILE, "x"), streams[1][0]])
    failed: list[trio.SocketStream] = []

    async def handler(s: trio.SocketStream) -> None:
        failed.append(s)
        raise RuntimeError("a bug")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, listener, handler, "client of db", nursery, "port")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert len(failed) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["client of db failed with an internal error"] * 2, errors
    for stream, peer in streams:
        assert stream.socket.fileno() == -1  # closed by the loop
        assert peer.recv(1) == b""
        peer.close()


async def test_a_long_outage_logs_once_per_interval_with_a_count(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    outage_s = 3 * LOG_INTERVAL_S
    failures = round(outage_s / PAUSE_S)
    listener = ScriptedListener([OSError(errno.EMFILE, "x") for _ in range(failures)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, listener, _never_called, "test", nursery, "test port")
        await trio.sleep(outage_s + 1)
        nursery.cancel_scope.cancel()
    warnings = _accept_warnings(caplog)
    assert listener.calls == failures + 1  # it kept trying, and is waiting again
    assert 3 <= len(warnings) <= 4, warnings
    assert "more like it since the last report" in warnings[1]


async def _never_called(stream: trio.SocketStream) -> None:
    raise AssertionError("no client should reach the handler")


class FdLimitedListener(ScriptedListener):
    """At the fd limit: one descriptor is free only while the reserve has let its
    spare go and no client accepted on it is still open. Its socket is readable, as
    when clients wait in the backlog."""

    def __init__(self, reserve: FdReserve, clients: list[trio.SocketStream]) -> None:
        super().__init__([])
        self.reserve = reserve
        self.clients = clients
        self.accepted: list[trio.SocketStream] = []
        self._feeder.send(b"!")

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        if self.reserve.held or any(s.socket.fileno() != -1 for s in self.accepted):
            raise OSError(errno.EMFILE, "Too many open files")
        if not self.clients:
            await trio.sleep_forever()
        self.accepted.append(self.clients.pop(0))
        return self.accepted[-1]


async def test_at_the_fd_limit_waiting_clients_are_closed_at_once(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    pairs = [_stream_pair() for _ in range(5)]
    with FdReserve() as reserve:
        listener = FdLimitedListener(reserve, [ours for ours, _ in pairs])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_loop, listener, _never_called, "test", nursery, "test port",
                               reserve)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        assert reserve.held  # the spare is back after each use
    for _, theirs in pairs:
        assert theirs.recv(1) == b""  # the client saw its connection closed
        theirs.close()
    warnings = _accept_warnings(caplog)
    assert len(warnings) == 1 and "closing new clients at once" in warnings[0], warnings


async def test_serve_listeners_runs_handlers_in_the_given_nursery(
        autojump_clock: trio.testing.MockClock) -> None:
    streams = [_stream_pair() for _ in range(3)]
    listeners = [ScriptedListener([ours]) for ours, _ in streams]
    seen: list[trio.SocketStream] = []

    async def handler(s: trio.SocketStream) -> None:
        seen.append(s)
        await trio.sleep_forever()

    async with trio.open_nursery() as handlers:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_listeners, handler, listeners, what="test",
                                        name="test port", handler_nursery=handlers))
            await trio.sleep(1)
            assert len(seen) == 3
            nursery.cancel_scope.cancel()  # stops accepting; handlers live on
        await trio.sleep(1)
        assert len(seen) == 3
        handlers.cancel_scope.cancel()
    for _, theirs in streams:
        assert theirs.recv(1) == b""  # each handler's stream was closed when it ended
        theirs.close()


def test_the_router_raises_its_soft_fd_limit_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        raise_fd_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_the_control_socket_serves_one_client_at_a_time_on_its_spare(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    pairs = [_stream_pair() for _ in range(3)]
    served: list[trio.SocketStream] = []
    gate = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        served.append(stream)
        await gate.wait()

    with FdReserve() as reserve:
        listener = FdLimitedListener(reserve, [ours for ours, _ in pairs])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_loop, listener, handler, "test", nursery, "control", reserve,
                               True)
            await trio.sleep(1)
            assert len(served) == 1 and not reserve.held  # the first one has the spare
            gate.set()  # handlers now return at once
            await trio.sleep(1)
            assert served == [ours for ours, _ in pairs]
            nursery.cancel_scope.cancel()
        assert reserve.held
    for _, theirs in pairs:
        theirs.close()
    warnings = _accept_warnings(caplog)
    assert len(warnings) == 1 and "one client at a time" in warnings[0], warnings
