"""Failure handling for HTTP requests: outlier ejection and a retry budget.

Pure: no trio, no sockets; every method takes `now`, monotonic seconds (a `now` earlier
than one already seen is clamped, so a key's clock never runs backwards).

`OutlierTracker` is Envoy's consecutive-5xx outlier detection: a key (a serving site's
router id, or a connector endpoint "host:port", one tracker for each) that fails
`consecutive` times in a row is skipped for `base_s`, doubling on each repeat ejection up
to `max_s`. An ejected key is moved last, never dropped: when every key is ejected the
request still goes somewhere, and the least recently ejected key, the likeliest to have
recovered, goes first.

`RetryBudget` keeps retries from more than doubling the load during an outage, as
Linkerd's and Finagle's retry budgets do: originals deposit credit, retries spend it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from router.routing import Candidate

# Envoy's and Istio's defaults (consecutive_5xx 5, base_ejection_time 30 s): five in a
# row is past what a healthy backend's odd error produces, and 30 s is long enough for
# traffic to settle elsewhere, short enough that a recovered site soon gets its share.
CONSECUTIVE_FAILURES = 5
BASE_EJECTION_S = 30.0
# Doubling 30 s reaches 300 s (Envoy's max_ejection_time) at the fifth ejection: a site
# that keeps failing costs at most 5 requests every 5 minutes, and is still retried.
MAX_EJECTION_S = 300.0
# A key that stayed out of trouble this long after its last ejection ended starts again
# at `base_s`: the doubling is for a site that flaps, not one that failed once last week.
EJECTION_DECAY_S = MAX_EJECTION_S
# Keys not recorded for this long are forgotten (sites and endpoints come and go). It is
# longer than any ejection, so a forgotten key can never have been still ejected.
FORGET_AFTER_S = 3600.0
# Sites per listener and endpoints per connector are few; this only bounds a key space
# that something outside us grows (endpoints resolved from DNS, routers joining).
MAX_TRACKED_KEYS = 4096


@dataclass(slots=True)
class _KeyState:
    seen: float  # last record()
    consecutive: int = 0  # failures in a row
    ejections: int = 0  # in the current run of ejections (see EJECTION_DECAY_S)
    ejected_at: float = -1.0  # start of the latest ejection; < 0: never ejected
    until: float = -1.0  # end of the latest ejection
    failures: int = 0  # the run of failures that caused the latest ejection
    reason: str = ""  # the last failure's, as record() was told it


class OutlierTracker:
    """Consecutive-failure ejection per key, with doubling and a memory bound."""

    def __init__(self, *, consecutive: int = CONSECUTIVE_FAILURES,
                 base_s: float = BASE_EJECTION_S, max_s: float = MAX_EJECTION_S,
                 decay_s: float = EJECTION_DECAY_S, forget_after_s: float = FORGET_AFTER_S,
                 max_keys: int = MAX_TRACKED_KEYS) -> None:
        if consecutive < 1 or max_keys < 1:
            raise ValueError("consecutive and max_keys must be >= 1")
        if not 0 < base_s <= max_s:
            raise ValueError("need 0 < base_s <= max_s")
        if forget_after_s <= max_s:
            raise ValueError("forget_after_s must exceed max_s, or an ejection is forgotten")
        self._consecutive = consecutive
        self._base_s = base_s
        self._max_s = max_s
        self._decay_s = decay_s
        self._forget_after_s = forget_after_s
        self._max_keys = max_keys
        self._keys: OrderedDict[str, _KeyState] = OrderedDict()  # least recently seen first
        self._now = float("-inf")

    def __len__(self) -> int:
        return len(self._keys)

    def _clock(self, now: float) -> float:
        self._now = max(self._now, now)
        return self._now

    def record(self, key: str, ok: bool, now: float, *, reason: str = "") -> bool:
        """One outcome for `key`: ok=False for a 5xx from the application or a connect
        error. True when this failure ejected the key (to log it once)."""
        now = self._clock(now)
        self._forget_stale(now)
        state = self._keys.get(key)
        if state is None:
            while len(self._keys) >= self._max_keys:
                # the least recently seen goes, ejected or not: a key nobody sends to
                # any more matters least, and finding a healthy one would cost O(n)
                self._keys.popitem(last=False)
            state = self._keys[key] = _KeyState(seen=now)
        else:
            state.seen = now
            self._keys.move_to_end(key)
        if ok:
            state.consecutive = 0
            return False
        state.consecutive += 1
        state.reason = reason
        # Failures while ejected come from requests sent here as the last resort: they
        # count towards the next ejection but do not lengthen this one.
        if state.consecutive < self._consecutive or now < state.until:
            return False
        if state.ejected_at >= 0 and now - state.until > self._decay_s:
            state.ejections = 0
        state.ejections += 1
        state.failures = state.consecutive
        state.consecutive = 0
        state.ejected_at = now
        state.until = now + self._duration(state.ejections)
        return True

    def _duration(self, ejections: int) -> float:
        # min() before the power would overflow for a key ejected a thousand times
        return min(self._max_s, self._base_s * 2.0 ** min(ejections - 1, 64))

    def _forget_stale(self, now: float) -> None:
        while self._keys:
            key, state = next(iter(self._keys.items()))
            if now - state.seen <= self._forget_after_s:
                return
            del self._keys[key]

    def ejected(self, key: str, now: float) -> bool:
        state = self._keys.get(key)
        return state is not None and self._clock(now) < state.until

    def ejected_at(self, key: str) -> float:
        """When the latest ejection of `key` began; -1.0 if it never was ejected."""
        state = self._keys.get(key)
        return -1.0 if state is None else state.ejected_at

    def filter(self, keys: Iterable[str], now: float) -> list[str]:
        """The keys not ejected, in their order; if every one is ejected, the least
        recently ejected one(s) instead: the last key is never ejected."""
        keys = list(keys)
        healthy = [k for k in keys if not self.ejected(k, now)]
        if healthy or not keys:
            return healthy
        first = min(self._keys[k].ejected_at for k in keys)
        return [k for k in keys if self._keys[k].ejected_at == first]

    def why(self, key: str, now: float) -> str | None:
        """Why `key` is ejected, for an error's text; None if it is not."""
        if not self.ejected(key, now):
            return None
        state = self._keys[key]
        text = (f"ejected for {state.until - state.ejected_at:g} s after "
                f"{state.failures} consecutive failures")
        if state.ejections > 1:
            text += f" (ejection {state.ejections} in a row)"
        if state.reason:
            text += f", the last: {state.reason}"
        return text

    def ejections(self, now: float) -> dict[str, str]:
        """Every key ejected now, with why (for status)."""
        return {k: why for k in list(self._keys) if (why := self.why(k, now)) is not None}


def order_without_ejected(candidates: Sequence[Candidate], tracker: OutlierTracker,
                          now: float) -> list[Candidate]:
    """The candidates in the strategy's order with ejected sites moved last (least
    recently ejected first among them): a last resort, never dropped."""
    healthy = [c for c in candidates if not tracker.ejected(c.router_id, now)]
    if len(healthy) == len(candidates):
        return list(candidates)
    ejected = [c for c in candidates if tracker.ejected(c.router_id, now)]
    return healthy + sorted(ejected, key=lambda c: tracker.ejected_at(c.router_id))


# Each original request deposits this much: one retry per request at most, on average,
# so retries add at most as many attempts as there were requests, i.e. at most double.
RETRY_RATIO = 1.0
# Credit saved in good times, so the first failures of an outage can retry at once;
# capped so a long healthy spell cannot fund a retry storm when everything fails.
MAX_RETRY_CREDIT = 100.0
# Without this, a listener with a request a minute could hardly ever retry (Envoy's
# min_retry_concurrency is 3, Linkerd's minRetriesPerSecond 10): a few retries per
# second cost a backend nothing, whatever its state. It tops credit up only to
# MIN_RETRY_BURST, so a quiet listener does not save up MAX_RETRY_CREDIT of it.
MIN_RETRIES_PER_S = 3.0
MIN_RETRY_BURST = 3.0


class RetryBudget:
    """How many retries a listener may make: call on_request() for each original
    request (not for retries), and can_retry() before each retry."""

    def __init__(self, now: float, *, ratio: float = RETRY_RATIO,
                 max_credit: float = MAX_RETRY_CREDIT, min_per_s: float = MIN_RETRIES_PER_S,
                 min_burst: float = MIN_RETRY_BURST) -> None:
        if ratio < 0 or min_per_s < 0 or max_credit < 1 or not 0 <= min_burst <= max_credit:
            raise ValueError("need ratio >= 0, min_per_s >= 0, 0 <= min_burst <= max_credit,"
                             " max_credit >= 1")
        self._ratio = ratio
        self._max = max_credit
        self._min_per_s = min_per_s
        self._min_burst = min_burst
        self._credit = min_burst  # a new listener may retry its first failures
        self._at = now
        self.denied = 0  # retries refused, for metrics

    @property
    def credit(self) -> float:
        return self._credit

    def _refill(self, now: float) -> None:
        if now > self._at:
            if self._credit < self._min_burst:
                self._credit = min(self._min_burst,
                                   self._credit + (now - self._at) * self._min_per_s)
            self._at = now

    def on_request(self, now: float) -> None:
        self._refill(now)
        self._credit = min(self._max, self._credit + self._ratio)

    def can_retry(self, now: float) -> bool:
        """Whether one more retry is allowed; spends its credit when it is."""
        self._refill(now)
        if self._credit < 1.0:
            self.denied += 1
            return False
        self._credit -= 1.0
        return True
