"""Unwrapping trio's exception groups at the I/O edge.

Trio nurseries wrap child failures in ExceptionGroup; a link or flow that failed
because the network broke must end with a reason, not take the router down. Anything
that is not a network failure (a bug, a cancellation) still propagates.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from router.protocol import ProtocolError

NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError,
)


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in exc.exceptions:
            out.extend(leaves(sub))
        return out
    return [exc]


def only(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first leaf if every leaf of `exc` is one of `kinds`, else None."""
    found = leaves(exc)
    if found and all(isinstance(e, kinds) for e in found):
        return found[0]
    return None


log = logging.getLogger(__name__)


async def guarded(what: str, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Run one connection's task: a network failure ends it quietly, a bug ends it
    loudly (with the traceback), and neither takes the router down."""
    try:
        await fn(*args)
    except BaseException as exc:
        if not ended_quietly(what, exc):
            raise


def ended_quietly(what: str, exc: BaseException) -> bool:
    """`guarded`'s judgement of a task that raised `exc`: logged and done (True), or to
    propagate (a cancellation, KeyboardInterrupt: False)."""
    if only(exc, NETWORK_ERRORS) is not None:
        log.debug("%s ended: %s", what, exc)
        return True
    if only(exc, (Exception,)) is not None:
        log.exception("%s failed with an internal error", what)
        return True
    return False


def connect_reason(exc: BaseException) -> str:
    """Why a TCP connect failed, e.g. "Connection refused" (trio wraps the real
    errors of its happy-eyeballs attempts in the cause of a generic OSError)."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    for leaf in [exc, *leaves(exc.__cause__)] if exc.__cause__ else [exc]:
        if isinstance(leaf, OSError) and leaf.strerror:
            return leaf.strerror
    return str(exc) or type(exc).__name__
