"""The network's links and load as `sitectl status --network` shows them, from the router
records (who links to whom, at what cost) and the traffic summaries (how loaded).

A link appears in the records of both its ends (one only: it went down, and paths no
longer use it); its load comes from the summary of one
end (the end named first, else the other): that end's bytes out are the bytes towards
the other end. Only summaries of reachable routers that have not expired are used.
"""

from __future__ import annotations

from typing import Any

from router.routing import RoutingCore
from router.routing.summaries import HeldSummary, SummaryTable
from router.routing.summary import LinkLoad


def live_summaries(routing: RoutingCore, summaries: SummaryTable,
                   now: float) -> dict[str, HeldSummary]:
    reachable = routing.reachable()
    return {held.summary.router_id: held for held in summaries.held()
            if held.expires_at > now and held.summary.router_id in reachable}


def summary_info(held: HeldSummary | None, now: float) -> dict[str, Any] | None:
    if held is None:
        return None
    return {"age_s": round(held.age(now), 1), "interval_s": held.summary.interval_s,
            "keys_omitted": held.summary.keys_omitted}


def _load(a: str, b: str, live: dict[str, HeldSummary], names: dict[str, str],
          now: float) -> dict[str, Any]:
    """The a-b link's load, from a's summary if it has one, else from b's."""
    for reporter, other, forward in ((a, b, True), (b, a, False)):
        held = live.get(reporter)
        load: LinkLoad | None = None if held is None else held.summary.link_to(other)
        if held is None or load is None:
            continue
        out, back = load.out_bytes_per_s, load.in_bytes_per_s
        return {
            "rtt_ms": None if load.rtt_s is None else round(load.rtt_s * 1000, 3),
            "a_to_b_bytes_per_s": out if forward else back,
            "b_to_a_bytes_per_s": back if forward else out,
            "reported_by": names.get(reporter, reporter),
            "report_age_s": round(held.age(now), 1),
        }
    return {"rtt_ms": None, "a_to_b_bytes_per_s": None, "b_to_a_bytes_per_s": None,
            "reported_by": None, "report_age_s": None}


def network_links(routing: RoutingCore, live: dict[str, HeldSummary],
                  now: float) -> list[dict[str, Any]]:
    """Every link any record lists: its ends, state, cost and load."""
    names = {rec.router_id: rec.site for rec in routing.records()}
    reachable = routing.reachable()
    costs: dict[tuple[str, str], dict[str, int]] = {}
    for rec in routing.records():
        for peer, cost in rec.links:
            pair = (rec.router_id, peer) if rec.router_id < peer else (peer, rec.router_id)
            costs.setdefault(pair, {})[rec.router_id] = cost
    out: list[dict[str, Any]] = []
    for (x, y), listed in costs.items():
        # Side a is the one whose site sorts first, so a link reads the same everywhere.
        a, b = (x, y) if (names.get(x, x), x) <= (names.get(y, y), y) else (y, x)
        if a not in reachable and b not in reachable:
            state = "unreachable"  # beyond a partition: as its ends last said
        elif len(listed) == 2:
            state = "up"
        else:
            state = "down"  # one end withdrew it (or it is just coming up): no path uses it
        out.append({"a": names.get(a, a), "b": names.get(b, b), "a_router": a, "b_router": b,
                    "state": state, "cost": listed.get(a, listed.get(b)),
                    **_load(a, b, live, names, now)})
    out.sort(key=lambda x: (x["a"], x["b"], x["a_router"], x["b_router"]))
    return out


def key_traffic(routing: RoutingCore, live: dict[str, HeldSummary],
                now: float) -> dict[str, list[dict[str, Any]]]:
    """Per routing key, what each site reports of it: flows/s, errors/s, active flows."""
    traffic: dict[str, list[dict[str, Any]]] = {}
    for rid, held in live.items():
        record = routing.record(rid)
        site = rid if record is None else record.site
        for load in held.summary.keys:
            traffic.setdefault(load.key, []).append({
                "site": site, "role": load.role, "flows_per_s": load.flows_per_s,
                "errors_per_s": load.errors_per_s, "active": load.active,
                "age_s": round(held.age(now), 1)})
    for rows in traffic.values():
        rows.sort(key=lambda x: (x["site"], x["role"]))
    return traffic
