"""Liveness and readiness for a load balancer: /healthz (process up), /readyz (load, admitting calls)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from streams.live.admission import admission


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "server_id": settings.STREAMHUB_SERVER_ID})


def readyz(request: HttpRequest) -> JsonResponse:
    live, limit = admission.live, admission.limit
    ready = live < limit
    body = {"ready": ready, "live_calls": live, "capacity": limit, "load": round(live / limit, 3)}
    return JsonResponse(body, status=200 if ready else 503)
