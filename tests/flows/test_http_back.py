"""The HTTP connector side against real backends on local ports (h11 and h2 servers
written here, counting connections and requests), driven through `exchange()` (the
serving site is this one) and through a real flow over a TLS link pair."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h11
import pytest
import trio

from router.adaptors.http.backend import IDLE_PER_TARGET, is_quiet
from router.adaptors.http.connector import HttpConnectors
from router.adaptors.http.flowmsg import ACCEPT_DEFER_S, FlowLost, MessageFlow
from router.adaptors.http.hop import with_forwarded
from router.adaptors.http.message import (
    Body,
    End,
    MessagePeer,
    RequestHead,
    ResponseHead,
    Trailers,
)
from router.flows.end import FlowRefusedError
from router.flows.forwarder import NoTarget
from router.flows.table import FlowTable
from router.net.link import Link
from router.net.side import FlowSide
from router.protocol import FlowCode, Open
from router.site.config import ConnectorConfig
from tests.net.test_link_backpressure import LIMITS, link_pair

MIB = 1024 * 1024


def pattern(n: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class Backend:
    port: int = 0
    connections: int = 0
    requests: int = 0
    seen: list[tuple[bytes, dict[bytes, bytes]]] = field(default_factory=list)


# ---- an HTTP/1.1 backend
async def h1_handler(backend: Backend, stream: trio.SocketStream) -> None:
    backend.connections += 1
    conn = h11.Connection(h11.SERVER)

    async def next_event() -> h11.Event:
        while True:
            ev = conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev  # type: ignore[return-value]
            conn.receive_data(await stream.receive_some(65536))

    async def send(ev: h11.Event) -> None:
        await stream.send_all(conn.send(ev) or b"")

    try:
        while True:
            req = await next_event()
            if not isinstance(req, h11.Request):
                return
            backend.requests += 1
            backend.seen.append((req.target, dict(req.headers)))
            path = req.target
            if path == b"/echo":  # streams the body back as it arrives
                await send(h11.Response(status_code=200, headers=[]))
                while isinstance(ev := await next_event(), h11.Data):
                    await send(h11.Data(data=ev.data))
                await send(h11.EndOfMessage(headers=[(b"x-sum", b"done")]))
            else:
                while not isinstance(await next_event(), h11.EndOfMessage):
                    pass
                if path.startswith(b"/big/"):
                    n = int(path[5:])
                    body = pattern(n, "down")
                    await send(h11.Response(status_code=200,
                                            headers=[(b"content-length", str(n).encode())]))
                    for i in range(0, n, 65536):
                        await send(h11.Data(data=body[i:i + 65536]))
                    await send(h11.EndOfMessage())
                elif path == b"/quit":  # answers as keep-alive, then closes while idle
                    await send(h11.Response(status_code=204, headers=[]))
                    await send(h11.EndOfMessage())
                    return
                elif path == b"/die":
                    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"
                                          b"only ten b")
                    return
                elif path.startswith(b"/slow"):  # /slow, or /slow/SECONDS
                    await trio.sleep(float(path[6:] or 0.2))
                    await send(h11.Response(status_code=200,
                                            headers=[(b"content-length", b"2")]))
                    await send(h11.Data(data=b"ok"))
                    await send(h11.EndOfMessage())
                else:
                    await send(h11.Response(status_code=204, headers=[]))
                    await send(h11.EndOfMessage())
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


# ---- an HTTP/2 backend (h2c prior knowledge): echo with trailers, concurrent streams
async def h2_handler(backend: Backend, stream: trio.SocketStream) -> None:
    backend.connections += 1
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    conn.initiate_connection()
    lock = trio.Lock()

    async def flush() -> None:
        async with lock:
            await stream.send_all(conn.data_to_send())

    await flush()
    bodies: dict[int, list[bytes]] = {}
    async with trio.open_nursery() as nursery:
        while data := await stream.receive_some(65536):
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    backend.requests += 1
                    backend.seen.append((dict(ev.headers)[b":path"], dict(ev.headers)))
                    if dict(ev.headers)[b":path"] == b"/refuse":
                        conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    else:
                        bodies[ev.stream_id] = []
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if ev.stream_id in bodies:
                        bodies[ev.stream_id].append(ev.data)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in bodies:
                    body = b"".join(bodies.pop(ev.stream_id))
                    conn.send_headers(ev.stream_id, [(b":status", b"200")])
                    nursery.start_soon(h2_send_body, conn, flush, ev.stream_id, body)
            await flush()
        nursery.cancel_scope.cancel()


async def h2_send_body(conn: h2.connection.H2Connection, flush: Callable[[], Awaitable[None]],
                       sid: int, body: bytes) -> None:
    while body:
        n = min(conn.local_flow_control_window(sid), 16384, len(body))
        if n <= 0:
            await trio.sleep(0.001)
            continue
        conn.send_data(sid, body[:n])
        body = body[n:]
        await flush()
    conn.send_headers(sid, [(b"grpc-status", b"0"), (b"x-len", b"trailer")], end_stream=True)
    await flush()


@asynccontextmanager
async def serving(handler: object) -> AsyncIterator[Backend]:
    backend = Backend()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, lambda s: handler(backend, s), 0)
        backend.port = listeners[0].socket.getsockname()[1]
        yield backend
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def connectors(*targets: tuple[int, str]) -> AsyncIterator[HttpConnectors]:
    table = FlowTable()
    async with trio.open_nursery() as nursery:
        await nursery.start(table.run)
        hc = HttpConnectors(site="west", table=table, window=256 * 1024, connect_timeout=5)
        hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=p, protocol=proto)
                        for p, proto in targets])
        yield hc
        await hc.aclose()
        nursery.cancel_scope.cancel()


@dataclass
class Reply:
    head: ResponseHead
    sha: str
    size: int
    trailers: tuple[tuple[bytes, bytes], ...] = ()
    sizes: list[int] = field(default_factory=list)


async def request(peer: MessagePeer, target: bytes, body: bytes = b"", *,
                  method: bytes = b"GET", headers: tuple[tuple[bytes, bytes], ...] = (),
                  trailers: tuple[tuple[bytes, bytes], ...] = ()) -> Reply:
    """What a listener does: send the request parts while reading the response's."""
    async def upload() -> None:
        # The listener adds x-forwarded-for and forwarded (hop.with_forwarded).
        await peer.send(with_forwarded(RequestHead(
            method=method, target=target, authority=b"api", headers=headers,
            client="10.0.0.9:5555")))
        for i in range(0, len(body), 60000):
            await peer.send(Body(body[i:i + 60000]))
        if trailers:
            await peer.send(Trailers(trailers))
        await peer.send(End())
        peer.finish()

    sha, got = hashlib.sha256(), Reply(ResponseHead(status=0), "", 0)
    try:
        await _exchange(peer, upload, got, sha)
    except* FlowLost as group:
        raise group.exceptions[0] from None  # what the client sees: the flow broke
    got.sha, got.size = sha.hexdigest(), sum(got.sizes)
    return got


async def _exchange(peer: MessagePeer, upload: Callable[[], Awaitable[None]], got: Reply,
                    sha: Any) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(upload)
        while (part := await peer.receive()) is not None:
            if isinstance(part, ResponseHead):
                got.head = part
            elif isinstance(part, Body):
                sha.update(part.data)
                got.sizes.append(len(part.data))
            elif isinstance(part, Trailers):
                got.trailers = part.headers


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- through exchange(): the serving site is this one
async def test_local_h1_bodies_both_ways_and_keepalive() -> None:
    with trio.fail_after(60):
        async with serving(h1_handler) as be, connectors((0, "http1")) as hc:
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol="http1")])
            up = pattern(4 * MIB, "up")
            r = await request(await hc.exchange("api"), b"/echo", up, method=b"POST")
            assert (r.head.status, r.sha, r.size) == (200, digest(up), len(up))
            assert dict(r.trailers)[b"x-sum"] == b"done"
            assert be.seen[0][1][b"transfer-encoding"] == b"chunked"  # length unknown
            assert be.seen[0][1][b"x-forwarded-for"] == b"10.0.0.9"
            assert be.seen[0][1][b"host"] == b"api"
            r = await request(await hc.exchange("api"), f"/big/{3 * MIB}".encode())
            assert (r.sha, r.size) == (digest(pattern(3 * MIB, "down")), 3 * MIB)
            for _ in range(10):
                r = await request(await hc.exchange("api"), b"/x")
                assert r.head.status == 204
            assert be.requests == 12 and be.connections == 1


async def test_local_pool_keeps_at_most_its_bound_idle() -> None:
    n = IDLE_PER_TARGET + 4
    with trio.fail_after(60):
        async with serving(h1_handler) as be, connectors() as hc:
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol="http1")])

            async def one() -> None:
                assert (await request(await hc.exchange("api"), b"/slow")).head.status == 200

            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(one)
            pool = hc.h1[f"127.0.0.1:{be.port}"]
            assert be.connections == n and len(pool.idle) == pool.max_idle < n
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(one)
            assert be.connections == n  # served by idle ones


async def test_local_pool_never_hands_out_a_connection_the_backend_closed() -> None:
    """No task watches idle connections: taking one checks it is quiet, so a backend
    that closed it while idle costs a new connection, not a failed request."""
    with trio.fail_after(30):
        async with serving(h1_handler) as be, connectors() as hc:
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol="http1")])
            for _ in range(3):
                assert (await request(await hc.exchange("api"), b"/quit")).head.status == 204
                pool = hc.h1[f"127.0.0.1:{be.port}"]
                with trio.fail_after(5):  # the backend's FIN reaches the idle connection
                    while pool.idle and is_quiet(pool.idle[-1][0].stream):
                        await trio.sleep(0.01)
            assert (await request(await hc.exchange("api"), b"/x")).head.status == 204
            assert be.connections == 4 and be.requests == 4


async def test_local_no_target_and_dead_backend() -> None:
    with trio.fail_after(30):
        async with serving(h1_handler) as be, connectors() as hc:
            with pytest.raises(NoTarget, match="no HTTP connector"):
                await hc.exchange("api")
            free = trio.socket.socket()
            await free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
            free.close()
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=port,
                                            protocol="http1")])
            with pytest.raises(NoTarget, match="Connection refused"):
                await hc.exchange("api")
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol="http1")])
            with pytest.raises(FlowLost, match="backend"):
                await request(await hc.exchange("api"), b"/die")


async def test_grpc_to_an_http1_target_is_unimplemented() -> None:
    with trio.fail_after(30):
        async with serving(h1_handler) as be, connectors() as hc:
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol="http1")])
            r = await request(await hc.exchange("api"), b"/svc/M", b"\0\0\0\0\0", method=b"POST",
                              headers=((b"content-type", b"application/grpc"),))
            # trailers, not the head: a head that ends the stream has no form in a flow
            assert dict(r.head.headers) == {b"content-type": b"application/grpc"}
            t = dict(r.trailers)
            assert (t[b"grpc-status"], t[b"grpc-message"]) == (
                b"12", b"gRPC needs an http2 connector")
            assert be.requests == 0


async def test_h2_target_concurrent_streams_trailers_and_h1_style_parts() -> None:
    with trio.fail_after(60):
        async with serving(h2_handler) as be, connectors() as hc:
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol="http2")])
            results: dict[int, Reply] = {}

            async def one(i: int) -> None:
                body = pattern(300_000 + i, f"s{i}")
                headers = ((b"content-length", str(len(body)).encode()),) if i % 2 else ()
                results[i] = await request(await hc.exchange("api"), b"/e", body,
                                           method=b"POST", headers=headers,
                                           trailers=((b"x-t", b"1"),) if i % 3 == 0 else ())
                assert results[i].sha == digest(body), i

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
            assert all(dict(r.trailers)[b"grpc-status"] == b"0" for r in results.values())
            assert be.requests == 10 and be.connections == 1
            big = pattern(3 * MIB, "h2")
            r = await request(await hc.exchange("api"), b"/e", big, method=b"PUT")
            assert (r.sha, r.size) == (digest(big), len(big))
            assert be.seen[-1][1][b":authority"] == b"api"


# ---- through a real flow over a TLS link pair
@asynccontextmanager
async def linked(hc: HttpConnectors, *, early_bytes: int = 0) -> AsyncIterator[Link]:
    """East's end of a link to west, whose OPENs the connectors serve."""
    async with trio.open_nursery() as nursery:
        links = await link_pair(
            nursery, lambda lk, fid, msg: hc.serve_open(FlowSide(lk, fid), msg),
            early_bytes=early_bytes)
        yield links["east"]
        nursery.cancel_scope.cancel()


async def open_flow(link: Link) -> MessageFlow:
    me = link.conn.hello
    flow = MessageFlow(FlowSide(link), FlowTable().begin("api", "listener"), request=False)
    flow.side.open(Open(routing_key="api", origin_site=me.site, origin_router=me.router_id,
                        dest_router=link.peer_id, client_addr="10.0.0.9:5555",
                        trace=(me.router_id,), window=LIMITS.flow_window_bytes), flow)
    await flow.wait_answer(10)
    return flow


async def test_a_request_sent_whole_early_is_accepted_even_if_the_backend_is_silent() -> None:
    """The whole request goes with the OPEN (early data), so the serving site holds its
    ACCEPT for the response; a backend silent past ACCEPT_DEFER_S still gets the flow
    accepted in time, well inside an opener's wait shorter than the backend's delay."""
    with trio.fail_after(30):
        async with serving(h1_handler) as be, connectors((be.port, "http1")) as hc, \
                linked(hc, early_bytes=64 * 1024) as link:
            me = link.conn.hello
            flow = MessageFlow(FlowSide(link), FlowTable().begin("api", "listener"),
                               request=False)
            with link.batch():
                flow.side.open(Open(routing_key="api", origin_site=me.site,
                                    origin_router=me.router_id, dest_router=link.peer_id,
                                    client_addr="10.0.0.9:5555", trace=(me.router_id,),
                                    window=LIMITS.flow_window_bytes), flow)
                assert flow.send_nowait(with_forwarded(RequestHead(
                    method=b"GET", target=b"/slow/2", authority=b"api",
                    client="10.0.0.9:5555")))
                assert flow.send_nowait(End()) and flow.can_finish()
                flow.finish()
            started = trio.current_time()
            await flow.wait_answer(ACCEPT_DEFER_S * 3)  # the backend answers after 2 s
            assert trio.current_time() - started < 2
            parts = []
            while (part := await flow.receive()) is not None:
                parts.append(part)
            assert isinstance(parts[0], ResponseHead) and parts[0].status == 200
            assert isinstance(parts[-1], End) and be.requests == 1


@pytest.mark.parametrize("proto", ["http1", "http2"])
async def test_flow_bodies_both_ways(proto: str) -> None:
    handler = h1_handler if proto == "http1" else h2_handler
    with trio.fail_after(90):
        async with serving(handler) as be, connectors() as hc, linked(hc) as link:
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol=proto)])
            up = pattern(3 * MIB, "flow-up")
            target = b"/echo" if proto == "http1" else b"/e"
            r = await request(await open_flow(link), target, up, method=b"POST")
            assert (r.head.status, r.sha, r.size) == (200, digest(up), len(up))
            if proto == "http1":
                r = await request(await open_flow(link), f"/big/{4 * MIB}".encode())
                assert (r.sha, r.size) == (digest(pattern(4 * MIB, "down")), 4 * MIB)
                assert be.connections == 1


async def test_flow_target_down_is_refused_with_the_reason() -> None:
    with trio.fail_after(30):
        async with connectors() as hc, linked(hc) as link:
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=1,
                                            protocol="http1")])
            with pytest.raises(FlowRefusedError, match="Connection refused") as err:
                await open_flow(link)
            assert err.value.code == FlowCode.NO_TARGET


async def test_flow_backend_dying_mid_response_resets_the_flow() -> None:
    with trio.fail_after(30):
        async with serving(h1_handler) as be, connectors() as hc, linked(hc) as link:
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol="http1")])
            flow = await open_flow(link)
            with pytest.raises(FlowLost):
                await request(flow, b"/die")
            assert flow.reset_reason is not None


async def test_h2_refused_stream_is_answered_as_a_refusal() -> None:
    """REFUSED_STREAM before any response: the request was not processed, the listener
    may retry elsewhere; the connection stays usable for the next request."""
    with trio.fail_after(30):
        async with serving(h2_handler) as be, connectors() as hc, linked(hc) as link:
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol="http2")])
            local = await hc.exchange("api")
            with pytest.raises(FlowLost, match="refused the stream before processing it"):
                await request(local, b"/refuse", b"x" * 1000, method=b"POST")
            assert getattr(local, "reset_code", None) == FlowCode.NO_TARGET
            flow = await open_flow(link)
            with pytest.raises(FlowLost, match="refused the stream"):
                await request(flow, b"/refuse")
            r = await request(await open_flow(link), b"/e", b"after", method=b"POST")
            assert r.sha == digest(b"after") and be.connections == 1


# ---- a connector's Host rewrite
@pytest.mark.parametrize("proto", ["http1", "http2"])
async def test_a_connector_host_rewrite_reaches_the_target(proto: str) -> None:
    """The target gets the connector's Host (or :authority); the client's goes on as
    x-forwarded-host, and Forwarded still names it."""
    handler = h1_handler if proto == "http1" else h2_handler
    host_name = b":authority" if proto == "http2" else b"host"
    with trio.fail_after(60):
        async with serving(handler) as be, connectors() as hc:
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol=proto, host_header="api.internal:8443")])
            body = pattern(70_000, "host")
            r = await request(await hc.exchange("api"), b"/echo", body, method=b"POST")
            assert r.sha == digest(body)
            seen = be.seen[-1][1]
            assert seen[host_name] == b"api.internal:8443"
            assert seen[b"x-forwarded-host"] == b"api"
            assert b'host="api"' in seen[b"forwarded"]
            # a connector without a rewrite keeps the client's
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol=proto)])
            await request(await hc.exchange("api"), b"/echo", b"x", method=b"POST")
            assert be.seen[-1][1][host_name] == b"api"
            assert b"x-forwarded-host" not in be.seen[-1][1]


async def test_a_host_rewrite_holds_for_a_request_from_another_site() -> None:
    with trio.fail_after(60):
        async with serving(h1_handler) as be, connectors() as hc, linked(hc) as link:
            hc.set_targets([ConnectorConfig(key="api", host="127.0.0.1", port=be.port,
                                            protocol="http1", host_header="backend")])
            flow = await open_flow(link)
            r = await request(flow, b"/big/1000")
            assert r.size == 1000
            assert be.seen[-1][1][b"host"] == b"backend"
            assert be.seen[-1][1][b"x-forwarded-host"] == b"api"
