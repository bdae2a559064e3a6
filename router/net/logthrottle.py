"""One log line per interval for events that can come in floods (refusals, accept
failures): a flood must not fill the disk or drown the lines that matter."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any


class LogThrottle:
    """Lets one line through per `interval` seconds and counts the ones held back.

    Time is a parameter (`now`), so tests drive it without a clock.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.suppressed = 0
        self._next: float | None = None

    def admit(self, now: float) -> int | None:
        """None if this line should be held back; otherwise how many were held back
        since the last line that got through (which the caller should mention)."""
        if self._next is not None and now < self._next:
            self.suppressed += 1
            return None
        self._next = now + self.interval
        held, self.suppressed = self.suppressed, 0
        return held

    def log(self, logger: logging.Logger, level: int, now: float, msg: str,
            *args: Any, extra: Mapping[str, object] | None = None) -> bool:
        """Log `msg % args` unless held back; True if it was logged. `extra` are fields
        for structured logs (`--log-format json`): link, routing_key, ..."""
        held = self.admit(now)
        if held is None:
            return False
        if held:
            logger.log(level, msg + " (and %d more like it since the last report)", *args, held,
                       extra=extra)
        else:
            logger.log(level, msg, *args, extra=extra)
        return True


class KeyedLogThrottle:
    """A LogThrottle per kind of line, so a flood of one kind does not hide another.

    At most `max_kinds` kinds are tracked (kinds may derive from what a peer sent);
    the rest share one throttle.
    """

    def __init__(self, interval: float, max_kinds: int = 64) -> None:
        self.interval = interval
        self.max_kinds = max_kinds
        self._throttles: dict[str, LogThrottle] = {}
        self._rest = LogThrottle(interval)

    def log(self, kind: str, logger: logging.Logger, level: int, now: float, msg: str,
            *args: Any, extra: Mapping[str, object] | None = None) -> bool:
        throttle = self._throttles.get(kind)
        if throttle is None:
            if len(self._throttles) >= self.max_kinds:
                throttle = self._rest
            else:
                throttle = self._throttles[kind] = LogThrottle(self.interval)
        return throttle.log(logger, level, now, msg, *args, extra=extra)
