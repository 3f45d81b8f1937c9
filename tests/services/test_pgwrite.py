"""The one-statement lifecycle steps on PostgreSQL (streams/pgwrite.py) write what the ORM writes.

Each step runs twice, once one-statement and once through the ORM (pgwrite switched off), and
the rows are compared column by column, less what differs by nature (ids, UUIDs, times).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from streams import pgwrite, services
from streams.core import application as plivo_app
from streams.core.validation import validate_stream_params
from streams.models import Account, Call, CallEvent, Stream, StreamEvent

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="one-statement steps are PostgreSQL's")

VARYING = {
    "id",
    "call",
    "stream",
    "call_uuid",
    "stream_id",
    "started_at",
    "created_at",
    "start_time",
    "timestamp",
    "ended_at",  # each call's `at` is its own start + 61 s (the tests compare it so)
    "end_time",
}
URL = "wss://bot.example.com/ws"


def columns(row: Any) -> dict[str, Any]:
    values = {f.attname: getattr(row, f.attname) for f in row._meta.concrete_fields}
    return {k: v for k, v in values.items() if k not in VARYING and k.removesuffix("_id") not in VARYING}


def event_rows(stream: Stream) -> list[tuple[str, str, dict[str, str]]]:
    rows = StreamEvent.objects.filter(stream=stream).order_by("id")
    return [
        (e.event, e.error, {k: v for k, v in e.params.items() if k not in {"StreamID", "CallUUID", "Timestamp"}})
        for e in rows
    ]


def open_call(account: Account, *, one_statement: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Call, list[Any]]:
    monkeypatch.setattr(pgwrite, "usable", lambda: one_statement)
    params = [
        validate_stream_params({"service_url": URL, "bidirectional": True, "extra_headers": "a=1"}),
        validate_stream_params({"service_url": URL + "/2", "audio_track": "both", "stream_timeout": 120}),
        validate_stream_params({"service_url": URL}),  # a conflict: not written
    ]
    metadata = {"raw": {"x": [1, "é"]}, "playback": False, "playbackNote": "no playback here"}
    return services.call_open_with_streams(
        account=account,
        call_uuid=uuid.uuid4(),
        streams=params,
        from_number="+15550001",
        to_number="+15550002",
        metadata=metadata,
        server_id="test#1",
        control_channel="hub.x!y",
    )


def test_a_call_set_up_writes_the_rows_the_orm_writes(account: Account, monkeypatch: pytest.MonkeyPatch) -> None:
    fast_call, fast = open_call(account, one_statement=True, monkeypatch=monkeypatch)
    orm_call, orm = open_call(account, one_statement=False, monkeypatch=monkeypatch)
    assert isinstance(fast[2], services.StreamConflict) and isinstance(orm[2], services.StreamConflict)
    assert columns(Call.objects.get(pk=fast_call.pk)) == columns(Call.objects.get(pk=orm_call.pk))
    assert fast_call.pk is not None and not fast_call._state.adding
    for mine, theirs in zip(fast[:2], orm[:2], strict=True):
        stored = Stream.objects.get(pk=mine.pk)
        assert stored.stream_id == mine.stream_id and stored.call_id == fast_call.pk
        assert columns(stored) == columns(Stream.objects.get(pk=theirs.pk))
        assert event_rows(stored) == event_rows(theirs)
    # the bidirectional stream on a gateway without playback: one-way, with its PlaybackUnavailable row
    assert [e[0] for e in event_rows(fast[0])] == ["StreamCreated", "PlaybackUnavailable"]
    assert not Stream.objects.get(pk=fast[0].pk).bidirectional


def test_a_start_writes_the_rows_the_orm_writes_and_only_once(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued = [("ConnectAttemptFailed", "refused", {"Attempt": 1}), ("Connected", "", {"Attempt": 2})]
    streams = []
    for one_statement in (True, False):
        _, created = open_call(account, one_statement=one_statement, monkeypatch=monkeypatch)
        stream = created[1]
        assert services.stream_mark_started(stream=stream, log_entries=queued)
        assert stream.status == Stream.Status.IN_PROGRESS and stream.start_time is not None
        # a second start (a retried write): no second StartStream, the queued rows still land
        assert not services.stream_mark_started(stream=stream, log_entries=[("Late", "", {})])
        streams.append(stream)
    fast, orm = (Stream.objects.get(pk=s.pk) for s in streams)
    assert fast.start_time == streams[0].start_time
    assert columns(fast) == columns(orm)
    assert event_rows(fast) == event_rows(orm)
    assert [e[0] for e in event_rows(fast)] == [
        "StreamCreated",
        "ConnectAttemptFailed",
        "Connected",
        "StartStream",
        "Late",
    ]


def test_the_set_up_statement_binds_its_values_on_the_server(account: Account, monkeypatch: pytest.MonkeyPatch) -> None:
    """Django's cursors quote each value into the SQL text (about 5 us a value); the lifecycle
    statements send theirs as parameters, as PostgreSQL's own view of the session shows."""
    open_call(account, one_statement=True, monkeypatch=monkeypatch)
    pid = connection.connection.info.backend_pid
    with psycopg.connect(connection.connection.info.dsn, autocommit=True) as other:
        row = other.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    assert row is not None and row[0].startswith("WITH c AS (INSERT"), row
    assert "$1" in row[0] and "+15550001" not in row[0]  # the call's from_number went as a parameter


def test_a_taken_call_uuid_fails_the_whole_statement(account: Account, monkeypatch: pytest.MonkeyPatch) -> None:
    call, _ = open_call(account, one_statement=True, monkeypatch=monkeypatch)
    before = Stream.objects.count()
    with pytest.raises(IntegrityError), transaction.atomic():
        services.call_open_with_streams(
            account=account, call_uuid=call.call_uuid, streams=[validate_stream_params({"service_url": URL})]
        )
    assert Stream.objects.count() == before  # nothing of the refused call was written


def test_a_hang_up_writes_the_rows_the_orm_writes(account: Account, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two streams ended by the session (one started, one dropped) and the call, both ways."""
    calls = []
    for one_statement in (True, False):
        call, created = open_call(account, one_statement=one_statement, monkeypatch=monkeypatch)
        first, second = created[0], created[1]
        services.stream_mark_started(stream=first)
        at = call.started_at + timedelta(seconds=61)
        ends = [
            {
                "stream": first,
                "reason": Stream.Reason.CALL_HANGUP,
                "stats": {"frames_sent": 3050, "played_ms": 20, "buffer_samples": [[0.0, 0.5]]},
                "at": at,
                "log_entries": [("DegradedStream", "", {"BufferUsage": 30})],
            },
            {"stream": second, "reason": Stream.Reason.CONNECTION_ERROR, "error": "refused", "at": at},
        ]
        ended = services.call_end(call=call, notify_session=False, at=at, stream_ends=ends)
        assert [s.pk for s in ended] == [first.pk, second.pk]
        assert call.status == Call.Status.ENDED and call.ended_at == at
        assert first.end_time == at and first.billed_amount == Stream.objects.get(pk=first.pk).billed_amount
        calls.append((call, first, second))
        # ended already: a second hang-up (a retried write) ends nothing and writes no second StopStream
        assert services.call_end(call=call, notify_session=False, at=at, stream_ends=ends) == []
    (fast_call, *fast), (orm_call, *orm) = calls
    for call, *_ in calls:
        row = Call.objects.get(pk=call.pk)
        assert row.ended_at == row.started_at + timedelta(seconds=61)
    assert columns(Call.objects.get(pk=fast_call.pk)) == columns(Call.objects.get(pk=orm_call.pk))
    for mine, theirs in zip(fast, orm, strict=True):
        assert columns(Stream.objects.get(pk=mine.pk)) == columns(Stream.objects.get(pk=theirs.pk))
        assert event_rows(mine) == event_rows(theirs)
    # the queued row, then the end; the retry wrote its queued row again (as the ORM way does) and no end
    assert [e[0] for e in event_rows(fast[0])][-3:] == ["DegradedStream", "StopStream", "DegradedStream"]
    assert [e[:2] for e in event_rows(fast[1])][1:] == [("DroppedStream", "refused")]
    assert Stream.objects.get(pk=fast[0].pk).frames_sent == 3050


def test_a_stream_ended_elsewhere_meanwhile_is_left_as_it_was_ended(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's instance still says in-progress, but a REST stop ended the row: the hang-up
    does not end it again; it stores the counters and the queued rows, as the ORM way does."""
    call, created = open_call(account, one_statement=True, monkeypatch=monkeypatch)
    stream = created[1]
    services.stream_mark_started(stream=stream)
    Stream.objects.get(pk=stream.pk).mark_ended(reason=Stream.Reason.API_REQUEST)  # elsewhere
    end = {
        "stream": stream,
        "reason": Stream.Reason.CALL_HANGUP,
        "stats": {"frames_sent": 7, "played_ms": 0, "buffer_samples": []},
        "log_entries": [("Queued", "", {})],
    }
    assert services.call_end(call=call, notify_session=False, stream_ends=[end]) == [created[0]]
    row = Stream.objects.get(pk=stream.pk)
    assert row.hangup_reason == "API request" and row.frames_sent == 7
    assert [e[0] for e in event_rows(row)] == ["StreamCreated", "StartStream", "Queued"]


def session_ends(streams: list[Any], at: Any) -> list[dict[str, Any]]:
    return [{"stream": s, "reason": Stream.Reason.CALL_HANGUP, "at": at, "stats": {"frames_sent": 5}} for s in streams]


def test_a_plain_hang_up_is_one_statement_without_a_lock_and_one_check(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No application, no recorded cause: the ends in autocommit, then the check for streams left."""
    call, created = open_call(account, one_statement=True, monkeypatch=monkeypatch)
    first, second = created[0], created[1]
    services.stream_mark_started(stream=first)
    at = call.started_at + timedelta(seconds=3)
    with CaptureQueriesContext(connection) as context:
        ended = services.call_end(call=call, notify_session=False, at=at, stream_ends=session_ends([first, second], at))
    sql = [q["sql"] for q in context.captured_queries]
    assert len(sql) == 2, sql  # no savepoint (no transaction block), no SELECT ... FOR UPDATE
    assert sql[0].startswith("WITH ") and "FOR UPDATE" not in " ".join(sql)
    assert ended == [first, second] and call.status == Call.Status.ENDED and call.ended_at == at
    assert Call.objects.get(pk=call.pk).status == Call.Status.ENDED
    assert {s.status for s in Stream.objects.filter(pk__in=[first.pk, second.pk])} == {Stream.Status.STOPPED}


def test_a_cause_recorded_elsewhere_sends_the_hang_up_the_locked_way(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API hang-up recorded its cause after the session read the call: the statement leaves the
    call live (its hangup request has work to do), and the locked step ends it and logs CallEnded."""
    call, created = open_call(account, one_statement=True, monkeypatch=monkeypatch)
    Call.objects.filter(pk=call.pk).update(hangup_cause_name=plivo_app.API_REQUEST.name)  # not in `call`
    at = call.started_at + timedelta(seconds=3)
    with CaptureQueriesContext(connection) as context:
        ended = services.call_end(call=call, notify_session=False, at=at, stream_ends=session_ends(created[:2], at))
    assert any("FOR UPDATE" in q["sql"] for q in context.captured_queries)
    assert ended == created[:2] and call.status == Call.Status.ENDED
    row = Call.objects.get(pk=call.pk)
    assert row.status == Call.Status.ENDED and row.ended_at == at
    assert list(CallEvent.objects.filter(call=row).values_list("event", flat=True)) == ["CallEnded"]
    assert StreamEvent.objects.filter(stream__in=created[:2], event="StopStream").count() == 2  # written once


def test_a_stream_started_by_rest_meanwhile_is_ended_after_a_plain_hang_up(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in the session's ends (its relay was not running yet): the check after the end finds it."""
    call, created = open_call(account, one_statement=True, monkeypatch=monkeypatch)
    late = services.stream_create(
        call=call, params=validate_stream_params({"service_url": URL + "/late"}), notify_session=False
    )
    at = call.started_at + timedelta(seconds=3)
    ended = services.call_end(call=call, notify_session=False, at=at, stream_ends=session_ends(created[:2], at))
    assert [s.pk for s in ended] == [created[0].pk, created[1].pk, late.pk]
    row = Stream.objects.get(pk=late.pk)
    assert row.status == Stream.Status.STOPPED and row.hangup_reason == "Call hangup"
