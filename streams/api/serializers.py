"""Wire shapes shared by several operations: the stream and call objects, list `meta`, errors.

Field names and formats follow spec §5: times as "2025-11-25 10:00:01+00:00" (UTC;
`created_at` keeps its microseconds), `billed_amount` as a 5-decimal string.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from streams.api.errors import new_api_id
from streams.models import Call, Stream


@extend_schema_field({"type": "string", "example": "2025-11-25 10:00:01+00:00"})
class PlivoTimeField(serializers.Field):
    def __init__(self, *, microseconds: bool = False, **kwargs: Any) -> None:
        self.timespec = "microseconds" if microseconds else "seconds"
        kwargs["read_only"] = True
        super().__init__(**kwargs)

    def to_representation(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat(sep=" ", timespec=self.timespec)


class WithApiId(serializers.Serializer):
    """Adds the fresh `api_id` every Plivo response carries."""

    api_id = serializers.SerializerMethodField()

    @extend_schema_field(OpenApiTypes.UUID)
    def get_api_id(self, obj: Any) -> str:
        return new_api_id()


class ErrorSerializer(serializers.Serializer):
    api_id = serializers.UUIDField()
    error = serializers.CharField()

    class Meta:
        ref_name = "Error"


class MetaSerializer(serializers.Serializer):
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()
    total_count = serializers.IntegerField()
    count = serializers.IntegerField(help_text="Same as total_count (the plivo SDK's fixtures name it count).")
    next = serializers.CharField(allow_null=True, help_text="Relative URI of the next page, or null.")
    previous = serializers.CharField(allow_null=True, help_text="Relative URI of the previous page, or null.")

    class Meta:
        ref_name = "ListMeta"


class StreamObjectSerializer(serializers.Serializer):
    # callers select_related("account", "call")
    stream_id = serializers.UUIDField()
    call_uuid = serializers.UUIDField(source="call.call_uuid")
    service_url = serializers.CharField()
    audio_track = serializers.ChoiceField(choices=Stream.Track.choices)
    bidirectional = serializers.BooleanField()
    content_type = serializers.ChoiceField(choices=Stream.ContentType.choices)
    stream_timeout = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Stream.Status.choices)
    hangup_reason = serializers.CharField(help_text='"" while active, else one of ' + ", ".join(Stream.Reason.values))
    status_callback_url = serializers.CharField()
    status_callback_method = serializers.ChoiceField(choices=Stream.Method.choices)
    created_at = PlivoTimeField(microseconds=True)
    start_time = PlivoTimeField(allow_null=True)
    end_time = PlivoTimeField(allow_null=True)
    bill_duration = serializers.IntegerField()
    rounded_bill_duration = serializers.IntegerField()
    billed_amount = serializers.DecimalField(max_digits=14, decimal_places=5, coerce_to_string=True)
    plivo_auth_id = serializers.CharField(source="account.auth_id")
    resource_uri = serializers.CharField()
    reconnect = serializers.BooleanField(required=False, help_text="present only on streams that opted in to resume")
    reconnect_window = serializers.IntegerField(required=False, help_text="seconds; only with reconnect")
    resumes = serializers.IntegerField(required=False, help_text="connections resumed; only with reconnect")

    RESUME_FIELDS = ("reconnect", "reconnect_window", "resumes")

    class Meta:
        ref_name = "Stream"

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        if not getattr(instance, "reconnect", False):  # streams that did not opt in look as they always did
            for key in self.RESUME_FIELDS:
                data.pop(key, None)
        return data


class CallObjectSerializer(serializers.Serializer):
    # callers select_related("account")
    call_uuid = serializers.UUIDField()
    direction = serializers.ChoiceField(choices=Call.Direction.choices)
    # A plain string: a second enum named "status" would collide with the stream's in the schema.
    status = serializers.CharField(help_text="live or ended (the hub's own states)")
    call_status = serializers.SerializerMethodField(help_text="Plivo's name for it: in-progress or completed")
    start_time = PlivoTimeField(source="started_at")
    end_time = PlivoTimeField(source="ended_at", allow_null=True)
    plivo_auth_id = serializers.CharField(source="account.auth_id")
    resource_uri = serializers.SerializerMethodField()

    class Meta:
        ref_name = "Call"

    def get_fields(self) -> dict[str, serializers.Field]:
        # "from" is a Python keyword, so it cannot be a class attribute; it goes after call_uuid.
        declared = super().get_fields()
        fields = {"call_uuid": declared.pop("call_uuid")}
        fields["from"] = serializers.CharField(source="from_number")
        fields["to"] = serializers.CharField(source="to_number")
        fields.update(declared)
        return fields

    @extend_schema_field(OpenApiTypes.STR)
    def get_call_status(self, call: Call) -> str:
        return "in-progress" if call.status == Call.Status.LIVE else "completed"

    @extend_schema_field(OpenApiTypes.STR)
    def get_resource_uri(self, call: Call) -> str:
        return f"/v1/Account/{call.account.auth_id}/Call/{call.call_uuid}/"
