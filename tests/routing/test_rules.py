"""Per-request site choice (router/routing/rules.py), pure: rules in order, splits,
affinity by rendezvous hashing, and the strategy when nothing matches."""

from __future__ import annotations

import random
from collections import Counter

from router.routing.core import Candidate
from router.routing.rules import RequestFacts, RouteRule, order_for_request


def cand(site: str, cost: int = 1, weight: int = 1, priority: int = 0) -> Candidate:
    return Candidate(router_id=f"r-{site}", site=site, cost=cost, priority=priority,
                     weight=weight, next_hop="hop")


# Unequal costs, so without a rule the balanced strategy picks west: a rule's site shows.
WEST, NORTH, SOUTH = cand("west", cost=1), cand("north", cost=5), cand("south", cost=9)
ALL = [WEST, NORTH, SOUTH]


def req(path: str = "/", method: str = "GET", **headers: str) -> RequestFacts:
    return RequestFacts(method=method, path=path,
                        headers={k.replace("_", "-"): v for k, v in headers.items()})


def first(rules: list[RouteRule], request: RequestFacts, candidates: list[Candidate] = ALL,
          **kw: object) -> str | None:
    order = order_for_request(rules, request, candidates, strategy="balanced", outstanding={},
                              rng=random.Random(1), **kw)  # type: ignore[arg-type]
    return order[0].site if order else None


def test_first_match_wins() -> None:
    rules = [RouteRule(path_prefix="/v2/", site="north"), RouteRule(path_prefix="/", site="south")]
    assert first(rules, req("/v2/orders")) == "north"
    assert first(rules, req("/v1/orders")) == "south"
    assert first(list(reversed(rules)), req("/v2/orders")) == "south"


def test_path_prefix() -> None:
    rules = [RouteRule(path_prefix="/api/", site="north")]
    assert first(rules, req("/api/x")) == "north"
    assert first(rules, req("/api")) == "west"
    assert first(rules, req("/apix")) == "west"


def test_header_value_present_and_absent() -> None:
    value = [RouteRule(header="x-canary", header_value="1", site="north")]
    assert first(value, req(x_canary="1")) == "north"
    assert first(value, req(x_canary="2")) == "west"
    present = [RouteRule(header="x-canary", site="north")]
    assert first(present, req(x_canary="anything")) == "north"
    assert first(present, req()) == "west"
    absent = [RouteRule(header="x-canary", header_absent=True, site="south")]
    assert first(absent, req()) == "south"
    assert first(absent, req(x_canary="1")) == "west"


def test_method_and_every_part_must_hold() -> None:
    rules = [RouteRule(method="POST", path_prefix="/w", site="north")]
    assert first(rules, req("/w", "POST")) == "north"
    assert first(rules, req("/w", "GET")) == "west"
    assert first(rules, req("/r", "POST")) == "west"


def test_a_site_rule_to_an_unreachable_site_gives_an_empty_order() -> None:
    rules = [RouteRule(header="x-canary", site="east")]  # east serves nothing now
    order = order_for_request(rules, req(x_canary="1"), ALL, strategy="balanced",
                              outstanding={}, rng=random.Random(0))
    assert order == []


def test_a_90_10_split_within_a_few_percent_over_10000_draws() -> None:
    rules = [RouteRule(split=(("west", 90), ("north", 10)))]
    rng = random.Random(42)
    counts: Counter[str] = Counter()
    for _ in range(10_000):
        order = order_for_request(rules, req(), ALL, strategy="balanced", outstanding={},
                                  rng=rng)
        counts[order[0].site] += 1
        # The other site of the split follows as the fallback; south is not in it.
        assert {c.site for c in order} == {"west", "north"}
    assert abs(counts["west"] / 10_000 - 0.90) < 0.02, counts
    assert abs(counts["north"] / 10_000 - 0.10) < 0.02, counts


def test_a_split_whose_site_is_gone_sends_everything_to_the_rest() -> None:
    rules = [RouteRule(split=(("west", 90), ("north", 10)))]
    for seed in range(50):
        order = order_for_request(rules, req(), [NORTH, SOUTH], strategy="balanced",
                                  outstanding={}, rng=random.Random(seed))
        assert [c.site for c in order] == ["north"]


def test_affinity_is_stable_per_value_and_moves_only_the_removed_sites_values() -> None:
    users = [f"user-{i}" for i in range(3000)]  # costs play no part in affinity

    def placement(cands: list[Candidate]) -> dict[str, str | None]:
        return {u: first([], req(), cands, affinity=u) for u in users}

    before = placement(ALL)
    assert before == placement(ALL)  # the same value, the same site, every time
    share = Counter(before.values())
    assert all(800 < share[s] < 1200 for s in ("west", "north", "south")), share
    after = placement([WEST, SOUTH])  # north goes
    moved = {u for u in users if before[u] != after[u]}
    assert moved == {u for u in users if before[u] == "north"}
    assert placement(ALL) == before  # and its users come back when it does


def test_no_rule_matches_falls_back_to_the_strategy() -> None:
    rules = [RouteRule(header="x-canary", site="north")]
    near, far = cand("west", cost=1), cand("north", cost=50)
    # balanced: the nearer site first; priority: the lower priority number first.
    assert first(rules, req(), [far, near]) == "west"
    a, b = cand("west", priority=5), cand("north", priority=1)
    order = order_for_request(rules, req(), [a, b], strategy="priority", outstanding={},
                              rng=random.Random(0))
    assert order[0].site == "north"
    # balanced counts outstanding flows: the busy site goes last.
    order = order_for_request([], req(), [WEST, NORTH], strategy="balanced",
                              outstanding={"r-west": 10}, rng=random.Random(0))
    assert [c.site for c in order] == ["north", "west"]
