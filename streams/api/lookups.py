"""Account-scoped lookups: another account's call or stream is a plain 404 (D19)."""

from __future__ import annotations

import uuid

from rest_framework import exceptions
from rest_framework.request import Request

from streams.models import Account, Call, Stream


def parse_uuid(value: str, *, what: str) -> uuid.UUID:
    # Path segments are matched as plain strings so that a malformed id gets the API's
    # JSON 404 rather than the URL resolver's HTML one.
    try:
        return uuid.UUID(value)
    except ValueError:
        raise exceptions.NotFound(f"{what} not found.") from None


def request_account(request: Request) -> Account:
    account = request.auth
    if not isinstance(account, Account):  # IsAccount guarantees it; this keeps the type honest
        raise exceptions.NotAuthenticated()
    return account


def call_for(request: Request, call_uuid: str) -> Call:
    key = parse_uuid(call_uuid, what="Call")
    call = Call.objects.select_related("account").filter(account=request_account(request), call_uuid=key).first()
    if call is None:
        raise exceptions.NotFound("Call not found.")
    return call


def stream_for(request: Request, call_uuid: str, stream_id: str) -> Stream:
    call_key, stream_key = parse_uuid(call_uuid, what="Call"), parse_uuid(stream_id, what="Stream")
    stream = (
        Stream.objects.select_related("account", "call")
        .filter(account=request_account(request), call__call_uuid=call_key, stream_id=stream_key)
        .first()
    )
    if stream is None:
        raise exceptions.NotFound("Stream not found.")
    return stream
