"""Gateway authentication on the WebSocket upgrade, before accept.

HTTP Basic with an account's auth_id/auth_token (mod_audio_fork's
MOD_AUDIO_BASIC_AUTH_* channel variables, Asterisk's websocket_client username/password),
or `?token=<ingest token>` in the query string for gateways that cannot send headers.

Failed attempts are throttled per client address (streams.throttle, shared with the API and
the admin login); an unknown auth_id or ingest token costs the same comparison as a wrong one.

A successful check is remembered for AUTH_CACHE_SECONDS, so a burst of calls from one gateway
costs one query, not one each (`cached`, on the event loop, before any database work); saving
or deleting an account in this process forgets it at once, and a change made elsewhere applies
to new calls within AUTH_CACHE_SECONDS. Failures are never remembered (each one is counted by
the throttle), and only the exact credentials that succeeded hit the cache.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from django.db.models.signals import post_delete, post_save

from streams import throttle
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


# Compared against when nothing matches: the lengths of real tokens (streams.models).
DUMMY_AUTH_TOKEN = "0" * 40
DUMMY_INGEST_TOKEN = "gw_" + "0" * 32


@dataclass(frozen=True)
class Admission:
    account: Account | None
    retry_after: int | None = None  # throttled: refuse without checking anything


def authenticate(scope: dict[str, Any]) -> Account | None:
    """The active account the upgrade proves, or None (the caller refuses before accept)."""
    return _check(scope)[0]


def _check(scope: dict[str, Any]) -> tuple[Account | None, bool]:
    """(the account proven, whether credentials were presented at all)."""
    creds = _basic_credentials(scope)
    if creds is not None:
        auth_id, token = creds
        account = _account(auth_id=auth_id)
        expected = account.auth_token if account is not None else DUMMY_AUTH_TOKEN
        matches = hmac.compare_digest(expected.encode(), token.encode())
        return (_remember(scope, account) if matches and account is not None else None), True
    token = query_params(scope).get("token", "")
    if token:
        account = _account(ingest_token=token)
        expected = account.ingest_token if account is not None else DUMMY_INGEST_TOKEN
        matches = hmac.compare_digest(expected.encode(), token.encode())
        return (_remember(scope, account) if matches and account is not None else None), True
    return None, False


def client_address(scope: dict[str, Any]) -> str:
    client = scope.get("client") or (None, None)
    headers = scope.get("headers", [])
    forwarded = next((v.decode("latin-1") for k, v in headers if k.lower() == b"x-forwarded-for"), None)
    return throttle.client_address(client[0], forwarded)


def _account(**lookup: str) -> Account | None:
    # A NUL byte makes PostgreSQL raise instead of matching nothing; a 64-character field holds no longer value.
    if any("\x00" in value or len(value) > 64 for value in lookup.values()):
        return None
    return Account.objects.filter(is_active=True, **lookup).first()


def admit(scope: dict[str, Any]) -> Admission:
    """Authenticate the upgrade unless its address has failed too often; count a failure."""
    address = client_address(scope)
    wait = throttle.retry_after(address)
    if wait is not None:
        return Admission(None, wait)
    account, presented = _check(scope)
    if account is None and presented:
        throttle.record_failure(address)
    return Admission(account)
