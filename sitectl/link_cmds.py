"""sitectl's token and link commands: issue a token, redeem one (`link create`), list,
revoke, delete and re-cost links. Live through the control socket when the router runs,
else on the site directory, under the edit lock like every other change."""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.endpoint import Endpoint
from router.names import InvalidName, validate_name
from router.protocol.claim import ClaimError, ClaimRefused
from router.routing.signing import Ed25519Signer
from router.site.certrecords import IssuedCerts, Revocations, build_revocation
from router.site.directory import Site
from router.site.errors import SiteError
from router.site.linkfiles import MAX_LINK_COST, LinkSpec
from router.site.proxyconf import ProxySettingError, check_proxy_setting, proxy_for
from router.site.tokens import MAX_GRANT_S, MAX_TOKEN_BYTES, MAX_USES, Token
from sitectl.context import Ctx, out
from sitectl.errors import FileProblem, UsageError
from sitectl.hostaddr import is_loopback
from sitectl.redeem import REDEEM_ALL_TIMEOUT_S, REDEEM_TIMEOUT_S, ClaimResult, Deadline, redeem
from sitectl.render import render_links, render_revoked

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


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """`token issue` and `link create|list|revoke|delete|cost`."""
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
