"""Account, Application, Call, CallEvent, Stream, StreamEvent and their one-row state changes.

Invariants the database enforces: one active stream per (call, service_url); an
ended stream has an end time and exactly one hangup reason; a live call has no end;
an account has at most one default application (for numbers, and for endpoints).
"""

from __future__ import annotations

import secrets
import string
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models import Q
from django.utils import timezone

from streams.core import billing

AUTH_ID_ALPHABET = string.ascii_uppercase + string.digits
TOKEN_ALPHABET = string.ascii_letters + string.digits


def new_auth_id() -> str:
    return "MA" + "".join(secrets.choice(AUTH_ID_ALPHABET) for _ in range(18))


def new_auth_token() -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(40))


def new_ingest_token() -> str:
    return "gw_" + secrets.token_urlsafe(24)


def new_app_id() -> str:
    """17 decimal digits, the shape of Plivo's app ids (a string, never an int)."""
    return str(10**16 + secrets.randbelow(9 * 10**16))


def mask_secret(value: str) -> str:
    return f"{value[:4]}…{value[-2:]}" if len(value) > 8 else "…"


class Account(models.Model):
    auth_id = models.CharField(max_length=20, unique=True, default=new_auth_id)
    # Stored retrievably: it signs status callbacks and the customer upgrade (HMAC key).
    auth_token = models.CharField(max_length=64, default=new_auth_token)
    # Separate from auth_token so gateways can carry it in a URL without exposing the API secret.
    ingest_token = models.CharField(max_length=64, unique=True, default=new_ingest_token)
    name = models.CharField(max_length=200)
    rate_per_minute = models.DecimalField(max_digits=12, decimal_places=5, default=Decimal("0.00300"))
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.auth_id})"

    def __repr__(self) -> str:  # never leak the token through a repr in a log line
        return f"<Account {self.auth_id}>"

    @property
    def masked_token(self) -> str:
        return mask_secret(self.auth_token)


class Application(models.Model):
    """A Plivo application: where a call's flow comes from (answer_url) and who hears its end (hangup_url)."""

    class Method(models.TextChoices):
        GET = "GET", "GET"
        POST = "POST", "POST"

    app_id = models.CharField(max_length=20, unique=True, default=new_app_id)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="applications")
    app_name = models.CharField(max_length=200)
    answer_url = models.CharField(max_length=2048)
    answer_method = models.CharField(max_length=4, choices=Method.choices, default=Method.POST)
    hangup_url = models.CharField(max_length=2048, blank=True, default="")
    hangup_method = models.CharField(max_length=4, choices=Method.choices, default=Method.POST)
    fallback_answer_url = models.CharField(max_length=2048, blank=True, default="")
    fallback_method = models.CharField(max_length=4, choices=Method.choices, default=Method.POST)
    # Stored and returned for Plivo compatibility; the hub has no messaging, endpoints or SIP URIs.
    message_url = models.CharField(max_length=2048, blank=True, default="")
    message_method = models.CharField(max_length=4, choices=Method.choices, default=Method.POST)
    default_number_app = models.BooleanField(
        default=False, help_text="the account's default application: runs calls that name no app and no streams"
    )
    default_endpoint_app = models.BooleanField(default=False)
    public_uri = models.BooleanField(default=False)
    log_incoming_messages = models.BooleanField(default=True)
    subaccount = models.CharField(max_length=20, blank=True, default="")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["account", "-created_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["account"], condition=Q(default_number_app=True), name="one_default_number_app_per_account"
            ),
            models.UniqueConstraint(
                fields=["account"], condition=Q(default_endpoint_app=True), name="one_default_endpoint_app_per_account"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.app_name} ({self.app_id})"

    def validate_constraints(self, exclude: Any = None) -> None:
        # "One default per account" is kept by services.application_save, which unmarks the
        # account's old default in the same transaction: a form marking a new one is not an error.
        super().validate_constraints(exclude={*(exclude or ()), "account"})

    @property
    def resource_uri(self) -> str:
        return f"/v1/Account/{self.account.auth_id}/Application/{self.app_id}/"


class HubProcess(models.Model):
    """One row per hub process lease: its heartbeat tells the sweep which calls are orphaned.

    The row is the process's lease on its calls. The sweep first suspects a silent process,
    then fences it (`fenced_at`) if it stayed silent; both are conditional updates on this
    row, as is every heartbeat, so a process either beats first (and stays alive) or finds
    itself fenced at its next beat (and stops relaying the calls it no longer holds).
    """

    server_id = models.CharField(max_length=200, unique=True)
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now, db_index=True)
    live_calls = models.PositiveIntegerField(default=0)
    capacity = models.PositiveIntegerField(default=0)
    # What the process's live streams are doing, for the console's live page (streams.live.snapshot):
    # {stream_id: [state, send-buffer %, playback-queue seconds, frames sent]}, rewritten every ~2 s.
    live_snapshot = models.JSONField(default=dict, blank=True)
    snapshot_at = models.DateTimeField(null=True, blank=True)
    calls = models.JSONField(default=list, blank=True, help_text="ids of the calls it held at its last heartbeat")
    suspected_at = models.DateTimeField(null=True, blank=True, help_text="a sweep found its heartbeat stale")
    fenced_at = models.DateTimeField(null=True, blank=True, help_text="a sweep declared it dead and ended its calls")

    class Meta:
        verbose_name_plural = "hub processes"

    def __str__(self) -> str:
        return self.server_id


class Call(models.Model):
    class Status(models.TextChoices):
        LIVE = "live", "live"
        ENDED = "ended", "ended"

    class Direction(models.TextChoices):
        INBOUND = "inbound", "inbound"
        OUTBOUND = "outbound", "outbound"

    call_uuid = models.UUIDField(unique=True, default=uuid.uuid4)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="calls")
    from_number = models.CharField("from", max_length=128, blank=True, default="")
    to_number = models.CharField("to", max_length=128, blank=True, default="")
    direction = models.CharField(max_length=10, choices=Direction.choices, default=Direction.INBOUND)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.LIVE, db_index=True)
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    gateway = models.CharField(max_length=32, default="audio-fork")
    gateway_metadata = models.JSONField(default=dict, blank=True)
    server_id = models.CharField(max_length=200, blank=True, default="", db_index=True)
    # the channel-layer channel of the holding process's control mailbox (streams/live/mailbox.py)
    control_channel = models.CharField(max_length=200, blank=True, default="", db_default="", editable=False)
    # The application whose answer URL runs this call (none: the gateway named its streams itself).
    application = models.ForeignKey(Application, null=True, blank=True, on_delete=models.SET_NULL, related_name="calls")
    # Why the call ended, as the hangup request reports it (streams.core.application.CAUSES).
    hangup_cause_name = models.CharField(max_length=64, blank=True, default="")
    hangup_detail = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status="live", ended_at__isnull=True) | Q(status="ended", ended_at__isnull=False),
                name="call_ended_iff_ended_at",
            ),
        ]

    def __str__(self) -> str:
        return str(self.call_uuid)

    def mark_ended(self, *, at: datetime | None = None) -> bool:
        """True only for the caller that actually ended it."""
        now = max(at, self.started_at) if at is not None else timezone.now()
        done = Call.objects.filter(pk=self.pk, status=Call.Status.LIVE).update(status=Call.Status.ENDED, ended_at=now)
        if done:
            self.status, self.ended_at = Call.Status.ENDED, now
        return done == 1

    def record_hangup_cause(self, *, cause_name: str, detail: str = "") -> bool:
        """Why the call ends, recorded once before it ends; the first recorded cause wins."""
        done = Call.objects.filter(pk=self.pk, status=Call.Status.LIVE, hangup_cause_name="").update(
            hangup_cause_name=cause_name, hangup_detail=detail[:500]
        )
        if done:
            self.hangup_cause_name, self.hangup_detail = cause_name, detail[:500]
        return done == 1


class DebugEntry(models.Model):
    """A debug-log row (a call's or a stream's): what happened, when, why, with its parameters."""

    timestamp = models.DateTimeField(default=timezone.now)
    event = models.CharField(max_length=64)
    error = models.CharField(max_length=1000, blank=True, default="")
    params = models.JSONField(default=dict, blank=True)

    class Meta:
        abstract = True
        ordering = ["timestamp", "id"]

    def __str__(self) -> str:
        return f"{self.event} @ {self.timestamp:%H:%M:%S.%f}"


class CallEvent(DebugEntry):
    """The call's debug log: its application's answer requests, the document's steps, why it ended.

    Written off the audio path, a few rows per call (never per frame).
    """

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="events")

    class Meta(DebugEntry.Meta):
        indexes = [models.Index(fields=["call", "timestamp"])]


class Stream(models.Model):
    class Status(models.TextChoices):
        INITIATED = "initiated", "initiated"
        IN_PROGRESS = "in-progress", "in-progress"
        STOPPED = "stopped", "stopped"
        FAILED = "failed", "failed"

    class Reason(models.TextChoices):
        API_REQUEST = "API request", "API request"
        CALL_HANGUP = "Call hangup", "Call hangup"
        CONNECTION_ERROR = "Connection error", "Connection error"
        STREAM_TIMEOUT = "Stream timeout", "Stream timeout"

    class Track(models.TextChoices):
        INBOUND = "inbound", "inbound"
        OUTBOUND = "outbound", "outbound"
        BOTH = "both", "both"

    class ContentType(models.TextChoices):
        L16_8K = "audio/x-l16;rate=8000", "audio/x-l16;rate=8000"
        L16_16K = "audio/x-l16;rate=16000", "audio/x-l16;rate=16000"
        MULAW_8K = "audio/x-mulaw;rate=8000", "audio/x-mulaw;rate=8000"

    class Method(models.TextChoices):
        GET = "GET", "GET"
        POST = "POST", "POST"

    ACTIVE = (Status.INITIATED, Status.IN_PROGRESS)

    stream_id = models.UUIDField(unique=True, default=uuid.uuid4)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="streams")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="streams")
    service_url = models.CharField(max_length=2048)
    bidirectional = models.BooleanField(default=False)
    audio_track = models.CharField(max_length=10, choices=Track.choices, default=Track.INBOUND)
    content_type = models.CharField(max_length=32, choices=ContentType.choices, default=ContentType.L16_8K)
    stream_timeout = models.PositiveIntegerField(default=86400)
    status_callback_url = models.CharField(max_length=2048, blank=True, default="")
    status_callback_method = models.CharField(max_length=4, choices=Method.choices, default=Method.POST)
    extra_headers = models.CharField(max_length=512, blank=True, default="")
    keep_call_alive = models.BooleanField(default=False)
    noise_cancellation = models.BooleanField(default=False)
    noise_cancellation_level = models.PositiveSmallIntegerField(default=85)
    reconnect = models.BooleanField(default=False, help_text="resume after a drop (docs/resume.md)")
    reconnect_window = models.PositiveSmallIntegerField(default=0, help_text="seconds; 0 when reconnect is off")

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.INITIATED, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    start_time = models.DateTimeField(null=True, blank=True)
    end_time = models.DateTimeField(null=True, blank=True, db_index=True)
    duration = models.PositiveIntegerField(null=True, blank=True, help_text="seconds from start to end, rounded up")
    bill_duration = models.PositiveIntegerField(default=0)
    rounded_bill_duration = models.PositiveIntegerField(default=0)
    billed_amount = models.DecimalField(max_digits=14, decimal_places=5, default=Decimal("0.00000"))
    hangup_reason = models.CharField(max_length=20, choices=Reason.choices, blank=True, default="", db_index=True)
    last_error = models.CharField(max_length=500, blank=True, default="")

    # Written once at the end from the relay's in-memory counters (never per frame).
    frames_sent = models.PositiveIntegerField(default=0)
    played_ms = models.PositiveIntegerField(default=0, help_text="audio this stream played into the call, ms")
    resumes = models.PositiveIntegerField(default=0, help_text="times the customer connection was resumed")
    buffer_samples = models.JSONField(default=list, blank=True, help_text="[[seconds since start, fill %], …]")
    server_id = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["call", "-created_at"]), models.Index(fields=["account", "-created_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["call", "service_url"],
                condition=Q(end_time__isnull=True),
                name="one_active_stream_per_url",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["initiated", "in-progress"], end_time__isnull=True, hangup_reason="")
                | Q(status__in=["stopped", "failed"], end_time__isnull=False) & ~Q(hangup_reason=""),
                name="stream_ended_has_end_and_reason",
            ),
            models.CheckConstraint(
                condition=~Q(bidirectional=True, audio_track__in=["outbound", "both"]),
                name="bidirectional_is_inbound_only",
            ),
            models.CheckConstraint(condition=Q(stream_timeout__gt=0), name="stream_timeout_positive"),
        ]

    def __str__(self) -> str:
        return str(self.stream_id)

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def tracks(self) -> list[str]:
        return ["inbound", "outbound"] if self.audio_track == "both" else [self.audio_track]

    @property
    def resource_uri(self) -> str:
        return f"/v1/Account/{self.account.auth_id}/Call/{self.call.call_uuid}/Stream/{self.stream_id}/"

    def mark_started(self, *, at: datetime | None = None) -> bool:
        now = at or timezone.now()
        done = Stream.objects.filter(pk=self.pk, status=Stream.Status.INITIATED).update(
            status=Stream.Status.IN_PROGRESS, start_time=now
        )
        if done:
            self.status, self.start_time = Stream.Status.IN_PROGRESS, now
        return done == 1

    def mark_ended(
        self,
        *,
        reason: str,
        error: str = "",
        interval: int = 60,
        at: datetime | None = None,
        extra: dict[str, Any] | None = None,
    ) -> bool:
        """End the stream with billing for this end time; True only for the caller that ended it.

        A conditional UPDATE, so an API stop racing a hangup racing a timeout ends it once;
        `extra` fields (the relay's counters) go in the same UPDATE. `at` backdates the end
        (a dead process's streams end at its last sign of life).
        """
        values = self.end_values(reason=reason, error=error, interval=interval, at=at, extra=extra)
        done = Stream.objects.filter(pk=self.pk, end_time__isnull=True).update(**values)
        if done:
            for key, value in values.items():
                setattr(self, key, value)
        return done == 1

    def end_values(
        self,
        *,
        reason: str,
        error: str = "",
        interval: int = 60,
        at: datetime | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The columns an end writes (mark_ended; streams/pgwrite.py's one-statement hang-up)."""
        now = max(at, self.start_time or at) if at is not None else timezone.now()
        status = Stream.Status.FAILED if reason == Stream.Reason.CONNECTION_ERROR else Stream.Status.STOPPED
        charge = billing.bill(
            start=self.start_time, end=now, rate_per_minute=self.account.rate_per_minute, interval=interval
        )
        values: dict[str, Any] = {
            "status": status,
            "hangup_reason": reason,
            "end_time": now,
            "duration": billing.whole_seconds(self.created_at, now),
            "bill_duration": charge.bill_duration,
            "rounded_bill_duration": charge.rounded_bill_duration,
            "billed_amount": charge.billed_amount,
        }
        if error:
            values["last_error"] = error[:500]
        values.update(extra or {})
        return values


class StreamEvent(DebugEntry):
    """The debug log: one row per lifecycle step, never per frame."""

    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="events")

    class Meta(DebugEntry.Meta):
        indexes = [models.Index(fields=["stream", "timestamp"])]
