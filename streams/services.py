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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError
from django.db.models import Q
from django.utils import timezone

from callbacks.services import CALLBACK_EVENTS, callback_enqueue
from streamhub.dbguard import bounded_atomic
from streams import control
from streams.control import ControlUndelivered
from streams.core.validation import StreamParams
from streams.models import Account, Call, HubProcess, Stream, StreamEvent

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
    if error:
        params["Error"] = error
    for key, value in (extra or {}).items():
        params[key] = str(value)
    return params


def stream_log(*, stream: Stream, event: str, error: str = "", extra: dict[str, Any] | None = None) -> StreamEvent:
    """A debug-log row; for the four callback events also the outbox row, in one transaction."""
    params = event_params(stream, event, error=error, extra=extra)
    with bounded_atomic():
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
    server_id: str | None = None,
) -> Call:
    return Call.objects.create(
        account=account,
        call_uuid=call_uuid,
        from_number=from_number[:128],
        to_number=to_number[:128],
        direction=direction if direction in Call.Direction.values else Call.Direction.INBOUND,
        gateway=gateway,
        gateway_metadata=metadata or {},
        server_id=server_id or settings.STREAMHUB_SERVER_ID,
    )


def stream_create(*, call: Call, params: StreamParams, notify_session: bool = True) -> Stream:
    """Create a stream on a live call (status initiated); the holding process dials it.

    Raises CallNotLive or StreamConflict (a second active stream to the same URL). With
    `notify_session`, ControlUndelivered when the holding process cannot be told: the
    stream is then ended at once ("Connection error"), never left `initiated`.
    """
    try:
        with bounded_atomic():
            locked = Call.objects.select_for_update().get(pk=call.pk)
            if locked.status != Call.Status.LIVE:
                raise CallNotLive(str(call.call_uuid))
            stream = Stream.objects.create(
                call=locked, account_id=locked.account_id, server_id=locked.server_id, **params.as_model_fields()
            )
            StreamEvent.objects.create(
                stream=stream, event="StreamCreated", params=event_params(stream, "StreamCreated")
            )
    except IntegrityError as exc:
        if Stream.objects.filter(call=call, service_url=params.service_url, end_time__isnull=True).exists():
            raise StreamConflict(params.service_url) from exc
        raise
    if notify_session:
        try:
            control.send_to_call(call.call_uuid, {"type": "stream.start", "stream_id": str(stream.stream_id)})
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
    with bounded_atomic():
        stream_log_batch(stream=stream, entries=log_entries or [])
        if not stream.mark_started(at=at):
            return False
        stream_log(stream=stream, event="StartStream")
    return True


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
        stream_log_batch(stream=stream, entries=log_entries or [])
        fresh = Stream.objects.select_related("account", "call").select_for_update(of=("self",)).get(pk=stream.pk)
        if started_at is not None and fresh.end_time is None and fresh.status == Stream.Status.INITIATED:
            fresh.mark_started(at=started_at)
            stream_log(stream=fresh, event="StartStream")
        ended = fresh.mark_ended(reason=reason, error=error, interval=settings.STREAMHUB_BILLING_INTERVAL, at=at)
        if ended:
            if reason == Stream.Reason.CONNECTION_ERROR:  # DroppedStream always says why; StopStream never has Error
                stream_log(
                    stream=fresh, event="DroppedStream", error=error or CONNECTION_ERROR, extra={"HangupReason": reason}
                )
            else:
                stream_log(stream=fresh, event="StopStream", extra={"HangupReason": reason})
        if stats:
            Stream.objects.filter(pk=fresh.pk).update(**stats)
    stream.__dict__.update({k: v for k, v in fresh.__dict__.items() if not k.startswith("_")})
    if ended and notify_session:
        control.send_to_call(fresh.call.call_uuid, {"type": "stream.stop", "stream_id": str(fresh.stream_id)})
    return ended


def stream_stop(*, stream: Stream, reason: str = Stream.Reason.API_REQUEST) -> bool:
    return stream_end(stream=stream, reason=reason)


def call_end(
    *,
    call: Call,
    notify_session: bool,
    reason: str = Stream.Reason.CALL_HANGUP,
    error: str = "",
    at: datetime | None = None,
) -> list[Stream]:
    """End the call under its row lock, then every stream still active on it (`reason`,
    "Call hangup" by default); returns the streams it ended.

    The call goes first: `stream_create` takes the same lock and refuses an ended call,
    so a REST start racing a hangup is either committed before (and ended here) or
    refused with CallNotLive; no stream is left `initiated` on an ended call.
    """
    with bounded_atomic():
        locked = Call.objects.select_for_update().get(pk=call.pk)
        hung_up = locked.mark_ended(at=at)
        active = list(Stream.objects.filter(call=locked, end_time__isnull=True).select_related("account", "call"))
    ended: list[Stream] = []
    for stream in active:
        if stream_end(stream=stream, reason=reason, error=error, notify_session=False, at=at):
            ended.append(stream)
    call.status, call.ended_at = locked.status, locked.ended_at
    if hung_up and notify_session:
        control.send_to_call(call.call_uuid, {"type": "call.hangup"})
    return ended


def call_hangup(*, call: Call) -> bool:
    """Hang up a live call from REST or admin; the holding process closes the gateway socket.

    Raises ControlUndelivered (after the call and its streams ended) when that process
    could not be told; it hangs up at its next lease check.
    """
    if call.status != Call.Status.LIVE:
        return False
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


def stream_log_batch(*, stream: Stream, entries: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Write a relay's queued debug events (event, error, extra) in order, in one transaction."""
    with bounded_atomic():
        for event, error, extra in entries:
            stream_log(stream=stream, event=event, error=error, extra=extra)
