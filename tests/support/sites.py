"""The one site-process wrapper: real routers as subprocesses, driven through sitectl.

Shared by the tests, `bench/` and `examples/demo.py` (which import it as `tests.support.sites`).
A `Site` inits a site directory, starts its router (`python -m router`, or `sitectl run`) as a
child whose output goes to one log file, waits for readiness (its control socket answers)
with a deadline, and stops it with SIGTERM, then SIGKILL. `SiteNet` is a set of sites under
one directory. `Process` is the same lifecycle for any other background program (servers,
stunnel)."""

from __future__ import annotations

import itertools
import json
import os
import random
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from signal import SIGCONT, SIGKILL, SIGTERM
from typing import Any, Literal

from router.errors import VanError
from router.site.create import init_site
from router.site.directory import Site as SiteDir
from sitectl.client import call

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SITECTL = str(BIN / "sitectl")
HOST = "127.0.0.1"
ENV_SITE_DIR = "SITECTL_SITE_DIR"
START_TIMEOUT = 30.0


class SiteError(AssertionError):
    """A sitectl command failed, or a router exited or did not become ready.

    An AssertionError, so that a test reports it as a failed expectation."""


class WaitTimeout(SiteError, TimeoutError):
    """`wait_for` ran out of time."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _ports() -> range:
    """The ports this process hands out. A port=0 bind gives a port from the kernel's
    ephemeral range, and any outgoing connection (a test client, a router dialling) may
    take it before the router that was given it binds it: "Address already in use" under
    load. So ports come from just below that range, which no outgoing connection uses.
    Under pytest-xdist each worker (gw0, gw1, ...) has a slice of its own, as no worker
    knows what another handed out."""
    top = _ephemeral_low()
    ports = range(max(1024, top - 12000), top)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if count > 1 and worker.startswith("gw") and worker[2:].isdigit():
        size = len(ports) // count
        index = int(worker[2:]) % count
        return ports[index * size:(index + 1) * size]
    return ports


_PORTS = _ports()
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


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition",
             step: float = 0.05) -> Any:
    """Poll `cond` until it returns something truthy; WaitTimeout after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(step)
    raise WaitTimeout(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def site_env(tmp: Path) -> dict[str, str]:
    """This environment with XDG_DATA_HOME in `tmp/xdg` and no default site directory."""
    env = dict(os.environ)
    env["XDG_DATA_HOME"] = str(tmp / "xdg")
    env.pop(ENV_SITE_DIR, None)
    return env


class Process:
    """A background program whose stdout and stderr are appended to one log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path,
                 env: dict[str, str] | None = None, *, cwd: Path | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=None if cwd is None else str(cwd), preexec_fn=preexec_fn)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = SIGTERM, grace: float = 10.0) -> int:
        """`sig` (SIGCONT first, in case it is frozen), then SIGKILL after `grace` s."""
        if self.proc.poll() is None:
            if sig != SIGKILL:
                self.proc.send_signal(SIGCONT)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


Runner = Literal["module", "sitectl"]
_ENVIRON_LOCK = threading.Lock()


class Site:
    """One site directory `workdir/name` and its router process (log in `log_path`).

    `runner` is how the router starts: "module" (`python -m router`, cwd = the repository)
    or "sitectl" (`sitectl run`, as a user types it). `code_dir` runs sitectl and the router
    from another checkout's code (PYTHONPATH and cwd there)."""

    def __init__(self, workdir: Path, name: str, env: dict[str, str], *,
                 host: str = HOST, bind: str | None = None, log_path: Path | None = None,
                 runner: Runner = "module", sitectl_bin: str = SITECTL,
                 code_dir: Path | None = None, start_timeout: float = 15.0) -> None:
        self.name = name
        self.start_timeout = start_timeout
        self.dir = workdir / name
        self.env = dict(env)
        self.host = host
        self.bind = bind
        self.runner = runner
        self.sitectl_bin = sitectl_bin
        self.cwd = ROOT
        if code_dir is not None:
            self.cwd = code_dir
            self.env["PYTHONPATH"] = str(code_dir)
        self.code_dir = code_dir
        self.process: Process | None = None
        self.log_path = log_path if log_path is not None else workdir / f"{name}.log"
        self.link_port = free_port()
        self.admin_port = free_port()  # (another checkout's code may not know it)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self.process is None else self.process.proc

    def command_prefix(self, args: tuple[str, ...]) -> list[str]:
        """What runs a command (`run` for the router itself) in this site's host."""
        return []

    def sitectl(self, *args: str, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [*self.command_prefix(args), self.sitectl_bin, "--site-dir", str(self.dir), *args]
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                                timeout=timeout, cwd=None if self.code_dir is None
                                else str(self.code_dir))
        if check and result.returncode != 0:
            raise SiteError(
                f"sitectl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- router log:\n{self.log_tail()}")
        return result

    def init(self) -> Site:
        """Create the site directory, as `sitectl init NAME --host H [--bind B] --link-port P`
        does: by calling what that command calls (`init_site`), in this process, which
        spares a sitectl process (0.2-0.3 s of CPU) per site. The command itself is tested
        in tests/daemon/test_init_cli.py; another checkout's code (`code_dir`) still gets it."""
        xdg = self.env.get("XDG_DATA_HOME")
        if not self._in_process or not xdg:
            bind = [] if self.bind is None else ["--bind", self.bind]
            admin = (["--admin-port", str(self.admin_port)] if self._in_process else [])
            self.sitectl("init", self.name, "--host", self.host, *bind,
                         "--link-port", str(self.link_port), *admin)
            return self
        # The registry of the user's sites (and so the link ports they claim) is found
        # through XDG_DATA_HOME: this site's, not the test process's (the real home).
        # One at a time, as os.environ is the whole process's.
        with _ENVIRON_LOCK:
            saved = os.environ.get("XDG_DATA_HOME")
            os.environ["XDG_DATA_HOME"] = xdg
            try:
                init_site(self.dir.expanduser().resolve(), self.name, host=self.host,
                          link_port=self.link_port, admin_port=self.admin_port,
                          bind="0.0.0.0" if self.bind is None else self.bind)
            except VanError as exc:
                raise SiteError(f"sitectl init {self.name} failed: {exc}") from exc
            finally:
                if saved is None:
                    del os.environ["XDG_DATA_HOME"]
                else:
                    os.environ["XDG_DATA_HOME"] = saved
        return self

    def router_argv(self) -> list[str]:
        if self.runner == "sitectl":
            return [self.sitectl_bin, "--site-dir", str(self.dir), "run"]
        return [sys.executable, "-m", "router", "--site-dir", str(self.dir)]

    def start(self, *, wait: bool = True,
              rlimit_nofile: int | tuple[int, int] | None = None) -> Site:
        """Start the router; `rlimit_nofile` caps its descriptors (soft = hard), or sets
        (soft, hard)."""
        if self.alive():
            raise SiteError(f"router {self.name} is already running")

        def limit_fds() -> None:
            assert rlimit_nofile is not None
            limits = rlimit_nofile if isinstance(rlimit_nofile, tuple) else (rlimit_nofile,) * 2
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)

        self.process = Process(
            f"router-{self.name}", [*self.command_prefix(("run",)), *self.router_argv()],
            self.log_path, self.env, cwd=self.cwd,
            preexec_fn=limit_fds if rlimit_nofile is not None else None)
        if wait:
            self.wait_ready()
        return self

    def run_router(self, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run the router in the foreground, for a start that must fail: its exit and output."""
        return subprocess.run([*self.command_prefix(("run",)), *self.router_argv()],
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=str(self.cwd))

    def wait_ready(self) -> None:
        wait_for(self._ready, self.start_timeout, what=f"router {self.name} ready",
                 step=0.01)

    def _ready(self) -> bool:
        if self.process is not None and not self.process.alive():
            raise SiteError(f"router {self.name} exited:\n{self.log_tail()}")
        if not self._in_process:
            return self.sitectl("status", check=False).returncode == 0
        try:
            self.state()
        except VanError:  # no socket yet, or not answering yet
            return False
        return True

    @property
    def _in_process(self) -> bool:
        """Whether the control socket may be asked from this process: not for another
        checkout's code (`code_dir`, a `sitectl_bin` of its own), whose sitectl is the
        one that knows its router."""
        return self.code_dir is None and self.sitectl_bin == SITECTL

    def admin_get(self, path: str, timeout: float = 10) -> str:
        """GET a page of the router's admin port (e.g. "/metrics"); its text."""
        url = f"http://{HOST}:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            text: str = r.read().decode()
        return text

    def status(self, network: bool = False) -> dict[str, Any]:
        """`sitectl status --json` (`--network`): what the user sees."""
        args = ["status", "--json"] + (["--network"] if network else [])
        result: dict[str, Any] = json.loads(self.sitectl(*args).stdout)
        return result

    def state(self, network: bool = False) -> dict[str, Any]:
        """The same status, asked on the control socket from this process: for polling and
        the shortcuts below. `sitectl status --json` prints exactly this reply (less its
        "ok"), and a sitectl process costs 0.2 s of CPU on a 2-core machine that the
        routers under test need. The CLI itself is asked by `status`."""
        if not self._in_process:
            return self.status(network)
        reply = call(SiteDir(self.dir).control_path, "status", {"network": network},
                     timeout=20)
        reply.pop("ok", None)
        return reply

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    @property
    def pid(self) -> int:
        if self.process is None:
            raise SiteError(f"router {self.name} is not running")
        return self.process.pid

    def rss_kib(self) -> int:
        kib = rss_kib(self.pid)
        if kib is None:
            raise SiteError("no VmRSS")
        return kib

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def signal(self, sig: int) -> None:
        """Send `sig` (SIGSTOP, say) and leave the process be."""
        if self.alive():
            assert self.process is not None
            self.process.proc.send_signal(sig)

    def stop(self, sig: int = SIGTERM, grace: float = 10.0) -> int | None:
        """Stop the router (`sig`, then SIGKILL after `grace` s); its exit code."""
        if self.process is None:
            return None
        code = self.process.stop(sig, grace)
        self.process = None
        return code

    def kill(self) -> None:
        self.stop(SIGKILL)

    def log_tail(self, n: int = 40) -> str:
        return log_tail(self.log_path, n)

    def key_reachable(self, key: str) -> bool:
        keys = self.state().get("keys", {})
        return bool(keys.get(key, {}).get("reachable"))

    def link_up(self, name: str) -> bool:
        return any(lk["name"] == name and lk["state"] == "up" for lk in self.state()["links"])


def short_lived(site: Site, lifetime_s: float) -> Site:
    """The link certificates `site` issues, and its own server certificate, live
    `lifetime_s` (its site.toml edited before its router starts)."""
    toml = site.dir / "site.toml"
    text = toml.read_text()
    default = "link_cert_lifetime_s = 2592000.0\n"
    assert default in text
    toml.write_text(text.replace(default, f"link_cert_lifetime_s = {lifetime_s}\n"))
    return site


def start_sites(*sites: Site) -> None:
    """Start several routers side by side (a start is mostly a Python process importing:
    two of them share the 2 cores) and wait until each answers; on failure every one of
    them is stopped again."""
    try:
        for site in sites:
            site.start(wait=False)
        for site in sites:
            site.wait_ready()
    except BaseException:
        for site in sites:
            site.stop(SIGKILL)
        raise


def link(issuer: Site, redeemer: Site, workdir: Path, *, cost: int | None = None,
         name: str | None = None) -> None:
    """`redeemer` redeems a one-use token of `issuer` and dials it; the link must be up."""
    token = workdir / f"{issuer.name}-for-{redeemer.name}.token"
    issuer.sitectl("token", "issue", "--expires", "15m", "--uses", "1", "-o", str(token))
    args = ["link", "create", str(token)]
    if cost is not None:
        args += ["--cost", str(cost)]
    if name is not None:
        args += ["--name", name]
    out = redeemer.sitectl(*args)
    if "up" not in out.stdout:
        raise SiteError(f"link {redeemer.name} -> {issuer.name} did not come up: {out.stdout}")


def line_of_sites(work: Path, names: str) -> list[Site]:
    """Sites named by the letters of `names`, started, each linked to the next (the
    later one redeems): a line such as a - b - c."""
    env = site_env(work)
    sites = [Site(work, name, env).init() for name in names]
    start_sites(*sites)
    try:
        for left, right in itertools.pairwise(sites):
            link(left, right, work)
    except BaseException:
        for site in sites:
            site.stop()
        raise
    return sites


class SiteNet:
    """A set of sites under one directory `root` (XDG_DATA_HOME in `root/xdg`), each router
    a `sitectl run` child logging to `root/router-NAME.log` (kept across restarts)."""

    def __init__(self, root: Path, sitectl_bin: str = SITECTL, *,
                 code_dir: Path | None = None) -> None:
        self.root = root
        self.sitectl_bin = sitectl_bin
        self.code_dir = code_dir
        self.env = site_env(root)
        self.sites: dict[str, Site] = {}
        self.closed = False
        root.mkdir(parents=True, exist_ok=True)

    def add(self, name: str) -> Site:
        site = Site(self.root, name, self.env, bind=HOST, runner="sitectl",
                    log_path=self.root / f"router-{name}.log", sitectl_bin=self.sitectl_bin,
                    code_dir=self.code_dir, start_timeout=START_TIMEOUT)
        self.sites[name] = site
        site.init()
        return site

    def start_all(self) -> None:
        start_sites(*self.sites.values())

    def link(self, issuer: Site, redeemer: Site, cost: int | None = None) -> str:
        """`redeemer` dials `issuer`; returns the link's name on the redeemer."""
        name = f"to-{issuer.name}"
        link(issuer, redeemer, self.root, cost=cost, name=name)
        return name

    def close(self, grace: float = 5.0) -> None:
        """Stop every router (reverse order of creation); idempotent."""
        if self.closed:
            return
        self.closed = True
        for site in reversed(list(self.sites.values())):
            try:
                code = site.stop(grace=grace)
            except (OSError, subprocess.SubprocessError) as exc:
                print(f"NOTE: stopping router {site.name}: {exc}", flush=True)
                continue
            if code not in (None, 0, -SIGTERM, -SIGKILL, 128 + SIGTERM):
                print(f"NOTE: router {site.name} exited with code {code}; log tail:\n"
                      f"{site.log_tail(8)}", flush=True)

    def logs(self) -> dict[str, Path]:
        return {name: site.log_path for name, site in self.sites.items()}

    def print_tails(self, lines: int = 25) -> None:
        for name, site in self.sites.items():
            print(f"--- tail of router {name} log ---\n{site.log_tail(lines)}", flush=True)


def wait_path(site: Site, key: str, path: list[str], timeout: float = START_TIMEOUT) -> None:
    """Wait until `site` routes `key` along exactly `path` (site names)."""
    last: Any = None

    def check() -> bool:
        nonlocal last
        net = site.state(network=True).get("network", {})
        last = net.get("keys", {}).get(key, {}).get("path")
        return bool(last == path)

    try:
        wait_for(check, timeout, f"{site.name} to route {key} via {path}")
    except WaitTimeout as exc:
        raise SiteError(f"{exc} (last path: {last})") from exc
