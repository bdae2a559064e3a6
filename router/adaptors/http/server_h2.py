"""An HTTP/2 client connection (h2, sans-IO, prior knowledge): concurrent requests.

One reader feeds h2 and dispatches its events, one writer sends what h2 queued, and
each stream is a task of its own. Flow control carries through: DATA is acknowledged to
h2 only once the frontend handed it into the flow, so a slow far end slows the client's
stream, and never fills memory here. What h2 leaves to us (CVE-2023-44487, Rapid Reset;
unbounded answers to PING and SETTINGS) is bounded here: a budget of client resets, and
no reading while too many bytes wait to be sent; what it takes on trust in the frames
themselves (their length, header blocks, frames that carry no request) `h2guard` checks
before h2 reads them. A WINDOW_UPDATE wakes only the streams it lets send.
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
import hyperframe.frame
import trio

from router.adaptors.http.attempt import Handler
from router.adaptors.http.h2guard import FrameGuard
from router.adaptors.http.hop import strip_hop_by_hop
from router.adaptors.http.limits import HttpLimits, request_line_bytes
from router.adaptors.http.message import (
    Body,
    End,
    Part,
    RequestHead,
    ResponseHead,
    Trailers,
)
from router.net.sockets import receive_some, send_all

READ_BYTES = 64 * 1024
GOAWAY_WAIT_S = 1.0
RST_STREAM = 0x3  # the frame type
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
    def __init__(self, stream: trio.abc.Stream, handle: Handler, limits: HttpLimits,
                 client: str) -> None:
        self.stream = stream
        self.handle = handle
        self.limits = limits
        self.client = client
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.http2_max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.http2_stream_window_bytes,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: limits.http2_max_frame_bytes,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.http_max_head_bytes})
        # h2 applies its own settings when the client acknowledges a change to them;
        # these are the first, so it would go on with its defaults.
        self.h2.max_inbound_frame_size = limits.http2_max_frame_bytes
        self.h2.decoder.max_header_list_size = limits.http_max_head_bytes
        self.streams: dict[int, _Stream] = {}
        # Queued for the client, in order (HPACK needs it): what h2 answers on its own
        # (SETTINGS and PING acks, resets), which a client can make us queue without end,
        # and responses, which its windows bound. Each is counted and capped on its own,
        # so a client that writes before it reads is never stalled by its responses.
        self.out: deque[tuple[bytes, bool]] = deque()  # (bytes, control?)
        self.queued = {True: 0, False: 0}  # unsent bytes of each kind, incl. in flight
        self._out_ready = trio.Event()
        self._sent = trio.Event()  # a write finished: room for more
        self.resets = float(limits.http2_reset_burst)
        self._reset_at = trio.current_time()
        self.guard = FrameGuard(limits, trio.current_time())
        # Streams waiting for a flow-control window: their own, or the connection's
        # (in the order they came, woken as many as it has room for).
        self._stream_waiters: dict[int, trio.Event] = {}
        self._conn_waiters: dict[int, trio.Event] = {}
        self.closing = False
        self.requests = 0
        self.last_stream: int | None = None  # the last one our graceful GOAWAY admits
        self._goaway_due = False
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
        cap = (self.limits.http2_max_queued_control_bytes if control
               else self.limits.http2_max_queued_bytes)
        while self.unsent(control) > cap:
            await self._sent.wait()

    async def drain(self) -> None:
        while self.unsent(True) or self.unsent(False):
            await self._sent.wait()

    async def wait_window(self, sid: int) -> None:
        """Until the client opens the window that keeps `sid` from sending: a flood of
        WINDOW_UPDATEs then costs a wake-up each, not one for every stream waiting."""
        event = trio.Event()
        if self.h2.outbound_flow_control_window > 0:  # its own window is spent
            self._stream_waiters[sid] = event
            self.pass_window()
        else:
            self._conn_waiters[sid] = event
        try:
            await event.wait()
        finally:
            self._stream_waiters.pop(sid, None)
            self._conn_waiters.pop(sid, None)

    def pass_window(self) -> None:
        """Wake as many streams waiting on the connection's window as it has room for;
        called whenever one may have stopped using it."""
        room = self.h2.outbound_flow_control_window
        while room > 0 and self._conn_waiters:
            sid = next(iter(self._conn_waiters))
            self._conn_waiters.pop(sid).set()
            room -= self.h2.max_outbound_frame_size

    def _window_opened(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            waiter = self._stream_waiters.pop(event.stream_id, None)
            if waiter is not None:
                waiter.set()
        else:
            self.pass_window()

    def _settings_changed(self, event: h2.events.RemoteSettingsChanged) -> None:
        for code in event.changed_settings:
            if not isinstance(code, h2.settings.SettingCodes):
                # RFC 9113 6.5.2: ignored; h2 would keep each of the 65,536 ids a
                # client names (a deque each: 45 MB from 390 KB of SETTINGS).
                del self.h2.remote_settings[code]
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            for waiter in self._stream_waiters.values():
                waiter.set()
            self._stream_waiters.clear()

    async def writer(self) -> None:
        while True:
            while not self.out:
                self._out_ready = trio.Event()
                await self._out_ready.wait()
            chunks = list(self.out)
            self.out.clear()
            await send_all(self.stream, b"".join(data for data, _ in chunks))
            for data, control in chunks:
                self.queued[control] -= len(data)
            self._sent.set()
            self._sent = trio.Event()

    # ---- reading
    async def reader(self, first: bytes, nursery: trio.Nursery) -> None:
        data: bytes = first
        while data and not self.closing:
            refused = self.guard.feed(data, trio.current_time())
            if refused is not None:
                data = data[:refused.at]  # h2 reads the frames before, not that one
            try:
                events = self.h2.receive_data(data)
            except _H2Error:
                self.closing = True  # h2 queued a GOAWAY saying why
                events = []
            for event in events:
                self._on_event(event, nursery)
            if refused is not None and not self.closing:
                self.h2.close_connection(error_code=refused.code,
                                         additional_data=refused.reason,
                                         last_stream_id=self.last_stream)
                self.closing = True
            answers = self.h2.data_to_send()
            self._queue(answers, control=True)
            # MadeYouReset (CVE-2025-8671): streams h2 reset for frames the client sent
            # cost the same budget as the client's own resets.
            self._spend_resets(_rst_frames(answers))
            if self._goaway_due:
                self._goaway_due = False
                self._queue(_goaway(self.last_stream or 0), control=True)
            self.flush(control=True)
            if self.closing:
                return
            await self.wait_room(control=True)  # the client must read what it asked for
            with trio.CancelScope() as self._read_scope:
                self._arm_idle()
                data = await receive_some(self.stream, READ_BYTES)
            if self._read_scope.cancelled_caught:
                if self.last_stream is None:
                    self.h2.close_connection(additional_data=b"idle")
                    self.flush(control=True)
                return

    def _arm_idle(self) -> None:
        """While no request is open, the read ends after http_idle_timeout_s; at once
        when the streams our graceful GOAWAY admitted are done."""
        if self.streams:
            self._read_scope.deadline = math.inf
        elif self.last_stream is not None:
            self._read_scope.deadline = -math.inf
        else:
            self._read_scope.deadline = trio.current_time() + self.limits.http_idle_timeout_s

    def _on_event(self, event: h2.events.Event, nursery: trio.Nursery) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event, nursery)
        elif isinstance(event, h2.events.DataReceived):
            st = self.streams.get(event.stream_id)
            if st is None or not event.data:
                # The request is over, or the frame was empty or padding (queued, a
                # flood of them would fill memory that no window bounds): keep the
                # windows open.
                if event.flow_controlled_length:
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
        elif isinstance(event, h2.events.WindowUpdated):
            self._window_opened(event)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._settings_changed(event)
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
        refill = (now - self._reset_at) * self.limits.http2_resets_per_s
        self.resets = min(self.limits.http2_reset_burst, self.resets + refill) - n
        self._reset_at = now
        if self.resets < 0:  # Rapid Reset: requests started and cancelled in a flood
            self.h2.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                                     additional_data=b"too many stream resets",
                                     last_stream_id=self.last_stream)
            self.closing = True

    def _request(self, event: h2.events.RequestReceived, nursery: trio.Nursery) -> None:
        sid = event.stream_id
        assert sid is not None
        if self.last_stream is not None:  # opened before the client saw our GOAWAY
            _quiet(self.h2.reset_stream, sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self.requests += 1
        if 0 < self.limits.http_max_requests_per_connection <= self.requests:
            self.last_stream, self._goaway_due = sid, True  # this one, then no more
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
        method, target = pseudo.get(b":method", b""), pseudo.get(b":path", b"/")
        if request_line_bytes(method, target) > self.limits.http_max_request_line_bytes:
            self._refuse(sid, 414, "the request line exceeds "
                                   f"{self.limits.http_max_request_line_bytes} bytes")
            return
        if len(headers) > self.limits.http_max_headers:
            self._refuse(sid, 431, f"more than {self.limits.http_max_headers} header fields")
            return
        if pseudo.get(b":method") == b"CONNECT":  # tunnels are HTTP/1.1 only (tunnel.py)
            self._refuse(sid, 501, "CONNECT over HTTP/2 is not supported: use HTTP/1.1")
            return
        authority = pseudo.get(b":authority") or next(
            (v for n, v in headers if n == b"host"), b"")
        head = RequestHead(
            method=method, target=target,
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
            self.pass_window()  # what it was woken to use, if it was
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
            self._sent(ended=last)
        elif isinstance(part, Body):
            data = memoryview(part.data)
            while data:
                await self._conn.wait_room()
                room = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if room <= 0:
                    await self._conn.wait_window(sid)
                    continue
                h2c.send_data(sid, bytes(data[:room]))
                self._sent(ended=False)
                self._conn.flush()
                data = data[room:]
            self._conn.pass_window()  # done with it for now: others may use the rest
        elif isinstance(part, Trailers):
            h2c.send_headers(sid, list(part.headers), end_stream=True)
            self._sent(ended=True)
        elif isinstance(part, End) and not self._st.ended_out:
            h2c.end_stream(sid)
            self._sent(ended=True)

    def _sent(self, *, ended: bool) -> None:
        """A frame of the response is queued (the client may acknowledge it)."""
        self._conn.guard.earn(1)
        if ended:
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


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then read what the client still sends for a moment (as server_h1)."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    with trio.move_on_after(GOAWAY_WAIT_S):
        budget = READ_BYTES * 16
        while budget > 0 and (data := await stream.receive_some(READ_BYTES)):
            budget -= len(data)


def _goaway(last_stream_id: int) -> bytes:
    """A graceful GOAWAY, made here: h2's own (close_connection) would end its
    connection at once, and the streams it admits could not be answered."""
    return hyperframe.frame.GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0,
                                        additional_data=b"max requests").serialize()


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
                limits: HttpLimits, client: str) -> None:
    """Serve streams until the client closes, errs, spends its reset budget, or made
    http_max_requests_per_connection requests and they are answered."""
    conn = _Conn(stream, handle, limits, client)
    conn.h2.initiate_connection()
    if limits.http2_connection_window_bytes > 65535:  # from the default
        conn.h2.increment_flow_control_window(limits.http2_connection_window_bytes - 65535)
    conn.flush(control=True)  # SETTINGS first
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.writer)
            await conn.reader(first, nursery)
            # A GOAWAY should reach the client; after a graceful one, the last answers.
            graceful = conn.last_stream is not None and not conn.closing
            with trio.move_on_after(limits.http_idle_timeout_s if graceful
                                    else GOAWAY_WAIT_S) as draining:
                await conn.drain()
            if graceful and not draining.cancelled_caught:
                # Closing with unread bytes (a WINDOW_UPDATE) would send a RST, and the
                # client could lose the last answers.
                await _linger(stream)
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
