"""Stream endpoints: start, list, get, stop one, stop all (spec §5, D4, D19, D20)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from rest_framework.test import APIClient

from callbacks.models import CallbackDelivery
from streams import services
from streams.models import Account, Call, Stream, StreamEvent
from tests.api.conftest import SERVICE_URL, api_path

pytestmark = pytest.mark.django_db

MakeStream = Callable[..., Stream]


def streams_path(account: Account, call: Call, *rest: object) -> str:
    return api_path(account, "Call", call.call_uuid, "Stream", *rest)


def assert_error(response: Any, status: int, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"api_id", "error"} and uuid.UUID(body["api_id"])
    for fragment in fragments:
        assert fragment in body["error"]
    return body


# --- start -------------------------------------------------------------------------


def test_it_starts_a_stream_from_a_json_body(api: APIClient, account: Account, call: Call) -> None:
    body = {
        "service_url": SERVICE_URL,
        "bidirectional": True,
        "audio_track": "inbound",
        "content_type": "audio/x-mulaw;rate=8000",
        "stream_timeout": 120,
        "status_callback_url": "https://app.example.com/cb",
        "status_callback_method": "GET",
        "extra_headers": "tenant=acme,agent=7",
    }
    response = api.post(streams_path(account, call), body, format="json")

    assert response.status_code == 201
    payload = response.json()
    assert set(payload) == {"api_id", "message", "stream_id"}
    assert payload["message"] == "audio streaming started"
    stream = Stream.objects.get(stream_id=payload["stream_id"])
    assert (stream.call, stream.account, stream.status) == (call, account, Stream.Status.INITIATED)
    assert stream.bidirectional and stream.content_type == "audio/x-mulaw;rate=8000"
    assert (stream.stream_timeout, stream.status_callback_method, stream.extra_headers) == (
        120,
        "GET",
        "tenant=acme,agent=7",
    )
    assert StreamEvent.objects.filter(stream=stream, event="StreamCreated").count() == 1


def test_it_starts_a_stream_from_a_form_body(api: APIClient, account: Account, call: Call) -> None:
    form = {"service_url": SERVICE_URL, "bidirectional": "true", "stream_timeout": "30", "extra_headers": ""}
    response = api.post(streams_path(account, call), form, format="multipart")
    assert response.status_code == 201, response.content
    urlencoded = api.generic(
        "POST",
        streams_path(account, call),
        "service_url=wss%3A%2F%2Fbot.example.com%2Fother&audio_track=both&content_type=audio%2Fx-l16%3Brate%3D16000",
        content_type="application/x-www-form-urlencoded",
    )
    assert urlencoded.status_code == 201, urlencoded.content
    first = Stream.objects.get(stream_id=response.json()["stream_id"])
    second = Stream.objects.get(stream_id=urlencoded.json()["stream_id"])
    assert (first.bidirectional, first.stream_timeout) == (True, 30)
    assert (second.audio_track, second.content_type) == ("both", "audio/x-l16;rate=16000")


def test_it_ignores_what_the_plivo_sdk_adds_and_treats_null_as_absent(
    api: APIClient, account: Account, call: Call
) -> None:
    body = {"service_url": SERVICE_URL, "call_uuid": "whatever", "stream_id": "x", "cx_bot": True, "audio_track": None}
    response = api.post(streams_path(account, call), body, format="json")
    assert response.status_code == 201, response.content
    assert Stream.objects.get(stream_id=response.json()["stream_id"]).audio_track == "inbound"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "service_url: is required"),
        ({"service_url": "https://bot.example.com/ws"}, "service_url: must be a ws:// or wss:// URL"),
        ({"service_url": SERVICE_URL, "audio_track": "left"}, "audio_track: must be one of"),
        ({"service_url": SERVICE_URL, "bidirectional": True, "audio_track": "both"}, "audio_track: must be inbound"),
        ({"service_url": SERVICE_URL, "stream_timeout": 0}, "stream_timeout: must be a positive integer"),
        ({"service_url": SERVICE_URL, "content_type": "audio/x-l16;rate=24000"}, "content_type: must be one of"),
        ({"service_url": SERVICE_URL, "extra_headers": "a=b;c"}, "extra_headers:"),
        ({"service_url": SERVICE_URL, "status_callback_method": "PUT"}, "status_callback_method:"),
        ({"service_url": SERVICE_URL, "bogus": 1}, "bogus: is not a stream parameter"),
    ],
)
def test_validation_errors_name_the_field(
    api: APIClient, account: Account, call: Call, body: dict[str, Any], field: str
) -> None:
    assert_error(api.post(streams_path(account, call), body, format="json"), 400, field)
    assert not Stream.objects.exists()


def test_a_second_active_stream_to_the_same_url_is_a_400(api: APIClient, account: Account, call: Call) -> None:
    assert api.post(streams_path(account, call), {"service_url": SERVICE_URL}, format="json").status_code == 201
    response = api.post(streams_path(account, call), {"service_url": SERVICE_URL}, format="json")
    assert_error(response, 400, "service_url", "already exists")
    other = api.post(streams_path(account, call), {"service_url": SERVICE_URL + "2"}, format="json")
    assert other.status_code == 201


def test_a_sixth_active_stream_on_a_call_is_a_400_that_says_why(api: APIClient, account: Account, call: Call) -> None:
    for n in range(5):
        body = {"service_url": f"{SERVICE_URL}?n={n}"}
        assert api.post(streams_path(account, call), body, format="json").status_code == 201
    response = api.post(streams_path(account, call), {"service_url": f"{SERVICE_URL}?n=5"}, format="json")
    assert_error(response, 400, "this call already has 5 active streams, the most one call may have")
    assert Stream.objects.filter(call=call).count() == 5


def test_starting_on_an_unknown_or_ended_call_is_a_404(api: APIClient, account: Account, call: Call) -> None:
    unknown = api.post(api_path(account, "Call", uuid.uuid4(), "Stream"), {"service_url": SERVICE_URL}, format="json")
    assert_error(unknown, 404, "Call not found")
    malformed = api.post(api_path(account, "Call", "not-a-uuid", "Stream"), {"service_url": SERVICE_URL})
    assert_error(malformed, 404, "Call not found")
    services.call_end(call=call, notify_session=False)
    assert_error(api.post(streams_path(account, call), {"service_url": SERVICE_URL}, format="json"), 404, "ended")
    assert not Stream.objects.exists()


@pytest.mark.parametrize(
    ("content", "content_type", "status", "fragment"),
    [
        ("{not json", "application/json", 400, "JSON parse error"),
        ('["wss://bot.example.com/ws"]', "application/json", 400, "must be a JSON object"),
        ('"wss://bot.example.com/ws"', "application/json", 400, "must be a JSON object"),
        ("null", "application/json", 400, ""),
        ("\xff\xfe", "application/json", 400, ""),
        ("service_url=wss://bot.example.com/ws", "text/plain", 415, "Unsupported media type"),
        ("<Stream/>", "application/xml", 415, "Unsupported media type"),
        ("service_url=a&service_url=b", "application/x-www-form-urlencoded", 400, "service_url: is given more"),
        ("a=1&" * 2000, "application/x-www-form-urlencoded", 400, "number of GET/POST parameters exceeded"),
        ('{"service_url": "x"}', "application/json; charset=bz2_codec", 400, "Unsupported charset"),
        ("service_url=" + "w" * 70_000, "application/x-www-form-urlencoded", 413, "larger than"),
        ('{"service_url": "' + "w" * 70_000 + '"}', "application/json", 413, "larger than"),
        (
            '{"service_url": "wss://bot.example.com/ws", "x": ' + "[" * 5000 + "]" * 5000 + "}",
            "application/json",
            400,
            "",
        ),
    ],
)
def test_malformed_bodies_get_a_json_error_never_a_500(
    api: APIClient, account: Account, call: Call, content: str, content_type: str, status: int, fragment: str
) -> None:
    response = api.generic("POST", streams_path(account, call), content.encode("latin-1"), content_type=content_type)
    assert_error(response, status, fragment)
    assert not Stream.objects.exists()


# --- list / get --------------------------------------------------------------------


def test_it_lists_a_calls_streams_newest_first_with_plivo_meta(
    api: APIClient, account: Account, call: Call, stream_factory: MakeStream
) -> None:
    made = [stream_factory(call, service_url=f"{SERVICE_URL}/{n}") for n in range(3)]
    other_call_stream = stream_factory(services.call_open(account=account, call_uuid=uuid.uuid4()))

    response = api.get(streams_path(account, call))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"api_id", "meta", "objects"} and uuid.UUID(body["api_id"])
    assert body["meta"] == {"limit": 20, "offset": 0, "total_count": 3, "count": 3, "next": None, "previous": None}
    assert [obj["stream_id"] for obj in body["objects"]] == [str(s.stream_id) for s in reversed(made)]
    assert str(other_call_stream.stream_id) not in json.dumps(body)


def test_it_pages_with_limit_and_offset(
    api: APIClient, account: Account, call: Call, stream_factory: MakeStream
) -> None:
    made = [stream_factory(call, service_url=f"{SERVICE_URL}/{n}") for n in range(5)]
    newest_first = [str(s.stream_id) for s in reversed(made)]
    path = streams_path(account, call)

    first = api.get(path, {"limit": 2}).json()
    middle = api.get(path, {"limit": 2, "offset": 2}).json()
    last = api.get(path, {"limit": 2, "offset": 4}).json()

    assert [o["stream_id"] for o in first["objects"] + middle["objects"] + last["objects"]] == newest_first
    assert first["meta"]["next"] == f"{path}?limit=2&offset=2" and first["meta"]["previous"] is None
    assert middle["meta"]["next"] == f"{path}?limit=2&offset=4"
    assert middle["meta"]["previous"] == f"{path}?limit=2&offset=0"
    assert last["meta"]["next"] is None and last["meta"]["previous"] == f"{path}?limit=2&offset=2"
    assert last["meta"]["total_count"] == last["meta"]["count"] == 5
    beyond = api.get(path, {"offset": 100}).json()
    assert beyond["objects"] == [] and beyond["meta"]["previous"] == f"{path}?limit=20&offset=80"


@pytest.mark.parametrize(
    "query", [{"limit": 0}, {"limit": 21}, {"limit": "x"}, {"limit": "-1"}, {"offset": -1}, {"offset": "9" * 5000}]
)
def test_bad_paging_parameters_are_a_400_naming_them(
    api: APIClient, account: Account, call: Call, query: dict[str, Any]
) -> None:
    name = next(iter(query))
    assert_error(api.get(streams_path(account, call), query), 400, f"{name}: must be an integer")


def test_it_returns_one_stream_in_plivos_format(
    api: APIClient, account: Account, call: Call, stream_factory: MakeStream
) -> None:
    stream = stream_factory(call, bidirectional=True, content_type="audio/x-mulaw;rate=8000")
    Stream.objects.filter(pk=stream.pk).update(
        created_at=datetime(2025, 11, 25, 10, 0, 0, 123456, tzinfo=UTC),
        start_time=datetime(2025, 11, 25, 10, 0, 1, 654321, tzinfo=UTC),
    )
    stream.refresh_from_db()
    services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    Stream.objects.filter(pk=stream.pk).update(end_time=datetime(2025, 11, 25, 10, 0, 28, tzinfo=UTC))

    response = api.get(streams_path(account, call, stream.stream_id))

    assert response.status_code == 200
    body = response.json()
    stream.refresh_from_db()
    assert uuid.UUID(body.pop("api_id"))
    assert body == {
        "stream_id": str(stream.stream_id),
        "call_uuid": str(call.call_uuid),
        "service_url": SERVICE_URL,
        "audio_track": "inbound",
        "bidirectional": True,
        "content_type": "audio/x-mulaw;rate=8000",
        "stream_timeout": 86400,
        "status": "stopped",
        "hangup_reason": "API request",
        "status_callback_url": "",
        "status_callback_method": "POST",
        "created_at": "2025-11-25 10:00:00.123456+00:00",
        "start_time": "2025-11-25 10:00:01+00:00",
        "end_time": "2025-11-25 10:00:28+00:00",
        "bill_duration": stream.bill_duration,
        "rounded_bill_duration": stream.rounded_bill_duration,
        "billed_amount": f"{stream.billed_amount:.5f}",
        "plivo_auth_id": account.auth_id,
        "resource_uri": f"/v1/Account/{account.auth_id}/Call/{call.call_uuid}/Stream/{stream.stream_id}/",
    }
    assert stream.rounded_bill_duration >= 60 and stream.billed_amount >= Decimal("0.00300")


def test_a_stream_that_has_not_started_has_null_times(
    api: APIClient, account: Account, call: Call, stream_factory: MakeStream
) -> None:
    stream = stream_factory(call)
    body = api.get(streams_path(account, call, stream.stream_id)).json()
    assert (body["status"], body["start_time"], body["end_time"], body["hangup_reason"]) == (
        "initiated",
        None,
        None,
        "",
    )
    assert (body["bill_duration"], body["rounded_bill_duration"], body["billed_amount"]) == (0, 0, "0.00000")


@pytest.mark.parametrize("stream_id", ["random", "not-a-uuid"])
def test_an_unknown_stream_is_a_404(
    api: APIClient, account: Account, call: Call, stream_factory: MakeStream, stream_id: str
) -> None:
    stream_factory(call)
    key = uuid.uuid4() if stream_id == "random" else stream_id
    assert_error(api.get(streams_path(account, call, key)), 404, "Stream not found")
    assert_error(api.delete(streams_path(account, call, key)), 404, "Stream not found")


def test_a_stream_is_found_only_under_its_own_call(
    api: APIClient, account: Account, call: Call, stream_factory: MakeStream
) -> None:
    stream = stream_factory(call)
    sibling = services.call_open(account=account, call_uuid=uuid.uuid4())
    assert_error(api.get(streams_path(account, sibling, stream.stream_id)), 404)


def test_reads_keep_working_after_the_call_ended(
    api: APIClient, account: Account, call: Call, stream_factory: MakeStream
) -> None:
    stream = stream_factory(call)
    services.call_end(call=call, notify_session=False)
    listed = api.get(streams_path(account, call)).json()
    assert [(o["stream_id"], o["hangup_reason"]) for o in listed["objects"]] == [(str(stream.stream_id), "Call hangup")]
    assert api.get(streams_path(account, call, stream.stream_id)).json()["status"] == "stopped"


# --- stop one / stop all ----------------------------------------------------------


def test_stopping_a_stream_ends_it_with_api_request_and_one_stop_callback(
    api: APIClient, account: Account, call: Call, stream_factory: MakeStream
) -> None:
    stream = stream_factory(call, status_callback_url="https://app.example.com/cb")

    # the plivo SDK sends call_uuid and stream_id in the DELETE body
    response = api.delete(
        streams_path(account, call, stream.stream_id),
        {"call_uuid": str(call.call_uuid), "stream_id": str(stream.stream_id)},
        format="json",
    )

    assert response.status_code == 204 and response.content == b""
    stream.refresh_from_db()
    assert (stream.status, stream.hangup_reason) == ("stopped", "API request")
    assert stream.end_time is not None
    assert list(CallbackDelivery.objects.filter(stream=stream).values_list("event", flat=True)) == ["StopStream"]

    again = api.delete(streams_path(account, call, stream.stream_id))
    assert_error(again, 400, "No active stream found")
    assert CallbackDelivery.objects.filter(stream=stream).count() == 1


def test_a_delete_body_is_never_parsed(
    api: APIClient, account: Account, call: Call, stream_factory: MakeStream
) -> None:
    stream = stream_factory(call)
    response = api.generic("DELETE", streams_path(account, call, stream.stream_id), b"{garbage", "application/json")
    assert response.status_code == 204


def test_stop_all_ends_every_active_stream_of_the_call_only(
    api: APIClient, account: Account, call: Call, stream_factory: MakeStream
) -> None:
    active = [stream_factory(call, service_url=f"{SERVICE_URL}/{n}") for n in range(2)]
    already = stream_factory(call, service_url=f"{SERVICE_URL}/done")
    services.stream_end(stream=already, reason=Stream.Reason.STREAM_TIMEOUT, notify_session=False)
    elsewhere = stream_factory(services.call_open(account=account, call_uuid=uuid.uuid4()))

    response = api.delete(streams_path(account, call), {"call_uuid": str(call.call_uuid)}, format="json")

    assert response.status_code == 204 and response.content == b""
    assert {s.hangup_reason for s in Stream.objects.filter(pk__in=[s.pk for s in active])} == {"API request"}
    already.refresh_from_db()
    elsewhere.refresh_from_db()
    assert already.hangup_reason == "Stream timeout"
    assert elsewhere.is_active
    assert api.delete(streams_path(account, call)).status_code == 204  # idempotent


def test_stop_all_on_an_unknown_call_is_a_404(api: APIClient, account: Account) -> None:
    assert_error(api.delete(api_path(account, "Call", uuid.uuid4(), "Stream")), 404, "Call not found")


def test_other_methods_are_a_405_listing_the_allowed_ones(api: APIClient, account: Account, call: Call) -> None:
    response = api.put(streams_path(account, call), {"service_url": SERVICE_URL}, format="json")
    assert_error(response, 405, "PUT")
    assert set(response["Allow"].split(", ")) == {"GET", "POST", "DELETE", "HEAD", "OPTIONS"}
    assert api.head(streams_path(account, call)).status_code == 200
