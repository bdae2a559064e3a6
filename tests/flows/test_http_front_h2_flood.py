"""Floods of HTTP/2 frames a hostile client may send, each bounded: the CONTINUATION
flood (CVE-2024-27316 class), a frame longer than it may be, SETTINGS, PING, PRIORITY,
WINDOW_UPDATE and empty DATA floods (CVE-2019-9512/9515/9516/9518), unknown SETTINGS;
each closes only its own connection while another client is served, and honest
clients never trip them. `server_h2.serve` alone over memory streams (a lockstep pair:
what the client could send is what the router read), or the listener on a real port."""

from __future__ import annotations

import shutil
import tracemalloc
from collections.abc import Callable

import h2.errors
import h2.events
import h2.settings
import hpack
import httpx
import hyperframe.frame
import pytest
import trio
import trio.testing

from router.adaptors.http.attempt import RequestBody, ResponseSink
from router.adaptors.http.h2guard import HPACK_MAX_EXPANSION
from router.adaptors.http.limits import HttpLimits
from router.adaptors.http.message import Body, End, RequestHead, ResponseHead
from tests.flows.test_http_front_h2 import RawH2
from tests.flows.test_http_front_kit import running_front
from tests.flows.test_http_limits_h2 import (
    Frames,
    _of,
    events_until,
    goaway,
    never_reads,
    served,
    settings,
    still_open,
)

Codes = h2.errors.ErrorCodes
READ_BYTES = 64 * 1024  # what the listener reads at once (server_h2.READ_BYTES)
GET = hpack.Encoder().encode([(b":method", b"GET"), (b":path", b"/slow"),
                              (b":scheme", b"http"), (b":authority", b"x")])


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags])
            + sid.to_bytes(4, "big") + payload)


async def pushed_until_closed(raw: RawH2, data: bytes, piece: int = 4096,
                              most: int = 4 << 20) -> tuple[int, list[hyperframe.frame.Frame]]:
    """Send `data` in pieces over a lockstep stream until the router stops taking them
    (it closed), reading what it answers meanwhile: (bytes it took, frames it sent)."""
    frames: list[hyperframe.frame.Frame] = []
    taken = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(Frames(raw.stream).until, lambda fs: False, frames)
        try:
            for at in range(0, min(len(data), most), piece):
                await raw.stream.send_all(data[at:at + piece])
                taken += len(data[at:at + piece])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    return taken, frames


def the_goaway(frames: list[hyperframe.frame.Frame]) -> hyperframe.frame.GoAwayFrame:
    found = _of(frames, hyperframe.frame.GoAwayFrame)
    assert found, frames
    end: hyperframe.frame.GoAwayFrame = found[0]
    return end


# ---- sizes, checked on a frame's header before h2 buffers the frame


@pytest.mark.parametrize(("head_limit", "frame_limit", "each"), [
    (4096, 16_384, 4096),  # many small CONTINUATIONs: past 4 x 4 KiB
    (65_536, 1 << 20, 1 << 20),  # a big frame size allowed: the first 1 MiB one
])
async def test_continuation_flood_ends_the_connection_as_the_block_passes_its_bound(
        head_limit: int, frame_limit: int, each: int) -> None:
    """HEADERS without END_HEADERS, then CONTINUATIONs without end: h2 would gather 64
    of them (up to 64 MiB with 1 MiB frames) before it decodes anything."""
    limits = HttpLimits(http_max_head_bytes=head_limit, http2_max_frame_bytes=frame_limit)
    async with served(limits, never_reads, lockstep=True) as raw:
        await raw.flush()
        flood = frame(0x1, 0, 1, GET) + frame(0x9, 0, 1, b"a" * each) * 64
        taken, frames = await pushed_until_closed(raw, flood)
        end = the_goaway(frames)
        assert (end.error_code, end.additional_data) == (Codes.ENHANCE_YOUR_CALM,
                                                         b"header block too large")
        bound = HPACK_MAX_EXPANSION * head_limit
        assert taken <= bound + READ_BYTES, taken  # h2 never held more than the bound


async def test_a_frame_longer_than_max_frame_size_is_refused_on_its_header() -> None:
    """h2 buffers a frame whole before it checks its length: 16 MiB a connection."""
    async with served(HttpLimits(), never_reads, lockstep=True) as raw:
        await raw.flush()
        header = (2**24 - 1).to_bytes(3, "big") + bytes([0x0, 0]) + (1).to_bytes(4, "big")
        taken, frames = await pushed_until_closed(raw, header + b"a" * (2**24 - 1),
                                                  most=2 << 20)
        assert the_goaway(frames).error_code == Codes.FRAME_SIZE_ERROR
        assert taken <= READ_BYTES, taken


async def test_a_header_block_longer_than_its_list_is_not_a_flood() -> None:
    """httpx (h2's HPACK) always Huffman-codes, and `\\` takes 19 bits: a list within
    http_max_head_bytes may come as a block more than twice as long."""
    async with running_front(limits=HttpLimits(http_max_head_bytes=4096)) as front, \
            httpx.AsyncClient(http1=False, http2=True, base_url=front.url) as client:
        value = "\\" * 3500
        assert len(hpack.Encoder().encode([(b"x-slashes", value.encode())])) > 8192
        resp = await client.get("/", headers={"x-slashes": value})
        assert resp.status_code == 200
        assert dict(front.backend.heads[0].headers)[b"x-slashes"] == value.encode()


# ---- frames that carry no request


async def test_empty_data_frames_queue_nothing() -> None:
    """CVE-2019-9518: DATA frames with no data (none, or only padding) on a stream whose
    body nobody reads yet: no window bounds them, so none may wait in its queue."""
    parts: list[object] = []
    flooded = trio.Event()

    async def reads_later(head: RequestHead, body: RequestBody, sink: ResponseSink) -> None:
        await flooded.wait()
        while not isinstance(part := await body.next(), End):
            parts.append(part)
            body.done(part)
        await sink.send(ResponseHead(status=200))
        await sink.send(End())

    limits = HttpLimits(http2_control_frame_burst=1_000_000)
    async with served(limits, reads_later) as raw:
        raw.h2.send_headers(1, [(b":method", b"POST"), (b":path", b"/"),
                                (b":scheme", b"http"), (b":authority", b"x")])
        await raw.flush()
        padded = frame(0x0, 0x8, 1, b"\x00")  # PADDED, pad length 0: one byte of window
        await raw.stream.send_all(frame(0x0, 0, 1) * 5000 + padded * 2000)
        raw.h2.send_data(1, b"hello", end_stream=True)
        await raw.flush()
        await still_open(raw)
        flooded.set()
        await events_until(raw, h2.events.StreamEnded)
        assert parts == [Body(b"hello")]


async def test_unknown_settings_are_not_kept() -> None:
    """RFC 9113: an unknown setting is ignored; h2 keeps each (a deque of ~600 bytes
    each: 45 MB for the 65,536 ids, from 390 KB of SETTINGS)."""
    ids = range(0x100, 0x10000)
    flood = b"".join(frame(0x4, 0, 0, b"".join(i.to_bytes(2, "big") + b"\0\0\0\1"
                                              for i in ids[at:at + 2700]))
                     for at in range(0, len(ids), 2700))
    limits = HttpLimits(http2_control_frame_burst=1_000_000)
    async with served(limits, never_reads) as raw:
        await raw.flush()
        await settings(raw)
        tracemalloc.start()
        try:
            await raw.stream.send_all(flood)
            await still_open(raw, timeout=60)  # tracemalloc makes the server slow
            grown = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert grown < 4 << 20, grown


class TaskSteps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def test_a_window_update_wakes_only_the_streams_it_lets_send(
        autojump_clock: trio.testing.MockClock) -> None:
    """50 answers wait for the connection's window; a flood of 1-byte WINDOW_UPDATEs
    (the data dribble, CVE-2019-9511) woke all 50 for each, to send one byte."""

    async def big_answer(head: RequestHead, body: RequestBody, sink: ResponseSink) -> None:
        await sink.send(ResponseHead(status=200))
        await sink.send(Body(b"x" * 100_000))
        await sink.send(End())

    async with served(HttpLimits(), big_answer) as raw:
        # Streams may take 1 MiB each, the connection its first 65,535 bytes.
        raw.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        for i in range(50):
            raw.request(1 + 2 * i, b"/")
            raw.h2.end_stream(1 + 2 * i)
        await raw.flush()
        await trio.sleep(10)  # the connection window spent, every answer waits
        steps = TaskSteps()
        trio.lowlevel.add_instrument(steps)
        try:
            for _ in range(200):
                raw.h2.increment_flow_control_window(1)
                await raw.flush()
                await trio.sleep(0.01)
        finally:
            trio.lowlevel.remove_instrument(steps)
        # Each update: the test's send, the reader, the writer and the one stream it
        # lets send (10 steps; 60 when all 50 woke).
        assert steps.steps < 200 * 20, steps.steps
        await still_open(raw)


ZERO_LENGTH_HEADERS = {  # CVE-2019-9516: h2 refuses each at once, or resets its stream
    "a request": (frame(0x1, 0x4, 1), Codes.PROTOCOL_ERROR),
    "a request in CONTINUATIONs": (frame(0x1, 0, 1) + frame(0x9, 0, 1) * 100,
                                   Codes.PROTOCOL_ERROR),
    "a second head": (frame(0x1, 0x4, 1, GET) + frame(0x1, 0x4, 1) * 100,
                      Codes.PROTOCOL_ERROR),
    "trailers again": (frame(0x1, 0x4, 1, GET) + frame(0x1, 0x5, 1) * 300,
                       Codes.ENHANCE_YOUR_CALM),  # stream resets: the reset budget
}


@pytest.mark.parametrize("kind", ZERO_LENGTH_HEADERS)
async def test_zero_length_headers_are_bounded_by_h2_or_the_reset_budget(kind: str) -> None:
    """Already bounded before the guard: these pass with h2 alone."""
    flood, code = ZERO_LENGTH_HEADERS[kind]
    async with served(HttpLimits(), never_reads, lockstep=True) as raw:
        await raw.flush()
        _, frames = await pushed_until_closed(raw, flood)
        assert the_goaway(frames).error_code == code


Flood = Callable[[int], bytes]
FLOODS: dict[str, Flood] = {
    "SETTINGS": lambda n: frame(0x4, 0, 0, b"\0\3\0\0\0\x64") * n,
    "SETTINGS ACK": lambda n: frame(0x4, 0x1, 0, b"") * n,
    "PING": lambda n: frame(0x6, 0, 0, b"12345678") * n,
    "PRIORITY": lambda n: frame(0x2, 0, 1, b"\0\0\0\0\x0f") * n,
    "WINDOW_UPDATE": lambda n: frame(0x8, 0, 0, b"\0\0\0\1") * n,
    "empty DATA": lambda n: frame(0x0, 0, 1) * n,
    "padded empty DATA": lambda n: frame(0x0, 0x8, 1, b"\0") * n,
    "unknown type": lambda n: frame(0xfa, 0, 0, b"") * n,
}


@pytest.mark.parametrize("kind", FLOODS)
async def test_control_frame_flood_closes_that_connection_while_another_is_served(
        kind: str) -> None:
    """Connection after connection floods (each ended with ENHANCE_YOUR_CALM) while
    another client's requests go on."""
    async with running_front() as front, httpx.AsyncClient(
            http1=False, http2=True, base_url=front.url) as client:
        served_during = floods = 0

        async def other_client() -> None:
            nonlocal served_during
            while True:
                assert (await client.get("/")).text == "ok\n"
                served_during += 1

        async def flood() -> h2.events.ConnectionTerminated:
            raw = RawH2(await trio.open_tcp_stream("127.0.0.1", front.port))
            raw.request(1)  # an open stream, for the frames that need one
            await raw.flush()
            sent = 0
            with trio.move_on_after(10):
                try:
                    while True:  # a thousand at a time, as fast as the router takes them
                        await raw.stream.send_all(FLOODS[kind](1000))
                        sent += 1000
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            assert sent < 100_000, sent
            return goaway(await raw.events_until_closed())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_client)
            with trio.fail_after(30):
                while served_during < 20 or floods < 3:
                    end = await flood()
                    assert (end.error_code, end.additional_data) == (
                        Codes.ENHANCE_YOUR_CALM, b"too many control frames")
                    floods += 1
            nursery.cancel_scope.cancel()
        await front.wait_idle()


async def test_a_settings_frame_of_many_settings_costs_one_each() -> None:
    async with served(HttpLimits(), never_reads) as raw:
        await raw.flush()
        await settings(raw)
        many = b"".join(i.to_bytes(2, "big") + b"\0\0\0\1" for i in range(0x100, 0x100 + 2000))
        await raw.stream.send_all(frame(0x4, 0, 0, many))
        end = goaway(await raw.events_until_closed())
        assert (end.error_code, end.additional_data) == (Codes.ENHANCE_YOUR_CALM,
                                                         b"too many control frames")


# ---- honest clients never trip them


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
async def test_h2load_with_small_windows_acknowledges_every_frame_within_the_budget() -> None:
    """With a 1 KiB stream window h2load sends a WINDOW_UPDATE for each DATA frame."""
    async with running_front() as front:
        proc = await trio.run_process(
            ["h2load", "-w", "10", "-W", "14", "-n", "10", "-c", "1", "-m", "5",
             f"{front.url}/big?n=1000000"], capture_stdout=True, check=False)
        out = proc.stdout.decode()
        assert proc.returncode == 0 and "10 succeeded, 0 failed" in out, out[-1500:]
        assert front.connections == 1


async def test_grpcio_unary_calls_within_the_budget() -> None:
    """grpcio sends SETTINGS as its BDP estimate grows, PINGs and a WINDOW_UPDATE a call."""
    grpc = pytest.importorskip("grpc")
    async with running_front() as front:
        def calls() -> int:
            with grpc.insecure_channel(f"127.0.0.1:{front.port}") as channel:
                echo = channel.unary_unary("/grpc.Test/Echo")
                return sum(echo(b"x" * i, timeout=10) == b"hi" for i in range(1500))

        assert await trio.to_thread.run_sync(calls) == 1500
        assert front.connections == 1
