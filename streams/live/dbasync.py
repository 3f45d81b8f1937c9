"""ORM calls from the asyncio side, off the event loop and in parallel.

Channels' `database_sync_to_async` is thread-sensitive: every call of every session
queues on one thread, so a burst of call set-ups (auth, Call row, Stream rows, events)
serialises behind one connection. Lifecycle writes are independent transactions, so
they run on the loop's thread pool instead, each thread with its own (persistent)
connection; old connections are still closed around each call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from channels.db import DatabaseSyncToAsync


def db_async(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    return cast(Callable[..., Awaitable[Any]], DatabaseSyncToAsync(fn, thread_sensitive=False))
