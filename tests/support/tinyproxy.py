"""A real tinyproxy (Debian package `tinyproxy`) on loopback, for links through HTTP proxies.

Its config lets CONNECT reach only the ports given (`ConnectPort`) from loopback only
(`Allow`), with basic authentication when a user is given; it runs in the foreground and
logs every CONNECT to its log file, which `connects()` counts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.sites import Process, free_port, port_open, wait_for

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


def require_tinyproxy() -> None:
    if not Path(TINYPROXY).exists():
        pytest.skip("tinyproxy is not installed (Debian package tinyproxy; .ci/run installs "
                    "it when run as root)")


class Tinyproxy:
    def __init__(self, workdir: Path, name: str, *, connect_ports: tuple[int, ...],
                 user: str | None = None, password: str | None = None) -> None:
        require_tinyproxy()
        self.port = free_port()
        self.conf = workdir / f"{name}.conf"
        self.log = workdir / f"{name}.log"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Allow 127.0.0.1", "Timeout 600",
                 "MaxClients 50", "LogLevel Connect", f'LogFile "{self.log}"']
        lines += [f"ConnectPort {port}" for port in connect_ports]
        if user is not None:
            lines.append(f"BasicAuth {user} {password}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.name = name
        self.process: Process | None = None

    def start(self) -> Tinyproxy:
        self.process = Process(self.name, [TINYPROXY, "-d", "-c", str(self.conf)],
                               self.conf.with_suffix(".out"))
        wait_for(lambda: port_open(self.port), what=f"{self.name} listening")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def connects(self, port: int) -> int:
        """CONNECT requests to 127.0.0.1:`port` in its log so far."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return text.count(f"CONNECT 127.0.0.1:{port} HTTP/1.1")

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}"
