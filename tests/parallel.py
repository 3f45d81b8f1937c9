"""Each pytest-xdist worker gets its own data directory and Redis database.

bin/test runs the suite on STREAMHUB_TEST_WORKERS processes (2 by default). Everything
a test shares through the environment must then be per worker: the embedded broker's
queue, the SQLite files and the beat schedule live under STREAMHUB_DATA_DIR, and a session
fixture empties the broker (or flushes the Redis database) at the start of each worker's
run. The test database itself is already per worker (pytest-django suffixes its name).

Loaded with `-p tests.parallel` (pyproject's addopts), so this runs when a worker starts,
before pytest-django imports the settings.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from urllib.parse import urlsplit, urlunsplit


def isolate(environ: MutableMapping[str, str]) -> None:
    worker = environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, … in a worker; unset otherwise
    if not worker:
        return
    index = int(worker.removeprefix("gw"))
    base = environ.get("STREAMHUB_DATA_DIR")
    if base:
        environ["STREAMHUB_DATA_DIR"] = os.path.join(base, worker)
    redis_url = environ.get("REDIS_URL")
    if redis_url:
        parts = urlsplit(redis_url)
        db = int(parts.path.strip("/") or 0) + index
        if db > 15:
            raise RuntimeError(f"REDIS_URL {redis_url} leaves no Redis database for xdist worker {worker}")
        environ["REDIS_URL"] = urlunsplit(parts._replace(path=f"/{db}"))


isolate(os.environ)
