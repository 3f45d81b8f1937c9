"""Plivo's paths (spec §5), the OpenAPI schema and the interactive docs, under /v1/.

One DRF APIView per path; each HTTP method is an operation (Plivo serves several on one
path, e.g. GET/POST/DELETE …/Stream/). The views carry comments, not docstrings: drf-spectacular
would copy a class docstring into every operation's description.
"""

from __future__ import annotations

from django.urls import URLPattern, path, re_path, resolve
from django.urls.exceptions import Resolver404
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import status
from rest_framework.decorators import api_view, authentication_classes, permission_classes, renderer_classes
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from streams.api import schema  # noqa: F401  (registers the Basic auth scheme)
from streams.api.applications import ApplicationCollectionApi, ApplicationDetailApi
from streams.api.calls import CallDetailApi, CallListApi
from streams.api.errors import api_error
from streams.api.streams import StreamCollectionApi, StreamDetailApi


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
    path(f"{ACCOUNT}Call/<str:call_uuid>/", CallDetailApi.as_view(), name="call-detail"),
    path(f"{ACCOUNT}Call/<str:call_uuid>/Stream/", StreamCollectionApi.as_view(), name="stream-list"),
    path(f"{ACCOUNT}Call/<str:call_uuid>/Stream/<str:stream_id>/", StreamDetailApi.as_view(), name="stream-detail"),
    path(f"{ACCOUNT}Application/", ApplicationCollectionApi.as_view(), name="application-list"),
    path(f"{ACCOUNT}Application/<str:app_id>/", ApplicationDetailApi.as_view(), name="application-detail"),
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
