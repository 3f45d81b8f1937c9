"""Starting, stopping and hanging up: one set of functions for REST, admin and the call session.

Every end goes through `stream_end`, a conditional update, so a stream ends exactly
once whatever races (hangup vs API vs timeout vs error) and sends exactly one final
callback. The DB change is made here, at once; the process holding the call is then
told over the channel layer to close sockets, and its own `stream_end` is a no-op.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from callbacks.services import CALLBACK_EVENTS, callback_enqueue
from streams import control
from streams.core.validation import StreamParams
from streams.models import Account, Call, HubProcess, Stream, StreamEvent

log = logging.getLogger(__name__)

DROPPED_SLOW = "terminated due to a slow connection: send buffer full"
CONNECTION_ERROR = "connection disconnected with the remote service"


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
    with transaction.atomic():
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
) -> Call:
    return Call.objects.create(
        account=account,
        call_uuid=call_uuid,
        from_number=from_number[:128],
        to_number=to_number[:128],
        direction=direction if direction in Call.Direction.values else Call.Direction.INBOUND,
        gateway=gateway,
        gateway_metadata=metadata or {},
        server_id=settings.STREAMHUB_SERVER_ID,
    )


def call_open_with_streams(
    *, account: Account, call_uuid: uuid.UUID | str, streams: list[StreamParams], **call_fields: Any
) -> tuple[Call, list[Stream | StreamConflict]]:
    """A gateway's call and the streams its metadata asks for, in one transaction (call set-up
    is one lifecycle step). A second entry to the same service URL gets StreamConflict, as
    stream_create would; nothing else can hold a stream on a call that does not exist yet."""
    created: list[Stream | StreamConflict] = []
    with transaction.atomic():
        call = call_open(account=account, call_uuid=call_uuid, **call_fields)
        call.account = account
        urls: set[str] = set()
        rows: list[Stream] = []
        for params in streams:
            if params.service_url in urls:
                created.append(StreamConflict(params.service_url))
                continue
            urls.add(params.service_url)
            stream = Stream(call=call, account=account, server_id=call.server_id, **params.as_model_fields())
            rows.append(stream)
            created.append(stream)
        if rows:
            Stream.objects.bulk_create(rows)
            StreamEvent.objects.bulk_create(
                StreamEvent(stream=stream, event="StreamCreated", params=event_params(stream, "StreamCreated"))
                for stream in rows
            )
    return call, created


def stream_create(*, call: Call, params: StreamParams, notify_session: bool = True) -> Stream:
    """Create a stream on a live call (status initiated); the holding process dials it.

    Raises CallNotLive or StreamConflict (a second active stream to the same URL).
    """
    try:
        with transaction.atomic():
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
        control.send_to_call(call.call_uuid, {"type": "stream.start", "stream_id": str(stream.stream_id)})
    return stream


def stream_mark_started(*, stream: Stream, log: list[tuple[str, str, dict[str, Any]]] | None = None) -> bool:
    """The stream is connected; `log`: debug events queued before it, written first, in the same transaction."""
    with transaction.atomic():
        if not stream.mark_started():
            if log:
                stream_log_batch(stream=stream, entries=log)
            return False
        # the queued rows and StartStream: one INSERT when there is no callback to write with it
        stream_log_batch(stream=stream, entries=[*(log or []), ("StartStream", "", {})])
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
    log: list[tuple[str, str, dict[str, Any]]] | None = None,
) -> bool:
    """End a stream once: billing, hangup reason, and its one final callback.

    StopStream for API request / Call hangup / Stream timeout, DroppedStream for
    Connection error. `stats` (the relay's counters) are stored whoever ended it.
    """
    with transaction.atomic():
        if log:  # the relay's last debug events, before its final one
            stream_log_batch(stream=stream, entries=log)
        fresh = Stream.objects.select_related("account", "call").select_for_update(of=("self",)).get(pk=stream.pk)
        ended = fresh.mark_ended(
            reason=reason, error=error, interval=settings.STREAMHUB_BILLING_INTERVAL, extra=stats or {}
        )
        if ended:
            if reason == Stream.Reason.CONNECTION_ERROR:  # DroppedStream always says why; StopStream never has Error
                stream_log(
                    stream=fresh, event="DroppedStream", error=error or CONNECTION_ERROR, extra={"HangupReason": reason}
                )
            else:
                stream_log(stream=fresh, event="StopStream", extra={"HangupReason": reason})
        if stats and not ended:  # stored with the end otherwise
            Stream.objects.filter(pk=fresh.pk).update(**stats)
    if ended and notify_session:
        control.send_to_call(fresh.call.call_uuid, {"type": "stream.stop", "stream_id": str(fresh.stream_id)})
    stream.__dict__.update({k: v for k, v in fresh.__dict__.items() if not k.startswith("_")})
    return ended


def stream_stop(*, stream: Stream, reason: str = Stream.Reason.API_REQUEST) -> bool:
    return stream_end(stream=stream, reason=reason)


def call_end(*, call: Call, notify_session: bool) -> list[Stream]:
    """End every active stream with "Call hangup", then the call; returns the streams it ended."""
    ended: list[Stream] = []
    for stream in Stream.objects.filter(call=call, end_time__isnull=True).select_related("account", "call"):
        if stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False):
            ended.append(stream)
    # a conditional UPDATE (live -> ended): no need to read the row first
    if call.mark_ended():
        if notify_session:
            control.send_to_call(call.call_uuid, {"type": "call.hangup"})
    else:  # someone else ended it: show their end
        call.refresh_from_db(fields=["status", "ended_at"])
    return ended


def call_hangup(*, call: Call) -> bool:
    """Hang up a live call from REST or admin; the holding process closes the gateway socket."""
    if call.status != Call.Status.LIVE:
        return False
    call_end(call=call, notify_session=True)
    return True


def hub_heartbeat(*, server_id: str, live_calls: int, capacity: int) -> None:
    HubProcess.objects.update_or_create(
        server_id=server_id,
        defaults={"heartbeat_at": timezone.now(), "live_calls": live_calls, "capacity": capacity},
    )


def stream_log_batch(*, stream: Stream, entries: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Write a relay's queued debug events (event, error, extra) in order, in one transaction:
    plain debug rows in one INSERT, the callback events (with their outbox rows) one by one."""
    with transaction.atomic():
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
