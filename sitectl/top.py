"""`sitectl top`: per routing key and serving site, flows/s, active flows, bytes/s each way,
TTFB p50/p95 and error share; then this site's links with RTT and bytes/s.

The router answers counters (the control socket's "top"); rates are the difference of two
answers over the time between them. Redrawn in place every interval with plain ANSI
sequences on the terminal's alternate screen; `q` quits (so does Ctrl-C), and the
terminal is restored however it ends. `--once` prints one frame, for scripts.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TextIO

from sitectl.render import rate, term_text

Sample = tuple[float, dict[str, Any]]  # (monotonic time, the router's answer)
_ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, cursor hidden
_LEAVE = "\x1b[?25h\x1b[?1049l"
_HOME, _CLEAR_LINE, _CLEAR_DOWN = "\x1b[H", "\x1b[K", "\x1b[J"


def _row_id(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["key"], row["role"], row["site"])


def _per_s(now: int, before: int | None, dt: float) -> float:
    """A counter's rate; a counter that went back (it restarted) counts from zero."""
    if before is None or now < before:
        before = 0
    return (now - before) / dt


def frame_data(prev: Sample, cur: Sample) -> dict[str, Any]:
    """The rows and links of a frame, rates taken between two samples."""
    dt = max(cur[0] - prev[0], 1e-3)
    before = {_row_id(r): r for r in prev[1]["rows"]}
    rows = []
    for row in cur[1]["rows"]:
        old = before.get(_row_id(row), {})
        recent = row["recent_flows"]
        rows.append({
            "key": row["key"], "role": row["role"], "site": row["site"],
            "flows_per_s": _per_s(row["flows"], old.get("flows"), dt),
            "active": row["active"],
            "c2s_bytes_per_s": _per_s(row["bytes_c2s"], old.get("bytes_c2s"), dt),
            "s2c_bytes_per_s": _per_s(row["bytes_s2c"], old.get("bytes_s2c"), dt),
            "ttfb_p50_ms": row["ttfb_p50_ms"], "ttfb_p95_ms": row["ttfb_p95_ms"],
            "error_share": row["recent_errors"] / recent if recent else None,
            "flows": row["flows"],
        })
    links_before = {(x["name"], x["direction"]): x for x in prev[1]["links"]}
    links = []
    for link in cur[1]["links"]:
        old = links_before.get((link["name"], link["direction"]), {})
        span = dt
        if link["up_s"] is not None and (old.get("up_s") is None or link["up_s"] < dt):
            old, span = {}, max(min(dt, link["up_s"]), 1e-3)  # came up since: from zero
        links.append({**{k: link[k] for k in ("name", "peer_site", "direction", "state",
                                               "rtt_ms")},
                      "in_bytes_per_s": _per_s(link["bytes_in"], old.get("bytes_in"), span),
                      "out_bytes_per_s": _per_s(link["bytes_out"], old.get("bytes_out"), span)})
    return {"site": cur[1]["site"], "interval_s": round(dt, 3),
            "recent_s": cur[1]["recent_s"], "rows": rows, "links": links}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def render_frame(data: dict[str, Any], width: int = 200, live: bool = False) -> str:
    clock = datetime.now().strftime("%H:%M:%S")
    lines = [f"site {term_text(data['site'])}  {clock}  rates over {data['interval_s']:.1f} s;"
             f" TTFB and errors over the last {data['recent_s']:.0f} s"
             f"{'  (q quits)' if live else ''}",
             "",
             f"{'KEY':<20} {'ROLE':<9} {'SERVED BY':<14} {'FLOWS/S':>8} {'ACTIVE':>6} "
             f"{'C>S':>11} {'S>C':>11} {'TTFB P50':>9} {'P95':>9} {'ERRORS':>6}"]
    for row in data["rows"]:
        share = "-" if row["error_share"] is None else f"{row['error_share'] * 100:.1f}%"
        lines.append(f"{term_text(row['key'])[:20]:<20} {row['role']:<9} "
                     f"{term_text(row['site'])[:14]:<14} {row['flows_per_s']:>8.1f} "
                     f"{row['active']:>6} {rate(row['c2s_bytes_per_s']):>11} "
                     f"{rate(row['s2c_bytes_per_s']):>11} {_ms(row['ttfb_p50_ms']):>9} "
                     f"{_ms(row['ttfb_p95_ms']):>9} {share:>6}")
    if not data["rows"]:
        lines.append("(no flows yet)")
    lines += ["", f"{'LINK':<20}    {'PEER':<14} {'STATE':<10} {'RTT':>9} {'IN':>11} "
                  f"{'OUT':>11}"]
    for link in data["links"]:
        arrow = "->" if link["direction"] == "out" else "<-"
        lines.append(f"{term_text(link['name'])[:20]:<20} {arrow} "
                     f"{term_text(link['peer_site'])[:14]:<14} {term_text(link['state']):<10} "
                     f"{_ms(link['rtt_ms']):>9} {rate(link['in_bytes_per_s']):>11} "
                     f"{rate(link['out_bytes_per_s']):>11}")
    if not data["links"]:
        lines.append("(no links)")
    return "\n".join(line[:width] for line in lines)


class Screen:
    """The terminal while top runs: alternate screen, no cursor, keys read one by one
    (cbreak: Ctrl-C still interrupts). Everything is undone on exit, however it ends."""

    def __init__(self, out: TextIO, keys: TextIO) -> None:
        self.out = out
        self.keys = keys if keys.isatty() else None
        self._saved: list[Any] | None = None

    def __enter__(self) -> Screen:
        if self.keys is not None:
            self._saved = termios.tcgetattr(self.keys.fileno())
            tty.setcbreak(self.keys.fileno())
        self.out.write(_ENTER)
        self.out.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.write(_LEAVE)
        self.out.flush()
        if self.keys is not None and self._saved is not None:
            termios.tcsetattr(self.keys.fileno(), termios.TCSADRAIN, self._saved)

    def draw(self, text: str) -> None:
        size = shutil.get_terminal_size()
        lines = [line[:size.columns] for line in text.split("\n")][:size.lines]
        self.out.write(_HOME + "".join(line + _CLEAR_LINE + "\r\n" for line in lines[:-1])
                       + lines[-1] + _CLEAR_LINE + _CLEAR_DOWN)
        self.out.flush()

    def quit_within(self, seconds: float) -> bool:
        """Wait up to `seconds`; True if `q` was pressed meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.keys is None:
                time.sleep(left)
                return False
            ready, _, _ = select.select([self.keys], [], [], left)
            if ready and "q" in os.read(self.keys.fileno(), 64).decode(errors="ignore").lower():
                return True
        return False


def samples(ask: Callable[[], dict[str, Any]]) -> Iterator[Sample]:
    while True:
        yield time.monotonic(), ask()


def run_top(ask: Callable[[], dict[str, Any]], *, once: bool, interval: float,
            as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """`ask` gets the router's "top" answer. Returns the exit code."""
    source = samples(ask)
    prev = next(source)
    if once:
        time.sleep(interval)
        data = frame_data(prev, next(source))
        if as_json:
            out.write(json.dumps(data, indent=2) + "\n")
        else:
            out.write(render_frame(data) + "\n")
        return 0
    with contextlib.suppress(KeyboardInterrupt), Screen(out, sys.stdin) as screen:
        screen.draw(f"site {term_text(prev[1]['site'])}: measuring...")
        while not screen.quit_within(interval):
            cur = next(source)
            screen.draw(render_frame(frame_data(prev, cur), shutil.get_terminal_size().columns,
                                     live=True))
            prev = cur
    return 0
