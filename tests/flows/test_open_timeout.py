"""An OPEN nobody answers: the opener gives up after its timeout with the TIMEOUT code,
and the far end is told (a RESET), so neither side keeps the flow."""

from __future__ import annotations

import pytest
import trio

from router.flows.end import FlowEnd, FlowRefusedError
from router.flows.table import FlowTable
from router.net.link import Link
from router.net.side import FlowSide
from router.protocol import FlowCode, Open
from tests.net.test_link_backpressure import LIMITS, link_pair
from tests.net.test_net_link import Recorder


async def test_an_unanswered_open_times_out_and_resets_the_far_end() -> None:
    silent = Recorder()  # the serving side: takes the flow's events, never answers
    opened = trio.Event()

    def on_open(link: Link, flow_id: int, msg: Open) -> None:
        FlowSide(link, flow_id).attach(silent)
        opened.set()

    async with trio.open_nursery() as nursery:
        links = await link_pair(nursery, on_open)

        with trio.fail_after(10):
            link = links["east"]
            me = link.conn.hello
            end = FlowEnd(FlowSide(link), FlowTable().begin("k", "listener"))
            end.side.open(Open(routing_key="k", origin_site=me.site, origin_router=me.router_id,
                               dest_router=link.peer_id, client_addr="x",
                               trace=(me.router_id,), window=LIMITS.flow_window_bytes), end)
            await opened.wait()
            with pytest.raises(FlowRefusedError,
                               match=r"no answer from west within 0\.2 s") as info:
                await end.wait_answer(0.2)
            # The site, not the path, failed: the forwarder goes on to the next site.
            assert info.value.code is FlowCode.TIMEOUT and not info.value.path_failed
            await silent.got_reset.wait()  # the far end forgets it too
            assert silent.reset == "open timed out"
            assert link.conn.flow_ids() == [] and links["west"].conn.flow_ids() == []
        nursery.cancel_scope.cancel()
