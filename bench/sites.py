"""Several router sites on loopback, driven through sitectl, for the multi-hop benchmark.

Every site lives in `root/NAME` (XDG_DATA_HOME points into `root` too); every router is a
`sitectl run` child whose stdout/stderr are appended to `root/router-NAME.log`, so a restarted
router keeps one log. `SiteNet.close()` stops them all (SIGCONT first, in case one is frozen;
then SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from procs import HOST, child_env, free_port, log_tail, wait_until

START_TIMEOUT = 30.0


class SetupError(RuntimeError):
    """A site could not be set up or did not answer."""


class Site:
    def __init__(self, net: SiteNet, name: str) -> None:
        self.net = net
        self.name = name
        self.dir = net.root / name
        self.log = net.root / f"router-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- sitectl
    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [self.net.sitectl, "--site-dir", str(self.dir), *args]
        proc = subprocess.run(argv, env=self.net.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise SetupError(f"sitectl {' '.join(args)} ({self.name}) failed: "
                             f"{(proc.stderr or proc.stdout).strip()}")
        return proc

    def status(self, network: bool = False) -> dict[str, Any]:
        args = ["status", "--json", *(["--network"] if network else [])]
        data: dict[str, Any] = json.loads(self.ctl(*args).stdout)
        return data

    def init(self) -> None:
        self.ctl("init", self.name, "--host", HOST, "--bind", HOST,
                 "--link-port", str(free_port()))

    # ---- the router process
    def start(self, wait: bool = True) -> None:
        if self.alive():
            raise SetupError(f"router {self.name} is already running")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.net.sitectl, "--site-dir", str(self.dir), "run"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.net.env)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        def ready() -> bool:
            if not self.alive():
                raise SetupError(f"router {self.name} exited early:\n{log_tail(self.log)}")
            return self.ctl("status", check=False).returncode == 0

        wait_until(ready, START_TIMEOUT, f"router {self.name} ready", step=0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise SetupError(f"router {self.name} is not running")
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (works on a stopped process too) and reap."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)

    def stop(self, grace: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace)
        return self.proc.returncode

    def tail(self, lines: int = 25) -> str:
        return log_tail(self.log, lines)


class SiteNet:
    """A set of sites under one temporary root."""

    def __init__(self, root: Path, sitectl: str) -> None:
        self.root = root
        self.sitectl = sitectl
        self.env = child_env(root / "xdg")
        self.sites: dict[str, Site] = {}
        self.closed = False
        root.mkdir(parents=True, exist_ok=True)

    def add(self, name: str) -> Site:
        site = Site(self, name)
        self.sites[name] = site
        site.init()
        return site

    def start_all(self) -> None:
        for site in self.sites.values():
            site.start(wait=False)
        for site in self.sites.values():
            site.wait_ready()

    def link(self, issuer: Site, redeemer: Site, cost: int | None = None) -> str:
        """`redeemer` dials `issuer`; returns the link's name on the redeemer."""
        token = self.root / f"{issuer.name}-for-{redeemer.name}.token"
        issuer.ctl("token", "issue", "--expires", "15m", "--uses", "1", "-o", str(token))
        name = f"to-{issuer.name}"
        args = ["link", "create", str(token), "--name", name]
        if cost is not None:
            args += ["--cost", str(cost)]
        out = redeemer.ctl(*args).stdout
        if "up" not in out:
            raise SetupError(f"link {redeemer.name} -> {issuer.name} did not come up: {out}")
        return name

    def close(self) -> None:
        """Stop every router (reverse order of creation); idempotent."""
        if self.closed:
            return
        self.closed = True
        for site in reversed(list(self.sites.values())):
            try:
                code = site.stop()
            except (OSError, subprocess.SubprocessError) as exc:
                print(f"NOTE: stopping router {site.name}: {exc}", flush=True)
                continue
            if code not in (None, 0, -signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGTERM):
                print(f"NOTE: router {site.name} exited with code {code}; log tail:\n"
                      f"{site.tail(8)}", flush=True)

    def logs(self) -> dict[str, Path]:
        return {name: site.log for name, site in self.sites.items()}

    def print_tails(self, lines: int = 25) -> None:
        for name, site in self.sites.items():
            print(f"--- tail of router {name} log ---\n{site.tail(lines)}", flush=True)


def wait_path(site: Site, key: str, path: list[str], timeout: float = START_TIMEOUT) -> None:
    """Wait until `site` routes `key` along exactly `path` (site names)."""
    last: Any = None

    def check() -> bool:
        nonlocal last
        net = site.status(network=True).get("network", {})
        last = net.get("keys", {}).get(key, {}).get("path")
        return bool(last == path)

    try:
        wait_until(check, timeout, f"{site.name} to route {key} via {path}", step=0.1)
    except TimeoutError as exc:
        raise SetupError(f"{exc} (last path: {last})") from exc
