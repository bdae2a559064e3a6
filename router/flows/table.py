"""Every flow end of this router, registered while it lives, counted when it ends.

An end registers (routing key, role, client, trace) when it starts, notes the
serving router once it has one, adds its bytes as they move and reports its
outcome when it ends. This is the one place for the counters that status and
metrics show, for the outstanding flows per serving router that the "balanced"
strategy reads, and for the records of ended flows and the per-key counters kept
from them (flows/records.py, flows/counters.py). An HTTP listener notes each request's method, path,
response and retries on its entry (`note_request`, `note_response`, `note_attempt`);
a TCP flow leaves those at their defaults, so its path costs what it did. The table
also owns the nursery the flows' tasks run in, so that draining is one wait on one
condition (`wait_idle`).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import trio

from router.flows.counters import Counters
from router.flows.entry import FlowEntry, Outcome, Role
from router.flows.records import FLOW_RECORDS_MAX, FLOW_RECORDS_TTL_S, RecordRing

PATH_MAX = 256  # characters of a request's path kept in its record


class FlowTable:
    def __init__(self, records_max: int = FLOW_RECORDS_MAX,
                 records_ttl_s: float = FLOW_RECORDS_TTL_S, *, site: str = "",
                 router_id: str = "") -> None:
        self.site = site  # this router's, for its entries' records
        self.router_id = router_id
        self._here: tuple[str, ...] = (router_id,) if router_id else ()
        self._ids = itertools.count(1)
        self._active: dict[int, FlowEntry] = {}
        self._outstanding: Counter[str] = Counter()
        self.opened = 0  # client connections accepted by our listeners
        self.refused = 0  # of those, closed for want of a serving site
        self.outcomes: Counter[Outcome] = Counter()
        self._done_in = 0  # bytes of flows that ended
        self._done_out = 0
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None
        self.records = RecordRing(records_max, records_ttl_s)
        self._recording = records_max > 0  # 0: no records at all, at no cost
        self.stats = Counters()

    # ---- registration
    def begin(self, key: str, role: Role, *, client: str = "?",
              trace: tuple[str, ...] = (), listener_site: str = "") -> FlowEntry:
        """A connector's end names the `listener_site` its OPEN came from."""
        if role == "connector":
            entry = FlowEntry(id=next(self._ids), key=key, role=role, client=client,
                              trace=trace, listener_site=listener_site or self.site,
                              connector_site=self.site)
        else:  # the path is known once a site accepts: until then, here only
            entry = FlowEntry(id=next(self._ids), key=key, role=role, client=client,
                              trace=trace or self._here, listener_site=self.site)
        self._active[entry.id] = entry
        if role == "listener":
            self.opened += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        return entry

    def serving(self, entry: FlowEntry, router_id: str) -> None:
        """The flow is being served by `router_id` (counted until it ends). Again
        for the same entry (a request's next attempt) moves it to the new router."""
        if entry.server_router is not None:
            self._release(entry.server_router)
        entry.server_router = router_id
        self._outstanding[router_id] += 1

    def end(self, entry: FlowEntry, outcome: Outcome, reason: str | None = None) -> None:
        """The flow ended; `reason` says why when it was refused, reset or failed."""
        if self._active.pop(entry.id, None) is None:
            return  # ended twice: count once
        if entry.server_router is not None:
            self._release(entry.server_router)
        entry.end = time.time()
        entry.outcome = outcome
        if reason is not None:
            entry.reason = reason
        if self._recording:
            self.records.append(entry)
        self.stats.add(entry)
        self._done_in += entry.bytes_in
        self._done_out += entry.bytes_out
        self.outcomes[outcome] += 1
        if outcome == "refused" and entry.role == "listener":
            self.refused += 1
        if not self._active:
            self._idle.set()

    def _release(self, router_id: str) -> None:
        self._outstanding[router_id] -= 1
        if not self._outstanding[router_id]:
            del self._outstanding[router_id]

    # ---- what an HTTP listener notes on a request's entry (one entry per request)
    def note_request(self, entry: FlowEntry, *, method: str | bytes, path: str | bytes
                     ) -> None:
        """The entry is the client's request `method path` (counted as one at its end).
        The record keeps the path without its query (it may carry secrets), cut to
        PATH_MAX characters so that 10 000 records stay small."""
        if isinstance(method, bytes):
            method = method.decode("latin-1")
        if isinstance(path, bytes):
            path = path.decode("latin-1")
        entry.method = method
        entry.path = path.partition("?")[0][:PATH_MAX]

    def note_attempt(self, entry: FlowEntry, reason: str) -> None:
        """Another attempt starts (a retry), because of `reason` ("west: 503")."""
        entry.attempts += 1
        entry.retry_reasons += (reason,)

    def note_response(self, entry: FlowEntry, *, status: int, site: str | None,
                      by_router: bool = False, ttfb_s: float | None = None) -> None:
        """The response head went to the client: its status, the site that answered
        (None if none did), whether we generated it. Time to first byte is taken now
        unless given."""
        entry.status = status
        entry.served_by_site = site
        entry.by_router = by_router
        entry.ttfb_s = ttfb_s if ttfb_s is not None else max(0.0, time.time() - entry.start)

    def note_grpc_status(self, entry: FlowEntry, code: int) -> None:
        """A gRPC response's grpc-status (from its trailers, or a trailers-only answer)."""
        entry.grpc_status = code

    # ---- what status, metrics and the strategies read
    @property
    def outstanding(self) -> Mapping[str, int]:
        return self._outstanding

    @property
    def active(self) -> int:
        return len(self._active)

    def entries(self) -> Iterator[FlowEntry]:
        return iter(self._active.values())

    def listed(self, *, key: str | None = None, active: bool = False,
               limit: int | None = None) -> list[FlowEntry]:
        """What `sitectl flows` shows: the active flows (newest first), then unless
        `active` the records (newest first); only `key`'s if given, `limit` at most."""
        chosen: Iterator[FlowEntry] = reversed(self._active.values())
        if not active:
            chosen = itertools.chain(chosen, self.records.recent(len(self.records)))
        if key is not None:
            chosen = (e for e in chosen if e.key == key)
        return list(itertools.islice(chosen, limit))

    @property
    def bytes_in(self) -> int:
        return self._done_in + sum(e.bytes_in for e in self._active.values())

    @property
    def bytes_out(self) -> int:
        return self._done_out + sum(e.bytes_out for e in self._active.values())

    def counters(self) -> dict[str, int]:
        return {"active": self.active, "opened": self.opened, "refused": self.refused,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}

    # ---- the flows' tasks
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Host the flows' tasks until cancelled (after `drain`)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "flow table not running"
        return self._nursery

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self.nursery.start_soon(fn, *args)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` s for every flow to end; True if they all did."""
        with trio.move_on_after(timeout):
            await self._idle.wait()
        return self._idle.is_set()

    def cancel(self) -> None:
        """End every flow task still running (each resets its flow)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
