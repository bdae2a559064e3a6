"""The connector's connections to its HTTP targets, pooled per target.

HTTP/1.1 (h11): one request at a time per connection (no pipelining); a connection
goes back to the pool only after a complete request and a complete keep-alive
response, and waits there watched (a backend that closes it or sends garbage while
idle drops it) for at most the idle time. HTTP/2 (h2, cleartext prior knowledge):
one connection carries many concurrent streams; a new one is opened when the
backend's MAX_CONCURRENT_STREAMS is full, and a connection past GOAWAY takes no new
streams. Flow control: we acknowledge received DATA only once the flow took it, so
the backend's window follows the flow's credit.
"""

from __future__ import annotations

import contextlib
import select
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
import trio

from router.errors import VanError
from router.net.sockets import abort_socket, receive_some, send_all

Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]
READ_CHUNK = 64 * 1024
IDLE_PER_TARGET = 64  # keep-alive HTTP/1.1 connections kept per target
IDLE_TIMEOUT_S = 30.0  # an idle connection is closed after this
H2_WINDOW = 1024 * 1024  # our receive window per stream (bytes the backend may send ahead)


class BackendError(VanError):
    """The backend broke the exchange (garbage, a reset, a dead connection)."""


class StreamRefused(BackendError):
    """HTTP/2: the backend refused the stream before processing it (REFUSED_STREAM, or
    the stream was past GOAWAY's last stream id): safe to retry elsewhere."""


async def close_stream(stream: trio.abc.Stream, *, abort: bool = False) -> None:
    if abort:
        abort_socket(stream)
    with trio.CancelScope(shield=True):
        await stream.aclose()


# ---- HTTP/1.1
class H1Conn:
    def __init__(self, stream: trio.abc.Stream, endpoint: str) -> None:
        self.stream = stream
        self.endpoint = endpoint
        self.h11 = h11.Connection(h11.CLIENT)
        self.broken = False

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await send_all(self.stream, data)

    async def next_event(self) -> h11.Event:
        """The backend's next event; BackendError on garbage or a dead connection."""
        try:
            while True:
                event = self.h11.next_event()
                if event is not h11.NEED_DATA:
                    assert not isinstance(event, type)  # PAUSED: we never pipeline
                    return event
                self.h11.receive_data(await receive_some(self.stream, READ_CHUNK))
        except h11.RemoteProtocolError as exc:
            raise BackendError(f"{self.endpoint}: bad HTTP/1.1 from backend: {exc}") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise BackendError(f"{self.endpoint}: connection lost: {exc or 'closed'}") from None

    def event_at_hand(self) -> h11.Event | None:
        """The next event if it needs no read (None: it does, or the response ended);
        BackendError on garbage."""
        try:
            event = self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise BackendError(f"{self.endpoint}: bad HTTP/1.1 from backend: {exc}") from None
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return None
        assert not isinstance(event, type)
        return event

    def reusable(self) -> bool:
        """Both messages complete and keep-alive: ready for the next request."""
        if self.broken or self.h11.our_state is not h11.DONE \
                or self.h11.their_state is not h11.DONE:
            return False
        try:
            self.h11.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        return True


@dataclass(eq=False)
class H1Pool:
    """Idle keep-alive connections to one target (most recently used last).

    No task watches an idle connection (that cost a task, two epoll changes and a
    cancel per request): `take` checks that it is quiet (a backend that closed it, or
    sent bytes unasked, made it readable) and not past the idle timeout, and one
    sweeper per pool closes those left idle too long.
    """

    endpoint: str
    nursery: Callable[[], trio.Nursery]
    max_idle: int = IDLE_PER_TARGET
    idle_timeout: float = IDLE_TIMEOUT_S
    idle: list[tuple[H1Conn, float]] = field(default_factory=list)  # (conn, idle since)
    opened: int = 0  # connections made to this target, ever
    _sweeping: bool = False

    def take(self) -> H1Conn | None:
        now = trio.current_time()
        while self.idle:
            conn, since = self.idle.pop()
            if not conn.broken and now - since < self.idle_timeout and is_quiet(conn.stream):
                return conn
            _close_now(conn.stream)
        return None

    async def put(self, conn: H1Conn, *, unused: bool = False) -> None:
        """Back to the pool after an exchange (`unused`: no request was sent on it)."""
        if ((unused and not conn.broken) or conn.reusable()) and len(self.idle) < self.max_idle:
            self.idle.append((conn, trio.current_time()))
            if not self._sweeping:
                self._sweeping = True
                self.nursery().start_soon(self._sweep)
        else:
            await close_stream(conn.stream)

    async def _sweep(self) -> None:
        """Close what stayed idle past the timeout (or broke); ends when none is idle."""
        try:
            while self.idle:
                await trio.sleep(self.idle_timeout / 4)
                now = trio.current_time()
                keep = []
                for conn, since in self.idle:
                    if now - since < self.idle_timeout and is_quiet(conn.stream):
                        keep.append((conn, since))
                    else:
                        _close_now(conn.stream)
                self.idle[:] = keep
        finally:
            self._sweeping = False

    async def aclose(self) -> None:
        while (conn := self.take()) is not None:
            await close_stream(conn.stream)


def is_quiet(stream: trio.abc.Stream) -> bool:
    """An idle keep-alive connection has nothing to read: EOF or stray bytes mean the
    backend closed it or broke the protocol (one poll, no wait)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    try:
        return not poller.poll(0)
    except OSError:
        return False


def _close_now(stream: trio.abc.Stream) -> None:
    sock = getattr(stream, "socket", None)
    if sock is not None:
        sock.close()



# ---- HTTP/2
@dataclass(eq=False)
class H2Stream:
    conn: H2Conn
    id: int = 0
    events: deque[h2.events.Event] = field(default_factory=deque)
    lost: str | None = None  # the connection died, why
    response_started: bool = False
    _ready: trio.Event = field(default_factory=trio.Event)
    _window: trio.Event = field(default_factory=trio.Event)

    async def next_event(self) -> h2.events.Event:
        while not self.events:
            if self.lost is not None:
                raise BackendError(self.lost)
            self._ready = trio.Event()
            await self._ready.wait()
        return self.events.popleft()

    async def send_data(self, data: bytes, *, end: bool = False) -> None:
        """DATA within the backend's flow-control windows."""
        h2c = self.conn.h2
        view = memoryview(data)
        while view:
            self._check()
            n = min(h2c.local_flow_control_window(self.id), h2c.max_outbound_frame_size,
                    len(view))
            if n <= 0:
                self._window = trio.Event()
                await self._window.wait()
                continue
            h2c.send_data(self.id, bytes(view[:n]))
            view = view[n:]
            await self.conn.flush()
        if end:
            self._check()
            h2c.end_stream(self.id)
            await self.conn.flush()

    async def send_headers(self, headers: list[tuple[bytes, bytes]], *, end: bool) -> None:
        self._check()
        if not self.id:
            self.id = self.conn.h2.get_next_available_stream_id()
            self.conn.streams[self.id] = self
        self.conn.h2.send_headers(self.id, headers, end_stream=end)
        await self.conn.flush()

    async def ack(self, n: int) -> None:
        """`n` flow-controlled bytes were delivered: open the backend's window again."""
        if self.lost is None and n:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.conn.h2.acknowledge_received_data(n, self.id)
            await self.conn.flush()

    def _check(self) -> None:
        if self.lost is not None:
            raise BackendError(self.lost)

    def wake(self) -> None:
        self._ready.set()
        self._window.set()

    def release(self) -> None:
        """The exchange is over: reset the stream if still open, free its slot."""
        if self.id and self.conn.streams.pop(self.id, None) is not None and self.lost is None:
            with contextlib.suppress(h2.exceptions.H2Error):
                if self.conn.h2.streams.get(self.id) is not None \
                        and not self.conn.h2.streams[self.id].closed:
                    self.conn.h2.reset_stream(self.id, h2.errors.ErrorCodes.CANCEL)
                    # now, not with the next stream's frames: the backend may be silent
                    self.conn.pool.nursery().start_soon(_flush_quietly, self.conn)
        self.conn.active -= 1
        self.conn.pool.released(self.conn)


class H2Conn:
    def __init__(self, stream: trio.abc.Stream, pool: H2Pool) -> None:
        self.stream = stream
        self.pool = pool
        self.h2 = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.streams: dict[int, H2Stream] = {}
        self.active = 0  # exchanges holding a slot (streams opened or about to be)
        self.closed: str | None = None
        self.goaway = False
        self._lock = trio.Lock()

    @property
    def has_room(self) -> bool:
        return (self.closed is None and not self.goaway
                and self.active < self.h2.remote_settings.max_concurrent_streams)

    async def start(self) -> None:
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: H2_WINDOW})
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(16 * H2_WINDOW)
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            data = self.h2.data_to_send()
            if data:
                try:
                    await self.stream.send_all(data)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._lose(f"{self.pool.endpoint}: connection lost: {exc or 'closed'}")
                    raise BackendError(self.closed) from None

    async def run(self) -> None:
        """Read the backend until the connection ends; hand events to their streams."""
        why = f"{self.pool.endpoint}: backend closed the HTTP/2 connection"
        try:
            while self.closed is None:
                data = await self.stream.receive_some(READ_CHUNK)
                if not data:
                    break
                for event in self.h2.receive_data(data):
                    self._dispatch(event)
                await self.flush()
        except h2.exceptions.ProtocolError as exc:
            why = f"{self.pool.endpoint}: bad HTTP/2 from backend: {exc}"
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            with contextlib.suppress(BackendError):
                await self.flush()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, BackendError) as exc:
            why = f"{self.pool.endpoint}: connection lost: {exc or 'closed'}"
        finally:
            self._lose(why)
            await close_stream(self.stream)

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True
            last = event.last_stream_id or 0
            for sid, gone in list(self.streams.items()):
                if sid > last:
                    gone.events.append(h2.events.StreamReset(  # never processed: as refused
                        stream_id=sid, error_code=h2.errors.ErrorCodes.REFUSED_STREAM))
                    gone.wake()
            return
        if isinstance(event, h2.events.WindowUpdated) and not event.stream_id:
            for st in self.streams.values():
                st.wake()
            return
        if isinstance(event, h2.events.RemoteSettingsChanged):
            for st in self.streams.values():
                st.wake()  # INITIAL_WINDOW_SIZE may have changed
            return
        found = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if found is None:
            return
        st = found
        if isinstance(event, h2.events.WindowUpdated):
            st._window.set()
            return
        st.events.append(event)
        st._ready.set()

    def _lose(self, why: str) -> None:
        if self.closed is None:
            self.closed = why
            for st in self.streams.values():
                st.lost = why
                st.wake()
            self.pool.released(self)


@dataclass(eq=False)
class H2Pool:
    """HTTP/2 connections to one target, shared by concurrent exchanges."""

    endpoint: str
    nursery: Callable[[], trio.Nursery]
    conns: list[H2Conn] = field(default_factory=list)
    opened: int = 0
    connecting: trio.Lock = field(default_factory=trio.Lock)

    def take(self) -> H2Stream | None:
        for conn in self.conns:
            if conn.has_room:
                conn.active += 1
                return H2Stream(conn)
        return None

    async def add(self, stream: trio.abc.Stream) -> H2Stream:
        """A new connection on `stream` (just connected), with one slot taken."""
        conn = H2Conn(stream, self)
        try:
            await conn.start()
        except BaseException:
            await close_stream(stream, abort=True)
            raise
        self.conns.append(conn)
        self.opened += 1
        conn.active += 1
        self.nursery().start_soon(conn.run)
        return H2Stream(conn)

    def released(self, conn: H2Conn) -> None:
        """Drop a connection that is closed, or past GOAWAY, once its streams ended;
        keep a spare idle one only if it is the last."""
        if conn.active or conn not in self.conns:
            return
        if conn.closed is not None or conn.goaway or len(self.conns) > 1:
            self.conns.remove(conn)
            if conn.closed is None:
                conn.closed = f"{self.endpoint}: idle connection closed"
                with contextlib.suppress(h2.exceptions.H2Error):
                    conn.h2.close_connection()
                self.nursery().start_soon(_close_after_flush, conn)

    async def aclose(self) -> None:
        for conn in list(self.conns):
            conn.closed = conn.closed or f"{self.endpoint}: connector closed"
            await close_stream(conn.stream)
        self.conns.clear()


async def _close_after_flush(conn: H2Conn) -> None:
    with contextlib.suppress(BackendError):
        data = conn.h2.data_to_send()
        if data:
            with trio.move_on_after(1), contextlib.suppress(
                    OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                await conn.stream.send_all(data)
    await close_stream(conn.stream)


async def _flush_quietly(conn: H2Conn) -> None:
    with contextlib.suppress(BackendError):  # a lost connection: `run` says why
        await conn.flush()
