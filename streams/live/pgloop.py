"""A call's lifecycle statements on the event loop itself (PostgreSQL), with no database thread.

Each lifecycle step on PostgreSQL is one statement (streams/pgwrite.py), yet a hop to a database
thread and back cost more than the statement: the thread and the event loop hand Python's
GIL to each other at every blocking point of the hop (the executor's queue, psycopg's send and
wait, the result's wake-up). `strace -f -c` of a hub setting up and hanging up 50 calls a second:
157 futex calls per call for its three steps (2.3 this way), the database threads spending
4.3-4.9 ms of CPU per call for 3.0-3.5 ms of work. Here the same steps (the same generators
`pgwrite.run` drives on a thread) run on a few psycopg `AsyncConnection`s of the loop: their
sockets wait in the loop's own poll, and no thread is involved.

Only the steps that are pure statements take this way: a set-up with streams and no
application, a stream's start with no status callback, a hang-up that `plain_hang_up_possible`.
The rest (the ORM's transactions, row locks, outbox rows) stays on the database threads
(streams.live.dbasync), as do SQLite and `STREAMHUB_DB_CONN_MAX_AGE=0`. This departs from
ARCHITECTURE's "ORM off the loop" in its letter, not its aim: nothing here blocks the loop
(psycopg's async driver waits in the loop's poll); building a step's rows is CPU work the
thread did while holding the GIL anyway.

The connections: at most POOL_SIZE per event loop (a loop of its own in each test), opened when
first needed with Django's own parameters (its adapters and time zone), in autocommit, with the
lifecycle's lock and statement limits for their whole session (as dbguard.bound_session gives
the threads' connections). One that idled longer than HEALTHY_SECONDS is checked with `SELECT 1`
first (as Django checks a persistent connection); one that failed, was cancelled mid-statement
or is older than STREAMHUB_DB_CONN_MAX_AGE is closed. Errors come out as Django's
(`django.db.DatabaseError` and its kinds), so callers handle both ways alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from typing import Any, TypeVar, cast

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from streamhub.dbguard import session_limits
from streams import pgwrite
from streams.live.dbasync import HEALTHY_SECONDS

log = logging.getLogger(__name__)

T = TypeVar("T")
POOL_SIZE = 4


def usable() -> bool:
    """PostgreSQL with persistent connections (with CONN_MAX_AGE=0 each statement would connect)."""
    db = connections.settings[DEFAULT_DB_ALIAS]
    max_age = db.get("CONN_MAX_AGE", 0)
    return str(db["ENGINE"]).endswith("postgresql") and (max_age is None or max_age > 0)


class _Connection:
    __slots__ = ("born", "conn", "used")

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.born = self.used = time.monotonic()


class LoopPool:
    """Up to `size` connections for one event loop; a statement waits for a free one."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.size = size
        self._idle: list[_Connection] = []
        self._open = 0  # idle, in use, or being opened
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closing: set[asyncio.Task[None]] = set()

    async def fetch(self, sql: str, params: list[Any]) -> pgwrite.Rows:
        db = connections[DEFAULT_DB_ALIAS]  # this thread's wrapper: never connected here, it maps the errors
        with db.wrap_database_errors:
            held = await self._acquire()
            ok = False
            try:
                cursor = held.conn.cursor()
                await cursor.execute(sql, params)
                rows = await cursor.fetchall() if cursor.description is not None else []
                ok = True
                return rows
            finally:
                self._release(held, ok)

    async def _acquire(self) -> _Connection:
        while True:
            while self._idle:
                held = self._idle.pop()
                if time.monotonic() - held.used < HEALTHY_SECONDS:
                    return held
                try:  # idle a while: the server may have closed it since (a restart, a timeout)
                    await held.conn.execute("SELECT 1")
                except psycopg.Error:
                    self._discard(held)
                    continue
                except BaseException:  # cancelled mid-check: its slot must not be lost with it
                    self._discard(held)
                    raise
                return held
            if self._open < self.size:
                self._open += 1
                try:
                    return _Connection(await self._connect())
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake()  # it was this one's turn: pass it on
                raise

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        params = connections[DEFAULT_DB_ALIAS].get_connection_params()
        params.pop("cursor_factory", None)  # Django's client-binding sync cursor; the async default binds on the server
        conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        try:
            await conn.execute(
                "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
                list(session_limits()),
            )
        except BaseException:
            self._closed_later(conn)  # (the caller gives its slot back)
            raise
        return conn

    def _release(self, held: _Connection, ok: bool) -> None:
        now = time.monotonic()
        max_age = settings.DATABASES[DEFAULT_DB_ALIAS].get("CONN_MAX_AGE")
        if not ok or held.conn.closed or (max_age is not None and now - held.born > max_age):
            self._discard(held)
        else:
            held.used = now
            self._idle.append(held)
        self._wake()

    def _discard(self, held: _Connection) -> None:
        self._open -= 1
        self._closed_later(held.conn)

    def _closed_later(self, conn: psycopg.AsyncConnection[Any]) -> None:
        task = asyncio.get_running_loop().create_task(_close(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close the idle connections (those in use close when they come back failed, or with the loop)."""
        idle, self._idle = self._idle, []
        for held in idle:
            self._open -= 1
            await held.conn.close()
        await asyncio.gather(*self._closing, return_exceptions=True)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


async def _close(conn: psycopg.AsyncConnection[Any]) -> None:
    """Close a connection; one left mid-statement (its task was cancelled) has the server cancel
    the statement first, which would otherwise run on (and hold its locks) until it ended."""
    try:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
            await asyncio.wait_for(conn.cancel_safe(), CANCEL_SECONDS)
    except (psycopg.Error, TimeoutError) as exc:
        log.debug("could not cancel a statement left running: %s", exc)
    await conn.close()


CANCEL_SECONDS = 2.0
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopPool] = weakref.WeakKeyDictionary()


def pool() -> LoopPool:
    loop = asyncio.get_running_loop()
    found = _pools.get(loop)
    if found is None:
        found = _pools[loop] = LoopPool()
    return found


def stats() -> tuple[int, int]:
    """(connections open, statements waiting for one) over this process's loops, for /metrics."""
    pools = list(_pools.values())
    return sum(p._open for p in pools), sum(len(p._waiters) for p in pools)


async def run(step: pgwrite.Step[T]) -> T:
    """Drive a pgwrite step on the loop's connections; its outcome (or Django's DatabaseError)."""
    fetch = pool().fetch
    try:
        statement = next(step)
        while True:
            statement = step.send(await fetch(*statement))
    except StopIteration as done:
        return cast(T, done.value)
