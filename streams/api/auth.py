"""HTTP Basic authentication with `auth_id:auth_token`, and the path's auth_id check (D19).

The authenticated Account is both `request.user` and `request.auth`; views scope
every lookup with it. A path `{auth_id}` that is not the authenticated account's is
refused with 401, as Plivo does, before any lookup runs.

Failed attempts are throttled per client address (streams.throttle, through DRF's throttle
class and its client identification): beyond the rate, 429 with Retry-After. An unknown
auth_id costs the same work as a wrong token (one query, one constant-time comparison with a
token of the same length), so the answer's timing does not tell which ids exist.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from rest_framework import exceptions
from rest_framework.authentication import BasicAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from streams import throttle
from streams.models import Account

if TYPE_CHECKING:  # DRF imports this module while rest_framework.views is still loading
    from rest_framework.views import APIView

AUTH_ID_MAX_LENGTH = 20
BAD_CREDENTIALS = "Invalid auth_id or auth_token."


# Compared against when the auth_id is unknown: a real token's length (models.new_auth_token).
DUMMY_TOKEN = "0" * 40
THROTTLED = "Too many failed authentication attempts from this address; try again later."


class FailedAuthThrottle(BaseThrottle):
    """DRF's throttle over the failed-attempt counter every entry point shares (streams.throttle)."""

    def __init__(self) -> None:
        self.retry_after: int | None = None

    def allow_request(self, request: Request, view: APIView | None) -> bool:
        self.retry_after = throttle.retry_after(self.get_ident(request))
        return self.retry_after is None

    def wait(self) -> float | None:
        return self.retry_after

    def record_failure(self, request: Request) -> None:
        throttle.record_failure(self.get_ident(request))


def token_matches(account: Account | None, token: str) -> bool:
    """The same comparison for an unknown account as for a known one."""
    expected = account.auth_token if account is not None else DUMMY_TOKEN
    return hmac.compare_digest(expected.encode(), token.encode()) and account is not None


class AccountBasicAuthentication(BasicAuthentication):
    www_authenticate_realm = "streamhub"

    def authenticate(self, request: Request) -> tuple[Account, Account] | None:
        guard = FailedAuthThrottle()
        if not guard.allow_request(request, None):
            raise exceptions.Throttled(wait=guard.wait(), detail=THROTTLED)
        try:
            return super().authenticate(request)
        except exceptions.AuthenticationFailed:
            guard.record_failure(request)
            raise

    # (user, auth): both are the account; DRF's stubs say auth is always None
    def authenticate_credentials(  # type: ignore[override]
        self, userid: str, password: str, request: Request | None = None
    ) -> tuple[Account, Account]:
        # Checked before the query: a NUL byte makes PostgreSQL raise instead of matching nothing.
        if not userid or len(userid) > AUTH_ID_MAX_LENGTH or "\x00" in userid:
            raise exceptions.AuthenticationFailed(BAD_CREDENTIALS)
        account = Account.objects.filter(auth_id=userid).first()
        if not token_matches(account, password):
            raise exceptions.AuthenticationFailed(BAD_CREDENTIALS)
        assert account is not None
        if not account.is_active:
            raise exceptions.AuthenticationFailed("Account is inactive.")
        return account, account


class IsAccount(BasePermission):
    """Authenticated as an account, and that account is the one named in the path."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        account = request.auth
        if not isinstance(account, Account):
            return False  # DRF answers 401 with WWW-Authenticate
        path_auth_id = view.kwargs.get("auth_id")
        if path_auth_id is not None and path_auth_id != account.auth_id:
            raise exceptions.AuthenticationFailed("auth_id in the URL does not match the credentials.")
        return True
