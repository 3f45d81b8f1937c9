"""Plivo's paths (spec §5), the OpenAPI schema and the interactive docs, under /v1/.

Plivo serves several operations on one path (GET/POST/DELETE …/Stream/). Django routes
by path only, so `route` sends each method to its own operation view and exposes the
joined class as `.cls`, which is what drf-spectacular inspects for the schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from django.urls import URLPattern, path, re_path, resolve
from django.urls.exceptions import Resolver404
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import status
from rest_framework.decorators import api_view, authentication_classes, permission_classes, renderer_classes
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from streams.api import schema  # noqa: F401  (registers the Basic auth scheme)
from streams.api.calls import CallGetApi, CallHangupApi, CallListApi
from streams.api.errors import api_error
from streams.api.streams import StreamGetApi, StreamListApi, StreamStartApi, StreamStopAllApi, StreamStopApi

HANDLER_METHODS = ("get", "post", "put", "patch", "delete")


def route(name: str, *operations: type[APIView]) -> Callable[..., HttpResponseBase]:
    """One path, one APIView per HTTP method."""
    handlers: dict[str, Callable[..., HttpResponseBase]] = {}
    for operation in operations:
        for method in HANDLER_METHODS:
            if hasattr(operation, method):
                if method.upper() in handlers:
                    raise ValueError(f"{name}: two operations handle {method.upper()}")
                handlers[method.upper()] = operation.as_view()
    joined: type[APIView] = type(name, operations, {"__doc__": ""})
    # Other methods (and OPTIONS) go to the joined view, so a 405 lists every allowed method.
    fallback = joined.as_view()

    @csrf_exempt
    def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        method = "GET" if request.method == "HEAD" else request.method or ""
        return handlers.get(method, fallback)(request, *args, **kwargs)

    view.cls = joined  # type: ignore[attr-defined]
    view.initkwargs = {}  # type: ignore[attr-defined]
    return view


@extend_schema(exclude=True)
@api_view(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
@authentication_classes([])
@permission_classes([AllowAny])
@renderer_classes([JSONRenderer])
def not_found(request: Request, unmatched: str = "") -> Response:
    """Unknown paths under /v1/ get the API's JSON 404, with a hint for a missing trailing slash."""
    message = "Not found."
    if not request.path.endswith("/"):
        try:
            resolve(request.path + "/")
        except Resolver404:
            pass
        else:
            message = "Not found: API paths end with a slash."
    return api_error(message, status=status.HTTP_404_NOT_FOUND)


ACCOUNT = "Account/<str:auth_id>/"
urlpatterns: list[URLPattern] = [
    path(f"{ACCOUNT}Call/", CallListApi.as_view(), name="call-list"),
    path(f"{ACCOUNT}Call/<str:call_uuid>/", route("CallDetail", CallGetApi, CallHangupApi), name="call-detail"),
    path(
        f"{ACCOUNT}Call/<str:call_uuid>/Stream/",
        route("StreamCollection", StreamListApi, StreamStartApi, StreamStopAllApi),
        name="stream-list",
    ),
    path(
        f"{ACCOUNT}Call/<str:call_uuid>/Stream/<str:stream_id>/",
        route("StreamDetail", StreamGetApi, StreamStopApi),
        name="stream-detail",
    ),
    path(
        "schema/",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[AllowAny]),
        name="api-schema",
    ),
    path(
        "docs/",
        SpectacularSwaggerView.as_view(url_name="api-schema", authentication_classes=[], permission_classes=[AllowAny]),
        name="api-docs",
    ),
    re_path(r"^(?P<unmatched>.*)$", not_found),
]
