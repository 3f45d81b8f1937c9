"""Stream operations under /v1/Account/{auth_id}/Call/{call_uuid}/Stream/ (spec §5, D19).

One APIView per path, a method per operation (Plivo serves several operations on one
path). Start and stop go through `streams.services`, the same functions the admin and
the call session use. Bodies on DELETE (the plivo SDK sends call_uuid/stream_id) are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import QueryDict
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from streams import services
from streams.api.errors import MAX_BODY_BYTES, PayloadTooLarge, api_error, new_api_id
from streams.api.lookups import call_for, request_account, stream_for
from streams.api.pagination import PAGE_PARAMETERS, paginate
from streams.api.serializers import ErrorSerializer, MetaSerializer, StreamObjectSerializer, WithApiId
from streams.core.validation import EgressPolicy, StreamParamError, StreamParams, validate_stream_params
from streams.models import Call, Stream

ERROR = OpenApiResponse(ErrorSerializer, description='{"api_id", "error"}')
NO_CONTENT = OpenApiResponse(description="Done; empty body.")
TAGS = ["Streams"]
RETRY_AFTER_SECONDS = 5


def request_body(request: Request) -> Any:
    """The parsed body (JSON or form), refused with 413 before parsing when it is oversized."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    try:
        return request.data
    except RecursionError:  # deeply nested JSON: the parser only turns ValueError into a 400
        raise exceptions.ParseError("JSON parse error - nested too deeply.") from None


# …/Call/{call_uuid}/Stream/: start (POST), list (GET), stop all (DELETE).
class StreamCollectionApi(APIView):
    class StartInput(serializers.Serializer):
        # The fields document the parameters; checking them is the shared validator's job
        # (to_internal_value), so REST, gateway metadata and admin agree on every rule.

        service_url = serializers.CharField(max_length=2048, help_text="ws:// or wss:// URL the hub dials")
        bidirectional = serializers.BooleanField(required=False, allow_null=True, help_text="default false")
        audio_track = serializers.ChoiceField(
            choices=Stream.Track.choices, required=False, allow_null=True, help_text="default inbound"
        )
        stream_timeout = serializers.IntegerField(
            min_value=1, required=False, allow_null=True, help_text="seconds, default 86400"
        )
        status_callback_url = serializers.CharField(required=False, allow_null=True, allow_blank=True)
        status_callback_method = serializers.ChoiceField(
            choices=Stream.Method.choices, required=False, allow_null=True, help_text="default POST"
        )
        content_type = serializers.ChoiceField(
            choices=Stream.ContentType.choices,
            required=False,
            allow_null=True,
            help_text="default audio/x-l16;rate=8000",
        )
        extra_headers = serializers.CharField(
            required=False, allow_null=True, allow_blank=True, help_text="k1=v1,k2=v2; at most 512 bytes"
        )
        keep_call_alive = serializers.BooleanField(required=False, allow_null=True)
        noise_cancellation = serializers.BooleanField(required=False, allow_null=True)
        noise_cancellation_level = serializers.IntegerField(
            min_value=60, max_value=100, required=False, allow_null=True, help_text="default 85"
        )
        reconnect = serializers.BooleanField(
            required=False, allow_null=True, help_text="default false: resume the stream after a drop (docs/resume.md)"
        )
        reconnect_window = serializers.IntegerField(
            min_value=1,
            max_value=40,
            required=False,
            allow_null=True,
            help_text="seconds the hub redials after a drop; only with reconnect=true; default 10",
        )

        class Meta:
            ref_name = "StreamStart"

        def to_internal_value(self, data: Any) -> StreamParams:
            if isinstance(data, QueryDict):
                repeated = [key for key, values in data.lists() if len(values) > 1]
                if repeated:
                    raise serializers.ValidationError({key: "is given more than once" for key in repeated})
                # A form cannot say null: an empty field means "not given", as null does in JSON.
                data = {key: data[key] for key in data if data[key] != ""}
            elif not isinstance(data, Mapping):
                raise serializers.ValidationError(
                    {api_settings.NON_FIELD_ERRORS_KEY: ["The body must be a JSON object or form fields."]}
                )
            # null means "not given" (some clients serialise unset options as null)
            given = {key: value for key, value in data.items() if value is not None}
            try:
                return validate_stream_params(given, policy=EgressPolicy.from_settings(settings))
            except StreamParamError as exc:
                raise serializers.ValidationError(exc.errors) from None

    class Started(serializers.Serializer):
        api_id = serializers.UUIDField()
        message = serializers.CharField()
        stream_id = serializers.UUIDField()

        class Meta:
            ref_name = "StreamStarted"

    @extend_schema(
        operation_id="stream_start",
        summary="Start an audio stream on a live call",
        tags=TAGS,
        request=StartInput,
        responses={201: Started, 400: ERROR, 401: ERROR, 404: ERROR, 413: ERROR, 415: ERROR, 503: ERROR},
    )
    def post(self, request: Request, auth_id: str, call_uuid: str) -> Response:
        call = call_for(request, call_uuid)
        if call.status != Call.Status.LIVE:
            return api_error("Call has ended.", status=status.HTTP_404_NOT_FOUND)
        serializer = StreamCollectionApi.StartInput(data=request_body(request))
        serializer.is_valid(raise_exception=True)
        params: StreamParams = serializer.validated_data
        try:
            stream = services.stream_create(call=call, params=params, refuse_one_way=True)
        except services.CallNotLive:
            return api_error("Call has ended.", status=status.HTTP_404_NOT_FOUND)
        except services.StreamConflict:
            return api_error(
                "service_url: an active stream to this URL already exists on this call",
                status=status.HTTP_400_BAD_REQUEST,
            )
        except services.PlaybackUnavailable as exc:
            return api_error(
                f"bidirectional: {exc}; start the stream with bidirectional=false",
                status=status.HTTP_400_BAD_REQUEST,
            )
        except services.ControlUndelivered:
            return api_error(
                "The hub process holding this call could not be reached (channel layer unavailable); "
                "the stream was not started (it ended at once: Connection error). Try again.",
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        except services.TooManyStreams as exc:
            return api_error(f"{exc}; stop one before starting another", status=status.HTTP_400_BAD_REQUEST)
        body = {"api_id": new_api_id(), "message": "audio streaming started", "stream_id": stream.stream_id}
        return Response(StreamCollectionApi.Started(body).data, status=status.HTTP_201_CREATED)

    class Listed(serializers.Serializer):
        api_id = serializers.UUIDField()
        meta = MetaSerializer()
        objects = StreamObjectSerializer(many=True)

        class Meta:
            ref_name = "StreamList"

    @extend_schema(
        operation_id="stream_list",
        summary="List a call's streams, newest first",
        tags=TAGS,
        parameters=PAGE_PARAMETERS,
        responses={200: Listed, 400: ERROR, 401: ERROR, 404: ERROR},
    )
    def get(self, request: Request, auth_id: str, call_uuid: str) -> Response:
        call = call_for(request, call_uuid)
        streams = (
            Stream.objects.filter(account=request_account(request), call=call)
            .select_related("account", "call")
            .order_by("-created_at", "-id")
        )
        page = paginate(request, streams)
        body = {"api_id": new_api_id(), "meta": page.meta, "objects": page.objects}
        return Response(StreamCollectionApi.Listed(body).data)

    @extend_schema(
        operation_id="stream_stop_all",
        summary="Stop every active stream of a call (idempotent)",
        tags=TAGS,
        request=None,
        responses={204: NO_CONTENT, 401: ERROR, 404: ERROR, 503: ERROR},
    )
    def delete(self, request: Request, auth_id: str, call_uuid: str) -> Response:
        call = call_for(request, call_uuid)
        active = Stream.objects.filter(account=request_account(request), call=call, end_time__isnull=True)
        undelivered = 0
        for stream in active.select_related("account", "call"):
            # False means a hangup or timeout ended it meanwhile: stopped either way.
            try:
                services.stream_stop(stream=stream)
            except services.ControlUndelivered:
                undelivered += 1
        if undelivered:
            return api_error(services.undelivered_message(f"{undelivered} stream(s) stopped"), status=503)
        return Response(status=status.HTTP_204_NO_CONTENT)


# …/Call/{call_uuid}/Stream/{stream_id}/: get (GET), stop (DELETE).
class StreamDetailApi(APIView):
    class Detail(WithApiId, StreamObjectSerializer):
        class Meta:
            ref_name = "StreamDetail"

    @extend_schema(
        operation_id="stream_get",
        summary="Get one stream",
        tags=TAGS,
        responses={200: Detail, 401: ERROR, 404: ERROR},
    )
    def get(self, request: Request, auth_id: str, call_uuid: str, stream_id: str) -> Response:
        stream = stream_for(request, call_uuid, stream_id)
        return Response(StreamDetailApi.Detail(stream).data)

    @extend_schema(
        operation_id="stream_stop",
        summary='Stop one stream (hangup reason "API request")',
        tags=TAGS,
        request=None,
        responses={204: NO_CONTENT, 400: ERROR, 401: ERROR, 404: ERROR, 503: ERROR},
    )
    def delete(self, request: Request, auth_id: str, call_uuid: str, stream_id: str) -> Response:
        stream = stream_for(request, call_uuid, stream_id)
        try:
            stopped = services.stream_stop(stream=stream, reason=Stream.Reason.API_REQUEST)
        except services.ControlUndelivered:
            return api_error(services.undelivered_message("The stream is stopped"), status=503)
        if not stopped:
            return api_error("No active stream found", status=status.HTTP_400_BAD_REQUEST)
        return Response(status=status.HTTP_204_NO_CONTENT)
