"""Choosing the serving sites for one HTTP request: route rules, affinity, strategy.

Pure. Rules are tried in order and the first that matches decides: `site` sends the
request to that site only; `split` draws one of its sites by weight (the others of
the split follow as fallbacks for retries). No rule matched: with an affinity value
(a header or cookie), rendezvous hashing puts the same value on the same site while
it is reachable, and a site that goes or comes moves only its own share of values;
without one, the listener's strategy orders the sites as for a TCP flow.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .choice import BALANCED_COST_SCALE, choose
from .core import Candidate

MAX_RULES = 64  # per listener
MAX_SPLIT_SITES = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRule:
    """A match (every given part must hold) and an action (`site` or `split`)."""

    path_prefix: str | None = None
    header: str | None = None  # a header name, lower-case
    header_value: str | None = None  # the exact value; None: the header is present
    header_absent: bool = False  # match when `header` is absent instead
    method: str | None = None  # upper-case
    site: str | None = None
    split: tuple[tuple[str, int], ...] = ()  # (site, weight)

    def matches(self, request: RequestFacts) -> bool:
        if self.path_prefix is not None and not request.path.startswith(self.path_prefix):
            return False
        if self.method is not None and request.method != self.method:
            return False
        if self.header is not None:
            value = request.headers.get(self.header)
            if self.header_absent:
                return value is None
            if value is None or (self.header_value is not None and value != self.header_value):
                return False
        return True


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What rules look at: method (upper-case), path, headers (lower-case names; the
    first value of a repeated header)."""

    method: str
    path: str
    headers: Mapping[str, str]


def order_for_request(
    rules: Sequence[RouteRule], request: RequestFacts, candidates: Sequence[Candidate], *,
    strategy: str, outstanding: Mapping[str, int], rng: random.Random,
    affinity: str | None = None,
) -> list[Candidate]:
    """The candidates to try for this request, best first (empty: none may serve it)."""
    for rule in rules:
        if not rule.matches(request):
            continue
        if rule.site is not None:
            return [c for c in choose(candidates, strategy, outstanding, rng)
                    if c.site == rule.site]
        return _split(rule.split, candidates, strategy, outstanding, rng)
    if affinity is not None:
        return sorted(candidates, key=lambda c: _rendezvous(affinity, c.router_id))
    return _shuffle_ties(choose(candidates, strategy, outstanding, rng), strategy,
                         outstanding, rng)


def _shuffle_ties(order: list[Candidate], strategy: str, outstanding: Mapping[str, int],
                  rng: random.Random) -> list[Candidate]:
    """Sites the strategy cannot tell apart, in random order. Requests on a keep-alive
    connection come one after another, so no flow is outstanding when the next one is
    placed: without this, equal sites would see every request go to the same one."""
    if strategy == "weighted":
        return order  # already drawn at random

    def rank(c: Candidate) -> tuple[float, ...]:
        load = (outstanding.get(c.router_id, 0) + 1) * (1.0 + c.cost / BALANCED_COST_SCALE)
        return (c.priority, load, c.cost) if strategy == "priority" else (load, c.cost)

    out: list[Candidate] = []
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and rank(order[j]) == rank(order[i]):
            j += 1
        tie = order[i:j]
        rng.shuffle(tie)
        out += tie
        i = j
    return out


def _split(split: Sequence[tuple[str, int]], candidates: Sequence[Candidate], strategy: str,
           outstanding: Mapping[str, int], rng: random.Random) -> list[Candidate]:
    """One site drawn by weight among the split's reachable sites, then the others."""
    weights = dict(split)
    reachable = [c for c in choose(candidates, strategy, outstanding, rng) if c.site in weights]
    by_site: dict[str, list[Candidate]] = {}
    for c in reachable:
        by_site.setdefault(c.site, []).append(c)
    sites = [s for s in weights if s in by_site and weights[s] > 0]
    if not sites:
        return reachable
    point = rng.uniform(0, sum(weights[s] for s in sites))
    first = sites[-1]
    for s in sites:
        if point < weights[s]:
            first = s
            break
        point -= weights[s]
    return by_site[first] + [c for c in reachable if c.site != first]


def _rendezvous(value: str, router_id: str) -> tuple[int, str]:
    """Highest random weight first (sorted ascending, so negate)."""
    digest = hashlib.blake2b(f"{value}\0{router_id}".encode(), digest_size=8).digest()
    return (-int.from_bytes(digest, "big"), router_id)
