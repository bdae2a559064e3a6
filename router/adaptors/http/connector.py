"""The HTTP connectors: serve each request (one flow, or a local exchange) on a pooled
connection to one of the key's targets.

A backend connection is had FIRST, and only then is the flow accepted: when no
target answers, the flow is refused with NO_TARGET (the request provably was not
processed, so the listener may try another site). Then the request's parts go to
the backend while the response's parts come back, both at once (a backend may
answer before the request body ended). A backend that breaks mid-response resets
the flow, so the client sees a broken response, never a truncated one that looks
whole.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import h2.errors
import h2.events
import h2.exceptions
import h11
import trio

from router.adaptors.http.backend import (
    BackendError,
    Connect,
    H1Conn,
    H1Pool,
    H2Pool,
    H2Stream,
    close_stream,
    is_grpc,
    request_h1,
    request_h2,
    response_headers,
)
from router.adaptors.http.flowmsg import FlowLost, MessageFlow
from router.adaptors.http.local import LocalExchange, local_pair
from router.adaptors.http.message import (
    Body,
    End,
    MessagePeer,
    Part,
    RequestHead,
    ResponseHead,
    Trailers,
)
from router.flows.forwarder import NoTarget
from router.flows.table import FlowEntry, FlowTable, Outcome
from router.net.errors import connect_reason, guarded
from router.net.logthrottle import KeyedLogThrottle
from router.net.side import FlowSide
from router.protocol import FlowCode, Open
from router.site.config import ConnectorConfig

log = logging.getLogger(__name__)
REFUSAL_LOG_INTERVAL_S = 10.0
PROTOCOLS = ("http1", "http2")


async def _open_tcp(host: str, port: int) -> trio.abc.Stream:
    return await trio.open_tcp_stream(host, port)


@dataclass(frozen=True, slots=True)
class _Target:
    endpoint: str
    protocol: str


class HttpConnectors:
    """The site's HTTP connectors and their pools of backend connections."""

    def __init__(self, *, site: str, table: FlowTable, window: int, connect_timeout: float,
                 connect: Connect = _open_tcp) -> None:
        self.site = site
        self._table = table
        self._window = window
        self._connect_timeout = connect_timeout
        self._connect = connect
        self._targets: tuple[ConnectorConfig, ...] = ()
        self._turn: Counter[str] = Counter()
        self.h1: dict[str, H1Pool] = {}  # by "host:port"
        self.h2: dict[str, H2Pool] = {}
        self._refusal_log = KeyedLogThrottle(REFUSAL_LOG_INTERVAL_S)

    def set_targets(self, connectors: Sequence[ConnectorConfig]) -> None:
        self._targets = tuple(c for c in connectors if c.protocol in PROTOCOLS)

    def serves(self, key: str) -> bool:
        return any(c.key == key for c in self._targets)

    # ---- getting a backend connection
    async def lease(self, key: str) -> Lease:
        """A connection (HTTP/1.1) or a stream slot (HTTP/2) to one of `key`'s targets,
        rotating over several; NoTarget with each target's reason if none answers."""
        targets = [c for c in self._targets if c.key == key]
        if not targets:
            raise NoTarget(f"site {self.site} has no HTTP connector for {key!r}")
        start = self._turn[key]
        self._turn[key] += 1
        errors = []
        for i in range(len(targets)):
            con = targets[(start + i) % len(targets)]
            endpoint = str(con.endpoint)
            try:
                return await self._lease_one(con, endpoint)
            except (OSError, trio.TooSlowError) as exc:
                errors.append(f"{endpoint}: {connect_reason(exc)}")
        raise NoTarget(f"site {self.site} cannot reach {key!r} target {'; '.join(errors)}")

    async def _lease_one(self, con: ConnectorConfig, endpoint: str) -> Lease:
        nursery = lambda: self._table.nursery  # noqa: E731 (the table's, read late)
        if con.protocol == "http2":
            pool2 = self.h2.setdefault(endpoint, H2Pool(endpoint, nursery))
            slot = pool2.take()
            if slot is None:
                async with pool2.connecting:  # concurrent requests share the new one
                    slot = pool2.take()
                    if slot is None:
                        with trio.fail_after(self._connect_timeout):
                            stream = await self._connect(con.host, con.port)
                        slot = await pool2.add(stream)
            return slot
        pool = self.h1.setdefault(endpoint, H1Pool(endpoint, nursery))
        conn = pool.take()
        if conn is None:
            with trio.fail_after(self._connect_timeout):
                stream = await self._connect(con.host, con.port)
            pool.opened += 1
            conn = H1Conn(stream, endpoint)
        return H1Lease(pool, conn)

    # ---- requests from other sites
    def serve_open(self, side: FlowSide, open_msg: Open) -> None:
        """An OPEN for an HTTP key (from the link reader: must not block)."""
        entry = self._table.begin(open_msg.routing_key, "connector",
                                  client=open_msg.client_addr, trace=open_msg.trace)
        pending = _Pending(side)
        side.attach(pending)
        self._table.spawn(guarded, f"HTTP request for {open_msg.routing_key}", self._serve,
                          pending, entry, open_msg)

    async def _serve(self, pending: _Pending, entry: FlowEntry, open_msg: Open) -> None:
        side = pending.side
        outcome: Outcome = "error"
        accepted = False
        try:
            try:
                lease = await self.lease(open_msg.routing_key)
            except NoTarget as exc:
                if pending.reset_reason is None:
                    self._refusal_log.log(open_msg.routing_key, log, logging.INFO,
                                          trio.current_time(), "refused flow for %s from %s: %s",
                                          open_msg.routing_key, open_msg.origin_site, exc)
                    side.refuse(FlowCode.NO_TARGET, str(exc))
                outcome = "refused"
                return
            flow = MessageFlow(side, entry, request=True)
            if pending.reset_reason is None:
                side.attach(flow)
                accepted = side.accept(self._window)
            if not accepted:  # the opener gave up meanwhile
                await give_back(lease)
                outcome = "reset"
                return
            outcome = await serve(flow, lease)
            if flow.done:
                side.release()
            elif flow.reset_reason is None:
                flow.abort(FlowCode.PEER_RESET, "the HTTP exchange did not complete")
        except BaseException:
            if not accepted:  # an internal error: the opener must not wait for an answer
                side.reset(FlowCode.INTERNAL, "serving router failed")
            raise
        finally:
            self._table.end(entry, outcome)

    # ---- requests from this site's own listeners
    async def exchange(self, key: str) -> MessagePeer:
        """The serving site is this one: the listener's end of an exchange that this
        object serves; NoTarget if no target answers."""
        lease = await self.lease(key)
        mine, theirs = local_pair()
        entry = self._table.begin(key, "connector", client="local")
        self._table.spawn(guarded, f"local HTTP request for {key}", self._serve_local,
                          mine, lease, entry)
        return theirs

    async def _serve_local(self, peer: LocalExchange, lease: Lease,
                           entry: FlowEntry) -> None:
        outcome: Outcome = "error"
        try:
            outcome = await serve(peer, lease)
        finally:
            if outcome != "ok":
                peer.abort(FlowCode.PEER_RESET, peer.reset_reason or "the exchange failed")
            self._table.end(entry, outcome)

    async def aclose(self) -> None:
        for pool in self.h1.values():
            await pool.aclose()
        for pool2 in self.h2.values():
            await pool2.aclose()
        self.h1.clear()
        self.h2.clear()


class _Pending:
    """The flow's handler until a backend connection is had: only a reset matters."""

    def __init__(self, side: FlowSide) -> None:
        self.side = side
        self.reset_reason: str | None = None

    def on_reset(self, code: FlowCode, reason: str) -> None:
        self.reset_reason = reason

    def on_accepted(self, window: int) -> None: ...
    def on_refused(self, code: FlowCode, reason: str) -> None: ...
    def on_data(self, data: bytes) -> None: ...
    def on_credit(self) -> None: ...
    def on_fin(self) -> None: ...



# ---- one exchange on a backend connection
@dataclass(frozen=True, slots=True)
class H1Lease:
    pool: H1Pool
    conn: H1Conn


Lease = H1Lease | H2Stream
GRPC_UNIMPLEMENTED = ResponseHead(status=200, headers=(
    (b"content-type", b"application/grpc"), (b"grpc-status", b"12"),
    (b"grpc-message", b"gRPC needs an http2 connector")))


async def give_back(lease: Lease) -> None:
    if isinstance(lease, H1Lease):
        await lease.pool.put(lease.conn, unused=True)
    else:
        lease.release()


async def serve(peer: MessagePeer, lease: Lease) -> Outcome:
    """Relay one request and its response; the outcome for the table."""
    try:
        head = await peer.receive()
    except FlowLost:
        await give_back(lease)
        return "reset"
    if not isinstance(head, RequestHead):
        await give_back(lease)
        peer.abort(FlowCode.INTERNAL, "the request did not start with its head")
        return "error"
    if isinstance(lease, H1Lease) and is_grpc(head.headers):
        await give_back(lease)
        try:
            await peer.send(GRPC_UNIMPLEMENTED)
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
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.Response):
                    await peer.send(ResponseHead(status=event.status_code,
                                                 headers=response_headers(event.headers)))
                elif isinstance(event, h11.Data):
                    await peer.send(Body(bytes(event.data)))
                elif isinstance(event, h11.EndOfMessage):
                    if conn.h11.our_state is h11.DONE:  # reusable before the client knows
                        returned = True
                        await lease.pool.put(conn)
                    if event.headers:
                        await peer.send(Trailers(response_headers(event.headers)))
                    await peer.send(End())
                    peer.finish()
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    raise BackendError(f"{conn.endpoint}: backend closed the connection")
        except BackendError as exc:
            relay.fail(FlowCode.PEER_RESET, str(exc))
        except FlowLost:
            relay.lost()

    with relay.scope:
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
                    await peer.send(ResponseHead(status=int(status),
                                                 headers=response_headers(event.headers or [])))
                elif isinstance(event, h2.events.DataReceived):
                    if event.data:
                        await peer.send(Body(event.data))
                    await slot.ack(event.flow_controlled_length or 0)
                elif isinstance(event, h2.events.TrailersReceived):
                    await peer.send(Trailers(response_headers(event.headers or [])))
                elif isinstance(event, h2.events.StreamEnded):
                    await peer.send(End())
                    peer.finish()
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
