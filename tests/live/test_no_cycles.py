"""An ended call (audio-fork or Asterisk, ended or refused) leaves nothing for the garbage collector.

What a call's objects hold of each other must come apart by reference counting once the call
is over: whatever forms a cycle instead waits, with everything it holds, for a collection of
an older generation, and such a collection scans every live call's objects while the event loop
stands still (~100 ms at 370 bidirectional calls, bench/RESULTS.md: every playback frame due
meanwhile is late). The hub is served in this process by uvicorn with its own WebSocket protocol,
as the README runs it in production, so the collector can be asked what it found.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus

from streams.live.admission import admission
from streams.live.ingest import IngestConsumer
from streams.live.relay import StreamRelay
from streams.live.session import CallSession
from streams.live.wsserver import IngestWebSocketProtocol
from streams.models import Account, Call
from tests.live.asterisk.fake_asterisk import FakeAsterisk
from tests.live.inprocess import hub_in_process
from tests.support import Customer, Gateway, basic_auth, db, eventually, ramp

pytestmark = [pytest.mark.django_db(transaction=True)]

WATCHED = (IngestWebSocketProtocol, IngestConsumer, CallSession, StreamRelay)


@contextlib.contextmanager
def capacity(limit: int) -> Iterator[None]:
    before = admission.limit
    admission.limit = limit
    try:
        yield
    finally:
        admission.limit = before


def left_for_the_collector() -> list[str]:
    """Collects, keeping what it found: for each watched object only a collection freed, its
    kind and one cycle it sat in (the path that a fix has to cut)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        garbage = {id(obj): obj for obj in gc.garbage}
        found = [obj for obj in gc.garbage if issubclass(type(obj), WATCHED)]
        return sorted(f"{type(obj).__name__}: {cycle_through(obj, garbage)}" for obj in found)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def cycle_through(start: object, garbage: dict[int, object]) -> str:
    """The shortest chain of references from `start` back to itself, by kind."""
    came_from: dict[int, object | None] = {id(start): None}
    queue = [start]
    while queue:
        obj = queue.pop(0)
        for ref in gc.get_referents(obj):
            if ref is start:
                chain = [obj]
                while (prev := came_from[id(chain[-1])]) is not None:
                    chain.append(prev)
                return " -> ".join(type(o).__qualname__ for o in [*reversed(chain), start])
            if id(ref) in garbage and id(ref) not in came_from:
                came_from[id(ref)] = obj
                queue.append(ref)
    return "(held by a cycle elsewhere)"


async def test_ended_and_refused_calls_are_freed_by_reference_counting(account: Account) -> None:
    auth = basic_auth(account.auth_id, account.auth_token)
    with capacity(2):  # a one-way call fits; a bidirectional one (2.7) is refused at its metadata
        async with hub_in_process() as base, Customer() as customer:
            url = f"{base}/audio-fork"
            gc.collect()
            for n in range(3):
                gw = await Gateway(url, auth).open({"from": f"+1{n}", "streams": [{"serviceUrl": customer.url}]})
                await gw.send_frames(ramp(160 * 10))
                await eventually(db(lambda n=n: Call.objects.filter(from_number=f"+1{n}", status="live").exists()))
                await eventually(lambda n=n: len(customer.events("media")) >= 10 * (n + 1))
                await gw.close()
                await eventually(db(lambda n=n: Call.objects.filter(from_number=f"+1{n}", status="ended").exists()))

                heavy = await Gateway(url, auth).open(
                    {"from": f"+2{n}", "streams": [{"serviceUrl": customer.url, "bidirectional": True}]}
                )
                assert await heavy.closed_by_hub() == 4503
            await eventually(lambda: admission.used == 0)  # every consumer has torn down
            await asyncio.sleep(0.2)
            assert left_for_the_collector() == []


async def test_upgrades_refused_at_capacity_are_freed_by_reference_counting(account: Account) -> None:
    """Offered twice its capacity, a hub answers half the arrivals HTTP 503: what each refusal built
    (protocol, consumer) must not wait for the collector while the admitted calls relay."""
    auth = basic_auth(account.auth_id, account.auth_token)
    with capacity(1):
        async with hub_in_process() as base, Customer() as customer:
            url = f"{base}/audio-fork"
            held = await Gateway(url, auth).open({"from": "+10", "streams": [{"serviceUrl": customer.url}]})
            await eventually(lambda: customer.events("start"))
            gc.collect()
            for _ in range(5):
                with pytest.raises(InvalidStatus) as refused:
                    await Gateway(url, auth).open({"from": "+11"})
                assert refused.value.response.status_code == 503
            await asyncio.sleep(0.2)
            assert left_for_the_collector() == []
            await held.close()
            await eventually(lambda: admission.used == 0)


async def test_ended_asterisk_calls_are_freed_by_reference_counting(account: Account) -> None:
    auth = basic_auth(account.auth_id, account.auth_token)
    async with hub_in_process() as base, Customer() as customer:
        gc.collect()
        for n in range(3):
            fake = FakeAsterisk(f"{base}/asterisk", auth, params={"serviceUrl": customer.url}, codec="slin")
            await fake.dial()
            await fake.talk(ramp(160 * 10))
            await eventually(lambda n=n: len(customer.events("media")) >= 10 * (n + 1))
            await fake.hang_up()
            await eventually(db(lambda n=n: Call.objects.filter(status="ended").count() == n + 1))
        await eventually(lambda: admission.used == 0)
        await asyncio.sleep(0.2)
        assert left_for_the_collector() == []
