"""Readiness for a service manager: sd_notify(3) done by hand, so no new dependency.

systemd (Type=notify) sets $NOTIFY_SOCKET to an AF_UNIX datagram socket: a path, or an
abstract address written with a leading '@'. The router sends "READY=1" once it serves
and "STOPPING=1" when it starts to drain; STATUS= is the line `systemctl status` shows.
Without $NOTIFY_SOCKET (a terminal, a container, the tests) nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

ENV_NOTIFY_SOCKET = "NOTIFY_SOCKET"
_MAX_ADDRESS = 107  # sun_path is 108 bytes with its NUL


def notify_address(value: str) -> str | bytes | None:
    """The sendto address for a $NOTIFY_SOCKET value; None for what we cannot use."""
    if value.startswith("@"):  # abstract namespace: a NUL byte, then the name
        name = b"\0" + value[1:].encode()
        return name if 1 < len(name) <= _MAX_ADDRESS + 1 else None
    if value.startswith("/") and len(value.encode()) <= _MAX_ADDRESS:
        return value
    return None  # e.g. systemd's vsock: addresses, which a user service never gets


def sd_notify(state: str) -> bool:
    """Send `state` ("READY=1\\nSTATUS=...") to the service manager, if there is one.
    Never blocks (a manager that does not read loses the message, not the router) and
    never raises: readiness is information, the router serves either way."""
    value = os.environ.get(ENV_NOTIFY_SOCKET)
    if not value:
        return False
    address = notify_address(value)
    if address is None:
        log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX address: no readiness sent",
                    value[:120])
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", value[:120],
                    exc.strerror or exc)
        return False
    return True
