"""HTTP listener and connector configuration: every bad value refused at its line, the
fields dumped back exactly (and a TCP table as it was), and sitectl's HTTP commands,
offline and live through a real router's control socket."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from router.adaptors.http.limits import HttpLimits, http_limits
from router.daemon.identity import Identity
from router.daemon.router import Router
from router.site.config import Limits, SiteConfig, dump_config, parse_config
from router.site.errors import ConfigError
from tests.support.sites import Site, site_env

BASE = """\
[site]
name = "east"
link_port = 55671
[[listener]]
key = "db"
port = 15432
[[listener]]
key = "api"
port = 18080
protocol = "http"
[[listener.route]]
header = "x-canary"
site = "north"
[[connector]]
key = "api"
host = "127.0.0.1"
port = 8080
"""


def edited(old: str, new: str) -> str:
    assert BASE.count(old + "\n") == 1, old
    return BASE.replace(old + "\n", new + "\n")


def api(line: str) -> str:
    return edited('protocol = "http"', 'protocol = "http"\n' + line)


def route(line: str) -> str:
    return edited('site = "north"', 'site = "north"\n' + line)


ROWS = [
    (edited('protocol = "http"', 'protocol = "h2"'), 10, "[listener] protocol",
     "'h2' is not one of tcp, http"),
    (edited('port = 15432', 'port = 15432\nretries = 1'), 7, "[listener] retries",
     "only an http listener takes retries"),
    (edited('port = 15432', 'port = 15432\naffinity = "header:x"'), 7, "[listener] affinity",
     "only an http listener takes affinity"),
    (edited('port = 15432', 'port = 15432\ntimeout_s = 1'), 7, "[listener] timeout_s",
     "only an http listener takes timeout_s"),
    (api("retries = 11"), 11, "[listener] retries", "must be from 0 to 10, got 11"),
    (api("retries = -1"), 11, "[listener] retries", "must be from 0 to 10, got -1"),
    (api('retries = "2"'), 11, "[listener] retries", "must be int, got str"),
    (api("timeout_s = 0.0001"), 11, "[listener] timeout_s", "must be 0 (none) or from 0.001"),
    (api("timeout_s = 3601"), 11, "[listener] timeout_s", "to 3600 seconds, got 3601"),
    (api("timeout_s = inf"), 11, "[listener] timeout_s", "finite number, got inf"),
    (api('affinity = "ip"'), 11, "[listener] affinity", "is not header:NAME or cookie:NAME"),
    (api('affinity = "header:bad name"'), 11, "[listener] affinity", "is not header:NAME"),
    (api("unknown = 1"), 11, "[listener] unknown", "unknown field"),
    (route("path_prefix = \"v2\""), 14, "[listener.route] path_prefix", "is not a path"),
    (route('path_prefix = "/a b"'), 14, "[listener.route] path_prefix", "is not a path"),
    (edited('header = "x-canary"', 'header = "x canary"'), 12, "[listener.route] header",
     "is not a header name"),
    (route('header_value = "1\\u0007"'), 14, "[listener.route] header_value",
     "is not a header value"),
    (route("header_absent = true\nheader_value = \"1\""), 15, "[listener.route] header_value",
     "cannot have a value and be absent"),
    (edited('header = "x-canary"', 'header_value = "1"'), 12, "[listener.route] header_value",
     "needs header"),
    (route('method = "G T"'), 14, "[listener.route] method", "is not an HTTP method"),
    (route("split = { west = 1 }"), 13, "[listener.route] site",
     "exactly one of site or split"),
    (edited('site = "north"', 'split = { west = 0, north = 0 }'), 13, "[listener.route] split",
     "the weights add up to 0"),
    (edited('site = "north"', 'split = { west = -1 }'), 13, "[listener.route] split",
     "west's weight must be an integer from 0 to"),
    (edited('site = "north"', 'split = { "a b" = 1 }'), 13, "[listener.route] split",
     "is not a valid site name"),
    (edited('site = "north"', "split = { " + ", ".join(f"s{i} = 1" for i in range(17)) + " }"),
     13, "[listener.route] split", "from 1 to 16 sites, got 17"),
    (edited('site = "north"', 'site = "no/rth"'), 13, "[listener.route] site",
     "is not a valid site name"),
    (route("color = 1"), 14, "[listener.route] color", "unknown field"),
    (edited('port = 8080', 'port = 8080\nprotocol = "http3"'), 18, "[connector] protocol",
     "'http3' is not one of tcp, http1, http2"),
    (edited('port = 8080', 'port = 8080\nhost_header = "api.internal"'), 18,
     "[connector] host_header", "only an http1 or http2 connector rewrites Host"),
    *((edited('port = 8080', f'port = 8080\nprotocol = "http1"\nhost_header = {bad}'), 19,
       "[connector] host_header", says) for bad, says in (
        ('"a b"', "is not host[:port]"), ('"evil\\r\\nx: 1"', "is not host[:port]"),
        ('"api:99999"', "99999 is not a port"), ('"user@api"', "is not host[:port]"),
        ('"' + "a" * 300 + '"', "is not host[:port]"), ("1", "must be str"))),
]


@pytest.mark.parametrize(("text", "line", "field", "says"), ROWS)
def test_bad_value_is_refused_at_its_line(text: str, line: int, field: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(Path("site.toml"), text)
    message = str(info.value)
    assert message.startswith(f"site.toml:{line}: {field}: "), message
    assert says in message and "\n" not in message


def test_an_error_in_a_later_listeners_route_names_its_line() -> None:
    text = BASE + '[[listener]]\nkey = "web"\nport = 18081\nprotocol = "http"\n' \
        '[[listener.route]]\nsite = "west"\n[[listener.route]]\nsite = "bad site"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(Path("site.toml"), text)
    assert str(info.value).startswith(f"site.toml:{len(text.splitlines())}: "
                                      "[listener.route] site: "), info.value


def test_too_many_routes() -> None:
    text = BASE + "".join('[[listener.route]]\nsite = "west"\n' for _ in range(64))
    with pytest.raises(ConfigError) as info:
        parse_config(Path("site.toml"), text)
    assert "[listener] route: more than 64 routes" in str(info.value)


FULL = BASE.replace('protocol = "http"\n', 'protocol = "http"\nretries = 0\ntimeout_s = 2.5\n'
                    'affinity = "cookie:Session"\nstrategy = "weighted"\n').replace(
    'site = "north"\n', 'site = "north"\n[[listener.route]]\npath_prefix = "/v2/"\n'
    'method = "post"\nheader = "X-Beta"\nheader_absent = true\n'
    'split = { west = 90, "north.eu" = 10, south = 0 }\n') + 'protocol = "http2"\n' \
    'host_header = "[::1]:8443"\n'


def test_round_trips_are_exact() -> None:
    cfg = parse_config(Path("site.toml"), FULL)
    api = cfg.listeners[1]
    assert (api.retries, api.timeout_s, api.affinity) == (0, 2.5, "cookie:Session")
    assert api.routes[1].method == "POST" and api.routes[1].header == "x-beta"
    assert api.routes[1].split == (("west", 90), ("north.eu", 10), ("south", 0))
    assert cfg.connectors[0].protocol == "http2"
    assert cfg.connectors[0].host_header == "[::1]:8443"
    text = dump_config(cfg)
    assert parse_config(Path("site.toml"), text) == cfg
    assert dump_config(parse_config(Path("site.toml"), text)) == text


def test_a_tcp_listener_and_connector_are_written_as_before() -> None:
    cfg = parse_config(Path("site.toml"), BASE)
    text = dump_config(cfg)
    db = text.split("[[listener]]\n")[1]
    assert db == 'key = "db"\nhost = "127.0.0.1"\nport = 15432\nstrategy = "balanced"\n\n'
    con = text.split("[[connector]]\n")[1]
    assert con == 'key = "api"\nhost = "127.0.0.1"\nport = 8080\npriority = 0\nweight = 1\n'


# ---- the HTTP limits of [limits]: each parsed, each bound checked

# (field, a good value other than its default, a bad value, what the message says)
HTTP_LIMITS = [
    ("http_max_head_bytes", 8192, 100, "must be between 1024 and 65536, got 100"),
    ("http_max_headers", 50, 1001, "must be between 1 and 1000, got 1001"),
    ("http_max_request_line_bytes", 4096, 10, "must be between 64 and 65536, got 10"),
    ("http_head_timeout_s", 10.5, 0, "must be positive, got 0.0"),
    ("http_idle_timeout_s", 30.0, 100_000, "must be between 0.01 and 86400, got 100000"),
    ("http_max_requests_per_connection", 1000, -1,
     "must be between 0 and 2147483647, got -1"),
    ("http2_max_concurrent_streams", 250, 10_001, "must be between 1 and 10000, got 10001"),
    ("http2_max_frame_bytes", 1 << 20, 16_383, "must be between 16384 and 16777215, got 16383"),
    ("http2_stream_window_bytes", 65_535, 2**31,
     "must be between 1024 and 2147483647, got 2147483648"),
    ("http2_connection_window_bytes", 4 << 20, 1000,
     "must be between 65535 and 2147483647, got 1000"),
    ("http2_max_queued_bytes", 65_536, 100, "must be between 1024 and 1073741824, got 100"),
    ("http2_max_queued_control_bytes", 65_536, 0, "must be positive, got 0"),
    ("http2_reset_burst", 50, 0, "must be positive, got 0"),
    ("http2_resets_per_s", 5.0, 0.001, "must be between 0.01 and 1000000, got 0.001"),
    ("http2_control_frame_burst", 5000, 0, "must be positive, got 0"),
    ("http2_control_frames_per_s", 500.0, 0.001, "must be between 0.01 and 1000000, got 0.001"),
]


def with_limit(line: str) -> str:
    return BASE.replace("[[listener]]\n", f"[limits]\n{line}\n[[listener]]\n", 1)


def test_every_http_limit_has_a_row_and_the_defaults_are_the_listeners() -> None:
    assert [row[0] for row in HTTP_LIMITS] == [f.name for f in dataclasses.fields(HttpLimits)]
    assert http_limits(Limits()) == HttpLimits()


@pytest.mark.parametrize(("name", "good", "bad", "says"), HTTP_LIMITS)
def test_an_http_limit_is_parsed_and_its_bounds_checked(name: str, good: float, bad: float,
                                                        says: str) -> None:
    cfg = parse_config(Path("site.toml"), with_limit(f"{name} = {good}"))
    assert getattr(cfg.limits, name) == good
    assert getattr(http_limits(cfg.limits), name) == good  # what the listener gets
    assert parse_config(Path("site.toml"), dump_config(cfg)) == cfg
    with pytest.raises(ConfigError) as info:
        parse_config(Path("site.toml"), with_limit(f"{name} = {bad}"))
    assert str(info.value) == f"site.toml:5: [limits] {name}: {says}"
    if not name.endswith("_s"):
        with pytest.raises(ConfigError, match=f"{name}: must be int, got float"):
            parse_config(Path("site.toml"), with_limit(f"{name} = {good}.5"))


def test_no_request_limit_is_zero_and_accepted() -> None:
    cfg = parse_config(Path("site.toml"), with_limit("http_max_requests_per_connection = 0"))
    assert cfg.limits.http_max_requests_per_connection == 0


async def test_the_router_hands_the_site_limits_to_its_http_listener() -> None:
    limits = Limits(http_max_headers=7, http2_max_concurrent_streams=9)
    config = SiteConfig(name="east", link_port=55671, limits=limits)
    router = Router(Identity.generate("east", limits), config)
    assert router.http_frontend.limits == http_limits(limits)
    assert router.http_frontend.limits.http_max_headers == 7


# ---- sitectl, offline and live

@pytest.fixture()
def site(tmp_path: Path) -> Site:
    s = Site(tmp_path, "east", site_env(tmp_path)).init()
    s.sitectl("listener", "create", "api", "18080", "--protocol", "http", "--retries", "3",
              "--timeout", "5s", "--affinity", "header:x-user")
    return s


def _bad(site: Site, *args: str) -> str:
    result = site.sitectl(*args, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def _routes(site: Site) -> list[str]:
    return [r["text"] for r in json.loads(site.sitectl("--json", "route", "list", "api").stdout)]


def test_cli_offline_edits_site_toml(site: Site) -> None:
    site.sitectl("route", "add", "api", "--split", "west=90,north=10")
    site.sitectl("route", "add", "api", "--header", "x-canary=1", "--site", "north")
    site.sitectl("route", "add", "api", "--path-prefix", "/v2/", "--method", "get",
                 "--header", "!x-old", "--site", "north")
    site.sitectl("route", "delete", "api", "1")
    assert _routes(site) == ["x-canary: 1 -> north", "path /v2/* and no x-old and GET -> north"]
    site.sitectl("listener", "set", "api", "--timeout", "250ms", "--retries", "0")
    site.sitectl("connector", "create", "api", "127.0.0.1:8080", "--protocol", "http1",
                 "--host-header", "api.internal")
    cfg = parse_config(Path("site.toml"), (site.dir / "site.toml").read_text())
    api = cfg.listeners[0]
    assert (api.protocol, api.retries, api.timeout_s, api.affinity) == (
        "http", 0, 0.25, "header:x-user")
    assert (cfg.connectors[0].protocol, cfg.connectors[0].host_header) == (
        "http1", "api.internal")


def test_cli_bad_arguments_exit_2_with_one_line(site: Site) -> None:
    before = (site.dir / "site.toml").read_bytes()
    assert "retries: must be from 0 to 10" in _bad(site, "listener", "set", "api",
                                                  "--retries", "11")
    assert "bad --timeout" in _bad(site, "listener", "set", "api", "--timeout", "5 parsecs")
    assert "only an http listener takes retries" in _bad(
        site, "listener", "create", "db", "15432", "--retries", "1")
    assert "exactly one of --site or --split" in _bad(site, "route", "add", "api")
    assert "bad --split" in _bad(site, "route", "add", "api", "--split", "west=x")
    assert "is not a valid site name" in _bad(site, "route", "add", "api", "--site", "a b")
    assert "has no route 3 (it has 0)" in _bad(site, "route", "delete", "api", "3")
    assert "only an http1 or http2 connector rewrites Host" in _bad(
        site, "connector", "create", "api", "127.0.0.1:8080", "--host-header", "x")
    assert "no listener for 'nope'" in _bad(site, "route", "add", "nope", "--site", "x")
    assert (site.dir / "site.toml").read_bytes() == before


def test_live_changes_show_in_status_and_are_saved(site: Site) -> None:
    site.sitectl("listener", "create", "db", "15432")
    site.start()
    try:
        site.sitectl("route", "add", "api", "--header", "x-canary=1", "--site", "north")
        site.sitectl("route", "add", "api", "--split", "west=90,north=10")
        site.sitectl("listener", "set", "api", "--timeout", "1m", "--strategy", "priority")
        assert "is a tcp listener" in site.sitectl("route", "add", "db", "--site", "x",
                                                   check=False).stderr
        assert "must be from 0 to 10" in _bad(site, "listener", "set", "api", "--retries", "99")
        status = site.status()
        api = next(x for x in status["listeners"] if x["key"] == "api")
        assert (api["protocol"], api["retries"], api["timeout_s"], api["strategy"]) == (
            "http", 3, 60.0, "priority")
        assert [(r["number"], r["text"]) for r in api["routes"]] == [
            (1, "x-canary: 1 -> north"), (2, "any request -> west 90, north 10")]
        db = next(x for x in status["listeners"] if x["key"] == "db")
        assert db["protocol"] == "tcp" and "routes" not in db
        text = site.sitectl("status").stdout
        assert "http: retries 3, timeout 60s, affinity header:x-user" in text
        assert "  1. x-canary: 1 -> north" in text
        site.sitectl("route", "delete", "api", "1")
        assert _routes(site) == ["any request -> west 90, north 10"]
    finally:
        site.stop()
    cfg = parse_config(Path("site.toml"), (site.dir / "site.toml").read_text())
    assert cfg.listeners[0].timeout_s == 60.0 and len(cfg.listeners[0].routes) == 1
