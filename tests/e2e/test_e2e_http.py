"""HTTP across sites, end to end: three router subprocesses driven by sitectl, real
backends (HTTP/1.1 on west, h2c on north, tests/support/httpd.py), real clients
(httpx, curl). East's listener routes each request on its own."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.httpd import pattern
from tests.support.sites import (
    ROOT,
    Process,
    Site,
    free_port,
    link,
    site_env,
    start_sites,
    wait_for,
)

MB = 1024 * 1024


class Backend:
    """tests/support/httpd.py as a process."""

    def __init__(self, workdir: Path, name: str, *, h2: bool) -> None:
        self.name, self.h2, self.port = name, h2, free_port()
        self.workdir = workdir
        self.proc: Process | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "tests.support.httpd", "--port", str(self.port),
                "--name", self.name, *(["--h2"] if self.h2 else [])]
        self.proc = Process(f"httpd-{self.name}", argv, self.workdir / f"httpd-{self.name}.log",
                            cwd=ROOT)
        wait_for(lambda: port_open(self.port), what=f"backend {self.name} listening")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Net:
    """east (listener) linked to west (HTTP/1.1 backend) and north (h2c backend)."""

    def __init__(self, workdir: Path) -> None:
        env = site_env(workdir)
        self.west = Site(workdir, "west", env).init()
        self.north = Site(workdir, "north", env).init()
        self.east = Site(workdir, "east", env).init()
        start_sites(self.west, self.north, self.east)
        link(self.west, self.east, workdir)
        link(self.north, self.east, workdir)
        self.backends = {"west": Backend(workdir, "west", h2=False),
                         "north": Backend(workdir, "north", h2=True)}
        for backend in self.backends.values():
            backend.start()
        self.west.sitectl("connector", "create", "api",
                          f"127.0.0.1:{self.backends['west'].port}", "--protocol", "http1")
        self.north.sitectl("connector", "create", "api",
                           f"127.0.0.1:{self.backends['north'].port}", "--protocol", "http2")
        self.port = free_port()
        self.east.sitectl("listener", "create", "api", str(self.port), "--protocol", "http")
        wait_for(lambda: set(self.east.state()["keys"]["api"]["served_by"]) == {"west", "north"},
                 what="api served by west and north")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for backend in self.backends.values():
            backend.stop()
        for site in (self.east, self.west, self.north):
            site.stop()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    n = Net(tmp_path_factory.mktemp("http"))
    yield n
    n.stop()


def served_by(client: httpx.Client, url: str, n: int, **kw: object) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        r = client.get(url, **kw)  # type: ignore[arg-type]
        assert r.status_code == 200, r.text
        seen[r.text] += 1
    return seen


@pytest.mark.parametrize("version", ["http1", "http2"])
def test_requests_on_one_connection_are_balanced_per_request(net: Net, version: str) -> None:
    with httpx.Client(http1=version == "http1", http2=version == "http2",
                      limits=httpx.Limits(max_connections=1)) as client:
        seen = served_by(client, f"{net.url}/whoami", 200)
        r = client.get(f"{net.url}/whoami")
        assert r.http_version == ("HTTP/1.1" if version == "http1" else "HTTP/2")
    assert set(seen) == {"west", "north"}, seen
    assert min(seen.values()) >= 40, seen  # balanced, not just a stray one


def test_curl_http1_and_h2_prior_knowledge(net: Net) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    for flags in ([], ["--http2-prior-knowledge"]):
        out = subprocess.run([curl, "-sS", "--max-time", "10", *flags, "-w", " %{http_code}",
                              f"{net.url}/whoami"], capture_output=True, text=True, check=True)
        name, code = out.stdout.rsplit(" ", 1)
        assert code == "200" and name in {"west", "north"}, out.stdout


def test_a_split_lands_within_a_few_percent(net: Net) -> None:
    net.east.sitectl("route", "add", "api", "--split", "west=90,north=10")
    try:
        with httpx.Client() as client:
            seen = served_by(client, f"{net.url}/whoami", 1000)
    finally:
        net.east.sitectl("route", "delete", "api", "1")
    assert 860 <= seen["west"] <= 940, seen


def test_a_header_rule_sends_every_marked_request_to_its_site(net: Net) -> None:
    net.east.sitectl("route", "add", "api", "--header", "x-canary=1", "--site", "north")
    try:
        with httpx.Client(http2=True, http1=False) as client:
            marked = served_by(client, f"{net.url}/whoami", 100, headers={"x-canary": "1"})
            plain = served_by(client, f"{net.url}/whoami", 100)
    finally:
        net.east.sitectl("route", "delete", "api", "1")
    assert marked == {"north": 100}
    assert set(plain) == {"west", "north"}


@pytest.mark.parametrize("site", ["west", "north"])
def test_200mb_upload_and_download_intact(net: Net, site: str) -> None:
    net.east.sitectl("route", "add", "api", "--site", site)
    try:
        size = 200 * MB
        digest = hashlib.sha256()

        def upload() -> Iterator[bytes]:
            chunk = pattern(MB)
            for _ in range(size // MB):
                digest.update(chunk)
                yield chunk

        with httpx.Client(timeout=120) as client:
            r = client.post(f"{net.url}/sha", content=upload())
            assert r.status_code == 200 and r.headers["x-served-by"] == site
            assert r.text == digest.hexdigest()
            got = hashlib.sha256()
            with client.stream("GET", f"{net.url}/bytes/{size}") as resp:
                assert resp.status_code == 200
                for chunk in resp.iter_bytes():
                    got.update(chunk)
            assert got.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()
    finally:
        net.east.sitectl("route", "delete", "api", "1")


def test_server_sent_events_arrive_one_by_one(net: Net) -> None:
    arrived: list[float] = []
    with httpx.Client(timeout=30) as client, client.stream("GET", f"{net.url}/sse/5") as r:
        assert r.headers["content-type"] == "text/event-stream"
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrived.append(time.monotonic())
    assert len(arrived) == 5
    # Sent 0.2 s apart: delivered as written, not all at the end.
    assert arrived[-1] - arrived[0] >= 0.5, arrived


def test_a_site_whose_backend_is_down_is_skipped(net: Net) -> None:
    net.backends["west"].stop()
    try:
        with httpx.Client() as client:
            seen = served_by(client, f"{net.url}/whoami", 50)
        assert seen == {"north": 50}
    finally:
        net.backends["west"].start()


def test_a_refused_post_goes_whole_to_the_next_site(net: Net) -> None:
    """A POST's body travels with its OPEN (early data); a site that refuses it (its
    backend is down) drops it, and the next site gets all of it again from the replay
    buffer: every body arrives whole, whichever site was tried first."""
    net.backends["west"].stop()
    try:
        with httpx.Client(timeout=30) as client:
            for i in range(30):
                body = hashlib.sha256(str(i).encode()).digest() * (1 + 97 * i)  # to 93 KB
                r = client.post(f"{net.url}/sha", content=body)
                assert r.status_code == 200, r.text
                assert r.text.strip() == hashlib.sha256(body).hexdigest()
                assert r.headers["x-served-by"] == "north"
    finally:
        net.backends["west"].start()


def test_garbage_on_an_http_listener_gets_400_and_a_closed_connection(net: Net) -> None:
    with socket.create_connection(("127.0.0.1", net.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400"), reply[:100]


def test_no_site_serves_the_key_says_why(net: Net) -> None:
    net.east.sitectl("route", "add", "api", "--site", "nowhere")
    try:
        r = httpx.get(f"{net.url}/whoami", timeout=10)
    finally:
        net.east.sitectl("route", "delete", "api", "1")
    assert r.status_code == 503
    assert "api" in r.text


def test_affinity_keeps_each_user_on_one_site_and_moves_only_a_gone_sites_users(
        net: Net) -> None:
    net.east.sitectl("listener", "set", "api", "--affinity", "header:x-user")
    users = [f"user-{i}" for i in range(40)]
    try:
        with httpx.Client() as client:
            def sites() -> dict[str, str]:
                placed: dict[str, str] = {}
                for user in users:
                    seen = served_by(client, f"{net.url}/whoami", 3, headers={"x-user": user})
                    assert len(seen) == 1, (user, seen)  # one user, one site
                    placed[user] = next(iter(seen))
                return placed

            before = sites()
            assert set(before.values()) == {"west", "north"}, before
            net.backends["north"].stop()
            try:
                after = sites()
            finally:
                net.backends["north"].start()
        assert set(after.values()) == {"west"}
        # Only north's users moved; west's stayed where they were.
        assert all(after[u] == "west" for u, site in before.items() if site == "west")
    finally:
        net.east.sitectl("listener", "set", "api", "--affinity", "")


def test_a_post_the_backend_received_is_not_retried(net: Net) -> None:
    net.east.sitectl("route", "add", "api", "--site", "west")
    try:
        with httpx.Client(timeout=30) as client:
            before = int(client.get(f"{net.url}/crashes").text)
            r = client.post(f"{net.url}/crash", content=b"charge the card once")
            assert r.status_code >= 500  # the backend failed: the client is told
            assert int(client.get(f"{net.url}/crashes").text) == before + 1
    finally:
        net.east.sitectl("route", "delete", "api", "1")


def test_a_timeout_answers_504_within_its_bound(net: Net) -> None:
    net.east.sitectl("listener", "set", "api", "--timeout", "1s")
    try:
        started = time.monotonic()
        r = httpx.get(f"{net.url}/sleep/5", timeout=30)
        took = time.monotonic() - started
    finally:
        net.east.sitectl("listener", "set", "api", "--timeout", "off")
    assert r.status_code == 504, r.text
    assert took < 4.0, took


def test_a_site_answering_5xx_is_ejected_and_its_requests_served_elsewhere(net: Net) -> None:
    with httpx.Client() as client:
        # GETs are retried elsewhere after a 5xx: the client only ever sees 200.
        for _ in range(30):
            r = client.get(f"{net.url}/failon/west")
            assert r.status_code == 200 and r.headers["x-served-by"] == "north"
        # West failed 5 times in a row by now: it is tried last, so it sees none.
        before = int(httpx.get(f"http://127.0.0.1:{net.backends['west'].port}/count").text)
        for _ in range(20):
            assert client.get(f"{net.url}/failon/west").status_code == 200
        after = int(httpx.get(f"http://127.0.0.1:{net.backends['west'].port}/count").text)
    assert after == before + 1  # only the /count request itself


def test_a_site_killed_mid_run_fails_in_flight_requests_cleanly_and_new_ones_go_elsewhere(
        tmp_path: Path) -> None:
    net = Net(tmp_path)
    try:
        outcomes: Counter[str] = Counter()
        with httpx.Client(timeout=30) as client:
            # Long downloads in flight on north when it dies: each either completes
            # intact or fails visibly (a status or a broken connection), never short.
            want = hashlib.sha256(pattern(20 * MB)).hexdigest()
            net.east.sitectl("route", "add", "api", "--site", "north")
            with client.stream("GET", f"{net.url}/bytes/{20 * MB}") as r:
                got = hashlib.sha256()
                net.north.kill()
                try:
                    for chunk in r.iter_bytes():
                        got.update(chunk)
                    outcomes["intact" if got.hexdigest() == want else "short"] += 1
                except httpx.HTTPError:
                    outcomes["broken"] += 1
            net.east.sitectl("route", "delete", "api", "1")
            assert outcomes["short"] == 0, outcomes
            # New requests go to the site that is left.
            wait_for(lambda: net.east.state()["keys"]["api"]["served_by"] == ["west"],
                     what="north withdrawn")
            assert served_by(client, f"{net.url}/whoami", 20) == {"west": 20}
    finally:
        net.stop()
