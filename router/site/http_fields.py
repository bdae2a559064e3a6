"""The HTTP parts of site.toml: a listener's protocol, retries, timeout, affinity and
ordered route rules ([[listener.route]]), and a connector's protocol.

One reader for the file, sitectl's arguments and the control socket's requests, so a
bad value gets the same one-line message (file, line, field) everywhere; and the
writer, which puts back only what is set so a TCP service's table is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from router.names import NAME_RE
from router.routing.records import MAX_WEIGHT
from router.routing.rules import MAX_RULES, MAX_SPLIT_SITES, RouteRule
from router.site.fields import FieldReader

LISTENER_PROTOCOLS = ("tcp", "http")
CONNECTOR_PROTOCOLS = ("tcp", "http1", "http2")
HTTP_LISTENER_FIELDS = ("retries", "timeout_s", "affinity", "route")
DEFAULT_RETRIES = 2
MAX_RETRIES = 10
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 0.001, 3600.0
MAX_MATCH_CHARS = 1024  # a path prefix or header value to match

# RFC 9110 token characters; header names are compared lower-case.
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]"
HEADER_RE = re.compile(rf"{_TOKEN}{{1,128}}")
METHOD_RE = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_VISIBLE = re.compile(r"[\x21-\x7e]+")  # no spaces or controls: a path
_FIELD_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")  # a header value
ROUTE_FIELDS = ("path_prefix", "header", "header_value", "header_absent", "method", "site",
                "split")


def protocol(r: FieldReader, choices: tuple[str, ...]) -> str:
    value: str = r.get("protocol", str, "tcp")
    if value not in choices:
        raise r.fail("protocol", f"{value!r} is not one of {', '.join(choices)}")
    return value


# host[:port]: a name or IPv4 address, or an [IPv6] literal (RFC 9110's Host, without
# the userinfo and percent-encoding nobody sends there).
AUTHORITY_RE = re.compile(r"(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._~-]{1,253})(:[0-9]{1,5})?")


def host_header(r: FieldReader, proto: str) -> str:
    """A connector's Host rewrite: what the target gets as Host (or :authority)."""
    value: str = r.get("host_header", str, "")
    if not value:
        return ""
    if proto not in ("http1", "http2"):
        raise r.fail("host_header", f"only an http1 or http2 connector rewrites Host (this "
                     f"one's protocol is {proto!r})")
    if not AUTHORITY_RE.fullmatch(value):
        raise r.fail("host_header", f"{value[:40]!r} is not host[:port] (a name, an IPv4 "
                     "address or an [IPv6] one)")
    _, _, port = value.rpartition("]")[2].partition(":")
    if port and not 1 <= int(port) <= 65535:
        raise r.fail("host_header", f"{port} is not a port")
    return value


def header_name(r: FieldReader, key: str, value: str) -> str:
    if not HEADER_RE.fullmatch(value):
        raise r.fail(key, f"{value[:40]!r} is not a header name (letters, digits, !#$%&'*+.^_`|~-)")
    return value.lower()


def affinity(r: FieldReader) -> str:
    value: str = r.get("affinity", str, "")
    if not value:
        return ""
    kind, sep, name = value.partition(":")
    if not sep or kind not in ("header", "cookie") or not HEADER_RE.fullmatch(name):
        raise r.fail("affinity", f"{value[:40]!r} is not header:NAME or cookie:NAME")
    return f"header:{name.lower()}" if kind == "header" else value


def http_options(r: FieldReader, proto: str, route_readers: list[FieldReader]
                 ) -> dict[str, Any]:
    """retries, timeout_s, affinity and routes of a listener whose protocol is `proto`."""
    if proto != "http":
        for key in HTTP_LISTENER_FIELDS:
            if key in r.table:
                raise r.fail(key, f"only an http listener takes {key} (this one's protocol "
                             f"is {proto!r}; set protocol = \"http\")")
        return {}
    retries = r.get("retries", int, DEFAULT_RETRIES)
    if not 0 <= retries <= MAX_RETRIES:
        raise r.fail("retries", f"must be from 0 to {MAX_RETRIES}, got {retries}")
    timeout = r.get("timeout_s", float, 0.0)
    if timeout != 0 and not MIN_TIMEOUT_S <= timeout <= MAX_TIMEOUT_S:
        raise r.fail("timeout_s", f"must be 0 (none) or from {MIN_TIMEOUT_S:g} to "
                     f"{MAX_TIMEOUT_S:g} seconds, got {timeout:g}")
    if len(route_readers) > MAX_RULES:
        raise r.fail("route", f"more than {MAX_RULES} routes")
    return {"retries": retries, "timeout_s": timeout, "affinity": affinity(r),
            "routes": tuple(route_from(rr) for rr in route_readers)}


def route_from(r: FieldReader) -> RouteRule:
    """One rule: what it matches (all of it must hold) and exactly one action."""
    r.check_unknown(set(ROUTE_FIELDS))
    values: dict[str, Any] = {}
    prefix = r.get("path_prefix", str, None)
    if prefix is not None:
        if not prefix.startswith("/") or len(prefix) > MAX_MATCH_CHARS \
                or not _VISIBLE.fullmatch(prefix):
            raise r.fail("path_prefix", f"{prefix[:40]!r} is not a path (starts with /, "
                         f"no spaces, at most {MAX_MATCH_CHARS} characters)")
        values["path_prefix"] = prefix
    header = r.get("header", str, None)
    value = r.get("header_value", str, None)
    absent = r.get("header_absent", bool, False)
    if header is not None:
        values["header"] = header_name(r, "header", header)
    elif value is not None or absent:
        raise r.fail("header_value" if value is not None else "header_absent",
                     "needs header (the header's name)")
    if value is not None:
        if absent:
            raise r.fail("header_value", "a header cannot have a value and be absent")
        if len(value) > MAX_MATCH_CHARS or not _FIELD_VALUE.fullmatch(value):
            raise r.fail("header_value", f"{value[:40]!r} is not a header value (visible "
                         f"characters, at most {MAX_MATCH_CHARS})")
        values["header_value"] = value
    values["header_absent"] = absent
    method = r.get("method", str, None)
    if method is not None:
        if not METHOD_RE.fullmatch(method.upper()):
            raise r.fail("method", f"{method[:40]!r} is not an HTTP method (e.g. GET)")
        values["method"] = method.upper()
    site, split = r.get("site", str, None), r.get("split", dict, None)
    if (site is None) == (split is None):
        raise r.fail("site" if site is not None else "route",
                     "a route takes exactly one of site or split")
    if site is not None:
        values["site"] = _site_name(r, "site", site)
    else:
        values["split"] = _split(r, split)
    return RouteRule(**values)


def _site_name(r: FieldReader, key: str, name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise r.fail(key, f"{name[:40]!r} is not a valid site name (letters, digits, ._-)")
    return name


def _split(r: FieldReader, split: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    if not 1 <= len(split) <= MAX_SPLIT_SITES:
        raise r.fail("split", f"must name from 1 to {MAX_SPLIT_SITES} sites, got {len(split)}")
    pairs = []
    for name, weight in split.items():
        _site_name(r, "split", name)
        if isinstance(weight, bool) or not isinstance(weight, int) \
                or not 0 <= weight <= MAX_WEIGHT:
            raise r.fail("split", f"{name}'s weight must be an integer from 0 to "
                         f"{MAX_WEIGHT}, got {weight!r}")
        pairs.append((name, weight))
    if not any(w for _, w in pairs):
        raise r.fail("split", "the weights add up to 0")
    return tuple(pairs)


def route_table(rule: RouteRule) -> dict[str, Any]:
    """A rule as its [[listener.route]] table: the fields it sets, in a fixed order."""
    table: dict[str, Any] = {}
    for key in ROUTE_FIELDS:
        value = getattr(rule, key)
        if key == "split":
            if value:
                table[key] = dict(value)
        elif value is not None and value is not False:
            table[key] = value
    return table


def describe_route(rule: RouteRule) -> str:
    """One line for `sitectl route list` and status: match -> action."""
    parts = []
    if rule.path_prefix is not None:
        parts.append(f"path {rule.path_prefix}*")
    if rule.header is not None:
        if rule.header_absent:
            parts.append(f"no {rule.header}")
        elif rule.header_value is not None:
            parts.append(f"{rule.header}: {rule.header_value}")
        else:
            parts.append(f"has {rule.header}")
    if rule.method is not None:
        parts.append(rule.method)
    action = rule.site if rule.site is not None else ", ".join(
        f"{s} {w}" for s, w in rule.split)
    return f"{' and '.join(parts) or 'any request'} -> {action}"


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def dump_route(rule: RouteRule, dumps: Callable[[dict[str, Any]], str]) -> str:
    """[[listener.route]] text. tomli_w would write `split` as a [split] table of its
    own; it is written inline (site names need no escaping beyond quotes)."""
    table = route_table(rule)
    split = table.pop("split", None)
    text = "[[listener.route]]\n" + dumps(table)
    if split is not None:
        inner = ", ".join(f"{_toml_key(s)} = {w}" for s, w in split.items())
        text += f"split = {{ {inner} }}\n"
    return text
