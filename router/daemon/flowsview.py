"""What `sitectl flows` shows: this router's flow records, or every router's merged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from router.daemon.view import RouterView
from router.errors import VanError
from router.flows.entry import FlowEntry
from router.flows.netrecords import ask_network, site_names
from router.flows.records import record_dict
from router.flows.recordwire import ANSWER_MAX_RECORDS, BadRecords, Query

LIMIT_MAX = 1_000_000
BATCH = 500  # records made between checkpoints: 10 000 of them take 15-60 ms


class FlowsRequestError(VanError):
    """A `flows` request with a bad argument; the message says which."""


def _query(args: dict[str, Any]) -> tuple[Query, int | None]:
    """The filters, and the limit of the whole listing (None: all)."""
    limit = args.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or not 1 <= limit <= LIMIT_MAX):
        raise FlowsRequestError(f"limit must be an integer from 1 to {LIMIT_MAX}")
    try:
        query = Query(key=args.get("key"), active=args.get("active", False),
                      limit=min(limit or ANSWER_MAX_RECORDS, ANSWER_MAX_RECORDS))
    except BadRecords as exc:
        raise FlowsRequestError(str(exc)) from None
    return query, limit


async def _records(entries: list[FlowEntry], names: Mapping[str, str]
                   ) -> list[dict[str, Any]]:
    """The entries' records, letting the flows run between batches."""
    out = []
    for i, entry in enumerate(entries, 1):
        out.append(record_dict(entry, names))
        if not i % BATCH:
            await trio.lowlevel.checkpoint()
    return out


def _order(rec: dict[str, Any]) -> tuple[bool, float]:
    """Active flows first, newest first; then ended ones, last ended first."""
    end = rec["end"]
    return (end is not None, -(end if end is not None else rec["start"]))


async def flows_reply(r: RouterView, args: dict[str, Any]) -> dict[str, Any]:
    """{"site", "records"} and with "network": every router's records merged, and
    "missing": the sites that did not answer, with why."""
    query, limit = _query(args)
    local = await _records(r.flows.listed(key=query.key, active=query.active, limit=limit),
                           site_names(r.routing))
    site = r.config.name
    if not args.get("network"):
        return {"site": site, "records": local}
    net = await ask_network(r.routing, r.links.link_for, site, query)
    # The listener's site holds a flow's whole record: a connector's half of it is
    # left out when that site answered.
    answered = {site, *net.answered}
    merged = [rec for rec in (*local, *net.records)
              if rec["role"] == "listener" or rec["listener_site"] not in answered]
    merged.sort(key=_order)
    return {"site": site, "records": merged[:limit], "answered": sorted(answered),
            "missing": sorted(net.missing, key=lambda m: m["site"])}
