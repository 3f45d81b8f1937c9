"""The orphan sweep and the leases it fences (issue 15 §3, §7, §9): real database, clock passed in."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from streams import orphans, services
from streams.core.validation import validate_stream_params
from streams.models import Account, Call, HubProcess, Stream

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def window(settings: Any) -> None:
    settings.STREAMHUB_ORPHAN_AFTER_SECONDS = 60
    settings.STREAMHUB_HEARTBEAT_SECONDS = 10


def held_call(account: Account, server_id: str, *, at: datetime) -> Stream:
    call = services.call_open(account=account, call_uuid=uuid.uuid4(), server_id=server_id)
    Call.objects.filter(pk=call.pk).update(started_at=at)
    params = validate_stream_params({"service_url": f"ws://127.0.0.1:9/{uuid.uuid4().hex}"})
    stream = services.stream_create(call=call, params=params, notify_session=False)
    Stream.objects.filter(pk=stream.pk).update(created_at=at)
    services.stream_mark_started(stream=stream, at=at)
    return stream


def active(stream: Stream) -> bool:
    return Stream.objects.get(pk=stream.pk).end_time is None


def test_a_database_outage_longer_than_the_window_ends_no_live_call(account: Account) -> None:
    """Every heartbeat is 100 s old when the database comes back (the window is 60 s): the sweep
    only suspects; the process beats again (it retries every second) and nothing is ended."""
    t0 = timezone.now()
    stream = held_call(account, "hub-a#1", at=t0)
    HubProcess.objects.create(server_id="hub-a#1", heartbeat_at=t0, calls=[stream.call_id])
    back = t0 + timedelta(seconds=100)
    assert orphans.streams_close_orphaned(now=back) == 0
    assert HubProcess.objects.get(server_id="hub-a#1").suspected_at == back
    assert services.hub_heartbeat(server_id="hub-a#1", live_calls=1, capacity=10, calls=[stream.call_id])
    later = timezone.now() + timedelta(seconds=orphans.fence_after_seconds() + 1)
    assert orphans.streams_close_orphaned(now=later) == 0
    assert active(stream)
    assert HubProcess.objects.get(server_id="hub-a#1").fenced_at is None


def test_a_lease_silent_through_suspicion_is_fenced_and_its_next_beat_learns_it(account: Account) -> None:
    t0 = timezone.now()
    stream = held_call(account, "hub-a#1", at=t0)
    HubProcess.objects.create(server_id="hub-a#1", heartbeat_at=t0, calls=[stream.call_id])
    suspected = t0 + timedelta(seconds=61)
    assert orphans.streams_close_orphaned(now=suspected) == 0
    fenced = suspected + timedelta(seconds=orphans.fence_after_seconds())
    assert orphans.streams_close_orphaned(now=fenced) == 1
    row = Stream.objects.get(pk=stream.pk)
    assert row.hangup_reason == "Connection error" and row.end_time == t0  # its last heartbeat
    assert row.last_error == "hub process hub-a#1 stopped responding"
    # the stalled process wakes up: its lease is gone, it must stop relaying
    assert not services.hub_heartbeat(server_id="hub-a#1", live_calls=1, capacity=10, calls=[stream.call_id])
    lease = services.hub_lease(server_id="hub-a#1", live_calls=1, capacity=10, relays={stream.call_id: []})
    assert not lease.held


def test_calls_a_live_process_no_longer_holds_are_closed(account: Account) -> None:
    t0 = timezone.now() - timedelta(seconds=300)
    kept = held_call(account, "hub-a#1", at=t0)
    lost = held_call(account, "hub-a#1", at=t0)
    services.hub_heartbeat(server_id="hub-a#1", live_calls=1, capacity=10, calls=[kept.call_id])
    assert orphans.streams_close_orphaned() == 1
    assert active(kept)
    row = Stream.objects.get(pk=lost.pk)
    assert row.hangup_reason == "Connection error" and row.last_error == "hub process hub-a#1 no longer holds this call"
    assert Call.objects.get(pk=lost.call_id).status == Call.Status.ENDED
    assert Call.objects.get(pk=kept.call_id).status == Call.Status.LIVE


def test_the_lease_check_tells_the_holder_what_others_changed(account: Account) -> None:
    t0 = timezone.now()
    stopped = held_call(account, "hub-a#1", at=t0)
    new = services.stream_create(
        call=stopped.call, params=validate_stream_params({"service_url": "ws://127.0.0.1:9/new"}), notify_session=False
    )
    hung = held_call(account, "hub-a#1", at=t0)
    services.stream_end(stream=stopped, reason=Stream.Reason.API_REQUEST, notify_session=False)
    services.call_end(call=hung.call, notify_session=False)
    relays = {stopped.call_id: [str(stopped.stream_id)], hung.call_id: [str(hung.stream_id)]}
    lease = services.hub_lease(server_id="hub-a#1", live_calls=2, capacity=10, relays=relays)
    assert lease.held
    assert lease.ended_calls == [hung.call_id]
    assert lease.ended_streams == {str(stopped.stream_id): "API request", str(hung.stream_id): "Call hangup"}
    assert lease.unknown_streams == {stopped.call_id: [str(new.stream_id)]}
    assert HubProcess.objects.get(server_id="hub-a#1").calls == sorted(relays)


def test_a_stream_left_active_on_an_ended_call_is_closed(account: Account) -> None:
    t0 = timezone.now() - timedelta(seconds=300)
    stream = held_call(account, "hub-a#1", at=t0)
    Call.objects.filter(pk=stream.call_id).update(status=Call.Status.ENDED, ended_at=t0 + timedelta(seconds=5))
    services.hub_heartbeat(server_id="hub-a#1", live_calls=0, capacity=10, calls=[])
    assert orphans.streams_close_orphaned() == 1
    row = Stream.objects.get(pk=stream.pk)
    assert row.hangup_reason == "Call hangup" and row.end_time == t0 + timedelta(seconds=5)
