"""The loads: iperf3 throughput, connection rate, 1-byte round trips, RSS sampling."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.support.sites import HOST, rss_kib


class LoadError(RuntimeError):
    """A load run failed; the message says how."""


def iperf3_mbps(iperf3: str, port: int, seconds: float, streams: int) -> float:
    """Run one iperf3 client; return the receiver-side throughput in MB/s (10^6 bytes/s)."""
    argv = [iperf3, "-c", HOST, "-p", str(port), "-t", f"{seconds:g}", "-J"]
    if streams > 1:
        argv += ["-P", str(streams)]
    for attempt in range(3):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        try:
            result = json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            raise LoadError(f"iperf3 printed no JSON (rc={proc.returncode}): "
                            f"{proc.stderr.strip()[-300:]}") from exc
        error = result.get("error")
        if error is None:
            return float(result["end"]["sum_received"]["bits_per_second"]) / 8e6
        if "busy" not in str(error) or attempt == 2:
            raise LoadError(f"iperf3: {error}")
        time.sleep(1.0)  # the server is still tearing down the previous test
    raise AssertionError("unreachable")


def _echo_once(port: int) -> None:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise LoadError("echo: connection closed before the reply")


@dataclass
class _ConnCounter:
    deadline: float
    ok: int = 0
    errors: int = 0
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def loop(self, port: int) -> None:
        ok = errors = 0
        last = ""
        while time.perf_counter() < self.deadline:
            try:
                _echo_once(port)
                ok += 1
            except OSError as exc:
                errors += 1
                last = repr(exc)
            except LoadError as exc:
                errors += 1
                last = str(exc)
        with self.lock:
            self.ok += ok
            self.errors += errors
            self.last_error = last or self.last_error


def connection_rate(port: int, seconds: float, concurrency: int) -> float:
    """New connections per second: connect, send 1 byte, read the echo, close; in parallel."""
    start = time.perf_counter()
    counter = _ConnCounter(deadline=start + seconds)
    threads = [threading.Thread(target=counter.loop, args=(port,)) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if counter.errors:
        raise LoadError(f"{counter.errors} of {counter.ok + counter.errors} connections failed; "
                        f"last: {counter.last_error}")
    return counter.ok / elapsed


def ping_pong_us(port: int, rounds: int, warmup: int = 50) -> list[float]:
    """Round-trip times (microseconds) of 1-byte ping-pongs over one connection."""
    samples: list[float] = []
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(warmup + rounds):
            t0 = time.perf_counter_ns()
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise LoadError("ping-pong: connection closed")
            if i >= warmup:
                samples.append((time.perf_counter_ns() - t0) / 1000)
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def echo_check(port: int, attempts: int = 30) -> None:
    """Wait until one echo round trip through `port` works (the path is up end to end)."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            _echo_once(port)
            return
        except (OSError, LoadError) as exc:
            last = exc
            time.sleep(0.2)
    raise LoadError(f"no echo through port {port}: {last!r}")


class RssSampler:
    """Samples VmRSS of some pids in a thread and keeps the maximum per pid."""

    def __init__(self, pids: dict[str, int], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self.max_kib: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        for name, pid in self.pids.items():
            kib = rss_kib(pid)
            if kib is not None and kib > self.max_kib.get(name, 0):
                self.max_kib[name] = kib

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
