"""Streams orphaned by a hub process that stopped beating: ended by the beat's sweep.

A call's relays live in the process holding its ingest socket. If that process dies
(SIGKILL, OOM, host lost) nothing ends its streams; its heartbeat row stops moving,
and once it is older than STREAMHUB_ORPHAN_AFTER_SECONDS the sweep ends the streams
("Connection error", DroppedStream) and then their calls. Exactly once however many
sweepers run: `services.stream_end` and `Call.mark_ended` are conditional updates.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from streams.core import application as plivo_app
from streams.models import Call, HubProcess, Stream
from streams.services import call_hangup_request, stream_end

log = logging.getLogger(__name__)

SWEEP_BATCH = 500


def streams_close_orphaned(*, now: datetime | None = None, limit: int = SWEEP_BATCH) -> int:
    """End active streams held by hub processes that stopped beating; returns how many it ended."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.STREAMHUB_ORPHAN_AFTER_SECONDS)
    alive = HubProcess.objects.filter(heartbeat_at__gte=cutoff).values("server_id")
    orphans = (
        Stream.objects.filter(end_time__isnull=True, created_at__lt=cutoff)
        .exclude(server_id__in=alive)
        .select_related("account", "call")
        .order_by("pk")
    )
    ended = 0
    for stream in orphans[:limit]:
        error = f"hub process {stream.server_id or '(unknown)'} stopped responding"
        if stream_end(stream=stream, reason=Stream.Reason.CONNECTION_ERROR, error=error, notify_session=False):
            ended += 1
            log.warning("ended stream %s: %s", stream.stream_id, error)
    calls = (
        Call.objects.filter(status=Call.Status.LIVE, started_at__lt=cutoff)
        .exclude(server_id__in=alive)
        # Exists, not exclude(streams__end_time__isnull=True): that also matches a call with no
        # stream at all (the join's NULL), and such a call (an application still being fetched)
        # would stay live forever
        .exclude(Exists(Stream.objects.filter(call=OuterRef("pk"), end_time__isnull=True)))
        .order_by("pk")
    )
    for call in calls[:limit]:
        with transaction.atomic():  # its application's hangup request is not lost with the process
            ended_now = call.mark_ended()
            if ended_now:
                call_hangup_request(call=call, default_cause=plivo_app.HUB_LOST)
        if ended_now:
            log.warning("ended call %s: hub process %s stopped responding", call.call_uuid, call.server_id)
    return ended
