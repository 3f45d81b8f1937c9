"""The stream-log console's own pages and actions, behind the ModelAdmins in streams/admin.py.

Everything that changes state goes through streams.services (the same functions the REST
API and the call session use), after a confirmation page, and reports what it did with a
message. Permission rule: looking needs a view permission; acting needs the change
permission of the model acted on (stop → stream, start/hang up → call, redeliver →
callback delivery, rotate → account). A read-only operator group has view permissions only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin import helpers
from django.contrib.admin import site as admin_site
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from callbacks.models import CallbackAttempt, CallbackDelivery
from streams import services, throttle
from streams.console.base import MAX_PK_DIGITS, parse_uuid
from streams.core import timeline
from streams.core.validation import (
    AUDIO_TRACKS,
    CALLBACK_METHODS,
    CONTENT_TYPES,
    EgressPolicy,
    StreamParamError,
    validate_stream_params,
)
from streams.models import Call, CallEvent, Stream, StreamEvent

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

EVENTS_ON_STREAM_PAGE = 100
EVENTS_PER_LOG_PAGE = 200
MAX_ACTION_OBJECTS = 500
# A timeline with thousands of marks says nothing; past this the debug-log table tells the story.
TIMELINE_EVENT_LIMIT = 500


def utc(value: datetime | None, *, millis: bool = False, suffix: bool = True) -> str:
    """Datetimes in the console are always UTC and say so (Plivo's stream log does the same).

    List columns leave the suffix to their "(UTC)" header, to stay one line wide.
    """
    if value is None:
        return "—"
    moment = value.astimezone(UTC) if timezone.is_aware(value) else value
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if millis:
        text += f".{moment.microsecond // 1000:03d}"
    return f"{text} UTC" if suffix else text


def offset_seconds(start: datetime, moment: datetime) -> float:
    return max(0.0, (moment - start).total_seconds())


def param_pairs(params: object) -> list[tuple[str, str]]:
    """A debug-log row's parameters in a stable order; anything that is not a dict shows as one value."""
    if isinstance(params, dict):
        return [(str(key), "" if value is None else str(value)) for key, value in params.items()]
    if params in (None, "", [], {}):
        return []
    return [("value", str(params))]


@dataclass(frozen=True)
class LogRow:
    """One StreamEvent as the console shows it."""

    event: StreamEvent | CallEvent
    time: str
    offset: str
    params: list[tuple[str, str]]


def log_rows(stream: Stream, events: Iterable[StreamEvent]) -> list[LogRow]:
    return [
        LogRow(
            event=event,
            time=utc(event.timestamp, millis=True),
            offset="+" + timeline.format_offset(offset_seconds(stream.created_at, event.timestamp)),
            params=param_pairs(event.params),
        )
        for event in events
    ]


def stream_span(stream: Stream) -> float:
    """Seconds the timeline covers: creation to end, or to now while the stream is live."""
    end = stream.end_time or timezone.now()
    return offset_seconds(stream.created_at, end)


def stream_timeline(stream: Stream, events: Sequence[StreamEvent]) -> SafeString:
    marks = [
        timeline.Mark(
            at=offset_seconds(stream.created_at, event.timestamp),
            label=_label(event),
            kind=timeline.kind_for(event.event, event.error),
            detail=event.error,
        )
        for event in events[:TIMELINE_EVENT_LIMIT]
    ]
    svg = timeline.render(
        marks=marks,
        samples=timeline.clean_samples(stream.buffer_samples),
        span=stream_span(stream),
        title=f"Timeline of stream {stream.stream_id}",
    )
    # timeline.render escapes every piece of text it writes.
    return mark_safe(svg)  # noqa: S308


def _label(event: StreamEvent) -> str:
    params = event.params if isinstance(event.params, dict) else {}
    if event.event == "DegradedStream" and "ConnectionState" in params:  # a drop or a resume (docs/resume.md)
        return f"{event.event} {params['ConnectionState']}"
    return event.event + (f" {params['BufferUsage']} %" if _usage(event) else "")


def _usage(event: StreamEvent) -> bool:
    return event.event == "DegradedStream" and isinstance(event.params, dict) and "BufferUsage" in event.params


def deliveries_of(stream: Stream) -> list[CallbackDelivery]:
    """The stream's callback deliveries, each with every attempt (two queries)."""
    return list(
        CallbackDelivery.objects.filter(stream=stream)
        .order_by("id")
        .prefetch_related(Prefetch("attempts", queryset=CallbackAttempt.objects.order_by("number")))
    )


NOISE_EVENTS = ("NoiseCancellation", "NoiseCancellationSummary")


def noise_summary(stream: Stream) -> str:
    """What noise cancellation did for a stream, from the relay's two debug-log rows (start and end)."""
    if not stream.noise_cancellation:
        return "off"
    rows = {
        row.event: row.params if isinstance(row.params, dict) else {}
        for row in StreamEvent.objects.filter(stream=stream, event__in=NOISE_EVENTS).order_by("id")
    }
    started = rows.get("NoiseCancellation")
    if started is None:
        if stream.end_time is None:
            return f"requested at level {stream.noise_cancellation_level}; no audio relayed yet"
        return f"requested at level {stream.noise_cancellation_level}; never ran (no audio was relayed)"
    text = (
        f"on: level {started.get('Level')}, at most {started.get('MaxAttenuationDb')} dB on the "
        f"{started.get('Tracks')} track at {started.get('SampleRate')} Hz, {started.get('DelayMs')} ms delay "
        f"({started.get('Engine')})"
    )
    ended = rows.get("NoiseCancellationSummary")
    if ended is None:
        return text + ("; running" if stream.end_time is None else "")
    levels = ", ".join(
        f"{key.removesuffix('OutputLevelDb').lower()} {value} dB"
        for key, value in ended.items()
        if key.endswith("OutputLevelDb")
    )
    return f"{text}; {ended.get('Frames')} frames suppressed" + (f", output against input: {levels}" if levels else "")


def call_page_context(object_id: str) -> dict[str, Any]:
    """The call page's debug log (its application's requests and steps) and its hangup request."""
    # the console's call pages answer to the pk and to the call UUID alike
    text = str(object_id).strip()
    exact = parse_uuid(text)
    if text.isascii() and text.isdigit() and len(text) <= MAX_PK_DIGITS:
        call = Call.objects.filter(pk=text).first()
    else:
        call = Call.objects.filter(call_uuid=exact).first() if exact is not None else None
    if call is None:
        return {}
    events = list(CallEvent.objects.filter(call=call).order_by("timestamp", "id")[: EVENTS_PER_LOG_PAGE + 1])
    rows = [
        LogRow(
            event=event,
            time=utc(event.timestamp, millis=True),
            offset="+" + timeline.format_offset(offset_seconds(call.started_at, event.timestamp)),
            params=param_pairs(event.params),
        )
        for event in events[:EVENTS_PER_LOG_PAGE]
    ]
    deliveries = list(
        CallbackDelivery.objects.filter(call=call)
        .order_by("id")
        .prefetch_related(Prefetch("attempts", queryset=CallbackAttempt.objects.order_by("number")))
    )
    return {
        "call_log": rows,
        "call_log_truncated": len(events) > EVENTS_PER_LOG_PAGE,
        "call_log_limit": EVENTS_PER_LOG_PAGE,
        "call_deliveries": deliveries,
        "has_application": call.application_id is not None or bool(rows) or bool(deliveries),
    }


def stream_page_context(stream: Stream) -> dict[str, Any]:
    """What the stream page shows below its fields: timeline, the start of the debug log, callbacks."""
    events = list(StreamEvent.objects.filter(stream=stream).order_by("timestamp", "id")[: EVENTS_ON_STREAM_PAGE + 1])
    more = len(events) > EVENTS_ON_STREAM_PAGE
    events = events[:EVENTS_ON_STREAM_PAGE]
    return {
        "stream_log": log_rows(stream, events),
        "stream_log_truncated": more,
        "stream_log_limit": EVENTS_ON_STREAM_PAGE,
        "timeline_svg": stream_timeline(stream, events),
        "deliveries": deliveries_of(stream),
        "debug_logs_url": reverse("admin:streams_stream_debug_logs", args=[stream.pk]),
        "stop_url": reverse("admin:streams_stream_stop", args=[stream.pk]),
    }


def admin_context(model_admin: ModelAdmin[Any], request: HttpRequest, **extra: Any) -> dict[str, Any]:
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "app_label": model_admin.model._meta.app_label,
        **extra,
    }


def debug_logs_view(model_admin: ModelAdmin[Any], request: HttpRequest, object_id: str) -> HttpResponse:
    """/admin/streams/stream/<pk>/debug-logs/: the whole debug log of one stream, paginated."""
    stream = get_object_or_404(Stream.objects.select_related("call", "account"), pk=object_id)
    if not model_admin.has_view_permission(request, stream):
        raise PermissionDenied
    events = StreamEvent.objects.filter(stream=stream).order_by("timestamp", "id")
    page = Paginator(events, EVENTS_PER_LOG_PAGE).get_page(request.GET.get("p"))
    # The timeline draws the same window of the log the table shows.
    rows = list(page.object_list)
    context = admin_context(
        model_admin,
        request,
        title=f"Debug logs of stream {stream.stream_id}",
        subtitle=None,
        stream=stream,
        original=stream,
        page=page,
        stream_log=log_rows(stream, rows),
        timeline_svg=stream_timeline(stream, rows),
        summary=stream_summary(stream),
        change_url=reverse("admin:streams_stream_change", args=[stream.pk]),
    )
    return TemplateResponse(request, "admin/streams/stream/debug_logs.html", context)


def stream_summary(stream: Stream) -> list[tuple[str, str]]:
    """The stream-log record as Plivo's console shows it (spec §7)."""
    return [
        ("Stream ID", str(stream.stream_id)),
        ("Call ID", str(stream.call.call_uuid)),
        ("Account", str(stream.account)),
        ("Service URL", stream.service_url),
        ("Status", stream.status),
        ("Start time", utc(stream.start_time)),
        ("End time", utc(stream.end_time)),
        ("Duration", "—" if stream.duration is None else f"{stream.duration} s"),
        ("Rounded bill duration", f"{stream.rounded_bill_duration} s"),
        ("Billed amount", f"{stream.billed_amount}"),
        ("Hangup reason", stream.hangup_reason or "—"),
    ]


# --- confirmations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One object on a confirmation page: what it is and whether the action will touch it."""

    pk: object
    label: str
    note: str
    affected: bool


def confirm(
    model_admin: ModelAdmin[Any],
    request: HttpRequest,
    *,
    title: str,
    question: str,
    items: Sequence[Item],
    submit: str,
    action: str = "",
    cancel_url: str = "",
) -> TemplateResponse:
    """An intermediate page; posting it back (with post=yes) runs the action for real."""
    context = admin_context(
        model_admin,
        request,
        title=title,
        question=question,
        items=items,
        affected_count=sum(1 for item in items if item.affected),
        submit=submit,
        action=action,
        action_checkbox_name=helpers.ACTION_CHECKBOX_NAME,
        cancel_url=cancel_url or changelist_url(model_admin),
    )
    return TemplateResponse(request, "admin/streams/confirm_action.html", context)


def changelist_url(model_admin: ModelAdmin[Any]) -> str:
    meta = model_admin.model._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")


def too_many(model_admin: ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any]) -> bool:
    """Refuse a selection too big to confirm item by item ("select all 100,000" is a slip, not a plan)."""
    count = queryset.count()
    if count <= MAX_ACTION_OBJECTS:
        return False
    model_admin.message_user(
        request,
        f"{count} {model_admin.model._meta.verbose_name_plural} selected; act on at most {MAX_ACTION_OBJECTS} "
        "at a time (narrow the list with a filter).",
        messages.ERROR,
    )
    return True


def confirmed_selection(
    model_admin: ModelAdmin[Any],
    request: HttpRequest,
    queryset: QuerySet[Any],
    page: Callable[[list[Any]], dict[str, Any]],
) -> list[Any] | TemplateResponse | None:
    """For a bulk action: the selected rows once the operator confirmed; before that the
    confirmation page built by `page(rows)`; None when the selection is too large."""
    if too_many(model_admin, request, queryset):
        return None
    rows = list(queryset)
    if confirmed(request):
        return rows
    return confirm(model_admin, request, **page(rows))


def confirmed(request: HttpRequest) -> bool:
    return request.method == "POST" and request.POST.get("post") == "yes"


def describe(ids: Sequence[object], *, limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


# --- stop streams ---------------------------------------------------------------------


def stop_streams(model_admin: ModelAdmin[Any], request: HttpRequest, streams: Iterable[Stream]) -> None:
    """services.stream_stop for each (reason "API request"); one message naming what was stopped and what not."""
    stopped: list[object] = []
    skipped: list[object] = []
    undelivered: list[object] = []
    for stream in streams:
        try:
            done = services.stream_stop(stream=stream, reason=Stream.Reason.API_REQUEST)
        except services.ControlUndelivered:
            done = True
            undelivered.append(stream.stream_id)
        if done:
            stopped.append(stream.stream_id)
            model_admin.log_change(request, stream, "Stopped (API request) from the admin")
        else:
            skipped.append(stream.stream_id)
    if stopped:
        model_admin.message_user(
            request,
            f"Stopped {plural(len(stopped), 'stream')} (reason “API request”): {describe(stopped)}.",
            messages.SUCCESS,
        )
    if undelivered:
        model_admin.message_user(
            request, services.undelivered_message(f"Stopped {describe(undelivered)}"), messages.WARNING
        )
    if skipped:
        model_admin.message_user(
            request,
            f"{plural(len(skipped), 'stream')} had already ended and {'was' if len(skipped) == 1 else 'were'} "
            f"left alone: {describe(skipped)}.",
            messages.WARNING,
        )


def stream_items(streams: Iterable[Stream]) -> list[Item]:
    return [
        Item(
            pk=s.pk,
            label=f"{s.stream_id} → {s.service_url}",
            note=s.status if s.is_active else f"{s.status} ({s.hangup_reason}), will be left alone",
            affected=s.is_active,
        )
        for s in streams
    ]


def stream_stop_view(model_admin: ModelAdmin[Any], request: HttpRequest, object_id: str) -> HttpResponse:
    """/admin/streams/stream/<pk>/stop/: the stream page's Stop button."""
    stream = get_object_or_404(Stream.objects.select_related("call", "account"), pk=object_id)
    if not model_admin.has_change_permission(request):
        raise PermissionDenied
    change_url = reverse("admin:streams_stream_change", args=[stream.pk])
    if confirmed(request):
        stop_streams(model_admin, request, [stream])
        return HttpResponseRedirect(change_url)
    return confirm(
        model_admin,
        request,
        title="Stop this stream?",
        question="The hub closes the socket to the service and sends the final StopStream callback.",
        items=stream_items([stream]),
        submit="Yes, stop it",
        cancel_url=change_url,
    )


# --- hang up calls ----------------------------------------------------------------------


def hangup_calls(model_admin: ModelAdmin[Any], request: HttpRequest, calls: Iterable[Call]) -> None:
    hung: list[object] = []
    skipped: list[object] = []
    ended_streams = 0
    undelivered: list[object] = []
    for call in calls:
        live_streams = Stream.objects.filter(call=call, end_time__isnull=True).count()
        try:
            done = services.call_hangup(call=call)
        except services.ControlUndelivered:
            done = True
            undelivered.append(call.call_uuid)
        if done:
            hung.append(call.call_uuid)
            ended_streams += live_streams
            model_admin.log_change(request, call, "Hung up from the admin")
        else:
            skipped.append(call.call_uuid)
    if hung:
        model_admin.message_user(
            request,
            f"Hung up {plural(len(hung), 'call')}: {describe(hung)}; "
            f"{plural(ended_streams, 'stream')} ended with “Call hangup”.",
            messages.SUCCESS,
        )
    if undelivered:
        model_admin.message_user(
            request, services.undelivered_message(f"Hung up {describe(undelivered)}"), messages.WARNING
        )
    if skipped:
        model_admin.message_user(
            request,
            f"{plural(len(skipped), 'call')} had already ended and {'was' if len(skipped) == 1 else 'were'} "
            f"left alone: {describe(skipped)}.",
            messages.WARNING,
        )


def call_items(calls: Iterable[Call]) -> list[Item]:
    return [
        Item(
            pk=c.pk,
            label=f"{c.call_uuid} ({c.from_number or '?'} → {c.to_number or '?'})",
            note="live" if c.status == Call.Status.LIVE else "ended, will be left alone",
            affected=c.status == Call.Status.LIVE,
        )
        for c in calls
    ]


def call_hangup_view(model_admin: ModelAdmin[Any], request: HttpRequest, object_id: str) -> HttpResponse:
    """/admin/streams/call/<pk>/hangup/: the call page's Hang up button."""
    call = get_object_or_404(Call, pk=object_id)
    if not model_admin.has_change_permission(request):
        raise PermissionDenied
    change_url = reverse("admin:streams_call_change", args=[call.pk])
    if confirmed(request):
        hangup_calls(model_admin, request, [call])
        return HttpResponseRedirect(change_url)
    return confirm(
        model_admin,
        request,
        title="Hang up this call?",
        question="Every live stream on it ends with “Call hangup”, and the gateway leg is closed.",
        items=call_items([call]),
        submit="Yes, hang up",
        cancel_url=change_url,
    )


# --- start a stream ----------------------------------------------------------------------


def _choices(values: Iterable[str]) -> list[tuple[str, str]]:
    return [(v, v) for v in values]


class StartStreamForm(forms.Form):
    """The REST API's stream attributes; validation is streams.core.validation's, not the form's own.

    Numbers are text fields on purpose, so a bad value gets the same message the API gives.
    """

    service_url = forms.CharField(label="Service URL", max_length=4096, help_text="ws:// or wss:// URL of the service")
    bidirectional = forms.BooleanField(required=False, help_text="the service may play audio into the call")
    audio_track = forms.ChoiceField(choices=_choices(AUDIO_TRACKS), initial="inbound")
    content_type = forms.ChoiceField(choices=_choices(CONTENT_TYPES), initial=CONTENT_TYPES[0])
    stream_timeout = forms.CharField(initial="86400", help_text="seconds")
    status_callback_url = forms.CharField(label="Status callback URL", required=False, max_length=4096)
    status_callback_method = forms.ChoiceField(choices=_choices(CALLBACK_METHODS), initial="POST")
    extra_headers = forms.CharField(required=False, max_length=1024, help_text="key=value pairs, comma-separated")
    keep_call_alive = forms.BooleanField(required=False)
    noise_cancellation = forms.BooleanField(required=False)
    noise_cancellation_level = forms.CharField(initial="85", help_text="60–100")
    reconnect = forms.BooleanField(required=False, help_text="resume the stream after a dropped connection")
    reconnect_window = forms.CharField(required=False, help_text="seconds, 1–40, only with reconnect (empty: 10)")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        given = {key: value for key, value in data.items() if not (key == "reconnect_window" and value == "")}
        try:
            self.params = validate_stream_params(given, policy=EgressPolicy.from_settings(settings))
        except StreamParamError as exc:
            for field, message in exc.errors.items():
                self.add_error(field if field in self.fields else None, f"{field} {message}")
        return data


def start_stream_view(model_admin: ModelAdmin[Any], request: HttpRequest, object_id: str) -> HttpResponse:
    """/admin/streams/call/<pk>/start-stream/: services.stream_create on a live call."""
    call = get_object_or_404(Call.objects.select_related("account"), pk=object_id)
    if not model_admin.has_change_permission(request):
        raise PermissionDenied
    call_url = reverse("admin:streams_call_change", args=[call.pk])
    form = StartStreamForm(request.POST if request.method == "POST" else None)
    if call.status != Call.Status.LIVE:
        model_admin.message_user(
            request, f"Call {call.call_uuid} has ended; no stream can start on it.", messages.ERROR
        )
        return HttpResponseRedirect(call_url)
    if request.method == "POST" and form.is_valid():
        try:
            stream = services.stream_create(call=call, params=form.params, refuse_one_way=True)
        except services.CallNotLive:
            form.add_error(None, "The call ended meanwhile; no stream was started.")
        except services.StreamConflict:
            form.add_error("service_url", "A stream to this URL is already active on this call.")
        except services.PlaybackUnavailable as exc:
            form.add_error("bidirectional", f"Not on this call: {exc}.")
        except services.ControlUndelivered:
            form.add_error(
                None,
                "The hub process holding this call could not be reached (channel layer unavailable); "
                "the stream was not started (it ended at once: Connection error). Try again.",
            )
        except services.TooManyStreams as exc:
            form.add_error(None, f"No stream was started: {exc}; stop one before starting another.")
        else:
            model_admin.log_change(request, call, f"Started stream {stream.stream_id} from the admin")
            model_admin.message_user(
                request,
                f"Started stream {stream.stream_id} to {stream.service_url} on call {call.call_uuid} "
                "(status initiated; the hub is dialling the service).",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(reverse("admin:streams_stream_change", args=[stream.pk]))
    context = admin_context(
        model_admin,
        request,
        title=f"Start a stream on call {call.call_uuid}",
        call=call,
        original=call,
        form=form,
        call_url=call_url,
    )
    return TemplateResponse(request, "admin/streams/call/start_stream.html", context)


# --- sign-in ---------------------------------------------------------------------------------


def login_view(request: HttpRequest) -> HttpResponse:
    """The admin's sign-in page, with failed attempts throttled per client address (streams.throttle,
    the counter the API and the gateway upgrades use): beyond the rate, 429 until the window ends.
    Django's ModelBackend runs the password hasher for an unknown user name too, so an unknown
    name and a wrong password take the same time."""
    address = throttle.client_address(request.META.get("REMOTE_ADDR"), request.headers.get("X-Forwarded-For"))
    if request.method == "POST":
        wait = throttle.retry_after(address)
        if wait is not None:
            return HttpResponse(
                f"Too many failed sign-in attempts from this address; try again in {wait} s.\n",
                status=429,
                content_type="text/plain; charset=utf-8",
                headers={"Retry-After": str(wait)},
            )
    response = admin_site.login(request)
    if request.method == "POST" and response.status_code == 200 and not request.user.is_authenticated:
        throttle.record_failure(address)  # the form came back: the sign-in failed
    return response
