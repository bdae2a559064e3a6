"""An HTTP/2 client connection (h2, sans-IO, prior knowledge): concurrent requests.

One reader feeds h2 and dispatches its events, one writer sends what h2 queued, and
each stream is a task of its own. Flow control carries through: DATA is acknowledged to
h2 only once the frontend handed it into the flow, so a slow far end slows the client's
stream, and never fills memory here. What h2 leaves to us (CVE-2023-44487, Rapid Reset;
unbounded answers to PING and SETTINGS) is bounded here: a budget of client resets, and
no reading while too many bytes wait to be sent.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from router.adaptors.http.attempt import Handler
from router.adaptors.http.hop import strip_hop_by_hop
from router.adaptors.http.message import (
    Body,
    End,
    MessageLimits,
    Part,
    RequestHead,
    ResponseHead,
    Trailers,
)

READ_BYTES = 64 * 1024
MAX_STREAMS = 100  # concurrent requests per connection
STREAM_WINDOW_BYTES = 256 * 1024  # a client may send this much of a body unacknowledged
CONNECTION_WINDOW_BYTES = 1024 * 1024  # ...and this much over all its streams
MAX_UNSENT_BYTES = 1024 * 1024  # answers queued for the client; past it we stop reading
MAX_DATA_QUEUED = 256 * 1024  # response data queued for the client; past it we wait
RESET_BUDGET = 200  # client stream resets a connection may make in a burst...
RESETS_PER_S = 20.0  # ...and the rate they are allowed at after it
GOAWAY_WAIT_S = 1.0
RST_STREAM = 0x3  # the frame type
IDLE_TIMEOUT_S = 300.0  # a connection with no request open is closed after this
_H2Error = (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError,
            h2.exceptions.FlowControlError)


class _Stream:
    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.send, self.inbox = trio.open_memory_channel[tuple[Part, int]](math.inf)
        self.scope = trio.CancelScope()
        self.unacked: deque[int] = deque()  # flow-controlled bytes of parts handed out
        self.ended_out = False  # our END_STREAM went out


class _Conn:
    def __init__(self, stream: trio.abc.Stream, handle: Handler, limits: MessageLimits,
                 client: str) -> None:
        self.stream = stream
        self.handle = handle
        self.limits = limits
        self.client = client
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW_BYTES,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_head_bytes})
        self.streams: dict[int, _Stream] = {}
        # Queued for the client, in order (HPACK needs it): what h2 answers on its own
        # (SETTINGS and PING acks, resets), which a client can make us queue without end,
        # and responses, which its windows bound. Each is counted and capped on its own,
        # so a client that writes before it reads is never stalled by its responses.
        self.out: deque[tuple[bytes, bool]] = deque()  # (bytes, control?)
        self.queued = {True: 0, False: 0}  # unsent bytes of each kind, incl. in flight
        self._out_ready = trio.Event()
        self._sent = trio.Event()  # a write finished: room for more
        self._window = trio.Event()  # the client opened a window
        self.resets = float(RESET_BUDGET)
        self._reset_at = trio.current_time()
        self.closing = False
        self._read_scope = trio.CancelScope()

    # ---- writing
    def flush(self, *, control: bool = False) -> None:
        """Queue what h2 has to send; `control`: it answers what the client sent."""
        self._queue(self.h2.data_to_send(), control=control)

    def _queue(self, data: bytes, *, control: bool) -> None:
        if data:
            self.out.append((data, control))
            self.queued[control] += len(data)
            self._out_ready.set()

    def unsent(self, control: bool) -> int:
        return self.queued[control]

    # Many tasks may wait for the same thing: each wake-up sets the current event and
    # puts a fresh one in its place.
    async def wait_room(self, *, control: bool = False) -> None:
        while self.unsent(control) > (MAX_UNSENT_BYTES if control else MAX_DATA_QUEUED):
            await self._sent.wait()

    async def drain(self) -> None:
        while self.unsent(True) or self.unsent(False):
            await self._sent.wait()

    async def wait_window(self) -> None:
        await self._window.wait()

    def _notify_window(self) -> None:
        self._window.set()
        self._window = trio.Event()

    async def writer(self) -> None:
        while True:
            while not self.out:
                self._out_ready = trio.Event()
                await self._out_ready.wait()
            chunks = list(self.out)
            self.out.clear()
            await self.stream.send_all(b"".join(data for data, _ in chunks))
            for data, control in chunks:
                self.queued[control] -= len(data)
            self._sent.set()
            self._sent = trio.Event()

    # ---- reading
    async def reader(self, first: bytes, nursery: trio.Nursery) -> None:
        data: bytes = first
        while data and not self.closing:
            try:
                events = self.h2.receive_data(data)
            except _H2Error:
                self.closing = True  # h2 queued a GOAWAY saying why
                events = []
            for event in events:
                self._on_event(event, nursery)
            answers = self.h2.data_to_send()
            self._queue(answers, control=True)
            # MadeYouReset (CVE-2025-8671): streams h2 reset for frames the client sent
            # cost the same budget as the client's own resets.
            self._spend_resets(_rst_frames(answers))
            self.flush(control=True)
            if self.closing:
                return
            await self.wait_room(control=True)  # the client must read what it asked for
            with trio.CancelScope() as self._read_scope:
                self._arm_idle()
                data = bytes(await self.stream.receive_some(READ_BYTES))
            if self._read_scope.cancelled_caught:
                self.h2.close_connection(additional_data=b"idle")
                self.flush(control=True)
                return

    def _arm_idle(self) -> None:
        """While no request is open, the read ends after IDLE_TIMEOUT_S."""
        self._read_scope.deadline = (trio.current_time() + IDLE_TIMEOUT_S if not self.streams
                                     else math.inf)

    def _on_event(self, event: h2.events.Event, nursery: trio.Nursery) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event, nursery)
        elif isinstance(event, h2.events.DataReceived):
            st = self.streams.get(event.stream_id)
            if st is None:  # the request is over: keep the connection's window open
                self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                  event.stream_id)
            else:
                st.send.send_nowait((Body(bytes(event.data)), event.flow_controlled_length))
        elif isinstance(event, h2.events.TrailersReceived):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.send.send_nowait((Trailers(_plain(event.headers)), 0))
        elif isinstance(event, h2.events.StreamEnded):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.send.send_nowait((End(), 0))
        elif isinstance(event, h2.events.StreamReset):
            self._reset(event)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._notify_window()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closing = True

    def _reset(self, event: h2.events.StreamReset) -> None:
        st = self.streams.get(event.stream_id)
        if st is not None:
            st.ended_out = True
            st.scope.cancel()  # the frontend aborts the request's flow
        if event.remote_reset:
            self._spend_resets(1)

    def _spend_resets(self, n: int) -> None:
        if not n or self.closing:
            return
        now = trio.current_time()
        self.resets = min(RESET_BUDGET, self.resets + (now - self._reset_at) * RESETS_PER_S) - n
        self._reset_at = now
        if self.resets < 0:  # Rapid Reset: requests started and cancelled in a flood
            self.h2.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                                     additional_data=b"too many stream resets")
            self.closing = True

    def _request(self, event: h2.events.RequestReceived, nursery: trio.Nursery) -> None:
        sid = event.stream_id
        assert sid is not None
        pseudo: dict[bytes, bytes] = {}
        headers: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] = []
        for name, value in event.headers:
            name, value = bytes(name), bytes(value)
            if name.startswith(b":"):
                pseudo[name] = value
            elif name == b"cookie":
                cookies.append(value)  # h2 may split them: one header again (RFC 9113 8.2.3)
            else:
                headers.append((name, value))
        if cookies:
            headers.append((b"cookie", b"; ".join(cookies)))
        if len(headers) > self.limits.max_headers:
            self._refuse(sid, 431, f"more than {self.limits.max_headers} header fields")
            return
        if pseudo.get(b":method") == b"CONNECT":  # tunnels are HTTP/1.1 only (tunnel.py)
            self._refuse(sid, 501, "CONNECT over HTTP/2 is not supported: use HTTP/1.1")
            return
        authority = pseudo.get(b":authority") or next(
            (v for n, v in headers if n == b"host"), b"")
        head = RequestHead(
            method=pseudo.get(b":method", b""), target=pseudo.get(b":path", b"/"),
            authority=authority, scheme=pseudo.get(b":scheme", b"http"),
            headers=strip_hop_by_hop(tuple((n, v) for n, v in headers if n != b"host")),
            client=self.client)
        st = _Stream(sid)
        self.streams[sid] = st
        nursery.start_soon(self._serve_stream, st, head)

    def _refuse(self, sid: int, status: int, reason: str) -> None:
        text = (reason + "\n").encode()
        self.h2.send_headers(sid, [(b":status", str(status).encode()),
                                   (b"content-type", b"text/plain; charset=utf-8"),
                                   (b"content-length", str(len(text)).encode())])
        self.h2.send_data(sid, text, end_stream=True)

    async def _serve_stream(self, st: _Stream, head: RequestHead) -> None:
        sink = _Sink(self, st)
        try:
            with st.scope:
                try:
                    await self.handle(head, _Body(self, st), sink)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    sink.reset()
        finally:
            del self.streams[st.id]
            self._arm_idle()
            if not st.ended_out:  # answered before the body ended, or given up
                _quiet(self.h2.reset_stream, st.id, h2.errors.ErrorCodes.NO_ERROR
                       if sink.done else h2.errors.ErrorCodes.INTERNAL_ERROR)
            # What the client sent that nobody will read still counts against the
            # connection's window: give it back.
            unread = sum(st.unacked)
            while True:
                try:
                    unread += st.inbox.receive_nowait()[1]
                except trio.WouldBlock:
                    break
            if unread:
                _quiet(self.h2.acknowledge_received_data, unread, st.id)
            self.flush()


class _Body:
    def __init__(self, conn: _Conn, st: _Stream) -> None:
        self._conn = conn
        self._st = st

    async def next(self) -> Body | Trailers | End:
        part, flow = await self._st.inbox.receive()
        assert isinstance(part, (Body, Trailers, End))
        if isinstance(part, Body):
            self._st.unacked.append(flow)
        return part

    def next_nowait(self) -> Body | Trailers | End | None:
        try:
            part, flow = self._st.inbox.receive_nowait()
        except trio.WouldBlock:
            return None
        assert isinstance(part, (Body, Trailers, End))
        if isinstance(part, Body):
            self._st.unacked.append(flow)
        return part

    def done(self, part: Part) -> None:
        if isinstance(part, Body) and self._st.unacked:
            flow = self._st.unacked.popleft()
            if flow:
                _quiet(self._conn.h2.acknowledge_received_data, flow, self._st.id)
                self._conn.flush()


class _Sink:
    def __init__(self, conn: _Conn, st: _Stream) -> None:
        self._conn = conn
        self._st = st
        self.started = False
        self.done = False

    async def send(self, part: Part, *, last: bool = False, more: bool = False) -> None:
        # `more` needs nothing here: the connection's writer sends what queued meanwhile.
        try:
            await self._send(part, last)
        except _H2Error as exc:  # the client reset the stream, or the connection closes
            raise trio.BrokenResourceError(f"stream {self._st.id}: {exc}") from None
        self._conn.flush()

    async def _send(self, part: Part, last: bool) -> None:
        h2c, sid = self._conn.h2, self._st.id
        if isinstance(part, ResponseHead):
            self.started = True
            headers = [(b":status", str(part.status).encode()),
                       *strip_hop_by_hop(part.headers)]
            h2c.send_headers(sid, headers, end_stream=last)
            self._ended(last)
        elif isinstance(part, Body):
            data = memoryview(part.data)
            while data:
                await self._conn.wait_room()
                room = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if room <= 0:
                    await self._conn.wait_window()
                    continue
                h2c.send_data(sid, bytes(data[:room]))
                self._conn.flush()
                data = data[room:]
        elif isinstance(part, Trailers):
            h2c.send_headers(sid, list(part.headers), end_stream=True)
            self._ended(True)
        elif isinstance(part, End) and not self._st.ended_out:
            h2c.end_stream(sid)
            self._ended(True)

    def _ended(self, last: bool) -> None:
        if last:
            self._st.ended_out = self.done = True

    def reset(self) -> None:
        if not self._st.ended_out:
            self._st.ended_out = True
            _quiet(self._conn.h2.reset_stream, self._st.id,
                   h2.errors.ErrorCodes.INTERNAL_ERROR)
            self._conn.flush()


def _quiet(fn: object, *args: object) -> None:
    """An h2 call on a stream that may be gone already."""
    with contextlib.suppress(*_H2Error):
        fn(*args)  # type: ignore[operator]


def _rst_frames(data: bytes) -> int:
    """How many RST_STREAM frames `data` (whole frames, as h2 emits them) holds."""
    count, at = 0, 0
    while at + 9 <= len(data):
        count += data[at + 3] == RST_STREAM
        at += 9 + int.from_bytes(data[at:at + 3], "big")
    return count


def _plain(headers: object) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((bytes(n), bytes(v)) for n, v in headers  # type: ignore[attr-defined]
                 if not bytes(n).startswith(b":"))


async def serve(stream: trio.abc.Stream, first: bytes, handle: Handler,
                limits: MessageLimits, client: str) -> None:
    """Serve streams until the client closes, errs, or spends its reset budget."""
    conn = _Conn(stream, handle, limits, client)
    conn.h2.initiate_connection()
    conn.h2.increment_flow_control_window(CONNECTION_WINDOW_BYTES - 65535)  # from the default
    conn.flush(control=True)  # SETTINGS first
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.writer)
            await conn.reader(first, nursery)
            with trio.move_on_after(GOAWAY_WAIT_S):  # a GOAWAY should reach the client
                await conn.drain()
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
