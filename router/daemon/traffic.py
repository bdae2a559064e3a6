"""This router's load for its traffic summary: rates from two samples of its counters.

Reads what is counted anyway (each link's bytes and RTT, the flow table's per-key flow
counters) once per summary interval; nothing on the data path. Active flows per key are
counted by walking the active entries, once per interval. Each link is sent a PING per
interval, so that a busy link (which keepalive never pings) has an RTT too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from router.flows.table import FlowTable
from router.net.link import Link
from router.net.links import LinkTable
from router.routing.summary import KeyLoad, LinkLoad

ERROR_OUTCOMES = frozenset({"refused", "reset", "error"})

_Role = tuple[str, str]  # (routing key, role)


@dataclass(slots=True)
class _Sample:
    at: float
    links: dict[Link, tuple[int, int]] = field(default_factory=dict)  # bytes in, out
    flows: Counter[_Role] = field(default_factory=Counter)
    errors: Counter[_Role] = field(default_factory=Counter)


class TrafficMeter:
    def __init__(self, links: LinkTable, flows: FlowTable, now: float) -> None:
        self._links = links
        self._flows = flows
        self._last = self._sample(now)

    def measure(self, now: float) -> tuple[list[LinkLoad], list[KeyLoad]]:
        """Per neighbour and per (key, role), the rates since the last call."""
        sample = self._sample(now)
        last, self._last = self._last, sample
        dt = max(sample.at - last.at, 1e-3)
        links: list[LinkLoad] = []
        for peer_id, peer_links in self._links.by_peer.items():
            moved_in = moved_out = 0
            for link in peer_links:
                # A link that came up since the last sample counts from zero.
                was_in, was_out = last.links.get(link, (0, 0))
                now_in, now_out = sample.links[link]
                moved_in += max(0, now_in - was_in)
                moved_out += max(0, now_out - was_out)
            rtts = [link.rtt for link in peer_links if link.rtt is not None]
            for link in peer_links:
                link.probe_rtt()  # for the next summary
            links.append(LinkLoad(peer=peer_id, rtt_s=round(min(rtts), 6) if rtts else None,
                                  in_bytes_per_s=round(moved_in / dt),
                                  out_bytes_per_s=round(moved_out / dt)))
        active: Counter[_Role] = Counter((e.key, e.role) for e in self._flows.entries())
        keys: list[KeyLoad] = []
        for role in sample.flows.keys() | active.keys():
            flows = max(0, sample.flows[role] - last.flows[role])
            errors = max(0, sample.errors[role] - last.errors[role])
            if flows or errors or active[role]:
                keys.append(KeyLoad(key=role[0], role=role[1],
                                    flows_per_s=round(flows / dt, 3),
                                    errors_per_s=round(errors / dt, 3), active=active[role]))
        return links, keys

    def _sample(self, now: float) -> _Sample:
        sample = _Sample(at=now)
        for peer_links in self._links.by_peer.values():
            for link in peer_links:
                sample.links[link] = (link.bytes_in, link.bytes_out)
        stats = self._flows.stats
        for (key, role, outcome), n in stats.flows.items():
            sample.flows[key, role] += n
            if outcome in ERROR_OUTCOMES:
                sample.errors[key, role] += n
        # An HTTP request that got a 5xx (or one we generated) ended its flow "ok": for
        # HTTP keys the listener's errors are the requests' (records.is_error).
        for key, http in stats.http.items():
            sample.errors[key, "listener"] = http.errors
        return sample
