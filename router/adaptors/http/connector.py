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

import trio

from router.adaptors.http.backend import (
    Connect,
    H1Conn,
    H1Pool,
    H2Pool,
)
from router.adaptors.http.flowmsg import DeferredAccepts, MessageFlow
from router.adaptors.http.local import LocalExchange, local_pair
from router.adaptors.http.message import (
    MessagePeer,
)
from router.adaptors.http.relay import H1Lease, Lease, give_back, serve
from router.flows.end import PendingOpen, accept_incoming
from router.flows.entry import FlowEntry, Outcome
from router.flows.forwarder import NoTarget
from router.flows.table import FlowTable
from router.net.errors import connect_reason, ended_quietly, guarded
from router.net.logthrottle import KeyedLogThrottle
from router.net.side import FlowSide
from router.net.sockets import open_tcp
from router.protocol import FlowCode, Open
from router.site.config import ConnectorConfig

log = logging.getLogger(__name__)
REFUSAL_LOG_INTERVAL_S = 10.0
PROTOCOLS = ("http1", "http2")


@dataclass(frozen=True, slots=True)
class _Target:
    endpoint: str
    protocol: str


def _note_lease(entry: FlowEntry, lease: Lease) -> None:
    """The target and the protocol it speaks, for the request's record here."""
    if isinstance(lease, H1Lease):
        entry.protocol, entry.server = "http1", lease.pool.endpoint
    else:
        entry.protocol, entry.server = "http2", lease.conn.pool.endpoint


class HttpConnectors:
    """The site's HTTP connectors and their pools of backend connections."""

    def __init__(self, *, site: str, table: FlowTable, window: int, connect_timeout: float,
                 connect: Connect = open_tcp) -> None:
        self.site = site
        self._table = table
        self._window = window
        self._connect_timeout = connect_timeout
        self._connect = connect
        self._targets: tuple[ConnectorConfig, ...] = ()
        self._by_key: dict[str, list[tuple[ConnectorConfig, str]]] = {}  # with "host:port"
        self._host: dict[str, bytes] = {}  # "host:port" -> its connector's Host rewrite
        self._turn: Counter[str] = Counter()
        self.h1: dict[str, H1Pool] = {}  # by "host:port"
        self.h2: dict[str, H2Pool] = {}
        self._refusal_log = KeyedLogThrottle(REFUSAL_LOG_INTERVAL_S)
        self._deferred = DeferredAccepts(lambda: self._table.nursery)

    def set_targets(self, connectors: Sequence[ConnectorConfig]) -> None:
        self._targets = tuple(c for c in connectors if c.protocol in PROTOCOLS)
        self._by_key, self._host = {}, {}
        for con in self._targets:  # formatted once, not per request
            host = f"[{con.host}]" if ":" in con.host else con.host  # as Endpoint writes it
            self._by_key.setdefault(con.key, []).append((con, f"{host}:{con.port}"))
            if con.host_header:
                self._host[f"{host}:{con.port}"] = con.host_header.encode()

    def serves(self, key: str) -> bool:
        return any(c.key == key for c in self._targets)

    # ---- getting a backend connection
    async def lease(self, key: str) -> tuple[Lease, bytes]:
        """A connection (HTTP/1.1) or a stream slot (HTTP/2) to one of `key`'s targets,
        rotating over several, with the Host that target's connector sends (b"" for the
        client's); NoTarget with each target's reason if none answers."""
        targets = self._by_key.get(key)
        if not targets:
            raise NoTarget(f"site {self.site} has no HTTP connector for {key!r}")
        start = self._turn[key]
        self._turn[key] += 1
        errors = []
        for i in range(len(targets)):
            con, endpoint = targets[(start + i) % len(targets)]
            try:
                return await self._lease_one(con, endpoint), self._host.get(endpoint, b"")
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
        if conn is not None:
            return H1Lease(pool, conn, reused=True)
        with trio.fail_after(self._connect_timeout):
            stream = await self._connect(con.host, con.port)
        pool.opened += 1
        return H1Lease(pool, H1Conn(stream, endpoint))

    async def _fresh(self, endpoint: str) -> trio.abc.Stream:
        """A new connection to the target at `endpoint`, for a tunnel (never pooled)."""
        con = next((c for targets in self._by_key.values() for c, text in targets
                    if text == endpoint), None)
        if con is None:
            raise OSError(f"the connector for {endpoint} was deleted")
        with trio.fail_after(self._connect_timeout):
            stream = await self._connect(con.host, con.port)
        if (pool := self.h1.get(endpoint)) is not None:
            pool.opened += 1
        return stream

    # ---- requests from other sites
    def serve_open(self, side: FlowSide, open_msg: Open) -> None:
        """An OPEN for an HTTP key (from the link reader: must not block)."""
        accept_incoming(self._table, side, open_msg, self._serve)

    async def _serve(self, pending: PendingOpen, entry: FlowEntry, open_msg: Open) -> None:
        side = pending.side
        outcome: Outcome = "error"
        accepted = False
        try:
            try:
                lease, host = await self.lease(open_msg.routing_key)
            except NoTarget as exc:
                if pending.reset_reason is None:
                    self._refusal_log.log(open_msg.routing_key, log, logging.INFO,
                                          trio.current_time(), "refused flow for %s from %s: %s",
                                          open_msg.routing_key, open_msg.origin_site, exc,
                                          extra={"routing_key": open_msg.routing_key,
                                                 "peer_site": open_msg.origin_site})
                    side.refuse(FlowCode.NO_TARGET, str(exc))
                outcome, entry.reason = "refused", str(exc)
                return
            _note_lease(entry, lease)
            flow = MessageFlow(side, entry, request=True)
            if pending.reset_reason is None:
                pending.hand_over(flow)
                if flow.request_arrived:
                    # The whole request came with the OPEN: the ACCEPT goes with the
                    # response's first bytes (or a reset), one write and one wake-up
                    # less on both routers; a slow backend gets it after ACCEPT_DEFER_S.
                    flow.defer_accept(self._window)
                    self._deferred.add(flow)
                    accepted = True
                else:
                    accepted = side.accept(self._window, trace=entry.trace,
                                           server=entry.server or "")
            if not accepted:  # the opener gave up meanwhile
                await give_back(lease)
                outcome = "reset"
                return
            outcome = await serve(flow, lease, self._fresh, host=host)
            if flow.done:
                side.release()
            elif flow.reset_reason is None:
                flow.abort(FlowCode.PEER_RESET, "the HTTP exchange did not complete")
        except BaseException as exc:
            if not accepted:  # an internal error: the opener must not wait for an answer
                side.reset(FlowCode.INTERNAL, "serving router failed")
            elif flow.reset_reason is None and not flow.done:
                # Accepted first, so the opener cannot take it for a path failure and
                # send a request the backend may have seen again.
                flow.abort(FlowCode.INTERNAL, "serving router failed")
            if not ended_quietly(f"HTTP request for {open_msg.routing_key}", exc):
                raise
        finally:
            self._table.end(entry, outcome)

    # ---- requests from this site's own listeners
    async def exchange(self, key: str) -> MessagePeer:
        """The serving site is this one: the listener's end of an exchange that this
        object serves; NoTarget if no target answers."""
        lease, host = await self.lease(key)
        mine, theirs = local_pair()
        entry = self._table.begin(key, "connector", client="local")
        _note_lease(entry, lease)
        self._table.spawn(guarded, f"local HTTP request for {key}", self._serve_local,
                          mine, lease, host, entry)
        return theirs

    async def _serve_local(self, peer: LocalExchange, lease: Lease, host: bytes,
                           entry: FlowEntry) -> None:
        outcome: Outcome = "error"
        try:
            outcome = await serve(peer, lease, self._fresh, host=host)
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

