"""Connector choice: in which order a listener tries the routers offering a routing key.

Pure functions over `Candidate`s (from `RoutingCore.candidates`). The first candidate returned is
preferred; the rest are fallbacks, tried in order if an earlier one refuses the flow.

Strategies:

- ``"balanced"`` (default, like Skupper's): fewest outstanding flows, biased by path cost.
  score = (outstanding + 1) * (1 + cost / BALANCED_COST_SCALE); lowest score first, ties by
  cost, then router id. So a local connector (cost 0) with 2 flows ties with a remote one at
  cost 20 with 0 flows.
- ``"priority"``: failover. A LOWER priority number is MORE preferred (as DNS SRV records);
  among equal priority, balanced order. Higher numbers are only tried when lower ones refuse.
- ``"weighted"``: the first candidate is drawn at random with probability proportional to its
  weight; the fallbacks follow by weight descending, then balanced order. Weight 0 is never
  drawn first unless every weight is 0, in which case the order is balanced.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from .core import Candidate

BALANCED_COST_SCALE: Final = 10.0
STRATEGIES: Final = ("balanced", "priority", "weighted")


def _balanced_key(
    outstanding: Mapping[str, int],
) -> Callable[[Candidate], tuple[float, int, str]]:
    def key(c: Candidate) -> tuple[float, int, str]:
        load = outstanding.get(c.router_id, 0) + 1
        return (load * (1.0 + c.cost / BALANCED_COST_SCALE), c.cost, c.router_id)

    return key


def choose(
    candidates: Sequence[Candidate],
    strategy: str,
    outstanding: Mapping[str, int],
    rng: random.Random,
) -> list[Candidate]:
    """Candidates in the order to try; `outstanding` counts open flows per router id."""
    balanced = sorted(candidates, key=_balanced_key(outstanding))
    if strategy == "balanced":
        return balanced
    if strategy == "priority":
        rank = {c.router_id: i for i, c in enumerate(balanced)}
        return sorted(balanced, key=lambda c: (c.priority, rank[c.router_id]))
    if strategy == "weighted":
        total = sum(c.weight for c in balanced)
        if total <= 0:
            return balanced
        point = rng.uniform(0, total)
        first = balanced[-1]
        for c in balanced:
            if c.weight > 0 and point < c.weight:
                first = c
                break
            point -= c.weight
        if first.weight == 0:  # only reachable through float rounding at the very top
            first = max(balanced, key=lambda c: c.weight)
        rank = {c.router_id: i for i, c in enumerate(balanced)}
        rest = sorted(
            (c for c in balanced if c.router_id != first.router_id),
            key=lambda c: (-c.weight, rank[c.router_id]),
        )
        return [first, *rest]
    raise ValueError(f"unknown connector choice strategy {strategy!r}; use one of {STRATEGIES}")
