"""The site layer's errors: a bad config value, a site directory problem."""

from __future__ import annotations

from pathlib import Path

from router.errors import VanError

ARGUMENTS = Path("arguments")  # the source of fields that came from a command line


class ConfigError(VanError):
    """A bad config file or value; the message says where and why, `source` which
    file (or ARGUMENTS) it came from."""

    def __init__(self, message: str, source: Path | None = None) -> None:
        super().__init__(message)
        self.source = source


class SiteError(VanError):
    """A site directory problem, with a message for the user."""
