"""The web console: one page of this package's own HTML, JavaScript and CSS, served on
the admin port with a read-only JSON API and a live event stream behind a token.

    console = Console(router, new_token())
    console.add_routes(router.web)       # /, /console/*, /api/v1/*
    console_reply(router)                # the control socket's `console` answer
"""

from __future__ import annotations

from typing import Any

from router.daemon.console.access import new_token
from router.daemon.console.api import Console
from router.daemon.view import RouterView

__all__ = ["Console", "console_reply", "new_token"]


def console_reply(view: RouterView) -> dict[str, Any]:
    """Where the console is and its token; `url` is None without an admin port
    (`error` then says why, if it failed to listen)."""
    url = view.admin_url
    return {"url": url, "token": view.console_token, "error": view.admin_error,
            "link": None if url is None else f"{url}#token={view.console_token}"}
