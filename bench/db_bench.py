"""Benchmark: the legacy database case (issue 10), direct vs. two routers vs. stunnel.

pgbench and redis-benchmark against the local PostgreSQL and Redis, 1-byte round trips and
sequential new connections against an echo server, interleaved over the three paths; CPU
per message, per new flow and per request of each proxy process from /proc; RSS idle and
with 10 000 idle flows open through one link.

Run from the repository root:  .venv/bin/python bench/db_bench.py [--quick]
See bench/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

import db_loads as dl
from loads import LoadError, echo_check, percentile, ping_pong_us
from numbers_fmt import fmt, fmt_ratio, ratio
from paths import ECHO_SERVER, RouterPair, SetupError, StunnelPair

from tests.support.manyflows import FlowError, close_all, open_echo_flows
from tests.support.sites import Process, free_port, port_open, rss_kib, site_env, wait_for

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "db_results.json"
PATHS = ("direct", "router", "stunnel")
PROXIED = ("router", "stunnel")
RATIOS = (("router", "direct"), ("stunnel", "direct"), ("router", "stunnel"))
MIB = 1024


@dataclass(frozen=True)
class Settings:
    reps: int
    pg_seconds: int
    redis_requests: int  # per redis-benchmark test
    rtt_rounds: int
    conn_seconds: float
    idle_flows: int


FULL = Settings(reps=3, pg_seconds=5, redis_requests=50_000, rtt_rounds=5000,
                conn_seconds=3.0, idle_flows=10_000)
QUICK = Settings(reps=1, pg_seconds=3, redis_requests=20_000, rtt_rounds=2000,
                 conn_seconds=2.0, idle_flows=10_000)


@dataclass(frozen=True)
class Load:
    label: str  # the row
    run: Callable[[dict[str, int]], dl.Done]  # entry ports of a path -> what it did
    needs: str  # the service it drives: "pg", "redis" or "echo"
    cpu_unit: str  # what one operation is, for CPU per operation


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    higher_is_better: bool


METRICS = {
    "pg_s1": Metric("pgbench -S -c 1", "tps", True),
    "pg_s8": Metric("pgbench -S -c 8 -j 2", "tps", True),
    "pg_tpcb4": Metric("pgbench -c 4 (TPC-B-like)", "tps", True),
    "pg_C1": Metric("pgbench -S -C -c 1 (connection per tx)", "tps", True),
    "redis_ping": Metric("redis-benchmark -c 50 PING", "req/s", True),
    "redis_set": Metric("redis-benchmark -c 50 SET", "req/s", True),
    "redis_get": Metric("redis-benchmark -c 50 GET", "req/s", True),
    "rtt_p50": Metric("1-byte RTT p50", "us", False),
    "rtt_p99": Metric("1-byte RTT p99", "us", False),
    "conn_rate": Metric("new connections, sequential", "conn/s", True),
}


def make_loads(s: Settings, pg: dl.PgTarget | None) -> dict[str, Load]:
    def pgb(key: str, clients: int, **kw: Any) -> Load:
        assert pg is not None

        def run(ports: dict[str, int]) -> dl.Done:
            done = dl.pgbench(pg, ports["pg"], s.pg_seconds, clients, **kw)
            return dl.Done({key: done.values["tps"]}, done.ops)
        return Load(METRICS[key].label, run, "pg", "transaction")

    def redis(ports: dict[str, int]) -> dl.Done:
        done = dl.redis_benchmark(ports["redis"], s.redis_requests)
        return dl.Done({f"redis_{k}": v for k, v in done.values.items()}, done.ops)

    def rtt(ports: dict[str, int]) -> dl.Done:
        warmup = 50
        samples = ping_pong_us(ports["echo"], s.rtt_rounds, warmup=warmup)
        return dl.Done({"rtt_p50": percentile(samples, 50), "rtt_p99": percentile(samples, 99)},
                       2 * (s.rtt_rounds + warmup))  # messages: a round trip is two

    def conns(ports: dict[str, int]) -> dl.Done:
        return dl.sequential_connections(ports["echo"], s.conn_seconds)

    loads: dict[str, Load] = {}
    if pg is not None:
        loads |= {"pg_s1": pgb("pg_s1", 1), "pg_s8": pgb("pg_s8", 8, threads=2),
                  "pg_tpcb4": pgb("pg_tpcb4", 4, select_only=False),
                  "pg_C1": pgb("pg_C1", 1, connect_each=True)}
    loads["redis"] = Load("redis-benchmark -c 50 (PING, SET, GET)", redis, "redis", "request")
    loads["rtt"] = Load("1-byte ping-pong", rtt, "echo", "message")
    loads["conn"] = Load("sequential new connections", conns, "echo", "flow")
    return loads


@dataclass
class Bench:
    settings: Settings
    root: Path
    stack: ExitStack
    notes: list[str] = field(default_factory=list)
    entries: dict[str, dict[str, int]] = field(default_factory=dict)
    pids: dict[str, dict[str, int]] = field(default_factory=dict)  # proxy processes
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # metric, path
    # load -> path -> process -> CPU microseconds per operation, one per repetition
    cpu: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    router: RouterPair | None = None
    services: set[str] = field(default_factory=set)  # what the direct path reaches

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"NOTE: {text}", flush=True)

    # --- setup -----------------------------------------------------------------------

    def start(self, sitectl: str) -> None:
        echo = free_port()
        svc = Process("echo-server", [sys.executable, ECHO_SERVER,
                                      str(echo)], self.root / "echo-server.log")
        self.stack.callback(svc.stop)
        wait_for(partial(port_open, echo), 15, "echo server", step=0.1)
        targets = {"echo": echo, "pg": dl.PG_PORT, "redis": dl.REDIS_PORT}
        self.entries["direct"] = targets
        pair = RouterPair(self.root / "sites", sitectl, site_env(self.root), self.stack)
        pair.root.mkdir()
        pair.start(targets)
        echo_check(pair.ports["echo"])
        self.router = pair
        self.entries["router"] = pair.ports
        self.pids["router"] = dict(pair.pids)
        binary = shutil.which("stunnel4") or shutil.which("stunnel")
        if binary is None:
            self.note("stunnel not found (apt-get install -y stunnel4): stunnel column skipped")
            return
        st = StunnelPair(self.root / "stunnel", binary, self.stack)
        st.root.mkdir()
        try:
            st.start(targets)
            echo_check(st.ports["echo"])
        except (SetupError, LoadError, TimeoutError, OSError) as exc:
            self.note(f"stunnel setup failed, column skipped: {exc}")
            return
        self.entries["stunnel"] = st.ports
        self.pids["stunnel"] = dict(st.pids)

    def sample_idle_rss(self) -> None:
        for path, pids in self.pids.items():
            self.memory.setdefault("idle_rss_mib", {})[path] = {
                name: (rss_kib(pid) or 0) / MIB for name, pid in pids.items()}

    # --- the timed loads, interleaved ---------------------------------------------------

    def run_all(self, loads: dict[str, Load]) -> None:
        paths = [p for p in PATHS if p in self.entries]
        for rep in range(self.settings.reps):
            order = paths[rep % len(paths):] + paths[:rep % len(paths)]
            for name, load in loads.items():
                for path in order:
                    self.run_one(rep, name, load, path)

    def run_one(self, rep: int, name: str, load: Load, path: str) -> None:
        label = f"[{rep + 1}/{self.settings.reps}] {name:<9} {path:<8}"
        pids = self.pids.get(path, {})
        try:
            before = dl.cpu_by_pid(pids)
            done = load.run(self.entries[path])
            after = dl.cpu_by_pid(pids)
        except (LoadError, OSError, ValueError) as exc:
            print(f"{label} FAILED: {exc}", flush=True)
            self.note(f"{name} over {path} failed (rep {rep + 1}): {exc}")
            return
        for key, value in done.values.items():
            self.samples.setdefault(key, {}).setdefault(path, []).append(value)
        per_op = {proc: (after[proc] - before[proc]) * 1e6 / max(done.ops, 1) for proc in pids}
        for proc, us in per_op.items():
            self.cpu.setdefault(name, {}).setdefault(path, {}).setdefault(proc, []).append(us)
        shown = "  ".join(f"{k}={v:.1f}" for k, v in done.values.items())
        cpu = "  ".join(f"cpu/{load.cpu_unit}[{p}]={us:.0f}us" for p, us in per_op.items())
        print(f"{label} {shown}  {cpu}", flush=True)
        time.sleep(0.3)  # let sockets settle between runs

    # --- memory with many idle flows -----------------------------------------------------

    def idle_flows(self, path: str) -> None:
        n, pids = self.settings.idle_flows, self.pids[path]
        if path == "stunnel" and n > (most := stunnel_max_clients()):
            self.note(f"stunnel serves at most {most} clients under this open-files limit: "
                      f"its idle flows are {most}, not {n} (growth per 1000 flows compares)")
            n = most
        rss0 = {name: (rss_kib(pid) or 0) / MIB for name, pid in pids.items()}
        fds0 = {name: _fds(pid) for name, pid in pids.items()}
        started = time.perf_counter()
        try:
            socks = open_echo_flows(self.entries[path]["echo"], n, batch=500, timeout=300)
        except (FlowError, OSError) as exc:
            self.note(f"{n} idle flows over {path} failed: {exc}")
            return
        opened_s = time.perf_counter() - started
        try:
            if path == "router":
                self._wait_router_flows(n)
            rss1 = {name: (rss_kib(pid) or 0) / MIB for name, pid in pids.items()}
        finally:
            close_all(socks)
        started = time.perf_counter()
        if path == "router":
            self._wait_router_flows(0)
        for name, pid in pids.items():
            wait_for(lambda p=pid, f=fds0[name]: _fds(p) <= f, 120, f"{name} fds back")
        released_s = time.perf_counter() - started
        rss2 = {name: (rss_kib(pid) or 0) / MIB for name, pid in pids.items()}
        growth = {name: rss1[name] - rss0[name] for name in pids}
        self.memory.setdefault("idle_flows", {})[path] = {
            "flows": n, "rss_before_mib": rss0, "rss_open_mib": rss1, "rss_after_close_mib": rss2,
            "growth_mib": growth, "growth_total_mib": sum(growth.values()),
            "growth_per_1000_flows_mib": sum(growth.values()) * 1000 / n,
            "open_s": opened_s, "flows_per_s": n / opened_s, "release_s": released_s}
        print(f"idle flows {path:<8} {n} open in {opened_s:.1f} s; RSS growth "
              + ", ".join(f"{k} {v:.1f} MiB" for k, v in growth.items())
              + f"; released in {released_s:.1f} s", flush=True)

    def _wait_router_flows(self, n: int) -> None:
        assert self.router is not None
        pair = self.router
        wait_for(lambda: all(pair.status(s)["flows"]["active"] == n for s in pair.sites),
                 120, f"{n} flows active on both routers", step=0.5)


def stunnel_max_clients() -> int:
    """stunnel takes at most 125/256 of its soft open-files limit (inherited) in clients;
    a few less, for its listeners and logs."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] * 125 // 256 - 16


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- reporting ---------------------------------------------------------------------------


def med(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def summary(bench: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, m in METRICS.items():
        samples = bench.samples.get(key, {})
        median = {p: med(samples.get(p)) for p in PATHS}
        out[key] = {"label": m.label, "unit": m.unit, "higher_is_better": m.higher_is_better,
                    "median": median, "samples": {p: samples.get(p, []) for p in PATHS},
                    "ratios": {f"{a}/{b}": ratio(median[a], median[b]) for a, b in RATIOS}}
    return out


def cpu_summary(bench: Bench, loads: dict[str, Load]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, load in loads.items():
        row: dict[str, Any] = {"label": load.label, "per": load.cpu_unit}
        for path in PROXIED:
            procs = bench.cpu.get(name, {}).get(path)
            if procs:
                per_proc = {proc: med(v) for proc, v in procs.items()}
                row[path] = {"per_process_us": per_proc,
                             "chain_us": sum(v or 0 for v in per_proc.values())}
        out[name] = row
    return out


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def table(report: dict[str, Any]) -> str:
    rows = [["load", "unit", *PATHS, *(f"{a}/{b}" for a, b in RATIOS)]]
    for r in report["results"].values():
        if any(v is not None for v in r["median"].values()):
            rows.append([r["label"], r["unit"], *(fmt(r["median"][p]) for p in PATHS),
                         *(fmt_ratio(r["ratios"][f"{a}/{b}"]) for a, b in RATIOS)])
    out = [_grid(rows), ""]
    rows = [["CPU, us per operation", "per", "router chain", "west / east",
             "stunnel chain", "server / client"]]
    for row in report["cpu"].values():
        cells = [row["label"], row["per"]]
        for path in PROXIED:
            got = row.get(path)
            cells += (["-", "-"] if got is None else
                      [fmt(got["chain_us"]),
                       " / ".join(fmt(v) for v in got["per_process_us"].values())])
        rows.append(cells)
    out += [_grid(rows), ""]
    mem = report["memory"]
    rows = [["memory, MiB", *PROXIED]]
    idle = mem.get("idle_rss_mib", {})
    rows.append(["RSS idle, per process", *(" / ".join(fmt(v) for v in idle[p].values())
                                            if p in idle else "-" for p in PROXIED)])
    flows = mem.get("idle_flows", {})
    n = next((f["flows"] for f in flows.values()), 0)
    rows.append([f"RSS growth, {n} idle flows, both", *(fmt(flows[p]["growth_total_mib"])
                                                         if p in flows else "-" for p in PROXIED)])
    rows.append(["  per process", *(" / ".join(fmt(v) for v in flows[p]["growth_mib"].values())
                                    if p in flows else "-" for p in PROXIED)])
    rows.append(["  per 1000 flows, both", *(fmt(flows[p]["growth_per_1000_flows_mib"])
                                             if p in flows else "-" for p in PROXIED)])
    rows.append([f"opening {n} flows, flows/s", *(fmt(flows[p]["flows_per_s"])
                                                  if p in flows else "-" for p in PROXIED)])
    out.append(_grid(rows))
    return "\n".join(out)


# --- main --------------------------------------------------------------------------------


def raise_fd_limit(flows: int) -> None:
    """The client holds every idle flow's socket, and the servers and proxies inherit the
    limit. stunnel takes at most 125/256 of its limit in clients: as root, the hard limit
    is raised to what `flows` clients need there."""
    needed = flows * 256 // 125 + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):  # not root: the limit stays
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        print(f"NOTE: open-files limit {hard} is below {needed}: stunnel will refuse some of "
              f"the {flows} idle flows", flush=True)


def check_services(bench: Bench) -> dl.PgTarget | None:
    pg = None
    try:
        dl.pg_ready()
        pg = dl.prepare_pg()
        print(f"pgbench runs in {pg.where}, scale {dl.PG_SCALE}", flush=True)
        bench.memory["pg"] = {"where": pg.where, "scale": dl.PG_SCALE}
    except (LoadError, OSError) as exc:
        bench.note(f"no PostgreSQL at 127.0.0.1:{dl.PG_PORT} to use: pgbench loads skipped "
                   f"({exc})")
    try:
        dl.redis_ready()
    except (LoadError, OSError) as exc:
        bench.note(f"no Redis at 127.0.0.1:{dl.REDIS_PORT}: redis-benchmark fails ({exc})")
    return pg


def run(settings: Settings, quick: bool) -> dict[str, Any]:
    venv_sitectl = Path(sys.executable).parent / "sitectl"
    sitectl = str(venv_sitectl) if venv_sitectl.exists() else shutil.which("sitectl")
    if sitectl is None:
        sys.exit("db_bench: sitectl not found (make .venv/.installed)")
    raise_fd_limit(settings.idle_flows)
    machine = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="vandbbench-") as tmp, ExitStack() as stack:
        bench = Bench(settings, Path(tmp), stack)
        pg = check_services(bench)
        bench.start(sitectl)
        time.sleep(1.0)
        bench.sample_idle_rss()
        loads = make_loads(settings, pg)
        for path in bench.entries:  # warm each path once, unrecorded
            try:
                if pg is not None:
                    dl.pgbench(pg, bench.entries[path]["pg"], 1, 1)
                ping_pong_us(bench.entries[path]["echo"], 200)
            except (LoadError, OSError) as exc:
                bench.note(f"warm-up over {path} failed: {exc}")
        bench.run_all(loads)
        machine["loadavg_after_loads"] = os.getloadavg()
        for path in PROXIED:
            if path in bench.entries:
                bench.idle_flows(path)
        machine["loadavg_end"] = os.getloadavg()
        return {"timestamp": datetime.now(UTC).isoformat(timespec="seconds"), "quick": quick,
                "settings": asdict(settings), "machine": machine, "notes": bench.notes,
                "results": summary(bench), "cpu": cpu_summary(bench, loads),
                "memory": bench.memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 repetition, shorter loads (the 10 000 idle flows stay)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the ExitStack stops children
    report = run(QUICK if args.quick else FULL, args.quick)
    print()
    print(table(report))
    print(f"\nload average: start {report['machine']['loadavg_start']}, "
          f"end {report['machine']['loadavg_end']}")
    for text in report["notes"]:
        print(f"note: {text}")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.out}")


if __name__ == "__main__":
    main()
