"""Two sites serving one key, one listener per strategy: how flows are split.

A (listeners), B1 and B2 (connectors) each run in their own namespace; B1 and B2 each
expose their own NameServer (inside their namespace), which answers with its site name."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.netns import (
    NameServer,
    NetLab,
    NetnsSite,
    ask_name,
    in_ns,
    leftovers,
    open_named,
    require_netns,
)
from tests.support.sites import free_port, wait_for

pytestmark = pytest.mark.netns


@dataclass
class Split:
    lab: NetLab
    a: NetnsSite
    b1: NetnsSite
    b2: NetnsSite
    ports: dict[str, int]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    require_netns()
    lab = NetLab(tmp_path_factory.mktemp("nssplit"))
    try:
        ns_a, ns_b1, ns_b2 = lab.netns("a"), lab.netns("b1"), lab.netns("b2")
        b1_a = lab.veth(ns_b1, ns_a)
        b2_a = lab.veth(ns_b2, ns_a)
        a = lab.site("A", ns_a, b1_a[1].addr, start=False)
        b1 = lab.site("B1", ns_b1, b1_a[0].addr, start=False)
        b2 = lab.site("B2", ns_b2, b2_a[0].addr, start=False)
        lab.start(a, b1, b2)
        lab.link(b1, a)
        lab.link(b2, a)
        srv1 = lab.server(ns_b1, NameServer, "B1")
        srv2 = lab.server(ns_b2, NameServer, "B2")
        # priority: B2 preferred (lower number); weighted: B1 three times B2.
        for site, srv, prio, weight in ((b1, srv1, "5", "3"), (b2, srv2, "1", "1")):
            target = f"127.0.0.1:{srv.port}"
            site.sitectl("connector", "create", "prio", target, "--priority", prio)
            site.sitectl("connector", "create", "wtd", target, "--weight", weight)
            site.sitectl("connector", "create", "bal", target)
        ports = {}
        for key, strategy in (("prio", "priority"), ("wtd", "weighted"), ("bal", "balanced")):
            ports[key] = free_port()
            a.sitectl("listener", "create", key, str(ports[key]), "--strategy", strategy)

        def all_served() -> bool:
            keys = a.state()["keys"]
            return all(sorted(keys.get(k, {}).get("served_by", [])) == ["B1", "B2"]
                       for k in ports)

        wait_for(all_served, what="every key served by B1 and B2 as seen from A")
        yield Split(lab, a, b1, b2, ports)
    finally:
        lab.cleanup()
        assert not [ns for ns in leftovers() if ns.startswith(lab.tag)]


def _sequential(sp: Split, key: str, n: int) -> Counter[str]:
    port = sp.ports[key]
    return in_ns(sp.a.ns, lambda: Counter(ask_name(port) for _ in range(n)))


def test_priority_prefers_lower_number_then_fails_over(split: Split) -> None:
    assert _sequential(split, "prio", 60) == Counter({"B2": 60})
    split.b2.sitectl("connector", "delete", "prio")
    wait_for(lambda: split.a.state()["keys"]["prio"]["served_by"] == ["B1"],
             what="B2's prio connector withdrawn")
    assert _sequential(split, "prio", 60) == Counter({"B1": 60})


def test_weighted_splits_by_weight(split: Split) -> None:
    counts = _sequential(split, "wtd", 100)
    assert sum(counts.values()) == 100
    share = counts["B1"] / 100
    print(f"weighted 3:1 -> {dict(counts)}")
    assert 0.55 <= share <= 0.92, counts  # expected 0.75; ~4 sd either way


def test_balanced_spreads_concurrent_flows(split: Split) -> None:
    port = split.ports["bal"]

    def hold_many(n: int) -> Counter[str]:
        socks: list[socket.socket] = []
        try:
            names = []
            for _ in range(n):  # each stays open, so it counts as outstanding for the next
                sock, name = open_named(port)
                socks.append(sock)
                names.append(name)
            return Counter(names)
        finally:
            for sock in socks:
                sock.close()

    counts = in_ns(split.a.ns, hold_many, 20)
    print(f"balanced, 20 concurrent -> {dict(counts)}")
    assert counts["B1"] > 0 and counts["B2"] > 0, counts
    assert sum(counts.values()) == 20
    assert min(counts.values()) >= 5, counts  # fewest-outstanding should keep them close
