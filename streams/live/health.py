"""Liveness and readiness for a load balancer: /healthz (process up), /readyz (load, admitting calls)."""

from __future__ import annotations

import asyncio

from django.http import HttpRequest, JsonResponse

from streams.live.admission import admission
from streams.live.session import registry


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "server_id": registry.server_id})


async def readyz(request: HttpRequest) -> JsonResponse:
    """Load and admission; `tasks` (asyncio tasks of the process) shows a leak at a glance."""
    live, limit = admission.live, admission.limit
    ready = live < limit
    body = {
        "ready": ready,
        "live_calls": live,
        "capacity": limit,
        "load": round(live / limit, 3),
        "tasks": len(asyncio.all_tasks()),
    }
    return JsonResponse(body, status=200 if ready else 503)
