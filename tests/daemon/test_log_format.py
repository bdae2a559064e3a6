"""`sitectl run --log-format json`: a real router writes one JSON object per line, with the
fields its log calls pass (link, peer_site, routing_key, flow_id); the default stays
readable text."""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path

from router.daemon.logformat import JsonFormatter
from tests.support.sites import Site, free_port, link, site_env, start_sites, wait_for

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class JsonSite(Site):
    def router_argv(self) -> list[str]:
        return [*super().router_argv(), "--log-format", "json"]


def test_a_router_logs_json_lines_with_their_fields(tmp_path: Path) -> None:
    env = site_env(tmp_path)
    west = JsonSite(tmp_path, "west", env, runner="sitectl").init()
    east = Site(tmp_path, "east", env, runner="sitectl").init()
    start_sites(west, east)
    try:
        link(west, east, tmp_path)
        port = free_port()
        west.sitectl("listener", "create", "nowhere", str(port))
        assert _client_refused(port)
        wait_for(lambda: "closing client" in west.log_path.read_text(),
                 what="the refusal logged")
    finally:
        west.stop()
        east.stop()
    lines = [json.loads(line) for line in west.log_path.read_text().splitlines()]
    assert lines, "no log"
    for line in lines:
        assert TIME.match(line["time"]), line
        assert line["site"] == "west" and line["level"] in ("INFO", "WARNING"), line
        assert line["logger"].startswith("router.") and line["message"], line
    messages = {line["message"]: line for line in lines}
    [up] = [line for m, line in messages.items() if m.startswith("link in:east up")]
    assert up["link"] == "in:east" and up["peer_site"] == "east"
    [refused] = [line for m, line in messages.items() if "closing client" in m]
    assert refused["routing_key"] == "nowhere" and isinstance(refused["flow_id"], int)
    assert refused["level"] == "WARNING" and refused["logger"] == "router.adaptors.tcp"
    assert any(m == "site west stopped" for m in messages)
    # The default is text, as before.
    text = east.log_path.read_text().splitlines()
    assert text and all(re.match(r"^\d{4}-\d\d-\d\d \S+ [A-Z]+ \[east\] router\.", t)
                        for t in text), text[:3]


def _client_refused(port: int) -> bool:
    """Connect to a listener no site serves: the router closes (resets) the client."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            return sock.recv(10) == b""
    except ConnectionResetError:
        return True


def test_a_peers_text_cannot_split_or_forge_a_json_line() -> None:
    reason = 'bye\n{"level": "ERROR"}\x1b[2J'
    record = logging.LogRecord("router.net.link", logging.INFO, "x.py", 1,
                               "link %s ended: %s", ("in:evil", reason), None)
    record.__dict__.update({"link": "in:evil", "peer_site": "e\u202evil", "obj": object()})
    line = JsonFormatter("west").format(record)
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    parsed = json.loads(line)
    assert parsed["message"] == 'link in:evil ended: bye\n{"level": "ERROR"}\x1b[2J'
    assert parsed["level"] == "INFO" and parsed["peer_site"] == "e\u202evil"
    assert parsed["obj"].startswith("<object object")
