"""5 % random packet loss on the veth between two sites; 200 MB of hashed transfers.

X (root namespace) exposes a HashServer; Y (its own namespace) has the listener. An
nftables table in Y's namespace drops 5 % of the packets in each direction on Y's veth
end. Generic segmentation offload is turned off on both veth ends so that the rule sees
(and drops) single MTU-sized segments, as a lossy wire would, not 64 KiB GSO batches."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.netns import (
    Background,
    NetLab,
    NetnsSite,
    VethEnd,
    leftovers,
    require_netns,
    run,
)
from tests.support.services import HashServer, transfer
from tests.support.sites import free_port, wait_for

pytestmark = pytest.mark.netns

MB = 1024 * 1024
FLOWS = 4
EACH_WAY = 25 * MB  # per flow and direction: 4 x (25 + 25) MB = 200 MB in total
LOSS_PERCENT = 5


@dataclass
class Lossy:
    lab: NetLab
    x: NetnsSite
    y: NetnsSite
    veth: tuple[VethEnd, VethEnd]


@pytest.fixture
def lossy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lossy]:
    require_netns(nft=True)
    lab = NetLab(tmp_path_factory.mktemp("nsloss"))
    try:
        ns_y = lab.netns("y")
        veth = lab.veth(None, ns_y)
        for end in veth:
            run("ip", "link", "set", "dev", end.ifname, "gso_max_segs", "1", ns=end.ns)
        # This test is about integrity under loss, not failure detection: TCP can stall
        # a few seconds behind a segment lost over and over (RTO backoff), which the
        # default 3 s dead-link bound would take for a dead peer once in a while.
        slow = {"dead_after_s": 20.0}
        x = lab.site("X", None, veth[0].addr, limits=slow, start=False)
        y = lab.site("Y", ns_y, veth[1].addr, limits=slow, start=False)
        lab.start(x, y)
        lab.link(x, y)
        yield Lossy(lab, x, y, veth)
    finally:
        lab.cleanup()
        assert not [ns for ns in leftovers() if ns.startswith(lab.tag)]


def _counters(ns: str) -> dict[str, tuple[int, int]]:
    """comment -> (packets, bytes) of the counters in table inet vrloss."""
    out = run("nft", "list", "table", "inet", "vrloss", ns=ns).stdout
    found = {}
    for m in re.finditer(r'counter packets (\d+) bytes (\d+).*?comment "(\w+)"', out):
        found[m.group(3)] = (int(m.group(1)), int(m.group(2)))
    return found


def test_hashed_transfers_survive_random_loss(lossy: Lossy) -> None:
    lab, x, y = lossy.lab, lossy.x, lossy.y
    assert y.ns is not None
    server = lab.server(None, HashServer)
    x.sitectl("connector", "create", "bulk", f"127.0.0.1:{server.port}")
    port = free_port()
    y.sitectl("listener", "create", "bulk", str(port))
    wait_for(lambda: y.key_reachable("bulk"), what="bulk reachable from Y")

    dev = lossy.veth[1].ifname
    lab.nft(y.ns, f"""
table inet vrloss {{
  chain in {{
    type filter hook input priority -100; policy accept;
    iifname "{dev}" counter comment "inall"
    iifname "{dev}" numgen random mod 100 < {LOSS_PERCENT} counter drop comment "indrop"
  }}
  chain out {{
    type filter hook output priority -100; policy accept;
    oifname "{dev}" counter comment "outall"
    oifname "{dev}" numgen random mod 100 < {LOSS_PERCENT} counter drop comment "outdrop"
  }}
}}
""")
    t0 = time.monotonic()
    flows = [Background(y.ns, transfer, port, cid, EACH_WAY, EACH_WAY, 60)
             for cid in range(1, FLOWS + 1)]
    for flow in flows:
        assert flow.join(max(1.0, 170 - (time.monotonic() - t0))), "transfer hung"
    elapsed = time.monotonic() - t0
    stats = _counters(y.ns)
    print(f"\n{FLOWS * 2 * EACH_WAY // MB} MB over {LOSS_PERCENT}% loss in {elapsed:.1f} s; "
          f"nft counters {stats}")
    for cid, flow in enumerate(flows, start=1):
        assert flow.error is None, f"flow {cid}: {flow.error!r}\n{y.log_tail()}"
        got = server.results[cid]
        assert got.received == EACH_WAY and flow.result.received == EACH_WAY
        assert got.received_hash == flow.result.sent_hash, f"flow {cid}: upload corrupted"
        assert flow.result.received_hash == got.sent_hash, f"flow {cid}: download corrupted"
    # The loss really happened, at about the configured rate, on MTU-sized packets.
    for way in ("in", "out"):
        total, dropped = stats[f"{way}all"][0], stats[f"{way}drop"][0]
        assert total > 10_000
        assert 0.02 < dropped / total < 0.08, stats
    assert stats["inall"][1] / stats["inall"][0] < 2000, "GSO batches, not segments, seen"
    # The link survived the loss (no flap resets flows) and is still up.
    assert y.link_up("X")
    assert y.status()["flows"]["refused"] == 0
