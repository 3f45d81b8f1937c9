"""Control across hub processes through the Redis channel layer: the REST call lands on hub B,
the call's sockets live in hub A."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest
import requests
from django.conf import settings

from streamhub.servers import hub_command
from streams.models import Account, Call, Stream
from tests.conftest import Proc, _spawn, free_port, server_env
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


async def test_one_port_served_by_two_uvicorn_workers_keeps_rest_control_across_them(
    tmp_path: Path, account: Account
) -> None:
    """`uvicorn --workers 2` (one process per core, one port): calls land on both workers, each
    under its own server id, and REST requests, served by either, stop streams and hang up calls
    held by the other."""
    port = free_port()
    env = server_env(STREAMHUB_SERVER_ID="multi-{pid}")
    hub = _spawn("hub-workers", hub_command("uvicorn", port, workers=2), env, tmp_path)
    hub.port = port
    try:
        await eventually(lambda: _healthy(hub), timeout=30)
        async with Customer() as customer:
            gateways = []
            for i in range(40):  # the kernel picks the worker: open calls until both hold some
                gw = await gateway_for(hub, account).open({"from": f"+{i}", "streams": [{"serviceUrl": customer.url}]})
                await gw.send(ramp(160))
                gateways.append(gw)
                await eventually(db(lambda n=i + 1: Call.objects.filter(status="live").count() == n))
                servers = await db(lambda: set(Call.objects.values_list("server_id", flat=True)))()
                if len(servers) == 2 and i >= 3:
                    break
            assert len(servers) == 2 and all(s.startswith("multi-") for s in servers)
            await eventually(lambda: len(customer.events("start")) == len(gateways))
            # every call, whichever worker holds it: stop its stream, then hang it up, over REST
            calls = await db(lambda: list(Call.objects.filter(status="live")))()
            for call in calls:
                stream = await db(lambda c=call: Stream.objects.get(call=c))()
                response = await asyncio.to_thread(
                    api, hub, account, "DELETE", f"Call/{call.call_uuid}/Stream/{stream.stream_id}/"
                )
                assert response.status_code == 204, response.text
                response = await asyncio.to_thread(api, hub, account, "DELETE", f"Call/{call.call_uuid}/")
                assert response.status_code == 204, response.text
            for gw in gateways:
                await eventually(lambda g=gw: g.ws is not None and g.ws.close_code is not None, timeout=15)
            reasons = await db(lambda: list(Stream.objects.values_list("hangup_reason", flat=True)))()
            assert reasons == ["API request"] * len(gateways)
            assert not await db(lambda: Call.objects.filter(status="live").exists())()
    finally:
        hub.stop()  # the supervisor ends its workers on SIGTERM; if it had to be killed, they go with its group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(hub.popen.pid, signal.SIGKILL)
        print(f"----- {hub.name} log -----\n{hub.log()[-20000:]}")


def _healthy(hub: Proc) -> bool:
    try:
        return requests.get(f"{hub.http}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
