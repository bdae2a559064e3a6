"""Flow records across the network: asking every router for its records over the
links, and answering such questions (`sitectl flows --network`).

A question is a flow like any other (OPEN with the reserved key `$records` to one
router by `dest_router`, the query as its data, the answer back, FIN both ways), so it
rides the links' mTLS, credit and transit routers with no frame of its own. The asker
asks every known router at once and waits at most a deadline; a router that does not
answer in time, or answers something malformed, is named, not waited for.

What a peer may make a router do is bounded: a query is at most QUERY_MAX_BYTES and
must come within SERVE_DEADLINE_S, as must the answer's last byte (a peer that never
reads gets a reset, not a task that waits forever); at most MAX_SERVING queries are
served at once and QUERY_BURST at a time (QUERIES_PER_S refill), the rest refused at
their OPEN, before any work; an answer is at most ANSWER_MAX_RECORDS records and
ANSWER_MAX_BYTES.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from router.flows.records import record_dict
from router.flows.recordwire import (
    ANSWER_WINDOW,
    QUERY_MAX_BYTES,
    RECORDS_KEY,
    BadRecords,
    Query,
    decode_answer,
    encode_answer,
)
from router.flows.table import FlowTable
from router.net.errors import guarded
from router.net.link import Link
from router.net.side import FlowSide
from router.protocol import FlowCode, FlowError, Open
from router.routing import RoutingCore

log = logging.getLogger(__name__)

ASK_DEADLINE_S = 3.0  # how long an asker waits for every router's answer
SERVE_DEADLINE_S = 5.0  # a query's whole exchange on the answering router
MAX_SERVING = 4  # queries answered at once
QUERY_BURST = 16  # queries answered in a burst ...
QUERIES_PER_S = 8.0  # ... and then per second
SEND_CHUNK = 64 * 1024  # an answer goes to the link in pieces, under its buffer limit


class _Exchange:
    """One `$records` flow as either end sees it (a link FlowHandler): the bytes that
    arrived (more than `cap` resets the flow), whether the other end finished, failed
    or accepted. No credit is granted: each end's window holds all it may receive."""

    def __init__(self, side: FlowSide, cap: int) -> None:
        self.side = side
        self.cap = cap
        self.received = bytearray()
        self.accepted = False
        self.fin_received = False
        self.failed: str | None = None
        self._changed = trio.Event()

    def _wake(self) -> None:
        self._changed.set()

    async def wait(self, done: Callable[[], bool]) -> None:
        """Until `done()` or the flow failed."""
        while not done() and self.failed is None:
            self._changed = trio.Event()
            await self._changed.wait()

    def fail(self, code: FlowCode, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
            self.side.reset(code, reason)
        self._wake()

    async def send_all(self, data: bytes) -> None:
        """`data` within the peer's credit, pausing while the link's queue is full."""
        view = memoryview(data)
        while view and self.failed is None:
            await self.wait(lambda: self.side.credit() > 0)
            if self.failed is not None:
                return
            n = min(self.side.credit(), SEND_CHUNK, len(view))
            try:
                self.side.send(view[:n])
            except FlowError as exc:
                self.fail(FlowCode.INTERNAL, f"flow error: {exc}")
                return
            view = view[n:]
            await self.side.link.wait_drained()

    # ---- FlowHandler: called by the link reader, must not block
    def on_accepted(self, window: int, trace: tuple[str, ...], server: str) -> None:
        self.accepted = True
        self._wake()

    def on_refused(self, code: FlowCode, reason: str) -> None:
        self.failed = reason
        self._wake()

    def on_data(self, data: bytes) -> None:
        if self.failed is not None:
            return
        if len(self.received) + len(data) > self.cap:
            self.fail(FlowCode.CAPACITY, f"more than {self.cap} bytes")
            return
        self.received += data
        self._wake()

    def on_credit(self) -> None:
        self._wake()

    def on_fin(self) -> None:
        self.fin_received = True
        self._wake()

    def on_reset(self, code: FlowCode, reason: str) -> None:
        self.failed = reason
        self._wake()


class RecordsServer:
    """Answers `$records` OPENs addressed to this router with its records."""

    def __init__(self, *, table: FlowTable, site: str,
                 names: Callable[[], Mapping[str, str]]) -> None:
        self._table = table
        self._site = site
        self._names = names
        self.serving = 0
        self.refused = 0  # queries turned away at their OPEN (too many)
        self._tokens = float(QUERY_BURST)
        self._filled_at: float | None = None

    def _admit(self, now: float) -> bool:
        if self._filled_at is not None:
            self._tokens = min(float(QUERY_BURST),
                               self._tokens + (now - self._filled_at) * QUERIES_PER_S)
        self._filled_at = now
        if self.serving >= MAX_SERVING or self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def serve_open(self, side: FlowSide, open_msg: Open) -> None:
        """From the link reader: must not block."""
        if not self._admit(trio.current_time()):
            self.refused += 1
            log.debug("refused a records query from %s: too many", open_msg.origin_site)
            side.refuse(FlowCode.CAPACITY, f"site {self._site} is answering too many "
                        "record queries")
            return
        exchange = _Exchange(side, QUERY_MAX_BYTES)
        side.attach(exchange)
        if not side.accept(QUERY_MAX_BYTES):
            side.release()
            return
        self.serving += 1
        self._table.spawn(guarded, "records query", self._serve, exchange)

    async def _serve(self, ex: _Exchange) -> None:
        try:
            with trio.move_on_after(SERVE_DEADLINE_S) as scope:
                await ex.wait(lambda: ex.fin_received)
                if ex.failed is not None:
                    return
                try:
                    query = Query.from_wire(bytes(ex.received))
                except BadRecords as exc:
                    ex.fail(FlowCode.PEER_RESET, f"bad records query: {exc}")
                    return
                answer = encode_answer(self._site, self._records(query), query.limit)
                await ex.send_all(answer)
                if ex.failed is None:
                    ex.side.fin()
                    ex.side.release()
            if scope.cancelled_caught:
                ex.fail(FlowCode.TIMEOUT, f"records query not done within {SERVE_DEADLINE_S:g} s")
        except BaseException:
            ex.fail(FlowCode.SHUTDOWN, "records query ended: router shutting down")
            raise
        finally:
            self.serving -= 1

    def _records(self, query: Query) -> Iterator[dict[str, Any]]:
        names = self._names()
        for entry in self._table.listed(key=query.key, active=query.active,
                                        limit=query.limit):
            yield record_dict(entry, names)


@dataclass
class NetworkRecords:
    """Every router's answer: the records, the sites that answered, and the ones that
    did not with why."""

    records: list[dict[str, Any]] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)  # {"site", "error"}


async def ask_network(routing: RoutingCore, link_for: Callable[[str], Link | None],
                      site: str, query: Query, deadline_s: float = ASK_DEADLINE_S
                      ) -> NetworkRecords:
    """Ask every router known (but us) for its records, all at once, for at most
    `deadline_s`."""
    out = NetworkRecords()
    me = routing.router_id
    async with trio.open_nursery() as nursery:
        for rec in routing.records():
            if rec.router_id == me:
                continue
            hop = routing.next_hop(rec.router_id)
            link = link_for(hop) if hop is not None else None
            if link is None:
                out.missing.append({"site": rec.site, "error": "not reachable"})
                continue
            nursery.start_soon(_ask_one, out, link, site, me, rec.router_id, rec.site,
                               query, deadline_s)
    return out


async def _ask_one(out: NetworkRecords, link: Link, site: str, me: str, dest: str,
                   dest_site: str, query: Query, deadline_s: float) -> None:
    ex = _Exchange(FlowSide(link), ANSWER_WINDOW)
    request = query.to_wire()
    open_msg = Open(routing_key=RECORDS_KEY, origin_site=site, origin_router=me,
                    dest_router=dest, client_addr="", trace=(me,), window=ANSWER_WINDOW)
    error: str | None = None
    with trio.move_on_after(deadline_s) as scope:
        try:
            with link.batch():  # the query goes with its OPEN when the hop takes early data
                ex.side.open(open_msg, ex)
                sent = ex.side.credit() >= len(request) and ex.side.can_fin()
                if sent:
                    ex.side.send(request, flush=False)
                    ex.side.fin()
            if not sent:
                await ex.wait(lambda: ex.accepted)
                if ex.failed is None:
                    await ex.send_all(request)
                    ex.side.fin()
            await ex.wait(lambda: ex.fin_received)
        except FlowError as exc:  # the link is closing
            error = str(exc)
    if scope.cancelled_caught:
        ex.fail(FlowCode.CANCELLED, "records query timed out")
        error = f"no answer within {deadline_s:g} s"
    ex.side.release()
    error = error or ex.failed
    if error is None:
        try:
            answer = decode_answer(bytes(ex.received))
        except BadRecords as exc:
            error = f"bad answer: {exc}"
        else:
            out.records.extend(answer.records)
            out.answered.append(dest_site)
            return
    out.missing.append({"site": dest_site, "error": error})


def site_names(routing: RoutingCore) -> dict[str, str]:
    """Router id -> site name, for every router in the routing database (us too)."""
    return {rec.router_id: rec.site for rec in routing.records()}
