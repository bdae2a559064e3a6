"""Text a peer sends (names, keys, router ids, addresses, reasons) reaches logs, other
routers and `sitectl status`: an ident with a control, format or space character is refused
where it is decoded, and a reason is made printable there."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from router.protocol import GoAway, Open, ProtocolError, Refuse, Reset, printable
from router.routing import MalformedMessage, RouterRecord
from sitectl.render import render_network, render_status

HOSTILE = ["\x1b[2J", "a\nb", "a b", "a\tb", "bidi\u202eevil", "bell\x07", "nul\x00", "del\x7f"]
OPEN = {"routing_key": "db", "origin_site": "east", "origin_router": "r1", "dest_router": "r2",
        "client_addr": "127.0.0.1:5", "trace": ["r1"], "window": 1024}


@pytest.mark.parametrize("field", ["routing_key", "origin_site", "origin_router",
                                   "dest_router", "client_addr", "trace"])
@pytest.mark.parametrize("text", HOSTILE)
def test_open_refuses_idents_with_controls(field: str, text: str) -> None:
    doc: dict[str, Any] = dict(OPEN, **{field: [text] if field == "trace" else text})
    with pytest.raises(ProtocolError, match="has a control, format or space character"):
        Open.from_wire(msgpack.packb(doc))


def test_honest_open_still_decodes() -> None:
    assert Open.from_wire(msgpack.packb(OPEN)).routing_key == "db"
    assert Open.from_wire(msgpack.packb(dict(OPEN, origin_site="", client_addr="[::1]:80")))


@pytest.mark.parametrize("kind", [Refuse, Reset, GoAway])
def test_reasons_are_made_printable(kind: type[Refuse | Reset | GoAway]) -> None:
    hostile = "\x1b]0;owned\x07\nFORGED \u202e ok"
    message = kind.from_wire(msgpack.packb({"code": 2, "reason": hostile}))
    assert message.reason == r"\x1b]0;owned\x07\nFORGED \u202e ok"
    assert message.reason.isprintable()
    long = kind.from_wire(msgpack.packb({"code": 2, "reason": "\x1b" * 1024}))
    assert len(long.reason) <= 1024 and long.reason.isprintable()


def test_printable_leaves_plain_text_alone() -> None:
    assert printable("connection refused: 127.0.0.1:5 (é)") == "connection refused: 127.0.0.1:5 (é)"


def record_doc(**fields: Any) -> bytes:
    doc = {"router_id": "rabc", "site": "east", "links": [], "keys": [], "listens": []}
    doc.update(fields)
    return msgpack.packb([doc["router_id"], doc["site"], 1, doc["links"], doc["keys"],
                          doc["listens"], b"k", b"s"], use_bin_type=True)


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("field", ["router_id", "site", "links", "keys", "listens"])
def test_records_refuse_names_with_controls(field: str, text: str) -> None:
    value: Any = {"links": [[text, 1]], "keys": [[text, 0, 1]], "listens": [text]}.get(
        field, text)
    with pytest.raises(MalformedMessage, match="has a control, format or space character"):
        RouterRecord.from_wire(record_doc(**{field: value}))


def test_render_escapes_whatever_it_is_given() -> None:
    """The last line of defence: the status comes from the router, which may be older."""
    evil = "\x1b[2J\nFORGED"
    network = {"sites": [{"site": evil, "reachable": True, "cost": 1,
                          "links": [{"peer": evil, "cost": 1}]}],
               "keys": {evil: {"servers": [{"site": evil, "priority": 0, "weight": 1}],
                               "listeners": [evil], "path": [evil]}}}
    status = {"site": "west", "router_id": "r1", "pid": 1, "uptime_s": 1.0,
              "link_endpoint": "h:1",
              "links": [{"name": "x", "peer_site": evil, "state": "down", "error": evil}],
              "listeners": [{"key": evil, "host": "h", "port": 1, "strategy": "balanced",
                             "reachable": False, "error": evil}],
              "connectors": [{"key": evil, "host": evil, "port": 1, "priority": 0,
                              "weight": 1}],
              "keys": {evil: {"reachable": False, "served_by": [evil]}},
              "flows": {"active": 0, "opened": 0, "refused": 0}}
    for text in (render_network(network), render_status(status)):
        assert "\x1b" not in text
        assert not any(line.startswith("FORGED") for line in text.splitlines())
