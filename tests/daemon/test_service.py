"""`sitectl service`: a systemd user unit that systemd-analyze accepts, whose ExecStart run
as is starts the router, which tells a NOTIFY_SOCKET it is ready and then stopping; what
install, status and uninstall ask systemctl (a stand-in on PATH, so no real user manager
is touched) with and without a reachable manager; paths that cannot go in a unit."""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.daemon.notify import notify_address, sd_notify
from sitectl import unit
from tests.support.sites import Site, site_env

UNIT = "vanrouter-west.service"
# Spaces, specifiers, variables, quotes and a backslash: all must reach the router as is.
AWKWARD = 'my sites %h $HOME ${USER} "q" \'s\' \\x'


def service_env(tmp: Path) -> dict[str, str]:
    env = site_env(tmp)
    env["HOME"] = str(tmp / "home")
    env["XDG_CONFIG_HOME"] = str(tmp / "config")
    return env


def unit_path(tmp: Path) -> Path:
    return tmp / "config" / "systemd" / "user" / UNIT


def exec_start(text: str) -> list[str]:
    """The ExecStart line as systemd reads it: %% and $$ undone, then the quoting."""
    (line,) = re.findall(r"^ExecStart=(.*)$", text, re.MULTILINE)
    return shlex.split(line.replace("%%", "%").replace("$$", "$"))


# ---- the unit's words
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=60))
def test_any_printable_word_round_trips(word: str) -> None:
    quoted = unit.quote(word, "site dir")
    assert unit.exec_words(quoted) == [word]
    assert exec_start(f"ExecStart={quoted}") == [word]
    # No specifier or variable is left for systemd to expand.
    assert not re.search(r"[%$]", quoted.replace("%%", "").replace("$$", ""))


@pytest.mark.parametrize("word", ["a\nExecStartPre=/bin/rm -rf ~", "tab\there", "nul\0",
                                  "bell\x07", "del\x7f", "bad \udcff utf-8"])
def test_words_a_unit_cannot_carry_are_refused(word: str) -> None:
    with pytest.raises(unit.UnitProblem, match="site dir"):
        unit.quote(word, "site dir")


# ---- sd_notify by hand
def test_notify_addresses() -> None:
    assert notify_address("/run/user/1000/systemd/notify") == "/run/user/1000/systemd/notify"
    assert notify_address("@/org/freedesktop/systemd1/notify/42") == \
        b"\0/org/freedesktop/systemd1/notify/42"
    for unusable in ("vsock:2:1234", "relative/path", "@", "/" + "x" * 200):
        assert notify_address(unusable) is None


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_sends_one_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      abstract: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"vanrouter-test-{os.getpid()}-{id(sock)}"
            sock.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            sock.bind(str(tmp_path / "notify"))
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        sock.settimeout(5)
        assert sd_notify("READY=1\nSTATUS=up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not sd_notify("READY=1")  # nobody listening: logged, not raised
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")


# ---- the unit, verified and run
@pytest.fixture
def west(tmp_path: Path) -> Site:
    return Site(tmp_path / AWKWARD, "west", service_env(tmp_path)).init()


def test_systemd_analyze_verifies_the_unit(west: Site, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit is not verified")
    west.sitectl("service", "install", "--no-start")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(west.env, XDG_RUNTIME_DIR=str(runtime))
    done = subprocess.run([analyze, "verify", "--user", str(unit_path(tmp_path))], env=env,
                          capture_output=True, text=True, timeout=60)
    if "Failed to initialize manager" in done.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {done.stderr.strip()}")
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_exec_start_run_as_is_starts_the_router_and_notifies(west: Site,
                                                            tmp_path: Path) -> None:
    installed = west.sitectl("service", "install", "--no-start")
    assert f"wrote {unit_path(tmp_path)}" in installed.stdout
    assert f"systemctl --user enable --now {UNIT}" in installed.stdout
    text = unit_path(tmp_path).read_text()
    argv = exec_start(text)
    assert argv == [sys.executable, "-m", "sitectl", "--site-dir", str(west.dir), "run"]
    assert "Type=notify" in text and "Restart=on-failure" in text
    (stop,) = re.findall(r"^TimeoutStopSec=(\d+)$", text, re.MULTILINE)
    assert int(stop) > 5  # the site's drain_timeout_s

    notify = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(30)
        # What a user manager gives a service: no venv on PATH, no site in the env.
        env = {"PATH": "/usr/bin:/bin", "HOME": west.env["HOME"], "NOTIFY_SOCKET": str(notify),
               "PYTHONUNBUFFERED": "1"}
        with (tmp_path / "service.log").open("wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=west.env["HOME"]
                                    if Path(west.env["HOME"]).is_dir() else "/")
        try:
            ready = sock.recv(4096).decode()
            assert ready.startswith("READY=1\n"), ready
            assert f"STATUS=serving: links on 0.0.0.0:{west.link_port}" in ready
            status = west.status()
            assert status["site"] == "west" and status["pid"] == proc.pid
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(4096).decode().startswith("STOPPING=1\n")
            assert proc.wait(int(stop)) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "Traceback" not in (tmp_path / "service.log").read_text()


# ---- systemctl and loginctl, stood in for
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
if [ "$FAKE_MANAGER" = down ]; then
    echo "Failed to connect to bus: No medium found" >&2; exit 1
fi
case "$2" in
    is-active) echo "${FAKE_ACTIVE:-inactive}"; [ "${FAKE_ACTIVE}" = active ] || exit 3 ;;
    is-enabled) echo enabled ;;
esac
exit 0
"""
FAKE_LOGINCTL = """#!/bin/sh
echo "${FAKE_LINGER:-no}"
"""


@pytest.fixture
def fake_tools(west: Site, tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("systemctl", FAKE_SYSTEMCTL), ("loginctl", FAKE_LOGINCTL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "systemctl.log"
    west.env.update(PATH=f"{bin_dir}:{west.env['PATH']}", FAKE_LOG=str(log))
    return log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_without_a_user_manager_it_says_what_to_run(west: Site, fake_tools: Path,
                                                    tmp_path: Path) -> None:
    west.env["FAKE_MANAGER"] = "down"
    out = west.sitectl("service", "install").stdout
    assert "No medium found" in out
    assert f"  systemctl --user daemon-reload\n  systemctl --user enable --now {UNIT}" in out
    user = getpass.getuser()
    assert f"lingering is off for {user}" in out and f"loginctl enable-linger {user}" in out
    assert calls(fake_tools) == ["--user show-environment"]
    status = json.loads(west.sitectl("service", "status", "--json").stdout)
    assert status["installed"] and status["active"] == "unknown"
    assert status["site_dir"] == str(west.dir) and status["router"] == "not running"
    wants = unit_path(tmp_path).parent / "default.target.wants" / UNIT
    wants.parent.mkdir()
    wants.symlink_to(unit_path(tmp_path))  # enabled earlier
    out = west.sitectl("service", "uninstall").stdout
    assert f"stop it with: systemctl --user stop {UNIT}" in out
    assert not unit_path(tmp_path).exists() and not wants.is_symlink()


def test_with_a_user_manager_it_enables_starts_and_removes(west: Site, fake_tools: Path,
                                                            tmp_path: Path) -> None:
    west.env["FAKE_LINGER"] = "yes"
    out = west.sitectl("service", "install").stdout
    assert f"enabled and started {UNIT}" in out and "linger" not in out
    assert calls(fake_tools) == ["--user show-environment", "--user daemon-reload",
                                 f"--user is-active {UNIT}", f"--user enable --now {UNIT}"]
    status = json.loads(west.sitectl("service", "status", "--json").stdout)
    assert (status["installed"], status["enabled"], status["active"], status["linger"]) == \
        (True, "enabled", "inactive", "on")
    fake_tools.unlink()
    west.env["FAKE_ACTIVE"] = "active"
    out = west.sitectl("service", "install").stdout  # again: the running one restarts
    assert calls(fake_tools)[-2:] == [f"--user enable --now {UNIT}", f"--user restart {UNIT}"]
    fake_tools.unlink()
    out = west.sitectl("service", "uninstall").stdout
    assert f"stopped, disabled and removed {UNIT}" in out
    assert f"--user disable --now {UNIT}" in calls(fake_tools)
    assert "--user daemon-reload" in calls(fake_tools)
    assert not unit_path(tmp_path).exists()
    again = west.sitectl("service", "uninstall", check=False)
    assert again.returncode == 1 and "no service installed" in again.stderr
    status = json.loads(west.sitectl("service", "status", "--json").stdout)
    assert (status["installed"], status["enabled"]) == (False, "not installed")


def test_a_router_started_by_hand_is_not_doubled(west: Site, fake_tools: Path) -> None:
    west.start()
    try:
        pid = west.pid
        out = west.sitectl("service", "install").stdout
    finally:
        west.stop()
    assert f"the router already runs outside it (pid {pid})" in out
    assert f"then run: systemctl --user start {UNIT}" in out
    assert f"--user enable {UNIT}" in calls(fake_tools)
    assert f"--user enable --now {UNIT}" not in calls(fake_tools)


def test_one_unit_per_site_name(west: Site, tmp_path: Path) -> None:
    west.sitectl("service", "install", "--no-start")
    before = unit_path(tmp_path).read_text()
    other = Site(tmp_path / "elsewhere", "west", west.env).init()
    result = other.sitectl("service", "install", "--no-start", check=False)
    assert result.returncode == 2
    assert f"already runs the site in {west.dir}" in result.stderr
    assert unit_path(tmp_path).read_text() == before
    result = other.sitectl("service", "uninstall", check=False)
    assert result.returncode == 2 and unit_path(tmp_path).exists()


def test_a_site_dir_with_a_newline_is_refused(tmp_path: Path) -> None:
    site = Site(tmp_path / "two\nlines", "west", service_env(tmp_path)).init()
    result = site.sitectl("service", "install", "--no-start", check=False)
    assert result.returncode == 2
    assert "holds a newline or another control character" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not unit_path(tmp_path).exists()
