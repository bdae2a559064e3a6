"""admin_port and admin_bind in site.toml: the old name metrics_port, the URL a local
client uses, and the ports a listener may not take."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.site.config import (
    ListenerConfig,
    SiteConfig,
    admin_url,
    dump_config,
    parse_config,
    port_clash,
)
from router.site.errors import ConfigError

OLD = """\
[site]
name = "west"
link_port = 55671
metrics_port = {port}
"""


def test_metrics_port_is_read_as_admin_port_and_saved_under_its_new_name() -> None:
    cfg = parse_config(Path("site.toml"), OLD.format(port=9100))
    assert (cfg.admin_port, cfg.admin_bind, cfg.renamed) == (9100, "127.0.0.1",
                                                            ("metrics_port",))
    text = dump_config(cfg)
    assert "admin_port = 9100\n" in text and "metrics_port" not in text
    again = parse_config(Path("site.toml"), text)
    assert (again.admin_port, again.renamed) == (9100, ())


def test_a_file_with_neither_has_no_admin_port() -> None:
    for text in (OLD.format(port=0), OLD.replace("metrics_port = {port}\n", "")):
        cfg = parse_config(Path("site.toml"), text)
        assert (cfg.admin_port, cfg.renamed) == (0, ())
        assert admin_url(cfg) is None


def test_metrics_port_zero_beside_admin_port_is_no_clash() -> None:
    cfg = parse_config(Path("site.toml"), OLD.format(port=0) + "admin_port = 9200\n")
    assert (cfg.admin_port, cfg.renamed) == (9200, ())
    with pytest.raises(ConfigError, match="old name of admin_port"):
        parse_config(Path("site.toml"), OLD.format(port=9100) + "admin_port = 9200\n")


@pytest.mark.parametrize(("bind", "url"), [
    ("127.0.0.1", "http://127.0.0.1:9100/"), ("0.0.0.0", "http://127.0.0.1:9100/"),
    ("::", "http://[::1]:9100/"), ("::1", "http://[::1]:9100/"),
    ("10.1.2.3", "http://10.1.2.3:9100/"),
])
def test_admin_url_reaches_a_wildcard_bind_through_loopback(bind: str, url: str) -> None:
    cfg = SiteConfig(name="west", link_port=55671, admin_port=9100, admin_bind=bind)
    assert admin_url(cfg) == url


def test_a_listener_may_not_take_the_admin_port_where_the_binds_overlap() -> None:
    cfg = SiteConfig(name="west", link_port=55671, admin_port=9100)
    on = ListenerConfig(key="x", port=9100)
    assert port_clash(cfg, on, ()) == ("port", "9100 is the site's admin_port")
    assert port_clash(cfg, ListenerConfig(key="x", host="127.0.0.2", port=9100), ()) is None
    wild = SiteConfig(name="west", link_port=55671, admin_port=9100, admin_bind="0.0.0.0")
    assert port_clash(wild, ListenerConfig(key="x", host="127.0.0.2", port=9100), ())
    off = SiteConfig(name="west", link_port=55671)
    assert port_clash(off, ListenerConfig(key="x", port=9100), ()) is None
