"""Multi-host end-to-end helpers: sites in Linux network namespaces joined by veth pairs.

Every namespace, veth pair, router process and test server made through a `NetLab` is
torn down by `NetLab.cleanup()`, which the fixtures call even when a test fails. Addresses
are /30 subnets of 10.213.0.0/16 and only ever live on veth interfaces the lab created;
nothing is routed outside, and IP forwarding is never enabled (transit routers forward
flows, the kernel does not).

Sockets for clients and servers that must live inside a namespace are made in a helper
thread that joined the namespace with setns(2) (a per-thread operation); a socket keeps
the namespace it was created in, whichever thread uses it later.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.services import Server
from tests.support.sites import Site, link, site_env, start_sites

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
RUN_ID = os.getpid() % 10000
PREFIX = f"vr{RUN_ID}x"  # every namespace and root-side veth of this run starts with it
_labs = itertools.count(1)
_subnets = itertools.count(0)


def _subnet_block() -> int:
    """Which of 500 blocks of 32 /30 subnets this process takes: by pid, so that two runs
    at once rarely meet, and under pytest-xdist by worker too (gw0, gw1, ...), so that two
    workers of one run never do (pids a multiple of 500 apart would)."""
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) % count if worker[2:].isdigit() else 0
    return (RUN_ID % (500 // count)) * count + index


_SUBNET_BLOCK = _subnet_block()
_libc = ctypes.CDLL(None, use_errno=True)


# ---- preconditions ---------------------------------------------------------------------------

_probe_result: str | None = None
_probed = False


def _probe() -> str | None:
    """None when root can create a network namespace, else why not."""
    if os.geteuid() != 0:
        return "not running as root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = f"{PREFIX}probe"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def require_netns(*, nft: bool = False) -> None:
    """Skip the test unless we are root and `ip netns` (and optionally nft) work."""
    global _probe_result, _probed
    if not _probed:
        _probe_result, _probed = _probe(), True
    if _probe_result is not None:
        pytest.skip(f"needs root and ip netns: {_probe_result}")
    if nft and shutil.which("nft") is None:
        pytest.skip("needs root and ip netns: nftables (`nft`) is not installed")


# ---- running things in a namespace ------------------------------------------------------------

def run(*cmd: str, ns: str | None = None, check: bool = True, input: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    result = subprocess.run(full, capture_output=True, text=True, input=input, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(full)} failed ({result.returncode}):\n"
                             f"{result.stdout}{result.stderr}")
    return result


def in_ns(ns: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call fn in a thread that entered network namespace `ns` (None: this namespace).

    Sockets fn creates stay in `ns`; threads it starts inherit the namespace."""
    if ns is None:
        return fn(*args, **kwargs)
    out: list[T] = []
    err: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns({ns}): {os.strerror(e)}")
            finally:
                os.close(fd)
            out.append(fn(*args, **kwargs))
        except BaseException as exc:
            err.append(exc)

    thread = threading.Thread(target=body, name=f"in-{ns}")
    thread.start()
    thread.join()
    if err:
        raise err[0]
    return out[0]


class Background:
    """fn(*args) in a background thread inside `ns`; remembers its result or exception."""

    def __init__(self, ns: str | None, fn: Callable[..., Any], *args: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(ns, fn, args), daemon=True)
        self.thread.start()

    def _run(self, ns: str | None, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self.result = in_ns(ns, fn, *args)
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float) -> bool:
        """True if it finished within `timeout` s."""
        self.thread.join(timeout)
        return not self.thread.is_alive()


# ---- sites in namespaces -----------------------------------------------------------------------

class NetnsSite(Site):
    """A Site whose router runs inside network namespace `ns` (None: the root namespace).

    The control socket is a path in the shared file system, so sitectl runs in the root
    namespace, except `link create`, which dials the issuer and must run in `ns`."""

    def __init__(self, workdir: Path, name: str, env: dict[str, str], *, ns: str | None,
                 host: str) -> None:
        super().__init__(workdir, name, env, host=host)
        self.ns = ns

    def command_prefix(self, args: tuple[str, ...]) -> list[str]:
        # `ip netns exec` execs the command: a router's pid is its own, so signals reach it.
        if self.ns and (args[:1] == ("run",) or args[:2] == ("link", "create")):
            return ["ip", "netns", "exec", self.ns]
        return []

    # ---- status shortcuts (from the control socket: `state`)
    def network(self) -> dict[str, Any]:
        net: dict[str, Any] = self.state(network=True)["network"]
        return net

    def site_reachable(self, site: str) -> bool | None:
        """Whether `site` is reachable in this router's view (None: not known at all)."""
        for s in self.network()["sites"]:
            if s["site"] == site:
                return bool(s["reachable"])
        return None

    def path(self, key: str) -> list[str] | None:
        entry = self.network()["keys"].get(key)
        return None if entry is None else entry["path"]

    def listener_reachable(self, key: str) -> bool:
        return any(lst["reachable"] for lst in self.state()["listeners"] if lst["key"] == key)

    def link_flows(self, peer_site: str) -> int:
        return sum(lk["flows"] for lk in self.state()["links"]
                   if lk["peer_site"] == peer_site and lk["state"] == "up")


@dataclass
class VethEnd:
    ns: str | None
    ifname: str
    addr: str  # without prefix length


class NetLab:
    """Namespaces, veth pairs, routers and servers of one test; `cleanup` removes them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = site_env(workdir)
        self.tag = f"{PREFIX}{next(_labs)}"
        self.namespaces: list[str] = []
        self.root_ifaces: list[str] = []
        self.sites: list[NetnsSite] = []
        self.servers: list[Server] = []
        self._veths = itertools.count(1)

    # ---- topology
    def netns(self, short: str) -> str:
        name = f"{self.tag}{short}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "link", "set", "lo", "up", ns=name)
        return name

    def veth(self, ns_a: str | None, ns_b: str | None) -> tuple[VethEnd, VethEnd]:
        """A veth pair between two namespaces (None: root) on its own /30 subnet."""
        idx = (_SUBNET_BLOCK * 32 + next(_subnets)) % 16384
        base = idx * 4
        addr_a = f"10.213.{base >> 8}.{(base & 255) + 1}"
        addr_b = f"10.213.{base >> 8}.{(base & 255) + 2}"
        n = next(self._veths)
        if_a, if_b = f"{self.tag}v{n}a", f"{self.tag}v{n}b"
        assert len(if_a) <= 15, if_a
        run("ip", "link", "add", if_a, "type", "veth", "peer", "name", if_b)
        self.root_ifaces.append(if_a)
        self.root_ifaces.append(if_b)
        for ifname, ns, addr in ((if_a, ns_a, addr_a), (if_b, ns_b, addr_b)):
            if ns is not None:
                run("ip", "link", "set", ifname, "netns", ns)
            run("ip", "addr", "add", f"{addr}/30", "dev", ifname, ns=ns)
            run("ip", "link", "set", ifname, "up", ns=ns)
        return VethEnd(ns_a, if_a, addr_a), VethEnd(ns_b, if_b, addr_b)

    def nft(self, ns: str, script: str) -> None:
        """Load an nftables script into namespace `ns` (never the root namespace)."""
        assert ns in self.namespaces, "nftables rules only go into namespaces we created"
        run("nft", "-f", "-", ns=ns, input=script)

    def cut(self, ns: str, table: str, ifaces: list[str] | None = None) -> None:
        """Silently drop everything in and out of `ifaces` (default: all but lo) in `ns`."""
        if ifaces is None:
            match_in, match_out = 'iifname != "lo"', 'oifname != "lo"'
        else:
            names = ", ".join(f'"{i}"' for i in ifaces)
            match_in, match_out = f"iifname {{ {names} }}", f"oifname {{ {names} }}"
        self.nft(ns, f"""
table inet {table} {{
  chain in {{ type filter hook input priority -100; policy accept; {match_in} drop; }}
  chain out {{ type filter hook output priority -100; policy accept; {match_out} drop; }}
}}
""")

    def uncut(self, ns: str, table: str) -> None:
        run("nft", "delete", "table", "inet", table, ns=ns)

    # ---- routers and servers
    def site(self, name: str, ns: str | None, host: str,
             limits: dict[str, float] | None = None, *, start: bool = True) -> NetnsSite:
        """A site in `ns` advertising `host`, with `limits` written into its site.toml;
        its router started unless `start` is False (`start` several at once)."""
        site = NetnsSite(self.workdir, name, self.env, ns=ns, host=host)
        self.sites.append(site)
        site.init()
        if limits:
            cfg = site.dir / "site.toml"
            text = cfg.read_text()
            for key, value in limits.items():
                text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value!r}", text)
            cfg.write_text(text)
        if start:
            site.start()
        return site

    def start(self, *sites: NetnsSite) -> None:
        """Start the routers of `sites` side by side."""
        start_sites(*sites)

    def link(self, issuer: NetnsSite, redeemer: NetnsSite, *, cost: int | None = None) -> None:
        """The redeemer dials the issuer's --host, so that must be on their shared subnet."""
        link(issuer, redeemer, self.workdir, cost=cost)

    def server(self, ns: str | None, factory: Callable[..., T], *args: Any) -> T:
        srv = in_ns(ns, factory, *args)
        assert isinstance(srv, Server)
        self.servers.append(srv)
        return srv

    # ---- teardown
    def cleanup(self) -> None:
        for site in self.sites:
            try:
                site.stop(signal.SIGKILL)
            except Exception:  # keep tearing down
                if site.proc is not None:
                    site.proc.kill()
        for srv in self.servers:
            srv.close()
        for ns in self.namespaces:  # also destroys the veth ends inside, hence their peers
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for ifname in self.root_ifaces:  # any end still in the root namespace
            if Path(f"/sys/class/net/{ifname}").exists():
                subprocess.run(["ip", "link", "del", ifname], capture_output=True)


def leftovers() -> list[str]:
    """Namespaces of this run still present (for assertions in teardown)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.strip() and line.split()[0].startswith(PREFIX)]


# ---- a server that says who it is -------------------------------------------------------------

class NameServer(Server):
    """Sends its name and a newline, then holds the connection until the client closes."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        conn.sendall(self.name.encode() + b"\n")
        while conn.recv(4096):
            pass


def open_named(port: int, timeout: float = 15) -> tuple[socket.socket, str]:
    """Connect to a NameServer through a listener; return the open socket and the name."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = b""
    try:
        while not data.endswith(b"\n"):
            more = sock.recv(256)
            if not more:
                raise ConnectionError(f"closed before a name was sent (got {data!r})")
            data += more
    except BaseException:
        sock.close()
        raise
    return sock, data.decode().strip()


def ask_name(port: int, timeout: float = 15) -> str:
    sock, name = open_named(port, timeout)
    sock.close()
    return name


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
