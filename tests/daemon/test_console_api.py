"""The console's API on routers in one trio.run (memory links, real TLS, virtual time):
the token (401 without it, in a header or the query; the page loads without it), the
headers of every answer, what a snapshot shows of a line of three sites with a flow
running, a link cut turning down, the event stream and its cap."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing

from router.daemon.console import console_reply
from router.daemon.console.api import MAX_STREAMS, EventStream
from router.daemon.console.snapshot import MAX_FLOWS, MAX_SERVICES
from router.daemon.router import Router
from router.daemon.web import WebRequest, WebResponse
from router.site.config import ConnectorConfig
from tests.support.memnet import Net, Node, converged, echo, mem_net, serves, wait_until


async def get(router: Router, path: str, *, query: dict[str, str] | None = None,
              headers: dict[str, str] | None = None) -> WebResponse:
    handler = router.web.find(path)
    assert handler is not None, path
    return await handler(WebRequest("GET", path, query or {}, headers or {}))


def bearer(router: Router) -> dict[str, str]:
    return {"authorization": f"Bearer {router.console_token}"}


async def snapshot(router: Router) -> dict[str, Any]:
    r = await get(router, "/api/v1/snapshot", headers=bearer(router))
    assert r.status == 200, r.body
    result: dict[str, Any] = json.loads(r.body)
    return result


def header(r: WebResponse, name: str) -> str | None:
    return dict(r.headers).get(name)


async def line(net: Net) -> tuple[Node, Node, Node]:
    """a - b - c, with an echo service "db" at c."""
    net.mem.listen(("db.c", 5432), echo)
    a = await net.add_router("a")
    b = await net.add_router("b")
    c = await net.add_router("c", connectors=(ConnectorConfig(key="db", host="db.c",
                                                              port=5432),))
    net.link(a, b)
    net.link(b, c)
    await wait_until(lambda: converged(a, b, c) and serves(a, "db", "c"), "routes")
    return a, b, c


async def test_the_api_needs_the_token(autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        a = (await net.add_router("a")).router
        token = a.console_token
        assert len(token) >= 40 and token != (await net.add_router("b")).router.console_token
        for path in ("/api/v1/snapshot", "/api/v1/events", "/api/v1/nothing", "/api/"):
            for headers, query in (({}, {}), ({"authorization": "Bearer wrong"}, {}),
                                   ({}, {"token": token[:-1]}), ({}, {"token": ""}),
                                   ({"authorization": token}, {}),  # no scheme
                                   ({}, {"token": token + "x" * 300}),
                                   ({}, {"token": "\u00e9" * 43})):
                r = await get(a, path, headers=headers, query=query)
                assert r.status == 401, (path, headers, query)
                assert r.stream is None
                assert header(r, "www-authenticate") == 'Bearer realm="vanrouter console"'
                assert header(r, "cache-control") == "no-store"
                assert b"sitectl console --url" in r.body
        ok = await get(a, "/api/v1/snapshot", headers=bearer(a))
        assert ok.status == 200 and ok.content_type == "application/json"
        assert header(ok, "cache-control") == "no-store"
        assert "default-src 'none'" in (header(ok, "content-security-policy") or "")
        by_query = await get(a, "/api/v1/snapshot", query={"token": token})
        assert by_query.status == 200
        lower = await get(a, "/api/v1/snapshot", headers={"authorization": f"bearer {token}"})
        assert lower.status == 200
        missing = await get(a, "/api/v1/nothing", headers=bearer(a))
        assert missing.status == 404


async def test_the_page_loads_without_the_token_and_only_from_here(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        a = (await net.add_router("a")).router
        page = await get(a, "/")
        assert page.status == 200 and page.content_type.startswith("text/html")
        csp = header(page, "content-security-policy") or ""
        for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                          "connect-src 'self'", "img-src 'self'", "frame-ancestors 'none'"):
            assert directive in csp
        assert "unsafe" not in csp
        html = page.body.decode()
        assert "<script>" not in html and "style=" not in html  # nothing inline
        for path, kind in (("/console/console.js", "text/javascript"),
                           ("/console/console.css", "text/css"),
                           ("/console/icon.svg", "image/svg+xml")):
            assert f'"{path}"' in html
            r = await get(a, path)
            assert r.status == 200 and r.content_type.startswith(kind) and r.body
            assert header(r, "content-security-policy") == csp
        assert a.web.find("/console/other.js") is None  # no file but these


async def test_a_snapshot_shows_sites_links_services_and_flows(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        a, _b, c = await line(net)
        client = net.client(a, "db")
        await client.send_all(b"x" * 3000)
        got = b""
        while len(got) < 3000:
            got += await client.receive_some()
        # A second snapshot has rates over a window; by then every router told the
        # others its load (traffic summaries, every traffic_summary_s).
        await snapshot(a.router)
        await trio.sleep(a.router.config.limits.traffic_summary_s + 1)
        snap = await snapshot(a.router)
        assert snap["site"] == "a" and snap["version"] == 1
        assert [(s["site"], s["local"], s["reachable"]) for s in snap["sites"]] == [
            ("a", True, True), ("b", False, True), ("c", False, True)]
        edges = {(e["a"], e["b"]): e for e in snap["edges"]}
        assert set(edges) == {("a", "b"), ("b", "c")}
        assert edges["a", "b"]["state"] == "up" and edges["a", "b"]["local"]
        assert edges["b", "c"]["state"] == "up" and not edges["b", "c"]["local"]
        assert edges["b", "c"]["rtt_ms"] is not None  # as b reports it
        assert edges["b", "c"]["b_to_a_bytes_per_s"] is not None
        [mine] = snap["local_links"]
        assert mine["peer_site"] == "b" and mine["state"] == "up"
        assert mine["bytes_out"] > 3000 and mine["out_bytes_per_s"] is not None
        [svc] = snap["services"]
        assert svc["key"] == "db" and svc["path"] == ["a", "b", "c"]
        assert svc["connectors"] == [{"site": "c", "reachable": True}]
        assert {(t["site"], t["role"], t["active"]) for t in svc["traffic"]} == {
            ("a", "listener", 1), ("c", "connector", 1)}
        [here] = svc["here"]
        assert here["role"] == "listener" and here["active"] == 1
        [flow] = snap["flows"]["active"]
        assert flow["routing_key"] == "db" and flow["sites"] == ["a", "b", "c"]
        assert flow["bytes_c2s"] == 3000 and flow["bytes_s2c"] == 3000
        assert flow["end"] is None and flow["listener_site"] == "a"
        # The connector's end at c has the path its OPEN took.
        [far] = (await snapshot(c.router))["flows"]["active"]
        assert far["sites"] == ["a", "b", "c"] and far["role"] == "connector"
        await client.aclose()
        await wait_until(lambda: a.flows.active == 0, "the flow ended")
        await trio.sleep(1)
        snap = await snapshot(a.router)
        assert snap["flows"]["active"] == []
        [rec] = snap["flows"]["recent"]
        assert rec["outcome"] == "ok" and rec["end"] is not None


async def test_a_cut_link_turns_down_everywhere(autojump_clock: trio.testing.MockClock
                                                ) -> None:
    async with mem_net() as net:
        a, b, c = await line(net)
        await snapshot(a.router)
        net.mem.refuse(c.endpoint)  # c is cut off, and b cannot dial it again
        for conn in net.mem.live(c.endpoint):
            conn.cut()
        await trio.sleep(0.5)

        async def state(node: Node, pair: tuple[str, str]) -> str:
            edges = {(e["a"], e["b"]): e for e in (await snapshot(node.router))["edges"]}
            return str(edges[pair]["state"])

        # The router that saw it (its own link), and the one beyond (routing records).
        assert await state(b, ("b", "c")) == "down"
        await trio.sleep(1)
        assert await state(a, ("b", "c")) == "down"
        snap = await snapshot(a.router)
        assert {s["site"]: s["reachable"] for s in snap["sites"]}["c"] is False


async def test_events_stream_snapshots_and_are_capped(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        a = (await net.add_router("a")).router
        first = await get(a, "/api/v1/events", query={"token": a.console_token})
        assert first.status == 200 and first.content_type == "text/event-stream"
        assert header(first, "cache-control") == "no-store"
        stream = first.stream
        assert isinstance(stream, EventStream)
        start = trio.current_time()
        one = await stream.__anext__()
        two = await stream.__anext__()
        assert trio.current_time() - start == 1.0  # one a second
        assert one.startswith(b"retry: ") and b"event: snapshot\ndata: {" in one
        assert two.startswith(b"event: snapshot\ndata: {") and two.endswith(b"\n\n")
        assert json.loads(two.split(b"data: ", 1)[1])["site"] == "a"
        others = []
        for _ in range(MAX_STREAMS - 1):
            r = await get(a, "/api/v1/events", headers=bearer(a))
            assert r.status == 200
            others.append(r.stream)
        refused = await get(a, "/api/v1/events", headers=bearer(a))
        assert refused.status == 503 and refused.stream is None
        assert (await get(a, "/api/v1/snapshot", headers=bearer(a))).status == 200
        await stream.aclose()  # as the admin server does when the client goes
        await stream.aclose()  # (once counts)
        again = await get(a, "/api/v1/events", headers=bearer(a))
        assert again.status == 200 and again.stream is not None
        assert (await get(a, "/api/v1/events", headers=bearer(a))).status == 503
        for s in [*others, again.stream]:
            assert isinstance(s, EventStream)
            await s.aclose()
        assert a.console.streams == 0


async def test_snapshots_are_shared_between_watchers(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        a = (await net.add_router("a")).router
        built = []
        real = a.console._snapshots.build

        def counting(now: float) -> dict[str, Any]:
            built.append(now)
            return real(now)

        a.console._snapshots.build = counting  # type: ignore[method-assign]
        for _ in range(10):
            await snapshot(a)
        assert len(built) == 1
        await trio.sleep(1)
        await snapshot(a)
        assert len(built) == 2


async def test_console_reply_gives_the_link(autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        a = (await net.add_router("a")).router
        reply = console_reply(a)
        assert reply["url"] is None and reply["link"] is None  # no admin port here
        a.admin_url = "http://127.0.0.1:9999/"
        reply = console_reply(a)
        assert reply["link"] == f"http://127.0.0.1:9999/#token={a.console_token}"


async def test_every_sites_flows_are_asked_over_the_links_not_too_often(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        a, b, c = await line(net)
        client = net.client(a, "db")
        await client.send_all(b"x" * 100)
        got = b""
        while len(got) < 100:
            got += await client.receive_some()
        # b is in the middle: no flow ends there, but it can ask a and c for theirs.
        assert (await snapshot(b.router))["flows"]["active"] == []
        r = await get(b.router, "/api/v1/network/flows", headers=bearer(b.router))
        assert r.status == 200 and header(r, "cache-control") == "no-store"
        reply = json.loads(r.body)
        assert reply["missing"] == [] and reply["answered"] == ["a", "b", "c"]
        [flow] = reply["records"]  # a's whole record; c's half of it is left out
        assert flow["listener_site"] == "a" and flow["sites"] == ["a", "b", "c"]
        assert flow["end"] is None and flow["bytes_c2s"] == 100
        # Asked again within NETWORK_FLOWS_EVERY_S: the same answer, no new question.
        again = await get(b.router, "/api/v1/network/flows", headers=bearer(b.router))
        assert again.body == r.body
        assert (await get(b.router, "/api/v1/network/flows")).status == 401
        await client.aclose()
        await wait_until(lambda: a.flows.active == 0, "the flow ended")
        net.mem.refuse(c.endpoint)
        for conn in net.mem.live(c.endpoint):
            conn.cut()
        await trio.sleep(3)
        reply = json.loads((await get(b.router, "/api/v1/network/flows",
                                      headers=bearer(b.router))).body)
        assert [flow["outcome"] for flow in reply["records"]] == ["ok"]
        assert [m["site"] for m in reply["missing"]] == ["c"]


async def test_a_snapshot_stays_small_however_much_there_is(
        autojump_clock: trio.testing.MockClock) -> None:
    async with mem_net() as net:
        keys = tuple(ConnectorConfig(key=f"k{i:03d}", host="nowhere", port=1)
                     for i in range(MAX_SERVICES + 20))
        a = (await net.add_router("a", connectors=keys)).router
        flows = a.flows
        for i in range(MAX_FLOWS * 3):
            entry = flows.begin("k000", "connector", client=f"10.0.0.{i % 250}:{i}")
            if i >= MAX_FLOWS * 2:
                flows.end(entry, "ok")
        snap = await snapshot(a)
        assert len(snap["services"]) == MAX_SERVICES
        assert snap["omitted"]["services"] == 20
        assert len(snap["flows"]["active"]) == MAX_FLOWS
        assert len(snap["flows"]["recent"]) == MAX_FLOWS
        assert snap["flows"]["active_total"] == MAX_FLOWS * 2
        assert snap["flows"]["active"][0]["client"].endswith(f":{MAX_FLOWS * 2 - 1}")
        for entry in list(flows.entries()):
            flows.end(entry, "reset")
