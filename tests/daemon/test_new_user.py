"""What a new user trips over: `init` without --host advertises an address other machines
can dial (or says why it cannot), `token issue` warns when only this machine could redeem
the token, and both commands tell their version."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from sitectl.hostaddr import is_loopback, route_address
from tests.support.sites import SITECTL, Site, free_port, site_env, start_sites

WARNING = "sitectl: warning: the token points only at loopback"


def test_version() -> None:
    expected = version("vanrouter")
    for argv in ([SITECTL, "--version"], [sys.executable, "-m", "router", "--version"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.split()[-1] == expected, done


def advertised(site_dir: Path) -> str:
    host: str = tomllib.loads((site_dir / "site.toml").read_text())["site"]["host"]
    return host


def test_init_advertises_the_default_route_address(tmp_path: Path) -> None:
    site = Site(tmp_path, "west", site_env(tmp_path))
    done = site.sitectl("init", "west", "--link-port", str(free_port()))
    host = advertised(site.dir)
    address = route_address()
    if address is None:
        assert host == "127.0.0.1" and "note: no default route" in done.stderr
        return
    assert not done.stderr
    # The address is this machine's own (it can be bound), or a name resolving to it.
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as sock:
        sock.bind((address, 0))
    assert host == address or address in {i[4][0] for i in socket.getaddrinfo(host, None)}
    assert f"advertised as {host} (this machine on its default route" in done.stdout


def test_init_without_a_route_falls_back_to_loopback_with_a_note(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"]).returncode != 0:
        pytest.skip("cannot make a network namespace without routes (unshare -n)")
    site = Site(tmp_path, "west", site_env(tmp_path))
    done = subprocess.run([unshare, "-n", SITECTL, "--site-dir", str(site.dir), "init", "west",
                           "--link-port", str(free_port())], env=site.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert advertised(site.dir) == "127.0.0.1"
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("sitectl: note: no default route: advertising 127.0.0.1")


def test_an_explicit_host_is_kept_without_a_note(tmp_path: Path) -> None:
    site = Site(tmp_path, "west", site_env(tmp_path))
    done = site.sitectl("init", "west", "--host", "127.0.0.1", "--link-port",
                        str(free_port()))
    assert advertised(site.dir) == "127.0.0.1" and not done.stderr
    assert "default route" not in done.stdout


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("localhost", True), ("LOCALHOST.", True), ("db.localhost", True),
    ("10.0.0.1", False), ("::", False), ("example.com", False), ("2001:db8::1", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_token_issue_warns_when_only_loopback_could_redeem_it(tmp_path: Path) -> None:
    env = site_env(tmp_path)
    local = Site(tmp_path, "local", env).init()  # --host 127.0.0.1, as the tests' sites
    public = Site(tmp_path, "public", env, host="203.0.113.7").init()
    start_sites(local, public)
    try:
        to_file = local.sitectl("token", "issue", "-o", str(tmp_path / "t1"))
        lines = to_file.stderr.splitlines()
        assert lines[-1].startswith(WARNING) and len(lines) == 2, to_file.stderr
        assert f"(127.0.0.1:{local.link_port})" in lines[-1]
        to_stdout = local.sitectl("token", "issue")
        assert to_stdout.stderr.startswith(WARNING) and to_stdout.stderr.count("\n") == 1
        assert to_stdout.stdout.startswith("{")
        quiet = public.sitectl("token", "issue", "-o", str(tmp_path / "t2"))
        assert "warning" not in quiet.stderr
    finally:
        local.stop()
        public.stop()
