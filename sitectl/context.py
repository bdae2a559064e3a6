"""What every sitectl command works with: the site the arguments name (`Ctx`, which
calls its router when it runs) and the one way to print a result (`out`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from router.site.directory import Site, resolve_site_dir
from sitectl.client import ConnectionLost, NotRunning, call


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = resolve_site_dir(args.site_dir, args.site)
        self.site = Site(self.root)

    def call(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            return self._call(op, args)
        except NotRunning:
            raise NotRunning(
                f"the router of site {self._name()} is not running (start it with `sitectl run`)"
            ) from None

    def try_call(self, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """Call the router if it runs; None if it does not."""
        try:
            return self._call(op, args)
        except NotRunning:
            return None

    def _call(self, op: str, args: dict[str, Any] | None) -> dict[str, Any]:
        if not self.site.check_control_dir(create=False):
            raise NotRunning(str(self.site.control_path))
        try:
            return call(self.site.control_path, op, args)
        except ConnectionLost:
            raise ConnectionLost(self._name()) from None

    def _name(self) -> str:
        return self.site.config().name if self.site.exists() else str(self.root)


def out(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)
