"""sitectl's own errors, by exit code."""

from __future__ import annotations

from router.errors import VanError


class UsageError(VanError):
    """Bad arguments from the user (exit 2)."""


class FileProblem(VanError):
    """A file sitectl was asked to read or write cannot be used (exit 1)."""
