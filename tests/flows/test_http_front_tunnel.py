"""Tunnels on the HTTP listener: an Upgrade or a CONNECT that the backend accepts becomes
raw bytes both ways inside the request's flow; a declined one is an ordinary response
and the connection goes on. Raw sockets against HttpFrontend, an in-test backend."""

from __future__ import annotations

import contextlib

import h2.events
import pytest
import trio
import trio.testing

from router.adaptors.http.message import (
    Body,
    End,
    MessageError,
    MessageReader,
    Raw,
    RequestHead,
    ResponseHead,
    encode,
)
from tests.flows.test_http_front_h2 import RawH2
from tests.flows.test_http_front_kit import pattern, running_front, sha
from tests.support.ws import header, read_head, status_of

MIB = 1024 * 1024
UPGRADE = (b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


def upgrade(path: str, extra: bytes = UPGRADE) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


async def read_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = await stream.receive_some(min(n - len(out), 256 * 1024))
        assert data, f"closed after {len(out)} of {n} bytes"
        out += data
    return bytes(out)


async def read_to_eof(stream: trio.abc.Stream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some(65536):
        out += data
    return bytes(out)


# ---- the codec: RAW records only after the END of a message that may switch
def test_raw_records_follow_only_a_switch() -> None:
    get = RequestHead(method=b"GET", target=b"/", authority=b"x",
                      headers=((b"upgrade", b"websocket"),))
    # a request that proposes: RAW may follow its END, never precede it
    reader = MessageReader(request=True)
    parts = reader.feed(encode(get) + encode(End()) + encode(Raw(b"ab")) + encode(Raw(b"c")))
    assert parts[2:] == [Raw(b"ab"), Raw(b"c")]
    with pytest.raises(MessageError, match="RAW before the end"):
        MessageReader(request=True).feed(encode(get) + encode(Raw(b"x")))
    with pytest.raises(MessageError, match="after the end"):
        MessageReader(request=True).feed(encode(get) + encode(End()) + encode(Body(b"x")))
    plain = RequestHead(method=b"GET", target=b"/", authority=b"x")
    with pytest.raises(MessageError, match="after the end"):
        MessageReader(request=True).feed(encode(plain) + encode(End()) + encode(Raw(b"x")))
    # a response: only one that accepts the proposal it answers (101; 2xx to CONNECT)
    for request, status, ok in [(get, 101, True), (get, 200, False), (get, 426, False),
                                (plain, 101, False),
                                (RequestHead(method=b"CONNECT", target=b"h:1",
                                             authority=b"h:1"), 200, True)]:
        reader = MessageReader(request=False)
        reader.expect_tunnel(request)
        data = encode(ResponseHead(status=status)) + encode(End()) + encode(Raw(b"x"))
        if ok:
            assert reader.feed(data)[-1] == Raw(b"x")
        else:
            with pytest.raises(MessageError, match="after the end"):
                reader.feed(data)


# ---- the listener
async def test_an_accepted_upgrade_carries_bytes_both_ways_and_half_closes() -> None:
    async with running_front() as front:
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            # bytes sent right behind the request (h11 read them already) are not lost
            await stream.send_all(upgrade("/upgrade") + b"early")
            head, rest = await read_head(stream)
            assert status_of(head) == 101, head
            assert header(head, b"upgrade") == b"websocket"
            assert header(head, b"connection") == b"upgrade"
            assert rest + await read_exactly(stream, 5 - len(rest)) == b"early"
            sent = pattern(3 * MIB, seed=11)

            async def send() -> None:
                for i in range(0, len(sent), 100_000):
                    await stream.send_all(sent[i:i + 100_000])
                await stream.send_eof()  # our half-close reaches the backend

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                echoed = await read_to_eof(stream)  # ...and its half-close comes back
            assert sha(echoed) == sha(sent) and len(echoed) == len(sent)
        got = front.backend.heads[-1]
        names = dict(got.headers)
        # Upgrade is forwarded for the switch (without Connection, which is ours);
        # the WebSocket headers are end to end.
        assert names[b"upgrade"] == b"websocket" and b"connection" not in names
        assert names[b"sec-websocket-key"] == b"dGhlIHNhbXBsZSBub25jZQ=="
        assert front.backend.tunnelled == b"early" + sent
        await front.wait_idle()
        assert front.table.outcomes["ok"] == 1


async def test_a_declined_upgrade_is_a_response_and_the_connection_goes_on() -> None:
    async with running_front() as front:
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            await stream.send_all(upgrade("/upgrade/refuse"))
            head, rest = await read_head(stream)
            assert status_of(head) == 426 and header(head, b"content-length") == b"16"
            assert rest + await read_exactly(stream, 16 - len(rest)) == b"no upgrade here\n"
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # same connection
            head, rest = await read_head(stream)
            assert status_of(head) == 200
            assert rest + await read_exactly(stream, 3 - len(rest)) == b"ok\n"
        assert front.connections == 1 and front.backend.tunnels == 0


async def test_an_h2c_upgrade_is_declined_as_before() -> None:
    """HTTP/2 to the listener is per request: `Upgrade: h2c` is not tunnelled."""
    async with running_front() as front:
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            await stream.send_all(upgrade("/", b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABk"
                                          b"\r\nConnection: Upgrade, HTTP2-Settings\r\n"))
            head, _ = await read_head(stream)
        assert status_of(head) == 200  # the kit's plain answer: no switch
        names = dict(front.backend.heads[-1].headers)
        assert b"upgrade" not in names and b"http2-settings" not in names


async def test_connect_is_tunnelled_to_the_backend() -> None:
    async with running_front() as front:
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            await stream.send_all(b"CONNECT db.internal:5432 HTTP/1.1\r\n"
                                  b"Host: db.internal:5432\r\n\r\n")
            head, rest = await read_head(stream)
            assert status_of(head) == 200 and rest == b""
            assert header(head, b"content-length") is None
            for size in (1, 1000, 300_000):
                data = pattern(size, seed=size)
                await stream.send_all(data)
                assert await read_exactly(stream, size) == data
            await stream.send_eof()
            assert await read_to_eof(stream) == b""
        got = front.backend.heads[-1]
        assert (got.method, got.target, got.authority) == (
            b"CONNECT", b"db.internal:5432", b"db.internal:5432")
        await front.wait_idle()
        assert front.table.outcomes["ok"] == 1


async def test_the_backend_half_closes_first_and_the_client_still_sends() -> None:
    async with running_front() as front:
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            await stream.send_all(upgrade("/upgrade/hangup"))
            head, rest = await read_head(stream)
            assert status_of(head) == 101
            assert rest + await read_to_eof(stream) == b"bye"  # its half-close
            await stream.send_all(b"still here")
            await stream.send_eof()
            await front.wait_idle()
        assert front.backend.tunnelled == b"still here"
        assert front.table.outcomes["ok"] == 1


async def test_a_reset_on_either_side_resets_the_other() -> None:
    async with running_front() as front:
        # the backend's end breaks: the client's connection is reset, not ended
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            await stream.send_all(upgrade("/upgrade"))
            assert status_of((await read_head(stream))[0]) == 101
            await stream.send_all(b"reset")
            with pytest.raises(trio.BrokenResourceError), trio.fail_after(10):
                await read_to_eof(stream)
        await front.wait_idle()
        assert front.table.outcomes["reset"] == 1
        # the client goes away: the flow is aborted
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        await stream.send_all(upgrade("/upgrade"))
        assert status_of((await read_head(stream))[0]) == 101
        await front.wait(lambda: front.backend.tunnels == 2)
        stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER,
                                 b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await stream.aclose()  # a RST
        await front.wait(lambda: front.backend.aborted == 2)
        await front.wait_idle()
        assert front.table.outcomes["reset"] == 2


async def test_a_tunnel_outlives_the_request_timeout_and_idle_timeouts(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running_front(timeout_s=1.0) as front:
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            await stream.send_all(upgrade("/upgrade"))
            assert status_of((await read_head(stream))[0]) == 101
            await trio.sleep(120)  # past --timeout and the 60 s head timeout
            await stream.send_all(b"ping")
            assert await read_exactly(stream, 4) == b"ping"
        # the timeout still bounds the wait for the answer
        out = await _exchange(front.port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 504")


async def _exchange(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        return (await read_head(stream))[0]


async def test_connect_over_http2_is_refused_with_the_reason() -> None:
    async with running_front() as front:
        raw = RawH2(await trio.open_tcp_stream("127.0.0.1", front.port))
        raw.h2.send_headers(1, [(b":method", b"CONNECT"), (b":authority", b"db:5432")])
        await raw.flush()
        events: list[h2.events.Event] = []
        with trio.fail_after(10):
            while not any(isinstance(e, h2.events.StreamEnded) for e in events):
                events += raw.h2.receive_data(await raw.stream.receive_some(65536))
        await raw.stream.aclose()
        head = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
        assert dict(head.headers)[b":status"] == b"501"
        body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert b"CONNECT over HTTP/2 is not supported" in body
        assert front.backend.heads == []


async def test_a_switch_nobody_asked_for_resets_the_client() -> None:
    """A 101 to a request that proposed nothing (a faulty serving router): the client's
    connection is reset, it never gets a head it did not ask for."""
    async with running_front() as front:
        stream = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with stream:
            await stream.send_all(b"GET /upgrade HTTP/1.1\r\nHost: x\r\n\r\n")
            # nothing but an end, or the RST first
            with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
                assert await read_to_eof(stream) == b""
        await front.wait_idle()
        assert front.table.outcomes["reset"] == 1 and front.backend.tunnels == 1
