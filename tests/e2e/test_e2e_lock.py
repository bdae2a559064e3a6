"""One router per site, by an OS lock: a stale pid file never blocks a start, a second
router is refused while the first runs, and a killed router's lock is gone at once."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sites import Site, site_env, wait_for


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, "west", site_env(tmp_path)).init()
    yield s
    s.stop()


def _second_router(site: Site) -> subprocess.CompletedProcess[str]:
    return site.run_router(timeout=30)


def _state(pid: int) -> str:
    # /proc/PID/stat: "pid (comm) STATE ..."
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _write_pid_file(site: Site, pid: int) -> None:
    (site.dir / "run").mkdir(mode=0o700, exist_ok=True)
    (site.dir / "run" / "router.pid").write_text(f"{pid}\n")


def test_stale_pid_of_a_live_unrelated_process_does_not_block_start(site: Site) -> None:
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            _write_pid_file(site, other.pid)
            site.start()
            assert site.status()["site"] == "west"
            assert other.poll() is None  # the unrelated process was left alone
        finally:
            other.kill()


def test_stale_pid_of_a_zombie_does_not_block_start(site: Site) -> None:
    with subprocess.Popen(["true"]) as zombie:  # not reaped until the with ends
        wait_for(lambda: _state(zombie.pid) == "Z", what="a zombie")
        _write_pid_file(site, zombie.pid)
        site.start()
        assert site.status()["site"] == "west"


def test_second_router_is_refused_and_a_killed_ones_lock_is_free_at_once(site: Site) -> None:
    site.start()
    first = site.pid
    second = _second_router(site)
    assert second.returncode == 1
    assert second.stderr == f"router: site west already has a router running (pid {first})\n"
    assert site.proc is not None and site.proc.poll() is None
    assert site.status()["site"] == "west"  # the first router still serves
    site.kill()
    site.start()  # no wait for anything to expire: the kernel dropped the lock
    assert site.pid != first and site.status()["site"] == "west"
