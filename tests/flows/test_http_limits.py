"""Each HTTP/1.1 limit of [limits] holds, as a client sees it: a listener with a small
limit, a request just within it served, one just past it refused (and never reaching
the backend). Timeouts run on trio's autojump clock: no test sleeps."""

from __future__ import annotations

import httpx
import trio
import trio.testing

from router.adaptors.http.hop import with_forwarded
from router.adaptors.http.limits import HttpLimits
from router.adaptors.http.message import MessageReader, RequestHead, encode
from router.site.config import LIMIT_RANGES
from tests.flows.test_http_front import raw
from tests.flows.test_http_front_kit import running_front


def get(target: bytes = b"/", *headers: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(
        h + b"\r\n" for h in headers) + b"\r\n"


async def read_response(stream: trio.abc.Stream, buf: bytearray) -> bytes:
    """One response with a content-length (the kit's answers have one) from `buf` and
    the stream; what follows it stays in `buf`."""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        assert data, bytes(buf)
        buf += data
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))
    size = len(head) + 4 + length
    while len(buf) < size:
        buf += await stream.receive_some(65536)
    out = bytes(buf[:size])
    del buf[:size]
    return out


async def test_http_max_head_bytes_431_past_it() -> None:
    async with running_front(limits=HttpLimits(http_max_head_bytes=4096)) as front:
        out = await raw(front.port, get(b"/", b"x-big: " + b"a" * 3000, b"Connection: close"))
        assert out.startswith(b"HTTP/1.1 200")
        out = await raw(front.port, get(b"/", b"x-big: " + b"a" * 5000))
        assert out.startswith(b"HTTP/1.1 431") and b"connection: close" in out.lower()
        assert len(front.backend.heads) == 1


async def test_http_max_headers_431_past_it() -> None:
    async with running_front(limits=HttpLimits(http_max_headers=10)) as front:
        nine = [b"x-h%d: 1" % i for i in range(8)] + [b"Connection: close"]
        out = await raw(front.port, get(b"/", *nine))  # and Host: 10
        assert out.startswith(b"HTTP/1.1 200")
        out = await raw(front.port, get(b"/", b"x-one-more: 1", *nine))
        assert out.startswith(b"HTTP/1.1 431") and out.endswith(b"more than 10 header fields\n")
        assert len(front.backend.heads) == 1


async def test_http_max_request_line_bytes_414_past_it() -> None:
    async with running_front(limits=HttpLimits(http_max_request_line_bytes=100)) as front:
        target = b"/" + b"a" * (100 - len(b"GET / HTTP/1.1"))  # a line of 100 bytes
        out = await raw(front.port, get(target, b"Connection: close"))
        assert out.startswith(b"HTTP/1.1 200")
        assert front.backend.heads[-1].target == target
        out = await raw(front.port, get(target + b"b"))
        assert out.startswith(b"HTTP/1.1 414")
        assert out.endswith(b"the request line exceeds 100 bytes\n")
        # A line that never ends is refused as soon as it is too long: 414, not the 431
        # of a head past http_max_head_bytes, and without waiting for the rest.
        out = await raw(front.port, b"GET /" + b"a" * 70_000)
        assert out.startswith(b"HTTP/1.1 414")
        assert len(front.backend.heads) == 1


async def test_http_max_requests_per_connection_then_a_new_connection() -> None:
    async with running_front(limits=HttpLimits(http_max_requests_per_connection=3)) as front:
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            buf = bytearray()
            for n in range(1, 4):
                await stream.send_all(get())
                out = await read_response(stream, buf)
                assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"ok\n")
                assert (b"connection: close" in out.lower()) == (n == 3), (n, out)
            with trio.fail_after(5):
                assert await stream.receive_some(100) == b""  # closed by the router
        # Pipelined: the fourth request is never served on this connection.
        out = await raw(front.port, get() * 4)
        assert out.count(b"HTTP/1.1 200") == 3 and out.lower().count(b"connection: close") == 1
        assert len(front.backend.heads) == 6
        # A client that reuses connections opens a new one every 3 requests.
        front.connections = 0
        async with httpx.AsyncClient(base_url=front.url) as client:
            for _ in range(7):
                assert (await client.get("/")).text == "ok\n"
        assert front.connections == 3


async def test_no_request_limit_by_default() -> None:
    async with running_front() as front:
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            buf = bytearray()
            for _ in range(50):
                await stream.send_all(get())
                assert b"connection: close" not in (await read_response(stream, buf)).lower()
        assert front.connections == 1


async def test_http_head_timeout_s_408_past_it(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running_front(limits=HttpLimits(http_head_timeout_s=5)) as front:
        start = trio.current_time()
        out = await raw(front.port, b"GET / HTTP/1.1\r\nHost: x\r\n", timeout=100)
        assert out.startswith(b"HTTP/1.1 408") and b"no complete request head in 5 s" in out
        assert 5 <= trio.current_time() - start < 6
        # from the end of the previous exchange, on a kept-alive connection too
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            await stream.send_all(get() + b"GET / HTTP/1.1\r\n")
            start = trio.current_time()
            rest = bytearray()
            out = await read_response(stream, rest)
            with trio.fail_after(100):
                while data := await stream.receive_some(65536):
                    rest += data
            assert out.startswith(b"HTTP/1.1 200") and rest.startswith(b"HTTP/1.1 408")
            assert 5 <= trio.current_time() - start < 6


async def test_http_idle_timeout_s_closes_a_kept_alive_connection(
        autojump_clock: trio.testing.MockClock) -> None:
    limits = HttpLimits(http_idle_timeout_s=2, http_head_timeout_s=30)
    async with running_front(limits=limits) as front:
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            await stream.send_all(get())
            assert (await read_response(stream, bytearray())).endswith(b"ok\n")
            start = trio.current_time()
            with trio.fail_after(100):
                assert await stream.receive_some(100) == b""  # silently closed
            assert 2 <= trio.current_time() - start < 3
        # A connection that sends nothing at all is idle the same.
        start = trio.current_time()
        assert await raw(front.port, b"", timeout=100) == b""
        assert 2 <= trio.current_time() - start < 3
        # Once a request began, its head has the head timeout, not the idle one.
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            await stream.send_all(get())
            assert (await read_response(stream, bytearray())).endswith(b"ok\n")
            start = trio.current_time()
            await trio.sleep(1)
            await stream.send_all(b"GET / HTTP/1.1\r\n")
            out = b""
            with trio.fail_after(100):
                while data := await stream.receive_some(65536):
                    out += data
            assert out.startswith(b"HTTP/1.1 408") and b"in 30 s" in out
            assert 30 <= trio.current_time() - start < 31


def test_a_head_within_the_largest_limits_crosses_to_the_serving_router() -> None:
    """What a listener accepts at the top of each range still fits the codec between
    routers, with the two headers it adds (forwarded repeats the authority)."""
    most_bytes = int(LIMIT_RANGES["http_max_head_bytes"][1])
    most_headers = int(LIMIT_RANGES["http_max_headers"][1])
    authority = b"a" * (most_bytes // 2)  # Host counts in the head, once
    headers = tuple((b"x-h%d" % i, b"1") for i in range(most_headers - 1))
    target = b"/" + b"t" * (most_bytes - len(authority) - sum(len(n) + 4 for n, _ in headers)
                            - 100)
    head = RequestHead(method=b"GET", target=target, authority=authority,
                       headers=headers, client="[2001:db8::1]:54321")
    forwarded = with_forwarded(head)
    assert len(forwarded.headers) == most_headers + 1
    assert MessageReader(request=True).feed(encode(forwarded)) == [forwarded]
