"""Typed access to one table of a TOML document: each failure a ConfigError naming the
file, the line (where the text tells) and the field. The config parser and the control
socket's requests read through it."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from router.site.errors import ConfigError


def line_of(text: str, section: str | None, key: str, index: int = 0) -> int | None:
    """Best-effort line number of `key = ...` inside `[section]` (the index-th
    `[[section]]` for an array of tables), or anywhere when section is None."""
    current: str | None = None
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("["):
            current = line.strip("[] ")
            seen[current] = seen.get(current, -1) + 1
            continue
        in_table = section is None or (current == section and seen[current] == index)
        if in_table and re.match(rf"{re.escape(key)}\s*=", line):
            return lineno
    return None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


class FieldReader:
    """Typed access to one TOML table, raising ConfigError with file/line/field."""

    def __init__(self, path: Path, text: str, section: str, table: Mapping[str, Any],
                 index: int = 0) -> None:
        self.path, self.text, self.section, self.table = path, text, section, table
        self.index = index  # which [[section]] of an array of tables this is

    def fail(self, key: str, why: str) -> ConfigError:
        line = line_of(self.text, self.section, key, self.index)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{where}: [{self.section}] {key}: {why}", self.path)

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        if key not in self.table:
            if default is ...:
                raise self.fail(key, "is required")
            return default
        value = self.table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be {kind.__name__}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):  # TOML has nan and inf
            raise self.fail(key, f"must be a finite number, got {value}")
        return value

    def port(self, key: str, default: Any = ..., *, allow_zero: bool = False) -> int:
        value: int = self.get(key, int, default)
        if not (0 if allow_zero else 1) <= value <= 65535:
            raise self.fail(key, f"{value} is not a valid port")
        return value

    def positive(self, key: str, kind: type, default: Any) -> Any:
        value = self.get(key, kind, default)
        if value <= 0:
            raise self.fail(key, f"must be positive, got {value}")
        return value

    def within(self, key: str, kind: type, default: Any, lo: float, hi: float) -> Any:
        """`lo` 0: zero is allowed (it means "none" or "no limit")."""
        value = self.get(key, kind, default) if lo == 0 else self.positive(key, kind, default)
        if not lo <= value <= hi:
            raise self.fail(key, f"must be between {_num(lo)} and {_num(hi)}, got {_num(value)}")
        return value

    def check_unknown(self, known: set[str]) -> None:
        for key in self.table:
            if key not in known:
                raise self.fail(key, "unknown field")
