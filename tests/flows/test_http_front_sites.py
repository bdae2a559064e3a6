"""The HTTP listener across sites: each request is its own flow over real links (memory
streams with TLS), to a site whose connector is a stand-in speaking the message records;
a request whose flow is lost before its response is retried on another site."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import trio

from router.adaptors.http.frontend import HttpFrontend
from router.adaptors.http.message import (
    Body,
    End,
    MessagePeer,
    MessageReader,
    RequestHead,
    ResponseHead,
    encode,
)
from router.flows.forwarder import NoTarget
from router.routing.rules import RouteRule
from router.site.config import ConnectorConfig, ListenerConfig
from tests.flows.test_http_front_kit import pattern, sha
from tests.support.memnet import Net, Node, converged, mem_net, serves, wait_until


class RecordBackend:
    """What a site's HTTP connector puts in the flow, written by hand: answers each
    request with its body's sha256 and the site's name; `lose` drops that many flows
    before answering (the connection closes mid-exchange)."""

    def __init__(self, site: str) -> None:
        self.site = site
        self.lose = 0
        self.heads: list[RequestHead] = []

    async def __call__(self, stream: trio.abc.Stream) -> None:
        reader = MessageReader(request=True)
        digest = hashlib.sha256()
        async with stream:
            while not reader.ended:
                data = await stream.receive_some(65536)
                if not data:
                    return
                for part in reader.feed(data):
                    if isinstance(part, RequestHead):
                        self.heads.append(part)
                    elif isinstance(part, Body):
                        digest.update(part.data)
            if self.lose > 0:
                self.lose -= 1
                return
            for part in (ResponseHead(status=200, headers=((b"x-site", self.site.encode()),)),
                         Body(digest.hexdigest().encode()), End()):
                await stream.send_all(encode(part))


class NoLocal:
    async def exchange(self, key: str) -> MessagePeer:
        raise NoTarget(f"site a has no connector for {key!r}")


@asynccontextmanager
async def front_on(node: Node, lst: ListenerConfig) -> AsyncIterator[str]:
    front = HttpFrontend(forwarder=node.router.forwarder, table=node.flows,
                         local=NoLocal(),
                         config=lambda key: lst)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(
            trio.serve_tcp, partial(front.serve_connection, lst), 0, host="127.0.0.1"))
        yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


async def three_sites(net: Net) -> tuple[Node, RecordBackend, RecordBackend]:
    backends = {}
    nodes = []
    for name in ("b", "c"):
        backends[name] = RecordBackend(name)
        net.mem.listen((f"api.{name}", 80), backends[name])
        nodes.append(await net.add_router(name, connectors=(
            ConnectorConfig(key="api", host=f"api.{name}", port=80),)))
    a = await net.add_router("a")
    for node in nodes:
        net.link(a, node)
    await wait_until(lambda: converged(a, *nodes) and serves(a, "api", "b", "c"), "routes")
    return a, backends["b"], backends["c"]


async def test_requests_cross_sites_each_its_own_flow() -> None:
    async with mem_net() as net:
        a, b, c = await three_sites(net)
        lst = ListenerConfig(key="api", port=1, protocol="http", affinity="header:x-user",
                             routes=(RouteRule(header="x-to", header_value="c", site="c"),
                                     RouteRule(path_prefix="/b/", site="b")))
        async with front_on(a, lst) as url, httpx.AsyncClient(base_url=url) as client:
            body = pattern(3 * 1024 * 1024)
            sites = []
            for i in range(6):  # one client connection, a site chosen per request
                resp = await client.post("/b/up" if i % 2 else "/up", content=body,
                                         headers={"x-to": "c"} if not i % 2 else {})
                assert resp.status_code == 200 and resp.text == sha(body)
                sites.append(resp.headers["x-site"])
            assert sites == ["c", "b"] * 3
            assert len(b.heads) == len(c.heads) == 3
            users = {}
            for _ in range(3):
                for user in ("ann", "bob", "cy", "dee"):
                    resp = await client.get("/", headers={"x-user": user})
                    assert users.setdefault(user, resp.headers["x-site"]) == resp.headers[
                        "x-site"]
            await wait_until(lambda: a.flows.active == 0, "flows ended")
            assert a.flows.outcomes["ok"] == 18


async def test_a_lost_flow_is_retried_on_another_site() -> None:
    async with mem_net() as net:
        a, b, c = await three_sites(net)
        lst = ListenerConfig(key="api", port=1, protocol="http", strategy="priority")
        b.lose = c.lose = 1
        async with front_on(a, lst) as url, httpx.AsyncClient(base_url=url) as client:
            resp = await client.get("/")
            assert resp.status_code == 200
            # the first site lost it, the other one lost it too, then the first served
            assert len(b.heads) + len(c.heads) == 3
            b.lose = c.lose = 5
            resp = await client.get("/")
            assert resp.status_code == 503 and "flow was lost" in resp.text
            await wait_until(lambda: a.flows.active == 0, "flows ended")
