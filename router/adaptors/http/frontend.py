"""The HTTP listener: client connections in, each request routed on its own.

`serve_connection` tells HTTP/2 (the prior-knowledge preface) from HTTP/1.1 and hands
the connection to `server_h2` or `server_h1`, which turn it into requests. Each request
comes here as a head, a body source and a response sink: a site is chosen for it, the
body streams into the peer while the response streams back (both at once: a server may
answer before the body ended), and a request that was provably not processed is tried
again on another site. Nothing holds a whole body: only up to REPLAY_BYTES of it are kept,
so a failed attempt can be replayed.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import trio

from router.adaptors.http import server_h1, server_h2
from router.adaptors.http.flowmsg import FlowLost, MessageFlow
from router.adaptors.http.health import OutlierTracker, RetryBudget, order_without_ejected
from router.adaptors.http.hop import ROUTER_ERROR_HEADER, is_grpc, with_forwarded
from router.adaptors.http.message import (
    Body,
    End,
    Headers,
    MessageLimits,
    MessagePeer,
    Part,
    RequestHead,
    ResponseHead,
    Trailers,
)
from router.flows.forwarder import Forwarder, NoRoute
from router.flows.table import FlowEntry, FlowTable, Outcome
from router.net.logthrottle import KeyedLogThrottle
from router.net.sockets import peer_name
from router.protocol import FlowCode
from router.routing import Candidate
from router.routing.rules import RequestFacts, order_for_request
from router.site.config import ListenerConfig

log = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REPLAY_BYTES = 64 * 1024  # a request body up to this may be replayed on another site
BACKOFF_BASE_S = 0.025
BACKOFF_CAP_S = 0.25
ERROR_LOG_INTERVAL_S = 10.0  # one line per key per interval for the errors we answer
END_DRAIN_S = 1.0  # the request's END may still be going out when the response ended
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
GRPC_UNAVAILABLE = 14
GRPC_DEADLINE_EXCEEDED = 4


class LocalHttp(Protocol):
    """This site's own connectors for HTTP keys."""

    async def exchange(self, key: str) -> MessagePeer:
        """A peer that serves one request for `key` here; NoTarget if this site cannot."""
        ...


class RequestBody(Protocol):
    """The client's request body, as the server reads it (BrokenResourceError: the
    client went away or reset the request)."""

    async def next(self) -> Body | Trailers | End: ...
    def done(self, part: Part) -> None:
        """`part` was handed on: the client may send that much more."""


class ResponseSink(Protocol):
    """Where the response goes (BrokenResourceError: the client went away)."""

    started: bool  # a head went out: an error can no longer be a response

    async def send(self, part: Part, *, last: bool = False) -> None:
        """One response part; `last` on a head: the response has no body (trailers-only)."""

    def reset(self) -> None:
        """The response cannot complete: make the client see a failure, not an end."""


@dataclass
class _Replay:
    """The request body sent so far, while it fits REPLAY_BYTES."""

    parts: list[Part] = field(default_factory=list)
    size: int = 0
    overflow: bool = False  # past the buffer: this request can no longer be retried
    ended: bool = False  # the client's message is complete (End read)
    unacked: Part | None = None  # read from the client, not yet handed on

    def add(self, part: Part) -> None:
        if isinstance(part, Body):
            self.size += len(part.data)
        if self.size > REPLAY_BYTES:
            self.overflow = True
            self.parts.clear()
        elif not self.overflow:
            self.parts.append(part)


@dataclass
class _Failure:
    """An attempt that did not reach the client: what to answer if it was the last."""

    status: int
    reason: str
    grpc_status: int = GRPC_UNAVAILABLE
    outcome: Outcome = "reset"  # of the attempt, for the flow table
    final: bool = False  # the request may have been processed: answer, never retry


class _ClientGone(Exception):
    pass


Handler = Callable[[RequestHead, RequestBody, ResponseSink], Awaitable[None]]


class HttpFrontend:
    def __init__(self, *, forwarder: Forwarder, table: FlowTable, local: LocalHttp,
                 config: Callable[[str], ListenerConfig | None],
                 limits: MessageLimits | None = None) -> None:
        self._forwarder = forwarder
        self._table = table
        self._local = local
        self._config = config
        self.limits = limits or MessageLimits()
        self._rng = random.Random()
        self._error_log = KeyedLogThrottle(ERROR_LOG_INTERVAL_S)  # outages come in floods
        self._sites = OutlierTracker()  # by router id: failing sites are tried last
        self._budgets: dict[str, RetryBudget] = {}  # by routing key

    async def serve_connection(self, lst: ListenerConfig, stream: trio.abc.Stream) -> None:
        """Serve one client connection until it ends; closes it."""

        client = peer_name(stream)
        try:
            first = b""
            with trio.move_on_after(server_h1.HEAD_TIMEOUT_S):
                while len(first) < len(H2_PREFACE) and H2_PREFACE.startswith(first):
                    data = await stream.receive_some(len(H2_PREFACE) - len(first))
                    if not data:
                        return
                    first += data
            if not first:
                return  # nothing within the time
            handle: Handler = functools.partial(self.handle, lst)
            if first == H2_PREFACE:
                await server_h2.serve(stream, first, handle, self.limits, client)
            else:
                await server_h1.serve(stream, first, handle, self.limits, client)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def handle(self, lst: ListenerConfig, head: RequestHead, body: RequestBody,
                     sink: ResponseSink) -> None:
        """One request, retries included; BrokenResourceError if the client went away."""
        grpc = is_grpc(head.headers)
        # One entry per request (its attempts, bytes and answer), as records count it.
        entry = self._table.begin(lst.key, "listener", client=head.client)
        self._table.note_request(entry, method=head.method, path=head.target)
        outcome: Outcome = "error"
        try:
            failure, outcome = await self._serve_request(lst, entry, head, body, sink)
            if failure is not None:
                self._error_log.log(lst.key, log, logging.WARNING, trio.current_time(),
                                    "listener %s: %d: %s", lst.key, failure.status,
                                    failure.reason)
                self._table.note_response(entry, status=failure.status, site=None,
                                          by_router=True)
                if grpc:
                    self._table.note_grpc_status(entry, failure.grpc_status)
                await _answer_error(sink, failure, grpc)
        except _ClientGone:
            outcome = "reset"
            raise trio.BrokenResourceError("the client went away") from None
        except BaseException:
            outcome = "reset"
            raise
        finally:
            self._table.end(entry, outcome)

    async def _serve_request(self, lst: ListenerConfig, entry: FlowEntry, head: RequestHead,
                             body: RequestBody, sink: ResponseSink
                             ) -> tuple[_Failure | None, Outcome]:
        """(None once the response went or was reset, else the error to answer; the
        request's outcome)."""
        cfg = self._config(lst.key)
        if cfg is None:  # deleted while this connection was open
            return _Failure(503, f"the listener for {lst.key!r} was deleted"), "refused"
        head = with_forwarded(head)
        replay = _Replay()
        tried: set[str] = set()
        attempts = 1 + max(0, cfg.retries)
        budget = self._budgets.setdefault(cfg.key, RetryBudget(trio.current_time()))
        budget.on_request(trio.current_time())
        failure = _Failure(503, f"no site serves {lst.key!r}")
        deadline = trio.current_time() + cfg.timeout_s if cfg.timeout_s > 0 else math.inf
        with trio.move_on_at(deadline):
            for attempt in range(attempts):
                if attempt:
                    if not budget.can_retry(trio.current_time()):
                        break  # retries would more than double the load: answer now
                    self._table.note_attempt(entry, failure.reason)
                    await trio.sleep(self._rng.uniform(
                        0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))))
                result, outcome = await self._attempt(cfg, entry, head, body, sink, replay,
                                                      tried, can_retry=attempt + 1 < attempts)
                if result is None:
                    return None, outcome
                failure = result
                if replay.overflow or failure.final:
                    break  # the body is gone, or it may have been acted on
            return failure, failure.outcome
        if sink.started:
            sink.reset()
            return None, "reset"
        return _Failure(504, f"{lst.key!r}: no response within {cfg.timeout_s:g} s",
                        GRPC_DEADLINE_EXCEEDED), "error"

    async def _attempt(self, cfg: ListenerConfig, entry: FlowEntry, head: RequestHead,
                       body: RequestBody, sink: ResponseSink, replay: _Replay, tried: set[str],
                       *, can_retry: bool) -> tuple[_Failure | None, Outcome]:
        """One try at a site: (None when the response went to the client, or could not
        complete; a _Failure when the request may be tried again or must be answered
        by us), and the attempt's outcome."""
        outcome: Outcome = "error"
        peer: MessagePeer | None = None
        finished = False
        router_id: str | None = None
        try:
            try:
                route = await self._forwarder.open(
                    entry, cfg.strategy,
                    make_end=lambda side: MessageFlow(side, entry, request=False,
                                                      limits=self.limits),
                    connect_local=self._local.exchange, order=self._order(cfg, head, tried))
            except NoRoute as exc:
                outcome = "refused"
                return (_Failure(503, f"no site serves {cfg.key!r}: {exc}", outcome="refused"),
                        outcome)
            tried.add(route.site)
            router_id = route.router_id
            peer = route.end if route.end is not None else route.target
            assert peer is not None
            result, finished = await self._exchange(peer, entry, route.site, head, body, sink,
                                                    replay, can_retry=can_retry)
            outcome = "ok" if finished else (result.outcome if result else "reset")
            return result, outcome
        except BaseException:
            outcome = "reset"
            raise
        finally:
            if peer is not None:
                if not finished:
                    peer.abort(FlowCode.PEER_RESET, "the HTTP exchange ended unfinished")
                if isinstance(peer, MessageFlow):
                    peer.side.release()
            if router_id is not None:  # a 5xx or a broken exchange counts against the site
                failed = outcome != "ok" or (entry.status or 0) >= 500
                self._sites.record(router_id, ok=not failed, now=trio.current_time(),
                                   reason=f"{entry.status or outcome}")

    def _order(self, cfg: ListenerConfig, head: RequestHead, tried: set[str]
               ) -> Callable[[list[Candidate], Mapping[str, int], random.Random],
                             list[Candidate]]:
        facts = _facts(head)
        affinity = _affinity(cfg.affinity, head.headers)

        def order(cands: list[Candidate], outstanding: Mapping[str, int],
                  rng: random.Random) -> list[Candidate]:
            ranked = order_for_request(cfg.routes, facts, cands, strategy=cfg.strategy,
                                       outstanding=outstanding, rng=rng, affinity=affinity)
            ranked = order_without_ejected(ranked, self._sites, trio.current_time())
            # Sites already tried go last: a retry prefers another site, yet a site
            # that refused for a moment may still serve when it is the only one.
            return ([c for c in ranked if c.site not in tried]
                    + [c for c in ranked if c.site in tried])
        return order

    async def _exchange(self, peer: MessagePeer, entry: FlowEntry, site: str,
                        head: RequestHead, body: RequestBody, sink: ResponseSink,
                        replay: _Replay, *, can_retry: bool) -> tuple[_Failure | None, bool]:
        """(failure or None, whether both messages completed)."""
        pump = _Pump()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run, peer, head, body, replay, nursery.cancel_scope)
            note = functools.partial(_note_response, self._table, entry, site)
            result = await _receive(peer, head, sink, replay, pump, can_retry=can_retry,
                                    note=note)
            if result is not None or not replay.ended:
                nursery.cancel_scope.cancel()  # failed, or answered before the body ended
            else:  # the END is on its way: let it go, unless the flow has no credit
                nursery.cancel_scope.deadline = trio.current_time() + END_DRAIN_S
        if pump.client_gone:
            raise _ClientGone()
        if isinstance(result, _Failure):
            return result, False
        return None, pump.sent and pump.delivered


@dataclass
class _Pump:
    """The request direction of one attempt, and how both directions ended."""

    sent: bool = False  # the whole request went into the flow
    delivered: bool = False  # the whole response went to the client
    client_gone: bool = False

    async def run(self, peer: MessagePeer, head: RequestHead, body: RequestBody,
                  replay: _Replay, scope: trio.CancelScope) -> None:
        """The head, the replayed body, then the rest as the client sends it."""
        try:
            await peer.send(head)
            for part in list(replay.parts):
                await peer.send(part)
            if replay.unacked is not None:
                body.done(replay.unacked)
                replay.unacked = None
            while not replay.ended:
                part = await body.next()
                replay.unacked = part
                replay.add(part)
                replay.ended = isinstance(part, End)
                await peer.send(part)
                body.done(part)
                replay.unacked = None
            peer.finish()
            self.sent = True
        except FlowLost:
            return  # the response side sees it too
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.client_gone = True
            scope.cancel()


def _note_response(table: FlowTable, entry: FlowEntry, site: str, head: ResponseHead) -> None:
    """The response head reaches the client: the record takes its status."""
    table.note_response(entry, status=head.status, site=site,
                        by_router=any(n == ROUTER_ERROR_HEADER for n, _ in head.headers))
    grpc_status = next((v for n, v in head.headers if n == b"grpc-status"), None)
    if grpc_status is not None and grpc_status.isdigit():
        table.note_grpc_status(entry, int(grpc_status))


async def _receive(peer: MessagePeer, head: RequestHead, sink: ResponseSink, replay: _Replay,
                   pump: _Pump, *, can_retry: bool, note: Callable[[ResponseHead], None]
                   ) -> _Failure | bool | None:
    """The response to the client: None once it all went, a _Failure if the request
    may be retried, False if it broke off (the client was reset)."""
    try:
        first = await peer.receive()
    except FlowLost as exc:
        if exc.not_processed or head.method in IDEMPOTENT:
            return _Failure(503, f"the request's flow was lost: {exc}")
        # The target may have acted on a POST or PATCH (it failed mid-request): never
        # sent again.
        return _Failure(502, f"the serving site failed: {exc}", final=True)
    if not isinstance(first, ResponseHead):
        return _Failure(502, "the serving site sent no response head")
    router_made = any(n == ROUTER_ERROR_HEADER for n, _ in first.headers)
    # A 503 a router made means the application never saw the request; any other
    # 5xx may have done something, so only an idempotent request is sent again.
    if (first.status >= 500 and can_retry and not replay.overflow
            and ((router_made and first.status == 503) or head.method in IDEMPOTENT)):
        return _Failure(first.status, f"the serving site answered {first.status}",
                        outcome="error")
    note(first)
    try:
        await sink.send(first)
        part: Part | None = first
        while not isinstance(part, End):
            part = await peer.receive()
            if part is None:
                raise FlowLost("the response ended without its end")
            await sink.send(part)
    except FlowLost:
        sink.reset()
        return False
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pump.client_gone = True
        return False
    pump.delivered = True
    return None


async def _answer_error(sink: ResponseSink, failure: _Failure, grpc: bool) -> None:
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
        raise _ClientGone() from None


def _grpc_message(text: str) -> bytes:
    """grpc-message is percent-encoded UTF-8."""
    return "".join(c if " " <= c <= "~" and c != "%" else
                   "".join(f"%{b:02X}" for b in c.encode()) for c in text).encode()


def _facts(head: RequestHead) -> RequestFacts:
    headers: dict[str, str] = {}
    for name, value in head.headers:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    path = head.target.split(b"?", 1)[0].decode("latin-1")
    return RequestFacts(method=head.method.decode("latin-1").upper(), path=path,
                        headers=headers)


def _affinity(spec: str, headers: Headers) -> str | None:
    """The affinity value of this request ("header:NAME" or "cookie:NAME")."""
    kind, _, name = spec.partition(":")
    want = name.strip().lower().encode()
    if kind == "header":
        return next((v.decode("latin-1") for n, v in headers if n == want), None)
    if kind == "cookie":
        pairs = (pair.strip().partition(b"=") for n, v in headers if n == b"cookie"
                 for pair in v.split(b";"))
        return next((val.decode("latin-1") for k, _, val in pairs if k.lower() == want), None)
    return None

