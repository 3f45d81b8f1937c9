"""A session's hang-up on PostgreSQL: the plain case on the event loop's connections, anything
else handed to services.call_end on a database thread, and a call still ends once with no stream
left on it (streams/live/session.py `_end`, streams/live/pgloop.py).

Real PostgreSQL; the session is real, its relays stand-ins that hand in their stream's end as
a StreamRelay's teardown does (`take_stream_end`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from streams import services
from streams.core import application as plivo_app
from streams.core.validation import validate_stream_params
from streams.live import pgloop
from streams.live.session import CallSession
from streams.models import Account, Call, CallEvent, Stream, StreamEvent
from tests.support import db

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the loop's way is PostgreSQL's"),
    pytest.mark.django_db(transaction=True),
]


class Link:
    async def send_text(self, text: str) -> None:
        pass

    async def close(self, code: int = 1000) -> None:
        pass


class Relay:
    """What the session's `_end` uses of a StreamRelay: stop() hands in the stream's end."""

    def __init__(self, session: CallSession, stream: Stream) -> None:
        self.session, self.stream = session, stream

    def stop(self, reason: str | None, error: str = "") -> None:
        end = {"stream": self.stream, "reason": reason or Stream.Reason.CALL_HANGUP, "stats": {"frames_sent": 50}}
        assert self.session.take_stream_end(end)

    async def wait(self) -> None:
        pass


def open_started(account: Account) -> tuple[Call, Stream]:
    params = [validate_stream_params({"service_url": "wss://bot.example.com/ws"})]
    call, created = services.call_open_with_streams(account=account, call_uuid=uuid.uuid4(), streams=params)
    stream = created[0]
    assert isinstance(stream, Stream)
    assert services.stream_mark_started(stream=stream)
    return call, stream


@pytest.fixture
async def session_for(account: Account) -> AsyncIterator[Callable[[], Any]]:
    """Sessions to end; afterwards the loop's connections and every connection a database thread
    opened meanwhile (the session's hand-over to services.call_end runs on the loop's executor,
    whose threads keep theirs) are closed, so PostgreSQL can drop the test database."""
    opened: list[BaseDatabaseWrapper] = []

    def track(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
        opened.append(connection)

    connection_created.connect(track)

    async def make() -> tuple[CallSession, Call, Stream]:
        call, stream = await db(open_started)(account)
        session = CallSession(account=account, link=Link(), gateway="test")  # type: ignore[arg-type]
        session.call = call
        session.relays[str(stream.stream_id)] = Relay(session, stream)  # type: ignore[assignment]
        return session, call, stream

    try:
        yield make
    finally:
        connection_created.disconnect(track)
        await pgloop.pool().close()
        for wrapper in opened:  # the driver's connection: Django's close() refuses other threads' wrappers
            if wrapper.connection is not None:  # (the thread is idle: nothing of its runs now)
                wrapper.connection.close()
                wrapper.connection = None  # its next use connects anew


def outcome(call_pk: int) -> tuple[str, list[tuple[str, str]], list[str]]:
    call = Call.objects.get(pk=call_pk)
    streams = [(s.hangup_reason, s.status) for s in Stream.objects.filter(call=call).order_by("id")]
    stops = list(StreamEvent.objects.filter(stream__call=call, event="StopStream").values_list("event", flat=True))
    return call.status, streams, stops


async def test_a_plain_hang_up_is_written_on_the_loop(session_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    session, call, _ = await session_for()

    def thread_way(**kwargs: Any) -> None:
        raise AssertionError("a plain hang-up went to a database thread")

    monkeypatch.setattr(services, "call_end", thread_way)
    await session.end()
    assert await db(outcome)(call.pk) == ("ended", [("Call hangup", "stopped")], ["StopStream"])
    assert pgloop.pool()._open >= 1


async def test_a_stream_started_by_rest_meanwhile_is_ended_too(session_for: Any) -> None:
    session, call, _ = await session_for()
    params = validate_stream_params({"service_url": "wss://other.example.com/ws"})
    await db(services.stream_create)(call=call, params=params, notify_session=False)
    await session.end()
    status, streams, _ = await db(outcome)(call.pk)
    assert status == "ended"
    assert streams == [("Call hangup", "stopped")] * 2  # no stream left on the ended call


async def test_a_cause_recorded_meanwhile_takes_the_locked_way_and_is_kept(session_for: Any) -> None:
    """An API hang-up recorded its cause on the row (the session's instance does not know): the
    loop's statement must not end the call, services.call_end does, under the row lock."""
    session, call, _ = await session_for()

    def record() -> None:
        services.call_record_hangup(call=Call.objects.get(pk=call.pk), cause=plivo_app.API_REQUEST, detail="REST")

    await db(record)()
    await session.end()
    assert await db(outcome)(call.pk) == ("ended", [("Call hangup", "stopped")], ["StopStream"])
    stored = await db(lambda: Call.objects.get(pk=call.pk))()
    assert stored.hangup_cause_name == plivo_app.API_REQUEST.name
    ends = await db(lambda: CallEvent.objects.filter(call_id=call.pk, event="CallEnded").count())()
    assert ends == 1  # the locked way's record of the end with its cause
