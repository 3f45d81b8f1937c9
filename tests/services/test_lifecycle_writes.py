"""A call's lifecycle writes are few: one transaction per step, debug rows in one INSERT.

Counted in statements, without the savepoints a test's own transaction turns each atomic
block into: the set-up and hang-up CPU of a call is mostly the ORM's per statement
(bench/setup_cpu.py).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from streams import services
from streams.core.validation import validate_stream_params
from streams.models import Account, Call, Stream, StreamEvent

URL = "wss://bot.example.com/ws"


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
    with statements(3):  # the call, both streams, both StreamCreated rows
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
    with statements(2):
        assert services.stream_mark_started(stream=stream, log_entries=log)
    assert events(stream) == ["StreamCreated", "ConnectAttemptFailed", "Connected", "StartStream"]
    assert Stream.objects.get(pk=stream.pk).status == Stream.Status.IN_PROGRESS


def test_the_end_takes_the_last_debug_rows_and_the_counters_into_its_transaction(stream: Stream) -> None:
    services.stream_mark_started(stream=stream)
    stats = {"frames_sent": 123, "played_ms": 40, "buffer_samples": [[0.0, 0.0]]}
    # the debug rows, the locked read, the end with the counters, StopStream
    with statements(4):
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
