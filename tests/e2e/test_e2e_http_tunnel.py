"""Tunnels across sites, end to end: two router subprocesses (east's `http` listener,
west's `http1` connector to tests/support/httpd.py), a real WebSocket echo and a CONNECT
tunnel, each byte checked by sha256."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.e2e.test_e2e_http import Backend
from tests.support import ws
from tests.support.httpd import pattern
from tests.support.sites import Site, free_port, link, site_env, start_sites, wait_for

MB = 1024 * 1024


class Net:
    def __init__(self, workdir: Path) -> None:
        env = site_env(workdir)
        self.west = Site(workdir, "west", env).init()
        self.east = Site(workdir, "east", env).init()
        start_sites(self.west, self.east)
        link(self.west, self.east, workdir)
        self.backend = Backend(workdir, "west", h2=False)
        self.backend.start()
        self.west.sitectl("connector", "create", "ws", f"127.0.0.1:{self.backend.port}",
                          "--protocol", "http1")
        self.port = free_port()
        # A request timeout bounds the wait for the 101, never the tunnel after it.
        self.east.sitectl("listener", "create", "ws", str(self.port), "--protocol", "http",
                          "--timeout", "1s")
        wait_for(lambda: self.east.state()["keys"]["ws"]["served_by"] == ["west"],
                 what="ws served by west")

    def stop(self) -> None:
        self.backend.stop()
        for site in (self.east, self.west):
            site.stop()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    n = Net(tmp_path_factory.mktemp("tunnel"))
    yield n
    n.stop()


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def test_a_websocket_echo_through_the_van(net: Net) -> None:
    with trio.fail_after(60):
        stream = await trio.open_tcp_stream("127.0.0.1", net.port)
        async with stream:
            sock, head, _ = await ws.connect(stream, "/ws")
            assert sock is not None, head
            assert ws.header(head, b"x-served-by") == b"west"
            messages = [(ws.TEXT, b"hello"), (ws.BINARY, b"\x00"), (ws.BINARY, pattern(70_000)),
                        (ws.BINARY, pattern(4 * MB)), (ws.TEXT, b"a" * (3 * MB)),
                        (ws.BINARY, b"")]
            for i, (opcode, data) in enumerate(messages):
                await sock.send(data, opcode=opcode, fragment=MB if i == 3 else 0)
                got = await sock.receive()
                assert got is not None and got[0] == opcode
                assert digest(got[1]) == digest(data), (i, len(got[1]), len(data))
            await trio.sleep(1.5)  # past the listener's --timeout: the tunnel lives on
            await sock.send(b"still there")
            assert await sock.receive() == (ws.BINARY, b"still there")
            assert await sock.close() == 1000
            assert await stream.receive_some(10) == b""  # the backend closed: so do we


async def test_several_websockets_at_once(net: Net) -> None:
    results: dict[int, bool] = {}

    async def one(i: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", net.port)
        async with stream:
            sock, head, _ = await ws.connect(stream, "/ws")
            assert sock is not None, head
            data = pattern(MB + i)
            for _ in range(3):
                await sock.send(data)
                got = await sock.receive()
                assert got is not None and digest(got[1]) == digest(data)
            results[i] = await sock.close() == 1000

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(one, i)
    assert results == {i: True for i in range(6)}


async def test_a_refused_upgrade_is_answered_and_the_connection_stays_usable(
        net: Net) -> None:
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream("127.0.0.1", net.port)
        async with stream:
            sock, head, rest = await ws.connect(stream, "/ws/refuse")
            assert sock is None and ws.status_of(head) == 426, head
            length = int(ws.header(head, b"content-length") or b"0")
            while len(rest) < length:
                rest += await stream.receive_some(65536)
            assert rest == b"no websocket here"
            await stream.send_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
            head, rest = await ws.read_head(stream)
            assert ws.status_of(head) == 200
            while len(rest) < 4:
                rest += await stream.receive_some(65536)
            assert rest == b"west"


async def test_a_connect_tunnel_through_the_van(net: Net) -> None:
    with trio.fail_after(60):
        stream = await trio.open_tcp_stream("127.0.0.1", net.port)
        async with stream:
            where = f"127.0.0.1:{net.backend.port}"
            await stream.send_all(f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\n\r\n".encode())
            head, rest = await ws.read_head(stream)
            assert ws.status_of(head) == 200 and rest == b"", head
            # The backend (a proxy for its own host) spliced us to itself: HTTP inside.
            body = pattern(5 * MB)
            await stream.send_all(b"POST /sha HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                  b"Content-Length: %d\r\n\r\n" % len(body))
            for i in range(0, len(body), MB):
                await stream.send_all(body[i:i + MB])
            await stream.send_eof()
            answer = b""
            while data := await stream.receive_some(65536):
                answer += data
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert answer.endswith(hashlib.sha256(body).hexdigest().encode())
