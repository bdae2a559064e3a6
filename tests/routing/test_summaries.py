"""Traffic summaries between pure routing cores: flooded to every router, newest wins,
verified against the origin's record, expired and dropped with their router, and never a
cause of route computation or of a new router record."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import msgpack
import pytest

from router.protocol import Hello, ProtocolError
from router.routing import (
    Ed25519Signer,
    ForgedRecord,
    LimitExceeded,
    MalformedMessage,
    RoutingCore,
    RoutingError,
    ed25519_verify,
    router_id_for,
)
from router.routing.summaries import LIFETIME_INTERVALS, SummaryTable
from router.routing.summary import (
    MAX_SUMMARY_BYTES,
    SUMMARY_DOMAIN,
    KeyLoad,
    LinkLoad,
    TrafficSummary,
    decode_summary,
    encode_summary_message,
    fit_summary,
    is_summary_message,
    sign_summary,
)
from tests.routing.test_hostile_routing import fake_router

INTERVAL = 5.0


@dataclass
class Node:
    signer: Ed25519Signer
    core: RoutingCore
    table: SummaryTable
    verified: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.core.router_id


class Net:
    """Routers on an ideal bus; records are delivered before summaries, as a link does."""

    def __init__(self) -> None:
        self.now = 0.0
        self.nodes: dict[str, Node] = {}
        self.links: set[frozenset[str]] = set()
        self.quiet: set[str] = set()  # sites that send no summaries

    def add(self, site: str) -> Node:
        signer = Ed25519Signer.generate()
        core = RoutingCore(site=site, signer=signer, verify=ed25519_verify, now=self.now)
        node = Node(signer, core, None)  # type: ignore[arg-type]

        def verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
            node.verified.append(data[:len(SUMMARY_DOMAIN)].decode(errors="replace"))
            return ed25519_verify(public_key, data, signature)

        node.table = SummaryTable(core=core, signer=signer, verify=verify, now=self.now,
                                  interval_s=INTERVAL)
        self.nodes[site] = node
        return node

    def connect(self, a: Node, b: Node) -> None:
        self.links.add(frozenset((a.id, b.id)))
        for x, y in ((a, b), (b, a)):
            x.core.neighbour_up(y.id, 1, self.now)
            x.table.neighbour_up(y.id, self.now)

    def disconnect(self, a: Node, b: Node) -> None:
        self.links.discard(frozenset((a.id, b.id)))
        for x, y in ((a, b), (b, a)):
            x.core.neighbour_down(y.id, self.now)
            x.table.neighbour_down(y.id)

    def remove(self, node: Node) -> None:
        for other in list(self.nodes.values()):
            if frozenset((node.id, other.id)) in self.links:
                self.disconnect(node, other)
        del self.nodes[node.core.site]

    def run(self) -> None:
        by_id = {n.id: n for n in self.nodes.values()}
        while True:
            batch = [(src, dst, payload) for src in by_id.values()
                     for dst, payload in [*src.core.outgoing(), *src.table.outgoing()]]
            if not batch:
                return
            for src, dst, payload in batch:
                if frozenset((src.id, dst)) in self.links:
                    target = by_id[dst]
                    if is_summary_message(payload):
                        target.table.receive(src.id, payload, self.now)
                    else:
                        target.core.receive(src.id, payload, self.now)

    def tick(self, seconds: float, load: dict[str, float] | None = None) -> None:
        """Advance the clock; every due router originates a summary (its load: flows/s)."""
        self.now += seconds
        for node in self.nodes.values():
            node.core.handle_timer(self.now)
            if node.table.due(self.now) and node.core.site not in self.quiet:
                flows = (load or {}).get(node.core.site, 0.0)
                links = [LinkLoad(peer=p, rtt_s=0.001, in_bytes_per_s=10.0,
                                  out_bytes_per_s=20.0) for p in sorted(node.core.neighbours())]
                keys = [KeyLoad(key="db", role="connector", flows_per_s=flows, errors_per_s=0.0,
                                active=1)] if flows else []
                node.table.originate(links, keys, self.now)
            node.table.handle_timer(self.now)
        self.run()


@pytest.fixture
def line() -> tuple[Net, Node, Node, Node]:
    net = Net()
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    net.connect(a, b)
    net.connect(b, c)
    net.run()
    return net, a, b, c


def test_summaries_reach_every_router_without_touching_routing(
        line: tuple[Net, Node, Node, Node]) -> None:
    net, a, b, c = line
    for node in net.nodes.values():
        node.core.reachable()
    before = {n.id: (n.core.seq, n.core.spf_runs) for n in net.nodes.values()}
    for _ in range(4):
        net.tick(INTERVAL, load={"c": 12.5})
        for node in net.nodes.values():
            node.core.reachable()  # what a flow would ask: recomputed only if it changed
    held = a.table.get(c.id)
    assert held is not None
    assert held.summary.seq == 4
    assert held.summary.keys == (KeyLoad(key="db", role="connector", flows_per_s=12.5,
                                         errors_per_s=0.0, active=1),)
    load = held.summary.link_to(b.id)
    assert load is not None and load.out_bytes_per_s == 20.0
    # No router record re-originated, no shortest-path run: load is not topology.
    assert {n.id: (n.core.seq, n.core.spf_runs) for n in net.nodes.values()} == before


def test_newest_wins_and_copies_are_not_verified_again(
        line: tuple[Net, Node, Node, Node]) -> None:
    net, a, b, c = line
    net.tick(INTERVAL)
    # b relays c's summary to a once; each router checks each summary once.
    assert len(a.verified) == 2  # b's and c's
    stale = a.table.get(c.id)
    assert stale is not None
    net.tick(INTERVAL)
    fresh = a.table.get(c.id)
    assert fresh is not None and fresh.summary.order > stale.summary.order
    checks = len(a.verified)
    a.table.receive(b.id, encode_summary_message([(0.0, stale.signed.wire)]), net.now)
    a.table.receive(b.id, encode_summary_message([(0.0, fresh.signed.wire)]), net.now)
    assert a.table.get(c.id) is fresh
    assert len(a.verified) == checks


def test_a_summary_faster_than_half_its_interval_is_dropped(
        line: tuple[Net, Node, Node, Node]) -> None:
    net, a, b, c = line
    net.tick(INTERVAL)
    held = a.table.get(c.id)
    assert held is not None
    quick = sign_summary(TrafficSummary(router_id=c.id, epoch=held.summary.epoch,
                                        seq=held.summary.seq + 1, interval_s=INTERVAL,
                                        links=(), keys=()), c.signer)
    a.table.receive(b.id, encode_summary_message([(0.0, quick.wire)]), net.now + 1.0)
    assert a.table.get(c.id) is held
    a.table.receive(b.id, encode_summary_message([(0.0, quick.wire)]), net.now + 3.0)
    held2 = a.table.get(c.id)
    assert held2 is not None and held2.summary.seq == held.summary.seq + 1


def test_a_restarted_router_wins_again_by_its_record_epoch(
        line: tuple[Net, Node, Node, Node]) -> None:
    net, a, b, c = line
    for _ in range(3):
        net.tick(INTERVAL)
    old = a.table.get(c.id)
    assert old is not None and old.summary.seq == 3
    net.remove(c)
    net.run()
    # c comes back with the same key and no memory: b sends it its earlier incarnation's
    # record and summary as the link comes up, and c orders its own after them.
    core = RoutingCore(site="c", signer=c.signer, verify=ed25519_verify, now=net.now)
    c2 = Node(c.signer, core, SummaryTable(core=core, signer=c.signer, verify=ed25519_verify,
                                           now=net.now, interval_s=INTERVAL))
    net.nodes["c"] = c2
    net.connect(b, c2)
    net.run()
    net.tick(INTERVAL)
    new = a.table.get(c.id)
    assert new is not None and new.summary.order > old.summary.order
    assert new.origin_time == net.now


def test_a_router_that_goes_away_has_its_summary_dropped(
        line: tuple[Net, Node, Node, Node]) -> None:
    net, a, b, c = line
    net.tick(INTERVAL)
    assert a.table.get(c.id) is not None
    net.disconnect(b, c)
    net.run()
    net.tick(1.0)  # the next prune: c is not reachable any more
    assert a.table.get(c.id) is None
    assert a.table.get(b.id) is not None


def test_a_summary_expires_when_its_router_stops_sending(
        line: tuple[Net, Node, Node, Node]) -> None:
    net, a, _b, c = line
    net.tick(INTERVAL)
    assert a.table.get(c.id) is not None
    net.quiet.add("c")  # c stops sending; its links stay up
    net.tick(LIFETIME_INTERVALS * INTERVAL - 1.0)
    assert a.table.get(c.id) is not None
    net.tick(2.0)
    assert a.table.get(c.id) is None
    assert c.table.get(c.id) is not None  # its own never expires


# ---- what a linked peer may send
def bad_body(**change: object) -> list[object]:
    body: dict[str, object] = {"router_id": "", "epoch": 1, "seq": 9, "interval": 5.0,
                               "links": [], "keys": [], "omitted": 0}
    body.update(change)
    return list(body.values())


BAD_BODIES = [
    (bad_body(interval=float("nan")), "interval must be a finite number"),
    (bad_body(interval=0.5), "interval must be at least 1 s"),
    (bad_body(epoch=True), "epoch must be an integer"),
    (bad_body(seq=-1), "seq must be in"),
    (bad_body(links=[["rpeer", 0.001, -5, 0]]), "link bytes in per s must be a finite number"),
    (bad_body(links=[["rpeer", math.inf, 5, 0]]), "link rtt must be a finite number"),
    (bad_body(links=[["rpeer", None, 5, 1e13]]), "link bytes out per s must be a finite"),
    (bad_body(links=[["rpeer", None, "5", 1]]), "must be a number, got str"),
    (bad_body(links=[["rb", None, 1, 1], ["ra", None, 1, 1]]), "links must be sorted"),
    (bad_body(links=[["r\x1b[2J", None, 1, 1]]), "control, format or space character"),
    (bad_body(links=[["rpeer", None, 1]]), "link must have 4 elements"),
    (bad_body(links=[["r", None, 1, 1]] * 65), "links has 65 entries, more than 64"),
    (bad_body(keys=[["db", 2, 1.0, 0.0, 1]]), "role must be in"),
    (bad_body(keys=[["db", 0, 1.0, 0.0, -1]]), "active flows must be in"),
    (bad_body(keys=[["db", 0, 1.0, 0.0, 1.5]]), "active flows must be an integer"),
    (bad_body(keys=[["x" * 1025, 0, 1.0, 0.0, 1]]), "must have 1 to 1024 characters"),
    (bad_body(keys=[["db", 0, 1.0, 0.0, 1], ["db", 0, 1.0, 0.0, 1]]), "keys must be sorted"),
    (bad_body(omitted=10**7), "keys omitted must be in"),
    (bad_body()[:6], "summary body must have 7 elements"),
    ({"router_id": "r"}, "summary body must be an array"),
]


@pytest.mark.parametrize(("body", "why"), BAD_BODIES)
def test_a_malformed_summary_is_refused_whole(line: tuple[Net, Node, Node, Node],
                                              body: object, why: str) -> None:
    net, a, b, c = line
    net.tick(INTERVAL)
    if isinstance(body, list) and body and body[0] == "":
        body[0] = c.id
    packed = msgpack.packb(body, use_bin_type=True)
    wire = msgpack.packb([packed, c.signer.sign(SUMMARY_DOMAIN + packed)], use_bin_type=True)
    held = a.table.get(c.id)
    good = sign_summary(TrafficSummary(router_id=b.id, epoch=99, seq=99, interval_s=5.0,
                                       links=(), keys=()), b.signer)
    with pytest.raises(MalformedMessage, match=f"^.*{_escape(why)}"):
        a.table.receive(b.id, encode_summary_message([(0.0, good.wire), (0.0, wire)]), net.now)
    assert a.table.get(c.id) is held
    held_b = a.table.get(b.id)
    assert held_b is not None and held_b.summary.seq == 1  # nothing of the message applied


def _escape(text: str) -> str:
    return re.escape(text)


BAD_MESSAGES = [
    (b"\x92\x02\xc1", MalformedMessage, "does not decode"),
    (msgpack.packb([2, [[0.0, b"x"]] * 5001]), MalformedMessage, "more than 5000"),
    (msgpack.packb([2, [[-1.0, b"x"]]]), MalformedMessage, "summary age must be a finite"),
    (msgpack.packb([2, [[0.0, "text"]]]), MalformedMessage, "a summary must be bytes"),
    (msgpack.packb([2, [[0.0, b"\x00" * (MAX_SUMMARY_BYTES + 1)]]]), MalformedMessage,
     "over 4096"),
    (msgpack.packb([2, [[0.0, msgpack.packb(["a", "b"])]]]), MalformedMessage,
     "body and signature must be bytes"),
    (msgpack.packb([2, [[0.0, msgpack.packb([b"", b"s" * 200])]]]), MalformedMessage,
     "signature longer than 128"),
    (msgpack.packb([2, [0.0]]) + b"\x00" * 70_000, LimitExceeded, "exceeds max_message_bytes"),
]


@pytest.mark.parametrize(("payload", "error", "why"), BAD_MESSAGES)
def test_a_malformed_message_is_refused(line: tuple[Net, Node, Node, Node], payload: bytes,
                                        error: type[RoutingError], why: str) -> None:
    net, a, b, _c = line
    with pytest.raises(error, match=_escape(why)):
        a.table.receive(b.id, payload, net.now)
    assert a.table.refused == 1


def test_a_forged_summary_is_refused_and_routing_is_undisturbed(
        line: tuple[Net, Node, Node, Node]) -> None:
    net, a, b, c = line
    net.tick(INTERVAL)
    seq, spf, paths = a.core.seq, a.core.spf_runs, a.core.reachable()
    held = a.table.get(c.id)
    assert held is not None
    # b makes up a busier c: signed by b, not c, so it does not verify against c's record.
    forged = sign_summary(TrafficSummary(router_id=c.id, epoch=held.summary.epoch + 1, seq=1,
                                         interval_s=5.0, links=(), keys=()), b.signer)
    with pytest.raises(ForgedRecord, match=f"bad signature on the summary of {c.id}"):
        a.table.receive(b.id, encode_summary_message([(0.0, forged.wire)]), net.now + 10)
    assert a.table.get(c.id) is held
    # A summary of a router nobody has a record of is dropped, and not passed on.
    ghost = Ed25519Signer.generate()
    made_up = sign_summary(TrafficSummary(router_id=router_id_for(ghost.public_key), epoch=1,
                                          seq=1, interval_s=5.0, links=(), keys=()), ghost)
    a.table.receive(b.id, encode_summary_message([(0.0, made_up.wire)]), net.now + 10)
    assert a.table.unknown == 1 and a.table.outgoing() == []
    # Summaries only from neighbours that take them.
    with pytest.raises(RoutingError, match="not a neighbour"):
        a.table.receive(c.id, encode_summary_message([]), net.now)
    assert (a.core.seq, a.core.spf_runs, a.core.reachable()) == (seq, spf, paths)


def test_each_neighbour_has_a_budget_of_signature_checks() -> None:
    net = Net()
    a, b = net.add("a"), net.add("b")
    a.table = SummaryTable(core=a.core, signer=a.signer, verify=ed25519_verify, now=0.0,
                           max_new_per_s=2, max_summaries=3)
    net.connect(a, b)
    net.run()
    # A burst of 3 + 2 checks (a database's worth and a second's), then 2 per second.
    signers = [Ed25519Signer.generate() for _ in range(6)]
    for signer in signers:
        _, records = fake_router(signer=signer)
        a.core.receive(b.id, records, 0.0)
    wires = [sign_summary(TrafficSummary(router_id=router_id_for(s.public_key), epoch=1, seq=1,
                                         interval_s=5.0, links=(), keys=()), s).wire
             for s in signers]
    a.table.receive(b.id, encode_summary_message([(0.0, w) for w in wires[:3]]), 0.0)
    with pytest.raises(LimitExceeded, match=r"max_new_per_s \(2\)"):
        a.table.receive(b.id, encode_summary_message([(0.0, w) for w in wires[3:]]), 0.0)
    assert a.table.get(router_id_for(signers[3].public_key)) is None
    a.table.receive(b.id, encode_summary_message([(0.0, w) for w in wires[3:5]]), 1.0)
    assert a.table.get(router_id_for(signers[4].public_key)) is not None


def test_the_table_holds_at_most_max_bytes() -> None:
    net = Net()
    a, b = net.add("a"), net.add("b")
    a.table = SummaryTable(core=a.core, signer=a.signer, verify=ed25519_verify, now=0.0,
                           max_message_bytes=8192, max_bytes=8192 + 100)
    net.connect(a, b)
    net.run()
    keys = [KeyLoad(key=f"k{i:03d}", role="listener", flows_per_s=1.0, errors_per_s=0.0,
                    active=0) for i in range(200)]
    big = sign_summary(fit_summary(router_id=b.id, epoch=1, seq=1, interval_s=5.0, links=(),
                                   keys=keys), b.signer)
    with pytest.raises(LimitExceeded, match=r"over max_bytes \(8292\)"):
        a.table.receive(b.id, encode_summary_message([(0.0, big.wire)]), 0.0)
    assert a.table.get(b.id) is None


def test_fit_summary_keeps_the_busiest_within_the_cap() -> None:
    links = [LinkLoad(peer=f"r{i:016x}", rtt_s=0.5, in_bytes_per_s=float(i),
                      out_bytes_per_s=1e9) for i in range(100)]
    keys = [KeyLoad(key=f"{'k' * 100}{i:04d}", role="connector", flows_per_s=float(i),
                    errors_per_s=0.25, active=i) for i in range(1000)]
    signer = Ed25519Signer.generate()
    summary = fit_summary(router_id="rsomeone", epoch=2**40, seq=2**40, interval_s=60.0,
                          links=links, keys=keys)
    signed = sign_summary(summary, signer)
    assert len(signed.wire) <= MAX_SUMMARY_BYTES
    assert len(summary.links) == 64 and summary.links[0].peer == f"r{36:016x}"
    assert summary.keys_omitted == 1000 - len(summary.keys) > 0
    assert min(k.flows_per_s for k in summary.keys) > max(
        k.flows_per_s for k in keys if k not in summary.keys)
    assert decode_summary(signed.wire).summary == summary


def test_an_older_router_takes_no_summaries_and_would_drop_one() -> None:
    """A router of the version before summaries names no features in its HELLO, so it is
    sent none; if one reached it anyway, its core refuses the message (a logged drop) and
    keeps its state."""
    old_hello = msgpack.packb({"router_id": "rold", "site": "old", "max_frame_bytes": 65536,
                               "keepalive_interval": 1.0, "early_bytes": 0})
    assert Hello.from_wire(old_hello).features == ()
    hello = Hello(router_id="rnew", site="new", max_frame_bytes=65536, keepalive_interval=1.0,
                  features=("summary", "later-thing"))
    assert Hello.from_wire(hello.to_wire()).features == ("summary", "later-thing")
    with pytest.raises(ValueError, match="control, format or space"):
        Hello(router_id="r", site="s", max_frame_bytes=65536, keepalive_interval=1.0,
              features=("a b",))
    for bad, why in ((5, "features must be a list of at most 32"),
                     (["x"] * 33, "features must be a list of at most 32"),
                     ([1], "feature must be a string"),
                     (["x" * 65], "feature is 65 characters, more than 64")):
        body = msgpack.packb({"router_id": "rold", "site": "old", "max_frame_bytes": 65536,
                              "keepalive_interval": 1.0, "features": bad})
        with pytest.raises(ProtocolError, match=f"bad HELLO message: {why}"):
            Hello.from_wire(body)
    core = RoutingCore(site="old", signer=Ed25519Signer.generate(), verify=ed25519_verify,
                       now=0.0)
    core.neighbour_up("rnew", 1, 0.0)
    seq = core.seq
    with pytest.raises(MalformedMessage, match="unsupported message version 2"):
        core.receive("rnew", encode_summary_message([]), 0.0)
    assert core.seq == seq
