"""The measured paths: two linked routers, and a stunnel client/server pair.

Each path forwards some named services (target ports on 127.0.0.1) and exposes
one local entry port per service, in `ports`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from procs import HOST, Service, free_port, log_tail, port_open, wait_until

import certs

START_TIMEOUT = 30.0


class SetupError(RuntimeError):
    """A path could not be set up."""


class RouterPair:
    """Sites west (connectors, next to the servers) and east (listeners), linked by mTLS."""

    def __init__(self, root: Path, sitectl: str, env: dict[str, str], stack: ExitStack) -> None:
        self.root = root
        self.sitectl = sitectl
        self.env = env
        self.stack = stack
        self.sites = {name: root / name for name in ("west", "east")}
        self.services: dict[str, Service] = {}
        self.pids: dict[str, int] = {}
        self.ports: dict[str, int] = {}

    def ctl(self, site: str, *args: str) -> str:
        argv = [self.sitectl, "--site-dir", str(self.sites[site]), *args]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise SetupError(f"sitectl {' '.join(args)} ({site}) failed: "
                             f"{(proc.stderr or proc.stdout).strip()}")
        return proc.stdout

    def status(self, site: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ctl(site, "status", "--json"))
        return data

    def start(self, targets: dict[str, int]) -> None:
        self._init_sites()
        for site in self.sites:
            self._run_router(site)
        for site in self.sites:
            self._wait_ready(site)
            self.pids[site] = int(self.status(site)["pid"])
        self._link()
        for key, port in targets.items():
            self.ctl("west", "connector", "create", key, f"{HOST}:{port}")
            self.ports[key] = free_port()
            self.ctl("east", "listener", "create", key, str(self.ports[key]))
        wait_until(lambda: self._reachable(targets), START_TIMEOUT, "keys reachable on east")

    def logs(self) -> dict[str, Path]:
        return {site: svc.log for site, svc in self.services.items()}

    def _init_sites(self) -> None:
        self.ctl("west", "init", "west", "--host", HOST, "--bind", HOST,
                 "--link-port", str(free_port()))
        self.ctl("east", "init", "east", "--host", HOST, "--bind", HOST,
                 "--link-port", str(free_port()))

    def _run_router(self, site: str) -> None:
        argv = [self.sitectl, "--site-dir", str(self.sites[site]), "run"]
        svc = Service(f"router-{site}", argv, self.root / f"router-{site}.log", self.env)
        self.services[site] = svc
        # Registered now, so routers are stopped even if setup fails; east first,
        # so that west never sees its peer go away while it is still running.
        self.stack.callback(self._stop, site)

    def _stop(self, site: str) -> None:
        svc = self.services[site]
        code = svc.stop()
        if code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
            print(f"NOTE: router {site} exited with code {code} on SIGTERM; log tail:\n"
                  f"{log_tail(svc.log, 8)}", flush=True)

    def _wait_ready(self, site: str) -> None:
        svc = self.services[site]

        def ready() -> bool:
            if not svc.alive():
                raise SetupError(f"router {site} exited early:\n{log_tail(svc.log)}")
            argv = [self.sitectl, "--site-dir", str(self.sites[site]), "status"]
            return subprocess.run(argv, env=self.env, capture_output=True).returncode == 0

        wait_until(ready, START_TIMEOUT, f"router {site} ready", step=0.2)

    def _link(self) -> None:
        token = self.root / "west.token"
        self.ctl("west", "token", "issue", "--expires", "15m", "--uses", "1", "-o", str(token))
        out = self.ctl("east", "link", "create", str(token))
        if "up" not in out:
            raise SetupError(f"link did not come up: {out.strip()}")

    def _reachable(self, targets: dict[str, int]) -> bool:
        keys = self.status("east").get("keys", {})
        return all(keys.get(key, {}).get("reachable") for key in targets)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _stunnel_conf(services: list[dict[str, str]]) -> str:
    lines = ["foreground = yes", "pid =", "debug = 4", ""]
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
        self.services: dict[str, Service] = {}
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
        svc = Service(f"stunnel-{side}", [self.binary, str(path)],
                      self.root / f"stunnel-{side}.log")
        self.services[side] = svc
        self.stack.callback(svc.stop)

    def _wait_port(self, port: int) -> None:
        wait_until(lambda: self._alive() and port_open(port), START_TIMEOUT,
                   f"stunnel port {port}")

    def _alive(self) -> bool:
        for name, svc in self.services.items():
            if not svc.alive():
                raise SetupError(f"stunnel {name} exited:\n{log_tail(svc.log)}")
        return True
