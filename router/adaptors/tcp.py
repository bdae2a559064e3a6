"""The TCP adaptor: clients of TCP listeners, connectors that reach TCP targets.

A listener's client becomes a flow through `Forwarder.open`; an OPEN for a key this
site serves becomes a connection to one of the key's targets (rotating over several).
When the serving site is this one, the two sockets are spliced here.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import trio

from router.adaptors.socketflow import SocketFlow
from router.adaptors.stream import StreamFlow
from router.flows.end import PendingOpen, accept_incoming
from router.flows.entry import FlowEntry, Outcome
from router.flows.forwarder import Forwarder, NoRoute, NoTarget
from router.flows.table import FlowTable
from router.net.errors import connect_reason, only
from router.net.logthrottle import KeyedLogThrottle
from router.net.side import FlowSide
from router.net.sockets import READ_CHUNK, abort_socket, peer_name
from router.protocol import FlowCode, Open
from router.site.config import ConnectorConfig, ListenerConfig

log = logging.getLogger(__name__)

# Turned-away clients and refused OPENs come in floods when a backend or the fd table is
# exhausted: one line per routing key per interval, with a count of the rest.
REFUSAL_LOG_INTERVAL_S = 10.0
Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]


async def _open_tcp(host: str, port: int) -> trio.abc.Stream:
    return await trio.open_tcp_stream(host, port)


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
                 connect: Connect = _open_tcp) -> None:
        self.site = site
        self._table = table
        self._window = window
        self._connect_timeout = connect_timeout
        self._connect = connect
        self._targets: Sequence[ConnectorConfig] = ()
        self._turn: Counter[str] = Counter()
        self._refusal_log = KeyedLogThrottle(REFUSAL_LOG_INTERVAL_S)

    def set_targets(self, connectors: Sequence[ConnectorConfig]) -> None:
        self._targets = tuple(c for c in connectors if c.protocol == "tcp")

    async def connect(self, key: str) -> trio.abc.Stream:
        """A connection to a local target for `key`, rotating over several; NoTarget
        with each target's reason if none answers."""
        targets = [c for c in self._targets if c.key == key]
        if not targets:
            raise NoTarget(f"site {self.site} has no connector for {key!r}")
        start = self._turn[key]
        self._turn[key] += 1
        errors = []
        for i in range(len(targets)):
            con = targets[(start + i) % len(targets)]
            try:
                with trio.fail_after(self._connect_timeout):
                    return await self._connect(con.host, con.port)
            except (OSError, trio.TooSlowError) as exc:
                errors.append(f"{con.endpoint}: {connect_reason(exc)}")
        raise NoTarget(f"site {self.site} cannot reach {key!r} target {'; '.join(errors)}")

    def serve_open(self, side: FlowSide, open_msg: Open) -> None:
        """An OPEN for a key this site serves (from the link reader: must not block)."""
        accept_incoming(self._table, side, open_msg, self._serve, "flow")

    async def _serve(self, pending: PendingOpen, entry: FlowEntry, open_msg: Open) -> None:
        side = pending.side
        outcome: Outcome = "error"
        target: trio.abc.Stream | None = None
        pumped = False
        try:
            try:
                target = await self.connect(open_msg.routing_key)
            except NoTarget as exc:
                if pending.reset_reason is None:
                    self._refusal_log.log(open_msg.routing_key, log, logging.INFO,
                                          trio.current_time(), "refused flow for %s from %s: %s",
                                          open_msg.routing_key, open_msg.origin_site, exc,
                                          extra={"routing_key": open_msg.routing_key,
                                                 "peer_site": open_msg.origin_site})
                    side.refuse(FlowCode.NO_TARGET, str(exc))
                outcome = "refused"
                return
            if pending.reset_reason is not None:  # the opener gave up meanwhile
                outcome = "reset"
                return
            end = _end_for(target)(side, entry)
            pending.hand_over(end)
            if not side.accept(self._window):
                outcome = "reset"  # the flow ended meanwhile
                return
            pumped = True
            await _pump(end, target)  # closes it
            outcome = "reset" if end.reset_reason is not None else "ok"
        except BaseException:
            if not pumped:  # an internal error: the opener must not wait for an answer
                side.reset(FlowCode.INTERNAL, "serving router failed")
            raise
        finally:
            self._table.end(entry, outcome)
            if target is not None and not pumped:
                await _close_abortively(target)



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
        a clean end nor leak the fd. An error is logged once, by `guarded` around us."""
        entry = self._table.begin(lst.key, "listener", client=peer_name(client))
        kind = _end_for(client)

        def make_end(side: FlowSide) -> End:
            return kind(side, entry)

        outcome: Outcome = "error"
        served = False
        try:
            try:
                route = await self._forwarder.open(entry, lst.strategy, make_end=make_end,
                                                   connect_local=self._connectors.connect)
            except NoRoute as exc:
                outcome = "refused"
                self._refusal_log.log(lst.key, log, logging.WARNING, trio.current_time(),
                                      "listener %s: closing client: %s", lst.key, exc,
                                      extra={"routing_key": lst.key, "flow_id": entry.id})
                return
            served = True  # the pump closes the client
            if route.end is not None:
                await _pump(route.end, client)
                outcome = "reset" if route.end.reset_reason is not None else "ok"
            else:
                assert route.target is not None
                outcome = "ok" if await splice(client, route.target) else "reset"
        except BaseException as exc:
            if only(exc, (trio.Cancelled,)) is not None:
                outcome = "reset"  # shutdown: the flow (if any) was reset
            raise
        finally:
            self._table.end(entry, outcome)
            if not served:
                await _close_abortively(client)


async def splice(a: trio.abc.Stream, b: trio.abc.Stream) -> bool:
    """Listener and connector on the same site: pump two streams, half-close aware;
    True if both directions ended cleanly.

    An end passes on as it happened: EOF as a half-close, a reset (or anything else
    that stops the pumps early) as a reset of both sockets, so a cut-off transfer
    never looks complete, as across sites where the flow's RESET does the same."""
    finished = 0

    async def pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
        nonlocal finished
        try:
            while data := await src.receive_some(READ_CHUNK):
                await dst.send_all(data)
            if isinstance(dst, trio.abc.HalfCloseableStream):
                await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            nursery.cancel_scope.cancel()
            return
        finished += 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, a, b)
            nursery.start_soon(pump, b, a)
    finally:
        if finished < 2:
            abort_socket(a)
            abort_socket(b)
        with trio.CancelScope(shield=True):
            await a.aclose()
            await b.aclose()
    return finished == 2
