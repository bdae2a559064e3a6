"""Talking to a running router over its control socket (blocking; the CLI is simple)."""

from __future__ import annotations

import errno
import json
import socket
import time
from pathlib import Path
from typing import Any

from router.errors import VanError


class NotRunning(VanError):
    """No router answers on the site's control socket."""


class RequestFailed(VanError):
    """The router refused the request; the message is its reason."""


class ConnectionLost(RequestFailed):
    """The router closed (or broke) the control connection before it answered."""

    def __init__(self, site: str = "") -> None:
        who = f"the router of site {site}" if site else "the router"
        super().__init__(f"{who} closed the control connection without answering "
                         f"(it may be out of file descriptors)")


def call(path: Path, op: str, args: dict[str, Any] | None = None,
         timeout: float = 30.0) -> dict[str, Any]:
    request = json.dumps({"op": op, "args": args or {}}).encode() + b"\n"
    sock = _connect(path, timeout)
    try:
        sock.sendall(request)
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise RequestFailed(f"router did not answer within {timeout:g} s") from None
    except OSError:  # reset, broken pipe, or accepted only to be closed at the fd limit
        raise ConnectionLost() from None
    finally:
        sock.close()
    if not buf:
        raise ConnectionLost()
    try:
        reply = json.loads(buf)
    except ValueError:
        raise RequestFailed("router sent an unreadable reply") from None
    if not isinstance(reply, dict):
        raise RequestFailed("router sent an unreadable reply")
    if not reply.get("ok"):
        raise RequestFailed(str(reply.get("error", "unknown error")))
    return dict(reply)


BUSY_RETRY_S = 5.0  # how long a full backlog (many sitectl at once) is waited out


def _connect(path: Path, timeout: float) -> socket.socket:
    deadline = time.monotonic() + BUSY_RETRY_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise NotRunning(str(path)) from None
        except OSError as exc:
            sock.close()
            # A Unix socket's full backlog says EAGAIN at once: the router is busy
            # answering others, not gone; wait briefly for room.
            if exc.errno == errno.EAGAIN and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            raise RequestFailed(
                f"cannot connect to the router's control socket: {exc.strerror or exc}"
            ) from None
