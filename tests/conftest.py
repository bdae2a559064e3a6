from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from certs import CertificateAuthority
from tests.support.sites import Site, link, site_env, start_sites

_ids = itertools.count(1)

# The machine is shared and has 2 cores: data generation may be slow at times, which
# says nothing about the code under test. Per-test settings still apply on top.
settings.register_profile("shared-machine", suppress_health_check=[HealthCheck.too_slow],
                          deadline=None)
settings.load_profile("shared-machine")


class Pair:
    """Two running routers, east linked to west (east dialled with west's token)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = site_env(workdir)
        self.west = Site(workdir, "west", self.env).init()
        self.east = Site(workdir, "east", self.env).init()
        start_sites(self.west, self.east)
        link(self.west, self.east, workdir)

    def key(self, prefix: str) -> str:
        return f"{prefix}-{next(_ids)}"

    def expose(self, key: str, port: int, listen_port: int) -> None:
        """A connector on west for 127.0.0.1:port, a listener on east; wait until usable."""
        from tests.support.sites import wait_for

        self.west.sitectl("connector", "create", key, f"127.0.0.1:{port}")
        self.east.sitectl("listener", "create", key, str(listen_port))
        wait_for(lambda: self.east.key_reachable(key), what=f"key {key} reachable from east")

    def stop(self) -> None:
        for site in (self.east, self.west):
            site.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    p = Pair(tmp_path_factory.mktemp("pair"))
    yield p
    p.stop()


@pytest.fixture
def fresh_pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    """A site CA for certificate tests."""
    return CertificateAuthority.generate("west")


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    """A foreign CA: nothing it signs may be trusted by `ca`'s contexts."""
    return CertificateAuthority.generate("mallory")
