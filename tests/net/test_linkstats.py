"""Per-link samples for metrics: bytes kept across reconnects, up/down for dialled
links, and an accepted link that is gone keeps its counters but reports no state."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from router.net.linkstats import LinkTotals, link_samples


def live(name: str, peer: str, bytes_in: int, bytes_out: int, rtt: float | None) -> Any:
    return SimpleNamespace(name=name, peer_site=peer, bytes_in=bytes_in,
                           bytes_out=bytes_out, rtt=rtt)


def test_samples_add_live_links_to_the_totals_of_ended_ones() -> None:
    totals = {("to-hub", "hub"): LinkTotals(ups=3, bytes_in=100, bytes_out=50),
              ("in:east", "east"): LinkTotals(ups=1, bytes_in=7, bytes_out=9),
              ("in:west", "west"): LinkTotals(ups=2, bytes_in=1, bytes_out=2)}
    samples = {s.link: s for s in link_samples(
        totals, [live("to-hub", "hub", 10, 5, 0.002), live("in:west", "west", 3, 4, None)],
        [("to-hub", "hub"), ("to-far", "far")])}
    hub = samples["to-hub"]
    assert (hub.up, hub.rtt, hub.bytes_in, hub.bytes_out, hub.reconnects) == (
        True, 0.002, 110, 55, 2)
    far = samples["to-far"]  # dialled, never up
    assert (far.up, far.rtt, far.bytes_in, far.reconnects) == (False, None, 0, 0)
    gone = samples["in:east"]  # accepted, ended: counters only
    assert (gone.up, gone.bytes_in, gone.bytes_out) == (None, 7, 9)
    assert samples["in:west"].up is True and samples["in:west"].reconnects == 1
