"""Real routers as subprocesses, driven only through sitectl, for end-to-end tests."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SITECTL = str(BIN / "sitectl")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# A port=0 bind hands out a port from the kernel's ephemeral range, and any outgoing
# connection (a test client, a router dialling) may take it before the router that was
# given it binds it: "Address already in use" under load. So ports come from just below
# that range, which no outgoing connection uses, and none is handed out twice.
_PORTS_TOP = _ephemeral_low()
_PORTS = range(max(1024, _PORTS_TOP - 12000), _PORTS_TOP)
_given: set[int] = set()
_rng = random.Random()


def free_port() -> int:
    """A port nothing listens on now that no other caller in this run was given."""
    for _ in range(1000):
        port = _rng.choice(_PORTS)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))  # free on every address: routers bind 0.0.0.0
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1}")


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `cond` until it returns something truthy, or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Site:
    def __init__(self, workdir: Path, name: str, env: dict[str, str], *,
                 host: str = "127.0.0.1") -> None:
        self.name = name
        self.dir = workdir / name
        self.env = env
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{name}.log"
        self.link_port = free_port()

    def command_prefix(self, args: tuple[str, ...]) -> list[str]:
        """What runs a command (`run` for the router itself) in this site's host."""
        return []

    def sitectl(self, *args: str, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [*self.command_prefix(args), SITECTL, "--site-dir", str(self.dir), *args]
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"sitectl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- router log:\n{self.log_tail()}")
        return result

    def init(self) -> Site:
        self.sitectl("init", self.name, "--host", self.host, "--link-port", str(self.link_port))
        return self

    def start(self, *, rlimit_nofile: int | None = None) -> Site:
        """Start the router; `rlimit_nofile` caps its descriptors (soft = hard)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it

        def limit_fds() -> None:
            assert rlimit_nofile is not None
            resource.setrlimit(resource.RLIMIT_NOFILE, (rlimit_nofile, rlimit_nofile))

        self.proc = subprocess.Popen(
            [*self.command_prefix(("run",)), sys.executable, "-m", "router",
             "--site-dir", str(self.dir)],
            env=self.env, stdout=log, stderr=log, cwd=str(ROOT),
            preexec_fn=limit_fds if rlimit_nofile is not None else None)
        log.close()
        wait_for(self._ready, what=f"router {self.name} ready")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"router {self.name} exited:\n{self.log_tail()}")
        return self.sitectl("status", check=False).returncode == 0

    def status(self, network: bool = False) -> dict[str, Any]:
        args = ["status", "--json"] + (["--network"] if network else [])
        result: dict[str, Any] = json.loads(self.sitectl(*args).stdout)
        return result

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def key_reachable(self, key: str) -> bool:
        keys = self.status().get("keys", {})
        return bool(keys.get(key, {}).get("reachable"))

    def link_up(self, name: str) -> bool:
        return any(lk["name"] == name and lk["state"] == "up" for lk in self.status()["links"])


def link(issuer: Site, redeemer: Site, workdir: Path, *, cost: int | None = None,
         name: str | None = None) -> None:
    token = workdir / f"{issuer.name}-for-{redeemer.name}.token"
    issuer.sitectl("token", "issue", "--expires", "15m", "--uses", "1", "-o", str(token))
    args = ["link", "create", str(token)]
    if cost is not None:
        args += ["--cost", str(cost)]
    if name is not None:
        args += ["--name", name]
    out = redeemer.sitectl(*args)
    assert "up" in out.stdout, out.stdout


def site_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_DATA_HOME"] = str(tmp / "xdg")
    env.pop(ENV_SITE_DIR, None)
    return env


ENV_SITE_DIR = "SITECTL_SITE_DIR"
