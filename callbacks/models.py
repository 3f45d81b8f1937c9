"""The callback outbox: one delivery row per status callback or hangup request, one attempt row per try.

A delivery belongs to a stream (status callbacks, delivered in order per stream) or, with no
stream, to a call (its application's hangup request, the one call-level delivery).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import models
from django.db.models import Exists, OuterRef
from django.utils import timezone


class CallbackDelivery(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "pending"
        DELIVERING = "delivering", "delivering"
        DELIVERED = "delivered", "delivered"
        FAILED = "failed", "failed"

    stream = models.ForeignKey(
        "streams.Stream", null=True, blank=True, on_delete=models.CASCADE, related_name="callback_deliveries"
    )
    call = models.ForeignKey(
        "streams.Call", null=True, blank=True, on_delete=models.CASCADE, related_name="callback_deliveries"
    )
    account = models.ForeignKey("streams.Account", on_delete=models.PROTECT, related_name="callback_deliveries")
    event = models.CharField(max_length=32)
    url = models.CharField(max_length=2048)
    method = models.CharField(max_length=4, default="POST")
    params = models.JSONField(default=dict)
    idempotency_id = models.UUIDField(unique=True, default=uuid.uuid4)
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING, db_index=True)
    attempt_count = models.PositiveIntegerField(default=0)
    # A redelivery starts a fresh retry budget: tries counted from budget_offset, age from budget_since.
    budget_offset = models.PositiveIntegerField(default=0, help_text="tries made before the current retry budget")
    budget_since = models.DateTimeField(
        null=True, blank=True, help_text="when the current retry budget began (created_at when empty)"
    )
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "callback deliveries"
        indexes = [models.Index(fields=["stream", "id"]), models.Index(fields=["state", "next_attempt_at"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(stream__isnull=False) | models.Q(call__isnull=False),
                name="delivery_belongs_to_a_stream_or_a_call",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.url} ({self.state})"

    @property
    def subject(self) -> str:
        """What the delivery reports on, for labels: "stream <id>" or "call <uuid>"."""
        if self.stream is not None:
            return f"stream {self.stream.stream_id}"
        return f"call {self.call.call_uuid}" if self.call is not None else "—"

    @property
    def budget_attempts(self) -> int:
        """Tries made in the current retry budget."""
        return self.attempt_count - self.budget_offset

    @property
    def budget_started(self) -> datetime:
        return self.budget_since or self.created_at


OPEN_STATES = (CallbackDelivery.State.PENDING, CallbackDelivery.State.DELIVERING)


def earlier_open() -> Exists:
    """True for a delivery with an earlier delivery of its stream still open: it has to wait (per-stream order)."""
    return Exists(
        CallbackDelivery.objects.filter(stream_id=OuterRef("stream_id"), pk__lt=OuterRef("pk"), state__in=OPEN_STATES)
    )


def delivery_is_blocked(delivery_id: int) -> bool:
    """An earlier delivery of the same stream is still open: the task that finishes it goes on with this one."""
    return CallbackDelivery.objects.filter(pk=delivery_id).filter(earlier_open()).exists()


class CallbackAttempt(models.Model):
    RESPONSE_EXCERPT_LIMIT = 512

    delivery = models.ForeignKey(CallbackDelivery, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True, default="")
    response_excerpt = models.CharField(max_length=512, blank=True, default="")

    class Meta:
        ordering = ["delivery_id", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="one_attempt_per_number")]

    def __str__(self) -> str:
        return f"#{self.number} {self.status_code or self.error}"
