"""`sitectl top`'s arithmetic: the router counts each ended flow once however often it is
asked and whatever the ring dropped meanwhile, and sitectl's rates survive counters that
start again (a reconnected link)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

from router.daemon.top import TopCounter, percentile
from router.flows.table import FlowTable
from sitectl.top import frame_data, render_frame


def view(table: FlowTable) -> Any:
    record = SimpleNamespace(router_id="rwest", site="west")
    return SimpleNamespace(
        config=SimpleNamespace(name="east"), flows=table,
        routing=SimpleNamespace(records=lambda: [record]),
        links=SimpleNamespace(dials={}, accepted=[]))


def flow(table: FlowTable, outcome: str = "ok", moved: int = 100) -> None:
    entry = table.begin("db", "listener")
    table.serving(entry, "rwest")
    entry.bytes_out, entry.bytes_in = moved, 2 * moved
    entry.ttfb_s = 0.01 * moved / 100
    table.end(entry, outcome)  # type: ignore[arg-type]


def rows(reply: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["key"], r["role"], r["site"]): r for r in reply["rows"]}


async def test_each_record_is_counted_once(autojump_clock: trio.testing.MockClock) -> None:
    table = FlowTable(records_max=3)
    top = TopCounter()
    flow(table)
    flow(table, "reset")
    first = rows(top.reply(view(table)))["db", "listener", "west"]
    assert (first["flows"], first["errors"], first["bytes_c2s"], first["bytes_s2c"]) == \
        (2, 1, 200, 400)
    assert first["recent_flows"] == 2 and first["recent_errors"] == 1
    again = rows(top.reply(view(table)))["db", "listener", "west"]
    assert again["flows"] == 2
    # Five more while nobody asks: the ring keeps 3, the newest counted went with the rest.
    for _ in range(5):
        flow(table)
    later = rows(top.reply(view(table)))["db", "listener", "west"]
    assert later["flows"] == 2 + 3
    # An active flow counts as started, with the bytes it moved so far.
    entry = table.begin("db", "listener")
    entry.bytes_out = 7
    now = rows(top.reply(view(table)))
    assert now["db", "listener", "none"]["active"] == 1  # no site chosen yet
    assert now["db", "listener", "none"]["bytes_c2s"] == 7
    table.end(entry, "refused")


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.95) == 95.0
    assert percentile([3.0], 0.95) == 3.0 and percentile([], 0.5) is None


def sample(at: float, flows: int, link_bytes: int, up_s: float) -> tuple[float, dict[str, Any]]:
    return at, {"site": "east", "recent_s": 60.0, "rows": [
        {"key": "db", "role": "listener", "site": "west", "flows": flows, "errors": 0,
         "bytes_c2s": 10 * flows, "bytes_s2c": 0, "active": 1, "recent_flows": 4,
         "recent_errors": 1, "ttfb_p50_ms": 1.5, "ttfb_p95_ms": 250.0}],
        "links": [{"name": "west", "peer_site": "west", "direction": "out", "state": "up",
                   "rtt_ms": 0.5, "bytes_in": link_bytes, "bytes_out": 0, "up_s": up_s}]}


def test_rates_between_two_samples_and_counters_that_start_again() -> None:
    data = frame_data(sample(10.0, 100, 5000, 50.0), sample(12.0, 120, 9000, 52.0))
    [row] = data["rows"]
    assert row["flows_per_s"] == 10.0 and row["c2s_bytes_per_s"] == 100.0
    assert row["error_share"] == 0.25
    [link] = data["links"]
    assert link["in_bytes_per_s"] == 2000.0
    # The link came up again 0.5 s ago: its 600 bytes moved in that half second.
    data = frame_data(sample(12.0, 120, 9000, 52.0), sample(14.0, 100, 600, 0.5))
    assert data["links"][0]["in_bytes_per_s"] == 1200.0
    assert data["rows"][0]["flows_per_s"] == 50.0  # the counter went back: from zero
    text = render_frame(data)
    assert "db" in text and "1.2 KB/s" in text and "250 ms" in text and "25.0%" in text
