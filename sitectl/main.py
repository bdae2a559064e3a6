"""sitectl: create a site, link it to others, expose and consume services.

It reads and writes the site directory and talks to a running router over its
control socket; no protocol logic lives here.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from certs.errors import CertError
from router.daemon.logformat import LOG_FORMATS
from router.endpoint import Endpoint
from router.errors import VanError
from router.names import InvalidName
from router.routing.choice import STRATEGIES
from router.site.config import (
    ConnectorConfig,
    ListenerConfig,
    SiteConfig,
    admin_url,
    connector_from,
    listener_from,
    port_clash,
    services_problem,
)
from router.site.create import check_init_args, init_site
from router.site.directory import resolve_site_dir
from router.site.errors import ARGUMENTS, ConfigError, SiteError
from router.site.fields import FieldReader
from router.site.http_fields import CONNECTOR_PROTOCOLS
from router.version import VersionAction
from sitectl import flows_cmd, http_cmds, kube, link_cmds, service
from sitectl.console_cmd import add_console_parser
from sitectl.context import Ctx, out
from sitectl.errors import UsageError
from sitectl.hostaddr import LOOPBACK, default_host
from sitectl.render import render_network, render_status

EPILOG = """example:
  west$ sitectl init west --host 203.0.113.5     # the address other sites dial
  west$ sitectl run &
  west$ sitectl token issue --expires 15m -o west.token
  east$ sitectl init east && sitectl run &
  east$ sitectl link create west.token
  west$ sitectl connector create db 127.0.0.1:5432
  east$ sitectl listener create db 15432          # psql -h 127.0.0.1 -p 15432 ...
  east$ sitectl status --network
  east$ sitectl flows --network                   # every site's recent flows

Sites live under $XDG_DATA_HOME/vanrouter/sites/NAME unless --site-dir (or
$SITECTL_SITE_DIR) says otherwise; --site NAME picks one when there are several."""

def parse_address(text: str, *, default_host: str | None) -> Endpoint:
    """HOST:PORT or [IPV6]:PORT; with a `default_host`, also a bare PORT (or :PORT)."""
    if default_host is not None and ":" not in text.removeprefix(":"):
        port = text.removeprefix(":")
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise UsageError(f"bad port in {text!r}")
        return Endpoint(default_host, int(port))
    if ":" not in text:
        raise UsageError(f"expected HOST:PORT, got {text!r}")
    try:
        return Endpoint.parse(text)
    except InvalidName as exc:
        raise UsageError(str(exc)) from None


# ---- commands
def cmd_init(ctx: Ctx | None, a: argparse.Namespace) -> int:
    root = resolve_site_dir(a.site_dir, a.name)
    try:
        check_init_args(root, a.name, host=LOOPBACK if a.host is None else a.host,
                        link_port=a.link_port,
                        bind=a.bind,
                        advertise=tuple(a.advertise or ()), admin_port=a.admin_port,
                        admin_bind=a.admin_bind)
        for entry in a.advertise or ():  # site.toml also takes the unbracketed IPv6 of old
            Endpoint.parse(entry)
    except (SiteError, ConfigError) as exc:
        raise UsageError(str(exc)) from None
    except InvalidName as exc:
        raise UsageError(f"--advertise: {exc}") from None
    host, note = (a.host, None) if a.host is not None else default_host()
    site = init_site(root, a.name, host=host, link_port=a.link_port, bind=a.bind,
                     advertise=tuple(a.advertise or ()), admin_port=a.admin_port,
                     admin_bind=a.admin_bind)
    cfg = site.config()
    how = f"--site {cfg.name}" if a.site_dir is None else f"--site-dir {root}"
    picked = "" if a.host is not None or note else " (this machine on its default route; or --host)"
    out(a, {"site": cfg.name, "site_dir": str(root), "host": cfg.host,
            "link_port": cfg.link_port, "admin_port": cfg.admin_port,
            "admin_url": admin_url(cfg)},
        f"site {cfg.name} created in {root}\n"
        f"  links accepted on {Endpoint(cfg.bind, cfg.link_port)}, advertised as "
        f"{cfg.host}{picked}\n"
        f"  admin (metrics, health) on {admin_url(cfg)}\n"
        f"  start its router with: sitectl {how} run")
    if note:
        print(f"sitectl: note: {note}", file=sys.stderr)
    return 0


def cmd_run(ctx: Ctx, a: argparse.Namespace) -> int:
    from router.daemon.main import run_router

    ctx.site.require()
    return run_router(ctx.root, log_level=a.log_level, log_format=a.log_format)


def cmd_status(ctx: Ctx, a: argparse.Namespace) -> int:
    ctx.site.require()
    status = ctx.call("status", {"network": a.network})
    status.pop("ok", None)
    text = render_status(status)
    if a.network:
        text += "\n" + render_network(status["network"])
    out(a, status, text)
    return 0


def cmd_top(ctx: Ctx, a: argparse.Namespace) -> int:
    from sitectl.top import run_top

    ctx.site.require()
    if not 0.2 <= a.interval <= 60:
        raise UsageError("--interval must be from 0.2 to 60 seconds")
    return run_top(lambda: ctx.call("top"), once=a.once, interval=a.interval, as_json=a.json)


def _offline_edit(ctx: Ctx, change: str, new: SiteConfig) -> None:
    ctx.site.save_config(new)
    print(f"{change} (router not running: saved, takes effect when it starts)")


def _check_services(new: SiteConfig) -> None:
    problem = services_problem(new)
    if problem is not None:
        kind, _, field, why = problem
        raise UsageError(f"[{kind}] {field}: {why}")


def cmd_listener_create(ctx: Ctx, a: argparse.Namespace) -> int:
    where = parse_address(a.address, default_host="127.0.0.1")
    fields = {"key": a.key, "host": where.host, "port": where.port, "strategy": a.strategy,
              **http_cmds.listener_options(a)}
    lst = listener_from(FieldReader(Path("arguments"), "", "listener", fields))
    ctx.site.require()
    with ctx.site.edit_lock():
        # Checked here against site.toml (what a running router has too): a clash is a
        # bad argument (exit 2), in the words the router and the config check use.
        cfg = ctx.site.config()
        clash = port_clash(cfg, lst, cfg.listeners)
        if clash is not None:
            raise UsageError(f"[listener] {clash[0]}: {clash[1]}")
        _check_services(replace(cfg, listeners=(*cfg.listeners, lst)))
        if ctx.try_call("listener.create", {**fields}) is None:
            _offline_edit(ctx, f"listener {a.key} on {where}",
                          replace(cfg, listeners=(*cfg.listeners, lst)))
            return 0
    print(f"listener {a.key} on {where} ({http_cmds.describe(lst)})")
    return 0


def cmd_connector_create(ctx: Ctx, a: argparse.Namespace) -> int:
    where = parse_address(a.address, default_host=None)
    fields = {"key": a.key, "host": where.host, "port": where.port, "priority": a.priority,
              "weight": a.weight}
    if a.protocol != "tcp":
        fields["protocol"] = a.protocol
    if a.host_header:
        fields["host_header"] = a.host_header
    con = connector_from(FieldReader(Path("arguments"), "", "connector", fields))
    ctx.site.require()
    with ctx.site.edit_lock():
        cfg = ctx.site.config()
        _check_services(replace(cfg, connectors=(*cfg.connectors, con)))
        if ctx.try_call("connector.create", {**fields}) is None:
            _offline_edit(ctx, f"connector {a.key} -> {where}",
                          replace(cfg, connectors=(*cfg.connectors, con)))
            return 0
    print(f"connector {a.key} -> {where}" + (f" ({a.protocol})" if a.protocol != "tcp" else ""))
    return 0


def _list(ctx: Ctx, a: argparse.Namespace, kind: str) -> int:
    cfg = ctx.site.config()
    items: tuple[ListenerConfig, ...] | tuple[ConnectorConfig, ...] = (
        cfg.listeners if kind == "listener" else cfg.connectors)
    rows = [{"key": x.key, "host": x.host, "port": x.port} for x in items]
    text = "\n".join(f"{x.key:<20} {x.endpoint}" for x in items) or f"no {kind}s"
    out(a, rows, text)
    return 0


def _delete(ctx: Ctx, a: argparse.Namespace, kind: str) -> int:
    ctx.site.require()
    with ctx.site.edit_lock():
        if ctx.try_call(f"{kind}.delete", {"key": a.key}) is None:
            cfg = ctx.site.config()
            if kind == "listener":
                if not any(x.key == a.key for x in cfg.listeners):
                    raise UsageError(f"no listener for {a.key!r}")
                new = replace(cfg, listeners=tuple(x for x in cfg.listeners if x.key != a.key))
            else:
                if not any(x.key == a.key for x in cfg.connectors):
                    raise UsageError(f"no connector for {a.key!r}")
                new = replace(cfg, connectors=tuple(
                    x for x in cfg.connectors if x.key != a.key))
            _offline_edit(ctx, f"{kind} {a.key} deleted", new)
            return 0
    print(f"{kind} {a.key} deleted")
    return 0


# ---- argument parsing
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--site-dir", default=argparse.SUPPRESS,
                        help="site directory (or $SITECTL_SITE_DIR)")
    common.add_argument("--site", default=argparse.SUPPRESS,
                        help="site name under the XDG data dir")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    parser = argparse.ArgumentParser(
        prog="sitectl", parents=[common], description="Create a site, link it to other "
        "sites, expose services (connectors) and reach them (listeners).", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", parents=[common], help="create a site")
    p.add_argument("name")
    p.add_argument("--host", default=None, help="address other sites dial (default: this "
                   "machine's on its default route, or its FQDN if that resolves to it)")
    p.add_argument("--link-port", type=int, default=None)
    p.add_argument("--bind", default="0.0.0.0", help="address the link port listens on")
    p.add_argument("--admin-port", type=int, default=None,
                   help="HTTP admin port: /metrics, /healthz, /readyz (default: picked)")
    p.add_argument("--admin-bind", default="127.0.0.1",
                   help="address the admin port listens on (0.0.0.0 for Kubernetes probes)")
    p.add_argument("--advertise", action="append", metavar="HOST:PORT",
                   help="where other sites dial this one, if not --host:link-port "
                   "(NAT, port forwarding, several addresses); repeatable, tried in order")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", parents=[common], help="run the router in the foreground")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="json: one JSON object per line (time, level, logger, message, site, "
                   "and fields such as link, routing_key, flow_id)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", parents=[common], help="this site, its links and services")
    p.add_argument("--network", action="store_true", help="also every site and key known")
    p.set_defaults(func=cmd_status)
    add_console_parser(sub, common)

    p = sub.add_parser("top", parents=[common], help="live traffic per key and site, and links")
    p.add_argument("--once", action="store_true", help="print one frame and exit (--json: as "
                   "JSON)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between frames "
                   "(and between the two samples of --once)")
    p.set_defaults(func=cmd_top)

    link_cmds.add_parsers(sub, common)

    lst = sub.add_parser("listener", parents=[common], help="local ports for remote services")
    lsub = lst.add_subparsers(dest="sub", required=True, metavar="ACTION")
    p = lsub.add_parser("create", parents=[common])
    p.add_argument("key")
    p.add_argument("address", metavar="[HOST:]PORT", help="[IPV6]:PORT for an IPv6 address")
    p.add_argument("--strategy", default="balanced", choices=STRATEGIES)
    http_cmds.add_listener_options(p, create=True)
    p.set_defaults(func=cmd_listener_create)
    http_cmds.add_listener_set(lsub, common)
    p = lsub.add_parser("list", parents=[common])
    p.set_defaults(func=lambda c, a: _list(c, a, "listener"))
    p = lsub.add_parser("delete", parents=[common])
    p.add_argument("key")
    p.set_defaults(func=lambda c, a: _delete(c, a, "listener"))

    con = sub.add_parser("connector", parents=[common], help="expose a local service")
    csub = con.add_subparsers(dest="sub", required=True, metavar="ACTION")
    p = csub.add_parser("create", parents=[common])
    p.add_argument("key")
    p.add_argument("address", metavar="HOST:PORT", help="[IPV6]:PORT for an IPv6 address")
    p.add_argument("--priority", type=int, default=0, help="lower is preferred")
    p.add_argument("--weight", type=int, default=1)
    p.add_argument("--protocol", default="tcp", choices=CONNECTOR_PROTOCOLS,
                   help="what the target speaks: tcp (default), http1, or http2 (h2c, gRPC)")
    p.add_argument("--host-header", default="", metavar="HOST[:PORT]",
                   help="http1/http2: the Host the target gets instead of the client's "
                   "(the client's goes on as x-forwarded-host)")
    p.set_defaults(func=cmd_connector_create)
    p = csub.add_parser("list", parents=[common])
    p.set_defaults(func=lambda c, a: _list(c, a, "connector"))
    p = csub.add_parser("delete", parents=[common])
    p.add_argument("key")
    p.set_defaults(func=lambda c, a: _delete(c, a, "connector"))
    http_cmds.add_route_parsers(sub, common)
    flows_cmd.add_flows_parser(sub, common)
    service.add_parsers(sub, common)
    kube.add_parsers(sub, common)
    return parser


def _terminated(signum: int, frame: object) -> None:
    # As an exception, so every `except BaseException` cleanup runs (a token file not
    # yet written, a link's private temp dir, a config temp file): without this,
    # SIGTERM or a closed terminal killed sitectl with those left behind.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _terminated)
    args = build_parser().parse_args(argv)
    for attr, default in (("site_dir", None), ("site", None), ("json", False)):
        if not hasattr(args, attr):
            setattr(args, attr, default)
    try:
        ctx = None if args.func is cmd_init else Ctx(args)
        code: int = args.func(ctx, args)
        return code
    except (VanError, CertError) as exc:
        print(f"sitectl: {exc}", file=sys.stderr)
        # Bad arguments exit 2 (as argparse's own errors do), failures at run time 1.
        bad_args = isinstance(exc, ConfigError) and exc.source == ARGUMENTS
        return 2 if isinstance(exc, UsageError) or bad_args else 1
    except OSError as exc:  # a file problem no command translated: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"sitectl: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
