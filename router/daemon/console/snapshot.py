"""What the console shows, as one JSON document: the network (sites and links), the
services, this router's flows, its links.

Built from what status already reads (site_status, network_status with the traffic
summaries), the link table's counters and the flow table's records, at most once per
interval however many consoles watch (see api.py). Every list is capped, so a large
network or a flood of flows makes a larger "omitted" count, not a larger document.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from typing import Any

from router.daemon.console.rates import LinkId, Rates, RoleId, Sample, sample
from router.daemon.status import network_status, site_status
from router.daemon.view import RouterView
from router.flows.counters import KeyTotals
from router.flows.netrecords import site_names
from router.flows.records import record_dict

SNAPSHOT_VERSION = 1
MAX_SITES = 200
MAX_EDGES = 1000
MAX_SERVICES = 300
MAX_PER_SERVICE = 50  # listener sites, connector sites and traffic rows of each
MAX_FLOWS = 100  # active ones shown, and as many recent records


class Snapshots:
    """Builds snapshots of one router, keeping the samples its rates come from."""

    def __init__(self, view: RouterView) -> None:
        self._view = view
        self._rates = Rates()

    def build(self, now: float) -> dict[str, Any]:
        """The snapshot at `now` (the trio clock: only differences are used)."""
        view = self._view
        site = view.config.name
        local = site_status(view)
        net = network_status(view)
        totals = view.flows.stats.totals(view.flows.entries())
        keys = _service_keys(net["keys"], totals)
        wanted = {k for k in totals if k[0] in keys}
        cur = sample(now, ((( s.link, s.peer_site), s.bytes_in, s.bytes_out)
                           for s in view.links.samples()),
                     {k: totals[k] for k in wanted}, view.flows.stats.http)
        base = self._rates.take(cur)
        links = _local_links(local["links"], cur, base)
        sites, omitted_sites = _sites(net["sites"], site, links)
        edges, omitted_edges = _edges(net, site, links)
        return {
            "version": SNAPSHOT_VERSION,
            "site": site,
            "router_id": view.router_id,
            "time": time.time(),
            "uptime_s": local["uptime_s"],
            "rate_window_s": None if base is None else round(cur.at - base.at, 3),
            "sites": sites,
            "edges": edges,
            "local_links": links,
            "services": _services(keys, net["keys"], totals, cur, base),
            "flows": _flows(view),
            "omitted": {"sites": omitted_sites, "edges": omitted_edges,
                        "services": max(0, len(set(net["keys"]) | {k for k, _ in totals})
                                        - len(keys))},
        }


# ---- links and topology
def _local_links(links: list[dict[str, Any]], cur: Sample, base: Sample | None
                 ) -> list[dict[str, Any]]:
    """This router's links as status shows them, with bytes/s each way."""
    out = []
    for link in links:
        lid: LinkId = (link["name"], link["peer_site"])
        moved = cur.links.get(lid, (0, 0))
        out.append({**link, "bytes_in": moved[0], "bytes_out": moved[1],
                    **Rates.link(cur, base, lid)})
    return out


def _sites(records: list[dict[str, Any]], here: str, links: list[dict[str, Any]]
           ) -> tuple[list[dict[str, Any]], int]:
    """Every site in the routing records, and the peers of our links not (yet) in them."""
    sites = {rec["site"]: {"site": rec["site"], "router_id": rec["router_id"],
                           "reachable": rec["reachable"], "cost": rec["cost"],
                           "local": rec["site"] == here} for rec in records}
    for link in links:
        sites.setdefault(link["peer_site"], {"site": link["peer_site"], "router_id": None,
                                             "reachable": False, "cost": None,
                                             "local": False})
    # This site first, then by name: the first MAX_SITES of them.
    ordered = sorted(sites.values(), key=lambda s: (not s["local"], s["site"]))
    return ordered[:MAX_SITES], max(0, len(ordered) - MAX_SITES)


def _edges(net: Mapping[str, Any], here: str, links: list[dict[str, Any]]
           ) -> tuple[list[dict[str, Any]], int]:
    """Every link between two sites as `status --network` has it (state from the routing
    records, load from the traffic summaries), and this router's own links with the
    state, RTT and load it measures itself, which it knows first."""
    edges = {(x["a"], x["b"]): {
        "a": x["a"], "b": x["b"], "state": x["state"], "cost": x["cost"],
        "rtt_ms": x["rtt_ms"], "a_to_b_bytes_per_s": x["a_to_b_bytes_per_s"],
        "b_to_a_bytes_per_s": x["b_to_a_bytes_per_s"], "local": False, "detail": None}
        for x in net["links"]}
    for pair, group in itertools.groupby(
            sorted(links, key=lambda lk: _pair(here, lk["peer_site"])),
            key=lambda lk: _pair(here, lk["peer_site"])):
        mine = list(group)
        up = [lk for lk in mine if lk["state"] == "up"]
        edge = edges.setdefault(pair, {"a": pair[0], "b": pair[1], "cost": mine[0]["cost"],
                                       "a_to_b_bytes_per_s": None,
                                       "b_to_a_bytes_per_s": None})
        rtts = [lk["rtt_ms"] for lk in up if lk["rtt_ms"] is not None]
        ins = [lk["in_bytes_per_s"] for lk in up if lk["in_bytes_per_s"] is not None]
        outs = [lk["out_bytes_per_s"] for lk in up if lk["out_bytes_per_s"] is not None]
        forward = pair[0] == here  # a -> b is our way out
        edge.update(state="up" if up else "down", local=True,
                    rtt_ms=min(rtts) if rtts else None,
                    detail=None if up else ", ".join(
                        f"{lk['state']}{': ' + lk['error'] if lk.get('error') else ''}"
                        for lk in mine))
        if ins or outs:
            edge["a_to_b_bytes_per_s" if forward else "b_to_a_bytes_per_s"] = sum(outs)
            edge["b_to_a_bytes_per_s" if forward else "a_to_b_bytes_per_s"] = sum(ins)
    ordered = sorted(edges.values(), key=lambda e: (not e["local"], e["a"], e["b"]))
    return ordered[:MAX_EDGES], max(0, len(ordered) - MAX_EDGES)


def _pair(x: str, y: str) -> tuple[str, str]:
    return (x, y) if x <= y else (y, x)


# ---- services
def _service_keys(net_keys: Mapping[str, Any], totals: Mapping[RoleId, KeyTotals]
                  ) -> list[str]:
    """The keys shown: those the network knows and those this router counted, by name."""
    return sorted(set(net_keys) | {key for key, _ in totals})[:MAX_SERVICES]


def _services(keys: Iterable[str], net_keys: Mapping[str, Any],
              totals: Mapping[RoleId, KeyTotals], cur: Sample, base: Sample | None
              ) -> list[dict[str, Any]]:
    out = []
    for key in keys:
        known = net_keys.get(key, {})
        here = []
        for role in ("listener", "connector"):
            t = totals.get((key, role))
            if t is None:
                continue
            here.append({"role": role, "opened": t.opened, "active": t.active,
                         "closed": t.closed, **Rates.key(cur, base, (key, role))})
        listeners = sorted(known.get("listeners", []))
        connectors = [{"site": s["site"], "reachable": s["reachable"]}
                      for s in known.get("servers", [])]
        traffic = known.get("traffic", [])
        out.append({"key": key, "listeners": listeners[:MAX_PER_SERVICE],
                    "connectors": connectors[:MAX_PER_SERVICE],
                    "path": known.get("path"), "here": here,
                    "traffic": traffic[:MAX_PER_SERVICE],
                    "omitted": sum(max(0, len(x) - MAX_PER_SERVICE)
                                   for x in (listeners, connectors, traffic))})
    return out


# ---- flows
def _flows(view: RouterView) -> dict[str, Any]:
    """This router's newest active flows and records, as `sitectl flows --json` has them."""
    table = view.flows
    names = site_names(view.routing)
    return {"active": [record_dict(e, names)
                       for e in table.listed(active=True, limit=MAX_FLOWS)],
            "recent": [record_dict(e, names) for e in table.records.recent(MAX_FLOWS)],
            "active_total": table.active, "recent_total": len(table.records),
            "dropped": table.records.dropped}
