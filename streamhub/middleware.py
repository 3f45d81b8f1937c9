"""A database that cannot be reached is a deliberate 503 with Retry-After, not an unhandled 500.

During a database outage (restart, failover, network cut) every page and API call that
needs the database fails with OperationalError/InterfaceError. Clients and load balancers
should retry later, so the answer says exactly that. The API answers in its own JSON
shape (`streams.api.errors`); this covers every other view (admin, health).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
UNAVAILABLE = "The hub's database is unavailable; try again shortly."


def database_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError | InterfaceError)


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not database_unavailable(exception):
            return None
        log.warning("%s %s: database unavailable (%s)", request.method, request.path, type(exception).__name__)
        response = HttpResponse(UNAVAILABLE + "\n", status=503, content_type="text/plain")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
