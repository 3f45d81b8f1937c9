"""Retention: exactly what is older than each setting goes, in batches; nothing of a live call ever does."""

from __future__ import annotations

import io
import uuid
from datetime import datetime, timedelta

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from callbacks.models import CallbackAttempt, CallbackDelivery
from streams import retention, services
from streams.core.validation import validate_stream_params
from streams.models import Account, Call, HubProcess, Stream, StreamEvent

pytestmark = pytest.mark.django_db

NOW = timezone.now()
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
RETAIN = {
    "STREAMHUB_RETAIN_DEBUG_EVENTS_DAYS": 30,
    "STREAMHUB_RETAIN_CALLBACKS_DAYS": 60,
    "STREAMHUB_RETAIN_RECORDS_DAYS": 400,
    "STREAMHUB_RETAIN_DEAD_PROCESSES_DAYS": 7,
}


def call_with_stream(account: Account, *, started: datetime, ended: datetime | None, server_id: str = "") -> Stream:
    call = services.call_open(account=account, call_uuid=uuid.uuid4())
    params = validate_stream_params({"service_url": f"wss://bot.example.com/{uuid.uuid4().hex}"})
    stream = services.stream_create(call=call, params=params, notify_session=False)
    if ended is not None:
        services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False)
        Call.objects.filter(pk=call.pk).update(status=Call.Status.ENDED, ended_at=ended)
    Call.objects.filter(pk=call.pk).update(started_at=started, server_id=server_id)
    Stream.objects.filter(pk=stream.pk).update(created_at=started)
    StreamEvent.objects.filter(stream=stream).delete()  # only the events each test makes
    return stream


def event(stream: Stream, at: datetime, name: str = "StartStream") -> StreamEvent:
    return StreamEvent.objects.create(stream=stream, event=name, timestamp=at)


def delivery(stream: Stream, at: datetime, state: str = "delivered") -> CallbackDelivery:
    row = CallbackDelivery.objects.create(
        stream=stream, account=stream.account, event="StopStream", url="https://app.example.com/cb", state=state
    )
    CallbackDelivery.objects.filter(pk=row.pk).update(created_at=at)
    CallbackAttempt.objects.create(delivery=row, number=1, status_code=200)
    return row


def ids(model: type, **filters: object) -> set[int]:
    return set(model.objects.filter(**filters).values_list("pk", flat=True))  # type: ignore[attr-defined]


@override_settings(**RETAIN)
@pytest.mark.parametrize("batch", [1, 3, 5000])
def test_it_deletes_exactly_what_is_older_than_each_setting_and_nothing_of_live_calls(
    account: Account, batch: int
) -> None:
    ended = call_with_stream(account, started=NOW - 100 * DAY, ended=NOW - 100 * DAY)
    old_events = [event(ended, NOW - 30 * DAY - SECOND), event(ended, NOW - 90 * DAY)]
    young_events = [event(ended, NOW - 30 * DAY + SECOND), event(ended, NOW)]
    old_done = [delivery(ended, NOW - 60 * DAY - SECOND), delivery(ended, NOW - 61 * DAY, state="failed")]
    young_done = delivery(ended, NOW - 60 * DAY + SECOND)
    old_open = delivery(ended, NOW - 90 * DAY, state="pending")  # never deleted while it may still be sent

    ancient = call_with_stream(account, started=NOW - 500 * DAY, ended=NOW - 400 * DAY - SECOND)
    event(ancient, NOW - 500 * DAY)
    delivery(ancient, NOW - 500 * DAY)
    kept_record = call_with_stream(account, started=NOW - 500 * DAY, ended=NOW - 400 * DAY + SECOND)

    # A call still live after 500 days: everything of it stays, ended streams included.
    live = call_with_stream(account, started=NOW - 500 * DAY, ended=None, server_id="hub-b")
    live_ended_stream = services.stream_create(
        call=live.call, params=validate_stream_params({"service_url": "wss://other.example.com/"}), notify_session=False
    )
    services.stream_end(stream=live_ended_stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    StreamEvent.objects.filter(stream__call=live.call).update(timestamp=NOW - 500 * DAY)
    live_events = [event(live, NOW - 500 * DAY), event(live_ended_stream, NOW - 499 * DAY)]
    live_delivery = delivery(live_ended_stream, NOW - 499 * DAY)
    live_event_ids = ids(StreamEvent, stream__call=live.call)

    dead = HubProcess.objects.create(server_id="hub-a", heartbeat_at=NOW - 7 * DAY - SECOND)
    dead_but_holding = HubProcess.objects.create(server_id="hub-b", heartbeat_at=NOW - 300 * DAY)
    recent = HubProcess.objects.create(server_id="hub-c", heartbeat_at=NOW - 7 * DAY + SECOND)

    reports = {r.kind: r for r in retention.prune(now=NOW, batch=batch)}

    assert not ids(StreamEvent, pk__in=[e.pk for e in old_events])
    assert ids(StreamEvent, pk__in=[e.pk for e in young_events]) == {e.pk for e in young_events}
    assert not ids(CallbackDelivery, pk__in=[d.pk for d in old_done])
    assert not ids(CallbackAttempt, delivery_id__in=[d.pk for d in old_done])
    assert ids(CallbackDelivery, pk__in=[young_done.pk, old_open.pk]) == {young_done.pk, old_open.pk}
    assert not Call.objects.filter(pk=ancient.call_id).exists()
    assert not Stream.objects.filter(pk=ancient.pk).exists()
    assert Call.objects.filter(pk__in=[ended.call_id, kept_record.call_id]).count() == 2
    assert ids(StreamEvent, stream__call=live.call) == live_event_ids >= {e.pk for e in live_events}
    assert CallbackDelivery.objects.filter(pk=live_delivery.pk).exists()
    assert Stream.objects.filter(call=live.call).count() == 2
    assert set(HubProcess.objects.values_list("pk", flat=True)) == {dead_but_holding.pk, recent.pk}
    assert not HubProcess.objects.filter(pk=dead.pk).exists()

    # the ancient call's event and delivery went with their kinds, before the record itself
    assert reports["debug events"].deleted == 3
    assert reports["callback deliveries"].deleted == 3
    assert reports["call records"].deleted == 1
    assert reports["dead hub processes"].deleted == 1
    if batch == 1:
        assert len(reports["debug events"].batches) == 3

    # A second run finds nothing more.
    assert all(r.deleted == 0 for r in retention.prune(now=NOW, batch=batch))


@override_settings(**RETAIN)
def test_a_dry_run_counts_and_deletes_nothing(account: Account) -> None:
    stream = call_with_stream(account, started=NOW - 100 * DAY, ended=NOW - 100 * DAY)
    for days in (31, 40, 50):
        event(stream, NOW - days * DAY)
    delivery(stream, NOW - 70 * DAY)
    before = (StreamEvent.objects.count(), CallbackDelivery.objects.count(), CallbackAttempt.objects.count())

    out = io.StringIO()
    with override_settings(STREAMHUB_RETAIN_RECORDS_DAYS=0):
        call_command("prune", "--dry-run", stdout=out)
    text = out.getvalue()
    assert "debug events: would delete 3 older than" in text
    assert "callback deliveries: would delete 1 older than" in text
    assert "call records: kept forever (retention 0)" in text
    assert (StreamEvent.objects.count(), CallbackDelivery.objects.count(), CallbackAttempt.objects.count()) == before

    out = io.StringIO()
    call_command("prune", "--batch", "2", stdout=out)
    assert "debug events: deleted 3 older than" in out.getvalue() and "in 2 batches" in out.getvalue()
    assert StreamEvent.objects.count() == 0 and CallbackAttempt.objects.count() == 0


@override_settings(
    STREAMHUB_RETAIN_DEBUG_EVENTS_DAYS=0,
    STREAMHUB_RETAIN_CALLBACKS_DAYS=0,
    STREAMHUB_RETAIN_RECORDS_DAYS=0,
    STREAMHUB_RETAIN_DEAD_PROCESSES_DAYS=0,
)
def test_zero_keeps_everything_forever(account: Account) -> None:
    stream = call_with_stream(account, started=NOW - 9000 * DAY, ended=NOW - 9000 * DAY)
    event(stream, NOW - 9000 * DAY)
    delivery(stream, NOW - 9000 * DAY)
    HubProcess.objects.create(server_id="ancient", heartbeat_at=NOW - 9000 * DAY)
    assert all(r.deleted == 0 for r in retention.prune(now=NOW))
    assert StreamEvent.objects.count() == 1 and Call.objects.count() == 1 and HubProcess.objects.count() == 1


@override_settings(**RETAIN)
def test_the_beat_task_prunes(account: Account) -> None:
    from streams.tasks import prune

    stream = call_with_stream(account, started=NOW - 100 * DAY, ended=NOW - 100 * DAY)
    event(stream, NOW - 31 * DAY)
    assert prune()["debug events"] == 1
    assert StreamEvent.objects.count() == 0
