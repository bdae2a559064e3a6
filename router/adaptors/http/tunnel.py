"""Tunnels: an HTTP/1.1 `Upgrade` (WebSocket, say) or `CONNECT` that the backend accepts
becomes an opaque byte stream inside the request's own flow.

The request is routed like any other (rules, affinity, retries until a response
started). The listener keeps `Upgrade` (hop-by-hop otherwise) and holds back its
half-close after the request's END; the connector sends the request on a FRESH
connection to an http1 target (never a pooled one, and it never goes back to the
pool). A 101 to an upgrade, or a 2xx to a CONNECT, goes to the client, and from
then on each direction carries RAW records (`message.py`) within the flow's credit,
until its half-close; a reset on either side resets the other. Any other answer is
an ordinary response, and the client's connection goes on as HTTP.

CONNECT goes to the *backend* as a CONNECT: the listener's key names the service,
so a router never connects to the host a client names (it is not an open proxy).
An http2 target gets neither: the connector answers 501 (RFC 8441's extended
CONNECT is not built).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import h11
import trio

from router.adaptors.http.backend import BackendError, H1Conn, close_stream
from router.adaptors.http.flowmsg import FlowLost
from router.adaptors.http.hop import (
    ROUTER_ERROR_HEADER,
    request_h1,
    response_headers,
    upgrade_headers,
)
from router.adaptors.http.message import (
    Body,
    End,
    MessagePeer,
    Part,
    Raw,
    RequestHead,
    ResponseHead,
    Trailers,
    switches,
)
from router.flows.entry import Outcome
from router.net.errors import connect_reason
from router.net.sockets import abort_socket
from router.protocol import FlowCode

CHUNK = 64 * 1024  # per read, so a RAW record stays under the message limits
# A fresh connection to the target at `endpoint` ("host:port" as the connector names it).
FreshConnection = Callable[[str], Awaitable[trio.abc.Stream]]


@runtime_checkable
class Switchable(Protocol):
    """A response sink whose client connection can become a tunnel (HTTP/1.1)."""

    def switched(self) -> tuple[trio.abc.Stream, bytes]:
        """After the switching head went: the connection, and the bytes the client
        sent past its request that were read already."""
        ...


@dataclass(frozen=True, slots=True)
class Switched:
    """The response switched protocols; its head went to the client."""

    stream: trio.abc.Stream
    prefix: bytes


def what(head: RequestHead) -> str:
    """The tunnel a request asks for, for people ("CONNECT", "an upgrade to websocket")."""
    if head.method == b"CONNECT":
        return "CONNECT"
    token = next((v for n, v in head.headers if n == b"upgrade"), b"?")
    return f"an upgrade to {token.decode('latin-1')}"


# ---- both sides: the bytes
async def splice(peer: MessagePeer, stream: trio.abc.Stream, prefix: bytes, *,
                 who: str) -> bool:
    """Relay a tunnel between `peer` (both messages ended) and `stream` (`who`: the
    client, or a backend's endpoint), both ways at once: True once both directions
    half-closed, False when either side broke and the other was reset (the peer
    aborted, the socket closed with a RST). Never closes `stream`."""
    broken = False

    async with trio.open_nursery() as nursery:
        def fail(code: FlowCode | None = None, reason: str = "") -> None:
            nonlocal broken
            broken = True
            if code is not None:
                peer.abort(code, reason)
            abort_socket(stream)
            nursery.cancel_scope.cancel()

        async def outward() -> None:  # stream -> peer
            data = prefix
            try:
                while True:
                    if data:
                        await peer.send(Raw(data))
                    data = bytes(await stream.receive_some(CHUNK))
                    if not data:
                        break
                peer.finish()
            except FlowLost:
                fail()
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                fail(FlowCode.PEER_RESET, f"{who} broke the tunnel: {exc or 'reset'}")

        async def inward() -> None:  # peer -> stream
            try:
                while (part := await peer.receive()) is not None:
                    if not isinstance(part, Raw):
                        fail(FlowCode.INTERNAL, "a message part inside a tunnel")
                        return
                    await stream.send_all(part.data)
            except FlowLost:
                fail()
                return
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                fail(FlowCode.PEER_RESET, f"{who} broke the tunnel: {exc or 'reset'}")
                return
            if isinstance(stream, trio.abc.HalfCloseableStream):
                # It may have closed first: its reading side says how.
                with contextlib.suppress(OSError, trio.BrokenResourceError,
                                         trio.ClosedResourceError):
                    await stream.send_eof()

        nursery.start_soon(outward)
        nursery.start_soon(inward)
    return not broken


# ---- the listener's side
async def switch(peer: MessagePeer, sink: object, head: ResponseHead,
                 send: Callable[[Part], Awaitable[None]]) -> Switched:
    """Send the switching `head` to the client (with `send`), read the response's END:
    the client's connection as a stream. BrokenResourceError if the sink cannot switch
    (it never proposed), FlowLost if the peer broke."""
    if not isinstance(sink, Switchable):
        raise trio.BrokenResourceError("this client connection cannot switch protocols")
    await send(head)
    end = await peer.receive()
    if not isinstance(end, End):
        raise FlowLost("the switching response did not end before its tunnel")
    return Switched(*sink.switched())


# ---- the connector's side
async def serve_h1(peer: MessagePeer, head: RequestHead, conn: H1Conn | None, endpoint: str,
                   fresh: FreshConnection | None) -> Outcome:
    """A request that proposes a tunnel, on `conn` (fresh, never pooled) or else on a new
    connection to `endpoint` (by `fresh`); closes it."""
    if conn is None:
        assert fresh is not None
        try:
            conn = H1Conn(await fresh(endpoint), endpoint)
        except (OSError, trio.TooSlowError) as exc:
            # made by this router: the listener may try another site
            return await answer(peer, 503, f"{endpoint}: {connect_reason(exc)}")
    outcome: Outcome = "reset"
    try:
        outcome = await _relay(peer, head, conn)
    except FlowLost:
        pass
    except (BackendError, h11.LocalProtocolError, OSError, trio.BrokenResourceError,
            trio.ClosedResourceError) as exc:
        peer.abort(FlowCode.PEER_RESET, f"{endpoint}: {exc}")
    finally:
        await close_stream(conn.stream, abort=outcome != "ok")
    return outcome


async def _relay(peer: MessagePeer, head: RequestHead, conn: H1Conn) -> Outcome:
    first = await peer.receive()
    chunked = not (first is None or isinstance(first, End)
                   or any(n == b"content-length" for n, _ in head.headers))
    headers = [*request_h1(head.method, head.target, head.authority or conn.endpoint.encode(),
                           head.headers, head.client, chunked=chunked),
               *upgrade_headers(head.headers)]
    await conn.send(h11.Request(method=head.method, target=head.target, headers=headers))
    # The body of a proposal (rare: a WebSocket GET or a CONNECT has none) goes whole
    # before its answer is read.
    part = first
    while not isinstance(part, End):
        if part is None:
            raise FlowLost("the request ended without its end")
        if isinstance(part, Body) and part.data:
            await conn.send(h11.Data(data=part.data))
        part = await peer.receive()
    await conn.send(h11.EndOfMessage())
    while True:
        event = await conn.next_event()
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                break
            continue  # 100, 103: nothing a flow carries
        if isinstance(event, h11.Response):
            break
        raise BackendError(f"{conn.endpoint}: backend closed the connection")
    got = response_headers(event.headers)
    if switches(head, event.status_code):
        if event.status_code == 101:
            got = (*got, *((n, v) for n, v in event.headers if n == b"upgrade"))
        await peer.send(ResponseHead(status=event.status_code, headers=got))
        await peer.send(End())
        prefix = bytes(conn.h11.trailing_data[0])
        return "ok" if await splice(peer, conn.stream, prefix, who=conn.endpoint) else "reset"
    # Declined (a 4xx, 426, or a 200 that ignores the upgrade): an ordinary response.
    await peer.send(ResponseHead(status=event.status_code, headers=got))
    while True:
        event = await conn.next_event()
        if isinstance(event, h11.Data):
            await peer.send(Body(bytes(event.data)))
        elif isinstance(event, h11.EndOfMessage):
            if event.headers:
                await peer.send(Trailers(response_headers(event.headers)))
            await peer.send(End())
            peer.finish()
            await _drain(peer)
            return "ok"
        elif isinstance(event, h11.ConnectionClosed):
            raise BackendError(f"{conn.endpoint}: backend closed the connection")


async def answer(peer: MessagePeer, status: int, reason: str) -> Outcome:
    """Answer a tunnel request ourselves (x-van-error: the router made it)."""
    text = (reason + "\n").encode()
    try:
        await peer.send(ResponseHead(status=status, headers=(
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(text)).encode()), (ROUTER_ERROR_HEADER, b"1"))))
        await peer.send(Body(text))
        await peer.send(End())
        peer.finish()
        await _drain(peer)
    except FlowLost:
        return "reset"
    return "ok"


async def _drain(peer: MessagePeer) -> None:
    """The rest of the request, to the listener's half-close (sent once it has our
    answer and saw that it did not switch)."""
    while await peer.receive() is not None:
        pass
