"""Rates for the console: the difference of two samples of counters kept anyway.

Each snapshot takes one sample (per link its bytes, per routing key and role its flow
counters and a copy of its TTFB histogram) and compares it with the oldest one it
keeps of the last RATE_WINDOW_S, so the numbers are averages over a few seconds and
cost nothing while no console is open. Only the keys the console shows are sampled
(at most MAX_KEYS), so memory stays bounded whatever the number of keys. Pure: the
clock is a parameter.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from router.flows.counters import OUTCOMES, Histogram, KeyStats, KeyTotals
from router.flows.entry import Role

RATE_WINDOW_S = 5.0
MIN_SPAN_S = 0.2  # a shorter span gives no rate (it would be mostly noise)
MAX_SPAN_S = 60.0  # ... and a longer one neither (it would say little of now)
MAX_SAMPLES = 8  # a window's worth at one snapshot a second, and some to spare
FAILED = tuple(o for o in OUTCOMES if o != "ok")

LinkId = tuple[str, str]  # (link name, peer site)
RoleId = tuple[str, Role]  # (routing key, role)


@dataclass(slots=True)
class KeySample:
    opened: int
    closed: int
    failed: int  # refused, reset or error
    c2s: int
    s2c: int
    ttfb: Histogram
    requests: int = 0  # HTTP requests (listener role), and those that failed
    request_errors: int = 0


@dataclass(slots=True)
class Sample:
    at: float
    links: dict[LinkId, tuple[int, int]] = field(default_factory=dict)  # bytes in, out
    keys: dict[RoleId, KeySample] = field(default_factory=dict)


def key_sample(totals: KeyTotals, http: KeyStats | None) -> KeySample:
    closed = sum(totals.closed.values())
    return KeySample(opened=totals.opened, closed=closed,
                     failed=sum(totals.closed.get(o, 0) for o in FAILED),
                     c2s=totals.bytes_c2s, s2c=totals.bytes_s2c, ttfb=totals.ttfb.copy(),
                     requests=0 if http is None else http.requests,
                     request_errors=0 if http is None else http.errors)


def _rate(now: int, then: int, span: float) -> float:
    # Counters of a link that came up again start from zero: no negative rates.
    return round(max(0, now - then) / span, 3)


def _share(errors: int, total: int) -> float | None:
    return round(errors / total, 4) if total > 0 else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class Rates:
    """The samples of the last RATE_WINDOW_S, and what they say."""

    def __init__(self) -> None:
        self._samples: deque[Sample] = deque(maxlen=MAX_SAMPLES)

    def take(self, sample: Sample) -> Sample | None:
        """Keep `sample`; the one to compare it with (None: no rates yet). That is the
        oldest within RATE_WINDOW_S, or the newest before it (after a pause, when no
        console asked, a rate over the pause is better than none), if not too old."""
        samples = self._samples
        while len(samples) > 1 and sample.at - samples[1].at >= RATE_WINDOW_S:
            samples.popleft()
        base = samples[0] if samples else None
        samples.append(sample)
        if base is None or not MIN_SPAN_S <= sample.at - base.at <= MAX_SPAN_S:
            return None
        return base

    @staticmethod
    def link(now: Sample, base: Sample | None, link: LinkId) -> dict[str, float | None]:
        moved = now.links.get(link)
        then = None if base is None else base.links.get(link, (0, 0))
        if moved is None or then is None or base is None:
            return {"in_bytes_per_s": None, "out_bytes_per_s": None}
        span = now.at - base.at
        return {"in_bytes_per_s": _rate(moved[0], then[0], span),
                "out_bytes_per_s": _rate(moved[1], then[1], span)}

    @staticmethod
    def key(now: Sample, base: Sample | None, role: RoleId) -> dict[str, float | None]:
        """Flows/s, bytes/s each way, TTFB p95 and error share over the window, and
        the TTFB p95 and error share since the start (for a key quiet of late)."""
        cur = now.keys[role]
        total_share = (_share(cur.request_errors, cur.requests) if cur.requests
                       else _share(cur.failed, cur.closed))
        out: dict[str, float | None] = {
            "flows_per_s": None, "bytes_c2s_per_s": None, "bytes_s2c_per_s": None,
            "ttfb_p95_ms": None, "error_share": None,
            "ttfb_p95_ms_total": _ms(cur.ttfb.quantile(0.95)),
            "error_share_total": total_share}
        prev = None if base is None else base.keys.get(role)
        if base is None:
            return out
        if prev is None:  # a key new in the window: it had nothing before
            prev = KeySample(0, 0, 0, 0, 0, Histogram(cur.ttfb.bounds))
        span = now.at - base.at
        requests = cur.requests - prev.requests
        out.update(
            flows_per_s=_rate(cur.opened, prev.opened, span),
            bytes_c2s_per_s=_rate(cur.c2s, prev.c2s, span),
            bytes_s2c_per_s=_rate(cur.s2c, prev.s2c, span),
            ttfb_p95_ms=_ms(cur.ttfb.quantile(0.95, since=prev.ttfb)),
            error_share=(_share(cur.request_errors - prev.request_errors, requests)
                         if requests > 0 else _share(cur.failed - prev.failed,
                                                     cur.closed - prev.closed)))
        return out


def sample(at: float, links: Iterable[tuple[LinkId, int, int]],
           keys: Mapping[RoleId, KeyTotals], http: Mapping[str, KeyStats]) -> Sample:
    s = Sample(at)
    for link, bytes_in, bytes_out in links:
        s.links[link] = (bytes_in, bytes_out)
    for (key, role), totals in keys.items():
        s.keys[key, role] = key_sample(totals, http.get(key) if role == "listener" else None)
    return s
