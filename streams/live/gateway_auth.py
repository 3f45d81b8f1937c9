"""Gateway authentication on the WebSocket upgrade, before accept.

HTTP Basic with an account's auth_id/auth_token (mod_audio_fork's
MOD_AUDIO_BASIC_AUTH_* channel variables, Asterisk's websocket_client username/password),
or `?token=<ingest token>` in the query string for gateways that cannot send headers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any
from urllib.parse import parse_qs

from streams.models import Account


def query_params(scope: dict[str, Any]) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {key: values[-1] for key, values in parse_qs(raw, keep_blank_values=True).items()}


def _basic_credentials(scope: dict[str, Any]) -> tuple[str, str] | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, encoded = value.decode("latin-1").partition(" ")
            if scheme.lower() != "basic":
                return None
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            auth_id, sep, token = decoded.partition(":")
            return (auth_id, token) if sep else None
    return None


def authenticate(scope: dict[str, Any]) -> Account | None:
    """The active account the upgrade proves, or None (the caller refuses before accept)."""
    creds = _basic_credentials(scope)
    if creds is not None:
        auth_id, token = creds
        account = Account.objects.filter(auth_id=auth_id, is_active=True).first()
        if account is not None and hmac.compare_digest(account.auth_token.encode(), token.encode()):
            return account
        return None
    token = query_params(scope).get("token", "")
    if token:
        account = Account.objects.filter(ingest_token=token, is_active=True).first()
        if account is not None and hmac.compare_digest(account.ingest_token.encode(), token.encode()):
            return account
    return None
