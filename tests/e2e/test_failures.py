"""Hub processes that die, stall, restart under the same name, or lose Redis (issue 15 §3, §7, §9).

Real hub subprocesses, real sockets; the orphan sweep runs in this process against the
same database, on the real clock, with a short window.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from django.utils import timezone

from streams import orphans
from streams.models import Account, Call, HubProcess, Stream
from tests.callbacks.test_worker import RedisServer
from tests.conftest import Proc
from tests.e2e.test_relay import gateway_for
from tests.support import Customer, Gateway, db, eventually, ramp

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BEAT = {"STREAMHUB_HEARTBEAT_SECONDS": "0.5", "STREAMHUB_CONNECT_TIMEOUT": "10"}


@pytest.fixture
def short_window(settings: Any) -> None:
    """The sweeper's view: silent for 2 s = suspect; still silent 5 s later = fenced."""
    settings.STREAMHUB_ORPHAN_AFTER_SECONDS = 2
    settings.STREAMHUB_HEARTBEAT_SECONDS = 0.5


def api(hub: Proc, account: Account, method: str, path: str, **kw: Any) -> requests.Response:
    url = f"{hub.http}/v1/Account/{account.auth_id}/{path}"
    return requests.request(method, url, auth=(account.auth_id, account.auth_token), timeout=30, **kw)


def stream_of(**filters: Any) -> Stream:
    return Stream.objects.select_related("call").get(**filters)


async def sweep_until(done: Callable[[], Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await db(orphans.streams_close_orphaned)()
        if await db(done)():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"the sweep did not get there in {timeout} s")


async def call_with_stream(hub: Proc, account: Account, customer: Customer) -> tuple[Gateway, asyncio.Task[None]]:
    gw = await gateway_for(hub, account).open({"streams": [{"serviceUrl": customer.url}]})
    feeding = asyncio.create_task(gw.send_frames(ramp(8000 * 120), interval=0.02))
    await eventually(lambda: customer.events("media"), timeout=20)
    return gw, feeding


async def test_a_restart_under_the_same_name_does_not_shield_the_dead_processes_calls(
    hub_factory: Callable[..., Proc], account: Account, short_window: None
) -> None:
    """A container restarts with the same hostname and PID: the new process must not keep the
    dead one's calls alive; they end, billed to the dead process's last heartbeat."""
    first = hub_factory("first", STREAMHUB_SERVER_ID="hub-1", **BEAT)
    async with Customer() as dead_customer, Customer() as live_customer:
        gw, feeding = await call_with_stream(first, account, dead_customer)
        await asyncio.sleep(1.0)  # a few heartbeats
        first.stop(signal.SIGKILL)
        killed = timezone.now()
        feeding.cancel()
        second = hub_factory("second", STREAMHUB_SERVER_ID="hub-1", **BEAT)
        gw2, feeding2 = await call_with_stream(second, account, live_customer)
        dead_url = dead_customer.url
        await sweep_until(lambda: stream_of(service_url=dead_url).end_time is not None, timeout=40)
        dead = await db(stream_of)(service_url=dead_url)
        assert dead.hangup_reason == "Connection error" and dead.call.status == "ended"
        assert dead.end_time <= killed and (killed - dead.end_time).total_seconds() < 3  # its last heartbeat
        live = await db(stream_of)(service_url=live_customer.url)
        assert live.end_time is None and live.call.status == "live"
        before = len(live_customer.events("media"))
        await eventually(lambda: len(live_customer.events("media")) > before + 25)
        feeding2.cancel()
        await gw2.close()
        await gw.close()


async def test_a_stalled_process_keeps_its_calls_until_fenced_then_stops_relaying_them(
    hub_factory: Callable[..., Proc], account: Account, short_window: None
) -> None:
    hub = hub_factory(**BEAT)
    async with Customer() as customer:
        gw, feeding = await call_with_stream(hub, account, customer)
        url = customer.url

        # Stalled past the window but not past the fence: suspected, then it beats again.
        os.kill(hub.popen.pid, signal.SIGSTOP)
        try:
            stalled_until = time.monotonic() + 4
            while time.monotonic() < stalled_until:
                await db(orphans.streams_close_orphaned)()
                await asyncio.sleep(0.25)
        finally:
            os.kill(hub.popen.pid, signal.SIGCONT)
        await asyncio.sleep(1.5)
        for _ in range(8):
            await db(orphans.streams_close_orphaned)()
            await asyncio.sleep(0.25)
        assert (await db(stream_of)(service_url=url)).end_time is None
        before = len(customer.events("media"))
        await eventually(lambda: len(customer.events("media")) > before + 25)

        # Stalled past the fence: its calls end, and when it wakes up it stops relaying them.
        os.kill(hub.popen.pid, signal.SIGSTOP)
        try:
            await sweep_until(lambda: stream_of(service_url=url).end_time is not None, timeout=30)
        finally:
            os.kill(hub.popen.pid, signal.SIGCONT)
        await eventually(lambda: customer.ws[0].close_code is not None, timeout=15)
        await eventually(lambda: gw.ws is not None and gw.ws.close_code is not None, timeout=15)
        assert gw.ws is not None and gw.ws.close_code == 4409
        feeding.cancel()
        row = await db(stream_of)(service_url=url)
        assert row.hangup_reason == "Connection error" and row.call.status == "ended"
        assert await db(lambda: HubProcess.objects.filter(fenced_at__isnull=False).count())() == 1
        # and the process goes on serving new calls under a new lease
        async with Customer() as fresh:
            gw2, feeding2 = await call_with_stream(hub, account, fresh)
            call = await db(lambda: Call.objects.get(status="live"))()
            assert call.server_id != row.call.server_id
            feeding2.cancel()
            await gw2.close()
        await gw.close()


async def test_redis_outage_stops_are_refused_not_lost_and_calls_recover(
    hub_factory: Callable[..., Proc], account: Account, tmp_path: Path
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        hub = hub_factory(REDIS_URL=redis.url, STREAMHUB_HEARTBEAT_SECONDS="1", STREAMHUB_CONNECT_TIMEOUT="10")
        async with Customer() as first, Customer() as second, Customer() as third:
            gw, feeding = await call_with_stream(hub, account, first)
            call = await db(lambda: Call.objects.get(status="live"))()
            stream = await db(stream_of)(service_url=first.url)

            redis.stop()
            await asyncio.sleep(1)
            path = f"Call/{call.call_uuid}/Stream/{stream.stream_id}/"
            answer = await asyncio.to_thread(api, hub, account, "DELETE", path)
            assert answer.status_code == 503, answer.text  # not 204 while the audio flows
            assert "could not be reached" in answer.json()["error"]
            # the holder applies it at its next lease check, Redis or not
            await eventually(lambda: first.ws[0].close_code is not None, timeout=15)
            received = len(first.events("media"))
            await asyncio.sleep(0.5)
            assert len(first.events("media")) == received
            assert (await db(stream_of)(service_url=first.url)).hangup_reason == "API request"
            # a start that cannot reach the holder is refused, and its row is not left `initiated`
            answer = await asyncio.to_thread(
                api, hub, account, "POST", f"Call/{call.call_uuid}/Stream/", json={"service_url": second.url + "x"}
            )
            assert answer.status_code == 503 and answer.headers["Retry-After"] == "5", answer.text
            refused = await db(stream_of)(service_url=second.url + "x")
            assert refused.status == "failed" and refused.hangup_reason == "Connection error"

            redis.start()  # empty: it forgot the call's group
            gw2, feeding2 = await call_with_stream(hub, account, second)  # set-up on a stale pool
            assert gw2.ws is not None and gw2.ws.close_code is None
            # the first call's control loop came back and rejoined: a REST hang-up reaches it at once
            # (1000 from the control message; a lease check would close with 4409)
            for _ in range(20):
                answer = await asyncio.to_thread(
                    api, hub, account, "POST", f"Call/{call.call_uuid}/Stream/", json={"service_url": third.url}
                )
                if answer.status_code != 503:
                    break
                await asyncio.sleep(0.5)
            assert answer.status_code == 201, answer.text
            await eventually(lambda: third.events("start"), timeout=15)
            answer = await asyncio.to_thread(api, hub, account, "DELETE", f"Call/{call.call_uuid}/")
            assert answer.status_code == 204, answer.text
            await eventually(lambda: gw.ws is not None and gw.ws.close_code is not None, timeout=15)
            assert gw.ws is not None and gw.ws.close_code == 1000
            for task in (feeding, feeding2):
                task.cancel()
            await gw2.close()
            await gw.close()
    finally:
        redis.stop()
