"""`python -m router` / `sitectl run`: run a site's router in the foreground."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import trio

import certs
from router.daemon.logformat import LOG_FORMATS, setup_logging
from router.errors import VanError
from router.site.config import SiteConfig
from router.site.directory import Site, resolve_site_dir
from router.site.errors import ConfigError, SiteError
from router.site.fields import FieldReader
from router.version import VersionAction

log = logging.getLogger(__name__)


def recorded_pid(site: Site) -> int | None:
    """The pid in the site's pid file, for messages only: the lock, not this file,
    says whether a router runs (a stale pid may belong to any process, or a zombie)."""
    try:
        return int(site.pid_path.read_text().strip())
    except (OSError, ValueError):
        return None


def take_site_lock(site: Site) -> int | None:
    """Lock the site for this process: an fd to keep open for the router's life, or
    None if another router holds it. The kernel drops the lock when the process
    ends, however it ends, so nothing can go stale."""
    site.run_dir.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(site.run_dir / "router.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def check_identity(site: Site, name: str) -> None:
    """The certificates must be the site's own: with another name in site.toml the
    router would say one name in HELLO and present another in TLS, and no link or
    token would work while it reports "ready"."""
    ca_path, cert_path = site.root / "ca.crt", site.root / "router.crt"
    try:
        why = certs.identity_mismatch(name, certs.load_pem(ca_path), certs.load_pem(cert_path))
    except certs.CertError as exc:
        raise SiteError(str(exc)) from exc
    if why is not None:
        reader = FieldReader(site.config_path, site.config_path.read_text(), "site", {})
        raise reader.fail("name", f"{name!r} does not match {ca_path.name} and "
                          f"{cert_path.name} ({why})")


def _site_name(site: Site) -> str:
    with contextlib.suppress(SiteError, ConfigError):
        return site.config().name
    return site.root.name


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: each client, flow target and link is a
    descriptor, and the soft default (often 1024) is a small fraction of what is
    allowed. trio uses epoll, so descriptors past FD_SETSIZE are fine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # the kernel refuses an unlimited soft limit
        with contextlib.suppress(OSError, ValueError):
            target = int(Path("/proc/sys/fs/nr_open").read_text())
    if soft != target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the descriptor limit from %d to %d: %s", soft, target, exc)
    log.debug("descriptor limit: %d", resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def run_router(root: Path, *, log_level: str = "info", log_format: str = "text") -> int:
    site = Site(root)
    try:
        site.require()
        lock = take_site_lock(site)
    except SiteError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"router: cannot lock {site.run_dir}: {exc.strerror}", file=sys.stderr)
        return 1
    if lock is None:
        pid = recorded_pid(site)
        print(f"router: site {_site_name(site)} already has a router running"
              + (f" (pid {pid})" if pid is not None else ""), file=sys.stderr)
        return 1
    try:
        return _run_locked(site, log_level, log_format)
    finally:
        os.close(lock)


def _run_locked(site: Site, log_level: str, log_format: str) -> int:
    # The edit lock is held from reading the config until the control socket answers
    # (router.run reports started): a sitectl edit meanwhile waits, then goes through
    # the router, instead of being saved offline where this router never sees it.
    with contextlib.ExitStack() as starting:
        try:
            starting.enter_context(site.edit_lock())
            config = site.config()
            check_identity(site, config.name)
            site.check_control_dir(create=True)
        except VanError as exc:
            print(f"router: {exc}", file=sys.stderr)
            return 2
        return _run_trio(site, config, log_level, log_format, starting)


class _Ready:
    """A task_status for router.run that ends the startup's edit lock when the router
    is ready (no nursery.start: its exception group would hide the one-line errors)."""

    def __init__(self, on_ready: Callable[[], None]) -> None:
        self._on_ready = on_ready

    def started(self, value: None = None) -> None:
        self._on_ready()


def _run_trio(site: Site, config: SiteConfig, log_level: str, log_format: str,
              starting: contextlib.ExitStack) -> int:
    from router.daemon.router import Router

    setup_logging(config.name, log_level, log_format)
    raise_fd_limit()

    async def main() -> None:
        router = Router.from_site(site, config)
        await router.run(task_status=_Ready(starting.close))

    try:
        trio.run(main)
    except (RuntimeError, VanError, certs.CertError) as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a site file that cannot be read: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"router: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router", description=__doc__)
    parser.add_argument("--site-dir")
    parser.add_argument("--site")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS)
    parser.add_argument("--version", action=VersionAction)
    args = parser.parse_args(argv)
    try:
        root = resolve_site_dir(args.site_dir, args.site)
    except SiteError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    return run_router(root, log_level=args.log_level, log_format=args.log_format)
