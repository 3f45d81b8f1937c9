"""The console's own object pages answer to a record's primary key and to its UUID.

Operators paste a stream id or a call UUID (that is what the API, the logs and the callbacks
show), so `stream/<stream_id>/debug-logs/` works like `stream/<pk>/debug-logs/`; any other id is
a 404, never a server error.
"""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from streams.models import Call, Stream

STREAM_PAGES = ("debug-logs", "stop")
CALL_PAGES = ("hangup", "start-stream")
NOT_IDS = ("abc", "12abc", "１２", "9" * 40, "2a052712-45f4-4281-b880-5961999004cb", "-1", "%20")


def url(model: str, object_id: object, page: str) -> str:
    return f"/admin/streams/{model}/{object_id}/{page}/"


@pytest.mark.django_db
@pytest.mark.parametrize("page", STREAM_PAGES)
def test_stream_pages_answer_to_the_stream_id_as_to_the_pk(su_client: Client, live_stream: Stream, page: str) -> None:
    by_pk = su_client.get(url("stream", live_stream.pk, page))
    by_uuid = su_client.get(url("stream", live_stream.stream_id, page))
    assert by_pk.status_code == by_uuid.status_code == 200
    assert str(live_stream.stream_id) in by_uuid.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("page", CALL_PAGES)
def test_call_pages_answer_to_the_call_uuid_as_to_the_pk(su_client: Client, call: Call, page: str) -> None:
    by_pk = su_client.get(url("call", call.pk, page))
    by_uuid = su_client.get(url("call", call.call_uuid, page))
    assert by_pk.status_code == by_uuid.status_code == 200
    assert str(call.call_uuid) in by_uuid.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("object_id", NOT_IDS)
@pytest.mark.parametrize(("model", "page"), [("stream", p) for p in STREAM_PAGES] + [("call", p) for p in CALL_PAGES])
def test_anything_else_is_a_404(su_client: Client, live_stream: Stream, model: str, page: str, object_id: str) -> None:
    assert su_client.get(url(model, object_id, page)).status_code == 404
    assert su_client.post(url(model, object_id, page), {"post": "yes"}).status_code == 404


@pytest.mark.django_db
def test_a_call_uuid_is_not_a_stream_id(su_client: Client, live_stream: Stream) -> None:
    assert su_client.get(url("stream", live_stream.call.call_uuid, "debug-logs")).status_code == 404


@pytest.mark.django_db
def test_the_stop_page_stops_the_stream_its_uuid_names(su_client: Client, live_stream: Stream) -> None:
    done = su_client.post(url("stream", live_stream.stream_id, "stop"), {"post": "yes"})
    assert done.status_code == 302 and done["Location"] == f"/admin/streams/stream/{live_stream.pk}/change/"
    live_stream.refresh_from_db()
    assert live_stream.hangup_reason == "API request"


@pytest.mark.django_db
def test_the_record_pages_answer_to_the_uuid_too(su_client: Client, live_stream: Stream) -> None:
    stream_page = su_client.get(f"/admin/streams/stream/{live_stream.stream_id}/change/")
    call_page = su_client.get(f"/admin/streams/call/{live_stream.call.call_uuid}/change/")
    assert stream_page.status_code == call_page.status_code == 200
    assert "Timeline" in stream_page.content.decode()
    unknown = su_client.get(f"/admin/streams/stream/{uuid.uuid4()}/change/")
    assert unknown.status_code == 302  # the admin's own "doesn't exist" redirect, as for an unknown pk
