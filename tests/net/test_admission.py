"""Link-port admission (pure): pending-handshake slots, the first-byte waiting room,
and the log throttle that keeps refusal floods to one line per interval."""

from __future__ import annotations

import logging

import pytest

from router.net.admission import (
    HandshakeRate,
    HandshakeSlots,
    Refusal,
    WaitingRoom,
    source_key,
)
from router.net.logthrottle import KeyedLogThrottle, LogThrottle


def _fill(slots: HandshakeSlots[str], *sources: str) -> list[str]:
    """Give each of `sources` one more slot, named source#n; the members, in order."""
    members = []
    for source in sources:
        member = f"{source}#{slots.held_by(source)}"
        assert slots.refusal(source) is None
        assert slots.acquire(source, member) is None
        members.append(member)
    return members


def test_one_source_gets_only_its_share() -> None:
    slots: HandshakeSlots[str] = HandshakeSlots(total=16, per_source=2)
    _fill(slots, "10.0.0.1", "10.0.0.1")
    assert slots.refusal("10.0.0.1") is Refusal.SOURCE_FULL
    with pytest.raises(ValueError, match="may not have a slot"):
        slots.acquire("10.0.0.1", "third")
    _fill(slots, "10.0.0.2")  # others are not locked out
    assert slots.pending == 3
    slots.release("10.0.0.1", "10.0.0.1#0")
    assert slots.refusal("10.0.0.1") is None


def test_total_cap_holds_across_sources_holding_one_each() -> None:
    slots: HandshakeSlots[str] = HandshakeSlots(total=4, per_source=2)
    _fill(slots, "a", "b", "c", "d")
    assert slots.refusal("e") is Refusal.FULL  # nobody holds more than a newcomer would
    slots.release("b", "b#0")
    _fill(slots, "e")
    assert slots.pending == 4


def test_when_full_the_heaviest_source_gives_its_oldest_slot_to_a_lighter_one() -> None:
    slots: HandshakeSlots[str] = HandshakeSlots(total=4, per_source=3)
    _fill(slots, "flood", "flood", "flood", "other")
    assert slots.refusal("peer") is None
    assert slots.acquire("peer", "peer#0") == "flood#0"  # its oldest
    assert (slots.held_by("flood"), slots.held_by("peer"), slots.pending) == (2, 1, 4)
    slots.release("flood", "flood#0")  # the evicted one's handler lets go: nothing happens
    assert slots.pending == 4
    # flood and other now differ by one: neither may take the other's slot, nor the peer's.
    assert slots.refusal("flood") is Refusal.FULL
    assert slots.refusal("other") is Refusal.FULL


def test_a_flood_from_many_sources_cannot_keep_a_peer_out() -> None:
    """16 sources fill every slot with their full share; each freed slot is retaken at
    once. A peer from another address still gets in, and keeps its slot."""
    slots: HandshakeSlots[str] = HandshakeSlots(total=256, per_source=16)
    flood = [f"10.0.0.{i}" for i in range(16)]
    for source in flood:
        _fill(slots, *[source] * 16)
    assert slots.refusal("peer") is None
    assert slots.acquire("peer", "peer") is not None
    for _ in range(10):  # the flood retries from every address, again and again
        for source in flood:
            if slots.refusal(source) is None:
                evicted = slots.acquire(source, f"{source}#again")
                assert evicted is None or not evicted.startswith("peer")
    assert slots.held_by("peer") == 1


def test_release_forgets_a_source() -> None:
    slots: HandshakeSlots[str] = HandshakeSlots(total=4, per_source=2)
    _fill(slots, "a")
    slots.release("a", "a#0")
    slots.release("a", "a#0")  # twice, or after an eviction: nothing
    assert slots.pending == 0 and slots.held_by("a") == 0
    assert not slots._held  # no entry left behind per source ever seen
    with pytest.raises(ValueError):
        HandshakeSlots(total=4, per_source=5)


def test_a_source_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"  # a v4 client on a dual-stack port
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("?") == "?"  # peer_name could not tell: all such share one key


def test_waiting_room_evicts_the_longest_waiter() -> None:
    room: WaitingRoom[str] = WaitingRoom(capacity=2)
    assert room.enter("first") is None
    assert room.enter("second") is None
    assert room.enter("third") == "first"
    assert len(room) == 2
    room.leave("second")
    room.leave("first")  # already evicted: no error
    assert room.enter("fourth") is None
    assert room.enter("fifth") == "third"


def test_throttle_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    throttle = LogThrottle(interval=10.0)
    assert throttle.admit(0.0) == 0
    assert [throttle.admit(t) for t in (1.0, 5.0, 9.9)] == [None, None, None]
    assert throttle.admit(10.0) == 3
    assert throttle.admit(10.5) is None
    assert throttle.admit(25.0) == 1


def test_throttle_log_mentions_how_many_were_held_back(
        caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.throttle")
    throttle = LogThrottle(interval=10.0)
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        for i in range(50):
            throttle.log(logger, logging.WARNING, i * 0.5, "refused %s", "x")
    assert [r.getMessage() for r in caplog.records] == [
        "refused x",
        "refused x (and 19 more like it since the last report)",
        "refused x (and 19 more like it since the last report)",
    ]


def test_keyed_throttle_keeps_kinds_apart_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.throttle")
    throttle = KeyedLogThrottle(interval=10.0, max_kinds=2)
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        for kind in ("timeout", "timeout", "bad preface", "timeout", "x", "y", "bad preface"):
            throttle.log(kind, logger, logging.WARNING, 1.0, "%s", kind)
    # One line per kind; kinds past the first two share one throttle.
    assert [r.getMessage() for r in caplog.records] == ["timeout", "bad preface", "x"]


def test_handshake_rate_allows_a_burst_then_the_rate() -> None:
    rate = HandshakeRate(rate=10.0, burst=4)
    assert [rate.allow("a", 0.0) for _ in range(5)] == [True] * 4 + [False]
    assert rate.allow("b", 0.0)  # another source has its own bucket
    assert not rate.allow("a", 0.05)  # half a token
    assert rate.allow("a", 0.1)
    assert not rate.allow("a", 0.1)
    # Refused attempts do not push the next one further out: 1 s refills 4 (the burst).
    assert [rate.allow("a", 1.2) for _ in range(5)] == [True] * 4 + [False]


def test_handshake_rate_over_a_long_flood_is_the_rate() -> None:
    rate = HandshakeRate(rate=10.0, burst=40)
    allowed = sum(rate.allow("flood", t / 1000) for t in range(60_000))  # 1000/s for 60 s
    assert 40 + 600 - 1 <= allowed <= 40 + 600 + 1


def test_handshake_rate_tracks_a_bounded_number_of_sources() -> None:
    rate = HandshakeRate(rate=1.0, burst=1, max_sources=3)
    for source in ("a", "b", "c", "d"):
        assert rate.allow(source, 0.0)
    assert len(rate) == 3
    assert not rate.allow("d", 0.0)  # still tracked
    assert rate.allow("a", 0.0)  # forgotten (least recently seen): its burst again
    with pytest.raises(ValueError):
        HandshakeRate(rate=0.0, burst=1)
