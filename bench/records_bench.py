"""Benchmark: what flow records cost the data path, and what reading them costs.

Run from the repository root:  .venv/bin/python bench/records_bench.py [--quick]

Two router pairs (east listener -> mTLS link -> west connector, as in bench.py): "on" records
flows (the default), "off" has `flow_records_max = 0` on both sites. The single-flow
throughput and connection-rate loads of bench.py run over both, interleaved (the first pair
rotated each repetition), and the medians are compared (on/off). Then the "on" east router's
ring is filled to 10 000 records and `sitectl flows --json` is timed, as a user runs it (a
sitectl process) and as the control request alone, and `sitectl flows --network --json`
(east asks west, whose answer is capped at 1000 records). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from loads import LoadError, connection_rate, echo_check, iperf3_mbps
from multihop import cpu_seconds
from numbers_fmt import fmt, fmt_ratio, ratio
from paths import ECHO_SERVER, RouterPair

from router.site.directory import Site as SiteDir
from sitectl.client import call
from tests.support.sites import Process, Site, free_port, port_open, site_env, wait_for

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "records_results.json"
PAIRS = ("on", "off")
RECORDS = 10_000  # the default ring size
# On a shared machine the routers' CPU per unit of work holds better than the rates.
METRICS = (("tput_1", "throughput, 1 flow (MB/s)"),
           ("cpu_per_mb", "  routers' CPU per MB (ms)"),
           ("conn_rate", "new connections (/s)"),
           ("cpu_per_conn", "  routers' CPU per connection (us)"))


@dataclass(frozen=True)
class Settings:
    reps: int
    iperf_seconds: float
    conn_seconds: float
    conn_concurrency: int
    reads: int  # timed `sitectl flows --json` runs


FULL = Settings(reps=5, iperf_seconds=3, conn_seconds=2.5, conn_concurrency=4, reads=3)
QUICK = Settings(reps=1, iperf_seconds=1, conn_seconds=1, conn_concurrency=4, reads=1)


def records_off(site: Site) -> None:
    path = site.dir / "site.toml"
    text = path.read_text()
    if "flow_records_max = 10000" not in text:
        raise SystemExit(f"bench: {path} does not hold flow_records_max = 10000")
    path.write_text(text.replace("flow_records_max = 10000", "flow_records_max = 0"))


def start_servers(root: Path, stack: ExitStack, iperf3: str) -> dict[str, int]:
    targets = {"iperf": free_port(), "echo": free_port()}
    for name, argv in {
        "iperf3-server": [iperf3, "-s", "-B", "127.0.0.1", "-p", str(targets["iperf"])],
        "echo-server": [sys.executable, ECHO_SERVER, str(targets["echo"])],
    }.items():
        stack.callback(Process(name, argv, root / f"{name}.log").stop)
    for port in targets.values():
        wait_for(partial(port_open, port), 15, f"server port {port}", step=0.1)
    return targets


def ended_flows(site: Site) -> int:
    flows = site.state()["flows"]
    return int(flows["opened"]) - int(flows["active"])


def fill(site: Site, port: int, want: int) -> None:
    """Connections through `site`'s listener until it ended `want` flows."""
    while (have := ended_flows(site)) < want:
        rate = connection_rate(port, 2.0, 8)
        print(f"filling the ring: {have} flows ended ({rate:.0f} conn/s)", flush=True)


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def read_records(site: Site, reads: int) -> dict[str, Any]:
    control = SiteDir(site.dir).control_path
    cli, request, network = [], [], []
    count = net_count = 0
    for _ in range(reads):
        took, out = timed(lambda: site.sitectl("flows", "--json", timeout=120).stdout)
        cli.append(took)
        count = len(json.loads(out))
        took, _ = timed(lambda: call(control, "flows", {}, timeout=120))
        request.append(took)
        took, out = timed(lambda: site.sitectl("flows", "--json", "--network",
                                               timeout=120).stdout)
        network.append(took)
        net_count = len(json.loads(out))
    return {"records": count, "network_records": net_count,
            "sitectl_flows_json_s": statistics.median(cli),
            "control_request_s": statistics.median(request),
            "sitectl_flows_network_json_s": statistics.median(network),
            "samples": {"cli": cli, "request": request, "network": network}}


def run(settings: Settings, iperf3: str, sitectl: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vanbench-records-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        targets = start_servers(root, stack, iperf3)
        pairs: dict[str, RouterPair] = {}
        for name in PAIRS:
            pair = RouterPair(root / name, sitectl, site_env(root / name), stack,
                              configure=records_off if name == "off" else None)
            pair.root.mkdir()
            pair.start(targets)
            echo_check(pair.ports["echo"])
            pairs[name] = pair
        time.sleep(1.0)
        samples: dict[str, dict[str, list[float]]] = {
            key: {p: [] for p in PAIRS} for key, _ in METRICS}

        def cpu(path: str) -> float:
            return sum(cpu_seconds(pid) for pid in pairs[path].pids.values())

        for rep in range(settings.reps):
            order = PAIRS[rep % 2:] + PAIRS[:rep % 2]
            for path in order:
                ports = pairs[path].ports
                cpu0 = cpu(path)
                mbps = iperf3_mbps(iperf3, ports["iperf"], settings.iperf_seconds, 1)
                cpu_mb = (cpu(path) - cpu0) * 1000 / (mbps * settings.iperf_seconds)
                time.sleep(0.3)
                cpu0 = cpu(path)
                conns = connection_rate(ports["echo"], settings.conn_seconds,
                                        settings.conn_concurrency)
                cpu_conn = (cpu(path) - cpu0) * 1e6 / (conns * settings.conn_seconds)
                time.sleep(0.3)
                for key, value in (("tput_1", mbps), ("cpu_per_mb", cpu_mb),
                                   ("conn_rate", conns), ("cpu_per_conn", cpu_conn)):
                    samples[key][path].append(value)
                print(f"[{rep + 1}/{settings.reps}] records {path:<3}  tput_1={mbps:.1f} MB/s "
                      f"({cpu_mb:.2f} ms CPU/MB)  conn_rate={conns:.0f}/s "
                      f"({cpu_conn:.0f} us CPU/conn)", flush=True)
        east_off = pairs["off"].sites["east"]
        off_records = len(json.loads(east_off.sitectl("flows", "--json").stdout))
        east = pairs["on"].sites["east"]
        fill(east, pairs["on"].ports["echo"], RECORDS + 100)
        reading = read_records(east, settings.reads)
        medians = {key: {p: statistics.median(v) for p, v in per.items()}
                   for key, per in samples.items()}
        return {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": settings.__dict__, "cpus": os.cpu_count(),
            "loadavg_end": os.getloadavg(), "samples": samples, "median": medians,
            "ratio_on_off": {key: ratio(m["on"], m["off"]) for key, m in medians.items()},
            "records_listed_with_recording_off": off_records, "reading": reading,
        }


def report(result: dict[str, Any]) -> str:
    lines = [f"{'metric':<36}{'on':>10}{'off':>10}{'on/off':>9}"]
    for key, label in METRICS:
        m = result["median"][key]
        lines.append(f"{label:<36}{fmt(m['on']):>10}{fmt(m['off']):>10}"
                     f"{fmt_ratio(result['ratio_on_off'][key]):>9}")
    r = result["reading"]
    lines += [
        f"records listed with flow_records_max = 0: {result['records_listed_with_recording_off']}",
        f"sitectl flows --json, {r['records']} records: {r['sitectl_flows_json_s']:.2f} s "
        f"(the control request alone: {r['control_request_s']:.2f} s)",
        f"sitectl flows --json --network ({r['network_records']} records): "
        f"{r['sitectl_flows_network_json_s']:.2f} s",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, 1 s loads")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bin_dir = Path(sys.executable).parent
    iperf3 = "/usr/bin/iperf3" if Path("/usr/bin/iperf3").exists() else "iperf3"
    try:
        result = run(QUICK if args.quick else FULL, iperf3, str(bin_dir / "sitectl"))
    except LoadError as exc:
        raise SystemExit(f"bench: {exc}") from exc
    print()
    print(report(result))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults written to {RESULTS}")


if __name__ == "__main__":
    main()
