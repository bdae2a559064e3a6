"""An internal error while serving a client resets and closes that client, leaks no fd,
is logged once, and leaves the router serving. A router runs in-process here, so the
error can be injected where no config value can reach any more."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from router.daemon.router import Router
from router.site.config import ConnectorConfig, ListenerConfig
from router.site.create import init_site
from tests.support.sites import free_port


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def recv_until_end(port: int) -> bytes | OSError:
    """What a client sees: the bytes before a clean end, or the error."""
    sock = trio.socket.socket()
    with sock, trio.fail_after(10):  # a client never closed would wait forever
        await sock.connect(("127.0.0.1", port))
        data = b""
        try:
            while chunk := await sock.recv(65536):
                data += chunk
        except OSError as exc:
            return exc
        return data


async def test_internal_error_resets_the_client_and_leaks_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    site = init_site(tmp_path / "west", "west", host="127.0.0.1", link_port=free_port(),
                     bind="127.0.0.1")
    port = free_port()
    backend = await trio.open_tcp_listeners(0, host="127.0.0.1")
    backend_port = backend[0].socket.getsockname()[1]
    config = replace(site.config(),
                     listeners=(ListenerConfig(key="db", port=port),),
                     connectors=(ConnectorConfig(key="db", host="127.0.0.1",
                                                 port=backend_port),))
    site.save_config(config)
    router = Router.from_site(site, config)
    calls = 0

    async def broken_connect(key: str) -> tuple[trio.abc.Stream, str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected bug")
        return await trio.open_tcp_stream("127.0.0.1", backend_port), "backend"

    monkeypatch.setattr(router.connectors, "connect_target", broken_connect)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        baseline = fd_count()
        caplog.set_level(logging.ERROR, logger="router")
        seen = await recv_until_end(port)
        assert isinstance(seen, ConnectionResetError), seen

        def errors() -> list[str]:
            return [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()]

        with trio.fail_after(5):
            while fd_count() > baseline or router.flows.active or not errors():
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert len(errors()) == 1, [r.getMessage() for r in caplog.records]
        # The router still serves: the next client reaches the backend.
        async with trio.open_nursery() as clients:
            clients.start_soon(recv_until_end, port)
            conn = await backend[0].accept()
            await conn.aclose()
        nursery.cancel_scope.cancel()
    for listener in backend:
        await listener.aclose()
