"""`sitectl service install|uninstall|status`: the site's router as a systemd user service.

The unit (sitectl.unit) runs `sitectl run` in the foreground; systemctl and loginctl do
the rest when a user manager is reachable, and otherwise the user is told exactly what
to run. Lingering decides whether the router outlives the user's last login session.
"""

from __future__ import annotations

import argparse
import getpass
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from router.site.atomic import write_atomic
from router.site.directory import Site
from sitectl import unit
from sitectl.errors import FileProblem, UsageError

SYSTEMCTL_TIMEOUT_S = 30.0
LINGER_DIR = Path("/var/lib/systemd/linger")


class _Ctx(Protocol):
    """What these commands need of sitectl's context."""

    site: Site

    def try_call(self, op: str, args: dict[str, Any]) -> dict[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class Ran:
    ok: bool
    out: str  # stdout, stripped
    err: str  # the first line of stderr, or why the command could not run


def systemctl(*args: str, timeout: float = SYSTEMCTL_TIMEOUT_S) -> Ran:
    return _run(["systemctl", "--user", *args], timeout)


def _run(argv: list[str], timeout: float) -> Ran:
    if shutil.which(argv[0]) is None:
        return Ran(False, "", f"{argv[0]} is not installed")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Ran(False, "", f"`{' '.join(argv)}` did not answer in {timeout:g} s")
    except OSError as exc:
        return Ran(False, "", f"cannot run {argv[0]}: {exc.strerror or exc}")
    lines = done.stderr.strip().splitlines()
    return Ran(done.returncode == 0, done.stdout.strip(), lines[0] if lines else "")


def manager_problem() -> str | None:
    """Why no systemd user manager answers (no session bus in a container, under
    `su`, over some ssh setups), or None if one does."""
    ran = systemctl("show-environment", timeout=10)
    return None if ran.ok else (ran.err or "systemctl --user failed")


def linger(user: str) -> bool | None:
    """Whether the user's manager runs without a login session (so across reboots and
    logouts); None if this cannot be told."""
    ran = _run(["loginctl", "show-user", user, "--property=Linger", "--value"], 10)
    if ran.ok and ran.out in ("yes", "no"):
        return ran.out == "yes"
    try:  # no logind to ask (yet): the flag file it keeps, in a dir made on first use
        if LINGER_DIR.is_dir():
            return (LINGER_DIR / user).exists()
        return False if LINGER_DIR.parent.is_dir() else None
    except OSError:
        return None


def linger_advice(user: str, on: bool | None) -> str | None:
    """The one line to print when lingering is not known to be on."""
    if on:
        return None
    state = "off" if on is False else "not known to be on"
    return (f"lingering is {state} for {user}: the router stops when your last session "
            f"ends and starts again only at your next login; turn it on with: "
            f"loginctl enable-linger {user}")


def _paths(site: Site) -> tuple[str, str, Path]:
    name = site.config().name
    service = unit.unit_name(name)
    return name, service, unit.unit_dir() / service


def _installed(path: Path) -> unit.Installed | None:
    try:
        return unit.read_back(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileProblem(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_ours(site: Site, path: Path, found: unit.Installed) -> None:
    """One unit per site name: refuse to take over one that runs another site's dir."""
    if found.site_dir is None:
        raise UsageError(f"{path} exists but was not written by sitectl: move it aside "
                         "first")
    if found.site_dir != site.root:
        raise UsageError(f"{path} already runs the site in {found.site_dir}, not "
                         f"{site.root}: uninstall it first (sitectl --site-dir "
                         f"{found.site_dir} service uninstall)")


def cmd_install(ctx: _Ctx, a: argparse.Namespace) -> int:
    site = ctx.site
    site.require()
    cfg = site.config()
    name, service, path = _paths(site)
    text = unit.render(name, site.root, drain_timeout_s=cfg.limits.drain_timeout_s)
    found = _installed(path)
    if found is not None:
        _check_ours(site, path, found)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text.encode(), mode=0o644)
    except OSError as exc:
        raise FileProblem(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"wrote {path}")
    enable = f"systemctl --user enable --now {service}"
    problem = None if a.no_start else manager_problem()
    if a.no_start or problem is not None:
        why = ("not started (--no-start); to enable and start it, run:" if a.no_start else
               f"no systemd user manager reachable ({problem}); once one is, run:")
        print(f"{why}\n  systemctl --user daemon-reload\n  {enable}")
    else:
        _enable(ctx, service, enable)
    user = getpass.getuser()
    advice = linger_advice(user, linger(user))
    if advice:
        print(advice)
    return 0


def _enable(ctx: _Ctx, service: str, enable: str) -> None:
    reload = systemctl("daemon-reload")
    if not reload.ok:
        raise FileProblem(f"systemctl --user daemon-reload failed: {reload.err}; "
                          f"run it, then: {enable}")
    active = systemctl("is-active", service).out == "active"
    running = ctx.try_call("status", {}) if not active else None
    if running is not None:  # a router started by hand holds the site's lock
        ran = systemctl("enable", service)
        if not ran.ok:
            raise FileProblem(f"systemctl --user enable {service} failed: {ran.err}")
        print(f"enabled {service}; the router already runs outside it (pid "
              f"{running.get('pid', '?')}): stop that one, then run: "
              f"systemctl --user start {service}")
        return
    # With Type=notify, `start` returns once the router sent READY=1, or fails.
    ran = systemctl("enable", "--now", service, timeout=90)
    if not ran.ok:
        raise FileProblem(f"{enable} failed: {ran.err} (see: journalctl --user -u "
                          f"{service})")
    if active:  # enable --now leaves a running service as it is: run the new unit
        ran = systemctl("restart", service, timeout=90)
        if not ran.ok:
            raise FileProblem(f"systemctl --user restart {service} failed: {ran.err}")
    print(f"enabled and started {service} (logs: journalctl --user -u {service})")


def cmd_uninstall(ctx: _Ctx, a: argparse.Namespace) -> int:
    site = ctx.site
    _, service, path = _paths(site)
    found = _installed(path)
    if found is None:
        raise FileProblem(f"no service installed for this site ({path} does not exist)")
    _check_ours(site, path, found)
    problem = manager_problem()
    if problem is None:
        # Stops it (SIGTERM: the router drains) and removes the [Install] links.
        ran = systemctl("disable", "--now", service, timeout=(found.timeout_stop_s or 90) + 30)
        if not ran.ok:
            raise FileProblem(f"systemctl --user disable --now {service} failed: {ran.err}")
    else:  # systemctl edits the [Install] links without a manager too
        systemctl("disable", service)
    wants = path.parent / "default.target.wants" / service
    try:
        if wants.is_symlink():  # what `disable` removes, were it not there to run
            wants.unlink()
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise FileProblem(f"cannot remove {exc.filename}: {exc.strerror or exc}") from None
    if problem is None:
        systemctl("daemon-reload")
        systemctl("reset-failed", service)  # forget a failed state of the gone unit
        print(f"stopped, disabled and removed {service}")
    else:
        print(f"removed {path}; no systemd user manager was reachable ({problem}): if one "
              f"still runs the router, stop it with: systemctl --user stop {service}")
    return 0


def cmd_status(ctx: _Ctx, a: argparse.Namespace) -> int:
    site = ctx.site
    site.require()
    cfg = site.config()
    _, service, path = _paths(site)
    found = _installed(path)
    problem = manager_problem()
    state: dict[str, Any] = {"unit": service, "path": str(path), "installed": found is not None}
    if found is not None:
        state["site_dir"] = None if found.site_dir is None else str(found.site_dir)
        state["timeout_stop_s"] = found.timeout_stop_s
    # is-enabled reads the unit files: it answers without a manager too.
    state["enabled"] = (systemctl("is-enabled", service).out or "unknown") if found \
        else "not installed"
    state["active"] = (systemctl("is-active", service).out or "unknown") if problem is None \
        else "unknown"
    if problem is not None:
        state["manager"] = problem
    running = ctx.try_call("status", {})
    state["router"] = "running" if running is not None else "not running"
    user = getpass.getuser()
    on = linger(user)
    state["linger"] = {True: "on", False: "off", None: "unknown"}[on]
    if getattr(a, "json", False):
        print(json.dumps(state, indent=2))
        return 0
    lines = [f"{service}: " + ("installed" if found else "not installed") + f" ({path})"]
    if found is not None and found.site_dir != site.root:
        lines.append(f"  runs another site dir: {found.site_dir}")
    lines.append(f"  enabled: {state['enabled']}")
    lines.append(f"  active: {state['active']}" + (
        f" (no systemd user manager reachable: {problem})" if problem else ""))
    lines.append(f"  router: {state['router']}")
    needed = unit.stop_timeout(cfg.limits.drain_timeout_s)
    if found is not None and (found.timeout_stop_s or 0) < needed:
        lines.append(f"  TimeoutStopSec={found.timeout_stop_s} is shorter than the drain "
                     f"needs ({needed} s): run `sitectl service install` again")
    advice = linger_advice(user, on)
    lines.append(f"  linger: {state['linger']}" + (f"\n  {advice}" if advice else ""))
    print("\n".join(lines))
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    svc = sub.add_parser("service", parents=[common], help="run the router as a systemd "
                         "user service").add_subparsers(dest="sub", required=True,
                                                        metavar="ACTION")
    p = svc.add_parser("install", parents=[common], help="write the user unit (~/.config/"
                       "systemd/user/vanrouter-SITE.service), enable and start it")
    p.add_argument("--no-start", action="store_true", help="only write the unit and say "
                   "what to run")
    p.set_defaults(func=cmd_install)
    p = svc.add_parser("uninstall", parents=[common], help="stop, disable and remove it")
    p.set_defaults(func=cmd_uninstall)
    p = svc.add_parser("status", parents=[common], help="installed, enabled, active, "
                       "lingering")
    p.set_defaults(func=cmd_status)
