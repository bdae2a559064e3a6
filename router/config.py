"""The site configuration: a human-editable TOML file read into frozen dataclasses.

Every value is validated; an error names the file, the line (where TOML can tell)
and the field, and nothing is changed. Writing goes through a small dumper for this
fixed schema, so the file stays readable and diff-able.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.atomic import write_atomic

KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
STRATEGIES = ("balanced", "priority", "weighted")


class ConfigError(Exception):
    """A bad config file or value; the message says where and why."""


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


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    key: str
    host: str = "127.0.0.1"
    port: int
    strategy: str = "balanced"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorConfig:
    key: str
    host: str
    port: int
    priority: int = 0
    weight: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteConfig:
    name: str
    host: str = "127.0.0.1"
    link_port: int
    bind: str = "0.0.0.0"
    metrics_port: int = 0
    # Where other sites may dial this one, in order ("host:port"); empty means
    # host:link_port. Set it behind NAT or port forwarding, or for several addresses.
    advertise: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    listeners: tuple[ListenerConfig, ...] = ()
    connectors: tuple[ConnectorConfig, ...] = ()


def _line_of(text: str, section: str | None, key: str) -> int | None:
    """Best-effort line number of `key = ...` (inside `[section]` when given)."""
    current: str | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("["):
            current = line.strip("[] ")
            continue
        if (section is None or current == section) and re.match(rf"{re.escape(key)}\s*=", line):
            return lineno
    return None


class FieldReader:
    """Typed access to one TOML table, raising ConfigError with file/line/field."""

    def __init__(self, path: Path, text: str, section: str, table: Mapping[str, Any]) -> None:
        self.path, self.text, self.section, self.table = path, text, section, table

    def fail(self, key: str, why: str) -> ConfigError:
        line = _line_of(self.text, self.section, key)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{where}: [{self.section}] {key}: {why}")

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        if key not in self.table:
            if default is ...:
                raise self.fail(key, "is required")
            return default
        value = self.table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be {kind.__name__}, got {type(value).__name__}")
        return value

    def port(self, key: str, default: Any = ..., *, allow_zero: bool = False) -> int:
        value: int = self.get(key, int, default)
        if not (0 if allow_zero else 1) <= value <= 65535:
            raise self.fail(key, f"{value} is not a valid port")
        return value

    def positive(self, key: str, kind: type, default: Any) -> Any:
        value = self.get(key, kind, default)
        if value <= 0:
            raise self.fail(key, f"must be positive, got {value}")
        return value

    def check_unknown(self, known: set[str]) -> None:
        for key in self.table:
            if key not in known:
                raise self.fail(key, "unknown field")


def _host(reader: FieldReader, key: str, default: Any = ...) -> str:
    value: str = reader.get(key, str, default)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", value):
            raise reader.fail(key, f"{value!r} is not an IP address or host name") from None
    return value


def _advertise(reader: FieldReader) -> tuple[str, ...]:
    entries = reader.get("advertise", list, [])
    out = []
    for entry in entries:
        host, sep, port = str(entry).rpartition(":")
        if not (isinstance(entry, str) and sep and port.isdigit() and 0 < int(port) < 65536
                and re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", host)):
            raise reader.fail("advertise", f"{entry!r} is not HOST:PORT")
        out.append(entry)
    return tuple(out)


def _routing_key(reader: FieldReader) -> str:
    key: str = reader.get("key", str)
    if not KEY_RE.match(key):
        raise reader.fail("key", f"{key!r} is not a valid routing key (letters, digits, ._:-)")
    return key


def _limits(path: Path, text: str, table: Mapping[str, Any]) -> Limits:
    r = FieldReader(path, text, "limits", table)
    defaults = Limits()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Limits):
        kind = float if f.name.endswith("_s") else int
        values[f.name] = r.positive(f.name, kind, getattr(defaults, f.name))
    r.check_unknown(set(values))
    if values["dead_after_s"] <= values["keepalive_interval_s"]:
        raise r.fail("dead_after_s", "must be greater than keepalive_interval_s")
    if values["routing_max_age_s"] <= 2 * values["routing_refresh_s"]:
        raise r.fail("routing_max_age_s", "must be more than twice routing_refresh_s")
    return Limits(**values)


def listener_from(r: FieldReader) -> ListenerConfig:
    strategy = r.get("strategy", str, "balanced")
    if strategy not in STRATEGIES:
        raise r.fail("strategy", f"{strategy!r} is not one of {', '.join(STRATEGIES)}")
    r.check_unknown({"key", "host", "port", "strategy"})
    return ListenerConfig(
        key=_routing_key(r), host=_host(r, "host", "127.0.0.1"), port=r.port("port"),
        strategy=strategy,
    )


def connector_from(r: FieldReader) -> ConnectorConfig:
    r.check_unknown({"key", "host", "port", "priority", "weight"})
    weight = r.get("weight", int, 1)
    if weight < 1:
        raise r.fail("weight", f"must be at least 1, got {weight}")
    return ConnectorConfig(
        key=_routing_key(r), host=_host(r, "host"), port=r.port("port"),
        priority=r.get("priority", int, 0), weight=weight,
    )


def _array(path: Path, text: str, doc: Mapping[str, Any], kind: str) -> list[FieldReader]:
    entries = doc.get(kind, [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: [{kind}] must be an array of tables ([[{kind}]])")
    return [FieldReader(path, text, kind, entry) for entry in entries]


def parse_config(path: Path, text: str) -> SiteConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for top in doc:
        if top not in ("site", "limits", "listener", "connector"):
            raise ConfigError(f"{path}:{_line_of(text, None, top) or ''} unknown section [{top}]")
    site_table = doc.get("site")
    if not isinstance(site_table, dict):
        raise ConfigError(f"{path}: missing [site] section")
    r = FieldReader(path, text, "site", site_table)
    r.check_unknown({"name", "host", "link_port", "bind", "metrics_port", "advertise"})
    name = r.get("name", str)
    if not NAME_RE.match(name):
        raise r.fail("name", f"{name!r} is not a valid site name (letters, digits, ._-)")
    limits_table = doc.get("limits", {})
    if not isinstance(limits_table, dict):
        raise ConfigError(f"{path}: [limits] must be a table")
    listeners = [listener_from(r) for r in _array(path, text, doc, "listener")]
    connectors = [connector_from(r) for r in _array(path, text, doc, "connector")]
    return SiteConfig(
        name=name,
        host=_host(r, "host", "127.0.0.1"),
        link_port=r.port("link_port"),
        bind=_host(r, "bind", "0.0.0.0"),
        metrics_port=r.port("metrics_port", 0, allow_zero=True),
        advertise=_advertise(r),
        limits=_limits(path, text, limits_table),
        listeners=tuple(listeners),
        connectors=tuple(connectors),
    )


def load_config(path: Path) -> SiteConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    return parse_config(path, text)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _table(values: Mapping[str, object]) -> list[str]:
    return [f"{k} = {_toml_value(v)}" for k, v in values.items()]


def dump_config(config: SiteConfig) -> str:
    lines = ["# vanrouter site configuration. Edit freely; `sitectl` rewrites it atomically.", ""]
    lines += ["[site]"]
    lines += _table({
        "name": config.name, "host": config.host, "link_port": config.link_port,
        "bind": config.bind, "metrics_port": config.metrics_port,
    })
    if config.advertise:
        lines.append("advertise = [" + ", ".join(_toml_value(a) for a in config.advertise) + "]")
    lines += ["", "[limits]"]
    lines += _table(dataclasses.asdict(config.limits))
    for lst in config.listeners:
        lines += ["", "[[listener]]", *_table(dataclasses.asdict(lst))]
    for con in config.connectors:
        lines += ["", "[[connector]]", *_table(dataclasses.asdict(con))]
    return "\n".join(lines) + "\n"


def save_config(path: Path, config: SiteConfig) -> None:
    write_atomic(path, dump_config(config).encode(), mode=0o644)
