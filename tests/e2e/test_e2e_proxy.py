"""Links through a real HTTP CONNECT proxy (tinyproxy on loopback, basic auth, CONNECT
allowed to the hub's link port only): redemption and the link go through it and carry a
flow; a proxy that refuses says so in one line; the password shows up nowhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import HashServer, transfer
from tests.support.sites import Site, free_port, site_env, start_sites, wait_for
from tests.support.tinyproxy import Tinyproxy, require_tinyproxy

USER, PASSWORD = "alice", "pw-Zq81x"
MB = 1024 * 1024


class World:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = site_env(work)
        self.hub = Site(work, "hub", self.env).init()
        self.lap = Site(work, "lap", self.env).init()
        self.proxy = Tinyproxy(work, "tinyproxy", connect_ports=(self.hub.link_port,),
                               user=USER, password=PASSWORD).start()
        start_sites(self.hub, self.lap)
        self.tokens = 0

    def token(self) -> Path:
        self.tokens += 1
        path = self.work / f"hub-{self.tokens}.token"
        self.hub.sitectl("token", "issue", "--uses", "1", "-o", str(path))
        return path

    def grants(self) -> str:
        return (self.hub.dir / "grants.json").read_text()

    def stop(self) -> None:
        self.lap.stop()
        self.hub.stop()
        self.proxy.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_tinyproxy()
    w = World(tmp_path_factory.mktemp("proxy"))
    yield w
    w.stop()


def lap_link(w: World) -> dict[str, object]:
    return next(lk for lk in w.lap.state()["links"] if lk["name"] == "hub")


def test_redemption_and_link_go_through_the_proxy_and_carry_a_flow(world: World) -> None:
    w = world
    hub_port = w.hub.link_port
    before = w.proxy.connects(hub_port)
    out = w.lap.sitectl("link", "create", str(w.token()), "--proxy",
                        w.proxy.url(USER, PASSWORD))
    assert "created: up" in out.stdout, out.stdout
    # One CONNECT redeemed the token, one more carries the link.
    assert w.proxy.connects(hub_port) >= before + 2
    assert lap_link(w)["proxy"] == f"http://{USER}:***@127.0.0.1:{w.proxy.port}"
    toml = w.lap.dir / "links" / "hub.toml"
    assert toml.stat().st_mode & 0o777 == 0o600  # it holds the proxy's password

    server = HashServer()
    key, port = "proxied", free_port()
    w.hub.sitectl("connector", "create", key, f"127.0.0.1:{server.port}")
    w.lap.sitectl("listener", "create", key, str(port))
    wait_for(lambda: w.lap.key_reachable(key), what="key reachable through the proxy")
    result = transfer(port, 1, 3 * MB, 3 * MB)
    assert server.results[1].received_hash == result.sent_hash
    assert result.received_hash == server.results[1].sent_hash

    # Only the proxy carries the link: without it the link goes down, and it comes back
    # with the proxy.
    w.proxy.stop()
    wait_for(lambda: lap_link(w)["state"] != "up", what="link down without its proxy")
    wait_for(lambda: f"cannot connect to proxy 127.0.0.1:{w.proxy.port}"
             in str(lap_link(w)["error"]), what="the dial error naming the proxy")
    w.proxy.start()
    wait_for(lambda: w.lap.link_up("hub"), timeout=30, what="link up again through the proxy")

    status = w.lap.sitectl("status").stdout
    assert f"via proxy http://{USER}:***@127.0.0.1:{w.proxy.port}" in status
    for text in (status, w.lap.log_path.read_text(), json.dumps(w.lap.state())):
        assert PASSWORD not in text


def refused(w: World, proxy_url: str, token: Path | None = None) -> str:
    """`link create` through `proxy_url` fails with one line; nothing is spent or saved."""
    token = token or w.token()
    grants = w.grants()
    links = sorted(p.name for p in (w.lap.dir / "links").iterdir())
    result = w.lap.sitectl("link", "create", str(token), "--name", "other",
                           "--proxy", proxy_url, check=False)
    assert result.returncode == 1
    assert sorted(p.name for p in (w.lap.dir / "links").iterdir()) == links
    assert w.grants() == grants  # the token's use was not spent
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert PASSWORD not in result.stderr
    return lines[0]


def test_proxy_without_credentials_answers_407(world: World) -> None:
    line = refused(world, world.proxy.url())
    assert line == (f"sitectl: proxy 127.0.0.1:{world.proxy.port} refused CONNECT: "
                    "407 Proxy Authentication Required")


def test_proxy_with_a_wrong_password_refuses(world: World) -> None:
    # tinyproxy answers a wrong password with 401 (a missing one with 407).
    line = refused(world, world.proxy.url(USER, "wrong"))
    assert line == f"sitectl: proxy 127.0.0.1:{world.proxy.port} refused CONNECT: 401 Unauthorized"


def test_proxy_that_forbids_the_port_answers_403(world: World) -> None:
    w = world
    other = Site(w.work, "other-hub", w.env).init().start()
    try:
        token = w.work / "other.token"
        other.sitectl("token", "issue", "-o", str(token))
        line = refused(w, w.proxy.url(USER, PASSWORD), token)
        assert line == (f"sitectl: proxy 127.0.0.1:{w.proxy.port} refused CONNECT: "
                        "403 Access violation")
    finally:
        other.stop()


def test_router_says_why_its_proxy_refuses(world: World) -> None:
    """A link whose file names a proxy without the password: the dial error is the one
    line the proxy's refusal makes."""
    w = world
    toml = w.lap.dir / "links" / "hub.toml"
    text = toml.read_text()
    w.lap.stop()
    try:
        toml.write_text(text.replace(f"{USER}:{PASSWORD}@", ""))
        w.lap.start()
        wait_for(lambda: "refused CONNECT: 407" in str(lap_link(w)["error"]),
                 what="the 407 in the link's status")
        assert lap_link(w)["error"] == (
            f"127.0.0.1:{w.hub.link_port}: proxy 127.0.0.1:{w.proxy.port} refused CONNECT: "
            "407 Proxy Authentication Required")
    finally:
        w.lap.stop()
        toml.write_text(text)
        w.lap.start()


def test_proxy_from_the_environment(world: World, tmp_path: Path) -> None:
    """`--proxy env`: HTTPS_PROXY for sitectl and the router alike; NO_PROXY exempts."""
    w = world
    env = site_env(tmp_path) | {"HTTPS_PROXY": w.proxy.url(USER, PASSWORD), "NO_PROXY": ""}
    east = Site(tmp_path, "east", env).init().start()
    try:
        before = w.proxy.connects(w.hub.link_port)
        out = east.sitectl("link", "create", str(w.token()), "--proxy", "env")
        assert "created: up" in out.stdout
        assert w.proxy.connects(w.hub.link_port) >= before + 2
        assert (east.dir / "links" / "hub.toml").read_text().count('proxy = "env"') == 1
    finally:
        east.stop()
    # NO_PROXY names the hub: a direct link, the proxy not asked.
    env2 = site_env(tmp_path / "2") | {"HTTPS_PROXY": w.proxy.url(USER, PASSWORD),
                                       "NO_PROXY": "localhost,127.0.0.0/8"}
    south = Site(tmp_path / "2", "south", env2)
    south.dir.parent.mkdir(parents=True, exist_ok=True)
    south.init()
    start_sites(south)
    try:
        before = w.proxy.connects(w.hub.link_port)
        out = south.sitectl("link", "create", str(w.token()), "--proxy", "env")
        assert "created: up" in out.stdout
        assert w.proxy.connects(w.hub.link_port) == before
    finally:
        south.stop()
