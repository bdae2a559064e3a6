"""Names become file names: one check, paths kept inside links/, link files all or nothing."""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import certs
from router.endpoint import parse_endpoint
from router.names import InvalidName, validate_name, validate_router_id
from router.site.directory import Site
from router.site.errors import ConfigError, SiteError
from router.site.linkfiles import LinkSpec
from tests.daemon.test_hostile_tokens import one_line_error, tree_digest
from tests.support.sites import Site as Process
from tests.support.sites import site_env

BAD_NAMES = ["../evil", "a/b", "/tmp/x", ".hidden", "", "x" * 64, "evil\n", "e vil", "-x",
             "x\x00y", "é", "a\\b", 'a"b', "..", "."]
GOOD_NAMES = ["west", "a", "x" * 63, "site-1.prod_eu", "9lives"]
PEM = b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_in_one_place(name: str) -> None:
    with pytest.raises(InvalidName, match="is not a valid link name") as exc:
        validate_name(name, "link name")
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 200


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_pass(name: str) -> None:
    assert validate_name(name) == name


def test_non_strings_and_router_ids_and_endpoints() -> None:
    with pytest.raises(InvalidName, match="must be a string"):
        validate_name(3)
    assert validate_router_id("r0123456789abcdef") == "r0123456789abcdef"
    for bad in ("r0123", "R0123456789abcdef", "r0123456789abcdefg", "r0123456789ABCDEF", 7):
        with pytest.raises(InvalidName):
            validate_router_id(bad)
    assert parse_endpoint("::1:80") == ("::1", 80)
    assert parse_endpoint("relay.example.com:443") == ("relay.example.com", 443)


def spec(name: str = "west", **changes: object) -> LinkSpec:
    fields: dict[str, object] = {"name": name, "peer_site": "west",
                                 "endpoints": (("127.0.0.1", 55671),), "cost": 1}
    return LinkSpec(**(fields | changes))  # type: ignore[arg-type]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    root = tmp_path / "site"
    root.mkdir()
    return Site(root)


def save(site: Site, link: LinkSpec) -> None:
    site.save_link(link, ca_pem=PEM, cert_pem=PEM, key_pem=KEY)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_link_paths_need_a_valid_name(site: Site, name: str) -> None:
    before = tree_digest(site.root.parent)
    with pytest.raises(SiteError, match="is not a valid link name"):
        site.link_files(name)
    with pytest.raises(SiteError):
        save(site, spec(name))
    with pytest.raises(ConfigError):
        site.load_link(name)
    assert tree_digest(site.root.parent) == before


def test_a_planted_symlink_out_of_links_is_refused(site: Site, tmp_path: Path) -> None:
    site.links_dir.mkdir()
    outside = tmp_path / "outside.key"
    outside.write_text("keep")
    (site.links_dir / "west.key").symlink_to(outside)
    with pytest.raises(SiteError, match="is not inside"):
        save(site, spec())
    assert outside.read_text() == "keep"
    assert site.link_names() == []


def test_link_file_is_written_by_a_toml_writer_and_reads_back(site: Site) -> None:
    link = spec(peer_router_id="r0123456789abcdef", cost=7,
                endpoints=(("::1", 1), ("relay.example.com", 443)))
    save(site, link)
    doc = tomllib.loads((site.links_dir / "west.toml").read_text())
    assert doc == {"peer_site": "west", "endpoints": ["::1:1", "relay.example.com:443"],
                   "cost": 7, "peer_router_id": "r0123456789abcdef"}
    assert site.load_link("west") == link
    assert oct((site.links_dir / "west.key").stat().st_mode & 0o777) == "0o600"
    save(site, spec())  # without a router id the key is absent, not empty
    assert "peer_router_id" not in (site.links_dir / "west.toml").read_text()
    assert site.load_link("west").peer_router_id is None


@pytest.mark.parametrize("changes", [
    {"peer_site": 'west"\ncost = 0\n'}, {"peer_site": "../x"}, {"peer_router_id": "evil"},
    {"peer_router_id": 'r0"\nx = 1'}, {"cost": 0}, {"endpoints": ()},
    {"endpoints": (("bad host", 1),)},
])
def test_nothing_can_be_injected_into_a_link_file(site: Site, changes: dict[str, object]) -> None:
    with pytest.raises(SiteError):
        save(site, spec(**changes))
    assert not site.links_dir.exists() or not list(site.links_dir.iterdir())


@pytest.mark.parametrize("text", [
    'peer_site = "../x"\nendpoints = ["h:1"]\n',
    'peer_site = "west"\nendpoints = ["h:1"]\npeer_router_id = "nope"\n',
    'peer_site = "west"\nendpoints = ["h:1"]\ncost = true\n',
    'peer_site = "west"\nendpoints = ["h:1"]\ncost = 1e9\n',
    'peer_site = "west"\nendpoints = "h:1"\n',
    'peer_site = "west"\nendpoints = [1]\n',
    'peer_site = "west"\nendpoints = ["h:1"]\ninjected = 1\n',
    'peer_site = "west"\n',
    'not toml',
    '\xff',
])
def test_bad_link_files_give_one_line(site: Site, text: str) -> None:
    save(site, spec())
    (site.links_dir / "west.toml").write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"west\.toml: ") as exc:
        site.load_link("west")
    assert "\n" not in str(exc.value)


def test_link_names_lists_only_complete_links_with_valid_names(site: Site) -> None:
    save(site, spec("west"))
    save(site, spec("east"))
    (site.links_dir / "east.key").unlink()  # a half link
    for stray in (".hidden.toml", "a b.toml", "-x.toml", ".new-abc"):
        (site.links_dir / stray).write_text("")
    assert site.link_names() == ["west"]


def test_names_whose_files_overlap_are_refused(site: Site) -> None:
    save(site, spec("x"))
    before = tree_digest(site.root)
    assert site.link_clash("x-ca") == "x"  # x-ca.crt is x's CA and would be x-ca's cert
    with pytest.raises(SiteError, match="clashes with the files of link x"):
        save(site, spec("x-ca"))
    assert tree_digest(site.root) == before
    save(site, spec("x", cost=5))  # rewriting a link itself is no clash


@pytest.mark.parametrize("fail_at", range(4))
def test_a_failure_midway_leaves_no_partial_link(site: Site, monkeypatch: pytest.MonkeyPatch,
                                                 fail_at: int) -> None:
    save(site, spec("other"))
    before = tree_digest(site.root)
    real_replace = os.replace
    calls = []

    def flaky(src: str | Path, dst: str | Path) -> None:
        calls.append(dst)
        if len(calls) > fail_at:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(SiteError, match=r"cannot save link west in .*: No space left on device"):
        save(site, spec("west"))
    monkeypatch.undo()
    assert tree_digest(site.root) == before  # no temp dir, no stray file
    assert site.link_names() == ["other"]


def test_a_write_failure_leaves_nothing(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.links_dir.mkdir(mode=0o700)
    before = tree_digest(site.root)
    real_fsync = os.fsync
    calls = []

    def flaky(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky)
    with pytest.raises(SiteError, match="Input/output error"):
        save(site, spec())
    monkeypatch.undo()
    assert tree_digest(site.root) == before


# ---- end to end: `sitectl link create --name`
@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Process, Process]]:
    work = tmp_path_factory.mktemp("names")
    env = site_env(work)
    west = Process(work, "west", env).init().start()
    east = Process(work, "east", env).init()
    yield work, west, east
    west.stop()


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if "\x00" not in n] + ["west-ca"])
def test_bad_link_name_spends_nothing_and_changes_nothing(
        sites: tuple[Path, Process, Process], tmp_path: Path, name: str) -> None:
    work, west, east = sites
    if "west" not in Site(east.dir).link_names():
        token = tmp_path / "first.token"
        west.sitectl("token", "issue", "-o", str(token))
        east.sitectl("link", "create", str(token))  # "west-ca" must clash with this link
    token = tmp_path / "t.token"
    west.sitectl("token", "issue", "--uses", "1", "-o", str(token))
    grants = (west.dir / "grants.json").read_bytes()
    before, outside = tree_digest(east.dir), tree_digest(work / "xdg")
    result = east.sitectl("link", "create", str(token), f"--name={name}", check=False)
    assert result.returncode == 2
    message = one_line_error(result)
    assert "--name: " in message or "would overwrite files of link west" in message, message
    assert (west.dir / "grants.json").read_bytes() == grants  # the use is not spent
    assert tree_digest(east.dir) == before and tree_digest(work / "xdg") == outside
    # And the token still works: its one use was kept.
    good = east.sitectl("link", "create", str(token),
                        "--name", "ok-" + hashlib.sha256(name.encode()).hexdigest()[:8])
    assert "saved" in good.stdout


def test_link_file_written_by_sitectl_loads_with_tomllib(
        sites: tuple[Path, Process, Process], tmp_path: Path) -> None:
    _, west, east = sites
    token = tmp_path / "t.token"
    west.sitectl("token", "issue", "-o", str(token))
    east.sitectl("link", "create", str(token), "--name", "plain")
    doc = tomllib.loads((east.dir / "links" / "plain.toml").read_text())
    assert doc["peer_site"] == "west" and doc["cost"] == 1
    assert certs.load_pem(east.dir / "links" / "plain.key")
