"""The HTTP side (console, its static files, the REST API, health) under both supported ASGI servers."""

from __future__ import annotations

import asyncio
import signal

import pytest
import requests

from streams.models import Account, Stream
from tests.conftest import Proc
from tests.e2e.test_relay import gateway_for
from tests.support import Customer, db, eventually, ramp

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.mark.both_servers
async def test_console_static_files_api_and_health_are_served(hub: Proc, account: Account) -> None:
    def get(path: str, **kwargs: object) -> requests.Response:
        return requests.get(f"{hub.http}{path}", timeout=10, **kwargs)  # type: ignore[arg-type]

    login = await asyncio.to_thread(get, "/admin/login/")
    assert login.status_code == 200 and "csrfmiddlewaretoken" in login.text
    css = await asyncio.to_thread(get, "/static/admin/css/base.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"] and len(css.content) > 1000
    health = await asyncio.to_thread(get, "/healthz")
    assert health.json()["status"] == "ok"
    streams = await asyncio.to_thread(
        get, f"/v1/Account/{account.auth_id}/Call/", auth=(account.auth_id, account.auth_token)
    )
    assert streams.status_code == 200 and streams.json()["meta"]["total_count"] == 0
    refused = await asyncio.to_thread(get, f"/v1/Account/{account.auth_id}/Call/", auth=(account.auth_id, "x"))
    assert refused.status_code == 401


async def test_a_hub_stopped_with_sigterm_ends_its_calls_as_hung_up(hub_factory: object, account: Account) -> None:
    """A deploy restarts hub processes with SIGTERM: their calls end cleanly, billed, not orphaned.

    uvicorn only, the production server: daphne 4.2.3's shutdown hook raises KeyError on a
    connection whose application already finished (any earlier HTTP request) and exits without
    letting applications finish; its calls are then ended by the beat's dead-process sweep.
    """
    hub: Proc = hub_factory(server="uvicorn")  # type: ignore[operator]
    async with Customer() as customer:
        gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
        await gw.send(ramp(1600))
        await eventually(lambda: customer.events("media"))
        await asyncio.to_thread(hub.stop, signal.SIGTERM, 20)
        assert hub.popen.returncode is not None
        await eventually(lambda: customer.ws[0].close_code is not None)  # the customer was told, not left hanging
    stream = await db(lambda: Stream.objects.select_related("call").get(account=account))()
    assert stream.end_time is not None and stream.hangup_reason == "Call hangup", hub.log()[-3000:]
    assert stream.call.status == "ended"
