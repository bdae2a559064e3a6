"""`python -m router` / `sitectl run`: run a site's router in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
from pathlib import Path

import trio

from router.config import ConfigError
from router.site import Site, SiteError, resolve_site_dir

log = logging.getLogger("router")


def setup_logging(site: str, level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s [{site}] %(name)s: %(message)s",
        stream=sys.stderr,
    )


def running_pid(site: Site) -> int | None:
    """The pid of this site's live router, from its pid file, or None."""
    try:
        pid = int(site.pid_path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: each client, flow target and link is a
    descriptor, and the soft default (often 1024) is a small fraction of what is
    allowed. trio uses epoll, so descriptors past FD_SETSIZE are fine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit
            log.debug("cannot raise the descriptor limit from %d to %d: %s", soft, hard, exc)
    log.debug("descriptor limit: %d", resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def run_router(root: Path, *, log_level: str = "info") -> int:
    from router.daemon import Router

    site = Site(root)
    try:
        config = site.config()
    except (SiteError, ConfigError) as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    pid = running_pid(site)
    if pid is not None and pid != os.getpid():
        print(f"router: site {config.name} already has a router running (pid {pid})",
              file=sys.stderr)
        return 1
    setup_logging(config.name, log_level)
    raise_fd_limit()

    async def main() -> None:
        router = Router(site, config)
        await router.run()

    try:
        trio.run(main)
    except (RuntimeError, ConfigError, SiteError) as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router", description=__doc__)
    parser.add_argument("--site-dir")
    parser.add_argument("--site")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        root = resolve_site_dir(args.site_dir, args.site)
    except SiteError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    return run_router(root, log_level=args.log_level)
