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

import contextlib
import functools
import logging
import math
import random
from collections.abc import Callable, Mapping
from typing import Protocol

import trio

from router.adaptors.http import server_h1, server_h2, tunnel
from router.adaptors.http.attempt import (
    END_DRAIN_S,
    GRPC_DEADLINE_EXCEEDED,
    ClientGone,
    Failure,
    Handler,
    Pump,
    Replay,
    RequestBody,
    ResponseSink,
    answer_error,
    note_response,
    receive,
)
from router.adaptors.http.flowmsg import MessageFlow
from router.adaptors.http.health import OutlierTracker, RetryBudget, order_without_ejected
from router.adaptors.http.hop import is_grpc, with_forwarded
from router.adaptors.http.limits import HttpLimits
from router.adaptors.http.message import (
    Headers,
    MessagePeer,
    RequestHead,
    ResponseHead,
    proposes_tunnel,
    switches,
)
from router.flows.entry import FlowEntry, FlowProtocol, Outcome
from router.flows.forwarder import Forwarder, NoRoute
from router.flows.table import FlowTable
from router.net.logthrottle import KeyedLogThrottle
from router.net.sockets import peer_name, receive_some
from router.protocol import FlowCode
from router.routing import Candidate
from router.routing.rules import RequestFacts, order_for_request
from router.site.config import ListenerConfig

log = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FIRST_READ_BYTES = 64 * 1024
BACKOFF_BASE_S = 0.025
BACKOFF_CAP_S = 0.25
ERROR_LOG_INTERVAL_S = 10.0  # one line per key per interval for the errors we answer


class LocalHttp(Protocol):
    """This site's own connectors for HTTP keys."""

    async def exchange(self, key: str) -> MessagePeer:
        """A peer that serves one request for `key` here; NoTarget if this site cannot."""
        ...


class HttpFrontend:
    def __init__(self, *, forwarder: Forwarder, table: FlowTable, local: LocalHttp,
                 config: Callable[[str], ListenerConfig | None],
                 limits: HttpLimits | None = None) -> None:
        self._forwarder = forwarder
        self._table = table
        self._local = local
        self._config = config
        self.limits = limits or HttpLimits()
        self._rng = random.Random()
        self._error_log = KeyedLogThrottle(ERROR_LOG_INTERVAL_S)  # outages come in floods
        self._sites = OutlierTracker()  # by router id: failing sites are tried last
        self._budgets: dict[str, RetryBudget] = {}  # by routing key

    async def serve_connection(self, lst: ListenerConfig, stream: trio.abc.Stream) -> None:
        """Serve one client connection until it ends; closes it."""

        client = peer_name(stream)
        try:
            first = b""
            with trio.move_on_after(min(self.limits.http_head_timeout_s,
                                        self.limits.http_idle_timeout_s)):
                # One read usually brings a whole request (or the preface and the first
                # frames): it all goes to the server that speaks the protocol.
                while len(first) < len(H2_PREFACE) and H2_PREFACE.startswith(first):
                    data = await receive_some(stream, FIRST_READ_BYTES)
                    if not data:
                        return
                    first += data
            if not first:
                return  # nothing within the time
            if first.startswith(H2_PREFACE):
                handle: Handler = functools.partial(self.handle, lst, "http2")
                await server_h2.serve(stream, first, handle, self.limits, client)
            else:
                handle = functools.partial(self.handle, lst, "http1")
                await server_h1.serve(stream, first, handle, self.limits, client)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def handle(self, lst: ListenerConfig, protocol: FlowProtocol, head: RequestHead,
                     body: RequestBody, sink: ResponseSink) -> None:
        """One request, retries included; BrokenResourceError if the client went away."""
        grpc = is_grpc(head.headers)
        # One entry per request (its attempts, bytes and answer), as records count it.
        entry = self._table.begin(lst.key, "listener", client=head.client)
        entry.protocol = "grpc" if grpc else protocol
        self._table.note_request(entry, method=head.method, path=head.target)
        outcome: Outcome = "error"
        reason: str | None = "internal error in this router"
        try:
            failure, outcome = await self._serve_request(lst, entry, head, body, sink)
            reason = None if outcome == "ok" else "the HTTP exchange did not complete"
            if failure is not None:
                reason = failure.reason
                self._error_log.log(lst.key, log, logging.WARNING, trio.current_time(),
                                    "listener %s: %d: %s", lst.key, failure.status,
                                    failure.reason,
                                    extra={"routing_key": lst.key, "flow_id": entry.id})
                self._table.note_response(entry, status=failure.status, site=None,
                                          by_router=True)
                if grpc:
                    self._table.note_grpc_status(entry, failure.grpc_status)
                await answer_error(sink, failure, grpc)
        except ClientGone:
            outcome, reason = "reset", "the client went away"
            raise trio.BrokenResourceError("the client went away") from None
        except BaseException:
            outcome = "reset"
            raise
        finally:
            self._table.end(entry, outcome, reason)

    async def _serve_request(self, lst: ListenerConfig, entry: FlowEntry, head: RequestHead,
                             body: RequestBody, sink: ResponseSink
                             ) -> tuple[Failure | None, Outcome]:
        """(None once the response went or was reset, else the error to answer; the
        request's outcome)."""
        cfg = self._config(lst.key)
        if cfg is None:  # deleted while this connection was open
            return Failure(503, f"the listener for {lst.key!r} was deleted"), "refused"
        head = with_forwarded(head)
        replay = Replay()
        tried: set[str] = set()
        attempts = 1 + max(0, cfg.retries)
        now = trio.current_time()
        budget = self._budgets.get(cfg.key)
        if budget is None:
            budget = self._budgets[cfg.key] = RetryBudget(now)
        budget.on_request(now)
        failure = Failure(503, f"no site serves {lst.key!r}")
        # No timeout, no cancel scope: it costs a few us per request.
        timed = (trio.move_on_after(cfg.timeout_s) if cfg.timeout_s > 0
                 else contextlib.nullcontext())
        with timed as bound:
            for attempt in range(attempts):
                if attempt:
                    if not budget.can_retry(trio.current_time()):
                        break  # retries would more than double the load: answer now
                    self._table.note_attempt(entry, failure.reason)
                    await trio.sleep(self._rng.uniform(
                        0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))))
                result, outcome = await self._attempt(cfg, entry, head, body, sink, replay,
                                                      tried, can_retry=attempt + 1 < attempts,
                                                      bound=bound)
                if result is None:
                    return None, outcome
                failure = result
                if replay.overflow or failure.final:
                    break  # the body is gone, or it may have been acted on
            return failure, failure.outcome
        if sink.started:
            sink.reset()
            return None, "reset"
        return Failure(504, f"{lst.key!r}: no response within {cfg.timeout_s:g} s",
                        GRPC_DEADLINE_EXCEEDED), "error"

    async def _attempt(self, cfg: ListenerConfig, entry: FlowEntry, head: RequestHead,
                       body: RequestBody, sink: ResponseSink, replay: Replay, tried: set[str],
                       *, can_retry: bool, bound: trio.CancelScope | None
                       ) -> tuple[Failure | None, Outcome]:
        """One try at a site: (None when the response went to the client, or could not
        complete; a Failure when the request may be tried again or must be answered
        by us), and the attempt's outcome. `bound`: the request's timeout, lifted
        once it became a tunnel."""
        outcome: Outcome = "error"
        peer: MessagePeer | None = None
        finished = False
        router_id: str | None = None
        pump = Pump(hold_fin=proposes_tunnel(head))
        try:
            try:
                route = await self._forwarder.open(
                    entry, cfg.strategy,
                    make_end=lambda side: MessageFlow(side, entry, request=False),
                    connect_local=self._local.exchange, order=self._order(cfg, head, tried),
                    early=lambda end: pump.start(end, head, body, replay))
            except NoRoute as exc:
                outcome = "refused"
                return (Failure(503, f"no site serves {cfg.key!r}: {exc}", outcome="refused"),
                        outcome)
            tried.add(route.site)
            router_id = route.router_id
            peer = route.end if route.end is not None else route.target
            assert peer is not None
            if isinstance(peer, MessageFlow) and proposes_tunnel(head):
                peer.expect_tunnel(head)  # before the request goes: the answer may switch
            result, finished = await self._exchange(peer, entry, route.site, head, body, sink,
                                                    replay, pump, can_retry=can_retry,
                                                    bound=bound)
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
                # ...but not how a tunnel ended: a client that drops its WebSocket is
                # no fault of the site, which answered the switch.
                tunnelled = entry.status is not None and switches(head, entry.status)
                failed = ((outcome != "ok" and not tunnelled)
                          or (entry.status or 0) >= 500)
                self._sites.record(router_id, ok=not failed, now=trio.current_time(),
                                   reason=f"{entry.status or outcome}" if failed else "")

    def _order(self, cfg: ListenerConfig, head: RequestHead, tried: set[str]
               ) -> Callable[[list[Candidate], Mapping[str, int], random.Random],
                             list[Candidate]]:
        # Rules read the request's facts and affinity its header: none, nothing to read.
        facts = _facts(head) if cfg.routes else _NO_FACTS
        affinity = _affinity(cfg.affinity, head.headers) if cfg.affinity else None

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
                        replay: Replay, pump: Pump, *, can_retry: bool,
                        bound: trio.CancelScope | None) -> tuple[Failure | None, bool]:
        """(failure or None, whether both messages completed: a tunnel's both ways)."""
        note = functools.partial(note_response, self._table, entry, site)
        if pump.sent:  # the whole request went with the OPEN: only the response is left
            result = await receive(peer, head, sink, replay, pump, can_retry=can_retry,
                                   note=note)
        else:
            result = await self._both_ways(peer, head, body, sink, replay, pump, note,
                                           can_retry=can_retry)
        if pump.client_gone:
            raise ClientGone()
        if isinstance(result, Failure):
            return result, False
        if isinstance(result, tunnel.Switched):
            # A tunnel lives as long as its two ends want it: no request timeout, and
            # no idle timeout either (as for TCP); the flow's credit bounds its bytes.
            if bound is not None:
                bound.deadline = math.inf
            return None, pump.sent and await tunnel.splice(peer, result.stream, result.prefix,
                                                           who="the client")
        return None, pump.sent and pump.delivered

    async def _both_ways(self, peer: MessagePeer, head: RequestHead, body: RequestBody,
                         sink: ResponseSink, replay: Replay, pump: Pump,
                         note: Callable[[ResponseHead], None], *, can_retry: bool
                         ) -> Failure | bool | tunnel.Switched | None:
        """The request's rest into the flow while the response comes back."""
        # False if the pump cancels it: the client went away.
        result: Failure | bool | tunnel.Switched | None = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run, peer, head, body, replay, nursery.cancel_scope)
            result = await receive(peer, head, sink, replay, pump, can_retry=can_retry,
                                    note=note)
            if (result is not None and not isinstance(result, tunnel.Switched)) \
                    or not replay.ended:
                nursery.cancel_scope.cancel()  # failed, or answered before the body ended
            else:  # the END is on its way: let it go, unless the flow has no credit
                nursery.cancel_scope.deadline = trio.current_time() + END_DRAIN_S
        return result


_NO_FACTS = RequestFacts(method="", path="", headers={})


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

