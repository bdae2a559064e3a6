"""Which address other machines dial this one at: `sitectl init`'s default --host, and
the loopback check behind `token issue`'s warning.

A token carries the issuer's host; with 127.0.0.1 there, a token handed to another
machine points that machine at itself and its redemption fails as "unreachable".
"""

from __future__ import annotations

import ipaddress
import socket
import threading

LOOPBACK = "127.0.0.1"
# Documentation addresses (RFC 5737, RFC 3849): connect() on a UDP socket only asks the
# routing table which source address would reach them; no packet is sent.
_PROBES = ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1"))
FQDN_TIMEOUT_S = 2.0  # a resolver that does not answer must not hang `sitectl init`


def route_address() -> str | None:
    """This machine's address on its default route (IPv4 first), or None."""
    for family, probe in _PROBES:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                address = str(sock.getsockname()[0])
        except OSError:  # no route, or the family is not configured
            continue
        ip = ipaddress.ip_address(address.split("%")[0])
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local):
            return ip.compressed
    return None


def _fqdn_for(address: str) -> str | None:
    name = socket.getfqdn()
    if "." not in name or name.startswith("localhost"):
        return None
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    return name if any(info[4][0] == address for info in infos) else None


def fqdn_resolving_to(address: str, timeout: float = FQDN_TIMEOUT_S) -> str | None:
    """This machine's fully qualified name, if it resolves to `address`; None if not, or
    if the resolver takes longer than `timeout` (it runs in a thread left behind)."""
    found: list[str | None] = [None]

    def look() -> None:
        found[0] = _fqdn_for(address)

    thread = threading.Thread(target=look, daemon=True)
    thread.start()
    thread.join(timeout)
    return found[0]


def default_host() -> tuple[str, str | None]:
    """(host to advertise, a note for the user when it is only loopback)."""
    address = route_address()
    if address is None:
        return LOOPBACK, (f"no default route: advertising {LOOPBACK}, which only this "
                          "machine can dial (give --host ADDRESS for other machines)")
    return fqdn_resolving_to(address) or address, None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, or the name localhost."""
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1
    return ip.is_loopback
