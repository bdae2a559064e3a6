"""HTTP benchmark: requests/s and latency, direct vs. two routers vs. an nginx chain (mTLS).

Run from the repository root:  .venv/bin/python bench/http_bench.py [--quick] [--router-tcp]
See bench/README.md ("HTTP benchmark") for what is measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
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
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from loads import LoadError, percentile
from numbers_fmt import fmt, fmt_ratio, ratio

import certs
from tests.support import sites
from tests.support.sites import HOST, Process, SiteError, free_port, log_tail

RESULTS = Path(__file__).resolve().parent / "http_results.json"
BODY = "hello from the backend"  # the backend's fixed response body
PATHS = ("direct", "router", "router-tcp", "nginx")


class Settings(NamedTuple):
    reps: int
    seconds: int  # per load run; wrk takes whole seconds


FULL, QUICK = Settings(reps=3, seconds=5), Settings(reps=1, seconds=2)


class Result(NamedTuple):
    rps: float
    p50_us: float
    p99_us: float
    requests: int


def _run(argv: list[str], seconds: int) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise LoadError(f"{argv[0]} exited {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return proc.stdout


def _garbled(tool: str, out: str) -> LoadError:
    return LoadError(f"{tool} output not understood: {out.strip()[-300:]}")


def _us(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[unit]


def wrk(port: int, seconds: int, conns: int, close: bool = False) -> Result:
    argv = ["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{seconds}s", "--latency",
            "--timeout", "5s", *(["-H", "Connection: close"] if close else []),
            f"http://{HOST}:{port}/"]
    out = _run(argv, seconds)
    m = re.search(r"(\d+) requests in.*Requests/sec:\s+([\d.]+)", out, re.S)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    if m is None or len(lat) != 2:
        raise _garbled("wrk", out)
    total, rps, p50, p99 = int(m.group(1)), float(m.group(2)), _us(lat["50"]), _us(lat["99"])
    bad = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    bad += sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    if bad > max(1, total // 1000):  # a few resets at the end of a run are not failures
        raise LoadError(f"wrk: {bad} of {total} requests failed: {out.strip()[-300:]}")
    return Result(rps, p50, p99, total)


def h2load(port: int, seconds: int, clients: int, streams: int, log: Path,
           h1_rate: int | None = None) -> Result:
    """h2load (HTTP/2 prior knowledge, or HTTP/1.1 at a fixed rate); latency from its log."""
    argv = ["h2load", "-c", str(clients), "-m", str(streams), "-t", str(min(2, clients)),
            "-D", str(seconds), "--log-file", str(log)]
    if h1_rate is not None:
        argv += ["--h1", "--rps", str(h1_rate // clients)]
    out = _run([*argv, f"http://{HOST}:{port}/"], seconds)
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    counts = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if m is None or counts is None:
        raise _garbled("h2load", out)
    ok, *failed = (int(g) for g in counts.groups())
    # Columns: start (us since the epoch), status, microseconds until the end of the response.
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    log.unlink()
    durations = [float(us) for _, status, us in rows if status.startswith("2")]
    if not durations or sum(failed) > max(1, ok // 1000):
        raise LoadError(f"h2load: {ok} succeeded, {sum(failed)} failed: {out.strip()[-300:]}")
    return Result(float(m.group(1)), percentile(durations, 50), percentile(durations, 99), ok)


# A load: a path's entry ports ({"h1": port, "h2": port}), a duration, a scratch file.
Load = Callable[[dict[str, int], int, Path], Result]
LOADS: dict[str, tuple[str, Load]] = {
    "h1_c1": ("h1 keep-alive, 1 conn", lambda e, s, _: wrk(e["h1"], s, 1)),
    "h1_c10": ("h1 keep-alive, 10 conns", lambda e, s, _: wrk(e["h1"], s, 10)),
    "h1_close": ("h1 Connection: close, 10 conns",
                 lambda e, s, _: wrk(e["h1"], s, 10, close=True)),
    "h2_10x10": ("h2, 10 clients x 10 streams", lambda e, s, log: h2load(e["h2"], s, 10, 10, log)),
    "h1_1k": ("h1 at 1000 req/s, 4 conns",
              lambda e, s, log: h2load(e["h1"], s, 4, 1, log, h1_rate=1000)),
}


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes so far, from /proc/PID/stat (fields 14 and 15)."""
    stats = [Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split() for pid in pids]
    return sum(int(f[11]) + int(f[12]) for f in stats) / os.sysconf("SC_CLK_TCK")


def curl(args: list[str]) -> tuple[str, bytes]:
    """(status code, body) of one curl request."""
    proc = subprocess.run(["curl", "-s", "-m", "10", "-w", "\n%{http_code}", *args],
                          capture_output=True, timeout=30)
    body, _, code = proc.stdout.rpartition(b"\n")
    return code.decode(), body


# --- the paths ---------------------------------------------------------------------


def write_certs(root: Path) -> dict[str, str]:
    """A CA, a server and a client certificate from the project's `certs`: name -> file."""
    ca = certs.CertificateAuthority.generate("bench")
    pems = {"ca": ca.cert_pem}
    for name, role in (("server", certs.Role.SERVER), ("client", certs.Role.CLIENT)):
        pair = ca.issue(name, role=role)
        pems |= {f"{name}.crt": pair.cert_pem, f"{name}.key": pair.key_pem}
    for name, pem in pems.items():
        fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    return {name: str(root / name) for name in pems}


def nginx_conf(root: Path, http: str) -> str:
    # One process (no master), like each router; every file it writes is under `root`.
    temps = "".join(f"  {k}_temp_path {root}/{k};\n"
                    for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"daemon off;\nmaster_process off;\npid {root}/nginx.pid;\n"
            f"error_log {root}/error.log warn;\nevents {{ worker_connections 4096; }}\n"
            f"http {{\n  access_log off;\n{temps}  keepalive_requests 10000000;\n"
            f"  keepalive_timeout 60s;\n{http}\n}}\n")


KEEPALIVE_PROXY = 'proxy_http_version 1.1; proxy_set_header Connection "";'


@dataclass
class Bench:
    settings: Settings
    root: Path
    stack: ExitStack
    nginx_bin: str
    notes: list[str] = field(default_factory=list)
    entries: dict[str, dict[str, int]] = field(default_factory=dict)
    pids: dict[str, list[int]] = field(default_factory=dict)  # the proxies of each path
    logs: dict[str, list[Path]] = field(default_factory=dict)
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def note(self, text: str, tails: str | None = None) -> None:
        """Keep `text` for the report; print it, and the tails of the logs of path `tails`."""
        self.notes.append(text)
        print(f"NOTE: {text}", flush=True)
        for log in self.logs.get(tails or "", []):
            print(f"--- tail of {log} ---\n{log_tail(log, 15)}", flush=True)

    def nginx(self, path: str, name: str, http: str, ports: list[int]) -> Process:
        root = self.root / name
        root.mkdir()
        (root / "nginx.conf").write_text(nginx_conf(root, http))
        proc = Process(name, [self.nginx_bin, "-p", str(root), "-c", str(root / "nginx.conf"),
                              "-e", str(root / "error.log")], root / "stdout.log")
        self.stack.callback(proc.stop)
        self.logs.setdefault(path, []).append(root / "error.log")

        def up() -> bool:
            if not proc.alive():
                raise SiteError(f"{name} exited: {log_tail(root / 'error.log', 5)}")
            return all(sites.port_open(port) for port in ports)
        sites.wait_for(up, sites.START_TIMEOUT, f"{name} on ports {ports}", step=0.1)
        return proc

    def start_backend(self) -> dict[str, int]:
        ports = {"h1": free_port(), "h2": free_port()}  # h2: h2c, prior knowledge only
        body = f'location / {{ default_type text/plain; return 200 "{BODY}"; }}'
        self.nginx("direct", "backend", f"  server {{ listen {HOST}:{ports['h1']}; {body} }}\n"
                   f"  server {{ listen {HOST}:{ports['h2']} http2; {body} }}",
                   list(ports.values()))
        self.entries["direct"] = ports
        return ports

    def start_nginx_chain(self, backend: dict[str, int]) -> None:
        """nginx proxy -> TLS 1.3, client certificate required -> nginx proxy -> backend."""
        files = write_certs(self.root)
        tls, ports = free_port(), {"h1": free_port(), "h2": free_port()}
        inner = self.nginx("nginx", "nginx-tls", (
            f"  upstream backend {{ server {HOST}:{backend['h1']}; keepalive 256; }}\n"
            f"  server {{ listen {HOST}:{tls} ssl; ssl_protocols TLSv1.3;\n"
            f"    ssl_certificate {files['server.crt']};\n"
            f"    ssl_certificate_key {files['server.key']};\n"
            f"    ssl_client_certificate {files['ca']}; ssl_verify_client on;\n"
            f"    location / {{ proxy_pass http://backend; {KEEPALIVE_PROXY} }} }}"), [tls])
        outer = self.nginx("nginx", "nginx-proxy", (
            f"  upstream tls_hop {{ server {HOST}:{tls}; keepalive 256; }}\n"
            f"  server {{ listen {HOST}:{ports['h1']}; listen {HOST}:{ports['h2']} http2;\n"
            f"    location / {{ proxy_pass https://tls_hop; {KEEPALIVE_PROXY}\n"
            f"      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
            f"      proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;\n"
            f"      proxy_ssl_certificate {files['client.crt']}; "
            f"proxy_ssl_certificate_key {files['client.key']};\n"
            f"      proxy_ssl_trusted_certificate {files['ca']}; proxy_ssl_verify on;\n"
            f"      proxy_ssl_name server; proxy_ssl_server_name on; }} }}"),
            list(ports.values()))
        # The TLS hop must really demand a client certificate (nginx answers 400 without).
        if (code := curl([f"https://{HOST}:{tls}/", "-k"])[0]) != "400":
            raise SiteError(f"nginx TLS hop answered {code} to a client without a certificate")
        self.entries["nginx"] = ports
        self.pids["nginx"] = [outer.pid, inner.pid]

    def start_routers(self, path: str, backend: dict[str, int]) -> None:
        """east listener -> mTLS link -> west connector; `router-tcp` tunnels TCP instead."""
        net = sites.SiteNet(self.root / path)  # `sitectl run` routers, logs in its root
        self.stack.callback(net.close)
        west, east = net.add("west"), net.add("east")
        self.logs[path] = list(net.logs().values())
        net.start_all()
        net.link(west, east)
        ports: dict[str, int] = {}
        for key, (entry, proto) in {"api": ("h1", "http1"), "api2": ("h2", "http2")}.items():
            tcp = path == "router-tcp"
            west.sitectl("connector", "create", key, f"{HOST}:{backend[entry]}",
                         *([] if tcp else ["--protocol", proto]))
            ports[entry] = free_port()
            east.sitectl("listener", "create", key, str(ports[entry]),
                         *([] if tcp else ["--protocol", "http"]))
        sites.wait_for(lambda: east.key_reachable("api") and east.key_reachable("api2"),
                       sites.START_TIMEOUT, f"{path}: keys reachable on east")
        self.entries[path] = ports
        self.pids[path] = [west.pid, east.pid]

    def check(self, path: str) -> None:
        """What a user sees: status 200 and the backend's body, over HTTP/1.1 and h2c."""
        want = hashlib.sha256(BODY.encode()).hexdigest()
        for entry, extra in (("h1", "--http1.1"), ("h2", "--http2-prior-knowledge")):
            code, body = curl([f"http://{HOST}:{self.entries[path][entry]}/", extra])
            if code != "200" or hashlib.sha256(body).hexdigest() != want:
                raise LoadError(f"{path} {entry} ({extra}): status {code}, body {body[:100]!r}")

    # --- measuring -----------------------------------------------------------------

    def run_all(self) -> None:
        paths = list(self.entries)
        for path in paths:  # warm-up: connections, pools and caches; not recorded
            for name in ("h1_c10", "h2_10x10"):
                self.measure(f"[warm-up] {name:<8} {path:<10}", name, path, 1)
        for rep in range(self.settings.reps):  # interleaved, the first path rotated
            order = paths[rep % len(paths):] + paths[:rep % len(paths)]
            for name in LOADS:
                for path in order:
                    label = f"[{rep + 1}/{self.settings.reps}] {name:<8} {path:<10}"
                    values = self.measure(label, name, path, self.settings.seconds)
                    for row, value in values.items():
                        self.samples.setdefault(f"{name}.{row}", {}).setdefault(
                            path, []).append(value)

    def measure(self, label: str, name: str, path: str, seconds: int) -> dict[str, float]:
        """One load run: req/s, p50, p99 and the proxies' CPU per request (us)."""
        pids = self.pids.get(path, [])
        cpu0 = cpu_seconds(pids)
        try:
            r = LOADS[name][1](self.entries[path], seconds, self.root / "h2load.log")
        except (LoadError, OSError, subprocess.SubprocessError) as exc:
            self.note(f"{label.strip()} FAILED: {exc}", tails=path)
            return {}
        values = {"rps": r.rps, "p50": r.p50_us, "p99": r.p99_us}
        if pids:
            values["cpu"] = (cpu_seconds(pids) - cpu0) * 1e6 / max(1, r.requests)
        print(f"{label} " + "  ".join(f"{k} {v:.0f}" for k, v in values.items()), flush=True)
        time.sleep(0.3)  # let closed connections drain between runs
        return values


# --- reporting -----------------------------------------------------------------------

ROWS = (("rps", "req/s", True, "requests/s"), ("p50", "us", False, "latency p50"),
        ("p99", "us", False, "latency p99"), ("add50", "us", False, "added p50 vs direct"),
        ("add99", "us", False, "added p99 vs direct"),
        ("cpu", "us/req", False, "proxies' CPU/request"))


def summary(samples: dict[str, dict[str, list[float]]], paths: list[str]) -> dict[str, Any]:
    ratios = [*((p, "direct") for p in paths[1:]),
              *((p, "nginx") for p in paths if p.startswith("router"))]
    med = {k: {p: statistics.median(v) for p, v in by.items() if v} for k, by in samples.items()}
    out: dict[str, Any] = {}
    for load, (title, _) in LOADS.items():
        for row, unit, higher, label in ROWS:
            m = med.get(f"{load}.{row}", {})
            if row.startswith("add"):  # the medians' difference to direct's
                lat = med.get(f"{load}.p{row[3:]}", {})
                m = {p: v - lat["direct"] for p, v in lat.items() if "direct" in lat}
                m.pop("direct", None)
            out[f"{load}.{row}"] = {
                "label": label, "title": title, "unit": unit, "higher_is_better": higher,
                "median": {p: m.get(p) for p in paths},
                "samples": {p: samples.get(f"{load}.{row}", {}).get(p, []) for p in paths},
                "ratios": {f"{a}/{b}": ratio(m.get(a), m.get(b)) for a, b in ratios},
            }
    return out


def table(results: dict[str, Any], paths: list[str]) -> str:
    """One block of rows per load; ratios are of the medians."""
    names = list(next(iter(results.values()))["ratios"])
    rows = [["", "unit", "better", *paths, *names]]
    for load, (title, _) in LOADS.items():
        rows.append([title, *[""] * (len(rows[0]) - 1)])
        rows += [[f"  {r['label']}", r["unit"], "higher" if r["higher_is_better"] else "lower",
                  *(fmt(r["median"][p]) for p in paths),
                  *(fmt_ratio(r["ratios"][n]) for n in names)]
                 for k, r in results.items() if k.startswith(f"{load}.")]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def findings(results: dict[str, Any]) -> list[str]:
    """The issue's goals (h1 keep-alive 10 conns: >= 0.25x the nginx chain's req/s, moonshot
    0.5x; under 1 ms added p50 at 1000 req/s) and the routers' CPU per request."""
    out = []
    for p in ("router", "router-tcp"):
        rps = results["h1_c10.rps"]["ratios"].get(f"{p}/nginx")
        added = results["h1_1k.add50"]["median"].get(p)
        cpu = [results[f"{k}.cpu"]["median"].get(p) for k in ("h1_c10", "h1_close")]
        if rps is not None and added is not None and None not in cpu:
            out += [f"{p}: h1 10 conns {rps:.2f}x the nginx chain's req/s (goal 0.25x, moonshot "
                    f"0.5x); added p50 at 1000 req/s {added:.0f} us (goal < 1000 us)",
                    f"{p}: CPU per request per router {cpu[0] / 2:.0f} us on keep-alive, "
                    f"{cpu[1] / 2:.0f} us with a new connection per request"]
    return out or ["goals: not evaluated (no router measurements)"]


# --- main ----------------------------------------------------------------------------


def sitectl_has_protocol() -> bool:
    return all("--protocol" in subprocess.run([sites.SITECTL, kind, "create", "--help"],
                                              capture_output=True, text=True, timeout=30).stdout
               for kind in ("listener", "connector"))


def start_path(bench: Bench, path: str, start: Callable[[], None]) -> None:
    """Start a proxied path and check it; a failure skips that path with a note."""
    try:
        start()
        bench.check(path)
    except (SiteError, LoadError, OSError) as exc:
        why = " ".join(str(exc).split("\n--- router log")[0].split())  # one line
        bench.note(f"{path} path skipped, setup failed: {why}", tails=path)
        bench.entries.pop(path, None)


def run(settings: Settings, quick: bool, router_tcp: bool) -> dict[str, Any]:
    path = f"{os.environ.get('PATH', '')}:/usr/sbin"  # nginx's home, often not in a user's PATH
    tools = {t: shutil.which(t, path=path) for t in ("wrk", "h2load", "nginx", "curl")}
    if missing := [t for t, found in tools.items() if found is None]:
        sys.exit(f"http_bench: {', '.join(missing)} not found "
                 "(apt-get install -y wrk nghttp2-client nginx curl)")
    info: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="vanhttp-") as tmp, ExitStack() as stack:
        bench = Bench(settings, Path(tmp), stack, str(tools["nginx"]))
        backend = bench.start_backend()
        bench.check("direct")
        if sitectl_has_protocol():
            start_path(bench, "router", lambda: bench.start_routers("router", backend))
        else:
            bench.note("router path skipped: `sitectl listener create` / `connector create` "
                       "have no --protocol option in this checkout yet (issue 8's CLI part)")
        if router_tcp:
            start_path(bench, "router-tcp", lambda: bench.start_routers("router-tcp", backend))
        start_path(bench, "nginx", lambda: bench.start_nginx_chain(backend))
        bench.run_all()
        for log in [*bench.logs.get("router", []), *bench.logs.get("router-tcp", [])]:
            text = log.read_text(errors="replace").splitlines()
            if bad := [ln for ln in text if re.search(r" ERROR | WARNING |Traceback", ln)]:
                bench.note(f"{log} has {len(bad)} warning/error lines; first: {bad[0][:200]}")
        info["loadavg_end"] = os.getloadavg()
        paths = [p for p in PATHS if p in bench.entries or p == "router"]
        results = summary(bench.samples, paths)
        return {"timestamp": datetime.now(UTC).isoformat(timespec="seconds"), "quick": quick,
                "settings": settings._asdict(), "machine": info, "paths": paths,
                "notes": bench.notes, "findings": findings(results), "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, 2 s loads")
    parser.add_argument("--router-tcp", action="store_true",
                        help="add the path 'router-tcp': the same two routers as a TCP "
                             "tunnel (one flow per connection, not per request)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the ExitStack stops children
    report = run(QUICK if args.quick else FULL, args.quick, args.router_tcp)
    print()
    print(table(report["results"], report["paths"]))
    for text in [*report["findings"], *(f"note: {n}" for n in report["notes"])]:
        print(text)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.out}")


if __name__ == "__main__":
    main()
