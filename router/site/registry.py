"""Which link and admin ports a new site gets: not a port the user's other sites claim
(a registry of every site dir this user created, wherever it lives), then the first
free one."""

from __future__ import annotations

import socket
from collections.abc import Container
from pathlib import Path

from router.site.atomic import read_regular, write_atomic
from router.site.config import load_config
from router.site.directory import data_home
from router.site.errors import ConfigError, SiteError

FIRST_LINK_PORT = 55671
# Below the kernel's ephemeral range (32768 up), so an outgoing connection never holds it.
FIRST_ADMIN_PORT = 9671


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0" if host in ("", "0.0.0.0") else host, port))
        except OSError:
            return False
    return True


def _registry() -> Path:
    """Every site dir this user created, wherever it lives (one path per line)."""
    return data_home().parent / "known-sites"


def _registry_lines() -> list[str]:
    try:
        data = read_regular(_registry(), MAX_REGISTRY_BYTES)
    except OSError as exc:
        raise SiteError(f"cannot read {_registry()}: {exc.strerror or exc}") from None
    return data.decode(errors="replace").splitlines()


MAX_REGISTRY_BYTES = 1024 * 1024


def remember(root: Path) -> None:
    registry = _registry()
    registry.parent.mkdir(parents=True, exist_ok=True)
    known = _registry_lines() if registry.exists() else []
    alive = [p for p in known if (Path(p) / "site.toml").exists() and p != str(root)]
    write_atomic(registry, ("\n".join([*alive, str(root)]) + "\n").encode())


def claimed_ports() -> dict[int, tuple[Path, str]]:
    """Link and admin ports the user's other sites already claim (running or not), with
    the site dir that claims each and what for ("link" or "admin")."""
    ports: dict[int, tuple[Path, str]] = {}
    paths = set(data_home().glob("*/site.toml"))
    if _registry().exists():
        paths |= {Path(p) / "site.toml" for p in _registry_lines() if p}
    for cfg in sorted(paths):
        if not cfg.exists():
            continue
        try:
            config = load_config(cfg)
        except ConfigError:
            continue
        ports.setdefault(config.link_port, (cfg.parent, "link"))
        if config.admin_port:
            ports.setdefault(config.admin_port, (cfg.parent, "admin"))
    return ports


def pick_port(what: str, first: int, bind: str, taken: Container[int] = ()) -> int:
    """The first port from `first` that no other site claims, not in `taken` (this
    site's other port) and free on `bind` now. `what`: "link" or "admin"."""
    claimed = claimed_ports()
    for port in range(first, first + 1000):
        if port not in claimed and port not in taken and _port_free(bind, port):
            return port
    raise SiteError(f"no free {what} port in {first}-{first + 999}")
