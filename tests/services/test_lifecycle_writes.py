"""A call's lifecycle writes are few: one transaction per step, debug rows in one INSERT;
on PostgreSQL the set-up and the start are one statement each (streams/pgwrite.py).

Counted in statements, without the savepoints a test's own transaction turns each atomic
block into: the set-up and hang-up CPU of a call is mostly the ORM's per statement
(bench/setup_cpu.py).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from streams import services
from streams.core.validation import validate_stream_params
from streams.models import Account, Call, Stream, StreamEvent

URL = "wss://bot.example.com/ws"
ONE_STATEMENT = connection.vendor == "postgresql"  # streams/pgwrite.py


@contextlib.contextmanager
def statements(expected: int) -> Iterator[None]:
    with CaptureQueriesContext(connection) as context:
        yield
    sql = [q["sql"] for q in context.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]
    assert len(sql) == expected, "\n".join(sql)


def events(stream: Stream) -> list[str]:
    return list(StreamEvent.objects.filter(stream=stream).order_by("id").values_list("event", flat=True))


def test_the_call_and_its_streams_are_three_inserts(account: Account) -> None:
    params = [validate_stream_params({"service_url": URL}), validate_stream_params({"service_url": URL + "/2"})]
    with statements(1 if ONE_STATEMENT else 3):  # the call, both streams, both StreamCreated rows
        call, created = services.call_open_with_streams(account=account, call_uuid=uuid.uuid4(), streams=params)
    assert call.status == Call.Status.LIVE
    assert [s.service_url for s in created if isinstance(s, Stream)] == [URL, URL + "/2"]
    assert all(events(s) == ["StreamCreated"] for s in created if isinstance(s, Stream))


def test_a_duplicate_url_in_one_metadata_is_a_conflict_not_a_failed_transaction(account: Account) -> None:
    params = [validate_stream_params({"service_url": URL})] * 2
    call, created = services.call_open_with_streams(account=account, call_uuid=uuid.uuid4(), streams=params)
    assert isinstance(created[0], Stream) and isinstance(created[1], services.StreamConflict)
    assert Stream.objects.filter(call=call).count() == 1


@pytest.fixture
def stream(account: Account) -> Stream:
    _, created = services.call_open_with_streams(
        account=account, call_uuid=uuid.uuid4(), streams=[validate_stream_params({"service_url": URL})]
    )
    assert isinstance(created[0], Stream)
    return created[0]


def test_queued_debug_rows_and_the_start_are_one_update_and_one_insert(stream: Stream) -> None:
    log = [("ConnectAttemptFailed", "refused", {"Attempt": 1}), ("Connected", "", {"Attempt": 2})]
    with statements(1 if ONE_STATEMENT else 2):  # no read of the stream's call or account either
        assert services.stream_mark_started(stream=stream, log_entries=log)
    assert events(stream) == ["StreamCreated", "ConnectAttemptFailed", "Connected", "StartStream"]
    assert Stream.objects.get(pk=stream.pk).status == Stream.Status.IN_PROGRESS


def test_the_end_takes_the_last_debug_rows_and_the_counters_into_its_transaction(stream: Stream) -> None:
    services.stream_mark_started(stream=stream)
    stats = {"frames_sent": 123, "played_ms": 40, "buffer_samples": [[0.0, 0.0]]}
    # the locked read, the end with the counters, the queued rows and StopStream in one INSERT
    with statements(3):
        assert services.stream_end(
            stream=stream,
            reason=Stream.Reason.CALL_HANGUP,
            stats=stats,
            notify_session=False,
            log_entries=[("DegradedStream", "", {"BufferUsage": 30})],
        )
    row = Stream.objects.get(pk=stream.pk)
    assert row.frames_sent == 123 and row.played_ms == 40 and row.hangup_reason == "Call hangup"
    assert events(stream)[-2:] == ["DegradedStream", "StopStream"]


def test_ending_the_call_reads_nothing_it_does_not_need(stream: Stream) -> None:
    services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False)
    call = stream.call
    # the call's row read under its lock, the conditional UPDATE, the streams still open (none);
    # no read of the account, the application or the streams' calls
    with statements(3):
        services.call_end(call=call, notify_session=False)
    assert call.status == Call.Status.ENDED and Call.objects.get(pk=call.pk).status == Call.Status.ENDED
    again = Call.objects.get(pk=call.pk)
    services.call_end(call=again, notify_session=False)  # ended already: the instance shows the first end
    assert again.ended_at == Call.objects.get(pk=call.pk).ended_at


def test_a_step_opens_no_savepoint_of_its_own_for_the_debug_rows_and_callbacks_inside_it(account: Account) -> None:
    """Inside the test's transaction the step's own block is one savepoint; the debug rows and
    the outbox row it writes open none (two statements each before)."""
    _, created = services.call_open_with_streams(
        account=account,
        call_uuid=uuid.uuid4(),
        streams=[validate_stream_params({"service_url": URL, "status_callback_url": "https://cb.example.com/s"})],
    )
    stream = created[0]
    assert isinstance(stream, Stream)
    with CaptureQueriesContext(connection) as context:
        services.stream_mark_started(stream=stream, log_entries=[("Connected", "", {"Attempt": 1})])
        services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False)
    savepoints = [q["sql"] for q in context.captured_queries if q["sql"].startswith("SAVEPOINT")]
    assert len(savepoints) == 2, savepoints  # one per step: the test's transaction around each block
    assert events(stream) == ["StreamCreated", "Connected", "StartStream", "StopStream"]
    outbox = stream.callback_deliveries.order_by("id").values_list("event", flat=True)
    assert list(outbox) == ["StartStream", "StopStream"]


def test_a_hang_up_writes_the_streams_ends_and_the_calls_in_one_transaction(account: Account) -> None:
    params = [validate_stream_params({"service_url": URL}), validate_stream_params({"service_url": URL + "/2"})]
    call, created = services.call_open_with_streams(account=account, call_uuid=uuid.uuid4(), streams=params)
    first, second = (s for s in created if isinstance(s, Stream))
    services.stream_mark_started(stream=first)
    at = call.started_at + timedelta(seconds=61)
    ends = [
        {
            "stream": first,
            "reason": Stream.Reason.CALL_HANGUP,
            "stats": {"frames_sent": 3050, "played_ms": 0, "buffer_samples": [[0.0, 0.0]]},
            "at": at,
            "log_entries": [("DegradedStream", "", {"BufferUsage": 30})],
        },
        # its `start` went out but the StartStream write had not landed: recorded first, and billed
        {"stream": second, "reason": Stream.Reason.CALL_HANGUP, "started_at": call.started_at, "at": at},
    ]
    with CaptureQueriesContext(connection) as context:
        ended = services.call_end(call=call, notify_session=False, at=at, stream_ends=ends)
    sql = [q["sql"] for q in context.captured_queries]
    assert sum(s.startswith("SAVEPOINT") for s in sql) == 1, sql  # one block (the test's transaction around it)
    assert ended == [first, second]
    assert Call.objects.get(pk=call.pk).status == Call.Status.ENDED
    rows = {s.pk: s for s in Stream.objects.filter(call=call)}
    assert rows[first.pk].frames_sent == 3050 and rows[first.pk].hangup_reason == "Call hangup"
    assert rows[first.pk].end_time == at and rows[first.pk].rounded_bill_duration == 120
    assert rows[second.pk].status == Stream.Status.STOPPED and rows[second.pk].start_time == call.started_at
    assert events(first)[-2:] == ["DegradedStream", "StopStream"]
    assert events(second) == ["StreamCreated", "StartStream", "StopStream"]


def test_a_stream_row_gone_before_the_hang_up_does_not_stop_the_call_from_ending(stream: Stream) -> None:
    call = stream.call
    Stream.objects.filter(pk=stream.pk).delete()
    end = {"stream": stream, "reason": Stream.Reason.CALL_HANGUP}
    assert services.call_end(call=call, notify_session=False, stream_ends=[end]) == []
    assert Call.objects.get(pk=call.pk).status == Call.Status.ENDED
    with pytest.raises(Stream.DoesNotExist):  # alone, the end of a gone stream still says so
        services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False)
