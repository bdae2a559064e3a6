"""The control socket: sitectl talks to a running router here.

A Unix socket (0600) in the site's runtime dir; one JSON request per connection,
one JSON reply: {"ok": true, ...} or {"ok": false, "error": "why"}. Requests are
size-capped and validated with the same code that validates the config file, so a
bad value gets the same message either way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from certs import CertError
from router.daemon import certstatus
from router.daemon.admin import SiteAdmin
from router.daemon.console import console_reply
from router.daemon.flowsview import flows_reply
from router.daemon.issuer import TokenIssuer
from router.daemon.revoke import revoke_site
from router.daemon.status import network_status, site_status
from router.daemon.top import TopCounter
from router.daemon.view import RouterView
from router.errors import VanError
from router.net.accept import FdReserve, serve_listeners
from router.site.config import connector_from, listener_from, listener_table
from router.site.directory import Site
from router.site.fields import FieldReader
from router.site.http_fields import route_from, route_table
from router.site.tokens import finite_number

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Targets:
    """What requests act on: the router's state, its site administration, its tokens."""

    view: RouterView
    admin: SiteAdmin
    issuer: TokenIssuer
    top: TopCounter = field(default_factory=TopCounter)


Handler = Callable[[Targets, dict[str, Any]], Awaitable[dict[str, Any]]]


class RequestError(VanError):
    """A request that cannot be carried out; the message goes back to sitectl."""


def _fields(args: dict[str, Any], section: str) -> FieldReader:
    return FieldReader(Path("request"), "", section, args)


def _name(args: dict[str, Any], field: str) -> str:
    value = args.get(field)
    if not isinstance(value, str) or not value:
        raise RequestError(f"request needs {field} (a string)")
    return value


async def _status(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    result = site_status(t.view)
    if args.get("network"):
        result["network"] = network_status(t.view)
    return result


async def _console(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    return console_reply(t.view)


async def _top(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    return t.top.reply(t.view)


async def _flows(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    """{"key", "active", "limit", "network"}, each optional: see `flows_reply`."""
    return await flows_reply(t.view, args)


async def _listener_create(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    lst = listener_from(_fields(args, "listener"))
    await t.admin.add_listener(lst)
    return {"listener": asdict(lst)}


async def _listener_delete(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    return {"deleted": [asdict(x) for x in t.admin.delete_listener(_name(args, "key"))]}


async def _connector_create(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    con = connector_from(_fields(args, "connector"))
    t.admin.add_connector(con)
    return {"connector": asdict(con)}


async def _connector_delete(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    return {"deleted": [asdict(x) for x in t.admin.delete_connector(_name(args, "key"))]}


def _listener_reply(listeners: list[Any]) -> dict[str, Any]:
    return {"listeners": [listener_table(x) for x in listeners]}


async def _listener_set(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    """{"key": K, and any of "strategy", "retries", "timeout_s", "affinity"}."""
    changes = {k: v for k, v in args.items() if k != "key"}
    if not changes:
        raise RequestError("listener.set needs something to change")
    return _listener_reply(t.admin.set_listener(_name(args, "key"), changes))


async def _route_add(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    """{"key": K, "site": S | "split": {S: W, ...}, and optionally "path_prefix",
    "header", "header_value", "header_absent", "method"}; appended (matched last)."""
    key = _name(args, "key")
    rule = route_from(_fields({k: v for k, v in args.items() if k != "key"},
                              "listener.route"))
    return _listener_reply(t.admin.add_route(key, rule))


async def _route_delete(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    """{"key": K, "number": N}: N counts from 1, as `route list` shows."""
    number = args.get("number")
    if isinstance(number, bool) or not isinstance(number, int):
        raise RequestError("route.delete needs number (an integer from 1)")
    rule, changed = t.admin.delete_route(_name(args, "key"), number)
    return {"deleted": route_table(rule), **_listener_reply(changed)}


async def _token_issue(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    # JSON allows Infinity, NaN and 1e999, and a bool is an int: refused here, before
    # any grant exists; the grant store checks the ranges.
    expires, uses = finite_number(args.get("expires_s")), args.get("uses")
    if expires is None or isinstance(uses, bool) or not isinstance(uses, int):
        raise RequestError("token.issue needs expires_s (a finite number) and uses (an integer)")
    token = t.issuer.issue_token(expires_s=expires, uses=uses)
    return {"token": token.decode()}


async def _link_add(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    t.admin.add_link(_name(args, "name"))
    return {}


async def _link_delete(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    t.admin.delete_link(_name(args, "name"))
    return {}


async def _link_revoke(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    """{"site": S, "reason": TEXT (optional)}."""
    reason = args.get("reason", "")
    if not isinstance(reason, str):
        raise RequestError("reason must be a string")
    entry, closed = revoke_site(_name(args, "site"), reason, signer=t.view.cert_signer,
                                links=t.view.links, routing=t.view.routing)
    return {"revoked": certstatus.revoked_entry(entry), "closed": closed}


async def _link_cost(t: Targets, args: dict[str, Any]) -> dict[str, Any]:
    cost = args.get("cost")
    if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= 1_000_000:
        raise RequestError("cost must be an integer from 1 to 1000000")
    t.admin.set_link_cost(_name(args, "name"), cost)
    return {}


HANDLERS: dict[str, Handler] = {
    "status": _status,
    "console": _console,
    "top": _top,
    "flows": _flows,
    "listener.create": _listener_create,
    "listener.delete": _listener_delete,
    "listener.set": _listener_set,
    "route.add": _route_add,
    "route.delete": _route_delete,
    "connector.create": _connector_create,
    "connector.delete": _connector_delete,
    "token.issue": _token_issue,
    "link.add": _link_add,
    "link.delete": _link_delete,
    "link.cost": _link_cost,
    "link.revoke": _link_revoke,
}


class ControlServer:
    def __init__(self, view: RouterView, admin: SiteAdmin, issuer: TokenIssuer,
                 site: Site) -> None:
        self.targets = Targets(view, admin, issuer)
        self.site = site
        self.path = site.control_path
        # Its own spare: `sitectl status` should work when the router is out of fds.
        self.reserve = FdReserve()

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.site.check_control_dir(create=True)  # main checked it; a last look
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # stale socket from a crashed router
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is born 0600
        try:
            await sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        sock.listen(socket.SOMAXCONN)  # many sitectl at once queue, not fail
        try:
            with self.reserve:
                await serve_listeners(self._handle, [trio.SocketListener(sock)],
                                      what="control request", name="control socket",
                                      reserve=self.reserve, serve_at_limit=True,
                                      task_status=task_status)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _handle(self, stream: trio.SocketStream) -> None:
        limit = self.targets.view.config.limits.max_control_request_bytes
        async with stream:
            buf = bytearray()
            try:
                with trio.fail_after(10):
                    while b"\n" not in buf:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            break
                        buf += chunk
                        if len(buf) > limit:
                            raise RequestError(f"request over {limit} bytes")
                    reply = await self._dispatch(bytes(buf))
            except RequestError as exc:
                reply = {"ok": False, "error": str(exc)}
            except (trio.TooSlowError, trio.BrokenResourceError):
                return
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(reply, default=str).encode() + b"\n")

    async def _dispatch(self, raw: bytes) -> dict[str, Any]:
        try:
            req = json.loads(raw)
        except ValueError:
            raise RequestError("request is not JSON") from None
        except RecursionError:  # '[' * 60000 is within the size cap
            raise RequestError("request is nested too deeply") from None
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            raise RequestError("request needs an op")
        handler = HANDLERS.get(req["op"])
        if handler is None:
            raise RequestError(f"unknown op {req['op']!r}")
        args = req.get("args", {})
        if not isinstance(args, dict):
            raise RequestError("request args must be an object")
        try:
            result = await handler(self.targets, args)
        except (VanError, CertError, ValueError) as exc:
            return {"ok": False, "error": str(exc).replace("request: ", "")}
        except OSError as exc:  # a site file that cannot be read or written
            where = f"{exc.filename}: " if exc.filename else ""
            return {"ok": False, "error": f"{where}{exc.strerror or exc}"}
        return {"ok": True, **result}
