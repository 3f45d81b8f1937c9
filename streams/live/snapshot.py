"""Each hub process tells the console what its live streams are doing, every ~2 s.

A call's relays live in the memory of the process holding its ingest socket, while the admin
page may be served by any process. So every hub process writes a compact snapshot of its
live streams to its HubProcess row (one UPDATE every STREAMHUB_LIVE_SNAPSHOT_SECONDS while
it holds calls, one more when the last call ends, nothing while idle), and the live page
joins those snapshots with the live Call and Stream rows. This works the same with one
process and the embedded defaults (SQLite) as with many processes on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.conf import settings

from streams import services
from streams.live.dbasync import db_async
from streams.live.metrics import relay_state, sessions

log = logging.getLogger(__name__)


def snapshot() -> dict[str, Any]:
    """{stream_id: [state, send-buffer fill %, playback queue s, frames sent]} of this process's live streams."""
    out: dict[str, Any] = {}
    for session in sessions():
        playback = round(len(session.playback) * 0.020, 2)
        for stream_id, relay in list(session.relays.items()):
            queued = playback if relay.stream.bidirectional else None
            out[stream_id] = [relay_state(relay), round(relay.buffer.usage_pct, 1), queued, relay.frames_sent]
    return out


async def publish_forever() -> None:
    published_empty = True  # a process that never holds a call never writes
    while True:
        await asyncio.sleep(settings.STREAMHUB_LIVE_SNAPSHOT_SECONDS)
        current = snapshot()
        if not current and not sessions():
            if published_empty:
                continue  # idle: no writes
            published_empty = True
        else:
            published_empty = False
        try:
            await db_async(services.hub_publish_snapshot)(server_id=settings.STREAMHUB_SERVER_ID, snapshot=current)
        except Exception:
            log.exception("could not publish the live snapshot")
            published_empty = False
