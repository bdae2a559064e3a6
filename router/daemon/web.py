"""The router's HTTP admin server: /metrics, /healthz, /readyz and, later, the console.

A small HTTP/1.1 server: h11 parses and frames (as in the HTTP adaptor), trio drives one
task per connection. It answers GET and HEAD only (405 otherwise) and looks the path up
in a route table (404 if none). Every input has a cap, as the port may face more than a
local scraper (`admin_bind = "0.0.0.0"` for Kubernetes probes): the request head's size
(431), a request body (413), the time to send a head (408, against a client that never
finishes one), the idle time between keep-alive requests, the connections open at once
(past it the one idle longest between requests is closed for the newcomer; with none
idle, the newcomer gets a 503), and the time one chunk of a response may take to leave
(a client that does not read is dropped; nothing is queued for it beyond that chunk).

The interface handlers are written against (the console builds on it):

    async def handler(request: WebRequest) -> WebResponse: ...

    routes = Routes()
    routes.add("/metrics", handler)        # this path exactly
    routes.add_prefix("/api/", handler)    # every path under /api/ (exact paths first,
                                           # then the longest prefix)
    await nursery.start(serve_web, routes, "127.0.0.1", port)   # -> its listeners

The router keeps its table in `Router.web` (router/daemon/web_routes.py fills it);
a route added to it before or while the router runs is served from then on. A handler
is called for HEAD as for GET: the server sends the head and leaves the body out. A
response with a `stream` is sent as the iterator yields (chunked), for server-sent
events: the next chunk is taken only once the last one left, and it ends when the
iterator does, when the client goes away or stops reading (`send_timeout_s`), or when
the router stops; the iterator is closed (`aclose`) in every case, and the connection
after it. A handler that raises gets a 500 (and the traceback goes to the log).
"""

from __future__ import annotations

import contextlib
import http
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import h11
import trio

from router.net.accept import FdReserve, serve_listeners

log = logging.getLogger(__name__)

READ_BYTES = 16 * 1024
LINGER_S = 1.0  # reading what a refused client still sends, so our answer is not reset
TURN_AWAY_S = 0.25
MAX_QUERY_FIELDS = 64
ALLOWED = "GET, HEAD"


@dataclass(frozen=True, slots=True, kw_only=True)
class WebLimits:
    """Caps on each connection to the admin port, and on how many there are."""

    max_head_bytes: int = 16 * 1024  # request line and headers
    max_body_bytes: int = 1024  # a GET needs none; a small one is read and dropped
    head_timeout_s: float = 10.0  # from a request's first byte to the end of its head
    idle_timeout_s: float = 60.0  # between keep-alive requests
    send_timeout_s: float = 30.0  # for one chunk of a response to leave
    max_connections: int = 64  # scrapers, probes and console tabs


@dataclass(frozen=True, slots=True)
class WebRequest:
    """A GET or HEAD request. `path` is the target before "?", as sent (not decoded);
    `query` its parameters (decoded; the last of a repeated name); `headers` with
    lower-case names (a repeated header's values joined with ", ")."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class WebResponse:
    """What a handler answers: `body`, or a `stream` of chunks (sent as they come)."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    stream: AsyncIterator[bytes] | None = field(default=None, compare=False)

    @classmethod
    def text(cls, status: int, text: str, headers: tuple[tuple[str, str], ...] = ()
             ) -> WebResponse:
        return cls(status, (text + "\n").encode(), headers=headers)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> WebResponse:
        return cls(status, json.dumps(value, separators=(",", ":")).encode(),
                   content_type="application/json")


Handler = Callable[[WebRequest], Awaitable[WebResponse]]


class Routes:
    """Exact paths and path prefixes, each to a handler."""

    def __init__(self) -> None:
        self._exact: dict[str, Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []  # longest first

    def add(self, path: str, handler: Handler) -> None:
        if not path.startswith("/") or path in self._exact:
            raise ValueError(f"route {path!r}: must start with / and be new")
        self._exact[path] = handler

    def add_prefix(self, prefix: str, handler: Handler) -> None:
        """Every path that starts with `prefix` (which starts and ends with "/")."""
        if not (prefix.startswith("/") and prefix.endswith("/")) or any(
                p == prefix for p, _ in self._prefixes):
            raise ValueError(f"route prefix {prefix!r}: must start and end with / and be new")
        self._prefixes.append((prefix, handler))
        self._prefixes.sort(key=lambda ph: -len(ph[0]))

    def find(self, path: str) -> Handler | None:
        handler = self._exact.get(path)
        if handler is not None:
            return handler
        return next((h for p, h in self._prefixes if path.startswith(p)), None)


async def serve_web(routes: Routes, host: str, port: int, *, limits: WebLimits = WebLimits(),
                    reserve: FdReserve | None = None,
                    task_status: trio.TaskStatus[list[trio.SocketListener]]
                    = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `routes` on host:port until cancelled; started with the listeners (port 0:
    their sockets say which port). OSError if it cannot listen. At the fd limit a new
    client is turned away at once on `reserve`, as on the other ports."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    server = _Server(routes, limits)
    task_status.started(listeners)
    await serve_listeners(server.handle, listeners, what="admin connection",
                          name="admin port", reserve=reserve)


class _Refuse(Exception):
    """Answer `status` with the message, then close the connection."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
                 ) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers


class _Gone(Exception):
    """The client closed, broke the connection or did not take a chunk in time."""


_BUSY_TEXT = b"too many connections to the admin port\n"
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT))


class _Server:
    def __init__(self, routes: Routes, limits: WebLimits) -> None:
        self.routes = routes
        self.limits = limits
        self.connections = 0
        self.turning_away = 0  # connections past the cap, being told so
        # Connections waiting for their next request, longest first: at the cap the
        # first one is closed for the newcomer, so idle keep-alives cannot hold the port.
        self.idle: dict[_Connection, trio.CancelScope] = {}

    async def handle(self, stream: trio.SocketStream) -> None:
        if self.connections >= self.limits.max_connections and self.idle:
            oldest = next(iter(self.idle))
            self.idle.pop(oldest).cancel()  # it closes at once, quietly
        elif self.connections >= self.limits.max_connections:
            if self.turning_away < self.limits.max_connections:
                self.turning_away += 1
                try:
                    await _turn_away(stream)
                finally:
                    self.turning_away -= 1
            return  # (past both caps: closed at once)
        self.connections += 1
        try:
            await _Connection(stream, self.routes, self.limits, self.idle).serve()
        finally:
            self.connections -= 1


async def _turn_away(stream: trio.SocketStream) -> None:
    """Answer 503 to a connection past the cap: after reading what it sent in a
    moment (closing with its request unread would reset the connection, and the
    client might not see the 503)."""
    with trio.move_on_after(TURN_AWAY_S), contextlib.suppress(trio.BrokenResourceError):
        await stream.receive_some(READ_BYTES)
    with trio.move_on_after(TURN_AWAY_S), contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(_BUSY)


class _Connection:
    """One client connection: requests one after another (keep-alive) until either
    side closes, an error, or a streamed response."""

    def __init__(self, stream: trio.SocketStream, routes: Routes, limits: WebLimits,
                 idle: dict[_Connection, trio.CancelScope]) -> None:
        self.stream = stream
        self.routes = routes
        self.limits = limits
        self._idle = idle
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)

    async def serve(self) -> None:
        try:
            while True:
                request = await self._next_request()
                if request is None or not await self._respond(request):
                    return
                self.h11.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            await self._refuse(exc.error_status_hint, f"bad request: {exc}")
        except _Refuse as exc:
            await self._refuse(exc.status, str(exc), exc.headers)
        except _Gone:
            pass

    # ---- reading
    async def _receive(self, deadline: float, *, idle: bool = False) -> bool:
        """Feed h11 what arrives before `deadline`; False if nothing did in time (or,
        `idle`: between requests, the connection was closed for a newer one)."""
        with trio.move_on_at(deadline) as scope:
            if idle:
                self._idle[self] = scope
            try:
                data = await self.stream.receive_some(READ_BYTES)
            except trio.BrokenResourceError as exc:
                raise _Gone from exc
            finally:
                self._idle.pop(self, None)
            self.h11.receive_data(data)
            return True
        return False

    async def _next_request(self) -> WebRequest | None:
        """The next request with its body read (and dropped); None when the client
        closed or stayed idle past idle_timeout_s."""
        now = trio.current_time()
        idle_until = now + self.limits.idle_timeout_s
        head_until = math.inf
        while True:
            if head_until == math.inf and self.h11.trailing_data[0]:
                head_until = trio.current_time() + self.limits.head_timeout_s
            event = self.h11.next_event()
            if isinstance(event, h11.Request):
                break
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed
            if not await self._receive(min(idle_until, head_until),
                                       idle=head_until == math.inf):
                if head_until == math.inf:
                    return None  # idle: close quietly
                raise _Refuse(408, f"no complete request head in "
                                   f"{self.limits.head_timeout_s:g} s")
        # h11 caps a head still arriving; one that came whole in a read is checked here.
        if _head_bytes(event) > self.limits.max_head_bytes:
            raise _Refuse(431, f"the request head exceeds {self.limits.max_head_bytes} bytes")
        method = event.method.decode("ascii")
        if method not in ("GET", "HEAD"):
            raise _Refuse(405, f"{method} is not allowed here", (("allow", ALLOWED),))
        await self._drop_body(head_until)
        return _request(event)

    async def _drop_body(self, deadline: float) -> None:
        left = self.limits.max_body_bytes
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.EndOfMessage):
                return
            if isinstance(event, h11.Data):
                left -= len(event.data)
                if left < 0:
                    raise _Refuse(413, f"a request body over {self.limits.max_body_bytes} "
                                       "bytes")
            elif event is h11.NEED_DATA:
                if not await self._receive(deadline):
                    raise _Refuse(408, "the request body did not arrive in time")
            else:
                raise _Gone  # closed mid-body

    # ---- writing
    async def _send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if not data:
            return
        with trio.move_on_after(self.limits.send_timeout_s) as waited:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _Gone from exc
        if waited.cancelled_caught:
            raise _Gone  # a client that does not read is not waited for

    async def _respond(self, request: WebRequest) -> bool:
        """Answer one request; True if the connection may serve another."""
        handler = self.routes.find(request.path)
        if handler is None:
            response = WebResponse.text(404, f"no page {request.path[:200]}")
        else:
            try:
                response = await handler(request)
            except Exception:
                log.exception("admin page %s failed with an internal error",
                              request.path[:200])
                raise _Refuse(500, "internal error (see the router's log)") from None
        head = [("content-type", response.content_type), ("x-content-type-options", "nosniff"),
                *response.headers]
        if response.stream is None:
            head.append(("content-length", str(len(response.body))))
        try:
            await self._send(h11.Response(status_code=response.status, headers=head,
                                          reason=_reason(response.status)))
        except h11.LocalProtocolError:  # a header a handler made up that HTTP refuses
            await _close(response.stream)
            log.exception("admin page %s: response refused", request.path[:200])
            raise _Refuse(500, "internal error (see the router's log)") from None
        if response.stream is not None:
            if request.method == "HEAD":
                await _close(response.stream)
            elif not await self._stream(response.stream):
                return False
            await self._send(h11.EndOfMessage())
            return False  # a stream ends its connection
        if response.body and request.method != "HEAD":
            await self._send(h11.Data(data=response.body))
        await self._send(h11.EndOfMessage())
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def _stream(self, chunks: AsyncIterator[bytes]) -> bool:
        """Send each chunk as it comes; True if the iterator ended, False if the client
        went first."""
        ended = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_client, nursery.cancel_scope)
                try:
                    async for chunk in chunks:
                        if chunk:
                            await self._send(h11.Data(data=chunk))
                    ended = True
                except _Gone:
                    pass
                nursery.cancel_scope.cancel()
        finally:
            await _close(chunks)
        return ended

    async def _watch_client(self, scope: trio.CancelScope) -> None:
        """While a stream runs the client has nothing to say: end the stream when it
        closes, breaks the connection, or sends more than a request head's worth."""
        left = self.limits.max_head_bytes
        with contextlib.suppress(trio.BrokenResourceError):
            while left > 0 and (data := await self.stream.receive_some(READ_BYTES)):
                left -= len(data)
        scope.cancel()

    async def _refuse(self, status: int, reason: str,
                      headers: tuple[tuple[str, str], ...] = ()) -> None:
        """Answer an error, if no response has begun, and close."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = (reason + "\n").encode()
        try:
            await self._send(h11.Response(status_code=status, reason=_reason(status), headers=[
                ("content-type", "text/plain; charset=utf-8"), *headers,
                ("content-length", str(len(body))), ("connection", "close")]))
            await self._send(h11.Data(data=body))
            await self._send(h11.EndOfMessage())
        except (h11.LocalProtocolError, _Gone):
            return
        await _linger(self.stream)


def _head_bytes(event: h11.Request) -> int:
    """About the size of the head as sent (h11 dropped only optional whitespace)."""
    line = len(event.method) + len(event.target) + len(b"  HTTP/1.1\r\n")
    return line + sum(len(n) + len(v) + 4 for n, v in event.headers) + 2


def _request(event: h11.Request) -> WebRequest:
    target = event.target.decode("ascii")  # h11 lets only visible ASCII through
    path, _, query = target.partition("?")
    if not path.startswith("/"):
        raise _Refuse(400, "the request target must be a path")
    try:
        fields = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        raise _Refuse(400, f"more than {MAX_QUERY_FIELDS} query parameters") from None
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key, text = name.decode("ascii"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return WebRequest(event.method.decode("ascii"), path, dict(fields), headers)


_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


async def _close(chunks: AsyncIterator[bytes] | None) -> None:
    """Close a response's iterator (an async generator runs its `finally`), bounded:
    it may run while the router stops."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await aclose()


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then read what the client still sends for a moment: closing with
    unread bytes would send a RST, and the client could lose the answer."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_eof()
        with trio.move_on_after(LINGER_S):
            left = 64 * 1024
            while left > 0 and (data := await stream.receive_some(READ_BYTES)):
                left -= len(data)
