"""Faults: a peer dies and returns, a peer speaks garbage, the user errs."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from pathlib import Path

import certs
from router.protocol import PREFACE, Hello
from tests.conftest import Pair
from tests.support.services import HashServer, transfer
from tests.support.sites import SITECTL, Site, free_port, site_env, wait_for

MB = 1024 * 1024


def test_peer_killed_resets_flows_and_link_heals(fresh_pair: Pair) -> None:
    pair = fresh_pair
    server = HashServer()
    key, port = pair.key("heal"), free_port()
    pair.expose(key, server.port, port)
    errors: list[BaseException] = []
    results = []

    def long_flow() -> None:
        try:
            results.append(transfer(port, 1, 2000 * MB, 0, timeout=30))
        except OSError as exc:
            errors.append(exc)

    client = threading.Thread(target=long_flow)
    client.start()
    wait_for(lambda: pair.east.state()["flows"]["active"] >= 1, what="flow running")
    pair.west.kill()
    client.join(30)
    assert not client.is_alive(), "the client's flow must end when the peer dies"
    # The client sees its connection reset; the server got only part of the stream.
    assert errors and not results, results
    assert isinstance(errors[0], ConnectionResetError | BrokenPipeError), errors
    assert 1 not in server.results or server.results[1].received < 2000 * MB
    wait_for(lambda: not pair.east.link_up("west"), what="link seen down")
    assert not pair.east.key_reachable(key)
    pair.west.start()
    wait_for(lambda: pair.east.link_up("west"), timeout=30, what="link back by itself")
    wait_for(lambda: pair.east.key_reachable(key), what="key reachable again")
    result = transfer(port, 2, MB, MB)
    assert server.results[2].received_hash == result.sent_hash
    assert result.received_hash == server.results[2].sent_hash


def _raw_link(site: Site, link_name: str, peer: Site) -> ssl.SSLSocket:
    """An authenticated TLS connection to `peer` using `site`'s link credentials."""
    links = site.dir / "links"
    ctx = certs.client_context(cert_pem=(links / f"{link_name}.crt").read_bytes(),
                               key_pem=(links / f"{link_name}.key").read_bytes(),
                               ca_pem=(links / f"{link_name}-ca.crt").read_bytes())
    raw = socket.create_connection(("127.0.0.1", peer.link_port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=peer.name)


def _read_until_closed(sock: ssl.SSLSocket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ssl.SSLError, OSError):
        pass
    return data


def test_garbage_and_oversized_frames_close_only_that_link(pair: Pair) -> None:
    hello = Hello(router_id="rffffffffffffffff", site="east", max_frame_bytes=65536,
                  keepalive_interval=1.0).to_wire()
    with _raw_link(pair.east, "west", pair.west) as sock:
        sock.sendall(b"GARBAGE!" * 4)
        reply = _read_until_closed(sock)
    assert b"bad preface" in reply  # GOAWAY carries the reason back

    with _raw_link(pair.east, "west", pair.west) as sock:
        frame = struct.pack(">BBII", 1, 0, 0, len(hello)) + hello
        # A DATA frame header declaring 1 GiB: refused before any body is sent.
        sock.sendall(PREFACE + frame + struct.pack(">BBII", 2, 0, 1, 1 << 30))
        reply = _read_until_closed(sock)
    assert b"exceeds limit" in reply
    wait_for(lambda: "exceeds limit" in pair.west.log_tail(30), what="west logs the reason")
    assert pair.east.link_up("west")  # the real link and the router are fine
    assert pair.west.status()["site"] == "west"


def test_link_port_refuses_unauthenticated_link(pair: Pair) -> None:
    ctx = certs.client_context(cert_pem=None, key_pem=None,
                               ca_pem=(pair.east.dir / "links" / "west-ca.crt").read_bytes())
    raw = socket.create_connection(("127.0.0.1", pair.west.link_port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="west") as sock:
        sock.sendall(PREFACE)
        assert _read_until_closed(sock) == b""
    wait_for(lambda: "without a client certificate" in pair.west.log_tail(20),
             what="west logs the refusal")


def test_status_when_router_not_running(tmp_path: Path) -> None:
    site = Site(tmp_path, "idle", site_env(tmp_path)).init()
    result = site.sitectl("status", check=False)
    assert result.returncode != 0
    assert "router of site idle is not running" in result.stderr


def test_bad_config_names_file_line_and_field(tmp_path: Path) -> None:
    site = Site(tmp_path, "broken", site_env(tmp_path)).init()
    cfg = site.dir / "site.toml"
    text = cfg.read_text().replace(f"link_port = {site.link_port}", 'link_port = "many"')
    cfg.write_text(text)
    line = text.splitlines().index('link_port = "many"') + 1
    result = site.sitectl("run", check=False, timeout=30)
    assert result.returncode != 0
    assert f"site.toml:{line}: [site] link_port: must be int, got str" in result.stderr


def test_user_errors_are_clear(tmp_path: Path) -> None:
    import subprocess

    env = site_env(tmp_path)
    site = Site(tmp_path, "west", env).init()
    again = site.sitectl("init", "west", check=False)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    bad = site.sitectl("listener", "create", "db", "notaport", check=False)
    assert bad.returncode == 2 and "bad port" in bad.stderr
    bad = site.sitectl("connector", "create", "db", "5432", check=False)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
    bad = site.sitectl("connector", "create", "bad key!", "127.0.0.1:1", check=False)
    assert bad.returncode != 0 and "not a valid routing key" in bad.stderr
    bad = site.sitectl("token", "issue", "--expires", "soon", check=False)
    assert bad.returncode != 0
    # --site-dir after the subcommand, and SITECTL_SITE_DIR, both work.
    after = subprocess.run([SITECTL, "connector", "list", "--site-dir", str(site.dir)],
                           env=env, capture_output=True, text=True)
    assert after.returncode == 0, after.stderr
    via_env = subprocess.run([SITECTL, "connector", "list"], capture_output=True, text=True,
                             env=env | {"SITECTL_SITE_DIR": str(site.dir)})
    assert via_env.returncode == 0, via_env.stderr
    # Offline edits persist and are reported as such.
    made = site.sitectl("connector", "create", "db", "127.0.0.1:5432")
    assert "router not running" in made.stdout
    assert "db" in site.sitectl("connector", "list").stdout


def test_sites_by_name_under_xdg(tmp_path: Path) -> None:
    import subprocess

    env = site_env(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SITECTL, *args], env=env, capture_output=True, text=True)

    assert run("init", "alpha", "--link-port", str(free_port())).returncode == 0
    assert run("init", "beta").returncode == 0
    assert (tmp_path / "xdg" / "vanrouter" / "sites" / "alpha" / "site.toml").exists()
    both = run("connector", "list")
    assert both.returncode != 0 and "choose one with --site" in both.stderr
    assert run("--site", "beta", "connector", "list").returncode == 0
    key_mode = (tmp_path / "xdg" / "vanrouter" / "sites" / "beta" / "ca.key").stat().st_mode
    assert key_mode & 0o777 == 0o600


def test_graceful_peer_shutdown_and_no_leaks(fresh_pair: Pair) -> None:
    """SIGTERM on one router: it exits 0 without a traceback; the other survives,
    sees why, and holds no leftover flows or file descriptors."""
    import os

    pair = fresh_pair
    server = HashServer()
    key, port = pair.key("leak"), free_port()
    pair.expose(key, server.port, port)

    def fds(site: Site) -> int:
        return len(os.listdir(f"/proc/{site.pid}/fd"))

    transfer(port, 1, 1000, 1000)  # warm up: first-use sockets and caches exist
    before = (fds(pair.east), fds(pair.west))
    for i in range(2, 52):
        transfer(port, i, 10_000, 10_000)
    wait_for(lambda: pair.east.state()["flows"]["active"] == 0, what="flows closed")
    def listing(site: Site) -> list[str]:
        return sorted(os.readlink(f"/proc/{site.pid}/fd/{fd}")
                      for fd in os.listdir(f"/proc/{site.pid}/fd"))

    try:
        # At most as many as before (a control connection may have been open then).
        wait_for(lambda: fds(pair.east) <= before[0] and fds(pair.west) <= before[1],
                 what=f"fd counts back to {before}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: east {listing(pair.east)} west {listing(pair.west)}"
                             ) from None
    assert pair.west.stop() == 0
    assert "Traceback" not in pair.west.log_tail(200)
    wait_for(lambda: "router shutting down" in pair.east.log_tail(20),
             what="east told why the link ended")
    assert pair.east.status()["site"] == "east"  # still running
    assert "Traceback" not in pair.east.log_tail(200)


def test_busy_listener_port_does_not_keep_the_site_down(tmp_path: Path) -> None:
    site = Site(tmp_path, "busy", site_env(tmp_path)).init()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        site.sitectl("listener", "create", "db", str(port))  # router not running: saved
        site.start()
        try:
            [lst] = site.status()["listeners"]
            assert lst["error"] and "Address already in use" in lst["error"]
            assert "NOT LISTENING" in site.sitectl("status").stdout
        finally:
            site.stop()


def test_malformed_control_requests_get_errors_and_change_nothing(pair: Pair) -> None:
    import json

    def ask(raw: bytes) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(pair.east.dir / "run" / "control.sock"))
            s.sendall(raw)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply: dict[str, object] = json.loads(data)
        return reply

    before = pair.east.status()
    for raw, why in [
        (b"not json\n", "not JSON"),
        (b'{"args": {}}\n', "needs an op"),
        (b'{"op": "explode"}\n', "unknown op"),
        (b'{"op": "listener.delete", "args": [1]}\n', "args must be an object"),
        (b'{"op": "link.delete", "args": {}}\n', "needs name"),
        (b'{"op": "link.add", "args": {"name": "ghost"}}\n', "bad link file"),
        (b'{"op": "token.issue", "args": {"uses": "many"}}\n', "needs expires_s"),
        (b'{"op": "listener.create", "args": {"key": "db", "port": "x"}}\n', "port: must be"),
        (b"x" * 70_000, "request over"),
    ]:
        reply = ask(raw)
        assert reply["ok"] is False and why in str(reply["error"]), (raw[:60], reply)
    after = pair.east.status()
    assert after["listeners"] == before["listeners"] and after["connectors"] == before["connectors"]
    assert [(lk["name"], lk["state"]) for lk in after["links"]] == [
        (lk["name"], lk["state"]) for lk in before["links"]]
