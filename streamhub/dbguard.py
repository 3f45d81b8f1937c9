"""Bounded transactions for lifecycle and outbox work (PostgreSQL `lock_timeout` and `statement_timeout`).

A relay's teardown, a heartbeat or a callback claim must never wait without limit behind a
row lock someone else holds (a stuck admin query, a transaction left open): inside
`bounded_atomic` a lock wait ends after STREAMHUB_DB_LOCK_TIMEOUT_SECONDS and a statement
after STREAMHUB_DB_STATEMENT_TIMEOUT_SECONDS with an OperationalError, which the caller's
retry (the live side retries lifecycle writes with backoff) or the next sweep takes up.
Both are `SET LOCAL`: they end with the transaction and never touch the API's, the admin's
or a migration's queries. SQLite has no such settings; its writes wait at most its busy
timeout (20 s).

The hub's own database threads (streams.live.dbasync) run nothing but lifecycle and
housekeeping work, so their connections take both limits for the whole session, once per
connection (`bound_session`): their transactions then skip the per-transaction `set_config`
(one round trip per lifecycle step), and a single-statement write outside any transaction
(services' one-statement steps on PostgreSQL) is bounded too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connections, transaction


def _ms(seconds: float) -> str:
    return str(max(1, int(seconds * 1000)))


def session_limits() -> tuple[str, str]:
    """(lock_timeout, statement_timeout) in milliseconds, as set_config takes them."""
    return _ms(settings.STREAMHUB_DB_LOCK_TIMEOUT_SECONDS), _ms(settings.STREAMHUB_DB_STATEMENT_TIMEOUT_SECONDS)


_BOUNDED = "_streamhub_bounded"  # set on a psycopg connection whose session has both limits


def bound_session(using: str = "default") -> None:
    """Give this thread's connection both limits for its whole session (PostgreSQL; once per connection)."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    connection.ensure_connection()
    raw = connection.connection
    if getattr(raw, _BOUNDED, False):
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
            list(session_limits()),
        )
    setattr(raw, _BOUNDED, True)


def session_bounded(using: str = "default") -> bool:
    """Whether this thread's connection has both limits for its session already (bound_session)."""
    raw = connections[using].connection
    return raw is not None and getattr(raw, _BOUNDED, False)


@contextmanager
def bounded_atomic(using: str = "default", *, savepoint: bool = True) -> Iterator[None]:
    """`transaction.atomic()` whose lock waits and statements are bounded (PostgreSQL).

    `savepoint=False` (for a write that only ever runs whole with its caller's, like a debug
    row inside a stream's end): nested in another block, no SAVEPOINT / RELEASE pair (two
    statements per use); an error then fails the outer block, as it would anyway.
    """
    connection = connections[using]
    outermost = not connection.in_atomic_block  # SET LOCAL lasts for the whole transaction
    with transaction.atomic(using=using, savepoint=savepoint):
        if outermost and connection.vendor == "postgresql" and not session_bounded(using):
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                    list(session_limits()),
                )
        yield
