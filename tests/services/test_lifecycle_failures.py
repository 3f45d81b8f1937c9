"""Every stream ends exactly once, even when things race or fail (issue 15 §3, §4).

Real database, real threads; the control messages go through the configured channel layer.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError, close_old_connections, connection, connections, transaction
from django.utils import timezone

from streamhub.dbguard import bound_session
from streams import services
from streams.core.validation import validate_stream_params
from streams.live import dbasync
from streams.models import Account, Call, Stream

pytestmark = pytest.mark.django_db(transaction=True)


def live_call(account: Account) -> Call:
    return services.call_open(account=account, call_uuid=uuid.uuid4())


def params(n: int = 0) -> Any:
    return validate_stream_params({"service_url": f"ws://127.0.0.1:9/ws/{n}"})


@pytest.mark.parametrize("session", [False, True], ids=["api-hang-up", "session-hang-up"])
def test_a_hangup_racing_a_rest_start_never_leaves_a_stream_on_an_ended_call(account: Account, session: bool) -> None:
    """100 races of `call_end` (the gateway hangs up) against `stream_create` (a REST start):
    the start is either refused (CallNotLive) or its stream is ended with the call. The
    session's hang-up (with its own stream's end) is one statement without the call's lock on
    PostgreSQL: its check for streams left after the end is what catches the racing start."""
    refused = ended_with_call = 0
    for _ in range(100):
        call = live_call(account)
        ends = []
        if session:
            own = services.stream_create(call=call, params=params(1), notify_session=False)
            ends = [{"stream": own, "reason": Stream.Reason.CALL_HANGUP}]
        barrier = threading.Barrier(2)
        outcome: dict[str, Any] = {}

        def start(call: Call = call, outcome: dict[str, Any] = outcome, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                outcome["stream"] = services.stream_create(call=call, params=params(), notify_session=False)
            except services.CallNotLive:
                outcome["refused"] = True
            finally:
                connection.close()

        def hangup(call: Call = call, barrier: threading.Barrier = barrier, ends: list[Any] = ends) -> None:
            try:
                barrier.wait()
                services.call_end(call=call, notify_session=False, stream_ends=ends)
            finally:
                connection.close()

        threads = [threading.Thread(target=start), threading.Thread(target=hangup)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert Call.objects.get(pk=call.pk).status == Call.Status.ENDED
        if outcome.get("refused"):
            refused += 1
            assert Stream.objects.filter(call=call).count() == len(ends)
        else:
            row = Stream.objects.get(pk=outcome["stream"].pk)
            assert row.end_time is not None and row.hangup_reason == "Call hangup", row.status
            ended_with_call += 1
    assert not Stream.objects.filter(end_time__isnull=True).exists()
    print(f"\n100 races: {refused} starts refused, {ended_with_call} ended with the call")


def test_an_end_that_wins_the_race_with_the_start_write_still_records_and_bills_the_start(account: Account) -> None:
    call = live_call(account)
    stream = services.stream_create(call=call, params=params(), notify_session=False)
    sent_start = timezone.now() - timedelta(seconds=90)  # `start` went out 90 s ago; its write was lost
    assert services.stream_end(
        stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False, started_at=sent_start
    )
    row = Stream.objects.get(pk=stream.pk)
    assert row.start_time == sent_start and row.bill_duration >= 90 and row.rounded_bill_duration == 120
    assert row.billed_amount > 0
    events = list(row.events.values_list("event", flat=True))
    assert events == ["StreamCreated", "StartStream", "StopStream"]
    # the relay's own (late) start write is then a no-op
    assert not services.stream_mark_started(stream=stream, at=sent_start)
    assert row.events.filter(event="StartStream").count() == 1


def test_a_dead_process_is_billed_to_its_last_heartbeat_not_to_the_sweep(account: Account, settings: Any) -> None:
    from streams import orphans
    from streams.models import HubProcess

    settings.STREAMHUB_ORPHAN_AFTER_SECONDS = 60
    started = timezone.now()
    call = services.call_open(account=account, call_uuid=uuid.uuid4(), server_id="hub-killed#1")
    stream = services.stream_create(call=call, params=params(), notify_session=False)
    services.stream_mark_started(stream=stream, at=started)
    last_beat = started + timedelta(seconds=10)
    HubProcess.objects.create(server_id="hub-killed#1", heartbeat_at=last_beat, calls=[call.pk])
    sweep_at = started + timedelta(seconds=200)
    orphans.streams_close_orphaned(now=sweep_at)  # suspects
    assert orphans.streams_close_orphaned(now=sweep_at + timedelta(seconds=orphans.fence_after_seconds())) == 1
    row = Stream.objects.get(pk=stream.pk)
    assert row.end_time == last_beat and row.bill_duration == 10 and row.rounded_bill_duration == 60
    assert row.hangup_reason == "Connection error"
    assert Call.objects.get(pk=call.pk).ended_at == last_beat


@contextlib.contextmanager
def row_locked_elsewhere(stream: Stream) -> Iterator[None]:
    """Another connection holds the stream's row lock for the block (an admin query, a stuck transaction)."""
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        try:
            with transaction.atomic():
                list(Stream.objects.select_for_update().filter(pk=stream.pk))
                locked.set()
                release.wait(30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        yield
    finally:
        release.set()
        holder.join(30)


def test_a_stuck_row_lock_makes_the_end_fail_fast_and_a_retry_finishes_it(account: Account, settings: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("lock_timeout is a PostgreSQL setting")
    settings.STREAMHUB_DB_LOCK_TIMEOUT_SECONDS = 0.5
    call = live_call(account)
    stream = services.stream_create(call=call, params=params(), notify_session=False)
    with row_locked_elsewhere(stream):
        began = time.monotonic()
        with pytest.raises(OperationalError):
            services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False)
        assert time.monotonic() - began < 5  # not until the lock is released
    assert services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False)
    assert Stream.objects.get(pk=stream.pk).events.filter(event="StopStream").count() == 1


def test_a_stuck_row_lock_makes_a_one_statement_start_fail_fast_on_a_bounded_session(
    account: Account, settings: Any
) -> None:
    """The hub's database threads bound their sessions (dbguard.bound_session), so the one-statement
    steps (streams/pgwrite.py), which run outside any transaction block, are bounded too."""
    if connection.vendor != "postgresql":
        pytest.skip("lock_timeout is a PostgreSQL setting")
    settings.STREAMHUB_DB_LOCK_TIMEOUT_SECONDS = 0.5
    call = live_call(account)
    stream = services.stream_create(call=call, params=params(), notify_session=False)
    try:
        with row_locked_elsewhere(stream):
            bound_session()
            began = time.monotonic()
            with pytest.raises(OperationalError):
                services.stream_mark_started(stream=stream)
            assert time.monotonic() - began < 5  # not until the lock is released
    finally:
        connections.close_all()  # this session's limits end with it
    assert services.stream_mark_started(stream=stream)
    assert Stream.objects.get(pk=stream.pk).events.filter(event="StartStream").count() == 1


def test_a_connection_used_a_moment_ago_is_not_health_checked_again() -> None:
    """streams.live.dbasync: Django checks a persistent connection (`SELECT 1`) at its first use
    after each close_old_connections; a hop skips that when its connection served one less
    than HEALTHY_SECONDS ago, and checks it when it has been idle longer."""
    checks = []
    real = connection.is_usable

    def counted() -> bool:
        checks.append(1)
        return real()

    def hop() -> int:
        close_old_connections()  # what Channels runs around each hop
        return dbasync._bounded(lambda: Account.objects.count())

    hop()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(connection, "is_usable", counted)
        hop()
        assert checks == []  # used a moment ago
        setattr(connection, dbasync._USED_AT, (connection.connection, time.monotonic() - dbasync.HEALTHY_SECONDS - 1))
        hop()
        assert checks == [1]  # idle for longer: checked
