"""Calls and streams of hub processes that stopped beating: ended by the beat's sweep.

A call's relays live in the process holding its ingest socket, under that process's
lease (its `HubProcess` row, see `services.hub_heartbeat`). If the process dies
(SIGKILL, OOM, host lost) nothing ends its streams; its heartbeat stops moving. The
sweep then, in two steps that each need the database up:

1. suspects a lease whose heartbeat is older than STREAMHUB_ORPHAN_AFTER_SECONDS;
2. fences it if it is still silent `fence_after_seconds()` after it was suspected (any
   heartbeat clears the suspicion; the fence and the heartbeat are conditional updates
   of the same row, so exactly one of them wins), and only then ends its calls and their
   streams ("Connection error", DroppedStream), timed at its last heartbeat: a dead
   process's streams are billed to its last sign of life, not to the sweep.

So a database outage, however long, ends nothing by itself: when the database is back,
a live process beats (it retries every second) long before a suspicion it could not
answer becomes a fence. A process that was merely stalled past both steps finds its
lease fenced at its next beat and stops relaying those calls and closes their sockets
(`live.session.Registry`): one truth, never a call ended here and relayed there.

The sweep also ends the calls a live process no longer holds (its heartbeat lists the
calls it holds), and any stream left active on an ended call. Exactly once however many
sweepers run: `services.call_end` / `stream_end` are conditional updates.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from streams.core import application as plivo_app
from streams.models import Call, HubProcess, Stream
from streams.services import call_end, stream_end

log = logging.getLogger(__name__)

SWEEP_BATCH = 500


def fence_after_seconds() -> float:
    """How long a suspected lease may answer with a heartbeat before it is fenced."""
    return max(3 * settings.STREAMHUB_HEARTBEAT_SECONDS, 5.0)


def leases_fence(*, now: datetime) -> list[str]:
    """Suspect silent leases, fence those that stayed silent; returns the ids fenced now."""
    cutoff = now - timedelta(seconds=settings.STREAMHUB_ORPHAN_AFTER_SECONDS)
    HubProcess.objects.filter(fenced_at__isnull=True, suspected_at__isnull=True, heartbeat_at__lt=cutoff).update(
        suspected_at=now
    )
    confirm = now - timedelta(seconds=fence_after_seconds())
    doomed = HubProcess.objects.filter(fenced_at__isnull=True, suspected_at__lte=confirm, heartbeat_at__lt=cutoff)
    fenced: list[str] = []
    for server_id in doomed.values_list("server_id", flat=True):
        if HubProcess.objects.filter(
            server_id=server_id, fenced_at__isnull=True, suspected_at__lte=confirm, heartbeat_at__lt=cutoff
        ).update(fenced_at=now):
            fenced.append(server_id)
            log.warning("hub process %s stopped beating: its lease is fenced", server_id)
    return fenced


def streams_close_orphaned(*, now: datetime | None = None, limit: int = SWEEP_BATCH) -> int:
    """End the calls and streams no live process holds; returns how many streams it ended."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.STREAMHUB_ORPHAN_AFTER_SECONDS)
    leases_fence(now=now)
    ended = 0

    # Calls of fenced leases, and of ids that never beat at all (older than the window).
    known = HubProcess.objects.values("server_id")
    fenced = HubProcess.objects.filter(fenced_at__isnull=False).values("server_id")
    dead_calls = Call.objects.filter(status=Call.Status.LIVE).filter(
        Q(server_id__in=fenced) | Q(started_at__lt=cutoff) & ~Q(server_id__in=known)
    )
    last_beat = dict(
        HubProcess.objects.filter(server_id__in=dead_calls.values("server_id")).values_list("server_id", "heartbeat_at")
    )
    for call in dead_calls.select_related("account").order_by("pk")[:limit]:
        error = f"hub process {call.server_id or '(unknown)'} stopped responding"
        call.record_hangup_cause(cause_name=plivo_app.HUB_LOST.name, detail=error)  # for its hangup request
        streams = call_end(
            call=call,
            notify_session=False,
            reason=Stream.Reason.CONNECTION_ERROR,
            error=error,
            at=last_beat.get(call.server_id),
        )
        ended += len(streams)
        log.warning("ended call %s and %d streams: %s", call.call_uuid, len(streams), error)

    # Calls a live process no longer holds (its last heartbeat did not list them).
    beat_grace = timedelta(seconds=settings.STREAMHUB_HEARTBEAT_SECONDS)
    for server_id, beat_at, held in HubProcess.objects.filter(
        fenced_at__isnull=True, suspected_at__isnull=True, heartbeat_at__gte=cutoff
    ).values_list("server_id", "heartbeat_at", "calls"):
        lost = (
            Call.objects.filter(
                status=Call.Status.LIVE, server_id=server_id, started_at__lt=min(cutoff, beat_at - beat_grace)
            )
            .exclude(pk__in=[int(pk) for pk in held or []])
            .order_by("pk")
        )
        for call in lost[:limit]:
            error = f"hub process {server_id} no longer holds this call"
            call.record_hangup_cause(cause_name=plivo_app.HUB_LOST.name, detail=error)
            streams = call_end(call=call, notify_session=False, reason=Stream.Reason.CONNECTION_ERROR, error=error)
            ended += len(streams)
            log.warning("ended call %s and %d streams: %s", call.call_uuid, len(streams), error)

    # Streams left active on a call that already ended.
    strays = (
        Stream.objects.filter(end_time__isnull=True, call__status=Call.Status.ENDED, created_at__lt=cutoff)
        .select_related("account", "call")
        .order_by("pk")
    )
    for stream in strays[:limit]:
        if stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False, at=stream.call.ended_at):
            ended += 1
            log.warning("ended stream %s: its call %s had ended", stream.stream_id, stream.call.call_uuid)
    return ended
