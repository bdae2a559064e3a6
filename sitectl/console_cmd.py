"""`sitectl console`: the link to the running router's web console.

The link carries the console's token in its fragment (`#token=...`), which a browser
keeps to itself: the page reads it and shows it to the API. The token comes from the
router over the control socket (it is made anew at every start and never written to
disk), so only users who may administer the site can get it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from router.errors import VanError

if TYPE_CHECKING:
    from sitectl.context import Ctx


class NoConsole(VanError):
    """The router runs without an admin port, so without a console."""


def add_console_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                       common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("console", parents=[common],
                       help="the link to this site's web console (with its token)")
    p.add_argument("--url", action="store_true",
                   help="print only the link, for scripts (it holds the token: keep it private)")
    p.set_defaults(func=cmd_console)


def cmd_console(ctx: Ctx, a: argparse.Namespace) -> int:
    ctx.site.require()
    reply = ctx.call("console")
    link = reply.get("link")
    if not isinstance(link, str):
        name = ctx.site.config().name
        why = reply.get("error") or "admin_port is 0 in site.toml"
        raise NoConsole(f"site {name} has no admin port, so no console ({why}); "
                        f"set admin_port in site.toml and restart the router")
    if a.json:
        print(json.dumps({"url": reply["url"], "token": reply["token"], "link": link},
                         indent=2))
    elif a.url:
        print(link)
    else:
        print(link)
        print("Open it in a browser on this machine. The link holds the console's token: "
              "it is valid until the router restarts; keep it private.", file=sys.stderr)
    return 0
