"""sitectl's HTTP commands: listener options (`listener create/set`) and route rules
(`route add/list/delete`). Live through the control socket when the router runs,
else saved to site.toml, under the edit lock like every other change. Each change
is first checked against site.toml here, so a bad value exits 2 either way."""

from __future__ import annotations

import argparse
import json
import re
from typing import TYPE_CHECKING, Any

from router.routing.choice import STRATEGIES
from router.site.config import ListenerConfig, SiteConfig
from router.site.errors import ARGUMENTS, ConfigError
from router.site.fields import FieldReader
from router.site.http_fields import LISTENER_PROTOCOLS, describe_route, route_from, route_table
from router.site.listener_edit import (
    Edit,
    add_route,
    delete_route,
    edit_listeners,
    listener_status,
    set_options,
)
from sitectl.errors import UsageError
from sitectl.render import render_routes

if TYPE_CHECKING:
    from sitectl.context import Ctx

_TIMEOUT = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_TIMEOUT_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_timeout(text: str) -> float:
    """Seconds in "250ms", "5s", "1m" (a bare number is seconds); "0" or "off": none."""
    if text.strip() in ("0", "off"):
        return 0.0
    m = _TIMEOUT.fullmatch(text.strip())
    if not m:
        raise UsageError(f"bad --timeout {text[:40]!r} (use e.g. 250ms, 5s, 1m, or off)")
    return round(float(m.group(1)) * _TIMEOUT_UNITS[m.group(2)], 6)


def parse_split(text: str) -> dict[str, int]:
    """{"west": 90, "north": 10} from "west=90,north=10", in the order given."""
    split: dict[str, int] = {}
    for part in text.split(","):
        site, sep, weight = part.strip().partition("=")
        if not sep or not site or not weight.isascii() or not weight.isdigit() or site in split:
            raise UsageError(f"bad --split {text[:60]!r} (use e.g. west=90,north=10, "
                             "each site once)")
        split[site] = int(weight)
    return split


def parse_header(text: str) -> dict[str, Any]:
    """NAME=VALUE (that value), NAME (present) or !NAME (absent)."""
    if text.startswith("!"):
        return {"header": text[1:], "header_absent": True}
    name, sep, value = text.partition("=")
    return {"header": name, "header_value": value} if sep else {"header": name}


def listener_options(a: argparse.Namespace) -> dict[str, Any]:
    """The HTTP fields given on the command line (none given: none sent)."""
    fields: dict[str, Any] = {}
    if getattr(a, "protocol", "tcp") != "tcp":
        fields["protocol"] = a.protocol
    if a.retries is not None:
        fields["retries"] = a.retries
    if a.timeout is not None:
        fields["timeout_s"] = parse_timeout(a.timeout)
    if a.affinity is not None:
        fields["affinity"] = a.affinity
    return fields


def describe(lst: ListenerConfig) -> str:
    """"balanced" for a tcp listener; "http, balanced, retries 2, ..." for http."""
    if lst.protocol != "http":
        return lst.strategy
    timeout = f"timeout {lst.timeout_s:g}s" if lst.timeout_s else "no timeout"
    parts = ["http", lst.strategy, f"retries {lst.retries}", timeout]
    if lst.affinity:
        parts.append(f"affinity {lst.affinity}")
    return ", ".join(parts)


def _change(ctx: Ctx, key: str, op: str, args: dict[str, Any], how: Edit, done: str) -> None:
    """Checked against site.toml, then live (or saved when the router is not running)."""
    ctx.site.require()
    with ctx.site.edit_lock():
        cfg: SiteConfig = ctx.site.config()
        try:
            new, _ = edit_listeners(cfg, key, how, source=ARGUMENTS)
        except (ValueError, ConfigError) as exc:
            raise UsageError(str(exc).removeprefix(f"{ARGUMENTS}: ")) from None
        if ctx.try_call(op, {"key": key, **args}) is None:
            ctx.site.save_config(new)
            print(f"{done} (router not running: saved, takes effect when it starts)")
            return
    print(done)


def cmd_listener_set(ctx: Ctx, a: argparse.Namespace) -> int:
    changes = listener_options(a)
    if a.strategy is not None:
        changes["strategy"] = a.strategy
    if not changes:
        raise UsageError("listener set needs one of --retries, --timeout, --affinity, "
                         "--strategy")
    _change(ctx, a.key, "listener.set", changes, set_options(changes),
            f"listener {a.key}: " + ", ".join(f"{k} {v}" for k, v in changes.items()))
    return 0


def cmd_route_add(ctx: Ctx, a: argparse.Namespace) -> int:
    if (a.route_site is None) == (a.split is None):
        raise UsageError("route add takes exactly one of --site or --split")
    fields: dict[str, Any] = {"site": a.route_site} if a.route_site is not None else {
        "split": parse_split(a.split)}
    if a.path_prefix is not None:
        fields["path_prefix"] = a.path_prefix
    if a.header is not None:
        fields |= parse_header(a.header)
    if a.method is not None:
        fields["method"] = a.method
    rule = route_from(FieldReader(ARGUMENTS, "", "listener.route", fields))
    _change(ctx, a.key, "route.add", route_table(rule), add_route(rule),
            f"route added to {a.key}: {describe_route(rule)}")
    return 0


def cmd_route_delete(ctx: Ctx, a: argparse.Namespace) -> int:
    _change(ctx, a.key, "route.delete", {"number": a.number}, delete_route(a.number),
            f"route {a.number} of {a.key} deleted")
    return 0


def cmd_route_list(ctx: Ctx, a: argparse.Namespace) -> int:
    ctx.site.require()
    status = ctx.try_call("status", {})
    if status is not None:  # what runs (site.toml says the same)
        found = [x for x in status["listeners"] if x["key"] == a.key]
    else:
        found = [listener_status(x) for x in ctx.site.config().listeners if x.key == a.key]
    if not found:
        raise UsageError(f"no listener for {a.key!r}")
    routes = found[0].get("routes", [])
    if a.json:
        print(json.dumps(routes, indent=2))
    elif found[0]["protocol"] != "http":
        print(f"listener {a.key} is a tcp listener: no routes")
    else:
        print(render_routes(routes, found[0]["strategy"]))
    return 0


# ---- argument parsing
def add_listener_options(p: argparse.ArgumentParser, *, create: bool) -> None:
    if create:
        p.add_argument("--protocol", default="tcp", choices=LISTENER_PROTOCOLS,
                       help="tcp (default), or http: HTTP/1.1 and HTTP/2, routed per request")
    else:
        p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--retries", type=int, help="http: attempts on another site (0-10, "
                   "default 2)")
    p.add_argument("--timeout", help="http: for the whole request, e.g. 250ms, 5s, 1m; "
                   "off (default)")
    p.add_argument("--affinity", metavar="header:NAME|cookie:NAME",
                   help="http: the same value goes to the same site")


def add_listener_set(lsub: Any, common: argparse.ArgumentParser) -> None:
    p = lsub.add_parser("set", parents=[common], help="change an http listener's options "
                        "(live, and saved)")
    p.add_argument("key")
    add_listener_options(p, create=False)
    p.set_defaults(func=cmd_listener_set)


def add_route_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    route = sub.add_parser("route", parents=[common], help="per-request routes of an http "
                           "listener (first match wins)")
    rsub = route.add_subparsers(dest="sub", required=True, metavar="ACTION")
    # Here --site is the route's target: pick the local site before the command
    # (`sitectl --site east route add ...`) or with --site-dir.
    add_common = argparse.ArgumentParser(add_help=False)
    add_common.add_argument("--site-dir", default=argparse.SUPPRESS,
                            help="site directory (or $SITECTL_SITE_DIR)")
    add_common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    p = rsub.add_parser("add", parents=[add_common], help="append a route (matched last)")
    p.add_argument("key")
    p.add_argument("--site", dest="route_site", metavar="SITE",
                   help="send matching requests to this site")
    p.add_argument("--split", metavar="SITE=W,...", help="weighted, e.g. west=90,north=10")
    p.add_argument("--path-prefix", metavar="P", help="match paths starting with P")
    p.add_argument("--header", metavar="N=V|N|!N",
                   help="header N equals V, is present, or (!N) is absent")
    p.add_argument("--method", help="match this method, e.g. GET")
    p.set_defaults(func=cmd_route_add)
    p = rsub.add_parser("list", parents=[common], help="the routes, numbered")
    p.add_argument("key")
    p.set_defaults(func=cmd_route_list)
    p = rsub.add_parser("delete", parents=[common], help="delete route N (see route list)")
    p.add_argument("key")
    p.add_argument("number", type=int, metavar="N")
    p.set_defaults(func=cmd_route_delete)
