"""An in-process network of RoutingCores with a fake clock, for tests and benchmarks.

Messages travel over an ideal bus: a payload is delivered only while both ends are alive and
the link between them is up. `run()` delivers in rounds until nothing is left to send.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .core import RoutingCore
from .signing import NullSigner, Signer, VerifyFn, null_verify


class SimNetwork:
    def __init__(self, *, now: float = 0.0, verify: VerifyFn = null_verify, **core_kwargs: Any):
        self.now = now
        self.cores: dict[str, RoutingCore] = {}
        self.alive: set[str] = set()
        self.links: dict[str, dict[str, int]] = {}  # the true graph: a -> b -> cost a uses
        self.rounds = 0
        self.deliveries = 0
        self._verify = verify
        self._core_kwargs = core_kwargs

    # ---- topology --------------------------------------------------------------------------

    def add_router(
        self, seed: str, *, site: str | None = None, signer: Signer | None = None
    ) -> str:
        """Start a router (or restart one with a reset seq: same seed, same id)."""
        core = RoutingCore(
            site=site or f"site-{seed}",
            signer=signer or NullSigner.from_seed(seed),
            verify=self._verify,
            now=self.now,
            **self._core_kwargs,
        )
        rid = core.router_id
        self.cores[rid] = core
        self.alive.add(rid)
        self.links.setdefault(rid, {})
        return rid

    def connect(self, a: str, b: str, cost: int = 1, cost_back: int | None = None) -> None:
        back = cost if cost_back is None else cost_back
        self.links[a][b] = cost
        self.links[b][a] = back
        self.cores[a].neighbour_up(b, cost, self.now)
        self.cores[b].neighbour_up(a, back, self.now)

    def disconnect(self, a: str, b: str) -> None:
        self.links[a].pop(b, None)
        self.links[b].pop(a, None)
        for x, y in ((a, b), (b, a)):
            if x in self.alive:
                self.cores[x].neighbour_down(y, self.now)

    def set_cost(self, a: str, b: str, cost: int) -> None:
        self.links[a][b] = cost
        self.cores[a].set_cost(b, cost, self.now)

    def kill(self, rid: str) -> None:
        """The router dies and its neighbours notice (their links drop)."""
        for peer in list(self.links[rid]):
            self.disconnect(rid, peer)
        self.alive.discard(rid)

    def freeze(self, rid: str) -> None:
        """The router goes silent but its neighbours do not notice: only ageing removes it."""
        self.alive.discard(rid)

    def true_graph(self) -> dict[str, dict[str, int]]:
        """Live routers and the links both of whose ends are alive."""
        return {
            a: {b: c for b, c in peers.items() if b in self.alive}
            for a, peers in self.links.items()
            if a in self.alive
        }

    # ---- time and delivery -----------------------------------------------------------------

    def run(self, max_rounds: int = 10_000) -> int:
        """Deliver messages until quiescent; returns the number of rounds."""
        rounds = 0
        while True:
            batch = [
                (src, dst, payload)
                for src in sorted(self.alive)
                for dst, payload in self.cores[src].outgoing()
            ]
            if not batch:
                return rounds
            rounds += 1
            self.rounds += 1
            if rounds > max_rounds:
                raise RuntimeError(f"no quiescence after {max_rounds} rounds")
            for src, dst, payload in batch:
                if dst in self.alive and src in self.links[dst] and dst in self.links[src]:
                    self.deliveries += 1
                    self.cores[dst].receive(src, payload, self.now)

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing timers at their deadlines and delivering."""
        target = self.now + seconds
        self.run()
        while True:
            live = [self.cores[r] for r in sorted(self.alive)]
            due = min((c.next_deadline() for c in live), default=target)
            if due > target:
                break
            self.now = max(self.now, due)
            for core in live:
                if core.next_deadline() <= self.now:
                    core.handle_timer(self.now)
            self.run()
        self.now = target

    def live_cores(self) -> Iterable[RoutingCore]:
        return (self.cores[r] for r in sorted(self.alive))
