"""The installed package's version, for `sitectl --version` and `python -m router --version`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "vanrouter"


def package_version() -> str:
    """From the package metadata (pyproject's version), so there is one place to bump it."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"
