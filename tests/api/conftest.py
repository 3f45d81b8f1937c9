"""Fixtures for the REST API tests: authenticated clients, live calls and streams."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from streams import services
from streams.core.validation import validate_stream_params
from streams.models import Account, Call, Stream

SERVICE_URL = "wss://bot.example.com/ws"


def client_for(account: Account) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic(account.auth_id, account.auth_token))
    return client


def basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def api_path(account: Account, *parts: object) -> str:
    """/v1/Account/<auth_id>/<parts…>/ — every Plivo path ends with a slash."""
    return "/".join(["/v1/Account", account.auth_id, *(str(part) for part in parts)]) + "/"


def open_call(account: Account) -> Call:
    return services.call_open(account=account, call_uuid=uuid.uuid4(), from_number="+15550001", to_number="+15550002")


def make_stream(call: Call, **params: Any) -> Stream:
    stream = services.stream_create(
        call=call, params=validate_stream_params({"service_url": SERVICE_URL, **params}), notify_session=False
    )
    return Stream.objects.select_related("account", "call").get(pk=stream.pk)


@pytest.fixture
def api(account: Account) -> APIClient:
    return client_for(account)


@pytest.fixture
def call(account: Account) -> Call:
    return open_call(account)


@pytest.fixture
def other_call(other_account: Account) -> Call:
    return open_call(other_account)


@pytest.fixture
def stream_factory() -> Callable[..., Stream]:
    return make_stream
