"""An HTTP/1.1 client connection (h11, sans-IO, driven here): one request at a time.

h11 parses strictly and re-serializes every header, so nothing the client sent passes
as raw bytes; what h11 still accepts and a backend could read differently (Content-Length
together with Transfer-Encoding) is refused here. A request is refused before it reaches
the frontend, so a smuggling attempt never leaves this connection.
"""

from __future__ import annotations

import http
import math

import h11
import trio

from router.adaptors.http.attempt import Handler
from router.adaptors.http.hop import strip_hop_by_hop, tunnel_upgrade, upgrade_headers
from router.adaptors.http.limits import HttpLimits, request_line_bytes
from router.adaptors.http.message import (
    Body,
    End,
    Headers,
    Part,
    RequestHead,
    ResponseHead,
    Trailers,
)
from router.net.sockets import abort_socket, receive_nowait, receive_some, send_all

READ_BYTES = 64 * 1024
_NO_BODY_STATUS = (204, 304)
LINGER_S = 1.0
LINGER_BYTES = 1024 * 1024
DISCARD_BYTES = 64 * 1024  # of an unread request body, to keep the connection


# The message between routers carries no reason phrase: clients get the standard one
# (some, h2load's HTTP/1.1 parser among them, fail a status line without any).
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


class _Refuse(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _Conn:
    """The h11 state machine and the socket; reading and writing may run at once."""

    def __init__(self, stream: trio.abc.Stream, limits: HttpLimits) -> None:
        self.stream = stream
        self.limits = limits
        self.h11 = h11.Connection(h11.SERVER,
                                  max_incomplete_event_size=limits.http_max_head_bytes)
        self.broken = False
        self._out = bytearray()
        self.waiting = trio.CancelScope()  # the wait for the next request head
        self.head_deadline = math.inf
        self.fed = 0  # bytes received while waiting for this request's head

    async def send_pending(self) -> None:
        if self._out:
            out, self._out = self._out, bytearray()
            await send_all(self.stream, out)

    def event_at_hand(self) -> object | None:
        """The next event if no wait is needed (a keep-alive client's next request has
        usually arrived by the time we look: no timeout scope then); else None."""
        event = self.h11.next_event()
        if event is h11.NEED_DATA:
            data = receive_nowait(self.stream, READ_BYTES)
            if data is None:
                return None
            self.receive(data)
            event = self.h11.next_event()
        return None if event is h11.NEED_DATA else event

    async def next_event(self) -> object:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.receive(await receive_some(self.stream, READ_BYTES))

    def receive(self, data: bytes) -> None:
        self.h11.receive_data(data)
        if not data or self.h11.their_state is not h11.IDLE:
            return
        # A request has begun: it is no longer idle, and its head has the head timeout.
        self.waiting.deadline = self.head_deadline
        limit = self.limits.http_max_request_line_bytes + 2  # and its CRLF
        if self.fed <= limit < self.fed + len(data):  # checked once: h11 would wait for
            line = self.h11.trailing_data[0][:limit]  # the whole head, then answer 431
            if b"\n" not in line:
                raise _Refuse(414, f"the request line exceeds "
                                   f"{self.limits.http_max_request_line_bytes} bytes")
        self.fed += len(data)

    async def send(self, event: h11.Event, *, more: bool = False) -> None:
        """`more`: keep the bytes for the next send (one write for a head and body)."""
        data = self.h11.send(event)
        if data:
            self._out += data
        if self._out and not more:
            out, self._out = self._out, bytearray()
            await send_all(self.stream, out)


class _Body:
    """The request body as parts; BrokenResourceError when the client broke it off."""

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self._end_next = False

    async def next(self) -> Body | Trailers | End:
        if self._end_next:
            return End()
        if self._conn.h11.they_are_waiting_for_100_continue:
            await self._conn.send(h11.InformationalResponse(status_code=100, headers=[],
                                                            reason=_reason(100)))
        try:
            event = await self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise trio.BrokenResourceError(f"bad request body: {exc}") from None
        return self._part(event)

    def next_nowait(self) -> Body | Trailers | End | None:
        if self._end_next:
            return End()
        if self._conn.h11.they_are_waiting_for_100_continue:
            return None  # the 100 goes out from `next`
        try:
            event = self._conn.h11.next_event()
        except h11.RemoteProtocolError:
            return None  # `next` meets it again and says so
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return None
        return self._part(event)

    def _part(self, event: object) -> Body | Trailers | End:
        if isinstance(event, h11.Data):
            return Body(bytes(event.data))
        if isinstance(event, h11.EndOfMessage):
            trailers = strip_hop_by_hop(tuple((n, v) for n, v in event.headers))
            if trailers:
                self._end_next = True
                return Trailers(trailers)
            return End()
        raise trio.BrokenResourceError("the client closed the connection mid-request")

    def done(self, part: Part) -> None:
        pass  # TCP's own window is the flow control here


class _Sink:
    def __init__(self, conn: _Conn, method: bytes, *, close: bool = False) -> None:
        self._conn = conn
        self._method = method
        self._close = close  # the last request of this connection
        self.started = False
        self._bodyless = method == b"HEAD"
        self._chunked = False
        self._trailers: list[tuple[bytes, bytes]] = []

    async def send(self, part: Part, *, last: bool = False, more: bool = False) -> None:
        try:
            await self._send(part, last, more)
        except h11.LocalProtocolError as exc:  # e.g. a body longer than its content-length
            self.reset()
            raise trio.BrokenResourceError(f"cannot send the response: {exc}") from None

    async def _send(self, part: Part, last: bool, more: bool) -> None:
        if isinstance(part, ResponseHead) and (part.status == 101 or (
                self._method == b"CONNECT" and 200 <= part.status < 300)):
            # The switch to a tunnel (h11 checks that the client proposed it). A 2xx
            # to CONNECT has no body framing (RFC 9110 9.3.6).
            self.started = True
            switching = [*(h for h in strip_hop_by_hop(part.headers)
                           if h[0] != b"content-length"), *upgrade_headers(part.headers)]
            kind = h11.InformationalResponse if part.status == 101 else h11.Response
            await self._conn.send(kind(status_code=part.status, headers=switching,
                                       reason=_reason(part.status)))
            return
        if isinstance(part, ResponseHead):
            headers = strip_hop_by_hop(part.headers)
            if self._close and part.status >= 200:
                headers += ((b"connection", b"close"),)
            self.started = True
            self._bodyless |= part.status in _NO_BODY_STATUS or part.status < 200
            self._chunked = (not any(n == b"content-length" for n, _ in headers)
                             and self._conn.h11.their_http_version == b"1.1")
            await self._conn.send(h11.Response(status_code=part.status, headers=list(headers),
                                               reason=_reason(part.status)),
                                  more=more or last)
            if last:
                await self._conn.send(h11.EndOfMessage())
        elif isinstance(part, Body):
            if part.data and not self._bodyless:
                await self._conn.send(h11.Data(data=part.data), more=more)
            elif not more:
                await self._conn.send_pending()
        elif isinstance(part, Trailers):
            self._trailers = list(part.headers)
            if not more:
                await self._conn.send_pending()
        elif isinstance(part, End):
            trailers = self._trailers if self._chunked and not self._bodyless else []
            await self._conn.send(h11.EndOfMessage(headers=trailers))

    def reset(self) -> None:
        self._conn.broken = True
        abort_socket(self._conn.stream)  # the close will be a RST: never a clean end

    def switched(self) -> tuple[trio.abc.Stream, bytes]:
        """After a switching head went out: the client's connection, now a byte stream,
        and what the client sent past its request (h11 read it already)."""
        if self._conn.h11.our_state is not h11.SWITCHED_PROTOCOL:
            raise trio.BrokenResourceError("the connection did not switch protocols")
        return self._conn.stream, bytes(self._conn.h11.trailing_data[0])


async def serve(stream: trio.abc.Stream, first: bytes, handle: Handler,
                limits: HttpLimits, client: str) -> None:
    """Requests one after another until the client or a response closes the connection,
    or http_max_requests_per_connection were served."""
    conn = _Conn(stream, limits)
    served = 0
    while True:
        try:
            # Both from the end of the previous exchange: idle until a request begins.
            start = trio.current_time()
            conn.head_deadline = start + limits.http_head_timeout_s
            conn.fed = 0
            if first:  # (h11 takes b"" for the end of the stream)
                conn.receive(first)
                first = b""
            event = conn.event_at_hand()
            if event is None:
                idle = not conn.h11.trailing_data[0]  # no byte of a request yet
                with trio.move_on_at(min(conn.head_deadline, start + limits.http_idle_timeout_s)
                                     if idle else conn.head_deadline) as conn.waiting:
                    event = await conn.next_event()
            if conn.waiting.cancelled_caught:  # idle, or a head sent slowly (Slowloris)
                if conn.h11.trailing_data[0]:
                    await _refuse(conn, 408, "no complete request head in "
                                  f"{limits.http_head_timeout_s:g} s")
                return
            if not isinstance(event, h11.Request):
                return  # closed (or the client sent nothing more)
            head = _head(event, limits, client)
        except h11.RemoteProtocolError as exc:
            await _refuse(conn, exc.error_status_hint, f"bad request: {exc}")
            return
        except _Refuse as exc:
            await _refuse(conn, exc.status, str(exc))
            return
        served += 1
        last = 0 < limits.http_max_requests_per_connection <= served
        sink = _Sink(conn, head.method, close=last)
        await handle(head, _Body(conn), sink)
        if conn.broken:
            return
        if conn.h11.their_state is h11.SEND_BODY and not await _discard_body(conn):
            await _linger(stream)  # answered long before the body ended
            return
        if not (conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE):
            if last and conn.h11.our_state is h11.MUST_CLOSE:
                await _linger(stream)  # the client may have sent its next request already
            return  # keep-alive only after a complete exchange
        conn.h11.start_next_cycle()


def _head(event: h11.Request, limits: HttpLimits, client: str) -> RequestHead:
    if request_line_bytes(event.method, event.target) > limits.http_max_request_line_bytes:
        raise _Refuse(414, f"the request line exceeds {limits.http_max_request_line_bytes} "
                           "bytes")
    raw: Headers = tuple((n, v) for n, v in event.headers)
    if len(raw) > limits.http_max_headers:
        raise _Refuse(431, f"more than {limits.http_max_headers} header fields")
    if sum(len(n) + len(v) + 4 for n, v in raw) > limits.http_max_head_bytes:
        raise _Refuse(431, f"the header block exceeds {limits.http_max_head_bytes} bytes")
    names = {n for n, _ in raw}
    if b"transfer-encoding" in names and b"content-length" in names:
        # RFC 9112 6.1: a sender must not; a proxy must not forward it (smuggling).
        raise _Refuse(400, "both Content-Length and Transfer-Encoding")
    authority = next((v for n, v in raw if n == b"host"), b"")
    target = event.target
    if target.startswith((b"http://", b"https://")):  # absolute form: it names the authority
        rest = target.split(b"://", 1)[1]
        authority, slash, path = rest.partition(b"/")
        target = slash + path or b"/"
    if event.method == b"CONNECT":  # authority form: the target is the authority
        authority = target
    # Host becomes the authority; we answer Expect: 100-continue ourselves (when the
    # body is first read, once a site took the request), so it goes no further.
    headers = strip_hop_by_hop(tuple((n, v) for n, v in raw if n not in (b"host", b"expect")))
    upgrade = tunnel_upgrade(raw)
    if upgrade is not None:  # hop-by-hop, yet forwarded: it proposes a tunnel (tunnel.py)
        headers = (*headers, (b"upgrade", upgrade))
    return RequestHead(method=event.method, target=target, authority=authority,
                       scheme=b"http", headers=headers, client=client)


async def _refuse(conn: _Conn, status: int, reason: str) -> None:
    """Answer a request we will not forward, then the connection closes."""
    if conn.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    text = (reason + "\n").encode()
    try:
        await conn.send(h11.Response(status_code=status, reason=_reason(status), headers=[
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(text)).encode()), (b"connection", b"close")]))
        await conn.send(h11.Data(data=text))
        await conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return
    await _linger(conn.stream)


async def _discard_body(conn: _Conn) -> bool:
    """Read the rest of a request body nobody needs (often none: a GET's end is known
    without reading); False if it is long, slow, or awaits 100 Continue."""
    if conn.h11.they_are_waiting_for_100_continue:
        return False
    budget = DISCARD_BYTES
    with trio.move_on_after(LINGER_S):
        while budget > 0:
            try:
                event = await conn.next_event()
            except h11.RemoteProtocolError:
                return False
            if isinstance(event, h11.EndOfMessage):
                return True
            if not isinstance(event, h11.Data):
                return False
            budget -= len(event.data)
    return False


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then read what the client still sends for a moment: closing with
    unread bytes would send a RST, and the client could lose the answer."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    with trio.move_on_after(LINGER_S):
        budget = LINGER_BYTES
        while budget > 0 and (data := await stream.receive_some(READ_BYTES)):
            budget -= len(data)
