"""One HTTP exchange relayed on a backend connection: request parts to the target,
response parts back, both at once (a backend may answer before the request body
ended). A backend that breaks mid-response resets the flow, so the client sees a
broken response, never a truncated one that looks whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import h2.errors
import h2.events
import h2.exceptions
import h11
import trio

from router.adaptors.http import tunnel
from router.adaptors.http.backend import (
    BackendError,
    H1Conn,
    H1Pool,
    H2Stream,
    close_stream,
)
from router.adaptors.http.flowmsg import FlowLost
from router.adaptors.http.hop import (
    is_grpc,
    request_h1,
    request_h2,
    response_headers,
    rewrite_host,
)
from router.adaptors.http.message import (
    Body,
    End,
    MessagePeer,
    Part,
    RequestHead,
    ResponseHead,
    Trailers,
    proposes_tunnel,
)
from router.flows.entry import Outcome
from router.protocol import FlowCode


@dataclass(frozen=True, slots=True)
class H1Lease:
    pool: H1Pool
    conn: H1Conn
    reused: bool = False  # taken from the pool, not connected for this request


Lease = H1Lease | H2Stream
# As a head and trailers: a head that ends the stream has no form in a flow's message.
GRPC_UNIMPLEMENTED = (ResponseHead(status=200, headers=((b"content-type", b"application/grpc"),)),
                      Trailers(((b"grpc-status", b"12"),
                                (b"grpc-message", b"gRPC needs an http2 connector"))))


async def give_back(lease: Lease) -> None:
    if isinstance(lease, H1Lease):
        await lease.pool.put(lease.conn, unused=True)
    else:
        lease.release()


async def serve(peer: MessagePeer, lease: Lease,
                fresh: tunnel.FreshConnection | None = None, *, host: bytes = b"") -> Outcome:
    """Relay one request and its response; the outcome for the table. `fresh` opens
    the connection of its own that a tunnel takes (`tunnel.py`); a `host` replaces the
    client's Host (or :authority), which then goes on as x-forwarded-host."""
    try:
        head = await peer.receive()
    except FlowLost:
        await give_back(lease)
        return "reset"
    if not isinstance(head, RequestHead):
        await give_back(lease)
        peer.abort(FlowCode.INTERNAL, "the request did not start with its head")
        return "error"
    if host:
        head = rewrite_host(head, host)
    if proposes_tunnel(head):
        if not isinstance(lease, H1Lease):
            lease.release()
            return await tunnel.answer(peer, 501, f"{tunnel.what(head)} needs an http1 "
                                       "connector (tunnels are HTTP/1.1 only)")
        own = None if lease.reused and fresh is not None else lease.conn
        if own is None:  # a tunnel never takes a pooled connection
            await give_back(lease)
        return await tunnel.serve_h1(peer, head, own, lease.conn.endpoint, fresh)
    if isinstance(lease, H1Lease) and is_grpc(head.headers):
        await give_back(lease)
        try:
            for part in GRPC_UNIMPLEMENTED:
                await peer.send(part)
            await peer.send(End())
            peer.finish()
            await _drain(peer)
        except FlowLost:
            return "reset"
        return "ok"
    if isinstance(lease, H1Lease):
        return await _serve_h1(peer, head, lease)
    try:
        return await _serve_h2(peer, head, lease)
    finally:
        lease.release()


async def _drain(peer: MessagePeer, part: Part | None = None) -> None:
    """Read the rest of the request (whose backend no longer wants it) to its end."""
    while not isinstance(part, End):
        part = await peer.receive()
        if part is None:
            return
    await peer.receive()  # the half-close after End


class _Relay:
    """What the two directions of one exchange share: the first failure ends both."""

    def __init__(self, peer: MessagePeer) -> None:
        self.peer = peer
        self.failure: tuple[FlowCode, str] | None = None  # code for the peer
        self.peer_lost = False
        self.scope = trio.CancelScope()

    def fail(self, code: FlowCode, reason: str) -> None:
        if self.failure is None and not self.peer_lost:
            self.failure = (code, reason)
            self.peer.abort(code, reason)
        self.scope.cancel()

    def lost(self) -> None:
        self.peer_lost = True
        self.scope.cancel()

    def outcome(self, refused: bool = False) -> Outcome:
        if self.failure is None and not self.peer_lost:
            return "ok"
        return "refused" if refused else "reset"


async def _serve_h1(peer: MessagePeer, head: RequestHead, lease: H1Lease) -> Outcome:
    conn, relay = lease.conn, _Relay(peer)
    returned = False  # to the pool already
    first: Part | None = None
    try:
        if not any(n == b"content-length" for n, _ in head.headers):
            first = await peer.receive()  # a body of unknown length goes chunked
    except FlowLost:
        await close_stream(conn.stream, abort=True)
        return "reset"
    chunked = first is not None and not isinstance(first, End)
    headers = request_h1(head.method, head.target, head.authority or conn.endpoint.encode(),
                         head.headers, head.client, chunked=chunked)

    async def upload() -> None:
        trailers: list[tuple[bytes, bytes]] = []
        part = first
        try:
            await conn.send(h11.Request(method=head.method, target=head.target,
                                        headers=headers))
            while True:
                if part is None:
                    part = await peer.receive()
                if isinstance(part, Body) and part.data:
                    await conn.send(h11.Data(data=part.data))
                elif isinstance(part, Trailers) and chunked:
                    trailers = list(part.headers)
                elif isinstance(part, End) or part is None:
                    await conn.send(h11.EndOfMessage(headers=trailers))
                    await _drain(peer, part)
                    return
                part = None
        except FlowLost:
            relay.lost()
        except h11.LocalProtocolError as exc:
            relay.fail(FlowCode.PEER_RESET, f"request cannot go to {conn.endpoint}: {exc}")
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            conn.broken = True  # the backend may still answer (say 413): read on
            try:
                await _drain(peer, part)
            except FlowLost:
                relay.lost()

    async def download() -> None:
        nonlocal returned
        try:
            event = await conn.next_event()
            while True:
                # What one read brought goes out in one write: `more` while the next
                # event is at hand (the end's half-close sends the last).
                after = conn.event_at_hand()
                more = after is not None
                if isinstance(event, h11.Response):
                    await peer.send(ResponseHead(status=event.status_code,
                                                 headers=response_headers(event.headers)),
                                    more=more)
                elif isinstance(event, h11.Data):
                    await peer.send(Body(bytes(event.data)), more=more)
                elif isinstance(event, h11.EndOfMessage):
                    if conn.h11.our_state is h11.DONE:  # reusable before the client knows
                        returned = True
                        await lease.pool.put(conn)
                    if event.headers:
                        await peer.send(Trailers(response_headers(event.headers)), more=True)
                    await peer.send(End(), more=True)
                    peer.finish()
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    raise BackendError(f"{conn.endpoint}: backend closed the connection")
                event = after if after is not None else await conn.next_event()
        except BackendError as exc:
            relay.fail(FlowCode.PEER_RESET, str(exc))
        except FlowLost:
            relay.lost()

    with relay.scope:
        if isinstance(first, End):  # no body: the request goes whole, then the answer
            await upload()
            await download()
        else:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload)
                nursery.start_soon(download)
    if returned:
        pass
    elif relay.outcome() == "ok":
        await lease.pool.put(conn)
    else:
        await close_stream(conn.stream, abort=True)
    return relay.outcome()


async def _serve_h2(peer: MessagePeer, head: RequestHead, slot: H2Stream) -> Outcome:
    relay = _Relay(peer)
    refused = False
    watching = trio.CancelScope()
    try:
        first = await peer.receive()
    except FlowLost:
        return "reset"
    headers = request_h2(head.method, head.target, head.authority, head.scheme,
                         head.headers, head.client)

    async def upload() -> None:
        nonlocal refused
        part = first
        try:
            try:
                await slot.send_headers(headers, end=isinstance(part, End))
            except (BackendError, h2.exceptions.H2Error) as exc:
                refused = True  # never reached the backend
                relay.fail(FlowCode.NO_TARGET, f"{slot.conn.pool.endpoint}: {exc}")
                return
            closed = isinstance(part, End)
            while not closed:
                if isinstance(part, Body):
                    await slot.send_data(part.data)
                elif isinstance(part, Trailers):
                    await slot.send_headers(list(part.headers), end=True)
                    closed = True
                part = await peer.receive()
                if not closed and (part is None or isinstance(part, End)):
                    await slot.send_data(b"", end=True)
                    closed = True
            await _drain(peer, part)
            with watching:  # the request ended: a reset now means the client gave up
                await peer.wait_lost()
                relay.lost()
        except FlowLost:
            relay.lost()
        except (BackendError, h2.exceptions.H2Error):
            try:  # the stream or connection ended: the download says how
                await _drain(peer, part)
            except FlowLost:
                relay.lost()

    async def download() -> None:
        nonlocal refused
        try:
            while True:
                event = await slot.next_event()
                if isinstance(event, h2.events.ResponseReceived):
                    slot.response_started = True
                    status = dict(event.headers or ()).get(b":status", b"0")
                    got = response_headers(event.headers or [])
                    if event.stream_ended is not None and is_grpc(got):
                        # gRPC trailers-only: the message vocabulary has no "head ends the
                        # stream", so its metadata travels as trailers, where clients need it.
                        await peer.send(ResponseHead(status=int(status), headers=tuple(
                            (n, v) for n, v in got if n == b"content-type")))
                        await peer.send(Trailers(tuple(
                            (n, v) for n, v in got if n != b"content-type")))
                    else:
                        await peer.send(ResponseHead(status=int(status), headers=got))
                elif isinstance(event, h2.events.DataReceived):
                    if event.data:
                        await peer.send(Body(event.data))
                    await slot.ack(event.flow_controlled_length or 0)
                elif isinstance(event, h2.events.TrailersReceived):
                    await peer.send(Trailers(response_headers(event.headers or [])))
                elif isinstance(event, h2.events.StreamEnded):
                    await peer.send(End())
                    peer.finish()
                    watching.cancel()  # the exchange is complete: no reset can matter
                    return
                elif isinstance(event, h2.events.StreamReset):
                    code = event.error_code
                    if not slot.response_started and code in (
                            h2.errors.ErrorCodes.REFUSED_STREAM,):
                        refused = True
                        relay.fail(FlowCode.NO_TARGET, f"{slot.conn.pool.endpoint}: backend "
                                   "refused the stream before processing it")
                    else:
                        relay.fail(FlowCode.PEER_RESET, f"{slot.conn.pool.endpoint}: backend "
                                   f"reset the stream ({_code_name(code)})")
                    return
        except BackendError as exc:
            relay.fail(FlowCode.PEER_RESET, str(exc))
        except FlowLost:
            relay.lost()

    with relay.scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            nursery.start_soon(download)
    return relay.outcome(refused)


def _code_name(code: object) -> str:
    return getattr(code, "name", str(code))
