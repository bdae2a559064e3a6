"""The systemd user unit of a site: its name, its text, and reading back whom it serves.

Everything that lands in the unit is checked here. The site dir and the interpreter are
paths a user chose; systemd.syntax(7) reads a quoted ExecStart word with C escapes, then
expands specifiers ("%h") and variables ("$HOME"), so each word is quoted, '\\' and '"'
escaped, and '%' and '$' doubled. A control character (a newline would end the line and
start a directive of its own) or bytes that are not UTF-8 are refused instead.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from router.names import NAME_RE
from sitectl.errors import UsageError

UNIT_PREFIX = "vanrouter-"
# After SIGTERM the router drains for up to drain_timeout_s, then closes its links (1 s)
# and HTTP connections (1 s): the manager must wait longer than that before SIGKILL.
STOP_MARGIN_S = 10
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TIMEOUT_STOP = re.compile(r"^TimeoutStopSec=(\d+)$", re.MULTILINE)
_EXEC_START = re.compile(r"^ExecStart=(.*)$", re.MULTILINE)


class UnitProblem(UsageError):
    """A value cannot go into a unit file."""


def unit_name(site: str) -> str:
    """vanrouter-SITE.service: a site name (letters, digits, '.', '_', '-') is a valid
    unit name as it is."""
    if not NAME_RE.fullmatch(site):
        raise UnitProblem(f"{site!r} is not a valid site name")
    return f"{UNIT_PREFIX}{site}.service"


def unit_dir() -> Path:
    """Where a user's own units go: $XDG_CONFIG_HOME/systemd/user (a relative value is
    ignored, as the XDG spec and systemd do)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    config = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return config / "systemd" / "user"


def quote(word: str, what: str) -> str:
    """One ExecStart word, quoted and escaped per systemd.syntax(7)."""
    if _CONTROL.search(word):
        raise UnitProblem(f"{what} {word!r} holds a newline or another control character, "
                          "which a unit file cannot carry: move it to a plainer path")
    try:
        word.encode("utf-8")
    except UnicodeEncodeError:
        raise UnitProblem(f"{what} {word!r} is not valid UTF-8, which a unit file must "
                          "be: move it to a plainer path") from None
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def exec_words(line: str) -> list[str]:
    """An ExecStart value as written by `quote` back into its words."""
    return shlex.split(line.replace("%%", "%").replace("$$", "$"))


def command(site_dir: Path, python: str | None = None) -> list[str]:
    """What the unit runs: this interpreter (so this venv) running sitectl in the
    foreground; `run` sends READY=1 itself (router.daemon.notify)."""
    return [python or sys.executable, "-m", "sitectl", "--site-dir", str(site_dir), "run"]


def stop_timeout(drain_timeout_s: float) -> int:
    return math.ceil(drain_timeout_s) + STOP_MARGIN_S


def render(site: str, site_dir: Path, *, drain_timeout_s: float,
           python: str | None = None) -> str:
    """The unit's text; UnitProblem if a path cannot be written into it."""
    if not site_dir.is_absolute():
        raise UnitProblem(f"site dir {site_dir} is not an absolute path")
    argv = command(site_dir, python)
    if not Path(argv[0]).is_absolute():
        raise UnitProblem(f"interpreter {argv[0]!r} is not an absolute path")
    words = [quote(argv[0], "interpreter"), *(quote(w, "site dir") for w in argv[1:])]
    return f"""\
# Written by `sitectl service install` for site {site}; `sitectl service uninstall`
# removes it. Install again after changing drain_timeout_s or moving the site or venv.
[Unit]
Description=vanrouter site {site}
StartLimitIntervalSec=120
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart={" ".join(words)}
Environment=PYTHONUNBUFFERED=1
KillMode=mixed
KillSignal=SIGTERM
TimeoutStartSec=60
TimeoutStopSec={stop_timeout(drain_timeout_s)}
Restart=on-failure
RestartSec=2
# 2: a bad site.toml or missing site; restarting would not fix it
RestartPreventExitStatus=2
NoNewPrivileges=yes

[Install]
WantedBy=default.target
"""


@dataclass(frozen=True, slots=True)
class Installed:
    """What an installed unit says about itself."""

    site_dir: Path | None  # None: not a unit this sitectl wrote
    timeout_stop_s: int | None


def read_back(text: str) -> Installed:
    site_dir, timeout = None, None
    found = _EXEC_START.search(text)
    if found:
        try:
            words = exec_words(found.group(1))
        except ValueError:
            words = []
        if "--site-dir" in words[:-1]:
            site_dir = Path(words[words.index("--site-dir") + 1])
    stop = _TIMEOUT_STOP.search(text)
    if stop:
        timeout = int(stop.group(1))
    return Installed(site_dir=site_dir, timeout_stop_s=timeout)
