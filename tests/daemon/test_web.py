"""The admin HTTP server (router/daemon/web.py) on real sockets: routing, GET/HEAD only,
keep-alive, and its caps against a client that sends too much, too slowly, or never
reads what it asked for."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator
from functools import partial

import h11
import pytest
import trio

from router.daemon.web import Routes, WebLimits, WebRequest, WebResponse, serve_web

FAST = WebLimits(head_timeout_s=0.3, idle_timeout_s=0.3, send_timeout_s=0.5,
                 max_connections=4)


class Stream:
    """A streamed response's iterator that counts what it made and says when closed."""

    def __init__(self, chunk: bytes, count: int | None = None) -> None:
        self.chunk = chunk
        self.count = count
        self.made = 0
        self.closed = trio.Event()
        self.gen = self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            n = 0
            while self.count is None or n < self.count:
                n += 1
                self.made += len(self.chunk)
                yield self.chunk
                await trio.sleep(0)
        finally:
            self.closed.set()


class App:
    def __init__(self) -> None:
        self.routes = Routes()
        self.streams: list[Stream] = []
        self.routes.add("/hello", self.hello)
        self.routes.add("/echo", self.echo)
        self.routes.add_prefix("/api/", self.api)
        self.routes.add("/api/exact", self.exact)
        self.routes.add("/boom", self.boom)
        self.routes.add("/events", self.events)
        self.routes.add("/flood", self.flood)

    async def hello(self, request: WebRequest) -> WebResponse:
        return WebResponse.text(200, "hello")

    async def echo(self, request: WebRequest) -> WebResponse:
        return WebResponse.json({"method": request.method, "path": request.path,
                                 "query": request.query, "headers": request.headers})

    async def api(self, request: WebRequest) -> WebResponse:
        return WebResponse.text(200, f"prefix {request.path}")

    async def exact(self, request: WebRequest) -> WebResponse:
        return WebResponse.text(200, "exact")

    async def boom(self, request: WebRequest) -> WebResponse:
        raise RuntimeError("a bug in a page")

    async def events(self, request: WebRequest) -> WebResponse:
        s = Stream(b"data: tick\n\n")
        self.streams.append(s)
        return WebResponse(200, content_type="text/event-stream", stream=s.gen)

    async def flood(self, request: WebRequest) -> WebResponse:
        s = Stream(b"x" * 65536)
        self.streams.append(s)
        return WebResponse(200, content_type="application/octet-stream", stream=s.gen)


@pytest.fixture
async def app(nursery: trio.Nursery) -> tuple[App, int]:
    a = App()
    listeners = await nursery.start(serve_web, a.routes, "127.0.0.1", 0)
    return a, listeners[0].socket.getsockname()[1]


class Client:
    """An HTTP/1.1 client connection (h11) for several requests in a row."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def request(self, target: str, method: str = "GET",
                      headers: tuple[tuple[str, str], ...] = ()
                      ) -> tuple[int, dict[str, str], bytes]:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        await self.stream.send_all(self.h11.send(h11.Request(
            method=method, target=target, headers=[("host", "admin"), *headers])))
        await self.stream.send_all(self.h11.send(h11.EndOfMessage()))
        status, head, body = 0, {}, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                head = {n.decode(): v.decode() for n, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, head, body


async def raw(port: int, data: bytes) -> bytes:
    """Send `data`, read until the server closes."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            return await read_to_end(stream)


async def read_to_end(stream: trio.SocketStream) -> bytes:
    out = b""
    while chunk := await stream.receive_some(65536):
        out += chunk
    return out


async def test_get_head_keep_alive_and_routes(app: tuple[App, int]) -> None:
    _, port = app
    client = await Client.open(port)
    assert await client.request("/hello") == (200, {
        "content-type": "text/plain; charset=utf-8", "x-content-type-options": "nosniff",
        "content-length": "6"}, b"hello\n")
    status, head, body = await client.request("/hello", method="HEAD")
    assert (status, head["content-length"], body) == (200, "6", b"")
    assert (await client.request("/api/exact"))[2] == b"exact\n"
    assert (await client.request("/api/other/x"))[2] == b"prefix /api/other/x\n"
    status, _, body = await client.request("/nowhere")
    assert status == 404 and b"/nowhere" in body
    # All on one connection: the server kept it open after each answer.
    status, _, body = await client.request("/echo?a=1&b=x%20y&a=2", headers=(("X-Thing", "v"),))
    got = json.loads(body)
    assert got["method"] == "GET" and got["path"] == "/echo"
    assert got["query"] == {"a": "2", "b": "x y"}
    assert got["headers"]["x-thing"] == "v" and got["headers"]["host"] == "admin"
    await client.stream.aclose()


def test_route_table_refuses_bad_or_twice_added_paths() -> None:
    routes = Routes()

    async def page(request: WebRequest) -> WebResponse:
        return WebResponse(204)

    routes.add("/a", page)
    for bad in (lambda: routes.add("/a", page), lambda: routes.add("a", page),
                lambda: routes.add_prefix("/p", page)):
        with pytest.raises(ValueError):
            bad()
    routes.add_prefix("/p/", page)
    routes.add_prefix("/p/q/", page)
    assert routes.find("/p/q/r") is page and routes.find("/p") is None


async def test_other_methods_get_405_and_the_connection_closes(app: tuple[App, int]) -> None:
    _, port = app
    reply = await raw(port, b"POST /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    assert reply.startswith(b"HTTP/1.1 405 ")
    assert b"allow: GET, HEAD\r\n" in reply and b"connection: close\r\n" in reply


async def test_malformed_request_gets_400_and_the_connection_closes(
        app: tuple[App, int]) -> None:
    _, port = app
    reply = await raw(port, b"GET /hello HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ") and b"connection: close" in reply
    reply = await raw(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")  # TLS
    assert reply.startswith(b"HTTP/1.1 400 ")
    reply = await raw(port, b"GET http://elsewhere/hello HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ") and b"must be a path" in reply


async def test_oversized_head_gets_431(app: tuple[App, int]) -> None:
    _, port = app
    big = b"x-filler: " + b"a" * (WebLimits().max_head_bytes + 100) + b"\r\n"
    reply = await raw(port, b"GET /hello HTTP/1.1\r\nHost: a\r\n" + big + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")


async def test_a_body_past_the_cap_gets_413(app: tuple[App, int]) -> None:
    _, port = app
    body = b"b" * (WebLimits().max_body_bytes + 1)
    reply = await raw(port, b"GET /hello HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))
    assert reply.startswith(b"HTTP/1.1 413 ")
    small = await raw(port, b"GET /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                            b"Connection: close\r\n\r\nabc")
    assert small.startswith(b"HTTP/1.1 200 ") and small.endswith(b"hello\n")


async def test_a_failing_page_is_a_500_and_the_server_goes_on(app: tuple[App, int]) -> None:
    _, port = app
    reply = await raw(port, b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 500 ") and b"internal error" in reply
    client = await Client.open(port)
    assert (await client.request("/hello"))[0] == 200


@pytest.fixture
async def fast(nursery: trio.Nursery) -> tuple[App, int]:
    a = App()
    listeners = await nursery.start(partial(serve_web, a.routes, "127.0.0.1", 0, limits=FAST))
    return a, listeners[0].socket.getsockname()[1]


async def test_slow_loris_is_cut_at_the_head_timeout(fast: tuple[App, int]) -> None:
    _, port = fast
    stream = await trio.open_tcp_stream("127.0.0.1", port)

    async def trickle() -> None:
        """A header line at a time, each well inside the timeout, never the end."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(b"GET /hello HTTP/1.1\r\nHost: a\r\n")
            for _ in range(100):
                await trio.sleep(FAST.head_timeout_s / 5)
                await stream.send_all(b"x-slow: 1\r\n")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            reply = await read_to_end(stream)
            nursery.cancel_scope.cancel()
    assert reply.startswith(b"HTTP/1.1 408 "), reply


async def test_idle_keep_alive_connection_is_closed(fast: tuple[App, int]) -> None:
    _, port = fast
    client = await Client.open(port)
    assert (await client.request("/hello"))[0] == 200
    with trio.fail_after(5):
        assert await read_to_end(client.stream) == b""  # closed, with nothing said
    silent = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(5):
        assert await read_to_end(silent) == b""


async def test_at_the_cap_the_longest_idle_connection_makes_room(
        fast: tuple[App, int]) -> None:
    _, port = fast
    idle = [await Client.open(port) for _ in range(FAST.max_connections)]
    for client in idle:
        assert (await client.request("/hello"))[0] == 200  # then idle, kept alive
    newcomer = await Client.open(port)
    assert (await newcomer.request("/hello"))[0] == 200
    with trio.fail_after(5):
        assert await read_to_end(idle[0].stream) == b""  # the longest idle: closed
    assert (await idle[1].request("/hello"))[0] == 200  # the others: still served
    for client in (*idle, newcomer):
        await client.stream.aclose()


async def test_past_the_cap_with_none_idle_a_client_gets_503(fast: tuple[App, int]) -> None:
    _, port = fast
    busy = []
    for _ in range(FAST.max_connections):  # streams: busy, never idle
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await s.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
        busy.append(s)
    reply = await raw(port, b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 503 ") and b"too many connections" in reply
    for s in busy:
        await s.aclose()


async def test_a_stream_is_sent_as_made_and_ends_when_the_client_goes(
        app: tuple[App, int]) -> None:
    a, port = app
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
        got = b""
        while got.count(b"data: tick") < 3:
            got += await stream.receive_some(65536)
        assert got.startswith(b"HTTP/1.1 200 ")
        head = got.lower()
        assert b"transfer-encoding: chunked" in head and b"content-type: text/event-stream" in head
        await stream.aclose()
        await a.streams[0].closed.wait()  # the iterator was closed: nothing runs for it


async def test_head_of_a_stream_sends_no_body_and_closes_the_iterator(
        app: tuple[App, int]) -> None:
    a, port = app
    reply = await raw(port, b"HEAD /events HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\n")
    # Never started, so never run; closed all the same (no frame left to resume).
    assert a.streams[0].made == 0 and a.streams[0].gen.ag_frame is None


async def test_a_client_that_never_reads_a_stream_is_dropped(fast: tuple[App, int]) -> None:
    """The server takes a chunk only once the last one left: what it made is what the
    kernel buffers hold, not an ever-growing queue, and send_timeout_s ends it."""
    a, port = fast
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /flood HTTP/1.1\r\nHost: a\r\n\r\n")
    try:
        with trio.fail_after(10):
            while not a.streams:
                await trio.sleep(0.01)
            await a.streams[0].closed.wait()
        # Loopback buffers (the server's send buffer grows to tcp_wmem's 4 MiB at most,
        # the client's receive buffer is small): far below what 10 s of a loop makes.
        assert a.streams[0].made < 8 * 1024 * 1024, a.streams[0].made
    finally:
        sock.close()
