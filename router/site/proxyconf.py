"""HTTP CONNECT proxies for links: a link's `proxy` setting and what it resolves to.

A link's `proxy` (its file's `proxy = "..."`, or `sitectl link create --proxy`) is one of

    absent                        dial the peer directly
    "http://[user:pass@]host:port"  always through that proxy (basic auth from the URL)
    "env"                         as the environment of the dialling process says:
                                  HTTPS_PROXY (or https_proxy), except for the hosts
                                  NO_PROXY (or no_proxy) names

Pure: the environment is a parameter. A password never appears in what `shown()`
returns, nor in a repr, so neither logs nor `sitectl status` can leak it.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from router.endpoint import Endpoint
from router.names import InvalidName, shown

PROXY_FROM_ENV = "env"
MAX_PROXY_URL_CHARS = 2048
MAX_NO_PROXY_ENTRIES = 256  # NO_PROXY is read per dial: bound the work a huge one costs
_ENV_PROXY = ("HTTPS_PROXY", "https_proxy")
_ENV_NO_PROXY = ("NO_PROXY", "no_proxy")


class ProxySettingError(InvalidName):
    """A proxy setting that cannot be used; the message says why (never the password)."""


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """A checked http://[user:pass@]host:port."""

    host: str
    port: int
    user: str = ""
    password: str = field(default="", repr=False)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)

    def shown(self) -> str:
        """The URL for logs and status: the password is replaced by ***."""
        auth = f"{self.user}:***@" if self.user or self.password else ""
        return f"http://{auth}{self.endpoint}"

    def authorization(self) -> str | None:
        """The Proxy-Authorization value (basic), or None without credentials."""
        if not (self.user or self.password):
            return None
        raw = f"{self.user}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def _credential(text: str, what: str) -> str:
    value = unquote(text, errors="strict")
    # A control character would end up in a header line (and CR/LF split it).
    if not value.isprintable():
        raise ProxySettingError(f"proxy URL: the {what} holds a control character")
    return value


def parse_proxy_url(text: object) -> ProxyURL:
    """http://[user:pass@]host:port (the scheme may be left out, as in many HTTPS_PROXY
    values). ProxySettingError says what is wrong without quoting a password."""
    if not isinstance(text, str):
        raise ProxySettingError(f"proxy must be a string, got {type(text).__name__}")
    if len(text) > MAX_PROXY_URL_CHARS:
        raise ProxySettingError(f"proxy URL is over {MAX_PROXY_URL_CHARS} characters")
    if not text.isascii() or not text.isprintable():
        raise ProxySettingError("proxy URL must be printable ASCII")
    url = text if "://" in text else "http://" + text
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ProxySettingError("proxy URL is not http://[USER:PASSWORD@]HOST:PORT "
                                "(bad port?)") from None
    if parts.scheme != "http":
        raise ProxySettingError(f"proxy URL scheme {shown(parts.scheme)} is not supported "
                         "(only http://: TLS runs inside the tunnel anyway)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxySettingError("proxy URL must be http://[USER:PASSWORD@]HOST:PORT, nothing after")
    host = parts.hostname or ""
    if port is None:
        raise ProxySettingError(f"proxy URL needs a port, as in http://{host or 'proxy'}:3128")
    try:
        Endpoint(host, port)
    except InvalidName as exc:
        raise ProxySettingError(f"proxy URL: {exc}") from None
    try:
        user = _credential(parts.username or "", "user name")
        password = _credential(parts.password or "", "password")
    except UnicodeDecodeError:
        raise ProxySettingError("proxy URL: the credentials are not UTF-8 once %-decoded") from None
    return ProxyURL(host=host, port=port, user=user, password=password)


def check_proxy_setting(value: object) -> str:
    """A link's `proxy` value if usable ("env" or a proxy URL), else ProxySettingError."""
    if value == PROXY_FROM_ENV:
        return PROXY_FROM_ENV
    parse_proxy_url(value)
    assert isinstance(value, str)
    return value


def _env(environ: Mapping[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        value = environ.get(name)
        if value:
            return value.strip()
    return ""


def bypassed(no_proxy: str, host: str, port: int) -> bool:
    """Whether NO_PROXY exempts host:port: "*", an IP address or CIDR block, a domain
    (".corp" or "corp" or "*.corp": it and every name under it), each optionally with
    ":PORT". Names compare without case; an IPv6 entry goes in brackets with a port."""
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = (
            ipaddress.ip_address(host))
    except ValueError:
        address = None
    for raw in no_proxy.split(",")[:MAX_NO_PROXY_ENTRIES]:
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry, want_port = _entry_port(entry)
        if want_port is not None and want_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        domain = entry.removeprefix("*").removeprefix(".").rstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _entry_port(entry: str) -> tuple[str, int | None]:
    """"host:port" or "[v6]:port" -> (host, port); anything else has no port."""
    if entry.startswith("["):
        host, sep, port = entry[1:].partition("]")
        port = port.removeprefix(":")
        return host, int(port) if port.isdigit() and sep else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None


def proxy_for(setting: str | None, host: str, port: int,
              environ: Mapping[str, str]) -> ProxyURL | None:
    """The proxy to dial host:port through, or None for a direct connection."""
    if setting is None:
        return None
    if setting != PROXY_FROM_ENV:
        return parse_proxy_url(setting)
    url = _env(environ, _ENV_PROXY)
    if not url or bypassed(_env(environ, _ENV_NO_PROXY), host, port):
        return None
    try:
        return parse_proxy_url(url)
    except ProxySettingError as exc:
        raise ProxySettingError(f"HTTPS_PROXY: {exc}") from None


def setting_shown(setting: str | None) -> str | None:
    """A link's proxy setting for status and logs (a password as ***)."""
    if setting is None or setting == PROXY_FROM_ENV:
        return setting
    try:
        return parse_proxy_url(setting).shown()
    except ProxySettingError:
        return "(unusable proxy setting)"
