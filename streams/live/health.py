"""Liveness and readiness for a load balancer: /healthz (process up), /readyz (can take calls).

/readyz is 503 when this process should get no new calls: at its call capacity, its event
loop lagging past STREAMHUB_READY_MAX_LOOP_LAG_SECONDS (overloaded), the database
unreachable, or Redis unreachable when REDIS_URL is set (no control messages, no
callbacks). The lag is `looplag.sustained_lag()`: late on most ticks of the last second, not
on one. The database and Redis answers are cached for CHECK_TTL seconds, so a load
balancer probing every second costs at most one query and one PING per second.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from streams.live import looplag
from streams.live.admission import admission
from streams.live.dbasync import db_async
from streams.live.session import registry

CHECK_TTL = 2.0
CHECK_TIMEOUT = 2.0


class CachedCheck:
    """The result of `probe` ("ok" or what failed), recomputed at most once per `ttl` seconds."""

    def __init__(self, probe: Callable[[], None], ttl: float = CHECK_TTL, clock: Callable[[], float] = time.monotonic):
        self.probe, self.ttl, self.clock = probe, ttl, clock
        self.result = ""
        self.at = -float("inf")
        self.lock = threading.Lock()

    def __call__(self) -> str:
        with self.lock:
            now = self.clock()
            if now - self.at >= self.ttl:
                try:
                    self.probe()
                    self.result = "ok"
                except Exception as exc:
                    self.result = f"unreachable: {type(exc).__name__}"
                self.at = self.clock()
            return self.result


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


_redis_client = None


def _redis() -> None:
    global _redis_client
    if _redis_client is None:
        import redis

        _redis_client = redis.Redis.from_url(
            str(settings.REDIS_URL), socket_timeout=CHECK_TIMEOUT, socket_connect_timeout=CHECK_TIMEOUT
        )
    _redis_client.ping()


database_check = CachedCheck(_database)
redis_check = CachedCheck(_redis)


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "server_id": registry.server_id})


async def readyz(request: HttpRequest) -> JsonResponse:
    """Whether this process should get new calls, and why not; `tasks` shows a task leak at a glance."""
    live, limit, used = admission.live, admission.limit, admission.used
    lag = looplag.sustained_lag()
    max_lag = settings.STREAMHUB_READY_MAX_LOOP_LAG_SECONDS
    # the probes block (a query, a PING): in threads, never on the loop that carries the calls
    database = await db_async(database_check)()
    redis_state = await asyncio.to_thread(redis_check) if settings.REDIS_URL else "not configured"
    problems = []
    if not admission.ready:  # counted in weight (streams/live/admission.py)
        problems.append("at capacity")
    if admission.overloaded():  # the loop-lag guard refuses new calls (streams/live/admission.py)
        problems.append(f"event loop lag {lag * 1000:.0f} ms: refusing new calls until it recovers")
    elif max_lag and lag > max_lag:
        problems.append(f"event loop lag {lag * 1000:.0f} ms over {max_lag * 1000:.0f} ms")
    if database != "ok":
        problems.append(f"database {database}")
    if redis_state not in ("ok", "not configured"):
        problems.append(f"redis {redis_state}")
    body = {
        "ready": not problems,
        "live_calls": live,
        "capacity": limit,
        "weight": used,
        "load": round(used / limit, 3),
        "loop_lag_ms": round(lag * 1000, 2),
        "database": database,
        "redis": redis_state,
        "problems": problems,
        "tasks": len(asyncio.all_tasks()),  # asyncio tasks of the process: a leak shows at a glance
    }
    return JsonResponse(body, status=200 if not problems else 503)
