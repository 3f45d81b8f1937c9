"""Control across hub processes through the Redis channel layer: the REST call lands on hub B,
the call's sockets live in hub A."""

from __future__ import annotations

import asyncio

import pytest
import requests
from django.conf import settings

from streams.models import Account, Call, Stream
from tests.conftest import Proc
from tests.e2e.test_relay import ended_stream, gateway_for
from tests.support import Customer, db, eventually, ramp

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs the Redis channel layer (REDIS_URL)"),
]


def api(hub: Proc, account: Account, method: str, path: str, **kw: object) -> requests.Response:
    url = f"{hub.http}/v1/Account/{account.auth_id}/{path}"
    return requests.request(method, url, auth=(account.auth_id, account.auth_token), timeout=10, **kw)


async def test_start_stop_and_hangup_on_one_process_reach_a_call_held_by_another(
    hub_factory: object, account: Account
) -> None:
    hub_a = hub_factory("hub-a")  # type: ignore[operator]
    hub_b = hub_factory("hub-b")  # type: ignore[operator]
    async with Customer() as first, Customer() as second:
        gw = await gateway_for(hub_a, account).open({"streams": [{"serviceUrl": first.url}]})
        await eventually(lambda: first.events("start"))
        call = await db(lambda: Call.objects.get(account=account))()
        assert call.server_id.startswith(f"hub-a-{hub_a.port}#")
        feeding = asyncio.create_task(gw.send_frames(ramp(8000 * 20), interval=0.02))

        # start on B -> dialled by A
        response = await asyncio.to_thread(
            api, hub_b, account, "POST", f"Call/{call.call_uuid}/Stream/", json={"service_url": second.url}
        )
        assert response.status_code == 201, response.text
        await eventually(lambda: second.events("media"))

        # stop on B -> A closes the customer socket
        stream_id = first.events("start")[0]["start"]["streamId"]
        response = await asyncio.to_thread(api, hub_b, account, "DELETE", f"Call/{call.call_uuid}/Stream/{stream_id}/")
        assert response.status_code == 204
        await eventually(lambda: first.ws[0].close_code is not None)
        stopped = await ended_stream(stream_id=stream_id)
        assert stopped.hangup_reason == "API request"
        received_before = len(first.events("media"))
        await asyncio.sleep(0.3)
        assert len(first.events("media")) == received_before

        # hang up on B -> A closes the gateway socket; the other stream ends "Call hangup"
        response = await asyncio.to_thread(api, hub_b, account, "DELETE", f"Call/{call.call_uuid}/")
        assert response.status_code == 204
        await eventually(lambda: gw.ws is not None and gw.ws.close_code is not None)
        feeding.cancel()
        other = await ended_stream(service_url=second.url)
        assert other.hangup_reason == "Call hangup"
        await gw.close()
    rows = await db(lambda: list(Stream.objects.filter(account=account).values_list("status", flat=True)))()
    assert sorted(rows) == ["stopped", "stopped"]
