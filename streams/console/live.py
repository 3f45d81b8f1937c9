"""The console's live view (what is up right now) and overview (the last 24 hours).

Live view: the live Call and Stream rows (any process can read them) joined with the
snapshots that each hub process publishes of its relays every ~2 s (`live.snapshot`,
stored on its HubProcess row): state, send-buffer fill and playback queue live only in
the memory of the process holding the call. A stream whose process has not published
for SNAPSHOT_STALE_SECONDS shows its database status and no buffer figures. The page
reloads its table every 2 s with a few lines of JavaScript (a server-rendered fragment;
without JavaScript, a meta refresh reloads the page).

Overview: calls per hour, stream ends by hangup reason and the callback success rate per
hour, each one aggregate query, drawn server-side by `core.charts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import TruncHour
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.safestring import mark_safe

from callbacks.models import CallbackDelivery
from streams.console.views import admin_context, utc
from streams.core import charts
from streams.models import Call, HubProcess, Stream, StreamEvent

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

MAX_LIVE_CALLS = 500
REFRESH_SECONDS = 2
REASON_COLOURS = {
    "Call hangup": "#455a64",
    "API request": "#1565c0",
    "Stream timeout": "#6a1b9a",
    "Connection error": "#c62828",
}


def snapshot_stale_seconds() -> float:
    return max(10.0, 5 * settings.STREAMHUB_LIVE_SNAPSHOT_SECONDS)


@dataclass
class LiveStream:
    stream: Stream
    url: str
    state: str
    seconds_up: int
    buffer_pct: float | None
    playback_s: float | None
    last_event: str
    fresh: bool


@dataclass
class LiveCall:
    call: Call
    url: str
    seconds_up: int
    started: str
    streams: list[LiveStream] = field(default_factory=list)


def snapshots(now: datetime) -> dict[str, list[Any]]:
    """{stream_id: [state, buffer %, playback s, frames]} from every hub process that published lately."""
    fresh = now - timedelta(seconds=snapshot_stale_seconds())
    merged: dict[str, list[Any]] = {}
    for snap in HubProcess.objects.filter(snapshot_at__gte=fresh).values_list("live_snapshot", flat=True):
        if isinstance(snap, dict):
            merged.update({str(k): v for k, v in snap.items() if isinstance(v, list) and len(v) >= 3})
    return merged


def live_calls(now: datetime | None = None) -> list[LiveCall]:
    now = now or timezone.now()
    calls = list(
        Call.objects.filter(status=Call.Status.LIVE)
        .select_related("account")
        .order_by("started_at", "id")[:MAX_LIVE_CALLS]
    )
    last_event = StreamEvent.objects.filter(stream=OuterRef("pk")).order_by("-timestamp", "-id").values("event")[:1]
    streams = (
        Stream.objects.filter(call__in=calls, end_time__isnull=True)
        .annotate(last_event=Subquery(last_event))
        .order_by("created_at", "id")
    )
    state = snapshots(now)
    rows = {
        call.pk: LiveCall(
            call=call,
            url=reverse("admin:streams_call_change", args=[call.pk]),
            seconds_up=max(0, int((now - call.started_at).total_seconds())),
            started=utc(call.started_at),
        )
        for call in calls
    }
    for stream in streams:
        snap = state.get(str(stream.stream_id))
        fallback = "connecting" if stream.status == Stream.Status.INITIATED else "streaming"
        rows[stream.call_id].streams.append(
            LiveStream(
                stream=stream,
                url=reverse("admin:streams_stream_change", args=[stream.pk]),
                state=str(snap[0]) if snap else fallback,
                seconds_up=max(0, int((now - stream.created_at).total_seconds())),
                buffer_pct=snap[1] if snap else None,
                playback_s=snap[2] if snap else None,
                last_event=getattr(stream, "last_event", None) or "—",
                fresh=snap is not None,
            )
        )
    return list(rows.values())


def _allowed(model_admin: ModelAdmin[Any], request: HttpRequest) -> None:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied


def live_view(model_admin: ModelAdmin[Any], request: HttpRequest) -> HttpResponse:
    """/admin/streams/call/live/: live calls and their streams, refreshed every 2 s."""
    _allowed(model_admin, request)
    context = admin_context(
        model_admin,
        request,
        title="Live calls",
        calls=live_calls(),
        now=utc(timezone.now()),
        rows_url=reverse("admin:streams_live_rows"),
        overview_url=reverse("admin:streams_overview"),
        refresh_seconds=REFRESH_SECONDS,
        limit=MAX_LIVE_CALLS,
    )
    return TemplateResponse(request, "admin/streams/live.html", context)


def live_rows_view(model_admin: ModelAdmin[Any], request: HttpRequest) -> HttpResponse:
    """The live table alone, for the page's refresh."""
    _allowed(model_admin, request)
    context = {"calls": live_calls(), "now": utc(timezone.now()), "limit": MAX_LIVE_CALLS}
    return TemplateResponse(request, "admin/streams/includes/live_table.html", context)


# --- overview ---------------------------------------------------------------------------


def hour_slots(now: datetime, hours: int = 24) -> list[datetime]:
    top = now.replace(minute=0, second=0, microsecond=0)
    return [top - timedelta(hours=hours - 1 - i) for i in range(hours)]


def _by_hour(rows: Any) -> dict[datetime, int]:
    return {row["hour"].replace(minute=0, second=0, microsecond=0): row["n"] for row in rows if row["hour"]}


def overview_context(now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    slots = hour_slots(now)
    since = slots[0]
    calls = _by_hour(
        Call.objects.filter(started_at__gte=since)
        .annotate(hour=TruncHour("started_at"))
        .values("hour")
        .annotate(n=Count("id"))
        .order_by()
    )
    ends = dict(
        Stream.objects.filter(end_time__gte=since)
        .order_by()
        .values_list("hangup_reason")
        .annotate(n=Count("id"))
        .values_list("hangup_reason", "n")
    )
    finished = (CallbackDelivery.State.DELIVERED, CallbackDelivery.State.FAILED)
    outcomes: dict[tuple[datetime, str], int] = {}
    for row in (
        CallbackDelivery.objects.filter(created_at__gte=since, state__in=finished)
        .annotate(hour=TruncHour("created_at"))
        .values("hour", "state")
        .annotate(n=Count("id"))
        .order_by()
    ):
        outcomes[(row["hour"].replace(minute=0, second=0, microsecond=0), row["state"])] = row["n"]

    def label(moment: datetime) -> str:
        return moment.strftime("%H:00")

    call_bars = [
        charts.Bar(label(s), float(calls.get(s, 0)), f"{label(s)} UTC: {calls.get(s, 0)} calls") for s in slots
    ]
    rate_bars = []
    for slot in slots:
        ok, failed = outcomes.get((slot, "delivered"), 0), outcomes.get((slot, "failed"), 0)
        rate = 100.0 * ok / (ok + failed) if ok + failed else None
        note = f"{ok} delivered, {failed} failed" if ok + failed else "no callback finished"
        rate_bars.append(charts.Bar(label(slot), rate, f"{label(slot)} UTC: {note}"))
    reasons = [(reason, int(ends.get(reason, 0)), REASON_COLOURS[reason]) for reason in REASON_COLOURS]
    delivered = sum(n for (_, state), n in outcomes.items() if state == "delivered")
    failed = sum(n for (_, state), n in outcomes.items() if state == "failed")
    # core.charts escapes every piece of text it writes
    return {
        "calls_chart": mark_safe(  # noqa: S308
            charts.bar_chart(call_bars, title="Calls per hour (UTC)", css_class="calls-per-hour", label_every=2)
        ),
        "ends_chart": mark_safe(  # noqa: S308
            charts.category_chart(reasons, title="Stream ends by hangup reason", css_class="ends-by-reason")
        ),
        "callbacks_chart": mark_safe(  # noqa: S308
            charts.bar_chart(
                rate_bars,
                title="Callback success rate per hour (delivered / finished)",
                css_class="callback-success",
                unit=" %",
                fixed_max=100.0,
                colour="#2e7d32",
                label_every=2,
            )
        ),
        "totals": [
            ("Calls", sum(calls.values())),
            ("Stream ends", sum(ends.values())),
            ("Callbacks delivered", delivered),
            ("Callbacks failed", failed),
        ],
        "since": utc(since),
        "now": utc(now),
    }


def overview_view(model_admin: ModelAdmin[Any], request: HttpRequest) -> HttpResponse:
    """/admin/streams/call/overview/: the last 24 hours in three charts."""
    _allowed(model_admin, request)
    context = admin_context(
        model_admin,
        request,
        title="Overview: the last 24 hours",
        live_url=reverse("admin:streams_live"),
        **overview_context(),
    )
    return TemplateResponse(request, "admin/streams/overview.html", context)


def urls(model_admin: ModelAdmin[Any]) -> list[URLPattern]:
    """The pages above, under the call admin (they need its view permission)."""
    wrap = model_admin.admin_site.admin_view
    return [
        path("live/", wrap(lambda request: live_view(model_admin, request)), name="streams_live"),
        path("live/rows/", wrap(lambda request: live_rows_view(model_admin, request)), name="streams_live_rows"),
        path("overview/", wrap(lambda request: overview_view(model_admin, request)), name="streams_overview"),
    ]
