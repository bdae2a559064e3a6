"""The record ring (limit, TTL on an injected clock), what a record holds, the `$records`
wire format against a hostile peer, the [limits] fields and the text `sitectl flows`
prints."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgpack
import pytest

from router.flows.entry import FlowEntry
from router.flows.records import RecordRing, record_dict
from router.flows.recordwire import (
    ANSWER_MAX_BYTES,
    ANSWER_MAX_RECORDS,
    BadRecords,
    Query,
    check_record,
    decode_answer,
    encode_answer,
)
from router.flows.table import FlowTable
from router.site.config import load_config
from router.site.errors import ConfigError
from sitectl.flows_cmd import human_bytes, render_flow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ended(i: int, at: float) -> FlowEntry:
    return FlowEntry(id=i, key="db", role="listener", client="c", trace=(), start=at, end=at,
                     outcome="ok")


def test_ttl_expires_on_an_injected_clock() -> None:
    clock = Clock()
    ring = RecordRing(maxlen=100, ttl_s=60.0, clock=clock)
    for i in range(5):
        ring.append(ended(i, clock.now + i * 10))  # ended at 1000, 1010, ... 1040
    clock.now = 1065.0
    assert [e.id for e in ring] == [1, 2, 3, 4]  # 1000 is more than 60 s ago
    clock.now = 1200.0
    assert len(ring) == 0 and ring.recent(10) == []
    assert ring.dropped == 0  # expiry is not a drop


def test_past_the_limit_the_oldest_goes_and_is_counted_unless_it_expired() -> None:
    clock = Clock()
    ring = RecordRing(maxlen=3, ttl_s=60.0, clock=clock)
    for i in range(5):
        ring.append(ended(i, 1000.0 + i))
    assert [e.id for e in ring.recent(10)] == [4, 3, 2] and ring.dropped == 2
    ring.append(ended(5, 1070.0))  # the oldest (1002) had expired: not counted
    assert ring.dropped == 2
    off = RecordRing(maxlen=0)
    off.append(ended(1, 1.0))
    assert len(off) == 0 and off.dropped == 0


def test_listing_active_first_then_the_newest() -> None:
    table = FlowTable(site="a", router_id="ra")
    old = table.begin("db", "listener", client="x:1")
    table.end(old, "refused", "no site")
    other = table.begin("web", "listener")
    table.end(other, "ok")
    live = table.begin("db", "listener")
    assert [e.id for e in table.listed()] == [live.id, other.id, old.id]
    assert [e.id for e in table.listed(key="db")] == [live.id, old.id]
    assert [e.id for e in table.listed(active=True)] == [live.id]
    assert [e.id for e in table.listed(limit=1)] == [live.id]
    rec = record_dict(old, {"ra": "a"})
    assert rec["sites"] == ["a"] and rec["listener_site"] == "a"
    assert rec["outcome"] == "refused" and rec["reason"] == "no site"
    assert rec["connector_site"] is None and rec["server"] is None


def test_a_record_has_exactly_the_issue_fields() -> None:
    table = FlowTable(site="a", router_id="ra")
    e = table.begin("db", "listener", client="10.0.0.5:51234")
    e.trace, e.server, e.connector_site = ("ra", "rb", "rc"), "127.0.0.1:5432", "c"
    e.bytes_out, e.bytes_in, e.ttfb_s = 1_200_000, 3400, 0.012
    table.end(e, "ok")
    rec = record_dict(e, {"ra": "east", "rb": "hub", "rc": "west"})
    assert set(rec) == {"id", "protocol", "routing_key", "role", "listener_site",
                        "connector_site", "sites", "client", "server", "start", "end",
                        "bytes_c2s", "bytes_s2c", "ttfb_s", "outcome", "reason"}
    assert check_record(rec) == rec
    assert render_flow(rec) == ("db  east>hub>west  10.0.0.5:51234 -> 127.0.0.1:5432  "
                                "1.2 MB/3.4 KB  ttfb 12 ms  ok")
    h = table.begin("api", "listener", client="10.0.0.5:1")
    h.protocol = "http2"
    table.note_request(h, method="GET", path="/orders/7?x=1")
    table.note_response(h, status=503, site=None, by_router=True, ttfb_s=0.0021)
    table.end(h, "error", "no site serves 'api'")
    http = record_dict(h, {})
    assert {"method", "url_path", "status", "attempts"} <= set(http)
    assert check_record(http) == http
    assert render_flow(http).endswith("GET /orders/7 503  0 B/0 B  ttfb 2.1 ms  "
                                      "error: no site serves 'api'")


def test_render_keeps_escapes_off_the_terminal() -> None:
    rec = record_dict(ended(1, 5.0), {})
    rec["routing_key"], rec["outcome"], rec["reason"] = "db\x1b[2J", "reset", "bad\nline"
    line = render_flow(rec)
    assert "\x1b" not in line and "\n" not in line and "\\x1b[2J" in line


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 999, 1000, 3400, 1_200_000, 5 * 10**15)] == [
        "0 B", "999 B", "1.0 KB", "3.4 KB", "1.2 MB", "5000.0 TB"]


def good() -> dict[str, Any]:
    return record_dict(ended(1, 5.0), {})


@pytest.mark.parametrize(("change", "why"), [
    ({"id": -1}, "id"), ({"id": True}, "id"), ({"protocol": "ftp"}, "protocol"),
    ({"sites": ["a"] * 66}, "sites"), ({"sites": "a>b"}, "sites"), ({"sites": [1]}, "sites"),
    ({"routing_key": "k" * 257}, "routing_key"), ({"client": None}, "client"),
    ({"start": math.inf}, "start"), ({"start": "now"}, "start"), ({"end": -1.0}, "end"),
    ({"bytes_c2s": 2**64 - 1}, "bytes_c2s"), ({"ttfb_s": math.nan}, "ttfb_s"),
    ({"outcome": "great"}, "outcome"), ({"reason": "x" * 1025}, "reason"),
    ({"role": "both"}, "role"), ({"protocol": "http1", "method": "GET"}, "lacks url_path"),
])
def test_a_bad_record_from_a_peer_is_refused(change: dict[str, Any], why: str) -> None:
    rec = good() | change
    with pytest.raises(BadRecords, match=why):
        check_record(rec)
    with pytest.raises(BadRecords, match=r"records\[0\]"):
        decode_answer(msgpack.packb({"site": "b", "truncated": False, "records": [rec]}))


def test_check_record_keeps_only_the_known_fields() -> None:
    assert check_record(good() | {"extra": "x" * 10_000}) == good()


@pytest.mark.parametrize("body", [
    b"\xc1", msgpack.packb([]), msgpack.packb({"site": "b", "records": {}, "truncated": False}),
    msgpack.packb({"site": 5, "records": [], "truncated": False}),
    msgpack.packb({"site": "b", "records": [], "truncated": 0}),
    msgpack.packb({"site": "b", "records": [None] * (ANSWER_MAX_RECORDS + 1),
                   "truncated": False}),
    b"\x91" * 5000,
])
def test_a_malformed_answer_is_refused(body: bytes) -> None:
    with pytest.raises(BadRecords):
        decode_answer(body)


def test_answers_are_capped_in_count_and_bytes() -> None:
    many = [good() for _ in range(3000)]
    answer = decode_answer(encode_answer("b", iter(many), ANSWER_MAX_RECORDS))
    assert len(answer.records) == ANSWER_MAX_RECORDS and not answer.truncated
    assert answer.site == "b" and answer.records[0] == good()
    big = [good() | {"reason": "r" * 1000} for _ in range(ANSWER_MAX_RECORDS)]
    data = encode_answer("b", iter(big), ANSWER_MAX_RECORDS)
    assert len(data) <= ANSWER_MAX_BYTES + 64
    answer = decode_answer(data)
    assert answer.truncated and 0 < len(answer.records) < ANSWER_MAX_RECORDS


def test_query_round_trip_and_defaults() -> None:
    q = Query(key="db", active=True, limit=5)
    assert Query.from_wire(q.to_wire()) == q
    assert Query.from_wire(msgpack.packb({})) == Query()
    assert Query.from_wire(msgpack.packb({"limit": 2, "newer": [1]})).limit == 2
    with pytest.raises(BadRecords, match="more than 4096"):
        Query.from_wire(msgpack.packb({"key": "k" * 5000}))


def config(tmp_path: Path, limits: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(f"[site]\nname = 'w'\nlink_port = 1\n[limits]\n{limits}\n")
    return path


def test_limits_fields(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, "flow_records_max = 0\nflow_records_ttl_s = 60"))
    assert cfg.limits.flow_records_max == 0 and cfg.limits.flow_records_ttl_s == 60.0
    default = load_config(config(tmp_path, ""))
    assert default.limits.flow_records_max == 10_000
    assert default.limits.flow_records_ttl_s == 900.0
    for bad, why in (("flow_records_max = -1", "between 0 and 1000000"),
                     ("flow_records_max = 2000000", "between 0 and 1000000"),
                     ("flow_records_ttl_s = 0", "must be positive"),
                     ("flow_records_max = 1.5", "must be int")):
        with pytest.raises(ConfigError, match=why):
            load_config(config(tmp_path, bad))
