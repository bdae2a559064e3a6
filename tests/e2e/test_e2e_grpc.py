"""gRPC across sites, end to end: router subprocesses driven by sitectl, a grpcio backend on
west (tests/support/grpc_backend.py, raw bytes, no protoc), grpcio clients on east's http
listener. Two topologies: east -> west, and east -> transit -> west (east links only to
transit). West's connector speaks http2 to the backend; a second key goes to the same
backend through an http1 connector, which gRPC cannot use."""

from __future__ import annotations

import hashlib
import itertools
import queue
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.grpc_backend import OPTIONS, SERVICE
from tests.support.httpd import pattern
from tests.support.sites import (
    ROOT,
    Process,
    Site,
    free_port,
    link,
    port_open,
    site_env,
    start_sites,
    wait_for,
    wait_path,
)

MiB = 1024 * 1024


class Backend:
    """tests/support/grpc_backend.py as a process on a fixed port (so it can come back)."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.name, self.port, self.workdir = name, free_port(), workdir
        self.proc: Process | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "tests.support.grpc_backend", "--port", str(self.port),
                "--name", self.name]
        self.proc = Process(f"grpc-{self.name}", argv,
                            self.workdir / f"grpc-{self.name}.log", cwd=ROOT)
        wait_for(lambda: port_open(self.port), what=f"gRPC backend {self.name} listening")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


class Net:
    """east's listeners: grpc (-> west's http2 connector), grpc1 (-> west's http1
    connector, same backend) and nowhere (no connector anywhere)."""

    def __init__(self, workdir: Path, topology: str) -> None:
        env = site_env(workdir)
        self.west = Site(workdir, "west", env).init()
        self.east = Site(workdir, "east", env).init()
        self.sites = [self.east, self.west]
        if topology == "transit":
            transit = Site(workdir, "transit", env).init()
            self.sites.append(transit)
        start_sites(*self.sites)
        if topology == "transit":
            link(transit, self.east, workdir)  # east dials transit only
            link(self.west, transit, workdir)
        else:
            link(self.west, self.east, workdir)
        self.backend = Backend(workdir, "west")
        self.backend.start()
        target = f"127.0.0.1:{self.backend.port}"
        self.west.sitectl("connector", "create", "grpc", target, "--protocol", "http2")
        self.west.sitectl("connector", "create", "grpc1", target, "--protocol", "http1")
        self.ports: dict[str, int] = {}
        for key in ("grpc", "grpc1", "nowhere"):
            self.ports[key] = free_port()
            self.east.sitectl("listener", "create", key, str(self.ports[key]),
                              "--protocol", "http")
        path = ["east", "transit", "west"] if topology == "transit" else ["east", "west"]
        for key in ("grpc", "grpc1"):
            wait_path(self.east, key, path)
        self.channels: list[grpc.Channel] = []

    def channel(self, key: str = "grpc") -> grpc.Channel:
        ch = grpc.insecure_channel(f"127.0.0.1:{self.ports[key]}", options=OPTIONS)
        self.channels.append(ch)
        return ch

    def direct(self) -> grpc.Channel:
        """A channel to the backend itself, bypassing the routers."""
        ch = grpc.insecure_channel(f"127.0.0.1:{self.backend.port}", options=OPTIONS)
        self.channels.append(ch)
        return ch

    def stop(self) -> None:
        for ch in self.channels:
            ch.close()
        self.backend.stop()
        for site in self.sites:
            site.stop()


@pytest.fixture(scope="module", params=["two", "transit"])
def net(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    n = Net(tmp_path_factory.mktemp(f"grpc-{request.param}"), request.param)
    yield n
    n.stop()


@pytest.fixture
def ch(net: Net) -> grpc.Channel:
    return net.channel()


def rpc(ch: grpc.Channel, kind: str, method: str) -> Any:
    """A raw-bytes multicallable (no serializers: bytes in, bytes out)."""
    return getattr(ch, kind)(f"/{SERVICE}/{method}")


def stats(ch: grpc.Channel) -> tuple[int, int]:
    text = rpc(ch, "unary_unary", "Stats")(b"", timeout=10).decode()
    started, cancelled = (int(part.split("=")[1]) for part in text.split())
    return started, cancelled


def test_unary_with_metadata_and_trailers(ch: grpc.Channel) -> None:
    body = b"hello \x00\xff across sites"
    reply, call = rpc(ch, "unary_unary", "Unary").with_call(
        body, metadata=(("x-echo", "v-1"),), timeout=10)
    assert reply == body
    assert call.code() is grpc.StatusCode.OK
    initial = dict(call.initial_metadata())
    assert initial["x-served-by"] == "west"
    assert initial["x-echo"] == "v-1"
    assert initial["x-forwarded-for-seen"] == "127.0.0.1"  # added by east's listener
    trailing = dict(call.trailing_metadata())
    assert trailing["x-trailer"] == "t-v-1"
    assert trailing["x-bin-bin"] == bytes(range(256))


@pytest.mark.parametrize(("request_", "code", "details"), [
    (b"5 no such order: \xc3\xbc 42%", grpc.StatusCode.NOT_FOUND, "no such order: \u00fc 42%"),
    (b"9 the order is closed", grpc.StatusCode.FAILED_PRECONDITION, "the order is closed"),
    (b"raise", grpc.StatusCode.UNKNOWN, None),
])
def test_status_codes_and_details_arrive_intact(ch: grpc.Channel, request_: bytes,
                                                code: grpc.StatusCode,
                                                details: str | None) -> None:
    with pytest.raises(grpc.RpcError) as info:
        rpc(ch, "unary_unary", "Status")(request_, timeout=10)
    err: Any = info.value
    assert err.code() is code, err
    if details is not None:
        assert err.details() == details
        assert dict(err.trailing_metadata())["x-why"] == f"asked for {code.value[0]}"
    else:
        assert "the application failed" in err.details() or "Exception" in err.details()


def test_server_streaming_arrives_as_the_server_yields(ch: grpc.Channel) -> None:
    start = time.monotonic()
    arrived: list[tuple[bytes, float]] = []
    for message in rpc(ch, "unary_stream", "Ticks")(b"6 200", timeout=20):
        arrived.append((message, time.monotonic() - start))
    assert [m for m, _ in arrived] == [f"tick {i}".encode() for i in range(6)]
    times = [t for _, t in arrived]
    # Yielded 0.2 s apart over 1 s: the first came long before the last was yielded,
    # and they came spread out, not in one burst at the end.
    assert times[0] < 0.6, times
    assert times[-1] - times[0] >= 0.7, times
    assert all(b - a >= 0.08 for a, b in itertools.pairwise(times)), times


def test_client_streaming(ch: grpc.Channel) -> None:
    messages = [pattern(1000 * i + 1)[i:] for i in range(50)]
    digest = hashlib.sha256(b"".join(messages)).hexdigest()
    reply = rpc(ch, "stream_unary", "Collect")(iter(messages), timeout=20)
    assert reply == f"50 {digest}".encode()


def test_bidirectional_ping_pong_of_100(ch: grpc.Channel) -> None:
    # Each ping is sent only after the previous pong arrived: nothing may wait for the end.
    outbox: queue.Queue[bytes | None] = queue.Queue()

    def pings() -> Iterator[bytes]:
        while (item := outbox.get(timeout=20)) is not None:
            yield item

    outbox.put(b"ping 0")
    call = rpc(ch, "stream_stream", "PingPong")(pings(), timeout=30)
    got = 0
    for reply in call:
        assert reply == f"pong {got}".encode()
        got += 1
        outbox.put(f"ping {got}".encode() if got < 100 else None)
    assert got == 100
    assert call.code() is grpc.StatusCode.OK


def test_a_deadline_that_expires(net: Net, ch: grpc.Channel) -> None:
    _, cancelled = stats(ch)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        rpc(ch, "unary_unary", "Slow")(b"10", timeout=0.5)
    took = time.monotonic() - start
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert 0.4 <= took < 2.0, took
    # The deadline went along (grpc-timeout): the backend gave up on the call too.
    wait_for(lambda: stats(ch)[1] > cancelled, 5, "the backend to see the deadline")
    # The channel (and the route) still serve the next call.
    assert rpc(ch, "unary_unary", "Unary")(b"after", timeout=10) == b"after"


def test_a_cancelled_call_reaches_the_backend(net: Net, ch: grpc.Channel) -> None:
    direct = net.direct()  # watched from outside the VAN: our polls must not nudge it
    started, cancelled = stats(direct)
    future = rpc(ch, "unary_unary", "Slow").future(b"20")  # no deadline: only the cancel
    wait_for(lambda: stats(direct)[0] > started, 10, "the backend to start the slow call")
    future.cancel()
    wait_for(lambda: stats(direct)[1] > cancelled, 5, "the backend to see the cancel")


def test_large_messages_each_way(ch: grpc.Channel) -> None:
    up = pattern(5 * MiB)
    echoed = rpc(ch, "unary_unary", "Unary")(up, timeout=60)
    assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(up).hexdigest()
    assert rpc(ch, "unary_unary", "Sha")(up, timeout=60) == hashlib.sha256(up).hexdigest().encode()
    down = rpc(ch, "unary_unary", "Bytes")(str(6 * MiB).encode(), timeout=60)
    assert hashlib.sha256(down).hexdigest() == hashlib.sha256(pattern(6 * MiB)).hexdigest()


def test_many_concurrent_calls_on_one_channel(ch: grpc.Channel) -> None:
    unary = rpc(ch, "unary_unary", "Unary")
    futures = [unary.future(f"call {i}".encode(), timeout=30) for i in range(200)]
    assert [f.result() for f in futures] == [f"call {i}".encode() for i in range(200)]


def test_no_connector_gives_unavailable_saying_why(net: Net) -> None:
    with pytest.raises(grpc.RpcError) as info:
        rpc(net.channel("nowhere"), "unary_unary", "Unary")(b"x", timeout=10)
    err: Any = info.value
    assert err.code() is grpc.StatusCode.UNAVAILABLE, err
    assert "no site serves 'nowhere'" in err.details()


def test_grpc_to_an_http1_connector_is_unimplemented(net: Net) -> None:
    with pytest.raises(grpc.RpcError) as info:
        rpc(net.channel("grpc1"), "unary_unary", "Unary")(b"x", timeout=10)
    err: Any = info.value
    assert err.code() is grpc.StatusCode.UNIMPLEMENTED, err
    assert err.details() == "gRPC needs an http2 connector"


def test_the_backend_down_gives_unavailable_saying_why(net: Net) -> None:
    net.backend.stop()
    try:
        with pytest.raises(grpc.RpcError) as info:
            rpc(net.channel(), "unary_unary", "Unary")(b"x", timeout=10)
        err: Any = info.value
        assert err.code() is grpc.StatusCode.UNAVAILABLE, err
        # e.g. "no site serves 'grpc': west: site west cannot reach 'grpc' target
        # 127.0.0.1:P: Error connecting to ('127.0.0.1', P): Connection refused"
        why = err.details()
        assert why.startswith("no site serves 'grpc': west: "), why
        assert f"127.0.0.1:{net.backend.port}" in why and "refused" in why.lower(), why
    finally:
        net.backend.start()
    # Back up: served again (the connector's pool dials anew).
    ch = net.channel()
    wait_for(lambda: _ok(ch), 15, "gRPC served again after the backend came back")


def _ok(ch: grpc.Channel) -> bool:
    try:
        return bool(rpc(ch, "unary_unary", "Unary")(b"ok", timeout=2) == b"ok")
    except grpc.RpcError:
        return False
