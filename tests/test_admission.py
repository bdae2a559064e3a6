"""Link-port admission (pure): pending-handshake slots, the first-byte waiting room,
and the log throttle that keeps refusal floods to one line per interval."""

from __future__ import annotations

import logging

import pytest

from router.net.admission import HandshakeSlots, Refusal, WaitingRoom, source_key
from router.net.logthrottle import KeyedLogThrottle, LogThrottle


def test_one_source_gets_only_its_share() -> None:
    slots = HandshakeSlots(total=16, per_source=2)
    assert slots.try_acquire("10.0.0.1")
    assert slots.try_acquire("10.0.0.1")
    assert not slots.try_acquire("10.0.0.1")
    assert slots.refusal("10.0.0.1") is Refusal.SOURCE_FULL
    assert slots.try_acquire("10.0.0.2")  # others are not locked out
    assert slots.pending == 3
    slots.release("10.0.0.1")
    assert slots.try_acquire("10.0.0.1")


def test_total_cap_holds_across_sources() -> None:
    slots = HandshakeSlots(total=4, per_source=2)
    for source in ("a", "a", "b", "c"):
        assert slots.try_acquire(source)
    assert not slots.try_acquire("d")
    assert slots.refusal("d") is Refusal.FULL
    slots.release("b")
    assert slots.refusal("d") is None
    assert slots.try_acquire("d")


def test_release_forgets_a_source_and_rejects_a_double_release() -> None:
    slots = HandshakeSlots(total=4, per_source=2)
    slots.try_acquire("a")
    slots.release("a")
    assert slots.pending == 0 and slots.held_by("a") == 0
    assert not slots._held  # no entry left behind per source ever seen
    with pytest.raises(ValueError, match="holds no slot"):
        slots.release("a")
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
