"""The database loads of db_bench.py: pgbench, redis-benchmark, sequential new connections,
and CPU and memory read from /proc."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from loads import LoadError

from tests.support.sites import HOST

PG_PORT = 5432
REDIS_PORT = 6379
PG_USER = "postgres"
PG_DB = "vanbench"  # created for the benchmark; else a schema of that name in PG_FALLBACK_DB
PG_FALLBACK_DB = "test"
PG_SCALE = 4  # pgbench -i -s: 4 branches, so that TPC-B's 4 clients rarely wait on one row
REDIS_DB = 15  # redis-benchmark's SETs go to this database, not to 0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Done:
    """What a load reports: its metric values, and how many operations it did (for
    CPU per operation)."""

    values: dict[str, float]
    ops: int


def _run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{argv[0]} did not finish in {timeout:g} s") from exc
    if proc.returncode != 0:
        raise LoadError(f"{Path(argv[0]).name} exited {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc.stdout


# --- PostgreSQL ------------------------------------------------------------------------


@dataclass(frozen=True)
class PgTarget:
    """The scratch database pgbench runs in: its name, and the environment that puts
    pgbench's tables in their own schema when it is a shared database."""

    db: str
    env: dict[str, str]
    where: str


def _psql(db: str, sql: str, env: dict[str, str] | None = None) -> str:
    return _run(["psql", "-h", HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", db,
                 "-v", "ON_ERROR_STOP=1", "-tAc", sql], 60, env).strip()


def prepare_pg() -> PgTarget:
    """Database vanbench (created if missing), or schema vanbench in database test when
    creating a database is not allowed; then `pgbench -i` into it. LoadError if there
    is no PostgreSQL to use."""
    env = dict(os.environ)
    try:
        exists = _psql("postgres", f"select 1 from pg_database where datname = '{PG_DB}'")
        if exists != "1":
            _run(["createdb", "-h", HOST, "-p", str(PG_PORT), "-U", PG_USER, PG_DB], 60)
        target = PgTarget(PG_DB, env, f"database {PG_DB}")
    except LoadError as exc:
        _psql(PG_FALLBACK_DB, f"create schema if not exists {PG_DB}")  # may raise: no pg
        env["PGOPTIONS"] = f"-c search_path={PG_DB}"
        target = PgTarget(PG_FALLBACK_DB, env,
                          f"schema {PG_DB} of database {PG_FALLBACK_DB} ({exc})")
    _run(["pgbench", "-h", HOST, "-p", str(PG_PORT), "-U", PG_USER, "-i", "-q",
          "-s", str(PG_SCALE), target.db], 300, target.env)
    return target


_TPS = re.compile(r"^tps = ([0-9.]+)", re.M)
_DONE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


def pgbench(target: PgTarget, port: int, seconds: float, clients: int, *,
            threads: int = 1, select_only: bool = True, connect_each: bool = False) -> Done:
    """tps of one pgbench run (`-S` select-only, or TPC-B-like; `-C` a new connection
    per transaction)."""
    argv = ["pgbench", "-h", HOST, "-p", str(port), "-U", PG_USER, "-n",
            "-T", f"{max(1, round(seconds))}", "-c", str(clients), "-j", str(threads)]
    argv += ["-S"] if select_only else []
    argv += ["-C"] if connect_each else []
    out = _run([*argv, target.db], seconds + 60, target.env)
    tps, done = _TPS.search(out), _DONE.search(out)
    if tps is None or done is None:
        raise LoadError(f"pgbench printed no tps: {out.strip()[-300:]}")
    failed = _FAILED.search(out)
    if failed is not None and int(failed.group(1)):
        raise LoadError(f"pgbench: {failed.group(1)} failed transactions")
    return Done({"tps": float(tps.group(1))}, int(done.group(1)))


def pg_ready() -> None:
    _psql("postgres", "select 1")


# --- Redis -----------------------------------------------------------------------------

REDIS_TESTS = {"PING_MBULK": "ping", "SET": "set", "GET": "get"}


def redis_ready() -> None:
    if _run(["redis-cli", "-h", HOST, "-p", str(REDIS_PORT), "ping"], 10).strip() != "PONG":
        raise LoadError("redis-cli ping did not answer PONG")


def redis_benchmark(port: int, requests: int, clients: int = 50) -> Done:
    """Requests/s of PING (multi-bulk), SET and GET; PING_INLINE runs too (it comes
    with -t ping) and counts in the operations, not in the values."""
    out = _run(["redis-benchmark", "-h", HOST, "-p", str(port), "-c", str(clients),
                "-n", str(requests), "-t", "ping,set,get", "--csv", "--dbnum", str(REDIS_DB)],
               requests / 500 + 120)
    values: dict[str, float] = {}
    tests = 0
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if len(cells) < 2 or cells[0] == "test":
            continue
        tests += 1
        if cells[0] in REDIS_TESTS:
            values[REDIS_TESTS[cells[0]]] = float(cells[1])
    if set(values) != set(REDIS_TESTS.values()):
        raise LoadError(f"redis-benchmark printed no rate for some tests: {out.strip()[-300:]}")
    return Done(values, tests * requests)


# --- new connections, one after another --------------------------------------------------


def sequential_connections(port: int, seconds: float) -> Done:
    """A plain blocking client: connect, send 1 byte, read the echo, close; repeat."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        with socket.create_connection((HOST, port), timeout=5) as s:
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise LoadError("new connection: closed before the echo")
        count += 1
    return Done({"conn_rate": count / (time.perf_counter() - start)}, count)


# --- /proc -----------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of a process so far, in seconds (/proc/PID/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_by_pid(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_s(pid) for name, pid in pids.items()}
