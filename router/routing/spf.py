"""Shortest paths over the link-state database (Dijkstra, as OSPF's SPF)."""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class ShortestPaths:
    source: str
    dist: dict[str, int]
    pred: dict[str, str]
    next_hop: dict[str, str]

    def path(self, dest: str) -> list[str]:
        """Router ids from the source to `dest` inclusive; [] if unreachable."""
        if dest not in self.dist:
            return []
        hops = [dest]
        while hops[-1] != self.source:
            hops.append(self.pred[hops[-1]])
        hops.reverse()
        return hops


def shortest_paths(source: str, links_of: Mapping[str, Mapping[str, int]]) -> ShortestPaths:
    """Dijkstra from `source`; `links_of[r]` is what router r advertises (neighbour -> cost).

    An edge u->v (cost as u advertises it) is used only if v also lists u: a router that died,
    or a link one side withdrew, carries no traffic even while a stale record survives.

    Tie-break: among equal-cost predecessors of a node, the lowest router id wins. Nodes are
    settled in (distance, id) order and every equal-cost predecessor is settled before the node
    (costs are >= 1), so the result does not depend on dict or message order.
    """
    dist: dict[str, int] = {source: 0}
    pred: dict[str, str] = {}
    next_hop: dict[str, str] = {}
    settled: set[str] = set()
    heap: list[tuple[int, str]] = [(0, source)]
    while heap:
        d, u = heapq.heappop(heap)
        if u in settled:
            continue
        settled.add(u)
        if u != source:
            p = pred[u]
            next_hop[u] = u if p == source else next_hop[p]
        for v, cost in links_of.get(u, {}).items():
            if v in settled:
                continue
            back = links_of.get(v)
            if back is None or u not in back:
                continue
            nd = d + cost
            old = dist.get(v)
            if old is None or nd < old:
                dist[v] = nd
                pred[v] = u
                heapq.heappush(heap, (nd, v))
            elif nd == old and u < pred[v]:
                pred[v] = u
    return ShortestPaths(source=source, dist=dist, pred=pred, next_hop=next_hop)
