"""What every console page shares: read-only record admins, links, ids, a cheap date drill-down."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Exists, Max, Min, QuerySet
from django.http import Http404, HttpRequest
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html


def parse_uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term.strip())
    except ValueError:
        return None


# A primary key longer than this is not one (and would overflow the database's bigint).
MAX_PK_DIGITS = 18


def resolve_object_id(model_admin: admin.ModelAdmin[Any], object_id: str) -> str:
    """The primary key a console URL names: the pk itself, or the record's UUID (a stream id or a
    call UUID, which is what operators paste) when the admin has a `uuid_field`. Anything else,
    or a UUID nobody has, is a 404 rather than a database error."""
    text = object_id.strip()
    if text.isascii() and text.isdigit() and len(text) <= MAX_PK_DIGITS:
        return text
    uuid_field = getattr(model_admin, "uuid_field", "")
    parsed = parse_uuid(text)
    if uuid_field and parsed is not None:
        pk = model_admin.model._default_manager.filter(**{uuid_field: parsed}).values_list("pk", flat=True).first()
        if pk is not None:
            return str(pk)
    raise Http404(f"No {model_admin.model._meta.verbose_name} with id {text[:100]!r}")


def link(url: str, text: object, *, title: str = "") -> str:
    return format_html('<a href="{}" title="{}">{}</a>', url, title, text)


def short_id(value: object) -> str:
    """A UUID in a list column: its first 8 characters, the whole id on hover (search takes either)."""
    text = str(value)
    return format_html('<code class="short-id" title="{}">{}</code>', text, text[:8])


def truncate(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def date_buckets(first: datetime, last: datetime, kind: str) -> list[tuple[datetime, datetime]]:
    """[start, end) of every year, month or day from first to last, in first's time zone."""
    tz = first.tzinfo
    if kind == "year":
        starts = [datetime(year, 1, 1, tzinfo=tz) for year in range(first.year, last.year + 2)]
    elif kind == "month":
        starts = []
        year, month = first.year, first.month
        while True:
            starts.append(datetime(year, month, 1, tzinfo=tz))
            if (year, month) > (last.year, last.month):
                break
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    else:
        day = datetime(first.year, first.month, first.day, tzinfo=tz)
        starts = [day + timedelta(days=n) for n in range((last.date() - first.date()).days + 2)]
    return list(itertools.pairwise(starts))


class DrillDownQuerySet(QuerySet[Any]):
    """The date hierarchy's choices without DISTINCT over a per-row date function.

    Django lists the years/months/days that have rows with SELECT DISTINCT trunc(field),
    which on SQLite calls a Python function for every row (about 1.5 s at 100,000 streams)
    and on PostgreSQL still reads every row. Here the candidate buckets come from MIN/MAX
    (the two ends of the index) and one query asks EXISTS for each bucket (index range seeks).
    """

    MAX_BUCKETS = 400

    # kind and order are Literals in the stubs; the admin passes plain strings
    def datetimes(self, field_name: str, kind: Any, order: Any = "ASC", tzinfo: Any = None) -> Any:
        if kind not in ("year", "month", "day"):
            return super().datetimes(field_name, kind, order, tzinfo)
        bounds = self.aggregate(first=Min(field_name), last=Max(field_name))
        if bounds["first"] is None:
            return []
        tz = tzinfo or timezone.get_current_timezone()
        buckets = date_buckets(bounds["first"].astimezone(tz), bounds["last"].astimezone(tz), kind)
        if len(buckets) > self.MAX_BUCKETS:
            return super().datetimes(field_name, kind, order, tzinfo)
        base = self.order_by()
        probes = {
            f"b{i}": Exists(base.filter(**{f"{field_name}__gte": start, f"{field_name}__lt": end}))
            for i, (start, end) in enumerate(buckets)
        }
        row = self.model._base_manager.annotate(**probes).values(*probes).first() or {}
        found = [start for i, (start, _) in enumerate(buckets) if row.get(f"b{i}")]
        return found[::-1] if order == "DESC" else found


def drill_down(queryset: QuerySet[Any]) -> QuerySet[Any]:
    # the same query, database and router hints as the admin's queryset (Django keeps the last two private)
    using, hints = getattr(queryset, "_db", None), getattr(queryset, "_hints", None)
    return DrillDownQuerySet(model=queryset.model, query=queryset.query, using=using, hints=hints)


class ReadOnlyInline(admin.TabularInline):
    """Rows shown inside another record's page: read only, whoever looks."""

    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyRecordAdmin(admin.ModelAdmin):
    """Rows written by the hub: never added, edited or deleted by hand.

    `uuid_field` names the record's public UUID; its pages then answer to that UUID too.
    """

    uuid_field = ""

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Any:
        if from_field is None and self.uuid_field and parse_uuid(object_id) is not None:
            try:
                object_id = resolve_object_id(self, object_id)
            except Http404:
                return None  # the admin's own "doesn't exist" message and redirect
        return super().get_object(request, object_id, from_field)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The object page is view-only; the model-level permission (obj=None) gates actions.
        if obj is not None:
            return False
        return super().has_change_permission(request)


def object_urls(model_admin: admin.ModelAdmin[Any], model: str, views: dict[str, Any]) -> list[URLPattern]:
    """An admin page per object for each view: `<id>/<slug>/`, named `streams_<model>_<slug>`.

    `<id>` is the primary key or the record's UUID (see resolve_object_id); anything else is a 404.
    """
    wrap = model_admin.admin_site.admin_view
    return [
        path(
            f"<path:object_id>/{slug}/",
            wrap(
                lambda request, object_id, view=view: view(
                    model_admin, request, resolve_object_id(model_admin, object_id)
                )
            ),
            name=f"streams_{model}_{slug.replace('-', '_')}",
        )
        for slug, view in views.items()
    ]
