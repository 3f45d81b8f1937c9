"""Call operations under /v1/Account/{auth_id}/Call/ (spec §5, D19).

Calls are created by the gateway's ingest socket, never through the API. Hanging up
goes through `services.call_hangup`: every stream ends with "Call hangup" and the
process holding the call closes the gateway socket. `DELETE …/Call/` without a UUID
(Plivo: hang up *every* live call) is refused with 405.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from streams import services
from streams.api.errors import api_error, new_api_id
from streams.api.lookups import call_for, request_account
from streams.api.pagination import PAGE_PARAMETERS, paginate
from streams.api.serializers import CallObjectSerializer, ErrorSerializer, MetaSerializer, WithApiId
from streams.models import Call

ERROR = OpenApiResponse(ErrorSerializer, description='{"api_id", "error"}')
TAGS = ["Calls"]


def status_param(*, description: str) -> OpenApiParameter:
    return OpenApiParameter("status", str, enum=Call.Status.values, description=description)


def requested_status(request: Request, *, default: str | None) -> str | None:
    value = request.query_params.get("status") or default
    if value is not None and value not in Call.Status.values:
        raise exceptions.ValidationError({"status": "must be live or ended"})
    return value


# …/Call/: list (GET); DELETE is refused with 405.
class CallListApi(APIView):
    class Listed(serializers.Serializer):
        api_id = serializers.UUIDField()
        meta = MetaSerializer()
        objects = CallObjectSerializer(many=True)

        class Meta:
            ref_name = "CallList"

    @extend_schema(
        operation_id="call_list",
        summary="List the account's calls, newest first",
        tags=TAGS,
        parameters=[status_param(description="live (default) or ended"), *PAGE_PARAMETERS],
        responses={200: Listed, 400: ERROR, 401: ERROR},
    )
    def get(self, request: Request, auth_id: str) -> Response:
        wanted = requested_status(request, default=Call.Status.LIVE)
        calls = (
            Call.objects.filter(account=request_account(request), status=wanted)
            .select_related("account")
            .order_by("-started_at", "-id")
        )
        page = paginate(request, calls)
        body = {"api_id": new_api_id(), "meta": page.meta, "objects": page.objects}
        return Response(CallListApi.Listed(body).data)

    def http_method_not_allowed(self, request: Request, *args: Any, **kwargs: Any) -> Response:  # type: ignore[override]
        if request.method == "DELETE":
            raise exceptions.MethodNotAllowed(
                "DELETE",
                detail="Hanging up every live call is not supported; hang up one call with DELETE …/Call/{call_uuid}/.",
            )
        return super().http_method_not_allowed(request, *args, **kwargs)


# …/Call/{call_uuid}/: get (GET), hang up (DELETE).
class CallDetailApi(APIView):
    class Detail(WithApiId, CallObjectSerializer):
        class Meta:
            ref_name = "CallDetail"

    @extend_schema(
        operation_id="call_get",
        summary="Get one call, live or ended",
        tags=TAGS,
        # plivo's live_calls.get() asks for ?status=live and expects 404 once the call ended
        parameters=[status_param(description="when given, 404 unless the call is in that state")],
        responses={200: Detail, 400: ERROR, 401: ERROR, 404: ERROR},
    )
    def get(self, request: Request, auth_id: str, call_uuid: str) -> Response:
        wanted = requested_status(request, default=None)
        call = call_for(request, call_uuid)
        if wanted is not None and call.status != wanted:
            return api_error(f"No {wanted} call found.", status=status.HTTP_404_NOT_FOUND)
        return Response(CallDetailApi.Detail(call).data)

    @extend_schema(
        operation_id="call_hangup",
        summary='Hang up a live call; its streams end with "Call hangup"',
        tags=TAGS,
        request=None,
        responses={204: OpenApiResponse(description="Hung up; empty body."), 401: ERROR, 404: ERROR, 503: ERROR},
    )
    def delete(self, request: Request, auth_id: str, call_uuid: str) -> Response:
        call = call_for(request, call_uuid)
        try:
            hung_up = services.call_hangup(call=call)
        except services.ControlUndelivered:
            return api_error(services.undelivered_message("The call is hung up"), status=503)
        if not hung_up:
            return api_error("Call has ended.", status=status.HTTP_404_NOT_FOUND)
        return Response(status=status.HTTP_204_NO_CONTENT)
