"""Plivo-wide paging: `limit` 1–20 (default 20), `offset` ≥ 0; `meta` with next/previous URIs.

`meta` carries both `total_count` (the docs) and `count` (the plivo SDK's fixtures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet
from django.http import QueryDict
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions
from rest_framework.request import Request

DEFAULT_LIMIT = 20
MAX_LIMIT = 20
# Bounded so the OFFSET always fits the database's integer (SQLite overflows past 2**63).
MAX_OFFSET = 1_000_000_000

PAGE_PARAMETERS = [
    OpenApiParameter(
        "limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, description="page size (default 20)"
    ),
    OpenApiParameter("offset", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}, description="default 0"),
]


@dataclass(frozen=True)
class Page:
    objects: list[Any]
    meta: dict[str, Any]


def _int_param(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if not (len(text) <= 10 and text.isascii() and text.isdigit() and low <= int(text) <= high):
        raise exceptions.ValidationError({name: f"must be an integer from {low} to {high}"})
    return int(text)


def _page_uri(request: Request, *, limit: int, offset: int) -> str:
    query = QueryDict(mutable=True)
    query["limit"], query["offset"] = str(limit), str(offset)
    for key, values in request.query_params.lists():  # other filters (status=…) carry over
        if key not in query:
            query.setlist(key, values)
    return f"{request.path}?{query.urlencode()}"


def paginate(request: Request, queryset: QuerySet[Any]) -> Page:
    limit = _int_param(request, "limit", default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    offset = _int_param(request, "offset", default=0, low=0, high=MAX_OFFSET)
    total = queryset.count()
    objects = list(queryset[offset : offset + limit])
    following = offset + limit
    meta = {
        "limit": limit,
        "offset": offset,
        "total_count": total,
        "count": total,
        "next": _page_uri(request, limit=limit, offset=following) if following < total else None,
        "previous": _page_uri(request, limit=limit, offset=max(0, offset - limit)) if offset > 0 else None,
    }
    return Page(objects=objects, meta=meta)
