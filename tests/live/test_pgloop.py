"""Lifecycle statements on the event loop's own PostgreSQL connections (streams/live/pgloop.py).

Real PostgreSQL, the loop's real connections: the same steps as a database thread runs write the
same rows; the connections carry the lifecycle's limits, stay bounded in number, and are replaced
when they fail, are cancelled mid-statement or were closed by the server while idle.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from django.db import ProgrammingError, connection

from streams import pgwrite, services
from streams.core.validation import validate_stream_params
from streams.live import pgloop
from streams.models import Account, Call, Stream, StreamEvent
from tests.support import db

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the loop's connections are PostgreSQL's"),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
async def pools() -> AsyncIterator[Callable[..., pgloop.LoopPool]]:
    """LoopPool(size) for a test; every one closed after it, and the loop's own (pgloop.run's)."""
    made: list[pgloop.LoopPool] = []

    def make(size: int = pgloop.POOL_SIZE) -> pgloop.LoopPool:
        made.append(pgloop.LoopPool(size))
        return made[-1]

    yield make
    for pool in [*made, pgloop.pool()]:
        await pool.close()


def fields(account: Account) -> dict[str, Any]:
    params = [
        validate_stream_params({"service_url": "wss://bot.example.com/ws", "audio_track": "both"}),
        validate_stream_params({"service_url": "wss://bot.example.com/ws"}),  # a conflict: not written
    ]
    return {"account": account, "streams": params, "from_number": "+15550001", "server_id": "test#1"}


STREAM_COLUMNS = ("status", "audio_track", "hangup_reason", "rounded_bill_duration")


def rows(call: Call) -> list[tuple[Any, ...]]:
    streams = Stream.objects.filter(call=call).order_by("id")
    return [
        *Call.objects.filter(pk=call.pk).values_list("status", "from_number", "server_id", "gateway_metadata"),
        *(
            (*values, end is None)
            for *values, end in streams.values_list(
                "status", "audio_track", "hangup_reason", "rounded_bill_duration", "end_time"
            )
        ),
        *StreamEvent.objects.filter(stream__call=call).order_by("id").values_list("event", "error"),
    ]


async def lifecycle(account: Account, run: Any) -> Call:
    """Set-up, start and plain hang-up of a call, each step driven by `run`."""
    call, created = await run(services.call_open_step(call_uuid=uuid.uuid4(), **fields(account)))
    stream = created[0]
    assert isinstance(stream, Stream) and isinstance(created[1], services.StreamConflict)
    entries = [("Connected", "", {"Attempt": 1})]
    assert await run(services.stream_mark_started_step(stream=stream, log_entries=entries))
    ends = [{"stream": stream, "reason": Stream.Reason.CALL_HANGUP, "stats": {"frames_sent": 10}}]
    assert services.plain_hang_up_possible(call, ends)
    ended, left, hung_up = await run(services.plain_hang_up_step(call=call, at=None, stream_ends=ends))
    assert ended == [stream] and left == [] and hung_up
    assert not await run(services.has_active_streams_step(call.pk))
    return call


async def test_the_loop_writes_what_a_database_thread_writes(account: Account, pools: Any) -> None:
    threaded = await lifecycle(account, db(pgwrite.run))
    looped = await lifecycle(account, pgloop.run)
    assert await db(rows)(looped) == await db(rows)(threaded)
    events = await db(lambda: list(StreamEvent.objects.filter(stream__call=looped).values_list("event")))()
    assert [e for (e,) in events] == ["StreamCreated", "Connected", "StartStream", "StopStream"]


async def test_the_loop_connections_have_the_lifecycle_limits(pools: Any) -> None:
    pool = pools()
    limits = await pool.fetch("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')", [])
    assert limits == [("5s", "15s")]


async def test_statements_share_at_most_the_pool_size_of_connections(pools: Any) -> None:
    pool = pools(size=2)
    results = await asyncio.gather(*(pool.fetch("SELECT pg_backend_pid() FROM pg_sleep(0.05)", []) for _ in range(8)))
    assert len({r[0][0] for r in results}) == 2
    assert pool._open == 2 and len(pool._idle) == 2
    await pool.close()
    assert pool._open == 0


async def test_an_error_is_djangos_and_its_connection_is_replaced(pools: Any) -> None:
    pool = pools(size=1)
    first = await pool.fetch("SELECT pg_backend_pid()", [])
    with pytest.raises(ProgrammingError):
        await pool.fetch("SELECT no_such_column FROM streams_call", [])
    assert pool._open == 0
    second = await pool.fetch("SELECT pg_backend_pid()", [])
    assert second != first


async def test_a_statement_cancelled_midway_loses_its_connection(pools: Any) -> None:
    pool = pools(size=1)
    task = asyncio.ensure_future(pool.fetch("SELECT pg_sleep(5)", []))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool._open == 0 and not pool._idle  # not reused: its state is unknown
    assert await pool.fetch("SELECT 1", []) == [(1,)]


async def test_a_cancellation_during_the_idle_check_gives_the_slot_back(
    monkeypatch: pytest.MonkeyPatch, pools: Any
) -> None:
    """A call's set-up cancelled (its gateway gone) while its connection's `SELECT 1` is out must
    not take the connection's slot with it: four such and every lifecycle statement would wait."""
    monkeypatch.setattr(pgloop, "HEALTHY_SECONDS", 0.0)
    pool = pools(size=1)
    await pool.fetch("SELECT 1", [])
    for _ in range(3):
        task = asyncio.ensure_future(pool.fetch("SELECT 2", []))
        await asyncio.sleep(0)  # the task is now waiting for the idle connection's `SELECT 1`
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool._open == 0 and not pool._idle
    assert await asyncio.wait_for(pool.fetch("SELECT 3", []), 5) == [(3,)]


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    monkeypatch: pytest.MonkeyPatch, pools: Any
) -> None:
    monkeypatch.setattr(pgloop, "HEALTHY_SECONDS", 0.0)  # every idle connection is checked first
    pool = pools(size=1)
    [(pid,)] = await pool.fetch("SELECT pg_backend_pid()", [])
    await db(terminate)(pid)
    [(again,)] = await pool.fetch("SELECT pg_backend_pid()", [])
    assert again != pid


def terminate(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
