"""The TCP adaptor: clients of TCP listeners, connectors that reach TCP targets.

A listener's client becomes a flow through `Forwarder.open`; an OPEN for a key this
site serves becomes a connection to one of the key's targets (rotating over several).
When the serving site is this one, the two sockets are spliced here.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import trio

from router.adaptors.socketflow import SocketFlow
from router.adaptors.stream import StreamFlow
from router.flows.end import PendingOpen, accept_incoming
from router.flows.entry import FlowEntry, Outcome
from router.flows.forwarder import Forwarder, NoRoute, NoTarget, Route
from router.flows.table import FlowTable
from router.net.errors import connect_reason, ended_quietly, only
from router.net.logthrottle import KeyedLogThrottle
from router.net.side import FlowSide
from router.net.sockets import READ_CHUNK, abort_socket, open_tcp, peer_name, receive_nowait
from router.protocol import FlowCode, Open
from router.site.config import ConnectorConfig, ListenerConfig

log = logging.getLogger(__name__)

# Turned-away clients and refused OPENs come in floods when a backend or the fd table is
# exhausted: one line per routing key per interval, with a count of the rest.
REFUSAL_LOG_INTERVAL_S = 10.0
Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]
# What a client's first read before the OPEN takes at most: what a peer takes as early
# data (router.daemon.identity.EARLY_BYTES); beyond its credit, the pump sends it.
EARLY_READ_BYTES = 64 * 1024


End = SocketFlow | StreamFlow


def _end_for(stream: trio.abc.Stream) -> type[End]:
    """A socket gets the pump with the fd fast paths; any other stream the plain one."""
    return SocketFlow if isinstance(stream, trio.SocketStream) else StreamFlow


def _pump(end: End, stream: trio.abc.Stream) -> Coroutine[Any, Any, None]:
    """`end.run(stream)`, typed; not a coroutine itself, so an open flow holds no
    frame of it."""
    if isinstance(end, SocketFlow):
        assert isinstance(stream, trio.SocketStream)
        return end.run(stream)
    return end.run(stream)


async def _close_abortively(stream: trio.abc.Stream) -> None:
    abort_socket(stream)
    with trio.CancelScope(shield=True):
        await stream.aclose()


class TcpConnectors:
    """The site's connectors: serve incoming OPENs by connecting to a local target."""

    def __init__(self, *, site: str, table: FlowTable, window: int, connect_timeout: float,
                 connect: Connect = open_tcp) -> None:
        self.site = site
        self._table = table
        self._window = window
        self._connect_timeout = connect_timeout
        self._connect = connect
        self._targets: Sequence[tuple[ConnectorConfig, str]] = ()  # and its host:port
        self._turn: Counter[str] = Counter()
        self._refusal_log = KeyedLogThrottle(REFUSAL_LOG_INTERVAL_S)

    def set_targets(self, connectors: Sequence[ConnectorConfig]) -> None:
        self._targets = tuple((c, str(c.endpoint)) for c in connectors if c.protocol == "tcp")

    async def connect(self, key: str) -> trio.abc.Stream:
        """A connection to a local target for `key` (see `connect_target`)."""
        stream, _ = await self.connect_target(key)
        return stream

    async def connect_target(self, key: str) -> tuple[trio.abc.Stream, str]:
        """A connection to a local target for `key` and the target's host:port,
        rotating over several; NoTarget with each target's reason if none answers."""
        targets = [t for t in self._targets if t[0].key == key]
        if not targets:
            raise NoTarget(f"site {self.site} has no connector for {key!r}")
        start = self._turn[key]
        self._turn[key] += 1
        errors = []
        for i in range(len(targets)):
            con, endpoint = targets[(start + i) % len(targets)]
            try:
                with trio.fail_after(self._connect_timeout):
                    return await self._connect(con.host, con.port), endpoint
            except (OSError, trio.TooSlowError) as exc:
                errors.append(f"{endpoint}: {connect_reason(exc)}")
        raise NoTarget(f"site {self.site} cannot reach {key!r} target {'; '.join(errors)}")

    def serve_open(self, side: FlowSide, open_msg: Open) -> None:
        """An OPEN for a key this site serves (from the link reader: must not block)."""
        accept_incoming(self._table, side, open_msg, self._serve)

    async def _serve(self, pending: PendingOpen, entry: FlowEntry, open_msg: Open) -> None:
        # The entry has what this needs of the OPEN (its key, the opener's site): the
        # message itself is let go rather than kept for as long as the flow is open.
        del open_msg
        side = pending.side
        outcome: Outcome = "error"
        reason: str | None = "serving router failed"
        target: trio.abc.Stream | None = None
        pumped = False
        try:
            try:
                target, entry.server = await self.connect_target(entry.key)
            except NoTarget as exc:
                if pending.reset_reason is None:
                    self._refusal_log.log(entry.key, log, logging.INFO,
                                          trio.current_time(), "refused flow for %s from %s: %s",
                                          entry.key, entry.listener_site, exc,
                                          extra={"routing_key": entry.key,
                                                 "peer_site": entry.listener_site})
                    side.refuse(FlowCode.NO_TARGET, str(exc))
                outcome, reason = "refused", str(exc)
                return
            if pending.reset_reason is not None:  # the opener gave up meanwhile
                outcome, reason = "reset", pending.reset_reason
                return
            end = _end_for(target)(side, entry)
            pending.hand_over(end)
            # Where the flow went goes back with the ACCEPT: the listener site's
            # record is then whole, with no message of its own (see README).
            if not side.accept(self._window, trace=entry.trace, server=entry.server or ""):
                outcome, reason = "reset", end.reset_reason  # the flow ended meanwhile
                return
            pumped = True
            await _pump(end, target)  # closes it
            reason = end.reset_reason
            outcome = "reset" if reason is not None else "ok"
        except BaseException as exc:
            if not pumped:  # an internal error: the opener must not wait for an answer
                side.reset(FlowCode.INTERNAL, "serving router failed")
            if not ended_quietly(f"flow for {entry.key}", exc):
                raise
        finally:
            self._table.end(entry, outcome, reason)
            if target is not None and not pumped:
                await _close_abortively(target)



class _ClientFirst:
    """What a client sent before its flow opened (a PostgreSQL startup packet, a Redis
    command): read once, without waiting, when the first OPEN goes, and sent with every
    OPEN attempt as early data, so that the serving site can pass it to the target as
    soon as it connected, a round trip sooner than after the ACCEPT."""

    def __init__(self, client: trio.abc.Stream) -> None:
        self._client = client
        self._read = False
        self.data = b""

    def send(self, end: End) -> None:
        if not isinstance(end, SocketFlow):  # only a socket's client is read early
            return
        if not self._read:
            self._read = True
            # b"" (EOF) stays for the pump to read: a socket's EOF is read again.
            self.data = receive_nowait(self._client, EARLY_READ_BYTES) or b""
        if self.data:
            end.send_early(self.data)


class TcpClients:
    """Clients of the site's TCP listeners: each one flow, or a splice on this site."""

    def __init__(self, *, forwarder: Forwarder, connectors: TcpConnectors,
                 table: FlowTable) -> None:
        self._forwarder = forwarder
        self._connectors = connectors
        self._table = table
        self._refusal_log = KeyedLogThrottle(REFUSAL_LOG_INTERVAL_S)

    async def serve_client(self, lst: ListenerConfig, client: trio.abc.Stream) -> None:
        """Find a serving site and pump. Whatever else ends this (no site, an internal
        error, shutdown) resets and closes the client: it must neither mistake it for
        a clean end nor leak the fd. An error is logged once, by the accept loop."""
        entry = self._table.begin(lst.key, "listener", client=peer_name(client))
        outcome: Outcome = "error"
        reason: str | None = "internal error in this router"
        served = False
        try:
            try:
                route, early = await self._route(lst, client, entry)
            except NoRoute as exc:
                outcome, reason = "refused", str(exc)
                self._refusal_log.log(lst.key, log, logging.WARNING, trio.current_time(),
                                      "listener %s: closing client: %s", lst.key, exc,
                                      extra={"routing_key": lst.key, "flow_id": entry.id})
                return
            served = True  # the pump closes the client
            entry.bytes_out += len(early)  # sent with the OPEN that took it
            if route.end is not None:
                await _pump(route.end, client)
                reason = route.end.reset_reason
                outcome = "reset" if reason is not None else "ok"
            else:
                assert route.target is not None
                if early:  # read for a site that refused
                    await route.target.send_all(early)
                if await splice(client, route.target, entry):
                    outcome, reason = "ok", None
                else:
                    outcome, reason = "reset", "a connection was reset (spliced on this site)"
        except BaseException as exc:
            if only(exc, (trio.Cancelled,)) is not None:
                # shutdown: the flow (if any) was reset
                outcome, reason = "reset", "router shutting down"
            raise
        finally:
            self._table.end(entry, outcome, reason)
            if not served:
                await _close_abortively(client)

    async def _route(self, lst: ListenerConfig, client: trio.abc.Stream,
                     entry: FlowEntry) -> tuple[Route[trio.abc.Stream, End], bytes]:
        """The route `Forwarder.open` found, and the early data it sent. A method of its
        own so that what only opening needs (two closures, the early reader) is gone
        while the flow stays open, which may be for hours."""
        kind = _end_for(client)
        early = _ClientFirst(client)

        def make_end(side: FlowSide) -> End:
            return kind(side, entry)

        async def connect_local(key: str) -> trio.abc.Stream:
            stream, entry.server = await self._connectors.connect_target(key)
            return stream

        route = await self._forwarder.open(entry, lst.strategy, make_end=make_end,
                                           connect_local=connect_local, early=early.send)
        return route, early.data


async def splice(a: trio.abc.Stream, b: trio.abc.Stream, entry: FlowEntry) -> bool:
    """Listener and connector on the same site: pump the client `a` and the target `b`,
    half-close aware, counting on the listener's `entry`; True if both directions ended
    cleanly.

    An end passes on as it happened: EOF as a half-close, a reset (or anything else
    that stops the pumps early) as a reset of both sockets, so a cut-off transfer
    never looks complete, as across sites where the flow's RESET does the same."""
    finished = 0

    async def pump(src: trio.abc.Stream, dst: trio.abc.Stream, from_target: bool) -> None:
        nonlocal finished
        try:
            while data := await src.receive_some(READ_CHUNK):
                await dst.send_all(data)
                if not from_target:
                    entry.bytes_out += len(data)  # as a listener's end counts
                    continue
                if entry.ttfb_s is None:
                    entry.ttfb_s = max(0.0, time.time() - entry.start)
                entry.bytes_in += len(data)
            if isinstance(dst, trio.abc.HalfCloseableStream):
                await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            nursery.cancel_scope.cancel()
            return
        finished += 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, a, b, False)
            nursery.start_soon(pump, b, a, True)
    finally:
        if finished < 2:
            abort_socket(a)
            abort_socket(b)
        with trio.CancelScope(shield=True):
            await a.aclose()
            await b.aclose()
    return finished == 2
