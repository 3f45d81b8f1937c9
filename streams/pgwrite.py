"""Lifecycle steps as one SQL statement each, on PostgreSQL (round 2 of performance, issue 19).

A call's set-up writes its Call row, its Stream rows and their StreamCreated debug rows; a
stream's start marks it in progress and writes its queued debug rows with StartStream.
Through the ORM each step is a transaction: BEGIN, the limits (dbguard), an INSERT or UPDATE
per table, COMMIT, and about 1.3-1.5 ms of a database thread's CPU, most of it the ORM
compiling statements (bench/setup_cpu.py). Here each step is one statement, its parts joined
by data-modifying CTEs: PostgreSQL runs a single statement atomically, so the step is still
all or nothing, in one round trip and with no transaction block around it.

The rows are the ORM's own: the model instances are built as before, and each column's value
is what the ORM would have sent (`Field.pre_save` and `get_db_prep_save`), cast to the
column's type, so defaults, JSON and UUIDs are stored exactly as `bulk_create` stores them.
Only PostgreSQL (`usable`); SQLite keeps the ORM path, and the test suite runs both.
"""

# ruff: noqa: S608  (the statements are built from the models' own table, column and type names; values are parameters)
from __future__ import annotations

import functools
from collections.abc import Generator, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import psycopg
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model

from streams.models import Call, Stream, StreamEvent


def usable() -> bool:
    return connection.vendor == "postgresql"


@functools.cache
def _spec(model: type[Model], skip: tuple[str, ...] = ()) -> tuple[tuple[Field[Any, Any], ...], str, str]:
    """A model's columns (less the primary key and `skip`): the fields, their quoted names, and a
    VALUES row of placeholders cast to their types. Built once: Field.db_type is not cheap."""
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key and f.attname not in skip)
    names = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    casts = ", ".join(f"CAST(%s AS {f.db_type(connection)})" for f in fields)
    return fields, names, casts


def _db() -> BaseDatabaseWrapper:
    """This thread's connection itself: `django.db.connection` is a proxy that looks the
    thread's connection up (an asgiref Local) on every attribute, and `get_db_prep_save` reads
    several per column: through the proxy that was most of a step's CPU (bench/setup_cpu.py)."""
    return connections[DEFAULT_DB_ALIAS]


def _fetch(db: BaseDatabaseWrapper, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """Run a lifecycle statement with its parameters bound on the server, return its rows.

    Django's psycopg cursors bind on the client (`server_side_binding` off, the default): each
    parameter is quoted into the SQL text in Python, about 5 us a value. These statements are
    ours, each value typed by its column or a cast, so they bind on the server instead
    (psycopg's `Cursor`, what Django's `server_side_binding` option uses), through Django's
    cursor wrapper (its error wrapping, execute wrappers and query log still see them). Not
    prepared: Django turns psycopg's prepared statements off for connection poolers' sake, and
    preparing saved little more (3.48 -> 3.34 ms, within the noise).
    bench/setup_cpu.py, the two ways alternating call by call in one process: 4.89 -> 4.35 ms a call."""
    db.close_if_health_check_failed()
    db.ensure_connection()
    with db.wrap_database_errors:
        raw: Any = psycopg.Cursor(db.connection)
    wrap = db.make_debug_cursor if db.queries_logged else db.make_cursor  # as BaseDatabaseWrapper.cursor() wraps
    with wrap(raw) as cursor:
        cursor.execute(sql, params)
        return cast(list[tuple[Any, ...]], cursor.fetchall())


T = TypeVar("T")
Rows = list[tuple[Any, ...]]
# A lifecycle step as a generator: it yields each statement (SQL, parameters), is sent its rows,
# and returns its outcome. `run` drives one on this thread's connection (a database thread);
# streams.live.pgloop drives the same generator on the event loop's own connections, so both
# ways run the same statements and the same decisions.
Step = Generator[tuple[str, list[Any]], Rows, T]


def run(step: Step[T]) -> T:
    """Run a step's statements on this thread's connection; its outcome."""
    db = _db()
    try:
        statement = next(step)
        while True:
            statement = step.send(_fetch(db, *statement))
    except StopIteration as done:
        return cast(T, done.value)


def _values(obj: Model, fields: tuple[Field[Any, Any], ...], params: list[Any], db: BaseDatabaseWrapper) -> None:
    """Each column's value as the ORM would send it (`pre_save`, then `get_db_prep_save`)."""
    params.extend(field.get_db_prep_save(field.pre_save(obj, add=True), db) for field in fields)


def open_call(call: Call, streams: Sequence[Stream], events: Sequence[StreamEvent]) -> Step[None]:
    """INSERT the call, its streams and their events as one statement; sets the rows' ids.
    IntegrityError, with nothing written, when the call's call_uuid is taken."""
    db = _db()
    params: list[Any] = []
    fields, names, casts = _spec(Call)
    _values(call, fields, params, db)
    # a call_uuid taken (a gateway's call id seen before, D1) inserts nothing and returns no row, so
    # the caller need not look it up first: IntegrityError below, as the ORM's INSERT would raise
    sql = f"WITH c AS (INSERT INTO {Call._meta.db_table} ({names}) VALUES ({casts}) "
    sql += "ON CONFLICT DO NOTHING RETURNING id)"
    if streams:
        fields, names, casts = _spec(Stream, ("call_id",))
        for stream in streams:
            _values(stream, fields, params, db)
        rows = ", ".join([f"({casts})"] * len(streams))
        sql += (
            f", s AS (INSERT INTO {Stream._meta.db_table} (call_id, {names}) "
            f"SELECT c.id, v.* FROM c, (VALUES {rows}) AS v RETURNING id, stream_id)"
        )
        if events:  # each event names its stream by stream_id (known before the INSERT); the join gives its id
            fields, names, casts = _spec(StreamEvent, ("stream_id",))
            for event in events:
                params.append(event.stream.stream_id)
                _values(event, fields, params, db)
            # each row's order as a literal (our own counter, not data): one parameter fewer per row, so a
            # one-stream set-up has 50, which psycopg still caches the parsed statement for (more: it splits
            # the 2.4 KB statement again on every call, ~150 us)
            rows = ", ".join(f"({n}, CAST(%s AS uuid), {casts})" for n in range(len(events)))
            aliases = ", ".join(f"c{i}" for i in range(len(fields)))
            sql += (  # ORDER BY: the rows get their ids in the order given (the debug log's order)
                f", e AS (INSERT INTO {StreamEvent._meta.db_table} (stream_id, {names}) "
                f"SELECT s.id, {aliases} FROM s JOIN (VALUES {rows}) AS v(n, sid, {aliases}) ON s.stream_id = v.sid "
                "ORDER BY v.n)"
            )
        sql += " SELECT c.id, s.id, s.stream_id FROM c LEFT JOIN s ON true"
    else:
        sql += " SELECT c.id, NULL, NULL FROM c"
    result = yield sql, params
    if not result:  # nothing was written: the call's row conflicted (its streams and events hang on it)
        raise IntegrityError(f"call_uuid {call.call_uuid} is taken")
    call.pk = result[0][0]
    call._state.adding, call._state.db = False, db.alias
    ids = {str(stream_id): pk for _, pk, stream_id in result if pk is not None}
    for stream in streams:
        stream.pk = ids[str(stream.stream_id)]
        stream.call = call  # sets call_id, keeps the cached call (assigning call_id alone would drop it)
        stream._state.adding, stream._state.db = False, db.alias


def mark_started(stream: Stream, at: datetime, events: Sequence[StreamEvent], start_event: StreamEvent) -> Step[bool]:
    """Stream.mark_started and the queued debug rows as one statement: the rows in `events`
    always, `start_event` (StartStream) only when this statement moved the stream from
    initiated to in-progress. True when it did (the caller's stream then says so)."""
    db = _db()
    params: list[Any] = [Stream.Status.IN_PROGRESS, at, stream.pk, Stream.Status.INITIATED]
    sql = (
        f"WITH u AS (UPDATE {Stream._meta.db_table} SET status = %s, start_time = %s "
        "WHERE id = %s AND status = %s RETURNING id)"
    )
    fields, names, casts = _spec(StreamEvent)
    for n, (event, always) in enumerate([*((event, True) for event in events), (start_event, False)]):
        params.extend([n, always])
        _values(event, fields, params, db)
    rows = ", ".join([f"(CAST(%s AS integer), CAST(%s AS boolean), {casts})"] * (len(events) + 1))
    aliases = ", ".join(f"c{i}" for i in range(len(fields)))
    sql += (
        f", e AS (INSERT INTO {StreamEvent._meta.db_table} ({names}) "
        f"SELECT {aliases} FROM (VALUES {rows}) AS v(n, always, {aliases}) "
        "WHERE v.always OR EXISTS (SELECT 1 FROM u) ORDER BY v.n)"
        " SELECT count(*) FROM u"
    )
    result = yield sql, params
    started = bool(result) and result[0][0] == 1
    if started:
        stream.status, stream.start_time = Stream.Status.IN_PROGRESS, at
    return started


@functools.cache
def _assignment(model: type[Model], name: str) -> tuple[Field[Any, Any], str]:
    """A column's field and its `"column" = CAST(%s AS type)`, built once."""
    field = model._meta.get_field(name)
    assert isinstance(field, Field)
    return field, f"{connection.ops.quote_name(field.column)} = CAST(%s AS {field.db_type(connection)})"


def _set_clause(model: type[Model], values: dict[str, Any], params: list[Any], db: BaseDatabaseWrapper) -> str:
    parts = []
    for name, value in values.items():
        field, part = _assignment(model, name)
        params.append(field.get_db_prep_save(value, db))
        parts.append(part)
    return ", ".join(parts)


def end_call(
    call: Call,
    ended_at: datetime,
    ends: Sequence[tuple[Stream, dict[str, Any], Sequence[StreamEvent]]],
    *,
    plain_only: bool = False,
) -> Step[tuple[set[int], bool]]:
    """A hang-up's writes as one statement: each stream's end (`values`: Stream.end_values) where
    the row is still as the caller's instance has it (not ended, same status and start time),
    with its debug rows only if that end happened; and the call's end if it is still live.
    With `plain_only` the call is ended only if it has no application and no recorded hang-up
    cause (nothing for call_hangup_request to do), so the caller may run this without the call's
    row lock. Returns (the streams it ended, whether it ended the call). A stream whose row had changed
    (ended or started elsewhere meanwhile) is not written: the caller ends it the ORM's way."""
    db = _db()
    params: list[Any] = []
    ctes = []
    for index, (stream, values, _) in enumerate(ends):
        sets = _set_clause(Stream, values, params, db)
        params.extend([stream.pk, stream.status, stream.start_time])
        ctes.append(
            f"u{index} AS (UPDATE {Stream._meta.db_table} SET {sets} WHERE id = %s AND end_time IS NULL "
            "AND status = %s AND start_time IS NOT DISTINCT FROM CAST(%s AS timestamp with time zone) RETURNING id)"
        )
    done = (
        " UNION ALL ".join(f"SELECT id FROM u{index}" for index in range(len(ends)))
        or "SELECT NULL::bigint AS id WHERE false"
    )
    ctes.append(f"done AS ({done})")
    rows = [(stream.pk, event) for stream, _, events in ends for event in events]
    if rows:
        fields, names, casts = _spec(StreamEvent, ("stream_id",))
        for n, (pk, event) in enumerate(rows):
            params.extend([n, pk])
            _values(event, fields, params, db)
        aliases = ", ".join(f"c{i}" for i in range(len(fields)))
        values_sql = ", ".join([f"(CAST(%s AS integer), CAST(%s AS bigint), {casts})"] * len(rows))
        ctes.append(
            f"e AS (INSERT INTO {StreamEvent._meta.db_table} (stream_id, {names}) "
            f"SELECT sid, {aliases} FROM (VALUES {values_sql}) AS v(n, sid, {aliases}) "
            "WHERE v.sid IN (SELECT id FROM done) ORDER BY v.n)"
        )
    params.extend([Call.Status.ENDED, ended_at, call.pk, Call.Status.LIVE])
    plain = " AND application_id IS NULL AND hangup_cause_name = ''" if plain_only else ""
    ctes.append(
        f"c AS (UPDATE {Call._meta.db_table} SET status = %s, ended_at = %s WHERE id = %s AND status = %s{plain} "
        "RETURNING id)"
    )
    sql = "WITH " + ", ".join(ctes) + " SELECT 'stream', id FROM done UNION ALL SELECT 'call', id FROM c"
    result = yield sql, params
    ended = {pk for kind, pk in result if kind == "stream"}
    for stream, values, _ in ends:
        if stream.pk in ended:
            for key, value in values.items():
                setattr(stream, key, value)
    return ended, any(kind == "call" for kind, _ in result)
