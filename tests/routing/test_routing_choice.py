"""Connector choice strategies over candidates."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.routing import Candidate, choose


def cand(rid: str, cost: int = 1, priority: int = 0, weight: int = 1) -> Candidate:
    return Candidate(
        router_id=rid, site=f"site-{rid}", cost=cost, priority=priority, weight=weight,
        next_hop=None if cost == 0 else "rhop",
    )


def test_balanced_spreads_flows_over_equal_cost_candidates() -> None:
    candidates = [cand("ra"), cand("rb"), cand("rc")]
    outstanding: Counter[str] = Counter()
    rng = random.Random(1)
    for _ in range(30):
        first = choose(candidates, "balanced", outstanding, rng)[0]
        outstanding[first.router_id] += 1
    assert outstanding == {"ra": 10, "rb": 10, "rc": 10}


def test_balanced_prefers_near_until_it_is_busy() -> None:
    near, far = cand("rnear", cost=0), cand("rfar", cost=20)
    rng = random.Random(1)
    assert [c.router_id for c in choose([far, near], "balanced", {}, rng)] == ["rnear", "rfar"]
    # (2+1)*1 == (0+1)*3: a tie, broken by cost; one more flow tips it over.
    assert choose([far, near], "balanced", {"rnear": 2}, rng)[0] == near
    assert choose([far, near], "balanced", {"rnear": 3}, rng)[0] == far


def test_priority_prefers_lower_number_and_falls_back() -> None:
    primary = cand("rprimary", cost=9, priority=0)
    backup1 = cand("rbackup1", cost=1, priority=5)
    backup2 = cand("rbackup2", cost=1, priority=5)
    rng = random.Random(1)
    order = choose([backup1, backup2, primary], "priority", {"rprimary": 100}, rng)
    assert order[0] == primary
    assert set(order[1:]) == {backup1, backup2}
    # Among equal priority: balanced.
    order = choose([backup1, backup2], "priority", {"rbackup1": 1}, rng)
    assert order == [backup2, backup1]


def test_weighted_split_follows_weights() -> None:
    candidates = [cand("ra", weight=1), cand("rb", weight=3), cand("rc", weight=0)]
    rng = random.Random(42)
    firsts = Counter(choose(candidates, "weighted", {}, rng)[0].router_id for _ in range(4000))
    assert firsts["rc"] == 0
    assert 0.70 < firsts["rb"] / 4000 < 0.80
    order = choose(candidates, "weighted", {}, random.Random(0))
    assert order[-1].router_id == "rc"  # fallbacks by weight descending
    assert len(order) == 3


def test_weighted_all_zero_falls_back_to_balanced() -> None:
    candidates = [cand("rb", weight=0), cand("ra", weight=0)]
    order = choose(candidates, "weighted", {}, random.Random(0))
    assert [c.router_id for c in order] == ["ra", "rb"]


def test_empty_and_unknown() -> None:
    assert choose([], "weighted", {}, random.Random(0)) == []
    with pytest.raises(ValueError, match="unknown"):
        choose([cand("ra")], "fastest", {}, random.Random(0))
