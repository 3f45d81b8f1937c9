"""Application operations under /v1/Account/{auth_id}/Application/ (Plivo's Application API).

Byte-compatible with what the plivo SDK sends and reads: create answers 201
`{"api_id","app_id","message":"created"}`, update (POST on the app's path) 202
`{"api_id","message":"changed"}`, delete 204 with an empty body (the SDK sends a JSON body on
DELETE; it is not read). Every key an update sends is stored, keys it leaves out stay as they
were. `default_number_app` marks the account's one default application (the others lose the
mark); responses call it `default_app`, as Plivo's do. Another account's app is a plain 404.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http import QueryDict
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from streams import services
from streams.api.errors import new_api_id
from streams.api.lookups import request_account
from streams.api.pagination import PAGE_PARAMETERS, paginate
from streams.api.serializers import ErrorSerializer, MetaSerializer, WithApiId
from streams.api.streams import request_body
from streams.core.application import ApplicationParamError, validate_application
from streams.models import Application

ERROR = OpenApiResponse(ErrorSerializer, description='{"api_id", "error"}')
TAGS = ["Applications"]
METHODS = Application.Method.choices


class ApplicationObjectSerializer(serializers.Serializer):
    # callers select_related("account")
    answer_method = serializers.ChoiceField(choices=METHODS)
    answer_url = serializers.CharField()
    app_id = serializers.CharField()
    app_name = serializers.CharField()
    default_app = serializers.BooleanField(source="default_number_app", help_text="the account's default app")
    default_endpoint_app = serializers.BooleanField()
    enabled = serializers.BooleanField()
    fallback_answer_url = serializers.CharField()
    fallback_method = serializers.ChoiceField(choices=METHODS)
    hangup_method = serializers.ChoiceField(choices=METHODS)
    hangup_url = serializers.CharField()
    log_incoming_messages = serializers.BooleanField()
    message_method = serializers.ChoiceField(choices=METHODS)
    message_url = serializers.CharField()
    public_uri = serializers.BooleanField()
    resource_uri = serializers.CharField()
    sip_uri = serializers.SerializerMethodField()
    sub_account = serializers.CharField(source="subaccount", allow_null=True, help_text="null for the main account")

    class Meta:
        ref_name = "Application"

    def get_sip_uri(self, app: Application) -> str:
        # Plivo's shape (sip:<app_id>@<its host>) with the host the client reached this hub by
        request = self.context.get("request")
        host = urlsplit(f"//{request.get_host()}").hostname if request is not None else None
        return f"sip:{app.app_id}@{host or 'localhost'}"

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        data["sub_account"] = data["sub_account"] or None
        return data


class ApplicationInput(serializers.Serializer):
    # The fields document the parameters; checking them is streams.core.application's job
    # (to_internal_value), shared with the admin's form.
    app_name = serializers.CharField(required=False, help_text="required on create")
    answer_url = serializers.URLField(required=False, help_text="required on create; http:// or https://")
    answer_method = serializers.ChoiceField(choices=METHODS, required=False, allow_null=True, help_text="default POST")
    hangup_url = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, help_text="on create defaults to answer_url"
    )
    hangup_method = serializers.ChoiceField(choices=METHODS, required=False, allow_null=True)
    fallback_answer_url = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    fallback_method = serializers.ChoiceField(choices=METHODS, required=False, allow_null=True)
    message_url = serializers.CharField(required=False, allow_null=True, allow_blank=True, help_text="stored only")
    message_method = serializers.ChoiceField(choices=METHODS, required=False, allow_null=True)
    default_number_app = serializers.BooleanField(required=False, allow_null=True)
    default_endpoint_app = serializers.BooleanField(required=False, allow_null=True)
    subaccount = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    log_incoming_messages = serializers.BooleanField(required=False, allow_null=True)
    public_uri = serializers.BooleanField(required=False, allow_null=True)

    class Meta:
        ref_name = "ApplicationInput"

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, QueryDict):
            repeated = [key for key, values in data.lists() if len(values) > 1]
            if repeated:
                raise serializers.ValidationError({key: "is given more than once" for key in repeated})
            data = {key: data[key] for key in data if data[key] != ""}  # an empty form field: not given
        elif not isinstance(data, Mapping):
            raise serializers.ValidationError(
                {api_settings.NON_FIELD_ERRORS_KEY: ["The body must be a JSON object or form fields."]}
            )
        try:
            return validate_application(
                data,
                creating=bool(self.context.get("creating")),
                forbid_private_callbacks=settings.STREAMHUB_FORBID_PRIVATE_CALLBACKS,
            )
        except ApplicationParamError as exc:
            raise serializers.ValidationError(exc.errors) from None


def application_for(request: Request, app_id: str) -> Application:
    if not (app_id.isascii() and app_id.isdigit() and len(app_id) <= 20):  # app ids are digits (Plivo's shape)
        raise exceptions.NotFound("Application not found.")
    app = Application.objects.select_related("account").filter(account=request_account(request), app_id=app_id).first()
    if app is None:
        raise exceptions.NotFound("Application not found.")
    return app


# …/Application/: create (POST), list (GET).
class ApplicationCollectionApi(APIView):
    class Created(serializers.Serializer):
        api_id = serializers.UUIDField()
        app_id = serializers.CharField()
        message = serializers.CharField()

        class Meta:
            ref_name = "ApplicationCreated"

    @extend_schema(
        operation_id="application_create",
        summary="Create an application",
        tags=TAGS,
        request=ApplicationInput,
        responses={201: Created, 400: ERROR, 401: ERROR, 413: ERROR, 415: ERROR},
    )
    def post(self, request: Request, auth_id: str) -> Response:
        serializer = ApplicationInput(data=request_body(request), context={"creating": True})
        serializer.is_valid(raise_exception=True)
        app = Application(account=request_account(request), **serializer.validated_data)
        services.application_save(application=app)
        body = {"api_id": new_api_id(), "app_id": app.app_id, "message": "created"}
        return Response(ApplicationCollectionApi.Created(body).data, status=status.HTTP_201_CREATED)

    class Listed(serializers.Serializer):
        api_id = serializers.UUIDField()
        meta = MetaSerializer()
        objects = ApplicationObjectSerializer(many=True)

        class Meta:
            ref_name = "ApplicationList"

    @extend_schema(
        operation_id="application_list",
        summary="List the account's applications, newest first",
        tags=TAGS,
        parameters=[
            OpenApiParameter("app_name", str, description="only applications of exactly this name"),
            OpenApiParameter("subaccount", str, description="only applications of this subaccount"),
            *PAGE_PARAMETERS,
        ],
        responses={200: Listed, 400: ERROR, 401: ERROR},
    )
    def get(self, request: Request, auth_id: str) -> Response:
        apps = Application.objects.filter(account=request_account(request)).select_related("account")
        if "app_name" in request.query_params:
            apps = apps.filter(app_name=request.query_params["app_name"].replace("\x00", ""))
        if "subaccount" in request.query_params:
            apps = apps.filter(subaccount=request.query_params["subaccount"].replace("\x00", ""))
        page = paginate(request, apps.order_by("-created_at", "-id"))
        body = {"api_id": new_api_id(), "meta": page.meta, "objects": page.objects}
        return Response(ApplicationCollectionApi.Listed(body, context={"request": request}).data)


# …/Application/{app_id}/: get (GET), update (POST), delete (DELETE).
class ApplicationDetailApi(APIView):
    class Detail(WithApiId, ApplicationObjectSerializer):
        class Meta:
            ref_name = "ApplicationDetail"

    class Changed(serializers.Serializer):
        api_id = serializers.UUIDField()
        message = serializers.CharField()

        class Meta:
            ref_name = "ApplicationChanged"

    @extend_schema(
        operation_id="application_get",
        summary="Get one application",
        tags=TAGS,
        responses={200: Detail, 401: ERROR, 404: ERROR},
    )
    def get(self, request: Request, auth_id: str, app_id: str) -> Response:
        return Response(
            ApplicationDetailApi.Detail(application_for(request, app_id), context={"request": request}).data
        )

    @extend_schema(
        operation_id="application_update",
        summary="Update an application (every given key is stored)",
        tags=TAGS,
        request=ApplicationInput,
        responses={202: Changed, 400: ERROR, 401: ERROR, 404: ERROR, 413: ERROR, 415: ERROR},
    )
    def post(self, request: Request, auth_id: str, app_id: str) -> Response:
        app = application_for(request, app_id)
        serializer = ApplicationInput(data=request_body(request), context={"creating": False})
        serializer.is_valid(raise_exception=True)
        for field, value in serializer.validated_data.items():
            setattr(app, field, value)
        services.application_save(application=app)
        body = {"api_id": new_api_id(), "message": "changed"}
        return Response(ApplicationDetailApi.Changed(body).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="application_delete",
        summary="Delete an application (calls it ran keep their records)",
        tags=TAGS,
        request=None,
        responses={204: OpenApiResponse(description="Deleted; empty body."), 401: ERROR, 404: ERROR},
    )
    def delete(self, request: Request, auth_id: str, app_id: str) -> Response:
        application_for(request, app_id).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)
