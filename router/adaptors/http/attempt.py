"""One attempt of an HTTP request at a site: the request's direction into the flow
(with the replay buffer), the response's to the client, and the answers we make
ourselves (text, or gRPC's trailers-only form).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from router.adaptors.http import tunnel
from router.adaptors.http.flowmsg import FlowLost, MessageFlow
from router.adaptors.http.hop import ROUTER_ERROR_HEADER
from router.adaptors.http.message import (
    Body,
    End,
    MessagePeer,
    Part,
    RequestHead,
    ResponseHead,
    Trailers,
    switches,
)
from router.flows.entry import FlowEntry, Outcome
from router.flows.table import FlowTable

log = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REPLAY_BYTES = 64 * 1024  # a request body up to this may be replayed on another site
END_DRAIN_S = 1.0  # the request's END may still be going out when the response ended
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
GRPC_UNAVAILABLE = 14
GRPC_DEADLINE_EXCEEDED = 4


class RequestBody(Protocol):
    """The client's request body, as the server reads it (BrokenResourceError: the
    client went away or reset the request)."""

    async def next(self) -> Body | Trailers | End: ...
    def next_nowait(self) -> Body | Trailers | End | None:
        """The next part if it is at hand without waiting (or an error), else None."""
    def done(self, part: Part) -> None:
        """`part` was handed on: the client may send that much more."""


class ResponseSink(Protocol):
    """Where the response goes (BrokenResourceError: the client went away)."""

    started: bool  # a head went out: an error can no longer be a response

    async def send(self, part: Part, *, last: bool = False, more: bool = False) -> None:
        """One response part; `last` on a head: the response has no body (trailers-only);
        `more`: the next part is at hand, so this one may wait to go out with it."""

    def reset(self) -> None:
        """The response cannot complete: make the client see a failure, not an end."""


@dataclass
class Replay:
    """The request body sent so far, while it fits REPLAY_BYTES."""

    parts: list[Part] = field(default_factory=list)
    size: int = 0
    overflow: bool = False  # past the buffer: this request can no longer be retried
    ended: bool = False  # the client's message is complete (End read)
    unacked: Part | None = None  # read from the client, not yet handed on
    # Read from the client before a site took the request, and too big for the
    # buffer: it goes first once one did (an overflow then ends the retries).
    held: Part | None = None

    def add(self, part: Part) -> None:
        if isinstance(part, Body):
            self.size += len(part.data)
        if self.size > REPLAY_BYTES:
            self.overflow = True
            self.parts.clear()
        elif not self.overflow:
            self.parts.append(part)


@dataclass
class Failure:
    """An attempt that did not reach the client: what to answer if it was the last."""

    status: int
    reason: str
    grpc_status: int = GRPC_UNAVAILABLE
    outcome: Outcome = "reset"  # of the attempt, for the flow table
    final: bool = False  # the request may have been processed: answer, never retry


class ClientGone(Exception):
    pass


Handler = Callable[[RequestHead, RequestBody, ResponseSink], Awaitable[None]]


@dataclass
class Pump:
    """The request direction of one attempt, and how both directions ended."""

    sent: bool = False  # the whole request went into the flow
    delivered: bool = False  # the whole response went to the client
    client_gone: bool = False
    # The request proposes a tunnel: its half-close waits for the response, which
    # may switch the flow to a tunnel's bytes (tunnel.py).
    hold_fin: bool = False
    _head_sent: bool = False  # into the current end
    _replayed: int = 0  # parts of replay.parts already in the current end

    def start(self, peer: MessageFlow, head: RequestHead, body: RequestBody,
              replay: Replay) -> None:
        """What of the request is at hand and fits the flow's early credit goes now,
        in the OPEN's write (a GET whole, with its FIN); `run` sends the rest. Called
        for each site tried, so a refusal loses nothing: what it reads from the
        client goes into the replay buffer (or, past it, waits in `replay.held`)."""
        self.sent, self._head_sent, self._replayed = False, False, 0
        if not peer.send_nowait(head):
            return
        self._head_sent = True
        while self._replayed < len(replay.parts):
            if not peer.send_nowait(replay.parts[self._replayed]):
                return
            self._replayed += 1
        if replay.held is not None:
            return  # it goes once a site took the request
        if replay.unacked is not None:
            body.done(replay.unacked)
            replay.unacked = None
        while not replay.ended:
            part = body.next_nowait()
            if part is None:
                return
            if isinstance(part, Body) and replay.size + len(part.data) > REPLAY_BYTES:
                replay.held = part  # past the replay buffer: never before an ACCEPT
                return
            replay.unacked = part
            replay.add(part)
            replay.ended = isinstance(part, End)
            if not peer.send_nowait(part):
                return  # `run` sends it from replay.parts
            self._replayed += 1
            body.done(part)
            replay.unacked = None
        if self.hold_fin:
            self.sent = True  # the half-close waits for the response (`receive`)
        elif peer.can_finish():
            peer.finish()
            self.sent = True

    async def run(self, peer: MessagePeer, head: RequestHead, body: RequestBody,
                  replay: Replay, scope: trio.CancelScope) -> None:
        """The head, the replayed body, then the rest as the client sends it."""
        try:
            if not self._head_sent:
                await peer.send(head)
            for part in replay.parts[self._replayed:]:
                await peer.send(part)
            if replay.unacked is not None:
                body.done(replay.unacked)
                replay.unacked = None
            while not replay.ended:
                if replay.held is not None:
                    part, replay.held = replay.held, None
                else:
                    part = await body.next()
                replay.unacked = part
                replay.add(part)
                replay.ended = isinstance(part, End)
                await peer.send(part)
                body.done(part)
                replay.unacked = None
            if not self.hold_fin:
                peer.finish()
            self.sent = True
        except FlowLost:
            return  # the response side sees it too
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.client_gone = True
            scope.cancel()


def note_response(table: FlowTable, entry: FlowEntry, site: str, head: ResponseHead) -> None:
    """The response head reaches the client: the record takes its status."""
    table.note_response(entry, status=head.status, site=site,
                        by_router=any(n == ROUTER_ERROR_HEADER for n, _ in head.headers))
    grpc_status = next((v for n, v in head.headers if n == b"grpc-status"), None)
    if grpc_status is not None and grpc_status.isdigit():
        table.note_grpc_status(entry, int(grpc_status))


async def receive(peer: MessagePeer, head: RequestHead, sink: ResponseSink, replay: Replay,
                   pump: Pump, *, can_retry: bool, note: Callable[[ResponseHead], None]
                   ) -> Failure | bool | tunnel.Switched | None:
    """The response to the client: None once it all went, a Failure if the request
    may be retried, False if it broke off (the client was reset), Switched when it
    turned the exchange into a tunnel."""
    try:
        first = await peer.receive()
    except FlowLost as exc:
        if exc.not_processed or head.method in IDEMPOTENT:
            return Failure(503, f"the request's flow was lost: {exc}")
        # The target may have acted on a POST or PATCH (it failed mid-request): never
        # sent again.
        return Failure(502, f"the serving site failed: {exc}", final=True)
    if not isinstance(first, ResponseHead):
        return Failure(502, "the serving site sent no response head")
    router_made = any(n == ROUTER_ERROR_HEADER for n, _ in first.headers)
    # A 503 a router made means the application never saw the request; any other
    # 5xx may have done something, so only an idempotent request is sent again.
    if (first.status >= 500 and can_retry and not replay.overflow
            and ((router_made and first.status == 503) or head.method in IDEMPOTENT)):
        return Failure(first.status, f"the serving site answered {first.status}",
                        outcome="error")
    note(first)
    try:
        if pump.hold_fin and switches(head, first.status):
            return await tunnel.switch(peer, sink, first, sink.send)
        if first.status == 101:
            raise FlowLost("the serving site switched protocols unasked")
        await sink.send(first, more=peer.ready())
        part: Part | None = first
        while not isinstance(part, End):
            part = await peer.receive()
            if part is None:
                raise FlowLost("the response ended without its end")
            await sink.send(part, more=peer.ready())
    except FlowLost:
        sink.reset()
        return False
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pump.client_gone = True
        return False
    pump.delivered = True
    if pump.hold_fin:  # no switch: the request's half-close, held until now
        pump.hold_fin = False
        if pump.sent:  # else the pump sends it after the request's END
            peer.finish()
    return None


async def answer_error(sink: ResponseSink, failure: Failure, grpc: bool) -> None:
    """A response we generate: the reason as text, or gRPC's trailers-only form."""
    try:
        if grpc:
            await sink.send(ResponseHead(status=200, headers=(
                (b"content-type", b"application/grpc"),
                (b"grpc-status", str(failure.grpc_status).encode()),
                (b"grpc-message", _grpc_message(failure.reason)),
                (ROUTER_ERROR_HEADER, b"1"))), last=True)
            return
        text = (failure.reason + "\n").encode()
        await sink.send(ResponseHead(status=failure.status, headers=(
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(text)).encode()),
            (ROUTER_ERROR_HEADER, b"1"))))
        await sink.send(Body(text))
        await sink.send(End())
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise ClientGone() from None


def _grpc_message(text: str) -> bytes:
    """grpc-message is percent-encoded UTF-8."""
    return "".join(c if " " <= c <= "~" and c != "%" else
                   "".join(f"%{b:02X}" for b in c.encode()) for c in text).encode()


