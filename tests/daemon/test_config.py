"""The site config: round trip, and every bad value named by file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.site.config import (
    ConnectorConfig,
    Limits,
    ListenerConfig,
    SiteConfig,
    dump_config,
    load_config,
    parse_config,
    save_config,
)
from router.site.errors import ConfigError

GOOD = """
[site]
name = "west"
link_port = 55671

[[listener]]
key = "db"
port = 15432

[[connector]]
key = "db"
host = "127.0.0.1"
port = 5432
weight = 3
"""


def test_round_trip(tmp_path: Path) -> None:
    cfg = SiteConfig(
        name="west", host="10.0.0.1", link_port=55671,
        limits=Limits(flow_window_bytes=65536, dead_after_s=2.5),
        listeners=(ListenerConfig(key="db", port=15432, strategy="priority"),),
        connectors=(ConnectorConfig(key="db", host="127.0.0.1", port=5432, priority=2),),
    )
    path = tmp_path / "site.toml"
    save_config(path, cfg)
    assert load_config(path) == cfg
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind


def test_defaults() -> None:
    cfg = parse_config(Path("s.toml"), GOOD)
    assert cfg.listeners[0].host == "127.0.0.1" and cfg.listeners[0].strategy == "balanced"
    assert cfg.connectors[0].weight == 3 and cfg.limits == Limits()
    assert "[site]" in dump_config(cfg)


@pytest.mark.parametrize(("text", "message"), [
    ("[site]\nname = 'west'\n", "s.toml: [site] link_port: is required"),
    ("[site]\nname = 'west'\nlink_port = 'x'\n", "s.toml:3: [site] link_port: must be int"),
    ("[site]\nname = 'west'\nlink_port = 99999\n", "s.toml:3: [site] link_port: 99999 is not"),
    ("[site]\nname = 'we st'\nlink_port = 1\n", "s.toml:2: [site] name: 'we st' is not a valid"),
    ("[site]\nname = 'w'\nlink_port = 1\ncolour = 1\n", "s.toml:4: [site] colour: unknown field"),
    ("[site]\nname = 'w'\nlink_port = 1\n[limits]\ndead_after_s = -1\n",
     "s.toml:5: [limits] dead_after_s: must be positive"),
    ("[site]\nname = 'w'\nlink_port = 1\n[limits]\ndead_after_s = 0.5\n",
     "[limits] dead_after_s: must be greater than keepalive_interval_s"),
    ("[site]\nname = 'w'\nlink_port = 1\n[[listener]]\nkey = 'db'\nport = 1\n"
     "strategy = 'random'\n", "s.toml:7: [listener] strategy: 'random' is not one of"),
    ("[site]\nname = 'w'\nlink_port = 1\n[[connector]]\nkey = 'db'\nport = 1\n",
     "[connector] host: is required"),
    ("[site]\nname = 'w'\nlink_port = 1\n[limits]\nrouting_max_age_s = 40\n",
     "[limits] routing_max_age_s: must be more than twice routing_refresh_s"),
    ("[site\n", "s.toml: not valid TOML"),
    ("[sight]\n", "unknown section [sight]"),
])
def test_bad_config_is_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(Path("s.toml"), text)
    assert message in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")
