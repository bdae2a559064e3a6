"""Tunnels on the HTTP connector side, against the test backend (tests/support/httpd.py,
in this process): a WebSocket echo and a CONNECT, through `exchange()` (the serving
site is this one) and through a real flow over a TLS link pair; a tunnel takes a fresh
backend connection and never gives it to the pool; an http2 target answers 501."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h2.exceptions
import h11
import pytest
import trio

from router.adaptors.http.connector import HttpConnectors
from router.adaptors.http.flowmsg import MessageFlow
from router.adaptors.http.hop import ROUTER_ERROR_HEADER, with_forwarded
from router.adaptors.http.message import (
    Body,
    End,
    MessagePeer,
    Raw,
    RequestHead,
    ResponseHead,
)
from router.flows.table import FlowTable
from router.site.config import ConnectorConfig
from tests.flows.test_http_back import connectors, linked, open_flow
from tests.support import httpd, ws

MIB = 1024 * 1024


@dataclass
class Served:
    port: int = 0
    connections: int = 0


@asynccontextmanager
async def backend(http2: bool = False) -> AsyncIterator[Served]:
    served, app = Served(), httpd.App("west")

    async def handler(stream: trio.SocketStream) -> None:
        served.connections += 1
        try:
            await (httpd.serve_h2 if http2 else httpd.serve_h1)(app, stream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError,
                 h2.exceptions.ProtocolError, ws.WsError, OSError):
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        served.port = listeners[0].socket.getsockname()[1]
        yield served
        nursery.cancel_scope.cancel()


class PeerStream(trio.abc.HalfCloseableStream):
    """A tunnel's bytes on a MessagePeer, as a trio stream (what the listener's client
    would see), so the WebSocket code runs over it."""

    def __init__(self, peer: MessagePeer) -> None:
        self.peer = peer

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        for i in range(0, len(data), 64 * 1024):
            await self.peer.send(Raw(bytes(data[i:i + 64 * 1024])))

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        part = await self.peer.receive()
        if part is None:
            return b""
        assert isinstance(part, Raw), part
        return part.data

    async def send_eof(self) -> None:
        self.peer.finish()

    async def aclose(self) -> None:
        pass


def websocket_head(path: bytes = b"/ws", key: bytes = b"") -> RequestHead:
    # as the listener forwards it: `upgrade` kept, `connection` its own
    return with_forwarded(RequestHead(method=b"GET", target=path, authority=b"api", headers=(
        (b"sec-websocket-key", key or base64.b64encode(os.urandom(16))),
        (b"sec-websocket-version", b"13"), (b"upgrade", b"websocket")),
        client="10.0.0.9:5555"))


async def propose(peer: MessagePeer, head: RequestHead) -> tuple[ResponseHead, bytes]:
    """Send a proposing request; (the answer's head, its body: empty for a switch)."""
    if isinstance(peer, MessageFlow):
        peer.expect_tunnel(head)
    await peer.send(head)
    await peer.send(End())
    got = await peer.receive()
    assert isinstance(got, ResponseHead), got
    body = b""
    while not isinstance(part := await peer.receive(), End):
        assert isinstance(part, Body), part
        body += part.data
    return got, body


async def through(hc: HttpConnectors, link: object | None) -> MessagePeer:
    return await (open_flow(link) if link is not None else hc.exchange("api"))  # type: ignore[arg-type]


@asynccontextmanager
async def setup(proto: str = "http1", *, flow: bool) -> AsyncIterator[
        tuple[Served, HttpConnectors, object | None]]:
    async with backend(http2=proto == "http2") as be, connectors() as hc:
        hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                        protocol=proto)])
        if flow:
            async with linked(hc) as link:
                yield be, hc, link
        else:
            yield be, hc, None


async def plain_get(peer: MessagePeer) -> int:
    await peer.send(RequestHead(method=b"GET", target=b"/whoami", authority=b"api"))
    await peer.send(End())
    peer.finish()
    head = await peer.receive()
    assert isinstance(head, ResponseHead)
    while await peer.receive() is not None:
        pass
    return head.status


@pytest.mark.parametrize("flow", [False, True], ids=["local", "flow"])
async def test_websocket_echo_on_a_fresh_connection_never_pooled(flow: bool) -> None:
    with trio.fail_after(60):
        async with setup(flow=flow) as (be, hc, link):
            assert await plain_get(await through(hc, link)) == 200
            pool = hc.h1[f"127.0.0.1:{be.port}"]
            assert be.connections == 1 and len(pool.idle) == 1
            key = base64.b64encode(os.urandom(16))
            peer = await through(hc, link)
            head, _ = await propose(peer, websocket_head(key=key))
            assert head.status == 101
            names = dict(head.headers)
            assert names[b"upgrade"] == b"websocket"
            assert names[b"sec-websocket-accept"] == ws.accept_key(key)
            assert be.connections == 2 and len(pool.idle) == 1  # a fresh one; the idle stays
            sock = ws.WebSocket(PeerStream(peer), client=True)
            for i, size in enumerate([0, 5, 125, 126, 70_000, 3 * MIB]):
                data = httpd.pattern(size)
                await sock.send(data, opcode=ws.BINARY if i % 2 else ws.TEXT,
                                fragment=MIB if size > MIB else 0)
                got = await sock.receive()
                assert got is not None and got[0] == (ws.BINARY if i % 2 else ws.TEXT)
                assert hashlib.sha256(got[1]).digest() == hashlib.sha256(data).digest()
            assert await sock.close() == 1000
            await sock.stream.send_eof()
            assert await sock.stream.receive_some() == b""  # the backend closed: the end
            await hc._table.wait_idle(10)
            assert hc._table.outcomes["ok"] >= 2
            assert len(pool.idle) == 1 and pool.opened == 2


@pytest.mark.parametrize("flow", [False, True], ids=["local", "flow"])
async def test_a_declined_upgrade_is_relayed_and_its_connection_closed(flow: bool) -> None:
    with trio.fail_after(30):
        async with setup(flow=flow) as (be, hc, link):
            peer = await through(hc, link)
            head, body = await propose(peer, websocket_head(b"/ws/refuse"))
            assert (head.status, body) == (426, b"no websocket here")
            peer.finish()  # the listener's held half-close, once no switch came
            assert await peer.receive() is None
            assert await plain_get(await through(hc, link)) == 200
            # the upgrade's connection was not pooled: the GET took a new one
            assert be.connections == 2


@pytest.mark.parametrize("flow", [False, True], ids=["local", "flow"])
async def test_connect_to_the_backend_then_http_through_the_tunnel(flow: bool) -> None:
    with trio.fail_after(60):
        async with setup(flow=flow) as (be, hc, link):
            peer = await through(hc, link)
            where = f"127.0.0.1:{be.port}".encode()
            head, _ = await propose(peer, with_forwarded(RequestHead(
                method=b"CONNECT", target=where, authority=where, client="10.0.0.9:1")))
            assert head.status == 200
            stream = PeerStream(peer)
            body = httpd.pattern(2 * MIB)
            await stream.send_all(b"POST /sha HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await stream.send_eof()
            answer = b""
            while data := await stream.receive_some():
                answer += data
            assert answer.startswith(b"HTTP/1.1 200")
            assert answer.endswith(hashlib.sha256(body).hexdigest().encode())
            # the proxy's own connection and the one it made to itself
            assert be.connections == 2


async def test_an_http2_target_answers_501_for_a_tunnel() -> None:
    with trio.fail_after(30):
        async with setup("http2", flow=False) as (_, hc, _link):
            peer = await hc.exchange("api")
            head, body = await propose(peer, websocket_head())
            assert head.status == 501 and dict(head.headers)[ROUTER_ERROR_HEADER] == b"1"
            assert body == b"an upgrade to websocket needs an http1 connector (tunnels are " \
                           b"HTTP/1.1 only)\n"
            peer.finish()
            assert await peer.receive() is None


async def test_a_fresh_connection_that_fails_is_a_router_503() -> None:
    """The pool had a connection, the tunnel's own could not be made: a 503 the router
    made (x-van-error), which a listener may retry on another site."""
    calls = 0

    async def connect(host: str, port: int) -> trio.abc.Stream:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(111, "Connection refused")
        return await trio.open_tcp_stream(host, port)

    with trio.fail_after(30):
        async with backend() as be, trio.open_nursery() as nursery:
            table = FlowTable()
            await nursery.start(table.run)
            hc = HttpConnectors(site="west", table=table, window=256 * 1024,
                                connect_timeout=5, connect=connect)
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol="http1")])
            assert await plain_get(await hc.exchange("api")) == 200
            head, body = await propose(await hc.exchange("api"), websocket_head())
            assert head.status == 503 and dict(head.headers)[ROUTER_ERROR_HEADER] == b"1"
            assert body == f"127.0.0.1:{be.port}: Connection refused\n".encode()
            assert len(hc.h1[f"127.0.0.1:{be.port}"].idle) == 1  # the pooled one, back
            await hc.aclose()
            nursery.cancel_scope.cancel()
