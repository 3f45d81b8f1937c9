"""Tenancy (design rule 8, D19): under its own auth_id an account gets a plain 404 for another
account's call or stream on every endpoint, and nothing of the other account changes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from callbacks.models import CallbackDelivery
from streams.models import Account, Call, Stream, StreamEvent
from tests.api.conftest import SERVICE_URL, api_path, client_for

pytestmark = pytest.mark.django_db

MakeStream = Callable[..., Stream]

# (method, path under /v1/Account/<own auth_id>/ with the OTHER account's ids, body)
ENDPOINTS = [
    ("get", "Call/{call}", None),
    ("delete", "Call/{call}", None),
    ("post", "Call/{call}/Stream", {"service_url": "wss://intruder.example.com/ws"}),
    ("get", "Call/{call}/Stream", None),
    ("delete", "Call/{call}/Stream", None),
    ("get", "Call/{call}/Stream/{stream}", None),
    ("delete", "Call/{call}/Stream/{stream}", None),
]


@pytest.mark.parametrize(("method", "template", "body"), ENDPOINTS, ids=[f"{m} {t}" for m, t, _ in ENDPOINTS])
def test_another_accounts_call_or_stream_is_a_404(
    api: APIClient,
    account: Account,
    other_call: Call,
    stream_factory: MakeStream,
    method: str,
    template: str,
    body: dict[str, str] | None,
) -> None:
    theirs = stream_factory(other_call, status_callback_url="https://them.example.com/cb")
    events_before = StreamEvent.objects.count()
    path = api_path(account, template.format(call=other_call.call_uuid, stream=theirs.stream_id))

    response = getattr(api, method)(path, body, format="json")

    assert response.status_code == 404, response.content
    assert set(response.json()) == {"api_id", "error"}
    other_call.refresh_from_db()
    theirs.refresh_from_db()
    assert other_call.status == Call.Status.LIVE
    assert theirs.is_active and theirs.hangup_reason == ""
    assert Stream.objects.filter(call=other_call).count() == 1
    assert StreamEvent.objects.count() == events_before
    assert not CallbackDelivery.objects.exists()


def test_a_stream_id_of_another_account_under_ones_own_call_is_a_404(
    api: APIClient, account: Account, call: Call, other_call: Call, stream_factory: MakeStream
) -> None:
    theirs = stream_factory(other_call)
    for method in ("get", "delete"):
        response = getattr(api, method)(api_path(account, "Call", call.call_uuid, "Stream", theirs.stream_id))
        assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.is_active


def test_lists_show_only_ones_own_calls_and_streams(
    api: APIClient, account: Account, call: Call, other_call: Call, stream_factory: MakeStream
) -> None:
    mine = stream_factory(call)
    stream_factory(other_call)
    calls = api.get(api_path(account, "Call")).json()
    streams = api.get(api_path(account, "Call", call.call_uuid, "Stream")).json()
    assert [o["call_uuid"] for o in calls["objects"]] == [str(call.call_uuid)]
    assert [o["stream_id"] for o in streams["objects"]] == [str(mine.stream_id)]


def test_the_other_account_still_reaches_its_own_data(
    other_account: Account, other_call: Call, stream_factory: MakeStream
) -> None:
    theirs = stream_factory(other_call)
    client = client_for(other_account)
    path = api_path(other_account, "Call", other_call.call_uuid, "Stream")
    assert client.get(f"{path}{theirs.stream_id}/").status_code == 200
    assert client.post(path, {"service_url": SERVICE_URL + "/2"}, format="json").status_code == 201
