"""`sitectl init` refuses what it must not touch, and exit codes say whose fault it is:
2 for a bad argument (as argparse's own errors), 1 for a failure at run time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.site.registry import FIRST_ADMIN_PORT
from tests.support.sites import Site, free_port, site_env


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (or root itself) with its bytes."""
    if root.is_file():
        return {str(root): root.read_bytes()}
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("sitectl: "), stderr
    return stderr


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path, "west", site_env(tmp_path))


def test_site_dir_that_is_a_file_is_refused(site: Site) -> None:
    site.dir.write_text("my notes\n")
    result = site.sitectl("init", "west", check=False)
    assert result.returncode == 1
    assert "is not a directory" in one_line(result.stderr)
    assert site.dir.read_text() == "my notes\n"


@pytest.mark.parametrize("stray", ["ca.key", "identity.key", "links"])
def test_dir_with_stray_site_files_is_refused_and_left_alone(site: Site, stray: str) -> None:
    site.dir.mkdir()
    target = site.dir / stray
    if stray == "links":
        target.mkdir()
        (target / "east.toml").write_text("peer_site = 'east'\n")
    else:
        target.write_bytes(b"-----BEGIN PRIVATE KEY-----\nsomeone's key\n")
    before = snapshot(site.dir)
    result = site.sitectl("init", "west", "--link-port", str(free_port()), check=False)
    assert result.returncode == 1
    assert f"holds {stray} but no site.toml" in one_line(result.stderr)
    assert snapshot(site.dir) == before


def test_empty_dir_is_fine(site: Site) -> None:
    site.dir.mkdir()
    site.sitectl("init", "west", "--link-port", str(free_port()))
    assert (site.dir / "site.toml").exists()


def test_link_port_of_another_site_is_refused_naming_it(tmp_path: Path) -> None:
    env = site_env(tmp_path)
    west = Site(tmp_path, "west", env).init()
    east = Site(tmp_path, "east", env)
    result = east.sitectl("init", "east", "--link-port", str(west.link_port), check=False)
    assert result.returncode == 2
    assert f"already the link port of the site in {west.dir}" in one_line(result.stderr)
    assert not east.dir.exists()


@pytest.mark.parametrize(("args", "says"), [
    (("we st",), "is not a valid site name"),
    (("west", "--link-port", "70000"), "70000 is not a valid port"),
    (("west", "--link-port", "0"), "0 is not a valid port"),
    (("west", "--host", "bad host!"), "[site] host: 'bad host!' is not an IP address"),
    (("west", "--bind", "no way"), "[site] bind: 'no way' is not an IP address"),
    (("west", "--advertise", "nope"), "[site] advertise: 'nope' is not HOST:PORT"),
])
def test_bad_init_arguments_exit_2_and_create_nothing(site: Site, args: tuple[str, ...],
                                                     says: str) -> None:
    result = site.sitectl("init", *args, check=False)
    assert result.returncode == 2, result.stderr
    assert says in one_line(result.stderr)
    assert not site.dir.exists()


def test_argparse_errors_exit_2(site: Site) -> None:
    result = site.sitectl("init", "west", "--link-port", "many", check=False)
    assert result.returncode == 2 and "invalid int value" in result.stderr


def test_bad_fields_exit_2_and_runtime_failures_exit_1(site: Site) -> None:
    site.sitectl("init", "west", "--link-port", str(free_port()))
    before = snapshot(site.dir)
    bad_key = site.sitectl("connector", "create", "bad key!", "127.0.0.1:1", check=False)
    assert bad_key.returncode == 2
    assert "not a valid routing key" in one_line(bad_key.stderr)
    bad_key = site.sitectl("listener", "create", "bad key!", "1234", check=False)
    assert bad_key.returncode == 2
    again = site.sitectl("init", "west", check=False)
    assert again.returncode == 1 and "refusing to overwrite" in one_line(again.stderr)
    not_running = site.sitectl("status", check=False)
    assert not_running.returncode == 1 and "not running" in one_line(not_running.stderr)
    assert snapshot(site.dir) == before


def test_init_picks_an_admin_port_no_other_site_claims(tmp_path: Path) -> None:
    env = site_env(tmp_path)
    west = Site(tmp_path, "west", env)
    out = west.sitectl("init", "west", "--link-port", str(free_port()), "--json").stdout
    picked = json.loads(out)
    assert picked["admin_port"] >= FIRST_ADMIN_PORT
    assert picked["admin_url"] == f"http://127.0.0.1:{picked['admin_port']}/"
    east = Site(tmp_path, "east", env)
    text = east.sitectl("init", "east", "--link-port", str(free_port())).stdout
    admin = next(line for line in text.splitlines() if "admin (metrics" in line)
    assert f":{picked['admin_port']}/" not in admin and "http://127.0.0.1:" in admin
    north = Site(tmp_path, "north", env)
    taken = north.sitectl("init", "north", "--admin-port", str(picked["admin_port"]),
                          check=False)
    assert taken.returncode == 2
    assert f"already the admin port of the site in {west.dir}" in one_line(taken.stderr)
    same = north.sitectl("init", "north", "--admin-port", "9999", "--link-port", "9999",
                         check=False)
    assert same.returncode == 2 and "the same as --link-port" in one_line(same.stderr)
    bad = north.sitectl("init", "north", "--admin-bind", "no way", check=False)
    assert bad.returncode == 2 and "[site] admin_bind: 'no way'" in one_line(bad.stderr)
    assert not north.dir.exists()
