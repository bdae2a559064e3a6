"""Config values that once passed validation and then broke every link or flow while
the router said "ready": each is refused, naming the file, the line of the table at
fault and the field. Most rows in-process through parse_config; a few end to end
through `python -m router` and `sitectl run`, which must exit 2 and change nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from router.site.config import Limits, parse_config
from router.site.errors import ConfigError
from tests.support.sites import Site, site_env

BASE = """\
# vanrouter site configuration
[site]
name = "west"
link_port = 55671
admin_port = 9100
[limits]
keepalive_interval_s = 1.0
[[listener]]
key = "db"
port = 15432
strategy = "balanced"
[[listener]]
key = "web"
port = 18080
strategy = "balanced"
"""
LIMITS_LINE = 7  # keepalive_interval_s; rows add their key on the line after it
SECOND_LISTENER = 12  # its [[listener]] header


def edited(old: str, new: str) -> str:
    """BASE with the one line `old` replaced by `new` (which may be several lines)."""
    assert BASE.count(old + "\n") == 1, old
    return BASE.replace(old + "\n", new + "\n")


def limit(line: str) -> str:
    return edited("keepalive_interval_s = 1.0", "keepalive_interval_s = 1.0\n" + line)


def second(old: str, new: str) -> str:
    """Edit a line of the second [[listener]] only."""
    head, sep, tail = BASE.partition('key = "web"\n')
    assert tail.count(old + "\n") == 1 or old == 'key = "web"', old
    if old == 'key = "web"':
        return head + new + "\n" + tail
    return head + sep + tail.replace(old + "\n", new + "\n")


ROWS = [
    # (site.toml, line, "[section] field", what the message says)
    (limit("max_frame_bytes = 100"), 8, "[limits] max_frame_bytes", "between 1024 and"),
    (limit("max_frame_bytes = 100000000"), 8, "[limits] max_frame_bytes", "got 100000000"),
    (edited("keepalive_interval_s = 1.0", "keepalive_interval_s = 5000.0\ndead_after_s = 9000.0"),
     LIMITS_LINE, "[limits] keepalive_interval_s", "between 0.01 and 3600"),
    (limit("dead_after_s = inf"), 8, "[limits] dead_after_s", "finite number, got inf"),
    (limit("connect_timeout_s = nan"), 8, "[limits] connect_timeout_s", "finite number, got nan"),
    (limit("open_timeout_s = -inf"), 8, "[limits] open_timeout_s", "finite number, got -inf"),
    (limit("flow_window_bytes = 3000000000"), 8, "[limits] flow_window_bytes",
     "between 1 and 2147483647, got 3000000000"),
    (limit("redial_min_s = 5.0\nredial_max_s = 1.0"), 9, "[limits] redial_max_s",
     "must not be less than redial_min_s"),
    (limit("max_control_request_bytes = 1"), 8, "[limits] max_control_request_bytes",
     "between 1024 and"),
    (limit("max_flows_per_link = 0"), 8, "[limits] max_flows_per_link", "must be positive"),
    (limit("dead_after_s = 1.0"), 8, "[limits] dead_after_s",
     "must be greater than keepalive_interval_s"),
    (second("port = 18080", "port = 15432"), 14, "[listener] port",
     "a listener on 127.0.0.1:15432 already exists"),
    (second("port = 18080", "port = 55671"), 14, "[listener] port", "is the site's link_port"),
    (second("port = 18080", "port = 9100"), 14, "[listener] port", "is the site's admin_port"),
    (second('key = "web"', 'key = "web"\nhost = "0.0.0.0"').replace("18080", "15432"), 15,
     "[listener] port", "a listener on 127.0.0.1:15432 already exists"),
    (edited("admin_port = 9100", "admin_port = 55671"), 5, "[site] admin_port",
     "is the site's link_port"),
    (edited("admin_port = 9100", "metrics_port = 55671"), 5, "[site] metrics_port",
     "is the site's link_port"),  # its old name: the message names the line it is on
    (edited("admin_port = 9100", "admin_port = 9100\nmetrics_port = 9101"), 6,
     "[site] metrics_port", "is the old name of admin_port: keep only admin_port"),
    (edited("admin_port = 9100", 'admin_bind = "not a host!"'), 5, "[site] admin_bind",
     "is not an IP address or host name"),
    # An error in the second [[listener]] names its line, not the first one's.
    (second('strategy = "balanced"', 'strategy = "random"'), 15, "[listener] strategy",
     "'random' is not one of"),
    (second('key = "web"', 'key = "bad key"'), 13, "[listener] key",
     "is not a valid routing key"),
    (second("port = 18080", "port = 0"), 14, "[listener] port", "0 is not a valid port"),
]


@pytest.mark.parametrize(("text", "line", "field", "says"), ROWS)
def test_bad_value_is_refused_at_its_line(text: str, line: int, field: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(Path("site.toml"), text)
    message = str(info.value)
    assert message.startswith(f"site.toml:{line}: {field}: "), message
    assert says in message and "\n" not in message


def _limit_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Limits)]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+inf"])
@pytest.mark.parametrize("name", _limit_fields())
def test_no_limit_takes_nan_or_infinity(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(Path("site.toml"), edited("keepalive_interval_s = 1.0", f"{name} = {value}"))
    message = str(info.value)
    assert message.startswith(f"site.toml:{LIMITS_LINE}: [limits] {name}: "), message
    expected = "finite number" if name.endswith("_s") else "must be int, got float"
    assert expected in message


def test_the_defaults_and_the_edges_of_each_range_are_accepted() -> None:
    parse_config(Path("site.toml"), BASE)
    edges = "\n".join([
        "max_frame_bytes = 1024", "flow_window_bytes = 2147483647",
        "max_control_request_bytes = 1024", "redial_min_s = 1.0", "redial_max_s = 1.0",
    ])
    cfg = parse_config(Path("site.toml"), limit(edges))
    assert cfg.limits.max_frame_bytes == 1024 and cfg.limits.flow_window_bytes == 2**31 - 1
    # The same port on another address is no clash.
    cfg = parse_config(Path("site.toml"), second('key = "web"', 'key = "web"\nhost = "127.0.0.2"')
                       .replace("port = 18080", "port = 15432"))
    assert {(x.host, x.port) for x in cfg.listeners} == {("127.0.0.1", 15432),
                                                          ("127.0.0.2", 15432)}


# ---- end to end: the real commands refuse to start, exit 2, and change nothing

E2E_ROWS = [
    ("max_frame_bytes = 100", "[limits] max_frame_bytes", "between 1024 and"),
    ("dead_after_s = inf", "[limits] dead_after_s", "finite number, got inf"),
    ("flow_window_bytes = 3000000000", "[limits] flow_window_bytes", "between 1 and"),
    ("LISTENER_ON_LINK_PORT", "[listener] port", "is the site's link_port"),
    ('name = "east"', "[site] name",
     "'east' does not match ca.crt and router.crt (the router certificate is for 'west')"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    tmp = tmp_path_factory.mktemp("table")
    s = Site(tmp, "west", site_env(tmp)).init()
    s.sitectl("listener", "create", "db", "15432")  # router not running: saved
    s.sitectl("listener", "create", "web", "18080")
    return s


def _break(text: str, edit: str, link_port: int) -> tuple[str, str]:
    """The site.toml text with `edit` applied, and the edited line's text."""
    if edit == "LISTENER_ON_LINK_PORT":  # the second [[listener]] moves to the link port
        head, _, tail = text.rpartition("port = 18080\n")
        return head + f"port = {link_port}\n" + tail, f"port = {link_port}"
    key = edit.partition(" =")[0]  # the written file has every key: change its value
    lines = [edit if line.startswith(f"{key} = ") else line for line in text.splitlines()]
    assert edit in lines, edit
    return "\n".join(lines) + "\n", edit


@pytest.mark.parametrize("how", ["python -m router", "sitectl run"])
@pytest.mark.parametrize(("edit", "field", "says"), E2E_ROWS)
def test_router_refuses_to_start(site: Site, how: str, edit: str, field: str,
                                 says: str) -> None:
    config = site.dir / "site.toml"
    good = config.read_text()
    bad, line_text = _break(good, edit, site.link_port)
    config.write_text(bad)
    try:
        line = bad.splitlines().index(line_text) + 1
        before = {p.name: p.read_bytes() for p in site.dir.iterdir() if p.is_file()}
        if how == "sitectl run":
            result = site.sitectl("run", check=False, timeout=30)
        else:
            result = site.run_router(timeout=30)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"router: {config}:{line}: {field}: "), result.stderr
        assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert {p.name: p.read_bytes() for p in site.dir.iterdir() if p.is_file()} == before
        assert not (site.dir / "run" / "router.pid").exists()
    finally:
        config.write_text(good)


def test_listener_create_applies_the_same_port_rules(site: Site) -> None:
    config = site.dir / "site.toml"
    before = config.read_bytes()
    offline = site.sitectl("listener", "create", "x", str(site.link_port), check=False)
    # A clash is a bad argument, exit 2, running or not (it was 1: reported as a save
    # failure offline, as the router's refusal live).
    assert offline.returncode == 2 and offline.stderr.count("\n") == 1, offline.stderr
    assert f"[listener] port: {site.link_port} is the site's link_port" in offline.stderr
    site.start()
    try:
        online = site.sitectl("listener", "create", "x", str(site.link_port), check=False)
        assert online.returncode == 2 and online.stderr.count("\n") == 1, online.stderr
        assert f"[listener] port: {site.link_port} is the site's link_port" in online.stderr
        taken = site.sitectl("listener", "create", "x", "15432", check=False)
        assert "[listener] port: a listener on 127.0.0.1:15432 already exists" in taken.stderr
        assert [x["key"] for x in site.status()["listeners"]] == ["db", "web"]
    finally:
        site.stop()
    assert config.read_bytes() == before
