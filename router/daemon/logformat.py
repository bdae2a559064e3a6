"""How the router's log lines look: readable text (the default) or one JSON object per line
(`sitectl run --log-format json`) for log collectors.

A JSON line has `time` (UTC, ISO 8601, milliseconds), `level`, `logger`, `message` and
`site`, plus the fields the log call passed as `extra` (`link`, `peer_site`,
`routing_key`, `flow_id`, ...), and `exc` with the traceback when there is one. Names
and reasons that came from other sites are JSON-escaped like everything else, so no
control character or newline in one can forge or split a line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final

LOG_FORMATS: Final = ("text", "json")
# What every LogRecord has; the rest of its attributes came in through `extra`.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, site: str) -> None:
        super().__init__()
        self.site = site

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "site": self.site,
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_") and name not in line:
                line[name] = value if value is None or isinstance(
                    value, str | int | float | bool) else str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exc"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


def setup_logging(site: str, level: str, fmt: str = "text") -> None:
    """Log to stderr at `level`, as text or as JSON lines (`fmt`, one of LOG_FORMATS)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(site))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s [{site}] %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler])
