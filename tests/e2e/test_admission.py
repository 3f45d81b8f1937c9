"""Overload policy: a hub process admits calls up to its capacity and refuses the rest up front."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests
import websockets

from streams.models import Account, Call
from tests.conftest import Proc
from tests.e2e.test_relay import gateway_for
from tests.support import Customer, db, eventually, ramp

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.mark.both_servers
async def test_calls_beyond_capacity_are_refused_with_a_reason_and_readyz_tells_the_balancer(
    hub_factory: object, account: Account, hub_server: str
) -> None:
    hub: Proc = hub_factory(STREAMHUB_MAX_CALLS="1")  # type: ignore[operator]
    ready = await asyncio.to_thread(requests.get, f"{hub.http}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["capacity"] == 1 and ready.json()["live_calls"] == 0

    first = await gateway_for(hub, account).open({"from": "+1"})
    await first.send(ramp(160))
    await eventually(db(lambda: Call.objects.filter(status="live").count() == 1))
    full = await asyncio.to_thread(requests.get, f"{hub.http}/readyz", timeout=5)
    assert full.status_code == 503 and full.json()["ready"] is False and full.json()["load"] == 1.0

    if hub_server == "uvicorn":  # the server lets the application answer the upgrade: HTTP 503, never opened
        with pytest.raises(websockets.InvalidStatus) as info:
            await gateway_for(hub, account).open()
        assert info.value.response.status_code == 503
        assert info.value.response.body.startswith(b"hub at capacity")
    else:  # daphne opens every upgrade it passes on: refused right after it, with a reason
        second = await gateway_for(hub, account).open()
        assert await second.closed_by_hub() == 4503  # at capacity: try another process
        assert any(
            json.loads(m)["data"]["error"].startswith("hub at capacity") for m in second.received if isinstance(m, str)
        )
    assert "at capacity" in hub.log()
    assert await db(lambda: Call.objects.count())() == 1  # the refused call never existed

    await first.close()
    await eventually(db(lambda: not Call.objects.filter(status="live").exists()))
    third = await gateway_for(hub, account).open({"from": "+3"})
    await third.send(ramp(160))
    await eventually(db(lambda: Call.objects.filter(status="live", from_number="+3").exists()))
    await third.close()


@pytest.mark.both_servers
async def test_a_call_is_admitted_by_weight_once_its_metadata_says_what_its_streams_cost(
    hub_factory: object, account: Account
) -> None:
    """Capacity 2: a one-way call weighs 1, a bidirectional one 2. The bidirectional call's
    connection fits (one unit), its metadata does not: refused with 4503 and a reason, before
    any row is written; a one-way call still fits after it."""
    hub: Proc = hub_factory(STREAMHUB_MAX_CALLS="2")  # type: ignore[operator]
    async with Customer() as customer:
        first = await gateway_for(hub, account).open({"from": "+1", "streams": [{"serviceUrl": customer.url}]})
        await first.send(ramp(160))
        await eventually(db(lambda: Call.objects.filter(status="live").count() == 1))

        heavy = await gateway_for(hub, account).open(
            {"from": "+2", "streams": [{"serviceUrl": customer.url, "bidirectional": True}]}
        )
        await eventually(lambda: heavy.ws is not None and heavy.ws.close_code is not None)
        assert heavy.ws is not None and heavy.ws.close_code == 4503
        assert any(
            json.loads(m)["data"]["error"].startswith("hub at capacity for this call's streams")
            for m in heavy.received
            if isinstance(m, str)
        )
        assert not await db(lambda: Call.objects.filter(from_number="+2").exists())()
        ready = await asyncio.to_thread(requests.get, f"{hub.http}/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["weight"] == 1.0  # the refused call's unit is free again

        light = await gateway_for(hub, account).open({"from": "+3", "streams": [{"serviceUrl": customer.url}]})
        await light.send(ramp(160))
        await eventually(db(lambda: Call.objects.filter(status="live", from_number="+3").exists()))
        full = await asyncio.to_thread(requests.get, f"{hub.http}/readyz", timeout=5)
        assert full.status_code == 503 and full.json()["weight"] == 2.0 and full.json()["load"] == 1.0
        await first.close()
        await light.close()


async def _readyz(hub: Proc) -> requests.Response:
    return await asyncio.to_thread(requests.get, f"{hub.http}/readyz", timeout=10)


@pytest.mark.both_servers
async def test_the_loop_lag_guard_refuses_new_calls_while_the_loop_lags_and_admits_again_once_it_recovers(
    hub_factory: object, account: Account, hub_server: str
) -> None:
    """Capacity says yes, the loop says no: new calls are refused (503 / 4503 with a reason) and
    /readyz is 503 while the loop's sustained lag is over 50 ms; the call already here stays;
    once the loop recovers calls are admitted again."""
    hub: Proc = hub_factory(  # type: ignore[operator]
        application="tests.e2e.lagging_asgi:application", STREAMHUB_ADMIT_MAX_LOOP_LAG_SECONDS="0.05"
    )
    first = await gateway_for(hub, account).open({"from": "+1"})
    await first.send(ramp(160))
    await eventually(db(lambda: Call.objects.filter(status="live").count() == 1))

    await asyncio.to_thread(requests.get, f"{hub.http}/test/lag?ms=200", timeout=10)

    async def refusing() -> bool:
        ready = await _readyz(hub)
        return ready.status_code == 503 and any("refusing new calls" in p for p in ready.json()["problems"])

    assert await eventually(refusing, timeout=30, interval=0.2)
    if hub_server == "uvicorn":
        with pytest.raises(websockets.InvalidStatus) as info:
            await gateway_for(hub, account).open({"from": "+2"})
        assert info.value.response.status_code == 503
        assert info.value.response.body.startswith(b"hub overloaded (event loop lagging)")
    else:
        second = await gateway_for(hub, account).open()  # refused right after the upgrade: nothing to send
        assert await second.closed_by_hub() == 4503
        assert any(
            json.loads(m)["data"]["error"].startswith("hub overloaded") for m in second.received if isinstance(m, str)
        )
    assert "ingest refused: event loop lagging" in hub.log()
    assert await db(lambda: Call.objects.count())() == 1  # the refused call never existed
    assert await db(lambda: Call.objects.get(from_number="+1").status)() == "live"  # the admitted call stays

    await asyncio.to_thread(requests.get, f"{hub.http}/test/lag?ms=0", timeout=10)

    async def ready() -> bool:
        return (await _readyz(hub)).status_code == 200

    assert await eventually(ready, timeout=30, interval=0.2)
    metrics = (await asyncio.to_thread(requests.get, f"{hub.http}/metrics", timeout=10)).text
    assert "streamhub_admission_lag_refusals_total 1.0" in metrics
    third = await gateway_for(hub, account).open({"from": "+3"})
    await third.send(ramp(160))
    await eventually(db(lambda: Call.objects.filter(status="live", from_number="+3").exists()))
    await first.close()
    await third.close()
