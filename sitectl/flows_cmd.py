"""`sitectl flows`: recent and active flows (and HTTP requests), one line each, from the
running router; with --network every reachable site's, fetched over the links."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from router.protocol import printable
from sitectl.errors import UsageError

if TYPE_CHECKING:
    from sitectl.context import Ctx


def add_flows_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("flows", parents=[common], help="recent and active flows, one line each")
    p.add_argument("--key", help="only this routing key's flows")
    p.add_argument("--active", action="store_true", help="only the flows still open")
    p.add_argument("--limit", type=int, metavar="N", help="the N newest at most")
    p.add_argument("--network", action="store_true",
                   help="every reachable site's flows, asked over the links")
    p.set_defaults(func=cmd_flows)


def cmd_flows(ctx: Ctx, a: argparse.Namespace) -> int:
    ctx.site.require()
    args: dict[str, Any] = {"active": a.active, "network": a.network}
    if a.key is not None:
        args["key"] = a.key
    if a.limit is not None:
        if a.limit < 1:
            raise UsageError("--limit must be at least 1")
        args["limit"] = a.limit
    reply = ctx.call("flows", args)
    for miss in reply.get("missing", []):
        print(f"sitectl: no answer from site {printable(str(miss['site']))}: "
              f"{printable(str(miss['error']))}", file=sys.stderr)
    records = reply["records"]
    print(json.dumps(records, indent=2) if a.json else render_flows(records))
    return 0


def human_bytes(n: float) -> str:
    """Decimal units, as `ls -h --si` and network tools show them: 1.2 MB."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def render_flow(rec: dict[str, Any]) -> str:
    """`db  east>hub>west  10.0.0.5:51234 -> 127.0.0.1:5432  1.2 MB/3.4 KB  ttfb 12 ms  ok`
    (client to server bytes / back); an HTTP request adds its method, path and status."""
    path = ">".join(rec["sites"]) or rec["listener_site"]
    parts = [rec["routing_key"], path, f"{rec['client']} -> {rec['server'] or '-'}"]
    if rec["protocol"] != "tcp":
        status = rec.get("status")
        parts.append(f"{rec.get('method') or '-'} {rec.get('url_path') or '-'} "
                     f"{status if status is not None else '-'}")
    parts.append(f"{human_bytes(rec['bytes_c2s'])}/{human_bytes(rec['bytes_s2c'])}")
    parts.append(f"ttfb {_ms(rec['ttfb_s'])}")
    if rec["end"] is None:
        parts.append("active")
    elif rec["reason"] and rec["outcome"] != "ok":
        parts.append(f"{rec['outcome']}: {rec['reason']}")
    else:
        parts.append(str(rec["outcome"]))
    # Keys, sites, addresses and reasons come from other sites: nothing in them may act
    # on the terminal.
    return printable("  ".join(str(p) for p in parts))


def render_flows(records: list[dict[str, Any]]) -> str:
    if not records:
        return "(no flows)"
    return "\n".join(render_flow(rec) for rec in records)
