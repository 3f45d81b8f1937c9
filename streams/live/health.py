"""Liveness and readiness for a load balancer: /healthz (process up), /readyz (load, admitting calls)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from streams.live.admission import admission


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "server_id": settings.STREAMHUB_SERVER_ID})


def readyz(request: HttpRequest) -> JsonResponse:
    live, limit, used = admission.live, admission.limit, admission.used
    ready = admission.ready
    body = {"ready": ready, "live_calls": live, "capacity": limit, "weight": used, "load": round(used / limit, 3)}
    return JsonResponse(body, status=200 if ready else 503)
