"""Many routing cores in one process: convergence, failures, ageing, gossip volume."""

from __future__ import annotations

import heapq
import itertools
import random

import pytest

from router.routing import KeyAdvert, RoutingCore
from router.routing.sim import SimNetwork

REFRESH = 30.0
MAX_AGE = 100.0


def reference_dijkstra(graph: dict[str, dict[str, int]], source: str) -> dict[str, int]:
    """Plain Dijkstra on the true graph, written independently of router.routing.spf."""
    dist = {source: 0}
    heap = [(0, source)]
    while heap:
        d, u = heapq.heappop(heap)
        if d > dist[u]:
            continue
        for v, c in graph.get(u, {}).items():
            if d + c < dist.get(v, 1 << 60):
                dist[v] = d + c
                heapq.heappush(heap, (d + c, v))
    return dist


def random_network(seed: int, n: int, extra_edges: int) -> tuple[SimNetwork, list[str]]:
    """A random connected graph: a random spanning tree plus `extra_edges` random chords."""
    rng = random.Random(seed)
    net = SimNetwork(refresh_interval=REFRESH, max_age=MAX_AGE)
    ids = [net.add_router(f"s{seed}-r{i}") for i in range(n)]
    for i in range(1, n):
        net.connect(ids[i], ids[rng.randrange(i)], rng.randint(1, 5))
    added = 0
    while added < extra_edges:
        a, b = rng.sample(ids, 2)
        if b not in net.links[a]:
            net.connect(a, b, rng.randint(1, 5), rng.randint(1, 5))
            added += 1
    for i, rid in enumerate(ids):
        keys = {f"svc-{i}": KeyAdvert(), "shared": KeyAdvert(weight=i % 3)}
        net.cores[rid].set_keys(keys, net.now)
    net.run()
    return net, ids


def assert_converged(net: SimNetwork) -> None:
    graph = net.true_graph()
    ref = {src: reference_dijkstra(graph, src) for src in graph}
    everyone = list(net.cores)
    for src in graph:
        core = net.cores[src]
        for dest in everyone:
            expected = ref[src].get(dest)
            assert core.cost_to(dest) == expected, (src, dest)
            path = core.path(dest)
            if expected is None:
                assert path == [] and core.next_hop(dest) is None
                continue
            assert path[0] == src and path[-1] == dest
            assert sum(graph[a][b] for a, b in itertools.pairwise(path)) == expected
            if dest == src:
                assert core.next_hop(dest) is None
                continue
            hop = core.next_hop(dest)
            assert hop == path[1]
            assert hop in graph[src] and graph[src][hop] + ref[hop][dest] == expected
            # Follow every router's own next hop: no loops, and we arrive.
            seen = {src}
            at = src
            while at != dest:
                nxt = net.cores[at].next_hop(dest)
                assert nxt is not None and nxt not in seen, (src, dest, at)
                seen.add(nxt)
                at = nxt


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_topologies_converge(seed: int) -> None:
    net, ids = random_network(seed, 100, 60)
    assert_converged(net)
    # Every router sees every other router's keys, with path costs.
    for rid in ids[::17]:
        shared = net.cores[rid].candidates("shared")
        assert {c.router_id for c in shared} == set(ids)
        assert [(c.cost, c.router_id) for c in shared] == sorted(
            (c.cost, c.router_id) for c in shared
        )
        me = next(c for c in shared if c.router_id == rid)
        assert me.cost == 0 and me.next_hop is None


def test_cut_links_and_cost_change_reconverge() -> None:
    net, ids = random_network(7, 100, 60)
    rng = random.Random(7)
    for _ in range(4):
        a = rng.choice(ids)
        b = rng.choice(sorted(net.links[a]))
        net.disconnect(a, b)
        net.run()
        assert_converged(net)
    a = ids[10]
    b = sorted(net.links[a])[0]
    net.set_cost(a, b, 50)
    net.run()
    assert_converged(net)


def test_killed_router_vanishes_from_routes_and_candidates() -> None:
    net, ids = random_network(11, 100, 60)
    victim_index = 42
    victim = ids[victim_index]
    net.kill(victim)
    net.run()
    assert_converged(net)
    for core in net.live_cores():
        assert core.candidates(f"svc-{victim_index}") == []
        assert victim not in {c.router_id for c in core.candidates("shared")}
        assert core.path(victim) == []
    # Its stale record lingers until it ages out, then is gone everywhere.
    net.advance(MAX_AGE + 1)
    for core in net.live_cores():
        assert core.record(victim) is None
    assert_converged(net)


def test_partition_and_heal() -> None:
    net, ids = random_network(5, 100, 60)
    left = set(ids[:50])
    cut = [(a, b) for a in left for b in net.links[a] if b not in left]
    for a, b in cut:
        net.disconnect(a, b)
    net.run()
    assert_converged(net)
    net.advance(MAX_AGE + 1)  # the other side's records age out
    for rid in ids:
        known = {r.router_id for r in net.cores[rid].records()}
        reachable = set(net.cores[rid].reachable())
        assert known == reachable
    for a, b in cut:
        net.connect(a, b, 2)
    net.run()
    assert_converged(net)
    for rid in ids:
        assert len(net.cores[rid].records()) == 100


def test_gossip_is_proportional_to_change() -> None:
    net, ids = random_network(3, 100, 60)
    for core in net.live_cores():
        core.reachable()  # settle the lazy SPF
    before = {rid: (net.cores[rid].messages_sent, net.cores[rid].records_sent) for rid in ids}
    spf_before = {rid: net.cores[rid].spf_runs for rid in ids}
    changer = ids[30]
    net.cores[changer].set_keys({"brand-new": KeyAdvert(priority=1)}, net.now)
    net.run()
    for rid in ids:
        degree = len(net.links[rid])
        messages = net.cores[rid].messages_sent - before[rid][0]
        records = net.cores[rid].records_sent - before[rid][1]
        assert messages <= degree and records <= degree, (rid, degree, messages, records)
        found = net.cores[rid].candidates("brand-new")
        assert [c.router_id for c in found] == [changer]
        assert found[0].priority == 1
        # The old keys are withdrawn by the newer record.
        assert net.cores[rid].candidates("svc-30") == []
        # A key change moves no link: no shortest-path recomputation.
        assert net.cores[rid].spf_runs == spf_before[rid]


def test_flood_costs_one_spf_computation() -> None:
    net, ids = random_network(9, 60, 30)
    for core in net.live_cores():
        core.reachable()
    runs = {rid: net.cores[rid].spf_runs for rid in ids}
    for a, b in [(ids[1], ids[40]), (ids[2], ids[50]), (ids[3], ids[45])]:
        if b not in net.links[a]:
            net.connect(a, b, 1)
    net.run()
    for rid in ids:
        net.cores[rid].reachable()
        net.cores[rid].candidates("shared")
        assert net.cores[rid].spf_runs == runs[rid] + 1


def test_refresh_keeps_records_alive() -> None:
    net, ids = random_network(4, 20, 10)
    seqs = {rid: net.cores[rid].seq for rid in ids}
    net.advance(5 * MAX_AGE)
    for rid in ids:
        assert net.cores[rid].seq >= seqs[rid] + int(5 * MAX_AGE / REFRESH) - 1
        assert len(net.cores[rid].records()) == 20
    assert_converged(net)


def test_silent_router_ages_out_and_restarts() -> None:
    net, ids = random_network(8, 20, 10)
    silent = ids[6]
    neighbours = dict(net.links[silent])
    net.freeze(silent)  # nobody notices the links are dead: only ageing can help
    net.advance(MAX_AGE - 5)
    assert all(core.record(silent) is not None for core in net.live_cores())
    net.advance(10 + REFRESH)
    for core in net.live_cores():
        assert core.record(silent) is None
        assert core.path(silent) == []
        assert core.candidates("svc-6") == []
    assert_converged(net)
    # Restart with seq reset; the links are re-established.
    restarted = net.add_router("s8-r6")
    assert restarted == silent
    for peer, cost in neighbours.items():
        net.disconnect(silent, peer)
        net.connect(silent, peer, cost)
    net.run()
    assert_converged(net)


def test_restart_with_seq_reset_jumps_ahead() -> None:
    net, ids = random_network(12, 30, 15)
    victim = ids[3]
    for i in range(20):
        net.cores[victim].set_keys({f"k{i}": KeyAdvert()}, net.now)
    net.run()
    old_seq = net.cores[victim].seq
    neighbours = dict(net.links[victim])
    net.kill(victim)
    net.run()
    restarted = net.add_router("s12-r3")
    assert net.cores[restarted].seq == 1
    net.cores[restarted].set_keys({"fresh": KeyAdvert()}, net.now)
    for peer, cost in neighbours.items():
        net.connect(victim, peer, cost)
    net.run()
    new_seq = net.cores[victim].seq
    assert new_seq > old_seq
    for core in net.live_cores():
        record = core.record(victim)
        assert record is not None and record.seq == new_seq
        assert [c.router_id for c in core.candidates("fresh")] == [victim]
        assert core.candidates("k19") == []
    assert_converged(net)


def test_equal_cost_tie_break_is_lowest_router_id() -> None:
    net = SimNetwork()
    a, b, c, d = (net.add_router(x) for x in "abcd")
    net.connect(a, b)
    net.connect(a, c)
    net.connect(b, d)
    net.connect(c, d)
    net.run()
    assert net.cores[a].cost_to(d) == 2
    assert net.cores[a].next_hop(d) == min(b, c)
    assert net.cores[a].path(d) == [a, min(b, c), d]


def test_stale_copy_keeps_its_age() -> None:
    """A record learned late from a neighbour expires when its origin's copy would."""
    net = SimNetwork(refresh_interval=REFRESH, max_age=MAX_AGE)
    a, b, c = (net.add_router(x) for x in "abc")
    net.connect(a, b)
    net.run()
    net.freeze(a)
    net.advance(60)
    net.connect(b, c)  # c learns a's record, 60 s old, from b
    net.run()
    core_c: RoutingCore = net.cores[c]
    assert core_c.record(a) is not None
    net.advance(MAX_AGE - 60 + 1)
    assert core_c.record(a) is None
    assert net.cores[b].record(a) is None


def test_flows_never_loop_while_routes_change() -> None:
    """Deliver gossip one round at a time after cuts and, at every step, forward an OPEN
    from routers to destinations with the data-plane rule: tables may hold a short
    microloop mid-flood (as in OSPF), but a flow never visits a router twice, and once
    the network is quiet every OPEN arrives."""
    from router.routing.forward import ForwardRefused, next_hop_for_open

    net, ids = random_network(11, 40, 25)
    rng = random.Random(11)
    refused_mid_flood = 0  # OPENs refused because they came back to a router

    def forward_all(final: bool) -> int:
        refused = 0
        graph = net.true_graph()
        for src in ids[::3]:
            reachable = reference_dijkstra(graph, src)
            for dst in ids[::4]:
                trace: list[str] = []
                at = src
                while at != dst:
                    try:
                        nxt = next_hop_for_open(net.cores[at], dst, trace, at)
                    except ForwardRefused as exc:
                        refused += "routing loop" in str(exc)
                        if final:  # once quiet, only a real partition refuses
                            assert dst not in reachable and "no route" in str(exc), exc
                        break
                    trace.append(at)
                    assert len(trace) == len(set(trace))  # never a router twice
                    at = nxt
        return refused

    for _ in range(6):
        a = rng.choice(ids)
        b = rng.choice(sorted(net.links[a]))
        net.disconnect(a, b)
        while True:
            batch = [(s, d, p) for s in sorted(net.alive) for d, p in net.cores[s].outgoing()]
            if not batch:
                break
            refused_mid_flood += forward_all(final=False)
            for s, d, p in batch:
                if d in net.alive and s in net.links[d] and d in net.links[s]:
                    net.cores[d].receive(s, p, net.now)
        forward_all(final=True)
        net.connect(a, b, 1)
        net.run()
    assert_converged(net)
    # Microloops did happen mid-flood, and the trace rule caught every one of them.
    assert refused_mid_flood > 0
