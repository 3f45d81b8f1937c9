"""Callback deliveries in the console: every delivery with every attempt, and a redeliver action.

Deliveries are the outbox (written by the hub, sent by Celery), so they are read-only here.
Redelivering goes through `callbacks.services.callback_redeliver`: a failed delivery goes back
to pending with a fresh retry budget, followed by the failed ones after it in its stream, unless
a later callback of its stream was already delivered (it would arrive out of order: refused,
and the console says why). Its attempt history is kept and numbering goes on from it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from callbacks.models import CallbackAttempt, CallbackDelivery
from callbacks.services import DELIVERY_EVENTS, callback_redeliver
from streams.console import views as admin_views
from streams.console.base import ReadOnlyInline, ReadOnlyRecordAdmin, link, parse_uuid, truncate
from streams.console.views import utc


class CallbackEventFilter(admin.SimpleListFilter):
    """Fixed choices: no DISTINCT over the outbox to build them."""

    title = "event"
    parameter_name = "event"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in sorted(DELIVERY_EVENTS)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[CallbackDelivery]) -> QuerySet[CallbackDelivery]:
        return queryset.filter(event=self.value()) if self.value() else queryset


class CallbackAttemptInline(ReadOnlyInline):
    model = CallbackAttempt
    extra = 0
    can_delete = False
    fields = ("number", "started_utc", "status_code", "latency_ms", "error", "response_excerpt")
    readonly_fields = fields
    ordering = ("number",)

    @admin.display(description="started (UTC)")
    def started_utc(self, obj: CallbackAttempt) -> str:
        return utc(obj.started_at, millis=True)


@admin.register(CallbackDelivery)
class CallbackDeliveryAdmin(ReadOnlyRecordAdmin):
    list_display = (
        "id",
        "event",
        "stream_link",
        "account",
        "target",
        "state",
        "attempt_count",
        "next_attempt_utc",
        "created_utc",
        "delivered_utc",
        "error_excerpt",
    )
    list_filter = ("state", CallbackEventFilter, "account")
    list_select_related = ("stream", "call", "account")
    search_fields = ("url",)
    search_help_text = "Stream ID, call ID or idempotency ID (whole), or part of the callback URL"
    ordering = ("-id",)
    show_full_result_count = False
    list_per_page = 100
    fields = (
        "stream",
        "call",
        "account",
        "event",
        "method",
        "url",
        "state",
        "attempt_count",
        "idempotency_id",
        "created_utc",
        "next_attempt_utc",
        "claimed_utc",
        "delivered_utc",
        "last_error",
        "parameters",
    )
    readonly_fields = fields
    inlines = (CallbackAttemptInline,)
    actions = ("redeliver_selected",)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[CallbackDelivery], search_term: str
    ) -> tuple[QuerySet[CallbackDelivery], bool]:
        for term in search_term.split():
            exact = parse_uuid(term)
            if exact is not None:
                queryset = queryset.filter(
                    Q(stream__stream_id=exact) | Q(call__call_uuid=exact) | Q(idempotency_id=exact)
                )
            else:
                queryset = queryset.filter(url__icontains=term)
        return queryset, False

    @admin.display(description="stream / call", ordering="stream__stream_id")
    def stream_link(self, obj: CallbackDelivery) -> str:
        if obj.stream is not None:
            return link(reverse("admin:streams_stream_change", args=[obj.stream_id]), obj.stream.stream_id)
        if obj.call is not None:  # a call-level delivery: the application's hangup request
            return link(reverse("admin:streams_call_change", args=[obj.call_id]), f"call {obj.call.call_uuid}")
        return "—"

    @admin.display(description="URL", ordering="url")
    def target(self, obj: CallbackDelivery) -> str:
        return format_html('<span title="{}">{} {}</span>', obj.url, obj.method, truncate(obj.url, 48))

    @admin.display(description="next attempt (UTC)", ordering="next_attempt_at")
    def next_attempt_utc(self, obj: CallbackDelivery) -> str:
        return utc(obj.next_attempt_at) if obj.state == CallbackDelivery.State.PENDING else "—"

    @admin.display(description="created (UTC)", ordering="created_at")
    def created_utc(self, obj: CallbackDelivery) -> str:
        return utc(obj.created_at)

    @admin.display(description="claimed (UTC)")
    def claimed_utc(self, obj: CallbackDelivery) -> str:
        return utc(obj.claimed_at)

    @admin.display(description="delivered (UTC)", ordering="delivered_at")
    def delivered_utc(self, obj: CallbackDelivery) -> str:
        return utc(obj.delivered_at)

    @admin.display(description="last error")
    def error_excerpt(self, obj: CallbackDelivery) -> str:
        return truncate(obj.last_error, 60)

    @admin.display(description="parameters")
    def parameters(self, obj: CallbackDelivery) -> str:
        pairs = admin_views.param_pairs(obj.params)
        rows = format_html_join("", "<dt>{}</dt><dd>{}</dd>", pairs)
        return format_html('<dl class="params">{}</dl>', rows) if pairs else "—"

    @admin.action(description="Redeliver selected failed callbacks", permissions=["change"])
    def redeliver_selected(self, request: HttpRequest, queryset: QuerySet[CallbackDelivery]) -> TemplateResponse | None:
        tries = settings.STREAMHUB_CALLBACK_MAX_ATTEMPTS
        deliveries = admin_views.confirmed_selection(
            self,
            request,
            queryset.select_related("stream", "call"),
            lambda rows: {
                "title": "Redeliver these callbacks?",
                "question": "Each failed delivery goes back to pending and is sent again with a fresh retry budget "
                f"({tries} tries), keeping its idempotency ID and its attempt history. The failed callbacks that "
                "follow it in its stream go again after it, in order; a callback whose stream already has a "
                "later callback delivered is not sent (it would arrive after it).",
                "items": [
                    admin_views.Item(
                        pk=d.pk,
                        label=f"#{d.pk} {d.event} of {d.subject} → {d.url}",
                        note=f"failed after {d.attempt_count} attempts"
                        if d.state == CallbackDelivery.State.FAILED
                        else f"{d.state}, will be left alone",
                        affected=d.state == CallbackDelivery.State.FAILED,
                    )
                    for d in rows
                ],
                "submit": "Yes, redeliver",
                "action": "redeliver_selected",
            },
        )
        if not isinstance(deliveries, list):
            return deliveries
        result = callback_redeliver(delivery_ids=[d.pk for d in deliveries])
        if result.queued:
            for delivery in CallbackDelivery.objects.filter(pk__in=result.queued):
                self.log_change(request, delivery, "Queued for redelivery")
            self.message_user(
                request,
                f"Queued {admin_views.plural(len(result.queued), 'callback')} for redelivery: "
                f"{admin_views.describe([f'#{pk}' for pk in result.queued])}.",
                messages.SUCCESS,
            )
        for pk, why in result.refused.items():
            self.message_user(request, f"#{pk} was not redelivered: {why}.", messages.ERROR)
        if result.skipped:
            self.message_user(
                request,
                f"{admin_views.plural(len(result.skipped), 'callback')} had not failed and "
                f"{'was' if len(result.skipped) == 1 else 'were'} left alone: "
                f"{admin_views.describe([f'#{pk}' for pk in result.skipped])}.",
                messages.WARNING,
            )
        return None
