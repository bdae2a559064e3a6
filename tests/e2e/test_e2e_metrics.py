"""Prometheus metrics from a running router."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from tests.support.sites import Site, free_port, link, site_env


def test_metrics_endpoint(tmp_path: Path) -> None:
    env = site_env(tmp_path)
    west = Site(tmp_path, "west", env).init()
    metrics = free_port()
    cfg = west.dir / "site.toml"
    cfg.write_text(cfg.read_text().replace("metrics_port = 0", f"metrics_port = {metrics}"))
    east = Site(tmp_path, "east", env).init()
    try:
        west.start()
        east.start()
        link(west, east, tmp_path)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert 'vanrouter_link_up{direction="in",link="in:east",peer_site="east"} 1.0' in text
        assert "vanrouter_flows_active 0.0" in text
        assert "vanrouter_routers_known 2.0" in text
    finally:
        east.stop()
        west.stop()
