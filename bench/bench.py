"""Benchmark: the same loads, direct vs. through two routers vs. through stunnel (mTLS).

Run from the repository root:  .venv/bin/python bench/bench.py [--quick]
See bench/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from loads import (
    LoadError,
    RssSampler,
    connection_rate,
    echo_check,
    iperf3_mbps,
    percentile,
    ping_pong_us,
)
from numbers_fmt import fmt, fmt_ratio, ratio
from paths import ECHO_SERVER, RouterPair, SetupError, StunnelPair

from tests.support.sites import (
    Process,
    free_port,
    log_tail,
    port_open,
    rss_kib,
    site_env,
    wait_for,
)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.json"
PATHS = ("direct", "router", "stunnel")
BASELINE = "baseline"  # the router path again, from another checkout's code (--baseline DIR)


@dataclass(frozen=True)
class Settings:
    reps: int
    iperf_seconds: float
    conn_seconds: float
    conn_concurrency: int
    rtt_rounds: int


FULL = Settings(reps=3, iperf_seconds=3, conn_seconds=2.5, conn_concurrency=4, rtt_rounds=2000)
QUICK = Settings(reps=1, iperf_seconds=1, conn_seconds=1, conn_concurrency=4, rtt_rounds=500)


@dataclass
class Metric:
    label: str
    unit: str
    higher_is_better: bool
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, path: str, value: float) -> None:
        self.samples.setdefault(path, []).append(value)

    def median(self, path: str) -> float | None:
        values = self.samples.get(path)
        return statistics.median(values) if values else None


def new_metrics() -> dict[str, Metric]:
    return {
        "tput_1": Metric("throughput, 1 flow", "MB/s", True),
        "tput_8": Metric("throughput, 8 flows", "MB/s", True),
        "conn_rate": Metric("new connections", "conn/s", True),
        "rtt_p50": Metric("1-byte RTT p50", "us", False),
        "rtt_p99": Metric("1-byte RTT p99", "us", False),
        "rss_idle": Metric("RSS idle (2 procs)", "MiB", False),
        "rss_loaded": Metric("RSS max loaded (2 procs)", "MiB", False),
    }


# A load takes the entry ports of a path ({"iperf": port, "echo": port}) and
# returns metric values.
Load = Callable[[dict[str, int]], dict[str, float]]


def make_loads(s: Settings, iperf3: str) -> dict[str, Load]:
    def tput(streams: int, key: str) -> Load:
        return lambda ports: {key: iperf3_mbps(iperf3, ports["iperf"], s.iperf_seconds, streams)}

    def conns(ports: dict[str, int]) -> dict[str, float]:
        return {"conn_rate": connection_rate(ports["echo"], s.conn_seconds, s.conn_concurrency)}

    def rtt(ports: dict[str, int]) -> dict[str, float]:
        samples = ping_pong_us(ports["echo"], s.rtt_rounds)
        return {"rtt_p50": percentile(samples, 50), "rtt_p99": percentile(samples, 99)}

    return {"tput_1": tput(1, "tput_1"), "tput_8": tput(8, "tput_8"),
            "conn_rate": conns, "rtt": rtt}


@dataclass
class Bench:
    settings: Settings
    root: Path
    stack: ExitStack
    notes: list[str] = field(default_factory=list)
    entries: dict[str, dict[str, int]] = field(default_factory=dict)
    logs: dict[str, dict[str, Path]] = field(default_factory=dict)
    pids: dict[str, dict[str, int]] = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=new_metrics)
    extra: dict[str, Any] = field(default_factory=dict)

    # --- setup -----------------------------------------------------------

    def start_servers(self, iperf3: str) -> dict[str, int]:
        targets = {"iperf": free_port(), "echo": free_port()}
        servers = {
            "iperf3-server": [iperf3, "-s", "-B", "127.0.0.1", "-p", str(targets["iperf"])],
            "echo-server": [sys.executable, ECHO_SERVER,
                            str(targets["echo"])],
        }
        server_logs: dict[str, Path] = {}
        for name, argv in servers.items():
            svc = Process(name, argv, self.root / f"{name}.log")
            self.stack.callback(svc.stop)
            server_logs[name] = svc.log
        for port in targets.values():
            wait_for(partial(port_open, port), 15, f"server port {port}", step=0.1)
        self.entries["direct"] = targets
        self.logs["direct"] = server_logs
        return targets

    def start_router(self, targets: dict[str, int], sitectl: str) -> None:
        pair = RouterPair(self.root / "sites", sitectl, site_env(self.root), self.stack)
        pair.root.mkdir()
        try:
            pair.start(targets)
            echo_check(pair.ports["echo"])
        finally:
            self.logs["router"] = pair.logs()
        self.entries["router"] = pair.ports
        self.pids["router"] = {f"router-{site}": pid for site, pid in pair.pids.items()}
        self.extra["router_pair"] = pair

    def start_baseline(self, targets: dict[str, int], sitectl: str, code_dir: Path) -> None:
        """The router path with sitectl and both routers from `code_dir`'s code."""
        env = site_env(self.root / "baseline")
        env["PYTHONPATH"] = str(code_dir)
        env["PYTHONPYCACHEPREFIX"] = str(self.root / "baseline" / "pycache")  # DIR stays as is
        probe = subprocess.run(
            [sys.executable, "-c", "import router, sitectl; print(router.__file__)"],
            env=env, cwd=str(code_dir), capture_output=True, text=True, timeout=30)
        imported = Path(probe.stdout.strip() or "?").resolve()
        if probe.returncode != 0 or not imported.is_relative_to(code_dir):
            raise SetupError(f"baseline: {code_dir} does not provide the router package "
                             f"(imported {imported}): {probe.stderr.strip()}")
        print(f"baseline: routers import {imported}", flush=True)
        self.extra["baseline_router_module"] = str(imported)
        pair = RouterPair(self.root / "baseline-sites", sitectl, env, self.stack,
                          code_dir=code_dir)
        pair.root.mkdir()
        try:
            pair.start(targets)
            echo_check(pair.ports["echo"])
        finally:
            self.logs[BASELINE] = pair.logs()
        self.entries[BASELINE] = pair.ports
        self.pids[BASELINE] = {f"baseline-{site}": pid for site, pid in pair.pids.items()}
        self.extra["baseline_pair"] = pair

    def start_stunnel(self, targets: dict[str, int]) -> None:
        binary = shutil.which("stunnel4") or shutil.which("stunnel")
        if binary is None:
            self.note("stunnel not found (apt-get install -y stunnel4): stunnel column skipped")
            return
        pair = StunnelPair(self.root / "stunnel", binary, self.stack)
        pair.root.mkdir()
        try:
            pair.start(targets)
            echo_check(pair.ports["echo"])
        except (SetupError, LoadError, TimeoutError, OSError) as exc:
            self.note(f"stunnel setup failed, column skipped: {exc}")
            self.print_logs(pair.logs())
            return
        self.entries["stunnel"] = pair.ports
        self.logs["stunnel"] = pair.logs()
        self.pids["stunnel"] = {f"stunnel-{side}": pid for side, pid in pair.pids.items()}

    # --- measuring -------------------------------------------------------

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"NOTE: {text}", flush=True)

    def print_logs(self, logs: dict[str, Path]) -> None:
        for name, path in logs.items():
            print(f"--- tail of {name} log ({path.name}) ---\n{log_tail(path)}", flush=True)

    def sample_idle_rss(self) -> None:
        for path, pids in self.pids.items():
            kib = [rss_kib(pid) or 0 for pid in pids.values()]
            self.metrics["rss_idle"].add(path, sum(kib) / 1024)

    def run_all(self, loads: dict[str, Load]) -> None:
        paths = [p for p in (*PATHS, BASELINE) if p in self.entries]
        all_pids = {name: pid for pids in self.pids.values() for name, pid in pids.items()}
        with RssSampler(all_pids) as sampler:
            for rep in range(self.settings.reps):
                order = paths[rep % len(paths):] + paths[:rep % len(paths)]
                for load_name, load in loads.items():
                    for path in order:
                        self.run_one(rep, load_name, load, path)
        for path, pids in self.pids.items():
            loaded = sum(sampler.max_kib.get(name, 0) for name in pids) / 1024
            self.metrics["rss_loaded"].add(path, loaded)

    def run_one(self, rep: int, load_name: str, load: Load, path: str) -> None:
        label = f"[{rep + 1}/{self.settings.reps}] {load_name:<9} {path:<8}"
        try:
            values = load(self.entries[path])
        except (LoadError, OSError, KeyError, ValueError) as exc:
            print(f"{label} FAILED: {exc}", flush=True)
            self.note(f"{load_name} over {path} failed (rep {rep + 1}): {exc}")
            self.print_logs(self.logs.get(path, {}))
            return
        for key, value in values.items():
            self.metrics[key].add(path, value)
        shown = "  ".join(f"{k}={v:.1f}" for k, v in values.items())
        print(f"{label} {shown}", flush=True)
        time.sleep(0.3)  # let sockets and the iperf3 server settle between runs

    def check_router_logs(self) -> None:
        for name, path in [*self.logs.get("router", {}).items(),
                           *((f"baseline-{n}", p) for n, p in self.logs.get(BASELINE, {}).items())]:
            text = path.read_text(errors="replace")
            bad = [ln for ln in text.splitlines()
                   if " ERROR " in ln or " WARNING " in ln or "Traceback" in ln]
            if bad:
                self.note(f"router {name} log has {len(bad)} warning/error lines during the run; "
                          f"first: {bad[0][:200]}")

    def record_router_counters(self, which: str = "router") -> None:
        pair = self.extra.get(f"{which}_pair")
        if not isinstance(pair, RouterPair):
            return
        try:
            self.extra[f"{which}_flows"] = {site: pair.status(site).get("flows")
                                            for site in pair.sites}
        except (SetupError, ValueError) as exc:
            self.note(f"could not read {which} router status after the run: {exc}")
            return
        for site, flows in self.extra[f"{which}_flows"].items():
            if isinstance(flows, dict) and flows.get("refused"):
                self.note(f"{which} router {site} refused {flows['refused']} flows")


# --- reporting -----------------------------------------------------------------


RATIOS = (("router", "direct"), ("stunnel", "direct"), ("router", "stunnel"))
BASELINE_RATIOS = (("router", BASELINE),)


def columns(baseline: bool) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The paths and ratios shown: the baseline ones only with --baseline."""
    if baseline:
        return (*PATHS, BASELINE), (*RATIOS, *BASELINE_RATIOS)
    return PATHS, RATIOS


def summary(metrics: dict[str, Metric], baseline: bool = False) -> dict[str, Any]:
    paths, ratios = columns(baseline)
    out: dict[str, Any] = {}
    for key, m in metrics.items():
        med = {p: m.median(p) for p in paths}
        out[key] = {
            "label": m.label, "unit": m.unit, "higher_is_better": m.higher_is_better,
            "median": med, "samples": {p: m.samples.get(p, []) for p in paths},
            "ratios": {f"{a}/{b}": ratio(med[a], med[b]) for a, b in ratios},
        }
    return out


def table(results: dict[str, Any]) -> str:
    baseline = any(BASELINE in r["median"] for r in results.values())
    paths, ratios = columns(baseline)
    head = ["metric", "unit", "better", *paths, *(f"{a}/{b}" for a, b in ratios)]
    rows = [head]
    for r in results.values():
        rows.append([r["label"], r["unit"], "higher" if r["higher_is_better"] else "lower",
                     *(fmt(r["median"][p]) for p in paths),
                     *(fmt_ratio(r["ratios"][f"{a}/{b}"]) for a, b in ratios)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_start": os.getloadavg()}


# --- main ----------------------------------------------------------------------


def find_tool(name: str) -> str:
    venv_bin = Path(sys.executable).parent / name
    found = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if found is None:
        sys.exit(f"bench: {name} not found (for iperf3: apt-get install -y iperf3)")
    return found


def git_head(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run(settings: Settings, quick: bool, baseline: Path | None = None) -> dict[str, Any]:
    iperf3, sitectl = find_tool("iperf3"), find_tool("sitectl")
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="vanbench-") as tmp, ExitStack() as stack:
        bench = Bench(settings, Path(tmp), stack)
        targets = bench.start_servers(iperf3)
        try:
            bench.start_router(targets, sitectl)
        except (SetupError, LoadError, TimeoutError) as exc:
            print(f"router setup failed: {exc}", flush=True)
            bench.print_logs(bench.logs.get("router", {}))
            raise SystemExit(1) from exc
        bench.start_stunnel(targets)
        if baseline is not None:
            try:
                bench.start_baseline(targets, sitectl, baseline)
            except (SetupError, LoadError, TimeoutError) as exc:
                print(f"baseline setup failed: {exc}", flush=True)
                bench.print_logs(bench.logs.get(BASELINE, {}))
                raise SystemExit(1) from exc
        time.sleep(1.0)
        bench.sample_idle_rss()
        bench.run_all(make_loads(settings, iperf3))
        bench.record_router_counters()
        bench.record_router_counters(BASELINE)
        bench.check_router_logs()
        info["loadavg_end"] = os.getloadavg()
        results = summary(bench.metrics, baseline is not None)
        report: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": quick, "settings": settings.__dict__, "machine": info,
            "router_flows": bench.extra.get("router_flows"),
            "notes": bench.notes, "results": results,
        }
        if baseline is not None:
            report["baseline"] = {"dir": str(baseline), "commit": git_head(baseline),
                                  "router_module": bench.extra.get("baseline_router_module"),
                                  "router_flows": bench.extra.get("baseline_flows")}
            report["commit"] = git_head(BENCH_DIR.parent)
        return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, 1 s loads")
    parser.add_argument("--baseline", metavar="DIR", type=Path,
                        help="another checkout of this repository (a git worktree of an older "
                             "commit, say): adds the path 'baseline', two routers run from its "
                             "code, and the ratio router/baseline")
    args = parser.parse_args()
    baseline: Path | None = None
    if args.baseline is not None:
        baseline = args.baseline.resolve()
        if not (baseline / "router" / "__init__.py").is_file():
            parser.error(f"--baseline {args.baseline}: no router package there")
    # Turn SIGTERM into SystemExit so the ExitStack stops every child process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = QUICK if args.quick else FULL
    report = run(settings, args.quick, baseline)
    print()
    print(table(report["results"]))
    for text in report["notes"]:
        print(f"note: {text}")
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {RESULTS}")


if __name__ == "__main__":
    main()
