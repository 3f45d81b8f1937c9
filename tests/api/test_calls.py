"""Call endpoints: list (live, ?status=ended), get, hang up; DELETE …/Call/ is refused (405)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from callbacks.models import CallbackDelivery
from streams import services
from streams.models import Account, Call, Stream
from tests.api.conftest import api_path, open_call

pytestmark = pytest.mark.django_db

MakeStream = Callable[..., Stream]


def assert_error(response: Any, status: int, fragment: str = "") -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"api_id", "error"} and uuid.UUID(body["api_id"])
    assert fragment in body["error"]


def test_it_lists_live_calls_by_default_and_ended_ones_on_request(api: APIClient, account: Account) -> None:
    live = [open_call(account) for _ in range(2)]
    ended = open_call(account)
    services.call_end(call=ended, notify_session=False)

    live_body = api.get(api_path(account, "Call")).json()
    ended_body = api.get(api_path(account, "Call"), {"status": "ended"}).json()

    assert {o["call_uuid"] for o in live_body["objects"]} == {str(c.call_uuid) for c in live}
    assert live_body["meta"]["total_count"] == live_body["meta"]["count"] == 2
    assert [o["call_uuid"] for o in ended_body["objects"]] == [str(ended.call_uuid)]
    assert ended_body["objects"][0]["status"] == "ended"
    assert ended_body["objects"][0]["call_status"] == "completed"


def test_call_pages_keep_the_status_filter(api: APIClient, account: Account) -> None:
    for _ in range(3):
        services.call_end(call=open_call(account), notify_session=False)
    path = api_path(account, "Call")
    meta = api.get(path, {"status": "ended", "limit": 1}).json()["meta"]
    assert meta["next"] == f"{path}?limit=1&offset=1&status=ended"


def test_an_unknown_status_filter_is_a_400(api: APIClient, account: Account) -> None:
    assert_error(api.get(api_path(account, "Call"), {"status": "ringing"}), 400, "status: must be live or ended")


def test_it_returns_one_call(api: APIClient, account: Account) -> None:
    call = services.call_open(
        account=account, call_uuid=uuid.uuid4(), from_number="+15550001", to_number="+15550002", direction="outbound"
    )
    Call.objects.filter(pk=call.pk).update(started_at=datetime(2025, 11, 25, 10, 0, 0, 500000, tzinfo=UTC))

    response = api.get(api_path(account, "Call", call.call_uuid))

    assert response.status_code == 200
    body = response.json()
    assert uuid.UUID(body.pop("api_id"))
    assert body == {
        "call_uuid": str(call.call_uuid),
        "from": "+15550001",
        "to": "+15550002",
        "direction": "outbound",
        "status": "live",
        "call_status": "in-progress",
        "start_time": "2025-11-25 10:00:00+00:00",
        "end_time": None,
        "plivo_auth_id": account.auth_id,
        "resource_uri": f"/v1/Account/{account.auth_id}/Call/{call.call_uuid}/",
    }


def test_get_with_a_status_is_a_404_when_the_call_is_not_in_it(api: APIClient, account: Account, call: Call) -> None:
    # plivo's live_calls.get() asks for ?status=live
    assert api.get(api_path(account, "Call", call.call_uuid), {"status": "live"}).status_code == 200
    services.call_end(call=call, notify_session=False)
    assert_error(api.get(api_path(account, "Call", call.call_uuid), {"status": "live"}), 404, "No live call")
    assert api.get(api_path(account, "Call", call.call_uuid)).json()["status"] == "ended"


@pytest.mark.parametrize("call_uuid", ["1a0aff53-dff7-4ad2-a4c2-82105c61e526", "not-a-uuid", "0" * 40])
def test_an_unknown_call_is_a_404(api: APIClient, account: Account, call_uuid: str) -> None:
    assert_error(api.get(api_path(account, "Call", call_uuid)), 404, "Call not found")
    assert_error(api.delete(api_path(account, "Call", call_uuid)), 404, "Call not found")


def test_hanging_up_ends_the_call_and_every_stream_with_call_hangup(
    api: APIClient, account: Account, call: Call, stream_factory: MakeStream
) -> None:
    streams = [
        stream_factory(call, service_url=f"wss://bot.example.com/{n}", status_callback_url="https://app.example.com/cb")
        for n in range(2)
    ]

    response = api.delete(api_path(account, "Call", call.call_uuid), {"call_uuid": str(call.call_uuid)}, format="json")

    assert response.status_code == 204 and response.content == b""
    call.refresh_from_db()
    assert call.status == Call.Status.ENDED and call.ended_at is not None
    for stream in streams:
        stream.refresh_from_db()
        assert (stream.status, stream.hangup_reason) == ("stopped", "Call hangup")
        assert list(CallbackDelivery.objects.filter(stream=stream).values_list("event", flat=True)) == ["StopStream"]
    assert_error(api.delete(api_path(account, "Call", call.call_uuid)), 404, "ended")


def test_hanging_up_every_call_at_once_is_refused(api: APIClient, account: Account, call: Call) -> None:
    response = api.delete(api_path(account, "Call"))
    assert_error(response, 405, "Hanging up every live call is not supported")
    assert "DELETE" not in response["Allow"]
    call.refresh_from_db()
    assert call.status == Call.Status.LIVE


def test_unknown_paths_under_v1_get_a_json_404(api: APIClient, account: Account, call: Call) -> None:
    assert_error(api.get("/v1/nothing/here/"), 404, "Not found")
    assert_error(api.get(f"/v1/Account/{account.auth_id}/Call/{call.call_uuid}"), 404, "end with a slash")


@override_settings(DEBUG=False)
def test_an_unexpected_error_is_a_json_500(
    api: APIClient, account: Account, call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**kwargs: object) -> bool:
        raise RuntimeError("database exploded")

    monkeypatch.setattr(services, "call_hangup", broken)
    response = api.delete(api_path(account, "Call", call.call_uuid))
    assert_error(response, 500, "Internal server error")
    assert "exploded" not in response.content.decode()
