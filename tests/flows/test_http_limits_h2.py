"""Each HTTP/2 limit of [limits] holds, as a client sees it: what the router advertises
in its SETTINGS, a client within it served, one past it refused. The listener runs with
the test kit (a real port, real clients), or `server_h2.serve` alone over memory
streams with a handler that never reads, so flow control is exact; timeouts and
rates run on trio's autojump clock."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import httpx
import hyperframe.frame
import pytest
import trio
import trio.testing

from router.adaptors.http import server_h2
from router.adaptors.http.attempt import RequestBody, ResponseSink
from router.adaptors.http.limits import HttpLimits
from router.adaptors.http.message import Body, End, RequestHead, ResponseHead
from tests.flows.test_http_front_h2 import RawH2
from tests.flows.test_http_front_kit import running_front

Codes = h2.errors.ErrorCodes
Handler = Callable[[RequestHead, RequestBody, ResponseSink], Awaitable[None]]


async def events_until(raw: RawH2, kind: type, timeout: float = 10) -> list[h2.events.Event]:
    """Events (acknowledging SETTINGS and PINGs as they come) up to one of `kind`."""
    events: list[h2.events.Event] = []
    with trio.fail_after(timeout):
        while not any(isinstance(e, kind) for e in events):
            data = await raw.stream.receive_some(65536)
            assert data, f"closed before {kind.__name__}: {events}"
            events += raw.h2.receive_data(data)
            await raw.flush()
    return events


async def still_open(raw: RawH2, timeout: float = 10) -> None:
    """A PING is answered: the connection was not closed."""
    raw.h2.ping(b"12345678")
    await raw.flush()
    events = await events_until(raw, h2.events.PingAckReceived, timeout)
    assert not [e for e in events if isinstance(e, h2.events.ConnectionTerminated)], events


def goaway(events: list[h2.events.Event]) -> h2.events.ConnectionTerminated:
    found = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert found, events
    return found[0]


async def connect(port: int) -> RawH2:
    raw = RawH2(await trio.open_tcp_stream("127.0.0.1", port))
    await raw.flush()
    return raw


async def settings(raw: RawH2) -> dict[int, int]:
    """The router's SETTINGS, once its connection window update came too."""
    events = await events_until(raw, h2.events.RemoteSettingsChanged)
    if not any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == 0 for e in events):
        await events_until(raw, h2.events.WindowUpdated)
    changed = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged))
    return {code: s.new_value for code, s in changed.changed_settings.items()}


# ---- through the listener


async def test_http2_max_concurrent_streams_advertised_and_held() -> None:
    async with running_front(limits=HttpLimits(http2_max_concurrent_streams=3)) as front:
        raw = await connect(front.port)
        assert (await settings(raw))[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 3
        for sid in (1, 3, 5):
            raw.request(sid)  # /slow: open until the connection ends
            raw.h2.end_stream(sid)
        await raw.flush()
        await front.wait(lambda: len(front.backend.heads) == 3)
        await still_open(raw)
        # h2's client keeps to what we advertise: the fourth goes by hand
        block = hpack.Encoder().encode([(b":method", b"GET"), (b":path", b"/slow"),
                                        (b":scheme", b"http"), (b":authority", b"x")])
        await raw.stream.send_all(hyperframe.frame.HeadersFrame(
            7, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        assert goaway(await raw.events_until_closed()).error_code == Codes.PROTOCOL_ERROR
        assert len(front.backend.heads) == 3


@pytest.mark.parametrize(("limit", "advertised"), [(None, 16_384), (65_536, 65_536)])
async def test_http2_max_frame_bytes_advertised_and_held(limit: int | None,
                                                         advertised: int) -> None:
    limits = HttpLimits() if limit is None else HttpLimits(http2_max_frame_bytes=limit)
    async with running_front(limits=limits) as front:
        raw = await connect(front.port)
        assert (await settings(raw))[h2.settings.SettingCodes.MAX_FRAME_SIZE] == advertised
        raw.h2.send_headers(1, [(b":method", b"POST"), (b":path", b"/sha"),
                                (b":scheme", b"http"), (b":authority", b"x")])
        raw.h2.send_data(1, b"a" * advertised, end_stream=True)  # one frame, the largest
        await raw.flush()
        events = await events_until(raw, h2.events.StreamEnded)
        heads = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert dict(heads[0].headers)[b"x-size"] == str(advertised).encode()
        raw.request(3, b"/sha")
        await raw.flush()
        await raw.stream.send_all(
            hyperframe.frame.DataFrame(3, data=b"a" * (advertised + 1)).serialize())
        assert goaway(await raw.events_until_closed()).error_code == Codes.FRAME_SIZE_ERROR


async def test_http_max_head_bytes_and_headers_and_request_line_over_http2() -> None:
    limits = HttpLimits(http_max_head_bytes=4096, http_max_headers=10,
                        http_max_request_line_bytes=100)
    async with running_front(limits=limits) as front, httpx.AsyncClient(
            http1=False, http2=True, base_url=front.url) as client:
        path = "/" + "a" * (100 - len("GET / HTTP/1.1"))  # a request line of 100 bytes
        assert (await client.get(path)).status_code == 200
        resp = await client.get(path + "b")
        assert resp.status_code == 414 and resp.text == "the request line exceeds 100 bytes\n"
        resp = await client.get("/", headers={f"x-h{i}": "1" for i in range(11)})
        assert resp.status_code == 431 and resp.text == "more than 10 header fields\n"
        assert (await client.get("/", headers={"x-big": "a" * 3000})).status_code == 200
        assert len(front.backend.heads) == 2
        # A header list past the MAX_HEADER_LIST_SIZE we advertise ends the connection
        # (its HPACK state cannot be kept past a block it would not decode).
        raw = await connect(front.port)
        assert (await settings(raw))[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] == 4096
        raw.h2.send_headers(1, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                                (b":authority", b"x"), (b"x-big", b"a" * 5000)],
                            end_stream=True)
        await raw.flush()
        assert goaway(await raw.events_until_closed()).error_code == Codes.ENHANCE_YOUR_CALM
        assert len(front.backend.heads) == 2


async def test_http_idle_timeout_s_over_http2(autojump_clock: trio.testing.MockClock) -> None:
    async with running_front(limits=HttpLimits(http_idle_timeout_s=5)) as front:
        raw = await connect(front.port)
        raw.request(1, b"/")
        raw.h2.end_stream(1)
        await raw.flush()
        start = trio.current_time()
        events = await raw.events_until_closed(100)
        assert any(isinstance(e, h2.events.StreamEnded) for e in events)
        end = goaway(events)
        assert end.error_code == Codes.NO_ERROR and end.additional_data == b"idle"
        assert 5 <= trio.current_time() - start < 6


class Frames:
    """The frames a server sends, read by hand: after a GOAWAY, h2's own client takes
    no more frames, though RFC 9113 6.8 lets the streams it admits finish."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.decoder = hpack.Decoder()
        self.closed = False

    async def until(self, done: Callable[[list[hyperframe.frame.Frame]], bool],
                    frames: list[hyperframe.frame.Frame]) -> None:
        with trio.fail_after(10):
            while not done(frames):
                while len(self.buf) >= 9:
                    frame, length = hyperframe.frame.Frame.parse_frame_header(
                        memoryview(bytes(self.buf[:9])))
                    if len(self.buf) < 9 + length:
                        break
                    frame.parse_body(memoryview(bytes(self.buf[9:9 + length])))
                    del self.buf[:9 + length]
                    if isinstance(frame, hyperframe.frame.HeadersFrame):
                        frame.data = self.decoder.decode(frame.data, raw=True)
                    frames.append(frame)
                if done(frames):
                    break
                data = await self.stream.receive_some(65536)
                if not data:
                    self.closed = True
                    return
                self.buf += data


def _of(frames: list[hyperframe.frame.Frame], kind: type, sid: int | None = None) -> list:
    return [f for f in frames if isinstance(f, kind) and (sid is None or f.stream_id == sid)]


def _ended(frames: list[hyperframe.frame.Frame], sid: int) -> bool:
    return any("END_STREAM" in f.flags for f in _of(frames, hyperframe.frame.DataFrame, sid))


async def test_http_max_requests_per_connection_over_http2() -> None:
    async with running_front(limits=HttpLimits(http_max_requests_per_connection=2)) as front:
        raw = await connect(front.port)
        raw.request(1, b"/")
        raw.h2.end_stream(1)
        raw.request(3, b"/echo")  # the second request: its body still coming
        raw.h2.send_data(3, b"first ")
        raw.request(5, b"/")  # opened before the client saw the GOAWAY
        raw.h2.end_stream(5)
        await raw.flush()
        reader, frames = Frames(raw.stream), []
        await reader.until(lambda fs: bool(_of(fs, hyperframe.frame.GoAwayFrame)
                                           and _of(fs, hyperframe.frame.RstStreamFrame)
                                           and _of(fs, hyperframe.frame.DataFrame, 3)
                                           and _ended(fs, 1)), frames)
        end = _of(frames, hyperframe.frame.GoAwayFrame)[0]
        assert (end.last_stream_id, end.error_code) == (3, Codes.NO_ERROR)
        refused = _of(frames, hyperframe.frame.RstStreamFrame)[0]
        assert (refused.stream_id, refused.error_code) == (5, Codes.REFUSED_STREAM)
        assert b"".join(f.data for f in _of(frames, hyperframe.frame.DataFrame, 1)) == b"ok\n"
        # The stream in flight finishes: the rest of its body goes, its answer comes back.
        raw.h2.send_data(3, b"and last", end_stream=True)
        await raw.flush()
        await reader.until(lambda fs: _ended(fs, 3), frames)
        echoed = b"".join(f.data for f in _of(frames, hyperframe.frame.DataFrame, 3))
        assert echoed == b"first and last"
        await reader.until(lambda fs: False, frames)  # ...then the connection closes
        assert reader.closed
        assert sorted(h.target for h in front.backend.heads) == [b"/", b"/echo"]
        await front.wait_idle()
        assert front.table.outcomes["ok"] == 2


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="needs nghttp (nghttp2-client)")
async def test_nghttp2_takes_the_graceful_goaway_with_its_requests_in_flight() -> None:
    async with running_front(limits=HttpLimits(http_max_requests_per_connection=3)) as front:
        proc = await trio.run_process(
            ["nghttp", "-v", "-n", *[f"{front.url}/big?n={100_000 + i}" for i in range(3)]],
            capture_stdout=True, capture_stderr=True, check=False)
        out = proc.stdout.decode()
        assert proc.returncode == 0, out[-2000:]
        goaway = out.split("recv GOAWAY frame", 1)[1]  # as the third request came in
        assert "error_code=NO_ERROR" in goaway.splitlines()[1]
        assert out.count(":status: 200") == 3  # and every answer arrived whole
        assert front.connections == 1


# ---- server_h2 alone over memory streams: exact flow control and rates


@asynccontextmanager
async def served(limits: HttpLimits, handle: Handler, *, lockstep: bool = False,
                 client_window: int = 65_535) -> AsyncIterator[RawH2]:
    """A raw h2 client of `server_h2.serve` over a memory stream (`lockstep`: a send
    completes only once the other side read it, as with a full socket buffer)."""
    pair = (trio.testing.lockstep_stream_pair if lockstep
            else trio.testing.memory_stream_pair)
    client, server = pair()
    raw = RawH2(client)
    raw.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: client_window})
    if client_window > 65_535:
        raw.h2.increment_flow_control_window(client_window - 65_535)

    async def serve() -> None:
        async with server:  # closed after, as the listener does
            first = await server.receive_some(65536)
            await server_h2.serve(server, first, handle, limits, "127.0.0.1:1")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        yield raw
        nursery.cancel_scope.cancel()


async def never_reads(head: RequestHead, body: RequestBody, sink: ResponseSink) -> None:
    await trio.sleep_forever()


def post(raw: RawH2, sid: int) -> None:
    raw.h2.send_headers(sid, [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"http"),
                              (b":authority", b"x")])


def send(raw: RawH2, sid: int, n: int) -> None:
    while n:
        size = min(n, raw.h2.max_outbound_frame_size)
        raw.h2.send_data(sid, b"x" * size)
        n -= size


async def test_http2_stream_window_bytes_advertised_and_held() -> None:
    async with served(HttpLimits(http2_stream_window_bytes=8192), never_reads) as raw:
        await raw.flush()
        assert (await settings(raw))[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 8192
        post(raw, 1)
        assert raw.h2.local_flow_control_window(1) == 8192
        send(raw, 1, 8192)  # the whole window, never acknowledged: nobody reads it
        await raw.flush()
        await still_open(raw)
        await raw.stream.send_all(hyperframe.frame.DataFrame(1, data=b"x").serialize())
        assert goaway(await raw.events_until_closed()).error_code == Codes.FLOW_CONTROL_ERROR


async def test_http2_connection_window_bytes_advertised_and_held() -> None:
    limits = HttpLimits(http2_stream_window_bytes=60_000,
                        http2_connection_window_bytes=100_000)
    async with served(limits, never_reads) as raw:
        await raw.flush()
        await settings(raw)
        assert raw.h2.outbound_flow_control_window == 100_000
        post(raw, 1)
        post(raw, 3)
        send(raw, 1, 60_000)
        send(raw, 3, 40_000)  # 100,000 in all, each stream within its own window
        await raw.flush()
        await still_open(raw)
        assert raw.h2.local_flow_control_window(3) == 0  # the connection's is spent
        await raw.stream.send_all(hyperframe.frame.DataFrame(3, data=b"x").serialize())
        assert goaway(await raw.events_until_closed()).error_code == Codes.FLOW_CONTROL_ERROR


@pytest.mark.parametrize("cap", [64 * 1024, 160 * 1024])
async def test_http2_max_queued_bytes_bounds_answers_a_client_does_not_read(
        cap: int, autojump_clock: trio.testing.MockClock) -> None:
    sent: list[int] = []

    async def big_answer(head: RequestHead, body: RequestBody, sink: ResponseSink) -> None:
        await sink.send(ResponseHead(status=200))
        for _ in range(64):
            await sink.send(Body(b"x" * 16_384))
            sent.append(16_384)
        await sink.send(End())

    async with served(HttpLimits(http2_max_queued_bytes=cap), big_answer, lockstep=True,
                      client_window=2**31 - 1) as raw:
        raw.request(1, b"/")
        raw.h2.end_stream(1)
        await raw.flush()
        await trio.sleep(60)  # the client reads nothing: the answer waits
        assert cap - 16_384 < sum(sent) <= cap + 16_384, sum(sent)
        # ...and goes on as the client reads
        events = await events_until(raw, h2.events.StreamEnded, timeout=100)
        got = sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived))
        assert got == sum(sent) == 64 * 16_384


@pytest.mark.parametrize("cap", [16 * 1024, 64 * 1024])
@pytest.mark.parametrize(("kind", "ack"), [("PING", 17), ("SETTINGS", 9)])
async def test_http2_max_queued_control_bytes_stops_reading_a_flood(
        cap: int, kind: str, ack: int, autojump_clock: trio.testing.MockClock) -> None:
    """A client that sends PINGs (or SETTINGS) and never reads the answers: past the cap
    the router reads nothing more from it, so the client's own sends stall. (The control
    frame budget, which would end it first, is out of the way.)"""
    limits = HttpLimits(http2_max_queued_control_bytes=cap,
                        http2_control_frame_burst=1_000_000)
    async with served(limits, never_reads, lockstep=True) as raw:
        await raw.flush()
        frames = 0
        while True:
            for i in range(64):
                if kind == "PING":
                    raw.h2.ping(i.to_bytes(8, "big"))
                else:
                    raw.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: i})
            with trio.move_on_after(10) as stalled:
                await raw.stream.send_all(raw.h2.data_to_send())
            if stalled.cancelled_caught:
                break
            frames += 64
            assert frames < 100_000
        assert cap - 64 * ack < frames * ack <= cap + 4096, frames


async def test_http2_reset_burst_and_resets_per_s(
        autojump_clock: trio.testing.MockClock) -> None:
    limits = HttpLimits(http2_reset_burst=10, http2_resets_per_s=1.0)
    async with served(limits, never_reads) as raw:
        await raw.flush()

        async def resets(sids: range) -> None:
            for sid in sids:
                raw.request(sid)
                raw.h2.end_stream(sid)
                raw.h2.reset_stream(sid, Codes.CANCEL)
            await raw.flush()

        await resets(range(1, 21, 2))  # the burst: 10
        await still_open(raw)
        await trio.sleep(3.5)  # three more, refilled at one a second
        await resets(range(21, 27, 2))
        await still_open(raw)
        await resets(range(27, 29, 2))  # and one too many
        end = goaway(await raw.events_until_closed())
        assert end.error_code == Codes.ENHANCE_YOUR_CALM
        assert end.additional_data == b"too many stream resets"


@pytest.mark.parametrize("kind", ["SETTINGS", "PING", "PRIORITY", "WINDOW_UPDATE", "empty DATA"])
async def test_http2_control_frame_burst_and_control_frames_per_s(
        kind: str, autojump_clock: trio.testing.MockClock) -> None:
    """Frames that carry no request: a burst of them, then a refill a second (the
    PINGs that check the connection is open count too, as do the handshake's)."""
    limits = HttpLimits(http2_control_frame_burst=100, http2_control_frames_per_s=10.0)
    async with served(limits, never_reads) as raw:
        raw.request(1)  # an open stream, for the frames that need one
        await raw.flush()
        await settings(raw)  # the handshake costs a few: SETTINGS (each), its ACK

        async def control_frames(n: int) -> None:
            empty_data = b""
            for i in range(n):
                if kind == "SETTINGS":
                    raw.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: i})
                elif kind == "PING":
                    raw.h2.ping(i.to_bytes(8, "big"))
                elif kind == "PRIORITY":
                    raw.h2.prioritize(1, weight=1 + i % 256)
                elif kind == "WINDOW_UPDATE":
                    raw.h2.increment_flow_control_window(1)
                else:
                    empty_data += hyperframe.frame.DataFrame(1).serialize()
            await raw.stream.send_all(raw.h2.data_to_send() + empty_data)  # one write

        await control_frames(80)
        await still_open(raw)
        await trio.sleep(10)  # refilled, to the burst
        await control_frames(95)
        await still_open(raw)
        await control_frames(10)  # past it
        end = goaway(await raw.events_until_closed())
        assert end.error_code == Codes.ENHANCE_YOUR_CALM
        assert end.additional_data == b"too many control frames"
