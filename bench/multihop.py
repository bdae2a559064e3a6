"""Multi-hop benchmark: transit hops, failover time, routing convergence in simulation.

Run from the repository root:  .venv/bin/python bench/multihop.py [--quick] [--only SECTIONS]
See bench/README.md ("Multi-hop") for what is measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

import convergence
from loads import LoadError, echo_check, iperf3_mbps, percentile, ping_pong_us
from numbers_fmt import fmt, fmt_ratio, ratio
from paths import ECHO_SERVER

from tests.support.sites import (
    HOST,
    Process,
    Site,
    SiteNet,
    free_port,
    log_tail,
    port_open,
    wait_for,
    wait_path,
)
from tests.support.sites import SiteError as SetupError

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "multihop_results.json"
SECTIONS = ("line", "failover", "sim")
LINE_SITES = 5  # s0 .. s4
DETECTION_BOUND_S = 3.0  # dead_after_s default
FAILOVER_GOAL_S = 1.0  # "failover in under 1 s of the detection bound"


@dataclass(frozen=True)
class Settings:
    line_reps: int
    iperf_seconds: float
    rtt_rounds: int
    failover_reps: int
    probe_every_s: float
    probe_timeout_s: float
    failover_limit_s: float
    sim_sizes: tuple[int, ...]
    sim_reps: int
    sim_signed_size: int


FULL = Settings(line_reps=3, iperf_seconds=2.5, rtt_rounds=2000, failover_reps=3,
                probe_every_s=0.02, probe_timeout_s=1.0, failover_limit_s=15.0,
                sim_sizes=(10, 100, 500), sim_reps=3, sim_signed_size=100)
QUICK = Settings(line_reps=1, iperf_seconds=1.0, rtt_rounds=500, failover_reps=1,
                 probe_every_s=0.02, probe_timeout_s=1.0, failover_limit_s=15.0,
                 sim_sizes=(10, 100, 300), sim_reps=1, sim_signed_size=100)


@dataclass
class Report:
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"NOTE: {text}", flush=True)


# --- shared helpers --------------------------------------------------------------


def find_tool(name: str) -> str:
    venv_bin = Path(sys.executable).parent / name
    found = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if found is None:
        sys.exit(f"multihop: {name} not found (for iperf3: apt-get install -y iperf3)")
    return found


def start_servers(root: Path, stack: ExitStack, iperf3: str) -> dict[str, int]:
    """An iperf3 server and the echo server, each its own process; returns their ports."""
    targets = {"iperf": free_port(), "echo": free_port()}
    argvs = {
        "iperf3-server": [iperf3, "-s", "-B", HOST, "-p", str(targets["iperf"])],
        "echo-server": [sys.executable, ECHO_SERVER, str(targets["echo"])],
    }
    for name, argv in argvs.items():
        svc = Process(name, argv, root / f"{name}.log")
        stack.callback(svc.stop)
    for port in targets.values():
        wait_for(partial(port_open, port), 15, f"server port {port}", step=0.1)
    return targets


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (seconds), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def render(rows: list[list[str]], left: int = 1) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def log_problems(net: SiteNet, report: Report, section: str) -> None:
    for name, path in net.logs().items():
        text = path.read_text(errors="replace")
        bad = [ln for ln in text.splitlines() if " ERROR " in ln or "Traceback" in ln]
        if bad:
            report.note(f"{section}: router {name} log has {len(bad)} error lines; "
                        f"first: {bad[0][:200]}")


# --- 1. transit hops on a line ---------------------------------------------------------


LINE_PATHS = ("direct", "0 transit", "1 transit", "2 transit", "3 transit", "0 tr, s0 dials")
REVERSED = "0 tr, s0 dials"
LINE_METRICS = {  # key: (label, unit, higher is better)
    "tput_1": ("1 flow", "MB/s", True),
    "rtt_p50": ("RTT p50", "us", False),
    "rtt_p99": ("RTT p99", "us", False),
    "cpu_per_mb": ("routers' CPU/MB", "ms", False),
}


def setup_line(net: SiteNet, targets: dict[str, int]) -> dict[str, dict[str, int]]:
    """s0 - s1 - s2 - s3 - s4 (s(i+1) dials s(i)); connectors for key k on s_k, all
    listeners on s0. Plus s1r, which s0 dials (the other direction), with key k1r.

    Returns the entry ports of each path (iperf and echo)."""
    sites = [net.add(f"s{i}") for i in range(LINE_SITES)]
    s1r = net.add("s1r")
    net.start_all()
    for left, right in itertools.pairwise(sites):
        net.link(left, right)  # the right one dials the left one
    net.link(s1r, sites[0])  # s0 dials s1r
    entries: dict[str, dict[str, int]] = {"direct": dict(targets)}
    ends = [(f"{k - 1} transit", f"k{k}", sites[k], [s.name for s in sites[:k + 1]])
            for k in range(1, LINE_SITES)]
    ends.append((REVERSED, "k1r", s1r, [sites[0].name, s1r.name]))
    for path, suffix, site, _ in ends:
        ports: dict[str, int] = {}
        for service, target in targets.items():
            key = f"{service}-{suffix}"
            site.sitectl("connector", "create", key, f"{HOST}:{target}")
            ports[service] = free_port()
            sites[0].sitectl("listener", "create", key, str(ports[service]))
        entries[path] = ports
    for _, suffix, _, hops in ends:
        for service in targets:
            wait_path(sites[0], f"{service}-{suffix}", hops)
    for path, ports in entries.items():
        try:
            echo_check(ports["echo"])
        except LoadError as exc:
            raise SetupError(f"{path}: {exc}") from exc
    return entries


def run_line(s: Settings, root: Path, stack: ExitStack, iperf3: str, sitectl: str,
             targets: dict[str, int], report: Report) -> dict[str, Any]:
    net = SiteNet(root / "line", sitectl)
    stack.callback(net.close)
    try:
        entries = setup_line(net, targets)
    except (SetupError, TimeoutError) as exc:
        print(f"line setup failed: {exc}", flush=True)
        net.print_tails()
        raise
    pids = [site.pid for site in net.sites.values()]
    samples: dict[str, dict[str, list[float]]] = {m: {p: [] for p in LINE_PATHS}
                                                  for m in LINE_METRICS}
    time.sleep(0.5)
    for rep in range(s.line_reps):
        shift = rep % len(LINE_PATHS)
        order = LINE_PATHS[shift:] + LINE_PATHS[:shift]
        for load in ("tput", "rtt"):
            for path in order:
                label = f"[{rep + 1}/{s.line_reps}] {load:<4} {path:<9}"
                try:
                    values = line_load(load, entries[path], s, iperf3, pids, path == "direct")
                except (LoadError, OSError, ValueError) as exc:
                    print(f"{label} FAILED: {exc}", flush=True)
                    report.note(f"line: {load} over {path} failed (rep {rep + 1}): {exc}")
                    net.print_tails(15)
                    continue
                for key, value in values.items():
                    samples[key][path].append(value)
                print(label + "  " + "  ".join(f"{k}={v:.1f}" for k, v in values.items()),
                      flush=True)
                time.sleep(0.3)
    log_problems(net, report, "line")
    flows = {}
    for name, site in net.sites.items():
        try:
            flows[name] = site.status().get("flows")
        except (SetupError, ValueError) as exc:
            report.note(f"line: status of {name} after the run failed: {exc}")
    net.close()
    results: dict[str, Any] = {}
    for key, (label, unit, higher) in LINE_METRICS.items():
        med = {p: statistics.median(v) if v else None for p, v in samples[key].items()}
        results[key] = {
            "label": label, "unit": unit, "higher_is_better": higher, "median": med,
            "samples": samples[key],
            "vs_direct": {p: ratio(med[p], med["direct"]) for p in LINE_PATHS},
            "vs_0_transit": {p: ratio(med[p], med["0 transit"]) for p in LINE_PATHS},
        }
    return {"topology": "s0 - s1 - s2 - s3 - s4 (s(i+1) dials s(i)); listeners on s0, "
                        "connector for key k on s_k; plus s1r, dialled by s0 (key k1r)",
            "results": results, "router_flows": flows}


def line_load(load: str, ports: dict[str, int], s: Settings, iperf3: str, pids: list[int],
              direct: bool) -> dict[str, float]:
    if load == "tput":
        cpu0 = sum(cpu_seconds(p) for p in pids)
        mbps = iperf3_mbps(iperf3, ports["iperf"], s.iperf_seconds, 1)
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        out = {"tput_1": mbps}
        if not direct:  # CPU of all 5 routers (idle ones included) per MB moved
            out["cpu_per_mb"] = cpu * 1000 / (mbps * s.iperf_seconds)
        return out
    rtts = ping_pong_us(ports["echo"], s.rtt_rounds)
    return {"rtt_p50": percentile(rtts, 50), "rtt_p99": percentile(rtts, 99)}


def line_table(line: dict[str, Any]) -> str:
    res = line["results"]
    head = ["path"]
    for key in LINE_METRICS:
        head += [f"{LINE_METRICS[key][0]} ({LINE_METRICS[key][1]})",
                 *(["/direct"] if key != "cpu_per_mb" else []), "/0 transit"]
    rows = [head]
    for p in LINE_PATHS:
        row = [p]
        for key in LINE_METRICS:
            r = res[key]
            row += [fmt(r["median"][p]),
                    *([fmt_ratio(r["vs_direct"][p])] if key != "cpu_per_mb" else []),
                    fmt_ratio(r["vs_0_transit"][p])]
        rows.append(row)
    return render(rows)


# --- 2. failover on a diamond ------------------------------------------------------------


@dataclass
class ProbeResult:
    started: float  # seconds after the fault
    ended: float
    ok: bool
    error: str


def probe_once(port: int, timeout: float) -> str:
    """One new flow: connect, send 1 byte, read the echo. '' on success, else why not."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"x")
            data = sock.recv(1)
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__
    return "" if data == b"x" else "closed"


def probe_until_success(port: int, t0: float, s: Settings) -> tuple[float | None,
                                                                     list[ProbeResult]]:
    """Start a new probe every probe_every_s (each in its own thread, each with
    probe_timeout_s) until one succeeds; returns the time of the first success after t0."""
    results: list[ProbeResult] = []
    lock = threading.Lock()
    done = threading.Event()

    def one() -> None:
        start = time.perf_counter() - t0
        error = probe_once(port, s.probe_timeout_s)
        end = time.perf_counter() - t0
        with lock:
            results.append(ProbeResult(start, end, not error, error))
        if not error:
            done.set()

    threads: list[threading.Thread] = []
    deadline = t0 + s.failover_limit_s
    while not done.is_set() and time.perf_counter() < deadline:
        th = threading.Thread(target=one, daemon=True)
        th.start()
        threads.append(th)
        done.wait(s.probe_every_s)
    for th in threads:
        th.join(s.probe_timeout_s + 1)
    ok = [r.ended for r in results if r.ok]
    return (min(ok) if ok else None), results


@dataclass
class Diamond:
    net: SiteNet
    s: Site
    t1: Site
    t2: Site
    e: Site
    port: int
    key: str = "fo"

    @property
    def via_t1(self) -> list[str]:
        return [self.s.name, self.t1.name, self.e.name]

    @property
    def via_t2(self) -> list[str]:
        return [self.s.name, self.t2.name, self.e.name]


def setup_diamond(net: SiteNet, echo_port: int) -> Diamond:
    """S - T1 - E (cost 1 + 1) and S - T2 - E (cost 1 + 10). T1 and T2 dial both S and E,
    so a restarted T1 comes back at once (no redial backoff on S or E)."""
    s, t1, t2, e = (net.add(name) for name in ("s", "t1", "t2", "e"))
    net.start_all()
    net.link(s, t1)
    net.link(e, t1)
    net.link(s, t2)
    net.link(e, t2, cost=10)  # T2 -> E is the expensive hop: S -> E prefers T1
    d = Diamond(net, s, t1, t2, e, free_port())
    e.sitectl("connector", "create", d.key, f"{HOST}:{echo_port}")
    s.sitectl("listener", "create", d.key, str(d.port))
    wait_path(s, d.key, d.via_t1)
    echo_check(d.port)
    return d


def failover_trial(d: Diamond, mode: str, s: Settings) -> dict[str, Any]:
    wait_path(d.s, d.key, d.via_t1)
    echo_check(d.port)
    time.sleep(1.2)  # let the keepalives run, as on an idle network
    t0 = time.perf_counter()
    d.t1.signal(signal.SIGKILL if mode == "kill" else signal.SIGSTOP)
    first_ok, probes = probe_until_success(d.port, t0, s)
    path_after: Any = None
    try:
        path_after = d.s.status(network=True)["network"]["keys"][d.key]["path"]
    except (SetupError, KeyError, ValueError) as exc:
        path_after = f"status failed: {exc}"
    d.t1.kill()  # also ends a frozen T1
    errors: dict[str, int] = {}
    for p in probes:
        if not p.ok:
            errors[p.error] = errors.get(p.error, 0) + 1
    first_ok_start = min((p.started for p in probes if p.ok), default=None)
    # Bring T1 back for the next trial (it dials S and E itself).
    d.t1.start()
    wait_path(d.s, d.key, d.via_t1)
    return {"mode": mode, "failover_s": first_ok, "first_ok_probe_started_s": first_ok_start,
            "probes": len(probes), "ok_probes": sum(p.ok for p in probes),
            "failed_probes": errors, "path_after": path_after}


def run_failover(s: Settings, root: Path, stack: ExitStack, sitectl: str,
                 targets: dict[str, int], report: Report) -> dict[str, Any]:
    net = SiteNet(root / "diamond", sitectl)
    stack.callback(net.close)
    try:
        d = setup_diamond(net, targets["echo"])
    except (SetupError, TimeoutError, LoadError) as exc:
        print(f"diamond setup failed: {exc}", flush=True)
        net.print_tails()
        raise
    modes = ("kill", "silent")
    trials: list[dict[str, Any]] = []
    for rep in range(s.failover_reps):
        order = modes if rep % 2 == 0 else modes[::-1]
        for mode in order:
            label = f"[{rep + 1}/{s.failover_reps}] {mode:<6}"
            try:
                trial = failover_trial(d, mode, s)
            except (SetupError, TimeoutError, LoadError) as exc:
                print(f"{label} FAILED: {exc}", flush=True)
                report.note(f"failover: {mode} trial failed (rep {rep + 1}): {exc}")
                net.print_tails(15)
                if not d.t1.alive():
                    d.t1.start()
                continue
            trials.append(trial)
            fo = trial["failover_s"]
            shown = "no success" if fo is None else f"{fo * 1000:.0f} ms"
            started = trial["first_ok_probe_started_s"]
            print(f"{label} failover {shown} (that probe started at "
                  f"{'-' if started is None else f'{started * 1000:.0f} ms'}); "
                  f"{trial['probes']} probes, {trial['ok_probes']} ok, failed: "
                  f"{trial['failed_probes']}; path after: {trial['path_after']}", flush=True)
            if trial["path_after"] != d.via_t2:
                report.note(f"failover: after {mode}, S routed via {trial['path_after']}")
    log_problems(net, report, "failover")
    net.close()
    summary: dict[str, Any] = {}
    for mode in modes:
        values = [t["failover_s"] for t in trials if t["mode"] == mode]
        ok = [v for v in values if v is not None]
        med = statistics.median(ok) if ok else None
        bound = 0.0 if mode == "kill" else DETECTION_BOUND_S
        summary[mode] = {
            "median_s": med, "min_s": min(ok, default=None), "max_s": max(ok, default=None),
            "samples_s": values, "detection_bound_s": bound,
            "over_bound_s": None if med is None else med - bound,
            "goal_met": None if not ok else max(ok) - bound < FAILOVER_GOAL_S,
        }
    return {"topology": "S-T1 (1), T1-E (1), S-T2 (1), T2-E (10); connector on E, listener "
                        "on S; T1 and T2 dial",
            "probe": {"every_s": s.probe_every_s, "timeout_s": s.probe_timeout_s},
            "trials": trials, "summary": summary}


def failover_table(fo: dict[str, Any]) -> str:
    rows = [["fault on T1", "median", "min", "max", "detection bound", "median - bound",
             "goal (< bound + 1 s)"]]
    names = {"kill": "SIGKILL (links reset)", "silent": "SIGSTOP (silence)"}
    for mode, r in fo["summary"].items():
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f} ms"
        goal = {True: "met", False: "MISSED", None: "-"}[r["goal_met"]]
        rows.append([names[mode], ms(r["median_s"]), ms(r["min_s"]), ms(r["max_s"]),
                     f"{r['detection_bound_s']:.0f} s", ms(r["over_bound_s"]), goal])
    return render(rows)


# --- 3. convergence in simulation ----------------------------------------------------------


SIM_LIMIT_S = 120.0


def run_sim(s: Settings, report: Report) -> dict[str, Any]:
    sizes = list(s.sim_sizes)
    runs: list[dict[str, Any]] = []
    for n in sizes:
        if n > 100 and runs:
            # Cold flooding is ~quadratic in n: skip sizes predicted to exceed the limit.
            base = next(r for r in runs if r["routers"] == 100)
            predicted = base["cold"]["cpu_s"] * (n / 100) ** 2
            if predicted > SIM_LIMIT_S:
                smaller = 300
                report.note(f"sim: {n} routers predicted at {predicted:.0f} s CPU cold "
                            f"(> {SIM_LIMIT_S:.0f} s): measured {smaller} instead")
                n = smaller
        runs.append(sim_median(n, s.sim_reps, "null"))
        print(f"sim: {n} routers, null signing: cold {runs[-1]['cold']['cpu_s']:.3f} s CPU",
              flush=True)
    signed = sim_median(s.sim_signed_size, 1, "ed25519", changes=False)
    print(f"sim: {s.sim_signed_size} routers, Ed25519: cold {signed['cold']['cpu_s']:.3f} s CPU",
          flush=True)
    runs.append(signed)
    for r in runs:
        if r["cold"]["cpu_s"] > SIM_LIMIT_S:
            report.note(f"sim: {r['routers']} routers took {r['cold']['cpu_s']:.0f} s CPU cold")
    return {"seed": 1, "avg_degree_target": 3.5, "runs": runs}


def sim_median(n: int, reps: int, signing: str, changes: bool = True) -> dict[str, Any]:
    """Run `reps` times (same seed: same topology and counters); median of each CPU time."""
    results = [convergence.measure(n, 1, signing=signing, changes=changes)
               for _ in range(reps)]
    out = results[0]
    for what in ("cold", "link_cut", "key_added"):
        if what not in out:
            continue
        for key in [k for k in out[what] if k.startswith("cpu")]:
            out[what][key] = statistics.median(r[what][key] for r in results)
        out[what]["cpu_samples_s"] = [r[what]["cpu_s"] for r in results]
    return out


# --- main ----------------------------------------------------------------------------------


def run(s: Settings, quick: bool, only: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(),
                            "loadavg_start": os.getloadavg()}
    report = Report()
    out: dict[str, Any] = {"timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                           "quick": quick, "settings": asdict(s), "machine": info}
    needs_routers = any(x in only for x in ("line", "failover"))
    if needs_routers:
        iperf3, sitectl = find_tool("iperf3"), find_tool("sitectl")
        with tempfile.TemporaryDirectory(prefix="vanmultihop-") as tmp, ExitStack() as stack:
            root = Path(tmp)
            targets = start_servers(root, stack, iperf3)
            sections: list[tuple[str, Callable[[], dict[str, Any]]]] = []
            if "line" in only:
                sections.append(("line", lambda: run_line(s, root, stack, iperf3, sitectl,
                                                          targets, report)))
            if "failover" in only:
                sections.append(("failover", lambda: run_failover(s, root, stack, sitectl,
                                                                  targets, report)))
            for name, fn in sections:
                print(f"\n== {name} ==", flush=True)
                try:
                    out[name] = fn()
                except (SetupError, TimeoutError, LoadError) as exc:
                    report.note(f"{name}: section failed: {exc}")
                    for log in sorted(root.rglob("*.log")):
                        print(f"--- {log.relative_to(root)} ---\n{log_tail(log, 10)}",
                              flush=True)
    if "sim" in only:
        print("\n== sim ==", flush=True)
        out["sim"] = run_sim(s, report)
    info["loadavg_end"] = os.getloadavg()
    out["notes"] = report.notes
    return out


def print_report(out: dict[str, Any]) -> None:
    if "line" in out:
        print("\n## Transit hops (line s0 - s1 - s2 - s3 - s4, listeners on s0; iperf3 1 flow, "
              "1-byte RTT, CPU of all routers per MB moved by iperf3; medians)")
        print(line_table(out["line"]))
    if "failover" in out:
        print("\n## Failover (diamond S -> T1|T2 -> E; time from the fault on T1 to the first "
              "successful new flow through S; medians)")
        print(failover_table(out["failover"]))
    if "sim" in out:
        print("\n## Routing convergence in simulation (CPU = whole network, one process; "
              "medians)")
        print(convergence.table(out["sim"]["runs"]))
    for text in out["notes"]:
        print(f"note: {text}")
    la0, la1 = out["machine"]["loadavg_start"], out["machine"]["loadavg_end"]
    print(f"load average: start {la0[0]:.2f}, end {la1[0]:.2f} ({out['machine']['cpus']} CPUs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 repetition, 1 s loads, sim up to 300 routers")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: {','.join(SECTIONS)})")
    args = parser.parse_args()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    # Turn SIGTERM into SystemExit so the ExitStack stops every child process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = run(QUICK if args.quick else FULL, args.quick, only)
    print_report(out)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nresults written to {RESULTS}")


if __name__ == "__main__":
    main()
