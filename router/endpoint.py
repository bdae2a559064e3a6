"""Where a router or service is reached: one (host, port), parsed and formatted here only.

    host:port            an IPv4 address or a DNS name
    [v6addr]:port        an IPv6 address, always in brackets when typed or shown

Tokens and link files hold the unbracketed form `v6addr:port` (split at the last colon),
which is what every earlier version wrote and reads: a token's signature covers that text,
so `stored()` keeps writing it and `parse(text, stored=True)` accepts it besides brackets.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from router.names import InvalidName, shown

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})")


def is_host(text: str) -> bool:
    """An IP address (v4 or v6, without brackets) or a DNS name."""
    return _is_ip(text) or _HOSTNAME_RE.fullmatch(text) is not None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_v6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _port(text: str) -> int | None:
    if text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535:
        return int(text)
    return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A checked (host, port): the host an IP address (IPv6 without brackets) or a DNS
    name, the port 1-65535. InvalidName if either is not."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not is_host(self.host):
            value = shown(self.host) if isinstance(self.host, str) else repr(self.host)
            raise InvalidName(f"{value}: bad host (an IP address or DNS name)")
        if type(self.port) is not int or not 1 <= self.port <= 65535:
            raise InvalidName(f"{self.port!r} is not a port (1-65535)")

    @classmethod
    def parse(cls, text: object, *, stored: bool = False) -> Endpoint:
        """"host:port" or "[v6addr]:port". An IPv6 address without brackets is refused
        (is "::1:80" ::1 port 80 or ::1:80 without a port?) unless `stored`: tokens,
        link files and site.toml written by earlier versions hold it so, split at the
        last colon."""
        if not isinstance(text, str):
            raise InvalidName(f"endpoint must be a string \"HOST:PORT\", got {type(text).__name__}")
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep or _port(port) is None:
                raise InvalidName(f"{shown(text)} is not [IPV6]:PORT")
            if not _is_v6(host):
                raise InvalidName(f"{shown(text)}: only an IPv6 address goes in brackets")
            return cls(host, int(port))
        host, sep, port = text.rpartition(":")
        number = _port(port) if sep else None
        if number is None:
            raise InvalidName(f"{shown(text)} is not HOST:PORT")
        if not is_host(host):
            raise InvalidName(f"{shown(text)}: bad host (an IP address or DNS name)")
        if ":" in host and not stored:
            raise InvalidName(f"{shown(text)}: an IPv6 address needs brackets, "
                              f"as in [{host}]:{number}")
        return cls(host, number)

    def __str__(self) -> str:
        """host:port, [v6addr]:port for an IPv6 address: what users type and see."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else self.stored()

    def stored(self) -> str:
        """host:port without brackets, as tokens and link files hold it (see above)."""
        return f"{self.host}:{self.port}"

    def pair(self) -> tuple[str, int]:
        """(host, port), for the socket calls and the fields that still hold pairs."""
        return self.host, self.port


def parse_endpoint(text: object) -> tuple[str, int]:
    """A stored endpoint (`Endpoint.parse(text, stored=True)`) as a (host, port) pair."""
    return Endpoint.parse(text, stored=True).pair()
