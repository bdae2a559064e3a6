"""The console's JSON API and its live stream, on the router's admin port.

    GET /api/v1/snapshot        the whole view as JSON (snapshot.py)
    GET /api/v1/events          the same as server-sent events, one a second
    GET /api/v1/network/flows   every reachable router's flows, asked over the links
                                (as `sitectl flows --network`), at most one question
                                per NETWORK_FLOWS_EVERY_S whoever asks

Both need the token (access.py); anything else under /api/ is a 404 once the token is
shown, so paths cannot be probed without it. Read-only: nothing here changes the
router. A snapshot is built at most once per INTERVAL_S and shared by every client,
so watchers cost one build a second between them; at most MAX_STREAMS streams run at
once (a 503 past that: the page then polls the snapshot), and each holds at most one
snapshot while the admin server sends it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import trio

from router.daemon.console.access import NO_STORE, SECURITY_HEADERS, authorized, refused
from router.daemon.console.assets import Assets
from router.daemon.console.snapshot import Snapshots
from router.daemon.flowsview import flows_reply
from router.daemon.view import RouterView
from router.daemon.web import Routes, WebRequest, WebResponse

INTERVAL_S = 1.0
MAX_STREAMS = 16
RETRY_MS = 2000  # how soon a browser's EventSource reconnects after a stream ends
NETWORK_FLOWS_EVERY_S = 3.0  # each question goes to every router: not more often
NETWORK_FLOWS_MAX = 200
API_HEADERS = (*SECURITY_HEADERS, *NO_STORE)


class Console:
    """One router's console: its token, the shared snapshot and the open streams."""

    def __init__(self, view: RouterView, token: str) -> None:
        self.token = token
        self._view = view
        self._snapshots = Snapshots(view)
        self._network_lock = trio.Lock()  # one question to the network at a time
        self._network: bytes = b""
        self._network_at = -float("inf")
        self._latest: bytes = b""
        self._latest_at = -float("inf")
        self.streams = 0  # open event streams

    def add_routes(self, routes: Routes) -> None:
        assets = Assets()
        for path in assets.paths():
            routes.add(path, assets)
        routes.add_prefix("/api/", self._api)

    def snapshot_bytes(self) -> bytes:
        """The current snapshot as JSON, built again once it is INTERVAL_S old (a little
        less, so that a client asking every INTERVAL_S gets a fresh one each time)."""
        now = trio.current_time()
        if now - self._latest_at >= INTERVAL_S * 0.9:
            self._latest = json.dumps(self._snapshots.build(now), separators=(",", ":"),
                                      default=str).encode()
            self._latest_at = now
        return self._latest

    async def _api(self, request: WebRequest) -> WebResponse:
        if not authorized(request, self.token):
            return refused()
        if request.path == "/api/v1/snapshot":
            return WebResponse(200, self.snapshot_bytes(), content_type="application/json",
                               headers=API_HEADERS)
        if request.path == "/api/v1/events":
            return self._events()
        if request.path == "/api/v1/network/flows":
            return WebResponse(200, await self._network_flows(),
                               content_type="application/json", headers=API_HEADERS)
        return _json_error(404, f"no API {request.path[:200]}")

    async def _network_flows(self) -> bytes:
        """The network's flows, asked again once the last answer is
        NETWORK_FLOWS_EVERY_S old; whoever asks meanwhile waits for that answer."""
        async with self._network_lock:
            if trio.current_time() - self._network_at >= NETWORK_FLOWS_EVERY_S:
                reply = await flows_reply(self._view, {"network": True,
                                                       "limit": NETWORK_FLOWS_MAX})
                reply["time"] = time.time()
                self._network = json.dumps(reply, separators=(",", ":"),
                                           default=str).encode()
                self._network_at = trio.current_time()
            return self._network

    def _events(self) -> WebResponse:
        if self.streams >= MAX_STREAMS:
            return _json_error(503, f"too many console streams ({MAX_STREAMS}); "
                                    "polling still works")
        return WebResponse(200, content_type="text/event-stream",
                           headers=(*API_HEADERS, ("x-accel-buffering", "no")),
                           stream=EventStream(self))


class EventStream:
    """A snapshot each INTERVAL_S as an SSE `snapshot` event, until the admin server
    closes it (`aclose`, which it always calls). Counted from creation, not from the
    first chunk: a stream whose head could not be sent is closed unstarted."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._next = 0.0
        self._first = True
        self._closed = False
        console.streams += 1

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        if self._first:
            self._first = False
            self._next = trio.current_time()
            prefix = f"retry: {RETRY_MS}\n".encode()
        else:
            prefix = b""
            self._next += INTERVAL_S
            await trio.sleep_until(self._next)
            self._next = max(self._next, trio.current_time() - INTERVAL_S)  # no bursts
        return prefix + b"event: snapshot\ndata: " + self._console.snapshot_bytes() + b"\n\n"

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._console.streams -= 1


def _json_error(status: int, message: str) -> WebResponse:
    body: dict[str, Any] = {"error": message, "time": time.time()}
    return WebResponse(status, json.dumps(body).encode() + b"\n",
                       content_type="application/json", headers=API_HEADERS)
