"""ORM calls from the asyncio side, off the event loop and in parallel.

Channels' `database_sync_to_async` is thread-sensitive: every call of every session
queues on one thread, so a burst of call set-ups (auth, Call row, Stream rows, events)
serialises behind one connection. Lifecycle writes are independent transactions, so
they run on the loop's thread pool instead, each thread with its own (persistent)
connection; old connections are still closed around each call. Lifecycle writes go
through `db_persist`, which retries them until they succeed. Each of these connections
has the lifecycle's lock and statement limits for its whole session (dbguard.bound_session).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from channels.db import DatabaseSyncToAsync
from django.core.exceptions import ObjectDoesNotExist
from django.db import DatabaseError

from streamhub.dbguard import bound_session

log = logging.getLogger(__name__)


def db_async(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    return cast(
        Callable[..., Awaitable[Any]], DatabaseSyncToAsync(functools.partial(_bounded, fn), thread_sensitive=False)
    )


def _bounded(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    bound_session()
    return fn(*args, **kwargs)


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
