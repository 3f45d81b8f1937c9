"""ORM calls from the asyncio side, off the event loop and in parallel.

Channels' `database_sync_to_async` is thread-sensitive: every call of every session
queues on one thread, so a burst of call set-ups (auth, Call row, Stream rows, events)
serialises behind one connection. Lifecycle writes are independent transactions, so
they run on the loop's thread pool instead, each thread with its own (persistent)
connection; old connections are still closed around each call. Lifecycle writes go
through `db_persist`, which retries them until they succeed (on PostgreSQL a call's plain
one-statement steps skip the thread altogether: streams.live.pgloop). Each of these connections
has the lifecycle's lock and statement limits for its whole session (dbguard.bound_session).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from channels.db import DatabaseSyncToAsync
from django.core.exceptions import ObjectDoesNotExist
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from streamhub.dbguard import bound_session

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=256)  # built once per function: SyncToAsync's set-up inspects it each time
def db_async(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    return cast(
        Callable[..., Awaitable[Any]], DatabaseSyncToAsync(functools.partial(_bounded, fn), thread_sensitive=False)
    )


# A connection that ran a statement this recently is not health-checked again (below).
HEALTHY_SECONDS = 1.0
_USED_AT = "_streamhub_used_at"  # on the connection wrapper: (the driver's connection, when a hop last succeeded on it)


def _bounded(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """One hop on a database thread: the session's limits, then `fn`.

    Django checks a persistent connection's health (`SELECT 1`) at its first use after each
    `close_old_connections`, which Channels runs around every hop: one round trip more for each
    lifecycle step, a quarter of a call's statements once each step is one statement. A
    connection whose last hop succeeded less than HEALTHY_SECONDS ago is taken as checked: it
    is as fresh as one checked a moment before the statement. One that failed is not (Django
    closes it when errors occurred), nor one idle for longer; a lifecycle write that still
    meets a connection lost meanwhile fails once and db_persist tries it again on a new one."""
    connection = connections[DEFAULT_DB_ALIAS]
    raw, used_at = getattr(connection, _USED_AT, (None, 0.0))
    if raw is not None and raw is connection.connection and time.monotonic() - used_at < HEALTHY_SECONDS:
        connection.health_check_done = True  # type: ignore[attr-defined]  # (not in django-stubs)
    bound_session()
    result = fn(*args, **kwargs)
    if connection.connection is not None and not connection.errors_occurred:
        setattr(connection, _USED_AT, (connection.connection, time.monotonic()))
    return result


RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 10.0


async def db_persist(fn: Callable[..., Any], /, *, what: str, **kwargs: Any) -> Any:
    """Run a lifecycle write until it succeeds (or this task is cancelled: the process stops).

    A stream's start and end and a call's end are never dropped: one failed write (a
    database restart, a lock timeout, a lost connection) would leave a stream `in-progress`
    for ever. The writes are idempotent (conditional updates in one transaction), so a try
    whose outcome is unknown is simply tried again. Backoff 0.2 s doubling to 10 s.
    """
    delay = RETRY_FIRST_SECONDS
    attempt = 0
    while True:
        attempt += 1
        try:
            return await db_async(fn)(**kwargs)
        except ObjectDoesNotExist:
            raise  # the row is gone: nothing left to write
        except Exception as exc:
            if attempt == 1 and not isinstance(exc, DatabaseError):  # a bug, not an outage: show where
                log.exception("%s failed; retrying until it succeeds", what)
            elif attempt == 1:
                log.warning("%s failed; retrying until it succeeds: %s: %s", what, type(exc).__name__, exc)
            else:
                log.warning("%s failed again (try %d): %s: %s", what, attempt, type(exc).__name__, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_SECONDS)
