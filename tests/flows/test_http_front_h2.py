"""The HTTP listener over HTTP/2 with prior knowledge: httpx, curl and a raw h2 client."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import hyperframe.frame
import pytest
import trio
import trio.testing

from router.adaptors.http.limits import HttpLimits
from tests.flows.test_http_front_kit import curl, pattern, running_front, sha

MIB = 1024 * 1024


def h2_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(http1=False, http2=True, timeout=30)


async def test_concurrent_streams_with_big_bodies_both_ways() -> None:
    async with running_front() as front, h2_client() as client:
        results: dict[int, bool] = {}

        async def one(i: int) -> None:
            if i % 2:
                resp = await client.get(f"{front.url}/big?n={300_000 + i}")
                results[i] = (resp.http_version == "HTTP/2"
                              and sha(resp.content) == resp.headers["x-sha"])
            else:
                body = pattern(400_000, seed=i)
                resp = await client.post(f"{front.url}/echo", content=body)
                results[i] = resp.http_version == "HTTP/2" and sha(resp.content) == sha(body)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
        assert results == {i: True for i in range(40)}
        assert front.connections == 1
        big = pattern(5 * MIB, seed=1)
        resp = await client.post(f"{front.url}/echo", content=big)
        assert sha(resp.content) == sha(big)


async def test_curl_prior_knowledge_and_trailers() -> None:
    async with running_front() as front:
        proc = await curl("--http2-prior-knowledge", "-i", f"{front.url}/big?n=1000000",
                          "-o", "/dev/null", "-w", "%{http_version} %{http_code}")
        assert proc.stdout.endswith(b"2 200"), proc.stderr
        proc = await curl("--http2-prior-knowledge", f"{front.url}/grpc",
                          "-H", "content-type: application/grpc", "-H", "te: trailers",
                          "-d", "x", "-o", "/dev/null", "-D", "-")
        assert b"grpc-status: 0" in proc.stdout  # a response trailer
        head = front.backend.heads[-1]
        assert dict(head.headers)[b"te"] == b"trailers"


class RawH2:
    """A hand-driven h2 client, for what real clients never do."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.h2.initiate_connection()

    async def flush(self) -> None:
        await self.stream.send_all(self.h2.data_to_send())

    def request(self, sid: int, path: bytes = b"/slow") -> None:
        self.h2.send_headers(sid, [(b":method", b"GET"), (b":path", path),
                                   (b":scheme", b"http"), (b":authority", b"x")])

    async def events_until_closed(self, timeout: float = 10) -> list[h2.events.Event]:
        events: list[h2.events.Event] = []
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return events
                if not data:
                    return events
                events += self.h2.receive_data(data)


async def test_rapid_reset_flood_closes_that_connection_only() -> None:
    async with running_front() as front, h2_client() as client:
        resp = await client.get(f"{front.url}/")
        assert resp.text == "ok\n"
        raw = RawH2(await trio.open_tcp_stream("127.0.0.1", front.port))
        for i in range(400):
            sid = 1 + 2 * i
            raw.request(sid)
            raw.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        await raw.flush()
        events = await raw.events_until_closed()
        goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert goaway[0].additional_data == b"too many stream resets"
        # the other connection is still served
        for _ in range(3):
            assert (await client.get(f"{front.url}/")).text == "ok\n"
        await front.wait_idle()


async def test_client_reset_aborts_that_request_flow() -> None:
    async with running_front() as front:
        raw = RawH2(await trio.open_tcp_stream("127.0.0.1", front.port))
        raw.request(1)
        await raw.flush()
        await front.wait(lambda: len(front.backend.heads) == 1)
        raw.h2.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
        raw.request(3, b"/")
        raw.h2.end_stream(3)
        await raw.flush()
        await front.wait(lambda: front.backend.aborted == 1)
        await front.wait_idle()
        assert front.table.outcomes["reset"] == 1


async def test_ping_flood_without_reading_stops_the_reading_not_memory() -> None:
    """A client that sends PINGs and never reads the answers: past the cap of unsent
    bytes the server stops reading, so the client's own sends block (the control frame
    budget, which would end it first, is out of the way)."""
    async with running_front(rcvbuf=32768, limits=HttpLimits(
            http2_control_frame_burst=1_000_000)) as front, h2_client() as client:
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 32768)
        await sock.connect(("127.0.0.1", front.port))
        raw = RawH2(trio.SocketStream(sock))
        await raw.flush()
        for i in range(2000):
            raw.h2.ping(i.to_bytes(8, "big"))
        burst = raw.h2.data_to_send()  # 2000 PINGs, 34 KB
        sent, stalled = 0, False
        with trio.fail_after(20):
            while not stalled:
                # The server reads PINGs as fast as it answers them (CPU bound) until
                # the answers it cannot send reach the cap: then it reads nothing more.
                with trio.move_on_after(1.5) as scope:
                    await raw.stream.send_all(burst)
                    sent += len(burst)
                stalled = scope.cancelled_caught
        assert sent < 4 * MIB, sent  # the cap (1 MiB of answers) and the socket buffers
        assert (await client.get(f"{front.url}/")).text == "ok\n"  # others are served
        await raw.stream.aclose()


async def test_too_many_headers_is_431_and_too_many_streams_closes() -> None:
    async with running_front() as front, h2_client() as client:
        resp = await client.get(f"{front.url}/", headers={f"x-h{i}": "1" for i in range(200)})
        assert resp.status_code == 431 and resp.text == "more than 128 header fields\n"
        # a header block past MAX_HEADER_LIST_SIZE: h2 ends that connection (HPACK state
        # cannot be kept past a block it would not decode)
        with pytest.raises(httpx.RemoteProtocolError, match="error_code:11"):
            await client.get(f"{front.url}/", headers={"x-big": "a" * 70_000})
        assert front.backend.heads == []
        # past MAX_CONCURRENT_STREAMS (100), which the client was told: the connection ends
        raw = RawH2(await trio.open_tcp_stream("127.0.0.1", front.port))
        for i in range(101):
            raw.request(1 + 2 * i)
        await raw.flush()
        events = await raw.events_until_closed()
        goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        await front.wait_idle()  # whatever of its requests started was reset
        await front.wait(lambda: front.backend.aborted == len(front.backend.peers))
        assert (await client.get(f"{front.url}/")).text == "ok\n"


async def test_an_idle_connection_gets_goaway(autojump_clock: trio.testing.MockClock) -> None:
    async with running_front() as front:
        raw = RawH2(await trio.open_tcp_stream("127.0.0.1", front.port))
        raw.request(1, b"/")
        raw.h2.end_stream(1)
        await raw.flush()
        start = trio.current_time()
        events = await raw.events_until_closed(400)
        assert any(isinstance(e, h2.events.ResponseReceived) for e in events)
        goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.NO_ERROR
        assert goaway[0].last_stream_id == 1 and trio.current_time() - start >= 300


async def test_made_you_reset_flood_spends_the_same_budget() -> None:
    """CVE-2025-8671: frames that make the server reset streams (here DATA after the
    client ended the stream) count as resets."""
    async with running_front() as front, h2_client() as client:
        raw = RawH2(await trio.open_tcp_stream("127.0.0.1", front.port))
        await raw.flush()
        bad = b""
        for i in range(300):
            sid = 1 + 2 * i
            raw.request(sid)
            raw.h2.end_stream(sid)
            bad += raw.h2.data_to_send() + hyperframe.frame.DataFrame(
                sid, data=b"x").serialize()
        await raw.stream.send_all(bad)
        events = await raw.events_until_closed()
        goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert (await client.get(f"{front.url}/")).text == "ok\n"
        await front.wait_idle()
