"""The site configuration: a human-editable TOML file read into frozen dataclasses.

Every value is validated against what the link protocol and the OS accept, so a
router that says "ready" can run with it; an error names the file, the line (where
TOML can tell) and the field, and nothing is changed. Writing goes through tomli_w.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from router.endpoint import Endpoint, is_host
from router.names import NAME_RE, InvalidName
from router.protocol.frames import MAX_FLOW_ID
from router.protocol.messages import (
    MAX_FRAME_BYTES,
    MAX_KEEPALIVE_SECONDS,
    MAX_WINDOW,
    MIN_FRAME_BYTES,
)
from router.routing.choice import STRATEGIES
from router.routing.records import MAX_PRIORITY, MAX_WEIGHT
from router.routing.rules import RouteRule
from router.site.atomic import read_regular, write_atomic
from router.site.errors import ConfigError
from router.site.fields import FieldReader, line_of
from router.site.http_fields import (
    CONNECTOR_PROTOCOLS,
    HTTP_LISTENER_FIELDS,
    LISTENER_PROTOCOLS,
    dump_route,
    host_header,
    http_options,
    protocol,
    route_table,
)

# The routing core refuses a record with more keys than this (RoutingCore's
# max_keys_per_record, which the daemon leaves at its default), for either the keys
# this site serves or the keys it listens for.
MAX_KEYS_PER_SITE = 10_000

KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
ADMIN_BIND = "127.0.0.1"  # the admin port (metrics, probes, console) is local by default


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Named limits, each with its unit in the name."""

    max_frame_bytes: int = 256 * 1024
    flow_window_bytes: int = 1024 * 1024
    max_flows_per_link: int = 10_000
    link_buffer_bytes: int = 4 * 1024 * 1024
    keepalive_interval_s: float = 1.0
    dead_after_s: float = 3.0
    connect_timeout_s: float = 5.0
    open_timeout_s: float = 10.0
    redial_min_s: float = 0.2
    redial_max_s: float = 10.0
    drain_timeout_s: float = 5.0
    max_control_request_bytes: int = 64 * 1024
    routing_refresh_s: float = 30.0
    routing_max_age_s: float = 100.0
    traffic_summary_s: float = 5.0  # how often this router tells the network its load
    flow_records_max: int = 10_000  # ended flows a router keeps; 0: no records
    flow_records_ttl_s: float = 900.0  # ... for this long at most
    # Link client certificates this site issues, and its own server certificate, live this
    # long; their holders renew them two thirds of the way through (30 days).
    link_cert_lifetime_s: float = 30 * 86_400.0
    # HTTP listeners, each client connection (router.adaptors.http.limits.HttpLimits)
    http_max_head_bytes: int = 64 * 1024
    http_max_headers: int = 128
    http_max_request_line_bytes: int = 8192
    http_head_timeout_s: float = 60.0
    http_idle_timeout_s: float = 300.0
    http_max_requests_per_connection: int = 0  # 0: no limit
    http2_max_concurrent_streams: int = 100
    http2_max_frame_bytes: int = 16_384
    http2_stream_window_bytes: int = 256 * 1024
    http2_connection_window_bytes: int = 1024 * 1024
    http2_max_queued_bytes: int = 256 * 1024
    http2_max_queued_control_bytes: int = 1024 * 1024
    http2_reset_burst: int = 200
    http2_resets_per_s: float = 20.0
    http2_control_frame_burst: int = 1000
    http2_control_frames_per_s: float = 100.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    key: str
    host: str = "127.0.0.1"
    port: int
    strategy: str = "balanced"
    protocol: str = "tcp"  # "tcp", or "http": HTTP/1.1 and HTTP/2, routed per request
    # HTTP only:
    retries: int = 2  # attempts on another site when a request was provably not processed
    timeout_s: float = 0.0  # the whole request, retries included; 0: none
    affinity: str = ""  # "header:NAME" or "cookie:NAME": the same value, the same site
    routes: tuple[RouteRule, ...] = ()  # first match wins

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorConfig:
    key: str
    host: str
    port: int
    priority: int = 0
    weight: int = 1
    protocol: str = "tcp"  # "tcp", "http1" or "http2": what the target speaks
    # HTTP only: the Host (or :authority) the target gets instead of the client's, for
    # a backend that serves by name; "" keeps the client's.
    host_header: str = ""

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteConfig:
    name: str
    host: str = "127.0.0.1"
    link_port: int
    bind: str = "0.0.0.0"
    # The HTTP admin server (/metrics, /healthz, /readyz, the console); 0: none. `sitectl
    # init` picks one; a site.toml from before it has none, or says `metrics_port`.
    admin_port: int = 0
    admin_bind: str = ADMIN_BIND
    # Where other sites may dial this one, in order ("host:port"); empty means
    # host:link_port. Set it behind NAT or port forwarding, or for several addresses.
    advertise: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    listeners: tuple[ListenerConfig, ...] = ()
    connectors: tuple[ConnectorConfig, ...] = ()
    # Fields read under their new name (e.g. "metrics_port" as admin_port), for the
    # router to say so once; never written: the next save uses the new name.
    renamed: tuple[str, ...] = ()


_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def admin_url(config: SiteConfig) -> str | None:
    """Where a client on this machine reaches the admin server (a wildcard bind through
    loopback); None if the site has none."""
    if not config.admin_port:
        return None
    host = _LOOPBACK.get(config.admin_bind, config.admin_bind)
    return f"http://{Endpoint(host, config.admin_port)}/"


def _host(reader: FieldReader, key: str, default: Any = ...) -> str:
    value: str = reader.get(key, str, default)
    if not is_host(value):
        raise reader.fail(key, f"{value!r} is not an IP address or host name")
    return value


def _advertise(reader: FieldReader) -> tuple[str, ...]:
    """Kept as written; earlier versions wrote an IPv6 address without brackets."""
    entries = reader.get("advertise", list, [])
    for entry in entries:
        try:
            Endpoint.parse(entry, stored=True)
        except InvalidName as exc:
            raise reader.fail("advertise", str(exc)) from None
    return tuple(entries)


def _routing_key(reader: FieldReader) -> str:
    key: str = reader.get("key", str)
    if not KEY_RE.fullmatch(key):
        raise reader.fail("key", f"{key!r} is not a valid routing key (letters, digits, ._:-)")
    return key


DAY_S = 86_400.0
# (lo, hi) of each limit. Sizes and the keepalive come from what the link protocol
# accepts (HELLO's frame and keepalive bounds, the 31-bit credit window, the flow id
# space each end allocates from); the rest are sane bounds so a typo cannot mean "never".
LIMIT_RANGES: dict[str, tuple[float, float]] = {
    "max_frame_bytes": (MIN_FRAME_BYTES, MAX_FRAME_BYTES),
    "flow_window_bytes": (1, MAX_WINDOW),
    "max_flows_per_link": (1, MAX_FLOW_ID // 2),
    "link_buffer_bytes": (MIN_FRAME_BYTES, 2**30),
    "keepalive_interval_s": (0.01, MAX_KEEPALIVE_SECONDS),
    "dead_after_s": (0.01, DAY_S),
    "connect_timeout_s": (0.01, DAY_S),
    "open_timeout_s": (0.01, DAY_S),
    "redial_min_s": (0.01, DAY_S),
    "redial_max_s": (0.01, DAY_S),
    "drain_timeout_s": (0.01, DAY_S),
    # A real request (a CSR claim, a listener with a long key) is several hundred bytes.
    "max_control_request_bytes": (1024, 16 * 1024 * 1024),
    "routing_refresh_s": (0.01, DAY_S),
    "routing_max_age_s": (0.01, DAY_S),
    "traffic_summary_s": (1.0, 60.0),  # the summaries' own bounds (routing/summary.py)
    # A record is a few hundred bytes: a million is a few hundred MB.
    "flow_records_max": (0, 1_000_000),
    "flow_records_ttl_s": (1.0, 7 * DAY_S),
    # Down to a second for tests of renewal; a site down for longer than the lifetime
    # needs a new token, so real sites want days (the router warns below an hour).
    "link_cert_lifetime_s": (1.0, 3650 * DAY_S),
    # HTTP: a request the listener accepts must fit the message codec between routers
    # (message.MessageLimits: its head twice over, as `forwarded` repeats the authority,
    # and two more headers); the HTTP/2 bounds are RFC 9113's.
    "http_max_head_bytes": (1024, 64 * 1024),
    "http_max_headers": (1, 1000),
    "http_max_request_line_bytes": (64, 64 * 1024),
    "http_head_timeout_s": (0.01, DAY_S),
    "http_idle_timeout_s": (0.01, DAY_S),
    "http_max_requests_per_connection": (0, 2**31 - 1),
    "http2_max_concurrent_streams": (1, 10_000),
    "http2_max_frame_bytes": (16_384, 2**24 - 1),
    "http2_stream_window_bytes": (1024, 2**31 - 1),
    "http2_connection_window_bytes": (65_535, 2**31 - 1),  # no window may start smaller
    "http2_max_queued_bytes": (1024, 2**30),
    "http2_max_queued_control_bytes": (1024, 2**30),
    "http2_reset_burst": (1, 1_000_000),
    "http2_resets_per_s": (0.01, 1_000_000),
    "http2_control_frame_burst": (1, 1_000_000),
    "http2_control_frames_per_s": (0.01, 1_000_000),
}


def _limits(path: Path, text: str, table: Mapping[str, Any]) -> Limits:
    r = FieldReader(path, text, "limits", table)
    defaults = Limits()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Limits):
        kind = float if f.name.endswith("_s") else int
        lo, hi = LIMIT_RANGES[f.name]
        values[f.name] = r.within(f.name, kind, getattr(defaults, f.name), lo, hi)
    r.check_unknown(set(values))
    if values["dead_after_s"] <= values["keepalive_interval_s"]:
        raise r.fail("dead_after_s", "must be greater than keepalive_interval_s")
    if values["redial_max_s"] < values["redial_min_s"]:
        raise r.fail("redial_max_s", "must not be less than redial_min_s")
    if values["routing_max_age_s"] <= 2 * values["routing_refresh_s"]:
        raise r.fail("routing_max_age_s", "must be more than twice routing_refresh_s")
    return Limits(**values)


def listener_from(r: FieldReader, route_base: int = 0) -> ListenerConfig:
    """A [[listener]] table; `route_base` is how many [[listener.route]] tables come
    before its own in the file (so an error in one names its line)."""
    strategy = r.get("strategy", str, "balanced")
    if strategy not in STRATEGIES:
        raise r.fail("strategy", f"{strategy!r} is not one of {', '.join(STRATEGIES)}")
    r.check_unknown({"key", "host", "port", "strategy", "protocol", *HTTP_LISTENER_FIELDS})
    proto = protocol(r, LISTENER_PROTOCOLS)
    routes = r.get("route", list, [])
    if not all(isinstance(x, dict) for x in routes):
        raise r.fail("route", "must be an array of tables ([[listener.route]])")
    readers = [FieldReader(r.path, r.text, "listener.route", x, route_base + i)
               for i, x in enumerate(routes)]
    return ListenerConfig(
        key=_routing_key(r), host=_host(r, "host", "127.0.0.1"), port=r.port("port"),
        strategy=strategy, protocol=proto, **http_options(r, proto, readers),
    )


def connector_from(r: FieldReader) -> ConnectorConfig:
    r.check_unknown({"key", "host", "port", "priority", "weight", "protocol", "host_header"})
    # The ranges a routing record carries: out of them the router could not
    # advertise the key, and would fail at start (or at the live change) instead.
    weight = r.get("weight", int, 1)
    if not 1 <= weight <= MAX_WEIGHT:
        raise r.fail("weight", f"must be from 1 to {MAX_WEIGHT}, got {weight}")
    priority = r.get("priority", int, 0)
    if not 0 <= priority <= MAX_PRIORITY:
        raise r.fail("priority", f"must be from 0 to {MAX_PRIORITY}, got {priority}")
    proto = protocol(r, CONNECTOR_PROTOCOLS)
    return ConnectorConfig(
        key=_routing_key(r), host=_host(r, "host"), port=r.port("port"),
        priority=priority, weight=weight, protocol=proto, host_header=host_header(r, proto),
    )


def services_problem(config: SiteConfig) -> tuple[str, int, str, str] | None:
    """(kind, index, field, why) when the listeners and connectors together are more
    than one routing record can advertise, else None. Shared by parse_config and the
    live changes (which check before anything is bound or saved)."""
    weights: dict[str, int] = {}
    for i, con in enumerate(config.connectors):
        # Several connectors of one key are advertised as one, with their summed weight.
        weights[con.key] = weights.get(con.key, 0) + con.weight
        if weights[con.key] > MAX_WEIGHT:
            return ("connector", i, "weight",
                    f"the weights of key {con.key!r} add up past {MAX_WEIGHT}")
        if len(weights) > MAX_KEYS_PER_SITE:
            return "connector", i, "key", f"more than {MAX_KEYS_PER_SITE} connector keys"
    keys: set[str] = set()
    for i, lst in enumerate(config.listeners):
        keys.add(lst.key)
        if len(keys) > MAX_KEYS_PER_SITE:
            return "listener", i, "key", f"more than {MAX_KEYS_PER_SITE} listener keys"
    return None


def _array(path: Path, text: str, doc: Mapping[str, Any], kind: str) -> list[FieldReader]:
    entries = doc.get(kind, [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: [{kind}] must be an array of tables ([[{kind}]])")
    return [FieldReader(path, text, kind, entry, i) for i, entry in enumerate(entries)]


def _overlap(a: str, b: str) -> bool:
    """Could sockets bound to hosts a and b clash? (A wildcard overlaps everything.)"""
    wild = ("0.0.0.0", "::", "")
    return a == b or a in wild or b in wild


def port_clash(site: SiteConfig, lst: ListenerConfig,
               others: tuple[ListenerConfig, ...]) -> tuple[str, str] | None:
    """(field, why) when `lst` would take a port the site already uses, else None.
    Shared by parse_config and the control socket's listener.create."""
    for x in others:
        if x.port == lst.port and _overlap(x.host, lst.host):
            return "port", f"a listener on {x.endpoint} already exists"
    if lst.port == site.link_port and _overlap(lst.host, site.bind):
        return "port", f"{lst.port} is the site's link_port"
    if lst.port == site.admin_port and _overlap(lst.host, site.admin_bind):
        return "port", f"{lst.port} is the site's admin_port"
    return None


def _admin_port(r: FieldReader) -> tuple[int, str, tuple[str, ...]]:
    """(port, the field it came from, renamed fields): `metrics_port`, its old name, is
    read as admin_port (0 there meant "none", so it is then as if absent)."""
    port = r.port("admin_port", 0, allow_zero=True)
    old = r.port("metrics_port", 0, allow_zero=True)
    if not old:
        return port, "admin_port", ()
    if "admin_port" in r.table:
        raise r.fail("metrics_port", "is the old name of admin_port: keep only admin_port")
    return old, "metrics_port", ("metrics_port",)


def parse_config(path: Path, text: str) -> SiteConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses per nested array or inline table
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    for top in doc:
        if top not in ("site", "limits", "listener", "connector"):
            raise ConfigError(f"{path}:{line_of(text, None, top) or ''} unknown section [{top}]")
    site_table = doc.get("site")
    if not isinstance(site_table, dict):
        raise ConfigError(f"{path}: missing [site] section")
    r = FieldReader(path, text, "site", site_table)
    r.check_unknown({"name", "host", "link_port", "bind", "admin_port", "admin_bind",
                     "metrics_port", "advertise"})
    name = r.get("name", str)
    if not NAME_RE.fullmatch(name):
        raise r.fail("name", f"{name!r} is not a valid site name (letters, digits, ._-)")
    limits_table = doc.get("limits", {})
    if not isinstance(limits_table, dict):
        raise ConfigError(f"{path}: [limits] must be a table")
    listener_readers = _array(path, text, doc, "listener")
    listeners = []
    routes_before = 0
    for lr in listener_readers:
        listeners.append(listener_from(lr, routes_before))
        route = lr.table.get("route")
        routes_before += len(route) if isinstance(route, list) else 0
    connector_readers = _array(path, text, doc, "connector")
    connectors = [connector_from(cr) for cr in connector_readers]
    admin_port, admin_field, renamed = _admin_port(r)
    config = SiteConfig(
        name=name,
        host=_host(r, "host", "127.0.0.1"),
        link_port=r.port("link_port"),
        bind=_host(r, "bind", "0.0.0.0"),
        admin_port=admin_port,
        admin_bind=_host(r, "admin_bind", ADMIN_BIND),
        advertise=_advertise(r),
        limits=_limits(path, text, limits_table),
        listeners=tuple(listeners),
        connectors=tuple(connectors),
        renamed=renamed,
    )
    if config.admin_port == config.link_port:
        raise r.fail(admin_field, f"{config.admin_port} is the site's link_port")
    # Only listeners on the same port can clash: grouped, 10,000 listeners parse in
    # linear time (comparing each with all before it took ~7 s, on every live change).
    by_port: dict[int, list[ListenerConfig]] = {}
    for lst, lr in zip(listeners, listener_readers, strict=True):
        clash = port_clash(config, lst, tuple(by_port.get(lst.port, ())))
        if clash is not None:
            raise lr.fail(*clash)
        by_port.setdefault(lst.port, []).append(lst)
    problem = services_problem(config)
    if problem is not None:
        kind, index, key, why = problem
        readers = listener_readers if kind == "listener" else connector_readers
        raise readers[index].fail(key, why)
    return config


# Far above any real site (10,000 connectors are about 1 MiB), far below what would take
# tomllib minutes or the router's memory.
MAX_CONFIG_BYTES = 8 * 1024 * 1024


def load_config(path: Path) -> SiteConfig:
    try:
        data = read_regular(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 at byte {exc.start}") from None
    return parse_config(path, text)


HEADER = "# vanrouter site configuration. Edit freely; `sitectl` rewrites it atomically.\n"


def dump_config(config: SiteConfig) -> str:
    site: dict[str, Any] = {
        "name": config.name, "host": config.host, "link_port": config.link_port,
        "bind": config.bind, "admin_port": config.admin_port,
        "admin_bind": config.admin_bind,
    }
    if config.advertise:
        site["advertise"] = list(config.advertise)
    parts = [HEADER, tomli_w.dumps({"site": site}),
             tomli_w.dumps({"limits": dataclasses.asdict(config.limits)})]
    # tomli_w writes short arrays of tables inline; people (and line_of) expect one
    # [[listener]] table each, so the header is ours and the body tomli_w's.
    for lst in config.listeners:
        parts.append("[[listener]]\n" + tomli_w.dumps(service_table(lst)) + "".join(
            dump_route(rule, tomli_w.dumps) for rule in lst.routes))
    parts += ["[[connector]]\n" + tomli_w.dumps(service_table(c)) for c in config.connectors]
    return "\n".join(parts)


def service_table(item: ListenerConfig | ConnectorConfig) -> dict[str, Any]:
    """The TOML table of a listener or connector without its routes; the HTTP fields
    only when they are not their defaults, so a TCP service's table stays as it was."""
    table = {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    table.pop("routes", None)
    for f in dataclasses.fields(item):
        if f.name in _HTTP_FIELDS and getattr(item, f.name) == f.default:
            table.pop(f.name, None)
    return table


def listener_table(lst: ListenerConfig) -> dict[str, Any]:
    """The whole [[listener]] table, routes included: what listener_from reads back."""
    table = service_table(lst)
    if lst.routes:
        table["route"] = [route_table(rule) for rule in lst.routes]
    return table


_HTTP_FIELDS = frozenset({"protocol", "retries", "timeout_s", "affinity", "routes",
                          "host_header"})


def save_config(path: Path, config: SiteConfig) -> None:
    text = dump_config(config)
    parse_config(path, text)  # never write what the router would refuse at start
    write_atomic(path, text.encode(), mode=0o644)
