"""Starting, stopping and hanging up: one set of functions for REST, admin and the call session.

Every end goes through `stream_end`, a conditional update, so a stream ends exactly
once whatever races (hangup vs API vs timeout vs error) and sends exactly one final
callback. The DB change is made here, at once; the process holding the call is then
told over the channel layer to close sockets, and its own `stream_end` is a no-op.
The database is the one truth: when that message cannot be sent, `ControlUndelivered`
tells the caller (REST answers 503), and the holder applies the change at its next
lease check (`hub_lease`, every heartbeat) all the same.

A call ends under its row lock before its streams (`call_end`), and a stream is created
only under the same lock on a live call (`stream_create`), so no stream can be born on
an ended call. Lifecycle transactions are bounded (`bounded_atomic`: lock and statement
timeouts on PostgreSQL); the live side retries them until they succeed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection
from django.db.models import Q
from django.utils import timezone

from callbacks.models import CallbackDelivery
from callbacks.services import CALLBACK_EVENTS, callback_enqueue, hangup_request_enqueue
from streamhub.dbguard import bounded_atomic
from streams import control, pgwrite
from streams.control import ControlUndelivered
from streams.core import application as plivo_app
from streams.core.audiofork import no_playback_reason
from streams.core.validation import StreamParams
from streams.models import Account, Application, Call, CallEvent, HubProcess, Stream, StreamEvent

log = logging.getLogger(__name__)

DROPPED_SLOW = "terminated due to a slow connection: send buffer full"
CONNECTION_ERROR = "connection disconnected with the remote service"
HOLDER_UNREACHABLE = "the hub process holding the call could not be reached to start the stream"

__all__ = ["ControlUndelivered"]  # re-exported: callers of these services catch it


def undelivered_message(what: str) -> str:
    """What REST and the admin say when the holder of a call could not be told of a change."""
    within = int(settings.STREAMHUB_HEARTBEAT_SECONDS + 0.999)
    return (
        f"{what} in the records, but the hub process holding the call could not be reached now "
        f"(channel layer unavailable); it applies the change at its next lease check, within {within} s."
    )


class StreamConflict(Exception):
    """A second active stream to the same service_url on one call."""


class CallNotLive(Exception):
    pass


class PlaybackUnavailable(Exception):
    """A bidirectional stream asked for (REST, admin) on a call whose gateway cannot play audio."""


def call_playback(call: Call) -> tuple[bool, str]:
    """Can the call's gateway play audio into it, and how that was decided (streams.core.audiofork).
    Calls recorded before the hub knew (no key) are taken to play, as they were then."""
    metadata = call.gateway_metadata if isinstance(call.gateway_metadata, dict) else {}
    return metadata.get("playback", True) is not False, str(metadata.get("playbackNote", ""))


class TooManyStreams(Exception):
    """The call already has STREAMHUB_MAX_STREAMS_PER_CALL active streams."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"this call already has {limit} active streams, the most one call may have")


def callback_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def event_params(stream: Stream, event: str, *, error: str = "", extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The parameters of a status callback (spec §6.2, D15), also stored in the debug log."""
    call = stream.call
    params: dict[str, str] = {
        "Event": event,
        "StreamID": str(stream.stream_id),
        "CallUUID": str(call.call_uuid),
        "From": call.from_number,
        "To": call.to_number,
        "Direction": call.direction,
        "ServiceURL": stream.service_url,
        "Timestamp": callback_timestamp(timezone.now()),
        "ParentAuthID": stream.account.auth_id,
        "status_callback_url": stream.status_callback_url,
        "status_callback_method": stream.status_callback_method,
        "bidirectional": "true" if stream.bidirectional else "false",
        "audioTrack": stream.audio_track,
        "streamTimeout": str(stream.stream_timeout),
        "contentType": stream.content_type,
        "extraHeaders": stream.extra_headers,
        "keepCallAlive": "true" if stream.keep_call_alive else "false",
    }
    if stream.reconnect:  # opt-in (docs/resume.md): streams that did not ask keep today's parameters
        params["reconnect"] = "true"
        params["reconnectWindow"] = str(stream.reconnect_window)
    if error:
        params["Error"] = error
    for key, value in (extra or {}).items():
        params[key] = str(value)
    return params


def stream_log(*, stream: Stream, event: str, error: str = "", extra: dict[str, Any] | None = None) -> StreamEvent:
    """A debug-log row; for the four callback events also the outbox row, in one transaction."""
    params = event_params(stream, event, error=error, extra=extra)
    with bounded_atomic(savepoint=False):
        row = StreamEvent.objects.create(stream=stream, event=event, error=error[:1000], params=params)
        if event in CALLBACK_EVENTS:
            callback_enqueue(stream=stream, event=event, params=params)
    return row


def call_open(
    *,
    account: Account,
    call_uuid: uuid.UUID | str,
    from_number: str = "",
    to_number: str = "",
    direction: str = "inbound",
    gateway: str = "audio-fork",
    metadata: dict[str, Any] | None = None,
    application: Application | None = None,
    server_id: str | None = None,
    control_channel: str = "",
    save: bool = True,
) -> Call:
    """A live call's row (`save=False`: the instance only, for the caller to write)."""
    call = Call(
        account=account,
        call_uuid=call_uuid,
        from_number=from_number[:128],
        to_number=to_number[:128],
        direction=direction if direction in Call.Direction.values else Call.Direction.INBOUND,
        gateway=gateway,
        gateway_metadata=metadata or {},
        server_id=server_id or settings.STREAMHUB_SERVER_ID,
        control_channel=control_channel,
        application=application,
    )
    if save:
        call.save(force_insert=True)
    return call


Opened = tuple[Call, list[Stream | StreamConflict | TooManyStreams]]


def call_open_with_streams(
    *, account: Account, call_uuid: uuid.UUID | str, streams: list[StreamParams], **call_fields: Any
) -> Opened:
    """A gateway's call and the streams its metadata asks for, in one transaction (call set-up
    is one lifecycle step), with the rules of stream_create: a second entry to the same service
    URL gets StreamConflict, the entries beyond STREAMHUB_MAX_STREAMS_PER_CALL TooManyStreams,
    and a bidirectional stream on a call whose gateway cannot play audio is created one-way
    (with its PlaybackUnavailable debug-log entry)."""
    if pgwrite.usable():  # PostgreSQL: the whole step as one statement (streams/pgwrite.py)
        return pgwrite.run(call_open_step(account=account, call_uuid=call_uuid, streams=streams, **call_fields))
    with bounded_atomic():
        call, created, rows, events = _open_rows(account, call_uuid, streams, save=True, call_fields=call_fields)
        if rows:
            Stream.objects.bulk_create(rows)
            StreamEvent.objects.bulk_create(events)
    return call, created


def call_open_step(
    *, account: Account, call_uuid: uuid.UUID | str, streams: list[StreamParams], **call_fields: Any
) -> pgwrite.Step[Opened]:
    """call_open_with_streams on PostgreSQL, as a pgwrite step (one statement): run on a database
    thread by pgwrite.run, or on the event loop by streams.live.pgloop."""
    call, created, rows, events = _open_rows(account, call_uuid, streams, save=False, call_fields=call_fields)
    yield from pgwrite.open_call(call, rows, events)
    return call, created


def _open_rows(
    account: Account, call_uuid: uuid.UUID | str, streams: list[StreamParams], *, save: bool, call_fields: Any
) -> tuple[Call, list[Stream | StreamConflict | TooManyStreams], list[Stream], list[StreamEvent]]:
    """The set-up's rows: the call (saved with `save`), the entries' outcomes, the Stream rows and
    their debug rows (not saved)."""
    created: list[Stream | StreamConflict | TooManyStreams] = []
    limit = settings.STREAMHUB_MAX_STREAMS_PER_CALL
    call = call_open(account=account, call_uuid=call_uuid, save=save, **call_fields)
    call.account = account
    plays, note = call_playback(call)
    urls: set[str] = set()
    rows: list[Stream] = []
    one_way: list[Stream] = []
    for params in streams:
        if params.service_url in urls:
            created.append(StreamConflict(params.service_url))
            continue
        if len(rows) >= limit:
            created.append(TooManyStreams(limit))
            continue
        urls.add(params.service_url)
        fields = params.as_model_fields()
        if params.bidirectional and not plays:
            fields["bidirectional"] = False
        stream = Stream(call=call, account=account, server_id=call.server_id, **fields)
        rows.append(stream)
        created.append(stream)
        if params.bidirectional and not plays:
            one_way.append(stream)
    events = [
        StreamEvent(stream=stream, event="StreamCreated", params=event_params(stream, "StreamCreated"))
        for stream in rows
    ]
    reason = f"bidirectional refused, the stream is one-way: {no_playback_reason(note)}"
    for stream in one_way:
        log.warning("call %s: stream %s: %s", call.call_uuid, stream.stream_id, reason)
        events.append(
            StreamEvent(
                stream=stream,
                event="PlaybackUnavailable",
                error=reason[:1000],
                params=event_params(stream, "PlaybackUnavailable", error=reason),
            )
        )
    return call, created, rows, events


def stream_create(
    *, call: Call, params: StreamParams, notify_session: bool = True, refuse_one_way: bool = False
) -> Stream:
    """Create a stream on a live call (status initiated); the holding process dials it.

    A bidirectional stream on a call whose gateway cannot play audio (call_playback) is created
    one-way, with a `PlaybackUnavailable` debug-log entry saying why — what the gateway's own
    metadata gets, as nobody could hear a refusal. REST and the admin pass `refuse_one_way`:
    their caller hears PlaybackUnavailable and decides.

    Raises CallNotLive, StreamConflict (a second active stream to the same URL), PlaybackUnavailable or
    TooManyStreams (STREAMHUB_MAX_STREAMS_PER_CALL active already; counted under the call's
    row lock, so racing starts cannot pass it together).
    With `notify_session`, ControlUndelivered when the holding process cannot be told: the
    stream is then ended at once ("Connection error"), never left `initiated`.
    """
    try:
        with bounded_atomic():
            locked = Call.objects.select_for_update().get(pk=call.pk)
            if locked.status != Call.Status.LIVE:
                raise CallNotLive(str(call.call_uuid))
            limit = settings.STREAMHUB_MAX_STREAMS_PER_CALL
            if Stream.objects.filter(call=locked, end_time__isnull=True).count() >= limit:
                raise TooManyStreams(limit)
            plays, note = call_playback(locked)
            one_way = params.bidirectional and not plays
            if one_way and refuse_one_way:
                raise PlaybackUnavailable(no_playback_reason(note))
            fields = params.as_model_fields()
            if one_way:
                fields["bidirectional"] = False
            stream = Stream.objects.create(
                call=locked, account_id=locked.account_id, server_id=locked.server_id, **fields
            )
            StreamEvent.objects.create(
                stream=stream, event="StreamCreated", params=event_params(stream, "StreamCreated")
            )
            if one_way:
                reason = f"bidirectional refused, the stream is one-way: {no_playback_reason(note)}"
                log.warning("call %s: stream %s: %s", locked.call_uuid, stream.stream_id, reason)
                StreamEvent.objects.create(
                    stream=stream,
                    event="PlaybackUnavailable",
                    error=reason[:1000],
                    params=event_params(stream, "PlaybackUnavailable", error=reason),
                )
    except IntegrityError as exc:
        if Stream.objects.filter(call=call, service_url=params.service_url, end_time__isnull=True).exists():
            raise StreamConflict(params.service_url) from exc
        raise
    if notify_session:
        try:
            control.send_to_call(locked, {"type": "stream.start", "stream_id": str(stream.stream_id)})
        except ControlUndelivered:
            stream_end(
                stream=stream, reason=Stream.Reason.CONNECTION_ERROR, error=HOLDER_UNREACHABLE, notify_session=False
            )
            raise
    return stream


def stream_mark_started(
    *, stream: Stream, at: datetime | None = None, log_entries: list[tuple[str, str, dict[str, Any]]] | None = None
) -> bool:
    """`start` went out to the customer at `at`: in-progress, billed from then, StartStream.

    `log_entries`: the relay's queued debug events, written first in the same transaction.
    """
    if pgwrite.usable() and not stream.status_callback_url:  # no outbox row: one statement (streams/pgwrite.py)
        return pgwrite.run(stream_mark_started_step(stream=stream, at=at, log_entries=log_entries))
    with bounded_atomic():
        if not stream.mark_started(at=at):
            stream_log_batch(stream=stream, entries=log_entries or [])
            return False
        # the queued rows and StartStream: one INSERT when there is no callback to write with it
        stream_log_batch(stream=stream, entries=[*(log_entries or []), ("StartStream", "", {})])
    return True


def stream_mark_started_step(
    *, stream: Stream, at: datetime | None = None, log_entries: list[tuple[str, str, dict[str, Any]]] | None = None
) -> pgwrite.Step[bool]:
    """stream_mark_started on PostgreSQL for a stream with no status callback, as a pgwrite step."""
    rows = [
        StreamEvent(
            stream=stream, event=event, error=error[:1000], params=event_params(stream, event, error=error, extra=extra)
        )
        for event, error, extra in log_entries or []
    ]
    start = StreamEvent(stream=stream, event="StartStream", params=event_params(stream, "StartStream"))
    return (yield from pgwrite.mark_started(stream, at or timezone.now(), rows, start))


def stream_degraded(*, stream: Stream, usage: int) -> None:
    stream_log(stream=stream, event="DegradedStream", extra={"BufferUsage": usage})


def stream_end(
    *,
    stream: Stream,
    reason: str,
    error: str = "",
    stats: dict[str, Any] | None = None,
    notify_session: bool = True,
    started_at: datetime | None = None,
    at: datetime | None = None,
    log_entries: list[tuple[str, str, dict[str, Any]]] | None = None,
) -> bool:
    """End a stream once: billing, hangup reason, and its one final callback.

    StopStream for API request / Call hangup / Stream timeout, DroppedStream for
    Connection error. `stats` (the relay's counters) are stored whoever ended it.
    `started_at`: the relay sent `start` then; if its StartStream is not recorded yet
    (the end won the race with it), it is recorded first, so a stream whose `start`
    went out always has its StartStream before its final callback and is billed.
    `at` backdates the end (see `Stream.mark_ended`). With `notify_session`, raises
    ControlUndelivered after the commit when the holding process could not be told.
    `log_entries` (the relay's queued debug events) are written first, in the same
    transaction, so a retried end never writes them twice.
    """
    with bounded_atomic():
        outcome = _end_stream(
            stream=stream,
            reason=reason,
            error=error,
            stats=stats,
            started_at=started_at,
            at=at,
            log_entries=log_entries,
        )
    if outcome is None:
        raise Stream.DoesNotExist(f"stream {stream.pk} is gone")
    fresh, ended = outcome
    if ended and notify_session:
        control.send_to_call(fresh.call, {"type": "stream.stop", "stream_id": str(fresh.stream_id)})
    return ended


def _end_stream(
    *,
    stream: Stream,
    reason: str,
    error: str = "",
    stats: dict[str, Any] | None = None,
    started_at: datetime | None = None,
    at: datetime | None = None,
    log_entries: list[tuple[str, str, dict[str, Any]]] | None = None,
) -> tuple[Stream, bool] | None:
    """stream_end's writes, inside the caller's transaction: (the row as written, whether
    this call ended it), or None when the row is gone (nothing written)."""
    state = _lock_stream_state(stream.pk)
    if state is None:
        return None
    fresh = stream  # the rest of the row never changes once the stream exists
    if state[2] is not None:  # ended already (a racing end): the caller sees the first end, not its own
        fresh.refresh_from_db()
    else:
        fresh.status, fresh.start_time, fresh.end_time = state
    entries = list(log_entries or [])  # the relay's queued rows, then Start/Stop: one INSERT without callbacks
    late_start = started_at is not None and fresh.end_time is None and fresh.status == Stream.Status.INITIATED
    if late_start and fresh.mark_started(at=started_at):
        entries.append(("StartStream", "", {}))
    ended = fresh.mark_ended(
        reason=reason, error=error, interval=settings.STREAMHUB_BILLING_INTERVAL, at=at, extra=stats or {}
    )
    if ended:
        entries.append(_final_entry(reason, error))
    stream_log_batch(stream=fresh, entries=entries)
    if stats and not ended:  # stored with the end otherwise
        Stream.objects.filter(pk=fresh.pk).update(**stats)
    return fresh, ended


def _final_entry(reason: str, error: str) -> tuple[str, str, dict[str, Any]]:
    """An end's debug row: DroppedStream always says why; StopStream never has Error."""
    if reason == Stream.Reason.CONNECTION_ERROR:
        return ("DroppedStream", error or CONNECTION_ERROR, {"HangupReason": reason})
    return ("StopStream", "", {"HangupReason": reason})


def _one_statement_end(end: dict[str, Any]) -> bool:
    """Whether a stream's end can go in pgwrite.end_call: no outbox row to write (no status
    callback), no StartStream to record first, not ended already as far as the caller knows."""
    stream: Stream = end["stream"]
    late_start = end.get("started_at") is not None and stream.status == Stream.Status.INITIATED
    return not stream.status_callback_url and stream.end_time is None and not late_start


def _end_rows(end: dict[str, Any]) -> tuple[Stream, dict[str, Any], list[StreamEvent]]:
    """pgwrite.end_call's part for one stream: its row, the columns of its end, its debug rows."""
    stream: Stream = end["stream"]
    reason, error = end["reason"], end.get("error", "")
    values = stream.end_values(
        reason=reason,
        error=error,
        interval=settings.STREAMHUB_BILLING_INTERVAL,
        at=end.get("at"),
        extra=end.get("stats") or {},
    )
    rows = [
        StreamEvent(
            stream=stream, event=event, error=text[:1000], params=event_params(stream, event, error=text, extra=extra)
        )
        for event, text, extra in [*(end.get("log_entries") or []), _final_entry(reason, error)]
    ]
    return stream, values, rows


_ACTIVE_STREAM_SQL = "SELECT 1 FROM {table} WHERE call_id = %s AND end_time IS NULL LIMIT 1"


def _lock_columns(model: type[Call] | type[Stream], pk: int, fields: tuple[str, ...]) -> tuple[Any, ...] | None:
    """`fields` of row `pk`, locked for the caller's transaction (None: the row is gone): the
    columns another lifecycle step may have changed; the rest of a call's or stream's row never
    changes. Raw on PostgreSQL: the ORM spends ~1 ms of CPU building `select_related(...)
    .select_for_update().get()`, this 0.04 ms (bench/setup_cpu.py). SQLite has no FOR UPDATE
    (its writes are serial) and hands a raw cursor timestamps as text, so it keeps the ORM."""
    if connection.vendor != "postgresql":
        return model.objects.filter(pk=pk).values_list(*fields).first()
    columns = ", ".join(connection.ops.quote_name(name) for name in fields)  # attnames: the default columns
    sql = f"SELECT {columns} FROM {model._meta.db_table} WHERE id = %s FOR UPDATE"  # noqa: S608 (our own names)
    with connection.cursor() as cursor:
        cursor.execute(sql, [pk])
        row = cursor.fetchone()
    return None if row is None else tuple(row)


def _lock_stream_state(pk: int) -> tuple[Any, ...] | None:
    """(status, start_time, end_time) of stream `pk` under its row lock; None if gone."""
    return _lock_columns(Stream, pk, ("status", "start_time", "end_time"))


def _has_active_streams(call_id: int) -> bool:
    """Whether any stream of the call is still unended (one cheap query before the ORM's full read)."""
    if connection.vendor != "postgresql":
        return True  # let the ORM read answer
    with connection.cursor() as cursor:
        cursor.execute(_ACTIVE_STREAM_SQL.format(table=Stream._meta.db_table), [call_id])
        return cursor.fetchone() is not None


def _active_streams(call_id: int) -> list[Stream]:
    """The call's streams not ended yet (after a session's hang-up, usually none: one cheap query)."""
    if not _has_active_streams(call_id):
        return []
    return list(Stream.objects.filter(call_id=call_id, end_time__isnull=True).select_related("account", "call"))


def _plain_hang_up(
    *, call: Call, at: datetime | None, stream_ends: Sequence[dict[str, Any]]
) -> tuple[list[Stream], list[dict[str, Any]], bool]:
    """A session's hang-up of a call with no application and no recorded cause, on PostgreSQL:
    the streams' ends and the call's as one statement in autocommit, with no transaction and no
    row lock (BEGIN, SELECT ... FOR UPDATE, COMMIT: three round trips fewer than call_end's).

    The statement ends the call only while it is live with no application and no cause (what
    the lock was read for: call_hangup_request has nothing to do then), and each stream only
    while its row is as the session has it. A REST start that committed a stream meanwhile is
    caught by the caller's check for active streams after the end (as under the lock: the
    lock only orders the two, the check after the end is what ends such a stream).
    Returns (the streams it ended, the ends it could not write (their rows had changed: the
    locked path ends them the ORM's way), whether it ended the call)."""
    if not plain_hang_up_possible(call, stream_ends):
        return [], list(stream_ends), False
    return pgwrite.run(plain_hang_up_step(call=call, at=at, stream_ends=stream_ends))


def plain_hang_up_possible(call: Call, stream_ends: Sequence[dict[str, Any]]) -> bool:
    """Whether a session's hang-up may take _plain_hang_up's way (PostgreSQL, no application,
    no recorded cause, every stream's end one statement's)."""
    return (
        bool(stream_ends)
        and call.application_id is None
        and not call.hangup_cause_name
        and pgwrite.usable()
        and all(_one_statement_end(end) for end in stream_ends)
    )


def plain_hang_up_step(
    *, call: Call, at: datetime | None, stream_ends: Sequence[dict[str, Any]]
) -> pgwrite.Step[tuple[list[Stream], list[dict[str, Any]], bool]]:
    """_plain_hang_up's statement as a pgwrite step (the caller checked plain_hang_up_possible)."""
    now = max(at, call.started_at) if at is not None else timezone.now()
    written, hung_up = yield from pgwrite.end_call(call, now, [_end_rows(end) for end in stream_ends], plain_only=True)
    ended = [end["stream"] for end in stream_ends if end["stream"].pk in written]
    left = [end for end in stream_ends if end["stream"].pk not in written]
    if hung_up:
        call.status, call.ended_at = Call.Status.ENDED, now
    return ended, left, hung_up


def has_active_streams_step(call_id: int) -> pgwrite.Step[bool]:
    """_has_active_streams on PostgreSQL as a pgwrite step."""
    rows = yield _ACTIVE_STREAM_SQL.format(table=Stream._meta.db_table), [call_id]
    return bool(rows)


def stream_stop(*, stream: Stream, reason: str = Stream.Reason.API_REQUEST) -> bool:
    return stream_end(stream=stream, reason=reason)


# what call_end reads under the call's lock: its state and what its hangup request needs
_CALL_END_FIELDS = ("status", "ended_at", "application_id", "hangup_cause_name", "hangup_detail")


def call_end(
    *,
    call: Call,
    notify_session: bool,
    reason: str = Stream.Reason.CALL_HANGUP,
    error: str = "",
    at: datetime | None = None,
    stream_ends: Sequence[dict[str, Any]] = (),
) -> list[Stream]:
    """End the call under its row lock, then every stream still active on it (`reason`,
    "Call hangup" by default); returns the streams it ended.

    The call goes first: `stream_create` takes the same lock and refuses an ended call,
    so a REST start racing a hangup is either committed before (and ended here) or
    refused with CallNotLive; no stream is left `initiated` on an ended call.

    `stream_ends`: stream_end's arguments for the streams whose relays ended with the call
    (the session's hang-up), written in the call's transaction before its end, so a
    hang-up is one lifecycle step, not one per stream and one for the call.
    """
    ended: list[Stream] = []
    plain_hung_up = False
    if stream_ends and call.application_id is None and not call.hangup_cause_name:
        ended, stream_ends, plain_hung_up = _plain_hang_up(call=call, at=at, stream_ends=stream_ends)
        if plain_hung_up and not stream_ends:
            for stream in _active_streams(call.pk):  # a stream started by REST meanwhile
                if stream_end(stream=stream, reason=reason, error=error, notify_session=False, at=at):
                    ended.append(stream)
            if notify_session:
                control.send_to_call(call, {"type": "call.hangup"})
            return ended
    with bounded_atomic():
        state = _lock_columns(Call, call.pk, _CALL_END_FIELDS)
        if state is None:
            raise Call.DoesNotExist(f"call {call.pk} is gone")
        locked = call  # what another step may have changed, read under the lock; the rest never changes
        for name, value in zip(_CALL_END_FIELDS, state, strict=True):
            setattr(locked, name, value)
        one_statement = [end for end in stream_ends if pgwrite.usable() and _one_statement_end(end)]
        done: list[Stream] = []  # the streams this step ended
        for end in stream_ends:
            if any(end is chosen for chosen in one_statement):
                continue
            outcome = _end_stream(**end)
            if outcome is not None and outcome[1]:
                done.append(end["stream"])
        if pgwrite.usable():  # the streams' ends and the call's: one statement (streams/pgwrite.py)
            now = max(at, locked.started_at) if at is not None else timezone.now()
            written, hung_up = pgwrite.run(pgwrite.end_call(locked, now, [_end_rows(end) for end in one_statement]))
            for end in one_statement:
                if end["stream"].pk in written:
                    done.append(end["stream"])
                    continue
                outcome = _end_stream(**end)  # its row had changed meanwhile: the ORM's way, which reads it
                if outcome is not None and outcome[1]:
                    done.append(end["stream"])
            if hung_up:
                locked.status, locked.ended_at = Call.Status.ENDED, now
        else:
            hung_up = locked.mark_ended(at=at)
        ended.extend(end["stream"] for end in stream_ends if any(end["stream"] is stream for stream in done))
        if hung_up:  # the application's hangup request goes into the outbox with the end
            call_hangup_request(call=locked)
        active = _active_streams(locked.pk)
    for stream in active:
        if stream_end(stream=stream, reason=reason, error=error, notify_session=False, at=at):
            ended.append(stream)
    call.status, call.ended_at = locked.status, locked.ended_at
    if (hung_up or plain_hung_up) and notify_session:
        control.send_to_call(call, {"type": "call.hangup"})
    return ended


def call_hangup(*, call: Call) -> bool:
    """Hang up a live call from REST or admin; the holding process closes the gateway socket.

    Raises ControlUndelivered (after the call and its streams ended) when that process
    could not be told; it hangs up at its next lease check.
    """
    if call.status != Call.Status.LIVE:
        return False
    call.record_hangup_cause(cause_name=plivo_app.API_REQUEST.name, detail="hang-up requested (REST API or admin)")
    call_end(call=call, notify_session=True)
    return True


@dataclass(frozen=True)
class Lease:
    """What a heartbeat learnt: whether the lease holds, and what the database says of its calls."""

    held: bool
    ended_calls: list[int]  # calls of this process that someone else ended
    ended_streams: dict[str, str]  # stream id -> hangup reason: relays to stop
    unknown_streams: dict[int, list[str]]  # call id -> active streams this process runs no relay for


def hub_heartbeat(*, server_id: str, live_calls: int, capacity: int, calls: list[int]) -> bool:
    """Beat, holding `calls`; False when this lease was fenced by the sweep (see `streams.orphans`).

    A conditional update of the lease row: it either lands before a fence (and clears a
    suspicion) or finds the fence, never both.
    """
    now = timezone.now()
    with bounded_atomic():
        beat = HubProcess.objects.filter(server_id=server_id, fenced_at__isnull=True).update(
            heartbeat_at=now, live_calls=live_calls, capacity=capacity, calls=calls, suspected_at=None
        )
        if beat:
            return True
        if HubProcess.objects.filter(server_id=server_id).exists():
            return False
        HubProcess.objects.create(
            server_id=server_id,
            started_at=now,
            heartbeat_at=now,
            live_calls=live_calls,
            capacity=capacity,
            calls=calls,
        )
    return True


def hub_lease(*, server_id: str, live_calls: int, capacity: int, relays: dict[int, list[str]]) -> Lease:
    """A heartbeat and a check of the calls held (`relays`: call id -> stream ids relayed).

    The holder applies what the database says, whoever changed it: a call ended by
    someone else is hung up, a stream ended elsewhere is stopped (a stop whose control
    message was lost included), an active stream it has no relay for is started.
    """
    held = hub_heartbeat(server_id=server_id, live_calls=live_calls, capacity=capacity, calls=sorted(relays))
    if not held or not relays:
        return Lease(held=held, ended_calls=[], ended_streams={}, unknown_streams={})
    ended_calls = list(Call.objects.filter(pk__in=list(relays), status=Call.Status.ENDED).values_list("pk", flat=True))
    running = [stream_id for ids in relays.values() for stream_id in ids]
    rows = Stream.objects.filter(call_id__in=list(relays)).filter(Q(end_time__isnull=True) | Q(stream_id__in=running))
    ended_streams: dict[str, str] = {}
    unknown: dict[int, list[str]] = {}
    relayed = set(running)
    for stream_id, call_id, end_time, reason in rows.values_list("stream_id", "call_id", "end_time", "hangup_reason"):
        key = str(stream_id)
        if end_time is not None:
            if key in relayed:
                ended_streams[key] = reason
        elif key not in relayed:
            unknown.setdefault(call_id, []).append(key)
    return Lease(held=True, ended_calls=ended_calls, ended_streams=ended_streams, unknown_streams=unknown)


def hub_publish_snapshot(*, server_id: str, snapshot: dict[str, Any]) -> None:
    """The live state of a hub process's streams, for the console's live page (one row per process)."""
    now = timezone.now()
    if not HubProcess.objects.filter(server_id=server_id).update(live_snapshot=snapshot, snapshot_at=now):
        HubProcess.objects.get_or_create(server_id=server_id, defaults={"live_snapshot": snapshot, "snapshot_at": now})


def stream_log_batch(*, stream: Stream, entries: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Write a relay's queued debug events (event, error, extra) in order, in one transaction:
    plain debug rows in one INSERT, the callback events (with their outbox rows) one by one."""
    with bounded_atomic(savepoint=False):
        rows: list[StreamEvent] = []
        callbacks = bool(stream.status_callback_url)
        for event, error, extra in entries:
            if callbacks and event in CALLBACK_EVENTS:
                if rows:
                    StreamEvent.objects.bulk_create(rows)
                    rows = []
                stream_log(stream=stream, event=event, error=error, extra=extra)
            else:
                params = event_params(stream, event, error=error, extra=extra)
                rows.append(StreamEvent(stream=stream, event=event, error=error[:1000], params=params))
        if rows:
            StreamEvent.objects.bulk_create(rows)


# --- applications ------------------------------------------------------------------------------


class ApplicationNotFound(Exception):
    """The gateway named an app id that is not one of the call's account's applications."""


def application_for_call(*, account: Account, app_id: str, wants_streams: bool) -> Application | None:
    """The application a new call runs.

    The one the gateway names, looked up among the call's own account's applications only
    (another account's app is "not found", never run); else, when the gateway asks for no
    streams, the account's default number application; else none (today's behaviour).
    """
    if app_id:
        app = Application.objects.select_related("account").filter(account=account, app_id=app_id).first()
        if app is None:
            raise ApplicationNotFound(app_id)
        return app
    if wants_streams:
        return None
    return Application.objects.select_related("account").filter(account=account, default_number_app=True).first()


@bounded_atomic()
def application_save(*, application: Application) -> Application:
    """Create or update an application; marking it the default unmarks the account's other one."""
    others = Application.objects.select_for_update().filter(account_id=application.account_id)
    if application.pk is not None:
        others = others.exclude(pk=application.pk)
    if application.default_number_app:
        others.filter(default_number_app=True).update(default_number_app=False)
    if application.default_endpoint_app:
        others.filter(default_endpoint_app=True).update(default_endpoint_app=False)
    application.save()
    return application


def call_log(*, call: Call, event: str, error: str = "", params: dict[str, Any] | None = None) -> CallEvent:
    """One row of the call's debug log (its application's requests and the document's steps)."""
    clean = {k: v if isinstance(v, str | int | float | bool) else str(v) for k, v in (params or {}).items()}
    return CallEvent.objects.create(call=call, event=event, error=error[:1000], params=clean)


def call_record_hangup(*, call: Call, cause: plivo_app.HangupCause, detail: str = "") -> bool:
    """Record why the hub is about to hang the call up (the first cause wins) and log it."""
    recorded = call.record_hangup_cause(cause_name=cause.name, detail=detail)
    if recorded:
        call_log(
            call=call,
            event="CallHangup",
            error=detail if cause.source == "Error" else "",
            params={**cause.as_params(), "Detail": detail},
        )
    return recorded


def call_facts(call: Call) -> plivo_app.CallFacts:
    """What the application's requests say about the call (callers select_related("account"))."""
    given = call.gateway_metadata.get("plivo") if isinstance(call.gateway_metadata, dict) else None
    return plivo_app.CallFacts(
        call_uuid=str(call.call_uuid),
        from_number=call.from_number,
        to_number=call.to_number,
        direction=call.direction,
        auth_id=call.account.auth_id,
        started_at=call.started_at,
        gateway_params={str(k): str(v) for k, v in given.items()} if isinstance(given, dict) else {},
    )


def call_hangup_request(
    *, call: Call, default_cause: plivo_app.HangupCause = plivo_app.CALLER
) -> CallbackDelivery | None:
    """The application's hangup request, as an outbox row; run in the transaction that ends the call.

    The cause is the one recorded before the end (an <Hangup>, the end of the document, an
    error, an API hang-up); with none recorded the caller hung up (or `default_cause`).
    """
    if call.ended_at is None or (call.application_id is None and not call.hangup_cause_name):
        return None  # a call without an application (its streams named by the gateway): as before
    row = Call.objects.select_related("account", "application").get(pk=call.pk)
    app = row.application
    if row.ended_at is None:
        return None
    cause = plivo_app.CAUSES.get(row.hangup_cause_name, default_cause)
    if not row.hangup_cause_name:
        Call.objects.filter(pk=row.pk).update(hangup_cause_name=cause.name)
    if app is None or not app.hangup_url:
        call_log(call=row, event="CallEnded", params=cause.as_params())
        return None
    params = plivo_app.hangup_params(
        call_facts(row), ended_at=row.ended_at, cause=cause, interval=settings.STREAMHUB_BILLING_INTERVAL
    )
    url = plivo_app.strip_fragment(app.hangup_url)
    delivery = hangup_request_enqueue(call=row, url=url, method=app.hangup_method, params=params)
    call_log(
        call=row,
        event="CallEnded",
        params={**cause.as_params(), "HangupURL": url, "HangupMethod": app.hangup_method, "Delivery": delivery.pk},
    )
    return delivery
