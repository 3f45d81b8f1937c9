"""Relay lifecycle edge cases, in-process against the real database."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import OperationalError
from django.utils import timezone

from callbacks.models import CallbackDelivery
from streams import services
from streams.core.validation import validate_stream_params
from streams.live.relay import StreamRelay
from streams.models import Account, Stream
from tests.support import Customer, db, eventually

pytestmark = pytest.mark.django_db(transaction=True)


class FakeHost:
    """A RelayHost with no call behind it: records finished relays, has no playback."""

    def __init__(self) -> None:
        self.finished: list[StreamRelay] = []

    def relay_finished(self, relay: StreamRelay) -> None:
        self.finished.append(relay)

    def take_stream_end(self, end: dict[str, Any]) -> bool:
        return False  # no call ending here: the relay writes its own end

    def play(self, relay: StreamRelay, pcm: bytes) -> None:
        raise AssertionError("no playback in these tests")

    def checkpoint(self, relay: StreamRelay, name: str) -> bool:
        return False

    def clear(self, relay: StreamRelay) -> tuple[int, list[str]]:
        return 0, []

    def send_dtmf(self, relay: StreamRelay, digits: str) -> bool:
        return False


def _stream(account: Account) -> Stream:
    call = services.call_open(account=account, call_uuid="0d6a2b8e-5d7c-4b1a-9a63-1f0c2e9d4b10")
    params = validate_stream_params({"service_url": "ws://127.0.0.1:9/ws"})
    stream = services.stream_create(call=call, params=params, notify_session=False)
    return Stream.objects.select_related("account", "call").get(pk=stream.pk)


async def test_a_relay_stopped_before_its_task_ran_still_ends_once(account: Account) -> None:
    stream = await db(_stream)(account)
    host = FakeHost()
    relay = StreamRelay(session=host, stream=stream, gateway_rate=8000)
    relay.start()
    relay.stop(Stream.Reason.CALL_HANGUP)  # same tick: the task has not started
    await asyncio.wait_for(relay.wait(), 10)
    assert host.finished == [relay]
    row = await db(lambda: Stream.objects.get(pk=stream.pk))()
    assert row.hangup_reason == "Call hangup" and row.status == "stopped"


def _stream_to(account: Account, url: str) -> Stream:
    call = services.call_open(account=account, call_uuid=uuid.uuid4())
    params = validate_stream_params({"service_url": url, "status_callback_url": "http://127.0.0.1:9/cb"})
    stream = services.stream_create(call=call, params=params, notify_session=False)
    return Stream.objects.select_related("account", "call").get(pk=stream.pk)


def failing_first(monkeypatch: pytest.MonkeyPatch, name: str, times: int) -> list[str]:
    """Fault injection: the first `times` calls of services.<name> raise as a lost database would."""
    real = getattr(services, name)
    calls: list[str] = []

    def flaky(**kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) <= times:
            raise OperationalError(f"injected: {name} #{len(calls)} failed")
        return real(**kwargs)

    monkeypatch.setattr(services, name, flaky)
    return calls


async def test_the_first_lifecycle_writes_failing_delays_them_and_loses_nothing(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first 3 start writes and the first 3 end writes raise: the stream still gets exactly
    one StartStream, one StopStream (in that order, each with its outbox row) and its bill."""
    starts = failing_first(monkeypatch, "stream_mark_started", 3)
    ends = failing_first(monkeypatch, "stream_end", 3)
    async with Customer() as customer:
        stream = await db(_stream_to)(account, customer.url)
        host = FakeHost()
        relay = StreamRelay(session=host, stream=stream, gateway_rate=8000)
        relay.start()
        await eventually(lambda: customer.events("start"))
        for _ in range(10):
            relay.on_audio(b"\x01\x00" * 160, b"\x00\x00" * 160)
        await eventually(lambda: len(customer.events("media")) == 10)
        await eventually(lambda: len(starts) > 3, timeout=15)
        relay.stop(Stream.Reason.CALL_HANGUP)
        await asyncio.wait_for(relay.wait(), 30)
    assert len(starts) == 4 and len(ends) == 4
    row = await db(lambda: Stream.objects.get(pk=stream.pk))()
    assert row.status == "stopped" and row.hangup_reason == "Call hangup"
    assert row.start_time is not None and row.rounded_bill_duration == 60 and row.frames_sent == 10
    names = await db(lambda: list(row.events.values_list("event", flat=True)))()
    assert names == ["StreamCreated", "Connected", "StartStream", "StopStream"]
    outbox = await db(lambda: list(CallbackDelivery.objects.filter(stream=row).values_list("event", flat=True)))()
    assert outbox == ["StartStream", "StopStream"]


async def test_a_stream_whose_start_went_out_has_its_start_stream_even_when_the_end_wins_the_race(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customer hangs up the moment it gets `start`, while the start's own write keeps
    failing: the end records the start first (StartStream, billed), it does not wait for it."""
    failing_first(monkeypatch, "stream_mark_started", 1000)
    async with Customer(close_after=1) as customer:
        stream = await db(_stream_to)(account, customer.url)
        relay = StreamRelay(session=FakeHost(), stream=stream, gateway_rate=8000)
        relay.start()
        await asyncio.wait_for(relay.wait(), 30)
    assert customer.events("start")
    row = await db(lambda: Stream.objects.get(pk=stream.pk))()
    assert row.status == "failed" and row.start_time is not None and row.rounded_bill_duration == 60
    names = await db(lambda: list(row.events.values_list("event", flat=True)))()
    assert names.index("StartStream") < names.index("DroppedStream"), names
    outbox = await db(lambda: list(CallbackDelivery.objects.filter(stream=row).values_list("event", flat=True)))()
    assert outbox == ["StartStream", "DroppedStream"]


async def test_a_wall_clock_step_mid_stream_bills_only_the_time_that_passed(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wall clock jumps an hour forward once `start` is out (NTP stepping it, a VM resumed):
    the stream still ends on its 2 s timeout and its record says about 2 s, not an hour."""

    def with_timeout(url: str) -> Stream:
        call = services.call_open(account=account, call_uuid=uuid.uuid4())
        params = validate_stream_params({"service_url": url, "stream_timeout": "2"})
        stream = services.stream_create(call=call, params=params, notify_session=False)
        return Stream.objects.select_related("account", "call").get(pk=stream.pk)

    async with Customer() as customer:
        stream = await db(with_timeout)(customer.url)
        relay = StreamRelay(session=FakeHost(), stream=stream, gateway_rate=8000)
        relay.start()
        await eventually(lambda: customer.events("start"))
        real_now = timezone.now
        monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(hours=1))
        await asyncio.wait_for(relay.wait(), 30)
    row = await db(lambda: Stream.objects.get(pk=stream.pk))()
    assert (row.status, row.hangup_reason) == ("stopped", "Stream timeout")
    assert row.start_time is not None and row.end_time is not None
    assert 1.5 <= (row.end_time - row.start_time).total_seconds() < 3  # the timeout counts from the dial
    assert row.bill_duration in (2, 3) and row.rounded_bill_duration == 60
    assert row.duration <= 3


async def test_a_relay_cancelled_without_a_stop_says_so(account: Account) -> None:
    async with Customer() as customer:
        stream = await db(_stream_to)(account, customer.url)
        relay = StreamRelay(session=FakeHost(), stream=stream, gateway_rate=8000)
        relay.start()
        await eventually(lambda: customer.events("start"))
        assert relay._task is not None
        relay._task.cancel()  # what the event loop's shutdown does to every task
        await asyncio.wait_for(relay.wait(), 30)
    row = await db(lambda: Stream.objects.get(pk=stream.pk))()
    assert row.last_error == "the relay was cancelled without a stop request (the hub process is shutting down)"
    dropped = await db(lambda: row.events.get(event="DroppedStream"))()
    assert dropped.params["Error"] == row.last_error


async def test_a_steady_buffer_is_pictured_by_its_ends_not_by_a_sample_a_second(account: Account) -> None:
    """The buffer's picture (Stream.buffer_samples, the console's chart) keeps the ends of a flat
    stretch: a healthy stream's samples stay a few lists however long it lasts (memory per call
    must not grow with its duration), and every change is still drawn."""
    stream = await db(_stream)(account)
    relay = StreamRelay(session=FakeHost(), stream=stream, gateway_rate=8000)
    buffer = SimpleNamespace(usage_pct=0.0)
    relay.buffer = buffer  # type: ignore[assignment]  # only its fill is read here
    t0 = relay.started_mono
    for second in range(600):
        relay._sample(t0 + second)
    assert relay.samples == [[0.0, 0.0], [599.0, 0.0]]
    for second, usage in ((600, 30.0), (601, 30.0), (602, 30.0), (603, 0.0), (604, 0.0)):
        buffer.usage_pct = usage
        relay._sample(t0 + second)
    assert relay.samples == [[0.0, 0.0], [599.0, 0.0], [600.0, 30.0], [602.0, 30.0], [603.0, 0.0], [604.0, 0.0]]
