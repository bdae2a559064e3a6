"""What `sitectl status` shows, built from a running router's state."""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from typing import Any

import trio

from router.daemon import certstatus
from router.daemon.netview import key_traffic, live_summaries, network_links, summary_info
from router.daemon.view import RouterView
from router.endpoint import Endpoint
from router.site.listener_edit import listener_status
from router.site.proxyconf import setting_shown

# Descriptors a router holds besides its flows' sockets: stdio, epoll and trio's wake-up
# pair, the site lock, the control and metrics sockets and a few of their clients, the
# accept loops' spare (FdReserve), TLS and DNS at a link dial; plus one per link and one
# per listener, counted apart.
FD_RESERVE = 48


def flow_capacity(links: int, listeners: int) -> dict[str, int | None]:
    """How many flows at once this process's open-files limit allows: a flow holds one
    descriptor on this router (the client's socket on the listener's site, the
    target's on the connector's; none in transit). None where the limit is unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return {"fd_limit": None, "flows_allowed": None}
    return {"fd_limit": soft, "flows_allowed": max(0, soft - FD_RESERVE - links - listeners)}


def _ago(epoch: float) -> float:
    return round(time.time() - epoch, 1)


def site_status(r: RouterView) -> dict[str, Any]:
    cfg = r.config
    links: list[dict[str, Any]] = []
    for name, dial in sorted(r.links.dials.items()):
        link = dial.link
        links.append({
            "name": name, "peer_site": dial.spec.peer_site, "direction": "out",
            "state": "up" if link else dial.state, "since": dial.since,
            "cost": dial.spec.cost, "error": dial.last_error,
            "endpoints": [str(Endpoint(h, p)) for h, p in dial.spec.endpoints],
            "flows": len(link.flows) if link else 0,
            "rtt_ms": round(link.rtt * 1000, 3) if link and link.rtt is not None else None,
            "proxy": setting_shown(dial.spec.proxy),
        } | certstatus.dialled(r, name, dial))
    for link in r.links.accepted:
        links.append({
            "name": link.name, "peer_site": link.peer_site, "direction": "in", "state": "up",
            "since": time.time() - (trio.current_time() - link.since), "cost": link.cost,
            "error": None, "flows": len(link.flows),
            "rtt_ms": round(link.rtt * 1000, 3) if link.rtt is not None else None,
        } | certstatus.accepted(r, link))
    keys: dict[str, dict[str, Any]] = {}
    wanted = {lst.key for lst in cfg.listeners} | {con.key for con in cfg.connectors}
    for key in sorted(wanted):
        cands = r.routing.candidates(key)
        keys[key] = {
            "reachable": bool(cands),
            "served_by": [c.site for c in cands],
        }
    return {
        "site": cfg.name,
        "router_id": r.router_id,
        "link_endpoint": ", ".join(str(Endpoint(h, p)) for h, p in r.endpoints()),
        "admin_url": r.admin_url,  # None: no admin port (admin_error says why, if any)
        "admin_error": r.admin_error,
        "pid": os.getpid(),
        "uptime_s": _ago(r.started),
        "links": links,
        "listeners": [listener_status(lst) | {
            "reachable": keys[lst.key]["reachable"],
            "error": r.listeners.errors.get((lst.host, lst.port)),
        } for lst in cfg.listeners],
        "connectors": [dataclasses.asdict(con) for con in cfg.connectors],
        "keys": keys,
        "flows": r.flows.counters(),
        **flow_capacity(len(links), len(cfg.listeners)),
        "traffic": traffic(r),
        "server_cert": certstatus.server(r),
        "revoked": certstatus.revoked(r),
    }


def traffic(r: RouterView) -> dict[str, dict[str, Any]]:
    """Per routing key: flows ended by role, and for HTTP keys the requests with
    their error share (5xx, errors we generated, no response, over all)."""
    stats = r.flows.stats
    out: dict[str, dict[str, Any]] = {}
    for key, roles in sorted(stats.flows_by_key().items()):
        out[key] = {"flows": roles}
    for key, st in sorted(stats.http.items()):
        out.setdefault(key, {"flows": {}})["http"] = st.as_dict()
    return out


def network_status(r: RouterView) -> dict[str, Any]:
    """Every site known, its links, and every routing key with its servers and path; every
    link with its state and load, and per key the traffic each site reports."""
    routing = r.routing
    now = trio.current_time()
    live = live_summaries(routing, r.summaries, now)
    names = {r.router_id: r.site for r in routing.records()}
    sites = []
    keys: dict[str, dict[str, Any]] = {}
    for rec in sorted(routing.records(), key=lambda r: r.site):
        cost = routing.cost_to(rec.router_id)
        sites.append({
            "site": rec.site, "router_id": rec.router_id, "reachable": cost is not None,
            "cost": cost,
            "links": [{"peer": names.get(peer, peer), "cost": c} for peer, c in rec.links],
            "summary": summary_info(live.get(rec.router_id), now),
        })
        for key in rec.listens:
            entry = keys.setdefault(key, {"servers": [], "listeners": [], "path": None})
            entry["listeners"].append(rec.site)
        for key, priority, weight in rec.keys:
            entry = keys.setdefault(key, {"servers": [], "listeners": [], "path": None})
            entry["servers"].append({"site": rec.site, "priority": priority, "weight": weight,
                                     "reachable": cost is not None})
    for key, rows in key_traffic(routing, live, now).items():
        keys.setdefault(key, {"servers": [], "listeners": [], "path": None})["traffic"] = rows
    for key, entry in keys.items():
        entry.setdefault("traffic", [])
        cands = routing.candidates(key)
        if cands:
            entry["path"] = [names.get(r, r) for r in routing.path(cands[0].router_id)]
    return {"sites": sites, "keys": keys, "links": network_links(routing, live, now),
            "summary_interval_s": r.summaries.interval_s}
