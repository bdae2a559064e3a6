"""The measured paths: two linked routers, and a stunnel client/server pair.

Each path forwards some named services (target ports on 127.0.0.1) and exposes
one local entry port per service, in `ports`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import certs
from tests.support.sites import (
    HOST,
    START_TIMEOUT,
    Process,
    Site,
    SiteError,
    free_port,
    link,
    log_tail,
    port_open,
    wait_for,
)

SetupError = SiteError  # a path could not be set up
# The echo target every load uses: an asyncio server in its own process (PORT argument).
ECHO_SERVER = str(Path(__file__).resolve().parents[1] / "tests" / "support" / "echo_proc.py")


class RouterPair:
    """Sites west (connectors, next to the servers) and east (listeners), linked by mTLS.

    With `code_dir`, sitectl and both routers run from that checkout's code; `configure`
    may edit each site (its site.toml, say) between init and start."""

    def __init__(self, root: Path, sitectl: str, env: dict[str, str], stack: ExitStack,
                 code_dir: Path | None = None,
                 configure: Callable[[Site], None] | None = None) -> None:
        self.root = root
        self.stack = stack
        self.configure = configure
        self.sites = {name: Site(root, name, env, bind=HOST, runner="sitectl",
                                 log_path=root / f"router-{name}.log", sitectl_bin=sitectl,
                                 code_dir=code_dir, start_timeout=START_TIMEOUT)
                      for name in ("west", "east")}
        self.pids: dict[str, int] = {}
        self.ports: dict[str, int] = {}

    def ctl(self, site: str, *args: str) -> str:
        return self.sites[site].sitectl(*args).stdout

    def status(self, site: str) -> dict[str, Any]:
        return self.sites[site].status()

    def start(self, targets: dict[str, int]) -> None:
        for site in self.sites.values():
            site.init()
            if self.configure is not None:
                self.configure(site)
        for name, site in self.sites.items():
            site.start(wait=False)
            # Registered now, so routers are stopped even if setup fails; east first,
            # so that west never sees its peer go away while it is still running.
            self.stack.callback(self._stop, name)
        for name, site in self.sites.items():
            site.wait_ready()
            self.pids[name] = int(self.status(name)["pid"])
        link(self.sites["west"], self.sites["east"], self.root)
        for key, port in targets.items():
            self.ctl("west", "connector", "create", key, f"{HOST}:{port}")
            self.ports[key] = free_port()
            self.ctl("east", "listener", "create", key, str(self.ports[key]))
        wait_for(lambda: self._reachable(targets), START_TIMEOUT, "keys reachable on east")

    def logs(self) -> dict[str, Path]:
        return {name: site.log_path for name, site in self.sites.items()}

    def _stop(self, name: str) -> None:
        site = self.sites[name]
        code = site.stop(grace=5.0)
        if code not in (None, 0, -signal.SIGTERM, 128 + signal.SIGTERM):
            print(f"NOTE: router {name} exited with code {code} on SIGTERM; log tail:\n"
                  f"{site.log_tail(8)}", flush=True)

    def _reachable(self, targets: dict[str, int]) -> bool:
        keys = self.status("east").get("keys", {})
        return all(keys.get(key, {}).get("reachable") for key in targets)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _stunnel_conf(services: list[dict[str, str]]) -> str:
    # syslog = no: with no syslog daemon here, glibc sends each line to the console,
    # which cost stunnel about 14 ms of CPU per connection (issue 10): an unfair peer.
    lines = ["foreground = yes", "pid =", "debug = 4", "syslog = no", ""]
    for svc in services:
        lines.append(f"[{svc.pop('name')}]")
        lines += [f"{k} = {v}" for k, v in svc.items()]
        lines += ["sslVersionMin = TLSv1.3", "verifyChain = yes",
                  "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1", ""]
    return "\n".join(lines)


class StunnelPair:
    """stunnel client (entry ports) -> TLS 1.3, client certs required -> stunnel server."""

    def __init__(self, root: Path, binary: str, stack: ExitStack) -> None:
        self.root = root
        self.binary = binary
        self.stack = stack
        self.services: dict[str, Process] = {}
        self.ports: dict[str, int] = {}

    @property
    def pids(self) -> dict[str, int]:
        return {name: svc.pid for name, svc in self.services.items()}

    def start(self, targets: dict[str, int]) -> None:
        files = self._write_certs()
        server_side, client_side = [], []
        for key, target in targets.items():
            tls_port, self.ports[key] = free_port(), free_port()
            server_side.append({"name": key, "accept": f"{HOST}:{tls_port}",
                                "connect": f"{HOST}:{target}", "cert": files["server.crt"],
                                "key": files["server.key"], "CAfile": files["ca.crt"]})
            client_side.append({"name": key, "client": "yes", "accept": f"{HOST}:{self.ports[key]}",
                                "connect": f"{HOST}:{tls_port}", "cert": files["client.crt"],
                                "key": files["client.key"], "CAfile": files["ca.crt"],
                                "checkHost": "server"})
        self._run("server", _stunnel_conf(server_side))
        self._run("client", _stunnel_conf(client_side))
        for port in self.ports.values():
            self._wait_port(port)

    def logs(self) -> dict[str, Path]:
        return {name: svc.log for name, svc in self.services.items()}

    def _write_certs(self) -> dict[str, str]:
        ca = certs.CertificateAuthority.generate("bench")
        files: dict[str, str] = {}
        _write_private(self.root / "ca.crt", ca.cert_pem)
        files["ca.crt"] = str(self.root / "ca.crt")
        for name, role in (("server", certs.Role.SERVER), ("client", certs.Role.CLIENT)):
            pair = ca.issue(name, role=role)
            for suffix, data in (("crt", pair.cert_pem), ("key", pair.key_pem)):
                path = self.root / f"{name}.{suffix}"
                _write_private(path, data)
                files[f"{name}.{suffix}"] = str(path)
        return files

    def _run(self, side: str, conf: str) -> None:
        path = self.root / f"stunnel-{side}.conf"
        path.write_text(conf)
        svc = Process(f"stunnel-{side}", [self.binary, str(path)],
                      self.root / f"stunnel-{side}.log")
        self.services[side] = svc
        self.stack.callback(svc.stop)

    def _wait_port(self, port: int) -> None:
        wait_for(lambda: self._alive() and port_open(port), START_TIMEOUT,
                 f"stunnel port {port}", step=0.1)

    def _alive(self) -> bool:
        for name, svc in self.services.items():
            if not svc.alive():
                raise SetupError(f"stunnel {name} exited:\n{log_tail(svc.log)}")
        return True
