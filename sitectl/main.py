"""sitectl: create a site, link it to others, expose and consume services.

It reads and writes the site directory and talks to a running router over its
control socket; no protocol logic lives here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import stat
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from certs.errors import CertError
from router.daemon.logformat import LOG_FORMATS
from router.endpoint import Endpoint
from router.errors import VanError
from router.names import InvalidName, validate_name
from router.protocol.claim import ClaimError, ClaimRefused
from router.routing.choice import STRATEGIES
from router.routing.signing import Ed25519Signer
from router.site.certrecords import IssuedCerts, Revocations, build_revocation
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
from router.site.directory import Site, resolve_site_dir
from router.site.errors import ARGUMENTS, ConfigError, SiteError
from router.site.fields import FieldReader
from router.site.http_fields import CONNECTOR_PROTOCOLS
from router.site.linkfiles import MAX_LINK_COST, LinkSpec
from router.site.proxyconf import ProxySettingError, check_proxy_setting, proxy_for
from router.site.tokens import MAX_GRANT_S, MAX_TOKEN_BYTES, MAX_USES, Token
from router.version import VersionAction
from sitectl import flows_cmd, http_cmds, kube, service
from sitectl.client import ConnectionLost, NotRunning, call
from sitectl.console_cmd import add_console_parser
from sitectl.errors import FileProblem, UsageError
from sitectl.hostaddr import LOOPBACK, default_host, is_loopback
from sitectl.redeem import REDEEM_ALL_TIMEOUT_S, REDEEM_TIMEOUT_S, ClaimResult, Deadline, redeem
from sitectl.render import render_links, render_network, render_revoked, render_status

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

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, *, most: float = MAX_GRANT_S) -> float:
    """Seconds in e.g. "90s", "15m", "7d": more than zero and at most `most`."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise UsageError(f"bad duration {text[:40]!r} (use e.g. 30s, 15m, 2h, 7d)")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < seconds <= most:  # also false for inf, which a long digit string can be
        raise UsageError(f"duration {text[:40]!r} must be more than 0 and at most "
                         f"{most / 86400:g}d")
    return seconds


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


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = resolve_site_dir(args.site_dir, args.site)
        self.site = Site(self.root)

    def call(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            return self._call(op, args)
        except NotRunning:
            raise NotRunning(
                f"the router of site {self._name()} is not running (start it with `sitectl run`)"
            ) from None

    def try_call(self, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """Call the router if it runs; None if it does not."""
        try:
            return self._call(op, args)
        except NotRunning:
            return None

    def _call(self, op: str, args: dict[str, Any] | None) -> dict[str, Any]:
        if not self.site.check_control_dir(create=False):
            raise NotRunning(str(self.site.control_path))
        try:
            return call(self.site.control_path, op, args)
        except ConnectionLost:
            raise ConnectionLost(self._name()) from None

    def _name(self) -> str:
        return self.site.config().name if self.site.exists() else str(self.root)


def out(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


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


def cmd_token_issue(ctx: Ctx, a: argparse.Namespace) -> int:
    ctx.site.require()
    expires = parse_duration(a.expires)
    if not 1 <= a.uses <= MAX_USES:
        raise UsageError(f"--uses must be from 1 to {MAX_USES}")
    if not a.output or a.output == "-":
        token = ctx.call("token.issue", {"expires_s": expires, "uses": a.uses})["token"]
        sys.stdout.write(token)
        _warn_if_loopback(token)
        return 0
    # The file is opened before the token is issued, so a bad path costs no grant.
    path = Path(a.output)
    created = not path.exists()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise FileProblem(f"cannot write token to {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        try:
            token = ctx.call("token.issue", {"expires_s": expires, "uses": a.uses})["token"]
            os.fchmod(fd, 0o600)  # a token is a secret, even in a file that existed
            f.truncate()
            f.write(token)
            f.flush()
        except BaseException as exc:
            if created:
                path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise FileProblem(f"cannot write token to {path}: "
                                  f"{exc.strerror or exc}") from None
            raise
    print(f"token written to {path} (valid {a.expires}, {a.uses} use(s)); "
          "hand it to the other site: sitectl link create FILE", file=sys.stderr)
    _warn_if_loopback(token)
    return 0


def _warn_if_loopback(token: str) -> None:
    """One line when no other machine could redeem the token: every endpoint in it is
    a loopback address (a site made with the --host of old, or on a machine with no
    route), which on another machine means that machine itself."""
    endpoints = Token.load(token.encode(), now=time.time()).endpoints
    if all(is_loopback(host) for host, _ in endpoints):
        where = ", ".join(str(Endpoint(h, p)) for h, p in endpoints)
        print(f"sitectl: warning: the token points only at loopback ({where}): only this "
              "machine can redeem it; set host (or advertise) in site.toml to an address "
              "others reach, and restart the router", file=sys.stderr)


def read_token_file(name: str) -> bytes:
    """At most MAX_TOKEN_BYTES + 1 bytes of a regular file (not /dev/zero, a FIFO, a dir)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat refuses it next.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise FileProblem(f"cannot read token {name}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileProblem(f"cannot read token {name}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_TOKEN_BYTES + 1)
        except OSError as exc:
            raise FileProblem(f"cannot read token {name}: {exc.strerror or exc}") from None
    return data


def cmd_link_create(ctx: Ctx, a: argparse.Namespace) -> int:
    import certs

    cfg = ctx.site.config()
    # Everything the user typed is checked before the token's use is spent.
    if a.name is not None:
        try:
            validate_name(a.name, "link name")
        except InvalidName as exc:
            raise UsageError(f"--name: {exc}") from None
    if not 1 <= a.cost <= MAX_LINK_COST:
        raise UsageError(f"--cost must be from 1 to {MAX_LINK_COST}")
    try:
        proxy = None if a.proxy is None else check_proxy_setting(a.proxy)
    except ProxySettingError as exc:
        raise UsageError(f"--proxy: {exc}") from None
    token = Token.load(read_token_file(a.file), now=time.time())
    if token.site == cfg.name:
        raise UsageError(f"the token was issued by this site ({cfg.name}); "
                         "a site cannot link to itself")
    name = a.name or token.site
    if ctx.site.link_files(name)[0].exists():
        raise UsageError(f"a link named {name} already exists (choose another with --name)")
    clash = ctx.site.link_clash(name)
    if clash is not None:
        raise UsageError(f"a link named {name} would overwrite files of link {clash} "
                         "(choose another with --name)")
    key_pem, csr_pem = certs.make_csr(cfg.name)
    signer = _own_signer(ctx.site)
    errors: list[str] = []
    result: ClaimResult | None = None
    # A token may list 16 endpoints that each answer slowly: one limit for them all.
    deadline = Deadline(REDEEM_ALL_TIMEOUT_S, now=time.monotonic())
    for host, port in token.endpoints:
        left = deadline.left(time.monotonic())
        if left is None:
            errors.append(f"gave up after {REDEEM_ALL_TIMEOUT_S:g} s")
            break
        try:
            via = proxy_for(proxy, host, port, os.environ)
        except ProxySettingError as exc:
            raise UsageError(f"--proxy env: {exc}") from None
        try:
            result = redeem(host=host, port=port, issuer_site=token.site, ca_pem=token.ca_pem,
                            code=token.code, csr_pem=csr_pem, key_pem=key_pem, site=cfg.name,
                            signer=signer, now=datetime.now(UTC),
                            timeout=min(REDEEM_TIMEOUT_S, left), proxy=via)
            break
        except ClaimRefused as exc:
            errors.append(str(exc))
            break  # the issuer answered: another endpoint would say the same
        except ClaimError as exc:
            errors.append(str(exc))
    if result is None:
        raise ClaimError("; ".join(errors))
    # Only the verified certificate is stored, and the issuer's router id is pinned.
    spec = LinkSpec(name=name, peer_site=token.site, endpoints=token.endpoints, cost=a.cost,
                    peer_router_id=result.issuer_router_id, proxy=proxy)
    # Under the edit lock: a router starting meanwhile either reads links/ after the save
    # or answers link.add, so the new link is dialled now, not only after a restart.
    with ctx.site.edit_lock():
        ctx.site.save_link(spec, ca_pem=token.ca_pem, cert_pem=result.cert_pem,
                           key_pem=key_pem)
        added = ctx.try_call("link.add", {"name": name})
    if added is None:
        print(f"link {name} to site {token.site} saved; it comes up when the router starts")
        return 0
    state = _wait_link_up(ctx, name, a.wait)
    print(f"link {name} to site {token.site} created: {state}")
    return 0


def _own_signer(site: Site) -> Ed25519Signer:
    """Our router's identity key: the claim proves with it the router id that the
    issuer binds into our certificate."""
    import certs

    try:
        return Ed25519Signer(site.identity_key())
    except certs.CertError as exc:
        raise SiteError(str(exc)) from None


def _wait_link_up(ctx: Ctx, name: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    state = "connecting"
    while time.monotonic() < deadline:
        for link in ctx.call("status").get("links", []):
            if link["name"] == name:
                state = link["state"] if not link.get("error") else (
                    f"{link['state']} ({link['error']})")
                if link["state"] == "up":
                    return "up"
        time.sleep(0.1)
    return state


def cmd_link_list(ctx: Ctx, a: argparse.Namespace) -> int:
    ctx.site.require()
    if a.revoked:
        return _list_revoked(ctx, a)
    reply = ctx.try_call("status", {})
    if reply is not None:
        links = reply["links"]
    else:
        links = []
        for name in ctx.site.link_names():
            spec = ctx.site.load_link(name)
            links.append({"name": name, "peer_site": spec.peer_site, "direction": "out",
                          "state": "router not running", "cost": spec.cost,
                          "endpoints": [str(Endpoint(h, p)) for h, p in spec.endpoints]})
    out(a, links, render_links(links))
    return 0


def _list_revoked(ctx: Ctx, a: argparse.Namespace) -> int:
    from router.daemon.certstatus import revoked_entry

    reply = ctx.try_call("status", {})  # the running router knows when each was refused
    rows = reply["revoked"] if reply is not None else [
        revoked_entry(e) for e in Revocations(ctx.site.revoked_path).entries]
    out(a, rows, render_revoked(rows))
    return 0


def cmd_link_revoke(ctx: Ctx, a: argparse.Namespace) -> int:
    ctx.site.require()
    try:
        validate_name(a.site, "site name")
    except InvalidName as exc:
        raise UsageError(str(exc)) from None
    with ctx.site.edit_lock():
        reply = ctx.try_call("link.revoke", {"site": a.site, "reason": a.reason})
        if reply is None:
            entry = Revocations(ctx.site.revoked_path).add(build_revocation(
                a.site, a.reason, own_site=ctx.site.config().name, now=time.time(),
                issued=IssuedCerts(ctx.site.issued_path)))
            out(a, {"revoked": entry.stored(), "closed": 0},
                f"site {entry.site} revoked (router not running: recorded; its links are "
                "refused from the router's start)")
            return 0
    out(a, reply, f"site {a.site} revoked: {reply['closed']} live link(s) closed; its "
        "certificates and router ids are refused from now on")
    return 0


def cmd_link_delete(ctx: Ctx, a: argparse.Namespace) -> int:
    ctx.site.require()
    with ctx.site.edit_lock():
        if ctx.try_call("link.delete", {"name": a.name}) is None:
            if a.name not in ctx.site.link_names():
                raise UsageError(f"no link named {a.name!r}")
            ctx.site.delete_link(a.name)
    print(f"link {a.name} deleted")
    return 0


def cmd_link_cost(ctx: Ctx, a: argparse.Namespace) -> int:
    ctx.site.require()
    if not 1 <= a.cost <= MAX_LINK_COST:
        raise UsageError(f"cost must be from 1 to {MAX_LINK_COST}")
    with ctx.site.edit_lock():
        if ctx.try_call("link.cost", {"name": a.name, "cost": a.cost}) is None:
            if a.name not in ctx.site.link_names():
                raise UsageError(f"no link named {a.name!r}")
            spec = ctx.site.load_link(a.name)
            ca, cert, key = ctx.site.link_credentials(a.name)
            ctx.site.save_link(replace(spec, cost=a.cost), ca_pem=ca, cert_pem=cert,
                               key_pem=key)
    print(f"link {a.name} cost set to {a.cost}")
    return 0


# Every change below holds the site's edit lock from the live attempt to the offline
# save: a router starting meanwhile either reads the saved file or answers the call,
# and two sitectl at once do not save over each other (see Site.edit_lock).
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

    token = sub.add_parser("token", parents=[common], help="link tokens").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    p = token.add_parser("issue", parents=[common], help="issue a token for another site")
    p.add_argument("--expires", default="15m", help="e.g. 90s, 15m, 2h, 7d; at most 365d")
    p.add_argument("--uses", type=int, default=1, help="1 to 1000000")
    p.add_argument("-o", "--output", default="-", help="token file (0600); a file that cannot "
                   "be written exits 1 before any grant is made")
    p.set_defaults(func=cmd_token_issue)

    link = sub.add_parser("link", parents=[common], help="links to other sites").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    p = link.add_parser("create", parents=[common], help="redeem a token and link")
    p.add_argument("file")
    p.add_argument("--name", help="link name (default: the issuer's site name); "
                   "1-63 letters, digits, '.', '_', '-'")
    p.add_argument("--cost", type=int, default=1)
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the link")
    p.add_argument("--proxy", metavar="URL", help="dial (and redeem) through this HTTP "
                   "CONNECT proxy, http://[USER:PASSWORD@]HOST:PORT; `env`: as HTTPS_PROXY "
                   "and NO_PROXY say, in the environment of the router when it dials")
    p.set_defaults(func=cmd_link_create)
    p = link.add_parser("list", parents=[common])
    p.add_argument("--revoked", action="store_true", help="the sites this site revoked")
    p.set_defaults(func=cmd_link_list)
    p = link.add_parser("revoke", parents=[common], help="cut off a site this site issued "
                        "a token to, for good: its links close now and are refused from "
                        "then on, and nothing is renewed or redeemed for it")
    p.add_argument("site")
    p.add_argument("--reason", default="", help="one line, shown to the site and in logs")
    p.set_defaults(func=cmd_link_revoke)
    p = link.add_parser("delete", parents=[common])
    p.add_argument("name")
    p.set_defaults(func=cmd_link_delete)
    p = link.add_parser("cost", parents=[common], help="change a link's cost (live)")
    p.add_argument("name")
    p.add_argument("cost", type=int)
    p.set_defaults(func=cmd_link_cost)

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
