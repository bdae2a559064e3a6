"""The installed package's version, for `sitectl --version` and `python -m router --version`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

DISTRIBUTION = "vanrouter"


def package_version() -> str:
    """From the package metadata (pyproject's version), so there is one place to bump it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class VersionAction(argparse.Action):
    """--version, looked up only when asked: importlib.metadata costs every command
    about 35 ms that argparse's own version action would spend building the parser."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"{DISTRIBUTION} {package_version()}")
        parser.exit()
