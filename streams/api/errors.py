"""One error shape for the whole API (spec §5): `{"api_id": "<uuid>", "error": "<text>"}`.

Every error — a DRF exception, a Django 404, an oversized or malformed body, or a
bug — leaves through `exception_handler` or `api_error`, so a client (the plivo SDK
reads `error` for its exception message) always gets JSON with the right status.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from streamhub.middleware import RETRY_AFTER_SECONDS, UNAVAILABLE, database_unavailable

log = logging.getLogger(__name__)

# A start body is a few KiB at most (two 2048-char URLs, 512 bytes of headers); parsers
# do not bound what they read, so anything far beyond that is refused before parsing.
MAX_BODY_BYTES = 64 * 1024


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = f"Request body is larger than {MAX_BODY_BYTES} bytes."


def new_api_id() -> str:
    return str(uuid.uuid4())


def api_error(message: str, *, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return Response({"api_id": new_api_id(), "error": message}, status=status, headers=headers)


def error_text(detail: Any) -> str:
    """Flatten DRF error details into one line that names the field, e.g. "limit: must be …"."""
    if isinstance(detail, Mapping):
        parts = []
        for field, value in detail.items():
            text = error_text(value)
            parts.append(text if field in ("non_field_errors", "detail") else f"{field}: {text}")
        return "; ".join(parts)
    if isinstance(detail, list | tuple):
        return "; ".join(error_text(item) for item in detail)
    return str(detail)


def exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, SuspiciousOperation):
        # e.g. a form with more fields than DATA_UPLOAD_MAX_NUMBER_FIELDS
        exc = exceptions.ParseError(str(exc) or "Malformed request.")

    if isinstance(exc, exceptions.APIException):
        headers: dict[str, str] = {}
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
        wait = getattr(exc, "wait", None)
        if wait:
            headers["Retry-After"] = str(int(wait))
        set_rollback()
        return api_error(error_text(exc.detail), status=exc.status_code, headers=headers)

    if database_unavailable(exc):  # an outage, not a bug: tell the client to come back
        log.warning("%s: database unavailable (%s)", context.get("view").__class__.__name__, type(exc).__name__)
        set_rollback()
        return api_error(
            UNAVAILABLE, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )

    # A bug: log it with its traceback, but still answer in the API's shape (never an HTML page).
    log.error("unhandled error in %s", context.get("view").__class__.__name__, exc_info=exc)
    set_rollback()
    return api_error("Internal server error", status=status.HTTP_500_INTERNAL_SERVER_ERROR)
