"""The stream-log console: Django admin for accounts, calls, streams, their debug logs and hub processes.

Records are read-only here (the hub writes them); operators act only through actions and
buttons that call streams.services. The change views of calls and streams are view-only for
everyone (`has_change_permission(request, obj)` is False), while the model-level change
permission (`obj=None`) is what actions and the custom views check, so a group with view
permissions only can look but not act.

The stream list must stay fast at 100,000+ rows: joins via list_select_related, no full
result count, searches that use the unique indexes when given a whole id, and filters
that never scan the table for their choices.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Q, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, reverse
from django.utils import timezone
from django.utils.html import format_html

from streams import services
from streams.console import live
from streams.console import views as admin_views
from streams.console.base import (
    ReadOnlyInline,
    ReadOnlyRecordAdmin,
    drill_down,
    link,
    object_urls,
    parse_uuid,
    short_id,
    truncate,
)
from streams.console.views import utc
from streams.core import timeline
from streams.core.application import ApplicationParamError, validate_application
from streams.models import (
    Account,
    Application,
    Call,
    HubProcess,
    Stream,
    StreamEvent,
    mask_secret,
    new_auth_token,
    new_ingest_token,
)

# --- accounts --------------------------------------------------------------------------------


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("name", "auth_id", "auth_token_masked", "ingest_token_masked", "rate_per_minute", "is_active")
    list_filter = ("is_active",)
    search_fields = ("name", "auth_id")
    search_help_text = "Name or auth ID"
    # The secrets are never form fields, so they never reach a page (nor the admin's change log).
    fields = (
        "name",
        "auth_id",
        "auth_token_masked",
        "ingest_token_masked",
        "rate_per_minute",
        "is_active",
        "created_utc",
    )
    readonly_fields = ("auth_id", "auth_token_masked", "ingest_token_masked", "created_utc")
    actions = ("rotate_auth_token", "rotate_ingest_token")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # calls and streams keep their account (PROTECT); deactivate instead

    @admin.display(description="auth token")
    def auth_token_masked(self, obj: Account) -> str:
        return obj.masked_token

    @admin.display(description="ingest token")
    def ingest_token_masked(self, obj: Account) -> str:
        return mask_secret(obj.ingest_token)

    @admin.display(description="created (UTC)", ordering="created_at")
    def created_utc(self, obj: Account) -> str:
        return utc(obj.created_at)

    def _rotate(
        self, request: HttpRequest, queryset: QuerySet[Account], *, field: str, what: str, effect: str
    ) -> HttpResponse | None:
        accounts = admin_views.confirmed_selection(
            self,
            request,
            queryset,
            lambda rows: {
                "title": f"Rotate the {what}?",
                "question": f"A new {what} is generated for each account below. {effect}",
                "items": [admin_views.Item(pk=a.pk, label=str(a), note="", affected=True) for a in rows],
                "submit": f"Yes, rotate the {what}",
                "action": f"rotate_{field}",
            },
        )
        if not isinstance(accounts, list):
            return accounts
        make = new_auth_token if field == "auth_token" else new_ingest_token
        done = []
        for account in accounts:
            value = make()
            Account.objects.filter(pk=account.pk).update(**{field: value})
            self.log_change(request, account, f"Rotated the {what}")
            done.append(f"{account.name} ({account.auth_id}): now {mask_secret(value)}")
        self.message_user(
            request,
            f"Rotated the {what} of {admin_views.plural(len(done), 'account')}: {'; '.join(done)}. {effect} "
            "The full value is shown only on the server: manage.py account_credentials AUTH_ID.",
            messages.SUCCESS,
        )
        return None

    @admin.action(description="Rotate auth token of selected accounts", permissions=["change"])
    def rotate_auth_token(self, request: HttpRequest, queryset: QuerySet[Account]) -> HttpResponse | None:
        return self._rotate(
            request,
            queryset,
            field="auth_token",
            what="auth token",
            effect="The old token stops working at once for the REST API and for callback signatures.",
        )

    @admin.action(description="Rotate ingest token of selected accounts", permissions=["change"])
    def rotate_ingest_token(self, request: HttpRequest, queryset: QuerySet[Account]) -> HttpResponse | None:
        return self._rotate(
            request,
            queryset,
            field="ingest_token",
            what="ingest token",
            effect="Gateways using the old token can no longer open calls; calls already open go on.",
        )


# --- applications ------------------------------------------------------------------------------


class ApplicationForm(forms.ModelForm):
    """The REST API's rules (streams.core.application), so the admin and the API agree on every field."""

    class Meta:
        model = Application
        fields = (
            "account",
            "app_name",
            "answer_url",
            "answer_method",
            "fallback_answer_url",
            "fallback_method",
            "hangup_url",
            "hangup_method",
            "default_number_app",
            "message_url",
            "message_method",
            "default_endpoint_app",
            "public_uri",
            "log_incoming_messages",
            "subaccount",
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        given = {key: value for key, value in data.items() if key != "account"}
        try:
            clean = validate_application(
                given, creating=False, forbid_private_callbacks=settings.STREAMHUB_FORBID_PRIVATE_CALLBACKS
            )
        except ApplicationParamError as exc:
            for field, message in exc.errors.items():
                self.add_error(field if field in self.fields else None, message)
            return data
        data.update(clean)
        if not data.get("answer_url"):
            self.add_error("answer_url", "is required")
        return data


@admin.register(Application)
class ApplicationAdmin(admin.ModelAdmin):
    form = ApplicationForm
    list_display = ("app_name", "app_id", "account", "answer", "hangup", "default_number_app", "created_utc")
    list_filter = ("default_number_app", "account")
    list_select_related = ("account",)
    search_fields = ("app_name", "app_id", "answer_url")
    search_help_text = "Name, app ID or part of the answer URL"
    ordering = ("-created_at", "-id")
    readonly_fields = ("app_id", "created_utc")
    fieldsets = (
        (None, {"fields": ("account", "app_name", "app_id", "default_number_app", "created_utc")}),
        (
            "Call flow",
            {
                "fields": (
                    "answer_url",
                    "answer_method",
                    "fallback_answer_url",
                    "fallback_method",
                    "hangup_url",
                    "hangup_method",
                )
            },
        ),
        (
            "Stored for Plivo compatibility (not used by the hub)",
            {
                "classes": ("collapse",),
                "fields": (
                    "message_url",
                    "message_method",
                    "default_endpoint_app",
                    "public_uri",
                    "log_incoming_messages",
                    "subaccount",
                ),
            },
        ),
    )
    actions = ("mark_default",)

    @admin.display(description="answer URL", ordering="answer_url")
    def answer(self, obj: Application) -> str:
        return format_html(
            '<span title="{}">{} {}</span>', obj.answer_url, obj.answer_method, truncate(obj.answer_url, 40)
        )

    @admin.display(description="hangup URL", ordering="hangup_url")
    def hangup(self, obj: Application) -> str:
        if not obj.hangup_url:
            return "—"
        return format_html(
            '<span title="{}">{} {}</span>', obj.hangup_url, obj.hangup_method, truncate(obj.hangup_url, 40)
        )

    @admin.display(description="created (UTC)", ordering="created_at")
    def created_utc(self, obj: Application) -> str:
        return utc(obj.created_at)

    def save_model(self, request: HttpRequest, obj: Application, form: Any, change: bool) -> None:
        services.application_save(application=obj)  # the one default per account

    @admin.action(description="Mark as its account's default application", permissions=["change"])
    def mark_default(self, request: HttpRequest, queryset: QuerySet[Application]) -> None:
        apps = list(queryset.select_related("account"))
        if len({app.account_id for app in apps}) != len(apps):
            self.message_user(
                request, "An account has one default application: select one per account.", messages.ERROR
            )
            return
        for app in apps:
            app.default_number_app = True
            services.application_save(application=app)
            self.log_change(request, app, "Marked as the account's default application")
        self.message_user(
            request,
            f"Marked {admin_views.plural(len(apps), 'application')} as the default of "
            f"{'its account' if len(apps) == 1 else 'their accounts'}: "
            f"{admin_views.describe([app.app_name for app in apps])}.",
            messages.SUCCESS,
        )


# --- hub processes ---------------------------------------------------------------------------


@admin.register(HubProcess)
class HubProcessAdmin(ReadOnlyRecordAdmin):
    list_display = ("server_id", "alive", "heartbeat_utc", "started_utc", "live_calls", "capacity", "fenced_at")
    fields = (
        "server_id",
        "alive",
        "heartbeat_utc",
        "started_utc",
        "live_calls",
        "capacity",
        "suspected_at",
        "fenced_at",
    )
    readonly_fields = fields
    ordering = ("-heartbeat_at",)

    @admin.display(boolean=True, description="alive")
    def alive(self, obj: HubProcess) -> bool:
        if obj.fenced_at is not None:  # the sweep declared it dead and ended its calls
            return False
        return obj.heartbeat_at >= timezone.now() - timedelta(seconds=settings.STREAMHUB_ORPHAN_AFTER_SECONDS)

    @admin.display(description="last heartbeat (UTC)", ordering="heartbeat_at")
    def heartbeat_utc(self, obj: HubProcess) -> str:
        return utc(obj.heartbeat_at)

    @admin.display(description="started (UTC)", ordering="started_at")
    def started_utc(self, obj: HubProcess) -> str:
        return utc(obj.started_at)


# --- calls -----------------------------------------------------------------------------------


class StreamInline(ReadOnlyInline):
    model = Stream
    fk_name = "call"
    extra = 0
    can_delete = False
    show_change_link = True
    # The stream id heads each row with its View link (show_change_link).
    fields = ("service_url", "status", "start_utc", "end_utc", "duration", "hangup_reason")
    readonly_fields = fields
    ordering = ("created_at", "id")

    @admin.display(description="start (UTC)")
    def start_utc(self, obj: Stream) -> str:
        return utc(obj.start_time)

    @admin.display(description="end (UTC)")
    def end_utc(self, obj: Stream) -> str:
        return utc(obj.end_time)


@admin.register(Call)
class CallAdmin(ReadOnlyRecordAdmin):
    uuid_field = "call_uuid"
    list_display = (
        "call_uuid",
        "live",
        "account",
        "from_number",
        "to_number",
        "direction",
        "started_utc",
        "ended_utc",
        "gateway",
        "server_id",
    )
    list_filter = ("status", "direction", "gateway", "account")
    list_select_related = ("account",)
    search_fields = ("from_number", "to_number")
    search_help_text = "Call ID (full or partial), or a from/to number"
    date_hierarchy = "started_at"
    ordering = ("-started_at", "-id")
    show_full_result_count = False
    list_per_page = 100
    fields = (
        "call_uuid",
        "status",
        "account",
        "from_number",
        "to_number",
        "direction",
        "started_utc",
        "ended_utc",
        "gateway",
        "gateway_metadata",
        "server_id",
        "application_link",
        "hangup_cause",
    )
    readonly_fields = fields
    inlines = (StreamInline,)
    actions = ("hangup_selected",)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Call], search_term: str
    ) -> tuple[QuerySet[Call], bool]:
        terms = search_term.split()
        for term in terms:
            exact = parse_uuid(term)
            if exact is not None:
                queryset = queryset.filter(call_uuid=exact)
            else:
                queryset = queryset.filter(
                    Q(call_uuid__icontains=term) | Q(from_number__icontains=term) | Q(to_number__icontains=term)
                )
        return queryset, False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Call]:
        return drill_down(super().get_queryset(request))

    @admin.display(boolean=True, description="live", ordering="status")
    def live(self, obj: Call) -> bool:
        return obj.status == Call.Status.LIVE

    @admin.display(description="application")
    def application_link(self, obj: Call) -> str:
        if obj.application is None:
            return "—"
        url = reverse("admin:streams_application_change", args=[obj.application_id])
        return link(url, f"{obj.application.app_name} ({obj.application.app_id})")

    @admin.display(description="hangup cause")
    def hangup_cause(self, obj: Call) -> str:
        if not obj.hangup_cause_name:
            return "—"
        return f"{obj.hangup_cause_name}: {obj.hangup_detail}" if obj.hangup_detail else obj.hangup_cause_name

    @admin.display(description="started (UTC)", ordering="started_at")
    def started_utc(self, obj: Call) -> str:
        return utc(obj.started_at)

    @admin.display(description="ended (UTC)", ordering="ended_at")
    def ended_utc(self, obj: Call) -> str:
        return utc(obj.ended_at)

    def get_urls(self) -> list[URLPattern]:
        views = {"start-stream": admin_views.start_stream_view, "hangup": admin_views.call_hangup_view}
        return [*live.urls(self), *object_urls(self, "call", views), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        live = Call.objects.filter(status=Call.Status.LIVE).count()
        context = {
            "live_calls": live,
            "live_calls_url": reverse("admin:streams_call_changelist") + "?status__exact=live",
            "live_view_url": reverse("admin:streams_live"),
            "overview_url": reverse("admin:streams_overview"),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {
            "can_act": self.has_change_permission(request),
            "start_stream_url": reverse("admin:streams_call_start_stream", args=[object_id]),
            "hangup_url": reverse("admin:streams_call_hangup", args=[object_id]),
            **admin_views.call_page_context(object_id),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra_context=context)

    @admin.action(description="Hang up selected live calls", permissions=["change"])
    def hangup_selected(self, request: HttpRequest, queryset: QuerySet[Call]) -> TemplateResponse | None:
        calls = admin_views.confirmed_selection(
            self,
            request,
            queryset,
            lambda rows: {
                "title": "Hang up these calls?",
                "question": "Every live stream on them ends with “Call hangup”, and the gateway legs are closed.",
                "items": admin_views.call_items(rows),
                "submit": "Yes, hang up",
                "action": "hangup_selected",
            },
        )
        if not isinstance(calls, list):
            return calls
        admin_views.hangup_calls(self, request, calls)
        return None


# --- streams ---------------------------------------------------------------------------------


@admin.register(Stream)
class StreamAdmin(ReadOnlyRecordAdmin):
    uuid_field = "stream_id"
    list_display = (
        "stream",
        "call_link",
        "account_name",
        "service",
        "status",
        "started",
        "ended",
        "duration",
        "rounded_bill_duration",
        "billed_amount",
        "hangup_reason",
    )
    list_filter = ("status", "hangup_reason", "bidirectional", "account", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("call", "account")
    search_fields = ("service_url",)
    search_help_text = "Stream ID or call ID (full or partial), or part of the service URL"
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    show_full_result_count = False
    list_per_page = 100
    actions = ("stop_selected",)
    fieldsets = (
        (None, {"fields": ("stream_id", "call", "account", "service_url", "status", "hangup_reason", "last_error")}),
        (
            "Times (UTC) and billing",
            {
                "fields": (
                    "created_utc",
                    "start_utc",
                    "end_utc",
                    "duration",
                    "bill_duration",
                    "rounded_bill_duration",
                    "billed_amount",
                )
            },
        ),
        (
            "Stream attributes",
            {
                "fields": (
                    "bidirectional",
                    "audio_track",
                    "content_type",
                    "stream_timeout",
                    "status_callback_url",
                    "status_callback_method",
                    "extra_headers",
                    "keep_call_alive",
                    "noise_cancellation",
                    "noise_cancellation_level",
                    "reconnect",
                    "reconnect_window",
                )
            },
        ),
        (
            "Relay",
            {
                "fields": (
                    "frames_sent",
                    "resumes",
                    "played_ms",
                    "buffer_summary",
                    "noise_suppression",
                    "server_id",
                    "resource_uri",
                )
            },
        ),
    )
    readonly_fields = tuple(name for _, options in fieldsets for name in options["fields"] if isinstance(name, str))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Stream], search_term: str
    ) -> tuple[QuerySet[Stream], bool]:
        for term in search_term.split():
            exact = parse_uuid(term)
            if exact is not None:
                # A whole id (what an operator pastes from a log) hits the unique indexes.
                # The call side as a scalar subquery, not a join, so both halves of the OR use an index.
                queryset = queryset.filter(
                    Q(stream_id=exact) | Q(call_id=Subquery(Call.objects.filter(call_uuid=exact).values("pk")[:1]))
                )
            else:
                queryset = queryset.filter(
                    Q(service_url__icontains=term) | Q(stream_id__icontains=term) | Q(call__call_uuid__icontains=term)
                )
        return queryset, False

    @admin.display(description="stream ID", ordering="stream_id")
    def stream(self, obj: Stream) -> str:
        return short_id(obj.stream_id)

    @admin.display(description="call ID", ordering="call__call_uuid")
    def call_link(self, obj: Stream) -> str:
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:streams_call_change", args=[obj.call_id]),
            short_id(obj.call.call_uuid),
        )

    @admin.display(description="account", ordering="account__name")
    def account_name(self, obj: Stream) -> str:
        return format_html('<span title="{}">{}</span>', obj.account.auth_id, obj.account.name)

    @admin.display(description="service URL", ordering="service_url")
    def service(self, obj: Stream) -> str:
        return format_html('<span title="{}">{}</span>', obj.service_url, truncate(obj.service_url, 40))

    @admin.display(description="start (UTC)", ordering="start_time")
    def started(self, obj: Stream) -> str:
        return utc(obj.start_time, suffix=False)

    @admin.display(description="end (UTC)", ordering="end_time")
    def ended(self, obj: Stream) -> str:
        return utc(obj.end_time, suffix=False)

    @admin.display(description="start (UTC)")
    def start_utc(self, obj: Stream) -> str:
        return utc(obj.start_time)

    @admin.display(description="end (UTC)")
    def end_utc(self, obj: Stream) -> str:
        return utc(obj.end_time)

    @admin.display(description="created (UTC)", ordering="created_at")
    def created_utc(self, obj: Stream) -> str:
        return utc(obj.created_at, millis=True)

    @admin.display(description="send-buffer samples")
    def buffer_summary(self, obj: Stream) -> str:
        samples = timeline.clean_samples(obj.buffer_samples)
        if not samples:
            return "none stored" if obj.end_time else "none yet (stored when the stream ends)"
        peak = max(pct for _, pct in samples)
        return f"{len(samples)} samples, peak {peak:g} %"

    @admin.display(description="noise cancellation")
    def noise_suppression(self, obj: Stream) -> str:
        return admin_views.noise_summary(obj)

    @admin.display(description="resource URI")
    def resource_uri(self, obj: Stream) -> str:
        return obj.resource_uri

    def get_queryset(self, request: HttpRequest) -> QuerySet[Stream]:
        return drill_down(super().get_queryset(request).select_related("call", "account"))

    def get_urls(self) -> list[URLPattern]:
        views = {"debug-logs": admin_views.debug_logs_view, "stop": admin_views.stream_stop_view}
        return [*object_urls(self, "stream", views), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        live = Stream.objects.filter(status__in=Stream.ACTIVE).count()
        context = {
            "live_streams": live,
            "live_streams_url": reverse("admin:streams_stream_changelist") + "?status__in=initiated,in-progress",
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = dict(extra_context or {})
        stream = self.get_object(request, object_id)
        if stream is not None:
            context.update(admin_views.stream_page_context(stream))
            context["can_act"] = self.has_change_permission(request) and stream.is_active
        return super().change_view(request, object_id, form_url, extra_context=context)

    @admin.action(description="Stop selected live streams (reason “API request”)", permissions=["change"])
    def stop_selected(self, request: HttpRequest, queryset: QuerySet[Stream]) -> TemplateResponse | None:
        streams = admin_views.confirmed_selection(
            self,
            request,
            queryset,
            lambda rows: {
                "title": "Stop these streams?",
                "question": "The hub closes each socket to its service and sends the final StopStream callback.",
                "items": admin_views.stream_items(rows),
                "submit": "Yes, stop them",
                "action": "stop_selected",
            },
        )
        if not isinstance(streams, list):
            return streams
        admin_views.stop_streams(self, request, streams)
        return None


# --- the debug log across streams -----------------------------------------------------------


class EventNameFilter(admin.SimpleListFilter):
    """Fixed choices: listing the distinct names would scan the biggest table in the hub."""

    title = "event"
    parameter_name = "event"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = ("StreamCreated", "StartStream", "DegradedStream", "DroppedStream", "StopStream")
        return [(name, name) for name in names] + [("errors", "any with an error")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[StreamEvent]) -> QuerySet[StreamEvent]:
        value = self.value()
        if value == "errors":
            return queryset.exclude(error="")
        if value:
            return queryset.filter(event=value)
        return queryset


@admin.register(StreamEvent)
class StreamEventAdmin(ReadOnlyRecordAdmin):
    list_display = ("time_utc", "event", "error_excerpt", "stream_link")
    list_filter = (EventNameFilter,)
    list_select_related = ("stream",)
    search_help_text = "A whole stream ID"
    ordering = ("-id",)
    show_full_result_count = False
    list_per_page = 200
    fields = ("stream", "time_utc", "event", "error", "params")
    readonly_fields = fields

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        return ("stream__stream_id",)  # shows the search box; get_search_results does the work

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[StreamEvent], search_term: str
    ) -> tuple[QuerySet[StreamEvent], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        exact = parse_uuid(term)
        # Only whole ids: a substring search over every event would scan the table.
        return (queryset.filter(stream__stream_id=exact) if exact else queryset.none()), False

    @admin.display(description="time (UTC)", ordering="timestamp")
    def time_utc(self, obj: StreamEvent) -> str:
        return utc(obj.timestamp, millis=True)

    @admin.display(description="error")
    def error_excerpt(self, obj: StreamEvent) -> str:
        return truncate(obj.error, 80)

    @admin.display(description="stream")
    def stream_link(self, obj: StreamEvent) -> str:
        return link(reverse("admin:streams_stream_change", args=[obj.stream_id]), obj.stream.stream_id)
