"""The careless user and the local machine: what a live change does when site.toml cannot
be saved, values the routing record cannot carry, raw control requests with hostile
arguments, and site files that are not what they seem. Each asserts what the user sees:
one line and its exit code, the site directory unchanged where nothing should change,
and the router still answering."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.routing.core import RoutingCore
from router.site.config import MAX_KEYS_PER_SITE, parse_config
from router.site.errors import ConfigError
from sitectl.client import call
from tests.support.forge import tree_digest
from tests.support.sites import Site, free_port, site_env


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, "west", site_env(tmp_path)).init()
    yield s
    s.stop()


def _one_line_error(result: Any, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sitectl: "), result.stderr
    return str(lines[0])


def _raw(site: Site, request: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(site.dir / "run" / "control.sock"))
        s.sendall(request)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply


def _block_saves(site: Site) -> Path:
    """Make the router's next site.toml write fail the way a full or read-only disk does
    (as root, permissions would not stop it): a directory where its temp file goes."""
    blocker = site.dir / f".site.toml.{site.pid}.tmp"
    blocker.mkdir()
    return blocker


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---- values the routing record cannot carry
@pytest.mark.parametrize("args", [("--priority", "-1"), ("--priority", str(2**31)),
                                  ("--weight", str(2**31)), ("--weight", "0")])
def test_connector_out_of_record_range_exits_2_offline_and_live(site: Site,
                                                               args: tuple[str, str]) -> None:
    before = tree_digest(site.dir)
    line = _one_line_error(site.sitectl("connector", "create", "db", "127.0.0.1:5432", *args,
                                        check=False), 2)
    assert args[0].lstrip("-") in line
    assert tree_digest(site.dir) == before
    site.start()
    _one_line_error(site.sitectl("connector", "create", "db", "127.0.0.1:5432", *args,
                                 check=False), 2)
    reply = _raw(site, json.dumps({"op": "connector.create", "args": {
        "key": "db", "host": "127.0.0.1", "port": 5432,
        args[0].lstrip("-"): int(args[1])}}).encode() + b"\n")
    assert not reply["ok"] and args[0].lstrip("-") in reply["error"]
    assert tree_digest(site.dir) == before
    assert site.status()["connectors"] == []


def test_hand_edited_priority_refused_at_start_with_one_line(site: Site) -> None:
    cfg = site.dir / "site.toml"
    cfg.write_text(cfg.read_text() + '\n[[connector]]\nkey = "db"\nhost = "127.0.0.1"\n'
                   'port = 5432\npriority = -1\n')
    result = site.sitectl("run", check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"router: {cfg}:{len(cfg.read_text().splitlines())}: [connector] priority: "
        f"must be from 0 to {2**31 - 1}, got -1"]


def test_summed_weights_of_one_key_are_refused_live_and_nothing_changes(site: Site) -> None:
    site.start()
    big = str(2**31 - 1)
    site.sitectl("connector", "create", "db", "127.0.0.1:5432", "--weight", big)
    before = tree_digest(site.dir)
    line = _one_line_error(site.sitectl("connector", "create", "db", "127.0.0.1:5433",
                                        "--weight", "1", check=False), 2)
    assert "weights of key 'db' add up past" in line
    reply = _raw(site, json.dumps({"op": "connector.create", "args": {
        "key": "db", "host": "127.0.0.1", "port": 5433}}).encode() + b"\n")
    assert not reply["ok"] and "weights of key 'db' add up past" in reply["error"]
    assert tree_digest(site.dir) == before
    assert [c["port"] for c in site.status()["connectors"]] == [5432]
    # And the router still advertises and serves changes.
    site.sitectl("connector", "create", "web", "127.0.0.1:8080")


def test_the_key_limit_is_the_routing_cores() -> None:
    import inspect

    default = inspect.signature(RoutingCore).parameters["max_keys_per_record"].default
    assert default == MAX_KEYS_PER_SITE
    body = "".join(f'[[connector]]\nkey = "k{i}"\nhost = "127.0.0.1"\nport = 1\n'
                   for i in range(MAX_KEYS_PER_SITE + 1))
    with pytest.raises(ConfigError, match=f"more than {MAX_KEYS_PER_SITE} connector keys"):
        parse_config(Path("site.toml"), '[site]\nname = "w"\nlink_port = 1\n' + body)


# ---- a live change whose save fails leaves the router as site.toml says
def test_listener_whose_save_fails_is_not_left_listening(site: Site) -> None:
    site.start()
    before = tree_digest(site.dir)
    blocker = _block_saves(site)
    port = free_port()
    line = _one_line_error(site.sitectl("listener", "create", "db", str(port), check=False), 1)
    assert line == (f"sitectl: cannot save {site.dir / 'site.toml'}: Is a directory; "
                    "nothing was changed")
    assert site.status()["listeners"] == []
    assert not _listening(port)
    blocker.rmdir()
    assert tree_digest(site.dir) == before
    site.sitectl("listener", "create", "db", str(port))  # the port was let go
    assert _listening(port)


def test_listener_delete_whose_save_fails_keeps_serving(site: Site) -> None:
    site.start()
    port = free_port()
    site.sitectl("listener", "create", "db", str(port))
    before = tree_digest(site.dir)
    blocker = _block_saves(site)
    _one_line_error(site.sitectl("listener", "delete", "db", check=False), 1)
    assert [x["port"] for x in site.status()["listeners"]] == [port]
    assert _listening(port)
    blocker.rmdir()
    assert tree_digest(site.dir) == before
    site.sitectl("listener", "delete", "db")
    assert not _listening(port)


def test_connector_whose_save_fails_says_why_in_one_line(site: Site) -> None:
    site.start()
    before = tree_digest(site.dir)
    blocker = _block_saves(site)
    line = _one_line_error(site.sitectl("connector", "create", "db", "127.0.0.1:5432",
                                        check=False), 1)
    assert "cannot save" in line and "Is a directory" in line
    assert site.status()["connectors"] == []
    blocker.rmdir()
    assert tree_digest(site.dir) == before


def test_listener_on_a_port_in_use_or_privileged_changes_nothing(site: Site) -> None:
    site.start()
    before = tree_digest(site.dir)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        line = _one_line_error(site.sitectl("listener", "create", "db", str(taken),
                                            check=False), 1)
        assert "cannot listen on 127.0.0.1" in line and "in use" in line
    assert tree_digest(site.dir) == before
    assert site.status()["listeners"] == []


# ---- hostile raw requests
@pytest.mark.parametrize("request_bytes", [
    b"[" * 60000 + b"\n",
    json.dumps({"op": "listener.create", "args": {"key": "db", "port": 10**400}}).encode()
    + b"\n",
    json.dumps({"op": "listener.create", "args": {"key": "d\ud800b", "port": 1}}).encode()
    + b"\n",
    json.dumps({"op": "connector.create", "args": {"key": ["db"], "host": 1}}).encode()
    + b"\n",
    json.dumps({"op": "link.cost", "args": {"name": "x", "cost": 1e308}}).encode() + b"\n",
    json.dumps({"op": "token.issue", "args": {"expires_s": 60, "uses": 10**30}}).encode()
    + b"\n",
    b'{"op": "status", "args": []}\n',
    b"\xff\xfe\n",
])
def test_hostile_request_gets_an_error_and_the_router_lives(site: Site,
                                                            request_bytes: bytes) -> None:
    site.start()
    before = tree_digest(site.dir)
    reply = _raw(site, request_bytes)
    assert reply["ok"] is False and isinstance(reply["error"], str) and reply["error"]
    assert "\n" not in reply["error"]
    assert tree_digest(site.dir) == before
    assert site.status()["site"]


def test_many_concurrent_requests_are_all_answered(site: Site) -> None:
    """More sitectl at once than a listen backlog holds: each waits its turn."""
    site.start()
    replies: list[dict[str, Any]] = []

    def ask() -> None:
        replies.append(call(site.dir / "run" / "control.sock", "status"))

    threads = [threading.Thread(target=ask) for _ in range(300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(replies) == 300 and all(r["ok"] for r in replies)



# ---- site files that are not what they seem
def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


@pytest.mark.parametrize("make, why", [
    (lambda p: (p.unlink(), p.symlink_to("/dev/zero")), "not a regular file"),
    (_fifo, "not a regular file"),
    (lambda p: p.write_bytes(p.read_bytes() + b"#" * (9 * 1024 * 1024)), "larger than"),
    (lambda p: p.write_bytes(p.read_bytes() + b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
     "nested too deeply"),
    (lambda p: p.write_bytes(p.read_bytes() + b'x = "\xff"\n'), "not UTF-8"),
])
def test_odd_site_toml_is_one_line_for_sitectl_and_the_router(site: Site, make: Any,
                                                              why: str) -> None:
    make(site.dir / "site.toml")
    before = tree_digest(site.dir)
    for args, code in ((("connector", "list"), 1), (("connector", "create", "db", "h:1"), 1),
                       (("status",), 1)):
        line = _one_line_error(site.sitectl(*args, check=False, timeout=20), code)
        assert why in line, line
    result = site.sitectl("run", check=False, timeout=20)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and why in result.stderr
    assert tree_digest(site.dir) == before


@pytest.mark.parametrize("which", ["toml", "crt"])
def test_link_file_that_is_a_fifo_does_not_freeze_the_router(site: Site, which: str) -> None:
    site.start()
    links = site.dir / "links"
    links.mkdir(exist_ok=True)
    (links / "evil.toml").write_text('peer_site = "evil"\nendpoints = ["127.0.0.1:1"]\n')
    (links / "evil-ca.crt").write_bytes(b"x")
    (links / "evil.key").write_bytes(b"x")
    _fifo(links / f"evil.{which}")
    reply = _raw(site, b'{"op": "link.add", "args": {"name": "evil"}}\n')
    if which == "toml":
        assert not reply["ok"] and "not a regular file" in reply["error"]
    # The dialler meets the FIFO certificate and says so; the router keeps answering.
    assert site.status()["site"] == "west"
    site.sitectl("connector", "create", "db", "127.0.0.1:5432")


# ---- offline edits racing each other and a starting router
def _concurrently(site: Site, commands: list[tuple[str, ...]]) -> list[Any]:
    import subprocess

    from tests.support.sites import SITECTL

    procs = [subprocess.Popen([SITECTL, "--site-dir", str(site.dir), *args], env=site.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in commands]
    return [(p.wait(timeout=60), p.stderr.read() if p.stderr else "") for p in procs]


def test_concurrent_offline_edits_are_none_lost(site: Site) -> None:
    n = 12
    results = _concurrently(site, [("connector", "create", f"k{i}", f"127.0.0.1:{1000 + i}")
                                   for i in range(n)])
    assert all(code == 0 for code, _ in results), results
    cfg = parse_config(site.dir / "site.toml", (site.dir / "site.toml").read_text())
    assert sorted(c.key for c in cfg.connectors) == sorted(f"k{i}" for i in range(n))


def test_offline_edits_while_a_router_starts_are_none_lost(site: Site) -> None:
    """Each edit lands either in site.toml before the router reads it, or through the
    router once it answers: after the start, the router and site.toml agree on all."""
    n = 8
    site.start(wait=False)
    results = _concurrently(site, [("connector", "create", f"k{i}", f"127.0.0.1:{1000 + i}")
                                   for i in range(n)])
    assert all(code == 0 for code, _ in results), results
    site.wait_ready()
    want = sorted(f"k{i}" for i in range(n))
    assert sorted(c["key"] for c in site.status()["connectors"]) == want
    cfg = parse_config(site.dir / "site.toml", (site.dir / "site.toml").read_text())
    assert sorted(c.key for c in cfg.connectors) == want


@pytest.mark.parametrize("running", [False, True])
def test_listener_on_the_link_port_exits_2_running_or_not(site: Site, running: bool) -> None:
    if running:
        site.start()
    before = tree_digest(site.dir)
    line = _one_line_error(site.sitectl("listener", "create", "db", str(site.link_port),
                                        check=False), 2)
    assert line == f"sitectl: [listener] port: {site.link_port} is the site's link_port"
    site.sitectl("listener", "create", "db", "0.0.0.0:" + str(free_port()))
    line = _one_line_error(site.sitectl("listener", "create", "web", str(
        parse_config(site.dir / "site.toml", (site.dir / "site.toml").read_text())
        .listeners[0].port), check=False), 2)
    assert "already exists" in line
    assert len(parse_config(site.dir / "site.toml",
                            (site.dir / "site.toml").read_text()).listeners) == 1
    del before


def test_link_cost_out_of_range_exits_2(site: Site) -> None:
    before = tree_digest(site.dir)
    _one_line_error(site.sitectl("link", "cost", "east", str(10**7), check=False), 2)
    assert tree_digest(site.dir) == before


# ---- the control socket's directory in /tmp, for long site paths
@pytest.fixture
def long_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    import router.site.directory

    monkeypatch.setattr(router.site.directory, "SHARED_SOCKET_BASE", tmp_path / "tmp")
    (tmp_path / "tmp").mkdir(mode=0o1777)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    root = tmp_path / ("d" * 100) / "west"
    from router.site.create import init_site

    init_site(root, "west", host="127.0.0.1", link_port=free_port(), bind="127.0.0.1")
    yield root


@pytest.mark.parametrize("plant", ["symlink", "other-owner", "open-mode"])
def test_a_planted_control_dir_is_refused_by_router_and_sitectl(
        long_site: Path, tmp_path: Path, plant: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    from router.daemon.main import run_router
    from router.site.directory import Site
    from sitectl.main import main as sitectl_main

    shared = Site(long_site).control_path.parent
    assert shared.parent == tmp_path / "tmp"
    if plant == "symlink":
        (tmp_path / "theirs").mkdir(mode=0o777)
        shared.symlink_to(tmp_path / "theirs")
    else:
        shared.mkdir(mode=0o700)
        if plant == "other-owner":
            os.chown(shared, 65534, 65534)
        else:
            shared.chmod(0o777)
    want = {"symlink": "is not a directory", "other-owner": "belongs to uid 65534",
            "open-mode": "is open to other users (mode 777)"}[plant]
    assert run_router(long_site) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("router: ") and want in err[0], err
    assert sitectl_main(["--site-dir", str(long_site), "status"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sitectl: ") and want in err[0], err
    assert not list((tmp_path / "theirs").iterdir()) if plant == "symlink" else True


def test_the_control_dir_is_made_private(long_site: Path) -> None:
    from router.site.directory import Site

    site = Site(long_site)
    assert site.check_control_dir(create=False) is False
    assert site.check_control_dir(create=True) is True
    st = site.control_path.parent.lstat()
    assert st.st_uid == os.getuid() and st.st_mode & 0o777 == 0o700


def test_a_long_site_path_works_end_to_end(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 110)
    deep.mkdir()
    s = Site(deep, "west", site_env(tmp_path)).init()
    try:
        s.start()
        s.sitectl("connector", "create", "db", "127.0.0.1:5432")
        assert [c["key"] for c in s.status()["connectors"]] == ["db"]
    finally:
        s.stop()


def test_a_hand_edit_while_running_is_not_saved_over(site: Site) -> None:
    site.start()
    site.sitectl("connector", "create", "db", "127.0.0.1:5432")  # the router's own save
    cfg = site.dir / "site.toml"
    cfg.write_text(cfg.read_text() + '\n[[connector]]\nkey = "hand"\nhost = "127.0.0.1"\n'
                   'port = 7000\n')
    before = tree_digest(site.dir)
    line = _one_line_error(site.sitectl("connector", "create", "web", "127.0.0.1:8080",
                                        check=False), 1)
    assert line == (f"sitectl: {cfg} was edited since the router started; restart the "
                    "router to apply the edit (nothing was changed)")
    assert tree_digest(site.dir) == before
    assert [c["key"] for c in site.status()["connectors"]] == ["db"]
    site.stop()
    site.start()
    site.sitectl("connector", "create", "web", "127.0.0.1:8080")
    assert [c["key"] for c in site.status()["connectors"]] == ["db", "hand", "web"]


def test_sigterm_while_a_token_is_issued_leaves_no_file(site: Site, tmp_path: Path) -> None:
    """A router that takes the request and has not answered yet; sitectl is told to stop:
    no empty or half-written token file stays behind."""
    import signal
    import subprocess

    from tests.support.sites import SITECTL, wait_for

    (site.dir / "run").mkdir(exist_ok=True)
    got = threading.Event()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as fake:
        fake.bind(str(site.dir / "run" / "control.sock"))
        fake.listen()

        def take() -> None:
            conn, _ = fake.accept()
            conn.recv(65536)
            got.set()
            conn.recv(1)  # until sitectl is gone

        threading.Thread(target=take, daemon=True).start()
        token = tmp_path / "west.token"
        proc = subprocess.Popen([SITECTL, "--site-dir", str(site.dir), "token", "issue",
                                 "-o", str(token)], env=site.env, stderr=subprocess.PIPE)
        wait_for(got.is_set, what="the request")
        assert token.exists()  # opened first, so a bad path costs no grant
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert not token.exists()


def test_ten_thousand_listeners_parse_in_linear_time() -> None:
    import time

    body = "".join(f'[[listener]]\nkey = "k{i}"\nport = {10000 + i}\n' for i in range(10_000))
    start = time.perf_counter()
    cfg = parse_config(Path("site.toml"), '[site]\nname = "w"\nlink_port = 1\n' + body)
    assert len(cfg.listeners) == 10_000
    assert time.perf_counter() - start < 5  # about 0.3 s; pairwise it was about 7 s
    dup = body + '[[listener]]\nkey = "x"\nhost = "0.0.0.0"\nport = 19999\n'
    with pytest.raises(ConfigError, match=r"a listener on 127\.0\.0\.1:19999 already exists"):
        parse_config(Path("site.toml"), '[site]\nname = "w"\nlink_port = 1\n' + dup)
