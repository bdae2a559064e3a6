"""How long a /metrics scrape takes: an in-process router (not running) whose flow table
holds 10,000 ended records over 100 routing keys (half TCP, half HTTP requests) and
1,000 open flows; the median of the collector plus the text exposition, over 50 scrapes.

    .venv/bin/python bench/scrape.py [--keys 100] [--records 10000] [--active 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import trio
from prometheus_client import generate_latest

from router.daemon.identity import Identity
from router.daemon.metrics import make_registry
from router.daemon.router import Router
from router.site.config import Limits, SiteConfig


async def main(keys: int, records: int, active: int, runs: int) -> None:
    router = Router(Identity.generate("bench", Limits()),
                    SiteConfig(name="bench", host="bench", link_port=1))
    table = router.flows
    for i in range(records):
        key = f"key-{i % keys}"
        e = table.begin(key, "listener" if i % 3 else "connector", client="10.0.0.1:1")
        e.bytes_in, e.bytes_out = 1000, 200
        if i % keys < keys // 2:  # an HTTP key
            table.note_request(e, method="GET", path="/x")
            table.note_response(e, status=200 if i % 10 else 503, site=f"site-{i % 7}",
                                ttfb_s=0.001 * (i % 50))
        table.end(e, "ok" if i % 20 else "reset")
    for i in range(active):
        table.begin(f"key-{i % keys}", "listener", client="10.0.0.1:2")
    registry = make_registry(router)
    took = []
    size = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        size = len(generate_latest(registry))
        took.append(time.perf_counter() - t0)
    print(f"scrape of {records} records over {keys} keys with {active} open flows: "
          f"median {statistics.median(took) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms, "
          f"{size / 1024:.0f} KiB of text")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--keys", type=int, default=100)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--active", type=int, default=1000)
    p.add_argument("--runs", type=int, default=50)
    a = p.parse_args()
    trio.run(main, a.keys, a.records, a.active, a.runs)
