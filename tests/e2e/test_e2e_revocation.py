"""Revocation with real routers: of three sites linked to a hub, one is revoked. Its link
drops within a second and its flow is reset, it never comes back across restarts of either
router (both logs and statuses say why), nothing is redeemed for it, and the other two keep
serving throughout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import EchoServer, PacedFlow
from tests.support.sites import (
    Site,
    free_port,
    link,
    site_env,
    start_sites,
    wait_for,
)

REASON = "laptop stolen"


class Star:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = site_env(work)
        self.hub = Site(work, "hub", self.env).init()
        self.spokes = {name: Site(work, name, self.env).init() for name in ("a", "b", "c")}
        start_sites(self.hub, *self.spokes.values())
        self.echo = EchoServer()
        self.hub.sitectl("connector", "create", "echo", f"127.0.0.1:{self.echo.port}")
        self.ports: dict[str, int] = {}
        for name, spoke in self.spokes.items():
            link(self.hub, spoke, work)
            self.ports[name] = free_port()
            spoke.sitectl("listener", "create", "echo", str(self.ports[name]))
        for spoke in self.spokes.values():
            wait_for(lambda s=spoke: s.key_reachable("echo"), what="echo reachable")

    def link_of(self, name: str) -> dict[str, object]:
        return next(lk for lk in self.spokes[name].state()["links"] if lk["name"] == "hub")

    def hub_link(self, name: str) -> dict[str, object] | None:
        return next((lk for lk in self.hub.state()["links"] if lk["name"] == f"in:{name}"),
                    None)

    def stop(self) -> None:
        for site in (*self.spokes.values(), self.hub):
            site.stop()
        self.echo.close()


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Star]:
    s = Star(tmp_path_factory.mktemp("revocation"))
    yield s
    s.stop()


def serves(star: Star, name: str) -> bool:
    flow = PacedFlow(star.ports[name])
    flow.finish()
    return not flow.errors and flow.got.hexdigest() == flow.sent.hexdigest()


def test_revoked_site_is_cut_off_and_the_others_keep_serving(star: Star) -> None:
    hub, a = star.hub, star.spokes["a"]
    flows = {name: PacedFlow(star.ports[name]) for name in star.spokes}
    since = {name: star.hub_link(name)["since"] for name in ("b", "c")}  # type: ignore[index]
    wait_for(lambda: all(f.got.digest() != b"" and not f.ended.is_set()
                         for f in flows.values()), what="three flows running")

    out = hub.sitectl("link", "revoke", "a", "--reason", REASON)
    assert "site a revoked: 1 live link(s) closed" in out.stdout
    wait_for(lambda: a.state()["links"][0]["state"] != "up", timeout=1.0,
             what="a's link down within a second")
    # a's flow is reset: its client's read side ends while it is still sending.
    wait_for(flows["a"].ended.is_set, timeout=5, what="a's flow reset")
    flows["a"].finish()

    # b and c never noticed: their flows run on intact, their links never dropped.
    for name in ("b", "c"):
        flows[name].finish()
        assert not flows[name].errors, name
        assert flows[name].got.hexdigest() == flows[name].sent.hexdigest(), name
        now = star.hub_link(name)
        assert now is not None and abs(float(now["since"]) - float(since[name])) < 0.5  # type: ignore[arg-type]

    # a is turned away at every attempt, and told why; so is the hub's log and status.
    text = "site a was revoked by site hub at "
    wait_for(lambda: "site hub refused the link: " + text in str(star.link_of("a")["error"]),
             what="a's next attempt refused, and a told why")
    assert str(star.link_of("a")["error"]).endswith(f": {REASON}")
    assert "site hub refused the link: " + text in a.log_path.read_text()
    assert star.hub_link("a") is None
    [entry] = hub.state()["revoked"]
    assert entry["site"] == "a" and entry["reason"] == REASON and entry["last_refused"]
    wait_for(lambda: text in hub.log_path.read_text(), what="the refusal in the hub's log")
    assert "refused link attempt from" in hub.log_path.read_text()
    listed = json.loads(hub.sitectl("link", "list", "--revoked", "--json").stdout)
    assert [r["site"] for r in listed] == ["a"]
    assert listed[0]["router_ids"] == [a.state()["router_id"]]
    assert "revoked sites: a" in hub.sitectl("status").stdout


def test_it_never_comes_back_across_restarts(star: Star) -> None:
    hub, a = star.hub, star.spokes["a"]
    a.stop()
    a.start()
    wait_for(lambda: "was revoked" in str(star.link_of("a")["error"]), what="a refused again")
    hub.stop()
    # Listed from the file while the router is stopped.
    assert "a " in hub.sitectl("link", "list", "--revoked").stdout
    hub.start()
    for name in ("b", "c"):
        wait_for(lambda n=name: star.spokes[n].link_up("hub"), timeout=30,
                 what=f"{name} back after the hub's restart")
        wait_for(lambda n=name: star.spokes[n].key_reachable("echo"), what="echo again")
        assert serves(star, name)
    wait_for(lambda: (hub.state()["revoked"][0]["last_refused"] or 0) > 0,
             what="a refused by the restarted hub")
    assert not a.link_up("hub") and star.hub_link("a") is None
    assert "was revoked" in str(star.link_of("a")["error"])


def test_nothing_is_redeemed_for_a_revoked_site(star: Star) -> None:
    """Neither a's router with a fresh token (a new key, the same router id), nor a site
    made anew under the name a (a new identity too)."""
    hub, a = star.hub, star.spokes["a"]
    for who in (a, Site(star.work / "again", "a", star.env).init()):
        token = star.work / f"retry-{who.dir.parent.name}.token"
        hub.sitectl("token", "issue", "-o", str(token))
        grants = (hub.dir / "grants.json").read_text()
        result = who.sitectl("link", "create", str(token), "--name", "hub2", check=False)
        assert result.returncode == 1
        assert "refused the token: site a was revoked by site hub at" in result.stderr
        assert (hub.dir / "grants.json").read_text() == grants  # the token is still unused
