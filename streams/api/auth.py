"""HTTP Basic authentication with `auth_id:auth_token`, and the path's auth_id check (D19).

The authenticated Account is both `request.user` and `request.auth`; views scope
every lookup with it. A path `{auth_id}` that is not the authenticated account's is
refused with 401, as Plivo does, before any lookup runs.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from rest_framework import exceptions
from rest_framework.authentication import BasicAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from streams.models import Account

if TYPE_CHECKING:  # DRF imports this module while rest_framework.views is still loading
    from rest_framework.views import APIView

AUTH_ID_MAX_LENGTH = 20
BAD_CREDENTIALS = "Invalid auth_id or auth_token."


class AccountBasicAuthentication(BasicAuthentication):
    www_authenticate_realm = "streamhub"

    # (user, auth): both are the account; DRF's stubs say auth is always None
    def authenticate_credentials(  # type: ignore[override]
        self, userid: str, password: str, request: Request | None = None
    ) -> tuple[Account, Account]:
        # Checked before the query: a NUL byte makes PostgreSQL raise instead of matching nothing.
        if not userid or len(userid) > AUTH_ID_MAX_LENGTH or "\x00" in userid:
            raise exceptions.AuthenticationFailed(BAD_CREDENTIALS)
        account = Account.objects.filter(auth_id=userid).first()
        if account is None or not hmac.compare_digest(account.auth_token.encode(), password.encode()):
            raise exceptions.AuthenticationFailed(BAD_CREDENTIALS)
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
