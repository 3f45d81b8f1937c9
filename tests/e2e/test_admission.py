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
from tests.support import db, eventually, ramp

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
        await eventually(lambda: second.ws is not None and second.ws.close_code is not None)
        assert second.ws is not None and second.ws.close_code == 4503  # at capacity: try another process
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
