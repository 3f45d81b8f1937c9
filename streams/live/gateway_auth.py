"""Gateway authentication on the WebSocket upgrade, before accept.

HTTP Basic with an account's auth_id/auth_token (mod_audio_fork's
MOD_AUDIO_BASIC_AUTH_* channel variables, Asterisk's websocket_client username/password),
or `?token=<ingest token>` in the query string for gateways that cannot send headers.

A successful check is remembered for AUTH_CACHE_SECONDS, so a burst of calls from one gateway
costs one query, not one each (`cached`, on the event loop, before any database work); saving
or deleting an account in this process forgets it at once, and a change made elsewhere applies
to new calls within AUTH_CACHE_SECONDS. Failures are never remembered.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from typing import Any
from urllib.parse import parse_qs

from django.db.models.signals import post_delete, post_save

from streams.models import Account

AUTH_CACHE_SECONDS = 10.0
AUTH_CACHE_SIZE = 1000
_cache: dict[tuple[bytes, bytes], tuple[Account, float]] = {}


def _credentials_key(scope: dict[str, Any]) -> tuple[bytes, bytes]:
    header = b""
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            header = value
            break
    return header, scope.get("query_string", b"")


def cached(scope: dict[str, Any]) -> Account | None:
    """The account these exact credentials proved within the last AUTH_CACHE_SECONDS, if any."""
    hit = _cache.get(_credentials_key(scope))
    if hit is not None and hit[1] > time.monotonic():
        return hit[0]
    return None


def _remember(scope: dict[str, Any], account: Account) -> Account:
    now = time.monotonic()
    if len(_cache) >= AUTH_CACHE_SIZE:
        for key in [k for k, (_, until) in _cache.items() if until <= now]:
            del _cache[key]
        if len(_cache) >= AUTH_CACHE_SIZE:
            _cache.clear()
    _cache[_credentials_key(scope)] = (account, now + AUTH_CACHE_SECONDS)
    return account


def forget(**_: Any) -> None:
    """An account changed or went away in this process: check every credential again."""
    _cache.clear()


post_save.connect(forget, sender=Account, dispatch_uid="gateway_auth.forget.save")
post_delete.connect(forget, sender=Account, dispatch_uid="gateway_auth.forget.delete")


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
            return _remember(scope, account)
        return None
    token = query_params(scope).get("token", "")
    if token:
        account = Account.objects.filter(ingest_token=token, is_active=True).first()
        if account is not None and hmac.compare_digest(account.ingest_token.encode(), token.encode()):
            return _remember(scope, account)
    return None
