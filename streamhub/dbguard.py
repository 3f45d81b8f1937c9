"""Bounded transactions for lifecycle and outbox work (PostgreSQL `lock_timeout` and `statement_timeout`).

A relay's teardown, a heartbeat or a callback claim must never wait without limit behind a
row lock someone else holds (a stuck admin query, a transaction left open): inside
`bounded_atomic` a lock wait ends after STREAMHUB_DB_LOCK_TIMEOUT_SECONDS and a statement
after STREAMHUB_DB_STATEMENT_TIMEOUT_SECONDS with an OperationalError, which the caller's
retry (the live side retries lifecycle writes with backoff) or the next sweep takes up.
Both are `SET LOCAL`: they end with the transaction and never touch the API's, the admin's
or a migration's queries. SQLite has no such settings; its writes wait at most its busy
timeout (20 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connections, transaction


def _ms(seconds: float) -> str:
    return str(max(1, int(seconds * 1000)))


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
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                    [
                        _ms(settings.STREAMHUB_DB_LOCK_TIMEOUT_SECONDS),
                        _ms(settings.STREAMHUB_DB_STATEMENT_TIMEOUT_SECONDS),
                    ],
                )
        yield
